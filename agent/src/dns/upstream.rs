//! Forwarding one query to the upstream server, over UDP or TCP, with a deadline.
//!
//! Every forwarded query gets a fresh random id and, over UDP, a fresh socket (a random source
//! port) connected to the upstream, so an off-path answer must guess both. Responses whose id
//! or question does not match are dropped and the wait goes on until the deadline.

use super::wire::{read_response, set_id, Response};
use hickory_proto::op::Query;
use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

/// Why no answer came back.
#[derive(Debug)]
pub enum Failure {
    /// The deadline passed.
    Timeout,
    /// A socket error.
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::Timeout,
            _ => Failure::Io(e),
        }
    }
}

/// A random message id.
fn random_id() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: writes at most two bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 2, 0) };
    if n != 2 {
        // getrandom(2) does not fail for two bytes once the pool is initialised; the clock
        // is a weak but harmless fallback (the random source port still has to be guessed).
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ std::process::id();
        return t as u16;
    }
    u16::from_ne_bytes(b)
}

/// Sends `query` (the workload's bytes) upstream and returns the checked response's bytes,
/// with the upstream's id still in them, and the parsed response.
pub fn exchange(
    upstream: SocketAddr,
    query: &[u8],
    question: &Query,
    tcp: bool,
    timeout: Duration,
) -> Result<(Vec<u8>, Response), Failure> {
    let id = random_id();
    let mut out = query.to_vec();
    set_id(&mut out, id);
    let deadline = Instant::now() + timeout;
    if tcp {
        over_tcp(upstream, &out, id, question, deadline)
    } else {
        over_udp(upstream, &out, id, question, deadline)
    }
}

fn left(deadline: Instant) -> Result<Duration, Failure> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        Err(Failure::Timeout)
    } else {
        Ok(d)
    }
}

fn over_udp(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    question: &Query,
    deadline: Instant,
) -> Result<(Vec<u8>, Response), Failure> {
    let local: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0".parse().map_err(|_| Failure::Timeout)?
    } else {
        "[::]:0".parse().map_err(|_| Failure::Timeout)?
    };
    let sock = UdpSocket::bind(local)?;
    sock.connect(upstream)?;
    sock.send(query)?;
    let mut buf = vec![0u8; 65535];
    loop {
        sock.set_read_timeout(Some(left(deadline)?))?;
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            // A closed port upstream reports itself as a refused send on the next receive:
            // that is no answer either, and the deadline says how long to wait for one.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::thread::sleep(left(deadline)?.min(Duration::from_millis(50)));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let bytes = &buf[..n];
        if let Some(r) = read_response(bytes, id, question) {
            return Ok((bytes.to_vec(), r));
        }
    }
}

fn over_tcp(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    question: &Query,
    deadline: Instant,
) -> Result<(Vec<u8>, Response), Failure> {
    let mut stream = TcpStream::connect_timeout(&upstream, left(deadline)?)?;
    stream.set_write_timeout(Some(left(deadline)?))?;
    write_frame(&mut stream, query)?;
    loop {
        stream.set_read_timeout(Some(left(deadline)?))?;
        let bytes = read_frame(&mut stream)?.ok_or(Failure::Timeout)?;
        if let Some(r) = read_response(&bytes, id, question) {
            return Ok((bytes, r));
        }
    }
}

/// Writes one length-prefixed DNS message (RFC 1035 4.2.2).
pub fn write_frame(stream: &mut impl Write, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "DNS message over 64 KiB"))?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    stream.write_all(&framed)
}

/// Reads one length-prefixed DNS message; `None` at a clean end of stream.
pub fn read_frame(stream: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut msg)?;
    Ok(Some(msg))
}
