//! Running a validated query on one table: the pushed-down Iceberg scan, and
//! a page sorted over at most `offset + limit` rows (a bounded top-k).

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_ord::sort::{SortColumn, lexsort_to_indices};
use arrow_schema::{SchemaRef, SortOptions};
use futures::TryStreamExt;
use futures::stream::BoxStream;
use iceberg::table::Table;

use super::request::{QuerySpec, SortKey};
use crate::error::{Error, Result};
use crate::inspect::fetch::{open_scan, scan_predicate};
use crate::inspect::resolve_snapshot;

/// A scan under way: its batches, the data files it planned and the
/// snapshot it reads.
pub struct Scan {
    pub batches: BoxStream<'static, Result<RecordBatch>>,
    /// The Arrow schema of the scanned columns (for an empty answer).
    pub schema: SchemaRef,
    pub files: usize,
    pub snapshot_id: Option<i64>,
}

/// Starts the scan of `spec` over `columns` (the returned ones, plus sort
/// keys for a page).  An unknown snapshot is a `Catalog` error.
pub async fn scan(
    table: &Table,
    spec: &QuerySpec,
    time_column: &str,
    columns: &[String],
) -> Result<Scan> {
    let schema = table.metadata().current_schema();
    let arrow = Arc::new(
        iceberg::arrow::schema_to_arrow_schema(schema)
            .map_err(|e| Error::iceberg("cannot derive the Arrow schema", e))?,
    );
    let projected = Arc::new(
        arrow
            .project(
                &columns
                    .iter()
                    .filter_map(|c| arrow.index_of(c).ok())
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| Error::arrow("cannot project the schema", e))?,
    );
    let Some(snapshot) = resolve_snapshot(table, spec.snapshot)? else {
        return Ok(Scan {
            batches: Box::pin(futures::stream::empty()),
            schema: projected,
            files: 0,
            snapshot_id: None,
        });
    };
    let predicate = scan_predicate(schema, time_column, spec.range, spec.filter.as_ref())?;
    let (stream, files) = open_scan(
        (table, None),
        snapshot.snapshot_id(),
        predicate,
        Some(columns),
    )
    .await?;
    Ok(Scan {
        batches: stream,
        schema: projected,
        files,
        snapshot_id: Some(snapshot.snapshot_id()),
    })
}

/// Columns a page scans: the returned ones, then sort keys not among them.
pub fn scan_columns(spec: &QuerySpec) -> Vec<String> {
    let mut cols = spec.columns.clone();
    for k in &spec.order {
        if !cols.contains(&k.column) {
            cols.push(k.column.clone());
        }
    }
    cols
}

/// A sorted page and what it took.
pub struct Page {
    /// The page's rows, with the returned columns only.
    pub batch: RecordBatch,
    /// Rows that matched the filters (all of them were read).
    pub matched: u64,
}

/// Reads every matching row of `scan`, keeping the first `offset + limit` in
/// `spec.order`; returns rows `offset..offset + limit`.
pub async fn page(mut scan: Scan, spec: &QuerySpec) -> Result<Page> {
    let mut top = TopK::new(scan.schema.clone(), &spec.order, spec.offset + spec.limit)?;
    let mut matched = 0u64;
    while let Some(b) = scan.batches.try_next().await? {
        matched += b.num_rows() as u64;
        top.push(b)?;
    }
    let sorted = top.finish()?;
    let start = spec.offset.min(sorted.num_rows());
    let len = spec.limit.min(sorted.num_rows() - start);
    let indices: Vec<usize> = spec
        .columns
        .iter()
        .filter_map(|c| sorted.schema().index_of(c).ok())
        .collect();
    let batch = sorted
        .slice(start, len)
        .project(&indices)
        .map_err(|e| Error::arrow("cannot project the page", e))?;
    Ok(Page { batch, matched })
}

/// The first `k` rows in an order, over a stream of batches, holding at most
/// about `2k` rows (plus one batch) at a time.
struct TopK {
    schema: SchemaRef,
    keys: Vec<(String, SortOptions)>,
    k: usize,
    held: Vec<RecordBatch>,
    rows: usize,
}

