//! One planned batch, as typed stages per part:
//! begin → extract + write → settle decision → commit → verify → Postgres
//! commit.  The decisions between the stages are
//! [`crate::plan::batch`]'s (the simulation runs the same ones); this module
//! does the I/O.
//!
//! Contract: a part's rows leave Postgres only when its Postgres
//! transaction commits, which happens after its snapshot is committed and
//! read back equal (count and checksum).  Any error before that rolls the
//! transaction back; a verification failure also marks the batch failed
//! (its windows wait for `archive --force`).  A copy, which changes
//! nothing in Postgres, ends its transaction once its rows are read
//! ([`Lease`]).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arrow_array::BooleanArray;
use iceberg::spec::DataFile;
use tracing::Instrument;

use crate::bag::HashBag;
use crate::checksum::Checksum;
use crate::error::{Error, ErrorKind, Result};
use crate::fault;
use crate::lake;
use crate::ledger::{self, BatchMode, BatchRecord, SummaryExtra};
use crate::plan::PlannedBatch;
use crate::plan::batch::{self as decide, Part, Settle, Take};
use crate::plan::window::{Window, rfc3339};
use crate::shutdown;
use crate::source::partitions::{self, Partition};
use crate::source::{self, extract, windows};

use super::{BatchReport, Ctx, Stages, reconcile};

/// What one planned batch did.
#[derive(Default)]
pub(super) struct Ran {
    /// The committed parts.
    pub reports: Vec<BatchReport>,
    /// A stop cut the parts short.
    pub stopped: bool,
    /// A copy found the range as its open batches left it and did not read
    /// it: their rows.
    pub unchanged: Option<u64>,
}

/// The Postgres connection a batch runs on.  A copy changes nothing in
/// Postgres: it ends its transaction once its rows are read and gives a
/// worker's connection back ([`Lease::release`]), so the next batch
/// extracts on it while this one commits and reads back, and no snapshot
/// stays open meanwhile.  A move holds its connection to its Postgres
/// commit (its deleted rows stay locked until then).
pub(super) enum Lease<'c> {
    /// The run's own connection, for the whole batch.
    Run(&'c mut tokio_postgres::Client),
    /// A worker's connection (`None` once given back), and where a copy
    /// gives it back.
    Own(
        Option<tokio_postgres::Client>,
        Option<tokio::sync::oneshot::Sender<tokio_postgres::Client>>,
    ),
}

impl<'c> Lease<'c> {
    fn client(&mut self) -> Result<&mut tokio_postgres::Client> {
        match self {
            Lease::Run(client) => Ok(client),
            Lease::Own(Some(client), _) => Ok(client),
            Lease::Own(None, _) => Err(Error::internal(
                "the batch's connection was given back before its last statement",
            )),
        }
    }

    /// Gives a worker's connection back before the batch ends, where the
    /// lease says to; otherwise it stays.
    fn release(&mut self) {
        if let Lease::Own(client, back @ Some(_)) = self
            && let (Some(client), Some(back)) = (client.take(), back.take())
        {
            // The run no longer waiting for it, the connection closes.
            let _ = back.send(client);
        }
    }

    /// The run's own connection, back to the run.
    pub(super) fn into_run(self) -> Option<&'c mut tokio_postgres::Client> {
        match self {
            Lease::Run(client) => Some(client),
            Lease::Own(..) => None,
        }
    }

    /// A worker's connection, unless it was given back.
    pub(super) fn into_own(self) -> Option<tokio_postgres::Client> {
        match self {
            Lease::Own(client, _) => client,
            Lease::Run(_) => None,
        }
    }
}

/// Runs one planned batch (several parts when `max_batch_rows` splits it).
/// A copy of a range that holds the rows its open batches recorded, no
/// more and no fewer, reads nothing ([`decide::unchanged`]): neither the
/// range nor the archive.
pub(super) async fn run_planned(
    ctx: &Ctx,
    lease: &mut Lease<'_>,
    turn: usize,
    planned: &PlannedBatch,
    bar: &indicatif::ProgressBar,
) -> Result<Ran> {
    if let Some(rows) = planned.copied_rows {
        let now = windows::count_in_range(lease.client()?, &ctx.src, &planned.range).await?;
        if decide::unchanged(planned, now) {
            tracing::debug!(
                "{}: {} row(s) as copied, not read again",
                rfc3339(planned.range.start),
                rows
            );
            return Ok(Ran {
                unchanged: Some(rows),
                ..Ran::default()
            });
        }
    }
    let mut bag = reconcile::archived_rows(ctx, lease.client()?, planned).await?;
    let limit = decide::row_limit(ctx.mode, ctx.cfg.max_batch_rows);
    let rows_now = match limit {
        Some(_) => windows::count_in_range(lease.client()?, &ctx.src, &planned.range).await?,
        None => 0,
    };
    let max_parts = decide::max_parts(limit, rows_now);
    let mut part = Part::first(planned);
    let mut out = Vec::new();
    loop {
        let span = tracing::trace_span!(
            target: crate::logging::CONTEXT,
            "batch",
            batch = %part.batch_id,
            window_start = %rfc3339(planned.range.start),
            window_end = %rfc3339(planned.range.end),
        );
        let done = run_part(ctx, lease, turn, planned, &part, limit, bag.as_mut(), bar)
            .instrument(span)
            .await
            .map_err(|e| {
                e.with_context("batch", &part.batch_id)
                    .with_context("window_start", rfc3339(planned.range.start))
                    .with_context("window_end", rfc3339(planned.range.end))
            })?;
        out.extend(done.report);
        if done.stopped {
            return Ok(Ran {
                reports: out,
                stopped: true,
                unchanged: None,
            });
        }
        let Some(next) = part.next(
            &ctx.src.source_id(),
            planned,
            limit,
            done.exhausted,
            max_parts,
        ) else {
            break;
        };
        if shutdown::stop_requested() {
            return Ok(Ran {
                reports: out,
                stopped: true,
                unchanged: None,
            });
        }
        part = next;
    }
    Ok(Ran {
        reports: out,
        ..Ran::default()
    })
}

