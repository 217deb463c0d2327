//! The REST suite: on one server, in the same run, alternating, the
//! unsigned `GET /` (the baseline), a signed `GET /session/{sid}`
//! (verification without a store read) and a signed `GET /kv/…`: requests
//! per second, p50/p99 latency and the server's and the load generator's
//! CPU time per request, next to the same `GET /kv/…` unsigned (the server
//! is open, so the difference is the verification); then REST logins per
//! second with SCRAM-SHA-256 and OPAQUE.
//! HTTP/1.1 keep-alive connections (`keycard_client::rest`'s).
//!
//! The signed `GET /kv` does more than verify (a store read, the path,
//! JSON), so the suite also measures, in process, what verification alone
//! costs — the steps of the server's `Rest::verify` (header parse, the
//! keycard in a locked table, the session's key, HMAC-SHA-256 of the
//! canonical string with the body's SHA-256, the replay guard) — and puts
//! that next to the server's CPU time per signed request.
//!
//! `--rest-requests N` sends exactly N requests of each kind instead of
//! timed rounds; with a server started under callgrind
//! (`--keycard-wrapper "valgrind --tool=callgrind …"`) and `--callgrind`,
//! each kind's requests land in their own callgrind dump.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keycard_auth::bouncer::{KeycardId, Lifetime, Policy, Table};
use keycard_auth::signed::{self, Authorization, ReplayGuard, Request};
use keycard_auth::{OpaqueClient, Password, ScramClient, SecretKey};
use keycard_client::rest::{Connection, Login, RestClient, Session};
use keycard_client::Client;
use keycard_proto::{Path, Value};

use crate::{free_port, start_keycard_with, Args};

/// One SCRAM login over REST (on the client's keep-alive connection).
async fn login(rest: &RestClient, user: &str, pw: &str) -> anyhow::Result<Session> {
    Ok(rest.login(Login::scram(user, Password::new(pw))?).await?)
}

/// One OPAQUE login over REST (KE1, KE2, KE3; the session key from the
/// exchange).
async fn login_opaque(rest: &RestClient, user: &str, pw: &str) -> anyhow::Result<Session> {
    Ok(rest.login(Login::opaque(user, Password::new(pw))?).await?)
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The path the signed requests read.
const KV_PATH: &str = "/kv/bench/x";

/// A process's CPU time so far (all its threads, user + system), in ns,
/// from /proc/PID/task/*/schedstat (Linux; `None` elsewhere).
fn cpu_ns(pid: Option<u32>) -> Option<u64> {
    let pid = pid?;
    let mut total = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let s = std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok()?;
        total += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// How long a load runs.
#[derive(Clone, Copy)]
enum Limit {
    Seconds(f64),
    /// This many requests in all, split over the connections.
    Requests(usize),
}

/// What one load measured.
struct Measured {
    /// Requests per second.
    rate: f64,
    /// Every request's latency.
    lat: Vec<Duration>,
    /// The server's CPU time over the load, if known (ns).
    cpu: Option<u64>,
    /// The load generator's own CPU time over the load (ns).
    own: Option<u64>,
}

/// What a load sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The unsigned `GET /` (the server's index: no signature, no store
    /// read, a small JSON object).
    Index,
    /// A signed `GET /session/{sid}` for its own session: the signature
    /// check and a look at the keycard, no store read, a small JSON object.
    Session,
    /// A signed `GET /kv/bench/x`: the signature check, the session's ACL,
    /// a store read, the value as JSON.
    Kv,
    /// The same `GET /kv/bench/x` unsigned (the server is open, so anyone
    /// may): everything a signed one does but the verification.
    UnsignedKv,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Index => "unsigned-index",
            Kind::Session => "signed-session",
            Kind::Kv => "signed-kv",
            Kind::UnsignedKv => "unsigned-kv",
        }
    }
}

