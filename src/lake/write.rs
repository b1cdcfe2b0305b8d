//! Writing record batches as partitioned Parquet data files.
//!
//! Rows are routed to the partition of their window (the transform of the
//! time column).  At most [`MAX_OPEN_PARTITIONS`] partition writers are open at
//! once; the least recently used one is closed when another is needed, so
//! memory stays bounded however many windows a batch spans (a partition seen
//! again later simply gets another file).  A writer that got no row for
//! [`IDLE_BATCHES`] record batches (rows mostly come in time order: its
//! window is past) is closed on a task of its own, so its upload and flush
//! overlap the rows still coming; [`BatchWriter::close`] waits for every
//! one.  Columns whose values are mostly
//! distinct (the time column always; others by a sample of the first rows)
//! are written without a dictionary.  Files are zstd-compressed, roll at
//! the configured target size, and are named `{batch id}-{uuid}-NNNNN.parquet`
//! so no two writers — or retries — ever share a path.

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{Array, RecordBatch, UInt32Array};
use iceberg::io::FileIO;
use iceberg::spec::{
    DataFile, DataFileFormat, Literal, PartitionKey, PartitionSpec, SchemaRef, Struct,
};
use iceberg::writer::base_writer::data_file_writer::{DataFileWriter, DataFileWriterBuilder};
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use crate::config::{FloatEncoding, IntegerEncoding};
use crate::error::{Error, Result};
use crate::lake::ArchiveTable;
use crate::plan::window::Granularity;

/// Partition writers open at the same time.
pub const MAX_OPEN_PARTITIONS: usize = 4;
/// Rows per Parquet row group.
pub const ROW_GROUP_ROWS: usize = 512 * 1024;
/// Encoded bytes per Parquet row group, whichever of the two limits comes
/// first: a writer holds its row group in memory until it is full, and a
/// reader fetches one whole (its column chunks), so wide rows (kilobytes of
/// JSON or text each) need this bound where narrow ones reach the row limit
/// (the benchmark's tables: 5–6 MB at 524,288 rows).  With 16 MiB a wide
/// table's archive into S3 peaked at 232–273 MiB, with 8 MiB at 225–226
/// (README, "Memory"); 8 MiB is also about the part an S3 reader fetches best.
pub const ROW_GROUP_BYTES: usize = 8 << 20;
/// Record batches without a row for a partition after which its writer is
/// closed (in the background).
pub const IDLE_BATCHES: u64 = 2;
/// Writers closing in the background at most while rows still come (one
/// more waits for the oldest): with the open ones, at most
/// [`MAX_OPEN_PARTITIONS`] + 1 writers hold rows in memory at any time.
const MAX_CLOSING: usize = 1;

type Builder =
    DataFileWriterBuilder<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>;
type Writer =
    DataFileWriter<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>;

/// Rows of the first record batch sampled per column to choose its encoding.
const SAMPLE_ROWS: usize = 4096;

/// Writes one batch's rows into data files.
pub struct BatchWriter {
    setup: Setup,
    /// Built from the first rows written (they choose the encodings).
    builder: Option<Builder>,
    spec: PartitionSpec,
    schema: SchemaRef,
    granularity: Granularity,
    time_index: usize,
    open: Vec<Open>,
    tick: u64,
    /// Record batches written so far.
    batches: u64,
    /// Writers being closed, each on its own task.
    closing: tokio::task::JoinSet<Result<Vec<DataFile>>>,
    files: Vec<DataFile>,
    rows: u64,
}

/// An open partition writer.
struct Open {
    ordinal: i64,
    writer: Writer,
    /// When it was last asked for (least recently used goes first).
    tick: u64,
    /// The record batch that last gave it rows.
    batch: u64,
}

