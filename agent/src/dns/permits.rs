//! The kernel entries the resolver installs for answered addresses.
//!
//! An answered address gets a full-length entry under the workload's slot (an IPv4 one in its
//! IPv4-mapped form, as the address trie keys IPv4 for both socket families). The engine
//! flattens every shorter prefix into each longer one and the kernel takes the longest match
//! alone, so the entry must carry what the policy already said about the address: the table
//! keeps that *base* (the longest match before the resolver wrote anything) and writes
//! base refusals, DNS refusals, base permits, DNS permits, in that order. A DNS permit that
//! expires in the kernel counts as absent and the lookup falls to the default, which is right
//! because every static port rule comes before it.
//!
//! A DNS rule's kernel expiry is the earlier of its answer's TTL and its permit's expiry, so a
//! daemon that stops renewing lets name-derived entries lapse with the policy's own. The table
//! remembers which names each address was answered for: a new policy slot (a reload) judges
//! those names again and gets entries only for what its policy still allows.

use crate::{fanotify::bpfmap::BpfMap, issuer::boot_now_ns};
use anyhow::{Context, Result};
use bridle_common::{NetKey, PortRule, PortRules, EFFECT_PERMIT, NET_KEY_SLOT_BITS, PORT_RULES};
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex},
};

/// The layout of an LPM-trie key (`struct bpf_lpm_trie_key`): prefix length, then data.
#[repr(C)]
#[derive(Clone, Copy)]
struct LpmKey<K> {
    prefix_len: u32,
    data: K,
}

/// One kernel key: an address under the slot, full length, an IPv4 one mapped (so an answer
/// `1.2.3.4` and an answer `::ffff:1.2.3.4` are one entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Addr(Ipv6Addr);

impl Addr {
    fn of(ip: IpAddr) -> Addr {
        Addr(match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        })
    }
}

/// One DNS port rule and the end of the answer it came from.
#[derive(Debug, Clone, Copy)]
struct Granted {
    /// The kernel copy; `decision.expires_ns` is the earlier of `ends_ns` and the permit's
    /// expiry.
    rule: PortRule,
    /// When the answer's TTL ends (`CLOCK_BOOTTIME` ns).
    ends_ns: u64,
}

#[derive(Debug)]
struct Held {
    /// What the policy's own entries say about the address (None: nothing covers it).
    base: Option<PortRules>,
    /// The DNS port rules.
    grants: Vec<Granted>,
    /// The names answered with this address, and when each answer ends.
    names: HashMap<String, u64>,
}

/// The resolver's entries in the kernel, for one workload slot.
pub struct Permits {
    slot: u64,
    net: Arc<BpfMap>,
    held: Mutex<HashMap<Addr, Held>>,
}

