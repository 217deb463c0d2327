//! TLS on both listeners, with certificates made here (rcgen) and real
//! handshakes (rustls on both sides): the msgpack protocol and REST over
//! TLS, plaintext clients closed while TLS clients are served, the
//! protocol versions, a live reload (new connections see the new
//! certificate, established ones stay; a bad file keeps the old one),
//! and hostile handshakes that stall nobody.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki::Pki;
use common::{audit_log_with, start_with, TestServer};
use keycard_client::{Client, ClientTls};
use keycard_proto::{Msg, Path, Value};
use keycard_server::TlsVersion;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn p(s: &str) -> Path {
    Path::parse(s).expect("path")
}

/// A server with TLS on both listeners (the certificate `serial` 1).
async fn tls_server(pki: &Pki, tweak: impl FnOnce(&mut keycard_server::Config)) -> TestServer {
    let cert = pki.server_cert(1);
    start_with(|c| {
        c.http = Some("127.0.0.1:0".parse().expect("addr"));
        c.tls.cert = Some(cert.cert.clone());
        c.tls.key = Some(cert.key.clone());
        c.tls.handshake_timeout = 1;
        tweak(c);
    })
    .await
}

/// Makes `typ` the current method, with `accept` accepted too.
async fn set_current(admin: &Client, typ: &str, accept: &[&str]) {
    let accept = accept.iter().map(|m| Value::from(*m)).collect();
    admin
        .request(
            Msg::new()
                .with("action", "set_auth_typ")
                .with("typ", typ)
                .with("accept", Value::Array(accept)),
        )
        .await
        .expect("current");
}

/// Users `root` and `_test` joe, then logins required: `_test` current,
/// `root` accepted.
async fn require_logins(admin: &Client) {
    for (m, u) in [("root", None), (keycard_auth::TEST, Some("joe"))] {
        let m = keycard_auth::ClientRegistry::make(m, u).expect("method");
        admin.set_user(m.as_ref()).await.expect("user");
    }
    set_current(admin, keycard_auth::TEST, &["root"]).await;
}

/// A TLS connection made by hand, for what the client library does not
/// show: the server's certificate, the version, ALPN.
async fn handshake(
    addr: std::net::SocketAddr,
    tls: &ClientTls,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut config = (*tls.config()).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let socket = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    connector.connect(name, socket).await
}

/// The leaf certificate a new TLS connection to `addr` is shown.
async fn served_cert(addr: std::net::SocketAddr, tls: &ClientTls) -> Vec<u8> {
    let s = handshake(addr, tls, &[]).await.expect("handshake");
    let (_, conn) = s.get_ref();
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .expect("a certificate")
}

/// Reads until the peer closes or `within` passes: what arrived, and
/// whether it closed.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

#[tokio::test]
async fn msgpack_and_rest_speak_tls_and_plaintext_clients_are_closed() {
    let pki = Pki::new();
    let s = tls_server(&pki, |_| {}).await;
    let http = s.handle.http_addr.expect("http");

    // A plaintext msgpack client waits for a greeting that never comes,
    // and is closed once the handshake timeout (1 s) passes.
    let started = Instant::now();
    let mut plain = TcpStream::connect(s.addr()).await.expect("connect");

    // Meanwhile TLS clients are served.
    let c = Client::connect_tls(s.addr(), &pki.client())
        .await
        .expect("TLS client");
    assert_eq!(c.greeting().node, "test-node");
    c.set(&p("over.tls"), Value::from("sealed in transit"))
        .await
        .expect("set");
    let got = c.get(&p("over.tls")).await.expect("get").expect("a value");
    assert_eq!(got.value, Value::from("sealed in transit"));

    let (bytes, closed) = read_until_closed(&mut plain, Duration::from_secs(5)).await;
    assert!(bytes.is_empty(), "a plaintext client got {bytes:?}");
    assert!(closed, "a plaintext client was not closed");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A plaintext HTTP request gets no HTTP answer, and is closed.
    let mut plain = TcpStream::connect(http).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("write");
    let (bytes, closed) = read_until_closed(&mut plain, Duration::from_secs(5)).await;
    assert!(!bytes.starts_with(b"HTTP/"), "plaintext HTTP was answered");
    assert!(closed);

    // HTTPS: ALPN says http/1.1, and the API answers.
    let mut https = handshake(http, &pki.client(), &[b"h2", b"http/1.1"])
        .await
        .expect("handshake");
    assert_eq!(https.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    https
        .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), https.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"methods\""), "{answer}");

    // The msgpack listener names no ALPN protocol, whatever is offered.
    let m = handshake(s.addr(), &pki.client(), &[b"http/1.1"])
        .await
        .expect("handshake");
    assert_eq!(m.get_ref().1.alpn_protocol(), None);
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_server_gets_no_greeting() {
    let pki = Pki::new();
    let s = tls_server(&pki, |_| {}).await;
    let other = Pki::new();
    let err = Client::connect_tls(s.addr(), &other.client())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("TLS"), "{err}");
    // The certificate is for localhost and 127.0.0.1, not another name.
    let elsewhere = pki.client().for_name("keycard.example").expect("name");
    assert!(Client::connect_tls(s.addr(), &elsewhere).await.is_err());
    // The server is unharmed.
    Client::connect_tls(s.addr(), &pki.client())
        .await
        .expect("served");
}

