//! Reads a source table's shape from the Postgres catalog.

use serde::Serialize;
use tokio_postgres::Client;

use super::catalog;
use crate::config::TableConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::filter::{Filter, quote_ident};
use crate::types::{Mapping, PgKind, map_type, text_mapping};

/// One column of the source table.
#[derive(Debug, Clone, Serialize)]
pub struct SourceColumn {
    pub name: String,
    /// `format_type` of the declared type, e.g. `numeric(12,2)`.
    pub pg_type: String,
    pub not_null: bool,
    /// `pg_attribute.attnum`: stable across renames.
    pub attnum: i16,
    /// Listed in `exclude_columns`: not archived.
    pub excluded: bool,
    /// The mapping, or why the column cannot be archived.
    #[serde(skip)]
    pub mapping: std::result::Result<Mapping, String>,
}

impl SourceColumn {
    /// The decoder kind, when the column can be archived.
    pub fn kind(&self) -> std::result::Result<PgKind, String> {
        self.mapping
            .as_ref()
            .map(|m| m.kind.clone())
            .map_err(Clone::clone)
    }
}

/// The type of the time column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeKind {
    /// `timestamp`: values read as UTC.
    Timestamp,
    /// `timestamptz`.
    Timestamptz,
}

/// A source table as permafrost needs it.
#[derive(Debug, Clone)]
pub struct SourceTable {
    pub oid: u32,
    pub database: String,
    pub schema: String,
    pub name: String,
    /// `r` (table) or `p` (partitioned table).
    pub relkind: char,
    pub columns: Vec<SourceColumn>,
    pub primary_key: Vec<String>,
    /// Index of the time column in `columns`.
    pub time_index: usize,
    /// True when an index leads with the time column.
    pub time_indexed: bool,
    /// The validated row filter, rendered to SQL.
    pub filter_sql: Option<String>,
}

impl SourceTable {
    /// `database.schema.table`: the value of `permafrost.source`.
    pub fn source_id(&self) -> String {
        format!("{}.{}.{}", self.database, self.schema, self.name)
    }

    /// The quoted `"schema"."table"`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// The time column.
    pub fn time_column(&self) -> &SourceColumn {
        &self.columns[self.time_index]
    }

    /// Whether the time column is `timestamp` or `timestamptz`.
    pub fn time_kind(&self) -> TimeKind {
        match self.columns[self.time_index].kind() {
            Ok(PgKind::Timestamp) => TimeKind::Timestamp,
            _ => TimeKind::Timestamptz,
        }
    }

    /// Columns that are archived (not excluded), in table order.
    pub fn archived_columns(&self) -> impl Iterator<Item = &SourceColumn> {
        self.columns.iter().filter(|c| !c.excluded)
    }

    /// The select list: every column, quoted, in table order.
    pub fn select_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Archived columns whose type cannot be archived, as `column (type): reason`.
    pub fn unsupported(&self) -> Vec<String> {
        self.archived_columns()
            .filter_map(|c| {
                c.mapping
                    .as_ref()
                    .err()
                    .map(|why| format!("column `{}` ({}): {why}", c.name, c.pg_type))
            })
            .collect()
    }
}

/// Looks up `t` and validates it: table exists, time column exists and is a
/// timestamp, the filter names real columns.  Unsupported column types are
/// reported by [`SourceTable::unsupported`], not here, so `check` can list them all.
pub async fn introspect(client: &Client, t: &TableConfig) -> Result<SourceTable> {
    let rel = relation(client, t).await?;
    let columns = source_columns(client, t, rel.oid).await?;
    let time_index = time_column(t, &columns)?;
    let filter = async {
        match &t.filter {
            None => Ok(None),
            Some(f) => compile_filter(client, t, f, &columns).await.map(Some),
        }
    };
    let attnum = columns[time_index].attnum;
    let (primary_key, time_indexed, filter_sql) = futures::try_join!(
        catalog::primary_key(client, rel.oid),
        catalog::leads_an_index(client, rel.oid, attnum, &t.timestamp_column),
        filter
    )?;
    Ok(SourceTable {
        oid: rel.oid,
        database: rel.database,
        schema: t.schema.clone(),
        name: t.name.clone(),
        relkind: rel.relkind,
        columns,
        primary_key,
        time_index,
        time_indexed,
        filter_sql,
    })
}

