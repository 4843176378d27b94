//! Exec permission marks on the mounts of one mount namespace, placed from inside it.
//!
//! A workload that `bridle run` starts has its own mount namespace: its mounts are copies that
//! no other process on the host resolves paths through. Marking those mounts (`FAN_MARK_MOUNT`)
//! instead of whole filesystems means that only execs made through the workload's mounts are
//! asked, so every other process on the host execs without waiting for bridle at all.
//!
//! The marks are placed by the workload's first process itself, between fork and exec, once
//! its mounts are final: only a process inside the namespace can name its mounts. That code
//! must be async-signal-safe, so [`MountMarker`] allocates its buffers before the fork and
//! parses `/proc/self/mountinfo` in place.

use std::{io, os::fd::RawFd};

/// Largest mountinfo the marker reads; a namespace with more mounts is refused (fail closed)
/// rather than partly marked.
const MOUNTINFO_MAX: usize = 1 << 20;
/// Longest mount point path (`PATH_MAX`).
const PATH_MAX: usize = 4096;

/// Places `FAN_OPEN_EXEC_PERM` mount marks for a fanotify group on every mount of the calling
/// process's mount namespace that can hold executables.
#[derive(Debug)]
pub struct MountMarker {
    group: RawFd,
    mountinfo: Vec<u8>,
    path: Vec<u8>,
}

impl MountMarker {
    /// A marker for the group `group` (an fd that stays open across the fork), with its
    /// buffers allocated now.
    pub fn new(group: RawFd) -> MountMarker {
        MountMarker {
            group,
            mountinfo: vec![0; MOUNTINFO_MAX],
            path: vec![0; PATH_MAX + 1],
        }
    }

    /// Marks every mount of the caller's namespace (pseudo filesystems that hold no
    /// executables excepted); returns how many were marked. Fails if the root mount cannot be
    /// marked or the mount table does not fit the buffer.
    ///
    /// # Safety
    /// Async-signal-safe: only open, read, close and fanotify_mark, and no allocation, so it
    /// may run in a child forked from a multi-threaded process.
    pub unsafe fn mark_all(&mut self) -> io::Result<usize> {
        let len = unsafe { read_mountinfo(&mut self.mountinfo) }?;
        let mut marked = 0;
        let mut root_marked = false;
        for line in self.mountinfo[..len].split(|b| *b == b'\n') {
            let Some((mount, fstype)) = mount_and_type(line) else {
                continue;
            };
            if super::UNMARKED.iter().any(|t| t.as_bytes() == fstype) {
                continue;
            }
            let Some(n) = unescape_into(mount, &mut self.path) else {
                continue; // longer than PATH_MAX: no path reaches it
            };
            // SAFETY: `self.path` holds a NUL-terminated path of `n` bytes.
            let rc = unsafe {
                libc::fanotify_mark(
                    self.group,
                    libc::FAN_MARK_ADD | libc::FAN_MARK_MOUNT,
                    libc::FAN_OPEN_EXEC_PERM,
                    libc::AT_FDCWD,
                    self.path.as_ptr().cast(),
                )
            };
            let is_root = n == 1 && self.path[0] == b'/';
            if rc == 0 {
                marked += 1;
                root_marked |= is_root;
            } else if is_root {
                return Err(io::Error::last_os_error());
            }
            // Other mounts that refuse a mark (or were covered by a later mount on the same
            // point) are judged by the kill-on-exec backstop alone.
        }
        if !root_marked {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        Ok(marked)
    }
}

/// Reads the caller's `/proc/self/mountinfo` whole into `buf`; returns its length.
unsafe fn read_mountinfo(buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: a NUL-terminated literal path.
    let fd = unsafe {
        libc::open(
            c"/proc/self/mountinfo".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut len = 0;
    let result = loop {
        if len == buf.len() {
            break Err(io::Error::from_raw_os_error(libc::ENOBUFS));
        }
        // SAFETY: reads into the unused tail of `buf`.
        let n = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break Err(io::Error::last_os_error());
        }
        if n == 0 {
            break Ok(len);
        }
        len += n as usize;
    };
    // SAFETY: closes the fd opened above.
    unsafe { libc::close(fd) };
    result
}

/// The mount point (still escaped) and filesystem type of one mountinfo line.
fn mount_and_type(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let sep = line.windows(3).position(|w| w == b" - ")?;
    let (left, right) = (&line[..sep], &line[sep + 3..]);
    let mount = left.split(|b| *b == b' ').nth(4)?;
    let fstype = right.split(|b| *b == b' ').next()?;
    Some((mount, fstype))
}

/// Undoes mountinfo's octal escapes (space, tab, newline, backslash) into `out`, followed by a
/// NUL; returns the path's length, or `None` if it does not fit. The allocation-free twin of
/// [`crate::cgroup::unescape_mountinfo`], for use between fork and exec.
fn unescape_into(s: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut i = 0;
    let mut n = 0;
    while i < s.len() {
        let byte =
            if s[i] == b'\\' && i + 3 < s.len() && s[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
                let v = (s[i + 1] - b'0')
                    .wrapping_mul(64)
                    .wrapping_add((s[i + 2] - b'0') * 8)
                    .wrapping_add(s[i + 3] - b'0');
                i += 4;
                v
            } else {
                i += 1;
                s[i - 1]
            };
        *out.get_mut(n)? = byte;
        n += 1;
    }
    *out.get_mut(n)? = 0;
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mountinfo_line_gives_its_mount_point_and_type() {
        let line = b"36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw";
        let (mount, fstype) = mount_and_type(line).expect("a mount line");
        assert_eq!(fstype, b"ext3");
        let mut out = [0u8; 64];
        let n = unescape_into(mount, &mut out).expect("fits");
        assert_eq!(&out[..n + 1], b"/mnt/a b\0");
    }

    #[test]
    fn a_path_that_does_not_fit_is_skipped() {
        let mut out = [0u8; 4];
        assert_eq!(unescape_into(b"/abcd", &mut out), None);
        assert_eq!(unescape_into(b"/ab", &mut out), Some(3));
    }

    #[test]
    fn this_process_mount_table_is_read_whole() {
        let mut buf = vec![0u8; MOUNTINFO_MAX];
        // SAFETY: called outside any fork.
        let len = unsafe { read_mountinfo(&mut buf) }.expect("mountinfo");
        let text = String::from_utf8_lossy(&buf[..len]);
        assert!(text
            .lines()
            .any(|l| mount_and_type(l.as_bytes()).is_some_and(|(m, _)| m == b"/")));
    }
}
