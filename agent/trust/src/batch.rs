//! Permit batches: N permits for one hybrid signature.
//!
//! An issuance (a workload's install, a reload, a renewal) signs its permits as one batch. Each
//! permit's canonical encoding (after `bridle-permit-leaf-v1\0`) is a leaf of a SHA-256 Merkle
//! tree ([`crate::merkle`], RFC 6962 hashing: leaves and nodes domain-separated); the batch
//! header — batch id, signing key, issue time, latest expiry, permit count and tree root — is
//! signed once with both halves of the hybrid key, after the domain prefix
//! `bridle-permit-batch-v1\0`. A verifier still requires both signatures, and each permit stays
//! verifiable on its own: [`PermitBatch::signed_permit`] hands it out with the signed header and
//! its inclusion proof (a [`SignedPermit`] whose `batch` is set).
//!
//! # The batch file
//!
//! JSON lines, written atomically with mode 0600 as `STATE/permits/batch-<ID>.jsonl`:
//!
//! ```text
//! {"batch":{"id":…,"key_id":…,"issued_at":…,"expires_at":…,"count":N,"root":"<hex>"},"ed25519":"<b64>","mldsa65":"<b64>"}
//! {"index":0,"leaf":"<hex>","permit":{…}}
//! …                                                        one line per permit, in leaf order
//! ```
//!
//! The header comes first so that it can be read without the rest (to prune expired batches).
//! Each line keeps its permit's leaf hash, so verifying a file ([`PermitBatch::verify`]) rebuilds
//! the tree from the stored leaves: a permit edited in the file fails alone (its content no
//! longer hashes to its leaf) while the others still prove, as separate permit files did. The
//! leaf index on each line makes a reordering fail as such, naming the moved permits.

use crate::keys::{Algorithm, KeyPair, KeyRing, PublicKey};
use crate::merkle::{Hash, Tree};
use crate::permit::{check_shape, check_validity, Permit, PermitError, SignedPermit};
use borsh::BorshSerialize;
use serde::{Deserialize, Serialize};

/// Domain prefix of the bytes a batch signature covers.
pub const BATCH_DOMAIN: &[u8] = b"bridle-permit-batch-v1\0";

/// What both signatures of a batch cover (after [`BATCH_DOMAIN`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchHeader {
    /// Random, nonzero; names the batch file.
    pub id: u64,
    /// The key that signed the batch; every permit in it names the same key.
    pub key_id: String,
    /// When the batch was signed (Unix ns): the key must not have expired by then.
    pub issued_at: u64,
    /// The latest expiry of any permit in the batch (Unix ns): after it the batch is dead weight.
    pub expires_at: u64,
    /// The number of permits (leaves).
    pub count: u64,
    /// The Merkle tree root over the permits' leaves.
    #[serde(with = "crate::hexser::digest")]
    pub root: Hash,
}

#[derive(BorshSerialize)]
struct CanonicalHeader<'a> {
    id: u64,
    key_id: &'a str,
    issued_at: u64,
    expires_at: u64,
    count: u64,
    root: &'a Hash,
}

impl BatchHeader {
    /// The bytes both signatures cover.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(BATCH_DOMAIN.len() + 96);
        out.extend_from_slice(BATCH_DOMAIN);
        let canonical = CanonicalHeader {
            id: self.id,
            key_id: &self.key_id,
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            count: self.count,
            root: &self.root,
        };
        // Writing into a Vec cannot fail.
        let _ = borsh::to_writer(&mut out, &canonical);
        out
    }
}

/// A permit's membership in a signed batch: the batch header and the inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchProof {
    /// The batch header the signatures cover.
    pub header: BatchHeader,
    /// The permit's leaf index.
    pub index: u64,
    /// The permit's leaf hash ([`Permit::leaf_hash`]) as signed.
    #[serde(with = "crate::hexser::digest")]
    pub leaf: Hash,
    /// The audit path from the leaf to the root (RFC 6962 `PATH`).
    #[serde(with = "crate::hexser::digests")]
    pub path: Vec<Hash>,
}

/// One permit of a batch file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchEntry {
    /// Its leaf index.
    pub index: u64,
    /// Its leaf hash as signed.
    #[serde(with = "crate::hexser::digest")]
    pub leaf: Hash,
    /// The permit.
    pub permit: Permit,
}

/// A signed batch of permits, as stored in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermitBatch {
    /// The signed header.
    pub header: BatchHeader,
    /// Ed25519 signature over [`BatchHeader::signed_bytes`]; empty when missing.
    pub ed25519: Vec<u8>,
    /// ML-DSA-65 signature over [`BatchHeader::signed_bytes`]; empty when missing.
    pub mldsa65: Vec<u8>,
    /// The permits, in leaf order.
    pub entries: Vec<BatchEntry>,
}

/// The first line of a batch file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedHeader {
    /// The header.
    pub batch: BatchHeader,
    /// Ed25519 signature over [`BatchHeader::signed_bytes`]; empty when missing.
    #[serde(with = "crate::b64", default)]
    pub ed25519: Vec<u8>,
    /// ML-DSA-65 signature over [`BatchHeader::signed_bytes`]; empty when missing.
    #[serde(with = "crate::b64", default)]
    pub mldsa65: Vec<u8>,
}

