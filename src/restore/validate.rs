//! Validation of a staged restore: nothing is attached or merged unless every
//! check passes, and a failure keeps the staging table for inspection.

use std::collections::HashMap;

use arrow_array::RecordBatch;
use futures::{StreamExt, TryStreamExt};
use iceberg::spec::{SchemaRef, SnapshotRef};
use iceberg::table::Table;
use tokio_postgres::Client;

use super::pghash::{RowHash, RowSum};
use super::provenance::{self, Rewrite};
use super::target::{self, TargetColumn, primary_key, target_columns};
use super::{Apply, BatchCheck, BatchMatch, Check, Loaded, OnConflict, StagedColumn, literal, pg};
use crate::checksum::Checksum;
use crate::error::{Error, ErrorKind, Result};
use crate::filter::quote_ident;
use crate::lake;
use crate::lake::vended::TableStorage;
use crate::ledger::keys;
use crate::plan::window::{Window, parse_instant};
use crate::source::introspect::TimeKind;
use crate::source::partitions;

/// The snapshot and its ancestors, oldest first.
fn lineage(table: &Table, snapshot: &SnapshotRef) -> Vec<SnapshotRef> {
    let md = table.metadata();
    let mut out = vec![snapshot.clone()];
    let mut cur = snapshot.parent_snapshot_id();
    while let Some(id) = cur {
        match md.snapshot_by_id(id) {
            Some(s) => {
                cur = s.parent_snapshot_id();
                out.push(s.clone());
            }
            None => break,
        }
    }
    out.reverse();
    out
}

/// A permafrost batch at or before the restored snapshot whose window
/// overlaps the range: its summary and the data files its snapshot added.
pub(crate) struct ArchivedBatch {
    batch_id: String,
    snapshot_id: i64,
    schema_id: Option<i32>,
    window: Window,
    rows: u64,
    checksum: String,
    /// The data files it added, with their partitions.
    files: Vec<(String, String)>,
}

/// The batches of a range and the snapshots since the first of them that
/// rewrote or removed data files ([`provenance`]).
pub(crate) struct ArchivedRange {
    batches: Vec<ArchivedBatch>,
    rewrites: Vec<Rewrite>,
}

/// Every permafrost batch at or before `snapshot` whose window overlaps
/// `range`, with the files each added (one manifest read per batch), and
/// the snapshots after the first of them that are not appends, with the
/// files they removed and added.  Reads the catalog's files only, nothing
/// of Postgres: a restore starts it before its load.
pub(crate) async fn archived_batches(
    (table, storage): (&Table, &TableStorage),
    snapshot: &SnapshotRef,
    range: &Window,
) -> Result<ArchivedRange> {
    let lineage = lineage(table, snapshot);
    let found: Vec<_> = lineage
        .iter()
        .cloned()
        .filter_map(|s| {
            let (batch_id, rows, checksum) = super::summary_of(&s)?;
            let p = &s.summary().additional_properties;
            let window = Window {
                start: p.get(keys::WINDOW_START).and_then(|v| parse_instant(v))?,
                end: p.get(keys::WINDOW_END).and_then(|v| parse_instant(v))?,
            };
            (window.overlaps(range) && rows > 0).then_some((s, batch_id, window, rows, checksum))
        })
        .collect();
    let first = found.first().map(|(s, ..)| s.snapshot_id());
    let read = found
        .into_iter()
        .map(|(s, batch_id, window, rows, checksum)| async move {
            let table = storage.current(table).await?;
            let mut changes = lake::readback::file_changes(&table, &s).await?;
            let files = changes
                .added
                .into_iter()
                .map(|f| {
                    let partition = changes.partition_of.remove(&f.path).unwrap_or_default();
                    (f.path, partition)
                })
                .collect();
            Ok::<_, Error>(ArchivedBatch {
                batch_id,
                snapshot_id: s.snapshot_id(),
                schema_id: s.schema_id(),
                window,
                rows,
                checksum,
                files,
            })
        });
    let batches = futures::stream::iter(read)
        .buffered(lake::readback::MANIFEST_READS)
        .try_collect()
        .await?;
    let after_first = lineage
        .into_iter()
        .skip_while(|s| Some(s.snapshot_id()) != first);
    Ok(ArchivedRange {
        batches,
        rewrites: provenance::rewrites((table, storage), after_first).await?,
    })
}