struct PartDone {
    report: Option<BatchReport>,
    /// No row of the range is left in Postgres (as this transaction sees it).
    exhausted: bool,
    /// A stop was asked for while the part waited for its extraction slot:
    /// it did nothing.
    stopped: bool,
}

impl PartDone {
    /// A part that started nothing: a stop came first.
    fn stopped() -> Self {
        Self {
            report: None,
            exhausted: false,
            stopped: true,
        }
    }
}

/// What the extract + write stage produced.
struct Extracted {
    files: Vec<DataFile>,
    streamed: u64,
    written: u64,
    /// Rows streamed that open batches had already archived (not written).
    reconciled: u64,
    checksum: Checksum,
}

/// One part: one Postgres transaction, at most one snapshot.
#[allow(clippy::too_many_arguments)]
async fn run_part(
    ctx: &Ctx,
    lease: &mut Lease<'_>,
    turn: usize,
    planned: &PlannedBatch,
    part: &Part,
    limit: Option<u64>,
    bag: Option<&mut HashBag>,
    bar: &indicatif::ProgressBar,
) -> Result<PartDone> {
    let started = Instant::now();
    let Some(slot) = extraction_slot(ctx, turn).await? else {
        return Ok(PartDone::stopped());
    };
    let extracting = Instant::now();
    let range = planned.range;
    let client = lease.client()?;
    let drop_parts = partitions_to_drop(ctx, client, &range, limit).await?;
    let take = decide::take(ctx.mode, limit, drop_parts.is_some());
    let tx = begin(client, ctx.mode, drop_parts.as_deref()).await?;
    let query = take_query(ctx, &range, take, drop_parts.as_deref());
    // The id's query and the COPY's go out together: one round trip less.
    let (xid, out) = futures::try_join!(
        transaction_id(&tx, ctx.mode),
        extract_write(ctx, &tx, &query, &part.batch_id, bag)
    )?;
    bar.set_message(format!("{}: {} rows", part.batch_id, out.written));
    if take != Take::Select
        && let Verdict::Refused(reason) = delete_held(&tx).await?
    {
        let _ = tx.rollback().await;
        return Err(delete_refused(ctx, client, &range, reason).await);
    }
    let exhausted = match take.exhausted() {
        Some(known) => known,
        None => range_is_empty(&tx, &ctx.src, &range).await?,
    };
    let extract_write = extracting.elapsed().as_secs_f64();
    drop(slot);
    let read = (exhausted, xid, &out, drop_parts.as_deref());
    let Some((tx, rec)) = record_of(ctx, tx, planned, part, read).await? else {
        return Ok(PartDone {
            report: None,
            exhausted,
            stopped: false,
        });
    };
    // The last moment a stop may still leave this batch: nothing committed.
    shutdown::check_abort()?;
    let mut stages = Stages {
        extract_write,
        ..Stages::default()
    };
    let mark = Instant::now();
    let tx = match ctx.mode {
        BatchMode::Copy => {
            end_read(tx).await?;
            lease.release();
            None
        }
        BatchMode::Move => Some(tx),
    };
    stages.settle = mark.elapsed().as_secs_f64();
    let files = out.files.len();
    let bytes = out.files.iter().map(DataFile::file_size_in_bytes).sum();
    let mark = Instant::now();
    let extra = SummaryExtra {
        windows: planned.windows.len(),
        partition_by: ctx.cfg.partition_by,
        reconciled_rows: out.reconciled,
    };
    // A batch of one part makes one commit: then the next batch may commit.
    let last = limit.is_none();
    let (snapshot_id, committed) = commit(ctx, (turn, last), out.files, &rec, extra).await?;
    stages.commit = mark.elapsed().as_secs_f64();
    let mark = Instant::now();
    if let Err(e) = verify(&committed, &rec, &out.checksum).await {
        if let Some(tx) = tx {
            let _ = tx.rollback().await;
        }
        return Err(unverified(ctx, &rec.batch_id, e).await);
    }
    stages.verify = mark.elapsed().as_secs_f64();
    fault::point("after-verify").await;
    let parts = match tx {
        Some(tx) => {
            let mark = Instant::now();
            let drop_parts = drop_parts.as_deref().map(|p| (p, out.streamed));
            let parts = settle_postgres(ctx, tx, drop_parts, &rec).await?;
            stages.settle = mark.elapsed().as_secs_f64();
            parts
        }
        None => SettledPartitions::default(),
    };
    let report = BatchReport {
        batch_id: rec.batch_id.clone(),
        window_start: rfc3339(range.start),
        window_end: rfc3339(range.end),
        sequence: rec.sequence,
        mode: rec.mode,
        rows: rec.rows,
        reconciled_rows: out.reconciled,
        files,
        bytes,
        snapshot_id: Some(snapshot_id),
        checksum: rec.checksum.clone(),
        seconds: started.elapsed().as_secs_f64(),
        stages,
        dropped_partitions: parts.dropped,
        emptied_partitions: parts.emptied,
    };
    log_done(ctx, &report, &range);
    Ok(PartDone {
        report: Some(report),
        exhausted,
        stopped: false,
    })
}

