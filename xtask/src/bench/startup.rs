//! Start-up of `bridle run`: the time from its start to the workload's first instruction (by
//! then every program and entry is in place), and bridle's peak resident memory while it holds
//! a live workload.

use super::{
    check_interrupted, connect, monotonic_ns, order, wait_for_file, Background, Ctx, Figure, Report,
};
use anyhow::{Context, Result};
use std::{fs, time::Duration};

/// Entry counts of the policies started.
const SIZES: [usize; 2] = [10, 100_000];

/// Runs the start-up benchmark.
pub fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    println!("bench: start-up and memory");
    let mut policies = vec![];
    for n in SIZES {
        let p = ctx.scratch.join(format!("startup-{n}.toml"));
        // Ports never connected to: only the entry count matters here.
        fs::write(&p, connect::bridle_policy(&ctx.probe, 9, 9, n))?;
        policies.push(p);
    }
    let mut start = vec![Figure::new(
        "startup",
        "start to first instruction, bare",
        "ms",
    )];
    let mut rss = vec![];
    for n in SIZES {
        let label = format!("bridle run, {} entries", connect::thousands(n));
        // No ratio: a supervisor that loads programs is not comparable with a bare spawn by a
        // factor; the bare row shows what spawning alone costs.
        start.push(Figure::new(
            "startup",
            format!("start to first instruction, {label}"),
            "ms",
        ));
        rss.push(Figure::new(
            "startup",
            format!("peak resident memory, {label}"),
            "MiB",
        ));
    }
    let ready = ctx.scratch.join("startup-ready");
    let ready_arg = ready.display().to_string();
    for round in 0..ctx.rounds {
        println!("bench: start-up round {}/{}", round + 1, ctx.rounds);
        for i in order(SIZES.len() + 1, round) {
            check_interrupted()?;
            let _ = fs::remove_file(&ready);
            let args = ["ready", ready_arg.as_str()];
            let mut cmd = if i == 0 {
                ctx.bare(&args)
            } else {
                ctx.confined(&policies[i - 1], &args)
            };
            let t0 = monotonic_ns();
            let mut bg = Background::spawn(&mut cmd)?;
            let stamp = wait_for_file(&ready, &mut bg, Duration::from_secs(60))?;
            let t1: u128 = stamp.trim().parse().context("reading the probe's stamp")?;
            start[i]
                .samples
                .push(t1.saturating_sub(t0) as f64 / 1_000_000.0);
            if i > 0 {
                // VmHWM: the peak, which includes compiling and signing the policy.
                let status = fs::read_to_string(format!("/proc/{}/status", bg.pid()))?;
                let kib = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                    .context("no VmHWM in /proc/PID/status")?;
                rss[i - 1].samples.push(kib / 1024.0);
            }
            bg.stop();
        }
    }
    report.add(start.into_iter().chain(rss).collect::<Vec<_>>());
    report.note(
        "startup",
        "Start to first instruction: from just before `bridle run` is spawned to the first \
         statement of the workload's `main` (both CLOCK_MONOTONIC); bridle loads and attaches \
         its programs, compiles the policy, signs the permits (one batch) and fills the maps before \
         the workload may run. Memory: VmHWM of the bridle process while the workload runs. \
         The run shares its state directory (and audit trail) with the sections before it. \
         The daemon's time to enforce and memory are in the daemon section.",
    );
    Ok(())
}