impl PermitBatch {
    /// Signs `permits` as batch `id` at `issued_at`: each permit's `key_id` is set to the
    /// signing key's id first (as [`Permit::sign`] does), the permits become the leaves in the
    /// order given, and the header is signed once with both keys.
    pub fn sign(id: u64, issued_at: u64, permits: Vec<Permit>, key: &KeyPair) -> PermitBatch {
        let key_id = key.key_id().to_string();
        let mut entries = Vec::with_capacity(permits.len());
        let mut leaves = Vec::with_capacity(permits.len());
        let mut expires_at = 0;
        for (index, mut permit) in permits.into_iter().enumerate() {
            permit.key_id.clone_from(&key_id);
            expires_at = expires_at.max(permit.expires_at);
            let leaf = permit.leaf_hash();
            leaves.push(leaf);
            entries.push(BatchEntry {
                index: index as u64,
                leaf,
                permit,
            });
        }
        let header = BatchHeader {
            id,
            key_id,
            issued_at,
            expires_at,
            count: entries.len() as u64,
            root: Tree::from_leaf_hashes(leaves).root(),
        };
        let sig = key.sign(&header.signed_bytes());
        PermitBatch {
            header,
            ed25519: sig.ed25519,
            mldsa65: sig.mldsa65,
            entries,
        }
    }

    /// The tree over the stored leaves, each at the index its line claims when those indexes
    /// are exactly `0..count` (so a reordered file still proves the permits that did not move),
    /// else in file order.
    fn stored_tree(&self) -> Tree {
        let n = self.entries.len();
        let mut slots: Vec<Option<Hash>> = vec![None; n];
        let mut complete = true;
        for e in &self.entries {
            match usize::try_from(e.index).ok().and_then(|i| slots.get_mut(i)) {
                Some(slot @ None) => *slot = Some(e.leaf),
                _ => complete = false,
            }
        }
        let leaves = if complete {
            slots.into_iter().flatten().collect()
        } else {
            self.entries.iter().map(|e| e.leaf).collect()
        };
        Tree::from_leaf_hashes(leaves)
    }

    /// Every permit as it verifies on its own (header, signatures and inclusion proof), in file
    /// order. Nothing is verified here.
    pub fn signed_permits(&self) -> Vec<SignedPermit> {
        let tree = self.stored_tree();
        self.entries
            .iter()
            .map(|e| self.standalone(e, &tree))
            .collect()
    }

    /// The permit with this id, as it verifies on its own; nothing is verified here.
    pub fn signed_permit(&self, id: u64) -> Option<SignedPermit> {
        let entry = self.entries.iter().find(|e| e.permit.id == id)?;
        Some(self.standalone(entry, &self.stored_tree()))
    }

    fn standalone(&self, entry: &BatchEntry, tree: &Tree) -> SignedPermit {
        SignedPermit {
            permit: entry.permit.clone(),
            batch: Some(BatchProof {
                header: self.header.clone(),
                index: entry.index,
                leaf: entry.leaf,
                path: tree.path(entry.index).unwrap_or_default(),
            }),
            ed25519: self.ed25519.clone(),
            mldsa65: self.mldsa65.clone(),
        }
    }

    /// Verifies every permit of the batch at `now` with one check of the header's signatures:
    /// one result per entry, in file order. A permit passes only if everything
    /// [`crate::permit::verify`] requires of it holds, and it sits at its signed index in a file
    /// that holds exactly the signed count.
    pub fn verify(&self, ring: &KeyRing, now: u64) -> Vec<Result<(), PermitError>> {
        let header = &self.header;
        let key = check_header(header, &self.ed25519, &self.mldsa65, ring);
        let found = self.entries.len() as u64;
        let root_ok = found == header.count && self.stored_tree().root() == header.root;
        self.entries
            .iter()
            .enumerate()
            .map(|(position, entry)| {
                let p = &entry.permit;
                check_shape(p)?;
                let key = key
                    .clone()
                    .map_err(|fault| fault.for_permit(p.id, header.id))?;
                if found != header.count {
                    return Err(PermitError::BatchIncomplete {
                        id: p.id,
                        batch: header.id,
                        count: header.count,
                        found,
                    });
                }
                if entry.index != position as u64 {
                    return Err(PermitError::Misplaced {
                        id: p.id,
                        batch: header.id,
                        index: entry.index,
                        position: position as u64,
                    });
                }
                if p.leaf_hash() != entry.leaf {
                    return Err(PermitError::ContentChanged { id: p.id });
                }
                check_member(p, header)?;
                if !root_ok {
                    return Err(PermitError::BadProof {
                        id: p.id,
                        batch: header.id,
                    });
                }
                check_validity(p, key, header.issued_at.max(p.issued_at), now)
            })
            .collect()
    }

