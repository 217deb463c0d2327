//! Binding, accepting, and the handle tests and the binary hold.

use std::net::SocketAddr;
use std::sync::Arc;

use keycard_auth::{Argon2Params, ClientRegistry, MethodSecrets, Registry};
use keycard_store::{
    Backend, MemOptions, MemStore, PgOptions, PgStore, RedbOptions, RedbStore, Store, StoreError,
};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::Config;
use crate::conn;
use crate::listener::{Listener, ListenerTls, Protocol, Refused, Stream};
use crate::state::ServerState;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory or the listening socket.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The store would not open.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// A configuration value is unusable.
    #[error("bad configuration: {0}")]
    Config(String),
    /// The data directory or a file holding secrets is open to other
    /// users, and this start did not create it so: the message says what
    /// to chmod.
    #[error("{0}")]
    Insecure(String),
    /// The TLS certificate or key would not load.
    #[error("TLS: {0}")]
    Tls(String),
    /// The seal key is missing, wrong or unreadable, or the sealed store
    /// does not open.
    #[error("{0}")]
    Seal(String),
}

/// A bound server, ready to accept.
pub struct Server {
    listener: Listener,
    /// The REST listener (`config.http`).
    http: Option<Listener>,
    /// The metrics listener (`config.metrics`).
    metrics: Option<tokio::net::TcpListener>,
    state: Arc<ServerState>,
}

/// The file in the data directory holding the embedded store.
pub const STORE_FILE: &str = "keycard.redb";

/// The store factory: opens the backend `config.store` names.
async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    match &config.store {
        Backend::Redb => {
            let file = config.data.join(STORE_FILE);
            private_file(&file, "the store")?;
            let opts = RedbOptions {
                history: config.history,
                ..RedbOptions::default()
            };
            // redb checks (and may repair) the file as it opens it.
            let store = tokio::task::spawn_blocking(move || RedbStore::open(&file, opts))
                .await
                .map_err(|e| StartError::Store(StoreError::Backend(e.to_string())))??;
            Ok(Arc::new(store))
        }
        Backend::Postgres(url) => {
            let target = keycard_store::PgTarget::parse(url)
                .map_err(StartError::Config)?
                .named(&format!("keycard {}", config.node));
            tracing::info!(store = %target, schema = %target.schema, node = %config.node, "the store is in PostgreSQL");
            let opts = PgOptions {
                history: config.history,
                ..PgOptions::default()
            };
            Ok(Arc::new(PgStore::open(&target, opts).await?))
        }
        Backend::Memory => {
            tracing::warn!(
                "the store is in memory (store = \"memory\"): everything written, users \
                 included, is lost when the server stops"
            );
            Ok(Arc::new(MemStore::new(MemOptions {
                history: config.history,
                ..MemOptions::default()
            })))
        }
    }
}

impl Server {
    /// Opens the store `config.store` names (by default the embedded one
    /// in `config.data`) and binds `config.listen`.
    pub async fn open(config: Config) -> Result<Server, StartError> {
        private_dir(&config.data)?;
        let store = open_store(&config).await?;
        Self::with_store(config, store).await
    }

