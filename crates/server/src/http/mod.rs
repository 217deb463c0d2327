//! The REST front end (DESIGN §4), beside the msgpack listener,
//! on the same bouncer and store: JSON over HTTP/1.1, sessions as
//! keycards, every request after login signed (`keycard_auth::signed`).
//!
//! Built so far: `GET /`, the login (`POST /session/new`,
//! `PUT /session/{sid}`) for SCRAM-SHA-256 and OPAQUE through the same
//! `Login` pipeline as the msgpack `auth` action, and the signed
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

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use keycard_auth::bouncer::KeycardId;
use keycard_auth::signed::ReplayGuard;
use keycard_auth::SecretKey;
use keycard_proto::{ErrorCode, Value};
use serde_json::json;
use tokio::net::TcpStream;

use crate::caller::LoggedIn;
use crate::error::ApiError;
use crate::listener::{Listener, Protocol, Refused, Stream};
use crate::state::ServerState;
use keycard_auth::ChannelBinding;

mod durable;
mod kv;
mod page;
mod session;

use session::Pending;
mod users;

/// Largest request header block.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Longest a request may take, body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The loaded methods offered over REST (their messages fit in `data`
/// and they agree a session key), in the registry's order, as (the name a
/// client gives, the method it runs): over TLS (`tls`) each one's
/// channel-binding variant too, which runs the method bound to the
/// connection.
fn rest_methods(
    state: &ServerState,
    tls: bool,
) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
    state.methods.infos().filter(|i| i.rest).flat_map(move |i| {
        std::iter::once((i.name, i.name)).chain(i.plus.filter(|_| tls).map(|p| (p, i.name)))
    })
}

type Body = Full<Bytes>;

/// A logged-in REST session.
struct Session {
    user: Arc<LoggedIn>,
    key: SecretKey,
    /// The server's final message (SCRAM's signature), for `GET`.
    last: Option<Value>,
    guard: ReplayGuard,
    /// The session's requester id (the bouncer tells it of the end).
    requester: u64,
    /// What a keep-alive grants (Unix ms), kept with the session.
    duration_ms: u64,
    /// The latest `ts` (Unix s) admitted that was ahead of the server's
    /// clock, kept with the session before the request runs: after a
    /// restart nothing at or before it is admitted again.
    ahead: u64,
}

/// The REST front end's own state.
struct Rest {
    /// Itself, for the bouncer to hold weakly as its sessions' watcher.
    me: std::sync::Weak<Rest>,
    state: Arc<ServerState>,
    pending: Mutex<HashMap<KeycardId, Pending>>,
    sessions: Mutex<HashMap<KeycardId, Session>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves HTTP on `listener` until the task is dropped.
pub(crate) async fn serve(state: Arc<ServerState>, listener: Listener) {
    let rest = Arc::new_cyclic(|me| Rest {
        me: me.clone(),
        state: state.clone(),
        pending: Mutex::new(HashMap::new()),
        sessions: Mutex::new(HashMap::new()),
    });
    // The sessions kept across a restart come back before any request.
    match rest.restore().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(sessions = n, "REST sessions kept across the restart"),
        Err(e) => tracing::error!(error = %e.text, "the kept REST sessions could not be read"),
    }
    // A login nobody answers ends with its challenge window (its
    // reservation then counts as a failed attempt), not whenever the map
    // happens to be tidied.
    let weak = Arc::downgrade(&rest);
    let _sweeper = AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(rest) = weak.upgrade() else { return };
            rest.sweep(rest.state.now_ms());
        }
    }));
    // hyper's header timer runs from when it starts waiting for a request's
    // head: on a kept-alive connection, from the end of the previous
    // response. One timer thus closes idle connections and slow heads.
    let idle = (state.config.http_idle_timeout > 0)
        .then(|| Duration::from_secs(state.config.http_idle_timeout));
    listener.run(Http { rest, idle }).await
}

/// The HTTP protocol, as a listener serves it.
#[derive(Clone)]
struct Http {
    rest: Arc<Rest>,
    idle: Option<Duration>,
}

