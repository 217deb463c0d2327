//! `router`: a script of client operations played against a real msgpack
//! connection (`conn::serve` over an in-memory pipe, an open server on
//! the in-memory store, tokio's clock paused so that waiting costs
//! nothing), every answer checked against a model of the client's
//! outstanding seqs.
//!
//! The script's bytes, one operation each (a byte or two of arguments):
//! a request (seq 1..=6 so that seqs collide; one-shot actions, `get_tree`
//! and `watch` with small ack windows, the `_test` record dialogue of
//! `auth_set`, an unknown action, malformed fields, `stop`), a
//! continuation or an ack under a seq, the connection's window, malformed
//! messages, undecodable bytes, a truncated message, or reading what has
//! arrived.
//!
//! What is checked (docs/PROTOCOL.md, "Connection" and "Where keycard is
//! stricter than DistKV"):
//! - a request on a seq still in flight is refused with `seq_in_use` and
//!   leaves the first alone (when the first cannot have ended — a watch,
//!   or a dialogue waiting for the client — it must be refused; when it
//!   may have ended, either is right, and the answers say which
//!   happened); `too_many_requests` only beyond `max_outstanding`;
//! - every accepted request gets exactly one final answer (a reply, an
//!   error, or its stream's `end`) and nothing after it; a stream's
//!   messages count `wseq` 1, 2, … from `start`; a dialogue asks once,
//!   and its result comes only after the client answered;
//! - no answer names a seq the client never used; every malformed message
//!   gets its one error, and a continuation nobody waits for gets one too;
//! - undecodable bytes are answered with an error, then the connection
//!   closes; a message left half-sent is answered with `timeout` and the
//!   connection closes; nothing panics;
//! - nothing hangs: once the client acks and stops its streams, every
//!   request but an unstopped watch or dialogue has ended, and the
//!   connection's task ends when the client hangs up. Each wait is
//!   bounded on the paused clock, so a hang fails instead of blocking.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use keycard_auth::{Argon2Params, MethodSecrets, Registry, SecretKey};
use keycard_proto::{encode, Decoder, Limits, Msg, MsgExt, Value};
use keycard_store::{MemOptions, MemStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

use crate::clock::ManualClock;
use crate::state::ServerState;

/// Requests in flight a connection may hold (small, so the fuzzer hits it).
const MAX_OUTSTANDING: usize = 4;
/// The seqs the script's requests use: few, so that they collide.
const SEQS: i64 = 6;
/// Where the drain's `stop` requests start (never a script's seq).
const DRAIN_SEQ: i64 = 100;
/// Operations read from one input at most.
const MAX_OPS: usize = 64;
/// `message_timeout` of the connection under test, in seconds.
const MESSAGE_TIMEOUT: u64 = 5;
/// How long a connection that has nothing more to say stays quiet before
/// "read what has arrived" stops reading (on the paused clock: it only
/// passes once every task waits).
const QUIET: Duration = Duration::from_millis(10);
/// The longest any step may take before it counts as a hang.
const HANG: Duration = Duration::from_secs(20);
/// Names the dialogue may create.
const IDENTS: [&str; 2] = ["joe", "bob"];

// The errors the connection itself sends (conn.rs), by text: a malformed
// message's, and those about continuations.
const NOT_A_MAP: &str = "a message must be a map";
const SEQ_NOT_INT: &str = "'seq' must be an integer";
const NO_SEQ: &str = "message without 'seq'";
const ACTION_NOT_STR: &str = "'action' must be a string";
const SEQ0_ACTION: &str = "seq 0 is reserved for the greeting and flow control";
const SEQ0_NO_QLEN: &str = "seq 0 carries only 'qlen'";
const BAD_ACK: &str = "'ack' must be a non-negative integer";
const NOBODY_WAITS: &str = "message without 'action' for no outstanding request";
const UNEXPECTED: &str = "unexpected message in this exchange";

/// What a request answers with, as far as the model cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// One reply (or an error).
    OneShot,
    /// `get_tree`: a stream that ends by itself once acked.
    Tree,
    /// `watch`: a stream that ends only when stopped.
    Watch,
    /// `auth_set`'s `_test` dialogue: a stream that asks the client a
    /// question (`GiveName`) and waits for its answer.
    Dialogue,
}