impl BatchWriter {
    /// A writer for `table` whose files go out through `io` (the table's
    /// storage as renewed, [`super::vended`]); `prefix` makes file names
    /// unique (batch id + uuid).
    pub fn new(
        table: &ArchiveTable,
        io: FileIO,
        prefix: &str,
        target_file_size: u64,
        format: ParquetFormat,
    ) -> Result<Self> {
        let mut writer = Self::for_table(
            &table.table,
            table.granularity,
            table.time_index,
            prefix,
            target_file_size,
            format,
        )?;
        writer.setup.io = io;
        Ok(writer)
    }

    /// A writer for rows of `table`'s current schema whose time column is
    /// column `time_index`, partitioned by `granularity` (the default spec).
    pub fn for_table(
        table: &iceberg::table::Table,
        granularity: Granularity,
        time_index: usize,
        prefix: &str,
        target_file_size: u64,
        format: ParquetFormat,
    ) -> Result<Self> {
        let md = table.metadata();
        let schema = md.current_schema().clone();
        let level = ZstdLevel::try_new(format.zstd_level)
            .map_err(|e| Error::config(format!("zstd level: {e}")))?;
        Ok(Self {
            setup: Setup {
                table: table.clone(),
                io: table.file_io().clone(),
                prefix: prefix.to_string(),
                target_file_size,
                level,
                format,
            },
            builder: None,
            spec: md.default_partition_spec().as_ref().clone(),
            schema,
            granularity,
            time_index,
            open: Vec::new(),
            tick: 0,
            batches: 0,
            closing: tokio::task::JoinSet::new(),
            files: Vec::new(),
            rows: 0,
        })
    }

    fn partition_key(&self, ordinal: i64) -> PartitionKey {
        let lit = match self.granularity {
            Granularity::Day => Literal::date(ordinal as i32),
            _ => Literal::int(ordinal as i32),
        };
        PartitionKey::new(
            self.spec.clone(),
            self.schema.clone(),
            Struct::from_iter([Some(lit)]),
        )
    }

    async fn writer_for(&mut self, ordinal: i64) -> Result<&mut Writer> {
        self.tick += 1;
        let (tick, batch) = (self.tick, self.batches);
        if let Some(i) = self.open.iter().position(|o| o.ordinal == ordinal) {
            self.open[i].tick = tick;
            self.open[i].batch = batch;
            return Ok(&mut self.open[i].writer);
        }
        if self.open.len() >= MAX_OPEN_PARTITIONS {
            let lru = self
                .open
                .iter()
                .enumerate()
                .min_by_key(|(_, o)| o.tick)
                .map(|(i, _)| i)
                .unwrap_or(0);
            let o = self.open.swap_remove(lru);
            self.retire(o.writer, MAX_CLOSING).await?;
        }
        let key = self.partition_key(ordinal);
        let Some(builder) = &self.builder else {
            return Err(Error::internal("a data file opened before the first rows"));
        };
        let w = builder
            .build(Some(key))
            .await
            .map_err(|e| Error::storage("cannot open a data file", e))?;
        self.open.push(Open {
            ordinal,
            writer: w,
            tick,
            batch,
        });
        let last = self.open.len() - 1;
        Ok(&mut self.open[last].writer)
    }

    /// Closes `writer` on a task of its own, once fewer than `most` are
    /// closing (waits for one first otherwise).
    async fn retire(&mut self, mut writer: Writer, most: usize) -> Result<()> {
        while self.closing.len() >= most {
            self.join_one().await?;
        }
        self.closing.spawn(async move {
            writer
                .close()
                .await
                .map_err(|e| Error::storage("cannot finish a data file", e))
        });
        Ok(())
    }

    /// Waits for one writer closing in the background; false when none is.
    async fn join_one(&mut self) -> Result<bool> {
        match self.closing.join_next().await {
            None => Ok(false),
            Some(done) => {
                let files =
                    done.map_err(|e| Error::internal(format!("closing a data file failed: {e}")))??;
                self.files.extend(files);
                Ok(true)
            }
        }
    }

