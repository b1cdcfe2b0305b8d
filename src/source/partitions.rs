//! Range partitions of a natively partitioned source table.
//!
//! With `drop_partitions`, a batch whose range is exactly tiled by whole leaf
//! partitions exports them under a write lock and drops them after the batch
//! is verified, in the same transaction — instead of deleting their rows.

use tokio_postgres::Client;
use tokio_postgres::types::Type;

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

/// A partition of a range-partitioned table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// `schema.name`, quoted as needed (`regclass` text).
    pub name: String,
    /// `r` (a table) or `p` (itself partitioned).
    pub relkind: char,
    /// Its bounds in microseconds (UTC), `None` for MINVALUE/MAXVALUE;
    /// `None` overall for a default partition.
    pub bounds: Option<(Option<Micros>, Option<Micros>)>,
}

impl Partition {
    /// True when its bounds overlap `range` (a default partition never does).
    pub fn overlaps(&self, range: &Window) -> bool {
        match self.bounds {
            Some((lo, hi)) => {
                lo.is_none_or(|lo| lo < range.end) && hi.is_none_or(|hi| hi > range.start)
            }
            None => false,
        }
    }

    /// Its finite bounds as a window.
    pub fn window(&self) -> Option<Window> {
        match self.bounds {
            Some((Some(start), Some(end))) => Some(Window { start, end }),
            _ => None,
        }
    }
}

