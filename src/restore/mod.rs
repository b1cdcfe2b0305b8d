//! Restore: bring an archived time range back into Postgres — staged,
//! validated, then (on request) attached as a partition or merged.
//!
//! 0. **Preflight** (`validate::preflight`): the target fits the mode
//!    (exists; for an attach, range-partitioned on the time column with no
//!    partition in the way; the archived columns fit) and the range holds
//!    archived rows — or the restore fails before anything is created.
//! 1. **Scan** the Iceberg table at the chosen snapshot with a filter on the
//!    time column: only the partitions and files of the range are read.
//! 2. **Stage** ([`load`]): a new table with the archived columns' exact
//!    Postgres types (recorded at archive time), loaded with binary
//!    `COPY … FROM STDIN` streamed from Arrow over `parallel_windows`
//!    connections; a failed load drops it, a killed one leaves it marked
//!    unfinished.
//! 3. **Validate** ([`validate`]): row count and content checksum of the staged
//!    rows (read back out of Postgres) against what the archive returned, and
//!    of every batch the range covers whole against its snapshot summary; rows
//!    outside the range; against the target: columns and types, NOT NULL and
//!    CHECK constraints, rows already there.  Any failure stops here and keeps
//!    the staging table for inspection.
//! 4. **Apply** ([`apply`]): attach the staging table as the range partition of
//!    a range-partitioned target (with a pre-validated CHECK constraint, so
//!    Postgres skips its own scan), or merge it into a plain target in one
//!    transaction with a conflict policy, then drop the staging table.
//!
//! Restoring never writes to the archive.  The next `archive` run recognises
//! restored rows (a batch's whole content back in Postgres) and settles them
//! without appending them again (see `archive::restored_rows`).

pub mod apply;
pub mod encode;
pub mod load;
mod pghash;
mod provenance;
pub mod target;
pub mod validate;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures::TryStreamExt;
use iceberg::scan::FileScanTask;
use iceberg::spec::{NestedFieldRef, PrimitiveType, SchemaRef, SnapshotRef, Type};
use iceberg::table::Table;
use serde::Serialize;
use tokio_postgres::Client;
use tracing::Instrument;

use crate::checksum::Checksum;
use crate::config::{Config, TableConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::filter::quote_ident;
use crate::inspect::{SnapshotChoice, resolve_snapshot};
use crate::lake::catalog::CatalogHandle;
use crate::lake::table::RecordedColumn;
use crate::lake::vended::TableStorage;
use crate::ledger::keys;
use crate::ledger::props;
use crate::plan::window::{Micros, Window, parse_instant, rfc3339};
use crate::source::introspect::TimeKind;
use crate::types::PgKind;

/// Conflict policy of `--merge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnConflict {
    /// Any row already in the target (same primary key) fails validation.
    Error,
    /// Rows whose primary key is already in the target are left out.
    Skip,
    /// Rows whose primary key is already in the target replace it.
    Update,
}

/// What to do once the staged rows are valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// Keep the staging table; touch nothing else.
    Stage,
    /// Attach the staging table as the range partition of the target.
    Attach {
        /// Detach an existing partition of exactly this range first (it is
        /// dropped when empty, kept under a new name otherwise).
        replace: bool,
    },
    /// Insert the staged rows into the target.
    Merge(OnConflict),
}

/// One restore.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub range: Window,
    pub snapshot: SnapshotChoice,
    /// `(schema, table)` of the staging table; default
    /// `<target schema>.<table>_restore_<from>_<to>`.
    pub into: Option<(String, String)>,
    /// `(schema, table)` of the target; default: the configured source table.
    pub target: Option<(String, String)>,
    pub apply: Apply,
    pub keep_staging: bool,
}

