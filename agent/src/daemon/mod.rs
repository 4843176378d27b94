//! `bridle daemon`: confines the cgroups the configuration names, for as long as the host runs.
//!
//! Everything the kernel needs is pinned under the pin directory before a workload is judged,
//! so a daemon that restarts or dies leaves enforcement in place; a restarted daemon adopts the
//! pins, installs each workload's policy under a fresh slot, switches the workload to it in one
//! map update and only then deletes the old slot's entries. Reloads go the same way, all or
//! nothing: one policy with an error and every workload keeps the policy it had.

pub mod config;
pub mod control;
mod prepared;
mod quarantine;
mod resolver;
mod runtime;

use crate::{
    cgroup,
    fanotify::{bpfmap::BpfMap, AskConfig, AskDecision, AskTable, ExecAsk, MarkScope, WorkloadAsk},
    issuer::Issuer,
    kernel::{
        entries::{self, KernelEntries},
        events::Decided,
        net, pins,
        tally::{Tallies, HARVEST_EVERY},
        tier::ExecTier,
        unix, Enforcer,
    },
};
use anyhow::{bail, Context, Result};
use bridle_common::{Workload, EFFECT_PERMIT, EFFECT_REFUSE, WORKLOAD_ANON_EXEC, WORKLOAD_OBSERVE};
use bridle_engine::{Code, Compiled, Effect, Engine, Invariants, Mode, QuarantineAction, Verdict};
use bridle_trust::{
    audit::{AuditConfig, AuditWriter, RecordFields, Repeats},
    Subject, SystemClock,
};
use clap::{Args, ValueEnum};
use config::Config;
use control::{Reply, Request};
use prepared::{Prepared, PreparedPolicies};
use runtime::{Requested, Runtime};
use serde_json::json;
use std::{
    collections::{BTreeMap, HashSet},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        atomic::{AtomicI32, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};
use tracing::{error, info, warn};

/// Arguments of `bridle daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The configuration file.
    #[arg(long, default_value = "/etc/bridle/bridle.toml")]
    pub config: PathBuf,
    /// Where programs, maps and links are pinned.
    #[arg(long, default_value = pins::DEFAULT_DIR)]
    pub pin_dir: PathBuf,
    /// The control socket.
    #[arg(long, default_value = control::DEFAULT_SOCKET, env = "BRIDLE_SOCKET")]
    pub socket: PathBuf,
    /// Log format (default: the journal's native protocol when systemd connected stderr to
    /// the journal, else text).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// How the daemon writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Readable lines (under systemd they go to the journal).
    Text,
    /// One JSON object per line.
    Json,
    /// Structured entries sent to the journal (every field a journal field: CGROUP, ACTION…).
    Journal,
}

/// The signal that asked for something (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    SIGNAL.store(signal, Ordering::SeqCst);
}

/// One confined workload.
struct Confined {
    path: PathBuf,
    relative: String,
    /// The `[[confine]]` glob that matched.
    glob: String,
    policy_name: String,
    policy_file: PathBuf,
    mode: Option<Mode>,
    compiled: Arc<Compiled>,
    entries: KernelEntries,
    config: Workload,
    issuer: Issuer,
    next_renewal: Instant,
    /// Counts the kernel's refusals towards the policy's quarantine threshold.
    engine: Engine,
    /// Judges the workload's execs on the fanotify tier (stateless verdicts).
    ask_engine: Arc<Engine>,
    /// The quarantine in force, until an operator lifts it.
    quarantined: Option<QuarantineAction>,
    /// Confined on request (`bridle confine`, `bridle run`), not by a `[[confine]]` entry.
    requested: bool,
}

/// Where a workload's confinement comes from: a `[[confine]]` entry, or a request.
struct Source {
    glob: String,
    policy_name: String,
    policy_file: PathBuf,
    mode: Option<Mode>,
    requested: bool,
}

/// How the last reload went.
#[derive(Debug, Clone)]
enum LastReload {
    Never,
    Applied(SystemTime),
    Rejected(SystemTime, String),
}

struct Daemon {
    config: Config,
    config_file: PathBuf,
    pin_dir: PathBuf,
    enforcer: Enforcer,
    invariants: Vec<bridle_engine::Rule>,
    workloads: BTreeMap<u64, Confined>,
    audit: AuditWriter,
    last_reload: LastReload,
    started: SystemTime,
    adopted: bool,
    /// Clients of `bridle events --follow`.
    followers: control::Followers,
    /// The exec tier in force.
    exec_tier: ExecTier,
    /// The fanotify tier's ask, and the workloads it judges.
    ask: Option<ExecAsk>,
    ask_table: AskTable,
    /// Confinements asked for at run time, and configured ones released.
    runtime: Runtime,
    /// The DNS resolvers of workloads whose policies have host rules.
    resolvers: resolver::Resolvers,
    /// The policies as last prepared, which a reload reuses for unchanged files.
    policies: PreparedPolicies,
    /// Slots were left that the main loop collects once it has answered.
    collect_due: bool,
    /// What workloads held before a switch, freed once the main loop has answered (a
    /// 10,000-rule policy's engine, entries and permits take milliseconds to free).
    retired: Vec<Retired>,
}

/// A workload's policy state, replaced by a switch and not yet freed.
#[allow(dead_code)] // Held only to be dropped later.
struct Retired {
    compiled: Arc<Compiled>,
    entries: KernelEntries,
    issuer: Issuer,
    engine: Engine,
    ask_engine: Arc<Engine>,
}

/// Longest an exec of a workload waits for the engine on the fanotify tier before the fail
/// mode answers.
const ASK_DEADLINE: Duration = Duration::from_millis(500);

