//! `cert`: a login by the TLS client certificate the connection
//! presented. The front end verifies the certificate (against its client
//! CAs and revocation lists, at its own time) and tells the method what
//! it found ([`PeerCert`], in [`LoginCtx::client_cert`]); the method
//! grants the login when the certificate was accepted, names the user
//! asked for, and that user has a `cert` record (an empty one: the CA
//! vouches for the key, the record says the name may log in this way).
//! Every refusal looks the same to the client; the audit log is told
//! which it was.

use keycard_proto::Value;

use crate::exchange::{AuthError, LoginCtx, PeerCert, Step, Verdict};
use crate::root::{empty_record, require_empty_data, NameClient};
use crate::schema::{Kind, USER};
use crate::Method;

/// The method's name on the wire.
pub const CERT: &str = "cert";

/// What `cert` declares.
pub(crate) static INFO: crate::MethodInfo = crate::MethodInfo {
    name: CERT,
    kinds: &[USER],
    payload: crate::Payload::Text,
    // A REST session signs its requests with a key the login agrees; a
    // certificate login agrees none.
    rest: false,
    rest_set: crate::RestSet::No,
    needs_password: false,
    // The client proves it holds a key a CA vouched for: above every
    // password method. A client picks it only when it has a certificate.
    strength: 70,
    super_root: false,
    fixed_user: None,
    second_factor: false,
    suite: None,
    plaintext_secret: false,
    plus: None,
    client_cert: true,
};

/// `cert`'s registration.
pub(crate) static ENTRY: crate::Entry = crate::Entry {
    info: &INFO,
    server: |_| Ok(std::sync::Arc::new(CertMethod)),
    // The request names the user; the certificate went with the TLS
    // handshake.
    client: |user, _| {
        Ok(Box::new(NameClient::new(
            CERT,
            crate::exchange::need_user(CERT, user)?,
        )))
    },
};

/// Server half of `cert`.
pub struct CertMethod;

impl Method for CertMethod {
    fn info(&self) -> &'static crate::MethodInfo {
        &INFO
    }

    fn login(
        &self,
        ctx: &LoginCtx<'_>,
        ident: &str,
        request: &Value,
        record: Option<&Value>,
    ) -> Step<Verdict> {
        if let Err(e) = require_empty_data(request) {
            return Step::Fail(e);
        }
        let refuse = |why: &str| Step::Fail(AuthError::Refused(why.to_owned()));
        match ctx.client_cert {
            None => refuse("the connection presented no client certificate"),
            Some(PeerCert::Refused(why)) => refuse(&format!("client certificate refused: {why}")),
            Some(PeerCert::Verified { names }) => {
                if !names.iter().any(|n| n == ident) {
                    return refuse("the client certificate does not name this user");
                }
                match record {
                    Some(_) => Step::Done(Verdict::user(ident)),
                    None => refuse("no cert record for this user"),
                }
            }
        }
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
    use keycard_proto::Msg;

    fn login(cert: Option<&PeerCert>, ident: &str, record: bool) -> Step<Verdict> {
        let ctx = LoginCtx {
            client_cert: cert,
            ..LoginCtx::default()
        };
        let rec = Value::Map(vec![]);
        CertMethod.login(
            &ctx,
            ident,
            &Msg::new().into_value(),
            record.then_some(&rec),
        )
    }

    fn refused(step: Step<Verdict>) -> String {
        match step {
            Step::Fail(AuthError::Refused(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_verified_certificate_naming_a_user_with_a_record_logs_in() {
        let good = PeerCert::Verified {
            names: vec!["svc-a".into(), "svc-b".into()],
        };
        assert!(matches!(login(Some(&good), "svc-b", true), Step::Done(v) if v.user == "svc-b"));
        assert!(refused(login(Some(&good), "svc-b", false)).contains("no cert record"));
        assert!(refused(login(Some(&good), "svc-c", true)).contains("does not name"));
        // Names compare exactly: no case folding, no prefixes.
        assert!(refused(login(Some(&good), "SVC-A", true)).contains("does not name"));
        assert!(refused(login(Some(&good), "svc-", true)).contains("does not name"));
    }

    #[test]
    fn no_or_a_refused_certificate_never_logs_in() {
        assert!(refused(login(None, "svc-a", true)).contains("no client certificate"));
        let bad = PeerCert::Refused("certificate expired".into());
        assert!(refused(login(Some(&bad), "svc-a", true)).contains("expired"));
    }

    #[test]
    fn data_is_refused_and_every_refusal_tells_the_client_the_same() {
        let good = PeerCert::Verified {
            names: vec!["svc-a".into()],
        };
        let req = Msg::new().with("data", "x").into_value();
        let ctx = LoginCtx {
            client_cert: Some(&good),
            ..LoginCtx::default()
        };
        assert!(matches!(
            CertMethod.login(&ctx, "svc-a", &req, Some(&Value::Map(vec![]))),
            Step::Fail(AuthError::Malformed(_))
        ));
        for why in ["a", "b"] {
            assert_eq!(
                AuthError::Refused(why.into()).client_text(),
                AuthError::Failed.client_text()
            );
        }
    }
}
