//! Hostile clients against keycards, tokens and domains, from an
//! adversarial review of the bouncer (DESIGN §1, §7; the lessons W1–W16
//! of DESIGN §8.2). `fixed_*` tests reproduce bugs the review found (each
//! comment says what the bug was; they pass since the fixes); `ok_*` tests
//! are attacks the server handled from the start.

mod common;

use std::time::{Duration, Instant};

use common::{
    audit_log_with, code, domain_login, domain_server, login, manual_clock, path, raw_login, req,
    server, wait_for, Raw, TestServer, WAIT,
};
use keycard_auth::bouncer::KeycardId;
use keycard_auth::ClientRegistry;
use keycard_client::Client;
use keycard_proto::{Elem, Msg, Path, Value};
use keycard_server::{Clock, ManualClock};
use keycard_store::{Cond, Op};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------- helpers

fn p(s: &str) -> Path {
    Path::parse(s).expect("path")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

fn seq_of(v: &Value) -> Option<i64> {
    v.get("seq").and_then(Value::as_i64)
}

fn state_of(v: &Value) -> Option<&str> {
    v.get("state").and_then(Value::as_str)
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).expect(key)
}

/// Every message `raw` receives within `limit`, up to and including the
/// first one `stop` accepts; `None` at the end means the connection
/// closed, a timeout leaves no marker.
async fn collect(
    raw: &mut Raw,
    limit: Duration,
    stop: impl Fn(&Value) -> bool,
) -> (Vec<Value>, bool) {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match raw.try_recv(left).await {
            Some(Some(v)) => {
                let done = stop(&v);
                seen.push(v);
                if done {
                    return (seen, false);
                }
            }
            Some(None) => return (seen, true),
            None => return (seen, false),
        }
    }
}

/// The last message of request `seq`: its single reply or its stream's end.
fn last_of(seq: i64) -> impl Fn(&Value) -> bool {
    move |v| seq_of(v) == Some(seq) && (v.get("wseq").is_none() || state_of(v) == Some("end"))
}

fn ends(seq: i64) -> impl Fn(&Value) -> bool {
    move |v| seq_of(v) == Some(seq) && state_of(v) == Some("end")
}

/// Starts a watch on `data` under `seq` and waits for its start.
async fn watch_data(raw: &mut Raw, seq: i64) {
    raw.send(req(seq, "watch").with("path", path("data"))).await;
    let (seen, _) = collect(raw, WAIT, |v| {
        seq_of(v) == Some(seq) && state_of(v) == Some("start")
    })
    .await;
    assert!(seen.iter().all(|m| code(m).is_none()), "{seen:?}");
}

async fn whoami(raw: &mut Raw, seq: i64) -> Value {
    raw.call(req(seq, "whoami")).await
}

fn keycard_of(who: &Value) -> KeycardId {
    KeycardId::parse(str_of(who, "keycard")).expect("id")
}

/// The requester (connection id) of keycard `id`, as a manager lists it.
async fn requester_of(admin: &Client, id: KeycardId) -> u64 {
    admin
        .request(
            Msg::new()
                .with("action", "keycard_show")
                .with("id", id.to_string()),
        )
        .await
        .expect("show")
        .get("requester")
        .and_then(Value::as_u64)
        .expect("requester")
}

async fn make_token(admin: &Client, user: &str, ttl: u64) -> (String, String) {
    let made = admin
        .request(
            Msg::new()
                .with("action", "token_create")
                .with("user", user)
                .with("ttl", ttl),
        )
        .await
        .expect("token");
    (
        str_of(&made, "token").to_owned(),
        str_of(&made, "id").to_owned(),
    )
}

async fn token_login(s: &TestServer, token: &str) -> (Raw, Vec<Value>) {
    let mut r = Raw::connect(s.addr()).await;
    let v = r
        .call_stream(req(1, "auth").with("typ", "token").with("token", token))
        .await;
    (r, v)
}

