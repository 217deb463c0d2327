//! The auth framework end to end, through keycard's own client: each
//! method's login, unknown users, wrong methods, the attempt limit and the
//! super-root capability.

mod common;

use common::{code, path, req, start, start_with, Raw};
use keycard_auth::ClientRegistry;
use keycard_client::Client;
use keycard_proto::{ErrorCode, Msg, Path, Value};

fn p(s: &str) -> Path {
    Path::parse(s).expect("path")
}

async fn client(s: &common::TestServer) -> Client {
    Client::connect(s.addr()).await.expect("connect")
}

async fn add_user(c: &Client, method: &str, name: Option<&str>) {
    let m = ClientRegistry::make(method, name).expect("method");
    c.set_user(m.as_ref()).await.expect("user created");
}

async fn make_current(c: &Client, method: &str) -> Result<Value, keycard_client::ClientError> {
    c.request(
        Msg::new()
            .with("action", "set_auth_typ")
            .with("typ", method),
    )
    .await
}

#[tokio::test]
async fn open_server_until_a_method_with_a_user_is_current() {
    let s = start().await;
    let c = client(&s).await;
    assert!(c.greeting().auth.is_none());
    // A method without users cannot be made current (no lock-out).
    let e = make_current(&c, "root").await.expect_err("no user yet");
    assert_eq!(e.code(), Some(ErrorCode::BadRequest));
    let e = make_current(&c, "nonsense")
        .await
        .expect_err("unknown method");
    assert_eq!(e.code(), Some(ErrorCode::AuthMethod));
    add_user(&c, "root", None).await;
    add_user(&c, "_test", Some("joe")).await;
    make_current(&c, "root").await.expect("root current");

    let d = client(&s).await;
    // The greeting lists the accepted methods: the current one, and
    // tokens (keycards issued earlier).
    assert_eq!(
        d.greeting().auth,
        Some(vec![Some("root".to_owned()), Some("token".to_owned())])
    );
    assert!(d.greeting().login_required());
    // Every data action before login: auth_required.
    let e = d.get(&p("x")).await.expect_err("login first");
    assert_eq!(e.code(), Some(ErrorCode::AuthRequired));
    let e = d.set(&p("x"), 1.into()).await.expect_err("login first");
    assert_eq!(e.code(), Some(ErrorCode::AuthRequired));
    let e = d
        .get_tree(&p("x"), None, None)
        .await
        .expect("stream")
        .collect()
        .await
        .expect_err("login first");
    assert_eq!(e.code(), Some(ErrorCode::AuthRequired));
    // The already-connected, unauthenticated first client is now locked
    // out of data too.
    let e = c.get(&p("x")).await.expect_err("login first");
    assert_eq!(e.code(), Some(ErrorCode::AuthRequired));

    // Log in with root: data and management work.
    d.login(ClientRegistry::make("root", None).expect("m").as_ref())
        .await
        .expect("root login");
    d.set(&p("x"), 1.into()).await.expect("set after login");
    let who = d
        .request(Msg::new().with("action", "whoami"))
        .await
        .expect("whoami");
    assert_eq!(who.get("user"), Some(&Value::from("*")));
    assert_eq!(who.get("super_root"), Some(&Value::Bool(true)));
    let info = d
        .request(Msg::new().with("action", "auth_info"))
        .await
        .expect("info");
    assert_eq!(
        info.get("value").and_then(|v| v.get("current")),
        Some(&Value::from("root"))
    );

    // typ nil opens the server again.
    make_current(&d, "")
        .await
        .expect_err("empty name is no method");
    d.request(
        Msg::new()
            .with("action", "set_auth_typ")
            .with("typ", Value::Nil),
    )
    .await
    .expect("open");
    let e = client(&s).await;
    assert_eq!(
        e.greeting().auth.as_ref().and_then(|a| a.first().cloned()),
        Some(None)
    );
    assert!(!e.greeting().login_required());
    e.get(&p("x")).await.expect("open again");
}

