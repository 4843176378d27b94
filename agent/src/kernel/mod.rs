//! The kernel half: loading bridle's eBPF object, attaching its programs, and writing the
//! engine's compiled entries into its maps.
//!
//! One module per concern: [`entries`] turns a compiled policy into map entries, [`events`]
//! reads decisions back. This module owns the loaded object and nothing else.

pub mod batch;
pub mod bpf_sys;
pub mod clock;
pub mod dns;
pub mod entries;
pub mod events;
pub mod net;
pub mod pins;
pub mod tally;
pub mod tier;
pub mod unix;
mod verify;

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{lpm_trie::Key, HashMap, LpmTrie, Map, MapData, PerCpuArray, RingBuf},
    programs::{
        cgroup_sock_addr::CgroupSockAddrLinkId, raw_trace_point::RawTracePointLinkId,
        CgroupAttachMode, CgroupSockAddr, Program, RawTracePoint,
    },
    Ebpf,
};
use bridle_common::{
    Decision, ExecKey, ExecPlaceKey, NetKey, PortRules, UnixKey, Workload, NET_KEY_SLOT_BITS,
    STAT_COUNT,
};
use std::{
    collections::BTreeMap,
    fs::File,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::Path,
};

use entries::{KernelEntries, NetEntryRow};

/// The eBPF object, built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bridle"));

/// The exec hook's tracepoint.
const EXEC_TRACEPOINT: &str = "sched_process_exec";

/// Every map of the object, by name.
pub const MAP_NAMES: [&str; 12] = [
    "WORKLOADS",
    "EXEC_RULES",
    "EXEC_PLACES",
    NET_RULES,
    "EVENTS",
    "STATS",
    "TASKS",
    "DNS_REDIRECT",
    "DNS_ORIGIN",
    unix::MAP,
    TALLIES,
    clock::MAP,
];

/// The address trie, IPv4 and IPv6 (see `bridle_common::NetKey`).
pub const NET_RULES: &str = "NET_RULES";

/// The array of tally maps (see [`tally`]).
pub const TALLIES: &str = "TALLIES";

/// bridle's programs and maps. Dropping it detaches and unloads everything it loaded and did
/// not pin.
pub struct Enforcer {
    objects: Objects,
    /// The exec hook's link, while this process owns it (until it is pinned).
    exec_link: Option<RawTracePointLinkId>,
    /// The links of the exec tier above kill-on-exec, until they are pinned.
    tier_links: Vec<tier::TierLink>,
    /// The exec tier in place.
    exec_tier: tier::ExecTier,
    /// The kernel's BTF, parsed once by [`Enforcer::load`] (absent for adopted pins).
    btf: Option<aya::Btf>,
    /// The unix-socket hooks, loaded outside aya (see [`unix`]), or why they are missing.
    unix: unix::UnixState,
    /// What the rule maps may hold, so a collection scans them only when a slot was left.
    slots: SlotRecord,
    /// The programs' clock offset, as last written.
    boot_offset: clock::BootOffset,
}

/// The policy slots whose entries may be in the rule maps. The maps are scanned for entries
/// of abandoned slots only when this says one may be there: scanning 10,000 entries costs
/// tens of milliseconds, and most collections (every cgroup created on the host) find none.
#[derive(Debug, Default)]
pub(crate) struct SlotRecord {
    /// Slots entries were written under since the last complete collection.
    written: std::collections::HashSet<u64>,
    /// The maps came from pins and may hold entries of any slot.
    unknown: bool,
}

impl SlotRecord {
    /// A record for maps adopted from a previous daemon.
    pub(crate) fn adopted() -> SlotRecord {
        SlotRecord {
            written: Default::default(),
            unknown: true,
        }
    }

    /// Whether the maps may hold entries of a slot not in `active`.
    fn may_hold_other_than(&self, active: &std::collections::HashSet<u64>) -> bool {
        self.unknown || !self.written.is_subset(active)
    }
}

