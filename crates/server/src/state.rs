//! State shared by every connection: config, store, methods, and the auth
//! configuration cached from the reserved root.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use keycard_auth::{Registry, SecretKey};
use keycard_proto::{Elem, Path, Value};
use keycard_store::{Cond, Op, Store, StoreError};
use rand::RngCore;

use crate::config::Config;

/// What `(nil, "auth")` and the stored user records say about logins.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuthConfig {
    /// Whether `(nil, "auth")` exists at all (then the greeting has `auth`).
    pub configured: bool,
    /// The current method; `None` leaves the server open.
    pub current: Option<String>,
    /// Further methods logins may use (`accept` in `(nil, "auth")`).
    pub accept: Vec<String>,
}

impl AuthConfig {
    /// What an `(…, nil, "auth")` record says (`None`: no record).
    pub fn from_record(record: Option<&Value>) -> AuthConfig {
        let current = record
            .and_then(|v| v.get("current"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let accept = match record.and_then(|v| v.get("accept")) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .filter(|m| Some(*m) != current.as_deref())
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        AuthConfig {
            configured: record.is_some(),
            current,
            accept,
        }
    }

    /// Whether a login with `method` is accepted: any while the server is
    /// open, else the current method and the accepted ones.
    pub fn accepts(&self, method: &str) -> bool {
        match &self.current {
            None => true,
            Some(c) => c == method || self.accept.iter().any(|a| a == method),
        }
    }
}

/// Shared server state.
pub struct ServerState {
    /// The configuration the server started with.
    pub config: Config,
    /// The tree.
    pub store: Arc<dyn Store>,
    /// The loaded auth methods.
    pub methods: Registry,
    auth: RwLock<AuthConfig>,
    /// When the server last stopped being open (a method became current
    /// while this process ran): connections opened before get their
    /// `login_timeout` from then.
    logins_since: std::sync::Mutex<Option<tokio::time::Instant>>,
    next_conn: AtomicU64,
    /// Permits for CPU-heavy work (password hashes, key agreement).
    workers: tokio::sync::Semaphore,
    /// How many there are.
    hash_workers: usize,
    /// The Prometheus metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The audit log.
    pub audit: crate::audit::Audit,
    /// Compiled ACLs.
    pub acls: crate::acl::AclCache,
    /// The keycard table.
    pub bouncer: Arc<crate::bouncer::Bouncer>,
    /// Each user record's last logins (written behind).
    pub logins: Arc<crate::logins::LastLogins>,
    /// Changes to one user take turns.
    pub(crate) names: crate::names::NameLocks,
    /// The login throttle's counters (the authority; written behind).
    pub throttle: Arc<crate::throttle::Throttle>,
    /// The listeners' TLS, when on (set once, as the server starts).
    pub(crate) tls: std::sync::OnceLock<Arc<crate::tls::Tls>>,
    /// The seal, when secrets are sealed (set once, as the server starts).
    pub(crate) seal: std::sync::OnceLock<Arc<crate::seal::Seal>>,
    /// This process among the nodes of a shared store: random, made at
    /// start (node names may repeat; this does not).
    pub(crate) instance: String,
    /// The keycards of this node whose records other nodes see (a shared
    /// store): each record is deleted once its keycard ends here.
    pub(crate) mirrored:
        std::sync::Mutex<std::collections::HashSet<keycard_auth::bouncer::KeycardId>>,
}

/// Every child of `root` (the nodes one level below it, in order), page
/// by page, yielding between pages, until `f` returns `false`.
pub(crate) async fn each_child(
    store: &dyn keycard_store::Store,
    root: &Path,
    mut f: impl FnMut(Path, keycard_store::Entry) -> bool,
) -> Result<(), StoreError> {
    use keycard_store::{After, ScanOpts};
    let opts = ScanOpts {
        min_depth: 1,
        max_depth: Some(1),
    };
    let mut page = store.scan(root, opts, After::Start, 1024).await?;
    loop {
        for (p, e) in page.items {
            if !f(p, e) {
                return Ok(());
            }
        }
        match page.next {
            Some(c) => {
                tokio::task::yield_now().await;
                page = store.scan(root, opts, After::Cursor(&c), 1024).await?;
            }
            None => return Ok(()),
        }
    }
}

/// How long a readiness check waits for the store.
pub const READY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// The most changes a ready node may not have seen yet.
pub const READY_MAX_LAG: u64 = 10_000;

/// `(nil, "auth")`.
pub fn auth_root() -> Path {
    Path::new(vec![Elem::Nil, "auth".into()])
}

/// `(nil, "session", SID)`: a REST session kept across restarts.
pub(crate) fn session_path(id: keycard_auth::bouncer::KeycardId) -> Path {
    Path::new(vec![
        Elem::Nil,
        "session".into(),
        id.to_string().as_str().into(),
    ])
}

/// `(nil, "server", NAME)`: the server's own long-term material.
pub fn server_path(name: &str) -> Path {
    Path::new(vec![Elem::Nil, "server".into(), name.into()])
}

/// The bytes at `(nil, "server", name)`, created with `make` on first
/// start (if two nodes race, the first write wins and both use it).
pub async fn server_bytes(
    store: &dyn Store,
    name: &str,
    make: impl Fn() -> Vec<u8>,
) -> Result<Vec<u8>, StoreError> {
    for _ in 0..2 {
        if let Some(e) = store.get(&server_path(name)).await? {
            return e
                .value
                .as_bin()
                .map(<[u8]>::to_vec)
                .ok_or_else(|| StoreError::Corrupt(format!("server {name} is not bytes")));
        }
        let fresh = make();
        let op = Op::Put {
            path: server_path(name),
            value: Value::Bin(fresh.clone()),
            cond: Cond::Absent,
            idem: false,
        };
        match store.write(vec![op]).await {
            Ok(_) => return Ok(fresh),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Corrupt(format!(
        "server {name} could not be created"
    )))
}

/// The server's secret (32 random bytes under the reserved root), created
/// on first start. Methods derive what they answer for unknown users from
/// it, so those answers are stable across restarts.
pub async fn server_secret(store: &dyn Store) -> Result<SecretKey, StoreError> {
    let bytes = server_bytes(store, "secret", || {
        let mut fresh = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut fresh);
        fresh.to_vec()
    })
    .await?;
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("the server secret is not 32 bytes".into()))?;
    Ok(SecretKey::new(key))
}

/// `(nil, "auth", METHOD, KIND, IDENT)`.
pub fn record_path(method: &str, kind: &str, ident: &str) -> Path {
    auth_root().child(method).child(kind).child(ident)
}

impl ServerState {
    /// Unix time in milliseconds, from the configured clock.
    pub fn now_ms(&self) -> u64 {
        self.config.clock.now_ms()
    }

