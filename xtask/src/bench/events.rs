//! The event path: how many permitted decisions per second reach the audit trail without loss,
//! and what the loss counter says beyond that.
//!
//! The workload connects over UDP at a paced rate, either always to one permitted address (the
//! kernel sends the first decision as an event and counts the repeats in its tally) or each time
//! to a new address of a permitted /8 (every decision has its own key, so every one is an
//! event, queued without a wakeup and drained by `bridle run` into the hash-chained audit
//! trail). `bridle run` prints the kernel's count of events dropped on a full ring buffer at
//! exit.

use super::{check_interrupted, connect, lost_events, measure, order, Ctx, Figure, Report};
use anyhow::Result;
use std::{fs, net::UdpSocket};

/// Offered rates (connects per second); 0 means as fast as the workload can go.
const RATES: [u64; 6] = [5_000, 10_000, 20_000, 40_000, 80_000, 0];
/// Length of one run.
const MILLIS: u64 = 1_000;
/// The destinations: one address, or a new address of 127.0.0.0/8 for every connect.
const SPREADS: [bool; 2] = [false, true];

/// Runs the event-path benchmark.
pub fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    println!("bench: event path");
    let udp_port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{udp_port}");
    let policy = ctx.scratch.join("events.toml");
    let mut text = connect::bridle_policy(&ctx.probe, udp_port, udp_port, 10);
    text.push_str(&format!(
        "\n[[rule]]\nname = \"loopback\"\neffect = \"permit\"\nconnect = [\"127.0.0.0/8:{udp_port}\"]\n"
    ));
    fs::write(&policy, text)?;
    let label = |r: u64, spread: bool| {
        let to = if spread {
            "distinct destinations"
        } else {
            "one destination"
        };
        if r == 0 {
            format!("{to}, unpaced")
        } else {
            format!("{to}, {}/s offered", connect::thousands(r as usize))
        }
    };
    let configs: Vec<(u64, bool)> = SPREADS
        .iter()
        .flat_map(|&s| RATES.iter().map(move |&r| (r, s)))
        .collect();
    let mut achieved: Vec<Figure> = configs
        .iter()
        .map(|&(r, s)| {
            Figure::new(
                "events",
                format!("decisions recorded, {}", label(r, s)),
                "per s",
            )
        })
        .collect();
    let mut lost: Vec<Figure> = configs
        .iter()
        .map(|&(r, s)| {
            Figure::new(
                "events",
                format!("events lost per run, {}", label(r, s)),
                "events",
            )
        })
        .collect();
    for round in 0..ctx.rounds {
        println!("bench: event path round {}/{}", round + 1, ctx.rounds);
        for i in order(configs.len(), round) {
            check_interrupted()?;
            let (rate, spread) = configs[i];
            let rate = rate.to_string();
            let millis = MILLIS.to_string();
            let mut args = vec!["udp-rate", &addr, &rate, &millis];
            if spread {
                args.push("spread");
            }
            let (ops, stderr) = measure(&mut ctx.confined(&policy, &args))?;
            let l = lost_events(&stderr) as f64;
            // Decisions that reached the audit trail, as events or counts: every connect made
            // one, minus those the loss counter reported.
            achieved[i].samples.push((ops - l) * 1000.0 / MILLIS as f64);
            lost[i].samples.push(l);
        }
    }
    for spread in SPREADS {
        let clean = configs
            .iter()
            .zip(&lost)
            .filter(|((r, s), f)| *s == spread && *r != 0 && f.max() == 0.0)
            .map(|((r, _), _)| *r)
            .max();
        let unpaced = configs
            .iter()
            .position(|&(r, s)| r == 0 && s == spread)
            .map(|i| lost[i].median())
            .unwrap_or(0.0);
        let to = label(0, spread).replace(", unpaced", "");
        report.note(
            "events",
            match clean {
                Some(r) => format!(
                    "{to}: highest offered rate recorded with zero loss in every round: {}/s; \
                     unpaced, the loss counter reported a median of {} lost events per \
                     {MILLIS} ms run.",
                    connect::thousands(r as usize),
                    connect::thousands(unpaced as usize)
                ),
                None => format!(
                    "{to}: events were lost at every offered rate (lowest {}/s); the loss \
                     counter reported them all.",
                    RATES[0]
                ),
            },
        );
    }
    report.note(
        "events",
        "Each decision is a permitted UDP connect. To one destination, the kernel sends the \
         first decision of each second as an event and counts the repeats in its tally, which \
         `bridle run` writes to the audit trail as one counted record per second. To distinct \
         destinations (a new address of 127.0.0.0/8 each time), every decision is an event: \
         the ring buffer holds 1 MiB (about 9,300 socket events) and `bridle run` drains it \
         every 50 ms, at once on a refusal, or when a permit finds it half full, appending each \
         event to the hash-chained audit trail. Every drop is counted by the kernel and \
         reported by `bridle run` at exit (the daemon's counter is in `bridle status`).",
    );
    report.add(achieved.into_iter().chain(lost).collect::<Vec<_>>());
    Ok(())
}
