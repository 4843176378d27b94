//! Types shared by bridle's eBPF programs and user space.
//!
//! Every type here is `#[repr(C)]` with explicit padding, because the kernel and user space
//! read the same bytes: map keys, map values and ring-buffer events. The user half
//! (`feature = "user"`) marks them `aya::Pod` so they can be stored in maps.
#![no_std]

/// How many cgroup levels the programs walk up from the current task to find its workloads.
/// A workload nested deeper than this under the cgroup v2 root is refused at confine time.
pub const MAX_CGROUP_DEPTH: u32 = 16;

/// How many port rules one address entry can carry (a bounded loop in the kernel).
pub const PORT_RULES: usize = 16;

/// Bytes of the executed path copied into an event (the kernel's name for it, possibly relative).
pub const PATH_LEN: usize = 256;

/// Bytes of the task's comm.
pub const COMM_LEN: usize = 16;

/// No decision: the entry is absent or has expired.
pub const EFFECT_NONE: u8 = 0;
/// The operation goes ahead.
pub const EFFECT_PERMIT: u8 = 1;
/// The operation is refused (EPERM, or SIGKILL on the kill-on-exec tier).
pub const EFFECT_REFUSE: u8 = 2;

/// Verdict codes as the kernel reports them: the index of the engine's `Code` in `Code::ALL`.
pub mod code {
    /// A permit rule matched.
    pub const PERMITTED: u8 = 0;
    /// No rule matched; the workload's default decided.
    pub const NO_MATCHING_RULE: u8 = 1;
    /// A memfd or deleted-file executable, and the policy does not allow those.
    pub const ANONYMOUS_EXEC: u8 = 7;
}

/// Workload flag: observe mode. Nothing is refused; would-be refusals are reported.
pub const WORKLOAD_OBSERVE: u32 = 1;

/// Workload flag: the policy allows anonymous (memfd or deleted-file) executables.
pub const WORKLOAD_ANON_EXEC: u32 = 2;

/// How many nested workloads the task table records per process.
pub const TASK_NESTING: usize = 4;

/// The workloads one process belongs to, as the task table (`TASKS`) records them: cgroup
/// ids of the workloads' roots, outermost first, zero after the last. Each exec ask (one per
/// `bridle run`, one for the daemon) finds its own workload in it, so nested workloads are each
/// asked.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskWorkloads {
    /// Workload ids, outermost first; zero marks the end.
    pub ids: [u64; TASK_NESTING],
}

impl TaskWorkloads {
    /// Whether the process belongs to workload `id`.
    pub fn contains(&self, id: u64) -> bool {
        id != 0 && self.ids.contains(&id)
    }
}

/// A confined workload, keyed by the cgroup id (inode number) of its root cgroup.
///
/// Its decisions live under a policy *slot*: a reload writes a complete new slot, then points
/// the workload at it with one map update, so no operation is judged by a mix of two policies
/// and none meets a half-written one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// `WORKLOAD_*` flags.
    pub flags: u32,
    /// The effect for an exec that no entry covers (`EFFECT_PERMIT` or `EFFECT_REFUSE`).
    pub exec_default: u8,
    /// The effect for a connect that no entry covers.
    pub connect_default: u8,
    /// The effect for creating a raw or packet socket. Unlike the other defaults this is
    /// `EFFECT_REFUSE` unless a rule names `raw`: the design refuses such sockets whatever
    /// the policy's default, because they bypass every address rule.
    pub raw_effect: u8,
    /// The verdict code of `raw_effect`.
    pub raw_code: u8,
    /// Index of the rule that decided `raw_effect` (`u32::MAX`: none).
    pub raw_rule: u32,
    /// Padding; always zero.
    pub _pad: u32,
    /// The policy slot whose entries decide for this workload.
    pub slot: u64,
}

/// A compiled verdict for one object, as the engine issued it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// `EFFECT_PERMIT` or `EFFECT_REFUSE`.
    pub effect: u8,
    /// The verdict code (see [`code`]).
    pub code: u8,
    /// Padding; always zero.
    pub _pad: [u8; 2],
    /// Index of the deciding rule in the workload's rule table.
    pub rule: u32,
    /// Id of the signed permit this entry was compiled from (0: none).
    pub permit_id: u64,
    /// `CLOCK_BOOTTIME` nanoseconds after which the entry counts as absent (0: never).
    pub expires_ns: u64,
}

/// Key of the exec map: a file identity inside one policy slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExecKey {
    /// The policy slot.
    pub slot: u64,
    /// The file's device, in the kernel's encoding (`major << 20 | minor`).
    pub dev: u64,
    /// The file's inode number.
    pub ino: u64,
}

