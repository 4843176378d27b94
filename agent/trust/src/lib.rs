//! bridle's trust layer: hybrid keys, signed permits, the permit store and the audit trail.
//!
//! Every verdict the engine turns into a kernel entry is a [`permit::SignedPermit`], signed with
//! both Ed25519 and ML-DSA-65 over one canonical byte encoding; a verifier requires both
//! signatures. The issuer signs each issuance as one [`batch::PermitBatch`]: one hybrid
//! signature over a Merkle root covers every permit of it, and each permit still verifies on its
//! own with the signed header and its inclusion proof. Every decision becomes an [`audit::AuditRecord`] in a hash chain whose head is
//! covered by signed checkpoints. Everything verifies offline with only the exported public key
//! bundle.
//!
//! # State directory layout
//!
//! ```text
//! STATE/
//!   keys/                       0700
//!     current                   the id of the key that signs now (replaced atomically)
//!     <KEYID>/                  0700, one per key ever generated (KEYID: 16 hex digits)
//!       public.json             PublicKeyInfo: id, created_at, expires_at, both public keys
//!       secret.ed25519          32-byte Ed25519 seed, 0600 (current key only)
//!       secret.mldsa65          32-byte ML-DSA-65 seed (FIPS 204 ξ), 0600 (current key only)
//!   permits/                    0700
//!     batch-<BATCH>.jsonl       one signed batch per file (layout in `batch`), 0600; the
//!                               issuer writes these, and replaces a batch on renewal
//!     <ID>.json                 one SignedPermit per file, ID = the permit id as 16 hex digits
//!                               (permits signed alone, as earlier versions stored them)
//!   audit/
//!     audit-00000001.jsonl      segments, rolled by size; records and checkpoints as JSON lines
//!     audit-00000002.jsonl
//! ```
//!
//! Secret files are created with mode 0600 (never widened and narrowed afterwards) and a secret
//! file that group or others can access is refused. Rotation (`generate` when a key exists)
//! makes the new key current, keeps the old `public.json` so that what it signed still verifies
//! until it expires, and deletes the old secret files.
//!
//! Times are Unix nanoseconds (`u64`) throughout.

#![deny(missing_docs)]

pub mod audit;
pub(crate) mod b64;
pub mod batch;
pub mod clock;
pub(crate) mod fsutil;
pub(crate) mod hexser;
pub mod keys;
pub mod merkle;
pub mod permit;
pub mod store;

pub use batch::{BatchHeader, BatchProof, PermitBatch};
pub use bridle_engine::{Code, Effect};
pub use clock::{Clock, ManualClock, SystemClock};
pub use keys::{KeyError, KeyPair, KeyRing, KeyStore, PublicBundle, PublicKey, PublicKeyInfo};
pub use permit::{Permit, PermitError, PolicyRef, SignedPermit, Subject};
pub use store::{DropReason, Dropped, Listed, PermitStore, StoreError};
