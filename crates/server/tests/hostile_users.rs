//! Hostile clients against user management (`/user/{name}`, `user_show`,
//! `auth_delete`, the last logins written behind), from an adversarial
//! review of `actions/users.rs`, `http/users.rs`, `logins.rs` and the
//! deletion paths (DESIGN §2, §4, §5, §7).
//!
//! `finding_*` tests reproduce the 11 weaknesses the review found (each
//! failed until it was fixed; the comment says what it was). `ok_*` tests
//! are attacks the server handled from the start. All guard against
//! regressions.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use base64::Engine as _;
use common::rest::{
    http, http_with, kv, login, now, opaque_login, scram_begin, sign, Reply, Session,
};
use common::{code, domain_login, domain_server, path, req, start_with, Raw, TestServer, WAIT};
use keycard_auth::{
    ClientMethod, ClientRegistry, Exchange, OpaqueClient, OpaqueLogin, Password, ScramClient, Step,
    Verifier,
};
use keycard_client::Client;
use keycard_proto::{Elem, Msg, Path, Value};
use keycard_store::Op;
use serde_json::json;

// ---------------------------------------------------------------- helpers

/// The users of [`server`]: name, password.
const ADMIN: (&str, &str) = ("admin", "admin pw");
const ALICE: (&str, &str) = ("alice", "alice pw");
const BOB: (&str, &str) = ("bob", "bob pw");
const BOSS: (&str, &str) = ("boss", "boss pw");

fn p(s: &str) -> Path {
    Path::parse(s).expect("path")
}

/// `(nil, "auth", METHOD, "user", NAME)`.
fn record_at(method: &str, name: &str) -> Path {
    Path::new(vec![
        Elem::Nil,
        "auth".into(),
        method.into(),
        "user".into(),
        name.into(),
    ])
}

async fn internal(c: &Client, at: &str, v: Value) {
    c.request(
        Msg::new()
            .with("action", "set_internal")
            .with_path("path", &p(at))
            .with("value", v),
    )
    .await
    .expect("set_internal");
}

fn caps(names: &[&str]) -> Value {
    Msg::new()
        .with(
            "caps",
            Value::Array(names.iter().map(|n| Value::from(*n)).collect()),
        )
        .into_value()
}

