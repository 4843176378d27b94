//! Harvesting the kernel's tallies of repeated permitted socket decisions.
//!
//! The connect and sendmsg programs send the first permitted decision of a key (workload,
//! process, comm, uid, object, rule, permit: [`TallyKey`]) as an event and count the repeats
//! in the current tally map, `TALLIES[0]` (ebpf/src/tally.rs). Every [`HARVEST_EVERY`] the
//! reader harvests: it creates an empty map, puts it at `TALLIES[0]`, reads the counts of the
//! map it replaced, and writes one counted audit record per key.
//!
//! # Why the accounting is exact
//!
//! Each decision is either an event (counted by the reader, or by the kernel's loss counter
//! when the ring buffer was full) or one increment of one tally map's count; never both and
//! never neither (ebpf/src/tally.rs). So the audit trail is exact if each map's counts are read
//! once, after the last increment into it. That is what the swap gives:
//!
//! - A program reaches a tally map only through `TALLIES[0]`, and only while it runs; it runs
//!   inside an RCU read-side critical section (cgroup programs run under `rcu_read_lock`).
//! - The kernel updates an array of maps from user space and then waits for an RCU grace period
//!   before the update returns (`maybe_wait_bpf_programs` in kernel/bpf/syscall.c: "so that
//!   userspace, when we return to it, knows that all programs that could be running use the
//!   new map value"). Programs that started before the swap may still have found the old map;
//!   every one of them has finished when `set` returns, and programs that start later find the
//!   new map.
//! - So once `set` returns, nothing can increment the old map again: its counts are final.
//!   They are read once and the map is dropped (the kernel frees it with its last reference).
//!   No entry is ever deleted from a map a program can still reach, so no increment can land
//!   in a freed or reused entry, and user space never needs to subtract one reading from the
//!   next.
//!
//! Two more properties follow from the same wait: every event a program sent while it held
//! the old map is in the ring buffer when `set` returns, so a reader that drains the ring
//! buffer after [`Tallies::harvest`] and before writing the counts writes a key's first
//! decision before its repeats; and a harvest after the workload's last task is gone (the end
//! of `bridle run`) sees every decision.
//!
//! A map that runs out of room (more than `TALLY_ENTRIES` keys between two harvests) costs
//! nothing but aggregation: the program sends such a decision as an event. Keys do not outlive
//! a harvest, so the first decision of a key in every interval is an event again: a steady
//! stream of one repeated connect makes about one event and one counted record per interval.

use anyhow::{Context, Result};
use aya::maps::{ArrayOfMaps, HashMap, Map, MapData, MapError};
use bridle_common::{TallyCount, TallyKey, TALLY_ENTRIES};
use std::{os::fd::OwnedFd, time::Duration};

/// How often the counts go to the audit trail. A swap waits for an RCU grace period (a few
/// milliseconds), so this is not the 50 ms the ring buffer is drained at.
pub const HARVEST_EVERY: Duration = Duration::from_secs(1);

/// `BPF_F_NO_PREALLOC`: a tally map holds a few keys most of the time; entries are allocated
/// when a key is first entered, which happens once per key and interval.
const NO_PREALLOC: u32 = 1;

type Tally = HashMap<MapData, TallyKey, TallyCount>;

/// What harvesting needs of the kernel: tally maps and the `TALLIES` slot. A trait so that the
/// bookkeeping can be tested without a kernel.
pub trait TallyMaps {
    /// One tally map.
    type Map;
    /// A new, empty tally map.
    fn create(&mut self) -> Result<Self::Map>;
    /// Puts `map` at `TALLIES[0]`; returns once no program can reach the map it replaced.
    fn install(&mut self, map: &Self::Map) -> Result<()>;
    /// Whether any key was entered into `map`.
    fn entered(map: &Self::Map) -> Result<bool>;
    /// Every key of `map` and its count.
    fn read(map: &Self::Map) -> Result<Vec<(TallyKey, TallyCount)>>;
}

/// The tally maps of a loaded object.
pub struct Kernel {
    outer: ArrayOfMaps<MapData, Tally>,
}

impl TallyMaps for Kernel {
    type Map = Tally;

    fn create(&mut self) -> Result<Tally> {
        HashMap::create(TALLY_ENTRIES, NO_PREALLOC).context("creating a tally map")
    }

    fn install(&mut self, map: &Tally) -> Result<()> {
        // The kernel's update of an array of maps waits for an RCU grace period before it
        // returns (see the module docs): this is the swap's whole guarantee.
        self.outer
            .set(0, map, 0)
            .context("putting a new tally map in TALLIES")
    }

    fn entered(map: &Tally) -> Result<bool> {
        Ok(map.keys().next().is_some())
    }

    fn read(map: &Tally) -> Result<Vec<(TallyKey, TallyCount)>> {
        map.iter()
            .map(|entry| entry.context("reading a tally"))
            .collect()
    }
}

