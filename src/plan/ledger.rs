//! The durable ledger: every batch of a table, carried forward in one table
//! property (`permafrost.ledger`) that snapshot expiry does not remove.
//!
//! Snapshot summaries stay the primary record (engines and people read them),
//! but expiring snapshots — routine maintenance, automatic on S3 Tables and
//! Glue — would take the batches' history with them.  So every batch commit
//! also rewrites this property, in the same catalog commit as the snapshot
//! (one Iceberg transaction: both land or neither):
//! - every batch keeps its id, source, range, sequence, mode, Postgres
//!   transaction id, rows and what it reconciles — all the planner, `status`
//!   and `list` need;
//! - a batch that is not known to be settled also keeps its checksum and the
//!   data files it added, so its rows can be read (to reconcile them) after
//!   its snapshot is gone; once settled, those are dropped.
//!
//! Reading merges both: a batch whose snapshot is in the current ancestry is
//! read from its summary; one whose snapshot was expired from this property.
//! Pure: parsing, rendering and the rewrite rule; the table I/O is in
//! `lake::commit`.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::window::Window;
use super::{BatchMode, BatchRecord};

/// Format version of the property.
const VERSION: u32 = 1;

/// A data file a batch added: path, size in bytes, rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerFile {
    #[serde(rename = "p")]
    pub path: String,
    #[serde(rename = "s")]
    pub size: u64,
    #[serde(rename = "n")]
    pub records: u64,
}

/// One batch as the property records it (short keys: it is rewritten on
/// every commit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub id: String,
    pub src: String,
    /// The batch's snapshot; unknown (absent) in the commit that adds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snap: Option<i64>,
    /// Commit time, ms since the epoch.
    pub at: i64,
    /// Range, µs since the epoch.
    pub start: i64,
    pub end: i64,
    pub seq: u32,
    pub mode: BatchMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xid: Option<u64>,
    pub rows: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rec: Vec<String>,
    /// Checksum, kept while the batch is not known to be settled.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sum: String,
    /// Files added, kept while the batch is not known to be settled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<LedgerFile>,
}

#[derive(Serialize, Deserialize)]
struct Doc {
    v: u32,
    batches: Vec<LedgerEntry>,
}

impl LedgerEntry {
    /// The entry of `rec` (read from a snapshot summary), with its files.
    pub fn of(rec: &BatchRecord, src: &str, files: Vec<LedgerFile>) -> Self {
        Self {
            id: rec.batch_id.clone(),
            src: src.to_string(),
            snap: (rec.snapshot_id != 0).then_some(rec.snapshot_id),
            at: rec.committed_at_ms,
            start: rec.range.start,
            end: rec.range.end,
            seq: rec.sequence,
            mode: rec.mode,
            xid: rec.xid,
            rows: rec.rows,
            rec: rec.reconciles.clone(),
            sum: rec.checksum.clone(),
            files,
        }
    }

    /// The batch record (`snapshot_id` 0 when the snapshot is unknown).
    pub fn record(&self) -> BatchRecord {
        BatchRecord {
            batch_id: self.id.clone(),
            snapshot_id: self.snap.unwrap_or(0),
            committed_at_ms: self.at,
            range: Window {
                start: self.start,
                end: self.end,
            },
            sequence: self.seq,
            mode: self.mode,
            xid: self.xid,
            reconciles: self.rec.clone(),
            rows: self.rows,
            checksum: self.sum.clone(),
        }
    }
}

/// Parses the property; an unknown version or damaged text is an error
/// (never read as "no batches").
pub fn parse(text: &str) -> Result<Vec<LedgerEntry>, String> {
    let doc: Doc =
        serde_json::from_str(text).map_err(|e| format!("the ledger property is damaged: {e}"))?;
    if doc.v != VERSION {
        return Err(format!(
            "the ledger property has format {}, this permafrost reads {VERSION}: upgrade permafrost",
            doc.v
        ));
    }
    Ok(doc.batches)
}

/// Renders entries as the property's value.
pub fn render(entries: &[LedgerEntry]) -> String {
    serde_json::to_string(&Doc {
        v: VERSION,
        batches: entries.to_vec(),
    })
    .unwrap_or_default()
}

