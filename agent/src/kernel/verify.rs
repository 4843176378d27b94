//! Loading several programs at once. The kernel's verifier checks each program for tens of
//! milliseconds, which is most of a daemon's start; the checks of different programs run side
//! by side on different CPUs, so the programs are loaded from two threads.

use anyhow::{anyhow, Context, Result};
use aya::programs::Program;
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Mutex, PoisonError,
};

/// One program to load: its name, what to call it in an error, and the program.
pub(super) type Load<'a> = (&'a str, &'static str, &'a mut Program);

/// Picks `names` out of `programs` (what `Ebpf::programs_mut` gives), in the order of `names`.
pub(super) fn named<'a>(
    programs: impl Iterator<Item = (&'a str, &'a mut Program)>,
    names: &[(&'a str, &'static str)],
) -> Result<Vec<Load<'a>>> {
    let mut found: Vec<Option<Load<'a>>> = names.iter().map(|_| None).collect();
    for (name, program) in programs {
        if let Some(at) = names.iter().position(|(n, _)| *n == name) {
            found[at] = Some((name, names[at].1, program));
        }
    }
    found
        .into_iter()
        .zip(names)
        .map(|(load, (name, _))| {
            load.ok_or_else(|| anyhow!("the eBPF object has no program {name}"))
        })
        .collect()
}

/// Loads `programs` on two threads, each taking the next program of the list when it is done
/// with one (list the costliest first). Stops at the first refusal and returns it.
pub(super) fn load_side_by_side(programs: Vec<Load<'_>>) -> Result<()> {
    let queue = Mutex::new(programs.into_iter());
    let failed = AtomicBool::new(false);
    let work = || -> Result<()> {
        while !failed.load(Ordering::Relaxed) {
            let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
            let Some((name, what, program)) = next else {
                return Ok(());
            };
            if let Err(err) = load(name, what, program) {
                failed.store(true, Ordering::Relaxed);
                return Err(err);
            }
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        let other = scope.spawn(work);
        let here = work();
        let there = other
            .join()
            .unwrap_or_else(|_| Err(anyhow!("loading the eBPF programs panicked")));
        here.and(there)
    })
}

/// Loads one program of a type that loads without arguments.
fn load(name: &str, what: &str, program: &mut Program) -> Result<()> {
    let loaded = match program {
        Program::CgroupSockAddr(p) => p.load(),
        Program::CgroupSock(p) => p.load(),
        Program::RawTracePoint(p) => p.load(),
        _ => return Err(anyhow!("program {name} is not of a type loaded here")),
    };
    loaded.with_context(|| format!("loading {what} ({name}): the kernel refused it"))
}
