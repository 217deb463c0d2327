//! The browser login page (`GET /login`) end to end: the real binary with
//! `--http`, and Debian's headless Chromium driven by playwright-core
//! (tests/browser/login.test.mjs). The script logs in, checks the session
//! the page shows (after a signed request and the server's signature),
//! logs out, fails with a wrong password and an unknown user and sees the
//! same error, refuses a forged server signature, and finds no password in
//! any request the page sent.
//!
//! Needs `KEYCARD_BROWSER_NODE_DIR` (a folder whose node_modules holds
//! playwright-core: scripts/test.sh runs `npm ci` for it) and
//! `KEYCARD_CHROMIUM` (e.g. /usr/bin/chromium); `KEYCARD_NODE` may name the
//! node binary, `KEYCARD_BROWSER_SCREENSHOTS` a folder for the screenshots
//! (default: a temp dir, removed unless the test fails). Set `KEYCARD_SKIP_PEERS=1` to skip it explicitly.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::pki::{spki_sha256, tls_rest_server};
use support::rest_server_with;

/// How long the whole browser script may take.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

/// The first user: the one on the screenshot.
const USER: &str = "ada";
const PASSWORD: &str = "lovelace-1842";
/// A name that needs SCRAM's escapes, and a password that needs
/// normalising (the "ﬁ" ligature is "fi" after SASLprep and NFKC).
const USER2: &str = "grace=hopper,1906";
const PASSWORD2: &str = "Grüße-ﬁ-1906";

/// An environment variable the test needs, or a clear failure.
fn needed(name: &str, what: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} must be set: {what}. Run the tests with scripts/test.sh (it installs \
             playwright-core with npm ci and finds Debian's chromium), or set \
             KEYCARD_SKIP_PEERS=1 to skip the tests against outside tools"
        )
    })
}

/// Runs `cmd` to its end or until `limit`, killing it then; returns
/// (success, stdout, stderr).
fn run_bounded(mut cmd: Command, limit: Duration) -> (bool, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("start node");
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = read(Box::new(child.stdout.take().expect("stdout")));
    let err = read(Box::new(child.stderr.take().expect("stderr")));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = out.join().unwrap_or_default();
    let mut err = err.join().unwrap_or_default();
    if status.is_none() {
        err.push_str(&format!("\n(killed after {limit:?})"));
    }
    (status.is_some_and(|s| s.success()), out, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_page_in_headless_chromium() {
    if std::env::var_os("KEYCARD_SKIP_PEERS").is_some() {
        eprintln!("SKIPPED: KEYCARD_SKIP_PEERS is set");
        return;
    }
    login_page(false).await;
}

/// The same script over HTTPS: the server with TLS on (a certificate made
/// with openssl), Chromium trusting that certificate's key by a flag
/// (`--ignore-certificate-errors-spki-list`), and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_page_over_https_in_headless_chromium() {
    if std::env::var_os("KEYCARD_SKIP_PEERS").is_some() {
        eprintln!("SKIPPED: KEYCARD_SKIP_PEERS is set");
        return;
    }
    login_page(true).await;
}

/// Runs tests/browser/login.test.mjs against a fresh server, over HTTPS
/// if `https`.
async fn login_page(https: bool) {
    let node_dir = PathBuf::from(needed(
        "KEYCARD_BROWSER_NODE_DIR",
        "a folder whose node_modules holds playwright-core (tests/browser after `npm ci`)",
    ));
    assert!(
        node_dir
            .join("node_modules/playwright-core/package.json")
            .is_file(),
        "KEYCARD_BROWSER_NODE_DIR={} has no node_modules/playwright-core: run `npm ci` there \
         (scripts/test.sh does)",
        node_dir.display()
    );
    let chromium = needed(
        "KEYCARD_CHROMIUM",
        "the Chromium binary to drive (apt-get install chromium: /usr/bin/chromium)",
    );
    assert!(
        std::path::Path::new(&chromium).is_file(),
        "KEYCARD_CHROMIUM={chromium} is not a file (apt-get install chromium)"
    );
    let node = std::env::var("KEYCARD_NODE").unwrap_or_else(|_| "node".into());
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser/login.test.mjs");

    let users = [(USER, PASSWORD), (USER2, PASSWORD2)];
    let (_server, http, _dirs, scheme, spki) = if https {
        let (server, http, ca, dirs) = tls_rest_server(&users, 11).await;
        let pki = ca.parent().expect("the CA's folder");
        let spki = spki_sha256(pki, "server.pem");
        (server, http, Vec::from(dirs), "https", Some((spki, ca)))
    } else {
        let (server, http, data) = rest_server_with(&users, &[], "").await;
        (server, http, vec![data], "http", None)
    };
    // Screenshots go to a temp dir, never into the source tree (or to
    // KEYCARD_BROWSER_SCREENSHOTS, to look at them afterwards).
    let shots = tempfile::Builder::new()
        .prefix("keycard-browser-")
        .tempdir()
        .expect("tmp");
    let shot_dir = std::env::var_os("KEYCARD_BROWSER_SCREENSHOTS")
        .map(|d| PathBuf::from(d).join(scheme))
        .unwrap_or_else(|| shots.path().to_owned());
    std::fs::create_dir_all(&shot_dir).expect("screenshot folder");

    let mut cmd = Command::new(&node);
    if let Some((spki, ca)) = &spki {
        // Chromium trusts the server's key by its flag; the script's own
        // requests (playwright's `route.fetch`, from node) trust the CA.
        cmd.env("KEYCARD_BROWSER_SPKI", spki)
            .env("NODE_EXTRA_CA_CERTS", ca);
    }
    cmd.arg(&script)
        .arg(format!("{scheme}://{http}"))
        .args([USER, PASSWORD, USER2, PASSWORD2])
        .arg(&shot_dir)
        .env("KEYCARD_BROWSER_NODE_DIR", &node_dir)
        .env("KEYCARD_CHROMIUM", &chromium);
    let started = Instant::now();
    let (ok, out, err) = tokio::task::spawn_blocking(move || run_bounded(cmd, SCRIPT_TIMEOUT))
        .await
        .expect("join");
    eprintln!("{out}");
    if !(ok && out.contains("ALL OK")) {
        // Keep the screenshots for a look.
        let _ = shots.keep();
        panic!(
            "the browser test failed (screenshots in {}):\n{out}\n{err}",
            shot_dir.display()
        );
    }
    let shot = shot_dir.join("login-session.png");
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000,
        "{} is not a real PNG screenshot ({} bytes)",
        shot.display(),
        png.len()
    );
    eprintln!("browser test took {:?}", started.elapsed());
}
