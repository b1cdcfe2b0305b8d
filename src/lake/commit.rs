//! Committing batches and reading the archive's ledger back from the catalog.
//!
//! # Contract
//! [`commit_batch`] appends exactly one snapshot carrying the batch's summary,
//! or returns an error; it never appends the same batch twice.  When the
//! outcome of a commit is unknown (timeout, 5xx), it reloads the table and
//! looks for the batch id: found means committed.  The same commit rewrites
//! the durable ledger property ([`crate::plan::ledger`]), so the batch
//! history survives snapshot expiry.  Not found is reported as an
//! error — the caller then rolls its Postgres transaction back, so whether the
//! in-flight commit lands later or never, no row is lost or duplicated (a late
//! landing makes the batch *unsettled*, resolved by the next run).

use std::collections::{BTreeMap, HashMap, HashSet};

use iceberg::spec::{DataFile, SnapshotRef};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, TableIdent};

use crate::error::{Error, ErrorKind, Result};
use crate::plan::ledger::{self, LedgerEntry, LedgerFile};
use crate::plan::{BatchRecord, keys};

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
        Some(text) => ledger::parse(text).map_err(damaged)?,
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
        batches: ledger::merge(from_snapshots, &stored, source),
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

/// Reloads the table from the catalog.
pub async fn reload(catalog: &dyn Catalog, ident: &TableIdent) -> Result<Table> {
    catalog
        .load_table(ident)
        .await
        .map_err(|e| Error::iceberg(format!("cannot load {ident} from the catalog"), e))
}

/// What the commit of one batch records besides its files and summary.
pub struct LedgerUpdate<'a> {
    pub source: &'a str,
    /// Batches known to be settled: the ledger drops their files.
    pub settled: &'a HashSet<String>,
}

/// Appends one snapshot with `files` and `summary`, and rewrites the durable
/// ledger property with the batch added, in one catalog commit; see the
/// module contract.  Refuses a batch id the table already holds (a plan made
/// from stale metadata).  Returns the committed snapshot id and the table as
/// the catalog serves it after the commit.
pub async fn commit_batch(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    files: Vec<DataFile>,
    summary: HashMap<String, String>,
    update: LedgerUpdate<'_>,
) -> Result<(i64, Table)> {
    let batch_id = summary
        .get(keys::BATCH_ID)
        .cloned()
        .ok_or_else(|| Error::internal("summary without batch id"))?;
    let table = reload(catalog, ident).await?;
    let known = read_ledger_full(&table, update.source)?;
    if known.contains(&batch_id) {
        return Err(Error::internal(format!(
            "batch {batch_id} is already committed; the plan was made from stale metadata — run again"
        )));
    }
    let entry = new_entry(&summary, &files, update.source)?;
    let property = ledger::render(&ledger::next(
        &known.batches,
        &known.stored,
        update.source,
        update.settled,
        &known.in_history,
        entry,
    ));
    let tx = Transaction::new(&table);
    let action = tx
        .fast_append()
        // File names are unique per batch attempt; skip re-reading every manifest.
        .with_check_duplicate(false)
        .add_data_files(files)
        .set_snapshot_properties(summary);
    let tx = action
        .apply(tx)
        .map_err(|e| Error::iceberg("cannot prepare the commit", e))?;
    let tx = tx
        .update_table_properties()
        .set(keys::LEDGER.to_string(), property)
        .apply(tx)
        .map_err(|e| Error::iceberg("cannot prepare the ledger update", e))?;
    if let Err(e) = tx.commit(catalog).await {
        // Did it land anyway?
        let err = Error::iceberg(format!("cannot commit batch {batch_id} to {ident}"), e);
        match reload(catalog, ident).await {
            Ok(t) if find_batch(&t, &batch_id).is_some() => {
                tracing::warn!("commit of batch {batch_id} reported an error but landed: {err}");
            }
            _ => return Err(err),
        }
    }
    let t = reload(catalog, ident).await?;
    let id = find_batch(&t, &batch_id)
        .map(|s| s.snapshot_id())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Catalog,
                format!("batch {batch_id} is not in {ident} after its commit"),
            )
        })?;
    Ok((id, t))
}

/// The ledger entry of a batch about to be committed.
fn new_entry(
    summary: &HashMap<String, String>,
    files: &[DataFile],
    source: &str,
) -> Result<LedgerEntry> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let rec = BatchRecord::from_summary(source, 0, now_ms, summary)
        .ok_or_else(|| Error::internal("the batch summary names another source"))?
        .map_err(|e| Error::internal(format!("the batch summary is incomplete: {e}")))?;
    let files = files
        .iter()
        .map(|f| LedgerFile {
            path: f.file_path().to_string(),
            size: f.file_size_in_bytes(),
            records: f.record_count(),
        })
        .collect();
    Ok(LedgerEntry::of(&rec, source, files))
}

/// Records that `batch_id` failed verification (a table property), so the
/// windows it covers are blocked until `archive --force`.
pub async fn mark_failed(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    batch_id: &str,
    reason: &str,
) -> Result<()> {
    let table = reload(catalog, ident).await?;
    let tx = Transaction::new(&table);
    let action = tx.update_table_properties().set(
        format!("{}{batch_id}", keys::FAILED_PREFIX),
        reason.chars().take(500).collect(),
    );
    let tx = action
        .apply(tx)
        .map_err(|e| Error::iceberg("cannot prepare the failure marker", e))?;
    tx.commit(catalog)
        .await
        .map_err(|e| Error::iceberg(format!("cannot mark batch {batch_id} failed"), e))?;
    Ok(())
}

/// Removes failure markers of batches that have been resolved.
pub async fn clear_failed(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    batch_ids: &[String],
) -> Result<()> {
    if batch_ids.is_empty() {
        return Ok(());
    }
    let table = reload(catalog, ident).await?;
    let tx = Transaction::new(&table);
    let mut action = tx.update_table_properties();
    for id in batch_ids {
        action = action.remove(format!("{}{id}", keys::FAILED_PREFIX));
    }
    let tx = action
        .apply(tx)
        .map_err(|e| Error::iceberg("cannot prepare the commit", e))?;
    tx.commit(catalog)
        .await
        .map_err(|e| Error::iceberg("cannot clear failure markers", e))?;
    Ok(())
}
