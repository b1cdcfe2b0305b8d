//! The decisions of one planned batch, pure.  [`crate::archive`] runs them
//! against Postgres and the catalog; the simulation (`sim.rs`) runs the same
//! functions against its model, so what it proves is what runs.
//!
//! A planned batch runs as one or more *parts* (`max_batch_rows` splits a
//! move batch); each part is one Postgres transaction and at most one
//! snapshot.  Per part: [`take`] (how rows leave Postgres) → stream, filter
//! out rows open batches already archived ([`keep_unarchived`]) and write →
//! [`settle`] (record a snapshot, or end the transaction without one) →
//! [`Part::next`].

use crate::bag::HashBag;
use crate::error::Result;
use crate::ledger::{BatchMode, BatchRecord};

use super::{PlannedBatch, batch_id};

/// How a part takes its rows out of Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// `SELECT`: a copy (`--no-delete`), or whole partitions that are
    /// dropped after verification instead of having their rows deleted.
    Select,
    /// `DELETE … RETURNING` of every row of the range.
    DeleteAll,
    /// `DELETE … RETURNING` of the range's first `n` rows by time.
    DeleteFirst(u64),
}

impl Take {
    /// Whether the range is certainly empty (as the part's transaction sees
    /// it) once the part's rows are gone; `None`: ask Postgres.  A `DELETE`
    /// of the whole range removes every row that existed when it started; a
    /// copy never has a next part.
    pub fn exhausted(self) -> Option<bool> {
        match self {
            Self::Select | Self::DeleteAll => Some(true),
            Self::DeleteFirst(_) => None,
        }
    }
}

/// Whether a copy may leave its range unread: the range holds exactly the
/// rows its open batches recorded (`rows_now`, counted before the batch
/// starts).  Rows that arrived late change the count, and the range is read
/// and filtered as usual; a row replaced by another in the same range (one
/// deleted, one inserted) does not, so a later copy does not see it, while
/// the next move reads every range row by row and archives it then.
/// Nothing leaves Postgres either way.
pub fn unchanged(planned: &PlannedBatch, rows_now: u64) -> bool {
    planned.copied_rows == Some(rows_now)
}

/// Rows per part: `max_batch_rows` applies to move batches only (a copy
/// holds no delete locks, so it has no reason to stay short).
pub fn row_limit(mode: BatchMode, max_batch_rows: Option<u64>) -> Option<u64> {
    match mode {
        BatchMode::Move => max_batch_rows,
        BatchMode::Copy => None,
    }
}

/// The most parts a batch may run: the rows the range holds when the batch
/// starts (`rows_now`), one more for rows updated meanwhile.  Rows that keep
/// arriving wait for the next run, so a run always ends.
pub fn max_parts(limit: Option<u64>, rows_now: u64) -> u64 {
    match limit {
        Some(n) => rows_now.div_ceil(n).max(1) + 1,
        None => 1,
    }
}

/// Whether whole partitions may be exported and dropped: a move of the whole
/// range, `drop_partitions` configured, and no row filter (a filter keeps
/// rows the drop would take).  The caller still checks that partitions tile
/// the range.
pub fn may_drop_partitions(
    mode: BatchMode,
    limit: Option<u64>,
    configured: bool,
    filtered: bool,
) -> bool {
    mode == BatchMode::Move && limit.is_none() && configured && !filtered
}

/// How the part's rows leave Postgres.
pub fn take(mode: BatchMode, limit: Option<u64>, drops_partitions: bool) -> Take {
    match (mode, limit) {
        (BatchMode::Copy, _) => Take::Select,
        (BatchMode::Move, None) if drops_partitions => Take::Select,
        (BatchMode::Move, None) => Take::DeleteAll,
        (BatchMode::Move, Some(n)) => Take::DeleteFirst(n),
    }
}

