//! The exec tiers above kill-on-exec.
//!
//! - `exec_lsm`: the BPF LSM tier. `bprm_check_security` runs once per binary-format round
//!   of an exec, before the point of no return: for a script it sees the script and then its
//!   interpreter, for a direct `ld.so prog` exec it sees the loader (a dynamic binary's loader
//!   is opened by the ELF loader without another round, so it is not judged there). A refusal
//!   makes execve fail with EPERM.
//! - `task_fork` / `task_attach` / `task_exit`: the task table the fanotify tier consults. A
//!   permission event names a pid; looking the pid up here costs one map lookup, so a process
//!   outside every workload is answered without reading /proc. Forks are judged by the cgroup
//!   the child lands in (which `CLONE_INTO_CGROUP` chooses), and a process moved into or out
//!   of a workload (a write to `cgroup.procs`) is recorded when it moves.

use aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP;
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{lsm, map, raw_tracepoint},
    maps::LruHashMap,
    programs::{LsmContext, RawTracePointContext},
};
use bridle_common::{
    CgroupCreated, TaskWorkloads, EFFECT_PERMIT, EVENT_CGROUP_CREATED, EVENT_OBSERVED,
    MAX_CGROUP_DEPTH, STAT_EVENTS_LOST, STAT_JUDGED, STAT_REFUSED, TASK_NESTING,
};

use crate::{count, emit_exec, judge_exec, ExecFile, EVENTS, WORKLOADS};

const EPERM: i32 = 1;

/// Tasks of confined workloads: thread-group id -> the workloads it belongs to. Written when
/// a process is forked into a workload or moved into one, erased when it leaves every workload
/// or its group leader exits. An LRU map: an evicted entry only sends that task's execs to the
/// kill-on-exec backstop, it never opens anything.
#[map]
static TASKS: LruHashMap<u32, TaskWorkloads> = LruHashMap::with_max_entries(1 << 16, 0);

unsafe extern "C" {
    /// Reads `task->tgid` (CO-RE, see core.c); 0 when the read faults.
    fn bridle_task_tgid(task: *const u8) -> u32;
    /// Fills `ids` with the cgroup ids of `cgrp` and its ancestors, nearest first; returns how
    /// many (CO-RE, see core.c).
    fn bridle_cgroup_chain(cgrp: *const u8, ids: *mut u64) -> u32;
    /// The same for the cgroup v2 cgroup `task` is in.
    fn bridle_task_cgroup_chain(task: *const u8, ids: *mut u64) -> u32;
    /// Whether `cgrp` is a cgroup v2 cgroup (1) or a v1 controller's (0).
    fn bridle_cgroup_is_v2(cgrp: *const u8) -> i32;
}

/// The workloads among a chain of cgroup ids (nearest first, `n` of them), outermost first.
#[inline(always)]
fn workloads_of(chain: &[u64; MAX_CGROUP_DEPTH as usize], n: u32) -> TaskWorkloads {
    // Collected nearest first with constant indices only (the verifier refuses a stack
    // pointer minus a variable), then turned around.
    let mut near = [0u64; TASK_NESTING];
    let mut found = 0usize;
    for (i, id) in chain.iter().enumerate() {
        if i as u32 >= n || found >= TASK_NESTING {
            break;
        }
        // SAFETY: a lookup; the value is not read.
        if unsafe { WORKLOADS.get(id) }.is_some() {
            near[found] = *id;
            found += 1;
        }
    }
    let ids = match found {
        0 => [0; TASK_NESTING],
        1 => [near[0], 0, 0, 0],
        2 => [near[1], near[0], 0, 0],
        3 => [near[2], near[1], near[0], 0],
        _ => [near[3], near[2], near[1], near[0]],
    };
    TaskWorkloads { ids }
}

/// Records `tgid` as belonging to `workloads`, or forgets it when that is none.
#[inline(always)]
fn record_task(tgid: u32, workloads: &TaskWorkloads) {
    if tgid == 0 {
        return;
    }
    if workloads.ids[0] == 0 {
        let _ = TASKS.remove(&tgid);
    } else {
        let _ = TASKS.insert(&tgid, workloads, 0);
    }
}

