//! AWS the way it runs in production.
//! - RDS/Aurora IAM authentication: the token equals the AWS SDK's own
//!   generator's (boto3) for fixed credentials and a fixed clock, logs in to a
//!   TLS Postgres whose role has that token as its password, and every new
//!   connection signs its own.
//! - Temporary credentials that expire and rotate: a credential process hands
//!   out keys living 12 seconds; a front in front of S3 and Glue refuses an
//!   expired or unknown key as AWS does.  Glue and S3 both keep working over a
//!   multi-batch archive because both sign with the refreshing chain.
//! - Glue updates keep what other tools set and skip Glue's version archive.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::common::*;
use crate::services;

const KEY: &str = "AKIDPERMAFROSTTEST";
const SECRET: &str = "permafrost/test/secret/key";
const SESSION: &str = "permafrost-session-token";

/// A database on the TLS cluster with two sensor tables (one connection
/// each), and a role `iam_…` allowed to archive them over TLS with a password.
async fn iam_setup() -> Option<(crate::connect::TlsDb, String)> {
    let db = crate::connect::tls_sample_db("iamdb").await?;
    let role = unique("iam");
    db.admin
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .expect("role");
    db.client
        .batch_execute(&format!(
            "CREATE TABLE sensor_readings_b (LIKE sensor_readings INCLUDING ALL);
             INSERT INTO sensor_readings_b SELECT * FROM sensor_readings;
             GRANT SELECT, DELETE ON sensor_readings, sensor_readings_b TO {role}"
        ))
        .await
        .expect("second table");
    Some((db, role))
}

