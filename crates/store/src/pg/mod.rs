//! The PostgreSQL backend: several keycard nodes on one database.
//!
//! Why tokio-postgres (with deadpool-postgres for the readers' pool):
//! pure Rust on the tokio runtime the server already runs, no C library
//! (libpq) and no compile-time database; its pipelining lets one
//! connection carry a writer's statements back to back, and it reads
//! libpq's URLs, several hosts and `target_session_attrs` included. sqlx
//! would add a query layer this store does not use (it has five
//! statements). TLS is rustls with aws-lc-rs, as on the listeners.
//!
//! How the contract holds across nodes:
//!
//! - **Writes.** Each node has one writer connection that groups the
//!   requests waiting into one transaction (group commit), as the redb
//!   writer does. The transaction first locks the one `meta` row, reads
//!   the last tock there, plans every request with [`crate::plan`] over
//!   the rows it reads (one query for every key of the group), writes the
//!   rows and the change log, moves the tock, and commits. Writers of
//!   every node take turns on that row lock, so tocks are consecutive, in
//!   commit order everywhere, and a condition is checked against what is
//!   committed: of two nodes racing on one node's condition, exactly one
//!   wins. PostgreSQL makes a commit visible before it releases its locks,
//!   so the next writer's changes are never visible without the previous
//!   one's: a follower reading the log in tock order never sees a gap that
//!   later fills. No sequence is used: a sequence value taken before
//!   commit can commit after a larger one.
//! - **The feed.** A node publishes its own commits to its feed at once
//!   (with the other nodes' changes since its last publication, read in
//!   the same transaction), and a follower task polls the change log for
//!   the rest every `poll` (and when a `NOTIFY` on the schema's channel
//!   wakes it earlier: notifications are only a wake-up, they are lost on
//!   a reconnect and do not pass through PgBouncer). Publication is in
//!   tock order with no gap: where the log no longer holds what a node
//!   missed (it was away too long), its feed jumps ahead and the
//!   subscriptions behind it catch up from the log or are told it is gone.
//! - **Reads** (get, scans, the change log) go through a pool of
//!   connections; each is one statement, so a read sees every write
//!   acknowledged before it started, on any node.
//! - **Failures.** A request while the database is away fails at once
//!   with [`StoreError::Unavailable`] saying so; the writer reconnects with
//!   backoff, and a group that failed before its `COMMIT` was sent is
//!   tried once more on a fresh connection. A `COMMIT` whose answer is
//!   lost is reported as possibly applied: the follower publishes it if it
//!   was.

mod connect;
mod schema;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{try_join, try_join_all};
use keycard_proto::Path;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use connect::unavailable;
pub use connect::{is_pg_url, PgTarget};

use crate::feed::{weight, Feed, Subscription};
use crate::plan::{self, CHANGES_PAGE_BYTES};
use crate::stored::{decode_value, encode_value};
use crate::types::{After, Change, Entry, Op, Outcome, ScanOpts, ScanPage, StoreError, Tock};
use crate::walk::{Next, Walk};
use crate::Store;

/// Tuning for [`PgStore`].
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// How many changes the change log keeps for watches resuming from a
    /// tock (and for nodes that were away).
    pub history: u64,
    /// Most memory the live change feed keeps.
    pub feed_bytes: usize,
    /// Most changes the live change feed keeps.
    pub feed_len: usize,
    /// The most write requests grouped into one transaction.
    pub max_group: usize,
    /// How often the follower reads the change log when no notification
    /// woke it: the longest a change made on another node waits to be
    /// seen here when notifications are lost.
    pub poll: Duration,
    /// Connections for reads.
    pub readers: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            history: 100_000,
            feed_bytes: 8 << 20,
            feed_len: 1024,
            max_group: 1024,
            poll: Duration::from_millis(50),
            readers: 16,
        }
    }
}

/// Most changes of other nodes a write reads in its transaction to keep
/// this node's feed gapless; a node further behind lets its follower
/// (or the log) catch up instead.
const GAP_IN_TXN: u64 = 1024;

/// Rows one scan query fetches at most.
const SCAN_CHUNK: usize = 512;

/// Rows one poll of the change log reads at most.
const POLL_ROWS: i64 = 1024;

