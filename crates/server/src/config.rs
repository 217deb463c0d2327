//! Server configuration: one struct, read from TOML, overridable from the
//! command line. Every field has a documented default.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Auth methods a server registers beside the built-in ones.
#[derive(Clone, Default)]
pub struct ExtraMethods(pub Vec<std::sync::Arc<dyn keycard_auth::Method>>);

impl std::fmt::Debug for ExtraMethods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|m| m.name()))
            .finish()
    }
}

/// Everything `keycard serve` can be told.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the msgpack listener. Default `127.0.0.1:27586`
    /// (DistKV's port).
    pub listen: SocketAddr,
    /// Data directory holding the store file. Default `./keycard-data`.
    pub data: PathBuf,
    /// Which store keeps the tree: `"redb"` (the default: the file
    /// `DATA/keycard.redb`), `"memory"` (nothing outlives the process;
    /// for tests) or a `postgres://USER@HOST:PORT/DB?…` URL (several
    /// nodes on one database; also as a `[store]` table with `url = …`).
    #[serde(deserialize_with = "store_backend")]
    pub store: keycard_store::Backend,
    /// Where the server reads the time (the system's clock; tests set a
    /// `ManualClock`). Not read from the config file.
    #[serde(skip)]
    pub clock: crate::clock::ClockHandle,
    /// Auth methods registered beside the built-in ones (a test's or an
    /// embedding program's own). Not read from the config file.
    #[serde(skip)]
    pub extra_methods: ExtraMethods,
    /// This node's name, sent in the greeting. Default `keycard`.
    pub node: String,
    /// Largest message accepted, in bytes. Default 1 MiB. A larger one is
    /// answered with `too_large` and the connection is closed (the byte
    /// stream cannot be resynchronised).
    pub max_message: usize,
    /// Most client connections at once. Default 10000; one more gets a
    /// `too_many_connections` error and is closed.
    pub max_connections: usize,
    /// Most client connections at once from one IP address (an IPv6
    /// address counts by its /64). Default 256; one more gets a
    /// `too_many_connections` error and is closed, so one address cannot
    /// take every slot.
    pub max_connections_per_address: usize,
    /// Seconds a connection may stay without a login on a server that
    /// requires logins (none while it is open; a connection opened while
    /// it was open has this long from when it stopped being open).
    /// Default 60; then it is told `timeout` and closed. 0: no limit.
    pub login_timeout: u64,
    /// Seconds a connection may stay idle (nothing received, no request
    /// running: a running `watch` is not idle). Default 3600; then it is
    /// told `timeout` and closed. 0: no limit.
    pub idle_timeout: u64,
    /// Seconds a message may take to arrive in full once its first byte
    /// has. Default 30; then the connection is told `timeout` and closed.
    /// 0: no limit.
    pub message_timeout: u64,
    /// Most requests outstanding per connection (streams included).
    /// Default 1024; more are answered with `too_many_requests`.
    pub max_outstanding: usize,
    /// Most values (scalars, arrays, maps) in one message. Default 131072.
    /// A decoded value takes ~32 bytes whatever its wire size.
    pub max_items: usize,
    /// Most memory one connection's requests may hold, in bytes: their
    /// messages (wire bytes plus ~32 bytes per decoded value), the pages
    /// of nodes they read, and their replies until written to the socket.
    /// Default 16 MiB. A request beyond it is answered with
    /// `too_many_requests`; a reply beyond it waits for the client to
    /// read; an `enum` reply beyond it is `too_large`.
    pub max_inflight_bytes: usize,
    /// Most replies queued for a client that is not reading (besides
    /// `max_inflight_bytes`). Default 1024.
    pub out_queue: usize,
    /// The flow-control window announced in the greeting. Default 10
    /// (DistKV's); each client answers with its own.
    pub qlen: u64,
    /// Failed logins allowed per connection before it is closed. Default 5.
    pub max_auth_attempts: u32,
    /// Changes kept for watches resuming from a tock (and catching up
    /// after falling behind). Default 100000. A watch whose client does not
    /// read for longer than this many changes is ended with `history_gone`.
    pub history: u64,
    /// Argon2id memory for new `password` hashes, KiB. Default 19456
    /// (OWASP's minimum: m = 19 MiB, t = 2, p = 1).
    pub argon2_m_kib: u32,
    /// Argon2id passes. Default 2.
    pub argon2_t: u32,
    /// Argon2id lanes. Default 1.
    pub argon2_p: u32,
    /// Threads for password hashing and key agreement, so a login storm
    /// never blocks the event loop. Default 0: one per CPU.
    pub hash_workers: usize,
    /// Login throttling (a `[throttle]` table; see `ThrottleConfig`).
    pub throttle: crate::throttle::ThrottleConfig,
    /// The audit log (JSON lines). Default `DATA/audit.log`.
    pub audit_log: Option<PathBuf>,
    /// The SCRAM iteration count announced for unknown users; set it to
    /// what your users' verifiers use so a prober cannot tell them apart.
    /// Default 4096 (PostgreSQL's).
    pub scram_iterations: u32,
    /// Keycard lifetimes and bounds (a `[keycards]` table; see
    /// `KeycardConfig`).
    pub keycards: KeycardConfig,
    /// Address of the REST (HTTP) listener. Default: none (off);
    /// `keycard serve --http 127.0.0.1:8427` turns it on.
    pub http: Option<SocketAddr>,
    /// Address of a listener that serves Prometheus metrics at
    /// `GET /metrics`, to anyone who reaches it (bind it where only the
    /// scraper can). Default: none (off).
    pub metrics: Option<SocketAddr>,
    /// Also serve `GET /metrics` on the REST listener, unauthenticated.
    /// Default false.
    pub metrics_on_http: bool,
    /// Largest REST request body, bytes. Default 65536; more is `413`.
    pub http_max_body: usize,
    /// Most REST connections at once. Default 1024; more get `503`.
    pub http_max_connections: usize,
    /// Most REST connections at once from one IP address. Default 256;
    /// more get `503`. Behind a reverse proxy every connection comes from
    /// the proxy's address: raise it to `http_max_connections` there.
    pub http_max_connections_per_address: usize,
    /// Seconds a REST connection may wait for a request's head to arrive
    /// in full, from its start or the end of the previous response: closes
    /// idle keep-alive connections and slow senders of headers. Default 10.
    /// 0: no limit.
    pub http_idle_timeout: u64,
    /// Seconds a REST request's body may take to arrive. Default 10; a
    /// slower one is answered `408` (`timeout`) and the connection closed.
    pub http_body_timeout: u64,
    /// How far a signed request's `ts` may be from the server's clock,
    /// seconds, either way. Default 60.
    pub http_signature_window: u64,
    /// How many signed requests one REST session may make per signature
    /// window (the nonces it remembers); beyond, `429` with Retry-After.
    /// Default 10,000.
    pub http_session_nonces: usize,
    /// Reverse proxies in front of the REST listener, addresses or
    /// networks (`["127.0.0.1", "10.0.0.0/8"]`). A request whose socket
    /// peer is one of them is from the rightmost `X-Forwarded-For` address
    /// that is not; from any other peer the header is ignored. Default:
    /// none.
    pub trusted_proxies: Vec<crate::forwarded::Network>,
    /// How old a login may be, seconds, and still change its own user's
    /// credential (`PUT /user/{self}`, `auth_set` of its own record); an older session logs in again
    /// first. Default 300.
    pub reauth_secs: u64,
    /// TLS on both listeners (a `[tls]` table; see `TlsConfig`). Off
    /// unless `cert` and `key` are set.
    pub tls: crate::tls::TlsConfig,
    /// Whether a login that sends a secret that logs in by itself (a
    /// bearer token, DistKV's `password`) is taken over an unencrypted
    /// connection from beyond loopback. Default false: such a login is
    /// refused there (over TLS, or from loopback, it is always taken).
    pub allow_plaintext_secrets: bool,
    /// Secrets sealed at rest (a `[seal]` table): the seal key.
    pub seal: SealConfig,
}

