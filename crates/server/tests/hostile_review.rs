//! The review of the merged issue-15 fixes: attacks (and a careless
//! operator's mistakes) where two of the changes meet. Each test is a
//! finding: it failed before its fix.

mod common;

use std::time::Duration;

use common::rest::{kv, kv_on, login, server_with, server_with_clock};
use common::{code, start_with, Raw};
use keycard_auth::{ClientRegistry, Password, ScramClient};
use keycard_client::Client;
use keycard_proto::{Msg, Path, Value};
use keycard_server::Clock;

/// A REST session kept alive works past its first expiry: keep-alive
/// moves the keycard's end in the bouncer, and `/kv` and `/user` must
/// judge the session by that, not by the expiry its login recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_session_kept_alive_keeps_working() {
    let (_s, addr, clock) = server_with_clock(|c| {
        c.keycards.duration = 2;
        c.keycards.max_lifetime = 60;
    })
    .await;
    let alice = login(addr, "alice", "correct horse")
        .await
        .ok()
        .expect("login");
    let put = kv_on(
        &clock,
        addr,
        &alice,
        "PUT",
        "/kv/app/x",
        br#"{"value": 1}"#,
        &[],
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.body);
    let first = kv_on(
        &clock,
        addr,
        &alice,
        "GET",
        &format!("/session/{}", alice.sid),
        b"",
        &[],
    )
    .await;
    let first_expiry = first.body["expires_at"].as_u64().expect("expires_at");
    let keep = format!("/session/{}/keepalive", alice.sid);
    // Kept alive every half second until well past the first expiry.
    while clock.now_ms() < first_expiry + 1_500 {
        clock.advance(Duration::from_millis(500));
        let r = kv_on(&clock, addr, &alice, "POST", &keep, b"", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let shown = kv_on(
        &clock,
        addr,
        &alice,
        "GET",
        &format!("/session/{}", alice.sid),
        b"",
        &[],
    )
    .await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert!(shown.body["expires_at"].as_u64().expect("expires_at") > first_expiry);
    let r = kv_on(&clock, addr, &alice, "GET", "/kv/app/x", b"", &[]).await;
    assert_eq!(r.status, 200, "a live session's /kv: {}", r.body);
    let r = kv_on(&clock, addr, &alice, "GET", "/user/alice", b"", &[]).await;
    assert_eq!(r.status, 200, "a live session's /user: {}", r.body);
}

/// A precondition is obeyed or refused, never dropped — on every route:
/// `/user` (a re-key, a deletion) and a read ignored `If-Match` and
/// `If-None-Match`, so a client that made its write conditional had it
/// done unconditionally. Only `PUT` and `DELETE /kv` take them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_precondition_on_a_route_that_cannot_obey_it_is_refused() {
    let (_s, addr) = server_with(|_| {}).await;
    let alice = login(addr, "alice", "correct horse")
        .await
        .ok()
        .expect("login");
    let put = kv(addr, &alice, "PUT", "/kv/app/x", br#"{"value": 1}"#, &[]).await;
    assert_eq!(put.status, 200, "{}", put.body);
    let verifier =
        keycard_auth::Verifier::generate(&keycard_auth::Password::new("new horse"), 4096)
            .expect("verifier")
            .to_text();
    let rekey = serde_json::json!({"method": "scram-sha-256", "data": verifier}).to_string();
    let sid = format!("/session/{}", alice.sid);
    for (method, path, body, pre) in [
        (
            "PUT",
            "/user/alice",
            rekey.as_bytes(),
            ("if-match", "\"1\""),
        ),
        (
            "PUT",
            "/user/alice",
            rekey.as_bytes(),
            ("if-none-match", "*"),
        ),
        ("DELETE", "/user/bob", b"".as_slice(), ("if-match", "\"1\"")),
        ("GET", "/user/alice", b"".as_slice(), ("if-none-match", "*")),
        ("GET", "/kv/app/x", b"".as_slice(), ("if-match", "\"1\"")),
        ("GET", sid.as_str(), b"".as_slice(), ("if-match", "\"1\"")),
    ] {
        let r = kv(addr, &alice, method, path, body, &[pre]).await;
        assert_eq!(r.status, 400, "{method} {path} with {pre:?}: {}", r.body);
        assert_eq!(r.body["code"], "bad_request");
    }
    // Nothing was done: the old password still logs in, bob still exists.
    assert!(login(addr, "alice", "correct horse").await.is_ok());
    assert!(login(addr, "bob", "bobs pw").await.is_ok());
}

/// The connection that ends the open era keeps its streams (DistKV's
/// client watches beside its `auth init`), and a connection opened while
/// the server was open gets its `login_timeout` to log in: both counted
/// the login deadline from when the connection opened, so one open for
/// longer than `login_timeout` was closed the moment a method became
/// current, the `auth init` connection's watch with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_eras_connections_get_their_login_time_from_its_end() {
    let s = start_with(|c| c.login_timeout = 2).await;
    let admin = Client::connect(s.addr()).await.expect("connect");
    let mut own = admin
        .watch(&Path::parse("data").expect("p"), true)
        .await
        .expect("watch");
    own.uptodate().await.expect("uptodate");
    let late = Client::connect(s.addr()).await.expect("connect");
    let mut idle = Raw::connect(s.addr()).await;
    // Longer than login_timeout, while the server is open (real time on
    // purpose: login_timeout is a socket timeout, on tokio's timer).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let root = ClientRegistry::make("root", None).expect("m");
    admin.set_user(root.as_ref()).await.expect("root user");
    admin
        .request(
            Msg::new()
                .with("action", "set_auth_typ")
                .with("typ", "root"),
        )
        .await
        .expect("auth init");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The connection opened in the open era may still log in.
    late.login(root.as_ref())
        .await
        .expect("a connection of the open era gets its time to log in");
    late.set(&Path::parse("data.x").expect("p"), Value::from(5))
        .await
        .expect("write");
    let seen = tokio::time::timeout(Duration::from_secs(1), own.next_raw())
        .await
        .expect("the change reaches the auth init connection's watch");
    assert!(matches!(seen, Some(Ok(_))), "{seen:?}");
    // One of the open era that says nothing is closed once its time is
    // up (not left to idle_timeout: the era's end wakes it).
    let ended = tokio::time::Instant::now();
    let mut why = None;
    loop {
        match idle.try_recv(Duration::from_secs(4)).await {
            Some(Some(v)) => why = code(&v).map(str::to_owned),
            Some(None) => break,
            None => panic!("an idle connection of the open era was not closed"),
        }
    }
    assert_eq!(why.as_deref(), Some("timeout"));
    assert!(
        ended.elapsed() < Duration::from_secs(3),
        "{:?}",
        ended.elapsed()
    );
}

