//! Exec enforcement semantics on every exec tier this host offers, against the real kernel.
//!
//! Each case runs a shell inside `bridle run --exec-tier T` that attempts one kind of exec
//! through `bridle-probe` and prints the status the workload saw. On the EPERM tiers (lsm,
//! fanotify) a refused exec fails with errno 1; on the kill tier the refused image dies by
//! SIGKILL (status 137). `BRIDLE_TEST_TIERS` (comma-separated) names the tiers to test; by
//! default those this project's machines offer: fanotify and kill.

use bridle_tests::{
    bridle_bin, finish, kernel_lock, leftover_run_cgroups, loaded_bridle_programs, require_root,
    Finished,
};
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const DEADLINE: Duration = Duration::from_secs(120);

fn tiers() -> Vec<String> {
    std::env::var("BRIDLE_TEST_TIERS")
        .unwrap_or_else(|_| "fanotify,kill".to_owned())
        .split(',')
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

fn probe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bridle-probe"))
}

/// The status a refused exec leaves on `tier`, as the shell prints `$?`.
fn refused_status(tier: &str) -> &'static str {
    if tier == "kill" {
        "137"
    } else {
        "1"
    }
}

/// The status of a refused exec that only the BPF LSM and kill tiers see: a direct exec of
/// the dynamic loader, or of a memfd.
fn backstop_status(tier: &str) -> &'static str {
    if tier == "lsm" {
        "1"
    } else {
        "137"
    }
}

struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        // Under /var/tmp, not /tmp: the same filesystem as /usr, so hard links work.
        let dir = tempfile::Builder::new()
            .prefix("bridle-exec-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        fs::create_dir(dir.path().join("ok")).expect("mkdir ok");
        Scene { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_exec(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, text).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    /// Permits the system's programs, the probe and everything under `ok/`; refuses
    /// /usr/bin/touch by name; `extra` adds lines at the top level.
    fn policy(&self, extra: &str, extra_exec: &str) -> PathBuf {
        let text = format!(
            r#"
name = "exec-test"
default = "refuse"
{extra}

[[rule]]
name = "system"
effect = "permit"
exec = ["/usr/bin/*", "/bin/*", "{probe}", "{ok}/**"{extra_exec}]

[[rule]]
name = "no-touch"
effect = "refuse"
exec = ["/usr/bin/touch"]
"#,
            probe = probe().display(),
            ok = self.path("ok").display(),
        );
        let p = self.path("policy.toml");
        fs::write(&p, text).expect("write policy");
        p
    }
}

fn run(tier: &str, policy: &Path, script: &str) -> Finished {
    let mut cmd = Command::new(bridle_bin());
    cmd.arg("run")
        .arg("--policy")
        .arg(policy)
        .args(["--exec-tier", tier, "--", "/bin/sh", "-c", script])
        .env("PROBE", probe());
    let f = finish(cmd, DEADLINE);
    assert!(
        f.stderr.contains(&format!("bridle: exec tier: {tier}")),
        "bridle did not report tier {tier}\n{}",
        show(&f)
    );
    f
}

fn show(f: &Finished) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        f.code, f.stdout, f.stderr
    )
}

fn assert_clean(context: &str) {
    assert_eq!(
        leftover_run_cgroups(),
        Vec::<PathBuf>::new(),
        "{context}: cgroups left"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !loaded_bridle_programs().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        loaded_bridle_programs(),
        Vec::<String>::new(),
        "{context}: programs left"
    );
}

/// Asserts `NAME=STATUS` in the workload's output.
fn saw(f: &Finished, name: &str, status: &str) {
    assert!(
        f.stdout.lines().any(|l| l == format!("{name}={status}")),
        "expected {name}={status}\n{}",
        show(f)
    );
}

