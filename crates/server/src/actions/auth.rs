//! Auth actions: `auth` (log in), `auth_get`, `auth_set`, `auth_list`,
//! `auth_info`, `set_auth_typ`. The exchanges themselves are the methods'
//! sans-IO state machines; this module carries their messages, looks up and
//! stores their records, and keeps the session.

use std::time::Duration;

use keycard_auth::{Kind, LoginCtx, Method, Step};
use keycard_proto::{ErrorCode, Msg, Path, Value};
use keycard_store::{Cond, Op, ScanOpts};

use super::login::{
    auth_error, drive as drive_login, method, until_peer, user_name, Ask, Carrier, Granted, Halt,
    Login, LoginAnswer, LoginRequest, Refusal, Requester,
};
use super::{
    chain, condition, opt_usize, require_cap, require_login, require_super_root, str_field,
};
use crate::bouncer::{Ended, KeycardWatcher};
use crate::caller::Capability;
use crate::conn::Responder;
use crate::core::guard::users_of;
pub(super) use crate::core::guard::{user_record_of, write_guarded};
use crate::error::{ApiError, ApiResult};
use crate::state::{auth_root, record_path, ServerState};

/// How long the server waits for the client's next message in a
/// multi-step exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

fn kind(m: &dyn Method, msg: &Value) -> ApiResult<&'static Kind> {
    let name = match msg.get("kind") {
        None | Some(Value::Nil) => "user",
        Some(Value::Str(s)) => s.as_str(),
        Some(_) => return Err(ApiError::bad("'kind' must be a string")),
    };
    m.kinds()
        .iter()
        .find(|k| k.name == name)
        .ok_or_else(|| ApiError::bad(format!("method {} has no record kind {name:?}", m.name())))
}

/// Runs a record-setting exchange (`auth_set`) to its end, carrying its
/// messages as stream items and the client's answers as continuations
/// under the request's seq, and its heavy work on the server's bounded
/// worker pool.
async fn drive<T: Send + 'static>(r: &mut Responder, mut step: Step<T>) -> ApiResult<T> {
    let state = r.conn().state.clone();
    let mut carrier = Continuations { r, rx: None };
    loop {
        match until_peer(&state, step).await? {
            Halt::Done(t) => return Ok(t),
            Halt::Fail(e) => return Err(auth_error(e)),
            Halt::Ask(msg, next) => {
                let deadline = state
                    .now_ms()
                    .saturating_add(EXCHANGE_TIMEOUT.as_millis() as u64);
                let answer = match carrier.carry(msg, deadline).await {
                    Ok(a) => a,
                    Err(NoAnswer::Abandoned) => {
                        return Err(ApiError::bad("the exchange was abandoned"))
                    }
                    Err(NoAnswer::Timeout(_)) => {
                        return Err(ApiError::bad(format!(
                            "no answer within {} s",
                            EXCHANGE_TIMEOUT.as_secs()
                        )))
                    }
                };
                step = next.next(&answer);
            }
        }
    }
}

/// Carries an exchange's messages over the msgpack stream: each goes out
/// as an item of the request's stream; the client's answer comes back as
/// a continuation under the request's seq.
struct Continuations<'r> {
    r: &'r mut Responder,
    rx: Option<tokio::sync::mpsc::Receiver<Value>>,
}

impl Continuations<'_> {
    /// Sends `msg` and waits for the answer until `deadline` (Unix ms).
    async fn carry(&mut self, msg: Msg, deadline: u64) -> Result<Value, NoAnswer> {
        let conn = self.r.conn().clone();
        let seq = self.r.seq();
        let rx = self.rx.get_or_insert_with(|| conn.open_continuation(seq));
        self.r.item(msg).await;
        let wait = Duration::from_millis(deadline.saturating_sub(conn.state.now_ms()));
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => Err(NoAnswer::Abandoned),
            Err(_) => Err(NoAnswer::Timeout(wait)),
        }
    }
}