/// Sends `get_value data.x` and says whether a value came back (`false`
/// for an error or a closed connection).
async fn reads_data(raw: &mut Raw, seq: i64) -> bool {
    raw.send(req(seq, "get_value").with("path", path("data.x")))
        .await;
    loop {
        match raw.try_recv(WAIT).await {
            Some(Some(v)) if seq_of(&v) == Some(seq) => return v.get("value").is_some(),
            Some(Some(_)) => continue,
            _ => return false,
        }
    }
}

/// Moves the server's manual clock on to `at` (Unix ms), if it is before.
fn move_to(clock: &ManualClock, at: u64) {
    if at > clock.now_ms() {
        clock.set(at);
    }
}

fn failed_with(v: &[Value]) -> Option<&str> {
    v.iter().find_map(code)
}

// ------------------------------------------- keycards that outlive themselves

/// Found in review (fixed): the login's `PendingCard` guard was settled
/// right after `authenticate`, before the awaits that follow (clearing
/// the throttle counters, the audit event, reading the ACL bindings and
/// capabilities) and before the session held the keycard. A client that
/// left at that moment — or a store error there — left an authenticated
/// keycard in the table that no connection held: it counted against
/// `max_per_user` and `max_total` for its whole duration (a day), so a
/// client could fill the table by logging in and hanging up (W7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_login_dropped_after_the_verdict_leaks_no_keycard() {
    let s = server(|c| c.max_auth_attempts = 100).await;
    let joe = keycard_proto::encode(
        &req(2, "auth")
            .with("typ", "_test")
            .with("ident", "joe")
            .into_value(),
    );
    for _ in 0..5 {
        // A failed login from this address: joe's next success has
        // counters to clear, a store write the login waits for.
        let mut r = Raw::connect(s.addr()).await;
        let v = r
            .call_stream(req(1, "auth").with("typ", "_test").with("ident", "nobody"))
            .await;
        assert_eq!(failed_with(&v), Some("auth_failed"));
        drop(r);
        // Log in and hang up at once.
        let mut sock = tokio::net::TcpStream::connect(s.addr())
            .await
            .expect("connect");
        sock.write_all(&joe).await.expect("send");
        drop(sock);
    }
    let t = Instant::now();
    while !s.handle.state.bouncer.is_empty() && t.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let table = s.handle.state.bouncer.table();
    let left = table.list(&Default::default(), None, 100);
    assert!(left.is_empty(), "keycards nobody holds: {left:?}");
    assert_eq!(table.pending(), 0);
}

/// Found in review (fixed): `logout`, and a new login replacing the
/// connection's keycard, removed the keycard from the table but left the
/// streams opened under it running. A watch kept delivering data after
/// its keycard was gone — past its expiry, and out of reach of any
/// revocation (the keycard is no longer in the table, so revoking the
/// user finds nothing): log out (or log in again as a harmless user)
/// right after opening the watch, and it lives forever (DESIGN §7.7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_logout_and_relogin_end_the_old_keycards_streams() {
    let s = server(|_| {}).await;
    let admin = login(&s, "root", None).await;
    for (round, relogin) in [false, true].into_iter().enumerate() {
        let mut joe = raw_login(&s, "joe").await;
        watch_data(&mut joe, 2).await;
        if relogin {
            joe.send(req(3, "auth").with("typ", "_test").with("ident", "ann"))
                .await;
        } else {
            joe.send(req(3, "logout")).await;
        }
        let (mut seen, _) = collect(&mut joe, WAIT, last_of(3)).await;
        let (more, _) = collect(&mut joe, Duration::from_millis(300), |_| false).await;
        seen.extend(more);
        assert!(
            seen.iter()
                .filter(|m| seq_of(m) == Some(3))
                .all(|m| code(m).is_none()),
            "{seen:?}"
        );
        // A change under the watched path after the keycard went away.
        admin
            .set(&p("data.x"), Value::from(10 + round as i64))
            .await
            .expect("write");
        let (more, _) = collect(&mut joe, Duration::from_millis(300), |_| false).await;
        seen.extend(more);
        let watch: Vec<&Value> = seen.iter().filter(|m| seq_of(m) == Some(2)).collect();
        assert!(
            watch.iter().all(|m| m.get("value").is_none()),
            "relogin={relogin}: the old keycard's watch still delivers: {watch:?}"
        );
        assert!(
            watch.iter().any(|m| state_of(m) == Some("end")),
            "relogin={relogin}: the old keycard's watch never ended: {watch:?}"
        );
    }
}

