//! Hostile connections (found in review): connections that never
//! log in, idle ones, slowloris messages, one address holding every slot,
//! on the msgpack listener and the REST one; a watch that falls behind.
//! Each window is configured short so the tests wait little. Real time
//! on purpose: `login_timeout`, `idle_timeout`, `message_timeout` and
//! `http_idle_timeout` are socket timeouts on tokio's timer, not the
//! server's clock.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{code, path, req, start_with, Raw};
use keycard_proto::{encode, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (or `within` passes):
/// the messages it sent, and how long it took to close.
async fn until_closed(c: &mut Raw, within: Duration) -> (Vec<Value>, Option<Duration>) {
    let t = Instant::now();
    let mut got = Vec::new();
    while t.elapsed() < within {
        match c.try_recv(within - t.elapsed()).await {
            Some(Some(v)) => got.push(v),
            Some(None) => return (got, Some(t.elapsed())),
            None => break,
        }
    }
    (got, None)
}

/// The connection-level error among `got` (a message without a seq).
fn closing_error(got: &[Value]) -> Option<&Value> {
    got.iter()
        .find(|v| v.get("seq").is_none() && v.get("error").is_some())
}

async fn connect_from(local: &str, addr: SocketAddr) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(local.parse().expect("ip"), 0))
        .expect("bind");
    sock.connect(addr).await.expect("connect")
}

/// A raw client from `local`, greeting read.
async fn raw_from(local: &str, addr: SocketAddr) -> Raw {
    Raw::from_stream(connect_from(local, addr).await).await
}

// ------------------------------------------------------------ msgpack

/// Found in review: a connection that never logs in
/// on a server requiring logins was kept for ever. It is now told
/// `timeout` after `login_timeout` and closed; one that logs in stays.
#[tokio::test]
async fn fixed_a_connection_that_never_logs_in_is_closed() {
    let s = common::server(|c| c.login_timeout = 1).await;
    let mut lazy = Raw::connect(s.addr()).await;
    let mut busy = Raw::connect(s.addr()).await;
    let st = busy
        .call_stream(req(1, "auth").with("typ", "_test").with("ident", "joe"))
        .await;
    assert!(st.iter().all(|v| v.get("error").is_none()), "{st:?}");
    // Asking for data without a login does not keep it alive.
    let r = lazy
        .call(req(1, "get_value").with("path", path("data.x")))
        .await;
    assert_eq!(code(&r), Some("auth_required"));
    let (got, closed) = until_closed(&mut lazy, Duration::from_secs(4)).await;
    let e = closing_error(&got).unwrap_or_else(|| panic!("no closing error: {got:?}"));
    assert_eq!(code(e), Some("timeout"), "{e:?}");
    assert!(
        closed.is_some(),
        "still open 4 s after a 1 s login deadline"
    );
    let r = busy
        .call(req(2, "get_value").with("path", path("data.x")))
        .await;
    assert_eq!(r.get("value"), Some(&Value::from(1)), "{r:?}");
}

/// A client that never logs in but keeps the connection busy (a flood of
/// pipelined requests, each refused) is closed at the deadline all the
/// same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_a_busy_connection_that_never_logs_in_is_closed() {
    let s = common::server(|c| c.login_timeout = 1).await;
    let c = Raw::connect(s.addr()).await;
    let (mut rd, mut wr) = c.stream.into_split();
    let mut batch = Vec::new();
    for i in 1..=200 {
        batch.extend(encode(
            &req(i, "get_value")
                .with("path", path("data.x"))
                .into_value(),
        ));
    }
    let writer = tokio::spawn(async move {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(6) {
            if wr.write_all(&batch).await.is_err() {
                return;
            }
        }
    });
    let t = Instant::now();
    let mut dec = keycard_proto::Decoder::new(keycard_proto::Limits::default());
    let mut buf = vec![0u8; 1 << 16];
    let mut timeout_seen = false;
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(6), rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break t.elapsed(),
            Ok(Ok(n)) => dec.feed(&buf[..n]),
            Err(_) => panic!("neither served nor closed"),
        }
        while let Ok(Some(v)) = dec.next_value() {
            timeout_seen |= v.get("seq").is_none() && code(&v) == Some("timeout");
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "a busy connection without a login was kept"
        );
    };
    writer.abort();
    assert!(timeout_seen, "closed after {closed:?} without saying why");
}

/// An open server (no method current) has no login deadline: nobody
/// needs to log in there.
#[tokio::test]
async fn ok_an_open_server_has_no_login_deadline() {
    let s = start_with(|c| c.login_timeout = 1).await;
    let mut c = Raw::connect(s.addr()).await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = c.call(req(1, "get_tock")).await;
    assert!(r.get("tock").is_some(), "{r:?}");
}