/// A server with the HTTP listener, `scram-sha-256` current and `opaque`
/// accepted. SCRAM users: `admin` (read_auth, write_auth), `alice` (no
/// capability, no ACL), `bob` (bound to ACL `ro`: reads `app` only),
/// `boss` (super_root); OPAQUE user `oscar`. Data: `app.x` = 1,
/// `secret.y` = 2.
async fn server() -> (TestServer, SocketAddr) {
    let s = start_with(|c| c.http = Some("127.0.0.1:0".parse().expect("addr"))).await;
    let c = Client::connect(s.addr()).await.expect("connect");
    for (u, pw) in [ADMIN, ALICE, BOB, BOSS] {
        c.set_user(&ScramClient::new(u, Password::new(pw)))
            .await
            .expect("user");
    }
    c.set_user(&OpaqueClient {
        user: "oscar".into(),
        password: Password::new("oscar pw"),
    })
    .await
    .expect("oscar");
    internal(
        &c,
        "auth.scram-sha-256.user.admin.caps",
        caps(&["read_auth", "write_auth"]),
    )
    .await;
    internal(
        &c,
        "auth.scram-sha-256.user.boss.caps",
        caps(&["super_root"]),
    )
    .await;
    internal(&c, "acl.ro.app.#", Value::from("rx")).await;
    internal(&c, "acl.ro.app", Value::from("x")).await;
    internal(
        &c,
        "auth.scram-sha-256.user.bob.acl",
        Msg::new().with("key", "ro").into_value(),
    )
    .await;
    c.set(&p("app.x"), Value::from(1)).await.expect("data");
    c.set(&p("secret.y"), Value::from(2)).await.expect("data");
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

async fn rest(addr: SocketAddr, user: (&str, &str)) -> Session {
    match login(addr, user.0, user.1).await {
        Ok(s) => s,
        Err(r) => panic!("{} cannot log in: {} {}", user.0, r.status, r.body),
    }
}

/// A msgpack client logged in with SCRAM.
async fn msgpack(s: &TestServer, user: (&str, &str)) -> Client {
    let c = Client::connect(s.addr()).await.expect("connect");
    c.login(&ScramClient::new(user.0, Password::new(user.1)))
        .await
        .expect("msgpack login");
    c
}

async fn call(addr: SocketAddr, s: &Session, method: &str, path: &str, body: &str) -> Reply {
    kv(addr, s, method, path, body.as_bytes(), &[]).await
}

fn verifier(pw: &str) -> String {
    Verifier::generate(&Password::new(pw), 4096)
        .expect("verifier")
        .to_text()
}

fn scram_body(pw: &str) -> String {
    json!({"method": "scram-sha-256", "data": verifier(pw)}).to_string()
}

/// Percent-encodes every byte that is not unreserved.
fn enc(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn user_path(name: &str) -> String {
    format!("/user/{}", enc(name))
}

fn data_b64(v: &Value) -> String {
    match v.get("data") {
        Some(Value::Bin(b)) => URL_SAFE_NO_PAD.encode(b),
        other => panic!("expected bytes in 'data': {other:?}"),
    }
}

/// The client's first OPAQUE registration message (base64url) and its
/// continuation.
fn opaque_request(user: &str, pw: &str) -> (String, Box<dyn Exchange<()>>) {
    let client = OpaqueClient {
        user: user.into(),
        password: Password::new(pw),
    };
    let start = client.set_record(None);
    let request = data_b64(&start.request.into_value());
    let Some(exchange) = start.exchange else {
        panic!("OPAQUE registration has an exchange")
    };
    (request, exchange)
}

/// The upload (base64url) for a registration response (base64url).
fn opaque_upload(exchange: Box<dyn Exchange<()>>, response: &str) -> String {
    let response = URL_SAFE_NO_PAD.decode(response).expect("b64");
    let Step::Send(upload, _) = exchange.next(&Msg::new().with("data", response).into_value())
    else {
        panic!("an upload")
    };
    data_b64(&upload.into_value())
}

/// Both steps of an OPAQUE registration over REST (`POST` or `PUT`):
/// the first reply, and the second if the first was a `200`.
async fn opaque_register(
    addr: SocketAddr,
    s: &Session,
    verb: &str,
    name: &str,
    pw: &str,
) -> (Reply, Option<Reply>) {
    let (request, exchange) = opaque_request(name, pw);
    let first = json!({"method": "opaque", "data": request}).to_string();
    let r1 = call(addr, s, verb, &user_path(name), &first).await;
    if r1.status != 200 {
        return (r1, None);
    }
    let upload = opaque_upload(exchange, r1.body["data"].as_str().expect("response"));
    let token = r1.body["token"].as_str().expect("token");
    let second =
        json!({"method": "opaque", "data": request, "token": token, "upload": upload}).to_string();
    let r2 = call(addr, s, verb, &user_path(name), &second).await;
    (r1, Some(r2))
}

async fn make_token(admin: &Client, user: &str) -> String {
    let made = admin
        .request(
            Msg::new()
                .with("action", "token_create")
                .with("user", user)
                .with("ttl", 600),
        )
        .await
        .expect("token");
    made.get("token")
        .and_then(Value::as_str)
        .expect("token")
        .to_owned()
}

/// A raw connection logged in with a token, or the login's error code.
async fn token_login(s: &TestServer, token: &str) -> Result<Raw, String> {
    let mut r = Raw::connect(s.addr()).await;
    let v = r
        .call_stream(req(1, "auth").with("typ", "token").with("token", token))
        .await;
    match v.iter().find_map(code) {
        Some(c) => Err(c.to_owned()),
        None => Ok(r),
    }
}

/// Sends `get_value app.x` and says whether a value came back (`false` for
/// an error or a closed connection).
async fn reads_data(raw: &mut Raw, seq: i64) -> bool {
    raw.send(req(seq, "get_value").with("path", path("app.x")))
        .await;
    loop {
        match raw.try_recv(WAIT).await {
            Some(Some(v)) if v.get("seq").and_then(Value::as_i64) == Some(seq) => {
                return v.get("value").is_some()
            }
            Some(Some(_)) => continue,
            _ => return false,
        }
    }
}

fn status_counts(replies: &[u16]) -> std::collections::BTreeMap<u16, usize> {
    let mut m = std::collections::BTreeMap::new();
    for s in replies {
        *m.entry(*s).or_insert(0) += 1;
    }
    m
}

// ------------------------------------------------ privilege escalation

/// FINDING: a user may `PUT` a credential on its own name for *any*
/// settable method (`set_credential` only checks `is_self`, by name). A
/// user bound to a restrictive ACL (bob, `ro`) registers an OPAQUE
/// credential for itself; the new `opaque` record has no `acl` (nor
/// `groups`) aux node, and a user bound to no ACL has full data access —
/// so bob logs in with OPAQUE and reads `secret`, which its ACL forbids.
/// Fix (`actions/users.rs`, `set_credential`): self-service may only
/// replace the credential of the method the session logged in with (or of
/// a record that already exists); adding a method needs `write_auth`, and
/// a record added to an existing user should copy its `acl` and `groups`
/// bindings from the user's existing record(s) (never grant less
/// restriction than the user already has).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_user_cannot_escape_its_acl_by_adding_a_second_method() {
    let (_s, addr) = server().await;
    let bob = rest(addr, BOB).await;
    let r = call(addr, &bob, "GET", "/kv/secret/y", "").await;
    assert_eq!(r.status, 403, "bob's ACL forbids secret: {}", r.body);
    let r = call(addr, &bob, "GET", "/kv/app/x", "").await;
    assert_eq!(r.status, 200, "bob reads app: {}", r.body);

    let (r1, r2) = opaque_register(addr, &bob, "PUT", "bob", "bobs other pw").await;
    let stored = match &r2 {
        Some(r2) => r2.status == 200,
        None => false,
    };
    if !stored {
        // Refused: fine, as long as it is a refusal and not a crash.
        let last = r2.as_ref().unwrap_or(&r1);
        assert!(
            [400, 403].contains(&last.status),
            "{} {}",
            last.status,
            last.body
        );
        return;
    }
    let Some(bob2) = opaque_login(addr, "bob", "bobs other pw").await else {
        panic!("the stored OPAQUE credential does not log in")
    };
    let r = call(addr, &bob2, "GET", "/kv/secret/y", "").await;
    assert_eq!(
        r.status, 403,
        "bob's self-registered OPAQUE login escaped its ACL `ro` and read secret.y: {}",
        r.body
    );
}

/// FINDING: `write_auth` ("create, re-key and delete users of methods
/// other than root") lets its holder re-key *any* non-`root`-method user,
/// including one granted `super_root` in its `caps`: admin (read_auth +
/// write_auth) sets boss's SCRAM verifier and logs in as boss — a
/// super-root. Deleting boss (a denial of service on the real
/// administrators) needs no more either.
/// Fix (`actions/users.rs`, `set_credential` and `delete`; the same in
/// `actions/auth.rs` `auth_set`/`auth_delete`): read the target's `caps`
/// aux node(s) first; if the target holds a capability the caller lacks
/// (in particular `super_root`), require super-root (or refuse unless the
/// caller's capabilities are a superset of the target's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_write_auth_cannot_take_over_or_delete_a_super_root_user() {
    let (s, addr) = server().await;
    let admin = rest(addr, ADMIN).await;
    let r = call(addr, &admin, "PUT", "/user/boss", &scram_body("pwned")).await;
    assert_eq!(
        r.status, 403,
        "a write_auth holder re-keyed a super_root user: {}",
        r.body
    );
    assert!(
        login(addr, "boss", "pwned").await.is_err(),
        "the write_auth holder logs in as the super-root"
    );
    let r = call(addr, &admin, "DELETE", "/user/boss", "").await;
    assert_eq!(
        r.status, 403,
        "a write_auth holder deleted a super_root user: {}",
        r.body
    );
    // boss is intact.
    let _boss = msgpack(&s, BOSS).await;
}

/// FINDING: a user created by `POST` picks up whatever aux nodes already
/// sit below its record path. `auth_delete` and `DELETE /user` remove
/// them, but DistKV's way of deleting an auth record (`delete_internal`
/// of the record) and older data leave `caps`/`acl`/`groups` behind; the
/// next user created under that name by a mere `write_auth` holder is
/// then granted them (here: `super_root`). Fix (`actions/users.rs`,
/// `set_credential`): on creation, put `Op::delete` of every [`AUX`]
/// node of the new record in the same batch as the record (before the
/// `acl` put), so a created user starts with exactly what the request
/// says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_created_user_does_not_inherit_stale_aux_nodes() {
    let (s, addr) = server().await;
    let boss = msgpack(&s, BOSS).await;
    boss.set_user(&ScramClient::new("ghost", Password::new("old ghost pw")))
        .await
        .expect("ghost");
    internal(
        &boss,
        "auth.scram-sha-256.user.ghost.caps",
        caps(&["super_root"]),
    )
    .await;
    // Deleted the DistKV way: the record only.
    boss.request(
        Msg::new()
            .with("action", "delete_internal")
            .with_path("path", &p("auth.scram-sha-256.user.ghost")),
    )
    .await
    .expect("delete_internal");
    let admin = rest(addr, ADMIN).await;
    let r = call(addr, &admin, "GET", "/user/ghost", "").await;
    assert_eq!(r.status, 404, "ghost is gone: {}", r.body);
    // A write_auth holder creates a fresh "ghost" it controls.
    let r = call(
        addr,
        &admin,
        "POST",
        "/user/ghost",
        &scram_body("new ghost"),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let ghost = rest(addr, ("ghost", "new ghost")).await;
    let r = call(addr, &ghost, "GET", "/user/boss", "").await;
    assert_eq!(
        r.status, 403,
        "the new ghost inherited the old record's super_root: {}",
        r.body
    );
}