/// Where programs and maps come from: this process's own load, or the pins a previous daemon
/// left under bpffs (then `ebpf` is `None`).
pub struct Objects {
    ebpf: Option<Ebpf>,
    maps: BTreeMap<String, Map>,
    programs: BTreeMap<String, Program>,
}

/// Something that holds programs by name.
pub(crate) trait Programs {
    /// The program called `name`, if there is one.
    fn program_mut(&mut self, name: &str) -> Option<&mut Program>;
}

impl Programs for Ebpf {
    fn program_mut(&mut self, name: &str) -> Option<&mut Program> {
        Ebpf::program_mut(self, name)
    }
}

impl Programs for Objects {
    fn program_mut(&mut self, name: &str) -> Option<&mut Program> {
        match &mut self.ebpf {
            Some(ebpf) => ebpf.program_mut(name),
            None => self.programs.get_mut(name),
        }
    }
}

impl Objects {
    fn map_mut(&mut self, name: &str) -> Option<&mut Map> {
        match &mut self.ebpf {
            Some(ebpf) => ebpf.map_mut(name),
            None => self.maps.get_mut(name),
        }
    }

    fn map(&self, name: &str) -> Option<&Map> {
        match &self.ebpf {
            Some(ebpf) => ebpf.map(name),
            None => self.maps.get(name),
        }
    }

    /// A borrowed descriptor of map `name`, whatever its type.
    fn map_fd(&self, name: &str) -> Option<BorrowedFd<'_>> {
        map_descriptor(self.map(name)?)
    }

    /// Every program, by name.
    fn programs_mut(&mut self) -> Box<dyn Iterator<Item = (&str, &mut Program)> + '_> {
        match &mut self.ebpf {
            Some(ebpf) => Box::new(ebpf.programs_mut()),
            None => Box::new(self.programs.iter_mut().map(|(n, p)| (n.as_str(), p))),
        }
    }

    fn take_map(&mut self, name: &str) -> Option<Map> {
        match &mut self.ebpf {
            Some(ebpf) => ebpf.take_map(name),
            None => self.maps.remove(name),
        }
    }
}

/// A borrowed descriptor of `map`, for the map types bridle's object has.
fn map_descriptor(map: &Map) -> Option<BorrowedFd<'_>> {
    let data = match map {
        Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::LpmTrie(d)
        | Map::PerCpuArray(d)
        | Map::RingBuf(d)
        | Map::Array(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd())
}

/// Counters the programs keep (summed over CPUs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events dropped because the ring buffer was full.
    pub events_lost: u64,
    /// Operations judged.
    pub judged: u64,
    /// Operations refused (or that would have been, in observe mode).
    pub refused: u64,
}

impl Enforcer {
    /// Loads the object and the exec hook (kill-on-exec tier). Nothing is attached to a cgroup
    /// yet, and the hook ignores every task until a workload is installed.
    pub fn load() -> Result<Enforcer> {
        // Parsed once (it is megabytes) for every load that relocates against it.
        let btf = aya::Btf::from_sys_fs()
            .context("reading the kernel's BTF at /sys/kernel/btf/vmlinux")?;
        let mut ebpf = aya::EbpfLoader::new().btf(Some(&btf)).load(OBJECT).context(
            "loading bridle's eBPF object (needs root, a kernel with BTF at /sys/kernel/btf/vmlinux, and BPF enabled)",
        )?;
        // The unix hooks are loaded outside aya, from their own copies of the map descriptors,
        // on a thread of their own: most of a start is the verifier checking each program, and
        // on a host with more than one CPU the two loads overlap.
        let unix_maps = ebpf
            .maps()
            .filter_map(|(name, map)| Some((name.to_owned(), map_descriptor(map)?)))
            .map(|(name, fd)| Ok((name, fd.try_clone_to_owned()?)))
            .collect::<std::io::Result<BTreeMap<String, OwnedFd>>>()
            .context("duplicating the map descriptors for the unix hooks")?;
        let (exec_link, unix) = std::thread::scope(|scope| -> Result<_> {
            // Loaded for real: where the kernel lacks the hooks this is how we find out.
            let unix = scope.spawn(|| {
                unix::UnixState::load(OBJECT, &btf, &|name| {
                    unix_maps.get(name).map(OwnedFd::as_fd)
                })
            });
            let exec_link = load_programs(&mut ebpf)?;
            let unix = unix
                .join()
                .map_err(|_| anyhow!("loading the unix-socket hooks panicked"))?;
            Ok((exec_link, unix))
        })?;
        drop(unix_maps);
        let objects = Objects {
            ebpf: Some(ebpf),
            maps: BTreeMap::new(),
            programs: BTreeMap::new(),
        };
        let mut enforcer = Enforcer {
            objects,
            exec_link: Some(exec_link),
            tier_links: Vec::new(),
            exec_tier: tier::ExecTier::Kill,
            btf: Some(btf),
            unix,
            slots: SlotRecord::default(),
            boot_offset: clock::BootOffset::default(),
        };
        enforcer.sync_clock()?;
        Ok(enforcer)
    }

