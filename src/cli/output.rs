//! Rendering: aligned text tables and JSON on stdout, errors on stderr.
//! Everything printed passes through [`crate::secret::redact`].

use std::io::Write;

use serde::Serialize;

use crate::error::Error;
use crate::secret::redact;

/// Prints `value` as pretty JSON on stdout.
pub fn json<T: Serialize>(value: &T) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::internal(format!("cannot render JSON: {e}")))?;
    line(&text);
    Ok(())
}

/// Prints one line on stdout (ignores a closed pipe).
pub fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", redact(text));
}

/// Prints an aligned table on stdout.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let fmt = |cells: Vec<String>| -> String {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let w = widths.get(i).copied().unwrap_or(0);
                let pad = w.saturating_sub(c.chars().count());
                if i + 1 == cells.len() {
                    c.clone()
                } else {
                    format!("{c}{}", " ".repeat(pad))
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    line(&fmt(headers.iter().map(|h| h.to_string()).collect()));
    line(&fmt(widths.iter().map(|w| "-".repeat(*w)).collect()));
    for r in rows {
        line(&fmt(r.clone()));
    }
}

/// Prints an error: `error: …`, its context, and `hint: …`.
pub fn error(e: &Error) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "error: {}", redact(&e.to_string()));
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let text = redact(&s.to_string());
        if !e.message().contains(&text) {
            let _ = writeln!(err, "  caused by: {text}");
        }
        src = s.source();
    }
    if let Some(h) = e.hint() {
        let _ = writeln!(err, "hint: {}", redact(h));
    }
}

/// Thousands separators: 1234567 → 1,234,567.
pub fn num(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Human sizes: 1.5 MiB.
pub fn bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands() {
        assert_eq!(super::num(0), "0");
        assert_eq!(super::num(999), "999");
        assert_eq!(super::num(1234567), "1,234,567");
        assert_eq!(super::bytes(512), "512 B");
        assert_eq!(super::bytes(1536), "1.5 KiB");
    }
}
