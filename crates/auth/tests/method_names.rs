//! A method's properties live in its own file in this crate and the
//! transports, the client and the CLI ask the registry: no code outside
//! crates/auth names a method by a string literal (tests and comments
//! may). `root` and `token` are also words of the protocol (the `root`
//! action, the `token` field), so for them only the places that name a
//! method are checked: `typ`, comparisons and match arms.

use std::path::{Path, PathBuf};

use keycard_auth::{ClientRegistry, TOKEN};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            // Tests may name methods; so may what is not source.
            if name != "tests" && name != "target" && name != "assets" {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file that is not a test: without its `#[cfg(test)]`
/// items (a test module, to its closing brace) and comment lines.
fn code_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    // Inside a test item: its brace depth, and whether its body began.
    let mut skipping: Option<(i64, bool)> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if let Some((depth, began)) = skipping.as_mut() {
            let opens = line.matches('{').count() as i64;
            let closes = line.matches('}').count() as i64;
            *depth += opens - closes;
            *began |= opens > 0;
            if (*began && *depth <= 0) || (!*began && t.ends_with(';')) {
                skipping = None;
            }
            continue;
        }
        if t.starts_with("#[cfg(test)]") {
            skipping = Some((0, false));
            continue;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push((i + 1, line));
    }
    out
}

/// Where a line names `name` as a method.
fn names_method(line: &str, name: &str, word: bool) -> bool {
    let lit = format!("\"{name}\"");
    if !word {
        return line.contains(&lit);
    }
    [
        format!("\"typ\", {lit}"),
        format!("== {lit}"),
        format!("!= {lit}"),
        format!("{lit} =>"),
    ]
    .iter()
    .any(|p| line.contains(p.as_str()))
        // The `root` action's dispatch.
        && !line.contains("data::root(")
}

#[test]
fn no_method_name_literal_outside_crates_auth() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    rust_files(&crates, &mut files);
    let own = Path::new(env!("CARGO_MANIFEST_DIR"))
        .canonicalize()
        .expect("crate dir");
    let mut names: Vec<(&str, bool)> = ClientRegistry::all()
        .map(|i| (i.name, i.name == keycard_auth::ROOT))
        .collect();
    names.push((TOKEN, true));
    assert!(names.len() >= 7, "{names:?}");
    let mut found = Vec::new();
    let mut checked = 0;
    for file in files {
        let Ok(real) = file.canonicalize() else {
            continue;
        };
        if real.starts_with(&own) {
            continue;
        }
        let text = std::fs::read_to_string(&real).expect("read source");
        checked += 1;
        for (n, line) in code_lines(&text) {
            for (name, word) in &names {
                if names_method(line, name, *word) {
                    found.push(format!("{}:{n}: {}", real.display(), line.trim()));
                }
            }
        }
    }
    assert!(checked > 50, "read only {checked} files");
    assert!(
        found.is_empty(),
        "method names spelled out of crates/auth (ask keycard_auth's registry or use its \
         constants):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_guard_sees_what_it_should() {
    assert!(names_method("match m { \"opaque\" => 1 }", "opaque", false));
    assert!(names_method(".with(\"typ\", \"root\")", "root", true));
    assert!(names_method("if method == \"root\" {", "root", true));
    assert!(!names_method(
        ".with(\"root\", session.root.to_value())",
        "root",
        true
    ));
    assert!(!names_method("r.get(\"token\")", "token", true));
    let text = "let a = \"x\";\n// \"opaque\"\n#[cfg(test)]\nmod tests {\n  fn f() { \"opaque\" }\n}\nconst B: &str = \"opaque\";\n#[cfg(test)]\nmod more;\nconst C: u8 = 1;";
    let lines: Vec<usize> = code_lines(text).iter().map(|(n, _)| *n).collect();
    assert_eq!(lines, [1, 7, 10]);
}
