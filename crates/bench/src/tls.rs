//! The tls suite: the same workloads against two keycard servers of the
//! same binary, started side by side, one plain and one with TLS (a
//! certificate made here with rcgen). get_value with 1 and 16 clients,
//! one in flight or pipelined; new connections per second (connect, TLS
//! handshake, greeting, close), which is the handshake's cost; and the
//! server's memory per idle connection.
//!
//! [`Conn::connect`](crate::Conn) goes over TLS to the servers this
//! suite registered with [`register`], so every workload of `main.rs`
//! runs unchanged over either.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use keycard_client::ClientTls;

use crate::{
    free_port, print_table_with, setup, start_keycard_with, throughput, Args, Conn, Op, Peer, Row,
};

/// The servers reached over TLS, and how.
fn registry() -> &'static Mutex<HashMap<SocketAddr, ClientTls>> {
    static TLS: OnceLock<Mutex<HashMap<SocketAddr, ClientTls>>> = OnceLock::new();
    TLS.get_or_init(Default::default)
}

/// Connections to `addr` go over TLS with `tls` from now on.
pub(crate) fn register(addr: SocketAddr, tls: ClientTls) {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(addr, tls);
}

/// How to reach `addr` over TLS, if it was registered.
pub(crate) fn client_for(addr: SocketAddr) -> Option<ClientTls> {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&addr)
        .cloned()
}

/// A CA and a server certificate for 127.0.0.1, written into `dir`: the
/// certificate (chain), the key, and a client trusting the CA.
fn certificates(dir: &std::path::Path) -> anyhow::Result<(String, String, ClientTls)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    std::fs::create_dir_all(dir)?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])?.signed_by(&key, &ca)?;
    let cert_file = dir.join("server.pem");
    let key_file = dir.join("server.key");
    std::fs::write(&cert_file, format!("{}{}", leaf.pem(), ca.pem()))?;
    std::fs::write(&key_file, key.serialize_pem())?;
    let client = ClientTls::with_roots(vec![ca.der().clone()], "127.0.0.1")?;
    let text = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    Ok((text(cert_file), text(key_file), client))
}

