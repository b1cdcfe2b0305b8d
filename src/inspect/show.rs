//! `show`: the archive table's schema (with the recorded Postgres types),
//! partition spec, sort order, properties and schema history.

use std::collections::BTreeMap;

use iceberg::spec::Schema;
use iceberg::table::Table;
use serde::Serialize;

use crate::error::Result;
use crate::inspect::{SnapshotChoice, resolve_snapshot};
use crate::lake;
use crate::lake::table::{RecordedColumn, props};

/// The table as `show --json` prints it.
#[derive(Debug, Clone, Serialize)]
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

fn columns(schema: &Schema, recorded: &[RecordedColumn]) -> Vec<ColumnInfo> {
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
    let recorded: Vec<RecordedColumn> = md
        .properties()
        .get(props::PG_COLUMNS)
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default();
    let spec = md.default_partition_spec();
    let partition_spec = spec
        .fields()
        .iter()
        .map(|f| {
            let src = schema
                .field_by_id(f.source_id)
                .map(|s| s.name.clone())
                .unwrap_or_else(|| f.source_id.to_string());
            format!("{}({src}) as {}", f.transform, f.name)
        })
        .collect();
    let sort_order = md
        .default_sort_order()
        .fields
        .iter()
        .map(|f| {
            let src = schema
                .field_by_id(f.source_id)
                .map(|s| s.name.clone())
                .unwrap_or_else(|| f.source_id.to_string());
            format!("{src} {} {}", f.direction, f.null_order)
        })
        .collect();
    let mut schema_history: Vec<SchemaSpan> = Vec::new();
    for s in lake::commit::ancestry(table) {
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