#[tokio::test]
async fn tls_1_3_only_unless_1_2_is_allowed() {
    let pki = Pki::new();
    let tls12 = {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read_to_string(&pki.ca_file).expect("ca");
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(cert.expect("pem")).expect("root");
        }
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    };
    let name = || ServerName::try_from("localhost").expect("name");

    let s = tls_server(&pki, |_| {}).await;
    let socket = TcpStream::connect(s.addr()).await.expect("connect");
    assert!(
        tls12.connect(name(), socket).await.is_err(),
        "TLS 1.2 accepted by default"
    );
    let default = handshake(s.addr(), &pki.client(), &[]).await.expect("1.3");
    assert_eq!(
        default.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    // The hybrid post-quantum key exchange, when the client offers it
    // (keycard's own client does).
    assert_eq!(
        default
            .get_ref()
            .1
            .negotiated_key_exchange_group()
            .map(|g| g.name()),
        Some(rustls::NamedGroup::X25519MLKEM768)
    );

    let s = tls_server(&pki, |c| c.tls.min_version = TlsVersion::V12).await;
    let socket = TcpStream::connect(s.addr()).await.expect("connect");
    let old = tls12.connect(name(), socket).await.expect("1.2 allowed");
    let conn = old.get_ref().1;
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    // An ephemeral key exchange and an AEAD.
    let suite = format!(
        "{:?}",
        conn.negotiated_cipher_suite().expect("suite").suite()
    );
    assert!(suite.starts_with("TLS_ECDHE_"), "{suite}");
    assert!(
        suite.contains("GCM") || suite.contains("CHACHA20_POLY1305"),
        "{suite}"
    );
    // And 1.3 still comes first.
    let new = handshake(s.addr(), &pki.client(), &[]).await.expect("1.3");
    assert_eq!(
        new.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn a_reload_swaps_the_certificate_and_keeps_established_connections() {
    let pki = Pki::new();
    let s = tls_server(&pki, |_| {}).await;
    let first = served_cert(s.addr(), &pki.client()).await;
    let c = Client::connect_tls(s.addr(), &pki.client())
        .await
        .expect("client");
    c.set(&p("kept"), Value::from(1)).await.expect("set");

    // A new certificate (serial 2) in the same files, then a reload.
    let second = pki.server_cert(2);
    assert_ne!(first, second.der);
    let fingerprint = s
        .handle
        .state
        .reload_tls(None)
        .await
        .expect("reloads")
        .expect("TLS is on");
    assert_eq!(fingerprint, sha256_hex(&second.der));
    assert_eq!(served_cert(s.addr(), &pki.client()).await, second.der);
    assert_eq!(
        served_cert(s.handle.http_addr.expect("http"), &pki.client()).await,
        second.der,
        "the HTTP listener reloads too"
    );
    // The connection made before the reload still works.
    c.set(&p("kept"), Value::from(2))
        .await
        .expect("still served");

    // A corrupt certificate file: refused, the old one stays.
    std::fs::write(&second.cert, "-----BEGIN CERTIFICATE-----\nnot base64!\n").expect("write");
    let err = s.handle.state.reload_tls(None).await.expect_err("refused");
    assert!(err.contains("server.pem"), "{err}");
    assert_eq!(served_cert(s.addr(), &pki.client()).await, second.der);
    // A key that belongs to another certificate: refused too.
    let third = pki.server_cert(3);
    let other_key = pki.dir.path().join("other.key");
    std::fs::write(
        &other_key,
        rcgen::KeyPair::generate().expect("key").serialize_pem(),
    )
    .expect("write");
    std::fs::copy(&other_key, &third.key).expect("copy");
    let err = s.handle.state.reload_tls(None).await.expect_err("refused");
    assert!(err.contains("does not go with"), "{err}");
    assert_eq!(served_cert(s.addr(), &pki.client()).await, second.der);
    c.set(&p("kept"), Value::from(3))
        .await
        .expect("still served");

    // Both outcomes are audited.
    let log = common::audit_log_with(&s, |l| l.contains("tls reload refused")).await;
    assert!(log.contains("\"tls reloaded\""), "{log}");
}

#[tokio::test]
async fn the_reload_action_needs_super_root() {
    let pki = Pki::new();
    let s = tls_server(&pki, |_| {}).await;
    // Make the server require logins: `_test` current, `root` accepted.
    let admin = Client::connect_tls(s.addr(), &pki.client())
        .await
        .expect("client");
    require_logins(&admin).await;

    let joe = Client::connect_tls(s.addr(), &pki.client())
        .await
        .expect("client");
    let m = keycard_auth::ClientRegistry::make(keycard_auth::TEST, Some("joe")).expect("m");
    joe.login(m.as_ref()).await.expect("login");
    let err = joe
        .request(Msg::new().with("action", "reload"))
        .await
        .expect_err("refused");
    assert_eq!(
        err.code().map(|c| c.as_str()),
        Some("permission_denied"),
        "{err}"
    );

    let root = Client::connect_tls(s.addr(), &pki.client())
        .await
        .expect("client");
    let m = keycard_auth::ClientRegistry::make("root", None).expect("m");
    root.login(m.as_ref()).await.expect("login");
    let second = pki.server_cert(2);
    let r = root
        .request(Msg::new().with("action", "reload"))
        .await
        .expect("reloaded");
    assert_eq!(
        r.get("tls").and_then(Value::as_str),
        Some(sha256_hex(&second.der).as_str())
    );
    assert_eq!(served_cert(s.addr(), &pki.client()).await, second.der);
}

#[tokio::test]
async fn without_tls_a_reload_has_nothing_to_do() {
    let s = start_with(|_| {}).await;
    assert_eq!(s.handle.state.reload_tls(None).await, Ok(None));
    let c = Client::connect(s.addr()).await.expect("client");
    let r = c
        .request(Msg::new().with("action", "reload"))
        .await
        .expect("open server: anyone is super-root");
    assert_eq!(r.get("tls"), Some(&Value::Nil));
}

#[tokio::test]
async fn half_open_and_garbage_handshakes_stall_nobody_and_are_cut() {
    let pki = Pki::new();
    let s = tls_server(&pki, |c| {
        c.max_connections_per_address = 5000;
        c.http_max_connections_per_address = 5000;
    })
    .await;
    // 1000 connections that never finish a handshake: half of them send
    // nothing, half the first bytes of a ClientHello.
    let mut hostile = Vec::new();
    for i in 0..1000 {
        let mut t = TcpStream::connect(s.addr()).await.expect("connect");
        if i % 2 == 1 {
            t.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .await
                .expect("write");
        }
        hostile.push(t);
    }
    // And garbage instead of a ClientHello: closed at once.
    let mut garbage = TcpStream::connect(s.addr()).await.expect("connect");
    garbage
        .write_all(b"\x00\x01\x02 this is not TLS at all \r\n\r\n")
        .await
        .expect("write");
    let (bytes, closed) = read_until_closed(&mut garbage, Duration::from_millis(900)).await;
    assert!(closed, "garbage kept the connection open");
    assert!(!bytes.is_empty(), "rustls answers garbage with an alert");

    // Everyone else is served meanwhile.
    let c = Client::connect_tls(s.addr(), &pki.client())
        .await
        .expect("served beside 1000 half-open handshakes");
    c.set(&p("x"), Value::from(1)).await.expect("set");

    // Past the handshake timeout (1 s) the half-open ones are closed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut open = 0;
    for t in &mut hostile {
        let (_, closed) = read_until_closed(t, Duration::from_millis(500)).await;
        if !closed {
            open += 1;
        }
    }
    assert_eq!(open, 0, "{open} half-open handshakes outlived the timeout");
    c.set(&p("x"), Value::from(2)).await.expect("still served");
}

#[tokio::test]
async fn a_certificate_without_its_key_or_a_bad_file_stops_the_start() {
    let pki = Pki::new();
    let cert = pki.server_cert(1);
    for (certf, keyf, want) in [
        (Some(cert.cert.clone()), None, "without key"),
        (None, Some(cert.key.clone()), "without cert"),
        (
            Some(pki.dir.path().join("missing.pem")),
            Some(cert.key.clone()),
            "missing.pem",
        ),
        (
            Some(cert.key.clone()),
            Some(cert.key.clone()),
            "no certificate",
        ),
        (
            Some(cert.cert.clone()),
            Some(cert.cert.clone()),
            "private key",
        ),
    ] {
        let err = start_error(keycard_server::TlsConfig {
            cert: certf,
            key: keyf,
            ..Default::default()
        })
        .await;
        assert!(err.contains(want), "{want}: {err}");
    }
}

/// Why a server with `tls` does not start.
async fn start_error(tls: keycard_server::TlsConfig) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let config = keycard_server::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data: dir.path().to_path_buf(),
        tls,
        ..Default::default()
    };
    keycard_server::Server::open(config)
        .await
        .err()
        .expect("refused")
        .to_string()
}

