//! The process test kit: the `keycard` binary as a child process, and a
//! REST server with SCRAM users made over msgpack.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keycard_client::Client;
use keycard_proto::Msg;

pub const BIN: &str = env!("CARGO_BIN_EXE_keycard");

/// `keycard serve` as a child process on a free port, killed on drop.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Proc {
    /// Starts `keycard serve` on `data` and a free port.
    pub fn start(data: &std::path::Path) -> Proc {
        Self::start_with(data, &[])
    }

    pub fn start_with(data: &std::path::Path, extra: &[&str]) -> Proc {
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
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn keycard");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
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
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("server reports its address")
            .parse()
            .expect("address");
        Proc { child, addr }
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
    use keycard_auth::{Password, ScramClient};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("keycard.toml");
    std::fs::write(&cfg, config).expect("config");
    let cfg = cfg.to_string_lossy().into_owned();
    let http = format!("127.0.0.1:{port}");
    let server = Proc::start_with(&dir.path().join("data"), &["-c", &cfg, "--http", &http]);
    let c = Client::connect(server.addr).await.expect("connect");
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
