//! Network enforcement beyond the plain TCP connect, against the real kernel: UDP datagrams sent
//! without connect, IPv4-mapped IPv6 destinations, TCP Fast Open, io_uring connects, and raw
//! and packet sockets. Every case asserts what the workload saw (errno), what a real listener
//! received, and that processes outside the workload are unaffected.

use bridle_tests::{
    bridle_bin, finish, kernel_lock, leftover_pins, leftover_run_cgroups, loaded_bridle_programs,
    require_root, Finished,
};
use std::{
    fs,
    io::Write,
    net::{SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

const DEADLINE: Duration = Duration::from_secs(60);
const EPERM: i32 = 1;

fn probe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bridle-probe"))
}

/// `host:port` as the policy language writes it.
fn target(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// Writes a policy that permits the shell and the probe, plus `connect` targets.
fn policy(dir: &Path, connect: &[String]) -> PathBuf {
    let list = connect
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut text = format!(
        r#"
name = "net-test"
default = "refuse"

[[rule]]
name = "system"
effect = "permit"
exec = ["/usr/bin/*", "/bin/*", "{probe}"]
"#,
        probe = probe().display()
    );
    // An empty `connect` list is a policy error: leave the rule out instead.
    if !connect.is_empty() {
        text.push_str(&format!(
            "\n[[rule]]\nname = \"peers\"\neffect = \"permit\"\nconnect = [{list}]\n"
        ));
    }
    let path = dir.join("policy.toml");
    fs::File::create(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("write policy");
    path
}

fn bridle_run(policy: &Path, script: &str) -> Finished {
    let mut cmd = Command::new(bridle_bin());
    cmd.arg("run").arg("--policy").arg(policy);
    cmd.args(["--", "/bin/sh", "-c", script]);
    cmd.env("PROBE", probe());
    finish(cmd, DEADLINE)
}

fn show(f: &Finished) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        f.code, f.stdout, f.stderr
    )
}

/// Whether `pid` is a live process running a `bridle` other than the one under test: the
/// machine is shared, and another checkout's tests or benchmarks may be confining workloads
/// of their own at the same time. Those are not this test's leftovers.
fn foreign_bridle(pid: u32) -> bool {
    let ours = fs::canonicalize(bridle_bin()).ok();
    match fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(exe) => Some(exe) != ours,
        Err(_) => false,
    }
}

/// What this test left behind: `bridle run` cgroups whose owner is gone or is our binary, and
/// bridle programs held by no foreign bridle process.
fn leftovers() -> (Vec<PathBuf>, Vec<String>) {
    let cgroups = leftover_run_cgroups()
        .into_iter()
        .filter(|p| {
            let pid = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("bridle-run-"))
                .and_then(|n| n.parse::<u32>().ok());
            !pid.is_some_and(foreign_bridle)
        })
        .collect();
    let mut programs = loaded_bridle_programs();
    if !programs.is_empty() {
        let out = Command::new("bpftool")
            .args(["-j", "prog", "list"])
            .output()
            .expect("bpftool");
        let list: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        let foreign_ids: Vec<String> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                p["pids"].as_array().is_some_and(|pids| {
                    !pids.is_empty()
                        && pids.iter().all(|x| {
                            x["pid"]
                                .as_u64()
                                .is_some_and(|pid| foreign_bridle(pid as u32))
                        })
                })
            })
            .filter_map(|p| p["id"].as_u64().map(|id| format!("{id}: ")))
            .collect();
        programs.retain(|line| !foreign_ids.iter().any(|id| line.starts_with(id)));
    }
    (cgroups, programs)
}

fn assert_clean(context: &str) {
    // The kernel frees a detached program a moment after its last fd closes, and an exiting
    // workload's cgroup a moment after its last task: wait for that, boundedly.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left = leftovers();
    while (!left.0.is_empty() || !left.1.is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        left = leftovers();
    }
    assert_eq!(left.0, Vec::<PathBuf>::new(), "{context}: cgroups left");
    assert_eq!(left.1, Vec::<String>::new(), "{context}: programs left");
    assert!(!leftover_pins(), "{context}: pins left");
}

