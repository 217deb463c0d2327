//! The cluster suite: keycard on PostgreSQL, one node and three nodes on
//! one schema, next to the embedded (redb) store as the baseline, the
//! same load tool against all of them in one run.
//!
//! - get_value and set_value at 1×1, 16×1 and 16×16 (connections ×
//!   requests in flight each): ops/s, p50 and p99 of each request (sent →
//!   answered), spread evenly over the three nodes in the three-node case.
//! - A token made on node 1 logs in on nodes 2 and 3: the login's time and
//!   get_value throughput there, against connections without a login on
//!   the same nodes.
//! - Revocation across nodes: a `_test` login on node 2, its keycard
//!   (from `whoami`) revoked through node 1; the time from sending the
//!   revoke until node 2 closes the connection.
//! - Watch lag: watches on nodes 1, 2 and 3, writes through node 1; the
//!   time from sending a write until each watch delivers it.
//! - SCRAM-SHA-256 logins per second on a new connection each (as the
//!   logins suite makes them), embedded, one node, three nodes: one
//!   client; 16 clients as 16 users; 16 clients as one user (the logins
//!   suite's way).
//! - Where the time goes: CPU per request of the servers, of this process
//!   and of everything else (the database) from `/proc`; store writes per
//!   database commit (the change log's rows per transaction id); the
//!   database's round trip (a prepared point read, an unprepared one), a
//!   one-row write transaction with and without `synchronous_commit`, and
//!   a local `fdatasync`, timed from this process.
//!
//! Each configuration runs alone on the machine: the embedded server,
//! then one node on a fresh schema, then three nodes on another; each
//! schema is dropped at the end. The database is the machine's PostgreSQL
//! (`KEYCARD_BENCH_PG`, default `postgres://postgres@127.0.0.1:5432/test`,
//! trust authentication); `psql` drops the schemas.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keycard_auth::{Password, ScramClient};
use keycard_client::{Client, Event};
use keycard_proto::{encode_into, Elem, Msg, Path, Value};
use tokio::io::AsyncWriteExt;

use crate::tls::{require_scram, PW};
use crate::{request, setup, start_keycard_with, Args, Conn, Op, Peer};

