//! Auth actions: `auth` (log in), `auth_get`, `auth_set`, `auth_list`,
//! `auth_info`, `set_auth_typ`. The exchanges themselves are the methods'
//! sans-IO state machines; this module carries their messages, looks up and
//! stores their records, and keeps the session.

use std::time::Duration;

use keycard_auth::bouncer::{KeycardId, Lifetime};
use keycard_auth::{AuthError, Kind, LoginCtx, Method, Step};
use keycard_proto::{ErrorCode, Msg, Path, Value};
use keycard_store::{Cond, Op, ScanOpts};

use super::data::write_value;
use super::keycards::{self, TOKEN};
use super::{chain, opt_usize, require_cap, require_login, require_super_root, str_field};
use crate::bouncer::Ended;
use crate::conn::{Capability, LoggedIn, Responder};
use crate::error::{ApiError, ApiResult};
use crate::state::{auth_root, record_path, ServerState};
use crate::throttle;

/// How long the server waits for the client's next message in a
/// multi-step exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

const CHALLENGE_EXPIRED: &str = "the login's challenge window has passed";

fn method<'a>(state: &'a ServerState, msg: &Value) -> ApiResult<&'a std::sync::Arc<dyn Method>> {
    let typ = str_field(msg, "typ")?;
    state.methods.get(typ).ok_or_else(|| {
        ApiError::new(
            ErrorCode::AuthMethod,
            format!("unknown auth method {typ:?}"),
        )
    })
}

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

/// Why an exchange did not finish.
enum Failure {
    /// The method said no (counts as a failed login).
    Auth(AuthError),
    /// The server could not run it (never counts as a failed login).
    Server(ApiError),
}

/// Runs an exchange to its end, carrying its messages as stream items and
/// the client's answers as continuations under the request's seq, and its
/// heavy work on the server's bounded worker pool.
async fn drive<T: Send + 'static>(
    r: &mut Responder,
    mut step: Step<T>,
    card: Option<KeycardId>,
) -> Result<T, Failure> {
    let mut cont = None;
    loop {
        match step {
            Step::Done(t) => return Ok(t),
            Step::Fail(e) => return Err(Failure::Auth(e)),
            Step::Work(work) => {
                let state = r.conn().state.clone();
                step = state.run_work(work).await.ok_or_else(|| {
                    Failure::Server(ApiError::new(
                        ErrorCode::Internal,
                        "the hashing workers are unavailable",
                    ))
                })?;
            }
            Step::Send(msg, next) => {
                // A login's challenge is bound to its keycard and must be
                // answered within the keycard's window.
                let wait = match card {
                    Some(id) => {
                        let deadline = r.conn().state.bouncer.challenged(id).map_err(|_| {
                            Failure::Auth(AuthError::Malformed(CHALLENGE_EXPIRED.into()))
                        })?;
                        Duration::from_millis(deadline.saturating_sub(crate::audit::now_millis()))
                    }
                    None => EXCHANGE_TIMEOUT,
                };
                let rx = cont.get_or_insert_with(|| r.conn().open_continuation(r.seq()));
                r.item(msg).await;
                let answer = match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(Some(a)) => a,
                    Ok(None) => {
                        return Err(Failure::Auth(AuthError::Malformed(
                            "the exchange was abandoned".into(),
                        )))
                    }
                    Err(_) => {
                        return Err(Failure::Auth(AuthError::Malformed(format!(
                            "no answer within {} ms",
                            wait.as_millis()
                        ))))
                    }
                };
                step = next.next(&answer);
            }
        }
    }
}

fn failure(f: Failure) -> ApiError {
    match f {
        Failure::Auth(e) => auth_error(e),
        Failure::Server(e) => e,
    }
}

fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::Failed => ApiError::new(ErrorCode::AuthFailed, "login failed"),
        AuthError::Malformed(t) => ApiError::bad(t),
        AuthError::Unsupported(t) => ApiError::bad(t),
    }
}

/// Longest user name, in bytes. Names key throttle counters and records:
/// a longer one is refused before anything is stored.
pub(crate) const MAX_USER_NAME: usize = 256;

