//! From TOML text to a validated [`Policy`], collecting every problem with its position.
//!
//! The TOML layer (`toml`'s spanned document tree, `DeTable`) keeps spans; this module walks
//! its tree by hand so that each problem is reported where it is, and so that one problem never
//! hides the next.

use crate::connect::ConnectObject;
use crate::diagnostic::{PolicyError, Reporter};
use crate::duration::parse_duration;
use crate::exec::ExecPattern;
use crate::policy::{
    Invariants, Mode, Policy, Quarantine, QuarantineAction, RateLimit, Rule, RuleMatcher,
};
use crate::verdict::Effect;
use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

type Span = Option<Range<usize>>;
/// A value with its position.
type Item<'i> = Spanned<DeValue<'i>>;

const POLICY_KEYS: &[&str] = &[
    "name",
    "version",
    "mode",
    "default",
    "permit_ttl",
    "allow_anonymous_exec",
    "rule",
    "quarantine",
];
const RULE_KEYS: &[&str] = &["name", "effect", "exec", "connect", "rate_limit"];

pub(crate) fn parse_policy(source: &str, origin: &str) -> Result<Policy, PolicyError> {
    let mut r = Reporter::new(source, origin);
    let doc = match DeTable::parse(source) {
        Ok(doc) => doc,
        Err(e) => return Err(toml_error(r, &e, origin)),
    };
    let root = doc.get_ref();
    unknown_keys(&mut r, root, POLICY_KEYS, "policy");

    let name = match root.get("name") {
        Some(item) => string(&mut r, item, "name").and_then(|n| valid_name(&mut r, item, n)),
        None => {
            r.error(None, "missing required key `name`");
            None
        }
    };
    let version = root.get("version").and_then(|item| match integer(item) {
        Some(v) if v >= 0 => Some(v as u64),
        Some(_) => {
            r.error(span(item), "`version` must be a non-negative integer");
            None
        }
        None => {
            wrong_type(&mut r, item, "version", "an integer");
            None
        }
    });
    let mode = root
        .get("mode")
        .and_then(|item| {
            let s = string(&mut r, item, "mode")?;
            match s {
                "enforce" => Some(Mode::Enforce),
                "observe" => Some(Mode::Observe),
                _ => {
                    r.error(
                        span(item),
                        format!("bad mode \"{s}\": expected \"enforce\" or \"observe\""),
                    );
                    None
                }
            }
        })
        .unwrap_or(Mode::Enforce);
    let default = root
        .get("default")
        .and_then(|item| effect(&mut r, item, "default"))
        .unwrap_or(Effect::Refuse);
    let permit_ttl = root
        .get("permit_ttl")
        .and_then(|item| duration(&mut r, item, "permit_ttl"))
        .unwrap_or(Policy::DEFAULT_PERMIT_TTL);
    let allow_anonymous_exec = root
        .get("allow_anonymous_exec")
        .and_then(|item| match item.get_ref().as_bool() {
            Some(b) => Some(b),
            None => {
                wrong_type(&mut r, item, "allow_anonymous_exec", "a boolean");
                None
            }
        })
        .unwrap_or(false);
    let rules = match root.get("rule") {
        Some(item) => rules(&mut r, item, RuleKind::Policy),
        None => Vec::new(),
    };
    let quarantine = root
        .get("quarantine")
        .and_then(|item| quarantine(&mut r, item));

    r.finish()?;
    match name {
        Some(name) => Ok(Policy {
            name: name.to_string(),
            version,
            mode,
            default,
            permit_ttl,
            allow_anonymous_exec,
            rules,
            quarantine,
        }),
        // Unreachable in practice: a missing or bad name was reported above.
        None => Err(PolicyError::whole_file(
            origin,
            "missing required key `name`",
        )),
    }
}

