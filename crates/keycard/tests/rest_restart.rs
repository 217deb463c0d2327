//! REST sessions survive a restart, sealed (docs/SEALING.md): a session's
//! signed requests work after `kill -9` and after a clean stop, its
//! keep-alive's expiry is kept, a revoked session and a logged-out one
//! stay ended, and a request signed before the restart cannot be played
//! again after it (the nonces the session had seen are gone: nothing
//! signed before the restart is taken, nor anything at or before a `ts`
//! a session admitted ahead of the server's clock).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keycard_auth::{Password, ScramClient};
use keycard_client::rest::{Login, RestClient, Session};
use keycard_client::Client;
use keycard_proto::{Msg, Path, Value};
use sha2::Digest as _;

mod support;

use support::{free_port, Proc};

const PW: &str = "correct horse battery staple";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn start(data: &std::path::Path, key: &str, http: &str) -> Proc {
    Proc::start_with(data, &["--seal-key-file", key, "--http", http])
}

/// SCRAM users `users` (one of them granted a capability), then
/// scram-sha-256 current.
async fn scram_users(admin: &Client, users: &[&str], grant: Option<(&str, &str)>) {
    for u in users {
        admin
            .set_user(&ScramClient::new(*u, Password::new(PW)))
            .await
            .expect("user");
    }
    if let Some((user, cap)) = grant {
        let at = Path::parse(&format!("auth.scram-sha-256.user.{user}.caps")).expect("p");
        admin
            .request(
                Msg::new()
                    .with("action", "set_internal")
                    .with_path("path", &at)
                    .with(
                        "value",
                        Msg::new().with("caps", Value::Array(vec![cap.into()])),
                    ),
            )
            .await
            .expect("caps");
    }
    admin
        .request(
            Msg::new()
                .with("action", "set_auth_typ")
                .with("typ", keycard_auth::SCRAM_SHA_256),
        )
        .await
        .expect("current");
}

async fn status(rest: &RestClient, s: &Session) -> u16 {
    let target = format!("/session/{}", s.sid);
    rest.send_signed(s, "GET", &target, &[], b"")
        .await
        .expect("send")
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_sessions_survive_a_restart_and_their_ends_do_too() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let key = tmp.path().join("seal.key");
    let out = support::bin_command(&["seal", "init", key.to_str().expect("utf-8")], &[])
        .output()
        .expect("seal init");
    assert!(out.status.success());
    let k = key.to_str().expect("utf-8");
    let http = format!("127.0.0.1:{}", free_port());
    let mut server = start(&data, k, &http);
    let admin = Client::connect(server.addr).await.expect("admin");
    let users = ["alice", "bob", "carol", "dave", "keeper"];
    scram_users(&admin, &users, Some(("keeper", "manage_keycards"))).await;
    let rest = RestClient::connection_per_request(http.clone());
    let login = |u: &'static str| {
        let rest = &rest;
        async move {
            rest.login(Login::scram(u, Password::new(PW)).expect("login"))
                .await
                .expect("logged in")
        }
    };
    let alice = login("alice").await;
    let bob = login("bob").await;
    let carol = login("carol").await;
    let dave = login("dave").await;
    for s in [&alice, &bob, &carol] {
        assert_eq!(status(&rest, s).await, 200);
    }
    let kept_until = rest.keep_alive(&alice, None).await.expect("keep-alive");
    // A request signed now, sent now and kept for a replay.
    let target = format!("/session/{}", alice.sid);
    let nonce: [u8; 16] = sha2::Sha256::digest(target.as_bytes())[..16]
        .try_into()
        .expect("16");
    let header = alice.authorization("GET", &target, b"", "", "", now_secs(), nonce);
    let r = rest
        .send("GET", &target, &[("authorization", header.as_str())], b"")
        .await
        .expect("send");
    assert_eq!(r.status, 200);
    // dave's clock runs 20 s ahead: his request, signed "in the future",
    // is kept before it runs, so a restart within the window cannot take
    // it again.
    let dave_target = format!("/session/{}", dave.sid);
    let ahead = dave.authorization("GET", &dave_target, b"", "", "", now_secs() + 20, [7; 16]);
    let r = rest
        .send(
            "GET",
            &dave_target,
            &[("authorization", ahead.as_str())],
            b"",
        )
        .await
        .expect("send");
    assert_eq!(r.status, 200);
    // bob's session revoked by a keycard manager; carol logs out.
    let keeper = Client::connect(server.addr).await.expect("keeper");
    keeper
        .login(&ScramClient::new("keeper", Password::new(PW)))
        .await
        .expect("keeper");
    keeper
        .request(
            Msg::new()
                .with("action", "keycard_revoke")
                .with("id", bob.sid.as_str()),
        )
        .await
        .expect("revoke");
    rest.logout(&carol).await.expect("logout");
    assert_eq!(status(&rest, &bob).await, 401);
    assert_eq!(status(&rest, &carol).await, 401);
    drop(keeper);
    drop(admin);
    // The revocation's record goes in a task of its own: let it land.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // kill -9, then the same key: alice's session works, bob's and
    // carol's stay ended, and the old request is not taken again.
    server.kill9();
    // A signature made in the second the server starts would not be
    // taken (only what is signed after the start is): cross a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut server = start(&data, k, &http);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !server
        .log()
        .contains("REST sessions kept across the restart sessions=2")
    {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status(&rest, &alice).await, 200, "{}", server.log());
    let info = rest.session(&alice).await.expect("session");
    assert_eq!(info.user, "alice");
    assert_eq!(
        info.expires_at, kept_until,
        "the keep-alive's expiry is kept"
    );
    assert_eq!(status(&rest, &bob).await, 401, "revoked stays revoked");
    assert_eq!(status(&rest, &carol).await, 401, "logged out stays out");
    let replay = rest
        .send("GET", &target, &[("authorization", header.as_str())], b"")
        .await
        .expect("send");
    assert_eq!(replay.status, 401, "a request from before the restart");
    let replay = rest
        .send(
            "GET",
            &dave_target,
            &[("authorization", ahead.as_str())],
            b"",
        )
        .await
        .expect("send");
    assert_eq!(
        replay.status, 401,
        "a request signed ahead, from before the restart"
    );
    // dave's clock goes on, still ahead: taken.
    let next = dave.authorization("GET", &dave_target, b"", "", "", now_secs() + 22, [8; 16]);
    let r = rest
        .send(
            "GET",
            &dave_target,
            &[("authorization", next.as_str())],
            b"",
        )
        .await
        .expect("send");
    assert_eq!(r.status, 200, "dave goes on");
    // A write and a read signed by the kept session.
    let at = Path::parse("after.restart").expect("p");
    rest.put(Some(&alice), &at, &serde_json::json!(1), Default::default())
        .await
        .expect("write");
    // A clean stop (SIGTERM) and back: still there.
    let term = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let _ = server.child.wait();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let server = start(&data, k, &http);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status(&rest, &alice).await, 200, "{}", server.log());
    let got = rest.get(Some(&alice), &at).await.expect("read").expect("v");
    assert_eq!(got.value, serde_json::json!(1));
}

