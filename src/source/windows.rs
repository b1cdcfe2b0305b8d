//! Finding the windows that hold rows, cheaply.
//!
//! Discovery walks the time index: one recursive query asks for the oldest row
//! below the cutoff, truncates it to its window, then asks for the oldest row at
//! or after that window's end, and so on — one index probe per non-empty
//! window, never one per empty window.

use tokio_postgres::Client;
use tokio_postgres::types::Type;

use crate::error::{Error, Result};
use crate::filter::quote_ident;
use crate::plan::window::{Granularity, Micros, Window};
use crate::source::SourceTable;
use crate::source::introspect::TimeKind;

/// The earliest instant Postgres timestamps hold: 4714-11-24 00:00:00 BC (Julian day 0).
pub const PG_MIN_MICROS: Micros = -210_866_803_200_000_000;

/// A literal of the time column's type for instant `t` (rendered by us from an
/// integer, so safe to embed in `COPY (…)`, which takes no parameters).
///
/// Years before 1 are written with `BC` (Postgres has no year 0: ISO year 0 is
/// 1 BC); instants before Postgres' range become its first instant, instants
/// past what we can render become `infinity`, so a bound never silently
/// turns into another date.
pub fn time_literal(kind: TimeKind, t: Micros) -> String {
    let s = pg_timestamp_text(t.max(PG_MIN_MICROS));
    match kind {
        TimeKind::Timestamp => format!("'{s}'::timestamp"),
        _ if s == "infinity" => format!("'{s}'::timestamptz"),
        _ => match s.strip_suffix(" BC") {
            Some(ad) => format!("'{ad}+00 BC'::timestamptz"),
            None => format!("'{s}+00'::timestamptz"),
        },
    }
}

/// `2024-01-02 03:04:05.000006`, `0001-01-01 00:00:00.000000 BC`, or `infinity`.
fn pg_timestamp_text(t: Micros) -> String {
    use chrono::Datelike;
    let Some(d) = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(t) else {
        return "infinity".into();
    };
    let rest = d.format("%m-%d %H:%M:%S%.6f");
    match d.year() {
        y if y <= 0 => format!("{:04}-{rest} BC", 1 - y),
        y => format!("{y:04}-{rest}"),
    }
}

/// The rows of `t` in `[range.start, range.end)` that pass the table's filter, as SQL.
pub fn range_predicate(t: &SourceTable, range: &Window) -> String {
    let col = quote_ident(&t.time_column().name);
    let kind = t.time_kind();
    let mut p = format!(
        "{col} >= {} AND {col} < {}",
        time_literal(kind, range.start),
        time_literal(kind, range.end)
    );
    if let Some(f) = &t.filter_sql {
        p.push_str(" AND ");
        p.push_str(f);
    }
    p
}

/// The naive-UTC expression of the time column value `x`.
fn utc_naive(kind: TimeKind, x: &str) -> String {
    match kind {
        TimeKind::Timestamp => x.to_string(),
        _ => format!("({x} AT TIME ZONE 'UTC')"),
    }
}

fn from_utc_naive(kind: TimeKind, x: &str) -> String {
    match kind {
        TimeKind::Timestamp => x.to_string(),
        _ => format!("({x} AT TIME ZONE 'UTC')"),
    }
}

fn interval(g: Granularity) -> &'static str {
    match g {
        Granularity::Hour => "interval '1 hour'",
        Granularity::Day => "interval '1 day'",
        Granularity::Month => "interval '1 month'",
        Granularity::Year => "interval '1 year'",
    }
}

