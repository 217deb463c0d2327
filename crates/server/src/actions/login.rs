//! Logging in, whatever carries the exchange. [`Login::begin`] takes the
//! client's first message and either finishes or returns a challenge to
//! carry, with the [`Login`] to resume with the client's answer
//! ([`Login::answer`]). The msgpack `auth` action carries challenges as
//! stream items within one request; a front end that suspends the
//! exchange between requests (REST) keeps the `Login` bound to the
//! keycard's id.
//!
//! Everything that makes a login a login happens here, once: the domain
//! and method checks, throttling, the keycard and its challenge window,
//! counting a challenge as a failure until it succeeds, the audit events,
//! token checks, and the grants (ACLs, capabilities, lifetime).

use std::net::SocketAddr;
use std::sync::Arc;

use keycard_auth::bouncer::{BouncerError, KeycardId, Lifetime};
use keycard_auth::{AuthError, Exchange, LoginCtx, Method, SecretKey, Step, Verdict};
use keycard_proto::{ErrorCode, Msg, Path, Value};

use super::keycards::{self, TOKEN};
use super::str_field;
use crate::caller::LoggedIn;
pub(crate) use crate::core::users::{auth_error, user_name};
use crate::error::{ApiError, ApiResult};
use crate::state::{auth_root, record_path, ServerState};
use crate::throttle;

pub(crate) const CHALLENGE_EXPIRED: &str = "the login's challenge window has passed";

/// The registered method a request's `typ` names.
pub(crate) fn method<'a>(state: &'a ServerState, msg: &Value) -> ApiResult<&'a Arc<dyn Method>> {
    let typ = str_field(msg, "typ")?;
    state.methods.get(typ).ok_or_else(|| {
        ApiError::new(
            ErrorCode::AuthMethod,
            format!("unknown auth method {typ:?}"),
        )
    })
}

/// Who asks to log in: what the front end knows of its client.
pub(crate) struct Requester {
    /// The requester's id (the connection's), for the keycard.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The root its paths are under (a login may name a domain below it).
    pub root: Path,
    /// A key agreed with `diffie_hellman` (DistKV's `password` method).
    pub channel_key: Option<SecretKey>,
    /// The front end (`msgpack` or `rest`), for the user's last logins.
    pub via: &'static str,
}

/// How a login goes on.
pub(crate) enum Progress {
    /// Carry this challenge to the client and resume with its answer
    /// before `deadline` (Unix ms).
    Challenge {
        msg: Msg,
        deadline: u64,
        login: Box<Login>,
    },
    /// The login succeeded.
    Done(Box<Granted>),
}

/// A successful login, for the front end to install.
pub(crate) struct Granted {
    /// The session's user (its keycard, ACLs, capabilities, domain).
    pub user: LoggedIn,
    /// The method's last message (SCRAM's server signature).
    pub reply: Option<Msg>,
    /// The keycard, until the front end holds it: dropped unsettled, it
    /// leaves the table.
    pub card: PendingCard,
}

/// Why a login ended without a session.
pub(crate) enum Refusal {
    /// The credentials (or the exchange) failed: counted and audited.
    Failed(AuthError),
    /// Not a failed login: a bad request, throttling, too many keycards,
    /// a server error.
    Api(ApiError),
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Refusal {
        Refusal::Api(e)
    }
}

impl From<keycard_store::StoreError> for Refusal {
    fn from(e: keycard_store::StoreError) -> Refusal {
        Refusal::Api(e.into())
    }
}

/// Why an exchange did not finish.
enum Failure {
    /// The method said no (counts as a failed login).
    Auth(AuthError),
    /// The server could not run it (never counts as a failed login).
    Server(ApiError),
}

