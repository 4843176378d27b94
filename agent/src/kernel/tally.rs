//! Harvesting the kernel's tallies of repeated permitted socket decisions.
//!
//! The connect and sendmsg programs send the first permitted decision of a key (workload,
//! process, comm, uid, object, rule, permit: [`TallyKey`]) as an event and count the repeats
//! in the current tally map, `TALLIES[0]` (ebpf/src/tally.rs). Every [`HARVEST_EVERY`] the
//! reader harvests: it parks the current map at `TALLIES[1]`, puts an empty one at
//! `TALLIES[0]`, reads the parked map's counts and writes one counted audit record per key;
//! once those records are on disk it releases the parked map ([`Tallies::release`]).
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
//!   every one of them has finished when the update returns, and programs that start later
//!   find the new map.
//! - So once the update returns, nothing can increment the old map again: its counts are
//!   final. They are read once; the map is dropped when released (the kernel frees it with its
//!   last reference). No entry is ever deleted from a map a program can still reach, so no
//!   increment can land in a freed or reused entry, and user space never needs to subtract one
//!   reading from the next.
//!
//! Two more properties follow from the same wait: every event a program sent while it held
//! the old map is in the ring buffer when the update returns, so a reader that drains the ring
//! buffer after [`Tallies::harvest`] and before writing the counts writes a key's first
//! decision before its repeats; and a harvest after the workload's last task is gone (the end
//! of `bridle run`) sees every decision.
//!
//! # A reader that dies
//!
//! The daemon's maps are pinned, and the counts must survive it as its pinned ring buffer's
//! events do. A map's counts leave `TALLIES[0]` only by way of `TALLIES[1]`, which the pinned
//! array holds until the reader has written them and released it; a reader that starts finds
//! the current map at `TALLIES[0]` and keeps it, and reports a map left at `TALLIES[1]` first.
//! So a daemon killed at any moment loses no count. One killed after writing a parked map's
//! counts but before releasing it makes the next daemon write them again: as with the events
//! it had written but not yet consumed, at least once across a kill, exactly once otherwise.
//!
//! A map that runs out of room (more than `TALLY_ENTRIES` keys between two harvests) costs
//! nothing but aggregation: the program sends such a decision as an event. Keys do not outlive
//! a harvest, so the first decision of a key in every interval is an event again: a steady
//! stream of one repeated connect makes about one event and one counted record per interval.

use crate::fanotify::bpfmap::BpfMap;
use anyhow::{Context, Result};
use aya::maps::{ArrayOfMaps, HashMap, Map, MapData, MapError};
use bridle_common::{TallyCount, TallyKey, TALLY_CURRENT, TALLY_ENTRIES, TALLY_PARKED};
use std::{
    os::fd::{AsFd, OwnedFd},
    time::Duration,
};

/// How often the counts go to the audit trail. A swap waits for two RCU grace periods (a few
/// milliseconds), so this is not the 50 ms the ring buffer is drained at.
pub const HARVEST_EVERY: Duration = Duration::from_secs(1);

/// `BPF_F_NO_PREALLOC`: a tally map holds a few keys most of the time; entries are allocated
/// when a key is first entered, which happens once per key and interval.
const NO_PREALLOC: u32 = 1;

type Tally = HashMap<MapData, TallyKey, TallyCount>;

/// What harvesting needs of the kernel: tally maps and the two `TALLIES` slots. A trait so
/// that the bookkeeping can be tested without a kernel.
pub trait TallyMaps {
    /// One tally map.
    type Map;
    /// A new, empty tally map.
    fn create(&mut self) -> Result<Self::Map>;
    /// The map at `TALLIES[slot]`, if any.
    fn get(&self, slot: u32) -> Result<Option<Self::Map>>;
    /// Puts `map` at `TALLIES[slot]`; returns once no program can reach the map it replaced.
    fn put(&mut self, slot: u32, map: &Self::Map) -> Result<()>;
    /// Empties `TALLIES[slot]`.
    fn clear(&mut self, slot: u32) -> Result<()>;
    /// Whether any key was entered into `map`.
    fn entered(map: &Self::Map) -> Result<bool>;
    /// Every key of `map` and its count.
    fn read(map: &Self::Map) -> Result<Vec<(TallyKey, TallyCount)>>;
}

