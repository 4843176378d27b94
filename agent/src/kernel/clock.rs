//! The socket programs' clock: they check expiries against the coarse monotonic clock plus
//! `BOOT_OFFSET`, the time the machine has spent suspended (`CLOCK_BOOTTIME` minus
//! `CLOCK_MONOTONIC`), which no helper they may call gives them. Written at load and again
//! whenever it changes (after a resume), so expiries stay on `CLOCK_BOOTTIME`, the clock
//! permits are issued on.

use anyhow::{Context, Result};
use aya::maps::{Array, Map};

/// The map the offset is kept in.
pub const MAP: &str = "BOOT_OFFSET";

/// A change of the offset smaller than this is measuring noise, not a suspend.
const NOISE_NS: u64 = 1_000_000;

/// `CLOCK_BOOTTIME` minus `CLOCK_MONOTONIC` in ns, read as one instant: the boot clock between
/// two monotonic reads, against their midpoint.
pub fn suspended_ns() -> u64 {
    let read = |clock| {
        nix::time::clock_gettime(clock)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0)
    };
    let before = read(nix::time::ClockId::CLOCK_MONOTONIC);
    let boot = read(nix::time::ClockId::CLOCK_BOOTTIME);
    let after = read(nix::time::ClockId::CLOCK_MONOTONIC);
    boot.saturating_sub(before / 2 + after / 2)
}

/// Keeps `BOOT_OFFSET` current.
#[derive(Debug, Default)]
pub struct BootOffset {
    /// What the map holds, once written.
    written: Option<u64>,
}

impl BootOffset {
    /// Writes the offset into `map` if it was never written or has changed since.
    pub fn sync(&mut self, map: &mut Map) -> Result<()> {
        let now = suspended_ns();
        if self.written.is_some_and(|w| w.abs_diff(now) < NOISE_NS) {
            return Ok(());
        }
        let mut array: Array<&mut aya::maps::MapData, u64> =
            Array::try_from(map).with_context(|| format!("map {MAP} has an unexpected type"))?;
        array
            .set(0, now, 0)
            .with_context(|| format!("writing the boot clock offset into {MAP}"))?;
        self.written = Some(now);
        Ok(())
    }
}
