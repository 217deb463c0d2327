//! The repository stands alone: what its code comments and documents cite
//! is in it. Over every tracked text file:
//!
//! - a `DESIGN §N` reference names a section of docs/DESIGN.md (a heading,
//!   or an item of a numbered list in a section without subsections, as
//!   §7.10 is);
//! - a lesson `Wn` is one of those DESIGN §8.2 lists;
//! - a `docs/NAME.EXT` file named, and a relative link of a document,
//!   exists;
//! - nothing points into the folder beside the repository, to reference
//!   notes or seeds kept outside it, or to an issue (issues are not in
//!   the repository: say what the issue said instead). The one exception
//!   is the path of the DistKV launcher the benchmarks run, which CI puts
//!   beside the repository (README.md, "Documents").
//!
//! And every property of DESIGN §7 names tests that exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The one path outside the repository that files may name.
const LAUNCHER: &str = "../shared/tools/distkv-serve.py";

/// This file: it spells out what it looks for, so it is not scanned (its
/// scanners have a test of their own).
const SELF: &str = "crates/keycard/tests/docs.rs";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether `rel` is a text file worth reading (no lock files, no fuzz
/// corpora, no images).
fn is_text(rel: &str) -> bool {
    if rel.ends_with("package-lock.json") || rel.starts_with("fuzz/corpus") {
        return false;
    }
    let ext = rel.rsplit_once('.').map_or("", |(_, e)| e);
    matches!(
        ext,
        "rs" | "md" | "py" | "mjs" | "js" | "sh" | "toml" | "json" | "html" | "yml" | "yaml"
    ) || rel.starts_with(".ci/")
        || rel.starts_with("scripts/")
}

/// The repository's files, relative to its root: git's list when git
/// knows the tree, else a walk that leaves out what .gitignore does.
fn files() -> Vec<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root())
        .args(["ls-files", "-z"])
        .output();
    if let Ok(out) = out {
        if out.status.success() && !out.stdout.is_empty() {
            return out
                .stdout
                .split(|&b| b == 0)
                .filter(|p| !p.is_empty())
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
        }
    }
    let mut found = Vec::new();
    walk(&root(), "", &mut found);
    found
}

fn walk(dir: &Path, rel: &str, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let skipped = matches!(
            name.as_str(),
            ".git" | "target" | "node_modules" | ".hypothesis" | "keycard-data" | "data"
        ) || name.starts_with(".venv");
        if skipped {
            continue;
        }
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&entry.path(), &path, found),
            Ok(t) if t.is_file() => found.push(path),
            _ => {}
        }
    }
}

/// Every text file and its contents.
fn texts() -> Vec<(String, String)> {
    files()
        .into_iter()
        .filter(|f| is_text(f))
        .filter_map(|f| {
            let text = std::fs::read_to_string(root().join(&f)).ok()?;
            Some((f, text))
        })
        .collect()
}

fn line_of(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count() + 1
}

/// A section number at the start of `s` (`7`, `2.1`, `7.10`; a trailing
/// dot is the sentence's), and its length.
fn number(s: &str) -> Option<(String, usize)> {
    let mut end = 0;
    let b = s.as_bytes();
    while end < b.len() && (b[end].is_ascii_digit() || b[end] == b'.') {
        end += 1;
    }
    let n = s[..end].trim_end_matches('.');
    if n.is_empty() || !n.as_bytes()[0].is_ascii_digit() {
        return None;
    }
    Some((n.to_owned(), n.len()))
}

/// The sections of docs/DESIGN.md: its numbered headings, and the items
/// of numbered lists in a top-level section that has no subsections.
fn sections(design: &str) -> BTreeSet<String> {
    let mut heads = BTreeSet::new();
    let mut items: Vec<(String, String)> = Vec::new();
    let mut top: Option<String> = None;
    for line in design.lines() {
        if let Some(rest) = line.strip_prefix("## ") {
            top = number(rest).map(|(n, _)| n);
            if let Some(n) = &top {
                heads.insert(n.clone());
            }
        } else if let Some(rest) = line.strip_prefix("### ") {
            if let Some((n, _)) = number(rest) {
                heads.insert(n);
            }
        } else if let (Some(t), Some((k, len))) = (&top, number(line)) {
            if line[len..].starts_with(". ") && !k.contains('.') {
                items.push((t.clone(), format!("{t}.{k}")));
            }
        }
    }
    let headed = heads.clone();
    for (top, item) in items {
        let has_subsections = headed.iter().any(|h| h.starts_with(&format!("{top}.")));
        if !has_subsections {
            heads.insert(item);
        }
    }
    heads
}