/// The `[seal]` table: where the seal key comes from (docs/SEALING.md).
/// Without a key the server runs on a data directory whose secrets are
/// not sealed (and says so at start), and refuses one whose are.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SealConfig {
    /// A file holding the 32-byte seal key (base64 or raw; `keycard seal
    /// init FILE` makes one), readable by its owner only.
    pub key_file: Option<PathBuf>,
    /// The key itself (`KEYCARD_SEAL_KEY`, or a test's): taken before
    /// `key_file`. Not read from the config file.
    #[serde(skip)]
    pub key: Option<crate::seal::SealKey>,
}

impl SealConfig {
    /// The seal key, if one is given: `key`, else `key_file` read.
    pub fn load(&self) -> Result<Option<crate::seal::SealKey>, String> {
        match (&self.key, &self.key_file) {
            (Some(k), _) => Ok(Some(k.clone())),
            (None, Some(f)) => crate::seal::SealKey::read_file(f).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// Keycard lifetimes and bounds. Times are in seconds.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeycardConfig {
    /// How long a login attempt may take, from its start to the client's
    /// last answer. Default 30.
    pub challenge_window: u64,
    /// How long a login's keycard lasts, and how much each keep-alive
    /// extends it. Default 86400 (a day). A user record's `keycard` aux
    /// node (`{duration, max_lifetime}`) and `method_duration` override
    /// it.
    pub duration: u64,
    /// No keycard outlives this from its login, keep-alives or not.
    /// Default 604800 (a week).
    pub max_lifetime: u64,
    /// Most keycards at once, pending logins included. Default 1000000;
    /// a login beyond it gets `too_many_keycards`.
    pub max_total: usize,
    /// Most keycards one user holds at once. Default 10000.
    pub max_per_user: u32,
    /// Durations per method, e.g. `[keycards.method_duration]
    /// scram-sha-256 = 3600`.
    pub method_duration: std::collections::BTreeMap<String, u64>,
    /// Longest lifetime of a token (`keycard token create --ttl`).
    /// Default 31536000 (a year).
    pub max_token_ttl: u64,
}

impl Default for KeycardConfig {
    fn default() -> Self {
        KeycardConfig {
            challenge_window: 30,
            duration: 86_400,
            max_lifetime: 604_800,
            max_total: 1_000_000,
            max_per_user: 10_000,
            method_duration: Default::default(),
            max_token_ttl: 365 * 86_400,
        }
    }
}

impl KeycardConfig {
    /// The bouncer's policy.
    pub fn policy(&self) -> keycard_auth::bouncer::Policy {
        keycard_auth::bouncer::Policy {
            challenge_window_ms: self.challenge_window.saturating_mul(1000),
            duration_ms: self.duration.saturating_mul(1000),
            max_lifetime_ms: self.max_lifetime.saturating_mul(1000),
            max_total: self.max_total,
            max_per_user: self.max_per_user,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 27586)),
            data: PathBuf::from("keycard-data"),
            store: keycard_store::Backend::default(),
            clock: crate::clock::ClockHandle::default(),
            extra_methods: ExtraMethods::default(),
            node: "keycard".into(),
            max_message: 1 << 20,
            max_connections: 10_000,
            max_connections_per_address: 256,
            login_timeout: 60,
            idle_timeout: 3600,
            message_timeout: 30,
            max_outstanding: 1024,
            max_items: 1 << 17,
            max_inflight_bytes: 16 << 20,
            out_queue: 1024,
            qlen: 10,
            max_auth_attempts: 5,
            history: 100_000,
            scram_iterations: 4096,
            keycards: KeycardConfig::default(),
            http: None,
            metrics: None,
            metrics_on_http: false,
            http_max_body: 64 * 1024,
            http_max_connections: 1024,
            http_max_connections_per_address: 256,
            http_idle_timeout: 10,
            http_body_timeout: 10,
            http_signature_window: 60,
            http_session_nonces: 10_000,
            trusted_proxies: Vec::new(),
            reauth_secs: 300,
            tls: crate::tls::TlsConfig::default(),
            allow_plaintext_secrets: false,
            seal: SealConfig::default(),
            argon2_m_kib: 19 * 1024,
            argon2_t: 2,
            argon2_p: 1,
            hash_workers: 0,
            throttle: crate::throttle::ThrottleConfig::default(),
            audit_log: None,
        }
    }
}

