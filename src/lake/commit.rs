//! Committing batches (and failure marks) to the catalog; reading them back
//! is [`crate::ledger::read`].
//!
//! # Contract
//! [`commit_batch`] appends exactly one snapshot carrying the batch's summary,
//! or returns an error; it never appends the same batch twice.  When the
//! outcome of a commit is unknown (timeout, 5xx), it reloads the table and
//! looks for the batch id: found means committed.  The same commit rewrites
//! the durable ledger property ([`crate::ledger::durable`]), so the batch
//! history survives snapshot expiry.
//!
//! A commit is prepared ([`stage_batch`]: the manifest and manifest list
//! written, the ledger computed; see [`Stager`]) on a base, then sent onto
//! the committer's `base` (the table its last commit left; loaded afresh
//! for a run's first commit and after a failed one) without another load:
//! the catalog checks the requirements computed from the base it was
//! prepared on (same UUID, `main` at the same snapshot).  That base may be
//! the previous batch's prepared commit, staged before it landed; it is only
//! sent if `main` is where it expects (`Staged::fits`), else prepared again.
//! Only this run writes the ledger property (the run holds the table's lock,
//! and no other source archives into the table), so the base holds every
//! entry.  If another engine expired snapshots since, the append goes onto
//! the catalog's table and the property still lists every batch — a batch
//! the base still shows in history only stays on its own instead of
//! joining its month's roll-up.  If another writer moved `main` since
//! (compaction, or a commit of a run that died landing late), the catalog
//! refuses the base, and the commit is prepared again from a fresh load —
//! ledger included; never rebased by iceberg-rust, and never over a landing
//! of the same batch.
//! Not found is reported as an
//! error — the caller then rolls its Postgres transaction back, so whether the
//! in-flight commit lands later or never, no row is lost or duplicated (a late
//! landing makes the batch *unsettled*, resolved by the next run).  A commit
//! prepared and never sent leaves only its manifest and manifest list
//! behind, unreferenced (orphans for `maintain`).

use std::collections::HashSet;

use iceberg::spec::DataFile;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, TableIdent, TableRequirement, TableUpdate};

use crate::error::{Error, ErrorKind, Result};
use crate::lake::catalog::CatalogHandle;
use crate::lake::commit_base::{Stager, with_io};
use crate::lake::metadata_commit;
use crate::ledger::durable::{self, LedgerEntry, LedgerFile};
use crate::ledger::read::{find_batch, read_ledger_full};
use crate::ledger::{BatchRecord, SummaryExtra, keys};

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
    /// The batches of `source` the run knows of: its plan's and its own
    /// commits.  Any other batch of `source` in the table landed after the
    /// plan (a late commit of a run that died): the batch is not committed
    /// over it.
    pub known: &'a HashSet<String>,
}

/// How often a batch is prepared and committed when the catalog refuses
/// the table it was prepared from (another writer moved `main`).
const ATTEMPTS: usize = 3;

/// A batch's commit prepared on a base table ([`stage_batch`]): its
/// manifest and manifest list are written, the catalog not yet asked.
pub struct Staged {
    /// The snapshot the commit appends.
    pub snapshot_id: i64,
    /// The base's metadata: the commit requires its table UUID and `main`
    /// snapshot; sent onto the very same table, the applied metadata is
    /// `table`'s (no second build of a metadata that grows with every
    /// snapshot).
    base: iceberg::spec::TableMetadataRef,
    requirements: Vec<TableRequirement>,
    updates: Vec<TableUpdate>,
    /// The base with the commit applied: the table once it lands, and
    /// until then the base the next batch may be prepared on.
    pub table: Table,
}

impl Staged {
    /// Whether the commit may go out onto `base`: the table it was
    /// prepared on, as far as its requirements tell.
    pub fn fits(&self, base: &Table) -> bool {
        let (ours, theirs) = (&self.base, base.metadata());
        ours.uuid() == theirs.uuid() && ours.current_snapshot_id() == theirs.current_snapshot_id()
    }
}