fn sha256_hex(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// This machine's address on its default route (no packet is sent): an
/// address beyond loopback that a client here can connect from.
fn non_loopback_ip() -> std::net::IpAddr {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
    probe.connect("192.0.2.1:9").expect("a default route");
    let ip = probe.local_addr().expect("local address").ip();
    assert!(
        !ip.is_loopback(),
        "this test needs an address beyond loopback, and found {ip}"
    );
    ip
}

/// A bearer-token login, and a `password` login, send a secret that logs
/// in by itself: over plaintext they are refused from beyond loopback,
/// before anything is checked; from loopback, over TLS, or with
/// `allow_plaintext_secrets`, they go on. SCRAM sends no such secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_over_plaintext_are_refused_from_beyond_loopback() {
    use common::{code, req, Raw};
    let ip = non_loopback_ip();
    let pki = Pki::new();
    for (tls, allow) in [(false, false), (false, true), (true, false)] {
        let s = start_with(|c| {
            c.listen = "0.0.0.0:0".parse().expect("addr");
            c.allow_plaintext_secrets = allow;
            if tls {
                let cert = pki.server_cert(1);
                c.tls.cert = Some(cert.cert);
                c.tls.key = Some(cert.key);
            }
        })
        .await;
        let port = s.addr().port();
        // Users, logins required, and a token for joe, over loopback.
        let near = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let admin = match tls {
            true => Client::connect_tls(near, &pki.client()).await,
            false => Client::connect(near).await,
        }
        .expect("admin");
        require_logins(&admin).await;
        let m = keycard_auth::ClientRegistry::make("root", None).expect("m");
        admin.login(m.as_ref()).await.expect("root");
        let token = admin
            .request(
                Msg::new()
                    .with("action", "token_create")
                    .with("user", "joe")
                    .with("ttl", 3600),
            )
            .await
            .expect("token")
            .get("token")
            .and_then(Value::as_str)
            .expect("token")
            .to_owned();

        let far = std::net::SocketAddr::new(ip, port);
        if tls {
            // From beyond loopback, over TLS (the client checks the name
            // the certificate carries, 127.0.0.1, not the address).
            let named = pki.client().for_name("127.0.0.1").expect("name");
            let c = Client::connect_tls(far, &named).await.expect("c");
            c.login_token(&token)
                .await
                .expect("over TLS a token is taken");
            continue;
        }
        let token_login = |at| {
            let token = token.clone();
            async move {
                let mut r = Raw::connect(at).await;
                let v = r
                    .call_stream(req(1, "auth").with("typ", "token").with("token", token))
                    .await;
                (r, v)
            }
        };
        let (mut r, v) = token_login(far).await;
        let last = v.last().expect("an answer");
        if allow {
            assert!(v.iter().all(|m| code(m).is_none()), "allowed: {v:?}");
            continue;
        }
        assert_eq!(code(last), Some("auth_method"), "{v:?}");
        let text = last.get("error").and_then(Value::as_str).unwrap_or("");
        assert!(text.contains("allow_plaintext_secrets"), "{text}");
        // A password login is refused the same way; SCRAM-like methods
        // that send no secret are not (the kit's `_test` stands for them).
        let v = r
            .call_stream(req(2, "auth").with("typ", "password").with("ident", "joe"))
            .await;
        let last = v.last().expect("an answer");
        assert_eq!(code(last), Some("auth_method"), "{v:?}");
        let text = last.get("error").and_then(Value::as_str).unwrap_or("");
        assert!(text.contains("not encrypted"), "{text}");
        let v = r
            .call_stream(
                req(3, "auth")
                    .with("typ", keycard_auth::TEST)
                    .with("ident", "joe"),
            )
            .await;
        assert!(v.iter().all(|m| code(m).is_none()), "{v:?}");
        // A `password` factor after a method that sends no secret: the
        // login is refused before the client is asked for the password.
        let pw = keycard_auth::ClientRegistry::make_with_password(
            keycard_auth::PASSWORD,
            Some("joe"),
            Some(keycard_auth::Password::new("joe's password")),
        )
        .expect("password method");
        admin
            .set_user(pw.as_ref())
            .await
            .expect("joe's password record");
        let factors = keycard_proto::Path::new(vec![
            "auth".into(),
            keycard_auth::TEST.into(),
            "user".into(),
            "joe".into(),
            "factors".into(),
        ]);
        admin
            .request(
                Msg::new()
                    .with("action", "set_internal")
                    .with_path("path", &factors)
                    .with(
                        "value",
                        Msg::new()
                            .with("factors", Value::Array(vec![keycard_auth::PASSWORD.into()])),
                    ),
            )
            .await
            .expect("joe's factors");
        let v = r
            .call_stream(
                req(4, "auth")
                    .with("typ", keycard_auth::TEST)
                    .with("ident", "joe"),
            )
            .await;
        assert!(
            v.iter().all(|m| m.get("factor").is_none()),
            "asked for the password over plaintext: {v:?}"
        );
        let last = v.last().expect("an answer");
        assert_eq!(code(last), Some("auth_method"), "{v:?}");
        // From loopback the token is taken.
        let (_, v) = token_login(near).await;
        assert!(v.iter().all(|m| code(m).is_none()), "loopback: {v:?}");
    }
}

