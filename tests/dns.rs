//! Host names decided at DNS time, against the real kernel and a real `dnsmasq` on loopback:
//! the workload's DNS goes to bridle's resolver whatever address it was sent to; an allowed
//! name's addresses connect (only after resolving, and only until the TTL runs out); a
//! disallowed name is REFUSED and reported; TCP, truncation, CNAME chains, IPv6-only names,
//! NXDOMAIN, a silent upstream and spoofed responses; processes outside are unaffected.

use bridle_tests::{
    ask, bridle_bin, finish, kernel_lock, leftover_pins, leftover_run_cgroups,
    loaded_bridle_programs, require_root, Dnsmasq, Finished,
};
use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

const DEADLINE: Duration = Duration::from_secs(60);
const EPERM: i32 = 1;
/// getaddrinfo's "no such name".
const EAI_NONAME: i32 = -2;
fn probe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bridle-probe"))
}

/// Writes a policy permitting the shell and the probe, plus `connect` targets.
fn policy(dir: &Path, connect: &[String]) -> PathBuf {
    let list = connect
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        r#"
name = "dns-test"
default = "refuse"

[[rule]]
name = "system"
effect = "permit"
exec = ["/usr/bin/*", "/bin/*", "{probe}"]

[[rule]]
name = "names"
effect = "permit"
connect = [{list}]
"#,
        probe = probe().display()
    );
    let path = dir.join("policy.toml");
    fs::write(&path, text).expect("write policy");
    path
}

fn bridle_run(policy: &Path, upstream: SocketAddr, extra: &[&str], script: &str) -> Finished {
    let mut cmd = Command::new(bridle_bin());
    cmd.arg("run").arg("--policy").arg(policy);
    cmd.arg("--dns-upstream").arg(upstream.to_string());
    cmd.args(["--dns-ttl-min", "1"]);
    cmd.args(extra);
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

/// Whether `pid` runs a `bridle` other than the one under test (the machine is shared).
fn foreign_bridle(pid: u32) -> bool {
    let ours = fs::canonicalize(bridle_bin()).ok();
    match fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(exe) => Some(exe) != ours,
        Err(_) => false,
    }
}

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