impl TopK {
    fn new(schema: SchemaRef, order: &[SortKey], k: usize) -> Result<Self> {
        let keys = order
            .iter()
            .map(|key| {
                // Postgres' defaults: NULLS LAST ascending, NULLS FIRST descending.
                let options = SortOptions {
                    descending: key.descending,
                    nulls_first: key.descending,
                };
                (key.column.clone(), options)
            })
            .collect();
        Ok(Self {
            schema,
            keys,
            k,
            held: Vec::new(),
            rows: 0,
        })
    }

    fn push(&mut self, b: RecordBatch) -> Result<()> {
        if self.k == 0 || b.num_rows() == 0 {
            return Ok(());
        }
        self.rows += b.num_rows();
        self.held.push(b);
        if self.rows > 2 * self.k.max(4096) {
            self.shrink()?;
        }
        Ok(())
    }

    /// Sorts what is held and keeps the first `k` rows.
    fn shrink(&mut self) -> Result<()> {
        let schema = match self.held.first() {
            Some(b) => b.schema(),
            None => return Ok(()),
        };
        let all = arrow_select::concat::concat_batches(&schema, &self.held)
            .map_err(|e| Error::arrow("cannot gather the page", e))?;
        let columns = self
            .keys
            .iter()
            .map(|(name, options)| {
                let i = schema.index_of(name).map_err(|e| {
                    Error::internal(format!("sort key {name} was not scanned: {e}"))
                })?;
                Ok(SortColumn {
                    values: all.column(i).clone(),
                    options: Some(*options),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let indices = lexsort_to_indices(&columns, Some(self.k))
            .map_err(|e| Error::arrow("cannot sort the page", e))?;
        let kept = arrow_select::take::take_record_batch(&all, &indices)
            .map_err(|e| Error::arrow("cannot sort the page", e))?;
        self.rows = kept.num_rows();
        self.held = vec![kept];
        Ok(())
    }

    fn finish(mut self) -> Result<RecordBatch> {
        self.shrink()?;
        Ok(self
            .held
            .pop()
            .unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone())))
    }
}

/// The rows of `batch` as JSON objects (nulls included, timestamps RFC 3339).
pub fn rows_json(batch: &RecordBatch) -> Result<Vec<serde_json::Value>> {
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let mut w = arrow_json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow_json::writer::JsonArray>(Vec::new());
    w.write(batch)
        .and_then(|_| w.finish())
        .map_err(|e| Error::arrow("cannot encode the rows as JSON", e))?;
    serde_json::from_slice(&w.into_inner())
        .map_err(|e| Error::internal(format!("the JSON rows do not parse: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    fn batch(ids: Vec<Option<i64>>, names: Vec<&str>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    }

    #[test]
    fn top_k_keeps_the_first_rows_across_batches_with_postgres_null_order() {
        let order = vec![
            SortKey {
                column: "id".into(),
                descending: false,
            },
            SortKey {
                column: "name".into(),
                descending: false,
            },
        ];
        let b1 = batch(vec![Some(5), None, Some(1)], vec!["e", "n", "a"]);
        let mut top = TopK::new(b1.schema(), &order, 3).unwrap();
        top.push(b1).unwrap();
        top.push(batch(vec![Some(3), Some(1), Some(9)], vec!["c", "b", "i"]))
            .unwrap();
        let out = top.finish().unwrap();
        let json = rows_json(&out).unwrap();
        let ids: Vec<_> = json.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(ids, vec!["a", "b", "c"]);

        let desc = vec![SortKey {
            column: "id".into(),
            descending: true,
        }];
        let b = batch(vec![Some(5), None, Some(1)], vec!["e", "n", "a"]);
        let mut top = TopK::new(b.schema(), &desc, 2).unwrap();
        top.push(b).unwrap();
        let json = rows_json(&top.finish().unwrap()).unwrap();
        assert!(
            json[0]["id"].is_null(),
            "NULLS FIRST when descending: {json:?}"
        );
        assert_eq!(json[1]["id"], 5);
    }
}
