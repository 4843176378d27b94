//! Signed permits: the engine's verdicts as the kernel enforces them, signed with both halves of
//! a hybrid key over one canonical byte encoding.
//!
//! The canonical encoding is [Borsh](https://borsh.io) (a specified, deterministic, length-
//! prefixed binary format meant for hashing and signing) of a fixed field list. JSON is only the
//! transport: whitespace or key order in a permit file never changes what the signatures cover,
//! and a field added to the JSON is rejected rather than silently unsigned.
//!
//! A permit is signed in one of two ways, and a verifier requires both signatures either way:
//!
//! - **alone**: both signatures cover `bridle-permit-v1\0` followed by the encoding
//!   ([`Permit::canonical_bytes`]);
//! - **in a batch** ([`crate::batch`]): the encoding, after `bridle-permit-leaf-v1\0`, is a leaf
//!   of a Merkle tree whose root a batch header carries, and both signatures cover that header.
//!   Such a permit carries the header and its inclusion proof ([`BatchProof`]), so it verifies on
//!   its own, exactly as strongly: changing the permit changes its leaf, and no other leaf list
//!   has the signed root.

use crate::batch::{self, BatchProof};
use crate::clock::format_ns;
use crate::keys::{
    random_bytes, Algorithm, HybridSignature, KeyError, KeyPair, KeyRing, PublicKey,
};
use crate::merkle::{self, Hash};
use borsh::BorshSerialize;
use bridle_engine::{Code, Effect};
use serde::{Deserialize, Serialize};

/// Domain prefix of the bytes a permit signature covers (a permit signed alone).
pub const PERMIT_DOMAIN: &[u8] = b"bridle-permit-v1\0";
/// Domain prefix of a permit's leaf in a batch's Merkle tree (a permit signed in a batch).
pub const LEAF_DOMAIN: &[u8] = b"bridle-permit-leaf-v1\0";

/// The policy a permit was compiled from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRef {
    /// The policy's `name`.
    pub name: String,
    /// The policy's `version`, if it has one.
    pub version: Option<u64>,
    /// sha256 of the policy's canonical form, lower-case hex.
    pub digest: String,
}

/// The workload a permit applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    /// The cgroup v2 id (inode number) the kernel keys its maps by.
    pub cgroup_id: u64,
    /// The cgroup path, for people.
    pub cgroup_path: String,
}

/// A verdict as the kernel enforces it (DESIGN.md §Permits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permit {
    /// Random, nonzero; the kernel entry carries it.
    pub id: u64,
    /// The policy that decided.
    pub policy: PolicyRef,
    /// The workload.
    pub subject: Subject,
    /// `exec`, `connect`, …
    pub action: String,
    /// A pattern or a concrete file / address.
    pub object: String,
    /// What the kernel does.
    pub effect: Effect,
    /// Why.
    pub code: Code,
    /// The rule that matched, if any.
    pub rule: Option<String>,
    /// Valid from (Unix ns).
    pub issued_at: u64,
    /// Valid until, exclusive (Unix ns); the kernel treats the entry as absent afterwards.
    pub expires_at: u64,
    /// The key that signed it.
    pub key_id: String,
}

/// The fixed field list that both signatures cover; borrowed so that encoding never clones.
#[derive(BorshSerialize)]
struct CanonicalPermit<'a> {
    id: u64,
    policy_name: &'a str,
    policy_version: Option<u64>,
    policy_digest: &'a str,
    cgroup_id: u64,
    cgroup_path: &'a str,
    action: &'a str,
    object: &'a str,
    // Enums are encoded by their stable names, not by declaration index, so reordering the
    // engine's enums can never change what an old signature means.
    effect: &'a str,
    code: &'a str,
    rule: Option<&'a str>,
    issued_at: u64,
    expires_at: u64,
    key_id: &'a str,
}

impl Permit {
    /// A random, nonzero permit id.
    pub fn new_id() -> Result<u64, KeyError> {
        loop {
            let id = u64::from_le_bytes(random_bytes::<8>()?);
            if id != 0 {
                return Ok(id);
            }
        }
    }

