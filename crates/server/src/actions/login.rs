//! Logging in, whatever carries the exchange: request → decide → drive →
//! record.
//!
//! - [`request`]: the typed [`LoginRequest`] both transports build (the
//!   msgpack `auth` message decoded, REST's JSON), and the client's typed
//!   answers.
//! - [`policy`]: every decision, pure, with the time passed in — whether
//!   the domain takes the method, the throttle's answer, what a factor's
//!   verdict leads to (refuse, the next factor, grant), the keycard's
//!   lifetime.
//! - [`drive`]: the one place a method's steps are driven, and the
//!   [`drive::Carrier`] trait through which a transport carries the
//!   challenges (the msgpack stream, REST's requests).
//! - here, the thin shell around them: loading what the policy needs
//!   (the domain's configuration, throttle counters, records, the user's
//!   factors), reserving the throttle attempt, the keycard, writing a
//!   method's record back, recording the outcome (throttle, audit, last
//!   logins) and the grants (ACLs, capabilities, lifetime).
//!
//! [`Login::begin`] takes the request and either finishes or returns a
//! challenge, with the [`Login`] to resume with the client's answer
//! ([`Login::answer`]). A user may have to pass further methods (its
//! factors, `(…record, "factors")`): after each one passes, the next one
//! is asked for in the same exchange, and the keycard is granted only
//! when all have passed (docs/DESIGN.md §2.2).

mod drive;
mod policy;
mod request;

use std::net::SocketAddr;
use std::sync::Arc;

use keycard_auth::bouncer::{BouncerError, KeycardId};
use keycard_auth::{AuthError, Exchange, LoginCtx, Method, SecretKey, Step, Verdict};
use keycard_proto::{ErrorCode, Msg, Path, Value};
use keycard_store::{Cond, Op, StoreError, Tock};

pub(crate) use drive::{drive, until_peer, Ask, Carrier, Halt};
pub(crate) use request::{
    login_method, method_named, user_name, Credential, LoginAnswer, LoginRequest, Requester,
};

use super::keycards;
use crate::caller::LoggedIn;
pub(crate) use crate::core::users::auth_error;
use crate::error::{ApiError, ApiResult};
use crate::state::{auth_root, record_path, ServerState};
use crate::throttle;

pub(crate) const CHALLENGE_EXPIRED: &str = "the login's challenge window has passed";

