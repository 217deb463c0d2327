//! How the client commands reach the server and log in: the connection
//! flags, passwords and tokens, and the choice of method.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use keycard_auth::{ClientMethod, ClientRegistry, Password};
use keycard_client::{Client, ClientError, WRONG_CREDENTIALS};
use keycard_proto::{ErrorCode, Msg};

/// The login method name of bearer tokens.
pub(crate) const TOKEN_METHOD: &str = keycard_auth::TOKEN;
/// Bearer tokens start with this.
pub(crate) const TOKEN_PREFIX: &str = "kct_";
/// Whether `method` logs anyone in as super-root (DistKV's `root`: no
/// secret, one user).
fn is_root(method: &str) -> bool {
    ClientRegistry::super_root(method)
}

/// Whether `method` knows one user only, so a login needs no name.
fn one_user(method: &str) -> bool {
    ClientRegistry::info(method).is_some_and(|i| i.fixed_user.is_some())
}

/// How the client commands reach and log in to the server (all but the
/// user name, which [`ConnArgs`] and [`AdminConnArgs`] spell differently).
#[derive(Args, Debug, Clone)]
pub(crate) struct ServerArgs {
    /// The server's msgpack address.
    #[arg(
        long,
        short = 's',
        env = "KEYCARD_SERVER",
        default_value = "127.0.0.1:27586"
    )]
    pub(crate) server: String,
    /// Log in with this method (default: what the user has; `root` only
    /// when it is the current method or named here). When the user must
    /// also pass `totp` (a factor list), its one-time code comes from
    /// KEYCARD_TOTP_CODE, else a prompt (no echo), when the server asks.
    #[arg(long, env = "KEYCARD_AUTH")]
    pub(crate) auth: Option<String>,
    /// Read the password from this file (its first line). Without it the
    /// password comes from KEYCARD_PASSWORD, else a prompt (no echo).
    #[arg(long, env = "KEYCARD_PASSWORD_FILE")]
    pub(crate) password_file: Option<PathBuf>,
    /// Log in with a token (`keycard token create`) read from this file
    /// (its first line) instead of a method; KEYCARD_TOKEN may hold the
    /// token itself. The token decides the user.
    #[arg(long, env = "KEYCARD_TOKEN_FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// Connect over TLS, trusting the CA certificates in this PEM file
    /// (only them).
    #[arg(long, value_name = "FILE", env = "KEYCARD_TLS_CA")]
    pub(crate) tls_ca: Option<PathBuf>,
    /// Connect over TLS, trusting the system's CA certificates (implied
    /// by --tls-ca, which trusts its own instead).
    #[arg(long, env = "KEYCARD_TLS")]
    pub(crate) tls: bool,
    /// The name the server's certificate must carry [default: the host
    /// part of --server].
    #[arg(long, value_name = "NAME", env = "KEYCARD_TLS_NAME")]
    pub(crate) tls_name: Option<String>,
    /// Present this client certificate (PEM; a chain may follow it) when
    /// the server asks for one, and log in with `cert` when the server
    /// and the user take it (implies TLS; needs --tls-key).
    #[arg(long, value_name = "FILE", env = "KEYCARD_TLS_CLIENT_CERT")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", env = "KEYCARD_TLS_CLIENT_KEY")]
    pub(crate) tls_key: Option<PathBuf>,
}

impl ServerArgs {
    /// The TLS the flags ask for, if any.
    pub(crate) fn client_tls(&self) -> anyhow::Result<Option<keycard_client::ClientTls>> {
        let client_cert = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => bail!("--tls-cert needs --tls-key (its private key)"),
            (None, Some(_)) => bail!("--tls-key needs --tls-cert (the certificate)"),
        };
        if self.tls_ca.is_none() && !self.tls && client_cert.is_none() {
            return Ok(None);
        }
        let name = match &self.tls_name {
            Some(n) => n.clone(),
            None => host_of(&self.server).to_owned(),
        };
        let tls = match &self.tls_ca {
            Some(ca) => keycard_client::ClientTls::with_ca_file(ca, &name)?,
            None => keycard_client::ClientTls::with_system_roots(&name)?,
        };
        let tls = match client_cert {
            Some((cert, key)) => tls.with_client_cert(cert, key)?,
            None => tls,
        };
        Ok(Some(tls))
    }
}

impl ServerArgs {
    /// Whether the server is reached over TLS, or on this machine
    /// (loopback): where a secret may be sent to it.
    pub(crate) fn private_channel(&self) -> anyhow::Result<bool> {
        if self.client_tls()?.is_some() {
            return Ok(true);
        }
        let host = host_of(&self.server);
        Ok(host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.to_canonical().is_loopback()))
    }
}

