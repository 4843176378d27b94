//! Lookup structures over one rule set, so a verdict costs a few hash lookups instead of a
//! scan of every rule: exact paths and host names hash, globs are found by their static
//! directory, networks by (prefix length, masked address), `*.domain` by each parent suffix.

use crate::connect::{mask4, mask6, ConnectObject, HostPattern, PortRange, Target};
use crate::exec::ExecPattern;
use crate::fasthash::FastMap;
use crate::policy::{Rule, RuleMatcher};
use crate::verdict::Effect;
use std::collections::HashMap;
use std::net::IpAddr;

/// A rule and the index of its pattern that matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hit {
    pub rule: u32,
    pub pattern: u32,
}

/// What a rule set is asked about, already normalised (see [`crate::Object`]).
pub(crate) enum Probe<'a> {
    Exec(&'a str),
    Connect(&'a Target),
}

type Ported = Vec<(PortRange, Hit)>;

#[derive(Default)]
pub(crate) struct RuleIndex {
    /// Precedence of each rule: refuse before permit; then rules without a rate limit (so an
    /// unlimited permit is preferred over spending a budget); then by name. Lower wins.
    pub ranks: Vec<u32>,
    exec_exact: FastMap<String, Vec<Hit>>,
    exec_glob: FastMap<String, Vec<Hit>>,
    v4: Vec<(u8, FastMap<u32, Ported>)>,
    v6: Vec<(u8, FastMap<u128, Ported>)>,
    host_exact: FastMap<String, Ported>,
    host_suffix: FastMap<String, Ported>,
    unix: FastMap<String, Vec<Hit>>,
    raw: Vec<Hit>,
}

/// The precedence key shared by evaluation and compilation.
pub(crate) fn rank_key(rule: &Rule) -> (u8, bool, &str) {
    let class = match rule.effect {
        Effect::Refuse | Effect::Invalidate => 0,
        Effect::Permit => 1,
    };
    (class, rule.rate_limit.is_some(), rule.name.as_str())
}

/// Rule indices in precedence order.
pub(crate) fn precedence(rules: &[Rule]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rules.len()).collect();
    order.sort_by(|&a, &b| rank_key(&rules[a]).cmp(&rank_key(&rules[b])));
    order
}

impl RuleIndex {
    pub(crate) fn new(rules: &[Rule]) -> RuleIndex {
        let mut ix = RuleIndex {
            ranks: vec![0; rules.len()],
            ..RuleIndex::default()
        };
        for (rank, i) in precedence(rules).into_iter().enumerate() {
            ix.ranks[i] = rank as u32;
        }
        let mut v4: HashMap<u8, FastMap<u32, Ported>> = HashMap::new();
        let mut v6: HashMap<u8, FastMap<u128, Ported>> = HashMap::new();
        for (ri, rule) in rules.iter().enumerate() {
            match &rule.matcher {
                RuleMatcher::Exec(patterns) => {
                    for (pi, p) in patterns.iter().enumerate() {
                        let hit = Hit {
                            rule: ri as u32,
                            pattern: pi as u32,
                        };
                        let key = p.static_prefix().to_string_lossy().into_owned();
                        match p {
                            ExecPattern::Exact(_) => {
                                ix.exec_exact.entry(key).or_default().push(hit)
                            }
                            ExecPattern::Glob { .. } => {
                                ix.exec_glob.entry(key).or_default().push(hit)
                            }
                        }
                    }
                }
                RuleMatcher::Connect(objects) => {
                    for (pi, o) in objects.iter().enumerate() {
                        let hit = Hit {
                            rule: ri as u32,
                            pattern: pi as u32,
                        };
                        match o {
                            ConnectObject::V4 { net, ports } => v4
                                .entry(net.prefix_len)
                                .or_default()
                                .entry(u32::from(net.addr))
                                .or_default()
                                .push((*ports, hit)),
                            ConnectObject::V6 { net, ports } => v6
                                .entry(net.prefix_len)
                                .or_default()
                                .entry(u128::from(net.addr))
                                .or_default()
                                .push((*ports, hit)),
                            ConnectObject::Host { host, ports } => match host {
                                HostPattern::Exact(h) => ix
                                    .host_exact
                                    .entry(h.clone())
                                    .or_default()
                                    .push((*ports, hit)),
                                HostPattern::Subdomains(d) => ix
                                    .host_suffix
                                    .entry(d.clone())
                                    .or_default()
                                    .push((*ports, hit)),
                            },
                            ConnectObject::Unix(p) => {
                                ix.unix.entry(p.clone()).or_default().push(hit)
                            }
                            ConnectObject::Raw => ix.raw.push(hit),
                        }
                    }
                }
            }
        }
        ix.v4 = v4.into_iter().collect();
        ix.v4.sort_by_key(|(len, _)| *len);
        ix.v6 = v6.into_iter().collect();
        ix.v6.sort_by_key(|(len, _)| *len);
        ix
    }

    /// Calls `f` for every (rule, pattern) that matches the probe.
    pub(crate) fn for_each_hit(&self, rules: &[Rule], probe: &Probe, f: &mut dyn FnMut(Hit)) {
        match probe {
            Probe::Exec(path) => {
                if let Some(hits) = self.exec_exact.get(*path) {
                    hits.iter().copied().for_each(&mut *f);
                }
                if self.exec_glob.is_empty() {
                    return;
                }
                let as_path = std::path::Path::new(path);
                let mut dir: &str = path;
                while let Some(slash) = dir.rfind('/') {
                    dir = &dir[..slash];
                    let key = if dir.is_empty() { "/" } else { dir };
                    if let Some(hits) = self.exec_glob.get(key) {
                        for hit in hits {
                            if let RuleMatcher::Exec(ps) = &rules[hit.rule as usize].matcher {
                                if ps[hit.pattern as usize].matches(as_path) {
                                    f(*hit);
                                }
                            }
                        }
                    }
                }
            }
            Probe::Connect(target) => match target {
                Target::Addr(sa) => {
                    let port = sa.port();
                    match sa.ip() {
                        IpAddr::V4(ip) => {
                            for (len, map) in &self.v4 {
                                if let Some(v) = map.get(&mask4(u32::from(ip), *len)) {
                                    ported(v, port, f);
                                }
                            }
                        }
                        IpAddr::V6(ip) => {
                            for (len, map) in &self.v6 {
                                if let Some(v) = map.get(&mask6(u128::from(ip), *len)) {
                                    ported(v, port, f);
                                }
                            }
                        }
                    }
                }
                Target::Host { name, port } => {
                    if let Some(v) = self.host_exact.get(name.as_str()) {
                        ported(v, *port, f);
                    }
                    let mut rest: &str = name;
                    while let Some(dot) = rest.find('.') {
                        rest = &rest[dot + 1..];
                        if let Some(v) = self.host_suffix.get(rest) {
                            ported(v, *port, f);
                        }
                    }
                }
                Target::Unix(p) => {
                    if let Some(v) = self.unix.get(p.as_str()) {
                        v.iter().copied().for_each(&mut *f);
                    }
                }
                Target::Raw => self.raw.iter().copied().for_each(&mut *f),
            },
        }
    }
}

fn ported(v: &Ported, port: u16, f: &mut dyn FnMut(Hit)) {
    for (ports, hit) in v {
        if ports.contains(port) {
            f(*hit);
        }
    }
}
