//! Audit trail: chaining, checkpoints, tamper detection, crash recovery, export.

mod common;
use bridle_trust::audit::{
    self, verify_dir, verify_segment, AuditConfig, AuditWriter, ExportFilter, ExportFormat,
    FailureKind, VerifyReport,
};
use bridle_trust::{KeyPair, ManualClock};
use common::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn config() -> AuditConfig {
    AuditConfig {
        checkpoint_every_records: 5,
        checkpoint_every_ns: 10 * SEC,
        segment_max_bytes: 1 << 20,
        flush_bytes: 1024,
    }
}

/// Writes `n` records one second apart with a checkpoint every 5; returns the key.
fn write_trail(dir: &Path, n: u64, cfg: AuditConfig) -> Arc<KeyPair> {
    let k = Arc::new(key(1));
    let clock = ManualClock::new(T0);
    let mut w = AuditWriter::open(dir, k.clone(), Box::new(clock.clone()), cfg).unwrap();
    for i in 0..n {
        assert_eq!(w.append(fields(i)).unwrap(), i + 1);
        clock.advance(SEC);
    }
    w.close().unwrap();
    k
}

fn segment(dir: &Path) -> PathBuf {
    dir.join("audit-00000001.jsonl")
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn verify(dir: &Path, k: &KeyPair) -> VerifyReport {
    verify_dir(dir, &ring(&[k])).unwrap()
}

fn failure(report: &VerifyReport) -> (FailureKind, usize, Option<u64>) {
    let f = report.failure.as_ref().expect("a failure");
    (f.kind, f.location.line, f.location.seq)
}

/// Line numbers (1-based) of the records with these seqs in an intact 12-record trail with a
/// checkpoint after every 5: records 1-5 are lines 1-5, checkpoint line 6, records 6-10 lines
/// 7-11, checkpoint line 12, records 11-12 lines 13-14, closing checkpoint line 15.
fn line_of(seq: usize) -> usize {
    seq + (seq - 1) / 5
}

#[test]
fn an_intact_trail_verifies_and_is_fully_covered() {
    let dir = tempfile::tempdir().unwrap();
    let k = write_trail(dir.path(), 12, config());
    assert_eq!(lines(&segment(dir.path())).len(), 15);
    let r = verify(dir.path(), &k);
    assert!(r.is_ok(), "{r}");
    assert_eq!(
        (r.records, r.checkpoints, r.covered_through, r.uncovered),
        (12, 3, Some(12), 0)
    );
}

#[test]
fn an_edited_record_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let k = write_trail(dir.path(), 12, config());
    let mut l = lines(&segment(dir.path()));
    l[line_of(8) - 1] = l[line_of(8) - 1].replace("/usr/bin/tool7", "/usr/bin/tool9");
    write_lines(&segment(dir.path()), &l);
    let r = verify(dir.path(), &k);
    assert_eq!(failure(&r), (FailureKind::Edited, line_of(8), Some(8)));
    assert_eq!(
        r.records, 7,
        "everything before the bad record still verifies"
    );
    let msg = r.failure.unwrap().to_string();
    assert!(msg.contains("audit-00000001.jsonl:9"), "{msg}");
}

#[test]
fn an_edited_and_rehashed_record_breaks_the_link_or_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let k = write_trail(dir.path(), 12, config());
    let path = segment(dir.path());
    let mut l = lines(&path);
    // Rewrite record 10 (the last before a checkpoint) with a consistent hash.
    let i = line_of(10) - 1;
    let mut rec: audit::AuditRecord = match serde_json::from_str(&l[i]).unwrap() {
        audit::Entry::Record(r) => r,
        _ => panic!(),
    };
    rec.object = "/bin/evil".into();
    rec.hash = rec.compute_hash(&mut Vec::new());
    l[i] = serde_json::to_string(&audit::Entry::Record(rec)).unwrap();
    write_lines(&path, &l);
    let r = verify(dir.path(), &k);
    assert_eq!(
        failure(&r),
        (FailureKind::CheckpointMismatch, line_of(10) + 1, Some(10))
    );
}

#[test]
fn a_deleted_record_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let k = write_trail(dir.path(), 12, config());
    let mut l = lines(&segment(dir.path()));
    l.remove(line_of(7) - 1);
    write_lines(&segment(dir.path()), &l);
    let r = verify(dir.path(), &k);
    assert_eq!(failure(&r), (FailureKind::Removed, line_of(7), Some(8)));
    // Deleting the last record before a checkpoint is caught by the checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let k = write_trail(dir.path(), 12, config());
    let mut l = lines(&segment(dir.path()));
    l.remove(line_of(5) - 1);
    write_lines(&segment(dir.path()), &l);
    let r = verify(dir.path(), &k);
    assert_eq!(failure(&r), (FailureKind::CheckpointMismatch, 5, Some(5)));
}

