//! Logins that need several factors (`(…record, "factors")`), and
//! methods that write their record back on success: over msgpack and
//! REST, with the hostile cases (a skipped, repeated or foreign factor,
//! two answers racing for one record).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::rest::{http, scram_begin};
use common::{code, req, start_with, Raw, TestServer};
use keycard_auth::bouncer::{KeycardId, State};
use keycard_auth::{
    AuthError, ClientLogin, ClientMethod, Kind, LoginCtx, Method, MethodInfo, Payload, RestSet,
    Step, Verdict, USER,
};
use keycard_client::Client;
use keycard_proto::{Msg, Path, Value};

/// A test method that writes back: the record counts the logins it let
/// in (`{n}`), and each login first waits `delay` on the server's
/// worker pool, so that two logins can read the same record.
struct Counter {
    delay: Duration,
}

/// [`Counter`]'s declaration: a test method, not offered over REST.
static COUNTER: MethodInfo = MethodInfo {
    name: "_count",
    kinds: &[USER],
    payload: Payload::Text,
    rest: false,
    rest_set: RestSet::No,
    needs_password: false,
    strength: 0,
    super_root: false,
    fixed_user: None,
    second_factor: false,
    suite: None,
    plaintext_secret: false,
    plus: None,
    client_cert: false,
};

impl Method for Counter {
    fn info(&self) -> &'static MethodInfo {
        &COUNTER
    }

    fn login(
        &self,
        _ctx: &LoginCtx<'_>,
        ident: &str,
        _request: &Value,
        record: Option<&Value>,
    ) -> Step<Verdict> {
        let Some(n) = record.and_then(|r| r.get("n")).and_then(Value::as_u64) else {
            return Step::Fail(AuthError::Failed);
        };
        let (user, delay) = (ident.to_owned(), self.delay);
        Step::Work(Box::new(move || {
            std::thread::sleep(delay);
            let mut v = Verdict::user(user);
            v.write_back = Some(Msg::new().with("n", n + 1).into_value());
            Step::Done(v)
        }))
    }

    fn set_record(&self, _: &LoginCtx<'_>, _: &Kind, _: &str, _: &Value) -> Step<Value> {
        Step::Fail(AuthError::Unsupported("set with set_internal".into()))
    }
}

/// [`Counter`]'s client half: a first message without data.
struct CountClient;

impl ClientMethod for CountClient {
    fn name(&self) -> &'static str {
        "_count"
    }

    fn ident(&self) -> String {
        String::new()
    }

    fn login(&self, _: Option<&keycard_auth::SecretKey>) -> ClientLogin {
        ClientLogin {
            request: Msg::new(),
            exchange: None,
        }
    }

    fn set_record(&self, _: Option<&keycard_auth::SecretKey>) -> ClientLogin {
        self.login(None)
    }
}

fn p(s: &str) -> Path {
    Path::parse(s).expect("path")
}

async fn internal(c: &Client, at: &str, v: Value) {
    c.request(
        Msg::new()
            .with("action", "set_internal")
            .with_path("path", &p(at))
            .with("value", v),
    )
    .await
    .expect("set_internal");
}

fn factors(list: &[&str]) -> Value {
    Msg::new()
        .with(
            "factors",
            Value::Array(list.iter().map(|m| Value::from(*m)).collect()),
        )
        .into_value()
}

fn count(n: u64) -> Value {
    Msg::new().with("n", n).into_value()
}