/// The statements, with the schema's name in them.
struct Sql {
    get: String,
    get_many: String,
    scan_from: String,
    scan_after: String,
    lock_meta: String,
    read_meta: String,
    set_meta: String,
    upsert: String,
    delete: String,
    log: String,
    prune: String,
    log_after: String,
    log_range: String,
    clear_log: String,
    notify: String,
    channel: String,
}

impl Sql {
    fn new(s: &str) -> Sql {
        Sql {
            get: format!("SELECT tock, value FROM {s}.data WHERE key = $1"),
            get_many: format!("SELECT key, tock, value FROM {s}.data WHERE key = ANY($1)"),
            scan_from: format!(
                "SELECT key, tock, value FROM {s}.data WHERE key >= $1 AND key < $2 \
                 ORDER BY key LIMIT $3"
            ),
            scan_after: format!(
                "SELECT key, tock, value FROM {s}.data WHERE key > $1 AND key < $2 \
                 ORDER BY key LIMIT $3"
            ),
            lock_meta: format!("SELECT tock, pruned FROM {s}.meta WHERE id = 1 FOR UPDATE"),
            read_meta: format!("SELECT tock, pruned FROM {s}.meta WHERE id = 1"),
            set_meta: format!("UPDATE {s}.meta SET tock = $1, pruned = $2 WHERE id = 1"),
            upsert: format!(
                "INSERT INTO {s}.data (key, tock, value) \
                 SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bytea[]) \
                 ON CONFLICT (key) DO UPDATE SET tock = excluded.tock, value = excluded.value"
            ),
            delete: format!("DELETE FROM {s}.data WHERE key = ANY($1)"),
            log: format!(
                "INSERT INTO {s}.log (tock, key, value) \
                 SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[])"
            ),
            prune: format!("DELETE FROM {s}.log WHERE tock <= $1"),
            log_after: format!(
                "SELECT tock, key, value FROM {s}.log WHERE tock > $1 ORDER BY tock LIMIT $2"
            ),
            log_range: format!(
                "SELECT tock, key, value FROM {s}.log WHERE tock > $1 AND tock <= $2 \
                 ORDER BY tock"
            ),
            clear_log: format!("DELETE FROM {s}.log"),
            notify: "SELECT pg_notify($1, $2)".into(),
            channel: format!("keycard_{s}"),
        }
    }
}

/// The writer's statements, prepared once per connection: a statement
/// sent by text costs a round trip of its own to be parsed first.
struct Prepared {
    lock_meta: Statement,
    get_many: Statement,
    upsert: Statement,
    delete: Statement,
    log: Statement,
    prune: Statement,
    set_meta: Statement,
    notify: Statement,
    log_range: Statement,
}

impl Prepared {
    /// Prepares them all, in one round trip.
    async fn on(client: &tokio_postgres::Client, sql: &Sql) -> Result<Prepared, StoreError> {
        let texts = [
            &sql.lock_meta,
            &sql.get_many,
            &sql.upsert,
            &sql.delete,
            &sql.log,
            &sql.prune,
            &sql.set_meta,
            &sql.notify,
            &sql.log_range,
        ];
        let all = try_join_all(texts.iter().map(|t| client.prepare(t)))
            .await
            .map_err(db)?;
        let mut it = all.into_iter();
        let mut next = || {
            it.next()
                .ok_or_else(|| StoreError::Backend("a statement was not prepared".into()))
        };
        Ok(Prepared {
            lock_meta: next()?,
            get_many: next()?,
            upsert: next()?,
            delete: next()?,
            log: next()?,
            prune: next()?,
            set_meta: next()?,
            notify: next()?,
            log_range: next()?,
        })
    }
}

/// The writer's connection and its statements.
struct Conn {
    client: tokio_postgres::Client,
    st: Prepared,
}

type Pending<'a> = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>>;

struct WriteReq {
    ops: Vec<Op>,
    reply: oneshot::Sender<Result<Vec<Outcome>, StoreError>>,
}