/// A server (TLS on if `pki`) with SCRAM user `pat` and scram-sha-256
/// current; returns it and pat's password.
async fn scram_server(pki: Option<&Pki>) -> (TestServer, &'static str) {
    const PW: &str = "pässwörd with spaces";
    let s = match pki {
        Some(pki) => tls_server(pki, |_| {}).await,
        None => start_with(|_| {}).await,
    };
    let admin = match pki {
        Some(pki) => Client::connect_tls(s.addr(), &pki.client()).await,
        None => Client::connect(s.addr()).await,
    }
    .expect("admin");
    let pat = keycard_auth::ScramClient::new("pat", keycard_auth::Password::new(PW));
    admin.set_user(&pat).await.expect("user");
    set_current(&admin, keycard_auth::SCRAM_SHA_256, &[]).await;
    (s, PW)
}

/// SCRAM-SHA-256-PLUS over TLS with keycard's own client: offered in the
/// greeting, logs in bound by `tls-server-end-point` and by
/// `tls-exporter` (RFC 9266; scramp does not offer it), refuses binding
/// data from another connection (a man in the middle's) and the `y,,`
/// downgrade; over plaintext it is not offered and `p=` is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_plus_binds_the_login_to_the_tls_connection() {
    use keycard_auth::{Password, ScramClient, SCRAM_SHA_256, SCRAM_SHA_256_PLUS};
    let pki = Pki::new();
    let (s, pw) = scram_server(Some(&pki)).await;
    let bound = |kind: &str, data: &[u8]| {
        let mut c = ScramClient::new("pat", Password::new(pw));
        c.channel_binding = Some((kind.to_owned(), data.to_vec()));
        c
    };
    for kind in ["tls-server-end-point", "tls-exporter"] {
        let c = Client::connect_tls(s.addr(), &pki.client())
            .await
            .expect("client");
        assert!(
            c.greeting().offers(SCRAM_SHA_256_PLUS),
            "{:?}",
            c.greeting().auth
        );
        let data = c
            .channel_binding()
            .and_then(|b| b.get(kind))
            .expect("the client sees binding data")
            .to_vec();
        c.login(&bound(kind, &data)).await.expect("a bound login");
        let who = c
            .request(Msg::new().with("action", "whoami"))
            .await
            .expect("whoami");
        assert_eq!(who.get("user").and_then(Value::as_str), Some("pat"));
        // The keycard is the method's: its records, its bindings.
        assert_eq!(
            who.get("method").and_then(Value::as_str),
            Some(SCRAM_SHA_256)
        );

        // Another connection's data (what a man in the middle, holding
        // another certificate or TLS session, would present): refused.
        let c = Client::connect_tls(s.addr(), &pki.client())
            .await
            .expect("client");
        let mut other = data.clone();
        other[0] ^= 1;
        let err = c.login(&bound(kind, &other)).await.expect_err("refused");
        assert!(err.to_string().contains("does not match"), "{err}");
    }
    // The end point is the certificate's SHA-256 (ECDSA with SHA-256).
    let c = Client::connect_tls(s.addr(), &pki.client())
        .await
        .expect("client");
    let leaf = served_cert(s.addr(), &pki.client()).await;
    assert_eq!(
        c.channel_binding()
            .and_then(|b| b.get("tls-server-end-point")),
        Some(sha2_256(&leaf).as_slice())
    );
    // `y,,` to a server that offers -plus: a downgrade, refused.
    let err = c
        .request(
            Msg::new()
                .with("action", "auth")
                .with("typ", SCRAM_SHA_256)
                .with("ident", "pat")
                .with("data", "y,,n=pat,r=abcdefghijkl"),
        )
        .await
        .expect_err("downgrade");
    assert!(err.to_string().contains("removed"), "{err}");
    // The plain method still logs in (`n,,`: a client without binding).
    let plain = ScramClient::new("pat", Password::new(pw));
    c.login(&plain).await.expect("n,, over TLS");

    // Over plaintext: no -plus offered, and `p=` refused.
    let (s, _) = scram_server(None).await;
    let c = Client::connect(s.addr()).await.expect("client");
    assert!(
        !c.greeting().offers(SCRAM_SHA_256_PLUS),
        "{:?}",
        c.greeting().auth
    );
    let err = c
        .login(&bound("tls-exporter", &[0; 32]))
        .await
        .expect_err("no TLS");
    assert!(err.to_string().contains("needs a TLS connection"), "{err}");
}

