//! One function per command: resolve settings, call the use case, render.

use std::process::ExitCode;

use crate::archive::{ArchiveOptions, Outcome};
use crate::cli::args::{
    ArchiveArgs, CheckArgs, Cli, Command, DemoArgs, DiffArgs, FetchArgs, ListArgs, MaintainArgs,
    MetricsOutArgs, OperateArgs, QueryArgs, ReplayArgs, RestoreArgs, RunArgs, ServeArgs, ShowArgs,
    SnapshotArg, SnapshotsArgs, StateArg, StatusArgs,
};
use crate::cli::output::{self, num};
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::progress::Progress;
use crate::{inspect, lake, source};

mod archive;
mod check;
mod demo;
mod diff;
mod fetch;
mod list;
mod maintain;
mod man;
mod query;
mod restore;
mod run;
mod serve;
mod show;
mod snapshots;
mod status;

use archive::{archive_cmd, print_archive, replay_cmd};
use check::check_cmd;
use demo::demo_cmd;
use diff::diff_cmd;
use fetch::fetch_cmd;
use list::list_cmd;
use maintain::maintain_cmd;
use man::man_cmd;
use query::query_cmd;
use restore::restore_cmd;
use run::run_cmd;
use serve::serve_cmd;
use show::show_cmd;
use snapshots::snapshots_cmd;
use status::{print_status, status_cmd};

/// Sets up logging to stderr (redacted); `RUST_LOG` overrides `--log-level`.
pub fn init_logging(cli: &Cli) {
    let level = if cli.quiet {
        "warn"
    } else {
        cli.log_level.as_str()
    };
    crate::logging::init(level, cli.log_format);
}

/// Runs the command; maps errors to `error: …` / `hint: …` and an exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let progress = Progress::new(!cli.quiet);
    let result = match cli.command {
        Command::Demo(a) => demo_cmd(a, &progress).await,
        Command::Check(a) => check_cmd(a).await,
        Command::Archive(a) => archive_cmd(a, &progress).await,
        Command::Replay(a) => replay_cmd(a, &progress).await,
        Command::Status(a) => status_cmd(a).await,
        Command::Snapshots(a) => snapshots_cmd(a).await,
        Command::List(a) => list_cmd(a).await,
        Command::Show(a) => show_cmd(a).await,
        Command::Diff(a) => diff_cmd(a).await,
        Command::Fetch(a) => fetch_cmd(a, &progress).await,
        Command::Query(a) => query_cmd(a, &progress).await,
        Command::Serve(a) => serve_cmd(a).await,
        Command::Restore(a) => restore_cmd(a, &progress).await,
        Command::Maintain(a) => maintain_cmd(a).await,
        Command::Run(a) => run_cmd(a).await,
        Command::Completions(a) => {
            clap_complete::generate(
                a.shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "permafrost",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => man_cmd(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            output::error(&e);
            ExitCode::from(e.kind().exit_code())
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config> {
    Config::load(path)
}

fn parse_now(now: Option<&str>) -> Result<Option<i64>> {
    now.map(|s| inspect::fetch::instant("now", s)).transpose()
}

/// Writes and pushes a one-shot command's metrics where the flags say.
async fn emit_metrics(metrics: &crate::metrics::Metrics, out: &MetricsOutArgs) -> Result<()> {
    if let Some(path) = &out.metrics_textfile {
        metrics.write_textfile(path)?;
    }
    if let Some(url) = &out.pushgateway {
        // Monitoring must not fail the command: logged, not returned.
        if let Err(e) = metrics.push(url).await {
            tracing::warn!("{}", e.message());
        }
    }
    Ok(())
}

fn parse_flag_duration(flag: &str, v: &str) -> Result<std::time::Duration> {
    crate::config::parse_duration(v).map_err(|m| Error::config(format!("{flag}: {m}")))
}

fn snapshot_choice(a: &SnapshotArg) -> Result<inspect::SnapshotChoice> {
    Ok(match (a.snapshot, &a.as_of) {
        (Some(id), _) => inspect::SnapshotChoice::Id(id),
        (None, Some(t)) => inspect::SnapshotChoice::AsOf(inspect::fetch::instant("as-of", t)?),
        (None, None) => inspect::SnapshotChoice::Current,
    })
}

fn opt(v: &Option<impl ToString>) -> String {
    v.as_ref()
        .map(|x| x.to_string())
        .unwrap_or_else(|| "-".into())
}

/// The output of `fetch`/`query`: `None` when the reader went away
/// (`| head` closed the pipe), which is not an error.
fn reader_may_leave<T>(result: Result<T>) -> Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == ErrorKind::Io && e.message().contains("Broken pipe") => Ok(None),
        Err(e) => Err(e),
    }
}