/// Held up: a user without `write_auth` creates nobody, grants itself
/// nothing (no `acl` on `PUT`, unknown fields such as `caps` ignored),
/// cannot set a credential for another user, for the `root` method or
/// any non-REST method; `write_auth` cannot delete the `root` user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_no_capability_is_gained_through_the_user_routes() {
    let (s, addr) = server().await;
    let alice = rest(addr, ALICE).await;
    let v = verifier("x");
    let cases: Vec<(&str, &str, String, u16)> = vec![
        (
            "POST",
            "/user/mallory",
            json!({"method": "scram-sha-256", "data": v}).to_string(),
            403,
        ),
        (
            "POST",
            "/user/mallory",
            json!({"method": "scram-sha-256", "data": v, "acl": "*"}).to_string(),
            403,
        ),
        (
            "PUT",
            "/user/bob",
            json!({"method": "scram-sha-256", "data": v}).to_string(),
            403,
        ),
        (
            "PUT",
            "/user/alice",
            json!({"method": "scram-sha-256", "data": v, "acl": "*"}).to_string(),
            400,
        ),
        (
            "PUT",
            "/user/alice",
            json!({"method": "root", "data": ""}).to_string(),
            400,
        ),
        (
            "PUT",
            "/user/alice",
            json!({"method": "_test", "data": ""}).to_string(),
            400,
        ),
        (
            "PUT",
            "/user/alice",
            json!({"method": "password", "data": "x"}).to_string(),
            400,
        ),
        ("DELETE", "/user/bob", String::new(), 403),
        ("DELETE", "/user/alice", String::new(), 403),
        ("GET", "/user/bob", String::new(), 403),
    ];
    for (m, path, body, want) in cases {
        let r = call(addr, &alice, m, path, &body).await;
        assert_eq!(r.status, want, "{m} {path} {body}: {}", r.body);
    }
    // PUT on itself with extra fields: accepted, but nothing is granted.
    let body = json!({
        "method": "scram-sha-256", "data": verifier("alice pw2"),
        "caps": ["super_root"], "groups": ["admins"], "super_root": true
    })
    .to_string();
    let r = call(addr, &alice, "PUT", "/user/alice", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let alice2 = rest(addr, ("alice", "alice pw2")).await;
    let r = call(addr, &alice2, "GET", "/user/bob", "").await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = call(addr, &alice2, "GET", "/user/alice", "").await;
    assert_eq!(r.status, 200);
    assert!(r.body["methods"][0].get("acl").is_none(), "{}", r.body);
    // The root user needs super-root to delete.
    let boss = msgpack(&s, BOSS).await;
    boss.set_user(ClientRegistry::make("root", None).expect("m").as_ref())
        .await
        .expect("root user");
    let admin = rest(addr, ADMIN).await;
    let r = call(addr, &admin, "DELETE", "/user/*", "").await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = call(addr, &admin, "POST", "/user/*", &scram_body("x")).await;
    assert_eq!(r.status, 409, "{}", r.body);
}

// ------------------------------------------------------- enumeration

/// Held up: a caller without the capability gets the same status and body
/// for an existing and a missing name, on every route and over msgpack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_users_cannot_be_enumerated_without_the_capability() {
    let (s, addr) = server().await;
    let alice = rest(addr, ALICE).await;
    let body = scram_body("x");
    let opaque_first = {
        let (request, _) = opaque_request("bob", "x");
        json!({"method": "opaque", "data": request}).to_string()
    };
    for (m, b) in [
        ("GET", ""),
        ("DELETE", ""),
        ("PUT", body.as_str()),
        ("PUT", opaque_first.as_str()),
        ("POST", body.as_str()),
        ("POST", opaque_first.as_str()),
    ] {
        let mut seen = Vec::new();
        for name in ["bob", "oscar", "nobody", &"n".repeat(300)] {
            let r = call(addr, &alice, m, &user_path(name), b).await;
            seen.push((r.status, r.body.to_string()));
        }
        assert!(
            seen.iter().all(|x| *x == seen[0]),
            "{m}: answers differ by name: {seen:?}"
        );
        assert_eq!(seen[0].0, 403, "{m}");
    }
    let c = msgpack(&s, ALICE).await;
    let mut seen = Vec::new();
    for name in ["bob", "oscar", "nobody"] {
        let e = c
            .request(Msg::new().with("action", "user_show").with("ident", name))
            .await
            .expect_err("not alice's");
        seen.push(e.to_string());
    }
    assert!(seen.iter().all(|x| *x == seen[0]), "{seen:?}");
}

// ------------------------------------------------------------ deletion

/// FINDING: `auth_delete` (msgpack) revokes the deleted user's keycards
/// with a filter that names the record's method. Token keycards have the
/// method `token` (live ones and durable ones alike — `durable()` returns
/// nothing for any other method), so the user's token sessions survive
/// the deletion, and its tokens stay `authenticated`: once a user of the
/// same name is created again (by anyone, with any password), the old
/// token logs in as it. Fix (`actions/auth.rs`, `auth_delete`): after
/// deleting a `user` record, also revoke with `Filter { user, domain,
/// method: Some("token") }` restricted to tokens whose `user_method` is
/// the deleted record's method (or, like `users::delete`, revoke every
/// token of the name); `revoke_matching` could take the user method as a
/// `keep` predicate on the durable record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_auth_delete_ends_the_users_tokens_and_token_sessions() {
    let (s, _addr) = server().await;
    let boss = msgpack(&s, BOSS).await;
    let token = make_token(&boss, "alice").await;
    let mut session = token_login(&s, &token).await.expect("token login");
    assert!(reads_data(&mut session, 2).await);
    boss.request(
        Msg::new()
            .with("action", "auth_delete")
            .with("typ", "scram-sha-256")
            .with("kind", "user")
            .with("ident", "alice"),
    )
    .await
    .expect("auth_delete");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let alive = reads_data(&mut session, 3).await;
    // A new alice, not the old one.
    boss.set_user(&ScramClient::new("alice", Password::new("a new alice")))
        .await
        .expect("new alice");
    let relogin = token_login(&s, &token).await.err();
    assert!(
        !alive,
        "the deleted user's token session still reads data after auth_delete"
    );
    assert_eq!(
        relogin.as_deref(),
        Some("auth_failed"),
        "the deleted user's token logs in as the re-created user"
    );
}

