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

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use keycard_client::{Client, ClientError, Event};
use keycard_pgtest::PgInstance;
use keycard_proto::{ErrorCode, Msg, Path, Value};

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

/// `keycard serve` as a child process (SIGKILLed on drop), logging at
/// `KEYCARD_TEST_LOG` (default `info`); its log is kept.
struct Node {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Node {
    /// What the node has logged so far.
    fn log(&self) -> String {
        lock(&self.log).clone()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `keycard serve --store URL --node NAME` on a fresh data directory
/// (inside `dir`) and a free port; with `KEYCARD_TEST_LOG` set (say
/// `debug`), it logs at that level.
async fn start_node(dir: &tempfile::TempDir, url: &str, name: &str) -> Node {
    let data = dir.path().join(name);
    let level = std::env::var("KEYCARD_TEST_LOG").unwrap_or_else(|_| "info".into());
    let (url, name) = (url.to_owned(), name.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(support::BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--log", &level])
            .args(["--store", &url, "--node", &name, "--data"])
            .arg(&data)
            .env_remove("KEYCARD_SEAL_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keycard");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let kept = log.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("addr=").nth(1) {
                    if let Some(tx) = tx.take() {
                        let addr = addr.split_whitespace().next().unwrap_or_default();
                        let _ = tx.send(addr.to_owned());
                    }
                }
                let mut log = lock(&kept);
                log.push_str(&line);
                log.push('\n');
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => Node {
                child,
                addr: addr.parse().expect("an address"),
                log,
            },
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                let log = lock(&log).clone();
                panic!("node {name} reported no address ({e}; {status:?}); it logged:\n{log}");
            }
        }
    })
    .await
    .expect("starting a node")
}

/// The lines of a node's log that say something about the store, the
/// database or a failure (for failure messages).
fn store_lines(node: &Node, max: usize) -> String {
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
/// One writer every 2 ms on `node` below `base`, until `stop`; returns
/// once a write has been acknowledged (`what` says which failure it is
/// if none is).
async fn storm(
    node: &Node,
    base: &Path,
    what: &str,
) -> (Writes, Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
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
        "{what}: {}\n{}",
        failure_summary(&lock(&writes)),
        store_lines(node, 30)
    );
    (writes, stop, writer)
}

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
/// the distinct texts (the first few).
fn failure_summary(writes: &[Write]) -> String {
    let mut kinds: std::collections::BTreeMap<String, (usize, Vec<String>)> = Default::default();
    for w in writes {
        if let Err(f) = &w.result {
            let kind = match f {
                Failure::Server(code, _) => code.map_or("no code", ErrorCode::as_str).to_owned(),
                Failure::Connection(_) => "connection".to_owned(),
                Failure::Hung => "hung".to_owned(),
            };
            let text = match f {
                Failure::Server(_, text) | Failure::Connection(text) => text.clone(),
                Failure::Hung => f.describe(),
            };
            let e = kinds.entry(kind).or_default();
            e.0 += 1;
            if e.1.len() < 4 && !e.1.contains(&text) {
                e.1.push(text);
            }
        }
    }
    if kinds.is_empty() {
        return "none".into();
    }
    kinds
        .into_iter()
        .map(|(k, (n, texts))| format!("{n}× {k} ({})", texts.join(" | ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The longest one read-back may take before it counts as hung.
const READ_WAIT: Duration = Duration::from_secs(5);

/// Reads every acknowledged write of `writes` back through `addr` (four
/// connections); returns what does not match: (key, what was found). A
/// read that hangs ends its connection's share (the rest counted as not
/// checked), so this takes a bounded time.
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
            let mut hung = false;
            for (key, value, tock) in part {
                if hung {
                    bad.push((key, "not checked: an earlier read hung".to_owned()));
                    continue;
                }
                let path = base.child(key.as_str());
                // A read may meet a pooled connection the outage broke:
                // a few tries, each a fresh request.
                let mut last = String::new();
                let mut ok = false;
                for _ in 0..3 {
                    match tokio::time::timeout(READ_WAIT, c.get(&path)).await {
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
                        Err(_) => {
                            last = format!("read hung (no answer within {READ_WAIT:?})");
                            hung = true;
                            break;
                        }
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

type Tree = std::collections::BTreeMap<String, (Value, u64)>;

/// Every node under `base`, read through `addr` with `get_tree`: key
/// (relative path) → (value, tock).
async fn tree(addr: SocketAddr, base: &Path) -> Result<Tree, String> {
    let c = connect(addr).await;
    let items = tokio::time::timeout(CALL_WAIT, async {
        c.get_tree(base, None, None).await?.collect().await
    })
    .await
    .map_err(|_| format!("get_tree of {base} hung (no end within {CALL_WAIT:?})"))?
    .map_err(|e| format!("get_tree of {base} failed: {e}"))?;
    Ok(items
        .into_iter()
        .filter_map(|i| Some((i.path.to_string(), (i.value?, i.tock))))
        .collect())
}

/// Prints a progress line with the time since `t0` (for the report: a
/// failure shows how far the test got).
fn step(t0: Instant, what: &str) {
    eprintln!("[{:>7.3}s] {what}", t0.elapsed().as_secs_f64());
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
fn watch_problems(seen: &Seen, writes: &[Write], tree: Option<&Tree>) -> Vec<String> {
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
    let empty = Tree::new();
    let tree = tree.unwrap_or(&empty);
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
        .filter(|_| !tree.is_empty())
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

/// The writes that failed other than with `backend_unavailable`, as a
/// problem to report, if any.
fn wrong_failures(writes: &[Write]) -> Option<String> {
    let wrong: Vec<String> = writes
        .iter()
        .filter_map(|w| match &w.result {
            Err(f) if !f.is_unavailable() => Some(format!("{}: {}", w.key, f.describe())),
            _ => None,
        })
        .collect();
    (!wrong.is_empty()).then(|| {
        format!(
            "{} writes failed other than with backend_unavailable: {}",
            wrong.len(),
            preview(&wrong)
        )
    })
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

/// What a test does to its database.
#[derive(Clone, Copy)]
enum Outage {
    /// `restart()`: a fast shutdown, then a start at once.
    Restart,
    /// An immediate shutdown (a crash), down this long, then a start
    /// (crash recovery).
    Crash(Duration),
    /// A fast shutdown, down this long, then a start.
    Stop(Duration),
}

/// The database goes away three times under a node that writes
/// continuously: a fast restart, a crash (immediate shutdown, crash
/// recovery on start) and a fast stop with three seconds down. Meanwhile
/// every write fails with `backend_unavailable`; afterwards the node
/// serves again by itself, and every acknowledged write is readable and
/// was reported, in order, by watches opened before, on the writing node
/// and on a second node that only watches and reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restart_mid_run_loses_nothing_acknowledged() {
    if !can_run("database_restart_mid_run_loses_nothing_acknowledged") {
        return;
    }
    let _turn = SERIAL.lock().await;
    let t0 = Instant::now();
    let pg = private_pg().await;
    step(t0, "PostgreSQL started");
    let dir = tempfile::tempdir().expect("tmp");
    let url = store_url(&pg.url("keycard"));
    let node = start_node(&dir, &url, "n1").await;
    // A second node that only watches and reads: its changes come from
    // its follower (the change log), not from its own writer.
    let observer = start_node(&dir, &url, "n2").await;
    let base = p("w");

    let (seen, watcher) = watch(node.addr, base.clone()).await;
    let (seen2, watcher2) = watch(observer.addr, base.clone()).await;
    let (writes, stop, writer) = storm(&node, &base, "no write succeeded before the outage").await;
    tokio::time::sleep(Duration::from_millis(700)).await;

    // What happens to the database, and how long it stays down.
    let outages = [
        ("fast restart", Outage::Restart),
        (
            "crash, 0.5 s down, restart",
            Outage::Crash(Duration::from_millis(500)),
        ),
        (
            "fast stop, 3 s down, start",
            Outage::Stop(Duration::from_secs(3)),
        ),
    ];
    for (how, outage) in outages {
        step(t0, how);
        let down = Instant::now();
        let db = pg.clone();
        match outage {
            Outage::Restart => blocking("restarting PostgreSQL", move || db.restart()).await,
            Outage::Crash(away) | Outage::Stop(away) => {
                if matches!(outage, Outage::Crash(_)) {
                    blocking("killing PostgreSQL", move || db.kill()).await;
                } else {
                    blocking("stopping PostgreSQL", move || db.stop()).await;
                }
                // Let the writes meet the database away for a while.
                tokio::time::sleep(away).await;
                let db = pg.clone();
                blocking("starting PostgreSQL", move || db.restart()).await;
            }
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
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    stop.store(true, Ordering::Release);
    tokio::time::timeout(CALL_WAIT * 2, writer)
        .await
        .expect("the writer did not stop")
        .expect("the writer");
    let writes = lock(&writes).clone();
    let last = last_acked_tock(&writes);
    step(t0, "waiting for the watches");
    let caught_up = watch_reaches(&seen, last, RECOVERY).await;
    let caught_up2 = watch_reaches(&seen2, last, RECOVERY).await;
    watcher.abort();
    watcher2.abort();

    eprintln!(
        "{} writes, {} acknowledged (last tock {last}); failures: {}",
        writes.len(),
        acked(&writes),
        failure_summary(&writes)
    );
    let mut problems = Vec::new();
    problems.extend(wrong_failures(&writes));
    step(t0, "reading every acknowledged write back");
    let bad = unreadable(node.addr, &base, &writes).await;
    if !bad.is_empty() {
        problems.push(format!(
            "{} acknowledged writes not read back: {:?}",
            bad.len(),
            &bad[..bad.len().min(12)]
        ));
    }
    step(t0, "reading the subtree");
    let tree = tree(node.addr, &base)
        .await
        .map_err(|e| problems.push(e))
        .ok();
    let applied_anyway = writes
        .iter()
        .filter(|w| w.result.is_err() && tree.as_ref().is_some_and(|t| t.contains_key(&w.key)))
        .count();
    let bad = unreadable(observer.addr, &base, &writes).await;
    if !bad.is_empty() {
        problems.push(format!(
            "{} acknowledged writes not read back through the observer: {:?}",
            bad.len(),
            &bad[..bad.len().min(12)]
        ));
    }
    for (who, seen, caught_up) in [("n1", &seen, caught_up), ("n2", &seen2, caught_up2)] {
        let (reported, ended) = {
            let seen = lock(seen);
            (seen.items.len(), seen.ends.len())
        };
        eprintln!("the watch on {who} reported {reported} changes, ended {ended} time(s)");
        if !caught_up {
            problems.push(format!(
                "the watch on {who} did not reach tock {last} within {RECOVERY:?}"
            ));
        }
        problems.extend(
            watch_problems(&lock(seen), &writes, tree.as_ref())
                .into_iter()
                .map(|e| format!("the watch on {who}: {e}")),
        );
    }
    eprintln!(
        "{applied_anyway} writes that failed were applied nonetheless (a COMMIT whose answer was \
         lost)"
    );
    assert!(
        problems.is_empty(),
        "{}\nthe writing node's log:\n{}\nthe observer's log:\n{}",
        problems.join("\n"),
        store_lines(&node, 40),
        store_lines(&observer, 40)
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
    let t0 = Instant::now();
    let pg = private_pg().await;
    step(t0, "PostgreSQL started");
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
    step(t0, "killing A");
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
    step(t0, "reading every write A acknowledged through B");
    let bad = unreadable(b.addr, &base, &writes).await;
    if !bad.is_empty() {
        problems.push(format!(
            "{} writes A acknowledged are not readable through B: {:?}",
            bad.len(),
            &bad[..bad.len().min(12)]
        ));
    }
    step(t0, "reading the subtree through B");
    let tree = tree(b.addr, &base).await.map_err(|e| problems.push(e)).ok();
    if !caught_up {
        problems.push(format!(
            "B's watch did not reach tock {last} within {RECOVERY:?}"
        ));
    }
    problems.extend(watch_problems(&lock(&seen), &writes, tree.as_ref()));
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
    let t0 = Instant::now();
    let primary = private_pg().await;
    step(t0, "the primary started");
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
    step(t0, "the standby and the node started");
    let base = p("f");

    let (writes, stop, writer) = storm(&node, &base, "no write succeeded on the primary").await;
    tokio::time::sleep(Duration::from_millis(700)).await;

    step(t0, "stopping the primary");
    let down = Instant::now();
    let db = primary.clone();
    blocking("stopping the primary", move || db.stop()).await;
    step(t0, "promoting the standby");
    let stopped = Instant::now();
    let before: Vec<Write> = lock(&writes)
        .iter()
        .filter(|w| w.done <= down)
        .cloned()
        .collect();
    let db = standby.clone();
    blocking("promoting the standby", move || db.promote()).await;
    let promoted = Instant::now();
    step(t0, "the standby is promoted");
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
    problems.extend(wrong_failures(&writes));
    step(t0, "reading the writes acknowledged before the failover");
    let bad = unreadable(node.addr, &base, &before).await;
    if !bad.is_empty() {
        problems.push(format!(
            "{} writes acknowledged before the failover are lost: {:?}",
            bad.len(),
            &bad[..bad.len().min(12)]
        ));
    }
    step(t0, "reading every acknowledged write back");
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
    let t0 = Instant::now();
    let pg = private_pg().await;
    step(t0, "PostgreSQL started");
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