/// Windows in `[from, cutoff)` that hold at least one row passing the filter, oldest first.
pub async fn nonempty_windows(
    client: &Client,
    t: &SourceTable,
    g: Granularity,
    from: Option<Micros>,
    cutoff: Micros,
) -> Result<Vec<Window>> {
    let kind = t.time_kind();
    let col = quote_ident(&t.time_column().name);
    let table = t.qualified();
    let filter = t
        .filter_sql
        .as_ref()
        .map(|f| format!(" AND {f}"))
        .unwrap_or_default();
    let cut = time_literal(kind, cutoff);
    let lower = from
        .map(|f| format!(" AND {col} >= {}", time_literal(kind, f)))
        .unwrap_or_default();
    // `s` walks the oldest row of each non-empty window; Rust maps it to its
    // window.  The first window of Postgres' range starts before Postgres'
    // first instant (month and year windows of 4714 BC), so its end is
    // given as a literal instead of being computed by `date_trunc`.
    let first_end = time_literal(kind, g.window_of(PG_MIN_MICROS).end);
    let next = format!(
        "CASE WHEN w.s < {first_end} THEN {first_end} ELSE {} END",
        from_utc_naive(
            kind,
            &format!(
                "(date_trunc('{}', {}) + {})",
                g.name(),
                utc_naive(kind, "w.s"),
                interval(g)
            )
        )
    );
    let sql = format!(
        "WITH RECURSIVE w(s) AS ( \
           SELECT (SELECT min({col}) FROM {table} WHERE {col} > '-infinity' AND {col} < {cut}{lower}{filter}) \
           UNION ALL \
           SELECT (SELECT min({col}) FROM {table} WHERE {col} >= {next} AND {col} < {cut}{filter}) \
           FROM w WHERE w.s IS NOT NULL \
         ) SELECT {} FROM w WHERE s IS NOT NULL",
        // The start of `s`'s window, not `s`: a whole second, which the
        // float8 `extract` of PostgreSQL 12 and 13 gives exactly.
        window_start_sql(kind, g, "s")
    );
    let rows = client
        .query_typed(sql.as_str(), &[])
        .await
        .map_err(|e| Error::postgres(format!("cannot find windows of {}", t.qualified()), e))?;
    Ok(rows.iter().map(|r| window_at(g, r.get(0))).collect())
}

/// The window whose start [`window_start_sql`] gave.
fn window_at(g: Granularity, start: Option<i64>) -> Window {
    match start {
        Some(start) => g.window_of(start),
        None => first_window(g),
    }
}

/// The SQL of the epoch µs at which the window of `col`'s value starts, or
/// NULL for the first window of Postgres' range (whose start Postgres cannot
/// represent; see [`first_window`]).
fn window_start_sql(kind: TimeKind, g: Granularity, col: &str) -> String {
    let first_end = time_literal(kind, g.window_of(PG_MIN_MICROS).end);
    format!(
        "CASE WHEN {col} < {first_end} THEN NULL \
         ELSE (extract(epoch FROM date_trunc('{}', {})) * 1000000)::int8 END",
        g.name(),
        utc_naive(kind, col)
    )
}

/// The window holding Postgres' first instant.
fn first_window(g: Granularity) -> Window {
    g.window_of(PG_MIN_MICROS)
}

/// The rows of `t` a run would archive below `cutoff`, as SQL: a finite
/// time before it, passing the table's filter.
fn archivable_below(t: &SourceTable, cutoff: Micros) -> String {
    let col = quote_ident(&t.time_column().name);
    let mut p = format!(
        "{col} > '-infinity' AND {col} < {}",
        time_literal(t.time_kind(), cutoff)
    );
    if let Some(f) = &t.filter_sql {
        p.push_str(" AND ");
        p.push_str(f);
    }
    p
}

/// Row counts per non-empty window below `cutoff` (scans the archivable rows).
pub async fn window_counts(
    client: &Client,
    t: &SourceTable,
    g: Granularity,
    cutoff: Micros,
) -> Result<Vec<(Window, u64)>> {
    let col = quote_ident(&t.time_column().name);
    let sql = format!(
        "SELECT {} AS w, count(*) FROM {} WHERE {} GROUP BY 1 ORDER BY 1 NULLS FIRST",
        window_start_sql(t.time_kind(), g, &col),
        t.qualified(),
        archivable_below(t, cutoff)
    );
    let rows = client
        .query_typed(sql.as_str(), &[])
        .await
        .map_err(|e| Error::postgres(format!("cannot count rows of {}", t.qualified()), e))?;
    Ok(rows
        .iter()
        .map(|r| (window_at(g, r.get(0)), r.get::<_, i64>(1) as u64))
        .collect())
}

