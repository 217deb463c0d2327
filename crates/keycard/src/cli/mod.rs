//! Command-line parsing and dispatch: the clap tree (each command group's
//! subcommands live in its module) and the output macros every command
//! writes through.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use keycard_proto::Path;

use crate::login::ConnArgs;
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
        $crate::render::out_line(&format!($($arg)*))
    };
}

/// A line to stderr, through `render::terminal`.
macro_rules! say_err {
    ($($arg:tt)*) => {
        $crate::render::err_line(&format!($($arg)*))
    };
}

mod acl;
mod audit;
mod cert;
mod data;
mod dump;
mod keycards;
mod seal;
mod users;

use acl::{AclCmd, GroupCmd};
use keycards::{KeycardCmd, TokenCmd};
use users::{AdminCmd, AuthCmd, UserCmd};

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
/// `keycard --version`: the release and the git commit built from.
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("KEYCARD_COMMIT"),
    ")"
);

#[derive(Parser, Debug)]
#[command(name = "keycard", version = VERSION, propagate_version = true)]
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
    /// for '-'; the `--throttle-…`, `--keycards-…`, `--tls-…` and
    /// `--seal-…` ones are the fields of its `[throttle]`, `[keycards]`,
    /// `[tls]` and `[seal]` tables (`--throttle-free` is `free` in
    /// `[throttle]`).
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
    /// Make the running server read its TLS certificate and key again, as
    /// SIGHUP does (needs super_root). A file that does not load changes
    /// nothing; the error says why.
    Reload {
        #[command(flatten)]
        conn: ConnArgs,
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
    /// Certificates for trying TLS out (docs/TLS.md).
    Cert {
        #[command(subcommand)]
        cmd: cert::CertCmd,
    },
    /// Print a shell completion script for keycard (bash, zsh, fish,
    /// elvish or powershell), e.g. `keycard completions bash >
    /// /etc/bash_completion.d/keycard`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print keycard's manual page (roff), e.g. `keycard man | man -l -`.
    Man,
    /// The seal key that keeps secrets sealed at rest (docs/SEALING.md).
    Seal {
        #[command(subcommand)]
        cmd: seal::SealCmd,
    },
    /// Write a consistent snapshot of the whole tree, from the running
    /// server, to FILE (needs super_root): data, users and their records
    /// (still sealed when the store is), tocks; never the seal key.
    Dump {
        #[command(flatten)]
        conn: ConnArgs,
        /// The file to write (never replaced).
        file: std::path::PathBuf,
    },
    /// Restore a dump into an empty data directory (the server stopped),
    /// or with --store into an empty PostgreSQL schema, checking the
    /// whole file first: a damaged or truncated one writes nothing. A
    /// dump whose secrets are sealed needs its seal key (--seal-key-file,
    /// or KEYCARD_SEAL_KEY).
    Restore {
        /// The dump file.
        file: std::path::PathBuf,
        /// The data directory to restore into (must hold no store).
        #[arg(long, default_value = "keycard-data")]
        data: std::path::PathBuf,
        /// Restore into this PostgreSQL store instead
        /// (postgres://USER@HOST:PORT/DB?schema=…; its schema must hold no
        /// keycard data).
        #[arg(long, value_name = "URL")]
        store: Option<String>,
        /// The seal key file.
        #[arg(long, value_name = "FILE")]
        seal_key_file: Option<std::path::PathBuf>,
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

/// A path in the CLI's text form.
fn parse_path(text: &str) -> anyhow::Result<Path> {
    Path::parse(text).with_context(|| format!("bad path {text:?}"))
}

async fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Serve(args) => crate::serve::serve(*args).await,
        Command::Get { conn, path } => data::get(&conn, &path).await,
        Command::Set {
            conn,
            path,
            value,
            json,
            hex,
            new,
        } => data::set(&conn, &path, value, data::SetHow { json, hex, new }).await,
        Command::Rm { conn, path } => data::rm(&conn, &path).await,
        Command::Ls {
            conn,
            path,
            max_depth,
            min_depth,
        } => data::ls(&conn, &path, min_depth, max_depth).await,
        Command::Watch { conn, path, fetch } => data::watch(&conn, &path, fetch).await,
        Command::User { cmd } => users::user(cmd).await,
        Command::Auth { cmd } => users::auth(cmd).await,
        Command::Acl { cmd } => acl::acl(cmd).await,
        Command::Group { cmd } => acl::group(cmd).await,
        Command::Reload { conn } => audit::reload(&conn).await,
        Command::Whoami { conn } => keycards::whoami(&conn).await,
        Command::Audit { conn, n, json } => audit::audit(&conn, n, json).await,
        Command::Admin { cmd } => users::admin_cmd(cmd).await,
        Command::Keycard { cmd } => keycards::keycard(cmd).await,
        Command::Token { cmd } => keycards::token(cmd).await,
        Command::Cert { cmd } => cert::cert(cmd),
        Command::Seal { cmd } => seal::seal(cmd).await,
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            let mut cmd = Cli::command();
            // Into memory first: the generator panics on a failed write
            // (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "keycard", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)
                .context("cannot write the completion script")
        }
        Command::Man => {
            use clap::CommandFactory as _;
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .context("cannot write the manual page")
        }
        Command::Dump { conn, file } => dump::dump(&conn, &file).await,
        Command::Restore {
            file,
            data,
            store,
            seal_key_file,
        } => {
            let key = seal::optional_key(seal_key_file.as_deref())?;
            match store {
                Some(url) => dump::restore_pg(&file, &url, key).await,
                None => dump::restore(&file, &data, key).await,
            }
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
