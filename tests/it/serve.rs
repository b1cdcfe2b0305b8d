//! `permafrost serve`: the HTTP API over a 30-day archive, asked by a real
//! HTTP client and checked against what Postgres held before archiving.

use std::io::{BufRead, BufReader, Read};
use std::process::Child;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::common::*;
use crate::services;

const DAY: i64 = 86_400_000_000;
const TOKEN: &str = "test-token-0123456789abcdef";

/// A running `serve`: its URL, and its stderr collected in the background
/// (so the access log never fills the pipe).
pub(crate) struct Server {
    child: Child,
    url: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    pub(crate) fn start(ws: &Ws, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut a = vec!["serve"];
        a.extend_from_slice(args);
        let mut child = ws.spawn(&a, env);
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the URL");
        if line.trim().is_empty() {
            let _ = child.wait();
            panic!(
                "serve exited early: {}",
                stderr.lock().map(|s| s.clone()).unwrap_or_default()
            );
        }
        Self {
            child,
            url: line.trim().to_string(),
            stderr,
        }
    }

    pub(crate) fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }

    /// SIGTERM; the exit code.
    pub(crate) fn stop(mut self) -> i32 {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        self.child
            .wait()
            .map(|s| s.code().unwrap_or(-1))
            .unwrap_or(-1)
    }

    /// Peak resident memory of the server (VmHWM), in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

pub(crate) fn client() -> reqwest::Client {
    permafrost::http::install_crypto_provider();
    reqwest::Client::builder().build().expect("client")
}

