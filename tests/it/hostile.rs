//! Hostile inputs: odd time column names, every value a timestamp column can
//! hold (NULL, ±infinity, BC, the extremes), tables locked by other sessions,
//! rows a foreign key holds, out-of-range config values.  Each is archived as documented or refused up
//! front; nothing hangs, nothing gets stuck, one failure prints one message.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::common::*;
use crate::services;

/// A source table with an `id` key, a time column and a value.
struct Source {
    table: String,
    time: String,
    /// `timestamptz` or `timestamp`.
    kind: &'static str,
    partition_by: &'static str,
}

impl Source {
    /// A `timestamptz` column `ts`, archived by day.
    fn daily(table: &str) -> Self {
        Source {
            table: table.into(),
            time: "ts".into(),
            kind: "timestamptz",
            partition_by: "day",
        }
    }

    /// Creates the table with `n` rows a day apart, row 0 from 11 days ago
    /// (ids count the days back).
    async fn create_days(&self, c: &Client, n: i32) {
        let days: Vec<String> = (11..11 + n)
            .map(|d| format!("now() - interval '{d} days'"))
            .collect();
        self.create(c, &days).await;
    }

    fn quoted_time(&self) -> String {
        format!("\"{}\"", self.time.replace('"', "\"\""))
    }

    /// Creates the table and inserts one row per SQL literal (`NULL` allowed).
    async fn create(&self, c: &Client, literals: &[String]) {
        c.batch_execute(&format!(
            "SET TimeZone = 'UTC'; CREATE TABLE {} (id bigint PRIMARY KEY, {} {}, v int)",
            self.table,
            self.quoted_time(),
            self.kind
        ))
        .await
        .expect("create table");
        for (i, lit) in literals.iter().enumerate() {
            let sql = format!(
                "INSERT INTO {} VALUES ({i}, ({lit})::{}, {i})",
                self.table, self.kind
            );
            c.batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    /// Every row: id → time in µs since the epoch (None: NULL, infinite, or
    /// past year 200000, which no cutoff reaches), as Postgres computes it.
    async fn times(&self, c: &Client) -> BTreeMap<i64, Option<i64>> {
        let col = self.quoted_time();
        let sql = format!(
            "SELECT id, CASE WHEN isfinite({col}) AND {col} < '200000-01-01' THEN {} END FROM {}",
            epoch_us_sql(&col),
            self.table
        );
        c.query(&sql, &[])
            .await
            .expect("times")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    fn yaml(&self) -> String {
        format!(
            "  - name: {}\n    timestamp_column: {}\n    partition_by: {}\n    lag: 1d\n",
            self.table,
            serde_json::to_string(&self.time).expect("json"),
            self.partition_by
        )
    }
}

fn config(db: &TestDb, cat: &CatalogSetup, tables: &[&Source], extra_db: &str) -> String {
    let mut y = format!(
        "database:\n  dsn: \"{}\"\n{extra_db}{}global:\n  namespace: {}\ntables:\n",
        db.dsn, cat.yaml, cat.namespace
    );
    for t in tables {
        y.push_str(&t.yaml());
    }
    y
}

/// The ids `fetch` reads back from the archive of `table`, in order.
fn fetched_ids(ws: &Ws, cfg: &str, table: &str) -> Vec<i64> {
    let all = ("2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z");
    ws.fetched_ids(cfg, table, all, &[])
}

/// PyIceberg's and DuckDB's view of each table: id → time µs, and the spec.
fn read_back(s: &Services, cat: &CatalogSetup, tables: &[&Source]) -> Value {
    let req: Vec<Value> = tables
        .iter()
        .map(|t| json!({"table": format!("{}.{}", cat.namespace, t.table), "key": "id", "time": t.time}))
        .collect();
    python(
        s,
        "rows.py",
        &json!({"catalog_name": cat.py_name, "catalog": cat.py_props, "tables": req}),
    )
}

/// Archives `tables` and asserts the outcome row by row: every finite time
/// before the cutoff is in the archive exactly as Postgres held it (read by
/// PyIceberg and DuckDB) and gone from Postgres; every other row stays.
async fn archive_and_reconcile(
    s: &Services,
    db: &TestDb,
    cat: &CatalogSetup,
    ws: &Ws,
    tables: &[&Source],
) {
    let c = db.client().await;
    let mut before = Vec::new();
    for t in tables {
        before.push(t.times(&c).await);
    }
    let cfg = ws.config("permafrost.yaml", &config(db, cat, tables, ""));
    let cfg = cfg.to_string_lossy().to_string();
    let out = ws.run_env(&["archive", "-c", &cfg, "--json"], &[]);
    assert_eq!(
        out.code, 0,
        "archive failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    let report = out.json();
    let back = read_back(s, cat, tables);
    for (i, t) in tables.iter().enumerate() {
        let cutoff = report[i]["cutoff"].as_str().expect("cutoff");
        let cutoff = permafrost::plan::window::parse_instant(cutoff).expect("cutoff instant");
        let want: BTreeMap<String, Value> = before[i]
            .iter()
            .filter_map(|(id, us)| {
                us.filter(|u| *u < cutoff)
                    .map(|u| (id.to_string(), json!(u)))
            })
            .collect();
        let name = format!("{}.{}", cat.namespace, t.table);
        for reader in ["pyiceberg", "duckdb"] {
            let got: BTreeMap<String, Value> = back[&name][reader]
                .as_object()
                .map(|m| m.clone().into_iter().collect())
                .unwrap_or_default();
            assert_eq!(
                got, want,
                "{reader} reads {name} (time column {:?})",
                t.time
            );
        }
        for f in back[&name]["spec"].as_array().expect("spec") {
            let f = f.as_str().unwrap_or("");
            assert!(
                permafrost::lake::layout::is_avro_name(f),
                "partition field {f:?}"
            );
        }
        let left: Vec<i64> = t.times(&c).await.into_keys().collect();
        let want_left: Vec<i64> = before[i]
            .iter()
            .filter(|(_, us)| !us.is_some_and(|u| u < cutoff))
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(left, want_left, "rows left in Postgres for {:?}", t.time);
    }
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn odd_time_column_names_archive_and_read_everywhere() {
    let s = services!();
    let db = TestDb::create(&s, "oddnames").await;
    let ws = Ws::new();
    let cat = CatalogSetup::new(Cat::Sqlite, &s, &ws).await;
    let c = db.client().await;
    let rows: Vec<String> = [45, 44, 1]
        .iter()
        .map(|d| format!("(now() - interval '{d} days')"))
        .collect();
    let names = ["Recorded At", "Zeït", "ts-1", "1st time", "select"];
    let mut sources = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let src = Source {
            table: format!("odd{i}"),
            time: n.to_string(),
            kind: "timestamptz",
            partition_by: "day",
        };
        src.create(&c, &rows).await;
        sources.push(src);
    }
    // A column already named like the partition field: the field takes another name.
    c.batch_execute("ALTER TABLE odd4 ADD COLUMN select_day int")
        .await
        .expect("alter");
    let all: Vec<&Source> = sources.iter().collect();
    let cfg = ws.config("check.yaml", &config(&db, &cat, &all, ""));
    let check = ws.run(&["check", "-c", &cfg.to_string_lossy(), "--json"]);
    assert_eq!(check.code, 0, "{}\n{}", check.stdout, check.stderr);
    archive_and_reconcile(&s, &db, &cat, &ws, &all).await;
    let back = read_back(&s, &cat, &all);
    let spec = |i: usize| back[format!("{}.odd{i}", cat.namespace)]["spec"][0].clone();
    assert_eq!(spec(0), "Recorded_x20At_day");
    assert_eq!(spec(1), "Ze_xEFt_day");
    assert_eq!(spec(2), "ts_x2D1_day");
    assert_eq!(spec(3), "_1st_x20time_day");
    assert_eq!(spec(4), "select_day_2");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_table_stuck_by_an_unreadable_partition_name_is_repaired_by_archive() {
    let s = services!();
    let db = TestDb::create(&s, "stuck").await;
    let ws = Ws::new();
    let cat = CatalogSetup::new(Cat::Sqlite, &s, &ws).await;
    let c = db.client().await;
    let src = Source {
        table: "stuck".into(),
        time: "Recorded At".into(),
        kind: "timestamptz",
        partition_by: "day",
    };
    let rows: Vec<String> = [40, 39, 38, 0]
        .iter()
        .map(|d| format!("(now() - interval '{d} days')"))
        .collect();
    src.create(&c, &rows).await;
    let cfg = ws.config("permafrost.yaml", &config(&db, &cat, &[&src], ""));
    let cfg = cfg.to_string_lossy().to_string();
    // The old behaviour: a snapshot whose manifest nobody can read.
    let old = ws.run_env(
        &["archive", "-c", &cfg],
        &[("PERMAFROST_FAULT", "legacy-partition-name")],
    );
    assert_ne!(old.code, 0, "{}\n{}", old.stdout, old.stderr);
    assert_eq!(count(&c, "stuck", "true").await, 4, "nothing deleted");
    for cmd in ["status", "list", "check"] {
        let out = ws.run(&[cmd, "-c", &cfg]);
        assert_ne!(out.code, 0, "{cmd}: {}\n{}", out.stdout, out.stderr);
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(text.contains("not a valid Avro name"), "{cmd}: {text}");
        assert!(
            text.contains("run `permafrost archive -t public.stuck`"),
            "{cmd}: {text}"
        );
    }
    let fixed = ws.run(&["archive", "-c", &cfg]);
    assert_eq!(fixed.code, 0, "{}\n{}", fixed.stdout, fixed.stderr);
    assert!(
        fixed.stderr.contains("replacing Iceberg table"),
        "{}",
        fixed.stderr
    );
    assert_eq!(
        count(&c, "stuck", "true").await,
        1,
        "only the recent row stays"
    );
    let back = read_back(&s, &cat, &[&src]);
    let t = &back[format!("{}.stuck", cat.namespace)];
    assert_eq!(t["spec"][0], "Recorded_x20At_day");
    assert_eq!(t["pyiceberg"].as_object().map(|m| m.len()), Some(3));
    let status = ws.run(&["status", "-c", &cfg, "--json"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert_eq!(status.json()[0]["rows_archived"], 3);
}

/// Rows at every edge of the timestamp types, for both types.
fn edge_literals() -> Vec<String> {
    [
        "now() - interval '40 days'",
        "'-infinity'",
        "'infinity'",
        "NULL",
        "'4714-11-24 00:00:00 BC'",
        "'0001-01-01 00:00:00 BC'",
        "'0044-03-15 12:00:00.000001 BC'",
        "'0001-01-01 00:00:00'",
        "'1969-12-31 23:59:59.999999'",
        "'9999-12-31 23:59:59.999999'",
        "'294276-12-31 23:59:59.999999'",
        "now()",
        // A µs before midnight, far from 1970: PostgreSQL 12 and 13's float8
        // `extract` rounds it into the next day.
        "'1500-06-01 23:59:59.999999'",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn infinite_bc_and_extreme_times_are_archived_or_left_as_documented() {
    let s = services!();
    let db = TestDb::create(&s, "edges").await;
    let ws = Ws::new();
    let cat = CatalogSetup::new(Cat::Sqlite, &s, &ws).await;
    let c = db.client().await;
    let tz = Source {
        table: "edges_tz".into(),
        time: "ts".into(),
        kind: "timestamptz",
        partition_by: "day",
    };
    let naive = Source {
        table: "edges_naive".into(),
        time: "ts".into(),
        kind: "timestamp",
        partition_by: "year",
    };
    tz.create(&c, &edge_literals()).await;
    naive.create(&c, &edge_literals()).await;
    let cfg = ws.config("check.yaml", &config(&db, &cat, &[&tz, &naive], ""));
    let cfg = cfg.to_string_lossy().to_string();
    let check = ws.run(&["check", "-c", &cfg, "--json"]);
    assert_eq!(check.code, 0, "{}\n{}", check.stdout, check.stderr);
    let warnings = check.json()["tables"][0]["warnings"].to_string();
    assert!(
        warnings.contains("2 row(s)") && warnings.contains("infinity"),
        "{warnings}"
    );
    let dry = ws.run(&["archive", "-c", &cfg, "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{}\n{}", dry.stdout, dry.stderr);
    let planned = dry.json()[0]["planned"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    assert_eq!(
        planned, 7,
        "one day window per archivable row: {}",
        dry.stdout
    );
    archive_and_reconcile(&s, &db, &cat, &ws, &[&tz, &naive]).await;
    let status = ws.run(&["status", "-c", &cfg, "--json"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    let st = status.json();
    for t in st.as_array().expect("tables") {
        assert_eq!(t["rows_infinite_time"], 2, "{t}");
        assert_eq!(t["rows_null_time"], 1, "{t}");
        assert_eq!(t["rows_pending"], 0, "{t}");
    }
    let text = ws.run(&["status", "-c", &cfg]);
    assert!(
        text.stdout
            .contains("public.edges_tz: 2 row(s) have an infinite time"),
        "{}",
        text.stdout
    );
}

/// Rows another table references (a foreign key, `ON DELETE NO ACTION`):
/// Postgres refuses their `DELETE` only after the `COPY` has streamed them,
/// which used to roll the batch's transaction back without a word — the
/// batch reported archived, exit 0, and every later run committed another
/// snapshot settling it again.  Now that batch fails in one line before
/// anything is committed (exit 4), its rows stay, the other windows are
/// archived, a run failing on it again adds no snapshot, and once the
/// reference is gone every row is archived once.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn rows_a_foreign_key_holds_fail_their_batch_in_one_line_and_stay() {
    held_by_a_key("fkheld", "").await;
}

/// The same with a `DEFERRABLE INITIALLY DEFERRED` key, which Postgres
/// checks only at `COMMIT` — after the batch was archived, it used to be:
/// the batch was left unsettled, and every later run archived one more
/// marker snapshot to settle it and failed at `COMMIT` again.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn rows_a_deferred_foreign_key_holds_fail_their_batch_before_the_archive() {
    held_by_a_key("fkdeferred", " DEFERRABLE INITIALLY DEFERRED").await;
}

/// Day 4 of 10 of table `held` is referenced by `refs` through a key
/// declared with `key_options`; see the two tests above.
async fn held_by_a_key(tag: &str, key_options: &str) {
    let s = services!();
    let db = TestDb::create(&s, tag).await;
    let ws = Ws::new();
    let cat = CatalogSetup::new(Cat::Sqlite, &s, &ws).await;
    let c = db.client().await;
    let src = Source::daily("held");
    src.create_days(&c, 10).await;
    // Day 4 of 10 (id 5: days count down from id 0, 11 days ago).
    c.batch_execute(&format!(
        "CREATE TABLE refs (rid bigint REFERENCES held (id){key_options}); \
         INSERT INTO refs VALUES (5)"
    ))
    .await
    .expect("refs");
    let cfg = ws.config("permafrost.yaml", &config(&db, &cat, &[&src], ""));
    let cfg = cfg.to_string_lossy().to_string();
    let snapshots =
        || ws.run(&["status", "-c", &cfg, "--json"]).json()[0]["shape"]["snapshots"].clone();

    let out = ws.run(&["archive", "-c", &cfg]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    let errors = out.error_lines();
    // Named from the catalog (an immediate key's refusal aborts the
    // statement without a reason) or by Postgres (a deferred check's).
    assert!(
        errors.len() == 1
            && errors[0].contains("refused to delete")
            && errors[0].contains("refs_rid_fkey")
            && errors[0].contains("refs")
            && errors[0].contains("its rows stay"),
        "{}",
        out.stderr
    );
    assert_eq!(
        count(&c, "held", "id = 5").await,
        1,
        "the referenced row stays"
    );
    // The windows after its batch go on in the next runs (a failure stops
    // the table's run, with what its other workers finished); then only the
    // held row is left (its window holds no other), and a run that fails on
    // it again commits nothing.
    for _ in 0..10 {
        if count(&c, "held", "true").await == 1 {
            break;
        }
        let out = ws.run(&["archive", "-c", &cfg]);
        assert_eq!(out.code, 4, "{}", out.stderr);
    }
    assert_eq!(count(&c, "held", "true").await, 1, "only the held row left");
    let before = snapshots();
    let out = ws.run(&["archive", "-c", &cfg]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert_eq!(snapshots(), before, "a run failing on it commits nothing");
    assert_eq!(count(&c, "held", "id = 5").await, 1);

    c.batch_execute("DELETE FROM refs").await.expect("unref");
    let out = ws.run(&["archive", "-c", &cfg]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(count(&c, "held", "true").await, 0);
    assert_eq!(
        fetched_ids(&ws, &cfg, "held"),
        (0..10).collect::<Vec<i64>>(),
        "every row archived once"
    );
}

/// `check` names what an archive's DELETE runs into before a run finds it
/// (keys that hold or cascade, triggers, publications: warnings; a rule or
/// a published table without a replica identity: errors), and an archive
/// that meets a rule or the missing identity fails in one line whose hint
/// gives the ways out, nothing deleted.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn check_names_what_an_archives_delete_runs_into() {
    let s = services!();
    let db = TestDb::create(&s, "fxcheck").await;
    let ws = Ws::new();
    let cat = CatalogSetup::new(Cat::Sqlite, &s, &ws).await;
    let c = db.client().await;
    let src = Source::daily("fx");
    src.create_days(&c, 5).await;
    c.batch_execute(
        "CREATE TABLE holds (rid bigint REFERENCES fx (id)); \
         CREATE TABLE follows (rid bigint REFERENCES fx (id) ON DELETE CASCADE); \
         CREATE FUNCTION keep_two() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN IF OLD.id = 2 THEN RETURN NULL; END IF; RETURN OLD; END $$; \
         CREATE TRIGGER keeper BEFORE DELETE ON fx FOR EACH ROW EXECUTE FUNCTION keep_two(); \
         CREATE PUBLICATION fxpub FOR TABLE fx",
    )
    .await
    .expect("set-up");
    let cfg = ws.config("permafrost.yaml", &config(&db, &cat, &[&src], ""));
    let cfg = cfg.to_string_lossy().to_string();

    let out = ws.run(&["check", "-c", &cfg, "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let warnings: Vec<String> = out.json()["tables"][0]["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| w.as_str().unwrap_or_default().to_string())
        .collect();
    let has = |needles: &[&str]| {
        warnings
            .iter()
            .any(|w| needles.iter().all(|n| w.contains(n)))
    };
    assert!(
        has(&["holds", "holds_rid_fkey", "NO ACTION", "fails"]),
        "{warnings:#?}"
    );
    assert!(
        has(&["follows", "follows_rid_fkey", "CASCADE", "does not archive"]),
        "{warnings:#?}"
    );
    assert!(has(&["`keeper`", "skips", "stays"]), "{warnings:#?}");
    assert!(has(&["`fxpub`", "subscribers"]), "{warnings:#?}");

    for (breaks, needle, hint, mends) in [
        (
            "ALTER TABLE fx REPLICA IDENTITY NOTHING",
            "replica identity",
            "REPLICA IDENTITY FULL",
            "ALTER TABLE fx REPLICA IDENTITY DEFAULT",
        ),
        (
            "CREATE RULE kept AS ON DELETE TO fx DO INSTEAD NOTHING",
            "kept",
            "DISABLE RULE",
            "DROP RULE kept ON fx",
        ),
    ] {
        c.batch_execute(breaks).await.expect(breaks);
        let out = ws.run(&["check", "-c", &cfg]);
        assert_eq!(out.code, 3, "{breaks}: {}", out.stderr);
        let errors = out.error_lines();
        assert!(
            errors.len() == 1 && errors[0].contains(needle) && out.has_hint(hint),
            "{breaks}: {}",
            out.stderr
        );
        let out = ws.run(&["archive", "-c", &cfg]);
        assert_eq!(out.code, 4, "{breaks}: {}", out.stderr);
        assert!(
            out.error_lines().len() == 1 && out.has_hint(hint) && out.has_hint("--no-delete"),
            "{breaks}: {}",
            out.stderr
        );
        assert_eq!(
            count(&c, "fx", "true").await,
            5,
            "{breaks}: nothing deleted"
        );
        c.batch_execute(mends).await.expect(mends);
    }
    c.batch_execute("INSERT INTO follows VALUES (1)")
        .await
        .expect("follows");
    // The trigger keeps row 2: it stays in Postgres, pending, and is not
    // archived; the cascade the warning told of deletes `follows`' row.
    for _ in 0..2 {
        let out = ws.run(&["archive", "-c", &cfg]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(count(&c, "fx", "true").await, 1);
        assert_eq!(count(&c, "fx", "id = 2").await, 1);
    }
    assert_eq!(count(&c, "follows", "true").await, 0);
    assert_eq!(
        fetched_ids(&ws, &cfg, "fx"),
        vec![0, 1, 3, 4],
        "archived once, row 2 not"
    );
    let status = ws.run(&["status", "-c", &cfg, "--json"]).json();
    assert_eq!(status[0]["rows_pending"], 1, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_table_locked_by_another_session_fails_within_lock_timeout_naming_it() {
    let s = services!();
    let db = TestDb::create(&s, "locked").await;
    let ws = Ws::new();
    let cat = CatalogSetup::new(Cat::Sqlite, &s, &ws).await;
    let c = db.client().await;
    let src = Source::daily("locked");
    src.create(&c, &["now() - interval '30 days'".to_string()])
        .await;
    let cfg = ws.config(
        "permafrost.yaml",
        &config(&db, &cat, &[&src], "  lock_timeout: 2s\n"),
    );
    let cfg = cfg.to_string_lossy().to_string();
    let holder = db.client().await;
    holder
        .batch_execute(
            "SET application_name = 'the-blocker'; BEGIN; LOCK TABLE locked IN ACCESS EXCLUSIVE MODE",
        )
        .await
        .expect("lock");
    let pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let started = std::time::Instant::now();
    let out = ws.run(&["archive", "-c", &cfg]);
    let took = started.elapsed();
    assert_ne!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    // A bound that proves no hang (2 s lock_timeout plus start-up), not a speed goal.
    assert!(took < std::time::Duration::from_secs(60), "took {took:?}");
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(
        errors[0].contains(&format!("is locked by pid {pid} (the-blocker")),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("AccessExclusiveLock"), "{}", errors[0]);
    assert!(!errors[0].contains("advisory"), "{}", errors[0]);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(
        all.matches("is locked by").count(),
        1,
        "one failure, one message:\n{all}"
    );
    assert!(
        out.stderr.contains("hint:") && out.stderr.contains("lock_timeout"),
        "{}",
        out.stderr
    );
    // A dry run says the same once, and no "would be archived" line.
    let dry = ws.run(&["archive", "-c", &cfg, "--dry-run"]);
    assert_ne!(dry.code, 0, "{}\n{}", dry.stdout, dry.stderr);
    assert_eq!(dry.error_lines().len(), 1, "{}", dry.stderr);
    assert!(!dry.stdout.contains("would be archived"), "{}", dry.stdout);
    // `statement_timeout` firing first (lock_timeout off) names the blocker too,
    // not the advisory lock and not `max_batch_rows`.
    let cfg2 = ws.config(
        "statement.yaml",
        &config(
            &db,
            &cat,
            &[&src],
            "  lock_timeout: 0\n  statement_timeout: 2s\n",
        ),
    );
    let out = ws.run(&["archive", "-c", &cfg2.to_string_lossy()]);
    assert_ne!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(
        errors[0].contains(&format!("is locked by pid {pid}")),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("statement_timeout"), "{}", errors[0]);
    assert!(
        !out.stderr.contains("advisory") && !out.stderr.contains("max_batch_rows"),
        "{}",
        out.stderr
    );
    holder.batch_execute("ROLLBACK").await.expect("unlock");
    assert_eq!(count(&c, "locked", "true").await, 1, "nothing deleted");
    let again = ws.run(&["archive", "-c", &cfg]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(count(&c, "locked", "true").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn out_of_range_config_values_are_refused_naming_the_key() {
    let s = services!();
    let db = TestDb::create(&s, "bounds").await;
    let ws = Ws::new();
    let cat = CatalogSetup::new(Cat::Sqlite, &s, &ws).await;
    let table = "  - name: t\n    timestamp_column: ts\n";
    let base = |db_extra: &str, t_extra: &str| {
        format!(
            "database:\n  dsn: \"{}\"\n{db_extra}{}tables:\n{table}{t_extra}",
            db.dsn, cat.yaml
        )
    };
    let cases = [
        (
            "lag",
            base("", "    lag: 99999999999999d\n"),
            "tables[0].lag",
        ),
        (
            "statement",
            base("  statement_timeout: 30d\n", ""),
            "database.statement_timeout",
        ),
        (
            "lock",
            base("  lock_timeout: 25d\n", ""),
            "database.lock_timeout",
        ),
        (
            "wait",
            base("  lock_wait: 99999d\n", ""),
            "database.lock_wait",
        ),
        (
            "pool",
            base("  pool_size: 100000\n", ""),
            "database.pool_size",
        ),
        (
            "windows",
            base("", "    batch_windows: 1000000\n"),
            "tables[0].batch_windows",
        ),
        (
            "size",
            base("", "    target_file_size: 1TiB\n"),
            "tables[0].target_file_size",
        ),
    ];
    for (name, yaml, key) in cases {
        let cfg = ws.config(&format!("{name}.yaml"), &yaml);
        for cmd in ["check", "status", "archive"] {
            let out = ws.run(&[cmd, "-c", &cfg.to_string_lossy()]);
            assert_eq!(out.code, 2, "{name}/{cmd}: {}\n{}", out.stdout, out.stderr);
            let errors = out.error_lines();
            assert_eq!(errors.len(), 1, "{name}/{cmd}: {}", out.stderr);
            assert!(errors[0].contains(key), "{name}/{cmd}: {}", errors[0]);
        }
    }
}

mod generated {
    //! A property test: generated time column names and values. `check`
    //! either refuses a table with a reason, or archive round-trips it and
    //! PyIceberg and DuckDB read every archived value as Postgres held it.
    //! `PERMAFROST_PROPTEST_CASES` raises the number of cases (default 4).

    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    use super::*;

    fn column_name() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            "[a-z]{1,8}",
            "[A-Z][a-z]{0,6}",
            "[0-9]{1,3}",
            prop::sample::select(vec![
                " ", "-", ".", "\"", "'", "#", "/", "\\", "%", ":", "ï", "時刻", "😀", "select",
                "order", "user", "Zeït",
            ])
            .prop_map(str::to_string),
        ];
        let short = prop::collection::vec(piece, 1..6).prop_map(|v| v.concat());
        let long = "[a-z][a-z _]{54,70}";
        prop_oneof![4 => short, 1 => long]
            .prop_map(|s| truncate(&s, 63))
            .prop_filter("not another column, not blank", |s| {
                !matches!(s.as_str(), "id" | "v") && !s.trim().is_empty()
            })
    }

    /// At most `max` bytes, cut at a character boundary (Postgres would truncate).
    fn truncate(s: &str, max: usize) -> String {
        let mut out = String::new();
        for c in s.chars() {
            if out.len() + c.len_utf8() > max {
                break;
            }
            out.push(c);
        }
        out
    }

    /// A Postgres literal for µs since the epoch (`BC` before year 1).
    fn literal(us: i64) -> String {
        use chrono::Datelike;
        let d = chrono::DateTime::from_timestamp_micros(us).expect("in chrono's range");
        let rest = d.format("%m-%d %H:%M:%S%.6f");
        match d.year() {
            y if y <= 0 => format!("'{:04}-{rest} BC'", 1 - y),
            y => format!("'{y:04}-{rest}'"),
        }
    }

    fn time_value() -> impl Strategy<Value = String> {
        // From Postgres' first instant to a month before the tests run.
        let first = permafrost::source::windows::PG_MIN_MICROS;
        let last = 1_793_491_200_000_000_i64; // 2026-11-01T00:00:00Z
        let recent = 1_700_000_000_000_000_i64;
        prop_oneof![
            3 => (first..last).prop_map(literal),
            2 => (recent..last).prop_map(literal),
            2 => prop::sample::select(vec![
                "'infinity'", "'-infinity'", "NULL", "'4714-11-24 00:00:00 BC'",
                "'294276-12-31 23:59:59.999999'", "'0001-01-01 00:00:00 BC'",
                "'1969-12-31 23:59:59.999999'", "now()", "now() - interval '1 hour'",
            ])
            .prop_map(str::to_string),
        ]
    }

    #[derive(Debug, Clone)]
    struct GenTable {
        time: String,
        kind: &'static str,
        partition_by: &'static str,
        values: Vec<String>,
    }

    fn table() -> impl Strategy<Value = GenTable> {
        (
            column_name(),
            prop::sample::select(vec!["timestamptz", "timestamp"]),
            prop::sample::select(vec!["hour", "day", "month", "year"]),
            prop::collection::vec(time_value(), 1..8),
        )
            .prop_map(|(time, kind, partition_by, values)| GenTable {
                time,
                kind,
                partition_by,
                values,
            })
    }

    async fn one_case(s: &Services, tables: &[GenTable]) {
        let db = TestDb::create(s, "prop").await;
        let ws = Ws::new();
        let cat = CatalogSetup::new(Cat::Sqlite, s, &ws).await;
        let c = db.client().await;
        let mut sources = Vec::new();
        for (i, g) in tables.iter().enumerate() {
            let src = Source {
                table: format!("gen{i}"),
                time: g.time.clone(),
                kind: g.kind,
                partition_by: g.partition_by,
            };
            src.create(&c, &g.values).await;
            sources.push(src);
        }
        let all: Vec<&Source> = sources.iter().collect();
        let cfg = ws.config("check.yaml", &config(&db, &cat, &all, ""));
        let check = ws.run(&["check", "-c", &cfg.to_string_lossy(), "--json"]);
        let report = check.json();
        let mut ok = Vec::new();
        for (i, t) in report["tables"]
            .as_array()
            .expect("tables")
            .iter()
            .enumerate()
        {
            if t["ok"] == true {
                ok.push(&sources[i]);
            } else {
                let errors = t["errors"].as_array().map(Vec::len).unwrap_or(0);
                assert!(errors > 0, "refused without a reason: {t}");
            }
        }
        if !ok.is_empty() {
            archive_and_reconcile(s, &db, &cat, &ws, &ok).await;
        }
    }

    #[test]
    fn generated_names_and_times_are_refused_with_a_reason_or_round_trip() {
        let Some(s) = crate::common::services() else {
            eprintln!("skipped: test services are not configured (run scripts/test)");
            return;
        };
        let cases = std::env::var("PERMAFROST_PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4);
        let mut runner = TestRunner::new(Config {
            cases,
            max_shrink_iters: 16,
            failure_persistence: None,
            ..Config::default()
        });
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let strategy = prop::collection::vec(table(), 2..=3);
        let result = runner.run(&strategy, |tables| {
            eprintln!("case: {tables:?}");
            rt.block_on(one_case(&s, &tables));
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }
}

/// Row-level security that hides rows from the archiving role: every
/// connection runs with `row_security = off` (as pg_dump), so the run fails
/// in one line (exit 4, the policy named as the cause, BYPASSRLS in the
/// hint) instead of archiving and deleting the role's share and reporting
/// the windows done while the hidden rows stay; `check` says so first.
/// With BYPASSRLS the same role archives every row, the hidden ones too.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn row_level_security_is_every_row_or_none() {
    let s = services!();
    let (db, ws, cat, _cfg, now) = crate::modes::small_setup(&s, 3_000).await;
    let c = db.client().await;
    let role = format!("{}_rls", db.name);
    c.batch_execute(&format!(
        "ALTER TABLE sensor_readings ENABLE ROW LEVEL SECURITY; \
         CREATE POLICY even_sensors ON sensor_readings USING (sensor_id % 2 = 0); \
         CREATE ROLE \"{role}\" LOGIN; \
         GRANT SELECT, DELETE ON sensor_readings TO \"{role}\""
    ))
    .await
    .expect("a policy that hides the odd sensors");
    let old = crate::modes::archivable(now);
    let before = count(&c, "sensor_readings", &old).await;
    let hidden = count(
        &c,
        "sensor_readings",
        &format!("{old} AND sensor_id % 2 = 1"),
    )
    .await;
    assert!(hidden > 0 && hidden < before, "{hidden} of {before}");
    let cfg = ws.config(
        "rls.yaml",
        &format!(
            "database:\n  dsn: \"{}\"\n{}global:\n  namespace: {}\ntables:\n\
             \x20 - name: sensor_readings\n    timestamp_column: recorded_at\n    \
             partition_by: day\n    lag: 15d\n",
            db.dsn_as(&role),
            cat.yaml,
            cat.namespace
        ),
    );
    let cfg = cfg.to_string_lossy().to_string();
    let says_why = |text: &str| {
        text.contains("query would be affected by row-level security policy")
            && text.contains("BYPASSRLS")
    };

    let out = ws.run(&["check", "-c", &cfg]);
    assert_ne!(out.code, 0);
    assert!(says_why(&out.stdout), "{}", out.stdout);
    let out = ws.run(&["archive", "-c", &cfg]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(says_why(&out.stderr), "{}", out.stderr);
    assert_eq!(
        count(&c, "sensor_readings", &old).await,
        before,
        "nothing deleted"
    );

    c.batch_execute(&format!("ALTER ROLE \"{role}\" BYPASSRLS"))
        .await
        .expect("bypassrls");
    let out = ws.run(&["archive", "--json", "-c", &cfg]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(archived_rows(&out.json()) as i64, before);
    assert_eq!(count(&c, "sensor_readings", &old).await, 0);
}