/// A batch the range touches, checked against its snapshot summary.
#[derive(Debug, Clone, Serialize)]
pub struct BatchCheck {
    pub batch_id: String,
    pub snapshot_id: i64,
    pub window_start: String,
    pub window_end: String,
    /// Rows the batch archived (its summary).
    pub archived_rows: u64,
    /// Rows of its files restored (inside the range); of its group's when
    /// its files were rewritten together with other batches' files.
    pub restored_rows: u64,
    pub status: BatchMatch,
    /// The batches whose files a compaction merged with this one's: the
    /// status is the group's (rows and checksums summed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rewritten_with: Vec<String>,
    /// Why the batch is not compared (status `rewritten`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// How a batch's restored rows compare with its snapshot summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BatchMatch {
    /// Count and checksum equal.
    #[serde(rename = "match")]
    Match,
    #[serde(rename = "MISMATCH")]
    Mismatch,
    /// The range covers part of the batch: not comparable.
    #[serde(rename = "partial")]
    Partial,
    /// Archived under another schema: rows compared only.
    #[serde(rename = "schema changed")]
    SchemaChanged,
    /// Its rows were changed since (an overwrite or delete, or a compaction
    /// that merged in rows no batch of the range archived): not comparable.
    #[serde(rename = "rewritten")]
    Rewritten,
}

impl BatchMatch {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Match => "match",
            Self::Mismatch => "MISMATCH",
            Self::Partial => "partial",
            Self::SchemaChanged => "schema changed",
            Self::Rewritten => "rewritten",
        }
    }
}

/// What a restore did with the staged rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Staged (and validated) only.
    Staged,
    /// Attached as a partition of the target.
    Attached,
    /// Merged into the target.
    Merged,
    /// Nothing: validation failed.
    None,
}

/// One validation check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The outcome of a restore.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub table: String,
    pub snapshot_id: i64,
    pub from: String,
    pub to: String,
    pub staging: String,
    pub target: String,
    pub rows: u64,
    pub files: usize,
    pub batches: Vec<BatchCheck>,
    pub checks: Vec<Check>,
    /// True when every check passed.
    pub valid: bool,
    pub action: Action,
    pub inserted: Option<u64>,
    pub updated: Option<u64>,
    pub skipped: Option<u64>,
    /// An existing partition `--replace-partition` detached (kept when not empty).
    pub replaced_partition: Option<String>,
    /// The range CHECK constraint was present and validated before ATTACH
    /// (so Postgres did not scan the partition).
    pub constraint_validated_before_attach: Option<bool>,
    pub staging_kept: bool,
    /// Seconds spent scanning the archive and loading the staging table.
    pub load_seconds: f64,
    /// Seconds of the checks (the read-back of the staged rows is most of it).
    pub check_seconds: f64,
    /// Seconds of the attach or merge (0 when only staged).
    pub apply_seconds: f64,
    /// Seconds in all, from connecting to the end.
    pub seconds: f64,
}

impl RestoreReport {
    /// Rows that landed in the target: all of them when attached, those
    /// inserted or updated when merged, none when only staged.
    pub fn rows_restored(&self) -> u64 {
        match self.action {
            Action::Attached => self.rows,
            Action::Merged => self.inserted.unwrap_or(0) + self.updated.unwrap_or(0),
            Action::Staged | Action::None => 0,
        }
    }
}

fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

fn pg(what: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::postgres(what, e)
}

/// A compact, name-safe rendering of an instant: `20240101` or `2024010106`.
fn stamp(t: Micros) -> String {
    let s = rfc3339(t);
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    let d = digits.trim_end_matches('0');
    let keep = if d.len() <= 8 { 8 } else { d.len().min(14) };
    digits.chars().take(keep.max(8)).collect()
}

