//! The judge: a chain of policies (outermost first), host-wide invariants, and the state that
//! rate limits and quarantine need.
//!
//! Precedence, from strongest: an active quarantine; an invariant; the first enforcing policy
//! of the chain (outermost first) that refuses; the first observing policy that would refuse
//! (the verdict is then `OBSERVED`); otherwise the innermost policy's permit. Invariants are
//! enforced even when a policy observes: observe mode is a policy setting, and no policy can
//! override an invariant.

use crate::clock::{Clock, SystemClock};
use crate::compile::{compile_referenced, Compiled};
use crate::connect::Target;
use crate::index::{Hit, Probe, RuleIndex};
use crate::policy::{Action, Invariants, Mode, Policy, QuarantineAction, Rule, RuleMatcher};
use crate::text;
use crate::verdict::{Code, Effect, PolicyRef, StepOutcome, TraceStep, Verdict};
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What a workload asks to do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Object {
    /// Execute this file (symlinks already resolved).
    Exec(PathBuf),
    /// Connect (or send, or open a raw socket) to this target.
    Connect(Target),
    /// Execute a memfd or deleted file; the text describes it (e.g. `memfd:x (deleted)`).
    AnonymousExec(String),
}

impl Object {
    /// The action the object belongs to.
    pub fn action(&self) -> Action {
        match self {
            Object::Exec(_) | Object::AnonymousExec(_) => Action::Exec,
            Object::Connect(_) => Action::Connect,
        }
    }
}

pub(crate) struct Judge {
    pub policy: Policy,
    pub index: RuleIndex,
    pub reference: PolicyRef,
}

impl Judge {
    fn new(policy: Policy) -> Judge {
        let (index, digest) = beside_digest(&policy, || RuleIndex::new(&policy.rules));
        Judge::assemble(policy, index, digest)
    }

    fn assemble(policy: Policy, index: RuleIndex, digest: String) -> Judge {
        Judge {
            reference: PolicyRef {
                name: policy.name.clone(),
                version: policy.version,
                digest,
            },
            index,
            policy,
        }
    }
}

/// Policies with at least this many rules have their digest computed on a second thread: below
/// it the thread costs more than it saves.
const DIGEST_THREAD_RULES: usize = 512;

/// Runs `work` while the policy's digest (the costliest step of indexing or compiling a large
/// policy, and independent of both) is computed, on another thread when the policy is large.
fn beside_digest<R>(policy: &Policy, work: impl FnOnce() -> R) -> (R, String) {
    if policy.rules.len() < DIGEST_THREAD_RULES {
        return (work(), policy.digest_hex());
    }
    std::thread::scope(|scope| {
        let digest = scope.spawn(|| policy.digest_hex());
        let done = work();
        let digest = digest
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (done, digest)
    })
}

/// One policy's finding before it becomes a verdict.
#[derive(Debug, Clone, Copy)]
struct Finding {
    effect: Effect,
    code: Code,
    hit: Option<Hit>,
    /// A permit rule that matched but lost to a refuse rule.
    overridden: Option<Hit>,
    /// A unix path spelled non-canonically that no rule names: refused for that.
    noncanonical: bool,
}

/// The object in the form rules match against.
struct Normal<'a> {
    action: Action,
    /// The object as the user would write it in a rule (path or target).
    literal: String,
    probe_path: Cow<'a, str>,
    target: Option<Target>,
    anonymous: bool,
}

impl<'a> Normal<'a> {
    fn new(object: &'a Object) -> Normal<'a> {
        match object {
            Object::Exec(path) => {
                let probe_path = normalize_path(path);
                Normal {
                    action: Action::Exec,
                    literal: probe_path.to_string(),
                    probe_path,
                    target: None,
                    anonymous: false,
                }
            }
            Object::AnonymousExec(what) => Normal {
                action: Action::Exec,
                literal: what.clone(),
                probe_path: Cow::Borrowed(""),
                target: None,
                anonymous: true,
            },
            Object::Connect(t) => {
                let t = t.clone().normalized();
                Normal {
                    action: Action::Connect,
                    literal: t.to_string(),
                    probe_path: Cow::Borrowed(""),
                    target: Some(t),
                    anonymous: false,
                }
            }
        }
    }

    fn probe(&self) -> Probe<'_> {
        match &self.target {
            Some(t) => Probe::Connect(t),
            None => Probe::Exec(&self.probe_path),
        }
    }
}

