//! Integration tests against real services (PostgreSQL, SeaweedFS S3 + Iceberg
//! REST catalog, SQL catalogs on SQLite and Postgres), with tables read back by
//! PyIceberg and DuckDB.  `scripts/test` starts the services and sets the
//! `PERMAFROST_TEST_*` variables; without them these tests skip.

mod archive;
mod aws;
mod catalogs;
mod common;
mod connect;
mod demo;
mod errors;
mod evolution;
mod hostile;
mod inspect;
mod maintenance;
mod modes;
mod operate;
mod restore;
mod retention;
mod safety;
#[cfg(feature = "query")]
mod serve;
mod structure;
mod tls;
mod types;