/// The partition key of `rel` (`regclass` text) as Postgres prints it,
/// e.g. `RANGE (ts)`; `None` for a table that is not partitioned.
pub async fn partition_key(client: &Client, rel: &str) -> Result<Option<String>> {
    Ok(client
        .query_typed_one(
            "SELECT pg_get_partkeydef($1::text::regclass)",
            &[(&rel, Type::TEXT)],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the partition key", e))?
        .get(0))
}

/// True when `key` is a range partitioning on column `ts` alone.
pub fn is_range_on(key: Option<&str>, ts: &str) -> bool {
    key.is_some_and(|k| k == format!("RANGE ({ts})") || k == format!("RANGE ({})", quote_ident(ts)))
}

/// The comment a batch leaves on a partition it emptied because its
/// `DROP` was held up or refused: a later run drops it (see
/// [`emptied`]).
pub const EMPTIED_COMMENT: &str =
    "permafrost: archived and emptied (its DROP was held up); a later archive run drops it";

/// The leaf partitions of `parent` that carry [`EMPTIED_COMMENT`].
pub async fn emptied(client: &Client, parent: &str) -> Result<Vec<String>> {
    let rows = client
        .query_typed(
            "SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             JOIN pg_description d ON d.objoid = c.oid AND d.classoid = 'pg_class'::regclass \
             AND d.objsubid = 0 \
             WHERE i.inhparent = $1::text::regclass AND c.relkind = 'r' AND d.description = $2 \
             ORDER BY 1",
            &[(&parent, Type::TEXT), (&EMPTIED_COMMENT, Type::TEXT)],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the emptied partitions", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The direct partitions of `parent` (`regclass` text), their bounds read
/// as the time column's type `kind` (`timestamp` bounds as UTC).
pub async fn list(client: &Client, parent: &str, kind: TimeKind) -> Result<Vec<Partition>> {
    let rows = client
        .query_typed(
            "SELECT c.oid::regclass::text, c.relkind::text, pg_get_expr(c.relpartbound, c.oid) \
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = $1::text::regclass",
            &[(&parent, Type::TEXT)],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the partitions", e))?;
    // NULL: a partition dropped while the catalog was read (another batch
    // of the run archived it); it holds no rows any more.
    let rows: Vec<_> = rows
        .into_iter()
        .filter_map(|r| {
            let bound = r.get::<_, Option<String>>(2)?;
            Some((r.get::<_, String>(0), r.get::<_, String>(1), bounds(&bound)))
        })
        .collect();
    let (lo, hi): (Vec<Option<String>>, Vec<Option<String>>) =
        rows.iter().filter_map(|(_, _, b)| b.clone()).unzip();
    let mut micros = bound_micros(client, kind, &lo, &hi).await?.into_iter();
    let mut out = Vec::with_capacity(rows.len());
    for (name, relkind, b) in rows {
        let bounds = match b {
            None => None,
            Some(_) => Some(
                micros
                    .next()
                    .ok_or_else(|| Error::internal("a partition bound was not converted"))?,
            ),
        };
        out.push(Partition {
            name,
            relkind: relkind.chars().next().unwrap_or('?'),
            bounds,
        });
    }
    Ok(out)
}

/// The bounds `lo[i]`, `hi[i]` (text, `None` for MINVALUE/MAXVALUE) read as
/// the time column's type `kind` in microseconds (`timestamp` bounds as
/// UTC), in one round trip; an infinite (or unrepresentably far) bound is
/// unbounded, like MINVALUE/MAXVALUE.
async fn bound_micros(
    client: &Client,
    kind: TimeKind,
    lo: &[Option<String>],
    hi: &[Option<String>],
) -> Result<Vec<(Option<Micros>, Option<Micros>)>> {
    if lo.is_empty() {
        return Ok(vec![]);
    }
    let ty = match kind {
        TimeKind::Timestamp => "timestamp",
        TimeKind::Timestamptz => "timestamptz",
    };
    let us = |x: &str| {
        format!(
            "CASE WHEN isfinite({x}) AND {x} < '200000-01-01' THEN (extract(epoch FROM {x}) * 1000000)::int8 END"
        )
    };
    let sql = format!(
        "SELECT {}, {} FROM (SELECT a::{ty} AS a, b::{ty} AS b, i \
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(a, b, i)) v ORDER BY i",
        us("a"),
        us("b")
    );
    let rows = client
        .query_typed(&sql, &[(&lo, Type::TEXT_ARRAY), (&hi, Type::TEXT_ARRAY)])
        .await
        .map_err(|e| Error::postgres("cannot read partition bounds", e))?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, Option<Micros>>(0), r.get::<_, Option<Micros>>(1)))
        .collect())
}

/// What keeps the partitions of `parent` from being dropped without
/// `CASCADE`, if anything: a foreign key that references the table or a
/// partition, a view (or rule) of another relation that reads a
/// partition by name, or a partition the session's role does not own
/// (`DROP` is the owner's; its rows need only `DELETE`).  Their rows can
/// still be deleted.  Found before anything is archived: a `DROP` refused
/// after the batch's commit would leave it unsettled, and every later run
/// archiving a marker to settle it and failing again.
pub async fn held_by_others(client: &Client, parent: &str) -> Result<Option<String>> {
    let row = client
        .query_typed_one(
            "WITH parts AS (SELECT inhrelid AS oid FROM pg_inherits WHERE inhparent = $1::text::regclass) \
             SELECT (SELECT format('foreign key %I of %s references it', conname, conrelid::regclass) \
                     FROM pg_constraint WHERE contype = 'f' AND conparentid = 0 \
                       AND (confrelid = $1::text::regclass OR confrelid IN (SELECT oid FROM parts)) \
                     ORDER BY 1 LIMIT 1), \
                    (SELECT format('%s reads partition %s', r.ev_class::regclass, d.refobjid::regclass) \
                     FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid \
                     WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass \
                       AND d.refobjid IN (SELECT oid FROM parts) AND d.deptype = 'n' \
                       AND r.ev_class NOT IN (SELECT oid FROM parts) ORDER BY 1 LIMIT 1), \
                    (SELECT format('partition %s is owned by %s, not by %s', oid::regclass, \
                                   relowner::regrole, current_user) \
                     FROM pg_class WHERE oid IN (SELECT oid FROM parts) \
                       AND NOT pg_has_role(relowner, 'USAGE') ORDER BY 1 LIMIT 1)",
            &[(&parent, Type::TEXT)],
        )
        .await
        .map_err(|e| Error::postgres("cannot read what depends on the partitions", e))?;
    Ok((0..3).find_map(|i| row.get::<_, Option<String>>(i)))
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
    let parent = src.qualified();
    // In one round trip (tokio-postgres pipelines concurrent queries).
    let (key, parts, held) = futures::try_join!(
        partition_key(client, &parent),
        list(client, &parent, src.time_kind()),
        held_by_others(client, &parent)
    )?;
    if !is_range_on(key.as_deref(), &src.time_column().name) {
        return Ok(None);
    }
    if let Some(why) = held {
        tracing::info!("{parent}: partitions are not dropped ({why}): their rows are deleted");
        return Ok(None);
    }
    let mut inside = Vec::new();
    for p in parts {
        if p.bounds.is_none() {
            return Ok(None); // a default partition may hold rows of any range
        }
        if !p.overlaps(range) {
            continue;
        }
        match p.window() {
            Some(w) if range.start <= w.start && w.end <= range.end && p.relkind == 'r' => {
                inside.push(p)
            }
            _ => return Ok(None),
        }
    }
    inside.sort_by_key(|p| p.window().map(|w| w.start));
    let mut at = range.start;
    for p in &inside {
        match p.window() {
            Some(w) if w.start == at => at = w.end,
            _ => return Ok(None),
        }
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