/// Kernel paths are already clean; anything else (`//`, `/./`, a trailing `/`) is cleaned the
/// way `Path` compares, so the hash lookup and the pattern matcher agree.
fn normalize_path(path: &Path) -> Cow<'_, str> {
    let s = path.to_string_lossy();
    let clean = s.starts_with('/')
        && !s.contains("//")
        && !s.contains("/./")
        && !s.ends_with("/.")
        && (s.len() == 1 || !s.ends_with('/'));
    if clean {
        return s;
    }
    let mut out = String::with_capacity(s.len());
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => {
                out.push('/');
                out.push_str(&n.to_string_lossy());
            }
            Component::ParentDir => out.push_str("/.."),
            Component::CurDir | Component::Prefix(_) => {}
        }
    }
    if !s.starts_with('/') {
        // Relative paths can never match an (absolute) exec pattern; keep them recognisable.
        return Cow::Owned(s.into_owned());
    }
    if out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Duration,
    count: u32,
}

/// The policy engine for one workload.
pub struct Engine {
    /// Shared, so a second engine over the same rules (see [`Engine::sharing_rules`]) costs no
    /// second index.
    chain: Vec<Arc<Judge>>,
    invariants: Option<Arc<Judge>>,
    clock: Arc<dyn Clock>,
    windows: HashMap<(usize, usize), Window>,
    refusals: VecDeque<Duration>,
    quarantined: Option<Quarantined>,
}

#[derive(Debug, Clone)]
struct Quarantined {
    policy: usize,
    action: QuarantineAction,
    refusals: u32,
    within: Duration,
}

/// What `decide` found, with the rate-limited rules it would spend a permit of.
struct Decision {
    verdict: Verdict,
    spend: Vec<(usize, usize)>,
}

impl Engine {
    /// An engine judging by one policy, with the system clock and no invariants.
    pub fn new(policy: Policy) -> Engine {
        Engine::judging(vec![Arc::new(Judge::new(policy))])
    }

    /// An engine judging by `chain`, with the system clock and no invariants.
    fn judging(chain: Vec<Arc<Judge>>) -> Engine {
        Engine {
            chain,
            invariants: None,
            clock: Arc::new(SystemClock::new()),
            windows: HashMap::new(),
            refusals: VecDeque::new(),
            quarantined: None,
        }
    }

    /// [`Engine::new`] with `invariants` (as [`Engine::with_invariants`] adds them), and the
    /// policy compiled with them (what [`Engine::compile`] would give), built side by side.
    pub fn with_compiled(policy: Policy, invariants: Vec<Rule>) -> (Engine, Compiled) {
        let mut engine = Engine::judging(Vec::new()).with_invariants(invariants);
        let ((index, mut compiled), digest) = beside_digest(&policy, || {
            // The reference is only carried along: the digest is filled in once known.
            let reference = PolicyRef {
                name: policy.name.clone(),
                version: policy.version,
                digest: String::new(),
            };
            let compiled = compile_referenced(&policy, reference, engine.invariants());
            (RuleIndex::new(&policy.rules), compiled)
        });
        compiled.policy.digest.clone_from(&digest);
        engine
            .chain
            .push(Arc::new(Judge::assemble(policy, index, digest)));
        (engine, compiled)
    }

    /// Adds host-wide invariants. Only refuse rules are meaningful here: rules with another
    /// effect are ignored ([`Invariants::parse`] never produces them).
    pub fn with_invariants(mut self, invariants: Vec<Rule>) -> Engine {
        let rules: Vec<Rule> = invariants
            .into_iter()
            .filter(|r| r.effect == Effect::Refuse)
            .collect();
        if rules.is_empty() {
            self.invariants = None;
            return self;
        }
        let digest = Invariants {
            rules: rules.clone(),
        }
        .digest_hex();
        let policy = Policy {
            name: "invariants".to_string(),
            version: None,
            mode: Mode::Enforce,
            default: Effect::Permit,
            permit_ttl: Policy::DEFAULT_PERMIT_TTL,
            allow_anonymous_exec: true,
            rules,
            quarantine: None,
        };
        // The invariants are named by their own digest, not the digest of this wrapping policy.
        let index = RuleIndex::new(&policy.rules);
        self.invariants = Some(Arc::new(Judge::assemble(policy, index, digest)));
        self
    }