/// The keep mask of streamed rows: `false` for a row an open batch already
/// archived (taken out of `bag`, once per occurrence), `true` for a new row.
/// `None` without a bag: every row is new (the common case costs nothing).
/// Fails when a bag spilled to disk cannot be read.
pub fn keep_unarchived(bag: Option<&mut HashBag>, hashes: &[u128]) -> Result<Option<Vec<bool>>> {
    let Some(bag) = bag else {
        return Ok(None);
    };
    let mut keep = Vec::with_capacity(hashes.len());
    for h in hashes {
        keep.push(!bag.take(*h)?);
    }
    Ok(Some(keep))
}

/// What a part does once its rows are streamed and written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Commit a snapshot recording the part (it settles `settles` too),
    /// read it back, and only then commit the Postgres transaction.
    Record { settles: Vec<String> },
    /// Nothing to record: nothing was written and nothing is settled (the
    /// range is empty, or every row streamed is already archived in an open
    /// batch this part does not settle).  The transaction commits only when
    /// it deleted rows (then they are all archived already); partitions are
    /// dropped only when they held rows.
    Skip {
        commit_postgres: bool,
        drop_partitions: bool,
    },
}

/// Decides how a part ends.  Only the part that empties the range
/// (`exhausted`) settles the open batches the range covers whole (a part can
/// come back short while rows remain, when rows were updated or deleted
/// concurrently); a copy never settles anything.  When open batches are
/// settled, even an empty part is recorded, as a marker.
pub fn settle(
    planned: &PlannedBatch,
    mode: BatchMode,
    exhausted: bool,
    streamed: u64,
    written: u64,
    drops_partitions: bool,
) -> Settle {
    let settles = if mode == BatchMode::Move && exhausted {
        planned.settles.clone()
    } else {
        vec![]
    };
    if written == 0 && settles.is_empty() {
        Settle::Skip {
            commit_postgres: mode == BatchMode::Move && streamed > 0,
            drop_partitions: drops_partitions && streamed > 0,
        }
    } else {
        Settle::Record { settles }
    }
}

/// One part of a planned batch: its id and sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub batch_id: String,
    pub sequence: u32,
    /// 1 for the first part.
    pub number: u64,
}

impl Part {
    pub fn first(planned: &PlannedBatch) -> Self {
        Self {
            batch_id: planned.batch_id.clone(),
            sequence: planned.sequence,
            number: 1,
        }
    }

    /// The next part, if one should run: only split batches go on, until
    /// the range is empty or `max_parts` ran.
    pub fn next(
        &self,
        source: &str,
        planned: &PlannedBatch,
        limit: Option<u64>,
        exhausted: bool,
        max_parts: u64,
    ) -> Option<Self> {
        if limit.is_none() || exhausted || self.number >= max_parts {
            return None;
        }
        Some(Self {
            batch_id: batch_id(source, &planned.range, self.sequence + 1),
            sequence: self.sequence + 1,
            number: self.number + 1,
        })
    }

    /// The record a part's snapshot carries.
    pub fn record(
        &self,
        planned: &PlannedBatch,
        mode: BatchMode,
        xid: Option<u64>,
        settles: Vec<String>,
        rows: u64,
        checksum: String,
    ) -> BatchRecord {
        BatchRecord {
            batch_id: self.batch_id.clone(),
            snapshot_id: 0,
            committed_at_ms: 0,
            range: planned.range,
            sequence: self.sequence,
            mode,
            xid,
            pg_history: None,
            reconciles: settles,
            rows,
            checksum,
            rolled_up: false,
        }
    }
}