/// How many bytes of a file name an exec place key holds (the rest of a longer name is
/// represented by its length alone).
pub const PLACE_NAME_LEN: usize = 64;

/// Where an executed file sits: its directory's identity and its name in that directory.
///
/// A path rule outlives the inode it was compiled against: a package upgrade writes a new file
/// and renames it over the old one (new inode, same place), and the kernel still finds the
/// place's entry. A directory has exactly one parent, so (directory, name) names one path.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExecPlace {
    /// The directory's device, in the kernel's encoding (`major << 20 | minor`).
    pub dir_dev: u64,
    /// The directory's inode number.
    pub dir_ino: u64,
    /// The name's full length in bytes.
    pub name_len: u32,
    /// Padding; always zero.
    pub _pad: u32,
    /// The name's first `PLACE_NAME_LEN - 1` bytes, NUL-terminated, zero-filled.
    pub name: [u8; PLACE_NAME_LEN],
}

impl ExecPlace {
    /// An all-zero place, the form the kernel fills in.
    pub const fn zeroed() -> Self {
        ExecPlace {
            dir_dev: 0,
            dir_ino: 0,
            name_len: 0,
            _pad: 0,
            name: [0; PLACE_NAME_LEN],
        }
    }

    /// The place of `name` in directory (`dir_dev`, `dir_ino`), encoded as the kernel reads it.
    pub fn new(dir_dev: u64, dir_ino: u64, name: &[u8]) -> Self {
        let mut place = ExecPlace::zeroed();
        place.dir_dev = dir_dev;
        place.dir_ino = dir_ino;
        place.name_len = name.len() as u32;
        let kept = name.len().min(PLACE_NAME_LEN - 1);
        place.name[..kept].copy_from_slice(&name[..kept]);
        place
    }
}

/// Key of the exec place map: a place inside one policy slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExecPlaceKey {
    /// The policy slot.
    pub slot: u64,
    /// The place.
    pub place: ExecPlace,
}

/// The data part of an address LPM-trie key: the policy slot, then the address, both matched
/// bit by bit, so the prefix length of an entry is `64 + cidr_len`.
///
/// IPv4 and IPv6 share the trie: an IPv4 address is keyed by its IPv4-mapped form
/// (`::ffff:a.b.c.d`, prefix length `64 + 96 + cidr_len`), so a connect to `a.b.c.d` and one
/// through a dual-stack socket to `::ffff:a.b.c.d` meet the same entry, written once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetKey {
    /// The policy slot, native byte order (always fully matched).
    pub slot: [u8; 8],
    /// The address in network byte order (IPv4 addresses mapped).
    pub addr: [u8; 16],
}

/// Bits of an LPM key taken by the policy slot.
pub const NET_KEY_SLOT_BITS: u32 = 64;

/// One port range of an address entry and its decision.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRule {
    /// First port of the range (host byte order).
    pub lo: u16,
    /// Last port of the range, inclusive.
    pub hi: u16,
    /// Padding; always zero.
    pub _pad: u32,
    /// The decision for a destination in this range.
    pub decision: Decision,
}

/// The value of an address entry: its port ranges, refusals first. The engine flattens every
/// shorter prefix into each longer one, so the longest-prefix match alone gives the answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRules {
    /// How many of `rules` are in use.
    pub len: u32,
    /// Padding; always zero.
    pub _pad: u32,
    /// The ranges; the first match wins, so refusals come first.
    pub rules: [PortRule; PORT_RULES],
}

impl Default for PortRules {
    fn default() -> Self {
        PortRules {
            len: 0,
            _pad: 0,
            rules: [PortRule::default(); PORT_RULES],
        }
    }
}

/// Bytes of a unix socket address the hooks read: the size of `sun_path`.
pub const UNIX_PATH_LEN: usize = 108;

/// Bytes of a unix key's `name`: `sun_path` and four bytes that are always zero, so that a
/// NUL-terminated copy of a pathname as long as `sun_path` fits, and a scan may look three
/// bytes ahead of the last one.
pub const UNIX_KEY_NAME_LEN: usize = UNIX_PATH_LEN + 4;

/// Key of the unix-socket map: one socket address inside one policy slot, as the kernel hands
/// it to the connect and sendmsg hooks.
///
/// A pathname (`/run/app.sock`) is its bytes up to the first NUL; an abstract name
/// (`@name`) is a NUL byte followed by the name, every byte the caller passed counting (the
/// kernel treats `@name` and `@name\0` as different sockets). Unused bytes are zero, so one
/// exact hash lookup decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnixKey {
    /// The policy slot.
    pub slot: u64,
    /// Bytes of `name` in use.
    pub len: u32,
    /// Padding; always zero.
    pub _pad: u32,
    /// The address bytes, zero-filled.
    pub name: [u8; UNIX_KEY_NAME_LEN],
}

