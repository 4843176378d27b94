//! Network enforcement beyond the plain TCP connect, against the real kernel: UDP datagrams sent
//! without connect, IPv4-mapped IPv6 destinations, TCP Fast Open, io_uring connects, raw and
//! packet sockets, and unix-socket connects and datagram sends. Every case asserts what the
//! workload saw (errno), what a real listener received, and that processes outside the
//! workload are unaffected.

use bridle_tests::{
    bridle_bin, finish, kernel_lock, leftover_pins, leftover_run_cgroups, loaded_bridle_programs,
    require_root, Finished,
};
use std::{
    fs,
    io::Write,
    net::{SocketAddr, TcpListener, UdpSocket},
    os::unix::net::{UnixDatagram, UnixListener, UnixStream},
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

/// Real unix peers for one test: stream listeners and datagram sockets bound in a temp dir,
/// and listeners on abstract names unique to this process.
struct UnixPeers {
    dir: tempfile::TempDir,
    abstract_prefix: String,
}

impl UnixPeers {
    fn new(tag: &str) -> UnixPeers {
        UnixPeers {
            dir: tempfile::tempdir().expect("tempdir"),
            abstract_prefix: format!("bridle-test-{tag}-{}", std::process::id()),
        }
    }

    /// The path of socket `name` in the temp dir.
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// An abstract name, as policies and the probe write it (`@…`).
    fn abstract_name(&self, name: &str) -> String {
        format!("@{}-{name}", self.abstract_prefix)
    }

    fn listen(&self, name: &str) -> UnixListener {
        let l = UnixListener::bind(self.path(name)).expect("bind a unix listener");
        l.set_nonblocking(true).expect("nonblocking");
        l
    }

    fn listen_abstract(&self, name: &str) -> UnixListener {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(
            self.abstract_name(name).trim_start_matches('@'),
        )
        .expect("abstract address");
        let l = UnixListener::bind_addr(&addr).expect("bind an abstract listener");
        l.set_nonblocking(true).expect("nonblocking");
        l
    }

    fn datagram(&self, name: &str) -> UnixDatagram {
        let d = UnixDatagram::bind(self.path(name)).expect("bind a unix datagram socket");
        d.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        d
    }
}

/// How many connections a listener has waiting.
fn accepted(l: &UnixListener) -> usize {
    std::iter::from_fn(|| l.accept().ok()).count()
}

/// A policy on exec like `policy`'s, with `default`, unix `permit` and `refuse` lists.
fn unix_policy(dir: &Path, default: &str, permit: &[String], refuse: &[String]) -> PathBuf {
    let list = |items: &[String]| {
        items
            .iter()
            .map(|c| format!("\"unix:{c}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut text = format!(
        r#"
name = "unix-test"
default = "{default}"

[[rule]]
name = "system"
effect = "permit"
exec = ["/usr/bin/*", "/bin/*", "{probe}"]
"#,
        probe = probe().display()
    );
    if !permit.is_empty() {
        text.push_str(&format!(
            "\n[[rule]]\nname = \"sockets\"\neffect = \"permit\"\nconnect = [{}]\n",
            list(permit)
        ));
    }
    if !refuse.is_empty() {
        text.push_str(&format!(
            "\n[[rule]]\nname = \"no-sockets\"\neffect = \"refuse\"\nconnect = [{}]\n",
            list(refuse)
        ));
    }
    let path = dir.join("unix-policy.toml");
    fs::write(&path, text).expect("write policy");
    path
}

/// Pathname and abstract sockets, stream connects and datagram sends: a permitted address is
/// reached, a refused one and one no rule names (default refuse) fail with EPERM as the
/// workload sees it and never reach their listener, and processes outside are unaffected.
#[test]
fn unix_connects_and_sends_are_judged_by_their_exact_address() {
    require_root();
    let _k = kernel_lock();
    let peers = UnixPeers::new("exact");
    let ok = peers.listen("ok.sock");
    let no = peers.listen("no.sock");
    let other = peers.listen("other.sock");
    let dg_ok = peers.datagram("dg-ok.sock");
    let dg_no = peers.datagram("dg-no.sock");
    let abs_ok = peers.listen_abstract("ok");
    let abs_no = peers.listen_abstract("no");
    let policy = unix_policy(
        peers.dir.path(),
        "refuse",
        &[
            peers.path("ok.sock"),
            peers.path("dg-ok.sock"),
            peers.abstract_name("ok"),
        ],
        &[peers.path("no.sock"), peers.path("dg-no.sock")],
    );
    let ops = [
        ("unix-connect", peers.path("ok.sock")),
        ("unix-connect-padded", peers.path("ok.sock")),
        ("unix-connect", peers.path("no.sock")),
        ("unix-connect-padded", peers.path("no.sock")),
        ("unix-connect", peers.path("other.sock")),
        ("unix-connect", peers.abstract_name("ok")),
        ("unix-connect", peers.abstract_name("no")),
        ("unix-send", peers.path("dg-ok.sock")),
        ("unix-send", peers.path("dg-no.sock")),
    ];
    let script: String = ops
        .iter()
        .map(|(op, arg)| format!("\"$PROBE\" {op} '{arg}'; "))
        .collect();
    let f = bridle_run(&policy, &format!("{script}true"));
    let ctx = show(&f);
    assert_eq!(f.code, 0, "{ctx}");
    for (op, arg, expect) in [
        ("unix-connect", peers.path("ok.sock"), "ok".to_owned()),
        (
            "unix-connect-padded",
            peers.path("ok.sock"),
            "ok".to_owned(),
        ),
        ("unix-connect", peers.abstract_name("ok"), "ok".to_owned()),
        ("unix-send", peers.path("dg-ok.sock"), "ok".to_owned()),
        (
            "unix-connect",
            peers.path("no.sock"),
            format!("errno {EPERM}"),
        ),
        (
            "unix-connect-padded",
            peers.path("no.sock"),
            format!("errno {EPERM}"),
        ),
        (
            "unix-connect",
            peers.path("other.sock"),
            format!("errno {EPERM}"),
        ),
        (
            "unix-connect",
            peers.abstract_name("no"),
            format!("errno {EPERM}"),
        ),
        (
            "unix-send",
            peers.path("dg-no.sock"),
            format!("errno {EPERM}"),
        ),
    ] {
        assert!(
            f.stdout.contains(&format!("{op} {arg}: {expect}\n")),
            "{op} {arg} should give {expect}\n{ctx}"
        );
    }
    for line in [
        format!(
            "bridle: refused connect unix:{} (POLICY_REFUSED, rule no-sockets)",
            peers.path("no.sock")
        ),
        format!(
            "bridle: refused connect unix:{} (NO_MATCHING_RULE)",
            peers.path("other.sock")
        ),
        format!(
            "bridle: refused connect unix:{} (NO_MATCHING_RULE)",
            peers.abstract_name("no")
        ),
        format!(
            "bridle: refused sendto unix:{} (POLICY_REFUSED, rule no-sockets)",
            peers.path("dg-no.sock")
        ),
    ] {
        assert!(f.stderr.contains(&line), "missing {line:?}\n{ctx}");
    }
    // What the listeners saw: the permitted connects (plain and padded) and datagram only.
    assert_eq!(accepted(&ok), 2, "{ctx}");
    assert_eq!(accepted(&abs_ok), 1, "{ctx}");
    assert_eq!(accepted(&no), 0, "a refused connect arrived\n{ctx}");
    assert_eq!(accepted(&other), 0, "{ctx}");
    assert_eq!(accepted(&abs_no), 0, "{ctx}");
    let mut buf = [0u8; 64];
    let n = dg_ok
        .recv(&mut buf)
        .expect("the permitted datagram arrived");
    assert_eq!(&buf[..n], b"probe\n");
    assert!(dg_no.recv(&mut buf).is_err(), "a refused datagram arrived");
    // Outside the workload the same connects and sends go through.
    UnixStream::connect(peers.path("no.sock")).expect("an outsider connects");
    assert_eq!(accepted(&no), 1);
    let outsider = UnixDatagram::unbound().expect("socket");
    outsider
        .send_to(b"outside", peers.path("dg-no.sock"))
        .expect("an outsider sends");
    let n = dg_no
        .recv(&mut buf)
        .expect("the outsider's datagram arrived");
    assert_eq!(&buf[..n], b"outside");
    assert_clean("after the unix exact-address test");
}

/// The hook sees the address as spelled, so a spelling a rule does not name exactly could dodge
/// it: `//`, `.` and `..` components, a trailing `/` and relative paths are refused unless a rule
/// names that spelling, even under a permitting default. A directory symlink's spelling of a
/// refused socket is refused too (bridle enters the spellings the host's symlinks give a rule).
#[test]
fn non_canonical_and_symlinked_spellings_of_a_refused_socket_are_refused() {
    require_root();
    let _k = kernel_lock();
    let peers = UnixPeers::new("spelling");
    fs::create_dir(peers.dir.path().join("real")).expect("real dir");
    std::os::unix::fs::symlink(peers.dir.path().join("real"), peers.dir.path().join("link"))
        .expect("dir symlink");
    let no = peers.listen("no.sock");
    let odd = peers.listen("odd.sock");
    let other = peers.listen("other.sock");
    let linked = peers.listen("real/linked.sock");
    let base = peers.dir.path().display().to_string();
    let dir_name = peers
        .dir
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .expect("temp dir name")
        .to_owned();
    let policy = unix_policy(
        peers.dir.path(),
        "permit",
        // A rule may name an odd spelling: then that spelling, exactly, is its.
        &[format!("{base}//odd.sock")],
        // Refused through the symlinked directory: the real path is refused as well.
        &[peers.path("no.sock"), peers.path("link/linked.sock")],
    );
    let refused = [
        format!("{base}//no.sock"),
        format!("{base}/./no.sock"),
        format!("{base}/../{dir_name}/no.sock"),
        format!("{base}/no.sock/"),
        // Non-canonical spellings of a socket no rule names are refused as well.
        format!("{base}/./other.sock"),
        peers.path("real/linked.sock"),
    ];
    let mut script = format!("cd '{base}'; \"$PROBE\" unix-connect no.sock; ");
    for path in &refused {
        script.push_str(&format!("\"$PROBE\" unix-connect '{path}'; "));
    }
    script.push_str(&format!(
        "\"$PROBE\" unix-connect '{base}//odd.sock'; \"$PROBE\" unix-connect '{}'; true",
        peers.path("other.sock")
    ));
    let f = bridle_run(&policy, &script);
    let ctx = show(&f);
    assert_eq!(f.code, 0, "{ctx}");
    assert!(
        f.stdout
            .contains(&format!("unix-connect no.sock: errno {EPERM}\n")),
        "a relative path is refused\n{ctx}"
    );
    for path in &refused {
        assert!(
            f.stdout
                .contains(&format!("unix-connect {path}: errno {EPERM}\n")),
            "{path} should be refused\n{ctx}"
        );
    }
    assert!(
        f.stdout
            .contains(&format!("unix-connect {base}//odd.sock: ok\n")),
        "{ctx}"
    );
    assert!(
        f.stdout
            .contains(&format!("unix-connect {}: ok\n", peers.path("other.sock"))),
        "{ctx}"
    );
    assert!(
        f.stderr.contains(&format!(
            "bridle: refused connect unix:{base}//no.sock (NO_MATCHING_RULE; not a canonical socket path)"
        )),
        "{ctx}"
    );
    assert!(
        f.stderr.contains(
            "bridle: refused connect unix:no.sock (NO_MATCHING_RULE; not a canonical socket path)"
        ),
        "{ctx}"
    );
    assert!(
        f.stderr.contains(&format!(
            "bridle: refused connect unix:{} (POLICY_REFUSED, rule no-sockets)",
            peers.path("real/linked.sock")
        )),
        "{ctx}"
    );
    assert_eq!(accepted(&no), 0, "{ctx}");
    assert_eq!(accepted(&linked), 0, "{ctx}");
    assert_eq!(accepted(&odd), 1, "{ctx}");
    assert_eq!(accepted(&other), 1, "{ctx}");
    assert_clean("after the unix spelling test");
}

/// Observe mode refuses no unix connect and reports each one it would have refused.
#[test]
fn observe_mode_lets_unix_connects_through_and_reports_them() {
    require_root();
    let _k = kernel_lock();
    let peers = UnixPeers::new("observe");
    let no = peers.listen("no.sock");
    let dg = peers.datagram("dg.sock");
    let policy = unix_policy(peers.dir.path(), "refuse", &[], &[peers.path("no.sock")]);
    let mut cmd = Command::new(bridle_bin());
    cmd.arg("run").arg("--policy").arg(&policy).arg("--observe");
    cmd.args([
        "--",
        "/bin/sh",
        "-c",
        &format!(
            "\"$PROBE\" unix-connect '{}'; \"$PROBE\" unix-send '{}'; \"$PROBE\" unix-connect '{}'; true",
            peers.path("no.sock"),
            peers.path("dg.sock"),
            peers.path("./no.sock"),
        ),
    ]);
    cmd.env("PROBE", probe());
    let f = finish(cmd, DEADLINE);
    let ctx = show(&f);
    assert_eq!(f.code, 0, "{ctx}");
    assert!(
        f.stdout
            .contains(&format!("unix-connect {}: ok", peers.path("no.sock"))),
        "{ctx}"
    );
    assert!(
        f.stdout
            .contains(&format!("unix-send {}: ok", peers.path("dg.sock"))),
        "{ctx}"
    );
    for line in [
        format!(
            "bridle: observed connect unix:{} (OBSERVED: would be refused, POLICY_REFUSED, rule no-sockets)",
            peers.path("no.sock")
        ),
        format!(
            "bridle: observed sendto unix:{} (OBSERVED: would be refused, NO_MATCHING_RULE)",
            peers.path("dg.sock")
        ),
        format!(
            "bridle: observed connect unix:{} (OBSERVED: would be refused, NO_MATCHING_RULE; not a canonical socket path)",
            peers.path("./no.sock")
        ),
    ] {
        assert!(f.stderr.contains(&line), "missing {line:?}\n{ctx}");
    }
    assert_eq!(accepted(&no), 2, "{ctx}");
    let mut buf = [0u8; 16];
    assert!(dg.recv(&mut buf).is_ok(), "{ctx}");
    assert!(
        !f.stderr.contains("unix-socket rules are not enforced"),
        "this kernel has the hooks\n{ctx}"
    );
    assert_clean("after the unix observe test");
}
