//! The Postgres side: connections, table introspection, window discovery,
//! streaming extraction (binary COPY → Arrow) and the delete transaction.

pub mod catalog;
pub mod dsn;
pub mod extract;
pub mod introspect;
pub mod partitions;
pub mod pooler;
pub mod tls;
pub mod windows;
pub mod wire;

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::config::DatabaseConfig;
use crate::error::{Error, ErrorKind, Result};

pub use introspect::{SourceColumn, SourceTable};

/// How long a connection may take, socket to the first statement's
/// answer, when the DSN's `connect_timeout` does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens one connection with permafrost's session settings: UTC,
/// standard-conforming strings, `statement_timeout` from the config,
/// `application_name = permafrost`, and `row_security = off` — a query
/// that row-level security would filter fails instead (as in pg_dump): an
/// archive must see every row of its windows, not the role's share.  The
/// DSN's hosts and Unix socket directories get sockets that merge COPY rows
/// into fewer messages ([`wire`]); the few DSNs [`wire::targets`] leaves
/// alone are opened by tokio-postgres as they are.  A connection that
/// reached the server through a connection pooler is refused (a config
/// error) unless `database.pooler: session` ([`pooler`]).
pub async fn connect(db: &DatabaseConfig) -> Result<Client> {
    let dsn::Resolved {
        config: mut cfg,
        sslmode,
        root_cert,
        client_cert,
    } = dsn::resolve(&db.dsn, db.password.as_deref(), &|k| std::env::var(k).ok())?;
    if cfg.get_application_name().is_none() {
        cfg.application_name("permafrost");
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(CONNECT_TIMEOUT);
    }
    cfg.keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    if db.iam_auth {
        if sslmode == "disable" {
            return Err(crate::config::iam_needs_tls());
        }
        let (host, port, user) = iam_login(&cfg)?;
        let token = crate::aws::rds_token_for(db.iam_region.as_deref(), &host, port, &user).await?;
        cfg.password(token);
    }
    let tls = if cfg.get_ssl_mode() == tokio_postgres::config::SslMode::Disable {
        None
    } else {
        let root_cert = db.ssl_root_cert.clone().or(root_cert);
        let policy = tls::TlsPolicy {
            verify: sslmode.starts_with("verify-") || root_cert.is_some(),
            root_cert,
            root_cert_key: "database.ssl_root_cert",
            client_cert,
        };
        Some(tokio_postgres_rustls::MakeRustlsConnect::new(
            tls::client_config(&policy)?,
        ))
    };
    let opened = match (wire::targets(&cfg), tls) {
        (Some(targets), tls) => wire::open(&cfg, &targets, tls).await,
        (None, None) => start(&cfg, NoTls).await.map_err(wire::Failure::Postgres),
        (None, Some(tls)) => start(&cfg, tls).await.map_err(wire::Failure::Postgres),
    };
    let client = opened.map_err(|e| connect_failed(db, e))?;
    let limit = cfg
        .get_connect_timeout()
        .copied()
        .unwrap_or(CONNECT_TIMEOUT);
    start_session(db, &client, limit).await?;
    Ok(client)
}

/// Sets the session's settings and checks what it reached ([`pooler`]),
/// in one round trip that must answer within `limit` (the connect
/// timeout): a pooler whose pool is full queues a client's first
/// statement, which is [`no_session`] then.
async fn start_session(db: &DatabaseConfig, client: &Client, limit: Duration) -> Result<()> {
    let timeout_ms = db.statement_timeout.as_millis();
    let lock_ms = db.lock_timeout.as_millis();
    let setup = format!(
        "SET TimeZone = 'UTC'; SET standard_conforming_strings = on; SET DateStyle = 'ISO'; \
         SET extra_float_digits = 3; SET statement_timeout = {timeout_ms}; \
         SET lock_timeout = {lock_ms}; SET idle_in_transaction_session_timeout = 0; \
         SET row_security = off; SELECT pg_backend_pid()"
    );
    let answers = tokio::time::timeout(limit, client.simple_query(&setup))
        .await
        .map_err(|_| no_session(db, limit))?
        .map_err(|e| Error::postgres("cannot configure the PostgreSQL session", e))?;
    let backend = answers.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
        _ => None,
    });
    if let Some(backend) = backend {
        pooler::judge(pooler::announced_pid(client).await, backend, db.pooler)?;
    }
    Ok(())
}

