//! The exec tiers above kill-on-exec.
//!
//! - `exec_lsm`: the BPF LSM tier. `bprm_check_security` runs once per binary-format round
//!   of an exec, before the point of no return: for a script it sees the script and then its
//!   interpreter, for a direct `ld.so prog` exec it sees the loader (a dynamic binary's loader
//!   is opened by the ELF loader without another round, so it is not judged there). A refusal
//!   makes execve fail with EPERM.
//! - `task_fork` / `task_exit`: the task table the fanotify tier consults. A permission event
//!   names a pid; looking the pid up here costs one map lookup, so a process outside every
//!   workload is answered without reading /proc.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{lsm, map, raw_tracepoint},
    maps::LruHashMap,
    programs::{LsmContext, RawTracePointContext},
};
use bridle_common::{Decision, EFFECT_PERMIT, EVENT_OBSERVED, STAT_JUDGED, STAT_REFUSED};

use crate::{count, emit_exec, judge, judge_exec, ExecFile};

const EPERM: i32 = 1;

/// Tasks of confined workloads: thread-group id -> the workload's cgroup id. Written when a
/// confined task forks (and by `bridle run` for its first process, before it execs), erased
/// when the group leader exits. An LRU map: an evicted entry only sends that task's execs to
/// the kill-on-exec backstop, it never opens anything.
#[map]
static TASKS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(1 << 16, 0);

unsafe extern "C" {
    /// Reads `task->tgid` (CO-RE, see core.c); 0 when the read faults.
    fn bridle_task_tgid(task: *const u8) -> u32;
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

/// Records the child of a confined task (raw tracepoint `sched_process_fork`, which runs in
/// the parent): the child is in the parent's cgroup until something moves it.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn task_fork(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *parent, struct task_struct *child)
    let child: *const u8 = ctx.arg(1);
    // Only confined tasks pay for more than the cgroup walk.
    let j = judge(|_, _, _| Decision::default());
    if !j.found {
        return 0;
    }
    // SAFETY: `child` comes from the tracepoint; the accessor only probe-reads it.
    let tgid = unsafe { bridle_task_tgid(child) };
    if tgid != 0 {
        let _ = TASKS.insert(&tgid, &j.workload, 0);
    }
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
