//! The msgpack protocol, black-box: a real server on a temp dir and a free
//! port, driven with raw messages.

mod common;

use std::time::Duration;

use common::{code, path, req, start, start_with, Raw};
use keycard_proto::{Msg, Value};

fn items(stream: &[Value]) -> Vec<&Value> {
    stream
        .iter()
        .filter(|v| v.get("state").is_none() && v.get("error").is_none())
        .collect()
}

fn arr(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        other => panic!("not an array: {other:?}"),
    }
}

#[tokio::test]
async fn greeting_has_distkv_fields_and_no_auth_until_configured() {
    let s = start().await;
    let c = Raw::connect(s.addr()).await;
    let g = &c.greeting;
    assert_eq!(g.get("seq"), Some(&Value::from(0)));
    assert_eq!(
        g.get("version"),
        Some(&Value::Array(vec![0.into(), 65.into(), 0.into()]))
    );
    assert_eq!(g.get("node"), Some(&Value::from("test-node")));
    assert!(g.get("tick").and_then(Value::as_u64).is_some());
    // The only writes so far: the server secret and the OPAQUE setup,
    // created at first start.
    assert_eq!(g.get("tock"), Some(&Value::from(2)));
    assert_eq!(g.get("qlen"), Some(&Value::from(10)));
    assert!(g.get("auth").is_none(), "no auth key on a fresh server");
}

#[tokio::test]
async fn set_get_delete_with_conditions() {
    let s = start().await;
    let mut c = Raw::connect(s.addr()).await;
    let t0 = c
        .greeting
        .get("tock")
        .and_then(Value::as_u64)
        .expect("tock");
    let r = c
        .call(
            req(1, "set_value")
                .with("path", path("a.b"))
                .with("value", 1)
                .with("nchain", 0),
        )
        .await;
    assert_eq!(r.get("changed"), Some(&Value::Bool(true)));
    assert_eq!(r.get("tock"), Some(&Value::from(t0 + 1)));
    assert!(r.get("prev").is_none() && r.get("chain").is_none());

    let r = c.call(req(2, "get_value").with("path", path("a.b"))).await;
    assert_eq!(r.get("value"), Some(&Value::from(1)));
    assert_eq!(r.get("tock"), Some(&Value::from(t0 + 1)));
    let r = c
        .call(req(3, "get_value").with("path", path("a.nope")))
        .await;
    assert!(
        r.get("value").is_none(),
        "missing node has no value key: {r:?}"
    );
    assert!(r.get("error").is_none());

    // Overwrite: prev comes back; default nchain (1) adds a chain.
    let r = c
        .call(
            req(4, "set_value")
                .with("path", path("a.b"))
                .with("value", 2),
        )
        .await;
    assert_eq!(r.get("prev"), Some(&Value::from(1)));
    assert!(r.get("chain").is_some());
    // Same value: written, but not changed (DistKV).
    let r = c
        .call(
            req(5, "set_value")
                .with("path", path("a.b"))
                .with("value", 2)
                .with("nchain", 0),
        )
        .await;
    assert_eq!(r.get("changed"), Some(&Value::Bool(false)));
    // idem: not even written.
    let tock = c.call(req(6, "get_tock")).await.get("tock").cloned();
    let r = c
        .call(
            req(7, "set_value")
                .with("path", path("a.b"))
                .with("value", 2)
                .with("idem", true),
        )
        .await;
    assert_eq!(r.get("changed"), Some(&Value::Bool(false)));
    assert_eq!(c.call(req(8, "get_tock")).await.get("tock").cloned(), tock);

    // prev must match; nil does not match a missing node.
    let r = c
        .call(
            req(9, "set_value")
                .with("path", path("a.b"))
                .with("value", 3)
                .with("prev", 9),
        )
        .await;
    assert_eq!(code(&r), Some("conflict"));
    let r = c
        .call(
            req(10, "set_value")
                .with("path", path("a.new"))
                .with("value", 3)
                .with("prev", Value::Nil),
        )
        .await;
    assert_eq!(code(&r), Some("conflict"));
    let r = c
        .call(
            req(11, "set_value")
                .with("path", path("a.b"))
                .with("value", 3)
                .with("prev", 2),
        )
        .await;
    assert!(r.get("error").is_none(), "{r:?}");
    assert!(
        r.get("prev").is_none(),
        "no prev when a condition was given"
    );
    // chain: nil = must be new.
    let r = c
        .call(
            req(12, "set_value")
                .with("path", path("a.b"))
                .with("value", 4)
                .with("chain", Value::Nil),
        )
        .await;
    assert_eq!(code(&r), Some("conflict"));
    let r = c
        .call(
            req(13, "set_value")
                .with("path", path("a.c"))
                .with("value", 4)
                .with("chain", Value::Nil),
        )
        .await;
    assert_eq!(r.get("changed"), Some(&Value::Bool(true)));
    // chain from a reply: matches only that version.
    let chain = r.get("chain").cloned().expect("chain");
    let r = c
        .call(
            req(14, "set_value")
                .with("path", path("a.c"))
                .with("value", 5)
                .with("chain", chain.clone()),
        )
        .await;
    assert!(r.get("error").is_none(), "{r:?}");
    let r = c
        .call(
            req(15, "set_value")
                .with("path", path("a.c"))
                .with("value", 6)
                .with("chain", chain),
        )
        .await;
    assert_eq!(code(&r), Some("conflict"));

    let r = c
        .call(req(16, "delete_value").with("path", path("a.b")))
        .await;
    assert_eq!(
        (r.get("changed"), r.get("prev")),
        (Some(&Value::Bool(true)), Some(&Value::from(3)))
    );
    let r = c
        .call(req(17, "delete_value").with("path", path("a.b")))
        .await;
    assert_eq!(r.get("changed"), Some(&Value::Bool(false)));
    assert!(r.get("error").is_none());

    // Malformed requests are errors, the connection stays.
    let r = c.call(req(18, "set_value").with("path", path("a.b"))).await;
    assert_eq!(code(&r), Some("bad_request"));
    let r = c
        .call(
            req(19, "delete_value")
                .with("path", path("a.b"))
                .with("value", 1),
        )
        .await;
    assert_eq!(code(&r), Some("bad_request"));
    let r = c.call(req(20, "get_value")).await;
    assert_eq!(code(&r), Some("bad_request"));
    let r = c
        .call(req(21, "get_value").with("path", Value::Array(vec![Value::Map(vec![])])))
        .await;
    assert_eq!(code(&r), Some("bad_request"));
    let r = c.call(req(22, "get_value").with("path", path("a.c"))).await;
    assert_eq!(r.get("value"), Some(&Value::from(5)));
}