/// The host part of `HOST:PORT` (`[V6]:PORT` without its brackets).
fn host_of(server: &str) -> &str {
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// How the client commands reach and log in to the server.
#[derive(Args, Debug, Clone)]
pub(crate) struct ConnArgs {
    #[command(flatten)]
    pub(crate) at: ServerArgs,
    /// Log in as this user (not needed for `root`).
    #[arg(long, short = 'u', env = "KEYCARD_USER")]
    pub(crate) user: Option<String>,
    /// The flag that names the login's user, for messages.
    #[arg(skip = "--user")]
    pub(crate) user_flag: &'static str,
}

/// [`ConnArgs`] for the commands whose `--user` names the user they act
/// on: the login's user is `--as`.
#[derive(Args, Debug, Clone)]
pub(crate) struct AdminConnArgs {
    #[command(flatten)]
    pub(crate) at: ServerArgs,
    /// Log in as this user (not needed for `root`; `--user` names whose
    /// keycards).
    #[arg(long = "as", value_name = "USER", env = "KEYCARD_USER")]
    pub(crate) login_user: Option<String>,
}

impl AdminConnArgs {
    pub(crate) fn conn(&self) -> ConnArgs {
        ConnArgs {
            at: self.at.clone(),
            user: self.login_user.clone(),
            user_flag: "--as",
        }
    }
}

/// The login password: --password-file, KEYCARD_PASSWORD, or a prompt.
fn login_password(args: &ConnArgs) -> anyhow::Result<Password> {
    read_password(
        args.at.password_file.as_ref(),
        "KEYCARD_PASSWORD",
        "password: ",
        false,
    )
}

/// The bearer token to log in with, if one was given (--token-file, else
/// KEYCARD_TOKEN), and where it came from. Never part of a message.
fn login_token(args: &ServerArgs) -> anyhow::Result<Option<(Password, String)>> {
    let (token, source) = if let Some(f) = &args.token_file {
        let text = Password::new(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the token file {}", f.display()))?,
        );
        let first = text.expose().lines().next().unwrap_or_default().trim();
        (
            Password::new(first),
            format!("the token file {}", f.display()),
        )
    } else {
        match std::env::var("KEYCARD_TOKEN") {
            Ok(t) => {
                let t = Password::new(t);
                (Password::new(t.expose().trim()), "KEYCARD_TOKEN".to_owned())
            }
            Err(std::env::VarError::NotPresent) => return Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => bail!("KEYCARD_TOKEN is not valid text"),
        }
    };
    // An empty token is a mistake (`TOKEN=$(failed command)`), not a
    // request to log in some other way.
    if token.expose().is_empty() {
        bail!("no token in {source}");
    }
    if !token.expose().starts_with(TOKEN_PREFIX) {
        bail!("{source} does not hold a keycard token (they start with {TOKEN_PREFIX})");
    }
    Ok(Some((token, source)))
}

/// A new user's password, when `method` needs one: --new-password-file,
/// KEYCARD_NEW_PASSWORD, or a prompt asked twice.
pub(crate) fn new_password(
    method: &str,
    file: Option<&PathBuf>,
) -> anyhow::Result<Option<Password>> {
    if !ClientRegistry::needs_password(method) {
        return Ok(None);
    }
    read_password(file, "KEYCARD_NEW_PASSWORD", "new password: ", true).map(Some)
}

/// A secret from a file's first line, an environment variable, or a
/// prompt on the terminal without echo (asked twice when `confirm`).
fn read_password(
    file: Option<&PathBuf>,
    var: &str,
    prompt: &str,
    confirm: bool,
) -> anyhow::Result<Password> {
    if let Some(f) = file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        return Ok(Password::new(text.lines().next().unwrap_or_default()));
    }
    if let Ok(p) = std::env::var(var) {
        return Ok(Password::new(p));
    }
    let no_terminal =
        || format!("cannot read a password from the terminal (set {var}, or use a file)");
    let first = rpassword::prompt_password(prompt).with_context(no_terminal)?;
    if confirm {
        let again = rpassword::prompt_password("again: ").with_context(no_terminal)?;
        if again != first {
            bail!("the passwords differ");
        }
    }
    Ok(Password::new(first))
}

