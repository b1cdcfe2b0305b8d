//! What the planner needs of one table, read from the catalog and Postgres:
//! the ledger's batches and failure marks, their transactions' status, and
//! the windows that hold rows.  `archive`, `status` and `list` gather it
//! here, the same way.

use crate::config::TableConfig;
use crate::error::Result;
use crate::ledger;
use crate::plan::TableFacts;
use crate::plan::window::{Micros, Window};
use crate::source::{self, windows};

/// Facts of a table with no archive yet: only the `pending` windows found
/// in `scanned`.
pub fn without_archive(
    src: &source::SourceTable,
    t: &TableConfig,
    pending: Vec<Window>,
    scanned: Window,
) -> TableFacts {
    TableFacts {
        source: src.source_id(),
        granularity: t.partition_by,
        batches: vec![],
        xact: Default::default(),
        failed: Default::default(),
        pending,
        scanned,
        pg_history: None,
    }
}

/// Adds what the archive table's ledger says (batches in commit order,
/// failure marks), this cluster's history, and what Postgres says of the
/// transactions of the batches recorded in it (`txid_status`, one round
/// trip).
pub async fn add_ledger(
    facts: &mut TableFacts,
    client: &tokio_postgres::Client,
    table: &iceberg::table::Table,
) -> Result<()> {
    facts.batches = ledger::read::read_ledger(table, &facts.source)?;
    facts.failed = ledger::read::failed_batches(table);
    let xids = facts.askable_xids();
    let (history, xact) =
        futures::join!(source::history(client), source::xact_status(client, &xids));
    facts.pg_history = history;
    facts.xact = xact?.into_iter().collect();
    Ok(())
}

/// The range a run scans for windows holding rows: `[lower, cutoff)`.
pub fn scanned(lower: Option<Micros>, cutoff: Micros) -> Window {
    Window {
        start: lower.unwrap_or(Micros::MIN),
        end: cutoff,
    }
}

/// Everything: the ledger, and the windows in `[lower, cutoff)` that hold
/// rows in Postgres.
pub async fn gather(
    client: &tokio_postgres::Client,
    table: &iceberg::table::Table,
    src: &source::SourceTable,
    t: &TableConfig,
    lower: Option<Micros>,
    cutoff: Micros,
) -> Result<TableFacts> {
    let mut facts = without_archive(src, t, vec![], scanned(lower, cutoff));
    // Both at once: their queries share a round trip.
    let (ledger, pending) = futures::join!(
        add_ledger(&mut facts, client, table),
        windows::nonempty_windows(client, src, t.partition_by, lower, cutoff)
    );
    ledger?;
    facts.pending = pending?;
    Ok(facts)
}
