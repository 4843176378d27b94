//! Unix-socket connects and datagram sends (the kernel's `connect_unix` and `sendmsg_unix`
//! cgroup hooks, Linux 6.7 and later).
//!
//! A socket address is judged by one exact lookup of (policy slot, address bytes) in
//! `UNIX_RULES`, per workload the task belongs to, with the same rules as every other entry:
//! refuse overrides permit (the engine left one entry per address, the deciding one), an
//! expired permit is absent, and an address no entry names meets the workload's default.
//!
//! The hook sees the address as the caller spelled it, not the socket it reaches. A pathname
//! spelled another way than a rule spells it (`//run/x`, `/run/./x`, `/run/../run/x`, a
//! relative path, a trailing `/`) would dodge a refuse rule by string, so such a spelling is
//! refused unless an entry names it exactly.
//!
//! aya 0.14 knows neither attach type: the section names below are ones its object parser
//! accepts (it reads only `cgroup/<type>` and ignores the rest), and bridle's own loader
//! (agent/src/kernel/unix.rs) loads these programs with the unix attach types. Nothing ever
//! loads them as the inet programs their section names mention.

use aya_ebpf::{bindings::bpf_sock_addr, macros::map, maps::HashMap};
use bridle_common::{
    code, Decision, UnixKey, EFFECT_NONE, EFFECT_PERMIT, EFFECT_REFUSE, EVENT_CONNECT_UNIX,
    EVENT_NONCANONICAL, EVENT_OBSERVED, EVENT_SENDMSG_UNIX, STAT_JUDGED, STAT_REFUSED,
    UNIX_PATH_LEN,
};

use crate::{count, emit, judge, live, Clock, Judgement, SOCK_ALLOW, SOCK_DENY};

/// Unix-socket decisions by (policy slot, address).
#[map]
static UNIX_RULES: HashMap<UnixKey, Decision> =
    HashMap::with_max_entries(1 << 16, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

unsafe extern "C" {
    /// Reads the address the hook judges into `name` (`UNIX_KEY_NAME_LEN` bytes, zero on
    /// entry, normalised as [`UnixKey`] says); returns its length, or a negative errno; sets
    /// `*noncanonical` for a pathname spelled other than canonically (see core.c).
    fn bridle_read_unix_addr(ctx: *mut bpf_sock_addr, name: *mut u8, noncanonical: *mut u32)
        -> i32;
}

/// Judges the connect of a unix socket (stream, seqpacket, or a datagram socket's connect).
#[unsafe(no_mangle)]
#[unsafe(link_section = "cgroup/connect4/connect_unix")]
pub fn connect_unix(ctx: *mut bpf_sock_addr) -> i32 {
    judge_unix(ctx, EVENT_CONNECT_UNIX)
}

/// Judges a unix datagram sent to an address given with the send (`sendto`, `sendmsg` with
/// `msg_name`): without it an unconnected datagram socket would reach any socket.
#[unsafe(no_mangle)]
#[unsafe(link_section = "cgroup/sendmsg4/sendmsg_unix")]
pub fn sendmsg_unix(ctx: *mut bpf_sock_addr) -> i32 {
    judge_unix(ctx, EVENT_SENDMSG_UNIX)
}

/// A refusal that no entry decided: an address that cannot be read, or a non-canonical one.
#[inline(always)]
fn refusal() -> Decision {
    Decision {
        effect: EFFECT_REFUSE,
        code: code::NO_MATCHING_RULE,
        rule: u32::MAX,
        ..Decision::default()
    }
}

#[inline(always)]
fn judge_unix(ctx: *mut bpf_sock_addr, kind: u8) -> i32 {
    let mut key = UnixKey::zeroed();
    let mut noncanonical = 0u32;
    // SAFETY: `ctx` is the hook's context; the accessor writes at most UNIX_KEY_NAME_LEN bytes
    // to `name` and one u32 to `noncanonical`.
    let len = unsafe { bridle_read_unix_addr(ctx, key.name.as_mut_ptr(), &mut noncanonical) };
    // Fail closed: an address that cannot be read is refused by every workload.
    let unreadable = len <= 0;
    key.len = len.max(0) as u32;
    let noncanonical = noncanonical != 0;
    let j = judge(Clock::Coarse, |slot, w, now| {
        if unreadable {
            return refusal();
        }
        key.slot = slot;
        // SAFETY: values are written whole by user space and never mutated here.
        let exact = live(unsafe { UNIX_RULES.get(&key) }, EFFECT_NONE, now);
        if exact.effect != EFFECT_NONE {
            return exact;
        }
        if noncanonical {
            return refusal();
        }
        live(None, w.connect_default, now)
    });
    // Said only when the spelling decided: an entry that named it exactly is reported as such.
    let flags = if noncanonical && j.decision.rule == u32::MAX {
        EVENT_NONCANONICAL
    } else {
        0
    };
    finish_unix(j, kind, flags, &key)
}

#[inline(always)]
fn finish_unix(j: Judgement, kind: u8, mut flags: u8, key: &UnixKey) -> i32 {
    if !j.found {
        // The program only runs for sockets born in a confined cgroup; a task outside every
        // workload using one cannot be judged by any policy: fail closed, as connect4 does.
        return SOCK_DENY;
    }
    count(STAT_JUDGED);
    let refused = j.decision.effect != EFFECT_PERMIT;
    if refused {
        count(STAT_REFUSED);
        if j.observe {
            flags |= EVENT_OBSERVED;
        }
    }
    emit(&j, kind, flags, |ev| {
        ev.port = key.len as u16;
        ev.path[..UNIX_PATH_LEN].copy_from_slice(&key.name[..UNIX_PATH_LEN]);
    });
    if refused && !j.observe {
        SOCK_DENY
    } else {
        SOCK_ALLOW
    }
}
