//! Command-line definitions (clap derive).  Resolution into settings and the
//! command functions live in [`super::commands`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Move old rows of PostgreSQL time-series tables into Apache Iceberg tables,
/// verified before anything is deleted, and bring them back on demand.
#[derive(Debug, Parser)]
#[command(name = "permafrost", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log level for stderr (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info", env = "PERMAFROST_LOG")]
    pub log_level: String,

    /// No progress bars and only warnings/errors on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// Log lines as text, or as one JSON object each (time, level, table,
    /// batch, window, message) for log pipelines.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "PERMAFROST_LOG_FORMAT"
    )]
    pub log_format: crate::logging::LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// The config file option shared by most commands.
#[derive(Debug, Args, Clone)]
pub struct ConfigArg {
    /// Configuration file (YAML).
    #[arg(
        long,
        short = 'c',
        env = "PERMAFROST_CONFIG",
        default_value = "permafrost.yaml"
    )]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Archive sample sensor data into an embedded catalog, end to end, on this machine.
    Demo(DemoArgs),
    /// Validate the config and check Postgres, the catalog, the warehouse storage and every table.
    Check(CheckArgs),
    /// Archive every window older than the lag: extract, write, commit, verify, delete.
    Archive(ArchiveArgs),
    /// Archive the windows of a time range that still hold rows, whatever the lag.
    Replay(ReplayArgs),
    /// Per-table state derived from the catalog and Postgres.
    Status(StatusArgs),
    /// Every snapshot of an archive table with its permafrost properties, newest first.
    Snapshots(SnapshotsArgs),
    /// One line per window: partition, rows, files, size, snapshot, state.
    List(ListArgs),
    /// Schema (with Postgres types), partition spec, sort order, properties, schema history.
    Show(ShowArgs),
    /// What changed between two snapshots: windows, files, rows.
    Diff(DiffArgs),
    /// Rows of a time range at any snapshot, as CSV, JSON, JSON Lines or Parquet.
    Fetch(FetchArgs),
    /// SQL over archived tables (`SELECT … FROM archive.<table>`), with time travel.
    Query(QueryArgs),
    /// Serve a read-only HTTP API over the archives: metadata, queries, SQL
    /// (needs the `query` feature).
    Serve(ServeArgs),
    /// Bring an archived range back into Postgres: staged, validated, then attached or merged.
    Restore(RestoreArgs),
    /// Keep archive tables and their storage small: compact small files, expire
    /// old snapshots, merge manifests, delete orphan files.
    Maintain(MaintainArgs),
    /// Archive on a schedule in one long-running process, with /metrics, /healthz and /readyz.
    Run(RunArgs),
    /// Shell completions (bash, zsh, fish, elvish, powershell) on stdout.
    Completions(CompletionsArgs),
    /// The man page (roff) on stdout.
    Man,
}

/// What cron runs and `run` share: metrics out, graceful stop.
#[derive(Debug, Args, Clone)]
pub struct OperateArgs {
    /// After SIGTERM/SIGINT, let the batch in flight finish this long before
    /// aborting it before its commit [default: `schedule.grace_period`, else 25s].
    #[arg(long)]
    pub grace: Option<String>,
    #[command(flatten)]
    pub metrics: MetricsOutArgs,
}