#[test]
fn an_inserted_record_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let k = write_trail(dir.path(), 12, config());
    let mut l = lines(&segment(dir.path()));
    let copy = l[line_of(3) - 1].clone();
    l.insert(line_of(4) - 1, copy);
    write_lines(&segment(dir.path()), &l);
    let r = verify(dir.path(), &k);
    assert_eq!(failure(&r), (FailureKind::OutOfOrder, line_of(4), Some(3)));
}

#[test]
fn reordered_records_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let k = write_trail(dir.path(), 12, config());
    let mut l = lines(&segment(dir.path()));
    l.swap(line_of(7) - 1, line_of(8) - 1);
    write_lines(&segment(dir.path()), &l);
    let r = verify(dir.path(), &k);
    assert_eq!(failure(&r), (FailureKind::Removed, line_of(7), Some(8)));
}

#[test]
fn a_forged_checkpoint_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let k = write_trail(dir.path(), 12, config());
    let path = segment(dir.path());
    let original = lines(&path);
    // Re-signed by another key that claims the real key id.
    let mut l = original.clone();
    let mut cp: audit::Checkpoint = match serde_json::from_str(&l[11]).unwrap() {
        audit::Entry::Checkpoint(c) => c,
        _ => panic!("line 12 is a checkpoint"),
    };
    let forged =
        audit::Checkpoint::sign(cp.seq, cp.head_hash.clone(), cp.time, 5, 10 * SEC, &key(2));
    cp.ed25519 = forged.ed25519.clone();
    l[11] = serde_json::to_string(&audit::Entry::Checkpoint(cp.clone())).unwrap();
    write_lines(&path, &l);
    let r = verify(dir.path(), &k);
    assert_eq!(failure(&r), (FailureKind::ForgedCheckpoint, 12, Some(10)));
    // A foreign key.
    let mut l = original.clone();
    l[11] = serde_json::to_string(&audit::Entry::Checkpoint(forged)).unwrap();
    write_lines(&path, &l);
    assert_eq!(
        failure(&verify(dir.path(), &k)),
        (FailureKind::ForgedCheckpoint, 12, Some(10))
    );
    // One signature stripped.
    let mut l = original.clone();
    cp.ed25519.clear();
    l[11] = serde_json::to_string(&audit::Entry::Checkpoint(cp)).unwrap();
    write_lines(&path, &l);
    assert_eq!(
        failure(&verify(dir.path(), &k)),
        (FailureKind::ForgedCheckpoint, 12, Some(10))
    );
}

#[test]
fn a_missing_checkpoint_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let k = write_trail(dir.path(), 12, config());
    let mut l = lines(&segment(dir.path()));
    l.remove(5); // the checkpoint after record 5
    write_lines(&segment(dir.path()), &l);
    let r = verify(dir.path(), &k);
    // Record 6 is the first that should have been preceded by a checkpoint (now on line 6).
    assert_eq!(failure(&r), (FailureKind::MissingCheckpoint, 6, Some(6)));
}

#[test]
fn a_missing_time_checkpoint_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let k = Arc::new(key(1));
    let clock = ManualClock::new(T0);
    let cfg = AuditConfig {
        checkpoint_every_records: 1000,
        ..config()
    };
    let mut w = AuditWriter::open(dir.path(), k.clone(), Box::new(clock.clone()), cfg).unwrap();
    w.append(fields(0)).unwrap();
    clock.advance(11 * SEC);
    w.append(fields(1)).unwrap(); // due: checkpoint follows
    clock.advance(SEC);
    w.append(fields(2)).unwrap();
    clock.advance(20 * SEC);
    w.append(fields(3)).unwrap(); // due again
    w.append(fields(4)).unwrap();
    w.close().unwrap();
    let path = segment(dir.path());
    let l = lines(&path);
    assert!(
        l[2].contains("\"checkpoint\"") && l[5].contains("\"checkpoint\""),
        "{l:#?}"
    );
    assert!(verify(dir.path(), &k).is_ok());
    let mut cut = l.clone();
    cut.remove(5);
    write_lines(&path, &cut);
    let r = verify(dir.path(), &k);
    assert_eq!(failure(&r), (FailureKind::MissingCheckpoint, 6, Some(5)));
}

