//! The redb store against its contract, and against a BTreeMap model.

use std::collections::BTreeMap;
use std::sync::Arc;

use keycard_proto::{Elem, Path, Value};
use keycard_store::{After, Cond, Op, RedbOptions, RedbStore, ScanOpts, Store, StoreError, Tock};
use proptest::prelude::*;

fn p(s: &str) -> Path {
    Path::parse(s).expect("test path")
}

fn open(dir: &tempfile::TempDir) -> RedbStore {
    RedbStore::open(&dir.path().join("kc.redb"), RedbOptions::default()).expect("open")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn put_get_delete_and_conditions() {
    let dir = tempfile::tempdir().expect("tmp");
    rt().block_on(async {
        let s = open(&dir);
        assert_eq!(s.get(&p("a.b")).await, Ok(None));
        let out = s
            .write(vec![Op::put(p("a.b"), 1.into())])
            .await
            .expect("put");
        assert!(out[0].changed);
        assert_eq!(out[0].prev, None);
        assert_eq!(out[0].tock, Tock(1));
        let e = s.get(&p("a.b")).await.expect("get").expect("present");
        assert_eq!((e.value, e.tock), (Value::from(1), Tock(1)));

        // Must-be-new fails on an existing node, and changes nothing.
        let err = s
            .write(vec![Op::Put {
                path: p("a.b"),
                value: 2.into(),
                cond: Cond::Absent,
                idem: false,
            }])
            .await;
        assert!(matches!(err, Err(StoreError::Conflict { index: 0, .. })));
        // prev must match.
        let err = s
            .write(vec![Op::Put {
                path: p("a.b"),
                value: 2.into(),
                cond: Cond::Equals(5.into()),
                idem: false,
            }])
            .await;
        assert!(matches!(err, Err(StoreError::Conflict { .. })));
        let out = s
            .write(vec![Op::Put {
                path: p("a.b"),
                value: 2.into(),
                cond: Cond::Equals(1.into()),
                idem: false,
            }])
            .await
            .expect("cond put");
        assert_eq!(out[0].prev, Some(1.into()));
        assert_eq!(s.tock(), Tock(2));
        // idem: unchanged value is not written.
        let out = s
            .write(vec![Op::Put {
                path: p("a.b"),
                value: 2.into(),
                cond: Cond::Any,
                idem: true,
            }])
            .await
            .expect("idem");
        assert!(!out[0].changed);
        assert_eq!(s.tock(), Tock(2));
        // TockIs.
        let err = s
            .write(vec![Op::Delete {
                path: p("a.b"),
                cond: Cond::TockIs(Tock(1)),
            }])
            .await;
        assert!(matches!(err, Err(StoreError::Conflict { .. })));
        let out = s
            .write(vec![Op::Delete {
                path: p("a.b"),
                cond: Cond::TockIs(Tock(2)),
            }])
            .await
            .expect("delete");
        assert!(out[0].changed);
        assert_eq!(out[0].prev, Some(2.into()));
        // Deleting a missing node is not an error and changes nothing.
        let out = s
            .write(vec![Op::delete(p("a.b"))])
            .await
            .expect("delete missing");
        assert!(!out[0].changed);
        assert_eq!(s.tock(), Tock(3));
    });
}

#[test]
fn batches_are_atomic() {
    let dir = tempfile::tempdir().expect("tmp");
    rt().block_on(async {
        let s = open(&dir);
        let err = s
            .write(vec![
                Op::put(p("x"), 1.into()),
                Op::put(p("y"), 2.into()),
                Op::Put {
                    path: p("x"),
                    value: 3.into(),
                    cond: Cond::Absent,
                    idem: false,
                },
            ])
            .await;
        assert!(matches!(err, Err(StoreError::Conflict { index: 2, .. })));
        assert_eq!(s.get(&p("x")).await, Ok(None));
        assert_eq!(s.get(&p("y")).await, Ok(None));
        assert_eq!(s.tock(), Tock(0));
        // Later ops see earlier ones.
        let out = s
            .write(vec![
                Op::put(p("x"), 1.into()),
                Op::Put {
                    path: p("x"),
                    value: 3.into(),
                    cond: Cond::Equals(1.into()),
                    idem: false,
                },
            ])
            .await
            .expect("batch");
        assert_eq!(out[1].prev, Some(1.into()));
        assert_eq!(out[1].tock, Tock(2));
        assert_eq!(
            s.get(&p("x")).await.expect("get").map(|e| e.value),
            Some(3.into())
        );
    });
}

#[test]
fn tock_and_data_survive_reopen() {
    let dir = tempfile::tempdir().expect("tmp");
    rt().block_on(async {
        {
            let s = open(&dir);
            for i in 0..10 {
                s.write(vec![Op::put(p("k").child(Elem::Int(i)), i.into())])
                    .await
                    .expect("put");
            }
            assert_eq!(s.tock(), Tock(10));
        }
        // The writer thread holds the file until it has seen the sender go.
        let s = loop {
            match RedbStore::open(&dir.path().join("kc.redb"), RedbOptions::default()) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        };
        assert_eq!(s.tock(), Tock(10));
        let out = s
            .write(vec![Op::put(p("k.new"), 1.into())])
            .await
            .expect("put");
        assert_eq!(out[0].tock, Tock(11));
        assert_eq!(
            s.scan(&p("k"), ScanOpts::default(), After::Start, 100)
                .await
                .expect("scan")
                .items
                .len(),
            11
        );
    });
}

#[test]
fn change_log_serves_history_and_reports_what_is_gone() {
    let dir = tempfile::tempdir().expect("tmp");
    rt().block_on(async {
        let opts = RedbOptions {
            history: 5,
            ..RedbOptions::default()
        };
        let s = RedbStore::open(&dir.path().join("kc.redb"), opts).expect("open");
        let mut feed = s.subscribe();
        s.write(vec![Op::put(p("a"), 1.into())]).await.expect("put");
        s.write(vec![Op::delete(p("a"))]).await.expect("del");
        let live = feed.recv().await.expect("feed");
        assert_eq!(
            (live.path.clone(), live.value.clone(), live.tock),
            (p("a"), Some(1.into()), Tock(1))
        );
        let live = feed.recv().await.expect("feed");
        assert_eq!(live.value, None);
        let ch = s.changes_since(Tock(0), 10).await.expect("changes");
        assert_eq!(ch.len(), 2);
        assert_eq!(ch[1].value, None);
        for i in 0..10 {
            s.write(vec![Op::put(p("b"), i.into())]).await.expect("put");
        }
        assert_eq!(s.tock(), Tock(12));
        assert!(matches!(
            s.changes_since(Tock(0), 10).await,
            Err(StoreError::HistoryGone { oldest: 8 })
        ));
        let ch = s.changes_since(Tock(7), 100).await.expect("kept");
        assert_eq!(
            ch.iter().map(|c| c.tock.0).collect::<Vec<_>>(),
            vec![8, 9, 10, 11, 12]
        );
    });
}

#[test]
fn concurrent_writers_share_commits() {
    let dir = tempfile::tempdir().expect("tmp");
    rt().block_on(async {
        let s = Arc::new(open(&dir));
        let mut tasks = Vec::new();
        for i in 0..256i64 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.write(vec![Op::put(p("w").child(Elem::Int(i as i128)), i.into())])
                    .await
            }));
        }
        let mut tocks = Vec::new();
        for t in tasks {
            tocks.push(t.await.expect("join").expect("write")[0].tock.0);
        }
        tocks.sort_unstable();
        tocks.dedup();
        assert_eq!(tocks.len(), 256, "every write got its own tock");
        assert_eq!(s.tock(), Tock(256));
        assert!(
            s.commits() < 256,
            "group commit: {} commits for 256 writes",
            s.commits()
        );
    });
}

