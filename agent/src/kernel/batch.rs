//! Many entries of one map written or deleted in one bpf(2) call.
//!
//! A policy of thousands of rules installs thousands of entries on every reload, and one
//! syscall per entry was most of a reload's time. `BPF_MAP_UPDATE_BATCH` and
//! `BPF_MAP_DELETE_BATCH` take them all at once (hash maps and LPM tries both have them). A
//! kernel without them for a map type answers EINVAL or ENOTSUPP before doing anything; the
//! entries then go one call each, so the outcome is the same everywhere.

use super::bpf_sys::bpf;
use crate::fanotify::bpfmap::{delete_raw, update_raw, BPF_ANY};
use aya::Pod;
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// The kernel's internal "operation not supported" (not in libc: it never reaches userspace
/// from other syscalls).
const ENOTSUPP: i32 = 524;

/// The batch layout of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// An entry the kernel refused: its position in the caller's list and the error.
#[derive(Debug)]
pub struct Refused {
    /// Index of the refused entry.
    pub index: usize,
    /// What the kernel answered.
    pub error: io::Error,
}

/// Entries per batch call: the call wants the keys and the values each as one array, and
/// copying them a chunk at a time keeps a policy of 100,000 addresses from doubling the
/// memory its entries take.
const CHUNK: usize = 4096;

/// Writes (creates or replaces) the entry `split` makes of each item of `items` into the map
/// `fd`. `K` and `V` must be the map's exact key and value types. Stops at the first entry the
/// kernel refuses (its index in `items`); the ones before it are written.
pub fn update<E, K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    items: &[E],
    split: impl Fn(&E) -> (K, V),
) -> Result<(), Refused> {
    let mut keys: Vec<K> = Vec::with_capacity(items.len().min(CHUNK));
    let mut values: Vec<V> = Vec::with_capacity(items.len().min(CHUNK));
    let mut batched = true;
    for (chunk, part) in items.chunks(CHUNK).enumerate() {
        let base = chunk * CHUNK;
        keys.clear();
        values.clear();
        for item in part {
            let (key, value) = split(item);
            keys.push(key);
            values.push(value);
        }
        let refused = |index: usize, error| Refused {
            index: base + index,
            error,
        };
        if !batched {
            update_each(fd, &keys, &values).map_err(|r| refused(r.index, r.error))?;
            continue;
        }
        let mut done = 0;
        while done < keys.len() {
            let mut attr = BatchAttr {
                keys: keys[done..].as_ptr() as u64,
                values: values[done..].as_ptr() as u64,
                // At most CHUNK.
                count: (keys.len() - done) as u32,
                map_fd: fd.as_raw_fd() as u32,
                ..BatchAttr::default()
            };
            // SAFETY: `keys` and `values` hold `count` elements of the map's key and value
            // sizes from `done` on, alive for the call.
            let Err(error) = (unsafe { bpf(BPF_MAP_UPDATE_BATCH, &mut attr) }) else {
                break;
            };
            if base == 0 && done == 0 && attr.count == 0 && unsupported(&error) {
                batched = false;
                update_each(fd, &keys, &values).map_err(|r| refused(r.index, r.error))?;
                break;
            }
            done += attr.count as usize;
            if error.raw_os_error() != Some(libc::EINTR) {
                return Err(refused(done, error));
            }
        }
    }
    Ok(())
}

/// Deletes every key of `keys` from the map `fd`; keys that are not there are skipped.
/// Returns how many were deleted.
pub fn delete<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> Result<usize, Refused> {
    let mut done = 0;
    let mut deleted = 0;
    while done < keys.len() {
        let count = u32::try_from(keys.len() - done).unwrap_or(u32::MAX);
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            count,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `keys` holds `count` keys of the map's key size from `done` on.
        let Err(error) = (unsafe { bpf(BPF_MAP_DELETE_BATCH, &mut attr) }) else {
            return Ok(deleted + count as usize);
        };
        if done == 0 && attr.count == 0 && unsupported(&error) {
            return delete_each(fd, keys);
        }
        done += attr.count as usize;
        deleted += attr.count as usize;
        match error.raw_os_error() {
            // The batch stops at a missing key: step over it.
            Some(libc::ENOENT) => done += 1,
            Some(libc::EINTR) => {}
            _ => return Err(Refused { index: done, error }),
        }
    }
    Ok(deleted)
}

fn unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

fn update_each<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), Refused> {
    for (index, (key, value)) in keys.iter().zip(values).enumerate() {
        // SAFETY: `key` and `value` are live and of the map's key and value sizes.
        let rc = unsafe {
            update_raw(
                fd.as_raw_fd(),
                key as *const K as *const u8,
                value as *const V as *const u8,
                BPF_ANY,
            )
        };
        if rc != 0 {
            return Err(Refused {
                index,
                error: io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

fn delete_each<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> Result<usize, Refused> {
    let mut deleted = 0;
    for (index, key) in keys.iter().enumerate() {
        // SAFETY: `key` is live and of the map's key size.
        if unsafe { delete_raw(fd.as_raw_fd(), key as *const K as *const u8) } == 0 {
            deleted += 1;
            continue;
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ENOENT) {
            return Err(Refused { index, error });
        }
    }
    Ok(deleted)
}
