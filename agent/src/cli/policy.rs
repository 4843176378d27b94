//! `bridle policy check FILE…`: validate policy files.

use bridle_engine::Policy;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

/// `bridle policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check policy files: exit 0 when all are valid, 1 otherwise (diagnostics on stderr).
    Check {
        /// The policy files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Runs a `policy` subcommand.
pub fn run(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Check { files } => Ok(check(&files)),
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for file in files {
        match Policy::load(file) {
            Ok(policy) => println!(
                "{}: ok ({}, {} rule{}, sha256 {})",
                file.display(),
                policy.name,
                policy.rules.len(),
                if policy.rules.len() == 1 { "" } else { "s" },
                policy.digest_hex()
            ),
            Err(e) => {
                ok = false;
                eprintln!("{e}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