/// Why an exchange's message got no answer.
enum NoAnswer {
    /// The client went away (or the request ended).
    Abandoned,
    /// Not within the wait.
    Timeout(Duration),
}

impl Carrier for Continuations<'_> {
    async fn ask(&mut self, ask: Ask) -> Result<LoginAnswer, String> {
        match self.carry(ask.msg, ask.deadline).await {
            Ok(answer) => Ok(LoginAnswer::from_msgpack(answer)),
            Err(NoAnswer::Abandoned) => Err("the exchange was abandoned".into()),
            Err(NoAnswer::Timeout(wait)) => {
                Err(format!("no answer within {} ms", wait.as_millis()))
            }
        }
    }
}

/// Logs the connection in: decodes the request, drives the [`Login`]
/// with its challenges carried as stream items and the client's answers
/// as continuations under the request's seq, then installs the session.
pub(super) async fn auth(msg: &Value, r: &mut Responder) -> ApiResult {
    let state = r.conn().state.clone();
    let conn = r.conn().clone();
    let session = conn.session();
    let requester = Requester {
        id: conn.id,
        peer: conn.peer,
        root: session.caller.root.clone(),
        channel_key: session.channel_key.clone(),
        via: "msgpack",
        // Both listeners speak TLS only once it is on.
        secure: state.tls_enabled(),
        binding: conn.binding.clone(),
        client_chain: conn.client_chain.clone(),
    };
    let request = LoginRequest::from_msgpack(&state, msg, requester)?;
    let progress = Login::begin(&state, request).await;
    let mut carrier = Continuations { r, rx: None };
    let granted = match drive_login(progress, &mut carrier).await {
        Ok(g) => g,
        Err(Refusal::Api(e)) => return Err(e),
        Err(Refusal::Failed(e)) => {
            let failures = conn.update_session(|s| {
                s.failed_logins += 1;
                s.failed_logins
            });
            if failures >= state.config.max_auth_attempts {
                conn.close();
                return Err(ApiError::new(
                    ErrorCode::TooManyAttempts,
                    format!("{failures} failed logins; closing the connection"),
                ));
            }
            return Err(auth_error(e));
        }
    };
    let Granted { user, reply, card } = *granted;
    let (id, expires_at, base) = (user.keycard, user.expires_at, user.domain.clone());
    let previous = conn.update_session(|s| {
        // A connection whose keycard was revoked is being closed: no new
        // login takes over from it.
        if s.caller.user.as_ref().and_then(|u| u.ended) == Some(Ended::Revoked) {
            return Err(Ended::Revoked.error());
        }
        s.failed_logins = 0;
        // A domain's user is confined to it from now on.
        s.caller.root = base;
        Ok(s.caller.user.replace(std::sync::Arc::new(user)))
    })?;
    // The session holds the keycard now: it is the session's to remove.
    card.settle();
    // A revocation (or the reaper) that took the keycard before the
    // session held it told nobody: tell the session now.
    if state.bouncer.table().show(id).is_none() {
        let how = match state.now_ms() >= expires_at {
            true => Ended::Expired,
            false => Ended::Revoked,
        };
        conn.ended(id, how);
    }
    // A new login on the connection replaces its keycard, and ends the
    // streams opened under it.
    if let Some(old) = previous {
        let ended = conn.keycard_given_up();
        state.bouncer.remove(old.keycard, conn.id);
        conn.send_all(ended).await;
    }
    // The method's last word (SCRAM's server signature), then end.
    match reply {
        Some(msg) => r.item(msg).await,
        None => r.start().await,
    }
    Ok(())
}

