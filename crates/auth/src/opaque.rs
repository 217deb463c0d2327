//! `opaque`: the OPAQUE augmented PAKE (RFC 9807), through opaque-ke.
//!
//! Ciphersuite: ristretto255 for the OPRF and the 3DH key exchange,
//! SHA-512, and Argon2id (m = 19 MiB, t = 2, p = 1, the argon2 crate's
//! defaults) as the key-stretching function, run by the client. The server
//! never sees the password, not even when it is set: registration is an
//! `auth_set` dialogue (RegistrationRequest → RegistrationResponse →
//! RegistrationUpload) and login an `auth` one (KE1 → KE2 → KE3), every
//! message as bytes in `data`. The server stores the registration record;
//! an unknown user is answered with opaque-ke's fake record, so its KE2
//! looks like anyone's. The login's session key (the first 32 bytes of
//! opaque-ke's) is kept with the session for signed requests.

use keycard_proto::{Msg, Value};
use opaque_ke::{
    CipherSuite, ClientLogin as OpaqueClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialFinalization, CredentialRequest,
    CredentialResponse, RegistrationRequest, RegistrationResponse, RegistrationUpload, ServerLogin,
    ServerLoginParameters, ServerRegistration, ServerSetup,
};
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use crate::exchange::{AuthError, ClientLogin, LoginCtx, Step, Verdict};
use crate::schema::{Field, FieldType, Kind, GROUP};
use crate::secret::{Password, SecretKey};
use crate::{ClientMethod, Method};

/// The method's name on the wire.
pub const OPAQUE: &str = "opaque";

/// The ciphersuite, as the greeting names it.
pub const OPAQUE_SUITE: &str = "ristretto255-SHA512, 3DH, Argon2id(m=19456,t=2,p=1)";

/// keycard's OPAQUE ciphersuite.
pub struct Suite;

impl CipherSuite for Suite {
    type OprfCs = opaque_ke::Ristretto255;
    type KeyExchange = opaque_ke::TripleDh<opaque_ke::Ristretto255, sha2::Sha512>;
    type Ksf = argon2::Argon2<'static>;
}

/// `opaque`'s user kind.
pub const OPAQUE_USER: Kind = Kind {
    name: "user",
    fields: &[Field {
        name: "data",
        ty: FieldType::Bytes,
        required: true,
        doc: "the RFC 9807 registration messages, in an auth_set dialogue",
    }],
};

/// The server's long-term OPAQUE setup (OPRF seed and AKE key pair),
/// serialized, kept under the reserved root and never shown.
pub fn new_server_setup() -> Vec<u8> {
    ServerSetup::<Suite>::new(&mut OsRng).serialize().to_vec()
}

fn malformed(what: &str) -> AuthError {
    AuthError::Malformed(format!("bad OPAQUE {what}"))
}

fn data_bytes<'a>(msg: &'a Value, what: &str) -> Result<&'a [u8], AuthError> {
    msg.get("data")
        .and_then(Value::as_bin)
        .filter(|b| b.len() <= 4096)
        .ok_or_else(|| malformed(&format!("{what}: 'data' must be the message's bytes")))
}

/// Server half of `opaque`.
///
/// Each registration gets a fresh random `cid` (16 bytes, kept in the
/// record), and the record's credential identifier is `cid || name`: so
/// the OPRF key a login uses is the registration's own, and a registration
/// request (which evaluates the OPRF, and which nothing counts or
/// throttles) never evaluates under a live credential's key: it is no
/// password-guessing oracle. A stateless front end (REST) carries `cid`
/// between the two steps of a registration in a `token` the server MACs
/// (`cid || HMAC(token key, cid || name)`), so a client cannot pick
/// another registration's `cid`. Records from before `cid` existed use the
/// name alone.
pub struct Opaque {
    setup: ServerSetup<Suite>,
    /// Derived from the setup: MACs registration tokens.
    token_key: SecretKey,
}

/// Bytes of a registration's `cid`.
const CID: usize = 16;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

impl Opaque {
    /// A server half with this setup (from [`new_server_setup`]).
    pub fn new(setup: &[u8]) -> Result<Opaque, AuthError> {
        use hmac::Mac as _;
        let parsed = ServerSetup::<Suite>::deserialize(setup).map_err(|_| {
            AuthError::Unsupported("the stored OPAQUE server setup does not decode".into())
        })?;
        let mut mac = HmacSha256::new_from_slice(setup)
            .map_err(|_| AuthError::Unsupported("the OPAQUE setup is unusable".into()))?;
        mac.update(b"keycard opaque registration token");
        let token_key = SecretKey::new(mac.finalize().into_bytes().into());
        Ok(Opaque {
            setup: parsed,
            token_key,
        })
    }

