//! `keycard-bench`: one load generator, two servers, same run.
//!
//! Starts `keycard serve` (durable embedded store, on a temp dir) and the
//! real DistKV 0.65 server (../shared/tools/distkv-serve.py, in memory,
//! MQTT backend), then drives both with the same raw msgpack client over
//! loopback: get_value and set_value with 1 and 16 clients, one request in
//! flight per client or pipelined, and one get_tree over N entries. Prints
//! a Markdown table with ops/s and the keycard/DistKV ratio. Other suites:
//! logins (`logins.rs`), acl (in-process ACL checks), acltree
//! (`acltree.rs`: get_tree with and without an ACL, keycard only) and
//! keycards (`keycards.rs`: the bouncer's keycard table with 1M keycards,
//! in process).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use keycard_proto::{encode_into, Decoder, Elem, Limits, Msg, Path, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
#[command(about = "keycard vs DistKV 0.65, side by side")]
struct Args {
    /// The keycard binary [default: next to this one].
    #[arg(long)]
    keycard: Option<PathBuf>,
    /// Measure an already running keycard at this address instead of
    /// starting one (e.g. to profile it).
    #[arg(long)]
    keycard_addr: Option<SocketAddr>,
    /// Python with distkv 0.65 installed (scripts/test.sh makes one).
    #[arg(long, env = "KEYCARD_DISTKV_PYTHON")]
    distkv_python: Option<PathBuf>,
    /// DistKV's launcher script (not in this repository: docs/BENCHMARKS.md).
    #[arg(long, default_value = "../shared/tools/distkv-serve.py")]
    distkv_serve: PathBuf,
    /// Skip DistKV (keycard numbers only, no ratios).
    #[arg(long)]
    no_distkv: bool,
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Entries for the get_tree measurement.
    #[arg(long, default_value_t = 100_000)]
    tree_entries: u64,
    /// Entries the seal suite dumps and restores.
    #[arg(long, default_value_t = 200_000)]
    dump_entries: u64,
    /// Requests in flight per client when pipelining.
    #[arg(long, default_value_t = 32)]
    depth: usize,
    /// Timed get_tree walks per user in the acltree suite.
    #[arg(long, default_value_t = 10)]
    tree_walks: usize,
    /// Which measurements: kv (data actions), logins, acl (in-process ACL
    /// checks), acltree (get_tree with and without an ACL), keycards (the
    /// bouncer's keycard table with 1M keycards, in process), tokens
    /// (get_value with and without a token login), rest (signed REST
    /// requests next to unsigned ones, REST logins), tls (the same
    /// workloads over TLS and over plain TCP), seal (with secrets sealed
    /// at rest and without), cluster (PostgreSQL, one node and three,
    /// against the embedded store; revocation and watches across nodes),
    /// or all.
    #[arg(long, default_value = "kv")]
    suite: String,
    /// Start the keycard server under this command, split on spaces (e.g.
    /// "valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p"): the
    /// rest suite's profile.
    #[arg(long)]
    keycard_wrapper: Option<String>,
    /// rest suite: instead of timed rounds, exactly this many requests of
    /// each kind (for profiling; see `--callgrind`).
    #[arg(long)]
    rest_requests: Option<usize>,
    /// rest suite with `--rest-requests` and a server started under
    /// callgrind (`--keycard-wrapper`): zero its counters before each kind
    /// and dump them after it (`callgrind_control`), so each dump holds one
    /// kind's requests.
    #[arg(long)]
    callgrind: bool,
}

