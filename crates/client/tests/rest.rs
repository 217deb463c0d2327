//! `keycard_client::rest` against a real server (in this process, on a
//! temp dir and a free port): every typed call, its answers and its
//! errors.

use std::sync::Arc;
use std::time::Duration;

use keycard_auth::{
    totp_at, ClientMethod, ClientRegistry, Password, ScramClient, TotpAlgorithm, TotpClient,
    OPAQUE, ROOT, SCRAM_SHA_256, TOTP,
};
use keycard_client::rest::{Credential, Login, Precondition, RestClient, RestError};
use keycard_client::Client;
use keycard_proto::{ErrorCode, Msg, Path, Value};
use keycard_server::{Clock, Config, ManualClock, Server, ServerHandle};
use serde_json::json;

/// A server with its REST listener: the REST address, the server and its
/// data directory (both kept while the test runs).
async fn server() -> (String, ServerHandle, tempfile::TempDir) {
    let (http, handle, dir, _) = server_on(None).await;
    (http, handle, dir)
}

/// [`server`], on a manual clock when `clock` is given.
async fn server_on(
    clock: Option<Arc<ManualClock>>,
) -> (
    String,
    ServerHandle,
    tempfile::TempDir,
    Option<Arc<ManualClock>>,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        http: Some("127.0.0.1:0".parse().expect("addr")),
        data: dir.path().to_path_buf(),
        node: "test-node".into(),
        ..Config::default()
    };
    if let Some(c) = &clock {
        config.clock = c.clone().into();
    }
    let server = Server::open(config).await.expect("server starts");
    let handle = server.spawn().expect("spawn");
    let http = handle.http_addr.expect("http listener").to_string();
    (http, handle, dir, clock)
}

