//! One client connection: the reader that decodes and routes messages, the
//! writer that batches replies onto the socket, the table of outstanding
//! requests, and per-stream flow control.
//!
//! Routing follows DistKV: a message with an `action` starts a request under
//! its `seq`; a message without one is the `{seq:0, qlen}` flow-control
//! answer, an `{seq, state:"ack", ack:N}` for a stream, or the continuation
//! of a multi-step exchange under the request's seq.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use keycard_proto::{encode_into, DecodeError, Decoder, ErrorCode, Limits, Msg, MsgExt, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::bouncer::{Ended, KeycardWatcher};
use crate::caller::Caller;
use crate::error::ApiError;
use crate::outbox::{Outbox, Pending};
use crate::state::ServerState;
use keycard_auth::bouncer::KeycardId;
use keycard_auth::ChannelBinding;

/// A connection's session: who is on the other end ([`Caller`]) and the
/// state only this transport keeps for it.
#[derive(Clone, Debug, Default)]
pub struct Session {
    /// Who is acting: the connection's root and its logged-in user.
    pub caller: Caller,
    /// Failed logins so far on this connection.
    pub failed_logins: u32,
    /// The key agreed with `diffie_hellman` (once per connection).
    pub channel_key: Option<keycard_auth::SecretKey>,
    /// This connection made a method current, ending the open era: its
    /// streams opened before are not ended with the others'.
    pub kept_open_era: bool,
}

/// Acknowledgement state of one stream.
struct Window {
    acked: watch::Sender<u64>,
}

/// An outstanding request.
struct Slot {
    /// Tells this slot from a later one reusing its seq.
    gen: u64,
    window: Arc<Window>,
    /// Where continuation messages of a multi-step exchange go.
    cont: Option<mpsc::Sender<Value>>,
    /// Dropping or firing this cancels the request.
    cancel: Option<oneshot::Sender<()>>,
    /// Shared with the request's responder.
    flags: Arc<StreamFlags>,
    /// A login: its stream is not ended with the old keycard's.
    login: bool,
}

/// What the connection and a request's responder both need to know.
#[derive(Default)]
struct StreamFlags {
    /// The request answers with a stream (only streams can be stopped).
    streaming: std::sync::atomic::AtomicBool,
    /// `stop` ended it: send nothing more.
    stopped: std::sync::atomic::AtomicBool,
}