struct Shared {
    target: PgTarget,
    sql: Sql,
    pool: deadpool_postgres::Pool,
    feed: Arc<Feed>,
    /// The last tock published to the feed: every change up to it is in
    /// it (or was skipped by a jump), in order. Held while publishing.
    published: Mutex<u64>,
    /// The same, readable without the lock ([`Store::tock`]).
    tock: AtomicU64,
    /// Wakes the follower early.
    wake: Notify,
    closed: AtomicBool,
}

/// A store in PostgreSQL, shared by every node that opens the same
/// schema (see the module docs).
pub struct PgStore {
    shared: Arc<Shared>,
    writer: mpsc::UnboundedSender<WriteReq>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn db(e: tokio_postgres::Error) -> StoreError {
    unavailable(&e)
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => unavailable(&e),
        other => StoreError::Unavailable(format!("the database is unavailable: {other}")),
    }
}

fn tock_of(row: &Row, at: usize) -> Result<Tock, StoreError> {
    let t: i64 = row.try_get(at).map_err(db)?;
    u64::try_from(t)
        .map(Tock)
        .map_err(|_| StoreError::Corrupt("a negative tock".into()))
}

fn sql_tock(t: u64) -> Result<i64, StoreError> {
    i64::try_from(t).map_err(|_| StoreError::Backend("tock out of range".into()))
}

/// A change-log row (`tock, key, value`).
fn change_of(row: &Row) -> Result<Change, StoreError> {
    let tock = tock_of(row, 0)?;
    let key: &[u8] = row.try_get(1).map_err(db)?;
    let value: Option<&[u8]> = row.try_get(2).map_err(db)?;
    Ok(Change {
        path: Path::from_key(key).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        value: value.map(decode_value).transpose()?,
        tock,
    })
}

fn lock(m: &Mutex<u64>) -> MutexGuard<'_, u64> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Publishes `run` (changes with consecutive tocks, in order) to the
    /// feed, past what it already holds; a run that starts beyond the
    /// next tock makes the feed jump there first (subscriptions behind
    /// read the log).
    fn publish_run(&self, published: &mut u64, run: Vec<Change>) {
        let fresh: Vec<Change> = run.into_iter().filter(|c| c.tock.0 > *published).collect();
        let Some(first) = fresh.first().map(|c| c.tock.0) else {
            return;
        };
        if first != *published + 1 {
            self.feed.reset(first - 1);
        }
        *published = fresh.last().map_or(*published, |c| c.tock.0);
        self.feed.publish(fresh);
        self.tock.store(*published, Ordering::Release);
    }

    /// Moves the feed to `tock` without the changes up to it (they are
    /// in the log, or gone).
    fn jump(&self, published: &mut u64, tock: u64) {
        if tock > *published {
            self.feed.reset(tock);
            *published = tock;
            self.tock.store(tock, Ordering::Release);
        }
    }

    async fn reader(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }
}

/// What one committed group produced.
struct Committed {
    results: Vec<Result<Vec<Outcome>, StoreError>>,
    /// Other nodes' changes between this node's last publication and
    /// this transaction's start (`None`: too many, not read).
    before: Option<Vec<Change>>,
    start: u64,
    changes: Vec<Change>,
    pruned: u64,
}

/// Why a group failed: `sent` when its `COMMIT` was sent (the outcome is
/// then unknown).
struct Failed {
    error: StoreError,
    sent: bool,
}

impl From<tokio_postgres::Error> for Failed {
    fn from(e: tokio_postgres::Error) -> Failed {
        Failed {
            error: db(e),
            sent: false,
        }
    }
}

impl From<StoreError> for Failed {
    fn from(error: StoreError) -> Failed {
        Failed { error, sent: false }
    }
}

