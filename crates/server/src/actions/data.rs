//! Single-node data actions: get_value, set_value, delete_value, plus
//! get_tock, root and stop.

use keycard_proto::Path;
use keycard_proto::{Msg, Value};
use keycard_store::{Cond, Entry, Op, Outcome};

use super::{
    authorize_in, chain, condition, data_path, data_path_in, entry_msg, flag, opt_usize,
    require_login, require_super_root, session_acl,
};
use crate::conn::{stop_task, Responder, Session};
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
    let reply = get_in(&state, &session, msg).await?;
    r.reply(reply).await;
    drop(held);
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

/// Most times `set_value` decides again after losing a race to another
/// write of the node (each time, the node changed under it).
const DECIDE_TRIES: usize = 64;

/// `set_value` for a session.
///
/// A caller bound to ACLs needs `w` to overwrite and `c` to create
/// (DistKV's rule), decided from a read of the node. The write is then
/// conditional on what the decision saw (the node absent, or unchanged
/// since its tock), so a value created or deleted in between cannot slip
/// through; losing that race decides again, so the client's write fails
/// only on a condition it asked for. A caller holding both needs no such
/// condition.
pub(crate) async fn set_in(state: &ServerState, session: &Session, msg: &Value) -> ApiResult<Msg> {
    let path = data_path_in(session, msg)?;
    let Some(value) = msg.get("value") else {
        return Err(ApiError::bad(
            "set_value needs a 'value' (use delete_value to clear one)",
        ));
    };
    let Some(acl) = session_acl(state, session).await? else {
        return write_value(state, msg, path, Some(value.clone())).await;
    };
    let asked = condition(state, msg)?;
    let nchain = opt_usize(msg, "nchain")?.unwrap_or(1);
    for _ in 0..DECIDE_TRIES {
        let entry = state.store.get(&path).await?;
        let have = crate::acl::existing_depth(state.store.as_ref(), &path).await?;
        let may = |mode| acl.decide(path.elems(), have, mode).is_ok();
        let (w, c) = (may(Mode::Write), may(Mode::Create));
        let readable = may(Mode::Read);
        let mode = match entry {
            Some(_) => Mode::Write,
            None => Mode::Create,
        };
        if !(if entry.is_some() { w } else { c }) {
            // A caller that cannot read the node learns nothing of it,
            // not even whether it exists.
            return Err(match readable {
                true => super::refusal(&path, &format!("mode '{}'", mode.letter())),
                false => super::refusal(&path, "mode 'w' or 'c'"),
            });
        }
        // The client's own condition, against the node the decision saw
        // (a failed condition is a read: it answers as of that read).
        if let Err(why) = holds(&asked, entry.as_ref()) {
            return Err(ApiError::new(
                keycard_proto::ErrorCode::Conflict,
                format!("condition failed: {why}"),
            ));
        }
        let pinned = !(w && c);
        let cond = match (&entry, pinned) {
            (_, false) => asked.clone(),
            (None, true) => Cond::Absent,
            (Some(e), true) => Cond::TockIs(e.tock),
        };
        let op = Op::Put {
            path: path.clone(),
            value: value.clone(),
            cond,
            // Skipping an unchanged value would tell an unreading caller
            // that it guessed the value.
            idem: readable && flag(msg, "idem"),
        };
        match state.store.write(vec![op]).await {
            Ok(mut out) => {
                let out = out.pop().ok_or_else(no_outcome)?;
                let reveal = (readable, asked == Cond::Any);
                return Ok(write_reply(state, &out, Some(value), reveal, nchain));
            }
            // Only the condition added here failed: the node changed since
            // the read. Decide again.
            Err(keycard_store::StoreError::Conflict { .. }) if pinned => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(
        keycard_proto::ErrorCode::Conflict,
        "the node kept changing while this write was decided; try again",
    ))
}

/// Whether `cond` holds for the node `entry`, as the store decides it
/// (the same reasons).
fn holds(cond: &Cond, entry: Option<&Entry>) -> Result<(), &'static str> {
    match (cond, entry) {
        (Cond::Any, _) | (Cond::Absent, None) => Ok(()),
        (Cond::Absent, Some(_)) => Err("the node exists"),
        (Cond::Equals(_) | Cond::TockIs(_), None) => Err("the node has no value"),
        (Cond::Equals(want), Some(e)) if *want != e.value => {
            Err("the node holds a different value")
        }
        (Cond::TockIs(t), Some(e)) if *t != e.tock => Err("the node was changed at another tock"),
        (Cond::Equals(_) | Cond::TockIs(_), Some(_)) => Ok(()),
    }
}

