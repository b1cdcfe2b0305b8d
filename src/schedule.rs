//! When `permafrost run` archives: an interval or a cron expression, plus
//! jitter.  Pure: the run loop ([`crate::run`]) asks [`Schedule::next_after`].

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};

/// When runs happen.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Every interval, from the end of the previous run.
    Every(Duration),
    /// At the times a cron expression (5 or 6 fields, UTC) names.
    Cron(Box<croner::Cron>, String),
}

impl Schedule {
    /// `every` (`1h`, `15m`) or a cron expression (`0 * * * *`).
    pub fn parse(every: Option<&str>, cron: Option<&str>) -> Result<Self> {
        match (every, cron) {
            (Some(_), Some(_)) => Err(Error::config(
                "give either an interval (`--every`, `schedule.every`) or a cron expression \
                 (`--cron`, `schedule.cron`), not both",
            )),
            (Some(e), None) => {
                let d = crate::config::duration::parse_duration(e)
                    .map_err(|m| Error::config(format!("schedule interval `{e}`: {m}")))?;
                if d < Duration::from_secs(1) {
                    return Err(Error::config("the schedule interval must be at least 1s"));
                }
                Ok(Self::Every(d))
            }
            (None, Some(c)) => {
                let parsed = c.parse::<croner::Cron>().map_err(|e| {
                    Error::config(format!("cron expression `{c}`: {e}")).with_hint(
                        "five fields (minute hour day month weekday), UTC, e.g. `0 * * * *`",
                    )
                })?;
                Ok(Self::Cron(Box::new(parsed), c.to_string()))
            }
            (None, None) => Err(Error::config(
                "`run` needs a schedule: `--every 1h`, `--cron \"0 * * * *\"`, or `schedule:` in the config",
            )),
        }
    }

    /// The next run time after `after` (a run that ended at `after`).  Pure.
    pub fn next_after(&self, after: DateTime<Utc>) -> Result<DateTime<Utc>> {
        match self {
            Self::Every(d) => {
                Ok(after + chrono::Duration::from_std(*d).unwrap_or(chrono::Duration::hours(1)))
            }
            Self::Cron(c, text) => c.find_next_occurrence(&after, false).map_err(|e| {
                Error::config(format!("cron expression `{text}` has no next time: {e}"))
            }),
        }
    }
}

/// A random delay below `max`.
pub fn jitter(max: Duration) -> chrono::Duration {
    if max.is_zero() {
        return chrono::Duration::zero();
    }
    let r = uuid::Uuid::new_v4().as_u128() as u64;
    let ms = r % (max.as_millis().max(1) as u64);
    chrono::Duration::milliseconds(ms as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn intervals_and_cron_expressions_give_the_next_time() {
        let every = Schedule::parse(Some("90m"), None).expect("every");
        assert_eq!(
            every.next_after(at("2026-01-01T10:05:00Z")).expect("next"),
            at("2026-01-01T11:35:00Z")
        );
        let hourly = Schedule::parse(None, Some("0 * * * *")).expect("cron");
        assert_eq!(
            hourly.next_after(at("2026-01-01T10:05:00Z")).expect("next"),
            at("2026-01-01T11:00:00Z")
        );
        assert_eq!(
            hourly.next_after(at("2026-01-01T11:00:00Z")).expect("next"),
            at("2026-01-01T12:00:00Z"),
            "a run ending on the hour waits for the next"
        );
        let nightly = Schedule::parse(None, Some("30 2 * * *")).expect("cron");
        assert_eq!(
            nightly
                .next_after(at("2026-01-01T10:05:00Z"))
                .expect("next"),
            at("2026-01-02T02:30:00Z")
        );
        assert!(Schedule::parse(None, Some("61 * * * *")).is_err());
        assert!(Schedule::parse(Some("1h"), Some("0 * * * *")).is_err());
        assert!(Schedule::parse(None, None).is_err());
        assert!(jitter(Duration::from_secs(5)) < chrono::Duration::seconds(5));
    }
}
