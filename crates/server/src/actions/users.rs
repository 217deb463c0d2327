//! `user_show` over msgpack, and the reply both front ends give for a
//! shown user (REST's `GET /user/{name}` answers it as JSON); the work is
//! the core's (`core::users::show`).

use keycard_proto::{Msg, Value};

use crate::caller::Caller;
use crate::core::users::{self, Shown};
use crate::error::ApiResult;
use crate::state::ServerState;

/// A shown user: `{name, methods: [{…what the method shows, method,
/// acl?, groups?}], last_logins: [{at, client, method, via}]}`.
pub(crate) fn reply(shown: Shown) -> Msg {
    let methods: Vec<Value> = shown
        .records
        .into_iter()
        .map(|r| {
            let mut item = r.fields;
            item.set("method", r.method);
            if let Some(acl) = r.acl {
                item.set("acl", acl);
            }
            if let Some(g) = r.groups {
                item.set("groups", Value::Array(g));
            }
            item.into_value()
        })
        .collect();
    let last: Vec<Value> = shown
        .last_logins
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
    Msg::new()
        .with("name", shown.name)
        .with("methods", Value::Array(methods))
        .with("last_logins", Value::Array(last))
}

/// Shows user `name` to `session` ([`users::show`]), as the reply.
pub(crate) async fn show(state: &ServerState, session: &Caller, name: &str) -> ApiResult<Msg> {
    Ok(reply(users::show(state, session, name).await?))
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
