//! Schema evolution across runs: add, drop, rename, widen and relax columns;
//! stable field ids; old snapshots readable with their own schema.

use serde_json::{Value, json};

use crate::common::*;
use crate::services;

fn field<'a>(schema: &'a Value, name: &str) -> &'a Value {
    schema
        .as_array()
        .and_then(|a| a.iter().find(|f| f["name"] == name))
        .unwrap_or(&Value::Null)
}

/// A workspace, a `kind` catalog and a config archiving `db`'s `readings`
/// (time column `ts`, lag 1 day).
async fn readings_config(s: &Services, db: &TestDb, kind: Cat) -> (Ws, CatalogSetup, String) {
    let ws = Ws::new();
    let cat = CatalogSetup::new(kind, s, &ws).await;
    let cfg = ws
        .config(
            "permafrost.yaml",
            &format!(
                "database:\n  dsn: \"{}\"\n{}global:\n  namespace: {}\ntables:\n  - name: readings\n    timestamp_column: ts\n    lag: 1d\n",
                db.dsn, cat.yaml, cat.namespace
            ),
        )
        .to_string_lossy()
        .to_string();
    (ws, cat, cfg)
}

async fn evolve_across_runs(kind: Cat) {
    let s = services!();
    let db = TestDb::create(&s, "evolve").await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE readings (id bigint PRIMARY KEY, ts timestamptz NOT NULL, sensor_id integer NOT NULL, \
           name varchar(16) NOT NULL, v real, q numeric(5,2), note text, unit text NOT NULL); \
         INSERT INTO readings SELECT i, date_trunc('day', now()) - interval '10 days' + i * interval '1 minute', \
           i, 'sensor-' || i, i / 4.0, i / 100.0, 'n' || i, 'c' FROM generate_series(1, 20) i;",
    )
    .await
    .expect("table");
    let (ws, cat, cfg) = readings_config(&s, &db, kind).await;
    let env = CatalogSetup::env(&s);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = ws.run_env(&["archive", "-c", &cfg], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);

    // Between runs: every kind of change a source table goes through.
    c.batch_execute(
        "ALTER TABLE readings ADD COLUMN extra text; \
         ALTER TABLE readings DROP COLUMN note; \
         ALTER TABLE readings RENAME COLUMN name TO label; \
         ALTER TABLE readings ALTER COLUMN sensor_id TYPE bigint; \
         ALTER TABLE readings ALTER COLUMN v TYPE double precision; \
         ALTER TABLE readings ALTER COLUMN label TYPE text; \
         ALTER TABLE readings ALTER COLUMN q TYPE numeric(9,2); \
         ALTER TABLE readings ALTER COLUMN unit DROP NOT NULL; \
         INSERT INTO readings SELECT i, date_trunc('day', now()) - interval '5 days' + i * interval '1 minute', \
           5000000000 + i, 'label-' || i, i / 3.0, 1234567.89, NULL, 'x' || i FROM generate_series(101, 110) i;",
    )
    .await
    .expect("alter");
    let chk = ws.run_env(&["check", "-c", &cfg, "--json"], &env);
    assert_eq!(chk.code, 0, "{}", chk.stderr);
    let state = chk.json()["tables"][0]["iceberg_state"]
        .as_str()
        .unwrap_or("")
        .to_string();
    for part in [
        "add column `extra`",
        "drop column `note`",
        "rename `name` to `label`",
        "widen `sensor_id`",
        "widen `v`",
        "widen `q`",
        "make `unit` nullable",
    ] {
        assert!(state.contains(part), "check announces `{part}`: {state}");
    }
    let out = ws.run_env(&["archive", "-c", &cfg, "--json"], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()[0]["batches"][0]["rows"], 10);
    assert!(out.stderr.contains("evolved the schema"), "{}", out.stderr);

    let req = json!({"catalog_name": cat.py_name, "catalog": cat.py_props, "table": format!("{}.readings", cat.namespace),
                     "key_column": "id", "snapshots": true, "duckdb": false});
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("req.json");
    std::fs::write(&p, req.to_string()).expect("write");
    let script = crate::common::source_dir().join("tests/py/values.py");
    let py = std::process::Command::new(&s.python)
        .arg(script)
        .arg(&p)
        .output()
        .expect("python");
    assert!(
        py.status.success(),
        "values.py: {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let r: Value = serde_json::from_slice(&py.stdout).expect("json");

    // Current schema: ids kept for renamed and widened columns, new id for the added one.
    let snaps = r["snapshots"].as_array().expect("snapshots");
    assert_eq!(snaps.len(), 2);
    let old = &snaps[0]["schema"];
    let cur = &r["schema"];
    assert_eq!(
        field(cur, "label")["id"],
        field(old, "name")["id"],
        "rename keeps the field id"
    );
    assert_eq!(field(cur, "sensor_id")["type"], "long");
    assert_eq!(field(cur, "sensor_id")["id"], field(old, "sensor_id")["id"]);
    assert_eq!(field(cur, "v")["type"], "double");
    assert_eq!(field(cur, "q")["type"], "decimal(9, 2)");
    assert_eq!(field(cur, "unit")["required"], false);
    assert!(
        field(cur, "note").is_null(),
        "dropped from the current schema"
    );
    assert!(
        field(cur, "extra")["id"].as_i64() > old.as_array().map(|a| a.len() as i64),
        "a new id for a new column"
    );
    assert_eq!(snaps[0]["schema_id"], 0);
    assert_eq!(
        snaps[1]["schema_id"], 1,
        "the second snapshot was written with the evolved schema"
    );

    // Old rows under the current schema; new rows as written.
    let rows = &r["pyiceberg"];
    assert_eq!(rows.as_object().map(|o| o.len()), Some(30));
    assert_eq!(
        rows["1"]["label"], "sensor-1",
        "renamed column keeps its data"
    );
    assert_eq!(rows["1"]["extra"], Value::Null);
    assert_eq!(rows["1"]["sensor_id"], 1);
    assert_eq!(rows["1"]["v"], 0.25);
    assert_eq!(rows["1"]["q"], "0.01");
    assert!(rows["1"].get("note").is_none());
    assert_eq!(rows["101"]["sensor_id"], 5000000101i64);
    assert_eq!(rows["101"]["q"], "1234567.89");
    assert_eq!(rows["101"]["label"], "label-101");
    assert_eq!(rows["101"]["extra"], "x101");
    assert_eq!(rows["101"]["unit"], Value::Null, "now nullable");
    // Time travel: the first snapshot with its own schema, dropped column included.
    let first = &snaps[0]["rows"];
    assert_eq!(first.as_object().map(|o| o.len()), Some(20));
    assert_eq!(first["1"]["note"], "n1");
    assert_eq!(first["1"]["name"], "sensor-1");

    // permafrost reads both windows with the right columns, now and as of the first snapshot.
    let fetch = |extra: &[&str]| {
        let mut a = vec![
            "fetch",
            "-c",
            cfg.as_str(),
            "-t",
            "readings",
            "--from",
            "2000-01-01",
            "--to",
            "2100-01-01",
            "--format",
            "jsonl",
        ];
        a.extend_from_slice(extra);
        let out = ws.run_env(&a, &env);
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.stdout
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("jsonl"))
            .collect::<Vec<_>>()
    };
    let now_rows = fetch(&[]);
    assert_eq!(now_rows.len(), 30);
    let one = now_rows.iter().find(|r| r["id"] == 1).expect("row 1");
    assert_eq!(one["label"], "sensor-1");
    assert!(one.get("note").is_none() && one.get("name").is_none());
    let first_id = snaps[0]["snapshot_id"].to_string();
    let then_rows = fetch(&["--snapshot", &first_id]);
    assert_eq!(
        then_rows.len(),
        20,
        "the first snapshot holds the first window only"
    );
    let one = then_rows.iter().find(|r| r["id"] == 1).expect("row 1");
    assert_eq!(
        one["note"], "n1",
        "read with the first snapshot's own schema"
    );
    assert_eq!(one["name"], "sensor-1");

    // A change Iceberg cannot follow is refused, nothing deleted.
    c.batch_execute(
        "INSERT INTO readings (id, ts, sensor_id, label, unit) VALUES (999, date_trunc('day', now()) - interval '4 days', 1, 'z', 'c'); \
         ALTER TABLE readings ALTER COLUMN v TYPE text",
    )
    .await
    .expect("alter");
    let out = ws.run_env(&["archive", "-c", &cfg], &env);
    assert_ne!(out.code, 0);
    assert!(
        out.error_lines()
            .join("")
            .contains("column `v` changed to text"),
        "{}",
        out.stderr
    );
    assert_eq!(count(&c, "readings", "true").await, 1, "nothing deleted");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn schema_evolves_across_runs_rest_catalog() {
    evolve_across_runs(Cat::Rest).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn schema_evolves_across_runs_sql_catalog() {
    evolve_across_runs(Cat::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn schema_evolves_across_runs_glue_catalog() {
    evolve_across_runs(Cat::Glue).await;
}

/// Runs tests/py/alter.py on `table` with `change` (`add`, `drop`, `rename`).
fn alter(s: &Services, cat: &CatalogSetup, table: &str, change: Value) -> Vec<String> {
    let mut req = json!({"catalog_name": cat.py_name, "catalog": cat.py_props,
                         "table": format!("{}.{table}", cat.namespace)});
    if let (Some(req), Some(change)) = (req.as_object_mut(), change.as_object()) {
        req.extend(change.clone());
    }
    let r = python(s, "alter.py", &req);
    serde_json::from_value(r["columns"].clone()).expect("columns")
}

/// A column another engine added to the archive table (or one of ours it
/// renamed) is not dropped to follow the source: the run refuses in one
/// line, deleting nothing, until the change is undone; then it goes on.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn schema_changes_by_another_engine_are_refused_not_undone() {
    let s = services!();
    let db = TestDb::create(&s, "foreign_schema").await;
    let c = db.client().await;
    let rows = |day: i64| {
        format!(
            "INSERT INTO readings SELECT i, date_trunc('day', now()) - interval '{day} days' + i * interval '1 minute', i / 4.0 \
             FROM generate_series({}, {}) i;",
            day * 100,
            day * 100 + 19
        )
    };
    c.batch_execute(&format!(
        "CREATE TABLE readings (id bigint PRIMARY KEY, ts timestamptz NOT NULL, v real); {}",
        rows(10)
    ))
    .await
    .expect("table");
    let (ws, cat, cfg) = readings_config(&s, &db, Cat::Sqlite).await;
    let env = CatalogSetup::env(&s);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let archive = || ws.run_env(&["archive", "-c", &cfg], &env);
    let out = archive();
    assert_eq!(out.code, 0, "{}", out.stderr);

    let cols = alter(&s, &cat, "readings", json!({"add": "analyst_note"}));
    assert_eq!(cols, ["id", "ts", "v", "analyst_note"]);
    c.batch_execute(&rows(5)).await.expect("rows");
    for cmd in ["check", "archive"] {
        let out = ws.run_env(&[cmd, "-c", &cfg], &env);
        assert_eq!(out.code, 3, "{cmd}: {}\n{}", out.stdout, out.stderr);
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(
            text.contains("field `analyst_note` was not created by permafrost"),
            "{cmd}: {text}"
        );
    }
    assert_eq!(count(&c, "readings", "true").await, 20, "nothing deleted");
    let cols = alter(
        &s,
        &cat,
        "readings",
        json!({"drop": "analyst_note", "rename": ["v", "value"]}),
    );
    assert_eq!(cols, ["id", "ts", "value"]);
    let out = archive();
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("field `value` was not created by permafrost (a rename of `v`?)"),
        "{}",
        out.stderr
    );
    assert_eq!(count(&c, "readings", "true").await, 20, "nothing deleted");

    alter(&s, &cat, "readings", json!({"rename": ["value", "v"]}));
    let out = archive();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(count(&c, "readings", "true").await, 0);
}