    /// `n` random, nonzero permit ids from one read of the random source (a batch's worth
    /// without a system call per permit).
    pub fn new_ids(n: usize) -> Result<Vec<u64>, KeyError> {
        let mut bytes = vec![0u8; n * 8];
        getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
        bytes
            .chunks_exact(8)
            .map(|chunk| {
                let id = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
                if id == 0 {
                    Permit::new_id()
                } else {
                    Ok(id)
                }
            })
            .collect()
    }

    /// The canonical bytes both signatures cover when the permit is signed alone.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        self.encode(PERMIT_DOMAIN)
    }

    /// The permit's leaf in a batch: the same encoding after [`LEAF_DOMAIN`].
    pub fn leaf_bytes(&self) -> Vec<u8> {
        self.encode(LEAF_DOMAIN)
    }

    /// The Merkle leaf hash of [`Permit::leaf_bytes`].
    pub fn leaf_hash(&self) -> Hash {
        merkle::leaf_hash(&self.leaf_bytes())
    }

    fn encode(&self, domain: &[u8]) -> Vec<u8> {
        let canonical = CanonicalPermit {
            id: self.id,
            policy_name: &self.policy.name,
            policy_version: self.policy.version,
            policy_digest: &self.policy.digest,
            cgroup_id: self.subject.cgroup_id,
            cgroup_path: &self.subject.cgroup_path,
            action: &self.action,
            object: &self.object,
            effect: self.effect.as_str(),
            code: self.code.as_str(),
            rule: self.rule.as_deref(),
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            key_id: &self.key_id,
        };
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(domain);
        // Writing into a Vec cannot fail.
        let _ = borsh::to_writer(&mut out, &canonical);
        out
    }

    /// Signs the permit with `key`; `key_id` is set to the signing key's id first, so the
    /// signature always names the key that made it.
    pub fn sign(mut self, key: &KeyPair) -> SignedPermit {
        self.key_id = key.key_id().to_string();
        let HybridSignature { ed25519, mldsa65 } = key.sign(&self.canonical_bytes());
        SignedPermit {
            permit: self,
            batch: None,
            ed25519,
            mldsa65,
        }
    }
}

/// A permit with both signatures: over the permit itself, or over the header of the batch it
/// was signed in (then `batch` holds that header and the permit's inclusion proof).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedPermit {
    /// The signed content.
    pub permit: Permit,
    /// The batch the permit was signed in; absent for a permit signed alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchProof>,
    /// Ed25519 signature over [`Permit::canonical_bytes`], or over the batch header's
    /// [`batch::BatchHeader::signed_bytes`]; empty when missing.
    #[serde(with = "crate::b64", default)]
    pub ed25519: Vec<u8>,
    /// ML-DSA-65 signature over the same bytes as `ed25519`; empty when missing.
    #[serde(with = "crate::b64", default)]
    pub mldsa65: Vec<u8>,
}