#[test]
fn refused_and_permitted_execs_by_path_fd_link_and_directory() {
    require_root();
    let _k = kernel_lock();
    for tier in tiers() {
        let scene = Scene::new();
        let policy = scene.policy("", "");
        // A copy nobody names, and a hard link of the refused /usr/bin/touch in a permitted
        // directory: refusals match by identity.
        fs::copy("/usr/bin/touch", scene.path("unnamed")).expect("copy");
        fs::hard_link("/usr/bin/touch", scene.path("ok/touch-link")).expect("hard link");
        let r = refused_status(&tier);
        let script = format!(
            r#"
"$PROBE" exec path /usr/bin/echo ran-path; echo path=$?
"$PROBE" exec path /usr/bin/touch {dir}/m1; echo refused-path=$?
"$PROBE" exec empty-path /usr/bin/echo ran-empty; echo empty=$?
"$PROBE" exec empty-path {dir}/unnamed {dir}/m2; echo refused-empty=$?
"$PROBE" exec fexecve /usr/bin/echo ran-fexecve; echo fexecve=$?
"$PROBE" exec fexecve /usr/bin/touch {dir}/m3; echo refused-fexecve=$?
"$PROBE" exec path {dir}/ok/touch-link {dir}/m4; echo hardlink=$?
cd {dir} && ./unnamed {dir}/m5; echo relative=$?
cd /usr/bin && ./echo ran-relative; echo relative-ok=$?
"#,
            dir = scene.path("").display()
        );
        let f = run(&tier, &policy, &script);
        let ctx = format!("tier {tier}\n{}", show(&f));
        assert_eq!(f.code, 0, "{ctx}");
        for (name, marker) in [
            ("path", "ran-path"),
            ("empty", "ran-empty"),
            ("fexecve", "ran-fexecve"),
            ("relative-ok", "ran-relative"),
        ] {
            saw(&f, name, "0");
            assert!(f.stdout.contains(marker), "{ctx}");
        }
        for name in [
            "refused-path",
            "refused-empty",
            "refused-fexecve",
            "hardlink",
        ] {
            saw(&f, name, r);
        }
        // The shell reports an EPERM exec as 126.
        saw(&f, "relative", if tier == "kill" { "137" } else { "126" });
        if tier != "kill" {
            assert!(f.stdout.contains("exec path: errno 1"), "{ctx}");
            assert!(
                f.stderr.contains("(POLICY_REFUSED, rule no-touch)"),
                "{ctx}"
            );
        }
        for m in 1..=5 {
            assert!(
                !scene.path(&format!("m{m}")).exists(),
                "refused exec m{m} ran\n{ctx}"
            );
        }
        assert_clean(&format!("tier {tier}"));
    }
}

#[test]
fn scripts_need_the_script_and_the_interpreter_permitted() {
    require_root();
    let _k = kernel_lock();
    for tier in tiers() {
        let scene = Scene::new();
        let policy = scene.policy("", "");
        scene.write_exec("ok/good.sh", "#!/bin/sh\necho ran-good\n");
        // A permitted script whose interpreter is refused: touch would create its argument.
        scene.write_exec("ok/bad-interp", "#!/usr/bin/touch\n");
        // A script no rule permits, with a permitted interpreter.
        scene.write_exec("unnamed.sh", "#!/bin/sh\necho ran-unnamed\n");
        let script = format!(
            r#"
{dir}/ok/good.sh; echo good=$?
{dir}/ok/bad-interp {dir}/m1; echo bad-interp=$?
"$PROBE" exec path {dir}/unnamed.sh; echo unnamed=$?
"#,
            dir = scene.path("").display()
        );
        let f = run(&tier, &policy, &script);
        let ctx = format!("tier {tier}\n{}", show(&f));
        saw(&f, "good", "0");
        assert!(f.stdout.contains("ran-good"), "{ctx}");
        saw(&f, "bad-interp", if tier == "kill" { "137" } else { "126" });
        assert!(!scene.path("m1").exists(), "{ctx}");
        if tier != "kill" {
            // The kill tier sees only the interpreter: an unpermitted script with a permitted
            // interpreter is a documented gap of that tier.
            saw(&f, "unnamed", "1");
            assert!(!f.stdout.contains("ran-unnamed"), "{ctx}");
        }
        assert_clean(&format!("tier {tier}"));
    }
}

