//! bridle's eBPF programs.
//!
//! Every decision here is a lookup of an entry the engine compiled from a policy: the programs
//! hold no policy logic of their own beyond "refuse overrides permit" across nested workloads,
//! "an expired entry is absent", and the workload's default for an object no entry covers.
#![no_std]
#![no_main]

// The exec tier programs: the BPF LSM hook and the task tracking the fanotify tier asks.
mod lsm;
mod sock;
// DNS traffic to the workload's resolver, and replies back from the address asked.
mod dns;
// Unix-socket connects and datagram sends.
mod unix;
// Repeated permitted socket decisions, counted instead of sent one event each.
mod tally;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, bpf_ktime_get_coarse_ns,
        bpf_probe_read_kernel_str_bytes, bpf_send_signal, generated as gen,
    },
    macros::{cgroup_sock_addr, map, raw_tracepoint},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf},
    programs::{RawTracePointContext, SockAddrContext},
};
use bridle_common::{
    code, Decision, Event, EventHead, ExecKey, ExecPlace, ExecPlaceKey, NetKey, PortRules,
    Workload, COMM_LEN, EFFECT_NONE, EFFECT_PERMIT, EFFECT_REFUSE, EVENT_CONNECT4, EVENT_CONNECT6,
    EVENT_EXEC, EVENT_KILLED, EVENT_OBSERVED, MAX_CGROUP_DEPTH, PORT_RULES, STAT_COUNT,
    STAT_EVENTS_LOST, STAT_JUDGED, STAT_REFUSED, WORKLOAD_ANON_EXEC, WORKLOAD_OBSERVE,
};

const SIGKILL: u32 = 9;
/// sock_addr programs: 1 lets the operation go ahead, 0 makes it fail with EPERM.
const SOCK_ALLOW: i32 = 1;
const SOCK_DENY: i32 = 0;

/// Confined workloads by the cgroup id of their root.
#[map]
static WORKLOADS: HashMap<u64, Workload> = HashMap::with_max_entries(4096, 0);

/// Exec decisions by (policy slot, device, inode).
#[map]
static EXEC_RULES: HashMap<ExecKey, Decision> =
    HashMap::with_max_entries(1 << 18, BPF_F_NO_PREALLOC);

/// Exec decisions by (policy slot, directory, name): the path rules, still found when a
/// file is replaced by a new inode at the same path.
#[map]
static EXEC_PLACES: HashMap<ExecPlaceKey, Decision> =
    HashMap::with_max_entries(1 << 18, BPF_F_NO_PREALLOC);

/// Connect decisions by (policy slot, address prefix), IPv4 addresses in their IPv4-mapped
/// form (see [`NetKey`]).
#[map]
static NET_RULES: LpmTrie<NetKey, PortRules> = LpmTrie::with_max_entries(1 << 18, 0);

/// Decisions for user space. Permits are queued without a wakeup; refusals wake the reader.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// The ring buffer's size.
const EVENTS_BYTES: u32 = 1 << 20;

/// Unread bytes beyond which a permit wakes the reader too: it drains on a timer, and a burst
/// of distinct decisions (each one an event) could otherwise fill the buffer between two ticks.
const EVENTS_WAKE_AT: u64 = EVENTS_BYTES as u64 / 2;

/// Per-CPU counters (`STAT_*`), so that nothing, not even a lost event, goes uncounted.
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

unsafe extern "C" {
    /// Reads the executed file's identity from a `struct linux_binprm` (CO-RE, see core.c).
    fn bridle_read_exec_file(bprm: *const u8, out: *mut ExecFile) -> i32;
    /// Reads the executed file's directory and name (CO-RE, see core.c).
    fn bridle_read_exec_place(bprm: *const u8, out: *mut ExecPlace) -> i32;
    /// Reads the current task's uid and comm in place (CO-RE, see core.c).
    fn bridle_current_identity(out: *mut Identity);
}

/// Mirrors `struct bridle_identity` in core.c.
#[repr(C)]
pub(crate) struct Identity {
    pub(crate) uid: u32,
    _pad: u32,
    pub(crate) comm: [u8; COMM_LEN],
}

/// The current task's uid and comm, as `bpf_get_current_uid_gid` and `bpf_get_current_comm`
/// give them, for the paths every permitted connect takes.
#[inline(always)]
pub(crate) fn current_identity() -> Identity {
    let mut out = core::mem::MaybeUninit::<Identity>::uninit();
    // SAFETY: the accessor writes every field (see the note on zeros for why uninit).
    unsafe {
        bridle_current_identity(out.as_mut_ptr());
        out.assume_init()
    }
}

