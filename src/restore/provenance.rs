//! Which batches' rows the data files of a restored range hold, once
//! compactions have rewritten them.
//!
//! A batch's rows are the data files its snapshot added — until a later
//! snapshot rewrites them: `maintain`'s compaction, or another engine's
//! (Spark's `rewrite_data_files`, a Glue or S3 Tables optimizer) replaces a
//! partition's small files with one that holds the rows of several batches.
//! The restore's batch check then compares **groups**: the batches whose
//! files were rewritten together, against every file that held or holds
//! their rows (the row count and the additive content checksum of a group
//! are the sums of its batches').  A batch nothing rewrote is a group of
//! its own, compared exactly as before.
//!
//! Files are linked per partition (every compaction engine rewrites a
//! partition on its own, several in one snapshot); what a snapshot removed
//! from and added to different partitions (a rewrite into a new partition
//! spec) is linked as one bucket.
//!
//! A group is *not comparable* — reported, never failed — when a rewrite
//! merged in rows of files no batch of the range added (another writer's
//! appends, a batch whose snapshot was expired).  It is compared but a
//! difference is reported, not failed, when a snapshot that is not a
//! `replace` (an overwrite, a delete, row-level delete files) touched it:
//! the archive no longer holds exactly what the batches archived, by
//! someone's choice.  A `replace` promises the same rows, so a compaction
//! that lost or altered rows is a mismatch.

use std::collections::{BTreeMap, HashMap};

use futures::{StreamExt, TryStreamExt};
use iceberg::spec::SnapshotRef;
use iceberg::table::Table;

use crate::error::{Error, Result};
use crate::lake;
use crate::lake::vended::TableStorage;

/// A snapshot after the range's first batch that removed data files or
/// added delete files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rewrite {
    pub snapshot_id: i64,
    /// Its operation: `replace` keeps the rows; any other may change them.
    pub operation: String,
    /// Files removed and added, each with its partition (spec and values):
    /// a compaction rewrites each partition on its own.
    pub removed: Vec<(String, String)>,
    pub added: Vec<(String, String)>,
    /// The partitions it added delete files to (row-level deletes: rows
    /// gone from that partition's files); [`lake::readback::EVERY_PARTITION`]
    /// for all.
    pub deletes_in: Vec<String>,
}

impl Rewrite {
    /// The files removed and added together: per partition, and the files
    /// of partitions only removed from or only added to as one more bucket
    /// (a rewrite into another partition spec).
    fn buckets(&self) -> Vec<(Vec<&str>, Vec<&str>)> {
        let mut by_partition: BTreeMap<&str, (Vec<&str>, Vec<&str>)> = BTreeMap::new();
        for (f, p) in &self.removed {
            by_partition.entry(p).or_default().0.push(f);
        }
        for (f, p) in &self.added {
            by_partition.entry(p).or_default().1.push(f);
        }
        let mut out = Vec::new();
        let mut rest: (Vec<&str>, Vec<&str>) = Default::default();
        for (_, (removed, added)) in by_partition {
            if removed.is_empty() || added.is_empty() {
                rest.0.extend(removed);
                rest.1.extend(added);
            } else {
                out.push((removed, added));
            }
        }
        if !rest.0.is_empty() {
            out.push(rest);
        }
        out
    }
}

/// The rewrites among `snapshots` (in commit order): those that removed
/// data files or added delete files, with their files.  Reads the
/// manifests each wrote, a few snapshots at a time, with the storage keys
/// of the moment.
pub(crate) async fn rewrites(
    (table, storage): (&Table, &TableStorage),
    snapshots: impl Iterator<Item = SnapshotRef>,
) -> Result<Vec<Rewrite>> {
    let read = snapshots
        .filter(lake::readback::may_change_files)
        .map(|s| async move {
            let table = storage.current(table).await?;
            let changes = lake::readback::file_changes(&table, &s).await?;
            let with_partition = |path: &str| {
                let partition = changes.partition_of.get(path).cloned().unwrap_or_default();
                (path.to_string(), partition)
            };
            Ok::<_, Error>(Rewrite {
                snapshot_id: s.snapshot_id(),
                operation: s.summary().operation.as_str().to_string(),
                removed: changes.removed.iter().map(|p| with_partition(p)).collect(),
                added: changes
                    .added
                    .iter()
                    .map(|f| with_partition(&f.path))
                    .collect(),
                deletes_in: changes.deletes_in.clone(),
            })
        });
    let all: Vec<Rewrite> = futures::stream::iter(read)
        .buffered(lake::readback::MANIFEST_READS)
        .try_collect()
        .await?;
    Ok(all
        .into_iter()
        .filter(|r| !r.removed.is_empty() || !r.deletes_in.is_empty())
        .collect())
}

/// Batches whose rows are in the same files, and those files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    /// Indexes into the batches given to [`groups`], ascending.
    pub batches: Vec<usize>,
    /// Every file that held or holds their rows.
    pub files: Vec<String>,
    /// Why the group's rows cannot be compared with its batches' summaries:
    /// rows no batch of the range archived were merged in.
    pub not_comparable: Option<String>,
    /// A snapshot that may have changed the group's rows (not a `replace`):
    /// a difference is that change, not a fault.
    pub changed_by: Option<String>,
}

