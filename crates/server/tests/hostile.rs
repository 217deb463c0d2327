//! Hostile clients, from an adversarial review: `fixed_*` tests reproduce
//! bugs the review found (each comment says what the bug was; they pass
//! since the fixes), `ok_*` tests are attacks the server handled from the
//! start.

mod common;

use std::time::{Duration, Instant};

use common::{code, path, req, start, start_with, Raw};
use keycard_proto::{encode, Decoder, Elem, Limits, Msg, Path, Value};

// ---------------------------------------------------------------- helpers

fn p(elems: Vec<Elem>) -> Value {
    Path::new(elems).to_value()
}

fn se(x: &str) -> Elem {
    Elem::Str(x.into())
}

fn is_err(v: &Value) -> bool {
    v.get("error").is_some()
}

fn seq_of(v: &Value) -> Option<i64> {
    v.get("seq").and_then(Value::as_i64)
}

fn state_of(v: &Value) -> Option<&str> {
    v.get("state").and_then(Value::as_str)
}

fn empty_map() -> Value {
    Value::Map(Vec::new())
}

/// The resident set size of this process (the server runs in it), bytes.
fn rss() -> u64 {
    let st = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    st.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Open server → `_test` user joe, a `root` user `*`, a secret under the
/// reserved root, then `_test` made current. Afterwards nobody is
/// super-root (the current method is not `root`).
async fn setup_test_method(s: &common::TestServer) {
    let mut admin = Raw::connect(s.addr()).await;
    for (i, (typ, ident, data)) in [
        ("_test", "joe", Msg::new().with("name", "joe").into_value()),
        ("root", "*", empty_map()),
    ]
    .into_iter()
    .enumerate()
    {
        let r = admin
            .call(
                req(i as i64 + 1, "auth_set")
                    .with("typ", typ)
                    .with("ident", ident)
                    .with("data", data),
            )
            .await;
        assert!(!is_err(&r), "auth_set: {r:?}");
    }
    let r = admin
        .call(
            req(10, "set_internal")
                .with("path", path("secret"))
                .with("value", "s3cret"),
        )
        .await;
    assert!(!is_err(&r), "{r:?}");
    let r = admin
        .call(req(11, "set_auth_typ").with("typ", "_test"))
        .await;
    assert!(!is_err(&r), "{r:?}");
}

/// Logs `c` in with `_test` as `name`; returns the stream.
async fn login_test(c: &mut Raw, seq: i64, name: &str) -> Vec<Value> {
    c.call_stream(
        req(seq, "auth")
            .with("typ", "_test")
            .with("ident", name)
            .with("data", empty_map()),
    )
    .await
}

fn stream_ok(st: &[Value]) -> bool {
    !st.iter().any(is_err) && st.last().and_then(state_of) == Some("end")
}

/// Whether `v` (a Path ext or array) has nil as its first element.
fn first_is_nil(v: &Value) -> bool {
    Path::from_value(v)
        .ok()
        .and_then(|p| p.elems().first().cloned())
        .is_some_and(|e| e == Elem::Nil)
}

// ------------------------------------------------- reserved-path escapes

/// Found in review (fixed): crates/server/src/actions/tree.rs:134-146 (get_tree) with
/// `data_path` (actions/mod.rs:123) only refuses a *requested* path whose
/// first element is nil. `get_tree` of the root `[]` scans the whole key
/// range, which includes the reserved `(nil, …)` subtree: a logged-in
/// non-super-root user reads every auth record and `set_internal` value.
#[tokio::test]
async fn fixed_get_tree_of_root_leaks_reserved_subtree() {
    let s = start().await;
    setup_test_method(&s).await;
    let mut c = Raw::connect(s.addr()).await;
    assert!(stream_ok(&login_test(&mut c, 1, "joe").await));
    // Sanity: joe is not super-root, management is refused to him...
    let r = c
        .call(req(2, "get_internal").with("path", path("secret")))
        .await;
    assert_eq!(code(&r), Some("permission_denied"), "{r:?}");
    // ...but get_tree of the root hands out the reserved subtree.
    let st = c
        .call_stream(req(3, "get_tree").with("path", Value::Array(vec![])))
        .await;
    let leaked: Vec<Vec<Value>> = full_paths(&st)
        .into_iter()
        .filter(|p| p.first() == Some(&Value::Nil))
        .collect();
    assert!(
        leaked.is_empty(),
        "get_tree [] returned {} reserved nodes to a non-super-root user \
         (auth records, set_internal values, the server secret): {leaked:?}",
        leaked.len()
    );
}

/// Undoes DistKV's path compression of tree items: the full relative path
/// of every item.
fn full_paths(st: &[Value]) -> Vec<Vec<Value>> {
    let mut prev: Vec<Value> = Vec::new();
    let mut out = Vec::new();
    for v in st {
        let (Some(depth), Some(p)) = (
            v.get("depth").and_then(Value::as_u64),
            v.get("path").and_then(|p| Path::from_value(p).ok()),
        ) else {
            continue;
        };
        let mut full: Vec<Value> = prev.iter().take(depth as usize).cloned().collect();
        full.extend(p.elems().iter().map(Elem::to_value));
        prev = full.clone();
        out.push(full);
    }
    out
}

/// Found in review (fixed): actions/tree.rs:149-200 (enum) – `enum []` with `empty: true`
/// lists the reserved root's nil as a child name (and with `with_data`
/// returns a `nil` key), revealing the reserved subtree.
#[tokio::test]
async fn fixed_enum_of_root_reveals_reserved_root() {
    let s = start().await;
    setup_test_method(&s).await;
    let mut c = Raw::connect(s.addr()).await;
    assert!(stream_ok(&login_test(&mut c, 1, "joe").await));
    let r = c
        .call(
            req(2, "enum")
                .with("path", Value::Array(vec![]))
                .with("empty", true),
        )
        .await;
    let names = match r.get("result") {
        Some(Value::Array(a)) => a.clone(),
        other => panic!("no result: {r:?} {other:?}"),
    };
    assert!(
        !names.contains(&Value::Nil),
        "enum [] lists the reserved nil root: {names:?}"
    );
}

/// Found in review (fixed): actions/tree.rs:209-258 / 261-263 (watch, send_change) – a watch
/// of `[]` with `fetch` streams the reserved subtree's current state, and
/// its live part sends every change under `(nil, …)` (auth records,
/// `set_auth_typ`, `set_internal`) to a non-super-root user.
#[tokio::test]
async fn fixed_watch_of_root_streams_reserved_nodes() {
    let s = start().await;
    setup_test_method(&s).await;
    let mut c = Raw::connect(s.addr()).await;
    assert!(stream_ok(&login_test(&mut c, 1, "joe").await));
    c.send(
        req(2, "watch")
            .with("path", Value::Array(vec![]))
            .with("fetch", true),
    )
    .await;
    let mut got = Vec::new();
    loop {
        let v = c.recv().await.expect("watch message");
        if seq_of(&v) != Some(2) {
            continue;
        }
        let up = state_of(&v) == Some("uptodate");
        got.push(v);
        if up {
            break;
        }
    }
    let leaked: Vec<&Value> = got
        .iter()
        .filter(|v| {
            v.get("depth").and_then(Value::as_u64) == Some(0)
                && v.get("path").is_some_and(first_is_nil)
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "watch [] leaks reserved nodes: {leaked:?}"
    );
}

/// Found in review (fixed): identity forgery. `Path::is_reserved` (proto/src/path.rs:291)
/// looks only at the first element, so a plain user may write
/// `("x", nil, "auth", "_test", "user", "admin")`; `root` to `x` then
/// makes `auth` (actions/auth.rs:110-112) read the login record from
/// `session.root + (nil, "auth", …)` – a record the user wrote himself.
/// Logged in as joe, the client becomes "admin" (and the audit log says
/// so). With ACLs this becomes an escalation.
#[tokio::test]
async fn fixed_user_forges_login_record_under_own_subtree() {
    let s = start().await;
    setup_test_method(&s).await;
    let mut c = Raw::connect(s.addr()).await;
    assert!(stream_ok(&login_test(&mut c, 1, "joe").await));
    let forged = p(vec![
        se("x"),
        Elem::Nil,
        se("auth"),
        se("_test"),
        se("user"),
        se("admin"),
    ]);
    let r = c
        .call(
            req(2, "set_value")
                .with("path", forged)
                .with("value", Msg::new().with("name", "admin")),
        )
        .await;
    let wrote = !is_err(&r);
    let r = c.call(req(3, "root").with("path", path("x"))).await;
    assert!(!is_err(&r), "{r:?}");
    let st = login_test(&mut c, 4, "admin").await;
    let who = c.call(req(5, "whoami")).await;
    assert!(
        !(wrote && stream_ok(&st)),
        "a plain user forged an auth record and logged in with it: {who:?}"
    );
}

/// OK: nil as the first element is refused in every wire form (ext, plain
/// array, bignum-free), also after `root`, and `delete_tree []` is refused.
#[tokio::test]
async fn ok_reserved_path_forms_are_refused() {
    let srv = start().await;
    let mut c = Raw::connect(srv.addr()).await;
    let forms = [
        p(vec![Elem::Nil]),
        p(vec![Elem::Nil, se("auth")]),
        Value::Array(vec![Value::Nil, "auth".into()]),
        // Path ext whose payload is a single nil byte.
        Value::Ext(3, vec![0xc0, 0xa4, b'a', b'u', b't', b'h']),
    ];
    let mut seq = 1;
    for f in &forms {
        for action in [
            "get_value",
            "set_value",
            "get_tree",
            "enum",
            "watch",
            "root",
            "delete_tree",
        ] {
            let r = c
                .call(req(seq, action).with("path", f.clone()).with("value", 1))
                .await;
            assert_eq!(code(&r), Some("reserved_path"), "{action} {f:?}: {r:?}");
            seq += 1;
        }
    }
    let r = c
        .call(req(seq, "delete_tree").with("path", Value::Array(vec![])))
        .await;
    assert_eq!(code(&r), Some("bad_request"), "{r:?}");
    // After root, nil is still refused.
    c.call(req(seq + 1, "root").with("path", path("j"))).await;
    let r = c
        .call(req(seq + 2, "get_value").with("path", p(vec![Elem::Nil])))
        .await;
    assert_eq!(code(&r), Some("reserved_path"));
}

// ------------------------------------------------------- auth bypasses

/// Found in review (fixed): actions/auth.rs:139-153 + conn.rs:283-297. The failed-login limit
/// is checked only when a login fails, and the connection closes only
/// after the current batch of up to 64 routed messages has run. A client
/// pipelining 64 `auth` requests in one write gets 64 guesses on one
/// connection instead of `max_auth_attempts` (5), and a correct guess
/// after the 5th failure still logs in (reply sent, session set).
#[tokio::test]
async fn fixed_pipelined_logins_bypass_attempt_limit() {
    let s = start().await;
    {
        let mut admin = Raw::connect(s.addr()).await;
        let r = admin
            .call(
                req(1, "auth_set")
                    .with("typ", "_anon")
                    .with("ident", "alice")
                    .with("data", empty_map()),
            )
            .await;
        assert!(!is_err(&r), "{r:?}");
        let r = admin
            .call(req(2, "set_auth_typ").with("typ", "_anon"))
            .await;
        assert!(!is_err(&r), "{r:?}");
    }
    let mut c = Raw::connect(s.addr()).await;
    let mut bytes = Vec::new();
    for i in 1..=40i64 {
        let ident = if i == 40 {
            "alice".to_string()
        } else {
            format!("guess{i}")
        };
        bytes.extend(encode(
            &req(i, "auth")
                .with("typ", "_anon")
                .with("ident", ident)
                .with("data", empty_map())
                .into_value(),
        ));
    }
    c.send_bytes(&bytes).await;
    let mut answered = Vec::new();
    while let Some(Some(v)) = c.try_recv(Duration::from_secs(2)).await {
        answered.push(v);
    }
    let failures = answered
        .iter()
        .filter(|v| code(v) == Some("auth_failed") || code(v) == Some("too_many_attempts"))
        .count();
    let success = answered.iter().any(|v| seq_of(v) == Some(40) && !is_err(v));
    assert!(
        !success && failures <= 5,
        "40 pipelined guesses on one connection: {failures} failures answered, \
         correct 40th guess succeeded: {success}"
    );
}

/// OK: data before login is `auth_required`; management without the
/// super-root capability is `permission_denied`; `stop` before login too.
#[tokio::test]
async fn ok_auth_gates_hold() {
    let s = start().await;
    setup_test_method(&s).await;
    let mut c = Raw::connect(s.addr()).await;
    for (i, a) in [
        "get_value",
        "set_value",
        "get_tree",
        "enum",
        "watch",
        "root",
        "delete_tree",
        "auth_info",
        "stop",
    ]
    .iter()
    .enumerate()
    {
        let r = c
            .call(
                req(i as i64 + 1, a)
                    .with("path", path("a"))
                    .with("value", 1)
                    .with("task", 99),
            )
            .await;
        assert_eq!(code(&r), Some("auth_required"), "{a}: {r:?}");
    }
    assert!(stream_ok(&login_test(&mut c, 50, "joe").await));
    for (i, a) in [
        "get_internal",
        "set_internal",
        "delete_internal",
        "enum_internal",
        "get_tree_internal",
        "auth_get",
        "auth_set",
        "auth_list",
        "set_auth_typ",
    ]
    .iter()
    .enumerate()
    {
        let r = c
            .call(
                req(i as i64 + 100, a)
                    .with("path", path("secret"))
                    .with("value", 1)
                    .with("typ", "root")
                    .with("ident", "*")
                    .with("data", empty_map()),
            )
            .await;
        assert_eq!(code(&r), Some("permission_denied"), "{a}: {r:?}");
    }
    // Logging in with a non-current method (root) is refused.
    let st = c
        .call_stream(
            req(200, "auth")
                .with("typ", "root")
                .with("ident", "*")
                .with("data", empty_map()),
        )
        .await;
    assert_eq!(code(&st[0]), Some("auth_method"), "{st:?}");
}

/// Found in review (fixed) (lock-out): actions/internal.rs:29-48 `delete_internal` (and
/// `set_internal` of `auth`) may remove the last user of the current
/// method or name a method that does not exist; ARCHITECTURE.md promises
/// "A method with no user cannot be made current (no lock-out)". After
/// this, nobody can log in, and with no login nobody holds super-root to
/// repair it: the server is locked until edited offline.
#[tokio::test]
async fn fixed_delete_internal_locks_everyone_out() {
    let s = start().await;
    let mut admin = Raw::connect(s.addr()).await;
    let r = admin
        .call(
            req(1, "auth_set")
                .with("typ", "root")
                .with("ident", "*")
                .with("data", empty_map()),
        )
        .await;
    assert!(!is_err(&r));
    let r = admin.call(req(2, "set_auth_typ").with("typ", "root")).await;
    assert!(!is_err(&r));
    let mut c = Raw::connect(s.addr()).await;
    let st = c
        .call_stream(
            req(1, "auth")
                .with("typ", "root")
                .with("ident", "*")
                .with("data", empty_map()),
        )
        .await;
    assert!(stream_ok(&st), "{st:?}");
    let r = c
        .call(
            req(2, "delete_internal")
                .with("path", p(vec![se("auth"), se("root"), se("user"), se("*")])),
        )
        .await;
    let mut d = Raw::connect(s.addr()).await;
    let st = d
        .call_stream(
            req(1, "auth")
                .with("typ", "root")
                .with("ident", "*")
                .with("data", empty_map()),
        )
        .await;
    assert!(
        is_err(&r) || stream_ok(&st),
        "deleting the current method's last user was allowed ({r:?}); \
         now nobody can log in: {st:?}"
    );
}

// ------------------------------------------------------- memory bounds

/// Found in review (fixed): crates/server/src/actions/data.rs:94-98 (`root`). Each `root`
/// appends up to MAX_PATH_LEN elements (of up to max_message bytes in all)
/// to the session root, with no limit and without the node having to
/// exist. Repeating it grows one connection's session without bound, and
/// every later request clones the whole root (`ConnShared::session`).
#[tokio::test]
async fn fixed_root_grows_session_without_bound() {
    let s = start_with(|c| c.max_message = 1 << 20).await;
    let mut c = Raw::connect(s.addr()).await;
    let before = rss();
    let elem = "x".repeat(3900);
    let chunk = p((0..256).map(|_| se(&elem)).collect());
    let n = 40;
    let mut accepted = 0;
    for i in 0..n {
        let r = c.call(req(i + 1, "root").with("path", chunk.clone())).await;
        if is_err(&r) {
            break;
        }
        accepted += 1;
    }
    let grown = rss().saturating_sub(before);
    // (`whoami` would now answer with a >64 MiB message, more than any
    // client's decoder accepts.)
    let root_len = accepted * 256;
    assert!(
        root_len <= keycard_proto::MAX_PATH_LEN,
        "session root has {root_len} elements (~{accepted} MiB held and cloned per \
         request; RSS delta {} MiB, noisy with parallel tests)",
        grown >> 20
    );
}

/// Found in review (fixed): conn.rs:511-525 – each request's future owns its decoded message
/// for its whole life, and a decoded message is ~32x its wire size (a
/// 1 MiB array of nils becomes 1M `Value`s of 32 bytes). A client that
/// opens many `watch`es (cheap, they never end) each padded with a junk
/// field pins `max_outstanding` (1024) x max_message x 32 ≈ 32 GiB on one
/// connection with the default config. Memory is not bounded in practice.
#[tokio::test]
async fn fixed_pinned_watch_messages_amplify_memory() {
    let s = start().await;
    let mut c = Raw::connect(s.addr()).await;
    // Within the per-message value limit, but ~3 MiB decoded each: the
    // per-connection in-flight budget (16 MiB) must refuse most of them.
    let junk = Value::Array(vec![Value::Nil; 100_000]);
    let before = rss();
    let n = 24;
    for i in 1..=n {
        c.send(
            req(i, "watch")
                .with("path", path(&format!("w{i}")))
                .with("junk", junk.clone()),
        )
        .await;
    }
    let (mut starts, mut refused) = (0, 0);
    while starts + refused < n {
        let v = c.recv().await.expect("reply");
        if state_of(&v) == Some("start") {
            starts += 1;
        } else {
            assert_eq!(
                v.get("code").and_then(Value::as_str),
                Some("too_many_requests"),
                "{v:?}"
            );
            refused += 1;
        }
    }
    assert!(
        refused > 0 && starts > 0,
        "{starts} started, {refused} refused"
    );
    drop(junk);
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "{n} watches with large messages pinned {} MiB of server memory",
        grown >> 20
    );
}

/// Found in review (fixed): proto/src/codec.rs:292 / 508-511 – for an incomplete
/// container `measure` returns `Incomplete(pos + 1)`, so `need` is only one
/// byte past what is buffered and every new byte re-walks the whole
/// partial message from its start. Trickling a ~1 MiB message costs
/// O(n^2): each 1-byte TCP segment costs a walk over up to 1M items on the
/// connection's runtime thread (CPU amplification, stalls other
/// connections on the same worker).
#[tokio::test]
async fn fixed_decoder_rewalks_partial_message_per_byte() {
    // A pending 1 MiB message completed a byte at a time decodes to the
    // right value. (That each byte continues the walk instead of starting
    // over is checked white-box in keycard-proto's codec tests.)
    let limits = Limits {
        max_items: 2 << 20,
        max_message: 2 << 20,
        ..Limits::default()
    };
    let mut d = Decoder::new(limits);
    let n = 1_000_000usize;
    let mut head = vec![0xdd];
    head.extend_from_slice(&(n as u32).to_be_bytes());
    d.feed(&head);
    d.feed(&vec![0u8; n - 200]);
    assert!(d.next_value().expect("ok").is_none());
    for _ in 0..199 {
        d.feed(&[0]);
        assert!(d.next_value().expect("ok").is_none());
    }
    d.feed(&[0]);
    let v = d.next_value().expect("ok").expect("complete");
    assert_eq!(v, Value::Array(vec![Value::Int(0); n]));
}

/// OK: oversize, over-deep, over-long paths, huge announced lengths and
/// many outstanding requests are refused without harming a bystander.
#[tokio::test]
async fn ok_limits_hold_and_bystanders_are_served() {
    let s = start_with(|c| c.max_outstanding = 8).await;
    let mut by = Raw::connect(s.addr()).await;
    let mut c = Raw::connect(s.addr()).await;
    // Path of 257 elements: bad_request.
    let long = p((0..257).map(Elem::Int).collect());
    let r = c.call(req(1, "get_value").with("path", long)).await;
    assert_eq!(code(&r), Some("bad_request"));
    let long = Value::Array((0..257).map(Value::from).collect());
    let r = c.call(req(2, "get_value").with("path", long)).await;
    assert_eq!(code(&r), Some("bad_request"));
    // Container element and malformed ext payload.
    for (i, bad) in [
        Value::Array(vec![Value::Array(vec![])]),
        Value::Ext(3, vec![0x91, 0x01]),
        Value::Ext(3, vec![0xc1]),
        Value::Ext(3, vec![0xa5, b'a']),
        Value::Ext(3, vec![0xd4, 0x03, 0x00]),
        Value::Map(vec![]),
        Value::from("a.b"),
    ]
    .into_iter()
    .enumerate()
    {
        let r = c
            .call(req(10 + i as i64, "get_value").with("path", bad))
            .await;
        assert_eq!(code(&r), Some("bad_request"), "{r:?}");
    }
    // Negative / huge / wrong-typed depths and qlen.
    for (i, f) in ["min_depth", "max_depth", "nchain"].iter().enumerate() {
        let r = c
            .call_stream(
                req(30 + i as i64, "get_tree")
                    .with("path", path("a"))
                    .with(f, -7),
            )
            .await;
        assert_eq!(code(&r[0]), Some("bad_request"), "{f}: {r:?}");
    }
    let r = c
        .call_stream(
            req(40, "get_tree")
                .with("path", path("a"))
                .with("max_depth", Value::Int(i64::MAX as i128)),
        )
        .await;
    assert!(!r.iter().any(is_err), "{r:?}");
    // seq beyond i64, negative seq, bignum seq.
    c.send(
        Msg::new()
            .with("seq", Value::Int(u64::MAX as i128))
            .with("action", "get_tock"),
    )
    .await;
    assert_eq!(code(&c.recv().await.expect("e")), Some("bad_request"));
    let r = c.call(req(-5, "get_tock")).await;
    assert!(r.get("tock").is_some(), "{r:?}");
    // Acks: for no stream, negative, huge.
    c.send(Msg::seq(777).with("state", "ack").with("ack", u64::MAX))
        .await;
    c.send(Msg::seq(777).with("state", "ack").with("ack", -1))
        .await;
    assert_eq!(code(&c.recv().await.expect("e")), Some("bad_request"));
    c.send(Msg::seq(0).with("qlen", -1)).await;
    assert_eq!(code(&c.recv().await.expect("e")), Some("bad_request"));
    // Outstanding limit.
    for i in 0..8 {
        c.send(req(100 + i, "watch").with("path", path("w"))).await;
    }
    let r = c.call(req(200, "get_tock")).await;
    assert_eq!(code(&r), Some("too_many_requests"), "{r:?}");
    // Bystander unaffected.
    let r = by.call(req(1, "get_tock")).await;
    assert!(r.get("tock").is_some());
    // 4 GiB map header, deep nesting of empty maps inside arrays.
    let mut e = Raw::connect(s.addr()).await;
    e.send_bytes(&[0xdf, 0xff, 0xff, 0xff, 0xff]).await;
    assert_eq!(code(&e.recv().await.expect("e")), Some("too_large"));
    assert!(e.recv().await.is_none());
    let r = by.call(req(2, "get_tock")).await;
    assert!(r.get("tock").is_some());
}

// ------------------------------------------ stop, seq and continuations

/// OK: `stop` only sees this connection's requests: another connection
/// cannot stop a stream, and a stop of an unknown task says false.
#[tokio::test]
async fn ok_stop_cannot_touch_other_connections() {
    let s = start().await;
    let mut a = Raw::connect(s.addr()).await;
    let mut b = Raw::connect(s.addr()).await;
    a.send(req(1, "watch").with("path", path("w"))).await;
    assert_eq!(state_of(&a.recv().await.expect("start")), Some("start"));
    let r = b.call(req(2, "stop").with("task", 1)).await;
    assert_eq!(r.get("result"), Some(&Value::Bool(false)));
    // b's continuation / ack / end under a's seq affect nothing.
    b.send(Msg::seq(1).with("state", "ack").with("ack", 5))
        .await;
    b.send(Msg::seq(1).with("step", "HasName").with("name", "x"))
        .await;
    assert_eq!(code(&b.recv().await.expect("e")), Some("bad_request"));
    b.call(
        req(3, "set_value")
            .with("path", path("w.x"))
            .with("value", 1),
    )
    .await;
    let v = a.recv().await.expect("change");
    assert_eq!(v.get("value"), Some(&Value::from(1)));
    // Self-stop is refused.
    let r = a.call(req(9, "stop").with("task", 9)).await;
    assert_eq!(code(&r), Some("bad_request"));
}

/// Found in review (fixed): conn.rs:518-522 – the request future races its work against the
/// `stop` cancel with an unbiased `tokio::select!`. When `stop` removes
/// the slot and sends the stream's `end` first, the stream's own future
/// may still be polled on its work branch and keep sending items and a
/// second `end` for the same seq – after the client was told it ended
/// (and possibly after the client reused the seq for a new request).
#[tokio::test]
async fn fixed_stream_messages_after_stop_end() {
    let s = start().await;
    let mut w = Raw::connect(s.addr()).await;
    for i in 0..10 {
        w.call(
            req(i + 1, "set_value")
                .with("path", path(&format!("t.k{i}")))
                .with("value", i),
        )
        .await;
    }
    let mut bad = Vec::new();
    for attempt in 0..12 {
        let mut c = Raw::connect(s.addr()).await;
        c.send(req(1, "get_tree").with("path", path("t")).with("qlen", 2))
            .await;
        let st = c.recv().await.expect("start");
        assert_eq!(state_of(&st), Some("start"));
        // In one write: stop the stream, then ack everything. Both are
        // routed before either runs.
        let mut bytes = encode(&req(2, "stop").with("task", 1).into_value());
        bytes.extend(encode(
            &Msg::seq(1)
                .with("state", "ack")
                .with("ack", 1000)
                .into_value(),
        ));
        c.send_bytes(&bytes).await;
        let mut after_end = Vec::new();
        let mut ended = false;
        while let Some(Some(v)) = c.try_recv(Duration::from_millis(300)).await {
            if seq_of(&v) != Some(1) {
                continue;
            }
            if ended {
                after_end.push(v);
            } else if state_of(&v) == Some("end") {
                ended = true;
            }
        }
        if !after_end.is_empty() {
            bad.push((attempt, after_end));
        }
    }
    assert!(
        bad.is_empty(),
        "messages for seq 1 after its end (attempt, msgs): {bad:?}"
    );
}

/// Found in review (fixed) (low): data.rs:111-125 / conn.rs:535-548 – `stop` cancels any
/// request, not just streams. Stopping an in-flight `set_value` yields
/// `{seq, state:"end"}` for a request that never started a stream, and no
/// reply for the write – although the write was committed.
#[tokio::test]
async fn fixed_stop_of_single_reply_request_loses_the_reply() {
    let s = start().await;
    let mut c = Raw::connect(s.addr()).await;
    let mut bytes = encode(
        &req(1, "set_value")
            .with("path", path("stopped"))
            .with("value", 1)
            .into_value(),
    );
    bytes.extend(encode(&req(2, "stop").with("task", 1).into_value()));
    c.send_bytes(&bytes).await;
    let mut seq1 = Vec::new();
    while let Some(Some(v)) = c.try_recv(Duration::from_millis(500)).await {
        if seq_of(&v) == Some(1) {
            seq1.push(v);
        }
    }
    let r = c
        .call(req(3, "get_value").with("path", path("stopped")))
        .await;
    let committed = r.get("value").is_some();
    assert!(
        !(committed && seq1.iter().all(|v| v.get("changed").is_none())),
        "write committed but its reply was replaced by {seq1:?}"
    );
}

/// Found in review (fixed) (low, reply format): actions/auth.rs:180-184 – `auth_set` run as a
/// dialogue without `state:"start"` in the request: the server starts a
/// stream (GiveName item), then answers with a plain `r.reply` (no
/// `wseq`), marks itself done, and never sends the stream's `end`.
#[tokio::test]
async fn fixed_auth_set_dialogue_without_start_never_ends_stream() {
    let s = start().await;
    let mut c = Raw::connect(s.addr()).await;
    c.send(req(1, "auth_set").with("typ", "_test").with("ident", "joe"))
        .await;
    let st = c.recv().await.expect("start");
    assert_eq!(state_of(&st), Some("start"), "{st:?}");
    let ask = c.recv().await.expect("question");
    assert_eq!(ask.get("step"), Some(&Value::from("GiveName")));
    c.send(Msg::seq(1).with("step", "HasName").with("name", "joe"))
        .await;
    let mut rest = Vec::new();
    while let Some(Some(v)) = c.try_recv(Duration::from_millis(500)).await {
        rest.push(v);
    }
    assert!(
        rest.iter().all(|v| v.get("wseq").is_some())
            && rest.last().and_then(state_of) == Some("end"),
        "stream started but continued with a non-stream reply and no end: {rest:?}"
    );
}

/// OK: seq reuse while outstanding is refused; after a stream ends the seq
/// is free again; a continuation for a finished exchange is an error; a
/// flood of continuations does not block the connection.
#[tokio::test]
async fn ok_seq_reuse_and_continuations() {
    let s = start().await;
    let mut c = Raw::connect(s.addr()).await;
    c.send(
        req(1, "auth_set")
            .with("typ", "_test")
            .with("ident", "joe")
            .with("state", "start"),
    )
    .await;
    assert_eq!(state_of(&c.recv().await.expect("s")), Some("start"));
    let _ask = c.recv().await;
    let r = c.call(req(1, "get_tock")).await;
    assert_eq!(code(&r), Some("seq_in_use"));
    // Flood continuations: the channel holds 8; the rest are errors.
    let mut bytes = Vec::new();
    for _ in 0..50 {
        bytes.extend(encode(&Msg::seq(1).with("step", "Junk").into_value()));
    }
    c.send_bytes(&bytes).await;
    let mut n = 0;
    while let Some(Some(_)) = c.try_recv(Duration::from_millis(300)).await {
        n += 1;
    }
    assert!(n > 0);
    // Connection alive, exchange over, seq free.
    let r = c.call(req(1, "get_tock")).await;
    assert!(r.get("tock").is_some(), "{r:?}");
    c.send(Msg::seq(1).with("step", "HasName").with("name", "joe"))
        .await;
    let r = c.recv().await.expect("e");
    assert_eq!(code(&r), Some("bad_request"), "{r:?}");
}

/// OK: a client that never reads does not hurt others; nor does one that
/// never acks a large stream; hanging up mid-exchange cleans up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_non_reading_client_does_not_stall_others() {
    let s = start().await;
    let mut w = Raw::connect(s.addr()).await;
    let big = Value::Bin(vec![7; 60_000]);
    for i in 0..40 {
        w.call(
            req(i + 1, "set_value")
                .with("path", path(&format!("b.k{i}")))
                .with("value", big.clone()),
        )
        .await;
    }
    // Floods get_tree requests and never reads.
    let mut lazy = Raw::connect(s.addr()).await;
    let mut bytes = Vec::new();
    for i in 0..200 {
        bytes.extend(encode(
            &req(i + 1, "get_tree").with("path", path("b")).into_value(),
        ));
    }
    let writer = tokio::spawn(async move {
        let _ = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::io::AsyncWriteExt::write_all(&mut lazy.stream, &bytes),
        )
        .await;
        lazy
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let r = w
        .call(req(1000, "get_value").with("path", path("b.k1")))
        .await;
    assert!(r.get("value").is_some());
    assert!(t.elapsed() < Duration::from_secs(2));
    let _lazy = writer.await;
}

/// Found in review (fixed): there was no limit on connections. One past
/// `max_connections` is told so and closed; the others keep working.
#[tokio::test]
async fn fixed_connections_are_limited() {
    let s = start_with(|c| c.max_connections = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Raw::connect(s.addr()).await);
    }
    let mut extra = tokio::net::TcpStream::connect(s.addr())
        .await
        .expect("tcp connect");
    let mut buf = Vec::new();
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut buf))
        .await
        .expect("closed promptly")
        .expect("read");
    let (v, _) = keycard_proto::decode_one(&buf, &Limits::default())
        .expect("valid")
        .expect("a message");
    assert_eq!(code(&v), Some("too_many_connections"));
    let r = held[0].call(req(1, "get_tock")).await;
    assert!(r.get("tock").is_some());
    // A slot frees when a connection closes.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = Raw::connect(s.addr()).await;
    assert!(again.call(req(1, "get_tock")).await.get("tock").is_some());
}
