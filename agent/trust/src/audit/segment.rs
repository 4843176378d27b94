//! Segment files: naming, listing, and the JSON line format of their entries.

use super::checkpoint::Checkpoint;
use super::record::AuditRecord;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// One line of a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Entry {
    /// A decision.
    Record(AuditRecord),
    /// A signed checkpoint over the chain head.
    Checkpoint(Checkpoint),
}

/// The borrowed form the writer serialises, so that appending never clones a record.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum EntryRef<'a> {
    Record(&'a AuditRecord),
    Checkpoint(&'a Checkpoint),
}

/// The file name of segment `n`.
pub fn segment_name(n: u64) -> String {
    format!("audit-{n:08}.jsonl")
}

/// The segment number in a file name, if it is a segment's.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    if digits.len() < 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments of an audit directory, oldest first.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(n) = parse_segment_name(&entry.file_name().to_string_lossy()) {
            segments.push((n, entry.path()));
        }
    }
    segments.sort();
    Ok(segments)
}

/// One line of a segment file.
pub(crate) struct Line<'a> {
    /// 1-based line number.
    pub number: usize,
    /// The text without its newline.
    pub text: &'a [u8],
    /// Whether the line ended with a newline (the writer always writes one, so a final line
    /// without it is a torn write).
    pub complete: bool,
}

/// Splits a segment's bytes into lines.
pub(crate) fn lines(bytes: &[u8]) -> impl Iterator<Item = Line<'_>> {
    let mut rest = bytes;
    let mut number = 0;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        number += 1;
        let (text, complete, next) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (&rest[..i], true, &rest[i + 1..]),
            None => (rest, false, &rest[rest.len()..]),
        };
        rest = next;
        Some(Line {
            number,
            text,
            complete,
        })
    })
}

/// Parses one line.
pub(crate) fn parse_entry(text: &[u8]) -> Result<Entry, String> {
    serde_json::from_slice(text).map_err(|e| format!("not an audit record or checkpoint: {e}"))
}