impl Permits {
    /// A table writing under `slot` into the address trie `net` (NET_RULES).
    pub fn new(slot: u64, net: Arc<BpfMap>) -> Permits {
        Permits {
            slot,
            net,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// An empty table for another slot of the same workload, on the same maps.
    pub fn for_slot(&self, slot: u64) -> Permits {
        Permits::new(slot, Arc::clone(&self.net))
    }

    /// The slot this table writes under.
    pub fn slot(&self) -> u64 {
        self.slot
    }

    /// How many addresses have DNS entries.
    pub fn addresses(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Addr, Held>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Installs `grants` for `ip`, answered for `name` until
    /// `ends_ns`, merging with what is there. Each grant's `expires_ns` must already be the
    /// earlier of `ends_ns` and its permit's expiry. The kernel has them when this returns.
    /// Returns how many grants did not fit.
    pub fn install(
        &self,
        ip: IpAddr,
        name: &str,
        ends_ns: u64,
        grants: &[PortRule],
    ) -> Result<usize> {
        let mut held = self.lock();
        let now = boot_now_ns();
        let addr = Addr::of(ip);
        let h = match held.get_mut(&addr) {
            Some(h) => h,
            None => {
                let base = self.lookup(addr).context("reading the address's entry")?;
                held.entry(addr).or_insert(Held {
                    base,
                    grants: Vec::new(),
                    names: HashMap::new(),
                })
            }
        };
        h.grants.retain(|g| g.rule.decision.expires_ns > now);
        merge(&mut h.grants, grants, ends_ns);
        let end = h.names.entry(name.to_owned()).or_insert(ends_ns);
        *end = (*end).max(ends_ns);
        let (rules, dropped) = compose(h);
        self.write(addr, &rules)?;
        Ok(dropped)
    }

    /// Writes, under this (new, empty) table's slot, the entries `old` holds for names that
    /// are still answered: `regrant` judges each name again (with the end of its answer) and
    /// returns its port rules under the new policy, none when the name is no longer allowed.
    /// The new slot's own entries must be in the kernel already: they are the new base.
    /// Returns how many addresses were carried over.
    pub fn carry_from(
        &self,
        old: &Permits,
        regrant: impl Fn(&str, u64) -> Vec<PortRule>,
    ) -> Result<usize> {
        let before = old.lock();
        let mut held = self.lock();
        let now = boot_now_ns();
        for (addr, h) in before.iter() {
            let mut grants = Vec::new();
            let mut names = HashMap::new();
            for (name, ends) in h.names.iter().filter(|(_, e)| **e > now) {
                let rules = regrant(name, *ends);
                if rules.is_empty() {
                    continue;
                }
                merge(&mut grants, &rules, *ends);
                names.insert(name.clone(), *ends);
            }
            grants.retain(|g| g.rule.decision.expires_ns > now);
            if grants.is_empty() {
                continue;
            }
            let base = self
                .lookup(*addr)
                .context("reading the address's entry in the new slot")?;
            let h = Held {
                base,
                grants,
                names,
            };
            let (rules, _) = compose(&h);
            self.write(*addr, &rules)?;
            held.insert(*addr, h);
        }
        Ok(held.len())
    }

    /// Removes DNS rules whose TTL has passed (the kernel already ignores expired permits;
    /// this keeps the maps small and lets refusals from names lapse too).
    pub fn sweep(&self) -> Result<()> {
        let mut held = self.lock();
        let now = boot_now_ns();
        let mut gone = Vec::new();
        for (addr, h) in held.iter_mut() {
            h.names.retain(|_, ends| *ends > now);
            let before = h.grants.len();
            h.grants.retain(|g| g.rule.decision.expires_ns > now);
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

    /// Gives the copied policy rules and the DNS rules the renewed permit ids and expiries
    /// (`stamp` maps a rule index to them; a DNS rule never outlives its answer), after the
    /// policy's own entries were renewed, and rewrites the entries.
    pub fn restamp(&self, stamp: impl Fn(u32) -> Option<(u64, u64)>) -> Result<()> {
        let mut held = self.lock();
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
            for g in &mut h.grants {
                if let Some((id, expires)) = stamp(g.rule.decision.rule) {
                    g.rule.decision.permit_id = id;
                    g.rule.decision.expires_ns = expires.min(g.ends_ns);
                }
            }
            let (rules, _) = compose(h);
            self.write(*addr, &rules)?;
        }
        Ok(())
    }

    fn lookup(&self, addr: Addr) -> std::io::Result<Option<PortRules>> {
        self.net.lookup(&self.key(addr))
    }

    fn write(&self, addr: Addr, rules: &PortRules) -> Result<()> {
        let flags = crate::fanotify::bpfmap::BPF_ANY;
        self.net
            .update(&self.key(addr), rules, flags)
            .with_context(|| format!("writing the DNS entry for {}", addr.0))
    }

    fn delete(&self, addr: Addr) -> Result<()> {
        self.net
            .delete(&self.key(addr))
            .with_context(|| format!("removing the DNS entry for {}", addr.0))
    }

    fn key(&self, addr: Addr) -> LpmKey<NetKey> {
        LpmKey {
            prefix_len: NET_KEY_SLOT_BITS + 128,
            data: NetKey {
                slot: self.slot.to_ne_bytes(),
                addr: addr.0.octets(),
            },
        }
    }
}

/// Adds `rules` (from an answer ending at `ends_ns`) to `grants`; a rule already there keeps
/// the later expiry and end.
fn merge(grants: &mut Vec<Granted>, rules: &[PortRule], ends_ns: u64) {
    for r in rules {
        match grants.iter_mut().find(|o| same(&o.rule, r)) {
            Some(o) => {
                o.rule.decision.expires_ns = o.rule.decision.expires_ns.max(r.decision.expires_ns);
                o.ends_ns = o.ends_ns.max(ends_ns);
            }
            None => grants.push(Granted { rule: *r, ends_ns }),
        }
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
    let dns: Vec<PortRule> = h.grants.iter().map(|g| g.rule).collect();
    let ordered = base
        .iter()
        .filter(|r| !permit(r))
        .chain(dns.iter().filter(|r| !permit(r)))
        .chain(base.iter().filter(permit))
        .chain(dns.iter().filter(permit));
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

    fn granted(rules: impl IntoIterator<Item = PortRule>) -> Vec<Granted> {
        rules
            .into_iter()
            .map(|rule| Granted { rule, ends_ns: 0 })
            .collect()
    }

    #[test]
    fn static_rules_come_first_and_refusals_lead() {
        let mut base = PortRules::default();
        base.rules[0] = rule(22, 22, EFFECT_REFUSE, 0);
        base.rules[1] = rule(8000, 8999, EFFECT_PERMIT, 1);
        base.len = 2;
        let h = Held {
            base: Some(base),
            grants: granted([
                rule(443, 443, EFFECT_PERMIT, 2),
                rule(80, 80, EFFECT_REFUSE, 3),
            ]),
            names: HashMap::new(),
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
            grants: granted((0..PORT_RULES as u16 + 2).map(|p| rule(p, p, EFFECT_PERMIT, 0))),
            names: HashMap::new(),
        };
        let (out, over) = compose(&h);
        assert_eq!(out.len as usize, PORT_RULES);
        assert_eq!(over, 2);
    }

    #[test]
    fn a_repeated_answer_extends_its_rule_and_keeps_one_copy() {
        let mut grants = Vec::new();
        let mut first = rule(443, 443, EFFECT_PERMIT, 2);
        first.decision.expires_ns = 10;
        merge(&mut grants, &[first], 10);
        let mut again = first;
        again.decision.expires_ns = 30;
        merge(&mut grants, &[again, rule(80, 80, EFFECT_REFUSE, 3)], 40);
        assert_eq!(grants.len(), 2);
        assert_eq!(grants[0].rule.decision.expires_ns, 30);
        assert_eq!(grants[0].ends_ns, 40);
    }

    #[test]
    fn an_ipv4_answer_and_its_mapped_form_are_one_entry() {
        let v4 = Addr::of("1.2.3.4".parse().expect("ip"));
        assert_eq!(v4, Addr::of("::ffff:1.2.3.4".parse().expect("ip")));
        assert_eq!(
            v4.0.octets(),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4]
        );
        assert_eq!(Addr::of("::1".parse().expect("ip")).0, Ipv6Addr::LOCALHOST);
    }
}