/// A Postgres type for an Iceberg type, when no recorded type exists (a
/// column the current recording no longer lists).
fn fallback_type(t: &Type) -> Option<String> {
    Some(match t {
        Type::Primitive(p) => match p {
            PrimitiveType::Boolean => "boolean".into(),
            PrimitiveType::Int => "integer".into(),
            PrimitiveType::Long => "bigint".into(),
            PrimitiveType::Float => "real".into(),
            PrimitiveType::Double => "double precision".into(),
            PrimitiveType::Decimal { precision, scale } => format!("numeric({precision},{scale})"),
            PrimitiveType::Date => "date".into(),
            PrimitiveType::Time => "time".into(),
            PrimitiveType::Timestamp => "timestamp".into(),
            PrimitiveType::Timestamptz => "timestamptz".into(),
            PrimitiveType::String => "text".into(),
            PrimitiveType::Uuid => "uuid".into(),
            PrimitiveType::Binary | PrimitiveType::Fixed(_) => "bytea".into(),
            _ => return None,
        },
        Type::List(l) => match &*l.element_field.field_type {
            Type::Primitive(_) => format!("{}[]", fallback_type(&l.element_field.field_type)?),
            _ => return None,
        },
        _ => return None,
    })
}

/// The snapshot a restore reads and the columns it archived.
struct Archived {
    snapshot: SnapshotRef,
    schema: SchemaRef,
    time_field: NestedFieldRef,
    time_kind: TimeKind,
    /// Each field of the snapshot's schema with its Postgres type (recorded
    /// at archive time) and NOT NULL flag.
    cols: Vec<(NestedFieldRef, String, bool)>,
}

/// Resolves the snapshot of `choice` and the archived columns of `t` at it.
fn archived(t: &TableConfig, table: &Table, choice: SnapshotChoice) -> Result<Archived> {
    let md = table.metadata();
    let snapshot = resolve_snapshot(table, choice)?.ok_or_else(|| {
        Error::new(
            ErrorKind::Catalog,
            format!("{} has no snapshot yet", table.identifier()),
        )
        .with_hint("nothing was archived, so there is nothing to restore")
    })?;
    let schema = snapshot
        .schema(md)
        .map_err(|e| Error::iceberg("cannot find the snapshot's schema", e))?;
    let recorded: Vec<RecordedColumn> = md
        .properties()
        .get(props::PG_COLUMNS)
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default();
    let time_field = schema
        .field_by_name(&t.timestamp_column)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Schema,
                format!(
                    "time column `{}` is not in {} at snapshot {}",
                    t.timestamp_column,
                    table.identifier(),
                    snapshot.snapshot_id()
                ),
            )
        })?
        .clone();
    let time_kind = match *time_field.field_type {
        Type::Primitive(PrimitiveType::Timestamp) => TimeKind::Timestamp,
        _ => TimeKind::Timestamptz,
    };
    // The snapshot's fields with their recorded types.
    let by_name: HashMap<&str, &RecordedColumn> =
        recorded.iter().map(|c| (c.name.as_str(), c)).collect();
    let mut cols = Vec::new();
    for f in schema.as_struct().fields() {
        let (pg_type, not_null) = match by_name.get(f.name.as_str()) {
            Some(r) => (r.pg_type.clone(), r.not_null),
            None => (
                fallback_type(&f.field_type).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Schema,
                        format!(
                            "column `{}` ({}) has no recorded Postgres type",
                            f.name, f.field_type
                        ),
                    )
                })?,
                f.required,
            ),
        };
        cols.push((f.clone(), pg_type, not_null));
    }
    Ok(Archived {
        snapshot,
        schema,
        time_field,
        time_kind,
        cols,
    })
}

/// `(schema, table)` of the target and of the staging table.
fn names(t: &TableConfig, req: &RestoreRequest) -> ((String, String), (String, String)) {
    let (target_schema, target_name) = req
        .target
        .clone()
        .unwrap_or_else(|| (t.schema.clone(), t.name.clone()));
    let stage = req.into.clone().unwrap_or_else(|| {
        (
            target_schema.clone(),
            format!(
                "{}_restore_{}_{}",
                target_name,
                stamp(req.range.start),
                stamp(req.range.end)
            ),
        )
    });
    ((target_schema, target_name), stage)
}

/// The error of a range without archived rows at the snapshot.
fn nothing_archived(t: &TableConfig, range: &Window, snapshot_id: i64) -> Error {
    Error::config(format!(
        "no archived rows of {} in [{}, {}) at snapshot {snapshot_id}",
        t.iceberg_name(),
        rfc3339(range.start),
        rfc3339(range.end)
    ))
    .with_hint(format!(
        "`permafrost list -t {}` shows the archived windows; `--snapshot`/`--as-of` restore from another snapshot",
        t.name
    ))
}

