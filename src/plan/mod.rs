//! Planning: pure functions from what the catalog and Postgres say now to what
//! to do next.  No I/O here; everything is unit-tested without services.
//!
//! # The ledger
//! Every archive batch is one Iceberg snapshot whose summary carries a
//! [`BatchRecord`] (`permafrost.*` keys).  A batch covers a time range of whole
//! windows.  A *move* batch was written from a Postgres transaction that
//! deleted the rows it streamed (`DELETE … RETURNING`); that transaction's id is
//! recorded (`permafrost.pg-xid`) and committed only after the snapshot was
//! committed and verified.  A *copy* batch (`--no-delete`) deleted nothing.
//!
//! A batch is **settled** when its rows are certainly gone from Postgres:
//! it is a move batch whose transaction committed, or a later settled batch
//! lists it in `permafrost.reconciles`, or the durable ledger recorded it
//! settled before its snapshot was expired, or a move batch whose transaction
//! Postgres no longer knows (it forgets them after freezing, and a batch of
//! another history — `permafrost.pg-history` — is not asked about) and whose range
//! holds no rows — committed or not, nothing of it is left to reconcile; a
//! range that holds rows keeps it open, and its rows are told apart by
//! content.  Every other batch is **open**: some of
//! its rows may still be in Postgres (the process died between the Iceberg
//! commit and the Postgres commit, the batch failed verification, or it was a
//! copy).  Before a range with open batches is archived again, rows identical to
//! rows of those open batches are removed from the stream (they are already in
//! the archive) — this is what keeps a crash at any point from archiving a row
//! twice.

pub mod batch;
pub mod window;

#[cfg(test)]
mod sim;

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use self::window::{Granularity, Micros, Window, rfc3339};
use crate::ledger::{BatchMode, BatchRecord};

/// What Postgres says about a batch's transaction (`txid_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum XactStatus {
    Committed,
    Aborted,
    InProgress,
    /// Postgres does not know it: too old (the commit log was truncated
    /// after freezing, typically 200 million transactions later — days on a
    /// busy database), or not of this cluster's history ("in the future").
    Unknown,
}

/// Everything the planner needs to know about one table, gathered by I/O code.
#[derive(Debug, Clone)]
pub struct TableFacts {
    pub source: String,
    pub granularity: Granularity,
    /// Batches of this source, in commit order.
    pub batches: Vec<BatchRecord>,
    /// Status of the transaction of every move batch.
    pub xact: HashMap<u64, XactStatus>,
    /// Batches that failed verification: batch id → reason.
    pub failed: BTreeMap<String, String>,
    /// Windows entirely older than the cutoff that hold rows in Postgres, sorted.
    pub pending: Vec<Window>,
    /// Where `pending` is complete: every window inside that holds rows is
    /// listed; outside it Postgres was not asked.
    pub scanned: Window,
    /// This cluster's history (`<system identifier>/<timeline>`), if it
    /// could be read.
    pub pg_history: Option<String>,
}

impl TableFacts {
    /// Whether Postgres's answer about `b`'s transaction id is about that
    /// transaction: `b` was recorded in this cluster's history, or one of
    /// the two is unknown (a batch of an older permafrost, a server that
    /// does not say).  After a restore to an earlier point, a failover that
    /// lost commits, or a move to another cluster, the id may have been
    /// reused by an unrelated transaction; its status is then `Unknown`.
    fn knows(&self, b: &BatchRecord) -> bool {
        match (&b.pg_history, &self.pg_history) {
            (Some(recorded), Some(now)) => recorded == now,
            _ => true,
        }
    }

    /// How many move batches were recorded on another history than this
    /// cluster's ([`Self::knows`]).
    pub fn of_other_history(&self) -> usize {
        self.batches
            .iter()
            .filter(|b| b.xid.is_some() && !self.knows(b))
            .count()
    }

    /// The transaction ids to ask Postgres about ([`Self::knows`]).
    pub fn askable_xids(&self) -> Vec<u64> {
        self.batches
            .iter()
            .filter(|b| self.knows(b))
            .filter_map(|b| b.xid)
            .collect()
    }

    /// Postgres was asked about all of `range` and none of its windows
    /// holds rows (`pending` is sorted: one binary search).
    fn holds_no_rows(&self, range: Window) -> bool {
        let first_after = self.pending.partition_point(|w| w.end <= range.start);
        self.scanned.start <= range.start
            && range.end <= self.scanned.end
            && self
                .pending
                .get(first_after)
                .is_none_or(|w| !w.overlaps(&range))
    }
}

/// The state of a batch, derived from [`TableFacts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatchState {
    /// Rows are in the archive and gone from Postgres.
    Settled,
    /// Copied with `--no-delete`; rows are still in Postgres.
    Kept,
    /// Committed, but its Postgres transaction did not commit: rows may still
    /// be in Postgres and are removed (not archived again) by the next run.
    Unsettled,
    /// Failed verification; blocks its windows until `archive --force`.
    Failed,
    /// Its Postgres transaction is still running (another process).
    InProgress,
}

