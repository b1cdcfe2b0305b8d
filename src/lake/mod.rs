//! The Iceberg side: catalogs, the archive table's layout, writing data files,
//! committing batches and reading them back.

pub mod catalog;
pub mod commit;
pub mod commit_base;
pub mod compact;
pub mod evolve;
pub mod glue;
pub mod layout;
pub mod maintenance;
pub mod metadata_commit;
pub mod orphans;
pub mod probe;
pub mod readback;
pub mod rest_signer;
pub mod rest_token;
pub mod schema;
pub mod storage;
pub mod table;
pub mod vended;
pub mod write;

pub use catalog::open_catalog;
pub use table::ArchiveTable;