/// Why a permit does not verify. Each failure has its own variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermitError {
    /// The permit cannot be a valid permit whatever its signatures say.
    #[error("permit {id:016x} is malformed: {reason}")]
    Malformed {
        /// The permit id.
        id: u64,
        /// What is wrong.
        reason: String,
    },
    /// One signature is absent; a verifier never accepts one half alone.
    #[error("permit {id:016x} has no {which} signature (both Ed25519 and ML-DSA-65 are required)")]
    MissingSignature {
        /// The permit id.
        id: u64,
        /// The missing half.
        which: Algorithm,
    },
    /// The key id is not in the key ring: a foreign host's key, or a key never exported.
    #[error("permit {id:016x} is signed by unknown key {key_id}")]
    UnknownKey {
        /// The permit id.
        id: u64,
        /// The key id the permit names.
        key_id: String,
    },
    /// One signature verifies and the other does not: the failing one was swapped in from
    /// another permit or forged (a change to the permit itself would break both).
    #[error("permit {id:016x}: the {which} signature does not verify while the other one does (swapped from another permit or forged)")]
    BadSignature {
        /// The permit id.
        id: u64,
        /// The half that fails.
        which: Algorithm,
    },
    /// Neither signature verifies: the permit's content changed after signing (or both
    /// signatures were replaced, which is the same thing seen from the verifier).
    #[error(
        "permit {id:016x}: neither signature verifies: the permit was changed after it was signed"
    )]
    ContentChanged {
        /// The permit id.
        id: u64,
    },
    /// Neither signature of the permit's batch header verifies: the header (its root, count,
    /// times, id or key) changed after it was signed, or both signatures were replaced.
    #[error("permit {id:016x}: neither signature of its batch {batch:016x} verifies: the batch header was changed after it was signed")]
    BatchChanged {
        /// The permit id.
        id: u64,
        /// The batch id.
        batch: u64,
    },
    /// The permit's inclusion proof does not lead to the root its batch header signs: a wrong,
    /// edited or foreign proof (or, in a batch file, an edited leaf hash).
    #[error("permit {id:016x}: its inclusion proof does not lead to the root batch {batch:016x} signed (a wrong or edited proof)")]
    BadProof {
        /// The permit id.
        id: u64,
        /// The batch id.
        batch: u64,
    },
    /// In a batch file, the permit is not where it was signed: the permits were reordered.
    #[error("permit {id:016x} was signed as leaf {index} of batch {batch:016x} but is stored at position {position}: the batch was reordered")]
    Misplaced {
        /// The permit id.
        id: u64,
        /// The batch id.
        batch: u64,
        /// The leaf index it was signed at.
        index: u64,
        /// Where the file holds it.
        position: u64,
    },
    /// In a batch file, the number of permits differs from the count the header signs:
    /// permits were removed or added, so no proof can be rebuilt.
    #[error("permit {id:016x}: batch {batch:016x} signed {count} permits but the file holds {found}: permits were removed or added")]
    BatchIncomplete {
        /// The permit id.
        id: u64,
        /// The batch id.
        batch: u64,
        /// The count the header signs.
        count: u64,
        /// The permits the file holds.
        found: u64,
    },
    /// The permit's validity starts later.
    #[error("permit {id:016x} is not valid before {} (now {})", format_ns(*issued_at), format_ns(*now))]
    NotYetValid {
        /// The permit id.
        id: u64,
        /// Its start.
        issued_at: u64,
        /// The verifier's time.
        now: u64,
    },
    /// The permit has expired.
    #[error("permit {id:016x} expired at {} (now {})", format_ns(*expires_at), format_ns(*now))]
    Expired {
        /// The permit id.
        id: u64,
        /// Its end.
        expires_at: u64,
        /// The verifier's time.
        now: u64,
    },
    /// The signing key has expired (or the permit was issued after it did).
    #[error("permit {id:016x}: its key {key_id} expired at {}", format_ns(*key_expires_at))]
    KeyExpired {
        /// The permit id.
        id: u64,
        /// The signing key.
        key_id: String,
        /// The key's end.
        key_expires_at: u64,
    },
}

impl PermitError {
    /// The permit id the error is about.
    pub fn permit_id(&self) -> u64 {
        match self {
            PermitError::Malformed { id, .. }
            | PermitError::MissingSignature { id, .. }
            | PermitError::UnknownKey { id, .. }
            | PermitError::BadSignature { id, .. }
            | PermitError::ContentChanged { id }
            | PermitError::BatchChanged { id, .. }
            | PermitError::BadProof { id, .. }
            | PermitError::Misplaced { id, .. }
            | PermitError::BatchIncomplete { id, .. }
            | PermitError::NotYetValid { id, .. }
            | PermitError::Expired { id, .. }
            | PermitError::KeyExpired { id, .. } => *id,
        }
    }
}

impl SignedPermit {
    /// Verifies the permit at `now`; see [`verify`].
    pub fn verify(&self, ring: &KeyRing, now: u64) -> Result<(), PermitError> {
        verify(self, ring, now)
    }

