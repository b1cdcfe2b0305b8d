//! `query`: SQL over archived tables, on an embedded DataFusion engine
//! (cargo feature `query`).
//!
//! Every configured table whose Iceberg table exists is registered as
//! `archive.<table>` (and plain `<table>`), pinned to one snapshot: the current
//! one, or the one current at `--as-of`.  Filters on any column, the time
//! column included, are pushed down to the Iceberg scan, so partitions and
//! files that cannot match are never read; the stats report how many data
//! files each scan planned.  Read-only: nothing here writes to the catalog or
//! to Postgres.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use futures::{StreamExt, TryStreamExt};
use iceberg::Catalog;
use iceberg::table::Table;
use iceberg_datafusion::IcebergStaticTableProvider;
use iceberg_datafusion::physical_plan::IcebergTableScan;
use serde::Serialize;

use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::inspect::fetch::{Format, Sink};
use crate::inspect::{SnapshotChoice, resolve_snapshot};
use crate::lake;
use crate::plan::window::{Micros, rfc3339};

/// The schema archived tables are registered under.
pub const SCHEMA: &str = "archive";

/// Rows printed by `--format table` (which must hold them to size columns).
pub const TABLE_ROW_LIMIT: usize = 10_000;

/// Output formats of `query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryFormat {
    /// An aligned text table (at most 10,000 rows).
    Table,
    Csv,
    Json,
    Jsonl,
    Parquet,
    /// An Arrow IPC stream.
    Arrow,
}

/// One Iceberg scan the query ran.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ScanStats {
    pub table: String,
    pub snapshot_id: Option<i64>,
    /// The filter pushed down to the scan, as Iceberg prints it.
    pub predicate: Option<String>,
    /// Data files the scan planned, after partition pruning.
    pub files: usize,
}

/// What a query did.
#[derive(Debug, Clone, Serialize)]
pub struct QueryStats {
    pub rows: u64,
    pub scans: Vec<ScanStats>,
    /// Tables registered, with the snapshot each is pinned to.
    pub tables: Vec<(String, Option<i64>)>,
    /// Rows left out of `--format table` output.
    pub truncated: u64,
    pub seconds: f64,
}

impl QueryStats {
    /// Data files planned over all scans.
    pub fn files(&self) -> usize {
        self.scans.iter().map(|s| s.files).sum()
    }
}

/// A planned query: the tables it may read, pinned to their snapshots, and
/// the Iceberg scans its physical plan makes.
pub struct Prepared {
    ctx: SessionContext,
    plan: Arc<dyn ExecutionPlan>,
    names: Vec<String>,
    /// Tables registered, with the snapshot each is pinned to.
    pub tables: Vec<(String, Option<i64>)>,
    /// The scans, each with the data files it reads after pruning.
    pub scans: Vec<ScanStats>,
}

/// Registers the archive tables of `catalog` (at `as_of`, or current) and
/// plans `sql`.  Only queries are accepted: DDL (`CREATE EXTERNAL TABLE`, which
/// would read local files), DML (`COPY … TO`, `INSERT`) and statements (`SET`)
/// are refused, so a query can read nothing but the archive and write nothing.
pub async fn prepare(
    cfg: &Config,
    catalog: &dyn Catalog,
    sql: &str,
    as_of: Option<Micros>,
) -> Result<Prepared> {
    let ctx = SessionContext::new_with_config(
        SessionConfig::new()
            .with_default_catalog_and_schema("permafrost", SCHEMA)
            .with_create_default_catalog_and_schema(true)
            .with_information_schema(true),
    );
    let tables = register_tables(cfg, catalog, &ctx, as_of).await?;
    let names: Vec<String> = tables
        .iter()
        .map(|(n, _)| format!("{SCHEMA}.{n}"))
        .collect();
    let read_only = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx
        .sql_with_options(sql, read_only)
        .await
        .map_err(|e| sql_error(e, &names))?;
    let plan = df
        .create_physical_plan()
        .await
        .map_err(|e| sql_error(e, &names))?;
    let scans = planned_scans(&plan).await?;
    Ok(Prepared {
        ctx,
        plan,
        names,
        tables,
        scans,
    })
}

/// A query under way.
pub struct Running {
    /// The result, batch by batch (errors already ours).
    pub batches: futures::stream::BoxStream<'static, Result<arrow_array::RecordBatch>>,
    /// The result's schema (also when it has no rows).
    pub schema: arrow_schema::SchemaRef,
    /// Tables registered, with the snapshot each is pinned to.
    pub tables: Vec<(String, Option<i64>)>,
    /// The scans, each with the data files it reads after pruning.
    pub scans: Vec<ScanStats>,
}

