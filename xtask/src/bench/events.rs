//! The event path: how many decision events per second bridle drains into its audit trail
//! without loss, and what the loss counter says beyond that.
//!
//! The workload connects over UDP to a permitted address at a paced rate; every connect is one
//! permitted decision, queued by the kernel without a wakeup and drained by `bridle run` on its
//! timer into the hash-chained audit trail. `bridle run` prints the kernel's count of events
//! dropped on a full ring buffer at exit.

use super::{check_interrupted, connect, lost_events, measure, order, Ctx, Figure, Report};
use anyhow::Result;
use std::{fs, net::UdpSocket};

/// Offered rates (connects per second); 0 means as fast as the workload can go.
const RATES: [u64; 6] = [5_000, 10_000, 20_000, 40_000, 80_000, 0];
/// Length of one run.
const MILLIS: u64 = 1_000;

/// Runs the event-path benchmark.
pub fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    println!("bench: event path");
    let udp_port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{udp_port}");
    let policy = ctx.scratch.join("events.toml");
    fs::write(
        &policy,
        connect::bridle_policy(&ctx.probe, udp_port, udp_port, 10),
    )?;
    let label = |r: u64| {
        if r == 0 {
            "unpaced".to_owned()
        } else {
            format!("{}/s offered", connect::thousands(r as usize))
        }
    };
    let mut achieved: Vec<Figure> = RATES
        .iter()
        .map(|&r| {
            Figure::new(
                "events",
                format!("events drained, {}", label(r)),
                "events/s",
            )
        })
        .collect();
    let mut lost: Vec<Figure> = RATES
        .iter()
        .map(|&r| {
            Figure::new(
                "events",
                format!("events lost per run, {}", label(r)),
                "events",
            )
        })
        .collect();
    for round in 0..ctx.rounds {
        println!("bench: event path round {}/{}", round + 1, ctx.rounds);
        for i in order(RATES.len(), round) {
            check_interrupted()?;
            let rate = RATES[i].to_string();
            let millis = MILLIS.to_string();
            let (ops, stderr) =
                measure(&mut ctx.confined(&policy, &["udp-rate", &addr, &rate, &millis]))?;
            let l = lost_events(&stderr) as f64;
            // Events that reached the audit trail: every connect made one, minus the lost.
            achieved[i].samples.push((ops - l) * 1000.0 / MILLIS as f64);
            lost[i].samples.push(l);
        }
    }
    let clean = RATES
        .iter()
        .zip(&lost)
        .filter(|(r, f)| **r != 0 && f.max() == 0.0)
        .map(|(r, _)| *r)
        .max();
    let unpaced_lost = lost[RATES.len() - 1].median();
    report.note(
        "events",
        match clean {
            Some(r) => format!(
                "Highest offered rate drained with zero loss in every round: {}/s. Unpaced, the \
                 loss counter reported a median of {} lost events per {MILLIS} ms run: every \
                 drop is counted by the kernel and reported by `bridle run` at exit.",
                connect::thousands(r as usize),
                connect::thousands(unpaced_lost as usize)
            ),
            None => format!(
                "Events were lost at every offered rate (lowest {}/s); the loss counter \
                 reported them all.",
                RATES[0]
            ),
        },
    );
    report.note(
        "events",
        "Each event is a permitted UDP connect; the ring buffer holds 1 MiB (about 2,800 \
         events) and `bridle run` drains it every 50 ms or on a refusal, appending each event \
         to the hash-chained audit trail. The counter is the one `bridle run` prints (the \
         daemon's is in `bridle status`).",
    );
    report.add(achieved.into_iter().chain(lost).collect::<Vec<_>>());
    Ok(())
}
