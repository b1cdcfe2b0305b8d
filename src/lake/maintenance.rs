//! Table maintenance: what keeps a table that gets a snapshot per batch for
//! years small enough to load fast.
//!
//! - [`expire_snapshots`]: iceberg-rust's `ExpireSnapshotsAction` (Java's
//!   `RemoveSnapshots` rules: branch and tag heads are never expired).  Safe
//!   for permafrost's own bookkeeping because the batch history lives in the
//!   durable ledger property ([`crate::ledger::durable`]), not in snapshots.
//!   Metadata only: no file is deleted.
//! - [`rewrite_manifests`]: one fast append adds one manifest, so the current
//!   snapshot lists one manifest per batch ever archived and every scan plan
//!   opens them all.  This writes the live data entries into one manifest
//!   per partition spec with iceberg-rust's manifest and manifest-list
//!   writers (entries stay `EXISTING` with their snapshot ids and sequence
//!   numbers), and commits a `replace` snapshot through the catalog's commit
//!   protocol ([`super::metadata_commit`]) under the requirement that `main`
//!   still points at the snapshot it read: a concurrent archive makes it
//!   fail cleanly, and a crash before the commit leaves only unreferenced
//!   files.  Table content is unchanged.
//!
//! - [`commit_rewrite`] also replaces data files: compaction
//!   ([`super::compact`]) commits the small files it merged as `DELETED`
//!   and their replacement as `ADDED` in the same kind of snapshot.
//! - Orphan files (what expiry and crashed writes leave in storage):
//!   [`super::orphans`].

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::TryStreamExt;
use iceberg::spec::{
    DataFileFormat, FormatVersion, ManifestContentType, ManifestFile, ManifestListWriter,
    ManifestWriterBuilder, Operation, Snapshot, SnapshotReference, SnapshotRetention, Summary,
};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, TableRequirement, TableUpdate};

use super::catalog::CatalogHandle;
use crate::error::{Error, ErrorKind, Result};

/// Summary key marking permafrost's maintenance snapshots.
pub const MAINTENANCE: &str = "permafrost.maintenance";

fn ice(what: &str, e: iceberg::Error) -> Error {
    Error::iceberg(what, e)
}

/// Why [`commit_rewrite`] (compaction, the manifest merge) must leave
/// `table` alone, if it must: it writes format-v2 manifests and manifest
/// lists, which a v1 table's readers do not expect and which lack the row
/// lineage (first row ids) a v3 table's snapshots need — another engine may
/// have upgraded a table permafrost created.  Expiry and orphan removal
/// write no manifest and stay safe.
pub fn rewrite_refused(table: &Table) -> Option<String> {
    let version = table.metadata().format_version();
    (version != FormatVersion::V2).then(|| {
        format!(
            "the table is Iceberg format {version} (permafrost's compaction and manifest merge \
             write format v2 metadata): left to the engine that manages its format"
        )
    })
}

/// Expires the snapshots older than `older_than_ms`, keeping at least the
/// newest `retain_last` of `main`.  Returns the table after the commit and
/// how many snapshots went.
pub async fn expire_snapshots(
    catalog: &dyn Catalog,
    table: &Table,
    older_than_ms: i64,
    retain_last: usize,
) -> Result<(Table, usize)> {
    let before = table.metadata().snapshots().count();
    let tx = Transaction::new(table);
    let tx = tx
        .expire_snapshots()
        .expire_older_than_ms(older_than_ms)
        .retain_last(retain_last.max(1))
        .apply(tx)
        .map_err(|e| ice("cannot prepare the snapshot expiry", e))?;
    let after = tx
        .commit(catalog)
        .await
        .and_then(|after| super::commit_base::with_io(after, table.file_io()))
        .map_err(|e| ice("cannot expire snapshots", e))?;
    let expired = before.saturating_sub(after.metadata().snapshots().count());
    Ok((after, expired))
}

/// The manifests of the current snapshot: (data, delete).
pub async fn current_manifests(table: &Table) -> Result<(Vec<ManifestFile>, Vec<ManifestFile>)> {
    let Some(snapshot) = table.metadata().current_snapshot() else {
        return Ok((vec![], vec![]));
    };
    let list = table
        .manifest_list_reader(snapshot)
        .load()
        .await
        .map_err(|e| ice("cannot read the manifest list", e))?;
    Ok(list
        .entries()
        .iter()
        .cloned()
        .partition(|m| m.content == ManifestContentType::Data))
}