    fn tag(&self, cid: &[u8], ident: &str) -> [u8; 32] {
        use hmac::Mac as _;
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = HmacSha256::new_from_slice(self.token_key.expose()).expect("an HMAC key");
        mac.update(cid);
        mac.update(ident.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The `cid` a registration request's `token` carries (the server
    /// must have made it for `ident`), or a fresh one when there is no
    /// token. Returns (cid, token).
    fn registration_cid(
        &self,
        request: &Value,
        ident: &str,
    ) -> Result<([u8; CID], Vec<u8>), AuthError> {
        use subtle::ConstantTimeEq as _;
        match request.get("token") {
            None | Some(Value::Nil) => {
                let cid: [u8; CID] = rand::random();
                let mut token = cid.to_vec();
                token.extend_from_slice(&self.tag(&cid, ident));
                Ok((cid, token))
            }
            Some(Value::Bin(t)) if t.len() == CID + 32 => {
                let (cid, tag) = t.split_at(CID);
                if !bool::from(self.tag(cid, ident).ct_eq(tag)) {
                    return Err(malformed(
                        "registration token (not this server's for this name)",
                    ));
                }
                let mut out = [0u8; CID];
                out.copy_from_slice(cid);
                Ok((out, t.clone()))
            }
            Some(_) => Err(malformed("registration token")),
        }
    }
}

/// The credential identifier of a registration: `cid || name`, or the
/// name alone for a record without `cid`.
fn credential_id(cid: Option<&[u8]>, ident: &str) -> Vec<u8> {
    let mut id = cid.unwrap_or_default().to_vec();
    id.extend_from_slice(ident.as_bytes());
    id
}

/// What `opaque` declares (DESIGN §2).
pub(crate) static INFO: crate::MethodInfo = crate::MethodInfo {
    name: OPAQUE,
    kinds: &[OPAQUE_USER, GROUP],
    payload: crate::Payload::Bytes,
    rest: true,
    rest_set: crate::RestSet::Registration,
    needs_password: true,
    strength: 60,
    super_root: false,
    fixed_user: None,
    second_factor: false,
    suite: Some(OPAQUE_SUITE),
    plaintext_secret: false,
    plus: None,
    client_cert: false,
};

/// `opaque`'s registration.
pub(crate) static ENTRY: crate::Entry = crate::Entry {
    info: &INFO,
    server: |s| Ok(std::sync::Arc::new(Opaque::new(&s.opaque_setup)?)),
    client: |user, password| {
        Ok(Box::new(OpaqueClient {
            user: crate::exchange::need_user(OPAQUE, user)?,
            password: crate::exchange::need_password(OPAQUE, password)?,
        }))
    },
};

impl Method for Opaque {
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
        let ke1 = match data_bytes(request, "KE1")
            .and_then(|b| CredentialRequest::<Suite>::deserialize(b).map_err(|_| malformed("KE1")))
        {
            Ok(k) => k,
            Err(e) => return Step::Fail(e),
        };
        // A record that does not decode is treated like none: the client
        // sees a normal-looking KE2 and fails, as for a wrong password.
        let file = record
            .and_then(|r| r.get("record"))
            .and_then(Value::as_bin)
            .and_then(|b| ServerRegistration::<Suite>::deserialize(b).ok());
        let cid = match &file {
            Some(_) => record.and_then(|r| r.get("cid")).and_then(Value::as_bin),
            None => None,
        };
        let started = ServerLogin::start(
            &mut OsRng,
            &self.setup,
            file,
            ke1,
            &credential_id(cid, ident),
            ServerLoginParameters::default(),
        );
        let started = match started {
            Ok(s) => s,
            Err(_) => return Step::Fail(malformed("KE1")),
        };
        let ke2 = started.message.serialize().to_vec();
        let state = started.state;
        let user = ident.to_owned();
        Step::Send(
            Msg::new().with("data", ke2),
            Box::new(move |msg: &Value| {
                let ke3 = match data_bytes(msg, "KE3").and_then(|b| {
                    CredentialFinalization::<Suite>::deserialize(b).map_err(|_| malformed("KE3"))
                }) {
                    Ok(k) => k,
                    Err(e) => return Step::Fail(e),
                };
                match state.finish(ke3, ServerLoginParameters::default()) {
                    Ok(done) => {
                        let mut key = [0u8; 32];
                        key.copy_from_slice(&done.session_key[..32]);
                        Step::Done(Verdict {
                            user,
                            reply: None,
                            session_key: Some(SecretKey::new(key)),
                            write_back: None,
                        })
                    }
                    // A wrong password, an unknown user (fake record) and a
                    // tampered KE3 all end here.
                    Err(_) => Step::Fail(AuthError::Failed),
                }
            }),
        )
    }

    fn set_record(
        &self,
        _ctx: &LoginCtx<'_>,
        kind: &Kind,
        ident: &str,
        request: &Value,
    ) -> Step<Value> {
        if kind.name != "user" {
            return crate::root::empty_record(request);
        }
        let req = match data_bytes(request, "registration request").and_then(|b| {
            RegistrationRequest::<Suite>::deserialize(b)
                .map_err(|_| malformed("registration request"))
        }) {
            Ok(r) => r,
            Err(e) => return Step::Fail(e),
        };
        let (cid, token) = match self.registration_cid(request, ident) {
            Ok(x) => x,
            Err(e) => return Step::Fail(e),
        };
        let response = match ServerRegistration::<Suite>::start(
            &self.setup,
            req,
            &credential_id(Some(&cid), ident),
        ) {
            Ok(r) => r.message.serialize().to_vec(),
            Err(_) => return Step::Fail(malformed("registration request")),
        };
        Step::Send(
            Msg::new().with("data", response).with("token", token),
            Box::new(move |msg: &Value| {
                let upload = match data_bytes(msg, "registration upload").and_then(|b| {
                    RegistrationUpload::<Suite>::deserialize(b)
                        .map_err(|_| malformed("registration upload"))
                }) {
                    Ok(u) => u,
                    Err(e) => return Step::Fail(e),
                };
                let file = ServerRegistration::<Suite>::finish(upload);
                Step::Done(
                    Msg::new()
                        .with("record", file.serialize().to_vec())
                        .with("cid", cid.to_vec())
                        .into_value(),
                )
            }),
        )
    }
}

/// A client's OPAQUE login under way, for a client that needs the
/// session key too (a REST client signs its requests with it).
pub struct OpaqueLogin {
    state: OpaqueClientLogin<Suite>,
    password: Zeroizing<Vec<u8>>,
}

impl OpaqueLogin {
    /// Starts a login: the login and its KE1.
    pub fn start(password: &Password) -> Result<(OpaqueLogin, Vec<u8>), AuthError> {
        let pw = Zeroizing::new(password.expose().as_bytes().to_vec());
        let start = OpaqueClientLogin::<Suite>::start(&mut OsRng, &pw)
            .map_err(|_| malformed("client start"))?;
        let ke1 = start.message.serialize().to_vec();
        Ok((
            OpaqueLogin {
                state: start.state,
                password: pw,
            },
            ke1,
        ))
    }