/// Connects and logs in: with a token when one is given, else, when the
/// server requires it, with a method.
pub(crate) async fn connect(args: &ConnArgs) -> anyhow::Result<Client> {
    let token = login_token(&args.at)?;
    if let (Some(_), Some(m)) = (&token, args.at.auth.as_deref()) {
        if m != TOKEN_METHOD {
            bail!("both a token and --auth {m} were given: use one (--auth comes from KEYCARD_AUTH too)");
        }
    }
    if token.is_none() && args.at.auth.as_deref() == Some(TOKEN_METHOD) {
        bail!("--auth {TOKEN_METHOD} needs --token-file or KEYCARD_TOKEN");
    }
    let server = &args.at.server;
    let c = match args.at.client_tls()? {
        Some(tls) => Client::connect_tls(server.as_str(), &tls).await,
        None => Client::connect(server.as_str()).await,
    }
    .with_context(|| format!("cannot reach keycard at {server}"))?;
    if let Some((token, source)) = token {
        token_login(&c, &token, &source).await?;
        return Ok(c);
    }
    let Some(method) = method_for(&c, args).await? else {
        return Ok(c);
    };
    let password = if ClientRegistry::needs_password(&method) {
        Some(login_password(args)?)
    } else {
        None
    };
    let flag = args.user_flag;
    let mut m = ClientRegistry::make_with_password(&method, args.user.as_deref(), password)
        .map_err(|e| anyhow::anyhow!("{e} (give {flag}, or KEYCARD_USER)"))?;
    // Over TLS, the method's channel-binding variant when the server
    // offers it (scram-sha-256-plus over scram-sha-256); when it does not,
    // the login says it could have bound, so a server that offers it sees
    // that someone removed it from the greeting.
    let plus = ClientRegistry::info(&method).and_then(|i| i.plus);
    if let (Some(plus), Some(binding)) = (plus, c.channel_binding()) {
        m.bind(binding, c.greeting().offers(plus));
    }
    let method = m.name();
    let who = match one_user(method) {
        true => String::new(),
        false => format!(" as {}", m.ident()),
    };
    let user = m.ident();
    let mut factor = |name: &str| factor_for(args, name, &user);
    match c.login_asking(m.as_ref(), &mut factor).await {
        Ok(()) => Ok(c),
        Err(e) if wrong_credentials(&e) => {
            bail!("login failed{who} with {method}: {WRONG_CREDENTIALS}")
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("login{who} with {method} failed"))),
    }
}

/// The client half of a further factor the server asks `user` for
/// (DESIGN §2.2), asked for only then: for `totp` the one-time code from
/// KEYCARD_TOTP_CODE, else a prompt on the terminal (no echo); a method
/// that needs a password gets the login's (from where the first one
/// came).
fn factor_for(
    args: &ConnArgs,
    name: &str,
    user: &str,
) -> Result<Box<dyn ClientMethod>, ClientError> {
    let secret = if name == keycard_auth::TOTP {
        Some(one_time_code().map_err(|e| ClientError::Auth(format!("{e:#}")))?)
    } else if ClientRegistry::needs_password(name) {
        Some(login_password(args).map_err(|e| ClientError::Auth(format!("{e:#}")))?)
    } else {
        None
    };
    ClientRegistry::make_with_password(name, Some(user), secret)
        .map_err(|e| ClientError::Auth(e.to_string()))
}

/// A `totp` factor's code: KEYCARD_TOTP_CODE, else a prompt (no echo).
fn one_time_code() -> anyhow::Result<Password> {
    let code = match std::env::var(TOTP_CODE_VAR) {
        Ok(c) => Password::new(c),
        Err(std::env::VarError::NotUnicode(_)) => bail!("{TOTP_CODE_VAR} is not valid text"),
        Err(std::env::VarError::NotPresent) => Password::new(
            rpassword::prompt_password("one-time code: ").with_context(|| {
                format!("the server asks for a one-time code: cannot read one from the terminal (set {TOTP_CODE_VAR})")
            })?,
        ),
    };
    Ok(Password::new(code.expose().trim()))
}

/// Where scripts give a `totp` factor's code.
const TOTP_CODE_VAR: &str = "KEYCARD_TOTP_CODE";

/// Whether `e` is a refused login (the server's `auth_failed`, or
/// OPAQUE's client finding the credentials wrong).
fn wrong_credentials(e: &ClientError) -> bool {
    match e {
        ClientError::Auth(text) => text == WRONG_CREDENTIALS,
        _ => e.code() == Some(ErrorCode::AuthFailed),
    }
}

