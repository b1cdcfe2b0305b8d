//! Shared helpers for the integration tests: service endpoints (from the
//! environment `scripts/test` sets up), per-test databases and workspaces,
//! running the binary, catalog configurations and the Python interop reader.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;
use tokio_postgres::{Client, NoTls};

/// Endpoints of the services started by `scripts/test`.
#[derive(Clone, Debug)]
pub struct Services {
    /// DSN of the cluster's `postgres` database (superuser).
    pub pg: String,
    pub s3: String,
    pub rest: String,
    pub key: String,
    pub secret: String,
    pub python: String,
    /// The AWS Glue API (moto server).
    pub glue: String,
    /// A cluster of its own for the tests that make Postgres forget
    /// transactions or restore it from a backup (tests/it/safety.rs, one
    /// at a time: `safety::SOLO`).
    pub pg_solo: String,
    /// The PostgreSQL binaries (pg_basebackup, pg_ctl).
    pub pg_bin: String,
}

/// The services, or `None` when the environment does not name them (plain
/// `cargo test`); with `PERMAFROST_TEST_REQUIRE=1` a missing service panics.
pub fn services() -> Option<Services> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let s = (|| {
        Some(Services {
            pg: get("PERMAFROST_TEST_PG")?,
            s3: get("PERMAFROST_TEST_S3_ENDPOINT")?,
            rest: get("PERMAFROST_TEST_REST_URI")?,
            key: get("PERMAFROST_TEST_S3_KEY")?,
            secret: get("PERMAFROST_TEST_S3_SECRET")?,
            python: get("PERMAFROST_TEST_PYTHON")?,
            glue: get("PERMAFROST_TEST_GLUE_URI")?,
            pg_solo: get("PERMAFROST_TEST_PG_SOLO")?,
            pg_bin: get("PERMAFROST_TEST_PG_BIN")?,
        })
    })();
    if s.is_none() && get("PERMAFROST_TEST_REQUIRE").is_some() {
        panic!(
            "PERMAFROST_TEST_REQUIRE is set but the PERMAFROST_TEST_* service variables are missing"
        );
    }
    s
}

/// Returns the services or skips the test (returns) with a note.
#[macro_export]
macro_rules! services {
    () => {
        match $crate::common::services() {
            Some(s) => s,
            None => {
                eprintln!("skipped: test services are not configured (run scripts/test)");
                return;
            }
        }
    };
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The source tree the tests run from, read at run time: a test binary reused
/// from a shared target directory may have been compiled in another clone.
pub fn source_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// A name unique to this test run.
pub fn unique(tag: &str) -> String {
    format!(
        "{tag}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

pub async fn connect(dsn: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(dsn, NoTls)
        .await
        .expect("connect to test postgres");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A fresh database in the test cluster.
pub struct TestDb {
    pub name: String,
    pub dsn: String,
}

impl TestDb {
    pub async fn create(s: &Services, tag: &str) -> Self {
        let name = unique(tag);
        let admin = connect(&s.pg).await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create database");
        let dsn =
            s.pg.rsplit_once('/')
                .map(|(base, _)| format!("{base}/{name}"))
                .expect("dsn has a database");
        Self { name, dsn }
    }

    pub async fn client(&self) -> Client {
        connect(&self.dsn).await
    }

    /// A key=value DSN of this database for `role` (trusted, no password).
    pub fn dsn_as(&self, role: &str) -> String {
        let port = self
            .dsn
            .rsplit_once('/')
            .and_then(|(b, _)| b.rsplit_once(':'))
            .map(|(_, p)| p.to_string())
            .expect("a port");
        format!(
            "host=127.0.0.1 port={port} user={role} dbname={}",
            self.name
        )
    }
}

/// A temporary directory for configs, catalogs and warehouses.
pub struct Ws {
    pub dir: tempfile::TempDir,
}

/// Output of one run of the binary.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// The `id` of every JSON line on stdout (`fetch --format jsonl`),
    /// sorted.
    pub fn jsonl_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .stdout
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).expect("jsonl")["id"]
                    .as_i64()
                    .expect("id")
            })
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The lines starting with `error:`.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect()
    }

    /// Whether a `hint:` line on stderr contains `text`.
    pub fn has_hint(&self, text: &str) -> bool {
        self.stderr
            .lines()
            .any(|l| l.starts_with("hint:") && l.contains(text))
    }
}

