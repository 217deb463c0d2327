//! Nodes that die, as processes (docs/CLUSTER.md): the work that runs on
//! one node at a time moves to another when its node is killed, and a
//! killed node's keycard records are swept once it has been silent for
//! 30 s. Real time on purpose: the heartbeat and the lease run on it.

use std::time::{Duration, Instant};

use keycard_client::Client;
use keycard_proto::{Msg, Path, Value};

mod support;

use support::Proc;

/// The reserved node at `rel` (below the nil root), as `get_internal`
/// answers it on `c`.
async fn internal(c: &Client, rel: &str) -> Option<Value> {
    c.request(
        Msg::new()
            .with("action", "get_internal")
            .with_path("path", &Path::parse(rel).expect("path")),
    )
    .await
    .expect("get_internal")
    .get("value")
    .cloned()
}

/// Waits up to `within` for `check` to hold, polling.
async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while !check().await {
        assert!(t.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("{what}: after {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_moves_and_a_dead_nodes_keycards_are_swept() {
    let tmp = tempfile::tempdir().expect("tmp");
    let schema = keycard_pgtest::TestSchema::new();
    let url = schema.url("sslmode=disable");
    let node =
        |name: &str| Proc::start_with(&tmp.path().join(name), &["--store", &url, "--node", name]);
    let mut a = node("a");
    let b = node("b");
    // Users: root (to look) and a `_test` user joe; `_test` current.
    let admin = Client::connect(a.addr).await.expect("a");
    for (m, u) in [("root", None), ("_test", Some("joe"))] {
        let m = keycard_auth::ClientRegistry::make(m, u).expect("method");
        admin.set_user(m.as_ref()).await.expect("user");
    }
    admin
        .request(
            Msg::new()
                .with("action", "set_auth_typ")
                .with("typ", "_test")
                .with("accept", Value::Array(vec!["root".into()])),
        )
        .await
        .expect("current");
    drop(admin);
    let root = keycard_auth::ClientRegistry::make("root", None).expect("root");
    let on_b = Client::connect(b.addr).await.expect("b");
    on_b.login(root.as_ref()).await.expect("root on b");
    // a started first: it holds the sweep's lease.
    eventually(
        "a holds the sweep's lease",
        Duration::from_secs(10),
        || async {
            internal(&on_b, "lease.live")
                .await
                .is_some_and(|v| v.get("node").and_then(Value::as_str) == Some("a"))
        },
    )
    .await;
    // joe logs in on a: b lists that keycard.
    let joe = Client::connect(a.addr).await.expect("joe");
    let m = keycard_auth::ClientRegistry::make("_test", Some("joe")).expect("joe");
    joe.login(m.as_ref()).await.expect("joe on a");
    let joes = |c: &Client| {
        let c = c.clone();
        async move {
            let mut st = c
                .stream(
                    Msg::new()
                        .with("action", "keycard_list")
                        .with("user", "joe"),
                )
                .await
                .expect("list");
            let mut n = 0;
            while let Some(v) = st.next_raw().await {
                v.expect("item");
                n += 1;
            }
            n
        }
    };
    assert_eq!(joes(&on_b).await, 1, "b lists joe's keycard on a");
    a.kill9();
    drop(joe);
    // b takes the lease once a's has run out (15 s), at its next beat.
    eventually("b takes the lease", Duration::from_secs(30), || async {
        internal(&on_b, "lease.live")
            .await
            .is_some_and(|v| v.get("node").and_then(Value::as_str) == Some("b"))
    })
    .await;
    // a has been silent for 30 s: its keycard's record goes.
    eventually("a's keycard is swept", Duration::from_secs(45), || {
        let on_b = on_b.clone();
        async move { joes(&on_b).await == 0 }
    })
    .await;
}