/// The method to log in with, `None` when the server needs no login. An
/// explicit --auth is tried as given. A client presenting a certificate
/// (--tls-cert) logs in with `cert` when the server accepts it. Otherwise
/// a user name gets the method the server says it has (from a server that cannot say, the
/// strongest it accepts); with no name, only
/// `root` needs none, and it is used only when it is the current method
/// (accepted beside a password method it would quietly make the password
/// pointless, so it is never a fallback).
async fn method_for(c: &Client, args: &ConnArgs) -> anyhow::Result<Option<String>> {
    if let Some(m) = &args.at.auth {
        return Ok(Some(m.clone()));
    }
    let greeting = c.greeting();
    if !greeting.login_required() {
        return Ok(None);
    }
    let list = greeting.auth.clone().unwrap_or_default();
    let accepted: Vec<&str> = list
        .iter()
        .flatten()
        .map(String::as_str)
        .filter(|m| *m != TOKEN_METHOD)
        .collect();
    let current = accepted.first().copied().unwrap_or_default();
    let flag = args.user_flag;
    let root_hint = match accepted.iter().find(|m| is_root(m)) {
        Some(root) => format!(", or --auth {root}"),
        None => String::new(),
    };
    let Some(user) = &args.user else {
        if is_root(current) && one_user(current) {
            return Ok(Some(current.to_owned()));
        }
        bail!(
            "the server requires a login with one of: {}: give {flag} NAME{root_hint}",
            accepted.join(", ")
        );
    };
    // A client that presents a certificate logs in by it wherever the
    // server takes one: the user's first method may be another.
    let has_cert = args.at.tls_cert.is_some();
    let by_cert = accepted
        .iter()
        .find(|m| ClientRegistry::info(m).is_some_and(|i| i.client_cert));
    if let (true, Some(m)) = (has_cert, by_cert) {
        return Ok(Some((*m).to_owned()));
    }
    let theirs = match c.auth_methods(user).await {
        Ok(methods) => methods,
        // A server without `auth_methods`: what it accepts.
        Err(e) if e.code() == Some(ErrorCode::UnknownAction) => {
            accepted.iter().map(|m| (*m).to_owned()).collect()
        }
        Err(e) => return Err(anyhow::Error::new(e).context("cannot ask which methods to use")),
    };
    // A method that logs in with a client certificate only when this
    // client presents one.
    let usable = |m: &&str| {
        !is_root(m)
            && theirs.iter().any(|t| t == *m)
            && (has_cert || !ClientRegistry::info(m).is_some_and(|i| i.client_cert))
    };
    match ClientRegistry::strongest(accepted.iter().copied().filter(usable)) {
        Some(m) => Ok(Some(m.to_owned())),
        None => bail!(
            "the server accepts {}, and {user} logs in with none of them here: give --auth METHOD{root_hint}",
            accepted.join(", ")
        ),
    }
}

/// Logs in with a bearer token. No message names the token, only where it
/// came from.
async fn token_login(c: &Client, token: &Password, source: &str) -> anyhow::Result<()> {
    let msg = Msg::new()
        .with("action", "auth")
        .with("typ", TOKEN_METHOD)
        .with("token", token.expose());
    match c.request(msg).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(ErrorCode::AuthFailed) => bail!(
            "the server refused the token from {source}: it was revoked, has expired or is \
             unknown, or its user was deleted"
        ),
        Err(e) => {
            Err(anyhow::Error::new(e).context(format!("login with the token from {source} failed")))
        }
    }
}

/// The 32-hex-digit id of a keycard or token as given: the id itself,
/// `kct_ID`, or a whole token `kct_ID_SECRET` as `token create` printed
/// it (only its id is kept).
pub(crate) fn keycard_id_of(text: &str) -> Option<String> {
    let t = text.trim();
    let id = match t.strip_prefix(TOKEN_PREFIX) {
        Some(rest) => match rest.split_once('_') {
            Some((id, _secret)) => id,
            None => rest,
        },
        None => t,
    };
    keycard_auth::bouncer::KeycardId::parse(id).map(|id| id.to_string())
}

/// Parses a keycard id argument with [`keycard_id_of`]. Its error never
/// repeats the value: it may be a whole token, secret included.
#[derive(Clone, Debug)]
pub(crate) struct KeycardIdParser;

impl clap::builder::TypedValueParser for KeycardIdParser {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        value.to_str().and_then(keycard_id_of).ok_or_else(|| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                "not a keycard id: give its 32 hex digits, or the token as `keycard token \
                 create` printed it (kct_…)\n",
            )
            .with_cmd(cmd)
        })
    }
}