impl Ws {
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("permafrost-test-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `permafrost.yaml` (or `name`) and returns its path.
    pub fn config(&self, name: &str, yaml: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, yaml).expect("write config");
        p
    }

    /// Runs the binary in this directory.
    pub fn run(&self, args: &[&str]) -> Out {
        self.run_env(args, &[])
    }

    /// Runs the binary and waits; a run still going after [`WATCHDOG`] is
    /// killed (the test then fails on its exit code instead of hanging).
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        finish(self.spawn(args, env))
    }

    /// The ids `fetch` reads back from the archive of `table` for times
    /// `[from, to)`, in order.
    pub fn fetched_ids(
        &self,
        cfg: &str,
        table: &str,
        (from, to): (&str, &str),
        env: &[(&str, &str)],
    ) -> Vec<i64> {
        let args = [
            "fetch",
            "-c",
            cfg,
            "-t",
            table,
            "--from",
            from,
            "--to",
            to,
            "--format",
            "jsonl",
            "--columns",
            "id",
        ];
        let out = self.run_env(&args, env);
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.jsonl_ids()
    }
}

/// Which catalog a test archives into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cat {
    Sqlite,
    Postgres,
    Rest,
    /// AWS Glue (moto) with S3 on SeaweedFS.
    Glue,
}

/// A catalog set up for one test.
pub struct CatalogSetup {
    pub kind: Cat,
    /// The `catalog:` section of the config.
    pub yaml: String,
    /// PyIceberg `load_catalog` name and properties.
    pub py_name: String,
    pub py_props: Value,
    pub namespace: String,
}

impl CatalogSetup {
    pub async fn new(kind: Cat, s: &Services, ws: &Ws) -> Self {
        let namespace = unique("ns");
        let warehouse = format!("file://{}/warehouse", ws.path().display());
        match kind {
            Cat::Sqlite => {
                let db = format!("{}/catalog.db", ws.path().display());
                Self {
                    kind,
                    yaml: format!(
                        "catalog:\n  type: sql\n  name: permafrost\n  uri: \"sqlite://{db}?mode=rwc\"\n  warehouse: \"{warehouse}\"\n"
                    ),
                    py_name: "permafrost".into(),
                    py_props: serde_json::json!({"type": "sql", "uri": format!("sqlite:///{db}"), "warehouse": warehouse}),
                    namespace,
                }
            }
            Cat::Postgres => {
                let cat_db = TestDb::create(s, "catalog").await;
                let sa = cat_db
                    .dsn
                    .replacen("postgresql://", "postgresql+psycopg2://", 1);
                Self {
                    kind,
                    yaml: format!(
                        "catalog:\n  type: sql\n  name: permafrost\n  uri: \"{}\"\n  warehouse: \"{warehouse}\"\n",
                        cat_db.dsn
                    ),
                    py_name: "permafrost".into(),
                    py_props: serde_json::json!({"type": "sql", "uri": sa, "warehouse": warehouse}),
                    namespace,
                }
            }
            Cat::Rest => Self::rest_at(s, &s.rest, &s.s3, namespace),
            Cat::Glue => {
                let warehouse = format!("s3://archive/{}", unique("glue"));
                Self {
                    kind,
                    yaml: format!(
                        "catalog:\n  type: glue\n  name: glue\n  uri: \"{}\"\n  warehouse: \"{warehouse}\"\n  region_name: us-east-1\n  aws_access_key_id: \"${{TEST_S3_KEY}}\"\n  aws_secret_access_key: \"${{TEST_S3_SECRET}}\"\n  s3.endpoint: \"{}\"\n  s3.path-style-access: true\n",
                        s.glue, s.s3
                    ),
                    py_name: "glue".into(),
                    py_props: serde_json::json!({
                        "type": "glue", "glue.endpoint": s.glue, "glue.region": "us-east-1",
                        "glue.access-key-id": s.key, "glue.secret-access-key": s.secret,
                        "s3.endpoint": s.s3, "s3.access-key-id": s.key, "s3.secret-access-key": s.secret,
                        "s3.region": "us-east-1"
                    }),
                    namespace,
                }
            }
        }
    }