/// The groups of `batch_files` (each batch's added files, with their
/// partitions) after `rewrites` (in commit order).  Pure.
pub(crate) fn groups(batch_files: &[&[(String, String)]], rewrites: &[Rewrite]) -> Vec<Group> {
    let mut g = Graph::new(batch_files.len());
    for (i, files) in batch_files.iter().enumerate() {
        for (f, _) in *files {
            let n = g.file(f);
            g.union(i, n);
        }
    }
    let mut marks = Marks::default();
    for r in rewrites {
        for (removed, added) in r.buckets() {
            let known = removed.iter().find_map(|f| g.known(f));
            let Some(anchor) = known.or_else(|| added.first().map(|f| g.file(f))) else {
                continue;
            };
            for f in removed {
                match g.known(f) {
                    Some(n) => g.union(anchor, n),
                    None => marks.foreign.push((
                        anchor,
                        format!(
                            "snapshot {} ({}) merged in rows no batch of the range archived",
                            r.snapshot_id, r.operation
                        ),
                    )),
                }
            }
            for f in added {
                let n = g.file(f);
                g.union(anchor, n);
            }
            if r.operation != "replace" {
                marks.changed.push((
                    anchor,
                    format!("snapshot {} ({}) changed rows", r.snapshot_id, r.operation),
                ));
            }
        }
    }
    mark_row_deletes(&g, batch_files, rewrites, &mut marks);
    g.into_groups(batch_files.len(), marks)
}

/// Marks the groups holding a file of a partition that a rewrite added
/// row-level delete files to (every group, for one of an unpartitioned
/// spec): their rows may be fewer than their batches archived.
fn mark_row_deletes(
    g: &Graph,
    batch_files: &[&[(String, String)]],
    rewrites: &[Rewrite],
    marks: &mut Marks,
) {
    let mut in_partition: HashMap<&str, Vec<usize>> = HashMap::new();
    let every_file = batch_files.iter().flat_map(|files| files.iter()).chain(
        rewrites
            .iter()
            .flat_map(|r| r.removed.iter().chain(&r.added)),
    );
    for (f, p) in every_file {
        if let Some(n) = g.known(f) {
            in_partition.entry(p.as_str()).or_default().push(n);
        }
    }
    for r in rewrites {
        let why = || {
            format!(
                "snapshot {} ({}) added row-level deletes",
                r.snapshot_id, r.operation
            )
        };
        for p in &r.deletes_in {
            if p == lake::readback::EVERY_PARTITION {
                marks.everywhere.get_or_insert_with(why);
            }
            for &n in in_partition.get(p.as_str()).into_iter().flatten() {
                marks.changed.push((n, why()));
            }
        }
    }
}

/// What is known of groups before they are formed: per node, and for all.
#[derive(Default)]
struct Marks {
    foreign: Vec<(usize, String)>,
    changed: Vec<(usize, String)>,
    everywhere: Option<String>,
}

/// Batches and files as nodes (batches first) joined by union-find.
struct Graph {
    parent: Vec<usize>,
    files: HashMap<String, usize>,
    names: Vec<String>,
}

impl Graph {
    fn new(batches: usize) -> Self {
        Self {
            parent: (0..batches).collect(),
            files: HashMap::new(),
            names: Vec::new(),
        }
    }

    fn known(&self, path: &str) -> Option<usize> {
        self.files.get(path).copied()
    }

    /// The node of `path`, new if unseen.
    fn file(&mut self, path: &str) -> usize {
        if let Some(n) = self.known(path) {
            return n;
        }
        let n = self.parent.len();
        self.parent.push(n);
        self.files.insert(path.to_string(), n);
        self.names.push(path.to_string());
        n
    }