/// State shared by the reader, the writer and the request tasks.
pub(crate) struct ConnShared {
    pub(crate) id: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) state: Arc<ServerState>,
    /// The memory budget and the encoded replies waiting for the socket.
    out: Outbox,
    slots: Mutex<HashMap<i64, Slot>>,
    /// The client's flow-control window; 0 = none.
    qlen: AtomicU64,
    next_gen: AtomicU64,
    /// A login is running: logins on one connection go one at a time, so
    /// pipelined guesses cannot outrun the attempt limit.
    login_busy: std::sync::atomic::AtomicBool,
    session: Mutex<Session>,
    /// Set when the connection must close (after a fatal error).
    closing: watch::Sender<bool>,
    /// Woken when the bouncer ended this connection's keycard.
    kick: tokio::sync::Notify,
    /// What the connection can be bound to: `None` over plaintext.
    pub(crate) binding: Option<ChannelBinding>,
    /// The client's TLS certificate chain, if it presented one (for a
    /// `cert` login, which verifies it).
    pub(crate) client_chain: Option<crate::tls::ClientChain>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks is a bug; the data is still
    // consistent (single assignments), so keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConnShared {
    /// A copy of the session as it is now.
    pub(crate) fn session(&self) -> Session {
        lock(&self.session).clone()
    }

    /// Who is acting on this connection now.
    pub(crate) fn caller(&self) -> Caller {
        lock(&self.session).caller.clone()
    }

    /// Changes the session.
    pub(crate) fn update_session<R>(&self, f: impl FnOnce(&mut Session) -> R) -> R {
        f(&mut lock(&self.session))
    }

    /// Wakes the connection's task (it looks at its deadlines again).
    pub(crate) fn wake(&self) {
        self.kick.notify_one();
    }

    /// Ends the open streams (not a running login) with `e`, as the
    /// keycard they ran under is gone; returns the messages that tell the
    /// client (its error, then its end, for each).
    pub(crate) fn end_streams(&self, e: &ApiError) -> Vec<Value> {
        let streams: Vec<(i64, Slot)> = {
            let mut slots = lock(&self.slots);
            let seqs: Vec<i64> = slots
                .iter()
                .filter(|(_, s)| !s.login && s.flags.streaming.load(Ordering::Acquire))
                .map(|(seq, _)| *seq)
                .collect();
            seqs.into_iter()
                .filter_map(|seq| slots.remove(&seq).map(|s| (seq, s)))
                .collect()
        };
        let tock = self.state.store.tock().0;
        let mut out = Vec::with_capacity(streams.len() * 2);
        for (seq, slot) in streams {
            slot.flags.stopped.store(true, Ordering::Release);
            if let Some(cancel) = slot.cancel {
                let _ = cancel.send(());
            }
            let err = Msg::new()
                .with("seq", seq)
                .with("error", e.text.as_str())
                .with("code", e.code.as_str())
                .with("tock", tock);
            out.push(err.into_value());
            let end = Msg::new()
                .with("seq", seq)
                .with("state", "end")
                .with("tock", tock);
            out.push(end.into_value());
        }
        out
    }

    /// The session gave its keycard up (`logout`, or a new login replacing
    /// it): the streams opened under it end at once; the messages that
    /// tell the client are returned, for [`ConnShared::send_all`].
    pub(crate) fn keycard_given_up(&self) -> Vec<Value> {
        let e = ApiError::new(
            ErrorCode::AuthRequired,
            "the keycard this stream ran under was given up (logout or a new login)",
        );
        self.end_streams(&e)
    }

    /// Queues the messages that end streams, without waiting for room
    /// (they are small, two per stream).
    pub(crate) async fn send_all(&self, msgs: Vec<Value>) {
        for v in msgs {
            self.send_now(v);
        }
    }

    /// Asks the connection to close once queued replies are written.
    pub(crate) fn close(&self) {
        let _ = self.closing.send(true);
    }

    /// Registers a continuation channel for `seq`, for multi-step exchanges.
    pub(crate) fn open_continuation(&self, seq: i64) -> mpsc::Receiver<Value> {
        let (tx, rx) = mpsc::channel(8);
        if let Some(slot) = lock(&self.slots).get_mut(&seq) {
            slot.cont = Some(tx);
        }
        rx
    }

    /// Queues a message for the client, waiting while the connection's
    /// budget is full (the client is not reading).
    async fn send(&self, v: Value) {
        let mut bytes = Vec::with_capacity(64);
        encode_into(&v, &mut bytes);
        // Only the bytes wait for room: the value is not held twice.
        drop(v);
        self.out.push(bytes).await;
    }

    /// Queues a small final message without waiting (see
    /// [`Outbox::push_now`]).
    fn send_now(&self, v: Value) {
        let mut bytes = Vec::with_capacity(64);
        encode_into(&v, &mut bytes);
        self.out.push_now(bytes);
    }

    /// Reserves room in the connection's budget for a page a request is
    /// about to read, waiting while the connection holds too much.
    pub(crate) async fn reserve(&self, bytes: usize) -> crate::outbox::Held<'_> {
        self.out.reserve(bytes).await
    }

    /// Whether a user is logged in on this connection, its keycard live.
    fn logged_in(&self) -> bool {
        let now = self.state.now_ms();
        lock(&self.session)
            .caller
            .user
            .as_ref()
            .is_some_and(|u| u.live(now).is_ok())
    }
}