    /// Brings the programs' clock offset up to date (see [`clock`]); cheap when nothing
    /// changed, so the daemon and `bridle run` call it on every turn of their loops.
    pub fn sync_clock(&mut self) -> Result<()> {
        let map = self
            .objects
            .map_mut(clock::MAP)
            .ok_or_else(|| anyhow!("the eBPF object has no map {}", clock::MAP))?;
        self.boot_offset.sync(map)
    }

    /// Why unix-socket rules are not enforced here; `None` when the hooks are loaded.
    pub fn unix_unavailable(&self) -> Option<&str> {
        self.unix.unavailable()
    }

    /// The warning to give for a policy, if this kernel cannot enforce something it says:
    /// unix rules, or a refusing default (which covers unix connects too), without the hooks.
    pub fn unix_warning(&self, compiled: &bridle_engine::Compiled) -> Option<String> {
        let why = self.unix.unavailable()?;
        let concerned =
            !compiled.unix.is_empty() || compiled.default == bridle_engine::Effect::Refuse;
        concerned.then(|| unix::not_enforced(why))
    }

    /// Attaches the socket programs at `cgroup`, covering it and every descendant. The links
    /// live as long as this `Enforcer`, unless [`pins`] pins them.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<Vec<CgroupLink>> {
        let dir = File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        let mut links = attach_sock_addr(&mut self.objects, &CONNECT_PROGRAMS, &dir, cgroup)?;
        links.extend(net::attach(&mut self.objects, &dir, cgroup)?);
        links.extend(dns::attach(&mut self.objects, &dir, cgroup)?);
        if let Some(hooks) = self.unix.hooks() {
            let attached = hooks.attach(&dir, cgroup)?;
            links.extend(
                attached
                    .into_iter()
                    .map(|(name, id)| CgroupLink::Unix(name, id)),
            );
        }
        Ok(links)
    }

    /// Writes a policy slot's entries, then points the workload at that slot (`config.slot`).
    /// The workload entry is written last, in one map update: until then the programs judge the
    /// workload by its previous slot (or ignore it, when it is new), never by a partial one.
    pub fn install(
        &mut self,
        workload: u64,
        config: Workload,
        entries: &KernelEntries,
    ) -> Result<()> {
        self.write_entries(config.slot, entries)?;
        self.point(workload, config)
    }

    /// Writes a policy slot's entries, which no workload judges by until [`Enforcer::point`]
    /// points one at `slot` (the first half of [`Enforcer::install`], for callers that write
    /// more under the slot before the switch: the DNS resolver's answers).
    pub fn write_entries(&mut self, slot: u64, entries: &KernelEntries) -> Result<()> {
        // Recorded first: a write that fails halfway still leaves entries to collect.
        self.slots.written.insert(slot);
        let objects = &mut self.objects;
        write_hash(objects, "EXEC_RULES", "exec entry", &entries.exec)?;
        write_hash(objects, "EXEC_PLACES", "exec place entry", &entries.places)?;
        write_net(objects, slot, &entries.net)?;
        // Pins adopted from a bridle that predates unix enforcement have no such map; the
        // unix rules are then reported as not enforced (Enforcer::unix_warning).
        if !entries.unix.is_empty() && objects.map(unix::MAP).is_some() {
            write_hash(objects, unix::MAP, "unix-socket entry", &entries.unix)?;
        }
        Ok(())
    }

    /// Points `workload` at the policy slot `config.slot` in one map update: from then on the
    /// programs judge it by that slot's entries and `config`'s defaults.
    pub fn point(&mut self, workload: u64, config: Workload) -> Result<()> {
        let mut workloads: HashMap<&mut MapData, u64, Workload> =
            map(&mut self.objects, "WORKLOADS")?;
        workloads
            .insert(workload, config, 0)
            .context("writing the workload entry")?;
        Ok(())
    }

    /// Deletes every entry whose policy slot is not in `active`: the slots a reload replaced,
    /// and those of workloads released or gone. Returns how many entries went.
    pub fn collect_slots(&mut self, active: &std::collections::HashSet<u64>) -> Result<usize> {
        if !self.slots.may_hold_other_than(active) {
            return Ok(0);
        }
        let objects = &mut self.objects;
        let stale = |slot: &u64| !active.contains(slot);
        let mut removed = sweep_hash::<ExecKey>(objects, "EXEC_RULES", |k| stale(&k.slot))?;
        removed += sweep_hash::<ExecPlaceKey>(objects, "EXEC_PLACES", |k| stale(&k.slot))?;
        removed += sweep_net(objects, |k| stale(&u64::from_ne_bytes(k.slot)))?;
        // Pins adopted from a daemon that predates unix enforcement have no such map.
        if objects.map(unix::MAP).is_some() {
            removed += sweep_hash::<UnixKey>(objects, unix::MAP, |k| stale(&k.slot))?;
        }
        // Every map has been swept: only the active slots can have entries now.
        self.slots.written.retain(|slot| active.contains(slot));
        self.slots.unknown = false;
        Ok(removed)
    }

    /// Stops judging a workload: its entry goes, so the programs ignore its tasks.
    pub fn forget_workload(&mut self, workload: u64) -> Result<()> {
        let mut workloads: HashMap<&mut MapData, u64, Workload> =
            map(&mut self.objects, "WORKLOADS")?;
        match workloads.remove(&workload) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(err) => Err(err).context("removing the workload entry"),
        }
    }

    /// A second descriptor of one of the object's hash maps or LPM tries, for a thread that
    /// writes or reads entries without the loader's borrow (the fanotify tier, the resolver).
    pub fn map_fd(&self, name: &str) -> Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        let data: &MapData = match self.objects.map(name) {
            Some(Map::HashMap(data) | Map::LruHashMap(data) | Map::LpmTrie(data)) => data,
            Some(_) => anyhow::bail!("map {name} is neither a hash map nor an LPM trie"),
            None => anyhow::bail!("the eBPF object has no map {name}"),
        };
        data.fd()
            .as_fd()
            .try_clone_to_owned()
            .with_context(|| format!("duplicating the fd of map {name}"))
    }

    /// The reader's handle on the tallies of repeated permitted socket decisions (one reader
    /// per loaded object: each harvest swaps the map the programs count in). `None` for pins
    /// adopted from a bridle that predates tallies: its programs count nothing.
    pub fn tallies(&self) -> Result<Option<tally::Tallies>> {
        use std::os::fd::AsFd;
        let data: &MapData = match self.objects.map(TALLIES) {
            Some(Map::ArrayOfMaps(data)) => data,
            Some(_) => anyhow::bail!("map {TALLIES} is not an array of maps"),
            None if self.objects.ebpf.is_none() => return Ok(None),
            None => anyhow::bail!("the eBPF object has no map {TALLIES}"),
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .with_context(|| format!("duplicating the fd of map {TALLIES}"))?;
        tally::Tallies::start(fd).map(Some)
    }

    /// Takes the event ring buffer (once).
    pub fn take_events(&mut self) -> Result<RingBuf<aya::maps::MapData>> {
        let map = self
            .objects
            .take_map("EVENTS")
            .ok_or_else(|| anyhow!("the EVENTS map was already taken"))?;
        RingBuf::try_from(map).context("opening the EVENTS ring buffer")
    }

    /// Reads the counters.
    pub fn stats(&mut self) -> Result<Stats> {
        let stats: PerCpuArray<&mut MapData, u64> = map(&mut self.objects, "STATS")?;
        let mut sums = [0u64; STAT_COUNT as usize];
        for (i, sum) in sums.iter_mut().enumerate() {
            let values = stats
                .get(&(i as u32), 0)
                .with_context(|| format!("reading stats slot {i}"))?;
            *sum = values.iter().sum();
        }
        Ok(Stats {
            events_lost: sums[bridle_common::STAT_EVENTS_LOST as usize],
            judged: sums[bridle_common::STAT_JUDGED as usize],
            refused: sums[bridle_common::STAT_REFUSED as usize],
        })
    }
}

