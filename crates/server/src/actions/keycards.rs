//! Keycard actions: `keep_alive` and `logout` for the caller's own keycard,
//! `keycard_list`, `keycard_show` and `keycard_revoke` for managing them,
//! and token keycards (`token_create`, and the `token` login in
//! [`token_login`]).
//!
//! A caller without `manage_keycards` sees and revokes only its own user's
//! keycards; anything else is `not_found`, as an unknown id is.
//!
//! Tokens are durable keycards: the record at `(nil, "keycard", ID)` holds
//! the user, the expiry, the state and the SHA-256 of the bearer token —
//! never the token. A token login mints a connection keycard whose parent
//! is the token, so revoking the token ends every connection using it.

use std::collections::HashSet;

use keycard_auth::bouncer::{Filter, Keycard, KeycardId, State};
use keycard_proto::{hex, ErrorCode, Msg, Path, Value};
use keycard_store::{Cond, Op};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::rank::Rank;
use super::{opt_usize, require_cap, require_login, str_field};
use crate::caller::{Caller, Capability};
use crate::conn::Responder;
use crate::core::keycards::{durable, owner, revoke_durable, Owner, MAX_LIST};
pub(crate) use crate::core::keycards::{durable_path, revoke_matching, TOKEN};
// The login reaches tokens through here.
use crate::core::tokens::TOKEN_PREFIX;
pub(crate) use crate::core::tokens::{check_token, token_id, token_live, Ceiling};
use crate::error::{ApiError, ApiResult};
use crate::state::{record_path, ServerState};

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
fn durable_msg(id: &str, v: &Value, now: u64) -> Msg {
    let mut m = Msg::new().with("id", id).with("durable", true);
    // `state` marks stream messages on the wire; a keycard's is `status`.
    // A token past its time is `expired` until the reaper deletes it.
    let expired = v
        .get("expires_at")
        .and_then(Value::as_u64)
        .is_some_and(|t| t <= now);
    match v.get("state") {
        Some(x) if x.as_str() == Some(State::Authenticated.name()) && expired => {
            m.set("status", State::Expired.name())
        }
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

fn parse_id(msg: &Value) -> ApiResult<KeycardId> {
    let s = str_field(msg, "id")?;
    KeycardId::parse(s).ok_or_else(|| ApiError::bad("'id' must be 32 hex digits"))
}

/// The caller, if logged in (keep-alive and logout need one).
fn own(session: &Caller) -> ApiResult<&crate::caller::LoggedIn> {
    session.user.as_deref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::AuthRequired,
            "this connection holds no keycard; log in first",
        )
    })
}

/// Who the caller is to keycards (without `manage_keycards` it owns the
/// keycards with the same owner).
fn me(session: &Caller) -> Option<Owner> {
    session.user.as_ref().map(|u| {
        (
            u.name.clone(),
            crate::caller::domain_text(&u.domain),
            u.method.clone(),
        )
    })
}

/// Whether the caller manages every keycard, or only its own user's.
/// Keycards are server-wide: only the server's own users (not a domain's)
/// manage them all.
fn manages_all(r: &Responder, session: &Caller) -> bool {
    match &session.user {
        None => r.conn().state.is_open(),
        Some(u) => u.domain.is_empty() && u.has(Capability::ManageKeycards),
    }
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
    let mut f = filter(msg)?;
    if !manages_all(r, &session) {
        // Its own: the same user name and method (tokens are listed for
        // keycard managers only).
        let me = own(&session)?;
        f.user = Some(me.name.clone());
        f.domain = Some(crate::caller::domain_text(&me.domain));
        f.method = Some(me.method.clone());
    }
    let after = match msg.get("after") {
        None | Some(Value::Nil) => None,
        Some(Value::Str(s)) => Some(
            KeycardId::parse(s).ok_or_else(|| ApiError::bad("'after' must be 32 hex digits"))?,
        ),
        Some(_) => return Err(ApiError::bad("'after' must be a keycard id")),
    };
    let limit = opt_usize(msg, "limit")?.unwrap_or(1000).min(MAX_LIST);
    let state = r.conn().state.clone();
    let live = state.bouncer.table().list(&f, after, limit);
    r.start().await;
    for c in &live {
        r.item(card_msg(c)).await;
    }
    if after.is_none() {
        for (id, v) in durable(&state, &f, MAX_LIST, |_| true).await? {
            r.item(durable_msg(&id, &v, state.now_ms())).await;
        }
    }
    Ok(())
}

/// Shows one keycard: `{id}`.
pub(super) async fn keycard_show(msg: &Value, r: &mut Responder) -> ApiResult {
    let session = require_login(r)?;
    let id = parse_id(msg)?;
    let all = manages_all(r, &session);
    let me = me(&session);
    let state = r.conn().state.clone();
    let live = state.bouncer.table().show(id);
    if let Some(c) = live.filter(|c| all || owner(Some(c), None) == me) {
        r.reply(card_msg(&c)).await;
        return Ok(());
    }
    if let Some(e) = state.store.get(&durable_path(id)).await? {
        if all || owner(None, Some(&e.value)) == me {
            r.reply(durable_msg(&id.to_string(), &e.value, state.now_ms()))
                .await;
            return Ok(());
        }
    }
    Err(ApiError::new(ErrorCode::NotFound, "no such keycard"))
}

