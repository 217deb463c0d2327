//! The crate's modules import no circle, and each layer stays ignorant of
//! the ones above it (ARCHITECTURE.md, "Layers").
//!
//! Reads every `src/**/*.rs`, collects its `crate::…`, `super::…`,
//! `self::…` and child-module references (comments left out), maps each
//! file to its node — a top-level module (a directory module with all its
//! files is one node), except under [`SPLIT`], where each file is its own
//! node — and fails naming a cycle if there is one. With `--nocapture` it
//! prints the layers: `cargo test -p keycard-server --test modules -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Directory modules whose files are nodes of their own.
const SPLIT: [&str; 1] = ["core"];

/// What a node must not reach, directly or not: `(node prefix, forbidden
/// node prefixes)`. A prefix ending in `/` matches that directory's files.
const MUST_NOT_KNOW: [(&str, &[&str]); 7] = [
    (
        "core/",
        &["conn", "actions", "http", "server", "outbox", "listener"],
    ),
    (
        "core",
        &["conn", "actions", "http", "server", "outbox", "listener"],
    ),
    ("caller", &["conn", "actions", "http", "server", "core"]),
    (
        "bouncer",
        &["conn", "actions", "http", "server", "caller", "core"],
    ),
    ("state", &["conn", "actions", "http", "server", "core"]),
    ("conn", &["actions", "http", "server", "core"]),
    ("listener", &["conn", "actions", "http", "server", "core"]),
];

