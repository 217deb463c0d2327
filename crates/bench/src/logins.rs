//! The login suite: logins per second for each password method next to its
//! raw cost measured in the same run, password logins next to DistKV's, and
//! get_value latency while a login storm saturates the machine.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keycard_auth::channel::{seal, ModpClient};
use keycard_auth::{
    ClientMethod, LoginCtx, Method, Opaque, OpaqueClient, Password, PasswordClient, ScramClient,
    Step,
};
use keycard_client::Client;
use keycard_proto::{encode_into, Msg, Path, Value};
use sha2::Digest;
use tokio::io::AsyncWriteExt;

use crate::Conn;

const PW: &str = "bench password 1";

/// A client for `method` logging in as the bench user.
fn method_client(method: &str) -> Box<dyn ClientMethod> {
    let pw = Password::new(PW);
    match method {
        keycard_auth::PASSWORD => Box::new(PasswordClient {
            user: "pw".into(),
            password: pw,
        }),
        keycard_auth::SCRAM_SHA_256 => Box::new(ScramClient::new("sc", pw)),
        _ => Box::new(OpaqueClient {
            user: "op".into(),
            password: pw,
        }),
    }
}

/// Creates the bench users and accepts every password method.
pub async fn setup_users(addr: SocketAddr) -> anyhow::Result<()> {
    let c = Client::connect(addr).await?;
    for m in [
        keycard_auth::PASSWORD,
        keycard_auth::SCRAM_SHA_256,
        keycard_auth::OPAQUE,
    ] {
        c.set_user(method_client(m).as_ref())
            .await
            .with_context(|| format!("create {m} user"))?;
    }
    c.request(
        Msg::new()
            .with("action", "set_auth_typ")
            .with("typ", keycard_auth::PASSWORD)
            .with(
                "accept",
                Value::Array(vec![
                    keycard_auth::SCRAM_SHA_256.into(),
                    keycard_auth::OPAQUE.into(),
                ]),
            ),
    )
    .await?;
    Ok(())
}

/// Runs `clients` tasks each repeating `once` for `secs`; returns
/// completions per second.
async fn rate<F, Fut>(clients: usize, secs: f64, once: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (done, stop, once) = (done.clone(), stop.clone(), once.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                once().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let n = done.load(Ordering::Relaxed);
    let el = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / el)
}

/// Logins per second with `clients` concurrent clients, each login on a
/// fresh connection (agreement and login, as a real client does).
pub async fn login_rate(
    addr: SocketAddr,
    method: &str,
    clients: usize,
    secs: f64,
) -> anyhow::Result<f64> {
    let method = method.to_owned();
    rate(clients, secs, move || {
        let method = method.clone();
        async move {
            let c = Client::connect(addr).await?;
            c.login(method_client(&method).as_ref()).await?;
            Ok(())
        }
    })
    .await
}

/// Connects and agrees a box key with DistKV's finite-field
/// Diffie-Hellman (works against keycard and DistKV alike).
async fn modp_connect(addr: SocketAddr) -> anyhow::Result<(Conn, keycard_auth::SecretKey)> {
    let mut c = Conn::connect(addr).await?;
    let dh = ModpClient::new(1024);
    let m = Msg::seq(1)
        .with("action", "diffie_hellman")
        .with("pubkey", dh.public.clone())
        .with("length", 1024);
    send(&mut c, m).await?;
    let reply = c.recv().await?;
    let server = reply
        .get("pubkey")
        .and_then(Value::as_bin)
        .context("no pubkey")?;
    let key = dh.finish(server).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((c, key))
}

async fn send(c: &mut Conn, m: Msg) -> anyhow::Result<()> {
    let mut out = Vec::new();
    encode_into(&m.into_value(), &mut out);
    c.stream.write_all(&out).await?;
    Ok(())
}

/// The sealed SHA-256 of the bench password.
fn sealed(key: &keycard_auth::SecretKey) -> Vec<u8> {
    seal(key, &sha2::Sha256::digest(PW.as_bytes()))
}

/// DistKV's `password` login over the raw protocol.
async fn distkv_password_login(addr: SocketAddr, user: &str) -> anyhow::Result<()> {
    let (mut c, key) = modp_connect(addr).await?;
    let m = Msg::seq(2)
        .with("action", "auth")
        .with("typ", keycard_auth::PASSWORD)
        .with("ident", user)
        .with(keycard_auth::PASSWORD_FIELD, sealed(&key));
    send(&mut c, m).await?;
    loop {
        let v = c.recv().await?;
        if let Some(e) = v.get("error") {
            bail!("login refused: {e:?}");
        }
        if v.get("seq").and_then(Value::as_i64) == Some(2)
            && (v.get("wseq").is_none() || v.get("state").and_then(Value::as_str) == Some("end"))
        {
            return Ok(());
        }
    }
}