pub(crate) fn parse_invariants(source: &str, origin: &str) -> Result<Invariants, PolicyError> {
    let mut r = Reporter::new(source, origin);
    let doc = match DeTable::parse(source) {
        Ok(doc) => doc,
        Err(e) => return Err(toml_error(r, &e, origin)),
    };
    let root = doc.get_ref();
    unknown_keys(&mut r, root, &["rule"], "invariants");
    let rules = match root.get("rule") {
        Some(item) => rules(&mut r, item, RuleKind::Invariant),
        None => Vec::new(),
    };
    r.finish()?;
    Ok(Invariants { rules })
}

/// The document's first TOML error, at its position.
fn toml_error(mut r: Reporter, e: &toml::de::Error, origin: &str) -> PolicyError {
    r.error(e.span(), toml_message(e.message()));
    match r.finish() {
        Err(reported) => reported,
        Ok(()) => PolicyError::whole_file(origin, "invalid TOML"),
    }
}

/// Where `key` is written in `table`, if it is.
fn key_span(table: &DeTable, key: &str) -> Span {
    table.get_key_value(key).map(|(k, _)| k.span())
}

fn span(item: &Item) -> Span {
    Some(item.span())
}

/// An integer value, if it is one that fits an `i64`.
fn integer(item: &Item) -> Option<i64> {
    let i = item.get_ref().as_integer()?;
    i64::from_str_radix(i.as_str(), i.radix()).ok()
}

fn toml_message(message: &str) -> String {
    let first = message.lines().next().unwrap_or("invalid TOML").trim();
    format!("invalid TOML: {first}")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RuleKind {
    Policy,
    Invariant,
}

fn unknown_keys(r: &mut Reporter, table: &DeTable, known: &[&str], what: &str) {
    for (key, _) in table.iter() {
        let span = Some(key.span());
        let key: &str = key.get_ref();
        if !known.contains(&key) {
            r.error(
                span,
                format!(
                    "unknown key `{key}` in {what} (expected one of: {})",
                    known.join(", ")
                ),
            );
        }
    }
}

fn wrong_type(r: &mut Reporter, item: &Item, key: &str, expected: &str) {
    r.error(
        span(item),
        format!(
            "`{key}` must be {expected}, found {}",
            article(item.get_ref().type_str())
        ),
    );
}

fn article(type_name: &str) -> String {
    match type_name.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {type_name}"),
        _ => format!("a {type_name}"),
    }
}

fn string<'a>(r: &mut Reporter, item: &'a Item, key: &str) -> Option<&'a str> {
    let s = item.get_ref().as_str();
    if s.is_none() {
        wrong_type(r, item, key, "a string");
    }
    s
}

fn valid_name<'i>(r: &mut Reporter, item: &Item, name: &'i str) -> Option<&'i str> {
    if name.is_empty() {
        r.error(
            span(item),
            "empty name: a name needs at least one character of [a-z0-9._-]",
        );
        return None;
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        r.error(
            span(item),
            format!("bad name \"{name}\": character {bad:?} is not allowed (use [a-z0-9._-])"),
        );
        return None;
    }
    Some(name)
}

fn effect(r: &mut Reporter, item: &Item, key: &str) -> Option<Effect> {
    match string(r, item, key)? {
        "permit" => Some(Effect::Permit),
        "refuse" => Some(Effect::Refuse),
        other => {
            r.error(
                span(item),
                format!("bad {key} \"{other}\": expected \"permit\" or \"refuse\""),
            );
            None
        }
    }
}

fn duration(r: &mut Reporter, item: &Item, key: &str) -> Option<Duration> {
    let s = string(r, item, key)?;
    match parse_duration(s) {
        Ok(d) => Some(d),
        Err(e) => {
            r.error(span(item), format!("`{key}`: {e}"));
            None
        }
    }
}

fn positive_u32(r: &mut Reporter, item: &Item, key: &str) -> Option<u32> {
    match integer(item) {
        Some(n) if n >= 1 && n <= i64::from(u32::MAX) => Some(n as u32),
        Some(n) => {
            r.error(
                span(item),
                format!("`{key}` must be between 1 and {}, found {n}", u32::MAX),
            );
            None
        }
        None => {
            wrong_type(r, item, key, "an integer");
            None
        }
    }
}

