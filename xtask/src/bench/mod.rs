//! `cargo xtask bench`: what bridle costs a workload, against the bare kernel and the tools
//! people use today (nftables, Landlock), in one run.
//!
//! Every figure is the median of interleaved rounds: within a round every configuration runs
//! once, in an order that rotates from round to round, so machine noise (these machines are
//! shared) hits the reference and the measured configurations alike. Ratios are always taken
//! against a reference measured in the same run. The report goes to `target/bench/report.md`
//! and `target/bench/report.csv`.
//!
//! Knobs (environment): `BRIDLE_BENCH_ROUNDS` (default 5, at least 5 for a published table)
//! and `BRIDLE_BENCH_ONLY` (comma-separated sections: connect, exec, events, startup, dns,
//! daemon, criterion) for working on one section.
//!
//! Everything the run creates (nftables table `bridle_bench`, cgroups, background processes
//! such as the DNS section's dnsmasq, the scratch state directory) is removed by guards on
//! every exit path, and leftovers of an interrupted earlier run are removed before starting.

mod connect;
mod criterion;
mod daemon;
mod dns;
mod events;
mod exec;
mod report;
mod startup;

use anyhow::{bail, Context, Result};
use report::{Figure, Report};
use std::{
    fs,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

/// What every section needs.
pub struct Ctx {
    /// The bridle binary.
    pub bin: PathBuf,
    /// The bridle-probe workload binary.
    pub probe: PathBuf,
    /// Scratch files (policies, nft rule files); removed at the end.
    pub scratch: PathBuf,
    /// bridle's state directory for the run (keys, permits, audit trail); removed at the end,
    /// so the benchmark leaves the host's own trail alone.
    pub state: PathBuf,
    /// Interleaved rounds per figure.
    pub rounds: usize,
}

impl Ctx {
    /// `bridle --state-dir STATE run --policy POLICY -- PROBE ARGS…` on the best exec tier.
    pub fn confined(&self, policy: &Path, args: &[&str]) -> Command {
        self.confined_on(policy, None, args)
    }

    /// The same, with the exec tier forced (`--exec-tier TIER`).
    pub fn confined_on(&self, policy: &Path, tier: Option<&str>, args: &[&str]) -> Command {
        match tier {
            Some(tier) => self.confined_with(policy, &["--exec-tier", tier], args),
            None => self.confined_with(policy, &[], args),
        }
    }

    /// The same, with more `bridle run` options (`--dns-upstream ADDR`, …), which must come
    /// before the workload's command.
    pub fn confined_with(&self, policy: &Path, options: &[&str], args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        // Standalone: a daemon running on the host must not take the measured runs over.
        c.arg("--state-dir")
            .arg(&self.state)
            .arg("run")
            .arg("--standalone")
            .args(options)
            .arg("--policy")
            .arg(policy)
            .arg("--")
            .arg(&self.probe)
            .args(args);
        c
    }

    /// `PROBE ARGS…`, outside any workload.
    pub fn bare(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.probe);
        c.args(args);
        c
    }
}

/// Set by SIGINT/SIGTERM: the run stops at the next measurement and cleans up. A handler, not
/// SIG_IGN, because an ignored signal stays ignored in the children, and Ctrl-C must still stop
/// the workload in flight.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Fails if the run was interrupted, so guards clean up on the way out.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Runs the benchmarks with the bridle binary at `bin`.
pub fn run(bin: &Path) -> Result<()> {
    if !crate::nix_is_root() {
        bail!("the benchmarks load eBPF programs, create cgroups and nftables tables: run as root");
    }
    // SAFETY: the handler only stores into an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_interrupt as *const () as libc::sighandler_t,
        );
    }
    let rounds = std::env::var("BRIDLE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5usize)
        .max(1);
    let only: Option<Vec<String>> = std::env::var("BRIDLE_BENCH_ONLY")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
    let wanted = |s: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == s));

    crate::run_cmd(crate::cargo().args([
        "build",
        "--release",
        "--package",
        "bridle-tests",
        "--bin",
        "bridle-probe",
    ]))?;
    let out_dir = crate::root().join("target/bench");
    fs::create_dir_all(&out_dir)?;
    remove_leftovers();
    let scratch = ScratchDir::create(out_dir.join("scratch"))?;
    let ctx = Ctx {
        bin: bin.to_path_buf(),
        probe: crate::root().join("target/release/bridle-probe"),
        scratch: scratch.0.clone(),
        state: scratch.0.join("state"),
        rounds,
    };
    fs::create_dir_all(&ctx.state)?;

    let mut report = Report::new(rounds);
    let started = Instant::now();
    if wanted("connect") {
        connect::run(&ctx, &mut report)?;
    }
    if wanted("exec") {
        exec::run(&ctx, &mut report)?;
    }
    if wanted("events") {
        events::run(&ctx, &mut report)?;
    }
    if wanted("startup") {
        startup::run(&ctx, &mut report)?;
    }
    if wanted("dns") {
        dns::run(&ctx, &mut report)?;
    }
    if wanted("criterion") {
        criterion::run(&mut report)?;
    }
    if wanted("daemon") {
        daemon::run(&ctx.bin, &ctx.scratch, ctx.rounds, &mut report)?;
    }
    let md = report.markdown(started.elapsed());
    fs::write(out_dir.join("report.md"), &md)?;
    fs::write(out_dir.join("report.csv"), report.csv())?;
    println!("{md}");
    println!("report written to target/bench/report.md and target/bench/report.csv");
    Ok(())
}

