//! Reading a committed batch back from the catalog's table.
//!
//! A batch's rows are exactly the data files its snapshot added.  They are
//! found through the snapshot's manifest list as the catalog serves it now
//! (not from anything kept in memory since the write) and read with
//! iceberg-rust's Arrow reader.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::RecordBatch;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use iceberg::arrow::ArrowReader;
use iceberg::io::FileIO;
use iceberg::scan::FileScanTask;
use iceberg::spec::{
    DataContentType, Manifest, ManifestContentType, ManifestFile, ManifestStatus, Operation,
    SnapshotRef,
};
use iceberg::table::Table;

use crate::bag::{Collector, Multiset};
use crate::checksum::{Checksum, RowHasher};
use crate::error::{Error, Result};
use crate::lake::vended::TableStorage;

/// A data file added by a snapshot.
#[derive(Debug, Clone)]
pub struct AddedFile {
    pub path: String,
    pub size: u64,
    pub records: u64,
}

/// The data files `snapshot` added.
pub async fn added_files(table: &Table, snapshot: &SnapshotRef) -> Result<Vec<AddedFile>> {
    Ok(file_changes(table, snapshot).await?.added)
}

/// What one snapshot changed in the table's files: the entries of its own
/// manifests that carry its snapshot id.
#[derive(Debug, Clone, Default)]
pub struct FileChanges {
    /// Data files it added.
    pub added: Vec<AddedFile>,
    /// Data files it removed (entries `DELETED` by it: a compaction, an
    /// overwrite, a delete).
    pub removed: Vec<String>,
    /// The partition of each delete file it added (row-level deletes, read
    /// with the data files of that partition), as in `partition_of`;
    /// [`EVERY_PARTITION`] for one of an unpartitioned spec.
    pub deletes_in: Vec<String>,
    /// The partition of each file added or removed: its spec id and values
    /// (equal for two files of one partition of one spec).
    pub partition_of: HashMap<String, String>,
}

/// The partition of a delete file that may apply to data files of every
/// partition (one written with an unpartitioned spec).
pub const EVERY_PARTITION: &str = "*";

