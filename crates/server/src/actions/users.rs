//! User management by name, across methods (REST's `/user/{name}`): show
//! a user (its methods, bindings and last logins), create one with a
//! credential, set a credential, delete one. Transport-independent: the
//! REST front end calls these with its session.
//!
//! A user is a name with one record per method
//! (`(…, "auth", METHOD, "user", NAME)`) and the aux nodes below each
//! record ([`AUX`]). Credentials arrive as the method's own registration
//! messages (a SCRAM verifier, OPAQUE's registration request and upload),
//! so the password never travels. A multi-step registration is run
//! statelessly: the client sends every message it has so far, the server
//! replays the (deterministic) exchange and either stores the record or
//! answers the next message to compute.

use keycard_auth::bouncer::Filter;
use keycard_auth::{Kind, LoginCtx, Method, Step};
use keycard_proto::{ErrorCode, Msg, Path, Value};
use keycard_store::{Cond, Op};

use super::auth::guard_lockout;
use super::check_cap;
use super::login::{auth_error, user_name};
use crate::conn::{domain_text, Capability, Session};
use crate::error::{ApiError, ApiResult};
use crate::state::{auth_root, record_path, ServerState};

/// The nodes below a user record that belong to it, deleted with it.
pub(crate) const AUX: [&str; 5] = ["acl", "caps", "groups", "keycard", "logins"];

/// Most messages a registration may take.
const MAX_MESSAGES: usize = 4;

fn no_such_user() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such user")
}

/// Whether `session` is `name`'s own (same name, same domain).
fn is_self(session: &Session, name: &str) -> bool {
    session.user.as_ref().is_some_and(|u| u.name == name)
}

fn user_kind(m: &dyn Method) -> ApiResult<&'static Kind> {
    m.kinds().iter().find(|k| k.name == "user").ok_or_else(|| {
        ApiError::new(
            ErrorCode::AuthMethod,
            format!("method {} has no users", m.name()),
        )
    })
}

/// `name`'s records under `session`'s root: (method, record path, value).
async fn records(
    state: &ServerState,
    session: &Session,
    name: &str,
) -> ApiResult<Vec<(&'static str, Path, Value)>> {
    let mut out = Vec::new();
    for m in state.methods.names() {
        let at = session.root.join(&record_path(m, "user", name));
        if let Some(e) = state.store.get(&at).await? {
            out.push((m, at, e.value));
        }
    }
    Ok(out)
}

/// `GET /user/{name}`: `{name, methods: [{method, acl?, groups?, …}],
/// last_logins: [{at, client, method, via}]}`. Needs `read_auth`, or to be
/// the user.
pub(crate) async fn show(state: &ServerState, session: &Session, name: &str) -> ApiResult<Msg> {
    if !is_self(session, name) {
        check_cap(state, session, Capability::ReadAuth)?;
    }
    let name = user_name(name)?;
    let found = records(state, session, name).await?;
    if found.is_empty() {
        return Err(no_such_user());
    }
    let mut methods = Vec::new();
    let mut logins = Vec::new();
    for (m, at, value) in &found {
        let Some(method) = state.methods.get(m) else {
            continue;
        };
        let mut item = method.show_record(user_kind(method.as_ref())?, value);
        item.set("method", *m);
        if let Some(e) = state.store.get(&at.child("acl")).await? {
            if let Some(acl) = e.value.get("key").and_then(Value::as_str) {
                item.set("acl", acl);
            }
        }
        if let Some(e) = state.store.get(&at.child("groups")).await? {
            if let Some(Value::Array(g)) = e.value.get("groups") {
                item.set("groups", Value::Array(g.clone()));
            }
        }
        methods.push(item.into_value());
        logins.extend(state.logins.of(at).await?);
    }
    logins.sort_by_key(|m| std::cmp::Reverse(m.at));
    logins.truncate(crate::logins::KEEP);
    let last: Vec<Value> = logins
        .iter()
        .map(|l| {
            Msg::new()
                .with("at", l.at)
                .with("client", l.client.as_str())
                .with("method", l.method.as_str())
                .with("via", l.via.as_str())
                .into_value()
        })
        .collect();
    Ok(Msg::new()
        .with("name", name)
        .with("methods", Value::Array(methods))
        .with("last_logins", Value::Array(last)))
}

/// `user_show {ident}`: [`show`] over msgpack.
pub(super) async fn user_show(msg: &Value, r: &mut crate::conn::Responder) -> ApiResult {
    let session = r.conn().session();
    let state = r.conn().state.clone();
    let name = super::str_field(msg, "ident")?;
    let reply = show(&state, &session, name).await?;
    r.reply(reply).await;
    Ok(())
}

/// What setting a credential came to.
pub(crate) enum Set {
    /// Stored (at this tock).
    Stored(u64),
    /// The exchange needs the client's next message: compute it from this
    /// one and send every message again with it.
    Continue(Msg),
}