/// boto3's `generate_db_auth_token` for `user@localhost:port` at `time`.
fn sdk_token(s: &Services, port: &str, user: &str, time: u64) -> String {
    let r = python(
        s,
        "rds_token.py",
        &json!({"host": "localhost", "port": port.parse::<u16>().expect("port"), "user": user,
                "region": "eu-west-1", "key": KEY, "secret": SECRET, "session_token": SESSION,
                "time": time}),
    );
    r["token"].as_str().expect("token").to_string()
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn rds_iam_tokens_equal_the_sdk_and_every_connection_signs_its_own() {
    let s = services!();
    let Some((db, role)) = iam_setup().await else {
        assert!(
            std::env::var("PERMAFROST_TEST_REQUIRE").is_err(),
            "TLS cluster missing"
        );
        eprintln!("skipped: no TLS cluster");
        return;
    };
    let (port, dbname, pki, c) = (&db.port, &db.dbname, &db.pki, &db.client);
    let time = 1_790_000_000;
    let token = sdk_token(&s, port, &role, time);
    let ours = permafrost::aws::rds_auth_token(
        aws_credential_types::Credentials::new(KEY, SECRET, Some(SESSION.into()), None, "test"),
        "eu-west-1",
        "localhost",
        port.parse().expect("port"),
        &role,
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(time),
    )
    .expect("token");
    assert_eq!(ours, token, "permafrost's token differs from boto3's");
    db.admin
        .batch_execute(&format!("ALTER ROLE {role} PASSWORD '{token}'"))
        .await
        .expect("password");

    let ws = Ws::new();
    let cat = CatalogSetup::new(Cat::Sqlite, &s, &ws).await;
    let yaml = |extra: &str, sslmode: &str| {
        format!(
            "database:\n  dsn: \"host=localhost port={port} user={role} dbname={dbname} sslmode={sslmode} \
             sslrootcert={}\"\n  iam_auth: true\n  iam_region: eu-west-1\n{extra}{}global:\n  namespace: {}\n\
             tables:\n  - name: sensor_readings\n    timestamp_column: recorded_at\n    lag: 15d\n\
             \x20   parallel_windows: 1\n\
             \x20 - name: sensor_readings_b\n    timestamp_column: recorded_at\n    lag: 15d\n\
             \x20   parallel_windows: 1\n",
            pki.join("ca.pem").display(),
            cat.yaml,
            cat.namespace
        )
    };
    let env = |clock: u64| {
        vec![
            ("AWS_ACCESS_KEY_ID", KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.to_string()),
            ("AWS_SESSION_TOKEN", SESSION.to_string()),
            ("AWS_CONFIG_FILE", "/dev/null".to_string()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".to_string()),
            ("PERMAFROST_FAULT_CLOCK", clock.to_string()),
        ]
    };
    let run = |cfg: &std::path::Path, env: &[(&str, String)], args: &[&str]| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut all = vec!["--log-level", "debug", "archive", "-c"];
        let cfg = cfg.to_string_lossy().to_string();
        all.push(&cfg);
        all.extend_from_slice(args);
        ws.run_env(&all, &env)
    };
    let total = count(c, "sensor_readings", "true").await;

    // Refused before connecting: a password besides IAM, TLS turned off.
    for (what, cfg, needle) in [
        (
            "password too",
            yaml("  password: hunter2\n", "verify-full"),
            "a password is configured too",
        ),
        ("no TLS", yaml("", "disable"), "needs TLS"),
    ] {
        let out = run(&ws.config("bad.yaml", &cfg), &env(time), &[]);
        assert_eq!(out.code, 2, "{what}: {}", out.stderr);
        assert_eq!(out.error_lines().len(), 1, "{what}: {}", out.stderr);
        assert!(
            out.error_lines()[0].contains(needle),
            "{what}: {}",
            out.stderr
        );
    }
    // A token signed a minute later is another password: one line, exit 4,
    // nothing deleted.
    let cfg = ws.config("iam.yaml", &yaml("", "verify-full"));
    let out = run(&cfg, &env(time + 60), &[]);
    assert_eq!(out.code, 4, "a refused login exits 4: {}", out.stderr);
    assert!(out.stderr.contains("rds_iam"), "{}", out.stderr);
    assert!(
        out.error_lines()
            .iter()
            .all(|l| l.contains("password authentication failed")),
        "{}",
        out.stderr
    );
    assert_eq!(count(c, "sensor_readings", "true").await, total);

    // The right clock: both tables archive, each on its own connection with
    // its own freshly signed token; the token never appears in the output.
    let out = run(&cfg, &env(time), &["--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let archived = archived_rows(&out.json());
    assert!(archived > 0 && archived.is_multiple_of(2), "{archived}");
    assert_eq!(
        count(c, "sensor_readings", "true").await,
        total - archived as i64 / 2
    );
    let signed = out
        .stderr
        .matches(&format!(
            "signed an RDS IAM token for {role}@localhost:{port}"
        ))
        .count();
    assert_eq!(signed, 2, "one token per connection:\n{}", out.stderr);
    let sig = token.rsplit('=').next().expect("signature");
    assert!(
        !out.stderr.contains(sig) && !out.stdout.contains(sig),
        "token leaked"
    );
}

/// A credential process whose keys live `PF_KEY_LIFE` seconds (default 12:
/// shorter than both clients' refresh margins — the SDK's 10 s plus a
/// jitter of up to 5 s of the expiry, our 20 s — so no key is used more
/// than 7 s after it was given, far less than its life; reqsign refuses
/// keys that live much less), recording every key it gives — and the
/// checking front (`tests/py/aws_proxy.py`) for S3 (SeaweedFS) and Glue
/// (moto), which refuses unknown and expired keys.  Tests that set a long
/// life check that keys are held instead.
struct RotatingAws {
    dir: tempfile::TempDir,
    child: Child,
    s3: String,
    glue: String,
    /// The REST front ([`Self::vending`]).
    rest: String,
}

impl RotatingAws {
    fn start(s: &Services) -> Self {
        Self::in_front_of(s, &s.s3)
    }

    /// The front with S3 requests going to `s3`.
    fn in_front_of(s: &Services, s3: &str) -> Self {
        Self::spawn(s, s3, None, &[])
    }

    /// The front before the test services' S3 and REST catalog, the latter
    /// vending keys that live `life` seconds with every table it loads and
    /// handing out tokens that live `token_life` seconds, every S3 request
    /// `delay_ms` late (an object store across a network).
    fn vending(s: &Services, life: u32, token_life: u32, delay_ms: u32) -> Self {
        let (life, token_life) = (life.to_string(), token_life.to_string());
        let delay = delay_ms.to_string();
        let env = [
            ("PF_VENDED_LIFE", life.as_str()),
            ("PF_TOKEN_LIFE", &token_life),
            ("PF_S3_DELAY_MS", &delay),
        ];
        Self::spawn(s, &s.s3, Some(&s.rest), &env)
    }

    fn spawn(s: &Services, s3: &str, rest: Option<&str>, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(
            d.join("cred.sh"),
            format!(
                "#!/bin/sh\n# Temporary credentials, recorded for the front.\n\
                 now=$(date +%s); exp=$((now + ${{PF_KEY_LIFE:-12}})); key=\"ROT$(date +%s%N)$$\"\n\
                 printf '{{\"key\":\"%s\",\"expires\":%s}}\\n' \"$key\" \"$exp\" >> {ledger}\n\
                 printf '{{\"Version\":1,\"AccessKeyId\":\"%s\",\"SecretAccessKey\":\"s-%s\",\"SessionToken\":\"t-%s\",\"Expiration\":\"%s\"}}\\n' \
                 \"$key\" \"$key\" \"$key\" \"$(date -u -d @$exp +%Y-%m-%dT%H:%M:%SZ)\"\n",
                ledger = d.join("ledger").display(),
            ),
        )
        .expect("cred.sh");
        std::fs::write(
            d.join("config"),
            format!(
                "[profile rotating]\nregion = us-east-1\ncredential_process = sh {}\n",
                d.join("cred.sh").display()
            ),
        )
        .expect("aws config");
        let mut child = Command::new(&s.python)
            .arg(source_dir().join("tests/py/aws_proxy.py"))
            .arg(d.join("ledger"))
            .arg(d.join("log"))
            .args([s3, &s.glue])
            .args(rest)
            .envs(env.iter().copied())
            .env("AWS_ACCESS_KEY_ID", &s.key)
            .env("AWS_SECRET_ACCESS_KEY", &s.secret)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the AWS front");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ports");
        let ports: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(ports.len(), 2 + rest.iter().len(), "front printed {line:?}");
        Self {
            s3: format!("http://127.0.0.1:{}", ports[0]),
            glue: format!("http://127.0.0.1:{}", ports[1]),
            rest: ports
                .get(2)
                .map(|p| format!("http://127.0.0.1:{p}"))
                .unwrap_or_default(),
            dir,
            child,
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "AWS_CONFIG_FILE",
                self.dir.path().join("config").display().to_string(),
            ),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".to_string()),
        ]
    }

    /// A key the front knows, expired long ago.
    fn expired_key(&self) -> String {
        let key = "ROTEXPIRED".to_string();
        let mut ledger = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("ledger"))
            .expect("ledger");
        use std::io::Write;
        writeln!(ledger, "{{\"key\":\"{key}\",\"expires\":1}}").expect("write");
        key
    }

    fn log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("log line"))
            .collect()
    }
}