impl KeycardWatcher for ConnShared {
    /// If the session still holds keycard `id`, its requests are refused
    /// from now on, and the connection's task ends its streams (and, for a
    /// revocation, closes it).
    fn ended(&self, id: KeycardId, how: Ended) {
        let held = self.update_session(|s| match &mut s.caller.user {
            Some(u) if u.keycard == id => {
                Arc::make_mut(u).ended = Some(how);
                true
            }
            _ => false,
        });
        if held {
            self.kick.notify_one();
        }
    }

    /// Without a login, the connection's open streams end with
    /// `auth_required` (a logged-in connection's go on: its keycard
    /// carries them; so do those of the connection that made the method
    /// current); later requests are refused as for any connection without
    /// a login.
    fn open_era_ended(&self) {
        let (user, kept) = self.update_session(|s| (s.caller.user.is_some(), s.kept_open_era));
        if user {
            return;
        }
        // Its task looks at its deadlines again: it has `login_timeout`
        // from now to log in.
        self.wake();
        if kept {
            return;
        }
        let e = ApiError::new(
            ErrorCode::AuthRequired,
            "the server now requires a login: streams opened without one have ended",
        );
        let ended = self.end_streams(&e);
        if ended.is_empty() {
            return;
        }
        // Queued without waiting for room (two small messages a stream):
        // the bouncer never waits on a client that does not read.
        for v in ended {
            self.send_now(v);
        }
    }
}

/// Replies to one request: a single message, or a stream with `wseq`
/// numbering and flow control.
pub(crate) struct Responder {
    seq: i64,
    conn: Arc<ConnShared>,
    window: Arc<Window>,
    flags: Arc<StreamFlags>,
    /// This stream's own window (a request's `qlen` field), if it set one.
    qlen: Option<u64>,
    wseq: u64,
    started: bool,
    done: bool,
}

impl Responder {
    /// The request's seq.
    pub(crate) fn seq(&self) -> i64 {
        self.seq
    }

    /// The connection.
    pub(crate) fn conn(&self) -> &Arc<ConnShared> {
        &self.conn
    }

    fn finish(&self, mut msg: Msg) -> Value {
        msg.set("seq", self.seq);
        if !msg.has("tock") {
            msg.set("tock", self.conn.state.store.tock().0);
        }
        msg.into_value()
    }

    /// Sends the one reply of a single-message request.
    pub(crate) async fn reply(&mut self, msg: Msg) {
        let v = self.finish(msg);
        self.done = true;
        if !self.flags.stopped.load(Ordering::Acquire) {
            self.conn.send(v).await;
        }
    }

    /// Sends a stream message, waiting for the client's acks when its
    /// window is full.
    async fn stream_msg(&mut self, msg: Msg) {
        self.wseq += 1;
        let qlen = self
            .qlen
            .unwrap_or_else(|| self.conn.qlen.load(Ordering::Relaxed));
        if qlen > 0 {
            let mut acked = self.window.acked.subscribe();
            let wseq = self.wseq;
            // DistKV's rule: message n waits while n - acked >= qlen, so at
            // most qlen-1 are unacknowledged (and at least one may be).
            let window = qlen.saturating_sub(1).max(1);
            let _ = acked.wait_for(|a| wseq - (*a).min(wseq) <= window).await;
        }
        // A stopped stream has had its end sent for it.
        if self.flags.stopped.load(Ordering::Acquire) {
            return;
        }
        let v = self.finish(msg.with("wseq", self.wseq));
        self.conn.send(v).await;
    }

    /// Whether the reply is a stream that has started.
    pub(crate) fn is_started(&self) -> bool {
        self.started
    }

    /// Starts a stream.
    pub(crate) async fn start(&mut self) {
        if !self.started {
            self.started = true;
            self.flags.streaming.store(true, Ordering::Release);
            self.stream_msg(Msg::new().with("state", "start")).await;
        }
    }

