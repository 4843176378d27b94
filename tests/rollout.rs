//! From observe mode to enforcement: a workload runs in observe mode, `bridle report` names
//! what the policy would have refused, `bridle suggest` writes a policy for it that passes
//! `policy check`, and the same workload then runs under that policy, enforced, without a
//! refusal.

use bridle_tests::{assert_no_residue, bridle_bin, finish, kernel_lock, require_root, Finished};
use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

const DEADLINE: Duration = Duration::from_secs(60);

fn show(f: &Finished) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        f.code, f.stdout, f.stderr
    )
}

fn bridle(state: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bridle_bin());
    cmd.arg("--state-dir").arg(state).args(args);
    cmd
}

#[test]
fn observe_report_suggest_then_enforce_without_a_refusal() {
    require_root();
    let _k = kernel_lock();
    let scene = tempfile::Builder::new()
        .prefix("bridle-rollout-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let state = scene.path().join("state");
    let empty = scene.path().join("empty.toml");
    fs::write(&empty, "name = \"nothing-yet\"\nmode = \"observe\"\n").expect("policy");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let addr = listener.local_addr().expect("addr");
    let probe = PathBuf::from(env!("CARGO_BIN_EXE_bridle-probe"));
    let script = format!(
        "/usr/bin/echo ran-echo && /usr/bin/true && \"{probe}\" connect {addr}",
        probe = probe.display()
    );

    let run = |policy: &Path| {
        let mut cmd = bridle(&state, &["run", "--policy"]);
        cmd.arg(policy).args(["--", "/bin/sh", "-c", &script]);
        finish(cmd, DEADLINE)
    };
    let observed = run(&empty);
    let ctx = show(&observed);
    assert_eq!(observed.code, 0, "observe mode refuses nothing\n{ctx}");
    assert!(
        observed.stdout.contains(&format!("connect {addr}: ok")),
        "{ctx}"
    );

    let report = finish(bridle(&state, &["report"]), DEADLINE);
    let rctx = show(&report);
    assert_eq!(report.code, 0, "{rctx}");
    for line in [
        "would refuse exec /usr/bin/echo".to_owned(),
        "would refuse exec /usr/bin/true".to_owned(),
        format!("would refuse connect {addr}"),
        "no rule (the policy's default)".to_owned(),
    ] {
        assert!(
            report.stdout.contains(&line),
            "report lacks {line:?}\n{rctx}"
        );
    }
    let json = finish(bridle(&state, &["report", "--json"]), DEADLINE);
    let workload = json
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["workload"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no workload in the JSON report\n{}", show(&json)));

    let suggested = scene.path().join("suggested.toml");
    let mut cmd = bridle(
        &state,
        &["suggest", "--workload", &workload, "--name", "agent"],
    );
    cmd.arg("--output").arg(&suggested);
    let s = finish(cmd, DEADLINE);
    assert_eq!(s.code, 0, "{}", show(&s));
    let text = fs::read_to_string(&suggested).expect("suggested policy");
    assert!(
        text.contains(&format!("\"127.0.0.1:{}\"", addr.port())),
        "{text}"
    );
    assert!(
        !text.contains("ld-linux"),
        "the loader is no suggestion\n{text}"
    );
    let mut check = Command::new(bridle_bin());
    check.args(["policy", "check"]).arg(&suggested);
    let c = finish(check, DEADLINE);
    assert_eq!(c.code, 0, "policy check\n{}\n{text}", show(&c));

    let enforced = run(&suggested);
    let ectx = format!("{}\n--- suggested policy\n{text}", show(&enforced));
    assert_eq!(enforced.code, 0, "{ectx}");
    assert!(enforced.stdout.contains("ran-echo"), "{ectx}");
    assert!(
        enforced.stdout.contains(&format!("connect {addr}: ok")),
        "{ectx}"
    );
    assert!(!enforced.stderr.contains("bridle: refused"), "{ectx}");
    assert!(!enforced.stderr.contains("killed"), "{ectx}");
    drop(listener);
    assert_no_residue("rollout");
}
