//! `keycard acl` and `keycard group`: ACL entries, bindings and checks,
//! and the groups that bind ACLs to their members.

use anyhow::bail;
use clap::Subcommand;
use keycard_client::Client;
use keycard_proto::{ErrorCode, Msg, Path, Value};

use super::users::user_methods;
use super::{emit, parse_path};
use crate::login::{connect, ConnArgs};
use crate::render;

#[derive(Subcommand, Debug)]
pub(super) enum AclCmd {
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
pub(super) enum GroupCmd {
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

pub(super) async fn acl(cmd: AclCmd) -> anyhow::Result<()> {
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

pub(super) async fn group(cmd: GroupCmd) -> anyhow::Result<()> {
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
