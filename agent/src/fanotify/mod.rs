//! The fanotify exec tier: `FAN_OPEN_EXEC_PERM` events answered by the engine.
//!
//! Every exec on a marked filesystem waits in the kernel until this group answers, so the
//! design is about never stalling the machine:
//!
//! - **Outsiders in microseconds.** The reader thread looks the event's pid up in the kernel's
//!   task table (`TASKS`, kept by the fork, cgroup-attach and exit tracepoints) with one
//!   bpf(2) call and answers `FAN_ALLOW` at once when the process is in none of this group's
//!   workloads; it reads nothing under /proc for them.
//! - **Workload events on a worker.** Judging (readlink, fstat, the engine, the map update)
//!   runs on a second thread behind a bounded queue. A full queue, or an answer not given by
//!   the deadline, is answered by the reader with the fail mode (refuse when enforcing, allow
//!   when observing) and logged.
//! - **The backstop agrees.** Before answering `FAN_ALLOW` for a file that has no kernel entry
//!   yet, the worker writes its permit entry, so kill-on-exec never kills a permitted exec.
//!
//! - **Known answers on the reader.** A file the worker permitted (its kernel entry written) is
//!   remembered by identity, change time and path, with the loader its exec opens next; the
//!   reader answers those two events itself, without waking the worker.
//!
//! Marks ([`MarkScope`]): for a workload with its own mount namespace (`bridle run`), a
//! `FAN_MARK_MOUNT` on each of its mounts, placed from inside the namespace
//! ([`mounts::MountMarker`]), so processes outside it are never asked at all; otherwise
//! `FAN_MARK_FILESYSTEM` on every filesystem mounted when the group starts (except pseudo
//! filesystems that hold no executables). Both add the internal shmem filesystem behind
//! memfds. A filesystem or mount that appears later is not marked: execs from it meet the
//! kill-on-exec backstop only.

pub mod bpfmap;
mod known;
pub mod mounts;
mod reader;
mod worker;

use anyhow::{bail, Context, Result};
use bpfmap::BpfMap;
use bridle_engine::{Code, Engine};
use reader::{Job, PendingMap, Reader};
use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc, Mutex, RwLock,
    },
    thread::JoinHandle,
    time::Duration,
};
use worker::Worker;

/// Workload events waiting for the worker; beyond this the fail mode answers.
const QUEUE: usize = 1024;
/// Pseudo filesystems that hold no executables (and some refuse permission marks).
const UNMARKED: &[&str] = &[
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "bpf",
    "debugfs",
    "tracefs",
    "securityfs",
    "devpts",
    "mqueue",
    "pstore",
    "configfs",
    "fusectl",
    "binfmt_misc",
    "autofs",
    "efivarfs",
    "rpc_pipefs",
    "nsfs",
];

