//! Durations as the configuration and the flags write them.

use std::time::Duration;

/// Parses `15d`, `6h`, `30m`, `10s`, `2w`, `1d12h`, `500ms`.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("`{s}` is not a duration like 15d, 6h, 30m or 10s"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{s}`: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs = match unit {
            "ms" => {
                total += Duration::from_millis(n);
                continue;
            }
            "s" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            "d" => 86400,
            "w" => 7 * 86400,
            "" => return Err(format!("`{s}`: missing unit (s, m, h, d or w)")),
            u => return Err(format!("`{s}`: unknown unit `{u}` (use s, m, h, d or w)")),
        };
        total += Duration::from_secs(
            n.checked_mul(secs)
                .ok_or_else(|| format!("`{s}` is too long"))?,
        );
    }
    Ok(total)
}