/// Found in review (fixed): the connection task learned of a revocation
/// or expiry only in the last branch of a biased `select!`, and not at all
/// while it had more than one batch of messages buffered. A client that
/// kept its socket full (pipelining `get_tock`, which needs no login) was
/// never closed after a revocation, and its open watch kept streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_a_flooding_client_is_still_closed_on_revocation() {
    let s = server(|_| {}).await;
    let admin = login(&s, "root", None).await;
    let mut joe = raw_login(&s, "joe").await;
    watch_data(&mut joe, 2).await;
    let (mut rd, mut wr) = joe.stream.into_split();
    let flood = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut seq = 10i64;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(6) {
            buf.clear();
            for _ in 0..2000 {
                seq += 1;
                buf.extend(keycard_proto::encode(&req(seq, "get_tock").into_value()));
            }
            if wr.write_all(&buf).await.is_err() {
                return;
            }
        }
    });
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = admin
        .request(
            Msg::new()
                .with("action", "keycard_revoke")
                .with("user", "joe"),
        )
        .await
        .expect("revoke");
    assert_eq!(r.get("revoked").and_then(Value::as_u64), Some(1));
    let revoked = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(3), reader).await;
    flood.abort();
    let closed = closed
        .expect("the revoked connection was never closed while the client flooded it")
        .expect("reader");
    assert!(
        closed.saturating_duration_since(revoked) < Duration::from_millis(500),
        "closed after {:?}",
        closed.saturating_duration_since(revoked)
    );
}

/// Found in review (fixed): `keep_alive` on a keycard whose time had just
/// run out (it passed the session's check a moment before the table's)
/// dropped it from the table without telling its connection. The reaper
/// then never saw it, so the connection's open streams never ended: a
/// client pipelining keep-alives across its keycard's expiry kept its
/// watch past the maximum lifetime. Here the table is reached the way the
/// action reaches it, right after the expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_keep_alive_at_expiry_still_ends_the_streams() {
    let mut clock = None;
    let s = server(|c| {
        c.keycards.duration = 1;
        clock = Some(manual_clock(c));
    })
    .await;
    let clock = clock.expect("clock");
    let admin = login(&s, "root", None).await;
    let mut joe = raw_login(&s, "joe").await;
    let who = whoami(&mut joe, 2).await;
    let id = keycard_of(&who);
    let expires = who.get("expires_at").and_then(Value::as_u64).expect("exp");
    let requester = requester_of(&admin, id).await;
    watch_data(&mut joe, 3).await;
    move_to(&clock, expires);
    let e = s
        .handle
        .state
        .bouncer
        .keep_alive(id, requester, None)
        .expect_err("expired");
    assert_eq!(e.code.as_str(), "keycard_expired");
    // Time goes on past the expiry's reaper bucket (100 ms wide).
    clock.advance(Duration::from_millis(100));
    let (seen, _) = collect(&mut joe, Duration::from_secs(1), ends(3)).await;
    assert!(
        seen.iter()
            .any(|m| seq_of(m) == Some(3) && code(m) == Some("keycard_expired")),
        "the watch outlived its keycard: {seen:?}"
    );
}

/// Found in review (fixed): a login arriving while the table was full
/// reaped expired keycards inside `Table::begin` and threw the list away,
/// so their connections were never told: their watches ran on past the
/// expiry. Filling the table is cheap (pending logins count), so an
/// attacker could arrange it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_a_full_table_reaping_at_login_still_ends_the_streams() {
    let mut clock = None;
    let s = server(|c| {
        c.keycards.duration = 1;
        c.keycards.max_total = 2;
        clock = Some(manual_clock(c));
    })
    .await;
    let clock = clock.expect("clock");
    let mut joe = raw_login(&s, "joe").await;
    let _ann = raw_login(&s, "ann").await;
    let expires = whoami(&mut joe, 2)
        .await
        .get("expires_at")
        .and_then(Value::as_u64)
        .expect("exp");
    watch_data(&mut joe, 3).await;
    // Past the expiry bucket, before the reaper's next pass (most likely).
    move_to(&clock, expires.div_ceil(100) * 100 + 1);
    let pending = s
        .handle
        .state
        .bouncer
        .begin("_test", "x", "", u64::MAX, None)
        .expect("room after reaping");
    s.handle.state.bouncer.refuse(pending);
    let (seen, _) = collect(&mut joe, Duration::from_secs(1), ends(3)).await;
    assert!(
        seen.iter()
            .any(|m| seq_of(m) == Some(3) && code(m) == Some("keycard_expired")),
        "the watch outlived its keycard: {seen:?}"
    );
}