/// Mirrors `struct bridle_exec_file` in core.c.
#[repr(C)]
#[derive(Default)]
struct ExecFile {
    dev: u64,
    ino: u64,
    filename: u64,
    nlink: u32,
    _pad: u32,
}

/// `CLOCK_BOOTTIME` minus `CLOCK_MONOTONIC` in ns (how long the machine has been suspended),
/// as user space last measured it. Expiries are checked against the coarse monotonic clock plus
/// this offset: a precise boot-clock read is a fifth of a connect program's time, the coarse
/// clock a field read. An entry so lapses up to one tick late, and after a resume up to one
/// refresh late (user space refreshes the offset every turn of its loop).
#[map]
static BOOT_OFFSET: Array<u64> = Array::with_max_entries(1, 0);

/// `CLOCK_BOOTTIME` in ns, to within a tick: what the socket programs check expiries against
/// (tracing programs may not call the coarse clock's helper).
#[inline(always)]
fn coarse_now() -> u64 {
    let offset = BOOT_OFFSET.get(0).copied().unwrap_or(0);
    // SAFETY: a plain helper call.
    unsafe { bpf_ktime_get_coarse_ns() }.wrapping_add(offset)
}

/// `CLOCK_BOOTTIME` in ns, precisely: what events are stamped with, and what the exec programs
/// check expiries against.
#[inline(always)]
fn precise_now() -> u64 {
    // SAFETY: a plain helper call.
    unsafe { bpf_ktime_get_boot_ns() }
}

#[inline(always)]
fn count(stat: u32) {
    if let Some(slot) = STATS.get_ptr_mut(stat) {
        // SAFETY: a per-CPU slot is only touched by programs running on this CPU.
        unsafe { *slot += 1 };
    }
}

/// The decision of one workload: the entry if present and live, else the default. A permit
/// the daemon stopped renewing lapses; a refusal never does, so a dead daemon cannot open a
/// gate the policy closed.
#[inline(always)]
fn live(entry: Option<&Decision>, default: u8, now: u64) -> Decision {
    if let Some(d) = entry {
        if d.effect != EFFECT_PERMIT || d.expires_ns == 0 || now <= d.expires_ns {
            return *d;
        }
    }
    // No permit, no expiry (zeros LLVM cannot see: see the note on zeros).
    Decision {
        effect: default,
        code: code::NO_MATCHING_RULE,
        _pad: [0; 2],
        rule: u32::MAX,
        permit_id: zero(),
        expires_ns: zero(),
    }
}

/// The combined verdict over every workload the current task belongs to (nested workloads are
/// judged by each policy; the first refusal, from the outermost, decides).
struct Judgement {
    found: bool,
    workload: u64,
    observe: bool,
    decision: Decision,
    /// `CLOCK_BOOTTIME` ns when judged, from the judgement's [`Clock`]: the time a tally
    /// records a repeat at.
    now: u64,
    /// Whether `now` is precise, so an event can be stamped with it.
    precise: bool,
}

/// The clock a judgement checks expiries against.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Clock {
    /// [`coarse_now`]: the socket programs.
    Coarse,
    /// [`precise_now`]: tracing programs, which may not read the coarse clock (an exec is no
    /// hot path anyway).
    Precise,
}

/// Whether the current task is inside any workload (a walk up its cgroups, nothing more).
#[inline(always)]
pub(crate) fn in_a_workload() -> bool {
    for level in 1..=MAX_CGROUP_DEPTH {
        // SAFETY: a plain helper call.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            return false;
        }
        // SAFETY: a lookup; the value is not read.
        if unsafe { WORKLOADS.get(&id) }.is_some() {
            return true;
        }
    }
    false
}

impl Judgement {
    /// The precise time to stamp an event of this judgement with: `now` when it is precise.
    #[inline(always)]
    pub(crate) fn stamp(&self) -> u64 {
        if self.precise {
            self.now
        } else {
            precise_now()
        }
    }

    /// Takes one workload's decision, in order from the outermost: the first refusal stands.
    #[inline(always)]
    fn decide_for(&mut self, workload: u64, w: &Workload, d: Decision) {
        let refused_before = self.found && self.decision.effect != EFFECT_PERMIT;
        if !refused_before {
            self.workload = workload;
            self.observe = w.flags & WORKLOAD_OBSERVE != 0;
            self.decision = d;
        }
        self.found = true;
    }
}

