//! Reading records back out: filtered export (JSON lines or CSV) and tail / follow.

use super::record::AuditRecord;
use super::segment::{self, Entry};
use super::{io_err, AuditError};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Output format of [`export`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object per record and line.
    Jsonl,
    /// CSV with a header line; absent optional fields are empty cells, except `count`, which
    /// is always the number of decisions the record stands for (1 for most).
    Csv,
}

/// Which records [`export`] writes. Every given criterion must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportFilter {
    /// Records at or after this time (Unix ns).
    pub since: Option<u64>,
    /// Records strictly before this time (Unix ns).
    pub until: Option<u64>,
    /// Records of this workload (exact match).
    pub workload: Option<String>,
    /// Records whose effect (`permit`, `refuse`, `invalidate`) or code (`POLICY_REFUSED`, …) is
    /// this, case-insensitively.
    pub verdict: Option<String>,
}

impl ExportFilter {
    /// Whether `record` passes the filter.
    pub fn matches(&self, record: &AuditRecord) -> bool {
        self.since.is_none_or(|t| record.time >= t)
            && self.until.is_none_or(|t| record.time < t)
            && self.workload.as_ref().is_none_or(|w| *w == record.workload)
            && self.verdict.as_ref().is_none_or(|v| {
                v.eq_ignore_ascii_case(record.effect.as_str())
                    || v.eq_ignore_ascii_case(record.code.as_str())
            })
    }
}

/// Calls `f` with every record of every segment in `dir`, in order. A torn final line is
/// skipped; any other unreadable line is an error naming it.
fn for_each_record(
    dir: &Path,
    mut f: impl FnMut(AuditRecord) -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    let segments = segment::list_segments(dir).map_err(io_err(dir))?;
    let count = segments.len();
    for (i, (_, path)) in segments.iter().enumerate() {
        let bytes = fs::read(path).map_err(io_err(path))?;
        for line in segment::lines(&bytes) {
            if !line.complete && i + 1 == count {
                break;
            }
            match segment::parse_entry(line.text) {
                Ok(Entry::Record(r)) => f(r)?,
                Ok(Entry::Checkpoint(_)) => {}
                Err(reason) => {
                    return Err(AuditError::Corrupt {
                        path: path.clone(),
                        line: line.number,
                        reason,
                    })
                }
            }
        }
    }
    Ok(())
}

/// Calls `f` with every record of `dir` that passes `filter`, in order.
pub fn scan(
    dir: &Path,
    filter: &ExportFilter,
    mut f: impl FnMut(&AuditRecord),
) -> Result<(), AuditError> {
    for_each_record(dir, |record| {
        if filter.matches(&record) {
            f(&record);
        }
        Ok(())
    })
}

/// Writes the records of `dir` that pass `filter` to `out`; returns how many.
pub fn export(
    dir: &Path,
    filter: &ExportFilter,
    format: ExportFormat,
    out: &mut dyn Write,
) -> Result<u64, AuditError> {
    let out_err = |e: std::io::Error| AuditError::Io {
        path: PathBuf::from("<output>"),
        source: e,
    };
    let mut count = 0;
    match format {
        ExportFormat::Jsonl => {
            for_each_record(dir, |r| {
                if filter.matches(&r) {
                    serde_json::to_writer(&mut *out, &r).map_err(|e| out_err(e.into()))?;
                    out.write_all(b"\n").map_err(out_err)?;
                    count += 1;
                }
                Ok(())
            })?;
        }
        ExportFormat::Csv => {
            let mut csv = csv::Writer::from_writer(&mut *out);
            for_each_record(dir, |r| {
                if filter.matches(&r) {
                    csv.serialize(CsvRow::of(&r))
                        .map_err(|e| out_err(std::io::Error::other(e)))?;
                    count += 1;
                }
                Ok(())
            })?;
            if count == 0 {
                // An empty export still names its columns.
                csv.write_record(CSV_HEADER)
                    .map_err(|e| out_err(std::io::Error::other(e)))?;
            }
            csv.flush().map_err(out_err)?;
        }
    }
    Ok(count)
}