fn pw(text: &str) -> Password {
    Password::new(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_of_the_rest_client() {
    let (addr, _server, _dir) = server().await;
    let rest = RestClient::new(addr.as_str());
    let index = rest.index().await.expect("GET /");
    assert!(index["methods"].as_array().is_some(), "{index}");

    // Users: the server is open, so unsigned requests may create them.
    let scram = Credential::scram(&pw("alice pw")).expect("verifier");
    let tock = rest
        .create_user(None, "alice", &scram, None)
        .await
        .expect("alice");
    assert!(tock > 0);
    let e = rest
        .create_user(None, "alice", &scram, None)
        .await
        .expect_err("exists");
    assert_eq!(
        (e.status(), e.code()),
        (Some(409), Some(ErrorCode::Conflict))
    );
    rest.create_user(None, "olga", &Credential::Opaque(pw("olga pw")), None)
        .await
        .expect("olga, registered with OPAQUE");

    // Logins with both methods; a wrong password fails alike for both.
    let alice = rest
        .login(Login::scram("alice", pw("alice pw")).expect("first"))
        .await
        .expect("alice logs in");
    let olga = rest
        .login(Login::new(OPAQUE, "olga", pw("olga pw")).expect("KE1"))
        .await
        .expect("olga logs in");
    for (method, user) in [
        (SCRAM_SHA_256, "alice"),
        (OPAQUE, "olga"),
        (SCRAM_SHA_256, "nobody"),
    ] {
        let e = rest
            .login(Login::new(method, user, pw("wrong")).expect("login"))
            .await
            .err()
            .expect("a wrong password");
        assert!(e.is_wrong_credentials(), "{method} {user}: {e}");
    }
    let info = rest.session(&alice).await.expect("GET /session");
    assert_eq!(
        (info.user.as_str(), info.method.as_str()),
        ("alice", SCRAM_SHA_256)
    );
    let info = rest.session(&olga).await.expect("GET /session");
    assert_eq!((info.user.as_str(), info.method.as_str()), ("olga", OPAQUE));
    let until = rest.keep_alive(&alice, Some(60)).await.expect("keep-alive");
    assert!(until > 0);

    // /kv with its preconditions.
    let path = Path::parse("app.greeting").expect("path");
    assert_eq!(rest.get(Some(&alice), &path).await.expect("get"), None);
    let w = rest
        .put(Some(&alice), &path, &json!("hi"), Precondition::IfNoneMatch)
        .await
        .expect("create");
    assert!(w.changed);
    let node = rest
        .get(Some(&alice), &path)
        .await
        .expect("get")
        .expect("a value");
    assert_eq!((node.value, node.tock), (json!("hi"), w.tock));
    let e = rest
        .put(
            Some(&alice),
            &path,
            &json!("again"),
            Precondition::IfNoneMatch,
        )
        .await
        .expect_err("it exists");
    assert_eq!(e.status(), Some(412), "{e}");
    let w2 = rest
        .put(
            Some(&olga),
            &path,
            &json!({"n": [1, 2.5]}),
            Precondition::IfMatch(w.tock),
        )
        .await
        .expect("unchanged since");
    assert!(w2.changed && w2.tock > w.tock);
    let e = rest
        .delete(Some(&alice), &path, Precondition::IfMatch(w.tock))
        .await
        .expect_err("stale");
    assert_eq!(e.status(), Some(412), "{e}");
    let d = rest
        .delete(Some(&alice), &path, Precondition::IfMatch(w2.tock))
        .await
        .expect("delete");
    assert!(d.changed);
    assert_eq!(rest.get(None, &path).await.expect("get"), None);
    // A path element with every kind of character round-trips.
    let odd = Path::parse("app.a:.b:_c/d%").expect("path");
    rest.put(Some(&alice), &odd, &json!(1), Precondition::None)
        .await
        .expect("odd path");
    let node = rest.get(None, &odd).await.expect("get").expect("a value");
    assert_eq!(node.value, json!(1));

    // /user: show, change a password, delete.
    let shown = rest
        .user(None, "alice")
        .await
        .expect("show")
        .expect("alice");
    assert_eq!(shown.name, "alice");
    assert_eq!(shown.methods.len(), 1);
    assert_eq!(shown.methods[0].method, SCRAM_SHA_256);
    assert_eq!(rest.user(None, "nobody").await.expect("show"), None);
    rest.set_user(None, "alice", &Credential::scram(&pw("new pw")).expect("v"))
        .await
        .expect("new password");
    // A changed credential ends the user's sessions.
    let e = rest.session(&alice).await.expect_err("ended");
    assert_eq!(e.code(), Some(ErrorCode::AuthRequired), "{e}");
    let alice = rest
        .login(Login::scram("alice", pw("new pw")).expect("first"))
        .await
        .expect("the new password logs in");
    rest.delete_user(None, "olga").await.expect("delete olga");
    assert_eq!(rest.user(None, "olga").await.expect("show"), None);

    // Logging out ends the session: its next request is refused.
    rest.logout(&alice).await.expect("logout");
    let e = rest.session(&alice).await.expect_err("logged out");
    assert_eq!(e.status(), Some(401), "{e}");
    assert!(matches!(e, RestError::Status { .. }));

    // A client that opens a connection per request says the same.
    let once = RestClient::connection_per_request(addr.as_str());
    assert!(once.index().await.is_ok());
}

/// RFC 4648 base32 (no padding), as a provisioning URI carries the secret.
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

/// The decoded `secret` of a provisioning URI.
fn secret_of(uri: &str) -> Vec<u8> {
    let query = uri.split_once('?').expect("a query").1;
    let secret = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("secret="))
        .expect("a secret");
    base32_decode(secret)
}

/// The factor source that answers every prompt with `code`, recording
/// what it was asked.
fn answering<'a>(
    code: &'a str,
    asked: &'a mut Vec<String>,
) -> impl FnMut(&str) -> Result<Box<dyn ClientMethod>, RestError> + Send + 'a {
    move |name: &str| {
        asked.push(name.to_owned());
        ClientRegistry::make_with_password(name, Some("alice"), Some(Password::new(code)))
            .map_err(|e| RestError::Auth(e.to_string()))
    }
}

