//! Verification of an audit trail: the chain, the checkpoints and their cadence.

use super::record::GENESIS_HASH;
use super::segment::{self, Entry};
use super::{io_err, AuditError};
use crate::keys::KeyRing;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// Where in a trail something is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The segment file.
    pub file: PathBuf,
    /// The 1-based line.
    pub line: usize,
    /// The seq of the record (or the seq a checkpoint covers), when the line parsed.
    pub seq: Option<u64>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)?;
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        Ok(())
    }
}

/// The kind of the first problem found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A line is neither a record nor a checkpoint (and is not a torn final line).
    Malformed,
    /// A record's content does not match its hash.
    Edited,
    /// The seq jumps forward: records are missing.
    Removed,
    /// The seq repeats or goes back: a record was inserted or records were reordered.
    OutOfOrder,
    /// The record's `prev_hash` is not the previous record's hash.
    BrokenLink,
    /// A directory trail does not start with seq 1 and the genesis hash.
    NotGenesis,
    /// A checkpoint's signature is missing, does not verify, or its key is unknown or expired.
    ForgedCheckpoint,
    /// A checkpoint does not cover the chain head at its position.
    CheckpointMismatch,
    /// A checkpoint that the writer's interval required is absent.
    MissingCheckpoint,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::Malformed => "malformed line",
            FailureKind::Edited => "edited record",
            FailureKind::Removed => "removed records",
            FailureKind::OutOfOrder => "inserted or reordered record",
            FailureKind::BrokenLink => "broken chain",
            FailureKind::NotGenesis => "trail does not start at its beginning",
            FailureKind::ForgedCheckpoint => "forged checkpoint",
            FailureKind::CheckpointMismatch => "checkpoint does not match the chain",
            FailureKind::MissingCheckpoint => "missing checkpoint",
        })
    }
}

/// The first problem in a trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Where.
    pub location: Location,
    /// What kind.
    pub kind: FailureKind,
    /// The details.
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.location, self.kind, self.detail)
    }
}

/// What verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segments read.
    pub segments: usize,
    /// Records whose chain verified (up to the failure, if any).
    pub records: u64,
    /// Checkpoints that verified.
    pub checkpoints: u64,
    /// The seq of the first record.
    pub first_seq: Option<u64>,
    /// The last record whose chain verified: where the verifiable chain ends.
    pub chain_end: Option<Location>,
    /// The last seq covered by a valid checkpoint.
    pub covered_through: Option<u64>,
    /// Records after the last checkpoint: intact in the chain but not yet signed.
    pub uncovered: u64,
    /// A final line without its newline: a write torn by a crash.
    pub torn_tail: Option<Location>,
    /// The first problem, if any.
    pub failure: Option<Failure>,
}

impl VerifyReport {
    /// No failure (uncovered records and a torn final line are not failures).
    pub fn is_ok(&self) -> bool {
        self.failure.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.failure {
            Some(failure) => writeln!(f, "FAILED: {failure}")?,
            None => writeln!(f, "OK")?,
        }
        writeln!(
            f,
            "{} segment(s), {} record(s) chained, {} checkpoint(s) verified",
            self.segments, self.records, self.checkpoints
        )?;
        if let Some(end) = &self.chain_end {
            writeln!(f, "verifiable chain ends at {end}")?;
        }
        match self.covered_through {
            Some(seq) => writeln!(f, "covered by a signed checkpoint through seq {seq}")?,
            None if self.records > 0 => writeln!(f, "no record is covered by a checkpoint yet")?,
            None => {}
        }
        if self.uncovered > 0 && self.failure.is_none() {
            writeln!(
                f,
                "{} record(s) after the last checkpoint: not yet covered by a checkpoint",
                self.uncovered
            )?;
        }
        if let Some(torn) = &self.torn_tail {
            writeln!(
                f,
                "torn final line at {torn} (an interrupted write): ignored, everything before it verified"
            )?;
        }
        Ok(())
    }
}

