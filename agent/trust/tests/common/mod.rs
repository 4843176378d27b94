//! Helpers shared by the trust tests.
#![allow(dead_code)]

use bridle_trust::audit::RecordFields;
use bridle_trust::{Code, Effect, KeyPair, KeyRing, Permit, PolicyRef, Subject};

pub const SEC: u64 = 1_000_000_000;
pub const T0: u64 = 1_700_000_000 * SEC;

pub fn key(seed: u8) -> KeyPair {
    KeyPair::from_seeds(
        &[seed; 32],
        &[seed.wrapping_add(100); 32],
        T0 - 100 * SEC,
        None,
    )
}

pub fn ring(keys: &[&KeyPair]) -> KeyRing {
    let mut ring = KeyRing::new();
    for k in keys {
        ring.insert(k.public().clone());
    }
    ring
}

pub fn permit(id: u64, object: &str) -> Permit {
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
        action: "exec".into(),
        object: object.into(),
        effect: Effect::Permit,
        code: Code::Permitted,
        rule: Some("toolchain".into()),
        issued_at: T0,
        expires_at: T0 + 600 * SEC,
        key_id: String::new(),
    }
}

pub fn fields(i: u64) -> RecordFields {
    RecordFields {
        workload: if i.is_multiple_of(2) {
            "agent-a".into()
        } else {
            "agent-b".into()
        },
        pid: 1000 + i as u32,
        uid: 1000,
        comm: "git".into(),
        action: if i.is_multiple_of(3) {
            "connect".into()
        } else {
            "exec".into()
        },
        object: format!("/usr/bin/tool{i}"),
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
        rule: Some("toolchain".into()),
        permit_id: if i.is_multiple_of(4) {
            None
        } else {
            Some(i + 1)
        },
    }
}

/// A batch of `n` permits (ids 1..=n, objects `/usr/bin/tool<i>`) signed by `key` at T0.
pub fn batch(id: u64, n: u64, key: &KeyPair) -> bridle_trust::PermitBatch {
    let permits = (1..=n)
        .map(|i| permit(i, &format!("/usr/bin/tool{i}")))
        .collect();
    bridle_trust::PermitBatch::sign(id, T0, permits, key)
}
