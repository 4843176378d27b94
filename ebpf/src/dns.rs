//! Host names decided at DNS time: a workload's DNS traffic (UDP and TCP to port 53, whatever
//! the address) is sent to the resolver `bridle run` serves it from, which answers only names
//! the policy allows and installs the answered addresses before it replies. The rewrite happens
//! here, in the same connect and sendmsg hooks that judge addresses, so no DNS query leaves a
//! workload any other way; the recvmsg hooks give replies back the address the workload asked,
//! because stub resolvers (glibc's among them) drop a reply from a server they did not query.

use aya_ebpf::{
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_socket_cookie},
    macros::{cgroup_sock_addr, map},
    maps::{HashMap, LruHashMap},
    programs::SockAddrContext,
};
use bridle_common::{DnsOrigin, DnsRedirect, DNS_PORT, MAX_CGROUP_DEPTH};

/// The resolver of each workload that has one, by the cgroup id of its root.
#[map]
static DNS_REDIRECT: HashMap<u64, DnsRedirect> = HashMap::with_max_entries(4096, 0);

/// What each redirected socket asked for, by socket cookie. LRU: sockets close without telling
/// us, and an evicted entry only costs a reply that keeps the resolver's address.
#[map]
static DNS_ORIGIN: LruHashMap<u64, DnsOrigin> = LruHashMap::with_max_entries(1 << 16, 0);

/// The `recvmsg` hooks must return 1 (they cannot refuse).
const RECV_OK: i32 = 1;

/// The resolver of the innermost workload the current task belongs to.
#[inline(always)]
fn resolver() -> Option<DnsRedirect> {
    let mut found = None;
    for level in 1..=MAX_CGROUP_DEPTH {
        // SAFETY: a plain helper call.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            break;
        }
        // SAFETY: values are written whole by user space and never mutated here.
        if let Some(r) = unsafe { DNS_REDIRECT.get(&id) } {
            found = Some(*r);
        }
    }
    found
}

#[inline(always)]
fn remember(ctx: &SockAddrContext, addr: [u8; 16]) {
    // SAFETY: the helper takes the program's context and only reads it.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let origin = DnsOrigin {
        addr,
        port: DNS_PORT,
        _pad: [0; 6],
    };
    // A full map evicts the oldest entry; nothing to handle.
    let _ = DNS_ORIGIN.insert(&cookie, &origin, 0);
}

#[inline(always)]
fn origin(ctx: &SockAddrContext) -> Option<DnsOrigin> {
    // SAFETY: as in remember.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // SAFETY: values are written whole and copied out at once.
    unsafe { DNS_ORIGIN.get(&cookie) }.copied()
}

fn words(addr: &[u8; 16]) -> [u32; 4] {
    let mut out = [0u32; 4];
    for (i, w) in out.iter_mut().enumerate() {
        *w = u32::from_ne_bytes([
            addr[i * 4],
            addr[i * 4 + 1],
            addr[i * 4 + 2],
            addr[i * 4 + 3],
        ]);
    }
    out
}

fn mapped(ip4: [u8; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[10] = 0xff;
    a[11] = 0xff;
    a[12..].copy_from_slice(&ip4);
    a
}

fn is_mapped(a: &[u8; 16]) -> bool {
    a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff
}

/// Sends an IPv4 destination on port 53 to the workload's resolver; true if it did (the
/// caller then lets the operation go ahead: the resolver judges the names).
#[inline(always)]
pub(crate) fn redirect4(ctx: &SockAddrContext) -> bool {
    // SAFETY: the context is the kernel's bpf_sock_addr; user_ip4 and user_port are readable
    // and writable in connect4 and sendmsg4 programs.
    let (ip, port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port) };
    if u16::from_be(port as u16) != DNS_PORT {
        return false;
    }
    let Some(r) = resolver() else {
        return false;
    };
    // As in sock::inet4: no zero-filled array on a connect's path.
    #[cfg(target_endian = "little")]
    let addr = u128::from(ip).to_le_bytes();
    #[cfg(target_endian = "big")]
    let addr = (u128::from(ip) << 96).to_be_bytes();
    remember(ctx, addr);
    // SAFETY: see above.
    unsafe {
        (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes(r.ip4);
        (*ctx.sock_addr).user_port = u32::from(r.port.to_be());
    }
    true
}

/// Sends an IPv6 destination on port 53 to the workload's resolver (an IPv4-mapped one to the
/// mapped form of its IPv4 address, so the socket stays IPv4 underneath).
#[inline(always)]
pub(crate) fn redirect6(ctx: &SockAddrContext) -> bool {
    // SAFETY: as in redirect4; user_ip6 is readable and writable in connect6 and sendmsg6.
    let (ip, port) = unsafe { ((*ctx.sock_addr).user_ip6, (*ctx.sock_addr).user_port) };
    if u16::from_be(port as u16) != DNS_PORT {
        return false;
    }
    let Some(r) = resolver() else {
        return false;
    };
    let mut addr = [0u8; 16];
    for (i, w) in ip.iter().enumerate() {
        addr[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    remember(ctx, addr);
    let to = if is_mapped(&addr) || r.ip6 == [0u8; 16] {
        mapped(r.ip4)
    } else {
        r.ip6
    };
    let to = words(&to);
    // SAFETY: see above.
    unsafe {
        (*ctx.sock_addr).user_ip6 = to;
        (*ctx.sock_addr).user_port = u32::from(r.port.to_be());
    }
    true
}

/// Gives an IPv4 reply from the resolver the source address the workload sent its query to.
#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: user_ip4 and user_port are readable and writable in recvmsg4 programs.
    let (ip, port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port) };
    let Some(r) = resolver() else {
        return RECV_OK;
    };
    if u16::from_be(port as u16) != r.port || ip.to_ne_bytes() != r.ip4 {
        return RECV_OK;
    }
    if let Some(o) = origin(&ctx) {
        // SAFETY: see above.
        unsafe {
            (*ctx.sock_addr).user_ip4 =
                u32::from_ne_bytes([o.addr[0], o.addr[1], o.addr[2], o.addr[3]]);
            (*ctx.sock_addr).user_port = u32::from(o.port.to_be());
        }
    }
    RECV_OK
}

/// Gives an IPv6 reply from the resolver the source address the workload sent its query to.
#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    // SAFETY: user_ip6 and user_port are readable and writable in recvmsg6 programs.
    let (ip, port) = unsafe { ((*ctx.sock_addr).user_ip6, (*ctx.sock_addr).user_port) };
    let Some(r) = resolver() else {
        return RECV_OK;
    };
    if u16::from_be(port as u16) != r.port {
        return RECV_OK;
    }
    if ip != words(&r.ip6) && ip != words(&mapped(r.ip4)) {
        return RECV_OK;
    }
    if let Some(o) = origin(&ctx) {
        // SAFETY: see above.
        unsafe {
            (*ctx.sock_addr).user_ip6 = words(&o.addr);
            (*ctx.sock_addr).user_port = u32::from(o.port.to_be());
        }
    }
    RECV_OK
}