/// The reader's handle on the tallies of one loaded object.
pub struct Tallies<M: TallyMaps = Kernel> {
    maps: M,
    /// The map at `TALLIES[0]`, as this process put it there (`None` before the first swap).
    current: Option<M::Map>,
    /// Counts read from a map an earlier process left at `TALLIES[0]` (a daemon restarted over
    /// its pins), reported with the first harvest.
    leftover: Vec<(TallyKey, TallyCount)>,
}

impl Tallies<Kernel> {
    /// Takes over `TALLIES` (`outer` is a descriptor of it): puts an empty map in place and
    /// keeps the counts of any map an earlier reader left there, for the first harvest.
    pub fn start(outer: OwnedFd) -> Result<Tallies<Kernel>> {
        let data = MapData::from_fd(outer).context("opening the TALLIES map")?;
        let map = Map::from_map_data(data).context("the TALLIES map has an unknown type")?;
        let outer: ArrayOfMaps<MapData, Tally> =
            ArrayOfMaps::try_from(map).context("TALLIES is not an array of maps")?;
        let previous = match outer.get(&0, 0) {
            Ok(tally) => Some(tally),
            Err(MapError::KeyNotFound) => None,
            Err(err) => return Err(err).context("reading TALLIES[0]"),
        };
        Tallies::with_maps(Kernel { outer }, previous)
    }
}

impl<M: TallyMaps> Tallies<M> {
    /// Puts a new map in place; `previous` is the map found there, harvested first.
    pub fn with_maps(maps: M, previous: Option<M::Map>) -> Result<Tallies<M>> {
        let mut tallies = Tallies {
            maps,
            current: None,
            leftover: Vec::new(),
        };
        tallies.swap()?;
        if let Some(previous) = previous {
            tallies.leftover = counted(M::read(&previous)?);
        }
        Ok(tallies)
    }

    /// Swaps in an empty map and returns the final counts of the one it replaces, one entry per
    /// key that counted anything. Cheap when nothing was entered since the last harvest: then
    /// there is no swap.
    pub fn harvest(&mut self) -> Result<Vec<(TallyKey, TallyCount)>> {
        let mut out = std::mem::take(&mut self.leftover);
        let entered = match &self.current {
            Some(current) => M::entered(current)?,
            None => true,
        };
        if entered {
            if let Some(old) = self.swap()? {
                out.extend(counted(M::read(&old)?));
            }
        }
        Ok(out)
    }

    /// Puts a new empty map at `TALLIES[0]`; returns the one this process had put there. When
    /// this returns, no program can reach the returned map any more (see the module docs).
    fn swap(&mut self) -> Result<Option<M::Map>> {
        let fresh = self.maps.create()?;
        self.maps.install(&fresh)?;
        Ok(self.current.replace(fresh))
    }
}