/// Each batch of `archived` with its restored rows compared to its summary,
/// by group ([`provenance`]): a group whose batches `range` covers whole
/// must restore exactly their archived rows (count and checksum summed).
pub(crate) fn batch_checks(
    archived: &ArchivedRange,
    schema: &SchemaRef,
    range: &Window,
    loaded: &Loaded,
) -> Vec<BatchCheck> {
    let batches = &archived.batches;
    let files: Vec<&[(String, String)]> = batches.iter().map(|b| b.files.as_slice()).collect();
    let mut out: Vec<Option<BatchCheck>> = vec![None; batches.len()];
    for group in provenance::groups(&files, &archived.rewrites) {
        let mut got = Checksum::default();
        for f in &group.files {
            if let Some(c) = loaded.per_file.get(f) {
                got.add(*c);
            }
        }
        let status = group_status(&group, batches, (schema, range), &got);
        for &i in &group.batches {
            let b = &batches[i];
            out[i] = Some(BatchCheck {
                batch_id: b.batch_id.clone(),
                snapshot_id: b.snapshot_id,
                window_start: crate::plan::window::rfc3339(b.window.start),
                window_end: crate::plan::window::rfc3339(b.window.end),
                archived_rows: b.rows,
                restored_rows: got.rows,
                status,
                rewritten_with: group
                    .batches
                    .iter()
                    .filter(|&&j| j != i)
                    .map(|&j| batches[j].batch_id.clone())
                    .collect(),
                note: (status == BatchMatch::Rewritten)
                    .then(|| group.not_comparable.clone().or(group.changed_by.clone()))
                    .flatten(),
            });
        }
    }
    out.into_iter().flatten().collect()
}

/// How a group's restored rows (`got`) compare with its batches' summaries.
fn group_status(
    group: &provenance::Group,
    batches: &[ArchivedBatch],
    (schema, range): (&SchemaRef, &Window),
    got: &Checksum,
) -> BatchMatch {
    let members = || group.batches.iter().map(|&i| &batches[i]);
    let mut archived = Checksum::default();
    let mut readable = true;
    for b in members() {
        match u128::from_str_radix(&b.checksum, 16) {
            Ok(sum) => archived.add(Checksum { rows: b.rows, sum }),
            Err(_) => readable = false,
        }
    }
    let whole = members().all(|b| range.start <= b.window.start && b.window.end <= range.end);
    if group.not_comparable.is_some() {
        BatchMatch::Rewritten
    } else if !whole {
        BatchMatch::Partial
    } else if readable && got.rows == archived.rows && got.sum == archived.sum {
        BatchMatch::Match
    } else if got.rows == archived.rows
        && members().any(|b| b.schema_id != Some(schema.schema_id()))
    {
        BatchMatch::SchemaChanged
    } else if group.changed_by.is_some() {
        BatchMatch::Rewritten
    } else {
        BatchMatch::Mismatch
    }
}

