//! A model of the kernel's lookups over [`Compiled`] entries: what the maps will answer.
//!
//! Tests hold it against [`crate::Engine::judge`]; the loader can use it to check the maps it
//! builds. Exec: every exec entry that matches (exact path or glob under its static prefix),
//! the lowest rule id wins. Addresses: longest-prefix match, then the first port entry that
//! contains the port. Names: the lowest matching rule id. Unix sockets: the one entry of the
//! address, else a refusal for a non-canonical path spelling, else the default.

use crate::compile::{Compiled, NetEntry, RuleId};
use crate::connect::{mask6, Target};
use crate::engine::Object;
use crate::verdict::{Code, Effect};
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

/// The answer of the kernel model: effect, code and deciding rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    /// What happens.
    pub effect: Effect,
    /// Why.
    pub code: Code,
    /// The deciding rule, if any.
    pub rule: Option<RuleId>,
}

impl Compiled {
    /// Decides `object` the way the kernel maps do.
    pub fn lookup(&self, object: &Object) -> Lookup {
        let (hit, name) = match object {
            Object::AnonymousExec(_) => {
                let effect = if self.allow_anonymous_exec {
                    Effect::Permit
                } else {
                    Effect::Refuse
                };
                let code = if self.allow_anonymous_exec {
                    Code::Permitted
                } else {
                    Code::AnonymousExec
                };
                return self.observe(Lookup {
                    effect,
                    code,
                    rule: None,
                });
            }
            Object::Exec(path) => (
                self.exec
                    .iter()
                    .filter(|e| e.pattern.matches(Path::new(path)))
                    .map(|e| e.rule)
                    .min(),
                false,
            ),
            Object::Connect(target) => match target.clone().normalized() {
                Target::Addr(sa) => {
                    let rule = match sa.ip() {
                        // One trie, IPv4 addresses in their mapped form.
                        IpAddr::V4(ip) => lpm(&self.net, ip.to_ipv6_mapped(), sa.port()),
                        IpAddr::V6(ip) => lpm(&self.net, ip, sa.port()),
                    };
                    (rule, false)
                }
                Target::Host { name, port } => (
                    self.hosts
                        .iter()
                        .filter(|h| h.lo <= port && port <= h.hi && h.pattern.matches(&name))
                        .map(|h| h.rule)
                        .min(),
                    true,
                ),
                Target::Unix(p) => {
                    let hit = self.unix.iter().find(|u| u.path == p).map(|u| u.rule);
                    if hit.is_none() && !crate::connect::unix_is_canonical(&p) {
                        return self.observe(Lookup {
                            effect: Effect::Refuse,
                            code: Code::NoMatchingRule,
                            rule: None,
                        });
                    }
                    (hit, false)
                }
                Target::Raw => (self.raw.map(|(_, r)| r), false),
            },
        };
        let lookup = match hit.and_then(|r| self.rules.get(r.0 as usize).map(|c| (r, c))) {
            Some((id, rule)) => Lookup {
                effect: rule.effect,
                code: rule.code,
                rule: Some(id),
            },
            None => Lookup {
                effect: self.default,
                code: if name && self.default == Effect::Refuse {
                    Code::NameNotAllowed
                } else {
                    Code::NoMatchingRule
                },
                rule: None,
            },
        };
        self.observe(lookup)
    }

    fn observe(&self, l: Lookup) -> Lookup {
        if self.observe && l.effect == Effect::Refuse && l.code != Code::Invariant {
            Lookup {
                effect: Effect::Permit,
                code: Code::Observed,
                rule: l.rule,
            }
        } else {
            l
        }
    }
}

fn scan<A>(entry: Option<&NetEntry<A>>, port: u16) -> Option<RuleId> {
    entry?
        .ports
        .iter()
        .find(|p| p.lo <= port && port <= p.hi)
        .map(|p| p.rule)
}

fn lpm(entries: &[NetEntry<Ipv6Addr>], ip: Ipv6Addr, port: u16) -> Option<RuleId> {
    let best = entries
        .iter()
        .filter(|e| mask6(u128::from(ip), e.prefix_len) == u128::from(e.addr))
        .max_by_key(|e| e.prefix_len);
    scan(best, port)
}