/// Prepares the commit of one snapshot with `files` and the summary of
/// `rec` onto `base`, with the durable ledger property (computed from
/// `base`) rewritten with the batch added: writes its manifest and manifest
/// list, sends nothing.  Refuses a batch id `base` already holds (a plan
/// made from stale metadata), and a batch of the source `update.known`
/// does not know (see [`LedgerUpdate::known`]).
pub async fn stage_batch(
    base: &Table,
    files: Vec<DataFile>,
    rec: &BatchRecord,
    extra: SummaryExtra,
    update: &LedgerUpdate<'_>,
) -> Result<Staged> {
    let batch_id = &rec.batch_id;
    let tx = prepare(base, files, rec, extra, update)?;
    let stager = Stager::new(base);
    let table = tx
        .commit(&stager)
        .await
        .map_err(|e| Error::iceberg(format!("cannot prepare the commit of batch {batch_id}"), e))?;
    let (requirements, updates) = stager
        .take()
        .ok_or_else(|| Error::internal(format!("batch {batch_id}: nothing was prepared")))?;
    let snapshot_id = find_batch(&table, batch_id)
        .map(|s| s.snapshot_id())
        .ok_or_else(|| Error::internal(format!("batch {batch_id}: no snapshot was prepared")))?;
    Ok(Staged {
        snapshot_id,
        base: base.metadata_ref(),
        requirements,
        updates,
        table,
    })
}

/// Sends `staged` to the catalog onto `base`: applied to it and swapped in
/// (SQL, Glue: [`metadata_commit::swap`] refuses a `base` the catalog no
/// longer points at), or posted (REST).  Returns the table the catalog
/// serves after it, with `base`'s `FileIO`.
async fn send(catalog: &CatalogHandle, base: &Table, staged: Staged) -> iceberg::Result<Table> {
    let committed = if metadata_commit::swaps(catalog) {
        let metadata = if std::sync::Arc::ptr_eq(&staged.base, &base.metadata_ref()) {
            staged.table.metadata_ref()
        } else {
            for r in &staged.requirements {
                r.check(Some(base.metadata()))?;
            }
            metadata_commit::apply_updates(base, staged.updates)?.into()
        };
        metadata_commit::swap(catalog, base, metadata).await?
    } else {
        metadata_commit::send_rest(catalog, base, staged.requirements, staged.updates).await?
    };
    with_io(committed, base.file_io())
}

/// Appends one snapshot with `files` and the summary of `rec` to `base`'s
/// table, and rewrites the durable ledger property (computed from `base`)
/// with the batch added, in one catalog commit; see the module contract.
/// `staged` is that commit prepared beforehand, possibly on a table
/// `base` was still to become (the previous batch's commit in flight): it
/// is sent when it [`Staged::fits`] `base`, else the commit is prepared
/// again on `base`.  The commit goes out on `base` without loading the
/// table again; when the catalog refuses it (another writer committed
/// since), the batch is prepared again from a fresh load, at most
/// `ATTEMPTS` times in all — unless that load shows the batch landed (a
/// commit of a run that died, or an attempt whose answer was lost): then
/// that snapshot is the batch's, and nothing is appended again.
/// Returns the committed snapshot id and the table as the catalog serves
/// it after the commit.
pub async fn commit_batch(
    catalog: &CatalogHandle,
    base: &Table,
    staged: Option<Staged>,
    files: Vec<DataFile>,
    rec: &BatchRecord,
    extra: SummaryExtra,
    update: LedgerUpdate<'_>,
) -> Result<(i64, Table)> {
    let batch_id = &rec.batch_id;
    let ident = base.identifier();
    let mut base = base.clone();
    let mut staged = staged.filter(|s| {
        let fits = s.fits(&base);
        if !fits {
            tracing::info!(
                "batch {batch_id}: prepared on a table that did not come to be; preparing it again"
            );
        }
        fits
    });
    let mut attempt = 1;
    // The catalog answers a commit with the table it now serves; only when
    // the answer is an error is the table read again (did it land anyway?).
    let t = loop {
        let prepared = match staged.take() {
            Some(s) => s,
            None => stage_batch(&base, files.clone(), rec, extra, &update).await?,
        };
        let e = match send(catalog, &base, prepared).await {
            Ok(t) => break t,
            Err(e) => e,
        };
        // Refused before anything landed: the table moved since `base`
        // (a requirement or the pointer's compare-and-set failed).
        let refused = matches!(
            e.kind(),
            iceberg::ErrorKind::DataInvalid | iceberg::ErrorKind::CatalogCommitConflicts
        );
        let err = Error::iceberg(format!("cannot commit batch {batch_id} to {ident}"), e);
        let Ok(fresh) = reload(catalog.iceberg(), ident).await else {
            return Err(err);
        };
        if find_batch(&fresh, batch_id).is_some() {
            tracing::warn!("commit of batch {batch_id} reported an error but landed: {err}");
            break fresh;
        }
        if !refused || attempt == ATTEMPTS {
            return Err(err);
        }
        tracing::info!("batch {batch_id}: preparing the commit again from fresh metadata ({err})");
        (base, attempt) = (fresh, attempt + 1);
    };
    let id = find_batch(&t, batch_id)
        .map(|s| s.snapshot_id())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Catalog,
                format!("batch {batch_id} is not in {ident} after its commit"),
            )
        })?;
    Ok((id, t))
}

