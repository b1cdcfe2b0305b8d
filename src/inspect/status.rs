//! `status`: per table, what is archived, pending, kept or failed.

use serde::Serialize;

use crate::config::{Config, TableConfig};
use crate::error::Result;
use crate::lake;
use crate::plan::window::{Micros, Window, rfc3339};
use crate::plan::{self, BatchState, WindowState};
use crate::source::{self, windows};

/// The state of one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    pub source: String,
    pub iceberg_table: String,
    /// False until the first archive run creates the Iceberg table.
    pub table_exists: bool,
    pub partition_by: String,
    pub cutoff: String,
    pub windows_archived: usize,
    /// Copied with `--no-delete`, rows still in Postgres.
    pub windows_kept: usize,
    pub windows_pending: usize,
    pub windows_failed: usize,
    pub batches: usize,
    pub rows_archived: u64,
    pub rows_pending: u64,
    /// Rows newer than the cutoff (kept by the lag).
    pub rows_recent: u64,
    /// Rows whose time column is NULL: never archived.
    pub rows_null_time: u64,
    /// Rows whose time is `infinity` or `-infinity`: never archived.
    pub rows_infinite_time: u64,
    /// End of the newest archived window.
    pub latest_window: Option<String>,
    pub failed_batches: Vec<FailedBatch>,
    /// Batches committed whose Postgres transaction did not commit; the next
    /// archive run removes their rows from Postgres without re-archiving them.
    pub unsettled_batches: Vec<String>,
    /// This Postgres's history (`<system identifier>/<timeline>`), when it
    /// says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pg_history: Option<String>,
    /// Move batches recorded on another history (a restore to an earlier
    /// point, a failover, another cluster): their transaction ids are not
    /// asked about; rows in their windows are told apart by content.
    pub batches_of_other_history: usize,
    /// Snapshots, manifests, files and metadata size of the archive table
    /// (what `maintain` shrinks); absent before the first archive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shape: Option<lake::maintenance::TableShape>,
    /// What `maintain` with the config's settings would do now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintain_would: Option<MaintainWould>,
}

/// What `maintain` would do.
#[derive(Debug, Clone, Serialize)]
pub struct MaintainWould {
    pub expire_snapshots: usize,
    pub merge_manifests: bool,
    /// Small data files that would be merged (partitions with two or more).
    pub compact_files: usize,
}

/// A batch that failed verification.
#[derive(Debug, Clone, Serialize)]
pub struct FailedBatch {
    pub batch_id: String,
    pub window_start: String,
    pub window_end: String,
    pub reason: String,
}

/// The archive table's quick shape for each of `sources` (source names as
/// [`TableConfig::source_name`] gives them) that has one — what metrics
/// report after a run.  Catalog only; no Postgres, no manifest read.
pub async fn shapes(
    cfg: &Config,
    sources: &[&str],
) -> Result<Vec<(String, lake::maintenance::QuickShape)>> {
    let catalog = lake::open_catalog(&cfg.catalog).await?;
    let mut out = Vec::new();
    for t in cfg
        .tables
        .iter()
        .filter(|t| sources.contains(&t.source_name().as_str()))
    {
        let ident = lake::table::ident(t)?;
        if !catalog
            .iceberg()
            .table_exists(&ident)
            .await
            .map_err(|e| crate::Error::iceberg(format!("cannot look up {ident}"), e))?
        {
            continue;
        }
        let table = lake::commit::reload(catalog.iceberg(), &ident).await?;
        out.push((
            t.source_name(),
            lake::maintenance::quick_shape(&table).await?,
        ));
    }
    Ok(out)
}

/// `status` for the selected tables.
pub async fn status(
    cfg: &Config,
    table: Option<&str>,
    now: Option<Micros>,
) -> Result<Vec<TableStatus>> {
    let tables = cfg.select_tables(table)?;
    let catalog = lake::open_catalog(&cfg.catalog).await?;
    let client = source::connect(&cfg.database).await?;
    let (_, server_now) = source::server_facts(&client).await?;
    let now = now.unwrap_or(server_now);
    let mut out = Vec::new();
    for t in &tables {
        match table_status(catalog.iceberg(), &client, t, &cfg.maintenance, now).await {
            Ok(st) => out.push(st),
            Err(e) => {
                return Err(source::explain_lock_timeout(&client, &t.quoted_name(), e).await);
            }
        }
    }
    Ok(out)
}

