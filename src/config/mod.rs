//! The configuration file: parsing, `${VAR}` expansion and validation.
//!
//! One YAML file describes the source database, the Iceberg catalog and the
//! tables to archive.  `${VAR}` (required), `${VAR:-default}` and
//! `${VAR:=default}` are expanded before parsing; `$${` writes a literal `${`.
//! Every error names the offending key (`tables[1].lag`) or line.
//!
//! Secrets (the DSN password, catalog credentials, S3 keys) are registered
//! with [`crate::secret`] as soon as they are read, so they are masked in every
//! message and log line the program prints.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::plan::window::Granularity;
use crate::secret;

mod catalog;
pub mod duration;
mod env;
mod serve;
use catalog::parse_catalog;
pub use catalog::{CatalogConfig, CatalogKind, SigV4, is_secret_property};
pub use duration::parse_duration;
pub use env::expand_env;
use env::expand_values;
pub use serve::{DEFAULT_LISTEN, ServeConfig, ServeTls, parse_listen};

/// `maintain` never deletes unreferenced files younger than this, whatever
/// the configuration says: a writer may still be about to commit them.
pub const MIN_ORPHAN_AGE: Duration = Duration::from_secs(3600);

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub catalog: CatalogConfig,
    pub tables: Vec<TableConfig>,
    pub global: GlobalConfig,
    pub notify: NotifyConfig,
    pub maintenance: MaintenanceConfig,
    pub schedule: ScheduleConfig,
    pub serve: ServeConfig,
}

/// `schedule`: defaults of `permafrost run` (flags override them).
#[derive(Debug, Clone, Default)]
pub struct ScheduleConfig {
    /// An interval (`1h`) …
    pub every: Option<String>,
    /// … or a cron expression (`0 * * * *`, UTC).
    pub cron: Option<String>,
    /// Each run starts up to this much later, at random.
    pub jitter: Duration,
    /// Serve `/metrics`, `/healthz`, `/readyz` here.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// After SIGTERM, how long the batch in flight may take before it is aborted.
    pub grace_period: Duration,
}

/// How to reach PostgreSQL.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// libpq-style DSN (URL or key=value); holds the password, never printed.
    pub dsn: String,
    /// `database.password`: overrides the DSN's password, taken as it is (no
    /// quoting or percent-encoding); never printed.
    pub password: Option<String>,
    /// Connections opened at most at the same time.
    pub pool_size: usize,
    /// `statement_timeout` applied to every statement permafrost runs (0 = none).
    pub statement_timeout: Duration,
    /// What to do when another instance holds a table's advisory lock.
    pub on_busy: OnBusy,
    /// With `on_busy: skip`, how long to wait for the lock before skipping.
    pub lock_wait: Duration,
    /// `lock_timeout` of every statement: how long one waits for a table lock
    /// another session holds before it fails (naming that session).
    pub lock_timeout: Duration,
    /// Extra trusted CA certificates (PEM); turns server certificate verification on.
    pub ssl_root_cert: Option<PathBuf>,
    /// RDS/Aurora IAM authentication: every new connection logs in with a
    /// fresh token signed from the AWS credential chain.
    pub iam_auth: bool,
    /// The region the IAM tokens are signed for (else the AWS chain's).
    pub iam_region: Option<String>,
    /// What `database.dsn` reaches the server through: a pooler is refused
    /// unless it keeps one server connection per client session.
    pub pooler: Pooler,
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("dsn", &describe_dsn(&self.dsn))
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("on_busy", &self.on_busy)
            .field("lock_wait", &self.lock_wait)
            .field("lock_timeout", &self.lock_timeout)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("iam_auth", &self.iam_auth)
            .field("iam_region", &self.iam_region)
            .field("pooler", &self.pooler)
            .finish()
    }
}

impl DatabaseConfig {
    /// The DSN with the password removed, for messages: `user@host:port/db`.
    pub fn describe(&self) -> String {
        describe_dsn(&self.dsn)
    }
}

/// `database.pooler`: what sits between permafrost and Postgres (see
/// [`crate::source::pooler`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooler {
    /// Nothing: a connection that reached the server through a pooler is
    /// refused (default).
    #[default]
    None,
    /// A pooler that keeps one server connection per client session
    /// (PgBouncer `pool_mode = session`).
    Session,
}

/// Behaviour when another permafrost instance is archiving the same table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBusy {
    /// Skip the table and say so (default).
    Skip,
    /// Wait for the other instance to finish.
    Wait,
}

/// How the integer, date and timestamp columns a data file writes without a
/// dictionary (the time column; ids and other mostly distinct values) are
/// encoded (`tables[].integer_encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntegerEncoding {
    /// `PLAIN`, which every Parquet reader reads (default).
    #[default]
    Plain,
    /// `DELTA_BINARY_PACKED`: differences bit-packed — smaller files and
    /// less to compress, for readers that have it (Iceberg's Spark reader
    /// from 1.10 on; Trino, DuckDB, PyArrow).
    DeltaBinaryPacked,
}

/// How the floating-point columns a data file writes without a dictionary
/// (readings and other mostly distinct values) are encoded
/// (`tables[].float_encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FloatEncoding {
    /// `PLAIN`, which every Parquet reader reads (default).
    #[default]
    Plain,
    /// `BYTE_STREAM_SPLIT`: each byte of the values in a stream of its own,
    /// which zstd compresses far better (sign and exponent bytes repeat),
    /// for readers that have it (PyArrow, DuckDB).
    ByteStreamSplit,
}

