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
    let mut args = vec![
        "maintain",
        "-c",
        &f.cfg,
        "--json",
        "--older-than",
        "0s",
        "--retain-last",
        "2",
        "--max-manifests",
        "4",
    ];
    args.extend_from_slice(extra);
    f.ws.run_env(&args, &f.env_with(env))
}

#[tokio::test(flavor = "multi_thread")]
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
        json!({"expire_snapshots": 0, "merge_manifests": true}),
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

#[tokio::test(flavor = "multi_thread")]
async fn maintain_racing_an_archive_fails_cleanly() {
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
    assert_ne!(
        raced.code, 0,
        "the stale rewrite must not land: {}",
        raced.stdout
    );
    assert_eq!(raced.error_lines().len(), 1, "{}", raced.stderr);
    f.assert_reconciled("archive won the race");
    // Run again: it rewrites on the new state.
    let out = maintain(&f, &[], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()[0]["data_manifests_after"], 1);
    f.assert_reconciled("after the second maintain");
}

/// Three days of hourly cron runs (`archive --now T` stepped hourly, lag
/// 6h) with `maintain` after every 24: snapshots, manifests and the ledger
/// stay bounded (settled batches whose snapshots expired are rolled up per
/// month), and every row is archived exactly once.  Figures for longer
/// histories: `scripts/scale`.
#[tokio::test(flavor = "multi_thread")]
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
