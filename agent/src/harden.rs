//! What a workload started by `bridle run` loses before its command runs, so that even as
//! uid 0 it cannot undo its own confinement.
//!
//! Without a loadable BPF LSM the kernel offers no hook to refuse these operations one by one,
//! so the workload is started without the means to attempt them:
//!
//! - **Its own cgroup namespace**, entered after it joined the workload's cgroup: that cgroup
//!   is its root, and the kernel refuses to migrate a process to a cgroup outside the
//!   namespace's root, whatever the writer's privileges.
//! - **Its own mount namespace** (a slave of the host's, so later host mounts still appear),
//!   with bridle's files bound read-only: the policy file, bridle's state directory (keys and
//!   audit trail), `/etc/bridle` and bpffs (the pins).
//! - **A reduced capability bounding set**: without `CAP_SYS_ADMIN` and `CAP_BPF` no bpf(2)
//!   call succeeds (the kernel's `unprivileged_bpf_disabled`), so programs cannot be detached
//!   nor maps changed; nor can the mounts above be undone, nor namespaces re-entered. Without
//!   `CAP_SYS_PTRACE` bridle (which marks itself non-dumpable) cannot be traced or its memory
//!   read. The rest of the list removes the usual ways around all this: raw devices and
//!   device nodes, kernel modules, file handles, MAC policy.
//! - **`no_new_privs`**, so no set-uid or file-capability binary gives any of it back.
//!
//! Every step runs between fork and exec, so it is prepared before the fork and makes only
//! async-signal-safe system calls.

use crate::fanotify::mounts::MountMarker;
use std::{ffi::CString, io, os::unix::ffi::OsStrExt, path::Path};

/// Capabilities a workload never keeps (numbers from `linux/capability.h`).
const DROPPED: &[u32] = &[
    2,  // CAP_DAC_READ_SEARCH: open_by_handle_at walks around mount restrictions
    12, // CAP_NET_ADMIN
    16, // CAP_SYS_MODULE
    17, // CAP_SYS_RAWIO
    19, // CAP_SYS_PTRACE
    21, // CAP_SYS_ADMIN
    22, // CAP_SYS_BOOT
    27, // CAP_MKNOD: a device node of the disk would bypass read-only mounts
    30, // CAP_AUDIT_CONTROL
    32, // CAP_MAC_OVERRIDE
    33, // CAP_MAC_ADMIN
    34, // CAP_SYSLOG
    38, // CAP_PERFMON
    39, // CAP_BPF
    40, // CAP_CHECKPOINT_RESTORE
];

/// `CAP_NET_RAW`, dropped too when the policy permits no raw sockets.
pub const CAP_NET_RAW: u32 = 13;

const PR_CAP_AMBIENT: libc::c_int = 47;
const PR_CAP_AMBIENT_LOWER: libc::c_ulong = 3;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The hardening of one workload, prepared before the fork.
#[derive(Debug)]
pub struct Hardening {
    read_only: Vec<CString>,
    cgroup_root: CString,
    drop_raw: bool,
    exec_marks: Option<MountMarker>,
}

impl Hardening {
    /// Hardening that binds each existing path of `read_only` read-only, mounts the
    /// workload's own cgroup2 view at `cgroup_root` (where the host's cgroup2 is mounted), and
    /// also drops `CAP_NET_RAW` when `drop_raw`.
    pub fn new<'a>(
        read_only: impl IntoIterator<Item = &'a Path>,
        cgroup_root: &Path,
        drop_raw: bool,
    ) -> io::Result<Hardening> {
        let read_only = read_only
            .into_iter()
            .filter(|p| p.exists())
            .filter_map(|p| CString::new(p.as_os_str().as_bytes()).ok())
            .collect();
        let cgroup_root = CString::new(cgroup_root.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(Hardening {
            read_only,
            cgroup_root,
            drop_raw,
            exec_marks: None,
        })
    }

    /// Has the workload's first process mark its mounts for the fanotify exec tier once they
    /// are final; failing to mark the root mount fails the start.
    pub fn mark_exec_mounts(&mut self, marker: MountMarker) {
        self.exec_marks = Some(marker);
    }

    /// Applies the hardening. Call it in the child between fork and exec, after the child
    /// joined its cgroup (the new cgroup namespace is rooted there).
    ///
    /// It returns (and the caller goes on to exec the command) in a grandchild: the calling
    /// process stays outside the new PID namespace, waits and exits with the command's exact
    /// status; its child is the namespace's init, which mounts the workload's own /proc and
    /// cgroup2, reaps orphans and reports the command's status; the command runs as that
    /// init's child, so it keeps ordinary signal semantics (an init ignores signals it has no
    /// handler for).
    ///
    /// # Safety
    /// Only async-signal-safe calls are made and nothing is allocated, so this is sound in a
    /// child forked from a multi-threaded process; it changes the calling process's
    /// namespaces, mounts and capabilities for good, and the two processes it leaves behind
    /// never return from it.
    pub unsafe fn apply(&mut self) -> io::Result<()> {
        check(libc::unshare(
            libc::CLONE_NEWCGROUP | libc::CLONE_NEWNS | libc::CLONE_NEWPID,
        ))?;
        // Host mounts keep propagating in; nothing propagates back out.
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ))?;
        for path in &self.read_only {
            check(libc::mount(
                path.as_ptr(),
                path.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                std::ptr::null(),
                path.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                std::ptr::null(),
            ))?;
        }
        // Every mount the command can exec from exists now (the /proc and cgroup2 mounts
        // below are noexec).
        if let Some(marker) = &mut self.exec_marks {
            marker.mark_all()?;
        }
        // The init reports the command's wait status here.
        let mut status_pipe = [0 as libc::c_int; 2];
        check(libc::pipe2(status_pipe.as_mut_ptr(), libc::O_CLOEXEC))?;
        let [read_end, write_end] = status_pipe;
        let init = check_pid(libc::fork())?;
        if init > 0 {
            outer_wait(init, read_end)
        }
        // The namespace's init (pid 1).
        libc::close(read_end);
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        check(libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0))?;
        let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        // Its own /proc shows only the workload's processes: no /proc/PID/root of a host
        // process leads back to the host's mounts.
        check(libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            nosuid,
            std::ptr::null(),
        ))?;
        // Its own cgroup2 mount is rooted at the workload's cgroup: no other cgroup has a
        // path, so none can be written to. The host's mount goes first (the kernel refuses a
        // superblock mounted on its own root).
        check(libc::umount2(self.cgroup_root.as_ptr(), libc::MNT_DETACH))?;
        check(libc::mount(
            c"cgroup2".as_ptr(),
            self.cgroup_root.as_ptr(),
            c"cgroup2".as_ptr(),
            nosuid,
            std::ptr::null(),
        ))?;
        let command = check_pid(libc::fork())?;
        if command > 0 {
            init_wait(command, write_end)
        }
        // The command.
        libc::close(write_end);
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        let raw = self.drop_raw.then_some(&CAP_NET_RAW);
        drop_capabilities(DROPPED.iter().chain(raw))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        Ok(())
    }
}