/// Loads the programs aya loads (all but the unix hooks) and attaches the exec hook.
fn load_programs(ebpf: &mut Ebpf) -> Result<RawTracePointLinkId> {
    verify::load_side_by_side(verify::named(ebpf.programs_mut(), &LOADED_AT_START)?)?;
    let exec: &mut RawTracePoint = program(ebpf, "exec_guard")?;
    let exec_link = exec
        .attach(EXEC_TRACEPOINT)
        .with_context(|| format!("attaching the exec hook to {EXEC_TRACEPOINT}"))?;
    Ok(exec_link)
}

/// The programs [`Enforcer::load`] loads through aya, with what to call each in an error;
/// the costliest to verify first, so the two loading threads end together.
const LOADED_AT_START: [(&str, &str); 8] = [
    (
        "exec_guard",
        "the exec hook (raw tracepoint sched_process_exec)",
    ),
    (CONNECT_PROGRAMS[1], "the IPv6 connect cgroup program"),
    (CONNECT_PROGRAMS[0], "the IPv4 connect cgroup program"),
    (net::SENDMSG_PROGRAMS[0], "the IPv4 sendmsg cgroup program"),
    (net::SENDMSG_PROGRAMS[1], "the IPv6 sendmsg cgroup program"),
    (net::SOCK_CREATE, "the sock_create cgroup program"),
    (
        dns::RECVMSG_PROGRAMS[1],
        "the IPv6 DNS recvmsg cgroup program",
    ),
    (
        dns::RECVMSG_PROGRAMS[0],
        "the IPv4 DNS recvmsg cgroup program",
    ),
];

