//! permafrost: archive old rows of PostgreSQL time-series tables into Apache
//! Iceberg tables, verified before anything is deleted.
//!
//! The module tree follows the data flow:
//! [`config`] → [`plan`] (pure) → [`source`] (Postgres: introspect, extract,
//! delete) → [`lake`] (Iceberg: table, write, commit, read back) → the use
//! cases [`archive`], [`inspect`], [`check`], [`demo`], [`maintain`] →
//! operating them: [`run`] (on a [`schedule`], with [`metrics`]),
//! [`shutdown`] (graceful stop), [`logging`]; [`serve`]ing queries over
//! HTTP (feature `query`) → [`cli`].

pub mod archive;
pub mod aws;
pub mod bag;
pub mod check;
pub mod checksum;
pub mod cli;
pub mod column;
pub mod config;
pub mod demo;
pub mod error;
pub mod fault;
pub mod filter;
pub mod http;
pub mod inspect;
pub mod lake;
pub mod ledger;
pub mod logging;
pub mod maintain;
pub mod metrics;
pub mod notify;
pub mod plan;
pub mod progress;
pub mod restore;
pub mod run;
pub mod schedule;
pub mod secret;
#[cfg(feature = "query")]
pub mod serve;
pub mod shutdown;
pub mod source;
pub mod types;

/// The version written into snapshot summaries and table properties.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use error::{Error, ErrorKind, Result};
