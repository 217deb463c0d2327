//! The process test kit: the `keycard` binary as a child process, and a
//! REST server with SCRAM users made over msgpack.
#![allow(dead_code)]

pub mod pki;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keycard_client::Client;
use keycard_proto::Msg;

pub const BIN: &str = env!("CARGO_BIN_EXE_keycard");

/// `keycard serve` as a child process on a free port, killed on drop.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    /// Everything the server has logged so far (its stderr).
    log: Arc<Mutex<String>>,
}

impl Proc {
    /// Starts `keycard serve` on `data` and a free port.
    pub fn start(data: &std::path::Path) -> Proc {
        Self::start_with(data, &[])
    }

    pub fn start_with(data: &std::path::Path, extra: &[&str]) -> Proc {
        Self::start_with_env(data, extra, &[])
    }

    /// [`Proc::start_with`] with these environment variables set.
    pub fn start_with_env(data: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log",
                "info",
                "--data",
            ])
            .arg(data)
            .args(extra)
            .env_remove("KEYCARD_SEAL_KEY")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn keycard");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(String::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                {
                    let mut log = kept.lock().unwrap_or_else(|e| e.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
                if let Some(rest) = line.split("addr=").nth(1) {
                    if let Some(tx) = tx.take() {
                        let addr = rest
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned();
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr.parse().expect("address"),
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                let log = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
                panic!("the server reported no address ({e}; {status:?}); it logged:\n{log}");
            }
        };
        Proc { child, addr, log }
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; tests bind it soon
/// after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The login variables a test must not inherit from whoever runs it.
const LOGIN_VARS: [&str; 16] = [
    "KEYCARD_SEAL_KEY",
    "KEYCARD_TLS_CLIENT_CERT",
    "KEYCARD_TLS_CLIENT_KEY",
    "KEYCARD_TLS_CA",
    "KEYCARD_TLS",
    "KEYCARD_TLS_NAME",
    "KEYCARD_SERVER",
    "KEYCARD_AUTH",
    "KEYCARD_USER",
    "KEYCARD_PASSWORD",
    "KEYCARD_PASSWORD_FILE",
    "KEYCARD_NEW_PASSWORD",
    "KEYCARD_TOKEN",
    "KEYCARD_TOKEN_FILE",
    "KEYCARD_CONFIG",
    "KEYCARD_TOTP_CODE",
];

/// The `keycard` binary with `args` and `env`, none of the caller's login
/// variables, and no stdin (as in a script: no terminal to prompt on).
pub fn bin_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null());
    for var in LOGIN_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd
}

/// Runs the binary: (exit code, stdout, stderr).
pub fn run_bin(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = bin_command(args, env).output().expect("run keycard");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The CLI against the server at `addr` (`-s ADDR` after `args`).
pub fn cli_command(addr: SocketAddr, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = bin_command(args, env);
    cmd.args(["-s", &addr.to_string()]);
    cmd
}

/// Runs the CLI against `addr`: (exit code, stdout, stderr).
pub fn cli(addr: SocketAddr, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = cli_command(addr, args, env).output().expect("run cli");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A binary serving REST on a free port, with SCRAM user `user`/`pw`
/// (granted `caps`) and `scram-sha-256` current; `config` is the TOML it
/// starts with. Returns the server, its HTTP address and its temp dir.
pub async fn rest_server(
    user: &str,
    pw: &str,
    caps: &[&str],
    config: &str,
) -> (Proc, String, tempfile::TempDir) {
    rest_server_with(&[(user, pw)], caps, config).await
}

/// [`rest_server`] with several SCRAM users; the first is granted `caps`.
pub async fn rest_server_with(
    users: &[(&str, &str)],
    caps: &[&str],
    config: &str,
) -> (Proc, String, tempfile::TempDir) {
    rest_server_on(users, caps, config, None).await
}

/// [`rest_server_with`]; with `tls`, the server's config has TLS on (its
/// `[tls]` table in `config`) and the users are made over TLS.
pub async fn rest_server_on(
    users: &[(&str, &str)],
    caps: &[&str],
    config: &str,
    tls: Option<&keycard_client::ClientTls>,
) -> (Proc, String, tempfile::TempDir) {
    use keycard_auth::{Password, ScramClient};
    let port = free_port();
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("keycard.toml");
    std::fs::write(&cfg, config).expect("config");
    let cfg = cfg.to_string_lossy().into_owned();
    let http = format!("127.0.0.1:{port}");
    let server = Proc::start_with(&dir.path().join("data"), &["-c", &cfg, "--http", &http]);
    let c = match tls {
        Some(tls) => Client::connect_tls(server.addr, tls).await,
        None => Client::connect(server.addr).await,
    }
    .expect("connect");
    for (user, pw) in users {
        c.set_user(&ScramClient::new(*user, Password::new(*pw)))
            .await
            .expect("user");
    }
    if let (Some((first, _)), false) = (users.first(), caps.is_empty()) {
        let at = keycard_proto::Path::parse(&format!("auth.scram-sha-256.user.{first}.caps"))
            .expect("path");
        let caps: Vec<keycard_proto::Value> = caps.iter().map(|c| (*c).into()).collect();
        c.request(
            Msg::new()
                .with("action", "set_internal")
                .with_path("path", &at)
                .with(
                    "value",
                    Msg::new().with("caps", keycard_proto::Value::Array(caps)),
                ),
        )
        .await
        .expect("caps");
    }
    c.request(
        Msg::new()
            .with("action", "set_auth_typ")
            .with("typ", "scram-sha-256"),
    )
    .await
    .expect("current");
    (server, http, dir)
}
