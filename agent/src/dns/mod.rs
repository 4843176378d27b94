//! Host names decided at DNS time: the resolver `bridle run` serves its workload from.
//!
//! The kernel sends the workload's DNS traffic (UDP and TCP to port 53, whatever the address)
//! here (see `ebpf/src/dns.rs`). A name no permit host rule allows gets REFUSED; an allowed one
//! is forwarded to the upstream server, and every A and AAAA address of the answer (CNAME
//! targets included) becomes a kernel entry under the workload's slot, with the matching
//! rules' ports and the record's TTL clamped to bounds, *before* the answer goes back. So the
//! workload can reach an address by name only if it asked through an allowed name, and only
//! for as long as the answer lives.
//!
//! Threads: a small fixed pool of workers per UDP socket, each receiving and answering queries
//! itself (the socket's receive buffer is the queue: when it is full the kernel drops the
//! query and the client retries), one acceptor per TCP socket, and at most [`MAX_TCP`]
//! connection threads.

pub mod names;
pub mod permits;
pub mod upstream;
pub mod wire;

use crate::{
    fanotify::bpfmap::BpfMap,
    issuer::boot_now_ns,
    kernel::events::{Decided, Operation},
};
use anyhow::{Context, Result};
use bridle_common::{Decision, DnsRedirect, PortRule, EFFECT_PERMIT, EFFECT_REFUSE};
use bridle_engine::{Code, Compiled, Effect, HostEntry};
use bridle_trust::audit::RecordFields;
use hickory_proto::op::ResponseCode;
use names::NameVerdict;
use permits::Permits;
use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc, Arc, Mutex, RwLock,
    },
    thread::JoinHandle,
    time::Duration,
};
use wire::{Malformed, Question};

/// Worker threads answering the UDP queries of each socket (IPv4, and IPv6 where the host has
/// it): one waiting on a slow upstream does not hold up the others.
const UDP_WORKERS: usize = 4;
/// TCP connections served at once; more are closed at accept.
pub const MAX_TCP: usize = 16;
/// How often the receiving threads look at the stop flag.
const POLL: Duration = Duration::from_millis(100);
/// How long a TCP client may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// How the resolver reaches its upstream and bounds the life of the entries it installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// The upstream server.
    pub upstream: SocketAddr,
    /// How long to wait for the upstream.
    pub timeout: Duration,
    /// Shortest kernel lifetime of an answered address.
    pub ttl_min: Duration,
    /// Longest kernel lifetime of an answered address.
    pub ttl_max: Duration,
}

/// What the resolver judges names by: one policy slot of the workload.
#[derive(Debug, Clone)]
pub struct View {
    /// The policy slot the entries go under.
    pub slot: u64,
    /// Observe mode: forward every name, report the ones that would be refused.
    pub observe: bool,
    /// A refuse-all quarantine: every name is refused (code `QUARANTINED`), nothing installed.
    pub quarantined: bool,
    /// The policy's host rules.
    pub hosts: Vec<HostEntry>,
    /// Each rule's verdict code index, by rule index.
    pub codes: Vec<u8>,
    /// Each rule's name, by rule index.
    pub rules: Vec<String>,
    /// The signed permit id and kernel (`CLOCK_BOOTTIME`) expiry of each host rule, by rule
    /// index.
    pub stamps: HashMap<u32, (u64, u64)>,
}

impl View {
    /// The view of `compiled` under `slot`; `stamp` gives a rule's permit id and expiry
    /// (`Issuer::stamp`).
    pub fn new(
        compiled: &Compiled,
        slot: u64,
        observe: bool,
        stamp: impl Fn(u32) -> Option<(u64, u64)>,
    ) -> View {
        View {
            slot,
            observe,
            quarantined: false,
            hosts: compiled.hosts.clone(),
            codes: rule_codes(compiled),
            rules: compiled.rules.iter().map(|r| r.name.clone()).collect(),
            stamps: compiled
                .hosts
                .iter()
                .filter_map(|h| Some((h.rule.0, stamp(h.rule.0)?)))
                .collect(),
        }
    }

    /// The view of a refuse-all quarantine under `slot`: no name is answered.
    pub fn refuse_all(slot: u64) -> View {
        View {
            slot,
            observe: false,
            quarantined: true,
            hosts: Vec::new(),
            codes: Vec::new(),
            rules: Vec::new(),
            stamps: HashMap::new(),
        }
    }
}