/// The database every schema of the suite lives in.
fn database() -> String {
    std::env::var("KEYCARD_BENCH_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema of its own for one configuration, dropped (with everything
/// in it) when this goes: declare it before the nodes using it, so they
/// stop first.
struct Schema {
    name: String,
}

impl Schema {
    fn new(tag: &str) -> Schema {
        let name = format!("kc_bench_{}_{tag}", std::process::id());
        drop_schema(&name);
        Schema { name }
    }

    /// The `--store` URL of the nodes.
    fn url(&self) -> String {
        let db = database();
        let sep = if db.contains('?') { '&' } else { '?' };
        format!("{db}{sep}schema={}&sslmode=disable", self.name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        drop_schema(&self.name);
    }
}

fn drop_schema(name: &str) {
    let _ = Command::new("psql")
        .arg(database())
        .args(["-X", "-q", "-c"])
        .arg(format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Starts node `node` on `schema`.
async fn start_node(args: &Args, schema: &Schema, node: &str) -> anyhow::Result<Peer> {
    let url = schema.url();
    start_keycard_with(args, &["--store", &url, "--node", node], None)
        .await
        .with_context(|| format!("node {node} on {}", schema.name))
}

fn addrs(peers: &[Peer]) -> Vec<SocketAddr> {
    peers.iter().map(|p| p.addr).collect()
}

/// Throughput and latency of one load.
#[derive(Clone, Copy, Default)]
struct Load {
    ops: f64,
    /// Requests (or logins) counted.
    n: u64,
    p50: Duration,
    p99: Duration,
    /// CPU per request, µs (when sampled): the keycard servers, this
    /// process, and everything else on the machine (the database, the
    /// kernel's work for nobody in particular).
    cpu: [f64; 3],
    /// The machine's idle share meanwhile.
    idle: f64,
}

/// CPU time so far, in the kernel's clock ticks (USER_HZ, 100 on Linux).
#[derive(Clone, Copy)]
struct Cpu {
    busy: u64,
    idle: u64,
    servers: u64,
    me: u64,
}

/// A process's user and system time, ticks (0 if it cannot be read).
fn proc_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(end) = stat.rfind(')') else { return 0 };
    let f: Vec<&str> = stat[end + 1..].split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15.
    let at = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    at(14) + at(15)
}

impl Cpu {
    fn now(pids: &[u32]) -> Cpu {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let v: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        Cpu {
            // user nice system idle iowait irq softirq steal
            busy: at(0) + at(1) + at(2) + at(5) + at(6) + at(7),
            idle: at(3) + at(4),
            servers: pids.iter().map(|p| proc_ticks(&p.to_string())).sum(),
            me: proc_ticks("self"),
        }
    }

    /// µs per request for `n` requests since `before`, and the idle share.
    fn per_request(&self, before: &Cpu, n: f64) -> ([f64; 3], f64) {
        let us = |t: u64| t as f64 * 10_000.0 / n.max(1.0);
        let servers = self.servers.saturating_sub(before.servers);
        let me = self.me.saturating_sub(before.me);
        let busy = self.busy.saturating_sub(before.busy);
        let idle = self.idle.saturating_sub(before.idle);
        let rest = busy.saturating_sub(servers + me);
        (
            [us(servers), us(me), us(rest)],
            idle as f64 / (busy + idle).max(1) as f64,
        )
    }
}

/// The `q`-quantile of sorted durations.
fn pct(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `n` connections spread over `addrs` (the i-th to `addrs[i % len]`),
/// each logged in with `token` if given.
async fn open(addrs: &[SocketAddr], n: usize, token: Option<&str>) -> anyhow::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let addr = addrs[i % addrs.len()];
        conns.push(match token {
            Some(t) => {
                let auth = Msg::new()
                    .with("action", "auth")
                    .with("typ", keycard_auth::TOKEN)
                    .with("token", t);
                raw_login(addr, auth).await?.0
            }
            None => Conn::connect(addr).await?,
        });
    }
    Ok(conns)
}

/// Sends `m` as request `seq` on `c`.
async fn send(c: &mut Conn, seq: i64, m: Msg) -> anyhow::Result<()> {
    let mut m = m;
    m.set("seq", seq);
    let mut out = Vec::new();
    encode_into(&m.into_value(), &mut out);
    c.stream.write_all(&out).await?;
    Ok(())
}

/// A raw connection to `addr` logged in with the `auth` request `auth`
/// (sent as seq 1); how long the login took.
async fn raw_login(addr: SocketAddr, auth: Msg) -> anyhow::Result<(Conn, Duration)> {
    let mut c = Conn::connect(addr).await?;
    let t = Instant::now();
    send(&mut c, 1, auth).await?;
    loop {
        let v = c.recv().await?;
        if let Some(e) = v.get("error") {
            bail!("login refused by {addr}: {e:?}");
        }
        if v.get("state").and_then(Value::as_str) == Some("end") {
            return Ok((c, t.elapsed()));
        }
    }
}

/// Each connection keeps `depth` requests of `op` in flight for `secs`;
/// requests per second (counted at `secs`) and each request's time from
/// sending to its answer.
/// With `pids` (the servers), the CPU each side spent per request.
async fn load(
    conns: Vec<Conn>,
    op: Op,
    depth: usize,
    secs: f64,
    pids: &[u32],
) -> anyhow::Result<Load> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = Cpu::now(pids);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let (done, stop) = (done.clone(), stop.clone());
        // set_value paths are per connection: 1000 keys each.
        let client = i;
        tasks.push(tokio::spawn(async move {
            let mut sent: HashMap<i64, Instant> = HashMap::with_capacity(depth * 2);
            let mut times = Vec::with_capacity(1 << 16);
            let mut seq = 1i64;
            let mut out = Vec::new();
            for _ in 0..depth {
                request(op, client, seq as u64, seq, &mut out);
                sent.insert(seq, Instant::now());
                seq += 1;
            }
            c.stream.write_all(&out).await?;
            let mut in_flight = depth;
            while in_flight > 0 {
                let v = c.recv().await?;
                if let Some(e) = v.get("error") {
                    bail!("server error: {e:?}");
                }
                let at = v.get("seq").and_then(Value::as_i64).unwrap_or(0);
                if let Some(t) = sent.remove(&at) {
                    times.push(t.elapsed());
                }
                in_flight -= 1;
                done.fetch_add(1, Ordering::Relaxed);
                if !stop.load(Ordering::Relaxed) {
                    out.clear();
                    request(op, client, seq as u64, seq, &mut out);
                    sent.insert(seq, Instant::now());
                    seq += 1;
                    c.stream.write_all(&out).await?;
                    in_flight += 1;
                }
            }
            anyhow::Ok(times)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let counted = done.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let (cpu, idle) = Cpu::now(pids).per_request(&cpu0, counted as f64);
    stop.store(true, Ordering::Relaxed);
    let mut times = Vec::new();
    for t in tasks {
        times.extend(t.await??);
    }
    times.sort_unstable();
    Ok(Load {
        ops: counted as f64 / elapsed,
        n: counted,
        p50: pct(&times, 0.5),
        p99: pct(&times, 0.99),
        cpu,
        idle,
    })
}

/// The data workloads: (name, op, connections, depth).
const WORKLOADS: [(&str, Op, usize, usize); 6] = [
    ("get_value 1×1", Op::Get, 1, 1),
    ("get_value 16×1", Op::Get, 16, 1),
    ("get_value 16×16", Op::Get, 16, 16),
    ("set_value 1×1", Op::Set, 1, 1),
    ("set_value 16×1", Op::Set, 16, 1),
    ("set_value 16×16", Op::Set, 16, 16),
];

/// A data workload's results.
#[derive(Clone, Copy, Default)]
struct DataRow {
    load: Load,
    /// Store writes per database commit (set_value on PostgreSQL).
    per_commit: Option<f64>,
}

/// The database as the bench sees it: how many writes went into each
/// commit (the change log's rows and their transaction ids).
struct Db {
    pg: tokio_postgres::Client,
    schema: String,
}

impl Db {
    async fn connect(schema: &Schema) -> anyhow::Result<Db> {
        let (pg, conn) = tokio_postgres::connect(&database(), tokio_postgres::NoTls)
            .await
            .context("connect to the database")?;
        tokio::spawn(conn);
        Ok(Db {
            pg,
            schema: schema.name.clone(),
        })
    }

    async fn tock(&self) -> anyhow::Result<i64> {
        let s = &self.schema;
        let row = self
            .pg
            .query_one(&format!("SELECT tock FROM {s}.meta WHERE id = 1"), &[])
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Changes logged after `tock` per transaction that wrote them.
    async fn per_commit(&self, tock: i64) -> anyhow::Result<f64> {
        let s = &self.schema;
        let row = self
            .pg
            .query_one(
                &format!(
                    "SELECT count(*), count(DISTINCT xmin::text) FROM {s}.log WHERE tock > $1"
                ),
                &[&tock],
            )
            .await?;
        let (rows, xacts): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        Ok(rows as f64 / xacts.max(1) as f64)
    }
}

/// Runs [`WORKLOADS`] against `addrs` (connections spread over them);
/// `pids`: the servers, whose CPU is sampled.
async fn data_rows(
    label: &str,
    addrs: &[SocketAddr],
    pids: &[u32],
    db: Option<&Db>,
    secs: f64,
) -> anyhow::Result<Vec<DataRow>> {
    let mut out = Vec::new();
    for (name, op, clients, depth) in WORKLOADS {
        let conns = open(addrs, clients, None).await?;
        let before = match (db, op) {
            (Some(db), Op::Set) => Some(db.tock().await?),
            _ => None,
        };
        let l = load(conns, op, depth, secs, pids).await?;
        let per_commit = match (db, before) {
            (Some(db), Some(t)) => Some(db.per_commit(t).await?),
            _ => None,
        };
        eprintln!(
            "{label:<10} {name}: {:.0} ops/s, p50 {:.3} ms, p99 {:.3} ms; CPU µs/op keycard {:.1}, bench {:.1}, rest {:.1}, idle {:.0} %{}",
            l.ops,
            ms(l.p50),
            ms(l.p99),
            l.cpu[0],
            l.cpu[1],
            l.cpu[2],
            l.idle * 100.0,
            per_commit.map_or(String::new(), |w| format!("; {w:.1} writes per commit"))
        );
        out.push(DataRow {
            load: l,
            per_commit,
        });
    }
    Ok(out)
}

fn pids(peers: &[&Peer]) -> Vec<u32> {
    peers
        .iter()
        .filter_map(|p| p.child.as_ref().map(|c| c.id()))
        .collect()
}

/// How many users the login clients log in as.
#[derive(Clone, Copy, PartialEq)]
enum Users {
    /// All as `bench`, as the logins suite does.
    One,
    /// Client `c` as `bench{c}`.
    PerClient,
}

/// SCRAM-SHA-256 logins per second, each on a new connection; `clients`
/// at once, the logins going round `addrs`.
async fn logins(
    addrs: &[SocketAddr],
    clients: usize,
    users: Users,
    secs: f64,
) -> anyhow::Result<Load> {
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let addrs = addrs.to_vec();
        let user = match users {
            Users::One => "bench".to_owned(),
            Users::PerClient => format!("bench{c}"),
        };
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            let mut k = c;
            while Instant::now() < stop {
                let t = Instant::now();
                let client = Client::connect(addrs[k % addrs.len()]).await?;
                client
                    .login(&ScramClient::new(user.as_str(), Password::new(PW)))
                    .await
                    .with_context(|| {
                        format!(
                            "login {} of {user} (client {c}) on {}",
                            times.len() + 1,
                            addrs[k % addrs.len()]
                        )
                    })?;
                times.push(t.elapsed());
                k += 1;
            }
            anyhow::Ok(times)
        }));
    }
    // Every task ends by `stop`; the first error is the answer.
    let mut times = Vec::new();
    let mut failed = None;
    for t in tasks {
        match t.await? {
            Ok(v) => times.extend(v),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failed {
        return Err(e.context(format!("{} logins succeeded before", times.len())));
    }
    let elapsed = start.elapsed().as_secs_f64();
    times.sort_unstable();
    Ok(Load {
        ops: times.len() as f64 / elapsed,
        n: times.len() as u64,
        p50: pct(&times, 0.5),
        p99: pct(&times, 0.99),
        ..Load::default()
    })
}

/// One configuration's logins.
struct Logins {
    /// 1 client, user `bench`.
    one: Load,
    /// 16 clients, one user each.
    many: Load,
    /// 16 clients, all `bench` (the logins suite's way), or why it failed.
    one_user: Result<Load, String>,
    /// On PostgreSQL: store writes per login and per commit, 1 client and
    /// 16 clients (16 users).
    writes: Option<[(f64, f64); 2]>,
}

/// Creates SCRAM-SHA-256 users `bench` and `bench0`…`bench15` through
/// `addrs[0]` and makes the method current, waits until every node
/// requires a login, then measures logins. The servers are no longer
/// open afterwards.
async fn login_rows(
    label: &str,
    addrs: &[SocketAddr],
    db: Option<&Db>,
    secs: f64,
) -> anyhow::Result<Logins> {
    let admin = Client::connect(addrs[0]).await?;
    for c in 0..16 {
        admin
            .set_user(&ScramClient::new(format!("bench{c}"), Password::new(PW)))
            .await?;
    }
    require_scram(addrs[0], None, &[]).await?;
    for &a in addrs {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !Client::connect(a).await?.greeting().login_required() {
            anyhow::ensure!(Instant::now() < deadline, "{a} still open after 5 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Writes per login and per commit, from the change log.
    let writes = |before: Option<i64>, l: Load| async move {
        match (db, before) {
            (Some(db), Some(t)) => {
                let per_login = (db.tock().await? - t) as f64 / l.n.max(1) as f64;
                anyhow::Ok(Some((per_login, db.per_commit(t).await?)))
            }
            _ => Ok(None),
        }
    };
    let before = match db {
        Some(db) => Some(db.tock().await?),
        None => None,
    };
    let one = logins(addrs, 1, Users::One, secs).await?;
    let w_one = writes(before, one).await?;
    let before = match db {
        Some(db) => Some(db.tock().await?),
        None => None,
    };
    let many = logins(addrs, 16, Users::PerClient, secs).await?;
    let w_many = writes(before, many).await?;
    // Last: on three nodes this one is refused (see docs/BENCHMARKS.md).
    let mut one_user = logins(addrs, 16, Users::One, secs)
        .await
        .map_err(|e| format!("{e:#}"));
    if let Err(e) = &mut one_user {
        // Is the refusal what it says (15 minutes), or gone once the
        // nodes have written their counters again?
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut later = Vec::new();
        for &a in addrs {
            let c = Client::connect(a).await?;
            later.push(
                match c.login(&ScramClient::new("bench", Password::new(PW))).await {
                    Ok(()) => "logged in".to_owned(),
                    Err(e) => format!("{e}"),
                },
            );
        }
        e.push_str(&format!(
            ". 2 s later, one login as bench on each node: {}",
            later.join("; ")
        ));
    }
    eprintln!(
        "{label:<10} SCRAM logins: 1 client {:.0}/s (p50 {:.2} ms), 16 clients × 16 users {:.0}/s (p50 {:.2} ms)",
        one.ops,
        ms(one.p50),
        many.ops,
        ms(many.p50)
    );
    match &one_user {
        Ok(l) => eprintln!(
            "{label:<10} SCRAM logins: 16 clients, one user {:.0}/s (p50 {:.2} ms)",
            l.ops,
            ms(l.p50)
        ),
        Err(e) => eprintln!("{label:<10} SCRAM logins: 16 clients, one user: FAILED: {e}"),
    }
    if let (Some(a), Some(b)) = (w_one, w_many) {
        eprintln!(
            "{label:<10} store writes per login {:.2} (1 client), {:.2} (16); per commit {:.1}, {:.1}",
            a.0, b.0, a.1, b.1
        );
    }
    Ok(Logins {
        one,
        many,
        one_user,
        writes: w_one.zip(w_many).map(|(a, b)| [a, b]),
    })
}

/// One configuration's results.
struct Config {
    name: &'static str,
    data: Vec<DataRow>,
    logins: Logins,
}

pub(crate) async fn cluster_suite(args: &Args) -> anyhow::Result<()> {
    if args.keycard_addr.is_some() {
        bail!("the cluster suite starts its own servers: leave out --keycard-addr");
    }
    let secs = args.seconds;
    let mut configs = Vec::new();

    // (a) The embedded store, the baseline.
    {
        let kc = start_keycard_with(args, &[], None).await?;
        setup(kc.addr).await?;
        let a = [kc.addr];
        let data = data_rows("embedded", &a, &pids(&[&kc]), None, secs).await?;
        let logins = login_rows("embedded", &a, None, secs).await?;
        configs.push(Config {
            name: "embedded (redb)",
            data,
            logins,
        });
    }

    // (b) One node on PostgreSQL.
    {
        let schema = Schema::new("one");
        let n1 = start_node(args, &schema, "n1").await?;
        setup(n1.addr).await?;
        let a = [n1.addr];
        let db = Db::connect(&schema).await?;
        let data = data_rows("pg 1 node", &a, &pids(&[&n1]), Some(&db), secs).await?;
        let logins = login_rows("pg 1 node", &a, Some(&db), secs).await?;
        configs.push(Config {
            name: "PostgreSQL, 1 node",
            data,
            logins,
        });
    }

    // (c) Three nodes on one schema: the data workloads, then what
    // crosses nodes, then logins (which close the servers).
    let cross;
    {
        let schema = Schema::new("three");
        let mut nodes = Vec::new();
        for n in ["n1", "n2", "n3"] {
            nodes.push(start_node(args, &schema, n).await?);
        }
        let a = addrs(&nodes);
        setup(a[0]).await?;
        let db = Db::connect(&schema).await?;
        let all: Vec<&Peer> = nodes.iter().collect();
        let data = data_rows("pg 3 nodes", &a, &pids(&all), Some(&db), secs).await?;
        cross = Cross {
            tokens: tokens(&a, secs).await?,
            revocations: revocations(&a, 200).await?,
            watch: watch_lag(&a, 500).await?,
        };
        let logins = login_rows("pg 3 nodes", &a, Some(&db), secs).await?;
        configs.push(Config {
            name: "PostgreSQL, 3 nodes",
            data,
            logins,
        });
    }

    let costs = costs().await?;
    print_report(&configs, &cross, &costs);
    Ok(())
}

/// What the three-node configuration measured across nodes.
struct Cross {
    tokens: Tokens,
    revocations: Revocations,
    watch: Watch,
}

struct Tokens {
    /// Token logins on nodes 2 and 3 (token made on node 1).
    login_p50: Duration,
    login_p99: Duration,
    logins: usize,
    /// (workload, with the token login, without a login), nodes 2 and 3.
    rows: Vec<(&'static str, Load, Load)>,
}

/// A `_test` user and a token for it made through node 1, the token used
/// on nodes 2 and 3.
async fn tokens(addrs: &[SocketAddr], secs: f64) -> anyhow::Result<Tokens> {
    let admin = Client::connect(addrs[0]).await?;
    let token = crate::tokens::user_token(&admin).await?;
    let others = &addrs[1..];
    // The login's time: 48 logins, alternating nodes 2 and 3.
    let mut times = Vec::new();
    for i in 0..48 {
        let auth = Msg::new()
            .with("action", "auth")
            .with("typ", keycard_auth::TOKEN)
            .with("token", token.as_str());
        let (_c, t) = raw_login(others[i % others.len()], auth).await?;
        times.push(t);
    }
    times.sort_unstable();
    let mut rows = Vec::new();
    for (name, clients, depth) in [
        ("get_value 1×1", 1, 1),
        ("get_value 16×1", 16, 1),
        ("get_value 16×16", 16, 16),
    ] {
        let with = load(
            open(others, clients, Some(&token)).await?,
            Op::Get,
            depth,
            secs,
            &[],
        )
        .await?;
        let without = load(
            open(others, clients, None).await?,
            Op::Get,
            depth,
            secs,
            &[],
        )
        .await?;
        eprintln!(
            "token on nodes 2+3 {name}: {:.0} ops/s (p50 {:.3} ms); no login {:.0} ops/s (p50 {:.3} ms)",
            with.ops,
            ms(with.p50),
            without.ops,
            ms(without.p50)
        );
        rows.push((name, with, without));
    }
    Ok(Tokens {
        login_p50: pct(&times, 0.5),
        login_p99: pct(&times, 0.99),
        logins: times.len(),
        rows,
    })
}

struct Revocations {
    n: usize,
    /// Revoke sent → its answer (node 1).
    answer: Vec<Duration>,
    /// Revoke sent → node 2 closed the connection.
    closed: Vec<Duration>,
}

/// `n` times: a `_test` login as benchjoe on node 2, its keycard read
/// with `whoami`, revoked by id through node 1; the time until node 2
/// closes the connection.
async fn revocations(addrs: &[SocketAddr], n: usize) -> anyhow::Result<Revocations> {
    let admin = Client::connect(addrs[0]).await?;
    let mut answer = Vec::with_capacity(n);
    let mut closed = Vec::with_capacity(n);
    for round in 0..n {
        let auth = Msg::new()
            .with("action", "auth")
            .with("typ", keycard_auth::TEST)
            .with("ident", "benchjoe");
        let (mut joe, _) = raw_login(addrs[1], auth).await?;
        send(&mut joe, 2, Msg::new().with("action", "whoami")).await?;
        let me = joe.recv().await?;
        let id = me
            .get("keycard")
            .and_then(Value::as_str)
            .with_context(|| format!("no keycard in whoami: {me:?}"))?
            .to_owned();
        let t = Instant::now();
        let r = admin
            .request(
                Msg::new()
                    .with("action", "keycard_revoke")
                    .with("id", id.as_str()),
            )
            .await?;
        answer.push(t.elapsed());
        anyhow::ensure!(
            r.get("revoked").and_then(Value::as_u64) == Some(1),
            "round {round}: revoking {id} through node 1: {r:?}"
        );
        let deadline = t + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline.into(), joe.recv()).await {
                Ok(Ok(_)) => continue,
                Ok(Err(_)) => break,
                Err(_) => bail!("round {round}: node 2 kept the revoked connection open 5 s"),
            }
        }
        closed.push(t.elapsed());
    }
    answer.sort_unstable();
    closed.sort_unstable();
    eprintln!(
        "revocation through node 1 → node 2 closed: p50 {:.2} ms, p99 {:.2} ms (answer p50 {:.2} ms)",
        ms(pct(&closed, 0.5)),
        ms(pct(&closed, 0.99)),
        ms(pct(&answer, 0.5))
    );
    Ok(Revocations { n, answer, closed })
}

struct Watch {
    n: usize,
    /// Write sent → its answer (node 1).
    answer: Vec<Duration>,
    /// Write sent → the event, per watching node (1, 2, 3).
    lag: [Vec<Duration>; 3],
}

/// A watch on each node; `n` writes through node 1, one at a time; the
/// time from sending each until each watch delivers it.
async fn watch_lag(addrs: &[SocketAddr], n: usize) -> anyhow::Result<Watch> {
    let at = Path::new(vec!["watchlag".into()]);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, i64, Instant)>();
    let mut watchers = Vec::new();
    for (node, &addr) in addrs.iter().enumerate().take(3) {
        let c = Client::connect(addr).await?;
        let mut w = c.watch(&at, true).await?;
        w.uptodate().await?;
        let tx = tx.clone();
        watchers.push(tokio::spawn(async move {
            let _keep = c;
            while let Some(ev) = w.next_event().await {
                let now = Instant::now();
                if let Event::Item(item) = ev? {
                    if let Some(i) = item.value.as_ref().and_then(Value::as_i64) {
                        if tx.send((node, i, now)).is_err() {
                            break;
                        }
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    drop(tx);
    let writer = Client::connect(addrs[0]).await?;
    let key = at.child(Elem::from("k"));
    let mut answer = Vec::with_capacity(n);
    let mut lag: [Vec<Duration>; 3] = Default::default();
    for i in 0..n as i64 {
        let t = Instant::now();
        writer.set(&key, Value::from(i)).await?;
        answer.push(t.elapsed());
        let mut seen = [false; 3];
        while seen.iter().any(|s| !s) {
            let (node, v, when) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .with_context(|| format!("write {i}: a watch did not see it within 5 s"))?
                .context("a watch ended")?;
            if v == i && !seen[node] {
                seen[node] = true;
                lag[node].push(when.saturating_duration_since(t));
            }
        }
    }
    for w in watchers {
        w.abort();
    }
    answer.sort_unstable();
    for l in &mut lag {
        l.sort_unstable();
    }
    eprintln!(
        "watch lag, writes through node 1: node 1 p50 {:.2} ms, node 2 p50 {:.2} ms, node 3 p50 {:.2} ms",
        ms(pct(&lag[0], 0.5)),
        ms(pct(&lag[1], 0.5)),
        ms(pct(&lag[2], 0.5))
    );
    Ok(Watch { n, answer, lag })
}

/// Single operations timed from this process, one at a time.
struct Costs {
    /// (what, p50, p99)
    rows: Vec<(&'static str, Duration, Duration)>,
}

/// Times `n` runs of `f`; (p50, p99).
async fn timed<F, Fut>(n: usize, mut f: F) -> anyhow::Result<(Duration, Duration)>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i).await?;
        times.push(t.elapsed());
    }
    times.sort_unstable();
    Ok((pct(&times, 0.5), pct(&times, 0.99)))
}

/// The database's own costs, on a scratch table in a schema of its own,
/// with no keycard running: a point read by primary key prepared once
/// (what a node's get does: one round trip), the same statement sent
/// unprepared (parse, then bind and execute: two), a one-row upsert
/// committed (with the WAL flush) and the same with `synchronous_commit =
/// off` (no flush); and a local `fdatasync` after a 4 KiB write, what
/// the embedded store's commit waits for.
async fn costs() -> anyhow::Result<Costs> {
    let schema = Schema::new("raw");
    let (pg, conn) = tokio_postgres::connect(&database(), tokio_postgres::NoTls)
        .await
        .context("connect to the database")?;
    let driver = tokio::spawn(conn);
    let s = &schema.name;
    pg.batch_execute(&format!(
        "CREATE SCHEMA {s};
         CREATE TABLE {s}.data (key bytea PRIMARY KEY, tock bigint NOT NULL, value bytea NOT NULL);
         INSERT INTO {s}.data SELECT int8send(i), i, '\\x00'::bytea FROM generate_series(1, 10000) i;
         ANALYZE {s}.data;"
    ))
    .await?;
    let get = format!("SELECT tock, value FROM {s}.data WHERE key = $1");
    let upsert = format!(
        "INSERT INTO {s}.data (key, tock, value) VALUES ($1, $2, $3) \
         ON CONFLICT (key) DO UPDATE SET tock = excluded.tock, value = excluded.value"
    );
    let key = |i: usize| ((i % 10_000) as i64 + 1).to_be_bytes().to_vec();
    let mut rows = Vec::new();
    let prepared = pg.prepare(&get).await?;
    let (p50, p99) = timed(2000, |i| {
        let (pg, st) = (&pg, &prepared);
        async move {
            pg.query_opt(st, &[&key(i)]).await?;
            Ok(())
        }
    })
    .await?;
    rows.push(("point read, prepared (1 round trip)", p50, p99));
    let (p50, p99) = timed(2000, |i| {
        let (pg, get) = (&pg, &get);
        async move {
            pg.query_opt(get.as_str(), &[&key(i)]).await?;
            Ok(())
        }
    })
    .await?;
    rows.push(("point read, unprepared (parse + execute: 2)", p50, p99));
    let (p50, p99) = timed(2000, |_| {
        let pg = &pg;
        async move {
            pg.query_one("SELECT 1", &[]).await?;
            Ok(())
        }
    })
    .await?;
    rows.push(("SELECT 1, unprepared", p50, p99));
    let up = pg.prepare(&upsert).await?;
    for (what, sync) in [
        ("one-row upsert, BEGIN … COMMIT (WAL flushed)", "on"),
        ("the same, synchronous_commit = off", "off"),
    ] {
        pg.batch_execute(&format!("SET synchronous_commit = {sync}"))
            .await?;
        let (p50, p99) = timed(500, |i| {
            let (pg, up) = (&pg, &up);
            async move {
                pg.batch_execute("BEGIN").await?;
                pg.execute(up, &[&key(i), &(i as i64), &vec![1u8; 32]])
                    .await?;
                pg.batch_execute("COMMIT").await?;
                Ok(())
            }
        })
        .await?;
        rows.push((what, p50, p99));
    }
    drop(pg);
    let _ = driver.await;
    // The local disk: what a redb commit waits for.
    let dir = std::env::temp_dir().join(format!("keycard-bench-fsync-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("f");
    let (p50, p99) = {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&file)?;
        let page = vec![7u8; 4096];
        let mut times = Vec::with_capacity(500);
        for i in 0..500u64 {
            let t = Instant::now();
            f.seek(std::io::SeekFrom::Start((i % 64) * 4096))?;
            f.write_all(&page)?;
            f.sync_data()?;
            times.push(t.elapsed());
        }
        times.sort_unstable();
        (pct(&times, 0.5), pct(&times, 0.99))
    };
    let _ = std::fs::remove_dir_all(&dir);
    rows.push((
        "local 4 KiB write + fdatasync (temp dir, as redb's commit)",
        p50,
        p99,
    ));
    for (what, p50, p99) in &rows {
        eprintln!("{what}: p50 {:.3} ms, p99 {:.3} ms", ms(*p50), ms(*p99));
    }
    Ok(Costs { rows })
}

fn ratio(x: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.2}×", x / base)
    } else {
        "–".into()
    }
}

fn print_report(configs: &[Config], cross: &Cross, costs: &Costs) {
    println!("### keycard on PostgreSQL against the embedded store (same run)\n");
    print!("| workload |");
    for c in configs {
        print!(" {} ops/s (p50 / p99 ms) |", c.name);
    }
    for c in &configs[1..] {
        print!(" {} ÷ embedded |", c.name);
    }
    println!();
    println!("|---|{}", "---:|".repeat(2 * configs.len() - 1));
    let base = &configs[0];
    for (i, (name, ..)) in WORKLOADS.iter().enumerate() {
        print!("| {name} |");
        for c in configs {
            let l = c.data[i].load;
            print!(" {:.0} ({:.3} / {:.3}) |", l.ops, ms(l.p50), ms(l.p99));
        }
        for c in &configs[1..] {
            print!(" {} |", ratio(c.data[i].load.ops, base.data[i].load.ops));
        }
        println!();
    }
    type Pick = fn(&Logins) -> Result<Load, String>;
    let picks: [(&str, Pick); 3] = [
        (
            "SCRAM-SHA-256 logins/s, 1 client, a new connection each",
            |l| Ok(l.one),
        ),
        ("SCRAM-SHA-256 logins/s, 16 clients, 16 users", |l| {
            Ok(l.many)
        }),
        (
            "SCRAM-SHA-256 logins/s, 16 clients, one user (as the logins suite)",
            |l| l.one_user.clone(),
        ),
    ];
    for (name, pick) in picks {
        print!("| {name} |");
        for c in configs {
            match pick(&c.logins) {
                Ok(l) => print!(" {:.0} ({:.2} / {:.2}) |", l.ops, ms(l.p50), ms(l.p99)),
                Err(_) => print!(" refused (throttled) |"),
            }
        }
        for c in &configs[1..] {
            match (pick(&c.logins), pick(&base.logins)) {
                (Ok(l), Ok(b)) => print!(" {} |", ratio(l.ops, b.ops)),
                _ => print!(" – |"),
            }
        }
        println!();
    }
    if let Some(three) = configs.get(2) {
        let one = &configs[1];
        println!("\n3 nodes ÷ 1 node:");
        for (i, (name, ..)) in WORKLOADS.iter().enumerate() {
            print!(
                " {name} {};",
                ratio(three.data[i].load.ops, one.data[i].load.ops)
            );
        }
        println!(
            " logins 1 client {}; logins 16 clients × 16 users {}",
            ratio(three.logins.one.ops, one.logins.one.ops),
            ratio(three.logins.many.ops, one.logins.many.ops)
        );
    }
    for c in configs {
        if let Some([a, b]) = c.logins.writes {
            println!(
                "\n{}: store writes per SCRAM login {:.2} (1 client), {:.2} (16 clients); writes per commit {:.1}, {:.1}",
                c.name, a.0, b.0, a.1, b.1
            );
        }
    }
    for c in configs {
        if let Err(e) = &c.logins.one_user {
            println!("\n{}: 16 clients logging in as one user: {e}", c.name);
        }
    }

    println!("\n### Where the CPU goes, per request (µs; the machine's two cores, same run)\n");
    println!("| workload | store | keycard | load tool | everything else (PostgreSQL, kernel) | idle | writes per commit |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (i, (name, ..)) in WORKLOADS.iter().enumerate() {
        for c in configs {
            let r = c.data[i];
            println!(
                "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.0} % | {} |",
                c.name,
                r.load.cpu[0],
                r.load.cpu[1],
                r.load.cpu[2],
                r.load.idle * 100.0,
                r.per_commit.map_or("".into(), |w| format!("{w:.1}"))
            );
        }
    }

    let t = &cross.tokens;
    println!(
        "\n### Across three nodes\n\nA token made on node 1, {} logins with it on nodes 2 and 3: p50 {:.2} ms, p99 {:.2} ms.\n",
        t.logins,
        ms(t.login_p50),
        ms(t.login_p99)
    );
    println!("| get_value on nodes 2 and 3 | token login: ops/s (p50 / p99 ms) | no login: ops/s (p50 / p99 ms) | token ÷ no login |");
    println!("|---|---:|---:|---:|");
    for (name, with, without) in &t.rows {
        println!(
            "| {name} | {:.0} ({:.3} / {:.3}) | {:.0} ({:.3} / {:.3}) | {} |",
            with.ops,
            ms(with.p50),
            ms(with.p99),
            without.ops,
            ms(without.p50),
            ms(without.p99),
            ratio(with.ops, without.ops)
        );
    }
    let r = &cross.revocations;
    let w = &cross.watch;
    println!("\n| across nodes | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|");
    let row = |what: String, v: &[Duration]| {
        println!(
            "| {what} | {:.2} | {:.2} | {:.2} |",
            ms(pct(v, 0.5)),
            ms(pct(v, 0.99)),
            ms(pct(v, 1.0))
        );
    };
    row(
        format!(
            "revocation: revoke sent to node 1 → node 2 closed the connection ({} times)",
            r.n
        ),
        &r.closed,
    );
    row(
        "revocation: revoke sent to node 1 → its answer".into(),
        &r.answer,
    );
    for (node, lag) in w.lag.iter().enumerate() {
        row(
            format!(
                "watch lag: write sent to node 1 → the watch on node {} ({} writes)",
                node + 1,
                w.n
            ),
            lag,
        );
    }
    row("write sent to node 1 → its answer".into(), &w.answer);

    println!("\n### Single operations (this process, one at a time, no keycard running)\n");
    println!("| operation | p50 ms | p99 ms |");
    println!("|---|---:|---:|");
    for (what, p50, p99) in &costs.rows {
        println!("| {what} | {:.3} | {:.3} |", ms(*p50), ms(*p99));
    }
}