    /// Binds `config.listen` serving `store`.
    pub async fn with_store(config: Config, store: Arc<dyn Store>) -> Result<Server, StartError> {
        // The seal comes first: nothing reads or writes a secret before it
        // is decided whether secrets are sealed.
        let key = config.seal.load().map_err(StartError::Seal)?;
        let (store, seal) = crate::seal::attach(store, key)
            .await
            .map_err(|e| StartError::Seal(e.to_string()))?;
        match &seal {
            Some(s) => {
                tracing::info!(seal_key = %s.sealer.seal_key_id(), "secrets sealed at rest")
            }
            None => tracing::warn!(
                "secrets are not sealed at rest: a copy of the data directory holds every \
                 verifier and the server's secret (give a seal key: docs/SEALING.md)"
            ),
        }
        let tls = crate::tls::Tls::load(&config.tls)
            .map_err(StartError::Tls)?
            .map(Arc::new);
        let listener_tls = |front| {
            tls.clone().map(|tls| ListenerTls {
                tls,
                front,
                handshake_timeout: std::time::Duration::from_secs(
                    config.tls.handshake_timeout.max(1),
                ),
            })
        };
        let msgpack_tls = listener_tls(crate::tls::Front::Msgpack);
        let http_tls = listener_tls(crate::tls::Front::Http);
        let listener = Listener::bind(
            "msgpack",
            config.listen,
            config.max_connections,
            config.max_connections_per_address,
        )
        .await
        .map_err(|source| StartError::Io {
            what: format!("cannot listen on {}", config.listen),
            source,
        })?
        .with_tls(msgpack_tls);
        let secrets = MethodSecrets {
            mock_key: crate::state::server_secret(store.as_ref()).await?,
            scram_iterations: config.scram_iterations,
            argon2: Argon2Params {
                m_kib: config.argon2_m_kib,
                t: config.argon2_t,
                p: config.argon2_p,
            },
            opaque_setup: crate::state::server_bytes(
                store.as_ref(),
                "opaque_setup",
                keycard_auth::new_server_setup,
            )
            .await?,
        };
        let mut methods = tokio::task::spawn_blocking(move || Registry::builtin(secrets))
            .await
            .map_err(|e| StartError::Config(e.to_string()))?
            .map_err(|e| StartError::Config(e.to_string()))?;
        for m in &config.extra_methods.0 {
            methods
                .add(m.clone())
                .map_err(|e| StartError::Config(e.to_string()))?;
        }
        let audit_path = config
            .audit_log
            .clone()
            .unwrap_or_else(|| config.data.join("audit.log"));
        private_dir(&config.data)?;
        private_file(&audit_path, "the audit log")?;
        let audit = crate::audit::Audit::open(&audit_path, config.clock.clone())
            .await
            .map_err(|source| StartError::Io {
                what: format!("cannot open the audit log {}", audit_path.display()),
                source,
            })?;
        let state = ServerState::new(config, store, methods, audit).await?;
        if let Some(seal) = seal {
            let _ = state.seal.set(seal);
        }
        match tls {
            Some(tls) => {
                tracing::info!(fingerprint = %tls.fingerprint(), "TLS on both listeners");
                let _ = state.tls.set(tls);
            }
            None => {
                let c = &state.config;
                let exposed: Vec<String> = std::iter::once(c.listen)
                    .chain(c.http)
                    .filter(|a| !a.ip().is_loopback())
                    .map(|a| a.to_string())
                    .collect();
                if !exposed.is_empty() {
                    tracing::warn!(
                        addresses = %exposed.join(", "),
                        "listening beyond loopback without TLS: tokens, data and REST answers \
                         cross the network in clear (set [tls] cert and key, or --tls-cert and --tls-key)"
                    );
                }
            }
        }
        crate::core::tokens::spawn_reaper(&state);
        crate::core::cluster::spawn(&state);
        let auth = state.auth();
        match &auth.current {
            None => tracing::warn!(
                "no auth method is current: this server is OPEN, every client may read and write everything \
                 (create a user and run set_auth_typ, e.g. `keycard auth init root`)"
            ),
            Some(m) => tracing::info!(method = %m, "logins required"),
        }
        // `root` needs no secret and grants super-root: accepted beside a
        // password method, it quietly reopens the server.
        let methods: Vec<&String> = auth.current.iter().chain(&auth.accept).collect();
        let password = methods.iter().find(|m| ClientRegistry::needs_password(m));
        if let (Some(p), true) = (
            password,
            methods.iter().any(|m| ClientRegistry::super_root(m)),
        ) {
            tracing::warn!(
                "method root is accepted beside {p}: any client logs in as super-root without a \
                 secret (run `keycard auth init` again without `--accept root` to stop it)"
            );
        }
        let http = match state.config.http {
            Some(addr) => Some(
                Listener::bind(
                    "http",
                    addr,
                    state.config.http_max_connections.max(1),
                    state.config.http_max_connections_per_address,
                )
                .await
                .map_err(|source| StartError::Io {
                    what: format!("cannot listen on {addr} (http)"),
                    source,
                })?
                .with_tls(http_tls),
            ),
            None => None,
        };
        let metrics =
            match state.config.metrics {
                Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(
                    |source| StartError::Io {
                        what: format!("cannot listen on {addr} (metrics)"),
                        source,
                    },
                )?),
                None => None,
            };
        Ok(Server {
            listener,
            http,
            metrics,
            state,
        })
    }

    /// The metrics listener's address, if it has one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The REST listener's address, if it has one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The shared state.
    pub fn state(&self) -> &Arc<ServerState> {
        &self.state
    }

    /// Accepts connections until the task is dropped or aborted.
    pub async fn run(mut self) {
        let _metrics = self
            .metrics
            .take()
            .map(|l| AbortOnDrop(tokio::spawn(serve_metrics(self.state.clone(), l))));
        if let Some(http) = self.http.take() {
            let served = crate::http::serve(self.state.clone(), http);
            // Ends with this task: aborting the server stops both.
            let _http = AbortOnDrop(tokio::spawn(served));
            return self.accept_loop().await;
        }
        self.accept_loop().await
    }

    async fn accept_loop(self) {
        let msgpack = Msgpack {
            state: self.state.clone(),
        };
        self.listener.run(msgpack).await
    }

    /// Runs the server in a task.
    pub fn spawn(self) -> std::io::Result<ServerHandle> {
        let addr = self.local_addr()?;
        let http_addr = self.http_addr();
        let metrics_addr = self.metrics_addr();
        let state = self.state.clone();
        let task = tokio::spawn(self.run());
        Ok(ServerHandle {
            addr,
            http_addr,
            metrics_addr,
            state,
            task,
        })
    }
}

