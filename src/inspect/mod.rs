//! Inspecting archives: `status`, `snapshots`, `list`, `show`, `diff`, `fetch`,
//! and `query` (SQL, with the `query` cargo feature).
//!
//! Everything shown is derived from what the catalog and Postgres say now —
//! there is no state of our own to drift.

pub mod fetch;
pub mod list;
#[cfg(feature = "query")]
pub mod query;
pub mod show;
pub mod snapshots;
pub mod status;

use iceberg::spec::SnapshotRef;
use iceberg::table::Table;

use crate::config::{Config, TableConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::lake;
use crate::plan::window::{Micros, rfc3339};

pub use status::{TableStatus, status};

/// Which snapshot to read: the current one, one by id, or the one current at a time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SnapshotChoice {
    #[default]
    Current,
    Id(i64),
    AsOf(Micros),
}

/// The one configured table `name` names, its Iceberg table, and the
/// catalog it was loaded from (the command's one handle).
pub async fn open_table(
    cfg: &Config,
    name: &str,
) -> Result<(
    TableConfig,
    Table,
    std::sync::Arc<lake::catalog::CatalogHandle>,
)> {
    let t = cfg
        .select_tables(Some(name))?
        .into_iter()
        .next()
        .ok_or_else(|| Error::config(format!("no table `{name}` in the config")))?;
    let catalog = lake::open_catalog(&cfg.catalog).await?;
    match open_table_in(catalog.iceberg(), &t).await? {
        Some(table) => Ok((t, table, catalog)),
        None => Err(not_created(&t)),
    }
}

/// The Iceberg table of `t` in an open catalog, or `None` when the first
/// archive run has not created it yet.
pub async fn open_table_in(
    catalog: &dyn iceberg::Catalog,
    t: &TableConfig,
) -> Result<Option<Table>> {
    let ident = lake::table::ident(t)?;
    let exists = catalog
        .table_exists(&ident)
        .await
        .map_err(|e| Error::iceberg(format!("cannot look up {ident} in the catalog"), e))?;
    if !exists {
        return Ok(None);
    }
    lake::commit::reload(catalog, &ident).await.map(Some)
}

/// The error for a table the first archive run has not created yet.
pub fn not_created(t: &TableConfig) -> Error {
    let ident = lake::table::ident(t)
        .map(|i| i.to_string())
        .unwrap_or_else(|_| t.table.clone());
    Error::new(ErrorKind::Catalog, format!("{ident} does not exist yet"))
        .with_hint("the first `permafrost archive` run creates it")
}

/// Resolves `choice` to a snapshot of the table's current history.
pub fn resolve_snapshot(table: &Table, choice: SnapshotChoice) -> Result<Option<SnapshotRef>> {
    let history = crate::ledger::read::ancestry(table);
    match choice {
        SnapshotChoice::Current => Ok(history.last().cloned()),
        SnapshotChoice::Id(id) => table
            .metadata()
            .snapshot_by_id(id)
            .cloned()
            .map(Some)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Catalog,
                    format!("{} has no snapshot {id}", table.identifier()),
                )
                .with_hint("`permafrost snapshots` lists them")
            }),
        SnapshotChoice::AsOf(t) => {
            let ms = t.div_euclid(1000);
            match history.iter().rev().find(|s| s.timestamp_ms() <= ms) {
                Some(s) => Ok(Some(s.clone())),
                None => Err(Error::new(
                    ErrorKind::Catalog,
                    format!(
                        "{} had no snapshot yet at {}",
                        table.identifier(),
                        rfc3339(t)
                    ),
                )
                .with_hint("`permafrost snapshots` lists when each was committed")),
            }
        }
    }
}
