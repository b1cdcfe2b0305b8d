//! `maintain`: keep archive tables small for engines that load them on every
//! query — expire old snapshots, then merge the current snapshot's manifests.
//!
//! Needs only the catalog (no Postgres, no lock): every commit is optimistic
//! (expiry re-applies itself on a conflict; the manifest rewrite requires
//! `main` to be where it was read), so it is safe beside a running archive
//! and after a crash at any point (a crashed rewrite leaves only files no
//! snapshot references).  Deletes no file; the batch history stays in the
//! durable ledger ([`crate::plan::ledger`]).

use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::lake;

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
    /// The current time, µs (tests simulate it).
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
}

/// Runs `maintain` over the selected tables, one after another.
pub async fn run(
    cfg: &Config,
    table: Option<&str>,
    opts: &MaintainOptions,
) -> Result<Vec<MaintainReport>> {
    let tables = cfg.select_tables(table)?;
    let catalog = lake::open_catalog(&cfg.catalog).await?;
    let mut out = Vec::new();
    for t in tables {
        let ident = lake::table::ident(&t)?;
        if !catalog
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
        let table = lake::commit::reload(catalog.as_ref(), &ident).await?;
        let report = maintain_table(cfg, catalog.as_ref(), table, opts)
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
    cfg: &Config,
    catalog: &dyn iceberg::Catalog,
    table: iceberg::table::Table,
    opts: &MaintainOptions,
) -> Result<MaintainReport> {
    let ident = table.identifier().clone();
    let snapshots_before = table.metadata().snapshots().count();
    let metadata_bytes_before = metadata_bytes(&table).await?;
    let cutoff = opts.now_ms - opts.older_than.as_millis() as i64;
    let (data_before, _) = lake::maintenance::current_manifests(&table).await?;
    let mut report = MaintainReport {
        source: String::new(),
        iceberg_table: String::new(),
        dry_run: opts.dry_run,
        snapshots_before,
        snapshots_expired: would_expire(&table, cutoff, opts.retain_last),
        data_manifests_before: data_before.len(),
        data_manifests_after: data_before.len(),
        metadata_bytes_before,
        metadata_bytes_after: metadata_bytes_before,
    };
    if opts.dry_run {
        if data_before.len() > opts.max_manifests {
            report.data_manifests_after = 1;
        }
        return Ok(report);
    }
    let mut table = table;
    if report.snapshots_expired > 0 {
        let (t, n) =
            lake::maintenance::expire_snapshots(catalog, &table, cutoff, opts.retain_last).await?;
        report.snapshots_expired = n;
        table = t;
    }
    if data_before.len() > opts.max_manifests {
        let (_, after) = lake::maintenance::rewrite_manifests(&cfg.catalog, &table).await?;
        report.data_manifests_after = after;
        table = lake::commit::reload(catalog, &ident).await?;
    }
    report.metadata_bytes_after = metadata_bytes(&table).await?;
    tracing::info!(
        "{ident}: expired {} snapshot(s), data manifests {} -> {}, metadata {} -> {} bytes",
        report.snapshots_expired,
        report.data_manifests_before,
        report.data_manifests_after,
        report.metadata_bytes_before,
        report.metadata_bytes_after
    );
    Ok(report)
}

/// Snapshots of the ancestry older than `cutoff` beyond the newest
/// `retain_last` (what the expiry removes from `main`).
pub fn would_expire(table: &iceberg::table::Table, cutoff: i64, retain_last: usize) -> usize {
    let history = lake::commit::ancestry(table);
    let keep_from = history.len().saturating_sub(retain_last.max(1));
    history[..keep_from]
        .iter()
        .filter(|s| s.timestamp_ms() < cutoff)
        .count()
}

/// Size of the table's current metadata file.
pub async fn metadata_bytes(table: &iceberg::table::Table) -> Result<u64> {
    let Some(loc) = table.metadata_location() else {
        return Ok(0);
    };
    let input = table
        .file_io()
        .new_input(loc)
        .map_err(|e| Error::iceberg("cannot open the metadata file", e))?;
    Ok(input
        .metadata()
        .await
        .map_err(|e| Error::iceberg("cannot stat the metadata file", e))?
        .size)
}