/// The files `snapshot` added and removed (see [`FileChanges`]).  Reads its
/// manifest list and the manifests it wrote.
pub async fn file_changes(table: &Table, snapshot: &SnapshotRef) -> Result<FileChanges> {
    let id = snapshot.snapshot_id();
    let list = table
        .manifest_list_reader(snapshot)
        .load()
        .await
        .map_err(|e| {
            Error::storage(format!("cannot read the manifest list of snapshot {id}"), e)
        })?;
    let mut out = FileChanges::default();
    let own: Vec<ManifestFile> = list
        .entries()
        .iter()
        .filter(|m| m.added_snapshot_id == id)
        .cloned()
        .collect();
    let mut manifests = read_manifests(table, &own);
    while let Some((m, manifest)) = manifests.try_next().await? {
        for e in manifest.entries() {
            if e.snapshot_id() != Some(id) {
                continue;
            }
            let partition = || format!("{}:{:?}", m.partition_spec_id, e.data_file().partition());
            match (e.status(), e.content_type()) {
                (ManifestStatus::Added, DataContentType::Data) => {
                    out.partition_of
                        .insert(e.file_path().to_string(), partition());
                    out.added.push(AddedFile {
                        path: e.file_path().to_string(),
                        size: e.file_size_in_bytes(),
                        records: e.record_count(),
                    })
                }
                (ManifestStatus::Deleted, DataContentType::Data) => {
                    out.partition_of
                        .insert(e.file_path().to_string(), partition());
                    out.removed.push(e.file_path().to_string())
                }
                (ManifestStatus::Added, _) => {
                    let unpartitioned = table
                        .metadata()
                        .partition_spec_by_id(m.partition_spec_id)
                        .is_none_or(|spec| spec.fields().is_empty());
                    out.deletes_in.push(if unpartitioned {
                        EVERY_PARTITION.to_string()
                    } else {
                        partition()
                    })
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Whether `snapshot` may have removed data files or added delete files,
/// from its summary alone: not an append, nor a manifest rewrite that says
/// it changed no file (`maintain`'s and Java's merge only manifests).
pub fn may_change_files(snapshot: &SnapshotRef) -> bool {
    let summary = snapshot.summary();
    let p = &summary.additional_properties;
    let none = |key: &str| p.get(key).is_none_or(|v| v == "0");
    let manifests_only = summary.operation == Operation::Replace
        && p.contains_key("manifests-replaced")
        && none("deleted-data-files")
        && none("added-delete-files");
    summary.operation != Operation::Append && !manifests_only
}

/// A live data file of the current snapshot.
#[derive(Debug, Clone)]
pub struct LiveFile {
    pub path: String,
    pub size: u64,
    pub records: u64,
    /// Partition values, in spec order.
    pub partition: Vec<Option<iceberg::spec::Literal>>,
    /// The snapshot that added it.
    pub snapshot_id: Option<i64>,
    /// The partition spec it was written with.
    pub spec_id: i32,
}

/// How many manifests (or snapshots' manifests) are read at once: each is
/// a round trip to the object store, and a table that is not maintained
/// lists one manifest per batch.
pub const MANIFEST_READS: usize = 8;

/// The manifests `list` names, read [`MANIFEST_READS`] at a time, in
/// `list`'s order.
pub fn read_manifests<'a>(
    table: &'a Table,
    list: &'a [ManifestFile],
) -> BoxStream<'a, Result<(&'a ManifestFile, Manifest)>> {
    futures::stream::iter(list)
        .map(move |m| async move {
            let manifest = m.load_manifest(table.file_io()).await.map_err(|e| {
                Error::storage(format!("cannot read manifest {}", m.manifest_path), e)
            })?;
            Ok((m, manifest))
        })
        .buffered(MANIFEST_READS)
        .boxed()
}

/// Every live data file of the table's current snapshot.
pub async fn live_files(table: &Table) -> Result<Vec<LiveFile>> {
    let Some(snapshot) = table.metadata().current_snapshot().cloned() else {
        return Ok(vec![]);
    };
    let list = table
        .manifest_list_reader(&snapshot)
        .load()
        .await
        .map_err(|e| Error::storage("cannot read the manifest list", e))?;
    let mut out = Vec::new();
    let mut manifests = read_manifests(table, list.entries());
    while let Some((m, manifest)) = manifests.try_next().await? {
        for e in manifest.entries() {
            if e.is_alive() && e.content_type() == DataContentType::Data {
                out.push(LiveFile {
                    path: e.file_path().to_string(),
                    size: e.file_size_in_bytes(),
                    records: e.record_count(),
                    partition: e
                        .data_file()
                        .partition()
                        .iter()
                        .map(|v| v.cloned())
                        .collect(),
                    snapshot_id: e.snapshot_id(),
                    spec_id: m.partition_spec_id,
                });
            }
        }
    }
    Ok(out)
}

/// Streams the rows of `files` (all columns of the snapshot's schema) to `f`.
pub async fn for_each_batch<F>(
    table: &Table,
    snapshot: &SnapshotRef,
    files: &[AddedFile],
    mut f: F,
) -> Result<()>
where
    F: FnMut(&RecordBatch) -> Result<()>,
{
    let mut stream = batches(table, snapshot, files)?;
    while let Some(batch) = stream.try_next().await? {
        f(&batch)?;
    }
    Ok(())
}

/// The rows of `files` as they were written, as a stream, with every
/// column of the snapshot's schema (columns added since a file was written
/// read as NULL), up to [`READ_BACK_FILES`] files at a time (rows of
/// different files interleave: for checksums and hash sets).  Row-level
/// deletes are not applied: right for the files a snapshot itself added,
/// read at that snapshot (no delete file can apply to them there);
/// [`live_batches`] reads files as the table holds them now.
pub fn batches(
    table: &Table,
    snapshot: &SnapshotRef,
    files: &[AddedFile],
) -> Result<BoxStream<'static, Result<RecordBatch>>> {
    if files.is_empty() {
        return Ok(futures::stream::empty().boxed());
    }
    let tasks = plain_tasks(table, snapshot, files)?;
    Ok(read_files(
        table,
        file_reader,
        tasks,
        READ_BACK_FILES,
        "cannot read the batch back",
    ))
}

/// Data files [`batches`] reads at once: on an object store each file is a
/// few requests one after another (footer, then column chunks), so a batch
/// of several partitions reads back in the time of about one.  [`batches`]
/// decodes on the caller's task; [`checksum_snapshot`] on a task per file.
pub const READ_BACK_FILES: usize = 4;

/// Tasks reading `files` whole, with every column of `snapshot`'s schema.
fn plain_tasks(
    table: &Table,
    snapshot: &SnapshotRef,
    files: &[AddedFile],
) -> Result<Vec<FileScanTask>> {
    let schema = snapshot
        .schema(table.metadata())
        .map_err(|e| Error::iceberg("cannot find the snapshot's schema", e))?;
    let field_ids: Vec<i32> = schema.as_struct().fields().iter().map(|f| f.id).collect();
    Ok(files
        .iter()
        .map(|af| {
            FileScanTask::builder()
                .with_file_size_in_bytes(af.size)
                .with_start(0)
                .with_length(af.size)
                .with_record_count(Some(af.records))
                .with_data_file_path(af.path.clone())
                .with_data_file_format(iceberg::spec::DataFileFormat::Parquet)
                .with_schema(schema.clone())
                .with_project_field_ids(field_ids.clone())
                .with_case_sensitive(true)
                .build()
        })
        .collect())
}

/// Whether `snapshot` holds row-level delete files: rows another engine
/// deleted or updated merge-on-read (Spark, Trino, Flink, DuckDB), which
/// reading its data files alone would bring back.  Reads the manifest list.
pub async fn has_row_deletes(table: &Table, snapshot: &SnapshotRef) -> Result<bool> {
    let list = table
        .manifest_list_reader(snapshot)
        .load()
        .await
        .map_err(|e| Error::storage("cannot read the manifest list", e))?;
    Ok(list.entries().iter().any(|m| {
        m.content == ManifestContentType::Deletes && (m.has_added_files() || m.has_existing_files())
    }))
}

/// Refuses to read `snapshot` when its row-level deletes include deletion
/// vectors: Iceberg v3's deletes (a Puffin blob of row positions per data
/// file), which Spark with Iceberg 1.8+, Trino, DuckDB and Impala write on
/// a v3 table instead of positional delete files.  iceberg-rust 0.10.1
/// reads every delete file as Parquet, so a read would fail on them in its
/// own words — and a read without them would bring deleted rows back.
/// Reads nothing for a table below v3 (no deletion vector can exist); else
/// the manifest list, and the delete manifests when there are any.
pub async fn refuse_deletion_vectors(table: &Table, snapshot: &SnapshotRef) -> Result<()> {
    use iceberg::spec::{DataFileFormat, FormatVersion};
    if matches!(
        table.metadata().format_version(),
        FormatVersion::V1 | FormatVersion::V2
    ) {
        return Ok(());
    }
    let list = table
        .manifest_list_reader(snapshot)
        .load()
        .await
        .map_err(|e| Error::storage("cannot read the manifest list", e))?;
    for m in list.entries() {
        if m.content != ManifestContentType::Deletes
            || !(m.has_added_files() || m.has_existing_files())
        {
            continue;
        }
        let manifest = m
            .load_manifest(table.file_io())
            .await
            .map_err(|e| Error::storage("cannot read a delete manifest", e))?;
        let vector = manifest
            .entries()
            .iter()
            .find(|e| e.is_alive() && e.file_format() == DataFileFormat::Puffin);
        if let Some(v) = vector {
            return Err(deletion_vectors_refused(
                snapshot.snapshot_id(),
                v.file_path(),
            ));
        }
    }
    Ok(())
}

fn deletion_vectors_refused(snapshot: i64, example: &str) -> Error {
    Error::new(
        crate::error::ErrorKind::Unsupported,
        format!(
            "snapshot {snapshot} holds deletion vectors (Iceberg v3 row-level deletes \
             another engine wrote, e.g. {example}), which permafrost cannot apply yet; \
             reading without them would bring deleted rows back"
        ),
    )
    .with_hint(
        "read a snapshot from before them (`--snapshot` or `--as-of`), or have the engine \
         that deleted the rows rewrite the files they apply to (Spark: CALL \
         system.rewrite_data_files with 'delete-file-threshold'='1')",
    )
}

/// The live data files of the current snapshot that row-level delete files
/// may apply to, by path: each a scan task (every column) carrying those
/// delete files, as iceberg-rust's scan planning matches them (partition,
/// sequence number; a positional delete file may name other files of the
/// partition only).  Empty, having read only the manifest list, when the
/// snapshot has no delete file.
pub async fn deleted_from(table: &Table) -> Result<HashMap<String, FileScanTask>> {
    let Some(current) = table.metadata().current_snapshot().cloned() else {
        return Ok(HashMap::new());
    };
    if !has_row_deletes(table, &current).await? {
        return Ok(HashMap::new());
    }
    let failed = |e| Error::iceberg("cannot plan the row-level deletes", e);
    let tasks: Vec<FileScanTask> = table
        .scan()
        .snapshot_id(current.snapshot_id())
        .select_all()
        .build()
        .map_err(failed)?
        .plan_files()
        .await
        .map_err(failed)?
        .try_collect()
        .await
        .map_err(failed)?;
    Ok(tasks
        .into_iter()
        .filter(|t| !t.deletes.is_empty())
        .map(|t| (t.data_file_path.clone(), t))
        .collect())
}

/// The rows of `files` as the table's current snapshot holds them (every
/// column of its schema): with the row-level deletes that apply, so rows
/// another engine deleted merge-on-read stay deleted.  `deleted`: the
/// table's [`deleted_from`].  Also returns how many of the files had delete
/// files to apply (0: every row of every file).
pub fn live_batches(
    table: &Table,
    files: &[AddedFile],
    deleted: &HashMap<String, FileScanTask>,
) -> Result<(BoxStream<'static, Result<RecordBatch>>, usize)> {
    let current = table
        .metadata()
        .current_snapshot()
        .cloned()
        .ok_or_else(|| Error::internal("reading data files of a table without snapshots"))?;
    let mut with_deletes = 0;
    let tasks = plain_tasks(table, &current, files)?
        .into_iter()
        .map(|plain| match deleted.get(&plain.data_file_path) {
            Some(planned) => {
                with_deletes += 1;
                planned.clone()
            }
            None => plain,
        })
        .collect();
    let stream = read_files(
        table,
        file_reader,
        tasks,
        1,
        "cannot read the archive's files",
    );
    Ok((stream, with_deletes))
}

/// iceberg-rust's Arrow reader as permafrost reads data files whole:
/// `rows` per record batch ([`batch_rows`]), the footer fetched with a 64
/// KiB read.  (iceberg-rust's default, 512 KiB, is a whole data file of a
/// small batch — a daily window of 33,000 rows is 330 KB — which the column
/// reads then fetch again.)
pub fn file_reader(table: &Table, rows: usize) -> ArrowReader {
    table
        .reader_builder()
        .with_batch_size(rows)
        .with_metadata_size_hint(FOOTER_READ)
        .build()
}

/// The bytes read from a data file's end to find its footer (see
/// [`file_reader`]): Parquet's footer for a few dozen columns fits.
const FOOTER_READ: usize = 64 * 1024;

/// Decoded bytes a record batch read from a data file aims at: 8,192 rows
/// of a narrow table are a fraction of it; rows of kilobytes each (JSON,
/// text) come a few hundred at a time, so that the files read at once,
/// each holding one batch, stay within a few tens of megabytes.
const READ_BATCH_BYTES: u64 = 4 << 20;

/// Rows per record batch reading `task`'s file: 8,192, or as many as fit
/// [`READ_BATCH_BYTES`] at four times the file's stored bytes per row (what
/// zstd took off text and JSON; an estimate, the file's footer unread), at
/// least 256; 8,192 when the manifest records no count.  Pure.
pub fn batch_rows(task: &FileScanTask) -> usize {
    let Some(rows) = task.record_count.filter(|r| *r > 0) else {
        return 8192;
    };
    let decoded = (task.file_size_in_bytes / rows).max(1) * 4;
    (READ_BATCH_BYTES / decoded).clamp(256, 8192) as usize
}

/// The rows of the data files `tasks` name, each read with the reader
/// `reader` makes for the table and the file's [`batch_rows`], up to
/// `concurrency` files at a time (with 1, file after file, in order).
/// A failure names its data file, and says `what` was being done; a file
/// that does not decode, or whose size is not the one its manifest records
/// (cut short, overwritten), is a damaged file ([`Error::damaged_file`],
/// exit 5), not a storage failure.
pub fn read_files(
    table: &Table,
    reader: impl Fn(&Table, usize) -> ArrowReader + Send + 'static,
    tasks: Vec<FileScanTask>,
    concurrency: usize,
    what: &'static str,
) -> BoxStream<'static, Result<RecordBatch>> {
    let table = table.clone();
    futures::stream::iter(tasks)
        .map(move |task| {
            let reader = reader(&table, batch_rows(&task));
            read_file(reader, table.file_io().clone(), task, what)
        })
        .flatten_unordered(concurrency.max(1))
        .boxed()
}

/// As [`read_files`], each file read with the table's storage keys as they
/// are when it starts ([`TableStorage::current`]: renewed before keys a
/// catalog vends expire), by the reader `reader` makes for the table.
pub fn read_files_renewing(
    (table, storage): (&Table, Arc<TableStorage>),
    reader: impl Fn(&Table, usize) -> ArrowReader + Send + 'static,
    tasks: Vec<FileScanTask>,
    concurrency: usize,
    what: &'static str,
) -> BoxStream<'static, Result<RecordBatch>> {
    let table = table.clone();
    futures::stream::iter(tasks)
        .then(move |task| {
            let (table, storage) = (table.clone(), storage.clone());
            async move { storage.current(&table).await.map(|t| (t, task)) }
        })
        .map(move |now| match now {
            Ok((table, task)) => {
                let rows = batch_rows(&task);
                read_file(reader(&table, rows), table.file_io().clone(), task, what)
            }
            Err(e) => futures::stream::once(async { Err(e) }).boxed(),
        })
        .flatten_unordered(concurrency.max(1))
        .boxed()
}

