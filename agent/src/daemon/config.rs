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
//!
//! [resolver]                   # the DNS resolver of workloads whose policies name hosts
//! upstream = "10.0.0.53:53"    # default: the first nameserver of /etc/resolv.conf
//! timeout = "2s"               # how long the upstream may take before SERVFAIL
//! ttl_min = "5s"               # answered addresses live at least this long in the kernel
//! ttl_max = "1h"               # and at most this long
//! ```

use crate::{dns, kernel::tier::ExecTier};
use anyhow::{anyhow, Context, Result};
use bridle_engine::{duration::parse_duration, Mode};
use globset::{Glob, GlobMatcher};
use serde::Deserialize;
use std::{
    fs,
    net::{IpAddr, SocketAddr},
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
    /// The workloads' DNS resolvers.
    pub resolver: Resolver,
}

/// The `[resolver]` table: how the resolver of each workload whose policy names hosts reaches
/// its upstream and bounds the life of the entries it installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolver {
    /// The upstream server; `None`: the first `nameserver` of /etc/resolv.conf.
    pub upstream: Option<SocketAddr>,
    /// How long the upstream may take before the workload gets SERVFAIL.
    pub timeout: Duration,
    /// Shortest kernel life of an answered address (shorter TTLs are raised to it).
    pub ttl_min: Duration,
    /// Longest kernel life of an answered address.
    pub ttl_max: Duration,
}

impl Default for Resolver {
    fn default() -> Resolver {
        // The defaults of `bridle run`'s --dns-* options.
        Resolver {
            upstream: None,
            timeout: Duration::from_secs(2),
            ttl_min: Duration::from_secs(5),
            ttl_max: Duration::from_secs(3600),
        }
    }
}

impl Resolver {
    /// The settings a resolver runs with now (the system's upstream is read from
    /// /etc/resolv.conf each time, so a changed one applies at the next start or reload).
    pub fn settings(&self) -> dns::Settings {
        dns::Settings {
            upstream: self.upstream.unwrap_or_else(dns::system_upstream),
            timeout: self.timeout,
            ttl_min: self.ttl_min,
            ttl_max: self.ttl_max,
        }
    }
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
    resolver: Option<RawResolver>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResolver {
    upstream: Option<toml::Spanned<String>>,
    timeout: Option<toml::Spanned<String>>,
    ttl_min: Option<toml::Spanned<String>>,
    ttl_max: Option<toml::Spanned<String>>,
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
        let mut resolver = Resolver::default();
        if let Some(r) = &raw.resolver {
            if let Some(u) = &r.upstream {
                resolver.upstream = Some(parse_upstream(u.get_ref()).ok_or_else(|| {
                    at(
                        u.span(),
                        &format!(
                            "upstream must be an IP address with an optional port \
                             (\"10.0.0.53\", \"10.0.0.53:5353\", \"[2001:db8::53]:53\"), not {:?}",
                            u.get_ref()
                        ),
                    )
                })?);
            }
            let duration =
                |field: &Option<toml::Spanned<String>>, name: &str, into: &mut Duration| {
                    if let Some(d) = field {
                        *into = parse_duration(d.get_ref())
                            .map_err(|e| at(d.span(), &format!("{name}: {e}")))?;
                    }
                    Ok::<(), anyhow::Error>(())
                };
            duration(&r.timeout, "timeout", &mut resolver.timeout)?;
            duration(&r.ttl_min, "ttl_min", &mut resolver.ttl_min)?;
            duration(&r.ttl_max, "ttl_max", &mut resolver.ttl_max)?;
            if let Some(t) = r.timeout.as_ref().filter(|_| resolver.timeout.is_zero()) {
                return Err(at(t.span(), "timeout must be longer than zero"));
            }
            if resolver.ttl_max < resolver.ttl_min {
                let span = r
                    .ttl_max
                    .as_ref()
                    .or(r.ttl_min.as_ref())
                    .map(toml::Spanned::span)
                    .unwrap_or(0..0);
                return Err(at(
                    span,
                    &format!(
                        "ttl_max ({:?}) must not be shorter than ttl_min ({:?})",
                        resolver.ttl_max, resolver.ttl_min
                    ),
                ));
            }
        }
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
            resolver,
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

/// `ip`, `ip:port` or `[v6]:port`; port 53 when none is given.
fn parse_upstream(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    let ip: IpAddr = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text)
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip, bridle_common::DNS_PORT))
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
    fn the_shipped_configuration_parses() {
        let c = Config::parse(include_str!("../../systemd/bridle.toml"), "bridle.toml")
            .expect("the shipped bridle.toml");
        assert_eq!(c.resolver, Resolver::default());
    }

    #[test]
    fn resolver_settings_default_and_parse() {
        let c = Config::parse("", "b.toml").expect("valid");
        assert_eq!(c.resolver, Resolver::default());
        assert_eq!(c.resolver.ttl_min, Duration::from_secs(5));
        let c = Config::parse(
            "[resolver]\nupstream = \"127.0.0.77:5353\"\ntimeout = \"300ms\"\nttl_min = \"1s\"\nttl_max = \"10m\"\n",
            "b.toml",
        )
        .expect("valid");
        assert_eq!(
            c.resolver.upstream,
            Some("127.0.0.77:5353".parse().expect("addr"))
        );
        assert_eq!(c.resolver.timeout, Duration::from_millis(300));
        assert_eq!(c.resolver.ttl_max, Duration::from_secs(600));
        assert_eq!(c.resolver.settings().upstream.port(), 5353);
        for (text, port) in [("10.0.0.53", 53), ("[2001:db8::53]", 53), ("[::1]:54", 54)] {
            assert_eq!(parse_upstream(text).map(|a| a.port()), Some(port), "{text}");
        }
    }

    #[test]
    fn resolver_errors_name_file_line_and_column() {
        let err = Config::parse("[resolver]\nupstream = \"dns.example\"\n", "b.toml")
            .expect_err("a name is no address");
        assert!(
            err.to_string()
                .starts_with("b.toml:2:12: error: upstream must be an IP address"),
            "{err}"
        );
        let err =
            Config::parse("[resolver]\nttl_min = \"soon\"\n", "b.toml").expect_err("bad duration");
        assert!(
            err.to_string().starts_with("b.toml:2:11: error: ttl_min:"),
            "{err}"
        );
        let err = Config::parse("[resolver]\nttl_min = \"1h\"\nttl_max = \"1m\"\n", "b.toml")
            .expect_err("max below min");
        assert!(
            err.to_string()
                .starts_with("b.toml:3:11: error: ttl_max (60s) must not be shorter"),
            "{err}"
        );
        let err = Config::parse("[resolver]\nretries = 3\n", "b.toml").expect_err("unknown");
        assert!(
            err.to_string()
                .starts_with("b.toml:2:1: error: unknown field `retries`"),
            "{err}"
        );
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
