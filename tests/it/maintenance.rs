//! `permafrost maintain`: snapshots expired and manifests merged without
//! changing what PyIceberg and DuckDB read, safe against a crash before its
//! commit and against an archive committing meanwhile; archiving goes on
//! exactly once afterwards.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;
use crate::safety::Fixture;
use crate::services;

const WINDOWS: u64 = 24;
const PER_WINDOW: u64 = 20;

fn read(f: &Fixture, prune: Option<(&str, &str)>) -> Value {
    let mut req = json!({"catalog_name": f.cat.py_name, "catalog": f.cat.py_props,
        "table": format!("{}.sensor_readings", f.cat.namespace), "time_column": "recorded_at",
        "unit": "day", "sum_columns": ["value"], "duckdb": true});
    if let Some((lo, hi)) = prune {
        req["prune"] = json!([lo, hi]);
    }
    interop(&f.s, &req)
}

fn maintain(f: &Fixture, extra: &[&str], env: &[(&str, &str)]) -> Out {
    maintain_keeping(f, "2", extra, env)
}

/// `maintain` expiring every snapshot but the last `retain`.
pub(crate) fn maintain_keeping(
    f: &Fixture,
    retain: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Out {
    let mut args = vec![
        "maintain",
        "-c",
        &f.cfg,
        "--json",
        "--older-than",
        "0s",
        "--retain-last",
        retain,
        "--max-manifests",
        "4",
    ];
    args.extend_from_slice(extra);
    f.ws.run_env(&args, &f.env_with(env))
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn maintain_shrinks_metadata_and_engines_read_the_same() {
    let s = services!();
    let f = Fixture::new(&s, None, Cat::Sqlite, PER_WINDOW, WINDOWS, "", "").await;
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let list =
        f.ws.run_env(&["list", "-c", &f.cfg, "--json"], &f.env_with(&[]))
            .json();
    let day = &list.as_array().expect("list")[5];
    let (lo, hi) = (
        day["window_start"].as_str().expect("start").to_string(),
        day["window_end"].as_str().expect("end").to_string(),
    );
    let before = read(&f, Some((&lo, &hi)));
    assert_eq!(before["pyiceberg"]["count"], WINDOWS * PER_WINDOW);

    // `status` says what `maintain` would do with the defaults (keep 7 days:
    // nothing to expire yet; 24 manifests > 16: merge).
    let status =
        f.ws.run_env(&["status", "-c", &f.cfg, "--json"], &f.env_with(&[]))
            .json();
    assert_eq!(
        status[0]["maintain_would"],
        json!({"expire_snapshots": 0, "merge_manifests": true, "compact_files": 0}),
        "{status}"
    );
    assert_eq!(status[0]["shape"]["data_manifests"], WINDOWS, "{status}");

    // A dry run changes nothing.
    let dry = maintain(&f, &["--dry-run"], &[]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    let d = &dry.json()[0];
    assert_eq!(d["snapshots_expired"], WINDOWS - 2, "{d}");
    assert_eq!(d["data_manifests_before"], WINDOWS, "{d}");

    // A crash just before the manifest commit: the expiry landed, the
    // rewrite did not; a second run finishes the job.
    let crashed = maintain(&f, &[], &[("PERMAFROST_FAULT", "maintain-before-commit")]);
    assert_ne!(crashed.code, 0, "the fault must fire: {}", crashed.stderr);
    let mid = read(&f, None);
    assert_eq!(
        mid["pyiceberg"]["snapshots"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(mid["pyiceberg"]["count"], before["pyiceberg"]["count"]);
    let out = maintain(&f, &[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = &out.json()[0];
    eprintln!("maintain: dry run {d}\nafter the crash and the rerun {r}");
    assert_eq!(r["snapshots_expired"], 0, "already expired: {r}");
    assert_eq!(r["data_manifests_after"], 1, "{r}");
    assert!(
        r["metadata_bytes_after"].as_u64() < d["metadata_bytes_before"].as_u64(),
        "metadata shrank: {d} -> {r}"
    );

    let after = read(&f, Some((&lo, &hi)));
    for engine in ["pyiceberg", "duckdb"] {
        assert_eq!(
            after[engine]["count"], before[engine]["count"],
            "{engine} count"
        );
        assert!(
            json_eq(&after[engine]["windows"], &before[engine]["windows"]),
            "{engine} content: {} vs {}",
            after[engine]["windows"],
            before[engine]["windows"]
        );
    }
    assert_eq!(
        after["pyiceberg"]["pruned_files"], 1,
        "one day plans one file"
    );
    assert_eq!(after["pyiceberg"]["pruned_rows"], PER_WINDOW);
    let ops: Vec<String> = after["pyiceberg"]["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|s| s["operation"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        ops.last()
            .is_some_and(|o| o.to_lowercase().contains("replace")),
        "{ops:?}"
    );

    // Archiving goes on: late rows into an old window, exactly once.
    let c = f.db.client().await;
    c.batch_execute(&format!(
        "INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, unit) \
         SELECT '{lo}'::timestamptz + g * interval '1 minute', 1, 'late', 'C' FROM generate_series(1, 5) g; \
         INSERT INTO inserted_log SELECT * FROM sensor_readings WHERE sensor_name = 'late';"
    ))
    .await
    .expect("late rows");
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(archived_rows(&out.json()), 5);
    f.assert_reconciled("after maintain");
    let status =
        f.ws.run_env(&["status", "-c", &f.cfg, "--json"], &f.env_with(&[]))
            .json();
    assert_eq!(status[0]["windows_archived"], WINDOWS, "{status}");
}

/// An archive commits while `maintain` is about to commit its manifest
/// rewrite: the stale rewrite must not land; `maintain` redoes it on the
/// table as it is now, and nothing is lost or archived twice.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn maintain_racing_an_archive_retries_on_the_new_state() {
    let s = services!();
    let f = Fixture::new(&s, None, Cat::Sqlite, PER_WINDOW, 8, "", "").await;
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Pause maintain just before its manifest commit, archive meanwhile.
    let pause = Pause::new();
    let point = pause.env("maintain-before-commit");
    let mut args = vec![
        "maintain",
        "-c",
        f.cfg.as_str(),
        "--json",
        "--max-manifests",
        "2",
    ];
    args.extend_from_slice(&["--older-than", "0s", "--retain-last", "100"]);
    let child =
        f.ws.spawn(&args, &f.env_with(&[("PERMAFROST_PAUSE", &point)]));
    let fifo = pause
        .wait_reached(Duration::from_secs(120))
        .expect("maintain reached its commit");
    let c = f.db.client().await;
    c.batch_execute(
        "INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, unit) \
         SELECT (SELECT min(recorded_at) FROM before_rows) + g * interval '1 minute', 2, 'race', 'C' \
         FROM generate_series(1, 3) g; \
         INSERT INTO inserted_log SELECT * FROM sensor_readings WHERE sensor_name = 'race';",
    )
    .await
    .expect("rows");
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(archived_rows(&out.json()), 3);
    Pause::resume(fifo);
    let raced = finish(child);
    assert_eq!(raced.code, 0, "{}", raced.stderr);
    let r = &raced.json()[0];
    assert_eq!(r["retries"], 1, "the first rewrite lost the race: {r}");
    assert!(
        raced.stderr.contains("trying again on the new state"),
        "{}",
        raced.stderr
    );
    // The rewrite that landed holds the racing batch's file too.
    assert_eq!(r["data_manifests_after"], 1, "{r}");
    let read = read(&f, None);
    assert_eq!(read["pyiceberg"]["count"], 8 * PER_WINDOW + 3);
    assert_eq!(read["duckdb"]["count"], 8 * PER_WINDOW + 3);
    f.assert_reconciled("archive won the race");
}

/// Three days of hourly cron runs (`archive --now T` stepped hourly, lag
/// 6h) with `maintain` after every 24: snapshots, manifests and the ledger
/// stay bounded (settled batches whose snapshots expired are rolled up per
/// month), and every row is archived exactly once.  Figures for longer
/// histories: `scripts/scale`.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_maintained_hourly_history_stays_small() {
    let s = services!();
    let db = TestDb::create(&s, "hourly").await;
    let c = db.client().await;
    c.batch_execute(permafrost::demo::SAMPLE_SCHEMA)
        .await
        .expect("schema");
    c.batch_execute(
        "INSERT INTO device_events (occurred_at, device_id, event_type, severity) \
         SELECT timestamptz '2026-01-01 00:00:00+00' + i * interval '1 minute', i % 5, 'tick', 1 \
         FROM generate_series(0, 4 * 1440 - 1) i",
    )
    .await
    .expect("rows");
    let ws = Ws::new();
    let cat = CatalogSetup::new(Cat::Sqlite, &s, &ws).await;
    let cfg = ws.config(
        "permafrost.yaml",
        &format!(
            "database:\n  dsn: \"{}\"\n{}global:\n  namespace: {}\ntables:\n\
             \x20 - name: device_events\n    timestamp_column: occurred_at\n    partition_by: hour\n    lag: 6h\n",
            db.dsn, cat.yaml, cat.namespace
        ),
    );
    let cfg = cfg.to_string_lossy().to_string();
    let env = CatalogSetup::env(&s);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let start = 1_767_250_800; // 2026-01-01T07:00:00Z
    let mut archived = 0;
    for i in 0..72 {
        let now = rfc3339((start + i * 3600) * 1_000_000);
        let out = ws.run_env(&["archive", "-c", &cfg, "--now", &now, "--json"], &env);
        assert_eq!(out.code, 0, "run {i}: {}", out.stderr);
        archived += archived_rows(&out.json());
        if (i + 1) % 24 == 0 {
            let m = ws.run_env(
                &[
                    "maintain",
                    "-c",
                    &cfg,
                    "--older-than",
                    "0s",
                    "--retain-last",
                    "24",
                ],
                &env,
            );
            assert_eq!(m.code, 0, "maintain: {}", m.stderr);
        }
    }
    // The next cron run after the last maintain rolls up what it expired;
    // with `maintenance.after_archive` it maintains too.
    let now = rfc3339((start + 72 * 3600) * 1_000_000);
    let yaml = std::fs::read_to_string(&cfg).expect("config");
    let auto = ws.config(
        "auto.yaml",
        &format!(
            "{yaml}maintenance:\n  after_archive: true\n  older_than: 0s\n  retain_last: 24\n  max_manifests: 1\n"
        ),
    );
    let auto = auto.to_string_lossy().to_string();
    let out = ws.run_env(&["archive", "-c", &auto, "--now", &now, "--json"], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    archived += archived_rows(&out.json());
    assert_eq!(archived, 73 * 60, "one hour of rows per run");
    let status = ws
        .run_env(&["status", "-c", &cfg, "--json", "--now", &now], &env)
        .json();
    let shape = &status[0]["shape"];
    eprintln!("after 72 hourly runs: {shape}");
    assert_eq!(status[0]["windows_archived"], 73, "{status}");
    // 24 kept, the manifest rewrite's, and the run since.
    assert!(shape["snapshots"].as_u64() <= Some(26), "{shape}");
    assert_eq!(
        shape["data_manifests"], 1,
        "maintained after the archive: {shape}"
    );
    // 72 batches at ~200 bytes would be ~14 KB; rolled up it is the 24
    // batches since the last maintain plus one month entry.
    assert!(shape["ledger_bytes"].as_u64() < Some(8_000), "{shape}");
    assert_eq!(
        count(
            &c,
            "device_events",
            "occurred_at < timestamptz '2026-01-04 01:00:00+00'"
        )
        .await,
        0
    );
}

/// Inserts `n` rows into the day window `k` days before the fixture's newest
/// (an archived window: late rows) and logs them.
async fn late_rows(f: &Fixture, k: u32, n: u32, name: &str) {
    let c = f.db.client().await;
    c.batch_execute(&format!(
        "INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, value, unit) \
         SELECT date_trunc('day', now()) - interval '20 days' - {k} * interval '1 day' \
                + g * interval '1 minute', 3, '{name}', g, 'C' FROM generate_series(1, {n}) g; \
         INSERT INTO inserted_log SELECT * FROM sensor_readings WHERE sensor_name = '{name}';"
    ))
    .await
    .expect("late rows");
}

/// Every file under `dir`, recursively.
pub(crate) fn files_under(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.to_string_lossy().to_string());
            }
        }
    }
    out
}

fn read_all(f: &Fixture, prune: Option<(&str, &str)>) -> Value {
    let mut req = json!({"catalog_name": f.cat.py_name, "catalog": f.cat.py_props,
        "table": format!("{}.sensor_readings", f.cat.namespace), "time_column": "recorded_at",
        "unit": "day", "sum_columns": ["value"], "duckdb": true, "time_travel": true,
        "duckdb_rest": f.cat.duckdb_rest(&f.s)});
    if let Some((lo, hi)) = prune {
        req["prune"] = json!([lo, hi]);
    }
    interop(&f.s, &req)
}

/// Asserts both engines read what they read `before`, and every retained
/// snapshot still reads (no referenced file was deleted).
fn assert_same_content(what: &str, before: &Value, after: &Value) {
    for engine in ["pyiceberg", "duckdb"] {
        assert_eq!(
            after[engine]["count"], before[engine]["count"],
            "{what}: {engine} count"
        );
        assert!(
            json_eq(&after[engine]["windows"], &before[engine]["windows"]),
            "{what}: {engine} content: {} vs {}",
            after[engine]["windows"],
            before[engine]["windows"]
        );
    }
    let counts = after["pyiceberg"]["snapshot_counts"]
        .as_object()
        .expect("snapshot counts");
    assert!(!counts.is_empty(), "{what}: {after}");
}

/// The time `days` from now, RFC 3339 (maintain's simulated clock).
fn days_from_now(days: i64) -> String {
    rfc3339((chrono::Utc::now().timestamp() + days * 86_400) * 1_000_000)
}

/// Late rows make small files in old partitions; a crashed batch leaves
/// data files no snapshot references.  `maintain` merges the small files of
/// each partition (not the open batch's, which the ledger still needs),
/// keeps young orphans, deletes old ones — also after a crash half-way
/// through — and engines read the same rows at every retained snapshot.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn maintain_compacts_small_files_and_deletes_orphans() {
    let s = services!();
    let f = Fixture::new(&s, None, Cat::Sqlite, PER_WINDOW, 8, "", "").await;
    let warehouse = f.ws.path().join("warehouse");
    assert_eq!(f.archive(&[], &[]).code, 0);
    // Day 3 gets two late batches, day 5 one: 3 + 2 small files.
    for (k, name) in [(3, "late-a"), (3, "late-b"), (5, "late-c")] {
        late_rows(&f, k, 5, name).await;
        let out = f.archive(&[], &[]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(archived_rows(&out.json()), 5);
    }
    // A batch for day 6 crashes after writing its files: orphans.
    late_rows(&f, 6, 5, "late-d").await;
    let on_disk = files_under(&warehouse);
    let crashed = f.archive(&[], &[("PERMAFROST_FAULT", "after-write")]);
    assert_ne!(crashed.code, 0, "the fault must fire: {}", crashed.stderr);
    let crash_files: Vec<String> = files_under(&warehouse)
        .difference(&on_disk)
        .cloned()
        .collect();
    assert!(
        !crash_files.is_empty() && crash_files.iter().all(|p| p.ends_with(".parquet")),
        "{crash_files:?}"
    );
    // The rerun archives day 6's rows; its batch stays open in the ledger
    // (files recorded) until the next commit, so day 6 is not compacted.
    let out = f.archive(&[], &[]);
    assert_eq!(archived_rows(&out.json()), 5, "{}", out.stderr);

    let list =
        f.ws.run_env(&["list", "-c", &f.cfg, "--json"], &f.env_with(&[]))
            .json();
    let day3 = list
        .as_array()
        .expect("list")
        .iter()
        .find(|w| w["files"] == 3)
        .expect("a window with three files")
        .clone();
    let (lo, hi) = (
        day3["window_start"].as_str().expect("start").to_string(),
        day3["window_end"].as_str().expect("end").to_string(),
    );
    let before = read_all(&f, Some((&lo, &hi)));
    assert_eq!(before["pyiceberg"]["pruned_files"], 3);
    let status =
        f.ws.run_env(&["status", "-c", &f.cfg, "--json"], &f.env_with(&[]))
            .json();
    assert_eq!(status[0]["maintain_would"]["compact_files"], 5, "{status}");

    // Real time: everything unreferenced is young, nothing is deleted.
    let out = maintain(&f, &[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = &out.json()[0];
    eprintln!("maintain: {r}");
    assert_eq!(
        r["compacted"],
        json!({"partitions": 2, "files_in": 5, "files_out": 2, "rows": 2 * PER_WINDOW + 15, "delete_files_removed": 0}),
        "{r}"
    );
    assert_eq!(r["orphan_files"], 0, "{r}");
    assert!(
        r["orphan_files_young"].as_u64() >= Some(crash_files.len() as u64),
        "{r}"
    );
    assert!(crash_files.iter().all(|p| std::path::Path::new(p).exists()));
    let after = read_all(&f, Some((&lo, &hi)));
    assert_same_content("after compaction", &before, &after);
    assert_eq!(after["pyiceberg"]["pruned_files"], 1, "day 3 is one file");
    assert_eq!(after["pyiceberg"]["pruned_rows"], PER_WINDOW + 10);

    // Four days later: a crash half-way through the deletes, then a rerun.
    let later = days_from_now(4);
    let crashed = maintain(
        &f,
        &["--now", &later],
        &[("PERMAFROST_FAULT", "maintain-mid-orphan-delete")],
    );
    assert_ne!(crashed.code, 0, "the fault must fire: {}", crashed.stderr);
    assert_same_content("after a crashed sweep", &before, &read_all(&f, None));
    let out = maintain(&f, &["--now", &later], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = &out.json()[0];
    eprintln!("maintain four days later, after a crashed sweep: {r}");
    assert!(r["orphan_files"].as_u64() >= Some(1), "{r}");
    assert!(
        crash_files
            .iter()
            .all(|p| !std::path::Path::new(p).exists()),
        "the crashed batch's files are gone"
    );
    let end = read_all(&f, None);
    assert_same_content("after the sweep", &before, &end);
    // Expired snapshots' files went too: 2 snapshots kept, and what is on
    // disk is what they reference (a dry run finds nothing more).
    let again = maintain(&f, &["--now", &later, "--dry-run"], &[]);
    assert_eq!(again.json()[0]["orphan_files"], 0, "{}", again.stdout);
    assert_eq!(again.json()[0]["orphan_files_young"], 0, "{}", again.stdout);
    f.assert_reconciled("after compaction and the sweep");

    // Archiving goes on exactly once; the safety age is enforced.
    late_rows(&f, 3, 5, "late-e").await;
    assert_eq!(archived_rows(&f.archive(&[], &[]).json()), 5);
    f.assert_reconciled("after more late rows");
    let refused = maintain(&f, &["--orphan-older-than", "10m"], &[]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
}

/// On S3 behind a REST catalog: the crashed batch's files are found by
/// listing the bucket and deleted once old enough; engines read the same.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn maintain_deletes_orphans_on_s3() {
    let s = services!();
    let f = Fixture::new(&s, None, Cat::Rest, PER_WINDOW, 4, "", "").await;
    assert_eq!(f.archive(&[], &[]).code, 0);
    late_rows(&f, 2, 5, "late-s3").await;
    let crashed = f.archive(&[], &[("PERMAFROST_FAULT", "after-write")]);
    assert_ne!(crashed.code, 0, "the fault must fire: {}", crashed.stderr);
    let out = f.archive(&[], &[]);
    assert_eq!(archived_rows(&out.json()), 5, "{}", out.stderr);
    let before = read_all(&f, None);

    let later = days_from_now(4);
    let dry = maintain(&f, &["--now", &later, "--dry-run", "--no-compact"], &[]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    let d = &dry.json()[0];
    // The crashed batch's data file(s), plus the manifest lists and
    // manifests of the snapshots the dry run would expire are not orphans
    // yet: only the crash's files are.
    let crash = d["orphan_files"].as_u64().expect("orphans");
    assert!(crash >= 1, "{d}");
    let out = maintain(&f, &["--now", &later], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = &out.json()[0];
    eprintln!("S3: dry run {d}\nmaintain {r}");
    assert!(
        r["orphan_files"].as_u64() > Some(crash),
        "expired snapshots' files too: {r}"
    );
    assert_same_content("S3 after the sweep", &before, &read_all(&f, None));
    let again = maintain(&f, &["--now", &later, "--dry-run"], &[]);
    assert_eq!(again.json()[0]["orphan_files"], 0, "{}", again.stdout);
    f.assert_reconciled("S3 after the sweep");
}

/// Another writer expires snapshots between two commits of one archive run.
/// The second commit computes the ledger from the table the first left
/// (which still shows the expired snapshots) and iceberg-rust rebases it
/// onto the catalog's table: every batch stays in the ledger, through a
/// later expiry of everything but the current snapshot too, and nothing is
/// archived twice.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn expiry_between_two_commits_of_a_run_keeps_every_batch() {
    const OLD: u64 = 8;
    let s = services!();
    let f = Fixture::new(
        &s,
        None,
        Cat::Sqlite,
        PER_WINDOW,
        OLD,
        "    parallel_windows: 1\n",
        "",
    )
    .await;
    let out = f.archive(&[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // One late row in each of three archived windows: three batches next.
    let c = f.db.client().await;
    c.batch_execute(
        "INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, unit) \
         SELECT (SELECT min(recorded_at) FROM before_rows) + g * interval '1 day' + interval '1 minute', \
                3, 'late', 'C' FROM generate_series(0, 2) g; \
         INSERT INTO inserted_log SELECT * FROM sensor_readings WHERE sensor_name = 'late';",
    )
    .await
    .expect("late rows");
    let pause = Pause::new();
    let point = pause.env("after-commit");
    let child = f.ws.spawn(
        &["archive", "-c", &f.cfg, "--json"],
        &f.env_with(&[("PERMAFROST_PAUSE", &point)]),
    );
    let fifo = pause
        .wait_reached(Duration::from_secs(120))
        .expect("the first late batch committed");
    let expired = maintain(&f, &[], &[]);
    assert_eq!(expired.code, 0, "{}", expired.stderr);
    // The first run's 8 snapshots and the late batch's: all but 2 go.
    assert_eq!(
        expired.json()[0]["snapshots_expired"],
        OLD - 1,
        "{}",
        expired.stdout
    );
    Pause::resume(fifo);
    let out = finish(child);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(archived_rows(&out.json()), 3);
    f.assert_reconciled("expiry between two commits");

    // Everything but the current snapshot expired: the ledger alone knows
    // the 11 batches, and nothing is planned again.
    let all = maintain_keeping(&f, "1", &[], &[]);
    assert_eq!(all.code, 0, "{}", all.stderr);
    let again = f.archive(&[], &[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(archived_rows(&again.json()), 0, "{}", again.stdout);
    let status =
        f.ws.run_env(&["status", "-c", &f.cfg, "--json"], &f.env_with(&[]))
            .json();
    assert_eq!(status[0]["windows_archived"], OLD, "{status}");
    let list =
        f.ws.run_env(&["list", "-c", &f.cfg, "--json"], &f.env_with(&[]))
            .json();
    let windows = list.as_array().expect("list");
    assert_eq!(windows.len() as u64, OLD, "{list}");
    let rows: u64 = windows
        .iter()
        .map(|w| w["rows"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(rows, OLD * PER_WINDOW + 3, "the ledger's rows: {list}");
    let read = read(&f, None);
    assert_eq!(read["pyiceberg"]["count"], OLD * PER_WINDOW + 3);
    assert_eq!(read["duckdb"]["count"], OLD * PER_WINDOW + 3);
    f.assert_reconciled("after expiring everything");
}

/// Upgrades the fixture's archive table to Iceberg format v3.
async fn upgrade_fixture_to_v3(f: &Fixture) {
    let (catalog, table) = open_table(&f.cfg, &f.env, &f.cat.namespace, "sensor_readings").await;
    upgrade_to_v3(&catalog, &table).await;
}

/// A table another engine upgraded to format v3: archiving goes on (the
/// append writes v3 metadata), while `maintain` says why it leaves
/// compaction and the manifest merge (which write v2 metadata, without the
/// row lineage v3 needs) to that engine, still expires snapshots and
/// sweeps orphans, and every row stays readable by other engines.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_table_upgraded_to_format_v3_is_archived_but_not_rewritten() {
    let s = services!();
    let f = Fixture::new(&s, None, Cat::Sqlite, PER_WINDOW, 8, "", "").await;
    assert_eq!(f.archive(&[], &[]).code, 0);
    upgrade_fixture_to_v3(&f).await;
    for name in ["late-a", "late-b", "late-c"] {
        late_rows(&f, 3, 5, name).await;
        let out = f.archive(&[], &[]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(archived_rows(&out.json()), 5);
    }
    let status =
        f.ws.run_env(&["status", "-c", &f.cfg, "--json"], &f.env_with(&[]))
            .json();
    let would = &status[0]["maintain_would"];
    assert_eq!(
        (&would["merge_manifests"], &would["compact_files"]),
        (&Value::Bool(false), &Value::from(0)),
        "{status}"
    );
    let out = maintain(&f, &[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let m = out.json();
    let m = &m[0];
    assert!(
        m["rewrites_skipped"]
            .as_str()
            .is_some_and(|why| why.contains("format v3")),
        "{m}"
    );
    assert!(out.stderr.contains("compaction and manifest merge skipped"));
    assert_eq!(m["compacted"]["files_in"], 0, "{m}");
    assert_eq!(m["data_manifests_after"], m["data_manifests_before"], "{m}");
    assert_eq!(
        m["snapshots_expired"],
        11 - 2,
        "8 days, 3 late batches: {m}"
    );
    let after = read(&f, None);
    for engine in ["pyiceberg", "duckdb"] {
        assert_eq!(
            after[engine]["count"],
            8 * PER_WINDOW + 15,
            "{engine}: {after}"
        );
    }
}
