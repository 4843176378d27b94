//! What the reader can answer without waking the worker: files the worker permitted, and the
//! loader each permitted exec opens next.

use std::{
    collections::HashMap,
    io,
    os::fd::RawFd,
    path::PathBuf,
    time::{Duration, Instant},
};

/// How long a loader open is taken as part of the exec that named it as its interpreter.
const INTERP_WINDOW: Duration = Duration::from_secs(2);
/// How many remembered permits are kept before the table starts afresh.
const PERMITTED_MAX: usize = 1 << 16;
/// How many loader expectations are kept (execs that failed before opening their loader
/// leave theirs behind).
const INTERP_MAX: usize = 4096;

/// A file by identity: kernel-encoded device and inode.
pub type Identity = (u64, u64);

/// A file as the reader recognises it: the policy slot that judged it, identity, change time
/// (a write in place changes it) and the path the kernel resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileKey {
    /// The policy slot whose verdict this is.
    pub slot: u64,
    /// Device and inode.
    pub file: Identity,
    /// Change time, seconds and nanoseconds.
    pub ctime: (i64, u32),
    /// The resolved path.
    pub path: PathBuf,
}

/// Permits the worker gave, and loaders execs are about to open.
#[derive(Default)]
pub struct Known {
    /// Files the worker permitted, with their kernel entry in place, and their loader.
    permitted: HashMap<FileKey, Option<Identity>>,
    /// The loader each exec will open next, by pid, and since when.
    interp: HashMap<i32, (Identity, Instant)>,
}

impl Known {
    /// Whether `pid` opening `file` is the loader of the exec it was permitted a moment ago
    /// (then that expectation is used up).
    pub fn take_interp(&mut self, pid: i32, file: Identity) -> bool {
        match self.interp.remove(&pid) {
            Some((loader, at)) => loader == file && at.elapsed() < INTERP_WINDOW,
            None => false,
        }
    }

    /// Expects `pid` to open `loader` next, as part of the exec just permitted.
    pub fn expect_interp(&mut self, pid: i32, loader: Option<Identity>) {
        if let Some(loader) = loader {
            if self.interp.len() >= INTERP_MAX {
                self.interp.clear();
            }
            self.interp.insert(pid, (loader, Instant::now()));
        }
    }

    /// Remembers a permitted file and its loader.
    pub fn permit(&mut self, key: FileKey, loader: Option<Identity>) {
        if self.permitted.len() >= PERMITTED_MAX {
            self.permitted.clear();
        }
        self.permitted.insert(key, loader);
    }

    /// The loader of a file permitted before (`Some(None)` for a file without one); `None`
    /// when the file is not known as permitted.
    pub fn permitted(&self, key: &FileKey) -> Option<Option<Identity>> {
        self.permitted.get(key).copied()
    }
}

/// Identity, change time and link count of an open file, from the inode's cached attributes
/// (no round trip to a network or FUSE filesystem).
pub fn identify(fd: RawFd) -> io::Result<(Identity, (i64, u32), u32)> {
    // SAFETY: statx into a zeroed buffer.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open; the empty path with AT_EMPTY_PATH names it; `st` is live.
    let rc = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC,
            libc::STATX_BASIC_STATS,
            &mut st,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let dev = (u64::from(st.stx_dev_major) << 20) | u64::from(st.stx_dev_minor);
    Ok((
        (dev, st.stx_ino),
        (st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec),
        st.stx_nlink,
    ))
}

/// The path the kernel resolved for an open file.
pub fn fd_path(fd: RawFd) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> FileKey {
        FileKey {
            slot: 1,
            file: (8, 42),
            ctime: (1, 2),
            path: PathBuf::from(path),
        }
    }

    #[test]
    fn a_loader_is_expected_once_and_only_the_one_named() {
        let mut known = Known::default();
        known.expect_interp(7, Some((8, 1)));
        assert!(!known.take_interp(7, (8, 2)), "another file");
        assert!(!known.take_interp(7, (8, 1)), "used up by the failed match");
        known.expect_interp(7, Some((8, 1)));
        assert!(known.take_interp(7, (8, 1)));
        assert!(!known.take_interp(7, (8, 1)), "only once");
    }

    #[test]
    fn a_permit_is_known_by_slot_identity_change_time_and_path() {
        let mut known = Known::default();
        known.permit(key("/usr/bin/true"), None);
        assert_eq!(known.permitted(&key("/usr/bin/true")), Some(None));
        assert_eq!(known.permitted(&key("/opt/true")), None, "another path");
        let mut changed = key("/usr/bin/true");
        changed.ctime = (3, 0);
        assert_eq!(known.permitted(&changed), None, "written since");
        let mut other_slot = key("/usr/bin/true");
        other_slot.slot = 2;
        assert_eq!(known.permitted(&other_slot), None, "another policy");
    }

    #[test]
    fn an_open_file_is_identified_like_stat_does() {
        use std::os::{fd::AsRawFd, unix::fs::MetadataExt};
        let file = std::fs::File::open("/bin/sh").expect("open /bin/sh");
        let ((dev, ino), _, nlink) = identify(file.as_raw_fd()).expect("statx");
        let meta = file.metadata().expect("metadata");
        assert_eq!(ino, meta.ino());
        assert_eq!(dev, crate::kernel::entries::kernel_dev(meta.dev()));
        assert!(nlink >= 1);
    }
}
