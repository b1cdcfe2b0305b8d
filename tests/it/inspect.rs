//! Inspecting archives: snapshots and time travel, list, show, diff, fetch in
//! every format, and golden CLI output.

use serde_json::{Value, json};

use crate::common::*;
use crate::services;

const DAY: i64 = 86_400_000_000;

/// A canonical row: id, time (µs), sensor_id, sensor_name, value, unit, quality, payload.
type Row = (i64, i64, i64, String, f64, String, f64, String);

fn micros(s: &str) -> i64 {
    permafrost::plan::window::parse_instant(s).unwrap_or_else(|| panic!("not a timestamp: {s}"))
}

fn json_row(o: &Value) -> Row {
    let f = |k: &str| {
        o[k].as_f64().unwrap_or_else(|| {
            o[k].as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(f64::NAN)
        })
    };
    (
        o["id"].as_i64().expect("id"),
        micros(o["recorded_at"].as_str().expect("recorded_at")),
        o["sensor_id"].as_i64().expect("sensor_id"),
        o["sensor_name"].as_str().expect("name").to_string(),
        f("value"),
        o["unit"].as_str().expect("unit").to_string(),
        f("quality"),
        o["payload"].as_str().expect("payload").to_string(),
    )
}

/// A minimal RFC 4180 reader (quoted fields, doubled quotes).
fn csv_rows(text: &str) -> Vec<Vec<String>> {
    let mut rows = vec![];
    let mut row = vec![];
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    rows
}

async fn pg_rows(c: &tokio_postgres::Client, cond: &str) -> Vec<Row> {
    let sql = format!(
        "SELECT id, (extract(epoch FROM recorded_at) * 1000000)::int8, sensor_id::int8, sensor_name, value, unit, quality::float8, payload::text \
         FROM before_rows WHERE {cond} ORDER BY id"
    );
    c.query(sql.as_str(), &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
            )
        })
        .collect()
}

fn sorted(mut v: Vec<Row>) -> Vec<Row> {
    v.sort_by_key(|r| r.0);
    v
}

struct Fx {
    s: Services,
    db: TestDb,
    ws: Ws,
    cat: CatalogSetup,
    cfg: String,
    day0: i64,
}

/// Three days (day0, day0+1, day0+2, 20 to 18 days ago) of 300 rows each.
async fn fixture(s: &Services, tag: &str) -> Fx {
    let db = TestDb::create(s, tag).await;
    let c = db.client().await;
    c.batch_execute(permafrost::demo::SAMPLE_SCHEMA)
        .await
        .expect("schema");
    c.batch_execute(
        "INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, value, unit, quality, payload) \
         SELECT date_trunc('day', now()) - interval '20 days' + (i / 300) * interval '1 day' + (i % 300) * interval '4 minutes 1 second', \
                i % 5, 'sensor-' || (i % 5), (i % 97) / 4.0, 'celsius', (i % 1000) / 100.0, jsonb_build_object('i', i) \
         FROM generate_series(0, 899) AS i; \
         CREATE TABLE before_rows AS SELECT * FROM sensor_readings;",
    )
    .await
    .expect("data");
    let day0: i64 = c
        .query_one("SELECT (extract(epoch FROM date_trunc('day', now()) - interval '20 days') * 1000000)::int8", &[])
        .await
        .expect("day0")
        .get(0);
    let ws = Ws::new();
    let cat = CatalogSetup::new(Cat::Sqlite, s, &ws).await;
    let cfg = ws
        .config(
            "permafrost.yaml",
            &format!(
                "database:\n  dsn: \"{}\"\n{}global:\n  namespace: {}\ntables:\n  - name: sensor_readings\n    timestamp_column: recorded_at\n    lag: 15d\n",
                db.dsn, cat.yaml, cat.namespace
            ),
        )
        .to_string_lossy()
        .to_string();
    Fx {
        s: s.clone(),
        db,
        ws,
        cat,
        cfg,
        day0,
    }
}

