//! Applying a validated restore: attach the staging table as a partition, or
//! merge it into a plain table.  Each runs in one transaction.

use tokio_postgres::Client;

use super::target::{check_constraints, overlapping_partitions, primary_key, target_columns};
use super::validate::{conflict_policy_problem, same_row};
use super::{OnConflict, StagedColumn, in_transaction, literal, pg};
use crate::error::{Error, ErrorKind, Result};
use crate::filter::quote_ident;
use crate::plan::window::Window;
use crate::source::introspect::TimeKind;

/// What `attach` did.
#[derive(Debug, Clone)]
pub struct Attached {
    /// The partition `--replace-partition` detached; `None` when it was empty
    /// (and dropped) or there was none.
    pub replaced: Option<String>,
    /// The range constraint was valid before ATTACH.
    pub validated_before: bool,
}

/// Attaches `staging` as the partition of `target` for `range`.
///
/// The staging table first gets the target's NOT NULL and CHECK constraints
/// and a validated CHECK constraint matching the partition bounds, so that
/// `ATTACH PARTITION` needs no scan — before anything locks `target`.  With
/// `replace`, the existing partition of exactly this range is detached
/// next: dropped when empty, otherwise kept as `<name>_replaced_<unix
/// time>`.  `DETACH` locks `target` whole, and every reader and writer of
/// it queues behind a `DETACH` that waits, so it waits at most `wait` (then
/// nothing is changed, the staged rows stay); from it to the commit only
/// catalog changes run.  Validation has checked that `target` is
/// range-partitioned on `ts` (`validate::preflight`, and again
/// `validate::against_target` after staging).
#[allow(clippy::too_many_arguments)]
pub async fn attach(
    client: &Client,
    staging: &str,
    stage_name: &str,
    target: &str,
    ts: &str,
    kind: TimeKind,
    range: &Window,
    (replace, wait): (bool, std::time::Duration),
) -> Result<Attached> {
    let tcols = target_columns(client, target).await?;
    let cons = check_constraints(client, target).await?;
    let parts = overlapping_partitions(client, target, kind, range).await?;
    if let Some(p) = parts.first()
        && !(replace && parts.len() == 1 && p.exact)
    {
        return Err(Error::new(
            ErrorKind::Postgres,
            format!("partition {} already covers the range", p.name),
        ));
    }
    in_transaction(client, "the attach", async {
        let mut alters: Vec<String> = tcols
            .iter()
            .filter(|c| c.not_null)
            .map(|c| format!("ALTER COLUMN {} SET NOT NULL", quote_ident(&c.name)))
            .collect();
        for (name, def) in &cons {
            let def = def.strip_suffix(" NOT VALID").unwrap_or(def);
            alters.push(format!("ADD CONSTRAINT {} {def}", quote_ident(name)));
        }
        let cname: String = format!("{stage_name}_range").chars().take(63).collect();
        let c = quote_ident(ts);
        alters.push(format!(
            "ADD CONSTRAINT {} CHECK ({c} IS NOT NULL AND {c} >= {} AND {c} < {})",
            quote_ident(&cname),
            literal(kind, range.start),
            literal(kind, range.end)
        ));
        client
            .batch_execute(&format!("ALTER TABLE {staging} {}", alters.join(", ")))
            .await
            .map_err(pg("cannot add the partition constraints to the staging table"))?;
        let validated_before: bool = client
            .query_opt(
                "SELECT convalidated FROM pg_constraint WHERE conrelid = $1::text::regclass AND conname = $2",
                &[&staging, &cname],
            )
            .await
            .map_err(pg("cannot read the range constraint"))?
            .map(|r| r.get(0))
            .unwrap_or(false);
        let replaced = match parts.first() {
            Some(p) => detach(client, target, &p.name, staging, wait).await?,
            None => None,
        };
        client
            .batch_execute(&format!(
                "ALTER TABLE {target} ATTACH PARTITION {staging} FOR VALUES FROM ({}) TO ({})",
                literal(kind, range.start),
                literal(kind, range.end)
            ))
            .await
            .map_err(pg("cannot attach the staging table as a partition"))?;
        Ok(Attached {
            replaced,
            validated_before,
        })
    })
    .await
}