/// Held up: `DELETE /user/{name}` ends the user's REST sessions, msgpack
/// connections, token sessions and tokens; a user re-created under the
/// name inherits no ACL binding, capability, last login, token or
/// session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_rest_delete_ends_everything_and_a_new_user_starts_afresh() {
    let (s, addr) = server().await;
    let boss = msgpack(&s, BOSS).await;
    let admin = rest(addr, ADMIN).await;
    // A victim with an ACL, capabilities, groups and logins.
    let r = call(
        addr,
        &admin,
        "POST",
        "/user/vic",
        &json!({"method": "scram-sha-256", "data": verifier("vic pw"), "acl": "ro"}).to_string(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    internal(
        &boss,
        "auth.scram-sha-256.user.vic.caps",
        caps(&["read_auth"]),
    )
    .await;
    internal(
        &boss,
        "auth.scram-sha-256.user.vic.groups",
        Msg::new()
            .with("groups", Value::Array(vec!["g".into()]))
            .into_value(),
    )
    .await;
    let vic_rest = rest(addr, ("vic", "vic pw")).await;
    let vic_msgpack = msgpack(&s, ("vic", "vic pw")).await;
    let token = make_token(&boss, "vic").await;
    let mut vic_token = token_login(&s, &token).await.expect("token");
    assert!(reads_data(&mut vic_token, 2).await);
    s.handle.state.logins.flush().await.expect("flush");

    let r = call(addr, &admin, "DELETE", "/user/vic", "").await;
    assert_eq!(r.status, 204, "{}", r.body);
    let path = format!("/session/{}", vic_rest.sid);
    assert_eq!(call(addr, &vic_rest, "GET", &path, "").await.status, 401);
    assert!(vic_msgpack
        .request(Msg::new().with("action", "whoami"))
        .await
        .is_err());
    assert!(!reads_data(&mut vic_token, 3).await);
    for aux in ["acl", "caps", "groups", "keycard", "logins"] {
        let at = record_at("scram-sha-256", "vic").child(aux);
        let left = s.handle.state.store.get(&at).await.expect("get");
        assert!(left.is_none(), "{aux} survived the deletion");
    }

    // Re-created without an ACL: it starts afresh.
    let r = call(addr, &admin, "POST", "/user/vic", &scram_body("vic2")).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        token_login(&s, &token).await.err().as_deref(),
        Some("auth_failed")
    );
    let vic2 = rest(addr, ("vic", "vic2")).await;
    let r = call(addr, &vic2, "GET", "/user/vic", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["methods"][0].get("acl"), None, "{}", r.body);
    assert_eq!(r.body["methods"][0].get("groups"), None, "{}", r.body);
    assert_eq!(r.body["last_logins"].as_array().map(Vec::len), Some(1));
    let r = call(addr, &vic2, "GET", "/user/bob", "").await;
    assert_eq!(r.status, 403, "no read_auth inherited");
    assert_eq!(call(addr, &vic_rest, "GET", &path, "").await.status, 401);
}

/// Held up: a login under way (challenged) when its user is deleted does
/// not finish: the deletion revokes its pending keycard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_a_login_under_way_when_its_user_is_deleted_does_not_finish() {
    let (_s, addr) = server().await;
    let admin = rest(addr, ADMIN).await;
    let r = call(addr, &admin, "POST", "/user/carl", &scram_body("carl pw")).await;
    assert_eq!(r.status, 201);
    let common::rest::ScramStart {
        sid, client_final, ..
    } = scram_begin(addr, "carl", "carl pw")
        .await
        .ok()
        .expect("begun");
    let r = call(addr, &admin, "DELETE", "/user/carl", "").await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = http(
        addr,
        "PUT",
        &format!("/session/{sid}"),
        None,
        json!({"data": client_final}).to_string().as_bytes(),
    )
    .await;
    assert_ne!(r.status, 303, "a deleted user's login finished: {}", r.body);
    assert!(r.status >= 400, "{}", r.status);
}

/// FINDING: a credential change racing the user's deletion resurrects the
/// user. `set_credential` checks that the user exists, then writes with
/// `Cond::Any` (for `PUT`); `delete` reads the records, then deletes them.
/// A `PUT` that passed its check before the deletion's write lands after
/// it: the deleted user comes back (its sessions were revoked, but the new
/// record logs in), and — its aux nodes being gone — with no ACL binding
/// and no group, i.e. with full data access. A user who sees it coming
/// (or just keeps `PUT`ting its own credential) survives its deletion.
/// Fix (`actions/users.rs`): serialise user-management writes per name
/// (e.g. an async mutex keyed by (domain, name) in `ServerState`, held
/// from the existence check to the write, taken by `set_credential`,
/// `delete` and `auth_delete`; for several nodes, a per-name index node
/// under the reserved root written with `Cond::TockIs` in every batch
/// does the same in the store) and re-check the caller's keycard under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_credential_change_racing_the_deletion_does_not_resurrect_the_user() {
    let (_s, addr) = server().await;
    let admin = Arc::new(rest(addr, ADMIN).await);
    let body = Arc::new(scram_body("survivor pw"));
    let mut resurrected = Vec::new();
    for round in 0..6 {
        let name = format!("zed{round}");
        let r = call(
            addr,
            &admin,
            "POST",
            &user_path(&name),
            &scram_body("zed pw"),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let zed = Arc::new(rest(addr, (name.as_str(), "zed pw")).await);
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (zed, body, name) = (zed.clone(), body.clone(), name.clone());
            tasks.push(tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..400 {
                    let r = call(addr, &zed, "PUT", &user_path(&name), &body).await;
                    statuses.push(r.status);
                    if r.status == 401 {
                        break;
                    }
                }
                statuses
            }));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        let r = call(addr, &admin, "DELETE", &user_path(&name), "").await;
        assert_eq!(r.status, 204, "{}", r.body);
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        let r = call(addr, &admin, "GET", &user_path(&name), "").await;
        if r.status != 404 {
            resurrected.push((name.clone(), status_counts(&all)));
            break;
        }
    }
    assert!(
        resurrected.is_empty(),
        "deleted users came back through a racing PUT on themselves: {resurrected:?}"
    );
}

