//! Signed permits: the engine's verdicts as the kernel enforces them, signed with both halves of
//! a hybrid key over one canonical byte encoding.
//!
//! The canonical encoding is [Borsh](https://borsh.io) (a specified, deterministic, length-
//! prefixed binary format meant for hashing and signing) of a fixed field list, after the
//! domain prefix `bridle-permit-v1\0`. JSON is only the transport: whitespace or key order in a
//! permit file never changes what the signatures cover, and a field added to the JSON is
//! rejected rather than silently unsigned.

use crate::clock::format_ns;
use crate::keys::{random_bytes, Algorithm, HybridSignature, KeyError, KeyPair, KeyRing};
use borsh::BorshSerialize;
use bridle_engine::{Code, Effect};
use serde::{Deserialize, Serialize};

/// Domain prefix of the bytes a permit signature covers.
pub const PERMIT_DOMAIN: &[u8] = b"bridle-permit-v1\0";

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

    /// The canonical bytes both signatures cover.
    pub fn canonical_bytes(&self) -> Vec<u8> {
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
        out.extend_from_slice(PERMIT_DOMAIN);
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
            ed25519,
            mldsa65,
        }
    }
}

/// A permit with both signatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedPermit {
    /// The signed content.
    pub permit: Permit,
    /// Ed25519 signature over [`Permit::canonical_bytes`]; empty when missing.
    #[serde(with = "crate::b64", default)]
    pub ed25519: Vec<u8>,
    /// ML-DSA-65 signature over [`Permit::canonical_bytes`]; empty when missing.
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

/// Verifies a signed permit: well-formed, signed by a key in `ring`, BOTH signatures valid, the
/// key not expired, and `now` inside `[issued_at, expires_at)`. Signatures are checked before
/// validity so that times are only reported for authentic permits.
pub fn verify(signed: &SignedPermit, ring: &KeyRing, now: u64) -> Result<(), PermitError> {
    let p = &signed.permit;
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
        (true, true) => {}
        (false, false) => return Err(PermitError::ContentChanged { id }),
        (false, true) => {
            return Err(PermitError::BadSignature {
                id,
                which: Algorithm::Ed25519,
            })
        }
        (true, false) => {
            return Err(PermitError::BadSignature {
                id,
                which: Algorithm::MlDsa65,
            })
        }
    }
    if let Some(key_expires_at) = key.info().expires_at {
        if now >= key_expires_at || p.issued_at >= key_expires_at {
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