/// The record of a part that read `out` (whether that `exhausted` its
/// range, the transaction id, the partitions it may drop), with its open
/// transaction; `None` when it records no batch ([`decide::settle`]): its
/// transaction then ended as the decision says.
async fn record_of<'t>(
    ctx: &Ctx,
    tx: tokio_postgres::Transaction<'t>,
    planned: &PlannedBatch,
    part: &Part,
    (exhausted, xid, out, drop_parts): (bool, Option<u64>, &Extracted, Option<&[Partition]>),
) -> Result<Option<(tokio_postgres::Transaction<'t>, BatchRecord)>> {
    let settle = decide::settle(
        planned,
        ctx.mode,
        exhausted,
        out.streamed,
        out.written,
        drop_parts.is_some(),
    );
    let settles = match settle {
        Settle::Skip {
            commit_postgres,
            drop_partitions,
        } => {
            let parts = drop_parts.filter(|_| drop_partitions);
            end_skipped(ctx, tx, parts.map(|p| (p, out.streamed)), commit_postgres).await?;
            return Ok(None);
        }
        Settle::Record { settles } => settles,
    };
    let rec = BatchRecord {
        pg_history: xid.and(ctx.pg_history.clone()),
        ..part.record(
            planned,
            ctx.mode,
            xid,
            settles,
            out.written,
            out.checksum.hex(),
        )
    };
    Ok(Some((tx, rec)))
}

/// Ends a copy's transaction once its rows are read: it changed nothing,
/// and its snapshot is not needed for the commit and read-back.
async fn end_read(tx: tokio_postgres::Transaction<'_>) -> Result<()> {
    tx.commit()
        .await
        .map_err(|e| Error::postgres("cannot end the copy's read transaction", e))
}

/// Ends the transaction of a part that records no batch: drops `parts`
/// first (every row in them, the count given, was already archived), then
/// commits, or rolls back when nothing of it is to be kept.
async fn end_skipped(
    ctx: &Ctx,
    tx: tokio_postgres::Transaction<'_>,
    parts: Option<(&[Partition], u64)>,
    commit: bool,
) -> Result<()> {
    if let Some((parts, rows)) = parts {
        drop_archived(ctx, &tx, parts, rows).await?;
    }
    let end = match commit {
        true => tx.commit().await,
        false => tx.rollback().await,
    };
    end.map_err(|e| Error::postgres("cannot end the batch transaction", e))
}

/// The partitions that tile the range, when the batch may export them whole
/// and drop them after verification instead of deleting their rows.
async fn partitions_to_drop(
    ctx: &Ctx,
    client: &tokio_postgres::Client,
    range: &Window,
    limit: Option<u64>,
) -> Result<Option<Vec<Partition>>> {
    let may = decide::may_drop_partitions(
        ctx.mode,
        limit,
        ctx.cfg.drop_partitions,
        ctx.src.filter_sql.is_some(),
    );
    if !may {
        return Ok(None);
    }
    partitions::tiling(client, &ctx.src, range).await
}

/// Begins the part's transaction: repeatable read for a copy (one
/// consistent snapshot), read committed for a move (its `DELETE` sees rows
/// committed meanwhile).  Partitions to drop are locked `EXCLUSIVE` (reads
/// go on, writes wait for us).
async fn begin<'c>(
    client: &'c mut tokio_postgres::Client,
    mode: BatchMode,
    drop_parts: Option<&[Partition]>,
) -> Result<tokio_postgres::Transaction<'c>> {
    let isolation = match mode {
        BatchMode::Copy => tokio_postgres::IsolationLevel::RepeatableRead,
        BatchMode::Move => tokio_postgres::IsolationLevel::ReadCommitted,
    };
    let tx = client
        .build_transaction()
        .isolation_level(isolation)
        .start()
        .await
        .map_err(|e| Error::postgres("cannot begin the batch transaction", e))?;
    if let Some(parts) = drop_parts {
        tx.batch_execute(&format!(
            "LOCK TABLE {} IN EXCLUSIVE MODE",
            partition_names(parts)
        ))
        .await
        .map_err(|e| Error::postgres("cannot lock the partitions to archive", e))?;
    }
    Ok(tx)
}

/// A move's transaction id (what its ledger record names), `None` for a
/// copy.  A simple query: one message, no statement to prepare.
async fn transaction_id(
    tx: &tokio_postgres::Transaction<'_>,
    mode: BatchMode,
) -> Result<Option<u64>> {
    if mode == BatchMode::Copy {
        return Ok(None);
    }
    let failed = |what: String| Error::internal(format!("cannot read the transaction id: {what}"));
    let messages = tx
        .simple_query("SELECT txid_current()")
        .await
        .map_err(|e| Error::postgres("cannot read the transaction id", e))?;
    let text = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0),
            _ => None,
        })
        .ok_or_else(|| failed("no row".into()))?;
    text.parse::<u64>()
        .map(Some)
        .map_err(|e| failed(format!("{text:?}: {e}")))
}

