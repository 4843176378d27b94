//! Shared helpers for bridle's integration tests.
//!
//! The tests drive the real `bridle` binary. `cargo xtask test` builds it and passes its path in
//! `BRIDLE_BIN`; run by hand, the tests fall back to the workspace's release, then debug build.

use std::path::PathBuf;

/// Path of the `bridle` binary under test.
pub fn bridle_bin() -> PathBuf {
    find_bridle_bin().unwrap_or_else(|| {
        panic!("no bridle binary: run `cargo xtask test`, or build it and set BRIDLE_BIN")
    })
}

/// The `bridle` binary under test, if one can be found.
fn find_bridle_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("BRIDLE_BIN") {
        return Some(PathBuf::from(bin));
    }
    let target = workspace_root().join("target");
    ["release", "debug"]
        .into_iter()
        .map(|profile| target.join(profile).join("bridle"))
        .find(|candidate| candidate.is_file())
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Path of a policy shipped in `policies/`.
pub fn shipped_policy(name: &str) -> PathBuf {
    workspace_root().join("policies").join(name)
}

use std::{
    io::Read,
    process::{Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// Fails the test unless it runs as root: kernel tests never skip silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads eBPF programs and creates cgroups: it must run as root (euid is {euid})"
    );
}

static KERNEL: Mutex<()> = Mutex::new(());

/// Where the host-wide test lock lives: the tests of two checkouts on one machine would
/// otherwise see each other's programs as residue.
const HOST_LOCK: &str = "/run/lock/bridle-kernel-tests.lock";

/// Held while a test loads programs: the in-process lock and a host-wide `flock`.
pub struct KernelGuard {
    _thread: MutexGuard<'static, ()>,
    _host: Option<std::fs::File>,
}

/// Serialises the tests that load programs, within this process and across the host, so each
/// can check that it left nothing behind.
pub fn kernel_lock() -> KernelGuard {
    let thread = KERNEL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let host = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(HOST_LOCK)
        .ok();
    if let Some(file) = &host {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on an fd this function owns; the lock ends when the file closes.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    }
    KernelGuard {
        _thread: thread,
        _host: host,
    }
}

/// What a finished process left.
#[derive(Debug)]
pub struct Finished {
    /// The process id it ran as.
    pub pid: u32,
    /// Exit status (128 + signal for a signal death).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `cmd` to completion with a deadline; on the deadline it kills the process (by pid)
/// and fails the test.
pub fn finish(mut cmd: Command, deadline: Duration) -> Finished {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    use std::os::unix::process::ExitStatusExt;
    Finished {
        pid: child.id(),
        code: status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_root() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
        })
        .expect("a cgroup v2 mount")
}

/// cgroups that `bridle run` created and that still exist, except those of a live `bridle`
/// that is not the binary under test (another checkout's run on a shared machine).
pub fn leftover_run_cgroups() -> Vec<PathBuf> {
    // Where the binary under test is unknown (a test guest with nothing else running), every
    // live bridle's cgroup counts.
    let ours = find_bridle_bin().and_then(|b| std::fs::canonicalize(b).ok());
    std::fs::read_dir(cgroup2_root())
        .expect("list cgroup root")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let Some(pid) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("bridle-run-"))
            else {
                return false;
            };
            match std::fs::read_link(format!("/proc/{pid}/exe")) {
                // Its creator is gone: a leftover, whoever made it.
                Err(_) => true,
                Ok(exe) => ours.as_ref().is_none_or(|o| *o == exe),
            }
        })
        .collect()
}

/// bridle's programs the kernel still has loaded, as `bpftool prog list` names them.
pub fn loaded_bridle_programs() -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["prog", "list"])
        .output()
        .expect("bpftool is needed to list loaded programs (cargo xtask setup installs it)");
    assert!(out.status.success(), "bpftool prog list failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            [
                "exec_guard",
                "exec_lsm",
                "task_fork",
                "task_attach",
                "cgroup_created",
                "task_exit",
                "connect4",
                "connect6",
                "sendmsg4",
                "sendmsg6",
                "sock_create",
                "recvmsg4",
                "recvmsg6",
                "connect_unix",
                "sendmsg_unix",
            ]
            .iter()
            .any(|n| l.contains(&format!("name {n} ")))
        })
        .map(str::to_owned)
        .collect()
}