/// Merges what the snapshots say (`from_snapshots`, in commit order,
/// authoritative) with the stored entries: stored entries of batches whose
/// snapshot is no longer in the ancestry are kept (expired), in the stored
/// order before the snapshot ones they precede.  Entries of other sources are
/// not returned.
pub fn merge(
    from_snapshots: Vec<BatchRecord>,
    stored: &[LedgerEntry],
    source: &str,
) -> Vec<(BatchRecord, Vec<LedgerFile>)> {
    let seen: HashSet<&str> = from_snapshots.iter().map(|b| b.batch_id.as_str()).collect();
    let mut out: Vec<(BatchRecord, Vec<LedgerFile>)> = stored
        .iter()
        .filter(|e| e.src == source && !seen.contains(e.id.as_str()))
        .map(|e| (e.record(), e.files.clone()))
        .collect();
    let files_of = |id: &str| {
        stored
            .iter()
            .find(|e| e.id == id)
            .map(|e| e.files.clone())
            .unwrap_or_default()
    };
    for b in from_snapshots {
        let files = files_of(&b.batch_id);
        out.push((b, files));
    }
    // Commit order: expired batches are older than every retained snapshot.
    out.sort_by_key(|(b, _)| b.committed_at_ms);
    out
}

/// The property after committing `new`: every known batch (`known`, from
/// [`merge`], plus other sources' stored entries), the new one last; batches
/// in `settled` keep neither checksum nor files.
pub fn next(
    known: &[(BatchRecord, Vec<LedgerFile>)],
    others: &[LedgerEntry],
    source: &str,
    settled: &HashSet<String>,
    new: LedgerEntry,
) -> Vec<LedgerEntry> {
    let mut out: Vec<LedgerEntry> = others.iter().filter(|e| e.src != source).cloned().collect();
    for (b, files) in known {
        let mut e = LedgerEntry::of(b, source, files.clone());
        if settled.contains(&b.batch_id) {
            e.sum.clear();
            e.files.clear();
        }
        out.push(e);
    }
    out.push(new);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, snap: i64, at: i64, mode: BatchMode) -> BatchRecord {
        BatchRecord {
            batch_id: id.into(),
            snapshot_id: snap,
            committed_at_ms: at,
            range: Window { start: 0, end: 10 },
            sequence: 1,
            mode,
            xid: Some(7),
            reconciles: vec![],
            rows: 3,
            checksum: "abc".into(),
        }
    }

    fn file() -> Vec<LedgerFile> {
        vec![LedgerFile {
            path: "s3://b/f.parquet".into(),
            size: 10,
            records: 3,
        }]
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let e = LedgerEntry::of(&rec("a", 5, 1, BatchMode::Copy), "s", file());
        let text = render(std::slice::from_ref(&e));
        assert_eq!(parse(&text).expect("parse"), vec![e.clone()]);
        assert_eq!(e.record(), rec("a", 5, 1, BatchMode::Copy));
        assert!(parse("{\"v\":2,\"batches\":[]}").is_err());
        assert!(parse("not json").is_err());
    }

    #[test]
    fn merge_keeps_expired_batches_in_commit_order() {
        let stored = vec![
            LedgerEntry::of(&rec("old", 1, 1, BatchMode::Copy), "s", file()),
            LedgerEntry::of(&rec("kept", 2, 2, BatchMode::Move), "s", vec![]),
            LedgerEntry::of(&rec("other", 3, 3, BatchMode::Move), "t", vec![]),
        ];
        let merged = merge(
            vec![
                rec("kept", 2, 2, BatchMode::Move),
                rec("new", 4, 4, BatchMode::Move),
            ],
            &stored,
            "s",
        );
        let ids: Vec<&str> = merged.iter().map(|(b, _)| b.batch_id.as_str()).collect();
        assert_eq!(ids, ["old", "kept", "new"]);
        assert_eq!(merged[0].1, file(), "an expired batch keeps its files");
    }

    #[test]
    fn settled_batches_drop_their_files_and_checksum() {
        let known = vec![
            (rec("a", 1, 1, BatchMode::Move), file()),
            (rec("b", 2, 2, BatchMode::Copy), file()),
        ];
        let settled = HashSet::from(["a".to_string()]);
        let new = LedgerEntry::of(&rec("c", 0, 3, BatchMode::Move), "s", file());
        let others = vec![LedgerEntry::of(
            &rec("x", 9, 0, BatchMode::Move),
            "t",
            vec![],
        )];
        let out = next(&known, &others, "s", &settled, new);
        let ids: Vec<&str> = out.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["x", "a", "b", "c"]);
        assert!(out[1].files.is_empty() && out[1].sum.is_empty());
        assert_eq!(out[2].files, file());
        assert_eq!(out[3].snap, None);
    }
}