/// Reads one datagram, or `None` after a short wait.
fn received(sock: &UdpSocket) -> Option<Vec<u8>> {
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    sock.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

fn udp_case(host: &str) {
    require_root();
    let _k = kernel_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let permitted = UdpSocket::bind(format!("{host}:0")).expect("bind");
    let refused = UdpSocket::bind(format!("{host}:0")).expect("bind");
    let ok = permitted.local_addr().expect("addr");
    let no = refused.local_addr().expect("addr");
    let policy = policy(dir.path(), &[target(ok)]);
    let f = bridle_run(
        &policy,
        &format!("\"$PROBE\" udp-send {ok}; \"$PROBE\" udp-send {no}; true"),
    );
    let ctx = show(&f);
    assert_eq!(f.code, 0, "{ctx}");
    assert!(f.stdout.contains(&format!("udp-send {ok}: ok")), "{ctx}");
    assert!(
        f.stdout.contains(&format!("udp-send {no}: errno {EPERM}")),
        "a datagram to a refused address must fail with EPERM\n{ctx}"
    );
    assert!(
        f.stderr
            .contains(&format!("bridle: refused sendto {no} (NO_MATCHING_RULE)")),
        "{ctx}"
    );
    assert_eq!(
        received(&permitted).as_deref(),
        Some(&b"probe\n"[..]),
        "{ctx}"
    );
    assert_eq!(
        received(&refused),
        None,
        "the refused datagram arrived\n{ctx}"
    );
    // Outside the workload the same send goes through.
    let outsider = UdpSocket::bind(format!("{host}:0")).expect("bind");
    outsider.send_to(b"outside", no).expect("outsider sends");
    assert_eq!(received(&refused).as_deref(), Some(&b"outside"[..]));
    assert_clean("after the UDP test");
}

#[test]
fn udp_sendto_without_connect_is_judged_ipv4() {
    udp_case("127.0.0.1");
}

#[test]
fn udp_sendto_without_connect_is_judged_ipv6() {
    udp_case("[::1]");
}

/// A dual-stack socket sending to `::ffff:127.0.0.1` is judged by the IPv4 rules.
#[test]
fn ipv4_mapped_destinations_meet_the_ipv4_rules() {
    require_root();
    let _k = kernel_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let permitted = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let refused = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let tcp_refused = TcpListener::bind("127.0.0.1:0").expect("bind");
    let ok = permitted.local_addr().expect("addr").port();
    let no = refused.local_addr().expect("addr").port();
    let tcp_no = tcp_refused.local_addr().expect("addr").port();
    let policy = policy(dir.path(), &[format!("127.0.0.1:{ok}")]);
    let f = bridle_run(
        &policy,
        &format!(
            "\"$PROBE\" udp-send [::ffff:127.0.0.1]:{ok}; \"$PROBE\" udp-send [::ffff:127.0.0.1]:{no}; \"$PROBE\" connect [::ffff:127.0.0.1]:{tcp_no}; true"
        ),
    );
    let ctx = show(&f);
    assert!(
        f.stdout
            .contains(&format!("udp-send [::ffff:127.0.0.1]:{ok}: ok")),
        "{ctx}"
    );
    assert!(
        f.stdout
            .contains(&format!("udp-send [::ffff:127.0.0.1]:{no}: errno {EPERM}")),
        "{ctx}"
    );
    assert!(
        f.stdout.contains(&format!(
            "connect [::ffff:127.0.0.1]:{tcp_no}: errno {EPERM}"
        )),
        "{ctx}"
    );
    assert_eq!(
        received(&permitted).as_deref(),
        Some(&b"probe\n"[..]),
        "{ctx}"
    );
    assert_eq!(received(&refused), None, "{ctx}");
    assert_clean("after the mapped-address test");
}

/// TCP Fast Open connects inside `sendto`, io_uring without connect(2): both meet the connect
/// hook, so a refused address is refused, and a permitted one is reached.
#[test]
fn tcp_fast_open_and_io_uring_connects_are_judged() {
    require_root();
    let _k = kernel_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let permitted = TcpListener::bind("127.0.0.1:0").expect("bind");
    let refused = TcpListener::bind("127.0.0.1:0").expect("bind");
    let refused6 = TcpListener::bind("[::1]:0").expect("bind");
    let ok = permitted.local_addr().expect("addr");
    let no = refused.local_addr().expect("addr");
    let no6 = refused6.local_addr().expect("addr");
    let policy = policy(dir.path(), &[target(ok)]);
    let script = format!(
        "for op in tfo uring-connect; do for a in {ok} {no} {no6}; do \"$PROBE\" $op $a; done; done; true"
    );
    let f = bridle_run(&policy, &script);
    let ctx = show(&f);
    assert_eq!(f.code, 0, "{ctx}");
    for op in ["tfo", "uring-connect"] {
        assert!(f.stdout.contains(&format!("{op} {ok}: ok")), "{ctx}");
        for no in [no, no6] {
            assert!(
                f.stdout.contains(&format!("{op} {no}: errno {EPERM}")),
                "{op} to a refused address must fail with EPERM\n{ctx}"
            );
        }
    }
    // Both accepted connections to the permitted listener really arrived.
    permitted.set_nonblocking(true).expect("nonblocking");
    let accepted = std::iter::from_fn(|| permitted.accept().ok()).count();
    assert_eq!(accepted, 2, "{ctx}");
    refused.set_nonblocking(true).expect("nonblocking");
    assert!(
        refused.accept().is_err(),
        "a refused connect arrived\n{ctx}"
    );
    assert_clean("after the TFO and io_uring test");
}

/// Opens a raw socket here, outside any workload; true if the kernel allowed it.
fn raw_socket_outside() -> bool {
    // SAFETY: plain socket(2) and close(2) calls on an fd this function owns.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
        if fd >= 0 {
            libc::close(fd);
        }
        fd >= 0
    }
}

