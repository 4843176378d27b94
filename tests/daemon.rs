//! `bridle daemon` against the real kernel: pinned enforcement that outlives the daemon,
//! adoption on restart, all-or-nothing reloads, the control socket, the notify protocol, the
//! shipped systemd unit, and host names decided by the daemon's resolver (against a real
//! dnsmasq on loopback).

use bridle_tests::{
    bridle_bin, cgroup2_root, finish, kernel_lock, loaded_bridle_programs, require_root,
    workspace_root, Dnsmasq, Finished,
};
use std::{
    collections::BTreeMap,
    fs,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const DEADLINE: Duration = Duration::from_secs(60);
/// A shell's status when the command it ran was killed by SIGKILL (the kill-on-exec tier).
const KILLED: i32 = 128 + libc::SIGKILL;
/// A shell's status when it could not exec a command (execve failed with EPERM).
const EPERM_IN_SHELL: i32 = 126;

/// A policy that permits the system's programs and refuses /usr/bin/touch by name.
const REFUSE_TOUCH: &str = r#"
name = "daemon-test"
default = "refuse"
permit_ttl = "10m"

[[rule]]
name = "system"
effect = "permit"
exec = ["/usr/bin/*", "/bin/*"]

[[rule]]
name = "no-touch"
effect = "refuse"
exec = ["/usr/bin/touch"]
"#;

/// Everything one test's daemon uses; dropping it stops the daemon (by pid), unloads its pins
/// and removes its cgroups, whatever happened.
struct Setup {
    dir: tempfile::TempDir,
    group: PathBuf,
    pin_dir: PathBuf,
    daemon: Option<Child>,
    notify: UnixDatagram,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let name = format!("bridle-dtest-{tag}-{}", std::process::id());
        let group = cgroup2_root().join(&name);
        fs::create_dir_all(&group).expect("create test cgroup parent");
        fs::create_dir_all(dir.path().join("policies")).expect("policies dir");
        fs::write(dir.path().join("policies/p.toml"), REFUSE_TOUCH).expect("policy");
        fs::write(
            dir.path().join("bridle.toml"),
            format!(
                "state_dir = \"{}\"\npolicy_dir = \"{}\"\nscan_interval = \"100ms\"\n\n[[confine]]\ncgroup = \"{name}/*\"\npolicy = \"p\"\n",
                dir.path().join("state").display(),
                dir.path().join("policies").display()
            ),
        )
        .expect("config");
        let notify = UnixDatagram::bind(dir.path().join("notify.sock")).expect("notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Setup {
            pin_dir: PathBuf::from(format!(
                "/sys/fs/bpf/bridle-dtest-{tag}-{}",
                std::process::id()
            )),
            dir,
            group,
            daemon: None,
            notify,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("ctl/bridle.sock")
    }

    fn start(&mut self) {
        let child = Command::new(bridle_bin())
            .arg("daemon")
            .arg("--config")
            .arg(self.dir.path().join("bridle.toml"))
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--socket")
            .arg(self.socket())
            .env("NOTIFY_SOCKET", self.dir.path().join("notify.sock"))
            .stdout(Stdio::null())
            // Appended: one log across restarts tells the whole story of a test.
            .stderr(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join("daemon.log"))
                    .expect("log"),
            )
            .spawn()
            .expect("start the daemon");
        self.daemon = Some(child);
        self.wait_notify("READY=1");
    }

    /// Waits for a notify datagram containing `what`; returns every datagram seen.
    fn wait_notify(&self, what: &str) -> Vec<String> {
        let start = Instant::now();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while start.elapsed() < DEADLINE {
            if let Ok(n) = self.notify.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = text.lines().any(|l| l == what || l.starts_with(what));
                seen.push(text);
                if hit {
                    return seen;
                }
            }
        }
        panic!("no {what} from the daemon; got {seen:?}\n{}", self.log());
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn signal(&mut self, signal: i32) {
        if let Some(child) = self.daemon.as_mut() {
            // SAFETY: kill(2) on the pid of the daemon this test started.
            unsafe { libc::kill(child.id() as i32, signal) };
            let _ = child.wait();
        }
        self.daemon = None;
    }

    fn bridle(&self, args: &[&str]) -> Finished {
        let mut cmd = Command::new(bridle_bin());
        cmd.args(args)
            .env("BRIDLE_SOCKET", self.socket())
            .env("BRIDLE_STATE_DIR", self.dir.path().join("state"));
        finish(cmd, DEADLINE)
    }

    /// Runs `script` in workload cgroup `name` (created if needed) and returns its exit status.
    fn in_workload(&self, name: &str, script: &str) -> i32 {
        let cg = self.group.join(name);
        fs::create_dir_all(&cg).expect("workload cgroup");
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(format!(
            "echo $$ > {}/cgroup.procs && {script}",
            cg.display()
        ));
        finish(cmd, DEADLINE).code
    }

    /// Runs `script` in workload cgroup `name` (created if needed) with `$PROBE` set to the
    /// probe binary, and returns what it printed.
    fn run_in(&self, name: &str, script: &str) -> Finished {
        let cg = self.group.join(name);
        fs::create_dir_all(&cg).expect("workload cgroup");
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && {script}",
                cg.display()
            ))
            .env("PROBE", probe());
        finish(cmd, DEADLINE)
    }

    /// Adds `text` (TOML) to the daemon's configuration file.
    fn configure(&self, text: &str) {
        let path = self.dir.path().join("bridle.toml");
        let mut config = fs::read_to_string(&path).expect("config");
        config.push_str(text);
        fs::write(&path, config).expect("config");
    }

    /// Replaces the workloads' policy.
    fn write_policy(&self, text: &str) {
        fs::write(self.dir.path().join("policies/p.toml"), text).expect("policy");
    }

    /// `bridle status --json`, parsed.
    fn status_json(&self) -> serde_json::Value {
        let status = self.bridle(&["status", "--json"]);
        assert_eq!(status.code, 0, "{}", status.stderr);
        serde_json::from_str(&status.stdout).expect("status JSON")
    }

    /// The exec tier the running daemon reports.
    fn exec_tier(&self) -> String {
        let status = self.bridle(&["status", "--json"]);
        assert_eq!(status.code, 0, "{}", status.stderr);
        let json: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
        json["tiers"]["exec"]
            .as_str()
            .and_then(|t| t.split(':').next())
            .expect("tiers.exec")
            .to_owned()
    }

    /// The status `in_workload` returns for an exec the running daemon refuses: the shell's
    /// 126 for EPERM (LSM and fanotify tiers), or 137 for a SIGKILL (kill tier).
    fn refused(&self) -> i32 {
        if self.exec_tier() == "kill" {
            KILLED
        } else {
            EPERM_IN_SHELL
        }
    }

    fn wait_workloads(&self, n: usize) {
        let start = Instant::now();
        while start.elapsed() < DEADLINE {
            let f = self.bridle(&["status", "--json"]);
            if f.code == 0 && f.stdout.matches("\"cgroup_id\"").count() == n {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the daemon never confined {n} workload(s)\n{}", self.log());
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.signal(libc::SIGTERM);
        let _ = Command::new(bridle_bin())
            .args(["unload", "--pin-dir"])
            .arg(&self.pin_dir)
            .arg("--socket")
            .arg(self.socket())
            .status();
        if let Ok(entries) = fs::read_dir(&self.group) {
            // Child cgroups only: the control files beside them are not to be removed.
            for e in entries.flatten().filter(|e| e.path().is_dir()) {
                let _ = fs::write(e.path().join("cgroup.kill"), "1");
                let start = Instant::now();
                while fs::remove_dir(e.path()).is_err() && start.elapsed() < Duration::from_secs(5)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = fs::remove_dir(&self.group);
    }
}

/// The status of an exec the pinned programs refuse while no daemon runs, on exec tier `tier`:
/// the fanotify tier's group dies with the daemon, and the pinned kill-on-exec backstop refuses
/// instead.
fn refused_by_pins(tier: &str) -> i32 {
    if tier == "lsm" {
        EPERM_IN_SHELL
    } else {
        KILLED
    }
}

fn wait_no_programs() {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !loaded_bridle_programs().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        loaded_bridle_programs(),
        Vec::<String>::new(),
        "programs left"
    );
}

#[test]
fn enforcement_survives_a_killed_daemon_and_a_restart_adopts_it() {
    require_root();
    let _k = kernel_lock();
    let mut s = Setup::new("adopt");
    fs::create_dir_all(s.group.join("w1")).expect("w1");
    s.start();
    let status = s.wait_notify("STATUS=");
    assert!(
        status
            .iter()
            .any(|d| d.contains("STATUS=confining 1 workload(s)")),
        "{status:?}"
    );
    let marker = s.dir.path().join("marker");
    let touch = format!("/usr/bin/touch {}", marker.display());
    let tier = s.exec_tier();
    assert_eq!(s.in_workload("w1", &touch), s.refused(), "tier {tier}");
    assert_eq!(
        s.in_workload("w1", "/usr/bin/true"),
        0,
        "a permitted exec runs"
    );

    s.signal(libc::SIGKILL);
    // No daemon: the pinned programs still hold the workload.
    assert_eq!(
        s.in_workload("w1", &touch),
        refused_by_pins(&tier),
        "tier {tier}"
    );
    assert!(
        !marker.exists(),
        "a refused exec ran while the daemon was down"
    );
    // As a bridle from before the socket programs' clock offset left its pins: without it.
    let offset_pin = s.pin_dir.join("maps/BOOT_OFFSET");
    fs::remove_file(&offset_pin).expect("remove the BOOT_OFFSET pin");

    s.start();
    let status = s.bridle(&["status", "--json"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(
        status.stdout.contains("\"adopted_pins\": true"),
        "{}",
        status.stdout
    );
    assert!(offset_pin.exists(), "the missing map is created and pinned");
    // A cgroup created while the daemon runs is confined within its scan interval.
    fs::create_dir_all(s.group.join("w2")).expect("w2");
    s.wait_workloads(2);
    assert_eq!(s.in_workload("w2", &touch), s.refused());
    assert!(!marker.exists());

    // Nothing lost: the refusal while no daemon ran reached the audit trail after the restart.
    s.signal(libc::SIGTERM);
    let export = s.bridle(&[
        "audit",
        "export",
        "--format",
        "jsonl",
        "--verdict",
        "refuse",
    ]);
    let refusals = export
        .stdout
        .lines()
        .filter(|l| l.contains("/usr/bin/touch"))
        .count();
    assert_eq!(
        refusals,
        3,
        "every refusal is in the audit trail\n{}",
        s.log()
    );
    let verify = s.bridle(&["audit", "verify"]);
    assert_eq!(verify.code, 0, "{}", verify.stderr);

    drop(s);
    wait_no_programs();
}

#[test]
fn processes_running_before_the_daemon_and_moved_in_later_are_judged() {
    require_root();
    let _k = kernel_lock();
    let mut s = Setup::new("running");
    let cg = s.group.join("w1");
    fs::create_dir_all(&cg).expect("w1");
    let go = s.dir.path().join("go");
    let rc = s.dir.path().join("rc");
    let marker = s.dir.path().join("marker");
    // Already in the workload's cgroup when the daemon starts.
    let mut early = Command::new("/bin/sh");
    early
        .arg("-c")
        .arg(format!(
            "echo $$ > {procs}; while [ ! -e {go} ]; do sleep 0.05; done; /usr/bin/touch {marker}; echo $? > {rc}",
            procs = cg.join("cgroup.procs").display(),
            go = go.display(),
            marker = marker.display(),
            rc = rc.display(),
        ))
        .stderr(Stdio::null());
    let mut early = early.spawn().expect("early process");
    let start = Instant::now();
    while !fs::read_to_string(cg.join("cgroup.procs"))
        .unwrap_or_default()
        .contains(&early.id().to_string())
        && start.elapsed() < DEADLINE
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    s.start();
    s.wait_workloads(1);
    fs::write(&go, "").expect("go");
    let status = early.wait().expect("early process ends");
    assert!(status.success(), "{status:?}");
    let code: i32 = fs::read_to_string(&rc)
        .expect("its exit status")
        .trim()
        .parse()
        .expect("a number");
    assert_eq!(code, s.refused(), "{}", s.log());
    assert!(!marker.exists(), "the refused exec ran");
    // Moved in from outside while the daemon runs (the shell moves itself, then execs).
    let touch = format!("/usr/bin/touch {}", marker.display());
    assert_eq!(s.in_workload("w1", &touch), s.refused(), "{}", s.log());
    assert!(!marker.exists(), "the refused exec ran");
    // Outsiders are not judged.
    let outside = Command::new("/usr/bin/touch")
        .arg(&marker)
        .status()
        .expect("touch outside");
    assert!(outside.success(), "an outsider's exec was refused");
}

/// A cgroup a test makes outside the daemon's `[[confine]]` globs; removed on drop.
struct LooseCgroup(PathBuf);

impl Drop for LooseCgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.0.join("cgroup.kill"), "1");
        let start = Instant::now();
        while fs::remove_dir(&self.0).is_err() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs `script` in `cgroup` and returns its exit status.
fn in_cgroup(cgroup: &std::path::Path, script: &str) -> i32 {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(format!(
        "echo $$ > {}/cgroup.procs && {script}",
        cgroup.display()
    ));
    finish(cmd, DEADLINE).code
}

/// Pins left by a bridle whose programs read other maps (before IPv4 and IPv6 shared one
/// address trie) are not adopted: entries written for this bridle would never reach those
/// programs. The daemon refuses to start, naming the pin directory and `bridle unload`, and the
/// pinned programs go on enforcing.
#[test]
fn pins_of_an_earlier_layout_are_refused_by_name_and_keep_enforcing() {
    require_root();
    let _k = kernel_lock();
    let mut s = Setup::new("layout");
    fs::create_dir_all(s.group.join("w1")).expect("w1");
    s.start();
    s.wait_workloads(1);
    let tier = s.exec_tier();
    let marker = s.dir.path().join("marker");
    let touch = format!("/usr/bin/touch {}", marker.display());
    assert_eq!(s.in_workload("w1", &touch), s.refused(), "tier {tier}");
    s.signal(libc::SIGKILL);
    // The earlier layout: the address trie pinned as NET4_RULES, no NET_RULES.
    let maps = s.pin_dir.join("maps");
    fs::rename(maps.join("NET_RULES"), maps.join("NET4_RULES")).expect("rename the pin");

    let mut cmd = Command::new(bridle_bin());
    cmd.arg("daemon")
        .arg("--config")
        .arg(s.dir.path().join("bridle.toml"))
        .arg("--pin-dir")
        .arg(&s.pin_dir)
        .arg("--socket")
        .arg(s.socket());
    let refused = finish(cmd, DEADLINE);
    assert_ne!(refused.code, 0, "the daemon started on foreign pins");
    let unload = format!("bridle unload --pin-dir {}", s.pin_dir.display());
    assert!(
        refused.stderr.contains("come from an earlier bridle") && refused.stderr.contains(&unload),
        "{}",
        refused.stderr
    );
    // Nothing was detached: the pinned programs still refuse.
    assert_eq!(
        s.in_workload("w1", &touch),
        refused_by_pins(&tier),
        "tier {tier}"
    );
    assert!(!marker.exists(), "a refused exec ran");
}

#[test]
fn confine_and_release_on_request_hold_across_restarts() {
    require_root();
    let _k = kernel_lock();
    let mut s = Setup::new("request");
    let loose =
        LooseCgroup(cgroup2_root().join(format!("bridle-dtest-loose-{}", std::process::id())));
    fs::create_dir_all(&loose.0).expect("loose cgroup");
    let x = loose.0.display().to_string();
    let policy = s.dir.path().join("policies/p.toml").display().to_string();
    let marker = s.dir.path().join("marker");
    let touch = format!("/usr/bin/touch {}", marker.display());
    s.start();
    s.wait_workloads(0);
    let confined = s.bridle(&["confine", "--policy", &policy, &x]);
    assert_eq!(confined.code, 0, "{}\n{}", confined.stderr, s.log());
    assert!(confined.stdout.contains("confined"), "{}", confined.stdout);
    s.wait_workloads(1);
    assert_eq!(in_cgroup(&loose.0, &touch), s.refused(), "{}", s.log());
    assert_eq!(in_cgroup(&loose.0, "/usr/bin/true"), 0);
    // A policy with an error is refused with its place, and the running one stays.
    let broken = s.dir.path().join("broken.toml");
    fs::write(
        &broken,
        "name = \"b\"\n[[rule]]\nname = \"x\"\neffect = \"permit\"\nexec = [\"relative\"]\n",
    )
    .expect("broken policy");
    let refused = s.bridle(&["confine", "--policy", &broken.display().to_string(), &x]);
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(
        refused.stderr.contains(&format!("{}:5:", broken.display())),
        "{}",
        refused.stderr
    );
    assert_eq!(
        in_cgroup(&loose.0, &touch),
        s.refused(),
        "the old policy stays"
    );
    // A restart confines it again.
    s.signal(libc::SIGTERM);
    s.start();
    s.wait_workloads(1);
    assert_eq!(in_cgroup(&loose.0, &touch), s.refused(), "{}", s.log());
    assert!(!marker.exists(), "a refused exec ran");
    // Released: nothing judges it any more, before or after a restart.
    let released = s.bridle(&["release", &x]);
    assert_eq!(released.code, 0, "{}", released.stderr);
    s.wait_workloads(0);
    assert_eq!(in_cgroup(&loose.0, &touch), 0, "{}", s.log());
    s.signal(libc::SIGTERM);
    s.start();
    std::thread::sleep(Duration::from_millis(300));
    s.wait_workloads(0);

    // A cgroup a [[confine]] entry matches stays released across scans, until it is confined
    // on request again.
    fs::create_dir_all(s.group.join("w1")).expect("w1");
    s.wait_workloads(1);
    let w1 = s.group.join("w1").display().to_string();
    let released = s.bridle(&["release", &w1]);
    assert_eq!(released.code, 0, "{}", released.stderr);
    assert!(
        released.stdout.contains("[[confine]]"),
        "{}",
        released.stdout
    );
    std::thread::sleep(Duration::from_millis(300));
    s.wait_workloads(0);
    let _ = fs::remove_file(&marker);
    assert_eq!(s.in_workload("w1", &touch), 0, "{}", s.log());
    let again = s.bridle(&["confine", "--policy", "p", &w1]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    s.wait_workloads(1);
    assert_eq!(s.in_workload("w1", &touch), s.refused(), "{}", s.log());
}

#[test]
fn bridle_run_goes_through_a_running_daemon() {
    require_root();
    let _k = kernel_lock();
    let mut s = Setup::new("run");
    s.start();
    s.wait_workloads(0);
    let marker = s.dir.path().join("marker");
    let mut run = Command::new(bridle_bin());
    run.arg("run")
        .arg("--policy")
        .arg(s.dir.path().join("policies/p.toml"))
        .arg("--")
        .arg("/bin/sh")
        .arg("-c")
        .arg(format!(
            "/usr/bin/true && echo permitted-ran; /usr/bin/touch {}; echo touch=$?",
            marker.display()
        ))
        .env("BRIDLE_SOCKET", s.socket())
        .env("BRIDLE_STATE_DIR", s.dir.path().join("run-state"));
    let f = finish(run, DEADLINE);
    let shown = format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}--- daemon\n{}",
        f.code,
        f.stdout,
        f.stderr,
        s.log()
    );
    assert_eq!(f.code, 0, "{shown}");
    assert!(
        f.stderr.contains("confined by the running daemon"),
        "{shown}"
    );
    assert!(f.stdout.contains("permitted-ran"), "{shown}");
    assert!(
        f.stdout.contains(&format!("touch={}", s.refused())),
        "{shown}"
    );
    assert!(!marker.exists(), "{shown}");
    assert!(
        f.stderr
            .contains("bridle: refused exec /usr/bin/touch (POLICY_REFUSED, rule no-touch)"),
        "the run prints the daemon's decision\n{shown}"
    );
    // The daemon judged and audited it, and let the cgroup go afterwards.
    s.wait_workloads(0);
    let export = s.bridle(&["audit", "export", "--verdict", "refuse"]);
    let run_cgroup = format!("bridle-run-{}", f.pid);
    assert!(
        export
            .stdout
            .lines()
            .any(|l| l.contains("/usr/bin/touch") && l.contains(&run_cgroup)),
        "{}\n{shown}",
        export.stdout
    );
    assert!(
        !cgroup2_root().join(&run_cgroup).exists(),
        "the run's cgroup is removed"
    );
}

/// Accepts connections on a loopback listener until dropped, counting them.
struct Listener {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    fn start() -> Listener {
        use std::sync::{atomic::Ordering, Arc};
        let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        socket.set_nonblocking(true).expect("non-blocking");
        let addr = socket.local_addr().expect("address");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (Arc::clone(&accepted), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match socket.accept() {
                        Ok(_) => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Listener {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn restarts_reloads_and_a_killed_daemon_under_load_permit_nothing_refused() {
    require_root();
    let _k = kernel_lock();
    let mut s = Setup::new("load");
    let probe = env!("CARGO_BIN_EXE_bridle-probe");
    let (permitted, refused) = (Listener::start(), Listener::start());
    fs::write(
        s.dir.path().join("policies/p.toml"),
        format!(
            r#"
name = "load-test"
default = "refuse"
permit_ttl = "10m"

[[rule]]
name = "system"
effect = "permit"
exec = ["/usr/bin/*", "/bin/*", "{probe}"]

[[rule]]
name = "no-touch"
effect = "refuse"
exec = ["/usr/bin/touch"]

[[rule]]
name = "listener"
effect = "permit"
connect = ["{}"]
"#,
            permitted.addr
        ),
    )
    .expect("policy");
    let cg = s.group.join("w1");
    fs::create_dir_all(&cg).expect("w1");
    s.start();
    s.wait_workloads(1);
    let dir = s.dir.path().to_path_buf();
    let (log, stop) = (dir.join("load.log"), dir.join("stop"));
    let script = format!(
        "echo $$ > {procs}; i=0; while [ ! -e {stop} ]; do \
         /usr/bin/touch {dir}/m.$i; echo \"touch $?\" >> {log}; \
         {probe} connect {a} >> {log}; {probe} connect {b} >> {log}; i=$((i+1)); done; \
         echo \"iterations $i\" >> {log}",
        procs = cg.join("cgroup.procs").display(),
        stop = stop.display(),
        dir = dir.display(),
        log = log.display(),
        a = permitted.addr,
        b = refused.addr,
    );
    let mut load = Command::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the load");
    let lines = || fs::read_to_string(&log).unwrap_or_default();
    let wait_more = |n: usize| {
        let start = Instant::now();
        while lines().lines().count() < n && start.elapsed() < DEADLINE {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_more(15);
    let reload = s.bridle(&["reload"]);
    assert_eq!(reload.code, 0, "{}", reload.stderr);
    let seen = lines().lines().count();
    wait_more(seen + 15);
    s.signal(libc::SIGTERM);
    s.start();
    s.wait_workloads(1);
    let seen = lines().lines().count();
    wait_more(seen + 15);
    s.signal(libc::SIGKILL);
    // Nothing but the pinned programs judges for a while.
    let seen = lines().lines().count();
    wait_more(seen + 15);
    s.start();
    s.wait_workloads(1);
    let seen = lines().lines().count();
    wait_more(seen + 15);
    fs::write(&stop, "").expect("stop");
    let ended = load.wait().expect("the load ends");
    assert!(ended.success(), "{ended:?}");

    let text = lines();
    let iterations: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("iterations "))
        .and_then(|n| n.parse().ok())
        .expect("the loop's count");
    let shown = format!("{text}\n--- daemon\n{}", s.log());
    assert!(iterations >= 25, "{iterations} iterations\n{shown}");
    // What the workload saw: no refused operation went through.
    let touches: Vec<&str> = text.lines().filter(|l| l.starts_with("touch ")).collect();
    assert_eq!(touches.len(), iterations, "{shown}");
    assert!(!touches.contains(&"touch 0"), "a refused exec ran\n{shown}");
    let marks = fs::read_dir(&dir)
        .expect("list")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("m."))
        .count();
    assert_eq!(marks, 0, "a refused exec left its file\n{shown}");
    let to_b = format!("connect {}: ", refused.addr);
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with(&to_b) && l.ends_with("errno 1"))
            .count(),
        iterations,
        "every connect to the refused address failed with EPERM\n{shown}"
    );
    assert_eq!(refused.accepted(), 0, "{shown}");
    assert!(
        permitted.accepted() > 0,
        "permitted connects went through\n{shown}"
    );

    // What the audit trail says: every attempt refused, none permitted, nothing lost.
    s.signal(libc::SIGTERM);
    let export = s.bridle(&["audit", "export", "--format", "jsonl"]);
    assert_eq!(export.code, 0, "{}", export.stderr);
    let records: Vec<serde_json::Value> = export
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let about = |object: &str| {
        records
            .iter()
            .filter(|r| r["object"].as_str() == Some(object))
            .collect::<Vec<_>>()
    };
    let touch_records = about("/usr/bin/touch");
    let b_records = about(&refused.addr.to_string());
    for r in touch_records.iter().chain(&b_records) {
        assert_eq!(r["effect"], "refuse", "a refused operation audited as {r}");
    }
    // A refusal the daemon recorded just before it was killed can be recorded again by the
    // backstop that took over: at most one more than the attempts.
    assert!(
        (iterations..=iterations + 1).contains(&touch_records.len()),
        "{} exec refusals audited for {iterations} attempts\n{shown}",
        touch_records.len()
    );
    assert_eq!(b_records.len(), iterations, "connect refusals audited");
    let verify = s.bridle(&["audit", "verify"]);
    assert_eq!(verify.code, 0, "{}", verify.stderr);
}

#[test]
fn a_cgroup_created_later_is_confined_without_waiting_for_a_scan() {
    require_root();
    let _k = kernel_lock();
    let mut s = Setup::new("mkdir");
    // A scan interval no test waits for: only the kernel's word can confine it in time.
    let config = s.dir.path().join("bridle.toml");
    let text = fs::read_to_string(&config).expect("config");
    fs::write(
        &config,
        text.replace("scan_interval = \"100ms\"", "scan_interval = \"1h\""),
    )
    .expect("config");
    s.start();
    s.wait_workloads(0);
    let cg = s.group.join("late");
    fs::create_dir(&cg).expect("a new cgroup");
    let start = Instant::now();
    let confined = loop {
        let status = s.bridle(&["status", "--json"]);
        if status
            .stdout
            .contains(&format!("\"cgroup\": \"{}\"", cg.display()))
        {
            break true;
        }
        if start.elapsed() > Duration::from_secs(20) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(confined, "not confined without a scan\n{}", s.log());
    let marker = s.dir.path().join("marker");
    assert_eq!(
        s.in_workload("late", &format!("/usr/bin/touch {}", marker.display())),
        s.refused(),
        "{}",
        s.log()
    );
    assert!(!marker.exists());
}

#[test]
fn a_reload_applies_every_policy_or_none() {
    require_root();
    let _k = kernel_lock();
    let mut s = Setup::new("reload");
    fs::create_dir_all(s.group.join("w1")).expect("w1");
    s.start();
    s.wait_workloads(1);
    let policy = s.dir.path().join("policies/p.toml");
    let broken = format!(
        "{REFUSE_TOUCH}\n[[rule]]\nname = \"broken\"\neffect = \"permit\"\nexec = [\"relative\"]\n"
    );
    let line = broken
        .lines()
        .position(|l| l.contains("\"relative\""))
        .map_or(0, |i| i + 1);
    fs::write(&policy, &broken).expect("write a broken policy");
    let reload = s.bridle(&["reload"]);
    assert_eq!(reload.code, 1, "{}", reload.stderr);
    assert!(
        reload
            .stderr
            .contains(&format!("{}:{line}:9: error:", policy.display())),
        "the rejection names file:line:column\n{}",
        reload.stderr
    );
    let status = s.bridle(&["status"]);
    assert!(
        status.stdout.contains("last reload: rejected"),
        "{}",
        status.stdout
    );
    let touch = format!("/usr/bin/touch {}", s.dir.path().join("m").display());
    assert_eq!(
        s.in_workload("w1", &touch),
        s.refused(),
        "the old policy stays"
    );

    // A good policy that no longer refuses touch: applied, and touch runs.
    fs::write(
        &policy,
        REFUSE_TOUCH.replace("\"/usr/bin/touch\"", "\"/usr/bin/no-such-tool\""),
    )
    .expect("write a good policy");
    let reload = s.bridle(&["reload"]);
    assert_eq!(reload.code, 0, "{}", reload.stderr);
    assert_eq!(s.in_workload("w1", &touch), 0, "the new policy applies");
}

#[test]
fn the_control_socket_refuses_a_non_root_user() {
    require_root();
    let _k = kernel_lock();
    let mut s = Setup::new("ctl");
    s.start();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bridle_bin())
        .args(["reload", "--socket"])
        .arg(s.socket());
    let f = finish(cmd, DEADLINE);
    assert_eq!(f.code, 1, "{}", f.stderr);
    assert!(f.stderr.contains("permission denied"), "{}", f.stderr);
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bridle_bin())
        .args(["events", "--follow", "--socket"])
        .arg(s.socket());
    let f = finish(cmd, DEADLINE);
    assert_eq!(f.code, 1, "{}", f.stderr);
    assert!(f.stderr.contains("permission denied"), "{}", f.stderr);
    let status = s.bridle(&["status"]);
    assert!(
        status.stdout.contains("last reload: never"),
        "nothing changed: {}",
        status.stdout
    );
}

/// Waits until `bridle status` shows the workload at `cgroup` quarantined (or not).
fn wait_quarantined(s: &Setup, cgroup: &std::path::Path, action: Option<&str>) {
    let start = Instant::now();
    let wanted = match action {
        Some(a) => format!("\"quarantined\":\"{a}\""),
        None => "\"quarantined\":null".to_owned(),
    };
    while start.elapsed() < DEADLINE {
        let f = s.bridle(&["status", "--json"]);
        let compact: String = f.stdout.split_whitespace().collect();
        let here = format!("\"cgroup\":\"{}\"", cgroup.display());
        if compact
            .split("},{")
            .any(|w| w.contains(&here) && w.contains(&wanted))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{} never showed {wanted}\n{}", cgroup.display(), s.log());
}

#[test]
fn refusals_past_the_threshold_quarantine_the_workload_until_lifted() {
    require_root();
    let _k = kernel_lock();
    let mut s = Setup::new("quarantine");
    fs::write(
        s.dir.path().join("policies/p.toml"),
        format!(
            "{REFUSE_TOUCH}\n[quarantine]\nafter_refusals = 3\nwithin = \"1m\"\naction = \"refuse-all\"\n"
        ),
    )
    .expect("policy");
    s.start();
    let cg = s.group.join("agent");
    fs::create_dir_all(&cg).expect("workload cgroup");
    s.wait_workloads(1);
    // Permitted before the threshold.
    assert_eq!(s.in_workload("agent", "/usr/bin/true"), 0, "{}", s.log());
    // Three refusals cross it.
    let refused = s.refused();
    for _ in 0..3 {
        assert_eq!(s.in_workload("agent", "/usr/bin/touch /dev/null"), refused);
    }
    wait_quarantined(&s, &cg, Some("refuse-all"));
    // Now even a permitted program is refused, for every process of the workload.
    assert_eq!(
        s.in_workload("agent", "/usr/bin/true"),
        refused,
        "refuse-all lets nothing run\n{}",
        s.log()
    );
    // A non-quarantined workload cannot be "lifted"; the quarantined one can.
    let wrong = s.bridle(&["release", "--quarantine", "/no/such/cgroup"]);
    assert_eq!(wrong.code, 1, "{}", wrong.stderr);
    let lift = s.bridle(&["release", "--quarantine", &cg.display().to_string()]);
    assert_eq!(lift.code, 0, "{}\n{}", lift.stderr, s.log());
    assert!(
        lift.stdout.contains("lifted the refuse-all quarantine"),
        "{}",
        lift.stdout
    );
    wait_quarantined(&s, &cg, None);
    assert_eq!(s.in_workload("agent", "/usr/bin/true"), 0, "{}", s.log());
    // Every step is in the audit trail.
    let audit = s.bridle(&["audit", "export", "--verdict", "QUARANTINED"]);
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    let steps: Vec<&str> = audit
        .stdout
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            if v["action"] == "quarantine" {
                Some("quarantine")
            } else if v["action"] == "quarantine-lifted" {
                Some("lifted")
            } else {
                // The exec refused during the quarantine, audited with its code.
                None
            }
        })
        .collect();
    assert_eq!(steps, ["quarantine", "lifted"], "{}", audit.stdout);
}

#[test]
fn a_freeze_quarantine_stops_every_process_until_lifted() {
    require_root();
    let _k = kernel_lock();
    let mut s = Setup::new("freeze");
    fs::write(
        s.dir.path().join("policies/p.toml"),
        format!(
            "{REFUSE_TOUCH}\n[quarantine]\nafter_refusals = 2\nwithin = \"1m\"\naction = \"freeze\"\n"
        ),
    )
    .expect("policy");
    s.start();
    let cg = s.group.join("agent");
    fs::create_dir_all(&cg).expect("workload cgroup");
    s.wait_workloads(1);
    // A process that lives on in the workload (Setup's drop kills the cgroup).
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec /usr/bin/sleep 60",
            cg.display()
        ))
        .stdout(Stdio::null());
    let mut sleeper = cmd.spawn().expect("sleeper");
    let refused = s.refused();
    assert_eq!(s.in_workload("agent", "/usr/bin/touch /dev/null"), refused);
    // The second refusal freezes the workload, perhaps before this shell exits: not waited
    // for until the quarantine is lifted.
    let mut second = Command::new("/bin/sh");
    second.arg("-c").arg(format!(
        "echo $$ > {}/cgroup.procs && /usr/bin/touch /dev/null",
        cg.display()
    ));
    let mut second = second.spawn().expect("second refusal");
    wait_quarantined(&s, &cg, Some("freeze"));
    let events = fs::read_to_string(cg.join("cgroup.events")).expect("cgroup.events");
    assert!(events.contains("frozen 1"), "{events}\n{}", s.log());
    // The path below the cgroup root names it too.
    let relative = cg
        .strip_prefix(cgroup2_root())
        .expect("below the root")
        .display()
        .to_string();
    let lift = s.bridle(&["release", "--quarantine", &relative]);
    let start = Instant::now();
    while !fs::read_to_string(cg.join("cgroup.events"))
        .unwrap_or_default()
        .contains("frozen 0")
        && start.elapsed() < DEADLINE
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(lift.code, 0, "{}\n{}", lift.stderr, s.log());
    let events = fs::read_to_string(cg.join("cgroup.events")).expect("cgroup.events");
    assert!(events.contains("frozen 0"), "{events}");
    let status = second.wait().expect("second refusal ends once thawed");
    let code = status
        .code()
        .or_else(|| std::os::unix::process::ExitStatusExt::signal(&status).map(|s| 128 + s));
    assert_eq!(code, Some(refused), "{status:?}");
    // SAFETY: kill(2) on the pid of the child this test started.
    unsafe { libc::kill(sleeper.id() as i32, libc::SIGKILL) };
    let _ = sleeper.wait();
}

#[test]
fn events_follow_streams_each_decision_of_the_workload_asked() {
    require_root();
    let _k = kernel_lock();
    let mut s = Setup::new("events");
    s.start();
    let cg = s.group.join("agent");
    fs::create_dir_all(&cg).expect("workload cgroup");
    s.wait_workloads(1);
    let mut follow = Command::new(bridle_bin());
    follow
        .args(["events", "--follow", "--json", "--workload"])
        .arg(&cg)
        .env("BRIDLE_SOCKET", s.socket())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = follow.spawn().expect("bridle events --follow");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Give the follower time to register, then act.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        s.in_workload("agent", "/usr/bin/touch /dev/null"),
        s.refused()
    );
    let start = Instant::now();
    let mut seen = Vec::new();
    let refused = |l: &String| {
        l.contains("\"object\":\"/usr/bin/touch\"") && l.contains("\"rule\":\"no-touch\"")
    };
    while start.elapsed() < DEADLINE && !seen.iter().any(refused) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(line);
        }
    }
    // SAFETY: kill(2) on the pid of the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    let _ = reader.join();
    assert!(
        seen.iter().any(refused),
        "no refusal streamed: {seen:?}\n{}",
        s.log()
    );
    for line in &seen {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON lines");
        assert_eq!(v["workload"], cg.display().to_string(), "{line}");
    }
    // The same decision, from the audit trail, without --follow.
    let latest = s.bridle(&["events", "-n", "5"]);
    assert!(
        latest.stdout.contains("exec /usr/bin/touch -> refuse"),
        "{}",
        latest.stdout
    );
}

