//! The `policy check` and `explain` subcommands, driven through the real binary.

use std::path::PathBuf;
use std::process::{Command, Output};

fn bridle(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bridle"))
        .args(args)
        .output()
        .expect("run bridle")
}

fn policies() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn shipped(name: &str) -> String {
    policies().join(name).display().to_string()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const SHIPPED: &[&str] = &["default.toml", "coding-agent.toml", "observe-all.toml"];

#[test]
fn shipped_policies_pass_check() {
    for name in SHIPPED {
        let out = bridle(&["policy", "check", &shipped(name)]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert!(stdout(&out).contains(": ok ("), "{}", stdout(&out));
        assert!(stdout(&out).contains("sha256 "));
    }
}

#[test]
fn check_reports_located_errors_and_exits_1() {
    let dir = std::env::temp_dir().join(format!("bridle-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"x\"\n[[rule]]\nname = \"a\"\neffect = \"permit\"\nexec = [\"curl\"]\n",
    )
    .unwrap();
    let bad_s = bad.display().to_string();
    let out = bridle(&["policy", "check", &shipped("default.toml"), &bad_s]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with(&format!("{bad_s}:5:9: error: ")), "{err}");
    assert!(err.contains("not an absolute path"));
    assert!(stdout(&out).contains("default.toml: ok"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn explain_shipped_policies_refused_exec_and_connect() {
    for name in SHIPPED {
        for (what, object) in [("exec", "/usr/bin/curl"), ("connect", "203.0.113.9:443")] {
            let out = bridle(&["explain", "--policy", &shipped(name), what, object]);
            assert!(out.status.success(), "{}", stderr(&out));
            let text = stdout(&out);
            for field in [
                "effect:", "code:", "rule:", "policy:", "reason:", "hint:", "trace:",
            ] {
                assert!(text.contains(field), "{name} {what}: no {field} in\n{text}");
            }
            let json = bridle(&[
                "explain",
                "--json",
                "--policy",
                &shipped(name),
                what,
                object,
            ]);
            let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
            assert_eq!(v["schema"], 1);
            assert_eq!(v["action"], what);
            let code = v["code"].as_str().unwrap_or_default();
            // Observe-all permits but records; the others refuse.
            if *name == "observe-all.toml" {
                assert_eq!((v["effect"].as_str(), code), (Some("permit"), "OBSERVED"));
                assert_eq!(v["observed"]["effect"], "refuse");
            } else {
                assert_eq!(v["effect"], "refuse", "{name} {what}");
            }
            assert!(!v["hint"].as_str().unwrap_or_default().is_empty());
            assert!(!v["trace"].as_array().map(Vec::is_empty).unwrap_or(true));
            assert_eq!(v["policy"]["digest"].as_str().map(str::len), Some(64));
        }
    }
}

#[test]
fn explain_hints_name_the_change() {
    let out = bridle(&[
        "explain",
        "--policy",
        &shipped("default.toml"),
        "exec",
        "/usr/bin/curl",
    ]);
    assert!(
        stdout(&out).contains("remove the pattern \"/usr/bin/curl\""),
        "{}",
        stdout(&out)
    );
    let out = bridle(&[
        "explain",
        "--policy",
        &shipped("coding-agent.toml"),
        "exec",
        "/opt/unknown/tool",
    ]);
    assert!(
        stdout(&out).contains(
            "add \"/opt/unknown/tool\" to the exec list of a permit rule, e.g. rule \"git\""
        ),
        "{}",
        stdout(&out)
    );
    let out = bridle(&[
        "explain",
        "--policy",
        &shipped("coding-agent.toml"),
        "connect",
        "api.github.com:443",
    ]);
    assert!(stdout(&out).contains("PERMITTED"), "{}", stdout(&out));
    let out = bridle(&[
        "explain",
        "--policy",
        &shipped("coding-agent.toml"),
        "connect",
        "evil.example:443",
    ]);
    assert!(
        stdout(&out).contains("NAME_NOT_ALLOWED"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn explain_with_invariants() {
    let dir = std::env::temp_dir().join(format!("bridle-inv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let inv = dir.join("inv.toml");
    std::fs::write(
        &inv,
        "[[rule]]\nname = \"no-git\"\nexec = [\"/usr/bin/git\"]\n",
    )
    .unwrap();
    let out = bridle(&[
        "explain",
        "--policy",
        &shipped("coding-agent.toml"),
        "--invariants",
        &inv.display().to_string(),
        "exec",
        "/usr/bin/git",
    ]);
    let text = stdout(&out);
    assert!(text.contains("INVARIANT"), "{text}");
    assert!(
        text.contains("invariant \"no-git\" blocks it; no policy can override an invariant"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn explain_connect_targets() {
    for target in [
        "1.2.3.4:443",
        "[::1]:80",
        "host.example:443",
        "unix:/run/x.sock",
        "unix:@name",
        "raw",
    ] {
        let out = bridle(&[
            "explain",
            "--policy",
            &shipped("default.toml"),
            "connect",
            target,
        ]);
        assert!(out.status.success(), "{target}: {}", stderr(&out));
    }
    let out = bridle(&[
        "explain",
        "--policy",
        &shipped("default.toml"),
        "connect",
        "[::1]:8080",
    ]);
    assert!(stdout(&out).contains("PERMITTED"));
    let out = bridle(&[
        "explain",
        "--policy",
        &shipped("default.toml"),
        "connect",
        "not a target",
    ]);
    assert!(!out.status.success());
}