/// Postgres's estimate (its planner's, nothing is read) of the rows a run
/// over `[lower, cutoff)` would archive (`lower`: `None` for everything
/// below the cutoff).  As good as the table's statistics (`ANALYZE`, or
/// autovacuum, keeps them); 0 when the time column has none on the table
/// or any of its partitions — the planner's guess without them is a fixed
/// fraction of the table's size, not a count to group windows by.
pub async fn estimated_rows(
    client: &Client,
    t: &SourceTable,
    lower: Option<Micros>,
    cutoff: Micros,
) -> Result<u64> {
    let pred = match lower {
        Some(start) => range_predicate(t, &Window { start, end: cutoff }),
        None => archivable_below(t, cutoff),
    };
    let sql = format!(
        "EXPLAIN (FORMAT JSON) SELECT 1 FROM {} WHERE {pred}",
        t.qualified()
    );
    let what = || format!("cannot estimate the rows of {}", t.qualified());
    // Both at once (one round trip): the plan is dropped without statistics.
    let explain = async {
        client
            .simple_query(&sql)
            .await
            .map_err(|e| Error::postgres(what(), e))
    };
    let (analysed, messages) = futures::try_join!(has_statistics(client, t), explain)?;
    if !analysed {
        return Ok(0);
    }
    let plan = messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0),
        _ => None,
    });
    let rows = plan
        .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        .and_then(|v| v[0]["Plan"]["Plan Rows"].as_f64())
        .ok_or_else(|| Error::internal(format!("{}: no plan rows", what())))?;
    Ok(rows.max(0.0) as u64)
}

/// Bytes per row of `t` on disk by Postgres's statistics: its heap and
/// TOAST (its partitions', when partitioned) over the rows `VACUUM` and
/// `ANALYZE` counted; `None` before they counted any.  Compressed values
/// make it less than the rows' decoded bytes, free space more.
pub async fn row_bytes(client: &Client, t: &SourceTable) -> Result<Option<u64>> {
    let row = client
        .query_typed_one(
            "SELECT (sum(pg_table_size(c.oid)) / nullif(sum(greatest(c.reltuples, 0)), 0))::int8 \
             FROM pg_class c WHERE c.oid = $1 \
               OR c.oid IN (SELECT relid FROM pg_partition_tree($1::oid::regclass))",
            &[(&t.oid, Type::OID)],
        )
        .await
        .map_err(|e| Error::postgres(format!("cannot read the size of {}", t.qualified()), e))?;
    Ok(row.get::<_, Option<i64>>(0).map(|b| b.max(1) as u64))
}

/// Whether `ANALYZE` has gathered statistics on `t`'s time column, on the
/// table itself or on one of its partitions (autovacuum analyses the
/// partitions, never a partitioned parent).
async fn has_statistics(client: &Client, t: &SourceTable) -> Result<bool> {
    let row = client
        .query_typed_one(
            "SELECT EXISTS (SELECT 1 FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname \
             WHERE s.attname = $2 AND (c.oid = $1 \
               OR c.oid IN (SELECT relid FROM pg_partition_tree($1::oid::regclass))))",
            &[(&t.oid, Type::OID), (&t.time_column().name, Type::NAME)],
        )
        .await
        .map_err(|e| {
            Error::postgres(
                format!("cannot read the statistics of {}", t.qualified()),
                e,
            )
        })?;
    Ok(row.get(0))
}