/// The statement whose rows the part streams (and, for a move, deletes).
/// Partitions to drop are read directly, not through their parent: a lock
/// on the parent would make another batch's `DROP` (which locks the parent)
/// wait for this transaction, and its own `DROP` wait for that one.  They
/// are read whole, without the range's predicate: their bounds lie inside
/// the range ([`partitions::tiling`]) and Postgres keeps every row inside
/// its partition's bounds, so the predicate would only cost a comparison
/// per row — and what is read is then exactly what the `DROP` removes.
fn take_query(ctx: &Ctx, range: &Window, take: Take, drop_parts: Option<&[Partition]>) -> String {
    let src = &ctx.src;
    let t = src.qualified();
    let pred = windows::range_predicate(src, range);
    let cols = ctx.table.select_list();
    match (take, drop_parts) {
        (Take::Select, Some(parts)) => parts
            .iter()
            .map(|p| format!("SELECT {cols} FROM {}", p.name))
            .collect::<Vec<_>>()
            .join(" UNION ALL "),
        (Take::Select, None) => format!("SELECT {cols} FROM {t} WHERE {pred}"),
        (Take::DeleteAll, _) => format!("DELETE FROM {t} WHERE {pred} RETURNING {cols}"),
        (Take::DeleteFirst(n), _) => {
            let time = crate::filter::quote_ident(&src.time_column().name);
            if src.relkind == 'p' {
                format!(
                    "DELETE FROM {t} WHERE (tableoid, ctid) IN (SELECT tableoid, ctid FROM {t} WHERE {pred} ORDER BY {time} LIMIT {n}) RETURNING {cols}"
                )
            } else {
                format!(
                    "DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE {pred} ORDER BY {time} LIMIT {n})) AND {pred} RETURNING {cols}"
                )
            }
        }
    }
}

/// One of the table's `parallel_windows` extraction slots and its share of
/// the run's memory ([`super::memory`]), held while a batch reads (and
/// deletes) its rows and writes them.  Batches queue for both in plan order
/// (a batch's later parts, and a batch whose turn passed, at once).
/// `None` when a stop was asked for meanwhile: the part starts nothing.
async fn extraction_slot(ctx: &Ctx, turn: usize) -> Result<Option<Slot<'_>>> {
    ctx.extract_turns.wait(turn).await;
    let slot = async {
        let slot = ctx.extracting.acquire().await;
        let slot = slot.map_err(|_| Error::internal("the extraction slots were closed"))?;
        let memory = ctx.memory.reserve(ctx.row_width.bytes()).await?;
        if shutdown::stop_requested() {
            return Ok(None);
        }
        let now = ctx.extracting_now.fetch_add(1, Ordering::Relaxed) + 1;
        ctx.extracting_peak.fetch_max(now, Ordering::Relaxed);
        Ok(Some(Slot {
            ctx,
            _slot: slot,
            _memory: memory,
        }))
    }
    .await;
    ctx.extract_turns.finish(turn);
    slot
}

/// An extraction slot and its memory, given back when dropped.
struct Slot<'a> {
    ctx: &'a Ctx,
    _slot: tokio::sync::SemaphorePermit<'a>,
    _memory: tokio::sync::SemaphorePermit<'a>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.ctx.extracting_now.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether Postgres lets the batch's `DELETE … RETURNING` commit.
enum Verdict {
    Holds,
    /// The transaction is aborted: Postgres's reason when it gave one.
    Refused(Option<String>),
}

/// Whether the batch's `DELETE … RETURNING` holds to its commit, asked
/// before anything is committed to the archive.  Postgres runs a
/// statement's AFTER triggers — the checks of foreign keys that reference
/// the rows (`ON DELETE NO ACTION`/`RESTRICT`), the table's own triggers —
/// once the `COPY` has ended: an error there aborts the transaction without
/// the `COPY` reporting it.  Deferred constraints (a `DEFERRABLE INITIALLY
/// DEFERRED` foreign key, a deferred constraint trigger) wait for `COMMIT`,
/// which would then refuse a batch already archived — every later run
/// archiving a marker that settles it and failing again.  `SET CONSTRAINTS
/// ALL IMMEDIATE` runs those checks now and tells the aborted transaction
/// too: one round trip.  A refusal is a violated constraint (SQLSTATE class
/// 23) or an error a trigger raised (class P0); anything else — a timeout,
/// a lost connection — is an error of its own.
async fn delete_held(tx: &tokio_postgres::Transaction<'_>) -> Result<Verdict> {
    let Err(e) = tx.simple_query("SET CONSTRAINTS ALL IMMEDIATE").await else {
        return Ok(Verdict::Holds);
    };
    let code = e.as_db_error().map(|db| db.code().code());
    match code {
        Some("25P02") => Ok(Verdict::Refused(None)),
        Some(c) if c.starts_with("23") || c.starts_with("P0") => Ok(Verdict::Refused(
            e.as_db_error().map(|db| db.message().to_string()),
        )),
        _ => Err(Error::postgres(
            "cannot check the batch's deferred constraints",
            e,
        )),
    }
}

/// The error of a batch whose `DELETE` Postgres refused before its commit
/// (its transaction rolled back): Postgres's `reason` when it gave one (a
/// deferred check), else the foreign keys that hold the rows, or the
/// table's triggers, as the catalog lists them now (an aborted statement's
/// own error text is not reported by Postgres).
async fn delete_refused(
    ctx: &Ctx,
    client: &tokio_postgres::Client,
    range: &Window,
    reason: Option<String>,
) -> Error {
    let cause = match reason {
        Some(reason) => reason,
        None => refusal_in_catalog(ctx, client).await,
    };
    Error::new(
        ErrorKind::Postgres,
        format!(
            "Postgres refused to delete the rows of batch [{}, {}) at the end of its DELETE \
             ({cause}); the batch was not archived and its rows stay",
            rfc3339(range.start),
            rfc3339(range.end)
        ),
    )
    .with_hint(
        "run the same DELETE in psql to see Postgres's reason; rows another table still \
         references must be let go first (archive that table before this one, or change its \
         key's ON DELETE), or archive with --no-delete; `permafrost check` lists the keys and \
         triggers",
    )
}