/// `_test` current (and `scram-sha-256` accepted, for REST); `_test`
/// users joe, ann, eve; `_anon` records for joe and eve; `_count` (a
/// [`Counter`]) records for joe and ann; SCRAM user alice. joe must also
/// pass `_anon`, ann `_count`, eve `_anon` then `_count` (eve has no
/// `_count` record), alice `_anon`.
async fn server() -> (TestServer, Client) {
    let s = start_with(|c| {
        c.http = Some("127.0.0.1:0".parse().expect("addr"));
        c.extra_methods.0.push(Arc::new(Counter {
            delay: Duration::from_millis(300),
        }));
    })
    .await;
    let c = Client::connect(s.addr()).await.expect("connect");
    let root = keycard_auth::ClientRegistry::make("root", None).expect("root");
    c.set_user(root.as_ref()).await.expect("root user");
    for (m, u) in [
        ("_test", "joe"),
        ("_test", "ann"),
        ("_test", "eve"),
        ("_anon", "joe"),
        ("_anon", "eve"),
        ("_anon", "alice"),
    ] {
        let m = keycard_auth::ClientRegistry::make(m, Some(u)).expect("method");
        c.set_user(m.as_ref()).await.expect("user");
    }
    c.set_user(&keycard_auth::ScramClient::new(
        "alice",
        keycard_auth::Password::new("correct horse"),
    ))
    .await
    .expect("alice");
    internal(&c, "auth._count.user.joe", count(0)).await;
    internal(&c, "auth._count.user.ann", count(0)).await;
    internal(&c, "auth._test.user.joe.factors", factors(&["_anon"])).await;
    internal(&c, "auth._test.user.ann.factors", factors(&["_count"])).await;
    internal(
        &c,
        "auth._test.user.eve.factors",
        factors(&["_anon", "_count"]),
    )
    .await;
    internal(
        &c,
        "auth.scram-sha-256.user.alice.factors",
        factors(&["_anon"]),
    )
    .await;
    c.request(
        Msg::new()
            .with("action", "set_auth_typ")
            .with("typ", "_test")
            .with(
                "accept",
                Value::Array(vec!["root".into(), "scram-sha-256".into()]),
            ),
    )
    .await
    .expect("current");
    // The admin client stays super-root.
    c.login(root.as_ref()).await.expect("root login");
    (s, c)
}

/// Reads the messages of request `seq` until a prompt for a factor, an
/// error or the stream's end; returns them all.
async fn until_prompt(r: &mut Raw, seq: i64) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let v = r.recv().await.expect("message");
        if v.get("seq").and_then(Value::as_i64) != Some(seq) {
            continue;
        }
        let stop = v.get("factor").is_some()
            || code(&v).is_some()
            || v.get("state").and_then(Value::as_str) == Some("end");
        out.push(v);
        if stop {
            return out;
        }
    }
}

fn prompt_of(msgs: &[Value]) -> Option<&str> {
    msgs.last()?.get("factor")?.as_str()
}

fn last_code(msgs: &[Value]) -> Option<&str> {
    msgs.iter().find_map(|m| code(m))
}

async fn begin(s: &TestServer, user: &str) -> (Raw, Vec<Value>) {
    let mut r = Raw::connect(s.addr()).await;
    r.send(req(1, "auth").with("typ", "_test").with("ident", user))
        .await;
    let got = until_prompt(&mut r, 1).await;
    (r, got)
}

async fn whoami(r: &mut Raw) -> Value {
    r.call(req(9, "whoami")).await
}

async fn record(c: &Client, at: &str) -> Value {
    let v = c
        .request(
            Msg::new()
                .with("action", "get_internal")
                .with_path("path", &p(at)),
        )
        .await
        .expect("get_internal");
    v.get("value").cloned().unwrap_or(Value::Nil)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_factor_is_asked_for_and_passed_in_the_same_exchange() {
    let (s, _c) = server().await;
    let (mut r, got) = begin(&s, "joe").await;
    assert_eq!(prompt_of(&got), Some("_anon"), "{got:?}");
    // Not logged in until every factor passed.
    let before = r.call(req(2, "whoami")).await;
    assert!(before.get("user").is_none(), "{before:?}");
    r.send(Msg::new().with("seq", 1).with("typ", "_anon")).await;
    let rest = until_prompt(&mut r, 1).await;
    assert_eq!(last_code(&rest), None, "{rest:?}");
    assert_eq!(
        rest.last()
            .and_then(|v| v.get("state"))
            .and_then(Value::as_str),
        Some("end")
    );
    let who = whoami(&mut r).await;
    assert_eq!(who.get("user").and_then(Value::as_str), Some("joe"));
    // The keycard is the first method's.
    assert_eq!(who.get("method").and_then(Value::as_str), Some("_test"));
    // A factor is not a way in by itself: `_anon` is not accepted.
    let mut r2 = Raw::connect(s.addr()).await;
    let st = r2
        .call_stream(req(1, "auth").with("typ", "_anon").with("ident", "joe"))
        .await;
    assert_eq!(code(&st[0]), Some("auth_method"), "{st:?}");
}

/// keycard's client passes the factors it is given when asked, and
/// refuses a prompt for one it does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_passes_its_factors_in_order() {
    let (s, _c) = server().await;
    let make = |m: &str| keycard_auth::ClientRegistry::make(m, Some("eve")).expect("method");
    let (test, anon) = (make("_test"), make("_anon"));
    let count: Box<dyn ClientMethod> = Box::new(CountClient);
    let c = Client::connect(s.addr()).await.expect("connect");
    let e = c
        .login_with_factors(test.as_ref(), &[count.as_ref()])
        .await
        .expect_err("the server asks for _anon first");
    assert!(e.to_string().contains("_anon"), "{e}");
    let c = Client::connect(s.addr()).await.expect("connect");
    let e = c
        .login_with_factors(test.as_ref(), &[anon.as_ref(), count.as_ref()])
        .await
        .expect_err("eve has no _count record");
    assert!(e.to_string().contains("login failed"), "{e}");
    let joe = |m: &str| keycard_auth::ClientRegistry::make(m, Some("joe")).expect("method");
    let c = Client::connect(s.addr()).await.expect("connect");
    c.login_with_factors(joe("_test").as_ref(), &[joe("_anon").as_ref()])
        .await
        .expect("joe passes both");
    let who = c
        .request(Msg::new().with("action", "whoami"))
        .await
        .expect("whoami");
    assert_eq!(who.get("user").and_then(Value::as_str), Some("joe"));
}