/// Removes `caps` from the calling process for good: from its bounding set (so no exec,
/// setuid or file capability brings them back) and its ambient, inheritable, permitted and
/// effective sets.
unsafe fn drop_capabilities<'a>(caps: impl Iterator<Item = &'a u32>) -> io::Result<()> {
    let mut dropped: u64 = 0;
    for &cap in caps {
        // EINVAL: a capability this kernel does not know, which nobody can hold.
        if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
            && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
        {
            return Err(io::Error::last_os_error());
        }
        // Fails only on kernels without ambient capabilities, which have none to lower.
        let _ = libc::prctl(
            PR_CAP_AMBIENT,
            PR_CAP_AMBIENT_LOWER,
            cap as libc::c_ulong,
            0,
            0,
        );
        dropped |= 1u64 << cap;
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    check(libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) as libc::c_int)?;
    for (i, word) in data.iter_mut().enumerate() {
        let keep = !((dropped >> (32 * i)) as u32);
        word.effective &= keep;
        word.permitted &= keep;
        word.inheritable &= keep;
    }
    check(libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) as libc::c_int)
}

/// Every capability number the kernel may know.
const ALL_CAPS: [u32; 64] = {
    let mut all = [0u32; 64];
    let mut i = 0;
    while i < 64 {
        all[i] = i as u32;
        i += 1;
    }
    all
};

/// Closes every descriptor but the standard three and `keep`.
unsafe fn close_all_but(keep: libc::c_int) {
    if keep > 3 {
        libc::syscall(libc::SYS_close_range, 3u32, (keep - 1) as u32, 0u32);
    }
    libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0u32);
}

/// The process outside the namespace: waits for the init and ends as the command ended.
unsafe fn outer_wait(init: libc::pid_t, read_end: libc::c_int) -> ! {
    // Keeps nothing open that someone waits on (the spawner's exec-error pipe above all).
    close_all_but(read_end);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        libc::signal(sig, libc::SIG_IGN);
    }
    libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    let _ = drop_capabilities(ALL_CAPS.iter());
    let mut reported: libc::c_int = 0;
    let got = loop {
        let n = libc::read(read_end, (&mut reported as *mut libc::c_int).cast(), 4);
        if n < 0 && *libc::__errno_location() == libc::EINTR {
            continue;
        }
        break n == 4;
    };
    let mut init_status: libc::c_int = 0;
    while libc::waitpid(init, &mut init_status, 0) < 0 && *libc::__errno_location() == libc::EINTR {
    }
    // An init that died before reporting (killed with the cgroup) passes on its own end.
    mirror(if got { reported } else { init_status })
}

/// The namespace's init: reaps every orphan, reports the command's status, then exits (which
/// ends every process left in the namespace).
unsafe fn init_wait(command: libc::pid_t, write_end: libc::c_int) -> ! {
    close_all_but(write_end);
    let _ = drop_capabilities(ALL_CAPS.iter());
    let mut status: libc::c_int = 0;
    loop {
        let pid = libc::waitpid(-1, &mut status, 0);
        if pid == command {
            break;
        }
        if pid < 0 && *libc::__errno_location() != libc::EINTR {
            break;
        }
    }
    libc::write(write_end, (&status as *const libc::c_int).cast(), 4);
    libc::_exit(0)
}

/// Ends the calling process the way `status` (a wait status) says.
unsafe fn mirror(status: libc::c_int) -> ! {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::kill(libc::getpid(), sig);
        libc::_exit(128 + sig)
    }
    libc::_exit(libc::WEXITSTATUS(status))
}

fn check_pid(pid: libc::pid_t) -> io::Result<libc::pid_t> {
    if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Marks this process non-dumpable: a process without `CAP_SYS_PTRACE` can then neither
/// trace it nor read its memory, even under the same uid.
pub fn protect_self() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_existing_paths_are_bound() {
        let h = Hardening::new(
            [Path::new("/"), Path::new("/does/not/exist/bridle")],
            Path::new("/sys/fs/cgroup"),
            false,
        )
        .expect("paths without NUL");
        assert_eq!(h.read_only, vec![CString::new("/").unwrap()]);
    }

    #[test]
    fn the_dropped_set_holds_what_undoes_confinement() {
        for cap in [19, 21, 39] {
            assert!(DROPPED.contains(&cap), "capability {cap}");
        }
    }
}
