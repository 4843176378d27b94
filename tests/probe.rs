//! `bridle-probe`: a workload program for the integration tests.
//!
//! `bridle-probe connect ADDR` connects over TCP and prints `connect ADDR: ok` or
//! `connect ADDR: errno N`; the exit status is 0 or 1.
//!
//! `bridle-probe exec HOW FILE ARGS…` executes FILE one way (`path`: execve; `empty-path`:
//! execveat(fd, "", AT_EMPTY_PATH); `fexecve`: fexecve(3); `memfd`: a memfd copy of FILE;
//! `deleted`: a copy of FILE next to it, unlinked before the exec; `ldso`: the dynamic loader
//! with FILE as its argument). When the exec fails it prints `exec HOW: errno N` and exits
//! with N. The tests read what the workload saw, not what bridle says it did.

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
        [cmd, how, file, rest @ ..] if cmd == "exec" => exec(how, file, rest),
        _ => {
            eprintln!(
                "usage: bridle-probe connect ADDR | connect-loop ADDR N | exec HOW FILE ARGS..."
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
                    return report(how, "open");
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
                    return report(how, "read");
                };
                let fd = libc::memfd_create(cstring("probe").as_ptr(), libc::MFD_CLOEXEC);
                if fd < 0 || libc::write(fd, bytes.as_ptr().cast(), bytes.len()) < 0 {
                    return report(how, "memfd");
                }
                libc::fexecve(fd, ptrs.as_ptr(), env.as_ptr());
            }
            "deleted" => {
                let copy = format!("{file}.deleted-copy");
                if std::fs::copy(file, &copy).is_err() {
                    return report(how, "copy");
                }
                let cpath = cstring(&copy);
                let fd = libc::open(cpath.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::unlink(cpath.as_ptr()) != 0 {
                    return report(how, "open");
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
    report(how, "exec")
}

/// Prints the errno of the failed step and returns it as the exit status.
fn report(how: &str, step: &str) -> i32 {
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
    if step == "exec" {
        println!("exec {how}: errno {errno}");
    } else {
        println!("exec {how}: {step} failed: errno {errno}");
    }
    errno
}
