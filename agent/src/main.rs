//! `bridle`: kernel-enforced guardrails for AI agents.

mod cgroup;
mod cli;
mod kernel;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Command-line interface.
#[derive(Debug, Parser)]
#[command(name = "bridle", version, about = "Kernel-enforced guardrails for AI agents")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command in a fresh confined cgroup (no daemon needed); returns its exit status.
    Run(cli::run::RunArgs),
}

/// Exit status of `bridle run` when bridle itself fails (the command's own codes pass through).
const RUN_FAILED: u8 = 125;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => cli::run::run(args).unwrap_or_else(|err| {
            eprintln!("bridle: error: {err:#}");
            ExitCode::from(RUN_FAILED)
        }),
    }
}