/// `name`, if it is an acceptable user name (at most [`MAX_USER_NAME`]
/// bytes). The same rule for every name, known or not, so it reveals
/// nothing.
fn user_name(name: &str) -> ApiResult<&str> {
    if name.len() > MAX_USER_NAME {
        return Err(ApiError::bad(format!(
            "user names are at most {MAX_USER_NAME} bytes"
        )));
    }
    Ok(name)
}

/// Logs the connection in.
pub(super) async fn auth(msg: &Value, r: &mut Responder) -> ApiResult {
    let state = r.conn().state.clone();
    // A token is a keycard issued earlier: it is accepted whatever the
    // current method (only a keycard manager can issue one).
    let token = match str_field(msg, "typ")? {
        TOKEN => Some(match msg.get("token") {
            Some(Value::Str(t)) if t.len() <= 256 => t.clone(),
            _ => return Err(ApiError::bad("'token' must be a string (the bearer token)")),
        }),
        _ => None,
    };
    let m = match token {
        Some(_) => None,
        None => Some(method(&state, msg)?.clone()),
    };
    let method_name: &'static str = m.as_ref().map_or(TOKEN, |m| m.name());
    // The domain: the connection's root, or one below it (`chroot`), with
    // its own users, ACLs and methods under `domain + (nil, …)`.
    let base = {
        let root = r.conn().session().root;
        match msg.get("chroot") {
            None | Some(Value::Nil) => root,
            Some(v) => {
                let rel = Path::from_value(v)?;
                if !super::is_data_path(rel.elems()) {
                    return Err(ApiError::new(
                        ErrorCode::ReservedPath,
                        "a domain's path cannot hold a nil element",
                    ));
                }
                let full = root.join(&rel);
                if full.len() > keycard_proto::MAX_PATH_LEN
                    || full.to_key().len() > super::MAX_KEY_BYTES
                {
                    return Err(ApiError::bad("the domain's path is too long"));
                }
                full
            }
        }
    };
    let cfg = if base.is_empty() {
        state.auth()
    } else {
        domain_auth(&state, &base).await?
    };
    // A domain login that cannot succeed — no such domain (or one without
    // logins), or a method it does not take — runs the method against no
    // record and fails, counted, as a wrong password does: which domains
    // exist and what they accept is not for a stranger to learn (W3).
    let blind =
        !base.is_empty() && (cfg.current.is_none() || (m.is_some() && !cfg.accepts(method_name)));
    if !blind && !cfg.accepts(method_name) && m.is_some() {
        let list = cfg
            .current
            .iter()
            .chain(cfg.accept.iter())
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ApiError::new(
            ErrorCode::AuthMethod,
            format!(
                "method {method_name:?} is not accepted here; the accepted methods are: {list}",
            ),
        ));
    }
    let ident = match (&token, msg.get("ident")) {
        // Throttled and audited under the token's id, and only if it is
        // shaped as a token: never any of what may be a secret.
        (Some(t), _) => {
            keycards::token_id(t).map_or_else(|| TOKEN.to_owned(), |id| format!("kct_{id}"))
        }
        (None, Some(Value::Str(s))) => user_name(s)?.to_owned(),
        _ => return Err(ApiError::bad("'ident' (the user name) must be a string")),
    };
    // Throttling, audit and keycards know a domain's user as NAME@DOMAIN.
    let who = crate::conn::qualify(&ident, &base);
    // Throttle counters per (domain, user), without NAME@DOMAIN's
    // ambiguity (a server user may be called "joe@org.acme").
    let throttled_as = if base.is_empty() {
        ident.clone()
    } else {
        format!("{ident}\u{0}{base}")
    };
    let conn = r.conn().clone();
    let source = conn.peer.ip();
    let event = |outcome: &'static str, card: Option<KeycardId>| crate::audit::LoginEvent {
        conn: conn.id,
        source: conn.peer,
        method: method_name,
        user: &who,
        outcome,
        reason: None,
        keycard: card,
    };
    // Throttling comes first: a refused attempt costs no hashing.
    let counters = throttle::load(state.store.as_ref(), &throttled_as, source).await?;
    let now = crate::audit::now_millis();
    match throttle::decide(&state.config.throttle, &counters, now) {
        throttle::Decision::Refuse(retry) => {
            state.audit.login(event("throttled", None)).await;
            return Err(ApiError::new(
                ErrorCode::Throttled,
                format!(
                    "too many failed logins from this address; retry in {} s",
                    retry.as_secs()
                ),
            ));
        }
        throttle::Decision::Proceed(wait) if !wait.is_zero() => {
            tokio::time::sleep(wait).await;
        }
        throttle::Decision::Proceed(_) => {}
    }
    // The attempt's keycard: its id, state and challenge window live here,
    // on the server; the guard takes it out of the table if the attempt
    // ends any way but a success (including the client leaving).
    let mut pending = PendingCard::new(
        state.bouncer.clone(),
        state.bouncer.begin(
            method_name,
            &ident,
            &crate::conn::domain_text(&base),
            conn.id,
            Some(source),
        )?,
    );
    let card = Some(pending.id);
    let session = conn.session();
    let mut abandoned = None;
    let mut token_base = None;
    let (mut result, record_at, parent) = match (&m, &token) {
        (Some(m), _) => {
            let record_at = base.join(&record_path(m.name(), "user", &ident));
            let record = match blind {
                true => None,
                false => state.store.get(&record_at).await?.map(|e| e.value),
            };
            let ctx = LoginCtx {
                channel_key: session.channel_key.as_ref(),
            };
            let step = m.login(&ctx, &ident, msg, record.as_ref());
            // A challenge-response client learns from the challenge whether its
            // password was right (RFC 9807: count a login without a valid final
            // message as a failure). So count the failure before challenging; a
            // success clears it, and a client that vanishes mid-exchange is
            // audited as a failure.
            if matches!(step, Step::Send(..)) {
                let at = crate::audit::now_millis();
                throttle::record_failure(
                    state.store.as_ref(),
                    &state.config.throttle,
                    &throttled_as,
                    source,
                    &counters,
                    at,
                )
                .await?;
                abandoned = Some(AbandonGuard {
                    armed: true,
                    audit: state.audit.clone(),
                    conn: conn.id,
                    source: conn.peer,
                    method: m.name(),
                    user: ident.clone(),
                    keycard: card,
                });
            }
            (drive(r, step, card).await, record_at, None)
        }
        (None, Some(t)) => match keycards::check_token(&state, t).await? {
            Some(g) => {
                // The token's user must still exist (in its domain).
                let at = g.domain.join(&record_path(&g.user_method, "user", &g.user));
                token_base = Some(g.domain);
                let exists = state.store.get(&at).await?.is_some();
                let result = match exists {
                    true => Ok(keycard_auth::Verdict::user(g.user)),
                    false => Err(Failure::Auth(AuthError::Failed)),
                };
                (result, at, Some((g.id, g.expires_at)))
            }
            None => (Err(Failure::Auth(AuthError::Failed)), Path::root(), None),
        },
        (None, None) => return Err(ApiError::new(ErrorCode::Internal, "no method")),
    };
    if blind && result.is_ok() {
        result = Err(Failure::Auth(AuthError::Failed));
    }
    let base = token_base.unwrap_or(base);
    // The verdict and the keycard's confirmation meet here, once: a
    // success after the challenge window is a failure.
    let mut granted = None;
    if let Ok(verdict) = &result {
        let mut life = lifetime(&state, method_name, &base, &record_at).await?;
        if let Some((_, until)) = parent {
            life = keycards::token_lifetime(life, until);
        }
        match state.bouncer.authenticate(
            pending.id,
            &verdict.user,
            &crate::conn::domain_text(&base),
            life,
            parent.map(|p| p.0),
        ) {
            Ok(c) => {
                // A token revoked since it was checked: its keycards were
                // revoked by parent, perhaps before this one had its
                // parent. (The guard removes this one.)
                let revoked = match parent {
                    Some((tid, _)) => !keycards::token_live(&state, tid).await?,
                    None => false,
                };
                match revoked {
                    true => result = Err(Failure::Auth(AuthError::Failed)),
                    false => granted = Some(c),
                }
            }
            Err(keycard_auth::bouncer::BouncerError::Expired) => {
                result = Err(Failure::Auth(AuthError::Malformed(
                    CHALLENGE_EXPIRED.into(),
                )));
            }
            Err(e) => {
                // The credentials were right; the user holds too many
                // keycards. Not a failed login.
                if let Some(g) = abandoned.take() {
                    g.disarm();
                }
                throttle::record_success(
                    state.store.as_ref(),
                    &throttled_as,
                    source,
                    &counters,
                    true,
                )
                .await?;
                return Err(e.into());
            }
        }
    }
    if result.is_err() {
        // A refused attempt leaves the table now.
        pending.refuse();
    }
    let precounted = abandoned.take().map(AbandonGuard::disarm).is_some();
    match result {
        Ok(verdict) => {
            throttle::record_success(
                state.store.as_ref(),
                &throttled_as,
                source,
                &counters,
                precounted,
            )
            .await?;
            state.audit.login(event("success", card)).await;
            let reply = verdict.reply;
            let Some(granted) = granted else {
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    "login without a keycard",
                ));
            };
            // The ACL bindings (the user's and its groups'), read now: a
            // new binding applies at the next login, as in DistKV.
            let acls = crate::acl::bound_acls(state.store.as_ref(), &base, &record_at).await?;
            // Granted capabilities: `(…, "caps")` → `{caps: [NAME…]}`.
            let caps = match state.store.get(&record_at.child("caps")).await? {
                Some(e) => match e.value.get("caps") {
                    Some(Value::Array(names)) => names
                        .iter()
                        .filter_map(Value::as_str)
                        .filter_map(Capability::parse)
                        .collect(),
                    _ => Vec::new(),
                },
                None => Vec::new(),
            };
            let previous = conn.update_session(|s| {
                // A connection whose keycard was revoked is being closed:
                // no new login takes over from it.
                if s.user.as_ref().and_then(|u| u.ended) == Some(Ended::Revoked) {
                    return Err(Ended::Revoked.error());
                }
                s.failed_logins = 0;
                // A domain's user is confined to it from now on.
                s.root = base.clone();
                Ok(s.user.replace(std::sync::Arc::new(LoggedIn {
                    method: method_name.into(),
                    name: verdict.user,
                    super_root: m.as_ref().is_some_and(|m| m.super_root()),
                    session_key: verdict.session_key,
                    acls,
                    caps,
                    domain: base.clone(),
                    keycard: granted.id,
                    expires_at: granted.expires_at,
                    ended: None,
                })))
            })?;
            // The session holds the keycard now: it is the session's to remove.
            pending.settle();
            // A revocation (or the reaper) that took the keycard before the
            // session held it told nobody: tell the session now.
            if state.bouncer.table().show(granted.id).is_none() {
                let how = match crate::audit::now_millis() >= granted.expires_at {
                    true => Ended::Expired,
                    false => Ended::Revoked,
                };
                conn.keycard_ended(granted.id, how);
            }
            // A new login on the connection replaces its keycard, and ends
            // the streams opened under it.
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
        Err(Failure::Server(e)) => {
            state
                .audit
                .login(crate::audit::LoginEvent {
                    reason: Some(&e.text),
                    ..event("error", card)
                })
                .await;
            Err(e)
        }
        Err(Failure::Auth(e)) => {
            // Now, not when the attempt began: a delayed attempt's failure
            // must start the next wait from its end.
            if !precounted {
                let at = crate::audit::now_millis();
                throttle::record_failure(
                    state.store.as_ref(),
                    &state.config.throttle,
                    &throttled_as,
                    source,
                    &counters,
                    at,
                )
                .await?;
            }
            let reason = e.to_string();
            state
                .audit
                .login(crate::audit::LoginEvent {
                    reason: Some(&reason),
                    ..event("failure", card)
                })
                .await;
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
            Err(auth_error(e))
        }
    }
}