impl Config {
    /// Reads a TOML config file; fields it omits keep their defaults.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml_from_str(text)
    }
}

/// The `store` key: a backend's name, parsed by `keycard_store::Backend`
/// (whose error lists the choices).
fn store_backend<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<keycard_store::Backend, D::Error> {
    /// `store = "…"`, or a `[store]` table with the URL as `url`.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum StoreKey {
        Text(String),
        Table(StoreTable),
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct StoreTable {
        url: String,
    }
    let text = match StoreKey::deserialize(d)? {
        StoreKey::Text(t) => t,
        StoreKey::Table(t) => t.url,
    };
    text.parse().map_err(serde::de::Error::custom)
}

fn toml_from_str(text: &str) -> Result<Config, String> {
    // Kept in one place so the binary need not depend on toml itself.
    toml::from_str(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example configuration in README.md parses, and says what it
    /// seems to.
    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("    listen = \"127.0.0.1:27586\"")
            .expect("the README has the example");
        let block: String = readme[start..]
            .lines()
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| format!("{}\n", l.trim_start()))
            .collect();
        let c = Config::from_toml(&block).expect("the README's example parses");
        assert_eq!(c.keycards.duration, 86_400);
        assert_eq!(c.keycards.method_duration.get("scram-sha-256"), Some(&3600));
        assert_eq!(c.throttle.cooldown_secs, 900);
        assert_eq!(c.throttle.known_good_days, 30);
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.max_connections_per_address, 256);
        assert_eq!(
            (c.login_timeout, c.idle_timeout, c.message_timeout),
            (60, 3600, 30)
        );
        assert_eq!((c.http_idle_timeout, c.http_body_timeout), (10, 10));
        assert_eq!(c.http, Some(SocketAddr::from(([127, 0, 0, 1], 8427))));
        assert_eq!(c.store, keycard_store::Backend::Redb);
    }

    /// `store` names a backend; a name that is none is refused with the
    /// choices, and leaving it out keeps the embedded store.
    #[test]
    fn the_store_key_names_a_backend() {
        let c = Config::from_toml("store = \"memory\"").expect("memory");
        assert_eq!(c.store, keycard_store::Backend::Memory);
        assert_eq!(
            Config::from_toml("").expect("empty").store,
            keycard_store::Backend::Redb
        );
        let err = Config::from_toml("store = \"sqlite\"").expect_err("no such store");
        assert!(
            err.contains("\"sqlite\"") && err.contains("\"redb\""),
            "{err}"
        );
        assert!(Config::from_toml("store = 1").is_err());
    }
}
