//! Request handlers, one function per action, and the helpers they share.
//!
//! Each handler reads its fields from the request, checks the caller's
//! session, calls the store or an auth method, and answers through the
//! [`Responder`]. Handlers return `Err(ApiError)` for every failure; the
//! connection turns it into the error reply.

mod auth;
pub(crate) mod data;
mod internal;
mod keycards;
pub(crate) mod login;
mod methods;
mod rank;

pub(crate) use keycards::reap_durable;
mod tree;
pub(crate) mod users;

use keycard_proto::{ErrorCode, Msg, Path, Value};
use keycard_store::{Cond, Entry, Tock};

use crate::conn::{ConnShared, Responder, Session};
use crate::error::{ApiError, ApiResult};
use crate::state::ServerState;

/// The DistKV protocol version keycard speaks; DistKV's client reads it.
pub const DISTKV_VERSION: [u32; 3] = [0, 65, 0];

/// The greeting, sent at seq 0 when a connection opens.
pub(crate) async fn greeting(state: &ServerState) -> Value {
    let tock = state.store.tock().0;
    let mut m = Msg::seq(0)
        .with(
            "version",
            Value::Array(DISTKV_VERSION.iter().map(|v| Value::from(*v)).collect()),
        )
        .with("node", state.config.node.as_str())
        .with("tick", tock)
        .with("tock", tock)
        .with("qlen", state.config.qlen)
        .with("server", concat!("keycard ", env!("CARGO_PKG_VERSION")));
    // A method's parameters a client needs before its login (OPAQUE's
    // ciphersuite), under the method's name.
    for i in state.methods.infos() {
        if let Some(suite) = i.suite {
            m.set(i.name, suite);
        }
    }
    let auth = state.auth();
    if auth.configured {
        let mut list = vec![Value::from(auth.current.clone())];
        list.extend(auth.accept.iter().map(|m| Value::from(m.as_str())));
        if auth.current.is_some() {
            list.push(Value::from(keycards::TOKEN));
        }
        m.set("auth", Value::Array(list));
    }
    m.into_value()
}

/// Runs the handler for `action`.
pub(crate) async fn dispatch(action: &str, msg: &Value, r: &mut Responder) -> ApiResult {
    match action {
        "get_value" => data::get_value(msg, r).await,
        "set_value" => data::set_value(msg, r).await,
        "delete_value" => data::delete_value(msg, r).await,
        "get_tock" => data::get_tock(r).await,
        "root" => data::root(msg, r).await,
        "stop" => data::stop(msg, r).await,
        "get_tree" => tree::get_tree(msg, r).await,
        "enum" => tree::enumerate(msg, r).await,
        "watch" => tree::watch(msg, r).await,
        "delete_tree" => tree::delete_tree(msg, r).await,
        "get_internal" => internal::get_internal(msg, r).await,
        "set_internal" => internal::set_internal(msg, r).await,
        "delete_internal" => internal::delete_internal(msg, r).await,
        "enum_internal" => internal::enum_internal(msg, r).await,
        "get_tree_internal" => internal::get_tree_internal(msg, r).await,
        "auth" => auth::auth(msg, r).await,
        "auth_get" => auth::auth_get(msg, r).await,
        "auth_set" => auth::auth_set(msg, r).await,
        "auth_list" => auth::auth_list(msg, r).await,
        "auth_delete" => auth::auth_delete(msg, r).await,
        "auth_info" => auth::auth_info(msg, r).await,
        "auth_methods" => methods::auth_methods(msg, r).await,
        "set_auth_typ" => auth::set_auth_typ(msg, r).await,
        "whoami" => auth::whoami(r).await,
        "diffie_hellman" => auth::diffie_hellman(msg, r).await,
        "audit_tail" => auth::audit_tail(msg, r).await,
        "test_acl" => data::test_acl(msg, r).await,
        "keep_alive" => keycards::keep_alive(msg, r).await,
        "logout" => keycards::logout(r).await,
        "keycard_list" => keycards::keycard_list(msg, r).await,
        "keycard_show" => keycards::keycard_show(msg, r).await,
        "keycard_revoke" => keycards::keycard_revoke(msg, r).await,
        "token_create" => keycards::token_create(msg, r).await,
        "user_show" => users::user_show(msg, r).await,
        other => Err(ApiError::new(
            ErrorCode::UnknownAction,
            format!("unknown action {other:?}"),
        )),
    }
}