    /// A REST catalog at `rest` with S3 at `s3` (the shared SeaweedFS or a test's own).
    pub fn rest_at(s: &Services, rest: &str, s3: &str, namespace: String) -> Self {
        Self {
            kind: Cat::Rest,
            yaml: format!(
                "catalog:\n  type: rest\n  name: rest\n  uri: {rest}\n  warehouse: s3://warehouse\n  credential: \"${{TEST_S3_KEY}}:${{TEST_S3_SECRET}}\"\n  s3.endpoint: {s3}\n  s3.access-key-id: \"${{TEST_S3_KEY}}\"\n  s3.secret-access-key: \"${{TEST_S3_SECRET}}\"\n  s3.region: us-east-1\n  s3.path-style-access: true\n"
            ),
            py_name: "rest".into(),
            py_props: serde_json::json!({
                "type": "rest", "uri": rest, "warehouse": "s3://warehouse",
                "credential": format!("{}:{}", s.key, s.secret),
                "s3.endpoint": s3, "s3.access-key-id": s.key, "s3.secret-access-key": s.secret,
                "s3.region": "us-east-1",
            }),
            namespace,
        }
    }

    /// Environment the config expects (credentials come from variables, like in production).
    pub fn env(s: &Services) -> Vec<(&'static str, String)> {
        vec![
            ("TEST_S3_KEY", s.key.clone()),
            ("TEST_S3_SECRET", s.secret.clone()),
        ]
    }

    /// The DuckDB REST attach parameters (only for the REST catalog).
    pub fn duckdb_rest(&self, s: &Services) -> Value {
        if self.kind == Cat::Rest {
            serde_json::json!({"key": s.key, "secret": s.secret, "uri": s.rest, "s3_host": s.s3.trim_start_matches("http://")})
        } else {
            Value::Null
        }
    }
}

/// Asserts PyIceberg's `engine` report (tests/py/interop.py): format v2,
/// summary totals, field ids in every data file, microsecond timestamps with
/// the right UTC flag, partition values and time bounds in every entry.
pub fn assert_engine_ready(what: &str, eng: &Value) {
    assert_eq!(eng["format_version"], 2, "{what}: {eng}");
    assert!(eng["files"].as_u64().unwrap_or(0) > 0, "{what}: {eng}");
    for k in [
        "missing_field_ids",
        "null_partitions",
        "missing_bounds",
        "summaries_without_totals",
    ] {
        assert_eq!(eng[k], 0, "{what}: {k}: {eng}");
    }
    assert_eq!(
        eng["timestamp_issues"],
        serde_json::json!([]),
        "{what}: {eng}"
    );
}

/// Runs `tests/py/interop.py` with `request`; returns its JSON answer.
pub fn interop(s: &Services, request: &Value) -> Value {
    python(s, "interop.py", request)
}

/// Runs `tests/py/<script>` with `request` (a JSON file); returns its JSON answer.
pub fn python(s: &Services, script: &str, request: &Value) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let req = dir.path().join("req.json");
    std::fs::write(&req, request.to_string()).expect("write request");
    let path = crate::common::source_dir().join("tests/py").join(script);
    // A machine-wide REQUESTS_CA_BUNDLE would override the CA bundle a
    // catalog's properties give PyIceberg (a `requests` quirk).
    let out = Command::new(&s.python)
        .arg(path)
        .arg(&req)
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python output is JSON")
}

/// Compares JSON values: integers exactly, other numbers as f64 to 12
/// significant digits (engines add doubles in different orders).
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(p), Some(q)) => p == q,
            // Sums of doubles depend on the order an engine adds them in:
            // equal to 12 significant digits.
            _ => match (x.as_f64(), y.as_f64()) {
                (Some(p), Some(q)) => p == q || (p - q).abs() <= 1e-12 * p.abs().max(q.abs()),
                _ => false,
            },
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Creates the sample tables on `c`'s database and fills `sensor_readings`
/// with `rows` readings.
pub async fn load_sample(c: &Client, rows: u64) {
    c.batch_execute(permafrost::demo::SAMPLE_SCHEMA)
        .await
        .expect("schema");
    c.batch_execute(&permafrost::demo::SAMPLE_DATA.replace(":rows", &rows.to_string()))
        .await
        .expect("data");
}