/// Restores `req.range` of `t` (whose Iceberg table is `table`).
///
/// Everything that can fail without the staged rows — the staging table
/// already there, a target that does not fit the mode, a range without
/// archived rows — fails before anything is created in Postgres.
pub async fn restore(
    cfg: &Config,
    t: &TableConfig,
    (catalog, table): (&Arc<CatalogHandle>, &Table),
    req: &RestoreRequest,
    progress: &indicatif::ProgressBar,
) -> Result<RestoreReport> {
    let started = Instant::now();
    let src = archived(t, table, req.snapshot)?;
    crate::lake::readback::refuse_deletion_vectors(table, &src.snapshot).await?;
    let ((target_schema, target_name), (stage_schema, stage_name)) = names(t, req);
    let staging = qualified(&stage_schema, &stage_name);
    let target = qualified(&target_schema, &target_name);

    // The catalog's side (the files of the range, the batches' own files,
    // each on a task of its own) and Postgres's (checks, connections) go on
    // together.
    let planned = plan_scan(table, &src, &req.range)?;
    let storage = Arc::new(crate::lake::vended::TableStorage::new(
        catalog.clone(),
        table,
    ));
    let archived_batches = read_archived_batches((table, &storage), &src, &req.range);
    let (client, loaders) = prepare_postgres(cfg, t, &src, (&staging, &target), req).await?;
    let tasks = planned
        .await
        .map_err(|e| Error::internal(format!("planning the scan failed: {e}")))??;
    tracing::debug!(
        "{} data file(s) of the range at snapshot {}",
        tasks.len(),
        src.snapshot.snapshot_id()
    );
    let empty = || nothing_archived(t, &req.range, src.snapshot.snapshot_id());
    if tasks.is_empty() {
        return Err(empty());
    }
    let stage = load::Stage {
        staging: &staging,
        ts: &t.timestamp_column,
        range: req.range,
    };
    let loaded = load::load(
        &client,
        &loaders,
        (table, &storage),
        &src,
        &stage,
        tasks,
        progress,
    )
    .await?
    .ok_or_else(empty)?;
    let load_seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let archived_batches = archived_batches
        .await
        .map_err(|e| Error::internal(format!("reading the batches' files failed: {e}")))??;

    let ctx = Staged {
        client: &client,
        staging: &staging,
        target: &target,
        loaded: &loaded,
    };
    let checked = Instant::now();
    let (batches, checks) = ctx
        .validate(
            &loaders.iter().map(|c| c.as_ref()).collect::<Vec<_>>(),
            t,
            &archived_batches,
            &src,
            req,
        )
        .await?;
    let check_seconds = checked.elapsed().as_secs_f64();
    let valid = checks.iter().all(|c| c.ok);
    let mut report = RestoreReport {
        table: t.iceberg_name(),
        snapshot_id: src.snapshot.snapshot_id(),
        from: rfc3339(req.range.start),
        to: rfc3339(req.range.end),
        staging: staging.clone(),
        target: target.clone(),
        rows: loaded.copied,
        files: loaded.files,
        batches,
        checks,
        valid,
        action: if valid { Action::Staged } else { Action::None },
        inserted: None,
        updated: None,
        skipped: None,
        replaced_partition: None,
        constraint_validated_before_attach: None,
        staging_kept: true,
        load_seconds,
        check_seconds,
        apply_seconds: 0.0,
        seconds: 0.0,
    };
    if valid {
        let applied = Instant::now();
        ctx.apply(t, &stage_name, src.time_kind, req, &mut report)
            .await?;
        report.apply_seconds = applied.elapsed().as_secs_f64();
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A loaded staging table and the target it is checked against.
struct Staged<'a> {
    client: &'a Client,
    staging: &'a str,
    target: &'a str,
    loaded: &'a Loaded,
}

/// Starts reading the batches' own files from the catalog (not from
/// Postgres, so while the rows load), on a task of its own: a local
/// warehouse is read on the reading thread.
fn read_archived_batches(
    (table, storage): (&Table, &Arc<TableStorage>),
    src: &Archived,
    range: &Window,
) -> tokio::task::JoinHandle<Result<validate::ArchivedRange>> {
    let (table, snapshot, range) = (table.clone(), src.snapshot.clone(), *range);
    let storage = storage.clone();
    let read =
        async move { validate::archived_batches((&table, &storage), &snapshot, &range).await };
    tokio::spawn(read.instrument(tracing::Span::current()))
}

/// Postgres's side of a restore's start: the run's connection, with the
/// staging table checked free (not left by an earlier restore) and the
/// target checked against the archive ([`validate::preflight`]), and the
/// loaders' connections, opened meanwhile — once the run's own is open,
/// so that a connection limit leaves the run its own and fewer loaders.
async fn prepare_postgres(
    cfg: &Config,
    t: &TableConfig,
    src: &Archived,
    (staging, target): (&str, &str),
    req: &RestoreRequest,
) -> Result<(Client, Vec<std::sync::Arc<Client>>)> {
    let client = crate::source::connect(&cfg.database).await?;
    let checked = async {
        let existing = client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL, obj_description(to_regclass($1), 'pg_class')",
                &[&staging],
            )
            .await
            .map_err(pg("cannot look up the staging table"))?;
        if existing.get::<_, bool>(0) {
            return Err(load::leftover(staging, existing.get(1)));
        }
        let types: Vec<(&str, &str)> = src
            .cols
            .iter()
            .map(|(f, ty, _)| (f.name.as_str(), ty.as_str()))
            .collect();
        let (time, kind) = (&t.timestamp_column, src.time_kind);
        validate::preflight(&client, target, &types, time, kind, &req.range, req.apply).await
    };
    // The loaders (`parallel_windows` connections besides this one, within
    // `database.pool_size`) also read the staged rows back afterwards.
    let ((), loaders) = futures::try_join!(checked, connect_loaders(&client, cfg, t))?;
    Ok((client, loaders))
}