#[test]
fn raw_and_packet_sockets_are_refused_unless_a_rule_names_raw() {
    require_root();
    let _k = kernel_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let script = "\"$PROBE\" raw-socket; \"$PROBE\" packet-socket; true";

    let refusing = policy(dir.path(), &[]);
    let f = bridle_run(&refusing, script);
    let ctx = show(&f);
    assert_eq!(f.code, 0, "{ctx}");
    assert!(
        f.stdout.contains(&format!("raw-socket: errno {EPERM}")),
        "{ctx}"
    );
    assert!(
        f.stdout.contains(&format!("packet-socket: errno {EPERM}")),
        "{ctx}"
    );
    assert!(raw_socket_outside(), "an outsider's raw socket was refused");

    // Observe mode refuses nothing (the command keeps CAP_NET_RAW), so the sock_create hook
    // itself judges the raw IP socket and reports what it would have refused. (Packet sockets
    // never reach that hook: only the capability keeps them out.)
    let mut cmd = Command::new(bridle_bin());
    cmd.arg("run")
        .arg("--policy")
        .arg(&refusing)
        .arg("--observe");
    cmd.args(["--", "/bin/sh", "-c", script]);
    cmd.env("PROBE", probe());
    let f = finish(cmd, DEADLINE);
    let ctx = show(&f);
    assert!(f.stdout.contains("raw-socket: ok"), "{ctx}");
    assert!(
        f.stderr.contains(
            "bridle: observed socket AF_INET SOCK_RAW (raw) (OBSERVED: would be refused, NO_MATCHING_RULE)"
        ),
        "{ctx}"
    );

    let permitting = policy(dir.path(), &["raw".to_owned()]);
    let f = bridle_run(&permitting, script);
    let ctx = show(&f);
    assert!(f.stdout.contains("raw-socket: ok"), "{ctx}");
    assert!(f.stdout.contains("packet-socket: ok"), "{ctx}");
    assert!(
        f.stderr
            .contains("bridle: permitted socket AF_INET SOCK_RAW (raw)")
            || !f.stderr.contains("refused socket"),
        "{ctx}"
    );
    assert_clean("after the raw-socket test");
}

/// Unix sockets are not hooked by this build; `bridle run` must say so rather than imply it.
#[test]
fn unix_rules_are_reported_as_not_enforced() {
    require_root();
    let _k = kernel_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = policy(dir.path(), &["unix:/run/none.sock".to_owned()]);
    let f = bridle_run(&policy, "true");
    let ctx = show(&f);
    assert_eq!(f.code, 0, "{ctx}");
    assert!(
        f.stderr.contains("unix-socket rules are not enforced"),
        "{ctx}"
    );
    assert_clean("after the unix warning test");
}