/// The sock_addr programs judging connects.
const CONNECT_PROGRAMS: [&str; 2] = ["connect4", "connect6"];

/// Attaches cgroup sock_addr programs by name at the cgroup open as `dir`.
fn attach_sock_addr(
    source: &mut impl Programs,
    names: &[&'static str],
    dir: &File,
    cgroup: &Path,
) -> Result<Vec<CgroupLink>> {
    let mut links = Vec::new();
    for name in names {
        let prog: &mut CgroupSockAddr = program(source, name)?;
        // aya attaches through a bpf_link, which always coexists with other links at the same
        // cgroup and its ancestors (a daemon's programs and a nested `bridle run`); the kernel
        // rejects any attach flag on a cgroup link, so none is passed.
        let id = prog
            .attach(dir, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} at {}", cgroup.display()))?;
        links.push(CgroupLink::SockAddr(name, id));
    }
    Ok(links)
}

/// A cgroup link this process attached, to pin or to let go with the `Enforcer`.
#[derive(Debug)]
pub enum CgroupLink {
    /// A sock_addr program's link.
    SockAddr(&'static str, CgroupSockAddrLinkId),
    /// A sock program's link.
    Sock(&'static str, aya::programs::cgroup_sock::CgroupSockLinkId),
    /// A unix-socket program's link (held by [`unix::UnixHooks`] until pinned).
    Unix(&'static str, u64),
}

fn program<'a, T, S>(source: &'a mut S, name: &str) -> Result<&'a mut T>
where
    S: Programs + ?Sized,
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    source
        .program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

/// Writes the (key, decision) entries of hash map `name`, once the map is checked to hold
/// exactly those types (the batch calls pass them as raw bytes). A refused entry is named as
/// `what` and its key.
fn write_hash<K: aya::Pod + std::fmt::Debug>(
    objects: &mut Objects,
    name: &str,
    what: &str,
    entries: &[(K, Decision)],
) -> Result<()> {
    map::<HashMap<&mut MapData, K, Decision>>(objects, name)?;
    write_batch(
        objects,
        name,
        entries,
        |e| *e,
        |(k, _)| format!("{what} {k:?}"),
    )
}

/// Writes the address entries of policy slot `slot` into the address trie, once the map is
/// checked to hold exactly those types. A refused entry is named by its prefix.
fn write_net(objects: &mut Objects, slot: u64, entries: &[NetEntryRow]) -> Result<()> {
    map::<LpmTrie<&mut MapData, NetKey, PortRules>>(objects, NET_RULES)?;
    let split = |(prefix, addr, rules): &NetEntryRow| {
        let key = NetKey {
            slot: slot.to_ne_bytes(),
            addr: *addr,
        };
        (
            Key::new(NET_KEY_SLOT_BITS + u32::from(*prefix), key),
            *rules,
        )
    };
    write_batch(objects, NET_RULES, entries, split, |(prefix, addr, _)| {
        format!("address entry {}", entries::prefix_text(*prefix, *addr))
    })
}

/// Writes the entry `split` makes of each item of `items` into map `name`, in batches; an
/// entry the kernel refuses is named by `describe`.
fn write_batch<E, K: aya::Pod, V: aya::Pod>(
    objects: &Objects,
    name: &str,
    items: &[E],
    split: impl Fn(&E) -> (K, V),
    describe: impl Fn(&E) -> String,
) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let fd = objects
        .map_fd(name)
        .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))?;
    batch::update(fd, items, split).map_err(|refused| {
        let named = items
            .get(refused.index)
            .map(&describe)
            .unwrap_or_else(|| format!("entry {} of {name}", refused.index));
        anyhow::Error::new(refused.error).context(format!("writing {named}"))
    })
}

