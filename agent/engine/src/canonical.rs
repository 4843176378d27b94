//! The canonical form of a policy and its digest.
//!
//! Two policies that mean the same get the same text: keys are emitted in a fixed order,
//! comments and layout are gone, durations are milliseconds, patterns are in their normalised
//! spelling, and — because evaluation does not depend on order — rules are sorted by name and
//! each rule's patterns are sorted and de-duplicated. Anything that changes a verdict, a permit
//! or an audit record (names, version, mode, default, TTL, limits) is kept.

use crate::policy::{Policy, Rule, RuleMatcher};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Identifies the canonical encoding, so a future change of encoding changes every digest.
const FORMAT: &str = "bridle-policy/1";

pub(crate) fn canonical_policy(p: &Policy) -> String {
    let quarantine = p.quarantine.map(|q| {
        json!({
            "after_refusals": q.after_refusals,
            "within_ms": q.within.as_millis() as u64,
            "action": q.action.as_str(),
        })
    });
    let doc = json!({
        "format": FORMAT,
        "name": p.name,
        "version": p.version,
        "mode": p.mode.as_str(),
        "default": p.default.as_str(),
        "permit_ttl_ms": p.permit_ttl.as_millis() as u64,
        "allow_anonymous_exec": p.allow_anonymous_exec,
        "quarantine": quarantine,
        "rules": rules_value(&p.rules),
    });
    doc.to_string()
}

pub(crate) fn canonical_rules(rules: &[Rule]) -> String {
    json!({ "format": FORMAT, "invariants": rules_value(rules) }).to_string()
}

fn rules_value(rules: &[Rule]) -> Value {
    let mut sorted: Vec<&Rule> = rules.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    Value::Array(sorted.into_iter().map(rule_value).collect())
}

fn rule_value(rule: &Rule) -> Value {
    let (action, mut objects): (&str, Vec<String>) = match &rule.matcher {
        RuleMatcher::Exec(ps) => ("exec", ps.iter().map(|p| p.as_str().to_string()).collect()),
        RuleMatcher::Connect(cs) => ("connect", cs.iter().map(|c| c.to_string()).collect()),
    };
    objects.sort();
    objects.dedup();
    let rate_limit = rule
        .rate_limit
        .map(|l| json!({ "max": l.max, "per_ms": l.per.as_millis() as u64 }));
    json!({
        "name": rule.name,
        "effect": rule.effect.as_str(),
        "action": action,
        "objects": objects,
        "rate_limit": rate_limit,
    })
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}