/// Derives the state of every batch.
pub fn batch_states(facts: &TableFacts) -> HashMap<String, BatchState> {
    let mut settled_by_later: HashSet<&str> = HashSet::new();
    let mut states = HashMap::new();
    for b in facts.batches.iter().rev() {
        let own = match (b.mode, b.xid) {
            (BatchMode::Move, Some(x)) if facts.knows(b) => {
                facts.xact.get(&x).copied().unwrap_or(XactStatus::Unknown)
            }
            (BatchMode::Move, Some(_)) => XactStatus::Unknown,
            _ => XactStatus::Aborted,
        };
        let settled = b.rolled_up
            || b.recorded_settled()
            || settled_by_later.contains(b.batch_id.as_str())
            || own == XactStatus::Committed
            || (own == XactStatus::Unknown
                && !facts.failed.contains_key(&b.batch_id)
                && facts.holds_no_rows(b.range));
        let state = if settled {
            BatchState::Settled
        } else if own == XactStatus::InProgress {
            BatchState::InProgress
        } else if facts.failed.contains_key(&b.batch_id) {
            BatchState::Failed
        } else if b.mode == BatchMode::Copy {
            BatchState::Kept
        } else {
            BatchState::Unsettled
        };
        if settled {
            for r in &b.reconciles {
                settled_by_later.insert(r.as_str());
            }
        }
        states.insert(b.batch_id.clone(), state);
    }
    states
}

/// The batches whose rows are certainly gone from Postgres.
pub fn settled_batches(facts: &TableFacts) -> HashSet<String> {
    batch_states(facts)
        .into_iter()
        .filter(|(_, st)| *st == BatchState::Settled)
        .map(|(id, _)| id)
        .collect()
}

/// Options of one planning pass.
#[derive(Debug, Clone, Copy)]
pub struct PlanOptions {
    /// Retry windows blocked by failed batches.
    pub force: bool,
    /// At most this many consecutive windows per batch.
    pub batch_windows: u32,
    /// Move (delete) or copy (`--no-delete`).
    pub mode: BatchMode,
}

/// One batch to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedBatch {
    pub batch_id: String,
    #[serde(skip)]
    pub range: Window,
    pub sequence: u32,
    /// Windows in the range that hold rows.
    #[serde(skip)]
    pub windows: Vec<Window>,
    /// Open batches overlapping the range: rows identical to theirs are
    /// already archived and are not written again.
    pub reconcile: Vec<String>,
    /// The open batches whose whole range this batch covers: once this batch
    /// is settled, they are settled too (`permafrost.reconciles`).  A batch
    /// only partly covered is used as a filter but stays open.
    pub settles: Vec<String>,
    /// Settled batches (with rows) overlapping the range.  Rows in Postgres
    /// that contain the whole content of one of them were restored from the
    /// archive: they are settled, not archived again.
    pub restorable: Vec<String>,
    /// A copy (`--no-delete`, not `--force`) of a range whose open batches
    /// all lie within it: the rows they recorded together.  A range that
    /// still holds exactly that many rows is not read again
    /// ([`batch::unchanged`]).
    #[serde(skip)]
    pub copied_rows: Option<u64>,
}

/// A window that will not be archived this run, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocked {
    #[serde(skip)]
    pub window: Window,
    pub batch_id: String,
    pub reason: String,
}

/// The planner's answer.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub batches: Vec<PlannedBatch>,
    pub blocked: Vec<Blocked>,
    /// Batches whose Postgres transaction is still running elsewhere.
    pub in_progress: Vec<String>,
}

/// Deterministic batch id for (source, range, sequence).
pub fn batch_id(source: &str, range: &Window, sequence: u32) -> String {
    let key = format!(
        "{source}|{}|{}|{sequence}",
        rfc3339(range.start),
        rfc3339(range.end)
    );
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(key.as_bytes()))
}

/// Plans the batches of one run.
///
/// Contract: a planned range never touches the range of a failed batch (unless
/// `force`); every open batch overlapping a planned range is listed in its
/// `reconcile` (rows identical to its rows are not archived again); a batch
/// is listed in `settles` only when the planned range covers its whole range;
/// nothing is planned while another transaction of this table is in progress.
pub fn plan(facts: &TableFacts, opts: PlanOptions) -> Plan {
    let states = batch_states(facts);
    let in_progress: Vec<String> = facts
        .batches
        .iter()
        .filter(|b| states.get(&b.batch_id) == Some(&BatchState::InProgress))
        .map(|b| b.batch_id.clone())
        .collect();
    if !in_progress.is_empty() {
        return Plan {
            batches: vec![],
            blocked: vec![],
            in_progress,
        };
    }
    // Failed batches are barriers unless forced: no planned range touches them.
    let barriers = Barriers(if opts.force {
        vec![]
    } else {
        facts
            .batches
            .iter()
            .filter(|b| states.get(&b.batch_id) == Some(&BatchState::Failed))
            .collect()
    });
    let (runnable, blocked) = barriers.split(facts);
    let groups = group_windows(runnable, facts.granularity, opts.batch_windows, &barriers);
    let open = |b: &BatchRecord| is_open(&states, b);
    let skips = opts.mode == BatchMode::Copy && !opts.force;
    let batches = stretch(groups, facts, &open, &barriers)
        .into_iter()
        .map(|(range, windows)| planned_batch(facts, range, windows, &open, skips))
        .collect();
    Plan {
        batches,
        blocked,
        in_progress: vec![],
    }
}

