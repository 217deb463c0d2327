//! Hostile callers against the outrank rule (DESIGN §7.10) and the other
//! review findings about acting on other users, atomic ACL checks,
//! existence oracles and the end of the open era.
//!
//! `finding_*` tests reproduce what the review found (each failed before
//! its fix; the comment says what it was). `ok_*` tests guard behaviour
//! that held, or that a fix must not break.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::rest::{kv, login, Reply, Session};
use common::{code, manual_clock, path, req, start_with, Raw, TestServer, WAIT};
use futures_util::future::join_all;
use keycard_auth::{ClientRegistry, Password, ScramClient, Verifier};
use keycard_client::{Client, ClientError};
use keycard_proto::{ErrorCode, Msg, Path, Value};
use serde_json::json;

// ---------------------------------------------------------------- helpers

/// The SCRAM users of [`server`] and what they hold:
/// `boss` super_root; `admin` read_auth + write_auth, unbound; `keeper`
/// manage_keycards, bound to ACL `ro`; `badmin` read_auth + write_auth,
/// bound to `ro`; `alice` nothing, unbound; `bob` nothing, bound to `ro`;
/// `carol` nothing, bound to `rw`; `pia` nothing, bound to `peek`;
/// `maker` bound to `mk` (create only below `race`), `wonly` bound to
/// `wo` (overwrite only below `wrace`), `both` bound to `wc` (both below
/// `brace`).
const USERS: [&str; 11] = [
    "boss", "admin", "keeper", "badmin", "alice", "bob", "carol", "pia", "maker", "wonly", "both",
];

fn pw(user: &str) -> String {
    format!("{user} pw")
}

fn p(s: &str) -> Path {
    Path::parse(s).expect("path")
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

fn acl_key(name: &str) -> Value {
    Msg::new().with("key", name).into_value()
}

/// See [`USERS`]. Also the `root` user `*` (super-root) and a `_test`
/// user `alice`, both accepted beside the current `scram-sha-256`. Data:
/// `app.x` = 1, `secret.y` = 2, the `race`, `wrace`, `brace`, `hid`,
/// `deep` and `wonly` subtrees.
async fn server_with(tweak: impl FnOnce(&mut keycard_server::Config)) -> (TestServer, SocketAddr) {
    let s = start_with(|c| {
        c.http = Some("127.0.0.1:0".parse().expect("addr"));
        tweak(c);
    })
    .await;
    let c = Client::connect(s.addr()).await.expect("connect");
    for u in USERS {
        c.set_user(&ScramClient::new(u, Password::new(pw(u))))
            .await
            .expect("user");
    }
    for (m, u) in [("root", None), ("_test", Some("alice"))] {
        c.set_user(ClientRegistry::make(m, u).expect("method").as_ref())
            .await
            .expect("user");
    }
    let at = |u: &str, aux: &str| format!("auth.scram-sha-256.user.{u}.{aux}");
    internal(&c, &at("boss", "caps"), caps(&["super_root"])).await;
    internal(&c, &at("admin", "caps"), caps(&["read_auth", "write_auth"])).await;
    internal(&c, &at("keeper", "caps"), caps(&["manage_keycards"])).await;
    internal(
        &c,
        &at("badmin", "caps"),
        caps(&["read_auth", "write_auth"]),
    )
    .await;
    for (u, a) in [
        ("keeper", "ro"),
        ("badmin", "ro"),
        ("bob", "ro"),
        ("carol", "rw"),
        ("pia", "peek"),
        ("maker", "mk"),
        ("wonly", "wo"),
        ("both", "wc"),
    ] {
        internal(&c, &at(u, "acl"), acl_key(a)).await;
    }
    for (entry, modes) in [
        ("acl.ro.app", "x"),
        ("acl.ro.app.#", "rx"),
        ("acl.rw.app", "x"),
        ("acl.rw.app.#", "rwcdx"),
        ("acl.peek.hid", "x"),
        ("acl.peek.hid.+", "d"),
        ("acl.peek.deep", "x"),
        ("acl.peek.deep.+", "d"),
        ("acl.peek.wonly", "x"),
        ("acl.peek.wonly.+", "w"),
        ("acl.mk.race", "xn"),
        ("acl.mk.race.+", "c"),
        ("acl.wo.wrace", "x"),
        ("acl.wo.wrace.+", "w"),
        ("acl.wc.brace", "xn"),
        ("acl.wc.brace.+", "wc"),
    ] {
        internal(&c, entry, Value::from(modes)).await;
    }
    for (at, v) in [
        ("app.x", Value::from(1)),
        ("secret.y", Value::from(2)),
        ("race", Value::from(0)),
        ("wrace", Value::from(0)),
        ("brace", Value::from(0)),
        ("hid.a", Value::from("exists")),
        ("hid.c", Value::from("hidden value")),
        ("deep", Value::from("deep secret")),
        ("deep.a.q", Value::from(1)),
        ("wonly.k", Value::from("old secret")),
    ] {
        c.set(&p(at), v).await.expect("data");
    }
    c.request(
        Msg::new()
            .with("action", "set_auth_typ")
            .with("typ", "scram-sha-256")
            .with("accept", Value::Array(vec!["root".into(), "_test".into()])),
    )
    .await
    .expect("current");
    let http_addr = s.handle.http_addr.expect("http listener");
    (s, http_addr)
}

async fn server() -> (TestServer, SocketAddr) {
    server_with(|_| {}).await
}

/// A msgpack client logged in with SCRAM as `user`.
async fn msgpack(s: &TestServer, user: &str) -> Client {
    let c = Client::connect(s.addr()).await.expect("connect");
    c.login(&ScramClient::new(user, Password::new(pw(user))))
        .await
        .unwrap_or_else(|e| panic!("{user} cannot log in: {e}"));
    c
}

/// A REST session of `user`.
async fn rest(addr: SocketAddr, user: &str) -> Session {
    match login(addr, user, &pw(user)).await {
        Ok(s) => s,
        Err(r) => panic!("{user} cannot log in: {} {}", r.status, r.body),
    }
}

async fn call(addr: SocketAddr, s: &Session, method: &str, path: &str, body: &str) -> Reply {
    kv(addr, s, method, path, body.as_bytes(), &[]).await
}

fn scram_body(pw: &str) -> String {
    json!({"method": "scram-sha-256", "data": verifier(pw)}).to_string()
}

fn verifier(pw: &str) -> String {
    Verifier::generate(&Password::new(pw), 4096)
        .expect("verifier")
        .to_text()
}

/// The error code of a failed request (`None` for a success or an error
/// without a code).
fn code_of<T>(r: &Result<T, ClientError>) -> Option<ErrorCode> {
    r.as_ref().err().and_then(ClientError::code)
}

fn refused<T: std::fmt::Debug>(r: &Result<T, ClientError>, what: &str) {
    assert_eq!(
        code_of(r),
        Some(ErrorCode::PermissionDenied),
        "{what}: {r:?}"
    );
}

async fn token_for(c: &Client, user: &str) -> Result<Value, ClientError> {
    c.request(
        Msg::new()
            .with("action", "token_create")
            .with("user", user)
            .with("ttl", 600),
    )
    .await
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).expect(key)
}