/// The decisions the audit trail holds for `object`: every record counts as its `count`
/// (absent: one).
fn decisions_for(s: &Setup, object: &str) -> u64 {
    let export = s.bridle(&["audit", "export", "--format", "jsonl"]);
    assert_eq!(export.code, 0, "{}", export.stderr);
    export
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["object"] == object)
        .map(|r| r.get("count").and_then(|c| c.as_u64()).unwrap_or(1))
        .sum()
}

#[test]
fn counted_permits_survive_a_restart_exactly_and_a_killed_daemon_at_least_once() {
    require_root();
    let _k = kernel_lock();
    let mut s = Setup::new("tally");
    let probe = env!("CARGO_BIN_EXE_bridle-probe");
    // Closed ports: a connect is judged and answered at once.
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port()
    };
    let (clean, killed) = (port(), port());
    fs::write(
        s.dir.path().join("policies/p.toml"),
        format!(
            "{REFUSE_TOUCH}\n[[rule]]\nname = \"probe\"\neffect = \"permit\"\nexec = [\"{probe}\"]\n\n[[rule]]\nname = \"peers\"\neffect = \"permit\"\nconnect = [\"127.0.0.1:{clean}\", \"127.0.0.1:{killed}\"]\n"
        ),
    )
    .expect("policy");
    s.start();
    let cg = s.group.join("agent");
    fs::create_dir_all(&cg).expect("workload cgroup");
    s.wait_workloads(1);
    let connects = |port: u16, n: u64| {
        Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && {probe} connect-loop 127.0.0.1:{port} {n} >/dev/null",
                cg.join("cgroup.procs").display()
            ))
            .spawn()
            .expect("connect loop")
    };
    // Counted under one daemon, the rest under the next after a clean stop.
    const N: u64 = 30_000;
    assert!(connects(clean, N).wait().expect("wait").success());
    s.signal(libc::SIGTERM);
    s.start();
    assert!(connects(clean, N).wait().expect("wait").success());
    // A daemon killed while the workload connects: the counts wait in the pinned maps.
    let mut load = connects(killed, 4 * N);
    std::thread::sleep(Duration::from_millis(300));
    s.signal(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    s.start();
    assert!(load.wait().expect("wait").success());
    // A clean stop harvests what is left.
    s.signal(libc::SIGTERM);
    assert_eq!(
        decisions_for(&s, &format!("127.0.0.1:{clean}")),
        2 * N,
        "{}",
        s.log()
    );
    // Killed between writing counts and releasing them, a daemon's counts are written again
    // by the next: at least once.
    assert!(
        decisions_for(&s, &format!("127.0.0.1:{killed}")) >= 4 * N,
        "{}",
        s.log()
    );
}