/// Found in review (fixed): a token login checked the token's record,
/// then authenticated its keycard with the token as parent; a revocation
/// of the token between the two (record marked revoked, then the keycards
/// with that parent revoked) missed the new keycard, which had no parent
/// yet — the session lived on for the token's whole lifetime. Likewise a
/// revocation between `authenticate` and the session taking the keycard
/// was lost (the connection did not hold it yet, and `require_login`
/// trusts the session's copy). A race, so this runs it many times, in
/// parallel: a login that wins must not leave a working session behind a
/// revocation that finished. (Before the fix it caught a survivor in
/// about one run in two.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fixed_a_token_login_racing_its_revocation_never_outlives_it() {
    use sha2::{Digest, Sha256};
    const RACERS: u64 = 8;
    const ROUNDS: u64 = 40;
    let s = server(|c| c.max_auth_attempts = 10_000).await;
    let admin = login(&s, "root", None).await;
    // The tokens, written in one batch as `token_create` writes them.
    let mut tokens = Vec::new();
    let mut ops = Vec::new();
    for _ in 0..RACERS * ROUNDS {
        let id = KeycardId::random();
        let secret = keycard_proto::hex::encode(&KeycardId::random().0)
            + &keycard_proto::hex::encode(&KeycardId::random().0);
        let token = format!("kct_{id}_{secret}");
        ops.push(Op::Put {
            path: Path::new(vec![
                Elem::Nil,
                "keycard".into(),
                id.to_string().as_str().into(),
            ]),
            value: Msg::new()
                .with("domain", Path::root().to_value())
                .with("method", "token")
                .with("user", "joe")
                .with("user_method", "_test")
                .with("state", "authenticated")
                .with("issued_at", now_ms())
                .with("expires_at", now_ms() + 3_600_000)
                .with(
                    "sha256",
                    Value::Bin(Sha256::digest(token.as_bytes()).to_vec()),
                )
                .into_value(),
            cond: Cond::Absent,
            idem: false,
        });
        tokens.push((token, id.to_string()));
    }
    s.handle.state.store.write(ops).await.expect("tokens");
    let addr = s.addr();
    let mut racers = Vec::new();
    for (r, mine) in tokens.chunks(ROUNDS as usize).enumerate() {
        let mine = mine.to_vec();
        let admin = admin.clone();
        racers.push(tokio::spawn(async move {
            let mut survivors = Vec::new();
            for (round, (token, tid)) in mine.into_iter().enumerate() {
                let login = tokio::spawn(async move {
                    let mut c = Raw::connect(addr).await;
                    c.send(req(1, "auth").with("typ", "token").with("token", token))
                        .await;
                    c
                });
                // Vary where the revocation lands in the login.
                let spin = Instant::now();
                let wait = (round as u64 * 37 + r as u64 * 11) % 600;
                while spin.elapsed() < Duration::from_micros(wait) {
                    std::hint::spin_loop();
                }
                admin
                    .request(
                        Msg::new()
                            .with("action", "keycard_revoke")
                            .with("id", tid.as_str()),
                    )
                    .await
                    .expect("revoke");
                let mut c = login.await.expect("login");
                let (seen, _) = collect(&mut c, WAIT, last_of(1)).await;
                let ok = seen.iter().all(|m| code(m).is_none());
                if ok && reads_data(&mut c, 2).await {
                    survivors.push((r, round));
                }
            }
            survivors
        }));
    }
    let mut survivors = Vec::new();
    for racer in racers {
        survivors.extend(racer.await.expect("racer"));
    }
    assert!(
        survivors.is_empty(),
        "sessions outlived their token's revocation: {survivors:?}"
    );
}