    /// The permit as one JSON document.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Parses a permit file's content.
    pub fn from_json(bytes: &[u8]) -> Result<SignedPermit, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Verifies a signed permit: well-formed, signed by a key in `ring`, BOTH signatures valid (over
/// the permit, or over its batch's header with an inclusion proof that leads from the permit to
/// the signed root), the key not expired, and `now` inside `[issued_at, expires_at)`. Signatures
/// are checked before validity so that times are only reported for authentic permits.
pub fn verify(signed: &SignedPermit, ring: &KeyRing, now: u64) -> Result<(), PermitError> {
    let p = &signed.permit;
    check_shape(p)?;
    let Some(proof) = &signed.batch else {
        let key = check_alone(signed, ring)?;
        return check_validity(p, key, p.issued_at, now);
    };
    let header = &proof.header;
    let key = batch::check_header(header, &signed.ed25519, &signed.mldsa65, ring)
        .map_err(|fault| fault.for_permit(p.id, header.id))?;
    if p.leaf_hash() != proof.leaf {
        return Err(PermitError::ContentChanged { id: p.id });
    }
    batch::check_member(p, header)?;
    if merkle::root_from_path(&proof.leaf, proof.index, header.count, &proof.path)
        != Some(header.root)
    {
        return Err(PermitError::BadProof {
            id: p.id,
            batch: header.id,
        });
    }
    check_validity(p, key, header.issued_at.max(p.issued_at), now)
}

/// The checks that need no key: a nonzero id and a nonempty validity.
pub(crate) fn check_shape(p: &Permit) -> Result<(), PermitError> {
    let id = p.id;
    if id == 0 {
        return Err(PermitError::Malformed {
            id,
            reason: "permit id 0 is reserved (the kernel uses it for `no permit`)".to_string(),
        });
    }
    if p.expires_at <= p.issued_at {
        return Err(PermitError::Malformed {
            id,
            reason: format!(
                "expires_at {} is not after issued_at {}",
                p.expires_at, p.issued_at
            ),
        });
    }
    Ok(())
}

/// Both signatures of a permit signed alone.
fn check_alone<'r>(signed: &SignedPermit, ring: &'r KeyRing) -> Result<&'r PublicKey, PermitError> {
    let p = &signed.permit;
    let id = p.id;
    let key = ring.get(&p.key_id).ok_or_else(|| PermitError::UnknownKey {
        id,
        key_id: p.key_id.clone(),
    })?;
    for (sig, which) in [
        (&signed.ed25519, Algorithm::Ed25519),
        (&signed.mldsa65, Algorithm::MlDsa65),
    ] {
        if sig.is_empty() {
            return Err(PermitError::MissingSignature { id, which });
        }
    }
    let check = key.check(&p.canonical_bytes(), &signed.ed25519, &signed.mldsa65);
    match (check.ed25519, check.mldsa65) {
        (true, true) => Ok(key),
        (false, false) => Err(PermitError::ContentChanged { id }),
        (false, true) => Err(PermitError::BadSignature {
            id,
            which: Algorithm::Ed25519,
        }),
        (true, false) => Err(PermitError::BadSignature {
            id,
            which: Algorithm::MlDsa65,
        }),
    }
}

/// The key's validity at `now` and at signing time `signed_at`, then the permit's own.
pub(crate) fn check_validity(
    p: &Permit,
    key: &PublicKey,
    signed_at: u64,
    now: u64,
) -> Result<(), PermitError> {
    let id = p.id;
    if let Some(key_expires_at) = key.info().expires_at {
        if now >= key_expires_at || signed_at >= key_expires_at {
            return Err(PermitError::KeyExpired {
                id,
                key_id: p.key_id.clone(),
                key_expires_at,
            });
        }
    }
    if now < p.issued_at {
        return Err(PermitError::NotYetValid {
            id,
            issued_at: p.issued_at,
            now,
        });
    }
    if now >= p.expires_at {
        return Err(PermitError::Expired {
            id,
            expires_at: p.expires_at,
            now,
        });
    }
    Ok(())
}
