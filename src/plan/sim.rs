//! Randomised simulation of the planner against a model of Postgres and the
//! archive: runs that crash at every possible step, with up to three batches
//! in flight, copies (`--no-delete`),
//! verification failures, late rows, `--force`, and snapshot expiry by
//! another engine: the planner sees the batches the way the real path reads
//! them — the snapshots still in the history merged with the durable ledger
//! ([`super::ledger`]), which every commit rewrites (and rolls up).  After
//! every step:
//! no row is archived twice and no row is lost; after a final clean run every
//! row is archived exactly once and gone from Postgres.
//!
//! Time-budgeted (`PERMAFROST_SIM_SECONDS`, default 2) and replayable: a
//! failure prints its seed; `PERMAFROST_SIM_SEED=N` runs exactly that seed.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::checksum::HashBag;
use crate::ledger::durable::{self as ledger, LedgerEntry};
use crate::ledger::{BatchMode, BatchRecord};

use super::batch;
use std::time::{Duration, Instant};

use super::window::{Granularity, Window};
use super::*;

/// SplitMix64: small, seedable, good enough for choosing steps.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Where a simulated batch stops.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    /// Crash (or error) before the Iceberg commit.
    BeforeCommit,
    /// The commit lands but its answer is lost; the run rolls back.
    CommitLandsAnswerLost,
    /// Crash after the commit, before the Postgres commit.
    AfterCommit,
    /// Verification fails: rollback and the batch is marked failed.
    VerifyFails,
    /// Runs to the end.
    Complete,
}

struct Model {
    g: Granularity,
    /// Postgres: row id → window ordinal.
    pg: BTreeMap<u64, i64>,
    /// Archive: batch id → row ids.
    archived: HashMap<String, Vec<u64>>,
    /// Every batch committed, in order (the truth).
    batches: Vec<BatchRecord>,
    /// Batches whose snapshots are still in the history (not expired).
    in_history: HashSet<String>,
    /// The durable ledger property.
    stored: Vec<LedgerEntry>,
    /// Commit clock, ms; advances by 0 or 1 per commit (ties happen).
    clock: i64,
    xact: HashMap<u64, XactStatus>,
    failed: BTreeMap<String, String>,
    next_row: u64,
    next_xid: u64,
    every_row: Vec<u64>,
    /// Rows the application deleted itself (legitimately in neither place).
    app_deleted: Vec<u64>,
    log: Vec<String>,
}

impl Model {
    fn new() -> Self {
        Self {
            g: Granularity::Day,
            pg: BTreeMap::new(),
            archived: HashMap::new(),
            batches: vec![],
            in_history: HashSet::new(),
            stored: vec![],
            clock: 0,
            xact: HashMap::new(),
            failed: BTreeMap::new(),
            next_row: 1,
            next_xid: 100,
            every_row: vec![],
            app_deleted: vec![],
            log: vec![],
        }
    }

    fn insert(&mut self, window: i64, n: u64) {
        for _ in 0..n {
            self.pg.insert(self.next_row, window);
            self.every_row.push(self.next_row);
            self.next_row += 1;
        }
    }

    fn app_delete(&mut self, rng: &mut Rng) {
        if self.pg.is_empty() {
            return;
        }
        let i = rng.below(self.pg.len() as u64) as usize;
        if let Some(id) = self.pg.keys().nth(i).copied() {
            self.pg.remove(&id);
            self.app_deleted.push(id);
            self.log.push(format!("app deleted row {id}"));
        }
    }

    fn facts(&self) -> TableFacts {
        let mut pending: Vec<i64> = self.pg.values().copied().collect();
        pending.sort_unstable();
        pending.dedup();
        TableFacts {
            source: "db.s.t".into(),
            granularity: self.g,
            batches: self.known().into_iter().map(|(b, _)| b).collect(),
            xact: self.xact.clone(),
            failed: self.failed.clone(),
            pending: pending.into_iter().map(|n| self.g.window(n)).collect(),
        }
    }

