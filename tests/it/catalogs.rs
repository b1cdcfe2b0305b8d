//! Every ready-to-copy config in `catalogs/` works against the real services,
//! and `docker-compose.yml` agrees with `catalogs/` and `trino/`.

use crate::common::*;
use crate::services;

fn repo(p: &str) -> std::path::PathBuf {
    crate::common::source_dir().join(p)
}

/// Checks and archives with the config `file`; returns the namespace, the
/// rows archived, and the run's workspace and database.
async fn exercise(
    file: &str,
    extra_env: Vec<(String, String)>,
    s: &Services,
) -> (String, i64, Ws, TestDb, Vec<(String, String)>) {
    let db = TestDb::create(s, "catalogs").await;
    let c = db.client().await;
    load_sample(&c, 5_000).await;
    c.batch_execute("CREATE TABLE before_rows AS SELECT * FROM sensor_readings")
        .await
        .expect("copy");
    let ws = Ws::new();
    let namespace = unique("cat");
    let mut env = vec![
        ("PG_DSN".to_string(), db.dsn.clone()),
        ("PERMAFROST_NAMESPACE".to_string(), namespace.clone()),
    ];
    env.extend(extra_env);
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cfg = repo(file).to_string_lossy().to_string();
    let out = ws.run_env(&["check", "-c", &cfg], &env_ref);
    assert_eq!(
        out.code, 0,
        "{file}: check failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    // The storage is proven where the catalog will put the table, except
    // behind a REST catalog (its storage access comes with a table).
    let probed = if file.starts_with("catalogs/rest") {
        "storage: not probed"
    } else {
        "storage: ok (wrote and read back a probe object under "
    };
    assert!(out.stdout.contains(probed), "{file}:\n{}", out.stdout);
    let out = ws.run_env(&["archive", "-c", &cfg, "--json"], &env_ref);
    assert_eq!(out.code, 0, "{file}: archive failed:\n{}", out.stderr);
    let r = out.json();
    assert_eq!(r[0]["outcome"]["status"], "done", "{file}: {r}");
    let rows: i64 = r[0]["batches"]
        .as_array()
        .expect("batches")
        .iter()
        .map(|b| b["rows"].as_i64().unwrap_or(0))
        .sum();
    let left = count(&c, "sensor_readings", "true").await;
    assert!(
        rows > 3000 && rows + left == 5000,
        "{file}: archived {rows}, left {left}"
    );
    assert!(!out.stderr.contains(&s.secret), "{file}: secret in logs");
    (namespace, rows, ws, db, env)
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn rest_catalog_example() {
    let s = services!();
    let env = vec![
        ("ICEBERG_REST_URI".into(), s.rest.clone()),
        ("S3_ENDPOINT".into(), s.s3.clone()),
        ("AWS_ACCESS_KEY_ID".into(), s.key.clone()),
        ("AWS_SECRET_ACCESS_KEY".into(), s.secret.clone()),
    ];
    exercise("catalogs/rest.yaml", env, &s).await;
}

/// The REST catalog with a bearer token from the catalog's OAuth2 endpoint.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn rest_catalog_with_a_bearer_token_example() {
    let s = services!();
    let resp: serde_json::Value = {
        permafrost::http::install_crypto_provider();
        reqwest::Client::new()
    }
    .post(format!("{}/v1/oauth/tokens", s.rest))
    .form(&[
        ("grant_type", "client_credentials"),
        ("client_id", s.key.as_str()),
        ("client_secret", s.secret.as_str()),
        ("scope", "catalog"),
    ])
    .send()
    .await
    .expect("token request")
    .json()
    .await
    .expect("token json");
    let token = resp["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    let env = vec![
        ("ICEBERG_REST_URI".into(), s.rest.clone()),
        ("ICEBERG_REST_TOKEN".into(), token.clone()),
        ("S3_ENDPOINT".into(), s.s3.clone()),
        ("AWS_ACCESS_KEY_ID".into(), s.key.clone()),
        ("AWS_SECRET_ACCESS_KEY".into(), s.secret.clone()),
    ];
    let (_, _, ws, _, env) = exercise("catalogs/rest-token.yaml", env, &s).await;
    // A wrong token is refused with a clear error, and is never printed.
    let mut bad: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    bad.retain(|(k, _)| *k != "ICEBERG_REST_TOKEN");
    bad.push(("ICEBERG_REST_TOKEN", "not-a-valid-token-123"));
    let cfg = repo("catalogs/rest-token.yaml")
        .to_string_lossy()
        .to_string();
    let out = ws.run_env(&["check", "-c", &cfg], &bad);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(
        !out.stderr.contains("not-a-valid-token-123"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(&token), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn sql_sqlite_catalog_example() {
    let s = services!();
    let home = tempfile::tempdir().expect("tempdir");
    exercise(
        "catalogs/sql-sqlite.yaml",
        vec![(
            "PERMAFROST_HOME".into(),
            home.path().to_string_lossy().into(),
        )],
        &s,
    )
    .await;
    assert!(home.path().join("catalog.db").exists());
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn sql_postgres_catalog_example_with_s3_warehouse() {
    let s = services!();
    let cat_db = TestDb::create(&s, "pgcat").await;
    let env = vec![
        ("CATALOG_DSN".into(), cat_db.dsn.clone()),
        (
            "ICEBERG_WAREHOUSE".into(),
            format!("s3://archive/{}", unique("wh")),
        ),
        ("S3_ENDPOINT".into(), s.s3.clone()),
        ("AWS_ACCESS_KEY_ID".into(), s.key.clone()),
        ("AWS_SECRET_ACCESS_KEY".into(), s.secret.clone()),
    ];
    exercise("catalogs/sql-postgres.yaml", env, &s).await;
    let c = cat_db.client().await;
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM iceberg_tables WHERE catalog_name = 'permafrost'",
            &[],
        )
        .await
        .expect("catalog rows")
        .get(0);
    assert_eq!(n, 1, "the table is registered in the Postgres catalog");
}

/// Glue (moto) with S3 on SeaweedFS: a `timestamptz`-partitioned table is
/// archived, PyIceberg's Glue catalog reads the same rows, spec, schema (still
/// `timestamptz`) and snapshot properties, and a range restores from it.
/// The variables the Glue configs read for moto and SeaweedFS, a warehouse of their own.
fn moto_env(s: &Services, tag: &str) -> Vec<(String, String)> {
    vec![
        ("GLUE_ENDPOINT".into(), s.glue.clone()),
        ("S3_ENDPOINT".into(), s.s3.clone()),
        ("S3_PATH_STYLE".into(), "true".into()),
        (
            "ICEBERG_WAREHOUSE".into(),
            format!("s3://archive/{}", unique(tag)),
        ),
    ]
}

/// PyIceberg's Glue catalog on moto, with S3 on SeaweedFS.
fn pyiceberg_glue(s: &Services) -> serde_json::Value {
    serde_json::json!({
        "type": "glue", "glue.endpoint": s.glue, "glue.region": "us-east-1",
        "glue.access-key-id": s.key, "glue.secret-access-key": s.secret,
        "s3.endpoint": s.s3, "s3.access-key-id": s.key, "s3.secret-access-key": s.secret,
        "s3.region": "us-east-1"
    })
}

/// What PyIceberg's catalog `name` (its properties `catalog`) reads of the
/// sensor table in `namespace`, checked to hold the `rows` archived, in
/// engine-ready files.
fn pyiceberg_reads(
    s: &Services,
    name: &str,
    catalog: serde_json::Value,
    namespace: &str,
    rows: i64,
) -> serde_json::Value {
    let req = serde_json::json!({
        "catalog_name": name,
        "catalog": catalog,
        "table": format!("{namespace}.sensor_readings"),
        "time_column": "recorded_at", "unit": "day", "sum_columns": ["sensor_id"],
        "duckdb": false,
    });
    let p = interop(s, &req)["pyiceberg"].take();
    assert_eq!(p["count"].as_i64(), Some(rows), "{name}: {p}");
    assert_engine_ready(name, &p["engine"]);
    p
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn glue_catalog_example_keeps_timestamptz() {
    let s = services!();
    let mut env = moto_env(&s, "glue");
    env.extend([
        ("AWS_ACCESS_KEY_ID".into(), s.key.clone()),
        ("AWS_SECRET_ACCESS_KEY".into(), s.secret.clone()),
        ("AWS_REGION".into(), "us-east-1".into()),
    ]);
    let (namespace, rows, ws, db, env) = exercise("catalogs/glue.yaml", env, &s).await;
    let p = &pyiceberg_reads(&s, "glue", pyiceberg_glue(&s), &namespace, rows);
    assert_eq!(p["spec"][0]["transform"], "day", "{}", p["spec"]);
    let ts = p["schema"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["name"] == "recorded_at"))
        .expect("recorded_at");
    assert_eq!(ts["type"], "timestamptz", "{ts}");
    let snaps = p["snapshots"].as_array().expect("snapshots");
    assert!(!snaps.is_empty());
    let summed: i64 = snaps
        .iter()
        .map(|s| {
            assert!(s["summary"]["permafrost.batch-id"].is_string(), "{s}");
            s["summary"]["permafrost.rows"]
                .as_str()
                .and_then(|n| n.parse::<i64>().ok())
                .expect("permafrost.rows")
        })
        .sum();
    assert_eq!(summed, rows);
    assert_eq!(
        p["properties"]["permafrost.time-column"], "recorded_at",
        "{}",
        p["properties"]
    );
    // Per day, the count and sum PyIceberg sees are those of the rows that
    // left Postgres.
    let windows = p["windows"].as_object().expect("windows");
    let c = db.client().await;
    let want: std::collections::BTreeMap<String, (i64, i64)> = c
        .query(
            "SELECT (extract(epoch FROM date_trunc('day', recorded_at AT TIME ZONE 'UTC')) * 1000000)::int8::text, \
                    count(*), sum(sensor_id)::int8 FROM before_rows b \
             WHERE NOT EXISTS (SELECT 1 FROM sensor_readings s WHERE s.id = b.id) GROUP BY 1",
            &[],
        )
        .await
        .expect("days")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let got: std::collections::BTreeMap<String, (i64, i64)> = windows
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (v[0].as_i64().unwrap_or(-1), v[1].as_i64().unwrap_or(-1)),
            )
        })
        .collect();
    assert_eq!(got, want);

    // Restore one archived day from Glue; it validates against the source.
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cfg = repo("catalogs/glue.yaml").to_string_lossy().to_string();
    let (day, n) = windows
        .iter()
        .map(|(k, v)| (k.parse::<i64>().expect("day"), v[0].as_i64().unwrap_or(0)))
        .max_by_key(|(_, n)| *n)
        .expect("a day");
    let out = ws.run_env(
        &[
            "restore",
            "-c",
            &cfg,
            "-t",
            "sensor_readings",
            "--from",
            &rfc3339(day),
            "--to",
            &rfc3339(day + 86_400_000_000),
            "--into",
            "glue_day",
            "--json",
        ],
        &env_ref,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(r["valid"], true, "{r}");
    assert_eq!(r["rows"].as_i64(), Some(n));
    assert_eq!(count(&c, "glue_day", "true").await, n);
}

#[test]
fn compose_file_agrees_with_catalogs_and_trino() {
    let compose: serde_json::Value = serde_norway::from_str(
        &std::fs::read_to_string(repo("docker-compose.yml")).expect("compose"),
    )
    .expect("compose parses");
    let services = compose["services"].as_object().expect("services");
    for name in ["postgres", "seaweedfs", "trino", "permafrost"] {
        assert!(services.contains_key(name), "service {name}");
    }
    let ports: Vec<String> = services["seaweedfs"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| p.as_str().unwrap_or("").to_string())
        .collect();
    let rest = std::fs::read_to_string(repo("catalogs/rest.yaml")).expect("rest.yaml");
    let trino = std::fs::read_to_string(repo("trino/iceberg-rest.properties")).expect("trino");
    for port in ["8181", "8333"] {
        assert!(
            ports.iter().any(|p| p.starts_with(&format!("{port}:"))),
            "seaweedfs publishes {port}"
        );
        assert!(
            rest.contains(&format!("localhost:{port}")),
            "catalogs/rest.yaml defaults to {port}"
        );
        assert!(
            trino.contains(&format!("seaweedfs:{port}")),
            "trino talks to seaweedfs:{port}"
        );
    }
    let pf_env = &services["permafrost"]["environment"];
    assert_eq!(pf_env["ICEBERG_REST_URI"], "http://seaweedfs:8181");
    assert_eq!(pf_env["S3_ENDPOINT"], "http://seaweedfs:8333");
    let mounts = services["trino"]["volumes"].as_array().expect("volumes");
    for m in mounts {
        let src = m.as_str().unwrap_or("").split(':').next().unwrap_or("");
        assert!(
            repo(src.trim_start_matches("./")).exists(),
            "mounted file {src} exists"
        );
    }
    // Credentials match between the services.
    let key = &services["seaweedfs"]["environment"]["AWS_ACCESS_KEY_ID"];
    assert_eq!(&services["trino"]["environment"]["AWS_ACCESS_KEY_ID"], key);
    assert_eq!(&pf_env["AWS_ACCESS_KEY_ID"], key);
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn glue_catalog_with_pyiceberg_property_names() {
    let s = services!();
    // No AWS_* variables: the glue.* keys alone must carry the credentials.
    let mut env = moto_env(&s, "gluepy");
    env.extend([
        ("GLUE_ACCESS_KEY_ID".into(), s.key.clone()),
        ("GLUE_SECRET_ACCESS_KEY".into(), s.secret.clone()),
    ]);
    let (namespace, rows, ws, _db, env) = exercise("catalogs/glue-pyiceberg.yaml", env, &s).await;
    let req = serde_json::json!({
        "catalog_name": "glue",
        "catalog": pyiceberg_glue(&s),
        "table": format!("{namespace}.sensor_readings"),
        "time_column": "recorded_at", "unit": "day", "sum_columns": [],
        "duckdb": false,
    });
    assert_eq!(interop(&s, &req)["pyiceberg"]["count"].as_i64(), Some(rows));
    // A misspelt key: passed on, with a warning naming the closest key.
    let text = std::fs::read_to_string(repo("catalogs/glue-pyiceberg.yaml")).expect("read");
    let typo = ws.config(
        "typo.yaml",
        &text.replace("  glue.region:", "  glue.regoin: x\n  glue.region:"),
    );
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = ws.run_env(&["check", "-c", &typo.to_string_lossy()], &env_ref);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("`catalog.glue.regoin`")
            && out.stderr.contains("did you mean `glue.region`"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(&s.secret));
}

/// The image recipe: hadolint finds nothing, the runtime stage runs as a
/// non-root user with CA certificates and `permafrost` as its entry point,
/// and `docker-compose.yml` builds it.
#[test]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
fn dockerfile_lints_clean_and_runs_unprivileged() {
    let s = services!();
    let hadolint = std::path::Path::new(&s.python).with_file_name("hadolint");
    let out = std::process::Command::new(&hadolint)
        .arg(repo("Dockerfile"))
        .output()
        .expect("run hadolint (tests/requirements.txt installs it)");
    assert!(
        out.status.success(),
        "hadolint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(repo("Dockerfile")).expect("Dockerfile");
    let runtime = text.rsplit("\nFROM ").next().expect("a runtime stage");
    for needle in [
        "ca-certificates",
        "USER 10001",
        "ENTRYPOINT [\"permafrost\"]",
        "--features query",
    ] {
        assert!(
            runtime.contains(needle) || text.contains(needle),
            "Dockerfile lacks {needle}"
        );
    }
    assert!(
        runtime.contains("USER 10001"),
        "the runtime stage is not root"
    );
    let compose = std::fs::read_to_string(repo("docker-compose.yml")).expect("compose");
    assert!(
        compose.contains("build: ."),
        "compose builds the Dockerfile"
    );
}

/// A REST catalog that takes AWS SigV4-signed requests instead of OAuth2 (S3
/// Tables, Glue's Iceberg REST endpoint), from `catalogs/rest-sigv4.yaml`:
/// SeaweedFS's REST catalog checks the signature of every request, so the
/// archive (table created, 40-odd batch commits) is signed throughout with
/// the chain's keys (from the environment here). PyIceberg's own SigV4
/// signer reads the same rows back. A wrong secret is refused by the
/// catalog: one line with the SigV4 hint, exit code 4, nothing deleted.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn rest_catalog_signed_with_sigv4_example() {
    let s = services!();
    let chain = |secret: &str| -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), s.key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), secret.to_string()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_CONFIG_FILE".into(), "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE".into(), "/dev/null".into()),
        ]
    };
    let mut env = vec![
        ("ICEBERG_REST_URI".into(), s.rest.clone()),
        ("ICEBERG_WAREHOUSE".into(), "s3://warehouse".into()),
        ("S3_PATH_STYLE".into(), "true".into()),
    ];
    env.extend(chain(&s.secret));
    let (namespace, rows, ws, db, env) = exercise("catalogs/rest-sigv4.yaml", env, &s).await;
    let catalog = serde_json::json!({
        "type": "rest", "uri": s.rest, "warehouse": "s3://warehouse",
        "rest.sigv4-enabled": "true", "rest.signing-name": "s3tables",
        "rest.signing-region": "us-east-1",
        "client.access-key-id": s.key, "client.secret-access-key": s.secret,
        "client.region": "us-east-1",
        "s3.endpoint": s.s3, "s3.access-key-id": s.key, "s3.secret-access-key": s.secret,
        "s3.region": "us-east-1",
    });
    let p = &pyiceberg_reads(&s, "s3tables", catalog, &namespace, rows);
    let summed: i64 = p["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .filter_map(|s| {
            s["summary"]["permafrost.rows"]
                .as_str()?
                .parse::<i64>()
                .ok()
        })
        .sum();
    assert_eq!(
        summed, rows,
        "every batch's snapshot committed through the signer"
    );

    // The same run with a secret the catalog does not know.
    let c = db.client().await;
    let left = count(&c, "sensor_readings", "true").await;
    c.batch_execute(
        "INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, value, unit) \
         VALUES (now() - interval '40 days', 1, 'late', 1.0, 'celsius')",
    )
    .await
    .expect("late row");
    let wrong = "not-the-secret-of-this-key";
    let mut bad: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k != "AWS_SECRET_ACCESS_KEY")
        .cloned()
        .collect();
    bad.extend(
        chain(wrong)
            .into_iter()
            .filter(|(k, _)| k == "AWS_SECRET_ACCESS_KEY"),
    );
    let bad_ref: Vec<(&str, &str)> = bad.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cfg = repo("catalogs/rest-sigv4.yaml")
        .to_string_lossy()
        .to_string();
    let out = ws.run_env(&["archive", "-c", &cfg], &bad_ref);
    assert_eq!(out.code, 4, "{}", out.stderr);
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(errors[0].contains("signature"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("hint: the catalog refused the request's AWS SigV4 signature"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(wrong) && !out.stderr.contains(&s.secret));
    assert_eq!(count(&c, "sensor_readings", "true").await, left + 1);
}
