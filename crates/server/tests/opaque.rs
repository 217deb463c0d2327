//! `opaque` through the server: registration and login dialogues from
//! keycard's client, the suite in the greeting, wrong and unknown alike.

mod common;

use common::start;
use keycard_auth::{OpaqueClient, Password};
use keycard_client::Client;
use keycard_proto::{ErrorCode, Msg, Value};

fn client(user: &str, pw: &str) -> OpaqueClient {
    OpaqueClient {
        user: user.into(),
        password: Password::new(pw),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_registration_and_login() {
    let s = start().await;
    let admin = Client::connect(s.addr()).await.expect("connect");
    assert_eq!(
        admin.greeting().raw.get("opaque").and_then(Value::as_str),
        Some(keycard_auth::OPAQUE_SUITE)
    );
    admin
        .set_user(&client("alice", "correct horse"))
        .await
        .expect("register");
    admin
        .request(
            Msg::new()
                .with("action", "set_auth_typ")
                .with("typ", "opaque"),
        )
        .await
        .expect("current");
    let c = Client::connect(s.addr()).await.expect("connect");
    c.login(&client("alice", "correct horse"))
        .await
        .expect("login");
    let who = c
        .request(Msg::new().with("action", "whoami"))
        .await
        .expect("whoami");
    assert_eq!(who.get("user"), Some(&Value::from("alice")));
    assert_eq!(who.get("session_key"), Some(&Value::Bool(true)));

    // Wrong password and unknown user: the client cannot open KE2 in
    // either case, and a server that was never sent a valid KE3 counts it.
    for (u, pw) in [("alice", "wrong horse"), ("nobody", "correct horse")] {
        let c = Client::connect(s.addr()).await.expect("connect");
        let e = c.login(&client(u, pw)).await.expect_err("refused");
        assert!(matches!(e, keycard_client::ClientError::Auth(_)), "{e:?}");
    }
    // A client that gives up after KE2 (it knows the password was wrong)
    // leaves a counted, audited failure behind (RFC 9807).
    let log = common::audit_log_with(&s, |l| {
        l.matches("\"outcome\":\"failure\"").count() >= 2 && l.contains("left after the challenge")
    })
    .await;
    let failures = log.matches("\"outcome\":\"failure\"").count();
    assert_eq!(failures, 2, "{log}");
    assert!(log.contains("left after the challenge"), "{log}");
    // And the throttle counted them: the pair counter for alice exists
    // (written behind: waited for).
    let at = keycard_proto::Path::parse(":n.throttle.pair.alice.127:.0:.0:.1").expect("path");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let counter = loop {
        let e = s.handle.state.store.get(&at).await.expect("get");
        if e.is_some() || tokio::time::Instant::now() >= deadline {
            break e;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(
        counter.and_then(|e| e.value.get("failures").and_then(Value::as_u64)),
        Some(1)
    );
    let _ = ErrorCode::AuthFailed;
}