/// One request the client sent and has not seen the end of.
#[derive(Debug)]
struct Req {
    kind: Kind,
    action: &'static str,
    /// The connection may have refused it (its seq was busy, or the
    /// connection full); settled by a refusal or by its first answer.
    maybe_refused: bool,
    /// Its seq was held by a request that could not have ended: it must
    /// be refused.
    must_refuse: bool,
    started: bool,
    wseq: u64,
    /// An error came inside its stream: only the end may follow.
    errored: bool,
    /// The dialogue asked its question.
    asked: bool,
    /// The client answered it.
    answered: bool,
    /// A `stop` for it was sent.
    stopped: bool,
}

impl Req {
    fn new(kind: Kind, action: &'static str) -> Req {
        Req {
            kind,
            action,
            maybe_refused: false,
            must_refuse: false,
            started: false,
            wseq: 0,
            errored: false,
            asked: false,
            answered: false,
            stopped: false,
        }
    }

    /// It cannot end before the client does something.
    fn pinned(&self) -> bool {
        !self.errored
            && self.started
            && match self.kind {
                Kind::Watch => true,
                Kind::Dialogue => self.asked && !self.answered,
                Kind::OneShot | Kind::Tree => false,
            }
    }
}

/// The client's view of its connection.
#[derive(Default)]
struct Model {
    /// Per seq, the requests not seen to end, in the order sent (only the
    /// first can be running; the others may yet be refused).
    live: HashMap<i64, Vec<Req>>,
    /// Every seq the client put in a message.
    used: HashSet<i64>,
    /// Errors the connection owes for malformed messages, by seq and text.
    owed: HashMap<(Option<i64>, &'static str), u32>,
    /// Errors it may send for continuations (at most this many per seq).
    may_owe: HashMap<i64, u32>,
    /// Undecodable bytes or a half-sent message went out: an error, then
    /// the end of the connection, are due.
    closing: bool,
    greeted: bool,
    /// The code of the error that said why the connection closes.
    why_closed: Option<String>,
    /// The connection closed.
    eof: bool,
    /// What happened, for the panic message.
    log: Vec<String>,
}

impl Model {
    fn live_count(&self) -> usize {
        self.live.values().map(Vec::len).sum()
    }

    fn fail(&self, what: String) -> ! {
        let start = self.log.len().saturating_sub(60);
        panic!(
            "router: {what}\n{}\nFAILED: {what}",
            self.log[start..].join("\n")
        );
    }

    /// Checks one message from the connection.
    fn receive(&mut self, m: Value) {
        self.log.push(format!("<- {m:?}"));
        if !matches!(m, Value::Map(_)) {
            self.fail(format!("a message that is not a map: {m:?}"));
        }
        let seq = match m.get("seq") {
            None => None,
            Some(v) => match v.as_i64() {
                Some(s) => Some(s),
                None => self.fail(format!("a seq that is not an integer: {m:?}")),
            },
        };
        if !self.greeted {
            if seq != Some(0) || m.get("version").is_none() {
                self.fail(format!("the first message is not the greeting: {m:?}"));
            }
            self.greeted = true;
            return;
        }
        if let Some(s) = seq {
            if !self.used.contains(&s) {
                self.fail(format!("an answer names seq {s}, never used"));
            }
            if m.get("tock").is_none() {
                self.fail(format!("an answer without a tock: {m:?}"));
            }
        }
        if let Some(e) = m.get("error") {
            let text = e.as_str().unwrap_or_default().to_owned();
            let code = m.get("code").and_then(Value::as_str).unwrap_or_default();
            if self.stray(seq, &text, code) {
                return;
            }
        }
        let Some(s) = seq else {
            self.fail(format!("a message without seq nothing asked for: {m:?}"));
        };
        if s == 0 {
            self.fail(format!("an answer at seq 0: {m:?}"));
        }
        self.attribute(s, &m);
    }

