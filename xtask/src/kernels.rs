//! `cargo xtask test --kernels`: the kernel matrix.
//!
//! Boots Debian's 6.1 and 6.12 kernels under `qemu-system-x86_64` (TCG: KVM does not run stock
//! kernels on these machines) with an initramfs holding busybox, a static `bridle`, the static
//! `bridle-probe` and `bridle-guest` (the exec suite), and fails unless the suite passes on the
//! BPF LSM tier in every guest. The same eBPF object (embedded in the one `bridle` binary) runs
//! on both kernels, so a CO-RE relocation that does not resolve on one of them shows here.
//!
//! Everything downloaded or built stays under `target/kernels/`: the kernel packages (fetched
//! with `apt-get download` once), the extracted `vmlinuz`, the initramfs and one console log
//! per kernel.

use anyhow::{bail, Context, Result};
use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Component, Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// The static target the guest binaries are built for (no libc needed in the guest).
const TARGET: &str = crate::setup::MATRIX_TARGET;

/// One kernel series of the matrix; the newest package apt offers for it is used.
struct Series {
    label: &'static str,
    /// `apt-cache search --names-only` regular expression.
    pattern: &'static str,
    /// The fixed start and end of the package name, to find a cached .deb offline.
    prefix: &'static str,
    suffix: &'static str,
}

const KERNELS: &[Series] = &[
    Series {
        label: "6.1",
        pattern: r"^linux-image-6\.1\.0-[0-9]+-amd64$",
        prefix: "linux-image-6.1.0-",
        suffix: "-amd64",
    },
    Series {
        label: "6.12",
        pattern: r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-amd64",
    },
];

/// The cases `bridle-guest` runs; a guest that reports fewer did not run them all.
const GUEST_CASES: u32 = 7;

/// Upper bound for one guest, boot to power-off (a good run takes well under a minute).
const GUEST_TIMEOUT_SECS: u32 = 300;

/// Host programs the guest suite execs as dynamic binaries: the loader and memfd cases need a
/// real dynamic ELF and its loader, which busybox (static) is not.
const HOST_PROGRAMS: &[&str] = &["/usr/bin/echo", "/usr/bin/touch", "/usr/bin/true"];

/// The guest's init: mounts what bridle needs, runs the suite, powers off. With `panic=-1`
/// on the command line a crashed init reboots, which `-no-reboot` turns into qemu exiting.
const INIT: &str = r#"#!/bin/sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox mount -t cgroup2 cgroup2 /sys/fs/cgroup
/bin/busybox mount -t bpf bpf /sys/fs/bpf
/bin/busybox mount -t securityfs securityfs /sys/kernel/security
/bin/busybox mount -t tmpfs tmpfs /tmp
echo "matrix: guest up"
/bin/bridle-guest
echo "matrix: guest suite exited $?"
/bin/busybox poweroff -f
"#;

/// Runs the matrix and fails unless every kernel passed.
pub fn run() -> Result<()> {
    let started = Instant::now();
    crate::setup::ensure_kernel_matrix()?;
    let dir = crate::root().join("target/kernels");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let mut kernels = Vec::new();
    for series in KERNELS {
        kernels.push(kernel(&dir, series)?);
    }

    println!("xtask: building static bridle, bridle-probe and bridle-guest ({TARGET})");
    crate::run_cmd(crate::cargo().args([
        "build",
        "--release",
        "--target",
        TARGET,
        "--package",
        "bridle",
        "--package",
        "bridle-tests",
        "--bin",
        "bridle",
        "--bin",
        "bridle-probe",
        "--bin",
        "bridle-guest",
    ]))?;
    let bins = crate::root().join("target").join(TARGET).join("release");
    let initrd = dir.join("initramfs.cpio");
    pack(&bins, &initrd)?;

    let mut results = Vec::new();
    for k in &kernels {
        results.push(boot(&dir, k, &initrd));
    }

    println!("xtask: kernel matrix (BPF LSM tier, {GUEST_CASES} cases per kernel)");
    let mut failed = 0;
    for (k, r) in kernels.iter().zip(&results) {
        match r {
            Ok(b) if b.passed == GUEST_CASES && b.failed == 0 => println!(
                "  {:<5} {:<40} PASS {}/{GUEST_CASES} in {:.1} s",
                k.label,
                k.package,
                b.passed,
                b.took.as_secs_f64()
            ),
            Ok(b) => {
                failed += 1;
                println!(
                    "  {:<5} {:<40} FAIL {} passed, {} failed in {:.1} s (log: {})",
                    k.label,
                    k.package,
                    b.passed,
                    b.failed,
                    b.took.as_secs_f64(),
                    b.log.display()
                );
            }
            Err(err) => {
                failed += 1;
                println!("  {:<5} {:<40} FAIL {err:#}", k.label, k.package);
            }
        }
    }
    println!(
        "xtask: kernel matrix took {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    if failed != 0 {
        bail!("the kernel matrix failed on {failed} kernel(s)");
    }
    Ok(())
}