/// Rewrites the current snapshot's data manifests into one per partition
/// spec (see the module doc).  Returns the number of data manifests before
/// and after; unchanged (and nothing committed) when there is at most one.
pub async fn rewrite_manifests(catalog: &CatalogHandle, table: &Table) -> Result<(usize, usize)> {
    let (data, _) = current_manifests(table).await?;
    if data.len() <= 1 {
        return Ok((data.len(), data.len()));
    }
    let merged = commit_rewrite(catalog, table, &Rewrite::default(), "rewrite-manifests").await?;
    Ok((data.len(), merged.manifests))
}

/// Data files replaced by a rewrite: `remove` (paths) go, `add` come, in one
/// `replace` snapshot, and the delete files in `drop_deletes` (row-level
/// deletes another engine wrote, which apply to nothing once `remove` is
/// gone: [`super::compact::dangling_deletes`]) go with them.  Empty: the
/// manifests are merged, nothing else.
#[derive(Default)]
pub struct Rewrite {
    pub remove: HashSet<String>,
    pub add: Vec<iceberg::spec::DataFile>,
    pub drop_deletes: HashSet<String>,
}

/// What a committed rewrite left: manifests, live files and rows, and how
/// many delete files it removed.
pub struct Rewritten {
    pub manifests: usize,
    pub files: u64,
    pub rows: u64,
    pub delete_files_removed: u64,
}

/// Writes the current snapshot's live data entries into one manifest per
/// partition spec, less `rewrite.remove` (written as `DELETED` entries),
/// plus `rewrite.add` (`ADDED`, in the default spec's manifest), writes the
/// delete manifests that hold a file of `rewrite.drop_deletes` again with it
/// `DELETED` (the others stay as they are), and commits
/// that as a `replace` snapshot of `main` — only if `main` is still the
/// snapshot read (a concurrent commit makes it fail cleanly; a crash before
/// the commit leaves only unreferenced files).
pub async fn commit_rewrite(
    catalog: &CatalogHandle,
    table: &Table,
    rewrite: &Rewrite,
    what: &str,
) -> Result<Rewritten> {
    if let Some(why) = rewrite_refused(table) {
        return Err(Error::new(ErrorKind::Catalog, format!("{what}: {why}")));
    }
    let md = table.metadata();
    let current = md
        .current_snapshot()
        .cloned()
        .ok_or_else(|| Error::internal("a rewrite of a table without snapshots"))?;
    let (data, deletes) = current_manifests(table).await?;
    let snapshot_id = new_snapshot_id(table);
    let sequence = md.next_sequence_number();
    let commit = uuid::Uuid::now_v7();
    let merged = merge_manifests(table, &data, rewrite, snapshot_id, sequence, commit).await?;
    let kept_deletes = drop_deletes(table, deletes, &rewrite.drop_deletes, snapshot_id, commit);
    let (deletes, dropped) = kept_deletes.await?;
    for (done, asked, kind) in [
        (
            merged.tally.removed.0,
            rewrite.remove.len(),
            "files to replace",
        ),
        (
            dropped.0,
            rewrite.drop_deletes.len(),
            "delete files to drop",
        ),
    ] {
        if done != asked as u64 {
            return Err(Error::new(
                ErrorKind::Catalog,
                format!(
                    "{what}: {} of the {asked} {kind} are no longer live",
                    asked as u64 - done
                ),
            )
            .with_hint("another writer changed the table meanwhile; run `maintain` again")
            .as_conflict());
        }
    }
    let after = merged.manifests.len();
    let list_path = format!(
        "{}/metadata/snap-{snapshot_id}-0-{commit}.avro",
        md.location()
    );
    let mut list_writer = ManifestListWriter::v2(
        output_writer(table, &list_path).await?,
        snapshot_id,
        Some(current.snapshot_id()),
        sequence,
    );
    list_writer
        .add_manifests(merged.manifests.into_iter().chain(deletes))
        .map_err(|e| ice("cannot write the manifest list", e))?;
    list_writer
        .close()
        .await
        .map_err(|e| ice("cannot write the manifest list", e))?;
    let added_rows: u64 = rewrite.add.iter().map(|f| f.record_count()).sum();
    let mut props = HashMap::from([
        (MAINTENANCE.to_string(), what.to_string()),
        (
            "total-data-files".to_string(),
            merged.tally.kept.0.to_string(),
        ),
        ("total-records".to_string(), merged.tally.kept.1.to_string()),
        ("manifests-created".to_string(), after.to_string()),
        ("manifests-replaced".to_string(), data.len().to_string()),
    ]);
    if !rewrite.add.is_empty() || !rewrite.remove.is_empty() {
        props.extend([
            (
                "added-data-files".to_string(),
                rewrite.add.len().to_string(),
            ),
            (
                "deleted-data-files".to_string(),
                merged.tally.removed.0.to_string(),
            ),
            ("added-records".to_string(), added_rows.to_string()),
            (
                "deleted-records".to_string(),
                merged.tally.removed.1.to_string(),
            ),
        ]);
    }
    if dropped.0 > 0 {
        props.insert("removed-delete-files".to_string(), dropped.0.to_string());
    }
    let snapshot = Snapshot::builder()
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(Some(current.snapshot_id()))
        .with_sequence_number(sequence)
        .with_timestamp_ms(chrono::Utc::now().timestamp_millis())
        .with_manifest_list(list_path)
        .with_summary(Summary {
            operation: Operation::Replace,
            additional_properties: props,
        })
        .with_schema_id(md.current_schema_id())
        .build();
    crate::fault::point("maintain-before-commit").await;
    commit_replacing(catalog, table, current.snapshot_id(), snapshot).await?;
    Ok(Rewritten {
        manifests: after,
        files: merged.tally.kept.0,
        rows: merged.tally.kept.1,
        delete_files_removed: dropped.0,
    })
}

