//! The audit writer: appends chained records in batches and signs checkpoints.

use super::checkpoint::Checkpoint;
use super::record::{AuditRecord, RecordFields, Repeats, GENESIS_HASH};
use super::segment::{self, Entry, EntryRef};
use super::{io_err, AuditError};
use crate::clock::{Clock, NANOS_PER_SEC};
use crate::fsutil;
use crate::keys::KeyPair;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// When the writer checkpoints, flushes and rolls segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditConfig {
    /// A checkpoint after at most this many records.
    pub checkpoint_every_records: u64,
    /// A checkpoint after the first record at least this long (ns) after the last checkpoint.
    pub checkpoint_every_ns: u64,
    /// A new segment once the current one would exceed this size.
    pub segment_max_bytes: u64,
    /// Buffered bytes that trigger a write (without fsync) between checkpoints.
    pub flush_bytes: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_every_records: 10_000,
            checkpoint_every_ns: 60 * NANOS_PER_SEC,
            segment_max_bytes: 64 << 20,
            flush_bytes: 256 << 10,
        }
    }
}

/// Appends records to an audit directory. Records are buffered and written in batches; every
/// checkpoint is followed by an fsync, and dropping the writer checkpoints what is uncovered
/// and flushes (call [`AuditWriter::close`] to see errors).
pub struct AuditWriter {
    dir: PathBuf,
    config: AuditConfig,
    key: Arc<KeyPair>,
    clock: Box<dyn Clock>,
    segment_no: u64,
    segment_path: PathBuf,
    file: File,
    segment_bytes: u64,
    buf: Vec<u8>,
    next_seq: u64,
    head: String,
    uncovered: u64,
    /// Time of the last checkpoint, or of the first uncovered record when there was none.
    base_time: Option<u64>,
    scratch: Vec<u8>,
    closed: bool,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter")
            .field("dir", &self.dir)
            .field("segment", &self.segment_path)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

/// What recovery learns from an existing trail.
struct Recovered {
    last: Option<(u64, String)>,
    uncovered: u64,
    base_time: Option<u64>,
}

impl AuditWriter {
    /// Opens (or creates) the audit directory and continues its chain. A torn final line left by
    /// a crash is cut off first (it was never acknowledged, and appending after it would corrupt
    /// the next line); a trail whose last lines do not parse is refused with the file and line.
    pub fn open(
        dir: &Path,
        key: Arc<KeyPair>,
        clock: Box<dyn Clock>,
        config: AuditConfig,
    ) -> Result<AuditWriter, AuditError> {
        fsutil::create_private_dir(dir).map_err(io_err(dir))?;
        let segments = segment::list_segments(dir).map_err(io_err(dir))?;
        let (segment_no, recovered) = match segments.last() {
            None => (
                1,
                Recovered {
                    last: None,
                    uncovered: 0,
                    base_time: None,
                },
            ),
            Some((n, path)) => {
                cut_torn_tail(path)?;
                (*n, recover(&segments)?)
            }
        };
        let segment_path = dir.join(segment::segment_name(segment_no));
        let file = open_append(&segment_path)?;
        let segment_bytes = file.metadata().map_err(io_err(&segment_path))?.len();
        let (next_seq, head) = match recovered.last {
            Some((seq, hash)) => (seq + 1, hash),
            None => (1, GENESIS_HASH.to_string()),
        };
        Ok(AuditWriter {
            dir: dir.to_path_buf(),
            config,
            key,
            clock,
            segment_no,
            segment_path,
            file,
            segment_bytes,
            buf: Vec::with_capacity(config.flush_bytes + 4096),
            next_seq,
            head,
            uncovered: recovered.uncovered,
            base_time: recovered.base_time,
            scratch: Vec::with_capacity(512),
            closed: false,
        })
    }

    /// Appends a record and returns its seq; checkpoints when one is due.
    pub fn append(&mut self, fields: RecordFields) -> Result<u64, AuditError> {
        self.append_counted(fields, None)
    }

    /// Appends a record that stands for `repeats` decisions (`None`: one) and returns its seq.
    pub fn append_counted(
        &mut self,
        fields: RecordFields,
        repeats: Option<Repeats>,
    ) -> Result<u64, AuditError> {
        let time = self.clock.now_ns();
        let seq = self.next_seq;
        let prev_hash = std::mem::take(&mut self.head);
        let record = AuditRecord::counted(fields, repeats, seq, time, prev_hash, &mut self.scratch);
        self.push_line(&EntryRef::Record(&record))?;
        self.head = record.hash;
        self.next_seq += 1;
        self.uncovered += 1;
        let base = *self.base_time.get_or_insert(time);
        if self.uncovered >= self.config.checkpoint_every_records
            || time.saturating_sub(base) >= self.config.checkpoint_every_ns
        {
            self.checkpoint()?;
        } else if self.buf.len() >= self.config.flush_bytes {
            self.write_buf()?;
        }
        Ok(seq)
    }

