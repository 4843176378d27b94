//! `bridle audit verify | export | tail`.

use super::{parse_time_arg, Global, EXIT_FAILED};
use anyhow::Context;
use bridle_trust::audit::{self, ExportFilter, ExportFormat, Follower, VerifyReport};
use bridle_trust::KeyStore;
use clap::{Subcommand, ValueEnum};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `bridle audit`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Jsonl,
    Csv,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify the chain and checkpoints of an audit directory (default STATE/audit) or segment.
    Verify {
        /// The audit directory or one segment file.
        dir: Option<PathBuf>,
    },
    /// Write records as JSON lines or CSV, filtered.
    Export {
        /// Output format.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: Format,
        /// Records at or after this time (RFC 3339 or Unix seconds).
        #[arg(long, value_parser = parse_time_arg)]
        since: Option<u64>,
        /// Records before this time (RFC 3339 or Unix seconds).
        #[arg(long, value_parser = parse_time_arg)]
        until: Option<u64>,
        /// Records of this workload.
        #[arg(long)]
        workload: Option<String>,
        /// Records with this effect (permit, refuse, invalidate) or code (POLICY_REFUSED, …).
        #[arg(long)]
        verdict: Option<String>,
        /// The audit directory (default STATE/audit).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print the last records, and with --follow the new ones as they come.
    Tail {
        /// How many records.
        #[arg(short = 'n', long = "lines", default_value_t = 10)]
        lines: usize,
        /// Keep printing new records.
        #[arg(short, long)]
        follow: bool,
        /// The audit directory (default STATE/audit).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Runs `bridle audit`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        AuditCommand::Verify { dir } => {
            let dir = dir.unwrap_or_else(|| global.audit_dir());
            let ring = KeyStore::new(&global.state_dir).keyring()?;
            let report = audit::verify_path(&dir, &ring)?;
            Ok(print_report(&report))
        }
        AuditCommand::Export {
            format,
            since,
            until,
            workload,
            verdict,
            dir,
        } => {
            let dir = dir.unwrap_or_else(|| global.audit_dir());
            let filter = ExportFilter {
                since,
                until,
                workload,
                verdict,
            };
            let format = match format {
                Format::Jsonl => ExportFormat::Jsonl,
                Format::Csv => ExportFormat::Csv,
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            audit::export(&dir, &filter, format, &mut out)?;
            out.flush().context("writing to standard output")?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Tail { lines, follow, dir } => {
            let dir = dir.unwrap_or_else(|| global.audit_dir());
            let mut follower = Follower::at_end(&dir)?;
            for record in audit::tail(&dir, lines)? {
                println!("{}", serde_json::to_string(&record)?);
            }
            if follow {
                loop {
                    std::thread::sleep(Duration::from_millis(500));
                    for record in follower.poll()? {
                        println!("{}", serde_json::to_string(&record)?);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints a verification report: the summary on stdout, the failure (file, line, seq, reason)
/// on stderr. Returns the exit status.
pub fn print_report(report: &VerifyReport) -> ExitCode {
    print!("{report}");
    match &report.failure {
        Some(failure) => {
            eprintln!("bridle: audit verification failed: {failure}");
            ExitCode::from(EXIT_FAILED)
        }
        None => ExitCode::SUCCESS,
    }
}