/// One table to archive.
#[derive(Debug, Clone)]
pub struct TableConfig {
    /// Postgres schema of the source table.
    pub schema: String,
    /// Postgres name of the source table.
    pub name: String,
    /// The column windows are cut on (`timestamp` or `timestamptz`).
    pub timestamp_column: String,
    /// Window size and Iceberg partition transform.
    pub partition_by: Granularity,
    /// Only windows entirely older than `now - lag` are archived.
    pub lag: Duration,
    /// Iceberg namespace of the archive table.
    pub namespace: Vec<String>,
    /// Iceberg table name of the archive table.
    pub table: String,
    /// Optional row filter (validated, rendered by permafrost, never pasted raw).
    pub filter: Option<String>,
    /// Roll data files at about this size.
    pub target_file_size: u64,
    /// At most this many rows per batch (one Postgres transaction, one snapshot).
    pub max_batch_rows: Option<u64>,
    /// At most this many consecutive windows per batch; [`BATCH_WINDOWS_ALL`]:
    /// every window a run archives, in one batch (one snapshot).
    pub batch_windows: u32,
    /// Group consecutive windows into batches of about this many rows, by
    /// Postgres's estimate of the rows a run archives (at least
    /// `batch_windows` windows each, and two batches per extraction slot
    /// left): small windows share a batch.  Default [`DEFAULT_BATCH_ROWS`]
    /// when `batch_windows` is not given either; `None`: `batch_windows` as
    /// given.
    pub batch_rows: Option<u64>,
    /// Batches of this table extracting at once, each on its own connection
    /// and Postgres transaction (its commits to the catalog one at a time);
    /// with 2 or more, a spare worker finishes a batch meanwhile when
    /// `pool_size` has room (see `archive::workers`).
    pub parallel_windows: usize,
    /// Parquet compression level (zstd); default [`DEFAULT_ZSTD_LEVEL`].
    pub zstd_level: i32,
    /// The Parquet encoding of integer columns written without a dictionary.
    pub integer_encoding: IntegerEncoding,
    /// The Parquet encoding of floating-point columns written without a dictionary.
    pub float_encoding: FloatEncoding,
    /// Columns not archived (their values are dropped with the rows).
    pub exclude_columns: Vec<String>,
    /// Columns archived in their Postgres text form (any type).
    pub text_columns: Vec<String>,
    /// For a range-partitioned source: a batch whose range is exactly a run
    /// of whole partitions exports them under a write lock and drops them
    /// (in the batch transaction, after verification) instead of deleting
    /// their rows.
    pub drop_partitions: bool,
    /// How long a statement that locks the whole partitioned table — a
    /// batch's `DROP` of partitions, a restore's `DETACH` — waits for that
    /// lock, which every reader and writer of the table queues behind
    /// meanwhile; zero waits `lock_timeout`.
    pub drop_lock_timeout: Duration,
}

impl TableConfig {
    /// `schema.name` as written in the config.
    pub fn source_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// `"schema"."name"`, quoted for SQL.
    pub fn quoted_name(&self) -> String {
        use crate::filter::quote_ident;
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// `namespace.table` in the catalog.
    pub fn iceberg_name(&self) -> String {
        format!("{}.{}", self.namespace.join("."), self.table)
    }
}

/// Settings for the whole run.
#[derive(Debug, Clone)]
pub struct GlobalConfig {
    /// Tables archived in parallel.
    pub max_table_concurrency: usize,
    /// Bytes an archive run aims to stay within: its tables' extraction
    /// slots share what is left after the run's own (the archive's memory
    /// budget).
    pub memory_limit: u64,
}

/// `global.memory_limit`'s default: the peak RSS #14 asked of a run.
pub const DEFAULT_MEMORY_LIMIT: u64 = 256 * 1024 * 1024;

/// `tables[].zstd_level`'s default.  Level 1, as Arrow's own writers
/// (PyIceberg, pyarrow) default to: on every table measured its files came
/// out as small as level 3's or smaller, for 4–53 % less CPU per run
/// (README, "Compression level").
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// Failure notifications.
#[derive(Debug, Clone, Default)]
pub struct NotifyConfig {
    /// POST a JSON payload here when a batch fails.
    pub webhook_url: Option<String>,
    /// healthchecks.io-style pings: `URL/start` when a run starts, `URL`
    /// when it succeeds, `URL/fail` when it fails, `URL/log` when it only
    /// found its tables busy.
    pub heartbeat_url: Option<String>,
}

/// `maintenance`: defaults of `permafrost maintain`, and whether `archive`
/// runs it after archiving.
#[derive(Debug, Clone)]
pub struct MaintenanceConfig {
    /// Run `maintain` after every successful `archive`.
    pub after_archive: bool,
    /// Snapshots older than this are expired.
    pub older_than: Duration,
    /// Snapshots always kept.
    pub retain_last: usize,
    /// Data manifests tolerated before they are merged.
    pub max_manifests: usize,
    /// Merge the small data files of each partition.
    pub compact: bool,
    /// Files nothing references are deleted once older than this.
    pub orphan_older_than: Duration,
}

// ---------------------------------------------------------------------------
// Raw file shape

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    database: RawDatabase,
    #[serde(default)]
    catalog: Option<BTreeMap<String, serde_norway::Value>>,
    tables: Vec<RawTable>,
    #[serde(default)]
    global: RawGlobal,
    #[serde(default)]
    notify: RawNotify,
    #[serde(default)]
    maintenance: RawMaintenance,
    #[serde(default)]
    schedule: RawSchedule,
    #[serde(default)]
    serve: serve::RawServe,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    #[serde(default)]
    every: Option<String>,
    #[serde(default)]
    cron: Option<String>,
    #[serde(default)]
    jitter: Option<String>,
    #[serde(default)]
    metrics_listen: Option<String>,
    #[serde(default)]
    grace_period: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMaintenance {
    #[serde(default, deserialize_with = "scalar")]
    after_archive: bool,
    #[serde(default)]
    older_than: Option<String>,
    #[serde(default, deserialize_with = "opt_scalar")]
    retain_last: Option<usize>,
    #[serde(default, deserialize_with = "opt_scalar")]
    max_manifests: Option<usize>,
    #[serde(default, deserialize_with = "opt_scalar")]
    compact: Option<bool>,
    #[serde(default)]
    orphan_older_than: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    dsn: String,
    #[serde(default = "default_pool_size", deserialize_with = "scalar")]
    pool_size: usize,
    #[serde(default)]
    statement_timeout: Option<String>,
    #[serde(default)]
    on_busy: Option<OnBusy>,
    #[serde(default)]
    lock_wait: Option<String>,
    #[serde(default)]
    lock_timeout: Option<String>,
    #[serde(default)]
    ssl_root_cert: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, deserialize_with = "scalar")]
    iam_auth: bool,
    #[serde(default)]
    iam_region: Option<String>,
    #[serde(default)]
    pooler: Pooler,
}

/// A number or boolean, also when written as a string — which is what
/// `${VAR}` expands to (`pool_size: ${POOL:-4}`).
fn scalar<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    use serde::de::Error as _;
    let text = match serde_norway::Value::deserialize(d)? {
        serde_norway::Value::String(s) => s,
        serde_norway::Value::Number(n) => n.to_string(),
        serde_norway::Value::Bool(b) => b.to_string(),
        other => {
            return Err(D::Error::custom(format!(
                "expected a number or boolean, found {other:?}"
            )));
        }
    };
    text.trim().parse().map_err(D::Error::custom)
}

fn opt_scalar<'de, D, T>(d: D) -> std::result::Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    scalar(d).map(Some)
}

/// Batch workers beside the extraction slots, for batches past their
/// extraction: waiting for their commit's turn, committing, reading back,
/// settling (their Postgres transactions open).  On a local catalog one
/// keeps the slots busy; a catalog and an object store a few milliseconds
/// away make that tail several times an extraction, and three kept two
/// slots busy there (README, "Changes measured in paired runs").  Within
/// `database.pool_size`.
pub const FINISHING: usize = 3;