    /// Sends one stream item (starting the stream if needed).
    pub(crate) async fn item(&mut self, msg: Msg) {
        self.start().await;
        self.stream_msg(msg).await;
    }

    /// Sends a non-item stream marker such as `uptodate`.
    pub(crate) async fn state(&mut self, state: &str) {
        self.start().await;
        self.stream_msg(Msg::new().with("state", state)).await;
    }

    /// Ends the stream.
    pub(crate) async fn end(&mut self) {
        if self.started && !self.done {
            self.done = true;
            self.stream_msg(Msg::new().with("state", "end")).await;
        }
    }

    /// Reports an error: as the single reply, or inside a started stream
    /// (then the stream ends at once: an ending stream waits neither for
    /// the client's acks nor for room in the connection's budget, so a
    /// client that stopped reading cannot keep it alive).
    pub(crate) async fn error(&mut self, e: ApiError) {
        if self.done {
            return;
        }
        let msg = Msg::new()
            .with("error", e.text)
            .with("code", e.code.as_str());
        if self.started {
            self.done = true;
            if self.flags.stopped.load(Ordering::Acquire) {
                return;
            }
            self.wseq += 1;
            let err = self.finish(msg.with("wseq", self.wseq));
            self.wseq += 1;
            let end = self.finish(Msg::new().with("state", "end").with("wseq", self.wseq));
            self.conn.send_now(err);
            self.conn.send_now(end);
        } else {
            self.reply(msg).await;
        }
    }

    /// Whether a reply or the stream's end has been sent.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }
}

/// What a connection's requests run: the msgpack adapter (`actions`),
/// given to [`serve`] by the listener. The transport knows no action.
pub(crate) trait Handler: Copy + Send + Sync + 'static {
    /// The greeting, sent at seq 0 when a connection opens (`tls`: the
    /// connection is TLS, so channel-binding variants are offered).
    fn greeting(self, state: &ServerState, tls: bool) -> Value;

    /// Runs `action`; an error becomes the request's error reply.
    fn dispatch<'a>(
        self,
        action: &'a str,
        msg: &'a Value,
        r: &'a mut Responder,
    ) -> impl Future<Output = Result<(), ApiError>> + Send + 'a;
}

/// A request being handled, polled by its connection's task.
type Running = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Messages routed before the running requests get to run.
const BATCH: usize = 64;

/// How long a closing connection may take to write its last messages.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A `0` in the config turns a timeout off.
fn secs(s: u64) -> Option<Duration> {
    (s > 0).then(|| Duration::from_secs(s))
}

/// Why a connection is closed for taking too long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Late {
    Login,
    Idle,
    Message,
}

