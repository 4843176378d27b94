//! `bridle-probe`: a workload program for the integration tests.
//!
//! `bridle-probe connect ADDR` connects over TCP and prints `connect ADDR: ok` or
//! `connect ADDR: errno N`; the exit status is 0 or 1. The tests read what the workload saw,
//! not what bridle says it did.
//!
//! The other subcommands are the workloads of `cargo xtask bench`: each does one operation in a
//! tight loop and prints what it measured, so the figure never includes process start-up.

use std::{
    io::Write,
    net::TcpStream,
    time::{Duration, Instant},
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.as_slice() {
        [cmd, addr] if cmd == "connect" => connect(addr),
        [cmd, addr, n] if cmd == "connect-loop" => connect_loop(addr, n),
        [cmd, addr, n] if cmd == "udp-loop" => udp_loop(addr, n),
        [cmd, addr, rate, millis] if cmd == "udp-rate" => udp_rate(addr, rate, millis),
        [cmd, n, path] if cmd == "exec-loop" => exec_loop(n, path),
        [cmd, n, path, allow @ ..] if cmd == "landlock-exec-loop" => {
            landlock_exec_loop(n, path, allow)
        }
        [cmd, file] if cmd == "ready" => ready(file),
        _ => {
            eprintln!(
                "usage: bridle-probe connect ADDR | connect-loop ADDR N | udp-loop ADDR N \
                 | udp-rate ADDR RATE MILLIS | exec-loop N PATH \
                 | landlock-exec-loop N PATH ALLOWED... | ready FILE"
            );
            2
        }
    };
    std::process::exit(code);
}

fn connect(addr: &str) -> i32 {
    let Ok(sock) = addr.parse() else {
        eprintln!("bad address {addr}");
        return 2;
    };
    match TcpStream::connect_timeout(&sock, Duration::from_secs(5)) {
        Ok(mut s) => {
            let _ = s.write_all(b"probe\n");
            println!("connect {addr}: ok");
            0
        }
        Err(err) => {
            println!("connect {addr}: errno {}", err.raw_os_error().unwrap_or(-1));
            1
        }
    }
}

/// Connects `n` times (a closed port answers at once) and prints the mean in nanoseconds: the
/// per-connect cost the benchmarks compare inside and outside a workload.
fn connect_loop(addr: &str, n: &str) -> i32 {
    let (Ok(sock), Ok(n)) = (addr.parse::<std::net::SocketAddr>(), n.parse::<u32>()) else {
        eprintln!("bad arguments {addr} {n}");
        return 2;
    };
    let start = Instant::now();
    for _ in 0..n {
        let _ = TcpStream::connect(sock);
    }
    println!("{}", start.elapsed().as_nanos() / u128::from(n.max(1)));
    0
}

/// One UDP socket, `connect`, a one-byte send and `close`, `n` times; prints the mean in
/// nanoseconds. The send is there because a UDP connect alone puts no packet on the wire, and
/// a firewall only sees packets: without it the nftables peer would look free.
fn udp_loop(addr: &str, n: &str) -> i32 {
    let (Ok(sock), Ok(n)) = (addr.parse::<std::net::SocketAddrV4>(), n.parse::<u32>()) else {
        eprintln!("bad arguments {addr} {n}");
        return 2;
    };
    let sa = sockaddr_in(&sock);
    let start = Instant::now();
    for _ in 0..n {
        udp_once(&sa, true);
    }
    println!("{}", start.elapsed().as_nanos() / u128::from(n.max(1)));
    0
}

