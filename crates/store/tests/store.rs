//! Every backend against the `Store` contract (the conformance suite in
//! `conformance/`, one line per backend below), then what only one
//! backend promises.

mod conformance;

use std::sync::Arc;

use keycard_proto::{Elem, Path};
use keycard_store::{
    MemOptions, MemStore, Op, PgOptions, PgStore, PgTarget, RedbOptions, RedbStore, Store, Tock,
};

conformance::suite!(redb, durable, |place, opts| RedbStore::open(
    &place.dir().join("kc.redb"),
    RedbOptions {
        history: opts.history,
        feed_bytes: opts.feed_bytes,
        feed_len: opts.feed_len,
        ..RedbOptions::default()
    }
));

// Each test in a schema of its own on the machine's PostgreSQL (see
// keycard_pgtest::shared_url), dropped after it.
conformance::suite!(postgres, shared, |place, opts| {
    let schema = keycard_pgtest::TestSchema {
        name: place.name().to_lowercase(),
    };
    let target = PgTarget::parse(&schema.url("sslmode=disable"))
        .map_err(keycard_store::StoreError::Backend)?;
    place.on_drop(move || drop(schema));
    PgStore::open(
        &target,
        PgOptions {
            history: opts.history,
            feed_bytes: opts.feed_bytes,
            feed_len: opts.feed_len,
            ..PgOptions::default()
        },
    )
    .await
});

conformance::suite!(memory, volatile, |_place, opts| Ok(MemStore::new(
    MemOptions {
        history: opts.history,
        feed_bytes: opts.feed_bytes,
        feed_len: opts.feed_len,
    }
)));

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// redb groups concurrent writers into shared commits (one fsync for
/// many).
#[test]
fn redb_concurrent_writers_share_commits() {
    let dir = tempfile::tempdir().expect("tmp");
    let rt = runtime();
    rt.block_on(async {
        let s = Arc::new(
            RedbStore::open(&dir.path().join("kc.redb"), RedbOptions::default()).expect("open"),
        );
        let mut tasks = Vec::new();
        for i in 0..256i64 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let path = Path::parse("w").expect("path").child(Elem::Int(i as i128));
                s.write(vec![Op::put(path, i.into())]).await
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

/// A dropped store has closed its file: opening it again at once (here,
/// or in a server started on the directory) finds it free, with every
/// acknowledged write in it.
#[test]
fn redb_drop_releases_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("kc.redb");
    let rt = runtime();
    rt.block_on(async {
        for round in 0..40i64 {
            let s = RedbStore::open(&file, RedbOptions::default())
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(s.tock(), Tock(round as u64), "round {round}");
            let path = Path::parse("r")
                .expect("path")
                .child(Elem::Int(round as i128));
            s.write(vec![Op::put(path, round.into())])
                .await
                .expect("write");
            let seen = s
                .scan_up_to(&Path::root(), Default::default(), 1000)
                .await
                .expect("scan");
            assert_eq!(seen.len() as i64, round + 1);
            drop(s);
        }
    });
}