/// The select list that reads the staging table the way the archive read
/// the source (casts included).
fn select_list(cols: &[StagedColumn]) -> String {
    cols.iter()
        .map(|c| match &c.cast {
            Some(cast) => format!("{}::{cast}", quote_ident(&c.name)),
            None => quote_ident(&c.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What reading the staged rows back found.
pub(crate) struct Readback {
    /// Count and checksum against what the archive returned.
    pub content: Check,
    /// Rows outside the range (or without a time).
    pub range: Check,
    /// NULLs per column.
    pub nulls: HashMap<String, u64>,
}

/// Proves the staging table holds the rows the archive returned: count and
/// checksum, and on the way rows outside the range and NULLs per column.
///
/// Postgres hashes the staged rows ([`super::pghash`]); when that matches
/// the same hash of the rows as sent, and the rows sent, decoded in the
/// process, have the archive's checksum, that is the proof, and the decoded
/// rows give the range and NULL counts. Otherwise (a difference, a server
/// that cannot hash them as permafrost does) the rows are read back out of
/// Postgres with the archive's own extractor, and that decides.
pub(crate) async fn staged_content(
    clients: &[&Client],
    staging: &str,
    loaded: &Loaded,
    ts: &str,
    range: &Window,
) -> Result<Readback> {
    let ts_index = loaded.cols.iter().position(|c| c.name == ts);
    let why_read = match &loaded.hash {
        Ok(how) => {
            let pg = hashed_in_postgres(clients, staging, how).await?;
            match by_hash(loaded, pg) {
                Ok(proof) => return Ok(readback(proof, &loaded.echo, ts_index, ts)),
                Err(difference) => difference,
            }
        }
        Err(why) => why.clone(),
    };
    let part = read_back(clients, staging, loaded, ts_index, range).await?;
    let ok = part.sum == loaded.read;
    let detail = if ok {
        format!(
            "the {} staged row(s) read back from Postgres have the archive's checksum {}",
            part.sum.rows,
            part.sum.hex()
        )
    } else {
        format!(
            "staged rows read back: {} row(s), checksum {}; the archive returned {} row(s), checksum {}",
            part.sum.rows,
            part.sum.hex(),
            loaded.read.rows,
            loaded.read.hex()
        )
    };
    let detail = format!("{detail} (read back because {why_read})");
    let content = Check {
        name: "content".into(),
        ok,
        detail,
    };
    Ok(readback(content, &part, ts_index, ts))
}

/// The content check proved by hashes: Postgres's hash of the staged rows
/// `pg` equals the hash of the rows sent, and the rows sent decode to the
/// archive's checksum; or why not.
fn by_hash(loaded: &Loaded, pg: RowSum) -> std::result::Result<Check, String> {
    if loaded.echo.sum != loaded.read {
        return Err(format!(
            "the rows sent decode to {} row(s), checksum {}, not the archive's {} row(s), checksum {}",
            loaded.echo.sum.rows,
            loaded.echo.sum.hex(),
            loaded.read.rows,
            loaded.read.hex()
        ));
    }
    if pg != loaded.sent {
        return Err(format!(
            "Postgres hashes {} staged row(s) to {}, the {} row(s) sent hash to {}",
            pg.rows, pg.sum, loaded.sent.rows, loaded.sent.sum
        ));
    }
    Ok(Check {
        name: "content".into(),
        ok: true,
        detail: format!(
            "the {} staged row(s) hash in Postgres as the rows sent, which decode to the archive's checksum {}",
            pg.rows,
            loaded.read.hex()
        ),
    })
}

/// The checks decoded rows answer: `content` as given, the range from `part`.
fn readback(content: Check, part: &Part, ts_index: Option<usize>, ts: &str) -> Readback {
    let outside = part.outside;
    Readback {
        content,
        range: Check {
            name: "range".into(),
            ok: outside == 0 && ts_index.is_some(),
            detail: if ts_index.is_none() {
                format!("the time column `{ts}` is not among the staged columns")
            } else if outside == 0 {
                "every staged row is inside the requested range".into()
            } else {
                format!("{outside} staged row(s) lie outside the requested range")
            },
        },
        nulls: part.nulls.clone(),
    }
}

/// Postgres's count and hash sum of the staged rows, on `clients` a range of
/// blocks at a time.
async fn hashed_in_postgres(clients: &[&Client], staging: &str, how: &RowHash) -> Result<RowSum> {
    let parts = by_block_ranges(clients, staging, |client, cond| {
        let sql = how.sum_sql(staging, &cond);
        async move {
            let row = client
                .query_one(sql.as_str(), &[])
                .await
                .map_err(pg("cannot hash the staged rows"))?;
            let rows: i64 = row.get(0);
            let sum: String = row.get(1);
            let sum = sum.parse::<i128>().map_err(|e| {
                Error::internal(format!("Postgres's hash sum {sum} is not an integer: {e}"))
            })?;
            Ok(RowSum {
                rows: rows as u64,
                sum,
            })
        }
    })
    .await?;
    let mut total = RowSum::default();
    for p in parts {
        total.add(p);
    }
    Ok(total)
}

/// Reads the staged rows back out of Postgres with the archive's own
/// extractor, a range of blocks at a time on `clients`.
async fn read_back(
    clients: &[&Client],
    staging: &str,
    loaded: &Loaded,
    ts_index: Option<usize>,
    range: &Window,
) -> Result<Part> {
    let select = select_list(&loaded.cols);
    let parts = by_block_ranges(clients, staging, |client, cond| {
        let sql =
            format!("COPY (SELECT {select} FROM {staging} WHERE {cond}) TO STDOUT (FORMAT binary)");
        async move {
            let mut part = Part::default();
            read_part(client, sql, loaded, ts_index, *range, &mut part).await?;
            Ok(part)
        }
    })
    .await?;
    let mut total = Part::default();
    for p in parts {
        total.merge(p);
    }
    Ok(total)
}

/// Runs `each` over the staging table's blocks in ranges, a few per
/// connection, each connection taking the next range when it is done (a
/// reader slowed by the other work on the machine takes fewer); `each`
/// gets the range's condition on `ctid`. The results, in no order.
async fn by_block_ranges<'a, T, F, Fut>(
    clients: &[&'a Client],
    staging: &str,
    each: F,
) -> Result<Vec<T>>
where
    F: Fn(&'a Client, String) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let blocks: i64 = clients[0]
        .query_one(
            "SELECT (pg_relation_size($1::text::regclass) / current_setting('block_size')::int8)",
            &[&staging],
        )
        .await
        .map_err(pg("cannot size the staging table"))?
        .get(0);
    let ranges = block_ranges(blocks, clients.len() * READ_RANGES_PER_READER);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = clients.iter().map(|client| {
        let (each, next, ranges) = (&each, &next, &ranges);
        async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(lo, hi)) = ranges.get(i) else {
                    return Ok::<_, Error>(out);
                };
                let mut cond = format!("ctid >= '({lo},0)'::tid");
                if let Some(hi) = hi {
                    cond.push_str(&format!(" AND ctid < '({hi},0)'::tid"));
                }
                out.push(each(client, cond).await?);
            }
        }
    });
    let mut all = Vec::new();
    for done in futures::future::join_all(workers).await {
        all.extend(done?);
    }
    Ok(all)
}

/// Block ranges per reader of the staged rows.
const READ_RANGES_PER_READER: usize = 4;

/// `n` ranges of block numbers `[lo, hi)` that cover a table of `blocks`
/// blocks; the last is open (`hi` = `None`: rows added past the size read
/// are read too).  Fewer when the table has fewer blocks.
fn block_ranges(blocks: i64, n: usize) -> Vec<(i64, Option<i64>)> {
    let n = (n.max(1) as i64).min(blocks.max(1));
    let step = blocks / n;
    (0..n)
        .map(|i| (i * step, (i + 1 < n).then(|| (i + 1) * step)))
        .collect()
}

/// What decoding staged rows found: read back from Postgres, or (see
/// [`super::pghash`]) the rows as they were sent.
#[derive(Default)]
pub(crate) struct Part {
    pub sum: Checksum,
    pub nulls: HashMap<String, u64>,
    pub outside: u64,
}

impl Part {
    /// Adds a decoded batch and its row hashes: checksum, NULLs per column,
    /// rows outside `range` (or without a time) in column `ts_index`.
    pub fn add(
        &mut self,
        (batch, hashes): (&RecordBatch, &[u128]),
        cols: &[StagedColumn],
        ts_index: Option<usize>,
        range: Window,
    ) {
        use arrow_array::Array;
        use arrow_array::cast::AsArray;
        use arrow_array::types::TimestampMicrosecondType;
        self.sum.add_hashes(hashes);
        for (c, col) in cols.iter().zip(batch.columns()) {
            *self.nulls.entry(c.name.clone()).or_default() += col.null_count() as u64;
        }
        if let Some(i) = ts_index
            && let Some(t) = batch
                .column(i)
                .as_primitive_opt::<TimestampMicrosecondType>()
        {
            self.outside += t.null_count() as u64;
            self.outside += t
                .iter()
                .flatten()
                .filter(|v| *v < range.start || *v >= range.end)
                .count() as u64;
        }
    }

    pub fn merge(&mut self, other: Part) {
        self.sum.add(other.sum);
        for (k, v) in other.nulls {
            *self.nulls.entry(k).or_default() += v;
        }
        self.outside += other.outside;
    }
}

/// The archive's own decoder for rows of the staged columns, each in the
/// form it is loaded and read back in (through its cast, if it has one).
pub(crate) fn staged_decoder(
    cols: &[StagedColumn],
    schema: &arrow_schema::SchemaRef,
) -> Result<crate::source::extract::CopyDecoder> {
    let labels = cols
        .iter()
        .map(|c| format!("`{}` ({})", c.name, c.pg_type))
        .collect();
    let kinds: Vec<_> = cols.iter().map(|c| c.kind.clone()).collect();
    crate::source::extract::CopyDecoder::new(schema.clone(), labels, &kinds)
}

/// Reads one range of the staged rows back into `part`: checksum, NULLs per
/// column, rows outside the range.
async fn read_part(
    client: &Client,
    sql: String,
    loaded: &Loaded,
    ts_index: Option<usize>,
    range: Window,
    part: &mut Part,
) -> Result<()> {
    let stream = client
        .copy_out(sql.as_str())
        .await
        .map_err(pg("cannot read the staging table back"))?;
    let decoder = staged_decoder(&loaded.cols, &loaded.arrow_schema)?;
    let mut rows = crate::source::extract::CopyRows::spawn(stream, decoder);
    while let Some((batch, hashes)) = rows.next().await {
        part.add((&batch, &hashes), &loaded.cols, ts_index, range);
    }
    rows.finish().await?;
    Ok(())
}

/// The NOT NULL check: no NULL in the staged values of the target's NOT
/// NULL columns (`None` when the target has none among them).
pub(crate) fn not_null(not_null_cols: &[String], nulls: &HashMap<String, u64>) -> Option<Check> {
    let present: Vec<&String> = not_null_cols
        .iter()
        .filter(|c| nulls.contains_key(*c))
        .collect();
    if present.is_empty() {
        return None;
    }
    let bad: Vec<String> = present
        .iter()
        .filter_map(|c| {
            let n = nulls[*c];
            (n > 0).then(|| format!("{n} NULL(s) in `{c}`"))
        })
        .collect();
    Some(Check {
        name: "not_null".into(),
        ok: bad.is_empty(),
        detail: if bad.is_empty() {
            format!(
                "no NULL in the target's {} NOT NULL column(s)",
                present.len()
            )
        } else {
            bad.join("; ")
        },
    })
}

fn in_range(ts: &str, kind: TimeKind, range: &Window) -> String {
    let c = quote_ident(ts);
    format!(
        "{c} >= {} AND {c} < {}",
        literal(kind, range.start),
        literal(kind, range.end)
    )
}

/// The condition "staged row `s` is already in target `t`": by primary key,
/// or (without one) every shared column equal in its text form.  Without a
/// key, the time column `ts` (never NULL in an archive) is also compared with
/// `=` first: the text comparisons alone cannot be hashed, so Postgres would
/// compare every staged row with every target row (hours for a million rows).
pub(crate) fn same_row(pk: &[String], shared: &[String], ts: &str) -> String {
    if pk.is_empty() {
        let by_time = shared.iter().any(|c| c == ts).then(|| {
            let q = quote_ident(ts);
            format!("t.{q} = s.{q}")
        });
        by_time
            .into_iter()
            .chain(shared.iter().map(|c| {
                let q = quote_ident(c);
                format!("t.{q}::text IS NOT DISTINCT FROM s.{q}::text")
            }))
            .collect::<Vec<_>>()
            .join(" AND ")
    } else {
        pk.iter()
            .map(|c| {
                let q = quote_ident(c);
                format!("t.{q} = s.{q}")
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }
}

/// The `(name, Postgres type)` of each archived column.
pub(crate) fn archived_types(cols: &[StagedColumn]) -> Vec<(&str, &str)> {
    cols.iter()
        .map(|c| (c.name.as_str(), c.pg_type.as_str()))
        .collect()
}

/// The schema check: every archived column (`(name, Postgres type)`) is in
/// the target with the same type; a target column missing from the archive
/// is nullable or has a default (for an attach: the same columns).  Needs no
/// staging table, so it also runs before anything is staged ([`preflight`]).
pub(crate) fn schema_check(
    tcols: &[TargetColumn],
    cols: &[(&str, &str)],
    target: &str,
    attach: bool,
) -> Check {
    let by_name: HashMap<&str, &TargetColumn> =
        tcols.iter().map(|c| (c.name.as_str(), c)).collect();
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    for &(name, pg_type) in cols {
        match by_name.get(name) {
            None => problems.push(format!("archived column `{name}` is not in the target")),
            Some(t) if t.pg_type != pg_type => problems.push(format!(
                "column `{name}` is {} in the target but {pg_type} in the archive",
                t.pg_type
            )),
            Some(_) => {}
        }
    }
    for t in tcols {
        if cols.iter().any(|(name, _)| *name == t.name) {
            continue;
        }
        if attach {
            problems.push(format!(
                "target column `{}` is not in the archive (a partition needs every column)",
                t.name
            ));
        } else if t.not_null && !t.has_default && !t.generated {
            problems.push(format!(
                "target column `{}` is NOT NULL without a default and is not in the archive",
                t.name
            ));
        } else {
            notes.push(format!("`{}` takes its default", t.name));
        }
    }
    Check {
        name: "schema".into(),
        ok: problems.is_empty(),
        detail: if problems.is_empty() {
            let mut d = format!("the {} archived column(s) match {target}", cols.len());
            if !notes.is_empty() {
                d.push_str(&format!(" ({})", notes.join(", ")));
            }
            d
        } else {
            problems.join("; ")
        },
    }
}

/// The partitioning check of an attach: `target` is range-partitioned on `ts`.
pub(crate) async fn partitioning_check(client: &Client, target: &str, ts: &str) -> Result<Check> {
    let key = partitions::partition_key(client, target).await?;
    let ok = partitions::is_range_on(key.as_deref(), ts);
    Ok(Check {
        name: "partitioning".into(),
        ok,
        detail: match key {
            Some(k) if ok => format!("{target} is partitioned by {k}"),
            Some(k) => format!("{target} is partitioned by {k}, not by RANGE ({ts})"),
            None => format!("{target} is not a partitioned table"),
        },
    })
}

/// The overlap check of an attach: no partition of `target` covers the range
/// and it holds no row in it (with `replace`: exactly one partition with the
/// range's bounds, which will be detached).  Returns the check and, for a
/// failure, what to do about it.
pub(crate) async fn attach_overlap_check(
    client: &Client,
    target: &str,
    ts: &str,
    kind: TimeKind,
    range: &Window,
    replace: bool,
) -> Result<(Check, &'static str)> {
    let parts = target::overlapping_partitions(client, target, kind, range).await?;
    let rows: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM {target} WHERE {}",
                in_range(ts, kind, range)
            ),
            &[],
        )
        .await
        .map_err(pg("cannot count the target's rows in the range"))?
        .get(0);
    let exact = parts.iter().filter(|p| p.exact).count();
    let ok_parts = parts.is_empty() || (replace && parts.len() == 1 && exact == 1);
    let ok = ok_parts && (rows == 0 || replace);
    let (detail, advice) = match (parts.is_empty(), rows) {
        (true, 0) => (
            "no partition of the target covers the range yet".to_string(),
            "",
        ),
        (true, n) => (
            format!("the target already holds {n} row(s) in the range (in its default partition)"),
            "move them out of the default partition first",
        ),
        (false, n) => (
            format!(
                "partition(s) {} already cover the range ({n} row(s)){}",
                parts
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                if ok {
                    "; it will be detached (--replace-partition)"
                } else {
                    ""
                }
            ),
            if replace {
                "--replace-partition needs exactly one partition with the same bounds"
            } else {
                "--replace-partition detaches it"
            },
        ),
    };
    let check = Check {
        name: "overlap".into(),
        ok,
        detail,
    };
    Ok((check, advice))
}

/// Why `policy` cannot merge into a target with primary key `pk`, if it cannot.
pub(crate) fn conflict_policy_problem(policy: OnConflict, pk: &[String]) -> Option<&'static str> {
    (policy == OnConflict::Update && pk.is_empty())
        .then_some("--on-conflict update needs a primary key on the target")
}