/// Audits a login whose client went away in the middle of the exchange
/// (the request future was dropped with the connection).
struct AbandonGuard {
    armed: bool,
    audit: crate::audit::Audit,
    conn: u64,
    source: std::net::SocketAddr,
    method: &'static str,
    user: String,
    keycard: Option<KeycardId>,
}

impl AbandonGuard {
    /// The exchange ended; nothing to report from here.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let audit = self.audit.clone();
        let (conn, source, method, user, keycard) = (
            self.conn,
            self.source,
            self.method,
            std::mem::take(&mut self.user),
            self.keycard,
        );
        // Drop cannot wait; the audit write goes on in its own task.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                audit
                    .login(crate::audit::LoginEvent {
                        conn,
                        source,
                        method,
                        user: &user,
                        outcome: "failure",
                        reason: Some("the client left after the challenge"),
                        keycard,
                    })
                    .await;
            });
        }
    }
}

/// The auth configuration of the domain at `base` (`base + (nil,
/// "auth")`).
async fn domain_auth(state: &ServerState, base: &Path) -> ApiResult<crate::state::AuthConfig> {
    let entry = state.store.get(&base.join(&auth_root())).await?;
    Ok(crate::state::AuthConfig::from_record(
        entry.map(|e| e.value).as_ref(),
    ))
}

