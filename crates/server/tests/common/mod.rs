//! Test kit: a real server on a temp dir and a free port, and a raw
//! msgpack client for poking at the protocol byte by byte.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

pub mod pki;
pub mod rest;

use keycard_proto::{encode, Decoder, Limits, Msg, Value};
use keycard_server::{Config, ManualClock, Server, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A server running in this process.
pub struct TestServer {
    pub handle: ServerHandle,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub fn addr(&self) -> std::net::SocketAddr {
        self.handle.addr
    }
}

pub async fn start() -> TestServer {
    start_with(|_| {}).await
}

pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data: dir.path().to_path_buf(),
        node: "test-node".into(),
        ..Config::default()
    };
    tweak(&mut config);
    let server = Server::open(config).await.expect("server starts");
    let handle = server.spawn().expect("spawn");
    TestServer { handle, dir }
}

/// [`start_with`] on a manual clock: time moves only when the test
/// advances the clock it gets back (expiry, windows, keep-alive).
pub async fn start_with_clock(tweak: impl FnOnce(&mut Config)) -> (TestServer, Arc<ManualClock>) {
    let clock = ManualClock::new();
    let s = start_with(|c| {
        c.clock = clock.clone().into();
        tweak(c);
    })
    .await;
    (s, clock)
}

/// Sets `c` on a manual clock, returned (for the kits that take a tweak).
pub fn manual_clock(c: &mut Config) -> Arc<ManualClock> {
    let clock = ManualClock::new();
    c.clock = clock.clone().into();
    clock
}

/// Moves `clock` on by `by`, then runs one reaper pass at once (the
/// reaper task would within 100 ms): what expired is gone and its holders
/// are told when this returns.
pub fn advance(s: &TestServer, clock: &ManualClock, by: Duration) {
    clock.advance(by);
    while s.handle.state.bouncer.reap() > 0 {}
}

/// Polls `done` every 10 ms until it holds, for at most 5 s (asynchronous
/// work: the audit writer, a write-behind flush, a close).
pub async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The audit log's text once `done` holds for it (its writer task runs
/// behind the events).
pub async fn audit_log_with(s: &TestServer, done: impl Fn(&str) -> bool) -> String {
    let path = s.dir.path().join("audit.log");
    let mut text = String::new();
    wait_for("the audit log", || {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        done(&text)
    })
    .await;
    text
}

/// A raw protocol client.
pub struct Raw {
    pub stream: TcpStream,
    dec: Decoder,
    buf: Vec<u8>,
    pub greeting: Value,
}

pub const WAIT: Duration = Duration::from_secs(10);

impl Raw {
    pub async fn connect(addr: std::net::SocketAddr) -> Raw {
        Raw::from_stream(TcpStream::connect(addr).await.expect("connect")).await
    }

    /// A raw client on a connected socket (e.g. one bound to another
    /// local address), once the greeting is read.
    pub async fn from_stream(stream: TcpStream) -> Raw {
        let mut raw = Raw {
            stream,
            dec: Decoder::new(Limits {
                max_message: 64 << 20,
                max_depth: 64,
                max_items: 1 << 24,
            }),
            greeting: Value::Nil,
            buf: vec![0u8; 65536],
        };
        raw.greeting = raw.recv().await.expect("greeting");
        raw
    }

    pub async fn send(&mut self, v: impl Into<Value>) {
        self.send_bytes(&encode(&v.into())).await;
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        self.stream.write_all(b).await.expect("write");
    }

    /// The next message, or `None` when the server closed the connection.
    pub async fn recv(&mut self) -> Option<Value> {
        tokio::time::timeout(WAIT, self.recv_inner())
            .await
            .expect("reply within the wait")
    }

    /// The next message if one arrives within `d`.
    pub async fn try_recv(&mut self, d: Duration) -> Option<Option<Value>> {
        tokio::time::timeout(d, self.recv_inner()).await.ok()
    }

    async fn recv_inner(&mut self) -> Option<Value> {
        loop {
            if let Some(v) = self.dec.next_value().expect("server sends valid msgpack") {
                return Some(v);
            }
            let n = self.stream.read(&mut self.buf).await.ok()?;
            if n == 0 {
                return None;
            }
            self.dec.feed(&self.buf[..n]);
        }
    }

    /// Sends a request and returns its single reply.
    pub async fn call(&mut self, msg: Msg) -> Value {
        let seq = msg
            .clone()
            .into_value()
            .get("seq")
            .and_then(Value::as_i64)
            .expect("seq");
        self.send(msg).await;
        loop {
            let v = self.recv().await.expect("reply");
            if v.get("seq").and_then(Value::as_i64) == Some(seq) {
                return v;
            }
        }
    }

    /// Sends a streamed request and collects its messages up to `end`.
    pub async fn call_stream(&mut self, msg: Msg) -> Vec<Value> {
        let seq = msg
            .clone()
            .into_value()
            .get("seq")
            .and_then(Value::as_i64)
            .expect("seq");
        self.send(msg).await;
        let mut out = Vec::new();
        loop {
            let v = self.recv().await.expect("stream message");
            if v.get("seq").and_then(Value::as_i64) != Some(seq) {
                continue;
            }
            let end = v.get("state").and_then(Value::as_str) == Some("end");
            let single = v.get("wseq").is_none();
            out.push(v);
            if end || single {
                return out;
            }
        }
    }
}

