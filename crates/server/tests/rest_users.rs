//! `/user/{name}` over real HTTP: create, show (with the last logins),
//! set a credential, delete, each with and without the capability; an
//! OPAQUE registration and login over REST with signed requests; hostile
//! bodies and names.

mod common;

use std::net::SocketAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::rest::{http, kv, login, now, opaque_login, Reply, Session};
use common::{start_with, TestServer};
use keycard_auth::{ClientMethod, OpaqueClient, Password, ScramClient, Step, Verifier};
use keycard_client::Client;
use keycard_proto::{Elem, Msg, Path, Value};
use serde_json::json;

/// A server with the HTTP listener, scram-sha-256 current, and three
/// users: `admin` (read_auth, write_auth), `alice` and `bob` (none);
/// `opaque` accepted, with its user `oscar`.
async fn server() -> (TestServer, SocketAddr) {
    let s = start_with(|c| c.http = Some("127.0.0.1:0".parse().expect("addr"))).await;
    let c = Client::connect(s.addr()).await.expect("connect");
    for (u, pw) in [
        ("admin", "admin pw"),
        ("alice", "alice pw"),
        ("bob", "bob pw"),
    ] {
        c.set_user(&ScramClient::new(u, Password::new(pw)))
            .await
            .expect("user");
    }
    c.request(
        Msg::new()
            .with("action", "set_internal")
            .with_path(
                "path",
                &Path::parse("auth.scram-sha-256.user.admin.caps").expect("p"),
            )
            .with(
                "value",
                Msg::new().with(
                    "caps",
                    Value::Array(vec!["read_auth".into(), "write_auth".into()]),
                ),
            ),
    )
    .await
    .expect("caps");
    // OPAQUE is accepted too (it needs a user of its own first).
    c.set_user(&OpaqueClient {
        user: "oscar".into(),
        password: Password::new("oscar pw"),
    })
    .await
    .expect("oscar");
    c.request(
        Msg::new()
            .with("action", "set_auth_typ")
            .with("typ", "scram-sha-256")
            .with("accept", Value::Array(vec!["opaque".into()])),
    )
    .await
    .expect("current");
    let http_addr = s.handle.http_addr.expect("http listener");
    (s, http_addr)
}

fn verifier(pw: &str) -> String {
    Verifier::generate(&Password::new(pw), 4096)
        .expect("verifier")
        .to_text()
}

