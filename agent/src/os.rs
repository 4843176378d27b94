//! Small wrappers over the process-level system calls the long-running commands share.

use anyhow::{Context, Result};
use std::{os::fd::RawFd, time::Duration};

/// Waits until any of `fds` is readable or `timeout` passes; a signal ends the wait early,
/// which is what the callers want (they check their signal flag next).
pub fn wait_readable_any(fds: &[RawFd], timeout: Duration) {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `pfds` holds `pfds.len()` valid pollfds for the duration of the call.
    unsafe {
        libc::poll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            timeout.as_millis() as libc::c_int,
        )
    };
}

/// Routes SIGINT, SIGTERM and SIGHUP to `handler`, which must only store into an atomic.
pub fn on_stop_signals(handler: extern "C" fn(libc::c_int)) -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(handler),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the callers' handlers only store into an atomic (async-signal-safe).
        unsafe { sigaction(signal, &action) }
            .with_context(|| format!("installing a {signal} handler"))?;
    }
    Ok(())
}

/// The comm and real uid of a live process (best effort: it may be gone already).
pub fn proc_identity(pid: i32) -> (String, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    let comm = field("Name:").unwrap_or_default();
    let uid = field("Uid:")
        .and_then(|v| v.split_whitespace().next().and_then(|u| u.parse().ok()))
        .unwrap_or(u32::MAX);
    (comm, uid)
}

/// Hands the heap's free pages back to the kernel. Installing a large policy allocates and
/// frees tens of megabytes (the parsed file, the old policy's state, the permit batch signed on
/// another thread), and glibc keeps what was freed in its arenas: without this the daemon's
/// resident size stays at the peak of its largest install.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns the allocator's own free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