/// The tally maps of a loaded object.
pub struct Kernel {
    outer: ArrayOfMaps<MapData, Tally>,
    /// The same map, for deleting an element (aya 0.14 cannot).
    raw: BpfMap,
}

impl TallyMaps for Kernel {
    type Map = Tally;

    fn create(&mut self) -> Result<Tally> {
        HashMap::create(TALLY_ENTRIES, NO_PREALLOC).context("creating a tally map")
    }

    fn get(&self, slot: u32) -> Result<Option<Tally>> {
        match self.outer.get(&slot, 0) {
            Ok(tally) => Ok(Some(tally)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(err) => Err(err).with_context(|| format!("reading TALLIES[{slot}]")),
        }
    }

    fn put(&mut self, slot: u32, map: &Tally) -> Result<()> {
        // The kernel's update of an array of maps waits for an RCU grace period before it
        // returns (see the module docs): this is the swap's whole guarantee.
        self.outer
            .set(slot, map, 0)
            .with_context(|| format!("putting a tally map in TALLIES[{slot}]"))
    }

    fn clear(&mut self, slot: u32) -> Result<()> {
        self.raw
            .delete(&slot)
            .with_context(|| format!("emptying TALLIES[{slot}]"))
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
    /// The map at `TALLIES[0]`.
    current: M::Map,
    /// The map at `TALLIES[1]` whose counts a harvest returned, until they are released.
    parked: Option<M::Map>,
}

impl Tallies<Kernel> {
    /// Takes over `TALLIES` (`outer` is a descriptor of it).
    pub fn start(outer: OwnedFd) -> Result<Tallies<Kernel>> {
        let raw = BpfMap::new(
            outer
                .as_fd()
                .try_clone_to_owned()
                .context("duplicating the fd of map TALLIES")?,
        );
        let data = MapData::from_fd(outer).context("opening the TALLIES map")?;
        let map = Map::from_map_data(data).context("the TALLIES map has an unknown type")?;
        let outer: ArrayOfMaps<MapData, Tally> =
            ArrayOfMaps::try_from(map).context("TALLIES is not an array of maps")?;
        Tallies::with_maps(Kernel { outer, raw })
    }
}

impl<M: TallyMaps> Tallies<M> {
    /// Keeps the map at `TALLIES[0]` (an earlier reader's, still counting) or puts an empty
    /// one there; a map an earlier reader left parked is harvested first.
    pub fn with_maps(mut maps: M) -> Result<Tallies<M>> {
        let current = match maps.get(TALLY_CURRENT)? {
            Some(current) => current,
            None => {
                let fresh = maps.create()?;
                maps.put(TALLY_CURRENT, &fresh)?;
                fresh
            }
        };
        let parked = maps.get(TALLY_PARKED)?;
        Ok(Tallies {
            maps,
            current,
            parked,
        })
    }

    /// The final counts of the keys that counted anything since the last harvest: parks the
    /// current map and swaps in an empty one (no swap when no key was entered). The counts
    /// stay parked in the kernel until [`Tallies::release`], which the caller calls once it has
    /// written them; until then a harvest returns the parked counts again.
    pub fn harvest(&mut self) -> Result<Vec<(TallyKey, TallyCount)>> {
        if self.parked.is_none() {
            if !M::entered(&self.current)? {
                return Ok(Vec::new());
            }
            let fresh = self.maps.create()?;
            // Parked first, so the counts are never held by this process alone.
            self.maps.put(TALLY_PARKED, &self.current)?;
            self.maps.put(TALLY_CURRENT, &fresh)?;
            self.parked = Some(std::mem::replace(&mut self.current, fresh));
        }
        match &self.parked {
            Some(parked) => Ok(counted(M::read(parked)?)),
            None => Ok(Vec::new()),
        }
    }

    /// Releases the parked map once its counts are written (a no-op when nothing is parked).
    pub fn release(&mut self) -> Result<()> {
        if self.parked.take().is_some() {
            self.maps.clear(TALLY_PARKED)?;
        }
        Ok(())
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

    /// The two `TALLIES` slots, shared with the test (a pinned array outlives its reader).
    type Slots = Rc<RefCell<[Option<Shared>; 2]>>;

    /// A kernel in miniature: the `TALLIES` slots (the programs' side of the protocol is
    /// `decide`, which counts in slot 0).
    #[derive(Default)]
    struct Fake {
        slots: Slots,
        swaps: Rc<Cell<u32>>,
    }

    impl TallyMaps for Fake {
        type Map = Shared;

        fn create(&mut self) -> Result<Shared> {
            Ok(Shared::default())
        }

        fn get(&self, slot: u32) -> Result<Option<Shared>> {
            Ok(self.slots.borrow()[slot as usize].clone())
        }

        fn put(&mut self, slot: u32, map: &Shared) -> Result<()> {
            self.slots.borrow_mut()[slot as usize] = Some(Rc::clone(map));
            if slot == TALLY_CURRENT {
                self.swaps.set(self.swaps.get() + 1);
            }
            Ok(())
        }

        fn clear(&mut self, slot: u32) -> Result<()> {
            self.slots.borrow_mut()[slot as usize] = None;
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
        slots: &Slots,
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
        let current = slots.borrow()[TALLY_CURRENT as usize].clone();
        let Some(map) = current else {
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
            let slots = Rc::clone(&fake.slots);
            let mut tallies = Tallies::with_maps(fake).expect("start");
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
                    tallies.release().expect("release");
                    continue;
                }
                let k = key((rng % 11) as u8);
                let ring_full = ring_full_every != 0 && rng.is_multiple_of(ring_full_every);
                decide(&slots, capacity, k, now, ring_full, &mut sent);
                *decided.entry(k).or_default() += 1;
            }
            for (k, c) in tallies.harvest().expect("last harvest") {
                *counted.entry(k).or_default() += c.count;
            }
            tallies.release().expect("release");
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
    fn a_quiet_interval_costs_no_swap() {
        let fake = Fake::default();
        let (slots, swaps) = (Rc::clone(&fake.slots), Rc::clone(&fake.swaps));
        let mut tallies = Tallies::with_maps(fake).expect("start");
        assert_eq!(swaps.get(), 1, "the start puts an empty map in place");
        assert_eq!(tallies.harvest().expect("harvest"), vec![]);
        assert_eq!(swaps.get(), 1, "nothing was entered: no swap");
        let mut sent = Sent::default();
        decide(&slots, 8, key(3), 10, false, &mut sent);
        assert_eq!(tallies.harvest().expect("harvest"), vec![]);
        assert_eq!(swaps.get(), 2, "an entered key costs a swap");
        tallies.release().expect("release");
        assert!(slots.borrow()[TALLY_PARKED as usize].is_none());
    }

    /// A reader killed at any point of a harvest loses no count; killed after writing the
    /// counts but before releasing them, its successor writes them again (at least once).
    #[test]
    fn a_reader_killed_mid_harvest_leaves_every_count_to_the_next() {
        let fake = Fake::default();
        let slots = Rc::clone(&fake.slots);
        let mut first = Tallies::with_maps(fake).expect("start");
        let mut sent = Sent::default();
        for now in 0..10 {
            decide(&slots, 8, key(1), now, false, &mut sent);
        }
        let counts = first.harvest().expect("harvest");
        assert_eq!(counts.iter().map(|(_, c)| c.count).sum::<u64>(), 9);
        // Killed before release: the parked counts are the successor's first harvest.
        drop(first);
        for now in 10..15 {
            decide(&slots, 8, key(1), now, false, &mut sent);
        }
        let mut second = Tallies::with_maps(Fake {
            slots: Rc::clone(&slots),
            ..Fake::default()
        })
        .expect("restart");
        assert_eq!(
            second.harvest().expect("harvest"),
            counts,
            "parked counts first"
        );
        second.release().expect("release");
        // The map the first reader left counting is kept: nothing counted meanwhile is lost.
        let later = second.harvest().expect("harvest");
        assert_eq!(later.iter().map(|(_, c)| c.count).sum::<u64>(), 4);
        assert_eq!(sent.events.values().sum::<u64>(), 2);
    }
}
