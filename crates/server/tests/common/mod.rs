//! Test kit: a real server on a temp dir and a free port, and a raw
//! msgpack client for poking at the protocol byte by byte.
#![allow(dead_code)]

use std::time::Duration;

use keycard_proto::{encode, Decoder, Limits, Msg, Value};
use keycard_server::{Config, Server, ServerHandle};
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
        let stream = TcpStream::connect(addr).await.expect("connect");
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
