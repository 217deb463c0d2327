//! REST test kit: raw HTTP/1.1 requests, a server with the HTTP listener
//! and two SCRAM users (alice with full access, bob reading `app` only),
//! a REST SCRAM login with keycard's own client half, and signing.

use std::collections::HashMap;
use std::net::SocketAddr;

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use base64::Engine as _;
use keycard_auth::signed::{self, Request, Version};
use keycard_auth::{
    client_session_key, ClientMethod, Exchange, OpaqueLogin, Password, ScramClient, SecretKey, Step,
};
use keycard_client::Client;
use keycard_proto::{Msg, Value};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{start_with, TestServer};

pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: serde_json::Value,
}

/// One HTTP/1.1 request on its own connection.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<String>,
    body: &[u8],
) -> Reply {
    http_with(addr, method, path, auth, &[], body).await
}

/// [`http`] with extra headers.
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<String>,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: keycard\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(a) = auth {
        head.push_str(&format!("authorization: {a}\r\n"));
    }
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn server() -> (TestServer, SocketAddr) {
    server_with(|_| {}).await
}

/// [`server`], configured further by `tweak`.
pub async fn server_with(
    tweak: impl FnOnce(&mut keycard_server::Config),
) -> (TestServer, SocketAddr) {
    let s = start_with(|c| {
        c.http = Some("127.0.0.1:0".parse().expect("addr"));
        tweak(c);
    })
    .await;
    let c = Client::connect(s.addr()).await.expect("connect");
    c.set_user(&ScramClient::new("alice", Password::new("correct horse")))
        .await
        .expect("alice");
    // bob may only read app.
    c.set_user(&ScramClient::new("bob", Password::new("bobs pw")))
        .await
        .expect("bob");
    for (path, v) in [
        ("acl.ro.app.#", Value::from("rx")),
        ("acl.ro.app", Value::from("x")),
        (
            "auth.scram-sha-256.user.bob.acl",
            Msg::new().with("key", "ro").into_value(),
        ),
    ] {
        c.request(
            Msg::new()
                .with("action", "set_internal")
                .with_path("path", &keycard_proto::Path::parse(path).expect("p"))
                .with("value", v),
        )
        .await
        .expect("acl");
    }
    c.request(
        Msg::new()
            .with("action", "set_auth_typ")
            .with("typ", "scram-sha-256"),
    )
    .await
    .expect("current");
    let http_addr = s.handle.http_addr.expect("http listener");
    (s, http_addr)
}

/// A REST session: its id and key.
pub struct Session {
    pub sid: String,
    pub key: SecretKey,
}

/// The first half of a REST SCRAM login, done: the session id, the
/// messages so far, and the client's exchange, which checks the server's
/// final message.
pub struct ScramStart {
    pub sid: String,
    pub first: String,
    pub server_first: String,
    pub client_final: String,
    pub next: Box<dyn Exchange<()>>,
}

/// `POST /session/new` with SCRAM's client-first, and the client-final
/// message computed; or the failing reply.
pub async fn scram_begin(addr: SocketAddr, user: &str, pw: &str) -> Result<ScramStart, Reply> {
    let client = ScramClient::new(user, Password::new(pw));
    let start = client.login(None);
    let first = start
        .request
        .clone()
        .into_value()
        .get("data")
        .and_then(Value::as_str)
        .expect("client-first")
        .to_owned();
    let r = http(
        addr,
        "POST",
        "/session/new",
        None,
        json!({"method": "scram-sha-256", "user": user, "data": first})
            .to_string()
            .as_bytes(),
    )
    .await;
    if r.status != 201 {
        return Err(r);
    }
    let sid = r.body["sid"].as_str().expect("sid").to_owned();
    let server_first = r.body["data"].as_str().expect("server-first").to_owned();
    let Some(exchange) = start.exchange else {
        panic!("SCRAM has an exchange")
    };
    let Step::Send(fin, next) =
        exchange.next(&Msg::new().with("data", server_first.as_str()).into_value())
    else {
        panic!("client-final expected")
    };
    let client_final = fin
        .into_value()
        .get("data")
        .and_then(Value::as_str)
        .expect("client-final")
        .to_owned();
    Ok(ScramStart {
        sid,
        first,
        server_first,
        client_final,
        next,
    })
}

