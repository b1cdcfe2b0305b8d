//! The Iceberg schema derived from a Postgres source table, and the Postgres
//! columns recorded beside it (`permafrost.pg-columns`).

use std::sync::Arc;

use iceberg::spec::{NestedField, Schema};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::source::SourceTable;

/// A column as recorded in `permafrost.pg-columns`: enough to recreate the
/// Postgres DDL and to read the archived values back into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedColumn {
    pub name: String,
    /// `format_type` of the Postgres type, e.g. `numeric(12,2)`, `inet[]`.
    #[serde(rename = "type")]
    pub pg_type: String,
    pub not_null: bool,
    /// `pg_attribute.attnum`.
    #[serde(default)]
    pub attnum: i16,
    /// `binary`, `text`, `numeric` or `int8`: how the value was read.
    #[serde(default)]
    pub encoding: String,
    /// False for `exclude_columns`: not in the archive.
    #[serde(default = "yes")]
    pub archived: bool,
}

fn yes() -> bool {
    true
}

/// The Iceberg schema for `src`: field ids 1..n for the archived columns in
/// table order (nested fields numbered after them), `required` for NOT NULL
/// columns, the primary key as identifier fields.
pub fn derive_schema(src: &SourceTable) -> Result<Schema> {
    if let Some(bad) = src.unsupported().into_iter().next() {
        return Err(Error::new(ErrorKind::Schema, format!("{}: {bad}", src.qualified())).with_hint(
            "permafrost refuses columns it cannot store losslessly; nothing was changed (see README, \"Types\")",
        ));
    }
    let archived: Vec<_> = src.archived_columns().collect();
    let mut next_id = archived.len() as i32;
    let mut fields = Vec::with_capacity(archived.len());
    for (i, c) in archived.iter().enumerate() {
        let id = i as i32 + 1;
        let kind = c.kind().map_err(|e| Error::new(ErrorKind::Schema, e))?;
        let ty = kind.iceberg_type(&mut next_id);
        let f = if c.not_null {
            NestedField::required(id, &c.name, ty)
        } else {
            NestedField::optional(id, &c.name, ty)
        };
        fields.push(Arc::new(f.with_doc(format!("postgres: {}", c.pg_type))));
    }
    let pk_ids: Vec<i32> = src
        .primary_key
        .iter()
        .filter_map(|k| {
            archived
                .iter()
                .position(|c| &c.name == k)
                .map(|p| p as i32 + 1)
        })
        .collect();
    let mut b = Schema::builder().with_schema_id(0).with_fields(fields);
    if !pk_ids.is_empty() && pk_ids.len() == src.primary_key.len() {
        b = b.with_identifier_field_ids(pk_ids);
    }
    b.build()
        .map_err(|e| Error::iceberg("cannot build the Iceberg schema", e))
}

/// The columns as recorded in `permafrost.pg-columns`.
pub fn recorded_columns(src: &SourceTable) -> Vec<RecordedColumn> {
    src.columns
        .iter()
        .map(|c| RecordedColumn {
            name: c.name.clone(),
            pg_type: c.pg_type.clone(),
            not_null: c.not_null,
            attnum: c.attnum,
            encoding: c
                .mapping
                .as_ref()
                .map(|m| m.encoding().to_string())
                .unwrap_or_default(),
            archived: !c.excluded,
        })
        .collect()
}