/// Creates a password user over the raw protocol (open server) and makes
/// the method current.
pub async fn distkv_password_user(addr: SocketAddr, user: &str) -> anyhow::Result<()> {
    let (mut c, key) = modp_connect(addr).await?;
    let m = Msg::seq(2)
        .with("action", "auth_set")
        .with("typ", keycard_auth::PASSWORD)
        .with("kind", "user")
        .with("ident", user)
        .with("chain", Value::Nil)
        .with(keycard_auth::PASSWORD_FIELD, sealed(&key));
    send(&mut c, m).await?;
    for step in ["auth_set", "set_auth_typ"] {
        if step == "set_auth_typ" {
            send(
                &mut c,
                Msg::seq(3)
                    .with("action", "set_auth_typ")
                    .with("typ", keycard_auth::PASSWORD),
            )
            .await?;
        }
        let r = c.recv().await?;
        if let Some(e) = r.get("error") {
            bail!("{step} refused: {e:?}");
        }
    }
    Ok(())
}

/// DistKV-protocol password logins per second.
pub async fn distkv_login_rate(
    addr: SocketAddr,
    user: &str,
    clients: usize,
    secs: f64,
) -> anyhow::Result<f64> {
    let user = user.to_owned();
    rate(clients, secs, move || {
        let user = user.clone();
        async move { distkv_password_login(addr, &user).await }
    })
    .await
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Runs `op` on every core for `secs`; returns operations per second.
fn on_all_cores(secs: f64, op: impl Fn() + Send + Sync + 'static) -> f64 {
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads())
        .map(|_| {
            let (op, done, stop) = (op.clone(), done.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    op();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let n = done.load(Ordering::Relaxed);
    let el = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    n as f64 / el
}

/// Raw Argon2id verifications per second on all cores (the server's
/// default parameters).
pub fn raw_argon2(secs: f64) -> anyhow::Result<f64> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    use argon2::PasswordVerifier;
    let hasher = argon2::Argon2::default();
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let phc = hasher
        .hash_password(b"0123456789abcdef0123456789abcdef", &salt)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_string();
    Ok(on_all_cores(secs, move || {
        if let Ok(h) = argon2::password_hash::PasswordHash::new(&phc) {
            let _ =
                argon2::Argon2::default().verify_password(b"0123456789abcdef0123456789abcdef", &h);
        }
    }))
}

/// Raw OPAQUE logins per second on all cores, client and server in one
/// process (the client's Argon2id included: it runs on the same machine in
/// the networked figure too).
pub fn raw_opaque(secs: f64) -> anyhow::Result<f64> {
    let server = Arc::new(
        Opaque::new(&keycard_auth::new_server_setup()).map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let client = OpaqueClient {
        user: "op".into(),
        password: Password::new(PW),
    };
    // Register once.
    let reg = client.set_record(None);
    let mut step = server.set_record(
        &LoginCtx::default(),
        &keycard_auth::USER,
        "op",
        &reg.request.into_value(),
    );
    let mut cx = reg.exchange.context("registration dialogue")?;
    let record = loop {
        match step {
            Step::Send(m, next) => match cx.next(&m.into_value()) {
                Step::Send(a, c) => {
                    cx = c;
                    step = next.next(&a.into_value());
                }
                _ => bail!("registration failed"),
            },
            Step::Done(r) => break r,
            _ => bail!("registration failed"),
        }
    };
    Ok(on_all_cores(secs, move || {
        let c = OpaqueClient {
            user: "op".into(),
            password: Password::new(PW),
        };
        let start = c.login(None);
        let Some(mut cx) = start.exchange else { return };
        let mut step = server.login(
            &LoginCtx::default(),
            "op",
            &start.request.into_value(),
            Some(&record),
        );
        loop {
            match step {
                Step::Send(m, next) => match cx.next(&m.into_value()) {
                    Step::Send(a, c) => {
                        cx = c;
                        step = next.next(&a.into_value());
                    }
                    _ => return,
                },
                _ => return,
            }
        }
    }))
}

/// get_value round-trip latencies from one client for `secs`.
pub async fn get_latencies(addr: SocketAddr, secs: f64) -> anyhow::Result<Vec<Duration>> {
    let c = Client::connect(addr).await?;
    let m = method_client(keycard_auth::PASSWORD);
    c.login(m.as_ref()).await?;
    let path = Path::parse("bench.g").map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        let t = Instant::now();
        c.get(&path).await?;
        out.push(t.elapsed());
    }
    Ok(out)
}

/// The p-th percentile.
pub fn percentile(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}