fn sha2_256(der: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(der).to_vec()
}

/// keycard's REST client over HTTPS: a SCRAM login bound to the
/// connection (`-plus`, also when each request takes a new connection),
/// a signed write and read on one kept-alive TLS connection; `y,,` and
/// another certificate's binding data refused; a client that does not
/// trust the server's CA gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_client_over_https() {
    use keycard_client::rest::{Login, RestClient};
    let pki = Pki::new();
    let (s, pw) = scram_server(Some(&pki)).await;
    let http = s.handle.http_addr.expect("http").to_string();
    let rest =
        RestClient::new(http.clone()).with_tls(pki.client().for_name("127.0.0.1").expect("n"));
    let pw = || keycard_auth::Password::new(pw);
    // The client binds the login to the connection when the index offers
    // -plus, as it does over HTTPS.
    let login = rest.scram("pat", pw()).await.expect("a login");
    assert_eq!(login.method(), keycard_auth::SCRAM_SHA_256_PLUS);
    let session = rest.login(login).await.expect("a bound login over HTTPS");
    // Bound by the certificate's hash, so a login whose requests each take
    // a new connection binds too.
    let one_shot = RestClient::connection_per_request(http.clone())
        .with_tls(pki.client().for_name("127.0.0.1").expect("n"));
    let login = one_shot.scram("pat", pw()).await.expect("a login");
    one_shot
        .login(login)
        .await
        .expect("bound over new connections");
    // A client that could bind and says so (y,,) to a server offering
    // -plus: someone hid it, and the login is refused.
    let hidden = rest
        .login(Login::scram_unoffered("pat", pw()).expect("first"))
        .await;
    assert!(hidden.is_err(), "y,, against a -plus server");
    // Binding data of another certificate (a man in the middle's) fails.
    let mitm = keycard_auth::ChannelBinding {
        tls_server_end_point: Some(sha2_256(&Pki::new().server_cert(2).der)),
        tls_exporter: None,
    };
    let relayed = rest
        .login(Login::scram_plus("pat", pw(), &mitm).expect("first"))
        .await;
    assert!(relayed.is_err(), "another certificate's binding data");
    let at = p("over.https");
    rest.put(
        Some(&session),
        &at,
        &serde_json::json!("yes"),
        Default::default(),
    )
    .await
    .expect("signed write");
    let got = rest
        .get(Some(&session), &at)
        .await
        .expect("read")
        .expect("a value");
    assert_eq!(got.value, serde_json::json!("yes"));
    // Plain HTTP to the HTTPS listener, or another CA: no answer.
    assert!(RestClient::new(http.clone()).index().await.is_err());
    let stranger = RestClient::new(http).with_tls(Pki::new().client());
    assert!(stranger.index().await.is_err());
}

/// `[tls] client_ca`: clients are asked for a certificate signed by it.
/// With `require_client_cert`, a client without one or with one from
/// another CA is refused at the handshake; without it both are served
/// (such a certificate logs nobody in: see the `cert` tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_asked_for_and_checked() {
    let pki = Pki::new();
    let (cert, key) = pki.client_cert("pat");
    let stranger = Pki::new();
    let (other_cert, other_key) = stranger.client_cert("pat");
    let with = pki
        .client()
        .with_client_cert(&cert, &key)
        .expect("identity");
    let forged = pki
        .client()
        .with_client_cert(&other_cert, &other_key)
        .expect("identity");
    for require in [false, true] {
        let s = tls_server(&pki, |c| {
            c.tls.client_ca = Some(pki.ca_file.clone());
            c.tls.require_client_cert = require;
        })
        .await;
        let c = Client::connect_tls(s.addr(), &with)
            .await
            .expect("a good client certificate is served");
        c.set(&p("x"), Value::from(1)).await.expect("served");
        let forged_conn = Client::connect_tls(s.addr(), &forged).await;
        assert_eq!(
            forged_conn.is_ok(),
            !require,
            "a certificate from another CA, require_client_cert = {require}"
        );
        let without = Client::connect_tls(s.addr(), &pki.client()).await;
        assert_eq!(without.is_ok(), !require, "require_client_cert = {require}");
    }
    // require_client_cert without client_ca is a configuration error.
    let server_cert = pki.server_cert(1);
    let err = start_error(keycard_server::TlsConfig {
        cert: Some(server_cert.cert),
        key: Some(server_cert.key),
        require_client_cert: true,
        ..Default::default()
    })
    .await;
    assert!(err.contains("needs client_ca"), "{err}");
}

/// `[tls] client_crl`: a client certificate the CA's revocation list names
/// is refused at the handshake, others are served; a new list is read on
/// a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_client_certificates_are_refused_and_the_list_reloads() {
    let pki = Pki::new();
    let (pat_cert, pat_key) = pki.client_cert_serial("pat", 7);
    let (ann_cert, ann_key) = pki.client_cert_serial("ann", 8);
    let pat = pki
        .client()
        .with_client_cert(&pat_cert, &pat_key)
        .expect("pat");
    let ann = pki
        .client()
        .with_client_cert(&ann_cert, &ann_key)
        .expect("ann");
    let crl = pki.crl(&[7]);
    let s = tls_server(&pki, |c| {
        c.tls.client_ca = Some(pki.ca_file.clone());
        c.tls.require_client_cert = true;
        c.tls.client_crl = Some(crl.clone());
    })
    .await;
    assert!(
        Client::connect_tls(s.addr(), &pat).await.is_err(),
        "pat is revoked"
    );
    Client::connect_tls(s.addr(), &ann)
        .await
        .expect("ann is not");
    // A new list that revokes nobody, read on a reload.
    pki.crl(&[]);
    s.handle.state.reload_tls(None).await.expect("reloads");
    Client::connect_tls(s.addr(), &pat)
        .await
        .expect("pat after the new list");
    // A corrupt list is refused and the old one stays.
    std::fs::write(&crl, "-----BEGIN X509 CRL-----\nnot base64\n").expect("write");
    assert!(s.handle.state.reload_tls(None).await.is_err());
    Client::connect_tls(s.addr(), &pat)
        .await
        .expect("the old list stays");
    // A list without client_ca is a configuration error.
    let err = start_error(keycard_server::TlsConfig {
        cert: Some(pki.server_cert(1).cert),
        key: Some(pki.dir.path().join("server.key")),
        client_crl: Some(crl),
        ..Default::default()
    })
    .await;
    assert!(err.contains("needs client_ca"), "{err}");
}

