//! keycard's REST API from Rust (docs/REST.md): the login (SCRAM-SHA-256
//! or OPAQUE over `POST /session/new` and `PUT /session/{sid}`, agreeing
//! the session key `K`, then any further factors the server prompts
//! for), signed requests (version 2, `If-Match` and `If-None-Match`
//! signed too), keep-alive, logout, `/kv` and `/user`.
//!
//! Three layers, each usable alone:
//! - [`Login`] / [`Challenged`] / [`Prompted`] and [`Session`]: sans-IO.
//!   The login's messages and checks (a further factor's prompt
//!   included), and signing with the time and the nonce passed in.
//! - [`Connection`]: one HTTP/1.1 connection (keep-alive, bounded reads).
//! - [`RestClient`]: both together against one server, reading the clock
//!   and drawing nonces; one call per route, answers and errors typed.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keycard_client::rest::RestError> {
//! use keycard_auth::Password;
//! use keycard_client::rest::{Login, Precondition, RestClient};
//! use keycard_proto::Path;
//! let rest = RestClient::new("127.0.0.1:8427");
//! let session = rest.login(Login::scram("alice", Password::new("pw"))?).await?;
//! let path = Path::parse("app.greeting").expect("a path");
//! let written = rest
//!     .put(Some(&session), &path, &serde_json::json!("hi"), Precondition::None)
//!     .await?;
//! rest.put(Some(&session), &path, &serde_json::json!("ho"), Precondition::IfMatch(written.tock))
//!     .await?;
//! rest.logout(&session).await?;
//! # Ok(()) }
//! ```

mod http;
mod login;
mod session;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use keycard_auth::{ClientMethod, OpaqueClient, Password, Step, Verifier, MIN_ITERATIONS};
use keycard_proto::{ErrorCode, Msg, Path, Value};
use serde_json::json;

use crate::FactorSource;

pub use http::{Connection, Response, MAX_BODY, MAX_HEAD, MAX_HEADERS};
pub use login::{Challenged, Continued, Login, Prompted};
pub use session::{kv_target, session_target, user_target, Precondition, Session};

/// The most `PUT /session/{sid}` one login sends before giving up on a
/// server that keeps prompting.
const MAX_PUTS: usize = 32;

/// What a login says when SCRAM's server signature does not verify: the
/// server does not hold the user's verifier.
pub(crate) const UNVERIFIED: &str = "the server could not be verified";

/// Why a REST call failed.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// Connecting, writing or reading failed, or the server closed the
    /// connection before its answer was complete.
    #[error("I/O error: {0}")]
    Io(String),
    /// The server's answer is not HTTP this client reads (or over its
    /// limits).
    #[error("bad HTTP answer: {0}")]
    Http(String),
    /// The request cannot be sent as asked (a header with a line break, a
    /// method not offered over REST).
    #[error("bad request: {0}")]
    Request(String),
    /// The server answered with another status than the route's success.
    #[error("{status}: {text}{}", .code.map(|c| format!(" ({})", c.as_str())).unwrap_or_default())]
    Status {
        /// The HTTP status.
        status: u16,
        /// The stable code of the JSON error body, when there is a known one.
        code: Option<ErrorCode>,
        /// The error body's text (or the body itself).
        text: String,
        /// The whole answer.
        response: Box<Response>,
    },
    /// A well-formed answer without what the route promises.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// The login failed on this side: OPAQUE's KE2 did not open
    /// ([`crate::WRONG_CREDENTIALS`]), or the server could not prove it
    /// holds the user's SCRAM verifier.
    #[error("login failed: {0}")]
    Auth(String),
}

