//! Writing record batches as partitioned Parquet data files.
//!
//! Rows are routed to the partition of their window (the transform of the
//! time column).  At most [`MAX_OPEN_PARTITIONS`] partition writers are open at
//! once; the least recently used one is closed when another is needed, so
//! memory stays bounded however many windows a batch spans (a partition seen
//! again later simply gets another file).  Columns whose values are mostly
//! distinct (the time column always; others by a sample of the first rows)
//! are written without a dictionary.  Files are zstd-compressed, roll at
//! the configured target size, and are named `{batch id}-{uuid}-NNNNN.parquet`
//! so no two writers — or retries — ever share a path.

use std::collections::HashMap;

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
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use crate::error::{Error, Result};
use crate::lake::ArchiveTable;
use crate::plan::window::Granularity;

/// Partition writers open at the same time.
pub const MAX_OPEN_PARTITIONS: usize = 4;
/// Rows per Parquet row group.
pub const ROW_GROUP_ROWS: usize = 512 * 1024;

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
    open: Vec<(i64, Writer, u64)>,
    tick: u64,
    files: Vec<DataFile>,
    rows: u64,
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
        zstd_level: i32,
    ) -> Result<Self> {
        let mut writer = Self::for_table(
            &table.table,
            table.granularity,
            table.time_index,
            prefix,
            target_file_size,
            zstd_level,
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
        zstd_level: i32,
    ) -> Result<Self> {
        let md = table.metadata();
        let schema = md.current_schema().clone();
        let level = ZstdLevel::try_new(zstd_level)
            .map_err(|e| Error::config(format!("zstd level: {e}")))?;
        Ok(Self {
            setup: Setup {
                table: table.clone(),
                io: table.file_io().clone(),
                prefix: prefix.to_string(),
                target_file_size,
                level,
            },
            builder: None,
            spec: md.default_partition_spec().as_ref().clone(),
            schema,
            granularity,
            time_index,
            open: Vec::new(),
            tick: 0,
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
        let tick = self.tick;
        if let Some(i) = self.open.iter().position(|(o, ..)| *o == ordinal) {
            self.open[i].2 = tick;
            return Ok(&mut self.open[i].1);
        }
        if self.open.len() >= MAX_OPEN_PARTITIONS {
            let lru = self
                .open
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, _, t))| *t)
                .map(|(i, _)| i)
                .unwrap_or(0);
            let (_, mut w, _) = self.open.swap_remove(lru);
            let files = w
                .close()
                .await
                .map_err(|e| Error::storage("cannot finish a data file", e))?;
            self.files.extend(files);
        }
        let key = self.partition_key(ordinal);
        let Some(builder) = &self.builder else {
            return Err(Error::internal("a data file opened before the first rows"));
        };
        let w = builder
            .build(Some(key))
            .await
            .map_err(|e| Error::storage("cannot open a data file", e))?;
        self.open.push((ordinal, w, tick));
        let last = self.open.len() - 1;
        Ok(&mut self.open[last].1)
    }

    /// Writes `batch`, routing each row to its window's partition.
    pub async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.builder.is_none() {
            self.builder = Some(self.setup.builder(&batch, self.time_index)?);
        }
        self.rows += batch.num_rows() as u64;
        let ts = batch
            .column(self.time_index)
            .as_primitive::<TimestampMicrosecondType>();
        if ts.null_count() > 0 {
            return Err(Error::internal(
                "a row without a time value reached the writer",
            ));
        }
        let g = self.granularity;
        let values = ts.values();
        // Rows mostly arrive in time order: remember the current window.
        let mut cur = g.window_of(values[0]);
        let mut cur_ord = g.ordinal(values[0]);
        let mut groups: HashMap<i64, Vec<u32>> = HashMap::new();
        let mut single = true;
        for (i, t) in values.iter().enumerate() {
            if !cur.contains(*t) {
                cur = g.window_of(*t);
                cur_ord = g.ordinal(*t);
                single = false;
            }
            if !single {
                groups.entry(cur_ord).or_default().push(i as u32);
            }
        }
        if single {
            let ord = g.ordinal(values[0]);
            return self
                .writer_for(ord)
                .await?
                .write(batch)
                .await
                .map_err(|e| Error::storage("cannot write a data file", e));
        }
        // Rows before the first change all belong to the first window.
        let first = g.ordinal(values[0]);
        let first_change = values
            .iter()
            .position(|t| g.ordinal(*t) != first)
            .unwrap_or(values.len());
        let head: Vec<u32> = (0..first_change as u32).collect();
        groups.entry(first).or_default().splice(0..0, head);
        let mut ords: Vec<i64> = groups.keys().copied().collect();
        ords.sort_unstable();
        for ord in ords {
            let idx = UInt32Array::from(groups.remove(&ord).unwrap_or_default());
            let part = arrow_select::take::take_record_batch(&batch, &idx)
                .map_err(|e| Error::arrow("cannot split a batch by partition", e))?;
            self.writer_for(ord)
                .await?
                .write(part)
                .await
                .map_err(|e| Error::storage("cannot write a data file", e))?;
        }
        Ok(())
    }

    /// Closes every file; returns the data files to commit.
    pub async fn close(mut self) -> Result<(Vec<DataFile>, u64)> {
        for (_, mut w, _) in self.open.drain(..) {
            let files = w
                .close()
                .await
                .map_err(|e| Error::storage("cannot finish a data file", e))?;
            self.files.extend(files);
        }
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
}

impl Setup {
    /// The data file writers' builder: zstd, bounded row groups, and no
    /// dictionary for the columns [`plain_columns`] picks from `first`
    /// (whose time column is column `time_index`).
    fn builder(&self, first: &RecordBatch, time_index: usize) -> Result<Builder> {
        let md = self.table.metadata();
        let mut props = WriterProperties::builder();
        for name in plain_columns(first, time_index) {
            props = props.set_column_dictionary_enabled(ColumnPath::from(name), false);
        }
        let props = props
            .set_compression(Compression::ZSTD(self.level))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
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

/// The top-level columns written without a dictionary: the time column,
/// and every flat column whose values in a sample of `first` are mostly
/// distinct (sensor readings, ids, payloads).  For those a dictionary only
/// costs the writer a hash of every value and the file a dictionary as
/// large as the data; repetitive columns (units, sensor names) keep theirs.
fn plain_columns(first: &RecordBatch, time_index: usize) -> Vec<String> {
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
        .map(|(_, (field, _))| field.name().clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Float64Array, Int32Array, StringArray, TimestampMicrosecondArray};

    use super::*;

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
        assert_eq!(plain_columns(&batch, 1), ["id", "ts", "reading"]);
        // Too few values to judge: only the time column.
        assert_eq!(plain_columns(&batch.slice(0, 10), 1), ["ts"]);
    }
}