/// The restore's loaders: `parallel_windows` connections, each checked to
/// be on `run`'s server; fewer when Postgres admits fewer (a warning), an
/// error when it admits none.
async fn connect_loaders(
    run: &Client,
    cfg: &Config,
    t: &TableConfig,
) -> Result<Vec<std::sync::Arc<Client>>> {
    let n = t.parallel_windows.max(1);
    let (session, extra) = futures::join!(
        crate::source::Session::of(run),
        crate::source::connect_extra(&cfg.database, n, |c| async move { Ok(c) })
    );
    let (session, extra) = (session?, extra?);
    let here = futures::future::try_join_all(extra.clients.iter().map(|c| session.beside(c)));
    if here.await?.contains(&false) {
        return Err(crate::source::reached_another_server(
            "a loader connection of the restore reached another server than the restore's own"
                .into(),
            "nothing was staged",
        ));
    }
    if extra.clients.is_empty() {
        return Err(extra
            .refused
            .unwrap_or_else(|| Error::internal("no loader connection and no error")));
    }
    let using = format!("{} connection(s) load the rows", extra.clients.len());
    if let Some(w) = extra.shortfall(n, "loader connections", &using) {
        tracing::warn!("{}: {w}", t.source_name());
    }
    Ok(extra.clients.into_iter().map(std::sync::Arc::new).collect())
}