/// Validates the target and the mode of `apply_how` before anything is
/// staged: the target exists; for an attach it is range-partitioned on
/// `ts`, has the archived columns and no partition or row in the range yet
/// (unless `--replace-partition` fits); for a merge it takes the archived
/// columns (`cols`: name and Postgres type) and the conflict policy.  A
/// failure is one `Schema` error with a hint, and nothing has been created.
pub(crate) async fn preflight(
    client: &Client,
    target: &str,
    cols: &[(&str, &str)],
    ts: &str,
    kind: TimeKind,
    range: &Window,
    apply_how: Apply,
) -> Result<()> {
    let flag = match apply_how {
        Apply::Stage => return Ok(()),
        Apply::Attach { .. } => "--attach",
        Apply::Merge(_) => "--merge",
    };
    let refuse = |message: String, hint: String| {
        Error::new(ErrorKind::Schema, format!("{flag}: {message}")).with_hint(hint)
    };
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&target])
        .await
        .map_err(pg("cannot look up the target table"))?
        .get(0);
    if !exists {
        return Err(refuse(
            format!("the target {target} does not exist"),
            format!(
                "create it, or name an existing table with --target SCHEMA.TABLE (names are \
                 case-sensitive); without {flag} the rows are only staged"
            ),
        ));
    }
    if let Apply::Attach { .. } = apply_how {
        let p = partitioning_check(client, target, ts).await?;
        if !p.ok {
            return Err(refuse(
                p.detail,
                format!(
                    "--attach needs a target partitioned by RANGE ({ts}); --merge inserts the rows into any table"
                ),
            ));
        }
    }
    let tcols = target_columns(client, target).await?;
    let attach = matches!(apply_how, Apply::Attach { .. });
    let schema = schema_check(&tcols, cols, target, attach);
    if !schema.ok {
        return Err(refuse(
            format!(
                "{target} does not fit the archived columns: {}",
                schema.detail
            ),
            format!(
                "alter the target or choose another --target; without {flag} the rows are only \
                 staged, for inspection"
            ),
        ));
    }
    match apply_how {
        Apply::Attach { replace } => {
            let (c, advice) =
                attach_overlap_check(client, target, ts, kind, range, replace).await?;
            if !c.ok {
                return Err(refuse(c.detail, advice.to_string()));
            }
        }
        Apply::Merge(policy) => {
            let pk = primary_key(client, target).await?;
            if let Some(p) = conflict_policy_problem(policy, &pk) {
                return Err(refuse(
                    format!("{p} ({target} has none)"),
                    "add one, or choose --on-conflict skip or error".into(),
                ));
            }
        }
        Apply::Stage => {}
    }
    Ok(())
}

