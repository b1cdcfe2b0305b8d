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
//! Pure: parsing, rendering and the rewrite rule; reading is in
//! [`super::read`], the rewrite on commit in `lake::commit`.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::{BatchMode, BatchRecord};
use crate::plan::window::Window;

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

/// A contiguous range of settled batches merged by the monthly roll-up:
/// range (µs), rows, highest sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub start: i64,
    pub end: i64,
    pub rows: u64,
    pub seq: u32,
}

/// One batch as the property records it (short keys: it is rewritten on
/// every commit) — or, with `runs`, a month of settled batches whose
/// snapshots were expired, rolled up.
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
    /// The Postgres history of `xid` ([`BatchRecord::pg_history`]).
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    pub hist: Option<String>,
    pub rows: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rec: Vec<String>,
    /// Checksum, kept while the batch is not known to be settled.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sum: String,
    /// Files added, kept while the batch is not known to be settled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<LedgerFile>,
    /// A roll-up: the runs it merged (then `id` is `rollup-YYYY-MM`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<Run>,
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
            hist: rec.pg_history.clone(),
            rows: rec.rows,
            rec: rec.reconciles.clone(),
            sum: rec.checksum.clone(),
            files,
            runs: vec![],
        }
    }

    /// The batch records of this entry: itself, or one per run of a roll-up
    /// (`rollup-YYYY-MM.k`, settled).
    pub fn records(&self) -> Vec<BatchRecord> {
        if self.runs.is_empty() {
            return vec![self.record()];
        }
        self.runs
            .iter()
            .enumerate()
            .map(|(k, r)| BatchRecord {
                batch_id: format!("{}.{k}", self.id),
                range: Window {
                    start: r.start,
                    end: r.end,
                },
                sequence: r.seq,
                rows: r.rows,
                rolled_up: true,
                ..self.record()
            })
            .collect()
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
            pg_history: self.hist.clone(),
            reconciles: self.rec.clone(),
            rows: self.rows,
            checksum: self.sum.clone(),
            rolled_up: false,
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
        .flat_map(|e| e.records().into_iter().map(|r| (r, e.files.clone())))
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
///
/// Settled batches whose snapshots are no longer in the ancestry
/// (`in_history` lists those that are) are rolled up per calendar month of
/// their start into one entry of contiguous runs: the ledger then grows with
/// months, not batches, once snapshots are expired.  A batch still in the
/// ancestry, or open, stays on its own.
pub fn next(
    known: &[(BatchRecord, Vec<LedgerFile>)],
    others: &[LedgerEntry],
    source: &str,
    settled: &HashSet<String>,
    in_history: &HashSet<String>,
    new: LedgerEntry,
) -> Vec<LedgerEntry> {
    let mut out: Vec<LedgerEntry> = others.iter().filter(|e| e.src != source).cloned().collect();
    let mut months: std::collections::BTreeMap<String, LedgerEntry> = Default::default();
    for (b, files) in known {
        let settled_now = b.rolled_up || settled.contains(&b.batch_id);
        if settled_now && !in_history.contains(&b.batch_id) {
            let month = month_of(b.range.start);
            let e = months.entry(month.clone()).or_insert_with(|| LedgerEntry {
                id: format!("rollup-{month}"),
                src: source.to_string(),
                snap: None,
                at: b.committed_at_ms,
                start: b.range.start,
                end: b.range.end,
                seq: 0,
                mode: BatchMode::Move,
                xid: None,
                hist: None,
                rows: 0,
                rec: vec![],
                sum: String::new(),
                files: vec![],
                runs: vec![],
            });
            add_run(
                e,
                Run {
                    start: b.range.start,
                    end: b.range.end,
                    rows: b.rows,
                    seq: b.sequence,
                },
            );
            e.at = e.at.max(b.committed_at_ms);
            continue;
        }
        let mut e = LedgerEntry::of(b, source, files.clone());
        if settled_now {
            e.sum.clear();
            e.files.clear();
        }
        out.push(e);
    }
    out.extend(months.into_values());
    out.sort_by_key(|e| e.at);
    out.push(new);
    out
}

/// `YYYY-MM` of an instant (µs), UTC.
fn month_of(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m").to_string())
        .unwrap_or_else(|| "out-of-range".into())
}

/// Adds `run` to a roll-up, merging runs that touch or overlap.
fn add_run(e: &mut LedgerEntry, run: Run) {
    e.runs.push(run);
    e.runs.sort_by_key(|r| (r.start, r.end));
    let mut merged: Vec<Run> = Vec::with_capacity(e.runs.len());
    for r in e.runs.drain(..) {
        match merged.last_mut() {
            Some(m) if r.start <= m.end => {
                m.end = m.end.max(r.end);
                m.rows += r.rows;
                m.seq = m.seq.max(r.seq);
            }
            _ => merged.push(r),
        }
    }
    e.runs = merged;
    e.start = e.runs.first().map_or(e.start, |r| r.start);
    e.end = e.runs.last().map_or(e.end, |r| r.end);
    e.rows = e.runs.iter().map(|r| r.rows).sum();
    e.seq = e.runs.iter().map(|r| r.seq).max().unwrap_or(0);
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
            pg_history: None,
            reconciles: vec![],
            rows: 3,
            checksum: "abc".into(),
            rolled_up: false,
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
        let in_history = HashSet::from(["a".to_string(), "b".to_string()]);
        let out = next(&known, &others, "s", &settled, &in_history, new);
        let ids: Vec<&str> = out.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["x", "a", "b", "c"]);
        assert!(out[1].files.is_empty() && out[1].sum.is_empty());
        assert_eq!(out[2].files, file());
        assert_eq!(out[3].snap, None);
    }

    #[test]
    fn expired_settled_batches_roll_up_per_month() {
        const HOUR: i64 = 3_600_000_000;
        let jan = 1_704_067_200_000_000; // 2024-01-01
        let feb = 1_706_745_600_000_000; // 2024-02-01
        let batch = |id: &str, start: i64, seq: u32| BatchRecord {
            range: Window {
                start,
                end: start + HOUR,
            },
            sequence: seq,
            committed_at_ms: start / 1000,
            ..rec(id, 0, 0, BatchMode::Move)
        };
        let known = vec![
            (batch("j1", jan, 1), vec![]),
            (batch("j2", jan + HOUR, 1), vec![]),
            (batch("j2b", jan + HOUR, 2), vec![]),
            (batch("j4", jan + 3 * HOUR, 1), vec![]),
            (batch("open", jan + 5 * HOUR, 1), file()),
            (batch("f1", feb, 1), vec![]),
            (batch("kept", feb + HOUR, 1), vec![]),
        ];
        let settled: HashSet<String> = ["j1", "j2", "j2b", "j4", "f1", "kept"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let in_history = HashSet::from(["kept".to_string()]);
        let new = LedgerEntry::of(&batch("new", feb + 2 * HOUR, 1), "s", file());
        let out = next(&known, &[], "s", &settled, &in_history, new);
        let ids: Vec<&str> = out.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(
            ids,
            ["rollup-2024-01", "open", "rollup-2024-02", "kept", "new"]
        );
        let jan_runs = &out[0].runs;
        assert_eq!(jan_runs.len(), 2, "a gap splits the runs: {jan_runs:?}");
        assert_eq!(
            (
                jan_runs[0].start,
                jan_runs[0].end,
                jan_runs[0].rows,
                jan_runs[0].seq
            ),
            (jan, jan + 2 * HOUR, 9, 2)
        );
        assert_eq!(out[0].rows, 12);
        // Read back: settled records with the ranges, the open batch intact.
        let text = render(&out);
        let merged = merge(
            vec![batch("kept", feb + HOUR, 1)],
            &parse(&text).expect("parse"),
            "s",
        );
        let recs: Vec<&BatchRecord> = merged.iter().map(|(b, _)| b).collect();
        assert_eq!(recs.len(), 6, "{recs:?}");
        assert!(recs.iter().filter(|b| b.rolled_up).count() == 3);
        let open = merged
            .iter()
            .find(|(b, _)| b.batch_id == "open")
            .expect("open");
        assert_eq!(open.1, file());
        assert!(!open.0.rolled_up);
    }
}
