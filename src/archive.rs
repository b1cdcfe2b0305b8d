//! The archive use case: plan → extract → write → commit → verify → delete.
//!
//! # Contract (see README, "Data safety")
//! For each planned batch, one Postgres transaction streams
//! `COPY (DELETE … RETURNING …)` — the rows it streams are exactly the rows it
//! deletes.  The rows are written to data files and committed as one Iceberg
//! snapshot whose summary records the batch (and that transaction's id); the
//! snapshot is read back from the catalog and verified (row count and content
//! checksum); only then is the Postgres transaction committed.  Any failure
//! before that commit rolls the transaction back: nothing is deleted.  A crash
//! after the Iceberg commit leaves a committed snapshot whose transaction never
//! committed; the next run sees that (`txid_status`) and removes those rows
//! from Postgres without archiving them again.
//!
//! `--no-delete` streams a `SELECT` instead and deletes nothing (a *copy*
//! batch); a later normal run removes the copied rows without re-archiving them.
//! `--dry-run` writes nothing and only reports the plan.
//!
//! Idempotent: a re-run after success commits nothing.
//!
//! Stoppable ([`crate::shutdown`]): after SIGTERM no batch or part starts;
//! once the stop becomes an abort, a batch not yet committed rolls back.
//! Either way the table's outcome is `interrupted` and the next run resumes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{BooleanArray, RecordBatch};
use iceberg::Catalog;
use serde::Serialize;

use crate::checksum::{Checksum, HashBag};
use crate::config::{Config, OnBusy, TableConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::fault;
use crate::lake::table::TableState;
use crate::lake::{self, ArchiveTable};
use crate::notify;
use crate::plan::window::{Micros, Window, rfc3339};
use crate::plan::{self, BatchMode, PlanOptions, PlannedBatch, TableFacts, keys};
use crate::progress::Progress;
use crate::shutdown;
use crate::source::{self, extract, windows};
use tracing::Instrument;

/// Options of one `archive` run.
#[derive(Debug, Clone, Default)]
pub struct ArchiveOptions {
    /// Only this table (name, schema.name or namespace.table).
    pub table: Option<String>,
    /// Plan and report; write and delete nothing.
    pub dry_run: bool,
    /// Archive and verify, keep the rows in Postgres.
    pub no_delete: bool,
    /// Retry windows blocked by failed batches.
    pub force: bool,
    /// Override the server's clock (tests, demos).
    pub now: Option<Micros>,
    /// `replay`: only windows overlapping this range, whatever the lag.
    pub range: Option<Window>,
}

/// What happened to one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub source: String,
    pub iceberg_table: String,
    pub outcome: Outcome,
    pub cutoff: Option<String>,
    pub batches: Vec<BatchReport>,
    /// Dry run: what would be archived.
    pub planned: Vec<PlannedReport>,
    pub blocked: Vec<BlockedReport>,
    /// Dry run: schema changes the next run makes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schema_changes: Vec<String>,
    /// What the run left older than the cutoff in Postgres (normally none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

/// Rows older than the cutoff still in Postgres after a run.
#[derive(Debug, Clone, Serialize)]
pub struct Pending {
    pub rows: u64,
    /// The oldest one's time (RFC 3339).
    pub oldest: Option<String>,
    #[serde(skip)]
    pub oldest_us: Option<Micros>,
}

/// Seconds a batch spent in each stage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stages {
    /// Streaming out of Postgres (and deleting), writing data files.
    pub extract_write: f64,
    /// The Iceberg commit (and the ledger in it).
    pub commit: f64,
    /// Reading the snapshot back and checking it.
    pub verify: f64,
    /// The Postgres commit (and dropping partitions).
    pub settle: f64,
}

impl Stages {
    /// `(stage name, seconds)`, in order.
    pub fn iter(&self) -> [(&'static str, f64); 4] {
        [
            ("extract_write", self.extract_write),
            ("commit", self.commit),
            ("verify", self.verify),
            ("settle", self.settle),
        ]
    }
}

/// Outcome of one table.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Outcome {
    /// All planned batches are done (possibly none).
    Done,
    /// Another instance holds the table.
    Skipped { reason: String },
    /// A batch or a preparation step failed; earlier batches stand.
    Failed {
        /// What kind of failure (decides the exit code): `config`,
        /// `postgres`, `catalog`, `verification`, ….
        kind: ErrorKind,
        error: String,
        hint: Option<String>,
    },
}

/// One committed batch.
#[derive(Debug, Clone, Serialize)]
pub struct BatchReport {
    pub batch_id: String,
    pub window_start: String,
    pub window_end: String,
    pub sequence: u32,
    pub mode: BatchMode,
    pub rows: u64,
    /// Rows removed from Postgres that an earlier, unsettled batch had already archived.
    pub reconciled_rows: u64,
    pub files: usize,
    /// Bytes of the data files committed.
    pub bytes: u64,
    pub snapshot_id: Option<i64>,
    pub checksum: String,
    pub seconds: f64,
    pub stages: Stages,
}