/// Checks against the target: columns and types, CHECK constraints, rows
/// already there.  Returns the checks and the target's NOT NULL columns
/// (checked on the read-back).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn against_target(
    client: &Client,
    staging: &str,
    target: &str,
    cols: &[StagedColumn],
    ts: &str,
    kind: TimeKind,
    range: &Window,
    apply_how: Apply,
) -> Result<(Vec<Check>, Vec<String>)> {
    let tcols = target_columns(client, target).await?;
    let attach = matches!(apply_how, Apply::Attach { .. });
    let mut checks = vec![schema_check(&tcols, &archived_types(cols), target, attach)];
    let not_null_cols: Vec<String> = tcols
        .iter()
        .filter(|t| t.not_null)
        .map(|t| t.name.clone())
        .collect();
    checks.extend(check_constraints(client, staging, target).await?);
    match apply_how {
        Apply::Attach { replace } => {
            checks.push(partitioning_check(client, target, ts).await?);
            let (mut c, advice) =
                attach_overlap_check(client, target, ts, kind, range, replace).await?;
            if !c.ok {
                c.detail = format!("{}; {advice}", c.detail);
            }
            checks.push(c);
        }
        Apply::Merge(_) | Apply::Stage => {
            let shared: Vec<String> = cols
                .iter()
                .filter(|c| tcols.iter().any(|t| t.name == c.name))
                .map(|c| c.name.clone())
                .collect();
            let o = MergeOverlap {
                staging,
                target,
                shared: &shared,
                ts,
                kind,
                range,
            };
            checks.push(o.check(client, apply_how).await?);
        }
    }
    Ok((checks, not_null_cols))
}

