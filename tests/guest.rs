//! `bridle-guest`: the exec suite the kernel matrix (`cargo xtask test --kernels`) runs inside
//! each guest kernel, on the BPF LSM tier.
//!
//! It is the guest's counterpart of `exec.rs`: every case runs a shell inside
//! `bridle run --exec-tier lsm` that attempts one kind of exec through `bridle-probe` and prints
//! the status the workload saw. The guest has no cargo and no test harness, so each case prints
//! `matrix: PASS NAME` or `matrix: FAIL NAME: WHY` followed by what the workload and bridle
//! printed, and the last line is `matrix: SUMMARY passed=P failed=F kernel=RELEASE`, which the
//! host reads from the serial console. The exit status is 0 only when every case passed.
//!
//! Layout it expects (the initramfs the xtask packs): `/bin/bridle`, `/bin/bridle-probe`,
//! busybox as `/bin/sh`, and the host's dynamic `/usr/bin/{echo,touch,true}` with their loader
//! and libraries at the host's paths.

use bridle_tests::{finish, leftover_run_cgroups, Finished};
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

/// The guest CPU is emulated and 10–15× slower than the host: generous, but bounded.
const DEADLINE: Duration = Duration::from_secs(60);
const BRIDLE: &str = "/bin/bridle";
const PROBE: &str = "/bin/bridle-probe";
const TIER: &str = "lsm";

fn main() {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    println!("matrix: kernel {release}");
    println!(
        "matrix: active LSMs: {}",
        fs::read_to_string("/sys/kernel/security/lsm")
            .unwrap_or_else(|e| format!("unreadable ({e})"))
            .trim()
    );
    let cases: [(&str, Case); 7] = [
        ("tier-probe", tier_probe),
        ("path-fd-link-relative", path_fd_link_relative),
        ("symlink-bind-globs", symlink_bind_globs),
        ("scripts-and-interpreters", scripts_and_interpreters),
        ("loader-memfd-deleted", loader_memfd_deleted),
        ("unix-hooks", unix_hooks),
        // Last: it replaces /usr/bin/touch, which the other cases link to.
        ("replaced-binary", replaced_binary),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in cases {
        // A case that panics (a deadline in `finish`) fails alone; the summary still prints.
        let outcome = std::panic::catch_unwind(case)
            .unwrap_or_else(|_| Err("panicked (see the message above)".to_owned()));
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("matrix: PASS {name}");
            }
            Err(why) => {
                failed += 1;
                println!("matrix: FAIL {name}: {why}");
            }
        }
    }
    println!("matrix: SUMMARY passed={passed} failed={failed} kernel={release}");
    std::process::exit(i32::from(failed != 0));
}

/// One case of the suite: `Err` carries what went wrong and what the workload printed.
type Case = fn() -> Result<(), String>;

/// A scratch directory with a permitted `ok/` subdirectory, removed on drop.
struct Scene {
    dir: PathBuf,
}

impl Scene {
    fn new(name: &str) -> Scene {
        // On the initramfs root, the same filesystem as /usr/bin, so hard links work.
        let dir = PathBuf::from("/var/tmp").join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("ok")).expect("mkdir scene");
        Scene { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn write_exec(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, text).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    /// The same policy as `exec.rs`: the system's programs, the probe and `ok/**` permitted,
    /// /usr/bin/touch refused by name.
    fn policy(&self, extra: &str, extra_exec: &str) -> PathBuf {
        let text = format!(
            r#"
name = "exec-test"
default = "refuse"
{extra}

[[rule]]
name = "system"
effect = "permit"
exec = ["/usr/bin/*", "/bin/*", "{PROBE}", "{ok}/**"{extra_exec}]

[[rule]]
name = "no-touch"
effect = "refuse"
exec = ["/usr/bin/touch"]
"#,
            ok = self.path("ok").display(),
        );
        let p = self.path("policy.toml");
        fs::write(&p, text).expect("write policy");
        p
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn run(policy: &Path, script: &str) -> Finished {
    let mut cmd = Command::new(BRIDLE);
    cmd.arg("run")
        .arg("--policy")
        .arg(policy)
        .args(["--exec-tier", TIER, "--", "/bin/sh", "-c", script])
        .env("PROBE", PROBE);
    let f = finish(cmd, DEADLINE);
    // Into the console log only (the host shows it for failed cases): the record of what the
    // workload saw and what bridle said on this kernel.
    for line in f.stdout.lines() {
        println!("  | {line}");
    }
    for line in f.stderr.lines() {
        println!("  ! {line}");
    }
    f
}

fn show(f: &Finished) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        f.code, f.stdout, f.stderr
    )
}

/// Collects the failed expectations of one case; the case fails with all of them and the
/// output, so one guest boot shows every problem at once.
struct Checks<'a> {
    f: &'a Finished,
    missed: Vec<String>,
}