impl Fx {
    fn run(&self, args: &[&str]) -> Out {
        let mut a = vec![args[0], "-c", self.cfg.as_str()];
        a.extend_from_slice(&args[1..]);
        self.ws.run(&a)
    }

    /// Archives the windows before `day0 + days` days (lag 15d).
    fn archive_until(&self, days: i64) -> Out {
        let now = rfc3339(self.day0 + days * DAY + 15 * DAY + 3_600_000_000);
        let out = self.run(&["archive", "--json", "--now", &now]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        out
    }

    fn fetch(&self, extra: &[&str]) -> Out {
        let (from, to) = (rfc3339(self.day0), rfc3339(self.day0 + 3 * DAY));
        let mut a = vec![
            "fetch",
            "-t",
            "sensor_readings",
            "--from",
            from.as_str(),
            "--to",
            to.as_str(),
        ];
        a.extend_from_slice(extra);
        let out = self.run(&a);
        assert_eq!(out.code, 0, "{}", out.stderr);
        out
    }
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn snapshots_time_travel_diff_and_fetch_in_every_format() {
    let s = services!();
    let fx = fixture(&s, "inspect").await;
    let c = fx.db.client().await;
    for days in 1..=3 {
        let out = fx.archive_until(days);
        assert_eq!(
            out.json()[0]["batches"].as_array().map(Vec::len),
            Some(1),
            "one window per run"
        );
    }
    // Three snapshots, newest first, with the right windows and counts.
    let snaps = fx
        .run(&["snapshots", "-t", "sensor_readings", "--json"])
        .json();
    let snaps = snaps.as_array().expect("snapshots").clone();
    assert_eq!(snaps.len(), 3);
    for (i, sn) in snaps.iter().rev().enumerate() {
        let start = fx.day0 + i as i64 * DAY;
        assert_eq!(sn["window_start"].as_str(), Some(rfc3339(start).as_str()));
        assert_eq!(
            sn["window_end"].as_str(),
            Some(rfc3339(start + DAY).as_str())
        );
        assert_eq!(sn["rows"], 300);
        assert_eq!(sn["files"], 1);
        assert_eq!(sn["operation"], "append");
        assert!(sn["bytes"].as_u64().unwrap_or(0) > 0);
        assert_eq!(sn["total_rows"].as_u64(), Some(300 * (i as u64 + 1)));
        assert_eq!(sn["properties"]["permafrost.rows"], "300");
        assert!(sn["batch_id"].as_str().is_some());
    }
    let (s1, s2, s3) = (&snaps[2], &snaps[1], &snaps[0]);
    assert_eq!(s2["parent_id"], s1["snapshot_id"]);

    // --as-of between the commits resolves to the earlier snapshot.
    let t1 = s1["committed_at"].as_str().expect("t1").to_string();
    let t2 = micros(s2["committed_at"].as_str().expect("t2"));
    assert!(t2 > micros(&t1), "commits are apart in time");
    let between = rfc3339(t2 - 1000);
    let shown = fx
        .run(&[
            "show",
            "-t",
            "sensor_readings",
            "--as-of",
            &between,
            "--json",
        ])
        .json();
    assert_eq!(shown["snapshot_id"], s1["snapshot_id"], "as-of {between}");
    let at1 = fx.fetch(&["--as-of", &t1, "--format", "jsonl"]);
    assert_eq!(
        at1.stdout.lines().count(),
        300,
        "as of the first commit: its window only"
    );
    let old = fx.fetch(&[
        "--snapshot",
        &s1["snapshot_id"].to_string(),
        "--format",
        "jsonl",
    ]);
    assert_eq!(
        old.stdout.lines().count(),
        300,
        "an older snapshot excludes later batches"
    );
    let early = fx.run(&["show", "-t", "sensor_readings", "--as-of", "2000-01-01"]);
    assert_ne!(early.code, 0);
    assert!(
        early.error_lines()[0].contains("had no snapshot yet"),
        "{}",
        early.stderr
    );

    // diff s1 → s3: two windows, two files, 600 rows.
    let d = fx
        .run(&[
            "diff",
            "-t",
            "sensor_readings",
            "--from-snapshot",
            &s1["snapshot_id"].to_string(),
            "--to-snapshot",
            &s3["snapshot_id"].to_string(),
            "--json",
        ])
        .json();
    assert_eq!(d["rows_added"], 600);
    assert_eq!(d["files_added"], 2);
    assert_eq!(d["windows"].as_array().map(Vec::len), Some(2));
    assert_eq!(d["snapshots"].as_array().map(Vec::len), Some(2));

    // fetch equals the original rows, in every format.
    let want = pg_rows(&c, "true").await;
    assert_eq!(want.len(), 900);
    let jsonl: Vec<Row> = fx
        .fetch(&["--format", "jsonl"])
        .stdout
        .lines()
        .map(|l| json_row(&serde_json::from_str(l).expect("jsonl")))
        .collect();
    assert_eq!(sorted(jsonl), want, "jsonl");
    let json: Value = serde_json::from_str(&fx.fetch(&["--format", "json"]).stdout).expect("json");
    assert_eq!(
        sorted(
            json.as_array()
                .expect("array")
                .iter()
                .map(json_row)
                .collect()
        ),
        want,
        "json"
    );
    let csv = csv_rows(&fx.fetch(&["--format", "csv"]).stdout);
    let header = csv[0].clone();
    let csv_rows: Vec<Row> = csv[1..]
        .iter()
        .map(|r| {
            let o: serde_json::Map<String, Value> = header
                .iter()
                .zip(r)
                .map(|(k, v)| {
                    let v = match k.as_str() {
                        "id" | "sensor_id" => json!(v.parse::<i64>().expect("int")),
                        _ => json!(v),
                    };
                    (k.clone(), v)
                })
                .collect();
            json_row(&Value::Object(o))
        })
        .collect();
    assert_eq!(sorted(csv_rows), want, "csv");
    let pq = fx.ws.path().join("out.parquet");
    fx.fetch(&["--format", "parquet", "-o", &pq.to_string_lossy()]);
    let dir = tempfile::tempdir().expect("tempdir");
    let req = dir.path().join("req.json");
    std::fs::write(
        &req,
        json!({"parquet_file": pq, "key_column": "id"}).to_string(),
    )
    .expect("write");
    let script = crate::common::source_dir().join("tests/py/values.py");
    let py = std::process::Command::new(&fx.s.python)
        .arg(script)
        .arg(&req)
        .output()
        .expect("python");
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let prows: Value = serde_json::from_slice(&py.stdout).expect("json");
    let prows = prows["parquet"].as_object().expect("rows");
    assert_eq!(prows.len(), 900, "parquet");
    for w in &want {
        let r = &prows[&w.0.to_string()];
        assert_eq!(
            r["recorded_at"].as_i64(),
            Some(w.1),
            "parquet keeps the timestamp type"
        );
        assert_eq!(
            r["quality"].as_str().and_then(|q| q.parse::<f64>().ok()),
            Some(w.6),
            "parquet keeps the decimal type"
        );
        assert_eq!(r["payload"].as_str(), Some(w.7.as_str()));
    }

    // Projection and a pushed-down filter.
    let some = fx.fetch(&[
        "--format",
        "jsonl",
        "--columns",
        "id,value",
        "--where",
        "sensor_id = 3 AND value >= 10",
    ]);
    let got: Vec<Value> = some
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("jsonl"))
        .collect();
    let expected = pg_rows(&c, "sensor_id = 3 AND value >= 10").await;
    assert_eq!(got.len(), expected.len());
    assert!(
        got.iter()
            .all(|o| o.as_object().map(|m| m.len()) == Some(2)),
        "only the selected columns"
    );
    let bad = fx.run(&[
        "fetch",
        "-t",
        "sensor_readings",
        "--from",
        "2000-01-01",
        "--to",
        "2100-01-01",
        "--where",
        "nope = 1",
    ]);
    assert_ne!(bad.code, 0);
    assert!(
        bad.error_lines()[0].contains("unknown column `nope`"),
        "{}",
        bad.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn list_and_status_agree_after_archive_and_after_a_failed_batch() {
    let s = services!();
    let fx = fixture(&s, "list").await;
    let c = fx.db.client().await;
    let now = rfc3339(fx.day0 + 2 * DAY + 15 * DAY + 3_600_000_000);
    let out = fx.run(&["archive", "--now", &now]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let agree = |list: &Value, status: &Value| {
        let lines = list.as_array().expect("list");
        let n = |st: &str| lines.iter().filter(|l| l["state"] == st).count() as u64;
        assert_eq!(
            Some(n("archived")),
            status[0]["windows_archived"].as_u64(),
            "archived: {list}\n{status}"
        );
        assert_eq!(Some(n("pending")), status[0]["windows_pending"].as_u64());
        assert_eq!(Some(n("failed")), status[0]["windows_failed"].as_u64());
        let rows: u64 = lines.iter().map(|l| l["rows"].as_u64().unwrap_or(0)).sum();
        assert_eq!(Some(rows), status[0]["rows_archived"].as_u64());
    };
    let list = fx.run(&["list", "--json", "--now", &now]).json();
    let status = fx.run(&["status", "--json", "--now", &now]).json();
    agree(&list, &status);
    let lines = list.as_array().expect("list");
    assert_eq!(lines.len(), 2, "two windows are old enough");
    for l in lines {
        assert_eq!(l["state"], "archived");
        assert_eq!(l["rows"], 300);
        assert_eq!(l["files"], 1);
        assert_eq!(l["rows_in_postgres"], 0);
        assert!(
            l["partition"]
                .as_str()
                .unwrap_or("")
                .starts_with("recorded_at_day=")
        );
        assert!(l["snapshot_id"].as_i64().is_some());
    }
    assert_eq!(count(&c, "sensor_readings", "true").await, 300);

    // A late row in the first window, and a batch that fails verification.
    c.batch_execute(&format!(
        "INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, value, unit) VALUES (to_timestamp({}::float8 / 1e6), 1, 'late', 1, 'c')",
        fx.day0 + 1000
    ))
    .await
    .expect("late");
    let out = fx.ws.run_env(
        &["archive", "-c", &fx.cfg, "--now", &now],
        &[("PERMAFROST_FAULT", "corrupt-checksum")],
    );
    assert_ne!(out.code, 0);
    let list = fx.run(&["list", "--json", "--now", &now]).json();
    let status = fx.run(&["status", "--json", "--now", &now]).json();
    agree(&list, &status);
    let failed: Vec<&Value> = list
        .as_array()
        .expect("list")
        .iter()
        .filter(|l| l["state"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{list}");
    assert_eq!(failed[0]["window_start"], rfc3339(fx.day0));
    assert_eq!(failed[0]["rows_in_postgres"], 1, "the row is kept");
    let only_failed = fx
        .run(&["list", "--json", "--status", "failed", "--now", &now])
        .json();
    assert_eq!(only_failed.as_array().map(Vec::len), Some(1));
    let ranged = fx
        .run(&[
            "list",
            "--json",
            "--from",
            &rfc3339(fx.day0 + DAY),
            "--now",
            &now,
        ])
        .json();
    assert_eq!(ranged.as_array().map(Vec::len), Some(1));
}

/// Human output, with times, ids, sizes and paths masked.
fn mask(text: &str) -> String {
    let rules = [
        (r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z", "<TIME>"),
        (r"\d{4}-\d{2}-\d{2}", "<DATE>"),
        (r"\b\d{15,20}\b", "<SNAPSHOT>"),
        (r"\b[0-9a-f]{16}\b", "<BATCH>"),
        (r"\bns_\d+_\d+\b", "<NS>"),
        (r"\b[a-z]+_\d+_\d+\b", "<DB>"),
        (r"127\.0\.0\.1:\d+", "<HOST>"),
        (r"/tmp/[^\s?']+", "<PATH>"),
        (r"\d+(\.\d+)? (B|KiB|MiB)\b", "<SIZE>"),
        (r"\b[0-9a-f]{32}\b", "<CHECKSUM>"),
        (r"\d+\.\d+s\b", "<SECONDS>"),
        (r"_restore_\d+_\d+", "_restore_<RANGE>"),
        (r" {2,}", "  "),
        (r"-{3,}", "---"),
    ];
    let mut out = text.to_string();
    for (re, to) in rules {
        out = regex::Regex::new(re)
            .expect("regex")
            .replace_all(&out, to)
            .into_owned();
    }
    out.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn golden_cli_output() {
    let s = services!();
    let fx = fixture(&s, "golden").await;
    let mut insta_settings = insta::Settings::clone_current();
    insta_settings.set_snapshot_path(crate::common::source_dir().join("tests/it/snapshots"));
    let _bound = insta_settings.bind_to_scope();
    let now = rfc3339(fx.day0 + 2 * DAY + 15 * DAY + 3_600_000_000);
    let check = fx.run(&["check"]);
    insta::assert_snapshot!("check", mask(&check.stdout));
    let dry = fx.run(&["archive", "--dry-run", "--now", &now]);
    insta::assert_snapshot!("archive_dry_run", mask(&dry.stdout));
    let out = fx.run(&["archive", "--now", &now]);
    insta::assert_snapshot!("archive", mask(&out.stdout));
    insta::assert_snapshot!("status", mask(&fx.run(&["status", "--now", &now]).stdout));
    insta::assert_snapshot!(
        "snapshots",
        mask(&fx.run(&["snapshots", "-t", "sensor_readings"]).stdout)
    );
    insta::assert_snapshot!("list", mask(&fx.run(&["list", "--now", &now]).stdout));
    insta::assert_snapshot!(
        "show",
        mask(&fx.run(&["show", "-t", "sensor_readings"]).stdout)
    );
    let (from, to) = (rfc3339(fx.day0), rfc3339(fx.day0 + DAY));
    insta::assert_snapshot!(
        "restore",
        mask(
            &fx.run(&[
                "restore",
                "-t",
                "sensor_readings",
                "--from",
                &from,
                "--to",
                &to
            ])
            .stdout
        )
    );
    #[cfg(feature = "query")]
    insta::assert_snapshot!(
        "query",
        mask(
            &fx.run(&[
                "query",
                "SELECT sensor_id, count(*) AS n, min(sensor_name) AS name FROM archive.sensor_readings GROUP BY sensor_id ORDER BY sensor_id",
            ])
            .stdout
        )
    );
    let _ = &fx.cat;
}

/// A JSON value in a form both engines agree on: numbers (and numeric
/// strings, as DataFusion renders decimals) as f64, instants as µs.
#[cfg(feature = "query")]
fn canonical(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("n:{}", n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => match s.parse::<f64>() {
            Ok(f) => format!("n:{f}"),
            Err(_) => match permafrost::plan::window::parse_instant(s) {
                Some(t) if s.contains('T') || s.contains(' ') => format!("t:{t}"),
                _ => format!("s:{s}"),
            },
        },
        other => other.to_string(),
    }
}

#[cfg(feature = "query")]
fn canonical_rows(rows: &[Value]) -> Vec<std::collections::BTreeMap<String, String>> {
    rows.iter()
        .map(|r| {
            r.as_object()
                .expect("row object")
                .iter()
                .map(|(k, v)| (k.clone(), canonical(v)))
                .collect()
        })
        .collect()
}

/// `query` equals the same SQL run on Postgres before archiving, reads only
/// the files of the days it filters on, and time-travels with `--as-of`.
#[cfg(feature = "query")]
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn query_matches_postgres_prunes_files_and_time_travels() {
    let s = services!();
    let fx = fixture(&s, "query").await;
    let c = fx.db.client().await;
    let (day1, day2) = (rfc3339(fx.day0 + DAY), rfc3339(fx.day0 + 2 * DAY));
    let grouped = "SELECT sensor_id, count(*) AS n, sum(id) AS ids, max(value) AS vmax, \
                   min(recorded_at) AS first, sum(quality) AS q FROM {T} \
                   GROUP BY sensor_id ORDER BY sensor_id"
        .to_string();
    let filtered = format!(
        "SELECT id, recorded_at, sensor_name, value, quality FROM {{T}} \
         WHERE sensor_id = 3 AND value > 10 AND recorded_at >= '{day1}' AND recorded_at < '{day2}' \
         ORDER BY id"
    );
    let mut expected = vec![];
    for sql in [&grouped, &filtered] {
        let pg_sql = format!(
            "SELECT row_to_json(pf_q) FROM ({}) pf_q",
            sql.replace("{T}", "before_rows")
        );
        let rows: Vec<Value> = c
            .query(pg_sql.as_str(), &[])
            .await
            .expect("postgres query")
            .iter()
            .map(|r| r.get::<_, Value>(0))
            .collect();
        assert!(!rows.is_empty(), "{pg_sql} returns rows");
        expected.push(canonical_rows(&rows));
    }
    for days in 1..=3 {
        fx.archive_until(days);
    }
    let left: i64 = c
        .query_one("SELECT count(*) FROM sensor_readings", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "every row archived and deleted from Postgres");

    for (sql, want) in [&grouped, &filtered].into_iter().zip(&expected) {
        let sql = sql.replace("{T}", "archive.sensor_readings");
        let out = fx.run(&["query", &sql, "--format", "json"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let got = out.json();
        let got = canonical_rows(got.as_array().expect("json array"));
        assert_eq!(&got, want, "{sql}");
    }

    // A one-day query plans, and reads, only that day's file.
    let one_day = format!(
        "SELECT count(*) AS n FROM archive.sensor_readings \
         WHERE recorded_at >= '{day1}' AND recorded_at < '{day2}'"
    );
    let scans = fx.run(&["query", &one_day, "--explain", "--json"]).json();
    assert_eq!(scans.as_array().map(Vec::len), Some(1), "{scans}");
    assert_eq!(scans[0]["files"], 1, "{scans}");
    assert!(
        scans[0]["predicate"]
            .as_str()
            .is_some_and(|p| p.contains("recorded_at")),
        "time filter pushed down: {scans}"
    );
    let all = fx
        .run(&[
            "query",
            "SELECT count(*) FROM sensor_readings",
            "--explain",
            "--json",
        ])
        .json();
    assert_eq!(all[0]["files"], 3, "{all}");
    let out = fx.run(&["query", &one_day, "--format", "csv"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "n\n300\n");
    assert!(
        out.stderr.contains("1 scan(s) read 1 data file(s)"),
        "{}",
        out.stderr
    );

    // --as-of between the first and second commit: the first day only.
    let snaps = fx
        .run(&["snapshots", "-t", "sensor_readings", "--json"])
        .json();
    let t2 = micros(snaps[1]["committed_at"].as_str().expect("t2"));
    let between = rfc3339(t2 - 1000);
    let out = fx.run(&[
        "query",
        "SELECT count(*) AS n, min(recorded_at) AS lo FROM archive.sensor_readings",
        "--as-of",
        &between,
        "--format",
        "jsonl",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let row: Value = serde_json::from_str(out.stdout.trim()).expect("jsonl");
    assert_eq!(row["n"], 300, "{row}");
    assert_eq!(
        micros(row["lo"].as_str().expect("lo")),
        fx.day0,
        "as of the first commit"
    );

    // The default text table, and a clear error for an unknown table.
    let out = fx.run(&[
        "query",
        "SELECT sensor_id, count(*) AS n FROM sensor_readings GROUP BY sensor_id ORDER BY sensor_id",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("| sensor_id | n   |"), "{}", out.stdout);
    assert!(out.stdout.contains("| 4         | 180 |"), "{}", out.stdout);
    let bad = fx.run(&["query", "SELECT * FROM archive.nope"]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("nope"), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("hint: tables: archive.sensor_readings"),
        "{}",
        bad.stderr
    );
}
