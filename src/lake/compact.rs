//! Compaction: the small data files of one partition merged into one.
//!
//! A partition normally gets one file per batch.  Late rows archived into
//! an old window (a `replay`, rows kept by `--no-delete` and settled later,
//! `max_batch_rows` parts) add more, often tiny ones, and every scan of that
//! partition opens them all.  [`plan`] picks, per partition of the default
//! spec, the files under the "small" size; when there are at least two, they
//! are read (with the current schema), written again as one file (or more,
//! rolled at the target size) and committed as a `replace` snapshot that
//! deletes the old entries and adds the new ones
//! ([`super::maintenance::commit_rewrite`]).
//!
//! # Contract
//! - Content never changes: the rows written are checked against the rows
//!   read (count and content checksum, read back from storage) before the
//!   commit; a mismatch commits nothing.  Rows another engine deleted
//!   merge-on-read (positional or equality delete files) are read as
//!   deleted and not written: compaction never brings them back.  A delete
//!   file whose every data file is compacted applies to nothing afterwards
//!   and is removed in the same commit ([`dangling_deletes`]); one that
//!   still applies to a file left alone stays.
//! - Files the durable ledger still records for a batch not known settled
//!   are never rewritten: reconciliation may need to read exactly them
//!   after their snapshot is expired.
//! - The old files stay referenced by the snapshots before the compaction
//!   (time travel works) until those are expired; then orphan removal
//!   ([`super::orphans`]) takes them.
//! - Safe against a concurrent archive (the commit requires `main`
//!   unchanged) and a crash at any point (only unreferenced files remain).

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::TryStreamExt;
use iceberg::scan::FileScanTask;
use iceberg::table::Table;

use super::orphans::path_key;
use super::readback::{AddedFile, LiveFile};
use crate::checksum::{Checksum, RowHasher};
use crate::config::TableConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::lake::catalog::CatalogHandle;
use crate::lake::vended::TableStorage;

/// What compaction did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Compacted {
    /// Partitions whose small files were merged.
    pub partitions: usize,
    /// Small files merged away.
    pub files_in: usize,
    /// Files written in their place (0 in a dry run).
    pub files_out: usize,
    /// Rows written (in a dry run: rows in the files to merge, before any
    /// row-level deletes another engine added).
    pub rows: u64,
    /// Delete files (another engine's row-level deletes) that applied only
    /// to merged files, removed with them (0 in a dry run).
    pub delete_files_removed: u64,
}

/// The groups of small files to merge: per partition of the default spec,
/// the files under `small` bytes that `protected` (path keys) does not hold,
/// when there are at least two.  Pure; files in partition order, each
/// group's files in the order they were given.
pub fn plan(
    files: &[LiveFile],
    default_spec: i32,
    small: u64,
    protected: &HashSet<String>,
) -> Vec<Vec<LiveFile>> {
    let mut by_partition: BTreeMap<String, Vec<LiveFile>> = BTreeMap::new();
    for f in files {
        if f.spec_id != default_spec || f.size >= small || protected.contains(&path_key(&f.path)) {
            continue;
        }
        by_partition
            .entry(format!("{:?}", f.partition))
            .or_default()
            .push(f.clone());
    }
    by_partition
        .into_values()
        .filter(|g| g.len() >= 2)
        .collect()
}

/// The groups of small files [`compact`] would merge in `table` now.
pub async fn groups(table: &Table, small: u64) -> Result<Vec<Vec<LiveFile>>> {
    let files = super::readback::live_files(table).await?;
    Ok(plan(
        &files,
        table.metadata().default_partition_spec_id(),
        small,
        &super::orphans::ledger_files(table)?,
    ))
}

