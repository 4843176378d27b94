//! Decoding the kernel's decision events.

use bridle_common::{
    Event, EventHead, TallyCount, TallyKey, EFFECT_PERMIT, EVENT_CONNECT4, EVENT_CONNECT6,
    EVENT_CONNECT_UNIX, EVENT_EXEC, EVENT_KILLED, EVENT_NONCANONICAL, EVENT_OBSERVED,
    EVENT_RAW_SOCKET, EVENT_SENDMSG4, EVENT_SENDMSG6, EVENT_SENDMSG_UNIX, PATH_LEN, UNIX_PATH_LEN,
};
use bridle_engine::Code;
use std::{
    ffi::CStr,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

/// What was judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// An exec, by the path given to execve and the file's identity.
    Exec {
        /// The path as the process passed it (may be relative).
        path: String,
        /// Device (kernel encoding).
        dev: u64,
        /// Inode.
        ino: u64,
    },
    /// A connect to an address.
    Connect(SocketAddr),
    /// A UDP datagram sent to an address without a connect.
    Send(SocketAddr),
    /// A connect of a unix socket, to `/path` or `@abstract` (as policies write it, bytes
    /// that are not printable escaped as `\xNN`).
    UnixConnect(String),
    /// A unix datagram sent to an address without a connect.
    UnixSend(String),
    /// The creation of a raw or packet socket.
    RawSocket {
        /// Address family (`AF_*`).
        family: u16,
        /// Socket type (`SOCK_*`).
        kind: u16,
    },
}

impl Operation {
    /// The action's name in audit records: `exec`, `connect`, `sendto` or `socket`.
    pub fn action(&self) -> &'static str {
        match self {
            Operation::Exec { .. } => "exec",
            Operation::Connect(_) | Operation::UnixConnect(_) => "connect",
            Operation::Send(_) | Operation::UnixSend(_) => "sendto",
            Operation::RawSocket { .. } => "socket",
        }
    }

    /// The object without the action word (the Display form is `ACTION OBJECT`).
    pub fn object(&self) -> String {
        let shown = self.to_string();
        shown
            .split_once(' ')
            .map(|(_, object)| object.to_owned())
            .unwrap_or(shown)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::Exec { path, .. } => write!(f, "exec {path}"),
            Operation::Connect(addr) => write!(f, "connect {addr}"),
            Operation::Send(addr) => write!(f, "sendto {addr}"),
            Operation::UnixConnect(addr) => write!(f, "connect unix:{addr}"),
            Operation::UnixSend(addr) => write!(f, "sendto unix:{addr}"),
            Operation::RawSocket { family, kind } => {
                let family = match i32::from(*family) {
                    libc::AF_INET => "AF_INET".to_owned(),
                    libc::AF_INET6 => "AF_INET6".to_owned(),
                    libc::AF_PACKET => "AF_PACKET".to_owned(),
                    other => format!("family {other}"),
                };
                let kind = match i32::from(*kind) {
                    libc::SOCK_RAW => "SOCK_RAW".to_owned(),
                    libc::SOCK_DGRAM => "SOCK_DGRAM".to_owned(),
                    // SOCK_PACKET (deprecated in libc, still accepted by the kernel).
                    10 => "SOCK_PACKET".to_owned(),
                    other => format!("type {other}"),
                };
                write!(f, "socket {family} {kind} (raw)")
            }
        }
    }
}

/// One kernel decision, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// What was judged.
    pub operation: Operation,
    /// Whether the policy permits it (in observe mode: whether it would have).
    pub permitted: bool,
    /// The policy's code (in observe mode: the code it would have carried).
    pub code: Option<Code>,
    /// Index of the deciding rule in the workload's rule table (`u32::MAX`: none).
    pub rule: u32,
    /// Observe mode let it through although the policy refuses it.
    pub observed: bool,
    /// The process was killed (kill-on-exec tier).
    pub killed: bool,
    /// A unix pathname spelled non-canonically, refused for that (no entry named it).
    pub noncanonical: bool,
    /// Process id.
    pub tgid: u32,
    /// Real uid.
    pub uid: u32,
    /// The task's comm.
    pub comm: String,
    /// The workload's cgroup id.
    pub workload: u64,
    /// The permit the kernel entry came from (0: none).
    pub permit_id: u64,
    /// How many decisions this stands for: 1 for an event, the counted repeats for a tally.
    pub count: u64,
    /// For a tally: the `CLOCK_BOOTTIME` ns of the key's first decision and of (about) the
    /// last one counted.
    pub span: Option<(u64, u64)>,
}

