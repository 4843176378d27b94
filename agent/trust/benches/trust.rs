//! Hybrid sign / verify rates and audit append throughput.

use bridle_trust::audit::{AuditConfig, AuditWriter, RecordFields};
use bridle_trust::{Code, Effect, KeyPair, KeyRing, Permit, PolicyRef, Subject, SystemClock};
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

criterion_group!(benches, permits, audit_append);
criterion_main!(benches);