/// One group in one transaction, its statements pipelined: `BEGIN`; the
/// `meta` lock and the rows the group reads; every write (and the other
/// nodes' changes the feed lacks); `COMMIT` — four round trips whatever
/// the group's size.
async fn commit_group(
    shared: &Shared,
    conn: &mut Conn,
    reqs: &[WriteReq],
    history: u64,
) -> Result<Committed, Failed> {
    let sql = &shared.sql;
    let Conn { client, st } = conn;
    let mut keys = Vec::new();
    let mut seen = HashSet::new();
    for req in reqs {
        for k in plan::keys(&req.ops) {
            if seen.insert(k.clone()) {
                keys.push(k);
            }
        }
    }
    let txn = client.transaction().await?;
    // Sent together; the server runs them in order, so the rows are read
    // under the lock.
    let (meta, rows) = try_join(
        txn.query_one(&st.lock_meta, &[]),
        txn.query(&st.get_many, &[&keys]),
    )
    .await?;
    let start = tock_of(&meta, 0)?.0;
    let mut pruned = tock_of(&meta, 1)?.0;
    let mut current: HashMap<Vec<u8>, Entry> = HashMap::with_capacity(keys.len());
    for row in rows {
        let key: Vec<u8> = row.try_get(0)?;
        let value: &[u8] = row.try_get(2)?;
        current.insert(
            key,
            Entry {
                tock: tock_of(&row, 1)?,
                value: decode_value(value)?,
            },
        );
    }
    let mut tock = start;
    let mut results = Vec::with_capacity(reqs.len());
    let mut changes = Vec::new();
    // Each node's last value in the group, for `data`.
    let mut last: BTreeMap<Vec<u8>, Option<(i64, Vec<u8>)>> = BTreeMap::new();
    let (mut log_tocks, mut log_keys, mut log_values) = (Vec::new(), Vec::new(), Vec::new());
    for req in reqs {
        match plan::plan(&mut current, &req.ops, Tock(tock)) {
            Err(e) => results.push(Err(e)),
            Ok(planned) => {
                for p in planned.changes {
                    let at = p.change.tock.0;
                    let bytes = p.change.value.as_ref().map(encode_value);
                    match &p.change.value {
                        Some(v) => {
                            current.insert(
                                p.key.clone(),
                                Entry {
                                    value: v.clone(),
                                    tock: p.change.tock,
                                },
                            );
                        }
                        None => {
                            current.remove(&p.key);
                        }
                    }
                    let t = sql_tock(at)?;
                    last.insert(p.key.clone(), bytes.clone().map(|b| (t, b)));
                    log_tocks.push(t);
                    log_keys.push(p.key);
                    log_values.push(bytes);
                    tock = at;
                    changes.push(p.change);
                }
                results.push(Ok(planned.outcomes));
            }
        }
    }
    let (mut up_keys, mut up_tocks, mut up_values, mut gone) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (k, v) in last {
        match v {
            Some((t, b)) => {
                up_keys.push(k);
                up_tocks.push(t);
                up_values.push(b);
            }
            None => gone.push(k),
        }
    }
    let floor = plan::pruned_after(Tock(tock), history, pruned);
    if let Some(f) = floor {
        pruned = f;
    }
    let (tock_sql, pruned_sql, floor_sql) = (
        sql_tock(tock)?,
        sql_tock(pruned)?,
        sql_tock(floor.unwrap_or(0))?,
    );
    let tock_text = tock.to_string();
    let up: [&(dyn ToSql + Sync); 3] = [&up_keys, &up_tocks, &up_values];
    let gone_p: [&(dyn ToSql + Sync); 1] = [&gone];
    let log_p: [&(dyn ToSql + Sync); 3] = [&log_tocks, &log_keys, &log_values];
    let prune_p: [&(dyn ToSql + Sync); 1] = [&floor_sql];
    let meta_p: [&(dyn ToSql + Sync); 2] = [&tock_sql, &pruned_sql];
    let notify_p: [&(dyn ToSql + Sync); 2] = [&sql.channel, &tock_text];
    let mut writes: Vec<Pending<'_>> = Vec::new();
    if tock != start {
        if !up_keys.is_empty() {
            writes.push(Box::pin(txn.execute(&st.upsert, &up)));
        }
        if !gone.is_empty() {
            writes.push(Box::pin(txn.execute(&st.delete, &gone_p)));
        }
        writes.push(Box::pin(txn.execute(&st.log, &log_p)));
        if floor.is_some() {
            writes.push(Box::pin(txn.execute(&st.prune, &prune_p)));
        }
        writes.push(Box::pin(txn.execute(&st.set_meta, &meta_p)));
        writes.push(Box::pin(txn.execute(&st.notify, &notify_p)));
    }
    // What other nodes committed since this node last published: it is
    // all committed (this transaction holds the lock they took), so the
    // feed can go on without a gap. Read with the writes.
    let published = *lock(&shared.published);
    let gap = start > published && start - published <= GAP_IN_TXN;
    let (from_sql, to_sql) = (sql_tock(published)?, sql_tock(start)?);
    let range_p: [&(dyn ToSql + Sync); 2] = [&from_sql, &to_sql];
    let read_gap = async {
        match gap {
            true => txn.query(&st.log_range, &range_p).await.map(Some),
            false => Ok(None),
        }
    };
    let (_, gap_rows) = try_join(try_join_all(writes), read_gap).await?;
    let before = match gap_rows {
        Some(rows) => Some(rows.iter().map(change_of).collect::<Result<Vec<_>, _>>()?),
        None => None,
    };
    txn.commit().await.map_err(|e| Failed {
        error: match db(e) {
            StoreError::Unavailable(m) => StoreError::Unavailable(format!(
                "the database connection failed while committing; the write may have been \
                 applied: {m}"
            )),
            other => other,
        },
        sent: true,
    })?;
    Ok(Committed {
        results,
        before,
        start,
        changes,
        pruned,
    })
}