/// The configured table: it exists (else a hint names similar tables) and
/// is an ordinary or partitioned table.
async fn relation(client: &Client, t: &TableConfig) -> Result<catalog::Relation> {
    let Some(rel) = catalog::find_relation(client, &t.schema, &t.name).await? else {
        let similar = catalog::similar_names(client, &t.name).await;
        let e = Error::new(
            ErrorKind::Schema,
            format!("table {}.{} does not exist", t.schema, t.name),
        );
        return Err(if similar.is_empty() {
            e.with_hint("check `schema` and `name` of the table in the config")
        } else {
            e.with_hint(format!(
                "did you mean {}? (names are case-sensitive)",
                similar.join(", ")
            ))
        });
    };
    let what = match rel.relkind {
        'r' | 'p' => return Ok(rel),
        'v' => "a view",
        'm' => "a materialized view",
        'f' => "a foreign table",
        _ => "not a table",
    };
    Err(Error::new(
        ErrorKind::Schema,
        format!("{}.{} is {what}", t.schema, t.name),
    )
    .with_hint("permafrost archives (and deletes from) ordinary or partitioned tables"))
}

/// The table's columns with their mappings; `exclude_columns` and
/// `text_columns` must name real columns, and leave one archived.
async fn source_columns(client: &Client, t: &TableConfig, oid: u32) -> Result<Vec<SourceColumn>> {
    let cols = catalog::columns(client, oid).await?;
    let names: Vec<String> = cols.iter().map(|c| c.name.clone()).collect();
    for (key, list) in [
        ("exclude_columns", &t.exclude_columns),
        ("text_columns", &t.text_columns),
    ] {
        if let Some(bad) = list.iter().find(|c| !names.contains(c)) {
            return Err(Error::config(format!(
                "`{key}` of {}.{} names `{bad}`, which is not a column",
                t.schema, t.name
            ))
            .with_hint(format!("columns: {}", names.join(", "))));
        }
    }
    if t.exclude_columns.contains(&t.timestamp_column)
        || t.text_columns.contains(&t.timestamp_column)
    {
        return Err(Error::config(format!(
            "the time column `{}` cannot be excluded or archived as text",
            t.timestamp_column
        )));
    }
    // One round trip for all the types (tokio-postgres pipelines them).
    let (ctx, types) = futures::try_join!(
        catalog::map_context(client),
        futures::future::try_join_all(
            cols.iter()
                .map(|c| catalog::resolve_type(client, c.type_oid, c.typmod, 0))
        )
    )?;
    let mut columns = Vec::with_capacity(cols.len());
    for (c, info) in cols.into_iter().zip(types) {
        let mapping = if t.text_columns.contains(&c.name) {
            Ok(text_mapping(&info))
        } else {
            map_type(&info, ctx)
        };
        columns.push(SourceColumn {
            excluded: t.exclude_columns.contains(&c.name),
            name: c.name,
            pg_type: c.pg_type,
            not_null: c.not_null,
            attnum: c.attnum,
            mapping,
        });
    }
    if columns.iter().all(|c| c.excluded) {
        return Err(Error::new(
            ErrorKind::Schema,
            format!("table {}.{} has no archived columns", t.schema, t.name),
        ));
    }
    Ok(columns)
}

/// The index of `timestamp_column`, which must be a timestamp or timestamptz.
fn time_column(t: &TableConfig, columns: &[SourceColumn]) -> Result<usize> {
    let Some(time_index) = columns.iter().position(|c| c.name == t.timestamp_column) else {
        let names: Vec<_> = columns.iter().map(|c| c.name.clone()).collect();
        return Err(Error::new(
            ErrorKind::Schema,
            format!(
                "column `{}` does not exist in {}.{}",
                t.timestamp_column, t.schema, t.name
            ),
        )
        .with_hint(format!(
            "`timestamp_column` must be one of: {}",
            names.join(", ")
        )));
    };
    let tc = &columns[time_index];
    if !matches!(&tc.mapping, Ok(m) if m.kind.is_timestamp() && m.cast.is_none()) {
        return Err(Error::new(
            ErrorKind::Schema,
            format!(
                "time column `{}` of {}.{} is {}, not timestamp or timestamptz",
                tc.name, t.schema, t.name, tc.pg_type
            ),
        )
        .with_hint("windows are cut on a timestamp column; pick another `timestamp_column`"));
    }
    Ok(time_index)
}

/// The row filter as SQL, its columns checked and its literals type-checked
/// by Postgres against the columns.
async fn compile_filter(
    client: &Client,
    t: &TableConfig,
    filter: &str,
    columns: &[SourceColumn],
) -> Result<String> {
    let parsed = Filter::parse(filter)?;
    let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
    parsed
        .validate_columns(&names)
        .map_err(|e| e.prefixed(format!("table {}.{}", t.schema, t.name)))?;
    let sql = parsed.to_sql();
    let probe = format!(
        "SELECT 1 FROM {}.{} WHERE {sql} LIMIT 0",
        quote_ident(&t.schema),
        quote_ident(&t.name)
    );
    client.execute(probe.as_str(), &[]).await.map_err(|e| {
        Error::postgres(
            format!(
                "the filter of {}.{} does not fit its columns",
                t.schema, t.name
            ),
            e,
        )
    })?;
    Ok(sql)
}
