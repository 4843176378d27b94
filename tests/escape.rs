//! A workload started by `bridle run`, running as uid 0, tries to undo its own confinement:
//! leave its cgroup, reach bridle's programs and maps, trace bridle, re-enter the host's
//! namespaces, change the policy, bridle's state or its pins. Every attempt must fail, and the
//! confinement must still hold afterwards.

use bridle_tests::{
    assert_no_residue, bridle_bin, cgroup2_root, finish, kernel_lock, require_root, Finished,
};
use std::{fs, path::PathBuf, process::Command, time::Duration};

const DEADLINE: Duration = Duration::from_secs(60);

fn probe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bridle-probe"))
}

fn show(f: &Finished) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        f.code, f.stdout, f.stderr
    )
}

/// An outside cgroup to try to move into; removed on drop.
struct Outside(PathBuf);

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

#[test]
fn a_root_workload_cannot_undo_its_confinement() {
    require_root();
    let _k = kernel_lock();
    let scene = tempfile::Builder::new()
        .prefix("bridle-escape-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let state = scene.path().join("state");
    let policy = scene.path().join("policy.toml");
    let policy_text = r#"
name = "escape-test"
default = "permit"

[[rule]]
name = "no-touch"
effect = "refuse"
exec = ["/usr/bin/touch"]
"#;
    fs::write(&policy, policy_text).expect("write policy");
    let root = cgroup2_root();
    let outside = Outside(root.join(format!("bridle-escape-{}", std::process::id())));
    fs::create_dir(&outside.0).expect("outside cgroup");
    // The probe and the shell print each outcome; `$PPID` is bridle itself.
    let script = format!(
        r#"
echo $$ > {outside}/cgroup.procs; echo move-outside=$?
echo $$ > /proc/1/root{outside}/cgroup.procs; echo move-via-proc=$?
echo $$ > {root}/cgroup.procs; echo move-to-own-root=$?
echo cgroup=$(grep ^0:: /proc/self/cgroup)
echo processes=$(ls /proc | grep -c '^[0-9]')
kill -0 {host_pid}; echo signal-host=$?
"$PROBE" bpf-ids
"$PROBE" ptrace 1
head -c 1 /proc/1/mem > /dev/null; echo read-mem=$?
"$PROBE" setns /proc/1/ns/cgroup
"$PROBE" setns /proc/self/ns/cgroup
echo changed >> {policy}; echo write-policy=$?
umount {policy}; echo umount-policy=$?
mkdir {state}/planted; echo write-state=$?
mkdir /sys/fs/bpf/bridle-planted; echo write-bpffs=$?
/usr/bin/touch {marker}; echo touch=$?
grep NoNewPrivs /proc/self/status
"#,
        root = root.display(),
        outside = outside.0.display(),
        host_pid = std::process::id(),
        policy = policy.display(),
        state = state.display(),
        marker = scene.path().join("touched").display(),
    );
    let mut cmd = Command::new(bridle_bin());
    cmd.arg("--state-dir")
        .arg(&state)
        .arg("run")
        .arg("--policy")
        .arg(&policy)
        .args(["--", "/bin/sh", "-c", &script])
        .env("PROBE", probe());
    let f = finish(cmd, DEADLINE);
    let ctx = show(&f);
    let saw = |line: &str| {
        assert!(
            f.stdout.lines().any(|l| l.trim() == line),
            "expected {line:?}\n{ctx}"
        );
    };
    let failed = |name: &str| {
        let status = f
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= line\n{ctx}"));
        assert_ne!(status, "0", "{name} succeeded\n{ctx}");
    };
    assert_eq!(f.code, 0, "{ctx}");
    // The host's cgroups have no path in the workload's view, not even through /proc.
    failed("move-outside");
    failed("move-via-proc");
    saw("move-to-own-root=0");
    saw("cgroup=0::/");
    // Its own PID namespace: host processes are neither listed nor signalled.
    let processes: u32 = f
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("processes="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no processes= line\n{ctx}"));
    assert!(processes < 10, "{processes} processes visible\n{ctx}");
    failed("signal-host");
    // No bpf(2) without CAP_BPF and CAP_SYS_ADMIN.
    saw("bpf-ids: errno 1");
    // The namespace's init is non-dumpable and the workload lacks CAP_SYS_PTRACE.
    saw("ptrace 1: errno 1");
    failed("read-mem");
    for ns in ["/proc/1/ns/cgroup", "/proc/self/ns/cgroup"] {
        let prefix = format!("setns {ns}: errno ");
        assert!(
            f.stdout.lines().any(|l| l.starts_with(&prefix)),
            "setns {ns} was not refused\n{ctx}"
        );
    }
    failed("write-policy");
    failed("umount-policy");
    failed("write-state");
    failed("write-bpffs");
    assert!(f.stdout.contains("NoNewPrivs:\t1"), "{ctx}");
    // The confinement itself still holds.
    assert!(!scene.path().join("touched").exists(), "{ctx}");
    assert!(
        f.stderr.contains("(POLICY_REFUSED, rule no-touch)"),
        "{ctx}"
    );
    // Nothing the workload tried reached the host.
    assert_eq!(
        fs::read_to_string(&policy).expect("policy"),
        policy_text,
        "the policy changed\n{ctx}"
    );
    assert!(!state.join("planted").exists(), "{ctx}");
    assert!(
        !PathBuf::from("/sys/fs/bpf/bridle-planted").exists(),
        "{ctx}"
    );
    drop(outside);
    assert_no_residue("escape");
}
