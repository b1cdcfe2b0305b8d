//! Exactly-once under crashes, concurrent writers, a second instance and
//! outages.  Every scenario ends with a reconciliation: the multiset of rows
//! (Postgres before + every row inserted during the test) equals the rows in
//! the Iceberg table plus the rows still in Postgres, none in both, none twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;
use crate::services;
use permafrost::ledger::keys;

const DAY_US: i64 = 86_400_000_000;

/// A sensor table with `windows` daily windows of exactly `per_window` rows, all older
/// than the lag, a copy of it (`before_rows`) and a log of rows inserted later.
pub(crate) struct Fixture {
    pub(crate) s: Services,
    pub(crate) db: TestDb,
    pub(crate) ws: Ws,
    pub(crate) cat: CatalogSetup,
    pub(crate) cfg: String,
    pub(crate) env: Vec<(String, String)>,
}

impl Fixture {
    pub(crate) async fn new(
        s: &Services,
        cat: Option<CatalogSetup>,
        kind: Cat,
        per_window: u64,
        windows: u64,
        table_extra: &str,
        extra: &str,
    ) -> Self {
        let db = TestDb::create(s, "safety").await;
        let c = db.client().await;
        c.batch_execute(permafrost::demo::SAMPLE_SCHEMA)
            .await
            .expect("schema");
        let n = per_window * windows;
        c.batch_execute(&format!(
            "INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, value, unit, quality, payload) \
             SELECT date_trunc('day', now()) - interval '20 days' - (i / {per_window}) * interval '1 day' \
                    + (i % {per_window}) * (interval '1 day' / {per_window}), i % 8, 'sensor-' || (i % 8), \
                    (i % 1000) / 7.0, 'celsius', (i % 10000) / 100.0, jsonb_build_object('i', i) \
             FROM generate_series(0, {n} - 1) AS i; \
             CREATE TABLE before_rows AS SELECT * FROM sensor_readings; \
             CREATE TABLE inserted_log (LIKE sensor_readings);"
        ))
        .await
        .expect("data");
        let ws = Ws::new();
        let cat = match cat {
            Some(c) => c,
            None => CatalogSetup::new(kind, s, &ws).await,
        };
        let cfg = ws
            .config(
                "permafrost.yaml",
                &format!(
                    "database:\n  dsn: \"{}\"\n{}global:\n  namespace: {}\n{extra}tables:\n\
                     \x20 - name: sensor_readings\n    timestamp_column: recorded_at\n    partition_by: day\n    lag: 15d\n{table_extra}",
                    db.dsn, cat.yaml, cat.namespace
                ),
            )
            .to_string_lossy()
            .to_string();
        let env = CatalogSetup::env(s)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        Self {
            s: s.clone(),
            db,
            ws,
            cat,
            cfg,
            env,
        }
    }