/// A request's status and JSON body.
pub(crate) async fn send(rb: reqwest::RequestBuilder) -> (u16, Value) {
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

async fn pg_ids(c: &tokio_postgres::Client, cond: &str, order: &str) -> Vec<i64> {
    c.query(
        format!("SELECT id FROM before_rows WHERE {cond} ORDER BY {order}").as_str(),
        &[],
    )
    .await
    .expect("ids")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn ids(page: &Value) -> Vec<i64> {
    page["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect()
}

struct Fx {
    /// The catalog's credentials and the API token, for every run.
    env: Vec<(String, String)>,
    db: TestDb,
    ws: Ws,
    cfg: String,
    day0: i64,
}

/// 30 days (50 to 21 days ago) of 96 rows each, archived in two runs (the
/// first 10 days, then the rest), one snapshot per day.
async fn fixture(s: &Services, kind: Cat) -> Fx {
    let db = TestDb::create(s, "serve").await;
    let c = db.client().await;
    c.batch_execute(permafrost::demo::SAMPLE_SCHEMA)
        .await
        .expect("schema");
    c.batch_execute(
        "INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, value, unit, quality, payload) \
         SELECT date_trunc('day', now()) - interval '50 days' + i * interval '15 minutes', \
                i % 5, 'sensor-' || (i % 5), (i % 97) / 4.0, 'celsius', \
                CASE WHEN i % 7 = 0 THEN NULL ELSE (i % 1000) / 100.0 END, jsonb_build_object('i', i) \
         FROM generate_series(0, 30 * 96 - 1) AS i; \
         CREATE TABLE before_rows AS SELECT * FROM sensor_readings;",
    )
    .await
    .expect("data");
    let day0: i64 = c
        .query_one(
            "SELECT (extract(epoch FROM date_trunc('day', now()) - interval '50 days') * 1000000)::int8",
            &[],
        )
        .await
        .expect("day0")
        .get(0);
    let ws = Ws::new();
    let cat = CatalogSetup::new(kind, s, &ws).await;
    let cfg = ws
        .config(
            "permafrost.yaml",
            &format!(
                "database:\n  dsn: \"{}\"\n{}global:\n  namespace: {}\ntables:\n  - name: sensor_readings\n    timestamp_column: recorded_at\n    lag: 15d\n\
                 serve:\n  tokens: [\"${{PF_API_TOKEN}}\"]\n  max_rows: 200\n  max_offset: 5000\n  max_concurrent: 4\n  max_body_bytes: 4096\n",
                db.dsn, cat.yaml, cat.namespace
            ),
        )
        .to_string_lossy()
        .to_string();
    let mut env: Vec<(String, String)> = CatalogSetup::env(s)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    env.push(("PF_API_TOKEN".into(), TOKEN.into()));
    let fx = Fx {
        env,
        db,
        ws,
        cfg,
        day0,
    };
    for until in [10, 30] {
        let now = rfc3339(fx.day0 + until * DAY + 15 * DAY + 3_600_000_000);
        let out = fx.ws.run_env(
            &["archive", "-c", &fx.cfg, "--json", "--now", &now],
            &fx.env(),
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    let left = count(&c, "sensor_readings", "true").await;
    assert_eq!(left, 0, "every row archived");
    fx
}

impl Fx {
    fn serve(&self) -> Server {
        Server::start(
            &self.ws,
            &["-c", &self.cfg, "--listen", "127.0.0.1:0"],
            &self.env(),
        )
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    fn cli_json(&self, args: &[&str]) -> Value {
        let mut a = vec![args[0], "-c", self.cfg.as_str()];
        a.extend_from_slice(&args[1..]);
        let out = self.ws.run_env(&a, &self.env());
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.json()
    }
}

/// Metadata routes, paged queries with projection, field and expression
/// filters, time travel, pruning, the window route, streamed formats (decoded
/// by pyarrow), SQL, the OpenAPI document and metrics.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn serve_answers_what_postgres_held() {
    let s = services!();
    let fx = fixture(&s, Cat::Sqlite).await;
    let c = fx.db.client().await;
    let srv = fx.serve();
    let http = client();
    let auth = |rb: reqwest::RequestBuilder| rb.bearer_auth(TOKEN);

    // Metadata.
    let (st, tables) = send(auth(http.get(srv.api("/tables")))).await;
    assert_eq!(st, 200, "{tables}");
    let t = &tables[0];
    assert_eq!(t["name"], "sensor_readings", "{tables}");
    assert_eq!(t["exists"], true);
    assert_eq!(t["rows"], 30 * 96, "{t}");
    assert_eq!(
        t["range_start"].as_str(),
        Some(rfc3339(fx.day0).as_str()),
        "{t}"
    );
    assert_eq!(
        t["range_end"].as_str(),
        Some(rfc3339(fx.day0 + 30 * DAY).as_str()),
        "{t}"
    );
    let cli_snaps = fx.cli_json(&["snapshots", "-t", "sensor_readings", "--json"]);
    assert_eq!(t["current_snapshot_id"], cli_snaps[0]["snapshot_id"]);
    assert_eq!(t["snapshots"], 30);
    let (st, snaps) = send(auth(http.get(srv.api("/tables/sensor_readings/snapshots")))).await;
    assert_eq!(st, 200);
    assert!(
        json_eq(&snaps, &cli_snaps),
        "API snapshots = CLI snapshots --json"
    );
    let (st, info) = send(auth(http.get(srv.api("/tables/sensor_readings")))).await;
    assert_eq!(st, 200, "{info}");
    assert!(
        info["partition_spec"][0]
            .as_str()
            .is_some_and(|p| p.contains("day(recorded_at)")),
        "{info}"
    );
    let id_col = info["columns"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "id"))
        .cloned();
    assert_eq!(
        id_col.map(|c| c["postgres_type"].clone()),
        Some(json!("bigint")),
        "{info}"
    );
    let (st, windows) = send(auth(
        http.get(srv.api("/tables/sensor_readings/windows?state=archived")),
    ))
    .await;
    assert_eq!(st, 200, "{windows}");
    assert_eq!(windows.as_array().map(Vec::len), Some(30), "{windows}");
    assert!(
        windows
            .as_array()
            .is_some_and(|w| w.iter().all(|w| w["rows"] == 96 && w["files"] == 1)),
        "{windows}"
    );

    // POST: projection + field filters + time range, paged; the pages
    // concatenated are exactly Postgres' rows, in order.
    let (from, to) = (rfc3339(fx.day0 + 2 * DAY), rfc3339(fx.day0 + 20 * DAY));
    let cond = format!(
        "sensor_id = 3 AND value >= 10 AND recorded_at >= '{from}' AND recorded_at < '{to}'"
    );
    let want = pg_ids(&c, &cond, "id").await;
    assert!(want.len() > 150, "several pages: {}", want.len());
    let mut got = vec![];
    let mut offset = 0;
    let mut pinned: Option<Value> = None;
    loop {
        let mut body = json!({
            "columns": ["id", "recorded_at", "value"],
            "filters": {"sensor_id": 3, "value_gte": 10},
            "from": from, "to": to, "order_by": "id", "limit": 70, "offset": offset,
        });
        if let Some(id) = &pinned {
            body["snapshot_id"] = id.clone();
        }
        let (st, page) = send(auth(
            http.post(srv.api("/tables/sensor_readings/query"))
                .json(&body),
        ))
        .await;
        assert_eq!(st, 200, "{page}");
        assert_eq!(page["matched"], want.len(), "{page}");
        let row = &page["rows"][0];
        assert_eq!(
            row.as_object().map(|o| o.len()),
            Some(3),
            "projection: {row}"
        );
        assert_eq!(page["columns"][2]["name"], "value");
        got.extend(ids(&page));
        pinned = Some(page["snapshot_id"].clone());
        match page["next_offset"].as_u64() {
            Some(n) => offset = n,
            None => break,
        }
    }
    assert_eq!(got, want, "pages concatenated = Postgres' rows");

    // GET with the seed's expression filter, default order (time, then columns).
    let expr = "value >= 10 AND sensor_name = 'sensor-3'";
    let to3 = rfc3339(fx.day0 + 3 * DAY);
    let want = pg_ids(
        &c,
        &format!("{expr} AND recorded_at < '{to3}'"),
        "recorded_at, id",
    )
    .await;
    let (st, page) = send(auth(
        http.get(srv.api("/tables/sensor_readings/query")).query(&[
            ("filter", expr),
            ("columns", "id,recorded_at,sensor_name"),
            ("to", to3.as_str()),
            ("limit", "500"),
        ]),
    ))
    .await;
    assert_eq!(st, 200, "{page}");
    assert_eq!(page["limit"], 200, "limit capped by serve.max_rows");
    assert_eq!(page["matched"], want.len());
    assert_eq!(
        ids(&page),
        want[..want.len().min(200)],
        "expression filter = the same WHERE in Postgres"
    );

    // NULL filters and IN lists.
    let (st, page) = send(auth(http.post(srv.api("/tables/sensor_readings/query")).json(&json!({
        "columns": ["id"], "filters": {"quality_is_null": true, "sensor_id_in": [1, 2]}, "limit": 200
    })))).await;
    assert_eq!(st, 200, "{page}");
    let want = pg_ids(
        &c,
        "quality IS NULL AND sensor_id IN (1, 2)",
        "recorded_at, id",
    )
    .await;
    assert_eq!(page["matched"], want.len());
    assert_eq!(ids(&page), want[..want.len().min(200)]);

    // Time travel: as of the first snapshot, only the first batch's day —
    // and the days of any batch committed in the same millisecond (the
    // latest of those is the table as of then).
    let snaps = cli_snaps.as_array().expect("snapshots");
    let first = snaps.last().expect("first snapshot");
    let at = first["committed_at"].as_str().expect("committed_at");
    let by_then: Vec<&Value> = snaps
        .iter()
        .filter(|s| s["committed_at"].as_str() == Some(at))
        .collect();
    let (st, page) = send(auth(
        http.post(srv.api("/tables/sensor_readings/query"))
            .json(&json!({
                "columns": ["id", "recorded_at"], "as_of": at, "limit": 1
            })),
    ))
    .await;
    assert_eq!(st, 200, "{page}");
    assert_eq!(page["matched"], 96 * by_then.len(), "{page}");
    assert_eq!(page["snapshot_id"], by_then[0]["snapshot_id"]);

    // A one-day query reads one file; so does the window route.
    let (st, page) = send(auth(
        http.post(srv.api("/tables/sensor_readings/query"))
            .json(&json!({
                "from": rfc3339(fx.day0 + 5 * DAY), "to": rfc3339(fx.day0 + 6 * DAY), "limit": 1
            })),
    ))
    .await;
    assert_eq!(st, 200, "{page}");
    assert_eq!(
        (page["files_scanned"].clone(), page["matched"].clone()),
        (json!(1), json!(96)),
        "{page}"
    );
    let day5 = &rfc3339(fx.day0 + 5 * DAY)[..10];
    let (st, page) = send(auth(http.get(srv.api(&format!(
        "/tables/sensor_readings/windows/recorded_at_day={day5}/query?columns=id&limit=1"
    )))))
    .await;
    assert_eq!(st, 200, "{page}");
    assert_eq!(
        (page["files_scanned"].clone(), page["matched"].clone()),
        (json!(1), json!(96)),
        "{page}"
    );

    // Streams decode with pyarrow to the same rows.
    let dir = tempfile::tempdir().expect("tempdir");
    let want = pg_ids(&c, "sensor_id = 3", "id").await;
    let want_sum: f64 = c
        .query_one(
            "SELECT sum(value)::float8 FROM before_rows WHERE sensor_id = 3",
            &[],
        )
        .await
        .expect("sum")
        .get(0);
    let mut files = serde_json::Map::new();
    for (fmt, media) in [
        ("jsonl", "application/x-ndjson"),
        ("csv", "text/csv"),
        ("arrow", "application/vnd.apache.arrow.stream"),
        ("parquet", "application/vnd.apache.parquet"),
    ] {
        let r = auth(http.post(srv.api("/tables/sensor_readings/query")))
            .header("accept", media)
            .json(&json!({"columns": ["id", "recorded_at", "sensor_id", "value"], "filter": "sensor_id = 3"}))
            .send()
            .await
            .expect("stream");
        assert_eq!(r.status().as_u16(), 200, "{media}");
        assert_eq!(r.headers()["content-type"], media);
        assert_eq!(r.headers()["x-permafrost-files-scanned"], "30");
        let path = dir.path().join(format!("answer.{fmt}"));
        std::fs::write(&path, r.bytes().await.expect("bytes")).expect("write");
        files.insert(fmt.into(), json!(path));
    }
    let decoded = python(
        &s,
        "api_check.py",
        &json!({"mode": "decode", "files": files}),
    );
    for fmt in ["jsonl", "csv", "arrow", "parquet"] {
        let d = &decoded[fmt];
        assert_eq!(d["ids"], json!(want), "{fmt}");
        assert!(
            (d["value_sum"].as_f64().unwrap_or_default() - want_sum).abs() < 1e-6,
            "{fmt}: {d}"
        );
        assert_eq!(
            d["columns"],
            json!(["id", "recorded_at", "sensor_id", "value"]),
            "{fmt}"
        );
    }

    // SQL: the same aggregate as Postgres before archiving.
    let agg = "SELECT sensor_id, count(*) AS n, sum(id) AS ids, max(value) AS vmax FROM {T} GROUP BY sensor_id ORDER BY sensor_id";
    let pg: Vec<Value> = c
        .query(
            format!(
                "SELECT row_to_json(q) FROM ({}) q",
                agg.replace("{T}", "before_rows")
            )
            .as_str(),
            &[],
        )
        .await
        .expect("pg agg")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (st, ans) = send(
        auth(http.post(srv.api("/sql")))
            .json(&json!({"sql": agg.replace("{T}", "archive.sensor_readings")})),
    )
    .await;
    assert_eq!(st, 200, "{ans}");
    assert!(
        json_eq(&ans["rows"], &Value::Array(pg.clone())),
        "{ans} vs {pg:?}"
    );
    assert_eq!(ans["truncated"], false);
    let (st, ans) = send(
        auth(http.post(srv.api("/sql")))
            .json(&json!({"sql": "SELECT id FROM archive.sensor_readings"})),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        (ans["returned"].clone(), ans["truncated"].clone()),
        (json!(200), json!(true)),
        "row cap"
    );
    let (st, ans) = send(auth(http.post(srv.api("/sql"))).json(&json!({
        "sql": "SELECT count(*) AS n FROM archive.sensor_readings", "as_of": first["committed_at"]
    })))
    .await;
    assert_eq!((st, ans["rows"][0]["n"].clone()), (200, json!(96)), "{ans}");

    // The OpenAPI document validates as OpenAPI 3.
    let (st, doc) = send(http.get(srv.api("/openapi.json"))).await;
    assert_eq!(st, 200, "the document needs no token");
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, doc.to_string()).expect("write");
    let v = python(
        &s,
        "api_check.py",
        &json!({"mode": "openapi", "path": path}),
    );
    assert_eq!(v["valid"], true, "{v}");
    assert!(
        v["paths"]
            .as_array()
            .is_some_and(|p| p.contains(&json!("/api/v1/tables/{table}/query"))),
        "{v}"
    );

    // Metrics count the requests by route.
    let text = auth(http.get(format!("{}/metrics", srv.url)))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains(
            "permafrost_api_requests_total{route=\"/api/v1/tables/{table}/query\",status=\"200\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains("permafrost_api_rows_returned_total{table=\"public.sensor_readings\"}"),
        "{text}"
    );
    assert!(!srv.log().contains(TOKEN), "the token is never logged");
    assert_eq!(srv.stop(), 0, "SIGTERM stops cleanly");
}

/// Bad requests get a JSON error with the right status and change nothing;
/// tokens are required; 50 concurrent clients all get correct answers with
/// bounded memory; the server keeps serving throughout.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn serve_refuses_bad_input_and_holds_under_load() {
    let s = services!();
    let fx = fixture(&s, Cat::Sqlite).await;
    let c = fx.db.client().await;
    let srv = fx.serve();
    let http = client();
    let q = srv.api("/tables/sensor_readings/query");

    // Tokens.
    let (st, e) = send(http.get(srv.api("/tables"))).await;
    assert_eq!(st, 401, "{e}");
    assert!(
        e["error"].as_str().is_some_and(|m| m.contains("token")),
        "{e}"
    );
    let (st, _) = send(
        http.get(srv.api("/tables"))
            .bearer_auth("wrong-token-0123456789"),
    )
    .await;
    assert_eq!(st, 401);
    let (st, _) = send(http.get(format!("{}/healthz", srv.url))).await;
    assert_eq!(st, 200, "health needs no token");

    let auth = |rb: reqwest::RequestBuilder| rb.bearer_auth(TOKEN);
    let scratch = tempfile::tempdir().expect("tempdir");
    let copy_target = scratch.path().join("copy.csv");
    let copy_sql = format!("COPY (SELECT 1) TO '{}'", copy_target.display());
    // A local file the SQL endpoint must never read.
    let local = scratch.path().join("secret.csv");
    std::fs::write(&local, "secret\n").expect("write");
    let ddl_sql = format!(
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '{}'",
        local.display()
    );
    let bad: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (auth(http.get(srv.api("/tables/nope"))), 404, "nope"),
        (auth(http.get(srv.api("/nowhere"))), 404, "route"),
        (
            auth(http.post(&q)).json(&json!({"columns": ["id", "nope"]})),
            400,
            "`nope`",
        ),
        (
            auth(http.post(&q)).json(&json!({"filters": {"nope_gte": 1}})),
            400,
            "`nope_gte`",
        ),
        (
            auth(http.post(&q))
                .header("content-type", "application/json")
                .body("{\"columns\": [\"id\""),
            400,
            "",
        ),
        (
            auth(http.post(&q)).json(&json!({"colums": ["id"]})),
            400,
            "colums",
        ),
        (
            auth(http.post(&q)).json(&json!({"filter": "1=1; DROP TABLE sensor_readings"})),
            400,
            "filter",
        ),
        (
            auth(http.post(&q)).json(&json!({"filter": "sensor_id = 1 -- comment"})),
            400,
            "filter",
        ),
        (
            auth(http.post(&q)).json(&json!({"filter": "sensor_id = 1 /* x */"})),
            400,
            "filter",
        ),
        (
            auth(http.post(&q)).json(&json!({"filters": {"sensor_id": "1 OR 1=1"}})),
            400,
            "sensor_id",
        ),
        (
            auth(http.post(&q)).json(&json!({"snapshot_id": 42})),
            404,
            "42",
        ),
        (
            auth(http.post(&q)).json(&json!({"offset": 4900, "limit": 200})),
            400,
            "max_offset",
        ),
        (
            auth(http.post(&q))
                .header("accept", "text/html")
                .json(&json!({})),
            406,
            "text/html",
        ),
        (
            auth(http.post(&q))
                .json(&json!({"filter": format!("sensor_name = '{}'", "x".repeat(5000))})),
            413,
            "",
        ),
        (
            auth(http.post(srv.api("/sql"))).json(&json!({"sql": ddl_sql})),
            400,
            "",
        ),
        (
            auth(http.post(srv.api("/sql"))).json(&json!({"sql": copy_sql})),
            400,
            "",
        ),
        (
            auth(http.post(srv.api("/sql"))).json(&json!({"sql": "SELECT * FROM archive.nope"})),
            400,
            "nope",
        ),
    ];
    for (rb, want, needle) in bad {
        let (st, e) = send(rb).await;
        assert_eq!(st, want, "{e}");
        assert!(
            e["error"].as_str().is_some_and(|m| m.contains(needle)),
            "{want}: {e}"
        );
    }
    assert!(!copy_target.exists(), "COPY TO wrote nothing");
    // Quotes in a value are a value, not SQL.
    let (st, page) =
        send(auth(http.post(&q)).json(&json!({"filters": {"sensor_name": "x' OR '1'='1"}}))).await;
    assert_eq!((st, page["matched"].clone()), (200, json!(0)), "{page}");
    assert_eq!(
        count(&c, "before_rows", "true").await,
        30 * 96,
        "nothing touched"
    );

    // 50 concurrent clients, a few requests each: every answer is right.
    let want: Vec<Vec<i64>> = {
        let mut v = vec![];
        for sensor in 0..5 {
            v.push(
                pg_ids(
                    &c,
                    &format!(
                        "sensor_id = {sensor} AND recorded_at < '{}'",
                        rfc3339(fx.day0 + 4 * DAY)
                    ),
                    "id",
                )
                .await,
            );
        }
        v
    };
    let want = Arc::new(want);
    let mut tasks = vec![];
    for client_no in 0..50usize {
        let (http, q, want) = (http.clone(), q.clone(), want.clone());
        let to = rfc3339(fx.day0 + 4 * DAY);
        tasks.push(tokio::spawn(async move {
            for round in 0..4usize {
                let sensor = (client_no + round) % 5;
                let (st, page) = send(http.post(&q).bearer_auth(TOKEN).json(&json!({
                    "columns": ["id"], "filters": {"sensor_id": sensor}, "to": to, "order_by": "id", "limit": 200
                })))
                .await;
                assert_eq!(st, 200, "{page}");
                assert_eq!(ids(&page), want[sensor], "client {client_no} round {round}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    let rss = srv.peak_rss_kib();
    eprintln!(
        "serve: peak RSS after 50 concurrent clients: {} MiB",
        rss / 1024
    );
    assert!(rss < 512 * 1024, "peak RSS {rss} KiB");
    let (st, _) = send(auth(http.get(srv.api("/tables")))).await;
    assert_eq!(st, 200, "still serving");
    assert_eq!(srv.stop(), 0);

    // A query held past the timeout is a 504; another one waiting for the
    // only slot meanwhile is a 503; the server answers again afterwards.
    let slow = fx.ws.config(
        "slow.yaml",
        &std::fs::read_to_string(&fx.cfg).expect("cfg").replace(
            "max_concurrent: 4",
            "max_concurrent: 1\n  request_timeout: 2s",
        ),
    );
    let pause = Pause::new();
    let srv = Server::start(
        &fx.ws,
        &["-c", &slow.to_string_lossy(), "--listen", "127.0.0.1:0"],
        &[
            ("PF_API_TOKEN", TOKEN),
            ("PERMAFROST_PAUSE", &pause.env("serve-query")),
        ],
    );
    let q = srv.api("/tables/sensor_readings/query");
    let held = tokio::spawn(send(
        http.post(&q).bearer_auth(TOKEN).json(&json!({"limit": 1})),
    ));
    let reached = pause
        .wait_reached(std::time::Duration::from_secs(60))
        .expect("the query reached the pause");
    let (st, e) = send(auth(http.post(&q)).json(&json!({"limit": 1}))).await;
    assert_eq!(st, 503, "{e}");
    assert!(
        e["hint"]
            .as_str()
            .is_some_and(|h| h.contains("max_concurrent")),
        "{e}"
    );
    let (st, e) = held.await.expect("held request");
    assert_eq!(st, 504, "{e}");
    assert!(
        e["error"]
            .as_str()
            .is_some_and(|m| m.contains("did not finish within 2s")),
        "{e}"
    );
    Pause::resume(reached);
    let (st, page) = send(auth(http.post(&q)).json(&json!({"limit": 1}))).await;
    assert_eq!(
        (st, page["matched"].clone()),
        (200, json!(30 * 96)),
        "{page}"
    );
    assert_eq!(srv.stop(), 0);

    // Without tokens a non-loopback address is refused.
    let open = fx.ws.config(
        "open.yaml",
        &std::fs::read_to_string(&fx.cfg)
            .expect("cfg")
            .replace("  tokens: [\"${PF_API_TOKEN}\"]\n", ""),
    );
    let out = fx.ws.run(&[
        "serve",
        "-c",
        &open.to_string_lossy(),
        "--listen",
        "0.0.0.0:0",
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("serve.tokens"), "{}", out.stderr);
}

/// Over HTTPS with a certificate from a throwaway CA: a client trusting the
/// CA is answered; the token is still required.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn serve_over_tls() {
    let s = services!();
    let db = TestDb::create(&s, "serve_tls").await;
    db.client()
        .await
        .batch_execute(permafrost::demo::SAMPLE_SCHEMA)
        .await
        .expect("schema");
    let ws = Ws::new();
    let cat = CatalogSetup::new(Cat::Sqlite, &s, &ws).await;
    let pki = crate::tls::Pki::new();
    let cfg = ws.config(
        "permafrost.yaml",
        &format!(
            "database:\n  dsn: \"{}\"\n{}global:\n  namespace: {}\ntables:\n  - name: sensor_readings\n    timestamp_column: recorded_at\n\
             serve:\n  tokens: [\"{TOKEN}\"]\n  tls:\n    cert: {}\n    key: {}\n",
            db.dsn,
            cat.yaml,
            cat.namespace,
            pki.path("server.pem").display(),
            pki.path("server.key").display()
        ),
    );
    let srv = Server::start(
        &ws,
        &["-c", &cfg.to_string_lossy(), "--listen", "127.0.0.1:0"],
        &[],
    );
    assert!(srv.url.starts_with("https://"), "{}", srv.url);
    let url = srv.url.replace("127.0.0.1", "localhost");
    permafrost::http::install_crypto_provider();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.path("ca.pem")).expect("ca"))
        .expect("pem");
    let trusting = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("client");
    let (st, tables) = send(
        trusting
            .get(format!("{url}/api/v1/tables"))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(st, 200, "{tables}");
    assert_eq!(tables[0]["exists"], false, "not archived yet: {tables}");
    let (st, _) = send(trusting.get(format!("{url}/api/v1/tables"))).await;
    assert_eq!(st, 401);
    // A client that does not trust the CA cannot talk to it at all.
    let r = client().get(format!("{url}/healthz")).send().await;
    assert!(r.is_err(), "untrusted certificate refused");
    let (st, _) = send(trusting.get(format!("{url}/healthz"))).await;
    assert_eq!(st, 200, "the server survived the failed handshake");
    assert_eq!(srv.stop(), 0);
}

/// The same API over an archive on S3 behind the REST catalog (SeaweedFS):
/// metadata, a pruned page, a streamed answer and SQL read through S3.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn serve_reads_an_archive_on_s3_behind_the_rest_catalog() {
    let s = services!();
    let fx = fixture(&s, Cat::Rest).await;
    let c = fx.db.client().await;
    let srv = fx.serve();
    let http = client();
    let auth = |rb: reqwest::RequestBuilder| rb.bearer_auth(TOKEN);
    let (st, tables) = send(auth(http.get(srv.api("/tables")))).await;
    assert_eq!(st, 200, "{tables}");
    assert_eq!(tables[0]["rows"], 30 * 96, "{tables}");
    let (from, to) = (rfc3339(fx.day0 + 7 * DAY), rfc3339(fx.day0 + 8 * DAY));
    let (st, page) = send(
        auth(http.post(srv.api("/tables/sensor_readings/query"))).json(&json!({
            "columns": ["id"], "filters": {"sensor_id_in": [2, 4]}, "from": from, "to": to, "order_by": "id"
        })),
    )
    .await;
    assert_eq!(st, 200, "{page}");
    let want = pg_ids(
        &c,
        &format!("sensor_id IN (2, 4) AND recorded_at >= '{from}' AND recorded_at < '{to}'"),
        "id",
    )
    .await;
    assert_eq!(ids(&page), want);
    assert_eq!(page["files_scanned"], 1, "{page}");
    let r = auth(http.post(srv.api("/tables/sensor_readings/query")))
        .header("accept", "application/x-ndjson")
        .json(&json!({"columns": ["id"]}))
        .send()
        .await
        .expect("stream");
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await.expect("ndjson");
    assert_eq!(text.lines().count(), 30 * 96, "every row streamed from S3");
    let (st, ans) = send(auth(http.post(srv.api("/sql"))).json(&json!({
        "sql": "SELECT count(*) AS n, sum(id) AS ids FROM archive.sensor_readings"
    })))
    .await;
    assert_eq!(st, 200, "{ans}");
    let sum: i64 = c
        .query_one("SELECT sum(id)::int8 FROM before_rows", &[])
        .await
        .expect("sum")
        .get(0);
    assert_eq!(ans["rows"][0]["n"], 30 * 96, "{ans}");
    assert_eq!(ans["rows"][0]["ids"], sum, "{ans}");
    assert_eq!(srv.stop(), 0);
}
