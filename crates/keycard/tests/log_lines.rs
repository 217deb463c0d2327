//! The server's log against the binary: what a client sends cannot forge
//! log lines (found in review). Every field value and message is written
//! with its control characters escaped, and client strings are quoted.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keycard_auth::{Password, ScramClient};
use keycard_client::Client;
use keycard_proto::Msg;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_keycard");

/// `keycard serve` whose stderr is kept, line by line; killed on drop.
struct Logged {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Logged {
    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits (briefly) until some line contains `what`.
    fn wait_for(&self, what: &str) -> Vec<String> {
        let start = Instant::now();
        loop {
            let lines = self.lines();
            if lines.iter().any(|l| l.contains(what)) || start.elapsed() > Duration::from_secs(10) {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Starts the binary on a temp dir with `--http` on a free port; returns
/// it, the msgpack and HTTP addresses.
fn serve(dir: &std::path::Path) -> (Logged, std::net::SocketAddr, std::net::SocketAddr) {
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log",
            "info",
            "--http",
        ])
        .arg(http.to_string())
        .arg("--data")
        .arg(dir)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn keycard");
    let stderr = child.stderr.take().expect("stderr");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let kept = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            kept.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    });
    let logged = Logged { child, lines };
    let listening = logged.wait_for("REST API listening");
    let addr = listening
        .iter()
        .find_map(|l| l.split("addr=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("the server reports its address: {listening:?}"));
    (logged, addr, http)
}

/// One HTTP/1.1 request; the status and the body.
async fn call(
    http: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut s = tokio::net::TcpStream::connect(http).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: k\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or_default();
    (status, body)
}

/// A log line as the server writes them, to be forged.
const FORGED: &str =
    "2030-01-01T00:00:00.000000Z  INFO keycard::audit: login conn=1 user=root outcome=\"success\" FORGED";

/// A user name with a newline (and a carriage return, and the other line
/// breaks a log viewer may honour) followed by a forged log line: failing
/// to log in with it, over msgpack and over REST, leaves no forged line in
/// the server's stderr; the name stays inside its event's line, escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_name_cannot_forge_log_lines() {
    let dir = tempfile::tempdir().expect("tmp");
    let (server, addr, http) = serve(&dir.path().join("data"));
    let c = Client::connect(addr).await.expect("connect");
    c.set_user(&ScramClient::new("alice", Password::new("pw")))
        .await
        .expect("alice");
    c.request(
        Msg::new()
            .with("action", "set_auth_typ")
            .with("typ", "scram-sha-256"),
    )
    .await
    .expect("current");
    let names: Vec<String> = ["\n", "\r\n", "\r", "\u{85}", "\u{2028}", "\u{1b}[2K\r"]
        .iter()
        .enumerate()
        .map(|(i, brk)| format!("eve{i}{brk}{FORGED}"))
        .collect();
    for name in &names {
        // msgpack: a SCRAM login as that name (unknown: refused).
        let c = Client::connect(addr).await.expect("connect");
        let refused = c
            .login(&ScramClient::new(name.as_str(), Password::new("guess")))
            .await;
        assert!(refused.is_err(), "{name:?} logged in");
        // REST: the same name starts a login whose proof is wrong.
        let body = serde_json::json!({
            "method": "scram-sha-256", "user": name, "data": format!("n,,n={},r=abcdefghijklmnop", name.replace('=', "=3D").replace(',', "=2C")),
        });
        let (status, r) = call(http, "POST", "/session/new", &body.to_string()).await;
        assert_eq!(status, 201, "{name:?}: {r}");
        let sid = r["sid"].as_str().expect("sid");
        let proof = serde_json::json!({"data": "c=biws,r=abcdefghijklmnopXXXX,p=AAAA"});
        let (status, r) = call(http, "PUT", &format!("/session/{sid}"), &proof.to_string()).await;
        assert!(status == 400 || status == 403, "{name:?}: {status} {r}");
    }
    let lines = server.wait_for("eve5");
    for marker in ["eve0", "eve1", "eve2", "eve3", "eve4", "eve5"] {
        assert!(
            lines.iter().any(|l| l.contains(marker)),
            "the attempt {marker} was logged:\n{}",
            lines.join("\n")
        );
    }
    for line in &lines {
        // A real line starts with the server's timestamp, not the forged
        // one; the forged text is only ever inside a quoted field.
        assert!(!line.starts_with("2030-"), "a forged line:\n{line}");
        assert!(
            !line.contains(FORGED) || line.contains("eve"),
            "the forged text left its event's line:\n{line}"
        );
        assert!(
            !line
                .chars()
                .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}'),
            "a control character in the log:\n{line:?}"
        );
    }
    // The names are there, escaped and quoted: readable, not obeyed.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("user=\"eve0\\n2030-01-01T00:00:00.000000Z  INFO")),
        "{}",
        lines.join("\n")
    );
}
