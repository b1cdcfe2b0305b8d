//! Bad input: one clear error line (plus a hint), a non-zero exit, nothing deleted.

use crate::common::*;
use crate::modes::small_setup;
use crate::services;

/// Asserts a clean failure: non-zero exit, exactly one `error:` line that
/// contains `needle`, and no secret on any output.
fn assert_fails(out: &Out, needle: &str, secrets: &[&str]) {
    assert_ne!(
        out.code, 0,
        "expected failure; stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "one error line expected:\n{}", out.stderr);
    assert!(
        errors[0].contains(needle),
        "error line should mention `{needle}`: {}",
        errors[0]
    );
    assert!(!errors[0].contains('\n'));
    for s in secrets {
        assert!(
            !out.stderr.contains(s) && !out.stdout.contains(s),
            "secret leaked:\n{}\n{}",
            out.stdout,
            out.stderr
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn table_yaml(dsn: &str, catalog: &str, ns: &str, table: &str) -> String {
    format!("database:\n  dsn: \"{dsn}\"\n{catalog}global:\n  namespace: {ns}\ntables:\n{table}")
}

const SENSOR: &str = "  - name: sensor_readings\n    timestamp_column: recorded_at\n    lag: 15d\n";

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn bad_inputs_fail_clearly_and_delete_nothing() {
    let s = services!();
    let (db, ws, cat, _cfg, _now) = small_setup(&s, 5_000).await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE shapes (ts timestamptz NOT NULL, p point); INSERT INTO shapes SELECT now() - interval '40 days', point(1,2);",
    )
    .await
    .expect("shapes");
    let total = count(&c, "sensor_readings", "true").await;
    let ns = &cat.namespace;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "missing table",
            table_yaml(
                &db.dsn,
                &cat.yaml,
                ns,
                "  - name: nope\n    timestamp_column: ts\n",
            ),
            "table public.nope does not exist",
        ),
        (
            "missing column",
            table_yaml(
                &db.dsn,
                &cat.yaml,
                ns,
                "  - name: sensor_readings\n    timestamp_column: taken_at\n",
            ),
            "column `taken_at` does not exist",
        ),
        (
            "non-timestamp time column",
            table_yaml(
                &db.dsn,
                &cat.yaml,
                ns,
                "  - name: sensor_readings\n    timestamp_column: sensor_name\n",
            ),
            "not timestamp or timestamptz",
        ),
        (
            "unsupported type",
            table_yaml(
                &db.dsn,
                &cat.yaml,
                ns,
                "  - name: shapes\n    timestamp_column: ts\n",
            ),
            "column `p` (point)",
        ),
        (
            "filter on an unknown column",
            table_yaml(
                &db.dsn,
                &cat.yaml,
                ns,
                &format!("{SENSOR}    filter: \"colour = 'red'\"\n"),
            ),
            "unknown column `colour`",
        ),
        (
            "filter that is not an expression",
            table_yaml(
                &db.dsn,
                &cat.yaml,
                ns,
                &format!("{SENSOR}    filter: \"1=1; DELETE FROM sensor_readings\"\n"),
            ),
            "invalid filter",
        ),
        (
            "unreachable postgres",
            table_yaml(
                &format!(
                    "postgresql://postgres:pw-unreach@127.0.0.1:{}/x",
                    free_port()
                ),
                &cat.yaml,
                ns,
                SENSOR,
            ),
            "cannot connect to PostgreSQL",
        ),
        (
            "malformed yaml",
            format!("database:\n  dsn: \"{}\"\ntables: [\n", db.dsn),
            "config",
        ),
        (
            "unknown key",
            table_yaml(
                &db.dsn,
                &cat.yaml,
                ns,
                &format!("{SENSOR}    partiton_by: day\n"),
            ),
            "partiton_by",
        ),
        (
            "bad lag",
            table_yaml(
                &db.dsn,
                &cat.yaml,
                ns,
                "  - name: sensor_readings\n    timestamp_column: recorded_at\n    lag: soon\n",
            ),
            "tables[0].lag",
        ),
        (
            "unset variable",
            table_yaml("${PERMAFROST_NO_SUCH_VAR}", &cat.yaml, ns, SENSOR),
            "PERMAFROST_NO_SUCH_VAR is not set",
        ),
        (
            "unreachable catalog",
            table_yaml(
                &db.dsn,
                &format!(
                    "catalog:\n  type: rest\n  uri: http://127.0.0.1:{}\n  warehouse: s3://warehouse\n",
                    free_port()
                ),
                ns,
                SENSOR,
            ),
            "catalog",
        ),
        (
            "wrong catalog credentials",
            table_yaml(
                &db.dsn,
                &format!(
                    "catalog:\n  type: rest\n  uri: {}\n  warehouse: s3://warehouse\n  credential: \"{}:wrong-secret-xyz\"\n",
                    s.rest, s.key
                ),
                ns,
                SENSOR,
            ),
            "catalog",
        ),
        (
            "wrong storage credentials",
            table_yaml(
                &db.dsn,
                &format!(
                    "catalog:\n  type: sql\n  uri: \"sqlite://{}/badkeys.db?mode=rwc\"\n  warehouse: s3://warehouse/badkeys\n  s3.endpoint: {}\n  s3.access-key-id: {}\n  s3.secret-access-key: wrong-secret-xyz\n  s3.region: us-east-1\n  s3.path-style-access: true\n",
                    ws.path().display(),
                    s.s3,
                    s.key
                ),
                ns,
                SENSOR,
            ),
            "PermissionDenied",
        ),
    ];
    for (name, yaml, needle) in &cases {
        let cfg = ws.config(&format!("{}.yaml", name.replace(' ', "-")), yaml);
        let cfg = cfg.to_string_lossy().to_string();
        for cmd in ["check", "archive"] {
            let out = ws.run(&[cmd, "-c", &cfg]);
            eprintln!(
                "--- {name} / {cmd}:\n{}",
                out.stderr
                    .lines()
                    .filter(|l| l.starts_with("error") || l.starts_with("hint"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            assert_fails(&out, needle, &["wrong-secret-xyz", "pw-unreach"]);
            if *name == "wrong storage credentials" {
                assert!(
                    out.has_hint("s3.access-key-id"),
                    "the hint is about the object store, not the catalog:\n{}",
                    out.stderr
                );
            }
            if *name != "malformed yaml" && *name != "unknown key" {
                assert!(
                    out.stderr.contains("hint:")
                        || *name == "filter that is not an expression"
                        || *name == "bad lag",
                    "{name}/{cmd} has a hint:\n{}",
                    out.stderr
                );
            }
        }
        assert_eq!(
            count(&c, "sensor_readings", "true").await,
            total,
            "{name}: nothing deleted"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn an_incompatible_existing_iceberg_table_is_refused() {
    let s = services!();
    let (db, ws, cat, cfg, now) = small_setup(&s, 5_000).await;
    let c = db.client().await;
    let now_s = rfc3339(now);
    let out = ws.run(&["archive", "-c", &cfg, "--now", &now_s]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Late rows wait in an archived window, then the source changes incompatibly.
    c.batch_execute(
        "INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, value, unit) \
         SELECT now() - interval '30 days', 1, 'x', 1, 'c' FROM generate_series(1, 10); \
         ALTER TABLE sensor_readings ALTER COLUMN sensor_id TYPE text",
    )
    .await
    .expect("alter");
    let total = count(&c, "sensor_readings", "true").await;
    for cmd in ["check", "archive"] {
        let out = ws.run(
            &[cmd, "-c", &cfg, "--now", &now_s]
                .iter()
                .copied()
                .filter(|a| cmd == "archive" || !a.starts_with("--now") && *a != now_s)
                .collect::<Vec<_>>(),
        );
        assert_fails(&out, "does not match", &[]);
        assert!(out.stderr.contains("sensor_id"), "{}", out.stderr);
    }
    assert_eq!(
        count(&c, "sensor_readings", "true").await,
        total,
        "nothing deleted"
    );

    // A different partition transform for the same Iceberg table is refused too.
    c.batch_execute(
        "ALTER TABLE sensor_readings ALTER COLUMN sensor_id TYPE integer USING sensor_id::integer",
    )
    .await
    .expect("alter back");
    let monthly = std::fs::read_to_string(&cfg)
        .expect("cfg")
        .replace("partition_by: day", "partition_by: month");
    let mcfg = ws.config("monthly.yaml", &monthly);
    let out = ws.run(&["archive", "-c", &mcfg.to_string_lossy(), "--now", &now_s]);
    assert_fails(&out, "partitioned by", &[]);
    assert_eq!(
        count(&c, "sensor_readings", "true").await,
        total,
        "nothing deleted"
    );
    let _ = cat;
}

/// Every Parquet data file under `dir`.
fn parquet_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(parquet_files(&p));
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
    out
}

/// Damages the first data file under `ws` with `damage` and returns its
/// path and the `--from`/`--to` of its daily window.
fn damage_a_data_file(
    ws: &Ws,
    damage: impl FnOnce(&mut Vec<u8>),
) -> (std::path::PathBuf, [String; 2]) {
    let files = parquet_files(ws.path());
    let victim = files.first().expect("a data file").clone();
    let mut bytes = std::fs::read(&victim).expect("read");
    damage(&mut bytes);
    std::fs::write(&victim, &bytes).expect("write");
    let day = victim
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|d| d.to_str())
        .and_then(|d| d.strip_prefix("recorded_at_day="))
        .expect("partition directory")
        .to_string();
    let next =
        rfc3339(permafrost::plan::window::parse_instant(&day).expect("day") + 86_400_000_000);
    (victim, [day, next])
}

/// The sample table (2,000 rows) archived with `--no-delete` into a local
/// warehouse: its database, workspace and config path.
async fn archived_copy(s: &Services) -> (TestDb, Ws, String) {
    let (db, ws, _cat, cfg, now) = small_setup(s, 2_000).await;
    let now_s = rfc3339(now);
    let out = ws.run(&["archive", "-c", &cfg, "--no-delete", "--now", &now_s]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    (db, ws, cfg)
}

/// Runs `command` with `args` and checks it fails with exit 5 and one
/// line that says `needle`.
fn fails_as_damaged(ws: &Ws, cfg: &str, command: &str, args: &[&str], needle: &str) -> Out {
    let out = ws.run(&[&[command, "-c", cfg][..], args].concat());
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert_fails(&out, needle, &[]);
    assert!(out.has_hint("damaged"), "{}", out.stderr);
    out
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_damaged_data_file_is_a_verdict_not_a_storage_failure() {
    let s = services!();
    let (db, ws, cfg) = archived_copy(&s).await;
    // Overwrite one file's Parquet footer (the bytes before its length
    // and `PAR1`): the file is there, whole, and does not decode.
    let (victim, [from, to]) = damage_a_data_file(&ws, |bytes| {
        let n = bytes.len();
        let footer = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().expect("4 bytes")) as usize;
        bytes[n - 8 - footer..n - 8].fill(0xff);
    });
    let name = victim.file_name().and_then(|n| n.to_str()).expect("name");
    let window = ["-t", "sensor_readings", "--from", &from, "--to", &to];
    // Each command fails with exit 5 and one line naming the file.
    let named = format!("{name} does not decode");
    let fetch = [&window[..], &["--format", "csv"]].concat();
    fails_as_damaged(&ws, &cfg, "fetch", &fetch, &named);
    // SQL reads through DataFusion, whose error names no file: a look at
    // the scanned files' sizes and footers finds it.
    #[cfg(feature = "query")]
    fails_as_damaged(
        &ws,
        &cfg,
        "query",
        &["SELECT count(*), sum(value) FROM archive.sensor_readings"],
        &format!("{name} does not decode: its footer does not decode"),
    );
    let restore = [&window[..], &["--into", "staged"]].concat();
    fails_as_damaged(&ws, &cfg, "restore", &restore, &named);
    let c = db.client().await;
    let left = c
        .query_one("SELECT to_regclass('staged') IS NOT NULL", &[])
        .await
        .expect("regclass");
    assert!(
        !left.get::<_, bool>(0),
        "the failed restore left its staging table"
    );
}

/// A data file cut short (a partial copy, a full disk) is a damaged file
/// named with both sizes — exit 5, not a storage failure of the warehouse
/// directory — whichever read finds it.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_data_file_cut_short_is_named_with_both_sizes() {
    let s = services!();
    let (_db, ws, cfg) = archived_copy(&s).await;
    let mut size = 0;
    let (victim, [from, to]) = damage_a_data_file(&ws, |bytes| {
        size = bytes.len();
        bytes.truncate(size / 2);
    });
    let name = victim.file_name().and_then(|n| n.to_str()).expect("name");
    let sizes = format!(
        "{name} does not decode: it is {} bytes long where its manifest records {size}",
        size / 2
    );
    let window = ["-t", "sensor_readings", "--from", &from, "--to", &to];
    let fetch = [&window[..], &["--format", "jsonl"]].concat();
    fails_as_damaged(&ws, &cfg, "fetch", &fetch, &sizes);
    let restore = [&window[..], &["--into", "staged"]].concat();
    fails_as_damaged(&ws, &cfg, "restore", &restore, &sizes);
    #[cfg(feature = "query")]
    fails_as_damaged(
        &ws,
        &cfg,
        "query",
        &["SELECT max(value) FROM archive.sensor_readings"],
        &sizes,
    );
}

/// S3 without keys anywhere — none in the config, none from the AWS
/// credential chain — is a missing credential (exit 2) in one line with a
/// hint, not a storage failure; nothing is deleted.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn s3_without_any_credentials_is_a_config_error() {
    let s = services!();
    let db = TestDb::create(&s, "nokeys").await;
    let c = db.client().await;
    load_sample(&c, 300).await;
    let total = count(&c, "sensor_readings", "true").await;
    let ws = Ws::new();
    let catalog = format!(
        "catalog:\n  type: sql\n  uri: \"sqlite://{}/cat.db?mode=rwc\"\n  warehouse: s3://archive/{}\n\
         \x20 s3.endpoint: \"{}\"\n  s3.region: us-east-1\n  s3.path-style-access: true\n",
        ws.path().display(),
        unique("nokeys"),
        s.s3
    );
    let cfg = ws.config(
        "permafrost.yaml",
        &table_yaml(&db.dsn, &catalog, "archive", SENSOR),
    );
    // A chain with nothing to find: no profile, no instance metadata.
    let env = [
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let out = ws.run_env(&["archive", "-c", &cfg.to_string_lossy()], &env);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_fails(&out, "no credentials to sign S3 requests", &[]);
    assert!(
        out.stderr
            .contains("hint: give the catalog `s3.access-key-id`"),
        "{}",
        out.stderr
    );
    assert_eq!(count(&c, "sensor_readings", "true").await, total);
}

/// The catalog opens while the tables connect to Postgres: a catalog that
/// does not open is the run's one error, whatever Postgres does meanwhile
/// (here it refuses the connection too, and sooner).
#[test]
fn an_unreachable_catalog_is_the_runs_error_while_postgres_fails_too() {
    let ws = Ws::new();
    let dsn = format!(
        "postgresql://postgres:pw-unreach@127.0.0.1:{}/x",
        free_port()
    );
    let catalog = format!(
        "catalog:\n  type: rest\n  uri: http://127.0.0.1:{}\n  warehouse: s3://warehouse\n",
        free_port()
    );
    let cfg = ws.config("both.yaml", &table_yaml(&dsn, &catalog, "archive", SENSOR));
    let out = ws.run(&["archive", "-c", &cfg.to_string_lossy(), "--json"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert_fails(&out, "catalog", &["pw-unreach"]);
    assert!(
        !out.stderr.contains("PostgreSQL"),
        "the table's failure is not reported beside the catalog's:\n{}",
        out.stderr
    );
    assert!(out.stdout.trim().is_empty(), "no report: {}", out.stdout);
}
