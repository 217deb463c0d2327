//! TOTP as a second factor, end to end: a SCRAM user enrolled in `totp`
//! through `auth_set` (the secret read back from the provisioning URI,
//! as an authenticator app would) whose factor list is `["totp"]` logs
//! in with password and code, over msgpack and REST, on the server's
//! manual clock. A wrong code, a code two steps old and a code used
//! once already (`last_step`, written back by the first login) fail as
//! `auth_failed`, each counted once by the throttle; two logins racing
//! with one code let exactly one in; pyotp's codes are accepted.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{advance, start_with_clock, TestServer};
use keycard_auth::bouncer::{KeycardId, State};
use keycard_auth::{
    totp_at, ClientRegistry, Password, ScramClient, TotpAlgorithm, TotpClient, ROOT, SCRAM_SHA_256,
    TOTP,
};
use keycard_client::rest::{Login, RestClient, RestError, Session};
use keycard_client::{Client, ClientError};
use keycard_proto::{ErrorCode, Msg, Path, Value};
use keycard_server::{Clock, ManualClock};

const PASSWORD: &str = "correct horse";

/// RFC 4648 base32 (no padding), as the URI carries the secret.
fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut out, mut buffer, mut bits) = (Vec::new(), 0u32, 0u32);
    for c in text.bytes() {
        let v = ALPHABET
            .iter()
            .position(|a| *a == c)
            .expect("a base32 digit") as u32;
        buffer = (buffer << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    out
}

/// The `secret` parameter of a provisioning URI, decoded.
fn secret_of(uri: &str) -> Vec<u8> {
    let query = uri.split_once('?').expect("a query").1;
    let secret = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("secret="))
        .expect("a secret");
    base32_decode(secret)
}

/// The server under test, its clock, and alice's provisioning URI.
struct Fixture {
    s: TestServer,
    clock: Arc<ManualClock>,
    uri: String,
    secret: Vec<u8>,
}

impl Fixture {
    /// The code for the step `steps` away from the server clock's.
    fn code(&self, steps: i64) -> String {
        let now = (self.clock.now_ms() / 1000).saturating_add_signed(steps * 30);
        totp_at(TotpAlgorithm::Sha1, &self.secret, now, 30, 6)
    }

    /// alice's failures from this address, as the throttle counts them.
    fn failures(&self) -> u32 {
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        self.s
            .handle
            .state
            .throttle
            .counters("alice", ip)
            .pair
            .failures
    }
}