/// The start of [`no_session`]'s message, which [`Extra`] tells by.
const NO_SESSION: &str = "no session within";

/// The error of a connection whose first statement got no answer within
/// the connect timeout `limit`.
fn no_session(db: &DatabaseConfig, limit: Duration) -> Error {
    Error::new(
        ErrorKind::Postgres,
        format!(
            "{NO_SESSION} {}s at {}: the session's first statement got no answer",
            limit.as_secs_f64(),
            db.describe()
        ),
    )
    .with_hint(
        "a connection pooler queues clients while its pool is full (PgBouncer \
         `default_pool_size`, `max_user_connections`): give it room for `database.pool_size` \
         connections per table, or lower `pool_size`; a server that answers that late is \
         overloaded (`connect_timeout=` in the DSN waits longer)",
    )
}

/// The extra connections of a run (batch workers, restore loaders): up to
/// `n` opened at once, each passed through `check` (that it is on the run's
/// server).  Postgres refusing some for want of connection slots — its
/// `max_connections`, a role's or a database's `CONNECTION LIMIT` — or a
/// session pooler leaving some without a session for the connect timeout
/// ([`no_session`]: its pool is full) is not an error: the run works with
/// fewer, and the first refusal is kept for the caller's warning.  As
/// connections opened at once can each count the others and all be
/// refused, the refused are tried again one at a time until Postgres
/// refuses one.  Any other failure is the error (the run's
/// own connection was opened the same way: it is the DSN's or the server's).
pub async fn connect_extra<F, Fut>(db: &DatabaseConfig, n: usize, check: F) -> Result<Extra>
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<Client>>,
{
    let open = || async {
        let client = connect(db).await?;
        check(client).await
    };
    let mut extra = Extra {
        clients: Vec::with_capacity(n),
        refused: None,
    };
    for c in futures::future::join_all((0..n).map(|_| open())).await {
        extra.take(c)?;
    }
    while extra.refused.is_some() && extra.clients.len() < n {
        let before = extra.clients.len();
        extra.take(open().await)?;
        if extra.clients.len() == before {
            break;
        }
    }
    Ok(extra)
}

/// What [`connect_extra`] opened, and why it opened fewer.
pub struct Extra {
    pub clients: Vec<Client>,
    /// The first refusal for want of connection slots, if any.
    pub refused: Option<Error>,
}

