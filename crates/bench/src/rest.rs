//! The REST suite: signed `GET /kv/…` requests per second next to the
//! unsigned `GET /` on the same server in the same run (the ratio is the
//! cost of checking a signature, a nonce and the session's keycard), their
//! p50/p99 latency, and REST logins per second with SCRAM-SHA-256.
//! HTTP/1.1 keep-alive connections, hand-written requests.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use keycard_auth::signed::{self, Request};
use keycard_auth::{client_session_key, ClientMethod, Password, ScramClient, SecretKey, Step};
use keycard_client::Client;
use keycard_proto::{Msg, Path, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{free_port, start_keycard_with, Args};

/// One keep-alive HTTP/1.1 connection.
struct Http {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Http> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Http {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Sends a request and reads the response: (status, body).
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: bench\r\ncontent-length: {}\r\n",
            body.len()
        );
        if let Some(a) = auth {
            head.push_str("authorization: ");
            head.push_str(a);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes()).await?;
        if !body.is_empty() {
            self.stream.write_all(body).await?;
        }
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let status: u16 = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .context("no status")?;
                let len: usize = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .unwrap_or(0);
                let total = end + 4 + len;
                while self.buf.len() < total {
                    self.fill().await?;
                }
                let body = self.buf[end + 4..total].to_vec();
                self.buf.drain(..total);
                return Ok((status, body));
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A REST session: id and key.
struct Session {
    sid: String,
    key: SecretKey,
}

/// One SCRAM login over REST.
async fn login(h: &mut Http, user: &str, pw: &str) -> anyhow::Result<Session> {
    let client = ScramClient::new(user, Password::new(pw));
    let start = client.login(None);
    let first = start
        .request
        .clone()
        .into_value()
        .get("data")
        .and_then(Value::as_str)
        .context("client-first")?
        .to_owned();
    let body =
        serde_json::json!({"method": "scram-sha-256", "user": user, "data": first}).to_string();
    let (status, reply) = h
        .call("POST", "/session/new", None, body.as_bytes())
        .await?;
    if status != 201 {
        bail!(
            "POST /session/new: {status} {}",
            String::from_utf8_lossy(&reply)
        );
    }
    let sid = json_field(&reply, "sid")?;
    let server_first = json_field(&reply, "data")?;
    let exchange = start.exchange.context("SCRAM has an exchange")?;
    let Step::Send(fin, _) =
        exchange.next(&Msg::new().with("data", server_first.as_str()).into_value())
    else {
        bail!("no client-final");
    };
    let client_final = fin
        .into_value()
        .get("data")
        .and_then(Value::as_str)
        .context("client-final")?
        .to_owned();
    let body = serde_json::json!({"data": client_final}).to_string();
    let (status, reply) = h
        .call("PUT", &format!("/session/{sid}"), None, body.as_bytes())
        .await?;
    if status != 303 {
        bail!("PUT /session: {status} {}", String::from_utf8_lossy(&reply));
    }
    let attr = |k: &str| {
        server_first
            .split(',')
            .find_map(|a| a.strip_prefix(k))
            .map(str::to_owned)
    };
    let salt = B64.decode(attr("s=").context("salt")?)?;
    let iterations = attr("i=").context("i")?.parse()?;
    let bare = first.trim_start_matches("n,,");
    let without_proof = client_final.split(",p=").next().unwrap_or_default();
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let key = client_session_key(&Password::new(pw), &salt, iterations, &auth_message)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Session { sid, key })
}

/// A string field of a JSON reply.
fn json_field(body: &[u8], key: &str) -> anyhow::Result<String> {
    let v: serde_json::Value = serde_json::from_slice(body)?;
    v.get(key)
        .and_then(|x| x.as_str())
        .map(str::to_owned)
        .with_context(|| format!("no {key} in the reply"))
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `clients` connections doing `what` back to back for `secs`: requests
/// per second and every latency.
async fn load(
    addr: SocketAddr,
    clients: usize,
    secs: f64,
    signed_as: Option<&[Session]>,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    // Signed headers are made before the clock starts, so the load
    // generator (on the same two cores) spends the same on both kinds of
    // request and the ratio is the server's.
    const PRESIGNED: usize = 40_000;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let headers: Vec<String> = match signed_as {
            None => Vec::new(),
            Some(s) => {
                let req = Request {
                    method: "GET",
                    path: "/kv/bench/x",
                    query: "",
                    body: b"",
                };
                // Round robin over this client's sessions (each remembers
                // at most 10 000 nonces per window).
                let mine: Vec<&Session> = s.iter().skip(c).step_by(clients).collect();
                (0..PRESIGNED)
                    .map(|i| {
                        let one = mine[i % mine.len()];
                        signed::sign(&one.key, &req, &one.sid, now_s(), rand::random()).to_header()
                    })
                    .collect()
            }
        };
        let signed_run = signed_as.is_some();
        tasks.push(tokio::spawn(async move {
            let mut h = Http::connect(addr).await?;
            let mut lat = Vec::new();
            let mut headers = headers.into_iter();
            let start = Instant::now();
            while start.elapsed().as_secs_f64() < secs {
                let t = Instant::now();
                let (status, _) = if signed_run {
                    let Some(auth) = headers.next() else {
                        bail!("ran out of presigned requests; lower --seconds")
                    };
                    h.call("GET", "/kv/bench/x", Some(&auth), b"").await?
                } else {
                    h.call("GET", "/", None, b"").await?
                };
                lat.push(t.elapsed());
                if status != 200 {
                    bail!("status {status}");
                }
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let rate = all.len() as f64 / secs;
    Ok((rate, all))
}

fn pct(lat: &mut [Duration], q: f64) -> f64 {
    lat.sort_unstable();
    let i = ((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1));
    lat.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

/// Runs the suite and prints its table.
pub async fn rest_suite(args: &Args) -> anyhow::Result<()> {
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let peer = start_keycard_with(args, &["--http", &http.to_string()]).await?;
    let admin = Client::connect(peer.addr).await?;
    admin
        .set(&Path::new(vec!["bench".into(), "x".into()]), Value::from(1))
        .await?;
    admin
        .set_user(&ScramClient::new("bench", Password::new("bench-pw")))
        .await?;
    admin
        .request(
            Msg::new()
                .with("action", "set_auth_typ")
                .with("typ", "scram-sha-256"),
        )
        .await?;
    const CLIENTS: usize = 16;
    const SESSIONS_PER_CLIENT: usize = 4;
    let mut h = Http::connect(http).await?;
    // Fresh sessions for every signed run: a session remembers at most
    // 10 000 nonces per time window (then it gets 429s).
    let mut fresh = async || -> anyhow::Result<Vec<Session>> {
        let mut sessions = Vec::new();
        for _ in 0..CLIENTS * SESSIONS_PER_CLIENT {
            sessions.push(login(&mut h, "bench", "bench-pw").await?);
        }
        Ok(sessions)
    };
    let secs = args.seconds.max(1.0);
    // Warm up, then alternate.
    load(http, CLIENTS, 0.5, None).await?;
    load(http, CLIENTS, 0.5, Some(&fresh().await?)).await?;
    let (mut ru, mut rs) = (0.0, 0.0);
    let (mut lu, mut ls) = (Vec::new(), Vec::new());
    for round in 0..4 {
        let sessions = fresh().await?;
        let (a, b) = if round % 2 == 0 {
            let a = load(http, CLIENTS, secs / 2.0, None).await?;
            (a, load(http, CLIENTS, secs / 2.0, Some(&sessions)).await?)
        } else {
            let b = load(http, CLIENTS, secs / 2.0, Some(&sessions)).await?;
            (load(http, CLIENTS, secs / 2.0, None).await?, b)
        };
        ru += a.0 / 4.0;
        rs += b.0 / 4.0;
        lu.extend(a.1);
        ls.extend(b.1);
    }
    // Logins per second (one client, back to back).
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed().as_secs_f64() < secs {
        login(&mut h, "bench", "bench-pw").await?;
        n += 1;
    }
    let logins = f64::from(n) / start.elapsed().as_secs_f64();
    println!(
        "\n## REST: signed GET /kv next to unsigned GET / ({CLIENTS} keep-alive connections)\n"
    );
    println!("| request | req/s | p50 µs | p99 µs |");
    println!("|---|---:|---:|---:|");
    println!(
        "| GET / (unsigned baseline) | {ru:.0} | {:.0} | {:.0} |",
        pct(&mut lu, 0.5),
        pct(&mut lu, 0.99)
    );
    println!(
        "| GET /kv/bench/x (signed) | {rs:.0} | {:.0} | {:.0} |",
        pct(&mut ls, 0.5),
        pct(&mut ls, 0.99)
    );
    println!("\nsigned / unsigned throughput: {:.3}×", rs / ru);
    println!("REST logins (scram-sha-256, 1 client, 4096 iterations): {logins:.0}/s");
    Ok(())
}