/// Rows of `t` in `range` passing the filter.
pub async fn count_in_range(client: &Client, t: &SourceTable, range: &Window) -> Result<u64> {
    let sql = format!(
        "SELECT count(*) FROM {} WHERE {}",
        t.qualified(),
        range_predicate(t, range)
    );
    let row = client
        .query_typed_one(sql.as_str(), &[])
        .await
        .map_err(|e| Error::postgres(format!("cannot count rows of {}", t.qualified()), e))?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Rows that no window below the cutoff holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unarchivable {
    /// The time is NULL: never archived.
    pub null_time: u64,
    /// The time is `infinity` or `-infinity`: never archived.
    pub infinite_time: u64,
    /// Finite and at or after the cutoff: archived once older than the lag.
    pub recent: u64,
}

/// Counts the rows of `t` that stay in Postgres (see [`Unarchivable`]), in one scan.
pub async fn unarchivable_counts(
    client: &Client,
    t: &SourceTable,
    cutoff: Micros,
) -> Result<Unarchivable> {
    let kind = t.time_kind();
    let col = quote_ident(&t.time_column().name);
    // Each condition can use an index on the time column.
    let sql = format!(
        "SELECT count(*) FILTER (WHERE {col} IS NULL), \
                count(*) FILTER (WHERE {infinite}), \
                count(*) FILTER (WHERE {col} >= {cut} AND {col} < 'infinity') \
         FROM {table} WHERE {col} IS NULL OR {infinite} OR {col} >= {cut}",
        infinite = format!("{col} = 'infinity' OR {col} = '-infinity'"),
        cut = time_literal(kind, cutoff),
        table = t.qualified(),
    );
    let row = client
        .query_typed_one(sql.as_str(), &[])
        .await
        .map_err(|e| Error::postgres(format!("cannot count rows of {}", t.qualified()), e))?;
    Ok(Unarchivable {
        null_time: row.get::<_, i64>(0) as u64,
        infinite_time: row.get::<_, i64>(1) as u64,
        recent: row.get::<_, i64>(2) as u64,
    })
}

/// Rows older than `cutoff` (finite, passing the filter) still in `t`
/// outside the `kept` ranges (sorted, disjoint), and the oldest one's time:
/// what a run left behind (normally none).  The count reads only the gaps
/// between the kept ranges, each an index range on the time column.
pub async fn pending(
    client: &Client,
    t: &SourceTable,
    cutoff: Micros,
    kept: &[Window],
) -> Result<(u64, Option<Micros>)> {
    let col = quote_ident(&t.time_column().name);
    let sql = format!(
        "SELECT count(*), (extract(epoch FROM min({col})) * 1000000)::bigint FROM {} WHERE {}{}",
        t.qualified(),
        archivable_below(t, cutoff),
        outside(t, kept)
    );
    let row = client
        .query_typed_one(sql.as_str(), &[])
        .await
        .map_err(|e| Error::postgres(format!("cannot count rows of {}", t.qualified()), e))?;
    Ok((row.get::<_, i64>(0) as u64, row.get::<_, Option<i64>>(1)))
}

/// ` AND (…)`: the time column outside every range of `kept` (sorted,
/// disjoint); empty when there is none.
fn outside(t: &SourceTable, kept: &[Window]) -> String {
    let (Some(first), Some(last)) = (kept.first(), kept.last()) else {
        return String::new();
    };
    let col = quote_ident(&t.time_column().name);
    let at = |m: Micros| time_literal(t.time_kind(), m);
    let mut gaps = vec![format!("{col} < {}", at(first.start))];
    for pair in kept.windows(2) {
        gaps.push(format!(
            "({col} >= {} AND {col} < {})",
            at(pair[0].end),
            at(pair[1].start)
        ));
    }
    gaps.push(format!("{col} >= {}", at(last.end)));
    format!(" AND ({})", gaps.join(" OR "))
}

/// The cutoff: the start of the window containing `now - lag`.  Every window
/// that ends at or before it is entirely older than `now - lag`.
///
/// The config bounds `lag` (see `config::MAX_LAG`), so this cannot overflow.
pub fn cutoff(g: Granularity, now: Micros, lag: std::time::Duration) -> Micros {
    let lag = i64::try_from(lag.as_micros()).unwrap_or(i64::MAX);
    g.floor(now.saturating_sub(lag).max(PG_MIN_MICROS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::window::{parse_instant, rfc3339};

    #[test]
    fn literals() {
        let t = parse_instant("2024-01-02T03:04:05.000006Z").unwrap();
        assert_eq!(
            time_literal(TimeKind::Timestamptz, t),
            "'2024-01-02 03:04:05.000006+00'::timestamptz"
        );
        assert_eq!(
            time_literal(TimeKind::Timestamp, t),
            "'2024-01-02 03:04:05.000006'::timestamp"
        );
        let bc = parse_instant("0000-01-01T00:00:00Z").unwrap();
        assert_eq!(
            time_literal(TimeKind::Timestamptz, bc),
            "'0001-01-01 00:00:00.000000+00 BC'::timestamptz"
        );
        assert_eq!(
            time_literal(TimeKind::Timestamp, bc - 1),
            "'0002-12-31 23:59:59.999999 BC'::timestamp"
        );
        assert_eq!(
            time_literal(TimeKind::Timestamp, i64::MIN),
            "'4714-11-24 00:00:00.000000 BC'::timestamp"
        );
        assert_eq!(
            time_literal(TimeKind::Timestamptz, i64::MAX),
            "'infinity'::timestamptz"
        );
    }

    #[test]
    fn cutoff_excludes_the_window_of_now_minus_lag() {
        let now = parse_instant("2024-03-20T10:30:00Z").unwrap();
        let lag = std::time::Duration::from_secs(15 * 86400);
        assert_eq!(
            rfc3339(cutoff(Granularity::Day, now, lag)),
            "2024-03-05T00:00:00Z"
        );
        assert_eq!(
            rfc3339(cutoff(Granularity::Month, now, lag)),
            "2024-03-01T00:00:00Z"
        );
        assert_eq!(
            rfc3339(cutoff(
                Granularity::Hour,
                now,
                std::time::Duration::from_secs(6 * 3600)
            )),
            "2024-03-20T04:00:00Z"
        );
    }
}