/// Serves one accepted connection until it closes.
///
/// One task does everything for a connection: it reads and decodes,
/// routes, polls the connection's running requests (they are futures in a
/// `FuturesUnordered`, not spawned tasks, so a request costs no thread
/// hand-off), and writes their replies in batches. Only store commits leave
/// the task (to the store's writer thread).
///
/// Input is read and routed only once everything before it is written: a
/// client that stops reading stops being served, and its requests wait on
/// the connection's budget (`Outbox`). Writing never blocks the task: the
/// running requests, a keycard's end and the timeouts are served while
/// the socket is full.
///
/// The connection is its two halves, `rd` and `wr`: a TCP socket's, or
/// an in-memory pipe's (the `router` fuzz target drives one).
pub(crate) async fn serve<H, R, W>(
    handler: H,
    state: Arc<ServerState>,
    (mut rd, mut wr): (R, W),
    peer: SocketAddr,
    id: u64,
    tls: Option<crate::listener::TlsPeer>,
) where
    H: Handler,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (closing, mut closing_rx) = watch::channel(false);
    let conn = Arc::new(ConnShared {
        id,
        peer,
        state: state.clone(),
        out: Outbox::new(state.config.max_inflight_bytes, state.config.out_queue),
        slots: Mutex::new(HashMap::new()),
        qlen: AtomicU64::new(0),
        next_gen: AtomicU64::new(1),
        login_busy: std::sync::atomic::AtomicBool::new(false),
        session: Mutex::new(Session::default()),
        closing,
        kick: tokio::sync::Notify::new(),
        binding: tls.as_ref().map(|t| t.binding.clone()),
        client_chain: tls.and_then(|t| t.client_chain),
    });
    let watcher: Arc<dyn KeycardWatcher> = conn.clone();
    state.bouncer.register(id, Arc::downgrade(&watcher));
    drop(watcher);
    let mut running: FuturesUnordered<Running> = FuturesUnordered::new();
    let mut out = Pending::default();
    encode_into(
        &handler.greeting(&state, conn.binding.is_some()),
        out.tail(),
    );

    let limits = Limits {
        max_message: state.config.max_message,
        max_depth: 64,
        max_items: state.config.max_items,
    };
    let mut decoder = Decoder::new(limits);
    let mut chunk = vec![0u8; READ_CHUNK];
    let login_timeout = secs(state.config.login_timeout);
    let idle_timeout = secs(state.config.idle_timeout);
    let message_timeout = secs(state.config.message_timeout);
    let opened = Instant::now();
    // The last byte received or request ended: idle is measured from it.
    let mut active = opened;
    // Since when a message has been arriving (its first byte, or the last
    // complete message before it).
    let mut partial_since: Option<Instant> = None;
    // Since when the connection has had no live login (from its opening;
    // after a logout or its keycard's end, from then): the login deadline
    // counts from there.
    let mut unproved_since = Some(opened);
    // One timer, moved only when a deadline comes closer: activity that
    // pushes a deadline later is noticed when the timer fires.
    let timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    loop {
        // A keycard that ended is acted on before anything else: a client
        // that keeps the socket full must not keep its streams (or, once
        // revoked, its connection) alive.
        if conn.kick.notified().now_or_never().is_some() {
            kicked(&conn, &mut out);
        }
        // Route a batch of the buffered messages, then let the requests run
        // as far as they can before taking more: a client pipelining
        // thousands of cheap requests is answered as it goes.
        let mut more = false;
        if out.is_empty() {
            let mut routed = 0;
            while !*closing_rx.borrow() {
                if routed == BATCH {
                    more = true;
                    break;
                }
                match decoder.next_value() {
                    Ok(Some(msg)) => {
                        routed += 1;
                        if let Some(fut) = route(handler, &conn, msg, decoder.last_cost(), &mut out)
                        {
                            running.push(fut);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        fatal(&conn, e, &mut out);
                        break;
                    }
                }
            }
            partial_since = match (decoder.buffered(), routed) {
                (0, _) => None,
                (_, 0) => partial_since.or(Some(Instant::now())),
                _ => Some(Instant::now()),
            };
        }
        while let Some(Some(())) = running.next().now_or_never() {
            active = Instant::now();
        }
        if out.is_empty() {
            conn.out.take(&mut out);
        }
        if *closing_rx.borrow() {
            conn.out.take(&mut out);
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                while !out.is_empty() {
                    let n = out.unwritten().len();
                    if wr.write_all(out.unwritten()).await.is_err() {
                        break;
                    }
                    out.advance(n);
                }
            })
            .await;
            break;
        }
        if more && out.is_empty() {
            continue;
        }
        // The deadlines that apply now.
        match (conn.logged_in(), unproved_since) {
            (true, _) => unproved_since = None,
            (false, None) => unproved_since = Some(Instant::now()),
            (false, Some(_)) => {}
        }
        let login = login_timeout
            .filter(|_| !state.is_open() && !conn.login_busy.load(Ordering::Acquire))
            .zip(unproved_since)
            .map(|(t, since)| (state.login_deadline(since, t), Late::Login));
        let idle = idle_timeout
            .filter(|_| running.is_empty())
            .map(|t| (active + t, Late::Idle));
        // A message cannot arrive while we are not reading.
        let message = message_timeout
            .filter(|_| out.is_empty())
            .zip(partial_since)
            .map(|(t, since)| (since + t, Late::Message));
        let due = [login, idle, message]
            .into_iter()
            .flatten()
            .min_by_key(|d| d.0);
        if let Some((at, why)) = due {
            // Checked here too: a connection kept busy (always something
            // to write or read) would never let the timer's branch win.
            if at <= Instant::now() {
                too_late(&conn, why, &state, &mut out);
                continue;
            }
            if armed.is_none_or(|a| at < a) {
                timer.as_mut().reset(at);
                armed = Some(at);
            }
        }
        tokio::select! {
            biased;
            w = wr.write(out.unwritten()), if !out.is_empty() => match w {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.advance(n);
                    if out.is_empty() {
                        conn.out.written(out.take_counted());
                        // Reading resumes: a message that was arriving
                        // gets its full time again.
                        if partial_since.is_some() {
                            partial_since = Some(Instant::now());
                        }
                    }
                }
            },
            () = conn.out.queued(), if out.is_empty() => {}
            Some(()) = running.next(), if !running.is_empty() => active = Instant::now(),
            n = rd.read(&mut chunk), if out.is_empty() && !more => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    decoder.feed(&chunk[..n]);
                    active = Instant::now();
                }
            },
            _ = closing_rx.changed() => {}
            _ = conn.kick.notified() => kicked(&conn, &mut out),
            () = &mut timer, if armed.is_some() => {
                armed = None;
                if let Some((at, why)) = due {
                    if at <= Instant::now() {
                        too_late(&conn, why, &state, &mut out);
                    }
                }
            }
        }
    }

    // Cancel every request still running; their replies have nowhere to go.
    drop(running);
    lock(&conn.slots).clear();
    // The requester is gone: so is its keycard.
    let held = conn.caller().user.map(|u| u.keycard);
    state.bouncer.unregister(id, held);
    let _ = wr.shutdown().await;
    tracing::debug!(conn = id, "connection closed");
}