/// SCRAM current (`root` accepted, for the admin), alice a SCRAM user
/// enrolled in `totp` by `auth_set`, her factor list `["totp"]`; the
/// REST listener on; the server on a manual clock.
async fn fixture() -> Fixture {
    let (s, clock) = start_with_clock(|c| {
        c.http = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let c = Client::connect(s.addr()).await.expect("connect");
    let root = ClientRegistry::make(ROOT, None).expect("root");
    c.set_user(root.as_ref()).await.expect("root user");
    c.set_user(&ScramClient::new("alice", Password::new(PASSWORD)))
        .await
        .expect("alice");
    let reply = c
        .create_user(&TotpClient {
            user: "alice".into(),
            code: None,
        })
        .await
        .expect("enrolled");
    let uri = reply
        .get("uri")
        .and_then(Value::as_str)
        .expect("the provisioning URI")
        .to_owned();
    let secret = secret_of(&uri);
    assert_eq!(secret.len(), 20);
    c.request(
        Msg::new()
            .with("action", "set_internal")
            .with_path(
                "path",
                &Path::parse("auth.scram-sha-256.user.alice.factors").expect("path"),
            )
            .with(
                "value",
                Msg::new().with("factors", Value::Array(vec![TOTP.into()])),
            ),
    )
    .await
    .expect("factors");
    c.request(
        Msg::new()
            .with("action", "set_auth_typ")
            .with("typ", SCRAM_SHA_256)
            .with("accept", Value::Array(vec![ROOT.into()])),
    )
    .await
    .expect("current");
    Fixture {
        s,
        clock,
        uri,
        secret,
    }
}

/// A msgpack login as alice with `password` and then `code`.
async fn login(f: &Fixture, password: &str, code: &str) -> Result<Client, ClientError> {
    let c = Client::connect(f.s.addr()).await.expect("connect");
    let scram = ScramClient::new("alice", Password::new(password));
    let totp = TotpClient {
        user: "alice".into(),
        code: Some(Password::new(code)),
    };
    c.login_with_factors(&scram, &[&totp]).await.map(|()| c)
}

async fn user_of(c: &Client) -> Option<String> {
    let who = c
        .request(Msg::new().with("action", "whoami"))
        .await
        .expect("whoami");
    who.get("user").and_then(Value::as_str).map(str::to_owned)
}

/// A login that must be refused with `auth_failed`, counted once.
async fn refused(f: &Fixture, code: &str, why: &str) {
    let before = f.failures();
    let e = login(f, PASSWORD, code)
        .await
        .err()
        .unwrap_or_else(|| panic!("{why}: logged in"));
    assert_eq!(e.code(), Some(ErrorCode::AuthFailed), "{why}: {e}");
    assert_eq!(f.failures(), before + 1, "{why}: counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_and_code_over_msgpack() {
    let f = fixture().await;
    // The password alone does not do: the server asks for the code.
    let c = Client::connect(f.s.addr()).await.expect("connect");
    let e = c
        .login(&ScramClient::new("alice", Password::new(PASSWORD)))
        .await
        .expect_err("no code");
    assert!(e.to_string().contains("totp"), "{e}");
    // Wrong codes, before any was used: a wrong one, one two steps old.
    let good = f.code(0);
    let wrong = if good == "000000" { "000001" } else { "000000" };
    refused(&f, wrong, "a wrong code").await;
    refused(&f, &f.code(-2), "a code two steps old").await;
    // The right code, at the server's time.
    let c = login(&f, PASSWORD, &good).await.expect("password and code");
    assert_eq!(user_of(&c).await.as_deref(), Some("alice"));
    assert_eq!(f.failures(), 0, "a success clears the pair's counter");
    // The same code again: the first login wrote its step back.
    refused(&f, &good, "the same code a second time").await;
    // A wrong password with the right next code fails before the code.
    let before = f.failures();
    let e = login(&f, "wrong", &f.code(1)).await.err().expect("refused");
    assert_eq!(e.code(), Some(ErrorCode::AuthFailed), "{e}");
    assert_eq!(f.failures(), before + 1);
    // Thirty seconds on, the next step's code works.
    advance(&f.s, &f.clock, Duration::from_secs(30));
    let next = f.code(0);
    let c = login(&f, PASSWORD, &next).await.expect("the next step");
    assert_eq!(user_of(&c).await.as_deref(), Some("alice"));
    refused(&f, &next, "the next step's code a second time").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_logins_racing_with_one_code_let_one_in() {
    let f = fixture().await;
    let code = f.code(0);
    let before = f.failures();
    let (a, b) = tokio::join!(login(&f, PASSWORD, &code), login(&f, PASSWORD, &code));
    let (won, lost) = match (a, b) {
        (Ok(c), Err(e)) | (Err(e), Ok(c)) => (c, e),
        (a, b) => panic!("exactly one wins: {:?} {:?}", a.err(), b.err()),
    };
    assert_eq!(user_of(&won).await.as_deref(), Some("alice"));
    assert_eq!(lost.code(), Some(ErrorCode::AuthFailed), "{lost}");
    // The winner's success cleared the pair; the loser counted once,
    // whichever settled first.
    assert!(f.failures() <= before + 1);
}

/// A REST login as alice through `keycard_client::rest`: `password`,
/// then `code` when the server prompts. Returns the session id, the
/// keycard's state when the prompt came (outer `None`: no prompt), and how the
/// login ended. A prompt reaches the source only once the client checked
/// the server's SCRAM signature in it.
async fn rest_login(
    f: &Fixture,
    password: &str,
    code: &str,
) -> (String, Option<Option<State>>, Result<Session, RestError>) {
    let rest = RestClient::connection_per_request(f.s.handle.http_addr.expect("http").to_string());
    let challenged = rest
        .begin(Login::scram("alice", Password::new(password)).expect("first"))
        .await
        .expect("begin");
    let sid = challenged.sid().to_owned();
    let mut prompted = None;
    let mut factor = |name: &str| {
        assert_eq!(prompted, None, "prompted twice");
        assert_eq!(name, TOTP);
        prompted = Some(card(f, &sid).map(|c| c.state));
        ClientRegistry::make_with_password(name, Some("alice"), Some(Password::new(code)))
            .map_err(|e| RestError::Auth(e.to_string()))
    };
    let r = rest.prove_asking(challenged, &mut factor).await;
    (sid.clone(), prompted, r)
}

/// The keycard of the REST session `sid`.
fn card(f: &Fixture, sid: &str) -> Option<keycard_auth::bouncer::Keycard> {
    let id = KeycardId::parse(sid).expect("sid");
    f.s.handle.state.bouncer.table().show(id)
}

/// A refused REST login's status and body.
fn refusal_of(r: Result<Session, RestError>) -> (u16, serde_json::Value) {
    match r {
        Err(RestError::Status { response, .. }) => (
            response.status,
            response.json().unwrap_or(serde_json::Value::Null),
        ),
        Err(e) => panic!("not the server's refusal: {e}"),
        Ok(_) => panic!("logged in"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_and_code_over_rest() {
    let f = fixture().await;
    // What a wrong password gets: refused before any prompt.
    let (_, prompted, r) = rest_login(&f, "wrong", "000000").await;
    assert_eq!(prompted, None, "a wrong password is never prompted");
    let refusal = refusal_of(r);
    assert_eq!(refusal.1["code"], "auth_failed", "{refusal:?}");
    // A wrong code gets the same, counted once.
    let good = f.code(0);
    let wrong = if good == "000000" { "000001" } else { "000000" };
    for (code, why) in [(wrong.to_owned(), "wrong"), (f.code(-2), "two steps old")] {
        let before = f.failures();
        let (at, prompted, r) = rest_login(&f, PASSWORD, &code).await;
        assert_eq!(prompted, Some(Some(State::Challenged)), "{why}: prompted");
        assert_eq!(refusal_of(r), refusal, "{why}");
        assert_eq!(f.failures(), before + 1, "{why}: counted once");
        assert!(card(&f, &at).is_none_or(|c| c.state != State::Authenticated));
    }
    // The right code.
    let (at, prompted, r) = rest_login(&f, PASSWORD, &good).await;
    assert_eq!(prompted, Some(Some(State::Challenged)));
    r.expect("303");
    let c = card(&f, &at).expect("keycard");
    assert_eq!((c.state, &*c.user), (State::Authenticated, "alice"));
    // Replayed in another session: refused.
    let before = f.failures();
    let (_, prompted, r) = rest_login(&f, PASSWORD, &good).await;
    assert_eq!(prompted, Some(Some(State::Challenged)), "replay: prompted");
    assert_eq!(refusal_of(r), refusal, "replay");
    assert_eq!(f.failures(), before + 1);
    // The next step, thirty seconds on.
    advance(&f.s, &f.clock, Duration::from_secs(30));
    let (_, prompted, r) = rest_login(&f, PASSWORD, &f.code(0)).await;
    assert_eq!(prompted, Some(Some(State::Challenged)));
    r.expect("303");
}

/// The venv python with pyotp, or `None` when the peer tests are
/// skipped (as crates/auth/tests/pyotp.rs finds it).
fn python() -> Option<String> {
    if std::env::var_os("KEYCARD_SKIP_PEERS").is_some() {
        eprintln!("SKIPPED: KEYCARD_SKIP_PEERS is set");
        return None;
    }
    Some(std::env::var("KEYCARD_DISTKV_PYTHON").expect(
        "KEYCARD_DISTKV_PYTHON must point at a python with pyotp installed: run the tests with \
         scripts/test.sh (it creates the venv), or set KEYCARD_SKIP_PEERS=1 to skip",
    ))
}

/// pyotp's code for Unix time `t`, from the provisioning URI. The
/// compatibility script checks pyotp agrees with keycard at `t - 17`,
/// then answers its own code for `t`.
fn pyotp_code(python: &str, uri: &str, secret: &[u8], t: u64) -> String {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/compat/totp_pyotp.py"
    );
    let before = t - 17;
    let ours = totp_at(TotpAlgorithm::Sha1, secret, before, 30, 6);
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(uri)
        .arg(format!("{before}:{ours}"))
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "pyotp on {uri}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{t}:")))
        .expect("pyotp's code")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyotp_makes_the_code_for_the_server_clock() {
    let Some(python) = python() else { return };
    let f = fixture().await;
    for round in 0..2 {
        let t = f.clock.now_ms() / 1000;
        let code = pyotp_code(&python, &f.uri, &f.secret, t);
        assert_eq!(code, f.code(0), "round {round}");
        let c = login(&f, PASSWORD, &code).await.expect("pyotp's code");
        assert_eq!(user_of(&c).await.as_deref(), Some("alice"));
        refused(&f, &code, "pyotp's code a second time").await;
        advance(&f.s, &f.clock, Duration::from_secs(30));
    }
}

/// The client asks for a factor only when the server prompts for it
/// (`Client::login_asking`, what the CLI uses to read a code then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_asks_for_the_code_when_prompted() {
    let f = fixture().await;
    let code = f.code(0);
    let mut asked = Vec::new();
    let c = Client::connect(f.s.addr()).await.expect("connect");
    let mut factor = |name: &str| {
        asked.push(name.to_owned());
        ClientRegistry::make_with_password(name, Some("alice"), Some(Password::new(&code)))
            .map_err(|e| ClientError::Auth(e.to_string()))
    };
    c.login_asking(
        &ScramClient::new("alice", Password::new(PASSWORD)),
        &mut factor,
    )
    .await
    .expect("asked, then in");
    assert_eq!(asked, [TOTP]);
    assert_eq!(user_of(&c).await.as_deref(), Some("alice"));
    // A user without factors is never asked.
    let admin = Client::connect(f.s.addr()).await.expect("connect");
    let mut never = |name: &str| -> Result<Box<dyn keycard_auth::ClientMethod>, ClientError> {
        panic!("asked for {name}")
    };
    let root = ClientRegistry::make(ROOT, None).expect("root");
    admin
        .login_asking(root.as_ref(), &mut never)
        .await
        .expect("root");
}
