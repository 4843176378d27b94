//! Compilation: a policy (and the host-wide invariants) as the flat entries the kernel maps
//! take.
//!
//! Precedence is encoded in [`RuleId`] order: invariants first, then the policy's refuse rules,
//! then its permit rules (unlimited before rate-limited, then by name). Every list that the
//! kernel scans is sorted by rule id, so "the first entry that matches" is the verdict
//! [`crate::Engine::judge`] gives. Network entries are flattened: each distinct prefix carries
//! the port entries of every shorter prefix that contains it, so one longest-prefix-match
//! lookup followed by a scan of its ports is the whole decision.

use crate::connect::{mask4, mask6, ConnectObject, HostPattern, Net};
use crate::exec::ExecPattern;
use crate::index::precedence;
use crate::policy::{Mode, Policy, RateLimit, Rule, RuleMatcher};
use crate::verdict::{Code, Effect, PolicyRef};
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// An index into [`Compiled::rules`]; lower ids take precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(pub u32);

/// A rule as the kernel side records it in a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRule {
    /// The rule's name.
    pub name: String,
    /// Permit or refuse.
    pub effect: Effect,
    /// `PERMITTED`, `POLICY_REFUSED` or `INVARIANT` (enforced even in observe mode).
    pub code: Code,
    /// A permit rule's limit: the kernel cannot count, so such entries must go through the
    /// engine (or be issued as short-lived permits) rather than be cached as plain permits.
    pub rate_limit: Option<RateLimit>,
}

/// One exec pattern with its rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecEntry {
    /// The pattern (an exact path, or a glob with its static prefix).
    pub pattern: ExecPattern,
    /// The rule's effect.
    pub effect: Effect,
    /// The rule.
    pub rule: RuleId,
}

/// An inclusive port range of a network entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortEntry {
    /// Lowest port (0 only for `*`).
    pub lo: u16,
    /// Highest port.
    pub hi: u16,
    /// The rule's effect.
    pub effect: Effect,
    /// The rule.
    pub rule: RuleId,
}

/// A network prefix and every port entry that applies to addresses in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetEntry<A> {
    /// Network address (host bits clear).
    pub addr: A,
    /// Prefix length.
    pub prefix_len: u8,
    /// Sorted by rule id (refuse entries first); the first that contains the port decides.
    pub ports: Vec<PortEntry>,
}

/// A host-name pattern, for the DNS resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// The name or `*.domain`.
    pub pattern: HostPattern,
    /// Lowest port.
    pub lo: u16,
    /// Highest port.
    pub hi: u16,
    /// The rule's effect.
    pub effect: Effect,
    /// The rule.
    pub rule: RuleId,
}

/// A unix socket path (`/path`) or abstract name (`@name`) and the rule that decides it:
/// [`Compiled::unix`] holds one entry per address, so the kernel's exact lookup is the whole
/// decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixEntry {
    /// The path or `@name`.
    pub path: String,
    /// The rule's effect.
    pub effect: Effect,
    /// The rule.
    pub rule: RuleId,
}

/// A policy compiled for the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// The policy these entries come from.
    pub policy: PolicyRef,
    /// The effect when no entry matches.
    pub default: Effect,
    /// Observe mode: refusals other than invariants are recorded, not enforced.
    pub observe: bool,
    /// Whether memfd / deleted-file executables are permitted.
    pub allow_anonymous_exec: bool,
    /// How long an entry lives without renewal.
    pub permit_ttl: Duration,
    /// Every rule, indexed by [`RuleId`].
    pub rules: Vec<CompiledRule>,
    /// Exec patterns, sorted by rule id.
    pub exec: Vec<ExecEntry>,
    /// Address prefixes, flattened, sorted by (prefix length, address), as the kernel's one
    /// address trie holds them: IPv6 prefixes as they are, IPv4 ones in their IPv4-mapped form
    /// `::ffff:a.b.c.d/(96+len)`, and `::ffff:0:0/96` always present so an IPv4 address never
    /// falls through to a shorter native IPv6 prefix (`::/0`).
    pub net: Vec<NetEntry<Ipv6Addr>>,
    /// Host-name patterns, sorted by rule id.
    pub hosts: Vec<HostEntry>,
    /// Unix sockets, one entry per address (the deciding rule's: the lowest id, so a refusal
    /// overrides a permit), sorted by rule id.
    pub unix: Vec<UnixEntry>,
    /// The deciding entry for raw and packet sockets, if any rule names `raw`.
    pub raw: Option<(Effect, RuleId)>,
}

/// Compiles one policy without invariants.
pub fn compile(policy: &Policy) -> Compiled {
    compile_with_invariants(policy, &[])
}

/// Compiles one policy with the host-wide invariants, which come first as refuse entries with
/// code `INVARIANT`. (For a nested workload, compile each policy of the chain and attach each at
/// its own cgroup level: the kernel then requires all of them to permit.)
pub fn compile_with_invariants(policy: &Policy, invariants: &[Rule]) -> Compiled {
    let reference = PolicyRef {
        name: policy.name.clone(),
        version: policy.version,
        digest: policy.digest_hex(),
    };
    compile_referenced(policy, reference, invariants)
}

