//! Single-node data actions: get_value, set_value, delete_value, plus
//! get_tock, root and stop.

use keycard_proto::Path;
use keycard_proto::{Msg, Value};
use keycard_store::{Cond, Op};

use super::{
    authorize, authorize_in, chain, condition, data_path, data_path_in, entry_msg, flag, opt_usize,
    require_login, require_super_root, session_acl,
};
use crate::conn::{stop_task, Responder, Session};
use crate::error::{ApiError, ApiResult};
use crate::state::ServerState;
use keycard_auth::acl::Mode;

pub(super) async fn get_value(msg: &Value, r: &mut Responder) -> ApiResult {
    let state = r.conn().state.clone();
    let reply = get_in(&state, &require_login(r)?, msg).await?;
    r.reply(reply).await;
    Ok(())
}

pub(super) async fn set_value(msg: &Value, r: &mut Responder) -> ApiResult {
    let state = r.conn().state.clone();
    let reply = set_in(&state, &require_login(r)?, msg).await?;
    r.reply(reply).await;
    Ok(())
}

pub(super) async fn delete_value(msg: &Value, r: &mut Responder) -> ApiResult {
    let state = r.conn().state.clone();
    let reply = delete_in(&state, &require_login(r)?, msg).await?;
    r.reply(reply).await;
    Ok(())
}

/// `get_value` for a session (checked with `check_login`), whatever
/// carries it.
pub(crate) async fn get_in(state: &ServerState, session: &Session, msg: &Value) -> ApiResult<Msg> {
    let path = data_path_in(session, msg)?;
    authorize_in(state, session, &path, Mode::Read).await?;
    let nchain = opt_usize(msg, "nchain")?.unwrap_or(0);
    let entry = state.store.get(&path).await?;
    Ok(entry_msg(state, entry.as_ref(), nchain))
}

/// `set_value` for a session.
pub(crate) async fn set_in(state: &ServerState, session: &Session, msg: &Value) -> ApiResult<Msg> {
    let path = data_path_in(session, msg)?;
    let Some(value) = msg.get("value") else {
        return Err(ApiError::bad(
            "set_value needs a 'value' (use delete_value to clear one)",
        ));
    };
    if session_acl(state, session).await?.is_some() {
        // DistKV's W: overwrite needs w, a new value needs c.
        let mode = match state.store.get(&path).await? {
            Some(_) => Mode::Write,
            None => Mode::Create,
        };
        authorize_in(state, session, &path, mode).await?;
    }
    write_value(state, msg, path, Some(value.clone())).await
}

/// `delete_value` for a session.
pub(crate) async fn delete_in(
    state: &ServerState,
    session: &Session,
    msg: &Value,
) -> ApiResult<Msg> {
    let path = data_path_in(session, msg)?;
    if msg.get("value").is_some() {
        return Err(ApiError::bad("delete_value takes no 'value'"));
    }
    authorize_in(state, session, &path, Mode::Delete).await?;
    write_value(state, msg, path, None).await
}

/// Sets (or with `None` deletes) one node, honouring DistKV's `prev`,
/// `chain` and `idem`, and builds DistKV's reply.
pub(crate) async fn write_value(
    state: &ServerState,
    msg: &Value,
    path: Path,
    value: Option<Value>,
) -> ApiResult<Msg> {
    let cond = condition(state, msg)?;
    // DistKV sends `prev` back only when the client gave no condition.
    let send_prev = cond == Cond::Any;
    let nchain = opt_usize(msg, "nchain")?.unwrap_or(1);
    let op = match &value {
        Some(v) => Op::Put {
            path,
            value: v.clone(),
            cond,
            idem: flag(msg, "idem"),
        },
        None => Op::Delete { path, cond },
    };
    let out = state.store.write(vec![op]).await?.pop().ok_or_else(|| {
        ApiError::new(
            keycard_proto::ErrorCode::Internal,
            "store returned no outcome",
        )
    })?;
    let changed = out.changed && out.prev != value;
    let mut m = Msg::new().with("changed", changed).with("tock", out.tock.0);
    if send_prev {
        if let Some(prev) = out.prev {
            m.set("prev", prev);
        }
    }
    if nchain > 0 {
        m.set("chain", chain(state, out.tock));
    }
    Ok(m)
}

pub(super) async fn get_tock(r: &mut Responder) -> ApiResult {
    let tock = r.conn().state.store.tock().0;
    r.reply(Msg::new().with("tock", tock)).await;
    Ok(())
}

