//! `cargo xtask`: the one entry point for people and CI.
//!
//! `setup` installs what a fresh machine lacks; `build`, `run`, `demo` and `test` call it
//! themselves when a tool is missing, so the README's commands work on a new machine.

mod bench;
mod demo;
mod install;
mod kernels;
mod setup;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Build, set up, run and test bridle")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what is missing: LLVM 22 and clang, rust-src for nightly, bpf-linker, test peers.
    Setup,
    /// Release build; the binary ends at target/release/bridle.
    Build,
    /// Build, then run `bridle ARGS` (as root).
    Run {
        /// Arguments for bridle.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Confine a demo workload with the shipped default policy and show refusals live.
    Demo,
    /// fmt --check, clippy -D warnings, unit tests, then the root integration tests.
    Test {
        /// Instead: boot Debian's 6.1 and 6.12 kernels under qemu and run the exec suite on
        /// the BPF LSM tier in each (installs qemu and busybox on first use).
        #[arg(long)]
        kernels: bool,
    },
    /// Install the binary, the systemd unit, a default configuration and the policies.
    Install {
        /// Install under this directory instead of the running system.
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Measure what bridle costs a workload against the bare kernel; writes target/bench/.
    Bench,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::run(),
        Task::Build => build().map(|_| ()),
        Task::Run { args } => build().and_then(|bin| run_bridle(&bin, &args)),
        Task::Demo => build().and_then(|bin| demo::run(&bin)),
        Task::Install { root } => build().and_then(|bin| install::run(&bin, &root)),
        Task::Test { kernels: false } => test(),
        Task::Test { kernels: true } => setup::ensure().and_then(|()| kernels::run()),
        Task::Bench => build().and_then(|bin| bench::run(&bin)),
    };
    if let Err(err) = result {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command (in the workspace root unless the caller chose a directory), failing with its
/// name when it fails.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(root());
    }
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("running {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// `cargo` with the toolchain environment bridle's build needs (bpf-linker on PATH).
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.env("PATH", setup::tool_path());
    cmd
}

fn build() -> Result<PathBuf> {
    setup::ensure()?;
    run_cmd(cargo().args(["build", "--release", "--package", "bridle"]))?;
    Ok(root().join("target/release/bridle"))
}

fn run_bridle(bin: &Path, args: &[OsString]) -> Result<()> {
    if !nix_is_root() {
        bail!("bridle loads eBPF programs and needs root: run `sudo -E cargo xtask run -- …`");
    }
    let status = Command::new(bin)
        .args(args)
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}

/// Whether this process runs as root.
pub fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn test() -> Result<()> {
    setup::ensure()?;
    println!("xtask: formatting (cargo fmt --check)");
    run_cmd(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run_cmd(cargo().args([
        "fmt",
        "--manifest-path",
        "ebpf/Cargo.toml",
        "--all",
        "--",
        "--check",
    ]))?;
    println!("xtask: lints (cargo clippy --all-targets -- -D warnings)");
    run_cmd(cargo().args([
        "clippy",
        "--workspace",
        // The eBPF crate only builds for the BPF target (the build script checks it there).
        "--exclude",
        "bridle-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    println!("xtask: unit tests");
    run_cmd(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "bridle-ebpf",
        "--exclude",
        "bridle-tests",
    ]))?;
    println!("xtask: integration tests (root, real kernel)");
    let bin = build()?;
    if !nix_is_root() {
        let msg = "the integration tests load eBPF programs and need root";
        if std::env::var("CI").as_deref() == Ok("true") {
            bail!("{msg}; CI must run them as root");
        }
        eprintln!("xtask: {msg}: they will fail with that reason");
    }
    run_cmd(
        cargo()
            .args([
                "test",
                "--package",
                "bridle-tests",
                "--",
                "--test-threads=2",
            ])
            .env("BRIDLE_BIN", &bin),
    )
}
