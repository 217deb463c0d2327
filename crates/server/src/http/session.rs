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

use super::{error, json_response, lock, Body, Pending, Rest, Session, BUSY, REST_METHODS};
use crate::actions::login::{Login, Progress, Refusal, Requester};
use crate::caller::LoggedIn;
use crate::error::ApiError;
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
    if method == "opaque" {
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
        Refusal::Failed(keycard_auth::AuthError::Failed) => {
            error(&ApiError::new(ErrorCode::AuthFailed, "login failed"))
        }
        Refusal::Failed(e) => error(&crate::actions::login::auth_error(e)),
    }
}

impl Rest {
    /// `GET /`: the server and the methods it offers.
    pub(super) fn index(&self) -> Response<Body> {
        let cfg = self.state.auth();
        let methods: Vec<&str> = REST_METHODS
            .into_iter()
            .filter(|m| cfg.accepts(m) && self.state.methods.get(m).is_some())
            .collect();
        json_response(
            StatusCode::OK,
            json!({
                "server": concat!("keycard ", env!("CARGO_PKG_VERSION")),
                "methods": methods,
                "opaque": keycard_auth::OPAQUE_SUITE,
            }),
        )
    }

    /// `POST /session/new {method, user, data}`: starts a login by the
    /// client at `peer` (behind a trusted proxy, the client it names).
    pub(super) async fn session_new(&self, body: &[u8], peer: SocketAddr) -> Response<Body> {
        let Ok(j) = serde_json::from_slice::<serde_json::Value>(body) else {
            return error(&ApiError::bad("the body must be a JSON object"));
        };
        let (Some(method), Some(user)) = (
            j.get("method").and_then(|m| m.as_str()),
            j.get("user").and_then(|u| u.as_str()),
        ) else {
            return error(&ApiError::bad("'method' and 'user' must be strings"));
        };
        if !REST_METHODS.contains(&method) {
            return error(&ApiError::new(
                ErrorCode::AuthMethod,
                format!("method {method:?} is not offered over REST (scram-sha-256, opaque)"),
            ));
        }
        let data = match data_value(method, j.get("data")) {
            Ok(d) => d,
            Err(e) => return error(&e),
        };
        let msg = Msg::new()
            .with("typ", method)
            .with("ident", user)
            .with("data", data)
            .into_value();
        let req = Requester {
            id: self.state.next_conn_id(),
            peer,
            root: Path::root(),
            channel_key: None,
            via: "rest",
        };
        match Login::begin(&self.state, &req, &msg).await {
            Ok(Progress::Challenge { msg, login, .. }) => {
                let sid = login.card_id();
                let data = data_json(&msg.into_value());
                self.tidy();
                lock(&self.pending).insert(sid, Pending { login });
                json_response(
                    StatusCode::CREATED,
                    json!({"sid": sid.to_string(), "data": data}),
                )
            }
            Ok(Progress::Done(_)) => error(&ApiError::new(
                ErrorCode::Internal,
                "the method finished without a challenge",
            )),
            Err(r) => refusal(r),
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
        let Some(Pending { login }) = lock(&self.pending).remove(&id) else {
            return error(&ApiError::new(
                ErrorCode::NotFound,
                "no login waits under this session id",
            ));
        };
        let data = match data_value(login.method_name(), j.get("data")) {
            Ok(d) => d,
            Err(e) => {
                // A malformed answer ends the attempt, as on the wire.
                let _ = login.fail(e.text.clone()).await;
                return error(&e);
            }
        };
        let answer = Msg::new().with("data", data).into_value();
        match login.answer(&answer).await {
            Ok(Progress::Done(g)) => {
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
                lock(&self.sessions).insert(
                    id,
                    Session {
                        user: Arc::new(g.user),
                        key,
                        last,
                        guard: ReplayGuard::new(window, self.state.config.http_session_nonces),
                    },
                );
                g.card.settle();
                let mut r = json_response(StatusCode::SEE_OTHER, json!({"data": data}));
                if let Ok(v) = HeaderValue::from_str(&format!("/session/{id}")) {
                    r.headers_mut().insert(LOCATION, v);
                }
                r
            }
            Ok(Progress::Challenge { .. }) => error(&ApiError::new(
                ErrorCode::Internal,
                "the method asked for another round",
            )),
            Err(r) => refusal(r),
        }
    }

    /// Checks a request's signature (its preconditions included), time
    /// and nonce against its session; the session's keycard must be live.
    /// The error is why (for the `401`).
    pub(super) fn verify(
        &self,
        parts: &hyper::http::request::Parts,
        pre: super::kv::Preconditions<'_>,
        body: &[u8],
    ) -> Result<(KeycardId, Arc<LoggedIn>), String> {
        let Some(h) = parts.headers.get(AUTHORIZATION) else {
            return Err("this needs a signed request (Authorization: Keycard …)".into());
        };
        let auth = h
            .to_str()
            .map_err(|_| "malformed Authorization header".to_owned())
            .and_then(|t| Authorization::parse(t).map_err(|e| e.to_string()))?;
        let id = KeycardId::parse(&auth.sid).ok_or("no such session")?;
        let now = crate::audit::now_millis();
        // The bouncer's table is the authority on the keycard's end (a
        // keep-alive moves it there): the session's user carries that.
        let Ok(expires_at) = self.state.bouncer.table().check(id, now) else {
            lock(&self.sessions).remove(&id);
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
            Ok(()) if user.expires_at == expires_at => Ok((id, user)),
            Ok(()) => {
                Arc::make_mut(&mut s.user).expires_at = expires_at;
                Ok((id, s.user.clone()))
            }
            // A valid request over the nonce memory: slow down, not 401.
            Err(signed::SignError::Busy) => Err(BUSY.into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// `POST /session/{sid}/keepalive {ttl?}`: extends the session's
    /// keycard by its duration (or `ttl` seconds, if shorter), never past
    /// its maximum lifetime.
    pub(super) fn keep_alive(
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
        let card = self.state.bouncer.revoke(id);
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
            let now = crate::audit::now_millis();
            let t = self.state.bouncer.table();
            sessions.retain(|id, _| t.check(*id, now).is_ok());
        }
    }
}
