//! The embedded backend: one redb file, written by one thread that groups
//! concurrent writes into shared commits.
//!
//! Why redb: pure Rust (no C toolchain, no unsafe in our build), a single
//! file, ACID with copy-on-write B-trees and checksummed commit slots, so a
//! commit that returned survives `kill -9` and power loss (it is fsync'd by
//! `Durability::Immediate`), and MVCC readers that never block the writer.
//! Its write transactions are serialised, which is why writes go through one
//! thread that batches whatever is queued into one transaction: one fsync
//! then covers every writer that was waiting (group commit). What each
//! batch does is [`crate::plan`]'s decision, read from the write
//! transaction (which holds the group's earlier batches too); scans page
//! with [`crate::walk`].

use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keycard_proto::{encode_into, Path, Value};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::feed::{Feed, Subscription};
use crate::plan;
use crate::stored::decode_value;
use crate::types::{After, Change, Entry, Op, Outcome, ScanOpts, ScanPage, StoreError, Tock};
use crate::walk::{Next, Walk};
use crate::Store;

/// Path key → tock (8 bytes, big-endian) ++ msgpack value.
const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
/// Tock → change record: flag (1 put, 0 delete), key length (u32 BE), key,
/// then the msgpack value for a put.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Counters: "tock" (last tock), "pruned" (highest tock dropped from LOG).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Tuning for [`RedbStore`].
#[derive(Clone, Debug)]
pub struct RedbOptions {
    /// How many changes the change log keeps for watches resuming from a
    /// tock.
    pub history: u64,
    /// redb's page cache, in bytes.
    pub cache_bytes: usize,
    /// The most write requests grouped into one commit.
    pub max_group: usize,
    /// How long the writer may wait for more requests before committing,
    /// when fewer have arrived than went into the previous commit. Several
    /// writers waiting on one commit then share the next one too, instead of
    /// alternating between a big group and a group of one. A lone writer
    /// never waits.
    pub linger: Duration,
    /// Most memory the live change feed keeps (its latest changes); a
    /// watch further behind reads the change log on disk.
    pub feed_bytes: usize,
    /// Most changes the live change feed keeps.
    pub feed_len: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            history: 100_000,
            cache_bytes: 64 << 20,
            max_group: 1024,
            linger: Duration::from_micros(200),
            feed_bytes: 8 << 20,
            feed_len: 1024,
        }
    }
}

struct WriteReq {
    ops: Vec<Op>,
    reply: oneshot::Sender<Result<Vec<Outcome>, StoreError>>,
}

struct Shared {
    /// The open file; `None` while the writer reopens it after an I/O
    /// error (readers then fail with `Backend`, and retry later).
    db: RwLock<Option<Arc<Database>>>,
    /// Set by a reader whose read failed: the writer then checks whether
    /// the file needs reopening.
    suspect: AtomicBool,
    file: PathBuf,
    tock: AtomicU64,
    pruned: AtomicU64,
    commits: AtomicU64,
    feed: Arc<Feed>,
}

/// The embedded, single-file store.
pub struct RedbStore {
    shared: Arc<Shared>,
    writer: std_mpsc::Sender<WriteReq>,
    /// The writer thread, joined when the store is dropped.
    worker: Option<std::thread::JoinHandle<()>>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Opens (or creates) the file and reads its counters: the last tock and
/// the highest tock pruned from the change log.
fn open_db(file: &FsPath, opts: &RedbOptions) -> Result<(Database, u64, u64), StoreError> {
    let db = Database::builder()
        .set_cache_size(opts.cache_bytes)
        .create(file)
        .map_err(backend)?;
    let (tock, pruned) = {
        let txn = db.begin_write().map_err(backend)?;
        let counters = {
            txn.open_table(DATA).map_err(backend)?;
            txn.open_table(LOG).map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            let get = |k: &str| -> Result<u64, StoreError> {
                Ok(meta
                    .get(k)
                    .map_err(backend)?
                    .map(|g| g.value())
                    .unwrap_or(0))
            };
            (get("tock")?, get("pruned")?)
        };
        txn.commit().map_err(backend)?;
        counters
    };
    Ok((db, tock, pruned))
}

/// The database once no reader holds it any more (readers hold it only
/// while they begin a read transaction), so that closing it releases the
/// file's lock; `None` if one still does after five seconds.
fn sole(mut db: Arc<Database>) -> Option<Database> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Arc::try_unwrap(db) {
            Ok(db) => return Some(db),
            Err(again) if Instant::now() < deadline => {
                db = again;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return None,
        }
    }
}

