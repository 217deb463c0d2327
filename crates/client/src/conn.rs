//! The connection, its reader task and request routing.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use keycard_auth::channel::X25519Client;
use keycard_auth::{AuthError, ClientLogin, ClientMethod, SecretKey, Step};
use keycard_proto::{
    encode_into, DecodeError, Decoder, ErrorCode, Limits, Msg, MsgExt, Path, Value,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::mpsc;

/// How long a server has to send its greeting once the connection is up.
/// A keycard server greets at once; silence means something else is
/// listening there.
pub const GREETING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// How long opening the TCP connection may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a failed login says when the client half finds the credentials
/// wrong (OPAQUE learns that before the server does: its KE2 does not
/// open, for a wrong password and an unknown user alike).
pub const WRONG_CREDENTIALS: &str = "wrong user name or password";

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{text} ({})", code.map_or("no code", ErrorCode::as_str))]
    Server {
        /// The stable code, when the server sent a known one.
        code: Option<ErrorCode>,
        /// The server's text.
        text: String,
    },
    /// The connection is gone.
    #[error("connection closed{}", .0.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Closed(Option<String>),
    /// Connecting or writing failed.
    #[error("I/O error: {0}")]
    Io(String),
    /// The server sent something this client cannot use.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The login exchange failed on this side.
    #[error("login failed: {0}")]
    Auth(String),
    /// TLS could not be set up (a CA file, the handshake).
    #[error("TLS: {0}")]
    Tls(String),
}

impl ClientError {
    /// The server's error code, if this is a server error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => *code,
            _ => None,
        }
    }
}

/// What the server said when the connection opened.
#[derive(Debug, Clone)]
pub struct Greeting {
    /// The protocol version.
    pub version: Vec<i64>,
    /// The server's node name.
    pub node: String,
    /// The server's tock when it greeted.
    pub tock: u64,
    /// The methods the server accepts, current first (`None` = no login
    /// needed), or `None` when auth was never configured.
    pub auth: Option<Vec<Option<String>>>,
    /// The whole greeting message.
    pub raw: Value,
}

impl Greeting {
    /// Whether the greeting lists `method` among those accepted.
    pub fn offers(&self, method: &str) -> bool {
        self.auth.iter().flatten().flatten().any(|m| m == method)
    }

    fn parse(v: Value) -> Result<Greeting, ClientError> {
        if v.seq() != Some(0) {
            return Err(ClientError::Protocol(
                "the first message is not a greeting".into(),
            ));
        }
        let version = match v.get("version") {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
            _ => Vec::new(),
        };
        let auth = match v.get("auth") {
            Some(Value::Array(a)) => {
                Some(a.iter().map(|m| m.as_str().map(str::to_owned)).collect())
            }
            _ => None,
        };
        Ok(Greeting {
            version,
            node: v
                .get("node")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            tock: v.get("tock").and_then(Value::as_u64).unwrap_or(0),
            auth,
            raw: v,
        })
    }

    /// Whether the server requires a login before data requests.
    pub fn login_required(&self) -> bool {
        matches!(&self.auth, Some(list) if list.first().is_some_and(Option::is_some))
    }
}

/// What a client half's refusal means when it comes after the server
/// accepted the credentials (SCRAM's server signature did not verify).
const UNVERIFIED: &str = "the server could not be verified";

type Routes = Arc<Mutex<HashMap<i64, mpsc::UnboundedSender<Value>>>>;

struct Inner {
    out: mpsc::UnboundedSender<Value>,
    routes: Routes,
    next_seq: AtomicI64,
    qlen: u64,
    /// Why the reader stopped, once it has.
    closed: Arc<Mutex<Option<String>>>,
    /// The key agreed with the server for sealing passwords.
    channel: tokio::sync::Mutex<Option<SecretKey>>,
}

/// A connection to a keycard server.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    greeting: Arc<Greeting>,
    /// What the connection can be bound to, over TLS.
    binding: Option<Arc<keycard_auth::ChannelBinding>>,
}

/// A node's value and the tock of its last change.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// When it changed.
    pub tock: u64,
}

/// What a `set_value` or `delete_value` did.
#[derive(Debug, Clone, PartialEq)]
pub struct SetResult {
    /// Whether the value changed.
    pub changed: bool,
    /// The tock of the write.
    pub tock: u64,
    /// The value it replaced, if any.
    pub prev: Option<Value>,
}