// ------------------------------------------------------------- bounded state

/// Found in review (fixed): every keep-alive that moved a keycard's expiry
/// pushed another id into the expiry wheel, and every keycard that left
/// the table left its entry behind, both until their bucket came up — a
/// day later. Pipelined keep-alives (no hashing, no throttle) grew the
/// server's memory by 16 bytes a millisecond per connection, without
/// bound (W7). The wheel now stays within twice the table plus a little.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_keep_alive_spam_does_not_grow_the_expiry_wheel() {
    let mut clock = None;
    let s = server(|c| clock = Some(manual_clock(c))).await;
    let clock = clock.expect("clock");
    let mut joe = raw_login(&s, "joe").await;
    let mut seq = 10;
    // 1.5 s of keep-alives, every one moving the expiry.
    for _ in 0..300 {
        for _ in 0..50 {
            seq += 1;
            joe.send(req(seq, "keep_alive")).await;
        }
        let (seen, _) = collect(&mut joe, WAIT, |v| seq_of(v) == Some(seq)).await;
        assert!(seen.iter().all(|m| code(m).is_none()), "{seen:?}");
        clock.advance(Duration::from_millis(5));
    }
    // Logins that end leave nothing behind either.
    for _ in 0..200 {
        let r = raw_login(&s, "ann").await;
        drop(r);
    }
    wait_for("the closed connections' keycards to go", || {
        s.handle.state.bouncer.len() == 1
    })
    .await;
    let table = s.handle.state.bouncer.table();
    assert!(
        table.queued() <= 2 * table.len() + 64,
        "{} ids queued for {} keycards",
        table.queued(),
        table.len()
    );
}

/// Found in review (fixed): the durable keycards (tokens) were read with
/// one scan of at most 10 000 records, for listings and also for revoking
/// by user and for deleting expired records. With more tokens than that,
/// `keycard_revoke {user}` silently skipped the ones past the first
/// 10 000 (in id order): the user's token kept working after its user was
/// revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_revoking_a_user_reaches_every_token() {
    let s = server(|_| {}).await;
    let admin = login(&s, "root", None).await;
    // 10 001 other tokens, all sorting before any real id.
    let ops: Vec<Op> = (0..10_001u64)
        .map(|i| Op::Put {
            path: Path::new(vec![
                Elem::Nil,
                "keycard".into(),
                format!("00000000{i:024x}").as_str().into(),
            ]),
            value: Msg::new()
                .with("method", "token")
                .with("user", "filler")
                .with("user_method", "_test")
                .with("state", "authenticated")
                .with("issued_at", now_ms())
                .with("expires_at", now_ms() + 3_600_000)
                .with("sha256", Value::Bin(vec![0; 32]))
                .into_value(),
            cond: Cond::Any,
            idem: false,
        })
        .collect();
    s.handle.state.store.write(ops).await.expect("fillers");
    let (token, tid) = make_token(&admin, "joe", 600).await;
    assert!(!tid.starts_with("00000000"));
    let r = admin
        .request(
            Msg::new()
                .with("action", "keycard_revoke")
                .with("user", "joe"),
        )
        .await
        .expect("revoke");
    assert_eq!(r.get("revoked").and_then(Value::as_u64), Some(1), "{r:?}");
    let (_r, v) = token_login(&s, &token).await;
    assert_eq!(failed_with(&v), Some("auth_failed"), "{v:?}");
}