/// A login attempt's keycard until the session holds it: dropped before
/// that — the attempt failed, the request was cancelled or the client left
/// (at any await, also after the verdict), a store error — it leaves the
/// table, whatever its state; settled, it is the session's.
struct PendingCard {
    bouncer: std::sync::Arc<crate::bouncer::Bouncer>,
    id: KeycardId,
    settled: bool,
}

impl PendingCard {
    fn new(bouncer: std::sync::Arc<crate::bouncer::Bouncer>, id: KeycardId) -> PendingCard {
        PendingCard {
            bouncer,
            id,
            settled: false,
        }
    }

    /// The session holds the keycard: removing it is the session's
    /// business (logout, a new login, the connection closing).
    fn settle(mut self) {
        self.settled = true;
    }

    /// The attempt failed: the keycard leaves the table now.
    fn refuse(&mut self) {
        if !self.settled {
            self.settled = true;
            self.bouncer.refuse(self.id);
        }
    }
}

impl Drop for PendingCard {
    fn drop(&mut self) {
        self.refuse();
    }
}

/// The lifetime of a login by `method` for the user at `record_at`: the
/// configured one, the method's (`[keycards.method_duration]`), then the
/// user's own (`(…, "keycard")` → `{duration, max_lifetime}`, seconds),
/// never beyond the configured maximum lifetime.
async fn lifetime(
    state: &ServerState,
    method: &str,
    domain: &Path,
    record_at: &Path,
) -> ApiResult<Lifetime> {
    let cfg = &state.config.keycards;
    let cap = cfg.max_lifetime.saturating_mul(1000);
    let mut life = state.bouncer.lifetime();
    if let Some(d) = cfg.method_duration.get(method) {
        life.duration_ms = d.saturating_mul(1000);
    }
    // The domain's (`(nil, "auth")` → `keycard: {…}`), then the user's.
    let domain_says = state
        .store
        .get(&domain.join(&auth_root()))
        .await?
        .and_then(|e| e.value.get("keycard").cloned());
    let user_says = state
        .store
        .get(&record_at.child("keycard"))
        .await?
        .map(|e| e.value);
    for says in [domain_says, user_says].into_iter().flatten() {
        if let Some(d) = says.get("duration").and_then(Value::as_u64) {
            life.duration_ms = d.saturating_mul(1000);
        }
        if let Some(d) = says.get("max_lifetime").and_then(Value::as_u64) {
            life.max_lifetime_ms = d.saturating_mul(1000);
        }
    }
    life.max_lifetime_ms = life.max_lifetime_ms.min(cap);
    life.duration_ms = life.duration_ms.min(life.max_lifetime_ms);
    Ok(life)
}

