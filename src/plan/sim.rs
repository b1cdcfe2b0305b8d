//! Randomised simulation of the planner against a model of Postgres and the
//! archive: runs that crash at every possible step, copies (`--no-delete`),
//! verification failures, late rows and `--force`.  After every step:
//! no row is archived twice and no row is lost; after a final clean run every
//! row is archived exactly once and gone from Postgres.
//!
//! Time-budgeted (`PERMAFROST_SIM_SECONDS`, default 2) and replayable: a
//! failure prints its seed; `PERMAFROST_SIM_SEED=N` runs exactly that seed.

use std::collections::{BTreeMap, HashMap};
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
    batches: Vec<BatchRecord>,
    xact: HashMap<u64, XactStatus>,
    failed: BTreeMap<String, String>,
    next_row: u64,
    next_xid: u64,
    every_row: Vec<u64>,
    log: Vec<String>,
}

impl Model {
    fn new() -> Self {
        Self {
            g: Granularity::Day,
            pg: BTreeMap::new(),
            archived: HashMap::new(),
            batches: vec![],
            xact: HashMap::new(),
            failed: BTreeMap::new(),
            next_row: 1,
            next_xid: 100,
            every_row: vec![],
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

    fn facts(&self) -> TableFacts {
        let mut pending: Vec<i64> = self.pg.values().copied().collect();
        pending.sort_unstable();
        pending.dedup();
        TableFacts {
            source: "db.s.t".into(),
            granularity: self.g,
            batches: self.batches.clone(),
            xact: self.xact.clone(),
            failed: self.failed.clone(),
            pending: pending.into_iter().map(|n| self.g.window(n)).collect(),
        }
    }

    fn in_range(&self, range: &Window) -> Vec<u64> {
        self.pg
            .iter()
            .filter(|(_, w)| range.contains(self.g.window(**w).start))
            .map(|(id, _)| *id)
            .collect()
    }

    /// One planned batch, executed like `archive::run_batch`, stopping at `stop`.
    fn execute(&mut self, p: &PlannedBatch, mode: BatchMode, stop: Stop) {
        let mut bag: Vec<u64> = p
            .reconcile
            .iter()
            .flat_map(|id| self.archived.get(id).cloned().unwrap_or_default())
            .collect();
        let streamed = self.in_range(&p.range);
        let mut new = vec![];
        for id in &streamed {
            if let Some(i) = bag.iter().position(|b| b == id) {
                bag.swap_remove(i);
            } else {
                new.push(*id);
            }
        }
        if streamed.is_empty() {
            return;
        }
        let reconciles = if mode == BatchMode::Move {
            p.settles.clone()
        } else {
            vec![]
        };
        if new.is_empty() && (mode == BatchMode::Copy || reconciles.is_empty()) {
            if mode == BatchMode::Move && stop == Stop::Complete {
                for id in &streamed {
                    self.pg.remove(id);
                }
            }
            return;
        }
        if stop == Stop::BeforeCommit {
            self.log.push(format!("{} crash before commit", p.batch_id));
            return;
        }
        let xid = (mode == BatchMode::Move).then(|| {
            self.next_xid += 1;
            self.next_xid
        });
        self.batches.push(BatchRecord {
            batch_id: p.batch_id.clone(),
            snapshot_id: self.batches.len() as i64,
            committed_at_ms: 0,
            range: p.range,
            sequence: p.sequence,
            mode,
            xid,
            reconciles,
            rows: new.len() as u64,
            checksum: String::new(),
        });
        assert!(
            !self.archived.contains_key(&p.batch_id),
            "batch id {} committed twice",
            p.batch_id
        );
        self.archived.insert(p.batch_id.clone(), new.clone());
        let rolled_back = match stop {
            Stop::CommitLandsAnswerLost | Stop::AfterCommit => true,
            Stop::VerifyFails => {
                self.failed.insert(p.batch_id.clone(), "mismatch".into());
                true
            }
            _ => false,
        };
        if let Some(x) = xid {
            self.xact.insert(
                x,
                if rolled_back {
                    XactStatus::Aborted
                } else {
                    XactStatus::Committed
                },
            );
        }
        if rolled_back {
            self.log.push(format!("{} {stop:?}", p.batch_id));
            return;
        }
        if mode == BatchMode::Move {
            for id in &streamed {
                self.pg.remove(id);
            }
            // A settled reconciliation clears the failures it resolved.
            for r in &p.settles {
                self.failed.remove(r);
            }
        }
        self.log.push(format!(
            "{} {mode:?} {} new, {} settled",
            p.batch_id,
            new.len(),
            streamed.len() - new.len()
        ));
    }

    fn run(&mut self, rng: &mut Rng, mode: BatchMode, force: bool, crashes: bool) {
        let plan = plan(
            &self.facts(),
            PlanOptions {
                force,
                batch_windows: 1 + rng.below(3) as u32,
                mode,
            },
        );
        assert!(plan.in_progress.is_empty());
        for p in &plan.batches {
            let stop = if !crashes {
                Stop::Complete
            } else {
                match rng.below(10) {
                    0 => Stop::BeforeCommit,
                    1 => Stop::CommitLandsAnswerLost,
                    2 => Stop::AfterCommit,
                    3 => Stop::VerifyFails,
                    _ => Stop::Complete,
                }
            };
            self.execute(p, mode, stop);
            self.check_safe();
            if stop != Stop::Complete {
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
                self.pg.contains_key(id) || seen.contains_key(id),
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
        let total: usize = self.archived.values().map(Vec::len).sum();
        assert_eq!(
            total,
            self.every_row.len(),
            "every row archived exactly once"
        );
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
        match rng.below(6) {
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
    for _ in 0..3 {
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
