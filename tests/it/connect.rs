//! Postgres authentication the way users configure it: a password with every
//! awkward character through `${VAR}` and `database.password`, libpq's
//! PGPASSWORD, and a wrong password (one line, nothing deleted).

use crate::common::*;
use crate::modes::small_setup;
use crate::services;

const DAY_US: i64 = 86_400_000_000;

/// Requires `scram-sha-256` for `role` from loopback (the test cluster trusts
/// everyone else) and waits until the server has reloaded its rules.
async fn require_password(admin: &tokio_postgres::Client, s: &Services, role: &str) {
    let hba: String = admin
        .query_one("SHOW hba_file", &[])
        .await
        .expect("hba_file")
        .get(0);
    let old = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    let rules = format!(
        "host all {role} 127.0.0.1/32 scram-sha-256\nhost all {role} ::1/128 scram-sha-256\n"
    );
    std::fs::write(&hba, format!("{rules}{old}")).expect("write pg_hba.conf");
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .expect("reload");
    // The reload is asynchronous: wait (bounded) until a login without a
    // password is refused.
    let dsn = s.pg.replacen("postgres@", &format!("{role}@"), 1);
    for _ in 0..200 {
        if tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .is_err()
        {
            return;
        }
        tokio::task::yield_now().await;
        std::thread::park_timeout(std::time::Duration::from_millis(50));
    }
    panic!("the server did not start asking {role} for a password");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn awkward_passwords_connect_and_a_wrong_one_fails_clearly() {
    let s = services!();
    let (db, ws, cat, _cfg, _now) = small_setup(&s, 2_000).await;
    let admin = connect(&s.pg).await;
    let role = unique("pf_pw");
    let password = r#"p"a\s#s: $x"#;
    admin
        .batch_execute(&format!(
            // scram: the default of PostgreSQL 14+, md5 before.
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE {role} LOGIN PASSWORD '{}'",
            password.replace('\'', "''")
        ))
        .await
        .expect("role");
    let c = db.client().await;
    c.batch_execute(&format!(
        "GRANT SELECT, DELETE ON sensor_readings TO {role}; GRANT USAGE ON SCHEMA public TO {role}"
    ))
    .await
    .expect("grant");
    require_password(&admin, &s, &role).await;
    let total = count(&c, "sensor_readings", "true").await;
    let dsn = db.dsn.replacen("postgres@", &format!("{role}@"), 1);
    let yaml = |db_extra: &str| {
        format!(
            "database:\n  dsn: \"{dsn}\"\n{db_extra}{}global:\n  namespace: {}\ntables:\n\
             \x20 - name: sensor_readings\n    timestamp_column: recorded_at\n    lag: 15d\n",
            cat.yaml, cat.namespace
        )
    };
    let with_var = ws.config("var.yaml", &yaml("  password: \"${PG_PASSWORD}\"\n"));
    let bare = ws.config("bare.yaml", &yaml(""));
    let (with_var, bare) = (with_var.to_string_lossy(), bare.to_string_lossy());

    for (what, cfg, env) in [
        (
            "wrong ${PG_PASSWORD}",
            &with_var,
            ("PG_PASSWORD", "not-the-password"),
        ),
        (
            "wrong PGPASSWORD",
            &bare,
            ("PGPASSWORD", "not-the-password"),
        ),
    ] {
        let out = ws.run_env(&["archive", "-c", cfg], &[env]);
        assert_ne!(out.code, 0, "{what}: {}", out.stderr);
        let errors = out.error_lines();
        assert_eq!(errors.len(), 1, "{what}: {}", out.stderr);
        assert!(
            errors[0].contains("password authentication failed"),
            "{what}: {}",
            errors[0]
        );
        assert!(
            !out.stderr.contains("not-the-password"),
            "{what}: password printed"
        );
        assert_eq!(
            count(&c, "sensor_readings", "true").await,
            total,
            "{what}: nothing deleted"
        );
    }
    // libpq's PGPASSWORD when the config has none.
    let st = ws.run_env(
        &["status", "-c", &bare, "--json"],
        &[("PGPASSWORD", password)],
    );
    assert_eq!(st.code, 0, "{}", st.stderr);
    assert!(!st.stdout.contains(password) && !st.stderr.contains(password));
    // A password file (libpq's format: `:` and `\` escaped), then a service
    // file naming host, port, database and user, with the DSN naming only
    // the service.
    let pgpass = ws.path().join("pgpass");
    let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
    std::fs::write(&pgpass, format!("*:*:*:{role}:{escaped}\n")).expect("pgpass");
    std::fs::set_permissions(&pgpass, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let pgpass = pgpass.to_string_lossy().to_string();
    let st = ws.run_env(
        &["status", "-c", &bare, "--json"],
        &[("PGPASSFILE", &pgpass)],
    );
    assert_eq!(st.code, 0, "PGPASSFILE: {}", st.stderr);
    let (host_port, dbname) = dsn
        .trim_start_matches("postgresql://")
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .expect("dsn shape");
    let (host, port) = host_port.split_once(':').expect("host:port");
    let services = ws.path().join("pg_service.conf");
    std::fs::write(
        &services,
        format!("[archive]\nhost={host}\nport={port}\ndbname={dbname}\nuser={role}\n"),
    )
    .expect("service file");
    let by_service = ws.config("service.yaml", &yaml("").replace(&dsn, "service=archive"));
    let st = ws.run_env(
        &["status", "-c", &by_service.to_string_lossy(), "--json"],
        &[
            ("PGSERVICEFILE", &services.to_string_lossy()),
            ("PGPASSFILE", &pgpass),
        ],
    );
    assert_eq!(st.code, 0, "PGSERVICE: {}", st.stderr);
    assert_eq!(st.json()[0]["source"], "public.sensor_readings");
    // The password through ${PG_PASSWORD}, every character as it is.
    let out = ws.run_env(
        &["archive", "-c", &with_var, "--json"],
        &[("PG_PASSWORD", password)],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stdout.contains(password) && !out.stderr.contains(password));
    assert!(
        count(&c, "sensor_readings", "true").await < total,
        "rows archived and deleted"
    );
}

/// The TLS cluster of `scripts/services.sh` (`hostssl … cert` for `certuser`).
pub(crate) fn tls_cluster() -> Option<(String, std::path::PathBuf)> {
    let pg = std::env::var("PERMAFROST_TEST_PG_TLS").ok()?;
    let pki = std::env::var("PERMAFROST_TEST_PG_TLS_PKI").ok()?;
    Some((pg, pki.into()))
}

/// A new database on the TLS cluster with 1,000 sample sensor readings.
pub(crate) struct TlsDb {
    pub(crate) pki: std::path::PathBuf,
    pub(crate) port: String,
    pub(crate) dbname: String,
    /// Superuser on the cluster's `postgres` database.
    pub(crate) admin: tokio_postgres::Client,
    /// Superuser on the new database.
    pub(crate) client: tokio_postgres::Client,
}

pub(crate) async fn tls_sample_db(tag: &str) -> Option<TlsDb> {
    let (admin_dsn, pki) = tls_cluster()?;
    let admin = connect(&admin_dsn).await;
    let dbname = unique(tag);
    admin
        .batch_execute(&format!("CREATE DATABASE {dbname}"))
        .await
        .expect("db");
    let port = admin_dsn
        .rsplit_once(':')
        .and_then(|(_, p)| p.split('/').next())
        .expect("port")
        .to_string();
    let db_dsn = admin_dsn
        .rsplit_once('/')
        .map(|(base, _)| format!("{base}/{dbname}"))
        .expect("dsn has a database");
    let client = connect(&db_dsn).await;
    client
        .batch_execute(permafrost::demo::SAMPLE_SCHEMA)
        .await
        .expect("schema");
    client
        .batch_execute(&permafrost::demo::SAMPLE_DATA.replace(":rows", "1000"))
        .await
        .expect("data");
    Some(TlsDb {
        pki,
        port,
        dbname,
        admin,
        client,
    })
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn client_certificate_over_verified_tls_archives_and_bad_tls_fails_clearly() {
    let s = services!();
    let Some(TlsDb {
        pki,
        port,
        dbname,
        client: c,
        ..
    }) = tls_sample_db("tlsdb").await
    else {
        assert!(
            std::env::var("PERMAFROST_TEST_REQUIRE").is_err(),
            "TLS cluster missing"
        );
        eprintln!("skipped: no TLS cluster");
        return;
    };
    c.batch_execute("GRANT SELECT, DELETE ON sensor_readings TO certuser")
        .await
        .expect("grant");
    let total = count(&c, "sensor_readings", "true").await;
    let ws = Ws::new();
    let cat = CatalogSetup::new(Cat::Sqlite, &s, &ws).await;
    let p = |f: &str| pki.join(f).display().to_string();
    let dsn = |host: &str, extra: &str| {
        format!(
            "host={host} port={port} user=certuser dbname={dbname} sslmode=verify-full sslrootcert={}{extra}",
            p("ca.pem")
        )
    };
    let yaml = |dsn: String| {
        format!(
            "database:\n  dsn: \"{dsn}\"\n{}global:\n  namespace: {}\ntables:\n\
             \x20 - name: sensor_readings\n    timestamp_column: recorded_at\n    lag: 15d\n",
            cat.yaml, cat.namespace
        )
    };
    let with_cert = format!(" sslcert={} sslkey={}", p("client.pem"), p("client.key"));
    let cases = [
        ("no client certificate", dsn("localhost", ""), "certuser"),
        (
            "wrong host name",
            dsn("127.0.0.1", &with_cert),
            "not valid for this name",
        ),
        (
            "a name TLS cannot check",
            dsn("bad..name", &format!(" hostaddr=127.0.0.1{with_cert}")),
            "not one a certificate can be checked against",
        ),
    ];
    for (what, d, needle) in cases {
        let cfg = ws.config("bad.yaml", &yaml(d));
        let out = ws.run(&["archive", "-c", &cfg.to_string_lossy()]);
        assert_ne!(out.code, 0, "{what}: {}", out.stderr);
        let errors = out.error_lines();
        assert_eq!(errors.len(), 1, "{what}: {}", out.stderr);
        assert!(errors[0].contains(needle), "{what}: {}", errors[0]);
        assert_eq!(
            count(&c, "sensor_readings", "true").await,
            total,
            "{what}: nothing deleted"
        );
    }
    let cfg = ws.config("good.yaml", &yaml(dsn("localhost", &with_cert)));
    let cfg = cfg.to_string_lossy().to_string();
    let check = ws.run(&["check", "-c", &cfg, "--json"]);
    assert_eq!(check.code, 0, "{}\n{}", check.stdout, check.stderr);
    let tls = check.json()["postgres"]["tls"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        tls.starts_with("TLSv1.") && tls.contains("verified"),
        "{tls}"
    );
    let out = ws.run(&["archive", "-c", &cfg, "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let archived = archived_rows(&out.json());
    assert!(archived > 0);
    assert_eq!(
        count(&c, "sensor_readings", "true").await as u64,
        total as u64 - archived
    );
    // pg_hba lets certuser in only over TLS with a certificate the CA signed:
    // the archive above could not have logged in otherwise.
}

/// Transaction statuses come back in one round trip, in order; an id from
/// another cluster's history ("in the future") is `unknown` and does not
/// hide the others' statuses.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn transaction_statuses_in_order_and_unknown_for_foreign_ids() {
    use permafrost::plan::XactStatus;
    let s = services!();
    let db = TestDb::create(&s, "xact").await;
    let c = db.client().await;
    let committed: i64 = c
        .query_one("SELECT txid_current()", &[])
        .await
        .expect("txid")
        .get(0);
    c.batch_execute("BEGIN").await.expect("begin");
    let aborted: i64 = c
        .query_one("SELECT txid_current()", &[])
        .await
        .expect("txid")
        .get(0);
    c.batch_execute("ROLLBACK").await.expect("rollback");
    let future = committed + 1_000_000_000;
    let ids = |v: &[i64]| v.iter().map(|x| *x as u64).collect::<Vec<u64>>();
    let got = permafrost::source::xact_status(&c, &ids(&[aborted, committed]))
        .await
        .expect("statuses");
    assert_eq!(
        got,
        vec![
            (aborted as u64, XactStatus::Aborted),
            (committed as u64, XactStatus::Committed)
        ]
    );
    let got = permafrost::source::xact_status(&c, &ids(&[committed, future, aborted]))
        .await
        .expect("statuses");
    assert_eq!(
        got.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        vec![
            XactStatus::Committed,
            XactStatus::Unknown,
            XactStatus::Aborted
        ]
    );
    assert!(
        permafrost::source::xact_status(&c, &[])
            .await
            .expect("none")
            .is_empty()
    );
}

/// Every way of naming the server — one TCP host, `hostaddr`, several
/// hosts (the first one down), a Unix socket directory — connects over
/// permafrost's own socket, which merges the COPY rows into fewer protocol
/// messages (`source::wire`, said in the debug log).  Each way archives the
/// same rows with the same checksums; a closed port fails the same way with
/// one host or two (one line, the hint, exit 4), and a DSN asking for a
/// server that allows writes, where none does, says so.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn every_way_of_naming_the_server_archives_the_same_rows() {
    let s = services!();
    let (db, ws, cat, _cfg, now) = small_setup(&s, 3_000).await;
    let c = db.client().await;
    let total = count(&c, "sensor_readings", "true").await;
    let cut = (now - 15 * DAY_US).div_euclid(DAY_US) * DAY_US;
    let cutsql = format!("recorded_at < to_timestamp({cut}::float8/1e6)");
    let pending = count(&c, "sensor_readings", &cutsql).await;
    let now = rfc3339(now);
    let port = c
        .query_one("SELECT current_setting('port')", &[])
        .await
        .expect("port")
        .get::<_, String>(0);
    let socket_dir = c
        .query_one(
            "SELECT split_part(current_setting('unix_socket_directories'), ',', 1)",
            &[],
        )
        .await
        .expect("socket dir")
        .get::<_, String>(0);
    let name = &db.name;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let ways = [
        ("a URL", db.dsn.clone()),
        (
            "key=value",
            format!("host=127.0.0.1 port={port} user=postgres dbname={name}"),
        ),
        (
            "hostaddr",
            format!("host=localhost hostaddr=127.0.0.1 port={port} user=postgres dbname={name}"),
        ),
        (
            "two hosts",
            format!("host=127.0.0.1,127.0.0.1 port={port},{port} user=postgres dbname={name}"),
        ),
        (
            "two hosts, the first down, asking for writes",
            format!(
                "host=127.0.0.1,localhost port={closed},{port} user=postgres dbname={name} \
                 target_session_attrs=read-write"
            ),
        ),
        (
            "a Unix socket",
            format!("host={socket_dir} port={port} user=postgres dbname={name}"),
        ),
        (
            "a Unix socket, sslmode=require (ignored there, as libpq ignores it)",
            format!("host={socket_dir} port={port} user=postgres dbname={name} sslmode=require"),
        ),
    ];
    let config = |i: usize, dsn: &str| {
        ws.config(
            &format!("way{i}.yaml"),
            &format!(
                "database:\n  dsn: \"{dsn}\"\n{}global:\n  namespace: {}_{i}\ntables:\n\
                 \x20 - name: sensor_readings\n    timestamp_column: recorded_at\n    lag: 15d\n",
                cat.yaml, cat.namespace
            ),
        )
    };
    let mut first: Option<Vec<String>> = None;
    for (i, (what, dsn)) in ways.iter().enumerate() {
        let cfg = config(i, dsn);
        let cfg = cfg.to_string_lossy();
        let out = ws.run(&[
            "--log-level",
            "debug",
            "archive",
            "--no-delete",
            "--json",
            "--now",
            &now,
            "-c",
            &cfg,
        ]);
        assert_eq!(out.code, 0, "{what}: {}", out.stderr);
        assert!(
            out.stderr.contains("COPY rows merged on the socket"),
            "{what}: every connection through permafrost's socket: {}",
            out.stderr
        );
        let batches = out.json()[0]["batches"]
            .as_array()
            .expect("batches")
            .clone();
        let rows: i64 = batches
            .iter()
            .map(|b| b["rows"].as_i64().unwrap_or(0))
            .sum();
        assert_eq!(
            rows, pending,
            "{what}: every pending row archived once: {}",
            out.stdout
        );
        let sums: Vec<String> = batches.iter().map(|b| b["checksum"].to_string()).collect();
        match &first {
            None => first = Some(sums),
            Some(f) => assert_eq!(&sums, f, "{what}: the checksums of the first way"),
        }
    }
    for (i, (what, dsn)) in [
        (
            "one host",
            format!("host=127.0.0.1 port={closed} user=postgres dbname={name}"),
        ),
        (
            "two hosts",
            format!("host=127.0.0.1,127.0.0.1 port={closed},{closed} user=postgres dbname={name}"),
        ),
    ]
    .iter()
    .enumerate()
    {
        let cfg = config(10 + i, dsn);
        let out = ws.run(&["archive", "-c", &cfg.to_string_lossy()]);
        assert_eq!(out.code, 4, "{what}: {}", out.stderr);
        let errors = out.error_lines();
        assert_eq!(errors.len(), 1, "{what}: {}", out.stderr);
        assert!(
            errors[0].contains("error connecting to server") && errors[0].contains("refused"),
            "{what}: {}",
            errors[0]
        );
        assert!(
            out.stderr.contains("is PostgreSQL running"),
            "{what}: {}",
            out.stderr
        );
    }
    let read_only = format!(
        "host=127.0.0.1,localhost port={port} user=postgres dbname={name} \
         target_session_attrs=read-write options=-cdefault_transaction_read_only=on"
    );
    let cfg = config(20, &read_only);
    let out = ws.run(&["archive", "-c", &cfg.to_string_lossy()]);
    assert_eq!(out.code, 4, "read-only servers: {}", out.stderr);
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "read-only servers: {}", out.stderr);
    assert!(
        errors[0].contains("no server named allows writes"),
        "read-only servers: {}",
        errors[0]
    );
    assert_eq!(
        count(&c, "sensor_readings", "true").await,
        total,
        "nothing deleted"
    );
}

/// Every connection of a run works on the server where the run holds the
/// table's advisory lock.  A DSN of two hosts that are two servers — the
/// test cluster, then the solo cluster with a database of the same name
/// and the same table — as a role the first admits once (`CONNECTION
/// LIMIT 1`): the run's own connection takes the first, its workers fall
/// through to the second, where they would have archived and deleted the
/// other server's rows.  The run stops before its first batch, in one line
/// (exit 4); nothing is archived, no row deleted on either server.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn worker_connections_that_reach_another_server_stop_the_run() {
    let s = services!();
    let _solo = crate::safety::SOLO.lock().await;
    let (db, ws, cat, _cfg, _now) = small_setup(&s, 3_000).await;
    let c = db.client().await;
    let role = format!("{}_w", db.name);
    connect(&s.pg_solo)
        .await
        .batch_execute(&format!("CREATE DATABASE \"{}\"", db.name))
        .await
        .expect("the same database on the solo cluster");
    let base = |dsn: &str| {
        dsn.rsplit_once('/')
            .map(|(b, _)| b.to_string())
            .expect("a URL")
    };
    let solo = connect(&format!("{}/{}", base(&s.pg_solo), db.name)).await;
    solo.batch_execute(permafrost::demo::SAMPLE_SCHEMA)
        .await
        .expect("schema");
    solo.batch_execute(&permafrost::demo::SAMPLE_DATA.replace(":rows", "3000"))
        .await
        .expect("data");
    let grant = format!(
        "GRANT SELECT, DELETE ON sensor_readings TO \"{role}\"; \
         GRANT USAGE, CREATE ON SCHEMA public TO \"{role}\""
    );
    c.batch_execute(&format!(
        "CREATE ROLE \"{role}\" LOGIN CONNECTION LIMIT 1; {grant}"
    ))
    .await
    .expect("a role the test cluster admits once");
    solo.batch_execute(&format!("CREATE ROLE \"{role}\" LOGIN; {grant}"))
        .await
        .expect("the role on the solo cluster");
    let port = |dsn: &str| {
        base(dsn)
            .rsplit_once(':')
            .map(|(_, p)| p.to_string())
            .expect("a port")
    };
    let dsn = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user={role} dbname={}",
        port(&s.pg),
        port(&s.pg_solo),
        db.name
    );
    let (here, there) = (
        count(&c, "sensor_readings", "true").await,
        count(&solo, "sensor_readings", "true").await,
    );
    let cfg = ws.config(
        "two-servers.yaml",
        &format!(
            "database:\n  dsn: \"{dsn}\"\n{}global:\n  namespace: {}\ntables:\n\
             \x20 - name: sensor_readings\n    timestamp_column: recorded_at\n    lag: 15d\n    \
             batch_windows: 1\n",
            cat.yaml, cat.namespace
        ),
    );
    let out = ws.run(&["archive", "--json", "-c", &cfg.to_string_lossy()]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(
        errors[0].contains("a worker connection reached another server"),
        "{}",
        errors[0]
    );
    assert!(
        out.stderr.contains("target_session_attrs"),
        "{}",
        out.stderr
    );
    assert_eq!(count(&c, "sensor_readings", "true").await, here);
    assert_eq!(count(&solo, "sensor_readings", "true").await, there);
    let json = out.json();
    assert_eq!(json[0]["batches"], serde_json::json!([]), "{json}");

    // One connection archives the first server's rows; a restore's loaders
    // then fall through to the second: the restore stops before staging.
    let one = ws.config(
        "one-worker.yaml",
        &format!(
            "database:\n  dsn: \"{dsn}\"\n{}global:\n  namespace: {}\ntables:\n\
             \x20 - name: sensor_readings\n    timestamp_column: recorded_at\n    lag: 15d\n    \
             parallel_windows: 1\n",
            cat.yaml, cat.namespace
        ),
    );
    let one = one.to_string_lossy().to_string();
    let out = ws.run(&["archive", "--json", "-c", &one]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let archived = archived_rows(&out.json()) as i64;
    assert!(archived > 0);
    assert_eq!(count(&c, "sensor_readings", "true").await, here - archived);
    assert_eq!(count(&solo, "sensor_readings", "true").await, there);
    let out = ws.run(&[
        "restore",
        "-c",
        &cfg.to_string_lossy(),
        "-t",
        "sensor_readings",
        "--from",
        "2000-01-01T00:00:00Z",
        "--to",
        "2100-01-01T00:00:00Z",
        "--into",
        "two_servers",
    ]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(
        errors[0].contains("a loader connection of the restore reached another server"),
        "{}",
        errors[0]
    );
    for client in [&c, &solo] {
        assert_eq!(
            relations_named(client, "two_servers").await,
            0,
            "nothing staged on either server"
        );
    }
}

/// Postgres admitting fewer connections than a run asks for — a role's
/// `CONNECTION LIMIT` here; the server's `max_connections` on a busy RDS
/// instance — leaves the run fewer workers, with a warning, not a failure:
/// a role admitted three times archives with its own connection and two
/// workers (of the five it asks for), then restores with its own and one
/// loader (of four).  Admitted once, a restore — which needs a connection
/// besides its own — fails in one line (exit 4), nothing staged.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_connection_limit_leaves_a_run_fewer_connections_not_a_failure() {
    let s = services!();
    let (db, ws, cat, _cfg, now) = small_setup(&s, 3_000).await;
    let c = db.client().await;
    let role = format!("{}_l", db.name);
    c.batch_execute(&format!(
        "CREATE ROLE \"{role}\" LOGIN CONNECTION LIMIT 3; \
         GRANT SELECT, INSERT, DELETE ON sensor_readings TO \"{role}\"; \
         GRANT USAGE, CREATE ON SCHEMA public TO \"{role}\""
    ))
    .await
    .expect("a role admitted three times");
    let cfg = ws.config(
        "limited.yaml",
        &format!(
            "database:\n  dsn: \"{}\"\n  \
             pool_size: 6\n{}global:\n  namespace: {}\ntables:\n\
             \x20 - name: sensor_readings\n    timestamp_column: recorded_at\n    \
             partition_by: day\n    lag: 15d\n    batch_windows: 1\n    parallel_windows: 4\n",
            db.dsn_as(&role),
            cat.yaml,
            cat.namespace
        ),
    );
    let cfg = cfg.to_string_lossy().to_string();
    // `check` says it first: six connections asked, three admitted.
    let out = ws.run(&["check", "--json", "-c", &cfg]);
    let warnings = out.json()["tables"][0]["warnings"].to_string();
    assert!(
        warnings.contains(&format!(
            "opens up to 6 connection(s) (its own, and `parallel_windows` + 3 batch workers \
             within `database.pool_size`), a restore 5; role `{role}`'s CONNECTION LIMIT (3, 0 \
             in use besides this check) admits 3 now"
        )),
        "{warnings}"
    );
    let cutoff = now - 15 * 86_400_000_000;
    let old = crate::modes::archivable(now);
    let before = count(&c, "sensor_readings", &old).await;
    assert!(before > 0);

    let out = ws.run(&["archive", "--json", "-c", &cfg]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("Postgres admitted 2 of 5 worker connections")
            && out.stderr.contains("too many connections for role")
            && out.stderr.contains("2 batches run at once"),
        "{}",
        out.stderr
    );
    let json = out.json();
    let batches = json[0]["batches"].as_array().expect("batches");
    assert!(batches.len() > 2, "{json}");
    assert_eq!(archived_rows(&json) as i64, before, "{json}");
    assert_eq!(count(&c, "sensor_readings", &old).await, 0);

    let (from, to) = (rfc3339(cutoff - 10 * 86_400_000_000), rfc3339(cutoff));
    let restore = |into: &str| {
        ws.run(&[
            "restore",
            "-c",
            &cfg,
            "-t",
            "sensor_readings",
            "--from",
            &from,
            "--to",
            &to,
            "--into",
            into,
            "--json",
        ])
    };
    c.batch_execute(&format!("ALTER ROLE \"{role}\" CONNECTION LIMIT 2"))
        .await
        .expect("admitted twice");
    let out = restore("limited_restore");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("Postgres admitted 1 of 4 loader connections")
            && out.stderr.contains("1 connection(s) load the rows"),
        "{}",
        out.stderr
    );
    let r = out.json();
    assert_eq!(r["valid"], true, "{r}");
    let restored = r["rows"].as_i64().expect("rows");
    assert!(restored > 0, "{r}");
    assert_eq!(count(&c, "limited_restore", "true").await, restored);

    c.batch_execute(&format!("ALTER ROLE \"{role}\" CONNECTION LIMIT 1"))
        .await
        .expect("admitted once");
    let out = restore("refused_restore");
    assert_eq!(out.code, 4, "{}", out.stderr);
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(
        errors[0].contains("too many connections for role"),
        "{}",
        errors[0]
    );
    assert!(out.has_hint("CONNECTION LIMIT"), "{}", out.stderr);
    assert_eq!(
        relations_named(&c, "refused_restore").await,
        0,
        "nothing staged"
    );
}

/// The relations whose name holds `part` (a restore's target, its staging
/// table and their indexes).
async fn relations_named(c: &tokio_postgres::Client, part: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_class WHERE strpos(relname, $1) > 0",
        &[&part],
    )
    .await
    .expect("relations")
    .get(0)
}