/// Judges the current task at the time `clock` gives for each workload it belongs to, with `decide` giving one
/// workload's decision. Two nested workloads are judged (they cover what bridle makes: a
/// `bridle run` inside a daemon's workload; a workload cannot load programs of its own to nest
/// deeper, and the verifier's work grows with every level); a task inside more is refused.
#[inline(always)]
fn judge(clock: Clock, mut decide: impl FnMut(u64, &Workload, u64) -> Decision) -> Judgement {
    let now = match clock {
        Clock::Coarse => coarse_now(),
        Clock::Precise => precise_now(),
    };
    let mut out = Judgement {
        found: false,
        workload: 0,
        observe: false,
        decision: Decision::default(),
        now,
        precise: clock == Clock::Precise,
    };
    // First the workloads among the task's ancestors (outermost first), then one decision per
    // workload: the verifier walks the decisions (an address's port rules, say) once per
    // workload rather than once per cgroup level, which keeps loading fast. The values found
    // on the walk are kept (a second lookup by id costs as much as the first).
    let mut outer: Option<(u64, &Workload)> = None;
    let mut inner: Option<(u64, &Workload)> = None;
    let mut too_deep = false;
    for level in 1..=MAX_CGROUP_DEPTH {
        // SAFETY: a plain helper call.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            break;
        }
        // SAFETY: values are written whole by user space and never mutated here.
        let Some(w) = (unsafe { WORKLOADS.get(&id) }) else {
            continue;
        };
        if outer.is_none() {
            outer = Some((id, w));
        } else if inner.is_none() {
            inner = Some((id, w));
        } else {
            too_deep = true;
            break;
        }
    }
    // Outermost first (written out, not iterated: the verifier must see each value checked).
    if let Some((id, w)) = outer {
        out.decide_for(id, w, decide(w.slot, w, now));
    }
    if let Some((id, w)) = inner {
        out.decide_for(id, w, decide(w.slot, w, now));
    }
    if too_deep {
        // Deeper nesting than the programs judge: refused, never let through unjudged.
        out.decision = Decision {
            effect: EFFECT_REFUSE,
            code: code::NO_MATCHING_RULE,
            rule: u32::MAX,
            ..Decision::default()
        };
        out.observe = false;
    }
    out
}

// A note on zeros: LLVM merges stores of zeros (and copies of values it knows are zero) into a
// memset, and for this target it then calls `memset`, a byte-at-a-time loop in
// compiler_builtins, instead of expanding it into a few stores: 16 zero bytes cost more than
// a map lookup. On the paths every connect takes, zeros therefore come from `zero()`, a value
// LLVM cannot see, and buffers a helper fills are left uninitialised (`current_comm`).

/// Zero, read where the compiler cannot know it (see the note on zeros).
static ZERO: u64 = 0;

/// Zero as the compiler cannot fold it into a memset: one load.
#[inline(always)]
fn zero() -> u64 {
    // SAFETY: a read of an initialised static.
    unsafe { core::ptr::read_volatile(&ZERO) }
}

/// The current task's comm, read straight into place (aya's wrapper zero-fills a buffer first;
/// see the note on zeros). Events, sent once per distinct decision, use this helper; the
/// tally key, built on every permitted connect, reads the comm in place ([`current_identity`]),
/// which is cheaper to run but costs the verifier a walk of task_struct in every program and
/// state that does it.
#[inline(always)]
fn current_comm() -> [u8; COMM_LEN] {
    let mut comm = core::mem::MaybeUninit::<[u8; COMM_LEN]>::uninit();
    // SAFETY: the helper writes all COMM_LEN bytes: the comm NUL-padded, or zeros on failure.
    unsafe {
        gen::bpf_get_current_comm(comm.as_mut_ptr().cast(), COMM_LEN as u32);
        comm.assume_init()
    }
}

