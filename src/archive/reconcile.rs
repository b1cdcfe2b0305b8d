//! Rows a batch must not archive again: those of open batches overlapping
//! its range (a crash left them committed but unsettled) and those of
//! settled batches that a restore brought back to Postgres.  Their hashes
//! form the bag the batch filters its stream with
//! ([`crate::plan::batch::keep_unarchived`]).

use std::collections::{BTreeMap, HashSet};

use crate::bag::{Collector, HashBag, Multiset};
use crate::error::{Error, ErrorKind, Result};
use crate::lake;
use crate::ledger::keys;
use crate::ledger::read::{find_batch, read_ledger_full};
use crate::plan::PlannedBatch;
use crate::plan::window::{Micros, Window, rfc3339};
use crate::source::{extract, windows};

use super::Ctx;

/// The hashes of the rows the batch's range holds that are already
/// archived (see the module doc); `None` when there are none.
pub(super) async fn archived_rows(
    ctx: &Ctx,
    client: &tokio_postgres::Client,
    planned: &PlannedBatch,
) -> Result<Option<HashBag>> {
    let mut archived = Vec::new();
    if !planned.reconcile.is_empty() {
        archived = open_rows(ctx, &planned.reconcile).await?;
        tracing::info!(
            "{}: reconciling {} archived row(s) of unsettled batch(es) {}",
            ctx.cfg.source_name(),
            archived.iter().map(Multiset::len).sum::<usize>(),
            planned.reconcile.join(", ")
        );
    }
    if !planned.restorable.is_empty() {
        archived.extend(restored_rows(ctx, client, planned).await?);
    }
    let bag = HashBag::from_parts(archived);
    Ok((!bag.is_empty()).then_some(bag))
}

/// Row hashes of the open batches `ids`, a multiset per batch: from their
/// snapshots, or — when a snapshot was expired — from the files the durable
/// ledger recorded.  A batch whose rows cannot be read is an error, never
/// skipped: skipping would archive its rows a second time.
async fn open_rows(ctx: &Ctx, ids: &[String]) -> Result<Vec<Multiset>> {
    let ledger = read_ledger_full(&ctx.table.table, &ctx.src.source_id())?;
    let mut out = Vec::new();
    for id in ids {
        let table = &ctx.storage.current(&ctx.table.table).await?;
        if let Some(snap) = find_batch(table, id) {
            out.push(lake::readback::row_hashes(table, &snap).await?);
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
        out.push(hashes);
    }
    Ok(out)
}

/// Hashes of the rows of settled batches overlapping the range whose whole
/// content is in Postgres again (a restore brought them back): those rows
/// are already archived.  A batch counts only when every one of its rows is
/// present (as a multiset), so new rows that merely equal some archived row
/// are still archived.  A multiset per batch (or per expired range).
async fn restored_rows(
    ctx: &Ctx,
    client: &tokio_postgres::Client,
    planned: &PlannedBatch,
) -> Result<Vec<Multiset>> {
    let src = &ctx.src;
    let pred = windows::range_predicate(src, &planned.range);
    let query = format!(
        "SELECT {} FROM {} WHERE {pred}",
        ctx.table.select_list(),
        src.qualified()
    );
    let stream = client
        .copy_out(format!("COPY ({query}) TO STDOUT (FORMAT binary)").as_str())
        .await
        .map_err(|e| Error::postgres("cannot start COPY", e))?;
    let labels = ctx.table.columns.iter().map(|c| format!("`{c}`")).collect();
    let decoder =
        extract::CopyDecoder::new(ctx.table.arrow_schema.clone(), labels, &ctx.table.kinds)?;
    let mut rows = extract::CopyRows::spawn(stream, decoder);
    // The range's rows in Postgres, as a multiset (spilled to disk when
    // there are millions).
    let mut in_range = Collector::new(0);
    while let Some((_, hashes)) = rows.next().await {
        in_range.extend(&hashes)?;
    }
    rows.finish().await?;
    let mut present = in_range.finish()?;
    let in_pg = present.len() as u64;
    if in_pg == 0 {
        return Ok(vec![]);
    }
    let ledger = read_ledger_full(&ctx.table.table, &src.source_id())?;
    let mut out = Vec::new();
    // Batches whose snapshot was expired (or rolled up), by range: their
    // rows are the live rows of the range's partitions (all batches of those
    // windows together).
    let mut expired: BTreeMap<(Micros, Micros), Vec<&str>> = BTreeMap::new();
    let mut live = None;
    for id in &planned.restorable {
        // The plan's table, read with the storage keys of the moment (a run
        // may outlive the keys a catalog vended with its first load).
        let table = &ctx.storage.current(&ctx.table.table).await?;
        let Some(snap) = intact_snapshot(table, id, &mut live).await? else {
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
            .get(keys::ROWS)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        if rows == 0 || rows > in_pg {
            continue;
        }
        let hashes = lake::readback::row_hashes(table, &snap).await?;
        if present.take_all(&hashes)? {
            tracing::info!(
                "{}: the {} row(s) of batch {id} are back in Postgres (restored); they are settled, not archived again",
                ctx.cfg.source_name(),
                hashes.len()
            );
            out.push(hashes);
        }
    }
    for ((start, end), ids) in expired {
        let range = Window { start, end };
        let table = &ctx.storage.current(&ctx.table.table).await?;
        let hashes =
            lake::readback::row_hashes_in_windows(table, ctx.cfg.partition_by, &range).await?;
        if !hashes.is_empty() && present.take_all(&hashes)? {
            tracing::info!(
                "{}: the {} archived row(s) of {} (batches {}, snapshots expired) are back in Postgres (restored); they are settled, not archived again",
                ctx.cfg.source_name(),
                hashes.len(),
                rfc3339(start),
                ids.join(", ")
            );
            out.push(hashes);
        }
    }
    Ok(out)
}

/// The snapshot of batch `id` when it is retained and the files it added
/// are all still live, with no row-level delete applying to them: they hold
/// its rows as the archive has them now.  `None` when it was expired, a
/// compaction or another engine's overwrite rewrote its files, or another
/// engine deleted rows merge-on-read (the rows a restore brought back are
/// then those the table holds now, which may be fewer); its rows are then
/// recognised by its windows' live rows.  `live`: the current snapshot's
/// data files without row-level deletes, read on first need.
async fn intact_snapshot(
    table: &iceberg::table::Table,
    id: &str,
    live: &mut Option<HashSet<String>>,
) -> Result<Option<iceberg::spec::SnapshotRef>> {
    let Some(snap) = find_batch(table, id) else {
        return Ok(None);
    };
    // Only appends (and manifest-only rewrites) since: its files are as it
    // wrote them, nothing to read to know it.
    let later = crate::ledger::read::ancestry(table);
    let changed_since = later
        .iter()
        .filter(|s| s.sequence_number() > snap.sequence_number())
        .any(lake::readback::may_change_files);
    if !changed_since {
        return Ok(Some(snap));
    }
    let live = match live {
        Some(live) => live,
        None => {
            let deleted = lake::readback::deleted_from(table).await?;
            live.insert(
                lake::readback::live_files(table)
                    .await?
                    .into_iter()
                    .map(|f| f.path)
                    .filter(|p| !deleted.contains_key(p))
                    .collect(),
            )
        }
    };
    let files = lake::readback::added_files(table, &snap).await?;
    Ok(files.iter().all(|f| live.contains(&f.path)).then_some(snap))
}
