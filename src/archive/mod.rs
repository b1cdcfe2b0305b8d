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

mod batch;
pub mod facts;
pub mod memory;
mod reconcile;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use iceberg::Catalog;
use serde::Serialize;
use tracing::Instrument;

use crate::config::{Config, OnBusy, TableConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::lake::catalog::CatalogHandle;
use crate::lake::table::TableState;
use crate::lake::{self, ArchiveTable};
use crate::ledger::BatchMode;
use crate::notify;
use crate::plan::window::{Micros, Window, rfc3339};
use crate::plan::{self, Plan, PlanOptions, TableFacts};
use crate::progress::Progress;
use crate::shutdown;
use crate::source::{self, windows};

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
    /// What the run left older than the cutoff in Postgres (normally none),
    /// outside the windows a `--no-delete` run keeps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
    /// `--no-delete`: ranges found as earlier copies left them, not read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unchanged: Option<Unchanged>,
    /// With `drop_partitions`: partitions earlier batches emptied (their
    /// `DROP` held up) that this run dropped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub emptied_partitions_dropped: Vec<String>,
    /// Batches that held an extraction slot at once, at most: up to
    /// `parallel_windows`, fewer when `global.memory_limit` holds fewer
    /// slots for rows this wide (0: no batch ran).
    pub extraction_slots_peak: usize,
}

/// Ranges a copy found holding the rows its open batches recorded, no
/// more and no fewer: not read again (neither Postgres nor the archive).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Unchanged {
    pub ranges: u64,
    pub rows: u64,
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
    /// With `drop_partitions`: the partitions the batch dropped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped_partitions: Vec<String>,
    /// The partitions whose `DROP` was held up or refused: their rows were
    /// deleted instead, and they stay, empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub emptied_partitions: Vec<String>,
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

/// Everything the batches of one table share, read-only but for the
/// committer and the settled set (each batch has its own Postgres
/// connection: a part's transaction borrows it).  Owned, so batches can run
/// on tasks of their own.
struct Ctx {
    cfg: TableConfig,
    catalog: Arc<CatalogHandle>,
    src: source::SourceTable,
    /// The archive table as the run planned from it.
    table: ArchiveTable,
    mode: BatchMode,
    /// Where batches prepare their commits, one at a time and in plan
    /// order (see [`Turns`]): a batch may prepare while the one before it
    /// is still sending (see [`Stage`]).
    stage: tokio::sync::Mutex<Stage>,
    /// The one committer: batches in flight send their commits to the
    /// catalog one at a time, holding this lock for the commit (and for
    /// failure marks).  A batch takes it before it leaves the stage, so
    /// commits go out in the order they were prepared.
    committer: tokio::sync::Mutex<Committer>,
    /// Counts the commits that did not land as prepared (failed, or
    /// prepared again on the table they went onto): a [`Stage::head`] of
    /// an older count is no base for the next batch.
    epoch: std::sync::atomic::AtomicU64,
    /// ... and in plan order, so the snapshot history is in window order.
    turns: Turns,
    /// Whose turn it is to wait for an extraction slot: plan order too.
    /// The batches' tasks reach their slot in any order; a later batch
    /// extracting before an earlier one would then wait for that one's
    /// commit turn with its transaction open (a move's deleted rows
    /// locked) — up to 0.17 s in a 0.3 s run (README, "Changes measured in
    /// paired runs").
    extract_turns: Turns,
    /// The `FileIO` batches write and commit with, renewed before the keys
    /// a catalog vends with the table expire.
    storage: lake::vended::TableStorage,
    /// Extraction slots, `parallel_windows` of them: a batch holds one
    /// while it streams out of Postgres and writes its files, not while it
    /// commits, verifies and settles — so with a spare worker (see
    /// [`workers`]) the next window's extraction overlaps that tail.
    extracting: tokio::sync::Semaphore,
    /// The run's memory budget: an extraction slot is taken with its share.
    memory: Arc<memory::Memory>,
    /// How wide the table's rows are, for that share.
    row_width: memory::RowWidth,
    /// Batches holding an extraction slot now, and at most.
    extracting_now: std::sync::atomic::AtomicUsize,
    extracting_peak: std::sync::atomic::AtomicUsize,
    /// Batches known to be settled (the ledger drops their files): settled
    /// when the run started, and settled by this run's Postgres commits.
    /// Apart from the committer, so a batch settling never waits for
    /// another's catalog commit; a commit reads it under the committer lock,
    /// and a batch settled just after is dropped from the ledger by the next.
    settled: std::sync::Mutex<HashSet<String>>,
    /// The Postgres history the run's transaction ids belong to, recorded
    /// with each move batch (read when the run planned: a failover since
    /// can only make the record name an older history, which the next run
    /// distrusts — the safe side).
    pg_history: Option<String>,
}