/// A batch a dry run would archive.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedReport {
    pub batch_id: String,
    pub window_start: String,
    pub window_end: String,
    pub windows: usize,
    pub rows: u64,
    pub reconcile: Vec<String>,
}

/// A window left alone because of a failed batch.
#[derive(Debug, Clone, Serialize)]
pub struct BlockedReport {
    pub window_start: String,
    pub window_end: String,
    pub batch_id: String,
    pub reason: String,
}

/// Runs `archive` over the selected tables, `global.max_table_concurrency` at a time.
pub async fn run(
    cfg: &Config,
    opts: &ArchiveOptions,
    progress: &Progress,
) -> Result<Vec<TableReport>> {
    let tables = cfg.select_tables(opts.table.as_deref())?;
    let catalog = lake::open_catalog(&cfg.catalog).await?;
    lake::catalog::ping(catalog.as_ref(), &cfg.catalog).await?;
    use futures::StreamExt;
    let reports: Vec<TableReport> = futures::stream::iter(tables.into_iter().map(|t| {
        let catalog = catalog.clone();
        async move { archive_table(cfg, &t, catalog, opts, progress).await }
    }))
    // One connection per table in flight: `database.pool_size` caps it too.
    .buffered(cfg.global.max_table_concurrency.min(cfg.database.pool_size))
    .collect()
    .await;
    Ok(reports)
}

async fn archive_table(
    cfg: &Config,
    t: &TableConfig,
    catalog: Arc<dyn Catalog>,
    opts: &ArchiveOptions,
    progress: &Progress,
) -> TableReport {
    let mut report = TableReport {
        source: t.source_name(),
        iceberg_table: t.iceberg_name(),
        outcome: Outcome::Done,
        cutoff: None,
        batches: vec![],
        planned: vec![],
        blocked: vec![],
        schema_changes: vec![],
        pending: None,
    };
    let span =
        tracing::trace_span!(target: crate::logging::CONTEXT, "table", table = %t.source_name());
    let result = if shutdown::stop_requested() {
        Err(shutdown::interrupted(
            "stopped by a signal before this table started",
        ))
    } else {
        archive_table_inner(cfg, t, catalog.as_ref(), opts, progress, &mut report)
            .instrument(span)
            .await
    };
    if let Err(e) = result {
        if e.kind() == ErrorKind::Interrupted {
            report.outcome = Outcome::Failed {
                kind: e.kind(),
                error: e.message().to_string(),
                hint: e.hint().map(str::to_string),
            };
            return report;
        }
        notify::send(
            cfg.notify.webhook_url.as_deref(),
            &notify::Event {
                service: "permafrost",
                event: if e.context().iter().any(|(k, _)| *k == "batch") {
                    "batch_failed"
                } else {
                    "table_failed"
                },
                table: t.source_name(),
                batch_id: e
                    .context()
                    .iter()
                    .find(|(k, _)| *k == "batch")
                    .map(|(_, v)| v.clone()),
                window_start: e
                    .context()
                    .iter()
                    .find(|(k, _)| *k == "window_start")
                    .map(|(_, v)| v.clone()),
                window_end: e
                    .context()
                    .iter()
                    .find(|(k, _)| *k == "window_end")
                    .map(|(_, v)| v.clone()),
                error: crate::secret::redact(&e.to_string()),
            },
        )
        .await;
        report.outcome = Outcome::Failed {
            kind: e.kind(),
            error: e.message().to_string(),
            hint: e.hint().map(str::to_string),
        };
    }
    report
}

/// Everything a batch needs.
struct Ctx<'a> {
    cfg: &'a TableConfig,
    catalog: &'a dyn Catalog,
    client: &'a mut tokio_postgres::Client,
    src: &'a source::SourceTable,
    table: ArchiveTable,
    mode: BatchMode,
    /// Batches known to be settled (the ledger drops their files): settled
    /// when the run started, and settled by this run's Postgres commits.
    settled: HashSet<String>,
}

async fn archive_table_inner(
    cfg: &Config,
    t: &TableConfig,
    catalog: &dyn Catalog,
    opts: &ArchiveOptions,
    progress: &Progress,
    report: &mut TableReport,
) -> Result<()> {
    let mut client = source::connect(&cfg.database).await?;
    match archive_on(&mut client, cfg, t, catalog, opts, progress, report).await {
        Err(e) => Err(source::explain_lock_timeout(&client, &t.quoted_name(), e).await),
        ok => ok,
    }
}

