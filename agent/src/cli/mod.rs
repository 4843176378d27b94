//! The subcommands, one module each; each exposes `run(args) -> anyhow::Result<ExitCode>`.

pub mod explain;
pub mod policy;
pub mod run;