    /// An error that is no request's answer: a refusal, or the
    /// connection's own about a message. Returns whether it was one.
    fn stray(&mut self, seq: Option<i64>, text: &str, code: &str) -> bool {
        if code == "seq_in_use" || code == "too_many_requests" {
            let Some(s) = seq else {
                self.fail(format!("a refusal without seq: {text:?}"));
            };
            let total = self.live_count();
            let reqs = self.live.entry(s).or_default();
            // The one that may be refused is the last sent (one at most:
            // the script settles before sending another).
            let Some(i) = reqs.iter().rposition(|r| r.maybe_refused) else {
                self.fail(format!(
                    "{code} for seq {s}, where no request could be refused"
                ));
            };
            if code == "seq_in_use" && i == 0 {
                self.fail(format!("seq_in_use for seq {s}, not in use"));
            }
            if code == "too_many_requests" && total <= MAX_OUTSTANDING {
                self.fail(format!(
                    "too_many_requests with {} requests in flight at most",
                    total - 1
                ));
            }
            reqs.remove(i);
            if reqs.is_empty() {
                self.live.remove(&s);
            }
            return true;
        }
        if seq.is_none() && self.closing && ["bad_request", "too_large", "timeout"].contains(&code)
        {
            self.why_closed = Some(code.to_owned());
            return true;
        }
        for known in [
            NOT_A_MAP,
            SEQ_NOT_INT,
            NO_SEQ,
            ACTION_NOT_STR,
            SEQ0_ACTION,
            SEQ0_NO_QLEN,
            BAD_ACK,
            NOBODY_WAITS,
            UNEXPECTED,
        ] {
            if text != known {
                continue;
            }
            if let Some(n) = self.owed.get_mut(&(seq, known)).filter(|n| **n > 0) {
                *n -= 1;
                return true;
            }
            if let Some(n) = seq
                .filter(|_| known == NOBODY_WAITS || known == UNEXPECTED)
                .and_then(|s| self.may_owe.get_mut(&s))
                .filter(|n| **n > 0)
            {
                *n -= 1;
                return true;
            }
            self.fail(format!("an error nothing asked for: seq {seq:?}, {text:?}"));
        }
        false
    }

    /// A message for the request running under `s`.
    fn attribute(&mut self, s: i64, m: &Value) {
        let Some(reqs) = self.live.get_mut(&s) else {
            self.fail(format!(
                "an answer for seq {s}, which has no request in flight: {m:?}"
            ));
        };
        let r = &mut reqs[0];
        r.maybe_refused = false;
        let state = m.state();
        let is_error = m.get("error").is_some();
        let verdict: Result<bool, String> = if r.must_refuse {
            Err(format!("seq {s} was busy, its request is answered: {m:?}"))
        } else {
            match m.get("wseq").map(Value::as_u64) {
                Some(None) => Err(format!("a wseq that is not a count: {m:?}")),
                Some(Some(w)) => step_stream(r, w, state, is_error, m),
                None if !r.started => {
                    // The one answer of a one-shot request, or a stream's
                    // error before it started.
                    if state == Some("end") || state == Some("start") {
                        Err(format!("a stream message without wseq: {m:?}"))
                    } else {
                        Ok(true)
                    }
                }
                // A stream ended from outside: `stop`'s end (no wseq), or
                // an error then the end.
                None if is_error && !r.errored => {
                    r.errored = true;
                    Ok(false)
                }
                None if state == Some("end") => Ok(true),
                None => Err(format!("a stream message without wseq: {m:?}")),
            }
        };
        match verdict {
            Err(what) => self.fail(what),
            Ok(false) => {}
            Ok(true) => {
                let r = reqs.remove(0);
                if reqs.is_empty() {
                    self.live.remove(&s);
                }
                self.log.push(format!("   seq {s} ({}) ended", r.action));
            }
        }
    }

