//! Randomised simulation of the planner against a model of Postgres and the
//! archive: runs that crash at every possible step, with up to three batches
//! in flight whose steps interleave (one streaming while another commits to
//! Iceberg, rewriting the ledger, and a third waits for its Postgres
//! commit), copies (`--no-delete`), verification failures, late rows,
//! `--force`, snapshot expiry by another engine between any two steps, and
//! the commit a crashed run had in flight landing late (while `main` is
//! still where that run left it) at any later step, and Postgres forgetting
//! the status of every finished transaction between runs:
//! the planner sees the batches the way the real path reads
//! them — the snapshots still in the history merged with the durable ledger
//! ([`super::ledger`]), which every commit rewrites (and rolls up).  After
//! every step:
//! no row is archived twice and no row is lost; after a final clean run every
//! row is archived exactly once and gone from Postgres.
//!
//! Time-budgeted (`PERMAFROST_SIM_SECONDS`, default 2) and replayable: a
//! failure prints its seed; `PERMAFROST_SIM_SEED=N` runs exactly that seed.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::bag::HashBag;
use crate::ledger::durable::{self as ledger, LedgerEntry};
use crate::ledger::{BatchMode, BatchRecord};

use super::batch;
use std::time::{Duration, Instant};

use super::window::{Granularity, Window};
use super::*;

/// A batch's checksum as its summary carries it (never empty: the ledger
/// drops it once the batch is known settled, and reads its absence so).
fn checksum(rows: &[u64]) -> String {
    format!(
        "{:032x}",
        rows.iter()
            .fold(rows.len() as u64, |s, r| s.wrapping_add(*r))
    )
}

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

/// What a batch commit comes to ([`Model::commit_outcome`]).
enum Outcome {
    Refused,
    Lands,
    FoundLanded,
}

/// Where an in-flight batch stands: what its next step does.
enum Stage {
    /// Its next part streams its rows.
    Stream,
    /// The part records nothing: its Postgres commit (removing the rows it
    /// settled) or rollback.
    Skip {
        commit_postgres: bool,
        streamed: Vec<u64>,
        exhausted: bool,
    },
    /// The part waits for its turn to commit to Iceberg.
    Commit {
        rec: BatchRecord,
        streamed: Vec<u64>,
        new: Vec<u64>,
        exhausted: bool,
    },
    /// Committed to Iceberg: verification and the Postgres commit are next.
    Settle {
        rec: BatchRecord,
        streamed: Vec<u64>,
        exhausted: bool,
    },
}

impl Stage {
    fn name(&self) -> &'static str {
        match self {
            Self::Stream => "before streaming",
            Self::Skip { .. } => "streamed, nothing to record",
            Self::Commit { .. } => "streamed, before its commit",
            Self::Settle { .. } => "committed, before its Postgres commit",
        }
    }
}

/// A batch in flight.
struct Flight {
    p: PlannedBatch,
    /// Its place in the plan: it commits after every batch before it.
    turn: usize,
    part: batch::Part,
    bag: Option<HashBag>,
    limit: Option<u64>,
    max_parts: u64,
    stage: Stage,
}

impl Flight {
    /// Its commit waits for its turn; every other step can run.
    fn can_step(&self, turns: &Turns) -> bool {
        !matches!(self.stage, Stage::Commit { .. }) || turns.next >= self.turn
    }

    /// After a part's Postgres commit: the next part, or the end (`Some(true)`).
    fn advance(&mut self, exhausted: bool) -> Option<bool> {
        match self
            .part
            .next("db.s.t", &self.p, self.limit, exhausted, self.max_parts)
        {
            Some(next) => {
                self.part = next;
                self.stage = Stage::Stream;
                None
            }
            None => Some(true),
        }
    }
}

/// Whose turn it is to commit, as `archive::Turns` keeps it.
#[derive(Default)]
struct Turns {
    next: usize,
    finished: std::collections::BTreeSet<usize>,
}

impl Turns {
    fn finish(&mut self, i: usize) {
        if i < self.next {
            return;
        }
        self.finished.insert(i);
        while self.finished.remove(&self.next) {
            self.next += 1;
        }
    }
}

