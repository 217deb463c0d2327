//! Certificates made with the `openssl` command, for the TLS tests: a CA
//! (RSA) and server certificates it signs (ECDSA P-256) for localhost and
//! 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs `openssl` with `args` in `dir`; panics with its output if it fails.
pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CA (`ca.pem`, RSA) in `dir`.
pub fn make_ca(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=keycard test CA",
        ],
    );
}

/// A server certificate for localhost and 127.0.0.1 with `serial`, signed
/// by the CA, as `server.pem` (leaf, then the CA) and `server.key`.
pub fn make_server_cert(dir: &Path, serial: u32) -> (PathBuf, PathBuf) {
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("ext");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "new.key",
            "-out",
            "new.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    let serial = serial.to_string();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "new.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial,
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "new.pem",
        ],
    );
    let leaf = std::fs::read_to_string(dir.join("new.pem")).expect("leaf");
    let ca = std::fs::read_to_string(dir.join("ca.pem")).expect("ca");
    // Written whole, then renamed: the server never reads half a file.
    std::fs::write(dir.join("chain.tmp"), format!("{leaf}{ca}")).expect("chain");
    std::fs::rename(dir.join("chain.tmp"), dir.join("server.pem")).expect("rename");
    std::fs::rename(dir.join("new.key"), dir.join("server.key")).expect("rename");
    (dir.join("server.pem"), dir.join("server.key"))
}

/// The SHA-256 of the certificate's public key (SPKI), base64: what
/// Chromium's `--ignore-certificate-errors-spki-list` takes.
pub fn spki_sha256(dir: &Path, cert: &str) -> String {
    let pem = openssl(dir, &["x509", "-in", cert, "-pubkey", "-noout"]);
    std::fs::write(dir.join("spki.pem"), pem).expect("write");
    openssl(
        dir,
        &[
            "pkey", "-pubin", "-in", "spki.pem", "-outform", "DER", "-out", "spki.der",
        ],
    );
    let der = std::fs::read(dir.join("spki.der")).expect("read");
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(der))
}

/// A REST server (the binary) with TLS on and SCRAM users `users` made
/// over TLS, scram-sha-256 current: its certificates made here with
/// serial `serial`. Returns the server, its HTTP address, the CA file and
/// the directories to keep alive.
pub async fn tls_rest_server(
    users: &[(&str, &str)],
    serial: u32,
) -> (super::Proc, String, PathBuf, [tempfile::TempDir; 2]) {
    let pki = tempfile::tempdir().expect("tmp");
    let dir = pki.path();
    make_ca(dir);
    let (cert, key) = make_server_cert(dir, serial);
    let config = format!("[tls]\ncert = {cert:?}\nkey = {key:?}\n");
    let ca = dir.join("ca.pem");
    let tls = keycard_client::ClientTls::with_ca_file(&ca, "127.0.0.1").expect("tls");
    let (server, http, data) = super::rest_server_on(users, &[], &config, Some(&tls)).await;
    (server, http, ca, [pki, data])
}
