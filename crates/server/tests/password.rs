//! The `password` method through the server: X25519 agreement from
//! keycard's client, Argon2id at rest, wrong and unknown users alike.

mod common;

use common::{code, req, start, Raw};
use keycard_auth::channel::{seal, X25519Client};
use keycard_auth::{Password, PasswordClient};
use keycard_client::Client;
use keycard_proto::{ErrorCode, Msg, Path, Value};

fn alice(pw: &str) -> PasswordClient {
    PasswordClient {
        user: "alice".into(),
        password: Password::new(pw),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_users_log_in_and_the_store_keeps_argon2id() {
    let s = start().await;
    let admin = Client::connect(s.addr()).await.expect("connect");
    admin.set_user(&alice("open sesame")).await.expect("create");
    admin
        .request(
            Msg::new()
                .with("action", "set_auth_typ")
                .with("typ", "password"),
        )
        .await
        .expect("current");
    let c = Client::connect(s.addr()).await.expect("connect");
    c.login(&alice("open sesame")).await.expect("login");
    let who = c
        .request(Msg::new().with("action", "whoami"))
        .await
        .expect("whoami");
    assert_eq!(who.get("user"), Some(&Value::from("alice")));

    let mut errors = Vec::new();
    for (user, pw) in [("alice", "open sesame!"), ("mallory", "open sesame")] {
        let c = Client::connect(s.addr()).await.expect("connect");
        let e = c
            .login(&PasswordClient {
                user: user.into(),
                password: Password::new(pw),
            })
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Some(ErrorCode::AuthFailed));
        errors.push(e.to_string());
    }
    assert_eq!(
        errors[0], errors[1],
        "unknown user and wrong password look the same"
    );

    // At rest: an Argon2id PHC string with OWASP's minimum parameters.
    let rec = s
        .handle
        .state
        .store
        .get(&Path::parse(":n.auth.password.user.alice").expect("path"))
        .await
        .expect("get")
        .expect("record");
    let phc = rec.value.get("hash").and_then(Value::as_str).expect("hash");
    assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
}

#[tokio::test]
async fn the_sealed_box_needs_the_connections_own_key() {
    let s = start().await;
    let admin = Client::connect(s.addr()).await.expect("connect");
    admin.set_user(&alice("pw-1234")).await.expect("create");
    admin
        .request(
            Msg::new()
                .with("action", "set_auth_typ")
                .with("typ", "password"),
        )
        .await
        .expect("current");
    let mut r = Raw::connect(s.addr()).await;
    // No key agreed yet.
    let e = r
        .call(
            req(1, "auth")
                .with("typ", "password")
                .with("ident", "alice")
                .with("password", vec![0u8; 72]),
        )
        .await;
    assert_eq!(code(&e), Some("bad_request"));
    // Agree one, then send a box sealed under another key.
    let me = X25519Client::new();
    let reply = r
        .call(
            req(2, "diffie_hellman")
                .with("typ", "x25519")
                .with("pubkey", me.public.to_vec()),
        )
        .await;
    let server = reply
        .get("pubkey")
        .and_then(Value::as_bin)
        .expect("pubkey")
        .to_vec();
    let key = me.finish(&server).expect("key");
    let other = keycard_auth::SecretKey::new([1; 32]);
    let digest = <sha2::Sha256 as sha2::Digest>::digest(b"pw-1234");
    let e = r
        .call(
            req(3, "auth")
                .with("typ", "password")
                .with("ident", "alice")
                .with("password", seal(&other, &digest)),
        )
        .await;
    assert_eq!(code(&e), Some("bad_request"));
    // A second agreement on one connection is refused.
    let e = r
        .call(
            req(4, "diffie_hellman")
                .with("typ", "x25519")
                .with("pubkey", me.public.to_vec()),
        )
        .await;
    assert_eq!(code(&e), Some("bad_request"));
    // Hostile agreement inputs.
    let mut r2 = Raw::connect(s.addr()).await;
    for (i, m) in [
        req(1, "diffie_hellman"),
        req(2, "diffie_hellman").with("pubkey", "text"),
        req(3, "diffie_hellman")
            .with("typ", "x25519")
            .with("pubkey", vec![0u8; 32]),
        req(4, "diffie_hellman")
            .with("typ", "x25519")
            .with("pubkey", vec![9u8; 5]),
        req(5, "diffie_hellman").with("pubkey", vec![0xffu8; 256]),
        req(6, "diffie_hellman")
            .with("pubkey", vec![2u8])
            .with("length", 1024),
        req(7, "diffie_hellman")
            .with("pubkey", vec![5u8; 64])
            .with("length", -3),
        req(8, "diffie_hellman")
            .with("typ", "rsa")
            .with("pubkey", vec![5u8; 64]),
    ]
    .into_iter()
    .enumerate()
    {
        let e = r2.call(m).await;
        assert_eq!(code(&e), Some("bad_request"), "case {i}: {e:?}");
    }
    // The right box on the right connection works.
    let e = r
        .call_stream(
            req(5, "auth")
                .with("typ", "password")
                .with("ident", "alice")
                .with("password", seal(&key, &digest)),
        )
        .await;
    assert!(e.iter().all(|m| m.get("error").is_none()), "{e:?}");
}
