//! The reader: the fast half of the exec ask. It takes every permission event off the group
//! and answers at once what needs no judging (processes outside the workloads, and what the
//! worker permitted before); the rest goes to the worker behind a bounded queue, with a
//! deadline the reader enforces.

use super::{
    bpfmap::BpfMap,
    known::{fd_path, identify, FileKey, Known},
    lock, respond, AskStats, AskTable, WorkloadAsk,
};
use bridle_common::TaskWorkloads;
use std::{
    collections::HashMap,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// Longest the reader sleeps between checks of the stop flag and the deadlines.
const TICK: Duration = Duration::from_millis(20);
/// `sizeof(struct fanotify_event_metadata)`.
const EVENT_LEN: usize = 24;

/// A workload event handed to the worker.
pub(super) struct Job {
    pub(super) id: u64,
    pub(super) fd: RawFd,
    pub(super) pid: i32,
    pub(super) ask: Arc<WorkloadAsk>,
}

/// An event the worker holds: answered by the worker, or by the reader's fail mode once the
/// deadline passes.
pub(super) struct Pending {
    fd: RawFd,
    deadline: Instant,
    fail_allow: bool,
    /// The reader answered it already (deadline); the worker only closes the fd.
    pub(super) answered: bool,
}

/// Events the worker holds, by job id.
pub(super) type PendingMap = Arc<Mutex<HashMap<u64, Pending>>>;

pub(super) struct Reader {
    pub(super) group: Arc<OwnedFd>,
    pub(super) known: Arc<Mutex<Known>>,
    pub(super) tasks: BpfMap,
    pub(super) workloads: AskTable,
    pub(super) deadline: Duration,
    pub(super) pending: PendingMap,
    pub(super) tx: mpsc::SyncSender<Job>,
    pub(super) next_id: u64,
    pub(super) stats: Arc<AskStats>,
    /// Whether a loader recognised here gets an ignore mark (see the worker's `ignore_in`).
    pub(super) ignore_loaders: bool,
}

impl Reader {
    pub(super) fn run(&mut self, stop: &AtomicBool) {
        let mut buf = vec![0u8; EVENT_LEN * 512];
        while !stop.load(Ordering::SeqCst) {
            let timeout = self.next_timeout();
            let mut pfd = libc::pollfd {
                fd: self.group.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the call.
            unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().max(1) as libc::c_int) };
            loop {
                // SAFETY: reads into a live buffer of its length.
                let n = unsafe {
                    libc::read(self.group.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                };
                if n <= 0 {
                    break; // EAGAIN: drained
                }
                self.handle(&buf[..n as usize]);
            }
            self.expire();
        }
    }

    fn next_timeout(&self) -> Duration {
        let now = Instant::now();
        lock(&self.pending)
            .values()
            .filter(|p| !p.answered)
            .map(|p| p.deadline.saturating_duration_since(now))
            .min()
            .map_or(TICK, |d| d.min(TICK))
    }

    /// The workload of this group that `pid` belongs to, after one map lookup.
    fn workload_of(&self, pid: i32) -> Option<Arc<WorkloadAsk>> {
        let tasks = self
            .tasks
            .lookup::<u32, TaskWorkloads>(&(pid as u32))
            .ok()??;
        let table = self
            .workloads
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        tasks
            .ids
            .iter()
            .take_while(|id| **id != 0)
            .find_map(|id| table.get(id).cloned())
    }

    fn handle(&mut self, mut events: &[u8]) {
        while events.len() >= EVENT_LEN {
            let len = u32::from_ne_bytes([events[0], events[1], events[2], events[3]]) as usize;
            if len < EVENT_LEN || len > events.len() {
                break;
            }
            let mask = u64::from_ne_bytes(events[8..16].try_into().unwrap_or([0; 8]));
            let fd = i32::from_ne_bytes(events[16..20].try_into().unwrap_or([0xff; 4]));
            let pid = i32::from_ne_bytes(events[20..24].try_into().unwrap_or([0; 4]));
            events = &events[len..];
            if fd < 0 {
                eprintln!("bridle: warning: fanotify queue overflow; the kill-on-exec backstop still judges");
                continue;
            }
            if mask & libc::FAN_OPEN_EXEC_PERM == 0 {
                // SAFETY: the event's fd is ours to close.
                unsafe { libc::close(fd) };
                continue;
            }
            // The hot path for everyone else: one map lookup, no /proc.
            let ask = self.workload_of(pid);
            let allow_now = match &ask {
                None => {
                    self.stats.outsiders.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Some(ask) => self.answer_known(ask, fd, pid),
            };
            let Some(ask) = ask.filter(|_| !allow_now) else {
                respond(&self.group, fd, true);
                // SAFETY: as above.
                unsafe { libc::close(fd) };
                continue;
            };
            let id = self.next_id;
            self.next_id += 1;
            let fail_allow = ask.observe;
            lock(&self.pending).insert(
                id,
                Pending {
                    fd,
                    deadline: Instant::now() + self.deadline,
                    fail_allow,
                    answered: false,
                },
            );
            if self.tx.try_send(Job { id, fd, pid, ask }).is_err() {
                lock(&self.pending).remove(&id);
                self.fail(fd, pid, fail_allow, "the judge's queue is full");
                // SAFETY: the worker never saw this fd.
                unsafe { libc::close(fd) };
            }
        }
    }

    /// Whether the event is one the worker already answered in effect: the loader of an exec
    /// it permitted a moment ago, or a file it permitted before (same policy slot, identity,
    /// change time and path). Anything else, refusals included, goes to the worker.
    fn answer_known(&self, ask: &WorkloadAsk, fd: RawFd, pid: i32) -> bool {
        if ask.quarantined {
            return false;
        }
        let Ok((file, ctime, nlink)) = identify(fd) else {
            return false;
        };
        if nlink == 0 {
            return false; // memfd or deleted: always judged
        }
        if lock(&self.known).take_interp(pid, file) {
            if self.ignore_loaders {
                let _ = super::mark(
                    &self.group,
                    libc::FAN_MARK_ADD | libc::FAN_MARK_IGNORED_MASK,
                    fd,
                    None,
                );
            }
            self.stats.known.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        let Ok(path) = fd_path(fd) else {
            return false;
        };
        let key = FileKey {
            slot: ask.slot,
            file,
            ctime,
            path,
        };
        let mut known = lock(&self.known);
        let Some(loader) = known.permitted(&key) else {
            return false;
        };
        known.expect_interp(pid, loader);
        self.stats.known.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Answers every workload event past its deadline by the fail mode. The worker still owns
    /// (and later closes) the fd, so its number cannot be reused while it is in the table.
    fn expire(&mut self) {
        let now = Instant::now();
        let mut late = Vec::new();
        for p in lock(&self.pending).values_mut() {
            if !p.answered && p.deadline <= now {
                p.answered = true;
                late.push((p.fd, p.fail_allow));
            }
        }
        for (fd, fail_allow) in late {
            self.fail(
                fd,
                0,
                fail_allow,
                "the engine did not answer by the deadline",
            );
        }
    }

    fn fail(&self, fd: RawFd, pid: i32, allow: bool, why: &str) {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        let outcome = if allow { "allowed" } else { "refused" };
        eprintln!("bridle: warning: exec (pid {pid}) {outcome} by the fail mode: {why}");
        respond(&self.group, fd, allow);
    }
}