/// How the resolver is set up.
pub struct DnsConfig {
    /// Upstream and entry lifetimes.
    pub settings: Settings,
    /// The workload's cgroup id.
    pub workload: u64,
    /// The policy the names are judged by.
    pub view: View,
    /// The NET_RULES and DNS_REDIRECT maps.
    pub maps: [BpfMap; 2],
    /// Where decisions go (the reporter and the audit trail).
    pub reports: mpsc::Sender<DnsReport>,
}

/// The rule codes of a compiled policy, by rule index, for [`DnsConfig::codes`].
pub fn rule_codes(compiled: &Compiled) -> Vec<u8> {
    compiled.rules.iter().map(|r| r.code.index()).collect()
}

/// One decision of the resolver.
#[derive(Debug, Clone)]
pub struct DnsReport {
    /// The workload's cgroup id.
    pub workload: u64,
    /// The name asked, normalised.
    pub name: String,
    /// The record type asked (`A`, `AAAA`, …).
    pub qtype: String,
    /// What happened.
    pub outcome: Outcome,
    /// The deciding rule's index.
    pub rule: Option<u32>,
    /// The deciding rule's name, in the policy the resolver judged by.
    pub rule_name: Option<String>,
    /// The signed permit behind the installed entries (permitted names only).
    pub permit_id: Option<u64>,
    /// The peer's process id when the transport tells it, else 0.
    pub pid: u32,
    /// Whether the query came over TCP.
    pub tcp: bool,
}

/// What the resolver did with one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded; these addresses became kernel entries.
    Permitted(Vec<IpAddr>),
    /// Answered REFUSED.
    Refused,
    /// Answered REFUSED: the workload is quarantined (refuse-all).
    Quarantined,
    /// Observe mode: forwarded, but no rule allows the name; the answer held these addresses.
    Observed(Vec<IpAddr>),
    /// The upstream gave no answer in time: answered SERVFAIL.
    UpstreamTimeout,
    /// The upstream could not be reached or the entries could not be written: SERVFAIL.
    Failed(String),
}

impl DnsReport {
    /// The operator's line for this decision.
    pub fn line(&self, rule_name: impl Fn(u32) -> Option<String>) -> String {
        let rule = self
            .rule
            .and_then(rule_name)
            .map(|r| format!(", rule {r}"))
            .unwrap_or_default();
        let over = if self.tcp { " over TCP" } else { "" };
        let what = format!("resolve {} {}{over}", self.name, self.qtype);
        match &self.outcome {
            Outcome::Permitted(addrs) => {
                let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                format!(
                    "bridle: permitted {what} (PERMITTED{rule}) -> [{}]",
                    list.join(", ")
                )
            }
            Outcome::Refused => {
                format!("bridle: refused {what} (NAME_NOT_ALLOWED{rule}; no permit rule names it)")
            }
            Outcome::Quarantined => {
                format!("bridle: refused {what} (QUARANTINED: the workload is quarantined)")
            }
            Outcome::Observed(_) => format!(
                "bridle: observed {what} (OBSERVED: would be refused, NAME_NOT_ALLOWED{rule})"
            ),
            Outcome::UpstreamTimeout => {
                format!("bridle: warning: {what}: the upstream DNS server did not answer in time; answered SERVFAIL")
            }
            Outcome::Failed(why) => {
                format!("bridle: warning: {what}: {why}; answered SERVFAIL")
            }
        }
    }

    /// The audit record's object: the name and type asked, and the addresses answered
    /// (`allowed.test A = 127.0.0.2 127.0.0.3`), so an address in a later record can be
    /// named (see crate::rollout).
    pub fn audit_object(&self) -> String {
        let mut object = format!("{} {}", self.name, self.qtype);
        if let Outcome::Permitted(addrs) | Outcome::Observed(addrs) = &self.outcome {
            if !addrs.is_empty() {
                object.push_str(" =");
                for addr in addrs {
                    object.push(' ');
                    object.push_str(&addr.to_string());
                }
            }
        }
        object
    }