/// The client took too long: say why, then close.
fn too_late(conn: &ConnShared, why: Late, state: &ServerState, wbuf: &mut Pending) {
    let c = &state.config;
    let text = match why {
        Late::Login => format!(
            "no login within {} s (login_timeout); closing the connection",
            c.login_timeout
        ),
        Late::Idle => format!(
            "idle for {} s (idle_timeout); closing the connection",
            c.idle_timeout
        ),
        Late::Message => format!(
            "a message took more than {} s to arrive (message_timeout); closing the connection",
            c.message_timeout
        ),
    };
    tracing::info!(conn = conn.id, peer = %conn.peer, why = ?why, "closing a connection that took too long");
    stray_error(conn, None, ApiError::new(ErrorCode::Timeout, text), wbuf);
    conn.close();
}

/// The session's keycard ended: its streams end with the reason; a
/// revoked keycard's connection closes.
fn kicked(conn: &ConnShared, wbuf: &mut Pending) {
    let Some(how) = conn.caller().user.and_then(|u| u.ended) else {
        return;
    };
    let e = how.error();
    for v in conn.end_streams(&e) {
        encode_into(&v, wbuf.tail());
    }
    if how == Ended::Revoked {
        tracing::info!(conn = conn.id, peer = %conn.peer, "keycard revoked; closing the connection");
        stray_error(conn, None, e, wbuf);
        conn.close();
    }
}

/// An error that ends the connection: say why, then close.
fn fatal(conn: &ConnShared, e: DecodeError, wbuf: &mut Pending) {
    let code = match e {
        DecodeError::TooLarge { .. }
        | DecodeError::TooDeep { .. }
        | DecodeError::TooMany { .. } => ErrorCode::TooLarge,
        _ => ErrorCode::BadRequest,
    };
    tracing::info!(conn = conn.id, peer = %conn.peer, error = %e, "closing connection after undecodable input");
    let msg = Msg::new()
        .with("error", format!("{e}; closing the connection"))
        .with("code", code.as_str());
    encode_into(&msg.into_value(), wbuf.tail());
    conn.close();
}