impl Drop for RotatingAws {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The requests of `log` to `service` (`s3`, `glue`) and the distinct
/// access keys they were signed with.
fn signed_by<'a>(log: &'a [Value], service: &str) -> (usize, std::collections::BTreeSet<&'a str>) {
    let requests: Vec<&Value> = log.iter().filter(|e| e["service"] == service).collect();
    let keys = requests.iter().filter_map(|e| e["key"].as_str()).collect();
    (requests.len(), keys)
}

/// The longest time, in seconds, between the first and the last request of
/// `service` signed with the same key.
fn longest_held(log: &[Value], service: &str) -> f64 {
    let mut uses: std::collections::BTreeMap<&str, (f64, f64)> = Default::default();
    for e in log.iter().filter(|e| e["service"] == service) {
        let (Some(key), Some(t)) = (e["key"].as_str(), e["t"].as_f64()) else {
            continue;
        };
        let span = uses.entry(key).or_insert((t, t));
        span.0 = span.0.min(t);
        span.1 = span.1.max(t);
    }
    uses.values().map(|(a, b)| b - a).fold(0.0, f64::max)
}

/// Seconds between the first and the last request of `service`.
fn span_of(log: &[Value], service: &str) -> f64 {
    let times: Vec<f64> = log
        .iter()
        .filter(|e| e["service"] == service)
        .filter_map(|e| e["t"].as_f64())
        .collect();
    let first = times.iter().copied().fold(f64::INFINITY, f64::min);
    let last = times.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if times.is_empty() { 0.0 } else { last - first }
}

/// A Glue client straight to moto, as another tool would use it.
async fn glue_client(s: &Services) -> aws_sdk_glue::Client {
    let sdk = permafrost::aws::sdk_config(&permafrost::aws::ChainSettings {
        region: Some("us-east-1"),
        static_keys: Some((&s.key, &s.secret, None)),
        endpoint: Some(&s.glue),
        ..Default::default()
    })
    .await;
    aws_sdk_glue::Client::new(&sdk)
}