/// What the catalog says may have refused a `DELETE` of the table: the
/// foreign keys that hold its rows, else its triggers.
async fn refusal_in_catalog(ctx: &Ctx, client: &tokio_postgres::Client) -> String {
    let fx = source::catalog::delete_effects(client, ctx.src.oid)
        .await
        .unwrap_or_default();
    let keys: Vec<String> = fx
        .referenced_by
        .iter()
        .filter(|k| k.holds())
        .map(|k| format!("foreign key `{}` of {}", k.constraint, k.table))
        .collect();
    let triggers: Vec<String> = fx.triggers.iter().map(|(n, _)| format!("`{n}`")).collect();
    match (keys.is_empty(), triggers.is_empty()) {
        (false, _) => format!("{} references some of them", keys.join(", ")),
        (true, false) => format!(
            "a trigger on the table raised an error: {}",
            triggers.join(", ")
        ),
        (true, true) => "a foreign key that references them, or a trigger on the table".into(),
    }
}

/// The error of a batch's `COPY` that Postgres refused to start.  Two
/// refusals stop every deleting batch of a table and want the table
/// changed (or `--no-delete`): a rule on DELETE, which `COPY` cannot run,
/// and a published table without a replica identity.
fn copy_refused(query: &str, e: tokio_postgres::Error) -> Error {
    use tokio_postgres::error::SqlState as S;
    let code = e.code().cloned();
    let err = Error::postgres("cannot start COPY", e);
    if !query.starts_with("DELETE") {
        return err;
    }
    match code {
        Some(c) if c == S::FEATURE_NOT_SUPPORTED => err.replace_hint(
            "a rule on DELETE rewrites the batch's `DELETE … RETURNING`, which COPY cannot run: \
             drop or disable the rule (`ALTER TABLE … DISABLE RULE …`), or archive with \
             --no-delete",
        ),
        Some(c) if c == S::OBJECT_NOT_IN_PREREQUISITE_STATE => err.replace_hint(
            "a publication sends the table's deletes to subscribers, which needs a replica \
             identity: `ALTER TABLE … REPLICA IDENTITY FULL` (or a primary key), publish it \
             without deletes, or archive with --no-delete",
        ),
        _ => err,
    }
}

/// Streams `query` out of Postgres (decoded and hashed on its own task)
/// while this task drops rows already archived and writes the rest to data
/// files.  Checks that every row streamed is either written or reconciled.
async fn extract_write(
    ctx: &Ctx,
    tx: &tokio_postgres::Transaction<'_>,
    query: &str,
    batch_id: &str,
    mut bag: Option<&mut HashBag>,
) -> Result<Extracted> {
    let stream = tx
        .copy_out(format!("COPY ({query}) TO STDOUT (FORMAT binary)").as_str())
        .await
        .map_err(|e| copy_refused(query, e))?;
    let mut rows = extract::CopyRows::spawn(stream, decoder(ctx)?);
    let prefix = format!("{batch_id}-{}", uuid::Uuid::new_v4().simple());
    let cfg = &ctx.cfg;
    let (io, _) = ctx.storage.io().await?;
    let mut writer = lake::write::BatchWriter::new(
        &ctx.table,
        io,
        &prefix,
        cfg.target_file_size,
        lake::write::ParquetFormat::of(cfg),
    )?;
    let mut checksum = Checksum::default();
    let mut reconciled = 0u64;
    let mut write_err = None;
    let mut first = true;
    while let Some((batch, hashes)) = rows.next().await {
        if std::mem::take(&mut first) {
            fault::point("after-extract").await;
        }
        let step = async {
            shutdown::check_abort()?;
            let keep = decide::keep_unarchived(bag.as_deref_mut(), &hashes)?;
            let streamed = hashes.len();
            let (batch, hashes) = match &keep {
                Some(keep) => keep_rows(batch, hashes, keep)?,
                None => (batch, hashes),
            };
            reconciled += (streamed - hashes.len()) as u64;
            checksum.add_hashes(&hashes);
            writer.write(batch).await
        };
        if let Err(e) = step.await {
            write_err = Some(e);
            break;
        }
    }
    let decoded = rows.taken_bytes();
    let streamed = rows.finish().await?;
    ctx.row_width.saw(streamed, decoded);
    if let Some(e) = write_err {
        return Err(e);
    }
    fault::point("during-delete").await;
    let (files, written) = writer.close().await?;
    fault::point("after-write").await;
    if written != checksum.rows || streamed != written + reconciled {
        return Err(Error::internal(format!(
            "row accounting mismatch: streamed {streamed}, written {written}, reconciled {reconciled}, hashed {}",
            checksum.rows
        )));
    }
    Ok(Extracted {
        files,
        streamed,
        written,
        reconciled,
        checksum,
    })
}

/// The COPY decoder of the archive table's columns, errors naming the
/// source column and its Postgres type.
fn decoder(ctx: &Ctx) -> Result<extract::CopyDecoder> {
    let labels = ctx
        .table
        .columns
        .iter()
        .map(|c| {
            let ty = ctx
                .src
                .columns
                .iter()
                .find(|s| &s.name == c)
                .map(|s| s.pg_type.as_str())
                .unwrap_or("?");
            format!("`{c}` ({ty})")
        })
        .collect();
    extract::CopyDecoder::new(ctx.table.arrow_schema.clone(), labels, &ctx.table.kinds)
}