/// Files and rows of the entries a manifest rewrite kept (live after it),
/// and of those it wrote as `DELETED`.
#[derive(Default)]
struct Tally {
    kept: (u64, u64),
    removed: (u64, u64),
}

/// Manifests written by [`merge_manifests`], with their [`Tally`].
struct Merged {
    manifests: Vec<ManifestFile>,
    tally: Tally,
}

/// Writes the live data entries of `data` into one manifest per partition
/// spec, as `EXISTING` entries (`DELETED` for `rewrite.remove`), plus
/// `rewrite.add` as `ADDED` entries of `snapshot_id` in the default spec's.
async fn merge_manifests(
    table: &Table,
    data: &[ManifestFile],
    rewrite: &Rewrite,
    snapshot_id: i64,
    sequence: i64,
    commit: uuid::Uuid,
) -> Result<Merged> {
    let md = table.metadata();
    let mut by_spec: BTreeMap<i32, Vec<ManifestFile>> = BTreeMap::new();
    for m in data {
        by_spec
            .entry(m.partition_spec_id)
            .or_default()
            .push(m.clone());
    }
    if !rewrite.add.is_empty() {
        by_spec.entry(md.default_partition_spec_id()).or_default();
    }
    let mut out = Merged {
        manifests: Vec::new(),
        tally: Tally::default(),
    };
    for (n, (spec_id, manifests)) in by_spec.into_iter().enumerate() {
        let path = format!("{}/metadata/{commit}-m{n}.avro", md.location());
        let mut writer = manifest_writer(table, spec_id, &path, snapshot_id)?.build_v2_data();
        let mut read = super::readback::read_manifests(table, &manifests);
        while let Some((m, manifest)) = read.try_next().await? {
            copy_entries(m, &manifest, &rewrite.remove, &mut writer, &mut out.tally)?;
        }
        if spec_id == md.default_partition_spec_id() {
            for f in &rewrite.add {
                out.tally.kept.0 += 1;
                out.tally.kept.1 += f.record_count();
                writer
                    .add_file(f.clone(), sequence)
                    .map_err(|e| ice("cannot add a manifest entry", e))?;
            }
        }
        out.manifests.push(
            writer
                .write_manifest_file()
                .await
                .map_err(|e| ice("cannot write a manifest", e))?,
        );
    }
    Ok(out)
}