/// A user with a password and a one-time code (scram-sha-256, factors
/// `["totp"]`) logs in over REST, asked for the code when prompted; the
/// codes are computed at the server's manual clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_client_answers_factor_prompts() {
    let (addr, server, _dir, clock) = server_on(Some(ManualClock::new())).await;
    let clock = clock.expect("a manual clock");
    // alice: SCRAM, enrolled in totp, her factor list ["totp"]; SCRAM
    // current (root accepted, for the admin).
    let c = Client::connect(server.addr).await.expect("connect");
    let root = ClientRegistry::make(ROOT, None).expect("root");
    c.set_user(root.as_ref()).await.expect("root user");
    c.set_user(&ScramClient::new("alice", pw("alice pw")))
        .await
        .expect("alice");
    c.set_user(&ScramClient::new("bob", pw("bob pw")))
        .await
        .expect("bob, without factors");
    let enrolled = c
        .create_user(&TotpClient {
            user: "alice".into(),
            code: None,
        })
        .await
        .expect("enrolled");
    let uri = enrolled
        .get("uri")
        .and_then(Value::as_str)
        .expect("the provisioning URI");
    let secret = secret_of(uri);
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
    let code = |steps: i64| {
        let now = (clock.now_ms() / 1000).saturating_add_signed(steps * 30);
        totp_at(TotpAlgorithm::Sha1, &secret, now, 30, 6)
    };
    let scram = || Login::scram("alice", pw("alice pw")).expect("first");
    let rest = RestClient::new(addr.as_str());

    // The password alone does not do: the error names the factor.
    let e = rest.login(scram()).await.err().expect("no code");
    assert!(matches!(e, RestError::Auth(_)), "{e}");
    assert!(e.to_string().contains(TOTP), "{e}");

    // Password and code: asked once, for totp; the session works.
    let good = code(0);
    let mut asked = Vec::new();
    let session = rest
        .login_asking(scram(), &mut answering(&good, &mut asked))
        .await
        .expect("password and code");
    assert_eq!(asked, [TOTP]);
    let info = rest.session(&session).await.expect("GET /session");
    assert_eq!(
        (info.user.as_str(), info.method.as_str()),
        ("alice", SCRAM_SHA_256)
    );

    // The same code again: refused as a wrong one is.
    let e = rest
        .login_asking(scram(), &mut answering(&good, &mut Vec::new()))
        .await
        .err()
        .expect("a replayed code");
    assert_eq!(
        (e.status(), e.code()),
        (Some(403), Some(ErrorCode::AuthFailed)),
        "{e}"
    );
    assert!(e.is_wrong_credentials(), "{e}");

    // A wrong code (none of the window's three).
    let window = [code(-1), code(0), code(1)];
    let wrong = ["000000", "000001", "000002", "000003"]
        .into_iter()
        .find(|c| !window.iter().any(|w| w == c))
        .expect("a wrong code");
    let e = rest
        .login_asking(scram(), &mut answering(wrong, &mut Vec::new()))
        .await
        .err()
        .expect("a wrong code");
    assert_eq!(
        (e.status(), e.code()),
        (Some(403), Some(ErrorCode::AuthFailed)),
        "{e}"
    );

    // No answer from the source: its error ends the login.
    let mut none = |name: &str| -> Result<Box<dyn ClientMethod>, RestError> {
        Err(RestError::Auth(format!("no code for {name}")))
    };
    let e = rest
        .login_asking(scram(), &mut none)
        .await
        .err()
        .expect("no answer");
    assert_eq!(e.to_string(), "login failed: no code for totp");
    // An answer for another method than the one prompted.
    let mut other = |_: &str| -> Result<Box<dyn ClientMethod>, RestError> {
        Ok(Box::new(ScramClient::new("alice", pw("alice pw"))))
    };
    let e = rest
        .login_asking(scram(), &mut other)
        .await
        .err()
        .expect("another method");
    assert!(e.to_string().contains("the factor \"totp\""), "{e}");

    // Thirty seconds on, the next step's code logs in.
    clock.advance(Duration::from_secs(30));
    let session = rest
        .login_asking(scram(), &mut answering(&code(0), &mut Vec::new()))
        .await
        .expect("the next step");
    rest.logout(&session).await.expect("logout");

    // A user without factors is never asked.
    let mut never =
        |name: &str| -> Result<Box<dyn ClientMethod>, RestError> { panic!("asked for {name}") };
    rest.login_asking(
        Login::scram("bob", pw("bob pw")).expect("first"),
        &mut never,
    )
    .await
    .expect("bob, without factors");
}