    /// The audit record of this decision, for the workload whose cgroup is `workload`.
    pub fn audit_fields(&self, workload: String) -> RecordFields {
        let effect = match self.outcome {
            Outcome::Refused | Outcome::Quarantined => Effect::Refuse,
            _ => Effect::Permit,
        };
        let (comm, uid) = if self.pid != 0 {
            crate::os::proc_identity(self.pid as i32)
        } else {
            (String::new(), u32::MAX)
        };
        RecordFields {
            workload,
            pid: self.pid,
            uid,
            comm,
            action: "resolve".to_owned(),
            object: self.audit_object(),
            effect,
            code: self.code(),
            rule: self.rule_name.clone(),
            permit_id: self.permit_id,
        }
    }

    /// The verdict code for the audit trail.
    pub fn code(&self) -> Code {
        match self.outcome {
            Outcome::Permitted(_) => Code::Permitted,
            Outcome::Refused => Code::NameNotAllowed,
            Outcome::Quarantined => Code::Quarantined,
            Outcome::Observed(_) => Code::Observed,
            // No verdict refused the name; the answer failed. The audit record keeps the
            // name's own verdict.
            Outcome::UpstreamTimeout | Outcome::Failed(_) => Code::Permitted,
        }
    }
}

/// Adds to a refused connect's or send's line (`bridle: refused connect ADDR (CODE…)`) that
/// the address was not obtained through an allowed name (or its answer expired), when the
/// refusal fell to the default of a policy with permit host rules: the address may well
/// belong to an allowed name, and the hint says how to get it.
pub fn hint_unnamed(compiled: &Compiled, decided: &Decided, line: &mut String) {
    let unnamed = !decided.permitted
        && matches!(
            decided.operation,
            Operation::Connect(_) | Operation::Send(_)
        )
        && decided.code == Some(Code::NoMatchingRule)
        && compiled.hosts.iter().any(|h| h.effect == Effect::Permit);
    if unnamed {
        if let Some(open) = line.rfind(')') {
            line.insert_str(open, "; not an address of an allowed name");
        }
    }
}

/// The first `nameserver` of resolv.conf text (port 53), if any.
pub fn nameserver_of(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        if words.next()? != "nameserver" {
            return None;
        }
        // A scoped IPv6 address (fe80::1%eth0) keeps only the address part here.
        let ip: IpAddr = words.next()?.split('%').next()?.parse().ok()?;
        Some(SocketAddr::new(ip, bridle_common::DNS_PORT))
    })
}

/// The system's upstream: the first `nameserver` of /etc/resolv.conf, else 127.0.0.1:53
/// (what the C library does with none).
pub fn system_upstream() -> SocketAddr {
    std::fs::read_to_string("/etc/resolv.conf")
        .ok()
        .as_deref()
        .and_then(nameserver_of)
        .unwrap_or(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            bridle_common::DNS_PORT,
        ))
}

/// What one policy slot's answers are judged by and written into; replaced whole when the
/// workload moves to another slot.
struct Binding {
    settings: Settings,
    view: View,
    /// `view.stamps`, renewed in place (see [`Resolver::restamp`]).
    stamps: Mutex<HashMap<u32, (u64, u64)>>,
    permits: Arc<Permits>,
}

/// Answers given, by outcome.
#[derive(Default)]
struct Counters {
    permitted: AtomicU64,
    refused: AtomicU64,
    observed: AtomicU64,
    failed: AtomicU64,
}

/// A snapshot of a resolver's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Names answered, their addresses installed.
    pub permitted: u64,
    /// Names answered REFUSED.
    pub refused: u64,
    /// Observe mode: names that would have been refused.
    pub observed: u64,
    /// SERVFAIL answers (upstream silent or unreachable, an entry not written).
    pub failed: u64,
    /// Addresses with live DNS entries.
    pub addresses: usize,
}

struct Shared {
    workload: u64,
    /// Held for reading while an answer's entries are written, for writing while the
    /// workload moves to another slot: no answer is written under a slot the workload left.
    binding: RwLock<Arc<Binding>>,
    reports: mpsc::Sender<DnsReport>,
    counters: Counters,
    stop: AtomicBool,
    tcp_open: AtomicUsize,
}

