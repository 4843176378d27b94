//! `bridle-probe`: a workload program for the integration tests.
//!
//! `bridle-probe connect ADDR` connects over TCP and prints `connect ADDR: ok` or
//! `connect ADDR: errno N`; the exit status is 0 or 1. The tests read what the workload saw,
//! not what bridle says it did.
//!
//! `bridle-probe exec HOW FILE ARGS…` executes FILE one way (`path`: execve; `empty-path`:
//! execveat(fd, "", AT_EMPTY_PATH); `fexecve`: fexecve(3); `memfd`: a memfd copy of FILE;
//! `deleted`: a copy of FILE next to it, unlinked before the exec; `ldso`: the dynamic loader
//! with FILE as its argument). When the exec fails it prints `exec HOW: errno N` and exits
//! with N.
//!
//! The other operations report the same way (`OP ARG: ok` / `OP ARG: errno N`):
//! `udp-send ADDR` (sendto without connect), `tfo ADDR` (TCP Fast Open: `sendto` with
//! `MSG_FASTOPEN`, which connects inside the send), `uring-connect ADDR` (a connect submitted
//! through io_uring), `raw-socket` / `packet-socket` (creation only), `unix-connect PATH`
//! (stream) and `unix-send PATH` (datagram, from an unbound socket); a PATH starting with `@`
//! is abstract. `unix-connect-padded PATH` passes the whole `sockaddr_un` as the address
//! length, with bytes after the pathname's NUL set to `A`, as some programs do.
//!
//! The other subcommands are the workloads of `cargo xtask bench`: each does one operation in a
//! tight loop and prints what it measured, so the figure never includes process start-up.
//!
//! `resolve NAME` looks NAME up with getaddrinfo(3) and prints `resolve NAME: ok ADDR…` or
//! `resolve NAME: eai N` (the EAI_* code); `resolve-connect NAME PORT` then connects over TCP
//! to the first address and prints `resolve-connect NAME: ok ADDR`, `… eai N` or
//! `… errno N ADDR`.
//!
//! `dns-latency SERVER NAME COUNT` sends COUNT sequential DNS queries for NAME (type A) over
//! one connected UDP socket to SERVER (`ADDR:PORT`, or `ADDR` for port 53) and prints the p50
//! and p99 answer latency in microseconds, `P50 P99` on one line; an answer that is not a
//! NOERROR response with an A record to the query just sent fails the run (exit 1).
//!
//! `after FILE COMMAND…` creates `FILE.waiting`, waits for FILE to exist, then does COMMAND.

use std::{
    io::Write,
    net::TcpStream,
    time::{Duration, Instant},
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(run(&args));
}

