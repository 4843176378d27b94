//! Exec (fork + exec of `/bin/true`, waited for) from a workload and from outside any
//! workload: bare; bridle's kill-on-exec and fanotify tiers; Landlock with the equivalent exec
//! allow-list.

use super::{check_interrupted, measure, order, wait_for_file, Background, Ctx, Figure, Report};
use anyhow::{Context, Result};
use std::{fs, path::Path, time::Duration};

/// Execs per measurement.
const EXECS: u32 = 1_000;
/// What the workload runs.
const TARGET: &str = "/bin/true";

#[derive(Clone, Copy, PartialEq)]
enum Mech {
    Bare,
    BridleWorkload(&'static str),
    LandlockWorkload,
    BridleOutside(&'static str),
}

impl Mech {
    fn label(self) -> &'static str {
        match self {
            Mech::Bare => "exec, bare",
            Mech::BridleWorkload("kill") => "exec from a workload, bridle kill tier",
            Mech::BridleWorkload(_) => "exec from a workload, bridle fanotify tier",
            Mech::LandlockWorkload => "exec from a Landlock-restricted process",
            Mech::BridleOutside("kill") => {
                "exec outside any workload, bridle kill tier loaded for another workload"
            }
            Mech::BridleOutside(_) => {
                "exec outside any workload, bridle fanotify tier active for another workload"
            }
        }
    }
}

/// Runs the exec benchmarks.
pub fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    println!("bench: exec");
    let target = fs::canonicalize(TARGET).with_context(|| format!("resolving {TARGET}"))?;
    let policy = ctx.scratch.join("exec.toml");
    fs::write(
        &policy,
        format!(
            "name = \"bench-exec\"\ndefault = \"refuse\"\n\n[[rule]]\nname = \"probe\"\neffect = \"permit\"\nexec = [\"{}\", \"{}\"]\n",
            ctx.probe.display(),
            target.display()
        ),
    )?;
    // Landlock checks the execute right on the ELF interpreter too, so the allow-list names
    // the binary and its loader: the same files bridle's rule lets run.
    let mut allowed = vec![target.display().to_string()];
    if let Some(interp) = elf_interpreter(&target) {
        allowed.push(interp);
    }
    let n = EXECS.to_string();
    let mechs = [
        Mech::Bare,
        Mech::BridleWorkload("kill"),
        Mech::BridleWorkload("fanotify"),
        Mech::LandlockWorkload,
        Mech::BridleOutside("kill"),
        Mech::BridleOutside("fanotify"),
    ];
    let mut figs: Vec<Figure> = mechs
        .iter()
        .map(|m| Figure::new("exec", m.label(), "µs"))
        .collect();
    for round in 0..ctx.rounds {
        println!("bench: exec round {}/{}", round + 1, ctx.rounds);
        for i in order(mechs.len(), round) {
            check_interrupted()?;
            let loop_args = ["exec-loop", n.as_str(), TARGET];
            let (ns, _) = match mechs[i] {
                Mech::Bare => measure(&mut ctx.bare(&loop_args))?,
                Mech::BridleWorkload(tier) => {
                    measure(&mut ctx.confined_on(&policy, Some(tier), &loop_args))?
                }
                Mech::LandlockWorkload => {
                    let mut args = vec!["landlock-exec-loop", n.as_str(), TARGET];
                    args.extend(allowed.iter().map(String::as_str));
                    measure(&mut ctx.bare(&args))?
                }
                Mech::BridleOutside(tier) => {
                    // Another workload is confined while this process, outside it, execs:
                    // the raw tracepoint runs for every exec on the host.
                    let ready = ctx.scratch.join("exec-ready");
                    let _ = fs::remove_file(&ready);
                    let ready_arg = ready.display().to_string();
                    let mut bg = Background::spawn(&mut ctx.confined_on(
                        &policy,
                        Some(tier),
                        &["ready", &ready_arg],
                    ))?;
                    wait_for_file(&ready, &mut bg, Duration::from_secs(30))?;
                    let measured = measure(&mut ctx.bare(&loop_args));
                    bg.stop();
                    measured?
                }
            };
            figs[i].samples.push(ns / 1000.0);
        }
    }
    let base = figs[0].name.clone();
    report.add(
        figs.into_iter()
            .enumerate()
            .map(|(i, f)| if i == 0 { f } else { f.against(&base) })
            .collect::<Vec<_>>(),
    );
    report.note(
        "exec",
        format!(
            "{EXECS} execs per round, each spawned and waited for by the probe (Rust's \
             `Command::status`). bridle's policy permits the probe and {}; Landlock's ruleset \
             handles `Execute` and allows {}. The BPF LSM tier does not load on this platform, \
             so it has no row. Landlock costs nothing outside the restricted process, so it has \
             no outside-a-workload row.",
            target.display(),
            allowed.join(" and ")
        ),
    );
    Ok(())
}

/// The ELF interpreter (`PT_INTERP`) of a 64-bit little-endian executable, if it has one.
fn elf_interpreter(path: &Path) -> Option<String> {
    let data = fs::read(path).ok()?;
    if data.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(data.get(o..o + 8)?.try_into().ok()?));
    let phoff = u64_at(0x20)? as usize;
    let phentsize = u16_at(0x36)? as usize;
    let phnum = u16_at(0x38)? as usize;
    for k in 0..phnum {
        let ph = phoff + k * phentsize;
        const PT_INTERP: u32 = 3;
        if u32_at(ph)? == PT_INTERP {
            let off = u64_at(ph + 0x08)? as usize;
            let size = u64_at(ph + 0x20)? as usize;
            let raw = data.get(off..off + size)?;
            let name = String::from_utf8_lossy(raw)
                .trim_end_matches('\0')
                .to_owned();
            return Some(
                fs::canonicalize(&name)
                    .map(|p| p.display().to_string())
                    .unwrap_or(name),
            );
        }
    }
    None
}
