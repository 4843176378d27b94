//! The fanotify exec tier: `FAN_OPEN_EXEC_PERM` events answered by the engine.
//!
//! Every exec on a marked filesystem waits in the kernel until this group answers, so the
//! design is about never stalling the machine:
//!
//! - **Outsiders in microseconds.** The reader thread looks the event's pid up in the kernel's
//!   task table (`TASKS`, kept by the fork/exit tracepoints) with one bpf(2) call and answers
//!   `FAN_ALLOW` at once on a miss; it reads nothing under /proc for them.
//! - **Workload events on a worker.** Judging (readlink, fstat, the engine, the map update)
//!   runs on a second thread behind a bounded queue. A full queue, or an answer not given by
//!   the deadline, is answered by the reader with the fail mode (refuse when enforcing, allow
//!   when observing) and logged.
//! - **The backstop agrees.** Before answering `FAN_ALLOW` for a file that has no kernel entry
//!   yet, the worker writes its permit entry, so kill-on-exec never kills a permitted exec.
//!
//! Marks: `FAN_MARK_FILESYSTEM` on every filesystem mounted when the group starts (except
//! pseudo filesystems that hold no executables) plus the internal shmem filesystem behind
//! memfds, so execs through any mount or bind mount of them are asked. A filesystem mounted
//! later is not marked: execs from it meet the kill-on-exec backstop only.

pub mod bpfmap;

use crate::kernel::entries::kernel_dev;
use anyhow::{bail, Context, Result};
use bpfmap::{BpfMap, BPF_NOEXIST};
use bridle_common::{Decision, ExecKey, EFFECT_PERMIT, EFFECT_REFUSE};
use bridle_engine::{Code, Effect, Engine, Object};
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
        mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Longest the reader sleeps between checks of the stop flag and the deadlines.
const TICK: Duration = Duration::from_millis(20);
/// Workload events waiting for the worker; beyond this the fail mode answers.
const QUEUE: usize = 1024;
/// How long a loader open is taken as part of the exec that named it as its interpreter.
const INTERP_WINDOW: Duration = Duration::from_secs(2);
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

/// What the exec ask needs to judge one workload's execs.
pub struct AskConfig {
    /// The workload's cgroup id.
    pub workload: u64,
    /// The policy slot whose exec entries the kill backstop consults for this workload.
    pub slot: u64,
    /// Where refusals (and observed would-be refusals) go, to be reported and audited.
    pub decisions: mpsc::Sender<AskDecision>,
    /// The workload's engine.
    pub engine: Arc<Engine>,
    /// Rule names by index, as the kernel entries number them.
    pub rules: Vec<String>,
    /// Observe mode: allow everything (the backstop reports what it would refuse).
    pub observe: bool,
    /// The policy allows memfd and deleted-file executables.
    pub allow_anonymous: bool,
    /// Longest an exec of the workload waits for the engine before the fail mode answers.
    pub deadline: Duration,
    /// The kernel's task table (`TASKS`).
    pub tasks: BpfMap,
    /// The workload's exec entries (`EXEC_RULES`).
    pub exec_rules: BpfMap,
}

/// Counters of the exec ask.
#[derive(Debug, Default)]
pub struct AskStats {
    /// Events of processes outside the workload, allowed at once.
    pub outsiders: AtomicU64,
    /// Workload events the engine judged.
    pub judged: AtomicU64,
    /// Workload execs refused.
    pub refused: AtomicU64,
    /// Events answered by the fail mode (deadline, overload, internal error).
    pub failed: AtomicU64,
}

struct Pending {
    fd: RawFd,
    deadline: Instant,
    answered: bool,
}

type PendingMap = Arc<Mutex<HashMap<u64, Pending>>>;

/// A running exec ask: the fanotify group and its two threads. Dropping it stops both and
/// closes the group (the kernel then allows whatever was still waiting).
pub struct ExecAsk {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// The counters, shared with the threads.
    pub stats: Arc<AskStats>,
    /// The filesystems marked, as mount points.
    pub marked: Vec<PathBuf>,
}