/// Pins under bridle's bpffs directory.
pub fn leftover_pins() -> bool {
    Path::new("/sys/fs/bpf/bridle").exists()
}

use std::path::Path;

/// Fails unless bridle left nothing behind: no `bridle-run-*` cgroup, no loaded bridle
/// program, no pin. The kernel frees a detached program a moment after its last fd closes,
/// and an exiting workload's cgroup a moment after its last task: this waits for that,
/// boundedly.
pub fn assert_no_residue(context: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let leftovers = || (leftover_run_cgroups(), loaded_bridle_programs());
    let mut left = leftovers();
    while (!left.0.is_empty() || !left.1.is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        left = leftovers();
    }
    assert_eq!(left.0, Vec::<PathBuf>::new(), "{context}: cgroups left");
    assert_eq!(left.1, Vec::<String>::new(), "{context}: programs left");
    assert!(!leftover_pins(), "{context}: pins left");
}

use std::{
    net::{SocketAddr, UdpSocket},
    process::Child,
};

/// Where the tests' dnsmasq listens (a port is drawn per instance).
pub const DNSMASQ_IP: &str = "127.0.0.77";

/// A dnsmasq on loopback serving local test records (`allowed.test` 127.0.0.2, `other.test`
/// 127.0.0.3, `v6only.test` ::1, `alias.cname.test` a CNAME of `target.test` 127.0.0.4,
/// `nx.test` NXDOMAIN); killed by pid when dropped, also on a failed test.
pub struct Dnsmasq {
    child: Child,
    /// Where it answers.
    pub addr: SocketAddr,
}

impl Dnsmasq {
    /// Starts one with `extra` options and waits until it answers.
    pub fn start(extra: &[&str]) -> Dnsmasq {
        let port = free_udp_port(DNSMASQ_IP);
        let mut cmd = Command::new("/usr/sbin/dnsmasq");
        cmd.args([
            "--no-daemon",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--pid-file=",
            "--user=root",
            &format!("--listen-address={DNSMASQ_IP}"),
            &format!("--port={port}"),
            "--address=/allowed.test/127.0.0.2",
            "--address=/other.test/127.0.0.3",
            "--host-record=v6only.test,::1",
            "--host-record=target.test,127.0.0.4",
            "--cname=alias.cname.test,target.test",
            "--address=/nx.test/",
        ]);
        cmd.args(extra);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .expect("start /usr/sbin/dnsmasq (cargo xtask setup installs dnsmasq-base)");
        let addr: SocketAddr = format!("{DNSMASQ_IP}:{port}").parse().expect("addr");
        let d = Dnsmasq { child, addr };
        // Ready when it answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while ask(d.addr, "allowed.test").is_none() {
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not come up on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port(ip: &str) -> u16 {
    let s = UdpSocket::bind(format!("{ip}:0")).expect("bind");
    s.local_addr().expect("addr").port()
}

/// Asks `server` for `name` directly (from the test process, outside every workload); the
/// first A address of the answer.
pub fn ask(server: SocketAddr, name: &str) -> Option<[u8; 4]> {
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RData, RecordType},
    };
    const ID: u16 = 0x4242;
    let mut query = Message::query();
    query.metadata.id = ID;
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    let s = UdpSocket::bind("127.0.0.1:0").ok()?;
    s.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
    s.send_to(&query.to_vec().ok()?, server).ok()?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).ok()?;
    let answer = Message::from_vec(&buf[..n]).ok()?;
    if answer.metadata.id != ID {
        return None;
    }
    answer.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.0.octets()),
        _ => None,
    })
}
