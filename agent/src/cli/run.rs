//! `bridle run`: start a command in a fresh confined cgroup, standalone.
//!
//! The order of steps is the security argument: the cgroup exists and every kernel entry and
//! program is in place before the child joins the cgroup, and the child joins it before it
//! execs the command, so the command's first exec and first socket are already judged. On the
//! way out every process in the cgroup is killed before the programs are detached.

use crate::{
    cgroup::{self, Cgroup},
    fanotify::{bpfmap::BpfMap, AskConfig, AskDecision, ExecAsk},
    issuer::Issuer,
    kernel::{
        entries,
        events::Decided,
        tier::{self, ExecTier},
        Enforcer,
    },
};
use anyhow::{bail, Context, Result};
use bridle_common::{Workload, EFFECT_PERMIT, EFFECT_REFUSE, WORKLOAD_ANON_EXEC, WORKLOAD_OBSERVE};
use bridle_engine::{compile, Code, Compiled, Effect, Engine, Mode, Policy};
use bridle_trust::{
    audit::{AuditConfig, AuditWriter, RecordFields},
    Subject, SystemClock,
};
use clap::Args;
use std::{
    ffi::OsString,
    fs::OpenOptions,
    os::{
        fd::{AsRawFd, RawFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::{
        atomic::{AtomicI32, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// The shipped default policy, built into the binary so `bridle run` works from anywhere.
const DEFAULT_POLICY: &str = include_str!("../../../policies/default.toml");

/// Arguments of `bridle run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Policy file (default: the shipped default policy).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Observe mode: refuse nothing, report what would have been refused.
    #[arg(long)]
    pub observe: bool,
    /// Also report permitted operations.
    #[arg(short, long)]
    pub verbose: bool,
    /// Use this exec tier instead of the best one the kernel offers (only a lower one).
    #[arg(long, value_name = "TIER")]
    pub exec_tier: Option<ExecTier>,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// Longest a workload exec waits for the engine on the fanotify tier before the fail mode
/// answers. Judging takes microseconds; this only bounds a stuck filesystem or a bug.
const ASK_DEADLINE: Duration = Duration::from_millis(500);

/// The signal that asked us to stop (0: none).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signal: libc::c_int) {
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
}

/// Runs `bridle run`.
pub fn run(global: &super::Global, args: RunArgs) -> Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("bridle run needs root: it loads eBPF programs and creates cgroups");
    }
    let policy = match &args.policy {
        Some(path) => Policy::load(path).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Policy::parse(DEFAULT_POLICY, "default.toml (built in)")
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    let observe = args.observe || policy.mode == Mode::Observe;
    let engine = Arc::new(Engine::new(policy));
    let compiled = compile(engine.policy());

    let root = cgroup::v2_root()?;
    let cgroup = Cgroup::create(&root, &format!("bridle-run-{}", std::process::id()))?;
    let outcome = confine_and_wait(
        &global.state_dir,
        &args,
        &engine,
        &compiled,
        observe,
        &cgroup,
    );
    // Whatever happened, nothing may outlive us in the cgroup, and the cgroup goes.
    let removed = cgroup.remove();
    let code = outcome?;
    removed?;
    Ok(code)
}

fn confine_and_wait(
    state_dir: &Path,
    args: &RunArgs,
    engine: &Arc<Engine>,
    compiled: &Compiled,
    observe: bool,
    cgroup: &Cgroup,
) -> Result<ExitCode> {
    if cgroup.level() > bridle_common::MAX_CGROUP_DEPTH {
        bail!(
            "{} is {} levels below the cgroup root; the programs look {} levels up",
            cgroup.path().display(),
            cgroup.level(),
            bridle_common::MAX_CGROUP_DEPTH
        );
    }
    let mut enforcer = Enforcer::load()?;
    let probe = tier::probe();
    let tier = probe.choose(args.exec_tier)?;
    enforcer.enable_exec_tier(tier)?;
    // One workload, one policy for its whole life: its cgroup id serves as its slot too.
    let slot = cgroup.id();
    let mut entries = entries::build(engine, compiled, slot)?;
    for warning in &entries.not_enforced {
        eprintln!("bridle: warning: {warning}");
    }
    // Every entry's permit is signed and stored before the entry reaches the kernel.
    let policy = engine.policy();
    let mut issuer = Issuer::open(state_dir, policy.permit_ttl)?;
    let subject = Subject {
        cgroup_id: cgroup.id(),
        cgroup_path: cgroup.path().display().to_string(),
    };
    issuer.issue(policy, compiled, &subject, entries.rules())?;
    entries.stamp(|rule| issuer.stamp(rule));
    let default = if compiled.default == Effect::Permit {
        EFFECT_PERMIT
    } else {
        EFFECT_REFUSE
    };
    let mut flags = if observe { WORKLOAD_OBSERVE } else { 0 };
    if compiled.allow_anonymous_exec {
        flags |= WORKLOAD_ANON_EXEC;
    }
    let mut config = Workload {
        flags,
        exec_default: default,
        connect_default: default,
        slot,
        ..Workload::default()
    };
    crate::kernel::net::set_raw(&mut config, compiled);
    enforcer.install(cgroup.id(), config, &entries)?;
    enforcer.attach_cgroup(cgroup.path())?;
    let mut events = enforcer.take_events()?;
    // The fanotify tier: its task table gets the first process before it execs (below);
    // everything it forks the kernel records itself.
    let (decisions_tx, decisions) = std::sync::mpsc::channel::<AskDecision>();
    let (ask, tasks_fd) = if tier == ExecTier::Fanotify {
        let ask = ExecAsk::start(AskConfig {
            workload: cgroup.id(),
            slot,
            decisions: decisions_tx,
            engine: Arc::clone(engine),
            rules: compiled.rules.iter().map(|r| r.name.clone()).collect(),
            observe,
            allow_anonymous: compiled.allow_anonymous_exec,
            deadline: ASK_DEADLINE,
            tasks: BpfMap::new(enforcer.map_fd("TASKS")?),
            exec_rules: BpfMap::new(enforcer.map_fd("EXEC_RULES")?),
        })
        .context("starting the fanotify exec tier")?;
        (Some(ask), Some(BpfMap::new(enforcer.map_fd("TASKS")?)))
    } else {
        (None, None)
    };
    // Said only now that every part of the tier is in place: never claim what is not active.
    let forced = if tier < probe.best {
        format!(" (forced; best available: {})", probe.best)
    } else {
        String::new()
    };
    let marks = ask
        .as_ref()
        .map(|a| {
            let names: Vec<String> = a.marked.iter().map(|m| m.display().to_string()).collect();
            format!(" (filesystems asked: {})", names.join(" "))
        })
        .unwrap_or_default();
    eprintln!(
        "bridle: exec tier: {tier}{forced}: {}{marks}",
        tier.effect()
    );
    crate::os::on_stop_signals(on_stop_signal)?;
    let audit = AuditWriter::open(
        &state_dir.join("audit"),
        issuer.key(),
        Box::new(SystemClock),
        AuditConfig::default(),
    )
    .with_context(|| format!("opening the audit trail under {}", state_dir.display()))?;
    let permit_of = (0..compiled.rules.len() as u32)
        .filter_map(|i| Some((compiled.rules[i as usize].name.clone(), issuer.stamp(i)?.0)))
        .collect();
    let mut reporter = Reporter {
        verbose: args.verbose,
        compiled,
        permit_of,
        entries: &entries,
        workload: subject.cgroup_path.clone(),
        audit,
    };
    // Renew well before expiry, so a slow renewal never lets a permit lapse under a live run.
    let renew_every = (issuer.ttl() / 2).max(Duration::from_secs(1));
    let mut next_renewal = Instant::now() + renew_every;

    // The sock_create hook cannot see packet sockets (see net::drop_net_raw); without the
    // capability they need, the command cannot open them either. Observe mode refuses nothing.
    let drop_raw = !observe && config.raw_effect != EFFECT_PERMIT;
    let child = spawn_in_cgroup(
        &args.command,
        cgroup,
        tasks_fd.as_ref().map(|m| (m.raw_fd(), cgroup.id())),
        drop_raw,
    )?;
    let pid = nix::unistd::Pid::from_raw(child as i32);
    let status = loop {
        crate::os::wait_readable(events.as_raw_fd(), Duration::from_millis(50));
        let mut recorded = false;
        while let Some(item) = events.next() {
            reporter.handle(&item)?;
            recorded = true;
        }
        while let Ok(decision) = decisions.try_recv() {
            reporter.handle_ask(decision)?;
            recorded = true;
        }
        if recorded {
            reporter.audit.flush().context("flushing the audit trail")?;
        }
        reporter
            .audit
            .tick()
            .context("checkpointing the audit trail")?;
        if Instant::now() >= next_renewal {
            issuer.renew()?;
            let mut renewed = entries::build(engine, compiled, slot)?;
            renewed.stamp(|rule| issuer.stamp(rule));
            enforcer.install(cgroup.id(), config, &renewed)?;
            next_renewal = Instant::now() + renew_every;
        }
        let stop = STOP_SIGNAL.load(Ordering::SeqCst);
        if stop != 0 {
            cgroup.kill_all(Duration::from_secs(5))?;
            let _ = nix::sys::wait::waitpid(pid, None);
            break 128 + stop;
        }
        match nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => break code,
            Ok(nix::sys::wait::WaitStatus::Signaled(_, signal, _)) => break 128 + signal as i32,
            Ok(_) => {}
            Err(err) => return Err(err).context("waiting for the command"),
        }
    };
    // The command is gone; its descendants go too, before the programs are detached.
    cgroup.kill_all(Duration::from_secs(5))?;
    if let Some(ask) = ask {
        let failed = ask.stats.failed.load(Ordering::Relaxed);
        if failed > 0 {
            eprintln!(
                "bridle: warning: {failed} exec permission events were answered by the fail mode"
            );
        }
        // Stops the reader and its judge, and closes the fanotify group.
        drop(ask);
    }
    while let Some(item) = events.next() {
        reporter.handle(&item)?;
    }
    while let Ok(decision) = decisions.try_recv() {
        reporter.handle_ask(decision)?;
    }
    reporter.audit.close().context("closing the audit trail")?;
    let stats = enforcer.stats()?;
    if stats.events_lost > 0 {
        eprintln!(
            "bridle: warning: {} decision events were lost (ring buffer full): the kernel enforced them, but they are missing from the audit trail",
            stats.events_lost
        );
    }
    Ok(ExitCode::from(status.clamp(0, 255) as u8))
}

/// Prints decisions for the operator and appends every one to the audit trail.
struct Reporter<'a> {
    verbose: bool,
    compiled: &'a Compiled,
    /// Permit ids by rule name, for decisions taken in user space.
    permit_of: std::collections::HashMap<String, u64>,
    entries: &'a entries::KernelEntries,
    workload: String,
    audit: AuditWriter,
}

impl Reporter<'_> {
    /// A refusal the fanotify tier took in user space: the kernel never saw that exec.
    fn handle_ask(&mut self, d: AskDecision) -> Result<()> {
        let rule = d.rule.map(|r| format!(", rule {r}")).unwrap_or_default();
        if d.observed {
            eprintln!(
                "bridle: observed exec {} (OBSERVED: would be refused, {}{rule})",
                d.path,
                d.code.as_str()
            );
        } else {
            eprintln!(
                "bridle: refused exec {} ({}{rule})",
                d.path,
                d.code.as_str()
            );
        }
        let rule = rule.strip_prefix(", rule ").map(str::to_owned);
        let (comm, uid) = proc_identity(d.pid);
        let (effect, code) = if d.observed {
            (Effect::Permit, Code::Observed)
        } else {
            (Effect::Refuse, d.code)
        };
        self.audit
            .append(RecordFields {
                workload: self.workload.clone(),
                pid: d.pid as u32,
                uid,
                comm,
                action: "exec".to_owned(),
                object: d.path,
                effect,
                code,
                permit_id: rule.as_ref().and_then(|r| self.permit_of.get(r).copied()),
                rule,
            })
            .context("appending to the audit trail")?;
        Ok(())
    }

    fn handle(&mut self, record: &[u8]) -> Result<()> {
        let Some(decided) = Decided::decode(record) else {
            return Ok(());
        };
        let described = decided.describe(self.compiled, self.entries, &self.workload);
        if !decided.permitted || self.verbose {
            eprintln!("{}", described.line);
        }
        self.audit
            .append(described.record)
            .context("appending to the audit trail")?;
        Ok(())
    }
}