impl ExecAsk {
    /// Creates the group, marks the filesystems and starts the reader and the worker.
    pub fn start(config: AskConfig) -> Result<ExecAsk> {
        let group = Arc::new(init_group().context("fanotify_init(FAN_CLASS_CONTENT)")?);
        let marked = mark_filesystems(&group)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(AskStats::default());
        let pending: PendingMap = Arc::new(Mutex::new(HashMap::new()));
        let (tx, rx) = mpsc::sync_channel::<(u64, RawFd, i32)>(QUEUE);
        let fail_allow = config.observe;
        let workload = config.workload;
        let deadline = config.deadline;
        let slot = config.slot;
        let decisions = config.decisions.clone();
        let AskConfig {
            engine,
            rules,
            observe,
            allow_anonymous,
            tasks,
            exec_rules,
            ..
        } = config;
        let mut worker = Worker {
            slot,
            decisions,
            engine,
            rules,
            observe,
            allow_anonymous,
            loaders: known_loaders(),
            exec_rules,
            interp: HashMap::new(),
        };
        let worker_thread = {
            let group = Arc::clone(&group);
            let pending = Arc::clone(&pending);
            let stats = Arc::clone(&stats);
            std::thread::Builder::new()
                .name("bridle-exec-judge".into())
                .spawn(move || {
                    while let Ok((id, fd, pid)) = rx.recv() {
                        let allow = worker.decide(fd, pid, &stats);
                        let mut pending = lock(&pending);
                        if let Some(p) = pending.remove(&id) {
                            if !p.answered {
                                respond(&group, fd, allow);
                            }
                        }
                        drop(pending);
                        // SAFETY: the worker owns every fd it was handed and closes it once.
                        unsafe { libc::close(fd) };
                    }
                })
                .context("starting the exec judge thread")?
        };
        let reader_thread = {
            let stop = Arc::clone(&stop);
            let stats = Arc::clone(&stats);
            let group = Arc::clone(&group);
            std::thread::Builder::new()
                .name("bridle-exec-ask".into())
                .spawn(move || {
                    let mut reader = Reader {
                        group,
                        tasks,
                        workload,
                        deadline,
                        fail_allow,
                        pending,
                        tx,
                        next_id: 0,
                        stats,
                    };
                    reader.run(&stop);
                })
                .context("starting the exec ask thread")?
        };
        Ok(ExecAsk {
            stop,
            threads: vec![reader_thread, worker_thread],
            stats,
            marked,
        })
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
        let mount = PathBuf::from(unescape_mount(mount));
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
    // memfds live on an internal shmem mount with no path: mark it through a memfd.
    // SAFETY: memfd_create with a NUL-terminated name.
    let memfd = unsafe { libc::memfd_create(c"bridle-probe".as_ptr(), libc::MFD_CLOEXEC) };
    if memfd >= 0 {
        // SAFETY: a fresh fd that nothing else owns.
        let memfd = unsafe { OwnedFd::from_raw_fd(memfd) };
        if mark(
            group,
            libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
            memfd.as_raw_fd(),
            None,
        )
        .is_ok()
        {
            marked.push(PathBuf::from("memfd:"));
        }
    }
    Ok(marked)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Reader {
    group: Arc<OwnedFd>,
    tasks: BpfMap,
    workload: u64,
    deadline: Duration,
    fail_allow: bool,
    pending: PendingMap,
    tx: mpsc::SyncSender<(u64, RawFd, i32)>,
    next_id: u64,
    stats: Arc<AskStats>,
}

impl Reader {
    fn run(&mut self, stop: &AtomicBool) {
        // fanotify_event_metadata is 24 bytes; read many at once.
        let mut buf = vec![0u8; 24 * 512];
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

    fn handle(&mut self, mut events: &[u8]) {
        while events.len() >= 24 {
            let len = u32::from_ne_bytes([events[0], events[1], events[2], events[3]]) as usize;
            if len < 24 || len > events.len() {
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
            let ours = matches!(
                self.tasks.lookup::<u32, u64>(&(pid as u32)),
                Ok(Some(w)) if w == self.workload
            );
            if !ours {
                self.stats.outsiders.fetch_add(1, Ordering::Relaxed);
                respond(&self.group, fd, true);
                // SAFETY: as above.
                unsafe { libc::close(fd) };
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            lock(&self.pending).insert(
                id,
                Pending {
                    fd,
                    deadline: Instant::now() + self.deadline,
                    answered: false,
                },
            );
            if self.tx.try_send((id, fd, pid)).is_err() {
                lock(&self.pending).remove(&id);
                self.fail(fd, pid, "the judge's queue is full");
                // SAFETY: the worker never saw this fd.
                unsafe { libc::close(fd) };
            }
        }
    }

    /// Answers every workload event past its deadline by the fail mode. The worker still owns
    /// (and later closes) the fd, so its number cannot be reused while it is in the table.
    fn expire(&mut self) {
        let now = Instant::now();
        let mut late = Vec::new();
        for p in lock(&self.pending).values_mut() {
            if !p.answered && p.deadline <= now {
                p.answered = true;
                late.push(p.fd);
            }
        }
        for fd in late {
            self.fail(fd, 0, "the engine did not answer by the deadline");
        }
    }

    fn fail(&self, fd: RawFd, pid: i32, why: &str) {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        let outcome = if self.fail_allow {
            "allowed"
        } else {
            "refused"
        };
        eprintln!("bridle: warning: exec (pid {pid}) {outcome} by the fail mode: {why}");
        respond(&self.group, fd, self.fail_allow);
    }
}

/// A decision the fanotify tier took in user space (the kernel never saw the exec).
#[derive(Debug, Clone)]
pub struct AskDecision {
    /// The process that tried to exec.
    pub pid: i32,
    /// The resolved path of the file.
    pub path: String,
    /// The verdict code.
    pub code: Code,
    /// The deciding rule.
    pub rule: Option<String>,
    /// Observe mode let it through.
    pub observed: bool,
}

struct Worker {
    /// The policy slot the backstop entries go under.
    slot: u64,
    decisions: mpsc::Sender<AskDecision>,
    engine: Arc<Engine>,
    rules: Vec<String>,
    observe: bool,
    allow_anonymous: bool,
    /// The dynamic loaders of this system, by identity.
    loaders: HashSet<(u64, u64)>,
    exec_rules: BpfMap,
    /// The loader each exec will open next, by pid: (dev, ino, when).
    interp: HashMap<i32, (u64, u64, Instant)>,
}

impl Worker {
    /// Judges one workload exec open; returns whether to allow it.
    fn decide(&mut self, fd: RawFd, pid: i32, stats: &AskStats) -> bool {
        stats.judged.fetch_add(1, Ordering::Relaxed);
        match self.judge(fd, pid) {
            Ok(allow) => {
                if !allow {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                }
                allow
            }
            Err(err) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                let allow = self.observe;
                eprintln!(
                    "bridle: warning: exec (pid {pid}) {} by the fail mode: {err:#}",
                    if allow { "allowed" } else { "refused" }
                );
                allow
            }
        }
    }

    fn judge(&mut self, fd: RawFd, pid: i32) -> Result<bool> {
        // SAFETY: fstat into a zeroed stat buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is the event's open file; `st` is a live buffer.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Err(io::Error::last_os_error()).context("fstat on the exec'd file");
        }
        let (dev, ino) = (kernel_dev(st.st_dev), st.st_ino);
        // The dynamic loader of a binary this process is executing: part of that exec, which
        // was judged already. A direct exec of the loader has no such predecessor.
        if let Some((d, i, at)) = self.interp.remove(&pid) {
            if (d, i) == (dev, ino) && at.elapsed() < INTERP_WINDOW {
                return Ok(true);
            }
        }
        if self.allow_anonymous && self.loaders.contains(&(dev, ino)) {
            // With anonymous executables allowed, a loader open without a judged predecessor
            // may be the interpreter of a memfd exec, which no filesystem mark can ask about
            // on this kernel. Allow it without an entry: a direct exec of the loader is then
            // still refused by the kill-on-exec backstop, which finds no permit for it.
            if self
                .exec_rules
                .lookup::<_, Decision>(&ExecKey {
                    slot: self.slot,
                    dev,
                    ino,
                })?
                .is_none()
            {
                return Ok(true);
            }
        }
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .context("resolving the exec'd file's path")?;
        let key = ExecKey {
            slot: self.slot,
            dev,
            ino,
        };
        let entry: Option<Decision> = self.exec_rules.lookup(&key).context("reading EXEC_RULES")?;
        // Refusals match by identity: a hard link or bind mount of a refused file is refused.
        if let Some(d) = entry.filter(|d| d.effect == EFFECT_REFUSE) {
            let code = Code::ALL
                .get(d.code as usize)
                .copied()
                .unwrap_or(Code::NoMatchingRule);
            let rule = self.rules.get(d.rule as usize).cloned();
            return Ok(self.refuse(pid, &link.display().to_string(), code, rule.as_deref()));
        }
        let anonymous = st.st_nlink == 0;
        let object = if anonymous {
            Object::AnonymousExec(
                link.display()
                    .to_string()
                    .trim_start_matches('/')
                    .to_owned(),
            )
        } else {
            Object::Exec(link.clone())
        };
        let verdict = self.engine.judge(&object);
        let shown = link.display().to_string();
        if verdict.effect != Effect::Permit {
            return Ok(self.refuse(pid, &shown, verdict.code, verdict.rule.as_deref()));
        }
        if verdict.observed.is_some() {
            // Observe mode: allowed; the backstop reports what it would have refused.
            return Ok(true);
        }
        if entry.is_none() {
            let rule = verdict
                .rule
                .as_deref()
                .and_then(|r| self.rules.iter().position(|n| n == r))
                .map_or(u32::MAX, |i| i as u32);
            let permit = Decision {
                effect: EFFECT_PERMIT,
                code: verdict.code.index(),
                rule,
                ..Decision::default()
            };
            match self.exec_rules.update(&key, &permit, BPF_NOEXIST) {
                Ok(()) => {}
                Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {}
                Err(err) => {
                    return Err(err).context("writing the permit entry the backstop checks")
                }
            }
        }
        if let Some(loader) = elf_interpreter(fd) {
            if let Ok(meta) = std::fs::metadata(&loader) {
                use std::os::unix::fs::MetadataExt;
                // Entries of execs that never opened their loader (they failed) go stale;
                // keep the table small rather than exact.
                if self.interp.len() > 4096 {
                    self.interp.clear();
                }
                self.interp
                    .insert(pid, (kernel_dev(meta.dev()), meta.ino(), Instant::now()));
            }
        }
        Ok(true)
    }

    /// Hands the refusal to the reporter (which prints and audits it); returns the answer.
    fn refuse(&self, pid: i32, path: &str, code: Code, rule: Option<&str>) -> bool {
        let decision = AskDecision {
            pid,
            path: path.to_owned(),
            code,
            rule: rule.map(str::to_owned),
            observed: self.observe,
        };
        if let Err(lost) = self.decisions.send(decision) {
            // The reporter is gone (shutting down): the decision still reaches the operator.
            let d = lost.0;
            eprintln!("bridle: refused exec {} ({})", d.path, d.code.as_str());
        }
        self.observe
    }
}

/// The identities of the loaders named by the shell's and bridle's own `PT_INTERP`.
fn known_loaders() -> HashSet<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = HashSet::new();
    for exe in [Path::new("/bin/sh"), Path::new("/proc/self/exe")] {
        let Ok(file) = std::fs::File::open(exe) else {
            continue;
        };
        if let Some(meta) =
            elf_interpreter(file.as_raw_fd()).and_then(|l| std::fs::metadata(l).ok())
        {
            out.insert((kernel_dev(meta.dev()), meta.ino()));
        }
    }
    out
}

/// The `PT_INTERP` path of a 64-bit ELF, read through the event's fd.
fn elf_interpreter(fd: RawFd) -> Option<PathBuf> {
    let header = pread(fd, 0, 64)?;
    if header.get(..4)? != b"\x7fELF" || header[4] != 2 {
        return None;
    }
    let phoff = u64::from_le_bytes(header[0x20..0x28].try_into().ok()?);
    let phentsize = u16::from_le_bytes(header[0x36..0x38].try_into().ok()?) as usize;
    let phnum = u16::from_le_bytes(header[0x38..0x3a].try_into().ok()?) as usize;
    if phentsize < 56 || phnum > 128 {
        return None;
    }
    let table = pread(fd, phoff, phentsize * phnum)?;
    for ph in table.chunks_exact(phentsize) {
        if u32::from_le_bytes(ph[0..4].try_into().ok()?) == 3 {
            let off = u64::from_le_bytes(ph[8..16].try_into().ok()?);
            let size = u64::from_le_bytes(ph[32..40].try_into().ok()?) as usize;
            if size == 0 || size > 4096 {
                return None;
            }
            let raw = pread(fd, off, size)?;
            let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
            return Some(PathBuf::from(std::ffi::OsStr::from_bytes(&raw[..end])));
        }
    }
    None
}

fn pread(fd: RawFd, offset: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    // SAFETY: reads at most `len` bytes into a buffer of that length.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), len, offset as libc::off_t) };
    (n == len as isize).then_some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mount("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }

    #[test]
    fn the_interpreter_of_a_dynamic_binary_is_found() {
        let file = std::fs::File::open("/bin/sh").expect("open /bin/sh");
        let interp = elf_interpreter(file.as_raw_fd()).expect("a PT_INTERP");
        assert!(interp.to_string_lossy().contains("ld-linux"), "{interp:?}");
    }
}
