//! Keycards end to end (DESIGN §1 and §7.4, 7.7, 7.9): every
//! login is a keycard; challenges expire; keycards expire, are kept alive
//! up to a maximum, and are revoked (their connections closed within
//! 100 ms); bounds; requester clean-up; tokens; and nothing a client sends
//! makes a keycard of its own.

mod common;

use std::time::{Duration, Instant};

use common::{
    advance, audit_log_with, code, login, manual_clock, path, raw_login, req, server, start_with,
    wait_for, Raw,
};
use keycard_auth::bouncer::KeycardId;
use keycard_auth::ClientRegistry;
use keycard_client::Client;
use keycard_proto::{ErrorCode, Msg, Path, Value};
use keycard_server::Clock;

fn p(s: &str) -> Path {
    Path::parse(s).expect("path")
}

async fn whoami(c: &Client) -> Value {
    c.request(Msg::new().with("action", "whoami"))
        .await
        .expect("whoami")
}

fn keycard_of(who: &Value) -> KeycardId {
    KeycardId::parse(who.get("keycard").and_then(Value::as_str).expect("keycard")).expect("id")
}

async fn list(c: &Client, filter: Msg) -> Vec<Value> {
    let mut st = c
        .stream(filter.with("action", "keycard_list"))
        .await
        .expect("list");
    let mut out = Vec::new();
    while let Some(v) = st.next_raw().await {
        out.push(v.expect("item"));
    }
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_login_is_a_keycard_listed_and_shown() {
    let s = server(|_| {}).await;
    let joe = login(&s, "_test", Some("joe")).await;
    let who = whoami(&joe).await;
    let id = keycard_of(&who);
    let expires = who.get("expires_at").and_then(Value::as_u64).expect("exp");
    // The default duration is a day.
    let day = 86_400_000;
    assert!(expires.abs_diff(now_ms() + day) < 60_000, "{expires}");
    assert_eq!(s.handle.state.bouncer.len(), 1);

    let admin = login(&s, "root", None).await;
    assert_eq!(s.handle.state.bouncer.len(), 2);
    let joes = list(&admin, Msg::new().with("user", "joe")).await;
    assert_eq!(joes.len(), 1);
    let card = &joes[0];
    assert_eq!(
        card.get("id").and_then(Value::as_str),
        Some(id.to_string().as_str())
    );
    assert_eq!(
        card.get("status").and_then(Value::as_str),
        Some("authenticated")
    );
    assert_eq!(card.get("method").and_then(Value::as_str), Some("_test"));
    assert_eq!(card.get("addr").and_then(Value::as_str), Some("127.0.0.1"));
    let shown = admin
        .request(
            Msg::new()
                .with("action", "keycard_show")
                .with("id", id.to_string()),
        )
        .await
        .expect("show");
    assert_eq!(shown.get("user").and_then(Value::as_str), Some("joe"));
    // Filters: by method, by requester.
    assert_eq!(
        list(&admin, Msg::new().with("method", "root")).await.len(),
        1
    );
    let requester = card.get("requester").and_then(Value::as_u64).expect("req");
    let by_req = list(&admin, Msg::new().with("requester", requester)).await;
    assert_eq!(by_req.len(), 1);
    // A malformed id is a clear error; an unknown one is not_found.
    for (bad, want) in [
        (Value::from("xyz"), ErrorCode::BadRequest),
        (Value::from(7), ErrorCode::BadRequest),
        (Value::from("0".repeat(32)), ErrorCode::NotFound),
    ] {
        let e = admin
            .request(Msg::new().with("action", "keycard_show").with("id", bad))
            .await
            .expect_err("bad id");
        assert_eq!(e.code(), Some(want));
    }
    // Logging in again on the same connection replaces its keycard.
    let m = ClientRegistry::make("_test", Some("joe")).expect("m");
    joe.login(m.as_ref()).await.expect("again");
    let id2 = keycard_of(&whoami(&joe).await);
    assert_ne!(id, id2);
    assert_eq!(s.handle.state.bouncer.len(), 2);
    // Logout removes it.
    joe.request(Msg::new().with("action", "logout"))
        .await
        .expect("logout");
    assert_eq!(s.handle.state.bouncer.len(), 1);
    let e = joe.get(&p("data.x")).await.expect_err("logged out");
    assert_eq!(e.code(), Some(ErrorCode::AuthRequired));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_ends_streams_and_refuses_requests_until_a_new_login() {
    let mut clock = None;
    let s = server(|c| {
        c.keycards.duration = 1;
        clock = Some(manual_clock(c));
    })
    .await;
    let clock = clock.expect("clock");
    let joe = login(&s, "_test", Some("joe")).await;
    let mut watch = joe.watch(&p("data"), false).await.expect("watch");
    assert!(joe.get(&p("data.x")).await.expect("get").is_some());
    clock.advance(Duration::from_millis(1100));
    let e = joe.get(&p("data.x")).await.expect_err("expired");
    assert_eq!(e.code(), Some(ErrorCode::KeycardExpired));
    let e = joe
        .request(Msg::new().with("action", "keep_alive"))
        .await
        .expect_err("too late to keep alive");
    assert_eq!(e.code(), Some(ErrorCode::KeycardExpired));
    // The open watch ended with the reason (the reaper runs every 100 ms).
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match watch.next_event().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    })
    .await
    .expect("the watch ended");
    assert_eq!(
        ended.and_then(|e| e.code()),
        Some(ErrorCode::KeycardExpired)
    );
    assert!(s.handle.state.bouncer.is_empty(), "reaped");
    // The connection stays; a new login works on it.
    let m = ClientRegistry::make("_test", Some("joe")).expect("m");
    joe.login(m.as_ref()).await.expect("again");
    assert!(joe.get(&p("data.x")).await.expect("get").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_extends_up_to_the_maximum_lifetime() {
    let mut clock = None;
    let s = server(|c| {
        c.keycards.duration = 1;
        c.keycards.max_lifetime = 2;
        clock = Some(manual_clock(c));
    })
    .await;
    let clock = clock.expect("clock");
    let joe = login(&s, "_test", Some("joe")).await;
    let first = whoami(&joe).await;
    let e0 = first.get("expires_at").and_then(Value::as_u64).expect("e");
    let mut last = e0;
    for _ in 0..3 {
        clock.advance(Duration::from_millis(600));
        let r = joe
            .request(Msg::new().with("action", "keep_alive"))
            .await
            .expect("kept alive");
        let e = r.get("expires_at").and_then(Value::as_u64).expect("e");
        assert!(e >= last, "never shortened");
        assert!(e <= e0 + 1000, "never past the maximum lifetime");
        last = e;
        assert!(joe.get(&p("data.x")).await.is_ok());
    }
    assert!(last > e0, "extended");
    // Past the maximum lifetime nothing keeps it.
    advance(
        &s,
        &clock,
        Duration::from_millis(last.saturating_sub(clock.now_ms()) + 50),
    );
    let e = joe.get(&p("data.x")).await.expect_err("expired");
    assert_eq!(e.code(), Some(ErrorCode::KeycardExpired));
    // Keep-alive takes no id: another keycard cannot be kept alive from
    // here, whatever the request says.
    let ann = login(&s, "_test", Some("ann")).await;
    let ann_id = keycard_of(&whoami(&ann).await);
    let ann_exp = whoami(&ann).await.get("expires_at").and_then(Value::as_u64);
    let e = joe
        .request(
            Msg::new()
                .with("action", "keep_alive")
                .with("id", ann_id.to_string()),
        )
        .await
        .expect_err("joe's own keycard is expired");
    assert_eq!(e.code(), Some(ErrorCode::KeycardExpired));
    let after = whoami(&ann).await.get("expires_at").and_then(Value::as_u64);
    assert_eq!(ann_exp, after);
}

/// Waits until the server closes `raw`'s connection; returns how long it
/// took, and the messages that came before.
async fn closed_within(raw: &mut Raw, limit: Duration) -> (Duration, Vec<Value>) {
    let t = Instant::now();
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(limit, raw.recv()).await {
            Ok(Some(v)) => seen.push(v),
            Ok(None) => return (t.elapsed(), seen),
            Err(_) => panic!("not closed within {limit:?}; saw {seen:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_closes_connections_at_once() {
    let s = server(|_| {}).await;
    let admin = login(&s, "root", None).await;

    // By id: the holder's stream ends with keycard_revoked, and the
    // connection is closed well within 100 ms.
    let mut joe = raw_login(&s, "joe").await;
    joe.send(
        req(2, "watch")
            .with("path", path("data"))
            .with("fetch", true),
    )
    .await;
    // The watch runs (it has sent the subtree and said so) before the
    // revocation: a revocation racing its start would find no stream.
    loop {
        let m = tokio::time::timeout(Duration::from_secs(2), joe.recv())
            .await
            .expect("the watch starts")
            .expect("open");
        if m.get("state").and_then(Value::as_str) == Some("uptodate") {
            break;
        }
    }
    let card = list(&admin, Msg::new().with("user", "joe")).await;
    let id = card[0]
        .get("id")
        .and_then(Value::as_str)
        .expect("id")
        .to_owned();
    let t = Instant::now();
    let r = admin
        .request(
            Msg::new()
                .with("action", "keycard_revoke")
                .with("id", id.as_str()),
        )
        .await
        .expect("revoke");
    let revoke_rtt = t.elapsed();
    assert_eq!(r.get("revoked").and_then(Value::as_u64), Some(1));
    let (took, seen) = closed_within(&mut joe, Duration::from_secs(2)).await;
    assert!(
        took + revoke_rtt < Duration::from_millis(100),
        "closed after {took:?} (+{revoke_rtt:?})"
    );
    assert!(
        seen.iter()
            .any(|m| m.get("seq") == Some(&Value::from(2)) && code(m) == Some("keycard_revoked")),
        "the watch ended with the reason: {seen:?}"
    );
    assert!(seen
        .iter()
        .any(|m| m.get("seq").is_none() && code(m) == Some("keycard_revoked")));
    assert_eq!(s.handle.state.bouncer.len(), 1, "only the admin's is left");

    // By user: every connection of that user.
    let mut a1 = raw_login(&s, "ann").await;
    let mut a2 = raw_login(&s, "ann").await;
    let mut j = raw_login(&s, "joe").await;
    let r = admin
        .request(
            Msg::new()
                .with("action", "keycard_revoke")
                .with("user", "ann"),
        )
        .await
        .expect("revoke");
    assert_eq!(r.get("revoked").and_then(Value::as_u64), Some(2));
    closed_within(&mut a1, Duration::from_millis(500)).await;
    closed_within(&mut a2, Duration::from_millis(500)).await;
    let v = j
        .call(req(5, "get_value").with("path", path("data.x")))
        .await;
    assert_eq!(v.get("value"), Some(&Value::from(1)), "joe unaffected");

    // By requester.
    let joes = list(&admin, Msg::new().with("user", "joe")).await;
    let requester = joes[0].get("requester").and_then(Value::as_u64).expect("r");
    let r = admin
        .request(
            Msg::new()
                .with("action", "keycard_revoke")
                .with("requester", requester),
        )
        .await
        .expect("revoke");
    assert_eq!(r.get("revoked").and_then(Value::as_u64), Some(1));
    closed_within(&mut j, Duration::from_millis(500)).await;

    // Revoking needs a target.
    let e = admin
        .request(Msg::new().with("action", "keycard_revoke"))
        .await
        .expect_err("what?");
    assert_eq!(e.code(), Some(ErrorCode::BadRequest));
    // Revocations are audited with the keycard id.
    let log = audit_log_with(&s, |l| l.contains("\"event\":\"revoked\"")).await;
    assert!(log.contains(&format!("\"keycard\":\"{id}\"")), "{log}");
    assert!(log.contains("\"event\":\"revoked\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_without_the_capability_manage_only_their_own_keycards() {
    let s = server(|_| {}).await;
    let joe = login(&s, "_test", Some("joe")).await;
    let ann = login(&s, "_test", Some("ann")).await;
    let ann_id = keycard_of(&whoami(&ann).await);
    let joe_id = keycard_of(&whoami(&joe).await);
    // joe lists: only joe's, whatever filter he sends.
    let seen = list(&joe, Msg::new().with("user", "ann")).await;
    assert!(seen
        .iter()
        .all(|c| c.get("user").and_then(Value::as_str) == Some("joe")));
    // ann's keycard: not found for joe, shown or revoked.
    for action in ["keycard_show", "keycard_revoke"] {
        let e = joe
            .request(
                Msg::new()
                    .with("action", action)
                    .with("id", ann_id.to_string()),
            )
            .await
            .expect_err("not joe's");
        assert_eq!(e.code(), Some(ErrorCode::NotFound));
    }
    for filter in [
        Msg::new().with("user", "ann"),
        Msg::new().with("requester", 1),
    ] {
        let e = joe
            .request(filter.with("action", "keycard_revoke"))
            .await
            .expect_err("needs the capability");
        assert_eq!(e.code(), Some(ErrorCode::PermissionDenied));
    }
    let e = joe
        .request(
            Msg::new()
                .with("action", "token_create")
                .with("user", "joe"),
        )
        .await
        .expect_err("needs the capability");
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied));
    assert!(ann.get(&p("data.x")).await.is_ok());
    // joe may revoke his own.
    let r = joe
        .request(
            Msg::new()
                .with("action", "keycard_revoke")
                .with("id", joe_id.to_string()),
        )
        .await;
    // The reply may lose the race with the close; either way it is gone.
    if let Ok(r) = r {
        assert_eq!(r.get("revoked").and_then(Value::as_u64), Some(1));
    }
    wait_for("joe's keycard to go", || s.handle.state.bouncer.len() == 1).await;
    assert!(joe.get(&p("data.x")).await.is_err());
    assert_eq!(s.handle.state.bouncer.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_per_user_and_in_total() {
    let s = server(|c| {
        c.keycards.max_per_user = 2;
        c.keycards.max_total = 3;
    })
    .await;
    let _j1 = login(&s, "_test", Some("joe")).await;
    let _j2 = login(&s, "_test", Some("joe")).await;
    let c = Client::connect(s.addr()).await.expect("connect");
    let m = ClientRegistry::make("_test", Some("joe")).expect("m");
    let e = c.login(m.as_ref()).await.expect_err("joe holds two");
    assert_eq!(e.code(), Some(ErrorCode::TooManyKeycards));
    assert_eq!(s.handle.state.bouncer.len(), 2, "the refused one left");
    // The refusal is not a failed login: joe is not throttled for it.
    let _a = login(&s, "_test", Some("ann")).await;
    let m = ClientRegistry::make("_test", Some("ann")).expect("m");
    let e = c.login(m.as_ref()).await.expect_err("the table is full");
    assert_eq!(e.code(), Some(ErrorCode::TooManyKeycards));
    assert!(e.to_string().contains("maximum"), "{e}");
    drop(_j1);
    wait_for("the closed connection's keycard to go", || {
        s.handle.state.bouncer.len() == 2
    })
    .await;
    c.login(m.as_ref()).await.expect("room again");
}

/// Real time on purpose: the wait for a challenge's answer runs on
/// tokio's timer (its length read from the clock), so the window is
/// waited for end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenges_expire_and_leave_the_table() {
    let s = start_with(|c| c.keycards.challenge_window = 1).await;
    let admin = Client::connect(s.addr()).await.expect("connect");
    let alice = keycard_auth::ScramClient::new("alice", keycard_auth::Password::new("pw"));
    admin.set_user(&alice).await.expect("alice");
    admin
        .request(
            Msg::new()
                .with("action", "set_auth_typ")
                .with("typ", "scram-sha-256"),
        )
        .await
        .expect("current");
    let mut r = Raw::connect(s.addr()).await;
    r.send(
        req(1, "auth")
            .with("typ", "scram-sha-256")
            .with("ident", "alice")
            .with("data", "n,,n=alice,r=clientnonce123"),
    )
    .await;
    let _start = r.recv().await.expect("start");
    let _first = r.recv().await.expect("server-first");
    assert_eq!(s.handle.state.bouncer.table().pending(), 1);
    let t = Instant::now();
    let err = loop {
        let v = r.recv().await.expect("reply");
        if code(&v).is_some() {
            break v;
        }
    };
    assert!(t.elapsed() < Duration::from_millis(1500));
    assert!(
        err.get("error")
            .and_then(Value::as_str)
            .is_some_and(|t| t.contains("ms")),
        "{err:?}"
    );
    assert!(s.handle.state.bouncer.is_empty());
    // An answer after the window reaches no exchange.
    r.send(Msg::new().with("seq", 1).with("data", "c=biws,r=x,p=AAAA"))
        .await;
    let v = loop {
        let v = r.recv().await.expect("reply");
        if v.get("state").and_then(Value::as_str) != Some("end") {
            break v;
        }
    };
    assert_eq!(code(&v), Some("bad_request"), "{v:?}");
    // And the connection can still log in properly.
    let c = Client::connect(s.addr()).await.expect("connect");
    c.login(&alice).await.expect("login");
}

/// Flumotion let a client send a keycard already marked authenticated
/// (DESIGN §8.2, W1 and W2). Here the fields a client could send to
/// claim a state, a verdict, an identity or a keycard are ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sent_state_verdict_and_identity_are_ignored() {
    let s = server(|_| {}).await;
    let mut r = Raw::connect(s.addr()).await;
    let forged = |seq: i64, typ: &str, ident: &str| {
        req(seq, "auth")
            .with("typ", typ)
            .with("ident", ident)
            .with("state", "authenticated")
            .with("verdict", true)
            .with("user", "*")
            .with("avatar", "*")
            .with("super_root", true)
            .with("keycard", KeycardId::random().to_string())
            .with("id", KeycardId::random().to_string())
            .with("expires_at", u64::MAX)
    };
    // An unknown _test user with every forged field: refused.
    let v = r.call_stream(forged(1, "_test", "mallory")).await;
    assert!(v.iter().any(|m| code(m) == Some("auth_failed")), "{v:?}");
    // A made-up token with the same extras: refused.
    let v = r
        .call_stream(forged(2, "token", "joe").with("token", "kct_forged"))
        .await;
    assert!(v.iter().any(|m| code(m) == Some("auth_failed")), "{v:?}");
    // Still nothing: every data action needs a login.
    let v = r
        .call(req(3, "get_value").with("path", path("data.x")))
        .await;
    assert_eq!(code(&v), Some("auth_required"));
    // A real login ignores the extras too: whoami says joe, _test, not
    // super-root, with a server-made keycard.
    let v = r.call_stream(forged(4, "_test", "joe")).await;
    assert!(v.iter().all(|m| code(m).is_none()), "{v:?}");
    let who = r.call(req(5, "whoami")).await;
    assert_eq!(who.get("user").and_then(Value::as_str), Some("joe"));
    assert_eq!(who.get("super_root"), Some(&Value::from(false)));
    let id = keycard_of(&who);
    assert!(s.handle.state.bouncer.table().show(id).is_some());
    let exp = who.get("expires_at").and_then(Value::as_u64).expect("exp");
    assert!(exp < now_ms() + 86_400_000 + 60_000);
    assert!(s.handle.state.bouncer.len() == 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_log_in_are_listed_without_secrets_and_revoke() {
    let s = server(|_| {}).await;
    let admin = login(&s, "root", None).await;
    let made = admin
        .request(
            Msg::new()
                .with("action", "token_create")
                .with("user", "joe")
                .with("ttl", 3600)
                .with("label", "ci"),
        )
        .await
        .expect("token");
    let token = made
        .get("token")
        .and_then(Value::as_str)
        .expect("token")
        .to_owned();
    let tid = made
        .get("id")
        .and_then(Value::as_str)
        .expect("id")
        .to_owned();
    assert!(token.starts_with("kct_") && token.contains(&tid));
    // Bad requests.
    for bad in [
        Msg::new().with("user", "nobody").with("ttl", 60),
        Msg::new().with("user", "joe").with("ttl", 0),
        Msg::new().with("user", "joe").with("ttl", 10u64.pow(12)),
        Msg::new()
            .with("user", "joe")
            .with("label", "x".repeat(300)),
        Msg::new().with("user", 5),
    ] {
        let e = admin
            .request(bad.with("action", "token_create"))
            .await
            .expect_err("bad token request");
        assert!(
            matches!(e.code(), Some(ErrorCode::BadRequest | ErrorCode::NotFound)),
            "{e}"
        );
    }

    // Log in with it, twice (machine clients run several connections).
    let addr = s.addr();
    let use_token = |tok: String| async move {
        let mut r = Raw::connect(addr).await;
        let v = r
            .call_stream(req(1, "auth").with("typ", "token").with("token", tok))
            .await;
        (r, v)
    };
    let (mut t1, v) = use_token(token.clone()).await;
    assert!(v.iter().all(|m| code(m).is_none()), "{v:?}");
    let (mut t2, _) = use_token(token.clone()).await;
    let who = t1.call(req(2, "whoami")).await;
    assert_eq!(who.get("user").and_then(Value::as_str), Some("joe"));
    assert_eq!(who.get("method").and_then(Value::as_str), Some("token"));
    let v = t1
        .call(req(3, "get_value").with("path", path("data.x")))
        .await;
    assert_eq!(v.get("value"), Some(&Value::from(1)));

    // Listed by id (durable, and the sessions it issued), never the
    // secret or its hash.
    let all = list(&admin, Msg::new().with("user", "joe")).await;
    let text = format!("{all:?}");
    assert!(!text.contains(&token[36..]), "no secret in listings");
    assert!(!text.contains("sha256"));
    let durable: Vec<_> = all
        .iter()
        .filter(|c| c.get("durable") == Some(&Value::from(true)))
        .collect();
    assert_eq!(durable.len(), 1);
    assert_eq!(durable[0].get("label").and_then(Value::as_str), Some("ci"));
    let sessions = list(&admin, Msg::new().with("parent", tid.as_str())).await;
    assert_eq!(sessions.len(), 2);

    // Wrong tokens all fail alike.
    for wrong in [
        // The last character changed (to one it is not).
        format!(
            "{}{}",
            &token[..token.len() - 1],
            if token.ends_with('0') { '1' } else { '0' }
        ),
        "kct_".to_owned(),
        "nonsense".to_owned(),
        format!("kct_{}_{}", "0".repeat(32), "0".repeat(64)),
    ] {
        let (_r, v) = use_token(wrong).await;
        assert!(v.iter().any(|m| code(m) == Some("auth_failed")), "{v:?}");
    }

    // Revoking the token closes both connections, and it never works
    // again.
    let r = admin
        .request(
            Msg::new()
                .with("action", "keycard_revoke")
                .with("id", tid.as_str()),
        )
        .await
        .expect("revoke");
    assert_eq!(r.get("revoked").and_then(Value::as_u64), Some(3));
    closed_within(&mut t1, Duration::from_millis(500)).await;
    closed_within(&mut t2, Duration::from_millis(500)).await;
    let (_r, v) = use_token(token.clone()).await;
    assert!(v.iter().any(|m| code(m) == Some("auth_failed")), "{v:?}");
    let shown = admin
        .request(
            Msg::new()
                .with("action", "keycard_show")
                .with("id", tid.as_str()),
        )
        .await
        .expect("show");
    assert_eq!(shown.get("status").and_then(Value::as_str), Some("revoked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_session_never_outlives_its_token() {
    let mut clock = None;
    let s = server(|c| clock = Some(manual_clock(c))).await;
    let clock = clock.expect("clock");
    let admin = login(&s, "root", None).await;
    let made = admin
        .request(
            Msg::new()
                .with("action", "token_create")
                .with("user", "joe")
                .with("ttl", 1),
        )
        .await
        .expect("token");
    let token = made
        .get("token")
        .and_then(Value::as_str)
        .expect("t")
        .to_owned();
    let mut r = Raw::connect(s.addr()).await;
    r.call_stream(
        req(1, "auth")
            .with("typ", "token")
            .with("token", token.as_str()),
    )
    .await;
    let who = r.call(req(2, "whoami")).await;
    let exp = who.get("expires_at").and_then(Value::as_u64).expect("e");
    let token_exp = made.get("expires_at").and_then(Value::as_u64).expect("e");
    assert!(exp <= token_exp);
    clock.advance(Duration::from_millis(1100));
    let v = r
        .call(req(3, "get_value").with("path", path("data.x")))
        .await;
    assert_eq!(code(&v), Some("keycard_expired"));
    let v = r
        .call_stream(
            req(4, "auth")
                .with("typ", "token")
                .with("token", token.as_str()),
        )
        .await;
    assert!(v.iter().any(|m| code(m) == Some("auth_failed")), "{v:?}");
}

/// A requester that goes away takes its keycards with it: 100k cycles of
/// connect, log in, disconnect leave the table empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requester_clean_up_after_100k_cycles() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = server(|c| c.max_auth_attempts = 5).await;
    let addr = s.addr();
    const CYCLES: usize = 100_000;
    const WORKERS: usize = 16;
    let login = keycard_proto::encode(
        &req(1, "auth")
            .with("typ", "_test")
            .with("ident", "joe")
            .into_value(),
    );
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let login = login.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut done = 0;
            for _ in (w..CYCLES).step_by(WORKERS) {
                // One source address per worker: the closed sockets'
                // TIME_WAIT entries never exhaust one address's ports.
                let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                let src = std::net::Ipv4Addr::new(127, 0, 1, w as u8 + 1);
                socket.bind((src, 0).into()).expect("bind");
                let mut sock = socket.connect(addr).await.expect("connect");
                sock.write_all(&login).await.expect("send");
                // Greeting, then the login's start and end.
                let mut got = Vec::new();
                while !got.windows(3).any(|w| w == b"end") {
                    let n = sock.read(&mut buf).await.expect("read");
                    assert!(n > 0, "closed early");
                    got.extend_from_slice(&buf[..n]);
                }
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("worker");
    }
    assert_eq!(total, CYCLES);
    // The server notices the last closes within moments.
    let t = Instant::now();
    while !s.handle.state.bouncer.is_empty() && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.handle.state.bouncer.len(), 0);
    assert_eq!(s.handle.state.bouncer.table().pending(), 0);
}

/// The client library reports why its connection ended, keeps alive and
/// logs in with tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_keeps_alive_and_reports_revocation() {
    let mut clock = None;
    let s = server(|c| {
        c.keycards.duration = 60;
        clock = Some(manual_clock(c));
    })
    .await;
    let clock = clock.expect("clock");
    let admin = login(&s, "root", None).await;
    let made = admin
        .request(
            Msg::new()
                .with("action", "token_create")
                .with("user", "joe")
                .with("ttl", 600),
        )
        .await
        .expect("token");
    let token = made.get("token").and_then(Value::as_str).expect("t");
    let c = Client::connect(s.addr()).await.expect("connect");
    c.login_token(token).await.expect("token login");
    let before = whoami(&c)
        .await
        .get("expires_at")
        .and_then(Value::as_u64)
        .expect("e");
    clock.advance(Duration::from_millis(20));
    let after = c.keep_alive(None).await.expect("keep alive");
    assert!(after > before);
    let id = keycard_of(&whoami(&c).await);
    admin
        .request(
            Msg::new()
                .with("action", "keycard_revoke")
                .with("id", id.to_string()),
        )
        .await
        .expect("revoke");
    // Refused at once; the close follows (revocation closes within 100 ms).
    let deadline = Instant::now() + Duration::from_secs(5);
    let e = loop {
        let e = c.get(&p("data.x")).await.expect_err("revoked");
        if matches!(e, keycard_client::ClientError::Closed(_)) || Instant::now() >= deadline {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        matches!(&e, keycard_client::ClientError::Closed(Some(why)) if why.contains("revoked")),
        "{e:?}"
    );
    // Logout through the library.
    let d = login(&s, "_test", Some("ann")).await;
    d.logout().await.expect("logout");
    assert_eq!(
        d.get(&p("data.x")).await.expect_err("logged out").code(),
        Some(ErrorCode::AuthRequired)
    );
}

/// A user of one method does not own another method's user of the same
/// name: an `_anon` "joe" (no secret) cannot see or revoke the `_test`
/// joe's keycards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_is_per_method_too() {
    let s = start_with(|_| {}).await;
    let c = Client::connect(s.addr()).await.expect("connect");
    for m in ["_test", "_anon"] {
        let m = ClientRegistry::make(m, Some("joe")).expect("method");
        c.set_user(m.as_ref()).await.expect("user");
    }
    c.request(
        Msg::new()
            .with("action", "set_auth_typ")
            .with("typ", "_test")
            .with("accept", Value::Array(vec!["_anon".into()])),
    )
    .await
    .expect("current");
    let real = login(&s, "_test", Some("joe")).await;
    let real_id = keycard_of(&whoami(&real).await);
    let anon = login(&s, "_anon", Some("joe")).await;
    let anon_id = keycard_of(&whoami(&anon).await);
    let seen = list(&anon, Msg::new()).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].get("id").and_then(Value::as_str),
        Some(anon_id.to_string().as_str())
    );
    for action in ["keycard_show", "keycard_revoke"] {
        let e = anon
            .request(
                Msg::new()
                    .with("action", action)
                    .with("id", real_id.to_string()),
            )
            .await
            .expect_err("not the _anon joe's");
        assert_eq!(e.code(), Some(ErrorCode::NotFound));
    }
    assert!(real.get(&p("x")).await.is_ok());
}

/// Durations come from the configuration, per method, per domain and per
/// user, and never exceed the maximum lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_per_method_domain_and_user() {
    let s = server(|c| {
        c.keycards.max_lifetime = 50_000;
        c.keycards.method_duration.insert("_test".into(), 5_000);
    })
    .await;
    let expiry = |c: Client| async move {
        let who = whoami(&c).await;
        who.get("expires_at").and_then(Value::as_u64).expect("e") as i64 - now_ms() as i64
    };
    // The method's duration.
    let joe = login(&s, "_test", Some("joe")).await;
    let left = expiry(joe).await;
    assert!((4_990_000..=5_000_000).contains(&left), "{left}");
    let admin = login(&s, "root", None).await;
    let set = |path: &'static str, v: Value| {
        let admin = admin.clone();
        async move {
            admin
                .request(
                    Msg::new()
                        .with("action", "set_internal")
                        .with_path("path", &p(path))
                        .with("value", v),
                )
                .await
                .expect("set_internal");
        }
    };
    // The server's own domain record, then the user's.
    let auth = admin
        .request(
            Msg::new()
                .with("action", "get_internal")
                .with_path("path", &p("auth")),
        )
        .await
        .expect("auth");
    let mut record = auth.get("value").cloned().expect("value");
    if let Value::Map(m) = &mut record {
        m.push((
            "keycard".into(),
            Msg::new().with("duration", 3_000).into_value(),
        ));
    }
    set("auth", record).await;
    let left = expiry(login(&s, "_test", Some("joe")).await).await;
    assert!((2_990_000..=3_000_000).contains(&left), "{left}");
    set(
        "auth._test.user.ann.keycard",
        Msg::new()
            .with("duration", 1_000_000)
            .with("max_lifetime", 1_000_000)
            .into_value(),
    )
    .await;
    // The user's own, capped by the configured maximum lifetime.
    let left = expiry(login(&s, "_test", Some("ann")).await).await;
    assert!((49_990_000..=50_000_000).contains(&left), "{left}");
}