/// ACL edits apply at once — to a running `watch` too: it kept the ACLs
/// compiled when it started, so a user whose read access was taken away
/// went on receiving every change below it for as long as the watch ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_edit_reaches_a_running_watch() {
    let s = start_with(|_| {}).await;
    let p = |t: &str| Path::parse(t).expect("path");
    let setup = Client::connect(s.addr()).await.expect("connect");
    let root = ClientRegistry::make("root", None).expect("m");
    setup.set_user(root.as_ref()).await.expect("root");
    setup
        .set_user(&ScramClient::new("bob", Password::new("bobs pw")))
        .await
        .expect("bob");
    let internal = |path: &str, v: Value| {
        Msg::new()
            .with("action", "set_internal")
            .with_path("path", &p(path))
            .with("value", v)
    };
    for (path, v) in [
        ("acl.ro.app.#", Value::from("rxe")),
        ("acl.ro.app", Value::from("xe")),
        (
            "auth.scram-sha-256.user.bob.acl",
            Msg::new().with("key", "ro").into_value(),
        ),
    ] {
        setup.request(internal(path, v)).await.expect("acl");
    }
    setup
        .request(
            Msg::new()
                .with("action", "set_auth_typ")
                .with("typ", "scram-sha-256")
                .with("accept", Value::Array(vec!["root".into()])),
        )
        .await
        .expect("current");
    let admin = Client::connect(s.addr()).await.expect("connect");
    admin.login(root.as_ref()).await.expect("root login");
    let bob = Client::connect(s.addr()).await.expect("connect");
    bob.login(&ScramClient::new("bob", Password::new("bobs pw")))
        .await
        .expect("bob login");
    let mut watch = bob.watch(&p("app"), true).await.expect("watch");
    watch.uptodate().await.expect("uptodate");
    admin
        .set(&p("app.open"), Value::from(1))
        .await
        .expect("write");
    let seen = tokio::time::timeout(Duration::from_secs(5), watch.next_raw())
        .await
        .expect("bob sees app.open");
    assert!(matches!(seen, Some(Ok(_))), "{seen:?}");
    // bob may no longer read app.secret.
    admin
        .request(internal("acl.ro.app.secret", Value::from("x")))
        .await
        .expect("acl edit");
    admin
        .set(&p("app.secret"), Value::from("hush"))
        .await
        .expect("write");
    admin
        .set(&p("app.open"), Value::from(2))
        .await
        .expect("write");
    loop {
        let v = tokio::time::timeout(Duration::from_secs(5), watch.next_raw())
            .await
            .expect("the watch goes on")
            .expect("open")
            .expect("item");
        assert_ne!(
            v.get("value"),
            Some(&Value::from("hush")),
            "a value bob may no longer read reached his watch: {v:?}"
        );
        if v.get("value") == Some(&Value::from(2)) {
            break;
        }
    }
}

