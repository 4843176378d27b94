//! `bridle run` against the real kernel: real cgroups, real execs and connects, real listeners.
//!
//! Each test asserts what the workload itself saw (exit statuses, errno, files it could or
//! could not create), what bridle reported, and that nothing was left behind.

use bridle_tests::{
    bridle_bin, finish, kernel_lock, leftover_pins, leftover_run_cgroups, loaded_bridle_programs,
    require_root, Finished,
};
use std::{
    fs,
    io::Write,
    net::{TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const DEADLINE: Duration = Duration::from_secs(60);
const EPERM: i32 = 1;

struct Scene {
    dir: tempfile::TempDir,
    /// A copy of /usr/bin/touch that no rule names.
    tool: PathBuf,
    permitted: TcpListener,
    refused: TcpListener,
}

impl Scene {
    fn new(v6: bool) -> Scene {
        let dir = tempfile::tempdir().expect("tempdir");
        let tool = dir.path().join("tool");
        fs::copy("/usr/bin/touch", &tool).expect("copy touch");
        fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).expect("chmod");
        let host = if v6 { "[::1]:0" } else { "127.0.0.1:0" };
        Scene {
            dir,
            tool,
            permitted: TcpListener::bind(host).expect("bind"),
            refused: TcpListener::bind(host).expect("bind"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn addr(l: &TcpListener) -> String {
        l.local_addr().expect("addr").to_string()
    }

    /// A policy that permits the system's programs and the probe, refuses /usr/bin/touch by
    /// name, and permits connects to the `permitted` listener only.
    fn policy(&self, mode: &str) -> PathBuf {
        let permitted = self.permitted.local_addr().expect("addr");
        let target = match permitted {
            std::net::SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
            std::net::SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        let text = format!(
            r#"
name = "test"
mode = "{mode}"
default = "refuse"

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
connect = ["{target}"]
"#,
            probe = probe().display()
        );
        let path = self.path("policy.toml");
        fs::File::create(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .expect("write policy");
        path
    }
}

fn probe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bridle-probe"))
}

fn bridle_run(policy: &Path, extra: &[&str], script: &str) -> Command {
    let mut cmd = Command::new(bridle_bin());
    // Keys, permits and the audit trail go next to the policy, in the test's own directory.
    let state = policy.with_file_name("state");
    cmd.env("BRIDLE_STATE_DIR", &state);
    cmd.arg("run").arg("--policy").arg(policy).args(extra);
    cmd.args(["--", "/bin/sh", "-c", script]);
    cmd.env("PROBE", probe());
    cmd
}

fn assert_clean(context: &str) {
    assert_eq!(
        leftover_run_cgroups(),
        Vec::<PathBuf>::new(),
        "{context}: cgroups left"
    );
    // The kernel frees a detached tracing program after an RCU grace period, a moment after
    // the last fd closes: wait for that, boundedly.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !loaded_bridle_programs().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        loaded_bridle_programs(),
        Vec::<String>::new(),
        "{context}: programs left"
    );
    assert!(
        !leftover_pins(),
        "{context}: pins left under /sys/fs/bpf/bridle"
    );
}

fn show(f: &Finished) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        f.code, f.stdout, f.stderr
    )
}

#[test]
fn permitted_exec_runs_and_refused_exec_never_runs() {
    require_root();
    let _k = kernel_lock();
    let scene = Scene::new(false);
    let policy = scene.policy("enforce");
    let unnamed = scene.path("unnamed-marker");
    let named = scene.path("named-marker");
    let script = format!(
        "/usr/bin/true && echo permitted-ran; {tool} {unnamed}; echo unnamed=$?; /usr/bin/touch {named}; echo named=$?",
        tool = scene.tool.display(),
        unnamed = unnamed.display(),
        named = named.display()
    );
    // This test pins the kill-on-exec tier; tests/exec.rs covers every tier.
    let f = finish(
        bridle_run(&policy, &["--exec-tier", "kill"], &script),
        DEADLINE,
    );
    let ctx = show(&f);
    assert_eq!(f.code, 0, "{ctx}");
    assert!(f.stdout.contains("permitted-ran"), "{ctx}");
    // The kill-on-exec tier: the refused image dies by SIGKILL before its first instruction.
    assert!(f.stdout.contains("unnamed=137"), "{ctx}");
    assert!(f.stdout.contains("named=137"), "{ctx}");
    assert!(!unnamed.exists(), "the unnamed tool ran its code\n{ctx}");
    assert!(
        !named.exists(),
        "the refused /usr/bin/touch ran its code\n{ctx}"
    );
    assert!(
        f.stderr.contains(&format!(
            "bridle: refused exec {} (NO_MATCHING_RULE)",
            scene.tool.display()
        )),
        "{ctx}"
    );
    assert!(
        f.stderr
            .contains("bridle: refused exec /usr/bin/touch (POLICY_REFUSED, rule no-touch)"),
        "{ctx}"
    );
    assert_clean("after a normal exit");
}

fn connect_case(v6: bool) {
    require_root();
    let _k = kernel_lock();
    let scene = Scene::new(v6);
    let policy = scene.policy("enforce");
    let ok = Scene::addr(&scene.permitted);
    let no = Scene::addr(&scene.refused);
    let script = format!("\"$PROBE\" connect {ok}; \"$PROBE\" connect {no}; true");
    let f = finish(bridle_run(&policy, &[], &script), DEADLINE);
    let ctx = show(&f);
    assert_eq!(f.code, 0, "{ctx}");
    assert!(f.stdout.contains(&format!("connect {ok}: ok")), "{ctx}");
    assert!(
        f.stdout.contains(&format!("connect {no}: errno {EPERM}")),
        "the refused connect must fail with EPERM\n{ctx}"
    );
    assert!(
        f.stderr
            .contains(&format!("bridle: refused connect {no} (NO_MATCHING_RULE)")),
        "{ctx}"
    );
    // The same connect from outside the workload is untouched.
    TcpStream::connect(&no).expect("a process outside the workload connects");
    assert_clean("after the connect test");
}

#[test]
fn ipv4_connects_are_judged() {
    connect_case(false);
}

#[test]
fn ipv6_connects_are_judged() {
    connect_case(true);
}

#[test]
fn observe_mode_lets_everything_through_and_reports() {
    require_root();
    let _k = kernel_lock();
    let scene = Scene::new(false);
    let policy = scene.policy("enforce");
    let marker = scene.path("observed-marker");
    let no = Scene::addr(&scene.refused);
    let script = format!(
        "{tool} {marker}; echo tool=$?; \"$PROBE\" connect {no}",
        tool = scene.tool.display(),
        marker = marker.display()
    );
    let f = finish(bridle_run(&policy, &["--observe"], &script), DEADLINE);
    let ctx = show(&f);
    assert_eq!(f.code, 0, "{ctx}");
    assert!(f.stdout.contains("tool=0"), "{ctx}");
    assert!(
        marker.exists(),
        "observe mode must not stop the exec\n{ctx}"
    );
    assert!(f.stdout.contains(&format!("connect {no}: ok")), "{ctx}");
    assert!(
        f.stderr.contains(&format!(
            "bridle: observed exec {} (OBSERVED: would be refused, NO_MATCHING_RULE)",
            scene.tool.display()
        )),
        "{ctx}"
    );
    assert!(
        f.stderr.contains(&format!(
            "bridle: observed connect {no} (OBSERVED: would be refused, NO_MATCHING_RULE)"
        )),
        "{ctx}"
    );
    assert_clean("after observe mode");
}

#[test]
fn sigterm_ends_the_workload_and_outsiders_are_unaffected_meanwhile() {
    require_root();
    let _k = kernel_lock();
    let scene = Scene::new(false);
    let policy = scene.policy("enforce");
    let ready = scene.path("ready");
    let script = format!(
        "echo > {ready}; exec /usr/bin/sleep 120",
        ready = ready.display()
    );
    let mut child = bridle_run(&policy, &[], &script)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bridle run");
    let start = Instant::now();
    while !ready.exists() {
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the workload never became ready");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // While the workload is confined, this test process (outside it) runs the very tool the
    // policy refuses, and connects where the workload may not.
    let outside = scene.path("outside-marker");
    let status = Command::new(&scene.tool)
        .arg(&outside)
        .status()
        .expect("run tool outside");
    assert!(
        status.success() && outside.exists(),
        "an outsider's exec was affected"
    );
    TcpStream::connect(Scene::addr(&scene.refused)).expect("an outsider's connect was affected");

    // SAFETY: kill(2) on the pid of the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bridle run ignored SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status:?}");
    assert_clean("after SIGTERM");
}

#[test]
fn a_killed_command_and_its_stragglers_leave_nothing_behind() {
    require_root();
    let _k = kernel_lock();
    let scene = Scene::new(false);
    let policy = scene.policy("enforce");
    // A background straggler survives its parent's SIGKILL; bridle must end it too.
    let f = finish(
        bridle_run(&policy, &[], "/usr/bin/sleep 120 & kill -9 $$"),
        DEADLINE,
    );
    assert_eq!(f.code, 128 + libc::SIGKILL, "{}", show(&f));
    assert_clean("after the command was SIGKILLed");
}

fn bridle(state: &Path, args: &[&str]) -> Finished {
    let mut cmd = Command::new(bridle_bin());
    cmd.env("BRIDLE_STATE_DIR", state).args(args);
    finish(cmd, DEADLINE)
}

#[test]
fn every_kernel_entry_is_signed_and_every_decision_audited() {
    require_root();
    let _k = kernel_lock();
    let scene = Scene::new(false);
    let policy = scene.policy("enforce");
    let state = scene.path("state");
    let script = format!(
        "/usr/bin/true; /usr/bin/touch {}; true",
        scene.path("m").display()
    );
    let f = finish(bridle_run(&policy, &[], &script), DEADLINE);
    assert_eq!(f.code, 0, "{}", show(&f));
    assert_clean("after the audited run");

    let verified = bridle(&state, &["permits", "verify"]);
    assert_eq!(verified.code, 0, "{}", show(&verified));
    let audit = bridle(&state, &["audit", "verify"]);
    assert_eq!(audit.code, 0, "{}", show(&audit));

    let export = bridle(&state, &["audit", "export", "--format", "jsonl"]);
    assert_eq!(export.code, 0, "{}", show(&export));
    let records: Vec<serde_json::Value> = export
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect();
    let find = |object: &str| {
        records
            .iter()
            .find(|r| r["object"] == object)
            .unwrap_or_else(|| panic!("no audit record for {object}:\n{}", export.stdout))
    };
    let refused = find("/usr/bin/touch");
    assert_eq!(refused["effect"], "refuse");
    assert_eq!(refused["code"], "POLICY_REFUSED");
    assert_eq!(refused["rule"], "no-touch");
    let permitted = find("/usr/bin/true");
    assert_eq!(permitted["effect"], "permit");
    assert_eq!(permitted["rule"], "system");

    // The permit each kernel entry carried is in the store, signed, for the deciding rule.
    let listed = bridle(&state, &["permits", "list"]);
    for (record, rule) in [(refused, "no-touch"), (permitted, "system")] {
        let id = record["permit_id"]
            .as_u64()
            .expect("the decision carries a permit id");
        let line = listed
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{id:016x}")))
            .unwrap_or_else(|| panic!("permit {id:016x} is not stored:\n{}", listed.stdout));
        assert!(line.contains(&format!("rule={rule}")), "{line}");
    }
}

/// A port nothing listens on: bound for a moment, then released, so a connect to it is
/// answered at once (refused by the peer, or a port-unreachable for UDP).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

#[test]
fn repeated_permits_are_counted_exactly_and_refusals_stay_individual() {
    require_root();
    let _k = kernel_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let (tcp, udp, refused) = (closed_port(), closed_port(), closed_port());
    let policy = dir.path().join("policy.toml");
    fs::write(
        &policy,
        format!(
            r#"
name = "tally"
default = "refuse"

[[rule]]
name = "system"
effect = "permit"
exec = ["/usr/bin/*", "/bin/*", "{probe}"]

[[rule]]
name = "peers"
effect = "permit"
connect = ["127.0.0.1:{tcp}", "127.0.0.1:{udp}"]
"#,
            probe = probe().display()
        ),
    )
    .expect("write policy");
    // One process connects long enough (well over a second) for the reader to harvest the
    // tally while it is being counted into; another counts under its own key at the same
    // time, on whichever CPU; then one refused connect.
    const TCP: u64 = 150_000;
    const UDP: u64 = 40_000;
    let script = format!(
        "$PROBE udp-loop 127.0.0.1:{udp} {UDP} >/dev/null & \
         $PROBE connect-loop 127.0.0.1:{tcp} {TCP} >/dev/null; wait; \
         $PROBE connect 127.0.0.1:{refused}"
    );
    let f = finish(bridle_run(&policy, &[], &script), DEADLINE * 3);
    assert_eq!(f.code, 1, "the refused connect fails\n{}", show(&f));
    assert!(
        f.stdout
            .contains(&format!("connect 127.0.0.1:{refused}: errno {EPERM}")),
        "{}",
        show(&f)
    );
    assert!(!f.stderr.contains("were lost"), "{}", show(&f));
    assert_clean("after the counted run");

    let state = dir.path().join("state");
    let audit = bridle(&state, &["audit", "verify"]);
    assert_eq!(audit.code, 0, "{}", show(&audit));
    let export = bridle(&state, &["audit", "export", "--format", "jsonl"]);
    assert_eq!(export.code, 0, "{}", show(&export));
    let records: Vec<serde_json::Value> = export
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect();
    let of = |port: u16| -> Vec<&serde_json::Value> {
        let object = format!("127.0.0.1:{port}");
        records.iter().filter(|r| r["object"] == object).collect()
    };
    for (port, n) in [(tcp, TCP), (udp, UDP)] {
        let recs = of(port);
        let total: u64 = recs
            .iter()
            .map(|r| r.get("count").and_then(|c| c.as_u64()).unwrap_or(1))
            .sum();
        assert_eq!(total, n, "decisions recorded for port {port}: {recs:#?}");
        for r in &recs {
            assert_eq!(r["action"], "connect");
            assert_eq!(r["effect"], "permit");
            assert_eq!(r["code"], "PERMITTED");
            assert_eq!(r["rule"], "peers");
            assert!(r["permit_id"].as_u64().is_some(), "{r}");
            assert_eq!(r["comm"], "bridle-probe");
            if let Some(count) = r.get("count") {
                assert!(count.as_u64().is_some_and(|c| c > 0), "{r}");
                let (first, last) = (r["first"].as_u64(), r["last"].as_u64());
                assert!(first.is_some() && first <= last, "{r}");
            }
        }
        // The point of counting: far fewer records than decisions.
        assert!(recs.len() < 50, "{} records for {n} decisions", recs.len());
    }
    let refusals = of(refused);
    assert_eq!(refusals.len(), 1, "{refusals:#?}");
    let r = refusals[0];
    assert_eq!(r["effect"], "refuse");
    assert_eq!(r["code"], "NO_MATCHING_RULE");
    assert!(
        r.get("count").is_none(),
        "a refusal is an individual record: {r}"
    );
}
