//! `maintain`: keep archive tables small for engines that load them on every
//! query, and their storage free of files nothing references.
//!
//! Per table, in this order: compact the small data files of each partition
//! ([`lake::compact`]), expire old snapshots, merge the current snapshot's
//! manifests, then delete orphan files ([`lake::orphans`]) — after the
//! expiry, so the files only expired snapshots referenced go in the same run.
//!
//! Needs only the catalog (no Postgres, no lock): every commit is optimistic
//! (expiry re-applies itself on a conflict; compaction and the manifest
//! rewrite require `main` to be where they read it, and are redone on the
//! table as it is now, up to [`ATTEMPTS`] times, when another writer won),
//! so it is safe beside a running archive and after a crash at any point
//! (a crashed rewrite leaves only files no snapshot references, which a
//! later run's orphan removal takes once they are older than the safety
//! age).  The batch history stays in the durable ledger
//! ([`crate::ledger::durable`]), whose open batches' files are never compacted
//! nor deleted.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, TableConfig};
use crate::error::{Error, Result};
use crate::lake;
use crate::lake::compact::Compacted;
use crate::lake::vended::TableStorage;

/// Tries of a commit that lost a race to another writer.
pub const ATTEMPTS: usize = 3;

pub use crate::config::MIN_ORPHAN_AGE;

/// What `maintain` does.
#[derive(Debug, Clone)]
pub struct MaintainOptions {
    pub dry_run: bool,
    /// Snapshots older than this go (time travel stays possible within it).
    pub older_than: Duration,
    /// Snapshots of `main` always kept, however old.
    pub retain_last: usize,
    /// Data manifests tolerated before they are merged.
    pub max_manifests: usize,
    /// Merge small data files within each partition.
    pub compact: bool,
    /// Unreferenced files older than this are deleted (at least [`MIN_ORPHAN_AGE`]).
    pub orphan_older_than: Duration,
    /// The current time, ms (tests simulate it).
    pub now_ms: i64,
}

/// What `maintain` found and did for one table.
#[derive(Debug, Clone, Serialize)]
pub struct MaintainReport {
    pub source: String,
    pub iceberg_table: String,
    pub dry_run: bool,
    pub snapshots_before: usize,
    /// Expired (dry run: would expire).
    pub snapshots_expired: usize,
    pub data_manifests_before: usize,
    pub data_manifests_after: usize,
    pub metadata_bytes_before: u64,
    pub metadata_bytes_after: u64,
    /// Small files merged (dry run: would merge).
    pub compacted: Compacted,
    /// Unreferenced files older than the safety age, deleted (dry run: found).
    pub orphan_files: usize,
    pub orphan_bytes: u64,
    /// Unreferenced files younger than the safety age, left for a later run.
    pub orphan_files_young: usize,
    /// Commits redone because another writer committed first.
    pub retries: usize,
    /// Why compaction and the manifest merge were skipped (a table of
    /// another format version than v2), if they were.
    pub rewrites_skipped: Option<String>,
}

/// Runs `maintain` over the selected tables, one after another.
pub async fn run(
    cfg: &Config,
    table: Option<&str>,
    opts: &MaintainOptions,
) -> Result<Vec<MaintainReport>> {
    if opts.orphan_older_than < MIN_ORPHAN_AGE {
        return Err(Error::config(format!(
            "the orphan-file age must be at least {} s: younger files may belong to a commit \
             in progress",
            MIN_ORPHAN_AGE.as_secs()
        ))
        .with_hint("use `--orphan-older-than 1h` or more (default 3d)"));
    }
    let tables = cfg.select_tables(table)?;
    let catalog = lake::open_catalog(&cfg.catalog).await?;
    let mut out = Vec::new();
    for t in tables {
        let ident = lake::table::ident(&t)?;
        if !catalog
            .iceberg()
            .table_exists(&ident)
            .await
            .map_err(|e| Error::iceberg(format!("cannot look up {ident}"), e))?
        {
            tracing::info!(
                "{}: no archive table yet; nothing to maintain",
                t.source_name()
            );
            continue;
        }
        let report = maintain_table(&t, &catalog, opts)
            .await
            .map_err(|e| e.prefixed(t.source_name()))?;
        out.push(MaintainReport {
            source: t.source_name(),
            iceberg_table: ident.to_string(),
            ..report
        });
    }
    Ok(out)
}

