//! Where a table's files are read and written.
//!
//! Object stores (`s3://`, …) go through OpenDAL, as iceberg-rust chooses
//! per path.  A local warehouse (`file:`, or a bare absolute path) goes
//! through `std::fs` on the task's own thread: OpenDAL's local backend hands
//! every open, read, clone and directory creation to tokio's blocking pool,
//! and those hand-offs were most of the context switches of a local archive
//! run.  Reads and writes of a local file hit the page cache; only the flush
//! to disk waits on the device, so that alone goes to the blocking pool.
//!
//! Every file this storage writes — data files, manifests, manifest lists,
//! table metadata — is flushed to disk (`fsync`), with its directory entry
//! and the entry of every directory created for it (a new partition's),
//! before it is reported written, so a catalog commit never points at a
//! file that a power loss could leave empty or unnamed.  (OpenDAL flushed
//! the file, not the directory.)

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, LocalFsStorage, OutputFile, Storage,
    StorageConfig, StorageFactory,
};
use iceberg::{Error, ErrorKind, Result};
use iceberg_storage_opendal::{CustomAwsCredentialLoader, OpenDalResolvingStorageFactory};
use serde::{Deserialize, Serialize};

/// Builds a [`WarehouseStorage`]: local paths through `std::fs`, the rest
/// through OpenDAL — S3 signed by `signed`'s credential loader when there
/// is one and the `FileIO`'s properties carry no `s3.access-key-id` (static
/// keys of the config, or keys a REST catalog vends with a table), else
/// as OpenDAL's default does.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WarehouseStorageFactory {
    remote: OpenDalResolvingStorageFactory,
    signed: Option<OpenDalResolvingStorageFactory>,
}

impl WarehouseStorageFactory {
    /// S3 without keys of its own signed by `loader` (the AWS credential
    /// chain, its keys held as [`crate::aws`] says).
    pub fn signed_by(loader: CustomAwsCredentialLoader) -> Self {
        Self {
            remote: OpenDalResolvingStorageFactory::new(),
            signed: Some(OpenDalResolvingStorageFactory::new().with_s3_credential_loader(loader)),
        }
    }
}

#[typetag::serde]
impl StorageFactory for WarehouseStorageFactory {
    fn build(&self, config: &StorageConfig) -> Result<Arc<dyn Storage>> {
        let remote = match &self.signed {
            Some(signed) if !config.props().contains_key("s3.access-key-id") => signed,
            _ => &self.remote,
        };
        Ok(Arc::new(WarehouseStorage {
            remote: remote.build(config)?,
        }))
    }
}

/// The storage of one `FileIO`: see the module documentation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WarehouseStorage {
    remote: Arc<dyn Storage>,
}

/// Reads, deletes and lookups of local files: iceberg-rust's own.
static LOCAL_FS: LocalFsStorage = LocalFsStorage;

impl WarehouseStorage {
    /// The storage that serves `path` for everything but writes.
    fn route(&self, path: &str) -> &dyn Storage {
        match local(path) {
            Some(_) => &LOCAL_FS,
            None => self.remote.as_ref(),
        }
    }
}

/// The local file a path names, if it names one (`file:` or absolute).
fn local(path: &str) -> Option<PathBuf> {
    let rest = path.strip_prefix("file:").unwrap_or(path);
    if !rest.starts_with('/') {
        return None;
    }
    // `file:///a`, `file:/a` and `/a` are all `/a`.
    Some(PathBuf::from(format!("/{}", rest.trim_start_matches('/'))))
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(
        ErrorKind::Unexpected,
        format!("{what} {}: {e}", path.display()),
    )
}

/// A new local file being written, and the directories whose entries must
/// reach the disk with it: its own, and the parent of every directory
/// created for it.
#[derive(Debug)]
struct NewFile {
    file: fs::File,
    path: PathBuf,
    /// Directories holding an entry created for this file, deepest first.
    dirs: Vec<PathBuf>,
}