#[test]
fn the_loader_memfds_and_deleted_files_are_refused_unless_allowed() {
    require_root();
    let _k = kernel_lock();
    for tier in tiers() {
        let scene = Scene::new();
        let script = format!(
            r#"
"$PROBE" exec ldso /usr/bin/echo ran-ldso; echo ldso=$?
"$PROBE" exec memfd /usr/bin/echo ran-memfd; echo memfd=$?
"$PROBE" exec deleted {dir}/ok/echo ran-deleted; echo deleted=$?
"#,
            dir = scene.path("").display()
        );
        fs::copy("/usr/bin/echo", scene.path("ok/echo")).expect("copy echo");

        let policy = scene.policy("", "");
        let f = run(&tier, &policy, &script);
        let ctx = format!("tier {tier}, refusing\n{}", show(&f));
        // The fanotify tier never asks about the system's loader (a dynamic binary's exec
        // opens it after the binary was judged), and memfds sit on an internal filesystem no
        // mark reaches: a direct loader exec and a memfd exec meet the kill-on-exec backstop.
        saw(&f, "ldso", backstop_status(&tier));
        saw(&f, "memfd", backstop_status(&tier));
        saw(&f, "deleted", refused_status(&tier));
        for m in ["ran-ldso", "ran-memfd", "ran-deleted"] {
            assert!(!f.stdout.contains(m), "{m}\n{ctx}");
        }
        if tier != "kill" {
            assert!(f.stderr.contains("(ANONYMOUS_EXEC)"), "{ctx}");
        }

        let loader = fs::canonicalize("/lib64/ld-linux-x86-64.so.2").expect("loader");
        let policy = scene.policy(
            "allow_anonymous_exec = true",
            &format!(", \"{}\"", loader.display()),
        );
        let f = run(&tier, &policy, &script);
        let ctx = format!("tier {tier}, allowing\n{}", show(&f));
        for (name, marker) in [
            ("ldso", "ran-ldso"),
            ("memfd", "ran-memfd"),
            ("deleted", "ran-deleted"),
        ] {
            saw(&f, name, "0");
            assert!(f.stdout.contains(marker), "{ctx}");
        }
        assert_clean(&format!("tier {tier}"));
    }
}

