//! `bridle explain`: how the policy (or chain of policies) judges one exec or connect.
//!
//! Judging is stateless here (no rate-limit or quarantine accounting) and the trace covers
//! every rule of every policy and invariant. `--json` prints one object whose schema is
//! documented in `docs/explain-schema.md` (`"schema": 1`).

use anyhow::Context;
use bridle_engine::{Engine, Invariants, Object, Policy, StepOutcome, Target, Verdict};
use clap::{Args, Subcommand};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `bridle explain …`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The policy; repeat for a nested workload, outermost first (all must permit).
    #[arg(long = "policy", required = true, value_name = "FILE")]
    policies: Vec<PathBuf>,
    /// Host-wide invariants (a file of `[[rule]]` refuse rules).
    #[arg(long, value_name = "FILE")]
    invariants: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    what: ExplainObject,
}

/// What to judge.
#[derive(Debug, Subcommand)]
enum ExplainObject {
    /// An execve of PATH (symlinks are resolved when the file exists, as the kernel does).
    Exec {
        /// The executable.
        path: PathBuf,
    },
    /// A connect to TARGET: `1.2.3.4:443`, `[::1]:80`, `host:443`, `unix:/run/x.sock`,
    /// `unix:@name` or `raw`.
    Connect {
        /// The target.
        target: String,
    },
}

/// The JSON document (schema 1).
#[derive(Debug, Serialize)]
struct Explanation<'a> {
    schema: u32,
    action: &'static str,
    /// The object as given on the command line.
    object: String,
    /// The object as judged (the resolved path for exec; the normalised target for connect).
    judged: String,
    /// Whether symlinks were resolved to a different path.
    resolved: bool,
    #[serde(flatten)]
    verdict: &'a Verdict,
}

/// Runs `explain`.
pub fn run(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let mut engine: Option<Engine> = None;
    let mut errors = Vec::new();
    for file in &args.policies {
        match Policy::load(file) {
            Ok(p) => {
                engine = Some(match engine {
                    None => Engine::new(p),
                    Some(e) => e.nested(p),
                })
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let invariants = match &args.invariants {
        Some(file) => match Invariants::load(file) {
            Ok(inv) => inv.rules,
            Err(e) => {
                errors.push(e.to_string());
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    let engine = match engine {
        Some(e) if errors.is_empty() => e.with_invariants(invariants),
        _ => {
            for e in errors {
                eprintln!("{e}");
            }
            return Ok(ExitCode::from(1));
        }
    };

    let (action, given, judged, object) = match &args.what {
        ExplainObject::Exec { path } => {
            let judged = resolve(path);
            let object = Object::Exec(judged.clone());
            (
                "exec",
                path.display().to_string(),
                judged.display().to_string(),
                object,
            )
        }
        ExplainObject::Connect { target } => {
            let t = Target::parse(target)
                .map_err(|e| anyhow::anyhow!(e))
                .with_context(|| format!("cannot parse connect target \"{target}\""))?;
            let judged = t.clone().normalized().to_string();
            ("connect", target.clone(), judged, Object::Connect(t))
        }
    };
    let verdict = engine.explain(&object);
    let explanation = Explanation {
        schema: 1,
        action,
        resolved: action == "exec" && given != judged,
        object: given,
        judged,
        verdict: &verdict,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
    } else {
        print!("{}", render(&explanation));
    }
    Ok(ExitCode::SUCCESS)
}

/// The kernel judges the file it executes, so follow symlinks when the file exists.
fn resolve(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn render(x: &Explanation) -> String {
    let v = x.verdict;
    let mut out = String::new();
    let mut line = |k: &str, val: &str| out.push_str(&format!("{k:<9}{val}\n"));
    line("object:", &format!("{} {}", x.action, x.object));
    if x.resolved {
        line("judged:", &format!("{} (symlinks resolved)", x.judged));
    } else if x.judged != x.object {
        line("judged:", &x.judged);
    }
    line("effect:", v.effect.as_str());
    line("code:", v.code.as_str());
    line("rule:", v.rule.as_deref().unwrap_or("-"));
    line(
        "policy:",
        &format!(
            "{} (version {}, sha256 {})",
            v.policy.name,
            v.policy
                .version
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            v.policy.digest
        ),
    );
    line("reason:", &v.reason);
    line("hint:", &v.hint);
    if let Some(would) = &v.observed {
        line(
            "observed:",
            &format!(
                "would be {} {} by rule {}",
                would.effect,
                would.code,
                would.rule.as_deref().unwrap_or("-")
            ),
        );
    }
    if let Some(action) = v.quarantine {
        line("quarantine:", action.as_str());
    }
    out.push_str("trace:\n");
    if v.trace.is_empty() {
        out.push_str("  (no rules)\n");
    }
    let width = v.trace.iter().map(|s| s.rule.len()).max().unwrap_or(0);
    let pwidth = v.trace.iter().map(|s| s.policy.len()).max().unwrap_or(0);
    for s in &v.trace {
        let outcome = match &s.outcome {
            StepOutcome::Matched { pattern } => format!("matched \"{pattern}\""),
            StepOutcome::NotMatched => "not matched".to_string(),
            StepOutcome::NotApplicable => "not applicable (other action)".to_string(),
        };
        out.push_str(&format!(
            "  {:<pwidth$}  {:<6}  {:<width$}  {outcome}\n",
            s.policy,
            s.effect.as_str(),
            s.rule
        ));
    }
    out
}