#[tokio::test]
async fn each_method_logs_in_and_unknown_users_fail_like_wrong_ones() {
    let s = start().await;
    let admin = client(&s).await;
    add_user(&admin, "root", None).await;
    add_user(&admin, "_anon", Some("ann")).await;
    add_user(&admin, "_test", Some("joe")).await;
    for (method, user) in [
        ("_anon", Some("ann")),
        ("_test", Some("joe")),
        ("root", None),
    ] {
        // Each round starts from an open server, whose clients are
        // super-root, and makes one method current.
        admin_reopen(&s).await;
        make_current(&client(&s).await, method)
            .await
            .expect("current");

        let c = client(&s).await;
        c.login(ClientRegistry::make(method, user).expect("m").as_ref())
            .await
            .expect("login works");
        c.set(&p("ok").child(method), 1.into())
            .await
            .expect("data after login");
        let who = c
            .request(Msg::new().with("action", "whoami"))
            .await
            .expect("whoami");
        assert_eq!(who.get("method"), Some(&Value::from(method)));
        assert_eq!(who.get("super_root"), Some(&Value::Bool(method == "root")));
        if method == "root" {
            continue;
        }
        // An unknown user: the very same error as any failed login.
        let c = client(&s).await;
        let e = c
            .login(
                ClientRegistry::make(method, Some("nobody"))
                    .expect("m")
                    .as_ref(),
            )
            .await
            .expect_err("unknown user");
        assert_eq!(e.code(), Some(ErrorCode::AuthFailed));
        assert_eq!(e.to_string(), "login failed (auth_failed)");
        // Only root's user is super-root: management is refused.
        c.login(ClientRegistry::make(method, user).expect("m").as_ref())
            .await
            .expect("login");
        let e = c
            .request(
                Msg::new()
                    .with("action", "get_internal")
                    .with_path("path", &p("auth")),
            )
            .await
            .expect_err("not super-root");
        assert_eq!(e.code(), Some(ErrorCode::PermissionDenied));
        let e = c
            .set_user(
                ClientRegistry::make("_anon", Some("eve"))
                    .expect("m")
                    .as_ref(),
            )
            .await
            .expect_err("not super-root");
        assert_eq!(e.code(), Some(ErrorCode::PermissionDenied));
        let e = make_current(&c, "root").await.expect_err("not super-root");
        assert_eq!(e.code(), Some(ErrorCode::PermissionDenied));
    }
}

/// Makes the server open again by rewriting `(nil, "auth")` directly, as
/// an operator with file access would; used between rounds of a test.
async fn admin_reopen(s: &common::TestServer) {
    use keycard_store::Op;
    let at = Path::new(vec![keycard_proto::Elem::Nil, "auth".into()]);
    s.handle
        .state
        .store
        .write(vec![Op::put(
            at,
            Msg::new().with("current", Value::Nil).into_value(),
        )])
        .await
        .expect("reopen");
    s.handle.state.refresh_auth().await.expect("refresh");
}

#[tokio::test]
async fn wrong_method_and_malformed_logins_are_refused() {
    let s = start().await;
    let admin = client(&s).await;
    add_user(&admin, "root", None).await;
    add_user(&admin, "_test", Some("joe")).await;
    make_current(&admin, "_test").await.expect("current");
    let c = client(&s).await;
    let e = c
        .login(ClientRegistry::make("root", None).expect("m").as_ref())
        .await
        .expect_err("not current");
    assert_eq!(e.code(), Some(ErrorCode::AuthMethod));
    assert!(
        e.to_string().contains("_test"),
        "names the current method: {e}"
    );
    let mut raw = Raw::connect(s.addr()).await;
    let r = raw
        .call(req(1, "auth").with("typ", "_test").with("ident", 5))
        .await;
    assert_eq!(code(&r), Some("bad_request"));
    let r = raw
        .call(
            req(2, "auth")
                .with("typ", "_test")
                .with("ident", "joe")
                .with("data", 17),
        )
        .await;
    assert_eq!(code(&r), Some("bad_request"));
    let r = raw
        .call(req(3, "auth").with("typ", "nope").with("ident", "joe"))
        .await;
    assert_eq!(code(&r), Some("auth_method"));
    let r = raw.call(req(4, "auth")).await;
    assert_eq!(code(&r), Some("bad_request"));
    // Still usable: a good login now works.
    let r = raw
        .call_stream(
            req(5, "auth")
                .with("typ", "_test")
                .with("ident", "joe")
                .with("data", Value::Map(vec![])),
        )
        .await;
    assert!(r.iter().all(|m| m.get("error").is_none()), "{r:?}");
    let r = raw.call(req(6, "get_value").with("path", path("x"))).await;
    assert!(r.get("error").is_none());
}

#[tokio::test]
async fn failed_logins_are_limited_per_connection() {
    let s = start_with(|c| c.max_auth_attempts = 3).await;
    let admin = client(&s).await;
    add_user(&admin, "_anon", Some("ann")).await;
    make_current(&admin, "_anon").await.expect("current");
    let mut raw = Raw::connect(s.addr()).await;
    for i in 1..=2 {
        let r = raw
            .call(req(i, "auth").with("typ", "_anon").with("ident", "mallory"))
            .await;
        assert_eq!(code(&r), Some("auth_failed"));
    }
    let r = raw
        .call(req(3, "auth").with("typ", "_anon").with("ident", "mallory"))
        .await;
    assert_eq!(code(&r), Some("too_many_attempts"));
    assert!(raw.recv().await.is_none(), "the connection is closed");
    // A fresh connection may try again, and the real user is not affected.
    let c = client(&s).await;
    c.login(
        ClientRegistry::make("_anon", Some("ann"))
            .expect("m")
            .as_ref(),
    )
    .await
    .expect("login");
}

