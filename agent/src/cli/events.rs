//! `bridle events`: the latest decisions from the audit trail, or, with `--follow`, each
//! decision as the daemon makes it.

use super::{ctl::SocketArgs, Global};
use crate::daemon::control;
use anyhow::{Context, Result};
use bridle_trust::audit;
use std::{io::Write, path::PathBuf, process::ExitCode};

/// Arguments of `bridle events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// Keep printing decisions as the daemon makes them (from its control socket).
    #[arg(short, long)]
    follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Only this workload (its cgroup path).
    #[arg(long)]
    workload: Option<String>,
    /// Without --follow: how many of the latest decisions.
    #[arg(short = 'n', long = "lines", default_value_t = 20)]
    lines: usize,
    /// Without --follow: the audit directory (default STATE/audit).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Runs `bridle events`.
pub fn run(global: &Global, args: EventsArgs) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    if args.follow {
        let json = args.json;
        control::follow_events(&args.socket.socket, args.workload, |line| {
            let shown = if json {
                line.to_owned()
            } else {
                serde_json::from_str(line)
                    .map(|v| human(&v))
                    .unwrap_or_else(|_| line.to_owned())
            };
            writeln!(out, "{shown}").and_then(|()| out.flush()).is_ok()
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let dir = args.dir.unwrap_or_else(|| global.audit_dir());
    let filter = audit::ExportFilter {
        workload: args.workload,
        ..audit::ExportFilter::default()
    };
    let mut latest = std::collections::VecDeque::with_capacity(args.lines);
    audit::scan(&dir, &filter, |r| {
        if latest.len() == args.lines {
            latest.pop_front();
        }
        latest.push_back(serde_json::to_value(r).unwrap_or_default());
    })
    .with_context(|| format!("reading the audit trail in {}", dir.display()))?;
    for v in latest {
        if args.json {
            writeln!(out, "{v}")?;
        } else {
            writeln!(out, "{}", human(&v))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One decision on one line: time, workload, process, operation, verdict.
fn human(v: &serde_json::Value) -> String {
    if let Some(lost) = v.get("lost") {
        return format!("-- {lost} decisions dropped: this client did not keep up --");
    }
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let time = v["time"].as_u64().unwrap_or(0);
    let when = bridle_trust::clock::format_ns(time);
    let rule = v["rule"]
        .as_str()
        .map(|r| format!(", rule {r}"))
        .unwrap_or_default();
    // A counted record stands for `count` identical decisions up to `last`.
    let times = v["count"]
        .as_u64()
        .map(|n| {
            let last = bridle_trust::clock::format_ns(v["last"].as_u64().unwrap_or(time));
            format!(" ({n} times, the last at {last})")
        })
        .unwrap_or_default();
    format!(
        "{when} {} pid {} {}: {} {}{times} -> {} ({}{rule})",
        s("workload"),
        v["pid"],
        s("comm"),
        s("action"),
        s("object"),
        s("effect"),
        s("code"),
    )
}