/// One data file's rows (see [`read_files`]).
fn read_file(
    reader: ArrowReader,
    io: FileIO,
    task: FileScanTask,
    what: &'static str,
) -> BoxStream<'static, Result<RecordBatch>> {
    let file = Arc::new((io, task.data_file_path.clone(), task.file_size_in_bytes));
    let batches = match reader.read(futures::stream::iter([Ok(task)]).boxed()) {
        Ok(scan) => scan.stream(),
        Err(e) => futures::stream::once(async { Err(e) }).boxed(),
    };
    batches
        .then(move |read| {
            let file = file.clone();
            async move {
                match read {
                    Ok(b) => Ok(b),
                    Err(e) => Err(file_error(&file.0, &file.1, file.2, what, e).await),
                }
            }
        })
        .boxed()
}

/// What failed reading the data file `path` that its manifest says is
/// `size` bytes: a file of another size, or whose footer does not decode,
/// is damaged whatever the error said ([`look_at`]).
async fn file_error(io: &FileIO, path: &str, size: u64, what: &str, e: iceberg::Error) -> Error {
    if !crate::error::undecodable(&e)
        && let Look::Damaged(cause) = look_at(io, path, size).await
    {
        return Error::damaged_file(what, Some(path), &cause);
    }
    Error::data_file(what, path, e)
}