async fn call(addr: SocketAddr, s: &Session, method: &str, path: &str, body: &str) -> Reply {
    kv(addr, s, method, path, body.as_bytes(), &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_managed_under_capabilities_and_show_their_last_logins() {
    let (s, addr) = server().await;
    let admin = login(addr, "admin", "admin pw").await.ok().expect("admin");
    let alice = login(addr, "alice", "alice pw").await.ok().expect("alice");

    // Create dave; a second creation conflicts.
    let body = json!({"method": "scram-sha-256", "data": verifier("dave pw")}).to_string();
    let r = call(addr, &admin, "POST", "/user/dave", &body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["name"], "dave");
    assert!(r.body["tock"].as_u64().is_some_and(|t| t > 0));
    let r = call(addr, &admin, "POST", "/user/dave", &body).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["code"], "conflict");

    // Without the capability: 403, and nothing changes.
    let r = call(addr, &alice, "POST", "/user/eve", &body).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.body["code"], "permission_denied");
    let r = call(addr, &alice, "GET", "/user/bob", "").await;
    assert_eq!(r.status, 403);
    let r = call(addr, &alice, "DELETE", "/user/bob", "").await;
    assert_eq!(r.status, 403);
    let r = call(addr, &alice, "PUT", "/user/bob", &body).await;
    assert_eq!(r.status, 403);
    let r = call(addr, &admin, "GET", "/user/eve", "").await;
    assert_eq!(r.status, 404, "eve was not created");
    assert!(login(addr, "bob", "bob pw").await.is_ok(), "bob is intact");

    // dave logs in over REST and over msgpack; both logins show.
    let dave = login(addr, "dave", "dave pw").await.ok().expect("dave");
    let c = Client::connect(s.addr()).await.expect("connect");
    c.login(&ScramClient::new("dave", Password::new("dave pw")))
        .await
        .expect("msgpack login");
    let before = now() * 1000;
    let r = call(addr, &admin, "GET", "/user/dave", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["name"], "dave");
    assert_eq!(r.body["methods"][0]["method"], "scram-sha-256");
    assert_eq!(r.body["methods"][0]["iterations"], 4096);
    let last = r.body["last_logins"].as_array().expect("last logins");
    assert_eq!(last.len(), 2, "{last:?}");
    assert_eq!(last[0]["via"], "msgpack", "newest first");
    assert_eq!(last[1]["via"], "rest");
    for l in last {
        assert!(l["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:")));
        assert_eq!(l["method"], "scram-sha-256");
        let at = l["at"].as_u64().expect("at");
        assert!(at + 60_000 > before && at <= before + 2_000, "{at}");
    }
    // The same over msgpack (`user_show`), as dave itself.
    let shown = c
        .request(Msg::new().with("action", "user_show").with("ident", "dave"))
        .await
        .expect("user_show");
    assert!(matches!(shown.get("last_logins"), Some(Value::Array(l)) if l.len() == 2));
    let refused = c
        .request(
            Msg::new()
                .with("action", "user_show")
                .with("ident", "alice"),
        )
        .await
        .expect_err("not dave's");
    assert!(refused.to_string().contains("read_auth"), "{refused}");
    // A user may see itself, not others.
    let r = call(addr, &dave, "GET", "/user/dave", "").await;
    assert_eq!(r.status, 200);
    let r = call(addr, &dave, "GET", "/user/alice", "").await;
    assert_eq!(r.status, 403);

    // The marks are written behind, to the record's `logins` node.
    s.handle.state.logins.flush().await.expect("flush");
    let logins_at = Path::new(
        [Elem::Nil]
            .into_iter()
            .chain(["auth", "scram-sha-256", "user", "dave", "logins"].map(Elem::from))
            .collect(),
    );
    let stored = s.handle.state.store.get(&logins_at).await.expect("get");
    let stored = stored.expect("written");
    assert!(matches!(stored.value.get("last"), Some(Value::Array(a)) if a.len() == 2));
    let r = call(addr, &admin, "GET", "/user/dave", "").await;
    assert_eq!(r.body["last_logins"].as_array().map(Vec::len), Some(2));

    // dave changes its own password: the old one stops working.
    let body = json!({"method": "scram-sha-256", "data": verifier("new dave pw")}).to_string();
    let r = call(addr, &dave, "PUT", "/user/dave", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let old = login(addr, "dave", "dave pw").await.err().expect("old pw");
    assert_eq!(old.status, 403);
    let dave2 = login(addr, "dave", "new dave pw")
        .await
        .ok()
        .expect("new pw");
    // A credential for a user that does not exist: 404 (POST creates).
    let r = call(addr, &admin, "PUT", "/user/nobody", &body).await;
    assert_eq!(r.status, 404);

    // Deleting dave ends its sessions at once and forgets it.
    let r = call(addr, &admin, "DELETE", "/user/dave", "").await;
    assert_eq!(r.status, 204, "{}", r.body);
    for sess in [&dave, &dave2] {
        let path = format!("/session/{}", sess.sid);
        let r = call(addr, sess, "GET", &path, "").await;
        assert_eq!(r.status, 401, "a deleted user's session");
    }
    let err = c
        .request(Msg::new().with("action", "whoami"))
        .await
        .expect_err("the msgpack connection is revoked");
    assert!(err.to_string().contains("revoked"), "{err}");
    let r = call(addr, &admin, "GET", "/user/dave", "").await;
    assert_eq!(r.status, 404);
    let r = call(addr, &admin, "DELETE", "/user/dave", "").await;
    assert_eq!(r.status, 404);
    let gone = login(addr, "dave", "new dave pw")
        .await
        .err()
        .expect("gone");
    let unknown = login(addr, "nobody", "x").await.err().expect("unknown");
    assert_eq!((gone.status, &gone.body), (unknown.status, &unknown.body));
    let aux = s.handle.state.store.get(&logins_at).await.expect("get");
    assert!(aux.is_none(), "the record's aux nodes go with it");
    // Re-created under the same name, it starts afresh.
    let body = json!({"method": "scram-sha-256", "data": verifier("d3")}).to_string();
    let r = call(addr, &admin, "POST", "/user/dave", &body).await;
    assert_eq!(r.status, 201);
    let r = call(addr, &admin, "GET", "/user/dave", "").await;
    assert_eq!(r.body["last_logins"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_registration_and_login_over_rest() {
    let (_s, addr) = server().await;
    let admin = login(addr, "admin", "admin pw").await.ok().expect("admin");
    // GET / names the method and its ciphersuite.
    let r = http(addr, "GET", "/", None, b"").await;
    assert!(r.body["opaque"]
        .as_str()
        .is_some_and(|s| s.contains("ristretto255")));

    // Registration: request → response (nothing stored) → upload.
    let olga = OpaqueClient {
        user: "olga".into(),
        password: Password::new("olga pw"),
    };
    let start = olga.set_record(None);
    let request = match start.request.into_value().get("data") {
        Some(Value::Bin(b)) => URL_SAFE_NO_PAD.encode(b),
        other => panic!("registration request: {other:?}"),
    };
    let body = json!({"method": "opaque", "data": request, "acl": "olgas"}).to_string();
    let r = call(addr, &admin, "POST", "/user/olga", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let response = URL_SAFE_NO_PAD
        .decode(r.body["data"].as_str().expect("registration response"))
        .expect("b64");
    let token = r.body["token"].as_str().expect("token").to_owned();
    let r = call(addr, &admin, "GET", "/user/olga", "").await;
    assert_eq!(r.status, 404, "the first request stores nothing");
    let Some(exchange) = start.exchange else {
        panic!("OPAQUE registration has an exchange")
    };
    let Step::Send(upload, _) = exchange.next(&Msg::new().with("data", response).into_value())
    else {
        panic!("an upload")
    };
    let upload = match upload.into_value().get("data") {
        Some(Value::Bin(b)) => URL_SAFE_NO_PAD.encode(b),
        other => panic!("upload: {other:?}"),
    };
    // A tampered upload is refused and stores nothing.
    let bad = json!({"method": "opaque", "data": request, "upload": "AAAA"}).to_string();
    let r = call(addr, &admin, "POST", "/user/olga", &bad).await;
    assert_eq!(r.status, 400, "{}", r.body);
    // The upload goes with the first answer's token (the server redoes its
    // half with the registration's own identifier from it).
    let bare = json!({"method": "opaque", "data": request, "upload": upload}).to_string();
    let r = call(addr, &admin, "POST", "/user/olga", &bare).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let body = json!({"method": "opaque", "data": request, "token": token, "upload": upload, "acl": "olgas"})
        .to_string();
    let r = call(addr, &admin, "POST", "/user/olga", &body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = call(addr, &admin, "GET", "/user/olga", "").await;
    assert_eq!(r.body["methods"][0]["method"], "opaque");
    assert_eq!(r.body["methods"][0]["acl"], "olgas");

    // olga logs in with OPAQUE over REST.
    let Some(sess) = opaque_login(addr, "olga", "olga pw").await else {
        panic!("olga's OPAQUE login over REST failed")
    };
    let path = format!("/session/{}", sess.sid);
    let r = call(addr, &sess, "GET", &path, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["method"], "opaque");
    assert_eq!(r.body["user"], "olga");
    // Signed with the OPAQUE session key; a replay is refused as for SCRAM.
    let auth = common::rest::sign(&sess, "GET", &path, b"", now());
    let r = http(addr, "GET", &path, Some(auth.clone()), b"").await;
    assert_eq!(r.status, 200);
    let r = http(addr, "GET", &path, Some(auth), b"").await;
    assert_eq!(r.status, 401);
    // A wrong password and an unknown user look alike: KE2 does not open.
    assert!(opaque_login(addr, "olga", "wrong").await.is_none());
    assert!(opaque_login(addr, "nobody", "olga pw").await.is_none());
    let r = call(addr, &admin, "GET", "/user/olga", "").await;
    let last = r.body["last_logins"].as_array().expect("last logins");
    assert_eq!(last.len(), 1);
    assert_eq!(last[0]["method"], "opaque");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_user_requests_get_clear_errors() {
    let (_s, addr) = server().await;
    let admin = login(addr, "admin", "admin pw").await.ok().expect("admin");
    let long = "n".repeat(300);
    let long_path = format!("/user/{long}");
    let v = verifier("pw");
    let cases: Vec<(&str, &str, String, u16)> = vec![
        ("POST", "/user/x", "not json".into(), 400),
        ("POST", "/user/x", "[]".into(), 400),
        ("POST", "/user/x", json!({"data": v}).to_string(), 400),
        (
            "POST",
            "/user/x",
            json!({"method": 5, "data": v}).to_string(),
            400,
        ),
        (
            "POST",
            "/user/x",
            json!({"method": "password", "data": "x"}).to_string(),
            400,
        ),
        (
            "POST",
            "/user/x",
            json!({"method": "root", "data": "x"}).to_string(),
            400,
        ),
        (
            "POST",
            "/user/x",
            json!({"method": "scram-sha-256"}).to_string(),
            400,
        ),
        (
            "POST",
            "/user/x",
            json!({"method": "scram-sha-256", "data": 7}).to_string(),
            400,
        ),
        (
            "POST",
            "/user/x",
            json!({"method": "scram-sha-256", "data": "SCRAM-SHA-256$1:AA$AA:AA"}).to_string(),
            400,
        ),
        (
            "POST",
            "/user/x",
            json!({"method": "scram-sha-256", "data": v, "upload": "AA"}).to_string(),
            400,
        ),
        (
            "POST",
            "/user/x",
            json!({"method": "scram-sha-256", "data": v, "acl": 3}).to_string(),
            400,
        ),
        (
            "POST",
            "/user/x",
            json!({"method": "scram-sha-256", "data": v, "acl": ""}).to_string(),
            400,
        ),
        (
            "PUT",
            "/user/alice",
            json!({"method": "scram-sha-256", "data": v, "acl": "a"}).to_string(),
            400,
        ),
        (
            "POST",
            "/user/x",
            json!({"method": "opaque", "data": "!!"}).to_string(),
            400,
        ),
        (
            "POST",
            "/user/x",
            json!({"method": "opaque", "data": "AAAA"}).to_string(),
            400,
        ),
        (
            "POST",
            &long_path,
            json!({"method": "scram-sha-256", "data": v}).to_string(),
            400,
        ),
        ("GET", &long_path, String::new(), 400),
        ("GET", "/user/%ZZ", String::new(), 400),
        ("GET", "/user/%FF", String::new(), 400),
        (
            "POST",
            "/user/",
            json!({"method": "scram-sha-256", "data": v}).to_string(),
            400,
        ),
    ];
    for (method, path, body, want) in cases {
        let r = call(addr, &admin, method, path, &body).await;
        assert_eq!(r.status, want, "{method} {path} {body}: {}", r.body);
        assert!(r.body["error"].is_string() && r.body["code"].is_string());
    }
    // Nothing was created by any of them.
    let r = call(addr, &admin, "GET", "/user/x", "").await;
    assert_eq!(r.status, 404);
    // Unsigned, or signed for another path: 401, nothing changes.
    let body = json!({"method": "scram-sha-256", "data": v}).to_string();
    let r = http(addr, "POST", "/user/x", None, body.as_bytes()).await;
    assert_eq!(r.status, 401);
    let auth = common::rest::sign(&admin, "POST", "/user/y", body.as_bytes(), now());
    let r = http(addr, "POST", "/user/x", Some(auth), body.as_bytes()).await;
    assert_eq!(r.status, 401);
    // A name with non-ASCII characters, percent-encoded, works.
    let r = call(addr, &admin, "POST", "/user/d%C3%A9j%C3%A0", &body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["name"], "déjà");
    assert!(login(addr, "déjà", "pw").await.is_ok());
    // The last user of the current method cannot be deleted by REST
    // either: nobody could log in.
    for u in ["alice", "bob", "déjà"] {
        let path = format!("/user/{}", u.replace('é', "%C3%A9").replace('à', "%C3%A0"));
        let r = call(addr, &admin, "DELETE", &path, "").await;
        assert_eq!(r.status, 204, "{u}");
    }
    let r = call(addr, &admin, "DELETE", "/user/admin", "").await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["code"], "conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_users_record_over_msgpack_ends_its_keycards() {
    let (s, _addr) = server().await;
    let admin = Client::connect(s.addr()).await.expect("connect");
    admin
        .login(&ScramClient::new("admin", Password::new("admin pw")))
        .await
        .expect("admin");
    admin
        .set_user(&ScramClient::new("erin", Password::new("erin pw")))
        .await
        .expect("erin");
    let erin = Client::connect(s.addr()).await.expect("connect");
    erin.login(&ScramClient::new("erin", Password::new("erin pw")))
        .await
        .expect("erin logs in");
    let bob = Client::connect(s.addr()).await.expect("connect");
    bob.login(&ScramClient::new("bob", Password::new("bob pw")))
        .await
        .expect("bob logs in");
    admin
        .request(
            Msg::new()
                .with("action", "auth_delete")
                .with("typ", "scram-sha-256")
                .with("kind", "user")
                .with("ident", "erin"),
        )
        .await
        .expect("delete");
    let err = erin
        .request(Msg::new().with("action", "whoami"))
        .await
        .expect_err("erin's keycard is revoked");
    assert!(err.to_string().contains("revoked"), "{err}");
    bob.request(Msg::new().with("action", "whoami"))
        .await
        .expect("bob is untouched");
}