/// A login under way.
pub(crate) struct Login {
    state: Arc<ServerState>,
    requester: u64,
    peer: SocketAddr,
    via: &'static str,
    method: Option<Arc<dyn Method>>,
    method_name: &'static str,
    /// The user name as given (a token's id for a token).
    ident: String,
    /// NAME or NAME@DOMAIN, for the audit log.
    who: String,
    /// The attempt's place in the throttle counters (per (domain, user),
    /// unambiguous, and the client's source), until its end.
    throttle: Option<throttle::Reservation>,
    card: PendingCard,
    abandoned: Option<AbandonGuard>,
    /// The domain the login is to.
    base: Path,
    /// A login that cannot succeed (no such domain, a method it does not
    /// accept): it runs blind and fails like a wrong password.
    blind: bool,
    record_at: Path,
    /// A token login's ceiling: what its user held when it was issued.
    ceiling: Option<keycards::Ceiling>,
    next: Option<Box<dyn Exchange<Verdict>>>,
}

impl Login {
    /// Starts a login with the client's first message (`{typ, ident,
    /// chroot?, token?, …method fields}`).
    pub(crate) async fn begin(
        state: &Arc<ServerState>,
        req: &Requester,
        msg: &Value,
    ) -> Result<Progress, Refusal> {
        // A token is a keycard issued earlier: it is accepted whatever the
        // current method (only a keycard manager can issue one).
        let token = match str_field(msg, "typ")? {
            TOKEN => Some(match msg.get("token") {
                Some(Value::Str(t)) if t.len() <= 256 => t.clone(),
                _ => {
                    return Err(ApiError::bad("'token' must be a string (the bearer token)").into())
                }
            }),
            _ => None,
        };
        let m = match token {
            Some(_) => None,
            None => Some(method(state, msg)?.clone()),
        };
        let method_name: &'static str = m.as_ref().map_or(TOKEN, |m| m.name());
        // The domain: the requester's root, or one below it (`chroot`),
        // with its own users, ACLs and methods under `domain + (nil, …)`.
        let base = match msg.get("chroot") {
            None | Some(Value::Nil) => req.root.clone(),
            Some(v) => {
                let rel = Path::from_value(v).map_err(ApiError::from)?;
                if !super::is_data_path(rel.elems()) {
                    return Err(ApiError::new(
                        ErrorCode::ReservedPath,
                        "a domain's path cannot hold a nil element",
                    )
                    .into());
                }
                let full = req.root.join(&rel);
                if full.len() > keycard_proto::MAX_PATH_LEN
                    || full.to_key().len() > super::MAX_KEY_BYTES
                {
                    return Err(ApiError::bad("the domain's path is too long").into());
                }
                full
            }
        };
        let cfg = if base.is_empty() {
            state.auth()
        } else {
            domain_auth(state, &base).await?
        };
        // A domain login that cannot succeed — no such domain (or one
        // without logins), or a method it does not take — runs the method
        // against no record and fails, counted, as a wrong password does:
        // which domains exist and what they accept is not for a stranger
        // to learn (DESIGN §8.2, W3).
        let blind = !base.is_empty()
            && (cfg.current.is_none() || (m.is_some() && !cfg.accepts(method_name)));
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
            )
            .into());
        }
        let ident = match (&token, msg.get("ident")) {
            // Throttled and audited under the token's id, and only if it
            // is shaped as a token: never any of what may be a secret.
            (Some(t), _) => {
                keycards::token_id(t).map_or_else(|| TOKEN.to_owned(), |id| format!("kct_{id}"))
            }
            (None, Some(Value::Str(s))) => user_name(s)?.to_owned(),
            _ => return Err(ApiError::bad("'ident' (the user name) must be a string").into()),
        };
        let who = crate::caller::qualify(&ident, &base);
        // Throttle counters per (domain, user), without NAME@DOMAIN's
        // ambiguity (a server user may be called "joe@org.acme").
        let throttled_as = if base.is_empty() {
            ident.clone()
        } else {
            format!("{ident}\u{0}{base}")
        };
        let source = req.peer.ip();
        // Throttling comes first, and counts the attempt as it decides: a
        // refused attempt costs no hashing, and parallel attempts are each
        // counted before any runs.
        let reservation = match state.throttle.reserve(&throttled_as, source).await {
            Err(retry) => {
                state
                    .audit
                    .login(event(
                        req.id,
                        req.peer,
                        method_name,
                        &who,
                        "throttled",
                        None,
                    ))
                    .await;
                return Err(ApiError::new(
                    ErrorCode::Throttled,
                    format!(
                        "too many failed logins from this address; retry in {} s",
                        retry.as_secs()
                    ),
                )
                .with_retry_after(retry.as_secs().max(1))
                .into());
            }
            Ok((reservation, wait)) => {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                reservation
            }
        };
        // The attempt's keycard: its id, state and challenge window live
        // here, on the server; the guard takes it out of the table if the
        // attempt ends any way but a success (including the client
        // leaving).
        let card = PendingCard::new(
            state.bouncer.clone(),
            state.bouncer.begin(
                method_name,
                &ident,
                &crate::caller::domain_text(&base),
                req.id,
                Some(source),
            )?,
        );
        let mut login = Box::new(Login {
            state: state.clone(),
            requester: req.id,
            peer: req.peer,
            via: req.via,
            method: m.clone(),
            method_name,
            ident,
            who,
            throttle: Some(reservation),
            card,
            abandoned: None,
            base,
            blind,
            record_at: Path::root(),
            ceiling: None,
            next: None,
        });
        match (&m, &token) {
            (Some(m), _) => {
                login.record_at = login
                    .base
                    .join(&record_path(m.name(), "user", &login.ident));
                let record = match blind {
                    true => None,
                    false => state.store.get(&login.record_at).await?.map(|e| e.value),
                };
                let ctx = LoginCtx {
                    channel_key: req.channel_key.as_ref(),
                    now_ms: state.now_ms(),
                };
                login.ran();
                let step = m.login(&ctx, &login.ident, msg, record.as_ref());
                login.advance(step).await
            }
            (None, Some(t)) => {
                login.ran();
                let (result, parent) = match keycards::check_token(state, t).await? {
                    Some(g) => {
                        // The token's user must still exist (in its
                        // domain).
                        login.record_at =
                            g.domain.join(&record_path(&g.user_method, "user", &g.user));
                        login.base = g.domain;
                        login.ceiling = Some(g.ceiling);
                        let exists = state.store.get(&login.record_at).await?.is_some();
                        let result = match exists {
                            true => Ok(Verdict::user(g.user)),
                            false => Err(Failure::Auth(AuthError::Failed)),
                        };
                        (result, Some((g.id, g.expires_at)))
                    }
                    None => (Err(Failure::Auth(AuthError::Failed)), None),
                };
                login.finish(result, parent).await
            }
            (None, None) => Err(ApiError::new(ErrorCode::Internal, "no method").into()),
        }
    }

    /// The method starts: from here the attempt counts even if the
    /// client leaves.
    fn ran(&mut self) {
        if let Some(r) = self.throttle.as_mut() {
            r.ran();
        }
    }

    /// The method logging in.
    pub(crate) fn method_name(&self) -> &'static str {
        self.method_name
    }

    /// The attempt's keycard id (a REST session's id).
    pub(crate) fn card_id(&self) -> KeycardId {
        self.card.id
    }

    /// Resumes the exchange with the client's answer to the challenge.
    pub(crate) async fn answer(mut self: Box<Self>, answer: &Value) -> Result<Progress, Refusal> {
        let Some(next) = self.next.take() else {
            return Err(ApiError::new(ErrorCode::Internal, "no challenge to answer").into());
        };
        let step = next.next(answer);
        self.advance(step).await
    }

    /// Ends the exchange as failed (no answer in time, the client gave
    /// up): counted and audited like any failure.
    pub(crate) async fn fail(self: Box<Self>, why: String) -> Result<Progress, Refusal> {
        self.finish(Err(Failure::Auth(AuthError::Malformed(why))), None)
            .await
    }

    /// Runs the exchange's steps until it needs the client (a challenge)
    /// or ends; heavy work runs on the server's bounded worker pool.
    async fn advance(mut self: Box<Self>, mut step: Step<Verdict>) -> Result<Progress, Refusal> {
        loop {
            match step {
                Step::Done(v) => return self.finish(Ok(v), None).await,
                Step::Fail(e) => return self.finish(Err(Failure::Auth(e)), None).await,
                Step::Work(work) => match self.state.run_work(work).await {
                    Some(s) => step = s,
                    None => {
                        let e = ApiError::new(
                            ErrorCode::Internal,
                            "the hashing workers are unavailable",
                        );
                        return self.finish(Err(Failure::Server(e)), None).await;
                    }
                },
                Step::Send(msg, next) => {
                    // A challenge-response client learns from the challenge
                    // whether its password was right (RFC 9807: count a
                    // login without a valid final message as a failure).
                    // So the attempt counts as a failure, durably, before
                    // the challenge goes out; a success takes it back, and
                    // a client that vanishes mid-exchange is audited as a
                    // failure. (The future holds no borrow of the `Login`,
                    // whose exchange is not `Sync`.)
                    if let Some(durable) = self.throttle.as_mut().and_then(|r| r.count()) {
                        if let Err(e) = durable.await {
                            let e = ApiError::from(e);
                            return self.finish(Err(Failure::Server(e)), None).await;
                        }
                        self.abandoned = Some(AbandonGuard {
                            armed: true,
                            audit: self.state.audit.clone(),
                            conn: self.requester,
                            source: self.peer,
                            method: self.method_name,
                            user: self.ident.clone(),
                            keycard: Some(self.card.id),
                        });
                    }
                    // The challenge is bound to the keycard and must be
                    // answered within its window.
                    return match self.state.bouncer.challenged(self.card.id) {
                        Ok(deadline) => {
                            self.next = Some(next);
                            Ok(Progress::Challenge {
                                msg,
                                deadline,
                                login: self,
                            })
                        }
                        Err(_) => {
                            let e = AuthError::Malformed(CHALLENGE_EXPIRED.into());
                            self.finish(Err(Failure::Auth(e)), None).await
                        }
                    };
                }
            }
        }
    }

    /// The verdict and the keycard's confirmation meet here, once: a
    /// success after the challenge window is a failure. `parent` is the
    /// token (id, expiry) of a token login.
    async fn finish(
        mut self: Box<Self>,
        mut result: Result<Verdict, Failure>,
        parent: Option<(KeycardId, u64)>,
    ) -> Result<Progress, Refusal> {
        let state = self.state.clone();
        if self.blind && result.is_ok() {
            result = Err(Failure::Auth(AuthError::Failed));
        }
        let mut granted = None;
        if let Ok(verdict) = &result {
            let mut life = lifetime(&state, self.method_name, &self.base, &self.record_at).await?;
            if let Some((_, until)) = parent {
                life = keycards::token_lifetime(life, until);
            }
            match state.bouncer.authenticate(
                self.card.id,
                &verdict.user,
                &crate::caller::domain_text(&self.base),
                life,
                parent.map(|p| p.0),
            ) {
                Ok(c) => {
                    // A token revoked since it was checked: its keycards
                    // were revoked by parent, perhaps before this one had
                    // its parent. (The guard removes this one.)
                    let revoked = match parent {
                        Some((tid, _)) => !keycards::token_live(&state, tid).await?,
                        None => false,
                    };
                    match revoked {
                        true => result = Err(Failure::Auth(AuthError::Failed)),
                        false => granted = Some(c),
                    }
                }
                Err(BouncerError::Expired) => {
                    result = Err(Failure::Auth(AuthError::Malformed(
                        CHALLENGE_EXPIRED.into(),
                    )));
                }
                Err(e) => {
                    // The credentials were right; the user holds too many
                    // keycards. Not a failed login.
                    if let Some(g) = self.abandoned.take() {
                        g.disarm();
                    }
                    if let Some(r) = self.throttle.take() {
                        r.succeed(crate::audit::now_millis());
                    }
                    return Err(ApiError::from(e).into());
                }
            }
        }
        if result.is_err() {
            // A refused attempt leaves the table now.
            self.card.refuse();
        }
        if let Some(g) = self.abandoned.take() {
            g.disarm();
        }
        let card = Some(self.card.id);
        let ev = |outcome| {
            event(
                self.requester,
                self.peer,
                self.method_name,
                &self.who,
                outcome,
                card,
            )
        };
        match result {
            Ok(verdict) => {
                if let Some(r) = self.throttle.take() {
                    r.succeed(crate::audit::now_millis());
                }
                state.audit.login(ev("success")).await;
                state.logins.record(
                    &self.record_at,
                    crate::logins::Mark {
                        at: crate::audit::now_millis(),
                        client: self.peer.to_string(),
                        method: self.method_name.to_owned(),
                        via: self.via.to_owned(),
                    },
                );
                let Some(granted) = granted else {
                    return Err(
                        ApiError::new(ErrorCode::Internal, "login without a keycard").into(),
                    );
                };
                // The ACL bindings (the user's and its groups'), read now:
                // a new binding applies at the next login, as in DistKV.
                let mut acls =
                    crate::acl::bound_acls(state.store.as_ref(), &self.base, &self.record_at)
                        .await?;
                // Granted capabilities: `(…, "caps")` → `{caps: [NAME…]}`.
                let mut caps = super::rank::caps_of(&state, &self.record_at).await?;
                // A token carries no more than its user held when it was
                // issued (by a caller who outranked the user then).
                if let Some(c) = &self.ceiling {
                    super::rank::Rank::clamp_caps(&mut caps, &c.caps);
                    acls = super::rank::Rank::clamp_acls(acls, c.acls.as_deref());
                }
                let this = *self;
                Ok(Progress::Done(Box::new(Granted {
                    user: LoggedIn {
                        method: this.method_name.into(),
                        name: verdict.user,
                        super_root: this.method.as_ref().is_some_and(|m| m.super_root()),
                        session_key: verdict.session_key,
                        acls,
                        caps,
                        domain: this.base,
                        record: this.record_at,
                        login_at: crate::audit::now_millis(),
                        keycard: granted.id,
                        expires_at: granted.expires_at,
                        ended: None,
                    },
                    reply: verdict.reply,
                    card: this.card,
                })))
            }
            Err(Failure::Server(e)) => {
                if let Some(r) = self.throttle.take() {
                    r.release();
                }
                state
                    .audit
                    .login(crate::audit::LoginEvent {
                        reason: Some(&e.text),
                        ..ev("error")
                    })
                    .await;
                Err(e.into())
            }
            Err(Failure::Auth(e)) => {
                // Timed now, not when the attempt began: a delayed
                // attempt's failure must start the next wait from its end.
                // The reply waits until the count is durable.
                if let Some(r) = self.throttle.take() {
                    r.fail(crate::audit::now_millis()).await?;
                }
                let reason = e.to_string();
                state
                    .audit
                    .login(crate::audit::LoginEvent {
                        reason: Some(&reason),
                        ..ev("failure")
                    })
                    .await;
                Err(Refusal::Failed(e))
            }
        }
    }
}

fn event<'a>(
    conn: u64,
    source: SocketAddr,
    method: &'static str,
    user: &'a str,
    outcome: &'static str,
    keycard: Option<KeycardId>,
) -> crate::audit::LoginEvent<'a> {
    crate::audit::LoginEvent {
        conn,
        source,
        method,
        user,
        outcome,
        reason: None,
        keycard,
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
pub(crate) struct PendingCard {
    bouncer: std::sync::Arc<crate::bouncer::Bouncer>,
    pub(crate) id: KeycardId,
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
    pub(crate) fn settle(mut self) {
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
