//! Range partitions of a natively partitioned source table.
//!
//! With `drop_partitions`, a batch whose range is exactly tiled by whole leaf
//! partitions exports them under a write lock and drops them after the batch
//! is verified, in the same transaction — instead of deleting their rows.

use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::filter::quote_ident;
use crate::plan::window::{Micros, Window};
use crate::source::SourceTable;
use crate::source::introspect::TimeKind;

/// The `FROM (…) TO (…)` values of a range partition bound, `None` for
/// MINVALUE/MAXVALUE; `None` overall for a default partition.
pub fn bounds(expr: &str) -> Option<(Option<String>, Option<String>)> {
    let from = expr.find("FROM (")? + 6;
    let to_at = expr[from..].find(") TO (")? + from;
    let to = to_at + 6;
    let end = expr[to..].rfind(')')? + to;
    let value = |s: &str| {
        let s = s.trim();
        s.strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .map(|v| v.replace("''", "'"))
    };
    Some((value(&expr[from..to_at]), value(&expr[to..end])))
}

/// A leaf partition with finite bounds, in microseconds (UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// `schema.name`, quoted as needed (`regclass` text).
    pub name: String,
    pub range: Window,
}

/// The partitions of `src` that tile `range` exactly (no gap, nothing
/// sticking out), or `None` when they do not — a partition crossing a range
/// boundary, a default or sub-partitioned child, or a partition key that is
/// not the time column: then the rows are deleted as usual.
pub async fn tiling(
    client: &Client,
    src: &SourceTable,
    range: &Window,
) -> Result<Option<Vec<Partition>>> {
    if src.relkind != 'p' {
        return Ok(None);
    }
    let key: Option<String> = client
        .query_one("SELECT pg_get_partkeydef($1)", &[&src.oid])
        .await
        .map_err(|e| Error::postgres("cannot read the partition key", e))?
        .get(0);
    let ts = &src.time_column().name;
    let want = [
        format!("RANGE ({ts})"),
        format!("RANGE ({})", quote_ident(ts)),
    ];
    if !key.as_deref().is_some_and(|k| want.iter().any(|w| w == k)) {
        return Ok(None);
    }
    let ty = match src.time_kind() {
        TimeKind::Timestamp => "timestamp",
        TimeKind::Timestamptz => "timestamptz",
    };
    let rows = client
        .query(
            "SELECT c.oid::regclass::text, c.relkind::text, pg_get_expr(c.relpartbound, c.oid) \
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = $1",
            &[&src.oid],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the partitions", e))?;
    let mut inside = Vec::new();
    for r in rows {
        let name: String = r.get(0);
        let relkind: String = r.get(1);
        let bound: Option<String> = r.get(2);
        let Some((lo, hi)) = bound.as_deref().and_then(bounds) else {
            return Ok(None); // a default partition may hold rows of any range
        };
        let (Some(lo), Some(hi)) = (lo, hi) else {
            // MINVALUE/MAXVALUE: inside no finite range; fine if it stays out.
            continue;
        };
        let sql = format!(
            "SELECT (extract(epoch FROM $1::text::{ty}) * 1000000)::int8, (extract(epoch FROM $2::text::{ty}) * 1000000)::int8"
        );
        let row = client
            .query_one(&sql, &[&lo, &hi])
            .await
            .map_err(|e| Error::postgres("cannot read partition bounds", e))?;
        let p = Window {
            start: row.get::<_, Micros>(0),
            end: row.get::<_, Micros>(1),
        };
        if !p.overlaps(range) {
            continue;
        }
        if p.start < range.start || p.end > range.end || relkind != "r" {
            return Ok(None);
        }
        inside.push(Partition { name, range: p });
    }
    inside.sort_by_key(|p| p.range.start);
    let mut at = range.start;
    for p in &inside {
        if p.range.start != at {
            return Ok(None);
        }
        at = p.range.end;
    }
    Ok((at == range.end && !inside.is_empty()).then_some(inside))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_bounds() {
        assert_eq!(
            bounds("FOR VALUES FROM ('2024-01-01 00:00:00+00') TO ('2024-01-02 00:00:00+00')"),
            Some((
                Some("2024-01-01 00:00:00+00".into()),
                Some("2024-01-02 00:00:00+00".into())
            ))
        );
        assert_eq!(
            bounds("FOR VALUES FROM (MINVALUE) TO ('2024-01-02')"),
            Some((None, Some("2024-01-02".into())))
        );
        assert_eq!(bounds("DEFAULT"), None);
    }
}
