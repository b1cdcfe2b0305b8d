//! `fetch`: rows of a time range at any snapshot, streamed to stdout or a file
//! as CSV, JSON, JSON Lines or Parquet.
//!
//! The time range, `--where` and `--columns` are pushed down to the Iceberg
//! scan (partition pruning, row-group filtering, projection); rows stream
//! through without being collected, so memory stays flat.  Progress and stats
//! go to stderr, so stdout pipes into `jq` or `duckdb`.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::RecordBatch;
use futures::TryStreamExt;
use futures::stream::BoxStream;
use iceberg::expr::{Predicate, Reference};
use iceberg::spec::{Datum, PrimitiveType, Type};
use iceberg::table::Table;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::filter::Filter;
use crate::inspect::{SnapshotChoice, resolve_snapshot};
use crate::lake::readback::{read_files, read_files_renewing};
use crate::lake::vended::TableStorage;
use crate::plan::window::{Micros, Window};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Json,
    Jsonl,
    Parquet,
    /// An Arrow IPC stream.
    Arrow,
}

/// What to fetch.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    pub time_column: String,
    pub range: Window,
    pub snapshot: SnapshotChoice,
    pub columns: Option<Vec<String>>,
    pub filter: Option<String>,
    pub format: Format,
}

/// What was fetched.
#[derive(Debug, Clone, Serialize)]
pub struct FetchStats {
    pub snapshot_id: Option<i64>,
    pub rows: u64,
    /// Data files the scan planned (after partition pruning).
    pub files: usize,
    pub seconds: f64,
}

/// The scan predicate: the time range, and the `--where` filter if any.
pub fn predicate(table: &Table, req: &FetchRequest) -> Result<Predicate> {
    let filter = match &req.filter {
        Some(w) => Some(Filter::parse(w)?),
        None => None,
    };
    scan_predicate(
        table.metadata().current_schema(),
        &req.time_column,
        (Some(req.range.start), Some(req.range.end)),
        filter.as_ref(),
    )
    .map_err(|e| {
        if filter.is_some() && e.message().starts_with("invalid filter") {
            e.prefixed("--where")
        } else {
            e
        }
    })
}

/// The predicate of a scan over `[from, to)` of `time_column` (either end
/// open) and `filter`, with literals converted to the schema's types.
pub fn scan_predicate(
    schema: &iceberg::spec::Schema,
    time_column: &str,
    (from, to): (Option<Micros>, Option<Micros>),
    filter: Option<&Filter>,
) -> Result<Predicate> {
    let field = schema.field_by_name(time_column).ok_or_else(|| {
        Error::new(
            ErrorKind::Schema,
            format!("time column `{time_column}` is not in the archive table"),
        )
    })?;
    let datum = |t: Micros| match field.field_type.as_ref() {
        Type::Primitive(PrimitiveType::Timestamp) => Datum::timestamp_micros(t),
        _ => Datum::timestamptz_micros(t),
    };
    let mut p = Predicate::AlwaysTrue;
    if let Some(lo) = from {
        p = p.and(Reference::new(time_column).greater_than_or_equal_to(datum(lo)));
    }
    if let Some(hi) = to {
        p = p.and(Reference::new(time_column).less_than(datum(hi)));
    }
    if let Some(f) = filter {
        p = p.and(f.to_predicate(schema)?);
    }
    Ok(p)
}

/// A streaming writer of record batches in one of the output formats.
pub(crate) enum Sink<W: Write + Send> {
    Csv(arrow_csv::Writer<W>),
    Jsonl(arrow_json::LineDelimitedWriter<W>),
    Json(arrow_json::ArrayWriter<W>),
    Parquet(Option<parquet::arrow::ArrowWriter<W>>, Option<W>),
    Arrow(Option<arrow_ipc::writer::StreamWriter<W>>, Option<W>),
}

impl<W: Write + Send> Sink<W> {
    pub(crate) fn new(format: Format, w: W) -> Self {
        match format {
            Format::Csv => Sink::Csv(arrow_csv::WriterBuilder::new().with_header(true).build(w)),
            Format::Jsonl => Sink::Jsonl(arrow_json::LineDelimitedWriter::new(w)),
            Format::Json => Sink::Json(arrow_json::ArrayWriter::new(w)),
            Format::Parquet => Sink::Parquet(None, Some(w)),
            Format::Arrow => Sink::Arrow(None, Some(w)),
        }
    }

