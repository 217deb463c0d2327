//! A full disk (found in review), for real: the data directory is a small
//! tmpfs that the test fills and frees. Needs root (to mount); it says so
//! and passes without it.

mod common;

use std::io::Write;
use std::path::{Path as FsPath, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use keycard_auth::{Password, ScramClient};
use keycard_client::{Client, ClientError};
use keycard_proto::{ErrorCode, Msg, Path, Value};
use keycard_server::{Config, Server};

/// A tmpfs mounted on a temp directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tmp");
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }

    fn path(&self) -> &FsPath {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: the server's store thread may still hold its file.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the file system holding `dir` with one file, but for `spare`
/// bytes; returns its path.
fn fill(dir: &FsPath, spare: u64) -> PathBuf {
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).expect("filler");
    let chunk = vec![0x5a; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    // The last partial chunk may have gone in: fill byte by byte.
    while f.write_all(&[0]).is_ok() {}
    let len = f.metadata().expect("len").len();
    f.set_len(len.saturating_sub(spare)).expect("truncate");
    filler
}

fn p(s: &str) -> Path {
    Path::parse(s).expect("path")
}

const PASSWORD: &str = "correct horse battery";

async fn login(addr: std::net::SocketAddr) -> Result<Client, ClientError> {
    let c = Client::connect(addr).await?;
    c.login(&ScramClient::new("alice", Password::new(PASSWORD)))
        .await?;
    Ok(c)
}

/// Found in review: after one ENOSPC, redb refused every
/// later read and write ("previous I/O error"), so every write and every
/// SCRAM login, even with the right password, failed until a restart —
/// and stayed so after space came back. Now a failed write is
/// `store_failed`, a login never answers `auth_failed` for the right
/// password, and once space is back the store (reopened by its writer)
/// takes writes and logins again, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_a_full_disk_heals_once_space_is_back() {
    let Some(fs) = Tmpfs::mount("8m") else {
        eprintln!("skipped: cannot mount a tmpfs (not root?)");
        return;
    };
    let server = Server::open(Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data: fs.path().join("data"),
        ..Config::default()
    })
    .await
    .expect("server starts");
    let handle = server.spawn().expect("spawn");
    let addr = handle.addr;
    let admin = Client::connect(addr).await.expect("connect");
    admin
        .set_user(&ScramClient::new("alice", Password::new(PASSWORD)))
        .await
        .expect("alice");
    admin.set(&p("before"), 1.into()).await.expect("set");
    admin
        .request(
            Msg::new()
                .with("action", "set_auth_typ")
                .with("typ", "scram-sha-256"),
        )
        .await
        .expect("current");
    let alice = login(addr).await.expect("alice logs in");

    // The disk fills up: writes fail, with store_failed, until one does.
    // A little room is left: some writes go in before the disk is full.
    let filler = fill(fs.path(), 256 << 10);
    let value = Value::Bin(vec![7; 16 << 10]);
    let mut written = 0;
    let failure = loop {
        assert!(written < 2000, "the disk never filled up");
        match alice
            .set(&p(&format!("fill.k{written}")), value.clone())
            .await
        {
            Ok(_) => written += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(failure.code(), Some(ErrorCode::StoreFailed), "{failure}");
    eprintln!("the disk filled up after {written} writes: {failure}");
    // More writes fail the same way (not with a panic or a hang), and a
    // login with the right password is never a wrong password.
    for i in 0..3 {
        let e = alice
            .set(&p(&format!("more.k{i}")), value.clone())
            .await
            .expect_err("the disk is full");
        assert_eq!(e.code(), Some(ErrorCode::StoreFailed), "{e}");
        match login(addr).await {
            Ok(_) => eprintln!("disk full: a login succeeded"),
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::StoreFailed), "{e}"),
        }
    }
    // A read while the disk is full answers the value or store_failed
    // (while the store is being reopened), nothing else.
    match alice.get(&p("before")).await {
        Ok(got) => assert_eq!(got.map(|n| n.value), Some(Value::from(1))),
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::StoreFailed), "{e}"),
    }

    // Space comes back: writes and logins work again, without a restart.
    std::fs::remove_file(&filler).expect("free the space");
    let t = Instant::now();
    loop {
        match alice.set(&p("after"), 2.into()).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::StoreFailed), "{e}");
                assert!(
                    t.elapsed() < Duration::from_secs(5),
                    "still failing 5 s after space came back: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let again = login(addr).await.expect("the right password logs in again");
    for (path, want) in [("before", Value::from(1)), ("after", Value::from(2))] {
        let got = again.get(&p(path)).await.expect("read").map(|n| n.value);
        assert_eq!(got, Some(want), "{path}");
    }
    for i in 0..written {
        let got = again
            .get(&p(&format!("fill.k{i}")))
            .await
            .expect("read")
            .map(|n| n.value);
        assert_eq!(got.as_ref(), Some(&value), "acknowledged write {i} lost");
    }
    drop((alice, again, admin));
    drop(handle);
}
