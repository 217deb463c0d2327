//! Single-node data actions: get_value, set_value, delete_value, plus
//! get_tock, root and stop.

use keycard_proto::Path;
use keycard_proto::{Msg, Value};
use keycard_store::{Cond, Op, Outcome};

use super::{
    authorize_reading, chain, condition, data_path, entry_msg, flag, opt_usize, path_field,
    require_cap, require_login,
};
use crate::caller::Capability;
use crate::conn::{stop_task, Responder};
use crate::core;
use crate::core::acl::Whose;
use crate::error::{ApiError, ApiResult};
use crate::state::ServerState;
use keycard_auth::acl::Mode;

pub(super) async fn get_value(msg: &Value, r: &mut Responder) -> ApiResult {
    let state = r.conn().state.clone();
    let session = require_login(r)?;
    let conn = r.conn().clone();
    // A value's size is known once it is read: room for the largest (one
    // message) is taken from the connection's budget first, so a client
    // pipelining reads it never takes in holds no more than its budget.
    let held = conn.reserve(state.config.max_message).await;
    let path = core::access::data_path(&session, &path_field(msg, "path")?)?;
    let entry = core::data::get(&state, &session, &path).await?;
    let nchain = opt_usize(msg, "nchain")?.unwrap_or(0);
    r.reply(entry_msg(&state, entry, nchain)).await;
    drop(held);
    Ok(())
}

pub(super) async fn set_value(msg: &Value, r: &mut Responder) -> ApiResult {
    let state = r.conn().state.clone();
    let session = require_login(r)?;
    let path = core::access::data_path(&session, &path_field(msg, "path")?)?;
    let Some(value) = msg.get("value") else {
        return Err(ApiError::bad(
            "set_value needs a 'value' (use delete_value to clear one)",
        ));
    };
    let cond = condition(&state, msg)?;
    let nchain = opt_usize(msg, "nchain")?.unwrap_or(1);
    let written = core::data::set(
        &state,
        &session,
        &path,
        value.clone(),
        cond,
        flag(msg, "idem"),
    )
    .await?;
    r.reply(written_msg(&state, &written, nchain)).await;
    Ok(())
}

pub(super) async fn delete_value(msg: &Value, r: &mut Responder) -> ApiResult {
    let state = r.conn().state.clone();
    let session = require_login(r)?;
    let path = core::access::data_path(&session, &path_field(msg, "path")?)?;
    if msg.get("value").is_some() {
        return Err(ApiError::bad("delete_value takes no 'value'"));
    }
    let (cond, nchain) = match (condition(&state, msg), opt_usize(msg, "nchain")) {
        (Ok(cond), Ok(nchain)) => (cond, nchain.unwrap_or(1)),
        // The caller's permission is decided before its fields are read.
        (Err(e), _) | (_, Err(e)) => {
            authorize_reading(&state, &session, path.path(), Mode::Delete).await?;
            return Err(e);
        }
    };
    let written = core::data::delete(&state, &session, &path, cond).await?;
    r.reply(written_msg(&state, &written, nchain)).await;
    Ok(())
}

/// DistKV's reply to a write: `changed`, `tock`, `prev` when the core
/// answers it, the chain with `nchain`.
pub(crate) fn written_msg(state: &ServerState, w: &core::data::Written, nchain: usize) -> Msg {
    let mut m = Msg::new().with("changed", w.changed).with("tock", w.tock.0);
    if let Some(prev) = &w.prev {
        m.set("prev", prev.clone());
    }
    if nchain > 0 {
        m.set("chain", chain(state, w.tock));
    }
    m
}

/// The op a write request asks for: put `value` (with the request's
/// `idem`) or, for `None`, delete; conditional on `cond`.
pub(crate) fn node_op(msg: &Value, path: Path, value: Option<Value>, cond: Cond) -> Op {
    match value {
        Some(v) => Op::Put {
            path,
            value: v,
            cond,
            idem: flag(msg, "idem"),
        },
        None => Op::Delete { path, cond },
    }
}

/// DistKV's reply to a write of `value` (`None`: a deletion), as
/// [`core::data::Written`] decides what it tells a caller that may
/// (`readable`) or may not read the node.
pub(crate) fn write_reply(
    state: &ServerState,
    out: &Outcome,
    value: Option<&Value>,
    (readable, send_prev): (bool, bool),
    nchain: usize,
) -> Msg {
    let w = core::data::Written::of(out.clone(), value, readable, send_prev);
    written_msg(state, &w, nchain)
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
    let state = r.conn().state.clone();
    // Passing through a node is not reading it: its value comes back only
    // to a caller that may read it.
    let session = r.conn().caller();
    let readable = authorize_reading(&state, &session, &path, Mode::Access).await?;
    let entry = match readable {
        true => state.store.get(&path).await?,
        false => None,
    };
    r.conn().update_session(|s| s.caller.root = path.clone());
    tracing::debug!(conn = r.conn().id, root = ?path.to_string(), "connection re-rooted");
    let reply = entry_msg(&state, entry, opt_usize(msg, "nchain")?.unwrap_or(0))
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
    let session = require_login(r)?;
    let path = core::access::data_path(&session, &path_field(msg, "path")?)?;
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
    let whose = match (msg.get("acl"), msg.get("user")) {
        (None | Some(Value::Nil), None | Some(Value::Nil)) => Whose::Own,
        (Some(Value::Str(name)), None | Some(Value::Nil)) => Whose::Acl(name.clone()),
        (None | Some(Value::Nil), Some(Value::Str(user))) => Whose::User {
            name: user.clone(),
            method: match msg.get("method") {
                Some(Value::Str(m)) => Some(m.clone()),
                None | Some(Value::Nil) => None,
                Some(_) => {
                    // Who may ask is decided before the fields are read.
                    require_cap(r, Capability::ReadAuth)?;
                    return Err(ApiError::bad("'method' must be a string"));
                }
            },
        },
        _ => {
            return Err(ApiError::bad(
                "'acl' (an ACL name) or 'user' (a user name), not both",
            ))
        }
    };
    let tested = core::acl::test(&state, &session, &path, mode, whose).await?;
    let mut reply = Msg::new().with("access", tested.access);
    if let Some((acl, pattern, modes)) = tested.rule {
        reply.set(
            "rule",
            Value::Array(vec![
                Path::new(pattern).to_value(),
                Value::from(modes.to_string()),
            ]),
        );
        reply.set("acl", acl);
    }
    r.reply(reply).await;
    Ok(())
}
