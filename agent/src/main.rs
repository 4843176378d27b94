//! `bridle`: kernel-enforced guardrails for AI agents.

mod cgroup;
mod channel;
mod cli;
mod daemon;
mod dns;
mod fanotify;
mod harden;
mod issuer;
mod kernel;
mod os;
mod rollout;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Kernel-enforced guardrails for AI agents.
#[derive(Debug, Parser)]
#[command(
    name = "bridle",
    version,
    about = "Kernel-enforced guardrails for AI agents"
)]
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

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command in a fresh confined cgroup (no daemon needed); returns its exit status.
    Run(cli::run::RunArgs),
    /// Confine the cgroups the configuration names, persistently (run it under systemd).
    Daemon(daemon::DaemonArgs),
    /// Ask the daemon what it enforces: tiers, workloads, policies, counters, last reload.
    Status(cli::ctl::StatusArgs),
    /// Ask the daemon to re-read its configuration and policies (all or nothing).
    Reload(cli::ctl::SocketArgs),
    /// Show the latest decisions, or follow the daemon's as they happen (`--follow`).
    Events(cli::events::EventsArgs),
    /// Ask the daemon to confine a cgroup with a policy, until it is released.
    Confine(cli::ctl::ConfineArgs),
    /// Ask the daemon to end a workload's confinement, or only its quarantine (`--quarantine`).
    Release(cli::ctl::ReleaseArgs),
    /// Remove every pinned program, map and link: ends enforcement on purpose.
    Unload(cli::ctl::UnloadArgs),
    /// Work with policy files.
    Policy {
        #[command(subcommand)]
        command: cli::policy::PolicyCommand,
    },
    /// Show how a policy judges one exec or connect, and what would change the outcome.
    Explain(cli::explain::ExplainArgs),
    /// Generate, show and export the permit signing keys.
    Keys(cli::keys::Args),
    /// List and verify the stored signed permits.
    Permits(cli::permits::Args),
    /// Verify, export and follow the audit trail.
    Audit(cli::audit::Args),
    /// Summarise refusals and would-be refusals (observe mode) by workload and rule.
    Report(cli::rollout::ReportArgs),
    /// Write the smallest policy that permits what a workload was seen doing.
    Suggest(cli::rollout::SuggestArgs),
    /// Verify a permit file or an audit trail offline with an exported public key bundle.
    Verify(cli::verify::Args),
}

/// Exit status of `bridle run` when bridle itself fails (the command's own codes pass through).
const RUN_FAILED: u8 = 125;
/// Exit status of `policy` and `explain` when bridle itself fails.
const USAGE_FAILED: u8 = 2;

fn main() -> ExitCode {
    // clap exits with status 2 on usage errors.
    let cli = Cli::parse();
    let global = cli::Global {
        state_dir: cli.state_dir,
    };
    let (result, failed) = match cli.command {
        Command::Run(args) => (cli::run::run(&global, args), RUN_FAILED),
        Command::Daemon(args) => (daemon::run(args), cli::EXIT_FAILED),
        Command::Status(args) => (cli::ctl::status(args), cli::EXIT_FAILED),
        Command::Reload(args) => (cli::ctl::reload(args), cli::EXIT_FAILED),
        Command::Events(args) => (cli::events::run(&global, args), cli::EXIT_FAILED),
        Command::Confine(args) => (cli::ctl::confine(args), cli::EXIT_FAILED),
        Command::Release(args) => (cli::ctl::release(args), cli::EXIT_FAILED),
        Command::Unload(args) => (cli::ctl::unload(args), cli::EXIT_FAILED),
        Command::Policy { command } => (cli::policy::run(command), USAGE_FAILED),
        Command::Explain(args) => (cli::explain::run(args), USAGE_FAILED),
        Command::Keys(args) => (cli::keys::run(&global, args), cli::EXIT_FAILED),
        Command::Permits(args) => (cli::permits::run(&global, args), cli::EXIT_FAILED),
        Command::Audit(args) => (cli::audit::run(&global, args), cli::EXIT_FAILED),
        Command::Report(args) => (cli::rollout::report(&global, args), cli::EXIT_FAILED),
        Command::Suggest(args) => (cli::rollout::suggest(&global, args), cli::EXIT_FAILED),
        Command::Verify(args) => (cli::verify::run(&global, args), cli::EXIT_FAILED),
    };
    result.unwrap_or_else(|err| {
        // Errors often quote their sources already; add only the causes they do not.
        let mut message = err.to_string();
        for cause in err.chain().skip(1) {
            let cause = cause.to_string();
            if !message.contains(&cause) {
                message = format!("{message}: {cause}");
            }
        }
        eprintln!("bridle: error: {message}");
        ExitCode::from(failed)
    })
}