/// FINDING: the last-login flusher checks that a record exists, then
/// writes its `logins` node unconditionally, later, in one batch. A user
/// deleted between the two gets its `logins` node written back after the
/// deletion (an orphan aux node), and a user re-created under the name
/// shows the old user's logins (times and client addresses).
/// Fix (`logins.rs` + `actions/users.rs`/`actions/auth.rs`): make the
/// flush and the deletions mutually exclusive (e.g. a `tokio::sync::Mutex`
/// in `LastLogins`, held by `flush` across its checks and write, and by
/// `delete`/`auth_delete` across their write and `forget`), or have the
/// deletion's batch run after a flush of that record and drop it from any
/// batch in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_last_logins_flushed_during_a_deletion_do_not_outlive_the_user() {
    let (s, addr) = server().await;
    let admin = rest(addr, ADMIN).await;
    let logins = s.handle.state.logins.clone();
    let filler = |i: usize| record_at("scram-sha-256", &format!("nobody-{i}"));
    let mark = |at: u64| keycard_server::logins::Mark {
        at,
        client: "10.9.8.7:6543".into(),
        method: "scram-sha-256".into(),
        via: "rest".into(),
    };
    const FILLERS: usize = 20_000;
    // How long one flush of the fillers takes.
    for i in 0..FILLERS {
        logins.record(&filler(i), mark(1));
    }
    let t0 = Instant::now();
    logins.flush().await.expect("flush");
    let took = t0.elapsed();
    let target = record_at("scram-sha-256", "flo");
    let mut leaked = None;
    for round in 0..12u32 {
        let r = call(addr, &admin, "POST", "/user/flo", &scram_body("flo pw")).await;
        assert_eq!(r.status, 201, "{}", r.body);
        for i in 0..FILLERS {
            logins.record(&filler(i), mark(1));
        }
        logins.record(&target, mark(1_000 + u64::from(round)));
        let flusher = {
            let logins = logins.clone();
            tokio::spawn(async move { logins.flush().await })
        };
        tokio::time::sleep(took * (1 + round % 3) / 4).await;
        let r = call(addr, &admin, "DELETE", "/user/flo", "").await;
        assert_eq!(r.status, 204, "{}", r.body);
        flusher.await.expect("task").expect("flush");
        let left = s
            .handle
            .state
            .store
            .get(&target.child("logins"))
            .await
            .expect("get");
        if let Some(e) = left {
            leaked = Some((round, e.value));
            break;
        }
    }
    if let Some((round, v)) = &leaked {
        // What a re-created user shows.
        let r = call(addr, &admin, "POST", "/user/flo", &scram_body("new flo")).await;
        assert_eq!(r.status, 201);
        let r = call(addr, &admin, "GET", "/user/flo", "").await;
        panic!(
            "round {round}: the deleted user's logins were written back ({v:?}); \
             the re-created user shows them: {}",
            r.body["last_logins"]
        );
    }
}

// ------------------------------------------------------------ domains

/// Held up: over msgpack (`user_show`, `auth_delete`), a domain's users
/// stay in their domain: its root cannot see the server's users whatever
/// the name, its joe sees its own logins and not the server joe's, and
/// deleting its joe ends the domain joe's keycard, not the server joe's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_a_domain_cannot_reach_users_outside_it() {
    let s = domain_server().await;
    let root = common::login(&s, "root", None).await;
    root.set_user(
        ClientRegistry::make("_test", Some("srv"))
            .expect("m")
            .as_ref(),
    )
    .await
    .expect("srv");
    let (mut djoe, v) = domain_login(&s, "_test", "joe", path("org.acme")).await;
    assert!(v.iter().all(|m| code(m).is_none()), "{v:?}");
    // The server's joe logs in twice.
    let sjoe = common::login(&s, "_test", Some("joe")).await;
    let _sjoe2 = common::login(&s, "_test", Some("joe")).await;
    let (mut droot, v) = domain_login(&s, "root", "*", path("org.acme")).await;
    assert!(v.iter().all(|m| code(m).is_none()), "{v:?}");
    let mut seq = 10;
    for name in [
        "srv",
        "../srv",
        "..",
        "org.acme",
        "srv\u{0}",
        ":n",
        "/srv",
        "srv@org.acme",
    ] {
        seq += 1;
        let v = droot.call(req(seq, "user_show").with("ident", name)).await;
        assert_eq!(code(&v), Some("not_found"), "{name:?}: {v:?}");
    }
    // The domain's joe sees itself, with its own login only.
    let v = djoe.call(req(2, "user_show").with("ident", "joe")).await;
    assert!(code(&v).is_none(), "{v:?}");
    match v.get("last_logins") {
        Some(Value::Array(l)) => assert_eq!(l.len(), 1, "{l:?}"),
        other => panic!("{other:?}"),
    }
    let v = djoe.call(req(3, "user_show").with("ident", "ro")).await;
    assert_eq!(code(&v), Some("permission_denied"), "{v:?}");
    // The domain's root deletes its joe: the server's joe is untouched.
    let v = droot
        .call(
            req(50, "auth_delete")
                .with("typ", "_test")
                .with("kind", "user")
                .with("ident", "joe"),
        )
        .await;
    assert!(code(&v).is_none(), "{v:?}");
    sjoe.request(Msg::new().with("action", "whoami"))
        .await
        .expect("the server's joe is untouched");
    djoe.send(req(4, "whoami")).await;
    let mut revoked = false;
    while let Some(Some(m)) = djoe.try_recv(WAIT).await {
        if code(&m) == Some("keycard_revoked") {
            revoked = true;
            break;
        }
    }
    assert!(revoked, "the domain's joe keeps its keycard");
}

// --------------------------------------------------------- hostile input

/// Held up: names are one element, taken literally: dots, colons,
/// slashes (percent-encoded), `..`, NUL and control characters, 256 bytes
/// (multi-byte too) work and touch nobody else; 257 bytes and invalid
/// percent-encoding are `400`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_names_are_taken_literally_and_bounded() {
    let (s, addr) = server().await;
    let admin = rest(addr, ADMIN).await;
    let names = [
        "..".to_owned(),
        ".".to_owned(),
        "a.b".to_owned(),
        "a:b".to_owned(),
        ":n".to_owned(),
        "a/b".to_owned(),
        "../alice".to_owned(),
        "alice\u{0}".to_owned(),
        "\u{1}\u{7f}\n\r".to_owned(),
        " ".to_owned(),
        "n".repeat(256),
        "é".repeat(128),
    ];
    for name in &names {
        let r = call(addr, &admin, "POST", &user_path(name), &scram_body("pw")).await;
        assert_eq!(r.status, 201, "{name:?}: {}", r.body);
        assert_eq!(r.body["name"], json!(name));
        let r = call(addr, &admin, "GET", &user_path(name), "").await;
        assert_eq!(r.status, 200, "{name:?}: {}", r.body);
        assert_eq!(r.body["name"], json!(name));
        let at = record_at("scram-sha-256", name);
        assert!(s.handle.state.store.get(&at).await.expect("get").is_some());
    }
    // alice is untouched by "alice\0" and "../alice".
    assert!(login(addr, "alice", "alice pw").await.is_ok());
    for name in ["n".repeat(257), format!("{}a", "é".repeat(128))] {
        for m in ["GET", "POST", "PUT", "DELETE"] {
            let body = if m == "POST" || m == "PUT" {
                scram_body("pw")
            } else {
                String::new()
            };
            let r = call(addr, &admin, m, &user_path(&name), &body).await;
            assert_eq!(r.status, 400, "{m} {} bytes: {}", name.len(), r.body);
        }
    }
    for raw in ["/user/%C0%AF", "/user/%ED%A0%80", "/user/%", "/user/%0"] {
        let r = call(addr, &admin, "GET", raw, "").await;
        assert_eq!(r.status, 400, "{raw}: {}", r.body);
    }
    for name in &names {
        let r = call(addr, &admin, "DELETE", &user_path(name), "").await;
        assert_eq!(r.status, 204, "{name:?}: {}", r.body);
    }
    let r = call(addr, &admin, "GET", "/user/alice", "").await;
    assert_eq!(r.status, 200);
}