/// A server with TLS, client certificates asked for (not required) from
/// `pki`'s CA with `crl`, users `root` and the `cert` users `names`, and
/// `cert` the current method (`root` accepted).
async fn cert_server(
    pki: &Pki,
    tweak: impl FnOnce(&mut keycard_server::Config),
    names: &[&str],
) -> TestServer {
    let s = tls_server(pki, |c| {
        c.tls.client_ca = Some(pki.ca_file.clone());
        tweak(c);
    })
    .await;
    let admin = Client::connect_tls(s.addr(), &pki.client())
        .await
        .expect("admin");
    let root = keycard_auth::ClientRegistry::make("root", None).expect("root");
    admin.set_user(root.as_ref()).await.expect("root user");
    for name in names {
        let m = keycard_auth::ClientRegistry::make(keycard_auth::CERT, Some(name)).expect("cert");
        admin.set_user(m.as_ref()).await.expect("cert user");
    }
    set_current(&admin, keycard_auth::CERT, &["root"]).await;
    s
}

/// A `cert` login as `user` on a new connection presenting `identity`.
async fn cert_login(s: &TestServer, identity: &ClientTls, user: &str) -> Result<Client, String> {
    let c = Client::connect_tls(s.addr(), identity)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let m = keycard_auth::NameClient::new(keycard_auth::CERT, user);
    match c.login(&m).await {
        Ok(()) => Ok(c),
        Err(e) => Err(e.to_string()),
    }
}

/// The `cert` method: a good certificate naming a user with a `cert`
/// record logs in (its keycard ending no later than the certificate);
/// an unknown user, an expired certificate, one from another CA and a
/// revoked one are refused exactly alike, each with one audit event that
/// says why; a certificate never logs in a name it does not hold, and a
/// connection without one logs nobody in with `cert`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_logins_need_a_good_certificate_and_a_record() {
    let pki = Pki::new();
    let stranger = Pki::new();
    let now = time::OffsetDateTime::now_utc();
    let soon = now + time::Duration::hours(2);
    let ids = |(c, k): (std::path::PathBuf, std::path::PathBuf)| {
        pki.client().with_client_cert(&c, &k).expect("identity")
    };
    let pat = ids(pki.client_cert_until("pat", 1, Some(soon)));
    let zed = ids(pki.client_cert_serial("zed", 2));
    let old = ids(pki.client_cert_until("old", 3, Some(now - time::Duration::days(1))));
    let eve = ids(stranger.client_cert_serial("eve", 4));
    let rev = ids(pki.client_cert_serial("rev", 5));
    // A certificate not meant for client authentication: no extended key
    // usage at all.
    let any = {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["any".to_owned()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "any");
        let cert = params.signed_by(&key, pki.issuer()).expect("sign");
        let (c, k) = (
            pki.dir.path().join("any.pem"),
            pki.dir.path().join("any.key"),
        );
        std::fs::write(&c, cert.pem()).expect("cert");
        std::fs::write(&k, key.serialize_pem()).expect("key");
        ids((c, k))
    };
    let crl = pki.crl(&[5]);
    let s = cert_server(
        &pki,
        |c| c.tls.client_crl = Some(crl),
        &["pat", "old", "eve", "rev", "ann", "any"],
    )
    .await;
    // auth_methods answers a cert user as it answers a stranger: the
    // method's refusals say nothing of the name, and neither may this.
    let probe = Client::connect_tls(s.addr(), &pki.client())
        .await
        .expect("probe");
    for stranger in ["nobody", "zed", "x1", "x2"] {
        assert_eq!(
            probe.auth_methods(stranger).await.expect("stranger"),
            probe.auth_methods("pat").await.expect("pat"),
        );
    }

    // The greeting offers it; the good certificate logs pat in.
    let c = cert_login(&s, &pat, "pat").await.expect("pat logs in");
    assert!(c.greeting().offers(keycard_auth::CERT));
    let who = c
        .request(Msg::new().with("action", "whoami"))
        .await
        .expect("whoami");
    assert_eq!(who.get("user").and_then(Value::as_str), Some("pat"));
    assert_eq!(
        who.get("method").and_then(Value::as_str),
        Some(keycard_auth::CERT)
    );
    let expires = who.get("expires_at").and_then(Value::as_u64).expect("exp");
    let cert_end = (soon.unix_timestamp() as u64) * 1000;
    assert!(
        expires <= cert_end && expires + 120_000 > cert_end,
        "the keycard ends with the certificate: {expires} vs {cert_end}"
    );
    c.set(&p("x"), Value::from(1)).await.expect("served");

    // Every refusal, to the client, is the same.
    let cases = [
        ("zed", &zed, "no cert record"),
        ("old", &old, "expired"),
        // The stranger's CA carries our CA's very name: the chain is
        // found, and fails on its signature.
        ("eve", &eve, "BadSignature"),
        ("rev", &rev, "Revoked"),
        ("any", &any, "no extended key usage"),
        // pat's certificate does not name ann, who has a record.
        ("ann", &pat, "does not name this user"),
        // Without a certificate, nobody.
        ("pat", &pki.client(), "no client certificate"),
    ];
    let mut refusals = Vec::new();
    for (user, identity, _) in &cases {
        let e = cert_login(&s, identity, user)
            .await
            .err()
            .unwrap_or_else(|| panic!("{user} must be refused"));
        refusals.push(e);
    }
    assert!(
        refusals.iter().all(|r| r == &refusals[0]),
        "identical refusals: {refusals:?}"
    );
    assert!(refusals[0].contains("login failed"), "{refusals:?}");

    // One audit event each, with the reason the client was not told.
    let log = audit_log_with(&s, |l| {
        l.lines().filter(|x| x.contains("\"failure\"")).count() >= cases.len()
    })
    .await;
    let events: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("\"method\":\"{}\"", keycard_auth::CERT)))
        .collect();
    assert_eq!(
        events.iter().filter(|l| l.contains("\"success\"")).count(),
        1,
        "{log}"
    );
    for (user, _, why) in &cases {
        let theirs: Vec<&&str> = events
            .iter()
            .filter(|l| l.contains(&format!("\"user\":\"{user}\"")) && l.contains("\"failure\""))
            .filter(|l| l.contains(why))
            .collect();
        assert_eq!(theirs.len(), 1, "{user}: one event saying {why:?}:\n{log}");
    }
}