    pub(crate) fn write(&mut self, b: &RecordBatch) -> Result<()> {
        let err = |e: arrow_schema::ArrowError| {
            Error::new(ErrorKind::Io, format!("cannot write the output: {e}"))
        };
        match self {
            Sink::Csv(w) => w.write(b).map_err(err),
            Sink::Jsonl(w) => w.write(b).map_err(err),
            Sink::Json(w) => w.write(b).map_err(err),
            Sink::Parquet(writer, out) => {
                if writer.is_none() {
                    let props = parquet::file::properties::WriterProperties::builder()
                        .set_compression(parquet::basic::Compression::ZSTD(
                            parquet::basic::ZstdLevel::default(),
                        ))
                        .build();
                    let w = out
                        .take()
                        .ok_or_else(|| Error::internal("parquet output taken twice"))?;
                    *writer = Some(
                        parquet::arrow::ArrowWriter::try_new(w, b.schema(), Some(props)).map_err(
                            |e| {
                                Error::new(
                                    ErrorKind::Io,
                                    format!("cannot start the Parquet output: {e}"),
                                )
                            },
                        )?,
                    );
                }
                match writer {
                    Some(w) => w.write(b).map_err(|e| {
                        Error::new(ErrorKind::Io, format!("cannot write Parquet: {e}"))
                    }),
                    None => Err(Error::internal("parquet writer missing")),
                }
            }
            Sink::Arrow(writer, out) => {
                if writer.is_none() {
                    let w = out
                        .take()
                        .ok_or_else(|| Error::internal("arrow output taken twice"))?;
                    *writer = Some(
                        arrow_ipc::writer::StreamWriter::try_new(w, &b.schema()).map_err(err)?,
                    );
                }
                match writer {
                    Some(w) => w.write(b).map_err(err),
                    None => Err(Error::internal("arrow writer missing")),
                }
            }
        }
    }

    pub(crate) fn finish(self, empty_schema: arrow_schema::SchemaRef) -> Result<()> {
        let err = |e: arrow_schema::ArrowError| {
            Error::new(ErrorKind::Io, format!("cannot write the output: {e}"))
        };
        match self {
            Sink::Csv(w) => drop(w.into_inner()),
            Sink::Jsonl(mut w) => w.finish().map_err(err)?,
            Sink::Json(mut w) => w.finish().map_err(err)?,
            Sink::Parquet(writer, out) => {
                let writer = match (writer, out) {
                    (Some(w), _) => w,
                    // No rows: still a valid Parquet file with the schema.
                    (None, Some(o)) => parquet::arrow::ArrowWriter::try_new(o, empty_schema, None)
                        .map_err(|e| {
                            Error::new(
                                ErrorKind::Io,
                                format!("cannot start the Parquet output: {e}"),
                            )
                        })?,
                    (None, None) => return Err(Error::internal("parquet output missing")),
                };
                writer.close().map_err(|e| {
                    Error::new(
                        ErrorKind::Io,
                        format!("cannot finish the Parquet output: {e}"),
                    )
                })?;
            }
            Sink::Arrow(writer, out) => {
                let mut writer = match (writer, out) {
                    (Some(w), _) => w,
                    (None, Some(o)) => {
                        arrow_ipc::writer::StreamWriter::try_new(o, &empty_schema).map_err(err)?
                    }
                    (None, None) => return Err(Error::internal("arrow output missing")),
                };
                writer.finish().map_err(err)?;
            }
        }
        Ok(())
    }
}

