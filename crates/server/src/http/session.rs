//! The login (`POST /session/new`, `PUT /session/{sid}`), signed-request
//! verification, and the session routes (show, keep-alive, log out).

use std::net::SocketAddr;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, AUTHORIZATION, LOCATION};
use hyper::{Response, StatusCode};
use keycard_auth::bouncer::KeycardId;
use keycard_auth::signed::{self, Authorization, ReplayGuard};
use keycard_proto::{ErrorCode, Msg, Path, Value};
use serde_json::json;

use tokio::sync::oneshot;

use super::{error, json_response, lock, rest_methods, Body, Rest, Session, BUSY};
use crate::actions::login::{
    drive, login_method, user_name, Ask, Carrier, Credential, Granted, Login, LoginAnswer,
    LoginRequest, Refusal, Requester,
};
use crate::caller::LoggedIn;
use crate::error::ApiError;
use crate::state::ServerState;

/// A login waiting for the client's answer: where to hand it, and the
/// method whose message it is.
pub(super) struct Pending {
    answer: oneshot::Sender<Answer>,
    method: &'static str,
}

/// The client's answer, handed to the login's task, and where the task
/// says how the login goes on.
struct Answer {
    answer: Result<LoginAnswer, String>,
    said: oneshot::Sender<Said>,
}

/// What a REST login's task tells the request waiting on it.
enum Said {
    /// A challenge (the method's, or the prompt for the next factor):
    /// the next request answers it through `answer`.
    Challenge {
        msg: Msg,
        sid: KeycardId,
        method: &'static str,
        answer: oneshot::Sender<Answer>,
    },
    /// The login ended.
    End(Result<Box<Granted>, Refusal>),
}

/// Carries a login's challenges over REST requests: each challenge is
/// the answer to the request that brought the previous message, and the
/// next request (`PUT /session/{sid}`) brings the client's answer. A
/// login nobody answers ends with its challenge window (the sweep drops
/// its [`Pending`]).
struct Requests {
    state: Arc<ServerState>,
    said: Option<oneshot::Sender<Said>>,
}

impl Carrier for Requests {
    async fn ask(&mut self, ask: Ask) -> Result<LoginAnswer, String> {
        let Some(said) = self.said.take() else {
            return Err("no request waits for the challenge".into());
        };
        let (tx, rx) = oneshot::channel();
        let challenge = Said::Challenge {
            msg: ask.msg,
            sid: ask.card,
            method: ask.method,
            answer: tx,
        };
        if said.send(challenge).is_err() {
            return Err("the client left".into());
        }
        let wait =
            std::time::Duration::from_millis(ask.deadline.saturating_sub(self.state.now_ms()));
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Answer { answer, said })) => {
                self.said = Some(said);
                answer
            }
            Ok(Err(_)) => Err("the exchange was abandoned".into()),
            Err(_) => Err(format!("no answer within {} ms", wait.as_millis())),
        }
    }
}

/// Runs a login in its own task, carried by REST requests; the first
/// challenge or the end arrives on the returned channel.
fn spawn_login(state: &Arc<ServerState>, request: LoginRequest) -> oneshot::Receiver<Said> {
    let (tx, rx) = oneshot::channel();
    let state = state.clone();
    tokio::spawn(async move {
        let mut carrier = Requests {
            state: state.clone(),
            said: Some(tx),
        };
        let progress = Login::begin(&state, request).await;
        let end = drive(progress, &mut carrier).await;
        if let Some(said) = carrier.said.take() {
            // Undelivered (the client left), a granted keycard is dropped
            // unsettled and leaves the table.
            let _ = said.send(Said::End(end));
        }
    });
    rx
}

/// A method message's `data` as JSON: a string as is, bytes as base64url.
pub(super) fn data_json(msg: &Value) -> serde_json::Value {
    match msg.get("data") {
        Some(Value::Str(s)) => json!(s),
        Some(Value::Bin(b)) => json!(URL_SAFE_NO_PAD.encode(b)),
        _ => serde_json::Value::Null,
    }
}

