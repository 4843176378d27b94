//! `bridle run`: start a command in a fresh confined cgroup, standalone.
//!
//! The order of steps is the security argument: the cgroup exists and every kernel entry and
//! program is in place before the child joins the cgroup, and the child joins it before it
//! execs the command, so the command's first exec and first socket are already judged. On the
//! way out every process in the cgroup is killed before the programs are detached.

use crate::{
    cgroup::{self, Cgroup},
    kernel::{entries, events::Decided, Enforcer},
};
use anyhow::{bail, Context, Result};
use bridle_common::{Workload, EFFECT_PERMIT, EFFECT_REFUSE, WORKLOAD_OBSERVE};
use bridle_engine::{compile, Effect, Engine, Mode, Policy};
use clap::Args;
use std::{
    ffi::OsString,
    fs::OpenOptions,
    os::{
        fd::{AsRawFd, RawFd},
        unix::process::CommandExt,
    },
    path::PathBuf,
    process::{Command, ExitCode},
    sync::atomic::{AtomicI32, Ordering},
    time::Duration,
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
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// The signal that asked us to stop (0: none).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signal: libc::c_int) {
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
}

/// Runs `bridle run`.
pub fn run(args: RunArgs) -> Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("bridle run needs root: it loads eBPF programs and creates cgroups");
    }
    let policy = match &args.policy {
        Some(path) => Policy::load(path).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Policy::parse(DEFAULT_POLICY, "default.toml (built in)")
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    let observe = args.observe || policy.mode == Mode::Observe;
    let engine = Engine::new(policy);
    let compiled = compile(engine.policy());

    let root = cgroup::v2_root()?;
    let cgroup = Cgroup::create(&root, &format!("bridle-run-{}", std::process::id()))?;
    let outcome = confine_and_wait(&args, &engine, &compiled, observe, &cgroup);
    // Whatever happened, nothing may outlive us in the cgroup, and the cgroup goes.
    let removed = cgroup.remove();
    let code = outcome?;
    removed?;
    Ok(code)
}

fn confine_and_wait(
    args: &RunArgs,
    engine: &Engine,
    compiled: &bridle_engine::Compiled,
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
    let entries = entries::build(engine, compiled, cgroup.id())?;
    for warning in &entries.not_enforced {
        eprintln!("bridle: warning: {warning}");
    }
    let default = if compiled.default == Effect::Permit {
        EFFECT_PERMIT
    } else {
        EFFECT_REFUSE
    };
    let mut config = Workload {
        flags: if observe { WORKLOAD_OBSERVE } else { 0 },
        exec_default: default,
        connect_default: default,
        ..Workload::default()
    };
    crate::kernel::net::set_raw(&mut config, compiled);
    enforcer.install(cgroup.id(), config, &entries)?;
    enforcer.attach_cgroup(cgroup.path())?;
    let mut events = enforcer.take_events()?;
    install_stop_handlers()?;

    let rule_name = |i: u32| compiled.rules.get(i as usize).map(|r| r.name.clone());
    let path_of = |dev: u64, ino: u64| entries.exec_paths.get(&(dev, ino)).cloned();
    let report = |decided: Decided| {
        if decided.permitted && !args.verbose {
            return;
        }
        let mut line = decided.report_line(rule_name);
        if let crate::kernel::events::Operation::Exec { path, dev, ino } = &decided.operation {
            if let Some(real) = path_of(*dev, *ino) {
                if real.as_os_str() != path.as_str() {
                    line.push_str(&format!(" [file {}]", real.display()));
                }
            }
        }
        eprintln!("{line}");
    };

    // The sock_create hook cannot see packet sockets (see net::drop_net_raw); without the
    // capability they need, the command cannot open them either. Observe mode refuses nothing.
    let drop_raw = !observe && config.raw_effect != EFFECT_PERMIT;
    let child = spawn_in_cgroup(&args.command, cgroup, drop_raw)?;
    let pid = nix::unistd::Pid::from_raw(child as i32);
    let status = loop {
        wait_readable(events.as_raw_fd(), Duration::from_millis(50));
        while let Some(item) = events.next() {
            if let Some(decided) = Decided::decode(&item) {
                report(decided);
            }
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
    while let Some(item) = events.next() {
        if let Some(decided) = Decided::decode(&item) {
            report(decided);
        }
    }
    let stats = enforcer.stats()?;
    if stats.events_lost > 0 {
        eprintln!(
            "bridle: warning: {} decision events were lost (ring buffer full); the kernel still enforced them",
            stats.events_lost
        );
    }
    Ok(ExitCode::from(status.clamp(0, 255) as u8))
}

fn install_stop_handlers() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }
            .with_context(|| format!("installing a {signal} handler"))?;
    }
    Ok(())
}

/// Starts `command` as a child that joins `cgroup` before it execs, without `CAP_NET_RAW` if
/// `drop_raw`.
fn spawn_in_cgroup(command: &[OsString], cgroup: &Cgroup, drop_raw: bool) -> Result<u32> {
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

fn wait_readable(fd: RawFd, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call. EINTR (a stop signal) simply
    // ends the wait early, which is what we want.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
}
