//! The restore target as Postgres describes it: its columns, primary key and
//! the partitions that overlap a range.  Read by validation and by
//! attach/merge alike.

use tokio_postgres::Client;

use super::pg;
use crate::error::Result;
use crate::plan::window::Window;
use crate::source::introspect::TimeKind;
use crate::source::partitions;

/// A partition of the target whose bounds overlap the range.
#[derive(Debug, Clone)]
pub struct Partition {
    pub name: String,
    /// Its bounds are exactly the range.
    pub exact: bool,
}

/// The partitions of `target` whose range overlaps `range` (a default
/// partition is not listed: rows it holds in the range are counted apart).
pub async fn overlapping_partitions(
    client: &Client,
    target: &str,
    kind: TimeKind,
    range: &Window,
) -> Result<Vec<Partition>> {
    Ok(partitions::list(client, target, kind)
        .await?
        .into_iter()
        .filter(|p| p.overlaps(range))
        .map(|p| Partition {
            exact: p.window() == Some(*range),
            name: p.name,
        })
        .collect())
}

/// A column of the target table.
#[derive(Debug, Clone)]
pub(crate) struct TargetColumn {
    pub name: String,
    pub pg_type: String,
    pub not_null: bool,
    pub has_default: bool,
    /// `attgenerated` is set: Postgres computes it.
    pub generated: bool,
    /// `GENERATED ALWAYS AS IDENTITY`.
    pub identity_always: bool,
}

pub(crate) async fn target_columns(client: &Client, target: &str) -> Result<Vec<TargetColumn>> {
    let rows = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull, atthasdef, \
                    attgenerated::text <> '', attidentity::text = 'a' \
             FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&target],
        )
        .await
        .map_err(pg("cannot read the target's columns"))?;
    Ok(rows
        .iter()
        .map(|r| TargetColumn {
            name: r.get(0),
            pg_type: r.get(1),
            not_null: r.get(2),
            has_default: r.get(3),
            generated: r.get(4),
            identity_always: r.get(5),
        })
        .collect())
}

/// The target's primary key columns (empty without one).
pub(crate) async fn primary_key(client: &Client, target: &str) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) ON true \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1::text::regclass AND i.indisprimary ORDER BY k.ord",
            &[&target],
        )
        .await
        .map_err(pg("cannot read the target's primary key"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The target's CHECK constraints: `(name, definition)`, by name.
pub(crate) async fn check_constraints(
    client: &Client,
    target: &str,
) -> Result<Vec<(String, String)>> {
    let rows = client
        .query(
            "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE conrelid = $1::text::regclass AND contype = 'c' ORDER BY conname",
            &[&target],
        )
        .await
        .map_err(pg("cannot read the target's CHECK constraints"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