/// One kernel of the matrix, ready to boot.
struct Kernel {
    label: &'static str,
    package: String,
    vmlinuz: PathBuf,
}

/// Finds the newest package matching `pattern`, downloads it once and extracts its vmlinuz.
fn kernel(dir: &Path, series: &Series) -> Result<Kernel> {
    let label = series.label;
    let package = newest_package(series.pattern)
        .or_else(|err| {
            // Offline: the newest package already downloaded will do.
            cached_package(dir, series).ok_or(err)
        })
        .with_context(|| format!("finding a Debian {label} kernel package"))?;
    let vmlinuz = dir.join(format!("{package}.vmlinuz"));
    if vmlinuz.exists() {
        return Ok(Kernel {
            label,
            package,
            vmlinuz,
        });
    }
    let deb = match find_deb(dir, &package) {
        Some(deb) => deb,
        None => {
            println!("xtask: downloading {package}");
            crate::run_cmd(
                Command::new("apt-get")
                    .args(["download", "-q"])
                    .arg(&package)
                    .current_dir(dir),
            )?;
            find_deb(dir, &package)
                .with_context(|| format!("apt-get download left no {package} .deb"))?
        }
    };
    // Only the kernel image is needed: extract ./boot into a scratch directory and keep
    // vmlinuz, not the several hundred megabytes of modules.
    let scratch = dir.join(format!("{package}.extract"));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)?;
    let extracted = (|| -> Result<()> {
        let tar = Command::new("sh")
            .arg("-c")
            .arg("dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" --wildcards './boot/vmlinuz-*'")
            .arg("sh")
            .arg(&deb)
            .arg(&scratch)
            .status()
            .context("running dpkg-deb | tar")?;
        if !tar.success() {
            bail!("extracting the kernel image from {} failed", deb.display());
        }
        let image = fs::read_dir(scratch.join("boot"))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
            .context("no vmlinuz in the package")?;
        fs::rename(&image, &vmlinuz)?;
        Ok(())
    })();
    let _ = fs::remove_dir_all(&scratch);
    extracted?;
    Ok(Kernel {
        label,
        package,
        vmlinuz,
    })
}

/// The newest package name apt offers for `pattern`, by version order.
fn newest_package(pattern: &str) -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", pattern])
        .output()
        .context("running apt-cache search")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    newest(names.iter().copied()).with_context(|| {
        format!("apt-cache search finds no package matching {pattern} (apt-get update?)")
    })
}

/// The newest name by the numbers in it (6.12.9 < 6.12.117, 6.1.0-9 < 6.1.0-56).
fn newest<'a>(names: impl Iterator<Item = &'a str>) -> Option<String> {
    names
        .max_by_key(|n| {
            n.split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<u64>().unwrap_or(0))
                .collect::<Vec<_>>()
        })
        .map(str::to_owned)
}

/// The newest package of `series` whose .deb is already in `dir`.
fn cached_package(dir: &Path, series: &Series) -> Option<String> {
    let names: Vec<String> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|f| f.split_once('_').map(|(n, _)| n.to_owned()))
        .filter(|n| n.starts_with(series.prefix) && n.ends_with(series.suffix))
        .collect();
    newest(names.iter().map(String::as_str))
}

