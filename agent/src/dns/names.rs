//! Which names a workload may resolve, and on which ports their addresses may be reached.
//!
//! A name is allowed when some permit host rule matches it on at least one port that no
//! matching refuse host rule takes back (refuse overrides permit). Its answered addresses get
//! the matching rules' port ranges: the refusals first, so the kernel's first-match lookup
//! keeps refuse over permit.

use bridle_engine::{Effect, HostEntry, RuleId};

/// One port range an answered address gets, from one host rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// First port.
    pub lo: u16,
    /// Last port, inclusive.
    pub hi: u16,
    /// Whether the rule refuses (else it permits).
    pub refuse: bool,
    /// The rule's index.
    pub rule: u32,
}

/// What the policy says about one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameVerdict {
    /// Whether the name may be resolved.
    pub allowed: bool,
    /// The deciding rule: the first permit rule when allowed, else a refusing rule if one
    /// matched.
    pub rule: Option<u32>,
    /// The port ranges of the name's addresses, refusals first.
    pub grants: Vec<Grant>,
}

/// Lower-cases a name from the wire and drops its trailing dot, the form host patterns match.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Judges a normalised name against the policy's host rules.
pub fn judge(hosts: &[HostEntry], name: &str) -> NameVerdict {
    let matching: Vec<&HostEntry> = hosts.iter().filter(|h| h.pattern.matches(name)).collect();
    let grant = |h: &&HostEntry| {
        let RuleId(rule) = h.rule;
        Grant {
            lo: h.lo,
            hi: h.hi,
            refuse: h.effect != Effect::Permit,
            rule,
        }
    };
    let mut grants: Vec<Grant> = matching.iter().map(grant).filter(|g| g.refuse).collect();
    let refusals = grants.clone();
    let permits: Vec<Grant> = matching.iter().map(grant).filter(|g| !g.refuse).collect();
    let open = permits
        .iter()
        .find(|p| !covered(p.lo, p.hi, &refusals))
        .map(|p| p.rule);
    let rule = open.or_else(|| refusals.first().map(|r| r.rule));
    grants.extend(permits);
    NameVerdict {
        allowed: open.is_some(),
        rule,
        grants,
    }
}

/// Whether every port of `lo..=hi` lies in one of `by`'s ranges.
fn covered(lo: u16, hi: u16, by: &[Grant]) -> bool {
    let mut ranges: Vec<(u16, u16)> = by.iter().map(|g| (g.lo, g.hi)).collect();
    ranges.sort_unstable();
    let mut next = u32::from(lo);
    for (a, b) in ranges {
        if u32::from(a) > next {
            break;
        }
        next = next.max(u32::from(b) + 1);
    }
    next > u32::from(hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridle_engine::HostPattern;

    fn host(pattern: HostPattern, lo: u16, hi: u16, effect: Effect, rule: u32) -> HostEntry {
        HostEntry {
            pattern,
            lo,
            hi,
            effect,
            rule: RuleId(rule),
        }
    }

    #[test]
    fn normalizes_wire_names() {
        assert_eq!(normalize("API.Example.COM."), "api.example.com");
    }

    #[test]
    fn exact_and_subdomain_rules_allow_with_their_ports() {
        let hosts = [
            host(
                HostPattern::Exact("api.example.com".into()),
                443,
                443,
                Effect::Permit,
                0,
            ),
            host(
                HostPattern::Subdomains("github.com".into()),
                22,
                22,
                Effect::Permit,
                1,
            ),
        ];
        let v = judge(&hosts, "api.example.com");
        assert!(v.allowed);
        assert_eq!(v.rule, Some(0));
        assert_eq!(v.grants.len(), 1);
        assert!(judge(&hosts, "x.github.com").allowed);
        assert!(!judge(&hosts, "github.com").allowed);
        let v = judge(&hosts, "evil.example");
        assert!(!v.allowed);
        assert_eq!(v.rule, None);
    }

    #[test]
    fn refusal_overrides_permit_and_comes_first() {
        let hosts = [
            host(
                HostPattern::Subdomains("example.com".into()),
                0,
                65535,
                Effect::Permit,
                0,
            ),
            host(
                HostPattern::Exact("bad.example.com".into()),
                0,
                65535,
                Effect::Refuse,
                1,
            ),
            host(
                HostPattern::Exact("web.example.com".into()),
                80,
                80,
                Effect::Refuse,
                2,
            ),
        ];
        let v = judge(&hosts, "bad.example.com");
        assert!(!v.allowed);
        assert_eq!(v.rule, Some(1));
        let v = judge(&hosts, "web.example.com");
        assert!(v.allowed, "ports other than 80 stay open");
        assert!(v.grants[0].refuse && !v.grants[1].refuse);
    }

    #[test]
    fn coverage_of_split_ranges() {
        let g = |lo, hi| Grant {
            lo,
            hi,
            refuse: true,
            rule: 0,
        };
        assert!(covered(10, 20, &[g(15, 20), g(10, 14)]));
        assert!(!covered(10, 20, &[g(10, 14), g(16, 20)]));
        assert!(covered(0, 65535, &[g(0, 65535)]));
    }
}
