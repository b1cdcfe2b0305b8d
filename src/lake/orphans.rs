//! Orphan files: what a table's storage holds that no metadata references.
//!
//! Expiring snapshots is a metadata change only: the manifest lists,
//! manifests and data files that only the expired snapshots referenced stay
//! in storage, and so do the files of a batch that crashed before its
//! commit, a commit that lost a race, or a maintenance rewrite that never
//! committed.  An hourly archive leaves three such files a run after expiry
//! (a manifest list, a manifest, a metadata.json), so storage grows without
//! bound unless they go.
//!
//! # Contract
//! A file under the table's location is deleted only when **all** hold:
//! - no metadata the table holds references it: the current metadata.json
//!   and the previous ones it logs, every snapshot's manifest list, every
//!   manifest those list, every entry of those manifests (live or not), the
//!   statistics files, and every file the durable ledger records for a batch
//!   not yet known settled;
//! - it was last modified before the safety age (`orphan_older_than`,
//!   3 days by default, never under an hour), so a file an archive, another
//!   engine or a maintenance rewrite is writing right now — referenced only
//!   by a commit still to come — is never taken.
//!
//! Paths are compared without their scheme (`s3://`, `s3a://` and `s3n://`
//! name the same object) and with repeated slashes folded.  A crash part-way
//! through leaves some orphans for the next run; deleting is idempotent.

use std::collections::HashSet;

use futures::TryStreamExt;
use iceberg::table::Table;
use opendal::Operator;

use crate::error::{Error, ErrorKind, Result};
use crate::lake::vended::TableStorage;

/// One file under the table's location that nothing references.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Orphan {
    pub path: String,
    pub bytes: u64,
    /// Last modified, ms since the epoch.
    pub modified_ms: i64,
}

/// What a sweep found: orphans old enough to delete, and younger ones left.
#[derive(Debug, Clone, Default)]
pub struct Sweep {
    pub old: Vec<Orphan>,
    pub young: usize,
}

fn storage_error(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Storage, format!("{what}: {e}")).with_hint(
        "check that the warehouse storage is reachable and that the credentials may list and \
         delete objects (s3:ListBucket, s3:DeleteObject)",
    )
}

/// The comparison key of a path: no scheme, no repeated slashes.
pub fn path_key(path: &str) -> String {
    let rest = path.split_once("://").map_or(path, |(_, r)| r);
    let mut out = String::with_capacity(rest.len());
    for c in rest.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out.trim_start_matches('/').to_string()
}

/// Every file the table's metadata references (see the module doc), as
/// [`path_key`]s.  Reads every snapshot's manifest list and each distinct
/// manifest once.
pub async fn referenced((table, storage): (&Table, &TableStorage)) -> Result<HashSet<String>> {
    let md = table.metadata();
    let mut keep = HashSet::new();
    if let Some(loc) = table.metadata_location() {
        keep.insert(path_key(loc));
    }
    for log in md.metadata_log() {
        keep.insert(path_key(&log.metadata_file));
    }
    for s in md.statistics_iter() {
        keep.insert(path_key(&s.statistics_path));
    }
    for s in md.partition_statistics_iter() {
        keep.insert(path_key(&s.statistics_path));
    }
    keep.extend(ledger_files(table)?);
    let mut manifests_seen = HashSet::new();
    for snapshot in md.snapshots() {
        keep.insert(path_key(snapshot.manifest_list()));
        let table = storage.current(table).await?;
        let list = table
            .manifest_list_reader(snapshot)
            .load()
            .await
            .map_err(|e| {
                Error::iceberg(
                    format!(
                        "cannot read the manifest list of snapshot {}",
                        snapshot.snapshot_id()
                    ),
                    e,
                )
            })?;
        let unseen: Vec<_> = list
            .entries()
            .iter()
            .filter(|m| manifests_seen.insert(m.manifest_path.clone()))
            .cloned()
            .collect();
        let mut manifests = super::readback::read_manifests(&table, &unseen);
        while let Some((m, manifest)) = manifests.try_next().await? {
            keep.insert(path_key(&m.manifest_path));
            for e in manifest.entries() {
                keep.insert(path_key(e.file_path()));
            }
        }
    }
    Ok(keep)
}

/// The files the durable ledger records for batches not yet known settled,
/// as [`path_key`]s: reconciliation may need exactly them, so compaction
/// never rewrites them and orphan removal never deletes them.
pub fn ledger_files(table: &Table) -> Result<HashSet<String>> {
    let Some(text) = table
        .metadata()
        .properties()
        .get(crate::ledger::keys::LEDGER)
    else {
        return Ok(HashSet::new());
    };
    let entries = crate::ledger::durable::parse(text).map_err(|e| {
        Error::new(
            ErrorKind::Catalog,
            format!("the ledger of {} is damaged: {e}", table.identifier()),
        )
    })?;
    Ok(entries
        .iter()
        .flat_map(|e| &e.files)
        .map(|f| path_key(&f.path))
        .collect())
}