#[tokio::test]
async fn plain_array_paths_and_all_element_types() {
    let s = start().await;
    let mut c = Raw::connect(s.addr()).await;
    let p = Value::Array(vec![
        "x".into(),
        Value::Int(-5),
        Value::Bool(true),
        Value::F64(1.5),
        Value::Bin(vec![0, 1]),
        Value::Int(1i128 << 70),
    ]);
    let big = Value::Int(u64::MAX as i128 + 7);
    c.call(
        req(1, "set_value")
            .with("path", p.clone())
            .with("value", big.clone()),
    )
    .await;
    let ext = Value::Ext(77, vec![1, 2, 3]);
    c.call(
        req(2, "set_value")
            .with("path", path("y"))
            .with("value", ext.clone()),
    )
    .await;
    let r = c
        .call(
            req(3, "get_value").with(
                "path",
                keycard_proto::Path::from_value(&p)
                    .expect("path")
                    .to_value(),
            ),
        )
        .await;
    assert_eq!(r.get("value"), Some(&big));
    let r = c.call(req(4, "get_value").with("path", path("y"))).await;
    assert_eq!(r.get("value"), Some(&ext), "unknown extensions round-trip");
    // 1 and true and 1.0 are three different nodes.
    for (i, e) in [Value::Int(1), Value::Bool(true), Value::F64(1.0)]
        .into_iter()
        .enumerate()
    {
        c.call(
            req(10 + i as i64, "set_value")
                .with("path", Value::Array(vec!["t".into(), e]))
                .with("value", i),
        )
        .await;
    }
    let r = c.call(req(20, "enum").with("path", path("t"))).await;
    assert_eq!(arr(r.get("result").expect("result")).len(), 3);
}

