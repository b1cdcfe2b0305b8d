//! How many extraction slots fit in the run's memory: a pure decision, by
//! the width of the rows.
//!
//! An extraction slot holds buffers that grow with the bytes of its rows
//! up to fixed caps: the record batch being decoded and one ready ahead
//! ([`crate::source::extract::BATCH_BYTES`] each), the row groups its open
//! data files are building ([`crate::lake::write::ROW_GROUP_BYTES`]), their
//! zstd contexts, and into S3 the parts being uploaded.  Narrow rows reach
//! the caps' row limits first and cost a slot a few MiB; rows of half a
//! kilobyte and more reach the byte caps and cost about [`WIDE_SLOT`].
//! The slots of every table a run archives at once draw on one budget:
//! `global.memory_limit` less [`BASE`].

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

#[cfg(test)]
mod tests {
    use super::*;

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