/// The client's `data` for `method`: SCRAM's text, OPAQUE's bytes.
pub(super) fn data_value(
    method: &str,
    data: Option<&serde_json::Value>,
) -> Result<Value, ApiError> {
    let text = data
        .and_then(|d| d.as_str())
        .ok_or_else(|| ApiError::bad("'data' must be a string"))?;
    if keycard_auth::method_info(method).is_some_and(|i| i.payload == keycard_auth::Payload::Bytes)
    {
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| ApiError::bad("'data' must be base64url without padding"))?;
        Ok(Value::Bin(bytes))
    } else {
        Ok(Value::Str(text.to_owned()))
    }
}

pub(super) fn refusal(r: Refusal) -> Response<Body> {
    match r {
        Refusal::Api(e) => error(&e),
        // Unknown user and wrong password: the same body.
        Refusal::Failed(keycard_auth::AuthError::Failed | keycard_auth::AuthError::Refused(_)) => {
            error(&ApiError::new(ErrorCode::AuthFailed, "login failed"))
        }
        Refusal::Failed(e) => error(&crate::actions::login::auth_error(e)),
    }
}

impl Rest {
    /// `GET /`: the server and the methods it offers.
    /// Over TLS (`tls`), each method's channel-binding variant is offered
    /// too.
    pub(super) fn index(&self, tls: bool) -> Response<Body> {
        let cfg = self.state.auth();
        let methods: Vec<&str> = rest_methods(&self.state, tls)
            .filter(|(_, runs)| cfg.accepts(runs))
            .map(|(name, _)| name)
            .collect();
        let mut index = json!({
            "server": concat!("keycard ", env!("CARGO_PKG_VERSION")),
            "methods": methods,
        });
        for i in self.state.methods.infos() {
            if let Some(suite) = i.suite {
                index[i.name] = json!(suite);
            }
        }
        json_response(StatusCode::OK, index)
    }

    /// `POST /session/new {method, user, data}`: starts a login by the
    /// client at `peer` (behind a trusted proxy, the client it names).
    pub(super) async fn session_new(
        &self,
        body: &[u8],
        peer: SocketAddr,
        binding: Option<&keycard_auth::ChannelBinding>,
    ) -> Response<Body> {
        let Ok(j) = serde_json::from_slice::<serde_json::Value>(body) else {
            return error(&ApiError::bad("the body must be a JSON object"));
        };
        let (Some(method), Some(user)) = (
            j.get("method").and_then(|m| m.as_str()),
            j.get("user").and_then(|u| u.as_str()),
        ) else {
            return error(&ApiError::bad("'method' and 'user' must be strings"));
        };
        let tls = binding.is_some();
        if !rest_methods(&self.state, tls).any(|(m, _)| m == method) {
            let offered = rest_methods(&self.state, tls)
                .map(|(m, _)| m)
                .collect::<Vec<_>>()
                .join(", ");
            return error(&ApiError::new(
                ErrorCode::AuthMethod,
                format!("method {method:?} is not offered over REST ({offered})"),
            ));
        }
        let data = match data_value(method, j.get("data")) {
            Ok(d) => d,
            Err(e) => return error(&e),
        };
        let user = match user_name(user) {
            Ok(u) => u.to_owned(),
            Err(e) => return error(&e),
        };
        let (m, plus) = match login_method(&self.state, method) {
            Ok(m) => m,
            Err(e) => return error(&e),
        };
        let request = LoginRequest {
            credential: Credential::Method(m),
            plus,
            ident: user,
            domain: Path::root(),
            payload: Msg::new().with("data", data).into_value(),
            requester: Requester {
                id: self.state.next_conn_id(),
                peer,
                root: Path::root(),
                channel_key: None,
                via: "rest",
                // Both listeners speak TLS only once it is on.
                secure: self.state.tls_enabled(),
                binding: binding.cloned(),
                // No REST method logs in with a certificate.
                client_chain: None,
            },
        };
        match spawn_login(&self.state, request).await {
            Ok(Said::Challenge {
                msg,
                sid,
                method,
                answer,
            }) => {
                let data = data_json(&msg.into_value());
                self.tidy();
                lock(&self.pending).insert(sid, Pending { answer, method });
                json_response(
                    StatusCode::CREATED,
                    json!({"sid": sid.to_string(), "data": data}),
                )
            }
            Ok(Said::End(Ok(_))) => error(&ApiError::new(
                ErrorCode::Internal,
                "the method finished without a challenge",
            )),
            Ok(Said::End(Err(r))) => refusal(r),
            Err(_) => error(&ApiError::new(
                ErrorCode::Internal,
                "the login's task ended",
            )),
        }
    }