impl Shared {
    /// The open database, for one transaction.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        let db = self.db.read().unwrap_or_else(|e| e.into_inner()).clone();
        db.ok_or_else(|| {
            StoreError::Backend(
                "the store is unavailable: it is being reopened after an I/O error".into(),
            )
        })
    }

    /// Notes a failed read: the writer checks the file's health.
    fn read_failed(&self, e: StoreError) -> StoreError {
        if matches!(e, StoreError::Backend(_)) {
            self.suspect.store(true, Ordering::Release);
        }
        e
    }

    /// Whether the file is usable: after one I/O error redb refuses every
    /// later operation ("previous I/O error") until it is reopened.
    fn healthy(&self) -> bool {
        match self.db() {
            Ok(db) => db.begin_write().is_ok(),
            Err(_) => false,
        }
    }

    /// Reopens the file after an I/O error (the disk was full, say): redb
    /// recovers it to its last commit. Returns whether the store is usable
    /// again; if not (the disk is still full), it stays unavailable and the
    /// writer tries again later. Runs on the writer thread only.
    fn heal(&self, opts: &RedbOptions) -> bool {
        self.suspect.store(false, Ordering::Release);
        if self.healthy() {
            return true;
        }
        let old = self.db.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(old) = old {
            match sole(old) {
                Some(db) => {
                    // It was failing: its close may fail too.
                    let _ = db.close();
                }
                None => {
                    tracing::error!("the store could not be reopened: still in use");
                    return false;
                }
            }
        }
        match open_db(&self.file, opts) {
            Ok((db, tock, pruned)) => {
                let known = self.tock.load(Ordering::Acquire);
                if tock != known {
                    // A commit reported as failed reached the disk after
                    // all (its fsync failed late): keep what the file says,
                    // and let watches catch up from the change log.
                    tracing::error!(
                        file_tock = tock,
                        known_tock = known,
                        "the reopened store's last tock differs from the last commit known"
                    );
                }
                let tock = tock.max(known);
                self.tock.store(tock, Ordering::Release);
                let pruned = pruned.max(self.pruned.load(Ordering::Acquire));
                self.pruned.store(pruned, Ordering::Release);
                self.feed.set_pruned(pruned);
                self.feed.reset(tock);
                *self.db.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(db));
                tracing::warn!("the store was reopened after an I/O error and is usable again");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "the store cannot be reopened yet; retrying");
                false
            }
        }
    }
}

impl RedbStore {
    /// Opens (creating if needed) the store file at `file`. Blocks while
    /// redb opens or recovers the file; call it before serving.
    pub fn open(file: &FsPath, opts: RedbOptions) -> Result<RedbStore, StoreError> {
        let (db, tock, pruned) = open_db(file, &opts)?;
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(Arc::new(db))),
            suspect: AtomicBool::new(false),
            file: file.to_owned(),
            tock: AtomicU64::new(tock),
            pruned: AtomicU64::new(pruned),
            commits: AtomicU64::new(0),
            feed: Arc::new(Feed::new(tock, pruned, opts.feed_bytes, opts.feed_len)),
        });
        // Unbounded, but every sender waits for its reply, so it holds at
        // most one request per outstanding client request.
        let (writer, rx) = std_mpsc::channel();
        let worker = shared.clone();
        let worker = std::thread::Builder::new()
            .name("keycard-store-writer".into())
            .spawn(move || writer_loop(worker, rx, opts))
            .map_err(backend)?;
        Ok(RedbStore {
            shared,
            writer,
            worker: Some(worker),
        })
    }

    /// Compacts the store file at `file` (not open anywhere): what earlier
    /// transactions freed is given back and the file shrinks. Blocks.
    pub fn compact(file: &FsPath) -> Result<(), StoreError> {
        let mut db = Database::builder().open(file).map_err(backend)?;
        // Until it says nothing is left to move.
        while db.compact().map_err(backend)? {}
        Ok(())
    }

    /// How many transactions this store has committed since it was opened
    /// (each covers one or more write requests).
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }
}