async fn whoami(c: &Client) -> Value {
    c.request(Msg::new().with("action", "whoami"))
        .await
        .expect("whoami")
}

async fn revoke(c: &Client, m: Msg) -> Result<Value, ClientError> {
    c.request(m.with("action", "keycard_revoke")).await
}

/// Whether `c` still works (its keycard live, its connection open).
async fn works(c: &Client) -> bool {
    matches!(
        tokio::time::timeout(WAIT, c.request(Msg::new().with("action", "whoami"))).await,
        Ok(Ok(_))
    )
}

type Reply1<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, ClientError>> + Send + 'a>>;

/// `get_value` (the path is read before the future borrows nothing but
/// the client).
fn get<'a>(c: &'a Client, at: &str) -> Reply1<'a> {
    Box::pin(
        c.request(
            Msg::new()
                .with("action", "get_value")
                .with_path("path", &p(at)),
        ),
    )
}

fn set<'a>(c: &'a Client, at: &str, v: Value) -> Reply1<'a> {
    Box::pin(
        c.request(
            Msg::new()
                .with("action", "set_value")
                .with_path("path", &p(at))
                .with("value", v),
        ),
    )
}

fn delete<'a>(c: &'a Client, at: &str) -> Reply1<'a> {
    Box::pin(
        c.request(
            Msg::new()
                .with("action", "delete_value")
                .with_path("path", &p(at)),
        ),
    )
}

fn tock(v: &Value) -> u64 {
    v.get("tock").and_then(Value::as_u64).expect("tock")
}

// ------------------------------------------------- the outrank rule

/// FINDING: `token_create` needed `manage_keycards`
/// only. keeper (manage_keycards, bound to `ro`) minted a token for boss
/// (super_root), logged in with it and held every capability. Now the
/// caller must outrank the user: hold every capability it holds, and no
/// less data access (a bound caller only for users bound among its own
/// ACLs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_keycard_manager_mints_tokens_only_for_users_it_outranks() {
    let (s, _) = server().await;
    let keeper = msgpack(&s, "keeper").await;
    // boss: super_root; `*`: the root method's user; admin: write_auth;
    // alice: unbound (more data than keeper); carol: bound to rw.
    for user in ["boss", "*", "admin", "alice", "carol"] {
        let r = token_for(&keeper, user).await;
        refused(&r, &format!("a token for {user}"));
    }
    // bob holds nothing and is bound to ro, as keeper is: outranked.
    let made = token_for(&keeper, "bob").await.expect("a token for bob");
    let bob = Client::connect(s.addr()).await.expect("connect");
    bob.login_token(text(&made, "token"))
        .await
        .expect("bob's token logs in");
    let who = whoami(&bob).await;
    assert_eq!(who.get("caps"), Some(&Value::Array(vec![])), "{who:?}");
    // An unbound super-root outranks everyone.
    let boss = msgpack(&s, "boss").await;
    token_for(&boss, "admin")
        .await
        .expect("boss mints for admin");
}