    /// Adds an inner policy (a workload nested in a confined workload): all must permit.
    pub fn nested(mut self, inner: Policy) -> Engine {
        self.chain.push(Arc::new(Judge::new(inner)));
        self
    }

    /// Replaces the clock (tests use [`crate::ManualClock`]).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Engine {
        self.clock = clock;
        self
    }

    /// The innermost policy.
    pub fn policy(&self) -> &Policy {
        // `chain` is never empty: `new` puts one policy in and nothing removes it.
        &self.chain[self.chain.len() - 1].policy
    }

    /// Every policy of the chain, outermost first.
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.chain.iter().map(|j| &j.policy)
    }

    /// The invariants, if any.
    pub fn invariants(&self) -> &[Rule] {
        self.invariants
            .as_ref()
            .map(|j| j.policy.rules.as_slice())
            .unwrap_or(&[])
    }

    /// Each policy of the chain compiled with the invariants, outermost first: attach each at
    /// its own cgroup level so the kernel requires all of them to permit.
    pub fn compile(&self) -> Vec<Compiled> {
        self.chain
            .iter()
            .map(|j| compile_referenced(&j.policy, j.reference.clone(), self.invariants()))
            .collect()
    }

    /// A second engine judging by the same policies and invariants, without rebuilding them:
    /// it shares the clock, and its rate-limit and quarantine accounting starts empty.
    pub fn sharing_rules(&self) -> Engine {
        Engine {
            chain: self.chain.clone(),
            invariants: self.invariants.clone(),
            clock: Arc::clone(&self.clock),
            windows: HashMap::new(),
            refusals: VecDeque::new(),
            quarantined: None,
        }
    }

    /// The quarantine in force, if the workload has been invalidated.
    pub fn quarantined(&self) -> Option<QuarantineAction> {
        self.quarantined.as_ref().map(|q| q.action)
    }

    /// Lifts a quarantine and forgets the refusals that led to it.
    pub fn lift_quarantine(&mut self) {
        self.quarantined = None;
        self.refusals.clear();
    }

    /// Judges by the rules only: no rate-limit or quarantine accounting. The trace lists the
    /// deciding rule only.
    pub fn judge(&self, object: &Object) -> Verdict {
        self.decide(object, false, &|_, _| true).verdict
    }

    /// Like [`Engine::judge`], with a trace of every rule of every policy (and invariant).
    pub fn explain(&self, object: &Object) -> Verdict {
        self.decide(object, true, &|_, _| true).verdict
    }

    /// Judges an operation that is really happening: spends rate-limit budget on permits,
    /// counts refusals towards quarantine, and answers `QUARANTINED` once quarantined.
    ///
    /// The refusal that crosses a quarantine threshold becomes an invalidate verdict; every
    /// later operation is refused with code `QUARANTINED` until [`Engine::lift_quarantine`].
    pub fn evaluate(&mut self, object: &Object) -> Verdict {
        let now = self.clock.now();
        if let Some(q) = &self.quarantined {
            return self.quarantined_verdict(q, object);
        }
        let windows = &self.windows;
        let chain = &self.chain;
        let available = |pi: usize, ri: usize| -> bool {
            let Some(limit) = chain[pi].policy.rules[ri].rate_limit else {
                return true;
            };
            match windows.get(&(pi, ri)) {
                Some(w) if now.saturating_sub(w.start) < limit.per => w.count < limit.max,
                _ => true,
            }
        };
        let Decision { verdict, spend } = self.decide(object, false, &available);
        if verdict.effect == Effect::Permit {
            for (pi, ri) in spend {
                let Some(limit) = self.chain[pi].policy.rules[ri].rate_limit else {
                    continue;
                };
                let w = self.windows.entry((pi, ri)).or_insert(Window {
                    start: now,
                    count: 0,
                });
                if now.saturating_sub(w.start) >= limit.per {
                    *w = Window {
                        start: now,
                        count: 0,
                    };
                }
                w.count += 1;
            }
            return verdict;
        }
        self.count_refusal(now, verdict)
    }

    /// Counts a refusal that was decided elsewhere (the kernel, from this engine's compiled
    /// entries) towards quarantine, as [`Engine::evaluate`] counts its own. `rule` and `what`
    /// only describe it. Returns the invalidate verdict when this refusal crosses a threshold;
    /// `None` otherwise, and while a quarantine is already in force.
    pub fn count_enforced_refusal(&mut self, rule: Option<String>, what: &str) -> Option<Verdict> {
        if self.quarantined.is_some() {
            return None;
        }
        let now = self.clock.now();
        let policy = self.chain.last()?.reference.clone();
        let refusal = Verdict {
            effect: Effect::Refuse,
            code: Code::PolicyRefused,
            rule,
            policy,
            reason: what.to_owned(),
            hint: String::new(),
            trace: Vec::new(),
            observed: None,
            quarantine: None,
        };
        let verdict = self.count_refusal(now, refusal);
        (verdict.effect == Effect::Invalidate).then_some(verdict)
    }

    fn count_refusal(&mut self, now: Duration, verdict: Verdict) -> Verdict {
        let thresholds: Vec<(usize, crate::policy::Quarantine)> = self
            .chain
            .iter()
            .enumerate()
            .filter_map(|(i, j)| j.policy.quarantine.map(|q| (i, q)))
            .collect();
        if thresholds.is_empty() {
            return verdict;
        }
        self.refusals.push_back(now);
        let longest = thresholds.iter().map(|(_, q)| q.within).max();
        if let Some(longest) = longest {
            while self
                .refusals
                .front()
                .is_some_and(|t| now.saturating_sub(*t) >= longest)
            {
                self.refusals.pop_front();
            }
        }
        for (pi, q) in thresholds {
            let n = self
                .refusals
                .iter()
                .filter(|t| now.saturating_sub(**t) < q.within)
                .count();
            if n >= q.after_refusals as usize {
                let state = Quarantined {
                    policy: pi,
                    action: q.action,
                    refusals: q.after_refusals,
                    within: q.within,
                };
                let policy = &self.chain[pi];
                let invalidate = Verdict {
                    effect: Effect::Invalidate,
                    code: Code::Quarantined,
                    rule: verdict.rule.clone(),
                    policy: policy.reference.clone(),
                    reason: format!(
                        "{} refusals within {} reached the quarantine threshold of policy \"{}\"; last: {}",
                        n,
                        crate::duration::format_duration(q.within),
                        policy.policy.name,
                        verdict.reason
                    ),
                    hint: format!(
                        "the workload is quarantined (action \"{}\"); find out why it was refused, fix the policy or the workload, then lift the quarantine",
                        q.action.as_str()
                    ),
                    trace: verdict.trace.clone(),
                    observed: None,
                    quarantine: Some(q.action),
                };
                self.quarantined = Some(state);
                return invalidate;
            }
        }
        verdict
    }

    fn quarantined_verdict(&self, q: &Quarantined, object: &Object) -> Verdict {
        let judge = &self.chain[q.policy];
        let n = Normal::new(object);
        Verdict {
            effect: Effect::Refuse,
            code: Code::Quarantined,
            rule: None,
            policy: judge.reference.clone(),
            reason: format!(
                "{} refused: the workload is quarantined ({} refusals within {} under policy \"{}\")",
                text::describe(n.action, &n.literal),
                q.refusals,
                crate::duration::format_duration(q.within),
                judge.policy.name
            ),
            hint: "an operator must lift the quarantine before the workload can act again"
                .to_string(),
            trace: Vec::new(),
            observed: None,
            quarantine: Some(q.action),
        }
    }

    fn decide(
        &self,
        object: &Object,
        full: bool,
        available: &dyn Fn(usize, usize) -> bool,
    ) -> Decision {
        let n = Normal::new(object);
        let probe = n.probe();
        let mut trace = Vec::new();
        let mut spend = Vec::new();

        let mut invariant_verdict = None;
        if let Some(inv) = &self.invariants {
            if !n.anonymous {
                let f = find(inv, &probe, &n, &|_| true);
                if full {
                    full_trace(inv, &n, &mut trace);
                }
                if let (Effect::Refuse, Some(hit)) = (f.effect, f.hit) {
                    let rule = &inv.policy.rules[hit.rule as usize];
                    let pattern = pattern_text(rule, hit.pattern);
                    let mut v = base(inv, Effect::Refuse, Code::Invariant, Some(rule));
                    v.reason = text::invariant(
                        &rule.name,
                        &pattern,
                        &text::describe(n.action, &n.literal),
                    );
                    v.hint = text::invariant_hint(&rule.name);
                    if !full {
                        v.trace
                            .push(step(inv, rule, StepOutcome::Matched { pattern }));
                    }
                    invariant_verdict = Some(v);
                }
            }
        }
        if invariant_verdict.is_some() && !full {
            return Decision {
                verdict: invariant_verdict.unwrap_or_else(|| unreachable_verdict(&self.chain[0])),
                spend,
            };
        }

        let mut refusal: Option<Verdict> = None;
        let mut observed: Option<Verdict> = None;
        let mut permit: Option<Verdict> = None;
        for (pi, judge) in self.chain.iter().enumerate() {
            let f = if n.anonymous {
                anonymous(judge)
            } else {
                find(judge, &probe, &n, &|ri| available(pi, ri))
            };
            if full {
                full_trace(judge, &n, &mut trace);
            }
            let v = verdict_for(judge, &f, &n, full);
            if f.effect == Effect::Permit {
                if let Some(hit) = f.hit {
                    if judge.policy.rules[hit.rule as usize].rate_limit.is_some() {
                        spend.push((pi, hit.rule as usize));
                    }
                }
                permit = Some(v);
            } else if judge.policy.mode == Mode::Observe {
                if observed.is_none() {
                    observed = Some(v);
                }
            } else if refusal.is_none() {
                refusal = Some(v);
                if !full {
                    break;
                }
            }
        }
        let mut verdict = if let Some(v) = invariant_verdict {
            v
        } else if let Some(v) = refusal {
            v
        } else if let Some(v) = observed {
            observed_verdict(v)
        } else {
            permit.unwrap_or_else(|| unreachable_verdict(&self.chain[0]))
        };
        if full {
            verdict.trace = trace;
        }
        Decision { verdict, spend }
    }
}

