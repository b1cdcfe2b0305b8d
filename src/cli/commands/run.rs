//! `run`: archive on a schedule.

use super::*;

/// `run`: flags over the config's `schedule:` section.
pub(super) async fn run_cmd(a: RunArgs) -> Result<ExitCode> {
    let cfg = load(&a.config.config)?;
    let s = &cfg.schedule;
    let (every, cron) = match (&a.every, &a.cron) {
        (None, None) => (s.every.clone(), s.cron.clone()),
        (e, c) => (e.clone(), c.clone()),
    };
    let schedule = crate::schedule::Schedule::parse(every.as_deref(), cron.as_deref())?;
    let metrics_listen = match &a.metrics_listen {
        Some(l) => Some(l.parse().map_err(|e| {
            Error::config(format!("--metrics-listen: `{l}` is not an address: {e}"))
                .with_hint("host:port, e.g. 127.0.0.1:9187")
        })?),
        None => s.metrics_listen,
    };
    let opts = crate::run::RunOptions {
        config: a.config.config.clone(),
        schedule,
        jitter: match &a.jitter {
            Some(j) => parse_flag_duration("--jitter", j)?,
            None => s.jitter,
        },
        metrics_listen,
        grace: match &a.grace {
            Some(g) => parse_flag_duration("--grace", g)?,
            None => s.grace_period,
        },
    };
    crate::run::run(opts, cfg).await?;
    Ok(ExitCode::SUCCESS)
}
