//! Command-line parsing and the commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use keycard_auth::{ClientRegistry, Password};
use keycard_client::{Client, Event};
use keycard_proto::{Msg, Path, Value};
use keycard_server::{Config, Server};

use crate::render;

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
    /// Whether ACL NAME grants MODE on PATH, and the entry that decided.
    Check {
        #[command(flatten)]
        conn: ConnArgs,
        /// The ACL's name.
        name: String,
        /// The path.
        path: String,
        /// One mode letter.
        mode: String,
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
    /// Delete a user of METHOD.
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

/// How the client commands reach and log in to the server.
#[derive(Args, Debug, Clone)]
struct ConnArgs {
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
    /// Log in as this user (not needed for `root`).
    #[arg(long, short = 'u', env = "KEYCARD_USER")]
    user: Option<String>,
    /// Read the password from this file (its first line). Without it the
    /// password comes from KEYCARD_PASSWORD, else a prompt (no echo).
    #[arg(long, env = "KEYCARD_PASSWORD_FILE")]
    password_file: Option<PathBuf>,
}

/// The login password: --password-file, KEYCARD_PASSWORD, or a prompt.
fn login_password(args: &ConnArgs) -> anyhow::Result<Password> {
    read_password(
        args.password_file.as_ref(),
        "KEYCARD_PASSWORD",
        "password: ",
        false,
    )
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
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).context("bad --log filter")?,
        )
        .with_writer(std::io::stderr)
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

/// Connects and, when the server requires it, logs in.
async fn connect(args: &ConnArgs) -> anyhow::Result<Client> {
    let c = Client::connect(args.server.as_str())
        .await
        .with_context(|| format!("cannot reach keycard at {}", args.server))?;
    // An explicit --auth is tried as given. Otherwise, if the server asks
    // for a login, the strongest method it accepts that we can use: one
    // needing a user name only with --user.
    let method = match (&args.auth, c.greeting().auth.as_ref()) {
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
                Err(e) if e.code() == Some(keycard_proto::ErrorCode::Conflict) => {
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
            name,
            path,
            mode,
        } => {
            let c = connect(&conn).await?;
            let r = c
                .request(
                    Msg::new()
                        .with("action", "test_acl")
                        .with_path("path", &parse_path(&path)?)
                        .with("mode", mode.as_str())
                        .with("acl", name.as_str()),
                )
                .await?;
            let allowed = r.get("access").is_some_and(Value::truthy);
            match r.get("rule") {
                Some(Value::Array(rule)) if rule.len() == 2 => {
                    let pattern = Path::from_value(&rule[0])
                        .map(|p| p.to_string())
                        .unwrap_or_default();
                    println!(
                        "{}: entry {pattern} = {}",
                        if allowed { "allowed" } else { "denied" },
                        rule[1].as_str().unwrap_or("?")
                    );
                }
                _ => println!(
                    "{}: no entry matches",
                    if allowed { "allowed" } else { "denied" }
                ),
            }
            if !allowed {
                bail!("ACL {name} does not grant '{mode}' on {path}");
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
}
