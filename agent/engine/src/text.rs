//! The sentences of a verdict: its reason, and a hint naming the change that would alter it.

use crate::policy::{Action, Policy, Rule, RuleMatcher};
use crate::verdict::Effect;

/// What the operator or agent sees the object as: `exec of /usr/bin/git`, `connect to ...`.
pub(crate) fn describe(action: Action, literal: &str) -> String {
    match (action, literal) {
        (Action::Connect, "raw") => "raw socket".to_string(),
        (Action::Exec, _) => format!("exec of {literal}"),
        (Action::Connect, _) => format!("connect to {literal}"),
    }
}

pub(crate) fn permitted(policy: &str, rule: &str, pattern: &str, what: &str) -> String {
    format!("{what} matches \"{pattern}\" in permit rule \"{rule}\" of policy \"{policy}\"")
}

pub(crate) fn refused(
    policy: &str,
    rule: &str,
    pattern: &str,
    what: &str,
    overridden: Option<&str>,
) -> String {
    let mut s =
        format!("{what} matches \"{pattern}\" in refuse rule \"{rule}\" of policy \"{policy}\"");
    if let Some(p) = overridden {
        s.push_str(&format!(" (refuse overrides permit rule \"{p}\")"));
    }
    s
}

pub(crate) fn invariant(rule: &str, pattern: &str, what: &str) -> String {
    format!("{what} matches \"{pattern}\" in host-wide invariant \"{rule}\"")
}

pub(crate) fn no_match(policy: &Policy, what: &str) -> String {
    format!(
        "no rule of policy \"{}\" matches {what}; default = \"{}\"",
        policy.name, policy.default
    )
}

/// The hint for a refusal by `default`: extend a permit rule of the same action.
pub(crate) fn add_to_permit(policy: &Policy, action: Action, literal: &str) -> String {
    match first_rule(policy, action, Effect::Permit) {
        Some(rule) => format!(
            "add \"{literal}\" to the {} list of a permit rule, e.g. rule \"{}\" of policy \"{}\"",
            action.as_str(),
            rule.name,
            policy.name
        ),
        None => format!(
            "add a permit rule with {} = [\"{literal}\"] to policy \"{}\"",
            action.as_str(),
            policy.name
        ),
    }
}

/// The hint for a permit: what would refuse it instead.
pub(crate) fn add_to_refuse(policy: &Policy, action: Action, literal: &str) -> String {
    match first_rule(policy, action, Effect::Refuse) {
        Some(rule) => format!(
            "to refuse it, add \"{literal}\" to the {} list of a refuse rule, e.g. rule \"{}\" of policy \"{}\"",
            action.as_str(),
            rule.name,
            policy.name
        ),
        None => format!(
            "to refuse it, add a refuse rule with {} = [\"{literal}\"] to policy \"{}\"",
            action.as_str(),
            policy.name
        ),
    }
}

pub(crate) fn remove_from_refuse(policy: &str, rule: &str, pattern: &str, literal: &str) -> String {
    if pattern == literal {
        format!(
            "refuse rule \"{rule}\" of policy \"{policy}\" matches; remove the pattern \"{pattern}\" from it (refuse overrides every permit rule)"
        )
    } else {
        format!(
            "refuse rule \"{rule}\" of policy \"{policy}\" matches; narrow or remove the pattern \"{pattern}\" so it no longer covers \"{literal}\" (refuse overrides every permit rule)"
        )
    }
}

pub(crate) fn invariant_hint(rule: &str) -> String {
    format!(
        "invariant \"{rule}\" blocks it; no policy can override an invariant (they are set in the daemon configuration)"
    )
}

fn first_rule(policy: &Policy, action: Action, effect: Effect) -> Option<&Rule> {
    policy.rules.iter().find(|r| {
        r.effect == effect
            && r.rate_limit.is_none()
            && matches!(
                (&r.matcher, action),
                (RuleMatcher::Exec(_), Action::Exec) | (RuleMatcher::Connect(_), Action::Connect)
            )
    })
}