    /// After the connection went quiet: everything sent has been routed,
    /// so every error owed has come, and a request not refused by now was
    /// accepted.
    fn quiet(&mut self) {
        if self.eof {
            return;
        }
        if let Some(((seq, text), n)) = self.owed.iter().find(|(_, n)| **n > 0) {
            let what = format!("{n} error(s) {text:?} for seq {seq:?} never came");
            self.fail(what);
        }
        let mut wrong = None;
        for (s, reqs) in &mut self.live {
            for r in reqs.iter_mut() {
                if r.must_refuse {
                    wrong = Some(*s);
                }
                r.maybe_refused = false;
            }
        }
        if let Some(s) = wrong {
            self.fail(format!(
                "seq {s} was busy; a second request on it was not refused"
            ));
        }
    }
}

/// A stream message numbered `w`: whether it ends the stream.
fn step_stream(
    r: &mut Req,
    w: u64,
    state: Option<&str>,
    is_error: bool,
    m: &Value,
) -> Result<bool, String> {
    if !r.started {
        if w != 1 || state != Some("start") {
            return Err(format!("a stream that does not open with start: {m:?}"));
        }
        r.started = true;
        r.wseq = 1;
        return Ok(false);
    }
    if w != r.wseq + 1 {
        return Err(format!("wseq {w} after {}: {m:?}", r.wseq));
    }
    if r.errored && state != Some("end") {
        return Err(format!("a stream goes on after its error: {m:?}"));
    }
    r.wseq = w;
    if is_error {
        r.errored = true;
    }
    if r.kind == Kind::Dialogue {
        if m.get("step").and_then(Value::as_str) == Some("GiveName") {
            if r.asked {
                return Err(format!("the dialogue asks twice: {m:?}"));
            }
            r.asked = true;
        }
        if m.get("changed").is_some() && !r.answered {
            return Err(format!("a dialogue's result before its answer: {m:?}"));
        }
    }
    Ok(state == Some("end"))
}

/// The client's end of the connection.
struct Client {
    rd: ReadHalf<DuplexStream>,
    wr: WriteHalf<DuplexStream>,
    decoder: Decoder,
    model: Model,
    buf: Vec<u8>,
}

impl Client {
    /// Reads and checks what arrives until the connection goes quiet (or
    /// closes).
    async fn settle(&mut self) {
        self.read_until(QUIET).await;
        self.model.quiet();
    }

    /// Reads until nothing arrives for `quiet` or the connection closes.
    async fn read_until(&mut self, quiet: Duration) {
        while !self.model.eof {
            match tokio::time::timeout(quiet, self.rd.read(&mut self.buf)).await {
                Err(_) => return,
                Ok(Ok(0) | Err(_)) => {
                    self.model.log.push("<- EOF".into());
                    self.model.eof = true;
                }
                Ok(Ok(n)) => {
                    self.decoder.feed(&self.buf[..n]);
                    loop {
                        match self.decoder.next_value() {
                            Ok(Some(v)) => self.model.receive(v),
                            Ok(None) => break,
                            Err(e) => self.model.fail(format!("undecodable answer: {e}")),
                        }
                    }
                }
            }
        }
    }

    /// Writes `bytes`, reading whenever the pipe is full (a client that
    /// stops reading stops being served: that is no hang).
    async fn send_bytes(&mut self, bytes: &[u8]) {
        let mut pos = 0;
        let mut stuck = Duration::ZERO;
        while pos < bytes.len() && !self.model.eof {
            match tokio::time::timeout(QUIET, self.wr.write(&bytes[pos..])).await {
                Ok(Ok(0) | Err(_)) => {
                    // The connection is gone; what it said is still to read.
                    self.read_until(QUIET).await;
                    return;
                }
                Ok(Ok(n)) => {
                    pos += n;
                    stuck = Duration::ZERO;
                }
                Err(_) => {
                    stuck += QUIET;
                    if stuck > HANG {
                        self.model.fail("the connection reads nothing".into());
                    }
                    self.read_until(QUIET).await;
                }
            }
        }
    }

    async fn send(&mut self, v: Value) {
        self.model.log.push(format!("-> {v:?}"));
        self.send_bytes(&encode(&v)).await;
    }

    /// Sends request `msg` under `seq`, noting what may come of it.
    async fn request(&mut self, seq: i64, kind: Kind, action: &'static str, msg: Msg) {
        // One request whose fate is open per seq: the answers must say
        // which request they belong to.
        let open = |m: &Model| {
            m.live
                .get(&seq)
                .is_some_and(|r| r.iter().any(|r| r.maybe_refused))
        };
        if open(&self.model) {
            self.settle().await;
            if self.model.eof {
                return;
            }
        }
        self.model.used.insert(seq);
        let mut req = Req::new(kind, action);
        if let Some(head) = self.model.live.get(&seq).and_then(|r| r.first()) {
            req.maybe_refused = true;
            req.must_refuse = head.pinned();
        }
        if self.model.live_count() >= MAX_OUTSTANDING {
            req.maybe_refused = true;
        }
        self.model.live.entry(seq).or_default().push(req);
        let msg = msg.with("seq", seq).with("action", action);
        self.send(msg.into_value()).await;
    }

