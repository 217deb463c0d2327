//! Prometheus metrics (`keycard serve --metrics ADDR`, and `GET /metrics`
//! on the REST listener only with `metrics_on_http`): the login counters
//! move by exactly the logins of each outcome, and the whole text parses
//! with the Prometheus project's own Python parsers (its classic text
//! format and OpenMetrics).

mod common;

use std::net::SocketAddr;

use keycard_auth::{Password, ScramClient, SCRAM_SHA_256};
use keycard_client::rest::RestClient;
use keycard_client::Client;
use keycard_proto::{ErrorCode, Msg};

async fn scrape(addr: SocketAddr) -> String {
    let rest = RestClient::connection_per_request(addr.to_string());
    let r = rest
        .send("GET", "/metrics", &[], b"")
        .await
        .expect("scrape");
    assert_eq!(r.status, 200);
    String::from_utf8(r.body).expect("utf-8")
}

/// The value of the sample `name{labels}` in `text` (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn logins(text: &str, outcome: &str) -> f64 {
    sample(
        text,
        &format!("keycard_logins_total{{method=\"{SCRAM_SHA_256}\",outcome=\"{outcome}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_counters_move_by_each_outcome_and_the_text_parses() {
    let s = common::start_with(|c| {
        c.metrics = Some("127.0.0.1:0".parse().expect("addr"));
        c.http = Some("127.0.0.1:0".parse().expect("addr"));
        c.throttle = keycard_server::ThrottleConfig {
            free: 100,
            source_limit: 5,
            // alice's successes would exempt her address from its limit.
            known_good_days: 0,
            ..keycard_server::ThrottleConfig::default()
        };
        c.max_auth_attempts = 100;
    })
    .await;
    let metrics = s.handle.metrics_addr.expect("the metrics listener");
    let admin = Client::connect(s.addr()).await.expect("connect");
    admin
        .set_user(&ScramClient::new("alice", Password::new("alice-pw")))
        .await
        .expect("alice");
    admin
        .request(
            Msg::new()
                .with("action", "set_auth_typ")
                .with("typ", SCRAM_SHA_256),
        )
        .await
        .expect("current");
    let before = scrape(metrics).await;
    let addr = s.addr();
    let login = |pw: &'static str| async move {
        let c = Client::connect(addr).await.expect("connect");
        c.login(&ScramClient::new("alice", Password::new(pw)))
            .await
            .map(|_| c)
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(login("alice-pw").await.expect("right"));
    }
    for _ in 0..5 {
        let Err(e) = login("wrong").await else {
            panic!("a wrong password got in");
        };
        assert_eq!(e.code(), Some(ErrorCode::AuthFailed));
    }
    let Err(e) = login("wrong").await else {
        panic!("a wrong password got in past the limit");
    };
    assert_eq!(e.code(), Some(ErrorCode::Throttled));
    let after = scrape(metrics).await;
    for (outcome, n) in [("success", 2.0), ("refused", 5.0), ("throttled", 1.0)] {
        assert_eq!(
            logins(&after, outcome) - logins(&before, outcome),
            n,
            "{outcome}:\n{after}"
        );
    }
    assert_eq!(logins(&after, "error"), logins(&before, "error"));
    assert_eq!(sample(&after, "keycard_keycards"), 2.0, "{after}");
    assert!(
        sample(&after, "process_resident_memory_bytes") > 1e6,
        "{after}"
    );
    assert!(sample(&after, "process_open_fds") > 3.0, "{after}");
    // No user name in any label.
    assert!(!after.contains("alice"), "{after}");

    // Not on the REST listener unless allowed.
    let http = s.handle.http_addr.expect("http");
    let rest = RestClient::connection_per_request(http.to_string());
    let r = rest
        .send("GET", "/metrics", &[], b"")
        .await
        .expect("answer");
    assert_eq!(r.status, 404);
    // Anything else on the metrics listener is 404.
    let r = RestClient::connection_per_request(metrics.to_string())
        .send("GET", "/other", &[], b"")
        .await
        .expect("answer");
    assert_eq!(r.status, 404);

    // The Prometheus project's parsers read it all.
    if std::env::var_os("KEYCARD_SKIP_PEERS").is_some() {
        eprintln!("SKIPPED the Python parsers: KEYCARD_SKIP_PEERS is set");
        return;
    }
    let python = std::env::var("KEYCARD_DISTKV_PYTHON").expect(
        "KEYCARD_DISTKV_PYTHON must point at a python with prometheus_client installed: run \
         the tests with scripts/test.sh (it creates the venv), or set KEYCARD_SKIP_PEERS=1",
    );
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families as classic
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
text = sys.stdin.read()
a = {f.name: f for f in om(text)}
b = {f.name: f for f in classic(text)}
logins = a["keycard_logins"]
assert logins.type == "counter", logins.type
n = sum(s.value for s in logins.samples if s.labels.get("outcome") == "refused")
print(len(a), len(b), int(n))
"#;
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(after.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python ran");
    assert!(
        out.status.success(),
        "the parsers refused the text: {}\n{after}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    let n: Vec<u64> = said
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(n.len() == 3 && n[0] >= 9 && n[1] >= 9, "{said}");
    assert_eq!(n[2] as f64, logins(&after, "refused"), "{said}");
}
