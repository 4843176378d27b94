//! `cargo xtask setup`: install what a fresh machine lacks, idempotently, and say what was done.

use anyhow::{bail, Context, Result};
use std::{ffi::OsString, path::PathBuf, process::Command};

/// The LLVM major version bpf-linker and clang must share with the nightly rustc.
const LLVM_MAJOR: &str = "22";

/// Debian packages: LLVM for bpf-linker, clang for the CO-RE accessors, bpftool to inspect
/// what is loaded, and the real peers the tests and benchmarks use.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "clang-22",
    "bpftool",
    "dnsmasq-base",
    "nftables",
];

/// What only the kernel matrix (`cargo xtask test --kernels`) needs, installed on its first
/// use so that the other tasks never need an emulator.
const MATRIX_APT_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static"];

/// The Rust target the matrix builds its static guest binaries for.
pub const MATRIX_TARGET: &str = "x86_64-unknown-linux-musl";

/// Installs what the kernel matrix needs and is missing: qemu, a static busybox and the musl
/// target for the default toolchain.
pub fn ensure_kernel_matrix() -> Result<()> {
    let apt: Vec<&str> = MATRIX_APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !apt.is_empty() {
        if !is_debian_like() {
            bail!("install these yourself, then run again: {}", apt.join(" "));
        }
        println!("xtask setup: installing apt packages: {}", apt.join(" "));
        crate::run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&apt)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == MATRIX_TARGET)
        })
        .unwrap_or(false);
    if !installed {
        println!("xtask setup: adding the {MATRIX_TARGET} target");
        crate::run_cmd(Command::new("rustup").args(["target", "add", MATRIX_TARGET]))?;
    }
    Ok(())
}

/// PATH with cargo's bin directory and LLVM 22 in front, as bpf-linker's build and use need.
pub fn tool_path() -> OsString {
    let mut parts: Vec<PathBuf> = vec![cargo_bin(), PathBuf::from("/usr/lib/llvm-22/bin")];
    if let Some(path) = std::env::var_os("PATH") {
        parts.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(parts).unwrap_or_default()
}

fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// What is missing, without installing anything.
fn missing() -> Result<Vec<String>> {
    let mut out = Vec::new();
    for pkg in APT_PACKAGES {
        if !dpkg_installed(pkg) {
            out.push(format!("apt:{pkg}"));
        }
    }
    if !rust_src_installed() {
        out.push("rustup:rust-src (nightly)".to_owned());
    }
    if !bpf_linker_ok() {
        out.push("cargo:bpf-linker (LLVM 22)".to_owned());
    }
    Ok(out)
}

/// Installs what is missing; quiet and fast when nothing is.
pub fn ensure() -> Result<()> {
    if missing()?.is_empty() {
        return Ok(());
    }
    run()
}

/// `cargo xtask setup`.
pub fn run() -> Result<()> {
    let todo = missing()?;
    if todo.is_empty() {
        println!("xtask setup: nothing to do, every tool is installed");
        return Ok(());
    }
    check_nightly_llvm()?;
    let apt: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !apt.is_empty() {
        if !is_debian_like() {
            bail!(
                "this is not a Debian or Ubuntu system; install these yourself, then run again:\n  \
                 {}\n  rust-src for the nightly toolchain (rustup component add rust-src --toolchain nightly)\n  \
                 bpf-linker built against LLVM {LLVM_MAJOR} (cargo install bpf-linker --no-default-features --features llvm-{LLVM_MAJOR})",
                apt.join(" ")
            );
        }
        println!("xtask setup: installing apt packages: {}", apt.join(" "));
        crate::run_cmd(Command::new("apt-get").arg("update").arg("-q"))?;
        crate::run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&apt)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    if !rust_src_installed() {
        println!("xtask setup: adding rust-src to the nightly toolchain");
        crate::run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    if !bpf_linker_ok() {
        println!("xtask setup: building bpf-linker against LLVM {LLVM_MAJOR}");
        crate::run_cmd(
            Command::new("cargo")
                .args([
                    "install",
                    "bpf-linker",
                    "--locked",
                    "--version",
                    "0.13.0",
                    "--no-default-features",
                    "--features",
                ])
                .arg(format!("llvm-{LLVM_MAJOR}"))
                .env("PATH", tool_path()),
        )?;
    }
    let left = missing()?;
    if !left.is_empty() {
        bail!("still missing after setup: {}", left.join(", "));
    }
    println!("xtask setup: done");
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
        .unwrap_or(false)
}

fn rust_src_installed() -> bool {
    Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("rust-src"))
        })
        .unwrap_or(false)
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .env("PATH", tool_path())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn is_debian_like() -> bool {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines().any(|l| {
        (l.starts_with("ID=") || l.starts_with("ID_LIKE="))
            && (l.contains("debian") || l.contains("ubuntu"))
    })
}

/// bpf-linker links the nightly's LLVM bitcode: their LLVM majors must agree.
fn check_nightly_llvm() -> Result<()> {
    let out = Command::new("rustup")
        .args(["run", "nightly", "rustc", "-vV"])
        .output()
        .context("running the nightly rustc (is a nightly toolchain installed? `rustup toolchain install nightly`)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let llvm = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .unwrap_or("unknown");
    if !llvm.starts_with(&format!("{LLVM_MAJOR}.")) {
        bail!(
            "the nightly toolchain is built on LLVM {llvm}, but bpf-linker and clang here use LLVM {LLVM_MAJOR}; \
             install a nightly built on LLVM {LLVM_MAJOR}"
        );
    }
    Ok(())
}