/// Whether a batch may still have rows in Postgres (not settled).
fn is_open(states: &HashMap<String, BatchState>, b: &BatchRecord) -> bool {
    !matches!(states.get(&b.batch_id), Some(BatchState::Settled) | None)
}

/// The failed batches no planned range may touch.
struct Barriers<'a>(Vec<&'a BatchRecord>);

impl Barriers<'_> {
    fn hits(&self, r: &Window) -> bool {
        self.0.iter().any(|b| b.range.overlaps(r))
    }

    /// The pending windows that may run, and those a barrier blocks.
    fn split(&self, facts: &TableFacts) -> (Vec<Window>, Vec<Blocked>) {
        let mut runnable = Vec::new();
        let mut blocked = Vec::new();
        for w in &facts.pending {
            match self.0.iter().find(|b| b.range.overlaps(w)) {
                Some(b) => blocked.push(Blocked {
                    window: *w,
                    batch_id: b.batch_id.clone(),
                    reason: facts.failed.get(&b.batch_id).cloned().unwrap_or_default(),
                }),
                None => runnable.push(*w),
            }
        }
        (runnable, blocked)
    }
}

/// The windows per batch that make batches of about `target` rows when a
/// run's `rows` (Postgres's estimate) lie in `windows` windows holding rows
/// (`batch_rows`): as many windows as fit in `target` at their average size
/// — but no more than leave two batches per extraction slot (`slots`), so
/// every slot stays busy — at least `min` (`batch_windows`) and a multiple
/// of it (24 hourly windows stay whole UTC days), at most
/// [`crate::config::MAX_BATCH_WINDOWS`]; `min` when the estimate is below a
/// row per window.  Pure.
pub fn windows_for_rows(min: u32, target: u64, rows: u64, windows: usize, slots: usize) -> u32 {
    // Every window counted holds a row: an estimate of fewer rows than
    // windows is statistics out of date (a table never analysed), not a
    // reason to put everything in one batch.
    if windows == 0 || rows < windows as u64 {
        return min;
    }
    let per_window = rows / windows as u64;
    let fit = target / per_window.max(1);
    let spread = (windows / (2 * slots.max(1))).max(1) as u64;
    let most = crate::config::MAX_BATCH_WINDOWS;
    let min = min.clamp(1, most);
    let n = u32::try_from(fit.min(spread))
        .unwrap_or(most)
        .clamp(min, most);
    n - n % min
}

/// Groups consecutive runnable windows, aligned on `batch_windows` (with 24
/// hourly windows per batch, a batch is one UTC day; `all`: one group for
/// the whole run), never across a barrier.
fn group_windows(
    runnable: Vec<Window>,
    g: Granularity,
    batch_windows: u32,
    barriers: &Barriers<'_>,
) -> Vec<Vec<Window>> {
    let bw = batch_windows.max(1) as i64;
    let mut groups: Vec<Vec<Window>> = Vec::new();
    for w in runnable {
        let extend = groups.last().is_some_and(|grp| {
            let first = grp[0];
            let span_ok = batch_windows == u32::MAX
                || g.ordinal(w.start).div_euclid(bw) == g.ordinal(first.start).div_euclid(bw);
            span_ok
                && !barriers.hits(&Window {
                    start: first.start,
                    end: w.end,
                })
        });
        match groups.last_mut() {
            Some(grp) if extend => grp.push(w),
            _ => groups.push(vec![w]),
        }
    }
    groups
}

/// Stretches each group's range over the open batches it touches, so it can
/// settle them whole (unless that would touch a barrier); merges ranges
/// that meet.
fn stretch(
    groups: Vec<Vec<Window>>,
    facts: &TableFacts,
    is_open: &dyn Fn(&BatchRecord) -> bool,
    barriers: &Barriers<'_>,
) -> Vec<(Window, Vec<Window>)> {
    let mut ranged: Vec<(Window, Vec<Window>)> = Vec::new();
    for windows in groups {
        let mut range = Window {
            start: windows[0].start,
            end: windows[windows.len() - 1].end,
        };
        loop {
            let mut grown = range;
            for b in facts
                .batches
                .iter()
                .filter(|b| is_open(b) && b.range.overlaps(&range))
            {
                let candidate = Window {
                    start: grown.start.min(b.range.start),
                    end: grown.end.max(b.range.end),
                };
                if !barriers.hits(&candidate) {
                    grown = candidate;
                }
            }
            if grown == range {
                break;
            }
            range = grown;
        }
        match ranged.last_mut() {
            Some((r, ws)) if r.end > range.start => {
                r.end = r.end.max(range.end);
                ws.extend(windows);
            }
            _ => ranged.push((range, windows)),
        }
    }
    ranged
}