/// An error about a message that cannot be tied to a running request.
/// Written straight into the outgoing buffer: the connection's own task
/// must never wait on its own queue.
fn stray_error(conn: &ConnShared, seq: Option<i64>, e: ApiError, wbuf: &mut Pending) {
    let mut msg = Msg::new()
        .with("error", e.text)
        .with("code", e.code.as_str())
        .with("tock", conn.state.store.tock().0);
    if let Some(seq) = seq {
        msg.set("seq", seq);
    }
    encode_into(&msg.into_value(), wbuf.tail());
}

/// Routes one message; a new request comes back as the future to run.
fn route<H: Handler>(
    handler: H,
    conn: &Arc<ConnShared>,
    msg: Value,
    cost: usize,
    wbuf: &mut Pending,
) -> Option<Running> {
    if !matches!(msg, Value::Map(_)) {
        stray_error(conn, None, ApiError::bad("a message must be a map"), wbuf);
        return None;
    }
    let seq = match msg.get("seq").map(Value::as_i64) {
        Some(Some(s)) => s,
        Some(None) => {
            stray_error(conn, None, ApiError::bad("'seq' must be an integer"), wbuf);
            return None;
        }
        None => {
            stray_error(conn, None, ApiError::bad("message without 'seq'"), wbuf);
            return None;
        }
    };
    match msg.get("action") {
        Some(Value::Str(_)) if seq == 0 => {
            stray_error(
                conn,
                Some(0),
                ApiError::bad("seq 0 is reserved for the greeting and flow control"),
                wbuf,
            );
            None
        }
        Some(Value::Str(_)) => start_request(handler, conn, seq, msg, cost, wbuf),
        Some(_) => {
            stray_error(
                conn,
                Some(seq),
                ApiError::bad("'action' must be a string"),
                wbuf,
            );
            None
        }
        None => {
            control(conn, seq, msg, wbuf);
            None
        }
    }
}

/// A message without an action: flow control or a continuation.
fn control(conn: &ConnShared, seq: i64, msg: Value, wbuf: &mut Pending) {
    if seq == 0 {
        match msg.get("qlen").and_then(Value::as_u64) {
            Some(q) => conn.qlen.store(q, Ordering::Relaxed),
            None => stray_error(
                conn,
                Some(0),
                ApiError::bad("seq 0 carries only 'qlen'"),
                wbuf,
            ),
        }
        return;
    }
    if msg.state() == Some("ack") {
        let Some(n) = msg.get("ack").and_then(Value::as_u64) else {
            return stray_error(
                conn,
                Some(seq),
                ApiError::bad("'ack' must be a non-negative integer"),
                wbuf,
            );
        };
        // An ack for a stream that already ended is harmless.
        if let Some(slot) = lock(&conn.slots).get(&seq) {
            slot.window.acked.send_if_modified(|a| {
                let grew = n > *a;
                *a = (*a).max(n);
                grew
            });
        }
        return;
    }
    let cont = lock(&conn.slots).get(&seq).and_then(|s| s.cont.clone());
    match cont {
        Some(tx) => {
            if tx.try_send(msg).is_err() {
                stray_error(
                    conn,
                    Some(seq),
                    ApiError::bad("unexpected message in this exchange"),
                    wbuf,
                );
            }
        }
        // DistKV's client ends its side of an exchange with a bare
        // {seq, state:"end"} after the server's end; ignore it.
        None if msg.state() == Some("end") => {}
        None => stray_error(
            conn,
            Some(seq),
            ApiError::bad("message without 'action' for no outstanding request"),
            wbuf,
        ),
    }
}