    /// Sends a message without action under `seq` (a continuation).
    async fn continuation(&mut self, seq: i64, msg: Msg) {
        let waiting = |m: &Model| {
            m.live
                .get(&seq)
                .and_then(|r| r.first())
                .is_some_and(|r| r.kind == Kind::Dialogue && r.asked && !r.answered)
        };
        if self.model.live.contains_key(&seq) && !waiting(&self.model) {
            // Where the request is matters: let it get there.
            self.settle().await;
            if self.model.eof {
                return;
            }
        }
        self.model.used.insert(seq);
        let end = msg.clone().into_value().state() == Some("end");
        match self.model.live.get_mut(&seq).and_then(|r| r.first_mut()) {
            // Its answer, even before the question came (held back by the
            // window): the dialogue listens from before it asks.
            Some(r) if r.kind == Kind::Dialogue && r.started && !r.answered => r.answered = true,
            // An answered dialogue may still take it, silently.
            Some(r) if r.kind == Kind::Dialogue => {
                *self.model.may_owe.entry(seq).or_default() += 1;
            }
            // DistKV's client ends its side with a bare end: ignored.
            _ if end => {}
            _ => {
                *self
                    .model
                    .owed
                    .entry((Some(seq), NOBODY_WAITS))
                    .or_default() += 1
            }
        }
        self.send(msg.with("seq", seq).into_value()).await;
    }

    /// Sends a malformed message, owed one error `text` under `seq`.
    async fn malformed(&mut self, v: Value, seq: Option<i64>, text: &'static str) {
        if let Some(s) = seq {
            self.model.used.insert(s);
        }
        *self.model.owed.entry((seq, text)).or_default() += 1;
        self.send(v).await;
    }

    /// The connection must end within `within`, saying why (an error
    /// without seq, its code one of `why`; the answers of requests already
    /// running may still come after it).
    async fn expect_close(&mut self, within: Duration, why: &[&str]) {
        self.model.closing = true;
        self.read_until(within).await;
        if !self.model.eof {
            self.model.fail("the connection stays open".into());
        }
        let said = self.model.why_closed.as_deref();
        if !said.is_some_and(|c| why.contains(&c)) {
            let what = format!("closed without saying why ({why:?}): {said:?}");
            self.model.fail(what);
        }
    }
}

/// The fuzz bytes, read as a script.
struct Script<'a> {
    data: &'a [u8],
}

impl Script<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(*b)
    }

    /// An argument: a byte, 0 once the script is over.
    fn arg(&mut self) -> u8 {
        self.byte().unwrap_or(0)
    }
}

fn path(b: u8) -> Value {
    let names = ["a", "b", "c"];
    let mut p = vec![Value::from(names[usize::from(b % 3)])];
    if b & 4 != 0 {
        p.push(Value::from("x"));
    }
    Value::Array(p)
}

/// The request the script's op makes, under `seq`.
async fn request(c: &mut Client, seq: i64, s: &mut Script<'_>) {
    let which = s.arg();
    let arg = s.arg();
    let window = u64::from(arg % 4) + 1;
    let (kind, action, msg) = match which % 10 {
        0 => (
            Kind::OneShot,
            "get_value",
            Msg::new().with("path", path(arg)),
        ),
        1 => (
            Kind::OneShot,
            "set_value",
            Msg::new()
                .with("path", path(arg))
                .with("value", i64::from(arg)),
        ),
        2 => {
            let mut m = Msg::new().with("path", Value::Array(vec![]));
            if arg & 8 != 0 {
                // Else the connection's window (seq 0's qlen) applies.
                m.set("qlen", window);
            }
            (Kind::Tree, "get_tree", m)
        }
        3 => (
            Kind::Watch,
            "watch",
            Msg::new()
                .with("path", Value::Array(vec![]))
                .with("fetch", arg & 8 != 0)
                .with("qlen", window),
        ),
        4 => (
            Kind::Dialogue,
            "auth_set",
            Msg::new()
                .with("typ", keycard_auth::TEST)
                .with("kind", "user")
                .with("ident", IDENTS[usize::from(arg & 1)])
                .with("state", "start"),
        ),
        5 => (Kind::OneShot, "frobnicate", Msg::new()),
        6 => (Kind::OneShot, "get_tock", Msg::new()),
        // Malformed fields.
        7 => (Kind::OneShot, "get_value", Msg::new().with("path", 5)),
        8 => (
            Kind::OneShot,
            "set_value",
            Msg::new().with("path", path(arg)),
        ),
        _ => (
            Kind::OneShot,
            "stop",
            Msg::new().with("task", i64::from(arg % 7)),
        ),
    };
    c.request(seq, kind, action, msg).await;
}

