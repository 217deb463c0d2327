//! What the REST front end's headers promise (DESIGN §4.1, docs/REST.md):
//! `If-Match` / `If-None-Match` are covered by the signature, so nobody
//! on the path can add or strip them; and no answer of the API may be
//! kept by a cache (`Cache-Control: no-store` on every route, error and
//! the connection cap's `503`).

mod common;

use common::rest::{http, http_with, kv, login, now, server, server_with, sign, sign_with, Reply};
use keycard_auth::signed::Version;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A precondition added on the way to a request signed without one, or
/// stripped from one signed with it, is refused (`401`): either would
/// turn a write into another one. What the client signed is obeyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_or_stripped_precondition_fails_the_signature() {
    let (_s, addr) = server().await;
    let alice = login(addr, "alice", "correct horse")
        .await
        .ok()
        .expect("login");
    let body = json!({"value": 1}).to_string();
    let r = kv(addr, &alice, "PUT", "/kv/app/x", body.as_bytes(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let etag = r.headers.get("etag").cloned().expect("etag");
    let refused = |r: &Reply, what: &str| {
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert_eq!(r.body["code"], "auth_required", "{what}");
    };
    // Added.
    for added in [("if-match", "\"999\""), ("if-none-match", "*")] {
        let auth = sign(&alice, "PUT", "/kv/app/x", body.as_bytes(), now());
        let r = http_with(
            addr,
            "PUT",
            "/kv/app/x",
            Some(auth),
            &[added],
            body.as_bytes(),
        )
        .await;
        refused(&r, &format!("added {added:?}"));
    }
    // Stripped, or changed into the other one.
    for (signed, sent) in [
        (vec![("if-match", "\"999\"")], vec![]),
        (vec![("if-none-match", "*")], vec![]),
        (
            vec![("if-match", "\"999\"")],
            vec![("if-match", etag.as_str())],
        ),
        (
            vec![("if-none-match", "*")],
            vec![("if-match", etag.as_str())],
        ),
    ] {
        let auth = sign_with(
            &alice,
            Version::V2,
            "PUT",
            "/kv/app/x",
            body.as_bytes(),
            &signed,
            now(),
        );
        let r = http_with(addr, "PUT", "/kv/app/x", Some(auth), &sent, body.as_bytes()).await;
        refused(&r, &format!("signed {signed:?}, sent {sent:?}"));
    }
    // Nothing was written by any of them.
    let r = kv(addr, &alice, "GET", "/kv/app/x", b"", &[]).await;
    assert_eq!(r.headers.get("etag"), Some(&etag), "{}", r.body);
    // Signed and sent, they are obeyed.
    let r = kv(
        addr,
        &alice,
        "PUT",
        "/kv/app/x",
        body.as_bytes(),
        &[("if-none-match", "*")],
    )
    .await;
    assert_eq!(r.status, 412, "{}", r.body);
    let r = kv(
        addr,
        &alice,
        "PUT",
        "/kv/app/x",
        body.as_bytes(),
        &[("if-match", &etag)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A v1 signature (no `v=`) does not cover the preconditions: a v1
/// request that carries one is refused with a reason that says so, even
/// when its signature is right; without one, v1 still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_request_with_a_precondition_is_refused() {
    let (_s, addr) = server().await;
    let alice = login(addr, "alice", "correct horse")
        .await
        .ok()
        .expect("login");
    let body = json!({"value": 1}).to_string();
    let v1 = |extra: &[(&str, &str)]| {
        sign_with(
            &alice,
            Version::V1,
            "PUT",
            "/kv/app/y",
            body.as_bytes(),
            extra,
            now(),
        )
    };
    let auth = v1(&[]);
    assert!(!auth.contains("v="), "{auth}");
    let r = http_with(addr, "PUT", "/kv/app/y", Some(auth), &[], body.as_bytes()).await;
    assert_eq!(r.status, 200, "v1 without preconditions: {}", r.body);
    for pre in [("if-match", "\"1\""), ("if-none-match", "*")] {
        let r = http_with(
            addr,
            "PUT",
            "/kv/app/y",
            Some(v1(&[pre])),
            &[pre],
            body.as_bytes(),
        )
        .await;
        assert_eq!(r.status, 401, "{pre:?}: {}", r.body);
        let why = r.body["error"].as_str().unwrap_or_default();
        assert!(why.contains("v=2"), "{pre:?}: {why}");
    }
    // On the session routes too.
    let path = format!("/session/{}", alice.sid);
    let pre = [("if-none-match", "*")];
    let auth = sign_with(&alice, Version::V1, "GET", &path, b"", &pre, now());
    let r = http_with(addr, "GET", &path, Some(auth), &pre, b"").await;
    assert_eq!(r.status, 401, "{}", r.body);
}

/// A precondition that is sent twice, empty or in bytes that do not read
/// as text, or that the server cannot honour, is `400` — never ignored
/// (which would make the write unconditional), signed or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_precondition_is_honoured_or_refused_never_dropped() {
    let (_s, addr) = server().await;
    let alice = login(addr, "alice", "correct horse")
        .await
        .ok()
        .expect("login");
    let body = json!({"value": 1}).to_string();
    let r = kv(addr, &alice, "PUT", "/kv/app/z", body.as_bytes(), &[]).await;
    let etag = r.headers.get("etag").cloned().expect("etag");
    for extra in [
        vec![("if-match", etag.as_str()), ("if-match", "\"1\"")],
        vec![("if-none-match", "*"), ("if-none-match", "*")],
        vec![("if-match", "")],
        vec![("if-none-match", "\"5\"")],
        vec![("if-match", etag.as_str()), ("if-none-match", "*")],
        vec![("if-match", "soon")],
    ] {
        let r = kv(addr, &alice, "PUT", "/kv/app/z", body.as_bytes(), &extra).await;
        assert_eq!(r.status, 400, "{extra:?}: {}", r.body);
        assert_eq!(r.body["code"], "bad_request", "{extra:?}");
    }
    // A byte that is not visible ASCII (obs-text), signed or not.
    let auth = sign(&alice, "PUT", "/kv/app/z", body.as_bytes(), now());
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut raw = format!(
        "PUT /kv/app/z HTTP/1.1\r\nhost: k\r\nconnection: close\r\nauthorization: {auth}\r\ncontent-length: {}\r\nif-match: \"",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(b"1\xe9\"\r\n\r\n");
    raw.extend_from_slice(body.as_bytes());
    s.write_all(&raw).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.contains("If-Match must be a non-empty visible ASCII value"),
        "{text}"
    );
    // The node was written by none of them.
    let r = kv(addr, &alice, "GET", "/kv/app/z", b"", &[]).await;
    assert_eq!(r.headers.get("etag"), Some(&etag));
}

fn no_store(r: &Reply, what: &str) {
    assert_eq!(
        r.headers.get("cache-control").map(String::as_str),
        Some("no-store"),
        "{what}: {} {}",
        r.status,
        r.body
    );
}

/// Every route of docs/openapi.json, in its answers and its errors, says
/// `Cache-Control: no-store`: sessions, challenges, values and user
/// records must not stay in a shared or a browser cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_says_no_store() {
    let (_s, addr) = server().await;
    let mut seen = Vec::new();
    let mut check = |r: Reply, what: &str, want: u16| {
        assert_eq!(r.status, want, "{what}: {}", r.body);
        no_store(&r, what);
        seen.push(what.to_owned());
    };
    check(http(addr, "GET", "/", None, b"").await, "GET /", 200);
    check(
        http(addr, "GET", "/openapi.json", None, b"").await,
        "GET /openapi.json",
        200,
    );
    check(
        http(addr, "GET", "/login", None, b"").await,
        "GET /login",
        200,
    );
    check(
        http(addr, "GET", "/login.js", None, b"").await,
        "GET /login.js",
        200,
    );
    check(
        http(addr, "GET", "/nowhere", None, b"").await,
        "no such route",
        404,
    );
    check(
        http(addr, "POST", "/session/new", None, &vec![b'x'; 70 * 1024]).await,
        "a body over http_max_body",
        413,
    );
    check(
        http(addr, "POST", "/session/new", None, b"{not json").await,
        "POST /session/new, malformed",
        400,
    );
    // A login by hand: the challenge, the waiting state and the proof.
    let start = common::rest::scram_begin(addr, "alice", "correct horse")
        .await
        .ok()
        .expect("challenged");
    let spath = format!("/session/{}", start.sid);
    check(
        http(addr, "GET", &spath, None, b"").await,
        "GET /session/{sid}, waiting",
        200,
    );
    check(
        http(
            addr,
            "PUT",
            "/session/00112233445566778899aabbccddeeff",
            None,
            b"{}",
        )
        .await,
        "PUT /session/{sid}, no such login",
        404,
    );
    let proof = json!({"data": start.client_final}).to_string();
    check(
        http(addr, "PUT", &spath, None, proof.as_bytes()).await,
        "PUT /session/{sid}",
        303,
    );
    let first =
        json!({"method": "scram-sha-256", "user": "bob", "data": "n,,n=bob,r=abcdefghijklmnop"});
    check(
        http(
            addr,
            "POST",
            "/session/new",
            None,
            first.to_string().as_bytes(),
        )
        .await,
        "POST /session/new",
        201,
    );
    let alice = login(addr, "alice", "correct horse")
        .await
        .ok()
        .expect("login");
    let bob = login(addr, "bob", "bobs pw").await.ok().expect("login");
    let apath = format!("/session/{}", alice.sid);
    check(
        kv(addr, &alice, "GET", &apath, b"", &[]).await,
        "GET /session/{sid}",
        200,
    );
    check(
        http(addr, "GET", &apath, None, b"").await,
        "GET /session/{sid}, unsigned",
        401,
    );
    check(
        kv(
            addr,
            &alice,
            "POST",
            &format!("{apath}/keepalive"),
            b"",
            &[],
        )
        .await,
        "POST /session/{sid}/keepalive",
        200,
    );
    let one = json!({"value": 1}).to_string();
    check(
        kv(addr, &alice, "PUT", "/kv/app/x", one.as_bytes(), &[]).await,
        "PUT /kv",
        200,
    );
    check(
        kv(addr, &alice, "PUT", "/kv/app/x", b"{oops", &[]).await,
        "PUT /kv, malformed",
        400,
    );
    check(
        kv(addr, &alice, "GET", "/kv/app/x", b"", &[]).await,
        "GET /kv",
        200,
    );
    check(
        kv(addr, &alice, "GET", "/kv/app/none", b"", &[]).await,
        "GET /kv, no value",
        404,
    );
    check(
        kv(addr, &bob, "PUT", "/kv/app/x", one.as_bytes(), &[]).await,
        "PUT /kv, not allowed",
        403,
    );
    check(
        kv(addr, &alice, "DELETE", "/kv/app/x", b"", &[]).await,
        "DELETE /kv",
        200,
    );
    check(
        kv(addr, &alice, "GET", "/user/alice", b"", &[]).await,
        "GET /user/{name}",
        200,
    );
    check(
        kv(addr, &alice, "GET", "/user/nobody", b"", &[]).await,
        "GET /user/{name}, not allowed",
        403,
    );
    let create = json!({"method": "scram-sha-256", "data": "x"}).to_string();
    check(
        kv(addr, &alice, "POST", "/user/carol", create.as_bytes(), &[]).await,
        "POST /user/{name}, not allowed",
        403,
    );
    check(
        kv(addr, &alice, "PUT", "/user/alice", b"{}", &[]).await,
        "PUT /user/{name}, malformed",
        400,
    );
    check(
        kv(addr, &alice, "DELETE", "/user/bob", b"", &[]).await,
        "DELETE /user/{name}, not allowed",
        403,
    );
    check(
        kv(addr, &alice, "DELETE", &apath, b"", &[]).await,
        "DELETE /session/{sid}",
        204,
    );
    check(
        kv(addr, &alice, "GET", "/kv/app/x", b"", &[]).await,
        "a request of an ended session",
        401,
    );
    // Each of docs/openapi.json's routes was asked at least once.
    for route in [
        "GET /",
        "GET /openapi.json",
        "POST /session/new",
        "PUT /session/{sid}",
        "GET /session/{sid}",
        "DELETE /session/{sid}",
        "POST /session/{sid}/keepalive",
        "GET /kv",
        "PUT /kv",
        "DELETE /kv",
        "GET /user/{name}",
        "POST /user/{name}",
        "PUT /user/{name}",
        "DELETE /user/{name}",
        "GET /login",
        "GET /login.js",
    ] {
        assert!(
            seen.iter()
                .any(|w| w == route || w.starts_with(&format!("{route},"))),
            "{route} not asked: {seen:?}"
        );
    }
}

/// The `503` a client gets over `http_max_connections` (written without
/// reading the request) says `no-store` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_caps_503_says_no_store() {
    let (_s, addr) = server_with(|c| c.http_max_connections = 1).await;
    // The one slot, held by a connection that sends nothing.
    let held = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let r = http(addr, "GET", "/", None, b"").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["code"], "too_many_connections");
    no_store(&r, "503 over the connection cap");
    drop(held);
}
