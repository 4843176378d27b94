//! The daemon: the time from its start to enforcing (READY=1, sent once every configured
//! workload is confined), its resident memory, and the latency of a reload, each with a policy
//! of 10 and of 10,000 rules.

use super::{cgroup2_root, check_interrupted, monotonic_ns, order, Figure, Report};
use anyhow::{bail, Context, Result};
use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Write as _},
    os::unix::net::{UnixDatagram, UnixStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Rule counts of the policies.
const SIZES: [usize; 2] = [10, 10_000];
/// Longest a start or a reload may take before the run fails.
const PATIENCE: Duration = Duration::from_secs(300);

/// A policy of `n` rules, each permitting one address (so each is one signed permit and one
/// entry in the kernel's address trie).
fn policy(n: usize) -> String {
    let mut text = format!("name = \"bench-daemon-{n}\"\ndefault = \"refuse\"\n");
    for i in 0..n {
        let _ = write!(
            text,
            "\n[[rule]]\nname = \"rule-{i}\"\neffect = \"permit\"\nconnect = [\"10.{}.{}.{}:443\"]\n",
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        );
    }
    text
}

/// One daemon under test, with its cgroup, pins and socket; everything goes when dropped.
struct DaemonUnderTest {
    child: Option<Child>,
    bin: PathBuf,
    pin_dir: PathBuf,
    socket: PathBuf,
    cgroup_parent: PathBuf,
}

impl DaemonUnderTest {
    /// Starts the daemon on a config that confines one cgroup with `policy`; returns it once
    /// it said READY=1, with the time that took.
    fn start(bin: &Path, dir: &Path, policy: &str, tag: &str) -> Result<(Self, f64)> {
        let name = format!(
            "{}_daemon_{tag}_{}",
            super::BENCH_CGROUP_PREFIX,
            std::process::id()
        );
        let cgroup_parent = cgroup2_root()?.join(&name);
        fs::create_dir_all(cgroup_parent.join("w"))
            .with_context(|| format!("creating {}", cgroup_parent.display()))?;
        let policies = dir.join("policies");
        fs::create_dir_all(&policies)?;
        fs::write(policies.join("p.toml"), policy)?;
        let config = dir.join("bridle.toml");
        fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\npolicy_dir = \"{}\"\n\n[[confine]]\ncgroup = \"{name}/*\"\npolicy = \"p\"\n",
                dir.join("state").display(),
                policies.display()
            ),
        )?;
        let notify_path = dir.join("notify.sock");
        let _ = fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).context("binding a notify socket")?;
        notify.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut me = DaemonUnderTest {
            child: None,
            bin: bin.to_path_buf(),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/{name}")),
            socket: dir.join("ctl.sock"),
            cgroup_parent,
        };
        let t0 = monotonic_ns();
        me.child = Some(
            Command::new(bin)
                .arg("daemon")
                .arg("--config")
                .arg(&config)
                .arg("--pin-dir")
                .arg(&me.pin_dir)
                .arg("--socket")
                .arg(&me.socket)
                .env("NOTIFY_SOCKET", &notify_path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting bridle daemon")?,
        );
        let deadline = Instant::now() + PATIENCE;
        let mut buf = [0u8; 4096];
        loop {
            check_interrupted()?;
            if let Ok(n) = notify.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
                {
                    break;
                }
            }
            if let Some(Ok(Some(status))) = me.child.as_mut().map(Child::try_wait) {
                bail!("bridle daemon ended before it was ready ({status})");
            }
            if Instant::now() > deadline {
                bail!("bridle daemon was not ready within {PATIENCE:?}");
            }
        }
        let took = monotonic_ns().saturating_sub(t0) as f64 / 1_000_000.0;
        Ok((me, took))
    }

    /// The daemon's resident memory now, in MiB.
    fn rss_mib(&self) -> Result<f64> {
        let pid = self.child.as_ref().map(Child::id).context("no daemon")?;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .context("no VmRSS in /proc/PID/status")?;
        Ok(kib / 1024.0)
    }

    /// Asks for a reload over the control socket; returns how long the answer took, in ms.
    fn reload(&self) -> Result<f64> {
        let t0 = monotonic_ns();
        let mut stream = UnixStream::connect(&self.socket)
            .with_context(|| format!("connecting to {}", self.socket.display()))?;
        stream.set_read_timeout(Some(PATIENCE))?;
        stream.write_all(b"{\"cmd\":\"reload\"}\n")?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        let took = monotonic_ns().saturating_sub(t0) as f64 / 1_000_000.0;
        if !line.contains("\"ok\":true") {
            bail!("the reload failed: {line}");
        }
        Ok(took)
    }
}