/// A table as the committer holds it: its history, its ledger property, and
/// how many commits `main` had seen (a commit on it requires `main` still
/// there, as the catalog checks).
#[derive(Clone)]
struct Base {
    history: HashSet<String>,
    stored: Vec<LedgerEntry>,
    head: usize,
}

/// The commit a crashed run had in flight: it lands later, on the table
/// as that run held it, or never.
struct Late {
    rec: BatchRecord,
    new: Vec<u64>,
    base: Base,
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
    /// The history and ledger property as the committer's table shows
    /// them (`None`: loaded before the next commit, as at the start of a
    /// run): each commit's answer; another engine's expiry since is not in it.
    base: Option<Base>,
    /// The commit a crashed run had in flight, not landed yet.
    late: Option<Late>,
    /// The batches the running run knows of: its plan's facts, then its
    /// own commits (`lake::commit::LedgerUpdate::known`).
    run_known: HashSet<String>,
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
            base: None,
            late: None,
            run_known: HashSet::new(),
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

    /// Postgres forgets every finished transaction (its commit log is
    /// truncated after freezing): `txid_status` answers NULL for them.
    fn forget(&mut self) {
        for st in self.xact.values_mut() {
            if matches!(*st, XactStatus::Committed | XactStatus::Aborted) {
                *st = XactStatus::Unknown;
            }
        }
        self.log
            .push("postgres forgot its finished transactions".into());
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
            scanned: Window::up_to(i64::MAX),
            pg_history: None,
        }
    }

    /// The batches as the real path reads them: history merged with the ledger.
    fn known(&self) -> Vec<(BatchRecord, Vec<ledger::LedgerFile>)> {
        self.known_in(&self.in_history, &self.stored)
    }

    /// The batches as a table with `history` and ledger property `stored`
    /// shows them.
    fn known_in(
        &self,
        history: &HashSet<String>,
        stored: &[LedgerEntry],
    ) -> Vec<(BatchRecord, Vec<ledger::LedgerFile>)> {
        let history: Vec<BatchRecord> = self
            .batches
            .iter()
            .filter(|b| history.contains(&b.batch_id))
            .cloned()
            .collect();
        ledger::merge(history, stored, "db.s.t")
    }

    /// The table as the catalog serves it now.
    fn current(&self) -> Base {
        Base {
            history: self.in_history.clone(),
            stored: self.stored.clone(),
            head: self.batches.len(),
        }
    }

    /// Commits `rec` the way `lake::commit::commit_batch` does: snapshot and
    /// ledger together, the ledger computed from the committer's base (which
    /// may predate another engine's expiry); the answer is the new base.
    fn commit(&mut self, rec: BatchRecord) {
        let base = self.base.take().unwrap_or_else(|| self.current());
        self.commit_on(rec, &base);
        self.base = Some(self.current());
    }

    /// Lands `rec` on `base`: snapshot, and the ledger computed from `base`.
    fn commit_on(&mut self, mut rec: BatchRecord, base: &Base) {
        self.clock += (self.next_row % 2) as i64;
        rec.committed_at_ms = self.clock;
        let settled = settled_batches(&self.facts());
        let new = LedgerEntry::of(&rec, "db.s.t", vec![]);
        self.stored = ledger::next(
            &self.known_in(&base.history, &base.stored),
            &base.stored,
            "db.s.t",
            &settled,
            &base.history,
            new,
        );
        self.in_history.insert(rec.batch_id.clone());
        self.batches.push(rec);
    }

    /// The crashed run's commit in flight lands, if `main` is still where
    /// that run left it (else the catalog refused it: it never lands).
    fn land_late(&mut self) {
        let Some(l) = self.late.take() else { return };
        let id = l.rec.batch_id.clone();
        if self.batches.len() != l.base.head {
            self.log
                .push(format!("late commit of {id} refused: main moved"));
            return;
        }
        assert!(
            !self.archived.contains_key(&id),
            "batch id {id} committed twice\n{}",
            self.log.join("\n")
        );
        self.log.push(format!("late commit of {id} landed"));
        self.archived.insert(id, l.new);
        self.commit_on(l.rec, &l.base);
    }

    /// What `lake::commit::commit_batch` makes of a commit of `batch_id`
    /// from the committer's `base`: refused before it goes out (the plan is
    /// stale: the base holds the batch, or a batch the run does not know
    /// of), landed, or found landed (the catalog refused the base and a
    /// fresh load holds the batch); refused on a fresh load the same way.
    fn commit_outcome(&self, base: &Base, batch_id: &str) -> Outcome {
        let stale = |b: &Base| {
            self.known_in(&b.history, &b.stored).iter().any(|(r, _)| {
                r.batch_id == batch_id || (!r.rolled_up && !self.run_known.contains(&r.batch_id))
            })
        };
        if stale(base) {
            return Outcome::Refused;
        }
        if base.head == self.batches.len() {
            return Outcome::Lands;
        }
        if self.archived.contains_key(batch_id) {
            return Outcome::FoundLanded;
        }
        if stale(&self.current()) {
            Outcome::Refused
        } else {
            Outcome::Lands
        }
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

    /// Runs one plan the way `archive::run_batches` does: up to
    /// `in_flight` batches at once (`parallel_windows`), started in plan
    /// order, none started after one failed.  Each step advances one batch
    /// chosen at random: its next part streams its rows (deleting them in its
    /// own open Postgres transaction), commits to Iceberg in its turn (plan
    /// order, through the one committer, rewriting the ledger while other
    /// batches' transactions are open), then verifies and commits Postgres.
    /// A crash stops every batch where it stands: open transactions abort.
    /// Another engine may expire snapshots between any two steps.
    fn run(&mut self, rng: &mut Rng, mode: BatchMode, force: bool, crashes: bool) {
        let in_flight = 1 + rng.below(3) as usize;
        let facts = self.facts();
        // 1-3 windows per batch; as many as `batch_rows` gives for an
        // estimate of the rows, right or stale; or every window of the run
        // in one (`batch_windows: all`, bounded by the row limit below).
        let batch_windows = match rng.below(5) {
            4 => crate::config::BATCH_WINDOWS_ALL,
            3 => super::windows_for_rows(
                1,
                1 + rng.below(40),
                rng.below(200),
                facts.pending.len(),
                in_flight,
            ),
            n => 1 + n as u32,
        };
        let plan = plan(
            &facts,
            PlanOptions {
                force,
                batch_windows,
                mode,
            },
        );
        assert!(plan.in_progress.is_empty());
        // The committer loads the table before the run's first commit.
        self.base = None;
        self.run_known = self
            .facts()
            .batches
            .into_iter()
            .map(|b| b.batch_id)
            .collect();
        let limit = if rng.below(2) == 0 {
            Some(1 + rng.below(4))
        } else {
            None
        };
        let mut queue = plan.batches.iter().enumerate();
        let mut flights: Vec<Flight> = vec![];
        let mut turns = Turns::default();
        let mut failed = false;
        loop {
            while !failed && flights.len() < in_flight {
                let Some((turn, p)) = queue.next() else { break };
                flights.push(self.start(p, turn, mode, limit));
            }
            if flights.is_empty() {
                return;
            }
            match rng.below(16) {
                0 if crashes => {
                    self.crash(&flights, &turns, rng);
                    return;
                }
                // Another engine expires snapshots while batches are in flight.
                1 => self.expire(rng),
                2 => self.land_late(),
                _ => {}
            }
            let ready: Vec<usize> = (0..flights.len())
                .filter(|i| flights[*i].can_step(&turns))
                .collect();
            let i = ready[rng.below(ready.len() as u64) as usize];
            let mut trouble = || if crashes { rng.below(12) } else { 99 };
            let end = self.step(&mut flights[i], mode, &mut turns, &mut trouble);
            self.check_safe();
            if let Some(ok) = end {
                let f = flights.remove(i);
                turns.finish(f.turn);
                failed |= !ok;
            }
        }
    }

    /// A planned batch about to run its first part.
    fn start(&self, p: &PlannedBatch, turn: usize, mode: BatchMode, limit: Option<u64>) -> Flight {
        let archived: Vec<u128> = p
            .reconcile
            .iter()
            .flat_map(|id| self.archived.get(id).cloned().unwrap_or_default())
            .map(u128::from)
            .collect();
        let limit = batch::row_limit(mode, limit);
        let rows_now = self.in_range(&p.range).len() as u64;
        // A copy of a range as its open batches left it reads nothing.
        let stage = match batch::unchanged(p, rows_now) {
            true => Stage::Skip {
                commit_postgres: false,
                streamed: vec![],
                exhausted: true,
            },
            false => Stage::Stream,
        };
        Flight {
            p: p.clone(),
            turn,
            part: batch::Part::first(p),
            bag: (!archived.is_empty()).then(|| HashBag::new(archived)),
            limit,
            max_parts: batch::max_parts(limit, rows_now),
            stage,
        }
    }

    /// The process dies: every open Postgres transaction aborts; the commit
    /// in flight (the batch whose turn it is, at its commit) may still land
    /// later.
    fn crash(&mut self, flights: &[Flight], turns: &Turns, rng: &mut Rng) {
        let committing = flights.iter().find_map(|f| match &f.stage {
            Stage::Commit { rec, new, .. } if f.can_step(turns) => Some((rec, new)),
            _ => None,
        });
        if let Some((rec, new)) = committing.filter(|_| rng.below(2) == 0) {
            // Only a commit that goes out can land: on the committer's base,
            // or on a fresh load after the catalog refused that.
            let base = self.base.clone().unwrap_or_else(|| self.current());
            if let Outcome::Lands = self.commit_outcome(&base, &rec.batch_id) {
                let base = if base.head == self.batches.len() {
                    base
                } else {
                    self.current()
                };
                self.late = Some(Late {
                    rec: rec.clone(),
                    new: new.clone(),
                    base,
                });
            }
        }
        for st in self.xact.values_mut() {
            if *st == XactStatus::InProgress {
                *st = XactStatus::Aborted;
            }
        }
        let at: Vec<String> = flights
            .iter()
            .map(|f| format!("{} {}", f.part.batch_id, f.stage.name()))
            .collect();
        self.log.push(format!("crash with {}", at.join(", ")));
    }

    /// Advances `f` one step, with the same decisions as the real path
    /// ([`super::batch`]); `trouble()` at 0 loses a landed commit's answer,
    /// at 1 fails verification (both roll the part back).  Returns whether
    /// the batch ended well (`None`: it goes on).
    fn step(
        &mut self,
        f: &mut Flight,
        mode: BatchMode,
        turns: &mut Turns,
        trouble: &mut dyn FnMut() -> u64,
    ) -> Option<bool> {
        match std::mem::replace(&mut f.stage, Stage::Stream) {
            Stage::Stream => {
                f.stage = self.stream_part(f, mode);
                None
            }
            Stage::Skip {
                commit_postgres,
                streamed,
                exhausted,
            } => {
                if commit_postgres {
                    for id in &streamed {
                        self.pg.remove(id);
                    }
                }
                f.advance(exhausted)
            }
            Stage::Commit {
                mut rec,
                streamed,
                new,
                exhausted,
            } => {
                let Some(base) = self.base.clone() else {
                    // The committer loads the table (a step of its own:
                    // a late commit may land before this one goes out).
                    self.base = Some(self.current());
                    f.stage = Stage::Commit {
                        rec,
                        streamed,
                        new,
                        exhausted,
                    };
                    return None;
                };
                if let Err(why) = self.commit_part(base, &mut rec, &new) {
                    self.abort(&rec, why);
                    return Some(false);
                }
                let batch_id = rec.batch_id.clone();
                if f.limit.is_none() {
                    turns.finish(f.turn);
                }
                if trouble() == 0 {
                    // No answer: the committer reloads before its next commit.
                    self.base = None;
                    self.abort(&rec, "commit landed, answer lost");
                    return Some(false);
                }
                self.log.push(format!(
                    "{batch_id} {mode:?} part {} committed: {} new, {} settled",
                    f.part.number,
                    new.len(),
                    streamed.len() - new.len()
                ));
                f.stage = Stage::Settle {
                    rec,
                    streamed,
                    exhausted,
                };
                None
            }
            Stage::Settle {
                rec,
                streamed,
                exhausted,
            } => {
                if trouble() == 1 {
                    self.failed.insert(rec.batch_id.clone(), "mismatch".into());
                    self.abort(&rec, "verification failed");
                    return Some(false);
                }
                if let Some(x) = rec.xid {
                    self.xact.insert(x, XactStatus::Committed);
                }
                if mode == BatchMode::Move {
                    for id in &streamed {
                        self.pg.remove(id);
                    }
                    for r in &rec.reconciles {
                        self.failed.remove(r);
                    }
                }
                self.log.push(format!("{} settled", rec.batch_id));
                f.advance(exhausted)
            }
        }
    }

    /// Commits a part's `rec` from the committer's `base` the way
    /// `lake::commit::commit_batch` does ([`Model::commit_outcome`]);
    /// `Err`: why the part rolls back instead.
    fn commit_part(
        &mut self,
        base: Base,
        rec: &mut BatchRecord,
        new: &[u64],
    ) -> Result<(), &'static str> {
        let batch_id = rec.batch_id.clone();
        match self.commit_outcome(&base, &batch_id) {
            Outcome::Refused => {
                self.base = None;
                return Err("commit refused: the plan is stale");
            }
            Outcome::FoundLanded => {
                // Verification reads the landed snapshot's rows.
                self.base = Some(self.current());
                if self.archived.get(&batch_id).map(Vec::as_slice) != Some(new) {
                    self.failed.insert(batch_id, "mismatch".into());
                    return Err("found landed, verification failed");
                }
                self.log.push(format!("{batch_id} found landed"));
            }
            Outcome::Lands => {
                assert!(
                    !self.archived.contains_key(&batch_id),
                    "batch id {batch_id} committed twice\n{}",
                    self.log.join("\n")
                );
                rec.snapshot_id = self.batches.len() as i64;
                // Refused and prepared again from a fresh load when `main`
                // moved since the base.
                self.base = (base.head == self.batches.len()).then_some(base);
                self.commit(rec.clone());
                self.archived.insert(batch_id.clone(), new.to_vec());
            }
        }
        self.run_known.insert(batch_id);
        Ok(())
    }

    /// The part's Postgres transaction rolls back.
    fn abort(&mut self, rec: &BatchRecord, why: &str) {
        if let Some(x) = rec.xid {
            self.xact.insert(x, XactStatus::Aborted);
        }
        self.log.push(format!("{} {why}", rec.batch_id));
    }

    /// Streams `f`'s next part (as its statement, [`batch::Take`], selects
    /// the rows) and decides what it records.  A move part opens its
    /// Postgres transaction here: its id is in progress until it ends.
    fn stream_part(&mut self, f: &mut Flight, mode: BatchMode) -> Stage {
        let p = &f.p;
        let take = batch::take(mode, f.limit, false);
        let streamed = self.stream(&p.range, take);
        let hashes: Vec<u128> = streamed.iter().map(|id| u128::from(*id)).collect();
        let keep = batch::keep_unarchived(f.bag.as_mut(), &hashes).expect("a bag in memory");
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
        match batch::settle(
            p,
            mode,
            exhausted,
            streamed.len() as u64,
            new.len() as u64,
            false,
        ) {
            batch::Settle::Skip {
                commit_postgres, ..
            } => Stage::Skip {
                commit_postgres,
                streamed,
                exhausted,
            },
            batch::Settle::Record { settles } => {
                let xid = (mode == BatchMode::Move).then(|| {
                    self.next_xid += 1;
                    self.xact.insert(self.next_xid, XactStatus::InProgress);
                    self.next_xid
                });
                let rec = f
                    .part
                    .record(p, mode, xid, settles, new.len() as u64, checksum(&new));
                Stage::Commit {
                    rec,
                    streamed,
                    new,
                    exhausted,
                }
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

    /// Once Postgres has forgotten every transaction and holds no rows,
    /// every move batch is settled (none stays open for ever, none keeps
    /// its files in the ledger), but for failures nobody forced.
    fn check_settled_once_forgotten(&mut self) {
        self.forget();
        let facts = self.facts();
        let states = batch_states(&facts);
        for b in &facts.batches {
            if b.mode == BatchMode::Move && !facts.failed.contains_key(&b.batch_id) {
                assert_eq!(
                    states.get(&b.batch_id),
                    Some(&BatchState::Settled),
                    "batch {} not settled once forgotten\n{}",
                    b.batch_id,
                    self.log.join("\n")
                );
            }
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
        match rng.below(8) {
            7 => m.forget(),
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
    m.check_settled_once_forgotten();
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
