//! The daemon's configuration file (`/etc/bridle/bridle.toml`).
//!
//! ```toml
//! state_dir = "/var/lib/bridle"
//! policy_dir = "/etc/bridle/policies"
//! invariants = "/etc/bridle/invariants.toml"   # optional
//! scan_interval = "500ms"
//! exec_tier = "kill"           # optional: a lower exec tier than the best the kernel offers
//!
//! [[confine]]
//! cgroup = "agents/*"          # a glob over cgroup paths below the cgroup v2 root
//! policy = "coding-agent"      # policy_dir/coding-agent.toml
//! mode = "observe"             # optional: overrides the policy's mode for these workloads
//! ```

use crate::kernel::tier::ExecTier;
use anyhow::{anyhow, Context, Result};
use bridle_engine::{duration::parse_duration, Mode};
use globset::{Glob, GlobMatcher};
use serde::Deserialize;
use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

/// The parsed configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Keys, permits and the audit trail.
    pub state_dir: PathBuf,
    /// Where `[[confine]]` entries find their policies.
    pub policy_dir: PathBuf,
    /// Host-wide refuse rules no policy can override.
    pub invariants: Option<PathBuf>,
    /// How often the cgroup tree is scanned for new workloads.
    pub scan_interval: Duration,
    /// Which cgroups are confined, by which policy.
    pub confine: Vec<Confine>,
    /// The exec tier to run instead of the best the kernel offers (only a lower one); read at
    /// start, as the tier's programs are pinned.
    pub exec_tier: Option<ExecTier>,
}

/// One `[[confine]]` entry.
#[derive(Debug, Clone)]
pub struct Confine {
    /// The glob as written.
    pub cgroup: String,
    /// The compiled glob (paths relative to the v2 root, without a leading slash).
    pub matcher: GlobMatcher,
    /// The policy name.
    pub policy: String,
    /// A mode that overrides the policy's.
    pub mode: Option<Mode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    state_dir: Option<PathBuf>,
    policy_dir: Option<PathBuf>,
    invariants: Option<PathBuf>,
    scan_interval: Option<String>,
    exec_tier: Option<toml::Spanned<String>>,
    #[serde(default)]
    confine: Vec<RawConfine>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfine {
    cgroup: toml::Spanned<String>,
    policy: toml::Spanned<String>,
    mode: Option<toml::Spanned<String>>,
}

impl Config {
    /// Reads and checks `path`; errors read `file:line:column: error: message`.
    pub fn load(path: &Path) -> Result<Config> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("{}: error: cannot read: ", path.display()))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let at = |span: std::ops::Range<usize>, message: &str| {
            let (line, column) = line_column(text, span.start);
            anyhow!("{origin}:{line}:{column}: error: {message}")
        };
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let message = e.message().to_owned();
            match e.span() {
                Some(span) => at(span, &message),
                None => anyhow!("{origin}: error: {message}"),
            }
        })?;
        let scan_interval = match &raw.scan_interval {
            Some(text) => {
                parse_duration(text).map_err(|e| anyhow!("{origin}: error: scan_interval: {e}"))?
            }
            None => Duration::from_millis(500),
        };
        let exec_tier = match &raw.exec_tier {
            None => None,
            Some(t) => Some(match t.get_ref().as_str() {
                "lsm" => ExecTier::Lsm,
                "fanotify" => ExecTier::Fanotify,
                "kill" => ExecTier::Kill,
                other => {
                    return Err(at(
                        t.span(),
                        &format!(
                            "exec_tier must be \"lsm\", \"fanotify\" or \"kill\", not {other:?}"
                        ),
                    ))
                }
            }),
        };
        let mut confine = Vec::new();
        for c in raw.confine {
            let pattern = c.cgroup.get_ref().trim_start_matches('/').to_owned();
            let matcher = Glob::new(&pattern)
                .map_err(|e| at(c.cgroup.span(), &format!("bad cgroup glob: {e}")))?
                .compile_matcher();
            let policy = c.policy.get_ref().clone();
            if policy.is_empty() || policy.contains('/') {
                return Err(at(
                    c.policy.span(),
                    "policy must be a policy name (a file in policy_dir, without .toml)",
                ));
            }
            let mode = match &c.mode {
                None => None,
                Some(m) => Some(match m.get_ref().as_str() {
                    "enforce" => Mode::Enforce,
                    "observe" => Mode::Observe,
                    other => {
                        return Err(at(
                            m.span(),
                            &format!("mode must be \"enforce\" or \"observe\", not {other:?}"),
                        ))
                    }
                }),
            };
            confine.push(Confine {
                cgroup: pattern,
                matcher,
                policy,
                mode,
            });
        }
        Ok(Config {
            state_dir: raw
                .state_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/bridle")),
            policy_dir: raw
                .policy_dir
                .unwrap_or_else(|| PathBuf::from("/etc/bridle/policies")),
            invariants: raw.invariants,
            scan_interval,
            confine,
            exec_tier,
        })
    }

    /// The policy file of a `[[confine]]` entry.
    pub fn policy_path(&self, name: &str) -> PathBuf {
        self.policy_dir.join(format!("{name}.toml"))
    }

    /// The first entry whose glob matches `relative` (a cgroup path below the v2 root).
    pub fn entry_for(&self, relative: &str) -> Option<&Confine> {
        self.confine.iter().find(|c| c.matcher.is_match(relative))
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_config() {
        let c = Config::parse(
            "state_dir = \"/s\"\npolicy_dir = \"/p\"\nscan_interval = \"250ms\"\n\n[[confine]]\ncgroup = \"/agents/*\"\npolicy = \"coding-agent\"\nmode = \"observe\"\n",
            "bridle.toml",
        )
        .expect("valid");
        assert_eq!(c.scan_interval, Duration::from_millis(250));
        assert_eq!(c.exec_tier, None);
        let forced = Config::parse("exec_tier = \"kill\"\n", "b.toml").expect("valid");
        assert_eq!(forced.exec_tier, Some(ExecTier::Kill));
        let err = Config::parse("exec_tier = \"fast\"\n", "b.toml").expect_err("bad tier");
        assert!(
            err.to_string()
                .starts_with("b.toml:1:13: error: exec_tier must be"),
            "{err}"
        );
        assert_eq!(c.policy_path("x"), PathBuf::from("/p/x.toml"));
        let e = c.entry_for("agents/one").expect("matches");
        assert_eq!(e.policy, "coding-agent");
        assert_eq!(e.mode, Some(Mode::Observe));
        assert!(c.entry_for("other/one").is_none());
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let err = Config::parse(
            "[[confine]]\ncgroup = \"a\"\npolicy = \"p\"\nmode = \"loud\"\n",
            "bridle.toml",
        )
        .expect_err("bad mode");
        assert_eq!(
            err.to_string(),
            "bridle.toml:4:8: error: mode must be \"enforce\" or \"observe\", not \"loud\""
        );
        let err = Config::parse(
            "[[confine]]\ncgroup = \"a\"\npolicy = \"p\"\ncolour = 1\n",
            "c.toml",
        )
        .expect_err("unknown key");
        assert!(
            err.to_string()
                .starts_with("c.toml:4:1: error: unknown field `colour`"),
            "{err}"
        );
    }
}