/// Starts a prepared query.
pub fn start(prepared: Prepared) -> Result<Running> {
    let Prepared {
        ctx,
        plan,
        names,
        tables,
        scans,
    } = prepared;
    let stream = execute_stream(plan.clone(), ctx.task_ctx()).map_err(|e| sql_error(e, &names))?;
    let scanned = plan.clone();
    let batches = stream
        .map_err(move |e| sql_error(e, &names))
        .then(move |read| {
            let plan = scanned.clone();
            async move {
                match read {
                    Err(e) if matches!(e.kind(), ErrorKind::Verification | ErrorKind::Catalog) => {
                        Err(name_damaged(e, &plan).await)
                    }
                    other => other,
                }
            }
        });
    Ok(Running {
        batches: Box::pin(batches),
        schema: plan.schema(),
        tables,
        scans,
    })
}

/// Runs a prepared query and writes its result to `out` in `format`.
pub async fn run<W: Write + Send>(
    prepared: Prepared,
    format: QueryFormat,
    out: W,
    progress: &indicatif::ProgressBar,
) -> Result<QueryStats> {
    let started = Instant::now();
    let Running {
        batches: mut stream,
        schema,
        tables,
        scans,
    } = start(prepared)?;
    let mut rows = 0u64;
    let mut truncated = 0u64;
    match format {
        QueryFormat::Table => {
            let mut kept = Vec::new();
            let mut kept_rows = 0usize;
            while let Some(batch) = stream.try_next().await? {
                rows += batch.num_rows() as u64;
                progress.inc(batch.num_rows() as u64);
                let room = TABLE_ROW_LIMIT - kept_rows;
                if batch.num_rows() <= room {
                    kept_rows += batch.num_rows();
                    kept.push(batch);
                } else {
                    if room > 0 {
                        kept.push(batch.slice(0, room));
                        kept_rows += room;
                    }
                    truncated += (batch.num_rows() - room) as u64;
                }
            }
            if kept.is_empty() {
                kept.push(arrow_array::RecordBatch::new_empty(schema.clone()));
            }
            let text = datafusion::arrow::util::pretty::pretty_format_batches(&kept)
                .map_err(|e| Error::internal(format!("cannot format the result: {e}")))?;
            let mut out = out;
            writeln!(out, "{text}")
                .and_then(|_| out.flush())
                .map_err(|e| Error::io("cannot write the output", e))?;
        }
        other => {
            let format = match other {
                QueryFormat::Csv => Format::Csv,
                QueryFormat::Json => Format::Json,
                QueryFormat::Jsonl => Format::Jsonl,
                QueryFormat::Arrow => Format::Arrow,
                _ => Format::Parquet,
            };
            let mut sink = Sink::new(format, out);
            while let Some(batch) = stream.try_next().await? {
                rows += batch.num_rows() as u64;
                progress.inc(batch.num_rows() as u64);
                sink.write(&batch)?;
            }
            sink.finish(schema)?;
        }
    }
    Ok(QueryStats {
        rows,
        scans,
        tables,
        truncated,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Registers every configured table that exists in the catalog, pinned to
/// its snapshot; returns `(name, snapshot)` for each.
async fn register_tables(
    cfg: &Config,
    catalog: &dyn Catalog,
    ctx: &SessionContext,
    as_of: Option<Micros>,
) -> Result<Vec<(String, Option<i64>)>> {
    let mut registered: Vec<(String, Option<i64>)> = Vec::new();
    for t in &cfg.tables {
        let ident = lake::table::ident(t)?;
        let exists = catalog
            .table_exists(&ident)
            .await
            .map_err(|e| Error::iceberg(format!("cannot look up {ident} in the catalog"), e))?;
        if !exists {
            tracing::debug!("{ident} does not exist yet; not registered");
            continue;
        }
        if registered.iter().any(|(n, _)| n == &t.table) {
            return Err(Error::config(format!(
                "two configured tables are both named `{}` in the archive",
                t.table
            ))
            .with_hint("`query` registers tables by their Iceberg table name; give one another `iceberg.table`"));
        }
        let table = lake::commit::reload(catalog, &ident).await?;
        let choice = match as_of {
            Some(t) => SnapshotChoice::AsOf(t),
            None => SnapshotChoice::Current,
        };
        let snapshot = match resolve_snapshot(&table, choice) {
            Ok(s) => s.map(|s| s.snapshot_id()),
            Err(_) if as_of.is_some() => {
                tracing::info!(
                    "{ident} had no snapshot at {}; not registered",
                    rfc3339(as_of.unwrap_or_default())
                );
                continue;
            }
            Err(e) => return Err(e),
        };
        let provider = provider(table, snapshot).await?;
        ctx.register_table(t.table.as_str(), Arc::new(provider))
            .map_err(|e| Error::internal(format!("cannot register {}: {e}", t.table)))?;
        registered.push((t.table.clone(), snapshot));
    }
    Ok(registered)
}

async fn provider(table: Table, snapshot: Option<i64>) -> Result<IcebergStaticTableProvider> {
    let r = match snapshot {
        Some(id) => IcebergStaticTableProvider::try_new_from_table_snapshot(table, id).await,
        None => IcebergStaticTableProvider::try_new_from_table(table).await,
    };
    r.map_err(|e| Error::iceberg("cannot open the table for SQL", e))
}

/// The Iceberg scans of `plan`, each planned once more (metadata only) to
/// count the data files it reads; refused when a snapshot it reads holds
/// deletion vectors ([`lake::readback::refuse_deletion_vectors`]).
async fn planned_scans(plan: &Arc<dyn ExecutionPlan>) -> Result<Vec<ScanStats>> {
    let mut found = Vec::new();
    let mut stack = vec![plan.clone()];
    while let Some(node) = stack.pop() {
        if let Some(scan) = node.as_any().downcast_ref::<IcebergTableScan>() {
            found.push(count_files(scan).await?);
        }
        stack.extend(node.children().into_iter().cloned());
    }
    Ok(found)
}

async fn count_files(scan: &IcebergTableScan) -> Result<ScanStats> {
    let table = scan.table();
    let snapshot_id = scan
        .snapshot_id()
        .or_else(|| table.metadata().current_snapshot_id());
    let files = match snapshot_id.and_then(|id| table.metadata().snapshot_by_id(id)) {
        None => 0,
        Some(snapshot) => {
            lake::readback::refuse_deletion_vectors(table, snapshot).await?;
            planned_files(scan)
                .await?
                .try_fold(0usize, |n, _| async move { Ok(n + 1) })
                .await?
        }
    };
    Ok(ScanStats {
        table: table.identifier().name().to_string(),
        snapshot_id,
        predicate: scan.predicates().map(|p| p.to_string()),
        files,
    })
}

/// The data files `scan` reads (its snapshot, its pushed-down filter),
/// planned again from the metadata.
async fn planned_files(
    scan: &IcebergTableScan,
) -> Result<impl futures::Stream<Item = Result<iceberg::scan::FileScanTask>> + use<>> {
    let plan_error = |e| Error::iceberg("cannot plan the scan", e);
    let mut builder = scan.table().scan();
    if let Some(id) = scan.snapshot_id() {
        builder = builder.snapshot_id(id);
    }
    if let Some(p) = scan.predicates() {
        builder = builder.with_filter(p.clone());
    }
    let planned = builder.select_all().build().map_err(plan_error)?;
    Ok(planned
        .plan_files()
        .await
        .map_err(plan_error)?
        .map_err(plan_error))
}

/// `e` — reading the query's data failed — as the damaged file it is, when
/// a look at the files `plan` scans (size and Parquet footer, not the
/// data: [`lake::readback::look_at`]) finds one; else `e` as it is.  Stops
/// at the first file the storage does not let it look at (an outage is
/// not a damaged file).
async fn name_damaged(e: Error, plan: &Arc<dyn ExecutionPlan>) -> Error {
    use lake::readback::Look;
    let mut stack = vec![plan.clone()];
    while let Some(node) = stack.pop() {
        stack.extend(node.children().into_iter().cloned());
        let Some(scan) = node.as_any().downcast_ref::<IcebergTableScan>() else {
            continue;
        };
        let Ok(files) = planned_files(scan).await else {
            return e;
        };
        let io = scan.table().file_io().clone();
        let looks = files
            .map_ok(|task| {
                let io = io.clone();
                async move {
                    let (path, size) = (task.data_file_path, task.file_size_in_bytes);
                    Ok((lake::readback::look_at(&io, &path, size).await, path))
                }
            })
            .try_buffer_unordered(LOOKS_AT_ONCE);
        let mut looks = std::pin::pin!(looks);
        loop {
            match looks.try_next().await {
                Ok(Some((Look::Whole, _))) => continue,
                Ok(Some((Look::Damaged(cause), path))) => {
                    return Error::damaged_file("query failed", Some(&path), &cause);
                }
                Ok(None) => break,
                Ok(Some((Look::Unreadable, _))) | Err(_) => return e,
            }
        }
    }
    e
}

/// Data files [`name_damaged`] looks at at once.
const LOOKS_AT_ONCE: usize = 8;

/// A DataFusion error as ours: SQL mistakes are the user's, with the tables
/// they can use as the hint.
fn sql_error(e: datafusion::error::DataFusionError, tables: &[String]) -> Error {
    use datafusion::error::DataFusionError as D;
    let hint = if tables.is_empty() {
        "no archive table exists yet: run `permafrost archive` first".to_string()
    } else {
        format!("tables: {}", tables.join(", "))
    };
    match e.find_root() {
        D::SQL(..) | D::Plan(..) | D::SchemaError(..) | D::NotImplemented(..) => {
            Error::new(ErrorKind::Config, format!("query: {}", one_line(&e))).with_hint(hint)
        }
        D::IoError(io) if io.kind() == std::io::ErrorKind::BrokenPipe => {
            Error::new(ErrorKind::Io, "cannot write the output: Broken pipe")
        }
        _ if crate::error::undecodable(&e) => {
            Error::damaged_file("query failed", None, &one_line(&e))
        }
        _ => Error::new(
            ErrorKind::Catalog,
            format!("query failed: {}", one_line(&e)),
        ),
    }
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
