//! `bridle run`: start a command in a fresh confined cgroup, standalone (or through a running
//! daemon, see [`super::run_daemon`]).
//!
//! The order of steps is the security argument: the cgroup exists and every kernel entry and
//! program is in place before the child joins the cgroup, and the child joins it before it
//! execs the command, so the command's first exec and first socket are already judged. On the
//! way out every process in the cgroup is killed before the programs are detached.

use crate::{
    cgroup::{self, Cgroup},
    dns::{self, DnsConfig, DnsReport, Resolver},
    fanotify::{
        bpfmap::BpfMap, mounts::MountMarker, AskConfig, AskDecision, AskTable, ExecAsk, MarkScope,
        WorkloadAsk,
    },
    harden::Hardening,
    issuer::Issuer,
    kernel::{entries, events::Decided, tally::HARVEST_EVERY, tier::ExecTier, Enforcer},
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
    /// Upstream DNS server of the workload's resolver (default: the first `nameserver` of
    /// /etc/resolv.conf).
    #[arg(long, value_name = "ADDR:PORT")]
    pub dns_upstream: Option<std::net::SocketAddr>,
    /// Shortest life, in seconds, of the entry an answered address gets (record TTLs below
    /// it are raised to it) [default: 5].
    #[arg(long, value_name = "SECS")]
    pub dns_ttl_min: Option<u64>,
    /// Longest life, in seconds, of the entry an answered address gets [default: 3600].
    #[arg(long, value_name = "SECS")]
    pub dns_ttl_max: Option<u64>,
    /// How long the resolver waits for the upstream before it answers SERVFAIL, in ms
    /// [default: 2000].
    #[arg(long, value_name = "MS")]
    pub dns_timeout: Option<u64>,
    /// Confine the command here even when a bridle daemon is running (which otherwise
    /// confines it, with its pinned enforcement, exec tier, resolver and audit trail).
    #[arg(long)]
    pub standalone: bool,
    /// The daemon's control socket.
    #[arg(long, default_value = crate::daemon::control::DEFAULT_SOCKET, env = "BRIDLE_SOCKET")]
    pub socket: PathBuf,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

impl RunArgs {
    /// The resolver settings the `--dns-*` options ask for (the daemon's `[resolver]`
    /// defaults for those not given).
    fn dns_settings(&self) -> dns::Settings {
        let defaults = crate::daemon::config::Resolver::default();
        dns::Settings {
            upstream: self.dns_upstream.unwrap_or_else(dns::system_upstream),
            timeout: self
                .dns_timeout
                .map_or(defaults.timeout, Duration::from_millis),
            ttl_min: self
                .dns_ttl_min
                .map_or(defaults.ttl_min, Duration::from_secs),
            ttl_max: self
                .dns_ttl_max
                .map_or(defaults.ttl_max, Duration::from_secs),
        }
    }

    /// Whether any `--dns-*` option was given.
    pub(super) fn dns_options_given(&self) -> bool {
        self.dns_upstream.is_some()
            || self.dns_ttl_min.is_some()
            || self.dns_ttl_max.is_some()
            || self.dns_timeout.is_some()
    }
}

/// Longest a workload exec waits for the engine on the fanotify tier before the fail mode
/// answers. Judging takes microseconds; this only bounds a stuck filesystem or a bug.
const ASK_DEADLINE: Duration = Duration::from_millis(500);

/// How often expired DNS entries are removed from the kernel maps (the kernel ignores an
/// expired permit on its own; this only keeps the maps small).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The signal that asked us to stop (0: none).
pub(super) static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signal: libc::c_int) {
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
}

/// The command's exit status (128 + the signal that ended it) once it has ended, without
/// waiting; on a stop signal, the whole cgroup is killed first and 128 + that signal is the
/// status.
pub(super) fn command_ended(pid: nix::unistd::Pid, cgroup: &Cgroup) -> Result<Option<i32>> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let stop = STOP_SIGNAL.load(Ordering::SeqCst);
    if stop != 0 {
        cgroup.kill_all(Duration::from_secs(5))?;
        let _ = waitpid(pid, None);
        return Ok(Some(128 + stop));
    }
    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Ok(Some(code)),
        Ok(WaitStatus::Signaled(_, signal, _)) => Ok(Some(128 + signal as i32)),
        Ok(_) => Ok(None),
        Err(err) => Err(err).context("waiting for the command"),
    }
}