/// A continuation: the dialogue's right answer, a wrong one, junk, or
/// DistKV's bare end.
fn continuation(arg: u8) -> Msg {
    match arg % 5 {
        0 | 1 => Msg::new()
            .with("step", "HasName")
            .with("name", IDENTS[usize::from(arg & 1)]),
        2 => Msg::new().with("step", "Junk"),
        3 => Msg::new().with("state", "end"),
        _ => Msg::new().with("name", "joe"),
    }
}

/// A malformed message: its value, and the error it is owed.
fn malformed(arg: u8, seq: i64) -> (Value, Option<i64>, &'static str) {
    match arg % 7 {
        0 => (Value::from(i64::from(arg)), None, NOT_A_MAP),
        1 => (Msg::new().with("a", 1).into_value(), None, NO_SEQ),
        2 => (
            Msg::new().with("seq", "one").into_value(),
            None,
            SEQ_NOT_INT,
        ),
        3 => (
            Msg::seq(seq).with("action", 7).into_value(),
            Some(seq),
            ACTION_NOT_STR,
        ),
        4 => (
            Msg::seq(0).with("action", "get_tock").into_value(),
            Some(0),
            SEQ0_ACTION,
        ),
        5 => (Msg::seq(0).into_value(), Some(0), SEQ0_NO_QLEN),
        _ => (
            Msg::seq(seq)
                .with("state", "ack")
                .with("ack", -1)
                .into_value(),
            Some(seq),
            BAD_ACK,
        ),
    }
}

/// The method registry, built once (OPAQUE's server setup is slow).
fn methods() -> Registry {
    static METHODS: OnceLock<Registry> = OnceLock::new();
    METHODS
        .get_or_init(|| {
            let config = crate::config::Config::default();
            let secrets = MethodSecrets {
                mock_key: SecretKey::new([7; 32]),
                scram_iterations: config.scram_iterations,
                argon2: Argon2Params {
                    m_kib: config.argon2_m_kib,
                    t: config.argon2_t,
                    p: config.argon2_p,
                },
                opaque_setup: keycard_auth::new_server_setup(),
            };
            Registry::builtin(secrets).expect("the built-in methods")
        })
        .clone()
}

/// An open server on the in-memory store, its clock manual.
async fn server_state() -> Arc<ServerState> {
    let config = crate::config::Config {
        clock: ManualClock::at(1_000_000_000_000).into(),
        max_outstanding: MAX_OUTSTANDING,
        idle_timeout: 0,
        message_timeout: MESSAGE_TIMEOUT,
        hash_workers: 1,
        ..Default::default()
    };
    let audit = crate::audit::Audit::open(std::path::Path::new("/dev/null"), config.clock.clone())
        .await
        .expect("the audit log");
    let store = Arc::new(MemStore::new(MemOptions::default()));
    ServerState::new(config, store, methods(), audit)
        .await
        .expect("the server's state")
}

/// `router`: the fuzz bytes as a script of client operations on one
/// msgpack connection, checked against a model of outstanding seqs (the
/// module's documentation says what is checked).
pub fn fuzz_router(data: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    rt.block_on(play(data));
}

