//! Loading the staging table: the range's data files, shared out over the
//! restore's connections (`tables[].parallel_windows`), each connection one
//! binary `COPY … FROM STDIN` in a transaction of its own.
//!
//! Contract (what is left behind when):
//! - The staging table is created empty, in a transaction of its own, with
//!   a table comment ([`UNFINISHED`]) that says its load has not finished.
//! - Every loader copies its share and stops short of committing. Only when
//!   all of them have copied without error (and some row was in the range)
//!   do they commit; then the comment is cleared, in the transaction that
//!   gives columns loaded through a cast their own types back.
//! - A failed load — any loader's error, a failed commit, no row in the
//!   range — rolls every open loader back and drops the staging table.
//! - A killed restore leaves the staging table with its comment: empty, or
//!   (killed between the loaders' commits) part of the rows. The next
//!   restore into it refuses and says so (`leftover`); only the run that
//!   created a staging table attaches or merges it, after its checks.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use bytes::Bytes;
use futures::{SinkExt, TryStreamExt};
use iceberg::scan::FileScanTask;
use iceberg::spec::{NestedFieldRef, PrimitiveType, Type};
use iceberg::table::Table;
use tokio_postgres::Client;

use super::encode::{CopyEncoder, Enc};
use super::pghash::{RowHash, RowSum};
use super::validate::{Part, staged_decoder};
use super::{Archived, Loaded, StagedColumn, in_transaction, pg};
use crate::checksum::{Checksum, RowHasher};
use crate::error::{Error, ErrorKind, Result};
use crate::filter::quote_ident;
use crate::lake::readback::{file_reader, read_files};
use crate::lake::vended::TableStorage;
use crate::plan::window::Window;
use crate::source::catalog::{self, map_context, resolve_type};
use crate::source::extract::CopyDecoder;
use crate::types::{Mapping, TypeInfo, map_type, text_mapping};

/// The comment a staging table carries until every loader has committed.
pub const UNFINISHED: &str =
    "permafrost restore: the load did not finish; these rows are incomplete";

/// The error for a staging table that already exists: `comment` tells a
/// table an interrupted load left from one an earlier restore kept.
pub(crate) fn leftover(staging: &str, comment: Option<&str>) -> Error {
    if comment == Some(UNFINISHED) {
        Error::new(
            ErrorKind::Postgres,
            format!("the staging table {staging} is left from a restore whose load did not finish"),
        )
        .with_hint(format!(
            "its rows are incomplete: `DROP TABLE {staging}`, then restore again"
        ))
    } else {
        Error::new(
            ErrorKind::Postgres,
            format!("the staging table {staging} already exists"),
        )
        .with_hint("drop it (an earlier restore kept it for inspection) or choose another `--into`")
    }
}

/// A staged column: its name, Postgres type and how values travel.
#[derive(Debug, Clone)]
struct StageCol {
    name: String,
    pg_type: String,
    mapping: Mapping,
}

/// What one loader copied.
#[derive(Default)]
struct Share {
    read: Checksum,
    copied: u64,
    per_file: HashMap<String, Checksum>,
    /// The rows sent, hashed as Postgres hashes them.
    sent: RowSum,
    /// The rows sent, decoded again.
    echo: Part,
}

/// Where a restore's rows load, and what counts as inside its range.
pub(super) struct Stage<'a> {
    pub staging: &'a str,
    pub ts: &'a str,
    pub range: Window,
}

/// Decodes the rows a loader sends with the archive's own extractor (the
/// decoder that reads the source), so that what Postgres is proved to hold
/// ([`super::pghash`]) is proved to mean the archive's rows.
struct Echo<'a> {
    decoder: CopyDecoder,
    hasher: RowHasher,
    how: &'a Copying,
    out: Vec<RecordBatch>,
    hashes: Vec<u128>,
}

impl<'a> Echo<'a> {
    /// Starts with the stream's `header`.
    fn new(how: &'a Copying, header: &[u8]) -> Result<Self> {
        let mut decoder = staged_decoder(&how.cols, &how.schema)?;
        let mut out = Vec::new();
        decoder.decode_slice(header, &mut out)?;
        Ok(Self {
            decoder,
            hasher: RowHasher::default(),
            how,
            out,
            hashes: Vec::new(),
        })
    }