/// The writer task: one connection, one transaction per group of waiting
/// requests, reconnecting with backoff.
async fn writer(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<WriteReq>, opts: PgOptions) {
    let mut client: Option<Conn> = None;
    let mut backoff = Duration::from_millis(50);
    let mut retry_at: Option<(tokio::time::Instant, StoreError)> = None;
    // How many requests the previous transaction carried: as many are
    // likely to come back for the next one.
    let mut expect = 1usize;
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        let mut gather = |group: &mut Vec<WriteReq>| {
            while group.len() < opts.max_group {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
        };
        gather(&mut group);
        // Fewer than last time: let the others' tasks run once, so that
        // writers answered by the last commit join this one (a lone
        // writer does not wait).
        let mut turns = 0;
        while group.len() < expect && turns < 4 {
            tokio::task::yield_now().await;
            gather(&mut group);
            turns += 1;
        }
        expect = group.len();
        let mut tries = 0;
        let outcome = loop {
            tries += 1;
            if client.as_ref().is_none_or(|c| c.client.is_closed()) {
                client = None;
                if let Some((at, e)) = &retry_at {
                    if tokio::time::Instant::now() < *at {
                        break Err(e.clone());
                    }
                }
                let connected = match shared.target.connect(None).await {
                    Ok(c) => match Prepared::on(&c, &shared.sql).await {
                        Ok(st) => Ok(Conn { client: c, st }),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                match connected {
                    Ok(c) => {
                        if retry_at.take().is_some() {
                            tracing::info!("the store's writer reached the database again");
                        }
                        backoff = Duration::from_millis(50);
                        client = Some(c);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "the store's writer cannot reach the database");
                        retry_at = Some((tokio::time::Instant::now() + backoff, e.clone()));
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        break Err(e);
                    }
                }
            }
            let Some(c) = client.as_mut() else {
                break Err(StoreError::Unavailable(
                    "the database is unavailable".into(),
                ));
            };
            match commit_group(&shared, c, &group, opts.history).await {
                Ok(done) => break Ok(done),
                Err(f) => {
                    let closed = c.client.is_closed();
                    if closed {
                        client = None;
                    }
                    // Nothing was committed: once more on a new
                    // connection (the database restarted, say).
                    if closed && !f.sent && tries < 2 {
                        continue;
                    }
                    break Err(f.error);
                }
            }
        };
        match outcome {
            Ok(done) => {
                {
                    let mut published = lock(&shared.published);
                    match done.before {
                        Some(before) => shared.publish_run(&mut published, before),
                        None => shared.jump(&mut published, done.start),
                    }
                    if done.start > *published {
                        shared.jump(&mut published, done.start);
                    }
                    shared.publish_run(&mut published, done.changes);
                    shared.feed.set_pruned(done.pruned);
                }
                for (req, result) in group.into_iter().zip(done.results) {
                    let _ = req.reply.send(result);
                }
            }
            Err(e) => {
                for req in group {
                    let _ = req.reply.send(Err(e.clone()));
                }
                // The follower finds out what a lost COMMIT did.
                shared.wake.notify_one();
            }
        }
    }
}

/// One poll of the change log; whether it read a full page (more may
/// wait).
async fn poll_log(shared: &Shared, follower: &Follower) -> Result<bool, StoreError> {
    let after = *lock(&shared.published);
    let after_sql = sql_tock(after)?;
    let (rows, meta) = try_join(
        follower
            .client
            .query(&follower.log_after, &[&after_sql, &POLL_ROWS]),
        follower.client.query_one(&follower.read_meta, &[]),
    )
    .await
    .map_err(db)?;
    let (tock, pruned) = (tock_of(&meta, 0)?.0, tock_of(&meta, 1)?.0);
    let changes = rows.iter().map(change_of).collect::<Result<Vec<_>, _>>()?;
    let full = changes.len() as i64 >= POLL_ROWS;
    let mut published = lock(&shared.published);
    shared.publish_run(&mut published, changes);
    if !full && tock > *published {
        // The log had nothing past `after` though the tock moved on:
        // those changes were pruned before this node read them.
        let read_up_to = *published;
        if pruned > read_up_to {
            shared.jump(&mut published, tock.min(pruned));
        }
    }
    shared.feed.set_pruned(pruned);
    Ok(full)
}

/// The follower's connection (LISTENing) and its two statements.
struct Follower {
    client: tokio_postgres::Client,
    log_after: Statement,
    read_meta: Statement,
}

impl Follower {
    async fn on(client: tokio_postgres::Client, sql: &Sql) -> Result<Follower, StoreError> {
        client
            .batch_execute(&format!("LISTEN {}", sql.channel))
            .await
            .map_err(db)?;
        let (log_after, read_meta) = try_join(
            client.prepare(&sql.log_after),
            client.prepare(&sql.read_meta),
        )
        .await
        .map_err(db)?;
        Ok(Follower {
            client,
            log_after,
            read_meta,
        })
    }
}

/// The follower task: reads the changes other nodes commit, in tock
/// order, every `poll` or when a notification wakes it.
async fn follow(shared: Arc<Shared>, poll: Duration) {
    let (ntx, mut nrx) = mpsc::unbounded_channel();
    let mut client: Option<Follower> = None;
    let mut backoff = Duration::from_millis(50);
    let mut down = false;
    loop {
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        if client.as_ref().is_none_or(|c| c.client.is_closed()) {
            client = None;
            match shared.target.connect(Some(ntx.clone())).await {
                Ok(c) => match Follower::on(c, &shared.sql).await {
                    Ok(f) => {
                        if down {
                            tracing::info!("the store's follower reached the database again");
                        }
                        down = false;
                        backoff = Duration::from_millis(50);
                        client = Some(f);
                    }
                    Err(e) => tracing::warn!(error = %e, "the follower's LISTEN failed"),
                },
                Err(e) => {
                    if !down {
                        tracing::warn!(error = %e, "the store's follower cannot reach the database");
                    }
                    down = true;
                }
            }
            if client.is_none() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        }
        let Some(c) = client.as_ref() else { continue };
        match poll_log(&shared, c).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the store's follower could not read the change log");
                client = None;
                continue;
            }
        }
        tokio::select! {
            _ = nrx.recv() => {}
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
        while nrx.try_recv().is_ok() {}
    }
}

