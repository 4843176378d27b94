//! `bridle keys generate | show | export`.

use super::Global;
use anyhow::Context;
use bridle_trust::clock::{now_ns, NANOS_PER_SEC};
use bridle_trust::keys::describe;
use bridle_trust::KeyStore;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

/// `bridle keys`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Generate a key pair; when one exists, rotate: the new key signs from now on and the old
    /// public key is kept so that what it signed still verifies.
    Generate {
        /// Validity of the new key, e.g. `90d`, `12h`, `30m`, `3600s` (default: no expiry).
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<u64>,
    },
    /// Show the keys and check that the current one is usable (its secret files 0600).
    Show,
    /// Write the public bundle (every public key, current and previous) for offline verifiers.
    Export {
        /// Where to write it (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Runs `bridle keys`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let store = KeyStore::new(&global.state_dir);
    match args.command {
        KeysCommand::Generate { expires_in } => {
            let now = now_ns();
            let previous = store.current_id()?;
            let expires_at = expires_in.map(|d| now.saturating_add(d));
            let pair = store.generate(now, expires_at)?;
            match previous {
                Some(old) => println!(
                    "generated key {} (rotated: {old} is retired and kept for verification)",
                    pair.key_id()
                ),
                None => println!("generated key {}", pair.key_id()),
            }
        }
        KeysCommand::Show => {
            let current = store.current_id()?;
            let keys = store.public_keys()?;
            if keys.is_empty() {
                println!("no keys in {}", store.dir().display());
                return Ok(ExitCode::SUCCESS);
            }
            for info in &keys {
                println!(
                    "{}",
                    describe(info, current.as_deref() == Some(info.key_id.as_str()))
                );
            }
            if current.is_some() {
                // Loading proves the secret files are present, private and match public.json.
                store.load_current()?;
            }
        }
        KeysCommand::Export { out } => {
            let bundle = store.bundle()?;
            if bundle.keys.is_empty() {
                anyhow::bail!(
                    "{}: no keys to export (run `bridle keys generate`)",
                    store.dir().display()
                );
            }
            match out {
                Some(path) => {
                    store.export(&path)?;
                    eprintln!(
                        "wrote {} public key(s) to {}",
                        bundle.keys.len(),
                        path.display()
                    );
                }
                None => {
                    let json =
                        serde_json::to_string_pretty(&bundle).context("encoding the bundle")?;
                    println!("{json}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 90d, 12h, 30m or 3600s"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{text}`: unit must be s, m, h or d")),
    };
    n.checked_mul(secs)
        .and_then(|s| s.checked_mul(NANOS_PER_SEC))
        .ok_or_else(|| format!("`{text}` is too long"))
}
