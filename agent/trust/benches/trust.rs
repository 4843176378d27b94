//! Hybrid sign / verify rates, issuing and verifying permit batches, and audit append throughput.

use bridle_trust::audit::{AuditConfig, AuditWriter, RecordFields};
use bridle_trust::store::read_batch;
use bridle_trust::{
    Code, Effect, KeyPair, KeyRing, Permit, PermitBatch, PermitStore, PolicyRef, Subject,
    SystemClock,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000 * SEC;

fn permit(id: u64) -> Permit {
    Permit {
        id,
        policy: PolicyRef {
            name: "coding-agent".into(),
            version: Some(3),
            digest: "ab".repeat(32),
        },
        subject: Subject {
            cgroup_id: 4242,
            cgroup_path: "/sys/fs/cgroup/agents/a1".into(),
        },
        action: "connect".into(),
        object: "api.example.com:443".into(),
        effect: Effect::Permit,
        code: Code::Permitted,
        rule: Some("model-api".into()),
        issued_at: T0,
        expires_at: T0 + 600 * SEC,
        key_id: String::new(),
    }
}

fn fields(i: u64) -> RecordFields {
    RecordFields {
        workload: "coding-agent".into(),
        pid: 4000 + (i % 64) as u32,
        uid: 1000,
        comm: "python3".into(),
        action: "connect".into(),
        object: "api.example.com:443".into(),
        effect: Effect::Permit,
        code: Code::Permitted,
        rule: Some("model-api".into()),
        permit_id: Some(i + 1),
    }
}

fn permits(c: &mut Criterion) {
    let key = KeyPair::from_seeds(&[1; 32], &[2; 32], T0 - SEC, None);
    let mut ring = KeyRing::new();
    ring.insert(key.public().clone());
    let mut group = c.benchmark_group("permit");
    group.throughput(Throughput::Elements(1));
    let mut id = 1;
    group.bench_function("hybrid_sign", |b| {
        b.iter(|| {
            id += 1;
            black_box(permit(id).sign(&key))
        })
    });
    let signed = permit(7).sign(&key);
    group.bench_function("hybrid_verify", |b| {
        b.iter(|| black_box(signed.verify(&ring, T0 + SEC)).is_ok())
    });
    // One permit of a 10,000-permit batch, verified on its own: the header's two signatures,
    // the permit's leaf hash and its 14-hash inclusion proof.
    let batch = PermitBatch::sign(1, T0, (1..=BATCH).map(permit).collect(), &key);
    let member = batch.signed_permit(4321).expect("a member");
    group.bench_function("batch_member_verify_of_10000", |b| {
        b.iter(|| black_box(member.verify(&ring, T0 + SEC)).is_ok())
    });
    group.finish();
}

const BATCH: u64 = 10_000;

/// Issuing 10,000 permits as the issuer does, signed and stored (fsynced) before it returns:
/// as one batch, and (the former way) one signature and one file per permit.
fn issue(c: &mut Criterion) {
    let key = KeyPair::from_seeds(&[1; 32], &[2; 32], T0 - SEC, None);
    let mut ring = KeyRing::new();
    ring.insert(key.public().clone());
    let mut group = c.benchmark_group("permits_10000");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(20);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = PermitStore::new(dir.path());
    let mut batch_id = 0;
    group.bench_function("batch_sign_and_store", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let permits: Vec<Permit> = (1..=BATCH).map(permit).collect();
                batch_id += 1;
                let start = Instant::now();
                let batch = PermitBatch::sign(batch_id, T0, permits, &key);
                black_box(store.insert_batch(&batch).expect("store"));
                total += start.elapsed();
                store.remove_batch(batch_id).expect("remove");
            }
            total
        })
    });
    let batch = PermitBatch::sign(1, T0, (1..=BATCH).map(permit).collect(), &key);
    let path = store.insert_batch(&batch).expect("store");
    // What `bridle permits verify` and a restarted daemon do: read, parse, verify every permit.
    group.bench_function("batch_load_and_verify", |b| {
        b.iter(|| {
            let batch = read_batch(&path).expect("read");
            black_box(batch.verify(&ring, T0 + SEC).iter().all(Result::is_ok))
        })
    });
    store.remove_batch(1).expect("remove");
    group.sample_size(10);
    group.bench_function("alone_sign_and_store", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let permits: Vec<Permit> = (1..=BATCH).map(permit).collect();
                let start = Instant::now();
                for p in permits {
                    black_box(store.replace(&p.sign(&key)).expect("store"));
                }
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
}

fn audit_append(c: &mut Criterion) {
    let key = Arc::new(KeyPair::from_seeds(&[1; 32], &[2; 32], T0 - SEC, None));
    let mut group = c.benchmark_group("audit");
    const BATCH: u64 = 10_000;
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(20));
    // Each sample appends batches of 10,000 chained records, each batch closed by one signed
    // checkpoint and an fsync: the configuration the daemon runs with.
    group.bench_function("append_chained_checkpoint_every_10000", |b| {
        b.iter_custom(|iters| {
            let dir = tempfile::tempdir().expect("temp dir");
            let config = AuditConfig {
                checkpoint_every_records: BATCH,
                ..AuditConfig::default()
            };
            let mut writer =
                AuditWriter::open(dir.path(), key.clone(), Box::new(SystemClock), config)
                    .expect("open writer");
            let start = Instant::now();
            for i in 0..iters * BATCH {
                black_box(writer.append(fields(i)).expect("append"));
            }
            writer.close().expect("close");
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, permits, issue, audit_append);
criterion_main!(benches);