/// The rows of `batch` (and their hashes) whose `keep` is true.
fn keep_rows(
    batch: arrow_array::RecordBatch,
    hashes: Vec<u128>,
    keep: &[bool],
) -> Result<(arrow_array::RecordBatch, Vec<u128>)> {
    if keep.iter().all(|k| *k) {
        return Ok((batch, hashes));
    }
    let mask = BooleanArray::from(keep.to_vec());
    let batch = arrow_select::filter::filter_record_batch(&batch, &mask)
        .map_err(|e| Error::arrow("cannot filter reconciled rows", e))?;
    let hashes = hashes
        .into_iter()
        .zip(keep)
        .filter(|(_, k)| **k)
        .map(|(h, _)| h)
        .collect();
    Ok((batch, hashes))
}

/// Whether the range holds no row, as the part's transaction sees it.
async fn range_is_empty(
    tx: &tokio_postgres::Transaction<'_>,
    src: &source::SourceTable,
    range: &Window,
) -> Result<bool> {
    let sql = format!(
        "SELECT NOT EXISTS (SELECT 1 FROM {} WHERE {})",
        src.qualified(),
        windows::range_predicate(src, range)
    );
    Ok(tx
        .query_typed_one(sql.as_str(), &[])
        .await
        .map_err(|e| Error::postgres("cannot check the range is empty", e))?
        .get(0))
}

/// Commits the part's snapshot (and the ledger with it) through the run's
/// one committer, in plan order (batch `turn`; `last`: its last commit, the
/// turn passes on).  The commit is prepared first ([`prepare`]) — on the
/// table the previous batch's commit leaves, while that commit may still
/// be on its way to the catalog — and sent once the committer is free
/// ([`send`]).  Returns the snapshot id and the table as the catalog serves
/// it after the commit (verification reads that, not memory).
async fn commit(
    ctx: &Ctx,
    (turn, last): (usize, bool),
    files: Vec<DataFile>,
    rec: &BatchRecord,
    extra: SummaryExtra,
) -> Result<(i64, iceberg::table::Table)> {
    ctx.turns.wait(turn).await;
    let mut stage = ctx.stage.lock().await;
    let (staged, known, committer) = prepare(ctx, &mut stage, &files, rec, extra).await?;
    // Queued at the committer behind the commit in flight: the next batch
    // may prepare on this one.
    drop(stage);
    if last {
        ctx.turns.finish(turn);
    }
    let sent = send(ctx, committer, staged, &known, files, rec, extra).await;
    if sent.is_err() {
        ctx.epoch.fetch_add(1, Ordering::SeqCst);
        return sent;
    }
    fault::point("after-commit").await;
    sent
}

/// Prepares the part's commit on the stage's head (the table the commit
/// before it leaves, [`super::Stage::head`]), or — at the start, or when
/// that commit did not land as prepared — on the committer's table, once
/// the commit in flight is done.  Returns the prepared commit, the batches
/// known with it, and the committer, held: the commit is next to go out.
async fn prepare<'c>(
    ctx: &'c Ctx,
    stage: &mut super::Stage,
    files: &[DataFile],
    rec: &BatchRecord,
    extra: SummaryExtra,
) -> Result<(
    lake::commit::Staged,
    HashSet<String>,
    tokio::sync::MutexGuard<'c, super::Committer>,
)> {
    let epoch = ctx.epoch.load(Ordering::SeqCst);
    let (mut head, epoch, mut generation, held) = match stage.head.take() {
        Some((head, e)) if e == epoch => (head, epoch, stage.io_generation, None),
        _ => {
            let mut committer = ctx.committer.lock().await;
            committer.refresh(ctx).await?;
            let head = committer.table.clone();
            let generation = committer.io_generation;
            (
                head,
                ctx.epoch.load(Ordering::SeqCst),
                generation,
                Some(committer),
            )
        }
    };
    ctx.storage.refresh(&mut head, &mut generation).await?;
    stage.io_generation = generation;
    let source_id = ctx.src.source_id();
    let settled = ctx.settled();
    let update = lake::commit::LedgerUpdate {
        source: &source_id,
        settled: &settled,
        known: &stage.known,
    };
    let staged = lake::commit::stage_batch(&head, files.to_vec(), rec, extra, &update).await?;
    stage.known.insert(rec.batch_id.clone());
    stage.head = Some((staged.table.clone(), epoch));
    let committer = match held {
        Some(committer) => committer,
        None => {
            fault::point("prepared-ahead").await;
            ctx.committer.lock().await
        }
    };
    Ok((staged, stage.known.clone(), committer))
}

/// Sends the prepared commit onto the committer's table (prepared again
/// there if it was prepared on a table that did not come to be; see
/// [`lake::commit::commit_batch`]), and keeps the table the catalog
/// answers with as the next commit's.
async fn send(
    ctx: &Ctx,
    mut committer: tokio::sync::MutexGuard<'_, super::Committer>,
    staged: lake::commit::Staged,
    known: &HashSet<String>,
    files: Vec<DataFile>,
    rec: &BatchRecord,
    extra: SummaryExtra,
) -> Result<(i64, iceberg::table::Table)> {
    committer.refresh(ctx).await?;
    let super::Committer {
        table,
        io_generation,
        ..
    } = &mut *committer;
    ctx.storage.refresh(table, io_generation).await?;
    fault::point("before-send").await;
    let prepared = staged.snapshot_id;
    let source_id = ctx.src.source_id();
    let settled = ctx.settled();
    let update = lake::commit::LedgerUpdate {
        source: &source_id,
        settled: &settled,
        known,
    };
    let committed = lake::commit::commit_batch(
        &ctx.catalog,
        &committer.table,
        Some(staged),
        files,
        rec,
        extra,
        update,
    )
    .await;
    committer.stale = committed.is_err();
    let (snapshot_id, committed) = committed?;
    if snapshot_id != prepared {
        // Prepared again: the next batch's head was this one's first try.
        ctx.epoch.fetch_add(1, Ordering::SeqCst);
    }
    committer.table = committed.clone();
    Ok((snapshot_id, committed))
}

