//! `keycard serve`: every configuration field as a flag, over the config
//! file, over the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use keycard_server::{Config, Server};

/// `keycard serve` options: one per configuration field (the command's
/// help says how they map onto the file's).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Server")]
pub(crate) struct ServeArgs {
    /// A TOML file with any of the fields below.
    #[arg(long, short = 'c', env = "KEYCARD_CONFIG")]
    config: Option<PathBuf>,
    /// Log filter (tracing's EnvFilter syntax) [default: info].
    #[arg(
        long,
        env = "KEYCARD_LOG",
        default_value = "info",
        hide_default_value = true
    )]
    log: String,
    /// Data directory holding the embedded store [default: ./keycard-data].
    #[arg(long, env = "KEYCARD_DATA")]
    data: Option<PathBuf>,
    /// Where the tree is kept: redb (the file DATA/keycard.redb), memory
    /// (lost when the server stops; for tests) or
    /// postgres://USER@HOST:PORT/DB?… (several nodes on one database)
    /// [default: redb].
    #[arg(long, env = "KEYCARD_STORE")]
    store: Option<keycard_store::Backend>,
    /// Address of the msgpack listener [default: 127.0.0.1:27586].
    #[arg(long, env = "KEYCARD_LISTEN")]
    listen: Option<SocketAddr>,
    /// This node's name: sent in the greeting, and its connections' name
    /// in PostgreSQL [default: keycard].
    #[arg(long)]
    node: Option<String>,
    /// The audit log (JSON lines) [default: DATA/audit.log].
    #[arg(long)]
    audit_log: Option<PathBuf>,

    /// Largest message accepted, in bytes; a larger one closes the
    /// connection [default: 1048576].
    #[arg(long, help_heading = "Limits")]
    max_message: Option<usize>,
    /// Most values in one message [default: 131072].
    #[arg(long, help_heading = "Limits")]
    max_items: Option<usize>,
    /// Most client connections at once [default: 10000].
    #[arg(long, help_heading = "Limits")]
    max_connections: Option<usize>,
    /// Most client connections at once from one IP address (IPv6: one
    /// /64) [default: 256].
    #[arg(long, help_heading = "Limits")]
    max_connections_per_address: Option<usize>,
    /// Seconds a connection may stay without a login on a server that
    /// requires logins; 0: no limit [default: 60].
    #[arg(long, help_heading = "Limits")]
    login_timeout: Option<u64>,
    /// Seconds a connection may stay idle (nothing received, no request
    /// running); 0: no limit [default: 3600].
    #[arg(long, help_heading = "Limits")]
    idle_timeout: Option<u64>,
    /// Seconds a message may take to arrive once begun; 0: no limit
    /// [default: 30].
    #[arg(long, help_heading = "Limits")]
    message_timeout: Option<u64>,
    /// Most requests in flight per connection [default: 1024].
    #[arg(long, help_heading = "Limits")]
    max_outstanding: Option<usize>,
    /// Memory the running requests of one connection may hold, in bytes
    /// [default: 16777216].
    #[arg(long, help_heading = "Limits")]
    max_inflight_bytes: Option<usize>,
    /// Messages queued for a client that is not reading before the
    /// server stops reading its requests [default: 1024].
    #[arg(long, help_heading = "Limits")]
    out_queue: Option<usize>,
    /// The flow-control window announced in the greeting [default: 10].
    #[arg(long, help_heading = "Limits")]
    qlen: Option<u64>,
    /// Changes kept for watches resuming from a tock [default: 100000].
    #[arg(long, help_heading = "Limits")]
    history: Option<u64>,

    /// Failed logins per connection before it is closed [default: 5].
    #[arg(long, help_heading = "Logins")]
    max_auth_attempts: Option<u32>,
    /// SCRAM iterations announced for unknown users: match your users'
    /// [default: 4096].
    #[arg(long, help_heading = "Logins")]
    scram_iterations: Option<u32>,
    /// Argon2id memory for `password` users, KiB [default: 19456].
    #[arg(long, help_heading = "Logins")]
    argon2_m_kib: Option<u32>,
    /// Argon2id passes [default: 2].
    #[arg(long, help_heading = "Logins")]
    argon2_t: Option<u32>,
    /// Argon2id lanes [default: 1].
    #[arg(long, help_heading = "Logins")]
    argon2_p: Option<u32>,
    /// Threads for hashing and key agreement; 0 = one per CPU
    /// [default: 0].
    #[arg(long, help_heading = "Logins")]
    hash_workers: Option<usize>,

    /// Also serve the REST API here, e.g. 127.0.0.1:8427 [default: off].
    #[arg(long, env = "KEYCARD_HTTP", help_heading = "REST API")]
    http: Option<SocketAddr>,
    /// Serve Prometheus metrics at GET /metrics on this address, to
    /// anyone who reaches it, e.g. 127.0.0.1:9427 [default: off].
    #[arg(long, env = "KEYCARD_METRICS")]
    metrics: Option<SocketAddr>,
    /// Also serve GET /metrics on the REST listener, unauthenticated
    /// [default: false].
    #[arg(long, value_name = "BOOL")]
    metrics_on_http: Option<bool>,
    /// Largest REST request body, bytes [default: 65536].
    #[arg(long, help_heading = "REST API")]
    http_max_body: Option<usize>,
    /// Most REST connections at once [default: 1024].
    #[arg(long, help_heading = "REST API")]
    http_max_connections: Option<usize>,
    /// Most REST connections at once from one IP address [default: 256].
    #[arg(long, help_heading = "REST API")]
    http_max_connections_per_address: Option<usize>,
    /// Seconds a REST connection may wait for a request's head (closes
    /// idle keep-alives and slow headers); 0: no limit [default: 10].
    #[arg(long, help_heading = "REST API")]
    http_idle_timeout: Option<u64>,
    /// Seconds a REST request's body may take [default: 10].
    #[arg(long, help_heading = "REST API")]
    http_body_timeout: Option<u64>,
    /// A reverse proxy (address or network) whose X-Forwarded-For is
    /// believed (repeatable; replaces the file's) [default: none].
    #[arg(long, value_name = "ADDR[/BITS]", help_heading = "REST API")]
    trusted_proxies: Vec<keycard_server::Network>,
    /// How young a REST session's login must be to change its own
    /// credential, seconds [default: 300].
    #[arg(long, help_heading = "REST API")]
    reauth_secs: Option<u64>,
    /// Seconds a signed request's ts may be off [default: 60].
    #[arg(long, help_heading = "REST API")]
    http_signature_window: Option<u64>,
    /// Signed requests per session and window before 429
    /// [default: 10000].
    #[arg(long, help_heading = "REST API")]
    http_session_nonces: Option<usize>,

    /// The seal key file: secrets (verifiers, the server's secret, token
    /// hashes) are sealed at rest with it; KEYCARD_SEAL_KEY may hold the
    /// key itself instead (docs/SEALING.md) [default: none].
    #[arg(long, value_name = "FILE", help_heading = "Sealing ([seal])")]
    seal_key_file: Option<PathBuf>,

    /// Take token and `password` logins over plaintext from beyond
    /// loopback (they send a secret that logs in by itself) [default:
    /// false].
    #[arg(long, value_name = "BOOL", help_heading = "TLS ([tls])")]
    allow_plaintext_secrets: Option<bool>,
    /// The server's certificate, PEM (a chain may follow it): with
    /// --tls-key, both listeners speak TLS only [default: none].
    #[arg(
        long,
        value_name = "FILE",
        env = "KEYCARD_TLS_CERT",
        help_heading = "TLS ([tls])"
    )]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key, PEM [default: none].
    #[arg(
        long,
        value_name = "FILE",
        env = "KEYCARD_TLS_KEY",
        help_heading = "TLS ([tls])"
    )]
    tls_key: Option<PathBuf>,
    /// The oldest TLS version accepted, 1.3 or 1.2 [default: 1.3].
    #[arg(long, help_heading = "TLS ([tls])")]
    tls_min_version: Option<keycard_server::TlsVersion>,
    /// Seconds a client has to finish its TLS handshake [default: 10].
    #[arg(long, help_heading = "TLS ([tls])")]
    tls_handshake_timeout: Option<u64>,
    /// CA certificates (PEM) for client certificates: clients are asked
    /// for one, and only one these CAs signed logs in with `cert`
    /// [default: none].
    #[arg(long, value_name = "FILE", help_heading = "TLS ([tls])")]
    tls_client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM) of the client CAs; reloaded
    /// with the certificate [default: none].
    #[arg(long, value_name = "FILE", help_heading = "TLS ([tls])")]
    tls_client_crl: Option<PathBuf>,
    /// With --tls-client-ca, refuse at the handshake a client without a
    /// certificate these CAs signed [default: false].
    #[arg(long, value_name = "BOOL", help_heading = "TLS ([tls])")]
    tls_require_client_cert: Option<bool>,
    /// Which names of a client certificate a `cert` login may log in as:
    /// cn (its subject's common name), dns or uri (its subject
    /// alternative names of that kind) [default: cn].
    #[arg(long, value_name = "KIND", help_heading = "TLS ([tls])")]
    tls_client_cert_name: Option<keycard_server::ClientName>,

    /// Failures per (user, address) before delays [default: 5].
    #[arg(long, help_heading = "Throttling ([throttle])")]
    throttle_free: Option<u32>,
    /// Delayed failures per (user, address) before refusal [default: 5].
    #[arg(long, help_heading = "Throttling ([throttle])")]
    throttle_escalate: Option<u32>,
    /// The first delay, seconds; it doubles [default: 1].
    #[arg(long, help_heading = "Throttling ([throttle])")]
    throttle_base_delay_secs: Option<u64>,
    /// The longest delay, seconds [default: 30].
    #[arg(long, help_heading = "Throttling ([throttle])")]
    throttle_max_delay_secs: Option<u64>,
    /// Failures per address (all users) before refusal [default: 100].
    #[arg(long, help_heading = "Throttling ([throttle])")]
    throttle_source_limit: Option<u32>,
    /// Failures per user (all addresses) before a slow-down
    /// [default: 20].
    #[arg(long, help_heading = "Throttling ([throttle])")]
    throttle_user_slow: Option<u32>,
    /// That slow-down, seconds [default: 1].
    #[arg(long, help_heading = "Throttling ([throttle])")]
    throttle_user_delay_secs: Option<u64>,
    /// How long refusals last, seconds [default: 900].
    #[arg(long, help_heading = "Throttling ([throttle])")]
    throttle_cooldown_secs: Option<u64>,
    /// Failures older than this are forgotten, seconds [default: 900].
    #[arg(long, help_heading = "Throttling ([throttle])")]
    throttle_window_secs: Option<u64>,
    /// Days a successful login keeps its (user, address) from refusals
    /// earned by others from that address; 0: off [default: 30].
    #[arg(long, help_heading = "Throttling ([throttle])")]
    throttle_known_good_days: Option<u64>,
    /// Most counters kept (and, apart, known-good marks); at least 96
    /// [default: 100000].
    #[arg(long, help_heading = "Throttling ([throttle])")]
    throttle_max_entries: Option<usize>,

    /// Seconds a login may take to answer its challenge [default: 30].
    #[arg(long, help_heading = "Keycards ([keycards])")]
    keycards_challenge_window: Option<u64>,
    /// Seconds a login lasts; each keep_alive extends it by this
    /// [default: 86400].
    #[arg(long, help_heading = "Keycards ([keycards])")]
    keycards_duration: Option<u64>,
    /// No login outlives this, seconds [default: 604800].
    #[arg(long, help_heading = "Keycards ([keycards])")]
    keycards_max_lifetime: Option<u64>,
    /// Keycards at once, pending logins included [default: 1000000].
    #[arg(long, help_heading = "Keycards ([keycards])")]
    keycards_max_total: Option<usize>,
    /// Keycards one user holds at once [default: 10000].
    #[arg(long, help_heading = "Keycards ([keycards])")]
    keycards_max_per_user: Option<u32>,
    /// Longest `keycard token create --ttl`, seconds [default: 31536000].
    #[arg(long, help_heading = "Keycards ([keycards])")]
    keycards_max_token_ttl: Option<u64>,
    /// A method's own login duration, e.g. scram-sha-256=3600
    /// (repeatable; adds to the file's) [default: none].
    #[arg(long, value_name = "METHOD=SECS", value_parser = parse_method_duration, help_heading = "Keycards ([keycards])")]
    keycards_method_duration: Vec<(String, u64)>,
}