/// Deletes the keys of hash map `name` (of (key, decision) entries) that `stale` picks;
/// returns how many went.
fn sweep_hash<K: aya::Pod>(
    objects: &mut Objects,
    name: &str,
    stale: impl Fn(&K) -> bool,
) -> Result<usize> {
    let keys: Vec<K> = map::<HashMap<&mut MapData, K, Decision>>(objects, name)?
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| stale(k))
        .collect();
    delete_batch(objects, name, &keys)
}

/// Deletes the keys of the address trie whose data `stale` picks; returns how many went.
fn sweep_net(objects: &mut Objects, stale: impl Fn(&NetKey) -> bool) -> Result<usize> {
    let keys: Vec<Key<NetKey>> =
        map::<LpmTrie<&mut MapData, NetKey, PortRules>>(objects, NET_RULES)?
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| stale(&k.data()))
            .collect();
    delete_batch(objects, NET_RULES, &keys)
}

/// Deletes `keys` from map `name` in one batch; returns how many were there.
fn delete_batch<K: aya::Pod>(objects: &Objects, name: &str, keys: &[K]) -> Result<usize> {
    if keys.is_empty() {
        return Ok(0);
    }
    let fd = objects
        .map_fd(name)
        .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))?;
    batch::delete(fd, keys).map_err(|refused| {
        anyhow::Error::new(refused.error)
            .context(format!("deleting entry {} of {name}", refused.index))
    })
}

fn map<'a, T>(objects: &'a mut Objects, name: &str) -> Result<T>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    objects
        .map_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))?
        .try_into()
        .with_context(|| format!("map {name} has an unexpected type"))
}
