//! Three keycard nodes on one PostgreSQL schema (the machine's
//! PostgreSQL, a schema per test, dropped after it): every write,
//! configuration change, keycard and revocation made through one node is
//! seen on the others.

mod common;

use std::time::{Duration, Instant};

use common::{call_ok, code, path, raw_login, req, wait_for, Raw, TestServer};
use keycard_client::{Client, Event};
use keycard_pgtest::TestSchema;
use keycard_proto::{Msg, Path, Value};

/// Three nodes on `schema`, the first set up as `common::server` sets up
/// its one server (`_test` users joe and ann, `root`, `_test` current).
async fn nodes(schema: &TestSchema) -> Vec<TestServer> {
    let url = schema.url("sslmode=disable");
    let config = |name: &'static str| {
        let url = url.clone();
        move |c: &mut keycard_server::Config| {
            c.store = url.parse().expect("a postgres URL");
            c.node = name.into();
        }
    };
    let first = common::server(config("n1")).await;
    let second = common::start_with(config("n2")).await;
    let third = common::start_with(config("n3")).await;
    vec![first, second, third]
}

fn p(t: &str) -> Path {
    Path::parse(t).expect("path")
}

async fn root(s: &TestServer) -> Client {
    common::login(s, "root", None).await
}

/// Three nodes on `schema` (each `tweak`ed), a SCRAM-SHA-256 user `user`
/// with password `pw` made through the first, and that method current.
async fn scram_nodes(
    schema: &TestSchema,
    user: &str,
    pw: &str,
    tweak: impl Fn(&mut keycard_server::Config) + Clone + Send + 'static,
) -> Vec<TestServer> {
    use keycard_auth::{Password, ScramClient};
    let url = schema.url("sslmode=disable");
    let mut n = Vec::new();
    for name in ["n1", "n2", "n3"] {
        let (url, tweak) = (url.clone(), tweak.clone());
        n.push(
            common::start_with(move |c| {
                c.store = url.parse().expect("a postgres URL");
                c.node = name.into();
                tweak(c);
            })
            .await,
        );
    }
    let admin = Client::connect(n[0].addr()).await.expect("connect");
    admin
        .set_user(&ScramClient::new(user, Password::new(pw)))
        .await
        .expect("user");
    admin
        .request(
            Msg::new()
                .with("action", "set_auth_typ")
                .with("typ", keycard_auth::SCRAM_SHA_256),
        )
        .await
        .expect("current");
    n
}

/// Whether `c`'s `get_value` of `data.x` is refused for want of a login.
async fn refused(c: &mut Raw) -> bool {
    let v = c
        .call(req(9, "get_value").with("path", path("data.x")))
        .await;
    code(&v) == Some("auth_required")
}