/// The fields of one datagram of the journal's native protocol: `KEY=value` lines, or `KEY`,
/// a newline, a little-endian 64-bit length and that many bytes (for values with newlines).
fn journal_fields(mut data: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    while !data.is_empty() {
        let Some(end) = data.iter().position(|b| *b == b'\n') else {
            break;
        };
        let line = &data[..end];
        if let Some(eq) = line.iter().position(|b| *b == b'=') {
            fields.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
            data = &data[end + 1..];
            continue;
        }
        let rest = &data[end + 1..];
        let Some(len) = rest.get(..8) else { break };
        let len = u64::from_le_bytes(len.try_into().expect("8 bytes")) as usize;
        let Some(value) = rest.get(8..8 + len) else {
            break;
        };
        fields.insert(
            String::from_utf8_lossy(line).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        );
        data = rest.get(8 + len + 1..).unwrap_or(&[]);
    }
    fields
}

/// Removes the stand-in journal socket (and the directories it created) on drop.
struct FakeJournal {
    created: Vec<PathBuf>,
}

impl Drop for FakeJournal {
    fn drop(&mut self) {
        for p in self.created.iter().rev() {
            let _ = fs::remove_file(p).or_else(|_| fs::remove_dir(p));
        }
    }
}

#[test]
fn under_systemd_the_daemon_writes_native_journal_entries() {
    require_root();
    let _k = kernel_lock();
    let socket = PathBuf::from("/run/systemd/journal/socket");
    assert!(
        !socket.exists(),
        "a journald listens at {}: this test stands in for it on hosts without one",
        socket.display()
    );
    let mut fake = FakeJournal {
        created: Vec::new(),
    };
    for dir in ["/run/systemd", "/run/systemd/journal"] {
        let dir = PathBuf::from(dir);
        if !dir.exists() {
            fs::create_dir(&dir).expect("journal dir");
            fake.created.push(dir);
        }
    }
    let journal = UnixDatagram::bind(&socket).expect("stand-in journal socket");
    fake.created.push(socket.clone());
    journal
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut s = Setup::new("journal");
    fs::create_dir_all(s.group.join("agent")).expect("workload cgroup");
    // What systemd sets when it connects stderr to the journal.
    let child = Command::new(bridle_bin())
        .arg("daemon")
        .arg("--config")
        .arg(s.dir.path().join("bridle.toml"))
        .arg("--pin-dir")
        .arg(&s.pin_dir)
        .arg("--socket")
        .arg(s.socket())
        .env("JOURNAL_STREAM", "8:12345")
        .env("NOTIFY_SOCKET", s.dir.path().join("notify.sock"))
        .stdout(Stdio::null())
        .stderr(fs::File::create(s.dir.path().join("daemon.log")).expect("log"))
        .spawn()
        .expect("start the daemon");
    s.daemon = Some(child);
    s.wait_notify("READY=1");
    let start = Instant::now();
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 65536];
    let is_confined =
        |e: &BTreeMap<String, String>| e.get("MESSAGE").map(String::as_str) == Some("confined");
    while start.elapsed() < DEADLINE {
        if let Ok(n) = journal.recv(&mut buf) {
            let entry = journal_fields(&buf[..n]);
            let confined = is_confined(&entry);
            entries.push(entry);
            if confined {
                break;
            }
        }
    }
    let confined = entries
        .iter()
        .find(|e| is_confined(e))
        .unwrap_or_else(|| panic!("no journal entry for the confinement: {entries:?}"));
    let workload = s.group.join("agent").display().to_string();
    for (field, value) in [
        ("SYSLOG_IDENTIFIER", "bridle"),
        ("PRIORITY", "6"),
        ("CGROUP", workload.as_str()),
        ("POLICY", "daemon-test"),
    ] {
        assert_eq!(
            confined.get(field).map(String::as_str),
            Some(value),
            "{field} in {confined:?}"
        );
    }
    assert!(
        !s.log().contains("confined"),
        "with a journal, entries go there, not to stderr: {}",
        s.log()
    );
}

