//! Which exec enforcement tier this kernel really offers, found by trying, never assumed.
//!
//! - **lsm**: the BPF LSM program on `bprm_check_security` loads *and* `bpf` is in the active
//!   LSM list. Both are checked because a kernel can load (and even attach) an LSM program
//!   that never runs, when BPF LSM is compiled in but not enabled at boot.
//! - **fanotify**: a `FAN_CLASS_CONTENT` group accepts a `FAN_OPEN_EXEC_PERM` mark.
//! - **kill**: the `sched_process_exec` raw tracepoint, always loaded as the backstop.

use super::{program, verify, Enforcer};
use anyhow::{bail, Context, Result};
use aya::{
    programs::{Lsm, RawTracePoint},
    Btf,
};
use std::{
    fmt,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

/// Where the kernel lists its active LSMs.
const LSM_LIST: &str = "/sys/kernel/security/lsm";

/// An exec enforcement tier, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum ExecTier {
    /// Kill-on-exec: the refused image is killed before its first instruction.
    Kill,
    /// fanotify exec permission events answered by the engine: execve fails with EPERM.
    Fanotify,
    /// BPF LSM `bprm_check_security`: execve fails with EPERM.
    Lsm,
}

impl fmt::Display for ExecTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExecTier::Kill => "kill",
            ExecTier::Fanotify => "fanotify",
            ExecTier::Lsm => "lsm",
        })
    }
}

impl ExecTier {
    /// What a refused exec looks like to the workload on this tier.
    pub fn effect(self) -> &'static str {
        match self {
            ExecTier::Kill => "a refused exec is killed by SIGKILL",
            ExecTier::Fanotify | ExecTier::Lsm => "a refused exec fails with EPERM",
        }
    }
}

/// The outcome of probing: the best tier and why each better one is unavailable.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The best tier that really works here.
    pub best: ExecTier,
    /// Why the tiers above `best` are unavailable, one entry per tier.
    pub unavailable: Vec<(ExecTier, String)>,
}

impl Probe {
    /// Picks the tier to run: the best one, or `forced` if it is not better than the best.
    pub fn choose(&self, forced: Option<ExecTier>) -> Result<ExecTier> {
        match forced {
            None => Ok(self.best),
            Some(tier) if tier <= self.best => Ok(tier),
            Some(tier) => {
                let why = self
                    .unavailable
                    .iter()
                    .find(|(t, _)| *t == tier)
                    .map(|(_, why)| why.as_str())
                    .unwrap_or("not available");
                bail!(
                    "--exec-tier {tier} is not available on this kernel ({why}); the best available is {}",
                    self.best
                )
            }
        }
    }
}

impl Enforcer {
    /// Probes the kernel. Loading is real: the LSM program is loaded from this object (and
    /// left loaded, unattached, for [`Enforcer::enable_exec_tier`]), and a fanotify group is
    /// created with an exec permission mark on a private file.
    pub fn probe_tiers(&mut self) -> Probe {
        let mut unavailable = Vec::new();
        match self.probe_lsm() {
            Ok(()) => {
                return Probe {
                    best: ExecTier::Lsm,
                    unavailable,
                }
            }
            Err(err) => unavailable.push((ExecTier::Lsm, format!("{err:#}"))),
        }
        match probe_fanotify() {
            Ok(()) => Probe {
                best: ExecTier::Fanotify,
                unavailable,
            },
            Err(err) => {
                unavailable.push((ExecTier::Fanotify, format!("{err:#}")));
                Probe {
                    best: ExecTier::Kill,
                    unavailable,
                }
            }
        }
    }

    fn probe_lsm(&mut self) -> Result<()> {
        let btf = match self.btf.take() {
            Some(btf) => btf,
            None => Btf::from_sys_fs().context("reading the kernel BTF")?,
        };
        let prog: &mut Lsm = program(&mut self.objects, LSM_PROGRAM)?;
        let loaded = prog.load("bprm_check_security", &btf);
        self.btf = Some(btf);
        loaded.context("the kernel refused the BPF LSM program")?;
        // Loaded is not running: the hook only runs when bpf is an active LSM.
        let list = active_lsms()?;
        if !list.split(',').any(|l| l.trim() == "bpf") {
            bail!("bpf is not an active LSM (active: {})", list.trim());
        }
        Ok(())
    }
}