/// Fills the fields every event has from the judgement and the current task; `port` and
/// `addr` are the destination of a socket decision (zero for an exec).
///
/// # Safety
/// `ev` points at a reserved, exclusively owned ring-buffer record at least an `EventHead`
/// long (a ring-buffer record is 8-byte aligned).
#[inline(always)]
unsafe fn fill_head(
    ev: *mut EventHead,
    j: &Judgement,
    kind: u8,
    flags: u8,
    port: u16,
    addr: Option<&[u8; 16]>,
) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the caller's contract; every field is written before submit.
    unsafe {
        (*ev).kind = kind;
        (*ev).effect = j.decision.effect;
        (*ev).code = j.decision.code;
        (*ev).flags = flags;
        (*ev).rule = j.decision.rule;
        (*ev).pid = pid_tgid as u32;
        (*ev).tgid = (pid_tgid >> 32) as u32;
        (*ev).uid = bpf_get_current_uid_gid() as u32;
        (*ev).port = port;
        (*ev)._pad = 0;
        (*ev).workload = j.workload;
        (*ev).cgroup = bpf_get_current_cgroup_id();
        (*ev).time_ns = j.stamp();
        (*ev).permit_id = j.decision.permit_id;
        let zero = zero();
        (*ev).dev = zero;
        (*ev).ino = zero;
        (*ev).addr = match addr {
            Some(addr) => *addr,
            None => u128::from(zero).to_ne_bytes(),
        };
        (*ev).comm = current_comm();
    }
}

/// The submit flags of an event: refusals wake the reader at once; permits wait for its timer
/// unless the buffer is half full.
#[inline(always)]
fn wake_flags(j: &Judgement) -> u64 {
    if j.decision.effect == EFFECT_PERMIT && EVENTS.query(BPF_RB_AVAIL_DATA as u64) < EVENTS_WAKE_AT
    {
        BPF_RB_NO_WAKEUP as u64
    } else {
        BPF_RB_FORCE_WAKEUP as u64
    }
}

/// Queues a whole event (the exec path included); a full buffer counts it as lost.
#[inline(always)]
fn emit(j: &Judgement, kind: u8, flags: u8, fill: impl FnOnce(&mut Event)) {
    let Some(mut slot) = EVENTS.reserve::<Event>(0) else {
        count(STAT_EVENTS_LOST);
        return;
    };
    let ev = slot.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned slot of Event size.
    unsafe {
        fill_head(&mut (*ev).head, j, kind, flags, 0, None);
        (*ev).path[0] = 0;
        fill(&mut *ev);
    }
    slot.submit(wake_flags(j));
}

/// Queues a socket decision as an event head (a quarter of an exec event's size). Returns
/// whether it was queued; the caller accounts for one that was not.
#[inline(always)]
fn emit_head(j: &Judgement, kind: u8, flags: u8, port: u16, addr: &[u8; 16]) -> bool {
    let Some(mut slot) = EVENTS.reserve::<EventHead>(0) else {
        return false;
    };
    // SAFETY: `ev` points at a reserved, exclusively owned slot of EventHead size.
    unsafe { fill_head(slot.as_mut_ptr(), j, kind, flags, port, Some(addr)) };
    slot.submit(wake_flags(j));
    true
}

/// Reads the file `bprm` executes and judges it for every workload of the current task. A
/// file that cannot be read is refused (fail closed); a memfd or deleted file that no entry
/// names meets the workload's `allow_anonymous_exec` switch.
///
/// A file is judged by its identity (`EXEC_RULES`: hard links and bind mounts of a refused
/// file) and by its place (`EXEC_PLACES`: the path, whatever inode is there now). A live
/// refusal from either wins, then a live permit from either, then the default.
#[inline(always)]
pub(crate) fn judge_exec(bprm: *const u8, file: &mut ExecFile) -> Judgement {
    // Outsiders pay one cgroup walk and nothing else.
    if !in_a_workload() {
        return Judgement {
            found: false,
            workload: 0,
            observe: false,
            decision: Decision::default(),
            now: 0,
            precise: false,
        };
    }
    // SAFETY: `bprm` comes from the hook; the accessor only probe-reads it.
    let unreadable = unsafe { bridle_read_exec_file(bprm, file) } != 0;
    let mut place = ExecPlaceKey {
        slot: 0,
        place: ExecPlace::zeroed(),
    };
    // A place that cannot be read leaves the identity alone to decide.
    // SAFETY: as above; `place.place` is zeroed, as the accessor expects.
    let have_place = !unreadable && unsafe { bridle_read_exec_place(bprm, &mut place.place) } == 0;
    let (dev, ino, anonymous) = (file.dev, file.ino, file.nlink == 0);
    // One judge for every case (each instance is code the verifier walks again).
    judge(Clock::Precise, |slot, w, now| {
        if unreadable {
            // Fail closed: a file that cannot be read is refused by every workload.
            return Decision {
                effect: EFFECT_REFUSE,
                code: code::NO_MATCHING_RULE,
                rule: u32::MAX,
                ..Decision::default()
            };
        }
        let key = ExecKey { slot, dev, ino };
        // SAFETY: values are written whole by user space and never mutated here.
        let entry = unsafe { EXEC_RULES.get(&key) };
        if anonymous && entry.is_none() {
            return Decision {
                effect: if w.flags & WORKLOAD_ANON_EXEC != 0 {
                    EFFECT_PERMIT
                } else {
                    EFFECT_REFUSE
                },
                code: code::ANONYMOUS_EXEC,
                rule: u32::MAX,
                ..Decision::default()
            };
        }
        let by_file = live(entry, EFFECT_NONE, now);
        if by_file.effect == EFFECT_REFUSE {
            return by_file;
        }
        let mut by_place = live(None, EFFECT_NONE, now);
        if have_place {
            place.slot = slot;
            // SAFETY: values are written whole by user space and never mutated here.
            by_place = live(unsafe { EXEC_PLACES.get(&place) }, EFFECT_NONE, now);
        }
        if by_place.effect == EFFECT_REFUSE || by_file.effect == EFFECT_NONE {
            if by_place.effect == EFFECT_NONE {
                return live(None, w.exec_default, now);
            }
            return by_place;
        }
        by_file
    })
}

