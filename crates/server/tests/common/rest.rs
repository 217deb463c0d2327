//! REST test kit: a server with the HTTP listener and two SCRAM users
//! (alice with full access, bob reading `app` only), and thin helpers over
//! `keycard_client::rest` (the login, signing, one request per
//! connection) that answer with a [`Reply`] whatever the status. Tests
//! that send malformed or hostile requests build them by hand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use keycard_auth::signed::Version;
use keycard_auth::{Password, ScramClient};
use keycard_client::rest::{Challenged, Login, Response, RestClient, RestError};
use keycard_client::Client;
use keycard_proto::{Msg, Value};

use keycard_server::{Clock, ManualClock};

use super::{start_with, TestServer};

pub use keycard_client::rest::Session;

pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: serde_json::Value,
}

impl From<&Response> for Reply {
    fn from(r: &Response) -> Reply {
        Reply {
            status: r.status,
            headers: r
                .headers()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
                .collect(),
            body: serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// A client of the server at `addr` that opens a connection per request.
fn client(addr: SocketAddr) -> RestClient {
    RestClient::connection_per_request(addr.to_string())
}

/// A failed login's answer; any other failure is the test's.
fn refused(e: RestError) -> Reply {
    match e {
        RestError::Status { response, .. } => Reply::from(&*response),
        other => panic!("REST login: {other}"),
    }
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
    let mut fields = Vec::with_capacity(extra.len() + 1);
    if let Some(a) = &auth {
        fields.push(("authorization", a.as_str()));
    }
    fields.extend_from_slice(extra);
    let r = client(addr)
        .send(method, path, &fields, body)
        .await
        .expect("a response");
    Reply::from(&r)
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
            .with("typ", keycard_auth::SCRAM_SHA_256),
    )
    .await
    .expect("current");
    let http_addr = s.handle.http_addr.expect("http listener");
    (s, http_addr)
}

/// [`server_with`] on a manual clock: sign with [`kv_on`] (the clock's
/// time), since a signature's `ts` must be near the server's clock.
pub async fn server_with_clock(
    tweak: impl FnOnce(&mut keycard_server::Config),
) -> (TestServer, SocketAddr, Arc<ManualClock>) {
    let mut clock = None;
    let (s, addr) = server_with(|c| {
        clock = Some(super::manual_clock(c));
        tweak(c);
    })
    .await;
    (s, addr, clock.expect("clock"))
}

/// The first half of a REST SCRAM login, done: the session id, the
/// client-final message, and what finishes the login.
pub struct ScramStart {
    pub sid: String,
    pub client_final: String,
    pub challenged: Challenged,
}

/// `POST /session/new` with SCRAM's client-first, and the client-final
/// message computed; or the failing reply.
pub async fn scram_begin(addr: SocketAddr, user: &str, pw: &str) -> Result<ScramStart, Reply> {
    let login = Login::scram(user, Password::new(pw)).expect("client-first");
    let challenged = client(addr).begin(login).await.map_err(refused)?;
    Ok(ScramStart {
        sid: challenged.sid().to_owned(),
        client_final: challenged.proof().to_owned(),
        challenged,
    })
}

/// Logs in over REST as the client half of SCRAM does, checking the
/// server's signature; returns the session, or the failing reply.
pub async fn login(addr: SocketAddr, user: &str, pw: &str) -> Result<Session, Reply> {
    let start = scram_begin(addr, user, pw).await?;
    client(addr).prove(start.challenged).await.map_err(refused)
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
    let header = |name: &str| {
        extra
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.trim())
    };
    s.authorization_version(
        version,
        method,
        path,
        body,
        header("if-match"),
        header("if-none-match"),
        ts,
        rand::random(),
    )
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
    kv_at(addr, s, method, path, body, extra, now()).await
}

/// [`kv`] signed at `clock`'s time (a server on that clock).
pub async fn kv_on(
    clock: &ManualClock,
    addr: SocketAddr,
    s: &Session,
    method: &str,
    path: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> Reply {
    kv_at(addr, s, method, path, body, extra, clock.now_ms() / 1000).await
}

/// [`kv`] signed at `ts` (Unix seconds).
pub async fn kv_at(
    addr: SocketAddr,
    s: &Session,
    method: &str,
    path: &str,
    body: &[u8],
    extra: &[(&str, &str)],
    ts: u64,
) -> Reply {
    let auth = sign_with(s, Version::V2, method, path, body, extra, ts);
    http_with(addr, method, path, Some(auth), extra, body).await
}

/// An OPAQUE login over REST: the session, or `None` if KE2 did not open.
pub async fn opaque_login(addr: SocketAddr, user: &str, pw: &str) -> Option<Session> {
    let login = Login::opaque(user, Password::new(pw)).expect("KE1");
    match client(addr).login(login).await {
        Ok(s) => Some(s),
        Err(RestError::Auth(_)) => None,
        Err(e) => panic!("OPAQUE login over REST: {e}"),
    }
}
