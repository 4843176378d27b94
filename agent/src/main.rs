//! `bridle`: the command-line entry point.

mod cli;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Kernel-enforced guardrails for AI agents.
#[derive(Parser)]
#[command(name = "bridle", version)]
struct Cli {
    /// The daemon's state directory (keys, permits, audit trail).
    #[arg(
        long,
        global = true,
        env = "BRIDLE_STATE_DIR",
        default_value = "/var/lib/bridle"
    )]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate, show and export the permit signing keys.
    Keys(cli::keys::Args),
    /// List and verify the stored signed permits.
    Permits(cli::permits::Args),
    /// Verify, export and follow the audit trail.
    Audit(cli::audit::Args),
    /// Verify a permit file or an audit trail offline with an exported public key bundle.
    Verify(cli::verify::Args),
}

fn main() -> ExitCode {
    // clap exits with status 2 on usage errors.
    let cli = Cli::parse();
    let global = cli::Global {
        state_dir: cli.state_dir,
    };
    let result = match cli.command {
        Command::Keys(args) => cli::keys::run(&global, args),
        Command::Permits(args) => cli::permits::run(&global, args),
        Command::Audit(args) => cli::audit::run(&global, args),
        Command::Verify(args) => cli::verify::run(&global, args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // The trust errors already quote their sources; only add causes they do not.
            let mut message = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !message.contains(&cause) {
                    message = format!("{message}: {cause}");
                }
            }
            eprintln!("bridle: {message}");
            ExitCode::from(cli::EXIT_FAILED)
        }
    }
}