async fn table_status(
    catalog: &dyn iceberg::Catalog,
    client: &tokio_postgres::Client,
    t: &TableConfig,
    maintenance: &crate::config::MaintenanceConfig,
    now: Micros,
) -> Result<TableStatus> {
    let src = source::introspect::introspect(client, t).await?;
    let cutoff = windows::cutoff(t.partition_by, now, t.lag);
    let counts = windows::window_counts(client, &src, t.partition_by, cutoff).await?;
    let left = windows::unarchivable_counts(client, &src, cutoff).await?;
    let table = match lake::table::inspect_table(catalog, t, &src).await? {
        lake::table::TableState::Missing => None,
        lake::table::TableState::Ready(at) => Some(at.table),
        lake::table::TableState::Evolves { table, .. } => Some(*table),
    };
    let mut facts = crate::archive::facts::without_archive(
        &src,
        t,
        counts.iter().map(|(w, _)| *w).collect(),
        Window::up_to(cutoff),
    );
    if let Some(table) = &table {
        crate::archive::facts::add_ledger(&mut facts, client, table).await?;
    }
    let shape = match &table {
        Some(t_) => Some(lake::maintenance::shape(t_, t.target_file_size / 4).await?),
        None => None,
    };
    let maintain_would = match (&table, &shape) {
        (Some(t_), Some(sh)) => {
            let cutoff =
                chrono::Utc::now().timestamp_millis() - maintenance.older_than.as_millis() as i64;
            let rewrites = lake::maintenance::rewrite_refused(t_).is_none();
            Some(MaintainWould {
                expire_snapshots: crate::maintain::would_expire(
                    t_,
                    cutoff,
                    maintenance.retain_last,
                ),
                merge_manifests: rewrites && sh.data_manifests > maintenance.max_manifests,
                compact_files: if maintenance.compact && rewrites {
                    lake::compact::groups(t_, t.target_file_size / 4)
                        .await?
                        .iter()
                        .map(Vec::len)
                        .sum()
                } else {
                    0
                },
            })
        }
        _ => None,
    };
    let ws = plan::window_states(&facts);
    let states = plan::batch_states(&facts);
    let count = |s: WindowState| ws.iter().filter(|w| w.state == s).count();
    let rows_pending = counts
        .iter()
        .filter(|(w, _)| {
            ws.iter()
                .any(|x| x.window == *w && x.state == WindowState::Pending)
        })
        .map(|(_, n)| n)
        .sum();
    let latest = ws
        .iter()
        .filter(|w| w.state == WindowState::Archived)
        .map(|w| w.window.end)
        .max();
    Ok(TableStatus {
        source: t.source_name(),
        iceberg_table: t.iceberg_name(),
        table_exists: table.is_some(),
        partition_by: t.partition_by.name().to_string(),
        cutoff: rfc3339(cutoff),
        windows_archived: count(WindowState::Archived),
        windows_kept: count(WindowState::Kept),
        windows_pending: count(WindowState::Pending),
        windows_failed: count(WindowState::Failed),
        batches: facts.batches.len(),
        rows_archived: facts.batches.iter().map(|b| b.rows).sum(),
        rows_pending,
        rows_recent: left.recent,
        rows_null_time: left.null_time,
        rows_infinite_time: left.infinite_time,
        latest_window: latest.map(rfc3339),
        failed_batches: facts
            .batches
            .iter()
            .filter(|b| states.get(&b.batch_id) == Some(&BatchState::Failed))
            .map(|b| FailedBatch {
                batch_id: b.batch_id.clone(),
                window_start: rfc3339(b.range.start),
                window_end: rfc3339(b.range.end),
                reason: facts.failed.get(&b.batch_id).cloned().unwrap_or_default(),
            })
            .collect(),
        unsettled_batches: facts
            .batches
            .iter()
            .filter(|b| states.get(&b.batch_id) == Some(&BatchState::Unsettled))
            .map(|b| b.batch_id.clone())
            .collect(),
        batches_of_other_history: facts.of_other_history(),
        pg_history: facts.pg_history,
        shape,
        maintain_would,
    })
}
