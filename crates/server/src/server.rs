//! Binding, accepting, and the handle tests and the binary hold.

use std::net::SocketAddr;
use std::sync::Arc;

use keycard_auth::{Argon2Params, ClientRegistry, MethodSecrets, Registry};
use keycard_store::{RedbOptions, RedbStore, Store, StoreError};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::Config;
use crate::conn;
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
}

/// A bound server, ready to accept.
pub struct Server {
    listener: TcpListener,
    /// The REST listener (`config.http`).
    http: Option<TcpListener>,
    state: Arc<ServerState>,
}

/// The file in the data directory holding the embedded store.
pub const STORE_FILE: &str = "keycard.redb";

impl Server {
    /// Opens the embedded store in `config.data` and binds `config.listen`.
    pub async fn open(config: Config) -> Result<Server, StartError> {
        std::fs::create_dir_all(&config.data).map_err(|source| StartError::Io {
            what: format!("cannot create data directory {}", config.data.display()),
            source,
        })?;
        let file = config.data.join(STORE_FILE);
        let opts = RedbOptions {
            history: config.history,
            ..RedbOptions::default()
        };
        let store = tokio::task::spawn_blocking(move || RedbStore::open(&file, opts))
            .await
            .map_err(|e| StartError::Store(StoreError::Backend(e.to_string())))??;
        Self::with_store(config, Arc::new(store)).await
    }

    /// Binds `config.listen` serving `store`.
    pub async fn with_store(config: Config, store: Arc<dyn Store>) -> Result<Server, StartError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Io {
                what: format!("cannot listen on {}", config.listen),
                source,
            })?;
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
        let methods = tokio::task::spawn_blocking(move || Registry::builtin(secrets))
            .await
            .map_err(|e| StartError::Config(e.to_string()))?
            .map_err(|e| StartError::Config(e.to_string()))?;
        let audit_path = config
            .audit_log
            .clone()
            .unwrap_or_else(|| config.data.join("audit.log"));
        std::fs::create_dir_all(&config.data).map_err(|source| StartError::Io {
            what: format!("cannot create data directory {}", config.data.display()),
            source,
        })?;
        let audit = crate::audit::Audit::open(&audit_path)
            .await
            .map_err(|source| StartError::Io {
                what: format!("cannot open the audit log {}", audit_path.display()),
                source,
            })?;
        let state = ServerState::new(config, store, methods, audit).await?;
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
        if let (Some(p), true) = (password, methods.iter().any(|m| *m == "root")) {
            tracing::warn!(
                "method root is accepted beside {p}: any client logs in as super-root without a \
                 secret (run `keycard auth init` again without `--accept root` to stop it)"
            );
        }
        let http = match state.config.http {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Io {
                        what: format!("cannot listen on {addr} (http)"),
                        source,
                    })?,
            ),
            None => None,
        };
        Ok(Server {
            listener,
            http,
            state,
        })
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
        if let Some(http) = self.http.take() {
            let served = crate::http::serve(self.state.clone(), http);
            // Ends with this task: aborting the server stops both.
            let _http = AbortOnDrop(tokio::spawn(served));
            return self.accept_loop().await;
        }
        self.accept_loop().await
    }

    async fn accept_loop(self) {
        let slots = Arc::new(Semaphore::new(self.state.config.max_connections));
        loop {
            match self.listener.accept().await {
                Ok((socket, peer)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "connection refused: max_connections reached");
                        tokio::spawn(refuse(socket));
                        continue;
                    };
                    let id = self.state.next_conn_id();
                    let span = tracing::info_span!("conn", id, %peer);
                    tracing::debug!(parent: &span, "connection accepted");
                    let served = conn::serve(self.state.clone(), socket, peer, id);
                    tokio::spawn(
                        async move {
                            served.await;
                            drop(permit);
                        }
                        .instrument(span),
                    );
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep
                    // serving the connections we have.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Runs the server in a task.
    pub fn spawn(self) -> std::io::Result<ServerHandle> {
        let addr = self.local_addr()?;
        let http_addr = self.http_addr();
        let state = self.state.clone();
        let task = tokio::spawn(self.run());
        Ok(ServerHandle {
            addr,
            http_addr,
            state,
            task,
        })
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Tells a connection over the limit why it is closed, then closes it.
async fn refuse(mut socket: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let msg = keycard_proto::Msg::new()
        .with(
            "error",
            "the server has too many connections; try again later",
        )
        .with(
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