#[test]
fn fanotify_tier_a_burst_completes_and_outsiders_are_unaffected() {
    require_root();
    let _k = kernel_lock();
    let scene = Scene::new();
    let policy = scene.policy("", "");
    fs::copy("/usr/bin/touch", scene.path("unnamed")).expect("copy");
    let ready = scene.path("ready");
    let done = scene.path("done");
    // 2,000 permitted execs in the workload, while this test (an outsider) execs the very
    // files the workload may not.
    let script = format!(
        "echo > {ready}; i=0; while [ $i -lt 2000 ]; do /usr/bin/true || exit 9; i=$((i+1)); done; echo burst-done; echo > {done}; exec /usr/bin/sleep 60",
        ready = ready.display(),
        done = done.display()
    );
    let mut child = Command::new(bridle_bin())
        .arg("run")
        .arg("--policy")
        .arg(&policy)
        .args(["--exec-tier", "fanotify", "--", "/bin/sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn bridle run");
    let start = Instant::now();
    let end = |child: &mut std::process::Child| {
        // SAFETY: kill(2) on the pid of the child this test started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
    };
    while !ready.exists() {
        if start.elapsed() > Duration::from_secs(30) {
            end(&mut child);
            panic!("the workload never became ready");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let outside = Instant::now();
    for i in 0..200 {
        let marker = scene.path(&format!("outside-{i}"));
        let ok = Command::new(scene.path("unnamed"))
            .arg(&marker)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
            && Command::new("/usr/bin/touch")
                .arg(&marker)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        if !ok {
            end(&mut child);
            panic!("an outsider's exec was refused while the workload ran");
        }
    }
    let outside = outside.elapsed();
    let burst_start = Instant::now();
    while !done.exists() {
        if burst_start.elapsed() > Duration::from_secs(60) {
            end(&mut child);
            panic!("2,000 workload execs did not complete within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let burst = start.elapsed();
    end(&mut child);
    eprintln!("400 outsider execs: {outside:?}; 2,000 workload execs: {burst:?}");
    assert!(
        outside < Duration::from_secs(20),
        "outsiders slowed: {outside:?}"
    );
    assert_clean("after the burst");
}

#[test]
fn a_replaced_binary_keeps_the_rule_of_its_path() {
    require_root();
    let _k = kernel_lock();
    for tier in tiers() {
        let scene = Scene::new();
        let dir = scene.dir.path().to_path_buf();
        let r = refused_status(&tier);

        // Refusals by path: the binary a package upgrade replaces (a new inode renamed over
        // the old one), and one installed later at a path a rule names.
        fs::copy("/usr/bin/touch", scene.path("tool")).expect("copy");
        let policy = scene.path("replace.toml");
        fs::write(
            &policy,
            format!(
                r#"
name = "exec-replace"
default = "permit"

[[rule]]
name = "no-tool"
effect = "refuse"
exec = ["{dir}/tool", "{dir}/later"]
"#,
                dir = dir.display()
            ),
        )
        .expect("write policy");
        let script = format!(
            r#"
"$PROBE" exec path {dir}/tool {dir}/m1; echo before=$?
cp /usr/bin/touch {dir}/tool.new && mv {dir}/tool.new {dir}/tool && echo swapped
"$PROBE" exec path {dir}/tool {dir}/m2; echo replaced=$?
cp /usr/bin/touch {dir}/later && echo installed
"$PROBE" exec path {dir}/later {dir}/m3; echo later=$?
"$PROBE" exec path /usr/bin/touch {dir}/ran-other; echo other=$?
"#,
            dir = dir.display()
        );
        let f = run(&tier, &policy, &script);
        let ctx = format!("tier {tier}, refusing by path\n{}", show(&f));
        assert!(
            f.stdout.contains("swapped") && f.stdout.contains("installed"),
            "{ctx}"
        );
        for name in ["before", "replaced", "later"] {
            saw(&f, name, r);
        }
        saw(&f, "other", "0");
        assert!(scene.path("ran-other").exists(), "{ctx}");
        for m in 1..=3 {
            assert!(
                !scene.path(&format!("m{m}")).exists(),
                "refused exec m{m} ran\n{ctx}"
            );
        }

        // A permit by path under a refusing default: the upgraded binary still runs.
        fs::copy("/usr/bin/echo", scene.path("ok/echo2")).expect("copy");
        let policy = scene.policy("", "");
        let script = format!(
            r#"
"$PROBE" exec path {dir}/ok/echo2 ran-before; echo before=$?
cp /usr/bin/echo {dir}/echo2.new && mv {dir}/echo2.new {dir}/ok/echo2 && echo swapped
"$PROBE" exec path {dir}/ok/echo2 ran-replaced; echo replaced=$?
"#,
            dir = dir.display()
        );
        let f = run(&tier, &policy, &script);
        let ctx = format!("tier {tier}, permitting by path\n{}", show(&f));
        assert!(f.stdout.contains("swapped"), "{ctx}");
        saw(&f, "before", "0");
        saw(&f, "replaced", "0");
        assert!(f.stdout.contains("ran-replaced"), "{ctx}");
        assert_clean(&format!("tier {tier}"));
    }
}
