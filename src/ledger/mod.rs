//! The archive's on-disk format, in one place: the `permafrost.*` keys of
//! snapshot summaries and table properties, a batch's record (written to and
//! read from its snapshot summary), the durable ledger property
//! ([`durable`]) and reading all of it back from a table ([`read`]).
//!
//! Every batch is one Iceberg snapshot whose summary carries a
//! [`BatchRecord`]; other engines and people read these keys, so they never
//! change meaning.  Writers build the summary with
//! [`BatchRecord::to_summary`]; readers parse it with
//! [`BatchRecord::from_summary`]: there is no third copy of the format.

pub mod durable;
pub mod read;

use std::collections::HashMap;

use serde::Serialize;

use crate::plan::window::{Granularity, Micros, Window, parse_instant, rfc3339};

/// Table property keys.
pub mod props {
    pub const SOURCE: &str = "permafrost.source";
    pub const TIME_COLUMN: &str = "permafrost.time-column";
    pub const PARTITION_BY: &str = "permafrost.partition-by";
    /// JSON array of `{name, type, not_null}`, in table order.
    pub const PG_COLUMNS: &str = "permafrost.pg-columns";
    /// JSON array of primary key column names.
    pub const PG_PRIMARY_KEY: &str = "permafrost.pg-primary-key";
    pub const VERSION: &str = "permafrost.version";
}

/// Snapshot summary keys written by permafrost.
pub mod keys {
    pub const BATCH_ID: &str = "permafrost.batch-id";
    pub const SOURCE: &str = "permafrost.source";
    pub const WINDOW_START: &str = "permafrost.window-start";
    pub const WINDOW_END: &str = "permafrost.window-end";
    pub const SEQUENCE: &str = "permafrost.sequence";
    pub const ROWS: &str = "permafrost.rows";
    pub const CHECKSUM: &str = "permafrost.checksum";
    pub const MODE: &str = "permafrost.mode";
    pub const PG_XID: &str = "permafrost.pg-xid";
    /// The Postgres history that transaction id belongs to:
    /// `<system identifier>/<timeline>` of the cluster the run started on.
    pub const PG_HISTORY: &str = "permafrost.pg-history";
    pub const RECONCILES: &str = "permafrost.reconciles";
    pub const RECONCILED_ROWS: &str = "permafrost.reconciled-rows";
    pub const WINDOWS: &str = "permafrost.windows";
    pub const PARTITION_BY: &str = "permafrost.partition-by";
    pub const VERSION: &str = "permafrost.version";
    /// Table property prefix marking a batch that failed verification.
    pub const FAILED_PREFIX: &str = "permafrost.failed.";
    /// Table property holding the durable ledger ([`super::durable`]).
    pub const LEDGER: &str = "permafrost.ledger";
}

/// How a batch treated the source rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchMode {
    /// Rows were deleted in the same Postgres transaction that streamed them.
    Move,
    /// Rows were only copied (`--no-delete`).
    Copy,
}

impl BatchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Move => "move",
            Self::Copy => "copy",
        }
    }
}

/// One committed batch, as recorded in its snapshot summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchRecord {
    pub batch_id: String,
    pub snapshot_id: i64,
    /// Commit time of the snapshot, milliseconds since the epoch.
    pub committed_at_ms: i64,
    #[serde(skip)]
    pub range: Window,
    pub sequence: u32,
    pub mode: BatchMode,
    pub xid: Option<u64>,
    /// The Postgres history `xid` belongs to (`<system identifier>/<timeline>`),
    /// when it could be read: an id of another history (a restore to an
    /// earlier point, a failover that lost commits, another cluster) may have
    /// been reused since.
    pub pg_history: Option<String>,
    pub reconciles: Vec<String>,
    pub rows: u64,
    pub checksum: String,
    /// Part of a month of settled batches the durable ledger merged into one
    /// run (their snapshots expired): settled by definition.
    pub rolled_up: bool,
}

impl BatchRecord {
    /// Read from the durable ledger (its snapshot expired), which recorded it
    /// settled: the ledger keeps a batch's checksum only while the batch is
    /// not known settled, and a summary always carries one.  Settled,
    /// whatever Postgres remembers of its transaction since (rows a restore
    /// brings back are recognised apart).
    pub fn recorded_settled(&self) -> bool {
        self.checksum.is_empty()
    }

    /// Reads a batch from a snapshot summary; `None` when the snapshot is not a
    /// permafrost batch of `source` (other writers may append to the table too).
    pub fn from_summary(
        source: &str,
        snapshot_id: i64,
        committed_at_ms: i64,
        props: &HashMap<String, String>,
    ) -> Option<Result<Self, String>> {
        let batch_id = props.get(keys::BATCH_ID)?;
        if props.get(keys::SOURCE).map(String::as_str) != Some(source) {
            return None;
        }
        Some(Self::parse(batch_id, snapshot_id, committed_at_ms, props))
    }