/// A certificate's names: the CN by default, or its DNS or URI subject
/// alternative names when configured; a required client certificate
/// that fails is refused at the handshake, and a certificate revoked
/// after its connection was made cannot log in once the new list is
/// read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_names_come_from_the_configured_field_and_revocation_applies_at_login() {
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};
    let pki = Pki::new();
    // CN "svc", a DNS SAN "svc.example" and a URI SAN (a SPIFFE id).
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["svc.example".to_owned()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, "svc");
    params
        .subject_alt_names
        .push(SanType::URI("spiffe://acme/svc".try_into().expect("uri")));
    params.serial_number = Some(rcgen::SerialNumber::from(9u64));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, pki.issuer()).expect("sign");
    let cert_file = pki.dir.path().join("svc.pem");
    let key_file = pki.dir.path().join("svc.key");
    std::fs::write(&cert_file, cert.pem()).expect("cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("key");
    let svc = pki
        .client()
        .with_client_cert(&cert_file, &key_file)
        .expect("identity");
    let names = ["svc", "svc.example", "spiffe://acme/svc"];
    for (kind, good) in [
        (keycard_server::ClientName::Cn, "svc"),
        (keycard_server::ClientName::Dns, "svc.example"),
        (keycard_server::ClientName::Uri, "spiffe://acme/svc"),
    ] {
        let crl = pki.crl(&[]);
        let s = tls_server(&pki, |c| {
            c.tls.client_ca = Some(pki.ca_file.clone());
            c.tls.client_crl = Some(crl.clone());
            c.tls.client_cert_name = kind;
        })
        .await;
        let admin = Client::connect_tls(s.addr(), &pki.client())
            .await
            .expect("admin");
        for n in names {
            let m = keycard_auth::ClientRegistry::make(keycard_auth::CERT, Some(n)).expect("m");
            admin.set_user(m.as_ref()).await.expect("user");
        }
        set_current(&admin, keycard_auth::CERT, &[]).await;
        for n in names {
            let got = cert_login(&s, &svc, n).await.map(|_| ());
            assert_eq!(got.is_ok(), n == good, "{kind:?} logs in {n}: {got:?}");
        }
        // Revoked after the connection was made: the login reads the
        // list in use when it runs.
        let early = Client::connect_tls(s.addr(), &svc).await.expect("connect");
        pki.crl(&[9]);
        s.handle.state.reload_tls(None).await.expect("reload");
        let m = keycard_auth::NameClient::new(keycard_auth::CERT, good);
        assert!(early.login(&m).await.is_err(), "{kind:?}: revoked");
    }
    // Required: a revoked certificate does not even finish its handshake.
    let s = tls_server(&pki, |c| {
        c.tls.client_ca = Some(pki.ca_file.clone());
        c.tls.client_crl = Some(pki.crl(&[9]));
        c.tls.require_client_cert = true;
    })
    .await;
    assert!(Client::connect_tls(s.addr(), &svc).await.is_err());
}

/// `cert` logins are throttled like any other: a certificate that keeps
/// failing for a user is refused outright, audited as throttled, while
/// another user is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_cert_logins_are_throttled() {
    let pki = Pki::new();
    let (c, k) = pki.client_cert("pat");
    let pat = pki.client().with_client_cert(&c, &k).expect("identity");
    let s = cert_server(
        &pki,
        |c| {
            c.throttle = keycard_server::ThrottleConfig {
                free: 1,
                escalate: 1,
                base_delay_secs: 1,
                max_delay_secs: 1,
                ..keycard_server::ThrottleConfig::default()
            };
        },
        &["pat", "ann"],
    )
    .await;
    let mut throttled = None;
    for _ in 0..6 {
        let c = Client::connect_tls(s.addr(), &pat).await.expect("connect");
        let m = keycard_auth::NameClient::new(keycard_auth::CERT, "ann");
        let e = c
            .login(&m)
            .await
            .expect_err("pat's certificate is not ann's");
        if e.code() == Some(keycard_proto::ErrorCode::Throttled) {
            throttled = Some(e);
            break;
        }
        assert_eq!(e.code(), Some(keycard_proto::ErrorCode::AuthFailed), "{e}");
    }
    assert!(throttled.is_some(), "throttled after repeated failures");
    cert_login(&s, &pat, "pat")
        .await
        .expect("pat is not affected");
    let log = audit_log_with(&s, |l| l.contains("\"throttled\"")).await;
    assert!(
        log.lines()
            .any(|l| l.contains("\"throttled\"") && l.contains("\"user\":\"ann\"")),
        "{log}"
    );
}

