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

/// A node refuses a schema written by a newer keycard, saying so; a
/// schema of its own version opens.
#[test]
fn postgres_refuses_a_newer_schema() {
    let schema = keycard_pgtest::TestSchema::new();
    let target = PgTarget::parse(&schema.url("sslmode=disable")).expect("url");
    runtime().block_on(async {
        let s = PgStore::open(&target, PgOptions::default())
            .await
            .expect("creates the schema");
        drop(s);
        let (client, conn) =
            tokio_postgres::connect(&keycard_pgtest::shared_url(), tokio_postgres::NoTls)
                .await
                .expect("psql");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("UPDATE {}.meta SET version = 99", schema.name))
            .await
            .expect("bump");
        let e = PgStore::open(&target, PgOptions::default())
            .await
            .err()
            .expect("refused");
        let text = e.to_string();
        assert!(
            text.contains("version 99") && text.contains("newer"),
            "{text}"
        );
        client
            .batch_execute(&format!("UPDATE {}.meta SET version = 1", schema.name))
            .await
            .expect("back");
        PgStore::open(&target, PgOptions::default())
            .await
            .expect("opens again");
    });
}

/// TLS to the database: `require` encrypts (the server's view of the
/// connection says so); `verify-full` checks the certificate's name and
/// refuses a mismatch, `verify-ca` checks the chain only. The machine's
/// PostgreSQL serves Debian's self-signed certificate for `localhost`.
#[test]
fn postgres_tls_modes() {
    let cert = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    if !std::path::Path::new(cert).exists() {
        eprintln!("SKIPPED: no {cert}");
        return;
    }
    let schema = keycard_pgtest::TestSchema::new();
    runtime().block_on(async {
        let (client, conn) =
            tokio_postgres::connect(&keycard_pgtest::shared_url(), tokio_postgres::NoTls)
                .await
                .expect("connect");
        tokio::spawn(conn);
        let ssl_on: String = client
            .query_one("SHOW ssl", &[])
            .await
            .expect("show")
            .get(0);
        if ssl_on != "on" {
            eprintln!("SKIPPED: the database does not serve TLS");
            return;
        }
        let name = format!("kc-tls-{}", std::process::id());
        let t = PgTarget::parse(&schema.url("sslmode=require"))
            .expect("url")
            .named(&name);
        let s = PgStore::open(&t, PgOptions::default())
            .await
            .expect("require");
        s.write(vec![Op::put(Path::parse("t").expect("p"), 1.into())])
            .await
            .expect("write over TLS");
        let plain: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.application_name = $1 AND NOT s.ssl",
                &[&name],
            )
            .await
            .expect("stat")
            .get(0);
        let tls: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.application_name = $1 AND s.ssl",
                &[&name],
            )
            .await
            .expect("stat")
            .get(0);
        assert!(
            tls >= 1 && plain == 0,
            "{tls} TLS, {plain} plain connections"
        );
        drop(s);

        let url = |mode: &str, host: &str| {
            schema
                .url(&format!("sslmode={mode}&sslrootcert={cert}"))
                .replace("127.0.0.1", host)
        };
        // The certificate names localhost, not 127.0.0.1.
        let t = PgTarget::parse(&url("verify-full", "127.0.0.1")).expect("url");
        let e = PgStore::open(&t, PgOptions::default())
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(e, keycard_store::StoreError::Unavailable(_)),
            "{e}"
        );
        assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
        let t = PgTarget::parse(&url("verify-ca", "127.0.0.1")).expect("url");
        PgStore::open(&t, PgOptions::default())
            .await
            .expect("verify-ca: the chain holds");
        let t = PgTarget::parse(&url("verify-full", "localhost")).expect("url");
        PgStore::open(&t, PgOptions::default())
            .await
            .expect("verify-full: the name holds");
    });
}
