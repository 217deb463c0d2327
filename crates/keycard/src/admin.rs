//! Who can administer: granting capabilities (over a connection, or
//! offline on a stopped server's data directory — the way back into a
//! server nobody can administer), and the check `auth init` makes before
//! closing an open server.

use std::path::Path as FsPath;

use anyhow::{bail, Context};
use keycard_auth::ClientRegistry;
use keycard_client::{Client, ClientError};
use keycard_proto::{Elem, ErrorCode, Msg, Path, Value};
use keycard_store::{Cond, Op, RedbOptions, RedbStore, Store, StoreError};

/// The capabilities, in the order they are listed.
pub(crate) const CAPS: [&str; 4] = ["read_auth", "write_auth", "manage_keycards", "super_root"];

/// A capability name as given on the command line.
pub(crate) fn parse_cap(text: &str) -> Result<String, String> {
    match CAPS.contains(&text) {
        true => Ok(text.to_owned()),
        false => Err(format!("capabilities are {}", CAPS.join(", "))),
    }
}

/// `("auth", METHOD, "user", NAME, "caps")`, below the reserved root.
fn caps_path(method: &str, user: &str) -> Path {
    Path::new(vec![
        "auth".into(),
        method.into(),
        "user".into(),
        user.into(),
        "caps".into(),
    ])
}

/// The caps a `{caps: [...]}` node lists.
fn caps_in(value: Option<&Value>) -> Vec<String> {
    match value.and_then(|v| v.get("caps")) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// `have` and `more`, each once, known ones in [`CAPS`] order first.
fn merged(have: &[String], more: &[String]) -> Vec<String> {
    let mut out: Vec<String> = CAPS
        .iter()
        .filter(|c| have.iter().chain(more).any(|h| h == *c))
        .map(|c| (*c).to_owned())
        .collect();
    for other in have {
        if !out.contains(other) {
            out.push(other.clone());
        }
    }
    out
}

fn caps_value(caps: &[String]) -> Value {
    Msg::new()
        .with(
            "caps",
            Value::Array(caps.iter().map(|c| Value::from(c.as_str())).collect()),
        )
        .into_value()
}

/// Adds `caps` to what USER of METHOD holds, over a super-root connection:
/// a write conditional on the node being as read, so a grant made
/// meanwhile is kept, not overwritten. Returns the user's caps.
pub(crate) async fn grant(
    c: &Client,
    method: &str,
    user: &str,
    caps: &[String],
) -> anyhow::Result<Vec<String>> {
    let path = caps_path(method, user);
    for _ in 0..5 {
        let now = c
            .request(
                Msg::new()
                    .with("action", "get_internal")
                    .with_path("path", &path)
                    .with("nchain", 1),
            )
            .await
            .context("granting capabilities needs a super-root session")?;
        let have = caps_in(now.get("value"));
        let want = merged(&have, caps);
        if want == have {
            return Ok(want);
        }
        let write = Msg::new()
            .with("action", "set_internal")
            .with_path("path", &path)
            .with("value", caps_value(&want))
            .with("chain", now.get("chain").cloned().unwrap_or(Value::Nil));
        match c.write(write).await {
            Ok(_) => return Ok(want),
            Err(e) if e.code() == Some(ErrorCode::Conflict) => continue,
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context("granting capabilities needs a super-root session"))
            }
        }
    }
    bail!("the capabilities of {user} kept changing; try again")
}