/// Skipping a factor, repeating the first, naming another user, or
/// answering with no method: each fails as a wrong credential does, and
/// counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_factor_fails_like_a_wrong_credential_and_counts_once() {
    let (s, _c) = server().await;
    let ip = "127.0.0.1".parse().expect("ip");
    let answers = [
        req(1, "auth").with("typ", "_test"),
        req(1, "auth").with("typ", "_count"),
        req(1, "auth").with("typ", "_anon").with("ident", "eve"),
        req(1, "auth"),
    ];
    for (i, answer) in answers.into_iter().enumerate() {
        let (mut r, got) = begin(&s, "joe").await;
        assert_eq!(prompt_of(&got), Some("_anon"), "{got:?}");
        // The continuation carries no action: drop the one `req` set.
        let mut v = answer.into_value();
        if let Value::Map(m) = &mut v {
            m.retain(|(k, _)| k.as_str() != Some("action"));
        }
        r.send(v).await;
        let end = until_prompt(&mut r, 1).await;
        assert_eq!(last_code(&end), Some("auth_failed"), "{end:?}");
        let who = whoami(&mut r).await;
        assert!(who.get("user").is_none(), "{who:?}");
        let c = s.handle.state.throttle.counters("joe", ip).pair;
        assert_eq!(c.failures, i as u32 + 1, "counted once per login");
        assert_eq!(c.provisional, 0);
    }
    // A wrong first factor (an unknown user here) ends at once, with the
    // same error and no prompt.
    let (_, got) = begin(&s, "nobody").await;
    assert_eq!(prompt_of(&got), None);
    assert_eq!(last_code(&got), Some("auth_failed"), "{got:?}");
}

/// A later factor without a record for the user fails like any wrong
/// credential, after the earlier ones passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_factor_record_fails_at_its_turn() {
    let (s, _c) = server().await;
    let (mut r, got) = begin(&s, "eve").await;
    assert_eq!(prompt_of(&got), Some("_anon"), "{got:?}");
    r.send(Msg::new().with("seq", 1).with("typ", "_anon")).await;
    let next = until_prompt(&mut r, 1).await;
    assert_eq!(prompt_of(&next), Some("_count"), "{next:?}");
    r.send(Msg::new().with("seq", 1).with("typ", "_count"))
        .await;
    let end = until_prompt(&mut r, 1).await;
    assert_eq!(last_code(&end), Some("auth_failed"), "{end:?}");
}

/// A method's write-back replaces the record it read; two logins that
/// read the same record race, and the loser fails as a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_back_lands_once_and_a_lost_race_fails() {
    let (s, c) = server().await;
    let (mut r, got) = begin(&s, "ann").await;
    assert_eq!(prompt_of(&got), Some("_count"), "{got:?}");
    r.send(Msg::new().with("seq", 1).with("typ", "_count"))
        .await;
    let end = until_prompt(&mut r, 1).await;
    assert_eq!(last_code(&end), None, "{end:?}");
    assert_eq!(record(&c, "auth._count.user.ann").await, count(1));
    // Two second-factor answers at once, for the same record.
    let (mut a, got_a) = begin(&s, "ann").await;
    let (mut b, got_b) = begin(&s, "ann").await;
    assert_eq!(prompt_of(&got_a), Some("_count"));
    assert_eq!(prompt_of(&got_b), Some("_count"));
    let answer = || Msg::new().with("seq", 1).with("typ", "_count");
    a.send(answer()).await;
    b.send(answer()).await;
    let (ea, eb) = tokio::join!(until_prompt(&mut a, 1), until_prompt(&mut b, 1));
    let codes = [last_code(&ea), last_code(&eb)];
    assert!(
        codes.contains(&None) && codes.contains(&Some("auth_failed")),
        "exactly one wins: {ea:?} {eb:?}"
    );
    assert_eq!(record(&c, "auth._count.user.ann").await, count(2));
}