/// The batches a part settles once its Postgres transaction committed: a
/// move part itself and every open batch it lists; a copy none.
pub fn settled_by(rec: &BatchRecord) -> Vec<String> {
    match rec.mode {
        BatchMode::Move => std::iter::once(rec.batch_id.clone())
            .chain(rec.reconciles.iter().cloned())
            .collect(),
        BatchMode::Copy => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::window::{Window, parse_instant};

    fn planned(settles: &[&str]) -> PlannedBatch {
        let range = Window {
            start: parse_instant("2024-01-01T00:00:00Z").unwrap(),
            end: parse_instant("2024-01-02T00:00:00Z").unwrap(),
        };
        PlannedBatch {
            batch_id: batch_id("s", &range, 1),
            range,
            sequence: 1,
            windows: vec![range],
            reconcile: settles.iter().map(|s| s.to_string()).collect(),
            settles: settles.iter().map(|s| s.to_string()).collect(),
            restorable: vec![],
            copied_rows: None,
        }
    }

    #[test]
    fn copies_select_whole_ranges_and_moves_delete() {
        assert_eq!(row_limit(BatchMode::Copy, Some(5)), None);
        assert_eq!(take(BatchMode::Copy, None, false), Take::Select);
        assert_eq!(take(BatchMode::Move, None, true), Take::Select);
        assert_eq!(take(BatchMode::Move, None, false), Take::DeleteAll);
        assert_eq!(take(BatchMode::Move, Some(5), false), Take::DeleteFirst(5));
        assert_eq!(Take::DeleteFirst(5).exhausted(), None);
        assert!(!may_drop_partitions(BatchMode::Move, Some(5), true, false));
        assert!(!may_drop_partitions(BatchMode::Move, None, true, true));
        assert!(may_drop_partitions(BatchMode::Move, None, true, false));
        assert_eq!(max_parts(Some(10), 25), 4);
        assert_eq!(max_parts(Some(10), 0), 2);
        assert_eq!(max_parts(None, 25), 1);
    }

    #[test]
    fn only_the_emptying_move_part_settles_open_batches() {
        let p = planned(&["open1"]);
        let record = |settles: &[&str]| Settle::Record {
            settles: settles.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            settle(&p, BatchMode::Move, true, 3, 0, false),
            record(&["open1"])
        );
        assert_eq!(settle(&p, BatchMode::Move, false, 3, 2, false), record(&[]));
        assert_eq!(
            settle(&p, BatchMode::Move, false, 3, 0, true),
            Settle::Skip {
                commit_postgres: true,
                drop_partitions: true
            }
        );
        assert_eq!(
            settle(&p, BatchMode::Copy, true, 3, 0, false),
            Settle::Skip {
                commit_postgres: false,
                drop_partitions: false
            }
        );
        let empty = planned(&[]);
        assert_eq!(
            settle(&empty, BatchMode::Move, true, 0, 0, true),
            Settle::Skip {
                commit_postgres: false,
                drop_partitions: false
            }
        );
    }

    #[test]
    fn parts_go_on_until_the_range_is_empty_or_the_budget_is_spent() {
        let p = planned(&[]);
        let first = Part::first(&p);
        assert_eq!(first.batch_id, p.batch_id);
        assert_eq!(first.next("s", &p, None, false, 3), None);
        assert_eq!(first.next("s", &p, Some(5), true, 3), None);
        let second = first.next("s", &p, Some(5), false, 2).unwrap();
        assert_eq!(second.sequence, 2);
        assert_eq!(second.batch_id, batch_id("s", &p.range, 2));
        assert_eq!(second.next("s", &p, Some(5), false, 2), None);
        let rec = second.record(
            &p,
            BatchMode::Move,
            Some(7),
            vec!["o".into()],
            1,
            "c".into(),
        );
        assert_eq!(settled_by(&rec), vec![second.batch_id.clone(), "o".into()]);
    }

    #[test]
    fn rows_of_open_batches_are_filtered_once_per_occurrence() {
        let mut bag = HashBag::new(vec![1, 1, 2]);
        assert_eq!(
            keep_unarchived(Some(&mut bag), &[1, 1, 1, 2, 3]).unwrap(),
            Some(vec![false, false, true, false, true])
        );
        assert_eq!(keep_unarchived(None, &[1, 2]).unwrap(), None);
    }
}