/// The keys that counted anything (a key whose only decision was sent as an event counts 0).
fn counted(entries: Vec<(TallyKey, TallyCount)>) -> Vec<(TallyKey, TallyCount)> {
    entries.into_iter().filter(|(_, c)| c.count > 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        cell::{Cell, RefCell},
        collections::HashMap as Std,
        rc::Rc,
    };

    type Shared = Rc<RefCell<Std<TallyKey, TallyCount>>>;

    /// A kernel in miniature: the map installed at `TALLIES[0]` (the programs' side of the
    /// protocol is `decide`).
    #[derive(Default)]
    struct Fake {
        installed: Rc<RefCell<Option<Shared>>>,
        installs: Rc<Cell<u32>>,
    }

    impl TallyMaps for Fake {
        type Map = Shared;

        fn create(&mut self) -> Result<Shared> {
            Ok(Shared::default())
        }

        fn install(&mut self, map: &Shared) -> Result<()> {
            *self.installed.borrow_mut() = Some(Rc::clone(map));
            self.installs.set(self.installs.get() + 1);
            Ok(())
        }

        fn entered(map: &Shared) -> Result<bool> {
            Ok(!map.borrow().is_empty())
        }

        fn read(map: &Shared) -> Result<Vec<(TallyKey, TallyCount)>> {
            Ok(map.borrow().iter().map(|(k, c)| (*k, *c)).collect())
        }
    }

    /// What the programs sent: events that reached the ring buffer, and events lost (counted
    /// by the kernel's loss counter).
    #[derive(Default)]
    struct Sent {
        events: Std<TallyKey, u64>,
        lost: u64,
    }

    /// One permitted decision, as ebpf/src/tally.rs takes it: counted if the key is there, else
    /// entered (room permitting) and sent as an event; a full ring buffer falls back to the
    /// count, a full map to an event, both full to the loss counter.
    fn decide(
        installed: &RefCell<Option<Shared>>,
        capacity: usize,
        key: TallyKey,
        now: u64,
        ring_full: bool,
        sent: &mut Sent,
    ) {
        let emit = |sent: &mut Sent| {
            if ring_full {
                false
            } else {
                *sent.events.entry(key).or_default() += 1;
                true
            }
        };
        let Some(map) = installed.borrow().clone() else {
            if !emit(sent) {
                sent.lost += 1;
            }
            return;
        };
        let mut map = map.borrow_mut();
        if let Some(c) = map.get_mut(&key) {
            c.count += 1;
            c.last_ns = now;
            return;
        }
        let entered = map.len() < capacity;
        if entered {
            map.insert(
                key,
                TallyCount {
                    count: 0,
                    first_ns: now,
                    last_ns: now,
                },
            );
            if emit(sent) {
                return;
            }
        }
        if let Some(c) = map.get_mut(&key) {
            c.count += 1;
            c.last_ns = now;
        } else if !emit(sent) {
            sent.lost += 1;
        }
    }

    fn key(n: u8) -> TallyKey {
        TallyKey {
            workload: 7,
            permit_id: 9,
            tgid: u32::from(n % 3),
            uid: 0,
            rule: 1,
            port: 443,
            kind: bridle_common::EVENT_CONNECT4,
            code: 0,
            addr: [10, 0, 0, n, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            comm: *b"agent\0\0\0\0\0\0\0\0\0\0\0",
        }
    }

    /// Every decision is in the audit trail exactly once: as its event, as part of one
    /// harvested count, or (ring buffer full and no room in the tally) in the loss counter;
    /// whatever the interleaving of decisions and harvests, a full map or a full ring buffer.
    #[test]
    fn every_decision_is_an_event_a_count_or_counted_lost_exactly_once() {
        for (capacity, ring_full_every) in [(64, 0), (3, 0), (64, 5), (2, 3), (0, 4)] {
            let fake = Fake::default();
            let installed = Rc::clone(&fake.installed);
            let mut tallies = Tallies::with_maps(fake, None).expect("start");
            let mut sent = Sent::default();
            let mut counted: Std<TallyKey, u64> = Std::new();
            let mut decided: Std<TallyKey, u64> = Std::new();
            let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
            for now in 1..=5_000u64 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                if rng.is_multiple_of(97) {
                    for (k, c) in tallies.harvest().expect("harvest") {
                        assert!(c.count > 0, "only keys that counted are reported");
                        assert!(c.first_ns <= c.last_ns);
                        *counted.entry(k).or_default() += c.count;
                    }
                    continue;
                }
                let k = key((rng % 11) as u8);
                let ring_full = ring_full_every != 0 && rng.is_multiple_of(ring_full_every);
                decide(&installed, capacity, k, now, ring_full, &mut sent);
                *decided.entry(k).or_default() += 1;
            }
            for (k, c) in tallies.harvest().expect("last harvest") {
                *counted.entry(k).or_default() += c.count;
            }
            let total: u64 = decided.values().sum();
            let events: u64 = sent.events.values().sum();
            let counts: u64 = counted.values().sum();
            assert_eq!(
                events + counts + sent.lost,
                total,
                "capacity {capacity}, ring full every {ring_full_every}"
            );
            if ring_full_every == 0 {
                assert_eq!(
                    sent.lost, 0,
                    "nothing is lost while the ring buffer has room"
                );
                for (k, n) in &decided {
                    let got = sent.events.get(k).copied().unwrap_or(0)
                        + counted.get(k).copied().unwrap_or(0);
                    assert_eq!(got, *n, "key {k:?}");
                }
            }
            if capacity > 11 {
                assert!(events < total / 10, "repeats are counted, not sent");
            }
        }
    }

    #[test]
    fn a_quiet_interval_costs_no_swap_and_a_predecessors_counts_come_first() {
        let previous: Shared = Shared::default();
        let counts = TallyCount {
            count: 5,
            first_ns: 1,
            last_ns: 2,
        };
        previous.borrow_mut().insert(key(1), counts);
        previous.borrow_mut().insert(key(2), TallyCount::default());
        let fake = Fake::default();
        let installs = Rc::clone(&fake.installs);
        let installed = Rc::clone(&fake.installed);
        let mut tallies = Tallies::with_maps(fake, Some(previous)).expect("start");
        assert_eq!(installs.get(), 1, "the start puts a fresh map in place");
        assert_eq!(tallies.harvest().expect("harvest"), vec![(key(1), counts)]);
        assert_eq!(installs.get(), 1, "nothing was entered: no swap");
        let mut sent = Sent::default();
        decide(&installed, 8, key(3), 10, false, &mut sent);
        assert_eq!(tallies.harvest().expect("harvest"), vec![]);
        assert_eq!(installs.get(), 2, "an entered key costs a swap");
    }
}