/// A factor list that names no loaded method is the server's problem:
/// an error, not a failed login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_factor_list_is_a_server_error() {
    let (s, c) = server().await;
    internal(&c, "auth._test.user.joe.factors", factors(&["nope"])).await;
    let (_, got) = begin(&s, "joe").await;
    assert_eq!(last_code(&got), Some("internal"), "{got:?}");
    let ip = "127.0.0.1".parse().expect("ip");
    assert_eq!(s.handle.state.throttle.counters("joe", ip).pair.failures, 0);
}

fn body(v: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&v).expect("json")
}

/// Over REST: SCRAM's proof answers with the prompt (and the server's
/// signature); `PUT /session/{sid}` with the factor's method finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_continues_the_session_with_the_second_factor() {
    let (s, _c) = server().await;
    let addr = s.handle.http_addr.expect("http");
    let start = scram_begin(addr, "alice", "correct horse")
        .await
        .map_err(|r| r.body)
        .expect("begin");
    let at = format!("/session/{}", start.sid);
    let r = http(
        addr,
        "PUT",
        &at,
        None,
        &body(serde_json::json!({"data": start.client_final})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["factor"], "_anon");
    assert!(r.body["data"].as_str().is_some_and(|d| d.starts_with("v=")));
    let id = KeycardId::parse(&start.sid).expect("sid");
    let table = || s.handle.state.bouncer.table().show(id);
    assert_eq!(table().map(|c| c.state), Some(State::Challenged));
    let r = http(
        addr,
        "PUT",
        &at,
        None,
        &body(serde_json::json!({"method": "_anon"})),
    )
    .await;
    assert_eq!(r.status, 303, "{:?}", r.body);
    let card = table().expect("keycard");
    assert_eq!(card.state, State::Authenticated);
    assert_eq!(&*card.user, "alice");
    let again = http(
        addr,
        "PUT",
        &at,
        None,
        &body(serde_json::json!({"method": "_anon"})),
    )
    .await;
    assert_eq!(again.status, 404, "{:?}", again.body);
}

/// Over REST a wrong factor is `401`/`auth_failed` like a wrong password,
/// and the session id is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_refuses_a_skipped_factor_like_a_wrong_password() {
    let (s, _c) = server().await;
    let addr = s.handle.http_addr.expect("http");
    let wrong = scram_begin(addr, "alice", "wrong")
        .await
        .map_err(|r| r.body)
        .expect("begin");
    let r = http(
        addr,
        "PUT",
        &format!("/session/{}", wrong.sid),
        None,
        &body(serde_json::json!({"data": wrong.client_final})),
    )
    .await;
    let (status, text) = (r.status, r.body.clone());
    for method in ["scram-sha-256", "_count"] {
        let start = scram_begin(addr, "alice", "correct horse")
            .await
            .map_err(|r| r.body)
            .expect("begin");
        let at = format!("/session/{}", start.sid);
        let r = http(
            addr,
            "PUT",
            &at,
            None,
            &body(serde_json::json!({"data": start.client_final})),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let r = http(
            addr,
            "PUT",
            &at,
            None,
            &body(serde_json::json!({"method": method, "data": "x"})),
        )
        .await;
        assert_eq!((r.status, &r.body), (status, &text), "{method}");
        let gone = http(addr, "PUT", &at, None, &body(serde_json::json!({}))).await;
        assert_eq!(gone.status, 404);
    }
}

/// Two answers to one prompt at once: one is the login's, the other
/// finds no login waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_takes_one_answer_per_prompt() {
    let (s, _c) = server().await;
    let addr = s.handle.http_addr.expect("http");
    let start = scram_begin(addr, "alice", "correct horse")
        .await
        .map_err(|r| r.body)
        .expect("begin");
    let at = format!("/session/{}", start.sid);
    let r = http(
        addr,
        "PUT",
        &at,
        None,
        &body(serde_json::json!({"data": start.client_final})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let answer = body(serde_json::json!({"method": "_anon"}));
    let (a, b) = tokio::join!(
        http(addr, "PUT", &at, None, &answer),
        http(addr, "PUT", &at, None, &answer)
    );
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [303, 404], "{:?} {:?}", a.body, b.body);
}