/// FINDING (items 1 and 18): a `manage_keycards` user revoked a
/// super_root's keycards (by id, by user, by requester, and the sessions
/// of a token by parent). Revocation of another user's keycards now needs
/// to outrank each one's owner; a request that matches any keycard of a
/// user the caller does not outrank is refused and revokes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_keycard_manager_revokes_only_keycards_of_users_it_outranks() {
    let (s, _) = server().await;
    let keeper = msgpack(&s, "keeper").await;
    let boss = msgpack(&s, "boss").await;
    let boss_card = text(&whoami(&boss).await, "keycard").to_owned();
    let shown = keeper
        .request(
            Msg::new()
                .with("action", "keycard_show")
                .with("id", boss_card.as_str()),
        )
        .await
        .expect("a keycard manager sees every keycard");
    let requester = shown
        .get("requester")
        .and_then(Value::as_u64)
        .expect("requester");
    let made = token_for(&boss, "admin").await.expect("token");
    let token_id = text(&made, "id").to_owned();
    let admin_t = Client::connect(s.addr()).await.expect("connect");
    admin_t
        .login_token(text(&made, "token"))
        .await
        .expect("token login");

    for (what, m) in [
        ("by id", Msg::new().with("id", boss_card.as_str())),
        ("by user", Msg::new().with("user", "boss")),
        ("by requester", Msg::new().with("requester", requester)),
        ("the token by id", Msg::new().with("id", token_id.as_str())),
        ("by parent", Msg::new().with("parent", token_id.as_str())),
        ("root's by user", Msg::new().with("user", "*")),
    ] {
        let r = revoke(&keeper, m).await;
        refused(
            &r,
            &format!("keeper revoking boss's or admin's keycards {what}"),
        );
    }
    assert!(works(&boss).await, "boss's session survived");
    assert!(works(&admin_t).await, "admin's token session survived");
    let still = boss
        .request(
            Msg::new()
                .with("action", "keycard_show")
                .with("id", token_id.as_str()),
        )
        .await
        .expect("token");
    assert_eq!(text(&still, "status"), "authenticated");

    // bob is outranked: revoked, by user and by id.
    let bob = msgpack(&s, "bob").await;
    let n = revoke(&keeper, Msg::new().with("user", "bob"))
        .await
        .expect("keeper revokes bob's keycards");
    assert_eq!(n.get("revoked").and_then(Value::as_u64), Some(1), "{n:?}");
    assert!(!works(&bob).await, "bob's session ended");
    let bob = msgpack(&s, "bob").await;
    let id = text(&whoami(&bob).await, "keycard").to_owned();
    revoke(&keeper, Msg::new().with("id", id.as_str()))
        .await
        .expect("keeper revokes bob's keycard by id");
    assert!(!works(&bob).await, "bob's session ended");
    // Its own, always.
    let mine = text(&whoami(&keeper).await, "keycard").to_owned();
    revoke(&keeper, Msg::new().with("id", mine.as_str()))
        .await
        .expect("keeper revokes its own keycard");
}

/// FINDING (item 1): `check_outranks` compared capabilities only. badmin
/// (write_auth, bound to `ro`) re-keyed and could delete alice (unbound:
/// full data access), then logged in as her and read what `ro` forbids;
/// the same over msgpack `auth_set` / `auth_delete`, and `test_acl`
/// showed what a stronger user may do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_bound_admin_changes_only_users_within_its_data_access() {
    let (s, addr) = server().await;
    let badmin = rest(addr, "badmin").await;
    for (m, who) in [("PUT", "alice"), ("PUT", "carol"), ("DELETE", "alice")] {
        let body = match m {
            "PUT" => scram_body("pwned"),
            _ => String::new(),
        };
        let r = call(addr, &badmin, m, &format!("/user/{who}"), &body).await;
        assert_eq!(r.status, 403, "{m} /user/{who}: {}", r.body);
    }
    assert!(login(addr, "alice", "pwned").await.is_err());
    let over = msgpack(&s, "badmin").await;
    let r = over
        .set_user(&ScramClient::new("alice", Password::new("pwned")))
        .await;
    refused(&r, "auth_set on alice");
    let r = over
        .request(
            Msg::new()
                .with("action", "auth_delete")
                .with("typ", "scram-sha-256")
                .with("kind", "user")
                .with("ident", "alice"),
        )
        .await;
    refused(&r, "auth_delete of alice");
    let r = over
        .request(
            Msg::new()
                .with("action", "test_acl")
                .with("user", "alice")
                .with_path("path", &p("secret.y"))
                .with("mode", "r"),
        )
        .await;
    refused(&r, "test_acl of alice");
    let _alice = msgpack(&s, "alice").await;
    // bob is bound to ro, like badmin: within its reach.
    let r = call(addr, &badmin, "PUT", "/user/bob", &scram_body("bob pw2")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = over
        .request(
            Msg::new()
                .with("action", "test_acl")
                .with("user", "bob")
                .with_path("path", &p("app.x"))
                .with("mode", "r"),
        )
        .await
        .expect("test_acl of bob");
    assert_eq!(r.get("access"), Some(&Value::Bool(true)), "{r:?}");
}

/// Held up: ACL and group bindings (`keycard acl bind`, `keycard group
/// member`) are written with `set_internal`, which needs super-root, who
/// outranks everyone: a user-admin binds nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_bindings_are_written_by_super_roots_only() {
    let (s, _) = server().await;
    for who in ["admin", "badmin", "keeper"] {
        let c = msgpack(&s, who).await;
        for (at, v) in [
            ("auth.scram-sha-256.user.bob.acl", acl_key("*")),
            (
                "auth.scram-sha-256.user.bob.groups",
                Msg::new()
                    .with("groups", Value::Array(vec!["g".into()]))
                    .into_value(),
            ),
            ("group.g", Msg::new().with("acl", "*").into_value()),
        ] {
            let r = c
                .request(
                    Msg::new()
                        .with("action", "set_internal")
                        .with_path("path", &p(at))
                        .with("value", v),
                )
                .await;
            refused(&r, &format!("{who} writing {at}"));
        }
    }
}

/// FINDING (class of item 1): a token's user was read afresh at each
/// token login, so a token minted by a weaker caller for a plain user
/// became a super-root token once the user was promoted. A token now
/// carries at most what its user held when it was issued (capabilities
/// and data access), however the user changes later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_token_carries_no_more_than_its_user_held_when_issued() {
    let (s, _) = server().await;
    let keeper = msgpack(&s, "keeper").await;
    let made = token_for(&keeper, "bob").await.expect("token for bob");
    let boss = msgpack(&s, "boss").await;
    internal(
        &boss,
        "auth.scram-sha-256.user.bob.caps",
        caps(&["super_root"]),
    )
    .await;
    boss.request(
        Msg::new()
            .with("action", "delete_internal")
            .with_path("path", &p("auth.scram-sha-256.user.bob.acl")),
    )
    .await
    .expect("unbind bob");
    let t = Client::connect(s.addr()).await.expect("connect");
    t.login_token(text(&made, "token")).await.expect("login");
    let who = whoami(&t).await;
    assert_eq!(who.get("caps"), Some(&Value::Array(vec![])), "{who:?}");
    assert_eq!(who.get("super_root"), Some(&Value::Bool(false)), "{who:?}");
    refused(&get(&t, "secret.y").await, "the token reading secret.y");
    assert!(get(&t, "app.x").await.is_ok());
    // bob's own login has what bob holds now.
    let bob = msgpack(&s, "bob").await;
    let who = whoami(&bob).await;
    let holds = |cap: &str| match who.get("caps") {
        Some(Value::Array(c)) => c.iter().any(|x| x.as_str() == Some(cap)),
        _ => false,
    };
    assert!(holds("super_root"), "{who:?}");
}