/// An OpenDAL operator over the storage holding `location`, from the
/// table's FileIO properties (the same `s3.*` keys iceberg-rust reads), and
/// the location relative to the operator's root.  Used for listing only:
/// iceberg-rust's FileIO cannot list, and deletes go through FileIO.
fn operator(table: &Table, location: &str) -> Result<(Operator, String)> {
    let bad = |m: &str| Error::new(ErrorKind::Storage, format!("{m}: {location}"));
    let Some((scheme, rest)) = location.split_once("://") else {
        let op = Operator::new(opendal::services::Fs::default().root("/"))
            .map_err(|e| storage_error("cannot open the local warehouse", e))?
            .finish();
        return Ok((op, location.trim_start_matches('/').to_string()));
    };
    match scheme {
        "file" => {
            let op = Operator::new(opendal::services::Fs::default().root("/"))
                .map_err(|e| storage_error("cannot open the local warehouse", e))?
                .finish();
            Ok((op, rest.trim_start_matches('/').to_string()))
        }
        "s3" | "s3a" | "s3n" => {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            let props = table.file_io().config().props();
            let op = s3_operator(props, bucket)?;
            Ok((op, key.to_string()))
        }
        _ => Err(bad(
            "orphan files can be found on local and S3 storage only; this table lives at",
        )),
    }
}

fn s3_operator(
    props: &std::collections::HashMap<String, String>,
    bucket: &str,
) -> Result<Operator> {
    use iceberg::io::{
        CLIENT_REGION, S3_ACCESS_KEY_ID, S3_ENDPOINT, S3_PATH_STYLE_ACCESS, S3_REGION,
        S3_SECRET_ACCESS_KEY, S3_SESSION_TOKEN,
    };
    let get = |k: &str| props.get(k).map(String::as_str);
    let mut b = opendal::services::S3::default().bucket(bucket);
    if let Some(v) = get(S3_ENDPOINT) {
        b = b.endpoint(v);
    }
    if let Some(v) = get(CLIENT_REGION).or(get(S3_REGION)) {
        b = b.region(v);
    }
    if let Some(v) = get(S3_ACCESS_KEY_ID) {
        b = b.access_key_id(v);
    }
    if let Some(v) = get(S3_SECRET_ACCESS_KEY) {
        b = b.secret_access_key(v);
    }
    if let Some(v) = get(S3_SESSION_TOKEN) {
        b = b.session_token(v);
    }
    // iceberg-rust's default (Java's too): virtual-host style unless told.
    let path_style = get(S3_PATH_STYLE_ACCESS)
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "t" | "1" | "on"));
    if !path_style {
        b = b.enable_virtual_host_style();
    }
    if get(S3_ACCESS_KEY_ID).is_none()
        && let Some(chain) = crate::aws::s3_chain()
    {
        b = b.credential_provider_chain(chain);
    }
    Ok(Operator::new(b)
        .map_err(|e| storage_error("cannot open the S3 warehouse", e))?
        .finish())
}

/// Lists the files under the table's location that nothing references:
/// those last modified before `cutoff_ms` in [`Sweep::old`], the others
/// counted in [`Sweep::young`].
pub async fn find((table, storage): (&Table, &TableStorage), cutoff_ms: i64) -> Result<Sweep> {
    let keep = referenced((table, storage)).await?;
    let table = &storage.current(table).await?;
    let location = table
        .metadata()
        .location()
        .trim_end_matches('/')
        .to_string();
    let (op, root) = operator(table, &location)?;
    let dir = format!("{}/", root.trim_end_matches('/'));
    let mut lister = op
        .lister_with(&dir)
        .recursive(true)
        .await
        .map_err(|e| storage_error(format!("cannot list {location}"), e))?;
    let mut sweep = Sweep::default();
    while let Some(entry) = lister
        .try_next()
        .await
        .map_err(|e| storage_error(format!("cannot list {location}"), e))?
    {
        if !entry.metadata().is_file() {
            continue;
        }
        let rel = entry.path().to_string();
        let full = format!("{location}/{}", rel.strip_prefix(&dir).unwrap_or(&rel));
        if keep.contains(&path_key(&full)) {
            continue;
        }
        let meta = match entry.metadata().last_modified() {
            Some(_) => entry.metadata().clone(),
            None => op
                .stat(&rel)
                .await
                .map_err(|e| storage_error(format!("cannot stat {full}"), e))?,
        };
        // No modification time: treat as new (never deleted on a guess).
        let modified_ms = meta
            .last_modified()
            .map_or(i64::MAX, |t| t.into_inner().as_millisecond());
        if modified_ms < cutoff_ms {
            sweep.old.push(Orphan {
                path: full,
                bytes: meta.content_length(),
                modified_ms,
            });
        } else {
            sweep.young += 1;
        }
    }
    sweep.old.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(sweep)
}

/// Deletes `orphans` through the table's FileIO, each with the storage keys
/// of its moment.  Idempotent: a file already gone counts as deleted.
pub async fn delete(storage: &TableStorage, orphans: &[Orphan]) -> Result<()> {
    for (n, o) in orphans.iter().enumerate() {
        if n == orphans.len() / 2 {
            crate::fault::point("maintain-mid-orphan-delete").await;
        }
        let (io, _) = storage.io().await?;
        io.delete(&o.path)
            .await
            .map_err(|e| storage_error(format!("cannot delete orphan file {}", o.path), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::path_key;

    #[test]
    fn path_keys_ignore_scheme_and_repeated_slashes() {
        assert_eq!(path_key("s3://b/t/data/x.parquet"), "b/t/data/x.parquet");
        assert_eq!(path_key("s3a://b//t/data/x.parquet"), "b/t/data/x.parquet");
        assert_eq!(path_key("file:///w/t/m.avro"), "w/t/m.avro");
        assert_eq!(path_key("/w/t/m.avro"), "w/t/m.avro");
        assert_ne!(path_key("s3://b/t/a"), path_key("s3://b/t/b"));
    }
}
