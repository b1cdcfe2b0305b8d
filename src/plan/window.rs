//! Time windows aligned to Iceberg's temporal transforms.
//!
//! Timestamps are microseconds since the Unix epoch, UTC (for `timestamp`
//! columns without a zone, the stored value read as UTC — which is exactly what
//! Iceberg's `hour/day/month/year` transforms do).  A window is the half-open
//! interval `[start, end)` of one partition value of the transform.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// Microseconds since 1970-01-01T00:00:00 UTC.
pub type Micros = i64;

const MICROS_PER_HOUR: i64 = 3_600_000_000;
const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

/// Window size, which is also the Iceberg partition transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Hour,
    Day,
    Month,
    Year,
}

impl Granularity {
    /// Accepts `hour|day|month|year` and the seed tool's `hourly|daily|monthly|yearly`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "hour" | "hourly" => Some(Self::Hour),
            "day" | "daily" => Some(Self::Day),
            "month" | "monthly" => Some(Self::Month),
            "year" | "yearly" => Some(Self::Year),
            _ => None,
        }
    }

    /// The transform's name: `hour`, `day`, `month`, `year`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
            Self::Year => "year",
        }
    }

    /// The Iceberg partition transform.
    pub fn transform(self) -> iceberg::spec::Transform {
        use iceberg::spec::Transform;
        match self {
            Self::Hour => Transform::Hour,
            Self::Day => Transform::Day,
            Self::Month => Transform::Month,
            Self::Year => Transform::Year,
        }
    }

    /// The Iceberg transform value (partition ordinal) of the window containing `t`:
    /// hours, days, months or years since the epoch.
    pub fn ordinal(self, t: Micros) -> i64 {
        match self {
            Self::Hour => t.div_euclid(MICROS_PER_HOUR),
            Self::Day => t.div_euclid(MICROS_PER_DAY),
            Self::Month => {
                let d = date_of(t);
                (d.year() as i64 - 1970) * 12 + d.month0() as i64
            }
            Self::Year => date_of(t).year() as i64 - 1970,
        }
    }

    /// Start of the window with ordinal `n`.
    pub fn start_of_ordinal(self, n: i64) -> Micros {
        match self {
            Self::Hour => n * MICROS_PER_HOUR,
            Self::Day => n * MICROS_PER_DAY,
            Self::Month => {
                let y = 1970 + n.div_euclid(12);
                let m = n.rem_euclid(12) + 1;
                midnight(y as i32, m as u32)
            }
            Self::Year => midnight((1970 + n) as i32, 1),
        }
    }

    /// Start of the window containing `t`.
    pub fn floor(self, t: Micros) -> Micros {
        self.start_of_ordinal(self.ordinal(t))
    }

    /// The window containing `t`.
    pub fn window_of(self, t: Micros) -> Window {
        let n = self.ordinal(t);
        Window {
            start: self.start_of_ordinal(n),
            end: self.start_of_ordinal(n + 1),
        }
    }

    /// The window with ordinal `n`.
    pub fn window(self, n: i64) -> Window {
        Window {
            start: self.start_of_ordinal(n),
            end: self.start_of_ordinal(n + 1),
        }
    }
}

fn date_of(t: Micros) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_micros(t)
        .map(|d| d.date_naive())
        .unwrap_or(NaiveDate::MIN)
}

fn midnight(y: i32, m: u32) -> Micros {
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .map(|d| d.timestamp_micros())
        .unwrap_or(i64::MIN)
}

/// A half-open time interval `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Window {
    pub start: Micros,
    pub end: Micros,
}

impl Window {
    /// Everything before `end`.
    pub fn up_to(end: Micros) -> Self {
        Self {
            start: Micros::MIN,
            end,
        }
    }

    /// True when the two intervals share at least one instant.
    pub fn overlaps(&self, other: &Window) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// True when `t` is inside.
    pub fn contains(&self, t: Micros) -> bool {
        self.start <= t && t < self.end
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {})", rfc3339(self.start), rfc3339(self.end))
    }
}

/// `2024-01-15T00:00:00Z`.
pub fn rfc3339(t: Micros) -> String {
    match DateTime::<Utc>::from_timestamp_micros(t) {
        Some(d) if t % 1_000_000 == 0 => d.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Some(d) => d.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        None => t.to_string(),
    }
}

/// Parses RFC 3339 (`2024-01-15T00:00:00Z`), a naive date-time read as UTC, or a date.
/// Years outside 0000–9999 take a sign, as [`rfc3339`] writes them (`-0044-03-15T00:00:00Z`).
pub fn parse_instant(s: &str) -> Option<Micros> {
    let s = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(d.timestamp_micros());
    }
    let s = s.strip_suffix('Z').unwrap_or(s);
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(d) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return Some(d.and_utc().timestamp_micros());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().map(|d| {
        d.and_hms_opt(0, 0, 0)
            .map(|x| x.and_utc().timestamp_micros())
            .unwrap_or(0)
    })
}

