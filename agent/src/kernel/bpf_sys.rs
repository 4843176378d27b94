//! Thin, safe wrappers over the few bpf(2) commands bridle issues itself, for programs aya 0.14
//! cannot load or attach (the unix-socket hooks, see [`super::unix`]): BPF_PROG_LOAD with an
//! expected attach type aya does not know, BPF_LINK_CREATE at a cgroup, and pinning.
//!
//! Each attribute struct below is the prefix of the kernel's `union bpf_attr` member for its
//! command, laid out as in `include/uapi/linux/bpf.h`; the kernel reads the size passed and
//! treats the rest as zero, so a prefix is a complete request.

use aya_obj::generated::bpf_insn;
use std::{
    ffi::{CStr, CString},
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_CREATE: libc::c_long = 28;

/// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR`.
pub const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
/// `BPF_CGROUP_UNIX_CONNECT` (Linux 6.7).
pub const CGROUP_UNIX_CONNECT: u32 = 49;
/// `BPF_CGROUP_UNIX_SENDMSG` (Linux 6.7).
pub const CGROUP_UNIX_SENDMSG: u32 = 50;

/// Size of the verifier log asked for when a load fails (the kernel's maximum is far larger;
/// the tail of a log is what explains a rejection).
const LOG_SIZE: usize = 1 << 20;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Issues one bpf(2) command. Returns the syscall's non-negative result.
///
/// # Safety
/// `attr` must be a valid attribute struct for `cmd`, and every pointer in it must stay valid
/// for the call.
pub(crate) unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller vouches for `attr`; the kernel reads and writes at most its size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Takes ownership of a descriptor the kernel just returned.
fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel returned `fd` to this call alone; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A program the kernel refused: the errno and the verifier's log (empty when the kernel
/// wrote none, e.g. a platform that refuses the program type outright).
#[derive(Debug)]
pub struct LoadError {
    /// What BPF_PROG_LOAD returned.
    pub error: io::Error,
    /// The verifier's log, possibly cut to its end.
    pub log: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BPF_PROG_LOAD failed: {}", self.error)?;
        let log = self.log.trim();
        if !log.is_empty() {
            // The end of a verifier log names the instruction it gave up at.
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            write!(f, "; verifier log (end):\n{}", tail.join("\n"))?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

/// What to load: a program's relocated instructions and how the kernel should type it.
pub struct ProgLoad<'a> {
    /// `BPF_PROG_TYPE_*`.
    pub prog_type: u32,
    /// `BPF_*` attach type the program is verified for and may be attached with.
    pub expected_attach_type: u32,
    /// The instructions, every relocation applied.
    pub insns: &'a [bpf_insn],
    /// The license string (kfunc calls need a GPL-compatible one).
    pub license: &'a CStr,
    /// The name the kernel shows (`bpftool prog`), cut to 15 bytes.
    pub name: &'a str,
}

/// BPF_PROG_LOAD. On failure the load is repeated with a verifier log, so the error says why.
pub fn prog_load(req: &ProgLoad<'_>) -> Result<OwnedFd, LoadError> {
    let mut attr = ProgLoadAttr {
        prog_type: req.prog_type,
        insn_cnt: req.insns.len() as u32,
        insns: req.insns.as_ptr() as u64,
        license: req.license.as_ptr() as u64,
        expected_attach_type: req.expected_attach_type,
        ..ProgLoadAttr::default()
    };
    let name = req.name.as_bytes();
    let kept = name.len().min(attr.prog_name.len() - 1);
    attr.prog_name[..kept].copy_from_slice(&name[..kept]);
    // SAFETY: `attr` points at the caller's instructions and license, which outlive the call.
    match unsafe { bpf(BPF_PROG_LOAD, &mut attr) } {
        Ok(fd) => owned(fd).map_err(|error| LoadError {
            error,
            log: String::new(),
        }),
        Err(first) => {
            let mut log = vec![0u8; LOG_SIZE];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            // SAFETY: as above; `log` is writable for `log_size` bytes and outlives the call.
            let second = unsafe { bpf(BPF_PROG_LOAD, &mut attr) };
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]).into_owned();
            match second {
                // Loaded with a log after failing without: keep it, nothing is wrong.
                Ok(fd) => owned(fd).map_err(|error| LoadError { error, log: text }),
                Err(_) => Err(LoadError {
                    error: first,
                    log: text,
                }),
            }
        }
    }
}

/// BPF_LINK_CREATE: attaches `prog` at the cgroup open as `cgroup` for `attach_type`. The link
/// lives as long as the returned descriptor, or its pin.
pub fn link_create(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        flags: 0,
    };
    // SAFETY: `attr` holds two descriptors that stay open for the call.
    let fd = unsafe { bpf(BPF_LINK_CREATE, &mut attr)? };
    owned(fd)
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

/// BPF_OBJ_PIN: pins a program, map or link at `path` under a bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    // SAFETY: `attr` points at `path`, which outlives the call.
    unsafe { bpf(BPF_OBJ_PIN, &mut attr)? };
    Ok(())
}

/// BPF_OBJ_GET: opens what is pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: `attr` points at `path`, which outlives the call.
    let fd = unsafe { bpf(BPF_OBJ_GET, &mut attr)? };
    owned(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_prefixes_match_the_kernel_layout() {
        // Offsets from include/uapi/linux/bpf.h: expected_attach_type sits at 68 in the
        // BPF_PROG_LOAD member; the link and pin members start with their fields.
        assert_eq!(std::mem::size_of::<ProgLoadAttr>(), 72);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::size_of::<LinkCreateAttr>(), 16);
        assert_eq!(std::mem::size_of::<ObjAttr>(), 16);
    }

    #[test]
    fn attach_types_match_aya_obj_s_generated_bindings() {
        use aya_obj::generated::bpf_attach_type;
        assert_eq!(
            CGROUP_UNIX_CONNECT,
            bpf_attach_type::BPF_CGROUP_UNIX_CONNECT as u32
        );
        assert_eq!(
            CGROUP_UNIX_SENDMSG,
            bpf_attach_type::BPF_CGROUP_UNIX_SENDMSG as u32
        );
        assert_eq!(
            PROG_TYPE_CGROUP_SOCK_ADDR,
            aya_obj::generated::bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR as u32
        );
    }
}
