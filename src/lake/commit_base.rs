//! The catalog a batch commit goes through: the committer's table as the
//! commit's base, and no rebase.
//!
//! iceberg-rust's `Transaction::commit` loads the table before it applies
//! its actions (a round trip to the catalog, and for the SQL catalog a
//! metadata file read and parsed), and after a conflict loads it again and
//! re-applies the same actions onto whatever it finds. [`CommitBase`]
//! answers the first load with the table the committer already holds, so a
//! commit is one request, and refuses every later load, so a commit is
//! never rebased by iceberg-rust: the caller prepares it again from a
//! fresh load ([`super::commit::commit_batch`]), ledger included.
//!
//! Going out on a table the committer holds is safe because the commit
//! carries the requirements computed from it (same table UUID, `main`
//! still at its current snapshot), which every catalog checks atomically:
//! if anything moved `main` since (another engine's compaction, a commit of
//! a run that died landing late), the catalog refuses the commit and
//! nothing of it lands.
//!
//! A SQL or Glue catalog's commit is the client's own work: iceberg-rust's
//! SQL catalog (and Glue's `update_table`) would load the table again —
//! the catalog's row and the whole metadata file, which grows with every
//! snapshot — to check the requirements and apply the updates there.
//! [`CommitBase`] applies them to the base and swaps the catalog's pointer
//! from the base's metadata file to the new one with a compare-and-set
//! ([`super::metadata_commit::swap`]): the base must still be what the
//! catalog points at, which is stricter than the requirements (any change
//! since — even to a property — refuses the commit), so nothing lands on a
//! table the base does not show.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use iceberg::io::FileIO;
use iceberg::table::Table;
use iceberg::{
    Catalog, Error, ErrorKind, Namespace, NamespaceIdent, Result, TableCommit, TableCreation,
    TableIdent,
};

use super::catalog::CatalogHandle;
use super::metadata_commit;

/// `handle`'s catalog with its first `load_table` of `base`'s table
/// answered by `base`, every later one refused, and a commit applied to
/// `base`; see the module docs.
pub struct CommitBase<'a> {
    handle: &'a CatalogHandle,
    base: Table,
    /// The first load of the base's table was answered.
    loaded: AtomicBool,
}

impl std::fmt::Debug for CommitBase<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitBase")
            .field("base", self.base.identifier())
            .finish_non_exhaustive()
    }
}

impl<'a> CommitBase<'a> {
    /// A view of `handle`'s catalog for one commit onto `base`.
    pub fn new(handle: &'a CatalogHandle, base: &Table) -> Self {
        Self {
            handle,
            base: base.clone(),
            loaded: AtomicBool::new(false),
        }
    }

    /// The base, the first time `ident` is asked for.
    fn take_base(&self, ident: &TableIdent) -> Option<Table> {
        let first = self.base.identifier() == ident && !self.loaded.swap(true, Ordering::SeqCst);
        first.then(|| self.base.clone())
    }

    /// The catalog the commit goes to.
    fn inner(&self) -> &dyn Catalog {
        self.handle.iceberg()
    }
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
impl Catalog for CommitBase<'_> {
    async fn load_table(&self, ident: &TableIdent) -> Result<Table> {
        self.take_base(ident).ok_or_else(|| {
            Error::new(
                ErrorKind::DataInvalid,
                format!("{ident} changed since the table this commit was prepared from"),
            )
        })
    }

    /// The committed table, with the base's `FileIO` ([`with_io`]): the
    /// updates applied to the base and swapped in (SQL, Glue), or the
    /// catalog's answer (REST); see the module docs.
    async fn update_table(&self, commit: TableCommit) -> Result<Table> {
        let committed = if metadata_commit::swaps(self.handle) {
            let staged = commit.apply(self.base.clone())?;
            metadata_commit::swap(self.handle, &self.base, staged.metadata_ref()).await?
        } else {
            self.inner().update_table(commit).await?
        };
        with_io(committed, self.base.file_io())
    }

    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> Result<Vec<NamespaceIdent>> {
        self.inner().list_namespaces(parent).await
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<Namespace> {
        self.inner().create_namespace(namespace, properties).await
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> Result<Namespace> {
        self.inner().get_namespace(namespace).await
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        self.inner().namespace_exists(namespace).await
    }

    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<()> {
        self.inner().update_namespace(namespace, properties).await
    }

    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        self.inner().drop_namespace(namespace).await
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        self.inner().list_tables(namespace).await
    }

    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> Result<Table> {
        self.inner().create_table(namespace, creation).await
    }

    async fn drop_table(&self, ident: &TableIdent) -> Result<()> {
        self.inner().drop_table(ident).await
    }

    async fn purge_table(&self, ident: &TableIdent) -> Result<()> {
        self.inner().purge_table(ident).await
    }

    async fn table_exists(&self, ident: &TableIdent) -> Result<bool> {
        self.inner().table_exists(ident).await
    }

    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> Result<()> {
        self.inner().rename_table(src, dest).await
    }

    async fn register_table(&self, ident: &TableIdent, metadata_location: String) -> Result<Table> {
        self.inner().register_table(ident, metadata_location).await
    }
}