async fn play(data: &[u8]) {
    let state = server_state().await;
    let (ours, theirs) = tokio::io::duplex(16 * 1024);
    let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 4000));
    let served = tokio::spawn(crate::conn::serve(
        crate::actions::Actions,
        state,
        tokio::io::split(theirs),
        peer,
        1,
        None,
    ));
    let (rd, wr) = tokio::io::split(ours);
    let mut c = Client {
        rd,
        wr,
        decoder: Decoder::new(Limits {
            max_message: 1 << 24,
            max_depth: 64,
            max_items: 1 << 20,
        }),
        model: Model::default(),
        buf: vec![0; 16 * 1024],
    };
    c.model.used.insert(0);
    c.settle().await;
    if !c.model.greeted {
        c.model.fail("no greeting".into());
    }
    let mut s = Script { data };
    let mut closed = false;
    for _ in 0..MAX_OPS {
        let Some(op) = s.byte() else { break };
        let seq = i64::from(op >> 4) % SEQS + 1;
        match op % 8 {
            0 | 1 => request(&mut c, seq, &mut s).await,
            2 => {
                let arg = s.arg();
                c.continuation(seq, continuation(arg)).await;
            }
            3 => {
                let n = u64::from(s.arg());
                c.model.used.insert(seq);
                let ack = Msg::seq(seq).with("state", "ack").with("ack", n);
                c.send(ack.into_value()).await;
            }
            4 => {
                let arg = s.arg();
                let (v, at, text) = malformed(arg, seq);
                c.malformed(v, at, text).await;
            }
            5 => {
                // Flow control: the connection's window.
                let q = u64::from(s.arg() % 4);
                c.send(Msg::seq(0).with("qlen", q).into_value()).await;
            }
            6 => {
                let arg = s.arg();
                garbage(&mut c, seq, arg, &mut s).await;
                closed = true;
                break;
            }
            _ => c.settle().await,
        }
        if c.model.eof {
            break;
        }
    }
    if !closed {
        if c.model.eof {
            c.model.fail("the connection closed by itself".into());
        }
        drain(&mut c).await;
    }
    // The client hangs up: the connection's task ends.
    let Client { rd, wr, model, .. } = c;
    drop((rd, wr));
    if tokio::time::timeout(HANG, served).await.is_err() {
        model.fail("the connection's task outlives its client".into());
    }
}

/// Undecodable bytes (an error, then the connection closes), or half a
/// request and silence (`timeout`, then it closes).
async fn garbage(c: &mut Client, seq: i64, arg: u8, s: &mut Script<'_>) {
    let mut bytes = Vec::new();
    if arg & 1 == 0 {
        // 0xc1 is no msgpack type.
        bytes.push(0xc1);
        bytes.extend(s.data.iter().take(usize::from(arg % 16)));
        c.model.log.push(format!("-> garbage {bytes:02x?}"));
        c.model.closing = true;
        c.send_bytes(&bytes).await;
        c.expect_close(HANG, &["bad_request", "too_large"]).await;
    } else {
        let whole = encode(
            &Msg::seq(seq)
                .with("action", "get_tock")
                .with("pad", "x".repeat(usize::from(arg)))
                .into_value(),
        );
        let cut = usize::from(arg) % (whole.len() - 1) + 1;
        bytes.extend(&whole[..cut]);
        c.model.log.push(format!("-> half a message {bytes:02x?}"));
        c.model.closing = true;
        c.send_bytes(&bytes).await;
        c.expect_close(HANG, &["timeout"]).await;
    }
}

/// Acks every stream and stops the ones that would not end, then checks
/// that every request has ended but an unstopped watch or dialogue.
async fn drain(c: &mut Client) {
    c.settle().await;
    let seqs: Vec<i64> = c.model.live.keys().copied().collect();
    for seq in &seqs {
        let ack = Msg::seq(*seq).with("state", "ack").with("ack", 1u64 << 40);
        c.send(ack.into_value()).await;
    }
    c.settle().await;
    let mut next = DRAIN_SEQ;
    for seq in seqs {
        let started = c
            .model
            .live
            .get(&seq)
            .and_then(|r| r.first())
            .is_some_and(|r| r.started && !r.errored);
        if !started || c.model.live_count() >= MAX_OUTSTANDING || c.model.eof {
            continue;
        }
        if let Some(r) = c.model.live.get_mut(&seq).and_then(|r| r.first_mut()) {
            r.stopped = true;
        }
        let stop = Msg::new().with("task", seq);
        c.request(next, Kind::OneShot, "stop", stop).await;
        next += 1;
        c.settle().await;
    }
    c.settle().await;
    if c.model.eof {
        c.model.fail("the connection closed by itself".into());
    }
    for (seq, reqs) in &c.model.live {
        for r in reqs {
            let may_wait = !r.stopped && matches!(r.kind, Kind::Watch | Kind::Dialogue);
            if !may_wait {
                let what = format!("seq {seq} ({}) never ended: {r:?}", r.action);
                c.model.fail(what);
            }
        }
    }
}