/// Compacts the small files of `table` (see the module doc); `small` is the
/// size under which a file counts as small.
///
/// Each partition is read and written with the storage keys of its moment,
/// and the commit's manifests too (`storage`: a catalog's vended keys may
/// not outlive a long compaction).
pub async fn compact(
    catalog: &CatalogHandle,
    (table, storage): (&Table, &TableStorage),
    t: &TableConfig,
    small: u64,
    dry_run: bool,
) -> Result<Compacted> {
    let groups = groups(table, small).await?;
    let mut done = Compacted {
        partitions: groups.len(),
        files_in: groups.iter().map(Vec::len).sum(),
        files_out: 0,
        rows: groups.iter().flatten().map(|f| f.records).sum(),
        delete_files_removed: 0,
    };
    if groups.is_empty() || dry_run {
        return Ok(done);
    }
    let Some(time_index) = time_index(table, t) else {
        tracing::warn!(
            "{}: the table's partition spec is not {}({}); small files left as they are",
            table.identifier(),
            t.partition_by.name(),
            t.timestamp_column
        );
        return Ok(Compacted::default());
    };
    let deleted = super::readback::deleted_from(table).await?;
    let mut replace = super::maintenance::Rewrite::default();
    done.rows = 0;
    for group in &groups {
        let inputs: Vec<AddedFile> = group
            .iter()
            .map(|f| AddedFile {
                path: f.path.clone(),
                size: f.size,
                records: f.records,
            })
            .collect();
        let now = storage.current(table).await?;
        let (written, rows) = rewrite(&now, t, time_index, &inputs, &deleted).await?;
        done.files_out += written.len();
        done.rows += rows;
        replace.remove.extend(inputs.into_iter().map(|f| f.path));
        replace.add.extend(written);
    }
    let applies = deleted.values().flat_map(|task| {
        let data = task.data_file_path.as_str();
        task.deletes
            .iter()
            .map(move |d| (data, d.file_path.as_str()))
    });
    replace.drop_deletes = dangling_deletes(applies, &replace.remove);
    let now = storage.current(table).await?;
    let committed = super::maintenance::commit_rewrite(catalog, &now, &replace, "compact").await?;
    done.delete_files_removed = committed.delete_files_removed;
    Ok(done)
}

/// The delete files that apply to nothing once the `removed` data files are
/// gone: every live data file each applies to now is among them.
/// `applies`: (data file, delete file) pairs of the current scan plan, where
/// a delete is attached to the data files of its partition it may apply to
/// by sequence number — for a positional delete a superset of the files it
/// names.  Files a rewrite adds get a newer sequence number, to which no
/// existing delete applies, nor to any file appended later.  Pure.
pub fn dangling_deletes<'a>(
    applies: impl IntoIterator<Item = (&'a str, &'a str)>,
    removed: &HashSet<String>,
) -> HashSet<String> {
    let mut still_applies: HashMap<&str, bool> = HashMap::new();
    for (data, delete) in applies {
        *still_applies.entry(delete).or_default() |= !removed.contains(data);
    }
    still_applies
        .into_iter()
        .filter(|(_, applies)| !applies)
        .map(|(delete, _)| delete.to_string())
        .collect()
}

/// The position of the partition source column in the current schema, if
/// the default spec is the configured transform of the time column.
fn time_index(table: &Table, t: &TableConfig) -> Option<usize> {
    let md = table.metadata();
    let spec = md.default_partition_spec();
    let [field] = spec.fields() else {
        return None;
    };
    if field.transform != t.partition_by.transform() {
        return None;
    }
    md.current_schema()
        .as_struct()
        .fields()
        .iter()
        .position(|f| f.id == field.source_id && f.name == t.timestamp_column)
}

