//! DNS: the answer latency the workload's resolver adds. Sequential UDP queries for an allowed
//! name go straight to a dnsmasq on loopback (the reference, outside any workload) and from
//! inside a `bridle run` workload, where the kernel sends them to bridle's resolver, which
//! forwards them to the same dnsmasq, installs the answered address in the kernel maps and only
//! then answers. The two run in the same round, in rotating order, and both are timed by the
//! same probe, so the difference is what the resolver path costs.

use super::{check_interrupted, measure_n, order, Ctx, Figure, Report};
use anyhow::{bail, Context, Result};
use std::{
    fs,
    io::Read as _,
    net::UdpSocket,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Queries per measurement: enough that the p99 is the 30th slowest, not one outlier.
const QUERIES: u32 = 3_000;
/// The name asked for: the policy allows it and dnsmasq answers it from its own records, so no
/// query ever leaves the machine.
const NAME: &str = "allowed.bench.test";
/// The address dnsmasq answers with (TEST-NET-1: nothing is ever connected to it).
const ADDRESS: &str = "192.0.2.10";
/// Where the benchmark's dnsmasq listens.
const DNSMASQ_IP: &str = "127.0.0.1";
/// Where dnsmasq is installed (`cargo xtask setup` installs it, as the tests use it).
const DNSMASQ: &str = "/usr/sbin/dnsmasq";
/// Goal from the issue: what the resolver may add to the median answer.
const GOAL_P50_US: f64 = 100.0;
/// Goal from the issue: what the resolver may add to the 99th-percentile answer.
const GOAL_P99_US: f64 = 300.0;

/// The benchmark's dnsmasq: killed by pid and reaped when dropped, on every exit path.
struct Dnsmasq {
    child: Child,
    /// `ADDR:PORT` it answers on.
    addr: String,
}

impl Dnsmasq {
    /// Starts one serving `NAME` on a free loopback port; returns it once it answers.
    fn start(probe: &Path) -> Result<Self> {
        if !Path::new(DNSMASQ).exists() {
            bail!(
                "the dns benchmark needs dnsmasq as the upstream, and {DNSMASQ} does not exist: \
                 run `cargo xtask setup` (it installs dnsmasq-base)"
            );
        }
        // Bound for a moment to find a free number, then released for dnsmasq.
        let port = UdpSocket::bind(format!("{DNSMASQ_IP}:0"))?
            .local_addr()?
            .port();
        let child = Command::new(DNSMASQ)
            .args([
                "--no-daemon",
                "--keep-in-foreground",
                // No configuration file, no resolv.conf, no /etc/hosts: it answers only the
                // record below and forwards nothing.
                "-C",
                "/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--pid-file=",
                "--user=root",
                &format!("--listen-address={DNSMASQ_IP}"),
                &format!("--port={port}"),
                &format!("--address=/{NAME}/{ADDRESS}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Read only if it exits at start-up (a port taken in the meantime); it logs
            // nothing else there, so the pipe never fills.
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {DNSMASQ}"))?;
        // The guard exists before anything else can fail.
        let mut me = Dnsmasq {
            child,
            addr: format!("{DNSMASQ_IP}:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            check_interrupted()?;
            // One query through the probe's own checks: ready once it answers NOERROR with
            // the record.
            let ok = Command::new(probe)
                .args(["dns-latency", &me.addr, NAME, "1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(me);
            }
            if let Ok(Some(status)) = me.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = me.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                bail!("dnsmasq ended at start-up ({status}): {}", err.trim());
            }
            if Instant::now() > deadline {
                bail!("dnsmasq did not answer on {} within 10 s", me.addr);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        // Child::kill signals this child's pid, never a process found by name.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The workload's policy: the probe may run, and `NAME` is allowed by a host rule (the port
/// does not matter; nothing connects).
fn policy(probe: &Path) -> String {
    format!(
        "name = \"bench-dns\"\ndefault = \"refuse\"\n\n[[rule]]\nname = \"probe\"\neffect = \"permit\"\nexec = [\"{}\"]\n\n[[rule]]\nname = \"name\"\neffect = \"permit\"\nconnect = [\"{NAME}:443\"]\n",
        probe.display()
    )
}

/// Runs the DNS benchmark.
pub fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    println!("bench: dns (resolver answer latency)");
    let dns = Dnsmasq::start(&ctx.probe)?;
    let policy_file = ctx.scratch.join("dns.toml");
    fs::write(&policy_file, policy(&ctx.probe))?;
    let queries = QUERIES.to_string();
    // Inside the workload the probe asks the usual DNS port of a loopback address; the kernel
    // sends it to bridle's resolver whatever the address (nothing need listen there).
    let direct_args = ["dns-latency", dns.addr.as_str(), NAME, queries.as_str()];
    let confined_args = ["dns-latency", "127.0.0.1:53", NAME, queries.as_str()];

    let direct_label = "DNS answer, dnsmasq directly";
    let through_label = "DNS answer, through bridle's resolver";
    let mut direct = [
        Figure::new("dns", format!("{direct_label}, p50"), "µs"),
        Figure::new("dns", format!("{direct_label}, p99"), "µs"),
    ];
    let mut through = [
        Figure::new("dns", format!("{through_label}, p50"), "µs"),
        Figure::new("dns", format!("{through_label}, p99"), "µs"),
    ];
    for round in 0..ctx.rounds {
        println!("bench: dns round {}/{}", round + 1, ctx.rounds);
        for i in order(2, round) {
            check_interrupted()?;
            if i == 0 {
                let (values, _) = measure_n::<2>(&mut ctx.bare(&direct_args))?;
                for (f, v) in direct.iter_mut().zip(values) {
                    f.samples.push(v);
                }
            } else {
                let options = ["--dns-upstream", dns.addr.as_str()];
                let mut cmd = ctx.confined_with(&policy_file, &options, &confined_args);
                let (values, _) = measure_n::<2>(&mut cmd)?;
                for (f, v) in through.iter_mut().zip(values) {
                    f.samples.push(v);
                }
            }
        }
    }
    drop(dns);

    // What the resolver adds, round by round: the difference of two runs minutes apart at
    // most, so load that drifts over the whole run does not enter it.
    let mut added = vec![];
    for (k, (pct, goal)) in [("p50", GOAL_P50_US), ("p99", GOAL_P99_US)]
        .into_iter()
        .enumerate()
    {
        let mut f = Figure::new("dns", format!("added by the resolver, {pct}"), "µs");
        f.samples = through[k]
            .samples
            .iter()
            .zip(&direct[k].samples)
            // To the probe's own resolution (0.1 µs), so the CSV shows no float residue.
            .map(|(t, d)| ((t - d) * 10.0).round() / 10.0)
            .collect();
        f.remark = format!("goal ≤ {goal:.0} µs");
        added.push(f);
    }
    let [direct_p50, direct_p99] = direct;
    let [through_p50, through_p99] = through;
    let (ref_p50, ref_p99) = (direct_p50.name.clone(), direct_p99.name.clone());
    report.add([
        direct_p50,
        direct_p99,
        through_p50.against(&ref_p50),
        through_p99.against(&ref_p99),
    ]);
    report.add(added);
    report.note(
        "dns",
        format!(
            "{} sequential UDP queries (type A) for an allowed name per measurement, from one \
             connected socket of bridle-probe; each is timed from its send to its answer, and \
             every answer must be a NOERROR response to that query with the A record (a refused \
             or failed one fails the run). Directly: to a dnsmasq on loopback answering from a \
             local record. Through bridle: the same probe inside `bridle run --standalone \
             --dns-upstream` that dnsmasq, asking 127.0.0.1:53; the kernel sends the query to \
             the workload's resolver, which checks the name against the policy's host rule, \
             forwards it, writes the kernel entry of the answered address and then answers. \
             Added: the per-round difference of the two percentiles.",
            super::connect::thousands(QUERIES as usize)
        ),
    );
    report.note(
        "dns",
        "A query is a chain of wake-ups: directly two (dnsmasq, then the probe); through \
         bridle four (the resolver's worker that receives the query, dnsmasq, the worker \
         again, the probe). Where waking an idle CPU is slow (virtual machines, whose idle vCPUs \
         halt), a wake-up that crosses CPUs costs tens of µs and one on the same CPU a few, so \
         these figures depend on where the scheduler places the threads, and one round's \
         direct figure can be several times another's; the per-round difference and its spread \
         show how much.",
    );
    Ok(())
}