/// A unix connect from a confined cgroup meets the daemon's pinned unix hooks: refused with
/// EPERM for a refused socket and reached for a permitted one, while no daemon runs too, and
/// in a cgroup confined after a restart.
#[test]
fn a_confined_cgroups_unix_connects_are_judged_by_the_pinned_hooks() {
    require_root();
    let _k = kernel_lock();
    let mut s = Setup::new("unix");
    let ok_path = s.dir.path().join("ok.sock");
    let no_path = s.dir.path().join("no.sock");
    let ok = std::os::unix::net::UnixListener::bind(&ok_path).expect("bind ok.sock");
    let no = std::os::unix::net::UnixListener::bind(&no_path).expect("bind no.sock");
    for l in [&ok, &no] {
        l.set_nonblocking(true).expect("nonblocking");
    }
    let probe = env!("CARGO_BIN_EXE_bridle-probe");
    fs::write(
        s.dir.path().join("policies/p.toml"),
        format!(
            "{}\n[[rule]]\nname = \"probe\"\neffect = \"permit\"\nexec = [\"{probe}\"]\n\n[[rule]]\nname = \"app\"\neffect = \"permit\"\nconnect = [\"unix:{}\"]\n\n[[rule]]\nname = \"no-engine\"\neffect = \"refuse\"\nconnect = [\"unix:{}\"]\n",
            REFUSE_TOUCH,
            ok_path.display(),
            no_path.display()
        ),
    )
    .expect("policy");
    fs::create_dir_all(s.group.join("w1")).expect("w1");
    s.start();
    s.wait_workloads(1);
    let status = s.bridle(&["status", "--json"]);
    assert!(
        status.stdout.contains("cgroup connect_unix/sendmsg_unix"),
        "bridle status says the unix hooks are enforced\n{}",
        status.stdout
    );
    let out = s.dir.path().join("probe.out");
    let connect = |s: &Setup, cgroup: &str, path: &std::path::Path| {
        let _ = fs::remove_file(&out);
        s.in_workload(
            cgroup,
            &format!(
                "{probe} unix-connect {} > {}",
                path.display(),
                out.display()
            ),
        );
        fs::read_to_string(&out).unwrap_or_default()
    };
    let refused = format!("unix-connect {}: errno 1\n", no_path.display());
    let permitted = format!("unix-connect {}: ok\n", ok_path.display());
    assert_eq!(connect(&s, "w1", &no_path), refused, "{}", s.log());
    assert_eq!(connect(&s, "w1", &ok_path), permitted, "{}", s.log());

    // No daemon: the pinned programs and links still judge.
    s.signal(libc::SIGKILL);
    assert_eq!(connect(&s, "w1", &no_path), refused);
    // A restarted daemon adopts them, and attaches them to a cgroup confined now.
    s.start();
    fs::create_dir_all(s.group.join("w2")).expect("w2");
    s.wait_workloads(2);
    assert_eq!(connect(&s, "w2", &no_path), refused, "{}", s.log());
    assert_eq!(connect(&s, "w2", &ok_path), permitted, "{}", s.log());
    let accepted =
        |l: &std::os::unix::net::UnixListener| std::iter::from_fn(|| l.accept().ok()).count();
    assert_eq!(accepted(&no), 0, "a refused connect arrived");
    assert_eq!(accepted(&ok), 2);

    // Every refusal reached the audit trail, the one made while no daemon ran included.
    s.signal(libc::SIGTERM);
    let export = s.bridle(&[
        "audit",
        "export",
        "--format",
        "jsonl",
        "--verdict",
        "refuse",
    ]);
    let object = format!("\"object\":\"unix:{}\"", no_path.display());
    let refusals = export
        .stdout
        .lines()
        .filter(|l| l.replace(": ", ":").contains(&object))
        .count();
    assert_eq!(refusals, 3, "{}\n{}", export.stdout, s.log());
    drop(s);
    wait_no_programs();
}