/// The batch of one range: the next sequence of the range, the open batches
/// it reconciles (and those it covers whole: it settles them), the settled
/// batches a restore may have brought back; for a copy that may skip an
/// unchanged range (`skips`), the rows its open batches recorded when they
/// all lie within it (each row a later one streamed was filtered against
/// the earlier ones, so none is counted twice).
fn planned_batch(
    facts: &TableFacts,
    range: Window,
    windows: Vec<Window>,
    is_open: &dyn Fn(&BatchRecord) -> bool,
    skips: bool,
) -> PlannedBatch {
    let overlapping = || facts.batches.iter().filter(|b| b.range.overlaps(&range));
    let sequence = overlapping().map(|b| b.sequence).max().unwrap_or(0) + 1;
    let open: Vec<&BatchRecord> = overlapping().filter(|b| is_open(b)).collect();
    let restorable = overlapping()
        .filter(|b| !is_open(b) && b.rows > 0)
        .map(|b| b.batch_id.clone())
        .collect();
    let settles: Vec<String> = open
        .iter()
        .filter(|b| range.start <= b.range.start && b.range.end <= range.end)
        .map(|b| b.batch_id.clone())
        .collect();
    let copied_rows = (skips && !open.is_empty() && settles.len() == open.len())
        .then(|| open.iter().map(|b| b.rows).sum());
    PlannedBatch {
        batch_id: batch_id(&facts.source, &range, sequence),
        range,
        sequence,
        windows,
        reconcile: open.iter().map(|b| b.batch_id.clone()).collect(),
        settles,
        restorable,
        copied_rows,
    }
}

/// The state of a window, for `status` and `list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "query", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum WindowState {
    /// In the archive, gone from Postgres.
    Archived,
    /// In the archive (copied with `--no-delete`), rows still in Postgres.
    Kept,
    /// Rows in Postgres wait to be archived.
    Pending,
    /// A batch of this window failed verification.
    Failed,
}

/// Per-window summary derived from the facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSummary {
    pub window: Window,
    pub state: WindowState,
    /// Rows archived in batches whose range is this window or covers it.
    pub batches: Vec<String>,
}

/// Every window known to the catalog or waiting in Postgres, with its state.
pub fn window_states(facts: &TableFacts) -> Vec<WindowSummary> {
    let states = batch_states(facts);
    let g = facts.granularity;
    let mut windows: BTreeMap<Micros, WindowSummary> = BTreeMap::new();
    for b in &facts.batches {
        let mut n = g.ordinal(b.range.start);
        loop {
            let w = g.window(n);
            if w.start >= b.range.end {
                break;
            }
            windows
                .entry(w.start)
                .or_insert(WindowSummary {
                    window: w,
                    state: WindowState::Archived,
                    batches: vec![],
                })
                .batches
                .push(b.batch_id.clone());
            n += 1;
        }
    }
    let pending: HashSet<Micros> = facts.pending.iter().map(|w| w.start).collect();
    for w in &facts.pending {
        windows.entry(w.start).or_insert(WindowSummary {
            window: *w,
            state: WindowState::Pending,
            batches: vec![],
        });
    }
    for ws in windows.values_mut() {
        let st: Vec<BatchState> = ws
            .batches
            .iter()
            .filter_map(|id| states.get(id).copied())
            .collect();
        ws.state = if st.contains(&BatchState::Failed) {
            WindowState::Failed
        } else if !pending.contains(&ws.window.start) {
            WindowState::Archived
        } else if st.contains(&BatchState::Kept) {
            WindowState::Kept
        } else {
            WindowState::Pending
        };
    }
    windows.into_values().collect()
}

/// The ranges a `--no-delete` run leaves in Postgres on purpose: the windows
/// kept before it and the ranges of its own batches (`done`), in order,
/// merged where they touch or where no window between them held rows when
/// the run planned (so a table with empty days or hours between its windows
/// gives a few ranges, not one per window).  Rows there are archived; a
/// run's count of rows left behind skips them, as `status` counts kept
/// windows apart from pending ones.
pub fn kept_ranges(facts: &TableFacts, done: impl IntoIterator<Item = Window>) -> Vec<Window> {
    let mut all: Vec<Window> = window_states(facts)
        .into_iter()
        .filter(|w| w.state == WindowState::Kept)
        .map(|w| w.window)
        .chain(done)
        .collect();
    all.sort_by_key(|w| w.start);
    let mut held: Vec<Micros> = facts.pending.iter().map(|w| w.start).collect();
    held.sort_unstable();
    // True when a window that held rows starts in `[from, to)`.
    let rows_between = |from: Micros, to: Micros| {
        let i = held.partition_point(|&s| s < from);
        held.get(i).is_some_and(|&s| s < to)
    };
    let mut merged: Vec<Window> = Vec::with_capacity(all.len());
    for w in all {
        match merged.last_mut() {
            Some(last) if w.start <= last.end || !rows_between(last.end, w.start) => {
                last.end = last.end.max(w.end)
            }
            _ => merged.push(w),
        }
    }
    merged
}

#[cfg(test)]
mod tests {