impl PgStore {
    /// Connects to `target`, creates or checks the schema, and starts the
    /// node's writer and follower. Must run on a tokio runtime.
    pub async fn open(target: &PgTarget, opts: PgOptions) -> Result<PgStore, StoreError> {
        let mut first = target.connect(None).await?;
        let (tock, pruned) = schema::migrate(&mut first, &target.schema).await?;
        drop(first);
        let manager = deadpool_postgres::Manager::from_config(
            target.config.clone(),
            target.tls.clone(),
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(opts.readers.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Backend(format!("the database pool: {e}")))?;
        let shared = Arc::new(Shared {
            target: target.clone(),
            sql: Sql::new(&target.schema),
            pool,
            feed: Arc::new(Feed::new(tock, pruned, opts.feed_bytes, opts.feed_len)),
            published: Mutex::new(tock),
            tock: AtomicU64::new(tock),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        });
        let (writer_tx, writer_rx) = mpsc::unbounded_channel();
        let tasks = vec![
            tokio::spawn(writer(shared.clone(), writer_rx, opts.clone())),
            tokio::spawn(follow(shared.clone(), opts.poll)),
        ];
        Ok(PgStore {
            shared,
            writer: writer_tx,
            tasks,
        })
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.feed.close();
        // The writer ends once it has answered what it holds (its sender
        // goes with the store); the follower has nothing to finish.
        if let Some(f) = self.tasks.get(1) {
            f.abort();
        }
        self.shared.pool.close();
    }
}

#[async_trait]
impl Store for PgStore {
    async fn get(&self, path: &Path) -> Result<Option<Entry>, StoreError> {
        let client = self.shared.reader().await?;
        let stmt = client
            .prepare_cached(&self.shared.sql.get)
            .await
            .map_err(db)?;
        let row = client
            .query_opt(&stmt, &[&path.to_key()])
            .await
            .map_err(db)?;
        match row {
            None => Ok(None),
            Some(row) => {
                let value: &[u8] = row.try_get(1).map_err(db)?;
                Ok(Some(Entry {
                    tock: tock_of(&row, 0)?,
                    value: decode_value(value)?,
                }))
            }
        }
    }