/// FINDING: a SCRAM verifier's iteration count is only bounded below
/// (4096). `SCRAM-SHA-256$2147483648:…` is stored (`201`), although no
/// client can use it: keycard's own client refuses server-first messages
/// over 10 000 000 iterations, and the browser login page would run
/// PBKDF2 2^31 times. A user admin (or a user on itself) stores a
/// credential nobody can log in with — hostile input that should get a
/// clear error (DESIGN §7.8). Fix (`crates/auth/src/scram.rs`,
/// `Verifier::parse`): refuse iteration counts above the clients' bound
/// (10 000 000, one shared constant, e.g. `MAX_ITERATIONS`), as the client
/// half already does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_verifier_with_absurd_iterations_is_refused() {
    let (_s, addr) = server().await;
    let admin = rest(addr, ADMIN).await;
    let key = B64.encode([7u8; 32]);
    let salt = B64.encode([1u8; 16]);
    for iter in [2_147_483_648u64, 4_294_967_295] {
        let data = format!("SCRAM-SHA-256${iter}:{salt}${key}:{key}");
        let body = json!({"method": "scram-sha-256", "data": data}).to_string();
        let name = format!("iter{iter}");
        let r = call(addr, &admin, "POST", &user_path(&name), &body).await;
        assert_eq!(
            r.status, 400,
            "a verifier with {iter} iterations was stored: {}",
            r.body
        );
    }
    // Past u32: refused already.
    let data = format!("SCRAM-SHA-256$4294967296:{salt}${key}:{key}");
    let body = json!({"method": "scram-sha-256", "data": data}).to_string();
    let r = call(addr, &admin, "POST", "/user/iterbig", &body).await;
    assert_eq!(r.status, 400, "{}", r.body);
}

/// Held up: huge, deep, duplicated or binary bodies get clear errors and
/// the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_hostile_bodies_get_clear_errors() {
    let (_s, addr) = server().await;
    let admin = rest(addr, ADMIN).await;
    let v = verifier("pw");
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let deep_obj = format!(
        "{{\"method\":\"scram-sha-256\",\"data\":{}1{}}}",
        "{\"a\":".repeat(5_000),
        "}".repeat(5_000)
    );
    let long_data = json!({"method": "scram-sha-256", "data": "S".repeat(60_000)}).to_string();
    let long_opaque = json!({"method": "opaque", "data": "A".repeat(60_000)}).to_string();
    let long_acl =
        json!({"method": "scram-sha-256", "data": v, "acl": "a".repeat(257)}).to_string();
    let nul_method = json!({"method": "scram-sha-256\u{0}", "data": v}).to_string();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("POST", deep.into_bytes(), 400),
        ("POST", deep_obj.into_bytes(), 400),
        ("POST", long_data.into_bytes(), 400),
        ("POST", long_opaque.into_bytes(), 400),
        ("POST", long_acl.into_bytes(), 400),
        ("POST", nul_method.into_bytes(), 400),
        ("POST", vec![0xff, 0xfe, 0x00, 0x7b], 400),
        ("PUT", b"{\"method\":\"scram-sha-256\"".to_vec(), 400),
        ("POST", vec![b' '; 70_000], 413),
    ];
    for (m, body, want) in cases {
        let auth = sign(&admin, m, "/user/hostile", &body, now());
        let r = http_with(addr, m, "/user/hostile", Some(auth), &[], &body).await;
        assert_eq!(r.status, want, "{m} {} bytes: {}", body.len(), r.body);
    }
    // Duplicate keys: one meaning (serde_json keeps the last), and the
    // signature covers the bytes as sent.
    let dup = format!(
        "{{\"method\":\"opaque\",\"method\":\"scram-sha-256\",\"data\":\"x\",\"data\":\"{v}\",\"acl\":\"ro\",\"acl\":null}}"
    );
    let r = call(addr, &admin, "POST", "/user/dup", &dup).await;
    if r.status != 400 {
        // Accepted: as the last of each key says, nothing else.
        assert_eq!(r.status, 201, "{}", r.body);
        let r = call(addr, &admin, "GET", "/user/dup", "").await;
        assert_eq!(r.body["methods"][0]["method"], "scram-sha-256");
        assert_eq!(r.body["methods"][0].get("acl"), None, "{}", r.body);
        assert!(login(addr, "dup", "pw").await.is_ok());
    }
    assert!(login(addr, "alice", "alice pw").await.is_ok());
}

/// FINDING: two creations of one name under two methods both succeed.
/// `set_credential` checks that no record of the name exists, then writes
/// the new record with `Cond::Absent` on *its own method's* path only; two
/// `POST`s racing under different methods (SCRAM and OPAQUE) each see no
/// record and each get `201`: two administrators each believe they created
/// the user, and one of them holds a credential for the other's user.
/// Fix (`actions/users.rs`): the same per-name serialisation as for the
/// delete/PUT race (a lock keyed by (domain, name) around the existence
/// check and the write), or a per-name index node written with
/// `Cond::Absent` in the creation's batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_concurrent_creations_under_two_methods_give_one_201() {
    let (_s, addr) = server().await;
    let admin = Arc::new(rest(addr, ADMIN).await);
    let mut doubled = Vec::new();
    for round in 0..20 {
        let name = format!("twin{round}");
        let (request, exchange) = opaque_request(&name, "twin pw");
        let first = json!({"method": "opaque", "data": request}).to_string();
        let r = call(addr, &admin, "POST", &user_path(&name), &first).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let upload = opaque_upload(exchange, r.body["data"].as_str().expect("response"));
        let token = r.body["token"].as_str().expect("token");
        let opaque = json!({"method": "opaque", "data": request, "token": token, "upload": upload})
            .to_string();
        let scram = scram_body("twin pw");
        let path = user_path(&name);
        let (a, b) = tokio::join!(
            call(addr, &admin, "POST", &path, &opaque),
            call(addr, &admin, "POST", &path, &scram)
        );
        let mut got = [a.status, b.status];
        got.sort_unstable();
        if got != [201, 409] {
            doubled.push((name, got));
        }
    }
    assert!(
        doubled.is_empty(),
        "one name created twice under two methods: {doubled:?}"
    );
}