#[test]
fn records_after_the_last_checkpoint_are_uncovered_not_failed() {
    let dir = tempfile::tempdir().unwrap();
    let k = write_trail(dir.path(), 12, config());
    let mut l = lines(&segment(dir.path()));
    l.pop(); // the closing checkpoint, as after a crash
    write_lines(&segment(dir.path()), &l);
    let r = verify(dir.path(), &k);
    assert!(r.is_ok(), "{r}");
    assert_eq!((r.covered_through, r.uncovered), (Some(10), 2));
    assert!(r.to_string().contains("not yet covered by a checkpoint"));
}

#[test]
fn a_torn_last_line_ends_the_chain_and_nothing_before_it_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let k = write_trail(dir.path(), 12, config());
    let path = segment(dir.path());
    let mut l = lines(&path);
    l.pop(); // the closing checkpoint
    let partial = l.pop().unwrap()[..40].to_string(); // record 12, cut mid-write
    let text = l.join("\n") + "\n" + &partial;
    std::fs::write(&path, &text).unwrap();
    let r = verify(dir.path(), &k);
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.records, 11);
    assert_eq!(r.chain_end.as_ref().unwrap().seq, Some(11));
    assert_eq!(r.torn_tail.as_ref().unwrap().line, line_of(12));
    assert!(r.to_string().contains("torn final line"));

    // The writer cuts the torn line and continues the chain from the last whole record.
    let clock = ManualClock::new(T0 + 100 * SEC);
    let mut w = AuditWriter::open(dir.path(), k.clone(), Box::new(clock), config()).unwrap();
    assert_eq!(w.append(fields(99)).unwrap(), 12);
    w.close().unwrap();
    let r = verify(dir.path(), &k);
    assert!(r.is_ok(), "{r}");
    assert_eq!((r.records, r.uncovered, r.torn_tail), (12, 0, None));
}

#[test]
fn segments_roll_by_size_and_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    // A checkpoint line is about 6.7 kB (mostly the ML-DSA-65 signature), a record 330 bytes.
    let cfg = AuditConfig {
        segment_max_bytes: 20_000,
        ..config()
    };
    let k = write_trail(dir.path(), 40, cfg);
    let segments = audit::list_segments(dir.path()).unwrap();
    assert!(segments.len() >= 3, "{}", segments.len());
    let r = verify(dir.path(), &k);
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.records, 40);
    // A single later segment verifies on its own, anchored at its first record.
    let r = verify_segment(&segments[2].1, &ring(&[&k])).unwrap();
    assert!(r.is_ok(), "{r}");
    // Deleting a middle segment is caught at the first record of the next one.
    std::fs::remove_file(&segments[1].1).unwrap();
    let r = verify(dir.path(), &k);
    let f = r.failure.unwrap();
    assert_eq!(f.location.file, segments[2].1);
    assert!(
        matches!(
            f.kind,
            FailureKind::Removed | FailureKind::CheckpointMismatch | FailureKind::MissingCheckpoint
        ),
        "{f}"
    );
    // Deleting the first segment: the trail no longer starts at its beginning.
    std::fs::remove_file(&segments[0].1).unwrap();
    assert_eq!(
        verify(dir.path(), &k).failure.unwrap().kind,
        FailureKind::NotGenesis
    );
}

#[test]
fn reopening_continues_the_chain_and_the_cadence() {
    let dir = tempfile::tempdir().unwrap();
    let k = write_trail(dir.path(), 7, config());
    let clock = ManualClock::new(T0 + 50 * SEC);
    let mut w =
        AuditWriter::open(dir.path(), k.clone(), Box::new(clock.clone()), config()).unwrap();
    for i in 0..9 {
        w.append(fields(i)).unwrap();
        clock.advance(SEC);
    }
    drop(w); // drop checkpoints and flushes
    let r = verify(dir.path(), &k);
    assert!(r.is_ok(), "{r}");
    assert_eq!((r.records, r.uncovered), (16, 0));
}