#[test]
fn the_shipped_unit_file_verifies() {
    let unit = fs::read_to_string(workspace_root().join("agent/systemd/bridle.service"))
        .expect("the unit file");
    for directive in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "CapabilityBoundingSet=",
    ] {
        assert!(unit.contains(directive), "the unit lacks {directive}");
    }
    // systemd-analyze checks that ExecStart's binary exists: point it at the one under test.
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("bridle.service");
    fs::write(
        &copy,
        unit.replace("/usr/bin/bridle", &bridle_bin().display().to_string()),
    )
    .expect("write the unit copy");
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["verify", "--man=no"]).arg(&copy);
    let f = finish(cmd, DEADLINE);
    assert_eq!(
        f.code, 0,
        "systemd-analyze verify failed:\n{}{}",
        f.stdout, f.stderr
    );
    assert!(!f.stderr.contains("bridle.service"), "{}", f.stderr);
}

fn probe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bridle-probe"))
}

const EPERM: i32 = 1;

/// A policy permitting the shell and the probe, and connects to `connect` (host names among
/// them), with `extra` TOML after its rules.
fn dns_policy(connect: &[String], extra: &str) -> String {
    let list = connect
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
name = "daemon-dns"
default = "refuse"
permit_ttl = "10m"

[[rule]]
name = "system"
effect = "permit"
exec = ["/usr/bin/*", "/bin/*", "{probe}"]

[[rule]]
name = "names"
effect = "permit"
connect = [{list}]

# glibc asks nscd first on every lookup; refused, each lookup would count towards quarantine.
[[rule]]
name = "name-service-cache"
effect = "permit"
connect = ["unix:/var/run/nscd/socket", "unix:/run/nscd/socket"]
{extra}
"#,
        probe = probe().display()
    )
}