/// Micros since the epoch of Postgres' `now()`.
pub async fn pg_now(c: &Client) -> i64 {
    c.query_one("SELECT (extract(epoch FROM now()) * 1000000)::int8", &[])
        .await
        .expect("now")
        .get(0)
}

/// RFC 3339 of micros.
/// SQL for the µs since the epoch of timestamp or timestamptz `expr`,
/// exactly on every version: from the fields of its distance to the epoch
/// (before PostgreSQL 14, `extract(epoch …)` answers in float8, which rounds
/// times far from 1970 by several µs).
pub fn epoch_us_sql(expr: &str) -> String {
    format!(
        "(SELECT extract(day FROM d)::int8 * 86400000000 + extract(hour FROM d)::int8 * 3600000000 \
                + extract(minute FROM d)::int8 * 60000000 + extract(microseconds FROM d)::int8 \
          FROM (SELECT ({expr}) - 'epoch' AS d) AS since)"
    )
}

pub fn rfc3339(t: i64) -> String {
    permafrost::plan::window::rfc3339(t)
}

/// `SELECT count(*)` with a WHERE clause.
pub async fn count(c: &Client, table: &str, cond: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {table} WHERE {cond}"), &[])
        .await
        .expect("count")
        .get(0)
}

/// A SeaweedFS (`weed mini`) of a test's own, which the test may kill and restart.
pub struct Weed {
    bin: String,
    pub dir: tempfile::TempDir,
    ports: Vec<u16>,
    child: Option<std::process::Child>,
    key: String,
    secret: String,
    pub s3: String,
    pub rest: String,
    /// More `weed mini` arguments (e.g. `-s3.externalUrl=…`, the S3 address
    /// its REST catalog hands out with a table).
    pub args: Vec<String>,
}

/// `n` free ports below the kernel's ephemeral range: a port a listener
/// gets from `bind(0)` is one of that range, where the suite's own client
/// connections (hundreds a second to Postgres) take theirs too, and one of
/// them can hold it by the time a server binds it.
fn free_ports(n: usize) -> Vec<u16> {
    let lowest_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (
        lowest_ephemeral.saturating_sub(12_000).max(1024),
        lowest_ephemeral,
    );
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32);
    let mut held: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    for _ in 0..(n * 200) {
        if held.len() == n || hi <= lo + n as u32 {
            break;
        }
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let port = lo + ((seed >> 33) as u32) % (hi - lo);
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
            held.push(l);
        }
    }
    while held.len() < n {
        held.push(std::net::TcpListener::bind("127.0.0.1:0").expect("bind"));
    }
    held.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// The last lines of a log file, for a failure message.