/// Never produced: every chain has at least one policy, so a permit or refusal exists.
fn unreachable_verdict(judge: &Judge) -> Verdict {
    base(judge, Effect::Refuse, Code::NoMatchingRule, None)
}

fn base(judge: &Judge, effect: Effect, code: Code, rule: Option<&Rule>) -> Verdict {
    Verdict {
        effect,
        code,
        rule: rule.map(|r| r.name.clone()),
        policy: judge.reference.clone(),
        reason: String::new(),
        hint: String::new(),
        trace: Vec::new(),
        observed: None,
        quarantine: None,
    }
}

fn step(judge: &Judge, rule: &Rule, outcome: StepOutcome) -> TraceStep {
    TraceStep {
        policy: judge.policy.name.clone(),
        rule: rule.name.clone(),
        effect: rule.effect,
        outcome,
    }
}

fn pattern_text(rule: &Rule, pattern: u32) -> String {
    match &rule.matcher {
        RuleMatcher::Exec(ps) => ps
            .get(pattern as usize)
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
        RuleMatcher::Connect(cs) => cs
            .get(pattern as usize)
            .map(|c| c.to_string())
            .unwrap_or_default(),
    }
}

fn anonymous(judge: &Judge) -> Finding {
    let effect = if judge.policy.allow_anonymous_exec {
        Effect::Permit
    } else {
        Effect::Refuse
    };
    Finding {
        effect,
        code: if effect == Effect::Permit {
            Code::Permitted
        } else {
            Code::AnonymousExec
        },
        hit: None,
        overridden: None,
        noncanonical: false,
    }
}