impl Ctx {
    /// Records the batches a Postgres commit of this run settled.
    fn settle(&self, ids: Vec<String>) {
        self.settled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(ids);
    }

    /// The batches settled so far.
    fn settled(&self) -> HashSet<String> {
        self.settled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Whose turn it is to commit: planned batch `i` commits once every batch
/// planned before it has made its last commit (or failed, or found nothing
/// to record).  A batch of one part passes the turn right after its commit;
/// one split by `max_batch_rows` when its last part is done.  Batches start
/// in plan order, so the ones waited for are running.
struct Turns {
    next: tokio::sync::watch::Sender<usize>,
    finished: std::sync::Mutex<std::collections::BTreeSet<usize>>,
}

impl Turns {
    fn new() -> Self {
        Self {
            next: tokio::sync::watch::Sender::new(0),
            finished: std::sync::Mutex::new(Default::default()),
        }
    }

    /// Waits until batch `i` may commit.
    async fn wait(&self, i: usize) {
        let mut next = self.next.subscribe();
        let _ = next.wait_for(|n| *n >= i).await;
    }

    /// Batch `i` is finished: the turn passes on.
    fn finish(&self, i: usize) {
        let Ok(mut finished) = self.finished.lock() else {
            return;
        };
        let mut n = *self.next.borrow();
        if i < n {
            return;
        }
        finished.insert(i);
        while finished.remove(&n) {
            n += 1;
        }
        self.next.send_replace(n);
    }
}

/// Finishes a batch's turns however it ends (a panic included).
struct TurnGuard<'a>(&'a Ctx, usize);

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        self.0.extract_turns.finish(self.1);
        self.0.turns.finish(self.1);
    }
}

/// What catalog commits of a run change, behind [`Ctx::committer`].
struct Committer {
    /// The table as our last commit left it: what the next commit goes
    /// onto.
    table: iceberg::table::Table,
    /// Load the table again before the next commit: at the start (a commit
    /// of a run that died may still land after the plan's load, and the
    /// first batch may take long), and after a failed commit (whether it
    /// landed is not known; a base without a landed batch would write a
    /// ledger without it).
    stale: bool,
    /// The [`Ctx::storage`] generation of `table`'s `FileIO`.
    io_generation: u64,
}

impl Committer {
    /// Loads the table again if it is [`Self::stale`].
    async fn refresh(&mut self, ctx: &Ctx) -> Result<()> {
        if self.stale {
            self.table = lake::commit::reload(ctx.catalog.iceberg(), &ctx.table.ident).await?;
            self.stale = false;
        }
        Ok(())
    }
}

/// What preparing the commits of a run keeps, behind [`Ctx::stage`].
struct Stage {
    /// The table the last prepared commit leaves once it lands — the base
    /// the next batch prepares on while that commit is still being sent —
    /// and the [`Ctx::epoch`] it was prepared in.  `None` at the start and
    /// after a failed preparation: the next batch prepares on the
    /// committer's table.
    head: Option<(iceberg::table::Table, u64)>,
    /// The batches of the source the run knows of: those of its plan's
    /// facts, then its own prepared commits (see
    /// [`lake::commit::LedgerUpdate`]).
    known: HashSet<String>,
    /// The [`Ctx::storage`] generation of `head`'s `FileIO`.
    io_generation: u64,
}

/// Runs `archive` over the selected tables, `global.max_table_concurrency` at a time.
///
/// The catalog opens while the first tables connect to Postgres and read
/// their columns (over a network each is a few round trips); a table waits
/// for it before it takes its lock.  A catalog that does not open fails the
/// run with its own error, before any table has locked or changed anything.
pub async fn run(
    cfg: &Config,
    opts: &ArchiveOptions,
    progress: &Progress,
) -> Result<Vec<TableReport>> {
    let tables = cfg.select_tables(opts.table.as_deref())?;
    let (opened, slot) = tokio::sync::watch::channel(None);
    let memory = Arc::new(memory::Memory::new(cfg.global.memory_limit));
    let open = async {
        let catalog = async {
            let catalog = lake::open_catalog(&cfg.catalog).await?;
            lake::catalog::ping(catalog.iceberg(), &cfg.catalog).await?;
            Ok(catalog)
        }
        .await;
        opened.send_replace(Some(catalog.as_ref().ok().cloned()));
        catalog
    };
    use futures::{FutureExt, StreamExt};
    let reports = futures::stream::iter(tables.into_iter().map(|t| {
        let shared = Shared {
            catalog: CatalogSlot(slot.clone()),
            memory: memory.clone(),
        };
        async move { archive_table(cfg, &t, shared, opts, progress).await }
    }))
    // One connection per table in flight: `database.pool_size` caps it too.
    .buffered(cfg.global.max_table_concurrency.min(cfg.database.pool_size))
    .collect::<Vec<TableReport>>()
    .map(Ok::<_, Error>);
    // On the catalog's error the tables, all still waiting for it, are dropped.
    let (_, reports) = futures::future::try_join(open, reports).await?;
    Ok(reports)
}

