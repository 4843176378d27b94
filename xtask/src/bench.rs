//! `cargo xtask bench`: what bridle costs a workload, against the bare kernel, in one run.
//!
//! Every figure is the median of interleaved rounds (bare and confined alternate, so machine
//! noise hits both alike), with the min–max and the ratio to the reference measured in the same
//! run. The report goes to `target/bench/report.md` and `target/bench/report.csv`.

use anyhow::{bail, Context, Result};
use std::{fmt::Write as _, fs, net::TcpListener, path::Path, process::Command};

/// Rounds per figure (interleaved).
const ROUNDS: usize = 9;
/// Connects per round.
const CONNECTS: u32 = 20_000;

/// One measured figure.
struct Figure {
    name: String,
    samples: Vec<f64>,
}

impl Figure {
    fn median(&self) -> f64 {
        let mut s = self.samples.clone();
        s.sort_by(|a, b| a.total_cmp(b));
        s[s.len() / 2]
    }
    fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::INFINITY, f64::min)
    }
    fn max(&self) -> f64 {
        self.samples.iter().copied().fold(0.0, f64::max)
    }
}

/// Runs the benchmarks with the bridle binary at `bin`.
pub fn run(bin: &Path) -> Result<()> {
    if !crate::nix_is_root() {
        bail!("the benchmarks load eBPF programs and need root");
    }
    crate::run_cmd(crate::cargo().args([
        "build",
        "--release",
        "--package",
        "bridle-tests",
        "--bin",
        "bridle-probe",
    ]))?;
    let probe = crate::root().join("target/release/bridle-probe");
    let out_dir = crate::root().join("target/bench");
    fs::create_dir_all(&out_dir)?;

    // A closed loopback port answers a connect at once with ECONNREFUSED: the connect path
    // with no listener work in it.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let target = format!("127.0.0.1:{port}");
    let policy = out_dir.join("bench-connect.toml");
    fs::write(&policy, connect_policy(&probe, port, 10))?;

    let mut bare = Figure {
        name: "TCP connect, bare".into(),
        samples: vec![],
    };
    let mut confined = Figure {
        name: "TCP connect, bridle (10 rules)".into(),
        samples: vec![],
    };
    for round in 0..ROUNDS {
        let order: [bool; 2] = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for inside in order {
            let mut cmd = if inside {
                let mut c = Command::new(bin);
                c.arg("run")
                    .arg("--policy")
                    .arg(&policy)
                    .arg("--")
                    .arg(&probe);
                c
            } else {
                Command::new(&probe)
            };
            cmd.args(["connect-loop", &target, &CONNECTS.to_string()]);
            let ns = measure(&mut cmd)?;
            if inside {
                confined.samples.push(ns / 1000.0);
            } else {
                bare.samples.push(ns / 1000.0);
            }
        }
    }
    let mut md =
        String::from("| figure | median µs | min–max µs | ratio to bare |\n|---|---|---|---|\n");
    let mut csv = String::from("figure,median_us,min_us,max_us,ratio\n");
    let base = bare.median();
    for f in [&bare, &confined] {
        let ratio = f.median() / base;
        writeln!(
            md,
            "| {} | {:.2} | {:.2}–{:.2} | {:.3}× |",
            f.name,
            f.median(),
            f.min(),
            f.max(),
            ratio
        )?;
        writeln!(
            csv,
            "{},{:.3},{:.3},{:.3},{:.4}",
            f.name,
            f.median(),
            f.min(),
            f.max(),
            ratio
        )?;
    }
    fs::write(out_dir.join("report.md"), &md)?;
    fs::write(out_dir.join("report.csv"), &csv)?;
    println!("{md}");
    println!("({ROUNDS} interleaved rounds of {CONNECTS} connects; report in target/bench/)");
    Ok(())
}

fn measure(cmd: &mut Command) -> Result<f64> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse::<f64>()
        .with_context(|| format!("unexpected output from {cmd:?}: {text}"))
}

/// A policy with `rules` connect rules, one of which permits the benchmark's target.
fn connect_policy(probe: &Path, port: u16, rules: usize) -> String {
    let mut text = format!(
        "name = \"bench\"\ndefault = \"refuse\"\n\n[[rule]]\nname = \"probe\"\neffect = \"permit\"\nexec = [\"{}\"]\n\n[[rule]]\nname = \"target\"\neffect = \"permit\"\nconnect = [\"127.0.0.1:{port}\"]\n",
        probe.display()
    );
    for i in 1..rules {
        let _ = write!(
            text,
            "\n[[rule]]\nname = \"filler-{i}\"\neffect = \"permit\"\nconnect = [\"10.{}.{}.0/24:443\"]\n",
            (i >> 8) & 0xff,
            i & 0xff
        );
    }
    text
}
