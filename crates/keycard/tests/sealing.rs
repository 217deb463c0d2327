//! Secrets sealed at rest, as an operator runs it: `keycard seal init`,
//! `keycard serve --seal-key-file` (or KEYCARD_SEAL_KEY), the refusals
//! of a sealed directory without its key, with another, with a truncated
//! or world-readable key file, an unsealed directory given a key, and
//! `keycard seal enable` sealing an existing one.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use keycard_auth::{Password, ScramClient};
use keycard_client::Client;

mod support;

use support::{bin_command, Proc};

const PW: &str = "correct horse battery staple";

/// `keycard serve` with `extra` flags on `data`, which must refuse to
/// start: its exit code and what it said.
fn refused(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--data"];
    let d = data.to_str().expect("utf-8");
    args.push(d);
    args.extend_from_slice(extra);
    let mut child = bin_command(&args, env)
        .env_remove("KEYCARD_SEAL_KEY")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            use std::io::Read;
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started where it must refuse: {extra:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn seal_init(file: &Path) {
    let out = bin_command(&["seal", "init", file.to_str().expect("utf-8")], &[])
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn add_user(addr: std::net::SocketAddr, user: &str) {
    let c = Client::connect(addr).await.expect("connect");
    c.set_user(&ScramClient::new(user, Password::new(PW)))
        .await
        .expect("user");
}

async fn logs_in(addr: std::net::SocketAddr, user: &str) -> bool {
    let c = Client::connect(addr).await.expect("connect");
    c.login(&ScramClient::new(user, Password::new(PW)))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_directory_opens_with_its_key_only() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let key = tmp.path().join("seal.key");
    let k = key.to_str().expect("utf-8");
    seal_init(&key);
    // Never replaced.
    let again = bin_command(&["seal", "init", k], &[])
        .output()
        .expect("runs");
    assert_eq!(again.status.code(), Some(1));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
    {
        let server = Proc::start_with(&data, &["--seal-key-file", k]);
        assert!(server.log().contains("secrets sealed"), "{}", server.log());
        add_user(server.addr, "alice").await;
        assert!(logs_in(server.addr, "alice").await);
    }
    // Without the key: refused, saying how to give it.
    let (code, err) = refused(&data, &[], &[]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("sealed") && err.contains("--seal-key-file"),
        "{err}"
    );
    // Another key: refused as a wrong key, not a damaged store.
    let other = tmp.path().join("other.key");
    seal_init(&other);
    let (code, err) = refused(&data, &["--seal-key-file", other.to_str().expect("u")], &[]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("not the one") && err.contains("wrong key"),
        "{err}"
    );
    assert!(!err.contains("corrupt"), "{err}");
    // A truncated key file.
    let short = tmp.path().join("short.key");
    let text = std::fs::read_to_string(&key).expect("key");
    std::fs::write(&short, &text[..20]).expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let (code, err) = refused(&data, &["--seal-key-file", short.to_str().expect("u")], &[]);
    assert_ne!(code, Some(0));
    assert!(err.contains("32 bytes"), "{err}");
    // A key file others may read.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let open = tmp.path().join("open.key");
        std::fs::copy(&key, &open).expect("copy");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let (code, err) = refused(&data, &["--seal-key-file", open.to_str().expect("u")], &[]);
        assert_ne!(code, Some(0));
        assert!(err.contains("chmod 600"), "{err}");
    }
    // The key in KEYCARD_SEAL_KEY opens it, and alice is there.
    let server = Proc::start_with_env(&data, &[], &[("KEYCARD_SEAL_KEY", text.trim())]);
    assert!(logs_in(server.addr, "alice").await);
    // No secret key material in the server's log.
    assert!(!server.log().contains(text.trim()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_enable_seals_an_existing_directory() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let key = tmp.path().join("seal.key");
    let k = key.to_str().expect("utf-8");
    {
        let server = Proc::start(&data);
        assert!(server.log().contains("not sealed"), "{}", server.log());
        add_user(server.addr, "bob").await;
    }
    seal_init(&key);
    // A key for a directory whose secrets are not sealed: refused, with
    // the way to seal them.
    let (code, err) = refused(&data, &["--seal-key-file", k], &[]);
    assert_ne!(code, Some(0));
    assert!(err.contains("keycard seal enable"), "{err}");
    let d = data.to_str().expect("utf-8");
    let out = bin_command(&["seal", "enable", "--data", d, "--seal-key-file", k], &[])
        .output()
        .expect("runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("sealed"), "{said}");
    // Again: nothing left to seal, nothing broken.
    let out = bin_command(&["seal", "enable", "--data", d, "--seal-key-file", k], &[])
        .output()
        .expect("runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("sealed 0 secret records"), "{said}");
    // Now it needs the key, and bob logs in with it.
    let (code, _) = refused(&data, &[], &[]);
    assert_ne!(code, Some(0));
    let server = Proc::start_with(&data, &["--seal-key-file", k]);
    assert!(logs_in(server.addr, "bob").await);
}

/// Someone with the data directory but not the key moves a sealed record
/// to another user's place, or plants a record in clear: neither opens,
/// so neither logs anyone in; the user whose record it was still does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_or_planted_record_does_not_open() {
    use keycard_proto::{Elem, Path, Value};
    use keycard_store::{Op, Store};
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let key = tmp.path().join("seal.key");
    let k = key.to_str().expect("utf-8");
    seal_init(&key);
    {
        let server = Proc::start_with(&data, &["--seal-key-file", k]);
        add_user(server.addr, "alice").await;
        add_user(server.addr, "bob").await;
        add_user(server.addr, "carol").await;
    }
    let record = |user: &str| {
        Path::new(vec![
            Elem::Nil,
            "auth".into(),
            keycard_auth::SCRAM_SHA_256.into(),
            "user".into(),
            user.into(),
        ])
    };
    {
        let store = keycard_store::RedbStore::open(
            &data.join(keycard_server::STORE_FILE),
            Default::default(),
        )
        .expect("open");
        let alices = store
            .get(&record("alice"))
            .await
            .expect("get")
            .expect("alice")
            .value;
        assert!(matches!(&alices, Value::Bin(b) if b.starts_with(b"kcs1")));
        // alice's sealed record where bob's was; a record in clear (a
        // verifier the planter knows) where carol's was.
        let v =
            keycard_auth::Verifier::generate(&Password::new("planted"), 4096).expect("verifier");
        let clear = keycard_proto::Msg::new()
            .with("salt", v.salt.clone())
            .with("iterations", u64::from(v.iterations))
            .with("stored_key", v.stored_key.to_vec())
            .with("server_key", v.server_key.to_vec())
            .into_value();
        store
            .write(vec![
                Op::put(record("bob"), alices),
                Op::put(record("carol"), clear),
            ])
            .await
            .expect("write");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let server = Proc::start_with(&data, &["--seal-key-file", k]);
    assert!(logs_in(server.addr, "alice").await, "alice's own");
    assert!(
        !logs_in(server.addr, "bob").await,
        "alice's record moved to bob"
    );
    let c = Client::connect(server.addr).await.expect("connect");
    let planted = c
        .login(&ScramClient::new("carol", Password::new("planted")))
        .await;
    assert!(planted.is_err(), "a planted record in clear");
    // Each refused for what it is, at its own place.
    let log = server.log();
    assert!(
        log.contains("a sealed value that does not open (moved or damaged) at :n.auth.scram-sha-256.user.bob"),
        "{log}"
    );
    assert!(
        log.contains("a value that is not sealed at :n.auth.scram-sha-256.user.carol"),
        "{log}"
    );
}

/// Rotation while clients log in all the time: `seal rotate --data`
/// seals every record again under a new data key and drops the old one,
/// `seal rotate --new-key-file` wraps the keys with a new seal key; no
/// login fails meanwhile; afterwards every secret value in the store is
/// sealed with the new data key, the old seal key opens nothing, and the
/// server starts with the new key only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_a_login_storm_fails_no_login_and_retires_the_old_keys() {
    use keycard_store::Store;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let key = tmp.path().join("seal.key");
    let new_key = tmp.path().join("new.key");
    let k = key.to_str().expect("utf-8");
    let nk = new_key.to_str().expect("utf-8");
    seal_init(&key);
    seal_init(&new_key);
    let server = Proc::start_with(&data, &["--seal-key-file", k]);
    let users: Vec<String> = (0..6).map(|i| format!("user{i}")).collect();
    for u in &users {
        add_user(server.addr, u).await;
    }
    // Enough records that the re-sealing overlaps the storm.
    let admin = Client::connect(server.addr).await.expect("connect");
    for i in 0..300 {
        let m = keycard_auth::ClientRegistry::make(keycard_auth::ANON, Some(&format!("svc{i}")))
            .expect("m");
        admin.set_user(m.as_ref()).await.expect("user");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut storm = Vec::new();
    for u in users.clone() {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), server.addr);
        storm.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match logs_in(addr, &u).await {
                    true => ok.fetch_add(1, Ordering::Relaxed),
                    false => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr = server.addr;
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            support::cli(addr, &args, &[])
        })
    };
    let (code, out, err) = run(vec!["seal".into(), "rotate".into(), "--data".into()])
        .await
        .expect("join");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("old data keys dropped"), "{err}");
    let resealed: u64 = err
        .split(" sealed again")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|n| n.trim().parse().ok())
        .expect("a count");
    assert!(resealed >= 306, "{err}");
    let (code, out, err) = run(vec![
        "seal".into(),
        "rotate".into(),
        "--new-key-file".into(),
        nk.into(),
    ])
    .await
    .expect("join");
    assert_eq!(code, Some(0), "{out}{err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in storm {
        t.await.expect("storm task");
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no login failed");
    assert!(ok.load(Ordering::Relaxed) > 10, "logins went on");
    let (code, out, err) = run(vec!["seal".into(), "status".into()])
        .await
        .expect("join");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("keys held: 2\n") || out.contains("keys held: 2 "),
        "{out}"
    );
    drop(server);
    tokio::time::sleep(Duration::from_millis(300)).await;
    {
        let store = keycard_store::RedbStore::open(
            &data.join(keycard_server::STORE_FILE),
            Default::default(),
        )
        .expect("open");
        let ring = store
            .get(&keycard_server::seal::keyring_path())
            .await
            .expect("get")
            .expect("keyring")
            .value;
        let old = keycard_server::seal::SealKey::read_file(&key).expect("old");
        let new = keycard_server::seal::SealKey::read_file(&new_key).expect("new");
        assert!(keycard_server::seal::Sealer::unlock(&old, &ring).is_err());
        let sealer = keycard_server::seal::Sealer::unlock(&new, &ring).expect("new key");
        assert_eq!(sealer.data_keys(), (2, vec![2]));
        let items = store
            .scan_up_to(&keycard_proto::Path::root(), Default::default(), 100_000)
            .await
            .expect("scan");
        let mut secrets = 0;
        for (p, e) in items {
            if keycard_server::seal::is_secret(&p) {
                secrets += 1;
                assert_eq!(
                    keycard_server::seal::Sealer::sealed_with(&e.value),
                    Some(2),
                    "{p}"
                );
            }
        }
        assert!(secrets >= 308, "{secrets}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, err) = refused(&data, &["--seal-key-file", k], &[]);
    assert_ne!(code, Some(0));
    assert!(err.contains("not the one"), "{err}");
    let server = Proc::start_with(&data, &["--seal-key-file", nk]);
    for u in &users {
        assert!(logs_in(server.addr, u).await, "{u}");
    }
}

/// The CLI sends a new seal key only over TLS or to this machine: to a
/// server elsewhere over plaintext it refuses before connecting.
#[test]
fn a_new_seal_key_never_leaves_over_plaintext() {
    let tmp = tempfile::tempdir().expect("tmp");
    let key = tmp.path().join("new.key");
    seal_init(&key);
    let out = bin_command(
        &[
            "seal",
            "rotate",
            "--new-key-file",
            key.to_str().expect("utf-8"),
            "-s",
            "192.0.2.10:27586",
        ],
        &[],
    )
    .output()
    .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("only over TLS"), "{err}");
}