/// Every `DESIGN §N` reference in `text` (lists included: `DESIGN §1 and
/// §7.4, 7.7`), with its byte offset. `DESIGN.md §N` counts too; a `§`
/// followed by no number is a placeholder, not a reference.
fn design_refs(text: &str) -> Vec<(usize, String)> {
    let mut refs = Vec::new();
    for (at, _) in text.match_indices("DESIGN") {
        let mut rest = &text[at + "DESIGN".len()..];
        rest = rest.strip_prefix(".md").unwrap_or(rest);
        // A reference may wrap onto the next comment line.
        let gap = rest
            .char_indices()
            .take_while(|&(i, c)| i < 24 && " \t\r\n/!#*>".contains(c))
            .last()
            .map_or(0, |(i, c)| i + c.len_utf8());
        rest = &rest[gap..];
        let Some(mut s) = rest.strip_prefix('§') else {
            continue;
        };
        while let Some((n, len)) = number(s) {
            refs.push((at, n));
            s = &s[len..];
            let next = s.trim_start_matches([',', ' ']);
            let next = next.strip_prefix("and ").unwrap_or(next);
            s = next.strip_prefix('§').unwrap_or(next);
        }
    }
    refs
}

/// The lessons `Wn` that DESIGN §8.2 lists (`- **Wn — …`).
fn lessons(design: &str) -> BTreeSet<u32> {
    design
        .lines()
        .filter_map(|l| l.strip_prefix("- **W"))
        .filter_map(|l| {
            let digits: String = l.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// Every `Wn` cited in `text` (a capital W, one or two digits, standing
/// alone), with its byte offset.
fn lesson_refs(text: &str) -> Vec<(usize, u32)> {
    let b = text.as_bytes();
    let mut refs = Vec::new();
    for (at, _) in text.match_indices('W') {
        let before_ok =
            at == 0 || !(b[at - 1].is_ascii_alphanumeric() || b"_-+/=".contains(&b[at - 1]));
        let digits: String = text[at + 1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let after = at + 1 + digits.len();
        let after_ok = after >= b.len() || !(b[after].is_ascii_alphanumeric() || b[after] == b'_');
        if before_ok && after_ok && (1..=2).contains(&digits.len()) {
            if let Ok(n) = digits.parse() {
                refs.push((at, n));
            }
        }
    }
    refs
}

/// `docs/NAME.EXT` mentions in `text`, with their offsets.
fn doc_files(text: &str) -> Vec<(usize, String)> {
    let b = text.as_bytes();
    let mut found = Vec::new();
    for (at, _) in text.match_indices("docs/") {
        if at > 0 && (b[at - 1].is_ascii_alphanumeric() || b"/._-".contains(&b[at - 1])) {
            continue;
        }
        let name: String = text[at + 5..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || "_.-".contains(*c))
            .collect();
        let name = name.trim_end_matches('.');
        if name.contains('.') {
            found.push((at, format!("docs/{name}")));
        }
    }
    found
}

/// Relative Markdown links (`[text](target)`) of a document.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices("](") {
        let target: String = text[at + 2..].chars().take_while(|&c| c != ')').collect();
        let target = target.split('#').next().unwrap_or("").to_owned();
        if !target.is_empty() && !target.contains("://") && !target.contains(' ') {
            found.push((at, target));
        }
    }
    found
}

/// `issue 15`, `issues 8`, `Issue #3`: a reference to an issue.
fn issue_refs(text: &str) -> Vec<usize> {
    let lower = text.to_ascii_lowercase();
    let mut found = Vec::new();
    for (at, _) in lower.match_indices("issue") {
        let b = lower.as_bytes();
        if at > 0 && b[at - 1].is_ascii_alphabetic() {
            continue;
        }
        let rest = &lower[at + 5..];
        let rest = rest.strip_prefix('s').unwrap_or(rest);
        let rest = rest.strip_prefix(' ').unwrap_or("");
        let rest = rest.strip_prefix('#').unwrap_or(rest);
        if rest.starts_with(|c: char| c.is_ascii_digit()) {
            found.push(at);
        }
    }
    found
}

#[test]
fn every_reference_resolves_inside_the_repository() {
    let texts = texts();
    assert!(
        texts.iter().any(|(f, _)| f == "README.md") && texts.len() > 50,
        "the repository's files were not found from {}",
        root().display()
    );
    let design = std::fs::read_to_string(root().join("docs/DESIGN.md")).expect("docs/DESIGN.md");
    let sections = sections(&design);
    // The numbering code and documents have cited since before this file
    // existed: §1 to §8, §2.1, §4.1 and the ten properties of §7.
    let kept = ["1", "2", "2.1", "3", "4", "4.1", "5", "6", "7", "8", "8.2"];
    let properties = (1..=10).map(|k| format!("7.{k}"));
    for s in kept.into_iter().map(str::to_owned).chain(properties) {
        assert!(
            sections.contains(&s),
            "DESIGN §{s} is missing: {sections:?}"
        );
    }
    let lessons = lessons(&design);
    assert_eq!(lessons, (1..=16).collect(), "DESIGN §8.2 lists W1 to W16");

    let mut problems = Vec::new();
    for (file, text) in &texts {
        if file == SELF {
            continue;
        }
        let at = |i: usize| format!("{file}:{}", line_of(text, i));
        for (i, n) in design_refs(text) {
            if !sections.contains(&n) {
                problems.push(format!(
                    "{}: DESIGN §{n} is not a section of docs/DESIGN.md",
                    at(i)
                ));
            }
        }
        if file.ends_with(".rs") || file.ends_with(".md") || file.ends_with(".py") {
            for (i, n) in lesson_refs(text) {
                if !lessons.contains(&n) {
                    problems.push(format!("{}: W{n} is not a lesson of DESIGN §8.2", at(i)));
                }
            }
        }
        for (i, doc) in doc_files(text) {
            if !root().join(&doc).exists() {
                problems.push(format!("{}: {doc} does not exist", at(i)));
            }
        }
        if file.ends_with(".md") {
            let dir = Path::new(file).parent().unwrap_or(Path::new(""));
            for (i, target) in links(text) {
                if !root().join(dir).join(&target).exists() {
                    problems.push(format!("{}: the link to {target} leads nowhere", at(i)));
                }
            }
        }
        // Blanked, not removed, so that offsets still give line numbers.
        let cleaned = text.replace(LAUNCHER, &" ".repeat(LAUNCHER.len()));
        for needle in ["../shared", "reference/", "seeds/", "seed 00"] {
            for (i, _) in cleaned.match_indices(needle) {
                problems.push(format!(
                    "{}: `{needle}` points outside the repository (only {LAUNCHER} may)",
                    at(i)
                ));
            }
        }
        for i in issue_refs(text) {
            problems.push(format!(
                "{}: an issue is cited; issues are not in the repository, say what it said",
                at(i)
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "references that do not resolve inside the repository:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_security_property_names_tests_that_exist() {
    let design = std::fs::read_to_string(root().join("docs/DESIGN.md")).expect("docs/DESIGN.md");
    let start = design.find("\n## 7.").expect("DESIGN has §7");
    let end = design[start + 1..]
        .find("\n## ")
        .map_or(design.len(), |e| start + 1 + e);
    let section = &design[start..end];

    // The test functions the repository defines.
    let mut fns = BTreeSet::new();
    for (file, text) in texts() {
        if !file.ends_with(".rs") {
            continue;
        }
        for (at, _) in text.match_indices("fn ") {
            let name: String = text[at + 3..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            fns.insert(name);
        }
    }

    let mut problems = Vec::new();
    let mut items = 0;
    // Items start at column 0 with their number; their text runs to the
    // next item.
    let mut starts: Vec<usize> = section
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .filter(|&i| {
            number(&section[i..])
                .is_some_and(|(n, len)| !n.contains('.') && section[i + len..].starts_with(". "))
        })
        .collect();
    starts.push(section.len());
    for pair in starts.windows(2) {
        let item = &section[pair[0]..pair[1]];
        items += 1;
        let Some(tests) = item.split_once("Tests:").map(|(_, t)| t) else {
            problems.push(format!("DESIGN §7.{items} names no tests"));
            continue;
        };
        let named: Vec<&str> = tests.split('`').skip(1).step_by(2).collect();
        if named.is_empty() {
            problems.push(format!("DESIGN §7.{items} names no tests"));
        }
        for name in named {
            if name.contains('/') {
                if !root().join(name).exists() {
                    problems.push(format!("DESIGN §7.{items}: {name} does not exist"));
                }
            } else if !fns.contains(name) {
                problems.push(format!("DESIGN §7.{items}: no test is called {name}"));
            }
        }
    }
    assert_eq!(items, 11, "DESIGN §7 has eleven properties");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_scanners_find_what_they_should() {
    let refs: Vec<String> = design_refs("see DESIGN §1 and §7.4, 7.7, 7.9): x; DESIGN.md §8.3.\n/// DESIGN\n/// §7.3. DESIGN §4.1, version 2; `DESIGN §N`")
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(refs, ["1", "7.4", "7.7", "7.9", "8.3", "7.3", "4.1"]);
    let design =
        "## 7. Props\n\n1. one\n2. two\n\n## 8. More\n\n### 8.2 Lessons\n\n1. not a section\n";
    let s = sections(design);
    assert!(s.contains("7.1") && s.contains("7.2") && s.contains("8.2"));
    assert!(!s.contains("8.1"));
    let w: Vec<u32> = lesson_refs("(W7) W1–W16 sig=IM-46Wlu W12x _W3 W100")
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(w, [7, 1, 16]);
    assert_eq!(
        issue_refs("issue 15, Issues 8 and issue #3; issued 5; an issue").len(),
        3
    );
    let d: Vec<String> = doc_files("see docs/REST.md, and docs/dev/x.md; crates/docs/y.md")
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    assert_eq!(d, ["docs/REST.md"]);
}