/// The run's own connection, one per extraction slot (`parallel_windows`
/// defaults to the cores) and [`FINISHING`] for batches finishing
/// meanwhile.
fn default_pool_size() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from) + 1 + FINISHING
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    name: String,
    #[serde(default = "default_schema")]
    schema: String,
    timestamp_column: String,
    #[serde(default)]
    partition_by: Option<String>,
    #[serde(default)]
    lag: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    table: Option<String>,
    #[serde(default, alias = "extra_filters")]
    filter: Option<String>,
    #[serde(default)]
    target_file_size: Option<serde_norway::Value>,
    #[serde(default, deserialize_with = "opt_scalar")]
    max_batch_rows: Option<u64>,
    #[serde(default, deserialize_with = "opt_scalar")]
    batch_windows: Option<String>,
    #[serde(default, deserialize_with = "opt_scalar")]
    batch_rows: Option<u64>,
    #[serde(default, deserialize_with = "opt_scalar")]
    parallel_windows: Option<usize>,
    #[serde(default, deserialize_with = "opt_scalar")]
    zstd_level: Option<i32>,
    #[serde(default)]
    integer_encoding: IntegerEncoding,
    #[serde(default)]
    float_encoding: FloatEncoding,
    #[serde(default)]
    exclude_columns: Vec<String>,
    #[serde(default)]
    text_columns: Vec<String>,
    #[serde(default, deserialize_with = "scalar")]
    drop_partitions: bool,
    #[serde(default)]
    drop_lock_timeout: Option<String>,
}

fn default_schema() -> String {
    "public".into()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    #[serde(default, deserialize_with = "opt_scalar")]
    max_table_concurrency: Option<usize>,
    #[serde(default)]
    memory_limit: Option<serde_norway::Value>,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    #[serde(default)]
    webhook_url: Option<String>,
    #[serde(default)]
    heartbeat_url: Option<String>,
}

// ---------------------------------------------------------------------------

impl Config {
    /// Reads, expands and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!("cannot read config file {}: {e}", path.display()))
                .with_hint("pass the file with `-c FILE`; `permafrost demo` runs without one")
        })?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let dir = dir.canonicalize().unwrap_or(dir);
        Self::from_str_with(&text, &dir, &|k| std::env::var(k).ok())
            .map_err(|e| e.prefixed(format!("config {}", path.display())))
    }

    /// Parses configuration text; `dir` anchors the embedded catalog, `env` looks up variables.
    pub fn from_str_with(
        text: &str,
        dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        // `${VAR}` is expanded in the parsed string values, so a value may
        // hold any character (`"`, `\`, `#`, `: `, newlines) unchanged.
        let mut doc: serde_norway::Value = serde_norway::from_str(text)
            .map_err(|e| Error::config(format!("not valid YAML: {e}")))?;
        expand_values(&mut doc, "", env)?;
        let raw: RawConfig = serde_path_to_error::deserialize(doc).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.to_string();
            let key = if path.is_empty() || path == "." {
                String::new()
            } else {
                format!("`{path}`: ")
            };
            Error::config(format!("{key}{msg}"))
                .with_hint("see schemas/permafrost.schema.json for every key and its type")
        })?;
        Self::from_raw(raw, dir)
    }

    fn from_raw(raw: RawConfig, dir: &Path) -> Result<Self> {
        let database = database_config(raw.database, dir)?;
        let catalog = match raw.catalog {
            None => CatalogConfig::embedded(dir)?,
            Some(map) => parse_catalog(map)?,
        };
        let default_namespace = raw
            .global
            .namespace
            .clone()
            .unwrap_or_else(|| "archive".into());
        let tables = tables_config(raw.tables, &default_namespace, database.pool_size)?;
        let max_table_concurrency = raw.global.max_table_concurrency.unwrap_or(2);
        if !(1..=MAX_POOL_SIZE).contains(&max_table_concurrency) {
            return Err(Error::config(format!(
                "`global.max_table_concurrency` must be between 1 and {MAX_POOL_SIZE}"
            )));
        }
        let memory_limit = size_value(raw.global.memory_limit, "`global.memory_limit`")?
            .unwrap_or(DEFAULT_MEMORY_LIMIT);
        if !(64 * 1024 * 1024..=MAX_FILE_SIZE).contains(&memory_limit) {
            return Err(Error::config(
                "`global.memory_limit` must be between 64MiB and 64GiB",
            ));
        }
        Ok(Config {
            database,
            catalog,
            tables,
            global: GlobalConfig {
                max_table_concurrency,
                memory_limit,
            },
            notify: notify_config(raw.notify)?,
            maintenance: maintenance_config(raw.maintenance)?,
            schedule: schedule_config(raw.schedule)?,
            serve: serve::serve_config(raw.serve)?,
        })
    }

    /// The tables selected by `--table` (all when `None`); `name` may be
    /// `table` or `schema.table`.
    pub fn select_tables(&self, name: Option<&str>) -> Result<Vec<TableConfig>> {
        match name {
            None => Ok(self.tables.clone()),
            Some(n) => {
                let found: Vec<_> = self
                    .tables
                    .iter()
                    .filter(|t| t.name == n || t.source_name() == n || t.iceberg_name() == n)
                    .cloned()
                    .collect();
                if found.is_empty() {
                    let names: Vec<_> = self.tables.iter().map(|t| t.source_name()).collect();
                    Err(Error::config(format!("no table `{n}` in the config"))
                        .with_hint(format!("configured tables: {}", names.join(", "))))
                } else {
                    Ok(found)
                }
            }
        }
    }
}

