//! Replays every checked-in fuzz input on the stable toolchain: the
//! crashes the fuzzers found (`fuzz/regressions/<target>/`, kept after the
//! fix) and the inputs the fuzzers start from (`fuzz/inputs/<target>/`),
//! through the same bodies `fuzz/fuzz_targets/` runs under libFuzzer.
//! Also checks that this table and `fuzz/Cargo.toml` name the same
//! targets.

use std::path::{Path, PathBuf};

type Body = fn(&[u8]);

const TARGETS: &[(&str, Body)] = &[
    ("decode", keycard_proto::fuzzing::fuzz_decode),
    ("path_key", keycard_proto::fuzzing::fuzz_path_key),
    ("path_text", keycard_proto::fuzzing::fuzz_path_text),
    ("path_wire", keycard_proto::fuzzing::fuzz_path_wire),
    ("signed_header", keycard_auth::fuzzing::fuzz_signed_header),
    ("scram", keycard_auth::fuzzing::fuzz_scram),
    ("acl", keycard_auth::fuzzing::fuzz_acl),
    ("bouncer", keycard_auth::fuzzing::fuzz_bouncer),
    ("x509", keycard_auth::fuzzing::fuzz_x509),
    ("config", keycard_server::fuzzing::fuzz_config),
    ("router", keycard_server::fuzzing::fuzz_router),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `dir`, in name order (none if it does not exist).
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.expect("a directory entry").path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

fn replay(kind: &str) -> usize {
    let mut n = 0;
    let mut failed = Vec::new();
    for (name, body) in TARGETS {
        for file in inputs(&fuzz_dir().join(kind).join(name)) {
            let data = std::fs::read(&file).expect("readable input");
            if std::panic::catch_unwind(|| body(&data)).is_err() {
                failed.push(format!("{name}: {}", file.display()));
            }
            n += 1;
        }
    }
    assert!(
        failed.is_empty(),
        "these inputs fail:\n{}",
        failed.join("\n")
    );
    n
}

#[test]
fn found_crashes_stay_fixed() {
    replay("regressions");
}

#[test]
fn every_starting_input_passes() {
    let n = replay("inputs");
    assert!(n >= TARGETS.len(), "{n} starting inputs in all");
    for (name, _) in TARGETS {
        let start = inputs(&fuzz_dir().join("inputs").join(name));
        assert!(!start.is_empty(), "no starting input for {name}");
    }
}

#[test]
fn the_table_names_every_fuzz_target() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let mut bins: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "keycard-fuzz")
        .collect();
    bins.sort_unstable();
    let mut ours: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    ours.sort_unstable();
    assert_eq!(bins, ours);
}
