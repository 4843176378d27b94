//! Persistence under bpffs: the daemon pins its maps, programs and links so that enforcement
//! survives its restart or its death, and a restarted daemon adopts what it finds.
//!
//! Layout under the pin directory (`/sys/fs/bpf/bridle` by default):
//!
//! ```text
//! maps/<MAP>                 every map of the object
//! programs/<program>         the programs a new cgroup attachment needs (the unix-socket
//!                            programs too, where the kernel has their hooks)
//! links/exec_guard           the kill-on-exec hook
//! links/exec_lsm             the BPF LSM exec hook, on that tier
//! links/task_*               the task trackers, on the fanotify tier
//! links/cgroup-<id>/<prog>   one link per socket program per confined cgroup
//! ```

use super::{
    bpf_sys, clock,
    dns::RECVMSG_PROGRAMS,
    net::{SENDMSG_PROGRAMS, SOCK_CREATE},
    program,
    tier::{ExecTier, TierLink, LSM_PROGRAM, TASK_TRACKERS},
    unix::{self, UnixState},
    CgroupLink, Enforcer, Objects, MAP_NAMES, OBJECT, TALLIES,
};
use anyhow::{bail, Context, Result};
use aya::{
    maps::{Map, MapData},
    programs::{
        cgroup_sock::CgroupSockAttachType, links::FdLink, links::PinnedLink, CgroupSock,
        CgroupSockAddr, CgroupSockAddrAttachType, Lsm, Program, RawTracePoint,
    },
};
use std::{
    collections::BTreeMap,
    fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

/// Where the daemon pins everything unless told otherwise.
pub const DEFAULT_DIR: &str = "/sys/fs/bpf/bridle";

/// The socket programs a cgroup attachment uses, with their attach types.
const SOCK_ADDR_PROGRAMS: [(&str, CgroupSockAddrAttachType); 6] = [
    ("connect4", CgroupSockAddrAttachType::Connect4),
    ("connect6", CgroupSockAddrAttachType::Connect6),
    (SENDMSG_PROGRAMS[0], CgroupSockAddrAttachType::UDPSendMsg4),
    (SENDMSG_PROGRAMS[1], CgroupSockAddrAttachType::UDPSendMsg6),
    (RECVMSG_PROGRAMS[0], CgroupSockAddrAttachType::UDPRecvMsg4),
    (RECVMSG_PROGRAMS[1], CgroupSockAddrAttachType::UDPRecvMsg6),
];

fn cgroup_dir(dir: &Path, cgroup: u64) -> PathBuf {
    dir.join("links").join(format!("cgroup-{cgroup}"))
}

/// Makes sure a bpffs is mounted where `dir` lives (`/sys/fs/bpf`).
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if dir.starts_with(root) {
        let mounts =
            fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
        let mounted = mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "));
        if !mounted {
            nix::mount::mount(
                Some("bpf"),
                root,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .context("mounting bpffs at /sys/fs/bpf")?;
        }
    }
    for sub in ["maps", "programs", "links"] {
        fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    Ok(())
}

/// Maps a pin set from an earlier bridle may lack, created when adopting it: the unix
/// programs (loaded by the adopting daemon) read the unix map and the clock offset, and the
/// pinned programs read neither.
const CREATED_WHEN_MISSING: [&str; 2] = [unix::MAP, clock::MAP];

impl Enforcer {
    /// Pins every map, the programs new attachments need, and the exec hook's link under
    /// `dir`: from then on they outlive this process.
    pub fn pin(&mut self, dir: &Path) -> Result<()> {
        ensure_bpffs(dir)?;
        for name in MAP_NAMES {
            let path = dir.join("maps").join(name);
            self.objects
                .map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))?
                .pin(&path)
                .with_context(|| format!("pinning map {name} at {}", path.display()))?;
        }
        let names = SOCK_ADDR_PROGRAMS
            .iter()
            .map(|(n, _)| *n)
            .chain([SOCK_CREATE]);
        for name in names {
            let path = dir.join("programs").join(name);
            self.objects
                .program_mut_checked(name)?
                .pin(&path)
                .with_context(|| format!("pinning program {name} at {}", path.display()))?;
        }
        if let Some(hooks) = self.unix.hooks() {
            hooks.pin(&dir.join("programs"))?;
        }
        if let Some(id) = self.exec_link.take() {
            let prog: &mut RawTracePoint = program(&mut self.objects, "exec_guard")?;
            let link = prog.take_link(id).context("taking the exec hook's link")?;
            let link: FdLink = link.into();
            let path = dir.join("links").join("exec_guard");
            link.pin(&path)
                .with_context(|| format!("pinning the exec hook's link at {}", path.display()))?;
        }
        for link in std::mem::take(&mut self.tier_links) {
            let (name, link): (&str, FdLink) = match link {
                TierLink::Lsm(id) => {
                    let prog: &mut Lsm = program(&mut self.objects, LSM_PROGRAM)?;
                    let link = prog.take_link(id).context("taking the LSM hook's link")?;
                    (LSM_PROGRAM, link.into())
                }
                TierLink::Tracker(name, id) => {
                    let prog: &mut RawTracePoint = program(&mut self.objects, name)?;
                    let link = prog
                        .take_link(id)
                        .with_context(|| format!("taking {name}'s link"))?;
                    (name, link.into())
                }
            };
            let path = dir.join("links").join(name);
            link.pin(&path)
                .with_context(|| format!("pinning {name}'s link at {}", path.display()))?;
        }
        Ok(())
    }

    /// Opens what an earlier daemon pinned under `dir`; `None` when nothing is pinned there.
    pub fn adopt(dir: &Path) -> Result<Option<Enforcer>> {
        if !dir.join("links").join("exec_guard").exists() {
            return Ok(None);
        }
        // Every map this bridle's programs read must be pinned, except those that earlier
        // bridles lacked and that the loop below does without (TALLIES) or creates. A pin set
        // without one of the others comes from a bridle whose programs read other maps
        // (NET4_RULES and NET6_RULES before the address trie was one): entries written here
        // would never reach them.
        let missing = MAP_NAMES.iter().find(|&&name| {
            name != TALLIES
                && !CREATED_WHEN_MISSING.contains(&name)
                && !dir.join("maps").join(name).exists()
        });
        if let Some(name) = missing {
            bail!(
                "the programs pinned under {dir} come from an earlier bridle whose programs \
                 read other maps (no maps/{name}); this bridle cannot drive them. They keep \
                 enforcing the policy they had until its permits lapse. Run \
                 `bridle unload --pin-dir {dir}` (the workloads are then unconfined until the \
                 daemon is ready), then start the daemon again",
                dir = dir.display()
            );
        }
        let mut maps = BTreeMap::new();
        let mut to_create = Vec::new();
        for name in MAP_NAMES {
            let path = dir.join("maps").join(name);
            if name == TALLIES && !path.exists() {
                // Pinned by a bridle that predates tallies: its programs send every permit as
                // an event, and there is nothing to harvest.
                continue;
            }
            if CREATED_WHEN_MISSING.contains(&name) && !path.exists() {
                to_create.push(name);
                continue;
            }
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening the pinned map {}", path.display()))?;
            let map = Map::from_map_data(data).with_context(|| {
                format!("the pinned map {} has an unknown type", path.display())
            })?;
            maps.insert(name.to_owned(), map);
        }
        maps.extend(new_maps(&to_create, &dir.join("maps"))?);
        let mut programs = BTreeMap::new();
        for (name, attach) in SOCK_ADDR_PROGRAMS {
            let path = dir.join("programs").join(name);
            let prog = CgroupSockAddr::from_pin(&path, attach)
                .with_context(|| format!("opening the pinned program {}", path.display()))?;
            programs.insert(name.to_owned(), Program::CgroupSockAddr(prog));
        }
        let path = dir.join("programs").join(SOCK_CREATE);
        let prog = CgroupSock::from_pin(&path, CgroupSockAttachType::SockCreate)
            .with_context(|| format!("opening the pinned program {}", path.display()))?;
        programs.insert(SOCK_CREATE.to_owned(), Program::CgroupSock(prog));
        // The tier an earlier daemon chose is the one whose links are pinned.
        let links = dir.join("links");
        let exec_tier = if links.join(LSM_PROGRAM).exists() {
            ExecTier::Lsm
        } else if TASK_TRACKERS
            .iter()
            .all(|(name, _)| links.join(name).exists())
        {
            ExecTier::Fanotify
        } else {
            ExecTier::Kill
        };
        let objects = Objects {
            ebpf: None,
            maps,
            programs,
        };
        let unix = adopt_unix(dir, &objects)?;
        let mut enforcer = Enforcer {
            objects,
            exec_link: None,
            tier_links: Vec::new(),
            exec_tier,
            btf: None,
            unix,
            slots: super::SlotRecord::adopted(),
            boot_offset: clock::BootOffset::default(),
        };
        enforcer.sync_clock()?;
        Ok(Some(enforcer))
    }

    /// Attaches the unix-socket programs at a cgroup whose other links were pinned by a
    /// bridle that predates them, and pins those links too. Nothing to do where they are
    /// pinned already, or where this kernel has no unix hooks.
    pub fn attach_missing_unix(&mut self, dir: &Path, cgroup: u64, path: &Path) -> Result<()> {
        let target = cgroup_dir(dir, cgroup);
        let missing = unix::PROGRAMS
            .iter()
            .any(|(name, _)| !target.join(name).exists());
        let Some(hooks) = self.unix.hooks() else {
            return Ok(());
        };
        if !missing {
            return Ok(());
        }
        let cg = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let links = hooks
            .attach(&cg, path)?
            .into_iter()
            .map(|(name, id)| CgroupLink::Unix(name, id))
            .collect();
        self.pin_cgroup_links(dir, cgroup, links)
    }

    /// Pins the links [`Enforcer::attach_cgroup`] made for `cgroup`, so they stay attached
    /// when this process goes.
    pub fn pin_cgroup_links(
        &mut self,
        dir: &Path,
        cgroup: u64,
        links: Vec<CgroupLink>,
    ) -> Result<()> {
        let target = cgroup_dir(dir, cgroup);
        fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
        for link in links {
            let (name, fd): (&str, FdLink) = match link {
                CgroupLink::SockAddr(name, id) => {
                    let prog: &mut CgroupSockAddr = program(&mut self.objects, name)?;
                    let link = prog
                        .take_link(id)
                        .with_context(|| format!("taking {name}'s link"))?;
                    (
                        name,
                        link.try_into()
                            .with_context(|| format!("{name}'s link has no fd"))?,
                    )
                }
                CgroupLink::Unix(name, id) => {
                    let fd = self
                        .unix
                        .hooks()
                        .and_then(|h| h.take_link(id))
                        .with_context(|| format!("{name}'s link is not held here"))?;
                    let path = target.join(name);
                    bpf_sys::obj_pin(fd.as_fd(), &path)
                        .with_context(|| format!("pinning {name}'s link at {}", path.display()))?;
                    // The pin holds the link now; this descriptor may close.
                    continue;
                }
                CgroupLink::Sock(name, id) => {
                    let prog: &mut CgroupSock = program(&mut self.objects, name)?;
                    let link = prog
                        .take_link(id)
                        .with_context(|| format!("taking {name}'s link"))?;
                    (
                        name,
                        link.try_into()
                            .with_context(|| format!("{name}'s link has no fd"))?,
                    )
                }
            };
            let path = target.join(name);
            fd.pin(&path)
                .with_context(|| format!("pinning {name}'s link at {}", path.display()))?;
        }
        Ok(())
    }
}