impl<'a> Checks<'a> {
    fn new(f: &'a Finished) -> Checks<'a> {
        let mut c = Checks {
            f,
            missed: Vec::new(),
        };
        c.stderr_has(&format!("bridle: exec tier: {TIER}"));
        c
    }

    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.missed.push(what.into());
        }
    }

    /// `NAME=STATUS` in the workload's output.
    fn saw(&mut self, name: &str, status: &str) {
        let line = format!("{name}={status}");
        let ok = self.f.stdout.lines().any(|l| l == line);
        self.check(ok, format!("expected {line}"));
    }

    fn stdout_has(&mut self, text: &str) {
        let ok = self.f.stdout.contains(text);
        self.check(ok, format!("stdout lacks {text:?}"));
    }

    fn stdout_lacks(&mut self, text: &str) {
        let ok = !self.f.stdout.contains(text);
        self.check(ok, format!("stdout has {text:?}"));
    }

    fn stderr_has(&mut self, text: &str) {
        let ok = self.f.stderr.contains(text);
        self.check(ok, format!("stderr lacks {text:?}"));
    }

    fn done(self) -> Result<(), String> {
        if self.missed.is_empty() {
            Ok(())
        } else {
            Err(format!("{}\n{}", self.missed.join("; "), show(self.f)))
        }
    }
}

fn no_leftovers() -> Result<(), String> {
    let left = leftover_run_cgroups();
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("cgroups left: {left:?}"))
    }
}

/// Without a forced tier bridle must pick the LSM tier by itself: the probe really loads the
/// program here, so this is where a CO-RE relocation or a verifier refusal would show.
fn tier_probe() -> Result<(), String> {
    let scene = Scene::new("tier");
    let policy = scene.policy("", "");
    let f = finish(
        {
            let mut cmd = Command::new(BRIDLE);
            cmd.arg("run")
                .arg("--policy")
                .arg(&policy)
                .args(["--", "/usr/bin/echo", "ran-auto"]);
            cmd
        },
        DEADLINE,
    );
    let mut c = Checks::new(&f);
    c.check(f.code == 0, "exit status not 0");
    c.stdout_has("ran-auto");
    c.done()?;
    no_leftovers()
}

fn path_fd_link_relative() -> Result<(), String> {
    let scene = Scene::new("paths");
    let policy = scene.policy("", "");
    // A copy nobody names, and a hard link of the refused /usr/bin/touch in a permitted
    // directory: refusals match by identity (device and inode, read through CO-RE).
    fs::copy("/usr/bin/touch", scene.path("unnamed")).map_err(|e| format!("copy: {e}"))?;
    fs::hard_link("/usr/bin/touch", scene.path("ok/touch-link"))
        .map_err(|e| format!("hard link: {e}"))?;
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
        dir = scene.dir.display()
    );
    let f = run(&policy, &script);
    let mut c = Checks::new(&f);
    c.check(f.code == 0, "exit status not 0");
    for (name, marker) in [
        ("path", "ran-path"),
        ("empty", "ran-empty"),
        ("fexecve", "ran-fexecve"),
        ("relative-ok", "ran-relative"),
    ] {
        c.saw(name, "0");
        c.stdout_has(marker);
    }
    for name in [
        "refused-path",
        "refused-empty",
        "refused-fexecve",
        "hardlink",
    ] {
        c.saw(name, "1");
    }
    // The shell reports an EPERM exec as 126.
    c.saw("relative", "126");
    c.stdout_has("exec path: errno 1");
    c.stderr_has("(POLICY_REFUSED, rule no-touch)");
    for m in 1..=5 {
        let ran = scene.path(&format!("m{m}")).exists();
        c.check(!ran, format!("refused exec m{m} ran"));
    }
    c.done()?;
    no_leftovers()
}

