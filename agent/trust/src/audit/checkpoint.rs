//! Signed checkpoints over the chain head.

use crate::keys::{Algorithm, KeyPair, KeyRing};
use borsh::BorshSerialize;
use serde::{Deserialize, Serialize};

/// Domain prefix of the bytes a checkpoint signature covers.
pub const CHECKPOINT_DOMAIN: &[u8] = b"bridle-audit-checkpoint-v1\0";

/// A hybrid signature over the chain head: every record up to `seq` is covered through the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The seq of the last record covered.
    pub seq: u64,
    /// That record's hash.
    pub head_hash: String,
    /// When the checkpoint was made (Unix ns).
    pub time: u64,
    /// The writer's record interval: at most this many records between checkpoints.
    pub every_records: u64,
    /// The writer's time interval (ns): a record this long after the previous checkpoint is
    /// followed by a checkpoint.
    pub every_ns: u64,
    /// The signing key.
    pub key_id: String,
    /// Ed25519 signature over [`Checkpoint::signed_bytes`].
    #[serde(with = "crate::b64", default)]
    pub ed25519: Vec<u8>,
    /// ML-DSA-65 signature over [`Checkpoint::signed_bytes`].
    #[serde(with = "crate::b64", default)]
    pub mldsa65: Vec<u8>,
}

#[derive(BorshSerialize)]
struct CanonicalCheckpoint<'a> {
    seq: u64,
    head_hash: &'a str,
    time: u64,
    every_records: u64,
    every_ns: u64,
    key_id: &'a str,
}

impl Checkpoint {
    /// Makes and signs a checkpoint.
    pub fn sign(
        seq: u64,
        head_hash: String,
        time: u64,
        every_records: u64,
        every_ns: u64,
        key: &KeyPair,
    ) -> Checkpoint {
        let mut cp = Checkpoint {
            seq,
            head_hash,
            time,
            every_records,
            every_ns,
            key_id: key.key_id().to_string(),
            ed25519: Vec::new(),
            mldsa65: Vec::new(),
        };
        let sig = key.sign(&cp.signed_bytes());
        cp.ed25519 = sig.ed25519;
        cp.mldsa65 = sig.mldsa65;
        cp
    }

    /// The bytes both signatures cover.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(CHECKPOINT_DOMAIN);
        let canonical = CanonicalCheckpoint {
            seq: self.seq,
            head_hash: &self.head_hash,
            time: self.time,
            every_records: self.every_records,
            every_ns: self.every_ns,
            key_id: &self.key_id,
        };
        // Writing into a Vec cannot fail.
        let _ = borsh::to_writer(&mut out, &canonical);
        out
    }

    /// Checks the signatures (both required) against `ring`; the error says what is wrong.
    pub fn verify_signatures(&self, ring: &KeyRing) -> Result<(), String> {
        let key = ring
            .get(&self.key_id)
            .ok_or_else(|| format!("signed by unknown key {}", self.key_id))?;
        for (sig, which) in [
            (&self.ed25519, Algorithm::Ed25519),
            (&self.mldsa65, Algorithm::MlDsa65),
        ] {
            if sig.is_empty() {
                return Err(format!("has no {which} signature (both are required)"));
            }
        }
        let check = key.check(&self.signed_bytes(), &self.ed25519, &self.mldsa65);
        match (check.ed25519, check.mldsa65) {
            (true, true) => {}
            (false, false) => return Err("neither signature verifies".to_string()),
            (false, true) => return Err("the Ed25519 signature does not verify".to_string()),
            (true, false) => return Err("the ML-DSA-65 signature does not verify".to_string()),
        }
        if let Some(exp) = key.info().expires_at {
            if self.time >= exp {
                return Err(format!("signed after its key {} expired", self.key_id));
            }
        }
        Ok(())
    }
}