/// UDP connects paced at `rate` per second for `millis` milliseconds (0: as fast as possible);
/// prints `OPS ACHIEVED_PER_SECOND`. The event-path benchmark drives bridle's decision events
/// with it: every permitted connect is one event.
fn udp_rate(addr: &str, rate: &str, millis: &str) -> i32 {
    let (Ok(sock), Ok(rate), Ok(millis)) = (
        addr.parse::<std::net::SocketAddrV4>(),
        rate.parse::<u64>(),
        millis.parse::<u64>(),
    ) else {
        eprintln!("bad arguments {addr} {rate} {millis}");
        return 2;
    };
    let sa = sockaddr_in(&sock);
    let length = Duration::from_millis(millis);
    let start = Instant::now();
    let mut ops: u64 = 0;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= length {
            break;
        }
        // Pace against the schedule, not the previous op, so a slow op is caught up on; a
        // rate of 0 has no schedule.
        if let Some(due) = ops.saturating_mul(1_000_000_000).checked_div(rate) {
            let due = Duration::from_nanos(due);
            if due > elapsed {
                let ahead = due - elapsed;
                if ahead > Duration::from_micros(200) {
                    std::thread::sleep(ahead);
                }
                continue;
            }
        }
        udp_once(&sa, false);
        ops += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{ops} {:.0}", ops as f64 / secs);
    0
}

fn sockaddr_in(addr: &std::net::SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

fn udp_once(sa: &libc::sockaddr_in, send: bool) {
    // SAFETY: plain socket calls on a descriptor this function owns and closes; `sa` is a valid
    // sockaddr_in of the size passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return;
        }
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::connect(fd, (sa as *const libc::sockaddr_in).cast(), len) == 0 && send {
            libc::send(fd, b"x".as_ptr().cast(), 1, 0);
        }
        libc::close(fd);
    }
}

/// Runs `path` (no arguments) `n` times, waiting for each, and prints the mean in nanoseconds.
fn exec_loop(n: &str, path: &str) -> i32 {
    let Ok(n) = n.parse::<u32>() else {
        eprintln!("bad count {n}");
        return 2;
    };
    let start = Instant::now();
    for _ in 0..n {
        match std::process::Command::new(path).status() {
            Ok(status) if status.success() => {}
            Ok(status) => {
                eprintln!("{path}: {status}");
                return 1;
            }
            Err(err) => {
                eprintln!("{path}: {err}");
                return 1;
            }
        }
    }
    println!("{}", start.elapsed().as_nanos() / u128::from(n.max(1)));
    0
}

/// Restricts itself with Landlock so that only the `allowed` files may be executed (the
/// Landlock form of an exec allow-list), then runs the exec loop: the peer of bridle's exec
/// rules.
fn landlock_exec_loop(n: &str, path: &str, allowed: &[String]) -> i32 {
    use landlock::{
        AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    };
    let restrict = || -> Result<RulesetStatus, String> {
        let execute = AccessFs::Execute;
        let mut ruleset = Ruleset::default()
            .handle_access(execute)
            .and_then(|r| r.create())
            .map_err(|e| e.to_string())?;
        for file in allowed {
            let fd = PathFd::new(file).map_err(|e| format!("{file}: {e}"))?;
            ruleset = ruleset
                .add_rule(PathBeneath::new(fd, execute))
                .map_err(|e| format!("{file}: {e}"))?;
        }
        Ok(ruleset.restrict_self().map_err(|e| e.to_string())?.ruleset)
    };
    match restrict() {
        Ok(RulesetStatus::FullyEnforced) => exec_loop(n, path),
        Ok(status) => {
            eprintln!("Landlock is not fully enforced here ({status:?})");
            1
        }
        Err(err) => {
            eprintln!("Landlock: {err}");
            1
        }
    }
}

/// Writes the CLOCK_MONOTONIC time of its start (ns) to `file`, then waits to be killed: the
/// start-up benchmark reads when the workload began to run and measures the supervisor while
/// it holds a live workload.
fn ready(file: &str) -> i32 {
    let now = monotonic_ns();
    let tmp = format!("{file}.tmp");
    // Written whole and renamed, so the reader never sees a partial number.
    if let Err(err) =
        std::fs::write(&tmp, now.to_string()).and_then(|()| std::fs::rename(&tmp, file))
    {
        eprintln!("{file}: {err}");
        return 1;
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn monotonic_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: one valid timespec out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}
