//! `bridle`: the command-line entry point.

mod cli;

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
    /// Work with policy files.
    Policy {
        #[command(subcommand)]
        command: cli::policy::PolicyCommand,
    },
    /// Show how a policy judges one exec or connect, and what would change the outcome.
    Explain(cli::explain::ExplainArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Policy { command } => cli::policy::run(command),
        Command::Explain(args) => cli::explain::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bridle: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