/// Moves the connection's root down to `path`; from then on every data
/// path is relative to it and nothing outside it can be named.
pub(super) async fn root(msg: &Value, r: &mut Responder) -> ApiResult {
    let path = data_path(msg, r)?;
    authorize(r, &path, Mode::Access).await?;
    let state = r.conn().state.clone();
    let entry = state.store.get(&path).await?;
    r.conn().update_session(|s| s.root = path.clone());
    tracing::debug!(conn = r.conn().id, root = ?path.to_string(), "connection re-rooted");
    let reply = entry_msg(
        &state,
        entry.as_ref(),
        opt_usize(msg, "nchain")?.unwrap_or(0),
    )
    .with("path", Value::Array(Vec::new()));
    r.reply(reply).await;
    Ok(())
}

/// Cancels a stream of this connection (`task` = its seq).
pub(super) async fn stop(msg: &Value, r: &mut Responder) -> ApiResult {
    require_login(r)?;
    let task = msg
        .get("task")
        .and_then(Value::as_i64)
        .ok_or_else(|| ApiError::bad("stop needs 'task', the seq of the stream to stop"))?;
    if task == r.seq() {
        return Err(ApiError::bad("a stop request cannot stop itself"));
    }
    let conn = r.conn().clone();
    // DistKV answers the stop first, then ends the stopped stream.
    let found = stop_task(&conn, task);
    r.reply(Msg::new().with("result", found.is_some())).await;
    if let Some(end) = found {
        end.await;
    }
    Ok(())
}

/// What `path` allows: `{access: bool}` for `mode` (a letter, default
/// `x`), and the deciding entry `{rule: [pattern, modes]}` when one
/// matched. Checks the caller's own ACL; a super-root may name another
/// ACL with `acl`.
pub(super) async fn test_acl(msg: &Value, r: &mut Responder) -> ApiResult {
    let path = data_path(msg, r)?;
    let mode = match msg.get("mode") {
        None | Some(Value::Nil) => Mode::Access,
        Some(Value::Str(s)) => {
            let mut chars = s.chars();
            match (chars.next().and_then(Mode::from_letter), chars.next()) {
                (Some(m), None) => m,
                _ => {
                    return Err(ApiError::bad(
                        "'mode' must be one mode letter of a r w c d x e n",
                    ))
                }
            }
        }
        Some(_) => return Err(ApiError::bad("'mode' must be a string")),
    };
    let state = r.conn().state.clone();
    let session = r.conn().session();
    // Named ACLs and users are those of the session's domain.
    let mut acl_base = session.root.clone();
    let names = match (msg.get("acl"), msg.get("user")) {
        (None | Some(Value::Nil), None | Some(Value::Nil)) => session.user.and_then(|u| {
            acl_base = u.domain.clone();
            u.acls.clone()
        }),
        (Some(Value::Str(name)), None | Some(Value::Nil)) => {
            require_super_root(r)?;
            Some(vec![name.clone()])
        }
        (None | Some(Value::Nil), Some(Value::Str(user))) => {
            // What USER's ACLs (its own and its groups') allow.
            let session = super::require_cap(r, crate::conn::Capability::ReadAuth)?;
            let method = match msg.get("method") {
                Some(Value::Str(m)) => m.clone(),
                None | Some(Value::Nil) => state.auth().current.ok_or_else(|| {
                    ApiError::bad("no current auth method; say which with 'method'")
                })?,
                Some(_) => return Err(ApiError::bad("'method' must be a string")),
            };
            let at = session
                .root
                .join(&crate::state::record_path(&method, "user", user));
            if state.store.get(&at).await?.is_none() {
                return Err(ApiError::new(
                    keycard_proto::ErrorCode::NotFound,
                    format!("no user {user:?} of method {method}"),
                ));
            }
            crate::acl::bound_acls(state.store.as_ref(), &session.root, &at).await?
        }
        _ => {
            return Err(ApiError::bad(
                "'acl' (an ACL name) or 'user' (a user name), not both",
            ))
        }
    };
    let mut reply = Msg::new();
    match names {
        None => reply.set("access", true),
        Some(names) => {
            let grants = super::grants(&state, &acl_base, names).await?;
            let have = crate::acl::existing_depth(state.store.as_ref(), &path).await?;
            let (ok, rule) = match grants.decide(path.elems(), have, mode) {
                Ok(rule) => (true, rule),
                Err((acl, d)) => (false, d.rule.map(|(p, m)| (acl, p, m))),
            };
            reply.set("access", ok);
            if let Some((acl, pattern, modes)) = rule {
                reply.set(
                    "rule",
                    Value::Array(vec![
                        Path::new(pattern).to_value(),
                        Value::from(modes.to_string()),
                    ]),
                );
                reply.set("acl", acl);
            }
        }
    }
    r.reply(reply).await;
    Ok(())
}