/// Refuse overrides permit; among rules of one kind the lowest rank (see
/// [`crate::index::rank_key`]) decides, and within a rule its first matching pattern.
fn find(judge: &Judge, probe: &Probe, n: &Normal, available: &dyn Fn(usize) -> bool) -> Finding {
    let rules = &judge.policy.rules;
    let ranks = &judge.index.ranks;
    let mut refuse: Option<(u32, u32, Hit)> = None;
    let mut permit: Option<(u32, u32, Hit)> = None;
    let mut limited = false;
    judge.index.for_each_hit(rules, probe, &mut |hit| {
        let key = (ranks[hit.rule as usize], hit.pattern, hit);
        let slot = match rules[hit.rule as usize].effect {
            Effect::Permit => {
                limited |= rules[hit.rule as usize].rate_limit.is_some();
                &mut permit
            }
            _ => &mut refuse,
        };
        if slot.is_none_or(|s| (key.0, key.1) < (s.0, s.1)) {
            *slot = Some(key);
        }
    });
    if let Some((_, _, hit)) = refuse {
        return Finding {
            effect: Effect::Refuse,
            code: Code::PolicyRefused,
            hit: Some(hit),
            overridden: permit.map(|p| p.2),
            noncanonical: false,
        };
    }
    if let Some((_, _, best)) = permit {
        if rules[best.rule as usize].rate_limit.is_none() || available(best.rule as usize) {
            return permitted(best);
        }
        if limited {
            // Unlimited permit rules rank first, so every other matching rule is limited too:
            // take the first (by rank) that still has budget.
            let mut hits: Vec<Hit> = Vec::new();
            judge.index.for_each_hit(rules, probe, &mut |h| {
                if rules[h.rule as usize].effect == Effect::Permit {
                    hits.push(h);
                }
            });
            hits.sort_by_key(|h| (ranks[h.rule as usize], h.pattern));
            if let Some(h) = hits.into_iter().find(|h| available(h.rule as usize)) {
                return permitted(h);
            }
        }
        return Finding {
            effect: Effect::Refuse,
            code: Code::RateLimited,
            hit: Some(best),
            overridden: None,
            noncanonical: false,
        };
    }
    if let Some(Target::Unix(address)) = &n.target {
        if !crate::connect::unix_is_canonical(address) {
            return Finding {
                effect: Effect::Refuse,
                code: Code::NoMatchingRule,
                hit: None,
                overridden: None,
                noncanonical: true,
            };
        }
    }
    let name = matches!(n.target, Some(Target::Host { .. }));
    Finding {
        effect: judge.policy.default,
        code: match (judge.policy.default, name) {
            (Effect::Permit, _) => Code::NoMatchingRule,
            (_, true) => Code::NameNotAllowed,
            (_, false) => Code::NoMatchingRule,
        },
        hit: None,
        overridden: None,
        noncanonical: false,
    }
}