/// Where a one-shot command's metrics go.
#[derive(Debug, Args, Clone)]
pub struct MetricsOutArgs {
    /// Write the run's metrics here for node-exporter's textfile collector.
    #[arg(long)]
    pub metrics_textfile: Option<PathBuf>,
    /// Push the run's metrics to this Prometheus Pushgateway (job `permafrost`).
    #[arg(long)]
    pub pushgateway: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Run every interval (`1h`, `15m`) [default: `schedule.every`].
    #[arg(long, conflicts_with = "cron")]
    pub every: Option<String>,
    /// Run at the times of this cron expression, UTC (`"0 * * * *"`) [default: `schedule.cron`].
    #[arg(long)]
    pub cron: Option<String>,
    /// Start each run up to this much later, at random [default: `schedule.jitter`, else 0s].
    #[arg(long)]
    pub jitter: Option<String>,
    /// Serve /metrics, /healthz and /readyz on this address (`127.0.0.1:9187`)
    /// [default: `schedule.metrics_listen`, else none].
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// After SIGTERM/SIGINT, let the batch in flight finish this long
    /// [default: `schedule.grace_period`, else 25s].
    #[arg(long)]
    pub grace: Option<String>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Window states for `list --status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateArg {
    Archived,
    Kept,
    Pending,
    Failed,
}

/// `--snapshot ID` or `--as-of TIME`.
#[derive(Debug, Args, Clone)]
pub struct SnapshotArg {
    /// Read this snapshot (time travel); `permafrost snapshots` lists them.
    #[arg(long, conflicts_with = "as_of")]
    pub snapshot: Option<i64>,
    /// Read the snapshot that was current at this time (date or RFC 3339).
    #[arg(long)]
    pub as_of: Option<String>,
}

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The table (name, schema.name or namespace.table).
    #[arg(long, short = 't')]
    pub table: String,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only this table.
    #[arg(long, short = 't')]
    pub table: Option<String>,
    /// Windows starting at or after this date.
    #[arg(long)]
    pub from: Option<String>,
    /// Windows starting before this date.
    #[arg(long)]
    pub to: Option<String>,
    /// Only windows in this state.
    #[arg(long, value_enum)]
    pub status: Option<StateArg>,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
    /// Pretend the current time is this (RFC 3339); for tests and demos.
    #[arg(long, hide = true)]
    pub now: Option<String>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The table.
    #[arg(long, short = 't')]
    pub table: String,
    #[command(flatten)]
    pub at: SnapshotArg,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The table.
    #[arg(long, short = 't')]
    pub table: String,
    /// The older snapshot (exclusive).
    #[arg(long)]
    pub from_snapshot: i64,
    /// The newer snapshot (inclusive).
    #[arg(long)]
    pub to_snapshot: i64,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The table.
    #[arg(long, short = 't')]
    pub table: String,
    /// Start of the range (inclusive): date or RFC 3339.
    #[arg(long)]
    pub from: String,
    /// End of the range (exclusive).
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub at: SnapshotArg,
    /// Only these columns (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub columns: Option<Vec<String>>,
    /// A row filter, e.g. "sensor_id = 3 AND value > 20" (pushed down to the scan).
    #[arg(long = "where")]
    pub filter: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "csv")]
    pub format: crate::inspect::fetch::Format,
    /// Write here instead of stdout (`-` is stdout).
    #[arg(long, short = 'o')]
    pub output: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The table.
    #[arg(long, short = 't')]
    pub table: String,
    /// Start of the range (inclusive): date or RFC 3339.
    #[arg(long)]
    pub from: String,
    /// End of the range (exclusive).
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub at: SnapshotArg,
    /// The staging table (SCHEMA.TABLE or TABLE); default
    /// `<table>_restore_<from>_<to>` beside the target.  Must not exist.
    #[arg(long)]
    pub into: Option<String>,
    /// Where `--attach`/`--merge` put the rows (default: the configured source table).
    #[arg(long)]
    pub target: Option<String>,
    /// Attach the staging table as the range partition of a range-partitioned target.
    #[arg(long, conflicts_with = "merge")]
    pub attach: bool,
    /// With `--attach`: detach an existing partition of exactly this range first
    /// (dropped when empty, kept under a new name otherwise).
    #[arg(long, requires = "attach")]
    pub replace_partition: bool,
    /// Insert the staged rows into the target in one transaction.
    #[arg(long)]
    pub merge: bool,
    /// With `--merge`: rows whose primary key is already in the target fail
    /// validation (error), are left out (skip) or replace it (update).
    #[arg(long, value_enum, default_value = "error", requires = "merge")]
    pub on_conflict: crate::restore::OnConflict,
    /// Keep the staging table after a merge.
    #[arg(long)]
    pub keep_staging: bool,
    /// Machine-readable report on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub metrics: MetricsOutArgs,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The SQL (DataFusion dialect); tables are `archive.<iceberg table name>`.
    pub sql: String,
    /// Read every table as it was at this instant (date or RFC 3339).
    #[arg(long)]
    pub as_of: Option<String>,
    /// Output format (`table` shows at most 10,000 rows).
    #[arg(long, value_enum, default_value = "table")]
    pub format: QueryFormatArg,
    /// Write here instead of stdout (`-` is stdout).
    #[arg(long, short = 'o')]
    pub output: Option<std::path::PathBuf>,
    /// Do not run: print each Iceberg scan the query would make (table,
    /// snapshot, pushed-down filter, data files after pruning).
    #[arg(long)]
    pub explain: bool,
    /// With `--explain`: machine-readable output on stdout.
    #[arg(long, requires = "explain")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Listen here (default `serve.listen`, else 127.0.0.1:8080); port 0
    /// picks a free one.  The URL is printed on stdout.
    #[arg(long)]
    pub listen: Option<String>,
    /// Allow a non-loopback address without `serve.tokens`.
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Print the OpenAPI document and exit (needs no config).
    #[arg(long)]
    pub openapi: bool,
}

/// Output formats of `query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueryFormatArg {
    Table,
    Csv,
    Json,
    Jsonl,
    Parquet,
    /// An Arrow IPC stream.
    Arrow,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Use this Postgres instead of starting a throwaway one.
    #[arg(long, env = "PERMAFROST_DEMO_DSN")]
    pub dsn: Option<String>,
    /// Where to put the embedded catalog and warehouse (default: ./permafrost-demo).
    #[arg(long, default_value = "permafrost-demo")]
    pub dir: PathBuf,
    /// Sample rows to generate.
    #[arg(long, default_value_t = 200_000)]
    pub rows: u64,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only this table.
    #[arg(long, short = 't')]
    pub table: Option<String>,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ArchiveArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only this table (name, schema.name or namespace.table).
    #[arg(long, short = 't')]
    pub table: Option<String>,
    /// Show the windows and row counts that would be archived; write and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Archive and verify, but keep the rows in Postgres.
    #[arg(long)]
    pub no_delete: bool,
    /// Retry windows blocked by a batch that failed verification.
    #[arg(long)]
    pub force: bool,
    /// Machine-readable report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Pretend the current time is this (RFC 3339); for tests and demos.
    #[arg(long, hide = true)]
    pub now: Option<String>,
    #[command(flatten)]
    pub operate: OperateArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only this table.
    #[arg(long, short = 't')]
    pub table: Option<String>,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
    /// Pretend the current time is this (RFC 3339); for tests and demos.
    #[arg(long, hide = true)]
    pub now: Option<String>,
}

#[derive(Debug, Args)]
pub struct MaintainArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only this table.
    #[arg(long, short = 't')]
    pub table: Option<String>,
    /// Say what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Expire snapshots older than this (`7d`, `12h`); time travel stays
    /// possible within it [default: `maintenance.older_than`, else 7d].
    #[arg(long)]
    pub older_than: Option<String>,
    /// Snapshots always kept, however old [default: `maintenance.retain_last`, else 10].
    #[arg(long)]
    pub retain_last: Option<usize>,
    /// Merge the current snapshot's data manifests when there are more than
    /// this [default: `maintenance.max_manifests`, else 16].
    #[arg(long)]
    pub max_manifests: Option<usize>,
    /// Leave small data files as they are [default: `maintenance.compact`, else compact].
    #[arg(long)]
    pub no_compact: bool,
    /// Delete files no metadata references once older than this; at least
    /// 1h [default: `maintenance.orphan_older_than`, else 3d].
    #[arg(long)]
    pub orphan_older_than: Option<String>,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
    /// Pretend the current time is this (RFC 3339); for tests and demos.
    #[arg(long, hide = true)]
    pub now: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The table (name, schema.name or namespace.table).
    #[arg(long, short = 't')]
    pub table: String,
    /// Start of the range (date or RFC 3339); widened to the start of its window.
    #[arg(long)]
    pub from: String,
    /// End of the range, exclusive; widened to the end of its window.
    #[arg(long)]
    pub to: String,
    /// Show what would be archived; write and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Archive and verify, but keep the rows in Postgres.
    #[arg(long)]
    pub no_delete: bool,
    /// Also retry windows blocked by a batch that failed verification.
    #[arg(long)]
    pub force: bool,
    /// Machine-readable report on stdout.
    #[arg(long)]
    pub json: bool,
}