    /// Closes the writers that got no row for [`IDLE_BATCHES`] record batches.
    async fn retire_idle(&mut self) -> Result<()> {
        let now = self.batches;
        loop {
            // (Writers are not `Sync`: no iterator over them across an await.)
            let idle = self.open.iter().position(|o| o.batch + IDLE_BATCHES <= now);
            let Some(i) = idle else {
                return Ok(());
            };
            let o = self.open.swap_remove(i);
            self.retire(o.writer, MAX_CLOSING).await?;
        }
    }

    /// Writes `batch`, routing each row to its window's partition; then
    /// closes the writers that got none of the last [`IDLE_BATCHES`].
    pub async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.builder.is_none() {
            self.builder = Some(self.setup.builder(&batch, self.time_index)?);
        }
        self.batches += 1;
        self.route(batch).await?;
        self.retire_idle().await
    }

    /// Hands each window's rows of `batch` to that window's file: a run of
    /// rows in one window as a slice of the batch (no copy), a window whose
    /// rows come in several runs (rows out of time order) as one batch
    /// gathered from them.
    async fn route(&mut self, batch: RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        let ts = batch
            .column(self.time_index)
            .as_primitive::<TimestampMicrosecondType>();
        if ts.null_count() > 0 {
            return Err(Error::internal(
                "a row without a time value reached the writer",
            ));
        }
        let mut runs = window_runs(ts.values(), self.granularity);
        // Stable: a window's runs stay in row order.
        runs.sort_by_key(|r| r.0);
        for same in runs.chunk_by(|a, b| a.0 == b.0) {
            let part = match same {
                [(_, rows)] => batch.slice(rows.start, rows.len()),
                _ => {
                    let idx: UInt32Array = same
                        .iter()
                        .flat_map(|(_, rows)| rows.clone())
                        .map(|i| i as u32)
                        .collect();
                    arrow_select::take::take_record_batch(&batch, &idx)
                        .map_err(|e| Error::arrow("cannot split a batch by partition", e))?
                }
            };
            self.writer_for(same[0].0)
                .await?
                .write(part)
                .await
                .map_err(|e| Error::storage("cannot write a data file", e))?;
        }
        Ok(())
    }

    /// Closes every file (the ones still open at once, each on its own
    /// task: no writer is opened any more, so no more hold rows than
    /// before) and waits for all; returns the data files to commit.
    pub async fn close(mut self) -> Result<(Vec<DataFile>, u64)> {
        let open = std::mem::take(&mut self.open);
        for o in open {
            self.retire(o.writer, MAX_OPEN_PARTITIONS + MAX_CLOSING)
                .await?;
        }
        while self.join_one().await? {}
        Ok((self.files, self.rows))
    }
}

/// What the data file writers of a [`BatchWriter`] need, until its first rows.
struct Setup {
    table: iceberg::table::Table,
    io: FileIO,
    prefix: String,
    target_file_size: u64,
    level: ZstdLevel,
    format: ParquetFormat,
}

/// How a table's data files are written: their zstd level
/// (`tables[].zstd_level`) and the encodings of the columns written without
/// a dictionary (`tables[].integer_encoding`, `float_encoding`).
#[derive(Debug, Clone, Copy)]
pub struct ParquetFormat {
    pub zstd_level: i32,
    pub integers: IntegerEncoding,
    pub floats: FloatEncoding,
}

impl ParquetFormat {
    /// A table's, as configured.
    pub fn of(t: &crate::config::TableConfig) -> Self {
        Self {
            zstd_level: t.zstd_level,
            integers: t.integer_encoding,
            floats: t.float_encoding,
        }
    }

    /// The encoding of a column of `kind` written without a dictionary;
    /// `None`: Parquet's default (`PLAIN`).
    fn for_kind(self, kind: ValueKind) -> Option<Encoding> {
        match kind {
            ValueKind::Integer if self.integers == IntegerEncoding::DeltaBinaryPacked => {
                Some(Encoding::DELTA_BINARY_PACKED)
            }
            ValueKind::Float if self.floats == FloatEncoding::ByteStreamSplit => {
                Some(Encoding::BYTE_STREAM_SPLIT)
            }
            _ => None,
        }
    }
}

