//! Durations as policies write them: `"500ms"`, `"30s"`, `"10m"`, `"1h"`.

use std::time::Duration;

/// Parses a positive duration with exactly one unit suffix.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("bad duration \"{text}\": expected a positive integer and a unit: ms, s, m or h (e.g. \"30s\", \"10m\")")
    };
    let (digits, unit_ms): (&str, u64) = if let Some(d) = text.strip_suffix("ms") {
        (d, 1)
    } else if let Some(d) = text.strip_suffix('s') {
        (d, 1_000)
    } else if let Some(d) = text.strip_suffix('m') {
        (d, 60_000)
    } else if let Some(d) = text.strip_suffix('h') {
        (d, 3_600_000)
    } else {
        return Err(bad());
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(format!(
            "bad duration \"{text}\": must be greater than zero"
        ));
    }
    let ms = n
        .checked_mul(unit_ms)
        .ok_or_else(|| format!("bad duration \"{text}\": too long"))?;
    Ok(Duration::from_millis(ms))
}

/// The shortest exact spelling of a duration, so `"60s"` and `"1m"` read back the same.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000)] {
        if ms.is_multiple_of(size) && ms > 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_four_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "10",
            "m",
            "-1m",
            "1.5m",
            "0s",
            "10 m",
            "1d",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_shortest() {
        assert_eq!(format_duration(Duration::from_secs(60)), "1m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