    /// Finishes with the server's KE2: KE3 and the session key (the first
    /// 32 bytes of the exchange's, as the server keeps it).
    /// [`AuthError::Failed`] if KE2 does not open (a wrong password or an
    /// unknown user).
    pub fn finish(self, ke2: &[u8]) -> Result<(Vec<u8>, SecretKey), AuthError> {
        let ke2 = CredentialResponse::<Suite>::deserialize(ke2).map_err(|_| malformed("KE2"))?;
        let done = self
            .state
            .finish(
                &mut OsRng,
                &self.password,
                ke2,
                ClientLoginFinishParameters::default(),
            )
            .map_err(|_| AuthError::Failed)?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&done.session_key[..32]);
        Ok((done.message.serialize().to_vec(), SecretKey::new(key)))
    }
}

/// Client half of `opaque`.
pub struct OpaqueClient {
    /// The user name.
    pub user: String,
    /// The password (zeroized on drop).
    pub password: Password,
}

impl ClientMethod for OpaqueClient {
    fn name(&self) -> &'static str {
        OPAQUE
    }

    fn ident(&self) -> String {
        self.user.clone()
    }

    fn login(&self, _channel: Option<&SecretKey>) -> ClientLogin {
        let (login, ke1) = match OpaqueLogin::start(&self.password) {
            Ok(s) => s,
            Err(e) => {
                return ClientLogin {
                    request: Msg::new(),
                    exchange: Some(Box::new(move |_: &Value| Step::Fail(e))),
                }
            }
        };
        ClientLogin {
            request: Msg::new().with("data", ke1),
            exchange: Some(Box::new(move |msg: &Value| {
                let finished = data_bytes(msg, "KE2").and_then(|ke2| login.finish(ke2));
                match finished {
                    Ok((ke3, _key)) => Step::Send(
                        Msg::new().with("data", ke3),
                        Box::new(|_: &Value| Step::Done(())),
                    ),
                    Err(e) => Step::Fail(e),
                }
            })),
        }
    }

    fn set_record(&self, _channel: Option<&SecretKey>) -> ClientLogin {
        let pw = Zeroizing::new(self.password.expose().as_bytes().to_vec());
        let start = match ClientRegistration::<Suite>::start(&mut OsRng, &pw) {
            Ok(s) => s,
            Err(_) => {
                return ClientLogin {
                    request: Msg::new(),
                    exchange: Some(Box::new(|_: &Value| Step::Fail(malformed("client start")))),
                }
            }
        };
        let state = start.state;
        ClientLogin {
            request: Msg::new()
                .with("state", "start")
                .with("data", start.message.serialize().to_vec()),
            exchange: Some(Box::new(move |msg: &Value| {
                let resp = match data_bytes(msg, "registration response").and_then(|b| {
                    RegistrationResponse::<Suite>::deserialize(b)
                        .map_err(|_| malformed("registration response"))
                }) {
                    Ok(r) => r,
                    Err(e) => return Step::Fail(e),
                };
                match state.finish(
                    &mut OsRng,
                    &pw,
                    resp,
                    ClientRegistrationFinishParameters::default(),
                ) {
                    Ok(done) => Step::Send(
                        Msg::new().with("data", done.message.serialize().to_vec()),
                        Box::new(|_: &Value| Step::Done(())),
                    ),
                    Err(_) => Step::Fail(malformed("registration response")),
                }
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::Exchange;

    fn drive<T>(
        mut server: Step<T>,
        mut client: Box<dyn Exchange<()>>,
        tamper: impl Fn(&mut Value),
    ) -> Result<T, String> {
        loop {
            match server {
                Step::Send(msg, next) => {
                    let m = msg.into_value();
                    match client.next(&m) {
                        Step::Send(answer, c) => {
                            client = c;
                            let mut a = answer.into_value();
                            tamper(&mut a);
                            server = next.next(&a);
                        }
                        Step::Fail(e) => return Err(format!("client: {e}")),
                        _ => return Err("client out of step".into()),
                    }
                }
                Step::Done(t) => return Ok(t),
                Step::Fail(e) => return Err(format!("server: {e}")),
                Step::Work(w) => server = w(),
            }
        }
    }

    fn register(server: &Opaque, user: &str, pw: &str) -> Value {
        let c = OpaqueClient {
            user: user.into(),
            password: Password::new(pw),
        };
        let start = c.set_record(None);
        let step = server.set_record(
            &LoginCtx::default(),
            &OPAQUE_USER,
            user,
            &start.request.into_value(),
        );
        drive(step, start.exchange.expect("dialogue"), |_| {}).expect("registered")
    }

    fn login(
        server: &Opaque,
        record: Option<&Value>,
        user: &str,
        pw: &str,
        tamper: impl Fn(&mut Value),
    ) -> Result<Verdict, String> {
        let c = OpaqueClient {
            user: user.into(),
            password: Password::new(pw),
        };
        let start = c.login(None);
        let step = server.login(
            &LoginCtx::default(),
            user,
            &start.request.into_value(),
            record,
        );
        drive(step, start.exchange.expect("dialogue"), tamper)
    }

    #[test]
    fn register_then_log_in_with_a_session_key() {
        let s = Opaque::new(&new_server_setup()).expect("setup");
        let rec = register(&s, "alice", "hunter22");
        let v = login(&s, Some(&rec), "alice", "hunter22", |_| {}).expect("login");
        assert_eq!(v.user, "alice");
        assert!(v.session_key.is_some());
        // The record holds no password.
        let bytes = rec.get("record").and_then(Value::as_bin).expect("record");
        assert!(!bytes.windows(8).any(|w| w == b"hunter22"));
    }

    #[test]
    fn wrong_password_unknown_user_and_tampered_ke3_fail() {
        let s = Opaque::new(&new_server_setup()).expect("setup");
        let rec = register(&s, "alice", "hunter22");
        assert_eq!(
            login(&s, Some(&rec), "alice", "hunter2", |_| {})
                .err()
                .as_deref(),
            Some("client: login failed")
        );
        assert_eq!(
            login(&s, None, "bob", "hunter22", |_| {}).err().as_deref(),
            Some("client: login failed")
        );
        let tampered = login(&s, Some(&rec), "alice", "hunter22", |m| {
            if let Some(Value::Bin(b)) = m.get("data").cloned() {
                let mut b = b;
                b[0] ^= 1;
                *m = Msg::new().with("data", b).into_value();
            }
        });
        assert_eq!(tampered.err().as_deref(), Some("server: login failed"));
    }

    #[test]
    fn garbage_messages_are_malformed() {
        let s = Opaque::new(&new_server_setup()).expect("setup");
        for bad in [
            Msg::new(),
            Msg::new().with("data", vec![0u8; 3]),
            Msg::new().with("data", "text"),
        ] {
            let v = bad.into_value();
            assert!(matches!(
                s.login(&LoginCtx::default(), "a", &v, None),
                Step::Fail(AuthError::Malformed(_))
            ));
            assert!(matches!(
                s.set_record(&LoginCtx::default(), &OPAQUE_USER, "a", &v),
                Step::Fail(AuthError::Malformed(_))
            ));
        }
        assert!(Opaque::new(b"not a setup").is_err());
    }
}