/// The registered method a request's `typ` names.
pub(crate) fn method<'a>(state: &'a ServerState, msg: &Value) -> ApiResult<&'a Arc<dyn Method>> {
    method_named(state, super::str_field(msg, "typ")?)
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

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Refusal {
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

/// What the login waits for from the client.
enum Next {
    /// The running method's exchange, for its next message.
    Method(Box<dyn Exchange<Verdict>>),
    /// The first message of the next factor, this method's.
    Factor(Arc<dyn Method>),
}

/// A record a factor read, for its write-back.
struct Read {
    at: Path,
    tock: Option<Tock>,
    /// The record as read (the write-back's condition: unchanged since).
    value: Option<Value>,
}

/// A login under way.
pub(crate) struct Login {
    state: Arc<ServerState>,
    requester: u64,
    peer: SocketAddr,
    via: &'static str,
    /// The connection is protected by TLS.
    secure: bool,
    channel_key: Option<SecretKey>,
    /// What the connection can be bound to (TLS only).
    binding: Option<keycard_auth::ChannelBinding>,
    /// The first method runs as its channel-binding variant.
    plus: bool,
    /// The client certificate the connection presented (TLS only).
    client_chain: Option<crate::tls::ClientChain>,
    /// The end of the certificate a `cert` method logged in with (Unix
    /// ms): the keycard ends no later.
    cert_until: Option<u64>,
    /// A method that logs in with the client certificate ran: on success
    /// the keycard is remembered with the chain, for a reload's check.
    by_cert: bool,
    /// The name the audit log gives the login: the method's, or its
    /// channel-binding variant's when it ran as that.
    audit_name: &'static str,
    /// The method the login started with (a token's: none); it names the
    /// keycard and the session.
    method: Option<Arc<dyn Method>>,
    method_name: &'static str,
    /// The method running now (the first, or a factor).
    running: &'static str,
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
    /// The first method's user record.
    record_at: Path,
    /// The record the running factor read.
    read: Option<Read>,
    /// A token login's ceiling: what its user held when it was issued.
    ceiling: Option<keycards::Ceiling>,
    next: Option<Next>,
    /// What the factors passed so far established: the user, the first
    /// session key, and the records to write back.
    passed: Option<Verdict>,
    write_backs: Vec<(Read, Value)>,
    /// The factors still to pass, in order.
    remaining: Vec<String>,
}

impl Login {
    /// Starts a login.
    pub(crate) async fn begin(
        state: &Arc<ServerState>,
        req: LoginRequest,
    ) -> Result<Progress, Refusal> {
        let method_name = req.method_name();
        let audit_name = match &req.credential {
            Credential::Method(m) if req.plus => m.info().plus.unwrap_or(method_name),
            _ => method_name,
        };
        policy::carriable(
            req.sends_secret(),
            req.requester.secure,
            req.requester.peer.ip(),
            state.config.allow_plaintext_secrets,
            method_name,
        )?;
        let base = req.domain.clone();
        let cfg = if base.is_empty() {
            state.auth()
        } else {
            domain_auth(state, &base).await?
        };
        let as_method = match &req.credential {
            Credential::Method(_) => Some(method_name),
            Credential::Token(_) => None,
        };
        let blind = match policy::admit(&cfg, !base.is_empty(), as_method) {
            policy::Admission::Proceed => false,
            policy::Admission::Blind => true,
            policy::Admission::Refuse(e) => return Err(e.into()),
        };
        let ident = req.ident.clone();
        let who = crate::caller::qualify(&ident, &base);
        // Throttle counters per (domain, user), without NAME@DOMAIN's
        // ambiguity (a server user may be called "joe@org.acme").
        let throttled_as = if base.is_empty() {
            ident.clone()
        } else {
            format!("{ident}\u{0}{base}")
        };
        let r = &req.requester;
        let source = r.peer.ip();
        // Throttling comes first, and counts the attempt as it decides: a
        // refused attempt costs no hashing, and parallel attempts are each
        // counted before any runs.
        let reserved = state.throttle.reserve(&throttled_as, source).await;
        let (reservation, wait) = match reserved {
            Ok((res, wait)) => (Some(res), Ok(wait)),
            Err(retry) => (None, Err(retry)),
        };
        match policy::pace(wait) {
            Err(e) => {
                state
                    .audit
                    .login(event(r.id, r.peer, audit_name, &who, "throttled", None))
                    .await;
                return Err(e.into());
            }
            Ok(policy::Pace::Wait(w)) => tokio::time::sleep(w).await,
            Ok(policy::Pace::Go) => {}
        }
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
                r.id,
                Some(source),
            )?,
        );
        let LoginRequest {
            credential,
            payload,
            requester,
            plus,
            ..
        } = req;
        let client_chain = requester.client_chain;
        let mut login = Box::new(Login {
            state: state.clone(),
            requester: requester.id,
            peer: requester.peer,
            via: requester.via,
            secure: requester.secure,
            channel_key: requester.channel_key,
            binding: requester.binding,
            plus,
            client_chain,
            cert_until: None,
            by_cert: false,
            audit_name,
            method: None,
            method_name,
            running: method_name,
            ident,
            who,
            throttle: reservation,
            card,
            abandoned: None,
            base,
            blind,
            record_at: Path::root(),
            read: None,
            ceiling: None,
            next: None,
            passed: None,
            write_backs: Vec::new(),
            remaining: Vec::new(),
        });
        match credential {
            Credential::Method(m) => {
                login.method = Some(m.clone());
                login.record_at = login
                    .base
                    .join(&record_path(m.name(), "user", &login.ident));
                login.ran();
                let step = login.start(m.as_ref(), &payload).await?;
                login.advance(step).await
            }
            Credential::Token(t) => {
                login.ran();
                let (result, parent) = match keycards::check_token(state, &t).await? {
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
        }
    }

    /// Reads the user's record of method `m` (none for a blind login),
    /// remembers it for a write-back, and starts `m`'s exchange with the
    /// client's `payload`.
    async fn start(&mut self, m: &dyn Method, payload: &Value) -> Result<Step<Verdict>, Refusal> {
        let user = self
            .passed
            .as_ref()
            .map_or(&self.ident, |v| &v.user)
            .clone();
        let at = self.base.join(&record_path(m.name(), "user", &user));
        let entry = match self.blind {
            true => None,
            false => self.state.store.get(&at).await?,
        };
        self.read = Some(Read {
            at,
            tock: entry.as_ref().map(|e| e.tock),
            value: entry.as_ref().map(|e| e.value.clone()),
        });
        self.running = m.name();
        let now_ms = self.state.now_ms();
        // A method that logs in with the client certificate gets it
        // judged now: by the CAs and revocation lists in use now, at the
        // server's time.
        let checked = match (m.info().client_cert, &self.client_chain) {
            (true, Some(chain)) => self
                .state
                .tls
                .get()
                .map(|tls| tls.check_client(chain, now_ms, &self.base)),
            _ => None,
        };
        if let Some(c) = &checked {
            self.cert_until = c.not_after_ms;
            self.by_cert = true;
        }
        let ctx = LoginCtx {
            channel_key: self.channel_key.as_ref(),
            now_ms,
            channel_binding: self.binding.as_ref(),
            // Only the first method runs bound (a factor has no variant).
            plus: self.plus && self.passed.is_none(),
            client_cert: checked.as_ref().map(|c| &c.cert),
        };
        Ok(m.login(&ctx, &user, payload, entry.as_ref().map(|e| &e.value)))
    }

    /// The method starts: from here the attempt counts even if the
    /// client leaves.
    fn ran(&mut self) {
        if let Some(r) = self.throttle.as_mut() {
            r.ran();
        }
    }

    /// The method whose message the login waits for (a factor's, once
    /// the first has passed).
    pub(crate) fn running(&self) -> &'static str {
        self.running
    }

    /// The attempt's keycard id (a REST session's id).
    pub(crate) fn card_id(&self) -> KeycardId {
        self.card.id
    }

    /// Resumes the exchange with the client's answer to the challenge.
    pub(crate) async fn answer(
        mut self: Box<Self>,
        answer: LoginAnswer,
    ) -> Result<Progress, Refusal> {
        match self.next.take() {
            Some(Next::Method(next)) => {
                let step = next.next(&answer.payload);
                self.advance(step).await
            }
            Some(Next::Factor(m)) => {
                let user = self.passed.as_ref().map_or("", |v| v.user.as_str());
                if let Err(e) = policy::factor_message(
                    answer.method.as_deref(),
                    answer.ident.as_deref(),
                    m.name(),
                    user,
                ) {
                    return self.finish(Err(Failure::Auth(e)), None).await;
                }
                let step = self.start(m.as_ref(), &answer.payload).await?;
                self.advance(step).await
            }
            None => Err(ApiError::new(ErrorCode::Internal, "no challenge to answer").into()),
        }
    }

    /// Ends the exchange as failed (no answer in time, the client gave
    /// up): counted and audited like any failure.
    pub(crate) async fn fail(self: Box<Self>, why: String) -> Result<Progress, Refusal> {
        self.finish(Err(Failure::Auth(AuthError::Malformed(why))), None)
            .await
    }

    /// Runs the exchange's steps until it needs the client (a challenge)
    /// or ends.
    async fn advance(self: Box<Self>, step: Step<Verdict>) -> Result<Progress, Refusal> {
        match until_peer(&self.state, step).await {
            Ok(Halt::Done(v)) => self.verdict(Ok(v)).await,
            Ok(Halt::Fail(e)) => self.verdict(Err(e)).await,
            Ok(Halt::Ask(msg, next)) => self.challenge(msg, Next::Method(next)).await,
            Err(e) => self.finish(Err(Failure::Server(e)), None).await,
        }
    }

    /// A factor's verdict: the policy says whether the login fails, goes
    /// on with the next factor, or is granted.
    async fn verdict(
        mut self: Box<Self>,
        result: Result<Verdict, AuthError>,
    ) -> Result<Progress, Refusal> {
        // After the first factor passes, the user's further factors are
        // read (a failed first factor reads nothing more: every failure
        // looks the same).
        if result.is_ok() && self.passed.is_none() && !self.blind {
            let node = self
                .state
                .store
                .get(&self.record_at.child("factors"))
                .await?;
            let methods = &self.state.methods;
            let first = self.method_name;
            match policy::factors(node.as_ref().map(|e| &e.value), first, |m| {
                methods.get(m).is_some()
            }) {
                Ok(list) => self.remaining = list,
                Err(why) => {
                    let e = ApiError::new(ErrorCode::Internal, why);
                    return self.finish(Err(Failure::Server(e)), None).await;
                }
            }
        }
        let user = self.passed.as_ref().map(|v| v.user.as_str());
        let next = match policy::decide(result.as_ref(), self.blind, user, &self.remaining) {
            policy::Decision::Refuse(e) => return self.finish(Err(Failure::Auth(e)), None).await,
            policy::Decision::Next(m) => Some(m),
            policy::Decision::Grant => None,
        };
        let Ok(mut v) = result else {
            return Err(ApiError::new(ErrorCode::Internal, "no verdict").into());
        };
        if let (Some(value), Some(read)) = (v.write_back.take(), self.read.take()) {
            self.write_backs.push((read, value));
        }
        let reply = v.reply.take();
        let merged = match self.passed.take() {
            None => v,
            Some(mut first) => {
                if first.session_key.is_none() {
                    first.session_key = v.session_key.take();
                }
                first
            }
        };
        let Some(name) = next else {
            let mut v = merged;
            v.reply = reply;
            return self.finish(Ok(v), None).await;
        };
        self.passed = Some(merged);
        self.remaining.remove(0);
        let Some(m) = self.state.methods.get(&name).cloned() else {
            let e = ApiError::new(ErrorCode::Internal, "a factor's method is gone");
            return self.finish(Err(Failure::Server(e)), None).await;
        };
        // A factor that would carry a secret over plaintext is refused
        // before the client is asked for it.
        let carried = policy::carriable(
            m.info().plaintext_secret,
            self.secure,
            self.peer.ip(),
            self.state.config.allow_plaintext_secrets,
            m.name(),
        );
        if let Err(e) = carried {
            return self.finish(Err(Failure::Server(e)), None).await;
        }
        self.running = m.name();
        // The prompt carries this factor's last word (SCRAM's server
        // signature) and names the next factor.
        let prompt = reply.unwrap_or_default().with("factor", m.name());
        self.challenge(prompt, Next::Factor(m)).await
    }

    /// Sends a challenge: the method's, or the prompt for a factor.
    async fn challenge(mut self: Box<Self>, msg: Msg, next: Next) -> Result<Progress, Refusal> {
        // A challenge-response client learns from the challenge whether
        // its password was right (RFC 9807: count a login without a valid
        // final message as a failure). So the attempt counts as a failure,
        // durably, before the challenge goes out; a success takes it back,
        // and a client that vanishes mid-exchange is audited as a failure.
        // (The future holds no borrow of the `Login`, whose exchange is
        // not `Sync`.)
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
                method: self.audit_name,
                user: self.ident.clone(),
                keycard: Some(self.card.id),
            });
        }
        // The challenge is bound to the keycard and must be answered
        // within its window (every factor within the same window).
        match self.state.bouncer.challenged(self.card.id) {
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
        }
    }

    /// Writes the factors' records back, each only if unchanged since its
    /// factor read it, all or none: a record changed meanwhile means
    /// another login used what this one proves (a replayed one-time
    /// code), and this one fails as a wrong credential.
    async fn write_back(&mut self) -> Result<(), Failure> {
        if self.write_backs.is_empty() {
            return Ok(());
        }
        let mut ops = Vec::with_capacity(self.write_backs.len());
        for (read, value) in self.write_backs.drain(..) {
            // A method vouches only for a record it read.
            let (Some(_), Some(was)) = (read.tock, read.value) else {
                return Err(Failure::Auth(AuthError::Failed));
            };
            // Unchanged since it was read, by value: a record sealed again
            // by a key rotation meanwhile (a new tock, the same record)
            // still counts as unchanged.
            ops.push(Op::Put {
                path: read.at,
                value,
                cond: Cond::Equals(was),
                idem: false,
            });
        }
        match self.state.store.write(ops).await {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict { .. }) => Err(Failure::Auth(AuthError::Failed)),
            Err(e) => Err(Failure::Server(e.into())),
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
        if result.is_ok() {
            if let Err(f) = self.write_back().await {
                result = Err(f);
            }
        }
        let mut granted = None;
        if let Ok(verdict) = &result {
            let domain_says = state
                .store
                .get(&self.base.join(&auth_root()))
                .await?
                .and_then(|e| e.value.get("keycard").cloned());
            let user_says = state
                .store
                .get(&self.record_at.child("keycard"))
                .await?
                .map(|e| e.value);
            let cfg = &state.config.keycards;
            let life = policy::lifetime(
                &policy::LifetimeInputs {
                    base: state.bouncer.lifetime(),
                    method_duration_s: cfg.method_duration.get(self.method_name).copied(),
                    max_lifetime_s: cfg.max_lifetime,
                    domain: domain_says.as_ref(),
                    user: user_says.as_ref(),
                    until: [parent.map(|p| p.1), self.cert_until]
                        .into_iter()
                        .flatten()
                        .min(),
                },
                state.now_ms(),
            );
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
                        false => {
                            // Other nodes see it before the client does.
                            if let Err(e) = crate::core::cluster::mirror(&state, &c).await {
                                state.bouncer.revoke(c.id);
                                if let Some(g) = self.abandoned.take() {
                                    g.disarm();
                                }
                                if let Some(r) = self.throttle.take() {
                                    r.succeed(state.now_ms());
                                }
                                return Err(e.into());
                            }
                            granted = Some(c)
                        }
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
                        r.succeed(state.now_ms());
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
                self.audit_name,
                &self.who,
                outcome,
                card,
            )
        };
        match result {
            Ok(verdict) => {
                let now = state.now_ms();
                if let Some(r) = self.throttle.take() {
                    r.succeed(now);
                }
                state.audit.login(ev("success")).await;
                state.logins.record(
                    &self.record_at,
                    crate::logins::Mark {
                        at: now,
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
                if let (true, Some(tls), Some(chain)) =
                    (self.by_cert, state.tls.get(), &self.client_chain)
                {
                    let bouncer = &state.bouncer;
                    tls.remember(granted.id, chain.clone(), self.base.clone(), |id| {
                        bouncer.table().show(id).is_some()
                    });
                }
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
                        login_at: now,
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
                    r.fail(state.now_ms()).await?;
                }
                // The audit names the factor that failed (the client is
                // told only "login failed").
                let reason = match self.running == self.method_name {
                    true => e.to_string(),
                    false => format!("factor {}: {e}", self.running),
                };
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