/// Without a seal key, REST sessions are not kept: a session key logs in
/// by itself and is not written to the data directory in clear. After a
/// restart the session is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_seal_key_rest_sessions_are_not_kept() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let http = format!("127.0.0.1:{}", free_port());
    let mut server = Proc::start_with(&data, &["--http", &http]);
    let admin = Client::connect(server.addr).await.expect("admin");
    scram_users(&admin, &["alice"], None).await;
    let rest = RestClient::connection_per_request(http.clone());
    let alice = rest
        .login(Login::scram("alice", Password::new(PW)).expect("login"))
        .await
        .expect("logged in");
    assert_eq!(status(&rest, &alice).await, 200);
    drop(admin);
    server.kill9();
    let files = std::fs::read(data.join(keycard_server::STORE_FILE)).expect("store");
    assert!(
        !files.windows(32).any(|w| w == alice.key.expose()),
        "the session key is in the store"
    );
    let _server = Proc::start_with(&data, &["--http", &http]);
    assert_eq!(status(&rest, &alice).await, 401);
}

/// Two nodes on PostgreSQL: REST sessions made on node A survive A's
/// `kill -9` and are listed on B again once A is back; a session revoked
/// through B while A was down is not brought back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_session_revoked_while_its_node_was_down_stays_ended() {
    let tmp = tempfile::tempdir().expect("tmp");
    let key = tmp.path().join("seal.key");
    let out = support::bin_command(&["seal", "init", key.to_str().expect("utf-8")], &[])
        .output()
        .expect("seal init");
    assert!(out.status.success());
    let k = key.to_str().expect("utf-8");
    let schema = keycard_pgtest::TestSchema::new();
    let url = schema.url("sslmode=disable");
    let http = format!("127.0.0.1:{}", free_port());
    let node = |dir: &str, name: &str, http: Option<&str>| {
        let mut args = vec!["--seal-key-file", k, "--store", &url, "--node", name];
        if let Some(h) = http {
            args.extend(["--http", h]);
        }
        Proc::start_with(&tmp.path().join(dir), &args)
    };
    let mut a = node("a", "a", Some(&http));
    let b = node("b", "b", None);
    let admin = Client::connect(a.addr).await.expect("admin");
    scram_users(
        &admin,
        &["alice", "bob", "keeper"],
        Some(("keeper", "manage_keycards")),
    )
    .await;
    drop(admin);
    let rest = RestClient::connection_per_request(http.clone());
    let alice = rest
        .login(Login::scram("alice", Password::new(PW)).expect("login"))
        .await
        .expect("alice");
    let bob = rest
        .login(Login::scram("bob", Password::new(PW)).expect("login"))
        .await
        .expect("bob");
    a.kill9();
    let keeper = Client::connect(b.addr).await.expect("keeper");
    keeper
        .login(&ScramClient::new("keeper", Password::new(PW)))
        .await
        .expect("keeper");
    let r = keeper
        .request(
            Msg::new()
                .with("action", "keycard_revoke")
                .with("id", bob.sid.as_str()),
        )
        .await
        .expect("revoke through B while A is down");
    assert_eq!(r.get("revoked").and_then(Value::as_u64), Some(1), "{r:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = node("a", "a", Some(&http));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !a
        .log()
        .contains("REST sessions kept across the restart sessions=1")
    {
        assert!(std::time::Instant::now() < deadline, "{}", a.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status(&rest, &alice).await, 200, "{}", a.log());
    assert_eq!(
        status(&rest, &bob).await,
        401,
        "revoked through B stays ended"
    );
    // alice's session is listed on B again.
    let mut st = keeper
        .stream(
            Msg::new()
                .with("action", "keycard_list")
                .with("user", "alice"),
        )
        .await
        .expect("list");
    let mut ids = Vec::new();
    while let Some(v) = st.next_raw().await {
        let v = v.expect("item");
        ids.push(v.get("id").and_then(Value::as_str).unwrap_or("").to_owned());
    }
    assert!(ids.contains(&alice.sid), "{ids:?} on B");
}