fn log_tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Weed {
    pub async fn start(s: &Services) -> Self {
        let mut w = Self::unstarted(s);
        w.spawn().await;
        w
    }

    /// Its ports and addresses, not started yet ([`Self::spawn`]).
    pub fn unstarted(s: &Services) -> Self {
        let bin = std::env::var("PERMAFROST_TEST_WEED")
            .expect("PERMAFROST_TEST_WEED (scripts/test sets it)");
        let ports = free_ports(16);
        Self {
            bin,
            dir: tempfile::Builder::new()
                .prefix("permafrost-weed-")
                .tempdir()
                .expect("tempdir"),
            s3: format!("http://127.0.0.1:{}", ports[6]),
            rest: format!("http://127.0.0.1:{}", ports[8]),
            ports,
            child: None,
            key: s.key.clone(),
            secret: s.secret.clone(),
            args: vec![],
        }
    }

    /// Starts it and waits until S3 and the REST catalog answer.
    pub async fn spawn(&mut self) {
        let p = &self.ports;
        let args = [
            format!("-dir={}", self.dir.path().display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            "-tableBucket=warehouse".into(),
            "-bucket=archive".into(),
            "-admin.ui=false".into(),
            "-master.telemetry=false".into(),
            format!("-master.port={}", p[0]),
            format!("-master.port.grpc={}", p[1]),
            format!("-volume.port={}", p[2]),
            format!("-volume.port.grpc={}", p[3]),
            format!("-filer.port={}", p[4]),
            format!("-filer.port.grpc={}", p[5]),
            format!("-s3.port={}", p[6]),
            format!("-s3.port.grpc={}", p[7]),
            format!("-s3.port.iceberg={}", p[8]),
            format!("-admin.port={}", p[9]),
            format!("-admin.port.grpc={}", p[10]),
            format!("-webdav.port={}", p[11]),
            format!("-debug.port={}", p[12]),
            format!("-s3.debug.port={}", p[13]),
            format!("-metricsPort={}", p[14]),
            format!("-s3.port.lance={}", p[15]),
        ];
        let log = std::fs::File::create(self.dir.path().join("weed.log")).expect("log");
        let child = Command::new(&self.bin)
            .arg("mini")
            .args(args)
            .args(&self.args)
            .env("AWS_ACCESS_KEY_ID", &self.key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start weed");
        self.child = Some(child);
        // Ready when S3 answers and the REST catalog lists the namespaces of
        // the `warehouse` table bucket (created a moment after the ports open).
        let client = {
            permafrost::http::install_crypto_provider();
            reqwest::Client::new()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let s3_ok = client.get(&self.s3).send().await.is_ok();
            let token = match client
                .post(format!("{}/v1/oauth/tokens", self.rest))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", &self.key),
                    ("client_secret", &self.secret),
                ])
                .send()
                .await
            {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["access_token"].as_str().map(str::to_string)),
                Err(_) => None,
            };
            let ns_ok = match token {
                Some(t) => client
                    .get(format!("{}/v1/warehouse/namespaces", self.rest))
                    .bearer_auth(t)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()),
                None => false,
            };
            if s3_ok && ns_ok {
                return;
            }
            let log = self.dir.path().join("weed.log");
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "weed exited ({status}) before it was ready; its log ends:\n{}",
                    log_tail(&log, 30)
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "weed did not start within 120 s; its log ends:\n{}",
                log_tail(&log, 30)
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A named pipe a paused permafrost waits on (`PERMAFROST_PAUSE=<point>:<fifo>`).
pub struct Pause {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Pause {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pause.fifo");
        let st = Command::new("mkfifo").arg(&path).status().expect("mkfifo");
        assert!(st.success());
        Self { path, _dir: dir }
    }

    pub fn env(&self, point: &str) -> String {
        format!("{point}:{}", self.path.display())
    }

    /// Blocks until the process opened the pipe (it reached the point), or
    /// `None` after `timeout`.
    pub fn wait_reached(&self, timeout: std::time::Duration) -> Option<std::fs::File> {
        let path = self.path.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new().write(true).open(path);
            let _ = tx.send(f);
        });
        rx.recv_timeout(timeout).ok().and_then(|r| r.ok())
    }

    /// Lets the paused process continue.
    pub fn resume(mut f: std::fs::File) {
        use std::io::Write;
        let _ = f.write_all(b"x");
    }
}

impl Ws {
    /// Starts the binary without waiting.
    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_permafrost"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().expect("spawn permafrost")
    }
}

/// How long one permafrost run may take in a test before it is killed.
pub const WATCHDOG: std::time::Duration = std::time::Duration::from_secs(600);

/// Collects a spawned child's output; kills it after [`WATCHDOG`].
pub fn finish(child: std::process::Child) -> Out {
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if done_rx.recv_timeout(WATCHDOG).is_err() {
            eprintln!("watchdog: permafrost (pid {pid}) ran longer than {WATCHDOG:?}; killing it");
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    });
    let out = child.wait_with_output().expect("wait");
    let _ = done_tx.send(());
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `field` of each element of `table[list]` (a table's report), 0 where
/// missing: `each_of(&report[0], "batches", "rows")`.
pub fn each_of(table: &Value, list: &str, field: &str) -> Vec<u64> {
    table[list]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| b[field].as_u64().unwrap_or(0))
        .collect()
}

/// Rows archived by an `archive --json` run, over all tables.
pub fn archived_rows(report: &Value) -> u64 {
    report
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["batches"].as_array().into_iter().flatten())
        .map(|b| b["rows"].as_u64().unwrap_or(0))
        .sum()
}