    /// Decodes `rows` (whole rows as sent) into `part`.
    fn add(&mut self, rows: &[u8], part: &mut Part) -> Result<()> {
        let used = self.decoder.decode_slice(rows, &mut self.out)?;
        if used != rows.len() {
            return Err(Error::internal("the rows sent end inside a row"));
        }
        if self.decoder.buffered_rows() > 0 {
            self.out.push(self.decoder.flush()?);
        }
        let how = self.how;
        for batch in self.out.drain(..) {
            self.hashes.clear();
            self.hasher.hash_rows(&batch, &mut self.hashes)?;
            part.add((&batch, &self.hashes), &how.cols, how.ts_index, how.range);
        }
        Ok(())
    }
}

/// Creates the staging table and loads the rows of `tasks` into it over
/// `loaders` (see the module contract); `None` (and no staging table) when
/// no row of the files lies in the range.
pub(super) async fn load(
    client: &Client,
    loaders: &[Arc<Client>],
    (table, storage): (&Table, &Arc<TableStorage>),
    src: &Archived,
    stage: &Stage<'_>,
    tasks: Vec<FileScanTask>,
    progress: &indicatif::ProgressBar,
) -> Result<Option<Loaded>> {
    let staging = stage.staging;
    let files = tasks.len();
    let arrow_schema = Arc::new(
        iceberg::arrow::schema_to_arrow_schema(&src.schema)
            .map_err(|e| Error::iceberg("cannot derive the Arrow schema", e))?,
    );
    let (staged, encoder) = in_transaction(client, "the staging table", async {
        let created = create_staging(client, &src.cols, staging).await?;
        comment(client, staging, Some(UNFINISHED)).await?;
        Ok(created)
    })
    .await?;
    let cols: Vec<StagedColumn> = staged
        .iter()
        .map(|c| StagedColumn {
            name: c.name.clone(),
            pg_type: c.pg_type.clone(),
            kind: c.mapping.kind.clone(),
            cast: c.mapping.cast.clone(),
        })
        .collect();
    let hash = match RowHash::of(client, staging, &cols).await {
        Ok(hash) => hash.map(Arc::new),
        Err(e) => {
            drop_staging(client, staging).await;
            return Err(e);
        }
    };
    let loaded = async {
        let names: Vec<String> = staged.iter().map(|c| quote_ident(&c.name)).collect();
        let copy = format!(
            "COPY {staging} ({}) FROM STDIN (FORMAT binary)",
            names.join(", ")
        );
        let how = Copying {
            encoder,
            copy,
            hash: hash.as_ref().ok().cloned(),
            schema: arrow_schema.clone(),
            cols: cols.clone(),
            ts_index: cols.iter().position(|c| c.name == stage.ts),
            range: stage.range,
        };
        let share = copy_all(loaders, (table, storage), how, tasks, progress).await?;
        if share.read.rows == 0 {
            return Ok(None);
        }
        crate::fault::point("restore-loaded").await;
        commit_all(loaders).await?;
        in_transaction(client, "the staging table", async {
            uncast(client, staging, &staged).await?;
            comment(client, staging, None).await
        })
        .await?;
        crate::fault::point("restore-staged").await;
        Ok(Some(share))
    }
    .await;
    let share = match loaded {
        Ok(Some(share)) => share,
        failed_or_empty => {
            rollback_all(loaders).await;
            drop_staging(client, staging).await;
            return failed_or_empty.map(|_| None);
        }
    };
    Ok(Some(Loaded {
        read: share.read,
        copied: share.copied,
        files,
        per_file: share.per_file,
        hash,
        sent: share.sent,
        echo: share.echo,
        cols,
        arrow_schema,
    }))
}

/// How every loader copies: the encoder, the COPY statement, and what the
/// rows sent are decoded into: the staged columns, the time column's place
/// among them and the range.
struct Copying {
    encoder: CopyEncoder,
    copy: String,
    /// How Postgres will hash the staged rows, if it can.
    hash: Option<Arc<RowHash>>,
    schema: arrow_schema::SchemaRef,
    cols: Vec<StagedColumn>,
    ts_index: Option<usize>,
    range: Window,
}

