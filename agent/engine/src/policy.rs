//! The policy model: what a parsed, validated policy file says.

use crate::connect::ConnectObject;
use crate::diagnostic::PolicyError;
use crate::exec::ExecPattern;
use crate::verdict::Effect;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

/// Whether a policy blocks or only records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refusals are enforced.
    Enforce,
    /// Everything goes ahead; what would have been refused is recorded (`OBSERVED`).
    Observe,
}

impl Mode {
    /// The name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Observe => "observe",
        }
    }
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `[a-z0-9._-]+`.
    pub name: String,
    /// Recorded in every permit.
    pub version: Option<u64>,
    /// Enforce or observe.
    pub mode: Mode,
    /// The effect when no rule matches: [`Effect::Permit`] or [`Effect::Refuse`].
    pub default: Effect,
    /// How long a kernel entry lives without renewal (default 10 minutes).
    pub permit_ttl: Duration,
    /// Whether memfd and deleted-file executables may run.
    pub allow_anonymous_exec: bool,
    /// The rules, in file order (evaluation does not depend on it).
    pub rules: Vec<Rule>,
    /// The invalidate threshold, if any.
    pub quarantine: Option<Quarantine>,
}

/// One `[[rule]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Unique within its file; `[a-z0-9._-]+`.
    pub name: String,
    /// Permit or refuse.
    pub effect: Effect,
    /// What the rule matches.
    pub matcher: RuleMatcher,
    /// Permit rules only: at most `max` permits per `per`.
    pub rate_limit: Option<RateLimit>,
}

/// A rule's objects: exactly one of `exec` or `connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleMatcher {
    /// `exec = [...]`.
    Exec(Vec<ExecPattern>),
    /// `connect = [...]`.
    Connect(Vec<ConnectObject>),
}

impl RuleMatcher {
    /// The action the rule is about.
    pub fn action(&self) -> Action {
        match self {
            RuleMatcher::Exec(_) => Action::Exec,
            RuleMatcher::Connect(_) => Action::Connect,
        }
    }
}

/// The two kinds of operation the engine judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// An execve.
    Exec,
    /// A connect, a UDP sendmsg, or the creation of a raw socket.
    Connect,
}

impl Action {
    /// The name used in policies and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Exec => "exec",
            Action::Connect => "connect",
        }
    }
}

/// `rate_limit = { max = 100, per = "1m" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct RateLimit {
    /// Permits per window (at least 1).
    pub max: u32,
    /// The window.
    pub per: Duration,
}

/// `[quarantine]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Quarantine {
    /// Refusals that trigger the invalidate verdict.
    pub after_refusals: u32,
    /// The window they are counted in.
    pub within: Duration,
    /// What the daemon does to the workload.
    pub action: QuarantineAction,
}

/// What happens to a quarantined workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuarantineAction {
    /// Freeze the cgroup.
    Freeze,
    /// Kill every process of the cgroup.
    Kill,
    /// Keep it running but refuse every further operation.
    RefuseAll,
}

impl QuarantineAction {
    /// The name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            QuarantineAction::Freeze => "freeze",
            QuarantineAction::Kill => "kill",
            QuarantineAction::RefuseAll => "refuse-all",
        }
    }
}

impl Policy {
    /// The default `permit_ttl`.
    pub const DEFAULT_PERMIT_TTL: Duration = Duration::from_secs(600);

    /// Parses and validates a policy; `origin` names the source in diagnostics.
    pub fn parse(source: &str, origin: &str) -> Result<Policy, PolicyError> {
        crate::parse::parse_policy(source, origin)
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        Policy::parse(&Policy::read(path)?, &path.display().to_string())
    }

    /// Reads a policy file's text, for [`Policy::parse`] with the path as origin.
    pub fn read(path: &Path) -> Result<String, PolicyError> {
        std::fs::read_to_string(path).map_err(|e| {
            PolicyError::whole_file(
                &path.display().to_string(),
                format!("cannot read policy: {e}"),
            )
        })
    }

    /// The canonical text: equal for policies that mean the same, different otherwise.
    pub fn canonical(&self) -> String {
        crate::canonical::canonical_policy(self)
    }

    /// sha256 of [`Policy::canonical`].
    pub fn digest(&self) -> [u8; 32] {
        crate::canonical::policy_digest(self)
    }

    /// [`Policy::digest`] in lower-case hex.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest())
    }
}

/// Host-wide invariants: refuse rules from the daemon config that no policy can override.
///
/// The file form is a list of `[[rule]]` tables with the policy rule syntax; `effect` may be
/// omitted and, if given, must be `"refuse"`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Invariants {
    /// The refuse rules.
    pub rules: Vec<Rule>,
}

impl Invariants {
    /// Parses an invariants file.
    pub fn parse(source: &str, origin: &str) -> Result<Invariants, PolicyError> {
        crate::parse::parse_invariants(source, origin)
    }

    /// Reads and parses an invariants file.
    pub fn load(path: &Path) -> Result<Invariants, PolicyError> {
        let origin = path.display().to_string();
        let source = std::fs::read_to_string(path).map_err(|e| {
            PolicyError::whole_file(&origin, format!("cannot read invariants: {e}"))
        })?;
        Invariants::parse(&source, &origin)
    }

    /// The canonical text of the rule set.
    pub fn canonical(&self) -> String {
        crate::canonical::canonical_rules(&self.rules)
    }

    /// sha256 of [`Invariants::canonical`] in lower-case hex.
    pub fn digest_hex(&self) -> String {
        hex::encode(crate::canonical::rules_digest(&self.rules))
    }
}
