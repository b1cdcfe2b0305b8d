//! Finding the windows that hold rows, cheaply.
//!
//! Discovery walks the time index: one recursive query asks for the oldest row
//! below the cutoff, truncates it to its window, then asks for the oldest row at
//! or after that window's end, and so on — one index probe per non-empty
//! window, never one per empty window.

use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::filter::quote_ident;
use crate::plan::window::{Granularity, Micros, Window};
use crate::source::SourceTable;
use crate::source::introspect::TimeKind;

/// A literal of the time column's type for instant `t` (rendered by us from an
/// integer, so safe to embed in `COPY (…)`, which takes no parameters).
pub fn time_literal(kind: TimeKind, t: Micros) -> String {
    let d = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(t).unwrap_or_default();
    let s = d.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
    match kind {
        TimeKind::Timestamp => format!("'{s}'::timestamp"),
        _ => format!("'{s}+00'::timestamptz"),
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
    let unit = g.name();
    let sql = format!(
        "WITH RECURSIVE w(s) AS ( \
           SELECT date_trunc('{unit}', {first}) \
           UNION ALL \
           SELECT date_trunc('{unit}', {next}) FROM w WHERE w.s IS NOT NULL \
         ) SELECT (extract(epoch FROM s) * 1000000)::int8 FROM w WHERE s IS NOT NULL",
        first = utc_naive(
            kind,
            &format!("(SELECT min({col}) FROM {table} WHERE {col} < {cut}{lower}{filter})")
        ),
        next = utc_naive(
            kind,
            &format!(
                "(SELECT min({col}) FROM {table} WHERE {col} >= {} AND {col} < {cut}{filter})",
                from_utc_naive(kind, &format!("(w.s + {})", interval(g)))
            )
        ),
    );
    let rows = client
        .query(sql.as_str(), &[])
        .await
        .map_err(|e| Error::postgres(format!("cannot find windows of {}", t.qualified()), e))?;
    Ok(rows
        .iter()
        .map(|r| g.window_of(r.get::<_, i64>(0)))
        .collect())
}

/// Row counts per non-empty window below `cutoff` (scans the archivable rows).
pub async fn window_counts(
    client: &Client,
    t: &SourceTable,
    g: Granularity,
    cutoff: Micros,
) -> Result<Vec<(Window, u64)>> {
    let kind = t.time_kind();
    let col = quote_ident(&t.time_column().name);
    let filter = t
        .filter_sql
        .as_ref()
        .map(|f| format!(" AND {f}"))
        .unwrap_or_default();
    let sql = format!(
        "SELECT (extract(epoch FROM date_trunc('{}', {})) * 1000000)::int8 AS w, count(*) FROM {} \
         WHERE {col} < {}{filter} GROUP BY 1 ORDER BY 1",
        g.name(),
        utc_naive(kind, &col),
        t.qualified(),
        time_literal(kind, cutoff)
    );
    let rows = client
        .query(sql.as_str(), &[])
        .await
        .map_err(|e| Error::postgres(format!("cannot count rows of {}", t.qualified()), e))?;
    Ok(rows
        .iter()
        .map(|r| (g.window_of(r.get::<_, i64>(0)), r.get::<_, i64>(1) as u64))
        .collect())
}

/// Rows of `t` in `range` passing the filter.
pub async fn count_in_range(client: &Client, t: &SourceTable, range: &Window) -> Result<u64> {
    let sql = format!(
        "SELECT count(*) FROM {} WHERE {}",
        t.qualified(),
        range_predicate(t, range)
    );
    let row = client
        .query_one(sql.as_str(), &[])
        .await
        .map_err(|e| Error::postgres(format!("cannot count rows of {}", t.qualified()), e))?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Rows whose time column is NULL (never archived) and rows newer than the cutoff.
pub async fn unarchivable_counts(
    client: &Client,
    t: &SourceTable,
    cutoff: Micros,
) -> Result<(u64, u64)> {
    let kind = t.time_kind();
    let col = quote_ident(&t.time_column().name);
    let count = |cond: String| format!("SELECT count(*) FROM {} WHERE {cond}", t.qualified());
    let nulls = if t.time_column().not_null {
        0
    } else {
        let sql = count(format!("{col} IS NULL"));
        let row = client
            .query_one(sql.as_str(), &[])
            .await
            .map_err(|e| Error::postgres(format!("cannot count rows of {}", t.qualified()), e))?;
        row.get::<_, i64>(0) as u64
    };
    let sql = count(format!("{col} >= {}", time_literal(kind, cutoff)));
    let row = client
        .query_one(sql.as_str(), &[])
        .await
        .map_err(|e| Error::postgres(format!("cannot count rows of {}", t.qualified()), e))?;
    Ok((nulls, row.get::<_, i64>(0) as u64))
}

/// The cutoff: the start of the window containing `now - lag`.  Every window
/// that ends at or before it is entirely older than `now - lag`.
pub fn cutoff(g: Granularity, now: Micros, lag: std::time::Duration) -> Micros {
    g.floor(now - lag.as_micros() as i64)
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