/// Withdrawing a method (`set_auth_typ` without it in `accept`, e.g. an
/// operator closing the `--accept root` hole) ends the keycards it let
/// in: a `root` login kept super-root for its whole lifetime (a day by
/// default) after `root` was no longer accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawing_a_method_ends_the_logins_it_let_in() {
    let s = common::server(|_| {}).await;
    let intruder = common::login(&s, "root", None).await;
    let joe = common::login(&s, "_test", Some("joe")).await;
    let admin = common::login(&s, "root", None).await;
    let internal = || {
        Msg::new()
            .with("action", "get_internal")
            .with_path("path", &Path::parse("auth").expect("p"))
    };
    intruder.request(internal()).await.expect("super-root");
    // `root` is no longer accepted (the admin's own session goes on).
    admin
        .request(
            Msg::new()
                .with("action", "set_auth_typ")
                .with("typ", "_test")
                .with("accept", Value::Array(vec![])),
        )
        .await
        .expect("withdraw root");
    let r = tokio::time::timeout(Duration::from_secs(5), intruder.request(internal()))
        .await
        .expect("an answer or a close");
    assert!(r.is_err(), "a root login outlived root's withdrawal: {r:?}");
    // The methods still accepted keep their logins; so does the caller.
    joe.request(Msg::new().with("action", "whoami"))
        .await
        .expect("joe's _test login goes on");
    admin.request(internal()).await.expect("the admin's own");
}

/// `login_timeout` applies to a connection that has no live login, not
/// only to one that never had one: once logged in, a connection that
/// logged out (or whose keycard expired) could stay for ever without a
/// login, holding a slot, by sending requests that need none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_logged_out_gets_login_timeout_again() {
    let s = common::server(|c| c.login_timeout = 1).await;
    let mut joe = common::raw_login(&s, "joe").await;
    // Longer than login_timeout, logged in: it stays (real time on
    // purpose: login_timeout is a socket timeout, on tokio's timer).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let v = joe.call(common::req(2, "whoami")).await;
    assert_eq!(code(&v), None, "{v:?}");
    let v = joe.call(common::req(3, "logout")).await;
    assert_eq!(code(&v), None, "{v:?}");
    let out = tokio::time::Instant::now();
    let mut seq = 4;
    let closed = loop {
        if out.elapsed() > Duration::from_secs(4) {
            break false;
        }
        joe.send(common::req(seq, "auth_methods").with("ident", "joe"))
            .await;
        seq += 1;
        match joe.try_recv(Duration::from_millis(300)).await {
            Some(None) => break true,
            Some(Some(v)) if code(&v) == Some("timeout") => break true,
            _ => {}
        }
    };
    assert!(closed, "a logged-out connection stayed without a login");
    assert!(
        out.elapsed() < Duration::from_millis(2_500),
        "{:?}",
        out.elapsed()
    );
}