#[test]
fn export_filters_by_time_workload_and_verdict() {
    let dir = tempfile::tempdir().unwrap();
    write_trail(dir.path(), 12, config());
    let run = |filter: ExportFilter, format: ExportFormat| {
        let mut out = Vec::new();
        let n = audit::export(dir.path(), &filter, format, &mut out).unwrap();
        (n, String::from_utf8(out).unwrap())
    };
    let (n, all) = run(ExportFilter::default(), ExportFormat::Jsonl);
    assert_eq!(n, 12);
    assert_eq!(all.lines().count(), 12);
    assert!(!all.contains("checkpoint"));
    // Record i (0-based) was written at T0 + i s.
    let (n, _) = run(
        ExportFilter {
            since: Some(T0 + 3 * SEC),
            until: Some(T0 + 7 * SEC),
            ..Default::default()
        },
        ExportFormat::Jsonl,
    );
    assert_eq!(n, 4);
    let (n, text) = run(
        ExportFilter {
            workload: Some("agent-a".into()),
            ..Default::default()
        },
        ExportFormat::Jsonl,
    );
    assert_eq!(n, 6);
    assert!(text.lines().all(|l| l.contains("\"workload\":\"agent-a\"")));
    let (n, _) = run(
        ExportFilter {
            verdict: Some("refuse".into()),
            ..Default::default()
        },
        ExportFormat::Jsonl,
    );
    assert_eq!(n, 3);
    let (n, _) = run(
        ExportFilter {
            verdict: Some("policy_refused".into()),
            ..Default::default()
        },
        ExportFormat::Jsonl,
    );
    assert_eq!(n, 3);
    let (n, csv) = run(
        ExportFilter {
            verdict: Some("PERMITTED".into()),
            workload: Some("agent-b".into()),
            ..Default::default()
        },
        ExportFormat::Csv,
    );
    assert_eq!(n, 6);
    let mut csv_lines = csv.lines();
    assert!(csv_lines
        .next()
        .unwrap()
        .starts_with("seq,time,workload,pid,uid,comm,action,object,effect,code,rule,permit_id"));
    assert_eq!(csv_lines.count(), 6);
    let (n, csv) = run(
        ExportFilter {
            workload: Some("nobody".into()),
            ..Default::default()
        },
        ExportFormat::Csv,
    );
    assert_eq!((n, csv.lines().count()), (0, 1));
}

#[test]
fn tail_and_follow_see_the_newest_records() {
    let dir = tempfile::tempdir().unwrap();
    let k = write_trail(
        dir.path(),
        12,
        AuditConfig {
            segment_max_bytes: 2000,
            ..config()
        },
    );
    let last = audit::tail(dir.path(), 3).unwrap();
    assert_eq!(
        last.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![10, 11, 12]
    );
    let mut follower = audit::Follower::at_end(dir.path()).unwrap();
    assert!(follower.poll().unwrap().is_empty());
    let clock = ManualClock::new(T0 + 100 * SEC);
    let mut w = AuditWriter::open(
        dir.path(),
        k,
        Box::new(clock),
        AuditConfig {
            segment_max_bytes: 2000,
            ..config()
        },
    )
    .unwrap();
    for i in 0..8 {
        w.append(fields(i)).unwrap();
    }
    w.flush().unwrap();
    let seen: Vec<u64> = follower.poll().unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(seen, (13..=20).collect::<Vec<_>>());
}

#[test]
fn counted_records_chain_verify_and_export_their_count() {
    let dir = tempfile::tempdir().unwrap();
    let k = Arc::new(key(1));
    let clock = ManualClock::new(T0);
    let mut w =
        AuditWriter::open(dir.path(), k.clone(), Box::new(clock.clone()), config()).unwrap();
    w.append(fields(1)).unwrap();
    let repeats = audit::Repeats {
        count: 41,
        first: T0 + 10,
        last: T0 + 900,
    };
    w.append_counted(fields(1), Some(repeats)).unwrap();
    clock.advance(SEC);
    w.append(fields(2)).unwrap();
    w.close().unwrap();
    let r = verify(dir.path(), &k);
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.records, 3);

    // A plain record keeps the v1 form: no count, span or any new field on disk.
    let text = lines(&segment(dir.path()));
    assert!(
        !text[0].contains("count") && !text[0].contains("first"),
        "{}",
        text[0]
    );
    assert!(text[1].contains("\"count\":41"), "{}", text[1]);

    let mut out = Vec::new();
    audit::export(
        dir.path(),
        &ExportFilter::default(),
        ExportFormat::Jsonl,
        &mut out,
    )
    .unwrap();
    let records: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let total: u64 = records
        .iter()
        .map(|r| r.get("count").and_then(|c| c.as_u64()).unwrap_or(1))
        .sum();
    assert_eq!(total, 1 + 41 + 1);
    assert_eq!(records[1]["first"], T0 + 10);
    assert_eq!(records[1]["last"], T0 + 900);

    let mut out = Vec::new();
    audit::export(
        dir.path(),
        &ExportFilter::default(),
        ExportFormat::Csv,
        &mut out,
    )
    .unwrap();
    let csv = String::from_utf8(out).unwrap();
    let mut rows = csv.lines();
    assert!(rows
        .next()
        .unwrap()
        .ends_with(",prev_hash,hash,count,first,last"));
    let counts: Vec<String> = rows
        .map(|l| l.split(',').nth(14).unwrap_or_default().to_owned())
        .collect();
    assert_eq!(counts, ["1", "41", "1"]);
}