/// The delete manifests `manifests`, those holding a file of `drop`
/// written again (as `EXISTING` entries, the files of `drop` as `DELETED`);
/// the others as they are.  Returns them and the files and rows dropped.
async fn drop_deletes(
    table: &Table,
    manifests: Vec<ManifestFile>,
    drop: &HashSet<String>,
    snapshot_id: i64,
    commit: uuid::Uuid,
) -> Result<(Vec<ManifestFile>, (u64, u64))> {
    if drop.is_empty() {
        return Ok((manifests, (0, 0)));
    }
    let md = table.metadata();
    let (mut out, mut tally) = (Vec::new(), Tally::default());
    let mut read = super::readback::read_manifests(table, &manifests);
    while let Some((m, manifest)) = read.try_next().await? {
        let names_one =
            |e: &iceberg::spec::ManifestEntryRef| e.is_alive() && drop.contains(e.file_path());
        if !manifest.entries().iter().any(names_one) {
            out.push(m.clone());
            continue;
        }
        let path = format!("{}/metadata/{commit}-d{}.avro", md.location(), out.len());
        let mut writer =
            manifest_writer(table, m.partition_spec_id, &path, snapshot_id)?.build_v2_deletes();
        copy_entries(m, &manifest, drop, &mut writer, &mut tally)?;
        out.push(
            writer
                .write_manifest_file()
                .await
                .map_err(|e| ice("cannot write a manifest", e))?,
        );
    }
    Ok((out, tally.removed))
}

/// A manifest writer at `path` for entries of partition spec `spec_id`, of
/// snapshot `snapshot_id`, with the current schema (the caller builds it for
/// data or for deletes).
fn manifest_writer(
    table: &Table,
    spec_id: i32,
    path: &str,
    snapshot_id: i64,
) -> Result<ManifestWriterBuilder> {
    let md = table.metadata();
    let spec = md.partition_spec_by_id(spec_id).ok_or_else(|| {
        Error::new(
            ErrorKind::Catalog,
            format!("a manifest names partition spec {spec_id}, which the table lacks"),
        )
    })?;
    let output = table
        .file_io()
        .new_output(path)
        .map_err(|e| ice("cannot create a manifest", e))?;
    Ok(ManifestWriterBuilder::new(
        output,
        Some(snapshot_id),
        md.current_schema().clone(),
        spec.as_ref().clone(),
    ))
}

/// Copies the live entries of manifest `m` (read: `manifest`) into `writer`:
/// `EXISTING`, or `DELETED` when `remove` names the file.
fn copy_entries(
    m: &ManifestFile,
    manifest: &iceberg::spec::Manifest,
    remove: &HashSet<String>,
    writer: &mut iceberg::spec::ManifestWriter,
    out: &mut Tally,
) -> Result<()> {
    for e in manifest.entries() {
        if !e.is_alive() {
            continue;
        }
        let (Some(snap), Some(seq)) = (e.snapshot_id(), e.sequence_number()) else {
            return Err(Error::new(
                ErrorKind::Catalog,
                format!(
                    "manifest {} has an entry without snapshot or sequence",
                    m.manifest_path
                ),
            ));
        };
        if remove.contains(e.file_path()) {
            out.removed.0 += 1;
            out.removed.1 += e.record_count();
            writer
                .add_delete_file(e.data_file().clone(), seq, e.file_sequence_number)
                .map_err(|e| ice("cannot add a manifest entry", e))?;
            continue;
        }
        out.kept.0 += 1;
        out.kept.1 += e.record_count();
        writer
            .add_existing_file(e.data_file().clone(), snap, seq, e.file_sequence_number)
            .map_err(|e| ice("cannot add a manifest entry", e))?;
    }
    Ok(())
}

async fn output_writer(table: &Table, path: &str) -> Result<Box<dyn iceberg::io::FileWrite>> {
    table
        .file_io()
        .new_output(path)
        .map_err(|e| ice("cannot create the manifest list", e))?
        .writer()
        .await
        .map_err(|e| ice("cannot create the manifest list", e))
}

/// Commits `snapshot` as `main`'s new head, if `main` is still `parent`.
async fn commit_replacing(
    catalog: &CatalogHandle,
    table: &Table,
    parent: i64,
    snapshot: Snapshot,
) -> Result<()> {
    let head = snapshot.snapshot_id();
    super::metadata_commit::commit(
        catalog,
        table,
        vec![TableRequirement::RefSnapshotIdMatch {
            r#ref: "main".to_string(),
            snapshot_id: Some(parent),
        }],
        vec![
            TableUpdate::AddSnapshot { snapshot },
            TableUpdate::SetSnapshotRef {
                ref_name: "main".to_string(),
                reference: SnapshotReference::new(
                    head,
                    SnapshotRetention::branch(None, None, None),
                ),
            },
        ],
    )
    .await
}