async fn maintain_table(
    t: &TableConfig,
    catalog: &Arc<lake::catalog::CatalogHandle>,
    opts: &MaintainOptions,
) -> Result<MaintainReport> {
    let ident = lake::table::ident(t)?;
    let mut table = lake::commit::reload(catalog.iceberg(), &ident).await?;
    // Storage keys a catalog vends are renewed while maintenance runs.
    let storage = TableStorage::new(catalog.clone(), &table);
    let metadata_bytes_before = lake::maintenance::metadata_bytes(&table).await?;
    let cutoff = opts.now_ms - opts.older_than.as_millis() as i64;
    let (data_before, _) = lake::maintenance::current_manifests(&table).await?;
    let small = t.target_file_size / 4;
    let mut report = MaintainReport {
        source: String::new(),
        iceberg_table: String::new(),
        dry_run: opts.dry_run,
        snapshots_before: table.metadata().snapshots().count(),
        snapshots_expired: would_expire(&table, cutoff, opts.retain_last),
        data_manifests_before: data_before.len(),
        data_manifests_after: data_before.len(),
        metadata_bytes_before,
        metadata_bytes_after: metadata_bytes_before,
        compacted: Compacted::default(),
        orphan_files: 0,
        orphan_bytes: 0,
        orphan_files_young: 0,
        retries: 0,
        rewrites_skipped: lake::maintenance::rewrite_refused(&table),
    };
    if let Some(why) = &report.rewrites_skipped {
        tracing::warn!("{ident}: compaction and manifest merge skipped: {why}");
    }
    let rewrites = report.rewrites_skipped.is_none();
    if opts.dry_run {
        if opts.compact && rewrites {
            report.compacted =
                lake::compact::compact(catalog, (&table, &storage), t, small, true).await?;
        }
        if rewrites && (data_before.len() > opts.max_manifests || report.compacted.files_in > 0) {
            report.data_manifests_after = 1;
        }
        sweep_orphans((&table, &storage), opts, &mut report).await?;
        return Ok(report);
    }
    if opts.compact && rewrites {
        let storage = &storage;
        let (c, tries) = with_retries(catalog.iceberg(), &ident, &mut table, |table| async move {
            lake::compact::compact(catalog, (&table, storage), t, small, false).await
        })
        .await?;
        report.retries += tries;
        report.compacted = c;
    }
    if report.snapshots_expired > 0 {
        let (after, n) = lake::maintenance::expire_snapshots(
            catalog.iceberg(),
            &table,
            cutoff,
            opts.retain_last,
        )
        .await?;
        report.snapshots_expired = n;
        table = after;
    }
    let (data, _) = lake::maintenance::current_manifests(&table).await?;
    report.data_manifests_after = data.len();
    if rewrites && data.len() > opts.max_manifests {
        let storage = &storage;
        let ((_, after), tries) =
            with_retries(catalog.iceberg(), &ident, &mut table, |table| async move {
                let now = storage.current(&table).await?;
                lake::maintenance::rewrite_manifests(catalog, &now).await
            })
            .await?;
        report.retries += tries;
        report.data_manifests_after = after;
    }
    sweep_orphans((&table, &storage), opts, &mut report).await?;
    report.metadata_bytes_after =
        lake::maintenance::metadata_bytes(&storage.current(&table).await?).await?;
    tracing::info!(
        "{ident}: compacted {} file(s) in {} partition(s) into {} ({} delete file(s) that applied \
         only to them removed), expired {} snapshot(s), data manifests {} -> {}, metadata {} -> {} \
         bytes, {} orphan file(s) ({} bytes) deleted",
        report.compacted.files_in,
        report.compacted.partitions,
        report.compacted.files_out,
        report.compacted.delete_files_removed,
        report.snapshots_expired,
        report.data_manifests_before,
        report.data_manifests_after,
        report.metadata_bytes_before,
        report.metadata_bytes_after,
        report.orphan_files,
        report.orphan_bytes
    );
    Ok(report)
}

/// Runs `step` on the table; when its commit loses a race, reloads the
/// table and runs it again, up to [`ATTEMPTS`] times.  Leaves `table` as the
/// catalog has it after the step; returns the step's result and the retries.
async fn with_retries<T, F, Fut>(
    catalog: &dyn iceberg::Catalog,
    ident: &iceberg::TableIdent,
    table: &mut iceberg::table::Table,
    mut step: F,
) -> Result<(T, usize)>
where
    F: FnMut(iceberg::table::Table) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut retries = 0;
    loop {
        match step(table.clone()).await {
            Ok(v) => {
                *table = lake::commit::reload(catalog, ident).await?;
                return Ok((v, retries));
            }
            Err(e) if e.is_conflict() && retries + 1 < ATTEMPTS => {
                retries += 1;
                tracing::warn!("{ident}: {}; trying again on the new state", e.message());
                *table = lake::commit::reload(catalog, ident).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Finds the orphan files of `table` and, unless a dry run, deletes those
/// older than the safety age.
async fn sweep_orphans(
    (table, storage): (&iceberg::table::Table, &TableStorage),
    opts: &MaintainOptions,
    report: &mut MaintainReport,
) -> Result<()> {
    let cutoff = opts.now_ms - opts.orphan_older_than.as_millis() as i64;
    let sweep = lake::orphans::find((table, storage), cutoff).await?;
    report.orphan_files = sweep.old.len();
    report.orphan_bytes = sweep.old.iter().map(|o| o.bytes).sum();
    report.orphan_files_young = sweep.young;
    if !opts.dry_run {
        lake::orphans::delete(storage, &sweep.old).await?;
    }
    Ok(())
}

/// `maintenance.after_archive`: `maintain` with the config's settings over
/// the tables just archived (`table`: the one `-t` named); reported on
/// stderr (stdout is the archive's).  Snapshot and file ages are wall-clock
/// times, whatever `archive --now` says about the source's windows.
pub async fn after_archive(cfg: &Config, table: Option<&str>) -> Result<()> {
    let m = &cfg.maintenance;
    let opts = MaintainOptions {
        dry_run: false,
        older_than: m.older_than,
        retain_last: m.retain_last,
        max_manifests: m.max_manifests,
        compact: m.compact,
        orphan_older_than: m.orphan_older_than,
        now_ms: chrono::Utc::now().timestamp_millis(),
    };
    run(cfg, table, &opts).await?;
    Ok(())
}

/// Snapshots of the ancestry older than `cutoff` beyond the newest
/// `retain_last` (what the expiry removes from `main`).
pub fn would_expire(table: &iceberg::table::Table, cutoff: i64, retain_last: usize) -> usize {
    let history = crate::ledger::read::ancestry(table);
    let keep_from = history.len().saturating_sub(retain_last.max(1));
    history[..keep_from]
        .iter()
        .filter(|s| s.timestamp_ms() < cutoff)
        .count()
}