#[test]
fn scan_depth_limits_skip_subtrees() {
    let dir = tempfile::tempdir().expect("tmp");
    rt().block_on(async {
        let s = open(&dir);
        let paths = ["r", "r.a", "r.a.x", "r.a.x.deep", "r.b", "r.b.y", "s"];
        s.write(paths.iter().map(|x| Op::put(p(x), 0.into())).collect())
            .await
            .expect("put");
        let names = |v: Vec<(Path, keycard_store::Entry)>| {
            v.into_iter()
                .map(|(p, _)| p.to_string())
                .collect::<Vec<_>>()
        };
        let all = s
            .scan(&p("r"), ScanOpts::default(), After::Start, 100)
            .await
            .expect("scan")
            .items;
        assert_eq!(
            names(all),
            ["r", "r.a", "r.a.x", "r.a.x.deep", "r.b", "r.b.y"]
        );
        let one = s
            .scan(
                &p("r"),
                ScanOpts {
                    min_depth: 1,
                    max_depth: Some(1),
                },
                After::Start,
                100,
            )
            .await
            .expect("scan")
            .items;
        assert_eq!(names(one), ["r.a", "r.b"]);
        let two = s
            .scan(
                &p("r"),
                ScanOpts {
                    min_depth: 2,
                    max_depth: Some(2),
                },
                After::Start,
                100,
            )
            .await
            .expect("scan")
            .items;
        assert_eq!(names(two), ["r.a.x", "r.b.y"]);
        // Paging.
        let first = s
            .scan(&p("r"), ScanOpts::default(), After::Start, 2)
            .await
            .expect("scan")
            .items;
        let rest = s
            .scan(&p("r"), ScanOpts::default(), After::Node(&first[1].0), 100)
            .await
            .expect("scan")
            .items;
        assert_eq!(names(rest), ["r.a.x", "r.a.x.deep", "r.b", "r.b.y"]);
        let skip = s
            .scan(&p("r"), ScanOpts::default(), After::Subtree(&p("r.a")), 100)
            .await
            .expect("scan")
            .items;
        assert_eq!(names(skip), ["r.b", "r.b.y"]);
    });
}

