//! No password or password-equivalent at rest or on the wire (DESIGN §7.1):
//! users with known passwords are created (scram-sha-256, password and
//! opaque) and
//! log in; then every byte of
//! the data directory and every byte that crossed the wire is searched for
//! the password, its SHA-256 and its SHA-1 (raw, hex and base64), and the
//! stored values are presented as passwords and must fail.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use keycard_auth::{ClientMethod, OpaqueClient, Password, PasswordClient, ScramClient};
use keycard_client::Client;
use keycard_proto::{ErrorCode, Msg, Path, Value};
use sha1::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_keycard");

struct Server(Child, SocketAddr);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(data: &std::path::Path) -> Server {
    start_with(data, &[])
}

fn start_with(data: &std::path::Path, extra: &[&str]) -> Server {
    use std::io::BufRead;
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log",
            "info",
            "--data",
        ])
        .arg(data)
        .args(extra)
        .env_remove("KEYCARD_SEAL_KEY")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("server output").expect("line");
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .expect("addr")
                .parse()
                .expect("addr");
        }
    };
    // Keep draining the log, and keep it for the log search below.
    let log = data.join("server.log.copy");
    std::thread::spawn(move || {
        let mut all = String::new();
        for l in lines.map_while(Result::ok) {
            all.push_str(&l);
            all.push('\n');
            let _ = std::fs::write(&log, &all);
        }
    });
    Server(child, addr)
}

/// A TCP proxy that records every byte in both directions.
async fn recording_proxy(target: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(target).await.expect("connect");
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let r1 = rec.clone();
            let r2 = rec.clone();
            tokio::spawn(async move {
                let mut b = vec![0u8; 65536];
                while let Ok(n) = cr.read(&mut b).await {
                    if n == 0 || sw.write_all(&b[..n]).await.is_err() {
                        break;
                    }
                    r1.lock().expect("lock").extend_from_slice(&b[..n]);
                }
            });
            tokio::spawn(async move {
                let mut b = vec![0u8; 65536];
                while let Ok(n) = sr.read(&mut b).await {
                    if n == 0 || cw.write_all(&b[..n]).await.is_err() {
                        break;
                    }
                    r2.lock().expect("lock").extend_from_slice(&b[..n]);
                }
            });
        }
    });
    (addr, seen)
}

/// The byte strings that must never appear: the password and its SHA-256
/// and SHA-1 digests, raw, hex and base64.
fn forbidden(password: &str) -> Vec<(String, Vec<u8>)> {
    let sha256 = sha2::Sha256::digest(password.as_bytes()).to_vec();
    let sha1 = sha1::Sha1::digest(password.as_bytes()).to_vec();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = vec![("password".to_owned(), password.as_bytes().to_vec())];
    for (name, d) in [("sha256", sha256), ("sha1", sha1)] {
        out.push((
            format!("{name} hex"),
            keycard_proto::hex::encode(&d).into_bytes(),
        ));
        out.push((format!("{name} base64"), b64.encode(&d).into_bytes()));
        out.push((name.to_owned(), d));
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn all_bytes(dir: &std::path::Path, skip: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == skip) {
            continue;
        }
        if p.is_dir() {
            out.extend(all_bytes(&p, skip));
        } else {
            out.extend(std::fs::read(&p).expect("read file"));
        }
    }
    out
}

fn opaque_client(user: &str, pw: &str) -> OpaqueClient {
    OpaqueClient {
        user: user.into(),
        password: Password::new(pw),
    }
}

fn pw_client(user: &str, pw: &str) -> PasswordClient {
    PasswordClient {
        user: user.into(),
        password: Password::new(pw),
    }
}

const USERS: [(&str, &str); 3] = [
    ("alice", "correct horse battery staple"),
    ("bob", "Tr0ub4dor&3-but-longer"),
    ("carol", "pässwörd ünïcode"),
];