/// The tables of `rule`, whether written `[[rule]]` or `rule = [{...}]`.
fn tables<'a, 'i>(r: &mut Reporter, item: &'a Item<'i>, key: &str) -> Vec<(&'a DeTable<'i>, Span)> {
    let Some(array) = item.get_ref().as_array() else {
        wrong_type(r, item, key, "an array of tables ([[rule]])");
        return Vec::new();
    };
    let mut out = Vec::new();
    for v in array.iter() {
        match v.get_ref().as_table() {
            Some(t) => out.push((t, span(v))),
            None => r.error(
                span(v),
                format!(
                    "each `{key}` must be a table, found {}",
                    article(v.get_ref().type_str())
                ),
            ),
        }
    }
    out
}

/// Rule lists with at least this many rules are read in two halves on two threads: below it
/// the thread costs more than it saves.
const SPLIT_RULES: usize = 512;

fn rules(r: &mut Reporter, item: &Item, kind: RuleKind) -> Vec<Rule> {
    let tables = tables(r, item, "rule");
    let mut seen: HashMap<&str, Span> = HashMap::with_capacity(tables.len());
    for (table, _) in &tables {
        let Some(name_item) = table.get("name") else {
            continue;
        };
        let Some(name) = name_item.get_ref().as_str() else {
            continue;
        };
        if let Some(first) = seen.get(name) {
            let line = r.line_of(first.clone());
            r.error(
                span(name_item),
                format!("duplicate rule name \"{name}\" (first defined on line {line})"),
            );
        } else {
            seen.insert(name, span(name_item));
        }
    }
    let read = |r: &mut Reporter, tables: &[(&DeTable, Span)]| -> Vec<Rule> {
        tables
            .iter()
            .filter_map(|(table, at)| rule(r, table, at.clone(), kind))
            .collect()
    };
    if tables.len() < SPLIT_RULES {
        return read(r, &tables);
    }
    // Each half reports into its own reporter; the diagnostics are merged in file order.
    let (first, second) = tables.split_at(tables.len() / 2);
    let mut other = r.fork();
    let (mut out, rest) = std::thread::scope(|scope| {
        let second = scope.spawn(|| read(&mut other, second));
        let out = read(r, first);
        let rest = second
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (out, rest)
    });
    out.extend(rest);
    r.absorb(other);
    out
}

fn rule(r: &mut Reporter, table: &DeTable, at: Span, kind: RuleKind) -> Option<Rule> {
    unknown_keys(r, table, RULE_KEYS, "rule");
    let name = match table.get("name") {
        Some(item) => string(r, item, "name").and_then(|n| valid_name(r, item, n)),
        None => {
            r.error(at.clone(), "rule without `name`");
            None
        }
    };
    let label = name
        .map(|n| format!("rule \"{n}\""))
        .unwrap_or_else(|| "rule".into());
    let effect = match (table.get("effect"), kind) {
        (Some(item), RuleKind::Policy) => effect(r, item, "effect"),
        (Some(item), RuleKind::Invariant) => match effect(r, item, "effect") {
            Some(Effect::Refuse) => Some(Effect::Refuse),
            Some(_) => {
                r.error(
                    span(item),
                    format!("{label}: invariants can only refuse (effect = \"refuse\")"),
                );
                None
            }
            None => None,
        },
        (None, RuleKind::Invariant) => Some(Effect::Refuse),
        (None, RuleKind::Policy) => {
            r.error(
                at.clone(),
                format!("{label} without `effect` (\"permit\" or \"refuse\")"),
            );
            None
        }
    };
    let matcher = match (table.get("exec"), table.get("connect")) {
        (Some(_), Some(connect)) => {
            r.error(
                key_span(table, "connect").or(span(connect)),
                format!("{label} has both `exec` and `connect`; split it into two rules"),
            );
            None
        }
        (None, None) => {
            r.error(
                at.clone(),
                format!("{label} has neither `exec` nor `connect`"),
            );
            None
        }
        (Some(exec), None) => patterns(r, exec, "exec", ExecPattern::parse).map(RuleMatcher::Exec),
        (None, Some(connect)) => {
            patterns(r, connect, "connect", ConnectObject::parse).map(RuleMatcher::Connect)
        }
    };
    let rate_limit = match table.get("rate_limit") {
        None => None,
        Some(item) => {
            let limit = rate_limit(r, item);
            if effect == Some(Effect::Refuse) {
                r.error(
                    key_span(table, "rate_limit").or(span(item)),
                    format!("{label}: `rate_limit` is only allowed on permit rules"),
                );
            }
            limit
        }
    };
    Some(Rule {
        name: name?.to_string(),
        effect: effect?,
        matcher: matcher?,
        rate_limit,
    })
}

