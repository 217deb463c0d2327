//! Request handlers, one function per action, and the helpers they share.
//!
//! Each handler reads its fields from the request, checks the caller's
//! session, calls the store or an auth method, and answers through the
//! [`Responder`]. Handlers return `Err(ApiError)` for every failure; the
//! connection turns it into the error reply.

mod admin;
mod auth;
pub(crate) mod data;
mod internal;
mod keycards;
pub(crate) mod login;
mod methods;
mod tree;
pub(crate) mod users;

use keycard_proto::{ErrorCode, Msg, Path, Value};
use keycard_store::{Cond, Entry, Tock};

use crate::caller::Caller;
use crate::conn::{ConnShared, Responder};
pub(crate) use crate::core::access::{check_cap, check_login, is_data_path, MAX_KEY_BYTES};
pub(crate) use crate::core::acl::{authorize as authorize_in, authorize_reading};
pub(crate) use crate::core::rank;
use crate::error::{ApiError, ApiResult};
use crate::state::ServerState;

/// The DistKV protocol version keycard speaks; DistKV's client reads it.
pub const DISTKV_VERSION: [u32; 3] = [0, 65, 0];

/// The msgpack adapter, as the connection runs it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Actions;

impl crate::conn::Handler for Actions {
    fn greeting(self, state: &ServerState, tls: bool) -> Value {
        greeting(state, tls)
    }

    fn dispatch<'a>(
        self,
        action: &'a str,
        msg: &'a Value,
        r: &'a mut Responder,
    ) -> impl std::future::Future<Output = ApiResult> + Send + 'a {
        dispatch(action, msg, r)
    }
}

/// The greeting, sent at seq 0 when a connection opens. Over TLS
/// (`tls`), each accepted method's channel-binding variant is listed too.
pub(crate) fn greeting(state: &ServerState, tls: bool) -> Value {
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
        if tls {
            list.extend(
                auth.current
                    .iter()
                    .chain(&auth.accept)
                    .filter_map(|m| state.methods.get(m).and_then(|m| m.info().plus))
                    .map(Value::from),
            );
        }
        if auth.current.is_some() {
            list.push(Value::from(keycards::TOKEN));
        }
        m.set("auth", Value::Array(list));
    }
    m.into_value()
}

/// Runs the handler for `action`.
/// Runs one action. Every request's task holds this future while it
/// waits (for room in the budget, for the store), so it is kept as small
/// as the data actions' own: every other action's future is boxed (a
/// login's is several KiB), and a connection pipelining a thousand reads
/// holds a thousand small futures, not a thousand login-sized ones.
pub(crate) async fn dispatch(action: &str, msg: &Value, r: &mut Responder) -> ApiResult {
    match action {
        "get_value" => data::get_value(msg, r).await,
        "set_value" => data::set_value(msg, r).await,
        "delete_value" => data::delete_value(msg, r).await,
        "get_tock" => data::get_tock(r).await,
        "root" => Box::pin(data::root(msg, r)).await,
        "stop" => data::stop(msg, r).await,
        "get_tree" => Box::pin(tree::get_tree(msg, r)).await,
        "enum" => Box::pin(tree::enumerate(msg, r)).await,
        "watch" => Box::pin(tree::watch(msg, r)).await,
        "delete_tree" => Box::pin(tree::delete_tree(msg, r)).await,
        "get_internal" => Box::pin(internal::get_internal(msg, r)).await,
        "set_internal" => Box::pin(internal::set_internal(msg, r)).await,
        "delete_internal" => Box::pin(internal::delete_internal(msg, r)).await,
        "enum_internal" => Box::pin(internal::enum_internal(msg, r)).await,
        "get_tree_internal" => Box::pin(internal::get_tree_internal(msg, r)).await,
        "auth" => Box::pin(auth::auth(msg, r)).await,
        "auth_get" => Box::pin(auth::auth_get(msg, r)).await,
        "auth_set" => Box::pin(auth::auth_set(msg, r)).await,
        "auth_list" => Box::pin(auth::auth_list(msg, r)).await,
        "auth_delete" => Box::pin(auth::auth_delete(msg, r)).await,
        "auth_info" => Box::pin(auth::auth_info(msg, r)).await,
        "auth_methods" => Box::pin(methods::auth_methods(msg, r)).await,
        "set_auth_typ" => Box::pin(auth::set_auth_typ(msg, r)).await,
        "whoami" => Box::pin(auth::whoami(r)).await,
        "diffie_hellman" => Box::pin(auth::diffie_hellman(msg, r)).await,
        "audit_tail" => Box::pin(auth::audit_tail(msg, r)).await,
        "test_acl" => Box::pin(data::test_acl(msg, r)).await,
        "keep_alive" => Box::pin(keycards::keep_alive(msg, r)).await,
        "logout" => Box::pin(keycards::logout(r)).await,
        "keycard_list" => Box::pin(keycards::keycard_list(msg, r)).await,
        "keycard_show" => Box::pin(keycards::keycard_show(msg, r)).await,
        "keycard_revoke" => Box::pin(keycards::keycard_revoke(msg, r)).await,
        "token_create" => Box::pin(keycards::token_create(msg, r)).await,
        "user_show" => Box::pin(users::user_show(msg, r)).await,
        "reload" => Box::pin(admin::reload(r)).await,
        "seal_status" => Box::pin(admin::seal_status(r)).await,
        "seal_rotate" => Box::pin(admin::seal_rotate(msg, r)).await,
        "dump" => Box::pin(admin::dump(r)).await,
        other => Err(ApiError::new(
            ErrorCode::UnknownAction,
            format!("unknown action {other:?}"),
        )),
    }
}