/// Creates or replaces an auth record. A user record needs the name's
/// turn and to outrank the user ([`crate::core::users::guard_user`]); a new one
/// starts clean and takes the user's bindings, or for a new user the
/// caller's ([`crate::core::users::record_ops`]); a changed credential ends the
/// user's other keycards. The reply never carries the old record (`prev`):
/// it may hold what `auth_get` does not show.
pub(super) async fn auth_set(msg: &Value, r: &mut Responder) -> ApiResult {
    let state = r.conn().state.clone();
    let m = method(&state, msg)?.clone();
    let k = kind(m.as_ref(), msg)?;
    let ident = user_name(str_field(msg, "ident")?)?.to_owned();
    // A user may change the credential it logged in with (that very
    // record, by its own method: not a token's session, not another
    // method), with a recent login, as over REST; anything else needs
    // write_auth, and a `root` user (super-root) a super-root.
    let caller = r.conn().caller();
    let path = caller.root.join(&record_path(m.name(), k.name, &ident));
    let own = k.name == "user"
        && !m.super_root()
        && caller.user.as_ref().is_some_and(|u| {
            u.is_named(&ident, &caller.root) && u.method == m.name() && u.record == path
        });
    let session = if own {
        let s = require_login(r)?;
        crate::core::users::fresh_enough(&state, &s, &ident)?;
        s
    } else if m.super_root() {
        require_super_root(r)?
    } else {
        require_cap(r, Capability::WriteAuth)?
    };
    let channel_key = r.conn().session().channel_key;
    let ctx = LoginCtx {
        channel_key: channel_key.as_ref(),
        now_ms: state.now_ms(),
        ..LoginCtx::default()
    };
    let step = m.set_record(&ctx, k, &ident, msg);
    let record = drive(r, step).await?;
    let cond = condition(&state, msg)?;
    let nchain = opt_usize(msg, "nchain")?.unwrap_or(1);
    let by = session.user.as_ref().map(|u| u.qualified());
    let (out, existed) = match k.name {
        "user" => {
            let (turn, found) = crate::core::users::guard_user(&state, &session, &ident).await?;
            // One's own record is changed, never re-created once gone.
            if own && !found.iter().any(|(_, at, _)| *at == path) {
                return Err(ApiError::new(ErrorCode::NotFound, "no such user"));
            }
            let (ops, existed) = crate::core::users::record_ops(
                &state,
                &session,
                &path,
                &found,
                record.clone(),
                cond,
                None,
            )
            .await?;
            let out = state.store.write(ops).await?;
            drop(turn);
            (out, existed)
        }
        _ => {
            let op = super::data::node_op(msg, path, Some(record.clone()), cond);
            (state.store.write(vec![op]).await?, false)
        }
    };
    let out = out
        .first()
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "store returned no outcome"))?;
    let mut reply = super::data::write_reply(&state, out, Some(&record), (true, false), nchain);
    // What the method adds (TOTP's provisioning URI), after the write.
    if let Value::Map(extra) = m.set_reply(k, &ident, &record).into_value() {
        for (key, value) in extra {
            if let Some(key) = key.as_str() {
                reply.set(key, value);
            }
        }
    }
    super::refresh_auth(&state, Some(r.conn())).await?;
    let who = crate::caller::qualify(&ident, &session.root);
    state
        .audit
        .user(
            &format!("auth record set ({})", k.name),
            &who,
            Some(m.name()),
            by.as_deref(),
        )
        .await;
    if existed {
        // A changed credential ends the user's other sessions, on every
        // path (the caller's own goes on).
        let keep = session.user.as_ref().map(|u| u.keycard);
        crate::core::users::credential_changed(&state, &session.root, &ident, keep, by.as_deref())
            .await?;
    }
    if r.is_done() {
        return Ok(());
    }
    // After a dialogue the result is the stream's last item.
    if r.is_started() {
        r.item(reply).await;
    } else {
        r.reply(reply).await;
    }
    Ok(())
}

