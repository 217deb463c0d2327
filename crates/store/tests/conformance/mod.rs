//! The `Store` contract, written once and run on every backend.
//!
//! Each check is a function taking a [`Subject`] (how to open the backend
//! under test); `suite!` turns them into one `#[test]` each in a module
//! named after the backend. A backend joins with one line in
//! `tests/store.rs`:
//!
//! ```text
//! conformance::suite!(NAME, durable | volatile, |place, opts| OPEN);
//! ```
//!
//! where `OPEN` is an expression (it may `.await`) giving
//! `Result<impl Store, StoreError>` for the store kept at `place` (a
//! fresh temp dir per test, and a unique name, e.g. for a database
//! schema) keeping `opts.history` changes and a feed of
//! `opts.feed_bytes`/`opts.feed_len`. `durable` adds the checks that
//! reopen a store at the same place.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keycard_proto::{Elem, Path, Value};
use keycard_store::{
    After, Change, Cond, Cursor, Entry, FeedError, Op, ScanOpts, Store, StoreError, Tock,
};
use proptest::prelude::*;

/// Where one test keeps its store.
pub struct Place {
    dir: tempfile::TempDir,
    /// What to undo once the test is over (a database schema to drop).
    cleanup: std::sync::Mutex<Vec<Box<dyn FnOnce() + Send>>>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let jobs = std::mem::take(&mut *self.cleanup.lock().unwrap_or_else(|e| e.into_inner()));
        for job in jobs {
            job();
        }
    }
}

impl Place {
    /// Runs `job` when the place is dropped (after the test's stores).
    #[allow(dead_code)] // only the database backends need it
    pub fn on_drop(&self, job: impl FnOnce() + Send + 'static) {
        self.cleanup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(job));
    }

    /// A directory of its own, removed after the test.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// A name no other test's place has (for a database schema, say).
    #[allow(dead_code)] // only the database backends need one
    pub fn name(&self) -> String {
        let name = self.dir.path().file_name().unwrap_or_default();
        format!("kc_{}", name.to_string_lossy().replace(['.', '-'], "_"))
    }
}

/// What a store under test is opened with.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Changes its change log keeps.
    pub history: u64,
    /// Bytes its live feed keeps.
    pub feed_bytes: usize,
    /// Changes its live feed keeps.
    pub feed_len: usize,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            history: 100_000,
            feed_bytes: 8 << 20,
            feed_len: 1024,
        }
    }
}

/// A store as the suite holds it.
pub type Opened = Result<Arc<dyn Store>, StoreError>;

/// How a backend opens the store kept at a place.
pub type OpenFn = for<'a> fn(&'a Place, &'a Opts) -> Pin<Box<dyn Future<Output = Opened> + 'a>>;

/// The backend under test.
pub struct Subject {
    /// Opens (creating if needed) the store kept at a place.
    pub open: OpenFn,
}

impl Subject {
    /// A new place and the empty store there.
    pub async fn fresh(&self, opts: &Opts) -> (Place, Arc<dyn Store>) {
        let place = Place {
            dir: tempfile::tempdir().expect("tmp"),
            cleanup: Default::default(),
        };
        let store = (self.open)(&place, opts).await.expect("the store opens");
        (place, store)
    }