    pub(crate) fn env_with<'a>(
        &'a self,
        more: &'a [(&'a str, &'a str)],
    ) -> Vec<(&'a str, &'a str)> {
        let mut e: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        e.extend_from_slice(more);
        e
    }

    pub(crate) fn archive(&self, extra_args: &[&str], more_env: &[(&str, &str)]) -> Out {
        let mut args = vec!["archive", "-c", self.cfg.as_str(), "--json"];
        args.extend_from_slice(extra_args);
        self.ws.run_env(&args, &self.env_with(more_env))
    }

    /// An archive run with `extra_args`, killed by the fault at `point`.
    fn archive_killed_at(&self, extra_args: &[&str], point: &str) {
        let out = self.archive(extra_args, &[("PERMAFROST_FAULT", point)]);
        assert_ne!(
            out.code, 0,
            "{point}: the fault should kill the run:\n{}",
            out.stderr
        );
        assert!(
            out.stderr.contains(&format!("fault injected at `{point}`")),
            "{point}: {}",
            out.stderr
        );
    }

    fn spawn_archive(&self, extra_args: &[&str], more_env: &[(&str, &str)]) -> std::process::Child {
        let mut args = vec!["archive", "-c", self.cfg.as_str(), "--json"];
        args.extend_from_slice(extra_args);
        self.ws.spawn(&args, &self.env_with(more_env))
    }

    fn reconcile(&self) -> Value {
        let req = json!({
            "catalog_name": self.cat.py_name,
            "catalog": self.cat.py_props,
            "table": format!("{}.sensor_readings", self.cat.namespace),
            "pg_dsn": self.db.dsn,
            "source_table": "sensor_readings",
            "expected_tables": ["before_rows", "inserted_log"],
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("req.json");
        std::fs::write(&p, req.to_string()).expect("write");
        let script = crate::common::source_dir().join("tests/py/reconcile.py");
        let out = std::process::Command::new(&self.s.python)
            .arg(script)
            .arg(&p)
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "reconcile.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }

    /// `ANALYZE`s the table (statistics for `batch_rows`).
    pub(crate) async fn analyze(&self) {
        let c = self.db.client().await;
        c.batch_execute("ANALYZE sensor_readings")
            .await
            .expect("analyze");
    }

    /// The report of `archive --dry-run` (which must succeed).
    pub(crate) fn dry_run(&self) -> Value {
        let dry = self.archive(&["--dry-run"], &[]);
        assert_eq!(dry.code, 0, "{}", dry.stderr);
        dry.json()
    }

    /// Gathers the table's statistics, then checks that a dry run groups
    /// its windows `n` at a time (aligned: the first and last may be fewer).
    pub(crate) async fn assert_grouped(&self, n: u64) {
        self.analyze().await;
        let sizes = each_of(&self.dry_run()[0], "planned", "windows");
        assert!(
            sizes.contains(&n) && sizes.iter().all(|w| (1..=n).contains(w)),
            "batches of {n} windows planned: {sizes:?}"
        );
    }

    pub(crate) fn assert_reconciled(&self, what: &str) -> Value {
        let r = self.reconcile();
        assert_eq!(r["ok"], true, "{what}: not exactly once: {r}");
        r
    }
}

/// Inserts rows into the archived windows (and logs them) until stopped.
struct Inserter {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<u64>,
}

impl Inserter {
    async fn start(dsn: &str) -> Self {
        let c = connect(dsn).await;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = tokio::spawn(async move {
            let mut n = 0u64;
            while !flag.load(Ordering::SeqCst) {
                let r = c
                    .batch_execute(
                        "WITH r AS (INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, value, unit, quality, payload) \
                         VALUES (date_trunc('day', now()) - interval '25 days' + random() * interval '6 days', 77, 'live', random(), 'celsius', 1.25, '{\"live\": true}') \
                         RETURNING *) INSERT INTO inserted_log SELECT * FROM r",
                    )
                    .await;
                if r.is_ok() {
                    n += 1;
                }
            }
            n
        });
        Self { stop, handle }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.await.unwrap_or(0)
    }
}

/// Every fault point × {quiet table, concurrent inserts}: crash there, run
/// again to completion, reconcile.
async fn fault_matrix(kind: Cat, shape: &str) {
    fault_matrix_of(kind, shape, (400, 6), None).await;
}

/// [`fault_matrix`] over `windows` windows of `per_window` rows; with
/// `grouped`, the table is analysed first and each case's dry run must plan
/// batches of that many windows (`batch_rows` at work).
async fn fault_matrix_of(
    kind: Cat,
    shape: &str,
    (per_window, windows): (u64, u64),
    grouped: Option<u64>,
) {
    let s = services!();
    let mut lines = Vec::new();
    for inserts in [false, true] {
        for point in permafrost::fault::POINTS {
            let f = Fixture::new(&s, None, kind, per_window, windows, shape, "").await;
            if let Some(n) = grouped {
                f.assert_grouped(n).await;
            }
            let inserter = if inserts {
                Some(Inserter::start(&f.db.dsn).await)
            } else {
                None
            };
            f.archive_killed_at(&[], point);
            let out = f.archive(&[], &[]);
            let inserted = match inserter {
                Some(i) => i.stop().await,
                None => 0,
            };
            assert_eq!(
                out.code, 0,
                "{point}: the next run completes:\n{}",
                out.stderr
            );
            let r = f.assert_reconciled(&format!("{kind:?} {point} inserts={inserts}"));
            let line = format!(
                "{kind:?} | {point:<15} | {} | ok: expected {} = iceberg {} + postgres {} ({} inserted during the test)",
                if inserts {
                    "concurrent inserts"
                } else {
                    "quiet table       "
                },
                r["expected"],
                r["iceberg"],
                r["postgres"],
                inserted
            );
            eprintln!("MATRIX {line}");
            lines.push(line);
        }
    }
    eprintln!(
        "fault matrix ({} cases, all green):\n{}",
        lines.len(),
        lines.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn fault_matrix_rest_catalog() {
    fault_matrix(Cat::Rest, "    max_batch_rows: 300\n").await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn fault_matrix_sql_catalog() {
    fault_matrix(Cat::Sqlite, "    max_batch_rows: 300\n").await;
}

/// The same matrix with the windows grouped by `batch_rows` (the default's
/// path; statistics gathered first): batches of two days, two extracting
/// at once, so a crash finds multi-window batches in every state.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn fault_matrix_batches_grouped_by_rows() {
    fault_matrix_of(
        Cat::Sqlite,
        "    batch_rows: 400\n    parallel_windows: 2\n",
        (200, 12),
        Some(2),
    )
    .await;
}

/// The same matrix with three batches in flight (`parallel_windows: 3`):
/// the fault stops the whole process while the other batches are wherever
/// they were (extracting, committed but not verified, verified but not
/// committed in Postgres); the next run (in parallel too) settles every
/// state exactly once.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn fault_matrix_parallel_windows() {
    fault_matrix(
        Cat::Sqlite,
        "    parallel_windows: 3\n    max_batch_rows: 300\n",
    )
    .await;
}

/// `parallel_windows: 3`: while the first batch to commit is held right
/// after its Iceberg commit (its rows still in Postgres, in its open
/// transaction), the other two windows' batches run to the end on their own
/// connections and Postgres transactions; one batch at a time would never
/// get there.  Then the held batch finishes and every row is archived once.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn parallel_windows_run_batches_side_by_side() {
    let s = services!();
    let f = Fixture::new(
        &s,
        None,
        Cat::Sqlite,
        50,
        3,
        "    parallel_windows: 3\n",
        "",
    )
    .await;
    let c = f.db.client().await;
    assert_eq!(count(&c, "sensor_readings", "true").await, 150);
    let out = paused_run(&f, "after-commit", async || {
        // The other two batches delete their windows while this one waits.
        wait_for_rows(
            &c,
            50,
            "the other batches did not finish while the first was held",
        )
        .await;
    })
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.json();
    assert_eq!(archived_rows(&report), 150, "{report}");
    let starts: Vec<&str> = report[0]["batches"]
        .as_array()
        .expect("batches")
        .iter()
        .filter_map(|b| b["window_start"].as_str())
        .collect();
    let mut sorted = starts.clone();
    sorted.sort();
    assert_eq!(starts, sorted, "reports come in window order");
    assert_eq!(count(&c, "sensor_readings", "true").await, 0);
    f.assert_reconciled("parallel windows");
}

/// `parallel_windows: 2` with the default `pool_size` (cores + 4): workers
/// beside the two extraction slots.  While the first batch is held after
/// its verification (its Postgres transaction still open), the other three
/// windows are extracted, committed and settled, and the run holds five
/// connections: its own (the lock) and one worker per window (two
/// extracting, the others finishing; four windows, so four workers).
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_spare_worker_lets_extraction_go_on_while_a_batch_finishes() {
    let s = services!();
    let table = "    parallel_windows: 2\n";
    let f = Fixture::new(&s, None, Cat::Sqlite, 50, 4, table, "").await;
    let c = f.db.client().await;
    let mut connections = 0;
    let out = paused_run(&f, "after-verify", async || {
        wait_for_rows(
            &c,
            50,
            "the other windows were not archived while the first was held",
        )
        .await;
        let in_transaction;
        (connections, in_transaction) = run_sessions(&c).await;
        assert_eq!(in_transaction, 1, "the held batch's transaction");
    })
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(connections, 5, "the lock and a worker per window");
    assert_eq!(archived_rows(&out.json()), 200);
    assert_eq!(count(&c, "sensor_readings", "true").await, 0);
    f.assert_reconciled("spare worker");
}

/// A batch killed after verifying leaves its rows both in the archive and
/// in Postgres; the run after it reconciles them from hashes kept on disk
/// (the memory budget lowered to 100 hashes, so one batch of 2,000 rows
/// spills as millions would past the default): nothing archived again,
/// every row deleted, each source row in the archive exactly once.  With
/// no temporary file to write, the run stops first and deletes nothing.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn an_unsettled_batch_larger_than_memory_is_reconciled_from_disk() {
    let s = services!();
    let f = Fixture::new(
        &s,
        None,
        Cat::Sqlite,
        400,
        5,
        "    batch_windows: all\n",
        "",
    )
    .await;
    f.archive_killed_at(&[], "after-verify");
    let c = f.db.client().await;
    // Without a writable TMPDIR: one line and a hint, exit 1, nothing deleted.
    let tmp = ("TMPDIR", "/nonexistent/permafrost-tmp");
    let out = f.archive(&[], &[("PERMAFROST_BAG_HASHES", "100"), tmp]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("cannot spill row hashes to a temporary file")
            && out
                .stderr
                .contains("hint: a batch meeting millions of rows"),
        "{}",
        out.stderr
    );
    assert_eq!(count(&c, "sensor_readings", "true").await, 2000);
    let out = f.archive(&[], &[("PERMAFROST_BAG_HASHES", "100")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("2000 row hashes are kept in a temporary file: memory holds at most 100"),
        "{}",
        out.stderr
    );
    let j = out.json();
    let batches = j[0]["batches"].as_array().expect("batches");
    let sum = |k: &str| {
        batches
            .iter()
            .map(|b| b[k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    assert_eq!((sum("rows"), sum("reconciled_rows")), (0, 2000), "{j}");
    assert_eq!(count(&c, "sensor_readings", "true").await, 0);
    f.assert_reconciled("reconciled from disk");
}

/// A parallel copy killed at any point on its way (before its read
/// transaction ends, after it gave its connection back, after its commit)
/// is completed by the next copy without a row twice: a move after it
/// finds every copied row already archived and deletes them, and the
/// archive then holds each source row exactly once.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_killed_parallel_copy_is_completed_exactly_once() {
    let s = services!();
    let points = permafrost::fault::POINTS
        .iter()
        .filter(|p| **p != "after-pg-commit");
    for point in points {
        let table = "    parallel_windows: 2\n";
        let f = Fixture::new(&s, None, Cat::Sqlite, 200, 6, table, "").await;
        let c = f.db.client().await;
        f.archive_killed_at(&["--no-delete"], point);
        let out = f.archive(&["--no-delete"], &[]);
        assert_eq!(
            out.code, 0,
            "{point}: the next copy completes:\n{}",
            out.stderr
        );
        assert_eq!(
            count(&c, "sensor_readings", "true").await,
            1200,
            "{point}: a copy deletes nothing"
        );
        let out = f.archive(&[], &[]);
        assert_eq!(out.code, 0, "{point}: the move after it:\n{}", out.stderr);
        let moved = archived_rows(&out.json());
        assert_eq!(
            moved, 0,
            "{point}: every row was copied already: {}",
            out.stdout
        );
        assert_eq!(count(&c, "sensor_readings", "true").await, 0, "{point}");
        f.assert_reconciled(&format!("copy killed at {point}"));
    }
}

/// The run's sessions in this database, and how many of them are in a
/// transaction.
async fn run_sessions(c: &tokio_postgres::Client) -> (i64, i64) {
    let row = c
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE xact_start IS NOT NULL) \
             FROM pg_stat_activity WHERE application_name = 'permafrost' AND datname = current_database()",
            &[],
        )
        .await
        .expect("pg_stat_activity");
    (row.get(0), row.get(1))
}

/// A copy (`--no-delete`) changes nothing in Postgres, so its batches end
/// their transactions once read and give their connections back: with the
/// first window's batch held after its verification, the other three are
/// copied on the two slots' connections, and the run holds three: its own
/// (the lock) and one per slot, none of them in a transaction (no snapshot
/// held while a batch commits and reads back).
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_copy_gives_its_connection_back_once_read() {
    let s = services!();
    let table = "    parallel_windows: 2\n";
    let f = Fixture::new(&s, None, Cat::Sqlite, 50, 4, table, "").await;
    let c = f.db.client().await;
    let pause = Pause::new();
    let spec = pause.env("after-verify");
    let child = f.spawn_archive(&["--no-delete"], &[("PERMAFROST_PAUSE", spec.as_str())]);
    let Some(handle) = pause.wait_reached(Duration::from_secs(120)) else {
        panic!("never reached after-verify:\n{}", finish(child).stderr);
    };
    // The other three batches commit while the first is held.
    let snapshots = || {
        let out = f.ws.run_env(
            &["snapshots", "-c", &f.cfg, "-t", "sensor_readings", "--json"],
            &f.env_with(&[]),
        );
        out.json().as_array().map_or(0, Vec::len)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while snapshots() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the other windows were not copied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (connections, in_transaction) = run_sessions(&c).await;
    Pause::resume(handle);
    let out = finish(child);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(connections, 3, "the lock and one connection per slot");
    assert_eq!(
        in_transaction, 0,
        "no transaction open while batches finish"
    );
    assert_eq!(archived_rows(&out.json()), 200);
    assert_eq!(
        count(&c, "sensor_readings", "true").await,
        200,
        "a copy deletes nothing"
    );
}

/// Rows a batch in flight cannot take (inserted into its window after its
/// `DELETE`) are reported as left behind, once, with the oldest's time; the
/// next run archives them as a second batch of the window.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn rows_inserted_behind_a_batch_in_flight_are_reported_left_behind() {
    let s = services!();
    let table = "    parallel_windows: 2\n";
    let f = Fixture::new(&s, None, Cat::Sqlite, 50, 4, table, "").await;
    let c = f.db.client().await;
    let mut held = 0i64;
    let out = paused_run(&f, "after-verify", async || {
        // The held batch's rows stay visible to us until it settles.
        wait_for_rows(&c, 50, "the other windows were not archived while one was held").await;
        held = c
            .query_one(
                "SELECT (extract(epoch FROM min(recorded_at)) * 1000000)::int8 FROM sensor_readings",
                &[],
            )
            .await
            .expect("oldest held row")
            .get(0);
        c.execute(
            "WITH r AS (INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, value, unit) \
             SELECT to_timestamp($1::int8 / 1e6) + i * interval '1 second', 1, 'late', 1, 'c' \
             FROM generate_series(0, 6) AS i RETURNING *) INSERT INTO inserted_log SELECT * FROM r",
            &[&held],
        )
        .await
        .expect("late rows");
    })
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(archived_rows(&out.json()), 200);
    assert_eq!(
        count(&c, "sensor_readings", "true").await,
        7,
        "the late rows stay"
    );
    let pending = &out.json()[0]["pending"];
    assert_eq!(pending["rows"], 7, "{}", out.stdout);
    let oldest = permafrost::plan::window::rfc3339(held);
    assert_eq!(pending["oldest"], oldest.as_str(), "{}", out.stdout);
    // The next run takes them (a second batch of that window).
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(archived_rows(&out.json()), 7);
    assert_eq!(out.json()[0]["pending"]["rows"], 0, "{}", out.stdout);
    f.assert_reconciled("late rows");
}

/// Waits (up to 2 minutes; `what` is the failure) until `sensor_readings`
/// holds `rows` rows, as other batches of a paused run settle.
async fn wait_for_rows(c: &tokio_postgres::Client, rows: i64, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while count(c, "sensor_readings", "true").await != rows {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The data files as written: zstd everywhere, a dictionary for the
/// repetitive text column, none for the (nearly distinct) time column.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn data_files_keep_dictionaries_for_repetitive_columns_only() {
    use parquet::basic::{Compression, Encoding};
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let s = services!();
    let f = Fixture::new(&s, None, Cat::Sqlite, 200, 2, "", "").await;
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let files = parquet_files(f.ws.path());
    assert_eq!(files.len(), 2, "one file per window: {files:?}");
    for path in files {
        let file = std::fs::File::open(&path).expect("data file");
        let reader = SerializedFileReader::new(file).expect("parquet");
        let group = reader.metadata().row_group(0);
        let chunk = |name: &str| {
            group
                .columns()
                .iter()
                .find(|c| c.column_path().string() == name)
                .unwrap_or_else(|| panic!("no column {name} in {path:?}"))
        };
        let dictionary = |name: &str| {
            chunk(name)
                .encodings()
                .any(|e| matches!(e, Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY))
        };
        // Mostly distinct values: plain pages.
        for name in ["recorded_at", "id", "value", "quality", "payload"] {
            assert!(!dictionary(name), "{name} in {path:?}");
        }
        // Eight sensors, one unit: a dictionary.
        for name in ["sensor_id", "sensor_name", "unit"] {
            assert!(dictionary(name), "{name} in {path:?}");
        }
        assert!(
            group
                .columns()
                .iter()
                .all(|c| matches!(c.compression(), Compression::ZSTD(_))),
            "{path:?}"
        );
    }
}

/// Wide rows (4 KB of text each, half of it left by zstd) are written in
/// row groups of at most `ROW_GROUP_BYTES` each: a writer holds its row
/// group in memory until it is full and a reader fetches one whole, so the
/// row limit alone (512 Ki rows) let a daily window of wide rows be one
/// row group as large as the file (128 MiB) — peak RSS 430–470 MiB on a
/// table of 1.9 KB rows (README, "Memory").  Every row is read back.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn wide_rows_make_row_groups_of_bounded_bytes() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let s = services!();
    let db = TestDb::create(&s, "wide").await;
    wide_table(&db.client().await, 12_000, 1).await;
    let ws = Ws::new();
    let cat = CatalogSetup::new(Cat::Sqlite, &s, &ws).await;
    let cfg = ws.config(
        "wide.yaml",
        &format!(
            "database:\n  dsn: \"{}\"\n{}global:\n  namespace: {}\ntables:\n\
             \x20 - name: wide\n    timestamp_column: ts\n    partition_by: day\n    lag: 1d\n",
            db.dsn, cat.yaml, cat.namespace
        ),
    );
    let out = ws.run(&["archive", "--json", "-c", &cfg.to_string_lossy()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(archived_rows(&out.json()), 12_000, "{}", out.stdout);
    let limit = permafrost::lake::write::ROW_GROUP_BYTES as i64;
    let mut groups = Vec::new();
    for path in parquet_files(ws.path()) {
        let file = std::fs::File::open(&path).expect("data file");
        let reader = SerializedFileReader::new(file).expect("parquet");
        for g in reader.metadata().row_groups() {
            groups.push((g.num_rows(), g.compressed_size()));
        }
    }
    let rows: i64 = groups.iter().map(|g| g.0).sum();
    assert_eq!(rows, 12_000, "{groups:?}");
    assert!(groups.len() >= 2, "one row group of {groups:?}");
    // A row group closes once past the limit: by less than a page then.
    assert!(
        groups.iter().all(|g| g.1 <= limit + (2 << 20)),
        "{groups:?} against {limit}"
    );
}

/// Wide rows on more slots than `global.memory_limit` holds wait for
/// memory: with 64 MiB (one wide slot's share) and `parallel_windows: 4`,
/// four hourly batches of 4 KB rows extract one at a time, and every row
/// is archived.  (Without the gate the four overlap: `extraction_slots_peak`
/// 2–4.)
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn wide_rows_take_the_slots_the_memory_limit_holds() {
    let s = services!();
    let db = TestDb::create(&s, "wideslots").await;
    let c = db.client().await;
    wide_table(&c, 4800, 3).await;
    let ws = Ws::new();
    let cat = CatalogSetup::new(Cat::Sqlite, &s, &ws).await;
    let cfg = ws.config(
        "wide.yaml",
        &format!(
            "database:\n  dsn: \"{}\"\n  pool_size: 8\n{}global:\n  namespace: {}\n  memory_limit: 64MiB\n\
             tables:\n  - name: wide\n    timestamp_column: ts\n    partition_by: hour\n    lag: 1d\n\
             \x20   parallel_windows: 4\n    batch_windows: 1\n",
            db.dsn, cat.yaml, cat.namespace
        ),
    );
    let check = ws.run(&["check", "--json", "-c", &cfg.to_string_lossy()]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    let warnings = check.json()["tables"][0]["warnings"].to_string();
    assert!(
        warnings.contains("1 of 4 extraction slots fit in `global.memory_limit` (64 MiB)"),
        "{warnings}"
    );
    let out = ws.run(&["archive", "--json", "-c", &cfg.to_string_lossy()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.json();
    assert_eq!(archived_rows(&report), 4800, "{}", out.stdout);
    assert_eq!(report[0]["batches"].as_array().map(Vec::len), Some(4));
    assert_eq!(report[0]["extraction_slots_peak"], 1, "{}", out.stdout);
    assert!(
        out.stderr.contains("rows of about")
            && out
                .stderr
                .contains("1 of 4 extraction slots fit in `global.memory_limit` (64 MiB)"),
        "{}",
        out.stderr
    );
    let left: i64 = c
        .query_one("SELECT count(*) FROM wide", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0);
}

/// Creates `wide`: `rows` rows `seconds` apart from 2024-01-01, each with a
/// payload of 4 KB of random hex (the first one's NULL), analysed.
pub(crate) async fn wide_table(c: &tokio_postgres::Client, rows: u32, seconds: u32) {
    c.batch_execute(&format!(
        "CREATE TABLE wide (ts timestamptz NOT NULL, id bigint, payload text); \
         INSERT INTO wide SELECT '2024-01-01'::timestamptz + g.i * interval '{seconds} seconds', \
           g.i, (SELECT string_agg(md5(x::text || g.i::text || random()::text), '') \
            FROM generate_series(1, 128) x WHERE g.i > 0) \
         FROM generate_series(0, {rows} - 1) g(i); \
         ANALYZE wide"
    ))
    .await
    .expect("wide rows");
}

/// Every `.parquet` file under `dir`.
fn parquet_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(parquet_files(&p));
        } else if p.extension().is_some_and(|e| e == "parquet") {
            out.push(p);
        }
    }
    out
}

/// The same matrix with one batch per run: all six windows in one range,
/// split by `max_batch_rows` into snapshots that each span windows.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn fault_matrix_one_batch_per_run() {
    fault_matrix(
        Cat::Sqlite,
        "    batch_windows: all\n    max_batch_rows: 900\n",
    )
    .await;
}

/// 30 daily windows of 100 rows each in the SQLite catalog, the table
/// configured with `table_extra`.
async fn small_days(s: &Services, table_extra: &str) -> Fixture {
    Fixture::new(s, None, Cat::Sqlite, 100, 30, table_extra, "").await
}

/// `batch_windows: all`: a catch-up run over many windows commits one
/// snapshot per `max_batch_rows` rows, not one per window.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn batch_windows_all_makes_fewer_fuller_snapshots() {
    let s = services!();
    let f = small_days(&s, "    batch_windows: all\n    max_batch_rows: 1000\n").await;
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows = each_of(&out.json()[0], "batches", "rows");
    assert_eq!(rows, vec![1000, 1000, 1000], "30 windows, 3 snapshots");
    let snaps =
        f.ws.run_env(
            &["snapshots", "-c", &f.cfg, "-t", "sensor_readings", "--json"],
            &f.env_with(&[]),
        )
        .json();
    assert_eq!(snaps.as_array().map(Vec::len), Some(3), "{snaps}");
    let list =
        f.ws.run_env(&["list", "-c", &f.cfg, "--json"], &f.env_with(&[]))
            .json();
    let archived = list
        .as_array()
        .expect("list")
        .iter()
        .filter(|w| w["state"] == "archived")
        .count();
    assert_eq!(archived, 30, "{list}");
    f.assert_reconciled("batch_windows: all");
}

/// `batch_rows`: windows smaller than it share a batch — as many as hold
/// about that many rows by Postgres's estimate, aligned as `batch_windows`
/// aligns — and the dry run plans the same batches.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn batch_rows_groups_small_windows_by_the_estimate() {
    let s = services!();
    let f = small_days(&s, "    batch_rows: 500\n    parallel_windows: 2\n").await;
    // Without statistics (never analysed) nothing is grouped.
    let unanalysed = f.dry_run();
    assert_eq!(
        unanalysed[0]["planned"].as_array().map(Vec::len),
        Some(30),
        "no statistics, a day a batch: {unanalysed}"
    );
    f.analyze().await;
    let planned = f.dry_run()[0]["planned"].clone();
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rep = out.json();
    let batches = rep[0]["batches"].as_array().expect("batches");
    // 100 rows a day, 500 a batch: 5 days each (two slots keep more than
    // two batches each), aligned on multiples of 5 days, so 30 consecutive
    // days make 6 batches, or 7 when they start mid-group.
    assert!(
        (6..=7).contains(&batches.len()),
        "{} batches: {rep}",
        batches.len()
    );
    for b in batches {
        let days = |k: &str| {
            chrono::DateTime::parse_from_rfc3339(b[k].as_str().expect(k))
                .expect("time")
                .timestamp()
                / 86400
        };
        let span = days("window_end") - days("window_start");
        assert!((1..=5).contains(&span), "{span} days in {b}");
        assert_eq!(b["rows"].as_u64(), Some(100 * span as u64), "{b}");
    }
    assert_eq!(archived_rows(&rep), 3000);
    assert_eq!(
        planned.as_array().map(Vec::len),
        Some(batches.len()),
        "the dry run planned other batches: {planned}"
    );
    let c = f.db.client().await;
    assert_eq!(count(&c, "sensor_readings", "true").await, 0);
    f.assert_reconciled("batch_rows");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn two_instances_at_once_archive_each_row_once() {
    let s = services!();
    let f = Fixture::new(&s, None, Cat::Rest, 4000, 25, "", "").await;
    let inserter = Inserter::start(&f.db.dsn).await;
    let a = f.spawn_archive(&[], &[]);
    let b = f.spawn_archive(&[], &[]);
    let (a, b) = (finish(a), finish(b));
    inserter.stop().await;
    assert_eq!(
        (a.code, b.code),
        (0, 0),
        "both exit cleanly:\n{}\n{}",
        a.stderr,
        b.stderr
    );
    let (ra, rb) = (a.json(), b.json());
    let mut windows: Vec<String> = Vec::new();
    for r in [&ra, &rb] {
        for bt in r[0]["batches"].as_array().expect("batches") {
            windows.push(format!("{}#{}", bt["window_start"], bt["sequence"]));
        }
    }
    let n = windows.len();
    windows.sort();
    windows.dedup();
    assert_eq!(windows.len(), n, "no batch archived by both");
    let skipped: Vec<&Value> = [&ra, &rb]
        .into_iter()
        .filter(|r| r[0]["outcome"]["status"] == "skipped")
        .collect();
    for r in &skipped {
        let reason = r[0]["outcome"]["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains("another permafrost instance") && reason.contains("pid"),
            "the loser says why: {reason}"
        );
    }
    eprintln!(
        "two instances: {} skipped, {} batches in all",
        skipped.len(),
        n
    );
    f.assert_reconciled("two instances");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn verification_failure_blocks_notifies_and_force_recovers() {
    let s = services!();
    // A local webhook receiver.
    let (addr, rx) = webhook_sink();
    let url = format!("http://{addr}/hook");
    // One batch fails; one at a time, so the run stops there.
    let f = Fixture::new(
        &s,
        None,
        Cat::Sqlite,
        300,
        4,
        "    parallel_windows: 1\n",
        &format!("notify:\n  webhook_url: {url}\n"),
    )
    .await;
    let c = f.db.client().await;
    let total = count(&c, "sensor_readings", "true").await;

    let out = f.archive(&[], &[("PERMAFROST_FAULT", "corrupt-checksum")]);
    assert_eq!(
        out.code, 5,
        "a verification failure exits 5: {}",
        out.stderr
    );
    assert!(out.stderr.contains("verification failed"), "{}", out.stderr);
    let report = out.json();
    assert_eq!(report[0]["outcome"]["status"], "failed", "{report}");
    assert_eq!(report[0]["outcome"]["kind"], "verification", "{report}");
    assert_eq!(
        count(&c, "sensor_readings", "true").await,
        total,
        "rows kept"
    );
    let hook: Value = serde_json::from_str(
        &rx.recv_timeout(Duration::from_secs(30))
            .expect("webhook received"),
    )
    .expect("json");
    assert_eq!(hook["service"], "permafrost");
    assert_eq!(hook["event"], "batch_failed");
    assert_eq!(hook["table"], "public.sensor_readings");
    assert!(
        hook["batch_id"].as_str().is_some_and(|b| b.len() == 16),
        "{hook}"
    );
    assert!(
        hook["window_start"].as_str().is_some() && hook["window_end"].as_str().is_some(),
        "{hook}"
    );
    assert!(
        hook["error"]
            .as_str()
            .unwrap_or("")
            .contains("verification failed"),
        "{hook}"
    );
    let failed_window = hook["window_start"].as_str().unwrap_or("").to_string();

    let st =
        f.ws.run_env(&["status", "-c", &f.cfg, "--json"], &f.env_with(&[]))
            .json();
    assert_eq!(st[0]["windows_failed"], 1, "{st}");
    assert_eq!(st[0]["failed_batches"][0]["batch_id"], hook["batch_id"]);

    // Without --force the failed window stays blocked; the others go.
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rep = out.json();
    assert_eq!(
        rep[0]["blocked"][0]["window_start"],
        failed_window.as_str(),
        "{rep}"
    );
    assert_eq!(rep[0]["batches"].as_array().map(Vec::len), Some(3));
    assert!(
        count(&c, "sensor_readings", "true").await > 0,
        "the failed window's rows are still there"
    );

    let out = f.archive(&["--force"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rep = out.json();
    assert_eq!(
        rep[0]["batches"][0]["reconciled_rows"].as_i64(),
        Some(300),
        "the failed batch's rows settled, not re-archived: {rep}"
    );
    let st =
        f.ws.run_env(&["status", "-c", &f.cfg, "--json"], &f.env_with(&[]))
            .json();
    assert_eq!(
        (
            st[0]["windows_failed"].as_u64(),
            st[0]["windows_pending"].as_u64()
        ),
        (Some(0), Some(0)),
        "{st}"
    );
    assert_eq!(count(&c, "sensor_readings", "true").await, 0);
    f.assert_reconciled("verification failure + --force");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn max_batch_rows_splits_a_window() {
    let s = services!();
    let f = Fixture::new(
        &s,
        None,
        Cat::Sqlite,
        1000,
        1,
        "    max_batch_rows: 300\n",
        "",
    )
    .await;
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rep = out.json();
    let b = rep[0]["batches"].as_array().expect("batches");
    let rows: Vec<i64> = b.iter().map(|x| x["rows"].as_i64().unwrap_or(0)).collect();
    let seqs: Vec<i64> = b
        .iter()
        .map(|x| x["sequence"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(rows, vec![300, 300, 300, 100]);
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    f.assert_reconciled("max_batch_rows");
}

/// Runs an archive paused at `point`, applies `outage` there, lets it continue.
async fn paused_run(f: &Fixture, point: &str, outage: impl AsyncFnOnce()) -> Out {
    let pause = Pause::new();
    let spec = pause.env(point);
    let child = f.spawn_archive(&[], &[("PERMAFROST_PAUSE", spec.as_str())]);
    let Some(handle) = pause.wait_reached(Duration::from_secs(120)) else {
        let out = finish(child);
        panic!("never reached {point}:\n{}", out.stderr);
    };
    outage().await;
    Pause::resume(handle);
    finish(child)
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn outages_delete_nothing_unverified_and_the_next_run_recovers() {
    let s = services!();
    let mut weed = Weed::start(&s).await;
    let cat = CatalogSetup::rest_at(&s, &weed.rest, &weed.s3, unique("outage"));
    // Windows larger than one record batch, so a backend can die mid-stream.
    // Each outage hits the one batch in flight: batches one at a time.
    let shape = "    parallel_windows: 1\n";
    let f = Fixture::new(&s, Some(cat), Cat::Rest, 40_000, 3, shape, "").await;
    let c = f.db.client().await;
    let total = count(&c, "sensor_readings", "true").await;
    // The table exists and one window is archived before the outages.
    let out = f.archive(&["--dry-run"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);

    // 1. SeaweedFS stopped mid-upload (rows deleted in the open transaction, nothing written yet).
    let out = paused_run(&f, "after-extract", async || weed.kill()).await;
    assert_ne!(out.code, 0, "fails with storage down");
    assert_eq!(out.error_lines().len(), 1, "{}", out.stderr);
    assert_eq!(
        count(&c, "sensor_readings", "true").await,
        total,
        "nothing deleted"
    );
    weed.restart().await;

    // 2. Catalog unreachable at commit (files written).
    let out = paused_run(&f, "after-write", async || weed.kill()).await;
    assert_ne!(out.code, 0);
    assert!(
        out.error_lines()[0].contains("catalog") || out.error_lines()[0].contains("commit"),
        "{}",
        out.stderr
    );
    assert_eq!(
        count(&c, "sensor_readings", "true").await,
        total,
        "nothing deleted"
    );
    weed.restart().await;

    // 3. The extracting backend is terminated mid-stream. Depending on how far
    //    the stream got, the run fails before the commit or at the Postgres
    //    commit (an unsettled batch); either way nothing is deleted.
    let kill_backend = async || {
        let admin = connect(&s.pg).await;
        let n: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'permafrost' AND datname = $1",
                &[&f.db.name],
            )
            .await
            .expect("terminate")
            .get(0);
        assert!(n >= 1, "a backend was terminated");
    };
    let out = paused_run(&f, "after-extract", kill_backend).await;
    assert_ne!(out.code, 0);
    assert_eq!(
        count(&c, "sensor_readings", "true").await,
        total,
        "nothing deleted"
    );
    f.assert_reconciled_allowing_unsettled();

    // 4. The deleting backend is terminated after commit and verify, before the Postgres commit.
    let out = paused_run(&f, "after-verify", kill_backend).await;
    assert_ne!(out.code, 0);
    assert_eq!(
        count(&c, "sensor_readings", "true").await,
        total,
        "the delete did not commit"
    );
    let st =
        f.ws.run_env(&["status", "-c", &f.cfg, "--json"], &f.env_with(&[]))
            .json();
    let unsettled = st[0]["unsettled_batches"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    assert!(unsettled >= 1, "a batch committed but unsettled: {st}");
    f.assert_reconciled_allowing_unsettled();

    // The next run completes, settles the unsettled batches (their rows are
    // deleted, not archived again), and reconciles exactly.
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rep = out.json();
    let settled: i64 = rep[0]["batches"]
        .as_array()
        .expect("b")
        .iter()
        .map(|b| b["reconciled_rows"].as_i64().unwrap_or(0))
        .sum();
    assert!(settled >= 40_000, "the unsettled rows were settled: {rep}");
    assert_eq!(count(&c, "sensor_readings", "true").await, 0);
    let st =
        f.ws.run_env(&["status", "-c", &f.cfg, "--json"], &f.env_with(&[]))
            .json();
    assert_eq!(
        st[0]["unsettled_batches"].as_array().map(Vec::len),
        Some(0),
        "{st}"
    );
    f.assert_reconciled("outages");
}

/// The table's `name` directory (`data`, `metadata`) in a local warehouse.
fn table_dir(f: &Fixture, name: &str) -> std::path::PathBuf {
    let found = walk_dirs(&f.ws.path().join("warehouse"))
        .into_iter()
        .filter(|d| d.ends_with(name) && d.parent().is_some_and(|p| p.ends_with("sensor_readings")))
        .collect::<Vec<_>>();
    assert_eq!(found.len(), 1, "one {name} directory: {found:?}");
    found[0].clone()
}

fn walk_dirs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for p in std::fs::read_dir(dir)
        .expect("read_dir")
        .flatten()
        .map(|e| e.path())
    {
        if p.is_dir() {
            out.extend(walk_dirs(&p));
            out.push(p);
        }
    }
    out
}

/// Puts a plain file where directory `dir` is (or would be created): not
/// even root can write below it.  Gives a guard that undoes it.  An
/// existing directory and the file trade places in one step, so a batch
/// running meanwhile finds the directory or the file, never nothing (with a
/// rename and then a write, a load in that gap failed on a missing file
/// instead of the blocked path).  The file takes the place of a missing
/// directory only if it is still missing (a batch running meanwhile may
/// create it: checking first and writing then failed once on the
/// directory made in between).
fn block(dir: &std::path::Path) -> impl FnOnce() + use<> {
    use std::io::Write as _;
    let aside = dir.with_extension("aside");
    let placed = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir);
    let existed = match placed {
        Ok(mut file) => {
            file.write_all(b"not a directory").expect("block");
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::write(&aside, b"not a directory").expect("block");
            exchange(dir, &aside);
            true
        }
        Err(e) => panic!("block {}: {e}", dir.display()),
    };
    let dir = dir.to_path_buf();
    move || {
        if existed {
            exchange(&aside, &dir);
            std::fs::remove_file(&aside).expect("unblock");
        } else {
            std::fs::remove_file(&dir).expect("unblock");
        }
    }
}

/// Swaps what the paths `a` and `b` name, atomically (Linux
/// `renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &std::path::Path, b: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &std::path::Path| std::ffi::CString::new(p.as_os_str().as_bytes()).expect("path");
    let (a, b) = (c(a), c(b));
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(rc, 0, "renameat2: {}", std::io::Error::last_os_error());
}

/// A local warehouse the run cannot use — no data file can be created, then
/// the table metadata cannot be read at the commit — fails the batch with
/// one error line and a hint, deletes nothing, and the next run archives
/// every row exactly once.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn an_unwritable_local_warehouse_deletes_nothing_and_the_next_run_recovers() {
    let s = services!();
    let f = Fixture::new(&s, None, Cat::Sqlite, 200, 3, "", "").await;
    let c = f.db.client().await;
    let total = count(&c, "sensor_readings", "true").await;
    let assert_failed = |out: &Out, what: &str| {
        assert_eq!(
            out.code, 4,
            "{what}: storage failure exit code\n{}",
            out.stderr
        );
        let errors = out.error_lines();
        assert_eq!(errors.len(), 1, "{what}: one error line\n{}", out.stderr);
        // Which step meets the file first depends on the parallel batches:
        // opening a path through it, or creating the directory it blocks.
        assert!(
            errors[0].contains("Not a directory")
                || errors[0].contains("a file of that name is in the way"),
            "{what}: the cause: {}",
            errors[0]
        );
        assert!(
            out.has_hint("writable"),
            "{what}: a hint about the storage\n{}",
            out.stderr
        );
    };
    // ... and deletes nothing unverified: only the rows of batches that
    // finished (verified and settled) before the outage hit, which the
    // report lists — another batch of the run may get that far while the
    // paused one waits (two extraction slots and finishing workers) — with
    // the rows they reconciled: a batch an earlier case committed but could
    // not read back, verified now and its rows deleted without being
    // written again.
    let failed_and_kept = async |out: Out, what: &str| {
        assert_failed(&out, what);
        let report = out.json();
        let reconciled: u64 = each_of(&report[0], "batches", "reconciled_rows")
            .iter()
            .sum();
        let finished = (archived_rows(&report) + reconciled) as i64;
        let left = count(&c, "sensor_readings", "true").await;
        assert_eq!(
            left,
            total - finished,
            "{what}: nothing deleted unverified\n{}\n{}",
            out.stdout,
            out.stderr
        );
    };

    // 1. Data files cannot be created (the table was created by this run).
    let mut unblock = None;
    let out = paused_run(&f, "after-extract", async || {
        unblock = Some(block(&table_dir(&f, "metadata").with_file_name("data")))
    })
    .await;
    failed_and_kept(out, "data").await;
    unblock.take().expect("blocked")();

    // 2. The data files are written; the commit cannot read the table's
    //    metadata (a metadata write that fails alone needs a read-only
    //    directory, which root ignores).
    let metadata = table_dir(&f, "metadata");
    let out = paused_run(&f, "after-write", async || unblock = Some(block(&metadata))).await;
    failed_and_kept(out, "metadata").await;
    unblock.take().expect("blocked")();

    // 3. A batch is committed; it cannot be read back.  That is no
    //    verdict on the batch: its windows are not blocked.
    let data = table_dir(&f, "data");
    let out = paused_run(&f, "after-commit", async || unblock = Some(block(&data))).await;
    failed_and_kept(out, "read back").await;
    unblock.take().expect("blocked")();
    let st =
        f.ws.run_env(&["status", "-c", &f.cfg, "--json"], &f.env_with(&[]))
            .json();
    assert_eq!(st[0]["windows_failed"], 0, "nothing blocked: {st}");

    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        count(&c, "sensor_readings", "true").await,
        0,
        "the next run archives every row\n{}",
        out.stderr
    );
    f.assert_reconciled("after the warehouse was writable again");
}

impl Fixture {
    /// While a batch is unsettled its rows are in both places; nothing is lost.
    fn assert_reconciled_allowing_unsettled(&self) {
        let r = self.reconcile();
        assert_eq!(
            r["missing"].as_array().map(Vec::len),
            Some(0),
            "nothing lost: {r}"
        );
        assert_eq!(
            r["twice"].as_array().map(Vec::len),
            Some(0),
            "nothing archived twice: {r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn replay_archives_a_range_regardless_of_the_lag() {
    let s = services!();
    let f = Fixture::new(&s, None, Cat::Sqlite, 100, 3, "", "").await;
    let c = f.db.client().await;
    // Recent rows (inside the lag) in two windows.
    c.batch_execute(
        "WITH r AS (INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, value, unit) \
         SELECT date_trunc('day', now()) - interval '3 days' + (i * interval '1 minute'), 1, 'recent', 1, 'c' FROM generate_series(1, 50) i \
         UNION ALL SELECT date_trunc('day', now()) - interval '2 days' + (i * interval '1 minute'), 1, 'recent', 1, 'c' FROM generate_series(1, 50) i \
         RETURNING *) INSERT INTO inserted_log SELECT * FROM r",
    )
    .await
    .expect("recent rows");
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        count(&c, "sensor_readings", "true").await,
        100,
        "recent rows stay (lag)"
    );
    let now = pg_now(&c).await;
    let day = now.div_euclid(DAY_US) * DAY_US;
    let from = rfc3339(day - 3 * DAY_US + 3_600_000_000); // widened to the window start
    let to = rfc3339(day - 2 * DAY_US);
    let out = f.ws.run_env(
        &[
            "replay",
            "-c",
            &f.cfg,
            "-t",
            "sensor_readings",
            "--from",
            &from,
            "--to",
            &to,
            "--json",
        ],
        &f.env_with(&[]),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rep = out.json();
    assert_eq!(rep[0]["batches"].as_array().map(Vec::len), Some(1), "{rep}");
    assert_eq!(rep[0]["batches"][0]["rows"], 50);
    assert_eq!(
        count(&c, "sensor_readings", "true").await,
        50,
        "only the replayed window left Postgres"
    );
    f.assert_reconciled("replay");
}

/// Another writer commits to the same Iceberg table between two commits of
/// a run: the catalog refuses the committer's table, the commit is prepared
/// again from the refreshed table, nothing is duplicated.
async fn commit_conflict(kind: Cat) {
    let s = services!();
    let f = Fixture::new(&s, None, kind, 200, 2, "    parallel_windows: 1\n", "").await;
    // First run creates the table (and archives window 1 so it has a snapshot).
    let out = f.archive(&["--dry-run"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let c = f.db.client().await;
    let ts: i64 = c
        .query_one(
            "SELECT (extract(epoch FROM min(recorded_at)) * 1000000)::int8 FROM sensor_readings",
            &[],
        )
        .await
        .expect("ts")
        .get(0);
    let row = external_row(&c, ts).await;
    let append = || append_external(&f, row.clone(), json!({}));
    // Create the table with a first batch, so the external writer has something to append to.
    let first = f.archive(&["--now", &rfc3339(pg_now(&c).await)], &[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    // A table that asks for no commit retries (other engines read it;
    // permafrost sends its commits itself and prepares them again).
    table_properties(&f, json!({"commit.retry.num-retries": "0"}));
    // Put rows back into two windows and pause the next run after its
    // first commit: the other writer commits before the second.
    late_rows(&c).await;
    let out = paused_run(&f, "after-commit", async || append()).await;
    assert_eq!(
        out.code, 0,
        "the conflicting commit was retried:\n{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("preparing the commit again from fresh metadata"),
        "{}",
        out.stderr
    );
    let batches = out.json()[0]["batches"].clone();
    assert_eq!(batches[0]["rows"], 50, "{batches}");
    assert_eq!(batches[1]["rows"], 50, "{batches}");
    let r = f.assert_reconciled("commit conflict");
    assert_eq!(r["postgres"], 0);
}

/// The row another writer (PyIceberg) appends at `ts` (Unix microseconds),
/// logged first as expected in the end result.
async fn external_row(c: &tokio_postgres::Client, ts: i64) -> Value {
    c.batch_execute(&format!(
        "INSERT INTO inserted_log (id, recorded_at, sensor_id, sensor_name, value, unit, quality, payload) \
         VALUES (-1, to_timestamp({ts}::float8 / 1e6), 1, 'external', 0.5, 'celsius', 1.00, '{{\"external\": true}}')"
    ))
    .await
    .expect("log");
    json!({"id": -1, "recorded_at": ts, "sensor_id": 1, "sensor_name": "external", "value": 0.5,
           "unit": "celsius", "quality": "1.00", "payload": "{\"external\": true}"})
}

/// 100 rows put back (and logged) into the two windows 20 and 21 days old,
/// 50 each.
async fn late_rows(c: &tokio_postgres::Client) {
    c.batch_execute(
        "WITH r AS (INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, value, unit) \
         SELECT date_trunc('day', now()) - interval '20 days' - (i % 2) * interval '1 day' + i * interval '1 minute', \
                2, 'late', 1, 'c' FROM generate_series(1, 100) i \
         RETURNING *) INSERT INTO inserted_log SELECT * FROM r",
    )
    .await
    .expect("late rows");
}

/// Appends `row` to the fixture's archive table with PyIceberg (another
/// writer), its snapshot summary carrying `props` too.
fn append_external(f: &Fixture, row: Value, props: Value) {
    pyiceberg_write(f, json!({"row": row, "snapshot_properties": props}));
}

/// Sets table properties of the fixture's archive table with PyIceberg.
fn table_properties(f: &Fixture, props: Value) {
    pyiceberg_write(f, json!({"table_properties": props}));
}

/// Runs tests/py/append.py with `what` added to the fixture's catalog and table.
fn pyiceberg_write(f: &Fixture, what: Value) {
    let mut req = json!({
        "catalog_name": f.cat.py_name, "catalog": f.cat.py_props,
        "table": format!("{}.sensor_readings", f.cat.namespace),
    });
    if let (Some(req), Some(what)) = (req.as_object_mut(), what.as_object()) {
        req.extend(what.clone());
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("req.json");
    std::fs::write(&p, req.to_string()).expect("write");
    let script = crate::common::source_dir().join("tests/py/append.py");
    let out = std::process::Command::new(&f.s.python)
        .arg(script)
        .arg(&p)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "append.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The snapshot a run that died had in flight, landing late: the batch of
/// the window of `planned` (its one `row`) under `batch_id`, its summary
/// that of a real batch of the same window with the dead run's rolled-back
/// transaction.
async fn land_late_commit(
    f: &Fixture,
    c: &tokio_postgres::Client,
    planned: &Value,
    batch_id: &str,
    row: Value,
) {
    let snaps = f.ws.run_env(
        &["snapshots", "-c", &f.cfg, "-t", "sensor_readings", "--json"],
        &f.env_with(&[]),
    );
    assert_eq!(snaps.code, 0, "{}", snaps.stderr);
    let snaps = snaps.json();
    let like = snaps
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|s| s["window_start"] == planned["window_start"])
        })
        .unwrap_or_else(|| panic!("a batch of {planned} in {snaps}"));
    c.batch_execute("BEGIN")
        .await
        .expect("dead run's transaction");
    let xid: i64 = c
        .query_one("SELECT txid_current()", &[])
        .await
        .expect("xid")
        .get(0);
    c.batch_execute("ROLLBACK").await.expect("rollback");
    let mut props = like["properties"].clone();
    props[keys::BATCH_ID] = json!(batch_id);
    props[keys::ROWS] = json!("1");
    props[keys::PG_XID] = json!(xid.to_string());
    append_external(f, row, props);
}

/// A commit of a run that died lands late, after the next run planned and
/// after its committer took its table: the dead run's snapshot of the
/// window the second batch archives (the same rows).  `same_id`: the dead
/// run had planned the same batch (same deterministic id) — our commit
/// finds it landed, verifies it and settles it; else a batch of another
/// plan — our commit refuses to go on top of it, nothing is deleted, and
/// the next run reconciles it.  Either way every row is archived once.
async fn late_commit_of_a_dead_run(kind: Cat, same_id: bool) {
    let s = services!();
    let f = Fixture::new(&s, None, kind, 50, 3, "    parallel_windows: 1\n", "").await;
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // One late row in each of two archived windows: two batches next.
    let c = f.db.client().await;
    let late = c
        .query(
            "WITH r AS (INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, value, unit, quality, payload) \
             SELECT date_trunc('day', now()) - interval '20 days' - k * interval '1 day' + interval '1 hour', \
                    5, 'late', 0.25, 'celsius', 1.50, jsonb_build_object('late', k) \
             FROM generate_series(1, 2) k RETURNING *), \
             l AS (INSERT INTO inserted_log SELECT * FROM r RETURNING *) \
             SELECT id, (extract(epoch FROM recorded_at) * 1000000)::int8, payload::text FROM l ORDER BY recorded_at",
            &[],
        )
        .await
        .expect("late rows");
    let plan = f.archive(&["--dry-run"], &[]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let planned = plan.json()[0]["planned"].clone();
    assert_eq!(planned.as_array().map(Vec::len), Some(2), "{planned}");
    let second = planned[1]["batch_id"]
        .as_str()
        .expect("batch id")
        .to_string();
    let dead = if same_id {
        second.clone()
    } else {
        "dead00000000beef".to_string()
    };
    let (id, ts, payload): (i64, i64, String) = (late[1].get(0), late[1].get(1), late[1].get(2));
    let row = json!({"id": id, "recorded_at": ts, "sensor_id": 5, "sensor_name": "late", "value": 0.25,
                     "unit": "celsius", "quality": "1.50", "payload": payload});
    let out = paused_run(&f, "after-commit", async || {
        land_late_commit(&f, &c, &planned[1], &dead, row).await
    })
    .await;
    if same_id {
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(
            out.stderr.contains(&format!(
                "commit of batch {second} reported an error but landed"
            )),
            "the late commit was found, not committed over:\n{}",
            out.stderr
        );
        let batches = out.json()[0]["batches"].clone();
        assert_eq!(batches.as_array().map(Vec::len), Some(2), "{batches}");
        assert_eq!(batches[1]["batch_id"], second.as_str(), "{batches}");
    } else {
        assert_ne!(out.code, 0, "{}", out.stdout);
        assert!(
            out.stderr.contains(&format!("batch {dead} appeared in")),
            "the late commit stopped the batch:\n{}",
            out.stderr
        );
        assert_eq!(
            count(&c, "sensor_readings", "sensor_name = 'late'").await,
            1
        );
        f.assert_reconciled_allowing_unsettled();
        let next = f.archive(&[], &[]);
        assert_eq!(next.code, 0, "{}", next.stderr);
    }
    assert_eq!(
        count(&c, "sensor_readings", "sensor_name = 'late'").await,
        0
    );
    let r = f.assert_reconciled("late commit of a dead run");
    assert_eq!(r["postgres"], 0);
    let again = f.archive(&[], &[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.json()[0]["batches"], json!([]), "{}", again.stdout);
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_late_commit_of_a_dead_run_is_not_appended_twice_sql() {
    late_commit_of_a_dead_run(Cat::Sqlite, true).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_late_commit_of_a_dead_run_is_not_appended_twice_rest() {
    late_commit_of_a_dead_run(Cat::Rest, true).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_late_commit_of_a_dead_run_is_not_appended_twice_glue() {
    late_commit_of_a_dead_run(Cat::Glue, true).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_late_commit_of_another_plan_stops_the_batch_sql() {
    late_commit_of_a_dead_run(Cat::Sqlite, false).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_late_commit_of_another_plan_stops_the_batch_rest() {
    late_commit_of_a_dead_run(Cat::Rest, false).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_late_commit_of_another_plan_stops_the_batch_glue() {
    late_commit_of_a_dead_run(Cat::Glue, false).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn commit_conflicts_with_another_writer_rest() {
    commit_conflict(Cat::Rest).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn commit_conflicts_with_another_writer_sql() {
    commit_conflict(Cat::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn commit_conflicts_with_another_writer_glue() {
    commit_conflict(Cat::Glue).await;
}

/// Two batches in flight: the first is paused with its commit prepared,
/// about to send it; the second has prepared its own on the table the first
/// would leave.  Another writer commits meanwhile: the catalog refuses the
/// first (prepared again on a fresh load, then landing), and the second,
/// prepared on a table that never came to be, is prepared again on the one
/// that did — never sent as it was.  Every row is archived exactly once.
async fn commit_prepared_ahead_of_a_refused_one(kind: Cat) {
    let s = services!();
    let f = Fixture::new(&s, None, kind, 200, 2, "    parallel_windows: 2\n", "").await;
    let c = f.db.client().await;
    let first = f.archive(&["--now", &rfc3339(pg_now(&c).await)], &[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let ts: i64 = c
        .query_one(
            "SELECT (extract(epoch FROM now() - interval '40 days') * 1000000)::int8",
            &[],
        )
        .await
        .expect("ts")
        .get(0);
    let row = external_row(&c, ts).await;
    late_rows(&c).await;
    let (sending, ahead) = (Pause::new(), Pause::new());
    let spec = format!(
        "{},{}",
        sending.env("before-send"),
        ahead.env("prepared-ahead")
    );
    let child = f.spawn_archive(&[], &[("PERMAFROST_PAUSE", spec.as_str())]);
    let reached = |p: &Pause, point: &str| {
        p.wait_reached(Duration::from_secs(120))
            .unwrap_or_else(|| panic!("never reached {point}"))
    };
    let first_sends = reached(&sending, "before-send");
    let second_ready = reached(&ahead, "prepared-ahead");
    append_external(&f, row, json!({}));
    Pause::resume(first_sends);
    Pause::resume(second_ready);
    let out = finish(child);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("preparing the commit again from fresh metadata"),
        "the first commit was refused and prepared again:\n{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("prepared on a table that did not come to be; preparing it again"),
        "the second commit was prepared again, not sent as it was:\n{}",
        out.stderr
    );
    let batches = out.json()[0]["batches"].clone();
    assert_eq!(batches.as_array().map(Vec::len), Some(2), "{batches}");
    assert_eq!(batches[0]["rows"], 50, "{batches}");
    assert_eq!(batches[1]["rows"], 50, "{batches}");
    let r = f.assert_reconciled("commit prepared ahead of a refused one");
    assert_eq!(r["postgres"], 0);
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_commit_prepared_ahead_of_a_refused_one_is_prepared_again_sql() {
    commit_prepared_ahead_of_a_refused_one(Cat::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_commit_prepared_ahead_of_a_refused_one_is_prepared_again_rest() {
    commit_prepared_ahead_of_a_refused_one(Cat::Rest).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_held_lock_makes_archive_skip_or_wait() {
    let s = services!();
    let f = Fixture::new(&s, None, Cat::Sqlite, 200, 2, "", "").await;
    let holder = f.db.client().await;
    let oid: u32 = holder
        .query_one("SELECT 'public.sensor_readings'::regclass::oid", &[])
        .await
        .expect("oid")
        .get(0);
    let key = permafrost::source::lock_key(oid);
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .expect("lock");
    let holder_pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);

    // skip (default): waits `lock_wait`, then says who holds it, archives
    // nothing, exits 6 (busy: monitoring can tell it from a run that did its work).
    let cfg = std::fs::read_to_string(&f.cfg)
        .expect("cfg")
        .replace("database:\n", "database:\n  lock_wait: 1s\n");
    let scfg = f.ws.config("skip.yaml", &cfg).to_string_lossy().to_string();
    let out =
        f.ws.run_env(&["archive", "-c", &scfg, "--json"], &f.env_with(&[]));
    assert_eq!(out.code, 6, "{}", out.stderr);
    let rep = out.json();
    assert_eq!(rep[0]["outcome"]["status"], "skipped");
    let reason = rep[0]["outcome"]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains(&format!("pid {holder_pid}")),
        "names the holder: {reason}"
    );
    assert_eq!(count(&holder, "sensor_readings", "true").await, 400);

    // wait: blocks until the lock is released, then archives.
    let cfg = std::fs::read_to_string(&f.cfg)
        .expect("cfg")
        .replace("database:\n", "database:\n  on_busy: wait\n");
    let wcfg = f.ws.config("wait.yaml", &cfg).to_string_lossy().to_string();
    let child =
        f.ws.spawn(&["archive", "-c", &wcfg, "--json"], &f.env_with(&[]));
    // Wait (on a condition, with a deadline) until it queues behind our lock.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: i64 = holder
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                &[],
            )
            .await
            .expect("locks")
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "archive never waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        count(&holder, "sensor_readings", "true").await,
        400,
        "nothing archived while waiting"
    );
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await
        .expect("unlock");
    let out = finish(child);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()[0]["batches"].as_array().map(Vec::len), Some(2));
    f.assert_reconciled("lock wait");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn concurrent_updates_and_deletes_keep_the_last_committed_version() {
    let s = services!();
    let f = Fixture::new(
        &s,
        None,
        Cat::Rest,
        3000,
        4,
        "    max_batch_rows: 1000\n",
        "",
    )
    .await;
    let c = f.db.client().await;
    c.batch_execute(
        "CREATE TABLE update_log (seq bigserial PRIMARY KEY, id bigint, value float8); \
         CREATE TABLE delete_log (id bigint);",
    )
    .await
    .expect("logs");
    let (min_id, max_id): (i64, i64) = {
        let r = c
            .query_one("SELECT min(id), max(id) FROM sensor_readings", &[])
            .await
            .expect("ids");
        (r.get(0), r.get(1))
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2 {
        let flag = stop.clone();
        let conn = connect(&f.db.dsn).await;
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut i = w as i64;
            while !flag.load(Ordering::SeqCst) {
                i += 7919;
                let id = min_id + i.rem_euclid(max_id - min_id + 1);
                let sql = if i % 5 == 0 {
                    format!("WITH d AS (DELETE FROM sensor_readings WHERE id = {id} RETURNING id) INSERT INTO delete_log SELECT id FROM d")
                } else {
                    format!(
                        "WITH u AS (UPDATE sensor_readings SET value = {} WHERE id = {id} RETURNING id, value) \
                         INSERT INTO update_log (id, value) SELECT id, value FROM u",
                        (i % 100_000) as f64 + 0.5
                    )
                };
                if conn.batch_execute(&sql).await.is_ok() {
                    n += 1;
                }
            }
            n
        }));
    }
    let out = f.archive(&[], &[]);
    stop.store(true, Ordering::SeqCst);
    let mut writes = 0;
    for w in writers {
        writes += w.await.unwrap_or(0);
    }
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(writes > 100, "the writers ran during the archive: {writes}");
    // Expected state of every row: its last committed version, or gone if the
    // application deleted it.
    c.batch_execute(
        "CREATE TABLE expected_rows AS \
         SELECT b.id, b.recorded_at, b.sensor_id, b.sensor_name, coalesce(u.value, b.value) AS value, b.unit, b.quality, b.payload \
         FROM before_rows b \
         LEFT JOIN LATERAL (SELECT value FROM update_log l WHERE l.id = b.id ORDER BY seq DESC LIMIT 1) u ON true \
         WHERE b.id NOT IN (SELECT id FROM delete_log)",
    )
    .await
    .expect("expected rows");
    let req = json!({
        "catalog_name": f.cat.py_name, "catalog": f.cat.py_props,
        "table": format!("{}.sensor_readings", f.cat.namespace),
        "pg_dsn": f.db.dsn, "source_table": "sensor_readings", "expected_tables": ["expected_rows"],
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("req.json");
    std::fs::write(&p, req.to_string()).expect("write");
    let script = crate::common::source_dir().join("tests/py/reconcile.py");
    let out = std::process::Command::new(&s.python)
        .arg(script)
        .arg(&p)
        .output()
        .expect("python");
    let r: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        r["ok"], true,
        "archived + remaining rows are exactly the last committed versions: {r}"
    );
    eprintln!("updates/deletes during archive: {writes} writes, {r}");
}

/// The cluster `Services::pg_solo` is one test's at a time.
pub(crate) static SOLO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The solo cluster, the caller's alone while it holds the guard: its
/// services, and a fixture of 6 days of 400 rows on it.
async fn on_solo(s: &Services) -> (tokio::sync::MutexGuard<'static, ()>, Services, Fixture) {
    let guard = SOLO.lock().await;
    let solo = Services {
        pg: s.pg_solo.clone(),
        ..s.clone()
    };
    let f = Fixture::new(&solo, None, Cat::Sqlite, 400, 6, "", "").await;
    (guard, solo, f)
}

/// A command of the PostgreSQL binaries, run as the `postgres` user when
/// the tests run as root (initdb and postgres refuse root).
fn pg_command(s: &Services, name: &str) -> std::process::Command {
    let bin = format!("{}/{name}", s.pg_bin);
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--", &bin]);
        c
    } else {
        std::process::Command::new(bin)
    }
}

fn run_ok(mut c: std::process::Command) {
    let out = c.output().expect("run");
    assert!(
        out.status.success(),
        "{c:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A base backup of a cluster, and later a server started from it and
/// promoted — what a restore to an earlier point leaves: the data of then,
/// a new timeline, and transaction ids counting on from then.  The server
/// stops when this is dropped.
struct Backup {
    s: Services,
    dir: tempfile::TempDir,
    started: bool,
}

impl Backup {
    fn take(s: &Services, pg: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // The server writes here as `postgres`.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let url = url::Url::parse(pg).expect("dsn");
        let mut c = pg_command(s, "pg_basebackup");
        c.args([
            "-h",
            url.host_str().unwrap_or("127.0.0.1"),
            "-U",
            "postgres",
        ]);
        c.args(["-X", "stream", "--checkpoint=fast"]);
        c.args(["-p", &url.port().unwrap_or(5432).to_string(), "-D"]);
        c.arg(dir.path().join("data"));
        run_ok(c);
        Self {
            s: s.clone(),
            dir,
            started: false,
        }
    }

    /// Starts the backup as a standby and promotes it (see
    /// [`Backup::standby`]); returns the server's base DSN (no database).
    fn restore(&mut self, max_connections: &str) -> String {
        let dsn = self.standby(max_connections);
        let mut c = pg_command(&self.s, "pg_ctl");
        c.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-w", "promote"]);
        run_ok(c);
        dsn
    }

    /// Starts the backup as a hot standby (read-only, as a replica or a
    /// reader endpoint is) on a port of its own, with the `max_connections`
    /// of the cluster backed up, as a standby needs; returns its base DSN.
    fn standby(&mut self, max_connections: &str) -> String {
        let s = &self.s;
        let data = self.dir.path().join("data");
        std::fs::write(data.join("standby.signal"), "").expect("standby.signal");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let mut c = pg_command(s, "pg_ctl");
        c.arg("-D").arg(&data).args(["-w", "-l"]);
        c.arg(self.dir.path().join("log"));
        c.arg("-o").arg(format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections={max_connections}",
            self.dir.path().display()
        ));
        c.arg("start");
        run_ok(c);
        self.started = true;
        format!("postgresql://postgres@127.0.0.1:{port}")
    }
}

impl Drop for Backup {
    fn drop(&mut self) {
        if self.started {
            let mut c = pg_command(&self.s, "pg_ctl");
            c.arg("-D").arg(self.dir.path().join("data"));
            c.args(["-m", "immediate", "stop"]);
            let _ = c.output();
        }
    }
}

/// The server's `max_connections`, which a standby of it needs at least.
async fn max_connections(pg: &str) -> String {
    connect(pg)
        .await
        .query_one("SHOW max_connections", &[])
        .await
        .expect("max_connections")
        .get(0)
}

/// A new transaction id of the server `c` is connected to.
async fn txid_current(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT txid_current()", &[])
        .await
        .expect("txid")
        .get(0)
}

/// Uses transaction ids until the server's next one is past `past`.
async fn use_transaction_ids(dsn: &str, past: i64) {
    let c = connect(dsn).await;
    let now = txid_current(&c).await;
    c.batch_execute(&format!(
        "CREATE TABLE burn (i int); \
         DO $$ BEGIN FOR i IN 0..{} LOOP \
           BEGIN INSERT INTO burn VALUES (i); EXCEPTION WHEN others THEN NULL; END; \
         END LOOP; END $$; DROP TABLE burn;",
        (past - now).max(0) + 10
    ))
    .await
    .expect("use transaction ids");
}

/// The source restored from a backup taken before a run — a restore to an
/// earlier point: a new timeline — holds again the rows that run archived
/// and deleted (but one the application deleted since), and its
/// transaction ids went on from the backup, so the run's ids now name
/// other, committed transactions.  The run's batches are of another history
/// (`permafrost.pg-history`): their status is not believed, their rows are
/// told apart by content, and nothing is archived twice.  (Believed, the
/// batches read as settled, and a settled batch counts as restored only
/// when all its rows are back: the day missing a row was archived again.)
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn rows_a_restore_from_an_earlier_backup_brings_back_are_not_archived_twice() {
    let s = services!();
    let (_solo, solo, mut f) = on_solo(&s).await;
    let mut backup = Backup::take(&s, &solo.pg);
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(archived_rows(&out.json()), 2400);
    let batches = out.json()[0]["batches"].as_array().map_or(0, Vec::len);
    let last_id = txid_current(&f.db.client().await).await;

    let max_connections = max_connections(&solo.pg).await;
    let restored = backup.restore(&max_connections);
    let dsn = format!("{restored}/{}", f.db.name);
    use_transaction_ids(&dsn, last_id).await;
    let c = connect(&dsn).await;
    assert_eq!(
        count(&c, "sensor_readings", "true").await,
        2400,
        "the restore brought the archived rows back"
    );
    // The application deleted one of them since: no batch's rows are all
    // there again, so none is recognised whole as restored rows.
    c.batch_execute("DELETE FROM sensor_readings WHERE id = (SELECT min(id) FROM sensor_readings)")
        .await
        .expect("delete");
    let cfg = std::fs::read_to_string(&f.cfg).expect("config");
    std::fs::write(&f.cfg, cfg.replace(&f.db.dsn, &dsn)).expect("config");
    f.db.dsn = dsn;
    let st =
        f.ws.run_env(&["status", "-c", &f.cfg, "--json"], &f.env_with(&[]))
            .json();
    assert_eq!(
        (
            st[0]["batches_of_other_history"].as_u64(),
            st[0]["pg_history"].as_str().map(|h| h.ends_with("/2"))
        ),
        (Some(batches as u64), Some(true)),
        "status sees the run's batches on timeline 1, the server on 2: {st}"
    );
    let text = f.ws.run_env(&["status", "-c", &f.cfg], &f.env_with(&[]));
    assert!(
        text.stdout.contains(&format!(
            "{batches} batch(es) were archived on another Postgres history"
        )),
        "{}",
        text.stdout
    );
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.json();
    assert_eq!(
        archived_rows(&report),
        0,
        "nothing archived again: {report}"
    );
    f.assert_reconciled("after the restore from the earlier backup");
    assert_eq!(unsettled(&f), Vec::<Value>::new());
}

/// A read-only server — a hot standby, which is what an RDS/Aurora reader
/// endpoint is — serves `archive --no-delete`; `check` there warns, a
/// deleting archive fails in one line that points at the primary and
/// commits nothing, the primary's deleting run afterwards archives nothing
/// twice, and neither does another copy on the standby, which (as a
/// lagging replica would) still holds the rows the primary deleted.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_hot_standby_archives_without_deleting_and_points_a_deleting_run_at_the_primary() {
    let s = services!();
    let (_solo, solo, f) = on_solo(&s).await;
    let mut backup = Backup::take(&s, &solo.pg);
    let max_connections = max_connections(&solo.pg).await;
    let standby = format!("{}/{}", backup.standby(&max_connections), f.db.name);
    let yaml = std::fs::read_to_string(&f.cfg).expect("config");
    let cfg =
        f.ws.config("standby.yaml", &yaml.replace(&f.db.dsn, &standby));
    let cfg = cfg.to_string_lossy().to_string();
    let env = f.env_with(&[]);
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["-c", cfg.as_str()]);
        f.ws.run_env(&all, &env)
    };

    let check = run(&["check", "--json"]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    let warnings = check.json()["tables"][0]["warnings"].to_string();
    assert!(
        warnings.contains("a standby in recovery") && warnings.contains("writer endpoint"),
        "{warnings}"
    );
    let copy = run(&["archive", "--no-delete", "--json"]);
    assert_eq!(copy.code, 0, "{}", copy.stderr);
    assert_eq!(archived_rows(&copy.json()), 2400);
    let snapshots = || run(&["status", "--json"]).json()[0]["shape"]["snapshots"].clone();
    let before = snapshots();
    let out = run(&["archive"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    let errors = out.error_lines();
    assert!(
        errors.len() == 1
            && errors[0].contains("during recovery")
            && out.has_hint("writer endpoint"),
        "{}",
        out.stderr
    );
    assert_eq!(snapshots(), before, "the refused run commits nothing");

    let c = f.db.client().await;
    assert_eq!(count(&c, "sensor_readings", "true").await, 2400);
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(archived_rows(&out.json()), 0, "nothing archived twice");
    assert_eq!(count(&c, "sensor_readings", "true").await, 0);
    f.assert_reconciled("the standby's copy, then the primary's run");
    // The standby, behind the primary, still holds every row.
    let again = run(&["archive", "--no-delete", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(archived_rows(&again.json()), 0, "nothing archived twice");
    f.assert_reconciled("a lagging standby's copy after the primary's run");
}

/// Makes Postgres forget every finished transaction, as it does on its own
/// once freezing lets it truncate the commit log (`autovacuum_freeze_max_age`,
/// 200 million transactions by default: days on a busy database): burns
/// a million transaction ids, freezes every database, and checks that
/// `txid_status` no longer knows a transaction from before.
async fn forget_transactions(pg: &str) {
    let admin = connect(pg).await;
    let before = txid_current(&admin).await;
    use_transaction_ids(pg, before + 1_100_000).await;
    admin
        .batch_execute("ALTER DATABASE template0 ALLOW_CONNECTIONS true")
        .await
        .expect("template0");
    let names: Vec<String> = admin
        .query("SELECT datname FROM pg_database", &[])
        .await
        .expect("databases")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for name in names {
        let dsn = pg
            .rsplit_once('/')
            .map(|(base, _)| format!("{base}/{name}"))
            .expect("dsn");
        connect(&dsn)
            .await
            .batch_execute("VACUUM FREEZE")
            .await
            .expect("vacuum freeze");
    }
    admin
        .batch_execute("ALTER DATABASE template0 ALLOW_CONNECTIONS false")
        .await
        .expect("template0");
    let status: Option<String> = admin
        .query_one("SELECT txid_status($1)", &[&before])
        .await
        .expect("txid_status")
        .get(0);
    assert_eq!(status, None, "Postgres still knows transaction {before}");
}

fn unsettled(f: &Fixture) -> Vec<Value> {
    let st =
        f.ws.run_env(&["status", "-c", &f.cfg, "--json"], &f.env_with(&[]))
            .json();
    st[0]["unsettled_batches"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("status: {st}"))
}

/// Postgres forgets the status of old transactions (`txid_status` answers
/// NULL).  A batch it forgot is settled when its range holds no rows, and
/// stays open while it does: an interrupted batch's rows are still told
/// apart by content (archived once), settled batches do not turn
/// "unsettled" in `status`, and late rows go into windows whose batches
/// were forgotten and expired.  On a cluster of its own (the test freezes
/// every database).
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn transactions_postgres_forgot_neither_unsettle_batches_nor_archive_rows_twice() {
    let s = services!();
    let (_solo, solo, f) = on_solo(&s).await;
    // A run killed after a commit and its verification, before Postgres's.
    let out = f.archive(&[], &[("PERMAFROST_FAULT", "after-verify")]);
    assert_ne!(out.code, 0, "{}", out.stderr);
    let open = unsettled(&f);
    assert!(!open.is_empty(), "a batch committed, not settled");
    forget_transactions(&solo.pg).await;
    assert_eq!(unsettled(&f), open, "its rows are still in Postgres: open");
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let reconciled: u64 = out.json()[0]["batches"]
        .as_array()
        .expect("batches")
        .iter()
        .filter_map(|b| b["reconciled_rows"].as_u64())
        .sum();
    assert!(reconciled >= 400, "told apart by content: {}", out.stdout);
    f.assert_reconciled("after the interrupted batch was forgotten");

    // Every batch settled; then Postgres forgets them too.
    forget_transactions(&solo.pg).await;
    assert_eq!(unsettled(&f), Vec::<Value>::new(), "nothing is unsettled");
    // Every snapshot but the last expired; a late row into the first day.
    let out = crate::maintenance::maintain_keeping(&f, "1", &[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let c = f.db.client().await;
    c.batch_execute(
        "WITH r AS (INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, unit) \
         SELECT min(recorded_at) + interval '1 second', 1, 'late', 'C' FROM before_rows \
         RETURNING *) INSERT INTO inserted_log SELECT * FROM r",
    )
    .await
    .expect("late row");
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(archived_rows(&out.json()), 1, "{}", out.stdout);
    f.assert_reconciled("a late row after the batches were forgotten and expired");
    assert_eq!(unsettled(&f), Vec::<Value>::new());
}