/// The transaction that appends the batch's snapshot to `base` and rewrites
/// the ledger property computed from `base`.
fn prepare(
    base: &Table,
    files: Vec<DataFile>,
    rec: &BatchRecord,
    extra: SummaryExtra,
    update: &LedgerUpdate<'_>,
) -> Result<Transaction> {
    let batch_id = &rec.batch_id;
    let summary = rec.to_summary(update.source, extra);
    let known = read_ledger_full(base, update.source)?;
    if known.contains(batch_id) {
        return Err(Error::internal(format!(
            "batch {batch_id} is already committed; the plan was made from stale metadata — run again"
        )));
    }
    if let Some((late, _)) = known
        .batches
        .iter()
        .find(|(b, _)| !b.rolled_up && !update.known.contains(&b.batch_id))
    {
        return Err(Error::new(
            ErrorKind::Catalog,
            format!(
                "batch {} appeared in {} after this run's plan (a late commit of a run that died?); \
                 batch {batch_id} was not committed",
                late.batch_id,
                base.identifier()
            ),
        )
        .with_hint("its rows stay in Postgres; run again: the next plan reconciles both"));
    }
    let entry = new_entry(rec, &files, update.source);
    let property = durable::render(&durable::next(
        &known.batches,
        &known.stored,
        update.source,
        update.settled,
        &known.in_history,
        entry,
    ));
    let tx = Transaction::new(base);
    let action = tx
        .fast_append()
        // File names are unique per batch attempt; skip re-reading every manifest.
        .with_check_duplicate(false)
        .add_data_files(files)
        .set_snapshot_properties(summary);
    let tx = action
        .apply(tx)
        .map_err(|e| Error::iceberg("cannot prepare the commit", e))?;
    tx.update_table_properties()
        .set(keys::LEDGER.to_string(), property)
        .apply(tx)
        .map_err(|e| Error::iceberg("cannot prepare the ledger update", e))
}

/// The ledger entry of a batch about to be committed (its commit time is
/// now; the catalog's is read back from the snapshot while it lives).
fn new_entry(rec: &BatchRecord, files: &[DataFile], source: &str) -> LedgerEntry {
    let rec = BatchRecord {
        committed_at_ms: chrono::Utc::now().timestamp_millis(),
        ..rec.clone()
    };
    let files = files
        .iter()
        .map(|f| LedgerFile {
            path: f.file_path().to_string(),
            size: f.file_size_in_bytes(),
            records: f.record_count(),
        })
        .collect();
    LedgerEntry::of(&rec, source, files)
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
