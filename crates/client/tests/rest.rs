//! `keycard_client::rest` against a real server (in this process, on a
//! temp dir and a free port): every typed call, its answers and its
//! errors.

use keycard_auth::{Password, OPAQUE, SCRAM_SHA_256};
use keycard_client::rest::{Credential, Login, Precondition, RestClient, RestError};
use keycard_proto::{ErrorCode, Path};
use keycard_server::{Config, Server, ServerHandle};
use serde_json::json;

/// A server with its REST listener: the REST address, the server and its
/// data directory (both kept while the test runs).
async fn server() -> (String, ServerHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        http: Some("127.0.0.1:0".parse().expect("addr")),
        data: dir.path().to_path_buf(),
        node: "test-node".into(),
        ..Config::default()
    };
    let server = Server::open(config).await.expect("server starts");
    let handle = server.spawn().expect("spawn");
    let http = handle.http_addr.expect("http listener").to_string();
    (http, handle, dir)
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
