//! `bridle verify --keys BUNDLE FILE`: offline verification with only the public bundle.

use super::{parse_time_arg, Global, EXIT_FAILED};
use bridle_trust::audit;
use bridle_trust::clock::now_ns;
use bridle_trust::{KeyRing, PermitBatch, SignedPermit};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `bridle verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The public key bundle (from `bridle keys export`).
    #[arg(long)]
    keys: PathBuf,
    /// Verify a permit as of this time (RFC 3339 or Unix seconds) instead of now.
    #[arg(long, value_parser = parse_time_arg)]
    at: Option<u64>,
    /// A permit file (as `bridle permits show` writes it), a permit batch file
    /// (`batch-*.jsonl`), an audit segment, or an audit directory.
    file: PathBuf,
}

/// Runs `bridle verify`.
pub fn run(_global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let ring = KeyRing::load_bundle(&args.keys)?;
    if !args.file.is_dir() && looks_like_batch(&args.file)? {
        return verify_batch(&args.file, &ring, args.at.unwrap_or_else(now_ns));
    }
    if args.file.is_dir() || looks_like_segment(&args.file)? {
        let report = audit::verify_path(&args.file, &ring)?;
        return Ok(super::audit::print_report(&report));
    }
    let bytes =
        std::fs::read(&args.file).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let permit = match SignedPermit::from_json(&bytes) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "bridle: {}: neither a signed permit nor an audit segment: {e}",
                args.file.display()
            );
            return Ok(ExitCode::from(EXIT_FAILED));
        }
    };
    match permit.verify(&ring, args.at.unwrap_or_else(now_ns)) {
        Ok(()) => {
            let how = match &permit.batch {
                Some(b) => format!(
                    " in batch {:016x}, leaf {} of {}",
                    b.header.id, b.index, b.header.count
                ),
                None => String::new(),
            };
            println!(
                "OK: permit {:016x} ({} {} {}) signed by key {} (Ed25519 + ML-DSA-65){how}",
                permit.permit.id,
                permit.permit.effect,
                permit.permit.action,
                permit.permit.object,
                permit.permit.key_id
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("bridle: {}: {e}", args.file.display());
            Ok(ExitCode::from(EXIT_FAILED))
        }
    }
}

/// Verifies every permit of a batch file: one check of the header's signatures for all of them.
fn verify_batch(path: &Path, ring: &KeyRing, now: u64) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let batch = match PermitBatch::from_jsonl(&bytes) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("bridle: {}: not a permit batch: {e}", path.display());
            return Ok(ExitCode::from(EXIT_FAILED));
        }
    };
    let results = batch.verify(ring, now);
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    for e in &failed {
        eprintln!("bridle: {}: {e}", path.display());
    }
    if failed.is_empty() {
        println!(
            "OK: batch {:016x}: {} permit(s) signed by key {} (Ed25519 + ML-DSA-65 over the Merkle root)",
            batch.header.id,
            results.len(),
            batch.header.key_id
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "{} of {} permit(s) in batch {:016x} failed",
            failed.len(),
            results.len(),
            batch.header.id
        );
        Ok(ExitCode::from(EXIT_FAILED))
    }
}

/// A batch file is JSON lines whose first object is a signed batch header: it has a `batch`
/// and no `permit` (a permit signed in a batch, shown alone, has both).
fn looks_like_batch(path: &Path) -> anyhow::Result<bool> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let first = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    Ok(serde_json::from_slice::<serde_json::Value>(first)
        .ok()
        .is_some_and(|v| v.get("batch").is_some() && v.get("permit").is_none()))
}

/// A segment is JSON lines whose objects carry a `type`; a permit file is one JSON document.
fn looks_like_segment(path: &Path) -> anyhow::Result<bool> {
    if path.extension().is_some_and(|e| e == "jsonl") {
        return Ok(true);
    }
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let first = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    Ok(serde_json::from_slice::<serde_json::Value>(first)
        .ok()
        .and_then(|v| v.get("type").cloned())
        .is_some())
}