/// Held up: many concurrent creations of one name by one method: exactly
/// one `201`, the others `409`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_concurrent_creations_by_one_method_give_exactly_one_201() {
    let (_s, addr) = server().await;
    let admin = Arc::new(rest(addr, ADMIN).await);
    for round in 0..3 {
        let name = format!("race{round}");
        let mut tasks = Vec::new();
        for i in 0..16 {
            let (admin, name) = (admin.clone(), name.clone());
            let body = scram_body(&format!("pw{i}"));
            tasks.push(tokio::spawn(async move {
                call(addr, &admin, "POST", &user_path(&name), &body)
                    .await
                    .status
            }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.expect("task"));
        }
        let counts = status_counts(&statuses);
        assert_eq!(counts.get(&201), Some(&1), "{counts:?}");
        assert_eq!(counts.get(&409), Some(&15), "{counts:?}");
    }
}

// ------------------------------------------------------------- OPAQUE

/// FINDING: the first step of an OPAQUE registration over REST evaluates
/// the OPRF under the *login* key of the name (`ServerRegistration::start`
/// with the same credential identifier, the name, as `ServerLogin`), and
/// stores nothing, counts nothing and audits nothing. A `write_auth`
/// holder (`PUT /user/{victim}`, first step only) thus gets unlimited,
/// unthrottled, silent OPRF evaluations under the victim's key: with one
/// KE2 from a single (counted) login attempt it tests password guesses
/// offline-fast — it learns the victim's password (reused elsewhere)
/// instead of visibly resetting it, bypassing the throttling of DESIGN
/// §7.3. (The same holds for a `POST` of a name that does not exist yet:
/// precomputation before the user is created.) Shown here by sending
/// KE1's blinded element as a registration request: the response's
/// evaluated element equals KE2's.
/// Fix (`crates/auth/src/opaque.rs` + `actions/users.rs`): derive the
/// credential identifier from the name and a per-registration random
/// value stored in the record (`{record, cid}`; login uses the stored one,
/// unknown users one derived from the server secret); the stateless first
/// step returns a fresh value MAC'd under a server key and the second
/// step echoes it. (At the least, count a first step on an existing
/// user's name against that user's throttle and audit it; this test
/// accepts a refusal too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_opaque_registration_is_no_oracle_on_the_login_key() {
    let (_s, addr) = server().await;
    let admin = rest(addr, ADMIN).await;
    let (_client, ke1) = OpaqueLogin::start(&Password::new("a guess")).expect("ke1");
    let blinded = &ke1[..32];
    // The login: KE2 starts with the evaluated element.
    let body = json!({"method": "opaque", "user": "oscar", "data": URL_SAFE_NO_PAD.encode(&ke1)});
    let r = http(
        addr,
        "POST",
        "/session/new",
        None,
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let ke2 = URL_SAFE_NO_PAD
        .decode(r.body["data"].as_str().expect("KE2"))
        .expect("b64");
    // The registration's first step on oscar's name, same blinded element.
    let first = json!({"method": "opaque", "data": URL_SAFE_NO_PAD.encode(blinded)}).to_string();
    for attempt in 0..20 {
        let r = call(addr, &admin, "PUT", "/user/oscar", &first).await;
        if r.status != 200 {
            // Refused or throttled: no oracle.
            assert!([403, 429].contains(&r.status), "{} {}", r.status, r.body);
            return;
        }
        let response = URL_SAFE_NO_PAD
            .decode(r.body["data"].as_str().expect("response"))
            .expect("b64");
        if attempt == 19 {
            assert_ne!(
                response[..32],
                ke2[..32],
                "20 unthrottled registration first steps each evaluated the OPRF \
                 under oscar's login key (the same element as KE2's)"
            );
        }
    }
}

/// Held up: an OPAQUE upload that is junk, or that comes with another
/// name's (or a forged) registration token, is refused and creates no
/// user; a tampered upload never creates a user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_opaque_junk_uploads_are_refused_and_a_mismatched_one_opens_for_nobody() {
    let (_s, addr) = server().await;
    let admin = rest(addr, ADMIN).await;
    let (request, exchange) = opaque_request("olga", "olga pw");
    let first = json!({"method": "opaque", "data": request}).to_string();
    let r = call(addr, &admin, "POST", "/user/olga", &first).await;
    assert_eq!(r.status, 200);
    let upload = opaque_upload(exchange, r.body["data"].as_str().expect("response"));
    let token = r.body["token"].as_str().expect("token").to_owned();
    let mut junk = URL_SAFE_NO_PAD.decode(&upload).expect("b64");
    junk.truncate(junk.len() - 1);
    for bad in [
        URL_SAFE_NO_PAD.encode(&junk),
        String::new(),
        URL_SAFE_NO_PAD.encode([0u8; 4097]),
    ] {
        let body =
            json!({"method": "opaque", "data": request, "token": token, "upload": bad}).to_string();
        let r = call(addr, &admin, "POST", "/user/olga", &body).await;
        assert_eq!(r.status, 400, "{}", r.body);
    }
    let r = call(addr, &admin, "GET", "/user/olga", "").await;
    assert_eq!(r.status, 404);
    // olga's registration sent for "olaf": the token is olga's, so it is
    // refused (400) and nothing is stored; a forged token too.
    let body =
        json!({"method": "opaque", "data": request, "token": token, "upload": upload}).to_string();
    let r = call(addr, &admin, "POST", "/user/olaf", &body).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let forged = URL_SAFE_NO_PAD.encode([7u8; 48]);
    let body =
        json!({"method": "opaque", "data": request, "token": forged, "upload": upload}).to_string();
    let r = call(addr, &admin, "POST", "/user/olga", &body).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = call(addr, &admin, "GET", "/user/olaf", "").await;
    assert_eq!(r.status, 404);
    assert!(opaque_login(addr, "olaf", "olga pw").await.is_none());
    // The real thing works.
    let body =
        json!({"method": "opaque", "data": request, "token": token, "upload": upload}).to_string();
    let r = call(addr, &admin, "POST", "/user/olga", &body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(opaque_login(addr, "olga", "olga pw").await.is_some());
}

// ----------------------------------------------------------- sessions