/// The advisory locks of permafrost's key space held on `c`'s database
/// (by any session of the server).
async fn permafrost_locks(c: &tokio_postgres::Client) -> i64 {
    let key_space = permafrost::source::lock_key(0) >> 32;
    count(
        c,
        "pg_locks",
        &format!(
            "locktype = 'advisory' AND classid = {key_space} AND database = \
             (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
    )
    .await
}

/// A PgBouncer in transaction mode (`scripts/services.sh`) would give the
/// table's session lock and the session's settings to other clients: a run
/// through it is refused before it reads anything (exit 2, the cause and
/// the way out), nothing deleted, no lock left behind.  One in session
/// mode, reached over TLS (`verify-full`: the capture of the announced
/// backend behind an SSLRequest), is refused too until `database.pooler:
/// session` says so; then the archive runs through it with batch workers,
/// and the lock is gone when it ends.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_pooler_is_refused_unless_it_keeps_sessions() {
    let s = services!();
    let (Ok(tx), Ok(session), Some((_, pki))) = (
        std::env::var("PERMAFROST_TEST_PGBOUNCER_TX"),
        std::env::var("PERMAFROST_TEST_PGBOUNCER_SESSION"),
        tls_cluster(),
    ) else {
        panic!("scripts/services.sh starts two PgBouncers and a TLS cluster");
    };
    let (db, ws, cat, _cfg, now) = small_setup(&s, 3_000).await;
    let c = db.client().await;
    let old = crate::modes::archivable(now);
    let before = count(&c, "sensor_readings", &old).await;
    assert!(before > 0);
    let config = |file: &str, dsn: &str, extra: &str| {
        let cfg = ws.config(
            file,
            &format!(
                "database:\n  dsn: \"{dsn}\"\n{extra}{}global:\n  namespace: {}\ntables:\n\
                 \x20 - name: sensor_readings\n    timestamp_column: recorded_at\n    \
                 partition_by: day\n    lag: 15d\n    batch_windows: 1\n    parallel_windows: 2\n",
                cat.yaml, cat.namespace
            ),
        );
        cfg.to_string_lossy().to_string()
    };
    let refused = |cfg: &str| {
        let out = ws.run(&["archive", "-c", cfg]);
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert!(
            out.stderr
                .contains("reaches PostgreSQL through a connection pooler or a proxy")
                && out.stderr.contains("set `database.pooler: session`"),
            "{}",
            out.stderr
        );
    };

    let transaction = config(
        "transaction.yaml",
        &format!("postgresql://postgres@{tx}/{}?sslmode=disable", db.name),
        "",
    );
    refused(&transaction);
    let out = ws.run(&["check", "-c", &transaction]);
    assert_ne!(out.code, 0);
    assert!(out.stdout.contains("connection pooler"), "{}", out.stdout);

    let (host, port) = session.split_once(':').expect("host:port");
    let tls = format!(
        "host={host} hostaddr=127.0.0.1 port={port} user=postgres dbname={} sslmode=verify-full \
         sslrootcert={}",
        db.name,
        pki.join("ca.pem").display()
    );
    refused(&config("session.yaml", &tls, ""));
    assert_eq!(count(&c, "sensor_readings", &old).await, before);
    assert_eq!(permafrost_locks(&c).await, 0, "no lock left behind");

    let declared = config("declared.yaml", &tls, "  pooler: session\n");
    let out = ws.run(&["archive", "--json", "-c", &declared]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let json = out.json();
    assert!(json[0]["batches"].as_array().expect("batches").len() > 2);
    assert_eq!(archived_rows(&json) as i64, before, "{json}");
    assert_eq!(count(&c, "sensor_readings", &old).await, 0);
    assert_eq!(permafrost_locks(&c).await, 0, "the run's lock is released");

    // A restore through it, its loaders too (each checks that it reached
    // the restore's session), brings every archived row back, valid.
    let out = ws.run(&[
        "restore",
        "-c",
        &declared,
        "-t",
        "sensor_readings",
        "--from",
        "1970-01-01T00:00:00Z",
        "--to",
        &rfc3339(now),
        "--into",
        "through_the_pooler",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(r["valid"], true, "{r}");
    assert_eq!(r["rows"].as_i64(), Some(before), "{r}");
    assert_eq!(count(&c, "through_the_pooler", "true").await, before);
}

/// A session pooler whose pool is full queues a client's first statement:
/// the extra connections of a run that get no session within the connect
/// timeout count as not admitted — the run goes on with fewer (here: the
/// pool's second server connection for one worker, which alone is no
/// parallelism: the run's own connection does the batches), says so, and
/// archives every row — instead of
/// waiting in the queue and failing (`pf_small_pool` of
/// `scripts/services.sh`: two server connections, a database of that name).
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn a_full_session_pool_leaves_a_run_fewer_connections() {
    let s = services!();
    let (Ok(session), Some((_, pki))) = (
        std::env::var("PERMAFROST_TEST_PGBOUNCER_SESSION"),
        tls_cluster(),
    ) else {
        panic!("scripts/services.sh starts a session-mode PgBouncer and a TLS cluster");
    };
    let admin = connect(&s.pg).await;
    // What `WITH (FORCE)` does, which PostgreSQL 12 lacks: PgBouncer may
    // still hold server connections of an earlier run.
    for sql in [
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'pf_small_pool'",
        "DROP DATABASE IF EXISTS pf_small_pool",
        "CREATE DATABASE pf_small_pool",
    ] {
        admin
            .batch_execute(sql)
            .await
            .expect("the pool's database, new");
    }
    let direct = s.pg.rsplit_once('/').expect("a database").0.to_string() + "/pf_small_pool";
    let c = connect(&direct).await;
    load_sample(&c, 3_000).await;
    let now = pg_now(&c).await;
    let old = crate::modes::archivable(now);
    let before = count(&c, "sensor_readings", &old).await;
    let ws = Ws::new();
    let cat = CatalogSetup::new(Cat::Sqlite, &s, &ws).await;
    let (host, port) = session.split_once(':').expect("host:port");
    let cfg = ws.config(
        "pooled.yaml",
        &format!(
            "database:\n  dsn: \"host={host} hostaddr=127.0.0.1 port={port} user=postgres \
             dbname=pf_small_pool sslmode=verify-full sslrootcert={} connect_timeout=2\"\n  \
             pooler: session\n{}global:\n  namespace: {}\ntables:\n\
             \x20 - name: sensor_readings\n    timestamp_column: recorded_at\n    \
             partition_by: day\n    lag: 15d\n    batch_windows: 1\n    parallel_windows: 3\n",
            pki.join("ca.pem").display(),
            cat.yaml,
            cat.namespace
        ),
    );
    let out = ws.run(&["archive", "--json", "-c", &cfg.to_string_lossy()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("Postgres admitted 1 of 5 worker connections (no session within 2s")
            && out
                .stderr
                .contains("one after another on the run's own connection")
            && out.stderr.contains("a pooler's pool size"),
        "{}",
        out.stderr
    );
    assert_eq!(archived_rows(&out.json()) as i64, before);
    assert_eq!(count(&c, "sensor_readings", &old).await, 0);
}