/// A local HTTP receiver for webhooks: `(address, bodies)`; every request's
/// body arrives on the channel and is answered `200 OK`.
pub fn webhook_sink() -> (String, std::sync::mpsc::Receiver<String>) {
    sink(false)
}

/// Like [`webhook_sink`], but each message is the request line, a newline,
/// then the body (`POST /ping/abc/start HTTP/1.1\n…`), and the address is
/// a URL (`http://127.0.0.1:PORT`).
pub fn request_sink() -> (String, std::sync::mpsc::Receiver<String>) {
    let (addr, rx) = sink(true);
    (format!("http://{addr}"), rx)
}

fn sink(with_request_line: bool) -> (String, std::sync::mpsc::Receiver<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stream.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .and_then(|v| v.trim().parse::<usize>().ok())
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        let msg = if with_request_line {
                            let line = head.lines().next().unwrap_or_default();
                            format!("{line}\n{body}")
                        } else {
                            body.to_string()
                        };
                        let _ = tx.send(msg);
                        break;
                    }
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (addr, rx)
}

/// Table `table` of namespace `ns` as another engine in the test sees it:
/// the catalog of config file `cfg` opened in-process, each `${VAR}` of
/// the config filled from `env` first (the binary reads them from its
/// environment; the test process has none).
pub async fn open_table(
    cfg: &str,
    env: &[(String, String)],
    ns: &str,
    table: &str,
) -> (
    std::sync::Arc<permafrost::lake::catalog::CatalogHandle>,
    iceberg::table::Table,
) {
    let mut text = std::fs::read_to_string(cfg).expect("config");
    for (k, v) in env {
        text = text.replace(&format!("${{{k}}}"), v);
    }
    let filled = tempfile::NamedTempFile::new().expect("temp config");
    std::fs::write(filled.path(), text).expect("write config");
    let cfg = permafrost::config::Config::load(filled.path()).expect("config");
    let catalog = permafrost::lake::catalog::open_catalog(&cfg.catalog)
        .await
        .expect("catalog");
    let ident = iceberg::TableIdent::from_strs([ns, table]).expect("ident");
    let table = catalog.iceberg().load_table(&ident).await.expect("load");
    (catalog, table)
}

/// Commits delete `files` (written by another engine's writers) as one
/// `delete` snapshot of `table`, as that engine's row delta would: a delete
/// manifest and a manifest list written with iceberg-rust's writers for the
/// table's format version (v3: with its row range), the current snapshot's
/// manifests carried over.  `engine`: the summary's `engine-name`.
pub async fn commit_delete_files(
    catalog: &permafrost::lake::catalog::CatalogHandle,
    table: &iceberg::table::Table,
    files: Vec<iceberg::spec::DataFile>,
    engine: &str,
) {
    use iceberg::spec::{
        FormatVersion, ManifestListWriter, ManifestWriterBuilder, Operation, Snapshot, Summary,
    };
    let md = table.metadata();
    let v3 = md.format_version() == FormatVersion::V3;
    let parent = md.current_snapshot().expect("a snapshot").clone();
    let snapshot_id = (uuid::Uuid::new_v4().as_u64_pair().0 >> 1) as i64;
    let sequence = md.next_sequence_number();
    let path = |name: String| {
        format!(
            "{}/metadata/{engine}-{snapshot_id}-{name}.avro",
            md.location()
        )
    };
    let builder = ManifestWriterBuilder::new(
        table.file_io().new_output(path("m0".into())).expect("out"),
        Some(snapshot_id),
        md.current_schema().clone(),
        md.default_partition_spec().as_ref().clone(),
    );
    let mut manifest = if v3 {
        builder.build_v3_deletes()
    } else {
        builder.build_v2_deletes()
    };
    for f in files {
        manifest.add_file(f, sequence).expect("entry");
    }
    let manifest = manifest.write_manifest_file().await.expect("manifest");
    let list_path = path("snap".into());
    let out = table.file_io().new_output(&list_path).expect("out");
    let out = out.writer().await.expect("writer");
    let parent_id = Some(parent.snapshot_id());
    let mut list = if v3 {
        ManifestListWriter::v3(
            out,
            snapshot_id,
            parent_id,
            sequence,
            Some(md.next_row_id()),
        )
    } else {
        ManifestListWriter::v2(out, snapshot_id, parent_id, sequence)
    };
    let before = table
        .manifest_list_reader(&parent)
        .load()
        .await
        .expect("list");
    list.add_manifests(before.entries().iter().cloned().chain([manifest]))
        .expect("manifests");
    list.close().await.expect("list");
    let summary = Summary {
        operation: Operation::Delete,
        additional_properties: [("engine-name".to_string(), engine.to_string())].into(),
    };
    let snapshot = Snapshot::builder()
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(parent_id)
        .with_sequence_number(sequence)
        .with_timestamp_ms(chrono::Utc::now().timestamp_millis())
        .with_manifest_list(list_path)
        .with_summary(summary)
        .with_schema_id(md.current_schema_id());
    // Deletes add no rows: a v3 snapshot's row range is empty.
    let snapshot = if v3 {
        snapshot.with_row_range(md.next_row_id(), 0).build()
    } else {
        snapshot.build()
    };
    commit_snapshot(catalog, table, snapshot).await;
}