// ------------------------------------------------------- item 8

/// FINDING (item 8): a bound write_auth admin escaped its own ACL by
/// creating a user with no binding (msgpack `auth_set`, REST `POST /user`
/// with or without `acl: "*"`) and logging in as it. A bound caller's new
/// users now take its bindings; an unbound user, or an ACL the caller is
/// not bound to, needs an unbound caller or super-root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_bound_admin_creates_only_users_bound_as_it_is() {
    let (s, addr) = server().await;
    let over = msgpack(&s, "badmin").await;
    over.set_user(&ScramClient::new("mallory", Password::new(pw("mallory"))))
        .await
        .expect("badmin creates mallory");
    let mallory = msgpack(&s, "mallory").await;
    refused(&get(&mallory, "secret.y").await, "mallory reading secret.y");
    assert!(get(&mallory, "app.x").await.is_ok());

    let badmin = rest(addr, "badmin").await;
    let r = call(addr, &badmin, "POST", "/user/m2", &scram_body(&pw("m2"))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let m2 = rest(addr, "m2").await;
    let r = call(addr, &m2, "GET", "/kv/secret/y", "").await;
    assert_eq!(r.status, 403, "m2 escaped badmin's ACL: {}", r.body);
    for acl in ["*", "rw"] {
        let body = json!({"method": "scram-sha-256", "data": verifier("x"), "acl": acl});
        let r = call(addr, &badmin, "POST", "/user/m3", &body.to_string()).await;
        assert_eq!(r.status, 403, "acl {acl}: {}", r.body);
    }
    let body = json!({"method": "scram-sha-256", "data": verifier(&pw("m4")), "acl": "ro"});
    let r = call(addr, &badmin, "POST", "/user/m4", &body.to_string()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let m4 = rest(addr, "m4").await;
    assert_eq!(call(addr, &m4, "GET", "/kv/secret/y", "").await.status, 403);
    assert_eq!(call(addr, &m4, "GET", "/kv/app/x", "").await.status, 200);

    // An unbound admin still creates unbound users.
    let admin = rest(addr, "admin").await;
    let body = json!({"method": "scram-sha-256", "data": verifier(&pw("m5")), "acl": "*"});
    let r = call(addr, &admin, "POST", "/user/m5", &body.to_string()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = call(addr, &admin, "POST", "/user/m6", &scram_body(&pw("m6"))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let m6 = rest(addr, "m6").await;
    assert_eq!(call(addr, &m6, "GET", "/kv/secret/y", "").await.status, 200);
    let r = call(addr, &admin, "GET", "/user/m2", "").await;
    assert_eq!(r.body["methods"][0]["acl"], "ro", "{}", r.body);
}

// ------------------------------------------------------- item 9

/// FINDING (item 9): re-keying a user over msgpack `auth_set` (what
/// `keycard user add` does to an existing user) left the user's sessions
/// working; REST's `PUT /user` ended them. Every credential change now
/// ends the user's other keycards, the caller's own goes on. Tokens are
/// separate credentials a keycard manager issued: they survive a password
/// change, and `keycard_revoke {user}` ends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_rekeying_over_msgpack_ends_the_users_other_sessions() {
    let (s, _) = server().await;
    let alice = msgpack(&s, "alice").await;
    let boss = msgpack(&s, "boss").await;
    let made = token_for(&boss, "alice").await.expect("token");
    let token = text(&made, "token").to_owned();
    let alice_t = Client::connect(s.addr()).await.expect("connect");
    alice_t.login_token(&token).await.expect("token login");

    let admin = msgpack(&s, "admin").await;
    admin
        .set_user(&ScramClient::new("alice", Password::new("alice pw2")))
        .await
        .expect("re-key alice");
    assert!(
        !works(&alice).await,
        "alice's session outlived her password"
    );
    assert!(works(&alice_t).await, "a token survives a password change");
    let again = Client::connect(s.addr()).await.expect("connect");
    again
        .login_token(&token)
        .await
        .expect("the token still logs in");
    // The caller's own session goes on when it re-keys itself.
    admin
        .set_user(&ScramClient::new("admin", Password::new("admin pw2")))
        .await
        .expect("admin re-keys itself");
    assert!(works(&admin).await, "the caller's own session goes on");

    revoke(&boss, Msg::new().with("user", "alice"))
        .await
        .expect("revoke alice's");
    assert!(!works(&alice_t).await, "revoking the user ends its tokens");
    let late = Client::connect(s.addr()).await.expect("connect");
    assert_eq!(
        code_of(&late.login_token(&token).await),
        Some(ErrorCode::AuthFailed)
    );
}

// ------------------------------------------------------ item 12

/// FINDING (item 12): `set_value` decided between `w` and `c` from a
/// read, then wrote unconditionally: a create-only user overwrote a value
/// created in between, and an overwrite-only user created one deleted in
/// between. The write is now conditional on what the decision assumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_the_acl_decision_holds_at_the_write() {
    let (s, _) = server().await;
    let boss = msgpack(&s, "boss").await;
    let maker = msgpack(&s, "maker").await;
    let wonly = msgpack(&s, "wonly").await;
    const N: usize = 300;
    let (mut overwrote, mut created) = (0, 0);
    // Rounds, so that a scheduling that happens to keep the two apart once
    // (a loaded machine) does not hide the race.
    for round in 0..3 {
        for i in 0..N {
            set(&boss, &format!("wrace.r{round}k{i}"), Value::from(0))
                .await
                .expect("seed");
        }
        // The bound user's requests go first: its reads see the node as
        // it was, boss's writes land while it decides.
        // Create-only: maker's create must not land after boss's write.
        let maker_w = join_all(
            (0..N).map(|i| set(&maker, &format!("race.r{round}k{i}"), Value::from("maker"))),
        );
        let boss_w = join_all(
            (0..N).map(|i| set(&boss, &format!("race.r{round}k{i}"), Value::from("boss"))),
        );
        // Overwrite-only: wonly's write must not land after boss's deletion.
        let wonly_w =
            join_all((0..N).map(|i| set(&wonly, &format!("wrace.r{round}k{i}"), Value::from("w"))));
        let boss_d = join_all((0..N).map(|i| delete(&boss, &format!("wrace.r{round}k{i}"))));
        let (mw, bw, ww, bd) = tokio::join!(maker_w, boss_w, wonly_w, boss_d);
        for i in 0..N {
            let b = bw[i].as_ref().expect("boss writes");
            match &mw[i] {
                Ok(m) if tock(m) > tock(b) => overwrote += 1,
                Ok(_) => {}
                Err(_) => refused(&mw[i], "maker's refused create"),
            }
            let d = bd[i].as_ref().expect("boss deletes");
            match &ww[i] {
                Ok(w) if tock(w) > tock(d) => created += 1,
                Ok(_) => {}
                Err(_) => refused(&ww[i], "wonly's refused overwrite"),
            }
        }
    }
    assert_eq!(
        (overwrote, created),
        (0, 0),
        "a create-only user overwrote {overwrote} values, an overwrite-only user created {created}"
    );
}

/// Held up, and must stay so: a bound user holding both `w` and `c`
/// writes unconditionally whatever happens meanwhile: the condition the
/// server adds never fails such a write with a conflict it did not ask
/// for; a condition the client asked for is still its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_an_unconditional_write_never_fails_on_the_servers_own_condition() {
    let (s, _) = server().await;
    let boss = msgpack(&s, "boss").await;
    let one = msgpack(&s, "both").await;
    let two = msgpack(&s, "both").await;
    let maker = msgpack(&s, "maker").await;
    const N: usize = 200;
    let a = join_all((0..N).map(|i| set(&one, &format!("brace.k{}", i % 7), Value::from(i))));
    let b = join_all((0..N).map(|i| set(&two, &format!("brace.k{}", i % 7), Value::from(i))));
    let c = join_all((0..N).map(|i| {
        let at = format!("brace.k{}", i % 7);
        match i % 2 {
            0 => set(&boss, &at, Value::from("boss")),
            _ => delete(&boss, &at),
        }
    }));
    // A create-only user racing deletions: created, or refused, never a
    // conflict.
    let d = join_all((0..N).map(|i| set(&maker, &format!("race.z{}", i % 5), Value::from(i))));
    let e = join_all((0..N).map(|i| delete(&boss, &format!("race.z{}", i % 5))));
    let (a, b, c, d, _) = tokio::join!(a, b, c, d, e);
    for r in a.iter().chain(&b).chain(&c) {
        assert!(r.is_ok(), "{r:?}");
    }
    for r in &d {
        assert!(
            r.is_ok() || code_of(r) == Some(ErrorCode::PermissionDenied),
            "{r:?}"
        );
    }
    // The client's own condition is still checked.
    let r = one
        .request(
            Msg::new()
                .with("action", "set_value")
                .with_path("path", &p("brace.k0"))
                .with("value", 1)
                .with("chain", Value::Nil),
        )
        .await;
    let exists = get(&boss, "brace.k0")
        .await
        .expect("get")
        .get("value")
        .is_some();
    if exists {
        assert_eq!(code_of(&r), Some(ErrorCode::Conflict), "{r:?}");
    }
    set(&boss, "brace.k1", Value::from("v")).await.expect("set");
    let r = one
        .request(
            Msg::new()
                .with("action", "set_value")
                .with_path("path", &p("brace.k1"))
                .with("value", 2)
                .with("prev", "not v"),
        )
        .await;
    assert_eq!(code_of(&r), Some(ErrorCode::Conflict), "{r:?}");
}