fn run(args: &[String]) -> i32 {
    match args {
        [cmd, addr] if cmd == "connect" => connect(addr),
        [cmd, addr, n] if cmd == "connect-loop" => connect_loop(addr, n),
        [cmd, how, file, rest @ ..] if cmd == "exec" => exec(how, file, rest),
        [cmd, addr] if cmd == "udp-send" => report(cmd, addr, udp_send(addr)),
        [cmd, addr] if cmd == "tfo" => report(cmd, addr, tfo(addr)),
        [cmd, addr] if cmd == "uring-connect" => report(cmd, addr, uring_connect(addr)),
        [cmd] if cmd == "raw-socket" => report(
            cmd,
            "",
            socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
        ),
        [cmd] if cmd == "packet-socket" => {
            report(cmd, "", socket(libc::AF_PACKET, libc::SOCK_RAW, 0))
        }
        [cmd, path] if cmd == "unix-connect" => {
            report(cmd, path, unix(path, libc::SOCK_STREAM, false))
        }
        [cmd, path] if cmd == "unix-connect-padded" => {
            report(cmd, path, unix(path, libc::SOCK_STREAM, true))
        }
        [cmd, path] if cmd == "unix-send" => report(cmd, path, unix(path, libc::SOCK_DGRAM, false)),
        [cmd, addr, n] if cmd == "udp-loop" => udp_loop(addr, n),
        [cmd, addr, rate, millis] if cmd == "udp-rate" => udp_rate(addr, rate, millis, false),
        [cmd, addr, rate, millis, spread] if cmd == "udp-rate" && spread == "spread" => {
            udp_rate(addr, rate, millis, true)
        }
        [cmd, n, path] if cmd == "exec-loop" => exec_loop(n, path),
        [cmd, n, path, allow @ ..] if cmd == "landlock-exec-loop" => {
            landlock_exec_loop(n, path, allow)
        }
        [cmd, file] if cmd == "ready" => ready(file),
        [cmd] if cmd == "bpf-ids" => report(cmd, "", bpf_next_prog_id()),
        [cmd, pid] if cmd == "ptrace" => report(cmd, pid, ptrace_attach(pid)),
        [cmd, path] if cmd == "setns" => report(cmd, path, enter_ns(path)),
        [cmd, name] if cmd == "resolve" => resolve_report(name, None),
        [cmd, name, port] if cmd == "resolve-connect" => resolve_report(name, Some(port)),
        [cmd, server, name, count] if cmd == "dns-latency" => dns_latency(server, name, count),
        [cmd, file, rest @ ..] if cmd == "after" => after(file, rest),
        _ => {
            eprintln!(
                "usage: bridle-probe connect ADDR | connect-loop ADDR N | exec HOW FILE ARGS... \
                 | udp-send ADDR | tfo ADDR | uring-connect ADDR | raw-socket | packet-socket \
                 | unix-connect PATH | unix-connect-padded PATH | unix-send PATH | udp-loop ADDR N \
                 | udp-rate ADDR RATE MILLIS [spread] \
                 | exec-loop N PATH | landlock-exec-loop N PATH ALLOWED... | ready FILE \
                 | resolve NAME | resolve-connect NAME PORT | dns-latency SERVER NAME COUNT \
                 | after FILE COMMAND… | bpf-ids \
                 | ptrace PID | setns PATH"
            );
            2
        }
    }
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

/// Prints the outcome of one operation and turns it into the exit status.
fn report(cmd: &str, arg: &str, result: std::io::Result<()>) -> i32 {
    let what = if arg.is_empty() {
        cmd.to_owned()
    } else {
        format!("{cmd} {arg}")
    };
    match result {
        Ok(()) => {
            println!("{what}: ok");
            0
        }
        Err(err) => {
            println!("{what}: errno {}", err.raw_os_error().unwrap_or(-1));
            1
        }
    }
}

fn parse(addr: &str) -> std::io::Result<std::net::SocketAddr> {
    addr.parse()
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

fn udp_send(addr: &str) -> std::io::Result<()> {
    let to = parse(addr)?;
    let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let sock = std::net::UdpSocket::bind(bind)?;
    sock.send_to(b"probe\n", to)?;
    Ok(())
}

/// The raw socket address of `addr`, for the libc calls std does not wrap.
fn sockaddr(addr: std::net::SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        std::net::SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        std::net::SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// An owned socket fd, closed on drop.
struct Fd(i32);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the fd is owned by this value.
        unsafe { libc::close(self.0) };
    }
}

fn socket(family: i32, kind: i32, protocol: i32) -> std::io::Result<()> {
    open(family, kind, protocol).map(drop)
}

fn open(family: i32, kind: i32, protocol: i32) -> std::io::Result<Fd> {
    // SAFETY: a plain socket(2) call.
    let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Fd(fd))
}

/// TCP Fast Open: the connect happens inside `sendto(MSG_FASTOPEN)`, never through connect(2).
fn tfo(addr: &str) -> std::io::Result<()> {
    let to = parse(addr)?;
    let family = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let fd = open(family, libc::SOCK_STREAM, 0)?;
    let (storage, len) = sockaddr(to);
    let data = b"probe\n";
    // SAFETY: the buffer and address are valid for the duration of the call.
    let n = unsafe {
        libc::sendto(
            fd.0,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_FASTOPEN,
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A connect submitted as an io_uring operation, which the kernel runs without connect(2).
fn uring_connect(addr: &str) -> std::io::Result<()> {
    let to = parse(addr)?;
    let family = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let fd = open(family, libc::SOCK_STREAM, 0)?;
    let (storage, len) = sockaddr(to);
    let mut ring = io_uring::IoUring::new(4)?;
    let op = io_uring::opcode::Connect::new(
        io_uring::types::Fd(fd.0),
        (&storage as *const libc::sockaddr_storage).cast(),
        len,
    )
    .build()
    .user_data(1);
    // SAFETY: the address and fd outlive the operation: we wait for its completion below.
    unsafe { ring.submission().push(&op) }
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EBUSY))?;
    ring.submit_and_wait(1)?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EIO))?;
    if cqe.result() < 0 {
        return Err(std::io::Error::from_raw_os_error(-cqe.result()));
    }
    Ok(())
}