/// The caller's session, if it may run data actions: logged in, or the
/// server has no current auth method.
pub(crate) fn require_login(r: &Responder) -> ApiResult<Session> {
    let session = r.conn().session();
    check_login(&r.conn().state, &session)?;
    Ok(session)
}

/// Whether `session` may run data actions: its keycard (if any) is live,
/// and it is logged in unless the server is open.
pub(crate) fn check_login(state: &ServerState, session: &Session) -> ApiResult {
    if let Some(u) = &session.user {
        u.live(state.now_ms())?;
    }
    if !state.is_open() && session.user.is_none() {
        return Err(ApiError::new(
            ErrorCode::AuthRequired,
            "this server requires a login (action 'auth') first",
        ));
    }
    Ok(())
}

/// The caller's session, if it holds the super-root capability: every
/// connection while the server is open, else a `root`-method login or a
/// user granted `super_root`.
pub(crate) fn require_super_root(r: &Responder) -> ApiResult<Session> {
    require_cap(r, crate::conn::Capability::SuperRoot)
}

/// The caller's session, if it holds `cap` (super-root holds them all).
pub(crate) fn require_cap(r: &Responder, cap: crate::conn::Capability) -> ApiResult<Session> {
    let session = r.conn().session();
    check_cap(&r.conn().state, &session, cap)?;
    Ok(session)
}

/// Whether `session` holds `cap` (super-root holds them all; everyone,
/// while the server is open), its keycard live.
pub(crate) fn check_cap(
    state: &ServerState,
    session: &Session,
    cap: crate::conn::Capability,
) -> ApiResult {
    if let Some(u) = &session.user {
        u.live(state.now_ms())?;
    }
    if state.is_open() {
        return Ok(());
    }
    match &session.user {
        None => Err(ApiError::new(
            ErrorCode::AuthRequired,
            "this server requires a login (action 'auth') first",
        )),
        Some(u) if u.has(cap) => Ok(()),
        Some(_) => Err(ApiError::new(
            ErrorCode::PermissionDenied,
            format!("this needs the {} capability", cap.name()),
        )),
    }
}

/// A required path field.
pub(crate) fn path_field(msg: &Value, key: &str) -> ApiResult<Path> {
    match msg.get(key) {
        Some(v) => Ok(Path::from_value(v)?),
        None => Err(ApiError::bad(format!("missing field '{key}'"))),
    }
}

/// Longest full path (the connection's root plus the request's path), in
/// elements and in key bytes.
const MAX_FULL_PATH: usize = keycard_proto::MAX_PATH_LEN;
const MAX_KEY_BYTES: usize = 16 * 1024;

/// Whether a data request may name this path: no element is nil. A nil
/// element starts a reserved subtree — the server's own at the root, a
/// domain's below it — that only management actions reach.
pub(crate) fn is_data_path(rel: &[keycard_proto::Elem]) -> bool {
    !rel.iter().any(|e| matches!(e, keycard_proto::Elem::Nil))
}

/// The full path of a data request: logged in, nothing reserved in it,
/// under the connection's root, and not too long.
pub(crate) fn data_path(msg: &Value, r: &Responder) -> ApiResult<Path> {
    let session = require_login(r)?;
    data_path_in(&session, msg)
}

