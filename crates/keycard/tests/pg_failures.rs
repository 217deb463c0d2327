//! The PostgreSQL store when the database fails under a running node:
//! the database restarts (cleanly, then after a crash), a node is killed
//! mid-write, the primary fails over to a promoted standby, and a login
//! is tried while the database is away.
//!
//! What must hold every time: a write the node acknowledged is never
//! lost; while the database is away requests fail with
//! `backend_unavailable` (never `store_failed`, `internal`, or, for a
//! login, `auth_failed`), and never hang; once the database is back the
//! node serves again by itself; a watch opened before the outage goes on
//! reporting, in tock order, every change committed under it.
//!
//! Each test runs its own private PostgreSQL 15 (`keycard-pgtest`) and
//! skips with a message when PostgreSQL 15 is not installed. The tests
//! take turns (a lock), so the recovery times they print are not skewed
//! by each other.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use keycard_client::{Client, ClientError, Event};
use keycard_pgtest::PgInstance;
use keycard_proto::{ErrorCode, Msg, Path, Value};
use support::Proc;

/// One test at a time: each starts PostgreSQL clusters and nodes, and
/// measures how long recovery takes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The longest one client call may take before it counts as hung.
const CALL_WAIT: Duration = Duration::from_secs(15);

/// How long a node may take to serve writes again once its database is
/// back.
const RECOVERY: Duration = Duration::from_secs(10);

/// How long writes may take to succeed again after a standby's promotion.
const FAILOVER: Duration = Duration::from_secs(15);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn p(text: &str) -> Path {
    Path::parse(text).expect("path")
}

/// Whether this machine can run private PostgreSQL instances; prints why
/// the test is skipped when not.
fn can_run(test: &str) -> bool {
    let ok = keycard_pgtest::available();
    if !ok {
        eprintln!(
            "skipping {test}: PostgreSQL 15 is not installed at {} (set KEYCARD_PGTEST_BIN)",
            keycard_pgtest::bin_dir().display()
        );
    }
    ok
}

/// Runs a blocking `keycard-pgtest` call off the runtime's threads;
/// panics, naming `what`, if it fails.
async fn blocking<T, F>(what: &str, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(e) => panic!("{what}: the blocking task failed: {e}"),
    }
}

/// A private PostgreSQL, started.
async fn private_pg() -> Arc<PgInstance> {
    Arc::new(blocking("starting PostgreSQL", PgInstance::start).await)
}

/// `url` with keycard's parameters: schema `kc`, no TLS.
fn store_url(base: &str) -> String {
    format!("{base}?schema=kc&sslmode=disable")
}

/// `keycard serve --store URL --node NAME` on a fresh data directory
/// (inside `dir`); with `KEYCARD_TEST_LOG` set (say `debug`), it logs at
/// that level.
async fn start_node(dir: &tempfile::TempDir, url: &str, name: &str) -> Proc {
    let data = dir.path().join(name);
    let mut args = vec![
        "--store".to_owned(),
        url.to_owned(),
        "--node".to_owned(),
        name.to_owned(),
    ];
    if let Ok(level) = std::env::var("KEYCARD_TEST_LOG") {
        args.push("--log".into());
        args.push(level);
    }
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::start_with(&data, &args)
    })
    .await
    .expect("starting a node")
}

/// The lines of a node's log that say something about the store, the
/// database or a failure (for failure messages).
fn store_lines(node: &Proc, max: usize) -> String {
    let log = node.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("store")
                || l.contains("database")
                || l.contains("warn")
                || l.contains("error")
        })
        .collect();
    let from = lines.len().saturating_sub(max);
    lines[from..].join("\n")
}

async fn connect(addr: SocketAddr) -> Client {
    tokio::time::timeout(CALL_WAIT, Client::connect(addr))
        .await
        .expect("connecting timed out")
        .expect("connect")
}

// ----- writers -----

/// Why a write was not acknowledged.
#[derive(Clone, Debug)]
enum Failure {
    /// The server answered with an error.
    Server(Option<ErrorCode>, String),
    /// The connection failed (closed, I/O).
    Connection(String),
    /// No answer within [`CALL_WAIT`].
    Hung,
}