/// Logs in over REST as the client half of SCRAM does, checking the
/// server's signature; returns the session, or the failing reply.
pub async fn login(addr: SocketAddr, user: &str, pw: &str) -> Result<Session, Reply> {
    let ScramStart {
        sid,
        first,
        server_first,
        client_final,
        next,
    } = scram_begin(addr, user, pw).await?;
    let r = http(
        addr,
        "PUT",
        &format!("/session/{sid}"),
        None,
        json!({"data": client_final}).to_string().as_bytes(),
    )
    .await;
    if r.status != 303 {
        return Err(r);
    }
    assert_eq!(
        r.headers.get("location").map(String::as_str),
        Some(format!("/session/{sid}").as_str())
    );
    let server_final = r.body["data"].as_str().expect("server-final").to_owned();
    assert!(
        matches!(
            next.next(&Msg::new().with("data", server_final.as_str()).into_value()),
            Step::Done(())
        ),
        "the server proved it knows the verifier"
    );
    // K, as DESIGN §4.1 says.
    let bare = first.trim_start_matches("n,,");
    let without_proof = client_final.split(",p=").next().expect("c-f");
    let attr = |k: &str| {
        server_first
            .split(',')
            .find_map(|a| a.strip_prefix(k))
            .expect("attribute")
            .to_owned()
    };
    let salt = B64.decode(attr("s=")).expect("salt");
    let iterations = attr("i=").parse().expect("i");
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let key =
        client_session_key(&Password::new(pw), &salt, iterations, &auth_message).expect("key");
    Ok(Session { sid, key })
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A v2 `Authorization` for a request without preconditions.
pub fn sign(s: &Session, method: &str, path: &str, body: &[u8], ts: u64) -> String {
    sign_with(s, Version::V2, method, path, body, &[], ts)
}

/// An `Authorization` of `version` for a request with the `extra` headers
/// (their `If-Match` and `If-None-Match` signed, in v2).
pub fn sign_with(
    s: &Session,
    version: Version,
    method: &str,
    path: &str,
    body: &[u8],
    extra: &[(&str, &str)],
    ts: u64,
) -> String {
    let nonce: [u8; 16] = rand::random();
    let header = |name: &str| {
        extra
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.trim())
    };
    let req = Request {
        method,
        path,
        query: "",
        body,
        if_match: header("if-match"),
        if_none_match: header("if-none-match"),
    };
    signed::sign_version(version, &s.key, &req, &s.sid, ts, nonce).to_header()
}

/// A signed request (v2) with the `extra` headers.
pub async fn kv(
    addr: SocketAddr,
    s: &Session,
    method: &str,
    path: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> Reply {
    let auth = sign_with(s, Version::V2, method, path, body, extra, now());
    http_with(addr, method, path, Some(auth), extra, body).await
}

/// An OPAQUE login over REST: the session, or `None` if KE2 did not open.
pub async fn opaque_login(addr: SocketAddr, user: &str, pw: &str) -> Option<Session> {
    let (client, ke1) = OpaqueLogin::start(&Password::new(pw)).expect("start");
    let body = json!({"method": "opaque", "user": user, "data": URL_SAFE_NO_PAD.encode(ke1)});
    let r = http(
        addr,
        "POST",
        "/session/new",
        None,
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let sid = r.body["sid"].as_str().expect("sid").to_owned();
    let ke2 = URL_SAFE_NO_PAD
        .decode(r.body["data"].as_str().expect("KE2"))
        .expect("b64");
    let (ke3, key) = client.finish(&ke2).ok()?;
    let body = json!({"data": URL_SAFE_NO_PAD.encode(ke3)});
    let r = http(
        addr,
        "PUT",
        &format!("/session/{sid}"),
        None,
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    Some(Session { sid, key })
}
