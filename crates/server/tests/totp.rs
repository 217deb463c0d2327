//! The `totp` method through the server: enrolment by `auth_set` answers
//! with the provisioning URI and stores the secret the server made,
//! `auth_get` never shows it, and a second factor is never a way in on
//! its own (not current, not accepted, not the method `auth_methods`
//! names). Its codes, window and replay rule are tested at the method
//! level (crates/auth/src/totp.rs, crates/auth/tests/pyotp.rs).

mod common;

use common::start;
use keycard_auth::{ClientRegistry, TotpClient, TOTP};
use keycard_client::Client;
use keycard_proto::{ErrorCode, Msg, Value};

fn enrol(user: &str) -> TotpClient {
    TotpClient {
        user: user.into(),
        code: None,
    }
}

#[tokio::test]
async fn enrolment_answers_the_uri_and_keeps_the_secret_in() {
    let s = start().await;
    let c = Client::connect(s.addr()).await.expect("connect");
    let reply = c.create_user(&enrol("joe")).await.expect("enrolled");
    let uri = reply.get("uri").and_then(Value::as_str).expect("the URI");
    let secret = uri
        .strip_prefix("otpauth://totp/keycard:joe?secret=")
        .and_then(|r| r.split_once('&'))
        .map(|(s, rest)| {
            assert_eq!(rest, "issuer=keycard&algorithm=SHA1&digits=6&period=30");
            s.to_owned()
        })
        .expect("the URI's shape");
    assert_eq!(secret.len(), 32, "160 bits in base32, unpadded");
    assert!(secret
        .bytes()
        .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)));
    // A second enrolment draws another secret.
    let again = c.set_user(&enrol("joe")).await.expect("re-enrolled");
    let uri2 = again.get("uri").and_then(Value::as_str).expect("uri");
    assert_ne!(uri, uri2);
    // auth_get shows the shape, not the secret.
    let shown = c
        .request(
            Msg::new()
                .with("action", "auth_get")
                .with("typ", TOTP)
                .with("ident", "joe"),
        )
        .await
        .expect("auth_get");
    assert!(shown.get("secret").is_none(), "{shown:?}");
    assert_eq!(shown.get("digits").and_then(Value::as_u64), Some(6));
    let Value::Map(fields) = &shown else {
        panic!("{shown:?}")
    };
    assert!(
        fields.iter().all(|(_, v)| !matches!(v, Value::Bin(_))),
        "{shown:?}"
    );
    // A secret chosen by the client is refused: the server makes it.
    let e = c
        .request(
            Msg::new()
                .with("action", "auth_set")
                .with("typ", TOTP)
                .with("kind", "user")
                .with("ident", "ann")
                .with("data", Msg::new().with("secret", b"chosen".to_vec())),
        )
        .await
        .expect_err("chosen secret");
    assert_eq!(e.code(), Some(ErrorCode::BadRequest));
}

#[tokio::test]
async fn a_second_factor_is_never_a_way_in_on_its_own() {
    let s = start().await;
    let c = Client::connect(s.addr()).await.expect("connect");
    c.create_user(&enrol("joe")).await.expect("enrolled");
    c.set_user(
        ClientRegistry::make(keycard_auth::TEST, Some("joe"))
            .expect("m")
            .as_ref(),
    )
    .await
    .expect("a first factor");
    for msg in [
        Msg::new().with("action", "set_auth_typ").with("typ", TOTP),
        Msg::new()
            .with("action", "set_auth_typ")
            .with("typ", keycard_auth::TEST)
            .with("accept", Value::Array(vec![TOTP.into()])),
    ] {
        let e = c.request(msg).await.expect_err("a second factor alone");
        assert_eq!(e.code(), Some(ErrorCode::AuthMethod));
        assert!(e.to_string().contains("second factor"), "{e}");
    }
    // The user's method to log in with is its first factor.
    assert_eq!(
        c.auth_methods("joe").await.expect("auth_methods"),
        vec![keycard_auth::TEST.to_owned()]
    );
    // The server is still open: nothing was made current.
    assert!(Client::connect(s.addr())
        .await
        .expect("connect")
        .greeting()
        .auth
        .is_none());
}