/// Shows what may be shown of an auth record.
pub(super) async fn auth_get(msg: &Value, r: &mut Responder) -> ApiResult {
    let session = require_cap(r, Capability::ReadAuth)?;
    let state = r.conn().state.clone();
    let m = method(&state, msg)?.clone();
    let k = kind(m.as_ref(), msg)?;
    let ident = str_field(msg, "ident")?;
    let path = session.root.join(&record_path(m.name(), k.name, ident));
    let Some(entry) = state.store.get(&path).await? else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no {} record {ident:?} for method {}", k.name, m.name()),
        ));
    };
    let mut reply = m.show_record(k, &entry.value);
    if opt_usize(msg, "nchain")?.unwrap_or(0) > 0 {
        reply.set("chain", chain(&state, entry.tock));
    }
    r.reply(reply).await;
    Ok(())
}

/// Lists auth records: one (`ident` given) or all of a method's kind as a
/// stream.
pub(super) async fn auth_list(msg: &Value, r: &mut Responder) -> ApiResult {
    let session = require_cap(r, Capability::ReadAuth)?;
    let state = r.conn().state.clone();
    if msg.get("typ").is_none() {
        r.start().await;
        for name in state.methods.names() {
            r.item(Msg::new().with("typ", name)).await;
        }
        return Ok(());
    }
    let m = method(&state, msg)?.clone();
    let k = kind(m.as_ref(), msg)?;
    let nchain = opt_usize(msg, "nchain")?.unwrap_or(0);
    let item = |ident: Value, tock| {
        let mut it = Msg::new()
            .with("typ", m.name())
            .with("kind", k.name)
            .with("ident", ident);
        if nchain > 0 {
            it.set("chain", chain(&state, tock));
        }
        it
    };
    if let Some(ident) = msg.get("ident") {
        let ident = ident
            .as_str()
            .ok_or_else(|| ApiError::bad("'ident' must be a string"))?;
        let path = session.root.join(&record_path(m.name(), k.name, ident));
        let Some(entry) = state.store.get(&path).await? else {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no {} record {ident:?}", k.name),
            ));
        };
        r.reply(item(Value::from(ident), entry.tock)).await;
        return Ok(());
    }
    let base = session
        .root
        .join(&auth_root().child(m.name()).child(k.name));
    let opts = ScanOpts {
        min_depth: 1,
        max_depth: Some(1),
    };
    r.start().await;
    let mut pos = super::tree::Pos::Start;
    loop {
        let page = state.store.scan(&base, opts, pos.after(), 256).await?;
        for (p, e) in &page.items {
            if let Some(last) = p.elems().last() {
                r.item(item(last.to_value(), e.tock)).await;
            }
        }
        match page.next {
            Some(c) => pos = super::tree::Pos::Cursor(c),
            None => break,
        }
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// `(nil, "auth")`, as DistKV's `auth_info` returns it.
pub(super) async fn auth_info(msg: &Value, r: &mut Responder) -> ApiResult {
    let session = require_login(r)?;
    let state = r.conn().state.clone();
    let entry = state.store.get(&session.root.join(&auth_root())).await?;
    let nchain = opt_usize(msg, "nchain")?.unwrap_or(0);
    r.reply(super::entry_msg(&state, entry, nchain)).await;
    Ok(())
}

/// A second factor (`totp`) is never a way in on its own: it cannot be
/// the current method nor an accepted one.
fn second_factor_refused(state: &ServerState, method: &str) -> ApiResult {
    match state.methods.get(method) {
        Some(m) if m.info().second_factor => Err(ApiError::new(
            ErrorCode::AuthMethod,
            format!("method {method:?} is a second factor: it cannot be a way in on its own"),
        )),
        _ => Ok(()),
    }
}

/// Makes a method current (`typ: nil` opens the server again). The method
/// must have a user first, so nobody locks themselves out.
pub(super) async fn set_auth_typ(msg: &Value, r: &mut Responder) -> ApiResult {
    let session = require_super_root(r)?;
    let state = r.conn().state.clone();
    let typ = match msg.get("typ") {
        None => return Err(ApiError::bad("missing field 'typ'")),
        Some(Value::Nil) => None,
        Some(_) => Some(method(&state, msg)?.name()),
    };
    let at = session.root.join(&auth_root());
    if let Some(t) = typ {
        second_factor_refused(&state, t)?;
        if users_of(&state, &at, t, 1).await?.is_empty() {
            return Err(ApiError::bad(format!(
                "method {t:?} has no user yet: create one with auth_set before making it current"
            )));
        }
    }
    // Further methods to accept, each with a user (no lock-out either).
    let accept = match msg.get("accept") {
        None => None,
        Some(Value::Array(items)) => {
            let mut names = Vec::new();
            for item in items {
                let name = item
                    .as_str()
                    .ok_or_else(|| ApiError::bad("'accept' must be a list of method names"))?;
                let m = state.methods.get(name).ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::AuthMethod,
                        format!("unknown auth method {name:?}"),
                    )
                })?;
                second_factor_refused(&state, m.name())?;
                if users_of(&state, &at, m.name(), 1).await?.is_empty() {
                    return Err(ApiError::bad(format!("method {name:?} has no user yet")));
                }
                names.push(Value::from(m.name()));
            }
            Some(names)
        }
        Some(_) => return Err(ApiError::bad("'accept' must be a list of method names")),
    };
    // Keep whatever else the record holds.
    let old = state.store.get(&at).await?;
    let mut fields: Vec<(Value, Value)> = match old.as_ref().map(|e| &e.value) {
        Some(Value::Map(m)) => m
            .iter()
            .filter(|(k, _)| {
                k.as_str() != Some("current") && !(accept.is_some() && k.as_str() == Some("accept"))
            })
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    fields.push(("current".into(), Value::from(typ)));
    if let Some(a) = accept {
        fields.push(("accept".into(), Value::Array(a)));
    }
    let cond = match &old {
        Some(e) => Cond::TockIs(e.tock),
        None => Cond::Absent,
    };
    let value = Value::Map(fields);
    let op = Op::Put {
        path: at.clone(),
        value: value.clone(),
        cond,
        idem: false,
    };
    // The user counted above must still be there when this commits.
    let out = write_guarded(&state, &at, &[(&at, Some(&value))], vec![op]).await?;
    super::refresh_auth(&state, Some(r.conn())).await?;
    methods_withdrawn(
        &state,
        &session,
        old.as_ref().map(|e| &e.value),
        Some(&value),
    )
    .await;
    match typ {
        Some(t) => tracing::warn!(method = t, "auth is now required: method {t} is current"),
        None => tracing::warn!("auth switched off: the server is open to every client"),
    }
    let tock = out.first().map_or(0, |o| o.tock.0);
    r.reply(Msg::new().with("changed", true).with("tock", tock))
        .await;
    Ok(())
}

