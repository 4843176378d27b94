//! The canonical form of a policy and its digest.
//!
//! Two policies that mean the same get the same text: keys are emitted in a fixed order,
//! comments and layout are gone, durations are milliseconds, patterns are in their normalised
//! spelling, and — because evaluation does not depend on order — rules are sorted by name and
//! each rule's patterns are sorted and de-duplicated. Anything that changes a verdict, a permit
//! or an audit record (names, version, mode, default, TTL, limits) is kept.
//!
//! The text is compact JSON with every object's keys in byte order. The structs below declare
//! their fields in that order and serialise straight into the text or the hash: a policy of
//! 10,000 rules is digested without building a tree of values first.

use crate::policy::{Policy, Rule, RuleMatcher};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Identifies the canonical encoding, so a future change of encoding changes every digest.
const FORMAT: &str = "bridle-policy/1";

/// A policy; fields in key order.
#[derive(Serialize)]
struct CanonicalPolicy<'a> {
    allow_anonymous_exec: bool,
    default: &'a str,
    format: &'a str,
    mode: &'a str,
    name: &'a str,
    permit_ttl_ms: u64,
    quarantine: Option<CanonicalQuarantine<'a>>,
    rules: Vec<CanonicalRule<'a>>,
    version: Option<u64>,
}

#[derive(Serialize)]
struct CanonicalQuarantine<'a> {
    action: &'a str,
    after_refusals: u32,
    within_ms: u64,
}

/// A set of invariants; fields in key order.
#[derive(Serialize)]
struct CanonicalInvariants<'a> {
    format: &'a str,
    invariants: Vec<CanonicalRule<'a>>,
}

#[derive(Serialize)]
struct CanonicalRule<'a> {
    action: &'a str,
    effect: &'a str,
    name: &'a str,
    objects: Vec<String>,
    rate_limit: Option<CanonicalLimit>,
}

#[derive(Serialize)]
struct CanonicalLimit {
    max: u32,
    per_ms: u64,
}

fn policy_form(p: &Policy) -> CanonicalPolicy<'_> {
    CanonicalPolicy {
        allow_anonymous_exec: p.allow_anonymous_exec,
        default: p.default.as_str(),
        format: FORMAT,
        mode: p.mode.as_str(),
        name: &p.name,
        permit_ttl_ms: p.permit_ttl.as_millis() as u64,
        quarantine: p.quarantine.as_ref().map(|q| CanonicalQuarantine {
            action: q.action.as_str(),
            after_refusals: q.after_refusals,
            within_ms: q.within.as_millis() as u64,
        }),
        rules: rules_form(&p.rules),
        version: p.version,
    }
}

fn rules_form(rules: &[Rule]) -> Vec<CanonicalRule<'_>> {
    let mut sorted: Vec<&Rule> = rules.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    sorted.into_iter().map(rule_form).collect()
}

fn rule_form(rule: &Rule) -> CanonicalRule<'_> {
    let (action, mut objects): (&str, Vec<String>) = match &rule.matcher {
        RuleMatcher::Exec(ps) => ("exec", ps.iter().map(|p| p.as_str().to_string()).collect()),
        RuleMatcher::Connect(cs) => ("connect", cs.iter().map(|c| c.to_string()).collect()),
    };
    objects.sort();
    objects.dedup();
    CanonicalRule {
        action,
        effect: rule.effect.as_str(),
        name: &rule.name,
        objects,
        rate_limit: rule.rate_limit.map(|l| CanonicalLimit {
            max: l.max,
            per_ms: l.per.as_millis() as u64,
        }),
    }
}

pub(crate) fn canonical_policy(p: &Policy) -> String {
    text(&policy_form(p))
}

pub(crate) fn policy_digest(p: &Policy) -> [u8; 32] {
    digest(&policy_form(p))
}

pub(crate) fn canonical_rules(rules: &[Rule]) -> String {
    text(&invariants_form(rules))
}

pub(crate) fn rules_digest(rules: &[Rule]) -> [u8; 32] {
    digest(&invariants_form(rules))
}

fn invariants_form(rules: &[Rule]) -> CanonicalInvariants<'_> {
    CanonicalInvariants {
        format: FORMAT,
        invariants: rules_form(rules),
    }
}

fn text(form: &impl Serialize) -> String {
    // Plain structs of strings and numbers always serialise.
    serde_json::to_string(form).unwrap_or_default()
}

fn digest(form: &impl Serialize) -> [u8; 32] {
    let mut hasher = HashWriter(Sha256::new());
    // Writing into a hasher cannot fail, and the structs always serialise.
    let _ = serde_json::to_writer(&mut hasher, form);
    hasher.0.finalize().into()
}

/// Feeds what is written into a SHA-256.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