    async fn write(&self, ops: Vec<Op>) -> Result<Vec<Outcome>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(WriteReq { ops, reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn scan(
        &self,
        prefix: &Path,
        opts: ScanOpts,
        after: After<'_>,
        limit: usize,
    ) -> Result<ScanPage, StoreError> {
        let client = self.shared.reader().await?;
        let sql = &self.shared.sql;
        let from = client.prepare_cached(&sql.scan_from).await.map_err(db)?;
        let past = client.prepare_cached(&sql.scan_after).await.map_err(db)?;
        let chunk = limit.saturating_add(1).clamp(2, SCAN_CHUNK);
        let chunk_sql = chunk as i64;
        let mut walk = Walk::new(prefix, opts, after, limit);
        'seek: while let Some(range) = walk.range() {
            use std::ops::Bound;
            let (mut lower, mut included) = match range.0 {
                Bound::Included(k) => (k.to_vec(), true),
                Bound::Excluded(k) => (k.to_vec(), false),
                Bound::Unbounded => (Vec::new(), true),
            };
            let end = match range.1 {
                Bound::Excluded(k) | Bound::Included(k) => k.to_vec(),
                Bound::Unbounded => vec![0xff; 1],
            };
            loop {
                let stmt = if included { &from } else { &past };
                let rows = client
                    .query(stmt, &[&lower, &end, &chunk_sql])
                    .await
                    .map_err(db)?;
                let n = rows.len();
                for row in rows {
                    let key: Vec<u8> = row.try_get(0).map_err(db)?;
                    let bytes: &[u8] = row.try_get(2).map_err(db)?;
                    let tock = tock_of(&row, 1)?;
                    let step = walk.step(&key, bytes.len(), || {
                        Ok(Entry {
                            tock,
                            value: decode_value(bytes)?,
                        })
                    })?;
                    match step {
                        Next::Read => {}
                        Next::Seek => continue 'seek,
                        Next::Stop => return Ok(walk.page(false)),
                    }
                    lower = key;
                    included = false;
                }
                if n < chunk {
                    break 'seek;
                }
            }
        }
        Ok(walk.page(true))
    }

    async fn changes_since(&self, after: Tock, limit: usize) -> Result<Vec<Change>, StoreError> {
        let client = self.shared.reader().await?;
        let sql = &self.shared.sql;
        let stmt = client.prepare_cached(&sql.log_after).await.map_err(db)?;
        let rows = client
            .query(
                &stmt,
                &[&sql_tock(after.0)?, &(limit.clamp(1, 10_000) as i64)],
            )
            .await
            .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        let mut bytes = 0usize;
        for row in &rows {
            let c = change_of(row)?;
            if out.is_empty() && c.tock.0 != after.0 + 1 {
                // The changes right after `after` were pruned.
                return Err(StoreError::HistoryGone { oldest: c.tock.0 });
            }
            bytes += weight(&c);
            out.push(c);
            if bytes >= CHANGES_PAGE_BYTES {
                break;
            }
        }
        if out.is_empty() {
            let meta = client.query_one(&sql.read_meta, &[]).await.map_err(db)?;
            plan::check_history(after, tock_of(&meta, 1)?.0)?;
        }
        Ok(out)
    }

    fn tock(&self) -> Tock {
        Tock(self.shared.tock.load(Ordering::Acquire))
    }

    async fn feed_lag(&self) -> Result<u64, StoreError> {
        let client = self.shared.reader().await?;
        let stmt = client
            .prepare_cached(&self.shared.sql.read_meta)
            .await
            .map_err(db)?;
        let meta = client.query_one(&stmt, &[]).await.map_err(db)?;
        let last = tock_of(&meta, 0)?.0;
        Ok(last.saturating_sub(self.shared.tock.load(Ordering::Acquire)))
    }

    fn subscribe(&self) -> Subscription {
        self.shared.feed.subscribe()
    }

    async fn export(
        &self,
        page: usize,
        out: mpsc::Sender<Vec<(Path, Entry)>>,
    ) -> Result<Tock, StoreError> {
        let mut client = self.shared.reader().await?;
        let sql = &self.shared.sql;
        // One snapshot for the whole walk: what was committed when it
        // began, writes going on meanwhile.
        let txn = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db)?;
        let meta = txn.query_one(&sql.read_meta, &[]).await.map_err(db)?;
        let tock = tock_of(&meta, 0)?;
        let page = page.clamp(1, 10_000);
        let mut lower: Vec<u8> = Vec::new();
        let mut included = true;
        loop {
            let stmt = if included {
                &sql.scan_from
            } else {
                &sql.scan_after
            };
            let end = vec![0xffu8; 1];
            let rows = txn
                .query(stmt.as_str(), &[&lower, &end, &(page as i64)])
                .await
                .map_err(db)?;
            let n = rows.len();
            let mut batch = Vec::with_capacity(n);
            for row in &rows {
                let key: Vec<u8> = row.try_get(0).map_err(db)?;
                let bytes: &[u8] = row.try_get(2).map_err(db)?;
                let path = Path::from_key(&key)
                    .map_err(|e| StoreError::Corrupt(format!("a stored key: {e}")))?;
                batch.push((
                    path,
                    Entry {
                        tock: tock_of(row, 1)?,
                        value: decode_value(bytes)?,
                    },
                ));
                lower = key;
                included = false;
            }
            if !batch.is_empty() {
                out.send(batch).await.map_err(|_| StoreError::Closed)?;
            }
            if n < page {
                break;
            }
        }
        txn.commit().await.map_err(db)?;
        Ok(tock)
    }

