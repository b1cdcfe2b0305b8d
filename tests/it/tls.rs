//! TLS to HTTP services: the REST catalog (and its OAuth2 endpoint) and a
//! webhook served over real HTTPS by a TLS-terminating proxy with a
//! throwaway CA.  Trusted: archive, verify, delete, PyIceberg reads through
//! HTTPS.  Untrusted CA or wrong host name: one clear line, nothing deleted.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::modes::small_setup;
use crate::services;

/// A throwaway CA, a server certificate it signed for `localhost` only, and
/// a second CA that signed nothing.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            openssl(
                d,
                &[
                    &["req", "-x509"],
                    &ec[..],
                    &[
                        "-keyout",
                        &format!("{ca}.key"),
                        "-out",
                        &format!("{ca}.pem"),
                        "-days",
                        "2",
                        "-subj",
                        &format!("/CN=permafrost test {ca}"),
                    ],
                ]
                .concat(),
            );
        }
        openssl(
            d,
            &[
                &["req"],
                &ec[..],
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=localhost",
                ],
            ]
            .concat(),
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        );
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tests/py/tls_proxy.py`: HTTPS on a free port in front of `target` (host:port).
struct Proxy {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl Proxy {
    fn start(s: &Services, pki: &Pki, target: &str) -> Self {
        let (host, port) = target.rsplit_once(':').expect("host:port");
        let script = source_dir().join("tests/py/tls_proxy.py");
        let log = tempfile::NamedTempFile::new().expect("log");
        let mut child = Command::new(&s.python)
            .arg(script)
            .arg(pki.path("server.pem"))
            .arg(pki.path("server.key"))
            .args([host, port])
            .arg(log.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the TLS proxy");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("proxy port");
        let port = line.trim().parse().expect("the proxy prints its port");
        Self { child, port, log }
    }

    /// TLS connections accepted so far.
    fn connections(&self) -> usize {
        std::fs::read_to_string(self.log.path())
            .unwrap_or_default()
            .lines()
            .count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// The sensor table's config with the REST catalog at `uri`, trusting `ca`,
/// and S3 at `s3`.
fn rest_config(db: &TestDb, s: &Services, uri: &str, s3: &str, ca: &Path, ns: &str) -> String {
    let cat = CatalogSetup::rest_at(s, uri, s3, ns.to_string());
    format!(
        "database:\n  dsn: \"{}\"\n{}  ssl.ca-cert: \"{}\"\nglobal:\n  namespace: {ns}\ntables:\n\
         \x20 - name: sensor_readings\n    timestamp_column: recorded_at\n    partition_by: day\n    lag: 15d\n",
        db.dsn,
        cat.yaml,
        ca.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn rest_catalog_over_https_archives_and_refuses_untrusted_servers() {
    let s = services!();
    let pki = Pki::new();
    let proxy = Proxy::start(&s, &pki, &host_port(&s.rest));
    let (db, ws, _cat, _cfg, _now) = small_setup(&s, 3_000).await;
    let c = db.client().await;
    let total = count(&c, "sensor_readings", "true").await;
    let ns = unique("tls");
    let env: Vec<(&str, String)> = CatalogSetup::env(&s);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let https = format!("https://localhost:{}", proxy.port);

    // A CA that did not sign the server's certificate, then the right CA but
    // a name the certificate does not carry: one line each, nothing deleted.
    let cases = [
        (
            "untrusted",
            https.clone(),
            pki.path("other-ca.pem"),
            "not trusted",
        ),
        (
            "wrong-name",
            format!("https://127.0.0.1:{}", proxy.port),
            pki.path("ca.pem"),
            "not valid for",
        ),
    ];
    for (name, uri, ca, needle) in &cases {
        let cfg = ws.config(
            &format!("{name}.yaml"),
            &rest_config(&db, &s, uri, &s.s3, ca, &ns),
        );
        for cmd in ["check", "archive"] {
            let out = ws.run_env(&[cmd, "-c", &cfg.to_string_lossy()], &env);
            assert_ne!(out.code, 0, "{name}/{cmd}: {}\n{}", out.stdout, out.stderr);
            let text = format!("{}{}", out.stdout, out.stderr);
            assert!(text.contains(needle), "{name}/{cmd}: {text}");
            assert!(text.contains("TLS"), "{name}/{cmd}: {text}");
            assert!(!text.contains(&s.secret), "{name}/{cmd}: secret leaked");
            if cmd == "archive" {
                assert_eq!(out.error_lines().len(), 1, "{name}: {}", out.stderr);
            }
        }
        assert_eq!(
            count(&c, "sensor_readings", "true").await,
            total,
            "{name}: nothing deleted"
        );
    }

    // S3 over HTTPS too: data files through a second TLS front whose CA
    // the S3 client (OpenDAL) trusts through SSL_CERT_FILE.
    let s3_proxy = Proxy::start(&s, &pki, &host_port(&s.s3));
    let s3 = format!("https://localhost:{}", s3_proxy.port);
    let cfg = ws.config(
        "https.yaml",
        &rest_config(&db, &s, &https, &s3, &pki.path("ca.pem"), &ns),
    );
    let cfg = cfg.to_string_lossy().to_string();
    let ca = pki.path("ca.pem").display().to_string();
    let mut env = env.clone();
    env.push(("SSL_CERT_FILE", &ca));
    let check = ws.run_env(&["check", "-c", &cfg, "--json"], &env);
    assert_eq!(check.code, 0, "{}\n{}", check.stdout, check.stderr);
    let endpoints = check.json()["endpoints"].clone();
    for role in ["catalog", "s3"] {
        let e = endpoints
            .as_array()
            .and_then(|a| a.iter().find(|e| e["role"] == role))
            .unwrap_or_else(|| panic!("no {role} endpoint: {endpoints}"));
        let tls = e["tls"].as_str().unwrap_or("");
        assert!(
            tls.starts_with("TLSv1.") && tls.ends_with("certificate verified"),
            "{role}: {e}"
        );
        assert!(
            e["address"]
                .as_str()
                .unwrap_or("")
                .starts_with("https://localhost:")
        );
    }
    let s3_before = s3_proxy.connections();
    let out = ws.run_env(&["archive", "-c", &cfg, "--json"], &env);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        s3_proxy.connections() > s3_before,
        "the data files did not go through HTTPS"
    );
    let archived = archived_rows(&out.json());
    assert!(archived > 0);
    let left = count(&c, "sensor_readings", "true").await;
    assert_eq!(
        left as u64 + archived,
        total as u64,
        "archived rows were deleted"
    );
    // PyIceberg reads the table through HTTPS too, trusting the same CA.
    let mut py = CatalogSetup::rest_at(&s, &https, &s.s3, ns.clone()).py_props;
    py["ssl"] = serde_json::json!({"cabundle": pki.path("ca.pem")});
    let r = interop(
        &s,
        &serde_json::json!({"catalog_name": "rest", "catalog": py,
            "table": format!("{ns}.sensor_readings"), "time_column": "recorded_at",
            "unit": "day", "sum_columns": [], "duckdb": false}),
    );
    assert_eq!(r["pyiceberg"]["count"].as_u64(), Some(archived), "{r}");
    // Schema commits go through the same client: add a column, archive again.
    c.batch_execute(
        "ALTER TABLE sensor_readings ADD COLUMN note text; \
         INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, unit, note) \
         VALUES (now() - interval '40 days', 1, 's', 'C', 'over https')",
    )
    .await
    .expect("evolve");
    let again = ws.run_env(&["archive", "-c", &cfg], &env);
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    assert_eq!(count(&c, "sensor_readings", "note IS NOT NULL").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn failure_webhook_is_delivered_over_https() {
    let s = services!();
    let pki = Pki::new();
    let (plain, rx) = webhook_sink();
    let proxy = Proxy::start(&s, &pki, &plain);
    let (db, ws, _cat, cfg, _now) = small_setup(&s, 300).await;
    let yaml = std::fs::read_to_string(&cfg).expect("config");
    let cfg = ws.config(
        "hook.yaml",
        &format!(
            "{yaml}notify:\n  webhook_url: https://localhost:{}/hook\n",
            proxy.port
        ),
    );
    let ca = pki.path("ca.pem");
    let out = ws.run_env(
        &["archive", "-c", &cfg.to_string_lossy()],
        &[
            ("PERMAFROST_FAULT", "corrupt-checksum"),
            ("SSL_CERT_FILE", &ca.to_string_lossy()),
        ],
    );
    assert_ne!(out.code, 0, "{}", out.stderr);
    let hook: Value = serde_json::from_str(
        &rx.recv_timeout(Duration::from_secs(60))
            .expect("webhook received over https"),
    )
    .expect("json");
    assert_eq!(hook["event"], "batch_failed", "{hook}");
    assert_eq!(hook["table"], "public.sensor_readings", "{hook}");
    let _ = db;
}

/// A REST catalog signed with AWS SigV4 over HTTPS, as S3 Tables is only
/// served, with static keys in the config (PyIceberg's `client.*`): the
/// signing forwarder sends each request on over TLS trusting
/// `ssl.ca-cert` (SeaweedFS behind a TLS front checks the signature, made
/// for the front's `localhost:port`). An untrusted server fails in one line
/// that names the TLS cause, nothing deleted; the trusted one archives and
/// its schema commit (a column added) is signed and lands too.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_sigv4_rest_catalog_over_https_is_signed_and_its_tls_checked() {
    let s = services!();
    let pki = Pki::new();
    let proxy = Proxy::start(&s, &pki, &host_port(&s.rest));
    let (db, ws, _cat, _cfg, _now) = small_setup(&s, 3_000).await;
    let c = db.client().await;
    let total = count(&c, "sensor_readings", "true").await;
    let ns = unique("tlssig");
    let config = |ca: &Path| {
        format!(
            "database:\n  dsn: \"{}\"\ncatalog:\n  type: rest\n  name: s3tables\n\
             \x20 uri: https://localhost:{}\n  warehouse: s3://warehouse\n\
             \x20 rest.sigv4-enabled: true\n  rest.signing-name: s3tables\n  ssl.ca-cert: \"{}\"\n\
             \x20 client.region: us-east-1\n  client.access-key-id: \"${{SIG_KEY}}\"\n\
             \x20 client.secret-access-key: \"${{SIG_SECRET}}\"\n\
             \x20 s3.endpoint: {}\n  s3.region: us-east-1\n  s3.path-style-access: true\n\
             \x20 s3.access-key-id: \"${{SIG_KEY}}\"\n  s3.secret-access-key: \"${{SIG_SECRET}}\"\n\
             global:\n  namespace: {ns}\ntables:\n  - name: sensor_readings\n\
             \x20   timestamp_column: recorded_at\n    partition_by: day\n    lag: 15d\n",
            db.dsn,
            proxy.port,
            ca.display(),
            s.s3
        )
    };
    // The keys in the config (`client.*`, as PyIceberg's signer takes
    // them), none in the environment; S3's are the catalog's `s3.*`.
    let env = [
        ("SIG_KEY", s.key.as_str()),
        ("SIG_SECRET", s.secret.as_str()),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
    ];
    let bad = ws.config("untrusted.yaml", &config(&pki.path("other-ca.pem")));
    let out = ws.run_env(&["archive", "-c", &bad.to_string_lossy()], &env);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert_eq!(out.error_lines().len(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("not trusted"), "{}", out.stderr);
    assert!(
        out.has_hint("`ssl.ca-cert: "),
        "the TLS hint: {}",
        out.stderr
    );
    assert!(!out.stderr.contains(&s.secret));
    assert_eq!(count(&c, "sensor_readings", "true").await, total);

    let cfg = ws.config("https.yaml", &config(&pki.path("ca.pem")));
    let cfg = cfg.to_string_lossy();
    let before = proxy.connections();
    let out = ws.run_env(&["archive", "-c", &cfg, "--json"], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        proxy.connections() > before,
        "the catalog was not reached over HTTPS"
    );
    let archived = archived_rows(&out.json());
    assert!(archived > 0);
    assert_eq!(
        count(&c, "sensor_readings", "true").await as u64 + archived,
        total as u64
    );
    c.batch_execute(
        "ALTER TABLE sensor_readings ADD COLUMN note text; \
         INSERT INTO sensor_readings (recorded_at, sensor_id, sensor_name, unit, note) \
         VALUES (now() - interval '40 days', 1, 's', 'C', 'signed')",
    )
    .await
    .expect("evolve");
    let out = ws.run_env(&["archive", "-c", &cfg, "--json"], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(archived_rows(&out.json()), 1);
    let out = ws.run_env(
        &["show", "-c", &cfg, "-t", "sensor_readings", "--json"],
        &env,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("\"note\""), "{}", out.stdout);
}
