//! The one error type of the library.
//!
//! An [`Error`] has a [`ErrorKind`] (what went wrong, which decides the exit code
//! and whether a retry can help), a one-line message, optional context lines
//! (`table`, `window`, …), an optional hint for the user and an optional source.
//! Foreign errors (Postgres, Iceberg, I/O) are converted in exactly one place
//! each ([`Error::postgres`], [`Error::iceberg`], …), which is where secrets are
//! kept out of messages and retryability is decided.

use std::fmt;

/// What kind of failure this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The configuration file is missing, malformed or inconsistent.
    Config,
    /// The source table does not fit what permafrost needs (missing column,
    /// unsupported type, non-timestamp time column, …).
    Schema,
    /// PostgreSQL refused or failed a request.
    Postgres,
    /// The Iceberg catalog refused or failed a request.
    Catalog,
    /// Reading or writing data files failed.
    Storage,
    /// The committed data did not read back as written.
    Verification,
    /// Another permafrost instance holds the table.
    Busy,
    /// A signal stopped the run before it was done (the rest waits for the
    /// next run; nothing is half-done).
    Interrupted,
    /// A value cannot be represented losslessly.
    Unsupported,
    /// Local I/O (files, processes).
    Io,
    /// A bug or an impossible state.
    Internal,
}

impl ErrorKind {
    /// Exit code used by the binary for this kind of failure.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Config => 2,
            ErrorKind::Schema | ErrorKind::Unsupported => 3,
            ErrorKind::Postgres | ErrorKind::Catalog | ErrorKind::Storage => 4,
            ErrorKind::Verification => 5,
            ErrorKind::Busy => 6,
            ErrorKind::Interrupted => 8,
            ErrorKind::Io | ErrorKind::Internal => 1,
        }
    }
}

