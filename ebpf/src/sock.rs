//! The socket hooks beyond connect: UDP datagrams sent without a connect, and the creation of
//! raw and packet sockets. connect4/connect6 share the address judgement here, so a datagram
//! and a connect to one destination always get the same answer.

use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr},
    maps::lpm_trie::Key,
    programs::{SockAddrContext, SockContext},
};
use bridle_common::{
    Decision, NetKey, EVENT_OBSERVED, EVENT_RAW_SOCKET, EVENT_SENDMSG4, EVENT_SENDMSG6,
    NET_KEY_SLOT_BITS, STAT_JUDGED, STAT_REFUSED,
};

use crate::{
    count, emit, finish_connect, judge, port_decision, Clock, NET_RULES, SOCK_ALLOW, SOCK_DENY,
};

/// `AF_PACKET`: link-layer sockets, which see and forge whole frames.
const AF_PACKET: u32 = 17;
/// `SOCK_RAW`: IP sockets that write their own headers (or at least bypass TCP/UDP).
const SOCK_RAW: u32 = 3;
/// `SOCK_PACKET`: the obsolete link-layer socket type of `AF_INET`.
const SOCK_PACKET: u32 = 10;

/// Judges an IPv4 destination (connect or sendmsg) by the IPv4 rules.
#[inline(always)]
pub(crate) fn inet4(ctx: &SockAddrContext, kind: u8) -> i32 {
    if crate::dns::redirect4(ctx) {
        return SOCK_ALLOW;
    }
    // SAFETY: the context is the kernel's bpf_sock_addr; user_ip4 and user_port are readable
    // in connect4 and sendmsg4 programs.
    let (ip, port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port) };
    let port = u16::from_be(port as u16);
    // Both arrays built as one 128-bit value each: a zero-filled array would cost a
    // byte-by-byte memset call (see the note on zeros in main.rs). `mapped` is the trie's key
    // (`::ffff:a.b.c.d`, see NetKey); `addr` the events' form, the address in the first four
    // bytes.
    #[cfg(target_endian = "little")]
    let (mapped, addr) = (
        ((u128::from(ip) << 96) | (0xffff << 80)).to_le_bytes(),
        u128::from(ip).to_le_bytes(),
    );
    #[cfg(target_endian = "big")]
    let (mapped, addr) = (
        ((0xffff << 32) | u128::from(ip)).to_be_bytes(),
        (u128::from(ip) << 96).to_be_bytes(),
    );
    let j = judge(Clock::Coarse, |slot, w, now| {
        let key = Key::new(
            NET_KEY_SLOT_BITS + 128,
            NetKey {
                slot: slot.to_ne_bytes(),
                addr: mapped,
            },
        );
        port_decision(NET_RULES.get(&key), port, w.connect_default, now)
    });
    finish_connect(j, kind, port, addr)
}

/// Judges an IPv6 destination; an IPv4-mapped one meets the IPv4 entries, which the trie holds
/// in that form.
#[inline(always)]
pub(crate) fn inet6(ctx: &SockAddrContext, kind: u8) -> i32 {
    if crate::dns::redirect6(ctx) {
        return SOCK_ALLOW;
    }
    // SAFETY: as in inet4; user_ip6 is readable in connect6 and sendmsg6 programs.
    let (words, port) = unsafe { ((*ctx.sock_addr).user_ip6, (*ctx.sock_addr).user_port) };
    let mut addr = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        addr[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let port = u16::from_be(port as u16);
    let j = judge(Clock::Coarse, |slot, w, now| {
        let key = Key::new(
            NET_KEY_SLOT_BITS + 128,
            NetKey {
                slot: slot.to_ne_bytes(),
                addr,
            },
        );
        port_decision(NET_RULES.get(&key), port, w.connect_default, now)
    });
    finish_connect(j, kind, port, addr)
}

/// Judges IPv4 UDP datagrams sent with a destination (`sendto`, `sendmsg` with `msg_name`):
/// without it, an unconnected UDP socket would reach any address. A refusal fails the send
/// with EPERM.
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    inet4(&ctx, EVENT_SENDMSG4)
}

/// Judges IPv6 UDP datagrams sent with a destination (IPv4-mapped ones by the IPv4 rules).
#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    inet6(&ctx, EVENT_SENDMSG6)
}

/// Refuses raw and packet sockets unless the workload's policy names `raw`: they bypass the
/// address hooks (a raw socket sends any datagram to any address without connect or sendmsg
/// hooks seeing a port).
#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the context is the kernel's bpf_sock; family, type and protocol are readable
    // in sock_create programs.
    let (family, kind) = unsafe { ((*ctx.sock).family, (*ctx.sock).type_) };
    if family != AF_PACKET && kind != SOCK_RAW && kind != SOCK_PACKET {
        return SOCK_ALLOW;
    }
    let j = judge(Clock::Coarse, |_, w, _| Decision {
        effect: w.raw_effect,
        code: w.raw_code,
        rule: w.raw_rule,
        ..Decision::default()
    });
    if !j.found {
        // A socket is created in its creator's cgroup, so a task outside every workload never
        // reaches here through a confined cgroup's attachment; nothing to judge.
        return SOCK_ALLOW;
    }
    count(STAT_JUDGED);
    let refused = j.decision.effect != bridle_common::EFFECT_PERMIT;
    let mut flags = 0;
    if refused {
        count(STAT_REFUSED);
        if j.observe {
            flags = EVENT_OBSERVED;
        }
    }
    emit(&j, EVENT_RAW_SOCKET, flags, |ev| {
        ev.port = kind as u16;
        ev.addr[..2].copy_from_slice(&(family as u16).to_ne_bytes());
    });
    if refused && !j.observe {
        SOCK_DENY
    } else {
        SOCK_ALLOW
    }
}
