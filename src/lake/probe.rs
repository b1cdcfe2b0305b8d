//! `check`'s proof that the warehouse storage works: one small object
//! written, read back and deleted, where the archive's files will go.

use bytes::Bytes;
use iceberg::io::FileIO;

use crate::error::{Error, ErrorKind, Result};

/// Where a probe goes and through which FileIO: the archive table's data
/// path, or (no table yet) where a catalog whose storage properties are
/// permafrost's would put it.
pub struct ProbeTarget {
    pub io: FileIO,
    pub location: String,
}

impl ProbeTarget {
    /// Where `table` writes its data files (`write.data.path`, else
    /// `<location>/data`): object stores that hold Iceberg tables may refuse
    /// writes elsewhere under a table.
    pub fn of_table(table: &iceberg::table::Table) -> Self {
        let md = table.metadata();
        let location = md
            .properties()
            .get("write.data.path")
            .cloned()
            .unwrap_or_else(|| format!("{}/data", md.location().trim_end_matches('/')));
        Self {
            io: table.file_io().clone(),
            location,
        }
    }
}

/// Writes, reads back and deletes `<location>/permafrost-check-<uuid>.parquet`
/// (named like a data file: stores that hold Iceberg tables, such as S3
/// table buckets, refuse other names there; no snapshot ever references
/// it).  Returns the location probed, and a warning when the object could
/// be written and read but not deleted (some stores allow no deletes).
pub async fn probe(target: &ProbeTarget) -> Result<(String, Option<String>)> {
    let location = target.location.trim_end_matches('/');
    let path = format!(
        "{location}/permafrost-check-{}.parquet",
        uuid::Uuid::new_v4()
    );
    let body = Bytes::from_static(b"permafrost check: not a data file, safe to delete\n");
    let out = target
        .io
        .new_output(&path)
        .map_err(|e| Error::storage("cannot write to the warehouse", e))?;
    out.write(body.clone())
        .await
        .map_err(|e| Error::storage("cannot write to the warehouse", e))?;
    let read = async { target.io.new_input(&path)?.read().await }
        .await
        .map_err(|e| Error::storage("cannot read back from the warehouse", e));
    let left = match target.io.delete(&path).await {
        Ok(()) => None,
        Err(e) => Some(format!(
            "the probe object {path} could be written and read but not deleted ({}); delete it, or let orphan-file cleanup take it",
            Error::storage("delete", e).message()
        )),
    };
    if read? != body {
        return Err(Error::new(
            ErrorKind::Storage,
            format!("the warehouse returned other bytes than were written to {path}"),
        ));
    }
    Ok((location.to_string(), left))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::lake::storage::WarehouseStorageFactory;

    #[tokio::test]
    async fn a_probe_leaves_nothing_and_a_blocked_directory_fails() {
        let dir = tempfile::tempdir().expect("tmp");
        let io =
            iceberg::io::FileIOBuilder::new(Arc::new(WarehouseStorageFactory::default())).build();
        let root = format!("file://{}", dir.path().display());
        let target = ProbeTarget {
            io: io.clone(),
            location: root.clone(),
        };
        assert_eq!(probe(&target).await.expect("probe"), (root.clone(), None));
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert!(left.is_empty(), "nothing left: {left:?}");

        std::fs::write(dir.path().join("blocked"), b"").expect("file");
        let blocked = ProbeTarget {
            io,
            location: format!("{root}/blocked"),
        };
        let e = probe(&blocked).await.expect_err("blocked");
        assert_eq!(e.kind(), ErrorKind::Storage);
        assert!(
            e.message().starts_with("cannot write to the warehouse"),
            "{e}"
        );
        assert!(
            e.hint().is_some_and(|h| h.contains("local warehouse")),
            "{e:?}"
        );
    }
}