/// One source file: its module path and its text without comments.
struct File {
    module: Vec<String>,
    is_mod: bool,
    text: String,
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The text without `//` and `/* */` comments (string literals kept).
fn strip_comments(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let mut in_str = false;
    while i < b.len() {
        let c = b[i];
        if in_str {
            // String contents are blanked: no path or brace in them counts.
            if c == b'\\' && i + 1 < b.len() {
                out.push_str("  ");
                i += 2;
                continue;
            }
            if c == b'"' {
                in_str = false;
                out.push('"');
            } else if c == b'\n' {
                out.push('\n');
            } else if !(0x80..0xc0).contains(&c) {
                out.push(' ');
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            // Not a char literal's quote ('"').
            let char_lit = i > 0 && b[i - 1] == b'\'' && b.get(i + 1) == Some(&b'\'');
            in_str = !char_lit;
            out.push('"');
            i += 1;
        } else if src[i..].starts_with("//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if src[i..].starts_with("/*") {
            let end = src[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            i = end;
        } else {
            // Keep multi-byte characters whole.
            let ch = src[i..].chars().next().expect("a char");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out.replace("'{'", "' '").replace("'}'", "' '")
}

/// How many inline modules (`mod tests { … }`) enclose each byte of `t`.
fn inline_depths(t: &str) -> Vec<usize> {
    let mut depths = Vec::with_capacity(t.len());
    let mut braces = 0usize;
    // The brace depth inside each open inline module.
    let mut open: Vec<usize> = Vec::new();
    let mut pending_mod = false;
    let b = t.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if t[i..].starts_with("mod ") && (i == 0 || !is_ident(b[i - 1] as char)) {
            let rest = t[i + 4..].trim_start();
            let name_end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
            pending_mod = rest[name_end..].trim_start().starts_with('{');
        }
        match c {
            b'{' => {
                braces += 1;
                if pending_mod {
                    open.push(braces);
                    pending_mod = false;
                }
            }
            b'}' => {
                if open.last() == Some(&braces) {
                    open.pop();
                }
                braces = braces.saturating_sub(1);
            }
            b';' => pending_mod = false,
            _ => {}
        }
        depths.push(open.len());
    }
    depths
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths a use tree or path starting at `s` names, as segment lists
/// (`a::{b, c::d}` → `[a, b]`, `[a, c, d]`).
fn expand(s: &str) -> Vec<Vec<String>> {
    let s = s.trim_start();
    if let Some(rest) = s.strip_prefix('{') {
        let mut depth = 0;
        let mut items = Vec::new();
        let mut start = 0;
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    items.push(&rest[start..i]);
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&rest[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return items
            .into_iter()
            .filter(|i| !i.trim().is_empty())
            .flat_map(expand)
            .collect();
    }
    let end = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
    let ident = &s[..end];
    if ident.is_empty() {
        return vec![Vec::new()];
    }
    let rest = &s[end..];
    match rest.strip_prefix("::") {
        Some(more) => expand(more)
            .into_iter()
            .map(|mut p| {
                p.insert(0, ident.to_owned());
                p
            })
            .collect(),
        None => vec![vec![ident.to_owned()]],
    }
}

/// Where each reference in `file` points, as absolute segment lists.
fn references(file: &File, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let t = &file.text;
    let mut out = Vec::new();
    let depths = inline_depths(t);
    for (at, _) in t.match_indices("::") {
        // Inside `mod tests { … }`, `super` is the file's module and
        // `self` the inline one (whose items are the file's node too).
        let inline = depths.get(at).copied().unwrap_or(0);
        let own: Vec<String> = file
            .module
            .iter()
            .cloned()
            .chain((0..inline).map(|_| String::new()))
            .collect();
        let own = &own;
        // The identifier before `::`, which must start a path.
        let before = &t[..at];
        let start = before.rfind(|c: char| !is_ident(c)).map_or(0, |i| i + 1);
        let head = &before[start..];
        let prev = before[..start].chars().last();
        if head.is_empty() || prev == Some(':') {
            continue;
        }
        let base: Vec<String> = match head {
            "crate" => Vec::new(),
            "self" => own.clone(),
            "super" => {
                let mut m = own.clone();
                let mut rest = &t[at + 2..];
                m.pop();
                while let Some(r) = rest.strip_prefix("super::") {
                    m.pop();
                    rest = r;
                }
                m
            }
            child if file.is_mod && children.contains(child) => {
                let mut m = own.clone();
                m.push(child.to_owned());
                m
            }
            _ => continue,
        };
        let mut rest = &t[at + 2..];
        while let Some(r) = rest.strip_prefix("super::") {
            rest = r;
        }
        for tail in expand(rest) {
            let mut p: Vec<String> = base.iter().filter(|s| !s.is_empty()).cloned().collect();
            if base.iter().any(String::is_empty) {
                // Within an inline module: its own items, the file's node.
                p = file.module.clone();
            }
            p.extend(tail.into_iter().filter(|s| s != "self"));
            out.push(p);
        }
    }
    out
}

/// The node a module path belongs to.
fn node_of(module: &[String]) -> String {
    match module {
        [] => "lib".to_owned(),
        [top, file, ..] if SPLIT.contains(&top.as_str()) => format!("{top}/{file}"),
        [top, ..] => top.clone(),
    }
}

/// Every node and the nodes it refers to.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rs_files(&src, &mut paths);
    let mut files = Vec::new();
    let mut modules: BTreeSet<Vec<String>> = BTreeSet::new();
    for p in &paths {
        let rel = p.strip_prefix(&src).expect("under src");
        let mut module: Vec<String> = rel
            .iter()
            .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_owned())
            .collect();
        let is_mod = matches!(module.last().map(String::as_str), Some("mod" | "lib"));
        if is_mod {
            module.pop();
        }
        modules.insert(module.clone());
        let text = strip_comments(&std::fs::read_to_string(p).expect("read a source file"));
        files.push(File {
            module,
            is_mod,
            text,
        });
    }
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let from = node_of(&f.module);
        let children: BTreeSet<String> = modules
            .iter()
            .filter(|m| m.len() == f.module.len() + 1 && m.starts_with(&f.module))
            .filter_map(|m| m.last().cloned())
            .collect();
        let deps = g.entry(from.clone()).or_default();
        for r in references(f, &children) {
            // The longest prefix that is a module: the rest are items.
            let module = (0..=r.len())
                .rev()
                .map(|n| &r[..n])
                .find(|m| modules.contains(*m))
                .unwrap_or(&[]);
            let to = node_of(module);
            if to != from {
                deps.insert(to);
            }
        }
    }
    g
}

/// A cycle, if the graph has one.
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(n.to_owned(), Mark::Open);
        stack.push(n.to_owned());
        for d in g.get(n).into_iter().flatten() {
            match marks.get(d.as_str()).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let from = stack.iter().position(|s| s == d).expect("on the stack");
                    let mut c = stack[from..].to_vec();
                    c.push(d.clone());
                    return Some(c);
                }
                Mark::New => {
                    if let Some(c) = visit(d, g, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(n.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in g.keys() {
        if marks.get(n.as_str()).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(c) = visit(n, g, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// Each node's layer: 0 for a node that refers to none, else one above
/// the highest it refers to (the graph has no cycle).
fn layers(g: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, usize> {
    fn layer(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        memo: &mut BTreeMap<String, usize>,
    ) -> usize {
        if let Some(l) = memo.get(n) {
            return *l;
        }
        let l = g
            .get(n)
            .into_iter()
            .flatten()
            .map(|d| layer(d, g, memo) + 1)
            .max()
            .unwrap_or(0);
        memo.insert(n.to_owned(), l);
        l
    }
    let mut memo = BTreeMap::new();
    for n in g.keys() {
        layer(n, g, &mut memo);
    }
    memo
}

/// Everything `n` reaches.
fn reach(g: &BTreeMap<String, BTreeSet<String>>, n: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![n.to_owned()];
    while let Some(x) = todo.pop() {
        for d in g.get(&x).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

fn matches(node: &str, prefix: &str) -> bool {
    match prefix.strip_suffix('/') {
        Some(dir) => node.starts_with(&format!("{dir}/")),
        None => node == prefix,
    }
}

#[test]
fn no_import_circle() {
    let g = graph();
    if let Some(c) = cycle(&g) {
        panic!("import circle in crates/server: {}", c.join(" -> "));
    }
    let layers = layers(&g);
    let mut by_layer: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for (n, l) in &layers {
        by_layer.entry(*l).or_default().push(n);
    }
    println!("crates/server, bottom layer first (a node uses only layers below it):");
    for (l, nodes) in &by_layer {
        println!("  {l}: {}", nodes.join(", "));
    }
    println!("edges:");
    for (n, deps) in &g {
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        println!("  {n} -> {}", deps.join(", "));
    }
}

#[test]
fn layers_do_not_know_what_is_above_them() {
    let g = graph();
    let mut wrong = Vec::new();
    for n in g.keys() {
        let reached = reach(&g, n);
        for (prefix, forbidden) in MUST_NOT_KNOW {
            if !matches(n, prefix) {
                continue;
            }
            for f in forbidden {
                for r in reached
                    .iter()
                    .filter(|r| matches(r, f) || matches(r, &format!("{f}/")))
                {
                    wrong.push(format!("{n} reaches {r}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken: {}", wrong.join("; "));
}

/// The reader sees references of every form it claims to (so a test that
/// passes is not one that saw nothing).
#[test]
fn the_reader_sees_references() {
    let g = graph();
    let has = |a: &str, b: &str| g.get(a).is_some_and(|d| d.contains(b));
    // `use crate::state::ServerState;` and a path in an expression.
    assert!(has("server", "state"), "{g:?}");
    assert!(has("conn", "outbox"), "{g:?}");
    // A `use crate::{…}` group and `super::` from a directory's file.
    let children = BTreeSet::new();
    let f = File {
        module: vec!["actions".into(), "data".into()],
        is_mod: false,
        text: strip_comments(
            "use super::{flag, rank::Rank};\nuse crate::{a::B, c}; // crate::d\nfn f() { crate::e::g(); }",
        ),
    };
    let refs = references(&f, &children);
    let want: Vec<Vec<String>> = [
        vec!["actions", "flag"],
        vec!["actions", "rank", "Rank"],
        vec!["a", "B"],
        vec!["c"],
        vec!["e", "g"],
    ]
    .iter()
    .map(|p| p.iter().map(|s| s.to_string()).collect())
    .collect();
    assert_eq!(refs, want);
}