    /// The batches as the real path reads them: history merged with the ledger.
    fn known(&self) -> Vec<(BatchRecord, Vec<ledger::LedgerFile>)> {
        let history: Vec<BatchRecord> = self
            .batches
            .iter()
            .filter(|b| self.in_history.contains(&b.batch_id))
            .cloned()
            .collect();
        ledger::merge(history, &self.stored, "db.s.t")
    }

    /// Commits `rec` the way `lake::commit::commit_batch` does: snapshot and
    /// rewritten ledger together.
    fn commit(&mut self, mut rec: BatchRecord) {
        self.clock += (self.next_row % 2) as i64;
        rec.committed_at_ms = self.clock;
        let settled = settled_batches(&self.facts());
        let new = LedgerEntry::of(&rec, "db.s.t", vec![]);
        self.stored = ledger::next(
            &self.known(),
            &self.stored,
            "db.s.t",
            &settled,
            &self.in_history,
            new,
        );
        self.in_history.insert(rec.batch_id.clone());
        self.batches.push(rec);
    }

    /// Another engine expires snapshots: each but the current one goes with
    /// probability 1/2.
    fn expire(&mut self, rng: &mut Rng) {
        let current = self.batches.last().map(|b| b.batch_id.clone());
        let before = self.in_history.len();
        self.in_history
            .retain(|id| Some(id) == current.as_ref() || rng.below(2) == 0);
        self.log.push(format!(
            "expired {} snapshot(s)",
            before - self.in_history.len()
        ));
    }

    fn in_range(&self, range: &Window) -> Vec<u64> {
        self.pg
            .iter()
            .filter(|(_, w)| range.contains(self.g.window(**w).start))
            .map(|(id, _)| *id)
            .collect()
    }

    /// The rows a part streams, as its statement ([`batch::Take`]) selects
    /// them.  A limited `DELETE` may meet a concurrent UPDATE of a selected
    /// row between its SELECT of row ids and its DELETE: the old version is
    /// gone (not deleted by us), a new version stays; the part comes back
    /// short.
    fn stream(&mut self, range: &Window, take: batch::Take) -> Vec<u64> {
        let mut streamed = self.in_range(range);
        if let batch::Take::DeleteFirst(n) = take {
            streamed.truncate(n as usize);
            if streamed.len() > 1 && self.next_row.is_multiple_of(3) {
                let victim = streamed.remove(0);
                if let Some(w) = self.pg.remove(&victim) {
                    self.app_deleted.push(victim);
                    self.insert(w, 1);
                    self.log.push(format!("row {victim} updated concurrently"));
                }
            }
        }
        streamed
    }

    /// One planned batch, run the way `archive::batch` runs it, with the
    /// same decisions ([`super::batch`]): parts of at most `limit` rows
    /// (move mode), each stopping at `stop()`.  Returns false when a part
    /// did not complete (the run ends).
    fn execute(
        &mut self,
        p: &PlannedBatch,
        mode: BatchMode,
        max_batch_rows: Option<u64>,
        stop: &mut dyn FnMut() -> Stop,
    ) -> bool {
        let archived: Vec<u128> = p
            .reconcile
            .iter()
            .flat_map(|id| self.archived.get(id).cloned().unwrap_or_default())
            .map(u128::from)
            .collect();
        let mut bag = (!archived.is_empty()).then(|| HashBag::new(archived));
        let limit = batch::row_limit(mode, max_batch_rows);
        let max_parts = batch::max_parts(limit, self.in_range(&p.range).len() as u64);
        let mut part = batch::Part::first(p);
        loop {
            let take = batch::take(mode, limit, false);
            let streamed = self.stream(&p.range, take);
            let hashes: Vec<u128> = streamed.iter().map(|id| u128::from(*id)).collect();
            let keep = batch::keep_unarchived(bag.as_mut(), &hashes);
            let new: Vec<u64> = streamed
                .iter()
                .enumerate()
                .filter(|(i, _)| keep.as_ref().is_none_or(|k| k[*i]))
                .map(|(_, id)| *id)
                .collect();
            // Is the range empty once this part's rows are gone?
            let exhausted = take
                .exhausted()
                .unwrap_or_else(|| self.in_range(&p.range).len() == streamed.len());
            let decision = batch::settle(
                p,
                mode,
                exhausted,
                streamed.len() as u64,
                new.len() as u64,
                false,
            );
            if !self.finish_part(p, &part, mode, decision, &streamed, new, stop()) {
                return false;
            }
            self.check_safe();
            match part.next("db.s.t", p, limit, exhausted, max_parts) {
                Some(next) => part = next,
                None => return true,
            }
        }
    }

