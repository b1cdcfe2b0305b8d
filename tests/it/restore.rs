//! Restore: archived ranges back into Postgres — staged and compared row by
//! row with the originals, time travel, attach into a range-partitioned
//! table, merge with each conflict policy, validation failures, and restored
//! rows never archived twice.

use serde_json::Value;

use crate::common::*;
use crate::services;

const DAY: i64 = 86_400_000_000;

struct Fx {
    db: TestDb,
    ws: Ws,
    cat: CatalogSetup,
    cfg: String,
    env: Vec<(&'static str, String)>,
    day0: i64,
}

impl Fx {
    /// `table` (already created in `db`) archived through `cat` with `lag`.
    async fn new(s: &Services, db: TestDb, kind: Cat, table: &str, ts: &str, lag: &str) -> Self {
        Self::with(s, db, kind, table, ts, lag, "").await
    }

    /// As [`Fx::new`], with `extra` lines of table configuration.
    async fn with(
        s: &Services,
        db: TestDb,
        kind: Cat,
        table: &str,
        ts: &str,
        lag: &str,
        extra: &str,
    ) -> Self {
        let ws = Ws::new();
        let cat = CatalogSetup::new(kind, s, &ws).await;
        let cfg = ws
            .config(
                "permafrost.yaml",
                &format!(
                    "database:\n  dsn: \"{}\"\n{}global:\n  namespace: {}\ntables:\n  - name: {table}\n    timestamp_column: {ts}\n    lag: {lag}\n{extra}",
                    db.dsn, cat.yaml, cat.namespace
                ),
            )
            .to_string_lossy()
            .to_string();
        let c = db.client().await;
        let day0: i64 = c
            .query_one(
                "SELECT (extract(epoch FROM date_trunc('day', now()) - interval '40 days') * 1000000)::int8",
                &[],
            )
            .await
            .expect("day0")
            .get(0);
        let env = CatalogSetup::env(s);
        Self {
            db,
            ws,
            cat,
            cfg,
            env,
            day0,
        }
    }

    fn run(&self, args: &[&str]) -> Out {
        let mut a = vec![args[0], "-c", self.cfg.as_str()];
        a.extend_from_slice(&args[1..]);
        self.ws.run_env(&a, &self.env_with(&[]))
    }