impl Extra {
    /// Keeps `opened`'s connection, or its refusal for want of slots;
    /// any other failure is the error.
    fn take(&mut self, opened: Result<Client>) -> Result<()> {
        match opened {
            Ok(c) => self.clients.push(c),
            Err(e) if is_out_of_slots(&e) || e.message().starts_with(NO_SESSION) => {
                self.refused.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// The warning when Postgres admitted fewer than `asked` connections
    /// as `what` ("worker connections"), working on with `using`.
    pub fn shortfall(&self, asked: usize, what: &str, using: &str) -> Option<String> {
        let refused = self.refused.as_ref()?;
        Some(format!(
            "Postgres admitted {} of {asked} {what} ({}); {using} — raise the connection limit \
             (the server's `max_connections`, the role's or database's `CONNECTION LIMIT`, a \
             pooler's pool size) or lower `database.pool_size` / `tables[].parallel_windows`",
            self.clients.len(),
            refused.pg_message().unwrap_or(refused.message())
        ))
    }
}

/// The error when one of a run's extra connections reached another server
/// than the run's own: `what` happened, and `nothing` ("nothing was
/// archived") says what the run left undone.
pub fn reached_another_server(what: String, nothing: &str) -> Error {
    Error::new(ErrorKind::Postgres, what).with_hint(format!(
        "the DSN's hosts are not one server: add `target_session_attrs=read-write` so that \
         every connection reaches the primary, or name one host; {nothing}"
    ))
}

/// Whether `e` is Postgres refusing a connection for want of slots
/// (`too_many_connections`, SQLSTATE 53300).
pub fn is_out_of_slots(e: &Error) -> bool {
    e.pg_code() == Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS)
}

/// The error of a connection that could not be opened.
fn connect_failed(db: &DatabaseConfig, failure: wire::Failure) -> Error {
    let what = format!("cannot connect to PostgreSQL at {}", db.describe());
    let e = match failure {
        wire::Failure::Postgres(e) => e,
        wire::Failure::Socket(e) => {
            return Error::new(
                ErrorKind::Postgres,
                format!("{what}: error connecting to server: {e}"),
            )
            .with_hint(crate::error::POSTGRES_UNREACHABLE_HINT);
        }
        wire::Failure::Attrs(attrs) => return attrs_refused(what, attrs),
    };
    let err = Error::postgres(what, e);
    let auth = err.pg_code().is_some_and(|c| {
        *c == tokio_postgres::error::SqlState::INVALID_PASSWORD
            || *c == tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    });
    if db.iam_auth && auth {
        err.replace_hint(
            "the token was refused: the user needs `GRANT rds_iam`, the AWS identity an IAM \
             policy allowing rds-db:connect for this user, and this machine a correct clock",
        )
    } else {
        err
    }
}

/// The error when every server answered but none is what the DSN's
/// `target_session_attrs` asks for.
fn attrs_refused(what: String, attrs: tokio_postgres::config::TargetSessionAttrs) -> Error {
    let (cause, hint) = match attrs {
        tokio_postgres::config::TargetSessionAttrs::ReadOnly => (
            "no server named is read-only (`target_session_attrs=read-only`)",
            "name a standby among the hosts, or drop `target_session_attrs`",
        ),
        _ => (
            "no server named allows writes (`target_session_attrs=read-write`)",
            "every host is read-only now (a standby, or `default_transaction_read_only`): name \
             the primary among the hosts, or run again once a failover has ended",
        ),
    };
    Error::new(ErrorKind::Postgres, format!("{what}: {cause}")).with_hint(hint)
}

/// The one TCP host, port and user an IAM token is signed for.
fn iam_login(cfg: &tokio_postgres::Config) -> Result<(String, u16, String)> {
    use tokio_postgres::config::Host;
    let host = match cfg.get_hosts() {
        [Host::Tcp(h)] => h.clone(),
        _ => {
            return Err(Error::config(
                "`database.iam_auth` needs exactly one TCP host in the DSN",
            )
            .with_hint("name the cluster's endpoint: host=mydb.cluster-xyz.eu-west-1.rds.amazonaws.com"));
        }
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let user = cfg
        .get_user()
        .ok_or_else(|| Error::config("`database.iam_auth` needs a user in the DSN"))?
        .to_string();
    Ok((host, port, user))
}

/// What the session negotiated, for `check`: `TLSv1.3, certificate verified`,
/// `TLSv1.3, certificate not verified (sslmode=require)` or `no TLS`.
pub async fn tls_description(client: &Client, db: &DatabaseConfig) -> Result<String> {
    let row = client
        .query_typed_one(
            "SELECT coalesce(ssl, false), coalesce(version, '') FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the session's TLS state", e))?;
    let (ssl, version): (bool, String) = (row.get(0), row.get(1));
    if !ssl {
        return Ok("no TLS".into());
    }
    let r = dsn::resolve(&db.dsn, db.password.as_deref(), &|k| std::env::var(k).ok())?;
    Ok(
        if r.sslmode.starts_with("verify-") || db.ssl_root_cert.is_some() || r.root_cert.is_some() {
            format!("{version}, certificate verified")
        } else {
            format!(
                "{version}, certificate not verified (sslmode={})",
                r.sslmode
            )
        },
    )
}

/// Connects and drives the connection on its own task.
async fn start<T>(
    cfg: &tokio_postgres::Config,
    tls: T,
) -> std::result::Result<Client, tokio_postgres::Error>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = cfg.connect(tls).await?;
    drive(connection);
    Ok(client)
}

/// Drives `connection` on its own task until the client is dropped.
fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("postgres connection ended: {e}");
        }
    });
}