    /// The end of one part: no snapshot, or commit → verify → Postgres
    /// commit, cut short by `stop`.  False when the part did not complete.
    #[allow(clippy::too_many_arguments)]
    fn finish_part(
        &mut self,
        p: &PlannedBatch,
        part: &batch::Part,
        mode: BatchMode,
        decision: batch::Settle,
        streamed: &[u64],
        new: Vec<u64>,
        stop: Stop,
    ) -> bool {
        let settles = match decision {
            batch::Settle::Skip {
                commit_postgres, ..
            } => {
                if stop != Stop::Complete {
                    return false;
                }
                if commit_postgres {
                    for id in streamed {
                        self.pg.remove(id);
                    }
                }
                return true;
            }
            batch::Settle::Record { settles } => settles,
        };
        let batch_id = part.batch_id.clone();
        if stop == Stop::BeforeCommit {
            self.log.push(format!("{batch_id} crash before commit"));
            return false;
        }
        let xid = (mode == BatchMode::Move).then(|| {
            self.next_xid += 1;
            self.next_xid
        });
        assert!(
            !self.archived.contains_key(&batch_id),
            "batch id {batch_id} committed twice"
        );
        let mut rec = part.record(p, mode, xid, settles, new.len() as u64, String::new());
        rec.snapshot_id = self.batches.len() as i64;
        self.commit(rec.clone());
        self.archived.insert(batch_id.clone(), new.clone());
        let rolled_back = match stop {
            Stop::CommitLandsAnswerLost | Stop::AfterCommit => true,
            Stop::VerifyFails => {
                self.failed.insert(batch_id.clone(), "mismatch".into());
                true
            }
            _ => false,
        };
        if let Some(x) = xid {
            let status = if rolled_back {
                XactStatus::Aborted
            } else {
                XactStatus::Committed
            };
            self.xact.insert(x, status);
        }
        if rolled_back {
            self.log.push(format!("{batch_id} {stop:?}"));
            return false;
        }
        if mode == BatchMode::Move {
            for id in streamed {
                self.pg.remove(id);
            }
            for r in &rec.reconciles {
                self.failed.remove(r);
            }
        }
        self.log.push(format!(
            "{batch_id} {mode:?} part {} {} new, {} settled",
            part.number,
            new.len(),
            streamed.len() - new.len()
        ));
        true
    }