/// The active LSM list, mounting securityfs first if it is not mounted.
fn active_lsms() -> Result<String> {
    if !Path::new(LSM_LIST).exists() {
        nix::mount::mount(
            Some("securityfs"),
            "/sys/kernel/security",
            Some("securityfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .context("mounting securityfs at /sys/kernel/security")?;
    }
    std::fs::read_to_string(LSM_LIST).with_context(|| format!("reading {LSM_LIST}"))
}

fn probe_fanotify() -> Result<()> {
    // A mark on a private file nobody executes: it proves the kernel takes exec permission
    // marks without ever holding an exec that no one would answer.
    let file = unnamed_probe_file()?;
    let group = crate::fanotify::init_group().context("fanotify_init(FAN_CLASS_CONTENT)")?;
    crate::fanotify::mark(&group, libc::FAN_MARK_ADD, file.as_fd().as_raw_fd(), None)
        .context("fanotify_mark(FAN_OPEN_EXEC_PERM)")?;
    Ok(())
}

fn unnamed_probe_file() -> Result<OwnedFd> {
    // O_TMPFILE: an unnamed file that disappears with its last fd. Under the systemd unit only
    // the runtime directory is writable (ProtectSystem=strict); elsewhere /tmp is.
    let mut last = None;
    for dir in [c"/run/bridle", c"/tmp", c"/run"] {
        // SAFETY: a plain open(2) with a NUL-terminated path.
        let fd = unsafe {
            libc::open(
                dir.as_ptr(),
                libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd >= 0 {
            // SAFETY: `fd` was just opened and is owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        last = Some(std::io::Error::last_os_error());
    }
    Err(last.unwrap_or_else(std::io::Error::last_os_error))
        .context("creating an unnamed probe file in /run/bridle, /tmp or /run")
}

/// The BPF LSM tier's program (and its pinned link's name).
pub const LSM_PROGRAM: &str = "exec_lsm";

/// The fanotify tier's task trackers and their tracepoints (the first names their pinned
/// links).
pub const TASK_TRACKERS: [(&str, &str); 3] = [
    ("task_fork", "sched_process_fork"),
    ("task_attach", "cgroup_attach_task"),
    ("task_exit", "sched_process_exit"),
];

/// The cgroup creation watch and its tracepoint (the first names its pinned link).
pub const CGROUP_WATCH: (&str, &str) = ("cgroup_created", "cgroup_mkdir");

/// A link one exec tier attached, until it is pinned (or dropped with the `Enforcer`).
#[derive(Debug)]
pub enum TierLink {
    /// The BPF LSM program's link.
    Lsm(aya::programs::lsm::LsmLinkId),
    /// A task tracker's link, by program name.
    Tracker(
        &'static str,
        aya::programs::raw_trace_point::RawTracePointLinkId,
    ),
}

impl Enforcer {
    /// Loads and attaches the programs of `tier` on top of the kill-on-exec backstop, which
    /// [`Enforcer::load`] always attaches.
    pub fn enable_exec_tier(&mut self, tier: ExecTier) -> Result<()> {
        match tier {
            ExecTier::Kill => {}
            ExecTier::Lsm => {
                let prog: &mut Lsm = program(&mut self.objects, LSM_PROGRAM)?;
                // The probe loaded it already, unless the caller skipped the probe.
                if prog.fd().is_err() {
                    let btf = Btf::from_sys_fs().context("reading the kernel BTF")?;
                    prog.load("bprm_check_security", &btf)
                        .context("loading the BPF LSM exec hook")?;
                }
                let id = prog.attach().context("attaching the BPF LSM exec hook")?;
                self.tier_links.push(TierLink::Lsm(id));
            }
            ExecTier::Fanotify => {
                let trackers =
                    TASK_TRACKERS.map(|(name, _)| (name, "a fanotify tier task tracker"));
                verify::load_side_by_side(verify::named(self.objects.programs_mut(), &trackers)?)?;
                for (name, tracepoint) in TASK_TRACKERS {
                    let prog: &mut RawTracePoint = program(&mut self.objects, name)?;
                    let id = prog
                        .attach(tracepoint)
                        .with_context(|| format!("attaching {name} to {tracepoint}"))?;
                    self.tier_links.push(TierLink::Tracker(name, id));
                }
            }
        }
        self.exec_tier = tier;
        // Every program that needs the kernel's BTF is loaded now; parsed, it is several
        // megabytes the daemon would otherwise keep for its whole life.
        self.btf = None;
        Ok(())
    }

    /// The exec tier whose programs are in place (for adopted pins: the one pinned).
    pub fn exec_tier(&self) -> ExecTier {
        self.exec_tier
    }

    /// Loads and attaches the cgroup creation watch (`cgroup_mkdir`), which wakes the event
    /// reader with the new cgroup's id; pinned with the tier's links.
    pub fn watch_cgroups(&mut self) -> Result<()> {
        let prog: &mut RawTracePoint = program(&mut self.objects, CGROUP_WATCH.0)?;
        prog.load().context("loading the cgroup creation watch")?;
        let id = prog.attach(CGROUP_WATCH.1).with_context(|| {
            format!("attaching the cgroup creation watch to {}", CGROUP_WATCH.1)
        })?;
        self.tier_links.push(TierLink::Tracker(CGROUP_WATCH.0, id));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forcing_a_lower_tier_works_and_a_higher_one_is_refused() {
        let probe = Probe {
            best: ExecTier::Fanotify,
            unavailable: vec![(ExecTier::Lsm, "refused with EPERM".to_owned())],
        };
        assert_eq!(probe.choose(None).ok(), Some(ExecTier::Fanotify));
        assert_eq!(
            probe.choose(Some(ExecTier::Kill)).ok(),
            Some(ExecTier::Kill)
        );
        let err = probe
            .choose(Some(ExecTier::Lsm))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--exec-tier lsm is not available"), "{err}");
        assert!(err.contains("refused with EPERM"), "{err}");
    }
}