/// Refuses unless the caller may revoke the keycards of `whose`: its own
/// always; another user's with `manage_keycards` (`all`) when it outranks
/// that user. `ranks` keeps the users already looked up.
async fn may_revoke(
    state: &ServerState,
    session: &Caller,
    whose: &Owner,
    ranks: &mut HashSet<(String, String)>,
) -> ApiResult {
    if Some(whose) == me(session).as_ref() {
        return Ok(());
    }
    let (user, domain, _) = whose;
    let key = (user.clone(), domain.clone());
    if ranks.contains(&key) {
        return Ok(());
    }
    let root = match domain.as_str() {
        "" => Path::root(),
        d => Path::parse(d).map_err(|_| {
            ApiError::new(
                ErrorCode::PermissionDenied,
                "refused: the keycard's domain cannot be read",
            )
        })?,
    };
    let rank = Rank::of_user(state, &root, user).await?;
    super::rank::check(state, session, rank.as_ref()).map_err(|e| {
        ApiError::new(
            e.code,
            format!(
                "{} (a keycard of {})",
                e.text,
                crate::caller::qualify(user, &root)
            ),
        )
    })?;
    ranks.insert(key);
    Ok(())
}

/// Revokes keycards: `{id}`, or with `manage_keycards` `{user}`,
/// `{requester}` or `{parent}` → `{revoked: N}`. Their connections are
/// closed. Another user's keycard needs the caller to outrank that user;
/// a request matching a keycard of a user it does not outrank is refused
/// as a whole and revokes nothing. Exactly the keycards checked are
/// revoked (by id, each still of the owner it was checked for).
pub(super) async fn keycard_revoke(msg: &Value, r: &mut Responder) -> ApiResult {
    let session = require_login(r)?;
    let all = manages_all(r, &session);
    let by = session.user.as_ref().map(|u| u.qualified());
    let state = r.conn().state.clone();
    let mut ranks = HashSet::new();
    if msg.get("id").is_some() {
        let id = parse_id(msg)?;
        let live = state.bouncer.table().show(id);
        let stored = state.store.get(&durable_path(id)).await?;
        let whose = owner(live.as_ref(), stored.as_ref().map(|e| &e.value));
        let Some(whose) = whose.filter(|w| all || Some(w) == me(&session).as_ref()) else {
            return Err(ApiError::new(ErrorCode::NotFound, "no such keycard"));
        };
        may_revoke(&state, &session, &whose, &mut ranks).await?;
        let mut n = 0;
        if let Some(card) = state
            .bouncer
            .revoke_if(id, |c| owner(Some(c), None).as_ref() == Some(&whose))
        {
            state.audit.keycard("revoked", &card, by.as_deref()).await;
            n += 1;
        }
        if stored.is_some() {
            n += revoke_durable(&state, id, by.as_deref()).await?;
        }
        r.reply(Msg::new().with("revoked", n)).await;
        return Ok(());
    }
    if !all {
        return Err(ApiError::new(
            ErrorCode::PermissionDenied,
            "revoking by user or requester needs the manage_keycards capability",
        ));
    }
    let f = filter(msg)?;
    if f.user.is_none() && f.requester.is_none() && f.parent.is_none() {
        return Err(ApiError::bad(
            "say which keycards: 'id', 'user', 'requester' or 'parent'",
        ));
    }
    // A user named is checked whether or not it holds keycards now.
    if let Some(user) = &f.user {
        let named = (
            user.clone(),
            f.domain.clone().unwrap_or_default(),
            String::new(),
        );
        may_revoke(&state, &session, &named, &mut ranks).await?;
    }
    let live = state.bouncer.table().list(&f, None, usize::MAX);
    let stored = durable(&state, &f, usize::MAX, |_| true).await?;
    for whose in live
        .iter()
        .filter_map(|c| owner(Some(c), None))
        .chain(stored.iter().filter_map(|(_, v)| owner(None, Some(v))))
    {
        may_revoke(&state, &session, &whose, &mut ranks).await?;
    }
    let mut n = 0;
    for c in &live {
        let whose = owner(Some(c), None);
        if let Some(card) = state
            .bouncer
            .revoke_if(c.id, |now| owner(Some(now), None) == whose)
        {
            state.audit.keycard("revoked", &card, by.as_deref()).await;
            n += 1;
        }
    }
    for (id, _) in stored {
        if let Some(id) = KeycardId::parse(&id) {
            n += revoke_durable(&state, id, by.as_deref()).await?;
        }
    }
    r.reply(Msg::new().with("revoked", n)).await;
    Ok(())
}

