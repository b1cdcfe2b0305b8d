//! Storage keys a catalog vends with a table, renewed before they expire.
//!
//! A REST catalog may hand out S3 keys with every table it loads
//! (`s3.access-key-id`, `s3.secret-access-key`, `s3.session-token` in the
//! load's `config` or its `storage-credentials` — see
//! [`super::rest_token::RenewingRest`] — and when they expire in
//! `s3.session-token-expires-at-ms`:
//! Polaris, Unity, Lakekeeper, S3 Tables' REST endpoint …), often living 15
//! to 60 minutes.  iceberg-rust puts them into the table's `FileIO` as
//! static keys and never asks again, so a run that outlives them fails at
//! its first S3 request after their end.  [`TableStorage`] holds the
//! `FileIO` of a table's last load and loads the table again once
//! [`renew_at`] says so; whoever writes or reads the table's files asks it
//! for the `FileIO` to use *now*.
//!
//! Contract: a `FileIO` handed out has at least half of its keys' life left
//! (at most five minutes of it are kept in reserve: an hour's keys are
//! renewed after 55 minutes).  A batch takes its `FileIO` when it starts
//! writing, so a batch that writes for longer than that reserve can still
//! meet the end of its keys: it then fails before anything is deleted, and
//! the next run archives its window.  Tables without vended keys (a local
//! warehouse, keys in the config, the AWS chain — which renews itself, see
//! [`crate::aws`]) are never loaded again for this.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use iceberg::TableIdent;
use iceberg::io::FileIO;

use super::catalog::CatalogHandle;
use crate::error::{Error, Result};

/// When the catalog's keys expire, in Unix milliseconds (Iceberg's name).
pub const EXPIRES_AT_MS: &str = "s3.session-token-expires-at-ms";

/// Temporary keys come with a session token.
const SESSION_TOKEN: &str = "s3.session-token";

/// The life assumed for a session token whose expiry the catalog does not
/// state: STS's shortest is 15 minutes, and the catalog may have issued it
/// before our load, so ten.
const UNSTATED_LIFE: Duration = Duration::from_secs(600);

/// When the storage keys in `props` (a `FileIO`'s properties) loaded at
/// `loaded` are renewed: `None` for keys that do not expire (no session
/// token), else by [`crate::aws::renew_at`] with nothing kept in reserve
/// (these keys are static to OpenDAL's signer, which refuses none) — from
/// the stated expiry, or from [`UNSTATED_LIFE`] after the load.
pub fn renew_at(props: &HashMap<String, String>, loaded: SystemTime) -> Option<SystemTime> {
    let stated = props
        .get(EXPIRES_AT_MS)
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
    let expiry = match stated {
        Some(at) => at,
        None if props.contains_key(SESSION_TOKEN) => loaded + UNSTATED_LIFE,
        None => return None,
    };
    Some(crate::aws::renew_at(loaded, expiry, Duration::ZERO))
}

/// The `FileIO` a table's files are read and written with, renewed from
/// the catalog before its keys expire (see the module contract).
pub struct TableStorage {
    catalog: Arc<CatalogHandle>,
    ident: TableIdent,
    held: tokio::sync::Mutex<Held>,
}

struct Held {
    io: FileIO,
    renew: Option<SystemTime>,
    generation: u64,
}

impl TableStorage {
    /// The storage of `table`, just loaded from `catalog`.
    pub fn new(catalog: Arc<CatalogHandle>, table: &iceberg::table::Table) -> Self {
        let io = table.file_io().clone();
        Self {
            catalog,
            ident: table.identifier().clone(),
            held: tokio::sync::Mutex::new(Held {
                renew: renew_at(io.config().props(), SystemTime::now()),
                io,
                generation: 0,
            }),
        }
    }

    /// The `FileIO` to use now and its generation (one more after every
    /// renewal, so a holder of a table can tell its `FileIO` is older):
    /// the table is loaded from the catalog again first when its keys are
    /// due ([`renew_at`]).
    pub async fn io(&self) -> Result<(FileIO, u64)> {
        let mut held = self.held.lock().await;
        let now = SystemTime::now();
        if held.renew.is_some_and(|at| now >= at) {
            let table = super::commit::reload(self.catalog.iceberg(), &self.ident).await?;
            let io = table.file_io().clone();
            tracing::debug!("{}: storage keys renewed from the catalog", self.ident);
            held.renew = renew_at(io.config().props(), now);
            held.io = io;
            held.generation += 1;
        }
        Ok((held.io.clone(), held.generation))
    }

    /// Brings `table` (whose `FileIO` is of `generation`, 0 for the table
    /// this storage was made from) to the `FileIO` to use now; true when
    /// that is a newer one (whatever `table` built from its `FileIO` — a
    /// reader — is then to be built again).
    pub async fn refresh(
        &self,
        table: &mut iceberg::table::Table,
        generation: &mut u64,
    ) -> Result<bool> {
        let (io, now) = self.io().await?;
        if now == *generation {
            return Ok(false);
        }
        *table = super::commit_base::with_io(table.clone(), &io)
            .map_err(|e| Error::iceberg("cannot renew the table's storage keys", e))?;
        *generation = now;
        Ok(true)
    }

    /// `table` — the table this storage was made from, or one with its
    /// `FileIO` — with the `FileIO` to use now ([`Self::refresh`]).
    pub async fn current(&self, table: &iceberg::table::Table) -> Result<iceberg::table::Table> {
        let mut table = table.clone();
        self.refresh(&mut table, &mut 0).await?;
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn vended_keys_are_renewed_with_half_their_life_or_five_minutes_left() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let ms = |s: u64| ((1_700_000_000 + s) * 1000).to_string();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let hour = props(&[("s3.session-token", "t"), (EXPIRES_AT_MS, &ms(3600))]);
        assert_eq!(renew_at(&hour, t0), Some(at(3300)));
        let short = props(&[("s3.session-token", "t"), (EXPIRES_AT_MS, &ms(4))]);
        assert_eq!(renew_at(&short, t0), Some(at(2)));
        // Stated without a session token: the statement counts.
        let stated = props(&[(EXPIRES_AT_MS, &ms(900))]);
        assert_eq!(renew_at(&stated, t0), Some(at(600)));
        // Already expired: renewed at the next use.
        assert!(renew_at(&stated, at(1000)).is_some_and(|r| r <= at(1000)));
    }

    #[test]
    fn a_session_token_without_an_expiry_is_renewed_after_five_minutes() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let p = props(&[("s3.access-key-id", "k"), ("s3.session-token", "t")]);
        assert_eq!(renew_at(&p, t0), Some(t0 + Duration::from_secs(300)));
        let unparsable = props(&[("s3.session-token", "t"), (EXPIRES_AT_MS, "soon")]);
        assert_eq!(
            renew_at(&unparsable, t0),
            Some(t0 + Duration::from_secs(300))
        );
    }

    #[test]
    fn keys_without_a_session_token_are_never_renewed() {
        let t0 = SystemTime::UNIX_EPOCH;
        assert_eq!(renew_at(&props(&[]), t0), None);
        let static_keys = props(&[("s3.access-key-id", "k"), ("s3.secret-access-key", "s")]);
        assert_eq!(renew_at(&static_keys, t0), None);
    }
}