#[test]
fn allowed_name_connects_only_after_resolving_and_others_are_refused() {
    require_root();
    let _k = kernel_lock();
    let dns = Dnsmasq::start(&[]);
    let listener = TcpListener::bind("127.0.0.2:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let other = TcpListener::bind(format!("127.0.0.3:{port}")).expect("listen");
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = policy(dir.path(), &[format!("allowed.test:{port}")]);
    let f = bridle_run(
        &policy,
        dns.addr,
        &[],
        &format!(
            "\"$PROBE\" connect 127.0.0.2:{port}; \"$PROBE\" resolve-connect allowed.test {port}; \
             \"$PROBE\" resolve other.test; \"$PROBE\" connect 127.0.0.3:{port}; true"
        ),
    );
    let ctx = show(&f);
    assert_eq!(f.code, 0, "{ctx}");
    assert!(
        f.stdout
            .contains(&format!("connect 127.0.0.2:{port}: errno {EPERM}")),
        "a direct connect before resolving must be refused\n{ctx}"
    );
    assert!(
        f.stderr.contains(&format!(
            "bridle: refused connect 127.0.0.2:{port} (NO_MATCHING_RULE; not an address of an allowed name)"
        )),
        "{ctx}"
    );
    assert!(
        f.stdout.contains(&format!(
            "resolve-connect allowed.test: ok 127.0.0.2:{port}"
        )),
        "{ctx}"
    );
    assert!(
        f.stdout.contains("resolve other.test: eai "),
        "a disallowed name must not resolve\n{ctx}"
    );
    assert!(
        f.stderr
            .contains("bridle: refused resolve other.test A (NAME_NOT_ALLOWED"),
        "{ctx}"
    );
    assert!(
        f.stdout
            .contains(&format!("connect 127.0.0.3:{port}: errno {EPERM}")),
        "{ctx}"
    );
    drop((listener, other, dns));
    assert_clean("after the allowed/refused name test");
}

#[test]
fn a_dns_permit_expires_with_its_ttl() {
    require_root();
    let _k = kernel_lock();
    let dns = Dnsmasq::start(&["--local-ttl=1"]);
    let listener = TcpListener::bind("127.0.0.2:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = policy(dir.path(), &[format!("allowed.test:{port}")]);
    let f = bridle_run(
        &policy,
        dns.addr,
        &["--dns-ttl-max", "1"],
        &format!(
            "\"$PROBE\" resolve-connect allowed.test {port}; \"$PROBE\" connect 127.0.0.2:{port}; \
             sleep 2.5; \"$PROBE\" connect 127.0.0.2:{port}; true"
        ),
    );
    let ctx = show(&f);
    assert!(
        f.stdout.contains(&format!(
            "resolve-connect allowed.test: ok 127.0.0.2:{port}"
        )),
        "{ctx}"
    );
    let lines: Vec<&str> = f
        .stdout
        .lines()
        .filter(|l| l.starts_with("connect "))
        .collect();
    assert_eq!(
        lines,
        vec![
            format!("connect 127.0.0.2:{port}: ok"),
            format!("connect 127.0.0.2:{port}: errno {EPERM}")
        ],
        "the address connects while its answer lives, and not after\n{ctx}"
    );
    drop((listener, dns));
    assert_clean("after the TTL test");
}

#[test]
fn dns_over_tcp_cname_chains_and_ipv6_only_names() {
    require_root();
    let _k = kernel_lock();
    let dns = Dnsmasq::start(&[]);
    let v4 = TcpListener::bind("127.0.0.4:0").expect("listen");
    let port = v4.local_addr().expect("addr").port();
    let v6 = TcpListener::bind(format!("[::1]:{port}")).expect("listen on ::1");
    let allowed = TcpListener::bind(format!("127.0.0.2:{port}")).expect("listen");
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = policy(
        dir.path(),
        &[
            format!("allowed.test:{port}"),
            format!("*.cname.test:{port}"),
            format!("v6only.test:{port}"),
        ],
    );
    let f = bridle_run(
        &policy,
        dns.addr,
        &["-v"],
        &format!(
            "\"$PROBE\" connect 127.0.0.4:{port}; \"$PROBE\" connect [::1]:{port}; \
             \"$PROBE\" resolve-connect alias.cname.test {port}; \
             \"$PROBE\" resolve-connect v6only.test {port}; \
             RES_OPTIONS=use-vc \"$PROBE\" resolve-connect allowed.test {port}; true"
        ),
    );
    let ctx = show(&f);
    assert!(
        f.stdout
            .contains(&format!("connect 127.0.0.4:{port}: errno {EPERM}")),
        "{ctx}"
    );
    assert!(
        f.stdout
            .contains(&format!("connect [::1]:{port}: errno {EPERM}")),
        "{ctx}"
    );
    assert!(
        f.stdout.contains(&format!(
            "resolve-connect alias.cname.test: ok 127.0.0.4:{port}"
        )),
        "the CNAME target's address must be permitted\n{ctx}"
    );
    assert!(
        f.stdout
            .contains(&format!("resolve-connect v6only.test: ok [::1]:{port}")),
        "{ctx}"
    );
    assert!(
        f.stdout.contains(&format!(
            "resolve-connect allowed.test: ok 127.0.0.2:{port}"
        )),
        "{ctx}"
    );
    assert!(
        f.stderr
            .contains("bridle: permitted resolve allowed.test A over TCP"),
        "the query must have come over TCP\n{ctx}"
    );
    drop((v4, v6, allowed, dns));
    assert_clean("after the TCP/CNAME/IPv6 test");
}

#[test]
fn nxdomain_passes_through_and_a_silent_upstream_gets_servfail() {
    require_root();
    let _k = kernel_lock();
    let dns = Dnsmasq::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = policy(
        dir.path(),
        &["nx.test:443".to_owned(), "allowed.test:443".to_owned()],
    );
    let f = bridle_run(&policy, dns.addr, &[], "\"$PROBE\" resolve nx.test; true");
    let ctx = show(&f);
    assert!(
        f.stdout
            .contains(&format!("resolve nx.test: eai {EAI_NONAME}")),
        "NXDOMAIN must reach the workload as such\n{ctx}"
    );
    assert!(!f.stderr.contains("refused resolve"), "{ctx}");

    // An upstream that never answers.
    let silent = UdpSocket::bind("127.0.0.78:0").expect("bind");
    let started = Instant::now();
    let f = bridle_run(
        &policy,
        silent.local_addr().expect("addr"),
        &["--dns-timeout", "300"],
        "\"$PROBE\" resolve allowed.test; true",
    );
    let ctx = show(&f);
    assert!(f.stdout.contains("resolve allowed.test: eai "), "{ctx}");
    assert!(
        !f.stdout
            .contains(&format!("resolve allowed.test: eai {EAI_NONAME}")),
        "a timeout is not a missing name\n{ctx}"
    );
    assert!(
        f.stderr
            .contains("did not answer in time; answered SERVFAIL"),
        "{ctx}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "SERVFAIL must come after the resolver's timeout, not the client's"
    );
    drop((silent, dns));
    assert_clean("after the NXDOMAIN/SERVFAIL test");
}

/// A fake upstream: over UDP it first sends a response with the wrong id, then one with the
/// wrong question (both pointing at 127.0.0.9), then the right one (127.0.0.2); with
/// `truncate`, UDP only ever gets TC=1 and the answer comes over TCP.
struct Fake {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The response to `q` with id `id`, flags `flags`, and for A queries `ip`.
fn respond(q: &[u8], id: u16, flags: u16, ip: Option<[u8; 4]>, rename: bool) -> Vec<u8> {
    let mut end = 12;
    while end < q.len() && q[end] != 0 {
        end += 1 + q[end] as usize;
    }
    end += 5; // the root label, type and class
    let qtype = u16::from_be_bytes([q[end - 4], q[end - 3]]);
    let ip = if qtype == 1 { ip } else { None };
    let mut r = Vec::new();
    r.extend_from_slice(&id.to_be_bytes());
    r.extend_from_slice(&flags.to_be_bytes());
    r.extend_from_slice(&[0, 1, 0, ip.map_or(0, |_| 1), 0, 0, 0, 0]);
    let mut question = q[12..end].to_vec();
    if rename {
        question[1] ^= 0x01; // another name
    }
    r.extend_from_slice(&question);
    if let Some(ip) = ip {
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        r.extend_from_slice(&ip);
    }
    r
}

fn fake_upstream(truncate: bool) -> Fake {
    let udp = UdpSocket::bind("127.0.0.79:0").expect("bind");
    let addr = udp.local_addr().expect("addr");
    let tcp = TcpListener::bind(addr).expect("bind tcp");
    udp.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    tcp.set_nonblocking(true).expect("nonblocking");
    let stop = Arc::new(AtomicBool::new(false));
    let s1 = Arc::clone(&stop);
    let u = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !s1.load(Ordering::SeqCst) {
            let Ok((n, peer)) = udp.recv_from(&mut buf) else {
                continue;
            };
            let q = &buf[..n];
            let id = u16::from_be_bytes([q[0], q[1]]);
            if truncate {
                let _ = udp.send_to(&respond(q, id, 0x8380, None, false), peer);
                continue;
            }
            let spoof = Some([127, 0, 0, 9]);
            let _ = udp.send_to(&respond(q, id.wrapping_add(1), 0x8180, spoof, false), peer);
            let _ = udp.send_to(&respond(q, id, 0x8180, spoof, true), peer);
            let _ = udp.send_to(&respond(q, id, 0x8180, Some([127, 0, 0, 2]), false), peer);
        }
    });
    let s2 = Arc::clone(&stop);
    let t = std::thread::spawn(move || {
        while !s2.load(Ordering::SeqCst) {
            let Ok((mut c, _)) = tcp.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = c.set_nonblocking(false);
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let mut len = [0u8; 2];
            while c.read_exact(&mut len).is_ok() {
                let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                if c.read_exact(&mut q).is_err() {
                    break;
                }
                let id = u16::from_be_bytes([q[0], q[1]]);
                let r = respond(&q, id, 0x8180, Some([127, 0, 0, 2]), false);
                let mut framed = (r.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&r);
                let _ = c.write_all(&framed);
            }
        }
    });
    Fake {
        addr,
        stop,
        threads: vec![u, t],
    }
}

#[test]
fn spoofed_responses_are_dropped_and_truncation_goes_to_tcp() {
    require_root();
    let _k = kernel_lock();
    let listener = TcpListener::bind("127.0.0.2:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let spoofed = TcpListener::bind(format!("127.0.0.9:{port}")).expect("listen");
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = policy(dir.path(), &[format!("allowed.test:{port}")]);
    let fake = fake_upstream(false);
    let f = bridle_run(
        &policy,
        fake.addr,
        &["-v"],
        &format!("\"$PROBE\" resolve allowed.test; \"$PROBE\" connect 127.0.0.9:{port}; true"),
    );
    let ctx = show(&f);
    assert!(
        f.stdout.contains("resolve allowed.test: ok 127.0.0.2\n"),
        "only the matching response counts\n{ctx}"
    );
    assert!(
        f.stdout
            .contains(&format!("connect 127.0.0.9:{port}: errno {EPERM}")),
        "a spoofed answer's address must not be permitted\n{ctx}"
    );
    drop(fake);

    let fake = fake_upstream(true);
    let f = bridle_run(
        &policy,
        fake.addr,
        &["-v"],
        &format!("\"$PROBE\" resolve-connect allowed.test {port}; true"),
    );
    let ctx = show(&f);
    assert!(
        f.stdout.contains(&format!(
            "resolve-connect allowed.test: ok 127.0.0.2:{port}"
        )),
        "{ctx}"
    );
    assert!(
        f.stderr
            .contains("bridle: permitted resolve allowed.test A over TCP"),
        "a truncated answer must make the client retry over TCP\n{ctx}"
    );
    drop((fake, listener, spoofed));
    assert_clean("after the spoofing/truncation test");
}

#[test]
fn processes_outside_the_workload_still_reach_dnsmasq() {
    require_root();
    let _k = kernel_lock();
    let dns = Dnsmasq::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = policy(dir.path(), &["allowed.test:443".to_owned()]);
    let addr = dns.addr;
    let run = std::thread::spawn(move || {
        bridle_run(
            &policy,
            addr,
            &[],
            "\"$PROBE\" resolve other.test; sleep 2; true",
        )
    });
    std::thread::sleep(Duration::from_millis(1000));
    // While a workload is confined, the test process (outside it) asks dnsmasq directly for
    // the very name the workload is refused.
    assert_eq!(ask(dns.addr, "other.test"), Some([127, 0, 0, 3]));
    let f = run.join().expect("bridle run thread");
    let ctx = show(&f);
    assert!(f.stdout.contains("resolve other.test: eai "), "{ctx}");
    drop(dns);
    assert_clean("after the outside test");
}
