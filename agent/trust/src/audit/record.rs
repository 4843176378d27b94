//! Audit records and the hash that chains them.

use borsh::BorshSerialize;
use bridle_engine::{Code, Effect};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Domain prefix of the bytes a record hash covers.
pub const RECORD_DOMAIN: &[u8] = b"bridle-audit-record-v1\0";
/// Domain prefix of the bytes a counted record's hash covers (one with [`Repeats`]). A record
/// for one decision keeps the v1 bytes exactly, so trails written before counted records
/// existed verify unchanged, and no v1 record hashes like a counted one.
pub const COUNTED_RECORD_DOMAIN: &[u8] = b"bridle-audit-record-v2\0";
/// The `prev_hash` of the first record of a trail.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What the caller knows about a decision; the writer adds sequence, time and chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFields {
    /// The workload (its confinement name or cgroup path).
    pub workload: String,
    /// The process id.
    pub pid: u32,
    /// The user id.
    pub uid: u32,
    /// The process name.
    pub comm: String,
    /// `exec`, `connect`, …
    pub action: String,
    /// The file or address.
    pub object: String,
    /// The verdict's effect.
    pub effect: Effect,
    /// The verdict's code.
    pub code: Code,
    /// The rule that matched, if any.
    pub rule: Option<String>,
    /// The permit that decided, if any.
    pub permit_id: Option<u64>,
}

/// What a counted record adds: it stands for `count` decisions that would each have made the
/// same record (same workload, process, action, object, verdict, rule and permit), taken
/// between `first` and `last`. The kernel counts repeated permitted connects and sends this way
/// instead of sending each one (see agent/src/kernel/tally.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeats {
    /// How many decisions (at least 1).
    pub count: u64,
    /// When the first of them was taken, or a moment before (Unix ns).
    pub first: u64,
    /// When the last of them was taken, or a moment before (Unix ns).
    pub last: u64,
}

/// One decision in the chain, or with `count` a number of identical ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in the trail, from 1, without gaps.
    pub seq: u64,
    /// When it was recorded (Unix ns).
    pub time: u64,
    /// The workload.
    pub workload: String,
    /// The process id.
    pub pid: u32,
    /// The user id.
    pub uid: u32,
    /// The process name.
    pub comm: String,
    /// `exec`, `connect`, …
    pub action: String,
    /// The file or address.
    pub object: String,
    /// The verdict's effect.
    pub effect: Effect,
    /// The verdict's code.
    pub code: Code,
    /// The rule that matched, if any.
    pub rule: Option<String>,
    /// The permit that decided, if any.
    pub permit_id: Option<u64>,
    /// How many decisions this record stands for; absent: one. Only counted records (see
    /// [`Repeats`]) carry `count`, `first` and `last`, all three.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The first counted decision's time (Unix ns); absent on a record of one decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<u64>,
    /// The last counted decision's time (Unix ns); absent on a record of one decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<u64>,
    /// The previous record's `hash` ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// sha256 over the canonical encoding of every other field, lower-case hex.
    pub hash: String,
}

#[derive(BorshSerialize)]
struct CanonicalRecord<'a> {
    seq: u64,
    time: u64,
    workload: &'a str,
    pid: u32,
    uid: u32,
    comm: &'a str,
    action: &'a str,
    object: &'a str,
    effect: &'a str,
    code: &'a str,
    rule: Option<&'a str>,
    permit_id: Option<u64>,
    prev_hash: &'a str,
}

/// The canonical encoding of a counted record: the v1 fields, then the count and span.
#[derive(BorshSerialize)]
struct CanonicalCounted<'a> {
    record: CanonicalRecord<'a>,
    count: Option<u64>,
    first: Option<u64>,
    last: Option<u64>,
}

impl AuditRecord {
    /// Builds the record that follows `prev_hash` and computes its hash.
    pub fn new(fields: RecordFields, seq: u64, time: u64, prev_hash: String) -> AuditRecord {
        AuditRecord::with_scratch(fields, seq, time, prev_hash, &mut Vec::new())
    }

    /// [`AuditRecord::new`], hashing through `scratch` so a writer's hot path does not allocate.
    pub fn with_scratch(
        fields: RecordFields,
        seq: u64,
        time: u64,
        prev_hash: String,
        scratch: &mut Vec<u8>,
    ) -> AuditRecord {
        AuditRecord::counted(fields, None, seq, time, prev_hash, scratch)
    }

    /// [`AuditRecord::with_scratch`] for a record that stands for `repeats` decisions (`None`:
    /// one, the plain record).
    pub fn counted(
        fields: RecordFields,
        repeats: Option<Repeats>,
        seq: u64,
        time: u64,
        prev_hash: String,
        scratch: &mut Vec<u8>,
    ) -> AuditRecord {
        let mut record = AuditRecord {
            seq,
            time,
            workload: fields.workload,
            pid: fields.pid,
            uid: fields.uid,
            comm: fields.comm,
            action: fields.action,
            object: fields.object,
            effect: fields.effect,
            code: fields.code,
            rule: fields.rule,
            permit_id: fields.permit_id,
            count: repeats.map(|r| r.count),
            first: repeats.map(|r| r.first),
            last: repeats.map(|r| r.last),
            prev_hash,
            hash: String::new(),
        };
        record.hash = record.compute_hash(scratch);
        record
    }

    /// How many decisions the record stands for.
    pub fn decisions(&self) -> u64 {
        self.count.unwrap_or(1)
    }

    /// Whether the record carries a count or span (then it is hashed under
    /// [`COUNTED_RECORD_DOMAIN`]).
    pub fn is_counted(&self) -> bool {
        self.count.is_some() || self.first.is_some() || self.last.is_some()
    }

    /// The canonical bytes the hash covers (every field but `hash`), appended to `out`.
    pub fn canonical_bytes_into(&self, out: &mut Vec<u8>) {
        let canonical = CanonicalRecord {
            seq: self.seq,
            time: self.time,
            workload: &self.workload,
            pid: self.pid,
            uid: self.uid,
            comm: &self.comm,
            action: &self.action,
            object: &self.object,
            effect: self.effect.as_str(),
            code: self.code.as_str(),
            rule: self.rule.as_deref(),
            permit_id: self.permit_id,
            prev_hash: &self.prev_hash,
        };
        // Writing into a Vec cannot fail.
        if self.is_counted() {
            out.extend_from_slice(COUNTED_RECORD_DOMAIN);
            let counted = CanonicalCounted {
                record: canonical,
                count: self.count,
                first: self.first,
                last: self.last,
            };
            let _ = borsh::to_writer(out, &counted);
        } else {
            out.extend_from_slice(RECORD_DOMAIN);
            let _ = borsh::to_writer(out, &canonical);
        }
    }

    /// The hash this record should carry; `scratch` is reused so the hot path does not allocate.
    pub fn compute_hash(&self, scratch: &mut Vec<u8>) -> String {
        scratch.clear();
        self.canonical_bytes_into(scratch);
        hex::encode(Sha256::digest(scratch.as_slice()))
    }
}