    /// State for a server over `store`; reads the auth configuration.
    pub async fn new(
        config: Config,
        store: Arc<dyn Store>,
        methods: Registry,
        audit: crate::audit::Audit,
    ) -> Result<Arc<ServerState>, StoreError> {
        let workers = match config.hash_workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let policy = config.keycards.policy();
        let bouncer = crate::bouncer::Bouncer::new(policy, config.clock.clone());
        let instance = keycard_auth::bouncer::KeycardId::random().to_string()[..16].to_owned();
        let throttle = crate::throttle::Throttle::load(
            store.clone(),
            config.throttle.clone(),
            config.clock.clone(),
            config.store.shared().then_some(instance.as_str()),
        )
        .await?;
        let state = Arc::new(ServerState {
            config,
            store: store.clone(),
            methods,
            auth: RwLock::new(AuthConfig::default()),
            logins_since: std::sync::Mutex::new(None),
            next_conn: AtomicU64::new(1),
            workers: tokio::sync::Semaphore::new(workers),
            hash_workers: workers,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            audit,
            acls: crate::acl::AclCache::default(),
            bouncer: Arc::new(bouncer),
            logins: Arc::new(crate::logins::LastLogins::new(store.clone())),
            names: Default::default(),
            throttle,
            tls: std::sync::OnceLock::new(),
            seal: std::sync::OnceLock::new(),
            instance,
            mirrored: Default::default(),
        });
        state.audit.count_in(state.metrics.clone());
        state.bouncer.spawn_reaper();
        state.throttle.spawn_flusher();
        state.logins.spawn_flusher();
        state.refresh_auth().await?;
        Ok(state)
    }

    /// Whether no method is current (DistKV's open server), without
    /// copying the configuration (every request asks).
    pub fn is_open(&self) -> bool {
        self.auth
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .current
            .is_none()
    }

    /// The cached auth configuration.
    pub fn auth(&self) -> AuthConfig {
        self.auth.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads the auth configuration after a write under the reserved
    /// root.
    pub async fn refresh_auth(&self) -> Result<AuthConfig, StoreError> {
        let entry = self.store.get(&auth_root()).await?;
        let cfg = AuthConfig::from_record(entry.map(|e| e.value).as_ref());
        let mut auth = self.auth.write().unwrap_or_else(|e| e.into_inner());
        if auth.current.is_none() && cfg.current.is_some() {
            *self.logins_since.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(tokio::time::Instant::now());
        }
        *auth = cfg.clone();
        Ok(cfg)
    }

    /// When a connection opened at `opened` must have logged in by, on a
    /// server that requires logins: `login_timeout` after it opened, or
    /// after the server stopped being open if that came later (a
    /// connection of the open era had no reason to log in before).
    pub(crate) fn login_deadline(
        &self,
        opened: tokio::time::Instant,
        timeout: std::time::Duration,
    ) -> tokio::time::Instant {
        let since = *self.logins_since.lock().unwrap_or_else(|e| e.into_inner());
        since.map_or(opened, |t| t.max(opened)) + timeout
    }

    /// Runs CPU-heavy `work` on a blocking thread, at most `hash_workers`
    /// at a time; callers queue for a permit instead of piling up threads.
    pub async fn run_work<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let _permit = self.workers.acquire().await.ok()?;
        tokio::task::spawn_blocking(work).await.ok()
    }

