//! `list`: one line per window — partition path, rows, files and bytes in the
//! archive, the snapshot that last added to it, and its state — derived from
//! the table's manifests, its ledger and Postgres.

use std::collections::{BTreeMap, BTreeSet};

use iceberg::spec::{Literal, PrimitiveLiteral};
use serde::Serialize;

use crate::config::Config;
use crate::error::Result;
use crate::lake;
use crate::lake::table::TableState;
use crate::plan::window::{Micros, Window, partition_path, rfc3339};
use crate::plan::{self, WindowState};
use crate::source::{self, windows};

/// One window.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "query", derive(utoipa::ToSchema))]
pub struct WindowLine {
    pub table: String,
    pub partition: String,
    pub window_start: String,
    pub window_end: String,
    /// `archived`, `kept`, `pending` or `failed`.
    pub state: WindowState,
    /// Rows in the archive (current snapshot): what its data files hold.
    pub rows: u64,
    /// Row-level delete files (another engine's merge-on-read `DELETE` or
    /// `UPDATE`) apply to the window's files: `rows` counts them before
    /// those deletes (scans, `fetch` and `restore` apply them).
    pub row_deletes: bool,
    pub files: u64,
    pub bytes: u64,
    /// Rows still in Postgres.
    pub rows_in_postgres: u64,
    /// The last snapshot that added files to this window.
    pub snapshot_id: Option<i64>,
    pub archived_at: Option<String>,
}

/// Filters of `list`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub table: Option<String>,
    pub from: Option<Micros>,
    pub to: Option<Micros>,
    pub state: Option<WindowState>,
}

/// Every window of the selected tables, oldest first.
pub async fn list(cfg: &Config, f: &ListFilter, now: Option<Micros>) -> Result<Vec<WindowLine>> {
    let catalog = lake::open_catalog(&cfg.catalog).await?;
    list_in(cfg, catalog.iceberg(), f, now).await
}

/// [`list`] through an open catalog.
pub async fn list_in(
    cfg: &Config,
    catalog: &dyn iceberg::Catalog,
    f: &ListFilter,
    now: Option<Micros>,
) -> Result<Vec<WindowLine>> {
    let tables = cfg.select_tables(f.table.as_deref())?;
    let client = source::connect(&cfg.database).await?;
    let (_, server_now) = source::server_facts(&client).await?;
    let now = now.unwrap_or(server_now);
    let mut out = Vec::new();
    for t in &tables {
        let src = source::introspect::introspect(&client, t).await?;
        let g = t.partition_by;
        let cutoff = windows::cutoff(g, now, t.lag);
        let counts = windows::window_counts(&client, &src, g, cutoff).await?;
        let table = match lake::table::inspect_table(catalog, t, &src).await? {
            TableState::Missing => None,
            TableState::Ready(at) => Some(at.table),
            TableState::Evolves { table, .. } => Some(*table),
        };
        let mut facts = crate::archive::facts::without_archive(
            &src,
            t,
            counts.iter().map(|(w, _)| *w).collect(),
            Window::up_to(cutoff),
        );
        // Per window: rows, files, bytes, last snapshot (from the live manifests).
        let mut stats: BTreeMap<Micros, (u64, u64, u64, i64, i64)> = BTreeMap::new();
        let mut with_deletes = BTreeSet::new();
        if let Some(table) = &table {
            let deleted = lake::readback::deleted_from(table).await?;
            crate::archive::facts::add_ledger(&mut facts, &client, table).await?;
            let seq_of: BTreeMap<i64, i64> = crate::ledger::read::ancestry(table)
                .iter()
                .map(|s| (s.snapshot_id(), s.sequence_number()))
                .collect();
            for file in lake::readback::live_files(table).await? {
                let Some(Some(Literal::Primitive(PrimitiveLiteral::Int(n)))) =
                    file.partition.first()
                else {
                    continue;
                };
                let w = g.window(*n as i64);
                if deleted.contains_key(&file.path) {
                    with_deletes.insert(w.start);
                }
                let e = stats.entry(w.start).or_insert((0, 0, 0, 0, 0));
                e.0 += file.records;
                e.1 += 1;
                e.2 += file.size;
                if let Some(&seq) = file.snapshot_id.and_then(|id| seq_of.get(&id))
                    && seq >= e.4
                {
                    e.3 = file.snapshot_id.unwrap_or(0);
                    e.4 = seq;
                }
            }
        }
        let pg_rows: BTreeMap<Micros, u64> = counts.iter().map(|(w, n)| (w.start, *n)).collect();
        let snap_time: BTreeMap<i64, i64> = table
            .as_ref()
            .map(|t| {
                crate::ledger::read::ancestry(t)
                    .iter()
                    .map(|s| (s.snapshot_id(), s.timestamp_ms()))
                    .collect()
            })
            .unwrap_or_default();
        for ws in plan::window_states(&facts) {
            let w: Window = ws.window;
            if f.from.is_some_and(|x| w.start < x)
                || f.to.is_some_and(|x| w.start >= x)
                || f.state.is_some_and(|s| s != ws.state)
            {
                continue;
            }
            let st = stats.get(&w.start).copied();
            let snapshot_id = st.map(|s| s.3).filter(|id| *id != 0);
            out.push(WindowLine {
                table: t.source_name(),
                partition: partition_path(
                    &format!("{}_{}", src.time_column().name, g.name()),
                    g,
                    &w,
                ),
                window_start: rfc3339(w.start),
                window_end: rfc3339(w.end),
                state: ws.state,
                rows: st.map(|s| s.0).unwrap_or(0),
                row_deletes: with_deletes.contains(&w.start),
                files: st.map(|s| s.1).unwrap_or(0),
                bytes: st.map(|s| s.2).unwrap_or(0),
                rows_in_postgres: pg_rows.get(&w.start).copied().unwrap_or(0),
                snapshot_id,
                archived_at: snapshot_id
                    .and_then(|id| snap_time.get(&id))
                    .map(|ms| rfc3339(ms * 1000)),
            });
        }
    }
    Ok(out)
}
