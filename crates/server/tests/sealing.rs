//! The seal's management actions (docs/SEALING.md): `seal_status` and
//! `seal_rotate` need super-root; a new seal key never crosses an
//! unencrypted connection from beyond loopback; malformed requests are
//! refused; a server whose secrets are not sealed says so.

mod common;

use common::{code, req, start_with, Raw};
use keycard_auth::{ClientRegistry, Password, ScramClient};
use keycard_client::Client;
use keycard_proto::{Msg, Value};
use keycard_server::seal::SealKey;

fn non_loopback_ip() -> std::net::IpAddr {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
    probe.connect("192.0.2.1:9").expect("a default route");
    let ip = probe.local_addr().expect("local address").ip();
    assert!(!ip.is_loopback(), "needs an address beyond loopback: {ip}");
    ip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_actions_need_super_root_and_keep_the_key_off_plaintext() {
    let s = start_with(|c| {
        c.listen = "0.0.0.0:0".parse().expect("addr");
        c.seal.key = Some(SealKey::generate());
    })
    .await;
    let port = s.addr().port();
    let near = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let admin = Client::connect(near).await.expect("admin");
    let root = ClientRegistry::make("root", None).expect("m");
    admin.set_user(root.as_ref()).await.expect("root user");
    admin
        .set_user(&ScramClient::new("pat", Password::new("pw pw pw pw")))
        .await
        .expect("pat");
    admin
        .request(
            Msg::new()
                .with("action", "set_auth_typ")
                .with("typ", keycard_auth::SCRAM_SHA_256)
                .with("accept", Value::Array(vec!["root".into()])),
        )
        .await
        .expect("current");
    // pat is no super-root.
    let pat = Client::connect(near).await.expect("pat");
    pat.login(&ScramClient::new("pat", Password::new("pw pw pw pw")))
        .await
        .expect("login");
    for m in [
        Msg::new().with("action", "seal_status"),
        Msg::new().with("action", "seal_rotate").with("data", true),
    ] {
        let e = pat.request(m).await.expect_err("refused");
        assert_eq!(
            e.code(),
            Some(keycard_proto::ErrorCode::PermissionDenied),
            "{e}"
        );
    }
    // Root, from beyond loopback over plaintext: status yes, a key no.
    let far = std::net::SocketAddr::from((non_loopback_ip(), port));
    let mut r = Raw::connect(far).await;
    let v = r
        .call_stream(req(1, "auth").with("typ", "root").with("ident", "*"))
        .await;
    assert!(v.iter().all(|m| code(m).is_none()), "{v:?}");
    let status = r.call(req(2, "seal_status")).await;
    assert_eq!(status.get("sealed"), Some(&Value::from(true)), "{status:?}");
    let key = SealKey::generate();
    let v = r
        .call(req(3, "seal_rotate").with("key", Value::Bin(key.expose().to_vec())))
        .await;
    assert_eq!(code(&v), Some("auth_method"), "{v:?}");
    // Malformed: a short key, or neither field.
    for bad in [
        req(4, "seal_rotate").with("key", Value::Bin(vec![1; 7])),
        req(5, "seal_rotate"),
        req(6, "seal_rotate")
            .with("data", true)
            .with("key", Value::Bin(vec![1; 32])),
    ] {
        let v = r.call(bad).await;
        assert_eq!(code(&v), Some("bad_request"), "{v:?}");
    }
    // From loopback the key is taken.
    admin.login(root.as_ref()).await.expect("root");
    let v = admin
        .request(
            Msg::new()
                .with("action", "seal_rotate")
                .with("key", Value::Bin(key.expose().to_vec())),
        )
        .await
        .expect("rotated");
    assert_eq!(
        v.get("seal_key").and_then(Value::as_str),
        Some(key.id().as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsealed_server_says_so() {
    let s = start_with(|_| {}).await;
    let c = Client::connect(s.addr()).await.expect("connect");
    let v = c
        .request(Msg::new().with("action", "seal_status"))
        .await
        .expect("status");
    assert_eq!(v.get("sealed"), Some(&Value::from(false)));
    let e = c
        .request(Msg::new().with("action", "seal_rotate").with("data", true))
        .await
        .expect_err("nothing to rotate");
    assert_eq!(e.code(), Some(keycard_proto::ErrorCode::BadRequest), "{e}");
}