/// Verifies an audit directory (all segments, from genesis).
pub fn verify_dir(dir: &Path, ring: &KeyRing) -> Result<VerifyReport, AuditError> {
    let segments = segment::list_segments(dir).map_err(io_err(dir))?;
    let files: Vec<PathBuf> = segments.into_iter().map(|(_, p)| p).collect();
    verify_files(&files, ring, true)
}

/// Verifies one segment on its own: its first record anchors the chain (earlier segments are not
/// at hand), everything after is checked as in a directory.
pub fn verify_segment(file: &Path, ring: &KeyRing) -> Result<VerifyReport, AuditError> {
    verify_files(&[file.to_path_buf()], ring, false)
}

/// Verifies a directory or a single segment, whichever `path` is.
pub fn verify_path(path: &Path, ring: &KeyRing) -> Result<VerifyReport, AuditError> {
    if path.is_dir() {
        verify_dir(path, ring)
    } else {
        verify_segment(path, ring)
    }
}

struct Pending {
    seq: u64,
    time: u64,
    location: Location,
}

struct Verifier<'a> {
    ring: &'a KeyRing,
    report: VerifyReport,
    head: Option<(u64, String)>,
    /// Time of the last valid checkpoint, and its interval.
    last_checkpoint: Option<(u64, u64, u64)>,
    pending: Vec<Pending>,
}

impl Verifier<'_> {
    fn fail(&mut self, location: Location, kind: FailureKind, detail: String) {
        self.report.failure = Some(Failure {
            location,
            kind,
            detail,
        });
    }

    /// Checks the records since the last checkpoint against the writer's cadence: at most
    /// `every_records` of them, and none that was due a checkpoint without getting one. Returns
    /// the first record that should have been preceded by a checkpoint.
    fn cadence_violation(&self, every_records: u64, every_ns: u64) -> Option<Failure> {
        let base = self
            .last_checkpoint
            .map(|(t, _, _)| t)
            .or_else(|| self.pending.first().map(|p| p.time))?;
        let mut first: Option<(usize, String)> = None;
        if self.pending.len() as u64 > every_records {
            first = Some((
                every_records as usize,
                format!("more than {every_records} records without a checkpoint"),
            ));
        }
        // A record at least every_ns after the base must be followed directly by a checkpoint;
        // the last pending record is (a checkpoint closes the list) or may still be waiting for
        // one (an open tail).
        for (i, p) in self.pending.iter().enumerate() {
            if i + 1 < self.pending.len() && p.time.saturating_sub(base) >= every_ns {
                if first.as_ref().is_none_or(|(j, _)| i + 1 < *j) {
                    first = Some((
                        i + 1,
                        format!(
                            "record seq {} came {} s after the last checkpoint and was not followed by one (interval {} s)",
                            p.seq,
                            p.time.saturating_sub(base) / 1_000_000_000,
                            every_ns / 1_000_000_000
                        ),
                    ));
                }
                break;
            }
        }
        let (index, detail) = first?;
        let p = self.pending.get(index)?;
        Some(Failure {
            location: p.location.clone(),
            kind: FailureKind::MissingCheckpoint,
            detail,
        })
    }
}