impl Failure {
    fn of(e: &ClientError) -> Failure {
        match e {
            ClientError::Server { code, text } => Failure::Server(*code, text.clone()),
            other => Failure::Connection(other.to_string()),
        }
    }

    fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Failure::Server(Some(ErrorCode::BackendUnavailable), _)
        )
    }

    fn describe(&self) -> String {
        match self {
            Failure::Server(code, text) => {
                format!("{} ({text})", code.map_or("no code", ErrorCode::as_str))
            }
            Failure::Connection(text) => format!("connection: {text}"),
            Failure::Hung => format!("no answer within {CALL_WAIT:?}"),
        }
    }
}

/// One `set` a writer made: `base.KEY = value`.
#[derive(Clone, Debug)]
struct Write {
    key: String,
    value: i64,
    started: Instant,
    done: Instant,
    /// The tock it was acknowledged with, or why not.
    result: Result<u64, Failure>,
}

type Writes = Arc<Mutex<Vec<Write>>>;

/// Sets `base.{tag}NNNNNN = NNNNNN` for N = 1, 2, … until `stop`,
/// recording every outcome; pauses `pause` between writes (and a little
/// longer after a failure). Stops early when the connection is gone.
async fn write_loop(
    c: Client,
    base: Path,
    tag: String,
    pause: Duration,
    stop: Arc<AtomicBool>,
    writes: Writes,
) {
    let mut i: i64 = 0;
    while !stop.load(Ordering::Acquire) {
        i += 1;
        let key = format!("{tag}{i:06}");
        let started = Instant::now();
        let answer =
            tokio::time::timeout(CALL_WAIT, c.set(&base.child(key.as_str()), i.into())).await;
        let result = match answer {
            Ok(Ok(r)) => Ok(r.tock),
            Ok(Err(e)) => Err(Failure::of(&e)),
            Err(_) => Err(Failure::Hung),
        };
        let gone = matches!(result, Err(Failure::Connection(_)));
        let failed = result.is_err();
        lock(&writes).push(Write {
            key,
            value: i,
            started,
            done: Instant::now(),
            result,
        });
        if gone {
            return;
        }
        tokio::time::sleep(if failed {
            Duration::from_millis(20)
        } else {
            pause
        })
        .await;
    }
}

