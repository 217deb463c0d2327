//! `keycard user`, `keycard auth` and `keycard admin`: users of a method
//! and their passwords, which method the server requires, and capability
//! grants.

use std::path::PathBuf;

use anyhow::bail;
use clap::Subcommand;
use keycard_auth::ClientRegistry;
use keycard_client::Client;
use keycard_proto::{ErrorCode, Msg, Value};

use super::emit;
use crate::admin;
use crate::login::{connect, new_password, ConnArgs};
use crate::render;

#[derive(Subcommand, Debug)]
pub(super) enum AdminCmd {
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
pub(super) enum UserCmd {
    /// Create a user of METHOD (an existing one only with --replace). For
    /// password methods the new password comes from --new-password-file,
    /// KEYCARD_NEW_PASSWORD or a prompt; only a verifier derived from it
    /// is sent. For totp the server makes the secret, and its
    /// provisioning URI (otpauth://…, for an authenticator app) is
    /// printed on stdout.
    Add {
        #[command(flatten)]
        conn: ConnArgs,
        /// The auth method: opaque, scram-sha-256 or password (with a
        /// password); root, _anon or _test (without); totp (a second
        /// factor).
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
    /// Show or set the further factors NAME must pass after logging in
    /// with one of its methods (DESIGN §2.2): `user factors alice totp`
    /// makes alice's password logins also ask for a totp code; no METHOD
    /// shows the list, `--clear` removes it. Each METHOD must be one NAME
    /// has a record of; the record the list belongs to must be a way in
    /// on its own (not a second factor such as totp). Needs a super-root
    /// session.
    Factors {
        #[command(flatten)]
        conn: ConnArgs,
        /// The user name.
        name: String,
        /// The methods to pass after the first, in order.
        factors: Vec<String>,
        /// The record (method) the list belongs to (default: NAME's only
        /// method that is no second factor).
        #[arg(long)]
        method: Option<String>,
        /// Remove the list: the first method is enough again.
        #[arg(long, conflicts_with = "factors")]
        clear: bool,
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
pub(super) enum AuthCmd {
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

/// What to say about an existing user that `user add` will not replace.
fn exists_error(method: &str, ident: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "user {ident} of method {method} exists: `keycard user passwd {ident}` changes its \
         password, `keycard user add {method} {ident} --replace` replaces it"
    )
}

/// The one user a method knows, if it knows one only (`root`'s `*`).
fn fixed_user(method: &str) -> Option<&'static str> {
    ClientRegistry::info(method).and_then(|i| i.fixed_user)
}

/// The user name a method's user needs (`root`'s one user is `*`).
fn ident_for(method: &str, name: Option<&str>) -> anyhow::Result<String> {
    match (fixed_user(method), name) {
        (Some(only), None) => Ok(only.into()),
        (Some(only), Some(n)) if n == only => Ok(only.into()),
        (Some(only), Some(other)) => {
            bail!("method {method} has one user, `{only}`, not {other:?}")
        }
        (None, Some(n)) => Ok(n.to_owned()),
        (None, None) => bail!("method {method} needs a user NAME"),
    }
}

pub(super) async fn user(cmd: UserCmd) -> anyhow::Result<()> {
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
            let reply = if replace {
                c.set_user(m.as_ref()).await?
            } else {
                match c.create_user(m.as_ref()).await {
                    Err(e) if e.code() == Some(ErrorCode::Conflict) => {
                        return Err(exists_error(&method, &ident))
                    }
                    other => other?,
                }
            };
            // A method whose server made the secret (TOTP) answers with
            // what the user's authenticator needs: printed once, on
            // stdout, for the operator to hand over (a QR code, a copy).
            if let Some(uri) = reply.get("uri").and_then(Value::as_str) {
                say!("{uri}");
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
        UserCmd::Factors {
            conn,
            name,
            factors,
            method,
            clear,
        } => user_factors(&conn, &name, factors, method, clear).await,
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
pub(super) async fn user_methods(c: &Client, name: &str) -> anyhow::Result<Vec<String>> {
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
    let root = methods.iter().find(|m| ClientRegistry::super_root(m))?;
    Some(format!(
        "warning: method {root} is accepted beside {password}: any client logs in as \
         super-root without a secret (run `keycard auth init {}` without --accept {root} \
         to stop it)",
        methods.first().copied().unwrap_or_default()
    ))
}

pub(super) async fn auth(cmd: AuthCmd) -> anyhow::Result<()> {
    match cmd {
        AuthCmd::Init {
            conn,
            method,
            new_user,
            new_password_file,
            accept,
            force,
        } => {
            // Refused before anything is created: a user made for it, or
            // its enrolment's URI, would be lost.
            let alone = std::iter::once(&method).chain(&accept);
            if let Some(m) = alone
                .into_iter()
                .find(|m| ClientRegistry::info(m).is_some_and(|i| i.second_factor))
            {
                bail!("method {m} is a second factor: it cannot be a way in on its own");
            }
            let c = connect(&conn).await?;
            let root = ClientRegistry::super_root(&method);
            match (fixed_user(&method).filter(|_| root), &new_user) {
                (Some(only), Some(_)) => {
                    bail!("method {method} has one user, `{only}`, who is super-root: drop --new-user")
                }
                (Some(only), None) => {
                    let m = ClientRegistry::make(&method, None)?;
                    match c.create_user(m.as_ref()).await {
                        Ok(_) => say_err!("user {only} of method {method} created"),
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
            match root {
                true => say_err!("method {method} is now required; the CLI logs in with it"),
                false => say_err!("method {method} is now required; log in with --user NAME"),
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

pub(super) async fn admin_cmd(cmd: AdminCmd) -> anyhow::Result<()> {
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

/// At most this many factors in a list (the server's bound).
const MAX_FACTORS: usize = 8;

/// `user factors`: shows or sets `name`'s factor list, the aux node
/// `(…record, "factors")` of its record of the first method, through the
/// reserved-tree actions (super-root only, who outranks every user).
async fn user_factors(
    conn: &ConnArgs,
    name: &str,
    factors: Vec<String>,
    method: Option<String>,
    clear: bool,
) -> anyhow::Result<()> {
    let c = connect(conn).await?;
    let shown = c
        .request(Msg::new().with("action", "user_show").with("ident", name))
        .await?;
    let has: Vec<String> = match shown.get("methods") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|m| m.get("method").and_then(Value::as_str))
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    let q = |t: &str| format!("{t:?}");
    let first = match method {
        Some(m) => m,
        None => {
            let ways: Vec<&String> = has
                .iter()
                .filter(|m| ClientRegistry::info(m).is_some_and(|i| !i.second_factor))
                .collect();
            match ways.as_slice() {
                [one] => (*one).clone(),
                [] => bail!("user {} has no method to log in with first", q(name)),
                _ => bail!(
                    "user {} logs in with several methods ({}): give --method",
                    q(name),
                    ways.iter()
                        .map(|m| m.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    if !has.contains(&first) {
        bail!("user {} has no {} record", q(name), q(&first));
    }
    if ClientRegistry::info(&first).is_none_or(|i| i.second_factor) {
        bail!(
            "{} is a second factor: it cannot be the way in (the list belongs to the first method)",
            q(&first)
        );
    }
    let at = keycard_proto::Path::new(vec![
        "auth".into(),
        first.as_str().into(),
        "user".into(),
        name.into(),
        "factors".into(),
    ]);
    if factors.is_empty() && !clear {
        let v = c
            .request(
                Msg::new()
                    .with("action", "get_internal")
                    .with_path("path", &at),
            )
            .await?;
        let list: Vec<&str> = match v.get("value").and_then(|v| v.get("factors")) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        match list.is_empty() {
            true => say!("{first} alone"),
            false => say!("{first} then {}", list.join(", ")),
        }
        return Ok(());
    }
    if clear {
        c.request(
            Msg::new()
                .with("action", "delete_internal")
                .with_path("path", &at),
        )
        .await?;
        say_err!("user {} logs in with {first} alone", q(name));
        return Ok(());
    }
    if factors.len() > MAX_FACTORS {
        bail!("at most {MAX_FACTORS} factors");
    }
    for (i, f) in factors.iter().enumerate() {
        if ClientRegistry::info(f).is_none() {
            bail!("unknown auth method {}", q(f));
        }
        if *f == first || factors[..i].contains(f) {
            bail!("{} is named twice", q(f));
        }
        if !has.contains(f) {
            bail!("user {} has no {} record: create it first", q(name), q(f));
        }
    }
    let list = Value::Array(factors.iter().map(|f| Value::from(f.as_str())).collect());
    c.request(
        Msg::new()
            .with("action", "set_internal")
            .with_path("path", &at)
            .with("value", Msg::new().with("factors", list)),
    )
    .await?;
    say_err!(
        "user {} logs in with {first} then {}",
        q(name),
        factors.join(", ")
    );
    Ok(())
}
