//! The restore target as Postgres describes it (asked through
//! [`crate::source::catalog`]): its columns, primary key, CHECK constraints
//! and the partitions that overlap a range.  Read by validation and by
//! attach/merge alike.

use tokio_postgres::Client;

use crate::error::Result;
use crate::plan::window::Window;
use crate::source::introspect::TimeKind;
use crate::source::{catalog, partitions};

/// A partition of the target whose bounds overlap the range.
#[derive(Debug, Clone)]
pub struct Partition {
    pub name: String,
    /// Its bounds are exactly the range.
    pub exact: bool,
}

/// The partitions of `target` whose range overlaps `range` (a default
/// partition is not listed: rows it holds in the range are counted apart).
pub async fn overlapping_partitions(
    client: &Client,
    target: &str,
    kind: TimeKind,
    range: &Window,
) -> Result<Vec<Partition>> {
    Ok(partitions::list(client, target, kind)
        .await?
        .into_iter()
        .filter(|p| p.overlaps(range))
        .map(|p| Partition {
            exact: p.window() == Some(*range),
            name: p.name,
        })
        .collect())
}

/// A column of the target table.
pub(crate) type TargetColumn = catalog::Column;

/// The target's columns, in table order.
pub(crate) async fn target_columns(client: &Client, target: &str) -> Result<Vec<TargetColumn>> {
    catalog::columns(client, catalog::oid_of(client, target).await?).await
}

/// The target's primary key columns (empty without one).
pub(crate) async fn primary_key(client: &Client, target: &str) -> Result<Vec<String>> {
    catalog::primary_key(client, catalog::oid_of(client, target).await?).await
}

/// The target's CHECK constraints: `(name, definition)`, by name.
pub(crate) async fn check_constraints(
    client: &Client,
    target: &str,
) -> Result<Vec<(String, String)>> {
    catalog::check_constraints(client, catalog::oid_of(client, target).await?).await
}