/// `clients` connections doing one kind of request back to back (the
/// signed ones as `sessions`, round robin) until `limit`.
///
/// Every signed header is made and every connection opened first; then all
/// connections start together and the clocks (wall, the server's CPU, the
/// load generator's CPU) run from that moment to the last answer. (An
/// earlier version signed each connection's headers just before starting
/// it, so during a signed run the connections started one after another,
/// up to ~1.6 s apart, while the load generator spent a core signing: the
/// signed runs had fewer connections in flight than the unsigned ones.)
async fn load(
    addr: SocketAddr,
    clients: usize,
    limit: Limit,
    kind: Kind,
    sessions: &[Session],
    pid: Option<u32>,
    callgrind: Option<&str>,
) -> anyhow::Result<Measured> {
    let presigned = match limit {
        // Up to 20 000 requests per connection and second (this VM does
        // ~6 000), within the nonce memory of its four sessions.
        Limit::Seconds(secs) => ((secs * 20_000.0) as usize).clamp(10_000, PRESIGNED),
        Limit::Requests(n) => n.div_ceil(clients),
    };
    let ready = std::sync::Arc::new(tokio::sync::Barrier::new(clients + 1));
    let go = std::sync::Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = Vec::new();
    for c in 0..clients {
        // (path, Authorization) per request; round robin over this
        // client's sessions (each remembers at most 10 000 nonces per
        // window).
        let requests: Vec<(String, Option<String>)> = match kind {
            Kind::Index | Kind::UnsignedKv => Vec::new(),
            Kind::Session | Kind::Kv => {
                let mine: Vec<&Session> = sessions.iter().skip(c).step_by(clients).collect();
                if mine.is_empty() {
                    bail!("fewer sessions than connections");
                }
                (0..presigned)
                    .map(|i| {
                        let s = mine[i % mine.len()];
                        let path = match kind {
                            Kind::Session => format!("/session/{}", s.sid),
                            _ => KV_PATH.to_owned(),
                        };
                        let auth = sign_get(s, &path);
                        (path, Some(auth))
                    })
                    .collect()
            }
        };
        let mine = match limit {
            Limit::Seconds(_) => usize::MAX,
            Limit::Requests(n) => n / clients + usize::from(c < n % clients),
        };
        let (ready, go) = (ready.clone(), go.clone());
        tasks.push(tokio::spawn(async move {
            let connected = Connection::connect_to(addr, "bench").await;
            ready.wait().await;
            go.wait().await;
            let mut h = connected?;
            let mut lat = Vec::with_capacity(presigned.min(1 << 16));
            let mut requests = requests.into_iter();
            h_run(&mut h, &mut requests, kind, limit, mine, &mut lat).await?;
            // The unused headers are freed after the clocks stop.
            Ok::<_, anyhow::Error>((lat, requests))
        }));
    }
    ready.wait().await;
    if callgrind.is_some() {
        callgrind_control(pid, &["--zero"])?;
    }
    go.wait().await;
    let cpu0 = cpu_ns(pid);
    let own0 = cpu_ns(Some(std::process::id()));
    let start = Instant::now();
    let mut all = Vec::new();
    let mut unused = Vec::new();
    for t in tasks {
        let (lat, rest) = t.await??;
        all.extend(lat);
        unused.push(rest);
    }
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(name) = callgrind {
        callgrind_control(pid, &[&format!("--dump={name}")])?;
    }
    let cpu = cpu0.zip(cpu_ns(pid)).map(|(a, b)| b.saturating_sub(a));
    let own = own0
        .zip(cpu_ns(Some(std::process::id())))
        .map(|(a, b)| b.saturating_sub(a));
    drop(unused);
    Ok(Measured {
        rate: all.len() as f64 / elapsed,
        lat: all,
        cpu,
        own,
    })
}

/// Verifications in the in-process measurement: 2 500 per session, about
/// what each of a timed round's 64 sessions admits.
const IN_PROCESS: usize = 160_000;

/// Most signed headers made per connection for a timed run (each
/// connection's four sessions remember at most 40 000 nonces per window in
/// all).
const PRESIGNED: usize = 40_000;