impl NewFile {
    /// Creates `path` for writing, and its missing directories.  (Two
    /// writers creating the same directory at once: the one that created it
    /// flushes its entry.)
    fn create(path: &Path) -> Result<Self> {
        let mut dirs = Vec::new();
        if let Some(dir) = path.parent() {
            dirs.push(dir.to_path_buf());
            let mut missing = dir;
            while !missing.exists() {
                let Some(up) = missing.parent() else { break };
                dirs.push(up.to_path_buf());
                missing = up;
            }
            fs::create_dir_all(dir).map_err(|e| match e.kind() {
                // mkdir's EEXIST for a plain file on the path says little.
                std::io::ErrorKind::AlreadyExists => Error::new(
                    ErrorKind::Unexpected,
                    format!(
                        "cannot create the directory {}: a file of that name is in the way ({e})",
                        dir.display()
                    ),
                ),
                _ => io_error("cannot create the directory", dir, e),
            })?;
        }
        let file = fs::File::create(path).map_err(|e| io_error("cannot create", path, e))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            dirs,
        })
    }

    fn write(&mut self, bs: &[u8]) -> Result<()> {
        self.file
            .write_all(bs)
            .map_err(|e| io_error("cannot write", &self.path, e))
    }

    /// Flushes the file and the directory entries that name it to disk, on
    /// the blocking pool (the one wait on the device).
    async fn sync(self) -> Result<()> {
        let flush = move || {
            self.file.sync_all().map_err(|e| (e, self.path.clone()))?;
            for dir in &self.dirs {
                fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| (e, dir.clone()))?;
            }
            Ok(())
        };
        let synced = tokio::task::spawn_blocking(flush)
            .await
            .map_err(|e| Error::new(ErrorKind::Unexpected, format!("flush task failed: {e}")))?;
        synced.map_err(|(e, path)| io_error("cannot flush", &path, e))
    }
}

#[async_trait]
#[typetag::serde]
impl Storage for WarehouseStorage {
    async fn exists(&self, path: &str) -> Result<bool> {
        self.route(path).exists(path).await
    }

    async fn metadata(&self, path: &str) -> Result<FileMetadata> {
        self.route(path).metadata(path).await
    }

    async fn read(&self, path: &str) -> Result<Bytes> {
        self.route(path).read(path).await
    }

    async fn reader(&self, path: &str) -> Result<Box<dyn FileRead>> {
        self.route(path).reader(path).await
    }

    async fn write(&self, path: &str, bs: Bytes) -> Result<()> {
        let Some(local) = local(path) else {
            return self.remote.write(path, bs).await;
        };
        let mut file = NewFile::create(&local)?;
        file.write(&bs)?;
        file.sync().await
    }

    async fn writer(&self, path: &str) -> Result<Box<dyn FileWrite>> {
        let Some(local) = local(path) else {
            return self.remote.writer(path).await;
        };
        Ok(Box::new(LocalWrite {
            file: Some(NewFile::create(&local)?),
        }))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        self.route(path).delete(path).await
    }

    async fn delete_prefix(&self, path: &str) -> Result<()> {
        self.route(path).delete_prefix(path).await
    }

    async fn delete_stream(&self, paths: BoxStream<'static, String>) -> Result<()> {
        let (local, remote): (Vec<String>, Vec<String>) = paths
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .partition(|p| local(p).is_some());
        for path in &local {
            LOCAL_FS.delete(path).await?;
        }
        if remote.is_empty() {
            return Ok(());
        }
        self.remote
            .delete_stream(futures::stream::iter(remote).boxed())
            .await
    }

    fn new_input(&self, path: &str) -> Result<InputFile> {
        match local(path) {
            Some(_) => Ok(InputFile::new(Arc::new(self.clone()), path.into())),
            None => self.remote.new_input(path),
        }
    }

    fn new_output(&self, path: &str) -> Result<OutputFile> {
        match local(path) {
            Some(_) => Ok(OutputFile::new(Arc::new(self.clone()), path.into())),
            None => self.remote.new_output(path),
        }
    }
}

/// A local file being written: bytes go to the page cache as they come,
/// `close` flushes them to disk.
#[derive(Debug)]
struct LocalWrite {
    file: Option<NewFile>,
}