/// A positive snapshot id the table does not have.
fn new_snapshot_id(table: &Table) -> i64 {
    loop {
        let (a, b) = uuid::Uuid::new_v4().as_u64_pair();
        let id = ((a ^ b) >> 1) as i64;
        if id != 0 && table.metadata().snapshot_by_id(id).is_none() {
            return id;
        }
    }
}

/// How big a table's metadata has grown, for `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableShape {
    pub snapshots: usize,
    /// Commit time of the oldest snapshot kept (RFC 3339).
    pub oldest_snapshot: Option<String>,
    pub data_manifests: usize,
    pub data_files: usize,
    /// Data files under a quarter of `target_file_size` (compaction candidates).
    pub small_files: usize,
    /// Live delete files: row-level deletes another engine wrote
    /// merge-on-read.
    pub delete_files: usize,
    /// Of those, deletion vectors (Iceberg v3), which permafrost's reads
    /// refuse ([`super::readback::refuse_deletion_vectors`]).
    pub deletion_vectors: usize,
    pub metadata_bytes: u64,
    /// Size of the durable ledger property.
    pub ledger_bytes: usize,
}

/// What metrics report of a table after every run, cheaply: no manifest
/// is read (an hourly table has thousands of data files), only the
/// metadata, the current manifest list and the snapshot summary's totals.
#[derive(Debug, Clone, Default)]
pub struct QuickShape {
    pub snapshots: usize,
    pub data_manifests: usize,
    /// The current snapshot summary's `total-data-files` (None if absent).
    pub data_files: Option<u64>,
    pub metadata_bytes: u64,
}

/// The [`QuickShape`] of `table`.
pub async fn quick_shape(table: &Table) -> Result<QuickShape> {
    let md = table.metadata();
    let (data, _) = current_manifests(table).await?;
    Ok(QuickShape {
        snapshots: md.snapshots().count(),
        data_manifests: data.len(),
        data_files: md.current_snapshot().and_then(|s| {
            s.summary()
                .additional_properties
                .get("total-data-files")
                .and_then(|n| n.parse().ok())
        }),
        metadata_bytes: metadata_bytes(table).await?,
    })
}

/// The shape of `table`; files below `small` bytes count as small.
pub async fn shape(table: &Table, small: u64) -> Result<TableShape> {
    let md = table.metadata();
    let oldest = md.snapshots().map(|s| s.timestamp_ms()).min();
    let (data, deletes) = current_manifests(table).await?;
    let files = super::readback::live_files(table).await?;
    let (mut delete_files, mut deletion_vectors) = (0, 0);
    let mut read = super::readback::read_manifests(table, &deletes);
    while let Some((_, manifest)) = read.try_next().await? {
        for e in manifest.entries().iter().filter(|e| e.is_alive()) {
            delete_files += 1;
            deletion_vectors += usize::from(e.file_format() == DataFileFormat::Puffin);
        }
    }
    Ok(TableShape {
        snapshots: md.snapshots().count(),
        oldest_snapshot: oldest.map(|ms| crate::plan::window::rfc3339(ms * 1000)),
        data_manifests: data.len(),
        data_files: files.len(),
        small_files: files.iter().filter(|f| f.size < small).count(),
        delete_files,
        deletion_vectors,
        metadata_bytes: metadata_bytes(table).await?,
        ledger_bytes: md
            .properties()
            .get(crate::ledger::keys::LEDGER)
            .map_or(0, String::len),
    })
}

/// Size of the table's current metadata file.
pub async fn metadata_bytes(table: &iceberg::table::Table) -> Result<u64> {
    let Some(loc) = table.metadata_location() else {
        return Ok(0);
    };
    let input = table
        .file_io()
        .new_input(loc)
        .map_err(|e| Error::iceberg("cannot open the metadata file", e))?;
    Ok(input
        .metadata()
        .await
        .map_err(|e| Error::iceberg("cannot stat the metadata file", e))?
        .size)
}
