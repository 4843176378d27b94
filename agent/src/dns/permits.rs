//! The kernel entries the resolver installs for answered addresses.
//!
//! An answered address gets a full-length entry (/32, /128; an IPv4 answer also its
//! IPv4-mapped /128, which IPv6 sockets are judged by) under the workload's slot. The engine
//! flattens every shorter prefix into each longer one and the kernel takes the longest match
//! alone, so the entry must carry what the policy already said about the address: the table
//! keeps that *base* (the longest match before the resolver wrote anything) and writes
//! base refusals, DNS refusals, base permits, DNS permits, in that order. A DNS permit that
//! expires in the kernel counts as absent and the lookup falls to the default, which is right
//! because every static port rule comes before it.

use crate::{fanotify::bpfmap::BpfMap, issuer::boot_now_ns};
use anyhow::{Context, Result};
use bridle_common::{
    Net4Key, Net6Key, PortRule, PortRules, EFFECT_PERMIT, NET_KEY_SLOT_BITS, PORT_RULES,
};
use std::{collections::HashMap, net::IpAddr, sync::Mutex};

/// The layout of an LPM-trie key (`struct bpf_lpm_trie_key`): prefix length, then data.
#[repr(C)]
#[derive(Clone, Copy)]
struct LpmKey<K> {
    prefix_len: u32,
    data: K,
}

/// One kernel key: an IPv4 or IPv6 address under the slot, full length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Addr {
    V4([u8; 4]),
    V6([u8; 16]),
}

#[derive(Debug)]
struct Held {
    /// What the policy's own entries say about the address (None: nothing covers it).
    base: Option<PortRules>,
    /// The DNS port rules; `decision.expires_ns` is the end of each one's TTL.
    grants: Vec<PortRule>,
}

/// The resolver's entries in the kernel, for one workload slot.
pub struct Permits {
    slot: u64,
    net4: BpfMap,
    net6: BpfMap,
    held: Mutex<HashMap<Addr, Held>>,
}

