//! `bridle report` and `bridle suggest`: observe mode's findings, from the audit trail.

use super::{parse_time_arg, Global};
use crate::rollout::{self, Report, Suggestion};
use anyhow::{bail, Context, Result};
use bridle_trust::audit::{self, ExportFilter};
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
};

/// Arguments of `bridle report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Records at or after this time (RFC 3339 or Unix seconds).
    #[arg(long, value_parser = parse_time_arg)]
    since: Option<u64>,
    /// Only this workload (its cgroup path, as the report shows it).
    #[arg(long)]
    workload: Option<String>,
    /// One JSON object per line instead of the table.
    #[arg(long)]
    json: bool,
    /// The audit directory (default STATE/audit).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Arguments of `bridle suggest`.
#[derive(Debug, clap::Args)]
pub struct SuggestArgs {
    /// The workload (its cgroup path, as `bridle report` shows it).
    #[arg(long)]
    workload: String,
    /// Records at or after this time (RFC 3339 or Unix seconds).
    #[arg(long, value_parser = parse_time_arg)]
    since: Option<u64>,
    /// The suggested policy's name.
    #[arg(long, default_value = "suggested")]
    name: String,
    /// Write the policy here instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// The audit directory (default STATE/audit).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Runs `bridle report`.
pub fn report(global: &Global, args: ReportArgs) -> Result<ExitCode> {
    let dir = args.dir.unwrap_or_else(|| global.audit_dir());
    let filter = ExportFilter {
        since: args.since,
        workload: args.workload,
        ..ExportFilter::default()
    };
    let mut report = Report::default();
    audit::scan(&dir, &filter, |r| report.add(r))
        .with_context(|| format!("reading the audit trail in {}", dir.display()))?;
    let lines = report.lines();
    let mut out = std::io::stdout().lock();
    if args.json {
        for line in &lines {
            writeln!(out, "{}", serde_json::to_string(line)?)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if lines.is_empty() {
        writeln!(
            out,
            "no refusals and no would-be refusals in {}",
            dir.display()
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut current: Option<(&str, Option<&str>)> = None;
    for line in &lines {
        let here = (line.workload.as_str(), line.rule.as_deref());
        if current.map(|c| c.0) != Some(here.0) {
            writeln!(out, "workload {}", line.workload)?;
        }
        if current != Some(here) {
            match here.1 {
                Some(rule) => writeln!(out, "  rule {rule}")?,
                None => writeln!(out, "  no rule (the policy's default)")?,
            }
        }
        current = Some(here);
        let outcome = match line.outcome {
            rollout::Outcome::WouldRefuse => "would refuse",
            rollout::Outcome::Refused => "refused",
        };
        writeln!(
            out,
            "    {:>6}× {outcome:<12} {} {}",
            line.count, line.action, line.object
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `bridle suggest`.
pub fn suggest(global: &Global, args: SuggestArgs) -> Result<ExitCode> {
    let dir = args.dir.unwrap_or_else(|| global.audit_dir());
    let filter = ExportFilter {
        since: args.since,
        workload: Some(args.workload.clone()),
        ..ExportFilter::default()
    };
    let mut suggestion = Suggestion::default();
    audit::scan(&dir, &filter, |r| suggestion.add(r))
        .with_context(|| format!("reading the audit trail in {}", dir.display()))?;
    let header = format!(
        "Suggested by `bridle suggest` from {} refused or would-be refused operations\n\
         of workload {}. Review it before you enforce it.",
        suggestion.records(),
        args.workload
    );
    let text = suggestion.policy(&args.name, &header, &ThisHost);
    let origin = args
        .output
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "suggested policy".to_owned());
    if let Err(e) = rollout::check(&text, &origin) {
        bail!("the suggested policy does not pass `policy check` (a bug): {e}\n{text}");
    }
    match &args.output {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    if suggestion.records() == 0 {
        eprintln!(
            "bridle: no refused or would-be refused operations of {} in {}: the suggestion refuses everything",
            args.workload,
            dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The host's own filesystem.
struct ThisHost;

impl rollout::Host for ThisHost {
    fn resolve(&self, path: &Path) -> PathBuf {
        std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
    }

    fn executables_in(&self, dir: &Path) -> Option<usize> {
        use std::os::unix::fs::PermissionsExt;
        let entries = std::fs::read_dir(dir).ok()?;
        Some(
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .count(),
        )
    }

    /// Naming the loader in a policy would also permit running any file through it directly,
    /// so a suggestion leaves it out.
    fn is_loader(&self, path: &Path) -> bool {
        path.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("ld-linux") || n.starts_with("ld-musl"))
    }
}