/// The auth configuration of `session`'s root changed from `old` to
/// `new` (the `(…, nil, "auth")` records): the logins of the methods it no
/// longer accepts end now (their keycards, REST sessions and logins under
/// way), but the caller's own — withdrawing a method (closing the hole an
/// `accept` of `root` opened, retiring a method) withdraws what it let
/// in, not only what it would let in next. Tokens are accepted while any
/// method is current and stay.
pub(super) async fn methods_withdrawn(
    state: &ServerState,
    session: &crate::caller::Caller,
    old: Option<&Value>,
    new: Option<&Value>,
) {
    let (old, new) = (
        crate::state::AuthConfig::from_record(old),
        crate::state::AuthConfig::from_record(new),
    );
    let keep = session.user.as_ref().map(|u| u.keycard);
    let by = session.user.as_ref().map(|u| u.qualified());
    for m in state.methods.names() {
        if !old.accepts(m) || new.accepts(m) {
            continue;
        }
        let filter = keycard_auth::bouncer::Filter {
            method: Some(m.to_owned()),
            domain: Some(crate::caller::domain_text(&session.root)),
            ..Default::default()
        };
        let ids: Vec<_> = state
            .bouncer
            .table()
            .list(&filter, None, usize::MAX)
            .into_iter()
            .map(|c| c.id)
            .filter(|id| Some(*id) != keep)
            .collect();
        for id in ids {
            if let Some(card) = state.bouncer.revoke(id) {
                state.keycard_revoked(&card, by.as_deref()).await;
            }
        }
        tracing::warn!(method = m, "logins by a method no longer accepted ended");
    }
}