    /// The catalog's environment plus `extra`.
    fn env_with<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut all: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra);
        all
    }

    fn archive_env(&self, env: &[(&str, &str)]) -> Out {
        self.ws.run_env(
            &["archive", "-c", self.cfg.as_str(), "--json"],
            &self.env_with(env),
        )
    }

    fn archive(&self) -> Value {
        let out = self.run(&["archive", "--json"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.json()
    }

    /// `restore` of days `[from, to)` (relative to day0) with `extra` flags.
    fn restore(&self, table: &str, from: i64, to: i64, extra: &[&str]) -> Out {
        let (f, t) = (
            rfc3339(self.day0 + from * DAY),
            rfc3339(self.day0 + to * DAY),
        );
        let mut a = vec!["restore", "-t", table, "--from", &f, "--to", &t, "--json"];
        a.extend_from_slice(extra);
        self.run(&a)
    }

    /// The ids the archive of `table` holds for days `[0, days)`, sorted
    /// (read with `fetch`).
    fn archived_ids(&self, table: &str, days: i64) -> Vec<i64> {
        let (from, to) = (rfc3339(self.day0), rfc3339(self.day0 + days * DAY));
        self.ws
            .fetched_ids(&self.cfg, table, (&from, &to), &self.env_with(&[]))
    }

    /// Merges the archive's days `[from, to)` back into `sensor_readings`
    /// (`inserted` rows), then archives again: the rows are recognised as
    /// archived, so no batch runs and the archive's snapshots stay as they
    /// were.
    fn merge_back_not_archived_twice(&self, (from, to): (i64, i64), inserted: i64) {
        let snapshots = || {
            self.run(&["snapshots", "-t", "sensor_readings", "--json"])
                .json()
        };
        let before = snapshots();
        let out = self.restore("sensor_readings", from, to, &["--merge"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(out.json()["inserted"], inserted);
        let again = self.archive();
        assert_eq!(again[0]["batches"], Value::Array(vec![]), "{again}");
        assert_eq!(snapshots(), before, "nothing archived twice");
    }

    fn range(&self, ts: &str, from: i64, to: i64) -> String {
        format!(
            "{ts} >= '{}' AND {ts} < '{}'",
            rfc3339(self.day0 + from * DAY),
            rfc3339(self.day0 + to * DAY)
        )
    }
}

/// The start of the content check's detail for `rows` staged rows whose
/// hashes match: proved by Postgres's hash from PostgreSQL 14, read back
/// before.
async fn proved(c: &tokio_postgres::Client, rows: u64) -> String {
    let version: i32 = c
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .expect("version")
        .get(0);
    if version >= 140000 {
        format!("the {rows} staged row(s) hash in Postgres as the rows sent")
    } else {
        format!("the {rows} staged row(s) read back from Postgres have the archive's checksum")
    }
}

/// Whole rows in Postgres' text form, ordered by `order`.
async fn rows(c: &tokio_postgres::Client, table: &str, cond: &str, order: &str) -> Vec<String> {
    c.query(
        &format!("SELECT x::text FROM {table} x WHERE {cond} ORDER BY {order}"),
        &[],
    )
    .await
    .expect("rows")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name}: {report}"))
}

/// 30 days × 200 rows of the sample table, and a copy kept before archiving.
async fn sensor_db(s: &Services, tag: &str) -> TestDb {
    let db = TestDb::create(s, tag).await;
    let c = db.client().await;
    c.batch_execute(permafrost::demo::SAMPLE_SCHEMA)
        .await
        .expect("schema");
    c.batch_execute(
        "INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, value, unit, quality, payload) \
         SELECT date_trunc('day', now()) - interval '40 days' + (i / 200) * interval '1 day' + (i % 200) * interval '7 minutes 3 seconds', \
                i % 7, 'sensor-' || (i % 7), (i % 113) / 8.0, 'celsius', (i % 1000) / 100.0, jsonb_build_object('i', i, 'ü', 'ß') \
         FROM generate_series(0, 5999) AS i; \
         CREATE TABLE before_rows AS SELECT * FROM sensor_readings;",
    )
    .await
    .expect("data");
    db
}

/// `workers`: `parallel_windows`, which is also how many connections read
/// the staged rows back (each a share of the table's blocks).
async fn days_10_to_12_equal_the_originals_and_are_never_archived_twice(kind: Cat, workers: u32) {
    let s = services!();
    let db = sensor_db(&s, "restore").await;
    let extra = format!("    parallel_windows: {workers}\n");
    let fx = Fx::with(&s, db, kind, "sensor_readings", "recorded_at", "5d", &extra).await;
    let c = fx.db.client().await;
    let out = fx.archive();
    assert_eq!(out[0]["batches"].as_array().map(Vec::len), Some(30));
    assert_eq!(count(&c, "sensor_readings", "true").await, 0);

    // Stage days 10–12: every row equals the original row.
    let out = fx.restore("sensor_readings", 10, 13, &["--into", "staged"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(r["valid"], true, "{r}");
    assert_eq!(r["action"], "staged");
    assert_eq!(r["rows"], 600);
    assert_eq!(r["files"], 3, "only the three days' files are read");
    let batches = r["batches"].as_array().expect("batches");
    assert_eq!(batches.len(), 3);
    assert!(batches.iter().all(|b| b["status"] == "match"), "{r}");
    assert_eq!(check(&r, "content")["ok"], true);
    let range = fx.range("recorded_at", 10, 13);
    let want = rows(&c, "before_rows", &range, "id").await;
    assert_eq!(want.len(), 600);
    assert_eq!(rows(&c, "staged", "true", "id").await, want);
    let types: Vec<String> = c
        .query(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'staged'::regclass AND attnum > 0 ORDER BY attnum",
            &[],
        )
        .await
        .expect("types")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        types,
        [
            "bigint",
            "timestamp with time zone",
            "integer",
            "text",
            "double precision",
            "character varying(16)",
            "numeric(5,2)",
            "jsonb"
        ]
    );

    // Merge them back into the source; the next archive run settles them
    // without appending them again.
    let snaps_before = fx
        .run(&["snapshots", "-t", "sensor_readings", "--json"])
        .json();
    let out = fx.restore("sensor_readings", 10, 13, &["--merge"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(
        (r["action"].clone(), r["inserted"].clone()),
        ("merged".into(), 600.into())
    );
    assert_eq!(r["staging_kept"], false);
    assert_eq!(rows(&c, "sensor_readings", "true", "id").await, want);
    // `list` and `status` agree with each other and with Postgres: the three
    // restored windows are pending again, with their rows in Postgres.
    let list = fx.run(&["list", "--json"]).json();
    let status = fx.run(&["status", "--json"]).json();
    let lines = list.as_array().expect("list");
    let pending: Vec<&Value> = lines.iter().filter(|l| l["state"] == "pending").collect();
    assert_eq!(pending.len(), 3, "{list}");
    assert!(
        pending.iter().all(|l| l["rows_in_postgres"] == 200),
        "{list}"
    );
    assert_eq!(
        lines.iter().filter(|l| l["state"] == "archived").count(),
        27
    );
    assert_eq!(status[0]["windows_pending"], 3, "{status}");
    assert_eq!(status[0]["windows_archived"], 27, "{status}");
    assert_eq!(status[0]["rows_pending"], 600, "{status}");
    // With one worker, the hashes of the rows found again go to disk past
    // 64 in memory (each window's 200 rows in Postgres, each batch's 200
    // archived), as millions would past the default.
    let again = match workers {
        1 => {
            let out = fx.archive_env(&[("PERMAFROST_BAG_HASHES", "64")]);
            assert_eq!(out.code, 0, "{}", out.stderr);
            assert!(
                out.stderr.contains(
                    "200 row hashes are kept in a temporary file: memory holds at most 64"
                ),
                "{}",
                out.stderr
            );
            out.json()
        }
        _ => fx.archive(),
    };
    assert_eq!(again[0]["batches"], Value::Array(vec![]), "{again}");
    assert_eq!(
        count(&c, "sensor_readings", "true").await,
        0,
        "settled and deleted"
    );
    let snaps_after = fx
        .run(&["snapshots", "-t", "sensor_readings", "--json"])
        .json();
    assert_eq!(snaps_after, snaps_before, "nothing appended to the archive");
    // Every original row is in the archive exactly once.
    let ids = fx.archived_ids("sensor_readings", 30);
    assert_eq!(ids, (1..=6000).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn restore_days_into_staging_rest_catalog() {
    days_10_to_12_equal_the_originals_and_are_never_archived_twice(Cat::Rest, 3).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn restore_days_into_staging_sql_catalog() {
    days_10_to_12_equal_the_originals_and_are_never_archived_twice(Cat::Sqlite, 1).await;
}

/// Late rows for days `days` (3 each, in Postgres and in `before_rows`).
async fn late_rows(fx: &Fx, c: &tokio_postgres::Client, days: &[i64]) {
    for d in days {
        let at = rfc3339(fx.day0 + d * DAY + 12 * 3_600_000_000);
        c.batch_execute(&format!(
            "INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, value, unit, quality, payload) \
             SELECT '{at}'::timestamptz + i * interval '1 second', 9, 'late', i / 4.0, 'celsius', 1.5, jsonb_build_object('late', i) \
             FROM generate_series(1, 3) AS i; \
             INSERT INTO before_rows SELECT * FROM sensor_readings WHERE sensor_name = 'late' AND id NOT IN (SELECT id FROM before_rows);"
        ))
        .await
        .expect("late rows");
    }
}

/// Rewrites the archive's files of days `[from, to)` with PyIceberg
/// (tests/py/rewrite.py, `mode` and its `extra` fields).
fn rewrite(s: &Services, fx: &Fx, (from, to): (i64, i64), mode: &str, extra: Value) -> Value {
    let mut req = serde_json::json!({
        "catalog_name": fx.cat.py_name, "catalog": fx.cat.py_props,
        "table": format!("{}.sensor_readings", fx.cat.namespace),
        "column": "recorded_at", "from": fx.day0 + from * DAY, "to": fx.day0 + to * DAY,
        "mode": mode,
    });
    if let (Some(req), Some(extra)) = (req.as_object_mut(), extra.as_object()) {
        req.extend(extra.clone());
    }
    python(s, "rewrite.py", &req)
}

/// Tables other engines maintain: a restore compares the batches whose files
/// a compaction merged as a group.  Day 10 compacted by `maintain`, day 11 by
/// another engine (a PyIceberg `replace`, as Spark's `rewrite_data_files`
/// commits), day 12 changed by a PyIceberg row delete (then compacted by
/// `maintain` too): days 10–12 restore valid, with every row the archive
/// holds; day 13, "compacted" by a `replace` that lost a row, fails.
async fn ranges_compacted_by_maintain_or_another_engine_restore(kind: Cat) {
    let s = services!();
    let db = sensor_db(&s, "compacted").await;
    let fx = Fx::new(&s, db, kind, "sensor_readings", "recorded_at", "5d").await;
    let c = fx.db.client().await;
    fx.archive();
    late_rows(&fx, &c, &[10, 11, 12, 13]).await;
    let late = fx.archive();
    assert_eq!(
        late[0]["batches"].as_array().map(Vec::len),
        Some(4),
        "{late}"
    );
    // One more commit: the late batches are known settled, so compactable.
    late_rows(&fx, &c, &[20]).await;
    fx.archive();

    let r = rewrite(&s, &fx, (11, 12), "compact", Value::Null);
    assert_eq!(
        (
            r["operation"].as_str(),
            r["files_before"].as_i64(),
            r["files_after"].as_i64()
        ),
        (Some("replace"), Some(2), Some(1)),
        "{r}"
    );
    let gone: i64 = c
        .query_one(
            &format!(
                "SELECT min(id) FROM before_rows WHERE {}",
                fx.range("recorded_at", 12, 13)
            ),
            &[],
        )
        .await
        .expect("id")
        .get(0);
    let r = rewrite(
        &s,
        &fx,
        (12, 13),
        "delete",
        serde_json::json!({"where": "id", "value": gone}),
    );
    assert_ne!(r["operation"], "replace", "{r}");
    let r = rewrite(&s, &fx, (13, 14), "compact-losing-a-row", Value::Null);
    assert_eq!(
        (r["operation"].as_str(), r["rows"].as_i64()),
        (Some("replace"), Some(202)),
        "{r}"
    );
    let out = fx.run(&["maintain", "--orphan-older-than", "1h", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let m = out.json();
    assert_eq!(m[0]["compacted"]["partitions"], 2, "days 10 and 12: {m}");
    assert_eq!(m[0]["snapshots_expired"], 0, "{m}");

    let out = fx.restore("sensor_readings", 10, 13, &["--into", "staged"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(r["valid"], true, "{r}");
    assert_eq!(r["rows"], 3 * 203 - 1, "{r}");
    assert_eq!(check(&r, "content")["ok"], true, "{r}");
    let range = fx.range("recorded_at", 10, 13);
    let want = rows(
        &c,
        "before_rows",
        &format!("{range} AND id <> {gone}"),
        "id",
    )
    .await;
    assert_eq!(rows(&c, "staged", "true", "id").await, want);
    let by_day = |day: i64| by_day_of(&r, &rfc3339(fx.day0 + day * DAY));
    for day in [10, 11] {
        let batches = by_day(day);
        assert_eq!(batches.len(), 2, "day {day}: {r}");
        for b in &batches {
            assert_eq!(b["status"], "match", "day {day}: {r}");
            assert_eq!(b["restored_rows"], 203, "the group's rows, day {day}: {r}");
            assert_eq!(b["rewritten_with"].as_array().map(Vec::len), Some(1), "{r}");
        }
    }
    let day12 = by_day(12);
    assert_eq!(day12.len(), 2, "{r}");
    assert!(
        day12.iter().all(|b| b["status"] == "rewritten"
            && b["note"]
                .as_str()
                .is_some_and(|n| n.contains("changed rows"))),
        "{r}"
    );

    // Merged back into the source, the rows are recognised by what the
    // archive holds now (the batches' own files hold the deleted row too):
    // settled, nothing appended.
    fx.merge_back_not_archived_twice((10, 13), 3 * 203 - 1);
    assert_eq!(
        count(&c, "sensor_readings", &range).await,
        0,
        "settled and deleted"
    );

    let out = fx.restore("sensor_readings", 13, 14, &["--into", "lossy"]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    let r = out.json();
    assert_eq!(check(&r, "batches")["ok"], false, "{r}");
    let day13 = by_day_of(&r, &rfc3339(fx.day0 + 13 * DAY));
    assert_eq!(day13.len(), 2, "{r}");
    assert!(
        day13
            .iter()
            .all(|b| b["status"] == "MISMATCH" && b["restored_rows"] == 202),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn ranges_compacted_by_maintain_or_another_engine_restore_sql() {
    ranges_compacted_by_maintain_or_another_engine_restore(Cat::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn ranges_compacted_by_maintain_or_another_engine_restore_rest() {
    ranges_compacted_by_maintain_or_another_engine_restore(Cat::Rest).await;
}

/// How another engine deletes rows merge-on-read.
#[derive(Clone, Copy, PartialEq)]
enum RowDelete {
    /// DuckDB's `DELETE` through the REST catalog: a positional delete file
    /// per data file touched (as Spark, Trino and Flink's `DELETE` write).
    Positional,
    /// Flink's upserts (or Spark with `write.delete.mode` equality): one
    /// equality-delete file per partition, keyed on the primary key.
    Equality,
}

/// Tables other engines change row by row: a merge-on-read `DELETE` (by
/// DuckDB, through the REST catalog; Spark, Trino and Flink write the same
/// positional delete files beside the data files) stays deleted through
/// everything permafrost does next: `fetch` and `restore` leave the rows
/// out, the rows restored and merged back are recognised as archived (not
/// archived twice), and `maintain`'s compaction of a partition with deletes
/// writes the rows without them instead of bringing them back.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn rows_another_engine_deleted_merge_on_read_stay_deleted() {
    rows_deleted_merge_on_read_stay_deleted(RowDelete::Positional, "mor_delete").await;
}

/// The same with equality deletes (Flink's upserts): a delete file per
/// partition naming the deleted rows' keys, which applies to every older
/// data file of its partition — here day 12's first and late batch.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn rows_another_engine_deleted_by_equality_deletes_stay_deleted() {
    rows_deleted_merge_on_read_stay_deleted(RowDelete::Equality, "eq_delete").await;
}

async fn rows_deleted_merge_on_read_stay_deleted(how: RowDelete, tag: &str) {
    let s = services!();
    let db = sensor_db(&s, tag).await;
    let fx = Fx::new(&s, db, Cat::Rest, "sensor_readings", "recorded_at", "5d").await;
    let c = fx.db.client().await;
    fx.archive();
    late_rows(&fx, &c, &[12]).await;
    fx.archive();
    // One more commit: the late batch is known settled, so compactable.
    late_rows(&fx, &c, &[20]).await;
    fx.archive();
    let before = fx.archived_ids("sensor_readings", 30);
    assert_eq!(before.len(), 6006);

    // One row of day 12's first batch, one of its late batch, one of day 14.
    let first_id = |day: i64, late: bool| {
        let (c, range) = (&c, fx.range("recorded_at", day, day + 1));
        async move {
            let row = c
                .query_one(
                    &format!(
                        "SELECT min(id) FROM before_rows WHERE {range} AND (sensor_name = 'late') = {late}"
                    ),
                    &[],
                )
                .await
                .expect("id");
            row.get::<_, i64>(0)
        }
    };
    let gone = vec![
        first_id(12, false).await,
        first_id(12, true).await,
        first_id(14, false).await,
    ];
    let delete_files =
        |fx: &Fx| fx.run(&["status", "--json"]).json()[0]["shape"]["delete_files"].clone();
    if how == RowDelete::Positional {
        let r = rewrite(
            &s,
            &fx,
            (0, 30),
            "delete-mor",
            serde_json::json!({"where": "id", "values": gone, "duckdb_rest": fx.cat.duckdb_rest(&s)}),
        );
        assert_eq!(
            (
                r["operation"].as_str(),
                r["rows"].as_i64(),
                r["delete_files"].as_i64()
            ),
            (Some("delete"), Some(3), Some(3)),
            "merge-on-read: one delete file per data file touched: {r}"
        );
        assert_eq!(delete_files(&fx), 3, "status counts them");
    } else {
        equality_delete(&fx, &[(12, &gone[..2]), (14, &gone[2..])]).await;
        assert_eq!(delete_files(&fx), 2, "status counts them");
    }
    let kept: Vec<i64> = before
        .iter()
        .copied()
        .filter(|id| !gone.contains(id))
        .collect();
    assert_eq!(fx.archived_ids("sensor_readings", 30), kept, "fetch");
    // `list` tells the windows whose rows it counts before the deletes.
    let list = fx.run(&["list", "--json"]).json();
    let marked: Vec<(String, Value)> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["row_deletes"] == true)
        .map(|l| {
            (
                l["window_start"].as_str().unwrap_or("").to_string(),
                l["rows"].clone(),
            )
        })
        .collect();
    let day = |d: i64| rfc3339(fx.day0 + d * DAY);
    assert_eq!(
        marked,
        [(day(12), Value::from(203)), (day(14), Value::from(200))],
        "{list}"
    );
    #[cfg(feature = "query")]
    {
        let sql = "SELECT count(*) AS n FROM archive.sensor_readings";
        let out = fx.run(&["query", sql, "--format", "jsonl"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(out.stdout.trim(), "{\"n\":6003}", "query");
    }

    let out = fx.restore("sensor_readings", 12, 15, &["--into", "staged"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(
        (&r["valid"], &r["rows"]),
        (&Value::Bool(true), &Value::from(600)),
        "{r}"
    );
    let range = fx.range("recorded_at", 12, 15);
    let not_gone = format!(
        "{range} AND id NOT IN ({}, {}, {})",
        gone[0], gone[1], gone[2]
    );
    let want = rows(&c, "before_rows", &not_gone, "id").await;
    assert_eq!(rows(&c, "staged", "true", "id").await, want);
    // The batch check still compares day 13 exactly; days 12 and 14 are
    // told changed by the deletes, not failed.
    let status = |day: i64| {
        by_day_of(&r, &rfc3339(fx.day0 + day * DAY))
            .iter()
            .map(|b| (b["status"].clone(), b["note"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(status(13), [(Value::from("match"), Value::Null)], "{r}");
    for day in [12, 14] {
        assert!(
            status(day).iter().all(|(s, note)| s == "rewritten"
                && note
                    .as_str()
                    .is_some_and(|n| n.ends_with("(delete) added row-level deletes"))),
            "day {day}: {r}"
        );
    }

    // Day 14 merged back: recognised by the rows the archive holds now.
    fx.merge_back_not_archived_twice((14, 15), 199);
    assert_eq!(
        count(&c, "sensor_readings", &range).await,
        0,
        "settled and deleted"
    );

    // Compaction merges day 12's two files with the deletes applied (day
    // 20's late batch is the newest, not yet known settled: left alone), and
    // removes day 12's two delete files, which apply to nothing afterwards.
    let out = fx.run(&["maintain", "--orphan-older-than", "1h", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let m = out.json();
    let compacted = &m[0]["compacted"];
    assert_eq!(
        (
            &compacted["partitions"],
            &compacted["files_in"],
            &compacted["rows"]
        ),
        (&Value::from(1), &Value::from(2), &Value::from(201)),
        "{m}"
    );
    // Positional: day 12's two files each had one; equality: one for both.
    let day_12_deletes = if how == RowDelete::Positional { 2 } else { 1 };
    assert_eq!(compacted["delete_files_removed"], day_12_deletes, "{m}");
    assert_eq!(delete_files(&fx), 1, "day 14's stays");
    assert_eq!(
        fx.archived_ids("sensor_readings", 30),
        kept,
        "after compaction"
    );
    if how == RowDelete::Positional {
        let r = rewrite(&s, &fx, (12, 13), "compact", Value::Null);
        assert_eq!(
            (&r["rows"], &r["delete_files"]),
            (&Value::from(201), &Value::from(1)),
            "PyIceberg reads day 12 without the deleted rows, and day 14's delete \
             file from the delete manifest the compaction wrote again: {r}"
        );
    } else {
        // PyIceberg cannot plan equality deletes; DuckDB applies them.
        let extra = serde_json::json!({"where": "id", "duckdb_rest": fx.cat.duckdb_rest(&s)});
        let r = rewrite(&s, &fx, (0, 30), "ids-duckdb", extra);
        assert_eq!(r["ids"], serde_json::json!(kept), "DuckDB reads the table");
    }
    fx.merge_back_not_archived_twice((12, 13), 201);
}

/// Rows another engine deleted with deletion vectors — Iceberg v3's row-level
/// deletes (Spark with Iceberg 1.8+, Trino, DuckDB, Impala on a v3 table) —
/// which iceberg-rust 0.10.1 cannot apply: every read of permafrost that
/// would apply them (`restore`, `fetch`, `query`, an `archive` that must
/// recognise rows merged back) refuses the snapshot in one line, exit 3,
/// instead of failing in iceberg-rust's words or bringing the rows back;
/// nothing is staged. `list` and `status` still work, a restore of the
/// snapshot before the delete works, and DuckDB reads the table without the
/// three rows (the vector is valid).
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn rows_deleted_by_deletion_vectors_are_refused_not_brought_back() {
    let s = services!();
    let db = sensor_db(&s, "dv_delete").await;
    let fx = Fx::new(&s, db, Cat::Sqlite, "sensor_readings", "recorded_at", "5d").await;
    let c = fx.db.client().await;
    fx.archive();
    let before = fx.archived_ids("sensor_readings", 30);
    assert_eq!(before.len(), 6000);
    let (gone, pre_delete) = deletion_vector(&fx, 12, &[0, 1, 2]).await;
    let kept: Vec<i64> = before
        .iter()
        .copied()
        .filter(|id| !gone.contains(id))
        .collect();
    let extra = serde_json::json!({"where": "id", "duckdb_rest": Value::Null});
    let r = rewrite(&s, &fx, (0, 30), "ids-duckdb", extra);
    assert_eq!(
        r["ids"],
        serde_json::json!(kept),
        "DuckDB applies the vector"
    );

    let refused = |out: &Out, what: &str| {
        assert_eq!(out.code, 3, "{what}: {}", out.stderr);
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert!(
            lines.len() <= 2
                && out.stderr.contains("holds deletion vectors")
                && out.stderr.contains("--snapshot"),
            "{what}: {}",
            out.stderr
        );
    };
    let out = fx.restore("sensor_readings", 12, 13, &["--into", "staged"]);
    refused(&out, "restore");
    let staged: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 'staged'",
            &[],
        )
        .await
        .expect("pg_class")
        .get(0);
    assert_eq!(staged, 0, "nothing staged");
    let (from, to) = (rfc3339(fx.day0), rfc3339(fx.day0 + 30 * DAY));
    let out = fx.run(&[
        "fetch",
        "-t",
        "sensor_readings",
        "--from",
        &from,
        "--to",
        &to,
    ]);
    refused(&out, "fetch");
    assert!(out.stdout.is_empty(), "no row printed");
    #[cfg(feature = "query")]
    refused(
        &fx.run(&["query", "SELECT count(*) FROM archive.sensor_readings"]),
        "query",
    );
    #[cfg(feature = "query")]
    {
        use crate::serve::{Server, client, send};
        let args = ["-c", fx.cfg.as_str(), "--listen", "127.0.0.1:0"];
        let api = Server::start(&fx.ws, &args, &fx.env_with(&[]));
        let http = client();
        let sql = serde_json::json!({"sql": "SELECT count(*) FROM archive.sensor_readings"});
        for (route, req) in [
            ("rows", http.get(api.api("/tables/sensor_readings/query"))),
            ("sql", http.post(api.api("/sql")).json(&sql)),
        ] {
            let (status, body) = send(req).await;
            assert_eq!(status, 400, "{route}: {body}");
            let said = |k: &str, what: &str| body[k].as_str().is_some_and(|e| e.contains(what));
            assert!(
                said("error", "holds deletion vectors") && said("hint", "--snapshot"),
                "{route}: {body}"
            );
        }
        assert_eq!(api.stop(), 0);
    }
    let shape = fx.run(&["status", "--json"]).json()[0]["shape"].clone();
    assert_eq!(
        (&shape["delete_files"], &shape["deletion_vectors"]),
        (&Value::from(1), &Value::from(1)),
        "{shape}"
    );
    let list = fx.run(&["list", "--json"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let marked: Vec<Value> = list
        .json()
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["row_deletes"] == true)
        .map(|l| l["window_start"].clone())
        .collect();
    let day_12 = Value::from(rfc3339(fx.day0 + 12 * DAY));
    assert_eq!(marked, [day_12], "{}", list.stdout);

    // New rows archive as before: nothing needs reading through the vector.
    late_rows(&fx, &c, &[20]).await;
    let out = fx.archive();
    assert_eq!(out[0]["batches"][0]["rows"], 3, "{out}");
    assert_eq!(count(&c, "sensor_readings", "true").await, 0);

    // Day 12 restored from the snapshot before the delete, merged back: the
    // next archive cannot tell those rows archived without reading them
    // through the vector, so it refuses too, and deletes nothing.
    let out = fx.restore(
        "sensor_readings",
        12,
        13,
        &["--snapshot", &pre_delete, "--merge"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["inserted"], 200, "{}", out.stdout);
    assert_eq!(count(&c, "sensor_readings", "true").await, 200);
    let out = fx.run(&["archive"]);
    refused(&out, "archive");
    assert_eq!(
        count(&c, "sensor_readings", "true").await,
        200,
        "nothing deleted"
    );
}

/// A source with generated columns — `STORED`, and on PostgreSQL 18 also
/// `VIRTUAL` (its new default) — and a `GENERATED ALWAYS AS IDENTITY` key:
/// archived with their values, restored and merged back without the
/// generated ones (Postgres computes them again; inserting into them is an
/// error) and with the archived ids (`OVERRIDING SYSTEM VALUE`), every row
/// equal to the original, and not archived twice.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn generated_columns_are_archived_and_computed_again_on_merge() {
    let s = services!();
    let db = TestDb::create(&s, "generated").await;
    let c = db.client().await;
    let version: i32 = c
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .expect("version")
        .get(0);
    let with_virtual = version >= 180000;
    let virt = if with_virtual {
        ", tripled int GENERATED ALWAYS AS (v * 3) VIRTUAL"
    } else {
        ""
    };
    c.batch_execute(&format!(
        "CREATE TABLE g (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, ts timestamptz NOT NULL, \
           v int NOT NULL, \
           doubled int GENERATED ALWAYS AS (v * 2) STORED{virt}); \
         INSERT INTO g (ts, v) SELECT date_trunc('day', now()) - interval '40 days' \
           + i * interval '2 hours 24 minutes', i FROM generate_series(0, 299) AS i; \
         CREATE TABLE before_rows AS SELECT * FROM g;"
    ))
    .await
    .expect("table");
    let fx = Fx::new(&s, db, Cat::Sqlite, "g", "ts", "5d").await;
    let archived = fx.archive();
    let rows: i64 = archived[0]["batches"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| b["rows"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(rows, 300, "{archived}");
    assert_eq!(count(&c, "g", "true").await, 0);
    // The archive holds the computed values.
    let (from, to) = (rfc3339(fx.day0), rfc3339(fx.day0 + 30 * DAY));
    let out = fx.run(&[
        "fetch", "-t", "g", "--from", &from, "--to", &to, "--format", "jsonl",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let row: Value = serde_json::from_str(out.stdout.lines().nth(7).unwrap_or("")).expect("row");
    let v = row["v"].as_i64().expect("v");
    assert_eq!(row["doubled"], v * 2, "{row}");
    if with_virtual {
        assert_eq!(row["tripled"], v * 3, "{row}");
    }

    let out = fx.restore("g", 0, 30, &["--merge"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["inserted"], 300, "{}", out.stdout);
    let want = rows_of(&c, "before_rows").await;
    assert_eq!(rows_of(&c, "g").await, want, "every row as it was");
    let again = fx.archive();
    assert_eq!(again[0]["batches"], Value::Array(vec![]), "{again}");
    assert_eq!(
        count(&c, "g", "true").await,
        0,
        "settled, not archived twice"
    );
}

/// Every row of `table` in Postgres's text form, by id.
async fn rows_of(c: &tokio_postgres::Client, table: &str) -> Vec<String> {
    rows(c, table, "true", "id").await
}

/// Deletes rows by key the way Flink's upserts do: for each (day, ids), an
/// equality-delete file on `id` in that day's partition, written with
/// iceberg-rust's `EqualityDeleteFileWriter`, committed as one `delete`
/// snapshot whose delete manifest and manifest list iceberg-rust's writers
/// write (0.10.1 has no row-delta action).
async fn equality_delete(fx: &Fx, by_day: &[(i64, &[i64])]) {
    use std::sync::Arc;

    use iceberg::spec::{DataFileFormat, Literal, PartitionKey, Schema, Struct};
    use iceberg::writer::base_writer::equality_delete_writer::{
        EqualityDeleteFileWriterBuilder, EqualityDeleteWriterConfig,
    };
    use iceberg::writer::file_writer::ParquetWriterBuilder;
    use iceberg::writer::file_writer::location_generator::{
        DefaultFileNameGenerator, DefaultLocationGenerator,
    };
    use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
    use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};

    let env: Vec<(String, String)> = fx
        .env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let (catalog, table) = open_table(&fx.cfg, &env, &fx.cat.namespace, "sensor_readings").await;
    let md = table.metadata();
    let schema = md.current_schema().clone();
    let spec = md.default_partition_spec().as_ref().clone();
    let id = schema.field_by_name("id").expect("id").clone();
    let keys = Arc::new(
        Schema::builder()
            .with_fields([id.clone()])
            .build()
            .expect("key schema"),
    );
    let arrow = Arc::new(iceberg::arrow::schema_to_arrow_schema(&keys).expect("arrow"));

    let mut files = Vec::new();
    for (day, ids) in by_day {
        let parquet = ParquetWriterBuilder::new(Default::default(), keys.clone());
        let rolling = RollingFileWriterBuilder::new(
            parquet,
            1 << 20,
            table.file_io().clone(),
            DefaultLocationGenerator::new(md).expect("locations"),
            DefaultFileNameGenerator::new("flink".into(), None, DataFileFormat::Parquet),
        );
        let config = EqualityDeleteWriterConfig::new(vec![id.id], keys.clone()).expect("config");
        let partition =
            Struct::from_iter([Some(Literal::int(((fx.day0 + day * DAY) / DAY) as i32))]);
        let key = PartitionKey::new(spec.clone(), schema.clone(), partition);
        let mut writer = EqualityDeleteFileWriterBuilder::new(rolling, config)
            .build(Some(key))
            .await
            .expect("writer");
        let column: arrow_array::ArrayRef = Arc::new(arrow_array::Int64Array::from(ids.to_vec()));
        let batch = arrow_array::RecordBatch::try_new(arrow.clone(), vec![column]).expect("batch");
        writer.write(batch).await.expect("write");
        files.extend(writer.close().await.expect("close"));
    }

    commit_delete_files(&catalog, &table, files, "flink").await;
}

/// Deletes the rows at `positions` of the first data file of day `day` the
/// way an engine on a v3 table does: the table upgraded to v3, then a
/// deletion vector — a `deletion-vector-v1` blob (the positions as a 64-bit
/// Roaring bitmap, framed by length, magic and CRC-32 as the spec says) in a
/// Puffin file written by iceberg-rust's Puffin writer — committed as a
/// `delete` snapshot with iceberg-rust's v3 delete manifest and manifest
/// list writers.  Returns the ids deleted and the snapshot before.
async fn deletion_vector(fx: &Fx, day: i64, positions: &[u64]) -> (Vec<i64>, String) {
    use std::collections::HashMap;

    use iceberg::puffin::{Blob, CompressionCodec, DELETION_VECTOR_V1, PuffinWriter};
    use iceberg::spec::{DataContentType, DataFileBuilder, DataFileFormat, Literal, Struct};

    let env: Vec<(String, String)> = fx
        .env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let (catalog, table) = open_table(&fx.cfg, &env, &fx.cat.namespace, "sensor_readings").await;
    upgrade_to_v3(&catalog, &table).await;
    let (_, table) = open_table(&fx.cfg, &env, &fx.cat.namespace, "sensor_readings").await;
    let md = table.metadata();
    let parent = md.current_snapshot().expect("a snapshot").clone();
    let partition = Struct::from_iter([Some(Literal::int(((fx.day0 + day * DAY) / DAY) as i32))]);
    let mut target = None;
    let list = table
        .manifest_list_reader(&parent)
        .load()
        .await
        .expect("list");
    for m in list.entries() {
        let manifest = m.load_manifest(table.file_io()).await.expect("manifest");
        target = target.or_else(|| {
            manifest
                .entries()
                .iter()
                .find(|e| e.is_alive() && e.data_file().partition() == &partition)
                .map(|e| e.data_file().clone())
        });
    }
    let target = target.expect("a data file of the day");

    // The ids at those positions, read as the file holds them.
    let c = fx.db.client().await;
    let range = fx.range("recorded_at", day, day + 1);
    let ids: Vec<i64> = c
        .query(
            &format!("SELECT id FROM before_rows WHERE {range} ORDER BY id"),
            &[],
        )
        .await
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let gone = positions.iter().map(|p| ids[*p as usize]).collect();

    let mut bitmap = roaring::RoaringTreemap::new();
    for p in positions {
        bitmap.insert(*p);
    }
    let mut vector = vec![0xD1, 0xD3, 0x39, 0x64];
    bitmap.serialize_into(&mut vector).expect("bitmap");
    let mut blob = (vector.len() as u32).to_be_bytes().to_vec();
    blob.extend_from_slice(&vector);
    blob.extend_from_slice(&crc32fast::hash(&vector).to_be_bytes());
    let blob_len = blob.len() as i64;
    let path = format!(
        "{}/data/{}-deletes.puffin",
        md.location(),
        uuid::Uuid::new_v4()
    );
    let out = table.file_io().new_output(&path).expect("out");
    let mut puffin = PuffinWriter::new(&out, HashMap::new(), false)
        .await
        .expect("puffin");
    let properties = HashMap::from([
        (
            "referenced-data-file".to_string(),
            target.file_path().to_string(),
        ),
        ("cardinality".to_string(), positions.len().to_string()),
    ]);
    let blob = Blob::builder()
        .r#type(DELETION_VECTOR_V1.to_string())
        .fields(vec![])
        .snapshot_id(-1)
        .sequence_number(-1)
        .data(blob)
        .properties(properties)
        .build();
    puffin
        .add(blob, CompressionCodec::None)
        .await
        .expect("blob");
    puffin.close().await.expect("close");
    let size = table
        .file_io()
        .new_input(&path)
        .expect("in")
        .metadata()
        .await
        .expect("size")
        .size;
    let dv = DataFileBuilder::default()
        .content(DataContentType::PositionDeletes)
        .file_path(path)
        .file_format(DataFileFormat::Puffin)
        .partition(partition)
        .partition_spec_id(md.default_partition_spec_id())
        .record_count(positions.len() as u64)
        .file_size_in_bytes(size)
        .referenced_data_file(Some(target.file_path().to_string()))
        // The blob follows the file's 4-byte magic.
        .content_offset(Some(4))
        .content_size_in_bytes(Some(blob_len))
        .build()
        .expect("data file");

    commit_delete_files(&catalog, &table, vec![dv], "spark").await;
    (gone, parent.snapshot_id().to_string())
}

/// The batches of a restore report whose window starts at `start`.
fn by_day_of<'a>(r: &'a Value, start: &str) -> Vec<&'a Value> {
    r["batches"]
        .as_array()
        .map(|bs| bs.iter().filter(|b| b["window_start"] == start).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn restore_time_travels_to_the_first_batch() {
    let s = services!();
    let db = sensor_db(&s, "restore_tt").await;
    let c = db.client().await;
    // One day only, archived; then late rows in the same day, archived again.
    c.batch_execute(
        "DELETE FROM sensor_readings WHERE recorded_at >= date_trunc('day', now()) - interval '39 days'; \
         DELETE FROM before_rows WHERE recorded_at >= date_trunc('day', now()) - interval '39 days';",
    )
    .await
    .expect("one day");
    let fx = Fx::new(&s, db, Cat::Sqlite, "sensor_readings", "recorded_at", "5d").await;
    fx.archive();
    c.batch_execute(
        "INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, value, unit) \
         SELECT date_trunc('day', now()) - interval '40 days' + i * interval '1 minute', 99, 'late', i, 'celsius' \
         FROM generate_series(1, 50) AS i",
    )
    .await
    .expect("late rows");
    fx.archive();
    let snaps = fx
        .run(&["snapshots", "-t", "sensor_readings", "--json"])
        .json();
    let snaps = snaps.as_array().expect("snapshots");
    assert_eq!(snaps.len(), 2);
    let first = snaps[1]["snapshot_id"].to_string();
    let out = fx.restore(
        "sensor_readings",
        0,
        1,
        &["--snapshot", &first, "--into", "first_only"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(r["rows"], 200, "{r}");
    assert_eq!(r["batches"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        rows(&c, "first_only", "true", "id").await,
        rows(&c, "before_rows", "true", "id").await
    );
    let out = fx.restore("sensor_readings", 0, 1, &["--into", "current"]);
    assert_eq!(out.json()["rows"], 250);
    assert_eq!(count(&c, "current", "sensor_id = 99").await, 50);
    // The late rows have no quality: a target where it is NOT NULL fails
    // validation, naming the column and the count; nothing is merged.
    c.batch_execute("CREATE TABLE t_q (LIKE sensor_readings); ALTER TABLE t_q ALTER COLUMN quality SET NOT NULL")
        .await
        .expect("target");
    let out = fx.restore(
        "sensor_readings",
        0,
        1,
        &["--target", "t_q", "--merge", "--into", "st_q"],
    );
    assert_eq!(out.code, 5, "{}", out.stderr);
    let r = out.json();
    let nn = check(&r, "not_null");
    assert_eq!(nn["ok"], false, "{r}");
    assert_eq!(nn["detail"], "50 NULL(s) in `quality`", "{nn}");
    assert_eq!(count(&c, "t_q", "true").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn attach_into_a_range_partitioned_table() {
    let s = services!();
    let db = TestDb::create(&s, "restore_attach").await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE events (id bigint NOT NULL, ts timestamptz NOT NULL, v double precision CHECK (v >= 0), note text, \
                              PRIMARY KEY (id, ts)) PARTITION BY RANGE (ts); \
         DO $$ DECLARE d date; BEGIN \
           FOR k IN 0..4 LOOP \
             d := (date_trunc('day', now()) - interval '40 days')::date + k; \
             EXECUTE format('CREATE TABLE events_%s PARTITION OF events FOR VALUES FROM (%L) TO (%L)', \
                            to_char(d, 'YYYYMMDD'), d::timestamptz, (d + 1)::timestamptz); \
           END LOOP; END $$; \
         INSERT INTO events SELECT i, date_trunc('day', now()) - interval '40 days' + i * interval '17 minutes', i % 50, 'n' || i \
         FROM generate_series(0, 400) AS i; \
         CREATE TABLE before_rows AS SELECT * FROM events;",
    )
    .await
    .expect("partitioned table");
    let fx = Fx::with(
        &s,
        db,
        Cat::Sqlite,
        "events",
        "ts",
        "5d",
        "    drop_lock_timeout: 200ms\n",
    )
    .await;
    fx.archive();
    assert_eq!(count(&c, "events", "true").await, 0);
    let range = fx.range("ts", 2, 3);
    let want = rows(&c, "before_rows", &range, "id").await;
    assert!(want.len() > 50);

    // The empty partition of day 2 is still attached: refused before
    // anything is staged, nothing attached.
    let before = relations(&c).await;
    let out = fx.restore("events", 2, 3, &["--attach", "--into", "events_day2"]);
    assert_refused(
        &out,
        3,
        "--attach: partition(s) events_",
        "--replace-partition detaches it",
    );
    assert!(out.error_lines()[0].contains("already cover the range (0 row(s))"));
    assert_eq!(relations(&c).await, before, "nothing created");
    assert_eq!(count(&c, "events", "true").await, 0);

    // A reader of the parent holds up the detach (every reader and writer
    // of the parent would queue behind it): it waits `drop_lock_timeout`,
    // then fails in one line; nothing detached or attached, the staged rows
    // stay.
    let reader = fx.db.client().await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM events")
        .await
        .expect("a reader of the parent");
    let out = fx.restore(
        "events",
        2,
        3,
        &["--attach", "--replace-partition", "--into", "events_held"],
    );
    assert_eq!(out.code, 4, "{}", out.stderr);
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(
        errors[0].contains("cannot detach the existing partition")
            && errors[0].contains("lock timeout"),
        "{}",
        errors[0]
    );
    assert!(
        out.stderr.contains("restore again when it is quiet"),
        "{}",
        out.stderr
    );
    reader.batch_execute("COMMIT").await.expect("reader ends");
    let inherits = |cond: &'static str| {
        let c = &c;
        async move {
            c.query_one(
                &format!("SELECT count(*) FROM pg_inherits WHERE {cond}"),
                &[],
            )
            .await
            .expect("pg_inherits")
            .get::<_, i64>(0)
        }
    };
    assert_eq!(
        inherits("inhparent = 'events'::regclass").await,
        5,
        "nothing detached"
    );
    assert_eq!(
        inherits("inhrelid = 'events_held'::regclass").await,
        0,
        "nothing attached"
    );
    assert_eq!(
        relations(&c).await.len(),
        before.len() + 1,
        "the staging table kept"
    );
    assert_eq!(count(&c, "events_held", "true").await, want.len() as i64);
    c.batch_execute("DROP TABLE events_held")
        .await
        .expect("drop the kept staging table");

    // Replacing it: the empty partition is dropped, the staging table attached.
    let out = fx.restore(
        "events",
        2,
        3,
        &["--attach", "--replace-partition", "--into", "events_day2"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(r["action"], "attached", "{r}");
    assert_eq!(r["constraint_validated_before_attach"], true);
    // Where the time went: each stage took some, together no more than all.
    let stage = |k: &str| r[k].as_f64().unwrap_or(-1.0);
    let stages = ["load_seconds", "check_seconds", "apply_seconds"];
    assert!(stages.iter().all(|k| stage(k) > 0.0), "{r}");
    assert!(
        stages.iter().map(|k| stage(k)).sum::<f64>() <= stage("seconds"),
        "{r}"
    );
    assert_eq!(
        r["replaced_partition"],
        Value::Null,
        "the old partition was empty"
    );
    let parent: String = c
        .query_one(
            "SELECT inhparent::regclass::text FROM pg_inherits WHERE inhrelid = 'events_day2'::regclass",
            &[],
        )
        .await
        .expect("attached")
        .get(0);
    assert_eq!(parent, "events");
    let validated: bool = c
        .query_one(
            "SELECT convalidated FROM pg_constraint WHERE conrelid = 'events_day2'::regclass AND conname = 'events_day2_range'",
            &[],
        )
        .await
        .expect("range constraint")
        .get(0);
    assert!(validated);
    assert_eq!(rows(&c, "events", &range, "id").await, want);
    assert_eq!(count(&c, "events", "true").await, want.len() as i64);
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn merge_policies_and_validation_failures() {
    let s = services!();
    let db = sensor_db(&s, "restore_merge").await;
    let c = db.client().await;
    c.batch_execute(
        "DELETE FROM sensor_readings WHERE recorded_at >= date_trunc('day', now()) - interval '38 days'; \
         DELETE FROM before_rows WHERE recorded_at >= date_trunc('day', now()) - interval '38 days';",
    )
    .await
    .expect("two days");
    let fx = Fx::new(&s, db, Cat::Sqlite, "sensor_readings", "recorded_at", "5d").await;
    fx.archive();
    let want = rows(&c, "before_rows", "true", "id").await;
    assert_eq!(want.len(), 400);
    // A plain target holding 10 of the rows, changed.
    let reset = "DROP TABLE IF EXISTS merged; CREATE TABLE merged (LIKE sensor_readings INCLUDING ALL); \
                 INSERT INTO merged SELECT * FROM before_rows WHERE id <= 10; UPDATE merged SET value = -1;";
    c.batch_execute(reset).await.expect("target");
    let merge = |policy: &str, into: &str| {
        fx.restore(
            "sensor_readings",
            0,
            2,
            &[
                "--target",
                "merged",
                "--merge",
                "--on-conflict",
                policy,
                "--into",
                into,
            ],
        )
    };

    // error: the overlap fails validation; nothing merged, staging kept.
    let out = merge("error", "st_error");
    assert_eq!(out.code, 5, "{}", out.stderr);
    let r = out.json();
    let ov = check(&r, "overlap");
    assert_eq!(ov["ok"], false);
    assert!(
        ov["detail"]
            .as_str()
            .is_some_and(|d| d.contains("10 staged row(s)")),
        "{ov}"
    );
    assert_eq!(count(&c, "merged", "true").await, 10);
    assert_eq!(count(&c, "st_error", "true").await, 400);

    // skip: the 10 changed rows stay as they are.
    let out = merge("skip", "st_skip");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(
        (
            r["inserted"].clone(),
            r["updated"].clone(),
            r["skipped"].clone()
        ),
        (390.into(), 0.into(), 10.into())
    );
    assert_eq!(count(&c, "merged", "value = -1").await, 10);
    assert_eq!(count(&c, "merged", "true").await, 400);
    assert_eq!(
        count(&c, "pg_class", "relname = 'st_skip'").await,
        0,
        "staging dropped"
    );

    // update: the 10 changed rows get the archived values back.
    c.batch_execute(reset).await.expect("target");
    let out = merge("update", "st_update");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(
        (r["inserted"].clone(), r["updated"].clone()),
        (390.into(), 10.into())
    );
    assert_eq!(rows(&c, "merged", "true", "id").await, want);

    // skip into a target without a key: only identical rows are skipped
    // (rows 1–10 as archived); rows 11–15, changed, are not the same rows.
    c.batch_execute(
        "CREATE TABLE no_key (LIKE sensor_readings); \
         INSERT INTO no_key SELECT * FROM before_rows WHERE id <= 15; \
         UPDATE no_key SET value = -1 WHERE id > 10;",
    )
    .await
    .expect("keyless target");
    let out = fx.restore(
        "sensor_readings",
        0,
        2,
        &[
            "--target",
            "no_key",
            "--merge",
            "--on-conflict",
            "skip",
            "--into",
            "st_nokey",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert!(
        check(&r, "overlap")["detail"].as_str().is_some_and(
            |d| d.contains("10 staged row(s) are already in the target (as identical rows)")
        ),
        "{r}"
    );
    assert_eq!(
        (r["inserted"].clone(), r["skipped"].clone()),
        (390.into(), 10.into())
    );
    assert_eq!(count(&c, "no_key", "true").await, 405);
    assert_eq!(count(&c, "no_key", "value = -1").await, 5);

    // A target whose columns do not fit: refused before anything is staged.
    c.batch_execute(
        "CREATE TABLE t_type (LIKE sensor_readings); ALTER TABLE t_type ALTER COLUMN sensor_id TYPE bigint; \
         CREATE TABLE t_nn (LIKE sensor_readings); ALTER TABLE t_nn ADD COLUMN site text NOT NULL;",
    )
    .await
    .expect("bad targets");
    for (target, needle) in [
        ("t_type", "`sensor_id` is bigint in the target but integer"),
        ("t_nn", "`site` is NOT NULL"),
    ] {
        let before = relations(&c).await;
        let out = fx.restore(
            "sensor_readings",
            0,
            2,
            &[
                "--target",
                target,
                "--merge",
                "--into",
                &format!("st_{target}"),
            ],
        );
        assert_refused(&out, 3, needle, "alter the target");
        assert_eq!(relations(&c).await, before, "{target}: nothing created");
        assert_eq!(count(&c, target, "true").await, 0);
    }
}

/// Every relation outside the system schemas, as `schema.name`.
async fn relations(c: &tokio_postgres::Client) -> Vec<String> {
    c.query(
        "SELECT n.nspname::text || '.' || c.relname::text FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' ORDER BY 1",
        &[],
    )
    .await
    .expect("relations")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// A restore refused up front: exit `code`, exactly one `error:` line, which
/// contains `cause`, and a hint containing `hint`.
fn assert_refused(out: &Out, code: i32, cause: &str, hint: &str) {
    assert_eq!(out.code, code, "{}", out.stderr);
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(errors[0].contains(cause), "{cause}: {}", out.stderr);
    assert!(out.has_hint(hint), "{hint}: {}", out.stderr);
    assert!(out.stdout.is_empty(), "no report: {}", out.stdout);
}

/// A target that does not exist or does not fit the mode, and a range with
/// no archived rows, fail before anything is created in Postgres: no staging
/// table, the target untouched (issue 17).
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn restore_refuses_up_front_and_creates_nothing() {
    let s = services!();
    let db = sensor_db(&s, "restore_refuse").await;
    let c = db.client().await;
    c.batch_execute(
        "DELETE FROM sensor_readings WHERE recorded_at >= date_trunc('day', now()) - interval '38 days'; \
         DELETE FROM before_rows WHERE recorded_at >= date_trunc('day', now()) - interval '38 days';",
    )
    .await
    .expect("two days");
    let fx = Fx::new(&s, db, Cat::Sqlite, "sensor_readings", "recorded_at", "5d").await;
    fx.archive();
    c.batch_execute(
        "CREATE TABLE plain (LIKE sensor_readings INCLUDING ALL); \
         INSERT INTO plain SELECT * FROM before_rows WHERE id <= 10; \
         CREATE TABLE narrow (LIKE sensor_readings); ALTER TABLE narrow DROP COLUMN payload; \
         CREATE TABLE no_key (LIKE sensor_readings);",
    )
    .await
    .expect("targets");
    let plain_rows = rows(&c, "plain", "true", "id").await;
    // Newest first: the current snapshot, and the first one (day 0 only).
    let snaps = fx
        .run(&["snapshots", "-t", "sensor_readings", "--json"])
        .json();
    let snaps = snaps.as_array().expect("snapshots");
    assert_eq!(snaps.len(), 2, "one batch a day");
    let current = snaps[0]["snapshot_id"].to_string();
    let first = snaps[1]["snapshot_id"].to_string();
    assert_eq!(snaps[1]["window_start"], rfc3339(fx.day0), "{snaps:?}");

    let cases: [(&[&str], i32, &str, &str); 5] = [
        (
            &["--merge", "--target", "nosuch"],
            3,
            "--merge: the target \"public\".\"nosuch\" does not exist",
            "--target SCHEMA.TABLE",
        ),
        (
            &["--attach", "--target", "nosuch"],
            3,
            "--attach: the target \"public\".\"nosuch\" does not exist",
            "without --attach the rows are only staged",
        ),
        (
            &["--attach", "--target", "plain"],
            3,
            "--attach: \"public\".\"plain\" is not a partitioned table",
            "--attach needs a target partitioned by RANGE (recorded_at)",
        ),
        (
            &["--merge", "--target", "narrow"],
            3,
            "--merge: \"public\".\"narrow\" does not fit the archived columns: archived column `payload` is not in the target",
            "alter the target",
        ),
        (
            &["--merge", "--target", "no_key", "--on-conflict", "update"],
            3,
            "--merge: --on-conflict update needs a primary key on the target (\"public\".\"no_key\" has none)",
            "--on-conflict skip",
        ),
    ];
    for (flags, code, cause, hint) in cases {
        let before = relations(&c).await;
        let out = fx.restore("sensor_readings", 0, 2, flags);
        assert_refused(&out, code, cause, hint);
        assert_eq!(relations(&c).await, before, "{flags:?}: nothing created");
        assert_eq!(rows(&c, "plain", "true", "id").await, plain_rows);
        for t in ["narrow", "no_key", "sensor_readings"] {
            assert_eq!(count(&c, t, "true").await, 0, "{flags:?}: {t}");
        }
    }

    // No archived rows at the snapshot: days without a file (before, after
    // and between nothing), and a minute between two rows of an archived
    // file (the file is read, no row is in the range; the load rolls back).
    let minute = (fx.day0 + 60_000_000, fx.day0 + 120_000_000);
    let days = |from: i64, to: i64| (fx.day0 + from * DAY, fx.day0 + to * DAY);
    for ((from, to), flags) in [
        (days(5, 7), &["--merge"][..]),
        (days(-3, -1), &["--into", "st_empty"][..]),
        (days(1, 2), &["--snapshot", first.as_str()][..]),
        (minute, &["--merge", "--target", "plain"][..]),
        (minute, &["--log-level", "debug"][..]),
    ] {
        let before = relations(&c).await;
        let (f, t) = (rfc3339(from), rfc3339(to));
        let mut args = vec!["restore", "-t", "sensor_readings", "--from", &f, "--to", &t];
        args.extend_from_slice(flags);
        let out = fx.run(&args);
        let at = if flags.contains(&"--snapshot") {
            &first
        } else {
            &current
        };
        assert_refused(
            &out,
            2,
            &format!("sensor_readings in [{f}, {t}) at snapshot {at}"),
            "permafrost list -t sensor_readings",
        );
        assert!(
            out.error_lines()[0].starts_with("error: no archived rows of "),
            "{}",
            out.stderr
        );
        if flags.contains(&"debug") {
            assert!(
                out.stderr.contains("1 data file(s) of the range"),
                "day 0's file was read: {}",
                out.stderr
            );
        }
        assert_eq!(relations(&c).await, before, "{flags:?}: nothing created");
        assert_eq!(rows(&c, "plain", "true", "id").await, plain_rows);
        assert_eq!(count(&c, "sensor_readings", "true").await, 0);
    }
}

/// The comment on `table`, if any.
async fn table_comment(c: &tokio_postgres::Client, table: &str) -> Option<String> {
    c.query_one(
        "SELECT obj_description($1::text::regclass, 'pg_class')",
        &[&table],
    )
    .await
    .expect("comment")
    .get(0)
}

/// The load runs on two connections, each in a transaction of its own: a
/// load Postgres refuses part of rolls both back and drops the staging
/// table; a restore killed before the loaders commit leaves the table
/// marked unfinished, and the next restore into it refuses until it is
/// dropped.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_failed_load_is_dropped_and_a_killed_one_is_marked() {
    let s = services!();
    let db = TestDb::create(&s, "restore_failed_load").await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE DOMAIN tag AS int; \
         CREATE TABLE tagged (id bigserial PRIMARY KEY, recorded_at timestamptz NOT NULL, tag tag); \
         INSERT INTO tagged (recorded_at, tag) \
         SELECT date_trunc('day', now()) - interval '40 days' + (i / 100) * interval '1 day' + (i % 100) * interval '1 minute', i \
         FROM generate_series(0, 299) AS i;",
    )
    .await
    .expect("data");
    let extra = "    parallel_windows: 2\n";
    let fx = Fx::with(&s, db, Cat::Sqlite, "tagged", "recorded_at", "5d", extra).await;
    assert_eq!(fx.archive()[0]["batches"].as_array().map(Vec::len), Some(3));
    assert_eq!(count(&c, "tagged", "true").await, 0);

    // The domain now refuses the tags of day 2: the loader that copies
    // day 2's file fails, the other is rolled back, nothing is left.
    c.batch_execute("ALTER DOMAIN tag ADD CONSTRAINT small CHECK (VALUE < 250) NOT VALID")
        .await
        .expect("constraint");
    let before = relations(&c).await;
    let out = fx.restore("tagged", 0, 3, &["--into", "staged"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(
        errors[0].contains("COPY into the staging table failed") && errors[0].contains("small"),
        "{}",
        out.stderr
    );
    assert_eq!(relations(&c).await, before, "the staging table is dropped");

    // Killed after both loaders copied days 0–1, before they commit.
    let (f, t) = (rfc3339(fx.day0), rfc3339(fx.day0 + 2 * DAY));
    let args = [
        "restore",
        "-c",
        fx.cfg.as_str(),
        "-t",
        "tagged",
        "--from",
        &f,
        "--to",
        &t,
        "--into",
        "staged",
    ];
    let killed = fx.ws.run_env(
        &args,
        &fx.env_with(&[("PERMAFROST_FAULT", "restore-loaded")]),
    );
    assert_ne!(killed.code, 0, "the fault must fire: {}", killed.stderr);
    let marked = table_comment(&c, "staged").await;
    assert_eq!(
        marked.as_deref(),
        Some(permafrost::restore::load::UNFINISHED)
    );
    assert_eq!(count(&c, "staged", "true").await, 0, "no loader committed");
    let out = fx.restore("tagged", 0, 2, &["--into", "staged"]);
    assert_refused(
        &out,
        4,
        "the staging table \"public\".\"staged\" is left from a restore whose load did not finish",
        "DROP TABLE \"public\".\"staged\"",
    );

    // Dropped. A loader's backend ends after it copied, before it commits:
    // its commit fails, the other loader's committed rows go with the
    // staging table.
    c.batch_execute("DROP TABLE staged").await.expect("drop");
    let before = relations(&c).await;
    let pause = Pause::new();
    let point = pause.env("restore-loaded");
    let child = fx
        .ws
        .spawn(&args, &fx.env_with(&[("PERMAFROST_PAUSE", &point)]));
    let fifo = pause
        .wait_reached(std::time::Duration::from_secs(120))
        .expect("the restore reached restore-loaded");
    let ended: Vec<bool> = c
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
               AND state = 'idle in transaction' LIMIT 1",
            &[],
        )
        .await
        .expect("terminate")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ended, [true], "one loader waits in its transaction");
    Pause::resume(fifo);
    let out = finish(child);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.error_lines()[0].contains("cannot commit the staging table's rows"),
        "{}",
        out.stderr
    );
    assert_eq!(relations(&c).await, before, "the staging table is dropped");

    // The same restore loads both days, checked, comment cleared.
    let out = fx.restore("tagged", 0, 2, &["--into", "staged"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(
        (r["valid"].clone(), r["rows"].clone()),
        (true.into(), 200.into()),
        "{r}"
    );
    assert_eq!(r["files"], 2, "{r}");
    let ids = rows(&c, "staged", "true", "id").await;
    assert_eq!(ids.len(), 200);
    let comment = table_comment(&c, "staged").await;
    assert_eq!(comment, None);
}

/// The staged rows are proved by Postgres's hash of their binary form,
/// without reading them back; a value changed, or a row swapped for a copy
/// of another, between the load and the checks is caught by the hash, and
/// the rows then read back confirm it: nothing is applied.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn staged_rows_changed_before_the_checks_are_caught() {
    let s = services!();
    let db = sensor_db(&s, "restore_tampered").await;
    let extra = "    parallel_windows: 2\n";
    let fx = Fx::with(
        &s,
        db,
        Cat::Sqlite,
        "sensor_readings",
        "recorded_at",
        "5d",
        extra,
    )
    .await;
    let c = fx.db.client().await;
    fx.archive();
    let want = rows(&c, "before_rows", &fx.range("recorded_at", 0, 3), "id").await;
    assert_eq!(want.len(), 600);

    let out = fx.restore("sensor_readings", 0, 3, &["--into", "clean"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    let content = check(&r, "content");
    assert_eq!(content["ok"], true, "{r}");
    let want_detail = proved(&c, 600).await;
    assert!(
        content["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with(&want_detail)),
        "{content}"
    );
    assert_eq!(rows(&c, "clean", "true", "id").await, want);

    let changes = [
        (
            "changed",
            "UPDATE changed SET value = value + 0.001 WHERE id = (SELECT min(id) FROM changed)",
        ),
        (
            "swapped",
            "DELETE FROM swapped WHERE id = (SELECT max(id) FROM swapped); \
             INSERT INTO swapped SELECT * FROM swapped WHERE id = (SELECT min(id) FROM swapped)",
        ),
    ];
    for (into, change) in changes {
        let (f, t) = (rfc3339(fx.day0), rfc3339(fx.day0 + 3 * DAY));
        let args = [
            "restore",
            "-c",
            &fx.cfg,
            "-t",
            "sensor_readings",
            "--from",
            &f,
            "--to",
            &t,
            "--into",
            into,
            "--json",
        ];
        let pause = Pause::new();
        let point = pause.env("restore-staged");
        let child = fx
            .ws
            .spawn(&args, &fx.env_with(&[("PERMAFROST_PAUSE", &point)]));
        let fifo = pause
            .wait_reached(std::time::Duration::from_secs(120))
            .expect("the restore reached restore-staged");
        c.batch_execute(change)
            .await
            .expect("change the staged rows");
        assert_eq!(count(&c, into, "true").await, 600, "{into}");
        Pause::resume(fifo);
        let out = finish(child);
        assert_eq!(out.code, 5, "{into}: {}", out.stderr);
        let r = out.json();
        assert_eq!(
            (r["valid"].clone(), r["action"].clone()),
            (false.into(), "none".into()),
            "{r}"
        );
        let content = check(&r, "content");
        assert_eq!(content["ok"], false, "{r}");
        let detail = content["detail"].as_str().unwrap_or_default();
        let hashed = want_detail.contains("hash in Postgres");
        assert!(
            detail.starts_with("staged rows read back: 600 row(s)")
                && (!hashed
                    || detail.contains("(read back because Postgres hashes 600 staged row(s) to ")
                        && detail.contains("the 600 row(s) sent hash to ")),
            "{into}: {detail}"
        );
        assert_eq!(
            count(&c, into, "true").await,
            600,
            "{into}: the staging table is kept"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn type_zoo_restores_value_for_value() {
    let s = services!();
    let db = TestDb::create(&s, "restore_zoo").await;
    let c = db.client().await;
    c.batch_execute(&type_zoo_sql(&c).await).await.expect("zoo");
    c.batch_execute("CREATE TABLE zoo_before AS SELECT * FROM zoo")
        .await
        .expect("copy");
    let fx = Fx::new(&s, db, Cat::Sqlite, "zoo", "ts", "1d").await;
    fx.archive();
    assert_eq!(count(&c, "zoo", "true").await, 0);
    let out = fx.run(&[
        "restore",
        "-t",
        "zoo",
        "--from",
        "1900-01-01",
        "--to",
        "2100-01-01",
        "--into",
        "zoo_back",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(r["valid"], true, "{r}");
    assert_eq!(r["rows"], 4);
    // Every type of the zoo hashes in Postgres as permafrost hashes it
    // (its own hash function, or its binary form's).
    let content = check(&r, "content");
    let want_detail = proved(&c, 4).await;
    assert!(
        content["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with(&want_detail)),
        "{content}"
    );
    assert_eq!(
        rows(&c, "zoo_back", "true", "id").await,
        rows(&c, "zoo_before", "true", "id").await
    );
    // Merged back into the source, the rows are exactly the originals.
    let out = fx.run(&[
        "restore",
        "-t",
        "zoo",
        "--from",
        "1900-01-01",
        "--to",
        "2100-01-01",
        "--merge",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        rows(&c, "zoo", "true", "id").await,
        rows(&c, "zoo_before", "true", "id").await
    );
}

const PARTITIONED: &str = "CREATE TABLE events (id bigint NOT NULL, ts timestamptz NOT NULL, v double precision, PRIMARY KEY (id, ts)) \
         PARTITION BY RANGE (ts); \
     DO $$ DECLARE d date; BEGIN \
       FOR k IN 0..5 LOOP \
         d := (date_trunc('day', now()) - interval '40 days')::date + k; \
         EXECUTE format('CREATE TABLE events_%s PARTITION OF events FOR VALUES FROM (%L) TO (%L)', \
                        to_char(d, 'YYYYMMDD'), d::timestamptz, (d + 1)::timestamptz); \
       END LOOP; END $$; \
     CREATE TABLE events_recent PARTITION OF events FOR VALUES FROM (date_trunc('day', now()) - interval '34 days') TO (MAXVALUE); \
     INSERT INTO events SELECT i, date_trunc('day', now()) - interval '40 days' + i * interval '17 minutes', i % 50 \
     FROM generate_series(0, 400) AS i; \
     INSERT INTO events SELECT 1000 + i, now() - i * interval '1 hour', 1 FROM generate_series(0, 9) AS i; \
     CREATE TABLE before_rows AS SELECT * FROM events;";

/// Days 0–5 as partitions (rows in days 0–4), a recent partition with 10
/// rows newer than the lag; `drop_partitions: true` and `extra`.
async fn partitioned_fixture(s: &Services, tag: &str, extra: &str) -> (Fx, tokio_postgres::Client) {
    let db = TestDb::create(s, tag).await;
    let c = db.client().await;
    c.batch_execute(PARTITIONED)
        .await
        .expect("partitioned table");
    let fx = Fx::with(
        s,
        db,
        Cat::Sqlite,
        "events",
        "ts",
        "5d",
        &format!("    drop_partitions: true\n{extra}"),
    )
    .await;
    assert_eq!(partitions(&c).await.len(), 7);
    (fx, c)
}

/// Every archived id exactly once, the five archived days' partitions
/// dropped, the recent rows still in Postgres.
async fn assert_partitions_archived(fx: &Fx, c: &tokio_postgres::Client, what: &str) {
    let left = partitions(c).await;
    assert_eq!(left.len(), 2, "{what}: {left:?}");
    assert!(
        left.contains(&"events_recent".to_string()),
        "{what}: {left:?}"
    );
    assert_eq!(
        count(c, "events", "true").await,
        10,
        "{what}: only the recent rows remain"
    );
    assert_archived_once(fx, what);
}

/// Every one of the fixture's 401 old rows is in the archive exactly once.
fn assert_archived_once(fx: &Fx, what: &str) {
    assert_eq!(
        fx.archived_ids("events", 6),
        (0..=400).collect::<Vec<i64>>(),
        "{what}: every row archived exactly once"
    );
}

/// A range-partitioned source with `drop_partitions`: archived days leave as
/// whole partitions (dropped after verification, in the batch transaction);
/// a run killed at any fault point is completed by the next run without
/// losing or duplicating a row; restore re-attaches a day.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn partitioned_source_drops_whole_partitions_and_recovers() {
    let s = services!();
    for point in [
        "after-extract",
        "during-delete",
        "after-write",
        "after-commit",
        "after-verify",
        "after-pg-commit",
    ] {
        // One batch at a time: "nothing dropped before the Postgres
        // commit" is about the batch the fault stops.
        let (fx, c) = partitioned_fixture(&s, "parts_fault", "    parallel_windows: 1\n").await;
        let out = fx.archive_env(&[("PERMAFROST_FAULT", point)]);
        assert_ne!(out.code, 0, "{point}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!("fault injected at `{point}`")),
            "{point}: {}",
            out.stderr
        );
        if point != "after-pg-commit" {
            assert_eq!(
                partitions(&c).await.len(),
                7,
                "{point}: nothing dropped before the Postgres commit"
            );
            assert_eq!(count(&c, "events", "true").await, 411, "{point}");
        }
        let out = fx.archive_env(&[]);
        assert_eq!(out.code, 0, "{point}: {}", out.stderr);
        assert!(
            out.stderr.contains("dropping partition(s)"),
            "{point}: {}",
            out.stderr
        );
        assert_partitions_archived(&fx, &c, point).await;
    }

    // Restore re-attaches a day into the same layout.
    let (fx, c) = partitioned_fixture(&s, "parts_restore", "").await;
    let out = fx.archive_env(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_partitions_archived(&fx, &c, "plain run").await;
    let out = fx.restore("events", 2, 3, &["--attach", "--into", "events_day2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["action"], "attached");
    let range = fx.range("ts", 2, 3);
    assert_eq!(
        rows(&c, "events", &range, "id").await,
        rows(&c, "before_rows", &range, "id").await
    );
}

/// `drop_partitions` with `parallel_windows: 3`: while the first batch is
/// held right after its Iceberg commit (its partition locked, its
/// transaction open), the other days' batches drop their partitions and
/// commit.  Reading a partition through its parent would have made each
/// `DROP` wait for the held transaction (and two batches deadlock).
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn partitions_drop_side_by_side() {
    let s = services!();
    let (fx, c) = partitioned_fixture(&s, "parts_parallel", "    parallel_windows: 3\n").await;
    let pause = Pause::new();
    let spec = pause.env("after-commit");
    let mut env: Vec<(&str, &str)> = fx.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("PERMAFROST_PAUSE", spec.as_str()));
    let child = fx.ws.spawn(
        &[
            "archive",
            "-c",
            fx.cfg.as_str(),
            "--json",
            "--log-level",
            "debug",
        ],
        &env,
    );
    let Some(handle) = pause.wait_reached(std::time::Duration::from_secs(120)) else {
        panic!("never reached after-commit:\n{}", finish(child).stderr);
    };
    // Days 1–4 leave; day 0 (held), the empty day 5 and the recent
    // partition stay.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut left = partitions(&c).await;
    while left.len() != 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        left = partitions(&c).await;
    }
    Pause::resume(handle);
    let out = finish(child);
    assert_eq!(
        left.len(),
        3,
        "the other batches did not drop their partitions while the first was held: {left:?}\n{}",
        out.stderr
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let dropped = listed_partitions(&out.json(), "dropped_partitions");
    assert_eq!(
        dropped.len(),
        5,
        "each day's partition listed once: {dropped:?}"
    );
    assert_partitions_archived(&fx, &c, "side by side").await;
}

/// `batch_rows` on a partitioned table: statistics gathered on its
/// partitions alone (as autovacuum gathers them: never on the parent) group
/// its days, and a batch of several days drops all their partitions.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn partition_statistics_group_days_and_a_batch_drops_them_all() {
    let s = services!();
    let (fx, c) = partitioned_fixture(
        &s,
        "parts_grouped",
        "    batch_rows: 200\n    parallel_windows: 1\n",
    )
    .await;
    let planned = || {
        let out = fx.run(&["archive", "--dry-run", "--json"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        each_of(&out.json()[0], "planned", "windows")
    };
    assert_eq!(planned(), [1; 5], "no statistics: a day a batch");
    for p in partitions(&c).await {
        c.batch_execute(&format!("ANALYZE {p}"))
            .await
            .expect("analyze");
    }
    // ~85 rows a day, 200 a batch: two days (aligned, so one may be alone).
    let sizes = planned();
    assert!(
        sizes.contains(&2) && sizes.iter().all(|n| (1..=2).contains(n)),
        "{sizes:?}"
    );
    assert_eq!(sizes.iter().sum::<u64>(), 5);
    let report = fx.archive();
    assert_eq!(
        each_of(&report[0], "batches", "rows").len(),
        sizes.len(),
        "{report}"
    );
    assert_partitions_archived(&fx, &c, "grouped").await;
}

/// `drop_partitions` on a table that a foreign key references, or whose
/// partition a view reads: Postgres drops such partitions only with
/// `CASCADE` (which would drop the key or the view), so `check` warns and
/// the batches delete the rows instead — every row archived once, the
/// partitions left (empty), no batch unsettled.  (Before, every run
/// committed each batch again and failed to drop its partition, with
/// Postgres's hint to use `DROP … CASCADE`; unsettled batches piled up.)
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn partitions_a_foreign_key_or_a_view_holds_are_emptied_not_dropped() {
    let s = services!();
    for (tag, holder, named) in [
        (
            "parts_fk",
            "CREATE TABLE notes (eid bigint, ets timestamptz, FOREIGN KEY (eid, ets) REFERENCES events)",
            "notes_eid_ets_fkey",
        ),
        (
            "parts_view",
            "DO $$ BEGIN EXECUTE format('CREATE VIEW day0 AS SELECT * FROM %I', \
               (SELECT min(c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                WHERE i.inhparent = 'events'::regclass)); END $$",
            "day0",
        ),
    ] {
        let (fx, c) = partitioned_fixture(&s, tag, "").await;
        c.batch_execute(holder).await.expect(holder);
        let check = fx.run(&["check", "--json"]);
        assert_eq!(check.code, 0, "{tag}: {}", check.stderr);
        let warnings = check.json()["tables"][0]["warnings"].to_string();
        assert!(
            warnings.contains("drop_partitions") && warnings.contains(named),
            "{tag}: {warnings}"
        );
        assert_emptied_not_dropped(&fx, &c, tag).await;
    }
}

/// Two runs of `fx` leave its seven partitions (the archived ones emptied)
/// and no batch unsettled, every archived row archived once.
async fn assert_emptied_not_dropped(fx: &Fx, c: &tokio_postgres::Client, what: &str) {
    for run in 0..2 {
        let out = fx.archive_env(&[]);
        assert_eq!(out.code, 0, "{what} run {run}: {}", out.stderr);
        assert_eq!(partitions(c).await.len(), 7, "{what}: none dropped");
        assert_eq!(count(c, "events", "true").await, 10, "{what}");
        let status = fx.run(&["status", "--json"]).json();
        assert_eq!(
            status[0]["unsettled_batches"],
            serde_json::json!([]),
            "{what}: {status}"
        );
    }
    assert_archived_once(fx, what);
}

/// Partitions the connecting role does not own: `DROP` is the owner's, so
/// a batch that archived them would fail to drop them after its commit —
/// left unsettled, and every later run archiving a marker snapshot to
/// settle it and failing again.  The run sees it first: the rows are
/// deleted (which the role may), the partitions stay, `check` says why.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn partitions_another_role_owns_are_emptied_not_dropped() {
    let s = services!();
    let mut db = TestDb::create(&s, "parts_owner").await;
    let c = db.client().await;
    c.batch_execute(PARTITIONED)
        .await
        .expect("partitioned table");
    let role = format!("{}_archiver", db.name);
    c.batch_execute(&format!(
        "CREATE ROLE {role}; GRANT SELECT, DELETE ON events TO {role}"
    ))
    .await
    .expect("role");
    // The session runs as the role (superusers own everything).
    db.dsn = format!("{}?options=-c%20role%3D{role}", db.dsn);
    let fx = Fx::with(
        &s,
        db,
        Cat::Sqlite,
        "events",
        "ts",
        "5d",
        "    drop_partitions: true\n",
    )
    .await;
    let check = fx.run(&["check", "--json"]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    let warnings = check.json()["tables"][0]["warnings"].to_string();
    assert!(
        warnings.contains("drop_partitions") && warnings.contains(&format!("not by {role}")),
        "{warnings}"
    );
    assert_emptied_not_dropped(&fx, &c, &role).await;
}

/// A reader of the parent — a long query, here a transaction that read it
/// and stays open — holds a lock a partition's `DROP` needs (it locks the
/// parent), and every reader and writer of the parent queues behind a
/// `DROP` that waits for it.  The `DROP` waits at most
/// `drop_lock_timeout`; then the batch deletes the partitions' rows
/// instead (its own locks are all that takes), settles in the same run,
/// and the partitions stay, empty, until a run finds nothing holding them
/// — where the batch used to fail after its commit, unsettled, each later
/// run archiving one more marker snapshot.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_drop_held_up_by_a_reader_of_the_parent_deletes_the_rows_instead() {
    let s = services!();
    let (fx, c) = partitioned_fixture(&s, "parts_reader", "    drop_lock_timeout: 200ms\n").await;
    let reader = fx.db.client().await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM events")
        .await
        .expect("a reader of the parent");
    let out = fx.archive_env(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("not dropped (canceling statement due to lock timeout)")
            && out.stderr.contains("deleted instead"),
        "{}",
        out.stderr
    );
    let report = out.json();
    let emptied = listed_partitions(&report, "emptied_partitions");
    assert_eq!(emptied.len(), 5, "{report}");
    assert!(
        listed_partitions(&report, "dropped_partitions").is_empty(),
        "{report}"
    );
    assert_emptied_not_dropped(&fx, &c, "held up by a reader").await;
    // Once nothing holds the table, the next run drops them.
    reader.batch_execute("COMMIT").await.expect("reader ends");
    let out = fx.archive_env(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let dropped = out.json()[0]["emptied_partitions_dropped"].clone();
    assert_eq!(dropped.as_array().map(Vec::len), Some(5), "{}", out.stdout);
    assert_partitions_archived(&fx, &c, "emptied, then dropped").await;
}

/// The partitions the batches of an `archive --json` report list under
/// `key` (`dropped_partitions`, `emptied_partitions`).
fn listed_partitions(report: &Value, key: &str) -> Vec<String> {
    report[0]["batches"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|b| b[key].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect()
}

async fn partitions(c: &tokio_postgres::Client) -> Vec<String> {
    c.query(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'events'::regclass ORDER BY 1",
        &[],
    )
    .await
    .expect("partitions")
    .iter()
    .map(|r| r.get::<_, String>(0))
    .collect()
}