impl Staged<'_> {
    /// The batches the range touches and every validation check.
    async fn validate(
        &self,
        readers: &[&Client],
        t: &TableConfig,
        archived: &validate::ArchivedRange,
        src: &Archived,
        req: &RestoreRequest,
    ) -> Result<(Vec<BatchCheck>, Vec<Check>)> {
        let loaded = self.loaded;
        let mut checks = vec![Check {
            name: "rows".into(),
            ok: loaded.copied == loaded.read.rows,
            detail: format!(
                "{} row(s) read from {} file(s), {} loaded",
                loaded.read.rows, loaded.files, loaded.copied
            ),
        }];
        let batches = validate::batch_checks(archived, &src.schema, &req.range, loaded);
        // Reading the staged rows back (the longest check) runs on the
        // `readers`, each taking the table's next range of blocks, while the
        // checks in SQL run on this connection.
        let (readback, sql_checks) = tokio::join!(
            validate::staged_content(
                readers,
                self.staging,
                loaded,
                &t.timestamp_column,
                &req.range
            ),
            self.sql_checks(t, src.time_kind, req)
        );
        let readback = readback?;
        let (sql_checks, not_null_cols) = sql_checks?;
        checks.push(readback.content);
        checks.push(batches_check(&batches));
        checks.push(readback.range);
        checks.extend(sql_checks);
        checks.extend(validate::not_null(&not_null_cols, &readback.nulls));
        Ok((batches, checks))
    }

    /// The checks against the target, and its NOT NULL columns.
    async fn sql_checks(
        &self,
        t: &TableConfig,
        time_kind: TimeKind,
        req: &RestoreRequest,
    ) -> Result<(Vec<Check>, Vec<String>)> {
        let target_exists: bool = self
            .client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&self.target])
            .await
            .map_err(pg("cannot look up the target table"))?
            .get(0);
        if target_exists {
            validate::against_target(
                self.client,
                self.staging,
                self.target,
                &self.loaded.cols,
                &t.timestamp_column,
                time_kind,
                &req.range,
                req.apply,
            )
            .await
        } else if req.apply != Apply::Stage {
            // Checked before staging; gone since.
            let check = Check {
                name: "target".into(),
                ok: false,
                detail: format!("{} does not exist", self.target),
            };
            Ok((vec![check], vec![]))
        } else {
            Ok((vec![], vec![]))
        }
    }

    /// Attaches or merges the valid staged rows as `req` asks.
    async fn apply(
        &self,
        t: &TableConfig,
        stage_name: &str,
        time_kind: TimeKind,
        req: &RestoreRequest,
        report: &mut RestoreReport,
    ) -> Result<()> {
        match req.apply {
            Apply::Stage => {}
            Apply::Attach { replace } => {
                let a = apply::attach(
                    self.client,
                    self.staging,
                    stage_name,
                    self.target,
                    &t.timestamp_column,
                    time_kind,
                    &req.range,
                    (replace, t.drop_lock_timeout),
                )
                .await?;
                report.action = Action::Attached;
                report.replaced_partition = a.replaced;
                report.constraint_validated_before_attach = Some(a.validated_before);
            }
            Apply::Merge(policy) => {
                let m = apply::merge(
                    self.client,
                    self.staging,
                    self.target,
                    &t.timestamp_column,
                    &self.loaded.cols,
                    policy,
                    req.keep_staging,
                )
                .await?;
                report.action = Action::Merged;
                report.inserted = Some(m.inserted);
                report.updated = Some(m.updated);
                report.skipped = Some(self.loaded.copied - m.inserted - m.updated);
                report.staging_kept = req.keep_staging;
            }
        }
        Ok(())
    }
}

/// The batches check: every batch the range covers whole matches its summary.
fn batches_check(batches: &[BatchCheck]) -> Check {
    let count = |m: BatchMatch| batches.iter().filter(|b| b.status == m).count();
    let bad: Vec<&str> = batches
        .iter()
        .filter(|b| b.status == BatchMatch::Mismatch)
        .map(|b| b.batch_id.as_str())
        .collect();
    let mut detail = if bad.is_empty() {
        format!(
            "{} batch(es) covered whole match their snapshot summaries ({} partly covered)",
            count(BatchMatch::Match),
            count(BatchMatch::Partial)
        )
    } else {
        format!(
            "batch(es) {} do not match their snapshot summaries",
            bad.join(", ")
        )
    };
    let rewritten = count(BatchMatch::Rewritten);
    if rewritten > 0 {
        detail.push_str(&format!(
            "; {rewritten} batch(es) not compared: their rows were changed since"
        ));
    }
    Check {
        name: "batches".into(),
        ok: bad.is_empty(),
        detail,
    }
}