    /// Checkpoints if the time interval has passed with records uncovered; call it periodically
    /// so that a quiet workload's last records do not wait for the next decision.
    pub fn tick(&mut self) -> Result<Option<u64>, AuditError> {
        let now = self.clock.now_ns();
        match self.base_time {
            Some(base) if now.saturating_sub(base) >= self.config.checkpoint_every_ns => {
                self.checkpoint()
            }
            _ => Ok(None),
        }
    }

    /// Signs a checkpoint over the current head (if any record is uncovered), writes and fsyncs.
    /// Returns the seq it covers.
    pub fn checkpoint(&mut self) -> Result<Option<u64>, AuditError> {
        if self.uncovered == 0 {
            return Ok(None);
        }
        let seq = self.next_seq - 1;
        let time = self.clock.now_ns();
        let cp = Checkpoint::sign(
            seq,
            self.head.clone(),
            time,
            self.config.checkpoint_every_records,
            self.config.checkpoint_every_ns,
            &self.key,
        );
        self.push_line(&EntryRef::Checkpoint(&cp))?;
        self.uncovered = 0;
        self.base_time = Some(time);
        self.flush()?;
        Ok(Some(seq))
    }

    /// Hands what is appended to the kernel (no sync): it then survives this process being
    /// killed, though not a power loss (see [`AuditWriter::flush`]).
    pub fn write_out(&mut self) -> Result<(), AuditError> {
        self.write_buf()
    }

    /// Writes buffered lines and fsyncs the segment.
    pub fn flush(&mut self) -> Result<(), AuditError> {
        self.write_buf()?;
        self.file.sync_data().map_err(io_err(&self.segment_path))
    }

    /// Checkpoints what is uncovered and flushes; the clean way to stop.
    pub fn close(mut self) -> Result<(), AuditError> {
        self.closed = true;
        self.checkpoint()?;
        self.flush()
    }

    /// The seq of the last record appended (0 when the trail is empty).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The hash of the last record (the chain head).
    pub fn head_hash(&self) -> &str {
        &self.head
    }

    /// The segment being written.
    pub fn segment_path(&self) -> &Path {
        &self.segment_path
    }

    fn push_line(&mut self, entry: &EntryRef<'_>) -> Result<(), AuditError> {
        let start = self.buf.len();
        serde_json::to_writer(&mut self.buf, entry).map_err(|e| AuditError::Io {
            path: self.segment_path.clone(),
            source: std::io::Error::other(e),
        })?;
        self.buf.push(b'\n');
        let line_len = (self.buf.len() - start) as u64;
        let pending = start as u64;
        // Roll before the line that would overflow the segment, so segments split only between
        // lines; a segment always gets at least one line.
        if self.segment_bytes + pending > 0
            && self.segment_bytes + pending + line_len > self.config.segment_max_bytes
        {
            let line = self.buf.split_off(start);
            self.roll()?;
            self.buf = line;
        }
        Ok(())
    }

    fn roll(&mut self) -> Result<(), AuditError> {
        self.flush()?;
        self.segment_no += 1;
        self.segment_path = self.dir.join(segment::segment_name(self.segment_no));
        self.file = open_append(&self.segment_path)?;
        fsutil::sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        self.segment_bytes = 0;
        Ok(())
    }

    fn write_buf(&mut self) -> Result<(), AuditError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(&self.buf)
            .map_err(io_err(&self.segment_path))?;
        self.segment_bytes += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

impl Drop for AuditWriter {
    fn drop(&mut self) {
        if !self.closed {
            // Errors cannot be reported from drop; `close` is the checked path.
            let _ = self.checkpoint();
            let _ = self.flush();
        }
    }
}

fn open_append(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))
}