/// The users of [`USERS`] with each of scram-sha-256, password and
/// opaque.
async fn create_users(admin: &Client) {
    for (user, pw) in USERS {
        admin
            .set_user(&ScramClient::new(user, Password::new(pw)))
            .await
            .expect("create");
        admin.set_user(&pw_client(user, pw)).await.expect("create");
        admin
            .set_user(&opaque_client(user, pw))
            .await
            .expect("create");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_or_equivalent_at_rest_on_the_wire_or_in_logs() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let server = start(&data);
    let (proxy, wire) = recording_proxy(server.1).await;

    let admin = Client::connect(proxy).await.expect("connect");
    create_users(&admin).await;
    // `password` and `opaque` logins while the server is open (any method
    // is accepted).
    for (user, pw) in USERS {
        let c = Client::connect(proxy).await.expect("connect");
        c.login(&pw_client(user, pw)).await.expect("password login");
        let c = Client::connect(proxy).await.expect("connect");
        c.login(&opaque_client(user, pw))
            .await
            .expect("opaque login");
        let c = Client::connect(proxy).await.expect("connect");
        let e = c
            .login(&pw_client(user, &format!("{pw}!")))
            .await
            .expect_err("wrong");
        assert_eq!(e.code(), Some(ErrorCode::AuthFailed));
    }
    admin
        .request(
            Msg::new()
                .with("action", "set_auth_typ")
                .with("typ", "scram-sha-256"),
        )
        .await
        .expect("current");
    for (user, pw) in USERS {
        let c = Client::connect(proxy).await.expect("connect");
        c.login(&ScramClient::new(user, Password::new(pw)))
            .await
            .expect("login");
        c.set(&Path::parse("x").expect("p"), 1.into())
            .await
            .expect("data");
        // And a failed attempt with a near miss.
        let c = Client::connect(proxy).await.expect("connect");
        let e = c
            .login(&ScramClient::new(user, Password::new(format!("{pw}!"))))
            .await
            .expect_err("wrong");
        assert_eq!(e.code(), Some(ErrorCode::AuthFailed));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(server);

    let at_rest = all_bytes(&data, "server.log.copy");
    let on_wire = wire.lock().expect("lock").clone();
    let log = std::fs::read(data.join("server.log.copy")).unwrap_or_default();
    assert!(
        at_rest.len() > 10_000,
        "the store file was read ({} bytes)",
        at_rest.len()
    );
    assert!(
        on_wire.len() > 1_000,
        "the wire was recorded ({} bytes)",
        on_wire.len()
    );
    for (_, pw) in USERS {
        for (what, needle) in forbidden(pw) {
            assert!(
                !contains(&at_rest, &needle),
                "{what} of a password found at rest"
            );
            assert!(
                !contains(&on_wire, &needle),
                "{what} of a password found on the wire"
            );
            assert!(
                !contains(&log, &needle),
                "{what} of a password found in the log"
            );
        }
    }

    // Presenting what is stored as the password does not log in. Read
    // alice's record straight from the store file (the server is stopped).
    let record = {
        use keycard_store::Store;
        let store = keycard_store::RedbStore::open(&data.join("keycard.redb"), Default::default())
            .expect("open store");
        let rec_path = Path::parse(":n.auth.scram-sha-256.user.alice").expect("path");
        store
            .get(&rec_path)
            .await
            .expect("get")
            .expect("alice's record")
            .value
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let server = start(&data);
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut candidates = Vec::new();
    for field in ["stored_key", "server_key", "salt"] {
        let bytes = record
            .get(field)
            .and_then(Value::as_bin)
            .expect("field")
            .to_vec();
        candidates.push(b64.encode(&bytes));
        candidates.push(keycard_proto::hex::encode(&bytes));
    }
    for candidate in candidates {
        let c = Client::connect(server.1).await.expect("connect");
        let m = ScramClient::new("alice", Password::new(candidate));
        assert_eq!(m.name(), "scram-sha-256");
        let e = c
            .login(&m)
            .await
            .expect_err("a stored value is not a password");
        assert_eq!(e.code(), Some(ErrorCode::AuthFailed));
    }
}

/// Every byte string of at least 8 bytes in `v` (bytes, and text such
/// as a PHC string or a verifier), found all the way down.
fn byte_strings(v: &Value, out: &mut Vec<Vec<u8>>) {
    match v {
        Value::Bin(b) if b.len() >= 8 => out.push(b.clone()),
        Value::Str(s) if s.len() >= 8 => out.push(s.as_bytes().to_vec()),
        Value::Array(items) => items.iter().for_each(|i| byte_strings(i, out)),
        Value::Map(entries) => entries.iter().for_each(|(_, i)| byte_strings(i, out)),
        _ => {}
    }
}

/// With a seal key, no secret record's content is anywhere in the data
/// directory in clear: users of scram-sha-256, password and opaque, a
/// TOTP secret, a token, a REST session, the server's secret and the
/// OPAQUE setup. The
/// records are read back through the seal with the key (the server
/// stopped), and every byte string of at least 8 bytes they hold —
/// SCRAM's StoredKey, ServerKey and salt, Argon2id's PHC string, the
/// OPAQUE envelope, the token's hash, a REST session's key — is searched
/// for in every file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_secrets_never_appear_in_clear_in_the_data_directory() {
    use keycard_store::Store;
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let key_file = dir.path().join("seal.key");
    let made = Command::new(BIN)
        .args(["seal", "init"])
        .arg(&key_file)
        .output()
        .expect("seal init");
    assert!(made.status.success());
    let k = key_file.to_str().expect("utf-8");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let http = format!("127.0.0.1:{port}");
    let server = start_with(&data, &["--seal-key-file", k, "--http", &http]);
    let admin = Client::connect(server.1).await.expect("connect");
    create_users(&admin).await;
    // A REST session, kept (sealed) with its key.
    let rest = keycard_client::rest::RestClient::new(http.clone());
    let session = rest
        .login(
            keycard_client::rest::Login::scram(USERS[0].0, Password::new(USERS[0].1))
                .expect("login"),
        )
        .await
        .expect("a REST session");
    let totp = keycard_auth::ClientRegistry::make(keycard_auth::TOTP, Some("alice")).expect("m");
    admin.set_user(totp.as_ref()).await.expect("totp");
    for (user, pw) in USERS {
        let c = Client::connect(server.1).await.expect("connect");
        c.login(&opaque_client(user, pw)).await.expect("login");
    }
    let token = admin
        .request(
            Msg::new()
                .with("action", "token_create")
                .with("user", "alice"),
        )
        .await;
    assert!(token.is_ok(), "a token on the open server: {token:?}");
    drop(admin);
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(server);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The records in clear, through the seal.
    let key = keycard_server::seal::SealKey::read_file(&key_file).expect("key");
    let store = keycard_store::RedbStore::open(&data.join("keycard.redb"), Default::default())
        .expect("open store");
    let ring = store
        .get(&keycard_server::seal::keyring_path())
        .await
        .expect("get")
        .expect("a keyring");
    let sealer = keycard_server::seal::Sealer::unlock(&key, &ring.value).expect("unlock");
    let mut needles = Vec::new();
    let mut records = 0;
    let mut cursor = None;
    loop {
        let after = cursor
            .as_ref()
            .map_or(keycard_store::After::Start, keycard_store::After::Cursor);
        let page = store
            .scan(&Path::root(), Default::default(), after, 1000)
            .await
            .expect("scan");
        for (path, e) in &page.items {
            if !keycard_server::seal::is_secret(path) {
                continue;
            }
            records += 1;
            let clear = sealer
                .open(path, &e.value)
                .expect("opens where it was sealed");
            byte_strings(&clear, &mut needles);
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    drop(store);
    // Not secrets: the names of methods and users a record mentions (a
    // token's user and its method), which the paths spell anyway.
    let names: Vec<Vec<u8>> = keycard_auth::ClientRegistry::all()
        .map(|i| i.name)
        .chain(USERS.iter().map(|(u, _)| *u))
        .map(|n| n.as_bytes().to_vec())
        .collect();
    needles.retain(|n| !names.contains(n));
    // The session key is among them.
    assert!(needles.iter().any(|n| n.as_slice() == session.key.expose()));
    // 3 users × 3 methods, TOTP, a token, a REST session, the secret, the
    // OPAQUE setup.
    assert!(records >= 14, "{records} secret records");
    assert!(needles.len() >= 20, "{} byte strings", needles.len());
    let at_rest = all_bytes(&data, "server.log.copy");
    assert!(at_rest.len() > 10_000, "{} bytes read", at_rest.len());
    for needle in &needles {
        assert!(
            !contains(&at_rest, needle),
            "a secret record's {} bytes found in clear at rest: {:?}",
            needle.len(),
            String::from_utf8_lossy(needle)
        );
    }
}