// ----------------------------------------------- item 16 and its class

/// The text of a refusal with `name` (the only thing that differs between
/// the two paths asked) replaced.
fn refusal_text<T: std::fmt::Debug>(r: &Result<T, ClientError>, name: &str) -> String {
    match r {
        Err(ClientError::Server { code, text }) => {
            format!("{code:?} {}", text.replace(name, "NAME"))
        }
        other => panic!("expected a refusal: {other:?}"),
    }
}

/// FINDING (item 16): a refused `set_value` on a node the caller cannot
/// read said `w` when the node existed and `c` when it did not: an
/// existence oracle. So did every data refusal one level up (`x` to pass
/// an existing level, `n` a missing one). A refusal now names the
/// request's mode and path, whatever exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_refusal_does_not_say_whether_the_node_exists() {
    let (s, _) = server().await;
    let pia = msgpack(&s, "pia").await;
    // hid.a exists, hid.b does not; pia may only delete below hid.
    let a = set(&pia, "hid.a", Value::from(1)).await;
    let b = set(&pia, "hid.b", Value::from(1)).await;
    assert_eq!(refusal_text(&a, "hid.a"), refusal_text(&b, "hid.b"));
    // deep.a exists, deep.b does not; pia may not pass either.
    for action in ["get_value", "delete_value"] {
        let ask =
            |at: &str| pia.request(Msg::new().with("action", action).with_path("path", &p(at)));
        let a = ask("deep.a.z").await;
        let b = ask("deep.b.z").await;
        assert_eq!(
            refusal_text(&a, "deep.a.z"),
            refusal_text(&b, "deep.b.z"),
            "{action}"
        );
    }
}