/// The downloaded .deb of `package` in `dir` (apt names it `PACKAGE_VERSION_ARCH.deb`).
fn find_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
}

/// What one guest reported.
struct Booted {
    passed: u32,
    failed: u32,
    took: Duration,
    log: PathBuf,
}

/// Boots `k` with the initramfs, waits (bounded) for it to power off and reads the summary
/// line from its console.
fn boot(dir: &Path, k: &Kernel, initrd: &Path) -> Result<Booted> {
    let log = dir.join(format!("{}.console.log", k.package));
    let console = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    println!("xtask: booting {} (TCG)", k.package);
    let started = Instant::now();
    // `timeout` bounds qemu even if this process dies; the wait below bounds it again and
    // kills qemu by its pid, so no guest outlives the run.
    let mut child = Command::new("timeout")
        .args(["--kill-after=5", &GUEST_TIMEOUT_SECS.to_string()])
        .arg("qemu-system-x86_64")
        .args(["-accel", "tcg", "-kernel"])
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet",
            "-nographic",
            "-no-reboot",
            "-m",
            "1024",
            "-smp",
            "2",
        ])
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let limit = Duration::from_secs(u64::from(GUEST_TIMEOUT_SECS) + 15);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the guest did not power off within {} s (log: {})",
                limit.as_secs(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&fs::read(&log)?).replace('\r', "");
    let mut summary = None;
    let mut in_failure = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("matrix: SUMMARY ") {
            summary = Some(parse_summary(rest));
        }
        // Show the suite's own lines, and everything a failed case printed after its name.
        if line.starts_with("matrix: ") {
            in_failure = line.starts_with("matrix: FAIL ");
            println!("  [{}] {line}", k.label);
        } else if line.starts_with("  | ") || line.starts_with("  ! ") {
            // The next case's workload output (the guest prints it before the verdict): the
            // failure's own details, which carry the output too, have ended.
            in_failure = false;
        } else if in_failure {
            println!("  [{}]   {line}", k.label);
        }
    }
    let Some((passed, failed)) = summary else {
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "no summary from the guest (qemu {status}); console tail:\n{}\n(log: {})",
            tail.join("\n"),
            log.display()
        );
    };
    Ok(Booted {
        passed,
        failed,
        took,
        log,
    })
}

/// `passed=P failed=F kernel=…` → (P, F).
fn parse_summary(rest: &str) -> (u32, u32) {
    let field = |name: &str| {
        rest.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("passed="), field("failed="))
}

/// Packs the guest's root file system as a newc cpio archive (what the kernel unpacks into
/// its initial rootfs). Written here rather than with cpio(1) so that device nodes and
/// ownership need no root and no extra tool.
fn pack(bins: &Path, out: &Path) -> Result<()> {
    let mut cpio = Cpio::default();
    for d in [
        "bin",
        "dev",
        "etc",
        "proc",
        "sys",
        "tmp",
        "run",
        "usr",
        "usr/bin",
        "var",
        "var/tmp",
        "var/lib",
        "var/lib/bridle",
    ] {
        cpio.dir(d);
    }
    cpio.node("dev/console", 0o020600, 5, 1);
    cpio.node("dev/null", 0o020666, 1, 3);
    cpio.file("init", 0o755, INIT.as_bytes().to_vec());
    cpio.file("bin/busybox", 0o755, read("/bin/busybox")?);
    for applet in [
        "sh", "mount", "umount", "poweroff", "cat", "ls", "mkdir", "rm", "cp", "mv",
    ] {
        cpio.symlink(&format!("bin/{applet}"), "busybox");
    }
    for bin in ["bridle", "bridle-probe", "bridle-guest"] {
        let path = bins.join(bin);
        cpio.file(&format!("bin/{bin}"), 0o755, read(&path)?);
    }
    // The host's dynamic programs, their loader and libraries, at the host's paths (symlinks
    // such as /lib64 -> usr/lib64 included), so the loader and memfd cases run real ELF
    // binaries.
    let mut wanted: BTreeSet<PathBuf> = HOST_PROGRAMS.iter().map(PathBuf::from).collect();
    for prog in HOST_PROGRAMS {
        wanted.extend(libraries(Path::new(prog))?);
    }
    for path in &wanted {
        cpio.host_path(path)?;
    }
    let bytes = cpio.finish();
    fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "xtask: initramfs {} ({:.1} MB)",
        out.display(),
        bytes.len() as f64 / 1e6
    );
    Ok(())
}