    async fn import(
        &self,
        items: Vec<(Path, Entry)>,
        finish: Option<Tock>,
    ) -> Result<(), StoreError> {
        let mut client = self.shared.reader().await?;
        let sql = &self.shared.sql;
        let txn = client.transaction().await.map_err(db)?;
        txn.query_one(&sql.lock_meta, &[]).await.map_err(db)?;
        for chunk in items.chunks(5000) {
            let mut keys = Vec::with_capacity(chunk.len());
            let mut tocks = Vec::with_capacity(chunk.len());
            let mut values = Vec::with_capacity(chunk.len());
            for (path, e) in chunk {
                keys.push(path.to_key());
                tocks.push(sql_tock(e.tock.0)?);
                values.push(encode_value(&e.value));
            }
            let params: [&(dyn ToSql + Sync); 3] = [&keys, &tocks, &values];
            txn.execute(&sql.upsert, &params).await.map_err(db)?;
        }
        if let Some(t) = finish {
            txn.execute(&sql.clear_log, &[]).await.map_err(db)?;
            txn.execute(&sql.set_meta, &[&sql_tock(t.0)?, &sql_tock(t.0)?])
                .await
                .map_err(db)?;
        }
        txn.commit().await.map_err(db)?;
        if let Some(t) = finish {
            let mut published = lock(&self.shared.published);
            self.shared.feed.reset(t.0);
            *published = t.0;
            self.shared.tock.store(t.0, Ordering::Release);
            self.shared.feed.set_pruned(t.0);
        }
        Ok(())
    }
}
