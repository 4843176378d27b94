//! The tamper-evident audit trail.
//!
//! Every decision becomes an [`AuditRecord`], or is counted in one that stands for a number of
//! identical decisions ([`Repeats`]: `count`, `first`, `last`). Records form a sha256 hash chain (each carries the
//! hash of the one before; the first carries [`GENESIS_HASH`]) and a [`Checkpoint`] signed with
//! the permit keys covers the chain head every N records or T seconds.
//!
//! # On disk
//!
//! An audit directory holds segments `audit-NNNNNNNN.jsonl` (N from 00000001, rolled by size).
//! Each line is one JSON object whose `"type"` is `"record"` or `"checkpoint"`; the chain runs
//! across segments in order. A checkpoint line directly follows the record whose hash it signs,
//! and carries the writer's interval (`every_records`, `every_ns`) so that an offline verifier
//! knows when the next one was due.
//!
//! # What verification establishes
//!
//! [`verify_dir`] reads every segment and stops at the first bad line, naming its file, line and
//! sequence number: an edited record (hash mismatch), a removed or inserted record (sequence gap,
//! repeat, or broken link), reordered records, a forged checkpoint (a signature that does not
//! verify, or an unknown key), a checkpoint that does not match the chain head, and a missing
//! checkpoint (more than `every_records` records, or a record at least `every_ns` after the last
//! checkpoint that is not followed by one). Records after the last checkpoint are reported as
//! not yet covered, which is not a failure: after a crash that is the expected state, and the
//! writer's next checkpoint covers them through the chain. A final line without its newline is a
//! torn write: it is reported as where the verifiable chain ends and everything before it still
//! verifies. The limits: removing a whole tail (the last records and checkpoints together) looks
//! like a trail that ended earlier; compare the head with an exported checkpoint to detect it.

mod checkpoint;
mod export;
mod record;
mod segment;
mod verify;
mod writer;

pub use checkpoint::{Checkpoint, CHECKPOINT_DOMAIN};
pub use export::{export, scan, tail, ExportFilter, ExportFormat, Follower};
pub use record::{
    AuditRecord, RecordFields, Repeats, COUNTED_RECORD_DOMAIN, GENESIS_HASH, RECORD_DOMAIN,
};
pub use segment::{list_segments, segment_name, Entry};
pub use verify::{
    verify_dir, verify_path, verify_segment, Failure, FailureKind, Location, VerifyReport,
};
pub use writer::{AuditConfig, AuditWriter};

use std::io;
use std::path::PathBuf;

/// What went wrong reading or writing an audit trail, naming the file and line.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A line is not a record or checkpoint, or a record does not match its own hash.
    #[error("{}:{line}: {reason}", path.display())]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}
