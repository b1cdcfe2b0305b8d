//! Archiving against real services, read back by PyIceberg and DuckDB.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::common::*;
use crate::services;

const DAY_US: i64 = 86_400_000_000;

/// What Postgres held for one table before archiving.
struct Before {
    windows: BTreeMap<String, Vec<Value>>,
    rows: BTreeMap<String, Value>,
    below: i64,
    above: i64,
}

struct Spec<'a> {
    table: &'a str,
    time: &'a str,
    unit: &'a str,
    /// SQL aggregate expressions, and the matching column names for Python.
    sums_sql: &'a [&'a str],
    sums_py: &'a [&'a str],
    key: Option<&'a str>,
    /// `json_build_object(...)` of a full row, in Python's canonical form.
    row_json: &'a str,
}

const SENSOR_ROW: &str = "json_build_object('id', id, 'recorded_at', (extract(epoch FROM recorded_at) * 1000000)::int8, \
     'sensor_id', sensor_id, 'sensor_name', sensor_name, 'value', value, 'unit', unit, \
     'quality', quality::text, 'payload', payload::text)";

fn sensor(table: &'static str, unit: &'static str) -> Spec<'static> {
    Spec {
        table,
        time: "recorded_at",
        unit,
        sums_sql: &["sum(value)", "sum(quality)::text"],
        sums_py: &["value", "quality"],
        key: Some("id"),
        row_json: SENSOR_ROW,
    }
}

fn events() -> Spec<'static> {
    Spec {
        table: "device_events",
        time: "occurred_at",
        unit: "hour",
        sums_sql: &["sum(severity)", "sum(device_id)"],
        sums_py: &["severity", "device_id"],
        key: None,
        row_json: "",
    }
}

async fn before(c: &tokio_postgres::Client, spec: &Spec<'_>, cutoff: i64) -> Before {
    let cut = format!("to_timestamp({}::float8 / 1000000)", cutoff);
    let sql = format!(
        "SELECT (extract(epoch FROM date_trunc('{unit}', {t} AT TIME ZONE 'UTC')) * 1000000)::int8::text, \
         json_build_array(count(*), {sums})::text FROM {tbl} WHERE {t} < {cut} GROUP BY 1",
        unit = spec.unit,
        t = spec.time,
        sums = spec.sums_sql.join(", "),
        tbl = spec.table
    );
    let mut windows = BTreeMap::new();
    for r in c.query(&sql, &[]).await.expect("window aggregates") {
        let v: Value = serde_json::from_str(r.get::<_, &str>(1)).expect("json");
        windows.insert(
            r.get::<_, String>(0),
            v.as_array().cloned().unwrap_or_default(),
        );
    }
    let mut rows = BTreeMap::new();
    if let Some(key) = spec.key {
        let sql = format!(
            "SELECT {key}::text, {}::text FROM {} WHERE {} < {cut} ORDER BY md5({key}::text) LIMIT 60",
            spec.row_json, spec.table, spec.time
        );
        for r in c.query(&sql, &[]).await.expect("sample rows") {
            rows.insert(
                r.get::<_, String>(0),
                serde_json::from_str(r.get::<_, &str>(1)).expect("json"),
            );
        }
    }
    let below = count(c, spec.table, &format!("{} < {cut}", spec.time)).await;
    let above = count(c, spec.table, &format!("{} >= {cut}", spec.time)).await;
    Before {
        windows,
        rows,
        below,
        above,
    }
}

fn close(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => a == b,
    }
}

fn assert_windows(who: &str, got: &Value, want: &BTreeMap<String, Vec<Value>>) {
    let got = got
        .as_object()
        .unwrap_or_else(|| panic!("{who}: no windows"));
    assert_eq!(got.len(), want.len(), "{who}: number of windows");
    for (k, w) in want {
        let g = got
            .get(k)
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("{who}: window {k} missing"));
        assert_eq!(g.len(), w.len(), "{who}: window {k}");
        assert_eq!(g[0].as_i64(), w[0].as_i64(), "{who}: count of window {k}");
        for (x, y) in g.iter().zip(w).skip(1) {
            assert!(close(x, y), "{who}: window {k}: {x} vs {y}");
        }
    }
}

