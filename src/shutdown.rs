//! Graceful stop on SIGTERM / SIGINT.
//!
//! # Contract
//! - The first signal **stops**: no new batch (or `max_batch_rows` part) is
//!   started; a batch in flight goes on to its end — commit, verification,
//!   Postgres commit — so a stop costs no work.
//! - When the grace period (`--grace`, default 25 s: inside Kubernetes'
//!   default 30 s) has passed, or at a second signal, the stop becomes an
//!   **abort**: a batch that has not reached its Iceberg commit yet stops
//!   streaming and rolls its Postgres transaction back (nothing committed,
//!   nothing deleted); one past its commit finishes (verify and Postgres
//!   commit take moments; abandoning it would leave an unsettled batch for
//!   the next run, which is safe but slower).
//! - A third signal exits at once (130): a crash, which the next run resolves.
//! - `archive` then exits [`crate::error::ErrorKind::Interrupted`]'s code (8)
//!   if windows were left for the next run; `run` exits 0 after a clean stop.
//!
//! Signals are process-wide, so the state is too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

static STOP: AtomicBool = AtomicBool::new(false);
static ABORT: AtomicBool = AtomicBool::new(false);
static INSTALLED: AtomicBool = AtomicBool::new(false);
static WAKE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Default time a stop waits for the batch in flight before aborting it.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(25);

/// Listens for SIGTERM and SIGINT (once per process): the first stops, the
/// grace period or a second signal aborts (see the module doc).
pub fn install(grace: Duration) {
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    tokio::spawn(async move {
        let mut signals = match Signals::new() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM/SIGINT: {e}; a signal kills the process");
                return;
            }
        };
        let first = signals.next().await;
        STOP.store(true, Ordering::SeqCst);
        WAKE.notify_waiters();
        tracing::warn!(
            "{first} received: stopping — no new batch; the batch in flight may finish within {} s \
             (a second signal aborts it before its commit)",
            grace.as_secs()
        );
        let why = tokio::select! {
            _ = tokio::time::sleep(grace) => {
                "grace period over: aborting the batch in flight unless it is committed".to_string()
            }
            s = signals.next() => format!("{s} received again: aborting the batch in flight"),
        };
        // The flag first, then the message: whoever reads the message (an
        // operator, a test) can count on the abort being in force.
        ABORT.store(true, Ordering::SeqCst);
        WAKE.notify_waiters();
        tracing::warn!("{why}");
        // A third signal: the operator wants out now.  Exiting here is a
        // crash like any other, which the ledger and the next run resolve.
        let s = signals.next().await;
        tracing::warn!("{s} received a third time: exiting now");
        std::process::exit(130);
    });
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// A stop was asked for: start no new batch.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// The stop became an abort: leave a batch that has not committed.
pub fn abort_requested() -> bool {
    ABORT.load(Ordering::SeqCst)
}

/// Waits until a stop is asked for (forever if never).
pub async fn stopped() {
    loop {
        let notified = WAKE.notified();
        if stop_requested() {
            return;
        }
        notified.await;
    }
}

/// An error when the stop became an abort, for the checks a batch makes
/// before its Iceberg commit.
pub fn check_abort() -> Result<()> {
    if abort_requested() {
        return Err(interrupted(
            "stopped by a signal before the Iceberg commit: the Postgres transaction was \
             rolled back, nothing was committed or deleted",
        ));
    }
    Ok(())
}

/// The error of a run cut short by a stop.
pub fn interrupted(message: &str) -> Error {
    Error::new(ErrorKind::Interrupted, message.to_string())
        .with_hint("the next run resumes where this one stopped")
}