/// Creates user `name` (`create`, needs `write_auth`; a `409` if any
/// record of the name exists), or sets its credential for `method` (needs
/// `write_auth` or to be the user; the user must exist). `msgs` are the
/// client's registration messages so far; `acl` binds an ACL on
/// creation.
pub(crate) async fn set_credential(
    state: &ServerState,
    session: &Session,
    name: &str,
    method: &str,
    msgs: &[Value],
    create: bool,
    acl: Option<&str>,
) -> ApiResult<Set> {
    let m = state.methods.get(method).cloned().ok_or_else(|| {
        ApiError::new(
            ErrorCode::AuthMethod,
            format!("unknown auth method {method:?}"),
        )
    })?;
    if m.super_root() {
        check_cap(state, session, Capability::SuperRoot)?;
    } else if create || !is_self(session, name) {
        check_cap(state, session, Capability::WriteAuth)?;
    } else {
        super::check_login(state, session)?;
    }
    let name = user_name(name)?;
    if name.is_empty() {
        return Err(ApiError::bad("a user needs a name"));
    }
    if msgs.is_empty() || msgs.len() > MAX_MESSAGES {
        return Err(ApiError::bad(format!(
            "a registration takes 1 to {MAX_MESSAGES} messages"
        )));
    }
    if let Some(a) = acl {
        if a.is_empty() || a.len() > 256 {
            return Err(ApiError::bad("'acl' must be an ACL name of 1 to 256 bytes"));
        }
    }
    let exists = !records(state, session, name).await?.is_empty();
    match (create, exists) {
        (true, true) => return Err(ApiError::new(ErrorCode::Conflict, "the user exists")),
        (false, false) => return Err(no_such_user()),
        _ => {}
    }
    let kind = user_kind(m.as_ref())?;
    let ctx = LoginCtx { channel_key: None };
    let mut step = m.set_record(&ctx, kind, name, &msgs[0]);
    let mut next = 1;
    let record = loop {
        step = match step {
            Step::Done(record) => break record,
            Step::Fail(e) => return Err(auth_error(e)),
            Step::Work(work) => state.run_work(work).await.ok_or_else(|| {
                ApiError::new(ErrorCode::Internal, "the hashing workers are unavailable")
            })?,
            Step::Send(msg, exchange) => match msgs.get(next) {
                Some(answer) => {
                    next += 1;
                    exchange.next(answer)
                }
                None => return Ok(Set::Continue(msg)),
            },
        };
    };
    if next < msgs.len() {
        return Err(ApiError::bad(format!(
            "method {method} took {next} messages, not {}",
            msgs.len()
        )));
    }
    let at = session.root.join(&record_path(m.name(), kind.name, name));
    // A creation races nobody: the record must still be absent.
    let cond = match create {
        true => Cond::Absent,
        false => Cond::Any,
    };
    let mut ops = vec![Op::Put {
        path: at.clone(),
        value: record,
        cond,
        idem: false,
    }];
    if let Some(a) = acl {
        ops.push(Op::put(
            at.child("acl"),
            Msg::new().with("key", a).into_value(),
        ));
    }
    let out = state.store.write(ops).await?;
    state.refresh_auth().await?;
    tracing::info!(
        target: "keycard::audit",
        method = m.name(), user = %crate::conn::qualify(name, &session.root),
        by = session.user.as_ref().map(|u| u.qualified()).unwrap_or_default(),
        created = create, "user credential set"
    );
    Ok(Set::Stored(out.first().map_or(0, |o| o.tock.0)))
}

/// Deletes user `name`: every method's record and its aux nodes, and
/// revokes its keycards and tokens (their connections close). Needs
/// `write_auth` (super-root for a `root`-method user); refuses to delete
/// the last user of the current method. Returns how many keycards were
/// revoked.
pub(crate) async fn delete(state: &ServerState, session: &Session, name: &str) -> ApiResult<usize> {
    check_cap(state, session, Capability::WriteAuth)?;
    let name = user_name(name)?;
    let found = records(state, session, name).await?;
    if found.is_empty() {
        return Err(no_such_user());
    }
    let auth_at = session.root.join(&auth_root());
    let mut ops = Vec::new();
    for (m, at, _) in &found {
        if state.methods.get(m).is_some_and(|m| m.super_root()) {
            check_cap(state, session, Capability::SuperRoot)?;
        }
        guard_lockout(state, &auth_at, at, None).await?;
        ops.push(Op::delete(at.clone()));
        ops.extend(AUX.iter().map(|aux| Op::delete(at.child(*aux))));
    }
    state.store.write(ops).await?;
    for (_, at, _) in &found {
        state.logins.forget(at);
    }
    state.refresh_auth().await?;
    let by = session.user.as_ref().map(|u| u.qualified());
    let filter = Filter {
        user: Some(name.to_owned()),
        domain: (!session.root.is_empty()).then(|| domain_text(&session.root)),
        ..Filter::default()
    };
    let revoked = super::keycards::revoke_matching(state, &filter, by.as_deref()).await?;
    tracing::info!(
        target: "keycard::audit",
        user = %crate::conn::qualify(name, &session.root),
        by = by.as_deref().unwrap_or(""), revoked, "user deleted"
    );
    Ok(revoked)
}