async fn archive_on(
    client: &mut tokio_postgres::Client,
    cfg: &Config,
    t: &TableConfig,
    catalog: &dyn Catalog,
    opts: &ArchiveOptions,
    progress: &Progress,
    report: &mut TableReport,
) -> Result<()> {
    let (_, server_now) = source::server_facts(client).await?;
    let now = opts.now.unwrap_or(server_now);
    let src = source::introspect::introspect(client, t).await?;
    let source_id = src.source_id();
    // `replay` widens the range to whole windows and ignores the lag.
    let g = t.partition_by;
    let (lower, cutoff) = match opts.range {
        Some(r) => (
            Some(g.floor(r.start)),
            if g.floor(r.end) == r.end {
                r.end
            } else {
                g.window_of(r.end).end
            },
        ),
        None => (None, windows::cutoff(g, now, t.lag)),
    };
    report.cutoff = Some(rfc3339(cutoff));

    if opts.dry_run {
        // Read-only: what the catalog holds now, and what would change.
        let state = lake::table::inspect_table(catalog, t, &src).await?;
        let counts = windows::window_counts(client, &src, t.partition_by, cutoff).await?;
        let facts = match &state {
            TableState::Missing => TableFacts {
                source: source_id,
                granularity: t.partition_by,
                batches: vec![],
                xact: HashMap::new(),
                failed: Default::default(),
                pending: counts.iter().map(|(w, _)| *w).collect(),
            },
            TableState::Ready(at) => {
                gather_facts(client, &at.table, &src, t, lower, cutoff).await?
            }
            TableState::Evolves { table, changes } => {
                report.schema_changes = changes.iter().map(ToString::to_string).collect();
                gather_facts(client, table, &src, t, lower, cutoff).await?
            }
        };
        fill_dry_run(report, &facts, t, opts, &counts);
        return Ok(());
    }

    let wait = match cfg.database.on_busy {
        OnBusy::Wait => None,
        OnBusy::Skip => Some(cfg.database.lock_wait),
    };
    if !source::lock_table(client, src.oid, wait).await? {
        let holder = source::lock_holder(client, src.oid)
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| "another session".into());
        let reason = format!("another permafrost instance is archiving this table: {holder}");
        tracing::warn!("{}: skipped, {reason}", t.source_name());
        report.outcome = Outcome::Skipped { reason };
        return Ok(());
    }
    // Under the lock: create or evolve the table, then plan from it as it is
    // now (another instance may have committed while we waited).
    let table = lake::table::ensure_table(catalog, &cfg.catalog, t, &src).await?;
    let facts = gather_facts(client, &table.table, &src, t, lower, cutoff).await?;
    let mode = if opts.no_delete {
        BatchMode::Copy
    } else {
        BatchMode::Move
    };
    let plan = plan::plan(
        &facts,
        PlanOptions {
            force: opts.force,
            batch_windows: t.batch_windows,
            mode,
        },
    );
    if !plan.in_progress.is_empty() {
        report.outcome = Outcome::Skipped {
            reason: format!(
                "the Postgres transaction of batch {} is still running (another instance?)",
                plan.in_progress.join(", ")
            ),
        };
        return Ok(());
    }
    report.blocked = plan
        .blocked
        .iter()
        .map(|b| BlockedReport {
            window_start: rfc3339(b.window.start),
            window_end: rfc3339(b.window.end),
            batch_id: b.batch_id.clone(),
            reason: b.reason.clone(),
        })
        .collect();
    for b in &report.blocked {
        tracing::warn!(
            "{}: window {} is blocked by failed batch {} ({}); run `archive --force` after review",
            t.source_name(),
            b.window_start,
            b.batch_id,
            b.reason
        );
    }
    if opts.dry_run {
        let counts = windows::window_counts(client, &src, t.partition_by, cutoff).await?;
        fill_dry_run(report, &facts, t, opts, &counts);
        return Ok(());
    }
    if plan.batches.is_empty() {
        tracing::info!(
            "{}: nothing to archive (cutoff {})",
            t.source_name(),
            rfc3339(cutoff)
        );
    }

    let bar = progress.table_bar(&t.source_name(), plan.batches.len() as u64);
    let settled = plan::batch_states(&facts)
        .into_iter()
        .filter(|(_, st)| *st == plan::BatchState::Settled)
        .map(|(id, _)| id)
        .collect();
    let mut ctx = Ctx {
        cfg: t,
        catalog,
        client,
        src: &src,
        table,
        mode,
        settled,
    };
    let mut result = Ok(());
    for (n, planned) in plan.batches.iter().enumerate() {
        if shutdown::stop_requested() {
            result = Err(stopped(plan.batches.len() - n));
            break;
        }
        match run_planned(&mut ctx, &facts, planned, &bar).await {
            Ok((mut done, cut)) => {
                report.batches.append(&mut done);
                if cut {
                    result = Err(stopped(plan.batches.len() - n));
                    break;
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let finished = result
        .as_ref()
        .err()
        .is_none_or(|e| e.kind() == ErrorKind::Interrupted);
    if opts.range.is_none() && finished {
        report.pending = left_behind(ctx.client, &src, cutoff).await;
    }
    let _ = source::unlock_table(ctx.client, src.oid).await;
    result
}

/// The error of a table whose run a signal cut short, `left` batches early.
fn stopped(left: usize) -> Error {
    shutdown::interrupted(&format!(
        "stopped by a signal; {left} planned batch(es) left for the next run"
    ))
}

/// What a run left older than the cutoff (logged, not fatal, when the
/// count itself fails).
async fn left_behind(
    client: &tokio_postgres::Client,
    src: &source::SourceTable,
    cutoff: Micros,
) -> Option<Pending> {
    match windows::pending(client, src, cutoff).await {
        Ok((rows, oldest)) => Some(Pending {
            rows,
            oldest: oldest.map(rfc3339),
            oldest_us: oldest,
        }),
        Err(e) => {
            tracing::warn!("cannot count the rows left behind: {}", e.message());
            None
        }
    }
}

fn fill_dry_run(
    report: &mut TableReport,
    facts: &TableFacts,
    t: &TableConfig,
    opts: &ArchiveOptions,
    counts: &[(Window, u64)],
) {
    let mode = if opts.no_delete {
        BatchMode::Copy
    } else {
        BatchMode::Move
    };
    let plan = plan::plan(
        facts,
        PlanOptions {
            force: opts.force,
            batch_windows: t.batch_windows,
            mode,
        },
    );
    report.planned = plan
        .batches
        .iter()
        .map(|b| PlannedReport {
            batch_id: b.batch_id.clone(),
            window_start: rfc3339(b.range.start),
            window_end: rfc3339(b.range.end),
            windows: b.windows.len(),
            rows: counts
                .iter()
                .filter(|(w, _)| b.range.overlaps(w))
                .map(|(_, n)| n)
                .sum(),
            reconcile: b.reconcile.clone(),
        })
        .collect();
}

/// Reads the ledger from the catalog and the pending windows and transaction
/// statuses from Postgres.
pub async fn gather_facts(
    client: &tokio_postgres::Client,
    table: &iceberg::table::Table,
    src: &source::SourceTable,
    t: &TableConfig,
    lower: Option<Micros>,
    cutoff: Micros,
) -> Result<TableFacts> {
    let source_id = src.source_id();
    let batches = lake::commit::read_ledger(table, &source_id)?;
    let failed = lake::commit::failed_batches(table);
    let xids: Vec<u64> = batches.iter().filter_map(|b| b.xid).collect();
    let xact = source::xact_status(client, &xids)
        .await?
        .into_iter()
        .collect();
    let pending = windows::nonempty_windows(client, src, t.partition_by, lower, cutoff).await?;
    Ok(TableFacts {
        source: source_id,
        granularity: t.partition_by,
        batches,
        xact,
        failed,
        pending,
    })
}

/// Row hashes of the open batches `ids`: from their snapshots, or — when a
/// snapshot was expired — from the files the durable ledger recorded.  A
/// batch whose rows cannot be read is an error, never skipped: skipping
/// would archive its rows a second time.
async fn open_rows(ctx: &Ctx<'_>, ids: &[String]) -> Result<Vec<u128>> {
    let table = &ctx.table.table;
    let ledger = lake::commit::read_ledger_full(table, &ctx.src.source_id())?;
    let mut out = Vec::new();
    for id in ids {
        if let Some(snap) = lake::commit::find_batch(table, id) {
            out.extend(lake::readback::row_hashes(table, &[snap]).await?);
            continue;
        }
        let files = ledger.files_of(id).unwrap_or(&[]);
        let missing = || {
            Error::new(
                ErrorKind::Storage,
                format!(
                    "the rows of unsettled batch {id} cannot be read: its snapshot was expired \
                     and the ledger records no readable files for it"
                ),
            )
            .with_hint(
                "its data files were rewritten (compaction) and expired; nothing was deleted — \
                 check the range by hand, then `archive --force`",
            )
        };
        if files.is_empty() {
            return Err(missing());
        }
        tracing::info!(
            "{}: batch {id}'s snapshot was expired; reading its {} file(s) from the ledger",
            ctx.cfg.source_name(),
            files.len()
        );
        let hashes = lake::readback::row_hashes_of_files(table, files)
            .await
            .map_err(|e| missing().with_context("cause", e.message()))?;
        out.extend(hashes);
    }
    Ok(out)
}

/// Runs one planned batch (several when `max_batch_rows` splits it).
/// Returns the committed parts, and whether a stop cut the parts short.
async fn run_planned(
    ctx: &mut Ctx<'_>,
    facts: &TableFacts,
    planned: &PlannedBatch,
    bar: &indicatif::ProgressBar,
) -> Result<(Vec<BatchReport>, bool)> {
    // Rows of open batches are already archived: collect their hashes.
    let mut archived = Vec::new();
    if !planned.reconcile.is_empty() {
        archived = open_rows(ctx, &planned.reconcile).await?;
        tracing::info!(
            "{}: reconciling {} archived row(s) of unsettled batch(es) {}",
            ctx.cfg.source_name(),
            archived.len(),
            planned.reconcile.join(", ")
        );
    }
    // So are the rows of settled batches that a restore brought back.
    if !planned.restorable.is_empty() {
        archived.extend(restored_rows(ctx, planned).await?);
    }
    let mut bag = (!archived.is_empty()).then(|| HashBag::new(archived));
    let mut out = Vec::new();
    let mut sequence = planned.sequence;
    let mut batch_id = planned.batch_id.clone();
    let limit = if ctx.mode == BatchMode::Move {
        ctx.cfg.max_batch_rows
    } else {
        None
    };
    // A run takes the rows the range holds when it starts: rows that keep
    // arriving meanwhile wait for the next run, so a run always ends.
    let max_parts = match limit {
        Some(n) => {
            windows::count_in_range(ctx.client, ctx.src, &planned.range)
                .await?
                .div_ceil(n)
                .max(1)
                + 1
        }
        None => 1,
    };
    let mut parts = 0;
    loop {
        parts += 1;
        let span = tracing::trace_span!(
            target: crate::logging::CONTEXT,
            "batch",
            batch = %batch_id,
            window_start = %rfc3339(planned.range.start),
            window_end = %rfc3339(planned.range.end),
        );
        let done = run_batch(ctx, planned, &batch_id, sequence, limit, bag.as_mut(), bar)
            .instrument(span)
            .await
            .map_err(|e| {
                e.with_context("batch", &batch_id)
                    .with_context("window_start", rfc3339(planned.range.start))
                    .with_context("window_end", rfc3339(planned.range.end))
            })?;
        if let Some(r) = done.report {
            out.push(r);
        }
        match limit {
            Some(_) if !done.exhausted && parts < max_parts => {
                if shutdown::stop_requested() {
                    return Ok((out, true));
                }
                sequence += 1;
                batch_id = plan::batch_id(&facts.source, &planned.range, sequence);
            }
            _ => break,
        }
    }
    Ok((out, false))
}

/// Hashes of the rows of settled batches overlapping the range whose whole
/// content is in Postgres again (a restore brought them back): those rows
/// are already archived.  A batch counts only when every one of its rows is
/// present (as a multiset), so new rows that merely equal some archived row
/// are still archived.
async fn restored_rows(ctx: &mut Ctx<'_>, planned: &PlannedBatch) -> Result<Vec<u128>> {
    let src = ctx.src;
    let pred = windows::range_predicate(src, &planned.range);
    let query = format!(
        "SELECT {} FROM {} WHERE {pred}",
        ctx.table.select_list(),
        src.qualified()
    );
    let stream = ctx
        .client
        .copy_out(format!("COPY ({query}) TO STDOUT (FORMAT binary)").as_str())
        .await
        .map_err(|e| Error::postgres("cannot start COPY", e))?;
    let labels = ctx.table.columns.iter().map(|c| format!("`{c}`")).collect();
    let decoder =
        extract::CopyDecoder::new(ctx.table.arrow_schema.clone(), labels, &ctx.table.kinds)?;
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<(RecordBatch, Vec<u128>)>(4);
    let reader = tokio::spawn(extract::decode_stream(stream, decoder, sender));
    let mut present: HashMap<u128, u32> = HashMap::new();
    while let Some((_, hashes)) = receiver.recv().await {
        for h in hashes {
            *present.entry(h).or_default() += 1;
        }
    }
    reader
        .await
        .map_err(|e| Error::internal(format!("extract task failed: {e}")))??;
    let in_pg: u64 = present.values().map(|n| u64::from(*n)).sum();
    let table = &ctx.table.table;
    let ledger = lake::commit::read_ledger_full(table, &src.source_id())?;
    let mut out = Vec::new();
    // Batches whose snapshot was expired (or rolled up), by range: their
    // rows are the live rows of the range's partitions (all batches of those
    // windows together).
    let mut expired: BTreeMap<(Micros, Micros), Vec<&str>> = BTreeMap::new();
    for id in &planned.restorable {
        let Some(snap) = lake::commit::find_batch(table, id) else {
            // Only the part inside the planned range: a restore may have
            // brought back a day of a batch (or roll-up) spanning more.
            if let Some((b, _)) = ledger.batches.iter().find(|(b, _)| &b.batch_id == id) {
                let start = b.range.start.max(planned.range.start);
                let end = b.range.end.min(planned.range.end);
                if start < end {
                    expired.entry((start, end)).or_default().push(id);
                }
            }
            continue;
        };
        let rows: u64 = snap
            .summary()
            .additional_properties
            .get(plan::keys::ROWS)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        if rows == 0 || rows > in_pg {
            continue;
        }
        let hashes = lake::readback::row_hashes(table, &[snap]).await?;
        if take_if_present(&mut present, &hashes) {
            tracing::info!(
                "{}: the {} row(s) of batch {id} are back in Postgres (restored); they are settled, not archived again",
                ctx.cfg.source_name(),
                hashes.len()
            );
            out.extend(hashes);
        }
    }
    for ((start, end), ids) in expired {
        let range = Window { start, end };
        let hashes =
            lake::readback::row_hashes_in_windows(table, ctx.cfg.partition_by, &range).await?;
        if !hashes.is_empty() && take_if_present(&mut present, &hashes) {
            tracing::info!(
                "{}: the {} archived row(s) of {} (batches {}, snapshots expired) are back in Postgres (restored); they are settled, not archived again",
                ctx.cfg.source_name(),
                hashes.len(),
                rfc3339(start),
                ids.join(", ")
            );
            out.extend(hashes);
        }
    }
    Ok(out)
}

/// Whether every hash of `hashes` is in `present` (as a multiset); if so,
/// takes them out.
fn take_if_present(present: &mut HashMap<u128, u32>, hashes: &[u128]) -> bool {
    let mut need: HashMap<u128, u32> = HashMap::new();
    for h in hashes {
        *need.entry(*h).or_default() += 1;
    }
    if !need
        .iter()
        .all(|(h, n)| present.get(h).is_some_and(|p| p >= n))
    {
        return false;
    }
    for (h, n) in need {
        if let Some(p) = present.get_mut(&h) {
            *p -= n;
        }
    }
    true
}

struct BatchDone {
    report: Option<BatchReport>,
    /// No row of the range is left in Postgres (as this transaction sees it).
    exhausted: bool,
}

/// One Postgres transaction, one snapshot.
async fn run_batch(
    ctx: &mut Ctx<'_>,
    planned: &PlannedBatch,
    batch_id: &str,
    sequence: u32,
    limit: Option<u64>,
    mut bag: Option<&mut HashBag>,
    bar: &indicatif::ProgressBar,
) -> Result<BatchDone> {
    let started = Instant::now();
    let src = ctx.src;
    let mode = ctx.mode;
    let range = planned.range;
    let pred = windows::range_predicate(src, &range);
    let cols = ctx.table.select_list();
    // Whole partitions that tile the range are exported under a write lock
    // and dropped after verification, instead of having their rows deleted.
    let drop_parts = if mode == BatchMode::Move
        && limit.is_none()
        && ctx.cfg.drop_partitions
        && src.filter_sql.is_none()
    {
        crate::source::partitions::tiling(ctx.client, src, &range).await?
    } else {
        None
    };
    let query = match (mode, limit) {
        (BatchMode::Copy, _) => format!("SELECT {cols} FROM {} WHERE {pred}", src.qualified()),
        (BatchMode::Move, None) if drop_parts.is_some() => {
            format!("SELECT {cols} FROM {} WHERE {pred}", src.qualified())
        }
        (BatchMode::Move, None) => format!(
            "DELETE FROM {} WHERE {pred} RETURNING {cols}",
            src.qualified()
        ),
        (BatchMode::Move, Some(n)) => {
            let time = crate::filter::quote_ident(&src.time_column().name);
            if src.relkind == 'p' {
                format!(
                    "DELETE FROM {t} WHERE (tableoid, ctid) IN (SELECT tableoid, ctid FROM {t} WHERE {pred} ORDER BY {time} LIMIT {n}) RETURNING {cols}",
                    t = src.qualified()
                )
            } else {
                format!(
                    "DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE {pred} ORDER BY {time} LIMIT {n})) AND {pred} RETURNING {cols}",
                    t = src.qualified()
                )
            }
        }
    };
    let isolation = match mode {
        BatchMode::Copy => tokio_postgres::IsolationLevel::RepeatableRead,
        BatchMode::Move => tokio_postgres::IsolationLevel::ReadCommitted,
    };
    let tx = ctx
        .client
        .build_transaction()
        .isolation_level(isolation)
        .start()
        .await
        .map_err(|e| Error::postgres("cannot begin the batch transaction", e))?;
    let xid: Option<i64> = match mode {
        BatchMode::Move => Some(
            tx.query_one("SELECT txid_current()", &[])
                .await
                .map_err(|e| Error::postgres("cannot read the transaction id", e))?
                .get(0),
        ),
        BatchMode::Copy => None,
    };
    if let Some(parts) = &drop_parts {
        // EXCLUSIVE: reads go on, writes to these partitions wait for us.
        tx.batch_execute(&format!(
            "LOCK TABLE {} IN EXCLUSIVE MODE",
            partition_names(parts)
        ))
        .await
        .map_err(|e| Error::postgres("cannot lock the partitions to archive", e))?;
    }

    // Extract on its own task (decode + hash) while this task writes Parquet.
    let sql = format!("COPY ({query}) TO STDOUT (FORMAT binary)");
    let stream = tx
        .copy_out(sql.as_str())
        .await
        .map_err(|e| Error::postgres("cannot start COPY", e))?;
    let labels = ctx
        .table
        .columns
        .iter()
        .map(|c| {
            let ty = src
                .columns
                .iter()
                .find(|s| &s.name == c)
                .map(|s| s.pg_type.as_str())
                .unwrap_or("?");
            format!("`{c}` ({ty})")
        })
        .collect();
    let decoder =
        extract::CopyDecoder::new(ctx.table.arrow_schema.clone(), labels, &ctx.table.kinds)?;
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<(RecordBatch, Vec<u128>)>(4);
    let reader = tokio::spawn(extract::decode_stream(stream, decoder, sender));

    let prefix = format!("{batch_id}-{}", uuid::Uuid::new_v4().simple());
    let mut writer = lake::write::BatchWriter::new(
        &ctx.table,
        &prefix,
        ctx.cfg.target_file_size,
        ctx.cfg.zstd_level,
    )?;
    let mut checksum = Checksum::default();
    let mut reconciled = 0u64;
    let mut write_err = None;
    let mut first = true;
    while let Some((batch, hashes)) = receiver.recv().await {
        if first {
            fault::point("after-extract");
            first = false;
        }
        if let Err(e) = shutdown::check_abort() {
            write_err = Some(e);
            break;
        }
        let (batch, hashes) = match bag.as_deref_mut() {
            Some(bag) => {
                let keep: Vec<bool> = hashes.iter().map(|h| !bag.take(*h)).collect();
                let kept = keep.iter().filter(|k| **k).count();
                reconciled += (keep.len() - kept) as u64;
                if kept == keep.len() {
                    (batch, hashes)
                } else {
                    let mask = BooleanArray::from(keep.clone());
                    let b = arrow_select::filter::filter_record_batch(&batch, &mask)
                        .map_err(|e| Error::arrow("cannot filter reconciled rows", e))?;
                    let h: Vec<u128> = hashes
                        .iter()
                        .zip(&keep)
                        .filter(|(_, k)| **k)
                        .map(|(h, _)| *h)
                        .collect();
                    (b, h)
                }
            }
            None => (batch, hashes),
        };
        checksum.add_hashes(&hashes);
        if let Err(e) = writer.write(batch).await {
            write_err = Some(e);
            break;
        }
    }
    drop(receiver);
    let streamed = match reader.await {
        Ok(r) => r?,
        Err(e) => return Err(Error::internal(format!("extract task failed: {e}"))),
    };
    if let Some(e) = write_err {
        return Err(e);
    }
    bar.set_message(format!(
        "{batch_id}: {written} rows",
        written = checksum.rows
    ));
    fault::point("during-delete");
    let (files, written) = writer.close().await?;
    fault::point("after-write");
    if written != checksum.rows || streamed != written + reconciled {
        return Err(Error::internal(format!(
            "row accounting mismatch: streamed {streamed}, written {written}, reconciled {reconciled}, hashed {}",
            checksum.rows
        )));
    }
    // Only the part that empties the range settles the open batches the range
    // covers whole (see `plan::PlannedBatch::settles`): a part can come back
    // short while rows remain (rows updated or deleted concurrently), so ask.
    // A DELETE of the whole range (no limit) removes every row that existed
    // when it started, so it always empties the range of earlier rows.
    let exhausted = match limit {
        None => true,
        Some(_) if mode == BatchMode::Copy => true,
        Some(_) => {
            let sql = format!(
                "SELECT NOT EXISTS (SELECT 1 FROM {} WHERE {pred})",
                src.qualified()
            );
            tx.query_one(sql.as_str(), &[])
                .await
                .map_err(|e| Error::postgres("cannot check the range is empty", e))?
                .get(0)
        }
    };
    let final_part = exhausted;
    let reconciles: Vec<String> = if mode == BatchMode::Move && final_part {
        planned.settles.clone()
    } else {
        vec![]
    };
    // Nothing to record: nothing was written and nothing is settled (the range
    // is empty, or every row streamed is already archived in an open batch that
    // this part does not settle; a copy never settles anything).  When open
    // batches are settled, even an empty part is recorded, as a marker.
    if written == 0 && (mode == BatchMode::Copy || reconciles.is_empty()) {
        if let Some(parts) = drop_parts.as_ref().filter(|_| streamed > 0) {
            // Every row was already archived: the partitions can go.
            drop_partitions(&tx, parts).await?;
        }
        let end = if mode == BatchMode::Move && streamed > 0 {
            tx.commit().await
        } else {
            tx.rollback().await
        };
        end.map_err(|e| Error::postgres("cannot end the batch transaction", e))?;
        return Ok(BatchDone {
            report: None,
            exhausted,
        });
    }

    let mut summary = HashMap::new();
    summary.insert(keys::BATCH_ID.to_string(), batch_id.to_string());
    summary.insert(keys::SOURCE.to_string(), src.source_id());
    summary.insert(keys::WINDOW_START.to_string(), rfc3339(range.start));
    summary.insert(keys::WINDOW_END.to_string(), rfc3339(range.end));
    summary.insert(keys::SEQUENCE.to_string(), sequence.to_string());
    summary.insert(keys::ROWS.to_string(), written.to_string());
    summary.insert(keys::CHECKSUM.to_string(), checksum.hex());
    summary.insert(keys::MODE.to_string(), mode.as_str().to_string());
    summary.insert(keys::WINDOWS.to_string(), planned.windows.len().to_string());
    summary.insert(
        keys::PARTITION_BY.to_string(),
        ctx.cfg.partition_by.name().to_string(),
    );
    summary.insert(keys::VERSION.to_string(), crate::VERSION.to_string());
    if let Some(x) = xid {
        summary.insert(keys::PG_XID.to_string(), x.to_string());
    }
    if !reconciles.is_empty() {
        summary.insert(keys::RECONCILES.to_string(), reconciles.join(","));
        summary.insert(keys::RECONCILED_ROWS.to_string(), reconciled.to_string());
    }
    let nfiles = files.len();
    let bytes: u64 = files.iter().map(|f| f.file_size_in_bytes()).sum();
    let source_id = src.source_id();
    // The last moment a stop may still leave this batch: nothing committed.
    shutdown::check_abort()?;
    let mut stages = Stages {
        extract_write: started.elapsed().as_secs_f64(),
        ..Stages::default()
    };
    let mark = Instant::now();
    let update = lake::commit::LedgerUpdate {
        source: &source_id,
        settled: &ctx.settled,
    };
    let (snapshot_id, committed) =
        lake::commit::commit_batch(ctx.catalog, &ctx.table.ident, files, summary, update).await?;
    fault::point("after-commit");
    stages.commit = mark.elapsed().as_secs_f64();
    let mark = Instant::now();

    // Verify from the catalog, not from memory.
    let fresh = committed;
    let verified = verify(&fresh, batch_id, written, &checksum).await;
    stages.verify = mark.elapsed().as_secs_f64();
    let mark = Instant::now();
    ctx.table.table = fresh;
    if let Err(e) = verified {
        let reason = e.message().to_string();
        let _ = tx.rollback().await;
        if let Err(me) =
            lake::commit::mark_failed(ctx.catalog, &ctx.table.ident, batch_id, &reason).await
        {
            tracing::error!("cannot record the failure of batch {batch_id}: {me}");
        }
        return Err(e.with_hint(
            "the rows stay in Postgres; the window is blocked until `archive --force`",
        ));
    }
    fault::point("after-verify");
    if let Some(parts) = &drop_parts {
        tracing::info!(
            "{}: dropping partition(s) {} of batch {batch_id}",
            ctx.cfg.source_name(),
            partition_names(parts)
        );
        drop_partitions(&tx, parts).await?;
    }
    tx.commit()
        .await
        .map_err(|e| Error::postgres("cannot commit the Postgres transaction (the batch is archived; the next run settles it)", e))?;
    fault::point("after-pg-commit");
    stages.settle = mark.elapsed().as_secs_f64();
    if mode == BatchMode::Move {
        ctx.settled.insert(batch_id.to_string());
        ctx.settled.extend(reconciles.iter().cloned());
    }
    let resolved_failures: Vec<String> = reconciles
        .iter()
        .filter(|id| lake::commit::failed_batches(&ctx.table.table).contains_key(*id))
        .cloned()
        .collect();
    if !resolved_failures.is_empty() {
        lake::commit::clear_failed(ctx.catalog, &ctx.table.ident, &resolved_failures).await?;
        ctx.table.table = lake::commit::reload(ctx.catalog, &ctx.table.ident).await?;
    }
    tracing::info!(
        "{}: batch {batch_id} {} archived {written} row(s){} in {:.1}s",
        ctx.cfg.source_name(),
        range,
        if reconciled > 0 {
            format!(", settled {reconciled} already archived")
        } else {
            String::new()
        },
        started.elapsed().as_secs_f64()
    );
    Ok(BatchDone {
        report: Some(BatchReport {
            batch_id: batch_id.to_string(),
            window_start: rfc3339(range.start),
            window_end: rfc3339(range.end),
            sequence,
            mode,
            rows: written,
            reconciled_rows: reconciled,
            files: nfiles,
            bytes,
            snapshot_id: Some(snapshot_id),
            checksum: checksum.hex(),
            seconds: started.elapsed().as_secs_f64(),
            stages,
        }),
        exhausted,
    })
}

fn partition_names(parts: &[crate::source::partitions::Partition]) -> String {
    parts
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Drops archived partitions inside the batch transaction.  If this fails
/// the transaction rolls back: the batch is archived, the next run settles it.
async fn drop_partitions(
    tx: &tokio_postgres::Transaction<'_>,
    parts: &[crate::source::partitions::Partition],
) -> Result<()> {
    tx.batch_execute(&format!("DROP TABLE {}", partition_names(parts)))
        .await
        .map_err(|e| {
            Error::postgres(
                "cannot drop the archived partitions (the batch is archived; the next run settles it)",
                e,
            )
        })
}

/// Reads the committed batch back and compares count and checksum.
async fn verify(
    table: &iceberg::table::Table,
    batch_id: &str,
    rows: u64,
    expected: &Checksum,
) -> Result<()> {
    let snap = lake::commit::find_batch(table, batch_id).ok_or_else(|| {
        Error::new(
            ErrorKind::Verification,
            format!("batch {batch_id} is not in the table"),
        )
    })?;
    let (got, _) = lake::readback::checksum_snapshot(table, &snap).await?;
    let mut expected = *expected;
    if fault::injected("corrupt-checksum") {
        expected.sum = expected.sum.wrapping_add(1);
    }
    if got.rows != rows || got.sum != expected.sum {
        return Err(Error::new(
            ErrorKind::Verification,
            format!(
                "verification failed: read back {} row(s) with checksum {}, expected {rows} with {}",
                got.rows,
                got.hex(),
                expected.hex()
            ),
        ));
    }
    let added = snap
        .summary()
        .additional_properties
        .get("added-records")
        .and_then(|v| v.parse::<u64>().ok());
    if added.is_some_and(|a| a != rows) {
        return Err(Error::new(
            ErrorKind::Verification,
            format!(
                "verification failed: snapshot summary says {added:?} added records, expected {rows}"
            ),
        ));
    }
    Ok(())
}
