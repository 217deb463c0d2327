//! `GET /healthz` (the process answers; it never asks the store) and
//! `GET /readyz` (the store answers a read in time, the hashing pool has
//! a free worker, the feed is not behind: each failing check named, 503),
//! on the embedded store and on a private PostgreSQL stopped and started
//! again under the node.

mod common;

use std::time::{Duration, Instant};

use keycard_client::rest::RestClient;
use serde_json::Value as Json;

async fn get(rest: &RestClient, target: &str) -> (u16, Json) {
    let r = rest.send("GET", target, &[], b"").await.expect("answer");
    let body = serde_json::from_slice(&r.body).expect("JSON");
    (r.status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_the_embedded_store_is_alive_and_ready() {
    let (_s, http) = common::rest::server().await;
    let rest = RestClient::connection_per_request(http.to_string());
    let (status, body) = get(&rest, "/healthz").await;
    assert_eq!((status, &body["status"]), (200, &Json::from("alive")));
    let (status, body) = get(&rest, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], Json::Bool(true));
    for check in ["store", "hashing", "feed"] {
        assert_eq!(
            body["checks"][check]["ok"],
            Json::Bool(true),
            "{check}: {body}"
        );
    }
    assert_eq!(body["failing"], Json::Array(vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_the_database_is_away_and_back() {
    if !keycard_pgtest::available() {
        eprintln!("SKIPPED: no PostgreSQL binaries to start a private instance");
        return;
    }
    let pg = tokio::task::spawn_blocking(keycard_pgtest::PgInstance::start)
        .await
        .expect("join")
        .expect("a private PostgreSQL");
    let url = format!("{}?sslmode=disable&schema=kc_health", pg.url("keycard"));
    let s = common::start_with(|c| {
        c.store = url.parse().expect("a postgres URL");
        c.http = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let http = s.handle.http_addr.expect("the REST listener");
    let rest = RestClient::connection_per_request(http.to_string());
    let (status, body) = get(&rest, "/readyz").await;
    assert_eq!(status, 200, "{body}");

    let pg = std::sync::Arc::new(pg);
    let stopper = pg.clone();
    tokio::task::spawn_blocking(move || stopper.stop())
        .await
        .expect("join")
        .expect("stopped");
    let (status, body) = get(&rest, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], Json::Bool(false));
    let failing: Vec<&str> = body["failing"]
        .as_array()
        .expect("failing")
        .iter()
        .filter_map(Json::as_str)
        .collect();
    assert!(failing.contains(&"store"), "{body}");
    assert!(!failing.contains(&"hashing"), "{body}");
    // Alive all the same: /healthz never asks the store.
    let (status, _) = get(&rest, "/healthz").await;
    assert_eq!(status, 200);

    let starter = pg.clone();
    tokio::task::spawn_blocking(move || starter.restart())
        .await
        .expect("join")
        .expect("started again");
    let t = Instant::now();
    loop {
        let (status, body) = get(&rest, "/readyz").await;
        if status == 200 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "still not ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("ready again {:?} after the database", t.elapsed());
    drop(s);
}