    #[test]
    fn batch_rows_groups_small_windows_and_leaves_large_ones_alone() {
        // 1,000,000 rows over 30 daily windows, batches of 250,000, two
        // slots: 7 days (and 5 batches: more than two per slot).
        assert_eq!(windows_for_rows(1, 250_000, 1_000_000, 30, 2), 7);
        // Eight slots: two batches each leaves a day per batch.
        assert_eq!(windows_for_rows(1, 250_000, 1_000_000, 30, 8), 1);
        // A year of small days on two slots: 250,000 rows' worth.
        assert_eq!(windows_for_rows(1, 250_000, 3_650_000, 365, 2), 25);
        // Windows larger than the target: one each (or the minimum).
        assert_eq!(windows_for_rows(1, 250_000, 30_000_000, 30, 2), 1);
        assert_eq!(windows_for_rows(24, 250_000, 30_000_000, 300, 2), 24);
        // Hourly windows group in whole days: 180 hours fit, 7 days taken.
        assert_eq!(windows_for_rows(24, 250_000, 72_000, 720, 2), 168);
        // No window, or an estimate below a row per window (statistics
        // out of date): the minimum.
        assert_eq!(windows_for_rows(1, 250_000, 0, 0, 2), 1);
        assert_eq!(windows_for_rows(1, 250_000, 0, 30, 2), 1);
        assert_eq!(windows_for_rows(3, 250_000, 29, 30, 2), 3);
        // Tiny windows, very many: as many as a batch may take.
        assert_eq!(
            windows_for_rows(1, u64::MAX, 1 << 40, 1 << 40, 1),
            crate::config::MAX_BATCH_WINDOWS
        );
    }
    use super::window::parse_instant;
    use super::*;

    fn day(s: &str) -> Window {
        Granularity::Day.window_of(parse_instant(s).unwrap())
    }

    fn rec(
        id: &str,
        range: Window,
        seq: u32,
        mode: BatchMode,
        xid: Option<u64>,
        reconciles: &[&str],
    ) -> BatchRecord {
        BatchRecord {
            batch_id: id.into(),
            snapshot_id: 1,
            committed_at_ms: 0,
            range,
            sequence: seq,
            mode,
            xid,
            pg_history: None,
            reconciles: reconciles.iter().map(|s| s.to_string()).collect(),
            rows: 10,
            checksum: "x".into(),
            rolled_up: false,
        }
    }

    fn facts(
        batches: Vec<BatchRecord>,
        xact: &[(u64, XactStatus)],
        pending: Vec<Window>,
    ) -> TableFacts {
        TableFacts {
            source: "db.public.t".into(),
            granularity: Granularity::Day,
            batches,
            xact: xact.iter().copied().collect(),
            failed: BTreeMap::new(),
            pending,
            scanned: Window::up_to(Micros::MAX),
            pg_history: None,
        }
    }

    const MOVE: PlanOptions = PlanOptions {
        force: false,
        batch_windows: 1,
        mode: BatchMode::Move,
    };

    #[test]
    fn batch_ids_are_deterministic_and_distinct() {
        let w = day("2024-01-01");
        assert_eq!(batch_id("s", &w, 1), batch_id("s", &w, 1));
        assert_ne!(batch_id("s", &w, 1), batch_id("s", &w, 2));
        assert_ne!(batch_id("s", &w, 1), batch_id("t", &w, 1));
        assert_eq!(batch_id("s", &w, 1).len(), 16);
    }

    #[test]
    fn fresh_table_plans_one_batch_per_pending_window() {
        let f = facts(
            vec![],
            &[],
            vec![day("2024-01-01"), day("2024-01-02"), day("2024-01-05")],
        );
        let p = plan(&f, MOVE);
        assert_eq!(p.batches.len(), 3);
        assert!(
            p.batches
                .iter()
                .all(|b| b.sequence == 1 && b.reconcile.is_empty())
        );
    }

    #[test]
    fn groups_consecutive_windows_up_to_batch_windows() {
        let f = facts(
            vec![],
            &[],
            vec![
                day("2024-01-01"),
                day("2024-01-02"),
                day("2024-01-03"),
                day("2024-01-09"),
            ],
        );
        let p = plan(
            &f,
            PlanOptions {
                batch_windows: 2,
                ..MOVE
            },
        );
        let ranges: Vec<_> = p
            .batches
            .iter()
            .map(|b| (rfc3339(b.range.start), rfc3339(b.range.end)))
            .collect();
        // Day ordinals 19723..: groups of two are aligned on even ordinals.
        assert_eq!(
            ranges,
            vec![
                (
                    "2024-01-01T00:00:00Z".to_string(),
                    "2024-01-02T00:00:00Z".to_string()
                ),
                (
                    "2024-01-02T00:00:00Z".to_string(),
                    "2024-01-04T00:00:00Z".to_string()
                ),
                (
                    "2024-01-09T00:00:00Z".to_string(),
                    "2024-01-10T00:00:00Z".to_string()
                ),
            ]
        );
    }

    #[test]
    fn batch_windows_all_plans_one_batch_per_run() {
        let f = facts(
            vec![],
            &[],
            vec![
                day("1969-12-31"),
                day("2024-01-01"),
                day("2024-01-02"),
                day("2024-01-09"),
            ],
        );
        let p = plan(
            &f,
            PlanOptions {
                batch_windows: crate::config::BATCH_WINDOWS_ALL,
                ..MOVE
            },
        );
        assert_eq!(p.batches.len(), 1, "{:?}", p.batches);
        assert_eq!(p.batches[0].windows.len(), 4);
        assert_eq!(rfc3339(p.batches[0].range.start), "1969-12-31T00:00:00Z");
        assert_eq!(rfc3339(p.batches[0].range.end), "2024-01-10T00:00:00Z");
    }

