//! Reads a source table's shape from the Postgres catalog.

use serde::Serialize;
use tokio_postgres::Client;

use crate::config::TableConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::filter::{Filter, quote_ident};
use crate::types::{MapContext, Mapping, PgKind, TypeInfo, map_type, text_mapping};

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
    let rows = client
        .query(
            "SELECT c.oid, c.relkind::text, current_database()::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
            &[&t.schema, &t.name],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the Postgres catalog", e))?;
    let Some(row) = rows.first() else {
        let similar = client
            .query(
                "SELECT n.nspname::text || '.' || c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE lower(c.relname) = lower($1) AND c.relkind IN ('r','p','v','m','f') LIMIT 5",
                &[&t.name],
            )
            .await
            .map(|rs| rs.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>())
            .unwrap_or_default();
        let mut e = Error::new(
            ErrorKind::Schema,
            format!("table {}.{} does not exist", t.schema, t.name),
        );
        if !similar.is_empty() {
            e = e.with_hint(format!(
                "did you mean {}? (names are case-sensitive)",
                similar.join(", ")
            ));
        } else {
            e = e.with_hint("check `schema` and `name` of the table in the config");
        }
        return Err(e);
    };
    let oid: u32 = row.get(0);
    let relkind: String = row.get(1);
    let database: String = row.get(2);
    let relkind = relkind.chars().next().unwrap_or('?');
    if relkind != 'r' && relkind != 'p' {
        let what = match relkind {
            'v' => "a view",
            'm' => "a materialized view",
            'f' => "a foreign table",
            _ => "not a table",
        };
        return Err(Error::new(
            ErrorKind::Schema,
            format!("{}.{} is {what}", t.schema, t.name),
        )
        .with_hint("permafrost archives (and deletes from) ordinary or partitioned tables"));
    }

    let cols = client
        .query(
            "SELECT a.attname::text, a.atttypid, a.atttypmod, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attnum \
             FROM pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the table's columns", e))?;
    let ctx = map_context(client).await?;
    let names: Vec<String> = cols.iter().map(|r| r.get::<_, String>(0)).collect();
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
    let mut columns = Vec::with_capacity(cols.len());
    for r in &cols {
        let name: String = r.get(0);
        let type_oid: u32 = r.get(1);
        let typmod: i32 = r.get(2);
        let pg_type: String = r.get(3);
        let not_null: bool = r.get(4);
        let attnum: i16 = r.get(5);
        let info = resolve_type(client, type_oid, typmod, 0).await?;
        let mapping = if t.text_columns.contains(&name) {
            Ok(text_mapping(&info))
        } else {
            map_type(&info, ctx)
        };
        let excluded = t.exclude_columns.contains(&name);
        columns.push(SourceColumn {
            name,
            pg_type,
            not_null,
            attnum,
            excluded,
            mapping,
        });
    }
    if columns.iter().all(|c| c.excluded) {
        return Err(Error::new(
            ErrorKind::Schema,
            format!("table {}.{} has no archived columns", t.schema, t.name),
        ));
    }

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

    let pk_rows = client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) ON true \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
            &[&oid],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the primary key", e))?;
    let primary_key = pk_rows.iter().map(|r| r.get::<_, String>(0)).collect();

    let time_attnum = columns[time_index].attnum;
    let idx = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = $1 AND i.indkey[0] = $2) \
             OR EXISTS (SELECT 1 FROM pg_inherits h JOIN pg_index i ON i.indrelid = h.inhrelid \
                        JOIN pg_attribute a ON a.attrelid = h.inhrelid AND a.attnum = i.indkey[0] \
                        WHERE h.inhparent = $1 AND a.attname = $3)",
            &[&oid, &time_attnum, &t.timestamp_column],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the table's indexes", e))?;
    let time_indexed: bool = idx.get(0);

    let filter_sql = match &t.filter {
        None => None,
        Some(f) => {
            let parsed = Filter::parse(f)?;
            let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
            parsed
                .validate_columns(&names)
                .map_err(|e| e.prefixed(format!("table {}.{}", t.schema, t.name)))?;
            let sql = parsed.to_sql();
            // Let Postgres type-check the literals against the columns.
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
            Some(sql)
        }
    };

    Ok(SourceTable {
        oid,
        database,
        schema: t.schema.clone(),
        name: t.name.clone(),
        relkind,
        columns,
        primary_key,
        time_index,
        time_indexed,
        filter_sql,
    })
}

/// Session facts the mappings depend on.
pub async fn map_context(client: &Client) -> Result<MapContext> {
    let row = client
        .query_one("SELECT scale('1'::money::numeric)", &[])
        .await
        .map_err(|e| Error::postgres("cannot read the money format", e))?;
    let scale: i32 = row.get(0);
    Ok(MapContext {
        money_scale: scale.clamp(0, 18) as u8,
    })
}

/// What the Postgres catalog says about type `oid` (recursively: domains,
/// array elements, composite fields).
pub fn resolve_type<'a>(
    client: &'a Client,
    oid: u32,
    typmod: i32,
    depth: u32,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<TypeInfo>> + Send + 'a>> {
    Box::pin(async move {
        if depth > 16 {
            return Err(Error::new(
                ErrorKind::Schema,
                format!("type {oid} nests too deeply"),
            ));
        }
        let r = client
            .query_one(
                "SELECT t.typname::text, t.typtype::text, t.typcategory::text, t.typelem, t.typbasetype, t.typtypmod, \
                 t.typrelid, format_type(t.oid, $2) FROM pg_type t WHERE t.oid = $1",
                &[&oid, &typmod],
            )
            .await
            .map_err(|e| Error::postgres("cannot read a column type", e))?;
        let typname: String = r.get(0);
        let typtype = r.get::<_, String>(1).chars().next().unwrap_or('b');
        let category = r.get::<_, String>(2).chars().next().unwrap_or('X');
        let elem: u32 = r.get(3);
        let basetype: u32 = r.get(4);
        let typtypmod: i32 = r.get(5);
        let relid: u32 = r.get(6);
        let display: String = r.get(7);
        let mut info = TypeInfo {
            oid,
            typmod,
            display,
            typname,
            typtype,
            ..Default::default()
        };
        if typtype == 'd' {
            let m = if typtypmod >= 0 { typtypmod } else { typmod };
            info.base = Some(Box::new(
                resolve_type(client, basetype, m, depth + 1).await?,
            ));
        } else if category == 'A' && elem != 0 {
            info.element = Some(Box::new(
                resolve_type(client, elem, typmod, depth + 1).await?,
            ));
        } else if typtype == 'c' {
            let fields = client
                .query(
                    "SELECT attname::text, atttypid, atttypmod FROM pg_attribute \
                     WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                    &[&relid],
                )
                .await
                .map_err(|e| Error::postgres("cannot read a composite type", e))?;
            for f in fields {
                let ft = resolve_type(client, f.get(1), f.get(2), depth + 1).await?;
                info.fields.push((f.get(0), ft));
            }
        }
        Ok(info)
    })
}