fn read(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// The loader and libraries `prog` needs, as ldd lists them.
fn libraries(prog: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(prog)
        .output()
        .with_context(|| format!("running ldd {}", prog.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-… (0x…)"
            let l = l.trim();
            let path = l.split_once("=> ").map_or(l, |(_, p)| p);
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// A newc cpio archive being built in memory.
#[derive(Default)]
struct Cpio {
    data: Vec<u8>,
    names: BTreeSet<String>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), body: &[u8]) {
        if !self.names.insert(name.to_owned()) {
            return;
        }
        self.ino += 1;
        let name_len = name.len() + 1;
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.ino,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime
            body.len(),
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name_len,
            0, // check
        );
        self.data.extend_from_slice(header.as_bytes());
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, perm: u32, body: Vec<u8>) {
        self.entry(name, 0o100000 | perm, (0, 0), &body);
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, (0, 0), target.as_bytes());
    }

    fn node(&mut self, name: &str, mode: u32, major: u32, minor: u32) {
        self.entry(name, mode, (major, minor), &[]);
    }

    /// Copies host `path` to the same path in the archive, recreating every symlink on the
    /// way (directories and the file itself) so that the guest resolves it like the host.
    fn host_path(&mut self, path: &Path) -> Result<()> {
        let mut here = PathBuf::from("/");
        let parts: Vec<Component> = path.components().collect();
        for (i, part) in parts.iter().enumerate() {
            let Component::Normal(part) = part else {
                continue;
            };
            here.push(part);
            let rel = here.strip_prefix("/")?.to_string_lossy().into_owned();
            let meta = fs::symlink_metadata(&here)
                .with_context(|| format!("reading {}", here.display()))?;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&here)?;
                self.symlink(&rel, &target.to_string_lossy());
                // Follow the link and copy what it points at, then the rest of the path.
                let resolved = here
                    .parent()
                    .unwrap_or(Path::new("/"))
                    .join(&target)
                    .components()
                    .chain(parts[i + 1..].iter().copied())
                    .collect::<PathBuf>();
                return self.host_path(&normalize(&resolved));
            }
            if meta.is_dir() {
                self.entry(&rel, 0o040000 | (meta.mode() & 0o7777), (0, 0), &[]);
            } else {
                let perm = fs::metadata(&here)?.permissions().mode() & 0o7777;
                self.file(&rel, perm, read(&here)?);
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        // Pad to a whole block, as cpio(1) does.
        while !self.data.len().is_multiple_of(512) {
            self.data.push(0);
        }
        self.data
    }
}

/// Removes `.` and resolves `..` lexically (the symlinks on the way are handled by the caller).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(p) => out.push(p),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_compares_numbers_not_text() {
        let names = [
            "linux-image-6.12.9+deb12-amd64",
            "linux-image-6.12.117+deb12-amd64",
            "linux-image-6.12.38+deb12-amd64",
        ];
        assert_eq!(
            newest(names.iter().copied()).as_deref(),
            Some("linux-image-6.12.117+deb12-amd64")
        );
        let names = ["linux-image-6.1.0-9-amd64", "linux-image-6.1.0-56-amd64"];
        assert_eq!(
            newest(names.iter().copied()).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
    }

    #[test]
    fn summary_fields() {
        assert_eq!(parse_summary("passed=4 failed=0 kernel=6.1.0"), (4, 0));
        assert_eq!(parse_summary("passed=1 failed=3"), (1, 3));
    }

    #[test]
    fn cpio_entries_are_aligned() {
        let mut c = Cpio::default();
        c.file("a", 0o644, b"xyz".to_vec());
        c.symlink("b", "a");
        let data = c.finish();
        assert!(data.starts_with(b"070701"));
        assert_eq!(data.len() % 512, 0);
    }
}