    fn root(&mut self, mut n: usize) -> usize {
        while self.parent[n] != n {
            self.parent[n] = self.parent[self.parent[n]];
            n = self.parent[n];
        }
        n
    }

    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.root(a), self.root(b));
        if a != b {
            self.parent[a.max(b)] = a.min(b);
        }
    }

    /// The groups holding at least one batch, in the order of their first.
    fn into_groups(mut self, batches: usize, marks: Marks) -> Vec<Group> {
        let mut by_root: HashMap<usize, Group> = HashMap::new();
        for n in 0..self.parent.len() {
            let root = self.root(n);
            let group = by_root.entry(root).or_insert_with(|| Group {
                batches: Vec::new(),
                files: Vec::new(),
                not_comparable: None,
                changed_by: marks.everywhere.clone(),
            });
            if n < batches {
                group.batches.push(n);
            } else {
                group.files.push(self.names[n - batches].clone());
            }
        }
        for (n, why) in marks.foreign {
            let root = self.root(n);
            if let Some(g) = by_root.get_mut(&root) {
                g.not_comparable.get_or_insert(why);
            }
        }
        for (n, why) in marks.changed {
            let root = self.root(n);
            if let Some(g) = by_root.get_mut(&root) {
                g.changed_by.get_or_insert(why);
            }
        }
        let mut out: Vec<Group> = by_root
            .into_values()
            .filter(|g| !g.batches.is_empty())
            .collect();
        out.sort_by_key(|g| g.batches[0]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Files named `<partition>/<name>`.
    fn in_partitions(names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|f| (f.to_string(), f.split('/').next().unwrap_or("").to_string()))
            .collect()
    }

    fn rewrite(id: i64, op: &str, removed: &[&str], added: &[&str]) -> Rewrite {
        Rewrite {
            snapshot_id: id,
            operation: op.into(),
            removed: in_partitions(removed),
            added: in_partitions(added),
            deletes_in: vec![],
        }
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn batches_nothing_rewrote_are_groups_of_their_own() {
        let (a, b) = (
            in_partitions(&["d1/a1", "d2/a2"]),
            in_partitions(&["d1/b1"]),
        );
        let got = groups(&[&a, &b], &[]);
        assert_eq!(got.len(), 2);
        let (a, b) = (paths(&["d1/a1", "d2/a2"]), paths(&["d1/b1"]));
        assert_eq!((got[0].batches.clone(), got[0].files.clone()), (vec![0], a));
        assert_eq!((got[1].batches.clone(), got[1].files.clone()), (vec![1], b));
        assert!(
            got.iter()
                .all(|g| g.not_comparable.is_none() && g.changed_by.is_none())
        );
    }

    #[test]
    fn a_compaction_joins_the_batches_of_each_partition_it_merged() {
        let (a, b, c, d) = (
            in_partitions(&["d1/a1", "d2/a2"]),
            in_partitions(&["d2/b1"]),
            in_partitions(&["d3/c1"]),
            in_partitions(&["d3/d1"]),
        );
        // One snapshot compacts two partitions; a later one rewrites again.
        let rewrites = [
            rewrite(
                10,
                "replace",
                &["d2/a2", "d2/b1", "d3/c1", "d3/d1"],
                &["d2/m1", "d3/m2"],
            ),
            rewrite(12, "replace", &["d2/m1"], &["d2/m3", "d2/m4"]),
        ];
        let got = groups(&[&a, &b, &c, &d], &rewrites);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].batches, vec![0, 1]);
        assert_eq!(
            sorted(got[0].files.clone()),
            paths(&["d1/a1", "d2/a2", "d2/b1", "d2/m1", "d2/m3", "d2/m4"])
        );
        assert_eq!(got[1].batches, vec![2, 3]);
        assert_eq!(
            sorted(got[1].files.clone()),
            paths(&["d3/c1", "d3/d1", "d3/m2"])
        );
        assert!(
            got.iter()
                .all(|g| g.not_comparable.is_none() && g.changed_by.is_none())
        );
    }

    #[test]
    fn a_rewrite_into_another_spec_joins_what_it_removed_and_added() {
        let (a, b) = (in_partitions(&["d1/a1"]), in_partitions(&["d2/b1"]));
        let got = groups(
            &[&a, &b],
            &[rewrite(30, "replace", &["d1/a1", "d2/b1"], &["h1/m"])],
        );
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].batches, vec![0, 1]);
    }

    #[test]
    fn foreign_rows_and_row_changes_are_told_apart() {
        let (a, b, c) = (
            in_partitions(&["d1/a1"]),
            in_partitions(&["d2/b1"]),
            in_partitions(&["d3/c1"]),
        );
        let rewrites = [
            rewrite(20, "replace", &["d1/a1", "d1/x1"], &["d1/m1"]),
            rewrite(21, "overwrite", &["d2/b1"], &["d2/b1x"]),
        ];
        let got = groups(&[&a, &b, &c], &rewrites);
        assert_eq!(got.len(), 3);
        assert!(
            got[0]
                .not_comparable
                .as_deref()
                .unwrap_or("")
                .contains("snapshot 20")
        );
        assert_eq!(got[0].changed_by, None);
        assert_eq!(got[1].not_comparable, None);
        assert!(
            got[1]
                .changed_by
                .as_deref()
                .unwrap_or("")
                .contains("overwrite")
        );
        assert_eq!(
            (got[2].not_comparable.clone(), got[2].changed_by.clone()),
            (None, None)
        );
        // Row-level deletes change the groups of their partition only, or
        // every group when written unpartitioned.
        let deletes = |p: &str| Rewrite {
            deletes_in: vec![p.to_string()],
            ..rewrite(22, "delete", &[], &[])
        };
        let got = groups(&[&a, &c], &[deletes("d3")]);
        let changed: Vec<bool> = got.iter().map(|g| g.changed_by.is_some()).collect();
        assert_eq!(changed, [false, true], "{got:?}");
        let got = groups(&[&a, &c], &[deletes(lake::readback::EVERY_PARTITION)]);
        assert!(got.iter().all(|g| g.changed_by.is_some()), "{got:?}");
    }
}