impl Decided {
    /// Decodes a ring-buffer record; `None` if it is not an event this version knows. Socket
    /// decisions come as an [`EventHead`] alone, exec decisions as a whole [`Event`].
    pub fn decode(bytes: &[u8]) -> Option<Decided> {
        let head_len = std::mem::size_of::<EventHead>();
        if bytes.len() < head_len {
            return None;
        }
        let mut ev = Event {
            // SAFETY: the record is at least one EventHead long, EventHead is plain old data,
            // and read_unaligned makes no alignment assumption about the ring buffer's bytes.
            head: unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) },
            path: [0; PATH_LEN],
        };
        if let Some(path) = bytes.get(head_len..head_len + PATH_LEN) {
            ev.path.copy_from_slice(path);
        }
        let operation = match ev.kind {
            EVENT_EXEC => Operation::Exec {
                path: c_string(&ev.path),
                dev: ev.dev,
                ino: ev.ino,
            },
            EVENT_CONNECT4 => Operation::Connect(v4(&ev)),
            EVENT_CONNECT6 => Operation::Connect(v6(&ev)),
            EVENT_SENDMSG4 => Operation::Send(v4(&ev)),
            EVENT_SENDMSG6 => Operation::Send(v6(&ev)),
            EVENT_CONNECT_UNIX => Operation::UnixConnect(unix_address(&ev)),
            EVENT_SENDMSG_UNIX => Operation::UnixSend(unix_address(&ev)),
            EVENT_RAW_SOCKET => Operation::RawSocket {
                family: u16::from_ne_bytes([ev.addr[0], ev.addr[1]]),
                kind: ev.port,
            },
            _ => return None,
        };
        Some(Decided {
            operation,
            permitted: ev.effect == EFFECT_PERMIT,
            code: Code::from_index(ev.code),
            rule: ev.rule,
            observed: ev.flags & EVENT_OBSERVED != 0,
            killed: ev.flags & EVENT_KILLED != 0,
            noncanonical: ev.flags & EVENT_NONCANONICAL != 0,
            tgid: ev.tgid,
            uid: ev.uid,
            comm: c_string(&ev.comm),
            workload: ev.workload,
            permit_id: ev.permit_id,
            count: 1,
            span: None,
        })
    }

    /// The decisions a tally counted under `key` (see agent/src/kernel/tally.rs); `None` if
    /// its kind is not a socket decision this version knows.
    pub fn tallied(key: &TallyKey, counted: &TallyCount) -> Option<Decided> {
        let ev = EventHead {
            kind: key.kind,
            effect: EFFECT_PERMIT,
            code: key.code,
            flags: 0,
            rule: key.rule,
            pid: key.tgid,
            tgid: key.tgid,
            uid: key.uid,
            port: key.port,
            _pad: 0,
            workload: key.workload,
            cgroup: 0,
            time_ns: counted.first_ns,
            permit_id: key.permit_id,
            dev: 0,
            ino: 0,
            addr: key.addr,
            comm: key.comm,
        };
        if ev.kind == EVENT_EXEC {
            return None;
        }
        // SAFETY: EventHead is plain old data; viewing it as bytes reads every initialised
        // field and the explicit padding, nothing else.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&ev as *const EventHead).cast::<u8>(),
                std::mem::size_of::<EventHead>(),
            )
        };
        let mut decided = Decided::decode(bytes)?;
        decided.count = counted.count;
        decided.span = Some((counted.first_ns, counted.last_ns));
        Some(decided)
    }

    /// The one-line report for an operator, e.g.
    /// `bridle: refused exec /usr/bin/curl (NO_MATCHING_RULE)`; `rule_name` names rule indices.
    pub fn report_line(&self, rule_name: impl Fn(u32) -> Option<String>) -> String {
        let code = self.code.map(|c| c.as_str()).unwrap_or("UNKNOWN_CODE");
        let mut rule = rule_name(self.rule)
            .map(|r| format!(", rule {r}"))
            .unwrap_or_default();
        if self.noncanonical {
            // Why a connect the default would have let through was refused.
            rule.push_str("; not a canonical socket path");
        }
        if self.observed {
            format!(
                "bridle: observed {} ({}: would be refused, {code}{rule})",
                self.operation,
                Code::Observed.as_str()
            )
        } else if self.span.is_some() {
            format!(
                "bridle: permitted {} {} more times ({code}{rule})",
                self.operation, self.count
            )
        } else if self.permitted {
            format!("bridle: permitted {} ({code}{rule})", self.operation)
        } else {
            format!("bridle: refused {} ({code}{rule})", self.operation)
        }
    }
}

fn v4(ev: &Event) -> SocketAddr {
    let ip = Ipv4Addr::new(ev.addr[0], ev.addr[1], ev.addr[2], ev.addr[3]);
    SocketAddr::new(IpAddr::V4(ip), ev.port)
}

fn v6(ev: &Event) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ev.addr)), ev.port)
}

