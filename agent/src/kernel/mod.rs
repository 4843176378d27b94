//! The kernel half: loading bridle's eBPF object, attaching its programs, and writing the
//! engine's compiled entries into its maps.
//!
//! One module per concern: [`entries`] turns a compiled policy into map entries, [`events`]
//! reads decisions back. This module owns the loaded object and nothing else.

pub mod dns;
pub mod entries;
pub mod events;
pub mod net;
pub mod tier;

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{lpm_trie::Key, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::{CgroupAttachMode, CgroupSockAddr, RawTracePoint},
    Ebpf,
};
use bridle_common::{
    Decision, ExecKey, Net4Key, Net6Key, PortRules, Workload, NET_KEY_SLOT_BITS, STAT_COUNT,
};
use std::{fs::File, path::Path};

use entries::KernelEntries;

/// The eBPF object, built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bridle"));

/// The exec hook's tracepoint.
const EXEC_TRACEPOINT: &str = "sched_process_exec";

/// bridle's loaded programs and maps. Dropping it detaches and unloads everything it loaded.
pub struct Enforcer {
    ebpf: Ebpf,
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
        let mut ebpf = Ebpf::load(OBJECT).context(
            "loading bridle's eBPF object (needs root, a kernel with BTF at /sys/kernel/btf/vmlinux, and BPF enabled)",
        )?;
        let exec: &mut RawTracePoint = program(&mut ebpf, "exec_guard")?;
        exec.load().context(
            "loading the exec hook (raw tracepoint sched_process_exec): the kernel refused it",
        )?;
        exec.attach(EXEC_TRACEPOINT)
            .with_context(|| format!("attaching the exec hook to {EXEC_TRACEPOINT}"))?;
        for name in ["connect4", "connect6"] {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load()
                .with_context(|| format!("loading the {name} cgroup program"))?;
        }
        net::load(&mut ebpf)?;
        dns::load(&mut ebpf)?;
        Ok(Enforcer { ebpf })
    }

    /// Attaches the socket programs at `cgroup`, covering it and every descendant.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<()> {
        let dir = File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        for name in ["connect4", "connect6"] {
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            // aya attaches through a bpf_link, which always coexists with other links at the
            // same cgroup and its ancestors (a daemon's programs and a nested `bridle run`);
            // the kernel rejects any attach flag on a cgroup link, so none is passed.
            prog.attach(&dir, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} at {}", cgroup.display()))?;
        }
        net::attach(&mut self.ebpf, &dir, cgroup)?;
        dns::attach(&mut self.ebpf, &dir, cgroup)?;
        Ok(())
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
        {
            let mut exec: HashMap<&mut MapData, ExecKey, Decision> =
                map(&mut self.ebpf, "EXEC_RULES")?;
            for (key, decision) in &entries.exec {
                exec.insert(key, decision, 0)
                    .with_context(|| format!("writing exec entry {key:?}"))?;
            }
        }
        {
            let mut net4: LpmTrie<&mut MapData, Net4Key, PortRules> =
                map(&mut self.ebpf, "NET4_RULES")?;
            for (prefix, addr, rules) in &entries.net4 {
                let key = Key::new(
                    NET_KEY_SLOT_BITS + u32::from(*prefix),
                    Net4Key {
                        slot: config.slot.to_ne_bytes(),
                        addr: *addr,
                    },
                );
                net4.insert(&key, rules, 0)
                    .with_context(|| format!("writing IPv4 entry {addr:?}/{prefix}"))?;
            }
        }
        {
            let mut net6: LpmTrie<&mut MapData, Net6Key, PortRules> =
                map(&mut self.ebpf, "NET6_RULES")?;
            for (prefix, addr, rules) in &entries.net6 {
                let key = Key::new(
                    NET_KEY_SLOT_BITS + u32::from(*prefix),
                    Net6Key {
                        slot: config.slot.to_ne_bytes(),
                        addr: *addr,
                    },
                );
                net6.insert(&key, rules, 0)
                    .with_context(|| format!("writing IPv6 entry {addr:?}/{prefix}"))?;
            }
        }
        let mut workloads: HashMap<&mut MapData, u64, Workload> = map(&mut self.ebpf, "WORKLOADS")?;
        workloads
            .insert(workload, config, 0)
            .context("writing the workload entry")?;
        Ok(())
    }

    /// Takes the event ring buffer (once).
    pub fn take_events(&mut self) -> Result<RingBuf<aya::maps::MapData>> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| anyhow!("the EVENTS map was already taken"))?;
        RingBuf::try_from(map).context("opening the EVENTS ring buffer")
    }

    /// Reads the counters.
    pub fn stats(&mut self) -> Result<Stats> {
        let stats: PerCpuArray<&mut MapData, u64> = map(&mut self.ebpf, "STATS")?;
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

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

fn map<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))?
        .try_into()
        .with_context(|| format!("map {name} has an unexpected type"))
}