/// What the tables of a run share: its catalog, and its memory budget.
struct Shared {
    catalog: CatalogSlot,
    memory: Arc<memory::Memory>,
}

/// The run's catalog as [`run`] opens it: `None` until it has tried,
/// then the catalog, or `None` again when it did not open.
struct CatalogSlot(tokio::sync::watch::Receiver<Option<Option<Arc<CatalogHandle>>>>);

impl CatalogSlot {
    /// The catalog, once open; an error when it did not open (the run
    /// reports the catalog's own).
    async fn get(&mut self) -> Result<Arc<CatalogHandle>> {
        let opened = self
            .0
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|o| o.clone().flatten());
        opened.ok_or_else(|| Error::new(ErrorKind::Catalog, "the catalog did not open"))
    }
}

async fn archive_table(
    cfg: &Config,
    t: &TableConfig,
    shared: Shared,
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
        unchanged: None,
        emptied_partitions_dropped: vec![],
        extraction_slots_peak: 0,
    };
    let span =
        tracing::trace_span!(target: crate::logging::CONTEXT, "table", table = %t.source_name());
    let result = if shutdown::stop_requested() {
        Err(shutdown::interrupted(
            "stopped by a signal before this table started",
        ))
    } else {
        archive_table_inner(cfg, t, shared, opts, progress, &mut report)
            .instrument(span)
            .await
    };
    if let Err(e) = result {
        if e.kind() != ErrorKind::Interrupted {
            notify_failure(cfg, t, &e).await;
        }
        report.outcome = Outcome::Failed {
            kind: e.kind(),
            error: e.message().to_string(),
            hint: e.hint().map(str::to_string),
        };
    }
    report
}

/// Tells the webhook (if any) that a table or one of its batches failed.
async fn notify_failure(cfg: &Config, t: &TableConfig, e: &Error) {
    let context = |key: &str| {
        e.context()
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    };
    let batch_id = context("batch");
    let event = notify::Event {
        service: "permafrost",
        event: if batch_id.is_some() {
            "batch_failed"
        } else {
            "table_failed"
        },
        table: t.source_name(),
        batch_id,
        window_start: context("window_start"),
        window_end: context("window_end"),
        error: crate::secret::redact(&e.to_string()),
    };
    notify::send(cfg.notify.webhook_url.as_deref(), &event).await;
}

async fn archive_table_inner(
    cfg: &Config,
    t: &TableConfig,
    shared: Shared,
    opts: &ArchiveOptions,
    progress: &Progress,
    report: &mut TableReport,
) -> Result<()> {
    let mut client = source::connect(&cfg.database).await?;
    match archive_on(&mut client, cfg, t, shared, opts, progress, report).await {
        Err(e) => Err(source::explain_lock_timeout(&client, &t.quoted_name(), e).await),
        ok => ok,
    }
}

/// The range a run covers: `[lower, cutoff)`.  `replay` widens its range to
/// whole windows and ignores the lag.
fn run_range(t: &TableConfig, opts: &ArchiveOptions, now: Micros) -> (Option<Micros>, Micros) {
    let g = t.partition_by;
    match opts.range {
        Some(r) => (
            Some(g.floor(r.start)),
            if g.floor(r.end) == r.end {
                r.end
            } else {
                g.window_of(r.end).end
            },
        ),
        None => (None, windows::cutoff(g, now, t.lag)),
    }
}

fn mode_of(opts: &ArchiveOptions) -> BatchMode {
    if opts.no_delete {
        BatchMode::Copy
    } else {
        BatchMode::Move
    }
}

fn plan_of(facts: &TableFacts, opts: &ArchiveOptions, batch_windows: u32) -> Plan {
    plan::plan(
        facts,
        PlanOptions {
            force: opts.force,
            batch_windows,
            mode: mode_of(opts),
        },
    )
}

/// What a run plans from Postgres alone, under the table's lock.
struct PostgresSide {
    /// The windows in `[lower, cutoff)` that hold rows.
    pending: Vec<Window>,
    /// Windows per batch ([`batch_windows`]).
    per_batch: u32,
    /// The batch workers' connections ([`workers`]: their error is the
    /// caller's to report, after planning).
    own: Result<Vec<tokio_postgres::Client>>,
    /// The rows' width, as far as it can bound the slots ([`row_width`]).
    width: memory::RowWidth,
}

