//! TLS as an operator turns it on: certificates made with the `openssl`
//! command (a CA, an RSA CA key, an ECDSA server key), `keycard serve
//! --tls-cert --tls-key`, OpenSSL's own client (`openssl s_client`)
//! verifying the chain and reading the serial, the CLI over TLS, and
//! SIGHUP swapping the certificate while an established connection keeps
//! working; a corrupt file keeps the old certificate.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keycard_client::{Client, ClientTls};
use keycard_proto::Value;

mod support;

use support::pki::{make_ca, make_server_cert, openssl, tls_rest_server};
use support::{cli, Proc};

/// `keycard serve` on a fresh data folder under `data`, with TLS from
/// `cert` and `key`.
fn serve_tls(data: &Path, cert: &Path, key: &Path) -> Proc {
    Proc::start_with(
        &data.join("data"),
        &[
            "--tls-cert",
            cert.to_str().expect("utf-8"),
            "--tls-key",
            key.to_str().expect("utf-8"),
        ],
    )
}

/// Sends the server SIGHUP.
fn hangup(server: &Proc) {
    let hup = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
}

/// What `openssl s_client` sees at `addr`: whether it verified the chain
/// against the CA, and the leaf's serial (`serial=…`).
fn s_client(dir: &Path, addr: std::net::SocketAddr) -> (bool, String) {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
            "-verify_hostname",
            "localhost",
            "-CAfile",
            "ca.pem",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("s_client runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let verified = text.contains("Verify return code: 0 (ok)");
    let start = text.find("-----BEGIN CERTIFICATE-----");
    let end = text.find("-----END CERTIFICATE-----");
    let serial = match (start, end) {
        (Some(s), Some(e)) => {
            let pem = &text[s..e + "-----END CERTIFICATE-----".len()];
            std::fs::write(dir.join("seen.pem"), pem).expect("seen");
            openssl(dir, &["x509", "-in", "seen.pem", "-noout", "-serial"])
                .trim()
                .to_owned()
        }
        _ => String::new(),
    };
    (verified, serial)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_certificates_sighup_and_the_cli_over_tls() {
    let pki = tempfile::tempdir().expect("tmp");
    let dir = pki.path();
    make_ca(dir);
    let (cert, key) = make_server_cert(dir, 1001);
    let data = tempfile::tempdir().expect("tmp");
    let server = serve_tls(data.path(), &cert, &key);
    let addr = server.addr;

    // OpenSSL's client verifies the chain and the name.
    assert_eq!(s_client(dir, addr), (true, "serial=03E9".to_owned()));

    // The CLI, told which CA to trust.
    let ca = dir.join("ca.pem");
    let ca_env = ("KEYCARD_TLS_CA", ca.to_str().expect("utf-8"));
    let (code, out, err) = cli(addr, &["set", "app.x", "over tls"], &[ca_env]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = cli(addr, &["get", "app.x"], &[ca_env]);
    assert_eq!((code, out.trim()), (Some(0), "\"over tls\""), "{err}");
    // Without TLS it gets no greeting, and says why.
    let (code, _, err) = cli(addr, &["get", "app.x"], &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("answered with TLS") && err.contains("--tls-ca"),
        "{err}"
    );

    // A connection made before the reload.
    let tls = ClientTls::with_ca_file(&ca, "localhost").expect("tls");
    let held = Client::connect_tls(addr, &tls).await.expect("client");
    let app_y = keycard_proto::Path::parse("app.y").expect("path");

    // A new certificate, then SIGHUP: new clients see serial 1002.
    make_server_cert(dir, 1002);
    hangup(&server);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = s_client(dir, addr);
        if seen == (true, "serial=03EA".to_owned()) {
            break;
        }
        assert!(Instant::now() < deadline, "after SIGHUP still {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The held connection still works.
    held.set(&app_y, Value::from(2))
        .await
        .expect("still served after the reload");

    // A corrupt certificate: `keycard reload` says why, the old one stays.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").expect("write");
    let (code, _, err) = cli(addr, &["reload"], &[ca_env]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("reload refused") && err.contains("server.pem"),
        "{err}"
    );
    assert_eq!(s_client(dir, addr), (true, "serial=03EA".to_owned()));
    // And SIGHUP with the bad file logs it and keeps serving.
    hangup(&server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.log().matches("TLS reload refused").count() < 2 {
        assert!(Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    held.set(&app_y, Value::from(3))
        .await
        .expect("still served");
    assert_eq!(s_client(dir, addr), (true, "serial=03EA".to_owned()));
}

#[test]
fn serve_refuses_a_key_without_its_certificate() {
    let data = tempfile::tempdir().expect("tmp");
    let out = support::bin_command(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.path().to_str().expect("utf-8"),
            "--tls-key",
            "/nonexistent/server.key",
        ],
        &[],
    )
    .output()
    .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("key is set without cert"), "{err}");
}

/// The REST example client (examples/python, Python's own `ssl`) over
/// HTTPS: it logs in with SCRAM, signs, reads and writes, trusting the
/// test CA with `--cafile`; without it, it refuses the unknown CA in one
/// line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_rest_example_over_https() {
    if std::env::var_os("KEYCARD_SKIP_PEERS").is_some() {
        eprintln!("SKIPPED: KEYCARD_SKIP_PEERS is set");
        return;
    }
    let python = std::env::var("KEYCARD_DISTKV_PYTHON")
        .expect("KEYCARD_DISTKV_PYTHON: run the tests with scripts/test.sh");
    let (_server, http, ca, _dirs) = tls_rest_server(&[("ada", "lovelace-1842")], 7).await;
    let script = format!(
        "{}/../../examples/python/keycard_rest.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let run = |extra: &[&str]| {
        let out = Command::new(&python)
            .arg(&script)
            .arg(format!("https://{http}"))
            .args(["ada", "lovelace-1842"])
            .args(extra)
            .output()
            .expect("run python");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["--cafile", ca.to_str().expect("utf-8")]);
    assert!(code == Some(0) && out.contains("ALL OK"), "{out}\n{err}");
    let (code, _, err) = run(&[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("CERTIFICATE_VERIFY_FAILED"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// SCRAM-SHA-256-PLUS with a standard client: PyPI scramp, its binding
/// data from Python's own `ssl` socket, on msgpack and on REST
/// (tests/compat/scramp_plus.py says what it checks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scramp_logs_in_with_channel_binding_on_both_listeners() {
    if std::env::var_os("KEYCARD_SKIP_PEERS").is_some() {
        eprintln!("SKIPPED: KEYCARD_SKIP_PEERS is set");
        return;
    }
    let python = std::env::var("KEYCARD_DISTKV_PYTHON")
        .expect("KEYCARD_DISTKV_PYTHON: run the tests with scripts/test.sh");
    const PW: &str = "pässwörd with spaces";
    let (server, http, ca, _dirs) = tls_rest_server(&[("pat", PW)], 21).await;
    let http_port = http.rsplit_once(':').map(|(_, p)| p).expect("port");
    let script = format!(
        "{}/../../tests/compat/scramp_plus.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = Command::new(python)
        .arg(script)
        .arg(server.addr.ip().to_string())
        .arg(server.addr.port().to_string())
        .arg(http_port)
        .arg(&ca)
        .args(["pat", PW])
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "scramp_plus.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The CLI over TLS prefers scram-sha-256-plus when the server offers it:
/// the audit log records the login under that name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_logs_in_with_channel_binding() {
    const PW: &str = "correct horse battery staple";
    let (server, _http, ca, _dirs) = tls_rest_server(&[("pat", PW)], 31).await;
    let env = [
        ("KEYCARD_TLS_CA", ca.to_str().expect("utf-8")),
        ("KEYCARD_PASSWORD", PW),
    ];
    let (code, out, err) = cli(server.addr, &["whoami", "--user", "pat"], &env);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("pat"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server
        .log()
        .lines()
        .any(|l| l.contains("method=\"scram-sha-256-plus\"") && l.contains("outcome=\"success\""))
    {
        assert!(Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `keycard cert init` makes what an operator needs to try TLS: a server
/// started with its files is verified by OpenSSL's client against its
/// CA, the CLI connects with `--tls-ca`, the key is the owner's alone,
/// and a second run into the same folder replaces nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_init_makes_a_working_ca_and_server_certificate() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("tls");
    let d = dir.to_str().expect("utf-8");
    let out = support::bin_command(&["cert", "init", d], &[])
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("--tls-cert") && err.contains("--tls-ca"),
        "{err}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("server.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is readable by others: {mode:o}");
    }
    let data = tempfile::tempdir().expect("tmp");
    let server = serve_tls(
        data.path(),
        &dir.join("server.pem"),
        &dir.join("server.key"),
    );
    let (verified, serial) = s_client(&dir, server.addr);
    assert!(verified, "OpenSSL does not verify the chain ({serial})");
    let ca = dir.join("ca.pem");
    let (code, out, err) = cli(
        server.addr,
        &["set", "app.x", "1"],
        &[("KEYCARD_TLS_CA", ca.to_str().expect("utf-8"))],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    // The names asked for are in the certificate.
    let text = openssl(
        &dir,
        &[
            "x509",
            "-in",
            "server.pem",
            "-noout",
            "-ext",
            "subjectAltName",
        ],
    );
    assert!(
        text.contains("DNS:localhost") && text.contains("IP Address:127.0.0.1"),
        "{text}"
    );
    // Nothing is replaced.
    let out = support::bin_command(&["cert", "init", d], &[])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never replaces"));
}

/// A `cert` login from the command line, as an operator sets it up:
/// `keycard cert init --client pat` makes pat's certificate, the server
/// asks for client certificates from the same CA, `auth init cert
/// --new-user pat` makes pat the administrator, and the CLI logs pat in
/// with `--tls-cert/--tls-key` and no password; without the certificate
/// it cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_logs_in_with_a_client_certificate() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("tls");
    let d = dir.to_str().expect("utf-8");
    let out = support::bin_command(&["cert", "init", d, "--client", "pat"], &[])
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("client-pat.pem"), "{err}");
    // A client name that could leave the folder, or one named twice, is
    // refused before anything is written.
    for args in [
        &["--client", "../x"][..],
        &["--client", "x", "--client", "X"][..],
    ] {
        let other = tmp.path().join("other");
        let o = other.to_str().expect("utf-8");
        let mut all = vec!["cert", "init", o];
        all.extend_from_slice(args);
        let out = support::bin_command(&all, &[]).output().expect("runs");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(!other.exists(), "{args:?}: nothing is written");
    }
    let s = |f: &str| dir.join(f).to_str().expect("utf-8").to_owned();
    let data = tempfile::tempdir().expect("tmp");
    let server = Proc::start_with(
        &data.path().join("data"),
        &[
            "--tls-cert",
            &s("server.pem"),
            "--tls-key",
            &s("server.key"),
            "--tls-client-ca",
            &s("ca.pem"),
        ],
    );
    let ca = s("ca.pem");
    let (cert, key) = (s("client-pat.pem"), s("client-pat.key"));
    let with_cert = [
        ("KEYCARD_TLS_CA", ca.as_str()),
        ("KEYCARD_TLS_CLIENT_CERT", cert.as_str()),
        ("KEYCARD_TLS_CLIENT_KEY", key.as_str()),
    ];
    let (code, out, err) = cli(
        server.addr,
        &["auth", "init", "cert", "--new-user", "pat"],
        &with_cert,
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = cli(
        server.addr,
        &[
            "whoami",
            "--user",
            "pat",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        &[("KEYCARD_TLS_CA", ca.as_str())],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("pat") && out.contains("cert"), "{out}");
    let (code, out, err) = cli(
        server.addr,
        &["whoami", "--user", "pat"],
        &[("KEYCARD_TLS_CA", ca.as_str())],
    );
    assert_ne!(code, Some(0), "{out}{err}");
    // A certificate without its key is a usage error, said plainly.
    let (code, _, err) = cli(
        server.addr,
        &["whoami", "--user", "pat", "--tls-cert", &cert],
        &[("KEYCARD_TLS_CA", ca.as_str())],
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("--tls-key"), "{err}");
}