/// Cuts a final line that has no newline (a write torn by a crash).
fn cut_torn_tail(path: &Path) -> Result<(), AuditError> {
    let cut = from_the_end(path, |from, tail| {
        Ok(if tail.is_empty() || tail.ends_with(b"\n") {
            Some(None)
        } else {
            tail.iter()
                .rposition(|b| *b == b'\n')
                .map(|i| Some(from + i as u64 + 1))
        })
    })?;
    let keep = match cut {
        Some(None) => return Ok(()),
        Some(Some(keep)) => keep,
        // Not one whole line: all of it is torn.
        None => 0,
    };
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    file.set_len(keep).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// How much of a segment's end is read first when looking for its last lines; the window
/// grows fourfold until what is sought is in it. A checkpoint every 10,000 records puts the
/// last one within about 4 MiB of the end.
const TAIL_WINDOW: u64 = 1 << 20;

/// Reads `path` from its end, in windows growing fourfold from [`TAIL_WINDOW`], handing each
/// window and the offset it starts at to `look` until `look` finds what it seeks (`Some`) or
/// the whole file has been handed over (then `None`). A segment holds up to
/// `segment_max_bytes`, and opening the trail must not cost a read of all of it.
fn from_the_end<T>(
    path: &Path,
    mut look: impl FnMut(u64, &[u8]) -> Result<Option<T>, AuditError>,
) -> Result<Option<T>, AuditError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut window = TAIL_WINDOW.min(len);
    loop {
        let from = len - window;
        let mut bytes = vec![0; window as usize];
        file.seek(SeekFrom::Start(from)).map_err(io_err(path))?;
        file.read_exact(&mut bytes).map_err(io_err(path))?;
        if let Some(found) = look(from, &bytes)? {
            return Ok(Some(found));
        }
        if from == 0 {
            return Ok(None);
        }
        window = (window * 4).min(len);
    }
}

/// The 1-based number in the whole file of line `relative` of the part of it that starts at
/// byte `from` (just after a newline), for error messages.
fn line_number(path: &Path, from: u64, relative: usize) -> usize {
    let before = fs::read(path)
        .map(|b| {
            b[..(from as usize).min(b.len())]
                .iter()
                .filter(|c| **c == b'\n')
                .count()
        })
        .unwrap_or(0);
    before + relative
}

/// Finds the chain head and how much of it no checkpoint covers, reading segments newest first
/// until the last checkpoint is found; each from its end (see [`from_the_end`]), so that a
/// start reads what follows the last checkpoint rather than whole segments.
fn recover(segments: &[(u64, PathBuf)]) -> Result<Recovered, AuditError> {
    let mut last: Option<(u64, String)> = None;
    let mut uncovered = 0;
    let mut earliest_uncovered = None;
    for (_, path) in segments.iter().rev() {
        // What the whole segment holds after its last checkpoint, when it has none.
        let mut whole = None;
        let found = from_the_end(path, |from, bytes| {
            // Unless the window starts the file, its first line is (or may be) a part of one.
            let skip = if from == 0 {
                0
            } else {
                bytes
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(bytes.len(), |i| i + 1)
            };
            let start = from + skip as u64;
            let parsed: Vec<_> = segment::lines(&bytes[skip..]).collect();
            let (mut w_last, mut w_uncovered, mut w_earliest) =
                (last.clone(), uncovered, earliest_uncovered);
            for line in parsed.iter().rev() {
                let corrupt = |reason| AuditError::Corrupt {
                    path: path.clone(),
                    line: line_number(path, start, line.number),
                    reason,
                };
                match segment::parse_entry(line.text).map_err(corrupt)? {
                    Entry::Record(r) => {
                        if w_last.is_none() {
                            let expected = r.compute_hash(&mut Vec::new());
                            if expected != r.hash {
                                return Err(corrupt(format!(
                                    "record seq {} does not match its hash; run `bridle audit verify`",
                                    r.seq
                                )));
                            }
                            w_last = Some((r.seq, r.hash));
                        }
                        w_uncovered += 1;
                        w_earliest = Some(r.time);
                    }
                    Entry::Checkpoint(cp) => {
                        return Ok(Some(Recovered {
                            last: w_last.or(Some((cp.seq, cp.head_hash))),
                            uncovered: w_uncovered,
                            base_time: Some(cp.time),
                        }));
                    }
                }
            }
            if from == 0 {
                whole = Some((w_last, w_uncovered, w_earliest));
            }
            Ok(None)
        })?;
        if let Some(recovered) = found {
            return Ok(recovered);
        }
        if let Some(state) = whole {
            (last, uncovered, earliest_uncovered) = state;
        }
    }
    Ok(Recovered {
        last,
        uncovered,
        base_time: earliest_uncovered,
    })
}
