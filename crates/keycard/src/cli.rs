//! Command-line parsing and the commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{ArgGroup, Args, Parser, Subcommand};
use keycard_auth::{ClientRegistry, Password};
use keycard_client::{Client, Event};
use keycard_proto::{ErrorCode, Msg, Path, Value};
use keycard_server::{Config, Server};

use crate::render;

/// The login method name of bearer tokens.
const TOKEN_METHOD: &str = "token";
/// Bearer tokens start with this.
const TOKEN_PREFIX: &str = "kct_";

/// Appends a formatted line to a `String`.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        $out.push_str(&format!($($arg)*));
        $out.push('\n');
    }};
}

/// Writes `text` to stdout; a reader that went away (`keycard … | head`)
/// is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}

/// keycard: a centralized authentication and authorization server.
///
/// Paths are written in DistKV's syntax: elements joined by '.', and
/// non-string elements after a ':' — `:n` nil, `:t`/`:f` true/false,
/// `:12` an int, `:1:.5` a float, `:e` the empty string, `:vab` / `:y00ff`
/// bytes, `:` alone the root; `::`, `:.` and `:_` write ':', '.' and space
/// inside a string. Example: `app.users:42.name`.
#[derive(Parser, Debug)]
#[command(name = "keycard", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Print the value at PATH.
    Get {
        #[command(flatten)]
        conn: ConnArgs,
        /// The node.
        path: String,
    },
    /// Set the value at PATH (a string unless --json or --hex).
    Set {
        #[command(flatten)]
        conn: ConnArgs,
        /// The node.
        path: String,
        /// The value.
        value: String,
        /// Parse VALUE as JSON (numbers, true/false, null, lists, objects).
        #[arg(long, conflicts_with = "hex")]
        json: bool,
        /// Parse VALUE as hex bytes.
        #[arg(long)]
        hex: bool,
        /// Only set it if the node holds no value yet.
        #[arg(long)]
        new: bool,
    },
    /// Remove the value at PATH.
    Rm {
        #[command(flatten)]
        conn: ConnArgs,
        /// The node.
        path: String,
    },
    /// List the subtree at PATH (one line per node: path, tab, value).
    Ls {
        #[command(flatten)]
        conn: ConnArgs,
        /// The subtree's root.
        #[arg(default_value = ":")]
        path: String,
        /// Deepest level to show (0 = PATH itself).
        #[arg(long)]
        max_depth: Option<usize>,
        /// Shallowest level to show.
        #[arg(long)]
        min_depth: Option<usize>,
    },
    /// Print changes under PATH as they happen (Ctrl-C stops).
    Watch {
        #[command(flatten)]
        conn: ConnArgs,
        /// The subtree's root.
        #[arg(default_value = ":")]
        path: String,
        /// Print the current state first.
        #[arg(long)]
        fetch: bool,
    },
    /// Manage users of an auth method.
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Configure which auth method the server requires.
    Auth {
        #[command(subcommand)]
        cmd: AuthCmd,
    },
    /// Manage ACLs (DistKV's: mode letters a r w c d x e n; patterns may
    /// use `+` for one level and `#` for one or more).
    Acl {
        #[command(subcommand)]
        cmd: AclCmd,
    },
    /// Manage groups: each binds an ACL to its members.
    Group {
        #[command(subcommand)]
        cmd: GroupCmd,
    },
    /// Show who this login is: user, method, keycard, expiry, capabilities.
    Whoami {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Manage keycards: every login holds one until it ends, expires or is
    /// revoked; tokens are durable ones (needs manage_keycards to see
    /// other users').
    Keycard {
        #[command(subcommand)]
        cmd: KeycardCmd,
    },
    /// Manage bearer tokens: durable keycards that services log in with
    /// (`--token-file`, or KEYCARD_TOKEN).
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
}