/// What a look at a data file's size and Parquet footer found.
#[derive(Debug, PartialEq, Eq)]
pub enum Look {
    /// Its size is its manifest's and its footer decodes (damage inside
    /// the data pages is found only by reading them).
    Whole,
    /// Another size than its manifest's, or a footer that does not decode:
    /// why.
    Damaged(String),
    /// The storage did not let us look.
    Unreadable,
}

/// A look at the data file `path` (`size` bytes, its manifest says): its
/// size, then its Parquet footer — two small reads, not the data.
pub async fn look_at(io: &FileIO, path: &str, size: u64) -> Look {
    use parquet::file::metadata::{FooterTail, ParquetMetaDataReader};
    let Ok(input) = io.new_input(path) else {
        return Look::Unreadable;
    };
    let Ok(found) = input.metadata().await.map(|m| m.size) else {
        return Look::Unreadable;
    };
    if found != size {
        return Look::Damaged(format!(
            "it is {found} bytes long where its manifest records {size}"
        ));
    }
    let Some(tail_at) = size.checked_sub(8) else {
        return Look::Damaged(format!("{size} bytes is too short for Parquet"));
    };
    let Ok(reader) = input.reader().await else {
        return Look::Unreadable;
    };
    let tail = match reader
        .read(tail_at..size)
        .await
        .map(|b| <[u8; 8]>::try_from(b.as_ref()))
    {
        Ok(Ok(tail)) => tail,
        _ => return Look::Unreadable,
    };
    let footer = match FooterTail::try_new(&tail) {
        Ok(footer) => footer,
        Err(e) => return Look::Damaged(e.to_string()),
    };
    let Some(start) = tail_at.checked_sub(footer.metadata_length() as u64) else {
        return Look::Damaged("its footer is longer than the file".into());
    };
    match reader.read(start..tail_at).await {
        Ok(metadata) => match ParquetMetaDataReader::decode_metadata(&metadata) {
            Ok(_) => Look::Whole,
            Err(e) => Look::Damaged(format!("its footer does not decode: {e}")),
        },
        Err(_) => Look::Unreadable,
    }
}