/// `delete_value` for a session. The previous value is answered only to
/// a caller that may read it.
pub(crate) async fn delete_in(
    state: &ServerState,
    session: &Session,
    msg: &Value,
) -> ApiResult<Msg> {
    let path = data_path_in(session, msg)?;
    if msg.get("value").is_some() {
        return Err(ApiError::bad("delete_value takes no 'value'"));
    }
    let readable = super::authorize_reading(state, session, &path, Mode::Delete).await?;
    write_node(state, msg, path, None, readable).await
}

/// Sets (or with `None` deletes) one node, honouring DistKV's `prev`,
/// `chain` and `idem`, and builds DistKV's reply.
pub(crate) async fn write_value(
    state: &ServerState,
    msg: &Value,
    path: Path,
    value: Option<Value>,
) -> ApiResult<Msg> {
    write_node(state, msg, path, value, true).await
}

/// [`write_value`]; the reply says something of the node's previous value
/// only with `readable` ([`write_reply`]).
async fn write_node(
    state: &ServerState,
    msg: &Value,
    path: Path,
    value: Option<Value>,
    readable: bool,
) -> ApiResult<Msg> {
    let cond = condition(state, msg)?;
    let reveal = (readable, cond == Cond::Any);
    let nchain = opt_usize(msg, "nchain")?.unwrap_or(1);
    let op = node_op(msg, path, value.clone(), cond);
    let out = state
        .store
        .write(vec![op])
        .await?
        .pop()
        .ok_or_else(no_outcome)?;
    Ok(write_reply(state, &out, value.as_ref(), reveal, nchain))
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

fn no_outcome() -> ApiError {
    ApiError::new(
        keycard_proto::ErrorCode::Internal,
        "store returned no outcome",
    )
}

/// DistKV's reply to a write of `value` (`None`: a deletion): `changed`,
/// `tock`, the previous value with `send_prev`, the chain with `nchain`.
/// To a caller that may not read the node (`readable` false) it says
/// nothing of the value replaced: no `prev`, and `changed` only says that
/// the write happened (not whether the old value was the same).
pub(crate) fn write_reply(
    state: &ServerState,
    out: &Outcome,
    value: Option<&Value>,
    (readable, send_prev): (bool, bool),
    nchain: usize,
) -> Msg {
    let changed = out.changed && (!readable || out.prev.as_ref() != value);
    let mut m = Msg::new().with("changed", changed).with("tock", out.tock.0);
    if readable && send_prev {
        if let Some(prev) = &out.prev {
            m.set("prev", prev.clone());
        }
    }
    if nchain > 0 {
        m.set("chain", chain(state, out.tock));
    }
    m
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
    let session = r.conn().session();
    let readable = super::authorize_reading(&state, &session, &path, Mode::Access).await?;
    let entry = match readable {
        true => state.store.get(&path).await?,
        false => None,
    };
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
            // An ACL exists while it has an entry: a typo is not an ACL
            // that denies everything.
            let at = acl_base.join(&crate::acl::acl_root()).child(name.as_str());
            let any = keycard_store::ScanOpts::default();
            if state.store.scan_up_to(&at, any, 1).await?.is_empty() {
                return Err(ApiError::new(
                    keycard_proto::ErrorCode::NoSuchAcl,
                    format!("there is no ACL {name:?}"),
                ));
            }
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
            // What a user may do is its own business, up to those who
            // outrank it.
            let rank = super::rank::Rank::of_user(&state, &session.root, user).await?;
            super::rank::check(&state, &session, rank.as_ref())?;
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