/// One item of a `get_tree` or `watch` stream, with its path restored.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeItem {
    /// The path relative to the request's path.
    pub path: Path,
    /// The value; `None` for a deletion (watch) or a value-less node.
    pub value: Option<Value>,
    /// The tock of the change.
    pub tock: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What [`Client::login_asking`] asks for a factor's client half, by the
/// method the server's prompt names; with `E` = [`crate::rest::RestError`],
/// what [`crate::rest::RestClient::login_asking`] asks.
pub type FactorSource<'a, E = ClientError> =
    dyn FnMut(&str) -> Result<Box<dyn ClientMethod>, E> + Send + 'a;

/// The error for a prompt for `factor` that this login cannot answer.
fn not_given(factor: &str) -> ClientError {
    ClientError::Auth(format!(
        "the server asks for the factor {factor:?}, which this login does not have"
    ))
}

/// A request's answer to a factor prompt: none, it is not a login.
fn no_factor(factor: &str) -> Result<ClientLogin, ClientError> {
    Err(not_given(factor))
}

/// `method`'s first message as the answer to a prompt for it (its `typ`
/// names it).
fn started(method: &dyn ClientMethod, key: Option<&SecretKey>) -> ClientLogin {
    let start = method.login(key);
    ClientLogin {
        request: start.request.with("typ", method.name()),
        exchange: start.exchange,
    }
}

fn server_error(v: &Value) -> Option<ClientError> {
    let text = v.get("error")?;
    let text = match text {
        Value::Str(s) => s.clone(),
        other => format!("{other:?}"),
    };
    let code = v
        .get("code")
        .and_then(Value::as_str)
        .and_then(ErrorCode::parse);
    Some(ClientError::Server { code, text })
}