/// Who this connection is logged in as (keycard's own action).
pub(super) async fn whoami(r: &mut Responder) -> ApiResult {
    let session = r.conn().caller();
    let open = r.conn().state.is_open();
    let mut m = Msg::new().with("root", session.root.to_value());
    match &session.user {
        Some(u) => {
            m.set("user", u.name.as_str());
            m.set("method", u.method.as_str());
            m.set("super_root", u.has(Capability::SuperRoot) || open);
            // Whether the login agreed a key for signing requests.
            m.set("session_key", u.session_key.is_some());
            m.set("keycard", u.keycard.to_string());
            m.set("domain", u.domain.to_value());
            m.set("expires_at", u.expires_at);
            let caps: Vec<Value> = Capability::ALL
                .into_iter()
                .filter(|c| u.has(*c) || open)
                .map(|c| Value::from(c.name()))
                .collect();
            m.set("caps", Value::Array(caps));
        }
        None => m.set("super_root", open),
    }
    r.reply(m).await;
    Ok(())
}

/// Agrees a key for sealing passwords (once per connection): DistKV's
/// finite-field Diffie-Hellman (`pubkey`, `length`), or X25519 with
/// `typ: "x25519"`. Needs no login, as in DistKV.
pub(super) async fn diffie_hellman(msg: &Value, r: &mut Responder) -> ApiResult {
    if r.conn().session().channel_key.is_some() {
        return Err(ApiError::bad("diffie_hellman runs once per connection"));
    }
    let pubkey = msg
        .get("pubkey")
        .and_then(Value::as_bin)
        .ok_or_else(|| ApiError::bad("'pubkey' must be bytes"))?
        .to_vec();
    let x25519 = match msg.get("typ") {
        None | Some(Value::Nil) => false,
        Some(Value::Str(t)) if t == "modp" => false,
        Some(Value::Str(t)) if t == "x25519" => true,
        Some(_) => {
            return Err(ApiError::bad(
                "'typ' must be \"modp\" (DistKV's) or \"x25519\"",
            ))
        }
    };
    let length = match msg.get("length") {
        None => 1024,
        Some(v) => v
            .as_u64()
            .filter(|l| *l <= 65536)
            .ok_or_else(|| ApiError::bad("'length' must be an integer up to 65536"))?,
    };
    let state = r.conn().state.clone();
    let agreed = state
        .run_work(move || {
            if x25519 {
                keycard_auth::channel::x25519_respond(&pubkey)
            } else {
                keycard_auth::channel::modp_respond(&pubkey, length)
            }
        })
        .await
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "the crypto workers are unavailable"))?;
    let (server_public, key) = agreed.map_err(auth_error)?;
    let fresh = r.conn().update_session(|s| match s.channel_key {
        Some(_) => false,
        None => {
            s.channel_key = Some(key);
            true
        }
    });
    if !fresh {
        return Err(ApiError::bad("diffie_hellman runs once per connection"));
    }
    r.reply(Msg::new().with("pubkey", Value::Bin(server_public)))
        .await;
    Ok(())
}