/// Runs one loader per connection over a shared queue of files and waits
/// for every one of them; each leaves its transaction open. The first error
/// empties the queue, so the others stop after their current file.
async fn copy_all(
    loaders: &[Arc<Client>],
    (table, storage): (&Table, &Arc<TableStorage>),
    how: Copying,
    tasks: Vec<FileScanTask>,
    progress: &indicatif::ProgressBar,
) -> Result<Share> {
    let queue = Arc::new(Mutex::new(VecDeque::from(tasks)));
    let how = Arc::new(how);
    let mut set = tokio::task::JoinSet::new();
    for client in loaders {
        let (client, table, how) = (client.clone(), table.clone(), how.clone());
        let (queue, progress) = (queue.clone(), progress.clone());
        let storage = storage.clone();
        set.spawn(async move {
            let files = (table, storage.as_ref());
            let share = copy_share(&client, files, &how, &queue, &progress).await;
            if share.is_err()
                && let Ok(mut q) = queue.lock()
            {
                q.clear();
            }
            share
        });
    }
    let mut total = Share::default();
    let mut failed = None;
    while let Some(joined) = set.join_next().await {
        let share = joined
            .map_err(|e| Error::internal(format!("a restore loader stopped: {e}")))
            .and_then(|s| s);
        match share {
            Ok(s) => {
                total.read.add(s.read);
                total.copied += s.copied;
                total.sent.add(s.sent);
                total.echo.merge(s.echo);
                for (path, sum) in s.per_file {
                    total.per_file.entry(path).or_default().add(sum);
                }
            }
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// One loader: opens a transaction on `client` and copies the files it
/// takes from `queue` until the queue is empty (uncommitted); each file is
/// read with `storage`'s keys as they are when it is taken (renewed before
/// keys a catalog vends expire). The rows it sends are hashed as Postgres
/// hashes them and decoded again ([`Echo`]) on the way.
async fn copy_share(
    client: &Client,
    (mut table, storage): (Table, &TableStorage),
    how: &Copying,
    queue: &Mutex<VecDeque<FileScanTask>>,
    progress: &indicatif::ProgressBar,
) -> Result<Share> {
    client
        .batch_execute("BEGIN")
        .await
        .map_err(pg("cannot begin a transaction"))?;
    let sink = client
        .copy_in::<_, Bytes>(how.copy.as_str())
        .await
        .map_err(pg("cannot start COPY into the staging table"))?;
    let mut sink = std::pin::pin!(sink);
    let mut buf = Vec::with_capacity(1 << 20);
    CopyEncoder::header(&mut buf);
    let mut echo = Echo::new(how, &buf)?;
    let mut hasher = RowHasher::default();
    let mut hashes = Vec::new();
    let mut share = Share::default();
    let mut io_generation = 0;
    let next = || queue.lock().ok().and_then(|mut q| q.pop_front());
    while let Some(task) = next() {
        storage.refresh(&mut table, &mut io_generation).await?;
        let path = task.data_file_path.clone();
        let what = "cannot read the archive";
        let mut stream = read_files(&table, file_reader, vec![task], 1, what);
        let mut file_sum = Checksum::default();
        while let Some(batch) = stream.try_next().await? {
            hashes.clear();
            hasher.hash_rows(&batch, &mut hashes)?;
            file_sum.add_hashes(&hashes);
            let start = buf.len();
            how.encoder.encode(&batch, &mut buf)?;
            let sent = &buf[start..];
            // Only for the hash check: without it, the rows are read back.
            if let Some(hash) = &how.hash {
                hash.add_copy_rows(sent, &mut share.sent)
                    .map_err(|why| Error::internal(format!("cannot hash the rows sent: {why}")))?;
                echo.add(sent, &mut share.echo)?;
            }
            progress.inc(batch.num_rows() as u64);
            if buf.len() >= 1 << 20 {
                let chunk = Bytes::from(std::mem::replace(&mut buf, Vec::with_capacity(1 << 20)));
                sink.send(chunk)
                    .await
                    .map_err(pg("COPY into the staging table failed"))?;
            }
        }
        share.read.add(file_sum);
        share.per_file.entry(path).or_default().add(file_sum);
    }
    CopyEncoder::trailer(&mut buf);
    sink.send(Bytes::from(buf))
        .await
        .map_err(pg("COPY into the staging table failed"))?;
    share.copied = sink
        .as_mut()
        .finish()
        .await
        .map_err(pg("COPY into the staging table failed"))?;
    Ok(share)
}

/// Commits every loader's transaction.
async fn commit_all(loaders: &[Arc<Client>]) -> Result<()> {
    let commits = loaders.iter().map(|c| c.batch_execute("COMMIT"));
    for done in futures::future::join_all(commits).await {
        done.map_err(pg("cannot commit the staging table's rows"))?;
    }
    Ok(())
}

/// Rolls back whatever transaction a loader still has open.
async fn rollback_all(loaders: &[Arc<Client>]) {
    let rollbacks = loaders.iter().map(|c| c.batch_execute("ROLLBACK"));
    futures::future::join_all(rollbacks).await;
}

/// Drops the staging table of a failed load (a warning if it cannot: it
/// keeps its comment, and the next restore into it says so).
async fn drop_staging(client: &Client, staging: &str) {
    if let Err(e) = client
        .batch_execute(&format!("DROP TABLE IF EXISTS {staging}"))
        .await
    {
        tracing::warn!(
            "{}",
            Error::postgres(format!("cannot drop the staging table {staging}"), e)
        );
    }
}

/// Sets (or, with `None`, removes) the staging table's comment.
async fn comment(client: &Client, staging: &str, text: Option<&str>) -> Result<()> {
    let text = text.map_or("NULL".into(), crate::filter::quote_literal);
    client
        .batch_execute(&format!("COMMENT ON TABLE {staging} IS {text}"))
        .await
        .map_err(pg("cannot comment on the staging table"))
}

/// Creates the staging table with the archived columns' types (values read
/// through a cast take the cast type until loaded); returns the columns and
/// the COPY encoder of their values.
async fn create_staging(
    client: &Client,
    cols: &[(NestedFieldRef, String, bool)],
    staging: &str,
) -> Result<(Vec<StageCol>, CopyEncoder)> {
    let ddl: Vec<String> = cols
        .iter()
        .map(|(f, ty, _)| format!("{} {ty}", quote_ident(&f.name)))
        .collect();
    client
        .batch_execute(&format!("CREATE TABLE {staging} ({})", ddl.join(", ")))
        .await
        .map_err(|e| {
            Error::postgres(format!("cannot create the staging table {staging}"), e)
                .with_hint("the recorded Postgres types must exist in this database (enums, domains and composite types included)")
        })?;
    let ctx = map_context(client).await?;
    let infos = staged_types(client, staging).await?;
    let mut staged = Vec::with_capacity(cols.len());
    for ((f, pg_type, _), info) in cols.iter().zip(&infos) {
        let natural = map_type(info, ctx);
        let mapping = match natural {
            Ok(m) if m.kind.matches_iceberg(&f.field_type) => m,
            _ if *f.field_type == Type::Primitive(PrimitiveType::String) => text_mapping(info),
            _ => {
                return Err(Error::new(
                    ErrorKind::Schema,
                    format!(
                        "column `{}`: archived as {}, which Postgres type {pg_type} cannot take back losslessly",
                        f.name, f.field_type
                    ),
                ));
            }
        };
        staged.push(StageCol {
            name: f.name.clone(),
            pg_type: pg_type.clone(),
            mapping,
        });
    }
    // Values read through a cast load into the cast type first.
    let casts: Vec<String> = staged
        .iter()
        .filter_map(|c| {
            c.mapping.cast.as_ref().map(|cast| {
                format!(
                    "ALTER COLUMN {} TYPE {cast} USING NULL",
                    quote_ident(&c.name)
                )
            })
        })
        .collect();
    let infos = if casts.is_empty() {
        infos
    } else {
        client
            .batch_execute(&format!("ALTER TABLE {staging} {}", casts.join(", ")))
            .await
            .map_err(pg("cannot prepare the staging table"))?;
        staged_types(client, staging).await?
    };
    let encs = staged
        .iter()
        .zip(&infos)
        .map(|(c, info)| Enc::new(&c.mapping.kind, info))
        .collect::<Result<Vec<_>>>()?;
    Ok((staged, CopyEncoder::new(encs)))
}

/// Gives the columns loaded through a cast their own types back.
async fn uncast(client: &Client, staging: &str, staged: &[StageCol]) -> Result<()> {
    let back: Vec<String> = staged
        .iter()
        .filter(|c| c.mapping.cast.is_some())
        .map(|c| {
            format!(
                "ALTER COLUMN {n} TYPE {t} USING {n}::{t}",
                n = quote_ident(&c.name),
                t = c.pg_type
            )
        })
        .collect();
    if !back.is_empty() {
        client
            .batch_execute(&format!("ALTER TABLE {staging} {}", back.join(", ")))
            .await
            .map_err(pg("cannot give the staging columns their own types back"))?;
    }
    Ok(())
}

/// The resolved types of the staging table's columns, in order.
async fn staged_types(client: &Client, staging: &str) -> Result<Vec<TypeInfo>> {
    let cols = catalog::columns(client, catalog::oid_of(client, staging).await?).await?;
    let mut out = Vec::with_capacity(cols.len());
    for c in cols {
        out.push(resolve_type(client, c.type_oid, c.typmod, 0).await?);
    }
    Ok(out)
}
