//! README.md's "Using it", run as written: every `$` command of the
//! section's code blocks, in order, against a fresh server (the binary),
//! each checked against the lines the README shows after it. The commands
//! are parsed out of README.md, so the examples cannot drift from what the
//! binary does.
//!
//! The transcript's conventions (README.md states them too): `$ ` starts a
//! command and the lines after it are what it prints, stdout and stderr
//! together as a terminal shows them (a `VAR=$(…)` command's stdout goes
//! to VAR); `…` stands for any text within a line, or, alone on a line,
//! for any number of lines; runs of spaces match any run of whitespace
//! (the CLI separates a path from its value with a tab); a command must
//! succeed unless what it prints has an `error:` line, and then must fail.
//! `alias keycard=…` names the binary; `keycard watch` runs until it is up
//! to date; passwords come from KEYCARD_PASSWORD and KEYCARD_NEW_PASSWORD,
//! as a script gives them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::Command;
use std::time::{Duration, Instant};

mod support;

use support::{bin_command, Proc};

/// One command of the transcript and what it should print.
#[derive(Debug)]
struct Step {
    command: String,
    expect: Vec<String>,
}

/// The `$` commands of `## Using it` (up to the next `## ` heading), each
/// with the lines shown after it in its code block.
fn steps(readme: &str) -> Vec<Step> {
    let start = readme
        .find("\n## Using it")
        .expect("README.md has ## Using it");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    let mut out: Vec<Step> = Vec::new();
    let mut open = false;
    for line in rest[..end].lines() {
        if let Some(cmd) = line.strip_prefix("    $ ") {
            out.push(Step {
                command: cmd.to_owned(),
                expect: Vec::new(),
            });
            open = true;
        } else if line.trim().is_empty() {
            if let (true, Some(s)) = (open, out.last_mut()) {
                s.expect.push(String::new());
            }
        } else if let Some(shown) = line.strip_prefix("    ") {
            if let (true, Some(s)) = (open, out.last_mut()) {
                s.expect.push(shown.to_owned());
            }
        } else {
            // Prose: the code block ended.
            open = false;
        }
    }
    for s in &mut out {
        while s.expect.last().is_some_and(String::is_empty) {
            s.expect.pop();
        }
    }
    out
}

/// `text` with its `$NAME` and `${NAME}` replaced from `vars`.
fn expand(text: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let braced = chars.peek() == Some(&'{');
        if braced {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphanumeric() || n == '_' {
                name.push(n);
                chars.next();
            } else {
                break;
            }
        }
        if braced {
            assert_eq!(chars.next(), Some('}'), "unclosed ${{ in {text:?}");
        }
        let value = vars
            .get(&name)
            .unwrap_or_else(|| panic!("${name} is not set in {text:?}"));
        out.push_str(value);
    }
    out
}

/// A command line's words, as a POSIX shell splits them: '…' literal,
/// "…" and bare words expanded, `#` after a blank starting a comment.
fn words(line: &str, vars: &HashMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let quoted: String = chars.by_ref().take_while(|c| *c != '\'').collect();
                word.get_or_insert_with(String::new).push_str(&quoted);
            }
            '"' => {
                let quoted: String = chars.by_ref().take_while(|c| *c != '"').collect();
                word.get_or_insert_with(String::new)
                    .push_str(&expand(&quoted, vars));
            }
            '#' if word.is_none() => break,
            c if c.is_whitespace() => out.extend(word.take()),
            c => {
                let w = word.get_or_insert_with(String::new);
                if c == '$' {
                    let name: String = std::iter::once(c)
                        .chain(
                            chars
                                .clone()
                                .take_while(|n| n.is_ascii_alphanumeric() || *n == '_'),
                        )
                        .collect();
                    for _ in 1..name.len() {
                        chars.next();
                    }
                    w.push_str(&expand(&name, vars));
                } else {
                    w.push(c);
                }
            }
        }
    }
    out.extend(word);
    out
}

/// Runs of whitespace as one space, trimmed.
fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `text` is what `pattern` shows (`…` for any text).
fn line_matches(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (squeeze(pattern), squeeze(text));
    let parts: Vec<&str> = pattern.split('…').map(str::trim).collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut at = 0;
    for (i, part) in parts.iter().enumerate() {
        let found = match i {
            0 => text.starts_with(part).then_some(0),
            _ => text[at..].find(part).map(|j| at + j),
        };
        let Some(j) = found else { return false };
        at = j + part.len();
    }
    parts.last().is_none_or(|last| text.ends_with(last))
}

/// Whether the lines `got` are what `expect` shows (a line `…` alone for
/// any number of lines).
fn lines_match(expect: &[String], got: &[String]) -> bool {
    match expect.split_first() {
        None => got.is_empty(),
        Some((first, rest)) if first.trim() == "…" => {
            (0..=got.len()).any(|skip| lines_match(rest, &got[skip..]))
        }
        Some((first, rest)) => got
            .split_first()
            .is_some_and(|(g, more)| line_matches(first, g) && lines_match(rest, more)),
    }
}

