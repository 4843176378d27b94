//! The engine, permit and audit figures: the crates' criterion benchmarks, run as they are, with
//! their medians read from `target/criterion/**/new/estimates.json`.

use super::{check_interrupted, Figure, Report};
use anyhow::{Context, Result};
use std::{fs, path::Path};

/// (package, bench target)
const BENCHES: [(&str, &str); 2] = [("bridle-engine", "engine"), ("bridle-trust", "trust")];

/// How a criterion result becomes a figure.
enum Kind {
    /// Elements per second (the benchmark's declared throughput).
    Rate,
    /// Milliseconds per iteration.
    Millis,
}

/// (criterion id, figure name, kind, goal from the issue)
const RESULTS: [(&str, &str, Kind, &str); 10] = [
    (
        "verdicts-1000-rules/judge",
        "engine verdicts (1,000-rule policy, judge)",
        Kind::Rate,
        "goal ≥ 1,000,000/s",
    ),
    (
        "verdicts-1000-rules/evaluate",
        "engine verdicts (1,000-rule policy, evaluate with rate limits)",
        Kind::Rate,
        "goal ≥ 1,000,000/s",
    ),
    (
        "compile/compile-10000-rules",
        "compile a 10,000-rule policy",
        Kind::Millis,
        "",
    ),
    (
        "permit/hybrid_sign",
        "permit sign (Ed25519 + ML-DSA-65)",
        Kind::Rate,
        "",
    ),
    (
        "permit/hybrid_verify",
        "permit verify (both signatures)",
        Kind::Rate,
        "",
    ),
    (
        "permits_10000/batch_sign_and_store",
        "issue 10,000 permits as one batch (sign + store, fsync)",
        Kind::Millis,
        "",
    ),
    (
        "permits_10000/alone_sign_and_store",
        "issue 10,000 permits one by one (10,000 signatures and files, as before batches)",
        Kind::Millis,
        "",
    ),
    (
        "permit/batch_member_verify_of_10000",
        "verify one permit of a 10,000-permit batch (header + inclusion proof)",
        Kind::Rate,
        "",
    ),
    (
        "permits_10000/batch_load_and_verify",
        "load and verify a 10,000-permit batch file",
        Kind::Millis,
        "",
    ),
    (
        "audit/append_chained_checkpoint_every_10000",
        "audit records (hash chain, signed checkpoint + fsync every 10,000)",
        Kind::Rate,
        "goal ≥ 100,000/s",
    ),
];

/// Runs the criterion benchmarks and adds their figures.
pub fn run(report: &mut Report) -> Result<()> {
    println!("bench: criterion (engine, permits, audit)");
    for (package, bench) in BENCHES {
        check_interrupted()?;
        crate::run_cmd(crate::cargo().args(["bench", "-p", package, "--bench", bench]))?;
    }
    let dir = crate::root().join("target/criterion");
    for (id, name, kind, goal) in RESULTS {
        let base = dir.join(id).join("new");
        let (point, lo, hi) = median_estimate(&base.join("estimates.json"))
            .with_context(|| format!("reading criterion's result for {id}"))?;
        let mut f = match kind {
            Kind::Rate => {
                let elements = throughput_elements(&base.join("benchmark.json")).unwrap_or(1.0);
                let mut f = Figure::new("criterion", name, "per s");
                // ns per iteration of `elements` operations → operations per second.
                f.samples = [lo, point, hi]
                    .iter()
                    .map(|ns| elements * 1e9 / ns)
                    .collect();
                f
            }
            Kind::Millis => {
                let mut f = Figure::new("criterion", name, "ms");
                f.samples = [lo, point, hi].iter().map(|ns| ns / 1e6).collect();
                f
            }
        };
        f.remark = goal.to_owned();
        report.add([f]);
    }
    report.note(
        "criterion",
        "These are criterion's own statistics: the median of its samples and, as min–max, the \
         95% confidence interval of that median (criterion interleaves nothing; it runs one \
         benchmark at a time). Reproduce with `cargo bench -p bridle-engine --bench engine` \
         and `cargo bench -p bridle-trust --bench trust`.",
    );
    Ok(())
}

/// criterion's median estimate: (point, lower bound, upper bound) in nanoseconds.
fn median_estimate(path: &Path) -> Result<(f64, f64, f64)> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // The file is small, flat JSON; a field lookup avoids a JSON dependency in xtask.
    let median = text
        .split_once("\"median\"")
        .map(|(_, rest)| rest)
        .context("no median estimate")?;
    let field = |name: &str| -> Option<f64> {
        let rest = median.split_once(&format!("\"{name}\":"))?.1;
        let end = rest.find([',', '}'])?;
        rest[..end].trim().parse().ok()
    };
    Ok((
        field("point_estimate").context("no point estimate")?,
        field("lower_bound").context("no lower bound")?,
        field("upper_bound").context("no upper bound")?,
    ))
}

/// The element count a benchmark declared with `Throughput::Elements`.
fn throughput_elements(path: &Path) -> Option<f64> {
    let text = fs::read_to_string(path).ok()?;
    let rest = text.split_once("\"Elements\":")?.1;
    let end = rest.find([',', '}'])?;
    rest[..end].trim().parse().ok()
}