    #[test]
    fn hourly_batches_are_whole_days() {
        let g = Granularity::Hour;
        let start = parse_instant("2024-01-01T05:00:00Z").unwrap();
        let pending: Vec<Window> = (0..30)
            .map(|i| g.window_of(start + i * 3_600_000_000))
            .collect();
        let mut f = facts(vec![], &[], pending);
        f.granularity = g;
        let p = plan(
            &f,
            PlanOptions {
                batch_windows: 24,
                ..MOVE
            },
        );
        let ranges: Vec<_> = p
            .batches
            .iter()
            .map(|b| {
                (
                    rfc3339(b.range.start),
                    rfc3339(b.range.end),
                    b.windows.len(),
                )
            })
            .collect();
        assert_eq!(
            ranges,
            vec![
                (
                    "2024-01-01T05:00:00Z".to_string(),
                    "2024-01-02T00:00:00Z".to_string(),
                    19
                ),
                (
                    "2024-01-02T00:00:00Z".to_string(),
                    "2024-01-02T11:00:00Z".to_string(),
                    11
                ),
            ]
        );
    }

    #[test]
    fn committed_move_batch_is_settled_and_late_rows_get_next_sequence() {
        let w = day("2024-01-01");
        let f = facts(
            vec![rec("a", w, 1, BatchMode::Move, Some(7), &[])],
            &[(7, XactStatus::Committed)],
            vec![w],
        );
        assert_eq!(batch_states(&f)["a"], BatchState::Settled);
        let p = plan(&f, MOVE);
        assert_eq!(p.batches.len(), 1);
        assert_eq!(p.batches[0].sequence, 2);
        assert!(p.batches[0].reconcile.is_empty());
    }

    #[test]
    fn aborted_move_batch_must_be_reconciled() {
        let w = day("2024-01-01");
        let f = facts(
            vec![rec("a", w, 1, BatchMode::Move, Some(7), &[])],
            &[(7, XactStatus::Aborted)],
            vec![w],
        );
        assert_eq!(batch_states(&f)["a"], BatchState::Unsettled);
        let p = plan(&f, MOVE);
        assert_eq!(p.batches[0].reconcile, vec!["a".to_string()]);
    }

    #[test]
    fn unknown_xact_is_treated_as_open() {
        let w = day("2024-01-01");
        let f = facts(
            vec![rec("a", w, 1, BatchMode::Move, Some(7), &[])],
            &[],
            vec![w],
        );
        assert_eq!(plan(&f, MOVE).batches[0].reconcile, vec!["a".to_string()]);
    }

    #[test]
    fn a_forgotten_transaction_settles_only_a_batch_whose_range_holds_no_rows() {
        let (w1, w2, w3) = (day("2024-01-01"), day("2024-01-02"), day("2024-01-03"));
        let two_days = Window {
            start: w2.start,
            end: w3.end,
        };
        let mut f = facts(
            vec![
                rec("a", w1, 1, BatchMode::Move, Some(7), &[]),
                rec("b", two_days, 1, BatchMode::Move, Some(8), &[]),
                rec("c", w1, 2, BatchMode::Copy, None, &[]),
            ],
            &[],
            vec![w3],
        );
        let s = batch_states(&f);
        // Nothing left of `a`; `b`'s second day holds rows (its own, or late
        // ones): open, told apart by content; a copy's rows stay by design.
        assert_eq!(
            (s["a"], s["b"], s["c"]),
            (BatchState::Settled, BatchState::Unsettled, BatchState::Kept)
        );
        assert_eq!(plan(&f, MOVE).batches[0].reconcile, vec!["b".to_string()]);
        // Postgres was not asked about the first day (a run's `--from`):
        // no conclusion there.
        f.scanned = Window {
            start: w2.start,
            end: Micros::MAX,
        };
        assert_eq!(batch_states(&f)["a"], BatchState::Unsettled);
        // Nor about a range reaching past the cutoff.
        f.scanned = Window::up_to(w1.end);
        f.pending = vec![];
        assert_eq!(batch_states(&f)["b"], BatchState::Unsettled);
        // A failed batch stays failed.
        f.scanned = Window::up_to(Micros::MAX);
        f.failed.insert("a".into(), "checksum mismatch".into());
        assert_eq!(batch_states(&f)["a"], BatchState::Failed);
    }