/// Found in review (fixed): the compiled-ACL cache kept every
/// `(domain, name)` it was asked for, forever. `test_acl` with `acl` names
/// any ACL, existing or not, and a domain's root may call it: a tenant
/// could fill the server's memory with junk names (each up to a message's
/// size). Now only existing ACLs are cached, and at most a few thousand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_test_acl_junk_names_do_not_fill_the_acl_cache() {
    let s = domain_server().await;
    let (mut droot, v) = domain_login(&s, "root", "*", path("org.acme")).await;
    assert!(failed_with(&v).is_none(), "{v:?}");
    let filler = "x".repeat(1000);
    for batch in 0..6i64 {
        for i in 0..500 {
            let seq = 10 + batch * 500 + i;
            droot
                .send(
                    req(seq, "test_acl")
                        .with("path", path("data"))
                        .with("acl", format!("{filler}{seq}")),
                )
                .await;
        }
        let last = 10 + batch * 500 + 499;
        let (seen, closed) = collect(&mut droot, WAIT, last_of(last)).await;
        assert!(!closed);
        // Each is answered `no_such_acl` (docs/PROTOCOL.md, `test_acl`).
        assert!(
            seen.iter()
                .all(|m| code(m).is_none_or(|c| c == "no_such_acl")),
            "{:?}",
            seen.last()
        );
    }
    assert!(
        s.handle.state.acls.len() < 100,
        "{} compiled ACLs cached",
        s.handle.state.acls.len()
    );
}

// ---------------------------------------------------------------- domains

/// Found in review (fixed): a domain's `root` user holds every capability
/// (it is super-root of its domain), and two actions that are not about
/// the domain's subtree only checked the capability: `token_create`
/// stored durable keycards in the server's own reserved root (unbounded,
/// and documented as reserved to the server's own users), and
/// `audit_tail` returned the server-wide audit log — every tenant's and
/// the server's own logins, users and addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_a_domain_root_cannot_create_tokens_or_read_the_server_audit_log() {
    let s = domain_server().await;
    // Something in the audit log from outside the domain.
    let g = Client::connect(s.addr()).await.expect("connect");
    g.login(
        ClientRegistry::make("_test", Some("joe"))
            .expect("m")
            .as_ref(),
    )
    .await
    .expect("global joe");
    let (mut droot, v) = domain_login(&s, "root", "*", path("org.acme")).await;
    assert!(failed_with(&v).is_none(), "{v:?}");
    let v = droot
        .call(req(2, "token_create").with("user", "joe").with("ttl", 3600))
        .await;
    assert_eq!(code(&v), Some("permission_denied"), "{v:?}");
    let v = droot.call(req(3, "audit_tail")).await;
    assert_eq!(code(&v), Some("permission_denied"), "{v:?}");
    // The server's own root still can.
    let admin = Client::connect(s.addr()).await.expect("connect");
    admin
        .login(ClientRegistry::make("root", None).expect("m").as_ref())
        .await
        .expect("root");
    let v = admin
        .request(Msg::new().with("action", "audit_tail"))
        .await
        .expect("audit");
    assert!(matches!(v.get("result"), Some(Value::Array(_))), "{v:?}");
}

/// Found in review (fixed): "an unknown domain fails exactly as a wrong
/// password does" did not hold. A method the domain does not accept got
/// `auth_method` listing the domain's methods, an unknown domain
/// `auth_failed`, so any method name told whether a domain exists; and a
/// login to an unknown domain was neither counted nor throttled, so five
/// failures closed the connection for a real domain and never for an
/// unknown one (W3). Now both run the method without a record and fail
/// alike, counted; a domain path too long to store is refused up front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_an_unknown_domain_fails_exactly_like_a_known_one() {
    let s = domain_server().await;
    for domain in ["org.acme", "org.nowhere", "org.acme.data"] {
        // A method the domain does not accept (it has an `_anon` user).
        let (_r, v) = domain_login(&s, "_anon", "anon", path(domain)).await;
        assert_eq!(failed_with(&v), Some("auth_failed"), "{domain}: {v:?}");
        // Five failures close the connection, whatever the domain.
        let mut r = Raw::connect(s.addr()).await;
        let mut last = None;
        for i in 0..5 {
            let v = r
                .call_stream(
                    req(i + 1, "auth")
                        .with("typ", "_test")
                        .with("ident", "mallory")
                        .with("chroot", path(domain)),
                )
                .await;
            last = failed_with(&v).map(str::to_owned);
        }
        assert_eq!(last.as_deref(), Some("too_many_attempts"), "{domain}");
    }
    // The real thing still works.
    let (mut joe, v) = domain_login(&s, "_test", "joe", path("org.acme")).await;
    assert!(failed_with(&v).is_none(), "{v:?}");
    assert!(reads_data(&mut joe, 2).await);
    // A chroot whose key could not be stored is a bad request, not a
    // throttle record of that size.
    let long: Vec<Elem> = (0..40).map(|_| "x".repeat(1000).as_str().into()).collect();
    let (_r, v) = domain_login(&s, "_test", "joe", Path::new(long).to_value()).await;
    assert_eq!(failed_with(&v), Some("bad_request"), "{v:?}");
}

