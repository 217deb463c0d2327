//! Command-line parsing and the commands.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{ArgGroup, Parser, Subcommand};
use keycard_auth::{ClientRegistry, Password};
use keycard_client::{Client, Event};
use keycard_proto::{ErrorCode, Msg, Path, Value};

use crate::admin;
use crate::login::{connect, new_password, AdminConnArgs, ConnArgs, KeycardIdParser, TOKEN_METHOD};
use crate::render;
use crate::serve::ServeArgs;

/// Appends a formatted line to a `String`.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        $out.push_str(&format!($($arg)*));
        $out.push('\n');
    }};
}

/// A line to stdout, through `render::terminal` (no string from the
/// server reaches the terminal as an escape sequence).
macro_rules! say {
    ($($arg:tt)*) => {
        render::out_line(&format!($($arg)*))
    };
}

/// A line to stderr, through `render::terminal`.
macro_rules! say_err {
    ($($arg:tt)*) => {
        render::err_line(&format!($($arg)*))
    };
}

/// Writes `text` to stdout; a reader that went away (`keycard … | head`)
/// is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let text = render::terminal(text);
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
    ///
    /// Every option below overrides the config file (-c), which overrides
    /// the defaults shown. The file's fields have the same names with '_'
    /// for '-'; the `--throttle-…` and `--keycards-…` ones are the fields
    /// of its `[throttle]` and `[keycards]` tables (`--throttle-free` is
    /// `free` in `[throttle]`).
    Serve(Box<ServeArgs>),
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
    /// Show the audit log's last events: logins, user changes, keycards
    /// (needs read_auth).
    Audit {
        #[command(flatten)]
        conn: ConnArgs,
        /// How many events (the newest, oldest first).
        #[arg(short = 'n', long, default_value_t = 20)]
        n: usize,
        /// Print the events as the log holds them (JSON lines).
        #[arg(long)]
        json: bool,
    },
    /// Grant capabilities, also on a stopped server: the way back into a
    /// server nobody can administer.
    Admin {
        #[command(subcommand)]
        cmd: AdminCmd,
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
        /// The keycard's id (32 hex digits; a token's as printed).
        #[arg(value_parser = KeycardIdParser)]
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
        /// The keycard's id (32 hex digits; a token's as printed).
        #[arg(value_parser = KeycardIdParser)]
        id: Option<String>,
        /// Every keycard of this user, tokens included.
        #[arg(long)]
        user: Option<String>,
        /// The keycard held by this connection.
        #[arg(long)]
        requester: Option<u64>,
        /// The logins made with this token (the token itself stays valid).
        #[arg(long, value_parser = KeycardIdParser)]
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
    /// Revoke a token: it never works again, and the connections using it
    /// are closed.
    Revoke {
        #[command(flatten)]
        conn: AdminConnArgs,
        /// The token as `token create` printed it, or its id (the 32 hex
        /// digits after `kct_`).
        #[arg(value_name = "TOKEN", value_parser = KeycardIdParser)]
        id: String,
    },
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
    /// List the ACLs.
    Ls {
        #[command(flatten)]
        conn: ConnArgs,
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
        /// The user's auth method (default: the user's, when it has one).
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
    /// List the groups and the ACL each binds.
    Ls {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Show group NAME: its ACL and its members.
    Show {
        #[command(flatten)]
        conn: ConnArgs,
        /// The group's name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum AdminCmd {
    /// Add capabilities (default: super_root) to USER. Over a connection
    /// this needs a super-root session; with --data it works on a stopped
    /// server's data directory (the server holds the store's lock while it
    /// runs), for a server nobody can administer any more.
    Grant {
        #[command(flatten)]
        conn: ConnArgs,
        /// Work offline on this data directory (the server's --data),
        /// with the server stopped.
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// USER's auth method (default: the current one).
        #[arg(long)]
        method: Option<String>,
        /// The user.
        #[arg(value_name = "USER")]
        who: String,
        /// read_auth, write_auth, manage_keycards, super_root.
        #[arg(value_parser = admin::parse_cap, default_value = "super_root")]
        caps: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum UserCmd {
    /// Create a user of METHOD (an existing one only with --replace). For
    /// password methods the new password comes from --new-password-file,
    /// KEYCARD_NEW_PASSWORD or a prompt; only a verifier derived from it
    /// is sent.
    Add {
        #[command(flatten)]
        conn: ConnArgs,
        /// The auth method: opaque, scram-sha-256 or password (with a
        /// password); root, _anon or _test (without).
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
        /// Replace the user's credential if it exists (`user passwd`
        /// changes a password).
        #[arg(long)]
        replace: bool,
    },
    /// Change a password: your own (no NAME), or NAME's (needs
    /// write_auth). The new one comes from --new-password-file,
    /// KEYCARD_NEW_PASSWORD or a prompt asked twice.
    Passwd {
        #[command(flatten)]
        conn: ConnArgs,
        /// The user (default: the one logged in).
        name: Option<String>,
        /// The method whose password to change (default: the one logged
        /// in with, or the user's only password method).
        #[arg(long)]
        method: Option<String>,
        /// Read the new password from this file (its first line).
        #[arg(long)]
        new_password_file: Option<PathBuf>,
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
    /// Require METHOD from now on. With --new-user, that user is created
    /// if it does not exist (an existing one keeps its password) and made
    /// an administrator (super_root); without, some user of METHOD (or of
    /// an --accept method) must already hold super_root, or nobody could
    /// administer the server afterwards (--force: do it anyway).
    /// `keycard auth init root` is DistKV's usual first step.
    Init {
        #[command(flatten)]
        conn: ConnArgs,
        /// The method: opaque, scram-sha-256 or password (with a
        /// password); root, _anon or _test (without).
        method: String,
        /// Its first user, made an administrator (not for root, whose one
        /// user `*` is super-root).
        #[arg(long = "new-user")]
        new_user: Option<String>,
        /// Read that user's password from this file (its first line).
        #[arg(long)]
        new_password_file: Option<PathBuf>,
        /// Also accept logins with this method (repeatable; each needs a
        /// user already). `root` next to a password method lets anyone in
        /// as super-root.
        #[arg(long)]
        accept: Vec<String>,
        /// Go ahead even if no user could administer the server
        /// afterwards (`keycard admin grant --data` recovers from that).
        #[arg(long)]
        force: bool,
    },
    /// Show the current method and the methods the server offers.
    Show {
        #[command(flatten)]
        conn: ConnArgs,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            say_err!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say_err!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_path(text: &str) -> anyhow::Result<Path> {
    Path::parse(text).with_context(|| format!("bad path {text:?}"))
}

async fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Serve(args) => crate::serve::serve(*args).await,
        Command::Get { conn, path } => {
            let c = connect(&conn).await?;
            match c.get(&parse_path(&path)?).await? {
                Some(node) => say!("{}", render::show(&node.value)),
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
            say_err!(
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
            say_err!("removed {path} (tock {})", r.tock);
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
                    say!("{}\t{}", base.join(&item.path), render::show(&v));
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
                    Event::UpToDate => say_err!("-- up to date --"),
                    Event::Item(i) => match i.value {
                        Some(v) => say!("{}\t{}", base.join(&i.path), render::show(&v)),
                        None => say!("{}\t(deleted)", base.join(&i.path)),
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
        Command::Audit { conn, n, json } => audit(&conn, n, json).await,
        Command::Admin { cmd } => admin_cmd(cmd).await,
        Command::Keycard { cmd } => keycard(cmd).await,
        Command::Token { cmd } => token(cmd).await,
    }
}

/// What to say about an existing user that `user add` will not replace.
fn exists_error(method: &str, ident: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "user {ident} of method {method} exists: `keycard user passwd {ident}` changes its \
         password, `keycard user add {method} {ident} --replace` replaces it"
    )
}

/// The user name a method's user needs (`root`'s one user is `*`).
fn ident_for(method: &str, name: Option<&str>) -> anyhow::Result<String> {
    match (method, name) {
        ("root", None | Some("*")) => Ok("*".into()),
        ("root", Some(other)) => bail!("method root has one user, `*`, not {other:?}"),
        (_, Some(n)) => Ok(n.to_owned()),
        (m, None) => bail!("method {m} needs a user NAME"),
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
            replace,
        } => {
            let ident = ident_for(&method, name.as_deref())?;
            let c = connect(&conn).await?;
            // Asked before the password is: a refusal should not come
            // after typing one. The write itself is conditional too.
            let existed = admin::user_exists(&c, &method, &ident).await?;
            if existed == Some(true) && !replace {
                return Err(exists_error(&method, &ident));
            }
            let password = new_password(&method, new_password_file.as_ref())?;
            let m = ClientRegistry::make_with_password(&method, Some(&ident), password)?;
            if replace {
                c.set_user(m.as_ref()).await?;
            } else {
                match c.create_user(m.as_ref()).await {
                    Err(e) if e.code() == Some(ErrorCode::Conflict) => {
                        return Err(exists_error(&method, &ident))
                    }
                    other => other?,
                };
            }
            match (replace, existed) {
                (true, Some(true)) => say_err!("user {ident} of method {method} replaced"),
                (true, None) => say_err!("user {ident} of method {method} created or replaced"),
                _ => say_err!("user {ident} of method {method} created"),
            }
            if admin {
                let caps = ["read_auth", "write_auth", "manage_keycards"].map(str::to_owned);
                admin::grant(&c, &method, &ident, &caps).await?;
                say_err!("granted {}", caps.join(", "));
            }
            Ok(())
        }
        UserCmd::Passwd {
            conn,
            name,
            method,
            new_password_file,
        } => passwd(&conn, name, method, new_password_file).await,
        UserCmd::Ls { conn, method } => {
            let c = connect(&conn).await?;
            let msg = Msg::new()
                .with("action", "auth_list")
                .with("typ", method.as_str())
                .with("kind", "user");
            let mut s = c.stream(msg).await?;
            while let Some(ev) = s.next_raw().await {
                if let Some(ident) = ev?.get("ident").and_then(Value::as_str) {
                    say!("{ident}");
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
                true => say!("\nno logins yet"),
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
            say_err!("user {name} of method {method} deleted");
            Ok(())
        }
    }
}

/// `keycard user passwd`: sets a new password for NAME (default: the
/// session's user) of a method with passwords, replacing the record only
/// if it is the one just read (so it never creates a user deleted
/// meanwhile).
async fn passwd(
    conn: &ConnArgs,
    name: Option<String>,
    method: Option<String>,
    file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let c = connect(conn).await?;
    let me = c.request(Msg::new().with("action", "whoami")).await?;
    let my = |k: &str| me.get(k).and_then(Value::as_str).map(str::to_owned);
    let (name, own) = match (name, my("user")) {
        (Some(n), me) => {
            let own = me.as_deref() == Some(n.as_str());
            (n, own)
        }
        (None, Some(me)) => (me, true),
        (None, None) => bail!("this session is not logged in as anyone: say whose password (NAME)"),
    };
    let method = match method {
        Some(m) => m,
        None => match my("method") {
            Some(m) if own && ClientRegistry::needs_password(&m) => m,
            _ => password_method_of(&c, &name).await?,
        },
    };
    if !ClientRegistry::needs_password(&method) {
        bail!("method {method} has no password");
    }
    let chain = match admin::user_record(&c, &method, &name).await {
        Ok(Some(record)) => Some(record.get("chain").cloned().unwrap_or(Value::Nil)),
        Ok(None) => bail!("no user {name:?} of method {method}"),
        // Without read_auth one can still change one's own.
        Err(e) if own && e.code() == Some(ErrorCode::PermissionDenied) => None,
        Err(e) => return Err(e.into()),
    };
    let password = new_password(&method, file.as_ref())?;
    let m = ClientRegistry::make_with_password(&method, Some(&name), password)?;
    let set = match chain {
        Some(chain) => c.replace_user(m.as_ref(), chain).await,
        None => c.set_user(m.as_ref()).await,
    };
    match set {
        Err(e) if e.code() == Some(ErrorCode::Conflict) => {
            bail!(
                "user {name} of method {method} changed or was deleted meanwhile; nothing was set"
            )
        }
        other => other?,
    };
    say_err!("password of {name} ({method}) changed");
    Ok(())
}

/// The one method with a password that user `name` has (`user_show`).
async fn password_method_of(c: &Client, name: &str) -> anyhow::Result<String> {
    let methods: Vec<String> = user_methods(c, name)
        .await?
        .into_iter()
        .filter(|m| ClientRegistry::needs_password(m))
        .collect();
    match methods.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("user {name} has no password method"),
        several => bail!(
            "user {name} has several password methods ({}): say which with --method",
            several.join(", ")
        ),
    }
}

/// The methods user `name` has records of (`user_show`).
async fn user_methods(c: &Client, name: &str) -> anyhow::Result<Vec<String>> {
    let v = c
        .request(Msg::new().with("action", "user_show").with("ident", name))
        .await?;
    Ok(match v.get("methods") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|m| m.get("method").and_then(Value::as_str))
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    })
}

/// The warning for `root` accepted beside a method with passwords, if
/// `methods` (current first) has both: `root` needs no secret and grants
/// super-root, so it makes the passwords pointless.
fn root_warning(methods: &[&str]) -> Option<String> {
    let password = methods.iter().find(|m| ClientRegistry::needs_password(m))?;
    methods.contains(&"root").then(|| {
        format!(
            "warning: method root is accepted beside {password}: any client logs in as \
             super-root without a secret (run `keycard auth init {}` without --accept root \
             to stop it)",
            methods.first().copied().unwrap_or_default()
        )
    })
}

async fn auth(cmd: AuthCmd) -> anyhow::Result<()> {
    match cmd {
        AuthCmd::Init {
            conn,
            method,
            new_user,
            new_password_file,
            accept,
            force,
        } => {
            let c = connect(&conn).await?;
            match (method.as_str(), &new_user) {
                ("root", Some(_)) => {
                    bail!("method root has one user, `*`, who is super-root: drop --new-user")
                }
                ("root", None) => {
                    let m = ClientRegistry::make("root", None)?;
                    match c.create_user(m.as_ref()).await {
                        Ok(_) => say_err!("user * of method root created"),
                        Err(e) if e.code() == Some(ErrorCode::Conflict) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                (_, Some(name)) => {
                    // An existing user keeps its credential: `auth init`
                    // only makes it an administrator.
                    let created = match admin::user_exists(&c, &method, name).await? {
                        Some(true) => false,
                        _ => {
                            let password = new_password(&method, new_password_file.as_ref())?;
                            let m =
                                ClientRegistry::make_with_password(&method, Some(name), password)?;
                            match c.create_user(m.as_ref()).await {
                                Ok(_) => true,
                                Err(e) if e.code() == Some(ErrorCode::Conflict) => false,
                                Err(e) => return Err(e.into()),
                            }
                        }
                    };
                    match created {
                        true => say_err!("user {name} of method {method} created"),
                        false => {
                            say_err!("user {name} of method {method} exists (its password is kept)")
                        }
                    }
                    admin::grant(&c, &method, name, &["super_root".to_owned()]).await?;
                    say_err!("granted {name} super_root: it can administer the server");
                }
                (_, None) => {
                    let methods: Vec<&str> = std::iter::once(method.as_str())
                        .chain(accept.iter().map(String::as_str))
                        .collect();
                    if !admin::can_administer(&c, &methods).await? {
                        let why = format!(
                            "no user of {} holds super_root: once it is required nobody could \
                             change users, grants or methods",
                            methods.join(" or ")
                        );
                        if !force {
                            bail!(
                                "{why}. Give --new-user NAME (auth init makes it an \
                                 administrator), or --force if you know another way in \
                                 (`keycard admin grant --data DIR` on the stopped server)"
                            );
                        }
                        say_err!("warning: {why} (--force)");
                    }
                }
            }
            let accepted: Vec<Value> = accept.iter().map(|a| Value::from(a.as_str())).collect();
            c.request(
                Msg::new()
                    .with("action", "set_auth_typ")
                    .with("typ", method.as_str())
                    .with("accept", Value::Array(accepted)),
            )
            .await?;
            match method.as_str() {
                "root" => say_err!("method root is now required; the CLI logs in with it"),
                _ => say_err!("method {method} is now required; log in with --user NAME"),
            }
            let methods: Vec<&str> = std::iter::once(method.as_str())
                .chain(accept.iter().map(String::as_str))
                .collect();
            if let Some(w) = root_warning(&methods) {
                say_err!("{w}");
            }
            Ok(())
        }
        AuthCmd::Show { conn } => {
            let c = connect(&conn).await?;
            let mut out = String::new();
            match &c.greeting().auth {
                None => outln!(out, "no auth configured: the server is open"),
                Some(list) => {
                    match list.first().cloned().flatten() {
                        Some(m) => outln!(out, "current: {m}"),
                        None => outln!(out, "current: none (the server is open)"),
                    }
                    let others: Vec<_> = list.iter().skip(1).flatten().cloned().collect();
                    if !others.is_empty() {
                        outln!(out, "also accepted: {}", others.join(", "));
                    }
                    let methods: Vec<&str> = list.iter().flatten().map(String::as_str).collect();
                    if let Some(w) = root_warning(&methods) {
                        outln!(out, "{w}");
                    }
                }
            }
            emit(&out)
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
            say_err!("ACL {name}: {pattern} = {modes}");
            Ok(())
        }
        AclCmd::Ls { conn } => {
            let c = connect(&conn).await?;
            // An ACL is a name with entries below it: the names with any.
            let r = c
                .request(
                    Msg::new()
                        .with("action", "enum_internal")
                        .with_path("path", &Path::new(vec!["acl".into()]))
                        .with("empty", true),
                )
                .await?;
            let names = match r.get("result") {
                Some(Value::Array(names)) => names.iter().map(render::plain).collect(),
                _ => Vec::new(),
            };
            if names.is_empty() {
                say_err!("no ACLs");
            }
            emit(&names.iter().map(|n| format!("{n}\n")).collect::<String>())
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
                    say!(
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
            say_err!("user {user} of {method} bound to ACL {name}; it applies at their next login");
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
            let c = connect(&conn).await?;
            let name = match (&acl, &who) {
                (Some(a), _) => {
                    m.set("acl", a.as_str());
                    format!("ACL {a} does not grant")
                }
                (None, Some(u)) => {
                    m.set("user", u.as_str());
                    let method = match method {
                        Some(meth) => meth,
                        None => only_method_of(&c, u).await?,
                    };
                    m.set("method", method);
                    format!("user {u} is not granted")
                }
                (None, None) => bail!("say whose access to check"),
            };
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
                    say!(
                        "{}: entry {pattern} = {}{decided_by}",
                        if allowed { "allowed" } else { "denied" },
                        rule[1].as_str().unwrap_or("?")
                    );
                }
                _ if allowed && who.is_some() => {
                    say!("allowed: the user is bound to no ACL (full data access)")
                }
                _ => say!(
                    "{}: no entry matches",
                    if allowed { "allowed" } else { "denied" }
                ),
            }
            if !allowed {
                bail!("{name} '{mode}' on {path}");
            }
            Ok(())
        }
    }
}

/// The one method user `name` has; several need --method.
async fn only_method_of(c: &Client, name: &str) -> anyhow::Result<String> {
    let methods = match user_methods(c, name).await {
        Err(e)
            if e.downcast_ref::<keycard_client::ClientError>()
                .and_then(keycard_client::ClientError::code)
                == Some(ErrorCode::NotFound) =>
        {
            bail!("no user {name:?}")
        }
        other => other?,
    };
    match methods.as_slice() {
        [one] => Ok(one.clone()),
        several => bail!(
            "user {name} has several methods ({}): say which with --method",
            several.join(", ")
        ),
    }
}

/// `group ls`: each group and the ACL it binds.
async fn group_ls(conn: &ConnArgs) -> anyhow::Result<()> {
    let c = connect(conn).await?;
    let r = c
        .request(
            Msg::new()
                .with("action", "enum_internal")
                .with_path("path", &Path::new(vec!["group".into()]))
                .with("with_data", true),
        )
        .await?;
    let rows: Vec<Vec<String>> = match r.get("result") {
        Some(Value::Map(groups)) => groups
            .iter()
            .map(|(name, v)| {
                let acl = v.get("acl").map_or_else(|| "-".to_owned(), render::plain);
                vec![render::plain(name), acl]
            })
            .collect(),
        _ => Vec::new(),
    };
    if rows.is_empty() {
        say_err!("no groups");
        return Ok(());
    }
    emit(&render::table(&["GROUP", "ACL"], &rows))
}

/// `group show NAME`: the ACL it binds and its members (every user
/// record whose `groups` lists it).
async fn group_show(conn: &ConnArgs, name: &str) -> anyhow::Result<()> {
    let c = connect(conn).await?;
    let group = c
        .request(
            Msg::new()
                .with("action", "get_internal")
                .with_path("path", &Path::new(vec!["group".into(), name.into()])),
        )
        .await?;
    let Some(value) = group.get("value") else {
        bail!("no group {name:?}");
    };
    let mut out = String::new();
    outln!(out, "group: {name}");
    outln!(
        out,
        "ACL: {}",
        value
            .get("acl")
            .map_or_else(|| "-".to_owned(), render::plain)
    );
    // (nil, "auth", METHOD, "user", USER, "groups") → {groups: [...]}
    let mut s = c
        .stream(
            Msg::new()
                .with("action", "get_tree_internal")
                .with_path("path", &Path::new(vec!["auth".into()]))
                .with("min_depth", 4)
                .with("max_depth", 4)
                .with("long_path", true),
        )
        .await?;
    let mut members = Vec::new();
    while let Some(item) = s.next().await {
        let item = item?;
        let [keycard_proto::Elem::Str(method), _, user, keycard_proto::Elem::Str(aux)] =
            item.path.elems()
        else {
            continue;
        };
        let listed = match item.value.as_ref().and_then(|v| v.get("groups")) {
            Some(Value::Array(g)) => g.iter().any(|g| g.as_str() == Some(name)),
            _ => false,
        };
        if aux == "groups" && listed {
            members.push(format!("{} ({method})", render::plain(&user.to_value())));
        }
    }
    match members.is_empty() {
        true => outln!(out, "members: none"),
        false => {
            outln!(out, "members:");
            for m in members {
                outln!(out, "  {m}");
            }
        }
    }
    emit(&out)
}

async fn group(cmd: GroupCmd) -> anyhow::Result<()> {
    let (conn, path, value) = match cmd {
        GroupCmd::Ls { conn } => return group_ls(&conn).await,
        GroupCmd::Show { conn, name } => return group_show(&conn, &name).await,
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
    say_err!("done; it applies at the members' next login");
    Ok(())
}

/// `keycard audit`: the last `n` events of the audit log, as a table (or
/// as the log's JSON lines).
async fn audit(conn: &ConnArgs, n: usize, json: bool) -> anyhow::Result<()> {
    let c = connect(conn).await?;
    let r = c
        .request(Msg::new().with("action", "audit_tail").with("n", n))
        .await?;
    let lines: Vec<String> = match r.get("result") {
        Some(Value::Array(lines)) => lines
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    if json {
        return emit(&lines.iter().map(|l| format!("{l}\n")).collect::<String>());
    }
    if lines.is_empty() {
        say_err!("no events");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|line| {
            let e: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            let text = |k: &str| match &e[k] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".to_owned(),
                other => other.to_string(),
            };
            let time = e["time"].as_u64().map_or_else(
                || "-".to_owned(),
                |t| render::iso_time(t.saturating_mul(1000)),
            );
            // A login's client address; a change's author.
            let from = match e.get("source") {
                Some(_) => text("source"),
                None => text("by"),
            };
            vec![
                time,
                text("event"),
                text("outcome"),
                text("user"),
                text("method"),
                from,
            ]
        })
        .collect();
    emit(&render::table(
        &["TIME", "EVENT", "OUTCOME", "USER", "METHOD", "FROM/BY"],
        &rows,
    ))
}

async fn admin_cmd(cmd: AdminCmd) -> anyhow::Result<()> {
    match cmd {
        AdminCmd::Grant {
            conn,
            data,
            method,
            who,
            caps,
        } => {
            if let Some(dir) = data {
                let said = admin::grant_offline(&dir, method.as_deref(), &who, &caps).await?;
                say_err!("{said}");
                return Ok(());
            }
            let c = connect(&conn).await?;
            let method = match method {
                Some(m) => m,
                None => match c
                    .greeting()
                    .auth
                    .as_ref()
                    .and_then(|l| l.first().cloned().flatten())
                {
                    Some(current) => current,
                    None => bail!("no auth method is current: say which with --method"),
                },
            };
            if admin::user_exists(&c, &method, &who).await? == Some(false) {
                bail!("no user {who:?} of method {method}");
            }
            let holds = admin::grant(&c, &method, &who, &caps).await?;
            say_err!(
                "granted {who} ({method}) {}; {who} holds {} from their next login",
                caps.join(", "),
                holds.join(", ")
            );
            Ok(())
        }
    }
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
        say_err!("no keycards");
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
            say!("{}", token.expose());
            say_err!("token {id} for user {user}, expires {expires}");
            say_err!(
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
                say_err!("token {id} was already revoked");
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
        use crate::login::keycard_id_of;
        let id = "0123456789ABCDEF0123456789abcdef";
        assert_eq!(
            keycard_id_of(id).as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert!(keycard_id_of("0123").is_none());
        assert!(keycard_id_of(&"g".repeat(32)).is_none());
        // A token's id, and a whole token as `token create` printed it.
        let token = format!("kct_{id}_{}", "5".repeat(64));
        assert_eq!(
            keycard_id_of(&token).as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(
            keycard_id_of(&format!("kct_{id}")).as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert!(keycard_id_of(&format!("kct_{}_{}", "z".repeat(32), "5".repeat(64))).is_none());
        assert!(keycard_id_of("kct_").is_none());
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
