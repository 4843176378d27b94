//! The verdict vocabulary shared by the engine, the kernel maps, permits and the audit trail.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a verdict does to the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// The operation goes ahead.
    Permit,
    /// The operation fails with EPERM (or the process is killed on the last-resort exec tier).
    Refuse,
    /// The whole workload is quarantined (frozen, killed or cut off).
    Invalidate,
}

impl Effect {
    /// The lower-case name used in policies, permits, audit records and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Permit => "permit",
            Effect::Refuse => "refuse",
            Effect::Invalidate => "invalidate",
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a verdict came out the way it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    /// A permit rule matched and no refuse rule did.
    Permitted,
    /// No rule matched; the policy's `default` decided.
    NoMatchingRule,
    /// A refuse rule of the policy matched.
    PolicyRefused,
    /// A host-wide invariant from the daemon config matched.
    Invariant,
    /// A permit rule matched but its `rate_limit` was exhausted.
    RateLimited,
    /// The workload is quarantined.
    Quarantined,
    /// A DNS name that no permit rule allows.
    NameNotAllowed,
    /// A memfd or deleted-file executable while `allow_anonymous_exec` is false.
    AnonymousExec,
    /// Observe mode: the operation went ahead but would have been refused.
    Observed,
}

impl Code {
    /// Every code, in declaration order (stable: the kernel encodes codes by this index).
    pub const ALL: [Code; 9] = [
        Code::Permitted,
        Code::NoMatchingRule,
        Code::PolicyRefused,
        Code::Invariant,
        Code::RateLimited,
        Code::Quarantined,
        Code::NameNotAllowed,
        Code::AnonymousExec,
        Code::Observed,
    ];

    /// The upper-case name used in messages, permits, audit records and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Permitted => "PERMITTED",
            Code::NoMatchingRule => "NO_MATCHING_RULE",
            Code::PolicyRefused => "POLICY_REFUSED",
            Code::Invariant => "INVARIANT",
            Code::RateLimited => "RATE_LIMITED",
            Code::Quarantined => "QUARANTINED",
            Code::NameNotAllowed => "NAME_NOT_ALLOWED",
            Code::AnonymousExec => "ANONYMOUS_EXEC",
            Code::Observed => "OBSERVED",
        }
    }

    /// The code with the given index in [`Code::ALL`], as the kernel reports it.
    pub fn from_index(index: u8) -> Option<Code> {
        Code::ALL.get(usize::from(index)).copied()
    }

    /// This code's index in [`Code::ALL`].
    pub fn index(self) -> u8 {
        // The position is found, never assumed, so reordering ALL cannot desynchronise it.
        Code::ALL.iter().position(|c| *c == self).unwrap_or(0) as u8
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The policy a verdict came from: name, version and the sha256 of its canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyRef {
    /// The policy's `name` (`"invariants"` for the host-wide invariants).
    pub name: String,
    /// The policy's `version`, if it has one.
    pub version: Option<u64>,
    /// sha256 of the canonical form, lower-case hex.
    pub digest: String,
}

/// How one rule fared against the object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepOutcome {
    /// The rule matched; `pattern` is its first matching pattern, as written canonically.
    Matched {
        /// The pattern that matched.
        pattern: String,
    },
    /// The rule is about the same action but none of its patterns matched.
    NotMatched,
    /// The rule is about the other action (exec vs connect).
    NotApplicable,
}

/// One line of an evaluation trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceStep {
    /// The policy (or `"invariants"`) the rule belongs to.
    pub policy: String,
    /// The rule's name.
    pub rule: String,
    /// The rule's effect.
    pub effect: Effect,
    /// Whether it matched.
    pub outcome: StepOutcome,
}

/// A judgement: what happens to one operation, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Permit, refuse or invalidate.
    pub effect: Effect,
    /// Why.
    pub code: Code,
    /// The deciding rule, if a rule decided (not for `default`).
    pub rule: Option<String>,
    /// The policy that decided.
    pub policy: PolicyRef,
    /// One sentence: what matched and what followed.
    pub reason: String,
    /// One sentence: the concrete change that would alter the outcome.
    pub hint: String,
    /// Rule outcomes. [`crate::Engine::explain`] lists every rule of every policy;
    /// `evaluate` and `judge` list only the rules that matched, to stay fast.
    pub trace: Vec<TraceStep>,
    /// Observe mode: the verdict that would have been enforced.
    pub observed: Option<Box<Verdict>>,
    /// For an invalidate verdict: what the daemon must do to the workload.
    pub quarantine: Option<crate::policy::QuarantineAction>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_index_round_trips() {
        for code in Code::ALL {
            assert_eq!(Code::from_index(code.index()), Some(code));
        }
        assert_eq!(Code::from_index(200), None);
    }
}