/// FINDING: `users::show` skips every check when the caller asks about
/// itself (`if !is_self { check_cap }`), including the liveness check that
/// `check_cap`/`check_login` make. Over msgpack a connection whose keycard
/// has expired (the connection stays open; every other action answers
/// `keycard_expired`) still reads its user's records, bindings and last
/// logins (client addresses) with `user_show`. Fix (`actions/users.rs`,
/// `show`): call `super::check_login(state, session)?` first (as
/// `set_credential` does for itself), then the capability check for
/// others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_user_show_on_an_expired_keycard_is_refused() {
    let mut clock = None;
    let s = common::server(|c| {
        c.keycards.duration = 1;
        clock = Some(common::manual_clock(c));
    })
    .await;
    let clock = clock.expect("clock");
    let mut joe = common::raw_login(&s, "joe").await;
    let v = joe.call(req(2, "user_show").with("ident", "joe")).await;
    assert!(code(&v).is_none(), "{v:?}");
    clock.advance(Duration::from_millis(1_600));
    let v = joe
        .call(req(3, "get_value").with("path", path("data.x")))
        .await;
    assert_eq!(code(&v), Some("keycard_expired"), "{v:?}");
    let v = joe.call(req(4, "user_show").with("ident", "joe")).await;
    assert_eq!(
        code(&v),
        Some("keycard_expired"),
        "an expired keycard still shows its user: {v:?}"
    );
}

// ---------------------------------------------------------- audit log

/// FINDING: creating a user, setting a credential and deleting a user
/// reach only `tracing` (target `keycard::audit`), not the audit log
/// (`audit.rs`, the file `audit_tail` reads): an administrator resetting
/// someone's password or creating a backdoor user leaves no trace there
/// (the deletion only shows as keycard revocations, if any). Fix
/// (`audit.rs`: an `Audit::user(event, name, method, by)` writing a JSON
/// line like `keycard`; called from `actions/users.rs` `set_credential`
/// and `delete`, and from `auth_set`/`auth_delete`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_user_management_is_in_the_audit_log() {
    let (s, addr) = server().await;
    let admin = rest(addr, ADMIN).await;
    let r = call(addr, &admin, "POST", "/user/newbie", &scram_body("n")).await;
    assert_eq!(r.status, 201);
    let r = call(addr, &admin, "PUT", "/user/newbie", &scram_body("m")).await;
    assert_eq!(r.status, 200);
    let r = call(addr, &admin, "DELETE", "/user/newbie", "").await;
    assert_eq!(r.status, 204);
    // The writer runs behind the events: wait for the last one.
    common::audit_log_with(&s, |l| l.contains("user deleted")).await;
    let c = msgpack(&s, ADMIN).await;
    let tail = c
        .request(Msg::new().with("action", "audit_tail").with("n", 10_000))
        .await
        .expect("audit_tail");
    let lines: Vec<&str> = match tail.get("result") {
        Some(Value::Array(l)) => l.iter().filter_map(Value::as_str).collect(),
        other => panic!("{other:?}"),
    };
    let about: Vec<&&str> = lines.iter().filter(|l| l.contains("newbie")).collect();
    assert!(
        about.len() >= 2,
        "creating, re-keying and deleting newbie left {} audit lines: {about:?}",
        about.len()
    );
}

// ---------------------------------------------------------- last logins

/// Held up: junk in a record's stored `logins` node (and in its `acl` and
/// `groups` nodes) does not break `GET /user`; malformed marks are
/// skipped, at most ten are shown, and later logins are merged in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_junk_in_the_stored_logins_does_not_break_show() {
    let (s, addr) = server().await;
    let admin = rest(addr, ADMIN).await;
    let at = record_at("scram-sha-256", "alice");
    let good = |t: u64| {
        Msg::new()
            .with("at", t)
            .with("client", "1.2.3.4:5")
            .with("method", "scram-sha-256")
            .with("via", "rest")
            .into_value()
    };
    let mut many: Vec<Value> = (0..20_000).map(good).collect();
    many.extend([
        Value::from(3),
        Value::Nil,
        Value::Bin(vec![0; 10]),
        Msg::new().with("at", -5).into_value(),
        Msg::new()
            .with("at", u64::MAX)
            .with("client", 5)
            .with("method", "m")
            .with("via", "v")
            .into_value(),
        Msg::new()
            .with("at", "soon")
            .with("client", "c")
            .with("method", "m")
            .with("via", "v")
            .into_value(),
    ]);
    let junk_values = [
        Value::from("junk"),
        Value::Bin(vec![0xff; 100]),
        Msg::new().with("last", "nope").into_value(),
        Msg::new().with("last", Value::Array(many)).into_value(),
    ];
    for junk in junk_values {
        s.handle
            .state
            .store
            .write(vec![
                Op::put(at.child("logins"), junk.clone()),
                Op::put(at.child("acl"), Msg::new().with("key", 5).into_value()),
                Op::put(
                    at.child("groups"),
                    Msg::new().with("groups", "notalist").into_value(),
                ),
            ])
            .await
            .expect("junk");
        let r = call(addr, &admin, "GET", "/user/alice", "").await;
        assert_eq!(r.status, 200, "{junk:?}: {}", r.body);
        let last = r.body["last_logins"].as_array().expect("array");
        assert!(last.len() <= 10, "{}", last.len());
        assert!(last.iter().all(|l| l["at"].is_u64()), "{last:?}");
    }
    // A login now is merged in (pending, then flushed) and shows first.
    let _alice = rest(addr, ALICE).await;
    for flushed in [false, true] {
        if flushed {
            s.handle.state.logins.flush().await.expect("flush");
        }
        let r = call(addr, &admin, "GET", "/user/alice", "").await;
        let last = r.body["last_logins"].as_array().expect("array");
        assert_eq!(last.len(), 10);
        assert_eq!(
            last[0]["client"]
                .as_str()
                .map(|c| c.starts_with("127.0.0.1:")),
            Some(true)
        );
    }
}

/// Held up: one user logging in again and again keeps at most ten marks
/// (pending and stored) and does not crowd out another user's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_one_users_logins_are_bounded_and_do_not_starve_others() {
    let (s, addr) = server().await;
    let admin = rest(addr, ADMIN).await;
    let alice = record_at("scram-sha-256", "alice");
    let now_ms = now() * 1000;
    for i in 0..50_000u64 {
        s.handle.state.logins.record(
            &alice,
            keycard_server::logins::Mark {
                at: now_ms - 100_000 + i,
                client: "6.6.6.6:6".into(),
                method: "scram-sha-256".into(),
                via: "msgpack".into(),
            },
        );
    }
    let _bob = rest(addr, BOB).await;
    let r = call(addr, &admin, "GET", "/user/alice", "").await;
    assert_eq!(r.body["last_logins"].as_array().map(Vec::len), Some(10));
    let r = call(addr, &admin, "GET", "/user/bob", "").await;
    assert_eq!(r.body["last_logins"].as_array().map(Vec::len), Some(1));
    s.handle.state.logins.flush().await.expect("flush");
    let r = call(addr, &admin, "GET", "/user/alice", "").await;
    assert_eq!(r.body["last_logins"].as_array().map(Vec::len), Some(10));
    let r = call(addr, &admin, "GET", "/user/bob", "").await;
    assert_eq!(r.body["last_logins"].as_array().map(Vec::len), Some(1));
}
