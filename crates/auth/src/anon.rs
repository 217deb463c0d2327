//! `_anon` (DESIGN §2): a user name and nothing else. Not anonymous — a name
//! is needed — but no secret: one message, and the name must have a record.
//! It does not support access control of its own.

use keycard_proto::{Msg, Value};

use crate::exchange::{ClientLogin, LoginCtx, Step, Verdict};
use crate::root::{empty_record, known_user};
use crate::schema::{Kind, GROUP, USER};
use crate::secret::SecretKey;
use crate::{ClientMethod, Method};

/// Server half of `_anon`.
pub struct Anon;

impl Method for Anon {
    fn name(&self) -> &'static str {
        "_anon"
    }

    fn kinds(&self) -> &'static [Kind] {
        &[USER, GROUP]
    }

    fn login(
        &self,
        _ctx: &LoginCtx<'_>,
        ident: &str,
        request: &Value,
        record: Option<&Value>,
    ) -> Step<Verdict> {
        known_user(ident, request, record)
    }

    fn set_record(
        &self,
        _ctx: &LoginCtx<'_>,
        _kind: &Kind,
        _ident: &str,
        request: &Value,
    ) -> Step<Value> {
        empty_record(request)
    }
}

/// Client half of `_anon`.
pub struct AnonClient {
    /// The name to log in as.
    pub name: String,
}

impl ClientMethod for AnonClient {
    fn name(&self) -> &'static str {
        "_anon"
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::AuthError;

    #[test]
    fn known_name_logs_in_unknown_fails() {
        let req = Msg::new().into_value();
        assert!(
            matches!(Anon.login(&LoginCtx::default(), "joe", &req, Some(&Value::Map(vec![]))), Step::Done(v) if v.user == "joe")
        );
        assert!(matches!(
            Anon.login(&LoginCtx::default(), "joe", &req, None),
            Step::Fail(AuthError::Failed)
        ));
    }
}