/// `METHOD=SECS`.
fn parse_method_duration(text: &str) -> Result<(String, u64), String> {
    let (method, secs) = text
        .split_once('=')
        .ok_or_else(|| "expected METHOD=SECS, e.g. scram-sha-256=3600".to_owned())?;
    let secs = secs
        .trim()
        .parse()
        .map_err(|_| format!("{secs:?} is not a number of seconds"))?;
    Ok((method.trim().to_owned(), secs))
}

/// Sets `$config.$field` from each flag that was given.
macro_rules! given {
    ($args:ident, $config:expr, { $($flag:ident => $($field:ident).+),* $(,)? }) => {
        $(if let Some(v) = $args.$flag {
            $config.$($field).+ = v.into();
        })*
    };
}

impl ServeArgs {
    /// The configuration: the file's (or the defaults), then the flags.
    pub(crate) fn config(&self) -> anyhow::Result<Config> {
        let config = match &self.config {
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                Config::from_toml(&text)
                    .map_err(|e| anyhow::anyhow!("bad config file {}: {e}", file.display()))?
            }
            None => Config::default(),
        };
        let mut config = self.apply(config);
        // The key itself never comes from a flag: a command line is seen
        // by every user of the machine.
        if let Some(text) = std::env::var_os(SEAL_KEY_VAR) {
            let key = keycard_server::seal::SealKey::parse(text.as_encoded_bytes())
                .map_err(|e| anyhow::anyhow!("{SEAL_KEY_VAR}: {e}"))?;
            config.seal.key = Some(key);
        }
        Ok(config)
    }

    /// `config` with the given flags applied.
    fn apply(&self, mut config: Config) -> Config {
        let a = self.clone();
        given!(a, config, {
            data => data, store => store, listen => listen, node => node, max_message => max_message,
            max_items => max_items, max_connections => max_connections,
            max_connections_per_address => max_connections_per_address,
            login_timeout => login_timeout, idle_timeout => idle_timeout,
            message_timeout => message_timeout,
            max_outstanding => max_outstanding, max_inflight_bytes => max_inflight_bytes,
            out_queue => out_queue, qlen => qlen, history => history,
            max_auth_attempts => max_auth_attempts, scram_iterations => scram_iterations,
            argon2_m_kib => argon2_m_kib, argon2_t => argon2_t, argon2_p => argon2_p,
            hash_workers => hash_workers, http_max_body => http_max_body,
            http_max_connections => http_max_connections,
            http_max_connections_per_address => http_max_connections_per_address,
            http_idle_timeout => http_idle_timeout, http_body_timeout => http_body_timeout,
            reauth_secs => reauth_secs,
            http_signature_window => http_signature_window,
            http_session_nonces => http_session_nonces,
            throttle_free => throttle.free, throttle_escalate => throttle.escalate,
            throttle_base_delay_secs => throttle.base_delay_secs,
            throttle_max_delay_secs => throttle.max_delay_secs,
            throttle_source_limit => throttle.source_limit,
            throttle_user_slow => throttle.user_slow,
            throttle_user_delay_secs => throttle.user_delay_secs,
            throttle_cooldown_secs => throttle.cooldown_secs,
            throttle_window_secs => throttle.window_secs,
            throttle_known_good_days => throttle.known_good_days,
            throttle_max_entries => throttle.max_entries,
            keycards_challenge_window => keycards.challenge_window,
            keycards_duration => keycards.duration,
            keycards_max_lifetime => keycards.max_lifetime,
            keycards_max_total => keycards.max_total,
            keycards_max_per_user => keycards.max_per_user,
            keycards_max_token_ttl => keycards.max_token_ttl,
            allow_plaintext_secrets => allow_plaintext_secrets,
            tls_min_version => tls.min_version,
            tls_handshake_timeout => tls.handshake_timeout,
            tls_require_client_cert => tls.require_client_cert,
            tls_client_cert_name => tls.client_cert_name,
        });
        if let Some(v) = a.seal_key_file {
            config.seal.key_file = Some(v);
        }
        if let Some(v) = a.tls_client_ca {
            config.tls.client_ca = Some(v);
        }
        if let Some(v) = a.tls_client_crl {
            config.tls.client_crl = Some(v);
        }
        if let Some(v) = a.tls_cert {
            config.tls.cert = Some(v);
        }
        if let Some(v) = a.tls_key {
            config.tls.key = Some(v);
        }
        if let Some(v) = a.audit_log {
            config.audit_log = Some(v);
        }
        if let Some(v) = a.http {
            config.http = Some(v);
        }
        if let Some(v) = a.metrics {
            config.metrics = Some(v);
        }
        if let Some(v) = a.metrics_on_http {
            config.metrics_on_http = v;
        }
        if !a.trusted_proxies.is_empty() {
            config.trusted_proxies = a.trusted_proxies;
        }
        for (method, secs) in a.keycards_method_duration {
            config.keycards.method_duration.insert(method, secs);
        }
        config
    }
}

