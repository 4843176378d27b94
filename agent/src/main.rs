//! `bridle`: kernel-enforced guardrails for AI agents.

mod cgroup;
mod cli;
mod kernel;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Kernel-enforced guardrails for AI agents.
#[derive(Debug, Parser)]
#[command(name = "bridle", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command in a fresh confined cgroup (no daemon needed); returns its exit status.
    Run(cli::run::RunArgs),
    /// Work with policy files.
    Policy {
        #[command(subcommand)]
        command: cli::policy::PolicyCommand,
    },
    /// Show how a policy judges one exec or connect, and what would change the outcome.
    Explain(cli::explain::ExplainArgs),
}

/// Exit status of `bridle run` when bridle itself fails (the command's own codes pass through).
const RUN_FAILED: u8 = 125;
/// Exit status of the other subcommands when bridle itself fails.
const FAILED: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (result, failed) = match cli.command {
        Command::Run(args) => (cli::run::run(args), RUN_FAILED),
        Command::Policy { command } => (cli::policy::run(command), FAILED),
        Command::Explain(args) => (cli::explain::run(args), FAILED),
    };
    result.unwrap_or_else(|err| {
        eprintln!("bridle: error: {err:#}");
        ExitCode::from(failed)
    })
}