/// Open (not fixed): keycards know a domain's user as `NAME@DOMAIN` and a
/// server user by its bare name, and ownership compares those strings.
/// A server user whose name contains `@` (an e-mail address; `_anon` here
/// for brevity, SCRAM, `password` and OPAQUE take such names too) is the
/// same owner as a tenant's user of the same method in the domain at the
/// part after the `@`: the tenant's root can create that user and, logged
/// in as it, list, show and revoke the server user's keycards (and
/// tokens), and use up its `max_per_user`. Fixed: keycards carry the
/// domain apart from the name, and owners are compared as (name, domain,
/// method).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_a_domain_user_does_not_own_a_server_user_named_like_it() {
    let s = domain_server().await;
    let admin = Client::connect(s.addr()).await.expect("connect");
    admin
        .login(ClientRegistry::make("root", None).expect("m").as_ref())
        .await
        .expect("root");
    admin
        .set_user(
            ClientRegistry::make("_anon", Some("joe@org.acme"))
                .expect("m")
                .as_ref(),
        )
        .await
        .expect("server user joe@org.acme");
    let accept = |seq| {
        req(seq, "set_auth_typ")
            .with("typ", "_test")
            .with("accept", Value::Array(vec!["root".into(), "_anon".into()]))
    };
    admin
        .request(accept(0).with("seq", Value::Nil))
        .await
        .expect("accept _anon");
    // The tenant's root: a user joe of `_anon` in its domain.
    let (mut droot, v) = domain_login(&s, "root", "*", path("org.acme")).await;
    assert!(failed_with(&v).is_none(), "{v:?}");
    let v = droot
        .call(
            req(2, "auth_set")
                .with("typ", "_anon")
                .with("ident", "joe")
                .with("data", Value::Map(Vec::new())),
        )
        .await;
    assert!(code(&v).is_none(), "{v:?}");
    let v = droot.call(accept(3)).await;
    assert!(code(&v).is_none(), "{v:?}");
    let victim = login(&s, "_anon", Some("joe@org.acme")).await;
    let victim_id = KeycardId::parse(str_of(
        &victim
            .request(Msg::new().with("action", "whoami"))
            .await
            .expect("whoami"),
        "keycard",
    ))
    .expect("id");
    let (mut tenant, v) = domain_login(&s, "_anon", "joe", path("org.acme")).await;
    assert!(failed_with(&v).is_none(), "{v:?}");
    let v = tenant
        .call(req(2, "keycard_show").with("id", victim_id.to_string()))
        .await;
    assert_eq!(code(&v), Some("not_found"), "{v:?}");
}

// ------------------------------------------------------------ secrets, W9

/// Found in review (fixed): a token login was throttled and audited under
/// the first 36 characters of whatever the client sent as `token`, even
/// when that was not a `kct_<id>` prefix. A client that sent a secret in
/// the wrong shape (the 64-hex secret alone, a password) had its first 36
/// characters written to the audit log, the tracing log and the throttle
/// records in the store (W9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_a_malformed_token_is_never_logged() {
    let s = server(|_| {}).await;
    let secret = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let (_r, v) = token_login(&s, secret).await;
    assert_eq!(failed_with(&v), Some("auth_failed"));
    let (_r, v) = token_login(&s, &format!("kct_{secret}")).await;
    assert_eq!(failed_with(&v), Some("auth_failed"));
    let log = audit_log_with(&s, |l| l.matches("\"event\":\"login\"").count() >= 2).await;
    assert!(!log.contains(&secret[..16]), "{log}");
    let at_rest = s
        .handle
        .state
        .store
        .scan_up_to(
            &Path::new(vec![Elem::Nil, "throttle".into()]),
            Default::default(),
            1000,
        )
        .await
        .expect("scan");
    assert!(
        !format!("{at_rest:?}").contains(&secret[..16]),
        "{at_rest:?}"
    );
}