/// The [`PostgresSide`] of a run: the pending windows, then the rest at once.
async fn pending_side(
    client: &tokio_postgres::Client,
    (cfg, t, mode): (&Config, &TableConfig, BatchMode),
    src: &source::SourceTable,
    (lower, cutoff): (Option<Micros>, Micros),
) -> Result<PostgresSide> {
    let pending = windows::nonempty_windows(client, src, t.partition_by, lower, cutoff).await?;
    let (per_batch, own, width) = futures::join!(
        batch_windows(client, t, src, pending.len(), (lower, cutoff)),
        workers(cfg, t, mode, src.oid, pending.len()),
        row_width(client, (cfg, t), src, pending.len())
    );
    Ok(PostgresSide {
        pending,
        per_batch: per_batch?,
        own,
        width: width?,
    })
}

/// The width of `src`'s rows by Postgres's statistics, asked only when a
/// window is pending and wide rows could make the slots of this table, and
/// of the tables run at once, more than `global.memory_limit` holds (else
/// taken as wide).  One batch asks too: its share comes out of the budget
/// the other tables draw on.  Logs how many slots fit when that is fewer
/// than `parallel_windows`.
async fn row_width(
    client: &tokio_postgres::Client,
    (cfg, t): (&Config, &TableConfig),
    src: &source::SourceTable,
    pending: usize,
) -> Result<memory::RowWidth> {
    let limit = cfg.global.memory_limit;
    let at_once = t.parallel_windows * cfg.global.max_table_concurrency;
    if pending == 0 || memory::slots_within(limit, u64::MAX, at_once) == at_once {
        return Ok(memory::RowWidth::estimated(None));
    }
    let bytes = windows::row_bytes(client, src).await?;
    if let Some(fewer) = memory::fewer_slots(limit, bytes, t.parallel_windows) {
        tracing::info!("{}: {fewer}", t.quoted_name());
    }
    Ok(memory::RowWidth::estimated(bytes))
}

/// The windows per batch of a run of `pending` windows holding rows:
/// `batch_windows`, or with `batch_rows` as many as hold about that many
/// rows by Postgres's estimate ([`plan::windows_for_rows`]).
async fn batch_windows(
    client: &tokio_postgres::Client,
    t: &TableConfig,
    src: &source::SourceTable,
    pending: usize,
    (lower, cutoff): (Option<Micros>, Micros),
) -> Result<u32> {
    let Some(target) = t.batch_rows else {
        return Ok(t.batch_windows);
    };
    if pending == 0 {
        return Ok(t.batch_windows);
    }
    let rows = windows::estimated_rows(client, src, lower, cutoff).await?;
    let n = plan::windows_for_rows(t.batch_windows, target, rows, pending, t.parallel_windows);
    tracing::debug!(
        "{}: about {rows} row(s) in {pending} window(s): {n} window(s) per batch",
        t.quoted_name(),
    );
    Ok(n)
}