/// [`data_path`] for a session already checked with [`check_login`].
pub(crate) fn data_path_in(session: &Session, msg: &Value) -> ApiResult<Path> {
    let p = path_field(msg, "path")?;
    if !is_data_path(p.elems()) {
        return Err(ApiError::new(
            ErrorCode::ReservedPath,
            "paths with a nil element are reserved; ordinary requests cannot name them",
        ));
    }
    let full = session.root.join(&p);
    if full.len() > MAX_FULL_PATH || full.to_key().len() > MAX_KEY_BYTES {
        return Err(ApiError::bad(format!(
            "path too long: at most {MAX_FULL_PATH} elements and {MAX_KEY_BYTES} bytes, counting the connection's root"
        )));
    }
    Ok(full)
}

/// The ACLs `session`'s user is bound to, if any.
pub(crate) async fn session_acl(
    state: &ServerState,
    session: &Session,
) -> ApiResult<Option<crate::acl::Grants>> {
    let Some(user) = &session.user else {
        return Ok(None);
    };
    match &user.acls {
        None => Ok(None),
        Some(names) => Ok(Some(grants(state, &user.domain, names.clone()).await?)),
    }
}

/// The compiled ACLs called `names` of the domain at `base`.
pub(crate) async fn grants(
    state: &ServerState,
    base: &Path,
    names: Vec<String>,
) -> ApiResult<crate::acl::Grants> {
    let mut acls = Vec::with_capacity(names.len());
    for n in names {
        let a = state.acls.get(state.store.as_ref(), base, &n).await?;
        acls.push((n, a));
    }
    Ok(crate::acl::Grants {
        acls,
        skip: base.len(),
    })
}

/// Checks `mode` on `path` against the caller's ACL; returns the ACL for
/// checks further down (tree walks), `None` when the caller has none.
pub(crate) async fn authorize(
    r: &Responder,
    path: &Path,
    mode: keycard_auth::acl::Mode,
) -> ApiResult<Option<crate::acl::Grants>> {
    authorize_in(&r.conn().state, &r.conn().session(), path, mode).await
}

/// [`authorize`] for `session`.
pub(crate) async fn authorize_in(
    state: &ServerState,
    session: &Session,
    path: &Path,
    mode: keycard_auth::acl::Mode,
) -> ApiResult<Option<crate::acl::Grants>> {
    let acl = session_acl(state, session).await?;
    if let Some(a) = &acl {
        if !allows(state, a, path, mode).await? {
            return Err(refusal(path, &format!("mode '{}'", mode.letter())));
        }
    }
    Ok(acl)
}

/// [`authorize_in`] for a request that answers the node's value (a
/// write's `prev`, `root`'s value): whether the caller may also read it.
pub(crate) async fn authorize_reading(
    state: &ServerState,
    session: &Session,
    path: &Path,
    mode: keycard_auth::acl::Mode,
) -> ApiResult<bool> {
    let Some(acl) = session_acl(state, session).await? else {
        return Ok(true);
    };
    let have = crate::acl::existing_depth(state.store.as_ref(), path).await?;
    if acl.decide(path.elems(), have, mode).is_err() {
        return Err(refusal(path, &format!("mode '{}'", mode.letter())));
    }
    let read = keycard_auth::acl::Mode::Read;
    Ok(acl.decide(path.elems(), have, read).is_ok())
}

/// Whether `acl` allows `mode` on `path` (as it exists now).
pub(crate) async fn allows(
    state: &ServerState,
    acl: &crate::acl::Grants,
    path: &Path,
    mode: keycard_auth::acl::Mode,
) -> ApiResult<bool> {
    let have = crate::acl::existing_depth(state.store.as_ref(), path).await?;
    Ok(acl.decide(path.elems(), have, mode).is_ok())
}

/// The refusal of a data request asking `what` (`mode 'r'`) on `path`.
/// It names the request, not the level where the ACL refused nor the mode
/// that level lacked: whether passing it needed `x` (an existing level)
/// or `n` (a missing one) would say what exists.
pub(crate) fn refusal(path: &Path, what: &str) -> ApiError {
    ApiError::new(
        ErrorCode::PermissionDenied,
        format!("permission denied: {what} at {path}"),
    )
}