    fn run(&mut self, rng: &mut Rng, mode: BatchMode, force: bool, crashes: bool) {
        let plan = plan(
            &self.facts(),
            PlanOptions {
                force,
                // 1-3 windows per batch, or every window of the run in one
                // (`batch_windows: all`, bounded by the row limit below).
                batch_windows: match rng.below(4) {
                    3 => crate::config::BATCH_WINDOWS_ALL,
                    n => 1 + n as u32,
                },
                mode,
            },
        );
        assert!(plan.in_progress.is_empty());
        let limit = if rng.below(2) == 0 {
            Some(1 + rng.below(4))
        } else {
            None
        };
        // Up to three batches in flight at once (`parallel_windows`): a
        // crash of the process stops each where it was, so each draws its
        // own end; their ranges are disjoint, so running them one after
        // the other is one of their interleavings.  The run ends after a
        // group in which any batch did not complete.
        let in_flight = 1 + rng.below(3) as usize;
        for group in plan.batches.chunks(in_flight) {
            let mut all = true;
            for p in group {
                let mut stop = || {
                    if !crashes {
                        return Stop::Complete;
                    }
                    match rng.below(12) {
                        0 => Stop::BeforeCommit,
                        1 => Stop::CommitLandsAnswerLost,
                        2 => Stop::AfterCommit,
                        3 => Stop::VerifyFails,
                        _ => Stop::Complete,
                    }
                };
                all &= self.execute(p, mode, limit, &mut stop);
                self.check_safe();
            }
            if !all {
                return; // the process is gone (or the run ends with an error)
            }
        }
    }

    /// No row archived twice, no row lost.
    fn check_safe(&self) {
        let mut seen: HashMap<u64, usize> = HashMap::new();
        for ids in self.archived.values() {
            for id in ids {
                *seen.entry(*id).or_default() += 1;
            }
        }
        for (id, n) in &seen {
            assert_eq!(
                *n,
                1,
                "row {id} archived {n} times\n{}",
                self.log.join("\n")
            );
        }
        for id in &self.every_row {
            assert!(
                self.pg.contains_key(id) || seen.contains_key(id) || self.app_deleted.contains(id),
                "row {id} lost\n{}",
                self.log.join("\n")
            );
        }
    }

    fn check_final(&self) {
        self.check_safe();
        assert!(
            self.pg.is_empty(),
            "rows left in Postgres after a clean forced run: {:?}\n{}",
            self.pg,
            self.log.join("\n")
        );
        let archived: std::collections::HashSet<u64> =
            self.archived.values().flatten().copied().collect();
        for id in &self.every_row {
            assert!(
                archived.contains(id) || self.app_deleted.contains(id),
                "row {id} neither archived nor deleted by the application\n{}",
                self.log.join("\n")
            );
        }
    }
}

fn simulate(seed: u64) {
    let mut rng = Rng(seed);
    let mut m = Model::new();
    let base = 19_700; // a day ordinal
    for w in 0..6 {
        let n = rng.below(5);
        m.insert(base + w, n);
    }
    for _ in 0..(5 + rng.below(25)) {
        match rng.below(7) {
            6 => m.app_delete(&mut rng),
            5 => {
                m.expire(&mut rng);
                m.run(&mut rng, BatchMode::Move, false, true);
            }
            0 => {
                let w = base + rng.below(8) as i64;
                let n = 1 + rng.below(3);
                m.insert(w, n);
            }
            1 => m.run(&mut rng, BatchMode::Copy, false, true),
            2 => m.run(&mut rng, BatchMode::Move, true, true),
            _ => m.run(&mut rng, BatchMode::Move, false, true),
        }
    }
    // Operators review failures and force; runs without crashes converge.
    for _ in 0..6 {
        m.run(&mut rng, BatchMode::Move, true, false);
    }
    m.check_final();
}

#[test]
fn planner_never_duplicates_or_loses_rows() {
    if let Ok(seed) = std::env::var("PERMAFROST_SIM_SEED") {
        let seed: u64 = seed.parse().expect("PERMAFROST_SIM_SEED is a number");
        simulate(seed);
        return;
    }
    let budget = std::env::var("PERMAFROST_SIM_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let start = Instant::now();
    let first = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut runs = 0u64;
    while start.elapsed() < Duration::from_secs_f64(budget) || runs < 200 {
        let seed = first.wrapping_add(runs);
        if let Err(e) = std::panic::catch_unwind(|| simulate(seed)) {
            eprintln!("simulation failed; replay with PERMAFROST_SIM_SEED={seed}");
            std::panic::resume_unwind(e);
        }
        runs += 1;
    }
    eprintln!("{runs} simulated histories");
}