/// Found in review: idle connections were never
/// closed. After `idle_timeout` with nothing received and no request
/// running, a connection is told `timeout` and closed; a running watch
/// is not idle.
#[tokio::test]
async fn fixed_idle_connections_are_closed_but_a_watch_is_not_idle() {
    let s = start_with(|c| c.idle_timeout = 1).await;
    let mut idle = Raw::connect(s.addr()).await;
    let mut watching = Raw::connect(s.addr()).await;
    watching.send(req(1, "watch").with("path", path("w"))).await;
    assert_eq!(
        watching.recv().await.and_then(|v| v.get("state").cloned()),
        Some(Value::from("start"))
    );
    let (got, closed) = until_closed(&mut idle, Duration::from_secs(4)).await;
    let e = closing_error(&got).unwrap_or_else(|| panic!("no closing error: {got:?}"));
    assert_eq!(code(e), Some("timeout"), "{e:?}");
    assert!(closed.is_some(), "an idle connection was kept");
    // The watcher, quiet as long, still gets changes.
    let mut w = Raw::connect(s.addr()).await;
    w.call(
        req(1, "set_value")
            .with("path", path("w.a"))
            .with("value", 7),
    )
    .await;
    let v = watching.recv().await.expect("the change");
    assert_eq!(v.get("value"), Some(&Value::from(7)), "{v:?}");
    // Once its watch is stopped, it is idle like any other.
    watching.send(req(2, "stop").with("task", 1)).await;
    let (got, closed) = until_closed(&mut watching, Duration::from_secs(4)).await;
    assert!(closed.is_some(), "closed once idle: {got:?}");
}

/// A client that keeps talking is never idle, however long it stays.
#[tokio::test]
async fn ok_a_talking_client_is_not_idle() {
    let s = start_with(|c| c.idle_timeout = 1).await;
    let mut c = Raw::connect(s.addr()).await;
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let r = c.call(req(i + 1, "get_tock")).await;
        assert!(r.get("tock").is_some(), "{r:?}");
    }
}

/// Found in review: a message trickled a byte at a
/// time held its connection (and the decoder's buffer) for ever. Once
/// its first byte arrived, a message must be complete within
/// `message_timeout`; else the client is told `timeout` and closed.
#[tokio::test]
async fn fixed_a_slowly_trickled_message_is_cut_off() {
    let s = start_with(|c| c.message_timeout = 1).await;
    let mut c = Raw::connect(s.addr()).await;
    let bytes = encode(
        &req(1, "set_value")
            .with("path", path("slow"))
            .with("value", "x".repeat(100))
            .into_value(),
    );
    let t = Instant::now();
    let mut sent = 0;
    // A byte every 200 ms: never idle, never complete.
    while t.elapsed() < Duration::from_secs(4) && sent < bytes.len() {
        if c.stream.write_all(&bytes[sent..sent + 1]).await.is_err() {
            break;
        }
        sent += 1;
        if let Some(Some(v)) = c.try_recv(Duration::from_millis(200)).await {
            assert_eq!(code(&v), Some("timeout"), "{v:?}");
            assert!(v.get("seq").is_none());
            let (_, closed) = until_closed(&mut c, Duration::from_secs(2)).await;
            assert!(closed.is_some(), "told, but not closed");
            return;
        }
    }
    panic!("{sent} bytes over {:?} and no timeout", t.elapsed());
}

/// Complete messages sent slowly are not a slow message.
#[tokio::test]
async fn ok_slow_but_complete_messages_are_served() {
    let s = start_with(|c| c.message_timeout = 1).await;
    let mut c = Raw::connect(s.addr()).await;
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let r = c.call(req(i + 1, "get_tock")).await;
        assert!(r.get("tock").is_some(), "{r:?}");
    }
}