#[tokio::test]
async fn get_tree_order_depth_compression_and_limits() {
    let s = start().await;
    let mut c = Raw::connect(s.addr()).await;
    for (i, p) in ["t", "t.a", "t.a.b.c", "t.a.b.d", "t.a.e", "t.f", "u"]
        .iter()
        .enumerate()
    {
        c.call(
            req(i as i64 + 1, "set_value")
                .with("path", path(p))
                .with("value", i),
        )
        .await;
    }
    let st = c
        .call_stream(req(20, "get_tree").with("path", path("t")))
        .await;
    assert_eq!(
        st.first().and_then(|v| v.get("state")),
        Some(&Value::from("start"))
    );
    assert_eq!(
        st.last().and_then(|v| v.get("state")),
        Some(&Value::from("end"))
    );
    // wseq numbers every stream message.
    let wseqs: Vec<_> = st
        .iter()
        .map(|v| v.get("wseq").and_then(Value::as_u64).expect("wseq"))
        .collect();
    assert_eq!(wseqs, (1..=st.len() as u64).collect::<Vec<_>>());
    let got: Vec<(Vec<Value>, u64, Value)> = items(&st)
        .iter()
        .map(|v| {
            (
                arr(v.get("path").expect("path")),
                v.get("depth").and_then(Value::as_u64).expect("depth"),
                v.get("value").cloned().expect("value"),
            )
        })
        .collect();
    let s_ = |x: &str| Value::from(x);
    assert_eq!(
        got,
        vec![
            (vec![], 0, 0.into()),
            (vec![s_("a")], 0, 1.into()),
            (vec![s_("b"), s_("c")], 1, 2.into()),
            (vec![s_("d")], 2, 3.into()),
            (vec![s_("e")], 1, 4.into()),
            (vec![s_("f")], 0, 5.into()),
        ]
    );
    let st = c
        .call_stream(
            req(21, "get_tree")
                .with("path", path("t"))
                .with("min_depth", 1)
                .with("max_depth", 1),
        )
        .await;
    let names: Vec<_> = items(&st)
        .iter()
        .map(|v| arr(v.get("path").expect("p")))
        .collect();
    assert_eq!(names, vec![vec![s_("a")], vec![s_("f")]]);
    // empty: value-less interior nodes (t.a.b) appear without a value.
    let st = c
        .call_stream(
            req(22, "get_tree")
                .with("path", path("t"))
                .with("empty", true)
                .with("min_depth", 2),
        )
        .await;
    let it = items(&st);
    assert_eq!(it.len(), 4, "{it:?}"); // a.b (empty), a.b.c, a.b.d, a.e
    assert!(it[0].get("value").is_none());
    assert_eq!(arr(it[0].get("path").expect("p")), vec![s_("a"), s_("b")]);
    // nchain adds chains.
    let st = c
        .call_stream(
            req(23, "get_tree")
                .with("path", path("t.f"))
                .with("nchain", 1),
        )
        .await;
    assert!(items(&st)[0].get("chain").is_some());
    // enum: valued children, with data, with empty.
    let r = c.call(req(24, "enum").with("path", path("t.a"))).await;
    assert_eq!(arr(r.get("result").expect("r")), vec![s_("e")]);
    let r = c
        .call(
            req(25, "enum")
                .with("path", path("t.a"))
                .with("empty", true),
        )
        .await;
    assert_eq!(arr(r.get("result").expect("r")), vec![s_("b"), s_("e")]);
    let r = c
        .call(
            req(26, "enum")
                .with("path", path("t"))
                .with("with_data", true),
        )
        .await;
    assert_eq!(
        r.get("result"),
        Some(&Value::Map(vec![(s_("a"), 1.into()), (s_("f"), 5.into())]))
    );
    // delete_tree.
    let r = c
        .call(req(27, "delete_tree").with("path", path("t.a")))
        .await;
    assert_eq!(r.get("changed"), Some(&Value::from(4)));
    let st = c
        .call_stream(req(28, "get_tree").with("path", path("t")))
        .await;
    assert_eq!(items(&st).len(), 2);
}