/// Commits `snapshot` (written by another engine's writers) as the new head
/// of `main`, if `main` is still at its parent.
pub async fn commit_snapshot(
    catalog: &permafrost::lake::catalog::CatalogHandle,
    table: &iceberg::table::Table,
    snapshot: iceberg::spec::Snapshot,
) {
    use iceberg::spec::{SnapshotReference, SnapshotRetention};
    use iceberg::{TableRequirement, TableUpdate};
    let main = "main".to_string();
    let head = snapshot.snapshot_id();
    permafrost::lake::metadata_commit::commit(
        catalog,
        table,
        vec![TableRequirement::RefSnapshotIdMatch {
            r#ref: main.clone(),
            snapshot_id: snapshot.parent_snapshot_id(),
        }],
        vec![
            TableUpdate::AddSnapshot { snapshot },
            TableUpdate::SetSnapshotRef {
                ref_name: main,
                reference: SnapshotReference::new(
                    head,
                    SnapshotRetention::branch(None, None, None),
                ),
            },
        ],
    )
    .await
    .expect("commit");
}

/// Upgrades `table` to Iceberg format v3, as another engine would (Spark's
/// `'format-version'='3'`), with iceberg-rust's action.
pub async fn upgrade_to_v3(
    catalog: &permafrost::lake::catalog::CatalogHandle,
    table: &iceberg::table::Table,
) {
    use iceberg::transaction::{ApplyTransactionAction, Transaction};
    let tx = Transaction::new(table);
    let tx = tx
        .upgrade_table_version()
        .set_format_version(iceberg::spec::FormatVersion::V3)
        .apply(tx)
        .expect("upgrade");
    let table = tx.commit(catalog.iceberg()).await.expect("commit");
    assert_eq!(
        table.metadata().format_version(),
        iceberg::spec::FormatVersion::V3
    );
}

/// The type zoo (tests/sql/type_zoo.sql) for the server `c` talks to.  The
/// PostgreSQL 16 and 18 of `scripts/test --pg` are built without libxml,
/// and 16 without the contrib extensions: on a server that cannot parse an
/// `xml` value the zoo's two xml values are NULL, and where `citext` is not
/// available it is a domain over `text` of that name (same values); every
/// other value is the same.
pub async fn type_zoo_sql(c: &Client) -> String {
    let mut sql = include_str!("../sql/type_zoo.sql").to_string();
    if c.simple_query("SELECT '<x/>'::xml").await.is_err() {
        eprintln!("the server has no libxml: the zoo's xml values are NULL");
        for v in ["'<a b=\"c\">text</a>'", "'<x/>'"] {
            assert_eq!(sql.matches(v).count(), 1, "the zoo's xml value {v}");
            sql = sql.replace(v, "NULL");
        }
    }
    let citext: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'citext'",
            &[],
        )
        .await
        .expect("extensions")
        .get(0);
    if citext == 0 {
        eprintln!("the server has no citext: the zoo's citext is a domain over text");
        let ext = "CREATE EXTENSION IF NOT EXISTS citext;";
        assert_eq!(sql.matches(ext).count(), 1, "the zoo's citext");
        sql = sql.replace(ext, "CREATE DOMAIN citext AS text;");
    }
    sql
}