/// A unix address as policies write it: `/path` (or a relative path, as given), or `@name`
/// for the abstract name after the leading NUL byte.
fn unix_address(ev: &Event) -> String {
    let len = usize::from(ev.port).min(UNIX_PATH_LEN);
    let bytes = &ev.path[..len];
    match bytes.split_first() {
        Some((0, name)) => format!("@{}", escape(name)),
        _ => escape(bytes),
    }
}

/// Text with every byte that is not printable (control characters, NULs inside an abstract
/// name, invalid UTF-8) and the backslash written as `\xNN` / `\\`, so a record shows
/// exactly which address was asked for and nothing in it can forge a line.
fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\x{b:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// A decision as the operator reads it and as the audit trail records it.
pub struct Described {
    /// The one-line report (`bridle: refused exec …`).
    pub line: String,
    /// The audit record's fields.
    pub record: bridle_trust::audit::RecordFields,
    /// For a tally: how many decisions the record stands for, and when (Unix ns).
    pub repeats: Option<bridle_trust::audit::Repeats>,
}

impl Decided {
    /// Names the rule and the resolved file from the workload's compiled policy and entries.
    pub fn describe(
        &self,
        compiled: &bridle_engine::Compiled,
        entries: &super::entries::KernelEntries,
        workload: &str,
    ) -> Described {
        use bridle_engine::Effect;
        let rule = compiled
            .rules
            .get(self.rule as usize)
            .map(|r| r.name.clone());
        let object = match &self.operation {
            Operation::Exec { path, dev, ino } => entries
                .exec_paths
                .get(&(*dev, *ino))
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| path.clone()),
            other => other.object(),
        };
        let mut line = self.report_line(|_| rule.clone());
        if let Operation::Exec { path, .. } = &self.operation {
            if &object != path {
                line.push_str(&format!(" [file {object}]"));
            }
        }
        let (effect, code) = if self.observed {
            (Effect::Permit, Code::Observed)
        } else if self.permitted {
            (Effect::Permit, self.code.unwrap_or(Code::Permitted))
        } else {
            (Effect::Refuse, self.code.unwrap_or(Code::NoMatchingRule))
        };
        let record = bridle_trust::audit::RecordFields {
            workload: workload.to_owned(),
            pid: self.tgid,
            uid: self.uid,
            comm: self.comm.clone(),
            action: self.operation.action().to_owned(),
            object,
            effect,
            code,
            rule,
            permit_id: (self.permit_id != 0).then_some(self.permit_id),
        };
        let repeats = self.span.map(|(first, last)| bridle_trust::audit::Repeats {
            count: self.count,
            first: boot_to_unix(first),
            last: boot_to_unix(last),
        });
        Described {
            line,
            record,
            repeats,
        }
    }
}

/// The Unix time (ns) of a `CLOCK_BOOTTIME` instant in the past, by the two clocks' offset now
/// (a wall clock stepped since then shifts it; the audit trail's own times do the same).
pub fn boot_to_unix(boot_ns: u64) -> u64 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: one valid timespec out-parameter.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec as u64)
    };
    let (unix, boot) = (read(libc::CLOCK_REALTIME), read(libc::CLOCK_BOOTTIME));
    unix.saturating_sub(boot.saturating_sub(boot_ns))
}

