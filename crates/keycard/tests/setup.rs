//! The README's test command on a fresh machine: `scripts/test.sh` sets up
//! what the peer tests need itself (it stopped for a missing chromium that
//! only `.ci/run` installed). Run against stand-ins for apt-get, Python,
//! npm and cargo on a PATH that has nothing else, so it installs nothing
//! here and needs no network.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// Writes an executable shell script `name` into `dir`.
fn stub(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write stub");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Links the real `tool` into `dir` (the few the script needs).
fn link(dir: &Path, tool: &str) {
    let real = ["/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no {tool} on this machine"));
    std::os::unix::fs::symlink(real, dir.join(tool)).expect("symlink");
}

#[test]
fn the_test_script_installs_what_the_peer_tests_need() {
    let tmp = tempfile::tempdir().expect("tmp");
    let bin = tmp.path().join("bin");
    let log = tmp.path().join("calls.log");
    std::fs::create_dir(&bin).expect("bin");
    for tool in [
        "bash", "sh", "env", "cmp", "mkdir", "cp", "dirname", "id", "mktemp", "tail", "rm",
        "sleep", "cat", "chmod",
    ] {
        link(&bin, tool);
    }
    let log_to = |what: &str| format!("echo \"{what} $*\" >> '{}'", log.display());
    // apt-get "installs" a package by putting a stand-in on the PATH.
    stub(
        &bin,
        "apt-get",
        &format!(
            "{}\n[ \"$1\" = install ] || exit 0\nfor p in \"$@\"; do case $p in\n\
             chromium) printf '#!/bin/sh\\necho Chromium 1\\n' > '{b}/chromium'; chmod 755 '{b}/chromium';;\n\
             npm) printf '#!/bin/sh\\nmkdir -p node_modules/playwright-core; echo {{}} > node_modules/playwright-core/package.json\\n' > '{b}/npm'; chmod 755 '{b}/npm';;\n\
             nodejs) printf '#!/bin/sh\\necho v20.0.0\\n' > '{b}/node'; chmod 755 '{b}/node';;\n\
             esac; done",
            log_to("apt-get"),
            b = bin.display()
        ),
    );
    stub(&bin, "python3", &log_to("python3"));
    stub(&bin, "cargo", &log_to("cargo"));
    // Venvs that are already there (their tools answer), so nothing is
    // fetched from PyPI.
    for (venv, tool) in [("venv-distkv", "python"), ("venv-st", "schemathesis")] {
        let dir = tmp.path().join(venv).join("bin");
        std::fs::create_dir_all(&dir).expect("venv");
        stub(&dir, tool, "exit 0");
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/test.sh");
    let out = Command::new(script)
        .env_clear()
        .env("PATH", &bin)
        .env("HOME", tmp.path())
        .env("KEYCARD_VENV", tmp.path().join("venv-distkv"))
        .env("KEYCARD_ST_VENV", tmp.path().join("venv-st"))
        .env("KEYCARD_BROWSER_NODE_DIR", tmp.path().join("node"))
        .arg("--locked")
        .output()
        .expect("run scripts/test.sh");
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    let said = format!(
        "{}{}\ncalls:\n{calls}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(
        calls.contains("apt-get install") && calls.contains("chromium"),
        "{said}"
    );
    assert!(calls.contains("nodejs npm"), "{said}");
    assert!(
        calls.lines().last() == Some("cargo test --workspace --locked"),
        "then the tests: {said}"
    );
    assert!(said.contains("Chromium 1"), "{said}");

    // KEYCARD_SKIP_PEERS=1: straight to the tests, nothing installed.
    std::fs::remove_file(&log).expect("rm log");
    let out = Command::new(script)
        .env_clear()
        .env("PATH", &bin)
        .env("KEYCARD_SKIP_PEERS", "1")
        .output()
        .expect("run scripts/test.sh");
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(out.status.success());
    assert_eq!(calls.trim(), "cargo test --workspace", "{calls}");
}
