//! Connection strings the way libpq reads them.
//!
//! tokio-postgres parses URLs and `key=value` strings but knows nothing of
//! libpq's surroundings. Here, for every setting the DSN leaves out, in
//! libpq's order: the DSN, then the service file entry (`service=` or
//! `PGSERVICE`, from `PGSERVICEFILE`, `~/.pg_service.conf` or
//! `PGSYSCONFDIR/pg_service.conf`), then the environment (`PGHOST`, `PGPORT`,
//! `PGUSER`, `PGDATABASE`, `PGPASSWORD`, `PGSSLMODE`, `PGSSLROOTCERT`,
//! `PGSSLCERT`, `PGSSLKEY`), and for the password last the password file
//! (`passfile=`, `PGPASSFILE` or `~/.pgpass`). The TLS keys tokio-postgres
//! does not take (`sslrootcert`, `sslcert`, `sslkey`, `sslmode=verify-*`)
//! are taken out and handed to our rustls setup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tokio_postgres::config::{Host, SslMode};

use crate::error::{Error, Result};

/// Keys taken out of the DSN before tokio-postgres parses it.
const TAKEN: [&str; 6] = [
    "service",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "passfile",
];

/// A DSN resolved against its surroundings.
pub struct Resolved {
    pub config: tokio_postgres::Config,
    /// `disable`, `allow`, `prefer`, `require`, `verify-ca` or `verify-full`.
    pub sslmode: String,
    pub root_cert: Option<PathBuf>,
    /// Client certificate and key (PEM) for certificate authentication.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Splits `dsn` into what tokio-postgres parses and the `TAKEN` keys.
pub fn split(dsn: &str) -> std::result::Result<(String, BTreeMap<String, String>), String> {
    let dsn = dsn.trim();
    if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        let Some((base, query)) = dsn.split_once('?') else {
            return Ok((dsn.to_string(), BTreeMap::new()));
        };
        // Kept pairs go on as written: a URL's query is percent-encoded,
        // and `+` is a plus to libpq and tokio-postgres, not a space.
        let mut taken = BTreeMap::new();
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decoded(k)?;
            if TAKEN.contains(&key.as_str()) {
                taken.insert(key, percent_decoded(v)?);
            } else {
                kept.push(pair);
            }
        }
        let kept = kept.join("&");
        let out = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{kept}")
        };
        return Ok((out, taken));
    }
    let mut taken = BTreeMap::new();
    let mut kept = Vec::new();
    for (k, v) in key_values(dsn)? {
        if TAKEN.contains(&k.as_str()) {
            taken.insert(k, v);
        } else {
            kept.push(format!(
                "{k}='{}'",
                v.replace('\\', "\\\\").replace('\'', "\\'")
            ));
        }
    }
    Ok((kept.join(" "), taken))
}

/// A URL query's key or value, percent-decoded.
fn percent_decoded(s: &str) -> std::result::Result<String, String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| format!("`{s}` is not UTF-8 once percent-decoded"))
}