/// Creates a permission-class fanotify group.
pub fn init_group() -> io::Result<OwnedFd> {
    // SAFETY: fanotify_init has no memory arguments.
    let fd = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK,
            (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds (or removes) an exec permission mark: on `path` relative to `dirfd`, or on the
/// object `dirfd` refers to when `path` is `None`.
pub fn mark(
    group: &OwnedFd,
    flags: libc::c_uint,
    dirfd: RawFd,
    path: Option<&Path>,
) -> io::Result<()> {
    let cpath = match path {
        Some(p) => Some(
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        ),
        None => None,
    };
    let ptr = cpath.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: `ptr` is null or a NUL-terminated string alive for the call.
    let rc = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            flags,
            libc::FAN_OPEN_EXEC_PERM,
            dirfd,
            ptr,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Where the group's exec permission marks go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkScope {
    /// Every filesystem mounted now: every exec on the host is asked (outsiders are answered
    /// at once). For workloads that share the host's mounts (the daemon's).
    Filesystems,
    /// Only the mounts of one workload's own mount namespace, which its first process marks
    /// with a [`mounts::MountMarker`] before it execs (`bridle run`); nobody else is asked,
    /// and files the workload may run get ignore marks, so their next execs are not asked
    /// either.
    WorkloadMounts,
}

/// How the ask judges one workload's execs.
pub struct WorkloadAsk {
    /// The workload's cgroup id.
    pub workload: u64,
    /// The policy slot whose exec entries the kill backstop consults for this workload.
    pub slot: u64,
    /// The workload's engine.
    pub engine: Arc<Engine>,
    /// Rule names by index, as the kernel entries number them.
    pub rules: Vec<String>,
    /// Observe mode: allow everything (the backstop reports what it would refuse); also the
    /// fail mode (refuse when enforcing, allow when observing).
    pub observe: bool,
    /// The policy allows memfd and deleted-file executables.
    pub allow_anonymous: bool,
    /// The workload is quarantined with `refuse-all`: every exec is refused.
    pub quarantined: bool,
}

/// The workloads one exec ask judges, by cgroup id. The owner replaces an entry (a reload, a
/// new slot) or removes it (a release) while the ask runs.
pub type AskTable = Arc<RwLock<HashMap<u64, Arc<WorkloadAsk>>>>;

/// What the exec ask needs.
pub struct AskConfig {
    /// Where the marks go.
    pub scope: MarkScope,
    /// The workloads to judge.
    pub workloads: AskTable,
    /// Where refusals (and observed would-be refusals) go, to be reported and audited.
    pub decisions: DecisionSender,
    /// Longest an exec of a workload waits for the engine before the fail mode answers.
    pub deadline: Duration,
    /// The kernel's task table (`TASKS`).
    pub tasks: BpfMap,
    /// The workloads' exec entries (`EXEC_RULES`).
    pub exec_rules: BpfMap,
}

/// Counters of the exec ask.
#[derive(Debug, Default)]
pub struct AskStats {
    /// Events of processes outside the workloads, allowed at once.
    pub outsiders: AtomicU64,
    /// Workload events the engine judged.
    pub judged: AtomicU64,
    /// Workload execs refused.
    pub refused: AtomicU64,
    /// Events answered by the fail mode (deadline, overload, internal error).
    pub failed: AtomicU64,
    /// Workload events the reader answered from what the worker had permitted.
    pub known: AtomicU64,
}

/// The sending end of the ask's decisions (it wakes the loop that records them).
pub type DecisionSender = crate::channel::Sender<AskDecision>;

/// The receiving end of the ask's decisions, for the loop that prints and audits them.
pub type DecisionInbox = crate::channel::Receiver<AskDecision>;

/// A channel for the ask's decisions whose receiving loop can wait on [`DecisionInbox::fd`].
pub fn decision_channel() -> io::Result<(DecisionSender, DecisionInbox)> {
    crate::channel::channel()
}

/// A decision the fanotify tier took in user space (the kernel never saw the exec).
#[derive(Debug, Clone)]
pub struct AskDecision {
    /// Told once the decision is on disk; the exec waits for it (boundedly), so a refusal
    /// is audited before the workload learns of it and a daemon killed in between loses
    /// nothing: its group closes, and the kill-on-exec backstop refuses and records instead.
    pub recorded: Option<mpsc::SyncSender<()>>,
    /// The workload's cgroup id.
    pub workload: u64,
    /// The process that tried to exec.
    pub pid: i32,
    /// Its command name and real uid, read while it waited for the answer.
    pub comm: String,
    /// Its real uid (`u32::MAX` if it could not be read).
    pub uid: u32,
    /// The resolved path of the file.
    pub path: String,
    /// The verdict code.
    pub code: Code,
    /// The deciding rule.
    pub rule: Option<String>,
    /// Observe mode let it through.
    pub observed: bool,
}

/// A running exec ask: the fanotify group and its two threads. Dropping it stops both and
/// closes the group (the kernel then allows whatever was still waiting).
pub struct ExecAsk {
    group: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// The counters, shared with the threads.
    pub stats: Arc<AskStats>,
    /// The filesystems marked, as mount points (`memfd:` for memfds); a workload's own mounts
    /// are marked from inside its namespace and not listed here.
    pub marked: Vec<PathBuf>,
}

impl ExecAsk {
    /// Creates the group, marks the filesystems (with [`MarkScope::Filesystems`]) and starts
    /// the reader and the worker.
    pub fn start(config: AskConfig) -> Result<ExecAsk> {
        let group = Arc::new(init_group().context("fanotify_init(FAN_CLASS_CONTENT)")?);
        let mut marked = match config.scope {
            MarkScope::Filesystems => mark_filesystems(&group)?,
            MarkScope::WorkloadMounts => Vec::new(),
        };
        marked.extend(mark_memfds(&group));
        // Ignore marks are per group and per file: only a group that serves one workload,
        // through that workload's own mounts, may skip a file its policy permits.
        let ignore = config.scope == MarkScope::WorkloadMounts;
        // A dynamic binary's exec opens its loader as a second exec open; the loader is never
        // judged on its own there (the binary was), so it is not asked at all, for any
        // workload: the answer would be the same for all, and an exec caught between two
        // groups (a daemon restarting) or two policies could otherwise be refused at its
        // loader. A direct exec of the loader meets the kill-on-exec backstop, which refuses
        // it unless a rule names the loader.
        for loader in worker::loader_paths() {
            if let Ok(file) = std::fs::File::open(&loader) {
                let _ = mark(
                    &group,
                    libc::FAN_MARK_ADD | libc::FAN_MARK_IGNORED_MASK,
                    file.as_raw_fd(),
                    None,
                );
            }
        }
        let known = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(AskStats::default());
        let pending: PendingMap = Arc::default();
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let mut worker = Worker {
            decisions: config.decisions,
            loaders: worker::known_loaders(),
            exec_rules: config.exec_rules,
            known: Arc::clone(&known),
            ignore_in: ignore.then(|| Arc::clone(&group)),
        };
        let worker_thread = {
            let group = Arc::clone(&group);
            let pending = Arc::clone(&pending);
            let stats = Arc::clone(&stats);
            std::thread::Builder::new()
                .name("bridle-exec-judge".into())
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        let allow = worker.decide(&job.ask, job.fd, job.pid, &stats);
                        let mut pending = lock(&pending);
                        if let Some(p) = pending.remove(&job.id) {
                            if !p.answered {
                                respond(&group, job.fd, allow);
                            }
                        }
                        drop(pending);
                        // SAFETY: the worker owns every fd it was handed and closes it once.
                        unsafe { libc::close(job.fd) };
                    }
                })
                .context("starting the exec judge thread")?
        };
        let reader_thread = {
            let stop = Arc::clone(&stop);
            let stats = Arc::clone(&stats);
            let group = Arc::clone(&group);
            let mut reader = Reader {
                group,
                known,
                tasks: config.tasks,
                workloads: config.workloads,
                deadline: config.deadline,
                pending,
                tx,
                next_id: 0,
                stats,
                ignore_loaders: ignore,
            };
            std::thread::Builder::new()
                .name("bridle-exec-ask".into())
                .spawn(move || reader.run(&stop))
                .context("starting the exec ask thread")?
        };
        Ok(ExecAsk {
            group,
            stop,
            threads: vec![reader_thread, worker_thread],
            stats,
            marked,
        })
    }

    /// The group's fd, for a [`mounts::MountMarker`] in the workload's first process (the
    /// fd is close-on-exec: the workload never holds it).
    pub fn group_fd(&self) -> RawFd {
        self.group.as_raw_fd()
    }
}

