//! The trust commands of the real `bridle` binary: keys, permits, audit, offline verification.

use bridle_tests::bridle_bin;
use bridle_trust::audit::{AuditConfig, AuditWriter, RecordFields};
use bridle_trust::clock::now_ns;
use bridle_trust::{
    Code, Effect, KeyStore, ManualClock, Permit, PermitBatch, PermitStore, PolicyRef, SignedPermit,
    Subject,
};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

const SEC: u64 = 1_000_000_000;
/// 2023-11-14T22:13:20Z.
const T0: u64 = 1_700_000_000 * SEC;

fn bridle(state: &Path, args: &[&str]) -> Output {
    Command::new(bridle_bin())
        .env("BRIDLE_STATE_DIR", state)
        .args(args)
        .output()
        .expect("run bridle")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn permit(id: u64, object: &str) -> Permit {
    let now = now_ns();
    Permit {
        id,
        policy: PolicyRef {
            name: "coding-agent".into(),
            version: Some(1),
            digest: "ab".repeat(32),
        },
        subject: Subject {
            cgroup_id: 77,
            cgroup_path: "/sys/fs/cgroup/agents/a".into(),
        },
        action: "exec".into(),
        object: object.into(),
        effect: Effect::Permit,
        code: Code::Permitted,
        rule: Some("toolchain".into()),
        issued_at: now - SEC,
        expires_at: now + 3600 * SEC,
        key_id: String::new(),
    }
}

fn fields(i: u64) -> RecordFields {
    RecordFields {
        workload: if i.is_multiple_of(2) {
            "agent-a"
        } else {
            "agent-b"
        }
        .into(),
        pid: 100 + i as u32,
        uid: 1000,
        comm: "sh".into(),
        action: "exec".into(),
        object: format!("/usr/bin/t{i}"),
        effect: if i.is_multiple_of(4) {
            Effect::Refuse
        } else {
            Effect::Permit
        },
        code: if i.is_multiple_of(4) {
            Code::PolicyRefused
        } else {
            Code::Permitted
        },
        rule: None,
        permit_id: None,
    }
}

/// A state directory with a rotated key, a permit signed alone by the old key (as earlier
/// versions stored permits), a batch of two permits (0x22, 0x33) signed by the new key, and a
/// 12-record trail with records one second apart from T0. The files: the old permit's, the
/// batch's.
fn populated_state() -> (tempfile::TempDir, PathBuf, Vec<PathBuf>) {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let out = bridle(&state, &["keys", "generate"]);
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    let keys = KeyStore::new(&state);
    let old = keys.load_current().unwrap();
    let store = PermitStore::new(&state);
    let mut files = vec![store
        .insert(&permit(0x11, "/usr/bin/git").sign(&old))
        .unwrap()];
    let out = bridle(&state, &["keys", "generate"]);
    assert_eq!(code(&out), 0);
    assert!(text(&out).0.contains("rotated"), "{:?}", text(&out));
    let new = Arc::new(keys.load_current().unwrap());
    assert_ne!(old.key_id(), new.key_id());
    let batch = PermitBatch::sign(
        0xb1,
        now_ns() - SEC,
        vec![permit(0x22, "/usr/bin/make"), permit(0x33, "/usr/bin/cc")],
        &new,
    );
    files.push(store.insert_batch(&batch).unwrap());

    let clock = ManualClock::new(T0);
    let cfg = AuditConfig {
        checkpoint_every_records: 5,
        ..AuditConfig::default()
    };
    let mut w = AuditWriter::open(&state.join("audit"), new, Box::new(clock.clone()), cfg).unwrap();
    for i in 0..12 {
        w.append(fields(i)).unwrap();
        clock.advance(SEC);
    }
    w.close().unwrap();
    (tmp, state, files)
}

#[test]
fn keys_permits_and_audit_verify_on_the_host() {
    let (_tmp, state, _) = populated_state();
    let out = bridle(&state, &["keys", "show"]);
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    assert_eq!(text(&out).0.lines().count(), 2);
    assert!(text(&out).0.contains("(current)"));

    let out = bridle(&state, &["permits", "list"]);
    let (stdout, _) = text(&out);
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    assert!(
        stdout.contains("0000000000000011") && stdout.contains("/usr/bin/make"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .filter(|l| l.contains("batch=00000000000000b1"))
            .count()
            == 2,
        "{stdout}"
    );

    let out = bridle(&state, &["permits", "verify"]);
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    assert!(text(&out).0.contains("3 permit(s) verified, 0 failed"));

    let out = bridle(&state, &["audit", "verify"]);
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    assert!(text(&out).0.starts_with("OK"));

    let out = bridle(&state, &["audit", "tail", "-n", "2"]);
    let (stdout, _) = text(&out);
    assert_eq!(stdout.lines().count(), 2);
    assert!(stdout.contains("\"seq\":12"));
}

#[test]
fn a_tampered_permit_store_fails_verification_naming_the_file() {
    let (_tmp, state, files) = populated_state();
    // A permit signed alone, edited.
    let mut p: SignedPermit = SignedPermit::from_json(&std::fs::read(&files[0]).unwrap()).unwrap();
    p.permit.object = "/usr/bin/nc".into();
    std::fs::write(&files[0], p.to_json()).unwrap();
    // One permit of the batch, edited in its file: only that one fails.
    let batch = std::fs::read_to_string(&files[1]).unwrap();
    std::fs::write(&files[1], batch.replace("/usr/bin/make", "/usr/bin/nc")).unwrap();
    let out = bridle(&state, &["permits", "verify"]);
    assert_eq!(code(&out), 1);
    let (stdout, stderr) = text(&out);
    assert!(
        stdout.contains("1 permit(s) verified, 2 failed"),
        "{stdout}"
    );
    for f in &files {
        assert!(stderr.contains(&f.display().to_string()), "{stderr}");
    }
    assert_eq!(
        stderr.matches("changed after it was signed").count(),
        2,
        "{stderr}"
    );
}

#[test]
fn offline_verification_uses_only_the_exported_bundle() {
    let (_tmp, state, files) = populated_state();
    let elsewhere = tempfile::tempdir().unwrap();
    let bundle = elsewhere.path().join("bundle.json");
    let out = bridle(
        &state,
        &["keys", "export", "--out", bundle.to_str().unwrap()],
    );
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    // A copy of the files on "another machine": no state directory, no secret keys.
    let copy = elsewhere.path().join("copy");
    std::fs::create_dir_all(copy.join("audit")).unwrap();
    for f in &files {
        std::fs::copy(f, copy.join(f.file_name().unwrap())).unwrap();
    }
    for entry in std::fs::read_dir(state.join("audit")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join("audit").join(entry.file_name())).unwrap();
    }
    let no_state = elsewhere.path().join("no-state");
    let verify = |target: &Path| {
        bridle(
            &no_state,
            &[
                "verify",
                "--keys",
                bundle.to_str().unwrap(),
                target.to_str().unwrap(),
            ],
        )
    };
    let out = verify(&copy.join(files[0].file_name().unwrap()));
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    assert!(text(&out).0.starts_with("OK: permit"));
    let batch = copy.join(files[1].file_name().unwrap());
    let out = verify(&batch);
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    assert!(
        text(&out)
            .0
            .starts_with("OK: batch 00000000000000b1: 2 permit(s)"),
        "{:?}",
        text(&out)
    );
    // One permit of the batch, shown alone, verifies on its own: header and inclusion proof.
    let alone = copy.join("permit-33.json");
    let out = bridle(
        &state,
        &["permits", "show", "33", "--out", alone.to_str().unwrap()],
    );
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    let out = verify(&alone);
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    assert!(
        text(&out)
            .0
            .starts_with("OK: permit 0000000000000033 (permit exec /usr/bin/cc)"),
        "{:?}",
        text(&out)
    );
    assert!(text(&out)
        .0
        .contains("in batch 00000000000000b1, leaf 1 of 2"));
    let mut shown: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&alone).unwrap()).unwrap();
    shown["batch"]["path"][0] = serde_json::json!("00".repeat(32));
    std::fs::write(&alone, serde_json::to_vec(&shown).unwrap()).unwrap();
    let out = verify(&alone);
    assert_eq!(code(&out), 1);
    assert!(text(&out).1.contains("inclusion proof"), "{:?}", text(&out));
    let out = bridle(&state, &["permits", "show", "44"]);
    assert_eq!(code(&out), 1);
    // The batch's lines reordered: the moved permits are named.
    let content = std::fs::read_to_string(&batch).unwrap();
    let mut lines: Vec<&str> = content.lines().collect();
    lines.swap(1, 2);
    std::fs::write(&batch, lines.join("\n") + "\n").unwrap();
    let out = verify(&batch);
    assert_eq!(code(&out), 1);
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("2 of 2 permit(s)"), "{stdout}");
    assert_eq!(
        stderr.matches("the batch was reordered").count(),
        2,
        "{stderr}"
    );

    let out = verify(&copy.join("audit"));
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    let segment = copy.join("audit").join("audit-00000001.jsonl");
    let out = verify(&segment);
    assert_eq!(code(&out), 0, "{:?}", text(&out));

    // Tampering with the copy is caught with file, line and seq.
    let content = std::fs::read_to_string(&segment).unwrap();
    let mut lines: Vec<&str> = content.lines().collect();
    lines.swap(2, 3);
    std::fs::write(&segment, lines.join("\n") + "\n").unwrap();
    let out = verify(&copy.join("audit"));
    assert_eq!(code(&out), 1);
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("audit-00000001.jsonl:3 (seq 4)"),
        "{stderr}"
    );

    // A bundle without the key that signed is a foreign key.
    let mut b: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    b["keys"].as_array_mut().unwrap().remove(0);
    std::fs::write(&bundle, serde_json::to_vec(&b).unwrap()).unwrap();
    let out = verify(&copy.join(files[0].file_name().unwrap()));
    assert_eq!(code(&out), 1);
    assert!(text(&out).1.contains("unknown key"), "{:?}", text(&out));
}