#[tokio::test]
async fn watch_sends_state_then_uptodate_then_live_changes() {
    let s = start().await;
    let mut w = Raw::connect(s.addr()).await;
    let mut c = Raw::connect(s.addr()).await;
    c.call(
        req(1, "set_value")
            .with("path", path("w.old"))
            .with("value", "old"),
    )
    .await;
    w.send(req(1, "watch").with("path", path("w")).with("fetch", true))
        .await;
    let mut got = Vec::new();
    while got.last().and_then(|v: &Value| v.get("state")) != Some(&Value::from("uptodate")) {
        got.push(w.recv().await.expect("msg"));
    }
    assert_eq!(got.len(), 3, "start, old, uptodate: {got:?}");
    assert_eq!(got[1].get("value"), Some(&Value::from("old")));
    c.call(
        req(2, "set_value")
            .with("path", path("w.new"))
            .with("value", "new"),
    )
    .await;
    c.call(
        req(3, "set_value")
            .with("path", path("elsewhere"))
            .with("value", 0),
    )
    .await;
    c.call(req(4, "delete_value").with("path", path("w.old")))
        .await;
    let live = w.recv().await.expect("live change");
    assert_eq!(live.get("value"), Some(&Value::from("new")));
    assert_eq!(
        arr(live.get("path").expect("path")),
        vec![Value::from("new")]
    );
    let del = w.recv().await.expect("deletion");
    assert!(del.get("value").is_none(), "deletion has no value: {del:?}");
    assert_eq!(
        arr(del.get("path").expect("path")),
        vec![Value::from("old")]
    );
    // stop ends the stream.
    let r = w.call(req(2, "stop").with("task", 1)).await;
    assert_eq!(r.get("result"), Some(&Value::Bool(true)));
    let end = w.recv().await.expect("end");
    assert_eq!(
        (end.get("seq"), end.get("state")),
        (Some(&Value::from(1)), Some(&Value::from("end")))
    );
    let r = w.call(req(3, "stop").with("task", 1)).await;
    assert_eq!(r.get("result"), Some(&Value::Bool(false)));
}

#[tokio::test]
async fn flow_control_stalls_only_the_unacknowledged_stream() {
    let s = start().await;
    let mut c = Raw::connect(s.addr()).await;
    c.send(Msg::seq(0).with("qlen", 4)).await;
    let mut other = Raw::connect(s.addr()).await;
    for i in 0..20 {
        other
            .call(
                req(i + 1, "set_value")
                    .with("path", path(&format!("f.k{i:02}")))
                    .with("value", i),
            )
            .await;
    }
    c.send(req(1, "get_tree").with("path", path("f"))).await;
    // qlen 4: at most 3 unacknowledged messages.
    let mut got = Vec::new();
    while let Some(Some(v)) = c.try_recv(Duration::from_millis(300)).await {
        got.push(v);
    }
    assert_eq!(
        got.len(),
        3,
        "held back after qlen-1 unacknowledged: {got:?}"
    );
    // The same connection still answers other requests...
    let r = c
        .call(req(2, "get_value").with("path", path("f.k00")))
        .await;
    assert_eq!(r.get("value"), Some(&Value::from(0)));
    // ...and so does another client.
    let r = other
        .call(req(100, "get_value").with("path", path("f.k01")))
        .await;
    assert_eq!(r.get("value"), Some(&Value::from(1)));
    // Acknowledging releases the stream.
    let mut total = got.len();
    let mut last_wseq = 3;
    loop {
        c.send(Msg::seq(1).with("state", "ack").with("ack", last_wseq))
            .await;
        let mut progressed = false;
        while let Some(Some(v)) = c.try_recv(Duration::from_millis(200)).await {
            progressed = true;
            total += 1;
            last_wseq = v.get("wseq").and_then(Value::as_u64).expect("wseq");
            if v.get("state") == Some(&Value::from("end")) {
                assert_eq!(total, 22, "start + 20 items + end");
                return;
            }
        }
        assert!(progressed, "an ack must release more messages");
    }
}

