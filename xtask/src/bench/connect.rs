//! Connect from a workload: bare, bridle with 10 / 1,000 / 100,000 entries, and nftables
//! `socket cgroupv2` with the same rules, linear and as a set.
//!
//! The targets are closed loopback ports: the kernel answers at once (ECONNREFUSED, or an ICMP
//! port unreachable for UDP), so the figure is the connect path itself with no peer work in it.
//! Every configuration permits the target, so every operation pays the full lookup.

use super::{check_interrupted, measure, order, BenchCgroup, Ctx, Figure, Report};
use anyhow::{Context, Result};
use std::{
    fmt::Write as _,
    fs,
    net::{TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
};

/// Operations per measurement (fewer for the slow configurations, see `count`).
const OPS: u32 = 20_000;
/// Entry counts compared.
const SIZES: [usize; 3] = [10, 1_000, 100_000];
/// Connect objects per policy rule: one permit is signed per rule (about 1.5 ms each with the
/// hybrid signature), so 100,000 entries are 100 rules of 1,000 objects, not 100,000 rules.
const OBJECTS_PER_RULE: usize = 1_000;
/// The nftables table the benchmark owns.
pub const NFT_TABLE: &str = "bridle_bench";
/// The cgroup the nftables runs confine the workload in.
const NFT_CGROUP: &str = "bridle_bench_nft";

#[derive(Clone, Copy)]
enum Mech {
    Bare,
    Bridle(usize),
    NftLinear(usize),
    NftSet(usize),
}

impl Mech {
    fn label(self) -> String {
        match self {
            Mech::Bare => "bare".into(),
            Mech::Bridle(n) => format!("bridle, {} entries", thousands(n)),
            Mech::NftLinear(n) => format!("nftables linear, {} rules", thousands(n)),
            Mech::NftSet(n) => format!("nftables set, {} elements", thousands(n)),
        }
    }

    /// Operations per measurement: a linear nftables chain costs in proportion to its length,
    /// so its rounds are shortened to keep the run's length bounded.
    fn count(self) -> u32 {
        match self {
            Mech::NftLinear(n) if n > 1_000 => (OPS as usize * 1_000 / n).max(100) as u32,
            _ => OPS,
        }
    }
}

/// Deletes the benchmark's nftables table if it exists.
pub fn delete_nft_table() {
    let _ = Command::new("nft")
        .args(["delete", "table", "inet", NFT_TABLE])
        .stderr(std::process::Stdio::null())
        .status();
}

/// The loaded nftables table: deleted when dropped.
struct NftTable;

impl NftTable {
    fn load(file: &Path) -> Result<Self> {
        delete_nft_table();
        let status = Command::new("nft")
            .arg("-f")
            .arg(file)
            .status()
            .context("running nft")?;
        // Whatever happened, the guard deletes what may have been created.
        let table = NftTable;
        anyhow::ensure!(status.success(), "nft -f {} failed", file.display());
        Ok(table)
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        delete_nft_table();
    }
}

/// Runs the connect benchmarks.
pub fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    println!("bench: connect (TCP and UDP)");
    // Closed ports: bound for a moment to find free numbers, then released.
    let tcp_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let udp_port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let tcp = format!("127.0.0.1:{tcp_port}");
    let udp = format!("127.0.0.1:{udp_port}");

    let mut mechs = vec![Mech::Bare];
    mechs.extend(SIZES.iter().map(|&n| Mech::Bridle(n)));
    // nft resolves `socket cgroupv2` paths under /sys/fs/cgroup, so the cgroup must be
    // reachable from there (a hybrid layout mounts cgroup v2 at /sys/fs/cgroup/unified).
    let root = super::cgroup2_root()?;
    let nft_path = root
        .strip_prefix("/sys/fs/cgroup")
        .ok()
        .map(|rel| rel.join(NFT_CGROUP));
    let nft_ok = Command::new("nft").arg("--version").output().is_ok();
    let cgroup = match (&nft_path, nft_ok) {
        (Some(_), true) => {
            mechs.extend(SIZES.iter().map(|&n| Mech::NftLinear(n)));
            mechs.extend(SIZES.iter().map(|&n| Mech::NftSet(n)));
            Some(BenchCgroup::create(NFT_CGROUP)?)
        }
        _ => {
            report.note(
                "connect",
                format!(
                    "nftables peer skipped: {}",
                    if nft_ok {
                        "cgroup v2 is not mounted under /sys/fs/cgroup, where nft looks"
                    } else {
                        "nft is not installed"
                    }
                ),
            );
            None
        }
    };

    let mut files: Vec<PathBuf> = vec![];
    for &m in &mechs {
        let file = match m {
            Mech::Bare => PathBuf::new(),
            Mech::Bridle(n) => {
                let f = ctx.scratch.join(format!("connect-{n}.toml"));
                fs::write(&f, bridle_policy(&ctx.probe, tcp_port, udp_port, n))?;
                f
            }
            Mech::NftLinear(n) | Mech::NftSet(n) => {
                let f = ctx
                    .scratch
                    .join(format!("connect-{}.nft", m.label().replace(' ', "_")));
                let path = nft_path.as_ref().map(|p| p.display().to_string());
                let set = matches!(m, Mech::NftSet(_));
                fs::write(
                    &f,
                    nft_rules(&path.unwrap_or_default(), tcp_port, udp_port, n, set),
                )?;
                f
            }
        };
        files.push(file);
    }

    let mut tcp_figs: Vec<Figure> = mechs
        .iter()
        .map(|m| Figure::new("connect", format!("TCP connect, {}", m.label()), "µs"))
        .collect();
    let mut udp_figs: Vec<Figure> = mechs
        .iter()
        .map(|m| {
            Figure::new(
                "connect",
                format!("UDP connect + send, {}", m.label()),
                "µs",
            )
        })
        .collect();
    let mut lost: u64 = 0;
    for round in 0..ctx.rounds {
        println!("bench: connect round {}/{}", round + 1, ctx.rounds);
        for i in order(mechs.len(), round) {
            check_interrupted()?;
            let m = mechs[i];
            let n = m.count().to_string();
            let _table = match m {
                Mech::NftLinear(_) | Mech::NftSet(_) => Some(NftTable::load(&files[i])?),
                _ => None,
            };
            for (figs, args) in [
                (&mut tcp_figs, ["connect-loop", tcp.as_str(), n.as_str()]),
                (&mut udp_figs, ["udp-loop", udp.as_str(), n.as_str()]),
            ] {
                let mut cmd = match m {
                    Mech::Bridle(_) => ctx.confined(&files[i], &args),
                    _ => ctx.bare(&args),
                };
                if let (Mech::NftLinear(_) | Mech::NftSet(_), Some(cg)) = (m, &cgroup) {
                    cg.enter(&mut cmd)?;
                }
                let (ns, stderr) = measure(&mut cmd)?;
                lost += super::lost_events(&stderr);
                figs[i].samples.push(ns / 1000.0);
            }
        }
    }
    // The goal is stated against the nftables set in the same run, so say it directly.
    let mut versus_set = vec![];
    for n in SIZES {
        let at = |want: fn(usize) -> Mech| mechs.iter().position(|m| m.label() == want(n).label());
        if let (Some(b), Some(s)) = (at(Mech::Bridle), at(Mech::NftSet)) {
            versus_set.push(format!(
                "{} entries: TCP {:.3}×, UDP {:.3}×",
                thousands(n),
                tcp_figs[b].median() / tcp_figs[s].median(),
                udp_figs[b].median() / udp_figs[s].median()
            ));
        }
    }
    if !versus_set.is_empty() {
        report.note(
            "connect",
            format!(
                "bridle against the nftables set of the same size, medians of this run: {}.",
                versus_set.join("; ")
            ),
        );
    }
    let bare_tcp = tcp_figs[0].name.clone();
    let bare_udp = udp_figs[0].name.clone();
    let tcp_figs =
        tcp_figs.into_iter().enumerate().map(
            |(i, f)| {
                if i == 0 {
                    f
                } else {
                    f.against(&bare_tcp)
                }
            },
        );
    let udp_figs =
        udp_figs.into_iter().enumerate().map(
            |(i, f)| {
                if i == 0 {
                    f
                } else {
                    f.against(&bare_udp)
                }
            },
        );
    report.add(tcp_figs.chain(udp_figs).collect::<Vec<_>>());
    report.note(
        "connect",
        format!(
            "Targets are closed loopback ports (TCP {tcp_port}, UDP {udp_port}); every \
             configuration permits them. bridle entries are /32 hosts in 10.0.0.0/8 port 443 plus \
             the targets, in rules of {} connect objects (one signed permit per \
             rule). nftables: a `socket cgroupv2` jump to a chain of `ip daddr A th dport P \
             accept` rules with the target last (the worst case of a linear chain), or one \
             `ip daddr . th dport` set lookup, then `reject`. A linear chain of more than 1,000 \
             rules runs fewer operations per round (at least 100).",
            thousands(OBJECTS_PER_RULE)
        ),
    );
    report.note(
        "connect",
        format!(
            "bridle audits every permitted connect: the first of each workload, process, \
             destination and rule per second as an event, the repeats as counts the kernel keeps \
             and `bridle run` writes as one counted record per second. Events lost to a full \
             ring buffer during these runs: {lost} (counted by the kernel and reported by \
             `bridle run`; enforcement never depends on them)."
        ),
    );
    drop(cgroup);
    Ok(())
}

