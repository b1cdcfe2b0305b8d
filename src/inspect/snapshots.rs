//! `snapshots` (every snapshot with its permafrost properties) and `diff`
//! (what changed between two snapshots).

use std::collections::BTreeMap;

use iceberg::spec::SnapshotRef;
use iceberg::table::Table;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::lake;
use crate::ledger::keys;
use crate::plan::window::rfc3339;

/// One snapshot, as `snapshots --json` prints it (newest first).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "query", derive(utoipa::ToSchema))]
pub struct SnapshotInfo {
    pub snapshot_id: i64,
    pub parent_id: Option<i64>,
    pub sequence_number: i64,
    /// RFC 3339, UTC, millisecond precision.
    pub committed_at: String,
    pub operation: String,
    pub schema_id: Option<i32>,
    /// The permafrost batch, or null for other writers' snapshots.
    pub batch_id: Option<String>,
    pub window_start: Option<String>,
    pub window_end: Option<String>,
    /// Rows added (`added-records`).
    pub rows: Option<u64>,
    /// Data files added (`added-data-files`).
    pub files: Option<u64>,
    /// Bytes added (`added-files-size`).
    pub bytes: Option<u64>,
    /// Rows in the table after this snapshot (`total-records`).
    pub total_rows: Option<u64>,
    /// Every `permafrost.*` summary property.
    pub properties: BTreeMap<String, String>,
}

fn num(props: &std::collections::HashMap<String, String>, k: &str) -> Option<u64> {
    props.get(k).and_then(|v| v.parse().ok())
}

/// Describes one snapshot.
pub fn describe(s: &SnapshotRef) -> SnapshotInfo {
    let p = &s.summary().additional_properties;
    let committed = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(s.timestamp_ms())
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default();
    SnapshotInfo {
        snapshot_id: s.snapshot_id(),
        parent_id: s.parent_snapshot_id(),
        sequence_number: s.sequence_number(),
        committed_at: committed,
        operation: s.summary().operation.as_str().to_string(),
        schema_id: s.schema_id(),
        batch_id: p.get(keys::BATCH_ID).cloned(),
        window_start: p.get(keys::WINDOW_START).cloned(),
        window_end: p.get(keys::WINDOW_END).cloned(),
        rows: num(p, "added-records"),
        files: num(p, "added-data-files"),
        bytes: num(p, "added-files-size"),
        total_rows: num(p, "total-records"),
        properties: p
            .iter()
            .filter(|(k, _)| k.starts_with("permafrost."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// Every snapshot of the table's current history, newest first.
pub fn snapshots(table: &Table) -> Vec<SnapshotInfo> {
    crate::ledger::read::ancestry(table)
        .iter()
        .rev()
        .map(describe)
        .collect()
}

/// What changed from snapshot `from` (exclusive) to `to` (inclusive).
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub from_snapshot: i64,
    pub to_snapshot: i64,
    /// The snapshots in between, oldest first.
    pub snapshots: Vec<SnapshotInfo>,
    /// Windows that gained rows: `[start, end)` → rows added.
    pub windows: Vec<DiffWindow>,
    pub files: Vec<DiffFile>,
    pub rows_added: u64,
    pub files_added: usize,
    pub bytes_added: u64,
}

/// A window that gained rows between two snapshots.
#[derive(Debug, Clone, Serialize)]
pub struct DiffWindow {
    pub window_start: String,
    pub window_end: String,
    pub rows: u64,
    pub batches: Vec<String>,
}

/// A data file added between two snapshots.
#[derive(Debug, Clone, Serialize)]
pub struct DiffFile {
    pub snapshot_id: i64,
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

/// The diff between two snapshots of the table's history; `from` must be an
/// ancestor of `to`.
pub async fn diff(table: &Table, from: i64, to: i64) -> Result<Diff> {
    let history = crate::ledger::read::ancestry(table);
    let pos = |id: i64| history.iter().position(|s| s.snapshot_id() == id);
    let (Some(a), Some(b)) = (pos(from), pos(to)) else {
        return Err(Error::new(
            ErrorKind::Catalog,
            format!(
                "snapshots {from} and {to} must both be in the current history of {}",
                table.identifier()
            ),
        )
        .with_hint("`permafrost snapshots` lists them"));
    };
    if a > b {
        return Err(Error::config(format!("snapshot {from} is newer than {to}"))
            .with_hint("swap --from-snapshot and --to-snapshot"));
    }
    let between: Vec<SnapshotRef> = history[a + 1..=b].to_vec();
    let mut windows: BTreeMap<(String, String), (u64, Vec<String>)> = BTreeMap::new();
    let mut files = Vec::new();
    for s in &between {
        let info = describe(s);
        if let (Some(ws), Some(we)) = (&info.window_start, &info.window_end) {
            let e = windows.entry((ws.clone(), we.clone())).or_default();
            e.0 += info.rows.unwrap_or(0);
            e.1.extend(info.batch_id.clone());
        }
        for f in lake::readback::added_files(table, s).await? {
            files.push(DiffFile {
                snapshot_id: s.snapshot_id(),
                path: f.path,
                rows: f.records,
                bytes: f.size,
            });
        }
    }
    Ok(Diff {
        from_snapshot: from,
        to_snapshot: to,
        rows_added: files.iter().map(|f| f.rows).sum(),
        files_added: files.len(),
        bytes_added: files.iter().map(|f| f.bytes).sum(),
        snapshots: between.iter().map(describe).collect(),
        windows: windows
            .into_iter()
            .map(|((s, e), (rows, batches))| DiffWindow {
                window_start: s,
                window_end: e,
                rows,
                batches,
            })
            .collect(),
        files,
    })
}

/// `2024-01-15T00:00:00Z` for a snapshot's commit time.
pub fn committed_at(s: &SnapshotRef) -> String {
    rfc3339(s.timestamp_ms() * 1000)
}