/// BPF LSM tier: judges each file an exec runs (binary, script, interpreter) and refuses
/// with EPERM before the exec can no longer fail.
#[lsm(hook = "bprm_check_security")]
pub fn exec_lsm(ctx: LsmContext) -> i32 {
    // bprm_check_security(struct linux_binprm *bprm); the last argument is the verdict of
    // the BPF LSM programs before this one: never overrule a refusal.
    let bprm: *const u8 = ctx.arg(0);
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let mut file = ExecFile::default();
    let j = judge_exec(bprm, &mut file);
    if !j.found {
        return 0;
    }
    count(STAT_JUDGED);
    let refused = j.decision.effect != EFFECT_PERMIT;
    let mut flags = 0;
    if refused {
        count(STAT_REFUSED);
        if j.observe {
            flags = EVENT_OBSERVED;
        }
    }
    emit_exec(&j, &file, flags);
    if refused && !j.observe {
        -EPERM
    } else {
        0
    }
}

/// Records a new process that lands in a workload (raw tracepoint `sched_process_fork`, which
/// runs in the parent once the child has its cgroup: the parent's, or the one
/// `CLONE_INTO_CGROUP` named). New threads are not processes and are skipped.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn task_fork(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *parent, struct task_struct *child)
    let parent: *const u8 = ctx.arg(0);
    let child: *const u8 = ctx.arg(1);
    // SAFETY: both come from the tracepoint; the accessors only probe-read them.
    let (parent_tgid, tgid) = unsafe { (bridle_task_tgid(parent), bridle_task_tgid(child)) };
    if tgid == parent_tgid {
        return 0;
    }
    let mut chain = [0u64; MAX_CGROUP_DEPTH as usize];
    // SAFETY: as above; `chain` has room for the whole walk.
    let n = unsafe { bridle_task_cgroup_chain(child, chain.as_mut_ptr()) };
    let workloads = workloads_of(&chain, n);
    if workloads.ids[0] != 0 {
        record_task(tgid, &workloads);
    }
    0
}

/// Records a process moved between cgroups (raw tracepoint `cgroup_attach_task`): into a
/// workload, out of one, or from one to another.
#[raw_tracepoint(tracepoint = "cgroup_attach_task")]
pub fn task_attach(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct cgroup *dst_cgrp, const char *path, struct task_struct *task,
    //          bool threadgroup)
    let dst: *const u8 = ctx.arg(0);
    let task: *const u8 = ctx.arg(2);
    // A move within a v1 controller's hierarchy leaves the v2 cgroup as it was.
    // SAFETY: `dst` comes from the tracepoint; the accessor only probe-reads it.
    if unsafe { bridle_cgroup_is_v2(dst) } == 0 {
        return 0;
    }
    let mut chain = [0u64; MAX_CGROUP_DEPTH as usize];
    // SAFETY: both come from the tracepoint; the accessors only probe-read them.
    let (n, tgid) = unsafe {
        (
            bridle_cgroup_chain(dst, chain.as_mut_ptr()),
            bridle_task_tgid(task),
        )
    };
    if n == 0 {
        return 0;
    }
    record_task(tgid, &workloads_of(&chain, n));
    0
}

/// Forgets a process when its group leader exits, so a recycled pid is never taken for a
/// confined task.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn task_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    if pid == tgid {
        let _ = TASKS.remove(&tgid);
    }
    0
}

/// Tells the daemon a cgroup v2 cgroup was created (raw tracepoint `cgroup_mkdir`), waking it,
/// so a cgroup a `[[confine]]` entry matches is confined within milliseconds rather than at
/// the next scan.
#[raw_tracepoint(tracepoint = "cgroup_mkdir")]
pub fn cgroup_created(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct cgroup *cgrp, const char *path)
    let cgrp: *const u8 = ctx.arg(0);
    // SAFETY: `cgrp` comes from the tracepoint; the accessors only probe-read it.
    if unsafe { bridle_cgroup_is_v2(cgrp) } == 0 {
        return 0;
    }
    let mut chain = [0u64; MAX_CGROUP_DEPTH as usize];
    // SAFETY: as above; `chain` has room for the whole walk.
    if unsafe { bridle_cgroup_chain(cgrp, chain.as_mut_ptr()) } == 0 {
        return 0;
    }
    let record = CgroupCreated {
        kind: EVENT_CGROUP_CREATED,
        _pad: [0; 7],
        cgroup: chain[0],
    };
    if EVENTS
        .output::<CgroupCreated>(&record, BPF_RB_FORCE_WAKEUP as u64)
        .is_err()
    {
        count(STAT_EVENTS_LOST);
    }
    0
}
