//! Named fault points for crash tests.
//!
//! Built with the `fault-injection` feature, [`point`] aborts the process (no
//! unwinding, no cleanup: like a kill -9) when the environment variable
//! `PERMAFROST_FAULT` names it.  Without the feature it compiles to nothing.
//!
//! Points, in the order a batch passes them:
//! `after-extract`, `after-write`, `after-commit`, `after-verify`,
//! `before-pg-commit`, `after-pg-commit`.

/// Aborts the process if `PERMAFROST_FAULT` is `name` (fault-injection builds only).
#[inline]
pub fn point(name: &str) {
    #[cfg(feature = "fault-injection")]
    {
        if std::env::var("PERMAFROST_FAULT").ok().as_deref() == Some(name) {
            eprintln!("permafrost: fault injected at `{name}`, aborting");
            std::process::abort();
        }
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = name;
}