/// A policy with `n` connect objects: the two targets and `n - 2` fillers, plus the exec rule
/// the workload itself needs.
pub fn bridle_policy(probe: &Path, tcp_port: u16, udp_port: u16, n: usize) -> String {
    let mut text = format!(
        "name = \"bench\"\ndefault = \"refuse\"\n\n[[rule]]\nname = \"probe\"\neffect = \"permit\"\nexec = [\"{}\"]\n\n[[rule]]\nname = \"target\"\neffect = \"permit\"\nconnect = [\"127.0.0.1:{tcp_port}\", \"127.0.0.1:{udp_port}\"]\n",
        probe.display()
    );
    let fillers: Vec<usize> = (1..=n.saturating_sub(2)).collect();
    for (r, chunk) in fillers.chunks(OBJECTS_PER_RULE).enumerate() {
        let _ = write!(
            text,
            "\n[[rule]]\nname = \"filler-{r}\"\neffect = \"permit\"\nconnect = ["
        );
        for (k, &i) in chunk.iter().enumerate() {
            let sep = if k == 0 { "" } else { ", " };
            let _ = write!(text, "{sep}\"{}:443\"", filler(i));
        }
        text.push_str("]\n");
    }
    text
}

/// The `i`th filler host: distinct /32s in 10.0.0.0/8.
fn filler(i: usize) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)
}

