//! The memory budget of an archive run, shared by the extraction slots of
//! every table it archives at once.
//!
//! An extraction slot holds buffers that grow with the bytes of its rows
//! up to fixed caps: the record batch being decoded and one ready ahead
//! ([`BATCH_BYTES`] each), the row groups its open data files are building
//! ([`crate::lake::write::ROW_GROUP_BYTES`]), their zstd contexts, and into
//! S3 the parts being uploaded.  Narrow rows reach the caps' row limits
//! first and cost a slot a few MiB; rows of half a kilobyte and more reach
//! the byte caps and cost about [`WIDE_SLOT`].  The slots share
//! `global.memory_limit` less [`BASE`].
//!
//! A batch reserves its slot's share ([`slot_bytes`], a pure decision by the
//! width of its table's rows) when it takes its extraction slot, and gives
//! it back with the slot; a batch whose share is not free waits, so wide
//! rows run on fewer slots than `parallel_windows` asks when the budget
//! holds fewer.  A share is never more than the whole budget: one batch
//! always runs.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::{Error, Result};
use crate::source::extract::{BATCH_BYTES, BATCH_ROWS};

const MIB: u64 = 1 << 20;

/// What a run holds besides its extraction slots: the runtime, catalog
/// clients, the finishing batches' read-back and uploads.  Measured (peak
/// RSS, README "Memory"): a narrow table's run 65 MiB with two slots; a
/// wide one's (1.9 KB rows, into S3) 134 MiB with one, 147 with two.
pub const BASE: u64 = 112 * MIB;
/// A slot's buffers when its record batches reach [`BATCH_BYTES`]: 1.9 KB
/// rows into S3 grew by 17.5 MiB per busy slot from 2 to 8 on average, by
/// up to 45 from 1 to 2, and runs vary by ±15 MiB.  With 24 the default
/// limit holds six such slots: 232–242 MiB (seven: 241–269).
pub const WIDE_SLOT: u64 = 24 * MIB;
/// A slot's buffers however narrow its rows.
const NARROW_SLOT: u64 = 2 * MIB;

/// The memory one extraction slot needs for rows of `row_bytes` decoded
/// bytes each (Arrow's).
pub fn slot_bytes(row_bytes: u64) -> u64 {
    let batch = row_bytes.saturating_mul(BATCH_ROWS as u64);
    let full = batch.min(BATCH_BYTES as u64) as f64 / BATCH_BYTES as f64;
    NARROW_SLOT + ((WIDE_SLOT - NARROW_SLOT) as f64 * full) as u64
}

/// The budget the slots draw on under `limit`: at least one wide slot's.
pub fn slot_budget(limit: u64) -> u64 {
    limit.saturating_sub(BASE).max(WIDE_SLOT)
}

/// How many of `wanted` slots fit in `limit` with rows of `row_bytes`:
/// at least one.
pub fn slots_within(limit: u64, row_bytes: u64, wanted: usize) -> usize {
    let fit = slot_budget(limit) / slot_bytes(row_bytes).max(1);
    (fit as usize).clamp(1, wanted.max(1))
}

/// What to tell when rows of `row_bytes` (on disk, by Postgres's
/// statistics; `None`: unknown, taken as wide) leave fewer than `wanted`
/// slots within `limit`; `None` when all fit.
pub fn fewer_slots(limit: u64, row_bytes: Option<u64>, wanted: usize) -> Option<String> {
    let fit = slots_within(limit, row_bytes.unwrap_or(u64::MAX), wanted);
    if fit >= wanted {
        return None;
    }
    let width = row_bytes.map_or("unknown width (no statistics yet)".into(), |b| {
        format!("about {b} bytes on disk")
    });
    Some(format!(
        "rows of {width}: {fit} of {wanted} extraction slots fit in `global.memory_limit` ({} MiB)",
        limit / MIB
    ))
}

/// The budget: `global.memory_limit` less a run's own, in MiB.
pub struct Memory {
    budget_mib: u32,
    free: Semaphore,
}

impl Memory {
    pub fn new(limit: u64) -> Self {
        let budget_mib = (slot_budget(limit) / MIB).clamp(1, u32::MAX as u64) as u32;
        Self {
            budget_mib,
            free: Semaphore::new(budget_mib as usize),
        }
    }