#[tokio::test]
async fn test_method_record_dialogue_and_auth_records() {
    let s = start().await;
    let c = client(&s).await;
    // The streamed dialogue, done by hand: start, GiveName, HasName, result.
    let mut raw = Raw::connect(s.addr()).await;
    raw.send(
        req(1, "auth_set")
            .with("typ", "_test")
            .with("kind", "user")
            .with("ident", "joe")
            .with("state", "start"),
    )
    .await;
    let first = raw.recv().await.expect("start");
    assert_eq!(first.get("state"), Some(&Value::from("start")));
    let ask = raw.recv().await.expect("question");
    assert_eq!(ask.get("step"), Some(&Value::from("GiveName")));
    raw.send(
        Msg::seq(1)
            .with("step", "HasName")
            .with("name", "joe")
            .with("chain", Value::Nil),
    )
    .await;
    let done = raw.recv().await.expect("result");
    assert_eq!(done.get("changed"), Some(&Value::Bool(true)), "{done:?}");
    let end = raw.recv().await.expect("end");
    assert_eq!(end.get("state"), Some(&Value::from("end")));
    // A wrong answer in the dialogue is refused.
    raw.send(
        req(2, "auth_set")
            .with("typ", "_test")
            .with("ident", "bob")
            .with("state", "start"),
    )
    .await;
    let _start = raw.recv().await;
    let _ask = raw.recv().await;
    raw.send(Msg::seq(2).with("step", "Nonsense")).await;
    let err = raw.recv().await.expect("error");
    assert_eq!(code(&err), Some("bad_request"));

    // auth_get shows the record without secrets; auth_list lists them.
    let v = c
        .request(
            Msg::new()
                .with("action", "auth_get")
                .with("typ", "_test")
                .with("ident", "joe")
                .with("nchain", 1),
        )
        .await
        .expect("auth_get");
    assert_eq!(v.get("name"), Some(&Value::from("joe")));
    assert!(v.get("chain").is_some());
    let e = c
        .request(
            Msg::new()
                .with("action", "auth_get")
                .with("typ", "_test")
                .with("ident", "ghost"),
        )
        .await
        .expect_err("missing");
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
    let mut s2 = c
        .stream(
            Msg::new()
                .with("action", "auth_list")
                .with("typ", "_test")
                .with("kind", "user"),
        )
        .await
        .expect("list");
    let mut names = Vec::new();
    while let Some(v) = s2.next_raw().await {
        names.push(v.expect("item").get("ident").cloned());
    }
    assert_eq!(names, vec![Some(Value::from("joe"))]);
    // The record lives where DistKV keeps it.
    let v = c
        .request(
            Msg::new()
                .with("action", "get_internal")
                .with_path("path", &p("auth._test.user.joe")),
        )
        .await
        .expect("get_internal");
    assert_eq!(
        v.get("value"),
        Some(&Msg::new().with("name", "joe").into_value())
    );
}

#[tokio::test]
async fn several_methods_can_be_accepted_at_once() {
    let s = start().await;
    let admin = client(&s).await;
    add_user(&admin, "root", None).await;
    add_user(&admin, "_test", Some("joe")).await;
    add_user(&admin, "_anon", Some("ann")).await;
    // An accepted method needs a user too.
    let e = admin
        .request(
            Msg::new()
                .with("action", "set_auth_typ")
                .with("typ", "root")
                .with(
                    "accept",
                    Value::Array(vec!["_test".into(), "scram-sha-256".into()]),
                ),
        )
        .await
        .expect_err("scram has no user");
    assert_eq!(e.code(), Some(ErrorCode::BadRequest));
    admin
        .request(
            Msg::new()
                .with("action", "set_auth_typ")
                .with("typ", "root")
                .with("accept", Value::Array(vec!["_test".into()])),
        )
        .await
        .expect("root, and _test too");
    let c = client(&s).await;
    assert_eq!(
        c.greeting().auth,
        Some(vec![
            Some("root".to_owned()),
            Some("_test".to_owned()),
            Some("token".to_owned())
        ])
    );
    // The strongest usable candidate is chosen: _test over root.
    let joe = ClientRegistry::make("_test", Some("joe")).expect("m");
    let root = ClientRegistry::make("root", None).expect("m");
    let used = c
        .login_as_needed(&[root.as_ref(), joe.as_ref()])
        .await
        .expect("login");
    assert_eq!(used, Some("_test"));
    // A method neither current nor accepted is refused, naming the list.
    let c = client(&s).await;
    let ann = ClientRegistry::make("_anon", Some("ann")).expect("m");
    let e = c.login(ann.as_ref()).await.expect_err("not accepted");
    assert_eq!(e.code(), Some(ErrorCode::AuthMethod));
    assert!(e.to_string().contains("root, _test"), "{e}");
    let e = c
        .login_as_needed(&[ann.as_ref()])
        .await
        .expect_err("no usable candidate");
    assert!(matches!(e, keycard_client::ClientError::Auth(_)), "{e:?}");
}