impl serde::Serialize for ErrorKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::Config => "config",
            ErrorKind::Schema => "schema",
            ErrorKind::Postgres => "postgres",
            ErrorKind::Catalog => "catalog",
            ErrorKind::Storage => "storage",
            ErrorKind::Verification => "verification",
            ErrorKind::Busy => "busy",
            ErrorKind::Interrupted => "interrupted",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Io => "io",
            ErrorKind::Internal => "internal",
        };
        f.write_str(s)
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The library's error.
pub struct Error {
    kind: ErrorKind,
    message: String,
    context: Vec<(&'static str, String)>,
    hint: Option<String>,
    source: Option<Source>,
    /// A lost optimistic-concurrency race: another writer committed first.
    conflict: bool,
}

/// Result alias used throughout permafrost.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a one-line `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            context: Vec::new(),
            hint: None,
            source: None,
            conflict: false,
        }
    }

    /// Marks a lost commit race (another writer committed first): the same
    /// work may succeed on the table as it is now.
    pub fn as_conflict(mut self) -> Self {
        self.conflict = true;
        self
    }

    /// Whether this is a lost commit race ([`Error::as_conflict`]).
    pub fn is_conflict(&self) -> bool {
        self.conflict
    }

    /// Shorthand for a configuration error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// Shorthand for an internal error (a bug).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Attach a key/value of context (shown after the message).
    pub fn with_context(mut self, key: &'static str, value: impl fmt::Display) -> Self {
        self.context.push((key, value.to_string()));
        self
    }

    /// Attach a hint telling the user what to do about it.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Attach the underlying cause.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The one-line message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The hint, if any.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// Context key/values.
    pub fn context(&self) -> &[(&'static str, String)] {
        &self.context
    }

    /// Prefix the message with more specific information, keeping kind, hint and source.
    pub fn prefixed(mut self, prefix: impl fmt::Display) -> Self {
        self.message = format!("{prefix}: {}", self.message);
        self
    }

    /// Converts a tokio-postgres error. Postgres never echoes passwords in its
    /// errors, and the DSN is not part of the message.
    pub fn postgres(what: impl fmt::Display, err: tokio_postgres::Error) -> Self {
        let (message, hint) = match err.as_db_error() {
            Some(db) => {
                let hint = if db.message().contains("row-level security") {
                    Some(ROW_SECURITY_HINT.to_string())
                } else {
                    db.hint().map(str::to_string)
                };
                let hint = hint.or_else(|| {
                    if db.message().contains("client certificate") {
                        Some("give a client certificate the server trusts: `sslcert=…` and `sslkey=…` in the DSN (or PGSSLCERT/PGSSLKEY)".into())
                    } else {
                        postgres_hint(db.code())
                    }
                });
                (format!("{what}: {}", db.message()), hint)
            }
            None if let Some((cause, hint)) = tls_failure(&err, &TlsHints::POSTGRES) => {
                (format!("{what}: {cause}"), Some(hint))
            }
            None => {
                let text = err.to_string();
                let hint = if err.is_closed()
                    || text.contains("connect")
                    || text.contains("Connection refused")
                {
                    Some(POSTGRES_UNREACHABLE_HINT.to_string())
                } else {
                    None
                };
                (format!("{what}: {}", flatten_source(&err)), hint)
            }
        };
        let mut e = Error::new(ErrorKind::Postgres, message);
        e.hint = hint;
        e.with_source(err)
    }

    /// The SQLSTATE of the Postgres error this came from.
    pub fn pg_code(&self) -> Option<&tokio_postgres::error::SqlState> {
        self.source
            .as_ref()
            .and_then(|s| s.downcast_ref::<tokio_postgres::Error>())
            .and_then(|e| e.code())
    }

    /// Postgres's own words, when the error is the server's.
    pub fn pg_message(&self) -> Option<&str> {
        self.source
            .as_ref()
            .and_then(|s| s.downcast_ref::<tokio_postgres::Error>())
            .and_then(|e| e.as_db_error())
            .map(|db| db.message())
    }

    /// True when a statement gave up waiting: `lock_not_available` (a lock
    /// not granted within `lock_timeout`) or `query_canceled` (`statement_timeout`).
    pub fn is_pg_timeout(&self) -> bool {
        use tokio_postgres::error::SqlState as S;
        matches!(self.pg_code(), Some(c) if *c == S::LOCK_NOT_AVAILABLE || *c == S::QUERY_CANCELED)
    }

    /// Replaces the hint.
    pub fn replace_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The error as one line with its hint after [`HINT_IN_TEXT`]: how an
    /// error reaches iceberg-rust's REST client as the message of an error
    /// answer (the SigV4 forwarder's), to be split again by [`Error::iceberg`].
    pub fn as_told(&self) -> String {
        match &self.hint {
            Some(hint) => format!("{self}{HINT_IN_TEXT}{hint}"),
            None => self.to_string(),
        }
    }

    /// Converts an iceberg-rust error; `what` says what we were doing.
    pub fn iceberg(what: impl fmt::Display, err: iceberg::Error) -> Self {
        use iceberg::ErrorKind as K;
        if let Some(ours) = carried(&err) {
            return ours.prefixed(what);
        }
        let kind = match err.kind() {
            K::TableNotFound
            | K::NamespaceNotFound
            | K::TableAlreadyExists
            | K::NamespaceAlreadyExists => ErrorKind::Catalog,
            K::CatalogCommitConflicts => ErrorKind::Catalog,
            K::FeatureUnsupported => ErrorKind::Unsupported,
            K::DataInvalid => ErrorKind::Catalog,
            _ => ErrorKind::Catalog,
        };
        if let Some((cause, hint)) = tls_failure(&err, &TlsHints::CATALOG) {
            return Error::new(kind, format!("{what}: {cause}")).with_hint(hint);
        }
        let full = one_line(&err.to_string());
        if full.contains(NO_SIGNING_KEYS) {
            return Error::no_s3_keys(what);
        }
        let (full, told) = carried_hint(&full);
        let hint = told.or_else(|| iceberg_hint(&full));
        let text = concise(&full);
        let mut e = Error::new(kind, format!("{what}: {text}"));
        e.hint = hint;
        e.conflict = err.kind() == K::CatalogCommitConflicts;
        e
    }

    /// S3 had no keys to sign with (none in the `FileIO`'s properties, none
    /// from the AWS chain): a missing credential, kind `config`.
    fn no_s3_keys(what: impl fmt::Display) -> Self {
        Error::new(
            ErrorKind::Config,
            format!("{what}: there are no credentials to sign S3 requests with"),
        )
        .with_hint(NO_S3_KEYS_HINT)
    }

    /// A request to the catalog (`what`) that got no answer: a TLS failure
    /// as [`tls_failure`] tells it, else the transport's causes on one line;
    /// kind `Catalog`, with a hint.
    pub fn catalog_request(what: impl fmt::Display, err: reqwest::Error) -> Self {
        if let Some((cause, hint)) = tls_failure(&err, &TlsHints::CATALOG) {
            return Error::new(ErrorKind::Catalog, format!("{what}: {cause}")).with_hint(hint);
        }
        let text = concise(&one_line(&flatten_source(&err)));
        Error::new(ErrorKind::Catalog, format!("{what}: {text}"))
            .with_hint(CATALOG_UNREACHABLE_HINT)
    }

    /// Converts an iceberg-rust error of the warehouse's files (data files,
    /// manifests read back): kind `Storage`, with a hint about the object
    /// store or the local directory, not the catalog.
    /// A file whose bytes do not decode as Parquet is no storage failure but
    /// a verdict on the file: kind `Verification`.
    pub fn storage(what: impl fmt::Display, err: iceberg::Error) -> Self {
        if let Some((cause, hint)) = tls_failure(&err, &TlsHints::SYSTEM) {
            return Error::new(ErrorKind::Storage, format!("{what}: {cause}")).with_hint(hint);
        }
        let full = one_line(&err.to_string());
        if undecodable(&err) {
            return Error::damaged_file(what, None, &concise(&full));
        }
        if full.contains(NO_SIGNING_KEYS) {
            return Error::no_s3_keys(what);
        }
        Error::new(ErrorKind::Storage, format!("{what}: {}", concise(&full)))
            .with_hint(storage_hint(&full))
    }

    /// Converts an iceberg-rust error reading the data file `path`: as
    /// [`Error::storage`], with the file named.
    pub fn data_file(what: impl fmt::Display, path: &str, err: iceberg::Error) -> Self {
        if undecodable(&err) {
            let cause = concise(&one_line(&err.to_string()));
            return Error::damaged_file(what, Some(path), &cause);
        }
        Error::storage(format!("{what}: data file {path}"), err)
    }

    /// A data file of the archive (`file`, when known) that does not decode
    /// (see [`undecodable`]) or is not the file its manifest describes:
    /// kind `Verification`, with where to look.
    pub fn damaged_file(what: impl fmt::Display, file: Option<&str>, cause: &str) -> Self {
        let file = match file {
            Some(path) => format!("data file {path}"),
            None => "a data file".to_string(),
        };
        Error::new(
            ErrorKind::Verification,
            format!("{what}: {file} does not decode: {cause}"),
        )
        .with_hint(DAMAGED_FILE_HINT)
    }

    /// Converts a local I/O error.
    pub fn io(what: impl fmt::Display, err: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, format!("{what}: {err}")).with_source(err)
    }

    /// Converts an Arrow error (a bug or an unsupported value).
    pub fn arrow(what: impl fmt::Display, err: arrow_schema::ArrowError) -> Self {
        Error::new(ErrorKind::Internal, format!("{what}: {err}"))
    }
}