/// Found in review: 10,200 idle connections from one
/// address locked every new client out. One address now holds at most
/// `max_connections_per_address`; one more is told so and closed, and
/// other addresses are served.
#[tokio::test]
async fn fixed_one_address_cannot_take_every_connection() {
    let s = start_with(|c| {
        c.max_connections = 5;
        c.max_connections_per_address = 3;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(raw_from("127.0.0.1", s.addr()).await);
    }
    let mut extra = connect_from("127.0.0.1", s.addr()).await;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut buf))
        .await
        .expect("closed promptly")
        .expect("read");
    let (v, _) = keycard_proto::decode_one(&buf, &keycard_proto::Limits::default())
        .expect("valid")
        .expect("a message");
    assert_eq!(code(&v), Some("too_many_connections"), "{v:?}");
    let text = v.get("error").and_then(Value::as_str).unwrap_or_default();
    assert!(text.contains("this address"), "{text}");
    // Another address gets in.
    let mut other = raw_from("127.0.0.2", s.addr()).await;
    assert!(other.call(req(1, "get_tock")).await.get("tock").is_some());
    // A slot of the first address frees when one of its connections ends.
    drop(held.pop());
    let t = Instant::now();
    loop {
        let mut again = raw_from("127.0.0.1", s.addr()).await;
        match again.try_recv(Duration::from_millis(100)).await {
            None => break,
            Some(v) if t.elapsed() > Duration::from_secs(3) => panic!("still refused: {v:?}"),
            Some(_) => {}
        }
    }
}

// ------------------------------------------------------------- watches

/// A watcher that falls far behind the in-memory change feed (its client
/// reads late) catches up from the change log: every change, once, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_a_lagging_watcher_catches_up_from_the_change_log() {
    let s = start_with(|c| c.max_inflight_bytes = 1 << 20).await;
    let mut watcher = Raw::connect(s.addr()).await;
    watcher
        .send(req(1, "watch").with("path", path("lag")))
        .await;
    assert_eq!(
        watcher.recv().await.and_then(|v| v.get("state").cloned()),
        Some(Value::from("start"))
    );
    // 400 values of 64 KiB, 25 MiB: more than the feed keeps in memory
    // and than the socket and the connection's budget hold.
    let c = keycard_client::Client::connect(s.addr()).await.expect("c");
    for i in 0..400i64 {
        c.set(
            &keycard_proto::Path::parse(&format!("lag.k{i}")).expect("p"),
            Value::Bin(vec![i as u8; 64 << 10]),
        )
        .await
        .expect("set");
    }
    let mut last = None;
    for i in 0..400i64 {
        let v = watcher.recv().await.expect("a change");
        assert!(v.get("error").is_none(), "{v:?}");
        assert_eq!(
            v.get("value")
                .and_then(Value::as_bin)
                .map(|b| (b.len(), b[0])),
            Some((64 << 10, i as u8)),
            "change {i} out of order or missing"
        );
        let tock = v.get("tock").and_then(Value::as_u64).expect("tock");
        assert!(last.is_none_or(|l| tock > l));
        last = Some(tock);
    }
}

/// A watcher further behind than the kept history is ended with
/// `history_gone` even while its client reads nothing: its request ends
/// (it holds nothing more) and, with nothing else running, the
/// connection is then idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_a_watcher_beyond_the_history_is_ended_while_blocked() {
    let s = start_with(|c| {
        c.history = 20;
        c.max_inflight_bytes = 1 << 20;
        c.idle_timeout = 2;
    })
    .await;
    let mut watcher = Raw::connect(s.addr()).await;
    watcher
        .send(req(1, "watch").with("path", path("gone")))
        .await;
    assert_eq!(
        watcher.recv().await.and_then(|v| v.get("state").cloned()),
        Some(Value::from("start"))
    );
    let c = keycard_client::Client::connect(s.addr()).await.expect("c");
    let t = Instant::now();
    for i in 0..300i64 {
        c.set(
            &keycard_proto::Path::parse(&format!("gone.k{i}")).expect("p"),
            Value::Bin(vec![1; 64 << 10]),
        )
        .await
        .expect("set");
    }
    // Not reading for longer than the idle timeout: the watch ended
    // (history_gone) while blocked, so the connection went idle and was
    // closed; reading now finds the error, then the close.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(t.elapsed()) + Duration::from_secs(1))
        .await;
    let (got, closed) = until_closed(&mut watcher, Duration::from_secs(10)).await;
    let err = got
        .iter()
        .find(|v| v.get("seq") == Some(&Value::from(1)) && v.get("error").is_some())
        .unwrap_or_else(|| panic!("no error in {} messages", got.len()));
    assert_eq!(code(err), Some("history_gone"), "{err:?}");
    assert!(
        closed.is_some(),
        "the watch never ended: the connection was not idle"
    );
}

