//! The REST front end over real HTTP (DESIGN §4): `GET /`, a
//! SCRAM-SHA-256 login (`POST /session/new`, `PUT /session/{sid}`) with
//! keycard's own SCRAM client half, signed `GET` / `DELETE
//! /session/{sid}`, and what is refused: replayed, stale, re-signed,
//! altered and unsigned requests, wrong passwords and unknown users alike,
//! revoked sessions, oversized and malformed bodies.

mod common;

use common::rest::{
    http, kv, kv_on, login, now, server, server_with, server_with_clock, sign, Session,
};
use keycard_auth::{Password, ScramClient, SecretKey};
use keycard_client::Client;
use keycard_proto::{Msg, Value};
use keycard_server::Clock;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_login_signed_requests_and_refusals() {
    let (s, addr) = server().await;
    let r = http(addr, "GET", "/", None, b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["methods"], json!(["scram-sha-256"]));
    assert!(r.body["opaque"].is_string());

    let alice = login(addr, "alice", "correct horse")
        .await
        .ok()
        .expect("login");
    let path = format!("/session/{}", alice.sid);
    let auth = sign(&alice, "GET", &path, b"", now());
    let r = http(addr, "GET", &path, Some(auth.clone()), b"").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["state"], "authenticated");
    assert_eq!(r.body["user"], "alice");
    assert!(r.body["data"].as_str().is_some_and(|d| d.starts_with("v=")));
    // The same keycard is visible to the msgpack management actions.
    let card = s
        .handle
        .state
        .bouncer
        .table()
        .show(keycard_auth::bouncer::KeycardId::parse(&alice.sid).expect("id"))
        .expect("a keycard");
    assert_eq!(&*card.user, "alice");

    // Replayed: the same header again.
    let r = http(addr, "GET", &path, Some(auth), b"").await;
    assert_eq!(r.status, 401, "replay");
    // Stale and future.
    for ts in [now() - 120, now() + 120] {
        let r = http(
            addr,
            "GET",
            &path,
            Some(sign(&alice, "GET", &path, b"", ts)),
            b"",
        )
        .await;
        assert_eq!(r.status, 401, "ts {ts}");
    }
    // Signed for another path, method or body, or with another key.
    let other = Session {
        sid: alice.sid.clone(),
        key: SecretKey::new([7; 32]),
    };
    for (auth, method) in [
        (sign(&alice, "GET", "/session/xyz", b"", now()), "GET"),
        (sign(&alice, "DELETE", &path, b"", now()), "GET"),
        (sign(&alice, "GET", &path, b"{}", now()), "GET"),
        (sign(&other, "GET", &path, b"", now()), "GET"),
        ("Keycard nonsense".to_owned(), "GET"),
        ("Bearer abc".to_owned(), "GET"),
    ] {
        let r = http(addr, method, &path, Some(auth.clone()), b"").await;
        assert_eq!(r.status, 401, "{auth}");
        assert_eq!(r.body["code"], "auth_required");
    }
    let r = http(addr, "GET", &path, None, b"").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.headers.get("www-authenticate").map(String::as_str),
        Some("Keycard")
    );

    // Wrong password and unknown user: 403 with the same body.
    let wrong = login(addr, "alice", "wrong").await.err().expect("refused");
    let ghost = login(addr, "ghost", "whatever")
        .await
        .err()
        .expect("refused");
    assert_eq!((wrong.status, ghost.status), (403, 403));
    assert_eq!(wrong.body, ghost.body);
    assert_eq!(wrong.body["code"], "auth_failed");

    // Keep-alive: extends the keycard (signed, like everything else).
    let before = card.expires_at;
    std::thread::sleep(std::time::Duration::from_millis(20));
    let kpath = format!("{path}/keepalive");
    let r = http(
        addr,
        "POST",
        &kpath,
        Some(sign(&alice, "POST", &kpath, b"", now())),
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["expires_at"].as_u64().expect("expires_at") > before);
    let body = br#"{"ttl": "soon"}"#;
    let r = http(
        addr,
        "POST",
        &kpath,
        Some(sign(&alice, "POST", &kpath, body, now())),
        body,
    )
    .await;
    assert_eq!(r.status, 400);
    let r = http(addr, "POST", &kpath, None, b"").await;
    assert_eq!(r.status, 401);

    // Log out: the keycard goes, the session answers 401.
    let r = http(
        addr,
        "DELETE",
        &path,
        Some(sign(&alice, "DELETE", &path, b"", now())),
        b"",
    )
    .await;
    assert_eq!(r.status, 204);
    let r = kv(addr, &alice, "GET", &path, b"", &[]).await;
    assert_eq!(r.status, 401);

    // Revoked through the msgpack side: refused at once.
    let bob = login(addr, "alice", "correct horse")
        .await
        .ok()
        .expect("login");
    let bpath = format!("/session/{}", bob.sid);
    // (alice over msgpack owns her REST keycards: same user and method.)
    let msgpack = Client::connect(s.addr()).await.expect("connect");
    msgpack
        .login(&ScramClient::new("alice", Password::new("correct horse")))
        .await
        .expect("msgpack login");
    let mut listed = msgpack
        .stream(Msg::new().with("action", "keycard_list"))
        .await
        .expect("list");
    let mut ids = Vec::new();
    while let Some(v) = listed.next_raw().await {
        ids.push(
            v.expect("item")
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned),
        );
    }
    assert!(ids.contains(&Some(bob.sid.clone())), "{ids:?}");
    let r = msgpack
        .request(
            Msg::new()
                .with("action", "keycard_revoke")
                .with("id", bob.sid.as_str()),
        )
        .await
        .expect("revoke");
    assert_eq!(r.get("revoked").and_then(Value::as_u64), Some(1));
    let r = http(
        addr,
        "GET",
        &bpath,
        Some(sign(&bob, "GET", &bpath, b"", now())),
        b"",
    )
    .await;
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_and_paths() {
    let (_s, addr) = server().await;
    let big = vec![b'x'; 70 * 1024];
    let r = http(addr, "POST", "/session/new", None, &big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.body["code"], "too_large");
    for body in [
        &b"{not json"[..],
        br#"[]"#,
        br#"{"method": 5, "user": "alice"}"#,
        br#"{"method": "scram-sha-256", "user": "alice"}"#,
        br#"{"method": "scram-sha-256", "user": "alice", "data": 7}"#,
        br#"{"method": "scram-sha-256", "user": "alice", "data": "garbage"}"#,
    ] {
        let r = http(addr, "POST", "/session/new", None, body).await;
        assert!(
            r.status == 400 || r.status == 403,
            "{}: {} {}",
            String::from_utf8_lossy(body),
            r.status,
            r.body
        );
        assert!(r.body["code"].is_string());
    }
    let r = http(
        addr,
        "POST",
        "/session/new",
        None,
        br#"{"method": "_test", "user": "alice", "data": ""}"#,
    )
    .await;
    assert_eq!(r.status, 400, "only challenge methods over REST");
    let r = http(
        addr,
        "PUT",
        "/session/00000000000000000000000000000000",
        None,
        b"{}",
    )
    .await;
    assert_eq!(r.status, 404);
    let r = http(addr, "PUT", "/session/../../etc", None, b"{}").await;
    assert!(r.status == 404 || r.status == 400, "{}", r.status);
    let r = http(addr, "GET", "/nowhere", None, b"").await;
    assert_eq!(r.status, 404);
    // A huge header block is refused, the server stays up.
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let long = format!(
        "GET / HTTP/1.1\r\nhost: k\r\nx-big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = s.write_all(long.as_bytes()).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 431") || text.is_empty(),
        "{text}"
    );
    let r = http(addr, "GET", "/", None, b"").await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_under_the_sessions_acl_with_conditional_writes() {
    let (s, addr) = server().await;
    let alice = login(addr, "alice", "correct horse")
        .await
        .ok()
        .expect("login");
    let v = json!({"value": {"rps": 100, "burst": [1, 2.5], "raw": {"$bytes": "AP8"}}});
    let body = v.to_string();
    let r = kv(addr, &alice, "PUT", "/kv/app/config", body.as_bytes(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["changed"], true);
    let etag = r.headers.get("etag").cloned().expect("etag");
    let r = kv(addr, &alice, "GET", "/kv/app/config", b"", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["value"], v["value"]);
    assert_eq!(r.headers.get("etag"), Some(&etag));
    // The same node over msgpack, bytes as bytes.
    let node = s
        .handle
        .state
        .store
        .get(&keycard_proto::Path::parse("app.config").expect("p"))
        .await
        .expect("get")
        .expect("node");
    assert_eq!(node.value.get("raw"), Some(&Value::Bin(vec![0, 255])));
    // Conditional writes.
    let body2 = json!({"value": 2}).to_string();
    let r = kv(
        addr,
        &alice,
        "PUT",
        "/kv/app/config",
        body2.as_bytes(),
        &[("if-match", "\"1\"")],
    )
    .await;
    assert_eq!(r.status, 412, "{}", r.body);
    let r = kv(
        addr,
        &alice,
        "PUT",
        "/kv/app/config",
        body2.as_bytes(),
        &[("if-none-match", "*")],
    )
    .await;
    assert_eq!(r.status, 412);
    let r = kv(
        addr,
        &alice,
        "PUT",
        "/kv/app/config",
        body2.as_bytes(),
        &[("if-match", &etag)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Non-string elements and escapes.
    let r = kv(
        addr,
        &alice,
        "PUT",
        "/kv/app/:5/a:.b",
        body2.as_bytes(),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let node = s
        .handle
        .state
        .store
        .get(&keycard_proto::Path::new(vec![
            "app".into(),
            keycard_proto::Elem::Int(5),
            "a.b".into(),
        ]))
        .await
        .expect("get");
    assert!(node.is_some());
    for (path, code) in [
        ("/kv/:n/auth", "reserved_path"),
        ("/kv/a.b", "bad_request"),
        ("/kv/a//b", "bad_request"),
        ("/kv/%ff", "bad_request"),
    ] {
        let r = kv(addr, &alice, "GET", path, b"", &[]).await;
        assert_eq!(r.body["code"], code, "{path}: {}", r.body);
    }
    let r = kv(addr, &alice, "PUT", "/kv/x", b"{oops", &[]).await;
    assert_eq!(r.status, 400);
    let r = kv(addr, &alice, "DELETE", "/kv/app/config", b"", &[]).await;
    assert_eq!((r.status, r.body["changed"].clone()), (200, json!(true)));
    let r = kv(addr, &alice, "GET", "/kv/app/config", b"", &[]).await;
    assert_eq!(r.status, 404);

    // bob's ACL: read app only.
    kv(
        addr,
        &alice,
        "PUT",
        "/kv/app/name",
        br#"{"value": "keycard"}"#,
        &[],
    )
    .await;
    kv(addr, &alice, "PUT", "/kv/other", br#"{"value": 1}"#, &[]).await;
    let bob = login(addr, "bob", "bobs pw").await.ok().expect("bob");
    let r = kv(addr, &bob, "GET", "/kv/app/name", b"", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = kv(addr, &bob, "PUT", "/kv/app/name", br#"{"value": "x"}"#, &[]).await;
    assert_eq!(
        (r.status, r.body["code"].clone()),
        (403, json!("permission_denied"))
    );
    let r = kv(addr, &bob, "GET", "/kv/other", b"", &[]).await;
    assert_eq!(r.status, 403);
    // Unsigned: 401.
    let r = http(addr, "GET", "/kv/app/name", None, b"").await;
    assert_eq!(r.status, 401);
}

/// Throttled REST logins answer 429 with a Retry-After header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_logins_say_when_to_retry() {
    let (_s, addr) = server_with(|c| {
        c.throttle = keycard_server::ThrottleConfig {
            free: 1,
            escalate: 1,
            base_delay_secs: 1,
            max_delay_secs: 1,
            cooldown_secs: 60,
            ..keycard_server::ThrottleConfig::default()
        };
    })
    .await;
    let mut refused = None;
    for _ in 0..6 {
        let r = login(addr, "alice", "wrong").await.err().expect("refused");
        if r.status == 429 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 403);
    }
    let r = refused.expect("throttled within six attempts");
    assert_eq!(r.body["code"], "throttled");
    let secs: u64 = r
        .headers
        .get("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&secs), "{secs}");
}

/// A session remembers at most `http_session_nonces` nonces per signature
/// window: past that, valid signed requests get `429` with Retry-After
/// (not `401`), a forged one still `401`; once the window has moved on,
/// the session signs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_over_its_nonce_memory_is_told_to_slow_down() {
    let (_s, addr, clock) = server_with_clock(|c| {
        c.http_session_nonces = 5;
        c.http_signature_window = 2;
    })
    .await;
    let alice = login(addr, "alice", "correct horse")
        .await
        .ok()
        .expect("login");
    let path = format!("/session/{}", alice.sid);
    for i in 0..5 {
        let r = kv(addr, &alice, "GET", &path, b"", &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    let r = kv(addr, &alice, "GET", &path, b"", &[]).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.body["code"], "too_many_requests");
    assert!(r
        .headers
        .get("retry-after")
        .is_some_and(|v| v.parse::<u64>().is_ok()));
    let forged = Session {
        sid: alice.sid.clone(),
        key: SecretKey::new([9; 32]),
    };
    let r = kv(addr, &forged, "GET", &path, b"", &[]).await;
    assert_eq!(r.status, 401, "a forged request is not merely slowed down");
    // The window moves on: the old nonces are forgotten.
    clock.advance(std::time::Duration::from_millis(5_500));
    let r = kv_on(&clock, addr, &alice, "GET", &path, b"", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A login waiting for its proof shows as `waiting` to an unsigned `GET`
/// of its id (it has no key to sign with yet); an authenticated session,
/// an unknown id and a junk id are `401` unsigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_login_shows_as_waiting() {
    let (_s, addr) = server().await;
    let body = json!({"method": "scram-sha-256", "user": "alice", "data": "n,,n=alice,r=abcdefghijklmnop"});
    let r = http(
        addr,
        "POST",
        "/session/new",
        None,
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let sid = r.body["sid"].as_str().expect("sid").to_owned();
    let r = http(addr, "GET", &format!("/session/{sid}"), None, b"").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["state"], "waiting");
    let deadline = r.body["expires_at"].as_u64().expect("deadline");
    assert!(
        deadline > now() * 1000 && deadline <= (now() + 31) * 1000,
        "{deadline}"
    );
    // A failed proof ends it.
    let r = http(
        addr,
        "PUT",
        &format!("/session/{sid}"),
        None,
        json!({"data": "c=biws,r=abcdefghijklmnopXXXX,p=AAAA"})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert!(r.status == 400 || r.status == 403, "{}", r.body);
    let r = http(addr, "GET", &format!("/session/{sid}"), None, b"").await;
    assert_eq!(r.status, 401);
    let alice = login(addr, "alice", "correct horse")
        .await
        .ok()
        .expect("login");
    for path in [
        format!("/session/{}", alice.sid),
        "/session/00112233445566778899aabbccddeeff".to_owned(),
        "/session/junk".to_owned(),
    ] {
        let r = http(addr, "GET", &path, None, b"").await;
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.body["code"], "auth_required");
    }
}

/// While the server is open (no method current), `/kv` and `/user` take
/// unsigned requests, as the msgpack listener does; a signature that is
/// there is still checked; once a method is current, unsigned is `401`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_server_takes_unsigned_data_requests_until_it_is_closed() {
    let s = common::start_with(|c| c.http = Some("127.0.0.1:0".parse().expect("addr"))).await;
    let addr = s.handle.http_addr.expect("http listener");
    let put = json!({"value": 7}).to_string();
    let r = http(addr, "PUT", "/kv/open/x", None, put.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http(addr, "GET", "/kv/open/x", None, b"").await;
    assert_eq!((r.status, &r.body["value"]), (200, &json!(7)));
    let forged = Session {
        sid: "00112233445566778899aabbccddeeff".into(),
        key: SecretKey::new([1; 32]),
    };
    let auth = sign(&forged, "GET", "/kv/open/x", b"", now());
    let r = http(addr, "GET", "/kv/open/x", Some(auth), b"").await;
    assert_eq!(r.status, 401, "a signature present is checked");
    let c = Client::connect(s.addr()).await.expect("connect");
    c.set_user(&ScramClient::new("alice", Password::new("pw")))
        .await
        .expect("alice");
    c.request(
        Msg::new()
            .with("action", "set_auth_typ")
            .with("typ", "scram-sha-256"),
    )
    .await
    .expect("closed");
    let r = http(addr, "GET", "/kv/open/x", None, b"").await;
    assert_eq!(r.status, 401);
    let r = http(addr, "GET", "/user/alice", None, b"").await;
    assert_eq!(r.status, 401);
}

/// A REST session is a keycard with its lifetime: once it has expired,
/// its next signed request is refused at once (`401`), and it cannot be
/// kept alive any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_refused_at_once() {
    let (_s, addr, clock) = server_with_clock(|c| c.keycards.duration = 1).await;
    let alice = login(addr, "alice", "correct horse")
        .await
        .ok()
        .expect("login");
    let path = format!("/session/{}", alice.sid);
    let r = kv_on(&clock, addr, &alice, "GET", &path, b"", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let expires_at = r.body["expires_at"].as_u64().expect("expires_at");
    // Past its expiry (the reaper runs every 100 ms, but the check at the
    // request does not wait for it).
    let wait = expires_at.saturating_sub(clock.now_ms()) + 1_200;
    clock.advance(std::time::Duration::from_millis(wait));
    let r = kv_on(&clock, addr, &alice, "GET", &path, b"", &[]).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = kv_on(&clock, addr, &alice, "GET", "/kv/app/x", b"", &[]).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let keep = format!("/session/{}/keepalive", alice.sid);
    let r = kv_on(&clock, addr, &alice, "POST", &keep, b"", &[]).await;
    assert_eq!(r.status, 401, "{}", r.body);
}
