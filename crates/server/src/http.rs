//! The REST front end (issue 10, DESIGN §4), beside the msgpack listener,
//! on the same bouncer and store: JSON over HTTP/1.1, sessions as
//! keycards, every request after login signed (`keycard_auth::signed`).
//!
//! Built so far: `GET /`, the login (`POST /session/new`,
//! `PUT /session/{sid}`) for SCRAM-SHA-256 and OPAQUE through the same
//! [`Login`] pipeline as the msgpack `auth` action, and the signed
//! `GET` / `DELETE /session/{sid}`. Limits: header bytes, body bytes, a
//! per-request timeout and a connection cap, each a clear 4xx/5xx.
//!
//! A REST session is a keycard whose requester is the session itself (its
//! own requester id): revoking it by id, user or requester ends it at
//! once, since every signed request checks the keycard in the table.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use keycard_auth::bouncer::KeycardId;
use keycard_auth::signed::{self, Authorization, ReplayGuard};
use keycard_auth::SecretKey;
use keycard_proto::{ErrorCode, Msg, Path, Value};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::actions::login::{Login, Progress, Refusal, Requester};
use crate::conn::LoggedIn;
use crate::error::ApiError;
use crate::state::ServerState;

/// Largest request header block.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Longest a request may take, body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Methods offered over REST (their messages fit in `data`).
const REST_METHODS: [&str; 2] = ["scram-sha-256", "opaque"];

type Body = Full<Bytes>;

/// A login waiting for the client's answer.
struct Pending {
    login: Box<Login>,
}

/// A logged-in REST session.
struct Session {
    user: Arc<LoggedIn>,
    key: SecretKey,
    /// The server's final message (SCRAM's signature), for `GET`.
    last: Option<Value>,
    guard: ReplayGuard,
}

/// The REST front end's own state.
struct Rest {
    state: Arc<ServerState>,
    pending: Mutex<HashMap<KeycardId, Pending>>,
    sessions: Mutex<HashMap<KeycardId, Session>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves HTTP on `listener` until the task is dropped.
pub(crate) async fn serve(state: Arc<ServerState>, listener: TcpListener) {
    let rest = Arc::new(Rest {
        state: state.clone(),
        pending: Mutex::new(HashMap::new()),
        sessions: Mutex::new(HashMap::new()),
    });
    let slots = Arc::new(Semaphore::new(state.config.http_max_connections.max(1)));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Over the cap: a 503 and close, without reading the request.
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut socket = socket;
                let body = br#"{"error":"the server has too many HTTP connections; retry later","code":"too_many_connections"}"#;
                let head = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(body).await;
                let _ = socket.shutdown().await;
            });
            continue;
        };
        let rest = rest.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let rest = rest.clone();
                async move { Ok::<_, Infallible>(rest.handle(req, peer).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(MAX_HEADER_BYTES.max(8192))
                .serve_connection(TokioIo::new(socket), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
            drop(permit);
        });
    }
}