/// Detaches `part` from `target` inside the attach's transaction, waiting
/// at most `wait` (zero: `lock_timeout`) for the lock; then drops it when
/// empty, else renames it `<name>_replaced_<unix time>` (the new name).
async fn detach(
    client: &Client,
    target: &str,
    part: &str,
    staging: &str,
    wait: std::time::Duration,
) -> Result<Option<String>> {
    let bound = crate::source::bounded_lock_wait(wait);
    client
        .batch_execute(&format!(
            "{bound}ALTER TABLE {target} DETACH PARTITION {part}"
        ))
        .await
        .map_err(|e| {
            let busy = e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE);
            let err = Error::postgres("cannot detach the existing partition", e);
            match busy {
                true => err.replace_hint(format!(
                    "a session reads or locks {target} (every reader and writer of it would \
                     queue behind the detach): restore again when it is quiet, or raise \
                     `tables[].drop_lock_timeout`; nothing was attached or detached, the staged \
                     rows stay in {staging} (drop it first)"
                )),
                false => err,
            }
        })?;
    let empty: bool = client
        .query_one(&format!("SELECT NOT EXISTS (SELECT 1 FROM {part})"), &[])
        .await
        .map_err(pg("cannot read the detached partition"))?
        .get(0);
    if empty {
        client
            .batch_execute(&format!("DROP TABLE {part}"))
            .await
            .map_err(pg("cannot drop the empty detached partition"))?;
        return Ok(None);
    }
    let bare = part.rsplit('.').next().unwrap_or(part).trim_matches('"');
    let new = format!("{bare}_replaced_{}", chrono::Utc::now().timestamp());
    client
        .batch_execute(&format!(
            "ALTER TABLE {part} RENAME TO {}",
            quote_ident(&new)
        ))
        .await
        .map_err(pg("cannot rename the detached partition"))?;
    Ok(Some(new))
}

/// What `merge` did.
#[derive(Debug, Clone, Copy)]
pub struct Merged {
    pub inserted: u64,
    pub updated: u64,
}

/// Inserts the staged rows into `target` in one transaction with the
/// conflict policy, then drops the staging table unless `keep`.  `ts` is
/// the time column (see `same_row`).
pub async fn merge(
    client: &Client,
    staging: &str,
    target: &str,
    ts: &str,
    cols: &[StagedColumn],
    policy: OnConflict,
    keep: bool,
) -> Result<Merged> {
    let tcols = target_columns(client, target).await?;
    let insertable: Vec<&str> = cols
        .iter()
        .filter(|c| tcols.iter().any(|t| t.name == c.name && !t.generated))
        .map(|c| c.name.as_str())
        .collect();
    let shared: Vec<String> = insertable.iter().map(|s| s.to_string()).collect();
    let list = insertable
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let overriding = if tcols
        .iter()
        .any(|t| t.identity_always && insertable.contains(&t.name.as_str()))
    {
        " OVERRIDING SYSTEM VALUE"
    } else {
        ""
    };
    let pk = primary_key(client, target).await?;
    if let Some(p) = conflict_policy_problem(policy, &pk) {
        return Err(Error::new(
            ErrorKind::Schema,
            format!("{p} ({target} has none)"),
        ));
    }
    let conflict_target = pk
        .iter()
        .map(|k| quote_ident(k))
        .collect::<Vec<_>>()
        .join(", ");
    let select = format!("SELECT {list} FROM {staging} s");
    let sql = match policy {
        OnConflict::Error => format!("INSERT INTO {target} ({list}){overriding} {select}"),
        OnConflict::Skip if pk.is_empty() => format!(
            "INSERT INTO {target} ({list}){overriding} {select} WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE {})",
            same_row(&pk, &shared, ts)
        ),
        OnConflict::Skip => format!(
            "INSERT INTO {target} ({list}){overriding} {select} ON CONFLICT ({conflict_target}) DO NOTHING"
        ),
        OnConflict::Update => {
            let sets: Vec<String> = insertable
                .iter()
                .filter(|c| !pk.iter().any(|k| k == *c))
                .map(|c| format!("{q} = EXCLUDED.{q}", q = quote_ident(c)))
                .collect();
            let action = if sets.is_empty() {
                "NOTHING".to_string()
            } else {
                format!("UPDATE SET {}", sets.join(", "))
            };
            format!(
                "INSERT INTO {target} ({list}){overriding} {select} ON CONFLICT ({conflict_target}) DO {action}"
            )
        }
    };
    in_transaction(client, "the merge", async {
        let updated: i64 = if policy == OnConflict::Update {
            client
                .query_one(
                    &format!(
                        "SELECT count(*) FROM {staging} s WHERE EXISTS (SELECT 1 FROM {target} t WHERE {})",
                        same_row(&pk, &shared, ts)
                    ),
                    &[],
                )
                .await
                .map_err(pg("cannot count the rows to update"))?
                .get(0)
        } else {
            0
        };
        let affected = client
            .execute(sql.as_str(), &[])
            .await
            .map_err(|e| Error::postgres(format!("cannot merge into {target}"), e))?;
        if !keep {
            client
                .batch_execute(&format!("DROP TABLE {staging}"))
                .await
                .map_err(pg("cannot drop the staging table"))?;
        }
        let updated = updated.max(0) as u64;
        Ok(Merged {
            inserted: affected.saturating_sub(updated),
            updated,
        })
    })
    .await
}
