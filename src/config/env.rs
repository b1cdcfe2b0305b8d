//! `${VAR}` expansion of the configuration's values, before they are read.

use crate::error::{Error, Result};

/// Expands every string value of `doc` in place (see [`expand_env`]) and
/// turns numbers and booleans into their text; errors name the key
/// (`database.dsn`).
pub(super) fn expand_values(
    doc: &mut serde_norway::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<()> {
    use serde_norway::Value;
    match doc {
        Value::String(s) if s.contains('$') => {
            *s = expand_env(s, env).map_err(|e| {
                let key = if path.is_empty() { "config" } else { path };
                e.prefixed(format!("`{key}`"))
            })?;
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                expand_values(v, &format!("{path}[{i}]"), env)?;
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let name = match k {
                    Value::String(k) => k.clone(),
                    other => format!("{other:?}"),
                };
                let p = if path.is_empty() {
                    name
                } else {
                    format!("{path}.{name}")
                };
                expand_values(v, &p, env)?;
            }
        }
        Value::Tagged(t) => expand_values(&mut t.value, path, env)?,
        // Every scalar is read as text, as the YAML text was before: string
        // keys take `0` or `true`, and numeric keys parse their text.
        Value::Number(n) => *doc = Value::String(n.to_string()),
        Value::Bool(b) => *doc = Value::String(b.to_string()),
        _ => {}
    }
    Ok(())
}

/// Expands `${VAR}`, `${VAR:-default}` and `${VAR:=default}` in one value;
/// `$${` is a literal `${`.
pub fn expand_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(r) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = r;
            continue;
        }
        if !after.starts_with("${") {
            out.push('$');
            rest = &after[1..];
            continue;
        }
        let Some(end) = after.find('}') else {
            return Err(Error::config(
                "unterminated `${` (write `$${` for a literal `${`)",
            ));
        };
        let inner = &after[2..end];
        let (name, default) = if let Some((n, d)) = inner.split_once(":-") {
            (n, Some(d))
        } else if let Some((n, d)) = inner.split_once(":=") {
            (n, Some(d))
        } else {
            (inner, None)
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::config(format!(
                "`${{{inner}}}` is not a valid variable reference"
            )));
        }
        match (env(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(
                    Error::config(format!("environment variable {name} is not set")).with_hint(
                        format!("export {name}=…, or write ${{{name}:-default}} in the config"),
                    ),
                );
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