/// The nftables ruleset with the same `n` rules, for the workload in cgroup `path`.
fn nft_rules(path: &str, tcp_port: u16, udp_port: u16, n: usize, set: bool) -> String {
    let mut t = format!(
        "table inet {NFT_TABLE} {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    socket cgroupv2 level 1 \"{path}\" jump confined\n  }}\n"
    );
    let fillers = 1..=n.saturating_sub(2);
    if set {
        t.push_str("  set allowed {\n    type ipv4_addr . inet_service\n    elements = {\n");
        for i in fillers {
            let _ = writeln!(t, "      {} . 443,", filler(i));
        }
        let _ = writeln!(
            t,
            "      127.0.0.1 . {tcp_port},\n      127.0.0.1 . {udp_port}\n    }}\n  }}"
        );
        t.push_str(
            "  chain confined {\n    ip daddr . th dport @allowed accept\n    reject\n  }\n}\n",
        );
    } else {
        t.push_str("  chain confined {\n");
        for i in fillers {
            let _ = writeln!(t, "    ip daddr {} th dport 443 accept", filler(i));
        }
        let _ = writeln!(
            t,
            "    ip daddr 127.0.0.1 th dport {tcp_port} accept\n    ip daddr 127.0.0.1 th dport {udp_port} accept\n    reject\n  }}\n}}"
        );
    }
    t
}

/// `100000` as `100,000`.
pub fn thousands(n: usize) -> String {
    super::report::group_digits(&n.to_string())
}
