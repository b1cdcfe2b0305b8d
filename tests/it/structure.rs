//! Structure facts of `src/`, checked on every test run (no services needed):
//! no import circles between files, and no function over 120 lines except
//! the ones listed (each with its reason, also in the README's
//! "Repository layout").
//!
//! Imports are read from the source text: `use` statements (with their
//! braces expanded) and inline `crate::…` / `super::…` paths, resolved to the
//! file that defines the module.  A file using its own ancestors (`super::`,
//! the crate root's re-exports) is not counted: Rust modules hand names down
//! that way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::common::source_dir;

/// Functions allowed over the limit, with the reason; the test fails when one
/// is missing (it got shorter: take it off) or another appears.
const LONG_FUNCTIONS: &[(&str, &str)] = &[
    (
        "metrics.rs::new",
        "one registration per metric, a flat list that reads best whole",
    ),
    (
        "filter.rs::to_predicate",
        "three nested helpers (column type, literal, walk); the body itself is three lines",
    ),
];

const LIMIT: usize = 120;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are module `a::b`; `src/lib.rs` is the root.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The code of a file without its `#[cfg(test)]` module and comments.
fn code(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        if l.trim() == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod tests"))
        {
            break;
        }
        let l = l.split("//").next().unwrap_or_default();
        out.push(l.to_string());
    }
    out
}

/// Every path a file names: `use` trees expanded, plus inline paths.
fn paths(lines: &[String]) -> Vec<String> {
    let text = lines.join("\n");
    let mut found = vec![];
    // `use` statements, braces expanded (nested ones too).
    for stmt in text.split(';') {
        let s = stmt.trim();
        let Some(pos) = s.find("use ") else { continue };
        if !(pos == 0 || s[..pos].trim().ends_with(')') || s[..pos].trim() == "pub") {
            continue;
        }
        let tree: String = s[pos + 4..].split_whitespace().collect();
        expand("", &tree, &mut found);
    }
    // Inline paths.
    for root in ["crate::", "super::"] {
        let mut rest = text.as_str();
        while let Some(i) = rest.find(root) {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            found.push(tail[..end].trim_end_matches(':').to_string());
            rest = &tail[end..];
        }
    }
    found
}

fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    match tree.find('{') {
        None => {
            for item in tree.split(',').filter(|s| !s.is_empty()) {
                let item = item.split("as").next().unwrap_or(item);
                out.push(format!("{prefix}{item}"));
            }
        }
        Some(open) => {
            let head = &tree[..open];
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            // Split `inner` on top-level commas.
            let (mut depth, mut start) = (0, 0);
            let bytes = inner.as_bytes();
            for (i, b) in bytes.iter().enumerate() {
                match b {
                    b'{' => depth += 1,
                    b'}' => depth -= 1,
                    b',' if depth == 0 => {
                        expand(&format!("{prefix}{head}"), &inner[start..i], out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            expand(&format!("{prefix}{head}"), &inner[start..], out);
        }
    }
}

/// The file a path names: its longest prefix that is a module of ours.
fn resolve(
    path: &str,
    from: &[String],
    modules: &BTreeMap<Vec<String>, PathBuf>,
) -> Option<PathBuf> {
    let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<String> = match segs.first() {
        Some(&"crate") => {
            segs.remove(0);
            vec![]
        }
        Some(&"super") => {
            // `super` of `a::b` (file a/b.rs) is `a`; of a dir module a/b/mod.rs also `a`.
            let mut b = from.to_vec();
            while segs.first() == Some(&"super") {
                segs.remove(0);
                b.pop();
            }
            b
        }
        Some(&"self") => {
            segs.remove(0);
            from.to_vec()
        }
        _ => return None,
    };
    let mut best = modules.get(&base).cloned();
    for s in segs {
        if s == "self" {
            continue;
        }
        base.push(s.to_string());
        match modules.get(&base) {
            Some(f) => best = Some(f.clone()),
            None => break,
        }
    }
    best
}

#[test]
fn src_has_no_import_circles() {
    let src = source_dir().join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    files.retain(|f| !f.ends_with("main.rs"));
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .map(|f| (module_of(&src, f), f.clone()))
        .collect();
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for f in &files {
        let module = module_of(&src, f);
        let text = std::fs::read_to_string(f).expect("read");
        for p in paths(&code(&text)) {
            let Some(to) = resolve(&p, &module, &modules) else {
                continue;
            };
            let target = module_of(&src, &to);
            // Ancestors hand names down; a module is not its own import.
            if module.starts_with(&target) {
                continue;
            }
            edges.entry(f.clone()).or_default().insert(to);
        }
    }
    let circles = strongly_connected(&edges);
    let described: Vec<String> = circles
        .iter()
        .map(|c| {
            let names: Vec<String> = c
                .iter()
                .map(|f| f.strip_prefix(&src).unwrap_or(f).display().to_string())
                .collect();
            let ties: Vec<String> = c
                .iter()
                .flat_map(|a| {
                    edges
                        .get(a)
                        .into_iter()
                        .flatten()
                        .filter(|b| c.contains(b))
                        .map(move |b| format!("{} -> {}", a.display(), b.display()))
                })
                .collect();
            format!("{names:?}: {ties:?}")
        })
        .collect();
    assert!(
        described.is_empty(),
        "import circles in src/: {described:#?}"
    );
    assert!(
        edges.len() > 20,
        "the reader found the imports: {}",
        edges.len()
    );
}

/// Tarjan's strongly connected components with more than one file.
fn strongly_connected(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct T<'a> {
        edges: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<PathBuf, usize>,
        low: BTreeMap<PathBuf, usize>,
        stack: Vec<PathBuf>,
        on: BTreeSet<PathBuf>,
        next: usize,
        out: Vec<Vec<PathBuf>>,
    }
    fn visit(t: &mut T, v: &PathBuf) {
        t.index.insert(v.clone(), t.next);
        t.low.insert(v.clone(), t.next);
        t.next += 1;
        t.stack.push(v.clone());
        t.on.insert(v.clone());
        let succ: Vec<PathBuf> = t.edges.get(v).into_iter().flatten().cloned().collect();
        for w in succ {
            if !t.index.contains_key(&w) {
                visit(t, &w);
                let lw = t.low[&w];
                let lv = t.low[v];
                t.low.insert(v.clone(), lv.min(lw));
            } else if t.on.contains(&w) {
                let iw = t.index[&w];
                let lv = t.low[v];
                t.low.insert(v.clone(), lv.min(iw));
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = vec![];
            while let Some(w) = t.stack.pop() {
                t.on.remove(&w);
                let done = &w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: vec![],
        on: BTreeSet::new(),
        next: 0,
        out: vec![],
    };
    let nodes: Vec<PathBuf> = edges.keys().cloned().collect();
    for v in &nodes {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn the_circle_finder_finds_circles() {
    let e = |a: &str, b: &[&str]| (PathBuf::from(a), b.iter().map(PathBuf::from).collect());
    let edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = [
        e("a", &["b"]),
        e("b", &["c"]),
        e("c", &["a", "d"]),
        e("d", &[]),
    ]
    .into_iter()
    .collect();
    let found = strongly_connected(&edges);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].len(), 3, "{found:?}");
    let mut tree = vec![];
    expand("", "crate::lake::{self,table::{ident,X},commit}", &mut tree);
    assert_eq!(
        tree,
        vec![
            "crate::lake::self",
            "crate::lake::table::ident",
            "crate::lake::table::X",
            "crate::lake::commit"
        ]
    );
}

#[test]
fn no_function_is_over_120_lines_but_the_listed_ones() {
    let src = source_dir().join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    let mut long: Vec<(String, usize)> = vec![];
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        let lines = code(&text);
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            let indent = &l[..l.len() - t.len()];
            let head = t
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub(super) ")
                .trim_start_matches("pub ")
                .trim_start_matches("const ")
                .trim_start_matches("async ");
            let Some(name) = head.strip_prefix("fn ") else {
                continue;
            };
            let name: String = name
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            // rustfmt closes a function at its own indentation.
            let close = format!("{indent}}}");
            let Some(end) = lines[i..].iter().position(|x| x == &close) else {
                continue;
            };
            if end + 1 > LIMIT {
                let rel = f.strip_prefix(&src).unwrap_or(f).display().to_string();
                long.push((format!("{rel}::{name}"), end + 1));
            }
        }
    }
    let found: BTreeSet<&str> = long.iter().map(|(n, _)| n.as_str()).collect();
    let allowed: BTreeSet<&str> = LONG_FUNCTIONS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        found, allowed,
        "functions over {LIMIT} lines (name, lines): {long:#?}; list an exception with its reason in LONG_FUNCTIONS and the README"
    );
}
