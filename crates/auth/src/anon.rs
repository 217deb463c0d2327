//! `_anon` (DESIGN §2): a user name and nothing else. Not anonymous — a name
//! is needed — but no secret: one message, and the name must have a record.
//! It does not support access control of its own.

use keycard_proto::Value;

use crate::exchange::{LoginCtx, Step, Verdict};
use crate::root::{empty_record, known_user, NameClient};
use crate::schema::{Kind, GROUP, USER};
use crate::Method;

/// The method's name on the wire.
pub const ANON: &str = "_anon";

/// What `_anon` declares (DESIGN §2).
pub(crate) static INFO: crate::MethodInfo = crate::MethodInfo {
    name: ANON,
    kinds: &[USER, GROUP],
    payload: crate::Payload::Text,
    rest: false,
    rest_set: crate::RestSet::No,
    needs_password: false,
    strength: 20,
    super_root: false,
    fixed_user: None,
    second_factor: false,
    suite: None,
    plaintext_secret: false,
    plus: None,
    client_cert: false,
};

/// `_anon`'s registration.
pub(crate) static ENTRY: crate::Entry = crate::Entry {
    info: &INFO,
    server: |_| Ok(std::sync::Arc::new(Anon)),
    client: |user, _| {
        Ok(Box::new(NameClient::new(
            ANON,
            crate::exchange::need_user(ANON, user)?,
        )))
    },
};

/// Server half of `_anon`.
pub struct Anon;

impl Method for Anon {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::AuthError;
    use keycard_proto::Msg;

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