fn permitted(hit: Hit) -> Finding {
    Finding {
        effect: Effect::Permit,
        code: Code::Permitted,
        hit: Some(hit),
        overridden: None,
        noncanonical: false,
    }
}

fn verdict_for(judge: &Judge, f: &Finding, n: &Normal, full: bool) -> Verdict {
    let policy = &judge.policy;
    let rule = f.hit.map(|h| &policy.rules[h.rule as usize]);
    let mut v = base(judge, f.effect, f.code, rule);
    let what = text::describe(n.action, &n.literal);
    let pattern = match (rule, f.hit) {
        (Some(r), Some(h)) => pattern_text(r, h.pattern),
        _ => String::new(),
    };
    match (f.code, rule) {
        (Code::Permitted, Some(r)) => {
            v.reason = text::permitted(&policy.name, &r.name, &pattern, &what);
            v.hint = text::add_to_refuse(policy, n.action, &n.literal);
        }
        (Code::PolicyRefused, Some(r)) => {
            let overridden = f
                .overridden
                .map(|h| policy.rules[h.rule as usize].name.as_str());
            v.reason = text::refused(&policy.name, &r.name, &pattern, &what, overridden);
            v.hint = text::remove_from_refuse(&policy.name, &r.name, &pattern, &n.literal);
        }
        (Code::RateLimited, Some(r)) => {
            let (max, per) = r
                .rate_limit
                .map(|l| (l.max, crate::duration::format_duration(l.per)))
                .unwrap_or((0, String::new()));
            v.reason = format!(
                "{what} matches \"{pattern}\" in permit rule \"{}\", but its rate limit of {max} per {per} is spent",
                r.name
            );
            v.hint = format!(
                "wait for the window to pass, or raise `rate_limit` of rule \"{}\" in policy \"{}\"",
                r.name, policy.name
            );
        }
        (Code::AnonymousExec, _) => {
            v.reason = format!(
                "{what}: an anonymous executable (memfd or deleted file) and policy \"{}\" has allow_anonymous_exec = false",
                policy.name
            );
            v.hint = format!(
                "set allow_anonymous_exec = true in policy \"{}\" to allow anonymous executables",
                policy.name
            );
        }
        (Code::Permitted, None) => {
            v.reason = format!(
                "{what}: an anonymous executable and policy \"{}\" has allow_anonymous_exec = true",
                policy.name
            );
            v.hint = format!(
                "set allow_anonymous_exec = false in policy \"{}\" to refuse anonymous executables",
                policy.name
            );
        }
        (Code::NoMatchingRule, None) if f.noncanonical => {
            v.reason = format!(
                "{what}: not a canonical socket path (relative, or with an empty, \".\" or \"..\" component, or a trailing \"/\") and no rule of policy \"{}\" names this spelling; refused whatever the default, because the kernel judges the address as written and another spelling could reach a socket a rule refuses",
                policy.name
            );
            v.hint = format!(
                "connect to the socket's canonical path, or add \"{}\" itself to a permit rule of policy \"{}\"",
                n.literal, policy.name
            );
        }
        (Code::NameNotAllowed, _) => {
            v.reason = format!(
                "no permit rule of policy \"{}\" allows the name in {what}; default = \"refuse\"",
                policy.name
            );
            v.hint = text::add_to_permit(policy, n.action, &n.literal);
        }
        _ => {
            v.reason = text::no_match(policy, &what);
            v.hint = if f.effect == Effect::Permit {
                text::add_to_refuse(policy, n.action, &n.literal)
            } else {
                text::add_to_permit(policy, n.action, &n.literal)
            };
        }
    }
    if !full {
        if let (Some(r), Some(_)) = (rule, f.hit) {
            v.trace
                .push(step(judge, r, StepOutcome::Matched { pattern }));
        }
    }
    v
}