#[async_trait]
impl FileWrite for LocalWrite {
    async fn write(&mut self, bs: Bytes) -> Result<()> {
        self.file
            .as_mut()
            .ok_or_else(|| Error::new(ErrorKind::Unexpected, "write after close"))?
            .write(&bs)
    }

    async fn close(&mut self) -> Result<()> {
        self.file
            .take()
            .ok_or_else(|| Error::new(ErrorKind::Unexpected, "closed twice"))?
            .sync()
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_are_told_from_object_store_paths() {
        assert_eq!(
            local("file:///w/t/a.parquet"),
            Some("/w/t/a.parquet".into())
        );
        assert_eq!(local("file:/w/a"), Some("/w/a".into()));
        assert_eq!(local("/w/a"), Some("/w/a".into()));
        assert_eq!(local("s3://bucket/w/a"), None);
        assert_eq!(local("memory:/a"), None);
        assert_eq!(local("relative/a"), None);
    }

    #[test]
    fn a_new_file_flushes_the_entries_of_the_directories_made_for_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let root = root.path();
        let first = NewFile::create(&root.join("t/data/day=1/a.parquet")).expect("create");
        let made = |d: &str| root.join(d);
        assert_eq!(
            first.dirs,
            vec![
                made("t/data/day=1"),
                made("t/data"),
                made("t"),
                root.to_path_buf()
            ]
        );
        let second = NewFile::create(&root.join("t/data/day=1/b.parquet")).expect("create");
        assert_eq!(second.dirs, vec![made("t/data/day=1")]);
        let third = NewFile::create(&root.join("t/data/day=2/c.parquet")).expect("create");
        assert_eq!(third.dirs, vec![made("t/data/day=2"), made("t/data")]);
    }

    #[tokio::test]
    async fn local_files_round_trip_through_file_io() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = format!("file://{}", dir.path().display());
        let io =
            iceberg::io::FileIOBuilder::new(Arc::new(WarehouseStorageFactory::default())).build();
        // `write` and a streamed writer both create missing directories.
        let meta = format!("{root}/t/metadata/v1.json");
        io.new_output(&meta)
            .expect("output")
            .write(Bytes::from_static(b"{}"))
            .await
            .expect("write");
        let data = format!("{root}/t/data/day=1/a.parquet");
        let out = io.new_output(&data).expect("output");
        let mut w = out.writer().await.expect("writer");
        w.write(Bytes::from_static(b"abc")).await.expect("write");
        w.write(Bytes::from_static(b"def")).await.expect("write");
        w.close().await.expect("close");
        assert!(w.write(Bytes::from_static(b"x")).await.is_err(), "closed");

        let input = io.new_input(&data).expect("input");
        assert_eq!(input.metadata().await.expect("metadata").size, 6);
        assert_eq!(
            input.read().await.expect("read"),
            Bytes::from_static(b"abcdef")
        );
        let r = input.reader().await.expect("reader");
        assert_eq!(
            r.read(2..5).await.expect("range"),
            Bytes::from_static(b"cde")
        );
        assert_eq!(
            io.new_input(&meta)
                .expect("input")
                .read()
                .await
                .expect("read"),
            Bytes::from_static(b"{}")
        );

        io.delete_stream(futures::stream::iter(vec![meta.clone()]).boxed())
            .await
            .expect("delete");
        assert!(!io.exists(&meta).await.expect("exists"));
        assert!(io.exists(&data).await.expect("exists"));
        io.delete_prefix(format!("{root}/t/data"))
            .await
            .expect("prefix");
        assert!(!io.exists(&data).await.expect("exists"));

        // A file where a directory should be: the cause, and the path.
        std::fs::write(dir.path().join("blocked"), b"").expect("file");
        let e = io
            .new_output(format!("{root}/blocked/x"))
            .expect("output")
            .write(Bytes::new())
            .await
            .expect_err("not a directory");
        let e = e.to_string();
        assert!(
            e.contains("cannot create the directory")
                && e.contains("/blocked: a file of that name is in the way (File exists"),
            "{e}"
        );
    }
}
