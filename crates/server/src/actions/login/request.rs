//! What a client asks for when it logs in, typed, whatever carried it:
//! the msgpack `auth` message is decoded into a [`LoginRequest`] here;
//! REST builds one from its JSON (`http/session.rs`). The login never
//! sees a transport's message, only the method's own payload.

use std::net::SocketAddr;
use std::sync::Arc;

use keycard_auth::{Method, SecretKey};
use keycard_proto::{ErrorCode, Path, Value};

use super::super::keycards::{self, TOKEN};
use super::super::str_field;
pub(crate) use crate::core::users::user_name;
use crate::error::{ApiError, ApiResult};
use crate::state::ServerState;

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
    /// Whether the connection is protected by TLS.
    pub secure: bool,
    /// What the connection can be bound to (TLS only).
    pub binding: Option<keycard_auth::ChannelBinding>,
    /// The client certificate chain its TLS handshake presented, if any
    /// (a `cert` login verifies it).
    pub client_chain: Option<crate::tls::ClientChain>,
}

/// How the client proves who it is.
pub(crate) enum Credential {
    /// An auth method's exchange.
    Method(Arc<dyn Method>),
    /// A bearer token issued earlier (at most 256 bytes; never logged).
    Token(String),
}

/// A login request.
pub(crate) struct LoginRequest {
    /// The method, or a token.
    pub credential: Credential,
    /// The user name as given (a token's `kct_ID`, never its secret).
    pub ident: String,
    /// The domain logged in to: the requester's root, or a path below it.
    pub domain: Path,
    /// The method's first message, for the method only.
    pub payload: Value,
    /// Who asks.
    pub requester: Requester,
    /// The client named the method's channel-binding variant
    /// (`scram-sha-256-plus`): the method runs bound to the connection.
    pub plus: bool,
}

/// The client's answer to a challenge, typed.
pub(crate) struct LoginAnswer {
    /// The method the answer starts, when it starts the next factor (the
    /// msgpack continuation's `typ`, REST's `method`).
    pub method: Option<String>,
    /// The user it names, if it names one (`ident`).
    pub ident: Option<String>,
    /// The method's message.
    pub payload: Value,
}

impl LoginAnswer {
    /// A msgpack continuation: the method's message, with `typ` and
    /// `ident` when it starts a factor.
    pub(crate) fn from_msgpack(msg: Value) -> LoginAnswer {
        let s = |k: &str| msg.get(k).and_then(Value::as_str).map(str::to_owned);
        LoginAnswer {
            method: s("typ"),
            ident: s("ident"),
            payload: msg,
        }
    }
}

/// The registered method called `typ`.
pub(crate) fn method_named<'a>(
    state: &'a ServerState,
    typ: &str,
) -> ApiResult<&'a Arc<dyn Method>> {
    state.methods.get(typ).ok_or_else(|| {
        ApiError::new(
            ErrorCode::AuthMethod,
            format!("unknown auth method {typ:?}"),
        )
    })
}

/// The method a login's `typ` names, and whether it names the method's
/// channel-binding variant (its `plus` name).
pub(crate) fn login_method(state: &ServerState, typ: &str) -> ApiResult<(Arc<dyn Method>, bool)> {
    if let Some(m) = state.methods.get(typ) {
        return Ok((m.clone(), false));
    }
    match state.methods.infos().find(|i| i.plus == Some(typ)) {
        Some(i) => Ok((method_named(state, i.name)?.clone(), true)),
        None => method_named(state, typ).map(|m| (m.clone(), false)),
    }
}

/// The domain a login names: `root`, or `chroot` below it.
pub(crate) fn domain_below(root: &Path, chroot: Option<&Value>) -> ApiResult<Path> {
    match chroot {
        None | Some(Value::Nil) => Ok(root.clone()),
        Some(v) => {
            let rel = Path::from_value(v).map_err(ApiError::from)?;
            if !super::super::is_data_path(rel.elems()) {
                return Err(ApiError::new(
                    ErrorCode::ReservedPath,
                    "a domain's path cannot hold a nil element",
                ));
            }
            let full = root.join(&rel);
            if full.len() > keycard_proto::MAX_PATH_LEN
                || full.to_key().len() > super::super::MAX_KEY_BYTES
            {
                return Err(ApiError::bad("the domain's path is too long"));
            }
            Ok(full)
        }
    }
}

impl LoginRequest {
    /// Decodes a msgpack `auth` message (`{typ, ident, chroot?, token?,
    /// …method fields}`).
    pub(crate) fn from_msgpack(
        state: &ServerState,
        msg: &Value,
        requester: Requester,
    ) -> ApiResult<LoginRequest> {
        // A token is a keycard issued earlier: it is accepted whatever the
        // current method (only a keycard manager can issue one).
        let (credential, plus) = match str_field(msg, "typ")? {
            TOKEN => (
                Credential::Token(match msg.get("token") {
                    Some(Value::Str(t)) if t.len() <= 256 => t.clone(),
                    _ => return Err(ApiError::bad("'token' must be a string (the bearer token)")),
                }),
                false,
            ),
            typ => {
                let (m, plus) = login_method(state, typ)?;
                (Credential::Method(m), plus)
            }
        };
        let domain = domain_below(&requester.root, msg.get("chroot"))?;
        let ident = match (&credential, msg.get("ident")) {
            // Throttled and audited under the token's id, and only if it
            // is shaped as a token: never any of what may be a secret.
            (Credential::Token(t), _) => {
                keycards::token_id(t).map_or_else(|| TOKEN.to_owned(), |id| format!("kct_{id}"))
            }
            (_, Some(Value::Str(s))) => user_name(s)?.to_owned(),
            _ => return Err(ApiError::bad("'ident' (the user name) must be a string")),
        };
        Ok(LoginRequest {
            credential,
            ident,
            domain,
            payload: msg.clone(),
            requester,
            plus,
        })
    }

    /// The method's name (`token` for a token).
    pub(crate) fn method_name(&self) -> &'static str {
        match &self.credential {
            Credential::Method(m) => m.name(),
            Credential::Token(_) => TOKEN,
        }
    }

    /// Whether the credential is a secret that logs in by itself once
    /// read off the wire: a bearer token, or a method that says so.
    pub(crate) fn sends_secret(&self) -> bool {
        match &self.credential {
            Credential::Method(m) => m.info().plaintext_secret,
            Credential::Token(_) => true,
        }
    }
}
