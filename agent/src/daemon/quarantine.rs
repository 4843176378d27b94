//! Carrying out the engine's invalidate verdict on a workload, and lifting it.
//!
//! - `freeze` writes `cgroup.freeze`: every process stops where it is, nothing is lost, and
//!   lifting thaws them.
//! - `kill` writes `cgroup.kill`: every process dies; lifting only lets new ones act again.
//! - `refuse-all` points the workload at an empty policy slot whose defaults refuse: the
//!   programs then refuse every exec, connect, datagram and raw socket (a kernel entry like
//!   any other, written in one map update), while the processes keep running.

use anyhow::{Context, Result};
use bridle_common::{code, Workload, EFFECT_REFUSE, WORKLOAD_ANON_EXEC, WORKLOAD_OBSERVE};
use bridle_engine::QuarantineAction;
use std::{fs, path::Path};

/// Starts `action` on the cgroup at `path`. `RefuseAll` is the caller's (a kernel entry, see
/// [`refuse_all`]); this does the cgroup side of the others.
pub fn start(action: QuarantineAction, path: &Path) -> Result<()> {
    match action {
        QuarantineAction::Freeze => write(path, "cgroup.freeze", "1"),
        QuarantineAction::Kill => write(path, "cgroup.kill", "1"),
        QuarantineAction::RefuseAll => Ok(()),
    }
}

/// Undoes the cgroup side of `action` (a killed workload has nothing to undo).
pub fn lift(action: QuarantineAction, path: &Path) -> Result<()> {
    match action {
        QuarantineAction::Freeze => write(path, "cgroup.freeze", "0"),
        QuarantineAction::Kill | QuarantineAction::RefuseAll => Ok(()),
    }
}

/// The workload entry of a refuse-all quarantine under the empty policy slot `slot`: every
/// default refuses, nothing is observed only, no anonymous exec.
pub fn refuse_all(current: Workload, slot: u64) -> Workload {
    Workload {
        flags: current.flags & !(WORKLOAD_OBSERVE | WORKLOAD_ANON_EXEC),
        exec_default: EFFECT_REFUSE,
        connect_default: EFFECT_REFUSE,
        raw_effect: EFFECT_REFUSE,
        raw_code: code::NO_MATCHING_RULE,
        raw_rule: u32::MAX,
        _pad: 0,
        slot,
    }
}

fn write(cgroup: &Path, file: &str, value: &str) -> Result<()> {
    let path = cgroup.join(file);
    fs::write(&path, value).with_context(|| format!("writing {value} to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridle_common::EFFECT_PERMIT;

    #[test]
    fn refuse_all_refuses_every_default_and_drops_observe() {
        let open = Workload {
            flags: WORKLOAD_OBSERVE | WORKLOAD_ANON_EXEC,
            exec_default: EFFECT_PERMIT,
            connect_default: EFFECT_PERMIT,
            raw_effect: EFFECT_PERMIT,
            slot: 1,
            ..Workload::default()
        };
        let q = refuse_all(open, 2);
        assert_eq!(q.flags, 0);
        assert_eq!(
            (q.exec_default, q.connect_default, q.raw_effect),
            (EFFECT_REFUSE, EFFECT_REFUSE, EFFECT_REFUSE)
        );
        assert_eq!(q.slot, 2);
    }
}