fn c_string(bytes: &[u8]) -> String {
    CStr::from_bytes_until_nul(bytes)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridle_common::{COMM_LEN, EFFECT_REFUSE};

    fn event(kind: u8) -> Event {
        Event {
            head: EventHead {
                kind,
                effect: EFFECT_REFUSE,
                code: Code::NoMatchingRule.index(),
                flags: 0,
                rule: u32::MAX,
                pid: 7,
                tgid: 7,
                uid: 0,
                port: 443,
                _pad: 0,
                workload: 1,
                cgroup: 1,
                time_ns: 0,
                permit_id: 0,
                dev: 0,
                ino: 0,
                addr: [0; 16],
                comm: [0; COMM_LEN],
            },
            path: [0; PATH_LEN],
        }
    }

    fn bytes(ev: &Event) -> Vec<u8> {
        // SAFETY: Event is plain old data.
        unsafe {
            std::slice::from_raw_parts(
                (ev as *const Event).cast::<u8>(),
                std::mem::size_of::<Event>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_a_refused_exec() {
        let mut ev = event(EVENT_EXEC);
        ev.path[..13].copy_from_slice(b"/usr/bin/curl");
        let d = Decided::decode(&bytes(&ev)).expect("decodes");
        assert_eq!(
            d.report_line(|_| None),
            "bridle: refused exec /usr/bin/curl (NO_MATCHING_RULE)"
        );
    }

    #[test]
    fn decodes_connects_and_observed() {
        let mut ev = event(EVENT_CONNECT4);
        ev.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        ev.flags = EVENT_OBSERVED;
        let d = Decided::decode(&bytes(&ev)).expect("decodes");
        assert_eq!(
            d.report_line(|_| Some("x".into())),
            "bridle: observed connect 127.0.0.1:443 (OBSERVED: would be refused, NO_MATCHING_RULE, rule x)"
        );
        let mut ev = event(EVENT_CONNECT6);
        ev.addr[15] = 1;
        let d = Decided::decode(&bytes(&ev)).expect("decodes");
        assert_eq!(
            d.operation,
            Operation::Connect("[::1]:443".parse().expect("addr"))
        );
    }

    #[test]
    fn decodes_sends_and_raw_sockets() {
        let mut ev = event(EVENT_SENDMSG4);
        ev.addr[..4].copy_from_slice(&[127, 0, 0, 2]);
        ev.port = 53;
        let d = Decided::decode(&bytes(&ev)).expect("decodes");
        assert_eq!(
            d.report_line(|_| None),
            "bridle: refused sendto 127.0.0.2:53 (NO_MATCHING_RULE)"
        );
        let mut ev = event(EVENT_RAW_SOCKET);
        ev.addr[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        ev.port = libc::SOCK_RAW as u16;
        let d = Decided::decode(&bytes(&ev)).expect("decodes");
        assert_eq!(
            d.report_line(|_| None),
            "bridle: refused socket AF_INET SOCK_RAW (raw) (NO_MATCHING_RULE)"
        );
    }

    #[test]
    fn decodes_unix_connects_and_sends() {
        let mut ev = event(EVENT_CONNECT_UNIX);
        ev.path[..13].copy_from_slice(b"/run/app.sock");
        ev.port = 13;
        let d = Decided::decode(&bytes(&ev)).expect("decodes");
        assert_eq!(
            d.report_line(|_| None),
            "bridle: refused connect unix:/run/app.sock (NO_MATCHING_RULE)"
        );
        assert_eq!(d.operation.action(), "connect");
        assert_eq!(d.operation.object(), "unix:/run/app.sock");
        let mut ev = event(EVENT_SENDMSG_UNIX);
        ev.path[..6].copy_from_slice(b"\0bus\0x");
        ev.port = 6;
        let d = Decided::decode(&bytes(&ev)).expect("decodes");
        assert_eq!(d.operation, Operation::UnixSend("@bus\\x00x".into()));
        assert_eq!(d.operation.to_string(), "sendto unix:@bus\\x00x");
        let mut ev = event(EVENT_CONNECT_UNIX);
        ev.path[..10].copy_from_slice(b"/run/../x\n");
        ev.port = 10;
        ev.flags = EVENT_NONCANONICAL;
        let d = Decided::decode(&bytes(&ev)).expect("decodes");
        assert_eq!(
            d.report_line(|_| None),
            "bridle: refused connect unix:/run/../x\\x0a (NO_MATCHING_RULE; not a canonical socket path)"
        );
    }

    #[test]
    fn rejects_short_records() {
        assert_eq!(Decided::decode(&[0u8; 8]), None);
    }

    #[test]
    fn a_socket_event_is_its_head_alone() {
        let mut ev = event(EVENT_CONNECT4);
        ev.addr[..4].copy_from_slice(&[10, 1, 2, 3]);
        let whole = bytes(&ev);
        let head = &whole[..std::mem::size_of::<EventHead>()];
        assert_eq!(Decided::decode(head), Decided::decode(&whole));
        assert_eq!(
            Decided::decode(head).map(|d| d.operation),
            Some(Operation::Connect("10.1.2.3:443".parse().expect("addr")))
        );
    }

    #[test]
    fn a_tally_decodes_as_the_same_decision_with_its_count() {
        let mut ev = event(EVENT_SENDMSG6);
        ev.effect = EFFECT_PERMIT;
        ev.code = Code::Permitted.index();
        ev.rule = 3;
        ev.permit_id = 99;
        ev.addr[15] = 1;
        ev.comm[..4].copy_from_slice(b"curl");
        let key = TallyKey {
            workload: ev.workload,
            permit_id: 99,
            tgid: ev.tgid,
            uid: ev.uid,
            rule: 3,
            port: ev.port,
            kind: EVENT_SENDMSG6,
            code: Code::Permitted.index(),
            addr: ev.addr,
            comm: ev.comm,
        };
        let counted = TallyCount {
            count: 41,
            first_ns: 5,
            last_ns: 9,
        };
        let tallied = Decided::tallied(&key, &counted).expect("a socket kind");
        let one = Decided::decode(&bytes(&ev)).expect("decodes");
        assert_eq!(tallied.count, 41);
        assert_eq!(tallied.span, Some((5, 9)));
        assert_eq!(
            Decided {
                count: 1,
                span: None,
                ..tallied.clone()
            },
            one
        );
        assert_eq!(
            tallied.report_line(|_| Some("api".into())),
            "bridle: permitted sendto [::1]:443 41 more times (PERMITTED, rule api)"
        );
    }
}