/// Writes the rows of `inputs` again, less the rows row-level deletes
/// remove (another engine's merge-on-read `DELETE`: after the rewrite those
/// delete files no longer apply, to the new files' newer sequence number nor
/// to the removed files' paths); returns the new files, and their rows, once
/// their content, read back from storage, equals the rows read.
async fn rewrite(
    table: &Table,
    t: &TableConfig,
    time_index: usize,
    inputs: &[AddedFile],
    deleted: &HashMap<String, FileScanTask>,
) -> Result<(Vec<iceberg::spec::DataFile>, u64)> {
    let current = table
        .metadata()
        .current_snapshot()
        .cloned()
        .ok_or_else(|| Error::internal("compacting a table without snapshots"))?;
    let prefix = format!("compact-{}", uuid::Uuid::now_v7());
    let mut writer = super::write::BatchWriter::for_table(
        table,
        t.partition_by,
        time_index,
        &prefix,
        t.target_file_size,
        super::write::ParquetFormat::of(t),
    )?;
    let mut hasher = RowHasher::default();
    let mut hashes = Vec::new();
    let mut read = Checksum::default();
    let (mut stream, with_deletes) = super::readback::live_batches(table, inputs, deleted)?;
    let mut rows_read = 0;
    while let Some(batch) = stream.try_next().await? {
        hashes.clear();
        hasher.hash_rows(&batch, &mut hashes)?;
        read.add_hashes(&hashes);
        rows_read += batch.num_rows() as u64;
        writer.write(batch).await?;
    }
    let (files, rows) = writer.close().await?;
    let written: Vec<AddedFile> = files
        .iter()
        .map(|f| AddedFile {
            path: f.file_path().to_string(),
            size: f.file_size_in_bytes(),
            records: f.record_count(),
        })
        .collect();
    let mut back = Checksum::default();
    super::readback::for_each_batch(table, &current, &written, |b| {
        hashes.clear();
        hasher.hash_rows(b, &mut hashes)?;
        back.add_hashes(&hashes);
        Ok(())
    })
    .await?;
    // Without row-level deletes every record of the inputs must be read;
    // with them, the rows left (fewer, as many as the deletes removed).
    let records: u64 = inputs.iter().map(|f| f.records).sum();
    let expected = if with_deletes > 0 { rows_read } else { records };
    if rows_read > records || rows != expected || back.hex() != read.hex() {
        return Err(Error::new(
            ErrorKind::Verification,
            format!(
                "compaction of {} files read {expected} rows but wrote {rows} that read back \
                 with checksum {} instead of {}; nothing was committed",
                inputs.len(),
                back.hex(),
                read.hex()
            ),
        ));
    }
    Ok((files, rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use iceberg::spec::Literal;

    fn file(path: &str, size: u64, day: i32, spec_id: i32) -> LiveFile {
        LiveFile {
            path: path.into(),
            size,
            records: 10,
            partition: vec![Some(Literal::date(day))],
            snapshot_id: Some(1),
            spec_id,
        }
    }

    #[test]
    fn a_delete_file_goes_only_when_every_file_it_applies_to_goes() {
        let applies = [
            ("a", "del-1"), // day 1: both its files compacted
            ("b", "del-1"),
            ("a", "del-2"), // day 1, but also on a file left alone
            ("big", "del-2"),
            ("c", "del-3"), // another day, not compacted
        ];
        let removed = HashSet::from(["a".to_string(), "b".to_string()]);
        let gone = dangling_deletes(applies, &removed);
        assert_eq!(gone, HashSet::from(["del-1".to_string()]));
        assert!(dangling_deletes(applies, &HashSet::new()).is_empty());
    }

    #[test]
    fn merges_two_or_more_small_unprotected_files_per_partition() {
        let files = vec![
            file("s3://b/t/data/a", 10, 1, 0),
            file("s3://b/t/data/b", 10, 1, 0),
            file("s3://b/t/data/big", 1_000, 1, 0),
            file("s3://b/t/data/c", 10, 2, 0),
            file("s3://b/t/data/d", 10, 3, 0),
            file("s3://b/t/data/e", 10, 3, 0),
            file("s3://b/t/data/f", 10, 4, 0),
            file("s3://b/t/data/g", 10, 4, 1),
        ];
        let protected = HashSet::from([path_key("s3a://b/t/data/e")]);
        let groups = plan(&files, 0, 100, &protected);
        let paths: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.iter().map(|f| f.path.as_str()).collect())
            .collect();
        // day 1: a+b (big stays); day 2: one file; day 3: e is an open
        // batch's; day 4: g has another spec.
        assert_eq!(paths, vec![vec!["s3://b/t/data/a", "s3://b/t/data/b"]]);
    }
}