pub fn code(v: &Value) -> Option<&str> {
    v.get("code").and_then(Value::as_str)
}

pub fn req(seq: i64, action: &str) -> Msg {
    Msg::seq(seq).with("action", action)
}

pub fn path(text: &str) -> Value {
    keycard_proto::Path::parse(text)
        .expect("test path")
        .to_value()
}

/// The users-and-keycards test server: `_test` users joe and ann, a
/// `root` user, `_test` current and `root` accepted; `data.x` holds 1.
pub async fn server(tweak: impl FnOnce(&mut keycard_server::Config)) -> TestServer {
    use keycard_auth::ClientRegistry;
    let s = start_with(tweak).await;
    let c = keycard_client::Client::connect(s.addr())
        .await
        .expect("connect");
    for (m, u) in [
        ("root", None),
        ("_test", Some("joe")),
        ("_test", Some("ann")),
    ] {
        let m = ClientRegistry::make(m, u).expect("method");
        c.set_user(m.as_ref()).await.expect("user");
    }
    c.set(
        &keycard_proto::Path::parse("data.x").expect("p"),
        Value::from(1),
    )
    .await
    .expect("data");
    c.request(
        Msg::new()
            .with("action", "set_auth_typ")
            .with("typ", "_test")
            .with("accept", Value::Array(vec!["root".into()])),
    )
    .await
    .expect("current");
    s
}

/// A client logged in with `method` as `user`.
pub async fn login(s: &TestServer, method: &str, user: Option<&str>) -> keycard_client::Client {
    let c = keycard_client::Client::connect(s.addr())
        .await
        .expect("connect");
    let m = keycard_auth::ClientRegistry::make(method, user).expect("method");
    c.login(m.as_ref()).await.expect("login");
    c
}

/// A raw connection logged in as `_test` user `user`.
pub async fn raw_login(s: &TestServer, user: &str) -> Raw {
    let mut r = Raw::connect(s.addr()).await;
    let v = r
        .call_stream(req(1, "auth").with("typ", "_test").with("ident", user))
        .await;
    assert!(v.iter().all(|m| code(m).is_none()), "{v:?}");
    r
}

/// A request that must succeed.
pub async fn call_ok(c: &keycard_client::Client, m: Msg) -> Value {
    c.request(m).await.expect("request")
}

/// The domains test server. Data: `org.acme.data.x` = 1,
/// `org.other.secret` = 2, `top.secret` = 3. The server's own users:
/// `_test` joe and `root`, `_test` current. A domain at `org.acme` with
/// `_test` users joe and ro (bound to the domain's ACL `ro`: read its
/// `data`), a `root` user and an `_anon` user anon whose method the domain
/// does not accept.
pub async fn domain_server() -> TestServer {
    use keycard_auth::ClientRegistry;
    let p = |t: &str| keycard_proto::Path::parse(t).expect("path");
    let s = start().await;
    let g = keycard_client::Client::connect(s.addr())
        .await
        .expect("connect");
    for (path, v) in [
        ("org.acme.data.x", 1),
        ("org.other.secret", 2),
        ("top.secret", 3),
    ] {
        g.set(&p(path), Value::from(v)).await.expect("data");
    }
    // The domain, configured from a connection re-rooted at it: the
    // reserved subtree it writes to is org.acme + (nil, …).
    let d = keycard_client::Client::connect(s.addr())
        .await
        .expect("connect");
    call_ok(
        &d,
        Msg::new()
            .with("action", "root")
            .with_path("path", &p("org.acme")),
    )
    .await;
    for (m, u) in [
        ("_test", Some("joe")),
        ("_test", Some("ro")),
        ("_anon", Some("anon")),
        ("root", None),
    ] {
        d.set_user(ClientRegistry::make(m, u).expect("m").as_ref())
            .await
            .expect("domain user");
    }
    for (path, v) in [
        (p("acl.ro.data.#"), Value::from("rx")),
        (p("acl.ro.data"), Value::from("xe")),
        (p("acl.ro"), Value::from("xe")),
        (
            p("auth._test.user.ro.acl"),
            Msg::new().with("key", "ro").into_value(),
        ),
    ] {
        call_ok(
            &d,
            Msg::new()
                .with("action", "set_internal")
                .with_path("path", &path)
                .with("value", v),
        )
        .await;
    }
    let accept_root = || {
        Msg::new()
            .with("action", "set_auth_typ")
            .with("typ", "_test")
            .with("accept", Value::Array(vec!["root".into()]))
    };
    call_ok(&d, accept_root()).await;
    for (m, u) in [("_test", Some("joe")), ("root", None)] {
        g.set_user(ClientRegistry::make(m, u).expect("m").as_ref())
            .await
            .expect("user");
    }
    call_ok(&g, accept_root()).await;
    s
}

/// A raw connection's login to the domain at `domain` (a path value).
pub async fn domain_login(
    s: &TestServer,
    typ: &str,
    user: &str,
    domain: Value,
) -> (Raw, Vec<Value>) {
    let mut r = Raw::connect(s.addr()).await;
    let v = r
        .call_stream(
            req(1, "auth")
                .with("typ", typ)
                .with("ident", user)
                .with("chroot", domain),
        )
        .await;
    (r, v)
}
