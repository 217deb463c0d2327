//! scram-sha-256 through the server: keycard's client, wrong and unknown
//! users, the server's final signature, and what an unknown user sees.

mod common;

use common::{code, req, start, Raw};
use keycard_auth::{ClientRegistry, Password, ScramClient};
use keycard_client::Client;
use keycard_proto::{ErrorCode, Msg, Value};

async fn setup(s: &common::TestServer) {
    let c = Client::connect(s.addr()).await.expect("connect");
    let alice = ScramClient::new("alice", Password::new("correct horse battery"));
    c.set_user(&alice).await.expect("create alice");
    c.request(
        Msg::new()
            .with("action", "set_auth_typ")
            .with("typ", "scram-sha-256"),
    )
    .await
    .expect("make scram current");
}

#[tokio::test]
async fn right_password_logs_in_and_agrees_a_session_key() {
    let s = start().await;
    setup(&s).await;
    let c = Client::connect(s.addr()).await.expect("connect");
    assert_eq!(
        c.greeting()
            .auth
            .as_ref()
            .and_then(|a| a[0].clone())
            .as_deref(),
        Some("scram-sha-256")
    );
    let m = ClientRegistry::make_with_password(
        "scram-sha-256",
        Some("alice"),
        Some(Password::new("correct horse battery")),
    )
    .expect("client");
    c.login(m.as_ref()).await.expect("login");
    let who = c
        .request(Msg::new().with("action", "whoami"))
        .await
        .expect("whoami");
    assert_eq!(who.get("user"), Some(&Value::from("alice")));
    assert_eq!(who.get("session_key"), Some(&Value::Bool(true)));
    assert_eq!(who.get("super_root"), Some(&Value::Bool(false)));
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_answer() {
    let s = start().await;
    setup(&s).await;
    let mut errors = Vec::new();
    for (user, pw) in [("alice", "wrong"), ("mallory", "anything")] {
        let c = Client::connect(s.addr()).await.expect("connect");
        let e = c
            .login(&ScramClient::new(user, Password::new(pw)))
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Some(ErrorCode::AuthFailed));
        errors.push(e.to_string());
    }
    assert_eq!(errors[0], errors[1]);
}

/// What a prober sees: the server-first message for a known and an unknown
/// user has the same shape, and the unknown user's salt is stable.
#[tokio::test]
async fn unknown_users_look_like_known_ones() {
    let s = start().await;
    setup(&s).await;
    let addr = s.addr();
    let first = |user: &'static str| async move {
        let mut r = Raw::connect(addr).await;
        r.send(
            req(1, "auth")
                .with("typ", "scram-sha-256")
                .with("ident", user)
                .with("data", format!("n,,n={user},r=clientnonce123")),
        )
        .await;
        let start = r.recv().await.expect("start");
        assert_eq!(start.get("state"), Some(&Value::from("start")));
        let m = r.recv().await.expect("server-first");
        m.get("data")
            .and_then(Value::as_str)
            .expect("data")
            .to_owned()
    };
    let known = first("alice").await;
    let ghost1 = first("ghost").await;
    let ghost2 = first("ghost").await;
    let shape = |m: &str| {
        m.split(',')
            .map(|a| a.split_at(2).0.to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(shape(&known), shape(&ghost1));
    let salt = |m: &str| m.split(',').nth(1).map(str::to_owned);
    assert_eq!(salt(&ghost1), salt(&ghost2), "stable mock salt");
    assert_eq!(
        salt(&known).map(|s| s.len()),
        salt(&ghost1).map(|s| s.len())
    );
    let iters = |m: &str| m.split(',').nth(2).map(str::to_owned);
    assert_eq!(iters(&known), iters(&ghost1));
}

#[tokio::test]
async fn malformed_scram_messages_are_errors_and_the_connection_stays() {
    let s = start().await;
    setup(&s).await;
    let mut r = Raw::connect(s.addr()).await;
    let e = r
        .call(
            req(1, "auth")
                .with("typ", "scram-sha-256")
                .with("ident", "alice")
                .with("data", "garbage"),
        )
        .await;
    assert_eq!(code(&e), Some("bad_request"));
    let e = r
        .call(
            req(2, "auth")
                .with("typ", "scram-sha-256")
                .with("ident", "alice")
                .with("data", "p=tls-unique,,n=alice,r=x"),
        )
        .await;
    assert_eq!(code(&e), Some("bad_request"));
    let e = r
        .call(
            req(3, "auth")
                .with("typ", "scram-sha-256")
                .with("ident", "alice")
                .with("data", "n,,n=bob,r=abc"),
        )
        .await;
    assert_eq!(code(&e), Some("bad_request"));
    // Verifier text is checked on auth_set too (a super-root session is
    // needed, so use a fresh open server).
    let s2 = start().await;
    let c = Client::connect(s2.addr()).await.expect("connect");
    let e = c
        .request(
            Msg::new()
                .with("action", "auth_set")
                .with("typ", "scram-sha-256")
                .with("ident", "x")
                .with(
                    "data",
                    Msg::new().with("verifier", "SCRAM-SHA-256$10:AAAA$AAAA:AAAA"),
                ),
        )
        .await
        .expect_err("weak verifier");
    assert_eq!(e.code(), Some(ErrorCode::BadRequest));
}