#[derive(Subcommand, Debug)]
enum KeycardCmd {
    /// List keycards: live logins, then tokens.
    Ls {
        #[command(flatten)]
        conn: AdminConnArgs,
        /// Only this user's (of the server's own users, or of --domain).
        #[arg(long)]
        user: Option<String>,
        /// Only this domain's users (its path, e.g. org.acme).
        #[arg(long)]
        domain: Option<String>,
        /// Only those of this login method (`token`: tokens and the logins
        /// made with them).
        #[arg(long)]
        method: Option<String>,
        /// Only the one held by this connection (the CONN column).
        #[arg(long)]
        requester: Option<u64>,
        /// Print a JSON array of the server's records instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show every field of keycard ID.
    Show {
        #[command(flatten)]
        conn: AdminConnArgs,
        /// The keycard's id (32 hex digits).
        #[arg(value_parser = parse_keycard_id)]
        id: String,
        /// Print the server's record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke keycard ID, or every keycard of --user, or the one of
    /// --requester: their connections are closed, tokens never work again.
    #[command(group(
        ArgGroup::new("which")
            .required(true)
            .args(["id", "user", "requester", "parent"])
    ))]
    Revoke {
        #[command(flatten)]
        conn: AdminConnArgs,
        /// The keycard's id (32 hex digits).
        #[arg(value_parser = parse_keycard_id)]
        id: Option<String>,
        /// Every keycard of this user, tokens included.
        #[arg(long)]
        user: Option<String>,
        /// The keycard held by this connection.
        #[arg(long)]
        requester: Option<u64>,
        /// The logins made with this token (the token itself stays valid).
        #[arg(long, value_parser = parse_keycard_id)]
        parent: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Issue a token for USER. The token alone goes to stdout (so
    /// `TOKEN=$(keycard token create …)` works), its id and expiry to
    /// stderr. It is shown this once; the server keeps only its hash.
    Create {
        #[command(flatten)]
        conn: AdminConnArgs,
        /// The user the token logs in as (an existing user).
        #[arg(long)]
        user: String,
        /// How long it lasts: 30d, 12h, 90m, 45s, 1w, 1d12h, or seconds.
        #[arg(long, value_parser = parse_ttl)]
        ttl: u64,
        /// A note to recognise it by (shown in listings).
        #[arg(long)]
        label: Option<String>,
        /// The method whose user record holds USER's ACL and capabilities
        /// (default: the first that has USER).
        #[arg(long)]
        method: Option<String>,
    },
    /// List tokens (revoked ones until they expire).
    Ls {
        #[command(flatten)]
        conn: AdminConnArgs,
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
        /// Print a JSON array of the server's records instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke token ID: it never works again, and the connections using it
    /// are closed.
    Revoke {
        #[command(flatten)]
        conn: AdminConnArgs,
        /// The token's id (32 hex digits: the part after `kct_`).
        #[arg(value_parser = parse_keycard_id)]
        id: String,
    },
}

/// A keycard id as given: 32 hex digits, returned in lowercase.
fn parse_keycard_id(text: &str) -> Result<String, String> {
    keycard_auth::bouncer::KeycardId::parse(text.trim())
        .map(|id| id.to_string())
        .ok_or_else(|| "a keycard id is 32 hex digits".to_owned())
}

/// A duration in seconds: a number of seconds, or numbers with units
/// (`w`, `d`, `h`, `m`, `s`) from the largest down, e.g. `30d`, `1h30m`.
/// Zero, unknown units and amounts beyond what milliseconds can count are
/// refused.
fn parse_ttl(text: &str) -> Result<u64, String> {
    const UNITS: [(&str, u64); 5] = [
        ("w", 7 * 86_400),
        ("d", 86_400),
        ("h", 3600),
        ("m", 60),
        ("s", 1),
    ];
    const MAX: u64 = u64::MAX / 1000;
    let too_large = || format!("{text:?} is too long a time");
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration (e.g. 30d, 12h, 90m, 45s)".into());
    }
    let mut total: u64 = 0;
    let mut rest = t;
    let mut last_unit = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "bad duration {text:?}: expected a number, then one of w, d, h, m, s"
            ));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| too_large())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = if unit.is_empty() {
            // Plain seconds: the whole text is one number.
            if digits != t.len() {
                return Err(format!(
                    "bad duration {text:?}: {n} needs a unit (w, d, h, m or s)"
                ));
            }
            1
        } else {
            let Some(i) = UNITS.iter().position(|(u, _)| *u == unit) else {
                return Err(format!(
                    "bad duration {text:?}: unknown unit {unit:?} (use w, d, h, m or s)"
                ));
            };
            if last_unit.is_some_and(|l| i <= l) {
                return Err(format!(
                    "bad duration {text:?}: give each unit once, largest first"
                ));
            }
            last_unit = Some(i);
            UNITS[i].1
        };
        total = n
            .checked_mul(scale)
            .and_then(|x| total.checked_add(x))
            .filter(|x| *x <= MAX)
            .ok_or_else(too_large)?;
    }
    if total == 0 {
        return Err("the duration must be at least one second".into());
    }
    Ok(total)
}