impl UnixKey {
    /// An all-zero key, the form the kernel fills in.
    pub const fn zeroed() -> Self {
        UnixKey {
            slot: 0,
            len: 0,
            _pad: 0,
            name: [0; UNIX_KEY_NAME_LEN],
        }
    }

    /// The key of an address as policies write it: `/path` (a pathname) or `@name` (an
    /// abstract name). `None` when it does not fit in `sun_path`.
    pub fn from_address(slot: u64, address: &[u8]) -> Option<Self> {
        let mut key = UnixKey::zeroed();
        key.slot = slot;
        let bytes: &[u8] = match address.split_first() {
            Some((b'@', name)) => {
                // The abstract namespace starts with a NUL byte where people write `@`.
                if 1 + name.len() > UNIX_PATH_LEN {
                    return None;
                }
                key.name[1..1 + name.len()].copy_from_slice(name);
                key.len = 1 + name.len() as u32;
                return Some(key);
            }
            _ => address,
        };
        if bytes.len() > UNIX_PATH_LEN || bytes.contains(&0) {
            return None;
        }
        key.name[..bytes.len()].copy_from_slice(bytes);
        key.len = bytes.len() as u32;
        Some(key)
    }

    /// Whether this is an abstract name (`sun_path` starts with a NUL byte).
    pub fn is_abstract(&self) -> bool {
        self.len > 0 && self.name[0] == 0
    }
}

/// Event kind: an exec judged by the exec hook.
pub const EVENT_EXEC: u8 = 1;
/// Event kind: an IPv4 connect (or UDP sendmsg).
pub const EVENT_CONNECT4: u8 = 2;
/// Event kind: an IPv6 connect.
pub const EVENT_CONNECT6: u8 = 3;
/// Event kind: an IPv4 UDP datagram sent to an address given with the send (no connect).
pub const EVENT_SENDMSG4: u8 = 4;
/// Event kind: an IPv6 UDP datagram sent to an address given with the send.
pub const EVENT_SENDMSG6: u8 = 5;
/// Event kind: a raw or packet socket being created; `port` carries the socket type and
/// `addr[0..2]` the address family (native byte order).
pub const EVENT_RAW_SOCKET: u8 = 6;
/// Event kind: a connect of a unix socket; `path` carries the address bytes (see
/// [`UnixKey::name`]) and `port` their length.
pub const EVENT_CONNECT_UNIX: u8 = 7;
/// Event kind: a unix datagram sent to an address given with the send; as
/// [`EVENT_CONNECT_UNIX`].
pub const EVENT_SENDMSG_UNIX: u8 = 8;

/// Event kind: a cgroup v2 cgroup was created ([`CgroupCreated`], not an [`Event`]); the
/// daemon looks at once whether a `[[confine]]` entry matches it.
pub const EVENT_CGROUP_CREATED: u8 = 9;

/// The record of [`EVENT_CGROUP_CREATED`]: like every record, its first byte is the kind.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupCreated {
    /// [`EVENT_CGROUP_CREATED`].
    pub kind: u8,
    /// Padding; always zero.
    pub _pad: [u8; 7],
    /// The new cgroup's id.
    pub cgroup: u64,
}

/// Event flag: observe mode let through an operation that would have been refused.
pub const EVENT_OBSERVED: u8 = 1;
/// Event flag: the process was sent SIGKILL (kill-on-exec tier).
pub const EVENT_KILLED: u8 = 2;
/// Event flag: a unix pathname spelled non-canonically (relative, `//`, `.` or `..`
/// components, a trailing `/`) that no entry names exactly, refused whatever the default.
pub const EVENT_NONCANONICAL: u8 = 4;