    /// `PUT /session/{sid} {data}`: the client's proof.
    pub(super) async fn session_answer(&self, sid: &str, body: &[u8]) -> Response<Body> {
        let Some(id) = KeycardId::parse(sid) else {
            return error(&ApiError::new(ErrorCode::NotFound, "no such session"));
        };
        let Ok(j) = serde_json::from_slice::<serde_json::Value>(body) else {
            return error(&ApiError::bad("the body must be a JSON object"));
        };
        let Some(Pending { answer, method }) = lock(&self.pending).remove(&id) else {
            return error(&ApiError::new(
                ErrorCode::NotFound,
                "no login waits under this session id",
            ));
        };
        // After a prompt for a further factor, the answer names the
        // factor's method (`method`), whose first message `data` is.
        let named = match j.get("method") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(m)) => Some(m.clone()),
            Some(_) => Some(String::new()),
        };
        let decoded = match (&named, j.get("data")) {
            // A factor that takes no data (its first message is empty).
            (Some(_), None | Some(serde_json::Value::Null)) => Ok(None),
            (named, data) => data_value(named.as_deref().unwrap_or(method), data).map(Some),
        };
        let (tx, rx) = oneshot::channel();
        let handed = Answer {
            answer: match &decoded {
                // A malformed answer ends the attempt, as on the wire.
                Err(e) => Err(e.text.clone()),
                Ok(data) => Ok(LoginAnswer {
                    method: named,
                    ident: None,
                    payload: match data {
                        Some(d) => Msg::new().with("data", d.clone()).into_value(),
                        None => Msg::new().into_value(),
                    },
                }),
            },
            said: tx,
        };
        if answer.send(handed).is_err() {
            return error(&ApiError::new(
                ErrorCode::NotFound,
                "no login waits under this session id",
            ));
        }
        let said = rx.await;
        if let Err(e) = decoded {
            return error(&e);
        }
        match said {
            Ok(Said::End(Ok(g))) => {
                let g = *g;
                let Some(key) = g.user.session_key.clone() else {
                    return error(&ApiError::new(
                        ErrorCode::Internal,
                        "the method agreed no session key",
                    ));
                };
                let last = g.reply.map(Msg::into_value);
                let data = last
                    .as_ref()
                    .map(data_json)
                    .unwrap_or(serde_json::Value::Null);
                let window = self.state.config.http_signature_window;
                let card = self.state.bouncer.table().show(id);
                let (requester, duration_ms) = card.map_or((0, 0), |c| {
                    // Durations are whole seconds; issued_at is kept to one.
                    let d = c.expires_at.saturating_sub(c.issued_at) / 1000 * 1000;
                    (c.requester, d)
                });
                lock(&self.sessions).insert(
                    id,
                    Session {
                        user: Arc::new(g.user),
                        key,
                        last,
                        guard: ReplayGuard::new(window, self.state.config.http_session_nonces),
                        requester,
                        duration_ms,
                        ahead: 0,
                    },
                );
                g.card.settle();
                // The bouncer tells the front end when the keycard ends,
                // which deletes the kept record.
                let watcher: std::sync::Weak<dyn crate::bouncer::KeycardWatcher> = self.me.clone();
                self.state.bouncer.register(requester, watcher);
                // Kept before the client learns of it: a session it holds
                // survives a restart.
                if let Err(e) = self.persist(id).await {
                    lock(&self.sessions).remove(&id);
                    self.state.bouncer.revoke(id);
                    return error(&e);
                }
                let mut r = json_response(StatusCode::SEE_OTHER, json!({"data": data}));
                if let Ok(v) = HeaderValue::from_str(&format!("/session/{id}")) {
                    r.headers_mut().insert(LOCATION, v);
                }
                r
            }
            // A further factor: the prompt (with the last factor's final
            // message) and the method to answer with.
            Ok(Said::Challenge {
                msg,
                sid,
                method,
                answer,
            }) => {
                let msg = msg.into_value();
                let factor = msg.get("factor").and_then(Value::as_str).map(str::to_owned);
                let data = data_json(&msg);
                lock(&self.pending).insert(sid, Pending { answer, method });
                json_response(
                    StatusCode::OK,
                    json!({"sid": sid.to_string(), "data": data, "factor": factor}),
                )
            }
            Ok(Said::End(Err(r))) => refusal(r),
            Err(_) => error(&ApiError::new(
                ErrorCode::Internal,
                "the login's task ended",
            )),
        }
    }

    /// Checks a request's signature (its preconditions included), time
    /// and nonce against its session; the session's keycard must be live.
    /// The error is why (for the `401`).
    /// [`Rest::verify`], and a request signed ahead of the server's clock
    /// is kept with its session before it runs (see `Session::ahead`).
    pub(super) async fn verify_kept(
        &self,
        parts: &hyper::http::request::Parts,
        pre: super::kv::Preconditions<'_>,
        body: &[u8],
    ) -> Result<(KeycardId, Arc<LoggedIn>), String> {
        let (id, user, ahead) = self.verify(parts, pre, body)?;
        if ahead && self.state.keeps_sessions() {
            self.persist(id)
                .await
                .map_err(|e| format!("the session could not be kept: {}", e.text))?;
        }
        Ok((id, user))
    }

    /// Checks the signature; also says whether the request was signed
    /// ahead of the server's clock (its `ts` then kept in the session).
    fn verify(
        &self,
        parts: &hyper::http::request::Parts,
        pre: super::kv::Preconditions<'_>,
        body: &[u8],
    ) -> Result<(KeycardId, Arc<LoggedIn>, bool), String> {
        let Some(h) = parts.headers.get(AUTHORIZATION) else {
            return Err("this needs a signed request (Authorization: Keycard …)".into());
        };
        let auth = h
            .to_str()
            .map_err(|_| "malformed Authorization header".to_owned())
            .and_then(|t| Authorization::parse(t).map_err(|e| e.to_string()))?;
        let id = KeycardId::parse(&auth.sid).ok_or("no such session")?;
        let now = self.state.now_ms();
        // The bouncer's table is the authority on the keycard's end (a
        // keep-alive moves it there): the session's user carries that.
        let Ok(expires_at) = self.state.bouncer.table().check(id, now) else {
            if let Some(s) = lock(&self.sessions).remove(&id) {
                self.state.bouncer.unregister(s.requester, None);
            }
            return Err("the session has ended (expired, revoked or logged out)".into());
        };
        // The HMAC runs outside the sessions' lock (other connections
        // verify meanwhile); the nonce is admitted under it afterwards.
        let (key, user) = match lock(&self.sessions).get(&id) {
            Some(s) => (s.key.clone(), s.user.clone()),
            None => return Err("no such session".into()),
        };
        let req = signed::Request {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            body,
            if_match: pre.if_match,
            if_none_match: pre.if_none_match,
        };
        signed::verify(&key, &req, &auth).map_err(|e| e.to_string())?;
        let mut sessions = lock(&self.sessions);
        let Some(s) = sessions.get_mut(&id) else {
            return Err("no such session".into());
        };
        match s.guard.admit(now / 1000, auth.ts, auth.nonce) {
            Ok(()) => {
                let ahead = auth.ts > now / 1000 && auth.ts > s.ahead;
                if ahead {
                    s.ahead = auth.ts;
                }
                if user.expires_at != expires_at {
                    Arc::make_mut(&mut s.user).expires_at = expires_at;
                }
                Ok((id, s.user.clone(), ahead))
            }
            // A valid request over the nonce memory: slow down, not 401.
            Err(signed::SignError::Busy) => Err(BUSY.into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// `POST /session/{sid}/keepalive {ttl?}`: extends the session's
    /// keycard by its duration (or `ttl` seconds, if shorter), never past
    /// its maximum lifetime.
    pub(super) async fn keep_alive(
        &self,
        id: KeycardId,
        body: &[u8],
    ) -> Result<Response<Body>, ApiError> {
        let ttl = match body {
            [] => None,
            b => {
                let j: serde_json::Value = serde_json::from_slice(b)
                    .map_err(|_| ApiError::bad("the body must be empty or {\"ttl\": SECONDS}"))?;
                match j.get("ttl") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(t) => Some(
                        t.as_u64()
                            .ok_or_else(|| ApiError::bad("'ttl' must be a number of seconds"))?
                            .saturating_mul(1000),
                    ),
                }
            }
        };
        let requester = self
            .state
            .bouncer
            .table()
            .show(id)
            .map(|c| c.requester)
            .ok_or_else(|| ApiError::new(ErrorCode::AuthRequired, "the session has ended"))?;
        let expires_at = self.state.bouncer.keep_alive(id, requester, ttl)?;
        // The new expiry is kept too: after a restart the session lasts
        // as long as it would have.
        self.persist(id).await?;
        Ok(json_response(
            StatusCode::OK,
            json!({"sid": id.to_string(), "expires_at": expires_at}),
        ))
    }

    /// `GET /session/{sid}`.
    pub(super) fn session_show(&self, id: KeycardId) -> Response<Body> {
        let card = self.state.bouncer.table().show(id);
        let sessions = lock(&self.sessions);
        match (card, sessions.get(&id)) {
            (Some(c), Some(s)) => json_response(
                StatusCode::OK,
                json!({
                    "state": "authenticated",
                    "user": s.user.name,
                    "method": s.user.method,
                    "expires_at": c.expires_at,
                    "data": s.last.as_ref().map(data_json),
                }),
            ),
            _ => json_response(StatusCode::OK, json!({"state": "invalid"})),
        }
    }

    /// `DELETE /session/{sid}`: log out.
    pub(super) async fn session_delete(&self, id: KeycardId) -> Response<Body> {
        let gone = lock(&self.sessions).remove(&id);
        if let Some(s) = &gone {
            self.state.bouncer.unregister(s.requester, None);
        }
        let card = self.state.bouncer.revoke(id);
        // Durable before the answer: a logout survives a restart.
        if self.state.keeps_sessions() {
            if let Err(e) = self.forget(id).await {
                return error(&e);
            }
        }
        if let Some(card) = card {
            let by = gone.as_ref().map(|s| s.user.qualified());
            self.state
                .audit
                .keycard("logout", &card, by.as_deref())
                .await;
        }
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NO_CONTENT;
        r
    }

    /// Ends the logins whose challenge window has passed (dropped outside
    /// the lock: dropping one audits it and settles its throttle count).
    pub(super) fn sweep(&self, now: u64) {
        let expired: Vec<Pending> = {
            let mut pending = lock(&self.pending);
            let b = &self.state.bouncer;
            let ids: Vec<KeycardId> = pending
                .keys()
                .filter(|id| b.deadline(**id).is_none_or(|d| d <= now))
                .copied()
                .collect();
            ids.iter().filter_map(|id| pending.remove(id)).collect()
        };
        drop(expired);
    }

    /// Forgets logins and sessions whose keycards have left the table.
    pub(super) fn tidy(&self) {
        let mut pending = lock(&self.pending);
        if pending.len() > 1024 {
            let b = &self.state.bouncer;
            pending.retain(|id, _| b.deadline(*id).is_some());
        }
        drop(pending);
        let mut sessions = lock(&self.sessions);
        if sessions.len() > 1024 {
            let now = self.state.now_ms();
            let t = self.state.bouncer.table();
            let bouncer = &self.state.bouncer;
            sessions.retain(|id, s| {
                let live = t.check(*id, now).is_ok();
                if !live {
                    bouncer.unregister(s.requester, None);
                }
                live
            });
        }
    }
}