    #[test]
    fn a_transaction_id_of_another_history_is_not_believed() {
        let (w1, w2) = (day("2024-01-01"), day("2024-01-02"));
        let of = |id, w, xid, history: Option<&str>| BatchRecord {
            pg_history: history.map(String::from),
            ..rec(id, w, 1, BatchMode::Move, Some(xid), &[])
        };
        let mut f = facts(
            vec![
                of("old", w1, 7, None),
                of("before", w1, 8, Some("42/1")),
                of("now", w2, 9, Some("42/2")),
            ],
            // After a restore to an earlier point the ids were used again:
            // Postgres says "committed" of transactions that are not theirs.
            &[
                (7, XactStatus::Committed),
                (8, XactStatus::Committed),
                (9, XactStatus::Committed),
            ],
            vec![w1],
        );
        f.pg_history = Some("42/2".into());
        assert_eq!(
            f.askable_xids(),
            vec![7, 9],
            "a batch of history 1 is not asked"
        );
        let s = batch_states(&f);
        // Its rows came back with the restore: open, told apart by content.
        assert_eq!(
            (s["old"], s["before"], s["now"]),
            (
                BatchState::Settled,
                BatchState::Unsettled,
                BatchState::Settled
            )
        );
        assert_eq!(
            plan(&f, MOVE).batches[0].reconcile,
            vec!["before".to_string()]
        );
        // Nothing of it left in Postgres: settled.
        f.pending.clear();
        assert_eq!(batch_states(&f)["before"], BatchState::Settled);
        // A server that does not say its history: believed, as before.
        f.pg_history = None;
        assert_eq!(f.askable_xids(), vec![7, 8, 9]);
    }

    #[test]
    fn settled_reconciler_settles_what_it_lists() {
        let w = day("2024-01-01");
        let f = facts(
            vec![
                rec("a", w, 1, BatchMode::Move, Some(7), &[]),
                rec("c", w, 2, BatchMode::Copy, None, &[]),
                rec("b", w, 3, BatchMode::Move, Some(9), &["a", "c"]),
            ],
            &[(7, XactStatus::Aborted), (9, XactStatus::Committed)],
            vec![w],
        );
        let s = batch_states(&f);
        assert_eq!(
            (s["a"], s["b"], s["c"]),
            (
                BatchState::Settled,
                BatchState::Settled,
                BatchState::Settled
            )
        );
        let p = plan(&f, MOVE);
        assert!(p.batches[0].reconcile.is_empty());
        assert_eq!(p.batches[0].sequence, 4);
    }

    #[test]
    fn unsettled_reconciler_settles_nothing() {
        let w = day("2024-01-01");
        let f = facts(
            vec![
                rec("a", w, 1, BatchMode::Move, Some(7), &[]),
                rec("b", w, 2, BatchMode::Move, Some(9), &["a"]),
            ],
            &[(7, XactStatus::Aborted), (9, XactStatus::Aborted)],
            vec![w],
        );
        assert_eq!(
            plan(&f, MOVE).batches[0].reconcile,
            vec!["a".to_string(), "b".to_string()]
        );
    }

    #[test]
    fn in_progress_transaction_plans_nothing() {
        let w = day("2024-01-01");
        let f = facts(
            vec![rec("a", w, 1, BatchMode::Move, Some(7), &[])],
            &[(7, XactStatus::InProgress)],
            vec![w],
        );
        let p = plan(&f, MOVE);
        assert!(p.batches.is_empty());
        assert_eq!(p.in_progress, vec!["a".to_string()]);
    }

    #[test]
    fn failed_batch_blocks_until_force() {
        let (w1, w2, w3) = (day("2024-01-01"), day("2024-01-02"), day("2024-01-03"));
        let mut f = facts(
            vec![rec("a", w2, 1, BatchMode::Move, Some(7), &[])],
            &[(7, XactStatus::Aborted)],
            vec![w1, w2, w3],
        );
        f.failed.insert("a".into(), "checksum mismatch".into());
        let p = plan(
            &f,
            PlanOptions {
                batch_windows: 30,
                ..MOVE
            },
        );
        assert_eq!(p.blocked.len(), 1);
        assert_eq!(p.blocked[0].window, w2);
        // The group is split around the blocked window.
        assert_eq!(p.batches.len(), 2);
        assert!(p.batches.iter().all(|b| !b.range.overlaps(&w2)));

        let p = plan(
            &f,
            PlanOptions {
                batch_windows: 30,
                force: true,
                ..MOVE
            },
        );
        assert!(p.blocked.is_empty());
        assert_eq!(p.batches.len(), 1);
        assert_eq!(p.batches[0].reconcile, vec!["a".to_string()]);
    }

    #[test]
    fn a_range_stretches_to_settle_an_open_batch_whole() {
        let (d1, d3) = (day("2024-01-01"), day("2024-01-03"));
        let u = Window {
            start: d1.start,
            end: d3.start,
        }; // two days
        let f = facts(
            vec![rec("u", u, 1, BatchMode::Move, Some(7), &[])],
            &[(7, XactStatus::Aborted)],
            vec![d1],
        );
        let p = plan(&f, MOVE);
        assert_eq!(p.batches.len(), 1);
        assert_eq!(p.batches[0].range, u, "stretched over the open batch");
        assert_eq!(p.batches[0].settles, vec!["u".to_string()]);
    }

