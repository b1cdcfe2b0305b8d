//! Named fault points for crash and outage tests.
//!
//! Built with the `fault-injection` feature, [`point`] (and [`point_blocking`]):
//! - aborts the process (no unwinding, no cleanup: like `kill -9`) when the
//!   environment variable `PERMAFROST_FAULT` names the point;
//! - pauses (the first time only) when `PERMAFROST_PAUSE=<point>:<fifo>` names it (several
//!   points: `<point>:<fifo>,<point>:<fifo>`): it opens the
//!   named pipe and waits for one byte, so a test can stop a service or kill
//!   a backend at exactly that step, then let the run continue.
//!
//! Without the feature, [`point`] compiles to nothing.
//!
//! Points, in the order a batch passes them:
//!
//! | point             | state |
//! |-------------------|-------|
//! | `after-extract`   | the first rows are streamed (and deleted in the open transaction); nothing written |
//! | `during-delete`   | the `DELETE … RETURNING` statement has finished; its transaction is open; files not closed |
//! | `after-write`     | data files written and closed; nothing committed |
//! | `before-send`     | the commit prepared (manifest and manifest list written), about to go to the catalog |
//! | `after-commit`    | snapshot committed; not verified; Postgres transaction open |
//! | `after-verify`    | verified; Postgres transaction open (about to commit) |
//! | `after-pg-commit` | Postgres committed: the batch is complete |
//!
//! `prepared-ahead` (pause only): a batch prepared its commit on the table
//! the previous batch's commit leaves, before that commit is sent.
//!
//! `restore-loaded` is a restore's: every loader has copied its rows into the
//! staging table, none has committed. `restore-staged` (pause only): the
//! staging table is loaded and committed, not yet checked.
//!
//! `serve-query` holds an HTTP API query after its table is loaded, with its
//! query slot taken (pause only), for the timeout and busy tests.
//!
//! `PERMAFROST_FAULT=corrupt-checksum` makes verification see a wrong checksum;
//! `PERMAFROST_FAULT=legacy-partition-name` creates tables the way permafrost
//! did before partition field names were sanitised (`Recorded At_day`), to
//! test the repair of tables stuck that way.

/// The time credentials are signed at: now, or with `fault-injection` the
/// Unix seconds in `PERMAFROST_FAULT_CLOCK` (a skewed clock, and a fixed one
/// to compare signatures with another implementation's).
pub fn signing_clock() -> std::time::SystemTime {
    #[cfg(feature = "fault-injection")]
    if let Some(secs) = std::env::var("PERMAFROST_FAULT_CLOCK")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        return std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    }
    std::time::SystemTime::now()
}

/// Every named point, in order.
pub const POINTS: [&str; 7] = [
    "after-extract",
    "during-delete",
    "after-write",
    "before-send",
    "after-commit",
    "after-verify",
    "after-pg-commit",
];

/// The points this process has paused at: each pauses once (a retried step
/// passes its point again and must not wait for a second resume).
#[cfg(feature = "fault-injection")]
static PAUSED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Whether `name` has not paused yet in this process (and now has).
#[cfg(feature = "fault-injection")]
fn first_pause(name: &str) -> bool {
    let Ok(mut paused) = PAUSED.lock() else {
        return false;
    };
    if paused.iter().any(|p| p == name) {
        return false;
    }
    paused.push(name.to_string());
    true
}

/// Aborts at `name` when `PERMAFROST_FAULT` names it; returns the pipe to
/// wait on when `PERMAFROST_PAUSE` names it (the first time only).
#[cfg(feature = "fault-injection")]
fn arm(name: &str) -> Option<String> {
    if std::env::var("PERMAFROST_FAULT").ok().as_deref() == Some(name) {
        eprintln!("permafrost: fault injected at `{name}`, aborting");
        std::process::abort();
    }
    let pause = std::env::var("PERMAFROST_PAUSE").ok()?;
    let fifo = pause
        .split(',')
        .filter_map(|spec| spec.split_once(':'))
        .find_map(|(p, fifo)| (p == name).then_some(fifo))?;
    if !first_pause(name) {
        return None;
    }
    eprintln!("permafrost: paused at `{name}`");
    Some(fifo.to_string())
}

/// Blocks until one byte arrives on the named pipe `fifo`.
#[cfg(feature = "fault-injection")]
fn wait(name: &str, fifo: &str) {
    use std::io::Read;
    if let Ok(mut f) = std::fs::File::open(fifo) {
        let mut b = [0u8; 1];
        let _ = f.read(&mut b);
    }
    eprintln!("permafrost: resumed after `{name}`");
}

/// Aborts or pauses at `name` (fault-injection builds only).  A pause waits
/// on a blocking thread: only this task waits, the runtime's other tasks
/// (other batches in flight) go on.
pub async fn point(name: &str) {
    #[cfg(feature = "fault-injection")]
    if let Some(fifo) = arm(name) {
        let name = name.to_string();
        let _ = tokio::task::spawn_blocking(move || wait(&name, &fifo)).await;
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = name;
}

/// As [`point`], from blocking code (a pause blocks this thread).
pub fn point_blocking(name: &str) {
    #[cfg(feature = "fault-injection")]
    if let Some(fifo) = arm(name) {
        wait(name, &fifo);
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = name;
}

/// True when the fault `name` is injected (fault-injection builds only).
#[inline]
pub fn injected(name: &str) -> bool {
    cfg!(feature = "fault-injection")
        && std::env::var("PERMAFROST_FAULT").ok().as_deref() == Some(name)
}
