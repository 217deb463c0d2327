//! Keycard actions over msgpack: `keep_alive` and `logout` for the
//! caller's own keycard, and the adapters of `keycard_list`,
//! `keycard_show`, `keycard_revoke` (`core::keycards`) and `token_create`
//! (`core::tokens`); the `token` login reaches tokens through here.

use keycard_auth::bouncer::{Filter, Keycard, KeycardId};
use keycard_proto::{ErrorCode, Msg, Value};

use super::{opt_usize, require_login, str_field};
use crate::conn::Responder;
use crate::core::keycards::{self as core_keycards, own, Card, ListQuery};
pub(crate) use crate::core::keycards::{revoke_matching, TOKEN};
use crate::core::tokens::{self, NewToken};
pub(crate) use crate::core::tokens::{check_token, token_id, token_live, Ceiling};
use crate::error::{ApiError, ApiResult};

fn card_msg(c: &Keycard) -> Msg {
    let mut m = Msg::new()
        .with("id", c.id.to_string())
        .with("method", &*c.method)
        .with("user", &*c.user)
        .with("requester", c.requester)
        .with("status", c.state.name())
        .with("issued_at", c.issued_at)
        .with("expires_at", c.expires_at)
        .with("max_until", c.max_until)
        .with("durable", false);
    if !c.domain.is_empty() {
        m.set("domain", &*c.domain);
    }
    if let Some(a) = c.addr {
        m.set("addr", a.to_string());
    }
    if let Some(p) = c.parent {
        m.set("parent", p.to_string());
    }
    if c.last_keepalive > 0 {
        m.set("last_keepalive", c.last_keepalive);
    }
    m
}

/// What a durable record shows (everything but its hash).
fn durable_msg(id: &str, v: &Value, expired: bool) -> Msg {
    let mut m = Msg::new().with("id", id).with("durable", true);
    // `state` marks stream messages on the wire; a keycard's is `status`.
    // A token past its time is `expired` until the reaper deletes it.
    match v.get("state") {
        Some(_) if expired => m.set("status", keycard_auth::bouncer::State::Expired.name()),
        Some(x) => m.set("status", x.clone()),
        None => {}
    }
    for key in [
        "method",
        "user",
        "issued_at",
        "expires_at",
        "label",
        "by",
        "revoked_at",
        "revoked_by",
    ] {
        match v.get(key) {
            None | Some(Value::Nil) => {}
            Some(x) => m.set(key, x.clone()),
        }
    }
    m
}

fn item(c: &Card) -> Msg {
    match c {
        Card::Live(c) => card_msg(c),
        Card::Durable {
            id,
            record,
            expired,
        } => durable_msg(id, record, *expired),
    }
}

fn parse_id(msg: &Value) -> ApiResult<KeycardId> {
    let s = str_field(msg, "id")?;
    KeycardId::parse(s).ok_or_else(|| ApiError::bad("'id' must be 32 hex digits"))
}

/// Extends the caller's keycard: `{ttl}` (seconds, optional, at most the
/// keycard's duration) → `{keycard, expires_at}`.
pub(super) async fn keep_alive(msg: &Value, r: &mut Responder) -> ApiResult {
    let session = require_login(r)?;
    let me = own(&session)?;
    let ttl = opt_usize(msg, "ttl")?.map(|s| (s as u64).saturating_mul(1000));
    let conn = r.conn().clone();
    let expires_at = conn.state.bouncer.keep_alive(me.keycard, conn.id, ttl)?;
    let id = me.keycard;
    conn.update_session(|s| {
        if let Some(u) = s.caller.user.as_mut().filter(|u| u.keycard == id) {
            std::sync::Arc::make_mut(u).expires_at = expires_at;
        }
    });
    r.reply(
        Msg::new()
            .with("keycard", id.to_string())
            .with("expires_at", expires_at),
    )
    .await;
    Ok(())
}

/// Ends the caller's login: its keycard is removed.
pub(super) async fn logout(r: &mut Responder) -> ApiResult {
    let conn = r.conn().clone();
    let previous = conn.update_session(|s| s.caller.user.take());
    let Some(me) = previous else {
        return Err(ApiError::new(ErrorCode::AuthRequired, "not logged in"));
    };
    // The streams opened under the keycard end with it: once it is out of
    // the table, neither its expiry nor a revocation could reach them.
    let ended = conn.keycard_given_up();
    if let Some(card) = conn.state.bouncer.remove(me.keycard, conn.id) {
        conn.state
            .audit
            .keycard("logout", &card, Some(&me.name))
            .await;
    }
    conn.send_all(ended).await;
    r.reply(Msg::new().with("keycard", me.keycard.to_string()))
        .await;
    Ok(())
}