/// The running resolver. Dropping it stops its threads and removes the workload's redirect
/// (unless [`Resolver::keep_redirect`] said otherwise).
pub struct Resolver {
    shared: Arc<Shared>,
    redirect: DnsRedirect,
    redirect_map: BpfMap,
    workload: u64,
    keep_redirect: bool,
    threads: Vec<JoinHandle<()>>,
}

impl Resolver {
    /// Binds the resolver on loopback, starts its threads and points the workload's DNS
    /// traffic at it. The redirect is in the kernel when this returns.
    pub fn start(config: DnsConfig) -> Result<Resolver> {
        let [net, redirect_map] = config.maps;
        let (sockets, redirect) = bind()?;
        let permits = Arc::new(Permits::new(config.view.slot, Arc::new(net)));
        let shared = Arc::new(Shared {
            workload: config.workload,
            binding: RwLock::new(Arc::new(Binding::new(
                config.settings,
                config.view,
                permits,
            ))),
            reports: config.reports,
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            tcp_open: AtomicUsize::new(0),
        });
        let mut resolver = Resolver {
            shared: Arc::clone(&shared),
            redirect,
            redirect_map,
            workload: config.workload,
            keep_redirect: false,
            threads: Vec::new(),
        };
        for (udp, tcp) in sockets {
            let udp = Arc::new(udp);
            for i in 0..UDP_WORKERS {
                let (udp, shared) = (Arc::clone(&udp), Arc::clone(&shared));
                resolver.spawn(&format!("bridle-dns-w{i}"), move || {
                    udp_serve(&shared, &udp);
                })?;
            }
            if let Some(tcp) = tcp {
                let shared_tcp = Arc::clone(&shared);
                resolver.spawn("bridle-dns-tcp", move || tcp_accept(&shared_tcp, tcp))?;
            }
        }
        resolver
            .redirect_map
            .update(
                &resolver.workload,
                &resolver.redirect,
                crate::fanotify::bpfmap::BPF_ANY,
            )
            .context("pointing the workload's DNS traffic at the resolver")?;
        Ok(resolver)
    }

    fn spawn(&mut self, name: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(f)
            .with_context(|| format!("starting thread {name}"))?;
        self.threads.push(handle);
        Ok(())
    }

    /// Drops DNS entries whose TTL has passed.
    pub fn sweep(&self) -> Result<()> {
        self.shared.binding().permits.sweep()
    }

    /// After the policy's own entries were renewed: renews the permit ids and expiries the
    /// DNS entries carry, and those of answers to come.
    pub fn restamp(&self, stamp: impl Fn(u32) -> Option<(u64, u64)>) -> Result<()> {
        let binding = self.shared.binding();
        {
            let mut stamps = binding
                .stamps
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for (rule, s) in stamps.iter_mut() {
                if let Some(fresh) = stamp(*rule) {
                    *s = fresh;
                }
            }
        }
        binding.permits.restamp(stamp)
    }

    /// Moves the resolver to another policy slot of its workload: the names answered so far
    /// are judged by `view` and their addresses written under its slot (whose own entries must
    /// be in the kernel already), then `switch` points the workload at that slot, and only
    /// then do answers go by `view`. Answers wait meanwhile, so none is written under a slot
    /// the workload has left. When `switch` fails nothing changes. Returns how many addresses
    /// were carried over, or why carrying them failed (the switch happened all the same: the
    /// workload then resolves its names again).
    ///
    /// `view.slot` must be a new slot, or the current one with the same rules (new settings
    /// or stamps only).
    pub fn rebind(
        &self,
        settings: Settings,
        view: View,
        switch: impl FnOnce() -> Result<()>,
    ) -> Result<std::result::Result<usize, anyhow::Error>> {
        let mut binding = self
            .shared
            .binding
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let slot = view.slot;
        if slot == binding.permits.slot() {
            // Same slot: its entries stay where they are.
            switch()?;
            let permits = Arc::clone(&binding.permits);
            let held = permits.addresses();
            *binding = Arc::new(Binding::new(settings, view, permits));
            return Ok(Ok(held));
        }
        let next = Binding::new(settings, view, Arc::new(binding.permits.for_slot(slot)));
        let carried = next
            .permits
            .carry_from(&binding.permits, |name, ends| next.grants(name, ends));
        switch()?;
        *binding = Arc::new(next);
        Ok(carried)
    }