/// The database name and the server's current time (µs since the epoch, UTC).
pub async fn server_facts(client: &Client) -> Result<(String, i64)> {
    let row = client
        .query_typed_one(
            "SELECT current_database()::text, (extract(epoch from now()) * 1000000)::int8, \
             current_setting('server_version_num')::int",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("cannot query the server", e))?;
    let version: i32 = row.get(2);
    if version < 120000 {
        return Err(Error::new(
            ErrorKind::Postgres,
            format!("PostgreSQL {} is too old", version / 10000),
        )
        .with_hint("permafrost needs PostgreSQL 12 or newer"));
    }
    Ok((row.get(0), row.get(1)))
}

/// The history the server's transaction ids belong to:
/// `<system identifier>/<timeline>` — a restore to an earlier point or a
/// promoted standby starts a new timeline, another cluster has another
/// system identifier.  `None` when the server does not say (a managed
/// service that refuses the functions): batches are then judged as before.
pub async fn history(client: &Client) -> Option<String> {
    let row = client
        .query_typed_one(
            "SELECT system_identifier::text, pg_walfile_name(pg_current_wal_lsn()) \
             FROM pg_control_system()",
            &[],
        )
        .await
        .map_err(|e| tracing::debug!("the server's history is unknown: {e}"))
        .ok()?;
    let (system, wal): (String, String) = (row.get(0), row.get(1));
    let timeline = u32::from_str_radix(wal.get(..8)?, 16).ok()?;
    Some(format!("{system}/{timeline}"))
}

/// The statement (with its `; `) that bounds the lock waits of the rest
/// of the transaction to `wait`; empty for zero, which leaves the
/// session's `lock_timeout`.
pub fn bounded_lock_wait(wait: Duration) -> String {
    match wait.as_millis() {
        0 => String::new(),
        ms => format!("SET LOCAL lock_timeout = {ms}; "),
    }
}

/// Key of the session advisory lock that guards one source table.
pub fn lock_key(table_oid: u32) -> i64 {
    // "pf" in the high bits keeps us away from other applications' keys.
    (0x7066_i64 << 32) | table_oid as i64
}

/// Takes the table's advisory lock on `client`'s session, waiting at most
/// `wait` (`None`: as long as it takes).  Returns false when another session
/// still holds it after that.  The lock is held until [`unlock_table`] or until
/// the session ends — a crashed process never leaves it behind (once Postgres
/// has noticed the dead connection, which is why a short wait helps right
/// after a crash).
pub async fn lock_table(client: &Client, table_oid: u32, wait: Option<Duration>) -> Result<bool> {
    let key = lock_key(table_oid);
    let err = |e| Error::postgres("cannot take the table's advisory lock", e);
    let ms = wait.map(|w| w.as_millis().max(1) as i64).unwrap_or(0);
    // One round trip.  SET LOCAL: the session's own lock_timeout comes back
    // with the transaction's end; the session-level advisory lock outlives it.
    let taken = client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = {ms}; SELECT pg_advisory_lock({key}); COMMIT"
        ))
        .await;
    let e = match taken {
        Ok(()) => return Ok(true),
        Err(e) => e,
    };
    // The transaction failed; the lock was not taken.
    let rolled_back = client.batch_execute("ROLLBACK").await;
    match e.code() {
        Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
            rolled_back.map(|()| false).map_err(err)
        }
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) => Err(err(e).replace_hint(
            "another permafrost instance held the table for longer than `database.statement_timeout`; with `on_busy: wait` raise it, or use `on_busy: skip`",
        )),
        _ => Err(err(e)),
    }
}