/// [`compile_with_invariants`] for a caller that already holds the policy's reference (its
/// digest is the costly part of a large policy's compile).
pub(crate) fn compile_referenced(
    policy: &Policy,
    reference: PolicyRef,
    invariants: &[Rule],
) -> Compiled {
    let mut rules: Vec<(&Rule, CompiledRule)> = Vec::new();
    let inv: Vec<&Rule> = invariants
        .iter()
        .filter(|r| r.effect == Effect::Refuse)
        .collect();
    let mut inv_sorted = inv.clone();
    inv_sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for r in inv_sorted {
        rules.push((
            r,
            CompiledRule {
                name: r.name.clone(),
                effect: Effect::Refuse,
                code: Code::Invariant,
                rate_limit: None,
            },
        ));
    }
    for i in precedence(&policy.rules) {
        let r = &policy.rules[i];
        rules.push((
            r,
            CompiledRule {
                name: r.name.clone(),
                effect: r.effect,
                code: if r.effect == Effect::Permit {
                    Code::Permitted
                } else {
                    Code::PolicyRefused
                },
                rate_limit: r.rate_limit,
            },
        ));
    }

    let mut exec = Vec::new();
    let mut v4: Vec<(Net<Ipv4Addr>, PortEntry)> = Vec::new();
    let mut v6: Vec<(Net<Ipv6Addr>, PortEntry)> = Vec::new();
    let mut hosts = Vec::new();
    let mut unix = Vec::new();
    let mut raw: Option<(Effect, RuleId)> = None;
    for (id, (rule, compiled)) in rules.iter().enumerate() {
        let id = RuleId(id as u32);
        let effect = compiled.effect;
        match &rule.matcher {
            RuleMatcher::Exec(ps) => exec.extend(ps.iter().map(|p| ExecEntry {
                pattern: p.clone(),
                effect,
                rule: id,
            })),
            RuleMatcher::Connect(cs) => {
                for c in cs {
                    match c {
                        ConnectObject::V4 { net, ports } => v4.push((
                            *net,
                            PortEntry {
                                lo: ports.lo,
                                hi: ports.hi,
                                effect,
                                rule: id,
                            },
                        )),
                        ConnectObject::V6 { net, ports } => v6.push((
                            *net,
                            PortEntry {
                                lo: ports.lo,
                                hi: ports.hi,
                                effect,
                                rule: id,
                            },
                        )),
                        ConnectObject::Host { host, ports } => hosts.push(HostEntry {
                            pattern: host.clone(),
                            lo: ports.lo,
                            hi: ports.hi,
                            effect,
                            rule: id,
                        }),
                        ConnectObject::Unix(p) => unix.push(UnixEntry {
                            path: p.clone(),
                            effect,
                            rule: id,
                        }),
                        // Rules are visited in precedence order: the first `raw` decides.
                        ConnectObject::Raw => {
                            if raw.is_none() {
                                raw = Some((effect, id));
                            }
                        }
                    }
                }
            }
        }
    }

    // Rules were visited in precedence order: the first entry of an address decides it.
    let mut seen = std::collections::HashSet::new();
    unix.retain(|u: &UnixEntry| seen.insert(u.path.clone()));

    let mut net = flatten(&v6, |a: Ipv6Addr, len| {
        Ipv6Addr::from(mask6(u128::from(a), len))
    });
    let mut mapped_root = false;
    for e in flatten(&v4, |a: Ipv4Addr, len| {
        Ipv4Addr::from(mask4(u32::from(a), len))
    }) {
        mapped_root |= e.prefix_len == 0;
        net.push(NetEntry {
            addr: e.addr.to_ipv6_mapped(),
            prefix_len: 96 + e.prefix_len,
            ports: e.ports,
        });
    }
    if !mapped_root {
        net.push(NetEntry {
            addr: Ipv4Addr::UNSPECIFIED.to_ipv6_mapped(),
            prefix_len: 96,
            ports: Vec::new(),
        });
    }
    net.sort_by_key(|a| (a.prefix_len, a.addr));

    Compiled {
        policy: reference,
        default: policy.default,
        observe: policy.mode == Mode::Observe,
        allow_anonymous_exec: policy.allow_anonymous_exec,
        permit_ttl: policy.permit_ttl,
        rules: rules.into_iter().map(|(_, c)| c).collect(),
        exec,
        net,
        hosts,
        unix,
        raw,
    }
}

/// One entry per distinct prefix, carrying its own ports and those of every containing prefix.
fn flatten<A: Copy + Ord + std::hash::Hash>(
    entries: &[(Net<A>, PortEntry)],
    mask: impl Fn(A, u8) -> A,
) -> Vec<NetEntry<A>> {
    let mut by_len: HashMap<u8, HashMap<A, Vec<PortEntry>>> = HashMap::new();
    for (net, port) in entries {
        by_len
            .entry(net.prefix_len)
            .or_default()
            .entry(net.addr)
            .or_default()
            .push(*port);
    }
    let mut lens: Vec<u8> = by_len.keys().copied().collect();
    lens.sort_unstable();
    let mut out = Vec::new();
    for &len in &lens {
        let Some(nets) = by_len.get(&len) else {
            continue;
        };
        for &addr in nets.keys() {
            let mut ports: Vec<PortEntry> = Vec::new();
            for &shorter in lens.iter().take_while(|l| **l <= len) {
                if let Some(p) = by_len
                    .get(&shorter)
                    .and_then(|m| m.get(&mask(addr, shorter)))
                {
                    ports.extend_from_slice(p);
                }
            }
            ports.sort_by_key(|p| (p.rule, p.lo, p.hi));
            ports.dedup();
            out.push(NetEntry {
                addr,
                prefix_len: len,
                ports,
            });
        }
    }
    out.sort_by_key(|a| (a.prefix_len, a.addr));
    out
}