/// Rules name the executed file with symlinks resolved, never the name it was run by; `*` and
/// `**` match one and any number of directories; a bind mount of a refused file is that file.
fn symlink_bind_globs() -> Result<(), String> {
    let scene = Scene::new("links");
    let policy = scene.policy("", "");
    let d = &scene.dir;
    std::os::unix::fs::symlink("/usr/bin/touch", d.join("ok/touch-sym"))
        .map_err(|e| format!("symlink: {e}"))?;
    std::os::unix::fs::symlink("/usr/bin/echo", d.join("echo-sym"))
        .map_err(|e| format!("symlink: {e}"))?;
    fs::create_dir_all(d.join("ok/a/b/c")).map_err(|e| format!("mkdir: {e}"))?;
    fs::create_dir_all(d.join("notok")).map_err(|e| format!("mkdir: {e}"))?;
    for to in ["ok/a/b/c/echo", "notok/echo"] {
        fs::copy("/usr/bin/echo", d.join(to)).map_err(|e| format!("copy: {e}"))?;
    }
    fs::write(d.join("ok/touch-bind"), "").map_err(|e| format!("bind target: {e}"))?;
    let bind = Command::new("/bin/busybox")
        .args(["mount", "--bind", "/usr/bin/touch"])
        .arg(d.join("ok/touch-bind"))
        .status()
        .map_err(|e| format!("mount --bind: {e}"))?;
    if !bind.success() {
        return Err(format!("mount --bind failed: {bind}"));
    }
    let script = format!(
        r#"
{dir}/ok/touch-sym {dir}/m1; echo symlink-refused=$?
{dir}/echo-sym ran-symlink; echo symlink-permitted=$?
{dir}/ok/a/b/c/echo ran-deep; echo deep=$?
{dir}/notok/echo ran-notok; echo notok=$?
{dir}/ok/touch-bind {dir}/m2; echo bind=$?
"#,
        dir = d.display()
    );
    let f = run(&policy, &script);
    let _ = Command::new("/bin/busybox")
        .args(["umount"])
        .arg(d.join("ok/touch-bind"))
        .status();
    let mut c = Checks::new(&f);
    c.saw("symlink-refused", "126");
    c.saw("symlink-permitted", "0");
    c.stdout_has("ran-symlink");
    c.saw("deep", "0");
    c.stdout_has("ran-deep");
    c.saw("notok", "126");
    c.stdout_lacks("ran-notok");
    c.saw("bind", "126");
    for m in ["m1", "m2"] {
        let ran = scene.path(m).exists();
        c.check(!ran, format!("refused exec {m} ran"));
    }
    c.done()?;
    no_leftovers()
}

fn scripts_and_interpreters() -> Result<(), String> {
    let scene = Scene::new("scripts");
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
        dir = scene.dir.display()
    );
    let f = run(&policy, &script);
    let mut c = Checks::new(&f);
    c.saw("good", "0");
    c.stdout_has("ran-good");
    c.saw("bad-interp", "126");
    c.check(!scene.path("m1").exists(), "the refused interpreter ran");
    c.saw("unnamed", "1");
    c.stdout_lacks("ran-unnamed");
    c.done()?;
    no_leftovers()
}

fn loader_memfd_deleted() -> Result<(), String> {
    let scene = Scene::new("anon");
    fs::copy("/usr/bin/echo", scene.path("ok/echo")).map_err(|e| format!("copy echo: {e}"))?;
    let script = format!(
        r#"
"$PROBE" exec ldso /usr/bin/echo ran-ldso; echo ldso=$?
"$PROBE" exec memfd /usr/bin/echo ran-memfd; echo memfd=$?
"$PROBE" exec deleted {dir}/ok/echo ran-deleted; echo deleted=$?
"#,
        dir = scene.dir.display()
    );

    let policy = scene.policy("", "");
    let f = run(&policy, &script);
    let mut c = Checks::new(&f);
    for name in ["ldso", "memfd", "deleted"] {
        c.saw(name, "1");
    }
    for m in ["ran-ldso", "ran-memfd", "ran-deleted"] {
        c.stdout_lacks(m);
    }
    c.stderr_has("(ANONYMOUS_EXEC)");
    c.done().map_err(|e| format!("refusing: {e}"))?;

    // Allowed: the same execs run, so the refusals above were the policy, not a broken guest.
    let loader = fs::canonicalize("/lib64/ld-linux-x86-64.so.2")
        .map_err(|e| format!("the loader is missing in the guest: {e}"))?;
    let policy = scene.policy(
        "allow_anonymous_exec = true",
        &format!(", \"{}\"", loader.display()),
    );
    let f = run(&policy, &script);
    let mut c = Checks::new(&f);
    for (name, marker) in [
        ("ldso", "ran-ldso"),
        ("memfd", "ran-memfd"),
        ("deleted", "ran-deleted"),
    ] {
        c.saw(name, "0");
        c.stdout_has(marker);
    }
    c.done().map_err(|e| format!("allowing: {e}"))?;
    no_leftovers()
}