    /// The store at `place` opened again, once the previous one let go
    /// of it (redb's writer thread holds the file until it has seen its
    /// last sender go).
    pub async fn reopen(&self, place: &Place, opts: &Opts) -> Arc<dyn Store> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match (self.open)(place, opts).await {
                Ok(s) => return s,
                Err(e) if Instant::now() > deadline => panic!("the store does not reopen: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }
}

/// One `#[test]` per check, in a module named after the backend (see the
/// module docs).
macro_rules! suite {
    ($name:ident, durable, |$place:ident, $opts:ident| $open:expr) => {
        $crate::conformance::suite!(@tests $name, [tock_and_data_survive_reopen], |$place, $opts| $open);
    };
    ($name:ident, shared, |$place:ident, $opts:ident| $open:expr) => {
        $crate::conformance::suite!(@tests $name, [tock_and_data_survive_reopen, nodes_sharing_a_store_agree], |$place, $opts| $open);
    };
    ($name:ident, volatile, |$place:ident, $opts:ident| $open:expr) => {
        $crate::conformance::suite!(@tests $name, [], |$place, $opts| $open);
    };
    (@tests $name:ident, [$($extra:ident),*], |$place:ident, $opts:ident| $open:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::conformance::{self as checks, Opened, Opts, Place, Subject};

            async fn open($place: &Place, $opts: &Opts) -> Opened {
                let opened: Result<_, keycard_store::StoreError> = $open;
                let store: std::sync::Arc<dyn keycard_store::Store> = std::sync::Arc::new(opened?);
                Ok(store)
            }

            fn subject() -> Subject {
                Subject {
                    open: |place, opts| Box::pin(open(place, opts)),
                }
            }

            $crate::conformance::suite!(@each [
                put_get_delete_and_conditions,
                batches_are_atomic,
                writes_that_change_nothing_take_no_tock,
                tocks_strictly_increase,
                change_log_serves_history_and_reports_what_is_gone,
                changes_since_pages,
                the_feed_is_bounded_and_a_lagging_subscriber_catches_up,
                concurrent_writers_get_their_own_tocks,
                racing_writers_on_one_condition_exactly_one_wins,
                scan_depth_limits_skip_subtrees,
                a_scan_page_stops_after_bounded_work_and_resumes,
                export_is_a_snapshot_and_import_restores_it
                $(, $extra)*
            ]);

            proptest::proptest! {
                #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

                /// Random conditional puts and deletes, then random scans:
                /// the store agrees with a BTreeMap model.
                #[test]
                fn store_matches_model(ops in proptest::collection::vec(checks::model_op(), 1..40),
                                       scans in proptest::collection::vec(checks::model_scan(), 1..6)) {
                    checks::store_matches_model(&subject(), ops, scans)?;
                }

                /// Random batches of every condition: outcomes, state and
                /// change log agree with the model.
                #[test]
                fn batches_match_model(batches in proptest::collection::vec(proptest::collection::vec(checks::batch_op(), 1..5), 1..16)) {
                    checks::batches_match_model(&subject(), batches)?;
                }
            }
        }
    };
    (@each [$($test:ident),*]) => {
        $(
            #[test]
            fn $test() {
                checks::$test(&subject())
            }
        )*
    };
}
pub(crate) use suite;

fn p(s: &str) -> Path {
    Path::parse(s).expect("test path")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn names(v: Vec<(Path, Entry)>) -> Vec<String> {
    v.into_iter().map(|(p, _)| p.to_string()).collect()
}

fn put_if(path: &str, value: i64, cond: Cond) -> Op {
    Op::Put {
        path: p(path),
        value: value.into(),
        cond,
        idem: false,
    }
}

/// Gets, puts, deletes and each condition, met and not.
pub fn put_get_delete_and_conditions(subject: &Subject) {
    rt().block_on(async {
        let (_place, s) = subject.fresh(&Opts::default()).await;
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
        let err = s.write(vec![put_if("a.b", 2, Cond::Absent)]).await;
        assert!(matches!(err, Err(StoreError::Conflict { index: 0, .. })));
        // prev must match.
        let err = s
            .write(vec![put_if("a.b", 2, Cond::Equals(5.into()))])
            .await;
        assert!(matches!(err, Err(StoreError::Conflict { .. })));
        let out = s
            .write(vec![put_if("a.b", 2, Cond::Equals(1.into()))])
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
        // An empty batch is a no-op.
        assert_eq!(s.write(Vec::new()).await, Ok(Vec::new()));
        assert_eq!(s.tock(), Tock(3));
    });
}

/// A batch is all or nothing, its error names the failing op, and later
/// ops see earlier ones.
pub fn batches_are_atomic(subject: &Subject) {
    rt().block_on(async {
        let (_place, s) = subject.fresh(&Opts::default()).await;
        let mut feed = s.subscribe();
        let err = s
            .write(vec![
                Op::put(p("x"), 1.into()),
                Op::put(p("y"), 2.into()),
                put_if("x", 3, Cond::Absent),
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
                put_if("x", 3, Cond::Equals(1.into())),
            ])
            .await
            .expect("batch");
        assert_eq!(out[1].prev, Some(1.into()));
        assert_eq!(out[1].tock, Tock(2));
        assert_eq!(
            s.get(&p("x")).await.expect("get").map(|e| e.value),
            Some(3.into())
        );

        // Each kind of failed condition, after ops that would have
        // changed things: nothing changes, and the error names the op.
        let failing = [
            (put_if("x", 9, Cond::Absent), "the node exists"),
            (
                put_if("x", 9, Cond::Equals(1.into())),
                "the node holds a different value",
            ),
            (
                put_if("none", 9, Cond::Equals(1.into())),
                "the node has no value",
            ),
            (
                put_if("x", 9, Cond::TockIs(Tock(1))),
                "the node was changed at another tock",
            ),
            (
                Op::Delete {
                    path: p("none"),
                    cond: Cond::TockIs(Tock(1)),
                },
                "the node has no value",
            ),
            (
                Op::Delete {
                    path: p("y"),
                    cond: Cond::Absent,
                },
                "the node exists",
            ),
        ];
        for (op, reason) in failing {
            let err = s
                .write(vec![
                    Op::put(p("y"), 7.into()),
                    Op::put(p("z"), 7.into()),
                    Op::delete(p("none")),
                    op,
                ])
                .await;
            assert_eq!(err, Err(StoreError::Conflict { index: 3, reason }));
            assert_eq!(s.tock(), Tock(2));
            assert_eq!(
                s.get(&p("x"))
                    .await
                    .expect("get")
                    .map(|e| (e.value, e.tock)),
                Some((3.into(), Tock(2)))
            );
            assert_eq!(s.get(&p("y")).await, Ok(None));
            assert_eq!(s.get(&p("z")).await, Ok(None));
        }
        // Neither the change log nor the feed saw the failed batches.
        let logged: Vec<u64> = s
            .changes_since(Tock(0), 100)
            .await
            .expect("log")
            .iter()
            .map(|c| c.tock.0)
            .collect();
        assert_eq!(logged, [1, 2]);
        for want in [1, 2] {
            assert_eq!(feed.recv().await.expect("feed").tock, Tock(want));
        }
        s.write(vec![Op::put(p("w"), 1.into())]).await.expect("put");
        assert_eq!(feed.recv().await.expect("feed").path, p("w"));
    });
}

/// An idempotent put of the same value and the deletion of an absent
/// node change nothing: no tock, no change, and their outcome carries the
/// store's tock as the batch has reached it.
pub fn writes_that_change_nothing_take_no_tock(subject: &Subject) {
    rt().block_on(async {
        let (_place, s) = subject.fresh(&Opts::default()).await;
        s.write(vec![Op::put(p("a"), 1.into())]).await.expect("put");
        let out = s
            .write(vec![
                Op::Put {
                    path: p("a"),
                    value: 1.into(),
                    cond: Cond::Any,
                    idem: true,
                },
                Op::put(p("b"), 1.into()),
                Op::delete(p("c")),
                Op::Put {
                    path: p("b"),
                    value: 1.into(),
                    cond: Cond::Absent,
                    idem: true,
                },
            ])
            .await;
        // `Absent` is checked before `idem` skips the write.
        assert!(matches!(out, Err(StoreError::Conflict { index: 3, .. })));
        let out = s
            .write(vec![
                Op::Put {
                    path: p("a"),
                    value: 1.into(),
                    cond: Cond::Equals(1.into()),
                    idem: true,
                },
                Op::put(p("b"), 1.into()),
                Op::delete(p("c")),
                Op::Put {
                    path: p("b"),
                    value: 1.into(),
                    cond: Cond::TockIs(Tock(2)),
                    idem: true,
                },
            ])
            .await
            .expect("batch");
        let summary: Vec<_> = out.iter().map(|o| (o.changed, o.tock.0)).collect();
        assert_eq!(summary, [(false, 1), (true, 2), (false, 2), (false, 2)]);
        assert_eq!(out[0].prev, Some(1.into()));
        assert_eq!(out[2].prev, None);
        assert_eq!(s.tock(), Tock(2));
        assert_eq!(
            s.changes_since(Tock(0), 10).await.expect("log").len(),
            2,
            "only real changes are logged"
        );
        // A batch that changes nothing at all takes no tock either.
        let out = s
            .write(vec![Op::delete(p("c"))])
            .await
            .expect("delete missing");
        assert_eq!((out[0].changed, out[0].tock), (false, Tock(2)));
        assert_eq!(s.tock(), Tock(2));
    });
}

/// Every change gets the next tock: outcomes, entries, the change log and
/// `tock()` agree, batch after batch.
pub fn tocks_strictly_increase(subject: &Subject) {
    rt().block_on(async {
        let (_place, s) = subject.fresh(&Opts::default()).await;
        let mut last = 0u64;
        for round in 0..20i64 {
            let ops: Vec<Op> = (0..=round % 4)
                .map(|i| Op::put(p("t").child(Elem::Int(i.into())), round.into()))
                .collect();
            let out = s.write(ops).await.expect("write");
            for o in out {
                assert!(o.changed);
                assert_eq!(o.tock, Tock(last + 1), "round {round}");
                last = o.tock.0;
            }
            assert_eq!(s.tock(), Tock(last));
        }
        let e = s.get(&p("t.:0")).await.expect("get").expect("there");
        assert_eq!(e.value, Value::from(19));
        let tocks: Vec<u64> = s
            .changes_since(Tock(0), 1000)
            .await
            .expect("log")
            .iter()
            .map(|c| c.tock.0)
            .collect();
        assert_eq!(tocks, (1..=last).collect::<Vec<_>>());
    });
}

/// Data, tocks and the change log outlive the store object (durable
/// backends): the next write continues after the last tock.
pub fn tock_and_data_survive_reopen(subject: &Subject) {
    rt().block_on(async {
        let opts = Opts::default();
        let (place, s) = subject.fresh(&opts).await;
        for i in 0..10 {
            s.write(vec![Op::put(p("k").child(Elem::Int(i)), i.into())])
                .await
                .expect("put");
        }
        assert_eq!(s.tock(), Tock(10));
        drop(s);
        let s = subject.reopen(&place, &opts).await;
        assert_eq!(s.tock(), Tock(10));
        let mut feed = s.subscribe();
        let out = s
            .write(vec![Op::put(p("k.new"), 1.into())])
            .await
            .expect("put");
        assert_eq!(out[0].tock, Tock(11));
        assert_eq!(feed.recv().await.expect("feed").tock, Tock(11));
        assert_eq!(
            s.scan(&p("k"), ScanOpts::default(), After::Start, 100)
                .await
                .expect("scan")
                .items
                .len(),
            11
        );
        let logged = s.changes_since(Tock(8), 100).await.expect("log");
        assert_eq!(
            logged.iter().map(|c| c.tock.0).collect::<Vec<_>>(),
            [9, 10, 11]
        );
        assert_eq!(logged[0].path, p("k").child(Elem::Int(8)));
        drop(s);
        // A reopen with nothing written in between changes nothing.
        let s = subject.reopen(&place, &opts).await;
        assert_eq!(s.tock(), Tock(11));
    });
}

/// The change log keeps the last `history` changes; asking for older ones
/// is `HistoryGone` with the oldest still kept.
pub fn change_log_serves_history_and_reports_what_is_gone(subject: &Subject) {
    rt().block_on(async {
        let opts = Opts {
            history: 5,
            ..Opts::default()
        };
        let (_place, s) = subject.fresh(&opts).await;
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
        // Nothing after the last tock, yet.
        assert_eq!(s.changes_since(Tock(12), 100).await, Ok(Vec::new()));
        // A follower that had only tock 6 can no longer catch up, and the
        // feed says so.
        feed.resume_after(Tock(6));
        tokio::time::timeout(Duration::from_secs(5), feed.gone(Tock(6)))
            .await
            .expect("gone resolves");
    });
}

/// `changes_since` pages: at most `limit` changes, oldest first, and the
/// next page follows on from the last change of the previous one.
pub fn changes_since_pages(subject: &Subject) {
    rt().block_on(async {
        let (_place, s) = subject.fresh(&Opts::default()).await;
        for i in 0..25i64 {
            s.write(vec![Op::put(p("c").child(Elem::Int(i.into())), i.into())])
                .await
                .expect("put");
        }
        let mut after = Tock(0);
        let mut seen: Vec<Change> = Vec::new();
        loop {
            let page = s.changes_since(after, 10).await.expect("page");
            assert!(page.len() <= 10);
            let Some(last) = page.last() else { break };
            after = last.tock;
            seen.extend(page);
        }
        assert_eq!(
            seen.iter().map(|c| c.tock.0).collect::<Vec<_>>(),
            (1..=25).collect::<Vec<_>>()
        );
        assert!(seen
            .iter()
            .enumerate()
            .all(|(i, c)| c.value == Some(Value::from(i as i64))));
    });
}

/// The live feed keeps a bounded number of changes and bytes: a
/// subscriber that falls out of it is told it lagged, catches up from the
/// change log and follows the feed again from where it says.
pub fn the_feed_is_bounded_and_a_lagging_subscriber_catches_up(subject: &Subject) {
    rt().block_on(async {
        let opts = Opts {
            feed_bytes: 256 << 10,
            feed_len: 4,
            ..Opts::default()
        };
        let (_place, s) = subject.fresh(&opts).await;
        let mut sub = s.subscribe();
        assert_eq!(sub.after(), Tock(0));
        for i in 0..10i64 {
            s.write(vec![Op::put(p("f"), i.into())]).await.expect("put");
        }
        assert!(matches!(sub.recv().await, Err(FeedError::Lagged)));
        let missed = s.changes_since(sub.after(), 100).await.expect("log");
        assert_eq!(missed.len(), 10);
        sub.resume_after(missed[missed.len() - 1].tock);
        s.write(vec![Op::put(p("f"), 10.into())])
            .await
            .expect("put");
        let got = sub.recv().await.expect("live again");
        assert_eq!((got.tock, got.value.clone()), (Tock(11), Some(10.into())));

        // Bytes bound it too: 4 changes of 100 KiB do not fit in 256 KiB.
        let big = Value::Bin(vec![7; 100 << 10]);
        for _ in 0..4 {
            s.write(vec![Op::put(p("g"), big.clone())])
                .await
                .expect("put");
        }
        assert!(matches!(sub.recv().await, Err(FeedError::Lagged)));
        // The newest change is always there.
        sub.resume_after(Tock(14));
        assert_eq!(sub.recv().await.expect("newest").tock, Tock(15));
    });
}

/// Concurrent writers to different nodes each get a tock of their own.
pub fn concurrent_writers_get_their_own_tocks(subject: &Subject) {
    rt().block_on(async {
        let (_place, s) = subject.fresh(&Opts::default()).await;
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
    });
}

/// Writers racing on one node's condition: exactly one of them wins, for
/// each kind of condition, and compare-and-swap loops lose no update.
pub fn racing_writers_on_one_condition_exactly_one_wins(subject: &Subject) {
    rt().block_on(async {
        let (_place, s) = subject.fresh(&Opts::default()).await;
        const N: i64 = 32;
        async fn race(s: &Arc<dyn Store>, op: impl Fn(i64) -> Op) -> Vec<i64> {
            let tasks: Vec<_> = (0..N)
                .map(|i| {
                    let s = s.clone();
                    let op = op(i);
                    tokio::spawn(async move { (i, s.write(vec![op]).await) })
                })
                .collect();
            let mut won = Vec::new();
            for t in tasks {
                match t.await.expect("join") {
                    (i, Ok(_)) => won.push(i),
                    (_, Err(e)) => {
                        assert!(matches!(e, StoreError::Conflict { index: 0, .. }), "{e}")
                    }
                }
            }
            won
        }
        let node = || p("race");
        // Create if absent.
        let won = race(&s, |i| Op::Put {
            path: node(),
            value: i.into(),
            cond: Cond::Absent,
            idem: false,
        })
        .await;
        assert_eq!(won.len(), 1, "creators that won: {won:?}");
        let e = s.get(&node()).await.expect("get").expect("created");
        assert_eq!(e.value, Value::from(won[0]));
        // Replace if unchanged since tock T.
        let seen = e.tock;
        let won = race(&s, |i| Op::Put {
            path: node(),
            value: (100 + i).into(),
            cond: Cond::TockIs(seen),
            idem: false,
        })
        .await;
        assert_eq!(won.len(), 1, "tock writers that won: {won:?}");
        // Replace if it still holds V.
        let held = s.get(&node()).await.expect("get").expect("there").value;
        let won = race(&s, |i| Op::Put {
            path: node(),
            value: (200 + i).into(),
            cond: Cond::Equals(held.clone()),
            idem: false,
        })
        .await;
        assert_eq!(won.len(), 1, "value writers that won: {won:?}");
        // Delete if unchanged: one deletion happens.
        let seen = s.get(&node()).await.expect("get").expect("there").tock;
        let won = race(&s, |_| Op::Delete {
            path: node(),
            cond: Cond::TockIs(seen),
        })
        .await;
        assert_eq!(won.len(), 1, "deleters that won: {won:?}");
        assert_eq!(s.get(&node()).await, Ok(None));

        // A counter incremented by compare-and-swap from 8 tasks, 10
        // times each, ends at 80.
        s.write(vec![Op::put(p("counter"), 0.into())])
            .await
            .expect("counter");
        let writers: Vec<Arc<dyn Store>> = (0..8).map(|_| s.clone()).collect();
        bump_counter(&writers, 10, |e| Cond::Equals(e.value.clone())).await;
        let e = s.get(&p("counter")).await.expect("get").expect("there");
        assert_eq!(e.value, Value::from(80));
    });
}

/// Each of `writers` (a task each) adds 1 to the int at `counter`
/// `times` times by compare-and-swap on `cond` of the entry it read,
/// trying again after a conflict.
async fn bump_counter(writers: &[Arc<dyn Store>], times: usize, cond: fn(&Entry) -> Cond) {
    let tasks: Vec<_> = writers
        .iter()
        .cloned()
        .map(|s| {
            tokio::spawn(async move {
                for _ in 0..times {
                    loop {
                        let cur = s.get(&p("counter")).await.expect("get").expect("there");
                        let n = cur.value.as_i64().expect("an int");
                        let op = put_if("counter", n + 1, cond(&cur));
                        match s.write(vec![op]).await {
                            Ok(_) => break,
                            Err(StoreError::Conflict { .. }) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("join");
    }
}

/// Scans in path order, within depth bounds, skipping subtrees, paging
/// with `After` and cursors.
pub fn scan_depth_limits_skip_subtrees(subject: &Subject) {
    rt().block_on(async {
        let (_place, s) = subject.fresh(&Opts::default()).await;
        let paths = ["r", "r.a", "r.a.x", "r.a.x.deep", "r.b", "r.b.y", "s"];
        s.write(paths.iter().map(|x| Op::put(p(x), 0.into())).collect())
            .await
            .expect("put");
        let all = s
            .scan(&p("r"), ScanOpts::default(), After::Start, 100)
            .await
            .expect("scan");
        assert_eq!(all.next, None, "the subtree is done");
        assert_eq!(
            names(all.items),
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
            .expect("scan");
        assert!(first.next.is_some(), "more to come");
        let first_items = first.items;
        let rest = s
            .scan(
                &p("r"),
                ScanOpts::default(),
                After::Node(&first_items[1].0),
                100,
            )
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
        // Cursors: pages of two, each from where the last one stopped.
        let mut next = None::<Cursor>;
        let mut pages = Vec::new();
        loop {
            let after = next.as_ref().map_or(After::Start, After::Cursor);
            let page = s
                .scan(&p("r"), ScanOpts::default(), after, 2)
                .await
                .expect("scan");
            pages.push(names(page.items));
            next = page.next;
            if next.is_none() {
                break;
            }
        }
        assert_eq!(
            pages.concat(),
            ["r", "r.a", "r.a.x", "r.a.x.deep", "r.b", "r.b.y"]
        );
        let from = s
            .scan(
                &p("r"),
                ScanOpts::default(),
                After::Cursor(&Cursor::after(&p("r.a.x.deep"))),
                100,
            )
            .await
            .expect("scan")
            .items;
        assert_eq!(names(from), ["r.b", "r.b.y"]);
        // scan_up_to follows the cursors for the caller.
        let up_to = s
            .scan_up_to(&p("r"), ScanOpts::default(), 3)
            .await
            .expect("up to");
        assert_eq!(names(up_to), ["r", "r.a", "r.a.x"]);
        // The root's subtree is everything.
        let everything = s
            .scan_up_to(&Path::new(Vec::new()), ScanOpts::default(), 100)
            .await
            .expect("all");
        assert_eq!(everything.len(), paths.len());
    });
}

/// A scan examines a bounded number of nodes per call: a depth filter
/// wading through a deep subtree returns pages (even empty ones) with a
/// cursor, and following them finds what lies beyond.
pub fn a_scan_page_stops_after_bounded_work_and_resumes(subject: &Subject) {
    rt().block_on(async {
        let (_place, s) = subject.fresh(&Opts::default()).await;
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

/// One step of the single-op model: a put or a delete, with condition 0
/// (any), 1 (absent) or 2 (equals 1).
#[derive(Clone, Debug)]
pub enum ModelOp {
    /// Put a value.
    Put(Path, i64, u8),
    /// Delete.
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

/// A random single-op write.
pub fn model_op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        (small_path(), 0i64..4, 0u8..3).prop_map(|(p, v, c)| ModelOp::Put(p, v, c)),
        (small_path(), 0u8..3).prop_map(|(p, c)| ModelOp::Delete(p, c)),
    ]
}

/// A random scan: prefix, min depth, max depth.
pub fn model_scan() -> impl Strategy<Value = (Path, usize, Option<usize>)> {
    (small_path(), 0usize..3, proptest::option::of(0usize..3))
}

/// Random conditional puts and deletes, then random scans: the store
/// agrees with a BTreeMap<Path, (value, tock)> written by hand.
pub fn store_matches_model(
    subject: &Subject,
    ops: Vec<ModelOp>,
    scans: Vec<(Path, usize, Option<usize>)>,
) -> Result<(), TestCaseError> {
    rt().block_on(async {
        let (_place, s) = subject.fresh(&Opts::default()).await;
        let mut model: BTreeMap<Path, (Value, u64)> = BTreeMap::new();
        let mut tock = 0u64;
        for op in ops {
            // cond: 0 any, 1 absent, 2 equals 1
            let (path, c) = match &op {
                ModelOp::Put(p, _, c) | ModelOp::Delete(p, c) => (p.clone(), *c),
            };
            let cur = model.get(&path).cloned();
            let ok = match c {
                0 => true,
                1 => cur.is_none(),
                _ => cur.as_ref().map(|x| &x.0) == Some(&Value::from(1)),
            };
            let cond = match c {
                0 => Cond::Any,
                1 => Cond::Absent,
                _ => Cond::Equals(1.into()),
            };
            let store_op = match &op {
                ModelOp::Put(p, v, _) => Op::Put {
                    path: p.clone(),
                    value: (*v).into(),
                    cond,
                    idem: false,
                },
                ModelOp::Delete(p, _) => Op::Delete {
                    path: p.clone(),
                    cond,
                },
            };
            let got = s.write(vec![store_op]).await;
            prop_assert_eq!(got.is_ok(), ok);
            if ok {
                match op {
                    ModelOp::Put(p, v, _) => {
                        tock += 1;
                        model.insert(p, (v.into(), tock));
                    }
                    ModelOp::Delete(p, _) => {
                        if model.remove(&p).is_some() {
                            tock += 1;
                        }
                    }
                }
            }
            prop_assert_eq!(s.tock(), Tock(tock));
        }
        for (prefix, min, max) in scans {
            let got = s
                .scan(
                    &prefix,
                    ScanOpts {
                        min_depth: min,
                        max_depth: max,
                    },
                    After::Start,
                    1000,
                )
                .await
                .expect("scan")
                .items;
            let want: Vec<_> = model
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .filter(|(k, _)| {
                    let d = k.len() - prefix.len();
                    d >= min && max.is_none_or(|m| d <= m)
                })
                .map(|(k, (v, t))| (k.clone(), v.clone(), Tock(*t)))
                .collect();
            let got: Vec<_> = got.into_iter().map(|(k, e)| (k, e.value, e.tock)).collect();
            prop_assert_eq!(got, want);
        }
        Ok(())
    })
}

/// A random op of a batch: any condition, idempotent or not.
pub fn batch_op() -> impl Strategy<Value = Op> {
    let path = prop_oneof![Just("m.a"), Just("m.b"), Just("m.a.c")].prop_map(p);
    let cond = prop_oneof![
        Just(Cond::Any),
        Just(Cond::Absent),
        (0i64..3).prop_map(|v| Cond::Equals(v.into())),
        (0u64..12).prop_map(|t| Cond::TockIs(Tock(t))),
    ];
    prop_oneof![
        (path.clone(), 0i64..3, cond.clone(), any::<bool>()).prop_map(|(path, v, cond, idem)| {
            Op::Put {
                path,
                value: v.into(),
                cond,
                idem,
            }
        }),
        (path, cond).prop_map(|(path, cond)| Op::Delete { path, cond }),
    ]
}

/// Random batches: each either fails at the first op the model says
/// fails and changes nothing, or applies as the model does; the store's
/// nodes, tock and change log end as the model's.
pub fn batches_match_model(subject: &Subject, batches: Vec<Vec<Op>>) -> Result<(), TestCaseError> {
    type Model = BTreeMap<Path, (Value, u64)>;
    rt().block_on(async {
        let (_place, s) = subject.fresh(&Opts::default()).await;
        let mut model = Model::new();
        let mut log: Vec<(Path, Option<Value>, u64)> = Vec::new();
        let mut tock = 0u64;
        for ops in batches {
            // The model: the ops one by one on a copy, kept if all held.
            let mut next = model.clone();
            let mut t = tock;
            let mut outs = Vec::new();
            let mut logged = Vec::new();
            let mut failed = None;
            for (i, op) in ops.iter().enumerate() {
                let path = op.path().clone();
                let cur = next.get(&path).cloned();
                let (Op::Put { cond, .. } | Op::Delete { cond, .. }) = op;
                let holds = match cond {
                    Cond::Any => true,
                    Cond::Absent => cur.is_none(),
                    Cond::Equals(v) => cur.as_ref().is_some_and(|c| &c.0 == v),
                    Cond::TockIs(w) => cur.as_ref().is_some_and(|c| c.1 == w.0),
                };
                if !holds {
                    failed = Some(i);
                    break;
                }
                let prev = cur.map(|c| c.0);
                let changed = match op {
                    Op::Put { value, idem, .. } => {
                        if *idem && prev.as_ref() == Some(value) {
                            None
                        } else {
                            Some(Some(value.clone()))
                        }
                    }
                    Op::Delete { .. } => prev.is_some().then_some(None),
                };
                if let Some(value) = changed {
                    t += 1;
                    match &value {
                        Some(v) => next.insert(path.clone(), (v.clone(), t)),
                        None => next.remove(&path),
                    };
                    logged.push((path, value, t));
                    outs.push((true, prev, t));
                } else {
                    outs.push((false, prev, t));
                }
            }
            let got = s.write(ops).await;
            match failed {
                Some(index) => {
                    prop_assert!(
                        matches!(got, Err(StoreError::Conflict { index: i, .. }) if i == index),
                        "{:?}",
                        got
                    );
                }
                None => {
                    let got: Vec<_> = got
                        .expect("the model says it applies")
                        .into_iter()
                        .map(|o| (o.changed, o.prev, o.tock.0))
                        .collect();
                    prop_assert_eq!(got, outs);
                    model = next;
                    tock = t;
                    log.extend(logged);
                }
            }
            prop_assert_eq!(s.tock(), Tock(tock));
        }
        let nodes: Vec<_> = s
            .scan_up_to(&p("m"), ScanOpts::default(), 100)
            .await
            .expect("scan")
            .into_iter()
            .map(|(k, e)| (k, (e.value, e.tock.0)))
            .collect();
        prop_assert_eq!(nodes, model.into_iter().collect::<Vec<_>>());
        let changes: Vec<_> = s
            .changes_since(Tock(0), 1000)
            .await
            .expect("log")
            .into_iter()
            .map(|c| (c.path, c.value, c.tock.0))
            .collect();
        prop_assert_eq!(changes, log);
        Ok(())
    })
}

/// Everything exported from a store, and the snapshot's tock.
async fn export_all(s: &Arc<dyn Store>, page: usize) -> (Vec<(Path, Entry)>, Tock) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let s2 = s.clone();
    let task = tokio::spawn(async move { s2.export(page, tx).await });
    let mut all = Vec::new();
    while let Some(batch) = rx.recv().await {
        assert!(!batch.is_empty() && batch.len() <= page, "{}", batch.len());
        all.extend(batch);
    }
    let tock = task.await.expect("join").expect("export");
    (all, tock)
}

/// `export` is a consistent snapshot in key order, also while writers
/// run; `import` into an empty store gives back the same nodes with the
/// same tocks, the snapshot's tock, no history before it, and tocks that
/// go on from there.
pub fn export_is_a_snapshot_and_import_restores_it(subject: &Subject) {
    rt().block_on(async {
        let (_place, s) = subject.fresh(&Opts::default()).await;
        for i in 0..200 {
            s.write(vec![Op::put(p(&format!("t.n{:03}", i % 150)), i.into())])
                .await
                .expect("put");
        }
        s.write(vec![Op::delete(p("t.n007")), Op::delete(p("t.n008"))])
            .await
            .expect("delete");
        let scanned = s
            .scan_up_to(&Path::root(), ScanOpts::default(), 10_000)
            .await
            .expect("scan");
        let (quiet, tock) = export_all(&s, 7).await;
        assert_eq!(tock, s.tock());
        assert_eq!(quiet, scanned, "the whole store, in key order");
        // While a writer runs: what is exported is the store at one tock.
        let writer = {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..300 {
                    s.write(vec![Op::put(
                        p(&format!("t.n{:03}", i % 170)),
                        (1000 + i).into(),
                    )])
                    .await
                    .expect("put");
                }
            })
        };
        let (snap, at) = export_all(&s, 5).await;
        writer.await.expect("writer");
        let after = s
            .scan_up_to(&Path::root(), ScanOpts::default(), 10_000)
            .await
            .expect("scan");
        let now: BTreeMap<Path, Entry> = after.into_iter().collect();
        let taken: BTreeMap<Path, Entry> = snap.iter().cloned().collect();
        assert_eq!(taken.len(), snap.len(), "no node twice");
        for (path, e) in &snap {
            assert!(
                e.tock <= at,
                "{path}: {:?} after the snapshot {at:?}",
                e.tock
            );
            let later = &now[path];
            assert!(later == e || later.tock > at, "{path}");
        }
        for (path, e) in &now {
            if e.tock <= at {
                assert_eq!(taken.get(path), Some(e), "{path} was there at the snapshot");
            }
        }
        // Into an empty store, in two calls.
        let (_place2, r) = subject.fresh(&Opts::default()).await;
        let (first, rest) = snap.split_at(snap.len() / 2);
        r.import(first.to_vec(), None).await.expect("import");
        r.import(rest.to_vec(), Some(at)).await.expect("import");
        assert_eq!(r.tock(), at);
        let back = r
            .scan_up_to(&Path::root(), ScanOpts::default(), 10_000)
            .await
            .expect("scan");
        assert_eq!(back, snap);
        assert!(matches!(
            r.changes_since(Tock(0), 10).await,
            Err(StoreError::HistoryGone { .. })
        ));
        let out = r
            .write(vec![Op::put(p("t.new"), 1.into())])
            .await
            .expect("write after import");
        assert_eq!(out[0].tock, Tock(at.0 + 1));
    })
}

/// Several nodes on one store (a database every node opens): a racing
/// condition has one winner across nodes, a counter moved by
/// compare-and-swap from every node loses no update, tocks handed out
/// anywhere only grow, and every node's feed carries every change, in
/// the same tock order, with no gap.
pub fn nodes_sharing_a_store_agree(subject: &Subject) {
    rt().block_on(async {
        let opts = Opts::default();
        let (place, a) = subject.fresh(&opts).await;
        let b = (subject.open)(&place, &opts).await.expect("a second node");
        let c = (subject.open)(&place, &opts).await.expect("a third node");
        let nodes = [a.clone(), b.clone(), c.clone()];
        let mut subs: Vec<_> = nodes.iter().map(|n| n.subscribe()).collect();

        // 3 nodes × 8 writers create the same paths: one winner each.
        for round in 0..5 {
            let path = p("race").child(Elem::Int(round));
            let tasks: Vec<_> = (0..24i64)
                .map(|i| {
                    let s = nodes[(i % 3) as usize].clone();
                    let op = Op::Put {
                        path: path.clone(),
                        value: i.into(),
                        cond: Cond::Absent,
                        idem: false,
                    };
                    tokio::spawn(async move { s.write(vec![op]).await })
                })
                .collect();
            let mut won = 0;
            for t in tasks {
                match t.await.expect("join") {
                    Ok(_) => won += 1,
                    Err(StoreError::Conflict { index: 0, .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(won, 1, "round {round}: {won} winners");
        }

        // A counter moved by compare-and-swap from every node.
        a.write(vec![Op::put(p("counter"), 0.into())])
            .await
            .expect("counter");
        let writers: Vec<Arc<dyn Store>> = (0..6).map(|i| nodes[i % 3].clone()).collect();
        bump_counter(&writers, 10, |e| Cond::TockIs(e.tock)).await;
        for n in &nodes {
            let e = n.get(&p("counter")).await.expect("get").expect("there");
            assert_eq!(e.value, Value::from(60));
        }

        // Writes one after another, through each node in turn: each tock
        // is above every tock seen before, whichever node gave it.
        let mut last = Tock(0);
        for i in 0..30i64 {
            let out = nodes[(i % 3) as usize]
                .write(vec![Op::put(p("seq"), i.into())])
                .await
                .expect("write");
            assert!(out[0].tock > last, "{:?} after {last:?}", out[0].tock);
            last = out[0].tock;
        }

        // Every node's feed: every change up to the last, in order, the
        // same on each.
        let mut seen = Vec::new();
        for sub in subs.iter_mut() {
            let mut got = Vec::new();
            while got.last().is_none_or(|t: &Tock| *t < last) {
                let c = tokio::time::timeout(Duration::from_secs(5), sub.recv())
                    .await
                    .expect("a change within 5 s")
                    .expect("no lag");
                got.push(c.tock);
            }
            let expected: Vec<Tock> = (1..=last.0).map(Tock).collect();
            assert_eq!(got, expected, "a node's feed has every tock in order");
            seen.push(got);
        }
        for n in &nodes {
            let deadline = Instant::now() + Duration::from_secs(5);
            while n.tock() < last {
                assert!(Instant::now() < deadline, "a node's tock stays behind");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(
                n.changes_since(Tock(0), 1000).await.expect("log").len() as u64,
                last.0
            );
        }
        drop((a, b, c, nodes));
    });
}