/// Runs `bridle daemon` until SIGTERM or SIGINT; enforcement stays pinned afterwards.
pub fn run(args: DaemonArgs) -> Result<ExitCode> {
    let started_at = Instant::now();
    init_logging(args.log_format);
    if !nix::unistd::geteuid().is_root() {
        bail!("bridle daemon needs root: it loads eBPF programs and confines cgroups");
    }
    // A workload without CAP_SYS_PTRACE then cannot trace the daemon or read its memory.
    crate::harden::protect_self().context("marking the daemon non-dumpable")?;
    let config = Config::load(&args.config)?;
    let invariants = load_invariants(&config)?;
    pins::ensure_bpffs(&args.pin_dir)?;
    let (mut enforcer, adopted) = match Enforcer::adopt(&args.pin_dir)? {
        Some(e) => (e, true),
        None => {
            let mut e = Enforcer::load()?;
            tracing::debug!(ms = started_at.elapsed().as_millis(), "programs loaded");
            let probe = e.probe_tiers();
            tracing::debug!(ms = started_at.elapsed().as_millis(), "exec tiers probed");
            for (t, why) in &probe.unavailable {
                info!(tier = %t, "exec tier {t} unavailable: {why}");
            }
            e.enable_exec_tier(probe.choose(config.exec_tier)?)?;
            if let Err(err) = e.watch_cgroups() {
                warn!("new cgroups are found by the scan only (every scan_interval): {err:#}");
            }
            e.pin(&args.pin_dir)?;
            tracing::debug!(
                ms = started_at.elapsed().as_millis(),
                "tier loaded and pinned"
            );
            (e, false)
        }
    };
    info!(
        pin_dir = %args.pin_dir.display(),
        adopted,
        "kernel programs {}",
        if adopted { "adopted from pins: enforcement never stopped" } else { "loaded and pinned" }
    );
    let mut exec_tier = enforcer.exec_tier();
    if let Some(wanted) = config.exec_tier.filter(|t| *t != exec_tier) {
        warn!(
            "exec_tier {wanted} is configured, but the pinned programs run tier {exec_tier}; \
             `bridle unload` and a restart change it"
        );
    }
    let ask_table = AskTable::default();
    let (ask_tx, ask_decisions) =
        crate::fanotify::decision_channel().context("creating the exec ask's decision channel")?;
    let ask = if exec_tier == ExecTier::Fanotify {
        let started = (|| {
            ExecAsk::start(AskConfig {
                scope: MarkScope::Filesystems,
                workloads: Arc::clone(&ask_table),
                decisions: ask_tx,
                deadline: ASK_DEADLINE,
                tasks: BpfMap::new(enforcer.map_fd("TASKS")?),
                exec_rules: BpfMap::new(enforcer.map_fd("EXEC_RULES")?),
            })
        })();
        match started {
            Ok(ask) => Some(ask),
            Err(err) => {
                // The backstop holds; say truthfully which tier that is.
                error!("the fanotify exec tier did not start, refused execs are killed instead: {err:#}");
                exec_tier = ExecTier::Kill;
                None
            }
        }
    } else {
        None
    };
    info!(tier = %exec_tier, "exec tier: {exec_tier}: {}", exec_tier.effect());
    let mut events = enforcer.take_events()?;
    // Counts a previous daemon left in the pinned tally map are harvested with the first
    // harvest; from here on this daemon swaps the maps.
    let mut tallies = match enforcer.tallies() {
        Ok(Some(tallies)) => Some(tallies),
        Ok(None) => {
            warn!("the pinned programs predate tallies: every permitted connect is an event");
            None
        }
        Err(err) => {
            // Where the kernel refuses the map swap counting relies on, the programs find no
            // tally map and send every permit as an event.
            warn!("repeated permits are not counted in the kernel ({err:#}): every permitted connect is an event");
            None
        }
    };
    let key = Issuer::open(&config.state_dir, Duration::from_secs(600))?.key();
    let audit = AuditWriter::open(
        &config.state_dir.join("audit"),
        key,
        Box::new(SystemClock),
        AuditConfig::default(),
    )
    .with_context(|| {
        format!(
            "opening the audit trail under {}",
            config.state_dir.display()
        )
    })?;
    let runtime = Runtime::load(&config.state_dir)?;
    let mut daemon = Daemon {
        config,
        config_file: args.config.clone(),
        pin_dir: args.pin_dir.clone(),
        enforcer,
        invariants,
        workloads: BTreeMap::new(),
        audit,
        last_reload: LastReload::Never,
        started: SystemTime::now(),
        adopted,
        followers: control::Followers::default(),
        exec_tier,
        ask,
        ask_table,
        runtime,
        resolvers: resolver::Resolvers::new(),
        policies: PreparedPolicies::default(),
        collect_due: false,
        retired: Vec::new(),
    };
    crate::os::on_stop_signals(on_signal)?;
    let (requests_tx, requests) =
        crate::channel::channel().context("creating the control request channel")?;
    let server = control::Server::start(&args.socket, requests_tx, daemon.followers.clone())?;
    tracing::debug!(ms = started_at.elapsed().as_millis(), "ready to confine");
    daemon.reconcile();
    crate::os::release_free_memory();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    daemon.notify_status();
    info!(
        ready_ms = started_at.elapsed().as_millis(),
        "enforcing: {} workload(s) confined",
        daemon.workloads.len()
    );

    let watchdog = sd_notify::watchdog_enabled();
    if let Some(every) = watchdog {
        info!("systemd watchdog every {every:?}");
    }
    let watchdog_every = watchdog.map(|w| w / 2);
    let mut next_ping = Instant::now();
    let mut next_scan = Instant::now() + daemon.config.scan_interval;
    let mut next_harvest = Instant::now();
    loop {
        crate::os::wait_readable_any(
            &[events.as_raw_fd(), ask_decisions.fd(), requests.fd()],
            Duration::from_millis(50),
        );
        let mut recorded = false;
        let mut created = false;
        while let Some(item) = events.next() {
            if item.first() == Some(&bridle_common::EVENT_CGROUP_CREATED) {
                created = true;
                continue;
            }
            daemon.record(&item);
            // In the file before the item leaves the pinned ring buffer (when it is dropped):
            // a daemon killed at any moment loses no decision.
            if let Err(err) = daemon.audit.write_out() {
                error!("writing the audit trail: {err:#}");
            }
            recorded = true;
        }
        let mut waiting = Vec::new();
        while let Some(mut decision) = ask_decisions.try_recv() {
            waiting.extend(decision.recorded.take());
            daemon.record_ask(decision);
            recorded = true;
        }
        recorded |= daemon.record_dns();
        if Instant::now() >= next_harvest {
            let (counted, seen) = daemon.harvest(&mut tallies, &mut events);
            recorded |= counted;
            created |= seen;
            next_harvest = Instant::now() + HARVEST_EVERY;
        }
        // Each batch reaches the disk before the next wait: a daemon killed afterwards loses
        // nothing it had drained (what it had not drained stays in the pinned ring buffer, and
        // an exec refusal is answered only once its record is written).
        if recorded {
            if let Err(err) = daemon.audit.flush() {
                error!("flushing the audit trail: {err:#}");
            }
        }
        for done in waiting {
            let _ = done.try_send(());
        }
        if let Err(err) = daemon.audit.tick() {
            error!("checkpointing the audit trail: {err:#}");
        }
        while let Some((request, reply)) = requests.try_recv() {
            let answer = daemon.answer(request);
            let _ = reply.send(answer);
        }
        match SIGNAL.swap(0, Ordering::SeqCst) {
            0 => {}
            libc::SIGHUP => daemon.reload(),
            signal => {
                info!(
                    signal,
                    "stopping; enforcement stays pinned (bridle unload removes it)"
                );
                break;
            }
        }
        if daemon.collect_due {
            daemon.collect();
        }
        if !daemon.retired.is_empty() {
            daemon.retired.clear();
            crate::os::release_free_memory();
        }
        let now = Instant::now();
        // A new cgroup is looked at as soon as the kernel says it exists.
        if created || now >= next_scan {
            daemon.reconcile();
            next_scan = now + daemon.config.scan_interval;
        }
        if let Err(err) = daemon.enforcer.sync_clock() {
            error!("updating the programs' clock offset: {err:#}");
        }
        daemon.renew_due(now);
        daemon.sweep_resolvers(now);
        if let Some(every) = watchdog_every {
            if now >= next_ping {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                next_ping = now + every;
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // Execs waiting on the group are let through by the kernel when it closes; the pinned
    // kill-on-exec backstop goes on judging them.
    drop(daemon.ask.take());
    while let Some(decision) = ask_decisions.try_recv() {
        daemon.record_ask(decision);
    }
    daemon.stop_resolvers();
    // What was counted so far goes to this daemon's trail; what is counted from now on waits
    // in the pinned tally map for the next daemon.
    let _ = daemon.harvest(&mut tallies, &mut events);
    drop(server);
    daemon.audit.close().context("closing the audit trail")?;
    Ok(ExitCode::SUCCESS)
}

fn init_logging(format: Option<LogFormat>) {
    use tracing_subscriber::prelude::*;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("BRIDLE_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    // systemd sets JOURNAL_STREAM when it connects stderr to the journal.
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let format = format.unwrap_or(if under_journal {
        LogFormat::Journal
    } else {
        LogFormat::Text
    });
    if format == LogFormat::Journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                // Field names as operators query them (`journalctl CGROUP=…`), and info at
                // the journal's own informational priority.
                let layer = layer
                    .with_syslog_identifier("bridle".to_owned())
                    .with_field_prefix(None)
                    .with_priority_mappings(tracing_journald::PriorityMappings {
                        info: tracing_journald::Priority::Informational,
                        debug: tracing_journald::Priority::Debug,
                        ..tracing_journald::PriorityMappings::new()
                    });
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .try_init();
                return;
            }
            Err(err) => eprintln!("bridle: no journal to log to ({err}); logging text to stderr"),
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text | LogFormat::Journal => builder.with_target(false).try_init(),
    };
}

fn load_invariants(config: &Config) -> Result<Vec<bridle_engine::Rule>> {
    match &config.invariants {
        None => Ok(Vec::new()),
        Some(path) => Ok(Invariants::load(path)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .rules),
    }
}

/// A cgroup named by its path, or its path below the v2 root, as its path below the root.
fn relative_cgroup(root: &Path, cgroup: &str) -> Result<String> {
    let given = Path::new(cgroup);
    let relative = if given.is_absolute() {
        given.strip_prefix(root).with_context(|| {
            format!(
                "{cgroup} is not below the cgroup v2 root {}",
                root.display()
            )
        })?
    } else {
        given
    };
    let relative = relative.to_string_lossy().trim_matches('/').to_owned();
    if relative.is_empty() || relative.split('/').any(|c| c == ".." || c == ".") {
        bail!("{cgroup} does not name a cgroup below the cgroup v2 root");
    }
    Ok(relative)
}

/// A fresh, nonzero policy slot.
fn new_slot() -> u64 {
    let mut bytes = [0u8; 8];
    loop {
        if getrandom::fill(&mut bytes).is_ok() {
            let slot = u64::from_ne_bytes(bytes);
            if slot != 0 {
                return slot;
            }
        }
    }
}

impl Daemon {
    /// The kernel entries of `prepared` under `slot` (exec files resolved now), with what this
    /// kernel does not enforce of it.
    fn entries_for(&self, prepared: &Prepared, slot: u64) -> Result<KernelEntries> {
        let mut entries = entries::build(&prepared.engine, &prepared.compiled, slot)?;
        entries
            .not_enforced
            .extend(self.enforcer.unix_warning(&prepared.compiled));
        Ok(entries)
    }

    /// Installs `prepared` for the workload at `path` under a new slot and points the workload
    /// at it. The caller collects the old slot afterwards.
    fn install(
        &mut self,
        path: &Path,
        id: u64,
        prepared: &Prepared,
    ) -> Result<(KernelEntries, Workload, Issuer)> {
        let slot = new_slot();
        let t = Instant::now();
        let mut entries = self.entries_for(prepared, slot)?;
        tracing::debug!(ms = t.elapsed().as_millis(), "install: entries built");
        for warning in &entries.not_enforced {
            warn!(cgroup = %path.display(), "{warning}");
        }
        let mut issuer = Issuer::open(&self.config.state_dir, prepared.policy().permit_ttl)?;
        let subject = Subject {
            cgroup_id: id,
            cgroup_path: path.display().to_string(),
        };
        // Host rules have no entries until a name is answered, but the entries the resolver
        // installs then carry their permits' ids: issue those permits now.
        let mut rules = entries.rules();
        rules.extend(prepared.compiled.hosts.iter().map(|h| h.rule.0));
        tracing::debug!(ms = t.elapsed().as_millis(), "install: issuer opened");
        // The entries go into the new slot while the permits they carry are signed and
        // stored; the switch below waits for both.
        let enforcer = &mut self.enforcer;
        let written = issuer.issue_alongside(
            prepared.policy(),
            &prepared.compiled,
            &subject,
            rules,
            |stamp| {
                entries.stamp(stamp);
                enforcer.write_entries(slot, &entries)
            },
        )?;
        written?;
        tracing::debug!(
            ms = t.elapsed().as_millis(),
            "install: permits issued, entries written"
        );
        let default = if prepared.compiled.default == Effect::Permit {
            EFFECT_PERMIT
        } else {
            EFFECT_REFUSE
        };
        let mut flags = if prepared.policy().mode == Mode::Observe {
            WORKLOAD_OBSERVE
        } else {
            0
        };
        if prepared.compiled.allow_anonymous_exec {
            flags |= WORKLOAD_ANON_EXEC;
        }
        let mut config = Workload {
            flags,
            exec_default: default,
            connect_default: default,
            slot,
            ..Workload::default()
        };
        net::set_raw(&mut config, &prepared.compiled);
        self.switch_slot(id, config, &prepared.compiled, &issuer)?;
        tracing::debug!(ms = t.elapsed().as_millis(), "install: switched");
        Ok((entries, config, issuer))
    }

    /// Confines `path` as its `[[confine]]` entry says (nothing if none matches).
    fn confine(&mut self, path: &Path, relative: &str) -> Result<()> {
        let Some(entry) = self.config.entry_for(relative).cloned() else {
            return Ok(());
        };
        let source = Source {
            glob: entry.cgroup.clone(),
            policy_name: entry.policy.clone(),
            policy_file: self.config.policy_path(&entry.policy),
            mode: entry.mode,
            requested: false,
        };
        self.confine_from(path, relative, source, None)
    }

    /// Confines `path` as a request says, with its policy as `prepared` if the caller has
    /// prepared it already.
    fn confine_requested(
        &mut self,
        path: &Path,
        request: &Requested,
        prepared: Option<Prepared>,
    ) -> Result<()> {
        let source = Source {
            glob: "(requested)".to_owned(),
            policy_name: request
                .policy
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            policy_file: request.policy.clone(),
            mode: request.mode,
            requested: true,
        };
        self.confine_from(path, &request.cgroup, source, prepared)
    }

    fn confine_from(
        &mut self,
        path: &Path,
        relative: &str,
        source: Source,
        prepared: Option<Prepared>,
    ) -> Result<()> {
        let id = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .ino();
        let level = relative.split('/').count() as u32;
        if level > bridle_common::MAX_CGROUP_DEPTH {
            bail!(
                "{} is {level} levels deep; the programs look {} levels up",
                path.display(),
                bridle_common::MAX_CGROUP_DEPTH
            );
        }
        let policy_file = source.policy_file;
        let prepared = match prepared {
            Some(p) => p,
            None => self
                .policies
                .prepare(&policy_file, source.mode, &self.invariants)?,
        };
        let (entries, config, issuer) = self.install(path, id, &prepared)?;
        // Entries first, then the links: the programs find a complete workload from their
        // first run at this cgroup. A cgroup adopted from pins is attached already.
        if !pins::pinned_cgroups(&self.pin_dir)?.contains(&id) {
            let links = self.enforcer.attach_cgroup(path)?;
            self.enforcer.pin_cgroup_links(&self.pin_dir, id, links)?;
        } else {
            self.enforcer.attach_missing_unix(&self.pin_dir, id, path)?;
        }
        info!(
            cgroup = %path.display(),
            policy = %prepared.policy().name,
            digest = %prepared.compiled.policy.digest,
            mode = prepared.policy().mode.as_str(),
            "confined"
        );
        let renew = (prepared.policy().permit_ttl / 2).max(Duration::from_secs(1));
        self.workloads.insert(
            id,
            Confined {
                path: path.to_path_buf(),
                relative: relative.to_owned(),
                glob: source.glob,
                policy_name: source.policy_name,
                policy_file,
                mode: source.mode,
                entries,
                config,
                issuer,
                compiled: prepared.compiled,
                next_renewal: Instant::now() + renew,
                engine: prepared.engine,
                ask_engine: prepared.ask_engine,
                quarantined: None,
                requested: source.requested,
            },
        );
        self.sync_ask(id);
        self.sync_resolver(id);
        if self.ask.is_some() {
            // Processes already in the cgroup: from now on their execs are asked too (those
            // that fork or move in later are recorded by the kernel).
            let recorded = self
                .enforcer
                .map_fd("TASKS")
                .and_then(|fd| crate::fanotify::record_running(path, id, &BpfMap::new(fd)));
            if let Err(err) = recorded {
                warn!(cgroup = %path.display(), "recording its running processes: {err:#}; their execs meet the kill-on-exec backstop");
            }
        }
        Ok(())
    }

    /// Puts workload `id`'s current judging state in the fanotify ask's table.
    fn sync_ask(&self, id: u64) {
        if self.ask.is_none() {
            return;
        }
        let Some(w) = self.workloads.get(&id) else {
            return;
        };
        let ask = Arc::new(WorkloadAsk {
            workload: id,
            slot: w.config.slot,
            engine: Arc::clone(&w.ask_engine),
            rules: w.compiled.rules.iter().map(|r| r.name.clone()).collect(),
            observe: w.config.flags & WORKLOAD_OBSERVE != 0,
            allow_anonymous: w.config.flags & WORKLOAD_ANON_EXEC != 0,
            quarantined: w.quarantined == Some(QuarantineAction::RefuseAll),
        });
        self.ask_table
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(id, ask);
    }

    /// Brings the confined set in line with the cgroup tree and the configuration.
    fn reconcile(&mut self) {
        self.reconcile_workloads();
        self.collect();
    }

    /// [`Daemon::reconcile`] but for the collection of the slots it leaves.
    fn reconcile_workloads(&mut self) {
        let root = match cgroup::v2_root() {
            Ok(r) => r,
            Err(err) => {
                error!("{err:#}");
                return;
            }
        };
        let mut present = HashSet::new();
        let mut stack = vec![(root.clone(), 0u32)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(read) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in read.flatten() {
                if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    continue;
                }
                let path = entry.path();
                let Ok(relative) = path.strip_prefix(&root) else {
                    continue;
                };
                let relative = relative.to_string_lossy().into_owned();
                if self.runtime.requested(&relative).is_some() {
                    // Confined on request (below); its descendants are covered by its links.
                    continue;
                }
                if let Ok(meta) = entry.metadata() {
                    let id = meta.ino();
                    if self.config.entry_for(&relative).is_some()
                        && !self.runtime.is_released(&relative)
                    {
                        present.insert(id);
                        if !self.workloads.contains_key(&id) {
                            if let Err(err) = self.confine(&path, &relative) {
                                error!(cgroup = %path.display(), "cannot confine: {err:#}");
                            }
                        }
                        // A confined cgroup's descendants are covered by its links.
                        continue;
                    }
                }
                if depth + 1 < bridle_common::MAX_CGROUP_DEPTH {
                    stack.push((path, depth + 1));
                }
            }
        }
        for request in self.runtime.confined.clone() {
            let path = root.join(&request.cgroup);
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            present.insert(meta.ino());
            if !self.workloads.contains_key(&meta.ino()) {
                if let Err(err) = self.confine_requested(&path, &request, None) {
                    error!(cgroup = %path.display(), "cannot confine: {err:#}");
                }
            }
        }
        if self.runtime.forget_missing(|c| root.join(c).is_dir()) {
            if let Err(err) = self.runtime.save(&self.config.state_dir) {
                error!("{err:#}");
            }
        }
        let gone: Vec<u64> = self
            .workloads
            .keys()
            .copied()
            .filter(|id| !present.contains(id))
            .collect();
        for id in gone {
            self.release(id);
        }
        // Pins of cgroups this daemon no longer confines (config changed while it was down).
        if let Ok(pinned) = pins::pinned_cgroups(&self.pin_dir) {
            let stale: Vec<u64> = pinned
                .into_iter()
                .filter(|id| !self.workloads.contains_key(id))
                .collect();
            for id in stale {
                self.release(id);
            }
        }
    }

    fn release(&mut self, id: u64) {
        self.stop_resolver(id);
        self.ask_table
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&id);
        if let Err(err) = self.enforcer.forget_workload(id) {
            error!(cgroup = id, "{err:#}");
        }
        if let Err(err) = pins::release_cgroup(&self.pin_dir, id) {
            error!(cgroup = id, "{err:#}");
        }
        if let Some(w) = self.workloads.remove(&id) {
            info!(cgroup = %w.path.display(), "released");
        }
    }

    /// Forgets the prepared policies no workload uses any more.
    fn forget_unused_policies(&mut self) {
        let workloads = &self.workloads;
        self.policies.retain(|file, mode| {
            workloads
                .values()
                .any(|w| w.policy_file == file && w.mode == mode)
        });
    }

    /// Deletes the entries of every slot no workload points at.
    fn collect(&mut self) {
        self.collect_due = false;
        let active: HashSet<u64> = self.workloads.values().map(|w| w.config.slot).collect();
        match self.enforcer.collect_slots(&active) {
            Ok(0) => {}
            Ok(n) => info!("removed {n} entries of replaced policy slots"),
            Err(err) => error!("collecting old slots: {err:#}"),
        }
    }

    /// Re-reads the configuration and every policy; applies all of them or none.
    fn reload(&mut self) {
        let outcome = self.try_reload();
        let now = SystemTime::now();
        match outcome {
            Ok(n) => {
                info!("reloaded: {n} workload(s) on their new policies");
                self.last_reload = LastReload::Applied(now);
            }
            Err(err) => {
                error!("reload rejected, the previous policies stay: {err:#}");
                self.last_reload = LastReload::Rejected(now, format!("{err:#}"));
            }
        }
        self.notify_status();
    }

    fn try_reload(&mut self) -> Result<usize> {
        let begun = Instant::now();
        let config = Config::load(&self.config_file)?;
        let invariants = load_invariants(&config)?;
        // Check everything before touching anything.
        let old_config = std::mem::replace(&mut self.config, config);
        let old_invariants = std::mem::replace(&mut self.invariants, invariants);
        let mut prepared = Vec::new();
        for (id, w) in &self.workloads {
            let entry = if w.requested {
                None
            } else {
                self.config.entry_for(&w.relative).cloned()
            };
            let (file, mode) = match &entry {
                Some(e) => (self.config.policy_path(&e.policy), e.mode),
                None => (w.policy_file.clone(), w.mode),
            };
            match self.policies.prepare(&file, mode, &self.invariants) {
                Ok(p) => prepared.push((*id, entry.map(|e| e.policy), file, mode, p)),
                Err(err) => {
                    self.config = old_config;
                    self.invariants = old_invariants;
                    return Err(err);
                }
            }
        }
        let count = prepared.len();
        let started = Instant::now();
        // From the first switch on, replaced slots wait to be collected (even if a later
        // install fails).
        self.collect_due = true;
        tracing::debug!(
            ms = begun.elapsed().as_millis(),
            "reload: policies prepared"
        );
        for (id, name, file, mode, p) in prepared {
            let Some(w) = self.workloads.get(&id) else {
                continue;
            };
            // A quarantine outlives reloads (lifting it installs the policy then current), and a
            // workload whose policy and entries are what they were keeps its slot, its permits
            // and its engine's state.
            if w.quarantined.is_none() && !self.still_in_force(id, &p) {
                let path = w.path.clone();
                self.switch_to(id, &path, p)?;
            }
            if let Some(w) = self.workloads.get_mut(&id) {
                w.policy_file = file;
                w.mode = mode;
                if let Some(name) = name {
                    w.policy_name = name;
                }
            }
        }
        tracing::debug!(ms = started.elapsed().as_millis(), "reload: installed");
        self.reconcile_workloads();
        tracing::debug!(ms = begun.elapsed().as_millis(), "reload: reconciled");
        self.forget_unused_policies();
        // The replaced slots are dead (no workload points at them): their entries go once the
        // reload is answered.
        Ok(count)
    }

    /// Whether `prepared` is the policy workload `id` already runs on (the same preparation,
    /// so the same file, mode and invariants) and its entries, with the exec files resolved
    /// afresh, are those in the kernel: then a reload has nothing to change for it.
    fn still_in_force(&self, id: u64, prepared: &Prepared) -> bool {
        let Some(w) = self.workloads.get(&id) else {
            return false;
        };
        Arc::ptr_eq(&w.compiled, &prepared.compiled)
            && self
                .entries_for(prepared, w.config.slot)
                .is_ok_and(|fresh| fresh.decide_as(&w.entries))
    }

    /// Renews the permits of workloads whose renewal is due, and re-resolves their files.
    fn renew_due(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .workloads
            .iter()
            .filter(|(_, w)| now >= w.next_renewal)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(w) = self.workloads.get_mut(&id) else {
                continue;
            };
            let result = (|| -> Result<()> {
                w.issuer.renew()?;
                let ttl = w.issuer.ttl();
                w.entries.stamp(|rule| w.issuer.stamp(rule));
                self.enforcer.install(id, w.config, &w.entries)?;
                self.resolvers.restamp(id, |rule| w.issuer.stamp(rule));
                w.next_renewal = now + (ttl / 2).max(Duration::from_secs(1));
                Ok(())
            })();
            if let Err(err) = result {
                error!(cgroup = id, "renewing permits: {err:#}");
            }
        }
    }

    /// Harvests the tally map and records its counts after the events queued until the swap
    /// (see kernel::tally); the counts are released once they are in the file, so a daemon
    /// killed meanwhile leaves them to the next. Returns whether anything was recorded, and
    /// whether the events drained said a cgroup was created.
    fn harvest(
        &mut self,
        tallies: &mut Option<Tallies>,
        events: &mut aya::maps::RingBuf<aya::maps::MapData>,
    ) -> (bool, bool) {
        let Some(tallies) = tallies else {
            return (false, false);
        };
        let counted = match tallies.harvest() {
            Ok(counted) => counted,
            Err(err) => {
                error!("harvesting the tallies: {err:#}");
                return (false, false);
            }
        };
        let (mut recorded, mut created) = (false, false);
        while let Some(item) = events.next() {
            if item.first() == Some(&bridle_common::EVENT_CGROUP_CREATED) {
                created = true;
                continue;
            }
            self.record(&item);
            if let Err(err) = self.audit.write_out() {
                error!("writing the audit trail: {err:#}");
            }
            recorded = true;
        }
        for (key, counts) in &counted {
            if let Some(decided) = Decided::tallied(key, counts) {
                self.record_decided(decided);
                recorded = true;
            }
        }
        match self.audit.write_out() {
            Ok(()) => {
                if let Err(err) = tallies.release() {
                    error!("releasing harvested tallies: {err:#}");
                }
            }
            // Kept parked: the next harvest writes them again.
            Err(err) => error!("writing the audit trail: {err:#}"),
        }
        (recorded, created)
    }

    /// Appends one kernel decision to the audit trail (and logs refusals).
    fn record(&mut self, item: &[u8]) {
        if let Some(decided) = Decided::decode(item) {
            self.record_decided(decided);
        }
    }

    /// Appends a decision, or the counted repeats of one, to the audit trail.
    fn record_decided(&mut self, decided: Decided) {
        let Some(w) = self.workloads.get(&decided.workload) else {
            return;
        };
        let described = decided.describe(&w.compiled, &w.entries, &w.path.display().to_string());
        if !decided.permitted {
            let mut line = described.line.trim_start_matches("bridle: ").to_owned();
            crate::dns::hint_unnamed(&w.compiled, &decided, &mut line);
            info!(cgroup = %w.path.display(), pid = decided.tgid, "{line}");
        }
        self.publish(&described.record, described.repeats);
        if let Err(err) = self
            .audit
            .append_counted(described.record, described.repeats)
        {
            error!("appending to the audit trail: {err:#}");
        }
        if decided.permitted || decided.observed {
            return;
        }
        let id = decided.workload;
        let rule = w
            .compiled
            .rules
            .get(decided.rule as usize)
            .map(|r| r.name.clone());
        let what = decided.operation.to_string();
        let Some(w) = self.workloads.get_mut(&id) else {
            return;
        };
        if let Some(verdict) = w.engine.count_enforced_refusal(rule, &what) {
            self.start_quarantine(id, verdict);
        }
    }

    /// Appends one decision of the fanotify tier (which the kernel never reported) to the
    /// audit trail, logs it, and counts a refusal towards quarantine.
    fn record_ask(&mut self, d: AskDecision) {
        let Some(w) = self.workloads.get(&d.workload) else {
            return;
        };
        let (comm, uid) = (d.comm.clone(), d.uid);
        let (effect, code) = if d.observed {
            (Effect::Permit, Code::Observed)
        } else {
            (Effect::Refuse, d.code)
        };
        let permit_id = d
            .rule
            .as_deref()
            .and_then(|r| w.compiled.rules.iter().position(|x| x.name == r))
            .and_then(|i| w.issuer.stamp(i as u32))
            .map(|(id, _)| id);
        let path = w.path.display().to_string();
        let rule = d.rule.clone();
        info!(
            cgroup = %path,
            pid = d.pid,
            "{} exec {} ({}{})",
            if d.observed { "observed" } else { "refused" },
            d.path,
            code.as_str(),
            rule.as_deref().map(|r| format!(", rule {r}")).unwrap_or_default()
        );
        let fields = RecordFields {
            workload: path,
            pid: d.pid as u32,
            uid,
            comm,
            action: "exec".to_owned(),
            object: d.path.clone(),
            effect,
            code,
            rule: rule.clone(),
            permit_id,
        };
        self.publish(&fields, None);
        if let Err(err) = self.audit.append(fields) {
            error!("appending to the audit trail: {err:#}");
        }
        if d.observed || d.code == Code::Quarantined {
            return;
        }
        let what = format!("exec {}", d.path);
        let Some(w) = self.workloads.get_mut(&d.workload) else {
            return;
        };
        if let Some(verdict) = w.engine.count_enforced_refusal(rule, &what) {
            self.start_quarantine(d.workload, verdict);
        }
    }

    /// Carries out an invalidate verdict on workload `id`, and audits it.
    fn start_quarantine(&mut self, id: u64, verdict: Verdict) {
        let Some(action) = verdict.quarantine else {
            return;
        };
        let Some(w) = self.workloads.get_mut(&id) else {
            return;
        };
        let outcome = if action == QuarantineAction::RefuseAll {
            let config = quarantine::refuse_all(w.config, new_slot());
            self.enforcer
                .install(id, config, &KernelEntries::default())
                .map(|()| {
                    // Renewals keep reinstalling this until the quarantine is lifted.
                    w.config = config;
                    w.entries = KernelEntries::default();
                })
        } else {
            quarantine::start(action, &w.path)
        };
        w.quarantined = Some(action);
        let path = w.path.display().to_string();
        self.sync_ask(id);
        self.sync_resolver(id);
        match &outcome {
            Ok(()) => {
                warn!(cgroup = %path, action = action.as_str(), "quarantined: {}", verdict.reason)
            }
            Err(err) => {
                error!(cgroup = %path, action = action.as_str(), "quarantine failed: {err:#}")
            }
        }
        self.audit_quarantine(&path, "quarantine", action, verdict.rule, &outcome);
        self.collect();
        self.notify_status();
    }

    /// Lifts the quarantine of the workload at `cgroup` (its path, or its path below the
    /// cgroup root): thaws it, or puts its policy back in the kernel, and audits it.
    fn lift_quarantine(&mut self, cgroup: &str) -> Result<serde_json::Value> {
        let wanted = cgroup.trim_end_matches('/');
        let Some((&id, w)) = self.workloads.iter().find(|(_, w)| {
            w.path.to_str() == Some(wanted) || w.relative == wanted.trim_start_matches('/')
        }) else {
            bail!("{cgroup} is not a confined workload (see bridle status)");
        };
        let Some(action) = w.quarantined else {
            bail!("{} is not quarantined", w.path.display());
        };
        let path = w.path.clone();
        let outcome = if action == QuarantineAction::RefuseAll {
            self.reinstall(id)
        } else {
            quarantine::lift(action, &path)
        };
        let shown = path.display().to_string();
        self.audit_quarantine(&shown, "quarantine-lifted", action, None, &outcome);
        outcome?;
        if let Some(w) = self.workloads.get_mut(&id) {
            w.engine.lift_quarantine();
            w.quarantined = None;
        }
        self.sync_ask(id);
        self.sync_resolver(id);
        info!(cgroup = %shown, action = action.as_str(), "quarantine lifted");
        self.collect();
        self.notify_status();
        Ok(json!({"cgroup": shown, "lifted": action.as_str()}))
    }

    /// `bridle confine`: confines a cgroup with a policy until it is released, across daemon
    /// restarts. A policy with an error is refused with its `file:line:column`.
    fn confine_on_request(
        &mut self,
        cgroup: &str,
        policy: &str,
        mode: Option<&str>,
    ) -> Result<serde_json::Value> {
        let root = cgroup::v2_root()?;
        let relative = relative_cgroup(&root, cgroup)?;
        let path = root.join(&relative);
        let id = std::fs::metadata(&path)
            .with_context(|| format!("{} is not a cgroup", path.display()))?
            .ino();
        let mode = match mode {
            None => None,
            Some("enforce") => Some(Mode::Enforce),
            Some("observe") => Some(Mode::Observe),
            Some(other) => bail!("mode must be \"enforce\" or \"observe\", not {other:?}"),
        };
        let policy_file = if Path::new(policy).is_absolute() {
            PathBuf::from(policy)
        } else {
            self.config.policy_path(policy)
        };
        // Check the policy before anything changes; what is installed is what was checked.
        let prepared = self
            .policies
            .prepare(&policy_file, mode, &self.invariants)?;
        if let Some(w) = self.workloads.get(&id) {
            if !w.requested {
                bail!(
                    "{} is confined by the [[confine]] entry {:?}: release it first, or change the configuration",
                    path.display(),
                    w.glob
                );
            }
        }
        // The covering workload already judges a cgroup below a confined one.
        if let Some(outer) = self
            .workloads
            .values()
            .find(|w| w.relative != relative && relative.starts_with(&format!("{}/", w.relative)))
        {
            bail!(
                "{} is inside the confined workload {}; confine a cgroup outside it",
                path.display(),
                outer.path.display()
            );
        }
        let request = Requested {
            cgroup: relative.clone(),
            policy: policy_file,
            mode,
        };
        let mut runtime = self.runtime.clone();
        runtime.confine(request.clone());
        // On disk first: a daemon that dies now confines it again when it comes back.
        runtime.save(&self.config.state_dir)?;
        self.runtime = runtime;
        if let Some(w) = self.workloads.get_mut(&id) {
            // Confined on request before: the new policy replaces the old one the way a
            // reload does, with no moment unconfined.
            w.policy_file = request.policy.clone();
            w.mode = request.mode;
            self.switch_to(id, &path, prepared)?;
        } else {
            self.confine_requested(&path, &request, Some(prepared))?;
        }
        self.collect();
        self.notify_status();
        let w = self
            .workloads
            .get(&id)
            .context("the workload vanished while it was confined")?;
        info!(cgroup = %path.display(), policy = %w.policy_name, "confined on request");
        Ok(json!({
            "cgroup": path.display().to_string(),
            "cgroup_id": id,
            "policy": w.policy_file.display().to_string(),
            "digest": w.compiled.policy.digest,
            "mode": if w.config.flags & WORKLOAD_OBSERVE != 0 { "observe" } else { "enforce" },
        }))
    }

    /// `bridle release CGROUP`: ends a workload's confinement. One confined on request is
    /// forgotten; one a `[[confine]]` entry matches stays released (across restarts and
    /// reloads) until it is confined on request again.
    fn release_on_request(&mut self, cgroup: &str) -> Result<serde_json::Value> {
        let root = cgroup::v2_root()?;
        let relative = relative_cgroup(&root, cgroup)?;
        let Some((&id, w)) = self.workloads.iter().find(|(_, w)| w.relative == relative) else {
            bail!("{cgroup} is not a confined workload (see bridle status)");
        };
        let configured = !w.requested;
        let path = w.path.display().to_string();
        let mut runtime = self.runtime.clone();
        runtime.release(&relative, configured);
        runtime.save(&self.config.state_dir)?;
        self.runtime = runtime;
        self.release(id);
        self.collect();
        self.notify_status();
        Ok(json!({"cgroup": path, "released": true, "configured": configured}))
    }

    /// Installs workload `id`'s policy afresh, as a reload does for one workload.
    fn reinstall(&mut self, id: u64) -> Result<()> {
        let (path, file, mode) = match self.workloads.get(&id) {
            Some(w) => (w.path.clone(), w.policy_file.clone(), w.mode),
            None => bail!("workload {id} is gone"),
        };
        let p = self.policies.prepare(&file, mode, &self.invariants)?;
        self.switch_to(id, &path, p)
    }

    /// Installs `p` for workload `id` (at `path`) under a new slot and makes it the
    /// workload's policy: its engines, entries and permits; the ask and the resolver follow.
    fn switch_to(&mut self, id: u64, path: &Path, p: Prepared) -> Result<()> {
        let (entries, config, issuer) = self.install(path, id, &p)?;
        if let Some(w) = self.workloads.get_mut(&id) {
            w.config = config;
            self.retired.push(Retired {
                compiled: std::mem::replace(&mut w.compiled, p.compiled),
                entries: std::mem::replace(&mut w.entries, entries),
                issuer: std::mem::replace(&mut w.issuer, issuer),
                engine: std::mem::replace(&mut w.engine, p.engine),
                ask_engine: std::mem::replace(&mut w.ask_engine, p.ask_engine),
            });
        }
        self.sync_ask(id);
        self.sync_resolver(id);
        Ok(())
    }

    fn audit_quarantine(
        &mut self,
        workload: &str,
        step: &str,
        action: QuarantineAction,
        rule: Option<String>,
        outcome: &Result<()>,
    ) {
        let object = match outcome {
            Ok(()) => action.as_str().to_owned(),
            Err(err) => format!("{} (failed: {err:#})", action.as_str()),
        };
        let fields = RecordFields {
            workload: workload.to_owned(),
            pid: std::process::id(),
            uid: 0,
            comm: "bridle".to_owned(),
            action: step.to_owned(),
            object,
            effect: Effect::Invalidate,
            code: Code::Quarantined,
            rule,
            permit_id: None,
        };
        self.publish(&fields, None);
        // A quarantine step is rare and an operator acts on it: on disk at once.
        if let Err(err) = self.audit.append(fields).and_then(|_| self.audit.flush()) {
            error!("appending to the audit trail: {err:#}");
        }
    }

    /// Hands a decision to the clients following them, in the audit record's terms.
    fn publish(&self, fields: &RecordFields, repeats: Option<Repeats>) {
        if self.followers.is_empty() {
            return;
        }
        let time = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut line = json!({
            "time": time,
            "workload": fields.workload,
            "pid": fields.pid,
            "uid": fields.uid,
            "comm": fields.comm,
            "action": fields.action,
            "object": fields.object,
            "effect": fields.effect.as_str(),
            "code": fields.code.as_str(),
            "rule": fields.rule,
            "permit_id": fields.permit_id,
        });
        if let (Some(r), Some(obj)) = (repeats, line.as_object_mut()) {
            obj.insert("count".into(), r.count.into());
            obj.insert("first".into(), r.first.into());
            obj.insert("last".into(), r.last.into());
        }
        self.followers.publish(&fields.workload, &line.to_string());
    }

    fn notify_status(&self) {
        let reload = match &self.last_reload {
            LastReload::Rejected(..) => "; last reload REJECTED",
            _ => "",
        };
        let status = format!("confining {} workload(s){reload}", self.workloads.len());
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&status)]);
    }

    fn answer(&mut self, request: Request) -> Reply {
        match request {
            Request::Status => Reply::ok(self.status()),
            // The control thread serves followers itself.
            Request::Events { .. } => Reply::error("events are served by the control socket"),
            Request::Release { cgroup, quarantine } => {
                let done = if quarantine {
                    self.lift_quarantine(&cgroup)
                } else {
                    self.release_on_request(&cgroup)
                };
                match done {
                    Ok(body) => Reply::ok(body),
                    Err(err) => Reply::error(format!("{err:#}")),
                }
            }
            Request::Confine {
                cgroup,
                policy,
                mode,
            } => match self.confine_on_request(&cgroup, &policy, mode.as_deref()) {
                Ok(body) => Reply::ok(body),
                Err(err) => Reply::error(format!("{err:#}")),
            },
            Request::Reload => {
                self.reload();
                match &self.last_reload {
                    LastReload::Rejected(_, why) => Reply::error(why.clone()),
                    _ => Reply::ok(self.status()),
                }
            }
        }
    }

    fn status(&mut self) -> serde_json::Value {
        let stats = self.enforcer.stats().unwrap_or_default();
        let since = |t: &SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        let workloads: Vec<serde_json::Value> = self
            .workloads
            .iter()
            .map(|(id, w)| {
                json!({
                    "cgroup": w.path.display().to_string(),
                    "cgroup_id": id,
                    "matched": w.glob,
                    "requested": w.requested,
                    "policy": w.policy_name,
                    "digest": w.compiled.policy.digest,
                    "mode": if w.config.flags & WORKLOAD_OBSERVE != 0 { "observe" } else { "enforce" },
                    "slot": format!("{:016x}", w.config.slot),
                    "exec_entries": w.entries.exec.len(),
                    "address_entries": w.entries.net.len(),
                    "permits": w.issuer.issued(),
                    "quarantined": w.quarantined.map(QuarantineAction::as_str),
                    "resolver": self.resolver_status(*id),
                })
            })
            .collect();
        let last_reload = match &self.last_reload {
            LastReload::Never => json!(null),
            LastReload::Applied(t) => json!({"at": since(t), "outcome": "applied"}),
            LastReload::Rejected(t, why) => {
                json!({"at": since(t), "outcome": "rejected", "error": why})
            }
        };
        json!({
            "started": since(&self.started),
            "adopted_pins": self.adopted,
            "pin_dir": self.pin_dir.display().to_string(),
            "tiers": {
                "exec": format!("{}: {}{}", self.exec_tier, self.exec_tier.effect(), match self.exec_tier {
                    ExecTier::Lsm => " (BPF LSM bprm_check_security)",
                    ExecTier::Fanotify => " (fanotify FAN_OPEN_EXEC_PERM on every filesystem, kill-on-exec backstop)",
                    ExecTier::Kill => " (sched_process_exec + SIGKILL)",
                }),
                "connect": "cgroup connect4/connect6, sendmsg4/sendmsg6",
                "raw_sockets": "cgroup sock_create",
                "unix_sockets": match self.enforcer.unix_unavailable() {
                    None => unix::ENFORCED.to_owned(),
                    Some(why) => unix::not_enforced(why),
                },
                "host_names": "a DNS resolver per workload with host rules (its DNS traffic redirected by connect4/6 and sendmsg4/6, replies by recvmsg4/6): refused names get REFUSED, answered addresses become TTL-bound entries before the answer",
            },
            "workloads": workloads,
            "events": {"judged": stats.judged, "refused": stats.refused, "lost": stats.events_lost},
            "exec_asks": self.ask.as_ref().map(|a| json!({
                "judged": a.stats.judged.load(Ordering::Relaxed),
                "answered_from_known_permits": a.stats.known.load(Ordering::Relaxed),
                "refused": a.stats.refused.load(Ordering::Relaxed),
                "fail_mode": a.stats.failed.load(Ordering::Relaxed),
                "outsiders": a.stats.outsiders.load(Ordering::Relaxed),
                "filesystems_marked": a.marked.iter().map(|m| m.display().to_string()).collect::<Vec<_>>(),
            })),
            "last_reload": last_reload,
        })
    }
}