fn verify_files(
    files: &[PathBuf],
    ring: &KeyRing,
    from_genesis: bool,
) -> Result<VerifyReport, AuditError> {
    let mut v = Verifier {
        ring,
        report: VerifyReport::default(),
        head: None,
        last_checkpoint: None,
        pending: Vec::new(),
    };
    let mut scratch = Vec::with_capacity(512);
    'files: for (index, file) in files.iter().enumerate() {
        let last_file = index + 1 == files.len();
        let bytes = fs::read(file).map_err(io_err(file))?;
        v.report.segments += 1;
        for line in segment::lines(&bytes) {
            let here = |seq: Option<u64>| Location {
                file: file.clone(),
                line: line.number,
                seq,
            };
            if !line.complete && last_file {
                v.report.torn_tail = Some(here(None));
                break;
            }
            let entry = match segment::parse_entry(line.text) {
                Ok(entry) => entry,
                Err(reason) => {
                    v.fail(here(None), FailureKind::Malformed, reason);
                    break 'files;
                }
            };
            match entry {
                Entry::Record(r) => {
                    let loc = here(Some(r.seq));
                    if r.compute_hash(&mut scratch) != r.hash {
                        v.fail(
                            loc,
                            FailureKind::Edited,
                            "the record's content does not match its hash".to_string(),
                        );
                        break 'files;
                    }
                    match &v.head {
                        None => {
                            if from_genesis && (r.seq != 1 || r.prev_hash != GENESIS_HASH) {
                                v.fail(
                                    loc,
                                    FailureKind::NotGenesis,
                                    format!(
                                        "the first record has seq {} (expected 1) and prev_hash {}: earlier records or segments were removed",
                                        r.seq, r.prev_hash
                                    ),
                                );
                                break 'files;
                            }
                            v.report.first_seq = Some(r.seq);
                        }
                        Some((seq, hash)) => {
                            let expected = seq + 1;
                            if r.seq > expected {
                                v.fail(
                                    loc,
                                    FailureKind::Removed,
                                    format!(
                                        "seq {} follows seq {seq}: record(s) {expected}..={} are missing",
                                        r.seq,
                                        r.seq - 1
                                    ),
                                );
                                break 'files;
                            }
                            if r.seq < expected {
                                v.fail(
                                    loc,
                                    FailureKind::OutOfOrder,
                                    format!(
                                        "seq {} follows seq {seq} (expected {expected})",
                                        r.seq
                                    ),
                                );
                                break 'files;
                            }
                            if &r.prev_hash != hash {
                                v.fail(
                                    loc,
                                    FailureKind::BrokenLink,
                                    format!(
                                        "prev_hash does not match the hash of seq {seq}: this record or the one before it was rewritten, or one was inserted between them"
                                    ),
                                );
                                break 'files;
                            }
                        }
                    }
                    v.pending.push(Pending {
                        seq: r.seq,
                        time: r.time,
                        location: loc.clone(),
                    });
                    v.head = Some((r.seq, r.hash));
                    v.report.records += 1;
                    v.report.chain_end = Some(loc);
                }
                Entry::Checkpoint(cp) => {
                    let loc = here(Some(cp.seq));
                    if let Err(reason) = cp.verify_signatures(v.ring) {
                        v.fail(loc, FailureKind::ForgedCheckpoint, reason);
                        break 'files;
                    }
                    match &v.head {
                        Some((seq, hash)) if *seq == cp.seq && *hash == cp.head_hash => {}
                        Some((seq, _)) if *seq != cp.seq => {
                            let detail = format!(
                                "the checkpoint covers seq {} but the chain before it ends at seq {seq}: records were removed, inserted or moved",
                                cp.seq
                            );
                            v.fail(loc, FailureKind::CheckpointMismatch, detail);
                            break 'files;
                        }
                        Some((seq, _)) => {
                            let since = v.report.covered_through.unwrap_or(0);
                            let detail = format!(
                                "the signed head hash differs from the chain's: a record in seq {}..={seq} was rewritten",
                                since + 1
                            );
                            v.fail(loc, FailureKind::CheckpointMismatch, detail);
                            break 'files;
                        }
                        None => {
                            v.fail(
                                loc,
                                FailureKind::CheckpointMismatch,
                                "a checkpoint before any record: the records it covered were removed"
                                    .to_string(),
                            );
                            break 'files;
                        }
                    }
                    if let Some(failure) = v.cadence_violation(cp.every_records, cp.every_ns) {
                        v.report.failure = Some(failure);
                        break 'files;
                    }
                    v.pending.clear();
                    v.last_checkpoint = Some((cp.time, cp.every_records, cp.every_ns));
                    v.report.checkpoints += 1;
                    v.report.covered_through = Some(cp.seq);
                }
            }
        }
    }
    if v.report.failure.is_none() {
        if let Some((_, every_records, every_ns)) = v.last_checkpoint {
            if let Some(failure) = v.cadence_violation(every_records, every_ns) {
                v.report.failure = Some(failure);
            }
        }
    }
    v.report.uncovered = v.pending.len() as u64;
    Ok(v.report)
}