/// Runs a probe command and parses the one number it prints; also returns bridle's stderr.
pub fn measure(cmd: &mut Command) -> Result<(f64, String)> {
    let ([value], stderr) = measure_n::<1>(cmd)?;
    Ok((value, stderr))
}

/// Runs a probe command and parses the first `N` numbers it prints (a probe that measures
/// several figures in one run, such as two percentiles); also returns bridle's stderr.
pub fn measure_n<const N: usize>(cmd: &mut Command) -> Result<([f64; N], String)> {
    check_interrupted()?;
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // The probe says on stdout why it failed; bridle's own account is on stderr.
        bail!("{cmd:?} failed ({}): {text}{stderr}", out.status);
    }
    let mut values = [0.0; N];
    let mut words = text.split_whitespace();
    for value in &mut values {
        *value = words
            .next()
            .and_then(|w| w.parse::<f64>().ok())
            .with_context(|| format!("unexpected output from {cmd:?}: {text}"))?;
    }
    Ok((values, stderr))
}

/// The number of lost events bridle reported on stderr at exit (0 if it reported none).
pub fn lost_events(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter(|l| l.contains("decision events were lost"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.parse::<u64>().ok()))
        .sum()
}

/// The order of `n` configurations in `round`: rotated, so that none always runs first or
/// always follows the same neighbour.
pub fn order(n: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (i + round) % n)
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_root() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2") {
            if let Some(mount) = left.split_whitespace().nth(4) {
                return Ok(PathBuf::from(mount.replace("\\040", " ")));
            }
        }
    }
    bail!("no cgroup v2 hierarchy is mounted")
}

/// The CLOCK_MONOTONIC time in nanoseconds (the clock the probe stamps its start with).
pub fn monotonic_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: one valid timespec out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// A cgroup the benchmark created: its processes are killed and it is removed when dropped.
pub struct BenchCgroup {
    /// Its directory.
    pub path: PathBuf,
}

impl BenchCgroup {
    /// Creates `name` directly under the cgroup v2 root.
    pub fn create(name: &str) -> Result<Self> {
        let path = cgroup2_root()?.join(name);
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(BenchCgroup { path })
    }

    /// Makes `cmd` join this cgroup before it execs, so its sockets are born inside.
    pub fn enter(&self, cmd: &mut Command) -> Result<()> {
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))?;
        let fd = procs.as_raw_fd();
        // The closure owns the descriptor, so it stays open as long as the command can spawn;
        // it is CLOEXEC, so the workload never inherits it.
        // SAFETY: the closure runs between fork and exec and only calls write(2).
        unsafe {
            cmd.pre_exec(move || {
                let _owned = &procs;
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.path);
    }
}

/// Kills whatever is left in the cgroup at `path` and removes it.
pub fn remove_cgroup(path: &Path) {
    if !path.exists() {
        return;
    }
    // Children first: a cgroup with children cannot be removed.
    if let Ok(entries) = fs::read_dir(path) {
        for child in entries.flatten().filter(|e| e.path().is_dir()) {
            remove_cgroup(&child.path());
        }
    }
    let _ = fs::write(path.join("cgroup.kill"), "1");
    for _ in 0..50 {
        if fs::remove_dir(path).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("xtask: warning: could not remove {}", path.display());
}

/// A background process (a bridle run holding a live workload): stopped by pid when dropped.
pub struct Background(pub Child);

impl Background {
    /// Starts `cmd` in the background, its output discarded.
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        check_interrupted()?;
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        Ok(Background(child))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGTERM (bridle then kills its workload and detaches), SIGKILL after 10 s; returns the
    /// stderr it wrote.
    pub fn stop(mut self) -> String {
        self.terminate();
        let mut err = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        err
    }

    fn terminate(&mut self) {
        if matches!(self.0.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: signalling our own unreaped child by pid.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Waits until `file` exists (the probe's `ready` stamp) and returns its contents.
pub fn wait_for_file(file: &Path, bg: &mut Background, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = fs::read_to_string(file) {
            return Ok(text);
        }
        if let Ok(Some(status)) = bg.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = bg.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            bail!("the workload ended before it was ready ({status}): {err}");
        }
        if Instant::now() > deadline {
            bail!("the workload was not ready within {timeout:?}");
        }
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The scratch directory; removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create(path: PathBuf) -> Result<Self> {
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)?;
        Ok(ScratchDir(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Removes what an interrupted earlier run may have left: the nftables table and the bench
/// cgroups (bridle's own run cgroups are bridle's to clean).
fn remove_leftovers() {
    connect::delete_nft_table();
    if let Ok(root) = cgroup2_root() {
        if let Ok(dir) = fs::read_dir(&root) {
            for entry in dir.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(BENCH_CGROUP_PREFIX)
                {
                    remove_cgroup(&entry.path());
                }
            }
        }
    }
}

/// Every cgroup the benchmark creates starts with this.
pub const BENCH_CGROUP_PREFIX: &str = "bridle_bench";