/// Creates and pins `names` under `dir`, as the object declares them.
fn new_maps(names: &[&str], dir: &Path) -> Result<Vec<(String, Map)>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    // Loading the object creates its maps (and loads no program); all but these go again.
    let mut fresh = aya::Ebpf::load(OBJECT).context("loading bridle's eBPF object")?;
    names
        .iter()
        .map(|&name| {
            let map = fresh
                .take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))?;
            let path = dir.join(name);
            map.pin(&path)
                .with_context(|| format!("pinning map {name} at {}", path.display()))?;
            Ok((name.to_owned(), map))
        })
        .collect()
}

/// The unix-socket programs of an adopted pin directory: those pinned there, else loaded now
/// (a pin directory left by a bridle that predates them) and pinned, else why they cannot be.
fn adopt_unix(dir: &Path, objects: &Objects) -> Result<UnixState> {
    let programs = dir.join("programs");
    if let Some(state) = UnixState::from_pins(&programs)? {
        return Ok(state);
    }
    let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
    let mut state = UnixState::load(OBJECT, &btf, &|name| objects.map_fd(name));
    if let Some(hooks) = state.hooks() {
        hooks.pin(&programs)?;
    }
    Ok(state)
}

impl Objects {
    fn program_mut_checked(&mut self, name: &str) -> Result<&mut Program> {
        use super::Programs;
        self.program_mut(name)
            .with_context(|| format!("the eBPF object has no program {name}"))
    }
}