fn check_interop(
    s: &Services,
    cat: &CatalogSetup,
    spec: &Spec<'_>,
    b: &Before,
    prune: Option<(i64, i64, i64)>,
) -> Value {
    let req = json!({
        "catalog_name": cat.py_name,
        "catalog": cat.py_props,
        "table": format!("{}.{}", cat.namespace, spec.table),
        "time_column": spec.time,
        "unit": spec.unit,
        "sum_columns": spec.sums_py,
        "key_column": spec.key,
        "sample_keys": b.rows.keys().filter_map(|k| k.parse::<i64>().ok()).collect::<Vec<_>>(),
        "prune": prune.map(|(lo, hi, _)| vec![rfc3339(lo), rfc3339(hi)]),
        "duckdb_rest": cat.duckdb_rest(s),
    });
    let res = interop(s, &req);
    assert_engine_ready(spec.table, &res["pyiceberg"]["engine"]);
    for who in ["pyiceberg", "duckdb"] {
        let r = &res[who];
        assert_eq!(
            r["count"].as_i64(),
            Some(b.below),
            "{who}: row count of {}",
            spec.table
        );
        assert_windows(who, &r["windows"], &b.windows);
        if spec.key.is_some() {
            let rows = r["rows"].as_object().expect("rows");
            assert_eq!(rows.len(), b.rows.len(), "{who}: sample rows found");
            for (k, want) in &b.rows {
                let got = rows
                    .get(k)
                    .unwrap_or_else(|| panic!("{who}: row {k} missing"));
                assert!(
                    json_eq(got, want),
                    "{who}: row {k}:\n got {got}\nwant {want}"
                );
            }
        }
    }
    let p = &res["pyiceberg"];
    if let Some((_, _, day_rows)) = prune {
        assert_eq!(
            p["pruned_files"].as_i64(),
            Some(1),
            "a one-window scan plans one data file"
        );
        assert_eq!(
            p["pruned_rows"].as_i64(),
            Some(day_rows),
            "rows of the pruned window"
        );
        assert!(
            p["all_files"].as_i64().unwrap_or(0) > 20,
            "the table has many files"
        );
    }
    res
}