fn show(f: &Finished) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        f.code, f.stdout, f.stderr
    )
}

/// Follows `bridle events --follow --json` for one workload on a thread; `lines` collects
/// what it streamed so far. Killed by pid on drop.
struct Follow {
    child: Child,
    rx: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Follow {
    fn start(s: &Setup, workload: &std::path::Path) -> Follow {
        let mut cmd = Command::new(bridle_bin());
        cmd.args(["events", "--follow", "--json", "--workload"])
            .arg(workload)
            .env("BRIDLE_SOCKET", s.socket())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("bridle events --follow");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Give the follower time to register.
        std::thread::sleep(Duration::from_millis(500));
        Follow {
            child,
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits until a streamed line satisfies `wanted`.
    fn wait(&mut self, wanted: impl Fn(&serde_json::Value) -> bool) -> bool {
        let start = Instant::now();
        let parsed = |l: &String| serde_json::from_str::<serde_json::Value>(l).ok();
        while start.elapsed() < DEADLINE {
            if self.seen.iter().filter_map(parsed).any(|v| wanted(&v)) {
                return true;
            }
            if let Ok(line) = self.rx.recv_timeout(Duration::from_millis(200)) {
                self.seen.push(line);
            }
        }
        false
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of the child this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

#[test]
fn host_names_are_decided_by_the_daemons_resolver_also_after_a_restart() {
    require_root();
    let _k = kernel_lock();
    let dns = Dnsmasq::start(&[]);
    let allowed = std::net::TcpListener::bind("127.0.0.2:0").expect("listen");
    let port = allowed.local_addr().expect("addr").port();
    let other = std::net::TcpListener::bind(format!("127.0.0.3:{port}")).expect("listen");
    let mut s = Setup::new("dns");
    s.write_policy(&dns_policy(&[format!("allowed.test:{port}")], ""));
    s.configure(&format!("\n[resolver]\nupstream = \"{}\"\n", dns.addr));
    let cg = s.group.join("agent");
    fs::create_dir_all(&cg).expect("workload cgroup");
    s.start();
    s.wait_workloads(1);
    let mut follow = Follow::start(&s, &cg);

    let script = format!(
        "\"$PROBE\" connect 127.0.0.2:{port}; \"$PROBE\" resolve-connect allowed.test {port}; \
         \"$PROBE\" resolve other.test; \"$PROBE\" connect 127.0.0.3:{port}; true"
    );
    let f = s.run_in("agent", &script);
    let ctx = format!("{}\n--- daemon\n{}", show(&f), s.log());
    assert!(
        f.stdout
            .contains(&format!("connect 127.0.0.2:{port}: errno {EPERM}\n")),
        "a connect to the allowed name's address before resolving it is refused\n{ctx}"
    );
    assert!(
        f.stdout.contains(&format!(
            "resolve-connect allowed.test: ok 127.0.0.2:{port}"
        )),
        "the allowed name resolves and its address connects on the permitted port\n{ctx}"
    );
    assert!(
        f.stdout.contains("resolve other.test: eai "),
        "a name no rule allows does not resolve\n{ctx}"
    );
    assert!(
        f.stdout
            .contains(&format!("connect 127.0.0.3:{port}: errno {EPERM}")),
        "{ctx}"
    );
    assert!(
        follow.wait(|v| v["action"] == "resolve"
            && v["code"] == "NAME_NOT_ALLOWED"
            && v["effect"] == "refuse"
            && v["object"] == "other.test A"),
        "the refused name is streamed to followers: {:?}\n{ctx}",
        follow.seen
    );
    assert!(
        follow.wait(|v| v["action"] == "resolve"
            && v["code"] == "PERMITTED"
            && v["object"] == "allowed.test A = 127.0.0.2"
            && v["rule"] == "names"
            && v["permit_id"].is_u64()),
        "the permitted name is streamed with its rule and permit: {:?}",
        follow.seen
    );
    drop(follow);
    assert!(
        s.log().contains(&format!(
            "refused connect 127.0.0.2:{port} (NO_MATCHING_RULE; not an address of an allowed name)"
        )),
        "the log says why the direct connect was refused\n{}",
        s.log()
    );

    // bridle status reports the resolver.
    let status = s.status_json();
    let r = &status["workloads"][0]["resolver"];
    assert!(
        r["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{status}"
    );
    assert_eq!(r["upstream"], dns.addr.to_string(), "{status}");
    assert!(r["permitted"].as_u64() >= Some(1), "{status}");
    assert!(r["refused"].as_u64() >= Some(1), "{status}");
    assert!(r["addresses"].as_u64() >= Some(1), "{status}");
    assert!(
        status["tiers"]["host_names"]
            .as_str()
            .is_some_and(|t| t.contains("DNS resolver")),
        "{status}"
    );
    let text = s.bridle(&["status"]);
    assert!(
        text.stdout.contains(&format!("-> upstream {}", dns.addr)),
        "{}",
        text.stdout
    );

    // A killed daemon: its redirect stays, nothing answers, no name resolves.
    s.signal(libc::SIGKILL);
    let f = s.run_in("agent", "\"$PROBE\" resolve allowed.test; true");
    assert!(
        f.stdout.contains("resolve allowed.test: eai "),
        "with no daemon no name resolves\n{}",
        show(&f)
    );
    // A restarted daemon adopts the pins and runs a new resolver for the workload.
    s.start();
    s.wait_workloads(1);
    let f = s.run_in("agent", &script);
    let ctx = format!("{}\n--- daemon\n{}", show(&f), s.log());
    assert!(
        f.stdout.contains(&format!(
            "resolve-connect allowed.test: ok 127.0.0.2:{port}"
        )),
        "host names work again after a restart\n{ctx}"
    );
    assert!(f.stdout.contains("resolve other.test: eai "), "{ctx}");
    assert!(
        f.stdout
            .contains(&format!("connect 127.0.0.3:{port}: errno {EPERM}")),
        "{ctx}"
    );

    // Every decision is in the audit trail, before and after the restart.
    s.signal(libc::SIGTERM);
    let export = s.bridle(&["audit", "export", "--format", "jsonl"]);
    assert_eq!(export.code, 0, "{}", export.stderr);
    let records: Vec<serde_json::Value> = export
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let workload = cg.display().to_string();
    let count = |f: &dyn Fn(&serde_json::Value) -> bool| {
        records
            .iter()
            .filter(|v| v["workload"] == workload.as_str() && f(v))
            .count()
    };
    assert!(
        count(&|v| v["action"] == "resolve"
            && v["code"] == "NAME_NOT_ALLOWED"
            && v["effect"] == "refuse"
            && v["object"] == "other.test A")
            >= 2,
        "the refused name is audited, before and after the restart\n{}",
        export.stdout
    );
    assert!(
        count(&|v| v["action"] == "resolve"
            && v["code"] == "PERMITTED"
            && v["object"] == "allowed.test A = 127.0.0.2"
            && v["permit_id"].is_u64())
            >= 2,
        "{}",
        export.stdout
    );
    assert_eq!(
        count(&|v| v["action"] == "connect"
            && v["effect"] == "refuse"
            && v["object"] == format!("127.0.0.2:{port}").as_str()),
        2,
        "the direct connect before resolving is audited as refused, before and after the \
         restart (a restarted daemon starts from a fresh slot: names are resolved again)\n{}",
        export.stdout
    );
    let verify = s.bridle(&["audit", "verify"]);
    assert_eq!(verify.code, 0, "{}", verify.stderr);

    drop((s, allowed, other, dns));
    wait_no_programs();
}

/// The workload's slot and its resolver's (`bridle status`), and the resolver entry.
fn slots(s: &Setup) -> (String, serde_json::Value) {
    let status = s.status_json();
    let w = &status["workloads"][0];
    (
        w["slot"].as_str().unwrap_or_default().to_owned(),
        w["resolver"].clone(),
    )
}

/// A process in workload cgroup `cg` that resolves allowed.test and connects to its address,
/// then waits for the returned `go` file to exist before it runs the probe with `then`.
/// Returned once it waits, so its first answer comes before whatever the caller does next.
fn resolve_then_wait(
    s: &Setup,
    cg: &std::path::Path,
    port: u16,
    then: &str,
) -> (std::process::Child, PathBuf) {
    let go = s.dir.path().join("go");
    let mut waiting = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && \"$PROBE\" resolve-connect allowed.test {port} && \
             exec \"$PROBE\" after {} {then}",
            cg.display(),
            go.display()
        ))
        .env("PROBE", probe())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the workload's waiting process");
    // `after FILE` creates FILE.waiting once it waits.
    let marker = s.dir.path().join("go.waiting");
    let start = Instant::now();
    while !marker.exists() && start.elapsed() < DEADLINE {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !marker.exists() {
        // Its first answer failed (the shell stops there), or it hangs: say which.
        let ended = matches!(waiting.try_wait(), Ok(Some(_)));
        let out = if ended {
            waiting
                .wait_with_output()
                .map(|o| o.stdout)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        panic!(
            "the probe never got to wait (ended: {ended}): {}\n{}",
            String::from_utf8_lossy(&out),
            s.log()
        );
    }
    (waiting, go)
}

#[test]
fn the_resolver_follows_reloads_and_quarantine() {
    require_root();
    let _k = kernel_lock();
    let dns = Dnsmasq::start(&[]);
    let allowed = std::net::TcpListener::bind("127.0.0.2:0").expect("listen");
    let port = allowed.local_addr().expect("addr").port();
    let other = std::net::TcpListener::bind(format!("127.0.0.3:{port}")).expect("listen");
    let quarantine =
        "\n[quarantine]\nafter_refusals = 3\nwithin = \"1m\"\naction = \"refuse-all\"\n";
    let allow_allowed = dns_policy(&[format!("allowed.test:{port}")], quarantine);
    let mut s = Setup::new("dnsreload");
    s.write_policy(&allow_allowed);
    // Long enough for the answers to outlive the reloads below.
    s.configure(&format!(
        "\n[resolver]\nupstream = \"{}\"\nttl_min = \"5m\"\n",
        dns.addr
    ));
    let cg = s.group.join("agent");
    fs::create_dir_all(&cg).expect("workload cgroup");
    s.start();
    s.wait_workloads(1);
    let connect_allowed = format!("\"$PROBE\" connect 127.0.0.2:{port}");
    let resolve_allowed = format!("\"$PROBE\" resolve-connect allowed.test {port}");

    let f = s.run_in("agent", &resolve_allowed);
    assert_eq!(f.code, 0, "{}\n{}", show(&f), s.log());
    let (before, resolver) = slots(&s);
    assert_eq!(resolver["slot"].as_str(), Some(before.as_str()));

    // A reload with nothing changed keeps the slot.
    let reload = s.bridle(&["reload"]);
    assert_eq!(reload.code, 0, "{}", reload.stderr);
    assert_eq!(slots(&s).0, before, "an unchanged policy keeps its slot");

    // A changed policy that still allows the name gets a fresh slot; the resolver moves with
    // the workload, and the address it answered stays reachable without resolving it again.
    s.write_policy(&dns_policy(
        &[format!("allowed.test:{port}"), "127.0.0.99:1".to_owned()],
        quarantine,
    ));
    let reload = s.bridle(&["reload"]);
    assert_eq!(reload.code, 0, "{}", reload.stderr);
    let (after, resolver) = slots(&s);
    assert_ne!(
        after, before,
        "a changed policy is installed under a new slot"
    );
    assert_eq!(
        resolver["slot"].as_str(),
        Some(after.as_str()),
        "the resolver writes under the workload's current slot"
    );
    let f = s.run_in("agent", &connect_allowed);
    assert!(
        f.stdout.contains(&format!("connect 127.0.0.2:{port}: ok")),
        "an answered address is carried to the new slot\n{}\n{}",
        show(&f),
        s.log()
    );

    // A policy that no longer allows the name: its address goes, the name is refused, and
    // the name it allows now resolves, with the new policy's permits.
    s.write_policy(&dns_policy(&[format!("other.test:{port}")], quarantine));
    let reload = s.bridle(&["reload"]);
    assert_eq!(reload.code, 0, "{}", reload.stderr);
    let f = s.run_in(
        "agent",
        &format!(
            "{connect_allowed}; \"$PROBE\" resolve allowed.test; \
             \"$PROBE\" resolve-connect other.test {port}; true"
        ),
    );
    let ctx = format!("{}\n--- daemon\n{}", show(&f), s.log());
    assert!(
        f.stdout
            .contains(&format!("connect 127.0.0.2:{port}: errno {EPERM}")),
        "an address whose name the new policy refuses is not carried over\n{ctx}"
    );
    assert!(f.stdout.contains("resolve allowed.test: eai "), "{ctx}");
    assert!(
        f.stdout
            .contains(&format!("resolve-connect other.test: ok 127.0.0.3:{port}")),
        "{ctx}"
    );

    // Back to the first policy, then a refuse-all quarantine: every name is refused, and no
    // address answered before stays reachable.
    s.write_policy(&allow_allowed);
    let reload = s.bridle(&["reload"]);
    assert_eq!(reload.code, 0, "{}", reload.stderr);
    // Its first answer comes before the refusals below start the quarantine.
    let (waiting, go) = resolve_then_wait(
        &s,
        &cg,
        port,
        &format!("resolve-connect allowed.test {port}"),
    );
    let f = s.run_in(
        "agent",
        &format!("for i in 1 2 3; do \"$PROBE\" connect 127.0.0.9:{port}; done; true"),
    );
    assert_eq!(f.code, 0, "{}", show(&f));
    wait_quarantined(&s, &cg, Some("refuse-all"));
    let (_, resolver) = slots(&s);
    assert_eq!(resolver["refusing_all"], true, "{resolver}");
    fs::write(&go, "").expect("go");
    let out = waiting.wait_with_output().expect("the waiting probe ends");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains(&format!(
            "resolve-connect allowed.test: ok 127.0.0.2:{port}"
        )),
        "resolved before the quarantine: {out}"
    );
    assert!(
        out.contains("resolve-connect allowed.test: eai "),
        "a refuse-all quarantine refuses every name: {out}\n{}",
        s.log()
    );
    let lift = s.bridle(&["release", "--quarantine", &cg.display().to_string()]);
    assert_eq!(lift.code, 0, "{}", lift.stderr);
    wait_quarantined(&s, &cg, None);
    let f = s.run_in("agent", &resolve_allowed);
    assert_eq!(
        f.code,
        0,
        "names resolve again once the quarantine is lifted\n{}\n{}",
        show(&f),
        s.log()
    );

    // A policy without host rules: the resolver stops, and DNS meets the connect rules.
    s.write_policy(&dns_policy(&["127.0.0.9:1".to_owned()], ""));
    let reload = s.bridle(&["reload"]);
    assert_eq!(reload.code, 0, "{}", reload.stderr);
    let (_, resolver) = slots(&s);
    assert!(resolver.is_null(), "{resolver}");
    let f = s.run_in("agent", "\"$PROBE\" resolve allowed.test; true");
    assert!(
        f.stdout.contains("resolve allowed.test: eai "),
        "{}",
        show(&f)
    );

    s.signal(libc::SIGTERM);
    let export = s.bridle(&["audit", "export", "--format", "jsonl"]);
    let quarantined = export
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["action"] == "resolve" && v["code"] == "QUARANTINED" && v["effect"] == "refuse"
        })
        .count();
    assert!(
        quarantined >= 1,
        "names refused in quarantine are audited\n{}",
        export.stdout
    );
    drop((s, allowed, other, dns));
    wait_no_programs();
}

#[test]
fn dns_entries_lapse_with_their_permits_when_no_daemon_renews_them() {
    require_root();
    let _k = kernel_lock();
    let dns = Dnsmasq::start(&[]);
    let allowed = std::net::TcpListener::bind("127.0.0.2:0").expect("listen");
    let port = allowed.local_addr().expect("addr").port();
    let mut s = Setup::new("dnslapse");
    s.write_policy(
        &dns_policy(&[format!("allowed.test:{port}")], "")
            .replace("permit_ttl = \"10m\"", "permit_ttl = \"3s\""),
    );
    // The answer would live five minutes; its permit lives three seconds unless renewed.
    s.configure(&format!(
        "\n[resolver]\nupstream = \"{}\"\nttl_min = \"5m\"\n",
        dns.addr
    ));
    let cg = s.group.join("agent");
    fs::create_dir_all(&cg).expect("workload cgroup");
    s.start();
    s.wait_workloads(1);
    let (waiting, go) = resolve_then_wait(&s, &cg, port, &format!("connect 127.0.0.2:{port}"));
    // Renewed while the daemon runs: still reachable after the permit's first lifetime.
    std::thread::sleep(Duration::from_secs(4));
    let f = s.run_in("agent", &format!("\"$PROBE\" connect 127.0.0.2:{port}"));
    assert!(
        f.stdout.contains(&format!("connect 127.0.0.2:{port}: ok")),
        "renewals keep the DNS entry alive\n{}\n{}",
        show(&f),
        s.log()
    );
    s.signal(libc::SIGKILL);
    std::thread::sleep(Duration::from_secs(4));
    fs::write(&go, "").expect("go");
    let out = waiting.wait_with_output().expect("the probe ends");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains(&format!(
            "resolve-connect allowed.test: ok 127.0.0.2:{port}"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("connect 127.0.0.2:{port}: errno {EPERM}")),
        "with no daemon renewing, the DNS entry lapses with its permit, not its 5-minute TTL: {out}"
    );
    drop((s, allowed, dns));
    wait_no_programs();
}

#[test]
fn bridle_run_through_the_daemon_resolves_with_the_daemons_resolver() {
    require_root();
    let _k = kernel_lock();
    let dns = Dnsmasq::start(&[]);
    let allowed = std::net::TcpListener::bind("127.0.0.2:0").expect("listen");
    let port = allowed.local_addr().expect("addr").port();
    let mut s = Setup::new("dnsrun");
    s.configure(&format!("\n[resolver]\nupstream = \"{}\"\n", dns.addr));
    s.start();
    s.wait_workloads(0);
    let policy = s.dir.path().join("run.toml");
    fs::write(&policy, dns_policy(&[format!("allowed.test:{port}")], "")).expect("policy");
    let run = |extra: &[&str], script: &str| {
        let mut run = Command::new(bridle_bin());
        run.arg("run")
            .arg("--policy")
            .arg(&policy)
            .args(extra)
            .args(["--", "/bin/sh", "-c", script])
            .env("PROBE", probe())
            .env("BRIDLE_SOCKET", s.socket())
            .env("BRIDLE_STATE_DIR", s.dir.path().join("run-state"));
        finish(run, DEADLINE)
    };
    let f = run(
        &[],
        &format!(
            "\"$PROBE\" connect 127.0.0.2:{port}; \"$PROBE\" resolve-connect allowed.test {port}; \
             \"$PROBE\" resolve other.test; true"
        ),
    );
    let ctx = format!("{}\n--- daemon\n{}", show(&f), s.log());
    assert_eq!(f.code, 0, "{ctx}");
    assert!(f.stderr.contains("confined by the running daemon"), "{ctx}");
    assert!(
        f.stdout
            .contains(&format!("connect 127.0.0.2:{port}: errno {EPERM}")),
        "{ctx}"
    );
    assert!(
        f.stdout.contains(&format!(
            "resolve-connect allowed.test: ok 127.0.0.2:{port}"
        )),
        "{ctx}"
    );
    assert!(f.stdout.contains("resolve other.test: eai "), "{ctx}");
    assert!(
        f.stderr
            .contains("bridle: refused resolve other.test A (NAME_NOT_ALLOWED)"),
        "the run prints the daemon's resolver's decision\n{ctx}"
    );
    // The run's own resolver options would be ignored: refused, not silently dropped.
    let f = run(&["--dns-upstream", "127.0.0.1:53"], "true");
    assert_eq!(f.code, 125, "{}", show(&f));
    assert!(f.stderr.contains("--standalone"), "{}", show(&f));
    s.wait_workloads(0);
    drop((s, allowed, dns));
    wait_no_programs();
}

/// How many entries the pinned map `name` holds, as `bpftool map dump` lists them.
fn map_entries(pin_dir: &Path, name: &str) -> usize {
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(pin_dir.join("maps").join(name))
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool map dump {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    dump.as_array().map_or(0, Vec::len)
}

/// A reload writes a changed policy under a new slot and, once it has answered, deletes the
/// old slot's entries; an unchanged policy keeps its slot, entries and permits. Either way the
/// address maps hold the current policy's entries and nothing else.
#[test]
fn reloads_leave_only_the_current_policys_entries() {
    require_root();
    let _k = kernel_lock();
    let mut s = Setup::new("slots");
    fs::create_dir_all(s.group.join("w1")).expect("w1");
    let policy_file = s.dir.path().join("policies/p.toml");
    let policy = |port: u16| {
        let mut text = String::from(REFUSE_TOUCH);
        for i in 0..40 {
            text.push_str(&format!(
                "\n[[rule]]\nname = \"net-{i}\"\neffect = \"permit\"\nconnect = [\"10.9.0.{i}:{port}\", \"[2001:db8::{i:x}]:{port}\"]\n"
            ));
        }
        text
    };
    fs::write(&policy_file, policy(443)).expect("policy");
    s.start();
    s.wait_workloads(1);
    let in_force = |s: &Setup| {
        let status = s.status_json();
        let w = &status["workloads"][0];
        (
            w["slot"].as_str().unwrap_or_default().to_owned(),
            w["address_entries"].as_u64().unwrap_or(0) as usize,
        )
    };
    let (mut slot, expected) = in_force(&s);
    assert!(
        expected >= 80,
        "40 IPv4 and 40 IPv6 addresses: {expected} entries"
    );
    let stored = |s: &Setup| map_entries(&s.pin_dir, "NET_RULES");
    assert_eq!(stored(&s), expected, "{}", s.log());
    // The signed permit batches in the state directory.
    let permits = |s: &Setup| -> std::collections::BTreeSet<String> {
        fs::read_dir(s.dir.path().join("state/permits"))
            .expect("permit store")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("batch-"))
            .collect()
    };
    for (round, (port, changed)) in [(8443, true), (8443, false), (443, true)]
        .into_iter()
        .enumerate()
    {
        let issued = permits(&s);
        fs::write(&policy_file, policy(port)).expect("policy");
        let reload = s.bridle(&["reload"]);
        assert_eq!(reload.code, 0, "{}", reload.stderr);
        let (now, entries) = in_force(&s);
        if changed {
            assert_ne!(now, slot, "round {round}: a changed policy gets a new slot");
            assert_eq!(
                permits(&s).difference(&issued).count(),
                1,
                "round {round}: and one new batch of permits"
            );
        } else {
            assert_eq!(
                now,
                slot,
                "round {round}: an unchanged policy keeps its slot\n{}",
                s.log()
            );
            assert_eq!(permits(&s), issued, "round {round}: and its permits");
        }
        assert_eq!(entries, expected, "round {round}");
        slot = now;
        let start = Instant::now();
        let mut left = stored(&s);
        while left != expected && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
            left = stored(&s);
        }
        assert_eq!(
            left,
            expected,
            "round {round}: the old slot's entries were not all removed\n{}",
            s.log()
        );
    }
}