impl Client {
    /// Connects, reads the greeting and announces a flow-control window of
    /// 64 stream messages.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        Self::connect_with_qlen(addr, 64).await
    }

    /// Like [`Client::connect`] with the given window (0: no flow control).
    pub async fn connect_with_qlen(
        addr: impl ToSocketAddrs,
        qlen: u64,
    ) -> Result<Client, ClientError> {
        let socket = within_connect_timeout(TcpStream::connect(addr)).await?;
        Self::start(socket, qlen).await
    }

    /// Connects from a chosen local address (on a host with several).
    pub async fn connect_from(
        local: std::net::IpAddr,
        addr: std::net::SocketAddr,
    ) -> Result<Client, ClientError> {
        let io = |e: std::io::Error| ClientError::Io(e.to_string());
        let sock = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(io)?;
        sock.bind(std::net::SocketAddr::new(local, 0)).map_err(io)?;
        let socket = within_connect_timeout(sock.connect(addr)).await?;
        Self::start(socket, 64).await
    }

    /// Connects over TLS (trusting what `tls` trusts), reads the greeting
    /// and announces a window of 64 stream messages.
    pub async fn connect_tls(
        addr: impl ToSocketAddrs,
        tls: &crate::ClientTls,
    ) -> Result<Client, ClientError> {
        let socket = within_connect_timeout(TcpStream::connect(addr)).await?;
        let _ = socket.set_nodelay(true);
        let stream = tls.connect(socket).await?;
        let binding = crate::tls::binding_of(stream.get_ref().1);
        let (rd, wr) = tokio::io::split(stream);
        let mut client = Self::start_on(rd, wr, 64).await?;
        client.binding = Some(Arc::new(binding));
        Ok(client)
    }

    async fn start(socket: TcpStream, qlen: u64) -> Result<Client, ClientError> {
        let _ = socket.set_nodelay(true);
        let (rd, wr) = socket.into_split();
        Self::start_on(rd, wr, qlen).await
    }

    /// Starts the protocol on a connection's two halves.
    async fn start_on<R, W>(mut rd: R, mut wr: W, qlen: u64) -> Result<Client, ClientError>
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let mut decoder = Decoder::new(Limits {
            max_message: 64 << 20,
            max_depth: 64,
            max_items: 1 << 24,
        });
        let mut chunk = vec![0u8; 64 * 1024];
        // The flow-control window goes out before the greeting arrives: a
        // keycard (or DistKV) server reads it after greeting, and an HTTP
        // server (keycard's REST port, say) answers it at once with an
        // error page, so a client pointed at the wrong port learns it now
        // rather than after a timeout.
        if qlen > 0 {
            let mut hello = Vec::new();
            encode_into(&Msg::seq(0).with("qlen", qlen).into_value(), &mut hello);
            // A server that refuses the connection has said why by now:
            // reading it below beats a broken pipe here.
            let _ = wr.write_all(&hello).await;
        }
        let first = read_greeting(&mut rd, &mut decoder, &mut chunk);
        let greeting = match tokio::time::timeout(GREETING_TIMEOUT, first).await {
            Ok(g) => g?,
            Err(_) => {
                return Err(ClientError::Protocol(format!(
                    "no greeting within {} s: is this keycard's msgpack port?",
                    GREETING_TIMEOUT.as_secs()
                )))
            }
        };
        let (out, mut out_rx) = mpsc::unbounded_channel::<Value>();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(16 * 1024);
            while let Some(first) = out_rx.recv().await {
                buf.clear();
                encode_into(&first, &mut buf);
                while buf.len() < 256 * 1024 {
                    match out_rx.try_recv() {
                        Ok(v) => encode_into(&v, &mut buf),
                        Err(_) => break,
                    }
                }
                if wr.write_all(&buf).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let routes: Routes = Arc::new(Mutex::new(HashMap::new()));
        let closed = Arc::new(Mutex::new(None));
        let inner = Arc::new(Inner {
            out,
            routes: routes.clone(),
            next_seq: AtomicI64::new(1),
            qlen,
            closed: closed.clone(),
            channel: tokio::sync::Mutex::new(None),
        });
        tokio::spawn(async move {
            let why = read_loop(&mut rd, &mut decoder, &mut chunk, &routes).await;
            *lock(&closed) = Some(why);
            // Dropping the senders ends every pending request and stream.
            lock(&routes).clear();
        });
        Ok(Client {
            inner,
            greeting: Arc::new(greeting),
            binding: None,
        })
    }

    /// The connection's channel-binding data as this client sees it
    /// (RFC 5929 `tls-server-end-point` from the server's certificate,
    /// RFC 9266 `tls-exporter`); `None` over plaintext. A SCRAM client
    /// bound to it (`ScramClient::channel_binding`) logs in as
    /// `scram-sha-256-plus`.
    pub fn channel_binding(&self) -> Option<&keycard_auth::ChannelBinding> {
        self.binding.as_deref()
    }

    /// The server's greeting.
    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    fn closed_error(&self) -> ClientError {
        ClientError::Closed(lock(&self.inner.closed).clone())
    }

    /// Sends a request and returns the channel its replies arrive on.
    async fn send(
        &self,
        mut msg: Msg,
    ) -> Result<(i64, mpsc::UnboundedReceiver<Value>), ClientError> {
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.inner.routes).insert(seq, tx);
        msg.set("seq", seq);
        // The reader marks the connection closed before it drops the
        // routes: a route added after that is never answered.
        if lock(&self.inner.closed).is_some() || self.inner.out.send(msg.into_value()).is_err() {
            lock(&self.inner.routes).remove(&seq);
            return Err(self.closed_error());
        }
        Ok((seq, rx))
    }

    /// Sends `msg` (an action and its fields) and returns its one reply.
    /// A streamed reply is read to its end; its last item (or the end
    /// marker, when it has none) is returned.
    pub async fn request(&self, msg: Msg) -> Result<Value, ClientError> {
        self.exchange(msg, None, &mut no_factor).await
    }

    fn ack(&self, seq: i64, v: &Value, acked: &mut u64) {
        let Some(wseq) = v.get("wseq").and_then(Value::as_u64) else {
            return;
        };
        if self.inner.qlen > 0 && wseq >= *acked + (self.inner.qlen / 2).max(1) {
            *acked = wseq;
            let ack = Msg::seq(seq).with("state", "ack").with("ack", wseq);
            let _ = self.inner.out.send(ack.into_value());
        }
    }

    /// Sends `msg` and returns its reply stream.
    pub async fn stream(&self, msg: Msg) -> Result<Stream, ClientError> {
        let (seq, rx) = self.send(msg).await?;
        Ok(Stream {
            client: self.clone(),
            seq,
            rx,
            acked: 0,
            prev: Vec::new(),
            done: false,
        })
    }

    /// Logs in with `method`, answering the server's messages as the
    /// method's client half says.
    ///
    /// A login the server refuses is [`ClientError::Server`] with code
    /// `auth_failed`. OPAQUE's client half finds out first (the server's
    /// answer does not open with a wrong password or for an unknown user):
    /// that is [`ClientError::Auth`] saying [`WRONG_CREDENTIALS`].
    pub async fn login(&self, method: &dyn ClientMethod) -> Result<(), ClientError> {
        self.login_with_factors(method, &[]).await
    }

    /// Logs in with `method`, then passes `factors` in order when the
    /// server asks for them (a user whose record requires further
    /// methods: the server prompts `{factor: METHOD}` in the same
    /// exchange). A prompt for a method other than the next of `factors`
    /// is an error.
    pub async fn login_with_factors(
        &self,
        method: &dyn ClientMethod,
        factors: &[&dyn ClientMethod],
    ) -> Result<(), ClientError> {
        let key = self.channel_for(method).await?;
        // The factors' keys are agreed first: not in the middle of the
        // login's exchange.
        let mut keyed = Vec::with_capacity(factors.len());
        for m in factors {
            keyed.push((*m, self.channel_for(*m).await?));
        }
        let mut keyed = keyed.into_iter();
        let mut next = |factor: &str| {
            let Some((m, key)) = keyed.next().filter(|(m, _)| m.name() == factor) else {
                return Err(not_given(factor));
            };
            Ok(started(m, key.as_ref()))
        };
        self.login_driven(method, key, &mut next).await
    }

    /// Logs in with `method`, and when the server prompts for a further
    /// factor, asks `factor` for that method's client half (the prompt
    /// names the method): a caller learns that a code is needed only
    /// when the server asks for it (the CLI reads a one-time code then).
    /// `factor` runs while the exchange waits, inside the login's
    /// challenge window. A factor that needs an agreed key is refused:
    /// give it to [`Client::login_with_factors`], which agrees keys
    /// before the exchange.
    pub async fn login_asking(
        &self,
        method: &dyn ClientMethod,
        factor: &mut FactorSource<'_>,
    ) -> Result<(), ClientError> {
        let key = self.channel_for(method).await?;
        let mut next = |name: &str| {
            let m = factor(name)?;
            if m.name() != name {
                return Err(not_given(name));
            }
            if m.needs_channel() {
                return Err(ClientError::Auth(format!(
                    "the factor {name:?} needs an agreed key: give it before the login"
                )));
            }
            Ok(started(m.as_ref(), None))
        };
        self.login_driven(method, key, &mut next).await
    }

    /// The login of [`Client::login_with_factors`] and
    /// [`Client::login_asking`]: `method`'s exchange, each prompted
    /// factor started by `next`.
    async fn login_driven(
        &self,
        method: &dyn ClientMethod,
        key: Option<SecretKey>,
        next: &mut (dyn FnMut(&str) -> Result<ClientLogin, ClientError> + Send),
    ) -> Result<(), ClientError> {
        let start = method.login(key.as_ref());
        let msg = start
            .request
            .with("action", "auth")
            .with("typ", method.name())
            .with("ident", method.ident());
        match self.exchange(msg, start.exchange, next).await {
            Ok(_) => Ok(()),
            Err(ClientError::Auth(e))
                if e == UNVERIFIED && method.name() == keycard_auth::OPAQUE =>
            {
                Err(ClientError::Auth(WRONG_CREDENTIALS.into()))
            }
            Err(e) => Err(e),
        }
    }

    /// The method the server says `ident` logs in with (`auth_methods`;
    /// needs no login), as a list (of one). For a name that is no user's
    /// the server answers as plausibly as for a real one, so a login with
    /// the answer can still fail.
    pub async fn auth_methods(&self, ident: &str) -> Result<Vec<String>, ClientError> {
        let r = self
            .request(
                Msg::new()
                    .with("action", "auth_methods")
                    .with("ident", ident),
            )
            .await?;
        match r.get("methods") {
            Some(Value::Array(items)) => Ok(items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()),
            _ => Err(ClientError::Protocol(
                "auth_methods reply without methods".into(),
            )),
        }
    }

    /// The connection's sealing key, agreed (X25519) on first use, if
    /// `method` needs one.
    async fn channel_for(
        &self,
        method: &dyn ClientMethod,
    ) -> Result<Option<SecretKey>, ClientError> {
        if !method.needs_channel() {
            return Ok(None);
        }
        let mut slot = self.inner.channel.lock().await;
        if let Some(k) = slot.as_ref() {
            return Ok(Some(k.clone()));
        }
        let me = X25519Client::new();
        let reply = self
            .request(
                Msg::new()
                    .with("action", "diffie_hellman")
                    .with("typ", "x25519")
                    .with("pubkey", me.public.to_vec()),
            )
            .await?;
        let server = reply
            .get("pubkey")
            .and_then(Value::as_bin)
            .ok_or_else(|| ClientError::Protocol("diffie_hellman reply without pubkey".into()))?;
        let key = me
            .finish(server)
            .map_err(|e| ClientError::Auth(e.to_string()))?;
        *slot = Some(key.clone());
        Ok(Some(key))
    }

    /// Logs in if the greeting asks for it, with the strongest of
    /// `candidates` the server accepts (by each method's declared
    /// strength, `ClientRegistry::strength`). Returns the
    /// method used, or `None` when the server needs no login.
    pub async fn login_as_needed(
        &self,
        candidates: &[&dyn ClientMethod],
    ) -> Result<Option<&'static str>, ClientError> {
        let Some(list) = self.greeting.auth.as_ref() else {
            return Ok(None);
        };
        if list.first().is_none_or(Option::is_none) {
            return Ok(None);
        }
        let accepted: Vec<&str> = list.iter().flatten().map(String::as_str).collect();
        // Strongest first; a method keycard does not know goes last.
        let rank = |name: &str| std::cmp::Reverse(keycard_auth::ClientRegistry::strength(name));
        let mut usable: Vec<&&dyn ClientMethod> = candidates
            .iter()
            .filter(|m| accepted.contains(&m.name()))
            .collect();
        usable.sort_by_key(|m| rank(m.name()));
        // With a choice to make, the server says which methods each name
        // has; a server without `auth_methods` (DistKV, an older keycard)
        // leaves the choice to strength alone.
        if usable.len() > 1 {
            let mut has: Vec<(String, Vec<String>)> = Vec::new();
            let mut answered = true;
            for m in &usable {
                let ident = m.ident();
                if has.iter().any(|(i, _)| *i == ident) {
                    continue;
                }
                match self.auth_methods(&ident).await {
                    Ok(known) => has.push((ident, known)),
                    Err(e) if e.code() == Some(ErrorCode::UnknownAction) => {
                        answered = false;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            let theirs = |m: &&&dyn ClientMethod| {
                has.iter()
                    .any(|(i, known)| *i == m.ident() && known.iter().any(|k| k == m.name()))
            };
            if answered && usable.iter().any(theirs) {
                usable.retain(theirs);
            }
        }
        let Some(m) = usable.first() else {
            return Err(ClientError::Auth(format!(
                "the server accepts {}, none of which the given credentials are for",
                accepted.join(", ")
            )));
        };
        self.login(**m).await?;
        Ok(Some(m.name()))
    }

    /// Creates or replaces `method`'s user record for its ident (needs the
    /// write_auth capability; super-root for `root`).
    pub async fn set_user(&self, method: &dyn ClientMethod) -> Result<Value, ClientError> {
        self.set_user_if(method, None).await
    }

    /// Creates `method`'s user record for its ident; a `conflict` error,
    /// and nothing changed, if the user already has one.
    pub async fn create_user(&self, method: &dyn ClientMethod) -> Result<Value, ClientError> {
        self.set_user_if(method, Some(Value::Nil)).await
    }

    /// Replaces `method`'s user record for its ident only if it is
    /// unchanged since `chain` (the `chain` an `auth_list` with `nchain`
    /// returned for it); a `conflict` error, and nothing changed, if it
    /// was deleted or changed since.
    pub async fn replace_user(
        &self,
        method: &dyn ClientMethod,
        chain: Value,
    ) -> Result<Value, ClientError> {
        self.set_user_if(method, Some(chain)).await
    }

    /// `auth_set` for `method`'s user, with DistKV's `chain` condition.
    async fn set_user_if(
        &self,
        method: &dyn ClientMethod,
        chain: Option<Value>,
    ) -> Result<Value, ClientError> {
        let key = self.channel_for(method).await?;
        let start = method.set_record(key.as_ref());
        let mut msg = start
            .request
            .with("action", "auth_set")
            .with("typ", method.name())
            .with("kind", "user")
            .with("ident", method.ident());
        if let Some(c) = chain {
            msg.set("chain", c);
        }
        self.exchange(msg, start.exchange, &mut no_factor).await
    }

    /// Sends the client's next message of the exchange under `seq`.
    fn answer(&self, seq: i64, msg: Msg) -> Result<(), ClientError> {
        self.inner
            .out
            .send(msg.with("seq", seq).into_value())
            .map_err(|_| self.closed_error())
    }

    /// Runs a request that may be a multi-step exchange.
    async fn exchange(
        &self,
        msg: Msg,
        mut ex: Option<Box<dyn keycard_auth::Exchange<()>>>,
        next_factor: &mut (dyn FnMut(&str) -> Result<ClientLogin, ClientError> + Send),
    ) -> Result<Value, ClientError> {
        let (seq, mut rx) = self.send(msg).await?;
        let result = async {
            let mut last = None;
            let mut acked = 0u64;
            loop {
                let Some(v) = rx.recv().await else {
                    return Err(self.closed_error());
                };
                if let Some(e) = server_error(&v) {
                    return Err(e);
                }
                self.ack(seq, &v, &mut acked);
                match v.state() {
                    Some("start") => continue,
                    Some("end") => return Ok(last.unwrap_or(v)),
                    _ => {}
                }
                let streamed = v.get("wseq").is_some();
                match ex.take() {
                    Some(step) => match crate::steps::settle(step.next(&v)) {
                        Step::Send(answer, next) => {
                            ex = Some(next);
                            self.answer(seq, answer)?;
                        }
                        Step::Done(()) => last = Some(v.clone()),
                        Step::Fail(AuthError::Failed) => {
                            return Err(ClientError::Auth(UNVERIFIED.into()))
                        }
                        Step::Fail(e) => return Err(ClientError::Auth(e.to_string())),
                        Step::Work(_) => {
                            return Err(ClientError::Auth("the client method failed".into()))
                        }
                    },
                    None => last = Some(v.clone()),
                }
                // The server asks for the next factor (after the last
                // method's final message, which the prompt may carry).
                if let Some(factor) = v.get("factor").and_then(Value::as_str) {
                    let start = next_factor(factor)?;
                    ex = start.exchange;
                    self.answer(seq, start.request)?;
                    continue;
                }
                if !streamed {
                    return Ok(last.unwrap_or(Value::Nil));
                }
            }
        }
        .await;
        lock(&self.inner.routes).remove(&seq);
        result
    }

    /// The value at `path`, if any.
    pub async fn get(&self, path: &Path) -> Result<Option<Node>, ClientError> {
        let v = self
            .request(
                Msg::new()
                    .with("action", "get_value")
                    .with_path("path", path)
                    .with("nchain", 0),
            )
            .await?;
        Ok(v.get("value").map(|value| Node {
            value: value.clone(),
            tock: v.get("tock").and_then(Value::as_u64).unwrap_or(0),
        }))
    }

    /// Sets `path` to `value`.
    pub async fn set(&self, path: &Path, value: Value) -> Result<SetResult, ClientError> {
        self.write(
            Msg::new()
                .with("action", "set_value")
                .with_path("path", path)
                .with("value", value),
        )
        .await
    }

    /// Sets `path` to `value` only if it holds no value yet.
    pub async fn create(&self, path: &Path, value: Value) -> Result<SetResult, ClientError> {
        self.write(
            Msg::new()
                .with("action", "set_value")
                .with_path("path", path)
                .with("value", value)
                .with("chain", Value::Nil),
        )
        .await
    }

    /// Removes the value at `path`.
    pub async fn delete(&self, path: &Path) -> Result<SetResult, ClientError> {
        self.write(
            Msg::new()
                .with("action", "delete_value")
                .with_path("path", path),
        )
        .await
    }

    /// Sends a set/delete-shaped request and reads its reply.
    pub async fn write(&self, msg: Msg) -> Result<SetResult, ClientError> {
        let v = self.request(msg.with("nchain", 0)).await?;
        Ok(SetResult {
            changed: v.get("changed").is_some_and(Value::truthy),
            tock: v.get("tock").and_then(Value::as_u64).unwrap_or(0),
            prev: v.get("prev").cloned(),
        })
    }

    /// Streams the subtree at `path` (`min_depth`/`max_depth` bound it).
    pub async fn get_tree(
        &self,
        path: &Path,
        min_depth: Option<usize>,
        max_depth: Option<usize>,
    ) -> Result<Stream, ClientError> {
        let mut msg = Msg::new()
            .with("action", "get_tree")
            .with_path("path", path)
            .with("long_path", true);
        if let Some(d) = min_depth {
            msg.set("min_depth", d);
        }
        if let Some(d) = max_depth {
            msg.set("max_depth", d);
        }
        self.stream(msg).await
    }

    /// Watches the subtree at `path`; with `fetch`, its current state comes
    /// first, then an `uptodate` marker (see [`Stream::uptodate`]).
    pub async fn watch(&self, path: &Path, fetch: bool) -> Result<Stream, ClientError> {
        let msg = Msg::new()
            .with("action", "watch")
            .with_path("path", path)
            .with("fetch", fetch)
            .with("long_path", true);
        self.stream(msg).await
    }

    /// Stops a stream of this connection.
    pub async fn stop(&self, seq: i64) -> Result<bool, ClientError> {
        let v = self
            .request(Msg::new().with("action", "stop").with("task", seq))
            .await?;
        Ok(v.get("result").is_some_and(Value::truthy))
    }

    /// Logs in with a bearer token (`keycard token create`).
    pub async fn login_token(&self, token: &str) -> Result<(), ClientError> {
        self.request(
            Msg::new()
                .with("action", "auth")
                .with("typ", keycard_auth::TOKEN)
                .with("token", token),
        )
        .await
        .map(|_| ())
    }

    /// Extends this connection's keycard (by at most `ttl` seconds, and
    /// never past its maximum lifetime); returns its new expiry (Unix
    /// ms). A keycard that has expired answers `keycard_expired`: log in
    /// again.
    pub async fn keep_alive(&self, ttl: Option<u64>) -> Result<u64, ClientError> {
        let mut m = Msg::new().with("action", "keep_alive");
        if let Some(t) = ttl {
            m.set("ttl", t);
        }
        let v = self.request(m).await?;
        v.get("expires_at")
            .and_then(Value::as_u64)
            .ok_or_else(|| ClientError::Protocol("keep_alive without expires_at".into()))
    }

    /// Ends this connection's login; its keycard is removed.
    pub async fn logout(&self) -> Result<(), ClientError> {
        self.request(Msg::new().with("action", "logout"))
            .await
            .map(|_| ())
    }
}

/// A TCP connection, or an error once [`CONNECT_TIMEOUT`] has passed.
async fn within_connect_timeout(
    connecting: impl std::future::Future<Output = std::io::Result<TcpStream>>,
) -> Result<TcpStream, ClientError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(socket) => socket.map_err(|e| ClientError::Io(e.to_string())),
        Err(_) => Err(ClientError::Io(format!(
            "no connection within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// Reads until the server's first message, which must be a greeting.
async fn read_greeting<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    decoder: &mut Decoder,
    chunk: &mut [u8],
) -> Result<Greeting, ClientError> {
    let mut first = true;
    loop {
        if let Some(v) = decoder
            .next_value()
            .map_err(|e| ClientError::Protocol(e.to_string()))?
        {
            // A server over its connection limit says so instead.
            if let Some(e) = server_error(&v) {
                return Err(e);
            }
            return Greeting::parse(v);
        }
        let n = rd
            .read(chunk)
            .await
            .map_err(|e| ClientError::Io(e.to_string()))?;
        if n == 0 {
            return Err(ClientError::Closed(Some("before the greeting".into())));
        }
        if first && chunk[..n].starts_with(b"HTTP/") {
            return Err(ClientError::Protocol(
                "the server answered in HTTP: this is an HTTP port (keycard's REST API?), \
                 not keycard's msgpack listener"
                    .into(),
            ));
        }
        // A TLS record (an alert, or a handshake): a TLS listener that
        // took our plaintext for a broken ClientHello.
        if first && matches!(chunk[..n], [0x15 | 0x16, 0x03, ..]) {
            return Err(ClientError::Tls(
                "the server answered with TLS: connect over TLS (keycard: --tls-ca FILE, or \
                 --tls for the system's CAs)"
                    .into(),
            ));
        }
        first = false;
        decoder.feed(&chunk[..n]);
    }
}

async fn read_loop<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    decoder: &mut Decoder,
    chunk: &mut [u8],
    routes: &Routes,
) -> String {
    // The server's last word before closing (a revoked keycard, too many
    // failed logins), for the error every pending call gets.
    let mut last = None;
    loop {
        loop {
            match decoder.next_value() {
                Ok(Some(v)) => {
                    if let Some(e) = route(routes, v) {
                        last = Some(e);
                    }
                }
                Ok(None) => break,
                Err(e) => return decode_failure(e),
            }
        }
        match rd.read(chunk).await {
            Ok(0) => {
                return match &last {
                    Some(e) => format!("the server closed the connection: {e}"),
                    None => "the server closed the connection".into(),
                }
            }
            Ok(n) => decoder.feed(&chunk[..n]),
            Err(e) => return e.to_string(),
        }
    }
}

fn decode_failure(e: DecodeError) -> String {
    format!("undecodable data from the server: {e}")
}

/// Hands `v` to its request; returns a connection-level error.
fn route(routes: &Routes, v: Value) -> Option<ClientError> {
    match v.seq() {
        Some(seq) => {
            let routes = lock(routes);
            if let Some(tx) = routes.get(&seq) {
                let _ = tx.send(v);
            }
            None
        }
        None => {
            let e = server_error(&v)?;
            tracing::warn!(error = %e, "connection-level error from the server");
            Some(e)
        }
    }
}

/// A reply stream: `get_tree` or `watch` items, in order.
pub struct Stream {
    client: Client,
    seq: i64,
    rx: mpsc::UnboundedReceiver<Value>,
    acked: u64,
    prev: Vec<keycard_proto::Elem>,
    done: bool,
}

/// What [`Stream::next_event`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A node (or, in a watch, a change).
    Item(TreeItem),
    /// A watch finished sending the current state.
    UpToDate,
}

impl Stream {
    /// The request's seq (for [`Client::stop`]).
    pub fn seq(&self) -> i64 {
        self.seq
    }

    /// The next item, skipping markers; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Result<TreeItem, ClientError>> {
        loop {
            match self.next_event().await? {
                Ok(Event::Item(i)) => return Some(Ok(i)),
                Ok(Event::UpToDate) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// The next message of the stream as the server sent it (markers
    /// skipped), for streams whose items are not tree nodes.
    pub async fn next_raw(&mut self) -> Option<Result<Value, ClientError>> {
        loop {
            if self.done {
                return None;
            }
            let Some(v) = self.rx.recv().await else {
                self.done = true;
                return Some(Err(self.client.closed_error()));
            };
            self.client.ack(self.seq, &v, &mut self.acked);
            if let Some(e) = server_error(&v) {
                return Some(Err(e));
            }
            match v.state() {
                Some("end") => {
                    self.done = true;
                    return None;
                }
                Some(_) => continue,
                None => return Some(Ok(v)),
            }
        }
    }

    /// Reads items until the `uptodate` marker; returns them.
    pub async fn uptodate(&mut self) -> Result<Vec<TreeItem>, ClientError> {
        let mut items = Vec::new();
        loop {
            match self.next_event().await {
                Some(Ok(Event::Item(i))) => items.push(i),
                Some(Ok(Event::UpToDate)) => return Ok(items),
                Some(Err(e)) => return Err(e),
                None => return Err(ClientError::Protocol("stream ended before uptodate".into())),
            }
        }
    }

    /// The next item or marker; `None` when the stream ended.
    pub async fn next_event(&mut self) -> Option<Result<Event, ClientError>> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Event, ClientError>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let Some(v) = std::task::ready!(self.rx.poll_recv(cx)) else {
                self.done = true;
                return Poll::Ready(Some(Err(self.client.closed_error())));
            };
            if let Some(event) = self.handle(&v) {
                return Poll::Ready(event);
            }
        }
    }

    /// Interprets one message of the stream; `None` for ones that carry
    /// nothing for the caller.
    fn handle(&mut self, v: &Value) -> Option<Option<Result<Event, ClientError>>> {
        self.client.ack(self.seq, v, &mut self.acked);
        if let Some(e) = server_error(v) {
            return Some(Some(Err(e)));
        }
        match v.state() {
            Some("end") => {
                self.done = true;
                lock(&self.client.inner.routes).remove(&self.seq);
                Some(None)
            }
            Some("uptodate") => Some(Some(Ok(Event::UpToDate))),
            Some(_) => None,
            None => Some(Some(self.item(v).map(Event::Item))),
        }
    }

    fn item(&mut self, v: &Value) -> Result<TreeItem, ClientError> {
        let depth = v.get("depth").and_then(Value::as_u64).unwrap_or(0) as usize;
        let tail = v
            .get("path")
            .map(Path::from_value)
            .transpose()
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .unwrap_or_default();
        if depth > self.prev.len() {
            return Err(ClientError::Protocol(
                "path depth beyond the previous path".into(),
            ));
        }
        let mut rel: Vec<_> = self.prev[..depth].to_vec();
        rel.extend(tail.elems().iter().cloned());
        self.prev = rel.clone();
        Ok(TreeItem {
            path: Path::new(rel),
            value: v.get("value").cloned(),
            tock: v.get("tock").and_then(Value::as_u64).unwrap_or(0),
        })
    }

    /// Collects the remaining items.
    pub async fn collect(mut self) -> Result<Vec<TreeItem>, ClientError> {
        let mut out = Vec::new();
        while let Some(i) = self.next().await {
            out.push(i?);
        }
        Ok(out)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        lock(&self.client.inner.routes).remove(&self.seq);
    }
}

impl futures_core::Stream for Stream {
    type Item = Result<TreeItem, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            return match std::task::ready!(self.poll_event(cx)) {
                None => Poll::Ready(None),
                Some(Ok(Event::UpToDate)) => continue,
                Some(Ok(Event::Item(i))) => Poll::Ready(Some(Ok(i))),
                Some(Err(e)) => Poll::Ready(Some(Err(e))),
            };
        }
    }
}
