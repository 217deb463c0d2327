//! DistKV's `root` method: one user, `*`, who may do everything. It exists
//! to bootstrap a server; there is no secret, so only enable it where the
//! network is trusted (DistKV: "No access control").

use keycard_proto::{Msg, Value};

use crate::exchange::{AuthError, ClientLogin, LoginCtx, Step, Verdict};
use crate::schema::{Kind, USER};
use crate::secret::SecretKey;
use crate::{ClientMethod, Method};

/// The method's name on the wire.
pub const ROOT: &str = "root";

/// The only user name the `root` method knows.
pub const ROOT_USER: &str = "*";

/// What `root` declares (DESIGN §2).
pub(crate) static INFO: crate::MethodInfo = crate::MethodInfo {
    name: ROOT,
    kinds: &[USER],
    payload: crate::Payload::Text,
    rest: false,
    rest_set: crate::RestSet::No,
    needs_password: false,
    strength: 10,
    super_root: true,
    fixed_user: Some(ROOT_USER),
    second_factor: false,
    suite: None,
    plaintext_secret: false,
    plus: None,
    client_cert: false,
};

/// `root`'s registration.
pub(crate) static ENTRY: crate::Entry = crate::Entry {
    info: &INFO,
    server: |_| Ok(std::sync::Arc::new(Root)),
    client: |_, _| Ok(Box::new(RootClient)),
};

/// Server half of `root`.
pub struct Root;

/// Methods without a secret take no method data: an absent, nil or empty
/// `data`.
pub(crate) fn require_empty_data(request: &Value) -> Result<(), AuthError> {
    match request.get("data") {
        None | Some(Value::Nil) => Ok(()),
        Some(Value::Map(m)) if m.is_empty() => Ok(()),
        Some(_) => Err(AuthError::Malformed(
            "this method takes no data (its schema is empty)".into(),
        )),
    }
}

/// The login of a method without a secret: the user exists, or the login
/// fails exactly as a wrong credential would.
pub(crate) fn known_user(ident: &str, request: &Value, record: Option<&Value>) -> Step<Verdict> {
    if let Err(e) = require_empty_data(request) {
        return Step::Fail(e);
    }
    match record {
        Some(_) => Step::Done(Verdict::user(ident)),
        None => Step::Fail(AuthError::Failed),
    }
}

/// The client half of a method whose login is the user's name alone
/// (`_anon`; `cert`, whose proof went with the TLS handshake): no
/// fields beyond `typ` and `ident`, nothing to answer.
pub struct NameClient {
    method: &'static str,
    name: String,
}

impl NameClient {
    /// A client of `method` logging in as `name`.
    pub fn new(method: &'static str, name: impl Into<String>) -> NameClient {
        NameClient {
            method,
            name: name.into(),
        }
    }
}

impl ClientMethod for NameClient {
    fn name(&self) -> &'static str {
        self.method
    }

    fn ident(&self) -> String {
        self.name.clone()
    }

    fn login(&self, _channel: Option<&SecretKey>) -> ClientLogin {
        ClientLogin {
            request: Msg::new(),
            exchange: None,
        }
    }

    fn set_record(&self, _channel: Option<&SecretKey>) -> ClientLogin {
        ClientLogin {
            request: Msg::new(),
            exchange: None,
        }
    }
}

/// The record of a method without a secret: empty.
pub(crate) fn empty_record(request: &Value) -> Step<Value> {
    match require_empty_data(request) {
        Ok(()) => Step::Done(Value::Map(Vec::new())),
        Err(e) => Step::Fail(e),
    }
}

impl Method for Root {
    fn info(&self) -> &'static crate::MethodInfo {
        &INFO
    }

    fn login(
        &self,
        _ctx: &LoginCtx<'_>,
        ident: &str,
        request: &Value,
        record: Option<&Value>,
    ) -> Step<Verdict> {
        known_user(ident, request, record.filter(|_| ident == ROOT_USER))
    }

    fn set_record(
        &self,
        _ctx: &LoginCtx<'_>,
        kind: &Kind,
        ident: &str,
        request: &Value,
    ) -> Step<Value> {
        if kind.name == "user" && ident != ROOT_USER {
            return Step::Fail(AuthError::Unsupported(format!(
                "the root method has one user, {ROOT_USER:?}"
            )));
        }
        empty_record(request)
    }
}

/// Client half of `root`.
pub struct RootClient;

impl ClientMethod for RootClient {
    fn name(&self) -> &'static str {
        ROOT
    }

    fn ident(&self) -> String {
        ROOT_USER.into()
    }

    fn login(&self, _channel: Option<&SecretKey>) -> ClientLogin {
        ClientLogin {
            request: Msg::new().with("data", Value::Map(Vec::new())),
            exchange: None,
        }
    }

    fn set_record(&self, _channel: Option<&SecretKey>) -> ClientLogin {
        ClientLogin {
            request: Msg::new().with("data", Value::Map(Vec::new())),
            exchange: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> Value {
        Msg::new().with("data", Value::Map(vec![])).into_value()
    }

    #[test]
    fn star_with_a_record_logs_in() {
        let rec = Value::Map(vec![]);
        assert!(
            matches!(Root.login(&LoginCtx::default(), "*", &req(), Some(&rec)), Step::Done(v) if v.user == "*")
        );
    }

    #[test]
    fn missing_record_or_other_name_fails_the_same_way() {
        let rec = Value::Map(vec![]);
        assert!(matches!(
            Root.login(&LoginCtx::default(), "*", &req(), None),
            Step::Fail(AuthError::Failed)
        ));
        assert!(matches!(
            Root.login(&LoginCtx::default(), "bob", &req(), Some(&rec)),
            Step::Fail(AuthError::Failed)
        ));
    }

    #[test]
    fn data_must_be_empty() {
        let bad = Msg::new().with("data", 5).into_value();
        assert!(matches!(
            Root.login(&LoginCtx::default(), "*", &bad, Some(&Value::Nil)),
            Step::Fail(AuthError::Malformed(_))
        ));
        assert!(matches!(
            Root.set_record(&LoginCtx::default(), &USER, "*", &bad),
            Step::Fail(AuthError::Malformed(_))
        ));
        assert!(matches!(
            Root.set_record(&LoginCtx::default(), &USER, "x", &req()),
            Step::Fail(AuthError::Unsupported(_))
        ));
        assert!(
            matches!(Root.set_record(&LoginCtx::default(), &USER, "*", &req()), Step::Done(Value::Map(m)) if m.is_empty())
        );
    }
}