#[derive(Subcommand, Debug)]
enum AclCmd {
    /// Set entry PATTERN of ACL NAME to MODES (e.g. `keycard acl set ro app.+ rx`).
    Set {
        #[command(flatten)]
        conn: ConnArgs,
        /// The ACL's name.
        name: String,
        /// The path pattern (`:` for the ACL's root).
        pattern: String,
        /// The mode letters.
        modes: String,
    },
    /// Show the entries of ACL NAME.
    Show {
        #[command(flatten)]
        conn: ConnArgs,
        /// The ACL's name.
        name: String,
    },
    /// Bind USER of METHOD to ACL NAME (`*`: no ACL); applies at their next login.
    Bind {
        #[command(flatten)]
        conn: ConnArgs,
        /// The auth method of the user.
        method: String,
        /// The user.
        #[arg(value_name = "USER")]
        who: String,
        /// The ACL's name.
        name: String,
    },
    /// Whether USER may use MODE on PATH (its own ACL and its groups'),
    /// and the ACL and entry that decided; `--acl NAME PATH MODE` checks
    /// one ACL instead.
    Check {
        #[command(flatten)]
        conn: ConnArgs,
        /// Check this ACL rather than a user's.
        #[arg(long, value_name = "NAME")]
        acl: Option<String>,
        /// The user's auth method (default: the current one).
        #[arg(long)]
        method: Option<String>,
        /// USER PATH MODE (or PATH MODE with --acl); MODE is one letter.
        #[arg(num_args = 2..=3, value_names = ["USER", "PATH", "MODE"], required = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum GroupCmd {
    /// Bind group NAME to ACL (`*`: none); its members hold that ACL's
    /// modes too, from their next login.
    Set {
        #[command(flatten)]
        conn: ConnArgs,
        /// The group's name.
        name: String,
        /// The ACL's name.
        acl: String,
    },
    /// Set the groups USER of METHOD belongs to (none: leave them all).
    Member {
        #[command(flatten)]
        conn: ConnArgs,
        /// The auth method of the user.
        method: String,
        /// The user.
        #[arg(value_name = "USER")]
        who: String,
        /// The groups.
        groups: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum UserCmd {
    /// Create (or re-create) a user of METHOD. For password methods the
    /// new password comes from --new-password-file, KEYCARD_NEW_PASSWORD or
    /// a prompt; only a verifier derived from it is sent.
    Add {
        #[command(flatten)]
        conn: ConnArgs,
        /// The auth method (root, _anon, _test, scram-sha-256).
        method: String,
        /// The user name (`root` has one user, `*`; may be omitted).
        name: Option<String>,
        /// Read the new user's password from this file (its first line).
        #[arg(long)]
        new_password_file: Option<PathBuf>,
        /// Grant read_auth, write_auth and manage_keycards (needs a
        /// super-root session).
        #[arg(long)]
        admin: bool,
    },
    /// List the users of METHOD.
    Ls {
        #[command(flatten)]
        conn: ConnArgs,
        /// The auth method.
        method: String,
    },
    /// Show a user: its methods, ACL and groups, and its last logins
    /// (needs read_auth, or to be the user).
    Show {
        #[command(flatten)]
        conn: ConnArgs,
        /// The user name.
        name: String,
    },
    /// Delete a user of METHOD (its keycards of that method are revoked).
    Rm {
        #[command(flatten)]
        conn: ConnArgs,
        /// The auth method.
        method: String,
        /// The user name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum AuthCmd {
    /// Require METHOD from now on: creates its user if needed, then makes it
    /// current. `keycard auth init root` is DistKV's usual first step.
    Init {
        #[command(flatten)]
        conn: ConnArgs,
        /// The method (root, _anon, _test).
        method: String,
        /// Its first user (not needed for root).
        #[arg(long = "new-user")]
        new_user: Option<String>,
        /// Read that user's password from this file (its first line).
        #[arg(long)]
        new_password_file: Option<PathBuf>,
        /// Also accept logins with this method (repeatable; each needs a
        /// user already).
        #[arg(long)]
        accept: Vec<String>,
    },
    /// Show the current method and the methods the server offers.
    Show {
        #[command(flatten)]
        conn: ConnArgs,
    },
}

/// How the client commands reach and log in to the server (all but the
/// user name, which [`ConnArgs`] and [`AdminConnArgs`] spell differently).
#[derive(Args, Debug, Clone)]
struct ServerArgs {
    /// The server's msgpack address.
    #[arg(
        long,
        short = 's',
        env = "KEYCARD_SERVER",
        default_value = "127.0.0.1:27586"
    )]
    server: String,
    /// Log in with this method (default: the server's current one).
    #[arg(long, env = "KEYCARD_AUTH")]
    auth: Option<String>,
    /// Read the password from this file (its first line). Without it the
    /// password comes from KEYCARD_PASSWORD, else a prompt (no echo).
    #[arg(long, env = "KEYCARD_PASSWORD_FILE")]
    password_file: Option<PathBuf>,
    /// Log in with a token (`keycard token create`) read from this file
    /// (its first line) instead of a method; KEYCARD_TOKEN may hold the
    /// token itself. The token decides the user.
    #[arg(long, env = "KEYCARD_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

/// How the client commands reach and log in to the server.
#[derive(Args, Debug, Clone)]
struct ConnArgs {
    #[command(flatten)]
    at: ServerArgs,
    /// Log in as this user (not needed for `root`).
    #[arg(long, short = 'u', env = "KEYCARD_USER")]
    user: Option<String>,
}

/// [`ConnArgs`] for the commands whose `--user` names the user they act
/// on: the login's user is `--as`.
#[derive(Args, Debug, Clone)]
struct AdminConnArgs {
    #[command(flatten)]
    at: ServerArgs,
    /// Log in as this user (not needed for `root`; `--user` names whose
    /// keycards).
    #[arg(long = "as", value_name = "USER", env = "KEYCARD_USER")]
    login_user: Option<String>,
}

impl AdminConnArgs {
    fn conn(&self) -> ConnArgs {
        ConnArgs {
            at: self.at.clone(),
            user: self.login_user.clone(),
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
fn new_password(method: &str, file: Option<&PathBuf>) -> anyhow::Result<Option<Password>> {
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
    let first =
        rpassword::prompt_password(prompt).context("cannot read a password from the terminal")?;
    if confirm {
        let again = rpassword::prompt_password("again: ")
            .context("cannot read a password from the terminal")?;
        if again != first {
            bail!("the passwords differ");
        }
    }
    Ok(Password::new(first))
}

/// `keycard serve` options. Each overrides the config file; the config
/// file overrides the defaults shown.
#[derive(Args, Debug)]
struct ServeArgs {
    /// A TOML file with any of the fields below (same names, '_' for '-').
    #[arg(long, short = 'c', env = "KEYCARD_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory holding the embedded store [default: ./keycard-data].
    #[arg(long, env = "KEYCARD_DATA")]
    data: Option<PathBuf>,
    /// Address of the msgpack listener [default: 127.0.0.1:27586].
    #[arg(long, env = "KEYCARD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Also serve the REST API here, e.g. 127.0.0.1:8427 [default: off].
    #[arg(long, env = "KEYCARD_HTTP")]
    http: Option<SocketAddr>,
    /// Node name sent in the greeting [default: keycard].
    #[arg(long)]
    node: Option<String>,
    /// Largest message accepted, in bytes [default: 1048576].
    #[arg(long)]
    max_message: Option<usize>,
    /// Most requests outstanding per connection [default: 1024].
    #[arg(long)]
    max_outstanding: Option<usize>,
    /// Failed logins allowed per connection before it is closed [default: 5].
    #[arg(long)]
    max_auth_attempts: Option<u32>,
    /// Changes kept for watches resuming from a tock [default: 100000].
    #[arg(long)]
    history: Option<u64>,
    /// Log filter (tracing's EnvFilter syntax) [default: info].
    #[arg(long, env = "KEYCARD_LOG", default_value = "info")]
    log: String,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_path(text: &str) -> anyhow::Result<Path> {
    Path::parse(text).with_context(|| format!("bad path {text:?}"))
}

async fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Serve(args) => serve(args).await,
        Command::Get { conn, path } => {
            let c = connect(&conn).await?;
            match c.get(&parse_path(&path)?).await? {
                Some(node) => println!("{}", render::show(&node.value)),
                None => bail!("no value at {path}"),
            }
            Ok(())
        }
        Command::Set {
            conn,
            path,
            value,
            json,
            hex,
            new,
        } => {
            let value = if json {
                render::from_json(&value)?
            } else if hex {
                render::from_hex(&value)?
            } else {
                Value::Str(value)
            };
            let c = connect(&conn).await?;
            let path = parse_path(&path)?;
            let r = if new {
                c.create(&path, value).await?
            } else {
                c.set(&path, value).await?
            };
            eprintln!(
                "tock {}{}",
                r.tock,
                if r.changed { "" } else { " (unchanged)" }
            );
            Ok(())
        }
        Command::Rm { conn, path } => {
            let c = connect(&conn).await?;
            let r = c.delete(&parse_path(&path)?).await?;
            if !r.changed {
                bail!("no value at {path}");
            }
            Ok(())
        }
        Command::Ls {
            conn,
            path,
            max_depth,
            min_depth,
        } => {
            let c = connect(&conn).await?;
            let base = parse_path(&path)?;
            let mut s = c.get_tree(&base, min_depth, max_depth).await?;
            while let Some(item) = s.next().await {
                let item = item?;
                if let Some(v) = item.value {
                    println!("{}\t{}", base.join(&item.path), render::show(&v));
                }
            }
            Ok(())
        }
        Command::Watch { conn, path, fetch } => {
            let c = connect(&conn).await?;
            let base = parse_path(&path)?;
            let mut s = c.watch(&base, fetch).await?;
            while let Some(ev) = s.next_event().await {
                match ev? {
                    Event::UpToDate => eprintln!("-- up to date --"),
                    Event::Item(i) => match i.value {
                        Some(v) => println!("{}\t{}", base.join(&i.path), render::show(&v)),
                        None => println!("{}\t(deleted)", base.join(&i.path)),
                    },
                }
            }
            Ok(())
        }
        Command::User { cmd } => user(cmd).await,
        Command::Auth { cmd } => auth(cmd).await,
        Command::Acl { cmd } => acl(cmd).await,
        Command::Group { cmd } => group(cmd).await,
        Command::Whoami { conn } => whoami(&conn).await,
        Command::Keycard { cmd } => keycard(cmd).await,
        Command::Token { cmd } => token(cmd).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).context("bad --log filter")?,
        )
        .with_writer(std::io::stderr)
        .fmt_fields(crate::logging::EscapedFields::new())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut config = match &args.config {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            Config::from_toml(&text)
                .map_err(|e| anyhow::anyhow!("bad config file {}: {e}", file.display()))?
        }
        None => Config::default(),
    };
    if let Some(v) = args.data {
        config.data = v;
    }
    if let Some(v) = args.http {
        config.http = Some(v);
    }
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.node {
        config.node = v;
    }
    if let Some(v) = args.max_message {
        config.max_message = v;
    }
    if let Some(v) = args.max_outstanding {
        config.max_outstanding = v;
    }
    if let Some(v) = args.max_auth_attempts {
        config.max_auth_attempts = v;
    }
    if let Some(v) = args.history {
        config.history = v;
    }
    let data = config.data.clone();
    let server = Server::open(config).await?;
    let addr = server.local_addr()?;
    tracing::info!(%addr, data = %data.display(), version = env!("CARGO_PKG_VERSION"), "keycard listening");
    if let Some(http) = server.http_addr() {
        tracing::info!(%http, "REST API listening");
    }
    // Acknowledged writes are already durable; stopping needs no flush.
    tokio::select! {
        _ = server.run() => {}
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    Ok(())
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

/// Connects and logs in: with a token when one is given, else, when the
/// server requires it, with a method.
async fn connect(args: &ConnArgs) -> anyhow::Result<Client> {
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
    let c = Client::connect(server.as_str())
        .await
        .with_context(|| format!("cannot reach keycard at {server}"))?;
    if let Some((token, source)) = token {
        token_login(&c, &token, &source).await?;
        return Ok(c);
    }
    // An explicit --auth is tried as given. Otherwise, if the server asks
    // for a login, the strongest method it accepts that we can use: one
    // needing a user name only with --user.
    let method = match (&args.at.auth, c.greeting().auth.as_ref()) {
        (Some(m), _) => Some(m.clone()),
        (None, Some(list)) if list.first().is_some_and(Option::is_some) => {
            let accepted: Vec<&str> = list.iter().flatten().map(String::as_str).collect();
            let usable =
                |m: &&&str| accepted.contains(*m) && (**m == "root" || args.user.is_some());
            match keycard_client::STRENGTH.iter().find(usable) {
                Some(m) => Some((*m).to_owned()),
                None => bail!(
                    "the server requires a login with one of: {} (give --user, or --auth)",
                    accepted.join(", ")
                ),
            }
        }
        _ => None,
    };
    if let Some(method) = method {
        let password = if ClientRegistry::needs_password(&method) {
            Some(login_password(args)?)
        } else {
            None
        };
        let m = ClientRegistry::make_with_password(&method, args.user.as_deref(), password)
            .map_err(|e| anyhow::anyhow!("{e} (use --user, or KEYCARD_USER)"))?;
        c.login(m.as_ref())
            .await
            .with_context(|| format!("login with method {method} failed"))?;
    }
    Ok(c)
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

async fn user(cmd: UserCmd) -> anyhow::Result<()> {
    match cmd {
        UserCmd::Add {
            conn,
            method,
            name,
            new_password_file,
            admin,
        } => {
            let c = connect(&conn).await?;
            let password = new_password(&method, new_password_file.as_ref())?;
            let m = ClientRegistry::make_with_password(&method, name.as_deref(), password)?;
            c.set_user(m.as_ref()).await?;
            eprintln!("user {} of method {method} created", m.ident());
            if admin {
                let caps = ["read_auth", "write_auth", "manage_keycards"];
                let path = Path::new(vec![
                    "auth".into(),
                    method.as_str().into(),
                    "user".into(),
                    m.ident().into(),
                    "caps".into(),
                ]);
                c.write(
                    Msg::new()
                        .with("action", "set_internal")
                        .with_path("path", &path)
                        .with(
                            "value",
                            Msg::new().with("caps", Value::Array(caps.map(Value::from).to_vec())),
                        ),
                )
                .await
                .context("granting the admin capabilities needs a super-root session")?;
                eprintln!("granted {}", caps.join(", "));
            }
            Ok(())
        }
        UserCmd::Ls { conn, method } => {
            let c = connect(&conn).await?;
            let msg = Msg::new()
                .with("action", "auth_list")
                .with("typ", method.as_str())
                .with("kind", "user");
            let mut s = c.stream(msg).await?;
            while let Some(ev) = s.next_raw().await {
                if let Some(ident) = ev?.get("ident").and_then(Value::as_str) {
                    println!("{ident}");
                }
            }
            Ok(())
        }
        UserCmd::Show { conn, name } => {
            let c = connect(&conn).await?;
            let v = c
                .request(
                    Msg::new()
                        .with("action", "user_show")
                        .with("ident", name.as_str()),
                )
                .await?;
            let text =
                |m: &Value, k: &str| m.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
            let list = |k: &str| match v.get(k) {
                Some(Value::Array(items)) => items.clone(),
                _ => Vec::new(),
            };
            let methods: Vec<Vec<String>> = list("methods")
                .iter()
                .map(|m| {
                    let groups = match m.get("groups") {
                        Some(Value::Array(g)) => g
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(","),
                        _ => "-".into(),
                    };
                    vec![text(m, "method"), text(m, "acl"), groups]
                })
                .collect();
            print!("{}", render::table(&["METHOD", "ACL", "GROUPS"], &methods));
            let now = render::now_ms();
            let logins: Vec<Vec<String>> = list("last_logins")
                .iter()
                .map(|l| {
                    let at = l.get("at").and_then(Value::as_u64).unwrap_or(0);
                    vec![
                        render::when(at, now),
                        text(l, "client"),
                        text(l, "method"),
                        text(l, "via"),
                    ]
                })
                .collect();
            match logins.is_empty() {
                true => println!("\nno logins yet"),
                false => print!(
                    "\n{}",
                    render::table(&["LAST LOGINS", "CLIENT", "METHOD", "VIA"], &logins)
                ),
            }
            Ok(())
        }
        UserCmd::Rm { conn, method, name } => {
            let c = connect(&conn).await?;
            c.request(
                Msg::new()
                    .with("action", "auth_delete")
                    .with("typ", method.as_str())
                    .with("kind", "user")
                    .with("ident", name.as_str()),
            )
            .await?;
            Ok(())
        }
    }
}

async fn auth(cmd: AuthCmd) -> anyhow::Result<()> {
    match cmd {
        AuthCmd::Init {
            conn,
            method,
            new_user,
            new_password_file,
            accept,
        } => {
            let c = connect(&conn).await?;
            let password = new_password(&method, new_password_file.as_ref())?;
            let m = ClientRegistry::make_with_password(&method, new_user.as_deref(), password)?;
            match c.set_user(m.as_ref()).await {
                Ok(_) => eprintln!("user {} of method {method} created", m.ident()),
                Err(e) if e.code() == Some(ErrorCode::Conflict) => {
                    eprintln!("user {} of method {method} exists", m.ident())
                }
                Err(e) => return Err(e.into()),
            }
            let accept: Vec<Value> = accept.iter().map(|a| Value::from(a.as_str())).collect();
            c.request(
                Msg::new()
                    .with("action", "set_auth_typ")
                    .with("typ", method.as_str())
                    .with("accept", Value::Array(accept)),
            )
            .await?;
            eprintln!("method {method} is now required; log in with --auth {method}");
            Ok(())
        }
        AuthCmd::Show { conn } => {
            let c = connect(&conn).await?;
            match &c.greeting().auth {
                None => println!("no auth configured: the server is open"),
                Some(list) => {
                    match list.first().cloned().flatten() {
                        Some(m) => println!("current: {m}"),
                        None => println!("current: none (the server is open)"),
                    }
                    let others: Vec<_> = list.iter().skip(1).flatten().cloned().collect();
                    if !others.is_empty() {
                        println!("also accepted: {}", others.join(", "));
                    }
                }
            }
            Ok(())
        }
    }
}

async fn acl(cmd: AclCmd) -> anyhow::Result<()> {
    match cmd {
        AclCmd::Set {
            conn,
            name,
            pattern,
            modes,
        } => {
            keycard_auth::acl::Modes::parse(&modes)?;
            let c = connect(&conn).await?;
            let path =
                Path::new(vec!["acl".into(), name.as_str().into()]).join(&parse_path(&pattern)?);
            c.write(
                Msg::new()
                    .with("action", "set_internal")
                    .with_path("path", &path)
                    .with("value", modes.as_str()),
            )
            .await?;
            Ok(())
        }
        AclCmd::Show { conn, name } => {
            let c = connect(&conn).await?;
            let base = Path::new(vec!["acl".into(), name.as_str().into()]);
            let mut s = c
                .stream(
                    Msg::new()
                        .with("action", "get_tree_internal")
                        .with_path("path", &base)
                        .with("long_path", true),
                )
                .await?;
            let mut any = false;
            while let Some(item) = s.next().await {
                let item = item?;
                if let Some(v) = item.value {
                    any = true;
                    println!(
                        "{}\t{}",
                        item.path,
                        v.as_str().unwrap_or("(not a mode string)")
                    );
                }
            }
            if !any {
                bail!("ACL {name:?} has no entries");
            }
            Ok(())
        }
        AclCmd::Bind {
            conn,
            method,
            who: user,
            name,
        } => {
            let c = connect(&conn).await?;
            let path = Path::new(vec![
                "auth".into(),
                method.as_str().into(),
                "user".into(),
                user.as_str().into(),
                "acl".into(),
            ]);
            c.write(
                Msg::new()
                    .with("action", "set_internal")
                    .with_path("path", &path)
                    .with("value", Msg::new().with("key", name.as_str())),
            )
            .await?;
            eprintln!(
                "user {user} of {method} bound to ACL {name}; it applies at their next login"
            );
            Ok(())
        }
        AclCmd::Check {
            conn,
            acl,
            method,
            args,
        } => {
            let (who, path, mode) = match (&acl, args.as_slice()) {
                (None, [u, p, m]) => (Some(u.clone()), p.clone(), m.clone()),
                (Some(_), [p, m]) => (None, p.clone(), m.clone()),
                (None, _) => bail!("say USER PATH MODE (or --acl NAME PATH MODE)"),
                (Some(_), _) => bail!("with --acl, say PATH MODE"),
            };
            let mut m = Msg::new()
                .with("action", "test_acl")
                .with_path("path", &parse_path(&path)?)
                .with("mode", mode.as_str());
            let name = match (&acl, &who) {
                (Some(a), _) => {
                    m.set("acl", a.as_str());
                    format!("ACL {a}")
                }
                (None, Some(u)) => {
                    m.set("user", u.as_str());
                    if let Some(meth) = &method {
                        m.set("method", meth.as_str());
                    }
                    format!("user {u}")
                }
                (None, None) => bail!("say whose access to check"),
            };
            let c = connect(&conn).await?;
            let r = c.request(m).await?;
            let decided_by = r
                .get("acl")
                .and_then(Value::as_str)
                .filter(|_| who.is_some())
                .map(|a| format!(" of ACL {a}"))
                .unwrap_or_default();
            let allowed = r.get("access").is_some_and(Value::truthy);
            match r.get("rule") {
                Some(Value::Array(rule)) if rule.len() == 2 => {
                    let pattern = Path::from_value(&rule[0])
                        .map(|p| p.to_string())
                        .unwrap_or_default();
                    println!(
                        "{}: entry {pattern} = {}{decided_by}",
                        if allowed { "allowed" } else { "denied" },
                        rule[1].as_str().unwrap_or("?")
                    );
                }
                _ if allowed && who.is_some() => {
                    println!("allowed: the user is bound to no ACL (full data access)")
                }
                _ => println!(
                    "{}: no entry matches",
                    if allowed { "allowed" } else { "denied" }
                ),
            }
            if !allowed {
                bail!("{name} does not grant '{mode}' on {path}");
            }
            Ok(())
        }
    }
}

async fn group(cmd: GroupCmd) -> anyhow::Result<()> {
    let (conn, path, value) = match cmd {
        GroupCmd::Set { conn, name, acl } => (
            conn,
            Path::new(vec!["group".into(), name.as_str().into()]),
            Msg::new().with("acl", acl.as_str()).into_value(),
        ),
        GroupCmd::Member {
            conn,
            method,
            who,
            groups,
        } => (
            conn,
            Path::new(vec![
                "auth".into(),
                method.as_str().into(),
                "user".into(),
                who.as_str().into(),
                "groups".into(),
            ]),
            Msg::new()
                .with(
                    "groups",
                    Value::Array(groups.iter().map(|g| Value::from(g.as_str())).collect()),
                )
                .into_value(),
        ),
    };
    let c = connect(&conn).await?;
    c.write(
        Msg::new()
            .with("action", "set_internal")
            .with_path("path", &path)
            .with("value", value),
    )
    .await?;
    eprintln!("done; it applies at the members' next login");
    Ok(())
}

async fn whoami(conn: &ConnArgs) -> anyhow::Result<()> {
    let c = connect(conn).await?;
    let r = c.request(Msg::new().with("action", "whoami")).await?;
    let now = render::now_ms();
    let mut out = String::new();
    match r.get("user").and_then(Value::as_str) {
        Some(user) => {
            outln!(out, "user: {user}");
            if let Some(m) = r.get("method").and_then(Value::as_str) {
                outln!(out, "method: {m}");
            }
            if let Some(k) = r.get("keycard").and_then(Value::as_str) {
                outln!(out, "keycard: {k}");
            }
            if let Some(ms) = r.get("expires_at").and_then(Value::as_u64) {
                outln!(out, "expires: {}", render::when(ms, now));
            }
        }
        None => {
            outln!(out, "not logged in");
            if r.get("super_root").is_some_and(Value::truthy) {
                outln!(out, "the server is open: every connection is super-root");
            }
            return emit(&out);
        }
    }
    let caps: Vec<&str> = match r.get("caps") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    outln!(
        out,
        "caps: {}",
        if caps.is_empty() {
            "none".to_owned()
        } else {
            caps.join(", ")
        }
    );
    if r.get("super_root").is_some_and(Value::truthy) {
        outln!(out, "super_root: yes");
    }
    emit(&out)
}

/// Which keycards `keycard_list` returns.
struct CardFilter {
    user: Option<String>,
    domain: Option<String>,
    method: Option<String>,
    requester: Option<u64>,
}

/// Every keycard matching `f`: live ones (fetched a page at a time), then
/// durable ones.
async fn list_cards(c: &Client, f: &CardFilter) -> anyhow::Result<Vec<Value>> {
    const PAGE: usize = 1000;
    let mut live = Vec::new();
    let mut durable = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut msg = Msg::new()
            .with("action", "keycard_list")
            .with("limit", PAGE);
        if let Some(u) = &f.user {
            msg.set("user", u.as_str());
        }
        if let Some(d) = &f.domain {
            msg.set("domain", d.as_str());
        }
        if let Some(m) = &f.method {
            msg.set("method", m.as_str());
        }
        if let Some(r) = f.requester {
            msg.set("requester", r);
        }
        if let Some(a) = &after {
            msg.set("after", a.as_str());
        }
        let mut s = c.stream(msg).await?;
        let mut page = 0;
        let mut last = None;
        while let Some(v) = s.next_raw().await {
            let v = card_fields(v?);
            if is_durable(&v) {
                durable.push(v);
            } else {
                page += 1;
                last = v.get("id").and_then(Value::as_str).map(str::to_owned);
                live.push(v);
            }
        }
        match last {
            Some(id) if page >= PAGE => after = Some(id),
            _ => break,
        }
    }
    live.extend(durable);
    Ok(live)
}

/// A keycard as the server sent it, without the message's framing
/// (`seq`, `wseq`, `tock`, `state`).
fn card_fields(mut v: Value) -> Value {
    if let Value::Map(m) = &mut v {
        m.retain(|(k, _)| !matches!(k.as_str(), Some("seq" | "wseq" | "tock" | "state")));
    }
    v
}

fn is_durable(card: &Value) -> bool {
    card.get("durable").is_some_and(Value::truthy)
}

/// A keycard's status for people: a token past its expiry that the server
/// has not yet reaped reads `expired`.
fn status_of(card: &Value, now: u64) -> String {
    let status = card
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned();
    let expired = card
        .get("expires_at")
        .and_then(Value::as_u64)
        .is_some_and(|e| e <= now);
    if status == "authenticated" && expired {
        "expired".into()
    } else {
        status
    }
}

/// Keycards as a table, or a JSON array.
fn print_cards(cards: &[Value], json: bool) -> anyhow::Result<()> {
    if json {
        let all = serde_json::Value::Array(cards.iter().map(render::to_json).collect());
        return emit(&format!("{}\n", serde_json::to_string_pretty(&all)?));
    }
    if cards.is_empty() {
        eprintln!("no keycards");
        return Ok(());
    }
    let now = render::now_ms();
    let text = |card: &Value, key: &str| {
        card.get(key)
            .filter(|v| !v.is_nil())
            .map_or_else(|| "-".to_owned(), render::plain)
    };
    let rows: Vec<Vec<String>> = cards
        .iter()
        .map(|card| {
            let durable = is_durable(card);
            let conn = if durable {
                "durable".to_owned()
            } else {
                text(card, "requester")
            };
            let expires = card
                .get("expires_at")
                .and_then(Value::as_u64)
                .map_or_else(|| "-".to_owned(), |ms| render::relative(ms, now));
            let note = if durable {
                card.get("label")
                    .and_then(Value::as_str)
                    .map(|l| format!("label: {l}"))
                    .unwrap_or_default()
            } else {
                card.get("parent")
                    .and_then(Value::as_str)
                    .map(|p| format!("via token {p}"))
                    .unwrap_or_default()
            };
            // A domain's user shows as NAME@DOMAIN.
            let user = match card.get("domain").and_then(Value::as_str) {
                Some(d) if !d.is_empty() => format!("{}@{d}", text(card, "user")),
                _ => text(card, "user"),
            };
            vec![
                text(card, "id"),
                user,
                text(card, "method"),
                status_of(card, now),
                conn,
                text(card, "addr"),
                expires,
                note,
            ]
        })
        .collect();
    emit(&render::table(
        &[
            "ID", "USER", "METHOD", "STATUS", "CONN", "ADDR", "EXPIRES", "NOTE",
        ],
        &rows,
    ))
}

/// One keycard, a field per line (times as ISO 8601 and from now).
fn print_card(card: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return emit(&format!(
            "{}\n",
            serde_json::to_string_pretty(&render::to_json(card))?
        ));
    }
    const TIMES: [&str; 5] = [
        "issued_at",
        "expires_at",
        "max_until",
        "last_keepalive",
        "revoked_at",
    ];
    let now = render::now_ms();
    let Value::Map(fields) = card else {
        bail!("the server sent a keycard that is not a map");
    };
    let width = fields
        .iter()
        .filter_map(|(k, _)| k.as_str())
        .map(str::len)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in fields.iter().filter(|(_, v)| !v.is_nil()) {
        let key = render::plain(k);
        let value = match (k.as_str(), v.as_u64()) {
            (Some("status"), _) => status_of(card, now),
            (Some(name), Some(ms)) if TIMES.contains(&name) => render::when(ms, now),
            _ => render::plain(v),
        };
        outln!(out, "{key:width$}  {value}");
    }
    emit(&out)
}

async fn show_card(c: &Client, id: &str) -> anyhow::Result<Value> {
    c.request(Msg::new().with("action", "keycard_show").with("id", id))
        .await
        .map(card_fields)
        .with_context(|| format!("keycard {id}"))
}

/// Sends a `keycard_revoke`, prints how many keycards it revoked and
/// returns that.
async fn revoke(c: &Client, msg: Msg) -> anyhow::Result<u64> {
    let r = c.request(msg.with("action", "keycard_revoke")).await?;
    let n = r.get("revoked").and_then(Value::as_u64).unwrap_or(0);
    emit(&format!(
        "revoked {n} keycard{}\n",
        if n == 1 { "" } else { "s" }
    ))?;
    Ok(n)
}

async fn keycard(cmd: KeycardCmd) -> anyhow::Result<()> {
    match cmd {
        KeycardCmd::Ls {
            conn,
            user,
            domain,
            method,
            requester,
            json,
        } => {
            let c = connect(&conn.conn()).await?;
            let f = CardFilter {
                user,
                domain,
                method,
                requester,
            };
            print_cards(&list_cards(&c, &f).await?, json)
        }
        KeycardCmd::Show { conn, id, json } => {
            let c = connect(&conn.conn()).await?;
            print_card(&show_card(&c, &id).await?, json)
        }
        KeycardCmd::Revoke {
            conn,
            id,
            user,
            requester,
            parent,
        } => {
            let c = connect(&conn.conn()).await?;
            let mut msg = Msg::new();
            if let Some(id) = id {
                msg.set("id", id);
            }
            if let Some(u) = user {
                msg.set("user", u);
            }
            if let Some(r) = requester {
                msg.set("requester", r);
            }
            if let Some(p) = parent {
                msg.set("parent", p);
            }
            revoke(&c, msg).await.map(|_| ())
        }
    }
}

async fn token(cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create {
            conn,
            user,
            ttl,
            label,
            method,
        } => {
            let c = connect(&conn.conn()).await?;
            let mut msg = Msg::new()
                .with("action", "token_create")
                .with("user", user.as_str())
                .with("ttl", ttl);
            if let Some(l) = label {
                msg.set("label", l);
            }
            if let Some(m) = method {
                msg.set("method", m);
            }
            let r = c.request(msg).await?;
            let Some(token) = r.get("token").and_then(Value::as_str) else {
                bail!("the server's reply holds no token");
            };
            let token = Password::new(token);
            let id = r.get("id").and_then(Value::as_str).unwrap_or("?");
            let expires = r
                .get("expires_at")
                .and_then(Value::as_u64)
                .map_or_else(|| "?".to_owned(), |ms| render::when(ms, render::now_ms()));
            println!("{}", token.expose());
            eprintln!("token {id} for user {user}, expires {expires}");
            eprintln!(
                "warning: the token is shown this once (the server keeps only its hash); \
                 store it now. Revoke it with `keycard token revoke {id}`."
            );
            Ok(())
        }
        TokenCmd::Ls { conn, user, json } => {
            let c = connect(&conn.conn()).await?;
            let f = CardFilter {
                user,
                domain: None,
                method: Some(TOKEN_METHOD.to_owned()),
                requester: None,
            };
            let mut cards = list_cards(&c, &f).await?;
            cards.retain(is_durable);
            print_cards(&cards, json)
        }
        TokenCmd::Revoke { conn, id } => {
            let c = connect(&conn.conn()).await?;
            if !is_durable(&show_card(&c, &id).await?) {
                bail!(
                    "keycard {id} is a login's, not a token; `keycard keycard revoke {id}` \
                     revokes it"
                );
            }
            let n = revoke(&c, Msg::new().with("id", id.as_str())).await?;
            if n == 0 {
                eprintln!("token {id} was already revoked");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own consistency checks over every subcommand (duplicate
    /// argument names and the like).
    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        use super::parse_ttl;
        assert_eq!(parse_ttl("45"), Ok(45));
        assert_eq!(parse_ttl("45s"), Ok(45));
        assert_eq!(parse_ttl("90m"), Ok(5400));
        assert_eq!(parse_ttl("12h"), Ok(43_200));
        assert_eq!(parse_ttl("30d"), Ok(2_592_000));
        assert_eq!(parse_ttl("1w"), Ok(604_800));
        assert_eq!(parse_ttl("1d12h"), Ok(129_600));
        assert_eq!(parse_ttl("1h30m15s"), Ok(5415));
        assert_eq!(parse_ttl(" 2h "), Ok(7200));
        assert_eq!(parse_ttl("007"), Ok(7));
        for bad in [
            "", "0", "0s", "0d0h", "-5", "+5", "5x", "h", "5 h", "1.5h", "5H", "1h5", "1m1h",
            "1h1h", "30d 2h", "1e3", "ten", "5sec",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} accepted");
        }
        // Overflow: beyond u64, and beyond what milliseconds can count.
        assert!(parse_ttl("18446744073709551616").is_err());
        assert!(parse_ttl("18446744073709551615").is_err());
        assert!(parse_ttl("99999999999999999w").is_err());
        assert!(parse_ttl("18446744073709551w1d").is_err());
        assert_eq!(parse_ttl("18446744073709551"), Ok(18_446_744_073_709_551));
        assert!(parse_ttl("18446744073709552").is_err());
    }

    #[test]
    fn keycard_ids() {
        use super::parse_keycard_id;
        let id = "0123456789ABCDEF0123456789abcdef";
        assert_eq!(
            parse_keycard_id(id).as_deref(),
            Ok("0123456789abcdef0123456789abcdef")
        );
        assert!(parse_keycard_id("0123").is_err());
        assert!(parse_keycard_id(&"g".repeat(32)).is_err());
    }

    /// `keycard keycard revoke` takes exactly one selector.
    #[test]
    fn revoke_needs_exactly_one_selector() {
        use clap::Parser;
        let id = "0123456789abcdef0123456789abcdef";
        let parse = |args: &[&str]| {
            super::Cli::try_parse_from(["keycard", "keycard", "revoke"].iter().chain(args.iter()))
        };
        assert!(parse(&[id]).is_ok());
        assert!(parse(&["--user", "bob"]).is_ok());
        assert!(parse(&["--requester", "7"]).is_ok());
        assert!(parse(&["--parent", id]).is_ok());
        assert!(parse(&[]).is_err());
        assert!(parse(&[id, "--user", "bob"]).is_err());
        assert!(parse(&["--user", "bob", "--requester", "7"]).is_err());
        // --as is the login's user, not a selector.
        assert!(parse(&["--as", "alice"]).is_err());
        assert!(parse(&["--as", "alice", "--user", "bob"]).is_ok());
    }
}