/// The comm and real uid of a live process (best effort: it may be gone already).
fn proc_identity(pid: i32) -> (String, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    let comm = field("Name:").unwrap_or_default();
    let uid = field("Uid:")
        .and_then(|v| v.split_whitespace().next().and_then(|u| u.parse().ok()))
        .unwrap_or(u32::MAX);
    (comm, uid)
}

/// Starts `command` as a child that joins `cgroup` before it execs; with `tasks` (the task
/// table's fd and the workload id) it also enters itself there, so its first exec is asked;
/// without `CAP_NET_RAW` if `drop_raw`.
fn spawn_in_cgroup(
    command: &[OsString],
    cgroup: &Cgroup,
    tasks: Option<(RawFd, u64)>,
    drop_raw: bool,
) -> Result<u32> {
    let (program, rest) = command.split_first().context("no command given after --")?;
    let procs_path = cgroup.path().join("cgroup.procs");
    let procs = OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .with_context(|| format!("opening {}", procs_path.display()))?;
    let procs_fd: RawFd = procs.as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(rest);
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe calls
    // (write(2) on an fd opened before the fork, prctl and capset); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Writing "0" moves the writing process itself.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            // If bridle itself dies, its programs go with it: the command must not outlive
            // them unconfined. (Its own children are not covered; see the README.)
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some((fd, workload)) = tasks {
                let pid = libc::getpid() as u32;
                let rc = crate::fanotify::bpfmap::update_raw(
                    fd,
                    (&pid as *const u32).cast(),
                    (&workload as *const u64).cast(),
                    crate::fanotify::bpfmap::BPF_ANY,
                );
                if rc != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if drop_raw {
                crate::kernel::net::drop_net_raw()?;
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.to_string_lossy()))?;
    drop(procs);
    let pid = child.id();
    // The child is reaped with waitpid by pid; std's handle is not needed any more.
    std::mem::forget(child);
    Ok(pid)
}
