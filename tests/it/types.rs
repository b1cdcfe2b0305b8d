//! Lossless types: a "type zoo" table (tests/sql/type_zoo.sql) archived and
//! read back by PyIceberg and DuckDB, value by value against Postgres' own
//! rendering; and every refused case failing clearly before anything is deleted.

use serde_json::{Value, json};

use crate::common::*;
use crate::services;

/// Postgres' canonical JSON for each zoo column, in the form tests/py/values.py
/// produces from the Arrow values (see its docstring).
fn canonical_sql() -> Vec<(&'static str, String)> {
    let epoch = |e: &str| epoch_us_sql(e);
    let arr = |c: &str, elem: &str| {
        format!(
            "CASE WHEN {c} IS NULL THEN NULL ELSE coalesce((SELECT json_agg({elem} ORDER BY i) FROM generate_subscripts({c}, 1) AS i), '[]'::json) END"
        )
    };
    let comp = |e: &str| {
        format!(
            "CASE WHEN ({e})::text IS NULL THEN NULL ELSE json_build_object('x', to_json(({e}).x), 'tag', ({e}).tag, 'at', {}, 'vals', to_json(({e}).vals)) END",
            epoch(&format!("({e}).at"))
        )
    };
    let mut v: Vec<(&'static str, String)> = vec![
        ("id", "to_json(id)".into()),
        ("ts", format!("to_json({})", epoch("ts"))),
        ("c_int2", "to_json(c_int2)".into()),
        ("c_int4", "to_json(c_int4)".into()),
        ("c_int8", "to_json(c_int8)".into()),
        ("c_oid", "to_json(c_oid::int8)".into()),
        ("c_float4", "to_json(c_float4::float8)".into()),
        ("c_float8", "to_json(c_float8)".into()),
        ("c_money", "to_json(c_money::numeric::text)".into()),
        ("c_bool", "to_json(c_bool)".into()),
        ("c_char", "to_json(c_char)".into()),
        ("c_bytea", "to_json(encode(c_bytea, 'hex'))".into()),
        ("c_uuid", "to_json(replace(c_uuid::text, '-', ''))".into()),
        ("c_date", "to_json(c_date - date '1970-01-01')".into()),
        (
            "c_time",
            "to_json((extract(epoch FROM c_time) * 1000000)::int8)".into(),
        ),
        ("c_ts", format!("to_json({})", epoch("c_ts"))),
        ("c_tstz", format!("to_json({})", epoch("c_tstz"))),
        (
            "c_interval",
            "CASE WHEN c_interval IS NULL THEN NULL ELSE json_build_object(\
             'months', (extract(year FROM c_interval) * 12 + extract(month FROM c_interval))::int, \
             'days', extract(day FROM c_interval)::int, \
             'microseconds', (extract(hour FROM c_interval) * 3600000000 + extract(minute FROM c_interval) * 60000000 \
                              + extract(microseconds FROM c_interval))::int8) END"
                .into(),
        ),
        ("c_domain", "to_json(c_domain)".into()),
        ("c_int_arr", arr("c_int_arr", "to_json(c_int_arr[i])")),
        ("c_text_arr", arr("c_text_arr", "to_json(c_text_arr[i])")),
        ("c_num_arr", arr("c_num_arr", "to_json(c_num_arr[i]::text)")),
        ("c_tstz_arr", arr("c_tstz_arr", &format!("to_json({})", epoch("c_tstz_arr[i]")))),
        ("c_inet_arr", arr("c_inet_arr", "to_json(c_inet_arr[i]::text)")),
        ("c_comp", comp("c_comp")),
        ("c_comp_arr", arr("c_comp_arr", &comp("c_comp_arr[i]"))),
    ];
    // Values stored as text or as exact decimals: Postgres' text output.
    for c in [
        "c_num",
        "c_num38",
        "c_numfree",
        "c_num50",
        "c_text",
        "c_varchar",
        "c_name",
        "c_qchar",
        "c_citext",
        "c_enum",
        "c_timetz",
        "c_json",
        "c_jsonb",
        "c_inet",
        "c_cidr",
        "c_macaddr",
        "c_macaddr8",
        "c_bit",
        "c_varbit",
        "c_dtext",
        "c_xml",
    ] {
        v.push((c, format!("to_json({c}::text)")));
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn type_zoo_round_trips_value_by_value() {
    let s = services!();
    let db = TestDb::create(&s, "zoo").await;
    let c = db.client().await;
    c.batch_execute(&type_zoo_sql(&c).await).await.expect("zoo");
    c.batch_execute("CREATE TABLE zoo_before AS SELECT * FROM zoo")
        .await
        .expect("copy");
    let cols = canonical_sql();
    let sql = format!(
        "SELECT id::text, json_build_object({})::text FROM zoo_before ORDER BY id",
        cols.iter()
            .map(|(n, e)| format!("'{n}', {e}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut want = std::collections::BTreeMap::new();
    for r in c.query(sql.as_str(), &[]).await.expect("canonical values") {
        want.insert(
            r.get::<_, String>(0),
            serde_json::from_str::<Value>(r.get::<_, &str>(1)).expect("json"),
        );
    }
    assert_eq!(want.len(), 4);

    let ws = Ws::new();
    let cat = CatalogSetup::new(Cat::Sqlite, &s, &ws).await;
    let cfg = ws.config(
        "permafrost.yaml",
        &format!(
            "database:\n  dsn: \"{}\"\n{}global:\n  namespace: {}\ntables:\n  - name: zoo\n    timestamp_column: ts\n    lag: 1d\n",
            db.dsn, cat.yaml, cat.namespace
        ),
    );
    let cfg = cfg.to_string_lossy().to_string();
    // check --json lists every column with its mapping.
    let chk = ws.run(&["check", "-c", &cfg, "--json"]);
    assert_eq!(chk.code, 0, "{}\n{}", chk.stdout, chk.stderr);
    let chk = chk.json();
    let mapped: Vec<(String, String, String)> = chk["tables"][0]["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or("").to_string(),
                c["iceberg_type"].as_str().unwrap_or("").to_string(),
                c["encoding"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let find = |n: &str| {
        mapped
            .iter()
            .find(|m| m.0 == n)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        find("c_num"),
        ("c_num".into(), "decimal(12,3)".into(), "binary".into())
    );
    assert_eq!(find("c_numfree").1, "string");
    assert_eq!(find("c_numfree").2, "text");
    assert_eq!(
        find("c_interval").1,
        "struct<months: int, days: int, microseconds: long>"
    );
    assert_eq!(
        find("c_comp_arr").1,
        "list<struct<x: double, tag: string, at: timestamptz, vals: list<int>>>"
    );
    assert_eq!(find("c_inet_arr").2, "text");
    assert_eq!(find("c_inet_arr").1, "list<string>");
    assert_eq!(find("c_uuid").1, "uuid");
    assert_eq!(mapped.len(), cols.len(), "every column is listed");

    let out = ws.run(&["archive", "-c", &cfg, "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()[0]["batches"][0]["rows"], 4);
    assert_eq!(count(&c, "zoo", "true").await, 0);

    let req = json!({"catalog_name": cat.py_name, "catalog": cat.py_props, "table": format!("{}.zoo", cat.namespace), "key_column": "id"});
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
    let mut got: Value = serde_json::from_slice(&py.stdout).expect("json");
    // permafrost's own reader: `fetch --format parquet`, read back by pyarrow.
    let pq = ws.path().join("zoo.parquet");
    let f = ws.run(&[
        "fetch",
        "-c",
        &cfg,
        "-t",
        "zoo",
        "--from",
        "2000-01-01",
        "--to",
        "2100-01-01",
        "--format",
        "parquet",
        "-o",
        &pq.to_string_lossy(),
    ]);
    assert_eq!(f.code, 0, "{}", f.stderr);
    std::fs::write(
        &p,
        json!({"parquet_file": pq, "key_column": "id"}).to_string(),
    )
    .expect("write");
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
    let mine: Value = serde_json::from_slice(&py.stdout).expect("json");
    got["permafrost"] = mine["parquet"].clone();
    let mut compared = 0;
    for reader in ["permafrost", "pyiceberg", "duckdb"] {
        for (id, row) in &want {
            let r = &got[reader][id];
            assert!(r.is_object(), "{reader}: row {id} missing");
            for (name, _) in &cols {
                let mut g = r[name].clone();
                if *name == "c_uuid"
                    && let Some(u) = g.as_str()
                {
                    g = Value::String(u.replace('-', ""));
                }
                let w = &row[name];
                // PyIceberg 0.12 rebuilds a NULL list<struct<…>> as [] on read
                // (apache/iceberg-python#3833, open); the file holds NULL, as
                // DuckDB (compared exactly) shows.
                let known_pyiceberg_bug =
                    reader == "pyiceberg" && *name == "c_comp_arr" && w.is_null() && g == json!([]);
                assert!(
                    json_eq(&g, w) || known_pyiceberg_bug,
                    "{reader}: row {id}, column {name}:\n got {g}\nwant {w}"
                );
                compared += 1;
            }
        }
    }
    eprintln!("type zoo: {compared} values compared");
}

/// Values (or types) a mapping cannot hold: refused with table, column, type
/// and value named, before anything is deleted.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn refused_values_and_types_fail_before_any_delete() {
    let s = services!();
    let db = TestDb::create(&s, "refuse").await;
    let c = db.client().await;
    // (table, column type, bad value, message part, type as Postgres names it)
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        (
            "t_time",
            "time",
            "'24:00:00'",
            "value 24:00:00",
            "time without time zone",
        ),
        (
            "t_ts",
            "timestamp",
            "'infinity'",
            "value infinity",
            "timestamp without time zone",
        ),
        ("t_date", "date", "'-infinity'", "value -infinity", "date"),
        (
            "t_num",
            "numeric(10,2)",
            "'NaN'",
            "value NaN",
            "numeric(10,2)",
        ),
        (
            "t_arr2",
            "integer[]",
            "'{{1,2},{3,4}}'",
            "2-dimensional array",
            "integer[]",
        ),
        (
            "t_lower",
            "integer[]",
            "'[0:1]={1,2}'",
            "lower bound 0",
            "integer[]",
        ),
        (
            "t_point",
            "point",
            "'(1,2)'",
            "type point has no lossless Iceberg mapping",
            "point",
        ),
    ];
    let ws = Ws::new();
    let cat = CatalogSetup::new(Cat::Sqlite, &s, &ws).await;
    for (table, ty, value, needle, label) in cases {
        c.batch_execute(&format!(
            "CREATE TABLE {table} (ts timestamptz NOT NULL, v {ty}); \
             INSERT INTO {table} VALUES (now() - interval '3 days', NULL), (now() - interval '3 days', {value});"
        ))
        .await
        .expect("table");
        let cfg = ws.config(
            &format!("{table}.yaml"),
            &format!(
                "database:\n  dsn: \"{}\"\n{}global:\n  namespace: {}\ntables:\n  - name: {table}\n    timestamp_column: ts\n    lag: 1d\n",
                db.dsn, cat.yaml, cat.namespace
            ),
        );
        let cfg = cfg.to_string_lossy().to_string();
        let out = ws.run(&["archive", "-c", &cfg]);
        assert_ne!(out.code, 0, "{table}: refused");
        let err = out.error_lines().join("\n");
        assert!(
            err.contains(needle),
            "{table}: error names the value: {err}"
        );
        assert!(err.contains(table), "{table}: error names the table: {err}");
        assert!(
            err.contains("`v`"),
            "{table}: error names the column: {err}"
        );
        assert!(
            err.contains(&format!("`v` ({label})")),
            "{table}: error names the type: {err}"
        );
        assert_eq!(
            count(&c, table, "true").await,
            2,
            "{table}: nothing deleted"
        );
        if *ty == "point" {
            let chk = ws.run(&["check", "-c", &cfg]);
            assert_ne!(chk.code, 0, "check refuses the type");
            assert!(chk.error_lines().join("").contains(needle));
        }
    }
    // The policy's escape hatch: the text form keeps what a list cannot.
    let cfg = ws.config(
        "t_arr2_text.yaml",
        &format!(
            "database:\n  dsn: \"{}\"\n{}global:\n  namespace: {}\ntables:\n  - name: t_arr2\n    timestamp_column: ts\n    lag: 1d\n    text_columns: [v]\n",
            db.dsn, cat.yaml, cat.namespace
        ),
    );
    let out = ws.run(&["archive", "-c", &cfg.to_string_lossy()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(count(&c, "t_arr2", "true").await, 0);
}