impl Permits {
    /// A table writing under `slot` into the NET4_RULES and NET6_RULES maps.
    pub fn new(slot: u64, net4: BpfMap, net6: BpfMap) -> Permits {
        Permits {
            slot,
            net4,
            net6,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Installs `grants` for `ip` (and its IPv4-mapped form), merging with what is there. The
    /// kernel has them when this returns. Returns how many grants did not fit.
    pub fn install(&self, ip: IpAddr, grants: &[PortRule]) -> Result<usize> {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = boot_now_ns();
        let mut dropped = 0;
        for addr in keys(ip) {
            let h = match held.get_mut(&addr) {
                Some(h) => h,
                None => {
                    let base = self.lookup(addr).context("reading the address's entry")?;
                    held.entry(addr).or_insert(Held {
                        base,
                        grants: Vec::new(),
                    })
                }
            };
            h.grants.retain(|g| g.decision.expires_ns > now);
            for g in grants {
                match h.grants.iter_mut().find(|o| same(o, g)) {
                    Some(o) => {
                        o.decision.expires_ns = o.decision.expires_ns.max(g.decision.expires_ns)
                    }
                    None => h.grants.push(*g),
                }
            }
            let (rules, over) = compose(h);
            dropped = dropped.max(over);
            self.write(addr, &rules)?;
        }
        Ok(dropped)
    }

    /// Removes DNS rules whose TTL has passed (the kernel already ignores expired permits;
    /// this keeps the maps small and lets refusals from names lapse too).
    pub fn sweep(&self) -> Result<()> {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = boot_now_ns();
        let mut gone = Vec::new();
        for (addr, h) in held.iter_mut() {
            let before = h.grants.len();
            h.grants.retain(|g| g.decision.expires_ns > now);
            if h.grants.len() == before {
                continue;
            }
            if h.grants.is_empty() {
                match &h.base {
                    Some(base) => self.write(*addr, base)?,
                    None => self.delete(*addr)?,
                }
                gone.push(*addr);
            } else {
                let (rules, _) = compose(h);
                self.write(*addr, &rules)?;
            }
        }
        for addr in gone {
            held.remove(&addr);
        }
        Ok(())
    }

    /// Gives the copied policy rules the renewed permit ids and expiries (`stamp` maps a rule
    /// index to them), after the policy's own entries were renewed, and rewrites the entries.
    pub fn restamp(&self, stamp: impl Fn(u32) -> Option<(u64, u64)>) -> Result<()> {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (addr, h) in held.iter_mut() {
            if let Some(base) = &mut h.base {
                let len = base.len as usize;
                for r in &mut base.rules[..len] {
                    if let Some((id, expires)) = stamp(r.decision.rule) {
                        r.decision.permit_id = id;
                        r.decision.expires_ns = expires;
                    }
                }
            }
            let (rules, _) = compose(h);
            self.write(*addr, &rules)?;
        }
        Ok(())
    }

    fn lookup(&self, addr: Addr) -> std::io::Result<Option<PortRules>> {
        match addr {
            Addr::V4(a) => self.net4.lookup(&self.key4(a)),
            Addr::V6(a) => self.net6.lookup(&self.key6(a)),
        }
    }

    fn write(&self, addr: Addr, rules: &PortRules) -> Result<()> {
        let flags = crate::fanotify::bpfmap::BPF_ANY;
        match addr {
            Addr::V4(a) => self.net4.update(&self.key4(a), rules, flags),
            Addr::V6(a) => self.net6.update(&self.key6(a), rules, flags),
        }
        .with_context(|| format!("writing the DNS entry for {addr:?}"))
    }

    fn delete(&self, addr: Addr) -> Result<()> {
        match addr {
            Addr::V4(a) => self.net4.delete(&self.key4(a)),
            Addr::V6(a) => self.net6.delete(&self.key6(a)),
        }
        .with_context(|| format!("removing the DNS entry for {addr:?}"))
    }

    fn key4(&self, addr: [u8; 4]) -> LpmKey<Net4Key> {
        LpmKey {
            prefix_len: NET_KEY_SLOT_BITS + 32,
            data: Net4Key {
                slot: self.slot.to_ne_bytes(),
                addr,
            },
        }
    }

    fn key6(&self, addr: [u8; 16]) -> LpmKey<Net6Key> {
        LpmKey {
            prefix_len: NET_KEY_SLOT_BITS + 128,
            data: Net6Key {
                slot: self.slot.to_ne_bytes(),
                addr,
            },
        }
    }
}

fn keys(ip: IpAddr) -> Vec<Addr> {
    match ip {
        IpAddr::V4(v4) => vec![
            Addr::V4(v4.octets()),
            Addr::V6(v4.to_ipv6_mapped().octets()),
        ],
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            // A mapped answer is an IPv4 address in disguise: judge it as one.
            Some(v4) => vec![Addr::V4(v4.octets()), Addr::V6(v6.octets())],
            None => vec![Addr::V6(v6.octets())],
        },
    }
}

fn same(a: &PortRule, b: &PortRule) -> bool {
    a.lo == b.lo
        && a.hi == b.hi
        && a.decision.effect == b.decision.effect
        && a.decision.rule == b.decision.rule
}

/// Base refusals, DNS refusals, base permits, DNS permits; and how many DNS rules did not fit.
fn compose(h: &Held) -> (PortRules, usize) {
    let base: &[PortRule] = match &h.base {
        Some(b) => &b.rules[..(b.len as usize).min(PORT_RULES)],
        None => &[],
    };
    let permit = |r: &&PortRule| r.decision.effect == EFFECT_PERMIT;
    let ordered = base
        .iter()
        .filter(|r| !permit(r))
        .chain(h.grants.iter().filter(|r| !permit(r)))
        .chain(base.iter().filter(permit))
        .chain(h.grants.iter().filter(permit));
    let mut out = PortRules::default();
    let mut over = 0;
    for r in ordered {
        if (out.len as usize) < PORT_RULES {
            out.rules[out.len as usize] = *r;
            out.len += 1;
        } else {
            over += 1;
        }
    }
    (out, over)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridle_common::{Decision, EFFECT_REFUSE};

    fn rule(lo: u16, hi: u16, effect: u8, rule: u32) -> PortRule {
        PortRule {
            lo,
            hi,
            _pad: 0,
            decision: Decision {
                effect,
                rule,
                ..Decision::default()
            },
        }
    }

    #[test]
    fn static_rules_come_first_and_refusals_lead() {
        let mut base = PortRules::default();
        base.rules[0] = rule(22, 22, EFFECT_REFUSE, 0);
        base.rules[1] = rule(8000, 8999, EFFECT_PERMIT, 1);
        base.len = 2;
        let h = Held {
            base: Some(base),
            grants: vec![
                rule(443, 443, EFFECT_PERMIT, 2),
                rule(80, 80, EFFECT_REFUSE, 3),
            ],
        };
        let (out, over) = compose(&h);
        assert_eq!(over, 0);
        let order: Vec<u32> = out.rules[..out.len as usize]
            .iter()
            .map(|r| r.decision.rule)
            .collect();
        assert_eq!(order, vec![0, 3, 1, 2]);
    }

    #[test]
    fn overflow_is_counted() {
        let h = Held {
            base: None,
            grants: (0..PORT_RULES as u16 + 2)
                .map(|p| rule(p, p, EFFECT_PERMIT, 0))
                .collect(),
        };
        let (out, over) = compose(&h);
        assert_eq!(out.len as usize, PORT_RULES);
        assert_eq!(over, 2);
    }

    #[test]
    fn ipv4_answers_cover_the_mapped_form() {
        let k = keys("1.2.3.4".parse().expect("ip"));
        assert_eq!(k.len(), 2);
        let k = keys("::ffff:1.2.3.4".parse().expect("ip"));
        assert_eq!(k[0], Addr::V4([1, 2, 3, 4]));
        assert_eq!(keys("::1".parse().expect("ip")).len(), 1);
    }
}