/// Where a user fixes a TLS failure, per kind of endpoint.
pub struct TlsHints {
    /// How to trust the server's CA.
    pub trust: &'static str,
    /// Where the host name comes from.
    pub host: &'static str,
}

impl TlsHints {
    pub const CATALOG: TlsHints = TlsHints {
        trust: "`ssl.ca-cert: /path/to/ca.pem` in the `catalog` section, or SSL_CERT_FILE",
        host: "see `uri`",
    };
    /// Endpoints whose clients trust the system store only (S3 through
    /// OpenDAL, webhooks).
    pub const SYSTEM: TlsHints = TlsHints {
        trust: "add its CA to the system trust store, or point SSL_CERT_FILE at a bundle",
        host: "see the endpoint's URL",
    };
    pub const POSTGRES: TlsHints = TlsHints {
        trust: "`sslrootcert=/path/to/ca.pem` in the DSN or `database.ssl_root_cert`",
        host: "`host` in the DSN",
    };
}

/// A TLS failure in `err`'s cause chain: one line naming the host and the
/// cause (untrusted CA, name mismatch, expired certificate, failed
/// handshake), and a hint.
pub fn tls_failure(
    err: &(dyn std::error::Error + 'static),
    hints: &TlsHints,
) -> Option<(String, String)> {
    tls_failure_at(err, hints, None)
}

/// [`tls_failure`] for an error that does not name its host (a bare TLS
/// stream): `host` is named instead.
pub fn tls_failure_at(
    err: &(dyn std::error::Error + 'static),
    hints: &TlsHints,
    host_port: Option<String>,
) -> Option<(String, String)> {
    let mut host = host_port;
    let mut tls = None;
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<reqwest::Error>()
            && let Some(u) = r.url()
        {
            host = Some(match u.port() {
                Some(p) => format!("{}:{p}", u.host_str().unwrap_or("?")),
                None => u.host_str().unwrap_or("?").to_string(),
            });
        }
        let text = e.to_string();
        if tls.is_none()
            && (text.contains("invalid peer certificate")
                || text.contains("received fatal alert")
                || text.contains("invalid dns name"))
        {
            tls = Some(text);
        }
        cur = e.source();
    }
    let text = tls?;
    let host = host.unwrap_or_else(|| "the server".into());
    let (cause, hint) = if text.contains("invalid dns name") {
        (
            "its name is not one a certificate can be checked against (rustls: invalid DNS name)"
                .to_string(),
            format!(
                "name the server by a DNS name or an IP address ({}); `hostaddr` sets where to \
                 connect apart from the name",
                hints.host
            ),
        )
    } else if text.contains("UnknownIssuer") {
        (
            "the server's certificate is not trusted (its CA is unknown)".to_string(),
            format!("trust the server's CA: {}", hints.trust),
        )
    } else if text.contains("not valid for") || text.contains("NotValidForName") {
        let detail = text
            .rsplit("invalid peer certificate: ")
            .next()
            .unwrap_or(&text);
        (
            format!("the server's certificate is not valid for this name ({detail})"),
            format!(
                "connect with a host name the certificate carries ({}), or fix the certificate",
                hints.host
            ),
        )
    } else if text.contains("Expired") {
        (
            "the server's certificate has expired".to_string(),
            "the server must renew its certificate; check this machine's clock too".to_string(),
        )
    } else {
        (
            format!("the TLS handshake failed ({text})"),
            "check that the server speaks TLS on this port and accepts TLS 1.2 or 1.3".to_string(),
        )
    };
    Some((format!("TLS to {host} failed: {cause}"), hint))
}

/// The hint for a catalog that did not answer (no connection, no DNS).
const CATALOG_UNREACHABLE_HINT: &str =
    "is the catalog reachable? check `uri` in the `catalog` section";

/// An error of ours that travelled through iceberg-rust (as the source of
/// `err`, or of one of its causes): its kind, message and hint, without
/// its sources.
fn carried(err: &iceberg::Error) -> Option<Error> {
    let mut cur = std::error::Error::source(err);
    while let Some(e) = cur {
        if let Some(ours) = e.downcast_ref::<Error>() {
            return Some(Error {
                kind: ours.kind,
                message: ours.message.clone(),
                context: ours.context.clone(),
                hint: ours.hint.clone(),
                source: None,
                conflict: ours.conflict,
            });
        }
        cur = e.source();
    }
    None
}

/// `err` and its causes on one line, each said once.
pub fn flatten_source(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// A catalog's JSON error (`"message":"…"`) says more in fewer words than the
/// HTTP context iceberg-rust wraps around it; keep the kind and that message.
fn concise(text: &str) -> String {
    let Some(start) = text.find("\"message\":\"") else {
        return text.to_string();
    };
    let rest = &text[start + 11..];
    let mut msg = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    msg.push(n);
                }
            }
            '"' => break,
            c => msg.push(c),
        }
    }
    let kind = text
        .split(',')
        .next()
        .unwrap_or("")
        .split(" =>")
        .next()
        .unwrap_or("")
        .trim();
    if kind.is_empty() {
        msg
    } else {
        format!("{kind}: {msg}")
    }
}