/// The record batches of a scan of `snapshot` filtered by `predicate` (pushed
/// down: partitions, files and row groups that cannot match are skipped, rows
/// that do not match are dropped), with `columns` or all; and how many data
/// files it planned.
pub async fn open_scan(
    (table, storage): (&Table, Option<Arc<TableStorage>>),
    snapshot: i64,
    predicate: Predicate,
    columns: Option<&[String]>,
) -> Result<(BoxStream<'static, Result<RecordBatch>>, usize)> {
    if let Some(s) = table.metadata().snapshot_by_id(snapshot) {
        crate::lake::readback::refuse_deletion_vectors(table, s).await?;
    }
    let mut builder = table.scan().snapshot_id(snapshot).with_filter(predicate);
    builder = match columns {
        Some(cols) => builder.select(cols.iter().cloned()),
        None => builder.select_all(),
    };
    let scan = builder
        .build()
        .map_err(|e| Error::iceberg("cannot plan the scan", e))?;
    let tasks: Vec<_> = scan
        .plan_files()
        .await
        .map_err(|e| Error::iceberg("cannot plan the scan", e))?
        .try_collect()
        .await
        .map_err(|e| Error::iceberg("cannot plan the scan", e))?;
    let files = tasks.len();
    // Row selection: the predicate is also checked against the Parquet page
    // index, so a point lookup decodes pages, not whole row groups.
    let reader = |t: &Table, rows: usize| {
        t.reader_builder()
            .with_batch_size(rows)
            .with_row_selection_enabled(true)
            .build()
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let what = "cannot read the archive";
    let stream = match storage {
        Some(storage) => read_files_renewing((table, storage), reader, tasks, cores, what),
        None => read_files(table, reader, tasks, cores, what),
    };
    Ok((stream, files))
}

/// Streams the rows of `req` to `out`, each file read with `storage`'s
/// keys of the moment (a long export outlives keys a catalog vends).
pub async fn fetch<W: Write + Send>(
    (table, storage): (&Table, Arc<TableStorage>),
    req: &FetchRequest,
    out: W,
    progress: &indicatif::ProgressBar,
) -> Result<FetchStats> {
    let started = Instant::now();
    let snapshot = resolve_snapshot(table, req.snapshot)?;
    let schema = table.metadata().current_schema().clone();
    if let Some(cols) = &req.columns {
        for c in cols {
            if schema.field_by_name(c).is_none() {
                let names: Vec<String> = schema
                    .as_struct()
                    .fields()
                    .iter()
                    .map(|f| f.name.clone())
                    .collect();
                return Err(Error::config(format!("--columns: unknown column `{c}`"))
                    .with_hint(format!("columns: {}", names.join(", "))));
            }
        }
    }
    let Some(snapshot) = snapshot else {
        // An empty table: an empty result.
        let empty = std::sync::Arc::new(arrow_schema::Schema::empty());
        Sink::new(req.format, out).finish(empty)?;
        return Ok(FetchStats {
            snapshot_id: None,
            rows: 0,
            files: 0,
            seconds: started.elapsed().as_secs_f64(),
        });
    };
    let (mut stream, files) = open_scan(
        (table, Some(storage)),
        snapshot.snapshot_id(),
        predicate(table, req)?,
        req.columns.as_deref(),
    )
    .await?;
    let mut sink = Sink::new(req.format, out);
    let mut rows = 0u64;
    let mut schema_seen = None;
    while let Some(batch) = stream.try_next().await? {
        rows += batch.num_rows() as u64;
        progress.inc(batch.num_rows() as u64);
        schema_seen.get_or_insert_with(|| batch.schema());
        sink.write(&batch)?;
    }
    let empty = match schema_seen {
        Some(s) => s,
        None => std::sync::Arc::new(
            iceberg::arrow::schema_to_arrow_schema(&schema)
                .map_err(|e| Error::iceberg("cannot derive the Arrow schema", e))?,
        ),
    };
    sink.finish(empty)?;
    Ok(FetchStats {
        snapshot_id: Some(snapshot.snapshot_id()),
        rows,
        files,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The instant `s` (date or RFC 3339) for `flag`.
pub fn instant(flag: &str, s: &str) -> Result<Micros> {
    crate::plan::window::parse_instant(s).ok_or_else(|| {
        Error::config(format!("--{flag}: `{s}` is not a date or timestamp"))
            .with_hint("e.g. 2024-01-01 or 2024-01-01T06:00:00Z")
    })
}
