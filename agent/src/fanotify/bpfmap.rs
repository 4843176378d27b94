//! Element lookups and updates on a BPF hash map through bpf(2) directly.
//!
//! The fanotify threads and the pre-exec hook of `bridle run` need the maps without the
//! loader's borrow of the object: a duplicated map fd and two syscalls are all it takes, and
//! [`update_raw`] is async-signal-safe (no allocation, one syscall), so it can run between
//! fork and exec.

use std::{
    io,
    mem::MaybeUninit,
    os::fd::{AsRawFd, OwnedFd, RawFd},
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

/// `BPF_NOEXIST`: create the element only if it does not exist yet.
pub const BPF_NOEXIST: u64 = 1;
/// `BPF_ANY`: create or replace.
pub const BPF_ANY: u64 = 0;

/// The element-operation layout of `union bpf_attr`.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// A BPF hash map reached through its own fd.
pub struct BpfMap {
    fd: OwnedFd,
}

impl BpfMap {
    /// Wraps a map fd (for example from [`crate::kernel::Enforcer::map_fd`]).
    pub fn new(fd: OwnedFd) -> BpfMap {
        BpfMap { fd }
    }

    /// Looks `key` up. `K` and `V` must be the map's exact `repr(C)` key and value types.
    pub fn lookup<K: Copy, V: Copy>(&self, key: &K) -> io::Result<Option<V>> {
        let mut value = MaybeUninit::<V>::uninit();
        let attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: key as *const K as u64,
            value: value.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: `attr` points at a live key and a value buffer of the map's value size.
        let rc = unsafe { sys_bpf(BPF_MAP_LOOKUP_ELEM, &attr) };
        if rc == 0 {
            // SAFETY: the kernel wrote the whole value.
            return Ok(Some(unsafe { value.assume_init() }));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENOENT) {
            Ok(None)
        } else {
            Err(err)
        }
    }

    /// Writes `key` -> `value` with `flags` (`BPF_ANY`, `BPF_NOEXIST`).
    pub fn update<K: Copy, V: Copy>(&self, key: &K, value: &V, flags: u64) -> io::Result<()> {
        // SAFETY: both pointers are live for the call and of the map's key and value sizes.
        let rc = unsafe {
            update_raw(
                self.fd.as_raw_fd(),
                key as *const K as *const u8,
                value as *const V as *const u8,
                flags,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl BpfMap {
    /// Deletes `key` (an exact match, also on an LPM trie); absent is not an error.
    pub fn delete<K: Copy>(&self, key: &K) -> io::Result<()> {
        // SAFETY: `key` is live and of the map's key size.
        let rc = unsafe { delete_raw(self.fd.as_raw_fd(), key as *const K as *const u8) };
        let err = io::Error::last_os_error();
        if rc == 0 || err.raw_os_error() == Some(libc::ENOENT) {
            Ok(())
        } else {
            Err(err)
        }
    }
}

/// One `BPF_MAP_DELETE_ELEM`; returns 0 or -1 with errno set (ENOENT when absent).
///
/// # Safety
/// `key` must point at the map's key size of readable memory.
pub unsafe fn delete_raw(fd: RawFd, key: *const u8) -> i32 {
    let attr = ElemAttr {
        map_fd: fd as u32,
        _pad: 0,
        key: key as u64,
        value: 0,
        flags: 0,
    };
    // SAFETY: the caller vouches for the pointer.
    unsafe { sys_bpf(BPF_MAP_DELETE_ELEM, &attr) as i32 }
}

/// One `BPF_MAP_UPDATE_ELEM`; returns 0 or -1 with errno set. Async-signal-safe.
///
/// # Safety
/// `key` and `value` must point at the map's key and value sizes of readable memory.
pub unsafe fn update_raw(fd: RawFd, key: *const u8, value: *const u8, flags: u64) -> i32 {
    let attr = ElemAttr {
        map_fd: fd as u32,
        _pad: 0,
        key: key as u64,
        value: value as u64,
        flags,
    };
    // SAFETY: the caller vouches for the pointers.
    unsafe { sys_bpf(BPF_MAP_UPDATE_ELEM, &attr) as i32 }
}

unsafe fn sys_bpf(cmd: libc::c_long, attr: &ElemAttr) -> libc::c_long {
    // SAFETY: bpf(2) reads `size_of::<ElemAttr>()` bytes of `attr`.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const ElemAttr,
            std::mem::size_of::<ElemAttr>() as libc::c_uint,
        )
    }
}
