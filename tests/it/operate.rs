//! Operating permafrost: `run` mode on a schedule with metrics and health
//! endpoints, graceful stop on SIGTERM, lock-busy reporting, JSON logs,
//! heartbeats, the metrics textfile, the Helm chart and shell completions.

use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;
use crate::safety::Fixture;
use crate::services;

/// A spawned permafrost whose stderr is read as it is written.
struct Running {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<()>,
}

impl Running {
    fn start(f: &Fixture, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = f.ws.spawn(args, &f.env_with(env));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().expect("stderr");
        let sink = lines.clone();
        let stderr = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("  | {line}");
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        let mut out = child.stdout.take().expect("stdout");
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        Self {
            child,
            lines,
            stdout,
            stderr,
        }
    }

    /// Waits until a stderr line contains `needle` (panics after `timeout`).
    fn wait_for(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .lines
                .lock()
                .map(|l| l.iter().any(|x| x.contains(needle)))
                .unwrap_or(false)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no stderr line with {needle:?} within {timeout:?}");
    }

    fn signal(&self, sig: &str) {
        let st = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
    }

    /// Waits for the exit (at most `timeout`, then kills it).
    fn finish(mut self, timeout: Duration) -> Out {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("permafrost did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = self.stderr.join();
        let stdout = self.stdout.join().unwrap_or_default();
        let stderr = self.lines.lock().map(|l| l.join("\n")).unwrap_or_default();
        Out {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr,
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A plain HTTP/1.0 GET (status, body); (0, "") when nothing answers.
fn get(url: &str) -> (u16, String) {
    use std::io::Write;
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let Ok(mut stream) = std::net::TcpStream::connect(host) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    if stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .is_err()
    {
        return (0, String::new());
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return (0, String::new());
    };
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// The value of the sample `name{labels}` in exposition `text`.
fn sample(text: &str, name: &str, table: &str) -> Option<f64> {
    let prefix = format!("{name}{{table=\"{table}\"");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `/metrics` until `pred` holds (panics after `timeout`).
fn metrics_until(port: u16, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    let url = format!("http://127.0.0.1:{port}/metrics");
    loop {
        let (code, text) = get(&url);
        if code == 200 && pred(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "metrics never matched:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Parses an exposition with the Prometheus client library's parser.
fn parse_exposition(s: &Services, text: &str) -> Value {
    python(s, "prom_check.py", &json!({"text": text}))
}

/// The fixture's config with `lock_wait` (and more) under `database:`.
fn config_with(f: &Fixture, name: &str, database_extra: &str, extra: &str) -> String {
    let yaml = std::fs::read_to_string(&f.cfg).expect("config");
    let (head, rest) = yaml.split_once('\n').expect("database line");
    let (dsn, rest) = rest.split_once('\n').expect("dsn line");
    let text = format!("{head}\n{dsn}\n{database_extra}{rest}{extra}");
    f.ws.config(name, &text).to_string_lossy().to_string()
}

const TABLE: &str = "public.sensor_readings";

/// `run --every 1s`: archives what is there, then rows inserted later with
/// old timestamps as the next ticks come; `/metrics` moves and parses with
/// the Prometheus parser; `/healthz` and `/readyz` answer; SIGTERM ends it
/// with 0 and every row is archived exactly once.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn run_mode_archives_as_rows_age_and_serves_metrics() {
    let s = services!();
    let f = Fixture::new(&s, None, Cat::Sqlite, 20, 3, "", "").await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let run = Running::start(
        &f,
        &[
            "run",
            "-c",
            &f.cfg,
            "--every",
            "1s",
            "--metrics-listen",
            &listen,
        ],
        &[],
    );
    let text = metrics_until(port, Duration::from_secs(120), |t| {
        sample(t, "permafrost_rows_archived_total", TABLE) == Some(60.0)
    });
    assert_eq!(sample(&text, "permafrost_rows_pending", TABLE), Some(0.0));
    // SIGHUP: a config that does not load is refused, the old one kept; a
    // good one is taken.
    let good = std::fs::read_to_string(&f.cfg).expect("config");
    std::fs::write(&f.cfg, "database: [not, a, mapping").expect("config");
    run.signal("HUP");
    run.wait_for(
        "keeping the previous configuration",
        Duration::from_secs(30),
    );
    std::fs::write(&f.cfg, &good).expect("config");
    run.signal("HUP");
    run.wait_for("configuration reloaded", Duration::from_secs(30));
    assert!(sample(&text, "permafrost_last_success_timestamp_seconds", TABLE) > Some(1.0e9));
    let c = f.db.client().await;
    c.batch_execute(
        "INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, unit) \
         SELECT now() - interval '30 days' + g * interval '1 minute', 9, 'aged', 'C' \
         FROM generate_series(1, 5) g; \
         INSERT INTO inserted_log SELECT * FROM sensor_readings WHERE sensor_name = 'aged';",
    )
    .await
    .expect("rows");
    let text = metrics_until(port, Duration::from_secs(120), |t| {
        sample(t, "permafrost_rows_archived_total", TABLE) == Some(65.0)
    });
    let parsed = parse_exposition(&s, &text);
    let families = parsed["families"].as_object().expect("families");
    for name in [
        "permafrost_rows_archived",
        "permafrost_rows_deleted",
        "permafrost_batches",
        "permafrost_batch_stage_seconds",
        "permafrost_last_success_timestamp_seconds",
        "permafrost_rows_pending",
        "permafrost_oldest_pending_row_age_seconds",
        "permafrost_lock_busy_skips",
        "permafrost_snapshots",
        "permafrost_metadata_bytes",
    ] {
        assert!(families.contains_key(name), "{name} missing: {parsed}");
    }
    assert_eq!(
        parsed["samples"]["permafrost_rows_deleted_total"][TABLE], 65.0,
        "{parsed}"
    );
    assert_eq!(get(&format!("http://{listen}/healthz")).0, 200);
    assert_eq!(get(&format!("http://{listen}/readyz")).0, 200);
    run.signal("TERM");
    let out = run.finish(Duration::from_secs(60));
    assert_eq!(out.code, 0, "{}", out.stderr);
    f.assert_reconciled("run mode");
}

/// An `archive` of three windows paused after the first batch wrote its
/// files, then sent SIGTERM (and seen to take it); the pipe resumes it.
/// These tests follow one batch: the run's batches one at a time.
const ONE_AT_A_TIME: &str = "    parallel_windows: 1\n";

fn terminated_between_write_and_commit(
    f: &Fixture,
    cfg: &str,
    pause: &Pause,
) -> (Running, std::fs::File) {
    let point = pause.env("after-write");
    let run = Running::start(
        f,
        &["archive", "-c", cfg, "--json"],
        &[("PERMAFROST_PAUSE", &point)],
    );
    let fifo = pause
        .wait_reached(Duration::from_secs(120))
        .expect("the first batch reached its commit");
    run.signal("TERM");
    run.wait_for("SIGTERM received", Duration::from_secs(30));
    (run, fifo)
}

/// SIGTERM while a batch is between its write and its commit: the batch
/// finishes (committed, verified, deleted), no further batch starts, the
/// process exits 8; the next run archives the rest exactly once.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn sigterm_lets_the_batch_in_flight_finish() {
    let s = services!();
    let f = Fixture::new(&s, None, Cat::Sqlite, 20, 3, ONE_AT_A_TIME, "").await;
    let pause = Pause::new();
    let (run, fifo) = terminated_between_write_and_commit(&f, &f.cfg, &pause);
    Pause::resume(fifo);
    let out = run.finish(Duration::from_secs(60));
    assert_eq!(out.code, 8, "{}", out.stderr);
    let report = out.json();
    assert_eq!(archived_rows(&report), 20, "one batch: {report}");
    assert_eq!(report[0]["outcome"]["kind"], "interrupted", "{report}");
    let c = f.db.client().await;
    assert_eq!(count(&c, "sensor_readings", "true").await, 40);
    let next = f.archive(&[], &[]);
    assert_eq!(next.code, 0, "{}", next.stderr);
    assert_eq!(archived_rows(&next.json()), 40);
    f.assert_reconciled("after a graceful stop");
}

/// SIGTERM while batches wait for the run's memory (wide rows, a budget of
/// one slot, `parallel_windows: 3`): the batch holding it finishes, and the
/// batches that were waiting start nothing; the next run archives the rest.
/// (Before they stopped, each ran in turn: all 4,800 rows archived.)
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn sigterm_stops_the_batches_waiting_for_memory() {
    let s = services!();
    let f = Fixture::new(&s, None, Cat::Sqlite, 1, 1, "", "").await;
    let c = f.db.client().await;
    crate::safety::wide_table(&c, 4800, 3).await;
    let cfg = f
        .ws
        .config(
            "wide.yaml",
            &format!(
                "database:\n  dsn: \"{}\"\n  pool_size: 8\n{}global:\n  namespace: {}\n  memory_limit: 64MiB\n\
                 tables:\n  - name: wide\n    timestamp_column: ts\n    partition_by: hour\n    lag: 1d\n\
                 \x20   batch_windows: 1\n    parallel_windows: 3\n",
                f.db.dsn, f.cat.yaml, f.cat.namespace
            ),
        )
        .to_string_lossy()
        .to_string();
    let pause = Pause::new();
    let (run, fifo) = terminated_between_write_and_commit(&f, &cfg, &pause);
    Pause::resume(fifo);
    let out = run.finish(Duration::from_secs(60));
    assert_eq!(out.code, 8, "{}", out.stderr);
    let report = out.json();
    assert_eq!(archived_rows(&report), 1200, "one hour: {report}");
    assert_eq!(report[0]["extraction_slots_peak"], 1, "{report}");
    assert_eq!(report[0]["outcome"]["kind"], "interrupted", "{report}");
    assert!(
        report[0]["outcome"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("3 planned batch(es) left")),
        "{report}"
    );
    assert_eq!(count(&c, "wide", "true").await, 3600);
    let next =
        f.ws.run_env(&["archive", "-c", &cfg, "--json"], &f.env_with(&[]));
    assert_eq!(next.code, 0, "{}", next.stderr);
    assert_eq!(archived_rows(&next.json()), 3600, "{}", next.stdout);
    assert_eq!(count(&c, "wide", "true").await, 0);
}

/// A second signal turns the stop into an abort: the batch paused before
/// its commit rolls back (nothing committed, nothing deleted).
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_second_signal_aborts_the_batch_before_its_commit() {
    let s = services!();
    let f = Fixture::new(&s, None, Cat::Sqlite, 20, 3, ONE_AT_A_TIME, "").await;
    let pause = Pause::new();
    let (run, fifo) = terminated_between_write_and_commit(&f, &f.cfg, &pause);
    run.signal("INT");
    run.wait_for("aborting the batch in flight", Duration::from_secs(30));
    Pause::resume(fifo);
    let out = run.finish(Duration::from_secs(60));
    assert_eq!(out.code, 8, "{}", out.stderr);
    assert_eq!(archived_rows(&out.json()), 0, "{}", out.stdout);
    assert!(
        out.stderr.contains("nothing was committed or deleted"),
        "{}",
        out.stderr
    );
    let c = f.db.client().await;
    assert_eq!(count(&c, "sensor_readings", "true").await, 60);
    let next = f.archive(&[], &[]);
    assert_eq!(archived_rows(&next.json()), 60, "{}", next.stderr);
    f.assert_reconciled("after an abort");
}

/// `permafrost run --every 1s` with its endpoints on `port`.
fn run_every_second(f: &Fixture, cfg: &str, port: u16, env: &[(&str, &str)]) -> Running {
    let listen = format!("127.0.0.1:{port}");
    Running::start(
        f,
        &[
            "run",
            "-c",
            cfg,
            "--every",
            "1s",
            "--metrics-listen",
            &listen,
        ],
        env,
    )
}

/// Two `run` instances on one table: while one holds it (paused inside a
/// batch), the other skips it, says so, and counts a lock-busy skip; a cron
/// `archive` meanwhile exits 6 (busy).
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_second_instance_reports_the_table_busy() {
    let s = services!();
    let f = Fixture::new(&s, None, Cat::Sqlite, 20, 3, "", "").await;
    let cfg = config_with(&f, "busy.yaml", "  lock_wait: 1s\n", "");
    let pause = Pause::new();
    let point = pause.env("after-write");
    let (pa, pb) = (free_port(), free_port());
    let a = run_every_second(&f, &cfg, pa, &[("PERMAFROST_PAUSE", &point)]);
    let fifo = pause
        .wait_reached(Duration::from_secs(120))
        .expect("instance A holds the table");
    let b = run_every_second(&f, &cfg, pb, &[]);
    let text = metrics_until(pb, Duration::from_secs(120), |t| {
        sample(t, "permafrost_lock_busy_skips_total", TABLE) >= Some(1.0)
    });
    assert_eq!(
        sample(&text, "permafrost_rows_archived_total", TABLE),
        Some(0.0)
    );
    b.wait_for(
        "another permafrost instance is archiving this table",
        Duration::from_secs(30),
    );
    let cron =
        f.ws.run_env(&["archive", "-c", &cfg, "--json"], &f.env_with(&[]));
    assert_eq!(cron.code, 6, "busy: {}", cron.stderr);
    assert_eq!(cron.json()[0]["outcome"]["status"], "skipped");
    Pause::resume(fifo);
    metrics_until(pa, Duration::from_secs(120), |t| {
        sample(t, "permafrost_rows_archived_total", TABLE) == Some(60.0)
    });
    a.signal("TERM");
    b.signal("TERM");
    assert_eq!(a.finish(Duration::from_secs(60)).code, 0);
    assert_eq!(b.finish(Duration::from_secs(60)).code, 0);
    f.assert_reconciled("two instances");
}

/// `--log-format json`: every stderr line is a JSON object with time, level
/// and message; batch lines carry table, batch and window; the DSN password
/// appears nowhere.  Cron extras: heartbeats (start, success) and the
/// node-exporter textfile.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn json_logs_heartbeats_and_the_metrics_textfile() {
    let s = services!();
    let f = Fixture::new(&s, None, Cat::Sqlite, 20, 2, "", "").await;
    let (hook, bodies) = request_sink();
    let (gateway, pushes) = request_sink();
    let password = "Pw-0f-the-archiver";
    let cfg = config_with(
        &f,
        "json.yaml",
        "",
        &format!("notify:\n  heartbeat_url: \"{hook}/ping/abc\"\n"),
    );
    // A password-bearing DSN (the test cluster trusts the login anyway).
    let yaml = std::fs::read_to_string(&cfg).expect("config");
    assert!(yaml.contains("postgres@"), "{yaml}");
    std::fs::write(
        &cfg,
        yaml.replacen("postgres@", &format!("postgres:{password}@"), 1),
    )
    .expect("config");
    let textfile = f.ws.path().join("permafrost.prom");
    let textfile_s = textfile.to_string_lossy().to_string();
    let out = f.ws.run_env(
        &[
            "archive",
            "-c",
            &cfg,
            "--json",
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--metrics-textfile",
            &textfile_s,
            "--pushgateway",
            &gateway,
        ],
        &f.env_with(&[]),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(
            l["time"].is_string() && l["level"].is_string() && l["message"].is_string(),
            "{l}"
        );
    }
    let batch_line = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("archived"))
                && l["batch"].is_string()
        })
        .unwrap_or_else(|| panic!("no batch line: {}", out.stderr));
    assert_eq!(batch_line["table"], TABLE, "{batch_line}");
    assert!(batch_line["window_start"].is_string(), "{batch_line}");
    assert!(!out.stderr.contains(password) && !out.stdout.contains(password));
    // Heartbeats: a start ping, then success.
    let pings: Vec<String> = (0..2)
        .map(|_| {
            bodies
                .recv_timeout(Duration::from_secs(30))
                .expect("heartbeat")
        })
        .collect();
    assert!(pings[0].starts_with("POST /ping/abc/start"), "{pings:?}");
    assert!(pings[1].starts_with("POST /ping/abc "), "{pings:?}");
    assert!(!pings.iter().any(|p| p.contains(password)));
    let text = std::fs::read_to_string(&textfile).expect("textfile");
    let parsed = parse_exposition(&s, &text);
    assert_eq!(
        parsed["samples"]["permafrost_rows_archived_total"][TABLE], 40.0,
        "{parsed}"
    );
    // The same exposition, pushed to the Pushgateway's job.
    let push = pushes
        .recv_timeout(Duration::from_secs(30))
        .expect("a push");
    let (line, body) = push.split_once('\n').expect("request line");
    assert!(line.starts_with("PUT /metrics/job/permafrost "), "{line}");
    assert_eq!(
        parse_exposition(&s, body)["samples"]["permafrost_rows_archived_total"][TABLE],
        40.0
    );
}

/// The Helm chart renders with the real Helm (helm-python-sdk), lints clean,
/// and every object validates against the Kubernetes schemas — with the
/// default values and with the full example; a wrong value is caught.
#[test]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
fn the_helm_chart_renders_and_validates() {
    let s = services!();
    let chart = source_dir().join("deploy/helm/permafrost");
    let check = |values: Value| {
        python(
            &s,
            "helm_check.py",
            &json!({"chart": chart, "values": values, "kube_version": "1.30.0"}),
        )
    };
    let defaults = check(Value::Null);
    let full_yaml =
        std::fs::read_to_string(source_dir().join("deploy/helm/examples/run-mode.yaml"))
            .expect("example values");
    let full: Value = serde_norway::from_str(&full_yaml).expect("example YAML");
    let full = check(full);
    for (what, r) in [("defaults", &defaults), ("run-mode example", &full)] {
        assert_eq!(r["lint"]["errors"], json!([]), "{what}: {r}");
        let objects = r["objects"].as_array().expect("objects");
        assert!(objects.len() >= 4, "{what}: {r}");
        for o in objects {
            assert_eq!(o["valid"], true, "{what}: {o}");
        }
    }
    let cron = &defaults["manifests"]["CronJob"]["spec"];
    assert_eq!(cron["concurrencyPolicy"], "Forbid");
    let pod = &cron["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        true
    );
    assert_eq!(
        pod["containers"][0]["args"],
        json!(["archive", "--grace", "25s", "--log-format", "json"])
    );
    let dep = &full["manifests"]["Deployment"]["spec"]["template"]["spec"];
    assert_eq!(dep["terminationGracePeriodSeconds"], 60);
    let args = dep["containers"][0]["args"].as_array().expect("args");
    let grace = args.iter().position(|a| a == "--grace").expect("--grace");
    assert_eq!(args[grace + 1], "55s", "inside Kubernetes' grace period");
    assert_eq!(
        full["manifests"]["ServiceAccount"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/permafrost"
    );
    assert!(full["manifests"]["ServiceMonitor"].is_object());
    // The HTTP API beside the run Deployment, with its own selector.
    let api = &full["manifests"]["Deployment/archiver-permafrost-api"]["spec"];
    assert_eq!(api["replicas"], 2, "{full}");
    assert_eq!(
        api["template"]["spec"]["containers"][0]["args"],
        json!(["serve", "--listen", "0.0.0.0:8080", "--log-format", "json"])
    );
    assert_eq!(
        api["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "permafrost-api"
    );
    let run_selector = &full["manifests"]["Deployment/archiver-permafrost"]["spec"]["selector"];
    assert_eq!(
        run_selector["matchLabels"]["app.kubernetes.io/name"],
        "permafrost"
    );
    assert_eq!(
        full["manifests"]["Service/archiver-permafrost-api"]["spec"]["selector"]["app.kubernetes.io/name"],
        "permafrost-api"
    );
    assert!(
        defaults["manifests"]["Deployment/archiver-permafrost-api"].is_null(),
        "off by default"
    );
    let broken = check(json!({"podSecurityContext": {"runAsUser": "root"}}));
    assert!(
        broken["objects"]
            .as_array()
            .expect("objects")
            .iter()
            .any(|o| o["valid"] == false),
        "the validator must catch a wrong type: {broken}"
    );
}

/// `completions` and `man` write what shells and man read.
#[test]
fn completions_and_man_page() {
    let ws = Ws::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = ws.run(&["completions", shell]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(
            out.stdout.contains("maintain") && out.stdout.contains("archive"),
            "{shell}"
        );
    }
    let man = ws.run(&["man"]);
    assert_eq!(man.code, 0, "{}", man.stderr);
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH permafrost"),
        "{}",
        &man.stdout[..200.min(man.stdout.len())]
    );
}