/// A decision the kernel took, sent to user space through the ring buffer: every field but
/// the exec path. Socket decisions are sent as this head alone (a record of
/// `size_of::<EventHead>()` bytes), exec decisions as a whole [`Event`]; the record's length
/// says which.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHead {
    /// `EVENT_*` kind.
    pub kind: u8,
    /// `EFFECT_PERMIT` or `EFFECT_REFUSE` (what the policy says, even in observe mode).
    pub effect: u8,
    /// The verdict code.
    pub code: u8,
    /// `EVENT_*` flags.
    pub flags: u8,
    /// The deciding rule's index (meaningless when `code` is `NO_MATCHING_RULE`).
    pub rule: u32,
    /// Thread id.
    pub pid: u32,
    /// Process id.
    pub tgid: u32,
    /// Real uid.
    pub uid: u32,
    /// Destination port (connect events), host byte order.
    pub port: u16,
    /// Padding; always zero.
    pub _pad: u16,
    /// The workload's cgroup id.
    pub workload: u64,
    /// The task's own cgroup id (may be a descendant of the workload's).
    pub cgroup: u64,
    /// `CLOCK_BOOTTIME` nanoseconds.
    pub time_ns: u64,
    /// The permit the decision came from (0: none, e.g. a default).
    pub permit_id: u64,
    /// Executed file's device (kernel encoding).
    pub dev: u64,
    /// Executed file's inode.
    pub ino: u64,
    /// Destination address, network byte order (IPv4 in the first four bytes).
    pub addr: [u8; 16],
    /// The task's comm.
    pub comm: [u8; COMM_LEN],
}

/// An exec decision: the [`EventHead`] and the path given to execve. The head's fields read
/// and write through `Event` directly (`ev.port`), by `Deref`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// Every field but the path.
    pub head: EventHead,
    /// The executed path as given to execve (NUL-terminated).
    pub path: [u8; PATH_LEN],
}

impl core::ops::Deref for Event {
    type Target = EventHead;

    fn deref(&self) -> &EventHead {
        &self.head
    }
}

impl core::ops::DerefMut for Event {
    fn deref_mut(&mut self) -> &mut EventHead {
        &mut self.head
    }
}

/// Key of a tally: one permitted socket decision as its audit record names it (workload,
/// process, object, rule, permit), so that every decision counted under one key would have
/// made the same record, apart from its time.
///
/// A permitted connect or send is the operation an agent repeats most (a client reconnecting
/// to its API, a resolver's datagrams), and one ring-buffer event per repeat cost the workload
/// more than the judgement itself. The kernel sends the first decision of a key as an event
/// and counts the repeats in the tally map under this key; user space writes the counts to the
/// audit trail as records of the same shape with a count and a time span (see
/// agent/src/kernel/tally.rs for how no count is lost or counted twice).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TallyKey {
    /// The deciding workload's cgroup id.
    pub workload: u64,
    /// The permit the decision came from (0: none, a permitting default).
    pub permit_id: u64,
    /// Process id.
    pub tgid: u32,
    /// Real uid.
    pub uid: u32,
    /// The deciding rule's index (`u32::MAX`: none).
    pub rule: u32,
    /// Destination port, host byte order.
    pub port: u16,
    /// `EVENT_*` kind.
    pub kind: u8,
    /// The verdict code.
    pub code: u8,
    /// Destination address, network byte order (IPv4 in the first four bytes).
    pub addr: [u8; 16],
    /// The deciding task's comm (threads of one process may differ).
    pub comm: [u8; COMM_LEN],
}

/// Value of a tally: how many decisions beyond the first were counted, and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TallyCount {
    /// Decisions counted here and sent as no event. Incremented atomically.
    pub count: u64,
    /// `CLOCK_BOOTTIME` ns of the key's first decision in this tally map (the one sent as an
    /// event), so `first_ns..=last_ns` spans every decision counted.
    pub first_ns: u64,
    /// `CLOCK_BOOTTIME` ns of a decision at most microseconds before the last one counted (a
    /// plain store: two CPUs counting at once may leave the earlier of their two times).
    pub last_ns: u64,
}

/// The slot of `TALLIES` the programs count in.
pub const TALLY_CURRENT: u32 = 0;
/// The slot of `TALLIES` where user space parks a map it is harvesting, so that a reader that
/// dies before its counts are written leaves them to the next (the programs never look here).
pub const TALLY_PARKED: u32 = 1;

/// Capacity of one tally map: distinct keys between two harvests. A decision whose key finds
/// no room is sent as an event, as if there were no tally.
pub const TALLY_ENTRIES: u32 = 1 << 14;

/// The DNS port: a workload's traffic to it, whatever the address, goes to its resolver.
pub const DNS_PORT: u16 = 53;

/// Where a workload's DNS traffic goes: the resolver `bridle run` serves it from on loopback.
/// Keyed by the workload's cgroup id in its own map; the innermost workload with an entry
/// wins, so a nested `bridle run` serves its own workload and its resolver's upstream queries
/// meet the outer one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsRedirect {
    /// The resolver's IPv4 address, network byte order.
    pub ip4: [u8; 4],
    /// The resolver's IPv6 address, network byte order (all zero: none; IPv6 sockets then go
    /// to the IPv4-mapped form of `ip4`).
    pub ip6: [u8; 16],
    /// The resolver's port (UDP and TCP), host byte order.
    pub port: u16,
    /// Padding; always zero.
    pub _pad: u16,
}