/// ≥ 1,000,000 rows over 60 days into one catalog, plus an hourly and a monthly table.
async fn archive_million(kind: Cat) {
    let s = services!();
    let db = TestDb::create(&s, "million").await;
    let c = db.client().await;
    load_sample(&c, 1_050_000).await;
    c.batch_execute(
        "CREATE TABLE readings_m (LIKE sensor_readings INCLUDING ALL); \
         INSERT INTO readings_m SELECT * FROM sensor_readings WHERE id % 7 = 0; ANALYZE;",
    )
    .await
    .expect("monthly table");
    let now = pg_now(&c).await;
    let day_cut = (now - 15 * DAY_US).div_euclid(DAY_US) * DAY_US;
    let hour_cut = (now - 7 * DAY_US).div_euclid(3_600_000_000) * 3_600_000_000;
    let month_cut = {
        let d = chrono::DateTime::from_timestamp_micros(now - 15 * DAY_US)
            .expect("date")
            .date_naive();
        chrono::NaiveDate::from_ymd_opt(chrono::Datelike::year(&d), chrono::Datelike::month(&d), 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .expect("month start")
            .and_utc()
            .timestamp_micros()
    };
    let sensor_spec = sensor("sensor_readings", "day");
    let events_spec = events();
    let monthly_spec = sensor("readings_m", "month");
    let b_sensor = before(&c, &sensor_spec, day_cut).await;
    let b_events = before(&c, &events_spec, hour_cut).await;
    let b_monthly = before(&c, &monthly_spec, month_cut).await;
    assert!(
        b_sensor.below >= 700_000,
        "enough rows to archive: {}",
        b_sensor.below
    );
    assert!(
        b_sensor.windows.len() >= 30,
        "≥ 30 days: {}",
        b_sensor.windows.len()
    );
    // The day to prune on: a full day in the middle.
    let prune_day = day_cut - 20 * DAY_US;
    let prune_rows = count(
        &c,
        "sensor_readings",
        &format!(
            "recorded_at >= to_timestamp({}::float8/1e6) AND recorded_at < to_timestamp({}::float8/1e6)",
            prune_day,
            prune_day + DAY_US
        ),
    )
    .await;

    let ws = Ws::new();
    let cat = CatalogSetup::new(kind, &s, &ws).await;
    let cfg = ws.config(
        "permafrost.yaml",
        &format!(
            "database:\n  dsn: \"{}\"\n{}global:\n  namespace: {}\ntables:\n\
             \x20 - name: sensor_readings\n    timestamp_column: recorded_at\n    partition_by: day\n    lag: 15d\n\
             \x20 - name: device_events\n    timestamp_column: occurred_at\n    partition_by: hour\n    lag: 7d\n\
             \x20 - name: readings_m\n    timestamp_column: recorded_at\n    partition_by: month\n    lag: 15d\n\
             \x20   integer_encoding: delta_binary_packed\n    float_encoding: byte_stream_split\n",
            db.dsn, cat.yaml, cat.namespace
        ),
    );
    let env = CatalogSetup::env(&s);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cfg_s = cfg.to_string_lossy().to_string();
    let now_s = rfc3339(now);
    let out = ws.run_env(&["archive", "-c", &cfg_s, "--json", "--now", &now_s], &env);
    assert_eq!(out.code, 0, "archive failed: {}", out.stderr);
    let report = out.json();
    for t in report.as_array().expect("reports") {
        assert_eq!(t["outcome"]["status"], "done", "{t}");
    }
    let archived: i64 = report[0]["batches"]
        .as_array()
        .expect("batches")
        .iter()
        .map(|b| b["rows"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(
        archived, b_sensor.below,
        "archived row count equals what was below the cutoff"
    );

    // Postgres: every archived window is gone, the rest remains.
    for (spec, b, cut) in [
        (&sensor_spec, &b_sensor, day_cut),
        (&events_spec, &b_events, hour_cut),
        (&monthly_spec, &b_monthly, month_cut),
    ] {
        let cutsql = format!("to_timestamp({cut}::float8 / 1000000)");
        assert_eq!(
            count(&c, spec.table, &format!("{} < {cutsql}", spec.time)).await,
            0,
            "{} below cutoff",
            spec.table
        );
        assert_eq!(
            count(&c, spec.table, &format!("{} >= {cutsql}", spec.time)).await,
            b.above,
            "{} above cutoff",
            spec.table
        );
    }

    // Other Iceberg implementations read the same rows, values and layout.
    let res = check_interop(
        &s,
        &cat,
        &sensor_spec,
        &b_sensor,
        Some((prune_day, prune_day + DAY_US, prune_rows)),
    );
    let p = &res["pyiceberg"];
    // The default encodings: plain, neither delta nor split.
    let enc = &p["engine"]["encodings"];
    for (col, not) in [
        ("recorded_at", "DELTA_BINARY_PACKED"),
        ("value", "BYTE_STREAM_SPLIT"),
    ] {
        assert!(
            enc[col]
                .as_array()
                .is_some_and(|v| v.iter().any(|x| x == "PLAIN") && v.iter().all(|x| x != not)),
            "{col}: {enc}"
        );
    }
    assert_eq!(
        p["spec"],
        json!([{"name": "recorded_at_day", "transform": "day", "source_id": 2}])
    );
    let snaps = p["snapshots"].as_array().expect("snapshots");
    // The default `batch_rows` groups these small days (~17,500 rows
    // each): one snapshot per batch, fewer batches than windows, every
    // batch whole days.
    let batches = report[0]["batches"].as_array().expect("batches");
    assert_eq!(snaps.len(), batches.len(), "one snapshot per batch");
    assert!(
        batches.len() < b_sensor.windows.len() && batches.len() >= 4,
        "{} batches for {} small days",
        batches.len(),
        b_sensor.windows.len()
    );
    for b in batches {
        let span = |k: &str| {
            chrono::DateTime::parse_from_rfc3339(b[k].as_str().unwrap_or_default())
                .map(|t| t.timestamp_micros())
                .expect("window bound")
        };
        assert_eq!(
            (span("window_end") - span("window_start")) % DAY_US,
            0,
            "{b}"
        );
    }
    let last = &p["current_snapshot"]["summary"];
    for k in [
        "permafrost.batch-id",
        "permafrost.source",
        "permafrost.window-start",
        "permafrost.window-end",
        "permafrost.rows",
        "permafrost.checksum",
        "permafrost.version",
    ] {
        assert!(
            last.get(k).is_some(),
            "snapshot property {k} visible to PyIceberg: {last}"
        );
    }
    assert_eq!(
        last["total-records"]
            .as_str()
            .and_then(|v| v.parse::<i64>().ok()),
        Some(b_sensor.below),
        "total-records"
    );
    let summed: i64 = snaps
        .iter()
        .map(|s| {
            s["summary"]["permafrost.rows"]
                .as_str()
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(summed, b_sensor.below);
    assert_eq!(p["properties"]["permafrost.pg-primary-key"], "[\"id\"]");
    assert!(
        p["properties"]["permafrost.pg-columns"]
            .as_str()
            .unwrap_or("")
            .contains("numeric(5,2)")
    );

    let res = check_interop(&s, &cat, &events_spec, &b_events, None);
    assert_eq!(res["pyiceberg"]["spec"][0]["transform"], "hour");
    let res = check_interop(&s, &cat, &monthly_spec, &b_monthly, None);
    assert_eq!(res["pyiceberg"]["spec"][0]["transform"], "month");
    // `integer_encoding: delta_binary_packed`: the time column and the ids
    // (mostly distinct, so without a dictionary) are delta-encoded;
    // `float_encoding: byte_stream_split`: the readings split by byte. Both
    // readers read them back (above); the other columns keep theirs.
    let enc = &res["pyiceberg"]["engine"]["encodings"];
    let has = |col: &str, e: &str| {
        enc[col]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x == e))
    };
    for col in ["recorded_at", "id"] {
        assert!(has(col, "DELTA_BINARY_PACKED"), "{col}: {enc}");
        assert!(!has(col, "PLAIN"), "{col}: {enc}");
    }
    assert!(has("value", "BYTE_STREAM_SPLIT"), "{enc}");
    assert!(!has("value", "PLAIN"), "{enc}");
    assert!(!has("sensor_name", "DELTA_BINARY_PACKED"), "{enc}");

    // Re-running commits nothing new.
    let out = ws.run_env(&["archive", "-c", &cfg_s, "--json", "--now", &now_s], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for t in out.json().as_array().expect("reports") {
        assert_eq!(
            t["batches"].as_array().map(Vec::len),
            Some(0),
            "second run archived nothing: {t}"
        );
    }
    let again = interop(
        &s,
        &json!({"catalog_name": cat.py_name, "catalog": cat.py_props, "table": format!("{}.sensor_readings", cat.namespace),
                "time_column": "recorded_at", "unit": "day", "sum_columns": [], "duckdb": false}),
    );
    assert_eq!(
        again["pyiceberg"]["snapshots"].as_array().map(Vec::len),
        Some(snaps.len()),
        "no new snapshot"
    );

    // status agrees.
    let st = ws
        .run_env(&["status", "-c", &cfg_s, "--json", "--now", &now_s], &env)
        .json();
    assert_eq!(st[0]["windows_pending"], 0);
    assert_eq!(st[0]["rows_archived"].as_i64(), Some(b_sensor.below));
    assert_eq!(
        st[0]["windows_archived"].as_u64(),
        Some(b_sensor.windows.len() as u64)
    );
    assert_eq!(st[0]["rows_recent"].as_i64(), Some(b_sensor.above));
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn million_rows_into_rest_catalog() {
    archive_million(Cat::Rest).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn million_rows_into_sql_catalog_on_sqlite() {
    archive_million(Cat::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn million_rows_into_sql_catalog_on_postgres() {
    archive_million(Cat::Postgres).await;
}
