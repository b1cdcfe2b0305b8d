//! `--dry-run`, `--no-delete`, re-runs and late rows.

use serde_json::json;

use crate::common::*;
use crate::services;

const DAY_US: i64 = 86_400_000_000;

/// A small sensor table (40 days × 500 rows) and a config on the SQLite catalog.
pub async fn small_setup(s: &Services, rows: u64) -> (TestDb, Ws, CatalogSetup, String, i64) {
    let db = TestDb::create(s, "modes").await;
    let c = db.client().await;
    load_sample(&c, rows).await;
    let now = pg_now(&c).await;
    let ws = Ws::new();
    let cat = CatalogSetup::new(Cat::Sqlite, s, &ws).await;
    let cfg = ws.config(
        "permafrost.yaml",
        &format!(
            "database:\n  dsn: \"{}\"\n{}global:\n  namespace: {}\ntables:\n\
             \x20 - name: sensor_readings\n    timestamp_column: recorded_at\n    partition_by: day\n    lag: 15d\n",
            db.dsn, cat.yaml, cat.namespace
        ),
    );
    (db, ws, cat, cfg.to_string_lossy().to_string(), now)
}

/// The rows [`small_setup`]'s config archives at `now` (older than its
/// 15-day lag, at whole days), as a condition on `sensor_readings`.
pub fn archivable(now: i64) -> String {
    let cutoff = now - 15 * 86_400_000_000;
    format!(
        "recorded_at < '{}'",
        rfc3339(cutoff - cutoff % 86_400_000_000)
    )
}