/// libpq's `key = value` syntax: values bare or single-quoted with `\` escapes.
fn key_values(s: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("missing `=` after `{key}`"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted value of `{key}`")),
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

/// Resolves `dsn` (with `password` from `database.password`) against the
/// service file, the environment and the password file.
pub fn resolve(
    dsn: &str,
    password: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Resolved> {
    let bad = |e: String| Error::config(format!("`database.dsn` is not valid: {e}"));
    let (rest, taken) = split(dsn).map_err(bad)?;
    let mut cfg: tokio_postgres::Config = rest.parse().map_err(|e| bad(format!("{e}")))?;
    let env = |k: &str| env(k).filter(|v| !v.is_empty());
    let service = match taken.get("service").cloned().or_else(|| env("PGSERVICE")) {
        Some(name) => service_entry(&name, &env)?,
        None => BTreeMap::new(),
    };
    // DSN, then service file, then environment.
    let pick = |key: &str, var: &str| {
        taken
            .get(key)
            .or(service.get(key))
            .cloned()
            .or_else(|| env(var))
    };
    if cfg.get_hosts().is_empty() {
        let host = service
            .get("host")
            .cloned()
            .or_else(|| env("PGHOST"))
            .unwrap_or_else(default_host);
        for h in host.split(',') {
            cfg.host(h);
        }
    }
    if cfg.get_ports().is_empty()
        && let Some(p) = service.get("port").cloned().or_else(|| env("PGPORT"))
    {
        cfg.port(
            p.parse()
                .map_err(|_| bad(format!("port `{p}` is not a number")))?,
        );
    }
    if cfg.get_user().is_none()
        && let Some(u) = service
            .get("user")
            .cloned()
            .or_else(|| env("PGUSER"))
            .or_else(|| env("USER"))
    {
        cfg.user(&u);
    }
    if cfg.get_dbname().is_none()
        && let Some(d) = service.get("dbname").cloned().or_else(|| env("PGDATABASE"))
    {
        cfg.dbname(&d);
    }
    let password = password
        .map(str::to_string)
        .or_else(|| {
            cfg.get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned())
        })
        .or_else(|| service.get("password").cloned())
        .or_else(|| env("PGPASSWORD"))
        .or_else(|| {
            let file = pick("passfile", "PGPASSFILE")
                .map(PathBuf::from)
                .or_else(|| home(&env).map(|h| h.join(".pgpass")))?;
            passfile_password(&file, &cfg)
        });
    if let Some(pw) = password {
        crate::secret::register(pw.clone());
        cfg.password(pw.as_bytes());
    }
    let sslmode = pick("sslmode", "PGSSLMODE").unwrap_or_else(|| "prefer".into());
    cfg.ssl_mode(match sslmode.as_str() {
        "disable" => SslMode::Disable,
        "allow" | "prefer" => SslMode::Prefer,
        "require" | "verify-ca" | "verify-full" => SslMode::Require,
        other => return Err(bad(format!("unknown sslmode `{other}`"))),
    });
    let client_cert = match (pick("sslcert", "PGSSLCERT"), pick("sslkey", "PGSSLKEY")) {
        (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
        (None, None) => None,
        _ => return Err(bad("`sslcert` and `sslkey` go together".into())),
    };
    Ok(Resolved {
        config: cfg,
        sslmode,
        root_cert: pick("sslrootcert", "PGSSLROOTCERT").map(PathBuf::from),
        client_cert,
    })
}

fn home(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    env("HOME").map(PathBuf::from)
}

/// libpq's default: the Unix socket directory when there is one.
fn default_host() -> String {
    ["/var/run/postgresql", "/tmp"]
        .into_iter()
        .find(|d| Path::new(d).join(".s.PGSQL.5432").exists())
        .unwrap_or("localhost")
        .to_string()
}

/// The `[name]` section of the first service file that has it.
fn service_entry(
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>> {
    let mut files: Vec<PathBuf> = Vec::new();
    files.extend(env("PGSERVICEFILE").map(PathBuf::from));
    files.extend(home(env).map(|h| h.join(".pg_service.conf")));
    files.extend(env("PGSYSCONFDIR").map(|d| PathBuf::from(d).join("pg_service.conf")));
    files.push(PathBuf::from("/etc/postgresql-common/pg_service.conf"));
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        if let Some(entry) = ini_section(&text, name) {
            return Ok(entry);
        }
    }
    Err(
        Error::config(format!("PostgreSQL service `{name}` is not defined")).with_hint(format!(
            "looked in {}; define [{name}] there or set PGSERVICEFILE",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    )
}

fn ini_section(text: &str, name: &str) -> Option<BTreeMap<String, String>> {
    let mut current: Option<&str> = None;
    let mut out: Option<BTreeMap<String, String>> = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(s.trim());
            if current == Some(name) {
                out.get_or_insert_with(BTreeMap::new);
            }
        } else if current == Some(name)
            && let Some((k, v)) = line.split_once('=')
        {
            out.get_or_insert_with(BTreeMap::new)
                .insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    out
}

/// The password for this connection in a `.pgpass` file
/// (`host:port:database:user:password`, `*` matches anything, `\` escapes).
/// Like libpq, a file that others can read is ignored (with a warning).
fn passfile_password(file: &Path, cfg: &tokio_postgres::Config) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(file)
            && m.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                "password file {} is readable by others: ignored (chmod 0600 it)",
                file.display()
            );
            return None;
        }
    }
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(_)) | None => "localhost".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432).to_string();
    let user = cfg.get_user().unwrap_or_default().to_string();
    let db = cfg
        .get_dbname()
        .map(str::to_string)
        .unwrap_or_else(|| user.clone());
    let want = [host, port, db, user];
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        let fields = pgpass_fields(line);
        if fields.len() == 5
            && fields[..4]
                .iter()
                .zip(&want)
                .all(|(f, w)| f == "*" || f == w)
        {
            return Some(fields[4].clone());
        }
    }
    None
}