/// The last `n` audit events (default 100, at most 10000), oldest first,
/// each a JSON text. Needs the read_auth capability (the README's and
/// docs/PROTOCOL.md's word): reading the log is reading auth data.
pub(super) async fn audit_tail(msg: &Value, r: &mut Responder) -> ApiResult {
    let session = require_cap(r, Capability::ReadAuth)?;
    // The log is the server's, every domain's logins in it: a domain's
    // users (its root included) do not read it.
    if session.user.as_ref().is_some_and(|u| !u.domain.is_empty()) {
        return Err(ApiError::new(
            ErrorCode::PermissionDenied,
            "the audit log is the server's; a domain's users cannot read it",
        ));
    }
    let n = opt_usize(msg, "n")?.unwrap_or(100).min(10_000);
    let state = r.conn().state.clone();
    let lines = state.audit.tail(n).await.map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("cannot read the audit log: {e}"),
        )
    })?;
    r.reply(Msg::new().with(
        "result",
        Value::Array(lines.into_iter().map(Value::from).collect()),
    ))
    .await;
    Ok(())
}

/// Deletes an auth record (a user or group), refusing to delete the last
/// user of the current method. `root`'s user needs super-root, others the
/// write_auth capability.
pub(super) async fn auth_delete(msg: &Value, r: &mut Responder) -> ApiResult {
    let state = r.conn().state.clone();
    let m = method(&state, msg)?.clone();
    let session = if m.super_root() {
        require_super_root(r)?
    } else {
        require_cap(r, Capability::WriteAuth)?
    };
    let k = kind(m.as_ref(), msg)?;
    let ident = str_field(msg, "ident")?;
    let auth_at = session.root.join(&auth_root());
    let path = session.root.join(&record_path(m.name(), k.name, ident));
    let turn = match k.name {
        "user" => Some(
            crate::core::users::guard_user(&state, &session, ident)
                .await?
                .0,
        ),
        _ => None,
    };
    // The record and its aux nodes go together.
    let mut ops = vec![Op::delete(path.clone())];
    for aux in crate::core::users::AUX {
        ops.push(Op::delete(path.child(aux)));
    }
    let out = {
        // No last-login flush may write a mark back between the two.
        let _flush = state.logins.exclusive().await;
        let out = write_guarded(&state, &auth_at, &[(&path, None)], ops).await?;
        state.logins.forget(&path);
        out
    };
    drop(turn);
    super::refresh_auth(&state, Some(r.conn())).await?;
    let changed = out.first().is_some_and(|o| o.changed);
    if !changed {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no {} record {ident:?}", k.name),
        ));
    }
    let by = session.user.as_ref().map(|u| u.qualified());
    let mut revoked = 0;
    if k.name == "user" {
        revoked = record_deleted(&state, &session.root, ident, m.name(), by.as_deref()).await?;
    }
    let who = crate::caller::qualify(ident, &session.root);
    state
        .audit
        .user(
            &format!("auth record deleted ({})", k.name),
            &who,
            Some(m.name()),
            by.as_deref(),
        )
        .await;
    tracing::debug!(revoked, "keycards of a deleted record revoked");
    let tock = out.first().map_or(0, |o| o.tock.0);
    r.reply(Msg::new().with("changed", true).with("tock", tock))
        .await;
    Ok(())
}

/// A user record of `method` under `root` was deleted: the user's keycards
/// of that method end now, and its tokens (a token names a user, and a
/// user of that name created later must not inherit them). Returns how
/// many were revoked.
pub(super) async fn record_deleted(
    state: &ServerState,
    root: &Path,
    ident: &str,
    method: &str,
    by: Option<&str>,
) -> ApiResult<usize> {
    let mut revoked = 0;
    for m in [method, super::keycards::TOKEN] {
        let filter = keycard_auth::bouncer::Filter {
            user: Some(ident.to_owned()),
            domain: (!root.is_empty()).then(|| crate::caller::domain_text(root)),
            method: Some(m.to_owned()),
            ..Default::default()
        };
        revoked += super::keycards::revoke_matching(state, &filter, by).await?;
    }
    Ok(revoked)
}