/// Releases the lock taken by [`lock_table`].
pub async fn unlock_table(client: &Client, table_oid: u32) -> Result<()> {
    client
        .batch_execute(&format!(
            "SELECT pg_advisory_unlock({})",
            lock_key(table_oid)
        ))
        .await
        .map_err(|e| Error::postgres("cannot release the table's advisory lock", e))
}

/// Whether another session of `client`'s server — the run's own, which
/// took it first — holds the table's advisory lock: a connection of the
/// run that reached another server (a DSN of several hosts that are not
/// one server, a failover between connections) must not work there.
pub async fn run_lock_here(client: &Client, table_oid: u32) -> Result<bool> {
    let key = lock_key(table_oid);
    // A bigint key shows in pg_locks as its high and low 32 bits.
    let row = client
        .query_typed_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND classid = {} AND objid = {} AND objsubid = 1 AND pid <> pg_backend_pid() \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
                key >> 32,
                key & 0xffff_ffff
            ),
            &[],
        )
        .await
        .map_err(|e| Error::postgres("cannot look up the table's advisory lock", e))?;
    Ok(row.get(0))
}

/// A session on its server: its backend's pid and start time, which no
/// other session of that server or of another shares.  Another connection
/// of a run checks with [`Session::beside`] that it reached the same
/// server (a DSN of several hosts that are not one server, or a failover
/// between connections, would send it elsewhere).
pub struct Session {
    pid: i32,
    started: String,
}

impl Session {
    /// `client`'s session.
    pub async fn of(client: &Client) -> Result<Session> {
        let row = client
            .query_typed_one(
                "SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(|e| Error::postgres("cannot look up the session's backend", e))?;
        Ok(Session {
            pid: row.get(0),
            started: row.get(1),
        })
    }

    /// Whether `client` is on this session's server (the session is there).
    pub async fn beside(&self, client: &Client) -> Result<bool> {
        let row = client
            .query_typed_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 \
                 AND backend_start::text = $2)",
                &[
                    (&self.pid, tokio_postgres::types::Type::INT4),
                    (&self.started, tokio_postgres::types::Type::TEXT),
                ],
            )
            .await
            .map_err(|e| Error::postgres("cannot look up the run's session", e))?;
        Ok(row.get(0))
    }
}

/// The application name and pid of the session holding the table's lock, if any.
pub async fn lock_holder(client: &Client, table_oid: u32) -> Result<Option<String>> {
    let key = lock_key(table_oid);
    let rows = client
        .query(
            "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.client_addr::text, 'local'), a.backend_start::text \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.classid = ($1::int8 >> 32)::oid AND l.objid = ($1::int8 & 4294967295)::oid",
            &[&key],
        )
        .await
        .map_err(|e| Error::postgres("cannot look up the advisory lock holder", e))?;
    Ok(rows.first().map(|r| {
        let pid: i32 = r.get(0);
        let app: String = r.get(1);
        let addr: String = r.get(2);
        let since: String = r.get(3);
        format!("pid {pid} ({app}, from {addr}, connected since {since})")
    }))
}