#[tokio::test]
async fn root_confines_the_connection() {
    let s = start().await;
    let mut c = Raw::connect(s.addr()).await;
    c.call(
        req(1, "set_value")
            .with("path", path("outside"))
            .with("value", 1),
    )
    .await;
    c.call(
        req(2, "set_value")
            .with("path", path("jail.inside"))
            .with("value", 2),
    )
    .await;
    let r = c.call(req(3, "root").with("path", path("jail"))).await;
    assert_eq!(r.get("path"), Some(&Value::Array(vec![])));
    let r = c
        .call(req(4, "get_value").with("path", path("inside")))
        .await;
    assert_eq!(r.get("value"), Some(&Value::from(2)));
    let r = c
        .call(req(5, "get_value").with("path", path("outside")))
        .await;
    assert!(r.get("value").is_none(), "outside is not reachable: {r:?}");
    c.call(
        req(6, "set_value")
            .with("path", path("new"))
            .with("value", 3),
    )
    .await;
    // Nil elements cannot climb out or into the reserved root.
    let r = c
        .call(req(7, "get_value").with("path", path(":n.auth")))
        .await;
    assert_eq!(code(&r), Some("reserved_path"));
    // Everything the jailed client sees is under jail.
    let st = c
        .call_stream(req(8, "get_tree").with("path", Value::Array(vec![])))
        .await;
    assert_eq!(items(&st).len(), 2);
    let mut d = Raw::connect(s.addr()).await;
    let r = d
        .call(req(1, "get_value").with("path", path("jail.new")))
        .await;
    assert_eq!(r.get("value"), Some(&Value::from(3)));
}

#[tokio::test]
async fn reserved_root_is_refused_to_every_data_action() {
    let s = start().await;
    let mut c = Raw::connect(s.addr()).await;
    let reserved = path(":n.auth");
    for (i, action) in [
        "get_value",
        "set_value",
        "delete_value",
        "get_tree",
        "enum",
        "watch",
        "root",
        "delete_tree",
    ]
    .iter()
    .enumerate()
    {
        let r = c
            .call(
                req(i as i64 + 1, action)
                    .with("path", reserved.clone())
                    .with("value", 1),
            )
            .await;
        assert_eq!(code(&r), Some("reserved_path"), "{action}: {r:?}");
    }
    // The management actions reach it (the server is open: super-root).
    let r = c
        .call(
            req(20, "set_internal")
                .with("path", path("cfg.x"))
                .with("value", 7),
        )
        .await;
    assert!(r.get("error").is_none(), "{r:?}");
    let r = c
        .call(req(21, "get_internal").with("path", path("cfg.x")))
        .await;
    assert_eq!(r.get("value"), Some(&Value::from(7)));
    let r = c
        .call(req(22, "enum_internal").with("path", path("cfg")))
        .await;
    assert_eq!(r.get("result"), Some(&Value::Array(vec!["x".into()])));
    let r = c
        .call(req(23, "delete_internal").with("path", path("cfg.x")))
        .await;
    assert_eq!(r.get("changed"), Some(&Value::Bool(true)));
}

