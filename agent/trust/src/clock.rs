//! Time as bridle records it: unsigned nanoseconds since the Unix epoch, read through a [`Clock`]
//! so that tests (and replays) control it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds in one second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A source of the current time in Unix nanoseconds.
pub trait Clock: Send {
    /// The current time, in nanoseconds since the Unix epoch.
    fn now_ns(&self) -> u64;
}

/// The host's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> u64 {
        now_ns()
    }
}

/// A clock that only moves when told to; clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock that reads `start_ns` until it is advanced.
    pub fn new(start_ns: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(start_ns)))
    }

    /// Sets the time.
    pub fn set(&self, ns: u64) {
        self.0.store(ns, Ordering::SeqCst);
    }

    /// Moves the time forward by `ns`.
    pub fn advance(&self, ns: u64) {
        self.0.fetch_add(ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The wall clock now, in Unix nanoseconds (0 if the clock is set before 1970).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Formats Unix nanoseconds as RFC 3339 (UTC) for messages; falls back to the raw number.
pub fn format_ns(ns: u64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)) else {
        return format!("{ns}ns");
    };
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{ns}ns"))
}

/// Parses a time given on a command line: RFC 3339 (`2025-01-02T03:04:05Z`) or Unix seconds
/// (`1735787045`, fractions allowed). Returns Unix nanoseconds.
pub fn parse_time(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return secs
            .checked_mul(NANOS_PER_SEC)
            .ok_or_else(|| format!("time `{text}` is out of range"));
    }
    if let Ok(secs) = text.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 && secs < (u64::MAX / NANOS_PER_SEC) as f64 {
            return Ok((secs * NANOS_PER_SEC as f64) as u64);
        }
        return Err(format!("time `{text}` is out of range"));
    }
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            format!(
                "time `{text}` is neither RFC 3339 (2025-01-02T03:04:05Z) nor Unix seconds: {e}"
            )
        })?;
    u64::try_from(t.unix_timestamp_nanos()).map_err(|_| format!("time `{text}` is before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        assert_eq!(parse_time("10").unwrap(), 10 * NANOS_PER_SEC);
        assert_eq!(
            parse_time("1970-01-01T00:00:10Z").unwrap(),
            10 * NANOS_PER_SEC
        );
        assert_eq!(parse_time("1.5").unwrap(), 1_500_000_000);
        assert!(parse_time("yesterday").is_err());
        assert_eq!(format_ns(10 * NANOS_PER_SEC), "1970-01-01T00:00:10Z");
    }
}