/// A unix connect (stream) or datagram send to `path`; `@name` is the abstract name `name`.
/// `padded`: the address length is all of `sockaddr_un`, the bytes after the path's NUL `A`.
fn unix(path: &str, kind: i32, padded: bool) -> std::io::Result<()> {
    let fd = open(libc::AF_UNIX, kind, 0)?;
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    // The abstract namespace starts with a NUL byte instead of the `@` people write.
    let (abstract_name, name) = match bytes.split_first() {
        Some((b'@', rest)) => (true, rest),
        _ => (false, bytes),
    };
    let offset = usize::from(abstract_name);
    if offset + name.len() >= sun.sun_path.len() {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (i, b) in name.iter().enumerate() {
        sun.sun_path[offset + i] = *b as libc::c_char;
    }
    let base = std::mem::size_of::<libc::sa_family_t>();
    if padded {
        for b in sun.sun_path.iter_mut().skip(offset + name.len() + 1) {
            *b = b'A' as libc::c_char;
        }
    }
    let len = if padded {
        std::mem::size_of::<libc::sockaddr_un>()
    } else if abstract_name {
        base + 1 + name.len()
    } else {
        base + name.len() + 1
    };
    let addr = (&sun as *const libc::sockaddr_un).cast::<libc::sockaddr>();
    let rc = if kind == libc::SOCK_STREAM {
        // SAFETY: the address is valid for `len` bytes.
        unsafe { libc::connect(fd.0, addr, len as libc::socklen_t) }
    } else {
        let data = b"probe\n";
        // SAFETY: the buffer and address are valid for the duration of the call.
        let n = unsafe {
            libc::sendto(
                fd.0,
                data.as_ptr().cast(),
                data.len(),
                0,
                addr,
                len as libc::socklen_t,
            )
        };
        if n < 0 {
            -1
        } else {
            0
        }
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The dynamic loader of this platform.
const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";

fn cstring(s: &str) -> std::ffi::CString {
    std::ffi::CString::new(s).unwrap_or_default()
}

fn exec(how: &str, file: &str, rest: &[String]) -> i32 {
    let mut argv: Vec<std::ffi::CString> = vec![cstring(file)];
    argv.extend(rest.iter().map(|a| cstring(a)));
    if how == "ldso" {
        argv.insert(0, cstring(LOADER));
    }
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let env: [*const libc::c_char; 1] = [std::ptr::null()];
    let path = cstring(file);
    let empty = cstring("");
    // SAFETY: every pointer is a NUL-terminated string or a NULL-terminated array that lives
    // to the end of this function; a successful exec never returns.
    unsafe {
        match how {
            "path" => {
                libc::execve(path.as_ptr(), ptrs.as_ptr(), env.as_ptr());
            }
            "ldso" => {
                let loader = cstring(LOADER);
                libc::execve(loader.as_ptr(), ptrs.as_ptr(), env.as_ptr());
            }
            "empty-path" | "fexecve" => {
                let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return exec_failed(how, "open");
                }
                if how == "fexecve" {
                    libc::fexecve(fd, ptrs.as_ptr(), env.as_ptr());
                } else {
                    libc::syscall(
                        libc::SYS_execveat,
                        fd,
                        empty.as_ptr(),
                        ptrs.as_ptr(),
                        env.as_ptr(),
                        libc::AT_EMPTY_PATH,
                    );
                }
            }
            "memfd" => {
                let Ok(bytes) = std::fs::read(file) else {
                    return exec_failed(how, "read");
                };
                let fd = libc::memfd_create(cstring("probe").as_ptr(), libc::MFD_CLOEXEC);
                if fd < 0 || libc::write(fd, bytes.as_ptr().cast(), bytes.len()) < 0 {
                    return exec_failed(how, "memfd");
                }
                libc::fexecve(fd, ptrs.as_ptr(), env.as_ptr());
            }
            "deleted" => {
                let copy = format!("{file}.deleted-copy");
                if std::fs::copy(file, &copy).is_err() {
                    return exec_failed(how, "copy");
                }
                let cpath = cstring(&copy);
                let fd = libc::open(cpath.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::unlink(cpath.as_ptr()) != 0 {
                    return exec_failed(how, "open");
                }
                libc::syscall(
                    libc::SYS_execveat,
                    fd,
                    empty.as_ptr(),
                    ptrs.as_ptr(),
                    env.as_ptr(),
                    libc::AT_EMPTY_PATH,
                );
            }
            _ => {
                eprintln!("unknown exec mode {how}");
                return 2;
            }
        }
    }
    exec_failed(how, "exec")
}

/// Prints the errno of the failed step and returns it as the exit status.
fn exec_failed(how: &str, step: &str) -> i32 {
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
    if step == "exec" {
        println!("exec {how}: errno {errno}");
    } else {
        println!("exec {how}: {step} failed: errno {errno}");
    }
    errno
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
/// prints `OPS ACHIEVED_PER_SECOND`. The event-path benchmark drives bridle's decisions with
/// it: to one destination (repeats the kernel counts), or with `spread` to a new address of
/// ADDR's /8 each time (every decision a distinct one, sent as an event).
fn udp_rate(addr: &str, rate: &str, millis: &str, spread: bool) -> i32 {
    let (Ok(sock), Ok(rate), Ok(millis)) = (
        addr.parse::<std::net::SocketAddrV4>(),
        rate.parse::<u64>(),
        millis.parse::<u64>(),
    ) else {
        eprintln!("bad arguments {addr} {rate} {millis}");
        return 2;
    };
    let mut sa = sockaddr_in(&sock);
    let base = u32::from(*sock.ip());
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
        if spread {
            // The next address of the /8, keeping its first octet (127.x.y.z all reach loopback).
            let next = (base & 0xff00_0000) | (base.wrapping_add(ops as u32) & 0x00ff_ffff);
            sa.sin_addr.s_addr = next.to_be();
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

/// getaddrinfo(3) for TCP, every family: the addresses, or the EAI_* code.
fn lookup(name: &str) -> Result<Vec<std::net::IpAddr>, i32> {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return Err(libc::EAI_NONAME);
    };
    // SAFETY: addrinfo is plain old data; all zeroes is a valid value.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = libc::AF_UNSPEC;
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut res: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: valid C strings and out pointer; the list is freed below.
    let rc = unsafe { libc::getaddrinfo(cname.as_ptr(), std::ptr::null(), &hints, &mut res) };
    if rc != 0 {
        return Err(rc);
    }
    let mut out = Vec::new();
    let mut cur = res;
    while !cur.is_null() {
        // SAFETY: `cur` walks the list getaddrinfo returned.
        let ai = unsafe { &*cur };
        // SAFETY: ai_addr points at a sockaddr of the family ai_family says.
        unsafe {
            if ai.ai_family == libc::AF_INET {
                let sin = &*(ai.ai_addr as *const libc::sockaddr_in);
                out.push(std::net::IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()));
            } else if ai.ai_family == libc::AF_INET6 {
                let sin6 = &*(ai.ai_addr as *const libc::sockaddr_in6);
                out.push(std::net::IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cur = ai.ai_next;
    }
    // SAFETY: `res` came from getaddrinfo and is freed once.
    unsafe { libc::freeaddrinfo(res) };
    Ok(out)
}

fn resolve_report(name: &str, port: Option<&String>) -> i32 {
    let what = if port.is_some() {
        "resolve-connect"
    } else {
        "resolve"
    };
    let addrs = match lookup(name) {
        Ok(a) => a,
        Err(code) => {
            println!("{what} {name}: eai {code}");
            return 1;
        }
    };
    let Some(port) = port else {
        let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        println!("{what} {name}: ok {}", list.join(" "));
        return 0;
    };
    let (Some(ip), Ok(port)) = (addrs.first(), port.parse::<u16>()) else {
        println!("{what} {name}: no address");
        return 1;
    };
    let to = std::net::SocketAddr::new(*ip, port);
    match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
        Ok(mut s) => {
            let _ = s.write_all(b"probe\n");
            println!("{what} {name}: ok {to}");
            0
        }
        Err(err) => {
            println!(
                "{what} {name}: errno {} {to}",
                err.raw_os_error().unwrap_or(-1)
            );
            1
        }
    }
}

/// The DNS answer latency the resolver benchmark compares: `count` queries for `name`, one at a
/// time, each timed from just before its send to just after its answer arrives (encoding and
/// checking stay outside the timing). Prints `P50 P99` in microseconds (nearest rank). Any
/// answer that is not a NOERROR response carrying an A record to the query just sent, or no
/// answer within two seconds, fails the run: a refused or failed query must never be timed as
/// if it had been answered.
fn dns_latency(server: &str, name: &str, count: &str) -> i32 {
    match dns_latencies(server, name, count) {
        Ok(mut ns) => {
            ns.sort_unstable();
            let rank = |p: f64| {
                let i = ((p * ns.len() as f64).ceil() as usize).saturating_sub(1);
                ns[i.min(ns.len() - 1)] as f64 / 1000.0
            };
            println!("{:.1} {:.1}", rank(0.50), rank(0.99));
            0
        }
        Err(err) => {
            println!("dns-latency {server} {name}: {err}");
            1
        }
    }
}

/// The latency of each of the `count` queries, in nanoseconds.
fn dns_latencies(server: &str, name: &str, count: &str) -> Result<Vec<u64>, String> {
    use hickory_proto::{
        op::{Message, MessageType, Query, ResponseCode},
        rr::{Name, RData, RecordType},
    };
    let to: std::net::SocketAddr = server
        .parse()
        .or_else(|_| server.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
        .map_err(|_| format!("bad server {server}"))?;
    let count: u32 = count
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("bad count {count}"))?;
    let qname = Name::from_ascii(name).map_err(|e| format!("bad name {name}: {e}"))?;
    let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let sock = std::net::UdpSocket::bind(bind).map_err(|e| format!("bind: {e}"))?;
    // Connected: the kernel then drops datagrams from any other peer, and the workload's
    // connect is where bridle's programs send its DNS to the resolver.
    sock.connect(to).map_err(|e| format!("connect: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| format!("timeout: {e}"))?;
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(qname, RecordType::A));
    let mut buf = [0u8; 4096];
    let mut latencies = Vec::with_capacity(count as usize);
    for i in 0..count {
        // A fresh id per query, so an answer to an earlier one can never pass for this one.
        let id = query.metadata.id.wrapping_add(1);
        query.metadata.id = id;
        let bytes = query.to_vec().map_err(|e| format!("encoding: {e}"))?;
        let start = Instant::now();
        sock.send(&bytes).map_err(|e| format!("send #{i}: {e}"))?;
        let n = sock
            .recv(&mut buf)
            .map_err(|e| format!("answer #{i}: {e}"))?;
        let took = start.elapsed();
        let answer = Message::from_vec(&buf[..n]).map_err(|e| format!("answer #{i}: {e}"))?;
        let m = &answer.metadata;
        if m.message_type != MessageType::Response || m.id != id {
            return Err(format!(
                "answer #{i}: not the response to query id {id} ({:?} id {})",
                m.message_type, m.id
            ));
        }
        if m.response_code != ResponseCode::NoError {
            return Err(format!("answer #{i}: {}", m.response_code));
        }
        if !answer.answers.iter().any(|r| matches!(r.data, RData::A(_))) {
            return Err(format!("answer #{i}: no A record"));
        }
        latencies.push(took.as_nanos() as u64);
    }
    Ok(latencies)
}

/// Creates `FILE.waiting`, waits (up to a minute) until `file` exists, then runs `command` in
/// this process: a workload process already running when the tests change something (a
/// quarantine, a dead daemon), which may not be able to exec anything afterwards.
fn after(file: &str, command: &[String]) -> i32 {
    if let Err(err) = std::fs::write(format!("{file}.waiting"), "") {
        println!("after {file}: {err}");
        return 1;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::path::Path::new(file).exists() {
        if Instant::now() > deadline {
            println!("after {file}: never appeared");
            return 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    run(command)
}

/// Asks the kernel for the first loaded BPF program's id: what a tool that wants to detach
/// programs does first.
fn bpf_next_prog_id() -> std::io::Result<()> {
    const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
    // union bpf_attr for the GET_NEXT_ID commands: start_id, next_id, open_flags.
    let mut attr = [0u32; 4];
    // SAFETY: bpf(2) with a zeroed attribute block of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_NEXT_ID,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Attaches to `pid` with ptrace, then detaches.
fn ptrace_attach(pid: &str) -> std::io::Result<()> {
    let pid: libc::pid_t = pid
        .parse()
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: PTRACE_SEIZE takes no memory arguments.
    let rc = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
    Ok(())
}

/// Enters the namespace `path` names (for example /proc/1/ns/cgroup).
fn enter_ns(path: &str) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    // SAFETY: setns on an fd this function owns.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), 0) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