/// `database:`: the DSN parses (its password becomes a secret), the pool
/// size and timeouts are in range, IAM login has no password and uses TLS.
fn database_config(raw: RawDatabase, dir: &Path) -> Result<DatabaseConfig> {
    let dsn = raw.dsn.trim().to_string();
    if dsn.is_empty() {
        return Err(Error::config("`database.dsn` is empty")
            .with_hint("e.g. dsn: \"${PG_DSN:-postgresql://postgres@localhost:5432/postgres}\""));
    }
    let invalid = |e: &dyn std::fmt::Display| {
        Error::config(format!(
            "`database.dsn` is not a valid PostgreSQL connection string: {e}"
        ))
    };
    let (parseable, taken) = crate::source::dsn::split(&dsn).map_err(|e| invalid(&e))?;
    let pg = tokio_postgres::Config::from_str(&parseable).map_err(|e| invalid(&e))?;
    if let Some(pw) = pg.get_password() {
        secret::register(String::from_utf8_lossy(pw).into_owned());
    }
    if !(1..=MAX_POOL_SIZE).contains(&raw.pool_size) {
        return Err(Error::config(format!(
            "`database.pool_size` must be between 1 and {MAX_POOL_SIZE}"
        )));
    }
    let password = raw.password.filter(|p| !p.is_empty());
    if let Some(pw) = &password {
        secret::register(pw.clone());
    }
    if raw.iam_auth && (password.is_some() || pg.get_password().is_some()) {
        return Err(Error::config(
            "`database.iam_auth` logs in with IAM tokens, but a password is configured too",
        )
        .with_hint("remove the password from `database.dsn` / `database.password`"));
    }
    if raw.iam_auth && taken.get("sslmode").is_some_and(|m| m == "disable") {
        return Err(iam_needs_tls());
    }
    let pg_duration = |key: &str, v: &Option<String>, default: Duration| match v {
        Some(s) => parse_duration(s)
            .and_then(|d| at_most(d, MAX_PG_TIMEOUT, "24 days (PostgreSQL's limit)"))
            .map_err(|m| Error::config(format!("`database.{key}`: {m}"))),
        None => Ok(default),
    };
    Ok(DatabaseConfig {
        dsn,
        password,
        pool_size: raw.pool_size,
        statement_timeout: pg_duration(
            "statement_timeout",
            &raw.statement_timeout,
            Duration::ZERO,
        )?,
        on_busy: raw.on_busy.unwrap_or(OnBusy::Skip),
        lock_wait: pg_duration("lock_wait", &raw.lock_wait, Duration::from_secs(10))?,
        lock_timeout: pg_duration("lock_timeout", &raw.lock_timeout, DEFAULT_LOCK_TIMEOUT)?,
        ssl_root_cert: raw.ssl_root_cert.map(|p| dir.join(p)),
        iam_auth: raw.iam_auth,
        iam_region: raw.iam_region.filter(|r| !r.is_empty()),
        pooler: raw.pooler,
    })
}

/// `tables:`: at least one; no source configured twice, no two sources
/// archiving into one Iceberg table.
fn tables_config(
    raw: Vec<RawTable>,
    default_namespace: &str,
    pool_size: usize,
) -> Result<Vec<TableConfig>> {
    if raw.is_empty() {
        return Err(Error::config("`tables` is empty: nothing to archive"));
    }
    let mut tables = Vec::with_capacity(raw.len());
    for (i, t) in raw.into_iter().enumerate() {
        tables.push(parse_table(i, t, default_namespace, pool_size)?);
    }
    for (i, a) in tables.iter().enumerate() {
        for b in &tables[..i] {
            if a.schema == b.schema && a.name == b.name {
                return Err(Error::config(format!(
                    "table {} is configured twice",
                    a.source_name()
                )));
            }
            if a.namespace == b.namespace && a.table == b.table {
                return Err(Error::config(format!(
                    "tables {} and {} both archive into {}",
                    b.source_name(),
                    a.source_name(),
                    a.iceberg_name()
                ))
                .with_hint("give one of them its own `table:` name in the catalog"));
            }
        }
    }
    Ok(tables)
}

/// `notify:`: the URLs parse.
fn notify_config(raw: RawNotify) -> Result<NotifyConfig> {
    for (key, url) in [
        ("webhook_url", &raw.webhook_url),
        ("heartbeat_url", &raw.heartbeat_url),
    ] {
        if let Some(url) = url {
            url::Url::parse(url)
                .map_err(|e| Error::config(format!("`notify.{key}` is not a URL: {e}")))?;
        }
    }
    Ok(NotifyConfig {
        webhook_url: raw.webhook_url,
        heartbeat_url: raw.heartbeat_url,
    })
}

fn parse_table(
    i: usize,
    t: RawTable,
    default_namespace: &str,
    pool_size: usize,
) -> Result<TableConfig> {
    let key = |k: &str| format!("`tables[{i}].{k}`");
    let nonempty = |k: &str, v: &str| -> Result<()> {
        if v.trim().is_empty() {
            Err(Error::config(format!("{} is empty", key(k))))
        } else {
            Ok(())
        }
    };
    nonempty("name", &t.name)?;
    nonempty("schema", &t.schema)?;
    nonempty("timestamp_column", &t.timestamp_column)?;
    let partition_by = match t.partition_by.as_deref() {
        None => Granularity::Day,
        Some(s) => Granularity::parse(s).ok_or_else(|| {
            Error::config(format!(
                "{}: unknown granularity `{s}`",
                key("partition_by")
            ))
            .with_hint("expected one of: hour, day, month, year")
        })?,
    };
    let lag = match t.lag.as_deref() {
        None => Duration::from_secs(15 * 86400),
        Some(s) => parse_duration(s)
            .and_then(|d| at_most(d, MAX_LAG, "1000 years"))
            .map_err(|m| Error::config(format!("{}: {m}", key("lag"))))?,
    };
    let namespace_str = t.namespace.unwrap_or_else(|| default_namespace.to_string());
    let namespace: Vec<String> = namespace_str.split('.').map(str::to_string).collect();
    if namespace.iter().any(|p| p.trim().is_empty()) {
        return Err(Error::config(format!(
            "{}: `{namespace_str}` is not a valid namespace",
            key("namespace")
        )));
    }
    let table = t.table.unwrap_or_else(|| t.name.clone());
    nonempty("table", &table)?;
    let target_file_size =
        size_value(t.target_file_size, &key("target_file_size"))?.unwrap_or(128 * 1024 * 1024);
    if !(1024 * 1024..=MAX_FILE_SIZE).contains(&target_file_size) {
        return Err(Error::config(format!(
            "{} must be between 1MiB and 64GiB",
            key("target_file_size")
        )));
    }
    if let Some(n) = t.max_batch_rows
        && !(1..=i64::MAX as u64).contains(&n)
    {
        return Err(Error::config(format!(
            "{} must be between 1 and {}",
            key("max_batch_rows"),
            i64::MAX
        )));
    }
    let batch_windows = batch_windows(t.batch_windows.as_deref(), partition_by, &key)?;
    let batch_rows = batch_rows(t.batch_rows, t.batch_windows.is_some(), batch_windows, &key)?;
    let parallel_windows = parallel_windows(t.parallel_windows, pool_size, &key)?;
    let zstd_level = t.zstd_level.unwrap_or(DEFAULT_ZSTD_LEVEL);
    if !(1..=22).contains(&zstd_level) {
        return Err(Error::config(format!(
            "{} must be between 1 and 22",
            key("zstd_level")
        )));
    }
    if let Some(f) = &t.filter {
        // Syntax is checked here; columns are checked against the table by `check`/`archive`.
        crate::filter::Filter::parse(f).map_err(|e| e.prefixed(key("filter")))?;
    }
    let drop_lock_timeout = match t.drop_lock_timeout.as_deref() {
        None => DEFAULT_DROP_LOCK_TIMEOUT,
        Some(s) => parse_duration(s)
            .and_then(|d| at_most(d, MAX_PG_TIMEOUT, "24 days (PostgreSQL's limit)"))
            .map_err(|m| Error::config(format!("{}: {m}", key("drop_lock_timeout"))))?,
    };
    Ok(TableConfig {
        schema: t.schema,
        name: t.name,
        timestamp_column: t.timestamp_column,
        partition_by,
        lag,
        namespace,
        table,
        filter: t.filter,
        target_file_size,
        max_batch_rows: t.max_batch_rows,
        batch_windows,
        batch_rows,
        parallel_windows,
        zstd_level,
        integer_encoding: t.integer_encoding,
        float_encoding: t.float_encoding,
        exclude_columns: t.exclude_columns,
        text_columns: t.text_columns,
        drop_partitions: t.drop_partitions,
        drop_lock_timeout,
    })
}