/// One table's run on its connection: introspect, then (under the table's
/// advisory lock) create or evolve the archive table, plan from it as it is
/// now (another instance may have committed while we waited), and run the
/// batches.  A dry run only reads.
async fn archive_on(
    client: &mut tokio_postgres::Client,
    cfg: &Config,
    t: &TableConfig,
    mut shared: Shared,
    opts: &ArchiveOptions,
    progress: &Progress,
    report: &mut TableReport,
) -> Result<()> {
    let ((_, server_now), src, catalog) = futures::try_join!(
        source::server_facts(client),
        source::introspect::introspect(client, t),
        shared.catalog.get()
    )?;
    let catalog = &catalog;
    let (lower, cutoff) = run_range(t, opts, opts.now.unwrap_or(server_now));
    report.cutoff = Some(rfc3339(cutoff));
    if opts.dry_run {
        return dry_run(
            client,
            t,
            catalog.iceberg(),
            &src,
            opts,
            (lower, cutoff),
            report,
        )
        .await;
    }
    if !lock_or_skip(client, cfg, t, &src, report).await? {
        return Ok(());
    }
    // The archive table (loaded, or created or evolved in the catalog) and
    // Postgres's side of the plan at once: neither needs the other, and
    // each is round trips to a server of its own.  Both run to the end (a
    // catalog change is not cut off halfway); the catalog's error first.
    let (table, postgres) = futures::join!(
        lake::table::ensure_table(catalog, t, &src),
        pending_side(client, (cfg, t, mode_of(opts)), &src, (lower, cutoff))
    );
    let table = table?;
    let PostgresSide {
        pending,
        per_batch,
        own,
        width,
    } = postgres?;
    let snapshots = table.table.metadata().snapshots().count();
    if let Some(warning) = long_history(snapshots, cfg.maintenance.after_archive) {
        tracing::warn!("{}: {warning}", table.ident);
    }
    let mut facts = facts::without_archive(&src, t, pending, facts::scanned(lower, cutoff));
    facts::add_ledger(&mut facts, client, &table.table).await?;
    let plan = plan_of(&facts, opts, per_batch);
    let ctx = Ctx {
        cfg: t.clone(),
        catalog: catalog.clone(),
        src: src.clone(),
        stage: tokio::sync::Mutex::new(Stage {
            head: None,
            known: facts.batches.iter().map(|b| b.batch_id.clone()).collect(),
            io_generation: 0,
        }),
        committer: tokio::sync::Mutex::new(Committer {
            table: table.table.clone(),
            stale: true,
            io_generation: 0,
        }),
        epoch: Default::default(),
        storage: lake::vended::TableStorage::new(catalog.clone(), &table.table),
        turns: Turns::new(),
        extract_turns: Turns::new(),
        extracting: tokio::sync::Semaphore::new(t.parallel_windows),
        memory: shared.memory.clone(),
        row_width: width,
        extracting_now: Default::default(),
        extracting_peak: Default::default(),
        settled: std::sync::Mutex::new(plan::settled_batches(&facts)),
        pg_history: facts.pg_history.clone(),
        table,
        mode: mode_of(opts),
    };
    if !report_plan(t, &plan, report) {
        let _ = source::unlock_table(client, src.oid).await;
        return Ok(());
    }
    let result = match own.map(|own| needed(own, cfg, t, mode_of(opts), plan.batches.len())) {
        Ok(own) => {
            let idle = match own.is_empty() {
                true => vec![Worker::Run(&mut *client)],
                false => own.into_iter().map(Worker::Own).collect(),
            };
            let ctx = Arc::new(ctx);
            let result = run_batches(ctx.clone(), idle, &plan, progress, report).await;
            report.extraction_slots_peak = ctx.extracting_peak.load(Ordering::Relaxed);
            result
        }
        Err(e) => Err(e),
    };
    let finished = result
        .as_ref()
        .err()
        .is_none_or(|e| e.kind() == ErrorKind::Interrupted);
    if opts.range.is_none() && finished {
        let kept = match opts.no_delete {
            true => kept_after(&facts, &plan, report),
            false => vec![],
        };
        report.pending = left_behind(client, &src, cutoff, &kept).await;
    }
    if t.drop_partitions && src.relkind == 'p' && !opts.no_delete && result.is_ok() {
        report.emptied_partitions_dropped = batch::drop_emptied(client, t, &src).await;
    }
    let _ = source::unlock_table(client, src.oid).await;
    result
}

/// Snapshots past which a run says that the table's history wants expiring.
const LONG_HISTORY: usize = 1000;

/// The warning for an archive table of `snapshots` snapshots, when that is
/// more than [`LONG_HISTORY`]: every commit rewrites a metadata file that
/// lists them all (about 1.3 KB each), and every engine reads it to plan a
/// query (README, "Maintenance").  Pure.
fn long_history(snapshots: usize, after_archive: bool) -> Option<String> {
    if snapshots <= LONG_HISTORY {
        return None;
    }
    let remedy = match after_archive {
        true => "shorten `maintenance.older_than` or lower `maintenance.retain_last`",
        false => {
            "expire them: `permafrost maintain` from cron, or `maintenance.after_archive: true`"
        }
    };
    Some(format!(
        "{snapshots} snapshots: every commit rewrites a metadata file that lists them all, and \
         every engine reads it to plan a query; {remedy}"
    ))
}

/// Read-only: what the catalog holds now, and what a run would change.
async fn dry_run(
    client: &tokio_postgres::Client,
    t: &TableConfig,
    catalog: &dyn Catalog,
    src: &source::SourceTable,
    opts: &ArchiveOptions,
    (lower, cutoff): (Option<Micros>, Micros),
    report: &mut TableReport,
) -> Result<()> {
    let state = lake::table::inspect_table(catalog, t, src).await?;
    let counts = windows::window_counts(client, src, t.partition_by, cutoff).await?;
    let facts = match &state {
        TableState::Missing => facts::without_archive(
            src,
            t,
            counts.iter().map(|(w, _)| *w).collect(),
            Window::up_to(cutoff),
        ),
        TableState::Ready(at) => facts::gather(client, &at.table, src, t, lower, cutoff).await?,
        TableState::Evolves { table, changes } => {
            report.schema_changes = changes.iter().map(ToString::to_string).collect();
            facts::gather(client, table, src, t, lower, cutoff).await?
        }
    };
    let per_batch = batch_windows(client, t, src, facts.pending.len(), (lower, cutoff)).await?;
    fill_dry_run(report, &facts, opts, per_batch, &counts);
    Ok(())
}