/// The CHECK constraints check: no staged row violates one of the target's
/// (`None` when it has none).
async fn check_constraints(client: &Client, staging: &str, target: &str) -> Result<Option<Check>> {
    let cons = target::check_constraints(client, target).await?;
    if cons.is_empty() {
        return Ok(None);
    }
    let mut bad = Vec::new();
    for (name, def) in &cons {
        let expr = check_expr(def);
        match client
            .query_one(
                &format!("SELECT count(*) FROM {staging} WHERE NOT ({expr})"),
                &[],
            )
            .await
        {
            Ok(row) => {
                let n: i64 = row.get(0);
                if n > 0 {
                    bad.push(format!("{n} row(s) violate `{name}` {def}"));
                }
            }
            Err(e) => bad.push(format!(
                "`{name}` {def} cannot be evaluated on the staged rows: {}",
                Error::postgres("", e).message().trim_start_matches(": ")
            )),
        }
    }
    Ok(Some(Check {
        name: "check_constraints".into(),
        ok: bad.is_empty(),
        detail: if bad.is_empty() {
            format!(
                "the staged rows satisfy the target's {} CHECK constraint(s)",
                cons.len()
            )
        } else {
            bad.join("; ")
        },
    }))
}

/// The staged rows already in a plain target (by primary key; without one,
/// identical rows in the range).
struct MergeOverlap<'a> {
    staging: &'a str,
    target: &'a str,
    /// Archived columns the target has.
    shared: &'a [String],
    ts: &'a str,
    kind: TimeKind,
    range: &'a Window,
}