/// Most scrapes answered at once on the metrics listener.
const MAX_SCRAPES: usize = 16;

/// Serves `GET /metrics` on `listener` (config `metrics`): one request
/// per connection, its head within 5 s and 8 KiB; anything else is 404
/// (405 for another method). Runs until aborted.
async fn serve_metrics(state: Arc<ServerState>, listener: tokio::net::TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        // Beyond the limit, the connection is closed at once.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut head = Vec::with_capacity(512);
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match tokio::io::AsyncReadExt::read(&mut conn, &mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                true
            })
            .await;
            if !matches!(read, Ok(true)) {
                return;
            }
            let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line);
            let mut words = line.split_whitespace();
            let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            let path = target.split('?').next().unwrap_or("");
            let (status, kind, body) = match (method, path) {
                ("GET", "/metrics") => (
                    "200 OK",
                    crate::metrics::CONTENT_TYPE,
                    state.metrics_text().await,
                ),
                (_, "/metrics") => (
                    "405 Method Not Allowed",
                    "text/plain",
                    "GET only\n".to_owned(),
                ),
                _ => (
                    "404 Not Found",
                    "text/plain",
                    "metrics are at /metrics\n".to_owned(),
                ),
            };
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            use tokio::io::AsyncWriteExt as _;
            let _ = conn.write_all(answer.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// Permission bits that let users other than the owner in.
const OTHERS: u32 = 0o077;

/// Permission bits that let users other than the owner change things.
const OTHERS_WRITE: u32 = 0o022;

/// The data directory: created 0700 (whatever the umask) if missing. One
/// that exists is refused if others may write to it (they could replace
/// the store); one they may only list gets a loud warning (its files are
/// 0600 and checked, but their names and sizes show).
fn private_dir(dir: &std::path::Path) -> Result<(), StartError> {
    let io = |what: &str| {
        let what = format!("{what} {}", dir.display());
        move |source| StartError::Io { what, source }
    };
    match std::fs::metadata(dir) {
        Ok(meta) => {
            let mode = mode_of(&meta);
            if mode & OTHERS_WRITE != 0 {
                return refuse_if_open(dir, "the data directory", &meta, 0o700);
            }
            if mode & OTHERS != 0 {
                tracing::warn!(
                    "the data directory {} is readable by other users (mode {mode:o}); \
                     run `chmod 700 {}`",
                    dir.display(),
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            b.create(dir)
                .map_err(io("cannot create the data directory"))?;
            set_mode(dir, 0o700).map_err(io("cannot restrict the data directory"))
        }
        Err(source) => Err(io("cannot read the data directory")(source)),
    }
}

/// A file holding secrets (the store, the audit log): created empty and
/// 0600 (whatever the umask) if missing, so it is never readable by
/// others, not even for a moment; refused if it exists and lets other
/// users in.
fn private_file(file: &std::path::Path, what: &str) -> Result<(), StartError> {
    let io = |doing: &str| {
        let what = format!("{doing} {what} {}", file.display());
        move |source| StartError::Io { what, source }
    };
    match std::fs::metadata(file) {
        Ok(meta) => refuse_if_open(file, what, &meta, 0o600),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
            match o.open(file) {
                Ok(_) => {}
                // Created by someone else meanwhile: check that one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return private_file(file, what)
                }
                Err(e) => return Err(io("cannot create")(e)),
            }
            set_mode(file, 0o600).map_err(io("cannot restrict"))
        }
        Err(source) => Err(io("cannot read")(source)),
    }
}

#[cfg(unix)]
fn mode_of(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o777
}

#[cfg(not(unix))]
fn mode_of(_: &std::fs::Metadata) -> u32 {
    0o700
}

#[cfg(unix)]
fn set_mode(path: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &std::path::Path, _: u32) -> std::io::Result<()> {
    Ok(())
}

/// Refuses to start on a path this start did not create that lets other
/// users read (or write) it: secrets would be, or have been, exposed.
fn refuse_if_open(
    path: &std::path::Path,
    what: &str,
    meta: &std::fs::Metadata,
    want: u32,
) -> Result<(), StartError> {
    let mode = mode_of(meta);
    // Only regular files and directories: a log sent to a device or a
    // pipe is the operator's choice.
    if (meta.is_file() || meta.is_dir()) && mode & OTHERS != 0 {
        return Err(StartError::Insecure(format!(
            "refusing to start: {what} {path} is open to other users (mode {mode:o}); \
             run `chmod {want:o} {path}` and start again",
            path = path.display()
        )));
    }
    Ok(())
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The msgpack protocol, as a listener serves it.
#[derive(Clone)]
struct Msgpack {
    state: Arc<ServerState>,
}

impl Protocol for Msgpack {
    fn serve(
        self,
        stream: Stream,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let id = self.state.next_conn_id();
        let span = tracing::info_span!("conn", id, %peer);
        tracing::debug!(parent: &span, "connection accepted");
        let state = self.state;
        async move {
            let actions = crate::actions::Actions;
            match stream {
                // A TCP socket's halves need no lock between them.
                Stream::Plain(socket) => {
                    conn::serve(actions, state, socket.into_split(), peer, id, None).await
                }
                Stream::Tls(tls, info) => {
                    let halves = tokio::io::split(tls);
                    conn::serve(actions, state, halves, peer, id, Some(info)).await
                }
            }
        }
        .instrument(span)
    }

    fn refuse(
        self,
        socket: TcpStream,
        peer: SocketAddr,
        why: Refused,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let why = match why {
            Refused::PerAddress => {
                tracing::warn!(%peer, "connection refused: max_connections_per_address reached");
                "too many connections from this address (max_connections_per_address); \
                 close some or try again later"
            }
            Refused::Total => {
                tracing::warn!(%peer, "connection refused: max_connections reached");
                "the server has too many connections; try again later"
            }
        };
        refuse(socket, why)
    }
}

/// Tells a connection over a limit why it is closed, then closes it.
async fn refuse(mut socket: tokio::net::TcpStream, why: &'static str) {
    use tokio::io::AsyncWriteExt;
    let msg = keycard_proto::Msg::new().with("error", why).with(
        "code",
        keycard_proto::ErrorCode::TooManyConnections.as_str(),
    );
    let bytes = keycard_proto::encode(&msg.into_value());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), socket.write_all(&bytes)).await;
    let _ = socket.shutdown().await;
}

/// A running server.
pub struct ServerHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its REST listener is, if it has one.
    pub http_addr: Option<SocketAddr>,
    /// The metrics listener's address, if on.
    pub metrics_addr: Option<SocketAddr>,
    /// Its state.
    pub state: Arc<ServerState>,
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// Stops accepting connections.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}