/// Takes the table's advisory lock; false (and the report says skipped)
/// when another instance holds it and `database.on_busy` is `skip`.
async fn lock_or_skip(
    client: &tokio_postgres::Client,
    cfg: &Config,
    t: &TableConfig,
    src: &source::SourceTable,
    report: &mut TableReport,
) -> Result<bool> {
    let wait = match cfg.database.on_busy {
        OnBusy::Wait => None,
        OnBusy::Skip => Some(cfg.database.lock_wait),
    };
    if source::lock_table(client, src.oid, wait).await? {
        return Ok(true);
    }
    let holder = source::lock_holder(client, src.oid)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| "another session".into());
    let reason = format!("another permafrost instance is archiving this table: {holder}");
    tracing::warn!("{}: skipped, {reason}", t.source_name());
    report.outcome = Outcome::Skipped { reason };
    Ok(false)
}

/// Reports the plan's blocked windows; false (and the report says skipped)
/// when a batch's transaction is still running elsewhere.
fn report_plan(t: &TableConfig, plan: &Plan, report: &mut TableReport) -> bool {
    if !plan.in_progress.is_empty() {
        report.outcome = Outcome::Skipped {
            reason: format!(
                "the Postgres transaction of batch {} is still running (another instance?)",
                plan.in_progress.join(", ")
            ),
        };
        return false;
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
    true
}

/// The connections of the batch workers for up to `batches` batches: none
/// when one worker runs the batches on the run's own connection (the one
/// holding the table's lock), else one each ([`worker_count`]).  For a
/// move, with `parallel_windows` > 1 there are up to
/// [`FINISHING`](crate::config::FINISHING) workers more than extraction
/// slots when `pool_size` leaves room for them: while batches commit,
/// verify and settle (their transactions still open), the slots keep
/// extracting.  A copy's batches give their connections back once read,
/// so it has one per slot.  With 1, batches run strictly one after another.
/// When Postgres admits fewer (connection limits), the run works with
/// those it admitted, with a warning; with fewer than two, one after
/// another on its own connection.
async fn workers(
    cfg: &Config,
    t: &TableConfig,
    mode: BatchMode,
    table_oid: u32,
    batches: usize,
) -> Result<Vec<tokio_postgres::Client>> {
    let n = worker_count(mode, t.parallel_windows, cfg.database.pool_size, batches);
    if n < 2 {
        return Ok(Vec::new());
    }
    // Concurrently: each connection is a few round trips (TLS, auth).
    let mut extra = source::connect_extra(&cfg.database, n, |client| async move {
        match source::run_lock_here(&client, table_oid).await? {
            true => Ok(client),
            false => Err(source::reached_another_server(
                format!(
                    "{}: a worker connection reached another server than the run's (the \
                     table's advisory lock is not held there)",
                    t.quoted_name()
                ),
                "nothing was archived",
            )),
        }
    })
    .await?;
    // One worker alone is no parallelism: the run's own connection does.
    let using = match extra.clients.len() {
        0 | 1 => "the batches run one after another on the run's own connection".to_string(),
        k => format!("{k} batches run at once"),
    };
    if let Some(w) = extra.shortfall(n, "worker connections", &using) {
        tracing::warn!("{}: {w}", t.source_name());
    }
    if extra.clients.len() < 2 {
        extra.clients.clear();
    }
    Ok(extra.clients)
}

/// The worker connections a plan of `batches` batches uses, of `own` (opened
/// for as many batches as there were pending windows); the rest close.
fn needed(
    mut own: Vec<tokio_postgres::Client>,
    cfg: &Config,
    t: &TableConfig,
    mode: BatchMode,
    batches: usize,
) -> Vec<tokio_postgres::Client> {
    match worker_count(mode, t.parallel_windows, cfg.database.pool_size, batches) {
        n if n < 2 => own.clear(),
        n => own.truncate(n),
    }
    own
}

/// How many worker connections a run of `batches` batches uses: a move's
/// batches hold theirs to their Postgres commit, so `parallel` extracting
/// plus up to [`FINISHING`](crate::config::FINISHING) finishing, within
/// `pool_size` less the run's own connection; a copy's give theirs back
/// once read, so one per extraction slot.  No more than there are batches.
pub(crate) fn worker_count(
    mode: BatchMode,
    parallel: usize,
    pool_size: usize,
    batches: usize,
) -> usize {
    let n = match (mode, parallel) {
        (_, 1) => 1,
        (BatchMode::Copy, p) => p,
        (BatchMode::Move, p) => (p + crate::config::FINISHING)
            .min(pool_size.saturating_sub(1))
            .max(p),
    };
    n.min(batches)
}

/// How many batches are in flight at once: `parallel` extracting plus up
/// to [`FINISHING`](crate::config::FINISHING) committing and reading back
/// (fewer when fewer workers hold a move's batches).
fn in_flight_limit(parallel: usize) -> usize {
    parallel + crate::config::FINISHING
}

/// Where a batch runs: inline on the run's own connection (one worker), or
/// on a task of its own with a connection of its own (several: they use
/// every core).
enum Worker<'c> {
    Run(&'c mut tokio_postgres::Client),
    Own(tokio_postgres::Client),
}

type Done = Result<batch::Ran>;

/// What a batch in flight tells [`run_batches`].
enum Event<'c> {
    /// A copy gave its worker back once its rows were read, and goes on
    /// committing and reading back (`None`: it did not; the worker comes
    /// back when the batch ends).
    Released(Option<Worker<'c>>),
    /// The batch ended; its worker, unless it gave it back earlier or its
    /// task panicked (the connection is gone with it).
    Ended(Option<Worker<'c>>, Done),
}

type Events<'c> = futures::future::BoxFuture<'c, Event<'c>>;

impl<'c> Worker<'c> {
    /// Starts `planned` on this worker: what the batch will tell.
    fn start(
        self,
        ctx: Arc<Ctx>,
        turn: usize,
        planned: plan::PlannedBatch,
        bar: indicatif::ProgressBar,
    ) -> Vec<Events<'c>> {
        use futures::FutureExt;
        match self {
            Worker::Run(client) => vec![
                async move {
                    let _turn = TurnGuard(&ctx, turn);
                    let mut lease = batch::Lease::Run(client);
                    let r = batch::run_planned(&ctx, &mut lease, turn, &planned, &bar).await;
                    Event::Ended(lease.into_run().map(Worker::Run), r)
                }
                .boxed(),
            ],
            Worker::Own(client) => {
                // A copy gives its connection back once read (see `batch::Lease`).
                let early = ctx.mode == BatchMode::Copy;
                let (back, returned) = tokio::sync::oneshot::channel();
                let back = early.then_some(back);
                // The task logs in the table's context, like the run.
                let task = tokio::spawn(
                    async move {
                        let _turn = TurnGuard(&ctx, turn);
                        let mut lease = batch::Lease::Own(Some(client), back);
                        let r = batch::run_planned(&ctx, &mut lease, turn, &planned, &bar).await;
                        (lease.into_own(), r)
                    }
                    .instrument(tracing::Span::current()),
                );
                let ended = async move {
                    match task.await {
                        Ok((client, r)) => Event::Ended(client.map(Worker::Own), r),
                        Err(e) => Event::Ended(
                            None,
                            Err(Error::internal(format!("a batch task failed: {e}"))),
                        ),
                    }
                };
                let released = async move { Event::Released(returned.await.ok().map(Worker::Own)) };
                match early {
                    true => vec![released.boxed(), ended.boxed()],
                    false => vec![ended.boxed()],
                }
            }
        }
    }
}

/// Runs the planned batches, one per worker at a time, in plan order (a
/// copy's worker takes the next batch once its rows are read), at most
/// [`in_flight_limit`] at once.  No batch starts after one failed or a stop
/// came; the batches in flight finish (each commits or rolls back on its
/// own).  The first failure is the table's; the reports come in window
/// order.
async fn run_batches(
    ctx: Arc<Ctx>,
    mut idle: Vec<Worker<'_>>,
    plan: &Plan,
    progress: &Progress,
    report: &mut TableReport,
) -> Result<()> {
    use futures::StreamExt;
    let name = ctx.cfg.source_name();
    if plan.batches.is_empty() {
        let cutoff = report.cutoff.as_deref().unwrap_or("?");
        tracing::info!("{name}: nothing to archive (cutoff {cutoff})");
    }
    let bar = progress.table_bar(&name, plan.batches.len() as u64);
    let mut queue = plan.batches.iter().enumerate();
    let mut running = futures::stream::FuturesUnordered::new();
    let (mut failed, mut cut, mut whole) = (None::<Error>, false, 0);
    let (mut in_flight, most) = (0, in_flight_limit(ctx.cfg.parallel_windows));
    loop {
        while failed.is_none() && !cut && !idle.is_empty() && in_flight < most && queue.len() > 0 {
            if shutdown::stop_requested() {
                cut = true;
                break;
            }
            let (Some(worker), Some((turn, planned))) = (idle.pop(), queue.next()) else {
                break;
            };
            running.extend(worker.start(ctx.clone(), turn, planned.clone(), bar.clone()));
            in_flight += 1;
        }
        let (worker, r) = match running.next().await {
            None => break,
            Some(Event::Released(worker)) => {
                idle.extend(worker);
                continue;
            }
            Some(Event::Ended(worker, r)) => (worker, r),
        };
        in_flight -= 1;
        idle.extend(worker);
        bar.inc(1);
        match r {
            Ok(ran) => {
                report.batches.extend(ran.reports);
                if let Some(rows) = ran.unchanged {
                    let u = report.unchanged.get_or_insert_default();
                    u.ranges += 1;
                    u.rows += rows;
                }
                whole += usize::from(!ran.stopped);
                cut |= ran.stopped;
            }
            Err(e) if failed.is_none() => failed = Some(e),
            Err(e) => tracing::error!("{name}: {e}"),
        }
    }
    bar.finish_and_clear();
    report
        .batches
        .sort_by(|a, b| (&a.window_start, a.sequence).cmp(&(&b.window_start, b.sequence)));
    match failed {
        Some(e) => Err(e),
        None if cut => Err(stopped(plan.batches.len() - whole)),
        None => Ok(()),
    }
}

/// The error of a table whose run a signal cut short, `left` batches early.
fn stopped(left: usize) -> Error {
    shutdown::interrupted(&format!(
        "stopped by a signal; {left} planned batch(es) left for the next run"
    ))
}

/// The ranges a `--no-delete` run leaves in Postgres on purpose: the kept
/// windows it found and the ranges of the batches it finished.
fn kept_after(facts: &TableFacts, plan: &Plan, report: &TableReport) -> Vec<Window> {
    let done: HashSet<&str> = report.batches.iter().map(|b| b.batch_id.as_str()).collect();
    let ranges = plan
        .batches
        .iter()
        .filter(|b| done.contains(b.batch_id.as_str()))
        .map(|b| b.range);
    plan::kept_ranges(facts, ranges)
}

/// What a run left older than the cutoff, outside the `kept` ranges (logged,
/// not fatal, when the count itself fails).
async fn left_behind(
    client: &tokio_postgres::Client,
    src: &source::SourceTable,
    cutoff: Micros,
    kept: &[Window],
) -> Option<Pending> {
    match windows::pending(client, src, cutoff, kept).await {
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

/// The dry run's plan: the batches a run would start with their rows now;
/// a copy of a range as it was copied is counted as `unchanged` instead,
/// as the run would skip it.
fn fill_dry_run(
    report: &mut TableReport,
    facts: &TableFacts,
    opts: &ArchiveOptions,
    batch_windows: u32,
    counts: &[(Window, u64)],
) {
    for b in plan_of(facts, opts, batch_windows).batches {
        let rows = counts
            .iter()
            .filter(|(w, _)| b.range.overlaps(w))
            .map(|(_, n)| n)
            .sum();
        if plan::batch::unchanged(&b, rows) {
            let u = report.unchanged.get_or_insert_default();
            u.ranges += 1;
            u.rows += rows;
            continue;
        }
        report.planned.push(PlannedReport {
            window_start: rfc3339(b.range.start),
            window_end: rfc3339(b.range.end),
            windows: b.windows.len(),
            rows,
            batch_id: b.batch_id,
            reconcile: b.reconcile,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{LONG_HISTORY, long_history, worker_count};
    use crate::ledger::BatchMode::{Copy, Move};

    #[test]
    fn a_long_history_is_told_with_its_remedy() {
        assert_eq!(long_history(LONG_HISTORY, false), None);
        let w = long_history(2400, false).unwrap_or_default();
        assert!(
            w.starts_with("2400 snapshots") && w.contains("permafrost maintain"),
            "{w}"
        );
        let w = long_history(2400, true).unwrap_or_default();
        assert!(w.contains("maintenance.older_than"), "{w}");
    }

    #[test]
    fn finishing_workers_beside_the_slots_when_the_pool_has_room() {
        let cases = [
            // (mode, parallel_windows, pool_size, batches) → workers
            (Move, 1, 8, 30, 1, "1: strictly one after another"),
            (Move, 2, 6, 30, 5, "2 cores' default: 2 slots, 3 finishing"),
            (Move, 2, 4, 30, 3, "room for one finishing worker"),
            (Move, 2, 3, 30, 2, "no room in the pool for one"),
            (Move, 8, 12, 30, 11, "the default on 8 cores"),
            (Move, 4, 16, 2, 2, "no more workers than batches"),
            (Move, 3, 1, 30, 3, "never fewer than the slots"),
            (Copy, 1, 8, 30, 1, "a copy too"),
            (Copy, 2, 6, 30, 2, "a copy: one per slot"),
            (Copy, 8, 4, 30, 8, "a copy: never fewer than the slots"),
            (Copy, 4, 16, 2, 2, "a copy: no more than batches"),
        ];
        for (mode, parallel, pool, batches, want, why) in cases {
            assert_eq!(worker_count(mode, parallel, pool, batches), want, "{why}");
        }
    }
}