/// Connections per second: each connects, waits for the greeting (over
/// TLS, after the handshake) and closes; `clients` at once.
async fn connections(addr: SocketAddr, clients: usize, secs: f64) -> anyhow::Result<f64> {
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop {
                drop(Conn::connect(addr).await?);
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// The server's resident memory, KiB.
fn rss_kib(peer: &Peer) -> anyhow::Result<u64> {
    let pid = peer
        .child
        .as_ref()
        .context("the tls suite measures memory of a server it starts")?
        .id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("VmRSS")
}

/// What `n` idle connections (greeting read) add to the server, KiB each.
async fn idle_kib(peer: &Peer, n: usize) -> anyhow::Result<f64> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(peer)?;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(Conn::connect(peer.addr).await?);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_kib(peer)?;
    drop(held);
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

pub(crate) async fn tls_suite(args: &Args) -> anyhow::Result<()> {
    if args.keycard_addr.is_some() {
        anyhow::bail!("the tls suite starts its own two servers: leave out --keycard-addr");
    }
    let dir = std::env::temp_dir().join(format!("keycard-bench-tls-{}", std::process::id()));
    let (cert, key, client) = certificates(&dir)?;
    // Enough connections from one address for the memory measurement,
    // and signed requests for the REST rows.
    let caps = [
        "--max-connections-per-address",
        "5000",
        "--http-session-nonces",
        "100000000",
    ];
    let plain_http = format!("127.0.0.1:{}", free_port()?);
    let tls_http = format!("127.0.0.1:{}", free_port()?);
    let plain =
        start_keycard_with(args, &[&caps[..], &["--http", &plain_http]].concat(), None).await?;
    let tls = start_keycard_with(
        args,
        &[
            &caps[..],
            &["--http", &tls_http, "--tls-cert", &cert, "--tls-key", &key],
        ]
        .concat(),
        Some(client.clone()),
    )
    .await?;
    let _ = std::fs::remove_dir_all(&dir);
    let peers = [&tls, &plain];
    for p in peers {
        setup(p.addr).await?;
    }
    println!("### TLS against plain TCP (the same keycard binary, same run)\n");
    let mut rows = Vec::new();
    for (name, clients, depth) in [
        ("get_value, 1 client, 1 in flight (ops/s)", 1, 1),
        ("get_value, 16 clients, 1 in flight each (ops/s)", 16, 1),
        ("get_value, 16 clients, 16 pipelined each (ops/s)", 16, 16),
        ("get_value, 1 client, 32 pipelined (ops/s)", 1, 32),
    ] {
        let mut results = Vec::new();
        for p in peers {
            results.push(throughput(p.addr, Op::Get, clients, depth, args.seconds).await?);
        }
        eprintln!("{name}: tls {:.0}, plain {:.0}", results[0], results[1]);
        rows.push(Row {
            name: name.into(),
            results,
        });
    }
    for (name, clients) in [
        (
            "new connections/s, 1 client (connect, handshake, greeting, close)",
            1,
        ),
        ("new connections/s, 16 clients", 16),
    ] {
        let mut results = Vec::new();
        for p in peers {
            results.push(connections(p.addr, clients, args.seconds).await?);
        }
        eprintln!("{name}: tls {:.0}, plain {:.0}", results[0], results[1]);
        rows.push(Row {
            name: name.into(),
            results,
        });
    }
    let mut results = Vec::new();
    for p in peers {
        results.push(idle_kib(p, 1000).await?);
    }
    rows.push(Row {
        name: "server memory per idle connection, 1000 held (KiB)".into(),
        results,
    });

    // Logins required from here: a SCRAM user on both, scram-sha-256
    // current. Over TLS the client binds (scram-sha-256-plus).
    for (p, tls) in [(&tls, Some(&client)), (&plain, None)] {
        require_scram(p.addr, tls, &[]).await?;
    }
    let mut results = Vec::new();
    for (p, tls) in [(&tls, Some(&client)), (&plain, None)] {
        results.push(scram_logins(p.addr, tls, args.seconds).await?);
    }
    eprintln!(
        "logins: tls (-plus) {:.0}, plain {:.0}",
        results[0], results[1]
    );
    rows.push(Row {
        name: "SCRAM logins/s, 1 client, a new connection each (TLS: scram-sha-256-plus)".into(),
        results,
    });
    let mut results = Vec::new();
    for (http, tls) in [(&tls_http, Some(&client)), (&plain_http, None)] {
        results.push(signed_gets(http, tls, args.seconds).await?);
    }
    eprintln!("REST: tls {:.0}, plain {:.0}", results[0], results[1]);
    rows.push(Row {
        name: "signed REST GET /kv, 1 client, kept alive (req/s)".into(),
        results,
    });
    print_table_with(&["keycard TLS", "keycard plain"], "TLS / plain", rows);
    Ok(())
}

/// The bench user's password.
pub(crate) const PW: &str = "bench password";

/// Creates SCRAM user `bench`, granted `caps`, and makes scram-sha-256
/// current.
pub(crate) async fn require_scram(
    addr: SocketAddr,
    tls: Option<&ClientTls>,
    caps: &[&str],
) -> anyhow::Result<()> {
    use keycard_auth::{Password, ScramClient, SCRAM_SHA_256};
    use keycard_proto::{Elem, Msg, Path, Value};
    let c = match tls {
        Some(tls) => keycard_client::Client::connect_tls(addr, tls).await?,
        None => keycard_client::Client::connect(addr).await?,
    };
    c.set_user(&ScramClient::new("bench", Password::new(PW)))
        .await?;
    if !caps.is_empty() {
        let at = Path::new(
            ["auth", SCRAM_SHA_256, "user", "bench", "caps"]
                .into_iter()
                .map(Elem::from)
                .collect(),
        );
        let caps = Value::Array(caps.iter().map(|c| Value::from(*c)).collect());
        c.request(
            Msg::new()
                .with("action", "set_internal")
                .with_path("path", &at)
                .with("value", Msg::new().with("caps", caps).into_value()),
        )
        .await?;
    }
    c.request(
        Msg::new()
            .with("action", "set_auth_typ")
            .with("typ", SCRAM_SHA_256),
    )
    .await?;
    Ok(())
}

/// Logins per second: each on a new connection (over TLS: the handshake,
/// then scram-sha-256-plus bound with tls-exporter, as keycard's CLI
/// does).
pub(crate) async fn scram_logins(
    addr: SocketAddr,
    tls: Option<&ClientTls>,
    secs: f64,
) -> anyhow::Result<f64> {
    use keycard_auth::{ClientMethod, Password, ScramClient};
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let mut m = ScramClient::new("bench", Password::new(PW));
        let c = match tls {
            Some(tls) => {
                let c = keycard_client::Client::connect_tls(addr, tls).await?;
                let binding = c.channel_binding().context("no binding data")?;
                anyhow::ensure!(m.bind(binding, true), "the login did not bind");
                c
            }
            None => keycard_client::Client::connect(addr).await?,
        };
        c.login(&m).await?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Signed `GET /kv/bench/g` per second from one REST client on one
/// kept-alive connection (HTTPS with `tls`), after a SCRAM login.
async fn signed_gets(http: &str, tls: Option<&ClientTls>, secs: f64) -> anyhow::Result<f64> {
    use keycard_client::rest::{Login, RestClient};
    let rest = match tls {
        Some(tls) => RestClient::new(http).with_tls(tls.clone()),
        None => RestClient::new(http),
    };
    let session = rest
        .login(Login::scram("bench", keycard_auth::Password::new(PW))?)
        .await?;
    let at = keycard_proto::Path::new(vec!["bench".into(), "g".into()]);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        rest.get(Some(&session), &at)
            .await?
            .context("the bench value")?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}