fn pgpass_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields
                .last_mut()
                .map(|f| f.extend(chars.next()))
                .unwrap_or(()),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().map(|f| f.push(c)).unwrap_or(()),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn takes_libpq_only_keys_out_of_both_forms() {
        let (rest, t) = split(
            "postgresql://u@h:5/db?sslmode=verify-full&sslrootcert=%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(rest, "postgresql://u@h:5/db?application_name=x");
        assert_eq!(t["sslmode"], "verify-full");
        assert_eq!(t["sslrootcert"], "/ca.pem");
        // What is kept reaches tokio-postgres as written: `%20` a space,
        // `+` a plus (as to libpq).
        let (rest, t) =
            split("postgres://h/db?options=-c%20role%3Dr&sslmode=require&application_name=a+b")
                .unwrap();
        assert_eq!(
            rest,
            "postgres://h/db?options=-c%20role%3Dr&application_name=a+b"
        );
        assert_eq!(t["sslmode"], "require");
        let cfg: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(cfg.get_options(), Some("-c role=r"));
        assert_eq!(cfg.get_application_name(), Some("a+b"));
        let (rest, t) = split("host=h password='a b\\'c' sslcert=/c.pem sslkey = /k.pem").unwrap();
        assert_eq!(rest, "host='h' password='a b\\'c'");
        assert_eq!(t["sslcert"], "/c.pem");
        assert_eq!(t["sslkey"], "/k.pem");
        let cfg: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(cfg.get_password(), Some(&b"a b'c"[..]));
    }

    #[test]
    fn fills_what_the_dsn_leaves_out_from_service_env_and_passfile() {
        let dir = tempfile::tempdir().unwrap();
        let svc = dir.path().join("services.conf");
        std::fs::write(
            &svc,
            "# ours\n[archive]\nhost=db.example\nport=6543\ndbname=metrics\n[other]\nhost=x\n",
        )
        .unwrap();
        let pass = dir.path().join("pgpass");
        std::fs::write(
            &pass,
            "other:*:*:*:nope\ndb.example:6543:metrics:arch:s\\:cret\n",
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let (s, p) = (svc.display().to_string(), pass.display().to_string());
        let env = |k: &str| match k {
            "PGSERVICEFILE" => Some(s.clone()),
            "PGPASSFILE" => Some(p.clone()),
            "PGUSER" => Some("arch".to_string()),
            "PGSSLMODE" => Some("verify-full".to_string()),
            _ => None,
        };
        let r = resolve("service=archive", None, &env).unwrap();
        assert_eq!(r.config.get_hosts(), &[Host::Tcp("db.example".into())]);
        assert_eq!(r.config.get_ports(), &[6543]);
        assert_eq!(r.config.get_dbname(), Some("metrics"));
        assert_eq!(r.config.get_user(), Some("arch"));
        assert_eq!(r.config.get_password(), Some(&b"s:cret"[..]));
        assert_eq!(r.sslmode, "verify-full");
        let e = resolve("service=nope", None, &env).err().unwrap();
        assert!(e.to_string().contains("service `nope`"), "{e}");
        let r = resolve("host=h user=u password=x", Some("override"), &no_env).unwrap();
        assert_eq!(r.config.get_password(), Some(&b"override"[..]));
    }
}
