//! Committing batches and reading the archive's ledger back from the catalog.
//!
//! # Contract
//! [`commit_batch`] appends exactly one snapshot carrying the batch's summary,
//! or returns an error; it never appends the same batch twice.  When the
//! outcome of a commit is unknown (timeout, 5xx), it reloads the table and
//! looks for the batch id: found means committed.  Not found is reported as an
//! error — the caller then rolls its Postgres transaction back, so whether the
//! in-flight commit lands later or never, no row is lost or duplicated (a late
//! landing makes the batch *unsettled*, resolved by the next run).

use std::collections::{BTreeMap, HashMap};

use iceberg::spec::{DataFile, SnapshotRef};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, TableIdent};

use crate::error::{Error, ErrorKind, Result};
use crate::plan::{BatchRecord, keys};

/// Snapshots of the table's current state, oldest first (the ancestry of the
/// current snapshot: a snapshot rolled back by an operator is not part of it).
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

/// The batches of `source` in the table's current state, in commit order.
pub fn read_ledger(table: &Table, source: &str) -> Result<Vec<BatchRecord>> {
    let mut out = Vec::new();
    for s in ancestry(table) {
        let props = &s.summary().additional_properties;
        if let Some(rec) =
            BatchRecord::from_summary(source, s.snapshot_id(), s.timestamp_ms(), props)
        {
            out.push(rec.map_err(|e| {
                Error::new(
                    ErrorKind::Catalog,
                    format!("snapshot summary of {} is damaged: {e}", table.identifier()),
                )
            })?);
        }
    }
    Ok(out)
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

/// Appends one snapshot with `files` and `summary`; see the module contract.
/// Refuses a batch id the table already holds (a plan made from stale
/// metadata).  Returns the committed snapshot id and the table as the catalog
/// serves it after the commit.
pub async fn commit_batch(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    files: Vec<DataFile>,
    summary: HashMap<String, String>,
) -> Result<(i64, Table)> {
    let batch_id = summary
        .get(keys::BATCH_ID)
        .cloned()
        .ok_or_else(|| Error::internal("summary without batch id"))?;
    let table = reload(catalog, ident).await?;
    if let Some(s) = find_batch(&table, &batch_id) {
        return Err(Error::internal(format!(
            "batch {batch_id} is already committed (snapshot {}); the plan was made from stale metadata — run again",
            s.snapshot_id()
        )));
    }
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