fn start_request<H: Handler>(
    handler: H,
    conn: &Arc<ConnShared>,
    seq: i64,
    msg: Value,
    cost: usize,
    wbuf: &mut Pending,
) -> Option<Running> {
    let window = Arc::new(Window {
        acked: watch::channel(0).0,
    });
    let gen = conn.next_gen.fetch_add(1, Ordering::Relaxed);
    let (cancel, cancelled) = oneshot::channel::<()>();
    let flags = Arc::new(StreamFlags::default());
    let is_login = msg.action() == Some("auth");
    let refused = {
        let mut slots = lock(&conn.slots);
        if slots.contains_key(&seq) {
            Some(ApiError::new(
                ErrorCode::SeqInUse,
                format!("seq {seq} is still in use by an outstanding request"),
            ))
        } else if slots.len() >= conn.state.config.max_outstanding {
            Some(ApiError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "more than {} requests outstanding on this connection",
                    conn.state.config.max_outstanding
                ),
            ))
        } else if is_login && conn.login_busy.swap(true, Ordering::AcqRel) {
            Some(ApiError::bad(
                "a login is already running on this connection; wait for its answer",
            ))
        } else if !conn.out.admit(cost) {
            if is_login {
                conn.login_busy.store(false, Ordering::Release);
            }
            Some(ApiError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "more than {} bytes of requests and unread replies on this connection \
                     (max_inflight_bytes)",
                    conn.state.config.max_inflight_bytes
                ),
            ))
        } else {
            slots.insert(
                seq,
                Slot {
                    gen,
                    window: window.clone(),
                    cont: None,
                    cancel: Some(cancel),
                    flags: flags.clone(),
                    login: is_login,
                },
            );
            None
        }
    };
    if let Some(e) = refused {
        stray_error(conn, Some(seq), e, wbuf);
        return None;
    }
    let mut r = Responder {
        seq,
        conn: conn.clone(),
        window,
        flags,
        qlen: msg.get("qlen").and_then(Value::as_u64),
        wseq: 0,
        started: false,
        done: false,
    };
    let action = msg.action().unwrap_or_default().to_owned();
    let span = tracing::debug_span!("request", conn = conn.id, seq, action = %action);
    let task_conn = conn.clone();
    Some(Box::pin(
        async move {
            let work = async {
                match handler.dispatch(&action, &msg, &mut r).await {
                    Ok(()) => r.end().await,
                    Err(e) => r.error(e).await,
                }
            };
            tokio::select! {
                biased;
                // Fired by `stop`; the slot is gone already then.
                _ = cancelled => {}
                _ = work => {}
            }
            if is_login {
                task_conn.login_busy.store(false, Ordering::Release);
            }
            task_conn.out.finished(cost);
            let mut slots = lock(&task_conn.slots);
            if slots.get(&seq).is_some_and(|s| s.gen == gen) {
                slots.remove(&seq);
            }
        }
        .instrument(span),
    ))
}

/// Cancels the stream running under `seq` (the `stop` action). Returns
/// `None` if there is no such stream — single-reply requests cannot be
/// stopped, so a committed write never loses its reply — else a future
/// that tells the client the stream is over (to await after answering the
/// stop itself).
pub(crate) fn stop_task(
    conn: &Arc<ConnShared>,
    seq: i64,
) -> Option<impl std::future::Future<Output = ()> + '_> {
    let slot = {
        let mut slots = lock(&conn.slots);
        let streaming = slots
            .get(&seq)
            .is_some_and(|s| s.flags.streaming.load(Ordering::Acquire));
        if !streaming {
            return None;
        }
        slots.remove(&seq)?
    };
    slot.flags.stopped.store(true, Ordering::Release);
    if let Some(cancel) = slot.cancel {
        let _ = cancel.send(());
    }
    Some(async move {
        let msg = Msg::new()
            .with("seq", seq)
            .with("state", "end")
            .with("tock", conn.state.store.tock().0);
        conn.send_now(msg.into_value());
    })
}