fn iceberg_count(s: &Services, cat: &CatalogSetup) -> (i64, usize) {
    let r = interop(
        s,
        &json!({"catalog_name": cat.py_name, "catalog": cat.py_props, "table": format!("{}.sensor_readings", cat.namespace),
                "time_column": "recorded_at", "unit": "day", "sum_columns": [], "duckdb": false}),
    );
    (
        r["pyiceberg"]["count"].as_i64().unwrap_or(-1),
        r["pyiceberg"]["snapshots"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn dry_run_writes_nothing_and_reports_counts() {
    let s = services!();
    let (db, ws, _cat, cfg, now) = small_setup(&s, 30_000).await;
    let c = db.client().await;
    let total = count(&c, "sensor_readings", "true").await;
    let cut = (now - 15 * DAY_US).div_euclid(DAY_US) * DAY_US;
    let below = count(
        &c,
        "sensor_readings",
        &format!("recorded_at < to_timestamp({cut}::float8/1e6)"),
    )
    .await;
    let out = ws.run(&[
        "archive",
        "-c",
        &cfg,
        "--dry-run",
        "--json",
        "--now",
        &rfc3339(now),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    let planned = r[0]["planned"].as_array().expect("planned");
    assert!(planned.len() >= 40, "windows planned: {}", planned.len());
    let rows: i64 = planned
        .iter()
        .map(|p| p["rows"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(rows, below, "dry run reports the rows below the cutoff");
    assert_eq!(r[0]["batches"].as_array().map(Vec::len), Some(0));
    assert_eq!(
        count(&c, "sensor_readings", "true").await,
        total,
        "nothing deleted"
    );
    assert!(
        !ws.path().join("warehouse").exists()
            || std::fs::read_dir(ws.path().join("warehouse"))
                .map(|d| d.count())
                .unwrap_or(0)
                == 0,
        "no data written"
    );
    // The human form names the windows too.
    let out = ws.run(&["archive", "-c", &cfg, "--dry-run", "--now", &rfc3339(now)]);
    assert!(out.stdout.contains("would be archived"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&rfc3339(cut - DAY_US)),
        "last window listed: {}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn no_delete_keeps_rows_and_a_later_run_settles_them_without_rearchiving() {
    let s = services!();
    let (db, ws, cat, cfg, now) = small_setup(&s, 20_000).await;
    let c = db.client().await;
    let total = count(&c, "sensor_readings", "true").await;
    let cut = (now - 15 * DAY_US).div_euclid(DAY_US) * DAY_US;
    let cutsql = format!("recorded_at < to_timestamp({cut}::float8/1e6)");
    let below = count(&c, "sensor_readings", &cutsql).await;
    let now_s = rfc3339(now);

    let out = ws.run(&[
        "archive",
        "-c",
        &cfg,
        "--no-delete",
        "--json",
        "--now",
        &now_s,
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        count(&c, "sensor_readings", "true").await,
        total,
        "--no-delete keeps every row"
    );
    // Kept rows are archived: none is left pending (as `status` counts).
    assert_eq!(out.json()[0]["pending"]["rows"], 0, "{}", out.stdout);
    let (n, snaps) = iceberg_count(&s, &cat);
    assert_eq!(n, below, "copied rows are in the archive");
    let st = ws
        .run(&["status", "-c", &cfg, "--json", "--now", &now_s])
        .json();
    assert_eq!(st[0]["windows_kept"].as_u64(), Some(snaps as u64), "{st}");
    assert_eq!(st[0]["windows_pending"], 0);

    // Again with --no-delete: nothing new to copy.
    let no_delete = [
        "archive",
        "-c",
        &cfg,
        "--no-delete",
        "--json",
        "--now",
        &now_s,
    ];
    let out = ws.run(&no_delete);
    assert_eq!(
        out.json()[0]["batches"].as_array().map(Vec::len),
        Some(0),
        "{}",
        out.stdout
    );
    assert_eq!(out.json()[0]["pending"]["rows"], 0, "{}", out.stdout);
    assert_eq!(iceberg_count(&s, &cat), (below, snaps));
    // ... and nothing read again: every kept range holds the rows copied.
    let unchanged = &out.json()[0]["unchanged"];
    assert_eq!(
        unchanged["ranges"].as_u64(),
        Some(snaps as u64),
        "{unchanged}"
    );
    assert_eq!(unchanged["rows"].as_i64(), Some(below), "{unchanged}");

    // A late row in a kept window changes its count: that range is read
    // (its copied rows filtered out) and the row alone is copied.
    let late = cut - 3 * DAY_US + 1_000;
    c.batch_execute(&format!(
        "INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, value, unit) \
         VALUES (to_timestamp({late}::float8/1e6), 7, 'late', 2.5, 'celsius')"
    ))
    .await
    .expect("late row");
    let dry = ws.run(&[&no_delete[..], &["--dry-run"]].concat()).json();
    assert_eq!(dry[0]["planned"].as_array().map(Vec::len), Some(1), "{dry}");
    let day = late.div_euclid(DAY_US) * DAY_US;
    let in_day = format!(
        "recorded_at >= to_timestamp({day}::float8/1e6) \
         AND recorded_at < to_timestamp({}::float8/1e6)",
        day + DAY_US
    );
    let day_rows = count(&c, "sensor_readings", &in_day).await;
    assert_eq!(
        dry[0]["planned"][0]["rows"].as_i64(),
        Some(day_rows),
        "{dry}"
    );
    assert_eq!(
        dry[0]["unchanged"]["rows"].as_i64(),
        Some(below + 1 - day_rows),
        "{dry}"
    );
    let rep = ws.run(&no_delete).json();
    let batches = rep[0]["batches"].as_array().expect("batches");
    assert_eq!(batches.len(), 1, "{rep}");
    assert_eq!(
        (batches[0]["rows"].as_i64(), batches[0]["sequence"].as_i64()),
        (Some(1), Some(2))
    );
    assert_eq!(
        rep[0]["unchanged"]["ranges"].as_u64(),
        Some(snaps as u64 - 1),
        "{rep}"
    );
    let (below, total) = (below + 1, total + 1);
    assert_eq!(iceberg_count(&s, &cat), (below, snaps + 1));

    // A normal run deletes the copied rows without archiving them again.
    let out = ws.run(&["archive", "-c", &cfg, "--json", "--now", &now_s]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rep = out.json();
    let settled: i64 = rep[0]["batches"]
        .as_array()
        .expect("batches")
        .iter()
        .map(|b| b["reconciled_rows"].as_i64().unwrap_or(0))
        .sum();
    let written: i64 = rep[0]["batches"]
        .as_array()
        .expect("batches")
        .iter()
        .map(|b| b["rows"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!((settled, written), (below, 0), "{rep}");
    assert_eq!(
        count(&c, "sensor_readings", &cutsql).await,
        0,
        "rows deleted now"
    );
    assert_eq!(count(&c, "sensor_readings", "true").await, total - below);
    assert_eq!(
        iceberg_count(&s, &cat).0,
        below,
        "each row archived exactly once"
    );
    let st = ws
        .run(&["status", "-c", &cfg, "--json", "--now", &now_s])
        .json();
    assert_eq!(st[0]["windows_kept"], 0, "{st}");
    assert_eq!(st[0]["windows_pending"], 0, "{st}");
    assert_eq!(
        st[0]["unsettled_batches"].as_array().map(Vec::len),
        Some(0),
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn late_rows_in_an_archived_window_become_a_new_batch() {
    let s = services!();
    let (db, ws, cat, cfg, now) = small_setup(&s, 10_000).await;
    let c = db.client().await;
    let now_s = rfc3339(now);
    let out = ws.run(&["archive", "-c", &cfg, "--json", "--now", &now_s]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (n1, snaps1) = iceberg_count(&s, &cat);

    // Two late rows into an archived window, one identical to an archived row's content but new.
    let late = now - 30 * DAY_US;
    c.batch_execute(&format!(
        "INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, value, unit) VALUES \
         (to_timestamp({late}::float8/1e6), 99, 'late', 1.5, 'celsius'), \
         (to_timestamp({late}::float8/1e6), 99, 'late', 1.5, 'celsius')"
    ))
    .await
    .expect("late rows");
    let out = ws.run(&["archive", "-c", &cfg, "--json", "--now", &now_s]);
    let rep = out.json();
    let batches = rep[0]["batches"].as_array().expect("batches");
    assert_eq!(batches.len(), 1, "{rep}");
    assert_eq!(batches[0]["rows"], 2);
    assert_eq!(
        batches[0]["sequence"], 2,
        "a later batch of the same window"
    );
    assert_eq!(iceberg_count(&s, &cat), (n1 + 2, snaps1 + 1));
    assert_eq!(
        count(&c, "sensor_readings", "sensor_name = 'late'").await,
        0
    );
}
