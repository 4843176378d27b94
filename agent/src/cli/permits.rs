//! `bridle permits list | verify`.

use super::{parse_time_arg, Global, EXIT_FAILED};
use bridle_trust::clock::{format_ns, now_ns};
use bridle_trust::{KeyStore, PermitStore};
use clap::Subcommand;
use std::process::ExitCode;

/// `bridle permits`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: PermitsCommand,
}

#[derive(Debug, Subcommand)]
enum PermitsCommand {
    /// List the stored permits (without verifying them).
    List,
    /// Verify every stored permit with the state directory's public keys.
    Verify {
        /// Verify as of this time (RFC 3339 or Unix seconds) instead of now.
        #[arg(long, value_parser = parse_time_arg)]
        at: Option<u64>,
    },
}

/// Runs `bridle permits`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let store = PermitStore::new(&global.state_dir);
    match args.command {
        PermitsCommand::List => {
            for listed in store.list()? {
                match listed.permit {
                    Ok(sp) => {
                        let p = &sp.permit;
                        println!(
                            "{:016x}  {} {} {} {}  rule={}  cgroup={}  expires={}  key={}",
                            p.id,
                            p.effect,
                            p.code,
                            p.action,
                            p.object,
                            p.rule.as_deref().unwrap_or("-"),
                            p.subject.cgroup_path,
                            format_ns(p.expires_at),
                            p.key_id
                        );
                    }
                    Err(e) => println!("{e}"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        PermitsCommand::Verify { at } => {
            let ring = KeyStore::new(&global.state_dir).keyring()?;
            let now = at.unwrap_or_else(now_ns);
            let (mut good, mut bad) = (0usize, 0usize);
            for listed in store.list()? {
                let result = listed
                    .permit
                    .map_err(|e| e.to_string())
                    .and_then(|p| p.verify(&ring, now).map_err(|e| e.to_string()));
                match result {
                    Ok(()) => good += 1,
                    Err(reason) => {
                        bad += 1;
                        eprintln!("{}: {reason}", listed.file.display());
                    }
                }
            }
            println!("{good} permit(s) verified, {bad} failed");
            Ok(if bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            })
        }
    }
}