/// The partition path Iceberg writers use for the window, e.g. `recorded_at_day=2024-01-15`.
pub fn partition_path(field: &str, g: Granularity, w: &Window) -> String {
    let d = DateTime::<Utc>::from_timestamp_micros(w.start)
        .map(|d| d.naive_utc())
        .unwrap_or_default();
    let v = match g {
        Granularity::Hour => d.format("%Y-%m-%d-%H").to_string(),
        Granularity::Day => d.format("%Y-%m-%d").to_string(),
        Granularity::Month => d.format("%Y-%m").to_string(),
        Granularity::Year => d.format("%Y").to_string(),
    };
    format!("{field}={v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Micros {
        parse_instant(s).unwrap()
    }

    #[test]
    fn floors_align_to_transform() {
        let x = t("2024-02-29T13:45:12.5Z");
        assert_eq!(rfc3339(Granularity::Hour.floor(x)), "2024-02-29T13:00:00Z");
        assert_eq!(rfc3339(Granularity::Day.floor(x)), "2024-02-29T00:00:00Z");
        assert_eq!(rfc3339(Granularity::Month.floor(x)), "2024-02-01T00:00:00Z");
        assert_eq!(rfc3339(Granularity::Year.floor(x)), "2024-01-01T00:00:00Z");
        let m = Granularity::Month.window_of(x);
        assert_eq!(rfc3339(m.end), "2024-03-01T00:00:00Z");
    }

    #[test]
    fn ordinals_match_iceberg_transforms() {
        // Iceberg: day(1970-01-02) = 1, month(1971-02) = 13, year(1969) = -1, hour(1969-12-31T23) = -1.
        assert_eq!(Granularity::Day.ordinal(t("1970-01-02T05:00:00Z")), 1);
        assert_eq!(Granularity::Month.ordinal(t("1971-02-10T00:00:00Z")), 13);
        assert_eq!(Granularity::Year.ordinal(t("1969-06-01T00:00:00Z")), -1);
        assert_eq!(Granularity::Hour.ordinal(t("1969-12-31T23:30:00Z")), -1);
        assert_eq!(
            Granularity::Day.ordinal(t("1969-12-31T23:59:59.999999Z")),
            -1
        );
        assert_eq!(Granularity::Month.ordinal(t("1969-12-31T00:00:00Z")), -1);
    }

    #[test]
    fn windows_roundtrip_through_ordinals() {
        for g in [
            Granularity::Hour,
            Granularity::Day,
            Granularity::Month,
            Granularity::Year,
        ] {
            for n in [-30_i64, -1, 0, 1, 17, 650] {
                let w = g.window(n);
                assert_eq!(g.ordinal(w.start), n, "{g:?} {n}");
                assert_eq!(g.ordinal(w.end - 1), n, "{g:?} {n}");
                assert_eq!(g.ordinal(w.end), n + 1, "{g:?} {n}");
            }
        }
    }

    #[test]
    fn parses_instants() {
        assert_eq!(t("2024-01-15"), t("2024-01-15T00:00:00Z"));
        assert_eq!(t("2024-01-15 06:00:00"), t("2024-01-15T06:00:00+00:00"));
        assert_eq!(t("2024-01-15T08:00:00+02:00"), t("2024-01-15T06:00:00Z"));
        assert!(parse_instant("yesterday").is_none());
    }

    #[test]
    fn years_before_1_and_after_9999_roundtrip() {
        for s in [
            "0000-01-01T00:00:00Z",
            "-0001-12-31T23:00:00Z",
            "-4712-11-24T00:00:00Z",
            "+12345-06-01T00:00:00Z",
            "-0044-03-15T12:00:00.000001Z",
        ] {
            let t = parse_instant(s).unwrap_or_else(|| panic!("{s}"));
            assert_eq!(parse_instant(&rfc3339(t)), Some(t), "{s} -> {}", rfc3339(t));
        }
        // Postgres' first instant, 4714-11-24 00:00 BC, is ISO year -4713.
        assert_eq!(
            parse_instant("-4713-11-24T00:00:00Z"),
            Some(crate::source::windows::PG_MIN_MICROS)
        );
        let w = Granularity::Year.window_of(t("0000-06-01T00:00:00Z"));
        assert_eq!(rfc3339(w.start), "0000-01-01T00:00:00Z");
        assert_eq!(Granularity::Year.ordinal(w.start), -1970);
    }

    #[test]
    fn partition_paths() {
        let w = Granularity::Hour.window_of(t("2024-01-15T06:10:00Z"));
        assert_eq!(
            partition_path("ts_hour", Granularity::Hour, &w),
            "ts_hour=2024-01-15-06"
        );
    }
}