/// Creates or replaces an auth record.
pub(super) async fn auth_set(msg: &Value, r: &mut Responder) -> ApiResult {
    let state = r.conn().state.clone();
    let m = method(&state, msg)?.clone();
    // A `root` user is super-root: only a super-root may create one.
    let session = if m.super_root() {
        require_super_root(r)?
    } else {
        require_cap(r, Capability::WriteAuth)?
    };
    let k = kind(m.as_ref(), msg)?;
    let ident = user_name(str_field(msg, "ident")?)?.to_owned();
    let ctx = LoginCtx {
        channel_key: session.channel_key.as_ref(),
    };
    let step = m.set_record(&ctx, k, &ident, msg);
    let record = drive(r, step, None).await.map_err(failure)?;
    let path = session.root.join(&record_path(m.name(), k.name, &ident));
    let reply = write_value(&state, msg, path, Some(record)).await?;
    state.refresh_auth().await?;
    tracing::info!(
        target: "keycard::audit",
        conn = r.conn().id, method = m.name(), kind = k.name, ident = %ident, "auth record set"
    );
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
    r.reply(super::entry_msg(&state, entry.as_ref(), nchain))
        .await;
    Ok(())
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
        if count_users(&state, &at, t, 1).await? == 0 {
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
                if count_users(&state, &at, m.name(), 1).await? == 0 {
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
    let out = state
        .store
        .write(vec![Op::Put {
            path: at,
            value: Value::Map(fields),
            cond,
            idem: false,
        }])
        .await?;
    state.refresh_auth().await?;
    match typ {
        Some(t) => tracing::warn!(method = t, "auth is now required: method {t} is current"),
        None => tracing::warn!("auth switched off: the server is open to every client"),
    }
    let tock = out.first().map_or(0, |o| o.tock.0);
    r.reply(Msg::new().with("changed", true).with("tock", tock))
        .await;
    Ok(())
}

/// Who this connection is logged in as (keycard's own action).
pub(super) async fn whoami(r: &mut Responder) -> ApiResult {
    let session = r.conn().session();
    let open = r.conn().state.auth().current.is_none();
    let mut m = Msg::new().with("root", session.root.to_value());
    match &session.user {
        Some(u) => {
            m.set("user", u.name.as_str());
            m.set("method", u.method.as_str());
            m.set("super_root", u.super_root || open);
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

/// How many users (at most `limit`) method `method` has under the auth
/// root `at`.
async fn count_users(
    state: &ServerState,
    at: &Path,
    method: &str,
    limit: usize,
) -> ApiResult<usize> {
    let users = at.child(method).child("user");
    let opts = ScanOpts {
        min_depth: 1,
        max_depth: Some(1),
    };
    Ok(state.store.scan_up_to(&users, opts, limit).await?.len())
}

/// Refuses a management write that would leave nobody able to log in: a
/// current method that is unknown or has no user. `value` is the node's new
/// value, `None` for a deletion. (Deleting `(nil, "auth")` itself is not a
/// lock-out: it opens the server.)
pub(super) async fn guard_lockout(
    state: &ServerState,
    auth_at: &Path,
    path: &Path,
    value: Option<&Value>,
) -> ApiResult {
    let lockout = |why: String| {
        Err(ApiError::new(
            ErrorCode::Conflict,
            format!("refused: {why}; nobody could log in"),
        ))
    };
    if path == auth_at {
        if let Some(m) = value.and_then(|v| v.get("current")).and_then(Value::as_str) {
            if state.methods.get(m).is_none() {
                return lockout(format!("{m:?} is not a loaded auth method"));
            }
            if count_users(state, auth_at, m, 1).await? == 0 {
                return lockout(format!("method {m:?} has no user"));
            }
        }
        return Ok(());
    }
    let Some(rest) = path.strip_prefix(auth_at) else {
        return Ok(());
    };
    if value.is_some() || rest.len() != 3 || rest.elems()[1] != keycard_proto::Elem::from("user") {
        return Ok(());
    }
    let current = state.store.get(auth_at).await?.and_then(|e| {
        e.value
            .get("current")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let method = match &rest.elems()[0] {
        keycard_proto::Elem::Str(m) => m.clone(),
        _ => return Ok(()),
    };
    if current.as_deref() == Some(method.as_str())
        && count_users(state, auth_at, &method, 2).await? < 2
    {
        return lockout(format!(
            "that is the last user of the current method {method:?}"
        ));
    }
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
/// each a JSON text. Needs the read_auth capability.
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
    guard_lockout(&state, &auth_at, &path, None).await?;
    // The record and its aux nodes (acl, caps) go together.
    let mut ops = vec![Op::delete(path.clone())];
    for aux in ["acl", "caps"] {
        ops.push(Op::delete(path.child(aux)));
    }
    let out = state.store.write(ops).await?;
    state.refresh_auth().await?;
    let changed = out.first().is_some_and(|o| o.changed);
    if !changed {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no {} record {ident:?}", k.name),
        ));
    }
    tracing::info!(target: "keycard::audit", conn = r.conn().id, method = m.name(), kind = k.name, ident = %ident, "auth record deleted");
    r.reply(Msg::new().with("changed", true).with("tock", out[0].tock.0))
        .await;
    Ok(())
}