/// The unix-socket hooks are found by loading them: on a kernel that has them (6.7 and later)
/// a refused socket's connect fails with EPERM and a permitted one goes through; on one that
/// has not, bridle says unix rules are not enforced, and claims nothing.
fn unix_hooks() -> Result<(), String> {
    let scene = Scene::new("unix");
    let (no, ok) = (scene.path("no.sock"), scene.path("ok.sock"));
    let _listeners = [&no, &ok]
        .iter()
        .map(|p| {
            std::os::unix::net::UnixListener::bind(p)
                .map_err(|e| format!("binding {}: {e}", p.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let policy = scene.policy(
        &format!(
            "\n[[rule]]\nname = \"no-sock\"\neffect = \"refuse\"\nconnect = [\"unix:{}\"]\n\n[[rule]]\nname = \"ok-sock\"\neffect = \"permit\"\nconnect = [\"unix:{}\"]\n",
            no.display(),
            ok.display()
        ),
        "",
    );
    let f = run(
        &policy,
        &format!(
            "\"$PROBE\" unix-connect {}; \"$PROBE\" unix-connect {}; true",
            no.display(),
            ok.display()
        ),
    );
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    let mut c = Checks::new(&f);
    c.check(f.code == 0, "exit status not 0");
    c.stdout_has(&format!("unix-connect {}: ok", ok.display()));
    if version >= (6, 7) {
        c.stdout_has(&format!("unix-connect {}: errno 1", no.display()));
        c.stderr_has(&format!(
            "bridle: refused connect unix:{} (POLICY_REFUSED, rule no-sock)",
            no.display()
        ));
        let claimed = f.stderr.contains("unix-socket rules are not enforced");
        c.check(!claimed, "warned although the hooks load here");
    } else {
        c.stderr_has("unix-socket rules are not enforced");
        c.stderr_has("this kernel did not load the connect_unix/sendmsg_unix cgroup hooks");
        c.stdout_has(&format!("unix-connect {}: ok", no.display()));
    }
    c.done()?;
    no_leftovers()
}

/// A binary replaced the way a package upgrade does it (a new file renamed over the old
/// path, so a new inode) while the workload runs keeps the rule of its path: the kernel finds
/// it by place (directory and name). Refused under a permitting default, permitted under a
/// refusing one; a path a rule names that holds no file yet is refused once installed.
fn replaced_binary() -> Result<(), String> {
    let scene = Scene::new("upgrade");
    std::fs::copy("/usr/bin/echo", scene.path("ok/echo2")).map_err(|e| e.to_string())?;
    let policy = scene.policy("", "");
    let script = format!(
        r#"
/bin/cp /usr/bin/touch /usr/bin/touch.new && /bin/mv /usr/bin/touch.new /usr/bin/touch; echo replaced=$?
/usr/bin/touch {dir}/m1; echo after-upgrade=$?
/bin/cp /usr/bin/echo {dir}/echo2.new && /bin/mv {dir}/echo2.new {dir}/ok/echo2; echo replaced-ok=$?
{dir}/ok/echo2 ran-echo2; echo echo2=$?
"#,
        dir = scene.dir.display()
    );
    let f = run(&policy, &script);
    let mut c = Checks::new(&f);
    c.saw("replaced", "0");
    c.saw("after-upgrade", "126");
    c.check(
        !scene.path("m1").exists(),
        "the replaced refused binary ran",
    );
    c.saw("replaced-ok", "0");
    c.saw("echo2", "0");
    c.stdout_has("ran-echo2");
    c.done()?;

    let permissive = scene.path("permissive.toml");
    let text = format!(
        r#"
name = "exec-replace"
default = "permit"

[[rule]]
name = "no-tool"
effect = "refuse"
exec = ["{dir}/tool", "{dir}/later"]
"#,
        dir = scene.dir.display()
    );
    fs::write(&permissive, text).map_err(|e| e.to_string())?;
    fs::copy("/usr/bin/echo", scene.path("tool")).map_err(|e| e.to_string())?;
    let script = format!(
        r#"
/bin/cp /usr/bin/echo {dir}/tool.new && /bin/mv {dir}/tool.new {dir}/tool; echo swapped=$?
{dir}/tool ran-tool; echo tool=$?
/bin/cp /usr/bin/echo {dir}/later; echo installed=$?
{dir}/later ran-later; echo later=$?
"#,
        dir = scene.dir.display()
    );
    let f = run(&permissive, &script);
    let mut c = Checks::new(&f);
    c.saw("swapped", "0");
    c.saw("tool", "126");
    c.saw("installed", "0");
    c.saw("later", "126");
    c.stdout_lacks("ran-tool");
    c.stdout_lacks("ran-later");
    c.done()?;
    no_leftovers()
}