impl Drop for RedbStore {
    /// Closes the file before returning, so that the next `open` of it (by
    /// this process or another) finds it free: the writer finishes what it
    /// holds and stops, then the database is closed once the last reader
    /// lets go of it.
    fn drop(&mut self) {
        self.shared.feed.close();
        let (dead, _) = std_mpsc::channel();
        drop(std::mem::replace(&mut self.writer, dead));
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        let db = self
            .shared
            .db
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(db) = db {
            drop(sole(db));
        }
    }
}

fn encode_entry(value: &Value, tock: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(&tock.to_be_bytes());
    encode_into(value, &mut out);
    out
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, StoreError> {
    let (tock, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or_else(|| StoreError::Corrupt("short entry".into()))?;
    Ok(Entry {
        tock: Tock(u64::from_be_bytes(*tock)),
        value: decode_value(rest)?,
    })
}

fn encode_change(key: &[u8], value: Option<&Value>) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 32);
    out.push(u8::from(value.is_some()));
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    if let Some(v) = value {
        encode_into(v, &mut out);
    }
    out
}

fn decode_change(tock: u64, bytes: &[u8]) -> Result<Change, StoreError> {
    let corrupt = || StoreError::Corrupt("bad change record".into());
    let (&flag, rest) = bytes.split_first().ok_or_else(corrupt)?;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
    let len = u32::from_be_bytes(*len) as usize;
    let key = rest.get(..len).ok_or_else(corrupt)?;
    let path = Path::from_key(key).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let value = match flag {
        1 => Some(decode_value(&rest[len..])?),
        0 => None,
        _ => return Err(corrupt()),
    };
    Ok(Change {
        path,
        value,
        tock: Tock(tock),
    })
}

/// The committed state a batch is planned against: the write
/// transaction's data table, which holds the earlier requests of the
/// same group too.
struct TableEntries<'a, T>(&'a T);

impl<T: ReadableTable<&'static [u8], &'static [u8]>> plan::Current for TableEntries<'_, T> {
    fn entry(&mut self, key: &[u8]) -> Result<Option<Entry>, StoreError> {
        match self.0.get(key).map_err(backend)? {
            Some(g) => Ok(Some(decode_entry(g.value())?)),
            None => Ok(None),
        }
    }
}

type Reply = (
    oneshot::Sender<Result<Vec<Outcome>, StoreError>>,
    Result<Vec<Outcome>, StoreError>,
);

/// What one committed group produced.
struct Committed {
    /// Each request's reply channel and result.
    replies: Vec<Reply>,
    /// The changes, in tock order, for the change feed.
    changes: Vec<Change>,
    /// The last tock now.
    tock: u64,
    /// The highest tock dropped from the change log now.
    pruned: u64,
}