/// A server under test.
struct Peer {
    name: &'static str,
    addr: SocketAddr,
    child: Option<Child>,
    _dir: Option<tempdir::Dir>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_for_greeting(addr: SocketAddr, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("server exited early: {status}");
        }
        if let Ok(c) = Conn::connect(addr).await {
            drop(c);
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("server at {addr} did not come up");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn start_keycard(args: &Args) -> anyhow::Result<Peer> {
    start_keycard_with(args, &[], None).await
}

/// Starts keycard with `extra` arguments to `serve`; with `tls`, the
/// bench's connections to it go over TLS ([`tls::register`]).
async fn start_keycard_with(
    args: &Args,
    extra: &[&str],
    tls: Option<keycard_client::ClientTls>,
) -> anyhow::Result<Peer> {
    if let Some(addr) = args.keycard_addr {
        return Ok(Peer {
            name: "keycard",
            addr,
            child: None,
            _dir: None,
        });
    }
    let bin = match &args.keycard {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("keycard"),
    };
    let port = free_port()?;
    // One directory per server: suites start two side by side.
    let dir = std::env::temp_dir().join(format!("keycard-bench-{}-{port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut cmd = match &args.keycard_wrapper {
        Some(w) => {
            let mut words = w.split_whitespace();
            let mut c = Command::new(words.next().context("empty --keycard-wrapper")?);
            c.args(words).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    let mut child = cmd
        .args([
            "serve",
            "--log",
            "warn",
            "--listen",
            &addr.to_string(),
            "--data",
        ])
        .arg(&dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    if let Some(tls) = tls {
        tls::register(addr, tls);
    }
    wait_for_greeting(addr, &mut child).await?;
    Ok(Peer {
        name: "keycard",
        addr,
        child: Some(child),
        _dir: Some(tempdir::Dir(dir)),
    })
}

async fn start_distkv(args: &Args) -> anyhow::Result<Peer> {
    let python = args
        .distkv_python
        .clone()
        .context("--distkv-python (or KEYCARD_DISTKV_PYTHON) is needed, or pass --no-distkv")?;
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut child = Command::new(&python)
        .arg(&args.distkv_serve)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start DistKV with {}", python.display()))?;
    wait_for_greeting(addr, &mut child).await?;
    Ok(Peer {
        name: "DistKV 0.65",
        addr,
        child: Some(child),
        _dir: None,
    })
}

/// What a [`Conn`] reads and writes: a TCP socket, or TLS over one.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A raw protocol connection (no flow control, as the server allows).
struct Conn {
    stream: Box<dyn Io>,
    dec: Decoder,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects to `addr`, over TLS if `addr` is a server the tls suite
    /// started with TLS ([`tls::client_for`]).
    async fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
        let socket = TcpStream::connect(addr).await?;
        socket.set_nodelay(true)?;
        let stream: Box<dyn Io> = match tls::client_for(addr) {
            Some(tls) => Box::new(tls.connect(socket).await?),
            None => Box::new(socket),
        };
        let mut c = Conn {
            stream,
            dec: Decoder::new(Limits {
                max_message: 64 << 20,
                max_depth: 64,
                max_items: 1 << 24,
            }),
            buf: vec![0; 1 << 16],
        };
        let g = tokio::time::timeout(Duration::from_secs(5), c.recv()).await??;
        if g.get("seq").and_then(Value::as_i64) != Some(0) {
            bail!("no greeting");
        }
        Ok(c)
    }

    async fn recv(&mut self) -> anyhow::Result<Value> {
        loop {
            if let Some(v) = self.dec.next_value()? {
                return Ok(v);
            }
            let n = self.stream.read(&mut self.buf).await?;
            if n == 0 {
                bail!("server closed the connection");
            }
            self.dec.feed(&self.buf[..n]);
        }
    }
}

fn path(elems: Vec<Elem>) -> Path {
    Path::new(elems)
}

/// What one request of a workload looks like.
#[derive(Clone, Copy)]
enum Op {
    Get,
    Set,
}

fn request(op: Op, client: usize, n: u64, seq: i64, out: &mut Vec<u8>) {
    let m = match op {
        Op::Get => Msg::seq(seq)
            .with("action", "get_value")
            .with_path("path", &path(vec!["bench".into(), "g".into()]))
            .with("nchain", 0),
        Op::Set => Msg::seq(seq)
            .with("action", "set_value")
            .with_path(
                "path",
                &path(vec![
                    "bench".into(),
                    "s".into(),
                    Elem::Int(client as i128),
                    Elem::Int((n % 1000) as i128),
                ]),
            )
            .with("value", n)
            .with("nchain", 0),
    };
    encode_into(&m.into_value(), out);
}

/// Runs `clients` connections, each keeping `depth` requests in flight,
/// for `secs`; returns completed requests per second.
async fn throughput(
    addr: SocketAddr,
    op: Op,
    clients: usize,
    depth: usize,
    secs: f64,
) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(Conn::connect(addr).await?);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (client, mut c) in conns.into_iter().enumerate() {
        let done = done.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut seq = 1i64;
            let mut out = Vec::new();
            for _ in 0..depth {
                request(op, client, seq as u64, seq, &mut out);
                seq += 1;
            }
            c.stream.write_all(&out).await?;
            let mut in_flight = depth;
            while in_flight > 0 {
                let v = c.recv().await?;
                if let Some(e) = v.get("error") {
                    bail!("server error: {e:?}");
                }
                in_flight -= 1;
                done.fetch_add(1, Ordering::Relaxed);
                if !stop.load(Ordering::Relaxed) {
                    out.clear();
                    request(op, client, seq as u64, seq, &mut out);
                    seq += 1;
                    c.stream.write_all(&out).await?;
                    in_flight += 1;
                }
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let counted = done.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(counted as f64 / elapsed)
}

/// Writes `n` entries under ("tree", i), pipelined.
async fn load_tree(addr: SocketAddr, n: u64) -> anyhow::Result<()> {
    let mut c = Conn::connect(addr).await?;
    let depth = 256u64;
    let mut sent = 0u64;
    let mut got = 0u64;
    let mut out = Vec::new();
    while got < n {
        out.clear();
        while sent < n && sent - got < depth {
            let m = Msg::seq(sent as i64 + 1)
                .with("action", "set_value")
                .with_path("path", &path(vec!["tree".into(), Elem::Int(sent as i128)]))
                .with("value", sent)
                .with("nchain", 0);
            encode_into(&m.into_value(), &mut out);
            sent += 1;
        }
        if !out.is_empty() {
            c.stream.write_all(&out).await?;
        }
        let v = c.recv().await?;
        if let Some(e) = v.get("error") {
            bail!("server error while loading: {e:?}");
        }
        got += 1;
    }
    Ok(())
}

/// One get_tree over the loaded entries; returns (seconds, items).
async fn tree_walk(addr: SocketAddr) -> anyhow::Result<(f64, u64)> {
    let mut c = Conn::connect(addr).await?;
    walk_on(&mut c, 1).await
}

/// One get_tree over ("tree",), full depth, on an open connection as
/// request `seq` (the only one in flight); returns (seconds, items).
async fn walk_on(c: &mut Conn, seq: i64) -> anyhow::Result<(f64, u64)> {
    let mut out = Vec::new();
    let m = Msg::seq(seq)
        .with("action", "get_tree")
        .with_path("path", &path(vec!["tree".into()]));
    encode_into(&m.into_value(), &mut out);
    let start = Instant::now();
    c.stream.write_all(&out).await?;
    let mut items = 0u64;
    loop {
        let v = c.recv().await?;
        if let Some(e) = v.get("error") {
            bail!("server error: {e:?}");
        }
        match v.get("state").and_then(Value::as_str) {
            Some("end") => break,
            Some(_) => {}
            None => items += 1,
        }
    }
    Ok((start.elapsed().as_secs_f64(), items))
}

async fn setup(addr: SocketAddr) -> anyhow::Result<()> {
    let mut c = Conn::connect(addr).await?;
    let mut out = Vec::new();
    let m = Msg::seq(1)
        .with("action", "set_value")
        .with_path("path", &path(vec!["bench".into(), "g".into()]))
        .with("value", "a value of some thirty-two bytes")
        .with("nchain", 0);
    encode_into(&m.into_value(), &mut out);
    c.stream.write_all(&out).await?;
    c.recv().await?;
    Ok(())
}

struct Row {
    name: String,
    results: Vec<f64>,
}

mod acltree;
mod cluster;
mod keycards;
mod logins;
mod rest;
mod seal;
mod tls;
mod tokens;

/// Counts the bytes allocated, for the keycards suite's bytes per keycard
/// (one relaxed atomic add per allocation in every suite).
#[global_allocator]
static ALLOCATOR: keycards::counting::Counting = keycards::counting::Counting;

/// Prints a Markdown table: a row per workload, a column per peer, and the
/// keycard/DistKV ratio when both were measured.
fn print_table(names: &[&str], rows: Vec<Row>) {
    print_table_with(names, "keycard / DistKV", rows)
}

/// [`print_table`] with the ratio column named `ratio` (first ÷ second).
fn print_table_with(names: &[&str], ratio: &str, rows: Vec<Row>) {
    print!("| workload | {} |", names.join(" | "));
    if names.len() > 1 {
        print!(" {ratio} |");
    }
    println!();
    println!(
        "|---|{}",
        "---:|".repeat(names.len() + usize::from(names.len() > 1))
    );
    for r in rows {
        print!("| {} |", r.name);
        for v in &r.results {
            print!(" {v:.1} |");
        }
        if r.results.len() > 1 && r.results[1] > 0.0 {
            print!(" {:.2}× |", r.results[0] / r.results[1]);
        }
        println!();
    }
}

async fn logins_suite(args: &Args) -> anyhow::Result<()> {
    let secs = args.seconds;
    let kc = start_keycard(args).await?;
    setup(kc.addr).await?;
    logins::setup_users(kc.addr).await?;
    println!("### Logins (keycard, over loopback, a fresh connection per login)\n");
    println!("| method | 1 client (logins/s) | 16 clients (logins/s) | raw cost, same run | 16 clients / raw |");
    println!("|---|---:|---:|---:|---:|");
    let raw_argon2 = logins::raw_argon2(secs)?;
    let raw_opaque = logins::raw_opaque(secs)?;
    let mut idle = logins::get_latencies(kc.addr, secs).await?;
    let rtt = logins::percentile(&mut idle, 0.5);
    for (method, raw, raw_name) in [
        (
            keycard_auth::PASSWORD,
            raw_argon2,
            "Argon2id verifications/s, all cores",
        ),
        (
            keycard_auth::OPAQUE,
            raw_opaque,
            "in-process OPAQUE logins/s (client + server), all cores",
        ),
        (
            keycard_auth::SCRAM_SHA_256,
            1.0 / rtt.as_secs_f64().max(1e-9),
            "get_value round trips/s, 1 client",
        ),
    ] {
        let one = logins::login_rate(kc.addr, method, 1, secs).await?;
        let many = logins::login_rate(kc.addr, method, 16, secs).await?;
        eprintln!("keycard {method}: {one:.1} / {many:.1} logins/s; raw {raw:.1} ({raw_name})");
        println!(
            "| {method} | {one:.1} | {many:.1} | {raw:.1} ({raw_name}) | {:.2} |",
            many / raw
        );
    }
    // get_value latency from another client, idle and under a login storm.
    let p99_idle = logins::percentile(&mut idle, 0.99);
    let storm_addr = kc.addr;
    let storm = tokio::spawn(async move {
        logins::login_rate(storm_addr, keycard_auth::PASSWORD, 16, secs + 1.0).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut busy = logins::get_latencies(kc.addr, secs).await?;
    let storm_rate = storm.await??;
    let p99_busy = logins::percentile(&mut busy, 0.99);
    println!(
        "\nget_value p99 from another client: idle {:.3} ms; during a password login storm ({storm_rate:.1} logins/s, 16 clients) {:.3} ms: {:.2}×\n",
        p99_idle.as_secs_f64() * 1e3,
        p99_busy.as_secs_f64() * 1e3,
        p99_busy.as_secs_f64() / p99_idle.as_secs_f64().max(1e-9)
    );
    // DistKV's password method, the same raw client against both.
    let mut rows = vec![
        Row {
            name: "password logins/s, DistKV's protocol (MODP DH), 1 client".into(),
            results: vec![],
        },
        Row {
            name: "password logins/s, DistKV's protocol (MODP DH), 16 clients".into(),
            results: vec![],
        },
    ];
    rows[0]
        .results
        .push(logins::distkv_login_rate(kc.addr, "pw", 1, secs).await?);
    rows[1]
        .results
        .push(logins::distkv_login_rate(kc.addr, "pw", 16, secs).await?);
    drop(kc);
    let mut names = vec!["keycard"];
    if !args.no_distkv {
        let dk = start_distkv(args).await?;
        logins::distkv_password_user(dk.addr, "pw").await?;
        rows[0]
            .results
            .push(logins::distkv_login_rate(dk.addr, "pw", 1, secs).await?);
        rows[1]
            .results
            .push(logins::distkv_login_rate(dk.addr, "pw", 16, secs).await?);
        names.push("DistKV 0.65");
    }
    print_table(&names, rows);
    Ok(())
}

/// ACL check cost: one ACL of `rules` random entries, checks of random
/// paths, in process (no server); the baseline is the same walk with an
/// empty ACL.
fn acl_suite(rules: usize) {
    use keycard_auth::acl::{Acl, Mode, Modes};
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let word = |rng: &mut rand::rngs::ThreadRng| Elem::Str(format!("w{}", rng.gen_range(0..64)));
    let mut acl = Acl::new();
    let modes = Modes::parse("rwcxen").unwrap_or_default();
    for _ in 0..rules {
        let len = rng.gen_range(1..5);
        let pattern: Vec<Elem> = (0..len)
            .map(|_| match rng.gen_range(0..20) {
                0 => Elem::from("+"),
                1 => Elem::from("#"),
                _ => word(&mut rng),
            })
            .collect();
        acl.insert(&pattern, modes);
    }
    let paths: Vec<Vec<Elem>> = (0..10_000)
        .map(|_| (0..rng.gen_range(1..6)).map(|_| word(&mut rng)).collect())
        .collect();
    let time = |acl: &Acl| {
        let start = Instant::now();
        let mut granted = 0usize;
        let rounds = 20;
        for _ in 0..rounds {
            for p in &paths {
                granted += usize::from(acl.check(p, |_| true, Mode::Read).is_ok());
            }
        }
        (
            start.elapsed().as_nanos() as f64 / (rounds * paths.len()) as f64,
            granted,
        )
    };
    let (with, granted) = time(&acl);
    let (empty, _) = time(&Acl::new());
    println!("### ACL checks\n");
    println!("| ACL | ns per check (paths of 1-5 elements) |");
    println!("|---|---:|");
    println!(
        "| {} entries ({} of {} checks granted) | {with:.0} |",
        acl.len(),
        granted / 20,
        paths.len()
    );
    println!("| empty (baseline) | {empty:.0} |");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.suite == "acl" || args.suite == "all" {
        acl_suite(10_000);
        if args.suite == "acl" {
            return Ok(());
        }
    }
    if args.suite == "keycards" || args.suite == "all" {
        keycards::keycards_suite()?;
        if args.suite == "keycards" {
            return Ok(());
        }
    }
    if args.suite == "acltree" || args.suite == "all" {
        acltree::acltree_suite(&args).await?;
        if args.suite == "acltree" {
            return Ok(());
        }
    }
    if args.suite == "rest" || args.suite == "all" {
        rest::rest_suite(&args).await?;
        if args.suite == "rest" {
            return Ok(());
        }
    }
    if args.suite == "tokens" || args.suite == "all" {
        tokens::token_suite(&args).await?;
        if args.suite == "tokens" {
            return Ok(());
        }
    }
    if args.suite == "seal" || args.suite == "all" {
        seal::seal_suite(&args).await?;
        if args.suite == "seal" {
            return Ok(());
        }
    }
    if args.suite == "tls" || args.suite == "all" {
        tls::tls_suite(&args).await?;
        if args.suite == "tls" {
            return Ok(());
        }
    }
    if args.suite == "cluster" || args.suite == "all" {
        cluster::cluster_suite(&args).await?;
        if args.suite == "cluster" {
            return Ok(());
        }
    }
    if args.suite == "logins" || args.suite == "all" {
        logins_suite(&args).await?;
        if args.suite == "logins" {
            return Ok(());
        }
    }
    let workloads: Vec<(String, Op, usize, usize)> = vec![
        ("get_value, 1 client, 1 in flight".into(), Op::Get, 1, 1),
        (
            "get_value, 16 clients, 1 in flight each".into(),
            Op::Get,
            16,
            1,
        ),
        (
            format!("get_value, 1 client, {} pipelined", args.depth),
            Op::Get,
            1,
            args.depth,
        ),
        (
            format!("get_value, 16 clients, {} pipelined each", args.depth),
            Op::Get,
            16,
            args.depth,
        ),
        ("set_value, 1 client, 1 in flight".into(), Op::Set, 1, 1),
        (
            "set_value, 16 clients, 1 in flight each".into(),
            Op::Set,
            16,
            1,
        ),
        (
            format!("set_value, 1 client, {} pipelined", args.depth),
            Op::Set,
            1,
            args.depth,
        ),
        (
            format!("set_value, 16 clients, {} pipelined each", args.depth),
            Op::Set,
            16,
            args.depth,
        ),
    ];
    let mut rows: Vec<Row> = workloads
        .iter()
        .map(|(name, ..)| Row {
            name: format!("{name} (ops/s)"),
            results: Vec::new(),
        })
        .collect();
    rows.push(Row {
        name: format!("get_tree over {} entries (entries/s)", args.tree_entries),
        results: Vec::new(),
    });
    // One server at a time, so neither measurement shares the machine with
    // the other server.
    let mut names = Vec::new();
    let which: &[bool] = if args.no_distkv {
        &[true]
    } else {
        &[true, false]
    };
    for &is_keycard in which {
        let p = if is_keycard {
            start_keycard(&args).await?
        } else {
            start_distkv(&args).await?
        };
        names.push(p.name);
        setup(p.addr).await?;
        for (i, (name, op, clients, depth)) in workloads.iter().enumerate() {
            let r = throughput(p.addr, *op, *clients, *depth, args.seconds).await?;
            eprintln!("{:<12} {name}: {r:.0} ops/s", p.name);
            rows[i].results.push(r);
        }
        let t0 = Instant::now();
        load_tree(p.addr, args.tree_entries).await?;
        eprintln!(
            "{:<12} loaded {} entries in {:.1}s",
            p.name,
            args.tree_entries,
            t0.elapsed().as_secs_f64()
        );
        let (secs, items) = tree_walk(p.addr).await?;
        if items != args.tree_entries {
            bail!(
                "{} returned {items} of {} entries",
                p.name,
                args.tree_entries
            );
        }
        eprintln!("{:<12} get_tree over {items} entries: {secs:.3}s", p.name);
        if let Some(last) = rows.last_mut() {
            last.results.push(items as f64 / secs);
        }
    }

    print_table(&names, rows);
    Ok(())
}