fn patterns<T>(
    r: &mut Reporter,
    item: &Item,
    key: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Option<Vec<T>> {
    let Some(array) = item.get_ref().as_array() else {
        wrong_type(r, item, key, "an array of strings");
        return None;
    };
    if array.is_empty() {
        r.error(
            span(item),
            format!("`{key}` is empty: list at least one pattern"),
        );
        return None;
    }
    let mut out = Vec::with_capacity(array.len());
    let mut ok = true;
    for v in array.iter() {
        match v.get_ref().as_str() {
            Some(s) => match parse(s) {
                Ok(p) => out.push(p),
                Err(e) => {
                    r.error(span(v), e);
                    ok = false;
                }
            },
            None => {
                r.error(
                    span(v),
                    format!(
                        "`{key}` entries must be strings, found {}",
                        article(v.get_ref().type_str())
                    ),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn rate_limit(r: &mut Reporter, item: &Item) -> Option<RateLimit> {
    let Some(table) = item.get_ref().as_table() else {
        wrong_type(
            r,
            item,
            "rate_limit",
            "a table like { max = 100, per = \"1m\" }",
        );
        return None;
    };
    unknown_keys(r, table, &["max", "per"], "rate_limit");
    let max = match table.get("max") {
        Some(i) => positive_u32(r, i, "max"),
        None => {
            r.error(span(item), "`rate_limit` without `max`");
            None
        }
    };
    let per = match table.get("per") {
        Some(i) => duration(r, i, "per"),
        None => {
            r.error(span(item), "`rate_limit` without `per`");
            None
        }
    };
    Some(RateLimit {
        max: max?,
        per: per?,
    })
}

fn quarantine(r: &mut Reporter, item: &Item) -> Option<Quarantine> {
    let Some(table) = item.get_ref().as_table() else {
        wrong_type(r, item, "quarantine", "a table");
        return None;
    };
    unknown_keys(
        r,
        table,
        &["after_refusals", "within", "action"],
        "quarantine",
    );
    let after_refusals = match table.get("after_refusals") {
        Some(i) => positive_u32(r, i, "after_refusals"),
        None => {
            r.error(span(item), "`[quarantine]` without `after_refusals`");
            None
        }
    };
    let within = match table.get("within") {
        Some(i) => duration(r, i, "within"),
        None => {
            r.error(span(item), "`[quarantine]` without `within`");
            None
        }
    };
    let action = match table.get("action") {
        Some(i) => match string(r, i, "action")? {
            "freeze" => Some(QuarantineAction::Freeze),
            "kill" => Some(QuarantineAction::Kill),
            "refuse-all" => Some(QuarantineAction::RefuseAll),
            other => {
                r.error(
                    span(i),
                    format!(
                        "bad action \"{other}\": expected \"freeze\", \"kill\" or \"refuse-all\""
                    ),
                );
                None
            }
        },
        None => {
            r.error(span(item), "`[quarantine]` without `action`");
            None
        }
    };
    Some(Quarantine {
        after_refusals: after_refusals?,
        within: within?,
        action: action?,
    })
}