/// The method under which `user` has a user record: `method` if given,
/// else the current method, the accepted ones, then any.
async fn user_method(
    state: &ServerState,
    root: &Path,
    user: &str,
    method: Option<&str>,
) -> ApiResult<String> {
    let cfg = state.auth();
    let mut order: Vec<String> = match method {
        Some(m) => vec![m.to_owned()],
        None => cfg
            .current
            .iter()
            .chain(cfg.accept.iter())
            .cloned()
            .chain(state.methods.names().map(str::to_owned))
            .collect(),
    };
    let mut seen = std::collections::HashSet::new();
    order.retain(|m| seen.insert(m.clone()));
    for m in order {
        if m == TOKEN {
            continue;
        }
        if state
            .store
            .get(&root.join(&record_path(&m, "user", user)))
            .await?
            .is_some()
        {
            return Ok(m);
        }
    }
    Err(ApiError::new(
        ErrorCode::NotFound,
        format!("no user {user:?} to issue a token for"),
    ))
}

/// Creates a token keycard: `{user, ttl (seconds), label?, method?}` →
/// `{token, id, expires_at}`. The bearer token is in this reply and
/// nowhere else; the server keeps its SHA-256.
pub(super) async fn token_create(msg: &Value, r: &mut Responder) -> ApiResult {
    let session = require_cap(r, Capability::ManageKeycards)?;
    // Tokens live in the server's own reserved root: a domain's users
    // (its root included) manage nothing there.
    if session.user.as_ref().is_some_and(|u| !u.domain.is_empty()) {
        return Err(ApiError::new(
            ErrorCode::PermissionDenied,
            "tokens are issued by the server's own keycard managers, not a domain's",
        ));
    }
    // A token's session issues none: a token it minted would outlive it
    // and its revocation (revoking a leaked token must end what it gave).
    if session.user.as_ref().is_some_and(|u| u.method == TOKEN) {
        return Err(ApiError::new(
            ErrorCode::PermissionDenied,
            "a token's session cannot issue tokens; log in with a credential",
        ));
    }
    let state = r.conn().state.clone();
    let user = str_field(msg, "user")?.to_owned();
    let method = match msg.get("method") {
        None | Some(Value::Nil) => None,
        Some(Value::Str(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::bad("'method' must be a string")),
    };
    let max_ttl = state.config.keycards.max_token_ttl;
    let ttl = opt_usize(msg, "ttl")?.map_or(state.config.keycards.duration, |t| t as u64);
    if ttl == 0 || ttl > max_ttl {
        return Err(ApiError::bad(format!(
            "'ttl' must be 1..={max_ttl} seconds (keycards.max_token_ttl)"
        )));
    }
    let label = match msg.get("label") {
        None | Some(Value::Nil) => None,
        Some(Value::Str(s)) if s.len() <= 200 => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::bad(
                "'label' must be a string of at most 200 bytes",
            ))
        }
    };
    let user_method = user_method(&state, &session.root, &user, method.as_deref()).await?;
    // A token logs in as its user: only a caller who outranks the user
    // may mint one, and the token never carries more than the user holds
    // now (its ceiling), whatever the user is granted later.
    let rank = Rank::of_user(&state, &session.root, &user).await?;
    super::rank::check(&state, &session, rank.as_ref())?;
    let (ceiling_caps, ceiling_acls) = rank.as_ref().map_or(
        (Value::Array(Vec::new()), Value::Array(Vec::new())),
        Rank::to_fields,
    );
    let id = KeycardId::random();
    let mut secret = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(secret.as_mut());
    let token = zeroize::Zeroizing::new(format!(
        "{TOKEN_PREFIX}{id}_{}",
        hex::encode(secret.as_ref())
    ));
    let digest = Sha256::digest(token.as_bytes());
    let now = state.now_ms();
    let expires_at = now.saturating_add(ttl.saturating_mul(1000));
    let by = session.user.as_ref().map(|u| u.qualified());
    let record = Msg::new()
        .with("domain", session.root.to_value())
        .with("method", TOKEN)
        .with("user", user.as_str())
        .with("user_method", user_method.as_str())
        .with("state", State::Authenticated.name())
        .with("issued_at", now)
        .with("expires_at", expires_at)
        .with("sha256", Value::Bin(digest.to_vec()))
        .with("caps", ceiling_caps)
        .with("acls", ceiling_acls)
        .with("label", Value::from(label))
        .with("by", Value::from(by.clone()))
        .into_value();
    state
        .store
        .write(vec![Op::Put {
            path: durable_path(id),
            value: record,
            cond: Cond::Absent,
            idem: false,
        }])
        .await?;
    tracing::info!(target: "keycard::audit", keycard = %id, user = ?user, by = by.as_deref().unwrap_or(""), "token created");
    r.reply(
        Msg::new()
            .with("token", token.as_str())
            .with("id", id.to_string())
            .with("user", user.as_str())
            .with("expires_at", expires_at),
    )
    .await;
    Ok(())
}