/// Where the seal key itself may be given (base64).
pub(crate) const SEAL_KEY_VAR: &str = "KEYCARD_SEAL_KEY";

/// Runs the server until SIGINT or SIGTERM.
pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).context("bad --log filter")?,
        )
        .with_writer(std::io::stderr)
        .fmt_fields(crate::logging::EscapedFields::new())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = args.config()?;
    let data = config.data.clone();
    let server = Server::open(config).await?;
    let addr = server.local_addr()?;
    tracing::info!(%addr, data = %data.display(), version = env!("CARGO_PKG_VERSION"), commit = env!("KEYCARD_COMMIT"), "keycard listening");
    if let Some(http) = server.http_addr() {
        tracing::info!(%http, "REST API listening");
    }
    if let Some(metrics) = server.metrics_addr() {
        tracing::info!(%metrics, "Prometheus metrics listening at /metrics");
    }
    let state = server.state().clone();
    // Acknowledged writes are already durable; stopping needs no flush.
    tokio::select! {
        _ = server.run() => {}
        _ = shutdown_signal() => tracing::info!("shutting down"),
        _ = reload_on_hangup(state) => {}
    }
    Ok(())
}

/// On each SIGHUP, reads the TLS certificate and key again (a bad file is
/// logged and changes nothing). Never returns where signals work.
async fn reload_on_hangup(state: std::sync::Arc<keycard_server::ServerState>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return std::future::pending().await;
        };
        while hup.recv().await.is_some() {
            match state.reload_tls(None).await {
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => tracing::info!("SIGHUP: nothing to reload (no TLS)"),
            }
        }
    }
    std::future::pending().await
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::ServeArgs;
    use clap::{Args, Command, FromArgMatches};
    use keycard_server::Config;

    fn command() -> Command {
        ServeArgs::augment_args(Command::new("serve").no_binary_name(true))
    }

    /// Each flag's documented default is the server's: given as flags
    /// over a configuration where every field differs, they give back
    /// `Config::default()`.
    #[test]
    fn the_documented_defaults_are_the_defaults() {
        let mut argv: Vec<String> = Vec::new();
        for arg in command().get_arguments() {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let Some(default) = help
                .split("[default: ")
                .nth(1)
                .and_then(|rest| rest.split(']').next())
            else {
                continue;
            };
            let Some(long) = arg.get_long() else { continue };
            // Not values: the optional fields' "off" and the like.
            if matches!(default, "off" | "none" | "DATA/audit.log") || long == "log" {
                continue;
            }
            argv.push(format!("--{long}"));
            argv.push(default.trim_start_matches("./").to_owned());
        }
        assert!(argv.len() >= 2 * 39, "{argv:?}");
        let matches = command().try_get_matches_from(&argv).expect("parses");
        let args = ServeArgs::from_arg_matches(&matches).expect("args");
        let elsewhere = Config::from_toml(
            r#"
            listen = "127.0.0.9:1"
            data = "elsewhere"
            store = "memory"
            node = "other"
            max_message = 7
            max_connections = 7
            max_outstanding = 7
            max_items = 7
            max_inflight_bytes = 7
            out_queue = 7
            qlen = 7
            max_auth_attempts = 7
            history = 7
            argon2_m_kib = 7
            argon2_t = 7
            argon2_p = 7
            hash_workers = 7
            scram_iterations = 7
            http_max_body = 7
            http_max_connections = 7
            http_signature_window = 7
            http_session_nonces = 7
            allow_plaintext_secrets = true
            [throttle]
            free = 7
            escalate = 7
            base_delay_secs = 7
            max_delay_secs = 7
            source_limit = 7
            user_slow = 7
            user_delay_secs = 7
            cooldown_secs = 7
            window_secs = 7
            [keycards]
            challenge_window = 7
            duration = 7
            max_lifetime = 7
            max_total = 7
            max_per_user = 7
            max_token_ttl = 7
            [tls]
            min_version = "1.2"
            handshake_timeout = 7
            require_client_cert = true
            "#,
        )
        .expect("toml");
        assert_eq!(
            format!("{:?}", args.apply(elsewhere)),
            format!("{:?}", Config::default())
        );
    }
}