/// Collapses a multi-line message into one line.
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The hint of a Postgres server that could not be reached.
pub const POSTGRES_UNREACHABLE_HINT: &str = "is PostgreSQL running and is `database.dsn` right?";

/// What to do about a server that takes no writes.
pub const READ_ONLY_HINT: &str = "point `database.dsn` at the primary (the writer endpoint): a \
     hot standby, an RDS/Aurora reader endpoint or `default_transaction_read_only` takes no \
     DELETE; `archive --no-delete`, `fetch` and `query` work there";

/// The hint of a query that row-level security would filter (permafrost's
/// sessions run with `row_security = off`).
const ROW_SECURITY_HINT: &str = "row-level security would hide some of the table's rows from \
     the connecting role, and permafrost reads every row or none (`row_security = off`, as \
     pg_dump): connect as the table's owner (if the table does not FORCE ROW LEVEL SECURITY) or \
     as a role with BYPASSRLS (`ALTER ROLE … BYPASSRLS`); nothing was deleted";

fn postgres_hint(code: &tokio_postgres::error::SqlState) -> Option<String> {
    use tokio_postgres::error::SqlState as S;
    let h = if *code == S::INVALID_PASSWORD || *code == S::INVALID_AUTHORIZATION_SPECIFICATION {
        "check the user in `database.dsn` and the password (`database.password`, the DSN's, or PGPASSWORD)"
    } else if *code == S::INSUFFICIENT_PRIVILEGE {
        "the archiving role needs SELECT and DELETE on the table (GRANT SELECT, DELETE ON … TO …)"
    } else if *code == S::INVALID_CATALOG_NAME {
        "the database named in `database.dsn` does not exist"
    } else if *code == S::QUERY_CANCELED {
        "raise `database.statement_timeout` or lower `max_batch_rows`"
    } else if *code == S::LOCK_NOT_AVAILABLE {
        "another session holds a conflicting lock on the table: wait for it to finish, or raise `database.lock_timeout`; nothing was deleted"
    } else if *code == S::READ_ONLY_SQL_TRANSACTION {
        READ_ONLY_HINT
    } else if *code == S::T_R_SERIALIZATION_FAILURE || *code == S::T_R_DEADLOCK_DETECTED {
        "a concurrent writer touched the same rows; nothing was deleted, run again"
    } else if *code == S::TOO_MANY_CONNECTIONS {
        "the server's `max_connections` or the role's or database's `CONNECTION LIMIT` is \
         reached: close idle sessions or raise the limit (a restore needs two connections, an \
         archive one)"
    } else {
        return None;
    };
    Some(h.to_string())
}