/// The Glue table `sensor_readings` of database `ns`.
async fn sensor_table(glue: &aws_sdk_glue::Client, ns: &str) -> aws_sdk_glue::types::Table {
    glue.get_table()
        .database_name(ns)
        .name("sensor_readings")
        .send()
        .await
        .expect("get_table")
        .table
        .expect("table")
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn glue_and_s3_keep_working_while_credentials_expire_and_rotate() {
    let s = services!();
    let front = RotatingAws::start(&s);
    let db = TestDb::create(&s, "rotate").await;
    let c = db.client().await;
    load_sample(&c, 3_000).await;
    let total = count(&c, "sensor_readings", "true").await;
    let ws = Ws::new();
    let ns = unique("rot");
    let warehouse = format!("s3://archive/{}", unique("rot"));
    let yaml = |keys: &str| {
        format!(
            "database:\n  dsn: \"{}\"\ncatalog:\n  type: glue\n  name: glue\n  uri: \"{}\"\n  warehouse: \"{warehouse}\"\n\
             \x20 profile_name: rotating\n{keys}  s3.endpoint: \"{}\"\n  s3.path-style-access: true\nglobal:\n  namespace: {ns}\n\
             tables:\n  - name: sensor_readings\n    timestamp_column: recorded_at\n    partition_by: day\n    lag: 15d\n    batch_windows: 1\n",
            db.dsn, front.glue, front.s3
        )
    };
    let env = front.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // Keys the config pins that have expired: one line, nothing deleted.
    let expired = front.expired_key();
    let cfg = ws.config(
        "expired.yaml",
        &yaml(&format!(
            "  aws_access_key_id: {expired}\n  aws_secret_access_key: x\n"
        )),
    );
    let out = ws.run_env(&["archive", "-c", &cfg.to_string_lossy()], &env);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert_eq!(out.error_lines().len(), 1, "{}", out.stderr);
    assert!(
        out.error_lines()[0].contains("ExpiredToken"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("hint: the keys expired"),
        "{}",
        out.stderr
    );
    assert_eq!(count(&c, "sensor_readings", "true").await, total);

    // The chain (credential_process): every request signed with keys that
    // are still valid, however long the run.
    let cfg = ws.config("rotating.yaml", &yaml(""));
    let cfg = cfg.to_string_lossy().to_string();
    let before = front.log().len();
    let out = ws.run_env(&["archive", "-c", &cfg, "--json"], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.json();
    let batches = report[0]["batches"].as_array().map(Vec::len).unwrap_or(0);
    assert!(batches >= 3, "{report}");
    let archived = archived_rows(&report);
    assert_eq!(
        count(&c, "sensor_readings", "true").await,
        total - archived as i64
    );
    let log: Vec<Value> = front.log().split_off(before);
    let refused: Vec<&Value> = log.iter().filter(|e| e["ok"] != true).collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    let span = log.last().and_then(|e| e["t"].as_f64()).unwrap_or(0.0)
        - log.first().and_then(|e| e["t"].as_f64()).unwrap_or(0.0);
    eprintln!("{} requests over {span:.1} s, {batches} batches", log.len());
    // Rotation, whatever the run's speed: S3 asks again for every request
    // (our margin is longer than the keys' life); no key of either is used
    // longer than the SDK's refresh point allows, so a Glue run that spans
    // more than that has rotated.
    let (n, keys) = signed_by(&log, "s3");
    assert!(
        keys.len() >= 3 && 2 * keys.len() >= n,
        "S3: {} keys, {n} requests",
        keys.len()
    );
    for service in ["s3", "glue"] {
        let held = longest_held(&log, service);
        assert!(
            held <= 7.5,
            "{service} used a key {held:.1} s after it was first used"
        );
    }
    let (_, keys) = signed_by(&log, "glue");
    let glue_span = span_of(&log, "glue");
    eprintln!("glue: {} keys over {glue_span:.1} s", keys.len());
    assert!(
        glue_span <= 7.5 || keys.len() >= 2,
        "Glue did not rotate over {glue_span:.1} s"
    );

    let updates: Vec<&Value> = log
        .iter()
        .filter(|e| {
            e["target"]
                .as_str()
                .is_some_and(|t| t.ends_with("UpdateTable"))
        })
        .collect();
    assert!(updates.len() >= batches, "{updates:?}");
    for u in &updates {
        assert_eq!(u["body"]["SkipArchive"], true, "{u}");
    }
    assert!(!out.stderr.contains("s-ROT"), "secret in logs");

    // Another tool sets a description, an owner and a parameter; our next
    // commit keeps them and moves `previous_metadata_location` along.
    let glue = glue_client(&s).await;
    let table = sensor_table(&glue, &ns).await;
    let mut params = table.parameters().cloned().unwrap_or_default();
    params.insert("team".into(), "sensors".into());
    let location = params["metadata_location"].clone();
    let input = aws_sdk_glue::types::TableInput::builder()
        .name("sensor_readings")
        .description("kept by other tools")
        .owner("data-eng")
        .table_type("EXTERNAL_TABLE")
        .set_parameters(Some(params))
        .set_storage_descriptor(table.storage_descriptor().cloned())
        .build()
        .expect("input");
    glue.update_table()
        .database_name(&ns)
        .table_input(input)
        .send()
        .await
        .expect("update_table");
    // Ten minutes inside one day (from its midnight), so one window and one
    // commit whatever the hour: `now() - 400 days + g minutes` crossed
    // midnight when the suite ran just before it, and made two commits.
    c.batch_execute(
        "INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, value, unit)
         SELECT date_trunc('day', now() - interval '400 days', 'UTC') + g * interval '1 minute',
                1, 'sensor-1', 1.5, 'celsius'
         FROM generate_series(1, 10) g",
    )
    .await
    .expect("older rows");
    // Keys that live two minutes: S3 holds them for half of it instead of
    // asking the chain again for every request (one STS, instance metadata
    // or credential_process call per file read or written).
    let mut env = env.clone();
    env.push(("PF_KEY_LIFE", "120"));
    let before = front.log().len();
    let out = ws.run_env(&["archive", "-c", &cfg, "--json"], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(archived_rows(&out.json()), 10);
    let log = front.log().split_off(before);
    let (s3, keys) = signed_by(&log, "s3");
    assert!(s3 >= 5, "S3 requests: {log:?}");
    assert_eq!(keys.len(), 1, "{s3} S3 requests signed with {keys:?}");
    let (glue_requests, keys) = signed_by(&log, "glue");
    assert!(glue_requests >= 2, "Glue requests: {log:?}");
    assert_eq!(
        keys.len(),
        1,
        "{glue_requests} Glue requests signed with {keys:?}"
    );
    let after = sensor_table(&glue, &ns).await;
    let p = after.parameters().cloned().unwrap_or_default();
    assert_eq!(p.get("team").map(String::as_str), Some("sensors"));
    assert_eq!(after.description(), Some("kept by other tools"));
    assert_eq!(after.owner(), Some("data-eng"));
    assert_ne!(p["metadata_location"], location);
    assert_eq!(p["previous_metadata_location"], location);
    assert_eq!(p["table_type"], "ICEBERG");
}

/// Checks the requests `log` holds (one command's) outlived a vended
/// key's `life` without a refusal: S3 signed with two keys or more.
fn outlived_keys(log: &[Value], what: &str, life: f64) {
    let refused: Vec<&Value> = log.iter().filter(|e| e["ok"] != true).collect();
    assert!(refused.is_empty(), "{what}: refused: {refused:?}");
    let (requests, keys) = signed_by(log, "s3");
    let span = span_of(log, "s3");
    eprintln!(
        "{what}: {requests} S3 requests over {span:.1} s with {} keys",
        keys.len()
    );
    assert!(
        span > life && keys.len() >= 2,
        "{what}: {keys:?} over {span:.1} s"
    );
}

/// What [`archive_with_the_chain`] leaves for the rest of a test.
struct ChainRun {
    ws: Ws,
    cfg: String,
    env: Vec<(&'static str, String)>,
    /// S3 requests the archive made.
    s3: usize,
}

impl ChainRun {
    fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
}

/// Archives 600 rows of the sample table into the catalog `catalog` writes
/// (a config's `catalog:` section, given the workspace) with no S3 keys but
/// the AWS profile's `credential_process`, whose keys live two minutes, and
/// checks the chain's keys were held: every request accepted, every S3
/// request signed with one key, the archived rows gone from Postgres.
async fn archive_with_the_chain(
    s: &Services,
    front: &RotatingAws,
    name: &str,
    catalog: impl FnOnce(&Ws) -> String,
) -> ChainRun {
    let db = TestDb::create(s, name).await;
    let c = db.client().await;
    load_sample(&c, 600).await;
    let total = count(&c, "sensor_readings", "true").await;
    let ws = Ws::new();
    let yaml = format!(
        "database:\n  dsn: \"{}\"\ncatalog:\n{}tables:\n  - name: sensor_readings\n\
         \x20   timestamp_column: recorded_at\n    partition_by: day\n    lag: 15d\n",
        db.dsn,
        catalog(&ws)
    );
    let cfg = ws
        .config("permafrost.yaml", &yaml)
        .to_string_lossy()
        .to_string();
    let mut env = front.env();
    env.push(("AWS_PROFILE", "rotating".into()));
    env.push(("PF_KEY_LIFE", "120".into()));
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = ws.run_env(&["archive", "-c", &cfg, "--json"], &env_refs);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let archived = archived_rows(&out.json());
    assert!(archived > 0, "{}", out.stdout);
    assert_eq!(
        count(&c, "sensor_readings", "true").await,
        total - archived as i64
    );
    let log = front.log();
    let (s3, keys) = signed_by(&log, "s3");
    assert!(log.iter().all(|e| e["ok"] == true), "refused: {log:?}");
    assert!(s3 >= 10, "{s3} S3 requests");
    assert_eq!(keys.len(), 1, "{s3} S3 requests signed with {keys:?}");
    ChainRun { ws, cfg, env, s3 }
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_sql_catalog_on_s3_without_keys_signs_with_the_aws_chain_and_holds_its_keys() {
    let s = services!();
    let front = RotatingAws::start(&s);
    archive_with_the_chain(&s, &front, "sqlchain", |ws| {
        format!(
            "  type: sql\n  uri: \"sqlite://{}/cat.db?mode=rwc\"\n  warehouse: s3://archive/{}\n\
             \x20 s3.endpoint: \"{}\"\n  s3.region: us-east-1\n  s3.path-style-access: true\n",
            ws.path().display(),
            unique("sqlchain"),
            front.s3
        )
    })
    .await;
}

/// A REST catalog whose tables come without keys (none in the config, none
/// vended; SeaweedFS hands out the front as the tables' `s3.endpoint`):
/// S3 is signed with the AWS chain's keys, held, not asked for per request.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_rest_catalog_without_vended_keys_signs_s3_with_the_aws_chain_and_holds_its_keys() {
    let s = services!();
    let mut weed = Weed::unstarted(&s);
    let front = RotatingAws::in_front_of(&s, &weed.s3);
    weed.args.push(format!("-s3.externalUrl={}", front.s3));
    weed.spawn().await;
    let run = archive_with_the_chain(&s, &front, "restchain", |_| {
        format!(
            "  type: rest\n  name: rest\n  uri: {}\n  warehouse: s3://warehouse\n\
             \x20 credential: \"{}:{}\"\n  s3.region: us-east-1\n  s3.path-style-access: true\n",
            weed.rest, s.key, s.secret
        )
    })
    .await;
    let (ws, cfg, env, s3) = (&run.ws, &run.cfg, run.env(), run.s3);
    // `maintain` reads the table after its expiry commit and lists the
    // storage for orphans: through the table's endpoint, with held keys.
    let out = ws.run_env(
        &[
            "maintain",
            "-c",
            cfg,
            "--older-than",
            "0s",
            "--retain-last",
            "1",
            "--json",
        ],
        &env,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rep = out.json();
    assert!(rep[0]["snapshots_expired"].as_u64() > Some(0), "{rep}");
    assert_eq!(rep[0]["data_manifests_after"], 1, "{rep}");
    let log = front.log();
    let (after, keys) = signed_by(&log, "s3");
    assert!(log.iter().all(|e| e["ok"] == true), "refused: {log:?}");
    assert!(after > s3, "maintain made no S3 request");
    assert_eq!(keys.len(), 2, "one key per process: {keys:?}");
}

/// A REST catalog that vends S3 keys with every table it loads (asked to
/// by `header.X-Iceberg-Access-Delegation` in the config), living three
/// seconds (`s3.session-token-expires-at-ms`, as Polaris or Unity state
/// theirs), and an object store 80 ms away: a run of 20 batches outlives
/// several keys, and every S3 request is signed with one still valid — the
/// table is loaded again once half a key's life is gone — without a load
/// per request.  The catalog's OAuth2 tokens live two seconds (its token
/// endpoint says so): the catalog client's token is renewed too.  (Before,
/// the run kept the keys of its first load and failed with `ExpiredToken`
/// after three seconds, and the catalog refused its token after two.)
/// A database with `days` of hourly rows in `readings`, and a workspace
/// whose config archives them daily into the REST catalog behind `front`
/// (vended credentials asked for), with `table` added to the table's keys.
async fn hourly_behind_front(
    s: &Services,
    front: &RotatingAws,
    name: &str,
    days: u32,
    table: &str,
) -> (TestDb, Ws, std::path::PathBuf) {
    let db = TestDb::create(s, name).await;
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE readings (recorded_at timestamptz NOT NULL, v int NOT NULL);
             INSERT INTO readings
             SELECT date_trunc('day', now() - interval '30 days', 'UTC') + g * interval '1 hour', g
             FROM generate_series(0, {days} * 24 - 1) g"
        ))
        .await
        .expect("data");
    let ws = Ws::new();
    let yaml = format!(
        "database:\n  dsn: \"{}\"\ncatalog:\n  type: rest\n  name: rest\n  uri: {}\n\
         \x20 warehouse: s3://warehouse\n  credential: \"{}:{}\"\n\
         \x20 header.X-Iceberg-Access-Delegation: vended-credentials\nglobal:\n  namespace: {}\n\
         tables:\n  - name: readings\n    timestamp_column: recorded_at\n    partition_by: day\n\
         \x20   lag: 1d\n    {table}\n",
        db.dsn,
        front.rest,
        s.key,
        s.secret,
        unique(name)
    );
    let cfg = ws.config("permafrost.yaml", &yaml);
    (db, ws, cfg)
}

/// `archive` of the 20 days of hourly rows [`hourly_behind_front`] makes
/// (config `cfg`, environment `env`), checked: one batch per day, every row
/// archived and gone from Postgres; with the front's log, checked to hold
/// no refused request.
async fn archive_twenty_days(
    ws: &Ws,
    cfg: &str,
    env: &[(&str, &str)],
    c: &tokio_postgres::Client,
    front: &RotatingAws,
) -> (Out, Vec<Value>) {
    let out = ws.run_env(&["archive", "-c", cfg, "--json"], env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.json();
    let batches = report[0]["batches"].as_array().map(Vec::len);
    assert_eq!(batches, Some(20), "{report}");
    assert_eq!(archived_rows(&report), 480);
    assert_eq!(count(c, "readings", "true").await, 0);
    let log = front.log();
    let refused: Vec<&Value> = log.iter().filter(|e| e["ok"] != true).collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    (out, log)
}

/// `restore` of every archived row of `readings` into `back` (config
/// `cfg`), checked to succeed.
fn restore_everything(ws: &Ws, cfg: &str) -> Out {
    let out = ws.run(&[
        "restore",
        "-c",
        cfg,
        "-t",
        "readings",
        "--from",
        "2000-01-01",
        "--to",
        "2100-01-01",
        "--into",
        "back",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out
}

/// permafrost sends its batch commits to a REST catalog itself (iceberg-rust
/// only prepares them) with the token iceberg-rust's calls use too, exchanged
/// once for both and kept between commits: a token the
/// catalog stops taking before its stated life (revoked between two
/// commits) is exchanged again and the commit sent once more — landing
/// once, every row archived.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_batch_commit_whose_token_was_revoked_renews_it_and_lands_once() {
    let s = services!();
    let front = RotatingAws::vending(&s, 600, 600, 0);
    let (db, ws, cfg) = hourly_behind_front(&s, &front, "revoked", 3, "parallel_windows: 1").await;
    let c = db.client().await;
    let cfg = cfg.to_string_lossy();
    let pause = Pause::new();
    let child = ws.spawn(
        &["archive", "-c", &cfg, "--json"],
        &[("PERMAFROST_PAUSE", pause.env("after-commit").as_str())],
    );
    let Some(held) = pause.wait_reached(std::time::Duration::from_secs(120)) else {
        panic!("never reached after-commit:\n{}", finish(child).stderr);
    };
    let before = front.log().len();
    // One exchange for the run so far: iceberg-rust's calls and the
    // commits share the token.
    let exchanged = front.log().iter().filter(|e| e["token"].is_u64()).count();
    assert_eq!(exchanged, 1, "{:?}", front.log());
    permafrost::http::install_crypto_provider();
    let revoked = reqwest::Client::new()
        .post(format!("{}/__expire_tokens", front.rest))
        .send()
        .await;
    assert_eq!(revoked.expect("revoke").status(), 204);
    Pause::resume(held);
    let out = finish(child);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.json();
    assert_eq!(
        report[0]["batches"].as_array().map(Vec::len),
        Some(3),
        "{report}"
    );
    assert_eq!(archived_rows(&report), 72);
    assert_eq!(count(&c, "readings", "true").await, 0);
    let log = front.log().split_off(before);
    let refused: Vec<&Value> = log.iter().filter(|e| e["ok"] == false).collect();
    assert!(
        !refused.is_empty(),
        "the revoked token was not refused: {log:?}"
    );
    assert_eq!(refused[0]["method"], "POST", "{refused:?}");
    assert!(
        refused[0]["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("/tables/readings")),
        "the second batch's commit was refused first: {refused:?}"
    );
    // Renewed once, for the commit and iceberg-rust's calls after it.
    let renewed = log.iter().filter(|e| e["token"].is_u64()).count();
    assert_eq!(renewed, 1, "{log:?}");
    assert!(
        !out.stderr.contains("preparing the commit again"),
        "sent again as prepared, not prepared again:\n{}",
        out.stderr
    );
    // Landed once: three snapshots, one per batch.
    let out = ws.run(&["snapshots", "-c", &cfg, "-t", "readings", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.json().as_array().map(Vec::len),
        Some(3),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn keys_a_rest_catalog_vends_are_renewed_before_they_expire() {
    const LIFE: f64 = 3.0;
    const TOKEN_LIFE: f64 = 2.0;
    let s = services!();
    let front = RotatingAws::vending(&s, LIFE as u32, TOKEN_LIFE as u32, 80);
    let (db, ws, cfg) = hourly_behind_front(&s, &front, "vended", 20, "batch_windows: 1").await;
    let c = db.client().await;
    let (out, log) = archive_twenty_days(&ws, &cfg.to_string_lossy(), &[], &c, &front).await;
    let vended: Vec<&str> = log.iter().filter_map(|e| e["vended"].as_str()).collect();
    let (requests, keys) = signed_by(&log, "s3");
    let span = span_of(&log, "s3");
    eprintln!(
        "{requests} S3 requests over {span:.1} s with {} keys; {} loads vended keys",
        keys.len(),
        vended.len()
    );
    // The run outlived a key's life (the delay sees to it), so it renewed.
    assert!(span > LIFE, "the run took {span:.1} s only");
    assert!(keys.len() >= 2, "S3 signed with {keys:?} over {span:.1} s");
    assert!(
        keys.iter().all(|k| vended.contains(k)),
        "S3 signed with keys the catalog did not vend: {keys:?}"
    );
    // Renewed when due, not per request or per batch: a load per half
    // life, give or take the run's own loads (the plan, the first commit).
    let due = (span / (LIFE / 2.0)).ceil() as usize;
    assert!(
        vended.len() <= due + 4 && vended.len() < requests / 4,
        "{} loads for {requests} requests over {span:.1} s",
        vended.len()
    );
    assert!(!out.stderr.contains("s-VEND"), "secret in logs");
    // Tokens: learnt, first, and renewed once half their life was gone.
    let tokens = log.iter().filter(|e| e["token"].is_u64()).count();
    assert!(
        tokens as f64 >= 2.0 + (span / TOKEN_LIFE).floor(),
        "{tokens} tokens over {span:.1} s"
    );

    // A restore reads the 20 files with keys renewed the same way.
    let before = front.log().len();
    let cfg = cfg.to_string_lossy();
    let out = restore_everything(&ws, &cfg);
    let report = out.json();
    assert_eq!(
        (report["rows"].as_u64(), &report["valid"]),
        (Some(480), &json!(true))
    );
    assert_eq!(count(&c, "back", "true").await, 480);
    outlived_keys(&front.log()[before..], "restore", LIFE);

    // A `fetch` of every row: each file read with the keys of its moment.
    let before = front.log().len();
    let args = [
        "fetch",
        "-c",
        &cfg,
        "-t",
        "readings",
        "--from",
        "2000-01-01",
    ];
    let out = ws.run(&[&args[..], &["--to", "2100-01-01", "--format", "jsonl"]].concat());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 480);
    outlived_keys(&front.log()[before..], "fetch", LIFE);

    // `maintain` compacts the days (each a file of its own batch and one of
    // late rows; the newest batches' files stay, not yet known settled) and
    // sweeps orphans: every partition read and written, and the commit's
    // manifests, with the keys of its moment.  (Before, it kept the keys
    // of its first load.)
    c.batch_execute(
        "INSERT INTO readings
         SELECT date_trunc('day', now() - interval '30 days', 'UTC') + d * interval '1 day' + interval '30 minutes', -d
         FROM generate_series(0, 19) d",
    )
    .await
    .expect("late rows");
    let out = ws.run(&["archive", "-c", &cfg, "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(archived_rows(&out.json()), 20);
    let before = front.log().len();
    let out = ws.run(&[
        "maintain",
        "-c",
        &cfg,
        "--json",
        "--orphan-older-than",
        "1h",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let m = out.json();
    let days = m[0]["compacted"]["partitions"].as_u64().unwrap_or(0);
    assert!(days >= 15, "{m}");
    assert_eq!(m[0]["compacted"]["rows"], json!(days * 25), "{m}");
    outlived_keys(&front.log()[before..], "maintain", LIFE);
    let out = ws.run(&[&args[..], &["--to", "2100-01-01", "--format", "jsonl"]].concat());
    assert_eq!(out.stdout.lines().count(), 500, "{}", out.stderr);

    // `serve` holds one catalog handle for its life: a token the catalog
    // stops taking before its time (revoked) is renewed at the next reads,
    // once for all of them, and the API answers.
    // (The test's `serve` helper is built with the `query` feature.)
    #[cfg(feature = "query")]
    {
        let args = ["-c", &cfg, "--listen", "127.0.0.1:0", "--insecure-no-auth"];
        let srv = crate::serve::Server::start(&ws, &args, &[]);
        permafrost::http::install_crypto_provider();
        let http = reqwest::Client::new();
        let table = || http.get(srv.api("/tables/readings")).send();
        assert_eq!(table().await.expect("request").status(), 200);
        let before = front.log().len();
        let revoked = http
            .post(format!("{}/__expire_tokens", front.rest))
            .send()
            .await;
        assert_eq!(revoked.expect("revoke").status(), 204);
        // Four requests at once: each may be refused, the token is
        // exchanged once for all of them.
        let answers = futures::future::join_all((0..4).map(|_| table())).await;
        for answer in answers {
            let answer = answer.expect("request");
            assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
        }
        let log = front.log().split_off(before);
        let refusals = log.iter().filter(|e| e["why"] == "token expired").count();
        let renewed = log.iter().filter(|e| e["token"].is_u64()).count();
        eprintln!("{refusals} refusal(s) of the revoked token, {renewed} exchange(s)");
        assert!(refusals <= 4, "{log:?}");
        assert_eq!(renewed, 1, "{log:?}");
        assert_eq!(srv.stop(), 0);
    }
}

/// A REST catalog that takes AWS SigV4 instead of OAuth2 (S3 Tables' kind,
/// `rest.sigv4-enabled`), behind an AWS front that checks every catalog
/// request's key (known, unexpired) and its signature (botocore), as AWS
/// does: the AWS profile's `credential_process` gives keys living 22 s,
/// which permafrost asks for again once 20 s are left; the run (20 batches,
/// S3 80 ms away) outlives that several times. Every catalog request —
/// loads, the table's creation, each batch's commit — is accepted, signed
/// with more than one key over the run but not a key per request, and
/// every row is archived once.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_sigv4_rest_catalog_is_signed_with_the_chains_keys_renewed_as_they_expire() {
    let s = services!();
    let mut weed = Weed::unstarted(&s);
    let env = [("PF_REST_SIGV4", "s3tables"), ("PF_S3_DELAY_MS", "80")];
    let front = RotatingAws::spawn(&s, &weed.s3, Some(&weed.rest), &env);
    weed.args.push(format!("-s3.externalUrl={}", front.s3));
    weed.spawn().await;
    let db = TestDb::create(&s, "sigv4").await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE readings (recorded_at timestamptz NOT NULL, v int NOT NULL);
         INSERT INTO readings
         SELECT date_trunc('day', now() - interval '30 days', 'UTC') + g * interval '1 hour', g
         FROM generate_series(0, 20 * 24 - 1) g",
    )
    .await
    .expect("data");
    let ws = Ws::new();
    let yaml = format!(
        "database:\n  dsn: \"{}\"\ncatalog:\n  type: rest\n  name: s3tables\n  uri: {}\n\
         \x20 warehouse: s3://warehouse\n  rest.sigv4-enabled: true\n\
         \x20 rest.signing-name: s3tables\n  rest.signing-region: us-east-1\n\
         \x20 s3.region: us-east-1\n  s3.path-style-access: true\nglobal:\n  namespace: {}\n\
         tables:\n  - name: readings\n    timestamp_column: recorded_at\n    partition_by: day\n\
         \x20   lag: 1d\n    batch_windows: 1\n",
        db.dsn,
        front.rest,
        unique("sigv4")
    );
    let cfg = ws.config("permafrost.yaml", &yaml);
    let mut env = front.env();
    env.push(("AWS_PROFILE", "rotating".into()));
    env.push(("PF_KEY_LIFE", "22".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (out, log) = archive_twenty_days(&ws, &cfg.to_string_lossy(), &env, &c, &front).await;
    let (requests, keys) = signed_by(&log, "rest");
    let commits = log
        .iter()
        .filter(|e| e["service"] == "rest" && e["method"] == "POST")
        .count();
    let span = span_of(&log, "rest");
    eprintln!(
        "{requests} catalog requests ({commits} POST) over {span:.1} s with {} keys",
        keys.len()
    );
    assert!(commits >= 20, "{commits} POSTs for 20 batches");
    assert!(span > 3.0, "the run took {span:.1} s only");
    assert!(keys.len() >= 2, "signed with {keys:?} over {span:.1} s");
    assert!(
        keys.len() <= (span / 2.0).ceil() as usize + 2 && keys.len() < requests / 4,
        "{} keys for {requests} requests over {span:.1} s: asked per request",
        keys.len()
    );
    assert!(!out.stderr.contains("s-ROT"), "secret in logs");
}

/// A REST catalog that vends S3 keys in the load's `storage-credentials`
/// only (the REST spec's place since Iceberg 1.7; Lakekeeper's), not in its
/// `config`, which iceberg-rust 0.10.1 alone reads: the keys are taken from
/// the credential with the longest prefix of the table's location (a decoy
/// for the wider `s3://` would be refused), renewed as they expire (three
/// seconds here, a run of 20 batches with S3 80 ms away), and a restore
/// reads every row back with them.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn keys_vended_in_storage_credentials_are_used_and_renewed() {
    const LIFE: f64 = 3.0;
    let s = services!();
    let env = [
        ("PF_VENDED_LIFE", "3"),
        ("PF_TOKEN_LIFE", "600"),
        ("PF_S3_DELAY_MS", "80"),
        ("PF_VEND_AS", "storage-credentials"),
    ];
    let front = RotatingAws::spawn(&s, &s.s3, Some(&s.rest), &env);
    let (db, ws, cfg) =
        hourly_behind_front(&s, &front, "storagecreds", 20, "batch_windows: 1").await;
    let c = db.client().await;
    let cfg = cfg.to_string_lossy();
    let (_, log) = archive_twenty_days(&ws, &cfg, &[], &c, &front).await;
    let vended: Vec<&str> = log.iter().filter_map(|e| e["vended"].as_str()).collect();
    let (requests, keys) = signed_by(&log, "s3");
    let span = span_of(&log, "s3");
    assert!(span > LIFE, "the run took {span:.1} s only");
    assert!(keys.len() >= 2, "S3 signed with {keys:?} over {span:.1} s");
    assert!(
        keys.iter().all(|k| vended.contains(k)),
        "S3 signed with keys the catalog did not vend for the table: {keys:?}"
    );
    assert!(
        vended.len() < requests / 4,
        "{} loads for {requests} requests",
        vended.len()
    );

    let before = front.log().len();
    let out = restore_everything(&ws, &cfg);
    assert_eq!(out.json()["rows"].as_u64(), Some(480));
    assert_eq!(count(&c, "back", "true").await, 480);
    let log = &front.log()[before..];
    assert!(log.iter().all(|e| e["ok"] == true), "refused: {log:?}");
    assert!(!out.stderr.contains("s-VEND"), "secret in logs");
}
