//! Secrets never leave the process in clear.
//!
//! Every secret value read from the configuration (DSN password, catalog
//! credential or token, S3 keys) is registered here when it is read.  All text
//! the program prints — error lines, log lines, `--json` documents — passes
//! through [`redact`], which replaces each registered secret by `***`.  This is
//! a safety net: code also avoids putting secrets into messages at all.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

fn registry() -> &'static Mutex<Vec<String>> {
    static SECRETS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Remembers `value` as secret. Values shorter than 4 characters are ignored
/// (masking them would garble ordinary text).
pub fn register(value: impl Into<String>) {
    let value = value.into();
    if value.len() < 4 {
        return;
    }
    let mut guard = registry().lock().unwrap_or_else(|p| p.into_inner());
    if !guard.contains(&value) {
        guard.push(value);
        // Longest first, so a secret containing another is masked whole.
        guard.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// `text` with every registered secret replaced by `***`.
pub fn redact(text: &str) -> String {
    let guard = registry().lock().unwrap_or_else(|p| p.into_inner());
    let mut out = text.to_string();
    for s in guard.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

/// A writer for `tracing_subscriber` that redacts every line it writes to stderr.
#[derive(Clone, Copy, Default)]
pub struct RedactingStderr;

impl Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingStderr;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingStderr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_registered_values() {
        register("abc");
        register("super-secret-1");
        register("super-secret-1-longer");
        assert_eq!(
            redact("x super-secret-1-longer y super-secret-1 abc"),
            "x *** y *** abc"
        );
    }
}
