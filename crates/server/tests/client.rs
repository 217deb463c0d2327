//! keycard's Rust client against a real server: many requests in flight on
//! one connection, streams as async iterators with acknowledgements, and a
//! watch that falls behind the live feed and catches up from the log.

mod common;

use std::time::Duration;

use common::{start, start_with, Raw};
use keycard_client::{Client, Event};
use keycard_proto::{Elem, Msg, Path, Value};

fn p(s: &str) -> Path {
    Path::parse(s).expect("path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_in_flight_on_one_connection() {
    let s = start().await;
    let c = Client::connect(s.addr()).await.expect("connect");
    let mut tasks = Vec::new();
    for i in 0..500i64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let path = p("many").child(Elem::Int(i.into()));
            c.set(&path, Value::from(i)).await.expect("set");
            c.get(&path).await.expect("get").map(|n| n.value)
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.expect("join"), Some(Value::from(i as i64)));
    }
    let items = c
        .get_tree(&p("many"), Some(1), None)
        .await
        .expect("tree")
        .collect()
        .await
        .expect("items");
    assert_eq!(items.len(), 500);
    // Path order: ints sort numerically.
    let order: Vec<_> = items.iter().map(|i| i.path.elems()[0].clone()).collect();
    assert_eq!(order, (0..500).map(Elem::Int).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_window_streams_a_large_tree_through_acks() {
    let s = start().await;
    let writer = Client::connect(s.addr()).await.expect("connect");
    for chunk in 0..10 {
        let mut tasks = Vec::new();
        for i in 0..200 {
            let c = writer.clone();
            let n = chunk * 200 + i;
            tasks.push(tokio::spawn(async move {
                c.set(&p("big").child(Elem::Int(n)), Value::from(n as i64))
                    .await
            }));
        }
        for t in tasks {
            t.await.expect("join").expect("set");
        }
    }
    let c = Client::connect_with_qlen(s.addr(), 4)
        .await
        .expect("connect");
    let items = c
        .get_tree(&p("big"), None, None)
        .await
        .expect("tree")
        .collect()
        .await
        .expect("items");
    assert_eq!(items.len(), 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_falls_behind_catches_up_from_the_change_log() {
    let s = start().await;
    // A raw watcher with a window of 4 that does not ack: its stream stalls
    // while 3000 changes go by (more than the live feed buffers).
    let mut w = Raw::connect(s.addr()).await;
    w.send(Msg::seq(0).with("qlen", 4)).await;
    w.send(
        Msg::seq(1)
            .with("action", "watch")
            .with_path("path", &p("lag")),
    )
    .await;
    let first = w.recv().await.expect("start");
    assert_eq!(first.get("state"), Some(&Value::from("start")));
    let c = Client::connect(s.addr()).await.expect("writer");
    for n in 0..3000i64 {
        c.set(&p("lag.k"), Value::from(n)).await.expect("set");
    }
    // Now read and ack everything: every change arrives once, in order.
    let mut values = Vec::new();
    let mut acked = 1;
    while values.len() < 3000 {
        let v = match w.try_recv(Duration::from_millis(500)).await {
            Some(Some(v)) => v,
            Some(None) => panic!("connection closed"),
            None => {
                panic!("stalled after {} values", values.len());
            }
        };
        let wseq = v.get("wseq").and_then(Value::as_u64).expect("wseq");
        assert!(v.get("error").is_none(), "{v:?}");
        values.push(v.get("value").and_then(Value::as_i64).expect("value"));
        if wseq >= acked + 2 {
            acked = wseq;
            w.send(Msg::seq(1).with("state", "ack").with("ack", wseq))
                .await;
        }
    }
    assert_eq!(values, (0..3000).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_behind_the_kept_history_is_told_so() {
    let s = start_with(|c| c.history = 100).await;
    let mut w = Raw::connect(s.addr()).await;
    w.send(Msg::seq(0).with("qlen", 2)).await;
    w.send(
        Msg::seq(1)
            .with("action", "watch")
            .with_path("path", &p("h")),
    )
    .await;
    let start = w.recv().await.expect("start");
    assert_eq!(start.get("wseq"), Some(&Value::from(1)));
    w.send(Msg::seq(1).with("state", "ack").with("ack", 1))
        .await;
    let c = Client::connect(s.addr()).await.expect("writer");
    for n in 0..2000i64 {
        c.set(&p("h.k"), Value::from(n)).await.expect("set");
    }
    let mut last = None;
    let mut gone = false;
    let mut acked = 0;
    for _ in 0..3000 {
        let Some(Some(v)) = w.try_recv(Duration::from_millis(500)).await else {
            break;
        };
        let wseq = v.get("wseq").and_then(Value::as_u64).unwrap_or(0);
        if wseq > acked {
            acked = wseq;
            w.send(Msg::seq(1).with("state", "ack").with("ack", wseq))
                .await;
        }
        let end = v.get("state") == Some(&Value::from("end"));
        gone |= common::code(&v) == Some("history_gone");
        last = Some(v);
        if end {
            break;
        }
    }
    // The stream ended, after an error naming the problem.
    let last = last.expect("messages");
    assert_eq!(last.get("state"), Some(&Value::from("end")), "{last:?}");
    assert!(gone, "a history_gone error came before the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_watch_reports_uptodate_and_deletions() {
    let s = start().await;
    let c = Client::connect(s.addr()).await.expect("connect");
    c.set(&p("cw.a"), 1.into()).await.expect("set");
    let mut w = c.watch(&p("cw"), true).await.expect("watch");
    let before = w.uptodate().await.expect("uptodate");
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].path, p("a"));
    c.delete(&p("cw.a")).await.expect("delete");
    c.set(&p("cw.b.c"), 2.into()).await.expect("set");
    let del = w.next().await.expect("item").expect("ok");
    assert_eq!((del.path, del.value), (p("a"), None));
    match w.next_event().await.expect("event").expect("ok") {
        Event::Item(i) => assert_eq!((i.path, i.value), (p("b.c"), Some(Value::from(2)))),
        other => panic!("unexpected {other:?}"),
    }
    assert!(c.stop(w.seq()).await.expect("stop"));
    assert!(w.next().await.is_none(), "the stream ends after stop");
}