impl Drop for ExecAsk {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The reader ends within a tick and drops the queue's sender, which ends the worker.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Records the processes already in the cgroup tree at `path` as members of workload
/// `workload` in the task table, so their execs are asked too (the kernel records those that
/// fork or move in later). A process that has an entry keeps it. Returns how many were added.
pub fn record_running(path: &Path, workload: u64, tasks: &BpfMap) -> Result<usize> {
    let entry = bridle_common::TaskWorkloads {
        ids: [workload, 0, 0, 0],
    };
    let mut added = 0;
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let procs = dir.join("cgroup.procs");
        let text = match std::fs::read_to_string(&procs) {
            Ok(text) => text,
            // A cgroup removed meanwhile has no processes left to record.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err).with_context(|| format!("reading {}", procs.display())),
        };
        for pid in text.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            match tasks.update(&pid, &entry, bpfmap::BPF_NOEXIST) {
                Ok(()) => added += 1,
                Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {}
                Err(err) => return Err(err).context("writing the task table"),
            }
        }
        if let Ok(read) = std::fs::read_dir(&dir) {
            dirs.extend(
                read.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    Ok(added)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn respond(group: &OwnedFd, fd: RawFd, allow: bool) {
    let response = libc::fanotify_response {
        fd,
        response: if allow {
            libc::FAN_ALLOW
        } else {
            libc::FAN_DENY
        },
    };
    // SAFETY: writes one fanotify_response from a live struct.
    let n = unsafe {
        libc::write(
            group.as_raw_fd(),
            (&response as *const libc::fanotify_response).cast(),
            std::mem::size_of::<libc::fanotify_response>(),
        )
    };
    if n < 0 {
        eprintln!(
            "bridle: warning: answering an exec permission event failed: {}",
            io::Error::last_os_error()
        );
    }
}

/// Marks every filesystem mounted now that can hold executables, and the memfd filesystem.
fn mark_filesystems(group: &OwnedFd) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    let mut seen = HashSet::new();
    let mut marked = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split_whitespace().collect();
        let (Some(devno), Some(mount)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        let fstype = right.split_whitespace().next().unwrap_or("");
        if UNMARKED.contains(&fstype) || !seen.insert((*devno).to_owned()) {
            continue;
        }
        let mount = PathBuf::from(crate::cgroup::unescape_mountinfo(mount));
        match mark(
            group,
            libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
            libc::AT_FDCWD,
            Some(&mount),
        ) {
            Ok(()) => marked.push(mount),
            Err(err) if mount == Path::new("/") => {
                bail!("marking the root filesystem for exec permission events: {err}")
            }
            // Filesystems that refuse permission marks cannot be asked; the backstop judges
            // execs from them.
            Err(_) => {}
        }
    }
    Ok(marked)
}

/// Marks the internal shmem filesystem memfds live on (it has no mount to name), through a
/// memfd of our own.
fn mark_memfds(group: &OwnedFd) -> Option<PathBuf> {
    // SAFETY: memfd_create with a NUL-terminated name.
    let memfd = unsafe { libc::memfd_create(c"bridle-probe".as_ptr(), libc::MFD_CLOEXEC) };
    if memfd < 0 {
        return None;
    }
    // SAFETY: a fresh fd that nothing else owns.
    let memfd = unsafe { OwnedFd::from_raw_fd(memfd) };
    mark(
        group,
        libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
        memfd.as_raw_fd(),
        None,
    )
    .ok()
    .map(|()| PathBuf::from("memfd:"))
}