impl Drop for DaemonUnderTest {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own unreaped child by pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(&self.bin)
            .args(["unload", "--pin-dir"])
            .arg(&self.pin_dir)
            .arg("--socket")
            .arg(&self.socket)
            .stdout(Stdio::null())
            .status();
        super::remove_cgroup(&self.cgroup_parent);
    }
}

/// Runs the daemon benchmarks.
pub fn run(bin: &Path, scratch: &Path, rounds: usize, report: &mut Report) -> Result<()> {
    println!("bench: daemon");
    let mut start = vec![];
    let mut rss = vec![];
    let mut reload = vec![];
    let mut changed = vec![];
    for n in SIZES {
        let label = format!("{} rules", super::connect::thousands(n));
        start.push(Figure::new(
            "daemon",
            format!("daemon start to enforcing, {label}"),
            "ms",
        ));
        rss.push(Figure::new(
            "daemon",
            format!("daemon resident memory, {label}"),
            "MiB",
        ));
        reload.push(Figure::new(
            "daemon",
            format!("reload, {label}, unchanged"),
            "ms",
        ));
        changed.push(Figure::new(
            "daemon",
            format!("reload, {label}, one rule changed"),
            "ms",
        ));
    }
    let policies: Vec<String> = SIZES.iter().map(|&n| policy(n)).collect();
    for round in 0..rounds {
        println!("bench: daemon round {}/{}", round + 1, rounds);
        for i in order(SIZES.len(), round) {
            check_interrupted()?;
            let dir = scratch.join(format!("daemon-{round}-{i}"));
            fs::create_dir_all(&dir)?;
            let (daemon, took) =
                DaemonUnderTest::start(bin, &dir, &policies[i], &SIZES[i].to_string())?;
            start[i].samples.push(took);
            rss[i].samples.push(daemon.rss_mib()?);
            reload[i].samples.push(daemon.reload()?);
            // The port of the first rule's address changes: the file is parsed again.
            let edited = policies[i].replacen(":443\"]", ":444\"]", 1);
            fs::write(dir.join("policies").join("p.toml"), edited)?;
            changed[i].samples.push(daemon.reload()?);
            drop(daemon);
        }
    }
    report.add(
        start
            .into_iter()
            .chain(rss)
            .chain(reload)
            .chain(changed)
            .collect::<Vec<_>>(),
    );
    report.note(
        "daemon",
        "Start to enforcing: from just before `bridle daemon` is spawned to its READY=1 on a real \
         notify socket, which it sends once the configured workload is confined (programs loaded, \
         exec tier probed, policy compiled, permits signed, entries written, links attached and \
         pinned). Memory: VmRSS once ready. Reload: one reload request on the control socket, \
         answered once every workload runs on its re-read policy. Unchanged: the file's bytes, \
         the invariants and the resolved exec files are what they were, so the workload keeps \
         its slot and permits (the reload reads and hashes the file, resolves the exec files and \
         compares the entries). One rule changed: the file is parsed, indexed and compiled, \
         every permit signed and stored while every entry is written under a new slot, the \
         workload switched to it; the old slot's entries are removed after the answer. Each \
         rule permits one address: one signed permit and one address-trie entry per rule.",
    );
    Ok(())
}