/// One connection's share of a load.
async fn h_run(
    h: &mut Connection,
    requests: &mut impl Iterator<Item = (String, Option<String>)>,
    kind: Kind,
    limit: Limit,
    mine: usize,
    lat: &mut Vec<Duration>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut done = 0;
    loop {
        match limit {
            Limit::Seconds(secs) if start.elapsed().as_secs_f64() >= secs => break,
            Limit::Requests(_) if done >= mine => break,
            _ => {}
        }
        let t = Instant::now();
        let r = if kind == Kind::Index {
            h.send("GET", "/", &[], b"").await?
        } else if kind == Kind::UnsignedKv {
            h.send("GET", KV_PATH, &[], b"").await?
        } else {
            let Some((path, auth)) = requests.next() else {
                bail!("ran out of presigned requests; lower --seconds")
            };
            let fields: &[(&str, &str)] = match &auth {
                Some(a) => &[("authorization", a.as_str())],
                None => &[],
            };
            h.send("GET", &path, fields, b"").await?
        };
        lat.push(t.elapsed());
        if r.status != 200 {
            bail!("status {}: {}", r.status, String::from_utf8_lossy(&r.body));
        }
        done += 1;
    }
    Ok(())
}

/// An `Authorization` header for `GET path` as `s`, now, with a fresh nonce.
fn sign_get(s: &Session, path: &str) -> String {
    s.authorization("GET", path, b"", "", "", now_s(), rand::random())
}

fn pct(lat: &mut [Duration], q: f64) -> f64 {
    lat.sort_unstable();
    let i = ((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1));
    lat.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

/// Runs `callgrind_control ARGS PID` (a server under callgrind).
fn callgrind_control(pid: Option<u32>, args: &[&str]) -> anyhow::Result<()> {
    let pid = pid.context("--callgrind needs a server this bench started")?;
    let status = std::process::Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("callgrind_control")?;
    if !status.success() {
        bail!("callgrind_control {args:?} {pid}: {status}");
    }
    Ok(())
}

/// What the server's `Rest::verify` does for one signed request, in
/// process, on one thread, in the server's order: the header parsed, the
/// session id parsed, the clock read, the keycard checked in a locked
/// table of 64 live keycards, the session's key taken under the sessions'
/// lock, the signature checked (HMAC-SHA-256 of the canonical string with
/// the empty body's SHA-256), the nonce admitted under the lock again; `n`
/// requests round robin over the 64 sessions (as in a timed round).
fn verify_in_process(n: usize) -> anyhow::Result<InProcess> {
    const SESSIONS: usize = 64;
    let policy = Policy::default();
    let life = Lifetime {
        duration_ms: policy.duration_ms,
        max_lifetime_ms: policy.max_lifetime_ms,
    };
    let mut table = Table::new(policy);
    let now_ms = now_s() * 1000;
    let mut sessions = HashMap::new();
    let mut signers = Vec::new();
    for i in 0..SESSIONS {
        let id = table.begin(
            now_ms,
            keycard_auth::SCRAM_SHA_256,
            "bench",
            "",
            i as u64,
            None,
        )?;
        table.authenticate(id, now_ms, "bench", "", life, None)?;
        let key = SecretKey::new(rand::random());
        signers.push(Session {
            sid: id.to_string(),
            key: key.clone(),
        });
        sessions.insert(id, (key, ReplayGuard::new(60, 10_000)));
    }
    let table = Mutex::new(table);
    let sessions = Mutex::new(sessions);
    let headers: Vec<String> = (0..n)
        .map(|i| sign_get(&signers[i % SESSIONS], KV_PATH))
        .collect();
    let req = Request {
        method: "GET",
        path: KV_PATH,
        query: "",
        body: b"",
        if_match: "",
        if_none_match: "",
    };
    let mut admits = Vec::with_capacity(n);
    let start = Instant::now();
    for h in &headers {
        let auth = Authorization::parse(h).map_err(|e| anyhow::anyhow!("{e}"))?;
        let id = KeycardId::parse(&auth.sid).context("sid")?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(id, now)
            .is_err()
        {
            bail!("keycard not live");
        }
        let key = match sessions.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
            Some((k, _)) => k.clone(),
            None => bail!("no session"),
        };
        signed::verify(&key, &req, &auth).map_err(|e| anyhow::anyhow!("{e}"))?;
        let t = Instant::now();
        let mut s = sessions.lock().unwrap_or_else(|e| e.into_inner());
        let (_, guard) = s.get_mut(&id).context("no session")?;
        guard
            .admit(now / 1000, auth.ts, auth.nonce)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        drop(s);
        admits.push(t.elapsed());
    }
    let whole = start.elapsed().as_nanos() as f64 / n as f64;
    let auths: Vec<(SecretKey, Authorization)> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let a = Authorization::parse(h).map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok((signers[i % SESSIONS].key.clone(), a))
        })
        .collect::<anyhow::Result<_>>()?;
    let start = Instant::now();
    for (key, auth) in &auths {
        black_box(signed::verify(key, &req, auth)).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let hmac = start.elapsed().as_nanos() as f64 / n as f64;
    let admit_p99 = pct(&mut admits, 0.99);
    Ok(InProcess {
        verify_ns: whole,
        hmac_ns: hmac,
        admit_p99_us: admit_p99,
        admit_max_us: pct(&mut admits, 1.0),
    })
}