    /// The batch file's content (layout in the module documentation).
    pub fn to_jsonl(&self) -> Vec<u8> {
        let head = SignedHeader {
            batch: self.header.clone(),
            ed25519: self.ed25519.clone(),
            mldsa65: self.mldsa65.clone(),
        };
        let mut out = Vec::with_capacity(4096 + self.entries.len() * 512);
        // Serialising these plain structs into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &head);
        out.push(b'\n');
        for entry in &self.entries {
            let _ = serde_json::to_writer(&mut out, entry);
            out.push(b'\n');
        }
        out
    }

    /// Parses a batch file's content; the error names the 1-based line.
    pub fn from_jsonl(bytes: &[u8]) -> Result<PermitBatch, String> {
        let mut lines = bytes
            .split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.is_empty());
        let (_, first) = lines.next().ok_or("empty file: no batch header")?;
        let head: SignedHeader = serde_json::from_slice(first)
            .map_err(|e| format!("line 1: not a batch header: {e}"))?;
        let mut entries = Vec::new();
        for (n, line) in lines {
            entries.push(
                serde_json::from_slice::<BatchEntry>(line)
                    .map_err(|e| format!("line {}: not a batch entry: {e}", n + 1))?,
            );
        }
        Ok(PermitBatch {
            header: head.batch,
            ed25519: head.ed25519,
            mldsa65: head.mldsa65,
            entries,
        })
    }
}

/// Why a batch header's signatures fail, before the failure is charged to each of its permits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderFault {
    UnknownKey(String),
    Missing(Algorithm),
    Bad(Algorithm),
    Changed,
}

impl HeaderFault {
    pub(crate) fn for_permit(self, id: u64, batch: u64) -> PermitError {
        match self {
            HeaderFault::UnknownKey(key_id) => PermitError::UnknownKey { id, key_id },
            HeaderFault::Missing(which) => PermitError::MissingSignature { id, which },
            HeaderFault::Bad(which) => PermitError::BadSignature { id, which },
            HeaderFault::Changed => PermitError::BatchChanged { id, batch },
        }
    }
}

/// Both signatures of a batch header: a known key, neither half missing, both valid.
pub(crate) fn check_header<'r>(
    header: &BatchHeader,
    ed25519: &[u8],
    mldsa65: &[u8],
    ring: &'r KeyRing,
) -> Result<&'r PublicKey, HeaderFault> {
    let key = ring
        .get(&header.key_id)
        .ok_or_else(|| HeaderFault::UnknownKey(header.key_id.clone()))?;
    for (sig, which) in [(ed25519, Algorithm::Ed25519), (mldsa65, Algorithm::MlDsa65)] {
        if sig.is_empty() {
            return Err(HeaderFault::Missing(which));
        }
    }
    let check = key.check(&header.signed_bytes(), ed25519, mldsa65);
    match (check.ed25519, check.mldsa65) {
        (true, true) => Ok(key),
        (false, false) => Err(HeaderFault::Changed),
        (false, true) => Err(HeaderFault::Bad(Algorithm::Ed25519)),
        (true, false) => Err(HeaderFault::Bad(Algorithm::MlDsa65)),
    }
}

/// What a batch says of each of its permits: the same key, and no later expiry than its own.
pub(crate) fn check_member(p: &Permit, header: &BatchHeader) -> Result<(), PermitError> {
    if p.key_id != header.key_id {
        return Err(PermitError::Malformed {
            id: p.id,
            reason: format!(
                "names key {} but its batch {:016x} was signed by key {}",
                p.key_id, header.id, header.key_id
            ),
        });
    }
    if p.expires_at > header.expires_at {
        return Err(PermitError::Malformed {
            id: p.id,
            reason: format!(
                "expires after its batch {:016x} does ({} > {})",
                header.id, p.expires_at, header.expires_at
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_encoding_is_domain_separated_from_permits_and_checkpoints() {
        let h = BatchHeader {
            id: 1,
            key_id: "00".repeat(8),
            issued_at: 2,
            expires_at: 3,
            count: 4,
            root: [5; 32],
        };
        let bytes = h.signed_bytes();
        assert!(bytes.starts_with(BATCH_DOMAIN));
        assert!(!bytes.starts_with(crate::permit::PERMIT_DOMAIN));
        assert!(!bytes.starts_with(crate::audit::CHECKPOINT_DOMAIN));
        let mut moved = h.clone();
        moved.count = 5;
        assert_ne!(bytes, moved.signed_bytes());
    }

    #[test]
    fn an_empty_batch_has_the_empty_root_and_nothing_to_verify() {
        let key = KeyPair::from_seeds(&[1; 32], &[2; 32], 0, None);
        let b = PermitBatch::sign(9, 10, Vec::new(), &key);
        assert_eq!(b.header.count, 0);
        assert_eq!(b.header.root, Tree::from_leaf_hashes(Vec::new()).root());
        let back = PermitBatch::from_jsonl(&b.to_jsonl()).unwrap();
        assert_eq!(back, b);
        assert!(b.verify(&KeyRing::new(), 11).is_empty());
    }
}
