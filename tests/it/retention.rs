//! The ledger survives snapshot expiry by another engine (PyIceberg's
//! `expire_snapshots`, as scheduled maintenance or S3 Tables/Glue optimizers
//! run it): after every snapshot but the current one is expired, the next
//! archive archives no row twice, deletes what it should, and `status` and
//! `list` still show every archived window.

use serde_json::{Value, json};

use crate::common::*;
use crate::safety::Fixture;
use crate::services;

const WINDOWS: u64 = 4;
const PER_WINDOW: u64 = 50;

/// The crash scenarios follow one batch: batches run one at a time.
async fn fixture(s: &Services) -> Fixture {
    let shape = "    parallel_windows: 1\n";
    Fixture::new(s, None, Cat::Sqlite, PER_WINDOW, WINDOWS, shape, "").await
}

/// Expires every snapshot but the current one with PyIceberg.
fn expire_all_but_current(f: &Fixture) -> Value {
    let r = python(
        &f.s,
        "expire.py",
        &json!({"catalog_name": f.cat.py_name, "catalog": f.cat.py_props,
                "table": format!("{}.sensor_readings", f.cat.namespace)}),
    );
    assert_eq!(r["remaining"], 1, "{r}");
    assert!(
        r["properties"]
            .as_object()
            .is_some_and(|p| p.contains_key("permafrost.ledger")),
        "the ledger property survives expiry: {r}"
    );
    r
}

fn run(f: &Fixture, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend_from_slice(&["-c", &f.cfg, "--json"]);
    let out = f.ws.run_env(&all, &f.env_with(&[]));
    assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
    out.json()
}

/// `list` shows every window archived and `status` agrees.
fn assert_all_windows_archived(f: &Fixture, what: &str) {
    let list = run(f, &["list"]);
    let lines = list.as_array().expect("list");
    let archived = lines.iter().filter(|l| l["state"] == "archived").count();
    assert_eq!(archived as u64, WINDOWS, "{what}: {list}");
    let status = run(f, &["status"]);
    assert_eq!(status[0]["windows_archived"], WINDOWS, "{what}: {status}");
    assert_eq!(status[0]["rows_pending"], 0, "{what}: {status}");
}

/// A run that crashes after its first batch's Iceberg commit (unsettled).
fn crash_after_commit(f: &Fixture) {
    let out = f.archive(&[], &[("PERMAFROST_FAULT", "after-commit")]);
    assert_ne!(out.code, 0, "the fault must fire: {}", out.stderr);
}