/// `ReplayGuard::admit` after a burst: 10 000 nonces admitted at once (the
/// guard's maximum), then, past twice the window, 10 000 more. Returns
/// (the first of them, the longest) in µs, each the least of three tries
/// (the longest also catches this VM's preemptions). (The first one used
/// to forget all 10 000 old nonces at once: ~340 µs on this VM, under the
/// sessions' lock.)
fn admit_after_burst_us() -> (f64, f64) {
    let (mut first, mut longest) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let mut g = ReplayGuard::new(60, 10_000);
        let t0 = 1_700_000_000;
        for _ in 0..10_000 {
            let _ = g.admit(t0, t0, rand::random());
        }
        let later = t0 + 2 * 60 + 1;
        let mut times = Vec::with_capacity(10_000);
        for _ in 0..10_000 {
            let nonce = rand::random();
            let t = Instant::now();
            let _ = black_box(g.admit(later, later, nonce));
            times.push(t.elapsed());
        }
        first = first.min(times[0].as_secs_f64() * 1e6);
        longest = longest.min(pct(&mut times, 1.0));
    }
    (first, longest)
}

/// What [`verify_in_process`] measured.
struct InProcess {
    /// ns per verification (all of `Rest::verify`'s steps).
    verify_ns: f64,
    /// ns per `signed::verify` alone.
    hmac_ns: f64,
    /// The sessions' lock held for `ReplayGuard::admit`: p99 and longest (µs).
    admit_p99_us: f64,
    admit_max_us: f64,
}

