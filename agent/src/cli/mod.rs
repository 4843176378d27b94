//! The subcommands of the `bridle` binary, one module each.

pub mod run;