/// `tables[].batch_windows`: a number, or `all`; default a day of hours,
/// else one window.
fn batch_windows(
    raw: Option<&str>,
    partition_by: Granularity,
    key: &dyn Fn(&str) -> String,
) -> Result<u32> {
    match raw.map(str::trim) {
        None if partition_by == Granularity::Hour => Ok(24),
        None => Ok(1),
        Some("all") => Ok(BATCH_WINDOWS_ALL),
        Some(n) => n
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_BATCH_WINDOWS).contains(n))
            .ok_or_else(|| {
                Error::config(format!(
                    "{} must be between 1 and {MAX_BATCH_WINDOWS}, or `all`",
                    key("batch_windows")
                ))
            }),
    }
}

/// `tables[].batch_rows`: a row count, beside a number of windows (not
/// `all`); [`DEFAULT_BATCH_ROWS`] unless `batch_windows` is given
/// (`windows_given`), which then stays exact.
fn batch_rows(
    raw: Option<u64>,
    windows_given: bool,
    batch_windows: u32,
    key: &dyn Fn(&str) -> String,
) -> Result<Option<u64>> {
    let Some(n) = raw else {
        return Ok((!windows_given).then_some(DEFAULT_BATCH_ROWS));
    };
    if !(1..=i64::MAX as u64).contains(&n) {
        return Err(Error::config(format!(
            "{} must be between 1 and {}",
            key("batch_rows"),
            i64::MAX
        )));
    }
    if batch_windows == BATCH_WINDOWS_ALL {
        return Err(Error::config(format!(
            "{} groups windows by rows; {} already puts every window in one batch",
            key("batch_rows"),
            key("batch_windows: all")
        ))
        .with_hint("set one of them"));
    }
    Ok(Some(n))
}

/// `tables[].parallel_windows`: workers each hold a connection besides the
/// run's own (which keeps the table's lock), so a table needs at most
/// `pool_size` connections.  Default: the number of cores.
fn parallel_windows(
    raw: Option<usize>,
    pool_size: usize,
    key: &dyn Fn(&str) -> String,
) -> Result<usize> {
    let most = pool_size.saturating_sub(1).max(1);
    match raw {
        None => Ok(std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(most)),
        Some(n) if (1..=most).contains(&n) => Ok(n),
        Some(_) => Err(Error::config(format!(
            "{} must be between 1 and {most} (`database.pool_size` minus the run's own connection)",
            key("parallel_windows")
        ))
        .with_hint("raise `database.pool_size`, or lower `parallel_windows`")),
    }
}

fn maintenance_config(raw: RawMaintenance) -> Result<MaintenanceConfig> {
    let older_than = match &raw.older_than {
        Some(s) => parse_duration(s)
            .map_err(|m| Error::config(format!("`maintenance.older_than`: {m}")))?,
        None => Duration::from_secs(7 * 86_400),
    };
    let orphan_older_than = match &raw.orphan_older_than {
        Some(s) => parse_duration(s)
            .map_err(|m| Error::config(format!("`maintenance.orphan_older_than`: {m}")))?,
        None => Duration::from_secs(3 * 86_400),
    };
    if orphan_older_than < MIN_ORPHAN_AGE {
        return Err(Error::config(
            "`maintenance.orphan_older_than` must be at least 1h: younger files may belong to \
             a commit in progress",
        ));
    }
    let retain_last = raw.retain_last.unwrap_or(10);
    let max_manifests = raw.max_manifests.unwrap_or(16);
    for (key, v) in [
        ("retain_last", retain_last),
        ("max_manifests", max_manifests),
    ] {
        if v == 0 {
            return Err(Error::config(format!(
                "`maintenance.{key}` must be at least 1"
            )));
        }
    }
    Ok(MaintenanceConfig {
        after_archive: raw.after_archive,
        older_than,
        retain_last,
        max_manifests,
        compact: raw.compact.unwrap_or(true),
        orphan_older_than,
    })
}

fn schedule_config(raw: RawSchedule) -> Result<ScheduleConfig> {
    let duration = |key: &str, v: &Option<String>, default: Duration| match v {
        Some(s) => parse_duration(s).map_err(|m| Error::config(format!("`schedule.{key}`: {m}"))),
        None => Ok(default),
    };
    let metrics_listen = match &raw.metrics_listen {
        Some(a) => Some(a.parse().map_err(|e| {
            Error::config(format!(
                "`schedule.metrics_listen`: `{a}` is not an address: {e}"
            ))
            .with_hint("host:port, e.g. 127.0.0.1:9187 or 0.0.0.0:9187")
        })?),
        None => None,
    };
    let cfg = ScheduleConfig {
        jitter: duration("jitter", &raw.jitter, Duration::ZERO)?,
        grace_period: duration(
            "grace_period",
            &raw.grace_period,
            crate::shutdown::DEFAULT_GRACE,
        )?,
        every: raw.every,
        cron: raw.cron,
        metrics_listen,
    };
    if cfg.every.is_some() || cfg.cron.is_some() {
        crate::schedule::Schedule::parse(cfg.every.as_deref(), cfg.cron.as_deref())
            .map_err(|e| e.prefixed("`schedule`"))?;
    }
    Ok(cfg)
}

/// IAM tokens over plain TCP: refused (RDS and Aurora do too).
pub fn iam_needs_tls() -> Error {
    Error::config("`database.iam_auth` needs TLS, but the DSN says sslmode=disable")
        .with_hint("RDS and Aurora accept IAM tokens over TLS only: use sslmode=verify-full")
}

