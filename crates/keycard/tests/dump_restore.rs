//! `keycard dump` and `keycard restore` (docs/SEALING.md): a dump taken
//! during a write storm is the tree at one tock, restored whole (same
//! nodes, same tocks) into an empty directory where every user logs in
//! with the same seal key; a damaged or truncated file, a wrong or
//! missing key, or a directory that holds a store writes nothing; a dump
//! never holds the seal key.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keycard_auth::{Password, ScramClient};
use keycard_client::Client;
use keycard_proto::Path;
use keycard_store::{Entry, Store};

mod support;

use support::{bin_command, Proc};

const PW: &str = "correct horse battery staple";

/// Every node of the store file in `data` (the server stopped).
async fn tree(data: &std::path::Path) -> BTreeMap<Path, Entry> {
    let store =
        keycard_store::RedbStore::open(&data.join(keycard_server::STORE_FILE), Default::default())
            .expect("open");
    let items = store
        .scan_up_to(&Path::root(), Default::default(), 1_000_000)
        .await
        .expect("scan");
    items.into_iter().collect()
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = bin_command(args, env).output().expect("runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_during_writes_restores_the_tree_at_one_tock() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let key = tmp.path().join("seal.key");
    let k = key.to_str().expect("utf-8");
    assert_eq!(run(&["seal", "init", k], &[]).0, Some(0));
    let server = Proc::start_with(&data, &["--seal-key-file", k]);
    let admin = Client::connect(server.addr).await.expect("admin");
    let users = ["alice", "bob", "carol"];
    for u in users {
        admin
            .set_user(&ScramClient::new(u, Password::new(PW)))
            .await
            .expect("user");
    }
    for i in 0..300 {
        let p = Path::parse(&format!("app.n{i}")).expect("p");
        admin.set(&p, i.into()).await.expect("set");
    }
    // Writers all through the dump.
    let stop = Arc::new(AtomicBool::new(false));
    let storm = {
        let (stop, addr) = (stop.clone(), server.addr);
        tokio::spawn(async move {
            let c = Client::connect(addr).await.expect("writer");
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let p = Path::parse(&format!("app.n{}", i % 400)).expect("p");
                c.set(&p, (10_000 + i).into()).await.expect("set");
                i += 1;
            }
            i
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let file = tmp.path().join("tree.dump");
    let f = file.to_str().expect("utf-8");
    let addr = server.addr;
    let fcopy = f.to_owned();
    let dumped = tokio::task::spawn_blocking(move || support::cli(addr, &["dump", &fcopy], &[]))
        .await
        .expect("join");
    assert_eq!(dumped.0, Some(0), "{}{}", dumped.1, dumped.2);
    stop.store(true, Ordering::Relaxed);
    let writes = storm.await.expect("storm");
    assert!(writes > 10, "{writes} writes during the dump");
    // A dump is never replaced.
    let again = support::cli(addr, &["dump", f], &[]);
    assert_ne!(again.0, Some(0));
    drop(admin);
    drop(server);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let source = tree(&data).await;

    // The seal key is nowhere in the dump.
    let bytes = std::fs::read(&file).expect("dump");
    let key_text = std::fs::read_to_string(&key).expect("key");
    let raw = keycard_server::seal::SealKey::read_file(&key).expect("key");
    assert!(!bytes.windows(32).any(|w| w == raw.expose()));
    assert!(!bytes
        .windows(key_text.trim().len())
        .any(|w| w == key_text.trim().as_bytes()));

    // Restored: the tree at the dump's tock.
    let restored_dir = tmp.path().join("restored");
    let r = restored_dir.to_str().expect("utf-8");
    let (code, err) = run(&["restore", f, "--data", r, "--seal-key-file", k], &[]);
    assert_eq!(code, Some(0), "{err}");
    let tock: u64 = err
        .split("at tock ")
        .nth(1)
        .and_then(|t| t.split(';').next())
        .and_then(|t| t.trim().parse().ok())
        .expect("the tock");
    let restored = tree(&restored_dir).await;
    assert!(restored.len() > 300, "{}", restored.len());
    for (path, e) in &restored {
        assert!(e.tock.0 <= tock, "{path}");
        let now = source.get(path).expect("still in the source");
        assert!(now == e || now.tock.0 > tock, "{path}: {now:?} vs {e:?}");
    }
    for (path, e) in &source {
        if e.tock.0 <= tock {
            assert_eq!(restored.get(path), Some(e), "{path}");
        }
    }
    // Every user logs in on the restored directory, with the same key.
    let server = Proc::start_with(&restored_dir, &["--seal-key-file", k]);
    for u in users {
        let c = Client::connect(server.addr).await.expect("connect");
        c.login(&ScramClient::new(u, Password::new(PW)))
            .await
            .expect("logs in");
    }
    let c = Client::connect(server.addr).await.expect("connect");
    // New writes go on from the dump's tock.
    let out = c
        .set(&Path::parse("after.restore").expect("p"), 1.into())
        .await
        .expect("write");
    assert!(out.tock > tock, "{} after {tock}", out.tock);
    drop(server);

    // Refusals that write nothing.
    let refused = |name: &str, file: &std::path::Path, env: &[(&str, &str)], key: bool| {
        let dir = tmp.path().join(name);
        let d = dir.to_str().expect("utf-8").to_owned();
        let f = file.to_str().expect("utf-8").to_owned();
        let mut args = vec!["restore".to_owned(), f, "--data".to_owned(), d];
        if key {
            args.push("--seal-key-file".into());
            args.push(k.to_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, err) = run(&args, env);
        assert_ne!(code, Some(0), "{name}: {err}");
        assert!(
            !dir.join(keycard_server::STORE_FILE).exists(),
            "{name}: a store was written"
        );
        err
    };
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let bad = tmp.path().join("flipped.dump");
    std::fs::write(&bad, &flipped).expect("write");
    let err = refused("flipped", &bad, &[], true);
    assert!(err.contains("checksum"), "{err}");
    let short = tmp.path().join("short.dump");
    std::fs::write(&short, &bytes[..bytes.len() - 100]).expect("write");
    let err = refused("short", &short, &[], true);
    assert!(err.contains("not a whole keycard dump"), "{err}");
    let err = refused("nokey", &file, &[], false);
    assert!(err.contains("seal key"), "{err}");
    let other = tmp.path().join("other.key");
    assert_eq!(
        run(&["seal", "init", other.to_str().expect("u")], &[]).0,
        Some(0)
    );
    let other_text = std::fs::read_to_string(&other).expect("key");
    let err = refused(
        "wrongkey",
        &file,
        &[("KEYCARD_SEAL_KEY", other_text.trim())],
        false,
    );
    assert!(err.contains("not the one"), "{err}");
    // Into a directory that holds a store: refused.
    let (code, err) = run(&["restore", f, "--data", r, "--seal-key-file", k], &[]);
    assert_ne!(code, Some(0));
    assert!(err.contains("holds a store"), "{err}");
}

/// Moving: a dump of the embedded store restored into PostgreSQL serves
/// the same tree, tocks and logins there; a dump of that restored back
/// into a data directory gives the same tree again. A schema that holds
/// data already is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_moves_to_postgres_and_back() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let key = tmp.path().join("seal.key");
    let k = key.to_str().expect("utf-8");
    assert_eq!(run(&["seal", "init", k], &[]).0, Some(0));
    let server = Proc::start_with(&data, &["--seal-key-file", k]);
    let admin = Client::connect(server.addr).await.expect("admin");
    admin
        .set_user(&ScramClient::new("alice", Password::new(PW)))
        .await
        .expect("user");
    for i in 0..50 {
        let p = Path::parse(&format!("app.n{i}")).expect("p");
        admin.set(&p, i.into()).await.expect("set");
    }
    let first = tmp.path().join("first.dump");
    let f1 = first.to_str().expect("utf-8");
    let out = support::cli(server.addr, &["dump", f1], &[]);
    assert_eq!(out.0, Some(0), "{}{}", out.1, out.2);
    drop(admin);
    drop(server);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let source = tree(&data).await;

    // Into PostgreSQL.
    let schema = keycard_pgtest::TestSchema::new();
    let url = schema.url("sslmode=disable");
    let (code, err) = run(&["restore", f1, "--store", &url, "--seal-key-file", k], &[]);
    assert_eq!(code, Some(0), "{err}");
    let pg_dir = tmp.path().join("pg-node");
    let node = Proc::start_with(&pg_dir, &["--store", &url, "--seal-key-file", k]);
    let c = Client::connect(node.addr).await.expect("connect");
    c.login(&ScramClient::new("alice", Password::new(PW)))
        .await
        .expect("alice logs in on PostgreSQL");
    for (path, e) in &source {
        if path.elems().first() == Some(&keycard_proto::Elem::Nil) {
            continue;
        }
        let got = c.get(path).await.expect("get").expect("there");
        assert_eq!((got.value, got.tock), (e.value.clone(), e.tock.0), "{path}");
    }
    drop(c);
    // And back out.
    let second = tmp.path().join("second.dump");
    let f2 = second.to_str().expect("utf-8");
    let out = support::cli(node.addr, &["dump", f2], &[]);
    assert_eq!(out.0, Some(0), "{}{}", out.1, out.2);
    drop(node);
    let back = tmp.path().join("back");
    let b = back.to_str().expect("utf-8");
    let (code, err) = run(&["restore", f2, "--data", b, "--seal-key-file", k], &[]);
    assert_eq!(code, Some(0), "{err}");
    let returned = tree(&back).await;
    // The PostgreSQL node added its own records (its heartbeat, leases,
    // the login's marks): everything that was there came back unchanged.
    for (path, e) in &source {
        let r = returned.get(path).expect("came back");
        if path.elems().first() != Some(&keycard_proto::Elem::Nil) {
            assert_eq!(r, e, "{path}");
        }
    }
    // A schema with data is refused.
    let (code, err) = run(&["restore", f1, "--store", &url, "--seal-key-file", k], &[]);
    assert_ne!(code, Some(0));
    assert!(err.contains("holds keycard data"), "{err}");
}