fn filter(msg: &Value) -> ApiResult<Filter> {
    let text = |key: &str| match msg.get(key) {
        None | Some(Value::Nil) => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad(format!("'{key}' must be a string"))),
    };
    let requester = match msg.get("requester") {
        None | Some(Value::Nil) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| ApiError::bad("'requester' must be a connection id"))?,
        ),
    };
    let parent = match text("parent")? {
        None => None,
        Some(p) => Some(
            KeycardId::parse(&p).ok_or_else(|| ApiError::bad("'parent' must be 32 hex digits"))?,
        ),
    };
    Ok(Filter {
        user: text("user")?,
        domain: text("domain")?,
        method: text("method")?,
        requester,
        parent,
    })
}

/// Lists keycards: `{user, method, requester, parent, after, limit}` → a
/// stream of keycards, live ones by id, then durable ones.
pub(super) async fn keycard_list(msg: &Value, r: &mut Responder) -> ApiResult {
    let session = require_login(r)?;
    let mut filter = filter(msg)?;
    // Narrowed before `after` and `limit` are read, as it always was.
    core_keycards::narrow(&r.conn().state, &session, &mut filter)?;
    let after = match msg.get("after") {
        None | Some(Value::Nil) => None,
        Some(Value::Str(s)) => Some(
            KeycardId::parse(s).ok_or_else(|| ApiError::bad("'after' must be 32 hex digits"))?,
        ),
        Some(_) => return Err(ApiError::bad("'after' must be a keycard id")),
    };
    let limit = opt_usize(msg, "limit")?.unwrap_or(1000);
    let state = r.conn().state.clone();
    let cards = core_keycards::list(
        &state,
        &session,
        ListQuery {
            filter,
            after,
            limit,
        },
    )
    .await?;
    r.start().await;
    for c in &cards {
        r.item(item(c)).await;
    }
    Ok(())
}

/// Shows one keycard: `{id}`.
pub(super) async fn keycard_show(msg: &Value, r: &mut Responder) -> ApiResult {
    let session = require_login(r)?;
    let id = parse_id(msg)?;
    let state = r.conn().state.clone();
    let card = core_keycards::show(&state, &session, id).await?;
    r.reply(item(&card)).await;
    Ok(())
}

/// Revokes keycards: `{id}`, or with `manage_keycards` `{user}`,
/// `{requester}` or `{parent}` → `{revoked: N}`. Their connections are
/// closed; see `core::keycards::revoke_id` and `revoke_filter`.
pub(super) async fn keycard_revoke(msg: &Value, r: &mut Responder) -> ApiResult {
    let session = require_login(r)?;
    let state = r.conn().state.clone();
    let n = if msg.get("id").is_some() {
        let id = parse_id(msg)?;
        core_keycards::revoke_id(&state, &session, id).await?
    } else {
        core_keycards::check_revoke_matching(&state, &session)?;
        let f = filter(msg)?;
        core_keycards::revoke_filter(&state, &session, &f).await?
    };
    r.reply(Msg::new().with("revoked", n)).await;
    Ok(())
}

/// Creates a token keycard: `{user, ttl (seconds), label?, method?}` →
/// `{token, id, user, expires_at}`. The bearer token is in this reply and
/// nowhere else.
pub(super) async fn token_create(msg: &Value, r: &mut Responder) -> ApiResult {
    let session = r.conn().caller();
    let state = r.conn().state.clone();
    tokens::check_issuer(&state, &session)?;
    let user = str_field(msg, "user")?.to_owned();
    let method = match msg.get("method") {
        None | Some(Value::Nil) => None,
        Some(Value::Str(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::bad("'method' must be a string")),
    };
    let ttl = tokens::token_ttl(&state, opt_usize(msg, "ttl")?.map(|t| t as u64))?;
    let label = match msg.get("label") {
        None | Some(Value::Nil) => None,
        Some(Value::Str(s)) if s.len() <= tokens::MAX_LABEL => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::bad(
                "'label' must be a string of at most 200 bytes",
            ))
        }
    };
    let issued = tokens::create(
        &state,
        &session,
        NewToken {
            user,
            method,
            ttl: Some(ttl),
            label,
        },
    )
    .await?;
    r.reply(
        Msg::new()
            .with("token", issued.token.as_str())
            .with("id", issued.id.to_string())
            .with("user", issued.user.as_str())
            .with("expires_at", issued.expires_at),
    )
    .await;
    Ok(())
}
