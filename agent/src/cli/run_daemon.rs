//! `bridle run` when a daemon is running: the daemon confines the run's cgroup with the run's
//! policy, so the workload gets the daemon's pinned enforcement (it holds even if this process
//! dies), its exec tier, audit trail, quarantine and followers; this process only starts the
//! command in the cgroup, prints the daemon's decisions about it, and releases it at the end.

use super::run::{command_ended, spawn_in_cgroup, workload_hardening, RunArgs};
use crate::{
    cgroup::Cgroup,
    daemon::control::{self, Request},
};
use anyhow::{bail, Context, Result};
use bridle_common::{Workload, EFFECT_PERMIT};
use bridle_engine::Compiled;
use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

/// Where a run without `--policy` puts the built-in default policy for the daemon to read.
const RUN_POLICIES: &str = "/run/bridle/runs";
/// How long the last decisions get to arrive from the daemon after the command ended (it
/// drains the kernel's events every 50 ms).
const LAST_DECISIONS: Duration = Duration::from_millis(200);

/// Whether a daemon answers on `socket`.
pub fn daemon_answers(socket: &Path) -> bool {
    control::ask(socket, &Request::Status).is_ok_and(|r| r.ok)
}

/// A policy file written for the daemon, removed on drop.
struct PolicyFile(Option<PathBuf>);

impl Drop for PolicyFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Has the daemon confine `cgroup`, runs the command in it, and releases it.
pub fn confine_and_wait(
    state_dir: &Path,
    args: &RunArgs,
    default_policy: &str,
    compiled: &Compiled,
    observe: bool,
    cgroup: &Cgroup,
) -> Result<ExitCode> {
    if let Some(tier) = args.exec_tier {
        bail!(
            "--exec-tier {tier}: a bridle daemon is running and judges this run on its own tier; \
             pass --standalone to choose the tier"
        );
    }
    if args.dns_options_given() {
        bail!(
            "--dns-*: a bridle daemon is running and resolves this run's host names with the \
             [resolver] settings of its configuration; pass --standalone to choose them"
        );
    }
    let socket = &args.socket;
    let mut written = PolicyFile(None);
    let policy = match &args.policy {
        Some(path) => {
            fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?
        }
        None => {
            let path = write_default(default_policy)?;
            written.0 = Some(path.clone());
            path
        }
    };
    let status = control::ask(socket, &Request::Status)?;
    let tier = status
        .body
        .as_ref()
        .and_then(|b| b["tiers"]["exec"].as_str())
        .unwrap_or("?")
        .to_owned();
    // Following first: the workload's first decision is printed too.
    let following = control::Following::start(socket, Some(cgroup.path().display().to_string()))
        .context("following the daemon's decisions")?;
    start_printing(following, args.verbose);
    let reply = control::ask(
        socket,
        &Request::Confine {
            cgroup: cgroup.path().display().to_string(),
            policy: policy.display().to_string(),
            mode: observe.then(|| "observe".to_owned()),
        },
    )?;
    if !reply.ok {
        bail!(
            "the running daemon did not confine the run: {}",
            reply.error.unwrap_or_default()
        );
    }
    eprintln!("bridle: confined by the running daemon; exec tier {tier}");
    let released = Release {
        socket: socket.clone(),
        cgroup: cgroup.path().display().to_string(),
    };

    let mut config = Workload::default();
    crate::kernel::net::set_raw(&mut config, compiled);
    let drop_raw = !observe && config.raw_effect != EFFECT_PERMIT;
    let hardening = workload_hardening(args, state_dir, Some(&policy), cgroup, drop_raw)?;
    let child = spawn_in_cgroup(&args.command, cgroup, hardening)?;
    let pid = nix::unistd::Pid::from_raw(child as i32);
    let status = loop {
        match command_ended(pid, cgroup)? {
            Some(status) => break status,
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    // The command is gone; its descendants go too, before the daemon lets the cgroup go.
    cgroup.kill_all(Duration::from_secs(5))?;
    std::thread::sleep(LAST_DECISIONS);
    released.now()?;
    Ok(ExitCode::from(status.clamp(0, 255) as u8))
}

/// Writes the built-in policy where the daemon can read it for as long as the run lasts.
fn write_default(text: &str) -> Result<PathBuf> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(RUN_POLICIES)
        .with_context(|| format!("creating {RUN_POLICIES}"))?;
    let path = Path::new(RUN_POLICIES).join(format!("default-{}.toml", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Asks the daemon to release the run's cgroup, once: when the run ends normally (with the
/// answer checked), or on any early return.
struct Release {
    socket: PathBuf,
    cgroup: String,
}

impl Release {
    fn now(self) -> Result<()> {
        let reply = control::ask(&self.socket, &self.request())?;
        std::mem::forget(self);
        if !reply.ok {
            bail!(
                "the daemon did not release the run's cgroup: {}",
                reply.error.unwrap_or_default()
            );
        }
        Ok(())
    }

    fn request(&self) -> Request {
        Request::Release {
            cgroup: self.cgroup.clone(),
            quarantine: false,
        }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = control::ask(&self.socket, &self.request());
    }
}

/// Prints the daemon's decisions about the run, as `bridle run` prints its own: refusals and
/// would-be refusals, and with `verbose` everything.
fn start_printing(following: control::Following, verbose: bool) {
    let _ = std::thread::Builder::new()
        .name("bridle-run-decisions".into())
        .spawn(move || {
            let _ = following.each(|line| {
                if let Some(shown) = decision_line(line, verbose) {
                    eprintln!("{shown}");
                }
                true
            });
        });
}

/// One decision as `bridle run` prints it, or `None` for a permit when not verbose.
fn decision_line(line: &str, verbose: bool) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if let Some(lost) = v.get("lost") {
        return Some(format!(
            "bridle: warning: {lost} decisions were not shown (this run did not keep up)"
        ));
    }
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let code = s("code");
    let verdict = match (s("effect").as_str(), code.as_str()) {
        (_, "OBSERVED") => "observed",
        ("permit", _) => "permitted",
        _ => "refused",
    };
    if verdict == "permitted" && !verbose {
        return None;
    }
    let rule = v["rule"]
        .as_str()
        .map(|r| format!(", rule {r}"))
        .unwrap_or_default();
    Some(format!(
        "bridle: {verdict} {} {} ({code}{rule})",
        s("action"),
        s("object")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_print_like_a_standalone_run() {
        let refused = r#"{"action":"exec","object":"/usr/bin/curl","effect":"refuse","code":"POLICY_REFUSED","rule":"no-curl"}"#;
        assert_eq!(
            decision_line(refused, false).as_deref(),
            Some("bridle: refused exec /usr/bin/curl (POLICY_REFUSED, rule no-curl)")
        );
        let permitted = r#"{"action":"connect","object":"127.0.0.1:80","effect":"permit","code":"PERMITTED","rule":null}"#;
        assert_eq!(decision_line(permitted, false), None);
        assert_eq!(
            decision_line(permitted, true).as_deref(),
            Some("bridle: permitted connect 127.0.0.1:80 (PERMITTED)")
        );
    }
}