fn observed_verdict(would: Verdict) -> Verdict {
    Verdict {
        effect: Effect::Permit,
        code: Code::Observed,
        rule: would.rule.clone(),
        policy: would.policy.clone(),
        reason: format!("observe mode, would refuse: {}", would.reason),
        hint: format!(
            "{}; policy \"{}\" is in observe mode, set mode = \"enforce\" to enforce it",
            would.hint, would.policy.name
        ),
        trace: would.trace.clone(),
        observed: Some(Box::new(would)),
        quarantine: None,
    }
}

/// Every rule of a policy against the object, matched directly (not through the index): the
/// reference semantics the index must agree with.
fn full_trace(judge: &Judge, n: &Normal, trace: &mut Vec<TraceStep>) {
    for rule in &judge.policy.rules {
        let outcome = match (&rule.matcher, &n.target) {
            _ if n.anonymous => StepOutcome::NotApplicable,
            (RuleMatcher::Exec(ps), None) => {
                let path = Path::new(n.probe_path.as_ref());
                match ps.iter().find(|p| p.matches(path)) {
                    Some(p) => StepOutcome::Matched {
                        pattern: p.as_str().to_string(),
                    },
                    None => StepOutcome::NotMatched,
                }
            }
            (RuleMatcher::Connect(cs), Some(t)) => match cs.iter().find(|c| c.matches(t)) {
                Some(c) => StepOutcome::Matched {
                    pattern: c.to_string(),
                },
                None => StepOutcome::NotMatched,
            },
            _ => StepOutcome::NotApplicable,
        };
        trace.push(step(judge, rule, outcome));
    }
}