    /// Reserves a slot's share for rows of `row_bytes`, waiting until it is
    /// free; given back when the permit drops.
    pub async fn reserve(&self, row_bytes: u64) -> Result<SemaphorePermit<'_>> {
        let mib = slot_bytes(row_bytes).div_ceil(MIB);
        let mib = (mib.min(self.budget_mib as u64) as u32).max(1);
        self.free
            .acquire_many(mib)
            .await
            .map_err(|_| Error::internal("the memory budget was closed"))
    }
}

/// A table's row width as a run knows it: Postgres's estimate when it
/// planned, then the widest its batches decoded.
#[derive(Default)]
pub struct RowWidth {
    /// Bytes per row by Postgres's statistics; 0: unknown.
    estimated: AtomicU64,
    /// The most decoded bytes per row a batch of the run had; 0: none yet.
    seen: AtomicU64,
}

impl RowWidth {
    /// Starts from Postgres's estimate; unknown is taken as wide (the
    /// safe side, until a batch has decoded rows).
    pub fn estimated(bytes: Option<u64>) -> Self {
        Self {
            estimated: AtomicU64::new(bytes.unwrap_or(u64::MAX)),
            seen: AtomicU64::new(0),
        }
    }

    /// Records a batch's decoded `bytes` for `rows` rows.
    pub fn saw(&self, rows: u64, bytes: u64) {
        if rows > 0 {
            self.seen.fetch_max(bytes.div_ceil(rows), Ordering::Relaxed);
        }
    }

    /// The width to reserve memory for: what batches decoded, once one
    /// has; else the estimate.
    pub fn bytes(&self) -> u64 {
        match self.seen.load(Ordering::Relaxed) {
            0 => self.estimated.load(Ordering::Relaxed),
            seen => seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[test]
    fn wide_shares_wait_for_the_budget_and_narrow_ones_pass() {
        // 148 MiB: six wide shares of 24 MiB.
        let memory = Memory::new(260 * MIB);
        let held: Vec<_> = (0..6)
            .map(|_| memory.reserve(2_000).now_or_never().unwrap().unwrap())
            .collect();
        assert!(memory.reserve(2_000).now_or_never().is_none());
        // 4 MiB are left: a narrow share still fits.
        assert!(memory.reserve(40).now_or_never().is_some());
        drop(held);
        assert!(memory.reserve(2_000).now_or_never().is_some());
    }

    #[test]
    fn one_share_always_fits() {
        let memory = Memory::new(64 * MIB);
        let one = memory.reserve(u64::MAX).now_or_never().unwrap().unwrap();
        assert!(memory.reserve(2_000).now_or_never().is_none());
        drop(one);
        assert!(memory.reserve(2_000).now_or_never().is_some());
    }

    #[test]
    fn decoded_rows_replace_the_estimate() {
        let w = RowWidth::estimated(None);
        assert_eq!(w.bytes(), u64::MAX);
        w.saw(0, 100);
        assert_eq!(w.bytes(), u64::MAX);
        w.saw(1000, 40_000);
        assert_eq!(w.bytes(), 40);
        w.saw(10, 1000);
        assert_eq!(w.bytes(), 100);
        w.saw(1000, 1000);
        assert_eq!(w.bytes(), 100);
        assert_eq!(RowWidth::estimated(Some(2048)).bytes(), 2048);
    }

    #[test]
    fn narrow_rows_cost_little_and_wide_ones_the_cap() {
        assert_eq!(slot_bytes(0), NARROW_SLOT);
        assert!(slot_bytes(40) < 4 * MIB, "{}", slot_bytes(40));
        assert_eq!(slot_bytes(512), WIDE_SLOT);
        assert_eq!(slot_bytes(2_000), WIDE_SLOT);
        assert_eq!(slot_bytes(u64::MAX), WIDE_SLOT);
        assert!(slot_bytes(100) < slot_bytes(300));
    }

    #[test]
    fn wide_rows_get_fewer_slots_than_asked() {
        let limit = 256 * MIB;
        // 256 - 112 = 144 MiB: six wide slots, every narrow one.
        assert_eq!(slots_within(limit, 2_000, 32), 6);
        assert_eq!(slots_within(limit, 2_000, 4), 4);
        assert_eq!(slots_within(limit, 40, 32), 32);
        assert_eq!(slots_within(512 * MIB, 2_000, 32), 16);
        // A limit below the base still runs one slot.
        assert_eq!(slots_within(64 * MIB, 2_000, 8), 1);
        assert_eq!(slots_within(limit, 2_000, 0), 1);
    }
}