/// The longest `lag`: windows older than that are never archived anyway, and
/// `now - lag` must stay inside PostgreSQL's timestamp range.
pub const MAX_LAG: Duration = Duration::from_secs(1000 * 366 * 86400);
/// PostgreSQL's timeouts are milliseconds in an `int`.
pub const MAX_PG_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);
/// The default `tables[].drop_lock_timeout`: the longest a partition's
/// `DROP` may hold up the parent's readers and writers queued behind it.
pub const DEFAULT_DROP_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// The default `database.lock_timeout`.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_POOL_SIZE: usize = 1000;
/// The default `batch_rows` (when neither it nor `batch_windows` is given):
/// small windows share a batch, a window of this many rows or more is one.
pub const DEFAULT_BATCH_ROWS: u64 = 250_000;
/// The most windows a batch takes (`batch_windows`, `batch_rows`).
pub const MAX_BATCH_WINDOWS: u32 = 100_000;
/// `batch_windows: all`: one batch for every window of a run (the planner's
/// alignment groups every ordinal of Postgres' range together).
pub const BATCH_WINDOWS_ALL: u32 = u32::MAX;
const MAX_FILE_SIZE: u64 = 64 * 1024 * 1024 * 1024;

fn at_most(d: Duration, max: Duration, what: &str) -> std::result::Result<Duration, String> {
    if d > max {
        Err(format!(
            "{} is too long (at most {what})",
            humantime_secs(d)
        ))
    } else {
        Ok(d)
    }
}

fn humantime_secs(d: Duration) -> String {
    match d.as_secs() {
        s if s % 86400 == 0 && s > 0 => format!("{}d", s / 86400),
        s => format!("{s}s"),
    }
}

/// A size setting's value (a number of bytes, or a string like `128MiB`),
/// if set; `name` is the key as errors show it.
fn size_value(v: Option<serde_norway::Value>, name: &str) -> Result<Option<u64>> {
    match v {
        None => Ok(None),
        Some(serde_norway::Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| Error::config(format!("{name} must be a positive size"))),
        Some(serde_norway::Value::String(s)) => parse_size(&s)
            .map(Some)
            .map_err(|m| Error::config(format!("{name}: {m}"))),
        Some(_) => Err(Error::config(format!("{name} must be a size like 128MiB"))),
    }
}