impl Protocol for Http {
    fn serve(
        self,
        socket: Stream,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let Http { rest, idle } = self;
        let binding = socket.binding().cloned().map(Arc::new);
        async move {
            let service = hyper::service::service_fn(move |req| {
                let rest = rest.clone();
                let binding = binding.clone();
                async move { Ok::<_, Infallible>(rest.handle(req, peer, binding).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(idle)
                .max_buf_size(MAX_HEADER_BYTES.max(8192))
                .serve_connection(TokioIo::new(socket), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        }
    }

    fn refuse(
        self,
        socket: TcpStream,
        peer: SocketAddr,
        why: Refused,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let why = match why {
            Refused::PerAddress => {
                tracing::warn!(%peer, "HTTP connection refused: http_max_connections_per_address reached");
                "too many HTTP connections from this address (http_max_connections_per_address); retry later"
            }
            Refused::Total => "the server has too many HTTP connections; retry later",
        };
        refuse(socket, why)
    }
}

/// Aborts a task when dropped (the REST listener's own tasks end with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Over a connection cap: a `503` and close, without reading the request.
async fn refuse(mut socket: TcpStream, why: &str) {
    use tokio::io::AsyncWriteExt;
    let body = json!({"error": why, "code": ErrorCode::TooManyConnections.as_str()}).to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        socket.write_all(head.as_bytes()).await?;
        socket.write_all(body.as_bytes()).await?;
        socket.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
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
        ErrorCode::UnknownAction | ErrorCode::NotFound | ErrorCode::NoSuchAcl => {
            StatusCode::NOT_FOUND
        }
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::AuthRequired | ErrorCode::KeycardExpired | ErrorCode::KeycardRevoked => {
            StatusCode::UNAUTHORIZED
        }
        ErrorCode::AuthFailed
        | ErrorCode::PermissionDenied
        | ErrorCode::TooManyAttempts
        | ErrorCode::ReauthRequired => StatusCode::FORBIDDEN,
        ErrorCode::Throttled
        | ErrorCode::TooManyRequests
        | ErrorCode::TooManyKeycards
        | ErrorCode::SeqInUse => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Conflict => StatusCode::PRECONDITION_FAILED,
        ErrorCode::HistoryGone => StatusCode::GONE,
        ErrorCode::Timeout => StatusCode::REQUEST_TIMEOUT,
        ErrorCode::TooManyConnections | ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StoreFailed | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::BackendUnavailable => StatusCode::SERVICE_UNAVAILABLE,
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

/// A body that did not arrive in time: `408`, and the connection closes
/// (what is left of the body would be read as the next request).
fn body_too_slow(wait: Duration) -> Response<Body> {
    let mut r = error(&ApiError::new(
        ErrorCode::Timeout,
        format!(
            "the request's body took more than {} s to arrive (http_body_timeout)",
            wait.as_secs()
        ),
    ));
    r.headers_mut()
        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
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
    User(&'a str),
    LoginPage,
    LoginScript,
    Healthz,
    Readyz,
    Metrics,
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
        (&Method::GET | &Method::POST | &Method::PUT | &Method::DELETE, ["user", name]) => {
            Route::User(name)
        }
        (&Method::GET, ["login"]) => Route::LoginPage,
        (&Method::GET, ["login.js"]) => Route::LoginScript,
        (&Method::GET, ["healthz"]) => Route::Healthz,
        (&Method::GET, ["readyz"]) => Route::Readyz,
        (&Method::GET, ["metrics"]) => Route::Metrics,
        _ => return None,
    })
}

/// The OpenAPI document (docs/openapi.json), served as is.
const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

fn openapi() -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

impl Rest {
    /// `GET /readyz`: 200 when every check passes, else 503; each check
    /// named with what it found.
    async fn readyz(&self) -> Response<Body> {
        let checks = self.state.readiness().await;
        let ready = checks.iter().all(|(_, ok, _)| *ok);
        let body: serde_json::Map<String, serde_json::Value> = checks
            .into_iter()
            .map(|(name, ok, detail)| (name.to_owned(), json!({"ok": ok, "detail": detail})))
            .collect();
        let failing: Vec<&String> = body
            .iter()
            .filter(|(_, v)| v.get("ok") == Some(&serde_json::Value::Bool(false)))
            .map(|(k, _)| k)
            .collect();
        let answer = json!({"ready": ready, "failing": failing, "checks": body});
        let status = match ready {
            true => StatusCode::OK,
            false => StatusCode::SERVICE_UNAVAILABLE,
        };
        json_response(status, answer)
    }

    /// An unsigned `GET /session/{sid}`: `{state: "waiting", expires_at}`
    /// (the challenge's deadline) while a login waits under `sid`; else
    /// `401` (an authenticated session's requests are signed).
    fn session_waiting(&self, sid: &str) -> Response<Body> {
        let waiting = KeycardId::parse(sid).and_then(|id| {
            lock(&self.pending).contains_key(&id).then_some(())?;
            self.state.bouncer.deadline(id)
        });
        match waiting {
            Some(deadline) => json_response(
                StatusCode::OK,
                json!({"state": "waiting", "expires_at": deadline}),
            ),
            None => unauthorized("this needs a signed request (Authorization: Keycard …)"),
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        binding: Option<Arc<ChannelBinding>>,
    ) -> Response<Body> {
        let routed = self.route(req, peer, binding.as_deref());
        let mut r = match tokio::time::timeout(REQUEST_TIMEOUT, routed).await {
            Ok(r) => r,
            Err(_) => error(&ApiError::new(
                ErrorCode::ShuttingDown,
                "the request took too long",
            )),
        };
        // Every answer is one session's (challenges, session state, values,
        // user records, refusals): no cache may keep or share any of them.
        r.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        binding: Option<&ChannelBinding>,
    ) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let max = self.state.config.http_max_body;
        let wait = Duration::from_secs(self.state.config.http_body_timeout);
        let body = match tokio::time::timeout(wait, Limited::new(body, max).collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(_)) => {
                return error(&ApiError::new(
                    ErrorCode::TooLarge,
                    format!("the body is larger than {max} bytes (http_max_body)"),
                ))
            }
            Err(_) => return body_too_slow(wait),
        };
        let path = parts.uri.path().to_owned();
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let Some(route) = route_of(&parts.method, &segs) else {
            return error(&ApiError::new(
                ErrorCode::NotFound,
                format!("no {} {path}", parts.method),
            ));
        };
        // Read once, for the signature and for /kv alike.
        let pre = match kv::Preconditions::of(&parts.headers) {
            Ok(p) => p,
            Err(e) => return error(&e),
        };
        // Every route after login is signed, by the session it names (or,
        // for /kv and /user, any live session).
        let signed = match route {
            Route::Index
            | Route::OpenApi
            | Route::LoginPage
            | Route::LoginScript
            | Route::Healthz
            | Route::Readyz
            | Route::Metrics
            | Route::SessionNew
            | Route::SessionAnswer(_) => None,
            // A login still waiting for its proof has no key to sign with:
            // its (secret, unguessable) id alone shows that it waits.
            Route::SessionShow(sid) if !parts.headers.contains_key(AUTHORIZATION) => {
                return self.session_waiting(sid);
            }
            Route::SessionShow(sid) | Route::SessionDelete(sid) | Route::KeepAlive(sid) => {
                match self.verify_kept(&parts, pre, &body).await {
                    Ok((id, _)) if id.to_string() == sid => Some(id),
                    Ok(_) => return unauthorized("the signature is for another session"),
                    Err(why) => return refused(&why),
                }
            }
            Route::Kv(_) | Route::User(_) => None,
        };
        // The caller of /kv and /user: a signed request's session; while
        // the server is open (no method current), an unsigned request is
        // anyone's, as on the msgpack listener.
        let caller = match route {
            Route::Kv(_) | Route::User(_) => {
                if !parts.headers.contains_key(AUTHORIZATION) && self.state.is_open() {
                    Some(crate::caller::Caller::default())
                } else {
                    match self.verify_kept(&parts, pre, &body).await {
                        Ok((_, user)) => Some(crate::caller::Caller {
                            root: user.domain.clone(),
                            user: Some(user),
                        }),
                        Err(why) => return refused(&why),
                    }
                }
            }
            _ => None,
        };
        // Only a write to /kv obeys a precondition; anywhere else it
        // would be dropped, and a write the client made conditional (a
        // re-key, a deletion) done unconditionally: refused instead (after
        // the signature, which covers the headers, was checked).
        let obeys =
            matches!(route, Route::Kv(_)) && matches!(parts.method, Method::PUT | Method::DELETE);
        if !obeys && !pre.is_empty() {
            return error(&ApiError::bad(format!(
                "{} {path} takes no If-Match or If-None-Match (only PUT and DELETE /kv/… obey them)",
                parts.method
            )));
        }
        let result = match (route, signed, caller) {
            (Route::Index, ..) => Ok(self.index(binding.is_some())),
            (Route::OpenApi, ..) => Ok(openapi()),
            (Route::LoginPage, ..) => Ok(page::login_page()),
            (Route::LoginScript, ..) => Ok(page::login_script()),
            // The process answers: nothing else is asked.
            (Route::Healthz, ..) => Ok(json_response(StatusCode::OK, json!({"status": "alive"}))),
            (Route::Readyz, ..) => Ok(self.readyz().await),
            // Only where the configuration allows it (the separate
            // `metrics` listener is the other way).
            (Route::Metrics, ..) if self.state.config.metrics_on_http => {
                let mut r = Response::new(Full::new(Bytes::from(self.state.metrics_text().await)));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
                );
                Ok(r)
            }
            (Route::Metrics, ..) => Err(ApiError::new(
                ErrorCode::NotFound,
                "no GET /metrics here (metrics_on_http is off; see the metrics listener)",
            )),
            (Route::SessionNew, ..) => {
                // Behind a trusted proxy, the client it names.
                let client = crate::forwarded::client_address(
                    peer,
                    &parts.headers,
                    &self.state.config.trusted_proxies,
                );
                Ok(self.session_new(&body, client, binding).await)
            }
            (Route::SessionAnswer(sid), ..) => Ok(self.session_answer(sid, &body).await),
            (Route::SessionShow(_), Some(id), _) => Ok(self.session_show(id)),
            (Route::SessionDelete(_), Some(id), _) => Ok(self.session_delete(id).await),
            (Route::KeepAlive(_), Some(id), _) => self.keep_alive(id, &body).await,
            (Route::Kv(rest), _, Some(s)) => self.kv(s, &parts, pre, rest, &body).await,
            (Route::User(name), _, Some(s)) => self.user(s, &parts.method, name, &body).await,
            _ => Err(ApiError::new(ErrorCode::Internal, "unsigned signed route")),
        };
        result.unwrap_or_else(|e| error(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route: what `route_of` matches, as docs/openapi.json names it.
    const ROUTES: [(&str, &str); 19] = [
        ("GET", "/"),
        ("GET", "/metrics"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/openapi.json"),
        ("POST", "/session/new"),
        ("PUT", "/session/{sid}"),
        ("GET", "/session/{sid}"),
        ("DELETE", "/session/{sid}"),
        ("POST", "/session/{sid}/keepalive"),
        ("GET", "/kv/{path}"),
        ("PUT", "/kv/{path}"),
        ("DELETE", "/kv/{path}"),
        ("GET", "/user/{name}"),
        ("POST", "/user/{name}"),
        ("PUT", "/user/{name}"),
        ("DELETE", "/user/{name}"),
        ("GET", "/login"),
        ("GET", "/login.js"),
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
                .replace("{path}", "app/config")
                .replace("{name}", "alice");
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