/// Starts planning the scan of the range at the snapshot on a task of its
/// own (reading the manifests is CPU work that would hold up this task's
/// round trips to Postgres): the data files of the range, pruned by
/// partition and column statistics (a file listed may still hold no row
/// in the range).
fn plan_scan(
    table: &Table,
    src: &Archived,
    range: &Window,
) -> Result<tokio::task::JoinHandle<Result<Vec<FileScanTask>>>> {
    let predicate = crate::inspect::fetch::scan_predicate(
        table.metadata().current_schema(),
        &src.time_field.name,
        (Some(range.start), Some(range.end)),
        None,
    )?;
    let scan = table
        .scan()
        .snapshot_id(src.snapshot.snapshot_id())
        .with_filter(predicate)
        .select(src.cols.iter().map(|(f, _, _)| f.name.clone()))
        .build()
        .map_err(|e| Error::iceberg("cannot plan the scan", e))?;
    let plan = async move {
        let failed = |e| Error::iceberg("cannot plan the scan", e);
        scan.plan_files()
            .await
            .map_err(failed)?
            .try_collect()
            .await
            .map_err(failed)
    };
    Ok(tokio::spawn(plan.instrument(tracing::Span::current())))
}

/// What the load streamed.
pub(crate) struct Loaded {
    /// Count and checksum of the rows read from the archive.
    read: Checksum,
    /// Rows COPY reported.
    copied: u64,
    files: usize,
    /// Per data file: count and checksum of its rows inside the range.
    per_file: HashMap<String, Checksum>,
    /// How Postgres hashes the staged rows, or why it cannot ([`pghash`]).
    hash: std::result::Result<Arc<pghash::RowHash>, String>,
    /// The rows sent, hashed that way.
    sent: pghash::RowSum,
    /// The rows sent, decoded with the archive's own extractor.
    echo: validate::Part,
    cols: Vec<StagedColumn>,
    /// The Arrow schema of the rows (the snapshot's schema).
    arrow_schema: arrow_schema::SchemaRef,
}

/// A column of the staging table, as validation and apply need it.
#[derive(Debug, Clone)]
pub struct StagedColumn {
    pub name: String,
    pub pg_type: String,
    pub kind: PgKind,
    /// The cast the value is read through (`text`, `numeric`, …), if any.
    pub cast: Option<String>,
}

/// Runs `body` (statements on `client`) in one transaction: committed when it
/// succeeds, rolled back when it fails.
pub(crate) async fn in_transaction<T>(
    client: &Client,
    what: &str,
    body: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    client
        .batch_execute("BEGIN")
        .await
        .map_err(pg("cannot begin a transaction"))?;
    match body.await {
        Ok(v) => {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| Error::postgres(format!("cannot commit {what}"), e))?;
            Ok(v)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// The restore range from `--from`/`--to`.
pub fn range(from: &str, to: &str) -> Result<Window> {
    let parse = |flag: &str, s: &str| {
        parse_instant(s).ok_or_else(|| {
            Error::config(format!("--{flag}: `{s}` is not a date or timestamp"))
                .with_hint("e.g. 2024-01-01 or 2024-01-01T06:00:00Z")
        })
    };
    let (start, end) = (parse("from", from)?, parse("to", to)?);
    if start >= end {
        return Err(Error::config(format!(
            "--from {from} is not before --to {to}"
        )));
    }
    Ok(Window { start, end })
}

/// A time literal for SQL.
pub(crate) fn literal(kind: TimeKind, t: Micros) -> String {
    crate::source::windows::time_literal(kind, t)
}

/// The summary `(rows, checksum)` of the batch a snapshot committed.
pub(crate) fn summary_of(s: &iceberg::spec::Snapshot) -> Option<(String, u64, String)> {
    let p = &s.summary().additional_properties;
    Some((
        p.get(keys::BATCH_ID)?.clone(),
        p.get(keys::ROWS)?.parse().ok()?,
        p.get(keys::CHECKSUM)?.clone(),
    ))
}