/// Applies one group of requests in one transaction. Returns each
/// request's reply and the committed changes, or the error that failed the
/// whole commit (then nothing of the group was written).
fn commit_group(
    shared: &Shared,
    reqs: Vec<WriteReq>,
    opts: &RedbOptions,
) -> Result<Committed, (Vec<WriteReq>, StoreError)> {
    let start = shared.tock.load(Ordering::Acquire);
    let mut tock = start;
    let mut pruned = shared.pruned.load(Ordering::Acquire);
    let db = match shared.db() {
        Ok(db) => db,
        Err(e) => return Err((reqs, e)),
    };
    let txn = match db.begin_write() {
        Ok(t) => t,
        Err(e) => return Err((reqs, backend(e))),
    };
    drop(db);
    let mut results: Vec<Result<Vec<Outcome>, StoreError>> = Vec::with_capacity(reqs.len());
    let mut changes = Vec::new();
    let applied: Result<(), StoreError> = (|| {
        let mut data = txn.open_table(DATA).map_err(backend)?;
        let mut log = txn.open_table(LOG).map_err(backend)?;
        let mut meta = txn.open_table(META).map_err(backend)?;
        for req in &reqs {
            match plan::plan(&mut TableEntries(&data), &req.ops, Tock(tock)) {
                Err(e) => results.push(Err(e)),
                Ok(plan) => {
                    for p in plan.changes {
                        let value = p.change.value.as_ref();
                        let at = p.change.tock.0;
                        match value {
                            Some(v) => {
                                data.insert(p.key.as_slice(), encode_entry(v, at).as_slice())
                                    .map_err(backend)?;
                            }
                            None => {
                                data.remove(p.key.as_slice()).map_err(backend)?;
                            }
                        }
                        log.insert(at, encode_change(&p.key, value).as_slice())
                            .map_err(backend)?;
                        tock = at;
                        changes.push(p.change);
                    }
                    results.push(Ok(plan.outcomes));
                }
            }
        }
        if tock != start {
            meta.insert("tock", tock).map_err(backend)?;
            // Keep the last `history` changes.
            if let Some(floor) = plan::pruned_after(Tock(tock), opts.history, pruned) {
                loop {
                    let first = log.first().map_err(backend)?.map(|(k, _)| k.value());
                    match first {
                        Some(t) if t <= floor => {
                            log.remove(t).map_err(backend)?;
                        }
                        _ => break,
                    }
                }
                pruned = floor;
                meta.insert("pruned", pruned).map_err(backend)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = applied {
        drop(txn);
        return Err((reqs, e));
    }
    if let Err(e) = txn.commit() {
        return Err((reqs, backend(e)));
    }
    let replies = reqs.into_iter().map(|r| r.reply).zip(results).collect();
    Ok(Committed {
        replies,
        changes,
        tock,
        pruned,
    })
}

/// How often an unusable store is tried again (and a failed read checked).
const HEAL_EVERY: Duration = Duration::from_millis(500);

fn writer_loop(shared: Arc<Shared>, rx: std_mpsc::Receiver<WriteReq>, opts: RedbOptions) {
    // How many requests the previous commit carried: as many are likely to
    // come back for the next one.
    let mut expect = 1usize;
    // Whether the last commit failed: the file may need reopening. A
    // reopen can take a while on a large file (redb checks it), so while
    // the disk stays full it is tried at most every HEAL_EVERY; writes in
    // between fail at once.
    let mut failing = false;
    let mut healed_at: Option<Instant> = None;
    let mut heal = |failing: &mut bool| {
        let due = healed_at.is_none_or(|t| t.elapsed() >= HEAL_EVERY);
        if due && (*failing || shared.suspect.load(Ordering::Acquire)) {
            healed_at = Some(Instant::now());
            *failing = !shared.heal(&opts);
        }
    };
    loop {
        let first = match rx.recv_timeout(HEAL_EVERY) {
            Ok(r) => r,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                // Idle: bring a failed store back without waiting for a
                // write (reads fail until then).
                heal(&mut failing);
                continue;
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        };
        heal(&mut failing);
        let mut group = vec![first];
        let gather = |group: &mut Vec<WriteReq>| {
            while group.len() < opts.max_group {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
        };
        gather(&mut group);
        if group.len() < expect {
            let deadline = Instant::now() + opts.linger;
            while group.len() < expect.min(opts.max_group) {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(r) => {
                        group.push(r);
                        gather(&mut group);
                    }
                    Err(_) => break,
                }
            }
        }
        expect = group.len();
        match commit_group(&shared, group, &opts) {
            Ok(Committed {
                replies,
                changes,
                tock,
                pruned,
            }) => {
                shared.tock.store(tock, Ordering::Release);
                shared.pruned.store(pruned, Ordering::Release);
                shared.commits.fetch_add(1, Ordering::Relaxed);
                shared.feed.publish(changes);
                shared.feed.set_pruned(pruned);
                for (tx, result) in replies {
                    let _ = tx.send(result);
                }
            }
            Err((reqs, e)) => {
                tracing::error!(error = %e, "store commit failed; {} write requests refused", reqs.len());
                for r in reqs {
                    let _ = r.reply.send(Err(e.clone()));
                }
                // An I/O error (a full disk) leaves redb refusing every
                // later read and write until the file is reopened: do it
                // now, so reads work again at once and writes as soon as
                // there is space.
                failing = true;
                heal(&mut failing);
            }
        }
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn get(&self, path: &Path) -> Result<Option<Entry>, StoreError> {
        let read = || {
            let txn = self.shared.db()?.begin_read().map_err(backend)?;
            let data = txn.open_table(DATA).map_err(backend)?;
            let got = data.get(path.to_key().as_slice()).map_err(backend)?;
            got.map(|g| decode_entry(g.value())).transpose()
        };
        read().map_err(|e| self.shared.read_failed(e))
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
        self.scan_page(prefix, opts, after, limit)
            .map_err(|e| self.shared.read_failed(e))
    }

    async fn changes_since(&self, after: Tock, limit: usize) -> Result<Vec<Change>, StoreError> {
        self.changes_page(after, limit)
            .map_err(|e| self.shared.read_failed(e))
    }

    fn tock(&self) -> Tock {
        Tock(self.shared.tock.load(Ordering::Acquire))
    }

    fn subscribe(&self) -> Subscription {
        self.shared.feed.subscribe()
    }

    async fn export(
        &self,
        page: usize,
        out: tokio::sync::mpsc::Sender<Vec<(Path, Entry)>>,
    ) -> Result<Tock, StoreError> {
        let shared = self.shared.clone();
        let page = page.max(1);
        // One read transaction: redb's snapshot of one commit.
        let run = move || -> Result<Tock, StoreError> {
            let txn = shared.db()?.begin_read().map_err(backend)?;
            let tock = txn
                .open_table(META)
                .map_err(backend)?
                .get("tock")
                .map_err(backend)?
                .map_or(0, |g| g.value());
            let data = txn.open_table(DATA).map_err(backend)?;
            let mut batch = Vec::with_capacity(page);
            for item in data.iter().map_err(backend)? {
                let (k, v) = item.map_err(backend)?;
                let path = Path::from_key(k.value())
                    .map_err(|e| StoreError::Corrupt(format!("a stored key: {e}")))?;
                batch.push((path, decode_entry(v.value())?));
                if batch.len() == page {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(page));
                    out.blocking_send(full).map_err(|_| StoreError::Closed)?;
                }
            }
            if !batch.is_empty() {
                out.blocking_send(batch).map_err(|_| StoreError::Closed)?;
            }
            Ok(Tock(tock))
        };
        tokio::task::spawn_blocking(run).await.map_err(backend)?
    }

    async fn import(
        &self,
        items: Vec<(Path, Entry)>,
        finish: Option<Tock>,
    ) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        let run = move || -> Result<(), StoreError> {
            let txn = shared.db()?.begin_write().map_err(backend)?;
            {
                let mut data = txn.open_table(DATA).map_err(backend)?;
                for (path, e) in &items {
                    let entry = encode_entry(&e.value, e.tock.0);
                    data.insert(path.to_key().as_slice(), entry.as_slice())
                        .map_err(backend)?;
                }
                if let Some(t) = finish {
                    let mut meta = txn.open_table(META).map_err(backend)?;
                    meta.insert("tock", t.0).map_err(backend)?;
                    meta.insert("pruned", t.0).map_err(backend)?;
                }
            }
            txn.commit().map_err(backend)?;
            if let Some(t) = finish {
                shared.tock.store(t.0, Ordering::Release);
                shared.pruned.store(t.0, Ordering::Release);
            }
            Ok(())
        };
        tokio::task::spawn_blocking(run).await.map_err(backend)?
    }
}

impl RedbStore {
    fn scan_page(
        &self,
        prefix: &Path,
        opts: ScanOpts,
        after: After<'_>,
        limit: usize,
    ) -> Result<ScanPage, StoreError> {
        let txn = self.shared.db()?.begin_read().map_err(backend)?;
        let data = txn.open_table(DATA).map_err(backend)?;
        let mut walk = Walk::new(prefix, opts, after, limit);
        'seek: while let Some(range) = walk.range() {
            for item in data.range::<&[u8]>(range).map_err(backend)? {
                let (k, v) = item.map_err(backend)?;
                let stored = v.value();
                match walk.step(k.value(), stored.len(), || decode_entry(stored))? {
                    Next::Read => {}
                    Next::Seek => continue 'seek,
                    Next::Stop => return Ok(walk.page(false)),
                }
            }
            break;
        }
        Ok(walk.page(true))
    }

    fn changes_page(&self, after: Tock, limit: usize) -> Result<Vec<Change>, StoreError> {
        let txn = self.shared.db()?.begin_read().map_err(backend)?;
        plan::check_history(after, self.shared.pruned.load(Ordering::Acquire))?;
        let log = txn.open_table(LOG).map_err(backend)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in log.range(after.0 + 1..).map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            bytes += v.value().len();
            out.push(decode_change(k.value(), v.value())?);
            if out.len() >= limit || bytes >= plan::CHANGES_PAGE_BYTES {
                break;
            }
        }
        Ok(out)
    }
}