impl MergeOverlap<'_> {
    async fn count(&self, client: &Client, pk: &[String]) -> Result<i64> {
        if !pk.iter().all(|k| self.shared.contains(k)) || self.shared.is_empty() {
            return Ok(0);
        }
        let limit = if pk.is_empty() {
            format!(
                " AND {}",
                in_range(self.ts, self.kind, self.range).replace(
                    &quote_ident(self.ts),
                    &format!("t.{}", quote_ident(self.ts))
                )
            )
        } else {
            String::new()
        };
        Ok(client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} s WHERE EXISTS (SELECT 1 FROM {} t WHERE {}{limit})",
                    self.staging,
                    self.target,
                    same_row(pk, self.shared, self.ts)
                ),
                &[],
            )
            .await
            .map_err(pg("cannot look for staged rows already in the target"))?
            .get(0))
    }

    /// The overlap check of a merge (informational when only staging).
    async fn check(&self, client: &Client, apply_how: Apply) -> Result<Check> {
        let pk = primary_key(client, self.target).await?;
        let overlap = self.count(client, &pk).await?;
        let by = if pk.is_empty() {
            "as identical rows".to_string()
        } else {
            format!("by primary key ({})", pk.join(", "))
        };
        let Apply::Merge(policy) = apply_how else {
            return Ok(Check {
                name: "overlap".into(),
                ok: true,
                detail: format!("{overlap} staged row(s) are already in the target ({by})"),
            });
        };
        let problem = conflict_policy_problem(policy, &pk);
        Ok(Check {
            name: "overlap".into(),
            ok: problem.is_none() && (overlap == 0 || policy != OnConflict::Error),
            detail: if let Some(p) = problem {
                p.into()
            } else if overlap == 0 {
                format!("no staged row is already in the target ({by})")
            } else {
                format!(
                    "{overlap} staged row(s) are already in the target ({by}){}",
                    match policy {
                        OnConflict::Error => "; choose --on-conflict skip or update",
                        OnConflict::Skip => "; they will be skipped",
                        OnConflict::Update => "; they will be updated",
                    }
                )
            },
        })
    }
}