/// Reports an exec decision with the file's identity and the path given to execve.
#[inline(always)]
pub(crate) fn emit_exec(j: &Judgement, file: &ExecFile, flags: u8) {
    emit(j, EVENT_EXEC, flags, |ev| {
        ev.dev = file.dev;
        ev.ino = file.ino;
        if file.filename != 0 {
            // SAFETY: a probe read of a kernel string into the event's own buffer.
            let _ = unsafe {
                bpf_probe_read_kernel_str_bytes(file.filename as *const u8, &mut ev.path)
            };
        }
    });
}

/// Kill-on-exec tier: judges every exec of a confined task after the point of no return and
/// sends SIGKILL for a refusal, so the new image never runs an instruction.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn exec_guard(ctx: RawTracePointContext) -> i32 {
    // The tracepoint's third argument is the `struct linux_binprm *`.
    let bprm: *const u8 = ctx.arg(2);
    let mut file = ExecFile::default();
    let j = judge_exec(bprm, &mut file);
    if !j.found {
        return 0;
    }
    count(STAT_JUDGED);
    let mut flags = 0;
    if j.decision.effect != EFFECT_PERMIT {
        count(STAT_REFUSED);
        if j.observe {
            flags = EVENT_OBSERVED;
        } else {
            // SAFETY: a plain helper call; it signals the current (exec'ing) process.
            unsafe { bpf_send_signal(SIGKILL) };
            flags = EVENT_KILLED;
        }
    }
    emit_exec(&j, &file, flags);
    0
}

#[inline(always)]
fn port_decision(rules: Option<&PortRules>, port: u16, default: u8, now: u64) -> Decision {
    if let Some(rules) = rules {
        for i in 0..PORT_RULES {
            if i as u32 >= rules.len {
                break;
            }
            let r = &rules.rules[i];
            if r.lo <= port && port <= r.hi {
                return live(Some(&r.decision), default, now);
            }
        }
    }
    live(None, default, now)
}

#[inline(always)]
fn finish_connect(j: Judgement, kind: u8, port: u16, addr: [u8; 16]) -> i32 {
    if !j.found {
        // The program only runs for sockets born in a confined cgroup. A task outside every
        // workload using such a socket cannot be judged by any policy: fail closed.
        return SOCK_DENY;
    }
    count(STAT_JUDGED);
    let refused = j.decision.effect != EFFECT_PERMIT;
    let mut flags = 0;
    if refused {
        count(STAT_REFUSED);
        if j.observe {
            flags = EVENT_OBSERVED;
        }
        if !emit_head(&j, kind, flags, port, &addr) {
            count(STAT_EVENTS_LOST);
        }
    } else {
        // Refusals (and observe mode's would-be refusals) stay individual events; a permit is
        // counted in the tally when its key has been seen.
        tally::permit(&j, kind, port, &addr);
    }
    if refused && !j.observe {
        SOCK_DENY
    } else {
        SOCK_ALLOW
    }
}

/// Judges IPv4 connects (TCP and connected UDP) of sockets born in a confined cgroup.
#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    sock::inet4(&ctx, EVENT_CONNECT4)
}

/// Judges IPv6 connects; IPv4-mapped destinations meet the IPv4 rules the engine mapped in.
#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    sock::inet6(&ctx, EVENT_CONNECT6)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