    /// Where the workload's DNS traffic goes (the IPv4 address; IPv6 uses ::1 on the same
    /// port when the host has it).
    pub fn address(&self) -> SocketAddr {
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(self.redirect.ip4)),
            self.redirect.port,
        )
    }

    /// The settings in force.
    pub fn settings(&self) -> Settings {
        self.shared.binding().settings
    }

    /// The slot answers are written under.
    pub fn slot(&self) -> u64 {
        self.shared.binding().view.slot
    }

    /// Whether every name is refused for a refuse-all quarantine.
    pub fn quarantined(&self) -> bool {
        self.shared.binding().view.quarantined
    }

    /// The counters.
    pub fn stats(&self) -> DnsStats {
        let c = &self.shared.counters;
        DnsStats {
            permitted: c.permitted.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            observed: c.observed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            addresses: self.shared.binding().permits.addresses(),
        }
    }

    /// Tells the resolver's threads to stop, without waiting for them (dropping the resolver
    /// waits), so that many resolvers stop in the time of one.
    pub fn signal_stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }

    /// Leaves the workload's redirect in the kernel when the resolver is dropped: while no
    /// resolver answers, the workload's DNS queries then go nowhere rather than to the
    /// address it named.
    pub fn keep_redirect(&mut self) {
        self.keep_redirect = true;
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        if !self.keep_redirect {
            let _ = self.redirect_map.delete(&self.workload);
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

type Bound = (Vec<(UdpSocket, Option<TcpListener>)>, DnsRedirect);

/// Binds UDP and TCP on one port of 127.0.0.1, and of ::1 when the host has IPv6.
fn bind() -> Result<Bound> {
    let mut last = None;
    // The port comes from the kernel's ephemeral range for UDP; TCP may have it taken, so try
    // a few times.
    for _ in 0..16 {
        let udp4 =
            UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("binding the resolver (UDP)")?;
        let port = udp4.local_addr()?.port();
        let tcp4 = match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            Ok(t) => t,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let mut sockets = vec![(udp4, Some(tcp4))];
        let mut ip6 = [0u8; 16];
        if let (Ok(udp6), Ok(tcp6)) = (
            UdpSocket::bind((Ipv6Addr::LOCALHOST, port)),
            TcpListener::bind((Ipv6Addr::LOCALHOST, port)),
        ) {
            sockets.push((udp6, Some(tcp6)));
            ip6 = Ipv6Addr::LOCALHOST.octets();
        }
        for (udp, tcp) in &sockets {
            udp.set_read_timeout(Some(POLL))?;
            if let Some(t) = tcp {
                t.set_nonblocking(true)?;
            }
        }
        let redirect = DnsRedirect {
            ip4: Ipv4Addr::LOCALHOST.octets(),
            ip6,
            port,
            _pad: 0,
        };
        return Ok((sockets, redirect));
    }
    Err(last
        .map(anyhow::Error::from)
        .unwrap_or_else(|| anyhow::anyhow!("no port")))
    .context("binding the resolver (TCP) on the UDP socket's port")
}

/// Receives queries on `sock` and answers each. Every worker of a socket waits in its own
/// `recv_from`, and the kernel hands each datagram to one of them: no thread sits between the
/// socket and the worker (a hand-off would be one more wake-up per query), and the socket's
/// receive buffer is the queue (when it is full the kernel drops the query; the client
/// retries, as with any busy server).
fn udp_serve(shared: &Shared, sock: &UdpSocket) {
    let mut buf = vec![0u8; 65535];
    while !shared.stop.load(Ordering::SeqCst) {
        match sock.recv_from(&mut buf) {
            Ok((n, peer)) => {
                if let Some(reply) = shared.answer(&buf[..n], false, 0) {
                    // A client that went away is not our failure.
                    let _ = sock.send_to(&reply, peer);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

fn tcp_accept(shared: &Arc<Shared>, listener: TcpListener) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if shared.tcp_open.fetch_add(1, Ordering::SeqCst) >= MAX_TCP {
                    shared.tcp_open.fetch_sub(1, Ordering::SeqCst);
                    continue; // dropping the stream closes it
                }
                let conn = Arc::clone(shared);
                let spawned = std::thread::Builder::new()
                    .name("bridle-dns-conn".to_owned())
                    .spawn(move || {
                        let _ = tcp_serve(&conn, stream);
                        conn.tcp_open.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    shared.tcp_open.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL / 4),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Serves one TCP client: length-prefixed queries, one after another, until it closes or
/// stays idle too long.
fn tcp_serve(shared: &Shared, mut stream: TcpStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(TCP_IDLE))?;
    stream.set_write_timeout(Some(TCP_IDLE))?;
    while !shared.stop.load(Ordering::SeqCst) {
        let Some(query) = upstream::read_frame(&mut stream)? else {
            return Ok(());
        };
        if let Some(reply) = shared.answer(&query, true, 0) {
            upstream::write_frame(&mut stream, &reply)?;
        }
    }
    Ok(())
}

impl Binding {
    fn new(settings: Settings, view: View, permits: Arc<Permits>) -> Binding {
        Binding {
            settings: Settings {
                ttl_max: settings.ttl_max.max(settings.ttl_min),
                ..settings
            },
            stamps: Mutex::new(view.stamps.clone()),
            view,
            permits,
        }
    }

    /// What this binding's policy says about a name (a quarantine allows none).
    fn judge(&self, name: &str) -> NameVerdict {
        if self.view.quarantined {
            return NameVerdict {
                allowed: false,
                rule: None,
                grants: Vec::new(),
            };
        }
        names::judge(&self.view.hosts, name)
    }

    /// The rule's permit id and kernel expiry.
    fn stamp(&self, rule: u32) -> Option<(u64, u64)> {
        self.stamps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&rule)
            .copied()
    }

    /// The kernel port rules of an address answered for `name` until `ends_ns`: the
    /// verdict's grants, each expiring with the answer or its permit, whichever is first.
    fn port_rules(&self, verdict: &NameVerdict, ends_ns: u64) -> Vec<PortRule> {
        verdict
            .grants
            .iter()
            .map(|g| {
                let (permit_id, expires_ns) = match self.stamp(g.rule) {
                    Some((id, expires)) => (id, expires.min(ends_ns)),
                    None => (0, ends_ns),
                };
                PortRule {
                    lo: g.lo,
                    hi: g.hi,
                    _pad: 0,
                    decision: Decision {
                        effect: if g.refuse {
                            EFFECT_REFUSE
                        } else {
                            EFFECT_PERMIT
                        },
                        code: self
                            .view
                            .codes
                            .get(g.rule as usize)
                            .copied()
                            .unwrap_or(Code::NoMatchingRule.index()),
                        _pad: [0; 2],
                        rule: g.rule,
                        permit_id,
                        expires_ns,
                    },
                }
            })
            .collect()
    }

    /// The port rules a name answered until `ends_ns` gets under this binding; none when the
    /// name is not allowed (see [`Permits::carry_from`]).
    fn grants(&self, name: &str, ends_ns: u64) -> Vec<PortRule> {
        let verdict = self.judge(name);
        if !verdict.allowed {
            return Vec::new();
        }
        self.port_rules(&verdict, ends_ns)
    }

    fn install(&self, ip: IpAddr, name: &str, ttl: u32, verdict: &NameVerdict) -> Result<()> {
        let ttl =
            Duration::from_secs(u64::from(ttl)).clamp(self.settings.ttl_min, self.settings.ttl_max);
        let ends_ns = boot_now_ns() + ttl.as_nanos() as u64;
        let rules = self.port_rules(verdict, ends_ns);
        let over = self.permits.install(ip, name, ends_ns, &rules)?;
        if over > 0 {
            eprintln!(
                "bridle: warning: {ip}: {over} port rules from host names did not fit the kernel entry (at most {} per address); those ports stay refused",
                bridle_common::PORT_RULES
            );
        }
        Ok(())
    }
}

impl Shared {
    /// The binding in force (a reference that a concurrent rebind does not change).
    fn binding(&self) -> Arc<Binding> {
        Arc::clone(
            &self
                .binding
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    fn report(&self, report: DnsReport) {
        let counter = match report.outcome {
            Outcome::Permitted(_) => &self.counters.permitted,
            Outcome::Refused | Outcome::Quarantined => &self.counters.refused,
            Outcome::Observed(_) => &self.counters.observed,
            Outcome::UpstreamTimeout | Outcome::Failed(_) => &self.counters.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // The run loop may be gone at shutdown; the answer still goes out.
        let _ = self.reports.send(report);
    }

    /// The resolver's answer to one query (None: drop it).
    fn answer(&self, bytes: &[u8], tcp: bool, pid: u32) -> Option<Vec<u8>> {
        let q: Question = match wire::read_query(bytes) {
            Ok(q) => q,
            Err(Malformed::Unanswerable) => return None,
            Err(Malformed::Answer(id, code)) => return Some(wire::bare(id, code)),
        };
        let name = names::normalize(&q.query.name.to_ascii());
        let report = |binding: &Binding, verdict: &NameVerdict, outcome: Outcome| {
            let permit_id = match (&outcome, verdict.rule) {
                (Outcome::Permitted(_), Some(rule)) => binding.stamp(rule).map(|(id, _)| id),
                _ => None,
            };
            self.report(DnsReport {
                workload: self.workload,
                name: name.clone(),
                qtype: q.query.query_type.to_string(),
                outcome,
                rule: verdict.rule,
                rule_name: verdict
                    .rule
                    .and_then(|r| binding.view.rules.get(r as usize).cloned()),
                permit_id,
                pid,
                tcp,
            });
        };
        let first = self.binding();
        let verdict = first.judge(&name);
        if first.view.quarantined {
            report(&first, &verdict, Outcome::Quarantined);
            return Some(wire::answer(&q, ResponseCode::Refused));
        }
        if !verdict.allowed && !first.view.observe {
            report(&first, &verdict, Outcome::Refused);
            return Some(wire::answer(&q, ResponseCode::Refused));
        }
        let servfail = || Some(wire::answer(&q, ResponseCode::ServFail));
        let upstream = first.settings.upstream;
        let (mut reply, response) =
            match upstream::exchange(upstream, bytes, &q.query, tcp, first.settings.timeout) {
                Ok(r) => r,
                Err(upstream::Failure::Timeout) => {
                    report(&first, &verdict, Outcome::UpstreamTimeout);
                    return servfail();
                }
                Err(upstream::Failure::Io(e)) => {
                    report(
                        &first,
                        &verdict,
                        Outcome::Failed(format!("upstream {upstream}: {e}")),
                    );
                    return servfail();
                }
            };
        // The workload may have moved to another policy while the upstream answered: the
        // name is judged again by the binding the entries are written under, which stays in
        // force until they are.
        let guard = self
            .binding
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let binding: &Binding = &guard;
        let verdict = binding.judge(&name);
        if binding.view.quarantined {
            report(binding, &verdict, Outcome::Quarantined);
            return Some(wire::answer(&q, ResponseCode::Refused));
        }
        let mut addrs = Vec::new();
        if verdict.allowed {
            // Every address is in the kernel before the answer leaves: the workload's first
            // connect to it already meets its entry.
            for (ip, ttl) in response.addresses(&q.query.name) {
                if let Err(e) = binding.install(ip, &name, ttl, &verdict) {
                    report(
                        binding,
                        &verdict,
                        Outcome::Failed(format!("installing the entry for {ip}: {e:#}")),
                    );
                    return servfail();
                }
                addrs.push(ip);
            }
            report(binding, &verdict, Outcome::Permitted(addrs));
        } else if binding.view.observe {
            // What the name would have been permitted as, for `bridle suggest`.
            addrs = response
                .addresses(&q.query.name)
                .into_iter()
                .map(|(ip, _)| ip)
                .collect();
            report(binding, &verdict, Outcome::Observed(addrs));
        } else {
            report(binding, &verdict, Outcome::Refused);
            return Some(wire::answer(&q, ResponseCode::Refused));
        }
        drop(guard);
        wire::set_id(&mut reply, q.id);
        Some(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_nameserver_wins() {
        let text = "# comment\nsearch example\nnameserver 127.0.0.53\nnameserver 1.1.1.1\n";
        assert_eq!(
            nameserver_of(text),
            Some("127.0.0.53:53".parse().expect("addr"))
        );
        assert_eq!(
            nameserver_of("nameserver fe80::1%eth0\n"),
            Some("[fe80::1]:53".parse().expect("addr"))
        );
        assert_eq!(nameserver_of("options ndots:2\n"), None);
    }
}