#[derive(Clone, Debug)]
enum ModelOp {
    Put(Path, i64, u8),
    Delete(Path, u8),
}

fn small_path() -> impl Strategy<Value = Path> {
    let elem = prop_oneof![
        Just(Elem::Nil),
        Just(Elem::Bool(true)),
        (0i128..3).prop_map(Elem::Int),
        Just(Elem::Float(1.0)),
        prop_oneof![Just("a"), Just("b"), Just("")].prop_map(|s| Elem::Str(s.into())),
        Just(Elem::Bin(vec![0])),
    ];
    proptest::collection::vec(elem, 0..4).prop_map(Path::new)
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        (small_path(), 0i64..4, 0u8..3).prop_map(|(p, v, c)| ModelOp::Put(p, v, c)),
        (small_path(), 0u8..3).prop_map(|(p, c)| ModelOp::Delete(p, c)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random conditional puts and deletes, then random scans: the store
    /// agrees with a BTreeMap<Path, (value, tock)> written by hand.
    #[test]
    fn store_matches_model(ops in proptest::collection::vec(model_op(), 1..40),
                           scans in proptest::collection::vec((small_path(), 0usize..3, proptest::option::of(0usize..3)), 1..6)) {
        let dir = tempfile::tempdir().expect("tmp");
        rt().block_on(async {
            let s = open(&dir);
            let mut model: BTreeMap<Path, (Value, u64)> = BTreeMap::new();
            let mut tock = 0u64;
            for op in ops {
                // cond: 0 any, 1 absent, 2 equals 1
                let (path, c) = match &op { ModelOp::Put(p, _, c) | ModelOp::Delete(p, c) => (p.clone(), *c) };
                let cur = model.get(&path).cloned();
                let ok = match c { 0 => true, 1 => cur.is_none(), _ => cur.as_ref().map(|x| &x.0) == Some(&Value::from(1)) };
                let cond = match c { 0 => Cond::Any, 1 => Cond::Absent, _ => Cond::Equals(1.into()) };
                let store_op = match &op {
                    ModelOp::Put(p, v, _) => Op::Put { path: p.clone(), value: (*v).into(), cond, idem: false },
                    ModelOp::Delete(p, _) => Op::Delete { path: p.clone(), cond },
                };
                let got = s.write(vec![store_op]).await;
                prop_assert_eq!(got.is_ok(), ok);
                if ok {
                    match op {
                        ModelOp::Put(p, v, _) => { tock += 1; model.insert(p, (v.into(), tock)); }
                        ModelOp::Delete(p, _) => if model.remove(&p).is_some() { tock += 1; },
                    }
                }
                prop_assert_eq!(s.tock(), Tock(tock));
            }
            for (prefix, min, max) in scans {
                let got = s.scan(&prefix, ScanOpts { min_depth: min, max_depth: max }, After::Start, 1000).await.expect("scan").items;
                let want: Vec<_> = model.iter()
                    .filter(|(k, _)| k.starts_with(&prefix))
                    .filter(|(k, _)| { let d = k.len() - prefix.len(); d >= min && max.is_none_or(|m| d <= m) })
                    .map(|(k, (v, t))| (k.clone(), v.clone(), Tock(*t)))
                    .collect();
                let got: Vec<_> = got.into_iter().map(|(k, e)| (k, e.value, e.tock)).collect();
                prop_assert_eq!(got, want);
            }
            Ok(())
        })?;
    }
}

#[test]
fn a_scan_page_stops_after_bounded_work_and_resumes() {
    let dir = tempfile::tempdir().expect("tmp");
    rt().block_on(async {
        let s = open(&dir);
        // 10000 nodes too deep and one at the wanted depth, at the end: the
        // depth filter has to wade through the deep ones.
        for chunk in 0..10 {
            let ops = (0..1000)
                .map(|i| {
                    Op::put(
                        p("d.x").child(Elem::Int(chunk * 1000 + i)).child("leaf"),
                        0.into(),
                    )
                })
                .collect();
            s.write(ops).await.expect("write");
        }
        s.write(vec![Op::put(p("d.y.z"), 1.into())])
            .await
            .expect("write");
        let opts = ScanOpts {
            min_depth: 2,
            max_depth: Some(2),
        };
        let first = s.scan(&p("d"), opts, After::Start, 10).await.expect("scan");
        assert!(
            first.items.is_empty(),
            "no result within the first bounded stretch"
        );
        let mut next = first.next;
        let mut pages = 1;
        let mut found = Vec::new();
        while let Some(c) = next {
            let page = s
                .scan(&p("d"), opts, After::Cursor(&c), 10)
                .await
                .expect("scan");
            found.extend(page.items.into_iter().map(|(p, _)| p.to_string()));
            next = page.next;
            pages += 1;
        }
        assert_eq!(found, ["d.y.z"]);
        assert!(pages >= 3, "the walk took several bounded pages: {pages}");
        assert_eq!(
            s.scan_up_to(&p("d"), opts, 5).await.expect("up to").len(),
            1
        );
    });
}