impl Setup {
    /// The data file writers' builder: zstd, bounded row groups, and no
    /// dictionary for the columns [`plain_columns`] picks from `first`
    /// (whose time column is column `time_index`) — encoded as the table
    /// says ([`ParquetFormat`]).
    fn builder(&self, first: &RecordBatch, time_index: usize) -> Result<Builder> {
        let md = self.table.metadata();
        let mut props = WriterProperties::builder();
        for (name, kind) in plain_columns(first, time_index) {
            let path = ColumnPath::from(name);
            props = props.set_column_dictionary_enabled(path.clone(), false);
            if let Some(encoding) = self.format.for_kind(kind) {
                props = props.set_column_encoding(path, encoding);
            }
        }
        let props = props
            .set_compression(Compression::ZSTD(self.level))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
            .set_created_by(format!("permafrost {}", crate::VERSION))
            .build();
        let parquet = ParquetWriterBuilder::new(props, md.current_schema().clone());
        let location = DefaultLocationGenerator::new(md)
            .map_err(|e| Error::iceberg("cannot place data files", e))?;
        let names =
            DefaultFileNameGenerator::new(self.prefix.clone(), None, DataFileFormat::Parquet);
        let rolling = RollingFileWriterBuilder::new(
            parquet,
            self.target_file_size as usize,
            self.io.clone(),
            location,
            names,
        );
        Ok(DataFileWriterBuilder::new(rolling))
    }
}

/// `values` cut into runs of consecutive rows in one window each:
/// (the window's ordinal, the rows), in row order.  Rows mostly arrive in
/// time order, so a batch is one run or a few.
fn window_runs(values: &[i64], g: Granularity) -> Vec<(i64, std::ops::Range<usize>)> {
    let mut runs = Vec::new();
    let Some(first) = values.first() else {
        return runs;
    };
    let (mut cur, mut start) = (g.window_of(*first), 0);
    for (i, t) in values.iter().enumerate() {
        if !cur.contains(*t) {
            runs.push((g.ordinal(values[start]), start..i));
            (cur, start) = (g.window_of(*t), i);
        }
    }
    runs.push((g.ordinal(values[start]), start..values.len()));
    runs
}

/// The top-level columns written without a dictionary: the time column,
/// and every flat column whose values in a sample of `first` are mostly
/// distinct (sensor readings, ids, payloads).  For those a dictionary only
/// costs the writer a hash of every value and the file a dictionary as
/// large as the data; repetitive columns (units, sensor names) keep theirs.
/// Each with the kind of values Parquet stores it as.
fn plain_columns(first: &RecordBatch, time_index: usize) -> Vec<(String, ValueKind)> {
    let schema = first.schema();
    schema
        .fields()
        .iter()
        .zip(first.columns())
        .enumerate()
        .filter(|(i, (field, col))| {
            *i == time_index
                || (!field.data_type().is_nested()
                    && crate::checksum::distinct_values(col.as_ref(), SAMPLE_ROWS)
                        .is_some_and(|(distinct, values)| values >= 64 && 2 * distinct > values))
        })
        .map(|(_, (field, _))| (field.name().clone(), ValueKind::of(field.data_type())))
        .collect()
}

/// What a flat column's values are in Parquet, as far as its encoding goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    /// 32- or 64-bit integers: integers, dates, times, timestamps.
    Integer,
    /// 32- or 64-bit floating point.
    Float,
    Other,
}