/// How long after `since` the first write begun at or after `since`
/// was acknowledged; waits at most `limit` for one.
async fn recovered(writes: &Writes, since: Instant, limit: Duration) -> Option<Duration> {
    let deadline = Instant::now() + limit;
    loop {
        let first = lock(writes)
            .iter()
            .find(|w| w.started >= since && w.result.is_ok())
            .map(|w| w.done.saturating_duration_since(since));
        if first.is_some() {
            return first;
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until some write begun after now has been acknowledged (at
/// most `limit`).
async fn some_acked(writes: &Writes, limit: Duration) -> bool {
    recovered(writes, Instant::now(), limit).await.is_some()
}

/// A summary of the failures among `writes`: how many of each kind, with
/// an example text.
fn failure_summary(writes: &[Write]) -> String {
    let mut kinds: std::collections::BTreeMap<String, (usize, String)> = Default::default();
    for w in writes {
        if let Err(f) = &w.result {
            let kind = match f {
                Failure::Server(code, _) => code.map_or("no code", ErrorCode::as_str).to_owned(),
                Failure::Connection(_) => "connection".to_owned(),
                Failure::Hung => "hung".to_owned(),
            };
            let e = kinds.entry(kind).or_insert((0, f.describe()));
            e.0 += 1;
        }
    }
    if kinds.is_empty() {
        return "none".into();
    }
    kinds
        .into_iter()
        .map(|(k, (n, example))| format!("{n}× {k}, e.g. {example}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Reads every acknowledged write of `writes` back through `addr` (four
/// connections); returns what does not match: (key, what was found).
async fn unreadable(addr: SocketAddr, base: &Path, writes: &[Write]) -> Vec<(String, String)> {
    let acked: Vec<(String, i64, u64)> = writes
        .iter()
        .filter_map(|w| w.result.as_ref().ok().map(|t| (w.key.clone(), w.value, *t)))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    let share = acked.len().div_ceil(4).max(1);
    for part in acked.chunks(share) {
        let part = part.to_vec();
        let base = base.clone();
        tasks.spawn(async move {
            let c = connect(addr).await;
            let mut bad = Vec::new();
            for (key, value, tock) in part {
                let path = base.child(key.as_str());
                // A read may meet a pooled connection the outage broke:
                // a few tries, each a fresh request.
                let mut last = String::new();
                let mut ok = false;
                for _ in 0..3 {
                    match tokio::time::timeout(CALL_WAIT, c.get(&path)).await {
                        Ok(Ok(Some(n))) if n.value == Value::from(value) && n.tock == tock => {
                            ok = true;
                            break;
                        }
                        Ok(Ok(Some(n))) => {
                            last = format!(
                                "value {:?} at tock {} (acked tock {tock})",
                                n.value, n.tock
                            );
                            break;
                        }
                        Ok(Ok(None)) => {
                            last = format!("missing (acked at tock {tock})");
                            break;
                        }
                        Ok(Err(e)) => last = format!("read failed: {e}"),
                        Err(_) => last = "read hung".into(),
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if !ok {
                    bad.push((key, last));
                }
            }
            bad
        });
    }
    let mut bad = Vec::new();
    while let Some(part) = tasks.join_next().await {
        bad.extend(part.expect("a read task"));
    }
    bad.sort();
    bad
}

/// Every node under `base`, read through `addr` with `get_tree`: key
/// (relative path) → (value, tock).
async fn tree(addr: SocketAddr, base: &Path) -> std::collections::BTreeMap<String, (Value, u64)> {
    let c = connect(addr).await;
    let items = tokio::time::timeout(CALL_WAIT, async {
        c.get_tree(base, None, None).await?.collect().await
    })
    .await
    .expect("get_tree hung")
    .expect("get_tree");
    items
        .into_iter()
        .filter_map(|i| Some((i.path.to_string(), (i.value?, i.tock))))
        .collect()
}

// ----- watches -----

/// What a watch reported.
#[derive(Default)]
struct Seen {
    /// Its changes, in the order they came: (relative path, value, tock).
    items: Vec<(String, Option<Value>, u64)>,
    /// How it ended (each time) before the test stopped reading.
    ends: Vec<String>,
    /// What the fetch of a re-opened watch sent.
    refetched: Vec<(String, Option<Value>, u64)>,
}

/// Watches `base` on `addr` (opened before this returns, its `uptodate`
/// read); a task records what it reports in the returned [`Seen`]. If
/// the server ends the watch, that is recorded and the watch re-opened
/// with a fetch.
async fn watch(addr: SocketAddr, base: Path) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut c = connect(addr).await;
    let mut stream = tokio::time::timeout(CALL_WAIT, async {
        let mut s = c.watch(&base, true).await?;
        s.uptodate().await?;
        Ok::<_, ClientError>(s)
    })
    .await
    .expect("opening the watch hung")
    .expect("watch");
    let kept = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let end = match stream.next_event().await {
                Some(Ok(Event::Item(i))) => {
                    lock(&kept)
                        .items
                        .push((i.path.to_string(), i.value, i.tock));
                    continue;
                }
                Some(Ok(Event::UpToDate)) => continue,
                Some(Err(e)) => format!(
                    "{} at {:?}: {e}",
                    e.code().map_or("no code", ErrorCode::as_str),
                    Instant::now()
                ),
                None => "the stream ended without an error".to_owned(),
            };
            eprintln!("the watch on {base} ended: {end}");
            lock(&kept).ends.push(end);
            // Re-open it (a fresh connection if this one is gone).
            let mut tries = 0;
            stream = loop {
                tries += 1;
                assert!(tries <= 100, "the watch could not be re-opened");
                tokio::time::sleep(Duration::from_millis(100)).await;
                let opened = tokio::time::timeout(CALL_WAIT, async {
                    let mut s = c.watch(&base, true).await?;
                    let items = s.uptodate().await?;
                    Ok::<_, ClientError>((s, items))
                })
                .await;
                match opened {
                    Ok(Ok((s, items))) => {
                        lock(&kept).refetched.extend(
                            items
                                .into_iter()
                                .map(|i| (i.path.to_string(), i.value, i.tock)),
                        );
                        break s;
                    }
                    Ok(Err(e)) => {
                        lock(&kept).ends.push(format!("re-opening failed: {e}"));
                        if matches!(e, ClientError::Closed(_) | ClientError::Io(_)) {
                            if let Ok(Ok(fresh)) =
                                tokio::time::timeout(CALL_WAIT, Client::connect(addr)).await
                            {
                                c = fresh;
                            }
                        }
                    }
                    Err(_) => lock(&kept).ends.push("re-opening hung".into()),
                }
            };
        }
    });
    (seen, task)
}

/// Waits (at most `limit`) until the watch has reported a change at
/// `tock` or later.
async fn watch_reaches(seen: &Mutex<Seen>, tock: u64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if lock(seen).items.iter().any(|(_, _, t)| *t >= tock) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What is wrong with what a watch reported, given the acknowledged
/// writes and the subtree's final state (`tree`: every change committed
/// under it, since each key is written once): its tocks must increase,
/// and it must report each committed change — acknowledged or not —
/// once, with its value, and nothing else.
fn watch_problems(
    seen: &Seen,
    writes: &[Write],
    tree: &std::collections::BTreeMap<String, (Value, u64)>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for pair in seen.items.windows(2) {
        if pair[1].2 <= pair[0].2 {
            problems.push(format!(
                "tock order: {} at {} came after {} at {}",
                pair[1].0, pair[1].2, pair[0].0, pair[0].2
            ));
        }
    }
    let reported: std::collections::BTreeMap<&str, (&Option<Value>, u64)> = seen
        .items
        .iter()
        .map(|(k, v, t)| (k.as_str(), (v, *t)))
        .collect();
    let mut missing_acked = Vec::new();
    for w in writes {
        if let Ok(tock) = w.result {
            match reported.get(w.key.as_str()) {
                Some((Some(v), t)) if *v == Value::from(w.value) && *t == tock => {}
                Some(other) => problems.push(format!(
                    "{} (acked at tock {tock}) was reported as {other:?}",
                    w.key
                )),
                None => missing_acked.push(format!("{}@{tock}", w.key)),
            }
        }
    }
    if !missing_acked.is_empty() {
        problems.push(format!(
            "{} acknowledged writes never reported by the watch: {}",
            missing_acked.len(),
            preview(&missing_acked)
        ));
    }
    let missing_committed: Vec<String> = tree
        .iter()
        .filter(|(k, (_, t))| reported.get(k.as_str()).is_none_or(|(_, rt)| rt != t))
        .map(|(k, (_, t))| format!("{k}@{t}"))
        .collect();
    if !missing_committed.is_empty() {
        problems.push(format!(
            "{} committed changes (acknowledged or not) missing from the watch: {}",
            missing_committed.len(),
            preview(&missing_committed)
        ));
    }
    let phantom: Vec<String> = seen
        .items
        .iter()
        .filter(|(k, _, t)| tree.get(k).is_none_or(|(_, tt)| tt != t))
        .map(|(k, _, t)| format!("{k}@{t}"))
        .collect();
    if !phantom.is_empty() {
        problems.push(format!(
            "{} reported changes that are not in the tree: {}",
            phantom.len(),
            preview(&phantom)
        ));
    }
    if !seen.ends.is_empty() {
        problems.push(format!(
            "the server ended the watch {} time(s): {:?}",
            seen.ends.len(),
            seen.ends
        ));
    }
    problems
}

fn preview(list: &[String]) -> String {
    let head: Vec<&str> = list.iter().take(12).map(String::as_str).collect();
    if list.len() > head.len() {
        format!("{} … ({} more)", head.join(", "), list.len() - head.len())
    } else {
        head.join(", ")
    }
}

fn acked(writes: &[Write]) -> usize {
    writes.iter().filter(|w| w.result.is_ok()).count()
}

fn last_acked_tock(writes: &[Write]) -> u64 {
    writes
        .iter()
        .filter_map(|w| w.result.as_ref().ok().copied())
        .max()
        .unwrap_or(0)
}

// ----- the tests -----

/// The database restarts twice under a node that writes continuously:
/// once cleanly (fast shutdown), once after a crash (immediate shutdown,
/// crash recovery on start). Meanwhile every write fails with
/// `backend_unavailable`; afterwards the node serves again by itself, and
/// every acknowledged write is readable and was reported, in order, by a
/// watch opened before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restart_mid_run_loses_nothing_acknowledged() {
    if !can_run("database_restart_mid_run_loses_nothing_acknowledged") {
        return;
    }
    let _turn = SERIAL.lock().await;
    let pg = private_pg().await;
    let dir = tempfile::tempdir().expect("tmp");
    let node = start_node(&dir, &store_url(&pg.url("keycard")), "n1").await;
    let base = p("w");

    let (seen, watcher) = watch(node.addr, base.clone()).await;
    let writes: Writes = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_loop(
        connect(node.addr).await,
        base.clone(),
        "k".into(),
        Duration::from_millis(2),
        stop.clone(),
        writes.clone(),
    ));
    assert!(
        some_acked(&writes, RECOVERY).await,
        "no write succeeded before the outage: {}\n{}",
        failure_summary(&lock(&writes)),
        store_lines(&node, 30)
    );
    tokio::time::sleep(Duration::from_millis(700)).await;

    let mut outages = Vec::new();
    for (how, crash) in [("fast restart", false), ("crash + restart", true)] {
        let down = Instant::now();
        let db = pg.clone();
        if crash {
            blocking("killing PostgreSQL", move || db.kill()).await;
            // Let the writes meet the database away for a while.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let db = pg.clone();
            blocking("restarting PostgreSQL", move || db.restart()).await;
        } else {
            blocking("restarting PostgreSQL", move || db.restart()).await;
        }
        let back = Instant::now();
        let took = recovered(&writes, back, RECOVERY).await;
        let failed_during = lock(&writes)
            .iter()
            .filter(|w| w.started >= down && w.result.is_err())
            .count();
        eprintln!(
            "{how}: PostgreSQL was away {:?}; {failed_during} writes failed meanwhile; the node \
             served writes again {} after PostgreSQL was back",
            back - down,
            took.map_or("NOT within the limit".to_owned(), |d| format!("{d:?}"))
        );
        assert!(
            took.is_some(),
            "{how}: no write succeeded within {RECOVERY:?} after PostgreSQL was back; \
             failures: {}\nthe node's log:\n{}",
            failure_summary(&lock(&writes)),
            store_lines(&node, 40)
        );
        outages.push((how, took));
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    stop.store(true, Ordering::Release);
    tokio::time::timeout(CALL_WAIT * 2, writer)
        .await
        .expect("the writer did not stop")
        .expect("the writer");
    let writes = lock(&writes).clone();
    let last = last_acked_tock(&writes);
    let caught_up = watch_reaches(&seen, last, RECOVERY).await;
    watcher.abort();

    eprintln!(
        "{} writes, {} acknowledged (last tock {last}); failures: {}",
        writes.len(),
        acked(&writes),
        failure_summary(&writes)
    );
    let mut problems = Vec::new();
    let wrong: Vec<String> = writes
        .iter()
        .filter_map(|w| match &w.result {
            Err(f) if !f.is_unavailable() => Some(format!("{}: {}", w.key, f.describe())),
            _ => None,
        })
        .collect();
    if !wrong.is_empty() {
        problems.push(format!(
            "{} writes failed other than with backend_unavailable: {}",
            wrong.len(),
            preview(&wrong)
        ));
    }
    let bad = unreadable(node.addr, &base, &writes).await;
    if !bad.is_empty() {
        problems.push(format!(
            "{} acknowledged writes not read back: {:?}",
            bad.len(),
            &bad[..bad.len().min(12)]
        ));
    }
    let tree = tree(node.addr, &base).await;
    let applied_anyway = writes
        .iter()
        .filter(|w| w.result.is_err() && tree.contains_key(&w.key))
        .count();
    eprintln!(
        "{applied_anyway} writes that failed were applied nonetheless (a COMMIT whose answer was \
         lost); the watch reported {} changes, ended {} time(s)",
        lock(&seen).items.len(),
        lock(&seen).ends.len()
    );
    if !caught_up {
        problems.push(format!(
            "the watch did not reach tock {last} within {RECOVERY:?}"
        ));
    }
    problems.extend(watch_problems(&lock(&seen), &writes, &tree));
    assert!(
        problems.is_empty(),
        "{}\nthe node's log:\n{}",
        problems.join("\n"),
        store_lines(&node, 40)
    );
}

/// Two nodes on one schema; eight writers storm node A, which is killed
/// (SIGKILL) mid-storm. Every write A acknowledged is readable through
/// node B, whose watch (opened before) reported them all in order, and B
/// serves reads and writes throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_storm_loses_nothing_it_acknowledged() {
    if !can_run("a_node_killed_mid_storm_loses_nothing_it_acknowledged") {
        return;
    }
    let _turn = SERIAL.lock().await;
    let pg = private_pg().await;
    let dir = tempfile::tempdir().expect("tmp");
    let url = store_url(&pg.url("keycard"));
    let mut a = start_node(&dir, &url, "a").await;
    let b = start_node(&dir, &url, "b").await;
    let base = p("s");

    let (seen, watcher) = watch(b.addr, base.clone()).await;

    // B's own traffic: a write and a read every 20 ms, each must work.
    let b_stop = Arc::new(AtomicBool::new(false));
    let b_failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let b_task = {
        let (stop, failures) = (b_stop.clone(), b_failures.clone());
        let c = connect(b.addr).await;
        tokio::spawn(async move {
            let mut i: i64 = 0;
            while !stop.load(Ordering::Acquire) {
                i += 1;
                let at = p("b").child(i);
                match tokio::time::timeout(CALL_WAIT, c.set(&at, i.into())).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => lock(&failures).push(format!("set {at}: {e}")),
                    Err(_) => lock(&failures).push(format!("set {at}: hung")),
                }
                match tokio::time::timeout(CALL_WAIT, c.get(&at)).await {
                    Ok(Ok(Some(n))) if n.value == Value::from(i) => {}
                    Ok(other) => lock(&failures).push(format!("get {at}: {other:?}")),
                    Err(_) => lock(&failures).push(format!("get {at}: hung")),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            i
        })
    };

    let writes: Writes = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for n in 0..8 {
        writers.push(tokio::spawn(write_loop(
            connect(a.addr).await,
            base.clone(),
            format!("w{n}_"),
            Duration::ZERO,
            stop.clone(),
            writes.clone(),
        )));
    }
    assert!(
        some_acked(&writes, RECOVERY).await,
        "A acknowledged no write: {}\n{}",
        failure_summary(&lock(&writes)),
        store_lines(&a, 30)
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let killed = Instant::now();
    a.kill9();
    for w in writers {
        tokio::time::timeout(CALL_WAIT * 2, w)
            .await
            .expect("a writer did not stop after A died")
            .expect("a writer");
    }
    stop.store(true, Ordering::Release);
    // B goes on a while after A's death.
    tokio::time::sleep(Duration::from_millis(500)).await;
    b_stop.store(true, Ordering::Release);
    let b_rounds = tokio::time::timeout(CALL_WAIT * 2, b_task)
        .await
        .expect("B's traffic did not stop")
        .expect("B's traffic");

    let writes = lock(&writes).clone();
    let after_kill = writes.iter().filter(|w| w.done >= killed).count();
    let last = last_acked_tock(&writes);
    eprintln!(
        "A: {} writes, {} acknowledged (last tock {last}), {after_kill} answered or failed after \
         the kill; failures: {}; B: {b_rounds} write+read rounds",
        writes.len(),
        acked(&writes),
        failure_summary(&writes)
    );
    let caught_up = watch_reaches(&seen, last, RECOVERY).await;
    watcher.abort();

    let mut problems = Vec::new();
    let b_failures = lock(&b_failures).clone();
    if !b_failures.is_empty() {
        problems.push(format!(
            "B failed {} requests: {}",
            b_failures.len(),
            preview(&b_failures)
        ));
    }
    // Before the kill, nothing may fail at all.
    let early: Vec<String> = writes
        .iter()
        .filter(|w| w.done < killed)
        .filter_map(|w| {
            w.result
                .as_ref()
                .err()
                .map(|f| format!("{}: {}", w.key, f.describe()))
        })
        .collect();
    if !early.is_empty() {
        problems.push(format!(
            "{} writes failed before A was killed: {}",
            early.len(),
            preview(&early)
        ));
    }
    let bad = unreadable(b.addr, &base, &writes).await;
    if !bad.is_empty() {
        problems.push(format!(
            "{} writes A acknowledged are not readable through B: {:?}",
            bad.len(),
            &bad[..bad.len().min(12)]
        ));
    }
    let tree = tree(b.addr, &base).await;
    if !caught_up {
        problems.push(format!(
            "B's watch did not reach tock {last} within {RECOVERY:?}"
        ));
    }
    problems.extend(watch_problems(&lock(&seen), &writes, &tree));
    assert!(
        problems.is_empty(),
        "{}\nB's log:\n{}",
        problems.join("\n"),
        store_lines(&b, 40)
    );
}

/// A node whose URL names a primary and its standby
/// (`target_session_attrs=read-write`) follows a failover: the primary
/// stops, the standby is promoted, and writes through the same node
/// succeed again within seconds; nothing acknowledged before is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_promoted_standby_with_a_multi_host_url() {
    if !can_run("failover_to_a_promoted_standby_with_a_multi_host_url") {
        return;
    }
    let _turn = SERIAL.lock().await;
    let primary = private_pg().await;
    let db = primary.clone();
    let standby = Arc::new(blocking("starting the standby", move || db.standby()).await);
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/keycard?\
         target_session_attrs=read-write&sslmode=disable&schema=kc",
        primary.port(),
        standby.port()
    );
    let dir = tempfile::tempdir().expect("tmp");
    let node = start_node(&dir, &url, "n1").await;
    let base = p("f");

    let writes: Writes = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_loop(
        connect(node.addr).await,
        base.clone(),
        "k".into(),
        Duration::from_millis(2),
        stop.clone(),
        writes.clone(),
    ));
    assert!(
        some_acked(&writes, RECOVERY).await,
        "no write succeeded on the primary: {}\n{}",
        failure_summary(&lock(&writes)),
        store_lines(&node, 30)
    );
    tokio::time::sleep(Duration::from_millis(700)).await;

    let down = Instant::now();
    let db = primary.clone();
    blocking("stopping the primary", move || db.stop()).await;
    let stopped = Instant::now();
    let before: Vec<Write> = lock(&writes)
        .iter()
        .filter(|w| w.done <= down)
        .cloned()
        .collect();
    let db = standby.clone();
    blocking("promoting the standby", move || db.promote()).await;
    let promoted = Instant::now();
    let took = recovered(&writes, promoted, FAILOVER).await;
    eprintln!(
        "failover: the primary took {:?} to stop, the promotion {:?}; the node served writes \
         again {} after the promotion ({} after the primary began to stop)",
        stopped - down,
        promoted - stopped,
        took.map_or("NOT within the limit".to_owned(), |d| format!("{d:?}")),
        took.map_or("-".to_owned(), |d| format!("{:?}", d + (promoted - down)))
    );
    assert!(
        took.is_some(),
        "no write succeeded within {FAILOVER:?} after the promotion; failures: {}\n\
         the node's log:\n{}",
        failure_summary(&lock(&writes)),
        store_lines(&node, 40)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    tokio::time::timeout(CALL_WAIT * 2, writer)
        .await
        .expect("the writer did not stop")
        .expect("the writer");
    let writes = lock(&writes).clone();
    eprintln!(
        "{} writes, {} acknowledged ({} before the failover); failures: {}",
        writes.len(),
        acked(&writes),
        acked(&before),
        failure_summary(&writes)
    );

    let mut problems = Vec::new();
    let wrong: Vec<String> = writes
        .iter()
        .filter_map(|w| match &w.result {
            Err(f) if !f.is_unavailable() => Some(format!("{}: {}", w.key, f.describe())),
            _ => None,
        })
        .collect();
    if !wrong.is_empty() {
        problems.push(format!(
            "{} writes failed other than with backend_unavailable: {}",
            wrong.len(),
            preview(&wrong)
        ));
    }
    let bad = unreadable(node.addr, &base, &before).await;
    if !bad.is_empty() {
        problems.push(format!(
            "{} writes acknowledged before the failover are lost: {:?}",
            bad.len(),
            &bad[..bad.len().min(12)]
        ));
    }
    let bad = unreadable(node.addr, &base, &writes).await;
    if !bad.is_empty() {
        problems.push(format!(
            "{} acknowledged writes not read back: {:?}",
            bad.len(),
            &bad[..bad.len().min(12)]
        ));
    }
    assert!(
        problems.is_empty(),
        "{}\nthe node's log:\n{}",
        problems.join("\n"),
        store_lines(&node, 40)
    );
}

/// A login while the database is away fails with `backend_unavailable`
/// (the user's record cannot be read: that says nothing about the
/// password), and succeeds once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_never_fails_as_wrong_password_while_the_database_is_away() {
    use keycard_auth::{Password, ScramClient};
    const PW: &str = "correct horse battery staple";
    if !can_run("a_login_never_fails_as_wrong_password_while_the_database_is_away") {
        return;
    }
    let _turn = SERIAL.lock().await;
    let pg = private_pg().await;
    let dir = tempfile::tempdir().expect("tmp");
    let node = start_node(&dir, &store_url(&pg.url("keycard")), "n1").await;
    let alice = || ScramClient::new("alice", Password::new(PW));
    let login = |addr: SocketAddr| async move {
        let c = Client::connect(addr).await?;
        c.login(&alice()).await
    };

    let admin = connect(node.addr).await;
    admin.set_user(&alice()).await.expect("create alice");
    admin
        .request(
            Msg::new()
                .with("action", "set_auth_typ")
                .with("typ", "scram-sha-256"),
        )
        .await
        .expect("make scram-sha-256 current");
    tokio::time::timeout(CALL_WAIT, login(node.addr))
        .await
        .expect("the login hung")
        .expect("alice logs in while the database is up");

    let db = pg.clone();
    blocking("stopping PostgreSQL", move || db.stop()).await;
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let e = tokio::time::timeout(CALL_WAIT, login(node.addr))
            .await
            .expect("a login hung while the database was away")
            .expect_err("a login succeeded while the database was away");
        outcomes.push(e);
    }
    eprintln!("logins while the database was away: {outcomes:?}");

    let db = pg.clone();
    blocking("starting PostgreSQL", move || db.restart()).await;
    let back = Instant::now();
    let mut after = Vec::new();
    let took = loop {
        match tokio::time::timeout(CALL_WAIT, login(node.addr)).await {
            Ok(Ok(())) => break Some(back.elapsed()),
            Ok(Err(e)) => after.push(e),
            Err(_) => after.push(ClientError::Io("the login hung".into())),
        }
        if back.elapsed() > RECOVERY {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "the login succeeded {} after PostgreSQL was back; failed logins meanwhile: {after:?}",
        took.map_or("NOT within the limit".to_owned(), |d| format!("{d:?}"))
    );

    for e in outcomes.iter().chain(&after) {
        assert_eq!(
            e.code(),
            Some(ErrorCode::BackendUnavailable),
            "a login while the database was away: {e}\nthe node's log:\n{}",
            store_lines(&node, 40)
        );
    }
    assert!(
        took.is_some(),
        "alice could not log in within {RECOVERY:?} after PostgreSQL was back: {after:?}\n\
         the node's log:\n{}",
        store_lines(&node, 40)
    );
    // And a wrong password is still just that.
    let c = connect(node.addr).await;
    let e = c
        .login(&ScramClient::new("alice", Password::new("wrong")))
        .await
        .expect_err("a wrong password");
    assert_eq!(e.code(), Some(ErrorCode::AuthFailed), "{e}");
}