/// The error of a committed batch that was not verified (its Postgres
/// transaction is rolled back: nothing deleted).  Only a verdict — the
/// batch read back differs, or is not in the table — blocks its windows
/// until `archive --force`.  A batch that could not be read back (storage
/// or network down) is no verdict: it is unsettled, and the next run reads
/// it back again to settle it.
async fn unverified(ctx: &Ctx, batch_id: &str, e: Error) -> Error {
    if e.kind() == ErrorKind::Verification {
        return mark_failed(ctx, batch_id, e).await;
    }
    if e.hint().is_some() {
        return e;
    }
    e.with_hint("the rows stay in Postgres; the next run reads the batch back again")
}

/// Records that the batch failed verification (best effort) and returns
/// the error to report.
async fn mark_failed(ctx: &Ctx, batch_id: &str, e: Error) -> Error {
    let reason = e.message().to_string();
    let _committing = ctx.committer.lock().await;
    if let Err(me) =
        lake::commit::mark_failed(ctx.catalog.iceberg(), &ctx.table.ident, batch_id, &reason).await
    {
        tracing::error!("cannot record the failure of batch {batch_id}: {me}");
    }
    e.with_hint("the rows stay in Postgres; the window is blocked until `archive --force`")
}

/// The partitions a batch dropped, or emptied when their `DROP` was held
/// up or refused.
#[derive(Default)]
struct SettledPartitions {
    dropped: Vec<String>,
    emptied: Vec<String>,
}

/// The verified part's Postgres commit (dropping its partitions first,
/// which hold the rows counted beside them): only now do its rows leave
/// Postgres.  Then the batches it settled are settled for the rest of the
/// run, and their failure marks are cleared.
async fn settle_postgres(
    ctx: &Ctx,
    tx: tokio_postgres::Transaction<'_>,
    drop_parts: Option<(&[Partition], u64)>,
    rec: &BatchRecord,
) -> Result<SettledPartitions> {
    let mut ended = SettledPartitions::default();
    if let Some((parts, rows)) = drop_parts {
        tracing::info!(
            "{}: dropping partition(s) {} of batch {}",
            ctx.cfg.source_name(),
            partition_names(parts),
            rec.batch_id
        );
        let names = parts.iter().map(|p| p.name.clone()).collect();
        match drop_archived(ctx, &tx, parts, rows).await? {
            PartitionsEnd::Dropped => ended.dropped = names,
            PartitionsEnd::Emptied => ended.emptied = names,
        }
    }
    tx.commit()
        .await
        .map_err(|e| Error::postgres("cannot commit the Postgres transaction (the batch is archived; the next run settles it)", e))?;
    fault::point("after-pg-commit").await;
    ctx.settle(decide::settled_by(rec));
    if rec.reconciles.is_empty() {
        return Ok(ended);
    }
    let mut committer = ctx.committer.lock().await;
    let failed = ledger::read::failed_batches(&committer.table);
    let resolved: Vec<String> = rec
        .reconciles
        .iter()
        .filter(|id| failed.contains_key(*id))
        .cloned()
        .collect();
    if !resolved.is_empty() {
        lake::commit::clear_failed(ctx.catalog.iceberg(), &ctx.table.ident, &resolved).await?;
        committer.table = lake::commit::reload(ctx.catalog.iceberg(), &ctx.table.ident).await?;
    }
    Ok(ended)
}

fn log_done(ctx: &Ctx, r: &BatchReport, range: &Window) {
    tracing::info!(
        "{}: batch {} {} archived {} row(s){} in {:.1}s",
        ctx.cfg.source_name(),
        r.batch_id,
        range,
        r.rows,
        if r.reconciled_rows > 0 {
            format!(", settled {} already archived", r.reconciled_rows)
        } else {
            String::new()
        },
        r.seconds
    );
}