impl ValueKind {
    fn of(dt: &arrow_schema::DataType) -> Self {
        use arrow_schema::DataType as D;
        match dt {
            D::Int32 | D::Int64 | D::Date32 | D::Time64(_) | D::Timestamp(_, _) => Self::Integer,
            D::Float32 | D::Float64 => Self::Float,
            _ => Self::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Float64Array, Int32Array, StringArray, TimestampMicrosecondArray};

    use super::*;

    /// A table `(ts timestamp, v long)` partitioned by day of `ts`, its
    /// files under `dir`.
    fn daily_table(dir: &std::path::Path) -> iceberg::table::Table {
        use iceberg::spec::{
            FormatVersion, NestedField, PrimitiveType, Schema, SortOrder, TableMetadataBuilder,
            Transform, Type, UnboundPartitionSpec,
        };
        let schema = Schema::builder()
            .with_fields(vec![
                NestedField::required(1, "ts", Type::Primitive(PrimitiveType::Timestamp)).into(),
                NestedField::optional(2, "v", Type::Primitive(PrimitiveType::Long)).into(),
            ])
            .build()
            .expect("schema");
        let spec = UnboundPartitionSpec::builder()
            .add_partition_field(1, "ts_day", Transform::Day)
            .expect("field")
            .build();
        let location = format!("file://{}/t", dir.display());
        let md = TableMetadataBuilder::new(
            schema,
            spec,
            SortOrder::unsorted_order(),
            location.clone(),
            FormatVersion::V2,
            std::collections::HashMap::new(),
        )
        .expect("metadata")
        .build()
        .expect("metadata")
        .metadata;
        let io = iceberg::io::FileIOBuilder::new(Arc::new(
            crate::lake::storage::WarehouseStorageFactory::default(),
        ))
        .build();
        iceberg::table::Table::builder()
            .identifier(iceberg::TableIdent::from_strs(["ns", "t"]).expect("ident"))
            .metadata(md)
            .metadata_location(format!("{location}/metadata/v1.metadata.json"))
            .file_io(io)
            .runtime(iceberg::Runtime::try_current().expect("runtime"))
            .build()
            .expect("table")
    }

    /// `n` rows at day `day` (hours apart from its midnight).
    fn rows_of_day(table: &iceberg::table::Table, day: i64, n: i64) -> RecordBatch {
        let schema = iceberg::arrow::schema_to_arrow_schema(table.metadata().current_schema())
            .expect("arrow schema");
        let ts = TimestampMicrosecondArray::from_iter_values(
            (0..n).map(|i| day * 86_400_000_000 + (i % 24) * 3_600_000_000),
        );
        let v = arrow_array::Int64Array::from_iter_values(0..n);
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(ts), Arc::new(v)]).expect("batch")
    }

    /// A writer of daily files into `table`.
    fn writer(table: &iceberg::table::Table) -> BatchWriter {
        BatchWriter::for_table(
            table,
            Granularity::Day,
            0,
            "b",
            1 << 30,
            ParquetFormat {
                zstd_level: 3,
                integers: IntegerEncoding::Plain,
                floats: FloatEncoding::Plain,
            },
        )
        .expect("writer")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_partition_left_behind_is_closed_and_a_late_row_gets_a_file_of_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = daily_table(dir.path());
        let mut w = writer(&table);
        w.write(rows_of_day(&table, 100, 50))
            .await
            .expect("day 100");
        for _ in 0..IDLE_BATCHES {
            w.write(rows_of_day(&table, 101, 50))
                .await
                .expect("day 101");
        }
        // Day 100 got none of the last IDLE_BATCHES batches: closed, day 101 open.
        let open: Vec<i64> = w.open.iter().map(|o| o.ordinal).collect();
        assert_eq!(open, [101]);
        assert_eq!(w.files.len() + w.closing.len(), 1);
        // A late row of day 100 opens another file for it.
        w.write(rows_of_day(&table, 100, 7))
            .await
            .expect("late row");
        let (files, rows) = w.close().await.expect("close");
        assert_eq!(rows, 50 + 50 * IDLE_BATCHES + 7);
        let mut per_file: Vec<(String, u64)> = files
            .iter()
            .map(|f| (format!("{:?}", f.partition()), f.record_count()))
            .collect();
        per_file.sort();
        let day = |d: i32| format!("{:?}", Struct::from_iter([Some(Literal::date(d))]));
        let mut want = vec![(day(100), 50), (day(100), 7), (day(101), 50 * IDLE_BATCHES)];
        want.sort();
        assert_eq!(per_file, want);
        for f in &files {
            let path = f.file_path().trim_start_matches("file://");
            assert!(std::path::Path::new(path).exists(), "{path}");
        }
    }

    #[test]
    fn window_runs_follow_the_rows() {
        let h = 3_600_000_000i64;
        let day = |d: i64| d * 24 * h;
        let ts = [
            day(100),
            day(100) + h,
            day(101),
            day(100) + 2 * h,
            day(102),
            day(102),
        ];
        assert_eq!(
            window_runs(&ts, Granularity::Day),
            [(100, 0..2), (101, 2..3), (100, 3..4), (102, 4..6)]
        );
        assert_eq!(window_runs(&ts[..2], Granularity::Day), [(100, 0..2)]);
        assert!(window_runs(&[], Granularity::Day).is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn rows_out_of_time_order_reach_their_windows_in_row_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = daily_table(dir.path());
        let mut w = writer(&table);
        let schema = iceberg::arrow::schema_to_arrow_schema(table.metadata().current_schema())
            .expect("arrow schema");
        let days = [100i64, 100, 101, 100, 102, 102];
        let ts = TimestampMicrosecondArray::from_iter_values(
            days.iter()
                .enumerate()
                .map(|(i, d)| d * 86_400_000_000 + i as i64),
        );
        let v = arrow_array::Int64Array::from_iter_values(0..6);
        let batch =
            RecordBatch::try_new(Arc::new(schema), vec![Arc::new(ts), Arc::new(v)]).expect("batch");
        w.write(batch).await.expect("write");
        let (files, rows) = w.close().await.expect("close");
        assert_eq!(rows, 6);
        let mut per_day: Vec<(String, Vec<i64>)> = files
            .iter()
            .map(|f| {
                let path = f.file_path().trim_start_matches("file://");
                let file = std::fs::File::open(path).expect("data file");
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                        .expect("parquet")
                        .build()
                        .expect("reader");
                let mut vs = vec![];
                for b in reader {
                    let b = b.expect("batch");
                    let col = b.column(1).as_primitive::<arrow_array::types::Int64Type>();
                    vs.extend(col.values().iter().copied());
                }
                (format!("{:?}", f.partition()), vs)
            })
            .collect();
        per_day.sort();
        let day = |d: i32| format!("{:?}", Struct::from_iter([Some(Literal::date(d))]));
        let mut want = vec![
            (day(100), vec![0, 1, 3]),
            (day(101), vec![2]),
            (day(102), vec![4, 5]),
        ];
        want.sort();
        assert_eq!(per_day, want);
    }

    #[test]
    fn plain_columns_are_the_time_and_the_mostly_distinct_ones() {
        let n = 1000;
        let cols: Vec<(&str, ArrayRef)> = vec![
            ("id", Arc::new(Int32Array::from_iter_values(0..n))),
            (
                "ts",
                Arc::new(TimestampMicrosecondArray::from_iter_values(
                    (0..n).map(|i| i64::from(i % 3)),
                )),
            ),
            (
                "reading",
                Arc::new(Float64Array::from_iter_values(
                    (0..n).map(|i| f64::from(i) / 7.0),
                )),
            ),
            (
                "sensor",
                Arc::new(Int32Array::from_iter_values((0..n).map(|i| i % 8))),
            ),
            (
                "unit",
                Arc::new(StringArray::from_iter_values((0..n).map(|_| "celsius"))),
            ),
        ];
        let batch = RecordBatch::try_from_iter(cols).unwrap();
        let plain = |b: &RecordBatch| {
            plain_columns(b, 1)
                .into_iter()
                .map(|(name, kind)| format!("{name} {kind:?}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(plain(&batch), ["id Integer", "ts Integer", "reading Float"]);
        // Too few values to judge: only the time column.
        assert_eq!(plain(&batch.slice(0, 10)), ["ts Integer"]);
    }
}
