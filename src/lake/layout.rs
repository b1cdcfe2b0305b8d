//! The archive table's layout — schema, partition spec and sort order — as
//! derived from the source table, and the proof that every engine can read it.
//!
//! The partition field is named after the time column, but Iceberg manifests
//! are Avro files, and an Avro field name must match `[A-Za-z_][A-Za-z0-9_]*`:
//! a column called `Recorded At`, `Zeït` or `ts-1` would otherwise produce
//! manifests that no reader (iceberg-rust, PyIceberg, Java) can parse.  The
//! name is made valid the way Java Iceberg sanitises Avro names, once, when
//! the table is created; it is stored in the spec and never recomputed.

use std::sync::Arc;

use iceberg::io::FileIO;
use iceberg::spec::{
    DataContentType, DataFileBuilder, DataFileFormat, Literal, ManifestWriterBuilder, NullOrder,
    PartitionSpec, Schema, SortDirection, SortField, SortOrder, Struct, UnboundPartitionSpec,
};

use crate::error::{Error, ErrorKind, Result};
use crate::plan::window::Granularity;
use crate::source::SourceTable;

/// Schema, partition spec and sort order of a new archive table.
#[derive(Debug, Clone)]
pub struct Layout {
    pub schema: Schema,
    pub spec: UnboundPartitionSpec,
    pub sort: SortOrder,
    /// The partition field's name, e.g. `recorded_at_day` or `Recorded_x20At_day`.
    pub partition_field: String,
}

/// The layout of a new archive table for `src`, partitioned by `g` of its time column.
pub fn derive(src: &SourceTable, g: Granularity) -> Result<Layout> {
    let schema = crate::lake::schema::derive_schema(src)?;
    let time = &src.time_column().name;
    let time_id = schema
        .field_by_name(time)
        .map(|f| f.id)
        .ok_or_else(|| Error::internal("time column not in schema"))?;
    let partition_field = if crate::fault::injected("legacy-partition-name") {
        format!("{time}_{}", g.name())
    } else {
        partition_field_name(time, g, &schema)
    };
    let spec = UnboundPartitionSpec::builder()
        .add_partition_field(time_id, &partition_field, g.transform())
        .map_err(|e| Error::iceberg("cannot build the partition spec", e))?
        .build();
    let sort = SortOrder::builder()
        .with_order_id(1)
        .with_sort_field(
            SortField::builder()
                .source_id(time_id)
                .direction(SortDirection::Ascending)
                .null_order(NullOrder::First)
                .transform(iceberg::spec::Transform::Identity)
                .build(),
        )
        .build(&schema)
        .map_err(|e| Error::iceberg("cannot build the sort order", e))?;
    Ok(Layout {
        schema,
        spec,
        sort,
        partition_field,
    })
}

/// `{column}_{transform}` as a valid Avro name that no column of `schema` has.
///
/// Characters outside `[A-Za-z0-9_]` become `_x` + their code point in upper
/// hex (Java Iceberg's `AvroSchemaUtil.makeCompatibleName`), a leading digit
/// gets a `_` before it; `_2`, `_3`, … are appended while the name is taken.
pub fn partition_field_name(column: &str, g: Granularity, schema: &Schema) -> String {
    let base = avro_compatible(&format!("{column}_{}", g.name()));
    let mut name = base.clone();
    let mut n = 2;
    while schema.field_by_name(&name).is_some() {
        name = format!("{base}_{n}");
        n += 1;
    }
    name
}

/// `name` made a valid Avro name (see [`partition_field_name`]).
pub fn avro_compatible(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, c) in name.chars().enumerate() {
        match c {
            'A'..='Z' | 'a'..='z' | '_' => out.push(c),
            '0'..='9' if i > 0 => out.push(c),
            '0'..='9' => {
                out.push('_');
                out.push(c);
            }
            _ => out.push_str(&format!("_x{:X}", c as u32)),
        }
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// True when `name` is a valid Avro name.
pub fn is_avro_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('A'..='Z' | 'a'..='z' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Proves that manifests of this layout can be written and read back by
/// iceberg-rust: one manifest entry with a partition value, written to memory
/// and parsed again.  Nothing leaves the process.
pub async fn prove_readable(schema: &Schema, spec: &PartitionSpec) -> Result<()> {
    let refuse = |e: iceberg::Error| {
        Error::new(
            ErrorKind::Schema,
            format!("the archive table's manifests would be unreadable: {e}"),
        )
        .with_hint("rename the time column, or report this layout as a bug; nothing was written")
    };
    let io = FileIO::new_with_memory();
    let path = "memory:///permafrost-layout-proof/manifest.avro";
    let out = io.new_output(path).map_err(refuse)?;
    let mut writer =
        ManifestWriterBuilder::new(out, Some(1), Arc::new(schema.clone()), spec.clone())
            .build_v2_data();
    let partition: Struct = spec
        .fields()
        .iter()
        .map(|_| Some(Literal::int(1)))
        .collect();
    let file = DataFileBuilder::default()
        .content(DataContentType::Data)
        .file_format(DataFileFormat::Parquet)
        .file_path("memory:///permafrost-layout-proof/data.parquet".to_string())
        .file_size_in_bytes(1)
        .record_count(1)
        .partition_spec_id(spec.spec_id())
        .partition(partition)
        .build()
        .map_err(|e| Error::internal(format!("cannot build a data file entry: {e}")))?;
    writer.add_file(file, 1).map_err(refuse)?;
    let manifest = writer.write_manifest_file().await.map_err(refuse)?;
    let read = manifest.load_manifest(&io).await.map_err(refuse)?;
    if read.entries().len() != 1 {
        return Err(Error::internal("the layout proof read back no entry"));
    }
    Ok(())
}

impl Layout {
    /// [`prove_readable`] for this layout.
    pub async fn prove_readable(&self) -> Result<()> {
        if crate::fault::injected("legacy-partition-name") {
            return Ok(());
        }
        let spec = self
            .spec
            .clone()
            .bind(Arc::new(self.schema.clone()))
            .map_err(|e| Error::iceberg("cannot build the partition spec", e))?;
        prove_readable(&self.schema, &spec).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_valid_avro_names() {
        assert_eq!(avro_compatible("recorded_at_day"), "recorded_at_day");
        assert_eq!(avro_compatible("Recorded At_day"), "Recorded_x20At_day");
        assert_eq!(avro_compatible("Zeït_day"), "Ze_xEFt_day");
        assert_eq!(avro_compatible("ts-1_hour"), "ts_x2D1_hour");
        assert_eq!(avro_compatible("1ts_day"), "_1ts_day");
        assert_eq!(avro_compatible("😀"), "_x1F600");
        for n in ["Recorded_x20At_day", "_1ts_day", "Ze_xEFt_day", "_x1F600"] {
            assert!(is_avro_name(n), "{n}");
        }
        for n in ["Recorded At_day", "1ts", "", "Zeït", "a.b"] {
            assert!(!is_avro_name(n), "{n}");
        }
    }
}