/// Whether a user of one of `methods` can administer once they are the
/// only way in: `root`'s user is super-root, others must hold
/// `super_root`.
pub(crate) async fn can_administer(c: &Client, methods: &[&str]) -> anyhow::Result<bool> {
    for method in methods {
        if ClientRegistry::super_root(method) {
            return Ok(true);
        }
        let users = Path::new(vec!["auth".into(), (*method).into(), "user".into()]);
        let mut s = c
            .stream(
                Msg::new()
                    .with("action", "get_tree_internal")
                    .with_path("path", &users)
                    .with("min_depth", 2)
                    .with("max_depth", 2)
                    .with("long_path", true),
            )
            .await?;
        while let Some(item) = s.next().await {
            let item = item?;
            let is_caps = matches!(item.path.elems(), [_, Elem::Str(aux)] if aux == "caps");
            if is_caps
                && caps_in(item.value.as_ref())
                    .iter()
                    .any(|c| c == "super_root")
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Whether USER of METHOD exists, if the session may see (`None`: it may
/// not, and a conditional write will tell).
pub(crate) async fn user_exists(
    c: &Client,
    method: &str,
    user: &str,
) -> anyhow::Result<Option<bool>> {
    match user_record(c, method, user).await {
        Ok(found) => Ok(Some(found.is_some())),
        Err(e) if e.code() == Some(ErrorCode::PermissionDenied) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// USER of METHOD's record as `auth_list` shows it (with its `chain`, for
/// a write conditional on it), or `None` if there is no such user.
pub(crate) async fn user_record(
    c: &Client,
    method: &str,
    user: &str,
) -> Result<Option<Value>, ClientError> {
    let found = c
        .request(
            Msg::new()
                .with("action", "auth_list")
                .with("typ", method)
                .with("kind", "user")
                .with("ident", user)
                .with("nchain", 1),
        )
        .await;
    match found {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The store in the data directory `data` of a stopped server (the
/// store's lock refuses it while the server runs), opened with `opts`.
pub(crate) async fn open_offline(data: &FsPath, opts: RedbOptions) -> anyhow::Result<RedbStore> {
    let file = data.join(keycard_server::STORE_FILE);
    // Opening creates a missing store: a mistyped directory must not get
    // an empty one.
    if !file.is_file() {
        bail!(
            "no store in {}: {} does not exist (give the server's --data directory)",
            data.display(),
            file.display()
        );
    }
    let opened = {
        let file = file.clone();
        tokio::task::spawn_blocking(move || RedbStore::open(&file, opts))
            .await
            .context("cannot open the store")?
    };
    match opened {
        Ok(s) => Ok(s),
        Err(StoreError::Backend(e)) if e.to_lowercase().contains("already open") => bail!(
            "{} is in use: stop the server first (a running server holds the store's lock; \
             this command works on a stopped server's data directory)",
            file.display()
        ),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot open {}", file.display()))),
    }
}

/// `keycard admin grant --data DIR`: adds `caps` to USER of `method` (the
/// current one by default) in the store of a stopped server. The store's
/// lock refuses it while the server runs. Appends an event to the audit
/// log at its default place (DIR/audit.log) when that exists. Returns
/// what to tell the operator.
pub(crate) async fn grant_offline(
    data: &FsPath,
    method: Option<&str>,
    user: &str,
    caps: &[String],
) -> anyhow::Result<String> {
    let store = open_offline(data, RedbOptions::default()).await?;
    let auth = Path::new(vec![Elem::Nil, "auth".into()]);
    let method = match method {
        Some(m) => m.to_owned(),
        None => match store
            .get(&auth)
            .await?
            .as_ref()
            .and_then(|e| e.value.get("current"))
        {
            Some(Value::Str(m)) => m.clone(),
            _ => bail!("no auth method is current (the server is open): say which with --method"),
        },
    };
    let record = auth.child(method.as_str()).child("user").child(user);
    if store.get(&record).await?.is_none() {
        bail!("no user {user:?} of method {method} in {}", data.display());
    }
    let at = record.child("caps");
    let now = store.get(&at).await?;
    let have = caps_in(now.as_ref().map(|e| &e.value));
    let want = merged(&have, caps);
    if want != have {
        let cond = match &now {
            Some(e) => Cond::TockIs(e.tock),
            None => Cond::Absent,
        };
        store
            .write(vec![Op::Put {
                path: at,
                value: caps_value(&want),
                cond,
                idem: false,
            }])
            .await
            .context("cannot write the grant")?;
    }
    let audit = data.join("audit.log");
    if audit.is_file() {
        let event = serde_json::json!({
            "time": crate::render::now_ms() / 1000,
            "event": "capabilities granted offline",
            "user": user,
            "method": method,
            "caps": caps,
            "by": "keycard admin grant",
        });
        append_line(&audit, &event.to_string())
            .with_context(|| format!("cannot append to {}", audit.display()))?;
    }
    Ok(format!(
        "granted {user} ({method}) {}; {user} holds {} from their next login",
        caps.join(", "),
        want.join(", ")
    ))
}

/// Appends `line` and a newline to the existing file `path`, durably.
fn append_line(path: &FsPath, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(format!("{line}\n").as_bytes())?;
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use super::merged;

    #[test]
    fn grants_add_to_what_is_held() {
        let s = |v: &[&str]| v.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            merged(&s(&["write_auth"]), &s(&["super_root", "read_auth"])),
            s(&["read_auth", "write_auth", "super_root"])
        );
        assert_eq!(
            merged(&s(&["super_root"]), &s(&["super_root"])),
            s(&["super_root"])
        );
        // A name this binary does not know is kept, not dropped.
        assert_eq!(
            merged(&s(&["future_cap"]), &s(&["read_auth"])),
            s(&["read_auth", "future_cap"])
        );
    }
}