impl RestError {
    /// The server's error code, for a [`RestError::Status`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            RestError::Status { code, .. } => *code,
            _ => None,
        }
    }

    /// The HTTP status, for a [`RestError::Status`].
    pub fn status(&self) -> Option<u16> {
        match self {
            RestError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether this is a refused login: the server's `auth_failed`, or
    /// OPAQUE's client finding the credentials wrong. A wrong password and
    /// an unknown user look the same.
    pub fn is_wrong_credentials(&self) -> bool {
        match self {
            RestError::Auth(text) => text == crate::WRONG_CREDENTIALS,
            _ => self.code() == Some(ErrorCode::AuthFailed),
        }
    }

    /// The error for an answer that is not the success expected.
    fn status_of(response: Response) -> RestError {
        let json = response.json().ok();
        let mut text = json
            .as_ref()
            .and_then(|j| j.get("error"))
            .and_then(serde_json::Value::as_str)
            .map_or_else(
                || String::from_utf8_lossy(&response.body).into_owned(),
                str::to_owned,
            );
        // A message, not a page: the whole answer stays in `response`.
        if text.len() > 300 {
            let mut end = 300;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        let code = json
            .as_ref()
            .and_then(|j| j.get("code"))
            .and_then(serde_json::Value::as_str)
            .and_then(ErrorCode::parse);
        RestError::Status {
            status: response.status,
            code,
            text,
            response: Box::new(response),
        }
    }
}

/// The answer if its status is `want`, else the error it says.
fn expect(response: Response, want: u16) -> Result<Response, RestError> {
    if response.status == want {
        Ok(response)
    } else {
        Err(RestError::status_of(response))
    }
}

/// What `GET /session/{sid}` says of a logged-in session.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionInfo {
    /// The user.
    pub user: String,
    /// The method it logged in with.
    pub method: String,
    /// When the session ends unless kept alive (Unix ms).
    pub expires_at: u64,
}

/// A node's value over REST and the tock of its last change.
#[derive(Clone, Debug, PartialEq)]
pub struct KvNode {
    /// The value as JSON (msgpack bytes as `{"$bytes": …}`, big integers
    /// as `{"$int": …}`).
    pub value: serde_json::Value,
    /// Its last change (what `If-Match` names).
    pub tock: u64,
}

/// What a `PUT` or `DELETE /kv/…` did.
#[derive(Clone, Debug, PartialEq)]
pub struct KvWrite {
    /// Whether the value changed.
    pub changed: bool,
    /// The write's tock.
    pub tock: u64,
    /// The value replaced, when the session may read it.
    pub prev: Option<serde_json::Value>,
}

/// One record of a user, as `GET /user/{name}` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct UserMethod {
    /// The method.
    pub method: String,
    /// The ACL the record binds, if any.
    pub acl: Option<String>,
    /// The groups the record is in.
    pub groups: Vec<String>,
}

/// One of a user's last logins.
#[derive(Clone, Debug, PartialEq)]
pub struct LastLogin {
    /// When (Unix ms).
    pub at: u64,
    /// The client's address.
    pub client: String,
    /// The method.
    pub method: String,
    /// `rest` or `msgpack`.
    pub via: String,
}

/// What `GET /user/{name}` shows.
#[derive(Clone, Debug, PartialEq)]
pub struct UserInfo {
    /// The name.
    pub name: String,
    /// Its records, one per method.
    pub methods: Vec<UserMethod>,
    /// Its last logins, newest first.
    pub last_logins: Vec<LastLogin>,
}

/// A credential to set with `POST` / `PUT /user/{name}`. Neither carries
/// the password: SCRAM's is a verifier made here, OPAQUE's a registration
/// finished here.
pub enum Credential {
    /// A SCRAM-SHA-256 verifier.
    Scram(Verifier),
    /// An OPAQUE registration with this password (two requests).
    Opaque(Password),
}

impl Credential {
    /// A SCRAM-SHA-256 verifier for `password` (fresh salt, the least
    /// iteration count the server takes).
    pub fn scram(password: &Password) -> Result<Credential, RestError> {
        Verifier::generate(password, MIN_ITERATIONS)
            .map(Credential::Scram)
            .map_err(|e| RestError::Request(e.to_string()))
    }

    fn method(&self) -> &'static str {
        match self {
            Credential::Scram(_) => keycard_auth::SCRAM_SHA_256,
            Credential::Opaque(_) => keycard_auth::OPAQUE,
        }
    }
}

/// Unix seconds now, for a signature's `ts`.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A client of one server's REST API.
///
/// By default requests share one keep-alive connection, one at a time (a
/// call waits for the one before it); make one client per concurrent
/// caller. [`RestClient::connection_per_request`] opens a connection per
/// request instead and closes it after the answer.
pub struct RestClient {
    addr: String,
    per_request: bool,
    conn: tokio::sync::Mutex<Option<Connection>>,
    /// HTTPS, trusting what this trusts.
    tls: Option<crate::ClientTls>,
}

impl RestClient {
    /// A client of the REST API at `addr` (`host:port`).
    pub fn new(addr: impl Into<String>) -> RestClient {
        RestClient {
            addr: addr.into(),
            per_request: false,
            conn: tokio::sync::Mutex::new(None),
            tls: None,
        }
    }