/// Re-reads the auth configuration after a write under the reserved
/// root, made by connection `by` (`None`: not a msgpack connection).
/// When that ends the open era (a method became current), the connections
/// that are not logged in lose their open-era access at once: their open
/// streams end with `auth_required`, and their later requests are refused
/// by [`check_login`]. The connection that made the method current keeps
/// its streams until it closes (it had every right when it did; DistKV's
/// own client runs a watch beside the `set_auth_typ` of its `auth init`),
/// not its access: its next request needs a login too.
pub(crate) async fn refresh_auth(state: &ServerState, by: Option<&ConnShared>) -> ApiResult {
    let was_open = state.is_open();
    state.refresh_auth().await?;
    if was_open && !state.is_open() {
        if let Some(conn) = by {
            conn.update_session(|s| s.kept_open_era = true);
        }
        tracing::info!("auth is now required: the open era's streams end");
        state.bouncer.end_open_era();
    }
    Ok(())
}

/// An optional non-negative integer field.
pub(crate) fn opt_usize(msg: &Value, key: &str) -> ApiResult<Option<usize>> {
    match msg.get(key) {
        None | Some(Value::Nil) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(i) if i >= 0 => Ok(Some(i as usize)),
            // DistKV uses -1 for "no limit".
            Some(-1) => Ok(None),
            _ => Err(ApiError::bad(format!(
                "'{key}' must be a non-negative integer"
            ))),
        },
    }
}

/// An optional flag (Python truthiness, as DistKV reads it).
pub(crate) fn flag(msg: &Value, key: &str) -> bool {
    msg.get(key).is_some_and(Value::truthy)
}

/// A required str field.
pub(crate) fn str_field<'a>(msg: &'a Value, key: &str) -> ApiResult<&'a str> {
    match msg.get(key) {
        Some(Value::Str(s)) => Ok(s),
        Some(_) => Err(ApiError::bad(format!("'{key}' must be a string"))),
        None => Err(ApiError::bad(format!("missing field '{key}'"))),
    }
}

/// DistKV's change chain for a node, as far as keycard keeps one: this
/// node and the node's tock as its tick.
pub(crate) fn chain(state: &ServerState, tock: Tock) -> Value {
    Msg::new()
        .with("node", state.config.node.as_str())
        .with("tick", tock.0)
        .with("prev", Value::Nil)
        .into_value()
}

/// The write condition a request's `prev` / `chain` fields ask for.
pub(crate) fn condition(state: &ServerState, msg: &Value) -> ApiResult<Cond> {
    if let Some(prev) = msg.get("prev") {
        return Ok(Cond::Equals(prev.clone()));
    }
    match msg.get("chain") {
        None => Ok(Cond::Any),
        Some(Value::Nil) => Ok(Cond::Absent),
        Some(c) => {
            let node = c.get("node").and_then(Value::as_str);
            let tick = c.get("tick").and_then(Value::as_u64);
            match (node, tick) {
                (Some(n), Some(t)) if n == state.config.node => Ok(Cond::TockIs(Tock(t))),
                (Some(_), Some(_)) => Err(ApiError::new(
                    ErrorCode::Conflict,
                    "condition failed: the chain names another node",
                )),
                _ => Err(ApiError::bad("'chain' must be nil or {node, tick}")),
            }
        }
    }
}

/// The reply for a node: its value (if any), tock and, with `nchain`, its
/// chain.
pub(crate) fn entry_msg(state: &ServerState, entry: Option<&Entry>, nchain: usize) -> Msg {
    let mut m = Msg::new();
    match entry {
        Some(e) => {
            m.set("value", e.value.clone());
            m.set("tock", e.tock.0);
            if nchain > 0 {
                m.set("chain", chain(state, e.tock));
            }
        }
        None => {
            if nchain > 0 {
                m.set("chain", Value::Nil);
            }
        }
    }
    m
}