/// Waits (up to 2 s) until the store holds `want` live keycard records.
async fn live_records_become(s: &TestServer, want: usize) {
    let root = Path::new(vec![keycard_proto::Elem::Nil, "live".into()]);
    let t = Instant::now();
    loop {
        let n = s
            .handle
            .state
            .store
            .scan_up_to(&root, Default::default(), 10_000)
            .await
            .expect("scan")
            .len();
        if n == want {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{n} live keycard records, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pct(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_configuration_and_watches_cross_nodes() {
    let schema = TestSchema::new();
    let n = nodes(&schema).await;

    // The first node made `_test` current: the others now require a
    // login too (their auth configuration came from the feed).
    for s in &n[1..] {
        let mut anon = Raw::connect(s.addr()).await;
        let mut seen = false;
        for _ in 0..100 {
            if refused(&mut anon).await {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(seen, "node {} still open", s.addr());
    }

    // A watch on each node; writes through every node.
    let admins = [root(&n[0]).await, root(&n[1]).await, root(&n[2]).await];
    let mut watches = Vec::new();
    for a in &admins {
        watches.push(a.watch(&p("w"), true).await.expect("watch"));
    }
    for w in &mut watches {
        // Each watch says it is up to date before the first write.
        loop {
            match w.next_event().await.expect("event").expect("ok") {
                Event::UpToDate => break,
                _ => continue,
            }
        }
    }
    let mut lags = Vec::new();
    let mut tocks = Vec::new();
    for i in 0..60i64 {
        let via = &admins[(i % 3) as usize];
        let t = Instant::now();
        let out = via
            .set(
                &p("w.k").child(keycard_proto::Elem::Int((i % 7) as i128)),
                i.into(),
            )
            .await
            .expect("set");
        tocks.push(out.tock);
        // Every node's watch sees it.
        for w in &mut watches {
            loop {
                let ev = tokio::time::timeout(Duration::from_secs(2), w.next_event())
                    .await
                    .expect("seen within 2 s")
                    .expect("event")
                    .expect("ok");
                if let Event::Item(item) = ev {
                    assert_eq!(item.value, Some(Value::from(i)));
                    assert_eq!(item.tock, out.tock, "the same tock on every node");
                    break;
                }
            }
            lags.push(t.elapsed());
        }
    }
    let mut sorted_tocks = tocks.clone();
    sorted_tocks.sort_unstable();
    assert_eq!(tocks, sorted_tocks, "tocks grow across nodes");
    lags.sort_unstable();
    eprintln!(
        "write → every node's watch: p50 {:?}, p99 {:?}, max {:?}",
        pct(&lags, 0.5),
        pct(&lags, 0.99),
        pct(&lags, 1.0)
    );
    assert!(pct(&lags, 0.99) < Duration::from_millis(200), "{lags:?}");

    // 3 nodes × 8 clients create the same paths: one winner each.
    let mut clients = Vec::new();
    for s in &n {
        for _ in 0..8 {
            clients.push(root(s).await);
        }
    }
    for round in 0..5i64 {
        let target = p("race").child(keycard_proto::Elem::Int(round as i128));
        let tasks: Vec<_> = clients
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, c)| {
                let target = target.clone();
                tokio::spawn(async move { c.create(&target, (i as i64).into()).await.is_ok() })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            won += usize::from(t.await.expect("join"));
        }
        assert_eq!(won, 1, "round {round}: {won} creators won");
    }

    // A chain read through one node holds on another.
    let got = call_ok(
        &admins[0],
        Msg::new()
            .with("action", "get_value")
            .with("path", path("w.k:0"))
            .with("nchain", 1),
    )
    .await;
    let chain = got.get("chain").cloned().expect("chain");
    let v = call_ok(
        &admins[2],
        Msg::new()
            .with("action", "set_value")
            .with("path", path("w.k:0"))
            .with("value", "chained")
            .with("chain", chain.clone()),
    )
    .await;
    assert!(v.get("tock").is_some(), "{v:?}");
    let again = admins[1]
        .request(
            Msg::new()
                .with("action", "set_value")
                .with("path", path("w.k:0"))
                .with("value", "stale")
                .with("chain", chain),
        )
        .await
        .expect_err("a stale chain");
    assert_eq!(again.code().map(|c| c.as_str()), Some("conflict"));

    // An ACL edited through one node binds on another at once (the
    // compiled copy there is dropped).
    let set_internal = |path: &str, value: Value| {
        let a = admins[0].clone();
        let path = p(path);
        async move {
            a.request(
                Msg::new()
                    .with("action", "set_internal")
                    .with_path("path", &path)
                    .with("value", value),
            )
            .await
            .expect("set_internal")
        }
    };
    set_internal("acl.ro.data.x", "r".into()).await;
    set_internal(
        "auth._test.user.ann.acl",
        Msg::new().with("key", "ro").into_value(),
    )
    .await;
    let ann_on_3 = common::login(&n[2], "_test", Some("ann")).await;
    assert!(ann_on_3.get(&p("data.x")).await.is_ok(), "ro reads data.x");
    set_internal("acl.ro.data.x", "w".into()).await;
    let t = Instant::now();
    loop {
        if ann_on_3.get(&p("data.x")).await.is_err() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "node 3 still applies the old ACL"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "an ACL edit on node 1 applied on node 3 after {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycards_are_listed_and_revoked_from_any_node() {
    let schema = TestSchema::new();
    let n = nodes(&schema).await;
    let admin = root(&n[0]).await;

    // joe logs in on node 2; node 1 lists that keycard and revokes it:
    // joe's connection on node 2 is closed.
    let mut lat = Vec::new();
    for round in 0..100 {
        let mut joe = raw_login(&n[1 + round % 2], "joe").await;
        let mut st = admin
            .stream(
                Msg::new()
                    .with("action", "keycard_list")
                    .with("user", "joe"),
            )
            .await
            .expect("list");
        let mut ids = Vec::new();
        while let Some(v) = st.next_raw().await {
            let v = v.expect("item");
            ids.push(v.get("id").and_then(Value::as_str).expect("id").to_owned());
        }
        assert_eq!(
            ids.len(),
            1,
            "round {round}: joe's keycard, listed on node 1"
        );
        let t = Instant::now();
        let r = call_ok(
            &admin,
            Msg::new()
                .with("action", "keycard_revoke")
                .with("id", ids[0].as_str()),
        )
        .await;
        assert_eq!(r.get("revoked").and_then(Value::as_u64), Some(1), "{r:?}");
        loop {
            match tokio::time::timeout(Duration::from_secs(2), joe.recv()).await {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => panic!("round {round}: joe's connection is still open after 2 s"),
            }
        }
        lat.push(t.elapsed());
        // It leaves its node, and its record goes: only the admin's is
        // left.
        let s = &n[1 + round % 2];
        wait_for("the revoked keycard to leave its node", || {
            s.handle.state.bouncer.is_empty()
        })
        .await;
        live_records_become(&n[0], 1).await;
    }
    lat.sort_unstable();
    eprintln!(
        "revoke on node 1 → the connection on another node closed: p50 {:?}, p99 {:?}",
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
    assert!(pct(&lat, 0.99) < Duration::from_millis(200), "{lat:?}");

    // Revoked by user through node 3: every node's keycards of ann end.
    let mut a1 = raw_login(&n[0], "ann").await;
    let mut a2 = raw_login(&n[1], "ann").await;
    let mut j = raw_login(&n[1], "joe").await;
    let admin3 = root(&n[2]).await;
    let r = call_ok(
        &admin3,
        Msg::new()
            .with("action", "keycard_revoke")
            .with("user", "ann"),
    )
    .await;
    assert_eq!(r.get("revoked").and_then(Value::as_u64), Some(2), "{r:?}");
    closed(&mut a1, "ann's connection on node 1").await;
    closed(&mut a2, "ann's connection on node 2").await;
    let v = j
        .call(req(5, "get_value").with("path", path("data.x")))
        .await;
    assert_eq!(v.get("value"), Some(&Value::from(1)), "joe unaffected");
    // A connection closed takes its record with it: the two admins' and
    // joe's are left.
    let gone = raw_login(&n[2], "ann").await;
    live_records_become(&n[0], 4).await;
    drop(gone);
    live_records_become(&n[0], 3).await;

    // joe's credential set again through node 1 (a credential change):
    // his sessions on nodes 2 and 3 end.
    let mut j3 = raw_login(&n[2], "joe").await;
    let joe = keycard_auth::ClientRegistry::make("_test", Some("joe")).expect("joe");
    admin.set_user(joe.as_ref()).await.expect("credential set");
    closed(&mut j, "joe's connection on node 2").await;
    closed(&mut j3, "joe's connection on node 3").await;

    // A user deleted through node 1 loses its sessions on node 2.
    let mut j = raw_login(&n[1], "joe").await;
    call_ok(
        &admin,
        Msg::new()
            .with("action", "auth_delete")
            .with("typ", "_test")
            .with("ident", "joe"),
    )
    .await;
    closed(&mut j, "joe's connection on node 2, after his deletion").await;
}

/// Waits (up to 2 s) for the server to close `c`.
async fn closed(c: &mut Raw, what: &str) {
    loop {
        match tokio::time::timeout(Duration::from_secs(2), c.recv()).await {
            Ok(Some(_)) => continue,
            Ok(None) => return,
            Err(_) => panic!("{what} is still open"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_holds_when_guesses_are_spread_over_the_nodes() {
    use keycard_auth::{Password, ScramClient};
    let schema = TestSchema::new();
    let n = scram_nodes(&schema, "alice", "alice-pw", |c| {
        c.throttle = keycard_server::ThrottleConfig {
            free: 100,
            source_limit: 6,
            cooldown_secs: 600,
            window_secs: 600,
            ..keycard_server::ThrottleConfig::default()
        };
        c.max_auth_attempts = 100;
    })
    .await;
    // Six wrong guesses from this address, two through each node: each
    // one fails as a wrong guess.
    for i in 0..6usize {
        let c = Client::connect(n[i % 3].addr()).await.expect("connect");
        let e = c
            .login(&ScramClient::new(
                format!("guess{i}"),
                Password::new("nope"),
            ))
            .await
            .expect_err("a wrong guess");
        assert_eq!(
            e.code(),
            Some(keycard_proto::ErrorCode::AuthFailed),
            "guess {i}: {e}"
        );
    }
    // The address is past its limit on every node, not on one only (each
    // node counted two of the six itself): the next attempt anywhere is
    // refused, once the counts have crossed (a failure is in the database
    // before it is answered; the nodes read it within their poll).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, s) in n.iter().enumerate() {
        let c = Client::connect(s.addr()).await.expect("connect");
        let e = c
            .login(&ScramClient::new("alice", Password::new("nope")))
            .await
            .expect_err("refused");
        assert_eq!(
            e.code(),
            Some(keycard_proto::ErrorCode::Throttled),
            "node {} lets the guesser in: {e}",
            i + 1
        );
    }
}

/// Many clients logging in as one user at once, spread over the nodes,
/// all get in: another node's attempts under way make a login wait its
/// turn, as the node's own do, and never count as failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_logins_of_one_user_over_the_nodes_all_get_in() {
    use keycard_auth::{Password, ScramClient};
    let schema = TestSchema::new();
    let n = scram_nodes(&schema, "svc", "svc-pw", |_| {}).await;
    for round in 0..3 {
        let tasks: Vec<_> = (0..16usize)
            .map(|i| {
                let addr = n[i % 3].addr();
                tokio::spawn(async move {
                    let c = Client::connect(addr).await.expect("connect");
                    c.login(&ScramClient::new("svc", Password::new("svc-pw")))
                        .await
                        .map(|_| c)
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let r = t.await.expect("join");
            assert!(r.is_ok(), "round {round}, login {i}: {:?}", r.err());
        }
    }
}
