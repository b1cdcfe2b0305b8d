//! `show`: the archive table's schema (with the recorded Postgres types),
//! partition spec, sort order, properties and schema history.

use std::collections::BTreeMap;

use iceberg::spec::Schema;
use iceberg::table::Table;
use serde::Serialize;

use crate::error::Result;
use crate::inspect::{SnapshotChoice, resolve_snapshot};
use crate::lake;
use crate::lake::table::RecordedColumn;
use crate::ledger::props;
use crate::plan::window::{Granularity, Window};

/// The table as `show --json` prints it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "query", derive(utoipa::ToSchema))]
pub struct TableInfo {
    pub table: String,
    pub location: String,
    pub format_version: u8,
    pub snapshot_id: Option<i64>,
    /// The schema of the chosen snapshot (the current one by default).
    pub schema_id: i32,
    pub columns: Vec<ColumnInfo>,
    pub partition_spec: Vec<String>,
    pub sort_order: Vec<String>,
    pub properties: BTreeMap<String, String>,
    /// Which schema each stretch of history was written with.
    pub schema_history: Vec<SchemaSpan>,
}

/// A column of the shown schema.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "query", derive(utoipa::ToSchema))]
pub struct ColumnInfo {
    pub id: i32,
    pub name: String,
    pub iceberg_type: String,
    pub required: bool,
    /// The Postgres type recorded when the column was last archived.
    pub postgres_type: Option<String>,
}

/// Snapshots written with one schema.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "query", derive(utoipa::ToSchema))]
pub struct SchemaSpan {
    pub schema_id: i32,
    pub first_snapshot: i64,
    pub last_snapshot: i64,
    pub snapshots: usize,
    pub columns: Vec<String>,
}

fn describe_type(t: &iceberg::spec::Type) -> String {
    use iceberg::spec::Type;
    match t {
        Type::Primitive(p) => p.to_string(),
        Type::List(l) => format!("list<{}>", describe_type(&l.element_field.field_type)),
        Type::Map(m) => {
            format!(
                "map<{}, {}>",
                describe_type(&m.key_field.field_type),
                describe_type(&m.value_field.field_type)
            )
        }
        Type::Struct(s) => format!(
            "struct<{}>",
            s.fields()
                .iter()
                .map(|f| format!("{}: {}", f.name, describe_type(&f.field_type)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The columns of `schema`, with the Postgres types recorded for them.
pub fn columns(schema: &Schema, recorded: &[RecordedColumn]) -> Vec<ColumnInfo> {
    schema
        .as_struct()
        .fields()
        .iter()
        .map(|f| ColumnInfo {
            id: f.id,
            name: f.name.clone(),
            iceberg_type: describe_type(&f.field_type),
            required: f.required,
            postgres_type: recorded
                .iter()
                .find(|r| r.name == f.name)
                .map(|r| r.pg_type.clone())
                .or_else(|| {
                    f.doc
                        .as_deref()
                        .and_then(|d| d.strip_prefix("postgres: "))
                        .map(str::to_string)
                }),
        })
        .collect()
}

/// The windows the current snapshot's data spans, from the partition bounds
/// of its manifest list (one small file read; no manifest is opened).
/// `None` for an empty table or one partitioned some other way.
pub async fn archived_range(table: &Table, g: Granularity) -> Result<Option<Window>> {
    let spec_id = table.metadata().default_partition_spec_id();
    let (data, _) = lake::maintenance::current_manifests(table).await?;
    let mut range: Option<(i64, i64)> = None;
    for m in data.iter().filter(|m| m.partition_spec_id == spec_id) {
        let Some(Some(f)) = m.partitions.as_ref().map(|p| p.first()) else {
            continue;
        };
        // Partition values of the time transforms are ints, stored little-endian.
        let ordinal = |b: &[u8]| {
            <[u8; 4]>::try_from(b)
                .ok()
                .map(|b| i32::from_le_bytes(b) as i64)
        };
        let lo = f.lower_bound.as_deref().and_then(|b| ordinal(b));
        let hi = f.upper_bound.as_deref().and_then(|b| ordinal(b));
        if let (Some(lo), Some(hi)) = (lo, hi) {
            range = Some(match range {
                Some((a, b)) => (a.min(lo), b.max(hi)),
                None => (lo, hi),
            });
        }
    }
    Ok(range.map(|(lo, hi)| Window {
        start: g.window(lo).start,
        end: g.window(hi).end,
    }))
}

/// The name of field `id` in `schema` (its id when the schema lacks it).
fn column_name(schema: &Schema, id: i32) -> String {
    schema
        .field_by_id(id)
        .map_or_else(|| id.to_string(), |s| s.name.clone())
}

/// The default partition spec, one `transform(column) as field` per field.
pub fn partition_spec(table: &Table, schema: &Schema) -> Vec<String> {
    table
        .metadata()
        .default_partition_spec()
        .fields()
        .iter()
        .map(|f| {
            let src = column_name(schema, f.source_id);
            format!("{}({src}) as {}", f.transform, f.name)
        })
        .collect()
}

/// The Postgres columns recorded in the table's properties.
pub fn recorded_columns(table: &Table) -> Vec<RecordedColumn> {
    table
        .metadata()
        .properties()
        .get(props::PG_COLUMNS)
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default()
}

/// Describes the table at `choice`.
pub fn show(table: &Table, choice: SnapshotChoice) -> Result<TableInfo> {
    let md = table.metadata();
    let snapshot = resolve_snapshot(table, choice)?;
    let schema = match &snapshot {
        Some(s) => s
            .schema(md)
            .map_err(|e| crate::error::Error::iceberg("cannot find the snapshot's schema", e))?,
        None => md.current_schema().clone(),
    };
    let recorded = recorded_columns(table);
    let partition_spec = partition_spec(table, &schema);
    let sort_order = md
        .default_sort_order()
        .fields
        .iter()
        .map(|f| {
            let src = column_name(&schema, f.source_id);
            format!("{src} {} {}", f.direction, f.null_order)
        })
        .collect();
    let mut schema_history: Vec<SchemaSpan> = Vec::new();
    for s in crate::ledger::read::ancestry(table) {
        let id = s.schema_id().unwrap_or(md.current_schema_id());
        match schema_history.last_mut() {
            Some(span) if span.schema_id == id => {
                span.last_snapshot = s.snapshot_id();
                span.snapshots += 1;
            }
            _ => schema_history.push(SchemaSpan {
                schema_id: id,
                first_snapshot: s.snapshot_id(),
                last_snapshot: s.snapshot_id(),
                snapshots: 1,
                columns: md
                    .schema_by_id(id)
                    .map(|sc| {
                        sc.as_struct()
                            .fields()
                            .iter()
                            .map(|f| f.name.clone())
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
        }
    }
    Ok(TableInfo {
        table: table.identifier().to_string(),
        location: md.location().to_string(),
        format_version: md.format_version() as u8,
        snapshot_id: snapshot.map(|s| s.snapshot_id()),
        schema_id: schema.schema_id(),
        columns: columns(&schema, &recorded),
        partition_spec,
        sort_order,
        properties: md
            .properties()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        schema_history,
    })
}