/// Parses `134217728`, `128MiB`, `128MB`, `1GiB`, `512KiB`.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits == 0 {
        return Err(format!("`{s}` is not a size like 128MiB"));
    }
    let n: u64 = t[..digits]
        .parse()
        .map_err(|_| format!("`{s}`: number too large"))?;
    let mult: u64 = match t[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1024 * 1024,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1024 * 1024 * 1024,
        u => return Err(format!("`{s}`: unknown unit `{u}` (use KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// `user@host:port/db` from a DSN, without the password.
pub fn describe_dsn(dsn: &str) -> String {
    let Ok((dsn, _)) = crate::source::dsn::split(dsn) else {
        return "<invalid dsn>".into();
    };
    match tokio_postgres::Config::from_str(&dsn) {
        Ok(c) => {
            let host = c
                .get_hosts()
                .first()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(s) => s.clone(),
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .unwrap_or_else(|| "localhost".into());
            let port = c.get_ports().first().copied().unwrap_or(5432);
            let user = c.get_user().unwrap_or("?");
            let db = c.get_dbname().unwrap_or(user);
            format!("{user}@{host}:{port}/{db}")
        }
        Err(_) => "<invalid dsn>".into(),
    }
}

fn url_password(s: &str) -> Option<String> {
    let u = url::Url::parse(s).ok()?;
    u.password().map(percent_decode)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Replaces a password in a URL by `***`.
pub fn redact_url_password(s: &str) -> String {
    match url::Url::parse(s) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => s.to_string(),
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        let cwd = std::env::current_dir()
            .map_err(|e| Error::io("cannot read the current directory", e))?;
        Ok(cwd.join(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(map: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = map
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn expands_required_and_defaults() {
        let e = env(&[("A", "x"), ("EMPTY", "")]);
        assert_eq!(
            expand_env("a=${A} b=${B:-d} c=${C:=e}", &e).unwrap(),
            "a=x b=d c=e"
        );
        assert_eq!(expand_env("v=${EMPTY:-dflt}", &e).unwrap(), "v=dflt");
        assert_eq!(
            expand_env("cost $5 and $${A}", &e).unwrap(),
            "cost $5 and ${A}"
        );
    }

    #[test]
    fn the_memory_limit_is_a_size_of_64mib_or_more() {
        let limit = |v: &str| {
            let yaml = format!(
                "database:\n  dsn: host=h\nglobal:\n{v}tables:\n  - name: t\n    timestamp_column: ts\n"
            );
            Config::from_str_with(&yaml, Path::new("."), &env(&[]))
                .map(|c| c.global.memory_limit)
                .map_err(|e| e.to_string())
        };
        assert_eq!(limit(""), Ok(DEFAULT_MEMORY_LIMIT));
        assert_eq!(limit("  memory_limit: 1GiB\n"), Ok(1 << 30));
        assert_eq!(limit("  memory_limit: 134217728\n"), Ok(128 << 20));
        let err = limit("  memory_limit: 32MiB\n").unwrap_err();
        assert!(
            err.contains("`global.memory_limit` must be between 64MiB"),
            "{err}"
        );
        let err = limit("  memory_limit: lots\n").unwrap_err();
        assert!(err.contains("`global.memory_limit`"), "{err}");
        let err = limit("  memory_limit: [1]\n").unwrap_err();
        assert!(err.contains("must be a size like 128MiB"), "{err}");
    }

    #[test]
    fn unset_required_variable_is_named_with_its_key() {
        let e = env(&[]);
        let yaml = "database:\n  dsn: ${PG_DSN}\ntables:\n  - name: t\n    timestamp_column: ts\n";
        let err = Config::from_str_with(yaml, Path::new("."), &e).unwrap_err();
        assert!(err.to_string().contains("`database.dsn`"), "{err}");
        assert!(err.to_string().contains("PG_DSN"), "{err}");
        // Comments are not expanded.
        let yaml = format!(
            "# ${{UNSET}} in a comment\n{}",
            yaml.replace("${PG_DSN}", "host=h")
        );
        assert!(Config::from_str_with(&yaml, Path::new("."), &e).is_ok());
    }

    #[test]
    fn a_rest_catalog_signed_with_sigv4_takes_pyicebergs_keys() {
        let catalog = |extra: &str| {
            let yaml = format!(
                "database:\n  dsn: host=h\ncatalog:\n  type: rest\n  \
                 uri: https://s3tables.us-east-1.amazonaws.com/iceberg\n  warehouse: arn:x\n{extra}\
                 tables:\n  - name: t\n    timestamp_column: ts\n"
            );
            Config::from_str_with(&yaml, Path::new("."), &env(&[])).map(|c| c.catalog)
        };
        let c = catalog("  rest.sigv4-enabled: \"true\"\n").expect("config");
        let sig = c.sigv4().expect("signed");
        assert_eq!(sig.service, "s3tables", "the name from the host");
        assert!(
            c.describe().ends_with("/iceberg (SigV4, s3tables)"),
            "{}",
            c.describe()
        );
        assert_eq!(sig.region, None, "the chain's region");
        let c = catalog(
            "  rest.sigv4-enabled: true\n  rest.signing-name: glue\n  client.region: eu-west-1\n",
        )
        .expect("config");
        let sig = c.sigv4().expect("signed");
        assert_eq!(
            (sig.service.as_str(), sig.region.as_deref()),
            ("glue", Some("eu-west-1"))
        );
        assert_eq!(catalog("").expect("config").sigv4(), None);
        assert_eq!(
            catalog("  rest.sigv4-enabled: false\n")
                .expect("config")
                .sigv4(),
            None
        );
        // OAuth2 as well, or a value that is not a boolean: refused in one line.
        let err = catalog("  rest.sigv4-enabled: true\n  credential: a:b\n").unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Config);
        assert!(err.to_string().contains("not both"), "{err}");
        let err = catalog("  rest.sigv4-enabled: yes please\n").unwrap_err();
        assert!(err.to_string().contains("rest.sigv4-enabled"), "{err}");
    }

    #[test]
    fn pyiceberg_glue_keys_are_aliases() {
        let yaml = "database:\n  dsn: host=h\ncatalog:\n  type: glue\n  warehouse: s3://b/a\n  glue.region: eu-west-1\n  \
                    glue.endpoint: http://127.0.0.1:5000\n  glue.id: \"123456789012\"\n  glue.access-key-id: AKIA1\n  \
                    glue.secret-access-key: sekrit123\ntables:\n  - name: t\n    timestamp_column: ts\n";
        let c = Config::from_str_with(yaml, Path::new("."), &env(&[])).unwrap();
        let p = &c.catalog.properties;
        assert_eq!(p["region_name"], "eu-west-1");
        assert_eq!(p["uri"], "http://127.0.0.1:5000");
        assert_eq!(p["catalog_id"], "123456789012");
        assert_eq!(p["aws_access_key_id"], "AKIA1");
        assert_eq!(p["aws_secret_access_key"], "sekrit123");
        let twice = yaml.replace("glue.id: \"123456789012\"", "glue.id: a\n  catalog_id: b");
        let e = Config::from_str_with(&twice, Path::new("."), &env(&[])).unwrap_err();
        assert!(e.to_string().contains("given twice"), "{e}");
    }

    #[test]
    fn values_are_expanded_after_parsing() {
        let pw = "p\"a\\s#s: $x\nline2";
        let vars = [("PG_PASSWORD", pw), ("POOL", "7"), ("DROP", "true")];
        let e = env(&vars);
        let yaml = "database:\n  dsn: \"host=h user=u password='${PG_PASSWORD}'\"\n  pool_size: ${POOL}\n\
                    tables:\n  - name: t\n    timestamp_column: ts\n    drop_partitions: ${DROP}\n    batch_windows: \"${NOPE:-3}\"\n";
        let c = Config::from_str_with(yaml, Path::new("."), &e).unwrap();
        assert_eq!(c.database.dsn, format!("host=h user=u password='{pw}'"));
        assert_eq!(c.database.pool_size, 7);
        assert!(c.tables[0].drop_partitions);
        assert_eq!(c.tables[0].batch_windows, 3);
        assert_eq!(c.tables[0].drop_lock_timeout, DEFAULT_DROP_LOCK_TIMEOUT);
    }

    /// The zstd level a table gets by default is the one the JSON schema
    /// states (editors show it), and it can be set from 1 to 22.
    #[test]
    fn the_default_zstd_level_is_the_schemas() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../schemas/permafrost.schema.json"))
                .expect("the schema is JSON");
        let stated = &schema["properties"]["tables"]["items"]["properties"]["zstd_level"];
        let level = |v: &str| {
            let yaml = format!(
                "database:\n  dsn: host=h\ntables:\n  - name: t\n    timestamp_column: ts\n{v}"
            );
            Config::from_str_with(&yaml, Path::new("."), &env(&[]))
                .map(|c| c.tables[0].zstd_level)
                .map_err(|e| e.to_string())
        };
        assert_eq!(level(""), Ok(DEFAULT_ZSTD_LEVEL));
        assert_eq!(stated["default"], serde_json::json!(DEFAULT_ZSTD_LEVEL));
        assert_eq!(level("    zstd_level: 19\n"), Ok(19));
        let err = level("    zstd_level: 0\n").unwrap_err();
        assert!(
            err.contains("zstd_level` must be between 1 and 22"),
            "{err}"
        );
    }

    /// The keys serde accepts in `database` and in a table, read from its
    /// refusal of an unknown one, are all in the JSON schema editors use.
    #[test]
    fn every_database_and_table_key_is_in_the_schema() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../schemas/permafrost.schema.json"))
                .expect("the schema is JSON");
        let sections = [
            (
                "database:\n  dsn: h\n  no_such_key: 1\ntables: []\n",
                &schema["properties"]["database"]["properties"],
            ),
            (
                "database:\n  dsn: h\ntables:\n  - name: t\n    timestamp_column: ts\n    no_such_key: 1\n",
                &schema["properties"]["tables"]["items"]["properties"],
            ),
        ];
        for (yaml, properties) in sections {
            let e = Config::from_str_with(yaml, Path::new("."), &env(&[]))
                .unwrap_err()
                .to_string();
            let expected = e
                .split("expected one of ")
                .nth(1)
                .expect("serde lists the keys");
            let keys: Vec<&str> = expected
                .split(", ")
                .map(|k| k.trim_matches(|c: char| c == '`' || c.is_whitespace()))
                .collect();
            assert!(keys.len() > 5, "{e}");
            for k in keys {
                assert!(
                    properties.get(k).is_some(),
                    "`{k}` is not in the schema: {e}"
                );
            }
        }
    }

    #[test]
    fn drop_lock_timeout_is_a_postgres_duration() {
        let yaml = |v: &str| {
            format!(
                "database:\n  dsn: \"host=h\"\ntables:\n  - name: t\n    timestamp_column: ts\n    \
                 drop_partitions: true\n    drop_lock_timeout: {v}\n"
            )
        };
        let c = Config::from_str_with(&yaml("500ms"), Path::new("."), &env(&[])).unwrap();
        assert_eq!(c.tables[0].drop_lock_timeout, Duration::from_millis(500));
        let e = Config::from_str_with(&yaml("25d"), Path::new("."), &env(&[])).unwrap_err();
        assert!(
            e.to_string().contains("`tables[0].drop_lock_timeout`")
                && e.to_string().contains("24 days"),
            "{e}"
        );
    }

    #[test]
    fn batch_rows_is_a_positive_count_beside_a_number_of_windows() {
        let yaml = |extra: &str| {
            format!(
                "database:\n  dsn: \"host=h\"\ntables:\n  - name: t\n    timestamp_column: ts\n{extra}"
            )
        };
        let parse = |extra: &str| Config::from_str_with(&yaml(extra), Path::new("."), &env(&[]));
        let c = parse("    batch_rows: 250000\n").unwrap();
        assert_eq!(c.tables[0].batch_rows, Some(250_000));
        assert_eq!(c.tables[0].batch_windows, 1);
        assert_eq!(
            parse("").unwrap().tables[0].batch_rows,
            Some(DEFAULT_BATCH_ROWS)
        );
        assert_eq!(
            parse("    batch_windows: 1\n").unwrap().tables[0].batch_rows,
            None
        );
        let e = parse("    batch_rows: 0\n").unwrap_err();
        assert!(e.to_string().contains("batch_rows"), "{e}");
        let e = parse("    batch_rows: 1000\n    batch_windows: all\n").unwrap_err();
        assert!(e.to_string().contains("already puts every window"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("15d").unwrap(),
            Duration::from_secs(15 * 86400)
        );
        assert_eq!(parse_duration("6h").unwrap(), Duration::from_secs(6 * 3600));
        assert_eq!(
            parse_duration("1d12h").unwrap(),
            Duration::from_secs(36 * 3600)
        );
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("15y").is_err());
        assert!(parse_duration("d").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("128MiB").unwrap(), 128 * 1024 * 1024);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("12XB").is_err());
    }

    const MINIMAL: &str = r#"
database:
  dsn: "postgresql://u:hunter2@db:5433/app"
tables:
  - name: readings
    timestamp_column: ts
"#;

    #[test]
    fn minimal_config_uses_embedded_catalog_and_defaults() {
        let c = Config::from_str_with(MINIMAL, Path::new("/srv/pf"), &env(&[])).unwrap();
        assert_eq!(c.catalog.kind, CatalogKind::Sql);
        assert_eq!(
            c.catalog.properties["uri"],
            "sqlite:///srv/pf/permafrost/catalog.db?mode=rwc"
        );
        assert_eq!(
            c.catalog.properties["warehouse"],
            "file:///srv/pf/permafrost/warehouse"
        );
        let t = &c.tables[0];
        assert_eq!(t.schema, "public");
        assert_eq!(t.partition_by, Granularity::Day);
        assert_eq!(t.lag, Duration::from_secs(15 * 86400));
        assert_eq!(t.namespace, vec!["archive".to_string()]);
        assert_eq!(t.table, "readings");
        assert_eq!(c.database.describe(), "u@db:5433/app");
        assert!(!format!("{:?}", c).contains("hunter2"));
    }

    #[test]
    fn errors_name_the_key() {
        let bad = MINIMAL.replace(
            "timestamp_column: ts",
            "timestamp_column: ts\n    partition_by: weekly",
        );
        let err = Config::from_str_with(&bad, Path::new("."), &env(&[])).unwrap_err();
        assert!(err.to_string().contains("tables[0].partition_by"), "{err}");

        let bad = MINIMAL.replace("timestamp_column: ts", "timestamp_column: ts\n    lagg: 3d");
        let err = Config::from_str_with(&bad, Path::new("."), &env(&[])).unwrap_err();
        assert!(err.to_string().contains("lagg"), "{err}");

        let bad = MINIMAL.replace("timestamp_column: ts", "timestamp_column: ts\n    lag: 3x");
        let err = Config::from_str_with(&bad, Path::new("."), &env(&[])).unwrap_err();
        assert!(err.to_string().contains("tables[0].lag"), "{err}");

        let bad = "database:\n  dsn: x\ntables: [";
        let err = Config::from_str_with(bad, Path::new("."), &env(&[])).unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Config);
    }

    #[test]
    fn catalog_properties_pass_through_and_secrets_hide() {
        let text = format!(
            "{MINIMAL}catalog:\n  type: rest\n  uri: http://localhost:8181\n  credential: key:s3cr3t-value\n  s3.path-style-access: true\n"
        );
        let c = Config::from_str_with(&text, Path::new("."), &env(&[])).unwrap();
        assert_eq!(c.catalog.kind, CatalogKind::Rest);
        assert_eq!(c.catalog.properties["s3.path-style-access"], "true");
        assert_eq!(c.catalog.properties["credential"], "key:s3cr3t-value");
        assert!(!format!("{:?}", c.catalog).contains("s3cr3t-value"));
        assert_eq!(secret::redact("token key:s3cr3t-value"), "token ***");
    }

    #[test]
    fn sql_catalog_bind_style_follows_uri() {
        let text = format!(
            "{MINIMAL}catalog:\n  type: sql\n  uri: postgresql://a:pw@h/cat\n  warehouse: s3://b/w\n"
        );
        let c = Config::from_str_with(&text, Path::new("."), &env(&[])).unwrap();
        assert_eq!(c.catalog.properties["sql_bind_style"], "DollarNumeric");
        assert!(!c.catalog.describe().contains("pw"));
    }

    #[test]
    fn parallel_windows_leave_the_run_its_own_connection() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let c = Config::from_str_with(MINIMAL, Path::new("."), &env(&[])).unwrap();
        assert_eq!(c.database.pool_size, cores + 1 + FINISHING);
        assert_eq!(
            c.tables[0].parallel_windows, cores,
            "the default pool has room"
        );
        let with = |extra: &str| {
            let text = MINIMAL
                .replace(
                    "timestamp_column: ts",
                    &format!("timestamp_column: ts\n{extra}"),
                )
                .replace("database:\n", "database:\n  pool_size: 4\n");
            Config::from_str_with(&text, Path::new("."), &env(&[]))
        };
        let c = with("").unwrap();
        assert_eq!(c.tables[0].parallel_windows, cores.min(3));
        assert_eq!(
            with("    parallel_windows: 3").unwrap().tables[0].parallel_windows,
            3
        );
        let e = with("    parallel_windows: 4").unwrap_err();
        assert!(
            e.message()
                .contains("`tables[0].parallel_windows` must be between 1 and 3"),
            "{e}"
        );
        assert!(with("    parallel_windows: 0").is_err());
    }

    #[test]
    fn seed_compatible_names() {
        let text = MINIMAL.replace(
            "timestamp_column: ts",
            "timestamp_column: ts\n    partition_by: hourly\n    extra_filters: \"kind = 'a'\"",
        );
        let c = Config::from_str_with(&text, Path::new("."), &env(&[])).unwrap();
        assert_eq!(c.tables[0].partition_by, Granularity::Hour);
        assert_eq!(c.tables[0].batch_windows, 24);
        assert_eq!(c.tables[0].filter.as_deref(), Some("kind = 'a'"));
    }

    #[test]
    fn duplicate_targets_are_refused() {
        let text =
            format!("{MINIMAL}  - name: other\n    timestamp_column: ts\n    table: readings\n");
        let err = Config::from_str_with(&text, Path::new("."), &env(&[])).unwrap_err();
        assert!(err.to_string().contains("archive.readings"), "{err}");
    }
}
