//! Reading the ledger back from a table: the batches of the current
//! ancestry's snapshot summaries merged with the durable ledger property,
//! failed-batch marks, and finding one batch's snapshot.

use std::collections::{BTreeMap, HashSet};

use iceberg::spec::SnapshotRef;
use iceberg::table::Table;

use super::durable::{self, LedgerEntry, LedgerFile};
use super::{BatchRecord, keys};
use crate::error::{Error, ErrorKind, Result};

/// Snapshots of the table's current state, oldest first (the ancestry of the
/// current snapshot: a snapshot rolled back by an operator is not part of it).
/// Stops at a parent that was expired; see [`ancestry_truncated`].
pub fn ancestry(table: &Table) -> Vec<SnapshotRef> {
    let md = table.metadata();
    let mut out = Vec::new();
    let mut cur = md.current_snapshot().cloned();
    while let Some(s) = cur {
        cur = s
            .parent_snapshot_id()
            .and_then(|p| md.snapshot_by_id(p).cloned());
        out.push(s);
    }
    out.reverse();
    out
}

/// Whether snapshots before the oldest ancestor were expired: it names a
/// parent the metadata no longer has, or (PyIceberg clears the parent of a
/// snapshot whose parent it expires) it has none but is not the table's
/// first snapshot (sequence number above 1).
pub fn ancestry_truncated(table: &Table) -> bool {
    let md = table.metadata();
    ancestry(table)
        .first()
        .is_some_and(|s| match s.parent_snapshot_id() {
            Some(p) => md.snapshot_by_id(p).is_none(),
            None => s.sequence_number() > 1,
        })
}

/// Every batch of `source`, in commit order, with the files it added as the
/// durable ledger records them (kept while the batch is not known settled).
pub struct Ledger {
    pub batches: Vec<(BatchRecord, Vec<LedgerFile>)>,
    /// The stored entries of every source (rewritten on the next commit).
    pub stored: Vec<LedgerEntry>,
    /// Batches whose snapshots are in the current ancestry.
    pub in_history: HashSet<String>,
}

impl Ledger {
    /// The files the ledger records for `batch_id`.
    pub fn files_of(&self, batch_id: &str) -> Option<&[LedgerFile]> {
        self.batches
            .iter()
            .find(|(b, _)| b.batch_id == batch_id)
            .map(|(_, f)| f.as_slice())
    }

    pub fn contains(&self, batch_id: &str) -> bool {
        self.batches.iter().any(|(b, _)| b.batch_id == batch_id)
    }
}

/// Reads the ledger of `source`: snapshot summaries of the ancestry, plus the
/// batches the durable ledger property carries whose snapshots were expired.
/// A truncated ancestry without that property (a table written before it
/// existed, then expired) is an error: batches would be missing silently.
pub fn read_ledger_full(table: &Table, source: &str) -> Result<Ledger> {
    let damaged = |e: String| {
        Error::new(
            ErrorKind::Catalog,
            format!("the ledger of {} is damaged: {e}", table.identifier()),
        )
    };
    let mut from_snapshots = Vec::new();
    for s in ancestry(table) {
        let props = &s.summary().additional_properties;
        if let Some(rec) =
            BatchRecord::from_summary(source, s.snapshot_id(), s.timestamp_ms(), props)
        {
            from_snapshots.push(rec.map_err(damaged)?);
        }
    }
    let stored = match table.metadata().properties().get(keys::LEDGER) {
        Some(text) => durable::parse(text).map_err(damaged)?,
        None if ancestry_truncated(table) => {
            return Err(Error::new(
                ErrorKind::Catalog,
                format!(
                    "the history of {} was expired before permafrost kept a durable ledger: \
                     the batches of the expired snapshots are unknown",
                    table.identifier()
                ),
            )
            .with_hint(
                "restore the expired metadata, or archive into a new table; never expire \
                 snapshots of a table written by permafrost older than 0.1",
            ));
        }
        None => vec![],
    };
    let in_history = from_snapshots.iter().map(|b| b.batch_id.clone()).collect();
    Ok(Ledger {
        batches: durable::merge(from_snapshots, &stored, source),
        stored,
        in_history,
    })
}

/// The batches of `source` (see [`read_ledger_full`]), in commit order.
pub fn read_ledger(table: &Table, source: &str) -> Result<Vec<BatchRecord>> {
    Ok(read_ledger_full(table, source)?
        .batches
        .into_iter()
        .map(|(b, _)| b)
        .collect())
}

/// Batches marked failed in table properties: batch id → reason.
pub fn failed_batches(table: &Table) -> BTreeMap<String, String> {
    table
        .metadata()
        .properties()
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(keys::FAILED_PREFIX)
                .map(|id| (id.to_string(), v.clone()))
        })
        .collect()
}

/// Finds the snapshot of `batch_id`, if committed (the newest, should a
/// foreign tool ever have copied a summary).
pub fn find_batch(table: &Table, batch_id: &str) -> Option<SnapshotRef> {
    ancestry(table).into_iter().rev().find(|s| {
        s.summary()
            .additional_properties
            .get(keys::BATCH_ID)
            .map(String::as_str)
            == Some(batch_id)
    })
}
