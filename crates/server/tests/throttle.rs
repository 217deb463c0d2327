//! Login throttling end to end: free failures, growing delays, refusal for
//! a cool-down, other users and other addresses unaffected, success after
//! the cool-down, and the audit log recording all of it.

mod common;

use std::time::{Duration, Instant};

use common::start_with;
use keycard_auth::{Password, ScramClient};
use keycard_client::Client;
use keycard_proto::{ErrorCode, Msg, Value};
use keycard_server::ThrottleConfig;

fn user(name: &str, pw: &str) -> ScramClient {
    ScramClient::new(name, Password::new(pw))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_delay_then_refuse_without_locking_anyone_else_out() {
    let s = start_with(|c| {
        c.throttle = ThrottleConfig {
            free: 2,
            escalate: 2,
            base_delay_secs: 1,
            max_delay_secs: 1,
            cooldown_secs: 3,
            window_secs: 3,
            ..ThrottleConfig::default()
        };
        // Only the throttle decides here.
        c.max_auth_attempts = 100;
    })
    .await;
    let admin = Client::connect(s.addr()).await.expect("connect");
    admin
        .set_user(&user("alice", "alice-pw"))
        .await
        .expect("alice");
    admin.set_user(&user("bob", "bob-pw")).await.expect("bob");
    admin
        .request(
            Msg::new()
                .with("action", "set_auth_typ")
                .with("typ", "scram-sha-256"),
        )
        .await
        .expect("current");

    let attacker = Client::connect(s.addr()).await.expect("connect");
    let wrong = user("alice", "guess");
    // Two free failures, answered at once.
    for _ in 0..2 {
        let t = Instant::now();
        let e = attacker.login(&wrong).await.expect_err("wrong");
        assert_eq!(e.code(), Some(ErrorCode::AuthFailed));
        assert!(t.elapsed() < Duration::from_millis(900), "no delay yet");
    }
    // The next two are delayed (1 s after the previous failure).
    for _ in 0..2 {
        let t = Instant::now();
        let e = attacker.login(&wrong).await.expect_err("wrong");
        assert_eq!(e.code(), Some(ErrorCode::AuthFailed));
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "delayed: {:?}",
            t.elapsed()
        );
    }
    // Then refused outright, even with the right password, from here.
    let e = attacker.login(&wrong).await.expect_err("throttled");
    assert_eq!(e.code(), Some(ErrorCode::Throttled));
    assert!(e.to_string().contains("retry in"), "{e}");
    let e = attacker
        .login(&user("alice", "alice-pw"))
        .await
        .expect_err("throttled");
    assert_eq!(e.code(), Some(ErrorCode::Throttled));
    // The same answer for a user that does not exist, once throttled.
    let ghost = user("ghost", "x");
    for _ in 0..4 {
        let _ = attacker.login(&ghost).await;
    }
    let e = attacker.login(&ghost).await.expect_err("throttled");
    assert_eq!(e.code(), Some(ErrorCode::Throttled));

    // Another user from the same address is not affected.
    let c = Client::connect(s.addr()).await.expect("connect");
    c.login(&user("bob", "bob-pw")).await.expect("bob logs in");
    // Alice from another address is not affected.
    let c = Client::connect_from("127.0.0.2".parse().expect("ip"), s.addr())
        .await
        .expect("connect from 127.0.0.2");
    c.login(&user("alice", "alice-pw"))
        .await
        .expect("alice from elsewhere");
    // After the cool-down, alice logs in from the attacker's address too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c = Client::connect(s.addr()).await.expect("connect");
    c.login(&user("alice", "alice-pw"))
        .await
        .expect("after the cool-down");

    // The audit log has every outcome, and no secret.
    let tail = c
        .request(Msg::new().with("action", "audit_tail").with("n", 100))
        .await;
    // alice is not super-root: refused.
    assert_eq!(
        tail.expect_err("not super-root").code(),
        Some(ErrorCode::PermissionDenied)
    );
    let log = std::fs::read_to_string(s.dir.path().join("audit.log")).expect("audit log");
    for outcome in ["\"success\"", "\"failure\"", "\"throttled\""] {
        assert!(log.contains(outcome), "{outcome} recorded:\n{log}");
    }
    assert!(
        log.contains("\"user\":\"ghost\""),
        "names as given are recorded"
    );
    for secret in ["alice-pw", "bob-pw", "guess"] {
        assert!(!log.contains(secret), "a password in the audit log");
    }
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    // Creating alice was audited too (user management events).
    assert_eq!(events[0]["event"], "auth record set (user)");
    assert_eq!(events[0]["user"], "alice");
    let first = events
        .iter()
        .find(|e| e["event"] == "login")
        .expect("a login event");
    for field in [
        "time", "event", "outcome", "user", "method", "source", "conn",
    ] {
        assert!(first.get(field).is_some(), "field {field} in {first}");
    }
}

#[tokio::test]
async fn admins_read_the_audit_log() {
    let s = start_with(|_| {}).await;
    let c = Client::connect(s.addr()).await.expect("connect");
    c.set_user(&user("carol", "pw-carol"))
        .await
        .expect("create");
    let other = Client::connect(s.addr()).await.expect("connect");
    let _ = other.login(&user("carol", "nope")).await;
    // The open server's clients are super-root.
    let tail = c
        .request(Msg::new().with("action", "audit_tail").with("n", 10))
        .await
        .expect("tail");
    let Some(Value::Array(lines)) = tail.get("result") else {
        panic!("no result: {tail:?}")
    };
    assert!(
        lines
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains("\"failure\""))),
        "{lines:?}"
    );
}
