//! REST behind a reverse proxy (DESIGN §8.2, W10): `X-Forwarded-For` is
//! honoured only from `trusted_proxies`, read from the right; the address
//! it names is what throttling, the audit log and last logins see. Over
//! real HTTP.

mod common;

use std::net::IpAddr;

use common::rest::{http_with, server_with, Reply};
use keycard_auth::{ClientMethod, Password, ScramClient};
use keycard_proto::{Elem, Path, Value};
use keycard_server::ThrottleConfig;
use serde_json::json;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

fn nets(list: &[&str]) -> Vec<keycard_server::Network> {
    list.iter().map(|n| n.parse().expect("network")).collect()
}

/// `POST /session/new` for `user` (SCRAM's first message), with
/// `X-Forwarded-For: xff`: a challenge, counted as a failure until a
/// proof succeeds.
async fn begin(addr: std::net::SocketAddr, user: &str, xff: &str) -> Reply {
    let start = ScramClient::new(user, Password::new("guess")).login(None);
    let first = start
        .request
        .into_value()
        .get("data")
        .and_then(Value::as_str)
        .expect("client-first")
        .to_owned();
    let body = json!({"method": "scram-sha-256", "user": user, "data": first}).to_string();
    http_with(
        addr,
        "POST",
        "/session/new",
        None,
        &[("x-forwarded-for", xff)],
        body.as_bytes(),
    )
    .await
}

/// The pair counter's counted attempts (failed, or challenged without a
/// verdict yet) for `user` from `from`.
fn pair(s: &common::TestServer, user: &str, from: &str) -> u32 {
    let c = s.handle.state.throttle.counters(user, ip(from)).pair;
    c.failures + c.provisional
}

/// From a peer that is not a trusted proxy, `X-Forwarded-For` is the
/// client's say and is ignored: the socket peer is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peers_forwarded_for_is_ignored() {
    let (s, addr) = server_with(|c| c.trusted_proxies = nets(&["10.0.0.0/8"])).await;
    for _ in 0..3 {
        let r = begin(addr, "alice", "203.0.113.7").await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    assert_eq!(pair(&s, "alice", "127.0.0.1"), 3);
    assert_eq!(pair(&s, "alice", "203.0.113.7"), 0);
}

/// From a trusted proxy, the rightmost address that is not a trusted
/// proxy is the client: throttling counts it, the audit log and the last
/// logins name it, and one forwarded client locking itself out does not
/// lock out the proxy's other clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_forwarded_for_names_the_client() {
    let (s, addr) = server_with(|c| {
        c.trusted_proxies = nets(&["127.0.0.1", "10.0.0.0/8"]);
        c.throttle = ThrottleConfig {
            source_limit: 5,
            ..ThrottleConfig::default()
        };
    })
    .await;
    let chain = "198.51.100.1, 203.0.113.9, 10.1.2.3";
    let r = begin(addr, "alice", chain).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(pair(&s, "alice", "203.0.113.9"), 1);
    assert_eq!(pair(&s, "alice", "198.51.100.1"), 0);
    assert_eq!(pair(&s, "alice", "127.0.0.1"), 0);

    // One client behind the proxy sprays names until it is refused...
    for i in 0..5 {
        let r = begin(addr, &format!("spray{i}"), "203.0.113.66").await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let r = begin(addr, "spray5", "203.0.113.66").await;
    assert_eq!(r.status, 429, "{}", r.body);
    // ...and another one behind it logs in.
    let r = begin(addr, "bob", "203.0.113.77").await;
    assert_eq!(r.status, 201, "{}", r.body);

    // A successful login through the proxy: the audit log and the last
    // logins name the client.
    let start = ScramClient::new("bob", Password::new("bobs pw")).login(None);
    let first = start
        .request
        .into_value()
        .get("data")
        .and_then(Value::as_str)
        .expect("client-first")
        .to_owned();
    let xff = [("x-forwarded-for", "198.51.100.20")];
    let body = json!({"method": "scram-sha-256", "user": "bob", "data": first}).to_string();
    let r = http_with(addr, "POST", "/session/new", None, &xff, body.as_bytes()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let sid = r.body["sid"].as_str().expect("sid").to_owned();
    let server_first = r.body["data"].as_str().expect("server-first");
    let Some(exchange) = start.exchange else {
        panic!("SCRAM has an exchange")
    };
    let keycard_auth::Step::Send(fin, _) = exchange.next(
        &keycard_proto::Msg::new()
            .with("data", server_first)
            .into_value(),
    ) else {
        panic!("client-final expected")
    };
    let fin = fin.into_value();
    let proof = fin
        .get("data")
        .and_then(Value::as_str)
        .expect("client-final");
    let body = json!({"data": proof}).to_string();
    let r = http_with(
        addr,
        "PUT",
        &format!("/session/{sid}"),
        None,
        &xff,
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let record = Path::new(
        [Elem::Nil]
            .into_iter()
            .chain(["auth", "scram-sha-256", "user", "bob"].map(Elem::from))
            .collect(),
    );
    let marks = s.handle.state.logins.of(&record).await.expect("logins");
    assert_eq!(marks.len(), 1, "{marks:?}");
    assert_eq!(marks[0].client, "198.51.100.20:0");
    let mut log = String::new();
    for _ in 0..250 {
        log = std::fs::read_to_string(s.dir.path().join("audit.log")).unwrap_or_default();
        if log.contains("\"success\"") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let success = log
        .lines()
        .find(|l| l.contains("\"success\""))
        .expect("a success audited");
    assert!(
        success.contains("\"source\":\"198.51.100.20:0\""),
        "{success}"
    );
    assert!(!log.contains("\"source\":\"127.0.0.1"), "{log}");
}