/// The caller's session, if it may run data actions: logged in, or the
/// server has no current auth method.
pub(crate) fn require_login(r: &Responder) -> ApiResult<Caller> {
    let session = r.conn().caller();
    check_login(&r.conn().state, &session)?;
    Ok(session)
}

/// The caller's session, if it holds the super-root capability: every
/// connection while the server is open, else a `root`-method login or a
/// user granted `super_root`.
pub(crate) fn require_super_root(r: &Responder) -> ApiResult<Caller> {
    require_cap(r, crate::caller::Capability::SuperRoot)
}

/// The caller's session, if it holds `cap` (super-root holds them all).
pub(crate) fn require_cap(r: &Responder, cap: crate::caller::Capability) -> ApiResult<Caller> {
    let session = r.conn().caller();
    check_cap(&r.conn().state, &session, cap)?;
    Ok(session)
}

/// A required path field.
pub(crate) fn path_field(msg: &Value, key: &str) -> ApiResult<Path> {
    match msg.get(key) {
        Some(v) => Ok(Path::from_value(v)?),
        None => Err(ApiError::bad(format!("missing field '{key}'"))),
    }
}

/// The full path of a data request: logged in, nothing reserved in it,
/// under the connection's root, and not too long.
pub(crate) fn data_path(msg: &Value, r: &Responder) -> ApiResult<Path> {
    let session = require_login(r)?;
    data_path_in(&session, msg)
}

/// [`data_path`] for a caller already checked with [`check_login`].
pub(crate) fn data_path_in(session: &Caller, msg: &Value) -> ApiResult<Path> {
    Ok(crate::core::access::data_path(session, &path_field(msg, "path")?)?.into_path())
}

/// Checks `mode` on `path` against the caller's ACL; returns the ACL for
/// checks further down (tree walks), `None` when the caller has none.
pub(crate) async fn authorize(
    r: &Responder,
    path: &Path,
    mode: keycard_auth::acl::Mode,
) -> ApiResult<Option<crate::acl::Grants>> {
    authorize_in(&r.conn().state, &r.conn().caller(), path, mode).await
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
    crate::core::auth::refresh_auth(state, || {
        if let Some(conn) = by {
            conn.update_session(|s| s.kept_open_era = true);
        }
    })
    .await
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
                // On a shared store tocks are every node's: a chain read
                // through one node holds on another.
                (Some(n), Some(t)) if n == state.config.node || state.shared_store() => {
                    Ok(Cond::TockIs(Tock(t)))
                }
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
/// chain. The entry is taken, not borrowed: its value moves into the
/// reply, so a large value is held once while the reply is encoded (a
/// read's budget reservation counts one copy).
pub(crate) fn entry_msg(state: &ServerState, entry: Option<Entry>, nchain: usize) -> Msg {
    let mut m = Msg::new();
    match entry {
        Some(e) => {
            m.set("value", e.value);
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

#[cfg(test)]
mod future_sizes {
    use super::*;

    fn size<'a, F, Fut>(_: F) -> usize
    where
        F: FnOnce(&'a Value, &'a mut Responder) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// A pipelined read waits inside `dispatch`'s future: it must cost no
    /// more than the data actions themselves (plus the match's own state),
    /// whatever a login's future grows to.
    #[test]
    fn dispatch_is_no_bigger_than_the_data_actions() {
        let dispatched = size(|m: &'static Value, r: &'static mut Responder| dispatch("x", m, r));
        let data = [
            size(data::get_value),
            size(data::set_value),
            size(data::delete_value),
        ];
        let largest = data.into_iter().max().unwrap_or(0);
        assert!(
            dispatched <= largest + 128,
            "dispatch's future is {dispatched} bytes, the data actions' at most {largest}; \
             box the action that grew it"
        );
        assert!(
            size(auth::auth) > dispatched,
            "a login's future is boxed, not inline"
        );
    }
}