/// One CSV line: every record has every column (a CSV file cannot skip one), and `count` is
/// filled in for plain records so that a spreadsheet can sum it.
#[derive(serde::Serialize)]
struct CsvRow<'a> {
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
    hash: &'a str,
    count: u64,
    first: Option<u64>,
    last: Option<u64>,
}

impl<'a> CsvRow<'a> {
    fn of(r: &'a AuditRecord) -> CsvRow<'a> {
        CsvRow {
            seq: r.seq,
            time: r.time,
            workload: &r.workload,
            pid: r.pid,
            uid: r.uid,
            comm: &r.comm,
            action: &r.action,
            object: &r.object,
            effect: r.effect.as_str(),
            code: r.code.as_str(),
            rule: r.rule.as_deref(),
            permit_id: r.permit_id,
            prev_hash: &r.prev_hash,
            hash: &r.hash,
            count: r.decisions(),
            first: r.first,
            last: r.last,
        }
    }
}

const CSV_HEADER: [&str; 17] = [
    "seq",
    "time",
    "workload",
    "pid",
    "uid",
    "comm",
    "action",
    "object",
    "effect",
    "code",
    "rule",
    "permit_id",
    "prev_hash",
    "hash",
    "count",
    "first",
    "last",
];

/// The last `n` records of `dir`, oldest first.
pub fn tail(dir: &Path, n: usize) -> Result<Vec<AuditRecord>, AuditError> {
    let mut last = std::collections::VecDeque::with_capacity(n.min(4096));
    if n == 0 {
        return Ok(Vec::new());
    }
    for_each_record(dir, |r| {
        if last.len() == n {
            last.pop_front();
        }
        last.push_back(r);
        Ok(())
    })?;
    Ok(last.into())
}

/// Follows an audit directory: each [`Follower::poll`] returns the records completed since the
/// previous one, moving on to newer segments as the writer rolls.
#[derive(Debug)]
pub struct Follower {
    dir: PathBuf,
    segment: Option<u64>,
    offset: u64,
}

impl Follower {
    /// Starts following at the current end of the trail.
    pub fn at_end(dir: &Path) -> Result<Follower, AuditError> {
        let segments = segment::list_segments(dir).map_err(io_err(dir))?;
        let (segment, offset) = match segments.last() {
            Some((n, path)) => (Some(*n), fs::metadata(path).map_err(io_err(path))?.len()),
            None => (None, 0),
        };
        Ok(Follower {
            dir: dir.to_path_buf(),
            segment,
            offset,
        })
    }

    /// Records completed since the last poll. Only whole lines are consumed, so a line the
    /// writer is still writing is picked up by a later poll.
    pub fn poll(&mut self) -> Result<Vec<AuditRecord>, AuditError> {
        let mut out = Vec::new();
        loop {
            let segments = segment::list_segments(&self.dir).map_err(io_err(&self.dir))?;
            let current = match self.segment {
                Some(n) => segments.iter().find(|(m, _)| *m == n).cloned(),
                None => segments.first().cloned(),
            };
            let Some((n, path)) = current else {
                return Ok(out);
            };
            self.segment = Some(n);
            let mut file = fs::File::open(&path).map_err(io_err(&path))?;
            file.seek(SeekFrom::Start(self.offset))
                .map_err(io_err(&path))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(io_err(&path))?;
            for line in segment::lines(&bytes) {
                if !line.complete {
                    break;
                }
                self.offset += line.text.len() as u64 + 1;
                if let Ok(Entry::Record(r)) = segment::parse_entry(line.text) {
                    out.push(r);
                }
            }
            match segments.iter().find(|(m, _)| *m > n) {
                // The writer only rolls after finishing a segment, so a newer one means this one
                // is complete.
                Some((next, _)) if bytes.ends_with(b"\n") || bytes.is_empty() => {
                    self.segment = Some(*next);
                    self.offset = 0;
                }
                _ => return Ok(out),
            }
        }
    }
}