/// Count and checksum of the rows `snapshot` added, read from storage.
pub async fn checksum_snapshot(table: &Table, snapshot: &SnapshotRef) -> Result<(Checksum, usize)> {
    let files = added_files(table, snapshot).await?;
    let mut tasks = plain_tasks(table, snapshot, &files)?.into_iter();
    let io = table.file_io().clone();
    // Each file is read, decoded and hashed on a task of its own, so a batch
    // read back while no other is running (a run's last) uses every core.
    // Dropping the set (on an error) aborts the files still being read.
    let mut reading = tokio::task::JoinSet::new();
    let mut sum = Checksum::default();
    loop {
        while reading.len() < READ_BACK_FILES {
            let Some(task) = tasks.next() else { break };
            reading.spawn(checksum_file(read_file(
                file_reader(table, batch_rows(&task)),
                io.clone(),
                task,
                "cannot read the batch back",
            )));
        }
        let Some(done) = reading.join_next().await else {
            break;
        };
        sum.add(done.map_err(|e| Error::internal(format!("a read-back task failed: {e}")))??);
    }
    Ok((sum, files.len()))
}

/// The checksum of one file's rows.
async fn checksum_file(mut rows: BoxStream<'static, Result<RecordBatch>>) -> Result<Checksum> {
    let mut hasher = RowHasher::default();
    let mut hashes = Vec::new();
    let mut sum = Checksum::default();
    while let Some(batch) = rows.try_next().await? {
        hashes.clear();
        hasher.hash_rows(&batch, &mut hashes)?;
        sum.add_hashes(&hashes);
    }
    Ok(sum)
}