#[tokio::test]
async fn capabilities_gate_management_and_cannot_escalate() {
    let s = start().await;
    let admin = client(&s).await;
    add_user(&admin, "root", None).await;
    add_user(&admin, "_test", Some("ops")).await;
    add_user(&admin, "_test", Some("plain")).await;
    let caps = |names: &[&str]| {
        Msg::new()
            .with(
                "caps",
                Value::Array(names.iter().map(|n| Value::from(*n)).collect()),
            )
            .into_value()
    };
    admin
        .request(
            Msg::new()
                .with("action", "set_internal")
                .with_path("path", &p("auth._test.user.ops.caps"))
                .with("value", caps(&["read_auth", "write_auth", "bogus"])),
        )
        .await
        .expect("grant");
    admin
        .request(
            Msg::new()
                .with("action", "set_auth_typ")
                .with("typ", "root")
                .with("accept", Value::Array(vec!["_test".into()])),
        )
        .await
        .expect("auth on");
    let ops = client(&s).await;
    ops.login(
        ClientRegistry::make("_test", Some("ops"))
            .expect("m")
            .as_ref(),
    )
    .await
    .expect("login");
    let who = ops
        .request(Msg::new().with("action", "whoami"))
        .await
        .expect("whoami");
    assert_eq!(
        who.get("caps"),
        Some(&Value::Array(vec!["read_auth".into(), "write_auth".into()])),
        "unknown names are ignored"
    );
    // write_auth: users of ordinary methods, and reading them.
    ops.set_user(
        ClientRegistry::make("_anon", Some("newbie"))
            .expect("m")
            .as_ref(),
    )
    .await
    .expect("create");
    let listed = ops
        .request(
            Msg::new()
                .with("action", "auth_list")
                .with("typ", "_anon")
                .with("ident", "newbie"),
        )
        .await
        .expect("read_auth");
    assert_eq!(listed.get("ident"), Some(&Value::from("newbie")));
    ops.request(
        Msg::new()
            .with("action", "auth_delete")
            .with("typ", "_anon")
            .with("ident", "newbie"),
    )
    .await
    .expect("delete");
    // Not: root's user (super-root), which methods log in, the reserved root.
    let e = ops
        .set_user(ClientRegistry::make("root", None).expect("m").as_ref())
        .await
        .expect_err("root");
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied));
    let e = make_current(&ops, "_test").await.expect_err("set_auth_typ");
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied));
    let e = ops
        .request(
            Msg::new()
                .with("action", "set_internal")
                .with_path("path", &p("auth._test.user.ops.caps"))
                .with("value", caps(&["super_root"])),
        )
        .await
        .expect_err("cannot grant itself super_root");
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied));
    // A user without capabilities gets nothing.
    let plain = client(&s).await;
    plain
        .login(
            ClientRegistry::make("_test", Some("plain"))
                .expect("m")
                .as_ref(),
        )
        .await
        .expect("login");
    for msg in [
        Msg::new().with("action", "auth_list").with("typ", "_test"),
        Msg::new()
            .with("action", "auth_get")
            .with("typ", "_test")
            .with("ident", "ops"),
        Msg::new().with("action", "audit_tail"),
        Msg::new()
            .with("action", "auth_delete")
            .with("typ", "_test")
            .with("ident", "ops"),
    ] {
        let e = plain.request(msg).await.expect_err("no capability");
        assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{e}");
    }
    // The last user of the current method cannot be deleted.
    let root = client(&s).await;
    root.login(ClientRegistry::make("root", None).expect("m").as_ref())
        .await
        .expect("root");
    let e = root
        .request(
            Msg::new()
                .with("action", "auth_delete")
                .with("typ", "root")
                .with("ident", "*"),
        )
        .await
        .expect_err("lock-out");
    assert_eq!(e.code(), Some(ErrorCode::Conflict));
}
