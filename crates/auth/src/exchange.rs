//! The shape of every exchange: a chain of steps, each consuming the state
//! it came from, so a challenge can be answered once only.

use keycard_proto::{Msg, Value};

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Wrong credentials or unknown user: deliberately the same.
    #[error("login failed")]
    Failed,
    /// Refused for a reason the audit log may know and the client must
    /// not (a client certificate expired, revoked, or naming another
    /// user): the client is told exactly what [`AuthError::Failed`] tells.
    #[error("login failed: {0}")]
    Refused(String),
    /// A message did not have the shape this method expects.
    #[error("malformed auth message: {0}")]
    Malformed(String),
    /// The request asks for something this method does not do.
    #[error("{0}")]
    Unsupported(String),
}

impl AuthError {
    /// Whether the login was refused (a wrong or unacceptable
    /// credential), as opposed to a malformed or unsupported request.
    pub fn is_refusal(&self) -> bool {
        matches!(self, AuthError::Failed | AuthError::Refused(_))
    }

    /// What the client is told: a refusal's reason stays on the server.
    pub fn client_text(&self) -> String {
        match self {
            AuthError::Refused(_) => AuthError::Failed.to_string(),
            other => other.to_string(),
        }
    }
}

/// One step of an exchange producing a `T`.
pub enum Step<T> {
    /// Send this message to the peer; feed its answer to the exchange.
    Send(Msg, Box<dyn Exchange<T>>),
    /// Run this CPU-heavy work (a password hash) where it cannot stall the
    /// event loop, then go on with the step it returns.
    Work(Box<dyn FnOnce() -> Step<T> + Send>),
    /// The exchange is over and produced this.
    Done(T),
    /// The exchange failed.
    Fail(AuthError),
}

impl<T> std::fmt::Debug for Step<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Send(m, _) => write!(f, "Send({m:?})"),
            Step::Work(_) => f.write_str("Work"),
            Step::Done(_) => f.write_str("Done"),
            Step::Fail(e) => write!(f, "Fail({e:?})"),
        }
    }
}

/// An exchange waiting for the peer's next message.
pub trait Exchange<T>: Send {
    /// Consumes this state with the peer's message.
    fn next(self: Box<Self>, msg: &Value) -> Step<T>;
}

impl<T, F> Exchange<T> for F
where
    F: FnOnce(&Value) -> Step<T> + Send,
{
    fn next(self: Box<Self>, msg: &Value) -> Step<T> {
        (*self)(msg)
    }
}

/// What the front end knows about the connection an exchange runs on.
#[derive(Clone, Copy, Default)]
pub struct LoginCtx<'a> {
    /// The key agreed with `diffie_hellman` on this connection, if any.
    pub channel_key: Option<&'a crate::secret::SecretKey>,
    /// The time the front end read from its clock (Unix ms): a method
    /// that needs the time (a one-time code's step) takes it from here,
    /// never from the operating system.
    pub now_ms: u64,
    /// The connection's TLS channel-binding data; `None` over plaintext.
    pub channel_binding: Option<&'a crate::binding::ChannelBinding>,
    /// The client asked for the method's channel-binding variant (its
    /// [`crate::MethodInfo::plus`] name, e.g. `scram-sha-256-plus`).
    pub plus: bool,
    /// The connection's TLS client certificate as the front end judged
    /// it, for a method that logs in with it
    /// ([`crate::MethodInfo::client_cert`]); `None` when none was
    /// presented (or the method does not use it).
    pub client_cert: Option<&'a PeerCert>,
}

/// The connection's TLS client certificate, as the front end judged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerCert {
    /// It chains to a client CA, is within its validity at the front
    /// end's time and is not revoked: the names it holds that may be user
    /// names (the subject CN, or the SANs of a kind, as configured).
    Verified {
        /// The names, as the certificate spells them.
        names: Vec<String>,
    },
    /// It was presented and the handshake went through (a client
    /// certificate is optional), but it is not accepted; why, for the
    /// audit log.
    Refused(String),
}

/// A successful login's outcome.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The user's name.
    pub user: String,
    /// A last message for the client (SCRAM's server-final), sent before
    /// the exchange ends.
    pub reply: Option<Msg>,
    /// A key both sides now share (SCRAM, OPAQUE), for signing requests.
    pub session_key: Option<crate::secret::SecretKey>,
    /// A new record to store in place of the one the login read (a
    /// one-time code's last used step, a counter, a re-hash with new
    /// parameters). The front end writes it on success, conditional on
    /// the record not having changed since it was read.
    pub write_back: Option<Value>,
}

impl Verdict {
    /// A verdict naming `user`, with nothing else to send or keep.
    pub fn user(user: impl Into<String>) -> Verdict {
        Verdict {
            user: user.into(),
            reply: None,
            session_key: None,
            write_back: None,
        }
    }
}

/// How a client starts an exchange: the request's extra fields, then what
/// to do with the server's messages (`None`: there is nothing to answer;
/// the request's reply decides).
pub struct ClientLogin {
    /// Extra fields of the request.
    pub request: Msg,
    /// Answers to the server's messages, if the exchange has several steps.
    pub exchange: Option<Box<dyn Exchange<()>>>,
}

/// The user name a client half needs, or the error saying so.
pub(crate) fn need_user(method: &str, user: Option<&str>) -> Result<String, AuthError> {
    user.map(str::to_owned)
        .ok_or_else(|| AuthError::Unsupported(format!("method {method} needs a user name")))
}

/// The password a client half needs, or the error saying so.
pub(crate) fn need_password(
    method: &str,
    password: Option<crate::secret::Password>,
) -> Result<crate::secret::Password, AuthError> {
    password.ok_or_else(|| AuthError::Unsupported(format!("method {method} needs a password")))
}
