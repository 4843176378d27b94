//! The subcommands, one module each; each exposes `run(…) -> anyhow::Result<ExitCode>`.

pub mod audit;
pub mod ctl;
pub mod events;
pub mod explain;
pub mod keys;
pub mod permits;
pub mod policy;
pub mod rollout;
pub mod run;
pub mod run_daemon;
pub mod verify;

use std::path::PathBuf;

/// Exit status when verification fails (or a command cannot do its work).
pub const EXIT_FAILED: u8 = 1;

/// Options every subcommand sees.
#[derive(Debug, Clone)]
pub struct Global {
    /// The daemon's state directory.
    pub state_dir: PathBuf,
}

impl Global {
    /// `STATE/audit`, the default audit directory.
    pub fn audit_dir(&self) -> PathBuf {
        self.state_dir.join("audit")
    }
}

/// Parses a time argument (RFC 3339 or Unix seconds) for clap.
pub fn parse_time_arg(text: &str) -> Result<u64, String> {
    bridle_trust::clock::parse_time(text)
}
