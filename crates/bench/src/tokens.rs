//! The token suite: a get_value round trip on a connection logged in with
//! a token (its session holds a keycard, checked on every request) next to
//! the same round trip on a connection without a login, on one open
//! keycard server, alternating, in the same run. The ratio is the cost of
//! carrying a keycard.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keycard_auth::ClientRegistry;
use keycard_client::Client;
use keycard_proto::{encode_into, Msg, Path, Value};
use tokio::io::AsyncWriteExt;

use crate::{start_keycard, Args, Conn};

/// A raw connection logged in with `token`.
/// A `_test` user `benchjoe` made through `admin` (on an open server),
/// and a token for it (an hour).
pub(crate) async fn user_token(admin: &Client) -> anyhow::Result<String> {
    admin
        .set_user(ClientRegistry::make(keycard_auth::TEST, Some("benchjoe"))?.as_ref())
        .await?;
    let made = admin
        .request(
            Msg::new()
                .with("action", "token_create")
                .with("user", "benchjoe")
                .with("ttl", 3600),
        )
        .await?;
    Ok(made
        .get("token")
        .and_then(Value::as_str)
        .context("no token in the reply")?
        .to_owned())
}

async fn token_conn(addr: SocketAddr, token: &str) -> anyhow::Result<Conn> {
    let mut c = Conn::connect(addr).await?;
    let m = Msg::seq(1)
        .with("action", "auth")
        .with("typ", keycard_auth::TOKEN)
        .with("token", token);
    let mut out = Vec::new();
    encode_into(&m.into_value(), &mut out);
    c.stream.write_all(&out).await?;
    loop {
        let v = c.recv().await?;
        if let Some(e) = v.get("error") {
            bail!("token login refused: {e:?}");
        }
        if v.get("state").and_then(Value::as_str) == Some("end") {
            return Ok(c);
        }
    }
}

/// `n` sequential get_value round trips; their latencies.
async fn round_trips(c: &mut Conn, n: usize, seq: &mut i64) -> anyhow::Result<Vec<Duration>> {
    let path = Path::new(vec!["bench".into(), "g".into()]);
    let mut out = Vec::with_capacity(64);
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        *seq += 1;
        out.clear();
        let m = Msg::seq(*seq)
            .with("action", "get_value")
            .with_path("path", &path)
            .with("nchain", 0);
        encode_into(&m.into_value(), &mut out);
        let t = Instant::now();
        c.stream.write_all(&out).await?;
        let v = c.recv().await?;
        times.push(t.elapsed());
        if v.get("value").is_none() {
            bail!("get_value failed: {v:?}");
        }
    }
    Ok(times)
}

/// Requests per second with `depth` get_values in flight for `secs`.
async fn pipelined(c: &mut Conn, depth: usize, secs: f64, seq: &mut i64) -> anyhow::Result<f64> {
    let path = Path::new(vec!["bench".into(), "g".into()]);
    let mut out = Vec::with_capacity(64 * depth);
    let send = |seq: i64, out: &mut Vec<u8>| {
        let m = Msg::seq(seq)
            .with("action", "get_value")
            .with_path("path", &path)
            .with("nchain", 0);
        encode_into(&m.into_value(), out);
    };
    for _ in 0..depth {
        *seq += 1;
        send(*seq, &mut out);
    }
    c.stream.write_all(&out).await?;
    let start = Instant::now();
    let mut done = 0u64;
    let mut inflight = depth;
    while inflight > 0 {
        let v = c.recv().await?;
        if v.get("value").is_none() {
            bail!("get_value failed: {v:?}");
        }
        done += 1;
        inflight -= 1;
        if start.elapsed().as_secs_f64() < secs {
            out.clear();
            *seq += 1;
            send(*seq, &mut out);
            c.stream.write_all(&out).await?;
            inflight += 1;
        }
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

fn summary(times: &mut [Duration]) -> (f64, f64, f64) {
    times.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = times.iter().map(|d| us(*d)).sum::<f64>() / times.len().max(1) as f64;
    let at = |q: f64| us(times[((times.len() as f64 * q) as usize).min(times.len() - 1)]);
    (mean, at(0.5), at(0.99))
}

/// Runs the suite and prints its table.
pub async fn token_suite(args: &Args) -> anyhow::Result<()> {
    let peer = start_keycard(args).await?;
    let addr = peer.addr;
    // Set up on the open server: data, a user, a token for it.
    let admin = Client::connect(addr).await.context("connect")?;
    admin
        .set(&Path::new(vec!["bench".into(), "g".into()]), Value::from(1))
        .await?;
    let token = user_token(&admin).await?;
    let mut anon = Conn::connect(addr).await?;
    let mut tok = token_conn(addr, &token).await?;
    let (mut sa, mut st) = (100i64, 100i64);
    // Warm up both.
    round_trips(&mut anon, 2000, &mut sa).await?;
    round_trips(&mut tok, 2000, &mut st).await?;
    let (mut ta, mut tt) = (Vec::new(), Vec::new());
    for round in 0..10 {
        // Alternate who goes first.
        if round % 2 == 0 {
            ta.extend(round_trips(&mut anon, 2000, &mut sa).await?);
            tt.extend(round_trips(&mut tok, 2000, &mut st).await?);
        } else {
            tt.extend(round_trips(&mut tok, 2000, &mut st).await?);
            ta.extend(round_trips(&mut anon, 2000, &mut sa).await?);
        }
    }
    let (ma, pa50, pa99) = summary(&mut ta);
    let (mt, pt50, pt99) = summary(&mut tt);
    let (mut ra, mut rt) = (0.0, 0.0);
    for round in 0..6 {
        if round % 2 == 0 {
            ra += pipelined(&mut anon, 32, 1.0, &mut sa).await?;
            rt += pipelined(&mut tok, 32, 1.0, &mut st).await?;
        } else {
            rt += pipelined(&mut tok, 32, 1.0, &mut st).await?;
            ra += pipelined(&mut anon, 32, 1.0, &mut sa).await?;
        }
    }
    ra /= 6.0;
    rt /= 6.0;
    println!("\n## get_value with and without a token login (one keycard server)\n");
    println!("| connection | mean RTT µs | p50 µs | p99 µs | pipelined (32) req/s |");
    println!("|---|---:|---:|---:|---:|");
    println!("| no login | {ma:.1} | {pa50:.1} | {pa99:.1} | {ra:.0} |");
    println!("| token login | {mt:.1} | {pt50:.1} | {pt99:.1} | {rt:.0} |");
    println!(
        "\ntoken / no login: mean RTT {:.3}×, p99 {:.3}×, pipelined throughput {:.3}×",
        mt / ma,
        pt99 / pa99,
        rt / ra
    );
    Ok(())
}