/// Row hashes of the rows `snapshot` added (for reconciliation), as a
/// multiset ([`Collector`]: sized by the files' record counts, on disk
/// past the process's pool).
pub async fn row_hashes(table: &Table, snapshot: &SnapshotRef) -> Result<Multiset> {
    let files = added_files(table, snapshot).await?;
    hashes_of(batches(table, snapshot, &files)?, &files).await
}

/// The rows `files` hold, as their manifests record them.
fn records(files: &[AddedFile]) -> usize {
    let n: u64 = files.iter().map(|f| f.records).sum();
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Row hashes of the rows in `files` (a batch whose snapshot was expired, as
/// the durable ledger records its files), read with the current schema, as
/// written: rows another engine deleted since are the batch's rows too.
pub async fn row_hashes_of_files(
    table: &Table,
    files: &[crate::ledger::durable::LedgerFile],
) -> Result<Multiset> {
    let files = files
        .iter()
        .map(|f| AddedFile {
            path: f.path.clone(),
            size: f.size,
            records: f.records,
        })
        .collect::<Vec<_>>();
    let Some(current) = table.metadata().current_snapshot().cloned() else {
        return Ok(Multiset::in_memory(vec![]));
    };
    hashes_of(batches(table, &current, &files)?, &files).await
}

/// Row hashes of the rows `stream` yields, those of `files`, as a
/// multiset.
async fn hashes_of(
    mut stream: BoxStream<'static, Result<RecordBatch>>,
    files: &[AddedFile],
) -> Result<Multiset> {
    let mut hasher = RowHasher::default();
    let mut hashes = Vec::new();
    let mut set = Collector::new(records(files));
    while let Some(batch) = stream.try_next().await? {
        hashes.clear();
        hasher.hash_rows(&batch, &mut hashes)?;
        set.extend(&hashes)?;
    }
    set.finish()
}

/// Row hashes of the live rows in the partitions (windows of `g`) that lie
/// inside `range`: every batch of those windows together, as the current
/// snapshot holds them (row-level deletes applied).
pub async fn row_hashes_in_windows(
    table: &Table,
    g: crate::plan::window::Granularity,
    range: &crate::plan::window::Window,
) -> Result<Multiset> {
    use iceberg::spec::{Literal, PrimitiveLiteral};
    let files = live_files(table)
        .await?
        .into_iter()
        .filter(|f| match f.partition.first() {
            Some(Some(Literal::Primitive(PrimitiveLiteral::Int(n)))) => {
                let w = g.window(*n as i64);
                w.start >= range.start && w.end <= range.end
            }
            _ => false,
        })
        .map(|f| AddedFile {
            path: f.path,
            size: f.size,
            records: f.records,
        })
        .collect::<Vec<_>>();
    if files.is_empty() {
        return Ok(Multiset::in_memory(vec![]));
    }
    if let Some(current) = table.metadata().current_snapshot() {
        refuse_deletion_vectors(table, current).await?;
    }
    let deleted = deleted_from(table).await?;
    // Rows deleted since make fewer than the files record: room to spare.
    hashes_of(live_batches(table, &files, &deleted)?.0, &files).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(size: u64, records: u64) -> FileScanTask {
        FileScanTask::builder()
            .with_file_size_in_bytes(size)
            .with_start(0)
            .with_length(size)
            .with_record_count(Some(records))
            .with_data_file_path("s3://b/f.parquet".into())
            .with_data_file_format(iceberg::spec::DataFileFormat::Parquet)
            .with_schema(Arc::new(
                iceberg::spec::Schema::builder()
                    .build()
                    .expect("empty schema"),
            ))
            .with_project_field_ids(vec![])
            .with_case_sensitive(true)
            .build()
    }

    #[test]
    fn wide_rows_are_read_fewer_at_a_time() {
        // The benchmark's daily file: 330 KB for 33,333 rows.
        assert_eq!(batch_rows(&task(330_000, 33_333)), 8192);
        // 1 KB stored per row (1.9 KB of text): 1,024 rows, ~2 MB decoded.
        assert_eq!(batch_rows(&task(76_800_000, 75_000)), 1024);
        // A megabyte a row: never fewer than 256.
        assert_eq!(batch_rows(&task(1 << 30, 1024)), 256);
        // No count recorded: the default.
        let mut unknown = task(10_000, 1);
        unknown.record_count = None;
        assert_eq!(batch_rows(&unknown), 8192);
    }
}