fn json_response(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The HTTP status for an error code.
fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest | ErrorCode::ReservedPath | ErrorCode::AuthMethod => {
            StatusCode::BAD_REQUEST
        }
        ErrorCode::UnknownAction | ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::AuthRequired | ErrorCode::KeycardExpired | ErrorCode::KeycardRevoked => {
            StatusCode::UNAUTHORIZED
        }
        ErrorCode::AuthFailed | ErrorCode::PermissionDenied | ErrorCode::TooManyAttempts => {
            StatusCode::FORBIDDEN
        }
        ErrorCode::Throttled
        | ErrorCode::TooManyRequests
        | ErrorCode::TooManyKeycards
        | ErrorCode::SeqInUse => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Conflict => StatusCode::PRECONDITION_FAILED,
        ErrorCode::HistoryGone => StatusCode::GONE,
        ErrorCode::TooManyConnections | ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StoreFailed | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `{error, code}` with the status its code maps to.
fn error(e: &ApiError) -> Response<Body> {
    let mut r = json_response(
        status_of(e.code),
        json!({"error": e.text, "code": e.code.as_str()}),
    );
    if let Some(v) = e
        .retry_after
        .and_then(|secs| HeaderValue::from_str(&secs.to_string()).ok())
    {
        r.headers_mut().insert(RETRY_AFTER, v);
    }
    r
}

/// What a session's replay guard says when it holds its maximum of nonces.
const BUSY: &str = "too many signed requests by this session in the time window; retry shortly";

/// A refused signed request: `429` when the session is only too busy,
/// else `401`.
fn refused(why: &str) -> Response<Body> {
    if why == BUSY {
        let mut r = error(&ApiError::new(ErrorCode::TooManyRequests, why));
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    unauthorized(why)
}

fn unauthorized(why: &str) -> Response<Body> {
    let mut r = error(&ApiError::new(ErrorCode::AuthRequired, why));
    r.headers_mut()
        .insert("www-authenticate", HeaderValue::from_static("Keycard"));
    r
}

/// A method message's `data` as JSON: a string as is, bytes as base64url.
fn data_json(msg: &Value) -> serde_json::Value {
    match msg.get("data") {
        Some(Value::Str(s)) => json!(s),
        Some(Value::Bin(b)) => json!(URL_SAFE_NO_PAD.encode(b)),
        _ => serde_json::Value::Null,
    }
}

/// The client's `data` for `method`: SCRAM's text, OPAQUE's bytes.
fn data_value(method: &str, data: Option<&serde_json::Value>) -> Result<Value, ApiError> {
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

fn refusal(r: Refusal) -> Response<Body> {
    match r {
        Refusal::Api(e) => error(&e),
        // Unknown user and wrong password: the same body.
        Refusal::Failed(keycard_auth::AuthError::Failed) => {
            error(&ApiError::new(ErrorCode::AuthFailed, "login failed"))
        }
        Refusal::Failed(e) => error(&crate::actions::login::auth_error(e)),
    }
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route<'a> {
    Index,
    OpenApi,
    SessionNew,
    SessionAnswer(&'a str),
    SessionShow(&'a str),
    SessionDelete(&'a str),
    KeepAlive(&'a str),
    Kv(&'a [&'a str]),
}

fn route_of<'a>(method: &Method, segs: &'a [&'a str]) -> Option<Route<'a>> {
    Some(match (method, segs) {
        (&Method::GET, [""]) => Route::Index,
        (&Method::GET, ["openapi.json"]) => Route::OpenApi,
        (&Method::POST, ["session", "new"]) => Route::SessionNew,
        (&Method::PUT, ["session", sid]) => Route::SessionAnswer(sid),
        (&Method::GET, ["session", sid]) => Route::SessionShow(sid),
        (&Method::DELETE, ["session", sid]) => Route::SessionDelete(sid),
        (&Method::POST, ["session", sid, "keepalive"]) => Route::KeepAlive(sid),
        (&Method::GET | &Method::PUT | &Method::DELETE, ["kv", rest @ ..]) => Route::Kv(rest),
        _ => return None,
    })
}

/// The OpenAPI document (docs/openapi.json), served as is.
const OPENAPI: &str = include_str!("../../../docs/openapi.json");

fn openapi() -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

impl Rest {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.route(req, peer)).await {
            Ok(r) => r,
            Err(_) => error(&ApiError::new(
                ErrorCode::ShuttingDown,
                "the request took too long",
            )),
        }
    }

    async fn route(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let max = self.state.config.http_max_body;
        let body = match Limited::new(body, max).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return error(&ApiError::new(
                    ErrorCode::TooLarge,
                    format!("the body is larger than {max} bytes (http_max_body)"),
                ))
            }
        };
        let path = parts.uri.path().to_owned();
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let Some(route) = route_of(&parts.method, &segs) else {
            return error(&ApiError::new(
                ErrorCode::NotFound,
                format!("no {} {path}", parts.method),
            ));
        };
        // Every route after login is signed, by the session it names (or,
        // for /kv, any live session).
        let signed = match route {
            Route::Index | Route::OpenApi | Route::SessionNew | Route::SessionAnswer(_) => None,
            Route::SessionShow(sid) | Route::SessionDelete(sid) | Route::KeepAlive(sid) => {
                match self.verify(&parts, &body) {
                    Ok(id) if id.to_string() == sid => Some(id),
                    Ok(_) => return unauthorized("the signature is for another session"),
                    Err(why) => return refused(&why),
                }
            }
            Route::Kv(_) => match self.verify(&parts, &body) {
                Ok(id) => Some(id),
                Err(why) => return refused(&why),
            },
        };
        let result = match (route, signed) {
            (Route::Index, _) => Ok(self.index()),
            (Route::OpenApi, _) => Ok(openapi()),
            (Route::SessionNew, _) => Ok(self.session_new(&body, peer).await),
            (Route::SessionAnswer(sid), _) => Ok(self.session_answer(sid, &body).await),
            (Route::SessionShow(_), Some(id)) => Ok(self.session_show(id)),
            (Route::SessionDelete(_), Some(id)) => Ok(self.session_delete(id).await),
            (Route::KeepAlive(_), Some(id)) => self.keep_alive(id, &body),
            (Route::Kv(rest), Some(id)) => self.kv(id, &parts, rest, &body).await,
            _ => Err(ApiError::new(ErrorCode::Internal, "unsigned signed route")),
        };
        result.unwrap_or_else(|e| error(&e))
    }

    /// `GET /`: the server and the methods it offers.
    fn index(&self) -> Response<Body> {
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

    /// `POST /session/new {method, user, data}`: starts a login.
    async fn session_new(&self, body: &[u8], peer: SocketAddr) -> Response<Body> {
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
    async fn session_answer(&self, sid: &str, body: &[u8]) -> Response<Body> {
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
                        guard: ReplayGuard::new(window, 10_000),
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

    /// Checks a request's signature, time and nonce against its session;
    /// the session's keycard must be live. The error is why (for the
    /// `401`).
    fn verify(
        &self,
        parts: &hyper::http::request::Parts,
        body: &[u8],
    ) -> Result<KeycardId, String> {
        let Some(h) = parts.headers.get(AUTHORIZATION) else {
            return Err("this needs a signed request (Authorization: Keycard …)".into());
        };
        let auth = h
            .to_str()
            .map_err(|_| "malformed Authorization header".to_owned())
            .and_then(|t| Authorization::parse(t).map_err(|e| e.to_string()))?;
        let id = KeycardId::parse(&auth.sid).ok_or("no such session")?;
        let now = crate::audit::now_millis();
        if self.state.bouncer.table().check(id, now).is_err() {
            lock(&self.sessions).remove(&id);
            return Err("the session has ended (expired, revoked or logged out)".into());
        }
        // The HMAC runs outside the sessions' lock (other connections
        // verify meanwhile); the nonce is admitted under it afterwards.
        let key = match lock(&self.sessions).get(&id) {
            Some(s) => s.key.clone(),
            None => return Err("no such session".into()),
        };
        let req = signed::Request {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            body,
        };
        signed::verify(&key, &req, &auth).map_err(|e| e.to_string())?;
        let mut sessions = lock(&self.sessions);
        let Some(s) = sessions.get_mut(&id) else {
            return Err("no such session".into());
        };
        match s.guard.admit(now / 1000, auth.ts, auth.nonce) {
            Ok(()) => Ok(id),
            // A valid request over the nonce memory: slow down, not 401.
            Err(signed::SignError::Busy) => Err(BUSY.into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// `GET|PUT|DELETE /kv/{path}`: data under the session's ACLs, in its
    /// domain. `PUT` takes `{"value": …}`; `If-Match: TOCK` makes a write
    /// conditional on the node's tock, `If-None-Match: *` on its absence.
    async fn kv(
        &self,
        id: KeycardId,
        parts: &hyper::http::request::Parts,
        segs: &[&str],
        body: &[u8],
    ) -> Result<Response<Body>, ApiError> {
        let user = lock(&self.sessions)
            .get(&id)
            .map(|s| s.user.clone())
            .ok_or_else(|| ApiError::new(ErrorCode::AuthRequired, "no such session"))?;
        let session = crate::conn::Session {
            root: user.domain.clone(),
            user: Some(user),
            ..Default::default()
        };
        crate::actions::check_login(&self.state, &session)?;
        let path = url_path(segs)?;
        let mut msg = Msg::new().with("path", path.to_value()).with("nchain", 0);
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        if let Some(tag) = header("if-match") {
            let tock: u64 = tag
                .trim_matches('"')
                .parse()
                .map_err(|_| ApiError::bad("If-Match must be a tock (a number)"))?;
            msg.set(
                "chain",
                Msg::new()
                    .with("node", self.state.config.node.as_str())
                    .with("tick", tock),
            );
        } else if header("if-none-match") == Some("*") {
            msg.set("chain", Value::Nil);
        }
        let (status, reply) = match parts.method {
            Method::GET => {
                let r = crate::actions::data::get_in(&self.state, &session, &msg.into_value())
                    .await?
                    .into_value();
                if r.get("value").is_none() {
                    return Err(ApiError::new(ErrorCode::NotFound, "no value at this path"));
                }
                (StatusCode::OK, r)
            }
            Method::PUT => {
                let j: serde_json::Value = serde_json::from_slice(body)
                    .map_err(|_| ApiError::bad("the body must be JSON: {\"value\": …}"))?;
                let v = j
                    .get("value")
                    .ok_or_else(|| ApiError::bad("the body must be JSON: {\"value\": …}"))?;
                msg.set("value", from_json(v, 0)?);
                let r =
                    crate::actions::data::set_in(&self.state, &session, &msg.into_value()).await?;
                (StatusCode::OK, r.into_value())
            }
            _ => {
                let r = crate::actions::data::delete_in(&self.state, &session, &msg.into_value())
                    .await?;
                (StatusCode::OK, r.into_value())
            }
        };
        let tock = reply.get("tock").and_then(Value::as_u64);
        let mut out = json_response(status, to_json(&strip_chain(reply)));
        // The node's tock, for a later If-Match.
        if let Some(v) = tock.and_then(|t| HeaderValue::from_str(&format!("\"{t}\"")).ok()) {
            out.headers_mut().insert(hyper::header::ETAG, v);
        }
        Ok(out)
    }

    /// `POST /session/{sid}/keepalive {ttl?}`: extends the session's
    /// keycard by its duration (or `ttl` seconds, if shorter), never past
    /// its maximum lifetime.
    fn keep_alive(&self, id: KeycardId, body: &[u8]) -> Result<Response<Body>, ApiError> {
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
    fn session_show(&self, id: KeycardId) -> Response<Body> {
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
    async fn session_delete(&self, id: KeycardId) -> Response<Body> {
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

    /// Forgets logins and sessions whose keycards have left the table.
    fn tidy(&self) {
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

/// A `/kv/…` URL's path: each segment, percent-decoded, is one element in
/// DistKV's text form (`app` a string, `:5` the integer 5, `a:.b` the
/// string "a.b"; docs/REST.md).
fn url_path(segs: &[&str]) -> Result<Path, ApiError> {
    let mut elems = Vec::with_capacity(segs.len());
    for seg in segs {
        let text = percent_decode(seg)
            .ok_or_else(|| ApiError::bad("a path segment is not valid percent-encoded UTF-8"))?;
        let one = Path::parse(&text).map_err(ApiError::from)?;
        match one.elems() {
            [e] => elems.push(e.clone()),
            _ => {
                return Err(ApiError::bad(format!(
                "each URL segment is one element ({text:?} is not; write a dot in a name as ':.')"
            )))
            }
        }
    }
    Ok(Path::new(elems))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A reply without DistKV's chain (REST has the tock in `ETag`).
fn strip_chain(v: Value) -> Value {
    match v {
        Value::Map(m) => Value::Map(
            m.into_iter()
                .filter(|(k, _)| k.as_str() != Some("chain"))
                .collect(),
        ),
        other => other,
    }
}

/// msgpack → JSON: bytes as `{"$bytes": base64url}`, integers beyond
/// JSON's safe range and other extensions as strings/objects that say so.
fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Nil => serde_json::Value::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => match i64::try_from(*i) {
            Ok(n) => json!(n),
            Err(_) => json!({"$int": i.to_string()}),
        },
        Value::F32(f) => json!(f),
        Value::F64(f) => json!(f),
        Value::Str(s) => json!(s),
        Value::Bin(b) => json!({"$bytes": URL_SAFE_NO_PAD.encode(b)}),
        Value::Array(a) => serde_json::Value::Array(a.iter().map(to_json).collect()),
        Value::Map(m) => {
            let mut o = serde_json::Map::new();
            for (k, v) in m {
                let key = match k {
                    Value::Str(s) => s.clone(),
                    other => to_json(other).to_string(),
                };
                o.insert(key, to_json(v));
            }
            serde_json::Value::Object(o)
        }
        other => json!({"$msgpack": format!("{other:?}")}),
    }
}

/// JSON → msgpack (`{"$bytes": …}` back to bytes), at most 64 levels deep.
fn from_json(v: &serde_json::Value, depth: usize) -> Result<Value, ApiError> {
    if depth > 64 {
        return Err(ApiError::bad("the value is nested too deeply"));
    }
    Ok(match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::from(i),
            (_, Some(u), _) => Value::from(u),
            (_, _, Some(f)) => Value::F64(f),
            _ => return Err(ApiError::bad("a number JSON cannot carry")),
        },
        serde_json::Value::String(s) => Value::Str(s.clone()),
        serde_json::Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| from_json(x, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        serde_json::Value::Object(o) => {
            if let (1, Some(serde_json::Value::String(b))) = (o.len(), o.get("$bytes")) {
                let bytes = URL_SAFE_NO_PAD
                    .decode(b)
                    .map_err(|_| ApiError::bad("$bytes must be base64url"))?;
                return Ok(Value::Bin(bytes));
            }
            Value::Map(
                o.iter()
                    .map(|(k, x)| Ok((Value::Str(k.clone()), from_json(x, depth + 1)?)))
                    .collect::<Result<_, ApiError>>()?,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route: what `route_of` matches, as docs/openapi.json names it.
    const ROUTES: [(&str, &str); 10] = [
        ("GET", "/"),
        ("GET", "/openapi.json"),
        ("POST", "/session/new"),
        ("PUT", "/session/{sid}"),
        ("GET", "/session/{sid}"),
        ("DELETE", "/session/{sid}"),
        ("POST", "/session/{sid}/keepalive"),
        ("GET", "/kv/{path}"),
        ("PUT", "/kv/{path}"),
        ("DELETE", "/kv/{path}"),
    ];

    /// docs/openapi.json describes exactly the routes the server has, and
    /// every one of them routes.
    #[test]
    fn the_openapi_document_matches_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        let mut documented = Vec::new();
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for method in ops.as_object().expect("operations").keys() {
                if method != "parameters" {
                    documented.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
        for (method, path) in ROUTES {
            let concrete = path
                .replace("{sid}", "00112233445566778899aabbccddeeff")
                .replace("{path}", "app/config");
            let segs: Vec<&str> = concrete.trim_start_matches('/').split('/').collect();
            let m = Method::from_bytes(method.as_bytes()).expect("method");
            assert!(
                route_of(&m, &segs).is_some(),
                "{method} {path} routes nowhere"
            );
        }
        assert!(route_of(&Method::PATCH, &["kv", "x"]).is_none());
    }
}