    #[test]
    fn a_partly_covered_open_batch_filters_but_is_not_settled() {
        let (d1, d2, d3) = (day("2024-01-01"), day("2024-01-02"), day("2024-01-03"));
        let u = Window {
            start: d1.start,
            end: d3.start,
        };
        let mut f = facts(
            vec![
                rec("u", u, 1, BatchMode::Move, Some(7), &[]),
                rec("x", d2, 2, BatchMode::Move, Some(8), &[]),
            ],
            &[(7, XactStatus::Aborted), (8, XactStatus::Aborted)],
            vec![d1, d2],
        );
        f.failed.insert("x".into(), "bad".into());
        let p = plan(&f, MOVE);
        assert_eq!(p.blocked.len(), 1, "d2 is blocked by the failed batch");
        assert_eq!(p.batches.len(), 1);
        assert_eq!(
            p.batches[0].range, d1,
            "cannot stretch over the failed batch"
        );
        assert_eq!(p.batches[0].reconcile, vec!["u".to_string()]);
        assert!(p.batches[0].settles.is_empty(), "u is only partly covered");
        // Forced, the range covers both and settles both.
        let p = plan(
            &f,
            PlanOptions {
                force: true,
                ..MOVE
            },
        );
        assert_eq!(p.batches.len(), 1);
        assert_eq!(p.batches[0].range, u);
        assert_eq!(p.batches[0].settles, vec!["u".to_string(), "x".to_string()]);
    }

    #[test]
    fn window_states_follow_batches_and_postgres() {
        let (w1, w2, w3, w4) = (
            day("2024-01-01"),
            day("2024-01-02"),
            day("2024-01-03"),
            day("2024-01-04"),
        );
        let mut f = facts(
            vec![
                rec("a", w1, 1, BatchMode::Move, Some(7), &[]),
                rec("k", w2, 1, BatchMode::Copy, None, &[]),
                rec("f", w3, 1, BatchMode::Move, Some(8), &[]),
            ],
            &[(7, XactStatus::Committed), (8, XactStatus::Aborted)],
            vec![w2, w3, w4],
        );
        f.failed.insert("f".into(), "bad".into());
        let st: Vec<_> = window_states(&f).into_iter().map(|s| s.state).collect();
        assert_eq!(
            st,
            vec![
                WindowState::Archived,
                WindowState::Kept,
                WindowState::Failed,
                WindowState::Pending
            ]
        );
    }

    #[test]
    fn kept_ranges_merge_kept_windows_and_the_runs_batches() {
        let d = |n: u32| day(&format!("2024-01-{n:02}"));
        let f = facts(
            vec![
                rec("a", d(1), 1, BatchMode::Move, Some(7), &[]),
                rec("k", d(2), 1, BatchMode::Copy, None, &[]),
                rec("k2", d(5), 1, BatchMode::Copy, None, &[]),
            ],
            &[(7, XactStatus::Committed)],
            vec![d(2), d(4), d(5), d(8)],
        );
        let span = |a: Window, b: Window| Window {
            start: a.start,
            end: b.end,
        };
        // Day 1 is settled (not kept); days 4 and 8 hold rows not archived.
        // Days 2 and 5 are kept, apart (day 4 lies between).  The run's own
        // batches join them where they touch (day 3, days 6-7) or where no
        // window between held rows (day 7, after the empty day 6); day 10
        // stays apart (day 8 held rows).
        assert_eq!(kept_ranges(&f, []), vec![d(2), d(5)]);
        assert_eq!(
            kept_ranges(&f, [span(d(6), d(7)), d(3)]),
            vec![span(d(2), d(3)), span(d(5), d(7))]
        );
        assert_eq!(
            kept_ranges(&f, [d(7), d(10)]),
            vec![d(2), span(d(5), d(7)), d(10)]
        );
    }

    #[test]
    fn a_copy_knows_the_rows_its_range_held_when_copied() {
        let d = |n: u32| day(&format!("2024-01-{n:02}"));
        let two = Window {
            start: d(4).start,
            end: d(5).end,
        };
        let f = facts(
            vec![
                // Day 2: copied, then two late rows copied by a second batch.
                rec("k", d(2), 1, BatchMode::Copy, None, &[]),
                BatchRecord {
                    rows: 2,
                    ..rec("k2", d(2), 2, BatchMode::Copy, None, &["k"])
                },
                // Day 3: a settled move; days 4-5: one copy over both.
                rec("m", d(3), 1, BatchMode::Move, Some(7), &[]),
                rec("w", two, 1, BatchMode::Copy, None, &[]),
            ],
            &[(7, XactStatus::Committed)],
            vec![d(2), d(3), d(4), d(6)],
        );
        let copy = PlanOptions {
            mode: BatchMode::Copy,
            ..MOVE
        };
        let rows = |o: PlanOptions| -> Vec<(Window, Option<u64>)> {
            plan(&f, o)
                .batches
                .iter()
                .map(|b| (b.range, b.copied_rows))
                .collect()
        };
        // Day 3's rows were restored (its batch is settled), day 6 is new:
        // both are read.  Day 4 stretches over batch `w`'s two days.
        assert_eq!(
            rows(copy),
            vec![
                (d(2), Some(12)),
                (d(3), None),
                (two, Some(10)),
                (d(6), None)
            ]
        );
        // A move, or a forced copy, reads every range.
        for o in [
            MOVE,
            PlanOptions {
                force: true,
                ..copy
            },
        ] {
            assert!(rows(o).iter().all(|(_, n)| n.is_none()), "{o:?}");
        }
        let b = &plan(&f, copy).batches[0];
        assert!(batch::unchanged(b, 12));
        assert!(!batch::unchanged(b, 11) && !batch::unchanged(b, 13));
    }
}