/// FINDING (class of item 16): a write answered the node's previous value
/// (`prev`) to a caller that may not read it, and `root` answered the
/// value of the node it moved to: a user allowed to overwrite, delete or
/// pass through a node read it; a write's `changed` (and `idem`) told
/// whether the value written was the one there. Now only a caller that
/// may read the node learns anything of its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_writes_and_root_do_not_show_what_the_caller_cannot_read() {
    let (s, _) = server().await;
    let pia = msgpack(&s, "pia").await;
    refused(&get(&pia, "hid.c").await, "pia reading hid.c");
    let r = pia
        .request(
            Msg::new()
                .with("action", "delete_value")
                .with_path("path", &p("hid.c")),
        )
        .await
        .expect("pia may delete hid.c");
    assert!(
        r.get("prev").is_none(),
        "a deletion showed the value: {r:?}"
    );
    // Writing the value it holds: `changed` does not confirm the guess,
    // nor does `idem` skip the write.
    for idem in [false, true] {
        let r = pia
            .request(
                Msg::new()
                    .with("action", "set_value")
                    .with_path("path", &p("wonly.k"))
                    .with("value", "old secret")
                    .with("idem", idem),
            )
            .await
            .expect("w");
        assert_eq!(r.get("changed"), Some(&Value::Bool(true)), "{r:?}");
    }
    let r = set(&pia, "wonly.k", Value::from("new")).await.expect("w");
    assert!(
        r.get("prev").is_none(),
        "an overwrite showed the value: {r:?}"
    );
    let r = pia
        .request(
            Msg::new()
                .with("action", "root")
                .with_path("path", &p("deep")),
        )
        .await
        .expect("pia may pass through deep");
    assert!(r.get("value").is_none(), "root showed the value: {r:?}");
    // A caller that may read still gets them.
    let boss = msgpack(&s, "boss").await;
    let r = set(&boss, "wonly.k", Value::from("newer"))
        .await
        .expect("set");
    assert_eq!(r.get("prev"), Some(&Value::from("new")));
}

// ------------------------------------------------------ item 17

/// FINDING (item 17): `user_show` and `GET /user` matched "is self" on the
/// name only: the `_test` user "alice" read the SCRAM alice's record (and
/// its last logins). Oneself is (name, method, domain) now, and oneself
/// sees only one's own record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_showing_oneself_shows_only_ones_own_record() {
    let (s, addr) = server().await;
    let t = Client::connect(s.addr()).await.expect("connect");
    t.login(
        ClientRegistry::make("_test", Some("alice"))
            .expect("m")
            .as_ref(),
    )
    .await
    .expect("_test alice");
    let methods = |v: &Value| -> Vec<String> {
        match v.get("methods") {
            Some(Value::Array(items)) => {
                items.iter().map(|m| text(m, "method").to_owned()).collect()
            }
            other => panic!("methods: {other:?}"),
        }
    };
    let shown = t
        .request(
            Msg::new()
                .with("action", "user_show")
                .with("ident", "alice"),
        )
        .await
        .expect("one's own record");
    assert_eq!(methods(&shown), vec!["_test"], "{shown:?}");
    let alice = rest(addr, "alice").await;
    let r = call(addr, &alice, "GET", "/user/alice", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let listed: Vec<&str> = r.body["methods"]
        .as_array()
        .expect("methods")
        .iter()
        .filter_map(|m| m["method"].as_str())
        .collect();
    assert_eq!(listed, vec!["scram-sha-256"], "{}", r.body);
    // read_auth still shows every record.
    let admin = msgpack(&s, "admin").await;
    let all = admin
        .request(
            Msg::new()
                .with("action", "user_show")
                .with("ident", "alice"),
        )
        .await
        .expect("show");
    assert_eq!(methods(&all).len(), 2, "{all:?}");
}

// ------------------------------------------------------ item 19

/// FINDING (item 19): a REST session changed its own password however old
/// it was: whoever held a forgotten session took the account over. Now a
/// change of one's own credential needs a login younger than
/// `reauth_secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_changing_ones_own_password_needs_a_recent_login() {
    let mut clock = None;
    let (_s, addr) = server_with(|c| {
        c.reauth_secs = 1;
        clock = Some(manual_clock(c));
    })
    .await;
    let clock = clock.expect("clock");
    let old = rest(addr, "alice").await;
    // (Signed at the real time: 1.1 s off the server's clock is well
    // inside the signature window.)
    clock.advance(Duration::from_millis(1100));
    let r = call(addr, &old, "PUT", "/user/alice", &scram_body("new pw")).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.body["code"], "reauth_required", "{}", r.body);
    assert!(login(addr, "alice", "new pw").await.is_err());
    let fresh = rest(addr, "alice").await;
    let r = call(addr, &fresh, "PUT", "/user/alice", &scram_body("new pw")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(login(addr, "alice", "new pw").await.is_ok());
}

// ---------------------------------------------------- items 20, 21

/// FINDING (item 20): `test_acl` with an ACL that does not exist answered
/// `access: false`, as if the ACL denied; a typo deserves `no_such_acl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_test_acl_names_a_missing_acl() {
    let (s, _) = server().await;
    let boss = msgpack(&s, "boss").await;
    let ask = |acl: &'static str| {
        boss.request(
            Msg::new()
                .with("action", "test_acl")
                .with("acl", acl)
                .with_path("path", &p("app.x"))
                .with("mode", "r"),
        )
    };
    let r = ask("r0").await;
    assert_eq!(
        r.as_ref()
            .err()
            .map(|e| e.to_string().contains("no_such_acl")),
        Some(true),
        "{r:?}"
    );
    let r = ask("ro").await.expect("ro exists");
    assert_eq!(r.get("access"), Some(&Value::Bool(true)), "{r:?}");
}

// ------------------------------------------------------- open era