/// The destination a redirected DNS socket asked for, by socket cookie: the reply's source is
/// rewritten back to it, because stub resolvers drop replies from an address they did not ask.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsOrigin {
    /// The original address, network byte order (IPv4 in the first four bytes).
    pub addr: [u8; 16],
    /// The original port, host byte order.
    pub port: u16,
    /// Padding; always zero.
    pub _pad: [u8; 6],
}

/// Index in the stats map: events dropped because the ring buffer was full.
pub const STAT_EVENTS_LOST: u32 = 0;
/// Index in the stats map: operations judged.
pub const STAT_JUDGED: u32 = 1;
/// Index in the stats map: operations refused (or that would have been, in observe mode).
pub const STAT_REFUSED: u32 = 2;
/// Number of entries in the stats map.
pub const STAT_COUNT: u32 = 3;

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: all of these are repr(C), made of integers and byte arrays, with explicit
    // padding fields, so every bit pattern is valid and there are no implicit holes.
    unsafe impl aya::Pod for Workload {}
    unsafe impl aya::Pod for TaskWorkloads {}
    unsafe impl aya::Pod for Decision {}
    unsafe impl aya::Pod for ExecKey {}
    unsafe impl aya::Pod for ExecPlaceKey {}
    unsafe impl aya::Pod for NetKey {}
    unsafe impl aya::Pod for PortRule {}
    unsafe impl aya::Pod for PortRules {}
    unsafe impl aya::Pod for DnsRedirect {}
    unsafe impl aya::Pod for DnsOrigin {}
    unsafe impl aya::Pod for UnixKey {}
    unsafe impl aya::Pod for TallyKey {}
    unsafe impl aya::Pod for TallyCount {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Workload>(), 24);
        assert_eq!(size_of::<Decision>(), 24);
        assert_eq!(size_of::<ExecKey>(), 24);
        assert_eq!(size_of::<ExecPlaceKey>(), 32 + PLACE_NAME_LEN);
        assert_eq!(size_of::<NetKey>(), 24);
        assert_eq!(size_of::<PortRule>(), 32);
        assert_eq!(size_of::<PortRules>(), 8 + 32 * PORT_RULES);
        assert_eq!(size_of::<EventHead>(), 104);
        assert_eq!(size_of::<Event>(), 104 + PATH_LEN);
        assert_eq!(core::mem::offset_of!(Event, path), size_of::<EventHead>());
        assert_eq!(size_of::<TallyKey>(), 64);
        assert_eq!(size_of::<TallyCount>(), 24);
        assert_eq!(size_of::<DnsRedirect>(), 24);
        assert_eq!(size_of::<DnsOrigin>(), 24);
        assert_eq!(size_of::<UnixKey>(), 128);
    }

    #[test]
    fn a_place_keeps_a_long_name_as_its_prefix_and_length() {
        let long = [b'x'; 100];
        let p = ExecPlace::new(7, 42, &long);
        assert_eq!(p.name_len, 100);
        assert_eq!(&p.name[..PLACE_NAME_LEN - 1], &long[..PLACE_NAME_LEN - 1]);
        assert_eq!(
            p.name[PLACE_NAME_LEN - 1],
            0,
            "NUL-terminated like the kernel's copy"
        );
        let short = ExecPlace::new(7, 42, b"curl");
        assert_eq!(&short.name[..5], b"curl\0");
        assert!(short.name[4..].iter().all(|b| *b == 0));
    }

    #[test]
    fn unix_keys_encode_pathnames_and_abstract_names_as_the_kernel_reads_them() {
        let k = UnixKey::from_address(9, b"/run/app.sock").expect("fits");
        assert_eq!((k.slot, k.len), (9, 13));
        assert_eq!(&k.name[..13], b"/run/app.sock");
        assert!(k.name[13..].iter().all(|b| *b == 0));
        assert!(!k.is_abstract());
        let a = UnixKey::from_address(9, b"@bus").expect("fits");
        assert_eq!(a.len, 4);
        assert_eq!(&a.name[..5], b"\0bus\0");
        assert!(a.is_abstract());
        assert!(UnixKey::from_address(0, &[b'/'; UNIX_PATH_LEN]).is_some());
        assert!(UnixKey::from_address(0, &[b'/'; UNIX_PATH_LEN + 1]).is_none());
        assert!(UnixKey::from_address(0, b"/a\0b").is_none());
    }
}