/// How `std::io` spells the failures of a local warehouse's files.
const LOCAL_FILE_ERRORS: [&str; 7] = [
    "not a directory",
    "is in the way",
    "is a directory",
    "permission denied",
    "no such file or directory",
    "no space left on device",
    "read-only file system",
];

/// Whether `word` stands alone in `text` (an HTTP status, not the digits
/// of a file name's UUID).
fn has_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

/// Whether an error's text says a local file failed (`std::io`'s words).
fn is_local_file_error(t: &str) -> bool {
    t.contains("(os error") && LOCAL_FILE_ERRORS.iter().any(|e| t.contains(e))
}

const LOCAL_FILE_HINT: &str = "a file of the local warehouse cannot be read or written: check that the table's \
     directories under `warehouse` are directories, writable by this user, on a disk with space";

const DAMAGED_FILE_HINT: &str = "a data file of the archive is damaged or is not the file its \
     metadata describes (changed bytes, cut short): restore it from the object store's versioning \
     or a backup; `permafrost list` names each window's files";

/// True when `err` says a file's bytes do not decode as Parquet (a Parquet
/// or Arrow decoding error anywhere in its chain), as opposed to the
/// storage failing to hand the bytes over (an error the Parquet reader only
/// passes on, `ParquetError::External`).
pub fn undecodable(err: &(dyn std::error::Error + 'static)) -> bool {
    use arrow_schema::ArrowError;
    use parquet::errors::ParquetError;
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(p) = e.downcast_ref::<ParquetError>()
            && !matches!(p, ParquetError::External(_))
        {
            return true;
        }
        if let Some(ArrowError::ParquetError(_)) = e.downcast_ref::<ArrowError>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// OpenDAL's signer found no keys: none in the `FileIO`'s properties, and
/// the credential source (the AWS chain, [`crate::aws`]) gave none.
const NO_SIGNING_KEYS: &str = "failed to load signing credential";

const NO_S3_KEYS_HINT: &str = "give the catalog `s3.access-key-id`/`s3.secret-access-key`, or \
     let the AWS credential chain answer (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, \
     a web identity token, instance metadata); the warning logged before this says why it did not";

/// AWS refused keys past their expiry (`ExpiredToken`); `t` in lower case.
fn expired_keys(t: &str) -> bool {
    t.contains("expiredtoken") || t.contains("token has expired")
}

const EXPIRED_KEYS_HINT: &str = "the keys expired: static keys in the config are never renewed \
     (leave them out to use the AWS credential chain, whose keys are); keys a REST catalog vends \
     with a table are held for the run that loaded it, and the next run loads fresh ones";

fn storage_hint(text: &str) -> &'static str {
    let t = text.to_ascii_lowercase();
    if is_local_file_error(&t) {
        LOCAL_FILE_HINT
    } else if expired_keys(&t) {
        EXPIRED_KEYS_HINT
    } else if has_word(&t, "403")
        || has_word(&t, "401")
        || t.contains("forbidden")
        || t.contains("access denied")
        || t.contains("permissiondenied")
    {
        "the object store refused the request: check the catalog's `s3.access-key-id`/`s3.secret-access-key` \
         (or the AWS credential chain) and that they may read and write the warehouse's bucket"
    } else {
        "check that the warehouse storage is reachable and writable (s3.* properties of the catalog)"
    }
}

/// AWS's words (lower case) for a SigV4 signature it does not accept: a
/// wrong secret, an unknown or expired key, a region or service the key is
/// not scoped to, a clock too far off.
fn refused_signature(t: &str) -> bool {
    [
        "signature we calculated does not match",
        "security token included in the request is invalid",
        "security token included in the request is expired",
        "access key id you provided does not exist",
        "credential should be scoped",
        "signature expired",
        "invalidsignatureexception",
        "unrecognizedclientexception",
    ]
    .iter()
    .any(|w| t.contains(w))
}

/// Where an error's hint starts in a message that carries it
/// ([`Error::as_told`]).
const HINT_IN_TEXT: &str = " -- hint: ";

/// `text` without the hint an error answer's message carried
/// ([`Error::as_told`]: it ends where that JSON string does), and the hint.
fn carried_hint(text: &str) -> (String, Option<String>) {
    let Some((before, after)) = text.split_once(HINT_IN_TEXT) else {
        return (text.to_string(), None);
    };
    let end = after.find('"').unwrap_or(after.len());
    let hint = after[..end].trim_end_matches('\\').to_string();
    (format!("{before}{}", &after[end..]), Some(hint))
}

fn iceberg_hint(text: &str) -> Option<String> {
    let t = text.to_ascii_lowercase();
    // The catalog's own writes of table metadata fail in the object store
    // (OpenDAL: "failure in doing io operation") or the local warehouse.
    if t.contains("failure in doing io operation") || t.contains("service: s3") {
        return Some(storage_hint(text).to_string());
    }
    let h = if expired_keys(&t) {
        EXPIRED_KEYS_HINT
    } else if t.contains("missing authentication token") {
        "the catalog takes AWS SigV4-signed requests only: set `rest.sigv4-enabled: true` in the \
         `catalog` section (see catalogs/rest-sigv4.yaml)"
    } else if refused_signature(&t) {
        "the catalog refused the request's AWS SigV4 signature: check the AWS credentials \
         (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), `rest.signing-region` and \
         `rest.signing-name` in the `catalog` section"
    } else if has_word(&t, "403")
        || has_word(&t, "401")
        || t.contains("unauthorized")
        || t.contains("forbidden")
    {
        "the catalog refused the credentials: check `credential`/`token` in the `catalog` section"
    } else if t.contains("connection refused")
        || t.contains("error sending request")
        || t.contains("dns error")
    {
        CATALOG_UNREACHABLE_HINT
    } else if t.contains("unable to open database file") {
        "the SQL catalog's `uri` points to a file that cannot be created or opened"
    } else if is_local_file_error(&t) {
        LOCAL_FILE_HINT
    } else {
        return None;
    };
    Some(h.to_string())
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        for (k, v) in &self.context {
            write!(f, " [{k}: {v}]")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error: {self}", self.kind)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_of_ours_carried_through_iceberg_keeps_its_kind_and_hint() {
        let ours = Error::new(ErrorKind::Config, "the credential is malformed").with_hint("fix it");
        let carried = iceberg::Error::new(iceberg::ErrorKind::Unexpected, "cannot authenticate")
            .with_source(ours);
        let e = Error::iceberg("cannot load the table", carried);
        assert_eq!(e.kind(), ErrorKind::Config);
        assert_eq!(
            e.message(),
            "cannot load the table: the credential is malformed"
        );
        assert_eq!(e.hint(), Some("fix it"));
    }

    #[test]
    fn display_has_message_and_context() {
        let e = Error::config("bad value")
            .with_context("key", "tables[0].lag")
            .with_hint("use 15d");
        assert_eq!(e.to_string(), "bad value [key: tables[0].lag]");
        assert_eq!(e.hint(), Some("use 15d"));
        assert_eq!(e.kind().exit_code(), 2);
    }

    #[test]
    fn catalog_json_messages_are_kept_short() {
        let t = r#"Unexpected, context: { status: 404 Not Found, headers: {"a": "b"}, json: {"error":{"message":"table bucket warehouse not found: x","type":"NoSuch","code":404}} } => Received response"#;
        assert_eq!(
            concise(t),
            "Unexpected: table bucket warehouse not found: x"
        );
        assert_eq!(concise("plain"), "plain");
    }

    #[test]
    fn local_file_failures_get_the_warehouse_hint_and_network_ones_do_not() {
        let local = "DataInvalid => Failed to read file /w/t/metadata/v1.json: Not a directory (os error 20)";
        assert!(iceberg_hint(local).is_some_and(|h| h.contains("local warehouse")));
        let in_the_way = "Unexpected => cannot create the directory /w/t/metadata: a file of that name is in the way (File exists (os error 17))";
        assert!(iceberg_hint(in_the_way).is_some_and(|h| h.contains("local warehouse")));
        // The digits of a UUID are not an HTTP status.
        let uuid = "DataInvalid => Failed to read file /w/t/metadata/00000-67c822c6-fc92-4014-8fa2-7d69b7e77c32.metadata.json: Not a directory (os error 20)";
        assert!(iceberg_hint(uuid).is_some_and(|h| h.contains("local warehouse")));
        let denied = "Unexpected, context: { status: 403, json: {} } => Received response";
        assert!(iceberg_hint(denied).is_some_and(|h| h.contains("refused the credentials")));
        let reset = "Unexpected => Connection reset by peer (os error 104)";
        assert!(iceberg_hint(reset).is_none_or(|h| !h.contains("local warehouse")));
    }

    #[test]
    fn storage_failures_point_at_the_store_not_the_catalog() {
        let denied = "Unexpected => S3Error { code: \"AccessDenied\", message: \"Access Denied\" }, status: 403";
        assert!(storage_hint(denied).contains("s3.access-key-id"));
        let local =
            "DataInvalid => Failed to open file /w/t/data/x.parquet: Not a directory (os error 20)";
        assert!(storage_hint(local).contains("local warehouse"));
        let down = "Unexpected => error sending request: connection refused";
        assert!(storage_hint(down).contains("reachable"));
        let expired = "Unexpected (persistent) at read, context: { response: Parts { status: 403 }, service: s3 } => S3Error { code: \"ExpiredToken\", message: \"The provided token has expired.\" }";
        assert!(storage_hint(expired).contains("keys expired"));
        assert!(iceberg_hint(expired).is_some_and(|h| h.contains("keys expired")));
        // The catalog writing table metadata to a store that refuses the key.
        let create = "Unexpected => Failure in doing io operation, source: PermissionDenied (persistent) at write, context: { response: Parts { status: 403 }, service: s3 } => S3Error { code: \"SignatureDoesNotMatch\" }";
        assert!(iceberg_hint(create).is_some_and(|h| h.contains("s3.access-key-id")));
    }

    #[test]
    fn a_refused_sigv4_signature_points_at_the_aws_keys_not_oauth() {
        let wrong = "Unexpected => Received response with unexpected status code, status: 403, json: {\"error\":{\"message\":\"The request signature we calculated does not match the signature you provided.\",\"type\":\"ForbiddenException\",\"code\":403}}";
        let hint = iceberg_hint(wrong).expect("hint");
        assert!(
            hint.contains("SigV4") && hint.contains("rest.signing-region"),
            "{hint}"
        );
        let unsigned =
            "Unexpected => status: 403, json: {\"message\":\"Missing Authentication Token\"}";
        let hint = iceberg_hint(unsigned).expect("hint");
        assert!(hint.contains("rest.sigv4-enabled: true"), "{hint}");
        // An OAuth2 refusal keeps its own hint.
        let oauth = "Unexpected => status: 401 Unauthorized, json: {\"error\":\"invalid_client\"}";
        assert!(iceberg_hint(oauth).is_some_and(|h| h.contains("`credential`/`token`")));
    }

    #[test]
    fn a_hint_carried_in_an_error_answer_is_a_hint_again() {
        let told = Error::new(
            ErrorKind::Catalog,
            "cannot reach the REST catalog: TLS failed",
        )
        .with_hint("trust the server's CA: `ssl.ca-cert`")
        .as_told();
        let answer = format!(
            "Unexpected => Received response with unexpected status code, context: {{ json: {{\"error\":{{\"message\":\"{told}\",\"code\":502}}}} }}"
        );
        let (text, hint) = carried_hint(&answer);
        assert_eq!(
            hint.as_deref(),
            Some("trust the server's CA: `ssl.ca-cert`")
        );
        assert!(text.contains("TLS failed\",\"code\":502"), "{text}");
        assert_eq!(carried_hint("no hint here").1, None);
    }

    #[test]
    fn one_line_collapses() {
        assert_eq!(one_line("a\n  b\n\nc"), "a | b | c");
    }
}
