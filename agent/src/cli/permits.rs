//! `bridle permits list | show | verify`.

use super::{parse_time_arg, Global, EXIT_FAILED};
use bridle_trust::clock::{format_ns, now_ns};
use bridle_trust::{KeyStore, PermitStore};
use clap::Subcommand;
use std::path::PathBuf;
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
    /// Print one stored permit as a JSON document that verifies on its own (for a permit signed
    /// in a batch: with the signed batch header and its inclusion proof), for
    /// `bridle verify --keys BUNDLE FILE` elsewhere.
    Show {
        /// The permit id (16 hex digits, as `list` and the audit trail show it).
        #[arg(value_parser = parse_permit_id)]
        id: u64,
        /// Write it to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify every stored permit with the state directory's public keys.
    Verify {
        /// Verify as of this time (RFC 3339 or Unix seconds) instead of now.
        #[arg(long, value_parser = parse_time_arg)]
        at: Option<u64>,
    },
}

fn parse_permit_id(text: &str) -> Result<u64, String> {
    u64::from_str_radix(text.trim_start_matches("0x"), 16)
        .map_err(|e| format!("`{text}` is not a permit id (hex digits): {e}"))
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
                        let batch = sp
                            .batch
                            .as_ref()
                            .map(|b| format!("  batch={:016x}", b.header.id))
                            .unwrap_or_default();
                        println!(
                            "{:016x}  {} {} {} {}  rule={}  cgroup={}  expires={}  key={}{batch}",
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
        PermitsCommand::Show { id, out } => {
            let Some((_, permit)) = store.find(id)? else {
                eprintln!(
                    "bridle: no stored permit {id:016x} under {}",
                    store.dir().display()
                );
                return Ok(ExitCode::from(EXIT_FAILED));
            };
            let json = permit.to_json();
            match out {
                Some(path) => std::fs::write(&path, json)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
                None => print!("{}", String::from_utf8_lossy(&json)),
            }
            Ok(ExitCode::SUCCESS)
        }
        PermitsCommand::Verify { at } => {
            let ring = KeyStore::new(&global.state_dir).keyring()?;
            let now = at.unwrap_or_else(now_ns);
            // A batch's header signatures are checked once for all of its permits.
            let (kept, dropped) = store.load_verified(&ring, now, |_| true)?;
            for d in &dropped {
                eprintln!("{d}");
            }
            println!(
                "{} permit(s) verified, {} failed",
                kept.len(),
                dropped.len()
            );
            Ok(if dropped.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            })
        }
    }
}