/// The expression of a `CHECK (…)` definition.
pub(crate) fn check_expr(def: &str) -> &str {
    let d = def.trim();
    let d = d.strip_suffix(" NOT VALID").unwrap_or(d);
    let d = d.strip_suffix(" NO INHERIT").unwrap_or(d);
    d.strip_prefix("CHECK ").unwrap_or(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ranges_cover_the_table_and_end_open() {
        assert_eq!(
            block_ranges(10, 4),
            vec![(0, Some(2)), (2, Some(4)), (4, Some(6)), (6, None)]
        );
        assert_eq!(block_ranges(2, 8), vec![(0, Some(1)), (1, None)]);
        assert_eq!(block_ranges(0, 8), vec![(0, None)]);
        assert_eq!(block_ranges(5, 1), vec![(0, None)]);
    }

    #[test]
    fn check_expressions() {
        assert_eq!(
            check_expr("CHECK ((value > (0)::double precision))"),
            "((value > (0)::double precision))"
        );
        assert_eq!(check_expr("CHECK ((a > 0)) NOT VALID"), "((a > 0))");
        assert_eq!(check_expr("CHECK ((a > 0)) NO INHERIT"), "((a > 0))");
    }

    #[test]
    fn same_row_by_key_or_by_value() {
        assert_eq!(
            same_row(&["id".into()], &["id".into(), "v".into()], "at"),
            "t.\"id\" = s.\"id\""
        );
        assert_eq!(
            same_row(&[], &["a".into()], "at"),
            "t.\"a\"::text IS NOT DISTINCT FROM s.\"a\"::text"
        );
        // Without a key, equal times first: a join Postgres can hash.
        assert_eq!(
            same_row(&[], &["at".into(), "a".into()], "at"),
            "t.\"at\" = s.\"at\" AND t.\"at\"::text IS NOT DISTINCT FROM s.\"at\"::text AND t.\"a\"::text IS NOT DISTINCT FROM s.\"a\"::text"
        );
    }
}