/// The cgroups whose links are pinned under `dir`.
pub fn pinned_cgroups(dir: &Path) -> Result<Vec<u64>> {
    let links = dir.join("links");
    let Ok(entries) = fs::read_dir(&links) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", links.display()))?;
        if let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("cgroup-"))
            .and_then(|n| n.parse().ok())
        {
            out.push(id);
        }
    }
    Ok(out)
}

/// Detaches one cgroup's pinned links (removing a pin drops the kernel's last reference).
pub fn release_cgroup(dir: &Path, cgroup: u64) -> Result<()> {
    let target = cgroup_dir(dir, cgroup);
    let Ok(entries) = fs::read_dir(&target) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry
            .with_context(|| format!("listing {}", target.display()))?
            .path();
        let link = PinnedLink::from_pin(&path)
            .with_context(|| format!("opening the pinned link {}", path.display()))?;
        link.unpin()
            .with_context(|| format!("unpinning {}", path.display()))?;
    }
    fs::remove_dir(&target).with_context(|| format!("removing {}", target.display()))
}

/// Removes everything pinned under `dir`: every link is detached, every program and map
/// released. This is `bridle unload`: it ends enforcement on purpose.
pub fn unload(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if !dir.join("links").exists() && !dir.join("maps").exists() {
        bail!(
            "{} does not look like a bridle pin directory",
            dir.display()
        );
    }
    for cgroup in pinned_cgroups(dir)? {
        release_cgroup(dir, cgroup)?;
    }
    // The exec hook and the tier's links: every file left under links/.
    if let Ok(entries) = fs::read_dir(dir.join("links")) {
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_file() {
                continue;
            }
            PinnedLink::from_pin(&path)
                .with_context(|| format!("opening {}", path.display()))?
                .unpin()
                .with_context(|| format!("unpinning {}", path.display()))?;
        }
    }
    for sub in ["programs", "maps"] {
        let path = dir.join(sub);
        if let Ok(entries) = fs::read_dir(&path) {
            for entry in entries.flatten() {
                fs::remove_file(entry.path())
                    .with_context(|| format!("unpinning {}", entry.path().display()))?;
            }
        }
    }
    for sub in ["links", "programs", "maps", ""] {
        let path = dir.join(sub);
        if path.exists() {
            fs::remove_dir(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}
