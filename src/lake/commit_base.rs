//! The catalog a batch commit is prepared against: the committer's table
//! as the commit's base, and nothing sent.
//!
//! iceberg-rust's `Transaction::commit` loads the table, applies its
//! actions — a fast append writes its manifest and manifest list — and
//! sends the resulting updates to the catalog.  [`Stager`] answers the load
//! with the base the committer holds (no round trip) and refuses every later
//! one (iceberg-rust never rebases a batch: the caller prepares it again from
//! a fresh load, ledger included), and instead of sending the commit it
//! keeps its requirements and updates and answers with the base they
//! applied to: the table as it will be once the commit lands.  The caller
//! sends them later ([`super::commit`]), possibly after the previous batch's
//! commit landed — which is what lets a batch's files be written while the
//! one before it is still with the catalog.
//!
//! Sending what was prepared on a base is safe because the commit carries
//! the requirements computed from it (same table UUID, `main` still at the
//! base's snapshot), which every catalog checks atomically: if anything
//! moved `main` since (another engine's compaction, a commit of a run that
//! died landing late), the catalog refuses the commit and nothing of it
//! lands.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use iceberg::io::FileIO;
use iceberg::table::Table;
use iceberg::{
    Catalog, Error, ErrorKind, Namespace, NamespaceIdent, Result, TableCommit, TableCreation,
    TableIdent, TableRequirement, TableUpdate,
};

/// A catalog for preparing one commit onto `base`; see the module docs.
/// Everything but loading `base` and committing to it is refused.
pub struct Stager {
    base: Table,
    /// The first load of the base's table was answered.
    loaded: AtomicBool,
    /// The commit iceberg-rust asked for, kept instead of sent.
    kept: std::sync::Mutex<Option<(Vec<TableRequirement>, Vec<TableUpdate>)>>,
}

impl std::fmt::Debug for Stager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stager")
            .field("base", self.base.identifier())
            .finish_non_exhaustive()
    }
}

impl Stager {
    /// A catalog for one commit prepared onto `base`.
    pub fn new(base: &Table) -> Self {
        Self {
            base: base.clone(),
            loaded: AtomicBool::new(false),
            kept: std::sync::Mutex::new(None),
        }
    }

    /// The requirements and updates of the prepared commit, once.
    pub fn take(&self) -> Option<(Vec<TableRequirement>, Vec<TableUpdate>)> {
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    fn refused(&self, what: &str) -> Error {
        Error::new(
            ErrorKind::FeatureUnsupported,
            format!("{what}: not while preparing a commit"),
        )
    }
}

/// `base` with `updates` applied, under its own metadata location (the
/// catalog chooses the next one when the commit lands).
pub fn applied_to(base: &Table, updates: Vec<TableUpdate>) -> Result<Table> {
    let metadata = super::metadata_commit::apply_updates(base, updates)?;
    Table::builder()
        .identifier(base.identifier().clone())
        .metadata(metadata)
        .metadata_location(base.metadata_location_result()?)
        .file_io(base.file_io().clone())
        .runtime(iceberg::Runtime::try_current()?)
        .build()
}

/// `committed` read and written through `io`, the `FileIO` of the table
/// the commit was made on: a REST catalog answers a commit with a table
/// whose `FileIO` has the catalog's properties alone, without those it gave
/// with the table (its S3 endpoint, vended keys), so reading it back would
/// go elsewhere, or unsigned.  The storage is the same table's.
pub fn with_io(committed: Table, io: &FileIO) -> Result<Table> {
    Table::builder()
        .identifier(committed.identifier().clone())
        .metadata(committed.metadata_ref())
        .metadata_location(committed.metadata_location_result()?)
        .file_io(io.clone())
        .runtime(iceberg::Runtime::try_current()?)
        .build()
}

#[async_trait]
impl Catalog for Stager {
    async fn load_table(&self, ident: &TableIdent) -> Result<Table> {
        let first = self.base.identifier() == ident && !self.loaded.swap(true, Ordering::SeqCst);
        first.then(|| self.base.clone()).ok_or_else(|| {
            Error::new(
                ErrorKind::DataInvalid,
                format!("{ident} changed since the table this commit was prepared from"),
            )
        })
    }

    /// Keeps the commit's requirements and updates and answers with the
    /// base they applied to (checked against it first, as a catalog would).
    async fn update_table(&self, mut commit: TableCommit) -> Result<Table> {
        let requirements = commit.take_requirements();
        let updates = commit.take_updates();
        for r in &requirements {
            r.check(Some(self.base.metadata()))?;
        }
        let staged = applied_to(&self.base, updates.clone())?;
        *self
            .kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((requirements, updates));
        Ok(staged)
    }

    async fn list_namespaces(&self, _: Option<&NamespaceIdent>) -> Result<Vec<NamespaceIdent>> {
        Err(self.refused("listing namespaces"))
    }

    async fn create_namespace(
        &self,
        _: &NamespaceIdent,
        _: HashMap<String, String>,
    ) -> Result<Namespace> {
        Err(self.refused("creating a namespace"))
    }

    async fn get_namespace(&self, _: &NamespaceIdent) -> Result<Namespace> {
        Err(self.refused("reading a namespace"))
    }

    async fn namespace_exists(&self, _: &NamespaceIdent) -> Result<bool> {
        Err(self.refused("reading a namespace"))
    }

    async fn update_namespace(&self, _: &NamespaceIdent, _: HashMap<String, String>) -> Result<()> {
        Err(self.refused("updating a namespace"))
    }

    async fn drop_namespace(&self, _: &NamespaceIdent) -> Result<()> {
        Err(self.refused("dropping a namespace"))
    }

    async fn list_tables(&self, _: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        Err(self.refused("listing tables"))
    }

    async fn create_table(&self, _: &NamespaceIdent, _: TableCreation) -> Result<Table> {
        Err(self.refused("creating a table"))
    }

    async fn drop_table(&self, _: &TableIdent) -> Result<()> {
        Err(self.refused("dropping a table"))
    }

    async fn purge_table(&self, _: &TableIdent) -> Result<()> {
        Err(self.refused("purging a table"))
    }

    async fn table_exists(&self, _: &TableIdent) -> Result<bool> {
        Err(self.refused("reading a table"))
    }

    async fn rename_table(&self, _: &TableIdent, _: &TableIdent) -> Result<()> {
        Err(self.refused("renaming a table"))
    }

    async fn register_table(&self, _: &TableIdent, _: String) -> Result<Table> {
        Err(self.refused("registering a table"))
    }
}