/// FINDING (what a new user ran into): connections opened while the
/// server was open kept their open-era access after `auth init`: a
/// `watch` started before it kept streaming. Now, when a method becomes
/// current, every connection not logged in loses it at once: its open
/// streams end with `auth_required`, its later requests need a login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_ending_the_open_era_ends_its_streams() {
    let s = start_with(|_| {}).await;
    let mut open = Raw::connect(s.addr()).await;
    open.send(
        req(1, "watch")
            .with("path", path("data"))
            .with("fetch", true),
    )
    .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let v = open.try_recv(WAIT).await.flatten().expect("watch runs");
        if v.get("state").and_then(Value::as_str) == Some("uptodate") {
            break;
        }
        assert!(Instant::now() < deadline);
    }
    // The connection that makes the method current keeps its own streams
    // (DistKV's client runs a watch beside its `auth init`).
    let admin = Client::connect(s.addr()).await.expect("connect");
    let mut own = admin.watch(&p("data"), true).await.expect("watch");
    own.uptodate().await.expect("uptodate");
    admin
        .set_user(ClientRegistry::make("root", None).expect("m").as_ref())
        .await
        .expect("root user");
    admin
        .request(
            Msg::new()
                .with("action", "set_auth_typ")
                .with("typ", "root"),
        )
        .await
        .expect("auth init");
    let started = Instant::now();
    let mut ended = None;
    while started.elapsed() < Duration::from_secs(2) {
        match open.try_recv(Duration::from_millis(200)).await {
            Some(Some(v)) if v.get("seq").and_then(Value::as_i64) == Some(1) => {
                if let Some(c) = code(&v) {
                    ended = Some(c.to_owned());
                    break;
                }
            }
            Some(Some(_)) | None => {}
            Some(None) => break,
        }
    }
    assert_eq!(ended.as_deref(), Some("auth_required"), "the watch went on");
    // Nothing more reaches it, and its next request needs a login.
    let logged = Client::connect(s.addr()).await.expect("connect");
    logged
        .login(ClientRegistry::make("root", None).expect("m").as_ref())
        .await
        .expect("root login");
    set(&logged, "data.x", Value::from(5)).await.expect("write");
    let v = open
        .call(req(2, "get_value").with("path", path("data.x")))
        .await;
    assert_eq!(code(&v), Some("auth_required"), "{v:?}");
    let seen = tokio::time::timeout(WAIT, own.next_raw())
        .await
        .expect("the change reaches the admin's watch");
    assert!(matches!(seen, Some(Ok(_))), "{seen:?}");
    assert_eq!(
        code_of(&get(&admin, "data.x").await),
        Some(ErrorCode::AuthRequired),
        "its requests need a login"
    );
}

// -------------------------------------------------- the lock-out guard

/// FINDING (class of item 12, `actions/auth.rs`): the guard against
/// deleting the current method's last user counted the users, then
/// deleted: two deletions at once (each seeing the other's user) left the
/// method without users and nobody able to log in. The count is now a
/// condition of the deletion's write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_concurrent_deletions_never_remove_the_last_user() {
    let s = start_with(|_| {}).await;
    let c = Client::connect(s.addr()).await.expect("connect");
    c.set_user(ClientRegistry::make("root", None).expect("m").as_ref())
        .await
        .expect("root");
    let anon = |u: &str| ClientRegistry::make("_anon", Some(u)).expect("m");
    fn delete<'a>(c: &'a Client, u: &str) -> Reply1<'a> {
        Box::pin(
            c.request(
                Msg::new()
                    .with("action", "auth_delete")
                    .with("typ", "_anon")
                    .with("kind", "user")
                    .with("ident", u),
            ),
        )
    }
    for u in ["u1", "u2"] {
        c.set_user(anon(u).as_ref()).await.expect("user");
    }
    c.request(
        Msg::new()
            .with("action", "set_auth_typ")
            .with("typ", "_anon")
            .with("accept", Value::Array(vec!["root".into()])),
    )
    .await
    .expect("current");
    let one = Client::connect(s.addr()).await.expect("connect");
    let two = Client::connect(s.addr()).await.expect("connect");
    for c in [&one, &two] {
        c.login(ClientRegistry::make("root", None).expect("m").as_ref())
            .await
            .expect("root login");
    }
    let mut lockouts = 0;
    for _round in 0..30 {
        let (a, b) = tokio::join!(delete(&one, "u1"), delete(&two, "u2"));
        match (a.is_ok(), b.is_ok()) {
            (true, true) => {
                lockouts += 1;
                one.set_user(anon("u1").as_ref()).await.expect("again");
                one.set_user(anon("u2").as_ref()).await.expect("again");
            }
            (true, false) => one
                .set_user(anon("u1").as_ref())
                .await
                .map(|_| ())
                .expect("again"),
            (false, true) => one
                .set_user(anon("u2").as_ref())
                .await
                .map(|_| ())
                .expect("again"),
            (false, false) => panic!("both refused: {a:?} {b:?}"),
        }
    }
    assert_eq!(
        lockouts, 0,
        "{lockouts} rounds left the current method without a user"
    );
}

/// FINDING (class of item 16): `auth_set` answered DistKV's `prev`, the
/// record it replaced, raw: a user-admin re-keying a user read its stored
/// verifier (for `password` users, the Argon2id hash), which `auth_get`
/// never shows. The reply no longer carries the old record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_auth_set_does_not_answer_the_old_record() {
    let (s, _) = server().await;
    let admin = msgpack(&s, "admin").await;
    let r = admin
        .set_user(&ScramClient::new("alice", Password::new("alice pw2")))
        .await
        .expect("re-key alice");
    assert!(r.get("prev").is_none(), "the old record came back: {r:?}");
    assert_eq!(r.get("changed"), Some(&Value::Bool(true)), "{r:?}");
}