#[test]
fn export_filters_select_records() {
    let (_tmp, state, _) = populated_state();
    let export = |args: &[&str]| {
        let mut all = vec!["audit", "export"];
        all.extend_from_slice(args);
        let out = bridle(&state, &all);
        assert_eq!(code(&out), 0, "{:?}", text(&out));
        text(&out).0
    };
    assert_eq!(export(&["--format", "jsonl"]).lines().count(), 12);
    // Records are at T0 + i seconds; --since is inclusive, --until exclusive.
    let ranged = export(&["--since", "2023-11-14T22:13:23Z", "--until", "1700000007"]);
    assert_eq!(ranged.lines().count(), 4, "{ranged}");
    let a = export(&["--workload", "agent-a"]);
    assert_eq!(a.lines().count(), 6);
    assert!(a.lines().all(|l| l.contains("\"workload\":\"agent-a\"")));
    assert_eq!(export(&["--verdict", "refuse"]).lines().count(), 3);
    assert_eq!(export(&["--verdict", "POLICY_REFUSED"]).lines().count(), 3);
    let csv = export(&[
        "--format",
        "csv",
        "--workload",
        "agent-b",
        "--verdict",
        "permit",
    ]);
    let mut rows = csv.lines();
    assert!(rows.next().unwrap().starts_with("seq,time,workload"));
    assert_eq!(rows.count(), 6);
}

#[test]
fn a_readable_secret_key_is_refused_and_usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    assert_eq!(code(&bridle(&state, &["keys", "generate"])), 0);
    let id = std::fs::read_to_string(state.join("keys/current")).unwrap();
    let secret = state.join("keys").join(id.trim()).join("secret.ed25519");
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = bridle(&state, &["keys", "show"]);
    assert_eq!(code(&out), 1);
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains(&format!("chmod 600 {}", secret.display())),
        "{stderr}"
    );

    assert_eq!(code(&bridle(&state, &["keys", "frobnicate"])), 2);
    assert_eq!(
        code(&bridle(&state, &["audit", "export", "--format", "xml"])),
        2
    );
    assert_eq!(
        code(&bridle(
            &state,
            &["audit", "export", "--since", "yesterday"]
        )),
        2
    );
}
