//! `permafrost demo`: the whole flow on one machine with nothing configured.
//!
//! Starts a throwaway PostgreSQL cluster in a temporary directory (unless a
//! DSN is given), loads sample sensor readings (`schemas/sample.sql`),
//! archives them into the embedded catalog (SQLite + local warehouse under
//! `--dir`), prints status and snapshots, and prints commands that read the
//! archive with PyIceberg and DuckDB.  The throwaway cluster is removed at the end.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, ErrorKind, Result};

/// SQL of the sample tables.
pub const SAMPLE_SCHEMA: &str = include_str!("../schemas/sample.sql");
/// SQL generating sample rows; `:rows` is replaced by the row count.
pub const SAMPLE_DATA: &str = include_str!("../schemas/sample-data.sql");

/// A PostgreSQL cluster in a temporary directory, stopped and removed on drop.
pub struct ThrowawayPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    run_as: Option<String>,
    port: u16,
}

fn find_pg_bin() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("initdb").exists() {
            return Some(p);
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> Result<u16> {
    let l =
        TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("cannot find a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| Error::io("cannot find a free port", e))?
        .port())
}

impl ThrowawayPostgres {
    /// initdb + start on a free loopback port.  As root, runs the server as
    /// the `postgres` user (PostgreSQL refuses to run as root).
    pub fn start() -> Result<Self> {
        let bin = find_pg_bin().ok_or_else(|| {
            Error::new(
                ErrorKind::Io,
                "PostgreSQL server binaries (initdb, pg_ctl) not found",
            )
            .with_hint(
                "install them (apt-get install postgresql) or pass --dsn to use a running server",
            )
        })?;
        let dir = tempfile::Builder::new()
            .prefix("permafrost-pg-")
            .tempdir()
            .map_err(|e| Error::io("cannot create a temporary directory", e))?;
        let run_as = if is_root() {
            let ok = Command::new("id")
                .arg("-u")
                .arg("postgres")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if !ok {
                return Err(Error::new(
                    ErrorKind::Io,
                    "running as root and there is no `postgres` user to run the server",
                )
                .with_hint("create one (useradd postgres), run as another user, or pass --dsn"));
            }
            let st = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .map_err(|e| Error::io("cannot run chown", e))?;
            if !st.success() {
                return Err(Error::new(
                    ErrorKind::Io,
                    "cannot hand the temporary directory to the postgres user",
                ));
            }
            Some("postgres".to_string())
        } else {
            None
        };
        let port = free_port()?;
        let me = Self {
            dir,
            bin,
            run_as,
            port,
        };
        let data = me.dir.path().join("data");
        me.run(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
        )?;
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            me.dir.path().display()
        );
        let log = me.dir.path().join("postgres.log");
        me.run(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-w",
                "-t",
                "60",
                "-l",
                &log.to_string_lossy(),
                "-o",
                &opts,
                "start",
            ],
        )?;
        Ok(me)
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<()> {
        let exe = self.bin.join(tool);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(args).current_dir(self.dir.path());
        let out = cmd
            .output()
            .map_err(|e| Error::io(format!("cannot run {tool}"), e))?;
        if !out.status.success() {
            let msg = String::from_utf8_lossy(&out.stderr);
            return Err(Error::new(
                ErrorKind::Io,
                format!("{tool} failed: {}", msg.trim().lines().last().unwrap_or("")),
            ));
        }
        Ok(())
    }

    /// DSN of the `postgres` database.
    pub fn dsn(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

/// Creates the sample tables and loads `rows` sensor readings (and a tenth as many events).
pub async fn load_sample(client: &tokio_postgres::Client, rows: u64) -> Result<()> {
    client
        .batch_execute(SAMPLE_SCHEMA)
        .await
        .map_err(|e| Error::postgres("cannot create the sample tables", e))?;
    let data = SAMPLE_DATA.replace(":rows", &rows.max(10).to_string());
    client
        .batch_execute(&data)
        .await
        .map_err(|e| Error::postgres("cannot load the sample rows", e))?;
    client
        .batch_execute("ANALYZE public.sensor_readings; ANALYZE public.device_events;")
        .await
        .map_err(|e| Error::postgres("cannot analyze the sample tables", e))?;
    Ok(())
}

/// The configuration the demo writes next to its catalog.
pub fn demo_config(dsn: &str) -> String {
    format!(
        "# Written by `permafrost demo`. No `catalog` section: the embedded SQLite\n\
         # catalog and warehouse live in ./permafrost/ next to this file.\n\
         database:\n  dsn: \"{dsn}\"\n\
         tables:\n\
         \x20 - name: sensor_readings\n    timestamp_column: recorded_at\n    partition_by: day\n    lag: 15d\n\
         \x20 - name: device_events\n    timestamp_column: occurred_at\n    partition_by: hour\n    lag: 7d\n"
    )
}

/// Absolute path of `p`.
pub fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir()
        .map_err(|e| Error::io("cannot read the current directory", e))?
        .join(p))
}