/// The next run settles the crashed batch without archiving its rows again
/// and archives the rest: Postgres is empty, every row archived once.
async fn assert_crashed_batch_settled(f: &Fixture, c: &tokio_postgres::Client, what: &str) {
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        archived_rows(&out.json()),
        (WINDOWS - 1) * PER_WINDOW,
        "the crashed batch's rows are settled, not archived again: {}",
        out.stdout
    );
    assert_eq!(count(c, "sensor_readings", "true").await, 0);
    f.assert_reconciled(what);
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn kept_rows_are_not_archived_twice_after_their_snapshots_expire() {
    let s = services!();
    let f = fixture(&s).await;
    let c = f.db.client().await;
    let out = f.archive(&["--no-delete"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(archived_rows(&out.json()), WINDOWS * PER_WINDOW);
    let r = expire_all_but_current(&f);
    assert_eq!(r["expired"], WINDOWS - 1, "{r}");

    // The kept batches whose snapshots are gone are read from the files the
    // ledger recorded: their rows are deleted, not appended again.
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(archived_rows(&out.json()), 0, "{}", out.stdout);
    assert!(
        out.stderr.contains("snapshot was expired"),
        "{}",
        out.stderr
    );
    assert_eq!(count(&c, "sensor_readings", "true").await, 0);
    f.assert_reconciled("kept, expired, moved");
    assert_all_windows_archived(&f, "after the move");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn an_unsettled_batch_whose_snapshot_expired_is_reconciled() {
    let s = services!();
    let f = fixture(&s).await;
    let c = f.db.client().await;
    // A crash after the first batch's commit leaves it unsettled; a second
    // crash at the same point leaves the marker that would settle it
    // unsettled too — two snapshots, the first one is expired.
    for _ in 0..2 {
        crash_after_commit(&f);
    }
    assert_eq!(
        count(&c, "sensor_readings", "true").await as u64,
        WINDOWS * PER_WINDOW,
        "nothing deleted by the crashed runs"
    );
    let r = expire_all_but_current(&f);
    assert_eq!(r["expired"], 1, "{r}");
    assert_crashed_batch_settled(&f, &c, "crash, expiry, recovery").await;
    assert_all_windows_archived(&f, "after recovery");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn restored_rows_are_recognised_after_the_snapshots_expire() {
    let s = services!();
    let f = fixture(&s).await;
    let c = f.db.client().await;
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(count(&c, "sensor_readings", "true").await, 0);
    // Bring the oldest window back into the source table.
    let list = run(&f, &["list"]);
    let first = &list.as_array().expect("list")[0];
    let (from, to) = (
        first["window_start"].as_str().expect("start").to_string(),
        first["window_end"].as_str().expect("end").to_string(),
    );
    let restored = run(
        &f,
        &[
            "restore",
            "-t",
            "sensor_readings",
            "--from",
            &from,
            "--to",
            &to,
            "--merge",
        ],
    );
    assert_eq!(restored["inserted"], PER_WINDOW, "{restored}");
    let r = expire_all_but_current(&f);
    assert_eq!(r["expired"], WINDOWS - 1, "{r}");

    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(archived_rows(&out.json()), 0, "{}", out.stdout);
    assert_eq!(
        count(&c, "sensor_readings", "true").await,
        0,
        "restored rows settled and deleted"
    );
    f.assert_reconciled("restore, expiry, archive");
    assert_all_windows_archived(&f, "after the restore");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn an_expired_history_without_a_ledger_is_refused() {
    let s = services!();
    let f = fixture(&s).await;
    let c = f.db.client().await;
    let out = f.archive(&["--no-delete"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // A table written before the ledger existed: drop the property, expire.
    let drop = python(
        &f.s,
        "expire.py",
        &json!({"catalog_name": f.cat.py_name, "catalog": f.cat.py_props,
                "table": format!("{}.sensor_readings", f.cat.namespace),
                "remove_properties": ["permafrost.ledger"]}),
    );
    assert_eq!(drop["remaining"], 1, "{drop}");
    let total = count(&c, "sensor_readings", "true").await;
    let out = f.archive(&[], &[]);
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.error_lines().len(), 1, "{}", out.stderr);
    assert!(
        out.error_lines()[0].contains("expired before permafrost kept a durable ledger"),
        "{}",
        out.stderr
    );
    assert_eq!(count(&c, "sensor_readings", "true").await, total);
}

/// Compacts every data file of the fixture's archive table with PyIceberg,
/// as a `replace` (tests/py/rewrite.py): what an optimizer does unasked.
fn compact_externally(f: &Fixture) -> Value {
    let r = python(
        &f.s,
        "rewrite.py",
        &json!({"catalog_name": f.cat.py_name, "catalog": f.cat.py_props,
                "table": format!("{}.sensor_readings", f.cat.namespace),
                "column": "recorded_at", "from": 0, "to": 4_102_444_800_000_000i64,
                "mode": "compact"}),
    );
    assert_eq!(r["operation"], "replace", "{r}");
    r
}

/// A crash leaves a batch unsettled; another engine compacts its file
/// before the next run.  While its snapshot is kept, the next run reads the
/// batch's own (replaced, still stored) file and settles it; once the
/// snapshot is expired and the replaced file deleted (another engine's
/// orphan removal), the run refuses the range in one line and deletes
/// nothing, as the README says.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn an_unsettled_batch_another_engine_compacted_is_reconciled_or_refused() {
    let s = services!();
    let f = fixture(&s).await;
    let c = f.db.client().await;
    crash_after_commit(&f);
    let r = compact_externally(&f);
    assert_eq!(r["files_before"], 1, "{r}");
    assert_crashed_batch_settled(&f, &c, "crash, compaction, recovery").await;

    // Again, on a second table: now the replaced file is gone too.
    let f = fixture(&s).await;
    let c = f.db.client().await;
    crash_after_commit(&f);
    let committed: Vec<String> = crate::maintenance::files_under(&f.ws.path().join("warehouse"))
        .into_iter()
        .filter(|p| p.ends_with(".parquet"))
        .collect();
    assert_eq!(committed.len(), 1, "{committed:?}");
    compact_externally(&f);
    let r = expire_all_but_current(&f);
    assert_eq!(r["expired"], 1, "{r}");
    for path in &committed {
        std::fs::remove_file(path).expect("remove the replaced file");
    }
    let before = count(&c, "sensor_readings", "true").await;
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert_eq!(out.error_lines().len(), 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("rewritten (compaction) and expired; nothing was deleted"),
        "{}",
        out.stderr
    );
    assert_eq!(count(&c, "sensor_readings", "true").await, before);
}