#[test]
fn an_edited_count_breaks_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let k = Arc::new(key(1));
    let clock = ManualClock::new(T0);
    let mut w =
        AuditWriter::open(dir.path(), k.clone(), Box::new(clock.clone()), config()).unwrap();
    let repeats = audit::Repeats {
        count: 7,
        first: T0,
        last: T0 + 5,
    };
    w.append_counted(fields(1), Some(repeats)).unwrap();
    w.append(fields(2)).unwrap();
    w.close().unwrap();
    let mut text = lines(&segment(dir.path()));
    text[0] = text[0].replace("\"count\":7", "\"count\":6");
    write_lines(&segment(dir.path()), &text);
    assert_eq!(failure(&verify(dir.path(), &k)).0, FailureKind::Edited);

    // Dropping the count altogether turns the record into a v1 one: its hash no longer fits.
    let dir = tempfile::tempdir().unwrap();
    let mut w =
        AuditWriter::open(dir.path(), k.clone(), Box::new(clock.clone()), config()).unwrap();
    w.append_counted(fields(1), Some(repeats)).unwrap();
    w.close().unwrap();
    let mut text = lines(&segment(dir.path()));
    let v: serde_json::Value = serde_json::from_str(&text[0]).unwrap();
    let mut v = v.as_object().unwrap().clone();
    for f in ["count", "first", "last"] {
        v.remove(f);
    }
    text[0] = serde_json::Value::Object(v).to_string();
    write_lines(&segment(dir.path()), &text);
    assert_eq!(failure(&verify(dir.path(), &k)).0, FailureKind::Edited);
}

/// Checkpoints every 10 s, and after a million records.
fn sparse() -> AuditConfig {
    AuditConfig {
        checkpoint_every_records: 1_000_000,
        segment_max_bytes: 64 << 20,
        ..config()
    }
}

/// A trail whose last checkpoint lies more than a megabyte before its end: 10 records and a
/// checkpoint, then `n` records no checkpoint covers (as a crash before the next one leaves
/// them). Returns the key.
fn trail_with_a_long_uncovered_tail(dir: &Path, n: u64) -> Arc<KeyPair> {
    let k = write_trail(dir, 10, sparse());
    // All within one second, so that neither the record count nor the time calls for a
    // checkpoint among them.
    let clock = ManualClock::new(T0 + 11 * SEC);
    let mut w = AuditWriter::open(dir, k.clone(), Box::new(clock), sparse()).unwrap();
    for i in 0..n {
        w.append(fields(i)).unwrap();
    }
    w.close().unwrap();
    // The closing checkpoint goes, as if the writer had died before writing it.
    let path = segment(dir);
    let mut l = lines(&path);
    assert!(l.pop().unwrap().contains("checkpoint"));
    write_lines(&path, &l);
    assert!(std::fs::metadata(&path).unwrap().len() > 1 << 20);
    k
}

#[test]
fn reopening_reads_back_past_a_megabyte_to_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let k = trail_with_a_long_uncovered_tail(dir.path(), 4_000);
    let r = verify(dir.path(), &k);
    assert_eq!((r.records, r.uncovered), (4_010, 4_000), "{r}");
    let clock = ManualClock::new(T0 + 12 * SEC);
    let mut w = AuditWriter::open(dir.path(), k.clone(), Box::new(clock), sparse()).unwrap();
    assert_eq!(w.append(fields(1)).unwrap(), 4_011, "the chain continues");
    w.close().unwrap();
    let r = verify(dir.path(), &k);
    assert!(r.is_ok(), "{r}");
    assert_eq!((r.records, r.uncovered), (4_011, 0));
}

#[test]
fn a_corrupt_line_far_from_the_end_is_named_by_its_line_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // About 4.6 MB: the writer reads back through windows of 1 and 4 MiB before the whole file.
    let k = trail_with_a_long_uncovered_tail(dir.path(), 14_000);
    let path = segment(dir.path());
    let mut l = lines(&path);
    // The line that starts about 2.5 MiB before the end: read in the second window, which does
    // not start the file, so its number must be counted from the file's start.
    let mut after = 0;
    let mut index = l.len();
    while after < 5 << 19 {
        index -= 1;
        after += l[index].len() + 1;
    }
    l[index] = "{ not json".to_string();
    write_lines(&path, &l);
    let Err(err) = AuditWriter::open(dir.path(), k, Box::new(ManualClock::new(T0)), sparse())
    else {
        panic!("a corrupt trail is refused");
    };
    assert!(
        err.to_string()
            .starts_with(&format!("{}:{}: ", path.display(), index + 1)),
        "{err}"
    );
}