/// Runs `bridle run`.
pub fn run(global: &super::Global, args: RunArgs) -> Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("bridle run needs root: it loads eBPF programs and creates cgroups");
    }
    // The workload loses CAP_SYS_PTRACE (crate::harden): then it cannot trace us or read our
    // memory, even as uid 0.
    crate::harden::protect_self().context("marking bridle non-dumpable")?;
    warn_if_unprivileged_bpf();
    let policy = match &args.policy {
        Some(path) => Policy::load(path).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Policy::parse(DEFAULT_POLICY, "default.toml (built in)")
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    let observe = args.observe || policy.mode == Mode::Observe;
    let engine = Arc::new(Engine::new(policy));
    let compiled = compile(engine.policy());

    let through_daemon = !args.standalone && super::run_daemon::daemon_answers(&args.socket);
    let root = cgroup::v2_root()?;
    let cgroup = Cgroup::create(&root, &format!("bridle-run-{}", std::process::id()))?;
    let outcome = if through_daemon {
        crate::os::on_stop_signals(on_stop_signal).and_then(|()| {
            super::run_daemon::confine_and_wait(
                &global.state_dir,
                &args,
                DEFAULT_POLICY,
                &compiled,
                observe,
                &cgroup,
            )
        })
    } else {
        confine_and_wait(
            &global.state_dir,
            &args,
            &engine,
            &compiled,
            observe,
            &cgroup,
        )
    };
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
    let probe = enforcer.probe_tiers();
    let tier = probe.choose(args.exec_tier)?;
    enforcer.enable_exec_tier(tier)?;
    // One workload, one policy for its whole life: its cgroup id serves as its slot too.
    let slot = cgroup.id();
    let mut entries = entries::build(engine, compiled, slot)?;
    entries.not_enforced.extend(enforcer.unix_warning(compiled));
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
    // Host rules have no entries until a name is answered, but the entries the resolver
    // installs then carry their permits' ids: issue those permits now.
    let host_rules = compiled.hosts.iter().map(|h| h.rule.0);
    issuer.issue(
        policy,
        compiled,
        &subject,
        entries.rules().into_iter().chain(host_rules),
    )?;
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
    let (dns_tx, dns_reports) = std::sync::mpsc::channel::<DnsReport>();
    let resolver = start_resolver(
        args,
        &enforcer,
        compiled,
        &issuer,
        observe,
        cgroup.id(),
        dns_tx,
    )?;
    // The tally map is in place before the programs are attached: no permit goes uncounted.
    // Where the kernel refuses the map swap counting relies on, every permit is an event.
    let mut tallies = match enforcer.tallies() {
        Ok(tallies) => tallies,
        Err(err) => {
            eprintln!(
                "bridle: warning: repeated permits are not counted in the kernel ({err:#}): every permitted connect is an event"
            );
            None
        }
    };
    enforcer.attach_cgroup(cgroup.path())?;
    let mut events = enforcer.take_events()?;
    // The fanotify tier. The task table records the first process when it moves itself into
    // the cgroup (below), and everything it forks.
    let (decisions_tx, decisions) =
        crate::fanotify::decision_channel().context("creating the exec ask's decision channel")?;
    let ask = if tier == ExecTier::Fanotify {
        let workloads = AskTable::default();
        workloads
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(
                cgroup.id(),
                Arc::new(WorkloadAsk {
                    workload: cgroup.id(),
                    slot,
                    engine: Arc::clone(engine),
                    rules: compiled.rules.iter().map(|r| r.name.clone()).collect(),
                    observe,
                    allow_anonymous: compiled.allow_anonymous_exec,
                    quarantined: false,
                }),
            );
        let ask = ExecAsk::start(AskConfig {
            // The workload gets its own mount namespace (crate::harden): only its mounts are
            // marked, from inside it, so no other exec on the host waits for us.
            scope: MarkScope::WorkloadMounts,
            workloads,
            decisions: decisions_tx,
            deadline: ASK_DEADLINE,
            tasks: BpfMap::new(enforcer.map_fd("TASKS")?),
            exec_rules: BpfMap::new(enforcer.map_fd("EXEC_RULES")?),
        })
        .context("starting the fanotify exec tier")?;
        Some(ask)
    } else {
        None
    };
    // Said only now that every part of the tier is in place: never claim what is not active.
    let forced = if tier < probe.best {
        format!(" (forced; best available: {})", probe.best)
    } else {
        String::new()
    };
    let marks = if ask.is_some() {
        " (the workload's own mounts are asked; other processes are not)"
    } else {
        ""
    };
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
    let mut next_sweep = Instant::now() + SWEEP_EVERY;
    let mut next_harvest = Instant::now() + HARVEST_EVERY;

    // The sock_create hook runs only for IPv4 and IPv6 sockets, so it never sees a packet
    // socket; every packet socket needs CAP_NET_RAW, so without it the command cannot open
    // one (EPERM). Observe mode refuses nothing.
    let drop_raw = !observe && config.raw_effect != EFFECT_PERMIT;
    let mut hardening = workload_hardening(args, state_dir, None, cgroup, drop_raw)?;
    if let Some(ask) = &ask {
        hardening.mark_exec_mounts(MountMarker::new(ask.group_fd()));
    }
    let child = spawn_in_cgroup(&args.command, cgroup, hardening)?;
    let pid = nix::unistd::Pid::from_raw(child as i32);
    let status = loop {
        crate::os::wait_readable_any(
            &[events.as_raw_fd(), decisions.fd()],
            Duration::from_millis(50),
        );
        let mut recorded = false;
        while let Some(item) = events.next() {
            reporter.handle(&item)?;
            recorded = true;
        }
        let mut waiting = Vec::new();
        while let Some(mut decision) = decisions.try_recv() {
            waiting.extend(decision.recorded.take());
            reporter.handle_ask(decision)?;
            recorded = true;
        }
        while let Ok(report) = dns_reports.try_recv() {
            reporter.handle_dns(report)?;
        }
        if let Some(tallies) = tallies.as_mut().filter(|_| Instant::now() >= next_harvest) {
            let counted = tallies.harvest()?;
            // The events of the harvested keys are all queued now: their first decisions go
            // to the trail before their counts.
            while let Some(item) = events.next() {
                reporter.handle(&item)?;
                recorded = true;
            }
            for (key, counts) in &counted {
                reporter.handle_tally(key, counts)?;
                recorded = true;
            }
            reporter
                .audit
                .write_out()
                .context("writing the audit trail")?;
            tallies.release()?;
            next_harvest = Instant::now() + HARVEST_EVERY;
        }
        if Instant::now() >= next_sweep {
            resolver.sweep()?;
            next_sweep = Instant::now() + SWEEP_EVERY;
        }
        if recorded {
            reporter.audit.flush().context("flushing the audit trail")?;
        }
        // Refused execs are answered once their records are written (AskDecision::recorded).
        for done in waiting {
            let _ = done.try_send(());
        }
        reporter
            .audit
            .tick()
            .context("checkpointing the audit trail")?;
        enforcer.sync_clock()?;
        if Instant::now() >= next_renewal {
            issuer.renew()?;
            let mut renewed = entries::build(engine, compiled, slot)?;
            renewed.stamp(|rule| issuer.stamp(rule));
            enforcer.install(cgroup.id(), config, &renewed)?;
            resolver.restamp(|rule| issuer.stamp(rule))?;
            next_renewal = Instant::now() + renew_every;
        }
        if let Some(status) = command_ended(pid, cgroup)? {
            break status;
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
    // No task is left to decide anything: this harvest holds every count.
    let counted = match tallies.as_mut() {
        Some(tallies) => tallies.harvest()?,
        None => Vec::new(),
    };
    while let Some(item) = events.next() {
        reporter.handle(&item)?;
    }
    for (key, counts) in &counted {
        reporter.handle_tally(key, counts)?;
    }
    if let Some(tallies) = tallies.as_mut() {
        tallies.release()?;
    }
    while let Some(decision) = decisions.try_recv() {
        reporter.handle_ask(decision)?;
    }
    // Stops the resolver's threads; what they decided last is still queued.
    drop(resolver);
    while let Ok(report) = dns_reports.try_recv() {
        reporter.handle_dns(report)?;
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

/// Starts the workload's resolver and points its DNS traffic at it (before any workload
/// process exists).
fn start_resolver(
    args: &RunArgs,
    enforcer: &Enforcer,
    compiled: &Compiled,
    issuer: &Issuer,
    observe: bool,
    workload: u64,
    reports: std::sync::mpsc::Sender<DnsReport>,
) -> Result<Resolver> {
    let map = |name: &str| enforcer.map_fd(name).map(BpfMap::new);
    Resolver::start(DnsConfig {
        settings: args.dns_settings(),
        workload,
        // One workload, one policy: its cgroup id is its slot (see confine_and_wait).
        view: dns::View::new(compiled, workload, observe, |rule| issuer.stamp(rule)),
        maps: [map(crate::kernel::NET_RULES)?, map("DNS_REDIRECT")?],
        reports,
    })
    .context("starting the workload's DNS resolver")
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
        let (comm, uid) = (d.comm.clone(), d.uid);
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

    /// A decision of the workload's resolver.
    fn handle_dns(&mut self, report: DnsReport) -> Result<()> {
        let quiet = matches!(report.outcome, dns::Outcome::Permitted(_)) && !self.verbose;
        if !quiet {
            eprintln!("{}", report.line(|_| report.rule_name.clone()));
        }
        self.audit
            .append(report.audit_fields(self.workload.clone()))
            .context("appending to the audit trail")?;
        Ok(())
    }

    /// Repeats of a permitted socket decision the kernel counted (one record for all of them).
    fn handle_tally(
        &mut self,
        key: &bridle_common::TallyKey,
        counts: &bridle_common::TallyCount,
    ) -> Result<()> {
        match Decided::tallied(key, counts) {
            Some(decided) => self.report(decided),
            None => Ok(()),
        }
    }

    fn handle(&mut self, record: &[u8]) -> Result<()> {
        match Decided::decode(record) {
            Some(decided) => self.report(decided),
            None => Ok(()),
        }
    }

    fn report(&mut self, decided: Decided) -> Result<()> {
        let described = decided.describe(self.compiled, self.entries, &self.workload);
        if !decided.permitted || self.verbose {
            let mut line = described.line;
            dns::hint_unnamed(self.compiled, &decided, &mut line);
            eprintln!("{line}");
        }
        self.audit
            .append_counted(described.record, described.repeats)
            .context("appending to the audit trail")?;
        Ok(())
    }
}

/// What the workload loses before its command runs (see crate::harden): bridle's own files
/// (the policy, `extra`, the state directory, /etc/bridle, bpffs, the bridle binary) become
/// read-only to it, it gets its own namespaces, and `CAP_NET_RAW` goes with `drop_raw`.
pub(super) fn workload_hardening(
    args: &RunArgs,
    state_dir: &Path,
    extra: Option<&Path>,
    cgroup: &Cgroup,
    drop_raw: bool,
) -> Result<Hardening> {
    let bridle_exe = std::env::current_exe().ok();
    let protected = [
        args.policy.as_deref(),
        extra,
        Some(state_dir),
        Some(Path::new("/etc/bridle")),
        // bpffs, where pins live.
        Some(Path::new("/sys/fs/bpf")),
        bridle_exe.as_deref(),
    ];
    // The run's cgroup is a child of the cgroup2 root (Cgroup::create in `run`).
    let cgroup_root = cgroup
        .path()
        .parent()
        .context("the run's cgroup has no parent")?;
    Hardening::new(protected.into_iter().flatten(), cgroup_root, drop_raw)
        .context("preparing the workload's namespaces")
}

/// Starts `command` as a child that joins `cgroup` before it execs, then applies `hardening`
/// (see crate::harden).
pub(super) fn spawn_in_cgroup(
    command: &[OsString],
    cgroup: &Cgroup,
    mut hardening: Hardening,
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
    // (write(2) on an fd opened before the fork, prctl, unshare, mount, capset); it
    // allocates nothing.
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
            hardening.apply()
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

/// Says so when the kernel lets processes without CAP_BPF use bpf(2): then a workload running
/// as uid 0 could open bridle's pinned maps by their file permissions.
fn warn_if_unprivileged_bpf() {
    let setting =
        std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled").unwrap_or_default();
    if setting.trim() == "0" {
        eprintln!(
            "bridle: warning: kernel.unprivileged_bpf_disabled is 0: a workload running as uid 0 \
             could open bridle's pinned maps; set it to 2 (sysctl kernel.unprivileged_bpf_disabled=2)"
        );
    }
}