    /// This client over HTTPS, trusting what `tls` trusts.
    pub fn with_tls(self, tls: crate::ClientTls) -> RestClient {
        RestClient {
            tls: Some(tls),
            ..self
        }
    }

    async fn connect(&self) -> Result<Connection, RestError> {
        Connection::open(self.addr.as_str(), &self.addr, self.tls.as_ref()).await
    }

    /// A client that opens a connection for each request (sent with
    /// `Connection: close`).
    pub fn connection_per_request(addr: impl Into<String>) -> RestClient {
        RestClient {
            per_request: true,
            ..RestClient::new(addr)
        }
    }

    /// The server's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends a request as given and returns the answer, whatever its
    /// status. `fields` are extra header fields.
    pub async fn send(
        &self,
        method: &str,
        target: &str,
        fields: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, RestError> {
        if self.per_request {
            let mut all = Vec::with_capacity(fields.len() + 1);
            all.push(("connection", "close"));
            all.extend_from_slice(fields);
            let mut c = self.connect().await?;
            return c.send(method, target, &all, body).await;
        }
        let mut slot = self.conn.lock().await;
        let reused = match slot.as_ref() {
            Some(c) if c.is_open() => true,
            _ => {
                *slot = Some(self.connect().await?);
                false
            }
        };
        let Some(c) = slot.as_mut() else {
            return Err(RestError::Io("no connection".into()));
        };
        match c.send(method, target, fields, body).await {
            // A kept connection the server closed while it was idle (after
            // `http_idle_timeout`) fails before any byte of an answer; the
            // server never read the request, so it goes again on a new one.
            Err(RestError::Io(_)) if reused && c.closed_unanswered() => {
                let mut fresh = self.connect().await?;
                let r = fresh.send(method, target, fields, body).await;
                *slot = Some(fresh);
                r
            }
            other => other,
        }
    }

    /// Sends a request signed by `session` (version 2, now, a fresh
    /// nonce); its `If-Match` and `If-None-Match`, if `fields` has them,
    /// are signed too.
    pub async fn send_signed(
        &self,
        session: &Session,
        method: &str,
        target: &str,
        fields: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, RestError> {
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map_or("", |(_, v)| *v)
        };
        let auth = session.authorization(
            method,
            target,
            body,
            field("if-match"),
            field("if-none-match"),
            now_secs(),
            rand::random(),
        );
        let mut all = Vec::with_capacity(fields.len() + 1);
        all.push(("authorization", auth.as_str()));
        all.extend_from_slice(fields);
        self.send(method, target, &all, body).await
    }

    /// A request signed by `session` when there is one (an open server
    /// takes unsigned `/kv` and `/user` requests).
    async fn maybe_signed(
        &self,
        session: Option<&Session>,
        method: &str,
        target: &str,
        fields: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, RestError> {
        match session {
            Some(s) => self.send_signed(s, method, target, fields, body).await,
            None => self.send(method, target, fields, body).await,
        }
    }

    /// `GET /`: the server's name, the methods offered over REST and
    /// OPAQUE's ciphersuite.
    pub async fn index(&self) -> Result<serde_json::Value, RestError> {
        expect(self.send("GET", "/", &[], b"").await?, 200)?.json()
    }

    /// What this client's connections can be bound to: the TLS
    /// channel-binding data of its kept connection (opened if there is
    /// none), or of a new one when it opens one per request; `None` over
    /// plain HTTP.
    pub async fn channel_binding(&self) -> Result<Option<keycard_auth::ChannelBinding>, RestError> {
        if self.tls.is_none() {
            return Ok(None);
        }
        if self.per_request {
            return Ok(self.connect().await?.channel_binding().cloned());
        }
        let mut slot = self.conn.lock().await;
        if !slot.as_ref().is_some_and(Connection::is_open) {
            *slot = Some(self.connect().await?);
        }
        Ok(slot.as_ref().and_then(|c| c.channel_binding().cloned()))
    }

    /// The SCRAM login this client should make as `user`: over HTTPS,
    /// when the server offers `scram-sha-256-plus` (`GET /`), bound to the
    /// connection ([`Login::scram_plus`]); over HTTPS when it does not,
    /// saying that it could have bound ([`Login::scram_unoffered`], so a
    /// server that does offer it refuses a stripped index); over HTTP,
    /// plain [`Login::scram`].
    pub async fn scram(&self, user: &str, password: Password) -> Result<Login, RestError> {
        let Some(binding) = self.channel_binding().await? else {
            return Login::scram(user, password);
        };
        let index = self.index().await?;
        let offered = index
            .get("methods")
            .and_then(|m| m.as_array())
            .is_some_and(|m| {
                m.iter()
                    .any(|m| m.as_str() == Some(keycard_auth::SCRAM_SHA_256_PLUS))
            });
        match offered {
            true => Login::scram_plus(user, password, &binding),
            false => Login::scram_unoffered(user, password),
        }
    }

    /// `POST /session/new`: the server's challenge. A throttled login is
    /// [`RestError::Status`] `429` with code `throttled`.
    pub async fn begin(&self, login: Login) -> Result<Challenged, RestError> {
        let r = self
            .send("POST", "/session/new", &[], login.body().as_bytes())
            .await?;
        login.challenged(&expect(r, 201)?.json()?)
    }

    /// `PUT /session/{sid}` with the proof: the session, once the server's
    /// answer checks out. A refused login is `403` with code `auth_failed`
    /// (a wrong password and an unknown user alike). A user with further
    /// factors is an error naming the factor: log in with
    /// [`RestClient::login_asking`].
    pub async fn prove(&self, challenged: Challenged) -> Result<Session, RestError> {
        self.prove_asking(challenged, &mut |factor: &str| {
            Err(login::not_given(factor))
        })
        .await
    }

    /// Logs in: [`RestClient::begin`], then [`RestClient::prove`].
    pub async fn login(&self, login: Login) -> Result<Session, RestError> {
        let challenged = self.begin(login).await?;
        self.prove(challenged).await
    }

    /// Logs in, and when the server prompts for a further factor (docs/DESIGN.md
    /// §2.2), asks `factor` for that method's client half (the prompt names
    /// the method), answers with it, and goes on until the `303`: a caller
    /// learns that a code is needed only when the server asks for it.
    /// `factor` runs inside the login's challenge window. A wrong factor is
    /// `403` with code `auth_failed`, as a wrong password is; `factor`'s
    /// error (no answer) ends the login with it, and an answer for another
    /// method than the one prompted is [`RestError::Auth`].
    pub async fn login_asking(
        &self,
        login: Login,
        factor: &mut FactorSource<'_, RestError>,
    ) -> Result<Session, RestError> {
        let challenged = self.begin(login).await?;
        self.prove_asking(challenged, factor).await
    }

    /// [`RestClient::prove`] for a user who may have further factors: the
    /// `PUT`s from the first proof to the `303`, asking `factor` at each
    /// prompt (what [`RestClient::login_asking`] runs after
    /// [`RestClient::begin`]; apart, the caller knows the session id
    /// meanwhile).
    pub async fn prove_asking(
        &self,
        mut challenged: Challenged,
        factor: &mut FactorSource<'_, RestError>,
    ) -> Result<Session, RestError> {
        // A server lists at most 8 factors (docs/DESIGN.md §2.2), each of a
        // few messages: a server that goes on past this is not keycard.
        for _ in 0..MAX_PUTS {
            let target = session_target(challenged.sid());
            let r = self
                .send("PUT", &target, &[], challenged.body().as_bytes())
                .await?;
            if r.status == 200 {
                challenged = match challenged.prompted(&r.json()?)? {
                    Continued::Put(next) => next,
                    Continued::Factor(prompted) => {
                        let method = factor(prompted.factor())?;
                        prompted.answer(method.as_ref())?
                    }
                };
                continue;
            }
            let r = expect(r, 303)?;
            if r.header("location") != Some(target.as_str()) {
                return Err(RestError::Protocol(format!(
                    "the login's 303 points to {:?}, not {target}",
                    r.header("location")
                )));
            }
            return challenged.finish(&r.json()?);
        }
        Err(RestError::Protocol(format!(
            "the login did not end within {MAX_PUTS} answers"
        )))
    }

    /// `GET /session/{sid}`, signed: who the session is and until when.
    pub async fn session(&self, session: &Session) -> Result<SessionInfo, RestError> {
        let target = session_target(&session.sid);
        let r = self.send_signed(session, "GET", &target, &[], b"").await?;
        let j = expect(r, 200)?.json()?;
        Ok(SessionInfo {
            user: text(&j, "user")?,
            method: text(&j, "method")?,
            expires_at: number(&j, "expires_at")?,
        })
    }

    /// `POST /session/{sid}/keepalive`, signed: the session's new expiry
    /// (Unix ms), extended by its duration or `ttl` seconds if shorter,
    /// never past its maximum lifetime.
    pub async fn keep_alive(&self, session: &Session, ttl: Option<u64>) -> Result<u64, RestError> {
        let target = format!("{}/keepalive", session_target(&session.sid));
        let body = match ttl {
            Some(t) => json!({ "ttl": t }).to_string(),
            None => "{}".to_owned(),
        };
        let r = self
            .send_signed(session, "POST", &target, &[], body.as_bytes())
            .await?;
        number(&expect(r, 200)?.json()?, "expires_at")
    }

    /// `DELETE /session/{sid}`, signed: logs out; the keycard is gone.
    pub async fn logout(&self, session: &Session) -> Result<(), RestError> {
        let target = session_target(&session.sid);
        let r = self
            .send_signed(session, "DELETE", &target, &[], b"")
            .await?;
        expect(r, 204).map(|_| ())
    }

    /// `GET /kv/…`: the node's value, `None` when it holds none.
    pub async fn get(
        &self,
        session: Option<&Session>,
        path: &Path,
    ) -> Result<Option<KvNode>, RestError> {
        let r = self
            .maybe_signed(session, "GET", &kv_target(path), &[], b"")
            .await?;
        if r.status == 404
            && r.json().ok().and_then(|j| error_code(&j)) == Some(ErrorCode::NotFound)
        {
            return Ok(None);
        }
        let j = expect(r, 200)?.json()?;
        Ok(Some(KvNode {
            value: j
                .get("value")
                .cloned()
                .ok_or_else(|| RestError::Protocol("the answer has no \"value\"".into()))?,
            tock: number(&j, "tock")?,
        }))
    }

    /// `PUT /kv/…` with `value`, obeying `pre` (a failed precondition is
    /// `412`).
    pub async fn put(
        &self,
        session: Option<&Session>,
        path: &Path,
        value: &serde_json::Value,
        pre: Precondition,
    ) -> Result<KvWrite, RestError> {
        let body = json!({ "value": value }).to_string();
        self.write(session, "PUT", path, body.as_bytes(), pre).await
    }

    /// `DELETE /kv/…`, obeying `pre`.
    pub async fn delete(
        &self,
        session: Option<&Session>,
        path: &Path,
        pre: Precondition,
    ) -> Result<KvWrite, RestError> {
        self.write(session, "DELETE", path, b"", pre).await
    }

    async fn write(
        &self,
        session: Option<&Session>,
        method: &str,
        path: &Path,
        body: &[u8],
        pre: Precondition,
    ) -> Result<KvWrite, RestError> {
        let field = pre.field();
        let fields: Vec<(&str, &str)> = field.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = self
            .maybe_signed(session, method, &kv_target(path), &fields, body)
            .await?;
        let j = expect(r, 200)?.json()?;
        Ok(KvWrite {
            changed: j
                .get("changed")
                .and_then(serde_json::Value::as_bool)
                .ok_or_else(|| RestError::Protocol("the answer has no \"changed\"".into()))?,
            tock: number(&j, "tock")?,
            prev: j.get("prev").cloned(),
        })
    }

    /// `GET /user/{name}`: its records and last logins; `None` for no such
    /// user.
    pub async fn user(
        &self,
        session: Option<&Session>,
        name: &str,
    ) -> Result<Option<UserInfo>, RestError> {
        let r = self
            .maybe_signed(session, "GET", &user_target(name), &[], b"")
            .await?;
        if r.status == 404
            && r.json().ok().and_then(|j| error_code(&j)) == Some(ErrorCode::NotFound)
        {
            return Ok(None);
        }
        let j = expect(r, 200)?.json()?;
        let list = |k: &str| match j.get(k) {
            Some(serde_json::Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        };
        let opt =
            |m: &serde_json::Value, k: &str| m.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        Ok(Some(UserInfo {
            name: text(&j, "name")?,
            methods: list("methods")
                .iter()
                .map(|m| UserMethod {
                    method: opt(m, "method").unwrap_or_default(),
                    acl: opt(m, "acl"),
                    groups: match m.get("groups") {
                        Some(serde_json::Value::Array(g)) => g
                            .iter()
                            .filter_map(|g| g.as_str().map(str::to_owned))
                            .collect(),
                        _ => Vec::new(),
                    },
                })
                .collect(),
            last_logins: list("last_logins")
                .iter()
                .map(|l| LastLogin {
                    at: l.get("at").and_then(serde_json::Value::as_u64).unwrap_or(0),
                    client: opt(l, "client").unwrap_or_default(),
                    method: opt(l, "method").unwrap_or_default(),
                    via: opt(l, "via").unwrap_or_default(),
                })
                .collect(),
        }))
    }

    /// `POST /user/{name}`: creates the user with `credential`, bound to
    /// ACL `acl` if given; returns the write's tock. An existing name is
    /// `409`.
    pub async fn create_user(
        &self,
        session: Option<&Session>,
        name: &str,
        credential: &Credential,
        acl: Option<&str>,
    ) -> Result<u64, RestError> {
        self.set_credential(session, "POST", name, credential, acl, 201)
            .await
    }

    /// `PUT /user/{name}`: sets `credential` (a new password, or another
    /// method) of an existing user; returns the write's tock.
    pub async fn set_user(
        &self,
        session: Option<&Session>,
        name: &str,
        credential: &Credential,
    ) -> Result<u64, RestError> {
        self.set_credential(session, "PUT", name, credential, None, 200)
            .await
    }

    /// `DELETE /user/{name}`: every record of the name, its bindings, its
    /// keycards and tokens.
    pub async fn delete_user(
        &self,
        session: Option<&Session>,
        name: &str,
    ) -> Result<(), RestError> {
        let r = self
            .maybe_signed(session, "DELETE", &user_target(name), &[], b"")
            .await?;
        expect(r, 204).map(|_| ())
    }

    async fn set_credential(
        &self,
        session: Option<&Session>,
        method: &str,
        name: &str,
        credential: &Credential,
        acl: Option<&str>,
        want: u16,
    ) -> Result<u64, RestError> {
        let target = user_target(name);
        let mut body = json!({ "method": credential.method() });
        if let Some(a) = acl {
            body["acl"] = json!(a);
        }
        match credential {
            Credential::Scram(v) => body["data"] = json!(v.to_text()),
            Credential::Opaque(password) => {
                // Registration request → response and token (nothing
                // stored) → the upload, sent with the token.
                let start = OpaqueClient {
                    user: name.to_owned(),
                    password: password.clone(),
                }
                .set_record(None);
                let request = bytes_field(&start.request.into_value(), "registration request")?;
                body["data"] = json!(URL_SAFE_NO_PAD.encode(request));
                let r = self
                    .maybe_signed(session, method, &target, &[], body.to_string().as_bytes())
                    .await?;
                let j = expect(r, 200)?.json()?;
                let response = URL_SAFE_NO_PAD.decode(text(&j, "data")?).map_err(|_| {
                    RestError::Protocol("the registration response is not base64url".into())
                })?;
                body["token"] = json!(text(&j, "token")?);
                let exchange = start
                    .exchange
                    .ok_or_else(|| RestError::Auth("OPAQUE registration has no exchange".into()))?;
                let upload = match exchange.next(&Msg::new().with("data", response).into_value()) {
                    Step::Send(upload, _) => bytes_field(&upload.into_value(), "upload")?,
                    _ => {
                        return Err(RestError::Protocol(
                            "the registration response does not finish".into(),
                        ))
                    }
                };
                body["upload"] = json!(URL_SAFE_NO_PAD.encode(upload));
            }
        }
        let r = self
            .maybe_signed(session, method, &target, &[], body.to_string().as_bytes())
            .await?;
        number(&expect(r, want)?.json()?, "tock")
    }
}

/// The `code` of a JSON error body.
fn error_code(j: &serde_json::Value) -> Option<ErrorCode> {
    j.get("code")
        .and_then(serde_json::Value::as_str)
        .and_then(ErrorCode::parse)
}

/// A string field of a JSON answer.
fn text(j: &serde_json::Value, key: &str) -> Result<String, RestError> {
    j.get(key)
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| RestError::Protocol(format!("the answer has no {key:?}")))
}

/// An unsigned integer field of a JSON answer.
fn number(j: &serde_json::Value, key: &str) -> Result<u64, RestError> {
    j.get(key)
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| RestError::Protocol(format!("the answer has no {key:?}")))
}

/// The `data` bytes of a client half's message.
fn bytes_field(msg: &Value, what: &str) -> Result<Vec<u8>, RestError> {
    match msg.get("data") {
        Some(Value::Bin(b)) => Ok(b.clone()),
        _ => Err(RestError::Auth(format!("the client half made no {what}"))),
    }
}
