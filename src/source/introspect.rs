//! Reads a source table's shape from the Postgres catalog.

use serde::Serialize;
use tokio_postgres::Client;

use crate::config::TableConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::filter::{Filter, quote_ident};
use crate::types::PgKind;

/// One column of the source table.
#[derive(Debug, Clone, Serialize)]
pub struct SourceColumn {
    pub name: String,
    /// `format_type` of the declared type, e.g. `numeric(12,2)`.
    pub pg_type: String,
    pub not_null: bool,
    /// The mapping, or why the column cannot be archived.
    #[serde(skip)]
    pub kind: std::result::Result<PgKind, String>,
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

    /// The time column's kind (always a timestamp kind).
    pub fn time_kind(&self) -> PgKind {
        self.columns[self.time_index]
            .kind
            .clone()
            .unwrap_or(PgKind::Timestamptz)
    }

    /// The select list: every column, quoted, in table order.
    pub fn select_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Columns whose type cannot be archived, as `column (type): reason`.
    pub fn unsupported(&self) -> Vec<String> {
        self.columns
            .iter()
            .filter_map(|c| {
                c.kind
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
            "SELECT a.attname::text, a.atttypid, a.atttypmod, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
             t.typtype::text, a.attnum \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the table's columns", e))?;
    let mut columns = Vec::with_capacity(cols.len());
    let mut attnums = Vec::with_capacity(cols.len());
    for r in &cols {
        let name: String = r.get(0);
        let mut type_oid: u32 = r.get(1);
        let mut typmod: i32 = r.get(2);
        let pg_type: String = r.get(3);
        let not_null: bool = r.get(4);
        let mut typtype: String = r.get(5);
        attnums.push(r.get::<_, i16>(6));
        // Domains are stored as their base type.
        let mut base_name = pg_type.clone();
        let mut depth = 0;
        while typtype == "d" && depth < 16 {
            let b = client
                .query_one(
                    "SELECT t.typbasetype, t.typtypmod, format_type(t.typbasetype, t.typtypmod), b.typtype::text \
                     FROM pg_type t JOIN pg_type b ON b.oid = t.typbasetype WHERE t.oid = $1",
                    &[&type_oid],
                )
                .await
                .map_err(|e| Error::postgres("cannot resolve a domain type", e))?;
            type_oid = b.get(0);
            let tm: i32 = b.get(1);
            if tm >= 0 {
                typmod = tm;
            }
            base_name = b.get(2);
            typtype = b.get(3);
            depth += 1;
        }
        let kind = PgKind::from_pg(type_oid, typmod, &base_name);
        columns.push(SourceColumn {
            name,
            pg_type,
            not_null,
            kind,
        });
    }
    if columns.is_empty() {
        return Err(Error::new(
            ErrorKind::Schema,
            format!("table {}.{} has no columns", t.schema, t.name),
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
    if !matches!(tc.kind, Ok(k) if k.is_timestamp()) {
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

    let time_attnum = attnums[time_index];
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
