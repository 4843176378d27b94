//! Repeated permitted socket decisions, counted in the kernel.
//!
//! A permitted connect or send whose key ([`TallyKey`]: workload, process, object, rule,
//! permit) the current tally map already holds costs one hash lookup and an atomic increment,
//! where an event cost a ring-buffer record, its helpers and the reader's work for each one.
//! The first decision of a key is still an event, so the audit trail names it at once; the
//! repeats reach the audit trail as counts when user space harvests the map.
//!
//! The map is reached through `TALLIES[TALLY_CURRENT]`, an array of maps, so that user space can
//! swap in an empty map and harvest the old one: the kernel waits, inside that swap, for every
//! program that may still hold the old map to finish, so a count read after it is final (see
//! agent/src/kernel/tally.rs).

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    btf_maps::{ArrayOfMaps, HashMap},
    helpers::bpf_get_current_pid_tgid,
    macros::btf_map,
};
use bridle_common::{TallyCount, TallyKey, STAT_EVENTS_LOST, TALLY_CURRENT, TALLY_ENTRIES};

use crate::{count, current_identity, emit_head, Judgement};

/// One tally map (the type every map swapped into `TALLIES` has).
type Tally =
    HashMap<TallyKey, TallyCount, { TALLY_ENTRIES as usize }, { BPF_F_NO_PREALLOC as usize }>;

/// The current tally map at `TALLY_CURRENT`; empty (no tally, every permit an event) until user
/// space puts one there. `TALLY_PARKED` holds a map being harvested, for user space alone.
#[btf_map]
static TALLIES: ArrayOfMaps<Tally, 2> = ArrayOfMaps::new();

unsafe extern "C" {
    /// `__sync_fetch_and_add(counter, 1)` (core.c): the Rust BPF target has no atomic
    /// read-modify-write in `core`.
    fn bridle_count_one(counter: *mut u64);
}

/// Accounts for a permitted socket decision: counted in the tally if its key is there, else
/// sent as an event (and its key entered, so the next one is counted). Nothing is dropped
/// silently: a decision that is neither counted nor queued counts as a lost event.
#[inline(always)]
pub(crate) fn permit(j: &Judgement, kind: u8, port: u16, addr: &[u8; 16]) {
    let Some(tally) = TALLIES.get(TALLY_CURRENT) else {
        if !emit_head(j, kind, 0, port, addr) {
            count(STAT_EVENTS_LOST);
        }
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let who = current_identity();
    let key = TallyKey {
        workload: j.workload,
        permit_id: j.decision.permit_id,
        tgid: (pid_tgid >> 32) as u32,
        uid: who.uid,
        rule: j.decision.rule,
        port,
        kind,
        code: j.decision.code,
        addr: *addr,
        comm: who.comm,
    };
    if let Some(counter) = tally.get_ptr_mut(&key) {
        bump(counter, j.now);
        return;
    }
    // The first decision is stamped as precisely as its event.
    let at = j.stamp();
    let first = TallyCount {
        count: 0,
        first_ns: at,
        last_ns: at,
    };
    // BPF_NOEXIST: of two CPUs entering one key, one wins and sends the event; the other finds
    // the key below and counts. A full map refuses the key: then the decision is an event.
    let entered = tally.insert(&key, &first, BPF_NOEXIST as u64).is_ok();
    if entered && emit_head(j, kind, 0, port, addr) {
        return;
    }
    // Lost the race to enter the key, or the event found the ring buffer full: count it.
    if let Some(counter) = tally.get_ptr_mut(&key) {
        bump(counter, j.now);
    } else if !emit_head(j, kind, 0, port, addr) {
        count(STAT_EVENTS_LOST);
    }
}

/// Counts one decision at `now` (the coarse clock, which may lag the precise stamp of the
/// key's first decision by up to a tick: `last_ns` never goes below it).
#[inline(always)]
fn bump(counter: *mut TallyCount, now: u64) {
    // SAFETY: `counter` points at a live value of the current tally map, which stays valid
    // until this program returns (user space swaps maps out, it never deletes from a current
    // one); the count is incremented atomically, `last_ns` is a plain aligned store.
    unsafe {
        bridle_count_one(&mut (*counter).count);
        if now > (*counter).last_ns {
            (*counter).last_ns = now;
        }
    }
}
