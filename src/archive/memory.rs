//! The memory budget of an archive run, shared by the extraction slots of
//! every table it archives at once.
//!
//! A batch reserves its slot's share ([`plan::memory::slot_bytes`], by the
//! width of its table's rows) when it takes its extraction slot, and gives
//! it back with the slot; a batch whose share is not free waits, so wide
//! rows run on fewer slots than `parallel_windows` asks when the budget
//! holds fewer.  A share is never more than the whole budget: one batch
//! always runs.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::{Error, Result};
use crate::plan;

const MIB: u64 = 1 << 20;

/// The budget: `global.memory_limit` less a run's own, in MiB.
pub struct Memory {
    budget_mib: u32,
    free: Semaphore,
}

impl Memory {
    pub fn new(limit: u64) -> Self {
        let budget_mib = (plan::memory::slot_budget(limit) / MIB).clamp(1, u32::MAX as u64) as u32;
        Self {
            budget_mib,
            free: Semaphore::new(budget_mib as usize),
        }
    }

    /// Reserves a slot's share for rows of `row_bytes`, waiting until it is
    /// free; given back when the permit drops.
    pub async fn reserve(&self, row_bytes: u64) -> Result<SemaphorePermit<'_>> {
        let mib = plan::memory::slot_bytes(row_bytes).div_ceil(MIB);
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
}