fn partition_names(parts: &[Partition]) -> String {
    parts
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Drops archived partitions inside the batch transaction; their rows
/// leave Postgres at its commit.  A partition's `DROP` locks the parent,
/// and every reader and writer of the parent queues behind a `DROP` that
/// waits — so it waits at most `drop_lock_timeout`.  When that runs out
/// (a long query on the parent), or the `DROP` is refused otherwise, the
/// partitions' rows are deleted instead and the partitions stay, empty:
/// the batch has held them locked against writes since it began, so they
/// hold exactly the `rows` it archived, which the `DELETE`s must count.
/// Only when that fails too does the batch fail (it is archived: the next
/// run settles it).
async fn drop_archived(
    ctx: &Ctx,
    tx: &tokio_postgres::Transaction<'_>,
    parts: &[Partition],
    rows: u64,
) -> Result<PartitionsEnd> {
    let names = partition_names(parts);
    let wait = source::bounded_lock_wait(ctx.cfg.drop_lock_timeout);
    let dropped = tx
        .batch_execute(&format!(
            "SAVEPOINT permafrost_drop; {wait}DROP TABLE {names}"
        ))
        .await;
    let Err(e) = dropped else {
        return Ok(PartitionsEnd::Dropped);
    };
    let Some(db) = e.as_db_error() else {
        return Err(Error::postgres(
            "cannot drop the archived partitions (the batch is archived; the next run settles it)",
            e,
        ));
    };
    let advice = match db.code() == &tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE {
        true => "a session reads or locks the table: drop them when it is quiet",
        false => "drop them once that is resolved",
    };
    tracing::warn!(
        "{}: partition(s) {names} not dropped ({}); their rows are deleted instead and the \
         partitions stay, empty ({advice})",
        ctx.cfg.source_name(),
        db.message()
    );
    empty_archived(tx, parts, rows).await?;
    Ok(PartitionsEnd::Emptied)
}

/// Drops the partitions earlier batches emptied when their `DROP` was held
/// up ([`partitions::EMPTIED_COMMENT`]) and that are still empty — late
/// rows make one a pending window's again, archived and dropped by a batch
/// — in one transaction that locks them against writes and waits at most
/// `drop_lock_timeout`.  Held up again, they wait for the next run; no
/// failure here fails the run.  Returns the partitions dropped.
pub(super) async fn drop_emptied(
    client: &mut tokio_postgres::Client,
    t: &crate::config::TableConfig,
    src: &source::SourceTable,
) -> Vec<String> {
    match try_drop_emptied(client, t, src).await {
        Ok(names) => {
            if !names.is_empty() {
                tracing::info!(
                    "{}: dropped partition(s) {} that earlier batches had emptied",
                    t.source_name(),
                    names.join(", ")
                );
            }
            names
        }
        Err(e) if e.is_pg_timeout() => {
            tracing::info!(
                "{}: the partitions earlier batches emptied stay for now (a session holds them)",
                t.source_name()
            );
            vec![]
        }
        Err(e) => {
            tracing::warn!(
                "{}: the partitions earlier batches emptied stay for now: {e}",
                t.source_name()
            );
            vec![]
        }
    }
}

/// [`drop_emptied`]'s transaction: lock the marked partitions, keep those
/// still empty, drop them.
async fn try_drop_emptied(
    client: &mut tokio_postgres::Client,
    t: &crate::config::TableConfig,
    src: &source::SourceTable,
) -> Result<Vec<String>> {
    let names = partitions::emptied(client, &src.qualified()).await?;
    if names.is_empty() {
        return Ok(names);
    }
    let tx = client
        .transaction()
        .await
        .map_err(|e| Error::postgres("cannot begin a transaction", e))?;
    let wait = source::bounded_lock_wait(t.drop_lock_timeout);
    tx.batch_execute(&format!(
        "{wait}LOCK TABLE {} IN EXCLUSIVE MODE",
        names.join(", ")
    ))
    .await
    .map_err(|e| Error::postgres("cannot lock the emptied partitions", e))?;
    let probes = names.iter().map(|n| {
        let tx = &tx;
        async move {
            let q = format!("SELECT NOT EXISTS (SELECT 1 FROM {n})");
            let row = tx.query_one(q.as_str(), &[]).await;
            row.map(|r| r.get::<_, bool>(0).then(|| n.clone()))
        }
    });
    let empty: Vec<String> = futures::future::try_join_all(probes)
        .await
        .map_err(|e| Error::postgres("cannot read the emptied partitions", e))?
        .into_iter()
        .flatten()
        .collect();
    if !empty.is_empty() {
        tx.batch_execute(&format!("DROP TABLE {}", empty.join(", ")))
            .await
            .map_err(|e| Error::postgres("cannot drop the emptied partitions", e))?;
    }
    tx.commit()
        .await
        .map_err(|e| Error::postgres("cannot commit the drop", e))?;
    Ok(empty)
}

/// How a batch's partitions left Postgres.
enum PartitionsEnd {
    Dropped,
    /// Their `DROP` was held up or refused: their rows were deleted.
    Emptied,
}

/// Deletes the rows of `parts` after a refused `DROP` (rolled back to its
/// savepoint): the batch's own locks are all it needs, so nothing waits.
/// They must be the `rows` the batch archived.
async fn empty_archived(
    tx: &tokio_postgres::Transaction<'_>,
    parts: &[Partition],
    rows: u64,
) -> Result<()> {
    let deletes: String = parts
        .iter()
        .map(|p| {
            format!(
                "; DELETE FROM {0}; COMMENT ON TABLE {0} IS '{1}'",
                p.name,
                partitions::EMPTIED_COMMENT
            )
        })
        .collect();
    let done = tx
        .simple_query(&format!("ROLLBACK TO SAVEPOINT permafrost_drop{deletes}"))
        .await
        .map_err(|e| {
            Error::postgres(
                "cannot delete the archived partitions' rows (the batch is archived; the next run settles it)",
                e,
            )
        })?;
    let deleted: u64 = done
        .iter()
        .map(|m| match m {
            tokio_postgres::SimpleQueryMessage::CommandComplete(n) => *n,
            _ => 0,
        })
        .sum();
    if deleted != rows {
        return Err(Error::internal(format!(
            "the archived partitions {} held {deleted} row(s), not the {rows} archived; nothing \
             was deleted (the batch is archived: the next run settles it)",
            partition_names(parts)
        )));
    }
    Ok(())
}

/// Reads the committed batch back from the catalog's table (not from
/// memory) and compares count and checksum.
async fn verify(
    table: &iceberg::table::Table,
    rec: &BatchRecord,
    expected: &Checksum,
) -> Result<()> {
    let (batch_id, rows) = (&rec.batch_id, rec.rows);
    let snap = ledger::read::find_batch(table, batch_id).ok_or_else(|| {
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