/// The binary with `args`, the transcript's environment and `env` on top.
fn keycard(args: &[String], base: &[(String, String)], env: &[(String, String)]) -> Command {
    let all: Vec<(&str, &str)> = base
        .iter()
        .chain(env)
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    bin_command(&args, &all)
}

/// Runs `cmd` with stdout and stderr on one pipe; for a watch, until it
/// prints that it is up to date. Returns (success, the lines printed).
fn run_together(mut cmd: Command, watch: bool) -> (bool, Vec<String>) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    cmd.stdout(writer.try_clone().expect("pipe")).stderr(writer);
    let mut child = cmd.spawn().expect("run keycard");
    // The parent's ends of the pipe close with the command.
    drop(cmd);
    if !watch {
        let mut text = String::new();
        BufReader::new(reader)
            .read_to_string(&mut text)
            .expect("read");
        let ok = child.wait().expect("wait").success();
        return (ok, text.lines().map(str::to_owned).collect());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("up to date")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    (true, lines)
}

#[test]
fn readme_using_it_runs_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let steps = steps(&readme);
    assert!(
        steps.len() >= 30,
        "README.md's \"Using it\" shows {} commands as a transcript ($ lines): {steps:#?}",
        steps.len()
    );
    let dir = tempfile::tempdir().expect("tmp");
    let server = Proc::start(dir.path());
    let password = "correct horse battery staple";
    let base = vec![
        ("KEYCARD_SERVER".to_owned(), server.addr.to_string()),
        ("KEYCARD_PASSWORD".to_owned(), password.to_owned()),
        ("KEYCARD_NEW_PASSWORD".to_owned(), password.to_owned()),
    ];
    let mut vars: HashMap<String, String> = HashMap::new();
    for step in &steps {
        let line = step.command.trim();
        if let Some(alias) = line.strip_prefix("alias ") {
            assert!(
                alias.starts_with("keycard='cargo run") && alias.contains("-p keycard --"),
                "{line}"
            );
            continue;
        }
        // VAR=$(keycard …): stdout to VAR, stderr shown.
        if let Some((var, inner)) = line
            .split_once("=$(")
            .and_then(|(v, rest)| Some((v, rest.split_once(')')?.0)))
        {
            let w = words(inner, &vars);
            assert_eq!(w.first().map(String::as_str), Some("keycard"), "{line}");
            let out = keycard(&w[1..], &base, &[]).output().expect("run keycard");
            let shown: Vec<String> = String::from_utf8_lossy(&out.stderr)
                .lines()
                .map(str::to_owned)
                .collect();
            assert!(out.status.success(), "{line}\n{}", shown.join("\n"));
            assert!(
                lines_match(&step.expect, &shown),
                "$ {line}\nprinted:\n{}\nREADME.md shows:\n{}",
                shown.join("\n"),
                step.expect.join("\n")
            );
            let value = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            vars.insert(var.to_owned(), value);
            continue;
        }
        let mut w = words(line, &vars);
        // VAR=value before the command: its environment.
        let mut env = Vec::new();
        while let Some((k, v)) = w.first().and_then(|x| x.split_once('=')) {
            env.push((k.to_owned(), v.to_owned()));
            w.remove(0);
        }
        assert_eq!(
            w.first().map(String::as_str),
            Some("keycard"),
            "README.md runs something this test does not know: {line}"
        );
        let watch = w.get(1).map(String::as_str) == Some("watch");
        let (ok, got) = run_together(keycard(&w[1..], &base, &env), watch);
        let fails = step.expect.iter().any(|l| l.starts_with("error:"));
        assert!(
            lines_match(&step.expect, &got),
            "$ {line}\nprinted:\n{}\nREADME.md shows:\n{}",
            got.join("\n"),
            step.expect.join("\n")
        );
        assert_eq!(ok, !fails, "$ {line}: exit status\n{}", got.join("\n"));
    }
}

#[test]
fn the_transcript_matcher() {
    let s = |v: &[&str]| v.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>();
    assert!(line_matches("tock …", "tock 17"));
    assert!(!line_matches("tock …", "tick 17"));
    assert!(line_matches("app.x    \"1\"", "app.x\t\"1\""));
    assert!(line_matches(
        "token … for user alice, expires …",
        "token ab for user alice, expires 2026-01-01"
    ));
    assert!(!line_matches(
        "token … for user alice",
        "token ab for user bob"
    ));
    assert!(!line_matches("a … c", "a b c d"));
    assert!(lines_match(&s(&["a", "…", "z"]), &s(&["a", "b", "c", "z"])));
    assert!(lines_match(&s(&["a", "…"]), &s(&["a"])));
    assert!(!lines_match(&s(&["a"]), &s(&["a", "b"])));
    assert!(!lines_match(&s(&["a", "b"]), &s(&["a"])));
    let vars: HashMap<String, String> = [("T".to_owned(), "kct_1".to_owned())].into();
    assert_eq!(
        words(r#"keycard set --json x '{"a": 1}'   # a comment"#, &vars),
        s(&["keycard", "set", "--json", "x", r#"{"a": 1}"#])
    );
    assert_eq!(
        words(r#"K=$T keycard token revoke "$T""#, &vars),
        s(&["K=kct_1", "keycard", "token", "revoke", "kct_1"])
    );
}