/// A reload that reads a revocation list naming a certificate ends the
/// keycards logged in with it (audited with the reason), and only those;
/// a session of a certificate login cannot issue tokens (they would
/// outlive such a revocation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_ends_the_keycards_of_newly_revoked_certificates() {
    let pki = Pki::new();
    let ids = |(c, k): (std::path::PathBuf, std::path::PathBuf)| {
        pki.client().with_client_cert(&c, &k).expect("identity")
    };
    let pat = ids(pki.client_cert_serial("pat", 7));
    let ann = ids(pki.client_cert_serial("ann", 8));
    let crl = pki.crl(&[]);
    let s = tls_server(&pki, |c| {
        c.tls.client_ca = Some(pki.ca_file.clone());
        c.tls.client_crl = Some(crl);
    })
    .await;
    let admin = Client::connect_tls(s.addr(), &pki.client())
        .await
        .expect("admin");
    for name in ["pat", "ann"] {
        let m = keycard_auth::ClientRegistry::make(keycard_auth::CERT, Some(name)).expect("m");
        admin.set_user(m.as_ref()).await.expect("cert user");
    }
    // ann manages keycards (so only the certificate rule keeps her from
    // minting tokens).
    admin
        .request(
            Msg::new()
                .with("action", "set_internal")
                .with_path("path", &p("auth.cert.user.ann.caps"))
                .with(
                    "value",
                    Msg::new()
                        .with("caps", Value::Array(vec!["manage_keycards".into()]))
                        .into_value(),
                ),
        )
        .await
        .expect("caps");
    set_current(&admin, keycard_auth::CERT, &[]).await;
    let pat_conn = cert_login(&s, &pat, "pat").await.expect("pat");
    let ann_conn = cert_login(&s, &ann, "ann").await.expect("ann");
    pat_conn.set(&p("a"), Value::from(1)).await.expect("served");
    // pat's certificate is revoked; the reload reads the new list.
    pki.crl(&[7]);
    s.handle.state.reload_tls(None).await.expect("reload");
    let mut ended = false;
    for _ in 0..100 {
        if pat_conn.set(&p("a"), Value::from(2)).await.is_err() {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ended, "pat's keycard ends");
    ann_conn
        .set(&p("b"), Value::from(1))
        .await
        .expect("ann's goes on");
    let log = audit_log_with(&s, |l| l.contains("client certificate refused")).await;
    let revoked: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("revoked: client certificate refused"))
        .collect();
    assert_eq!(revoked.len(), 1, "{log}");
    assert!(revoked[0].contains("\"user\":\"pat\""), "{log}");
    // A certificate session may not mint tokens.
    let e = ann_conn
        .request(
            Msg::new()
                .with("action", "token_create")
                .with("user", "ann"),
        )
        .await
        .expect_err("refused");
    assert_eq!(
        e.code(),
        Some(keycard_proto::ErrorCode::PermissionDenied),
        "{e}"
    );
    assert!(e.to_string().contains("client certificate"), "{e}");
}

/// A certificate logs in a domain's user only when it names the user
/// with the domain (`NAME@DOMAIN`): one issued for the server's `deploy`
/// does not log in the domain's `deploy`, nor the reverse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_login_needs_the_name_with_its_domain() {
    let pki = Pki::new();
    let ids = |(c, k): (std::path::PathBuf, std::path::PathBuf)| {
        pki.client().with_client_cert(&c, &k).expect("identity")
    };
    let plain = ids(pki.client_cert_serial("deploy", 1));
    let scoped = ids(pki.client_cert_serial("deploy@org.acme", 2));
    let s = tls_server(&pki, |c| c.tls.client_ca = Some(pki.ca_file.clone())).await;
    let cert_user =
        || keycard_auth::ClientRegistry::make(keycard_auth::CERT, Some("deploy")).expect("m");
    // The domain: its own `cert` user deploy, `cert` current.
    let d = Client::connect_tls(s.addr(), &pki.client())
        .await
        .expect("d");
    d.request(
        Msg::new()
            .with("action", "root")
            .with_path("path", &p("org.acme")),
    )
    .await
    .expect("re-rooted");
    d.set_user(cert_user().as_ref()).await.expect("domain user");
    set_current(&d, keycard_auth::CERT, &[]).await;
    // The server's own deploy, `cert` current.
    let admin = Client::connect_tls(s.addr(), &pki.client())
        .await
        .expect("admin");
    admin.set_user(cert_user().as_ref()).await.expect("user");
    set_current(&admin, keycard_auth::CERT, &[]).await;
    let login = |identity: &ClientTls, domain: bool| {
        let identity = identity.clone();
        let addr = s.addr();
        async move {
            let c = Client::connect_tls(addr, &identity).await.expect("connect");
            let mut m = Msg::new()
                .with("action", "auth")
                .with("typ", keycard_auth::CERT)
                .with("ident", "deploy");
            if domain {
                m = m.with_path("chroot", &p("org.acme"));
            }
            c.request(m).await.map(|_| ())
        }
    };
    assert!(login(&plain, false).await.is_ok(), "the server's deploy");
    assert!(login(&plain, true).await.is_err(), "not the domain's");
    assert!(login(&scoped, true).await.is_ok(), "the domain's deploy");
    assert!(login(&scoped, false).await.is_err(), "not the server's");
}

/// Over plaintext a `cert` login can only fail, like any other refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cert_login_over_plaintext_is_refused_like_any_other() {
    let s = start_with(|_| {}).await;
    let admin = Client::connect(s.addr()).await.expect("admin");
    let m = keycard_auth::ClientRegistry::make(keycard_auth::CERT, Some("pat")).expect("m");
    admin.set_user(m.as_ref()).await.expect("user");
    set_current(&admin, keycard_auth::CERT, &[]).await;
    let c = Client::connect(s.addr()).await.expect("connect");
    let e = c.login(m.as_ref()).await.expect_err("refused");
    assert_eq!(e.code(), Some(keycard_proto::ErrorCode::AuthFailed), "{e}");
    let log = audit_log_with(&s, |l| l.contains("no client certificate")).await;
    assert!(log.contains("\"user\":\"pat\""), "{log}");
}