/// FINDING (class of item 9): a user record rewritten or deleted the
/// DistKV way (`set_internal` / `delete_internal` of the record, by a
/// super-root) left the user's sessions working. They end as on every
/// other path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_record_rewritten_internally_ends_the_users_sessions() {
    let (s, _) = server().await;
    let boss = msgpack(&s, "boss").await;
    let alice = msgpack(&s, "alice").await;
    let carol = boss
        .request(
            Msg::new()
                .with("action", "get_internal")
                .with_path("path", &p("auth.scram-sha-256.user.carol")),
        )
        .await
        .expect("carol's record");
    let carols = carol.get("value").cloned().expect("value");
    // alice gets carol's verifier: a credential change.
    internal(&boss, "auth.scram-sha-256.user.alice", carols).await;
    assert!(
        !works(&alice).await,
        "alice's session outlived her credential"
    );
    let bob = msgpack(&s, "bob").await;
    boss.request(
        Msg::new()
            .with("action", "delete_internal")
            .with_path("path", &p("auth.scram-sha-256.user.bob")),
    )
    .await
    .expect("delete bob's record");
    assert!(!works(&bob).await, "bob's session outlived his record");
    assert!(works(&boss).await);
}

/// A user without write_auth changes its own password over msgpack (what
/// `keycard user passwd` does), with a recent login, as over REST: the
/// record it logged in with, never another user's, never from a token's
/// session; its other sessions end, its own goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_changes_its_own_password_over_msgpack() {
    let mut clock = None;
    let (s, _) = server_with(|c| {
        c.reauth_secs = 2;
        clock = Some(manual_clock(c));
    })
    .await;
    let clock = clock.expect("clock");
    let alice = msgpack(&s, "alice").await;
    let alice2 = msgpack(&s, "alice").await;
    refused(
        &alice
            .set_user(&ScramClient::new("bob", Password::new("mine now")))
            .await,
        "another user's password",
    );
    alice
        .set_user(&ScramClient::new("alice", Password::new("alice new")))
        .await
        .expect("alice changes her own password");
    assert!(works(&alice).await, "the caller's own session goes on");
    assert!(!works(&alice2).await, "her other session ended");
    let again = Client::connect(s.addr()).await.expect("connect");
    again
        .login(&ScramClient::new("alice", Password::new("alice new")))
        .await
        .expect("the new password logs in");

    // A token's session is not a login with the password.
    let boss = msgpack(&s, "boss").await;
    let made = token_for(&boss, "alice").await.expect("token");
    let by_token = Client::connect(s.addr()).await.expect("connect");
    by_token
        .login_token(text(&made, "token"))
        .await
        .expect("token login");
    refused(
        &by_token
            .set_user(&ScramClient::new("alice", Password::new("token's pick")))
            .await,
        "a token session re-keying its user",
    );

    // An old login must log in again first.
    clock.advance(Duration::from_millis(2100));
    assert_eq!(
        code_of(
            &again
                .set_user(&ScramClient::new("alice", Password::new("later")))
                .await
        ),
        Some(ErrorCode::ReauthRequired)
    );
}

/// `whoami` says super_root for a user granted the capability, not only
/// for the `root` method's user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_says_super_root_for_a_granted_user() {
    let (s, _) = server().await;
    let boss = msgpack(&s, "boss").await;
    assert_eq!(
        whoami(&boss).await.get("super_root"),
        Some(&Value::from(true))
    );
    let alice = msgpack(&s, "alice").await;
    assert_eq!(
        whoami(&alice).await.get("super_root"),
        Some(&Value::from(false))
    );
}

/// A token's session (even a keycard manager's) issues no tokens: one it
/// minted would outlive it and its revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokens_session_issues_no_tokens() {
    let (s, _) = server().await;
    let boss = msgpack(&s, "boss").await;
    let made = token_for(&boss, "boss").await.expect("token");
    let by_token = Client::connect(s.addr()).await.expect("connect");
    by_token
        .login_token(text(&made, "token"))
        .await
        .expect("token login");
    refused(
        &token_for(&by_token, "alice").await,
        "a token minting a token",
    );
    token_for(&boss, "alice")
        .await
        .expect("a password login still issues tokens");
}

/// A refusal by the outrank rule names what the user holds only to a
/// session that may read it (read_auth); a keycard manager learns nothing
/// of a super-root's capabilities from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outrank_refusal_tells_only_readers_why() {
    let (s, _) = server().await;
    let keeper = msgpack(&s, "keeper").await;
    let e = token_for(&keeper, "admin").await.expect_err("outranked");
    let text = e.to_string();
    assert!(
        !text.contains("write_auth") && !text.contains("read_auth"),
        "{text}"
    );
    let badmin = msgpack(&s, "badmin").await;
    let e = badmin
        .set_user(&ScramClient::new("alice", Password::new("x")))
        .await
        .expect_err("alice is unbound");
    assert!(e.to_string().contains("full data access"), "{e}");
}

/// A user record deleted with `delete_internal` takes its aux nodes with
/// it, as `auth_delete` does: no capability outlives its user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_record_internally_deletes_its_capabilities() {
    let (s, _) = server().await;
    let boss = msgpack(&s, "boss").await;
    let caps_at = p("auth.scram-sha-256.user.admin.caps");
    let get = |at: Path| {
        let boss = &boss;
        async move {
            boss.request(
                Msg::new()
                    .with("action", "get_internal")
                    .with_path("path", &at),
            )
            .await
            .expect("get_internal")
        }
    };
    assert!(get(caps_at.clone()).await.get("value").is_some());
    boss.request(
        Msg::new()
            .with("action", "delete_internal")
            .with_path("path", &p("auth.scram-sha-256.user.admin")),
    )
    .await
    .expect("delete_internal");
    assert!(
        get(caps_at).await.get("value").is_none(),
        "caps outlived the record"
    );
}