#[tokio::test]
async fn hostile_messages_get_errors_and_the_connection_survives() {
    let s = start().await;
    let mut c = Raw::connect(s.addr()).await;
    // Not a map.
    c.send(Value::Array(vec![1.into()])).await;
    let r = c.recv().await.expect("error");
    assert_eq!(code(&r), Some("bad_request"));
    // No seq.
    c.send(Msg::new().with("action", "get_tock")).await;
    assert_eq!(code(&c.recv().await.expect("error")), Some("bad_request"));
    // seq not an int.
    c.send(Msg::new().with("seq", "x").with("action", "get_tock"))
        .await;
    assert_eq!(code(&c.recv().await.expect("error")), Some("bad_request"));
    // Unknown action: an error, not a hang-up (DistKV hangs up).
    let r = c.call(req(1, "frobnicate")).await;
    assert_eq!(code(&r), Some("unknown_action"));
    // action not a string.
    c.send(Msg::seq(2).with("action", 5)).await;
    assert_eq!(code(&c.recv().await.expect("error")), Some("bad_request"));
    // A message without action for no request.
    c.send(Msg::seq(77).with("data", 1)).await;
    assert_eq!(code(&c.recv().await.expect("error")), Some("bad_request"));
    // A new request reusing an outstanding seq.
    c.send(req(5, "watch").with("path", path("w"))).await;
    let start_msg = c.recv().await.expect("start");
    assert_eq!(start_msg.get("state"), Some(&Value::from("start")));
    c.send(req(5, "get_tock")).await;
    let r = c.recv().await.expect("error");
    assert_eq!(code(&r), Some("seq_in_use"));
    // Still serving.
    let r = c.call(req(6, "get_tock")).await;
    assert!(r.get("tock").is_some());
}

#[tokio::test]
async fn oversized_and_truncated_input_close_cleanly_and_others_are_served() {
    let s = start_with(|c| c.max_message = 64 * 1024).await;
    let mut bystander = Raw::connect(s.addr()).await;
    // A header announcing 1 GiB: refused at once, connection closed.
    let mut c = Raw::connect(s.addr()).await;
    c.send_bytes(&[0xc6, 0x40, 0, 0, 0]).await;
    let r = c.recv().await.expect("error before close");
    assert_eq!(code(&r), Some("too_large"));
    assert!(c.recv().await.is_none(), "then the connection closes");
    // A real message over the limit.
    let mut c = Raw::connect(s.addr()).await;
    c.send(
        req(1, "set_value")
            .with("path", path("x"))
            .with("value", Value::Bin(vec![0; 100_000])),
    )
    .await;
    assert_eq!(code(&c.recv().await.expect("error")), Some("too_large"));
    assert!(c.recv().await.is_none());
    // Deep nesting.
    let mut c = Raw::connect(s.addr()).await;
    c.send_bytes(&[0x91; 200]).await;
    assert_eq!(code(&c.recv().await.expect("error")), Some("too_large"));
    // Invalid bytes.
    let mut c = Raw::connect(s.addr()).await;
    c.send_bytes(&[0xc1]).await;
    assert_eq!(code(&c.recv().await.expect("error")), Some("bad_request"));
    // Truncated message, then hang up.
    let mut c = Raw::connect(s.addr()).await;
    let bytes = keycard_proto::encode(&req(1, "get_tock").into_value());
    c.send_bytes(&bytes[..bytes.len() - 2]).await;
    drop(c);
    // Disconnect in the middle of a stream.
    for i in 0..200 {
        bystander
            .call(
                req(i + 1, "set_value")
                    .with("path", path(&format!("big.k{i}")))
                    .with("value", i),
            )
            .await;
    }
    let mut c = Raw::connect(s.addr()).await;
    c.send(Msg::seq(0).with("qlen", 4)).await;
    c.send(req(1, "get_tree").with("path", path("big"))).await;
    c.send(req(2, "watch").with("path", path("big"))).await;
    let _ = c.recv().await;
    drop(c);
    let r = bystander
        .call(req(1000, "get_value").with("path", path("big.k7")))
        .await;
    assert_eq!(r.get("value"), Some(&Value::from(7)));
}

#[tokio::test]
async fn outstanding_request_limit_is_a_clear_error() {
    let s = start_with(|c| c.max_outstanding = 4).await;
    let mut c = Raw::connect(s.addr()).await;
    for i in 1..=4 {
        c.send(req(i, "watch").with("path", path(&format!("w{i}"))))
            .await;
    }
    let mut starts = 0;
    while starts < 4 {
        if c.recv().await.expect("start").get("state") == Some(&Value::from("start")) {
            starts += 1;
        }
    }
    let r = c.call(req(5, "get_tock")).await;
    assert_eq!(code(&r), Some("too_many_requests"));
    c.call(req(6, "stop").with("task", 1)).await;
}
