//! DistKV's `_test` method: no password; logging in is one message naming
//! the user. Creating a user is DistKV's deliberately roundabout streamed
//! dialogue (server `GiveName`, client `HasName`), kept so that exchanges of
//! several steps are exercised end to end.

use keycard_proto::{Msg, Value};

use crate::exchange::{AuthError, ClientLogin, LoginCtx, Step, Verdict};
use crate::root::{empty_record, known_user};
use crate::schema::{Field, FieldType, Kind, GROUP};
use crate::secret::SecretKey;
use crate::{ClientMethod, Method};

/// `_test`'s user kind: the record holds the name.
pub const TEST_USER: Kind = Kind {
    name: "user",
    fields: &[Field {
        name: "name",
        ty: FieldType::Str,
        required: true,
        doc: "the user's name: a letter, then letters, digits or '_'",
    }],
};

/// The method's name on the wire.
pub const TEST: &str = "_test";

/// What `_test` declares (DESIGN §2).
pub(crate) static INFO: crate::MethodInfo = crate::MethodInfo {
    name: TEST,
    kinds: &[TEST_USER, GROUP],
    payload: crate::Payload::Text,
    rest: false,
    rest_set: crate::RestSet::No,
    needs_password: false,
    strength: 30,
    super_root: false,
    fixed_user: None,
    second_factor: false,
    suite: None,
    plaintext_secret: false,
    plus: None,
    client_cert: false,
};

/// `_test`'s registration.
pub(crate) static ENTRY: crate::Entry = crate::Entry {
    info: &INFO,
    server: |_| Ok(std::sync::Arc::new(Test)),
    client: |user, _| {
        Ok(Box::new(TestClient {
            name: crate::exchange::need_user(TEST, user)?,
        }))
    },
};

/// Server half of `_test`.
pub struct Test;

/// DistKV's pattern for `_test` names: `^[a-zA-Z][a-zA-Z0-9_]*$`.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn record_for(ident: &str, name: &Value) -> Step<Value> {
    match name.as_str() {
        Some(n) if n == ident && valid_name(n) => {
            Step::Done(Msg::new().with("name", n).into_value())
        }
        Some(n) if n != ident => Step::Fail(AuthError::Malformed(
            "the name in the record differs from the record's ident".into(),
        )),
        _ => Step::Fail(AuthError::Malformed(
            "name must be a letter followed by letters, digits or '_'".into(),
        )),
    }
}

impl Method for Test {
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
        kind: &Kind,
        ident: &str,
        request: &Value,
    ) -> Step<Value> {
        if kind.name != "user" {
            return empty_record(request);
        }
        // The name may come in the request's data (keycard's CLI) or, as
        // DistKV's client does it, through the dialogue.
        if let Some(name) = request.get("data").and_then(|d| d.get("name")) {
            return record_for(ident, name);
        }
        let ident = ident.to_owned();
        Step::Send(
            Msg::new().with("step", "GiveName"),
            Box::new(move |msg: &Value| {
                if msg.get("step").and_then(Value::as_str) != Some("HasName") {
                    return Step::Fail(AuthError::Malformed("expected step HasName".into()));
                }
                match msg.get("name") {
                    Some(name) => record_for(&ident, name),
                    None => Step::Fail(AuthError::Malformed("HasName without a name".into())),
                }
            }),
        )
    }

    fn show_record(&self, _kind: &Kind, record: &Value) -> Msg {
        match record.get("name") {
            Some(n) => Msg::new().with("name", n.clone()),
            None => Msg::new(),
        }
    }
}

/// Client half of `_test`.
pub struct TestClient {
    /// The user's name.
    pub name: String,
}

impl ClientMethod for TestClient {
    fn name(&self) -> &'static str {
        TEST
    }

    fn ident(&self) -> String {
        self.name.clone()
    }

    fn login(&self, _channel: Option<&SecretKey>) -> ClientLogin {
        ClientLogin {
            request: Msg::new().with("data", Value::Map(Vec::new())),
            exchange: None,
        }
    }

    fn set_record(&self, _channel: Option<&SecretKey>) -> ClientLogin {
        let name = self.name.clone();
        ClientLogin {
            request: Msg::new().with("state", "start"),
            exchange: Some(Box::new(move |msg: &Value| {
                if msg.get("step").and_then(Value::as_str) != Some("GiveName") {
                    return Step::Fail(AuthError::Malformed("expected step GiveName".into()));
                }
                Step::Send(
                    Msg::new()
                        .with("step", "HasName")
                        .with("name", name)
                        .with("chain", Value::Nil),
                    Box::new(|_: &Value| Step::Done(())),
                )
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a client and a server record exchange against each other,
    /// message by message, as the front ends would.
    #[test]
    fn record_dialogue_client_against_server() {
        let client = TestClient { name: "joe".into() };
        let start = client.set_record(None);
        let request = start.request.into_value();
        let mut server = Test.set_record(&LoginCtx::default(), &TEST_USER, "joe", &request);
        let mut client_ex = start.exchange.expect("multi-step");
        let record = loop {
            match server {
                Step::Send(msg, next) => {
                    let msg = msg.into_value();
                    match client_ex.next(&msg) {
                        Step::Send(answer, c) => {
                            client_ex = c;
                            server = next.next(&answer.into_value());
                        }
                        other => panic!("client stopped early: {other:?}"),
                    }
                }
                Step::Done(rec) => break rec,
                Step::Fail(e) => panic!("server failed: {e}"),
                Step::Work(w) => server = w(),
            }
        };
        assert_eq!(record, Msg::new().with("name", "joe").into_value());
    }

    #[test]
    fn bad_names_and_wrong_steps_are_refused() {
        let req = Msg::new().with("state", "start").into_value();
        let Step::Send(_, next) = Test.set_record(&LoginCtx::default(), &TEST_USER, "joe", &req)
        else {
            panic!("expected a question")
        };
        let wrong = Msg::new().with("step", "Nope").into_value();
        assert!(matches!(
            next.next(&wrong),
            Step::Fail(AuthError::Malformed(_))
        ));
        for bad in ["9x", "", "a b", "jo"] {
            let data = Msg::new()
                .with("data", Msg::new().with("name", bad))
                .into_value();
            assert!(
                matches!(
                    Test.set_record(&LoginCtx::default(), &TEST_USER, "joe", &data),
                    Step::Fail(_)
                ),
                "{bad}"
            );
        }
    }
}