// ------------------------------------------------ attacks that were handled

/// Handled: keycard ids, filters and limits of every shape get clear
/// errors; nothing panics and the connection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_hostile_keycard_requests_get_errors() {
    let s = server(|_| {}).await;
    let mut joe = raw_login(&s, "joe").await;
    let huge = Value::from(u64::MAX);
    let bad: Vec<Msg> = vec![
        req(2, "keycard_show"),
        req(3, "keycard_show").with("id", Value::Nil),
        req(4, "keycard_show").with("id", "ü".repeat(16)),
        req(5, "keycard_show").with("id", Value::Bin(vec![0; 16])),
        req(6, "keycard_revoke").with("id", Value::Nil),
        req(7, "keycard_revoke").with("id", "0".repeat(33)),
        req(8, "keycard_list").with("after", 5),
        req(9, "keycard_list").with("requester", -1),
        req(10, "keycard_list").with("parent", "x"),
        req(11, "keycard_list").with("limit", "many"),
        req(12, "keep_alive").with("ttl", -5),
        req(13, "keep_alive").with("ttl", 1.5),
        req(14, "token_create").with("user", "joe"),
        req(15, "auth").with("typ", "token"),
        req(16, "auth")
            .with("typ", "token")
            .with("token", "k".repeat(300)),
        req(17, "auth").with("typ", "token").with("token", 7),
        req(18, "keycard_revoke").with("user", 5),
    ];
    for m in bad {
        let seq = seq_of(&m.clone().into_value()).expect("seq");
        joe.send(m).await;
        let (seen, closed) = collect(&mut joe, WAIT, last_of(seq)).await;
        assert!(!closed, "{seen:?}");
        assert!(seen.iter().any(|v| code(v).is_some()), "{seen:?}");
    }
    // Out-of-range numbers are refused or clamped, never wrapped.
    for m in [
        req(30, "keep_alive").with("ttl", huge.clone()),
        req(31, "keycard_list").with("limit", huge),
        req(32, "keep_alive").with("ttl", i64::MAX),
        req(33, "keycard_list").with("limit", i64::MAX),
    ] {
        let seq = seq_of(&m.clone().into_value()).expect("seq");
        joe.send(m).await;
        let (seen, closed) = collect(&mut joe, WAIT, last_of(seq)).await;
        assert!(!closed, "{seen:?}");
    }
    assert!(reads_data(&mut joe, 40).await);
}

/// A user name of 100 kB would become a 100 kB throttle key per
/// failed login: names are capped (at 256 bytes) before anything is
/// stored, for logins and for records alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_huge_user_names_are_refused_before_anything_is_stored() {
    let s = common::start().await;
    let mut r = Raw::connect(s.addr()).await;
    let huge = "x".repeat(100_000);
    for seq in 1..4 {
        let v = r
            .call_stream(
                req(seq, "auth")
                    .with("typ", "_test")
                    .with("ident", huge.as_str()),
            )
            .await;
        assert!(
            v.iter().any(|m| code(m) == Some("bad_request")),
            "{:?}",
            &v[..1]
        );
    }
    let v = r
        .call(
            req(5, "auth_set")
                .with("typ", "_anon")
                .with("ident", "y".repeat(257))
                .with("data", Value::Map(Vec::new())),
        )
        .await;
    assert_eq!(code(&v), Some("bad_request"));
    // Nothing under the throttle subtree or the auth records.
    let v = r
        .call_stream(req(6, "get_tree_internal").with("path", Value::Array(vec![])))
        .await;
    let big = v.iter().any(|m| format!("{m:?}").len() > 10_000);
    assert!(!big, "a huge name was stored");
    // 256 bytes is fine.
    let v = r
        .call(
            req(7, "auth_set")
                .with("typ", "_anon")
                .with("ident", "z".repeat(256))
                .with("data", Value::Map(Vec::new())),
        )
        .await;
    assert!(code(&v).is_none(), "{v:?}");
}