/// Found with item 7's class: `enum` with `with_data` put every child's
/// value into one reply, however many and large. It is now refused with
/// `too_large` beyond the connection's budget (`max_inflight_bytes`).
#[tokio::test]
async fn fixed_enum_of_large_children_is_bounded() {
    let s = start_with(|c| c.max_inflight_bytes = 1 << 20).await;
    let mut c = Raw::connect(s.addr()).await;
    for i in 0..40 {
        let r = c
            .call(
                req(i + 1, "set_value")
                    .with("path", path(&format!("e.k{i}")))
                    .with("value", Value::Bin(vec![1; 64 << 10])),
            )
            .await;
        assert!(r.get("error").is_none(), "{r:?}");
    }
    let r = c
        .call(
            req(100, "enum")
                .with("path", path("e"))
                .with("with_data", true),
        )
        .await;
    assert_eq!(
        code(&r),
        Some("too_large"),
        "{:?}",
        r.get("result").map(|_| "every child's value in one reply")
    );
    // Names alone are small.
    let r = c.call(req(101, "enum").with("path", path("e"))).await;
    assert_eq!(
        r.get("result").and_then(|v| match v {
            Value::Array(a) => Some(a.len()),
            _ => None,
        }),
        Some(40),
        "{r:?}"
    );
}

// ---------------------------------------------------------------- REST

async fn rest(tweak: impl FnOnce(&mut keycard_server::Config)) -> common::TestServer {
    start_with(|c| {
        c.http = Some("127.0.0.1:0".parse().expect("addr"));
        tweak(c);
    })
    .await
}

fn http_addr(s: &common::TestServer) -> SocketAddr {
    s.handle.http_addr.expect("http listener")
}

const GET_INDEX: &[u8] = b"GET / HTTP/1.1\r\nhost: keycard\r\n\r\n";

/// Reads one response (head and a content-length body) from `s`.
async fn response(s: &mut TcpStream) -> Option<String> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return Some(text);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return (!raw.is_empty()).then(|| String::from_utf8_lossy(&raw).into_owned());
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

/// Whether the server closes `s` within `d` (reading and discarding).
async fn closed_within(s: &mut TcpStream, d: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let t = Instant::now();
    while t.elapsed() < d {
        match tokio::time::timeout(d - t.elapsed(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
    false
}

/// Found in review (REST): one address could hold every
/// REST connection. Beyond `http_max_connections_per_address` it gets
/// `503` (`too_many_connections`); other addresses are served.
#[tokio::test]
async fn fixed_rest_connections_per_address_are_capped() {
    let s = rest(|c| {
        c.http_max_connections = 5;
        c.http_max_connections_per_address = 2;
    })
    .await;
    let addr = http_addr(&s);
    let _a = connect_from("127.0.0.1", addr).await;
    let _b = connect_from("127.0.0.1", addr).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = connect_from("127.0.0.1", addr).await;
    extra.write_all(GET_INDEX).await.expect("write");
    let r = response(&mut extra).await.expect("a response");
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(r.contains("too_many_connections"), "{r}");
    let mut other = connect_from("127.0.0.2", addr).await;
    other.write_all(GET_INDEX).await.expect("write");
    let r = response(&mut other).await.expect("a response");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

/// Found in review (REST): an idle keep-alive
/// connection is closed after `http_idle_timeout`, and so is one whose
/// request head trickles in; a connection in use is served throughout.
#[tokio::test]
async fn fixed_rest_idle_and_slow_heads_are_closed() {
    let s = rest(|c| c.http_idle_timeout = 1).await;
    let addr = http_addr(&s);
    // Keep-alive, then idle.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(GET_INDEX).await.expect("write");
    let r = response(&mut idle).await.expect("a response");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let t = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(4)).await);
    assert!(
        t.elapsed() > Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );
    // A head a few bytes at a time.
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    let t = Instant::now();
    let mut cut = false;
    for b in GET_INDEX.chunks(1).take(GET_INDEX.len() - 2) {
        if slow.write_all(b).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        if t.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    assert!(
        cut || closed_within(&mut slow, Duration::from_secs(2)).await,
        "a head trickled for {:?} was not cut off",
        t.elapsed()
    );
    // Requests one after another on one connection are served.
    let mut busy = TcpStream::connect(addr).await.expect("connect");
    for _ in 0..4 {
        busy.write_all(GET_INDEX).await.expect("write");
        let r = response(&mut busy).await.expect("a response");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Found in review (REST): a body trickled in was
/// waited for 30 s and then answered `503 shutting_down`. It is cut off
/// after `http_body_timeout` with `408` (`timeout`), and the connection
/// closes.
#[tokio::test]
async fn fixed_rest_slow_bodies_get_408() {
    let s = rest(|c| c.http_body_timeout = 1).await;
    let addr = http_addr(&s);
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(
        b"POST /session/new HTTP/1.1\r\nhost: keycard\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"method\"",
    )
    .await
    .expect("write");
    let t = Instant::now();
    let r = response(&mut slow).await.expect("a response");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    assert!(r.contains("\"timeout\""), "{r}");
    assert!(closed_within(&mut slow, Duration::from_secs(2)).await);
}