/// Runs the suite and prints its table.
pub async fn rest_suite(args: &Args) -> anyhow::Result<()> {
    if args.keycard_addr.is_some() {
        bail!("the rest suite starts its own server (it needs its HTTP port)");
    }
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let peer = start_keycard_with(args, &["--http", &http.to_string()], None).await?;
    let pid = peer.child.as_ref().map(std::process::Child::id);
    let admin = Client::connect(peer.addr).await?;
    admin
        .set(&Path::new(vec!["bench".into(), "x".into()]), Value::from(1))
        .await?;
    admin
        .set_user(&ScramClient::new("bench", Password::new("bench-pw")))
        .await?;
    admin
        .set_user(&OpaqueClient {
            user: "bench-o".into(),
            password: Password::new("bench-pw"),
        })
        .await?;
    // The server stays open (no method current): then an unsigned GET /kv
    // is anyone's (as on the msgpack listener) and runs the same code as a
    // signed one but the verification, which is the baseline the cost of
    // verification is measured against. Signed requests are verified all
    // the same (a signature present is always checked), and the sessions
    // are SCRAM logins as on a closed server.
    const CLIENTS: usize = 16;
    const SESSIONS_PER_CLIENT: usize = 4;
    let h = RestClient::new(http.to_string());
    // Fresh sessions for every signed run: a session remembers at most
    // 10 000 nonces per time window (then it gets 429s).
    let fresh = async || -> anyhow::Result<Vec<Session>> {
        let mut sessions = Vec::new();
        for _ in 0..CLIENTS * SESSIONS_PER_CLIENT {
            sessions.push(login(&h, "bench", "bench-pw").await?);
        }
        Ok(sessions)
    };
    const KINDS: [Kind; 4] = [Kind::Index, Kind::Session, Kind::Kv, Kind::UnsignedKv];
    if let Some(n) = args.rest_requests {
        // The profile: exactly n of each kind, one dump each.
        let warm = Limit::Requests(CLIENTS * 4);
        if n + CLIENTS * 4 > CLIENTS * SESSIONS_PER_CLIENT * 10_000 {
            bail!(
                "--rest-requests: at most {}",
                CLIENTS * SESSIONS_PER_CLIENT * 10_000 - CLIENTS * 4
            );
        }
        println!("\n## REST profile: {n} requests of each kind, {CLIENTS} connections\n");
        println!("| request | req/s | server CPU µs/request | load generator CPU µs/request | callgrind dump |");
        println!("|---|---:|---:|---:|---|");
        for kind in KINDS {
            let sessions = match kind {
                Kind::Index | Kind::UnsignedKv => Vec::new(),
                _ => fresh().await?,
            };
            // Warm up (connections, caches, the session table).
            load(http, CLIENTS, warm, kind, &sessions, pid, None).await?;
            let dump = args.callgrind.then_some(kind.name());
            let m = load(
                http,
                CLIENTS,
                Limit::Requests(n),
                kind,
                &sessions,
                pid,
                dump,
            )
            .await?;
            let per = |c: Option<u64>| {
                c.map_or("?".into(), |c| format!("{:.1}", c as f64 / 1e3 / n as f64))
            };
            println!(
                "| {} | {:.0} | {} | {} | {} |",
                kind.name(),
                m.rate,
                per(m.cpu),
                per(m.own),
                dump.unwrap_or("—")
            );
        }
        return Ok(());
    }
    let secs = args.seconds.max(1.0);
    // Warm up, then alternate, each kind first, second and third in turn.
    let warm = Limit::Seconds(0.5);
    for kind in KINDS {
        let sessions = match kind {
            Kind::Index | Kind::UnsignedKv => Vec::new(),
            _ => fresh().await?,
        };
        load(http, CLIENTS, warm, kind, &sessions, pid, None).await?;
    }
    /// What the rounds measured of one kind.
    #[derive(Default)]
    struct Totals {
        rate: f64,
        lat: Vec<Duration>,
        /// Server CPU ns, load generator CPU ns, requests.
        cpu: Option<(u64, u64, usize)>,
    }
    let mut totals: [Totals; 4] = Default::default();
    for t in &mut totals {
        t.cpu = Some((0, 0, 0));
    }
    // Many short runs, so that what else the machine does falls on all
    // three kinds alike.
    const ROUNDS: usize = 12;
    for round in 0..ROUNDS {
        // Fresh sessions for every signed run: a session remembers at most
        // 10 000 nonces per time window (then it gets 429s).
        let for_session = fresh().await?;
        let for_kv = fresh().await?;
        for i in 0..KINDS.len() {
            let k = (i + round) % KINDS.len();
            let kind = KINDS[k];
            let sessions: &[Session] = match kind {
                Kind::Index | Kind::UnsignedKv => &[],
                Kind::Session => &for_session,
                Kind::Kv => &for_kv,
            };
            let m = load(
                http,
                CLIENTS,
                Limit::Seconds(secs / 4.0),
                kind,
                sessions,
                pid,
                None,
            )
            .await?;
            let t = &mut totals[k];
            t.rate += m.rate / ROUNDS as f64;
            t.cpu = t
                .cpu
                .zip(m.cpu.zip(m.own))
                .map(|((c, o, n), (dc, dov))| (c + dc, o + dov, n + m.lat.len()));
            t.lat.extend(m.lat);
        }
    }
    // Logins per second per method (one client, back to back).
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed().as_secs_f64() < secs {
        login(&h, "bench", "bench-pw").await?;
        n += 1;
    }
    let logins = f64::from(n) / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed().as_secs_f64() < secs {
        login_opaque(&h, "bench-o", "bench-pw").await?;
        n += 1;
    }
    let opaque_logins = f64::from(n) / start.elapsed().as_secs_f64();
    // Verification alone, in process (the median of five).
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(verify_in_process(IN_PROCESS)?);
    }
    runs.sort_by(|a, b| a.verify_ns.total_cmp(&b.verify_ns));
    let (burst_first, burst_longest) = admit_after_burst_us();
    let InProcess {
        verify_ns,
        hmac_ns,
        admit_p99_us,
        admit_max_us,
    } = runs[2];
    // µs per request: (server, load generator).
    let per = |t: &Totals| {
        t.cpu.map(|(c, o, n)| {
            (
                c as f64 / 1e3 / n.max(1) as f64,
                o as f64 / 1e3 / n.max(1) as f64,
            )
        })
    };
    let show = |c: Option<f64>| c.map_or("?".into(), |c| format!("{c:.1}"));
    println!("\n## REST: signed requests next to the unsigned GET / ({CLIENTS} keep-alive connections)\n");
    println!("| request | req/s | p50 µs | p99 µs | server CPU µs/request | load generator CPU µs/request |");
    println!("|---|---:|---:|---:|---:|---:|");
    let labels = [
        "GET / (unsigned baseline)".to_owned(),
        "GET /session/{sid} (signed, no store read)".to_owned(),
        format!("GET {KV_PATH} (signed)"),
        format!("GET {KV_PATH} (unsigned, open server: the baseline of verification)"),
    ];
    for (t, label) in totals.iter_mut().zip(&labels) {
        let cpu = per(t);
        println!(
            "| {label} | {:.0} | {:.0} | {:.0} | {} | {} |",
            t.rate,
            pct(&mut t.lat, 0.5),
            pct(&mut t.lat, 0.99),
            show(cpu.map(|c| c.0)),
            show(cpu.map(|c| c.1))
        );
    }
    let [index, session, kv, unsigned_kv] = &totals;
    println!(
        "\nsigned GET /kv / unsigned GET /kv throughput: {:.3}× (the cost of verification)",
        kv.rate / unsigned_kv.rate
    );
    println!(
        "signed GET /kv / unsigned GET / throughput: {:.3}×",
        kv.rate / index.rate
    );
    println!(
        "signed GET /session / unsigned GET / throughput: {:.3}× (verification without the store read)",
        session.rate / index.rate
    );
    println!(
        "verification in process (Rest::verify's steps, 1 thread): {:.2} µs, of which signed::verify {:.2} µs; \
         the sessions' lock held for ReplayGuard::admit: p99 {admit_p99_us:.2} µs, longest {admit_max_us:.0} µs",
        verify_ns / 1e3,
        hmac_ns / 1e3
    );
    println!(
        "ReplayGuard::admit after a burst of 10 000 nonces and a quiet 2 × window: the first {burst_first:.1} µs, the longest of the next 10 000 {burst_longest:.1} µs"
    );
    if let (Some((s, c)), Some((s0, _))) = (per(kv), per(index)) {
        let v = verify_ns / 1e3;
        println!(
            "signed GET /kv: server CPU {s:.1} µs/request ({:+.1} over GET /), of which verification {v:.2} µs = {:.3} of the server's CPU, {:.3} of the machine's (server + load generator {:.1} µs)",
            s - s0,
            v / s,
            v / (s + c),
            s + c
        );
    }
    println!("REST logins (scram-sha-256, 1 client, 4096 iterations): {logins:.0}/s");
    println!(
        "REST logins (opaque, 1 client, the client's Argon2id m=19 MiB t=2 included): {opaque_logins:.1}/s"
    );
    Ok(())
}