    fn parse(
        batch_id: &str,
        snapshot_id: i64,
        committed_at_ms: i64,
        props: &HashMap<String, String>,
    ) -> Result<Self, String> {
        let get = |k: &str| {
            props
                .get(k)
                .ok_or_else(|| format!("snapshot {snapshot_id}: `{k}` missing"))
        };
        let instant = |k: &str| -> Result<Micros, String> {
            parse_instant(get(k)?)
                .ok_or_else(|| format!("snapshot {snapshot_id}: `{k}` is not a timestamp"))
        };
        let num = |k: &str| -> Result<u64, String> {
            get(k)?
                .parse()
                .map_err(|_| format!("snapshot {snapshot_id}: `{k}` is not a number"))
        };
        let mode = match get(keys::MODE)?.as_str() {
            "move" => BatchMode::Move,
            "copy" => BatchMode::Copy,
            m => return Err(format!("snapshot {snapshot_id}: unknown mode `{m}`")),
        };
        let xid = match props.get(keys::PG_XID) {
            Some(x) => Some(
                x.parse()
                    .map_err(|_| format!("snapshot {snapshot_id}: bad `{}`", keys::PG_XID))?,
            ),
            None => None,
        };
        let reconciles = props
            .get(keys::RECONCILES)
            .map(|s| {
                s.split(',')
                    .filter(|x| !x.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            batch_id: batch_id.to_string(),
            snapshot_id,
            committed_at_ms,
            range: Window {
                start: instant(keys::WINDOW_START)?,
                end: instant(keys::WINDOW_END)?,
            },
            sequence: num(keys::SEQUENCE)? as u32,
            mode,
            xid,
            pg_history: props.get(keys::PG_HISTORY).cloned(),
            reconciles,
            rows: num(keys::ROWS)?,
            checksum: get(keys::CHECKSUM)?.clone(),
            rolled_up: false,
        })
    }
}

/// What a batch's summary carries beyond its [`BatchRecord`]: facts for
/// people and other engines, not read back by the planner.
#[derive(Debug, Clone, Copy)]
pub struct SummaryExtra {
    /// Windows of the range that held rows when the batch was planned.
    pub windows: usize,
    pub partition_by: Granularity,
    /// Rows removed from Postgres that open batches had already archived.
    pub reconciled_rows: u64,
}

impl BatchRecord {
    /// The snapshot summary of this batch of `source` (the inverse of
    /// [`BatchRecord::from_summary`]; snapshot id and commit time are the
    /// catalog's).
    pub fn to_summary(&self, source: &str, extra: SummaryExtra) -> HashMap<String, String> {
        let mut s = HashMap::new();
        let mut put = |k: &str, v: String| s.insert(k.to_string(), v);
        put(keys::BATCH_ID, self.batch_id.clone());
        put(keys::SOURCE, source.to_string());
        put(keys::WINDOW_START, rfc3339(self.range.start));
        put(keys::WINDOW_END, rfc3339(self.range.end));
        put(keys::SEQUENCE, self.sequence.to_string());
        put(keys::ROWS, self.rows.to_string());
        put(keys::CHECKSUM, self.checksum.clone());
        put(keys::MODE, self.mode.as_str().to_string());
        put(keys::WINDOWS, extra.windows.to_string());
        put(keys::PARTITION_BY, extra.partition_by.name().to_string());
        put(keys::VERSION, crate::VERSION.to_string());
        if let Some(x) = self.xid {
            put(keys::PG_XID, x.to_string());
        }
        if let Some(h) = &self.pg_history {
            put(keys::PG_HISTORY, h.clone());
        }
        if !self.reconciles.is_empty() {
            put(keys::RECONCILES, self.reconciles.join(","));
            put(keys::RECONCILED_ROWS, extra.reconciled_rows.to_string());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_roundtrip() {
        let mut props = HashMap::new();
        props.insert(keys::BATCH_ID.to_string(), "abc".to_string());
        props.insert(keys::SOURCE.to_string(), "db.public.t".to_string());
        props.insert(
            keys::WINDOW_START.to_string(),
            "2024-01-01T00:00:00Z".to_string(),
        );
        props.insert(
            keys::WINDOW_END.to_string(),
            "2024-01-02T00:00:00Z".to_string(),
        );
        props.insert(keys::SEQUENCE.to_string(), "2".to_string());
        props.insert(keys::MODE.to_string(), "move".to_string());
        props.insert(keys::PG_XID.to_string(), "12345".to_string());
        props.insert(keys::RECONCILES.to_string(), "x,y".to_string());
        props.insert(keys::ROWS.to_string(), "10".to_string());
        props.insert(keys::CHECKSUM.to_string(), "ff".to_string());
        let r = BatchRecord::from_summary("db.public.t", 5, 6, &props)
            .unwrap()
            .unwrap();
        assert_eq!(
            r.range.start,
            parse_instant("2024-01-01T00:00:00Z").unwrap()
        );
        assert_eq!(r.xid, Some(12345));
        assert_eq!(r.reconciles, vec!["x".to_string(), "y".to_string()]);
        assert!(BatchRecord::from_summary("db.public.other", 5, 6, &props).is_none());
        props.remove(keys::ROWS);
        assert!(
            BatchRecord::from_summary("db.public.t", 5, 6, &props)
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn to_summary_is_read_back_as_written() {
        let rec = BatchRecord {
            batch_id: "b1".into(),
            snapshot_id: 7,
            committed_at_ms: 8,
            range: Window {
                start: parse_instant("2024-01-01T00:00:00Z").unwrap(),
                end: parse_instant("2024-01-03T00:00:00Z").unwrap(),
            },
            sequence: 3,
            mode: BatchMode::Move,
            xid: Some(99),
            pg_history: Some("7715644837876145257/2".into()),
            reconciles: vec!["a".into(), "b".into()],
            rows: 12,
            checksum: "00ff".into(),
            rolled_up: false,
        };
        let extra = SummaryExtra {
            windows: 2,
            partition_by: Granularity::Day,
            reconciled_rows: 4,
        };
        let summary = rec.to_summary("db.s.t", extra);
        assert_eq!(summary[keys::RECONCILED_ROWS], "4");
        assert_eq!(summary[keys::PARTITION_BY], "day");
        assert_eq!(
            BatchRecord::from_summary("db.s.t", 7, 8, &summary),
            Some(Ok(rec))
        );
    }
}
