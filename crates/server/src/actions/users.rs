//! `user_show`: a user by name (its methods, bindings and last logins),
//! over msgpack and for REST's `GET /user/{name}`; the rest of user
//! management is the core's (`core::users`).

use keycard_proto::{Msg, Value};

use crate::caller::{Caller, Capability};
use crate::core::access::{check_cap, check_login};
use crate::core::users::{me, no_such_user, records, user_kind, user_name};
use crate::error::ApiResult;
use crate::state::ServerState;

/// `GET /user/{name}`: `{name, methods: [{method, acl?, groups?, …}],
/// last_logins: [{at, client, method, via}]}`. Needs `read_auth` (which
/// reads every record with `auth_get` already: showing is reading, no
/// outranking needed), or to be the user: then only the record it logged
/// in with (same name, method and domain), and its last logins.
pub(crate) async fn show(state: &ServerState, session: &Caller, name: &str) -> ApiResult<Msg> {
    check_login(state, session)?;
    let own_only = match check_cap(state, session, Capability::ReadAuth) {
        Ok(()) => None,
        Err(e) => Some(me(session, name).ok_or(e)?.record.clone()),
    };
    let name = user_name(name)?;
    let mut found = records(state, session, name).await?;
    if let Some(mine) = &own_only {
        found.retain(|(_, at, _)| at == mine);
    }
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
    let session = r.conn().caller();
    let state = r.conn().state.clone();
    let name = super::str_field(msg, "ident")?;
    let reply = show(&state, &session, name).await?;
    r.reply(reply).await;
    Ok(())
}