/// Sessions holding a lock on `table` (a quoted, qualified name) or one of its
/// partitions that blocks our statements, described for a message: pid,
/// application, user, lock mode and since when.  Never their query text,
/// which may hold another application's secrets.
pub async fn lock_blockers(client: &Client, table: &str) -> Result<Vec<String>> {
    let rows = client
        .query(
            "WITH t AS (SELECT to_regclass($1) AS oid) \
             SELECT DISTINCT ON (a.pid) a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''), \
                    l.mode, coalesce(a.state, ''), coalesce(a.xact_start::text, a.backend_start::text, '') \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid, t \
             WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_backend_pid() \
               AND l.mode NOT IN ('AccessShareLock', 'RowShareLock') \
               AND (l.relation = t.oid OR l.relation IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = t.oid)) \
             ORDER BY a.pid",
            &[&table],
        )
        .await
        .map_err(|e| Error::postgres("cannot look up the sessions locking the table", e))?;
    Ok(rows
        .iter()
        .map(|r| {
            let pid: i32 = r.get(0);
            let (app, user, mode, state, since): (String, String, String, String, String) =
                (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
            let app = if app.is_empty() {
                "no application name".into()
            } else {
                app
            };
            format!("pid {pid} ({app}, user {user}, {mode}, {state}, transaction started {since})")
        })
        .collect())
}

/// `e` with the sessions that block `table` named, when it is a timeout
/// (`lock_timeout`, or `statement_timeout` while waiting for a lock) and
/// other sessions hold locks on the table.
pub async fn explain_lock_timeout(client: &Client, table: &str, e: Error) -> Error {
    if !e.is_pg_timeout() {
        return e;
    }
    match lock_blockers(client, table).await {
        Ok(b) if !b.is_empty() => {
            let pid = b[0].split_whitespace().nth(1).unwrap_or("PID").to_string();
            let msg = format!(
                "{}: {table} is locked by {}",
                e.message()
                    .replace(
                        "canceling statement due to lock timeout",
                        "no lock within `database.lock_timeout`"
                    )
                    .replace(
                        "canceling statement due to statement timeout",
                        "no lock within `database.statement_timeout`"
                    ),
                b.join("; ")
            );
            Error::new(ErrorKind::Postgres, msg).with_hint(format!(
                "wait for that session to finish (or end it: SELECT pg_terminate_backend({pid})), or raise `database.lock_timeout` (and `database.statement_timeout`); nothing was deleted"
            ))
        }
        _ => e,
    }
}

/// `txid_status` for each transaction id: one round trip for all of them;
/// when Postgres refuses the set (an id "in the future": not this cluster's
/// history), one per id, so only that id is `Unknown`.
pub async fn xact_status(
    client: &Client,
    xids: &[u64],
) -> Result<Vec<(u64, crate::plan::XactStatus)>> {
    if xids.is_empty() {
        return Ok(vec![]);
    }
    let all: Vec<i64> = xids.iter().map(|x| *x as i64).collect();
    let rows = client
        .query_typed(
            "SELECT txid_status(x) FROM unnest($1::int8[]) WITH ORDINALITY AS t(x, n) ORDER BY n",
            &[(&all, tokio_postgres::types::Type::INT8_ARRAY)],
        )
        .await;
    match rows {
        Ok(rows) if rows.len() == xids.len() => Ok(xids
            .iter()
            .zip(&rows)
            .map(|(x, r)| (*x, status_of(r.get::<_, Option<String>>(0).as_deref())))
            .collect()),
        Ok(_) => Err(Error::internal(
            "txid_status answered a different number of rows",
        )),
        Err(e) if e.as_db_error().is_some() => xact_status_one_by_one(client, xids).await,
        Err(e) => Err(Error::postgres("cannot read transaction status", e)),
    }
}

fn status_of(s: Option<&str>) -> crate::plan::XactStatus {
    use crate::plan::XactStatus;
    match s {
        Some("committed") => XactStatus::Committed,
        Some("aborted") => XactStatus::Aborted,
        Some("in progress") => XactStatus::InProgress,
        _ => XactStatus::Unknown,
    }
}

async fn xact_status_one_by_one(
    client: &Client,
    xids: &[u64],
) -> Result<Vec<(u64, crate::plan::XactStatus)>> {
    let mut out = Vec::with_capacity(xids.len());
    for x in xids {
        let xi = *x as i64;
        let status = match client.query_one("SELECT txid_status($1)", &[&xi]).await {
            Ok(row) => status_of(row.get::<_, Option<String>>(0).as_deref()),
            // "transaction ID … is in the future": not this cluster's history.
            Err(e) if e.as_db_error().is_some() => crate::plan::XactStatus::Unknown,
            Err(e) => return Err(Error::postgres("cannot read transaction status", e)),
        };
        out.push((*x, status));
    }
    Ok(out)
}
