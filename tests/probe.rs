//! `bridle-probe`: a workload program for the integration tests.
//!
//! `bridle-probe connect ADDR` connects over TCP and prints `connect ADDR: ok` or
//! `connect ADDR: errno N`; the exit status is 0 or 1. The tests read what the workload saw,
//! not what bridle says it did.

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
        _ => {
            eprintln!("usage: bridle-probe connect ADDR | connect-loop ADDR N");
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