    /// Whether this node can serve: each check's name, whether it
    /// passes, and what it found. `store`: a read answers within
    /// [`READY_DEADLINE`]; `hashing`: the pool for password hashes and key
    /// agreement has a free worker; `feed`: the node has published every
    /// change but at most [`READY_MAX_LAG`] (on a store other nodes share).
    pub async fn readiness(&self) -> Vec<(&'static str, bool, String)> {
        let mut out = Vec::with_capacity(3);
        let read = tokio::time::timeout(READY_DEADLINE, self.store.get(&auth_root())).await;
        out.push(match read {
            Ok(Ok(_)) => ("store", true, "a read answered".to_owned()),
            Ok(Err(e)) => ("store", false, e.to_string()),
            Err(_) => (
                "store",
                false,
                format!("no answer to a read within {READY_DEADLINE:?}"),
            ),
        });
        let free = self.workers.available_permits();
        out.push((
            "hashing",
            free > 0,
            format!("{free} of {} workers free", self.hash_workers),
        ));
        let lag = tokio::time::timeout(READY_DEADLINE, self.store.feed_lag()).await;
        out.push(match lag {
            Ok(Ok(n)) => (
                "feed",
                n <= READY_MAX_LAG,
                format!("{n} changes not yet seen here"),
            ),
            Ok(Err(e)) => ("feed", false, e.to_string()),
            Err(_) => (
                "feed",
                false,
                format!("no answer within {READY_DEADLINE:?}"),
            ),
        });
        out
    }

    /// The metrics' text exposition (OpenMetrics), with the gauges read
    /// now.
    pub async fn metrics_text(&self) -> String {
        let lag = tokio::time::timeout(READY_DEADLINE, self.store.feed_lag())
            .await
            .ok()
            .and_then(Result::ok);
        self.metrics.text(&crate::metrics::Now {
            keycards: self.bouncer.len(),
            hash_workers: self.hash_workers,
            hash_workers_free: self.workers.available_permits(),
            store_tock: self.store.tock().0,
            feed_lag: lag,
        })
    }

    /// A fresh connection id, for logs.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}

impl ServerState {
    /// Whether other nodes share the store (they may change the tree,
    /// keycards included, without this node writing).
    pub fn shared_store(&self) -> bool {
        self.config.store.shared()
    }

    /// Whether the listeners speak TLS.
    pub fn tls_enabled(&self) -> bool {
        self.tls.get().is_some()
    }

    /// Reads the TLS certificate and key again (SIGHUP, the `reload`
    /// action, `by` the user who asked). New handshakes use them;
    /// established connections keep theirs. A bad file changes nothing:
    /// the error says why, and the old certificate stays in use. Both
    /// outcomes are audited. Without TLS there is nothing to reload:
    /// `Ok(None)`.
    /// Ends the keycards of certificate logins whose certificate the CAs
    /// and revocation lists read by a reload refuse (a client certificate
    /// revoked since its login), each audited with the reason. The checks
    /// (a chain verification each) run off the event loop.
    async fn recheck_cert_logins(&self, tls: Arc<crate::tls::Tls>, by: Option<&str>) {
        let now = self.now_ms();
        let bouncer = self.bouncer.clone();
        let refused = tokio::task::spawn_blocking(move || {
            tls.recheck(now, |id| bouncer.table().show(id).is_some())
        })
        .await
        .unwrap_or_default();
        for (id, why) in refused {
            if let Some(card) = self.bouncer.revoke(id) {
                tracing::warn!(
                    keycard = %id, user = ?card.user, reason = %why,
                    "a certificate login's keycard revoked: its certificate is refused now"
                );
                let event = format!("revoked: client certificate refused: {why}");
                self.audit.keycard(&event, &card, by).await;
            }
        }
    }

    /// Whether REST sessions are kept across restarts: only when secrets
    /// are sealed (a session key logs in by itself, and must not lie in
    /// the data directory in clear).
    pub(crate) fn keeps_sessions(&self) -> bool {
        self.seal.get().is_some()
    }

    /// A keycard was revoked `by`: audited, and, if it was a kept REST
    /// session, its record deleted before this returns (so the
    /// revocation survives a restart that follows at once).
    pub(crate) async fn keycard_revoked(
        &self,
        card: &keycard_auth::bouncer::Keycard,
        by: Option<&str>,
    ) {
        self.audit.keycard("revoked", card, by).await;
        if self.keeps_sessions() {
            let op = keycard_store::Op::delete(session_path(card.id));
            if let Err(e) = self.store.write(vec![op]).await {
                tracing::error!(keycard = %card.id, error = %e, "a revoked REST session's record was not deleted");
            }
        }
    }

    pub async fn reload_tls(&self, by: Option<&str>) -> Result<Option<String>, String> {
        let Some(tls) = self.tls.get() else {
            return Ok(None);
        };
        match tls.reload() {
            Ok(fingerprint) => {
                self.audit.server("tls reloaded", &fingerprint, by).await;
                self.recheck_cert_logins(tls.clone(), by).await;
                Ok(Some(fingerprint))
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    kept = %tls.fingerprint(),
                    "TLS reload refused; the certificate in use stays"
                );
                self.audit.server("tls reload refused", &e, by).await;
                Err(e)
            }
        }
    }
}
