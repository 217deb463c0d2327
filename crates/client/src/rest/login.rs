//! The client half of a REST login, sans-IO: what to send with
//! `POST /session/new` and `PUT /session/{sid}`, the checks on what comes
//! back, and the session key `K` the exchange agrees (docs/REST.md,
//! "Signed requests"). [`super::RestClient::login`] carries the messages.
//!
//! The methods offered over REST carry their messages in `data`: SCRAM's
//! as the RFC 5802 strings, OPAQUE's as base64url (unpadded) bytes.
//!
//! A user with further factors (docs/DESIGN.md §2.2) is prompted instead
//! of let in: the `PUT`'s `200 {sid, data, factor}` is a [`Prompted`],
//! answered with that factor's client half as another [`Challenged`]
//! (`{method, data?}`), until the `303`. The key is the first method's;
//! a factor's message travels as its method declares (text, or base64url
//! bytes).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use keycard_auth::{
    client_session_key, method_info, ClientMethod, Exchange, OpaqueLogin, Password, Payload,
    ScramClient, SecretKey, Step, OPAQUE, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use keycard_proto::{Msg, Value};
use serde_json::json;

use super::{RestError, Session, UNVERIFIED};
use crate::WRONG_CREDENTIALS;

/// A REST login about to begin: the method, the user and the first
/// message. Made by [`Login::scram`], [`Login::opaque`] or [`Login::new`].
pub struct Login {
    method: &'static str,
    user: String,
    /// The first message's `data`, as it goes in the JSON body.
    data: String,
    state: Started,
}

/// What a begun login keeps for the server's challenge.
enum Started {
    Scram {
        password: Password,
        /// The client-first message (with its GS2 header).
        first: String,
        exchange: Box<dyn Exchange<()>>,
    },
    // Boxed: OPAQUE's client state is large beside SCRAM's.
    Opaque(Box<OpaqueLogin>),
}

impl Login {
    /// A login with the method named `method` (those offered over REST:
    /// `scram-sha-256`, `opaque`).
    pub fn new(method: &str, user: &str, password: Password) -> Result<Login, RestError> {
        match method {
            SCRAM_SHA_256 => Login::scram(user, password),
            OPAQUE => Login::opaque(user, password),
            SCRAM_SHA_256_PLUS => Err(RestError::Request(format!(
                "{SCRAM_SHA_256_PLUS} binds to a connection: make it with Login::scram_plus \
                 (or RestClient::scram)"
            ))),
            other => Err(RestError::Request(format!(
                "method {other:?} is not offered over REST"
            ))),
        }
    }

    /// A SCRAM-SHA-256 login: its client-first message is made now.
    pub fn scram(user: &str, password: Password) -> Result<Login, RestError> {
        let client = ScramClient::new(user, password.clone());
        Login::scram_with(SCRAM_SHA_256, user, password, client)
    }

    /// A SCRAM-SHA-256-PLUS login (RFC 5802 §6), bound to the TLS
    /// connection that `binding` describes ([`super::RestClient::channel_binding`]).
    /// It binds by `tls-server-end-point` (the server certificate's hash)
    /// when the certificate has one: that holds for every connection to
    /// the server, so the login's requests may each take a new one. Else
    /// by `tls-exporter`, which holds for one connection only: the
    /// login's requests must then all go over the connection `binding`
    /// came from (a [`super::RestClient`]'s kept connection).
    pub fn scram_plus(
        user: &str,
        password: Password,
        binding: &keycard_auth::ChannelBinding,
    ) -> Result<Login, RestError> {
        let chosen = ["tls-server-end-point", "tls-exporter"]
            .into_iter()
            .find_map(|kind| binding.get(kind).map(|d| (kind.to_owned(), d.to_vec())))
            .ok_or_else(|| {
                RestError::Request("the connection offers no channel-binding data".into())
            })?;
        let mut client = ScramClient::new(user, password.clone());
        client.channel_binding = Some(chosen);
        Login::scram_with(SCRAM_SHA_256_PLUS, user, password, client)
    }

    /// A SCRAM-SHA-256 login from a client that could bind but was not
    /// offered `-plus`: it says so (`y,,`, RFC 5802 §6), so that a server
    /// that does offer `-plus` sees that someone hid it and refuses.
    pub fn scram_unoffered(user: &str, password: Password) -> Result<Login, RestError> {
        let mut client = ScramClient::new(user, password.clone());
        client.can_bind = true;
        Login::scram_with(SCRAM_SHA_256, user, password, client)
    }

    fn scram_with(
        method: &'static str,
        user: &str,
        password: Password,
        client: ScramClient,
    ) -> Result<Login, RestError> {
        let start = client.login(None);
        let first = data_text(&start.request.into_value(), "client-first")?;
        let exchange = start
            .exchange
            .ok_or_else(|| RestError::Auth("SCRAM's client half has no exchange".into()))?;
        Ok(Login {
            method,
            user: user.to_owned(),
            data: first.clone(),
            state: Started::Scram {
                password,
                first,
                exchange,
            },
        })
    }

    /// An OPAQUE login: its KE1 is made now.
    pub fn opaque(user: &str, password: Password) -> Result<Login, RestError> {
        let (login, ke1) =
            OpaqueLogin::start(&password).map_err(|e| RestError::Auth(e.to_string()))?;
        Ok(Login {
            method: OPAQUE,
            user: user.to_owned(),
            data: URL_SAFE_NO_PAD.encode(ke1),
            state: Started::Opaque(Box::new(login)),
        })
    }

    /// The method's name.
    pub fn method(&self) -> &'static str {
        self.method
    }

    /// The user logging in.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The body of `POST /session/new`.
    pub fn body(&self) -> String {
        json!({"method": self.method, "user": self.user, "data": self.data}).to_string()
    }

    /// Takes the server's `201` body (`{sid, data}`): the proof to send and
    /// what checks the server's last word.
    pub fn challenged(self, reply: &serde_json::Value) -> Result<Challenged, RestError> {
        let sid = field(reply, "sid")?.to_owned();
        let challenge = field(reply, "data")?;
        let (proof, finish) = match self.state {
            Started::Scram {
                password,
                first,
                exchange,
            } => {
                let Step::Send(fin, next) = run(exchange.next(&data_msg(challenge)))? else {
                    return Err(RestError::Protocol(
                        "SCRAM's client half ended at the server-first message".into(),
                    ));
                };
                let client_final = data_text(&fin.into_value(), "client-final")?;
                let key = scram_key(&password, &first, challenge, &client_final)?;
                (client_final, Finish::Scram { next, key })
            }
            Started::Opaque(login) => {
                let ke2 = URL_SAFE_NO_PAD
                    .decode(challenge)
                    .map_err(|_| RestError::Protocol("KE2 is not base64url".into()))?;
                // KE2 opens only under the user's own password: a wrong one
                // and an unknown user fail here alike, before the server
                // learns anything.
                let (ke3, key) = login
                    .finish(&ke2)
                    .map_err(|_| RestError::Auth(WRONG_CREDENTIALS.into()))?;
                (URL_SAFE_NO_PAD.encode(ke3), Finish::Opaque { key })
            }
        };
        Ok(Challenged {
            sid,
            body: json!({"data": proof}),
            proof,
            finish,
        })
    }
}

/// A login the server has challenged: the session id, the proof to send
/// with `PUT /session/{sid}`, and the session key once the server's answer
/// checks out.
pub struct Challenged {
    sid: String,
    proof: String,
    /// The `PUT`'s body: `{data}`, or `{method, data?}` for a factor.
    body: serde_json::Value,
    finish: Finish,
}

/// What checks the server's final answer and holds the key meanwhile.
enum Finish {
    Scram {
        next: Box<dyn Exchange<()>>,
        key: SecretKey,
    },
    Opaque {
        key: SecretKey,
    },
    /// A further factor's exchange, under the first method's key.
    Factor {
        method: &'static str,
        next: Option<Box<dyn Exchange<()>>>,
        key: SecretKey,
    },
}

impl Finish {
    /// The key, once the method's last message (the `data` of the answer
    /// that ends it: a prompt or the `303`) checks out.
    fn settle(self, reply: &serde_json::Value) -> Result<SecretKey, RestError> {
        match self {
            Finish::Scram { next, key } => {
                let last = field(reply, "data")?;
                match run(next.next(&data_msg(last)))? {
                    Step::Done(()) => Ok(key),
                    _ => Err(RestError::Auth(UNVERIFIED.into())),
                }
            }
            Finish::Opaque { key } => Ok(key),
            Finish::Factor {
                next: None, key, ..
            } => Ok(key),
            Finish::Factor {
                method,
                next: Some(next),
                key,
            } => match run(next.next(&factor_msg(method, reply)?))? {
                Step::Done(()) => Ok(key),
                _ => Err(RestError::Auth(UNVERIFIED.into())),
            },
        }
    }
}

impl Challenged {
    /// The session (keycard) id the server gave the login.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// The proof's `data` (SCRAM's client-final message; OPAQUE's KE3,
    /// base64url).
    pub fn proof(&self) -> &str {
        &self.proof
    }

    /// The body of `PUT /session/{sid}`.
    pub fn body(&self) -> String {
        self.body.to_string()
    }

    /// Takes the server's `303` body: the session, once SCRAM's server
    /// signature proved that the server holds the user's verifier (and a
    /// factor with several messages took the server's last).
    pub fn finish(self, reply: &serde_json::Value) -> Result<Session, RestError> {
        let key = self.finish.settle(reply)?;
        Ok(Session { sid: self.sid, key })
    }

    /// Takes the server's `200` body: a prompt for a further factor
    /// (`{sid, data, factor}`, `data` the last method's final message,
    /// checked here as the `303`'s would be), or, in a factor's exchange
    /// of several messages, its next challenge (`{sid, data}`).
    pub fn prompted(self, reply: &serde_json::Value) -> Result<Continued, RestError> {
        let sid = field(reply, "sid")?;
        if sid != self.sid {
            return Err(RestError::Protocol(format!(
                "the prompt names the session {sid:?}, not {:?}",
                self.sid
            )));
        }
        match reply.get("factor") {
            Some(serde_json::Value::String(factor)) => {
                let factor = factor.clone();
                let key = self.finish.settle(reply)?;
                Ok(Continued::Factor(Prompted {
                    sid: self.sid,
                    factor,
                    key,
                }))
            }
            None | Some(serde_json::Value::Null) => {
                let Finish::Factor {
                    method,
                    next: Some(next),
                    key,
                } = self.finish
                else {
                    return Err(RestError::Protocol(
                        "a 200 without a factor before the login's last message".into(),
                    ));
                };
                let Step::Send(answer, next) = run(next.next(&factor_msg(method, reply)?))? else {
                    return Err(RestError::Protocol(format!(
                        "the factor {method:?} ended at the server's challenge"
                    )));
                };
                let (proof, body) = factor_body(method, None, &answer.into_value())?;
                Ok(Continued::Put(Challenged {
                    sid: self.sid,
                    proof,
                    body,
                    finish: Finish::Factor {
                        method,
                        next: Some(next),
                        key,
                    },
                }))
            }
            Some(other) => Err(RestError::Protocol(format!(
                "the prompt's factor is not a method name: {other}"
            ))),
        }
    }
}

/// What a `200` to `PUT /session/{sid}` leads to ([`Challenged::prompted`]).
pub enum Continued {
    /// The server asks for a further factor.
    Factor(Prompted),
    /// A factor's exchange goes on: `PUT` this.
    Put(Challenged),
}

/// A login the server prompts for a further factor: the first method
/// passed (its key is agreed and, for SCRAM, the server verified).
pub struct Prompted {
    sid: String,
    factor: String,
    key: SecretKey,
}

impl Prompted {
    /// The session (keycard) id.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// The method the server asks for.
    pub fn factor(&self) -> &str {
        &self.factor
    }

    /// Answers the prompt with `method`'s first message: the `PUT`
    /// carrying `{method, data?}`. A method other than the one prompted is
    /// refused, as is one that needs an agreed key (REST agrees none for a
    /// factor).
    pub fn answer(self, method: &dyn ClientMethod) -> Result<Challenged, RestError> {
        let name = method.name();
        if name != self.factor {
            return Err(not_given(&self.factor));
        }
        if method.needs_channel() {
            return Err(RestError::Auth(format!(
                "the factor {name:?} needs an agreed key, which REST does not offer"
            )));
        }
        let start = method.login(None);
        let (proof, body) = factor_body(name, Some(name), &start.request.into_value())?;
        Ok(Challenged {
            sid: self.sid,
            proof,
            body,
            finish: Finish::Factor {
                method: name,
                next: start.exchange,
                key: self.key,
            },
        })
    }
}

/// The error for a prompt for `factor` that this login cannot answer.
pub(super) fn not_given(factor: &str) -> RestError {
    RestError::Auth(format!(
        "the server asks for the factor {factor:?}, which this login does not have"
    ))
}

/// A factor's message as the `PUT`'s `data` (text, or base64url bytes),
/// with `method` named when it answers a prompt: the proof and the body.
fn factor_body(
    method: &str,
    named: Option<&str>,
    msg: &Value,
) -> Result<(String, serde_json::Value), RestError> {
    let data = match msg.get("data") {
        None | Some(Value::Nil) => None,
        Some(Value::Str(s)) => Some(s.clone()),
        Some(Value::Bin(b)) => Some(URL_SAFE_NO_PAD.encode(b)),
        Some(_) => {
            return Err(RestError::Request(format!(
                "the factor {method:?} makes a message REST cannot carry"
            )))
        }
    };
    let mut body = serde_json::Map::new();
    if let Some(m) = named {
        body.insert("method".into(), json!(m));
    }
    if let Some(d) = &data {
        body.insert("data".into(), json!(d));
    }
    Ok((data.unwrap_or_default(), serde_json::Value::Object(body)))
}

/// The server's `data` for a factor's client half: `{data}` as the method
/// takes it (text, or bytes from base64url), `{}` when there is none.
fn factor_msg(method: &str, reply: &serde_json::Value) -> Result<Value, RestError> {
    let Some(text) = reply.get("data").and_then(serde_json::Value::as_str) else {
        return Ok(Msg::new().into_value());
    };
    let bytes = method_info(method).is_some_and(|i| i.payload == Payload::Bytes);
    let data = if bytes {
        Value::Bin(URL_SAFE_NO_PAD.decode(text).map_err(|_| {
            RestError::Protocol(format!("the factor {method:?}'s data is not base64url"))
        })?)
    } else {
        Value::Str(text.to_owned())
    };
    Ok(Msg::new().with("data", data).into_value())
}

/// `K` for SCRAM: HMAC-SHA256(ClientKey, "keycard session key" ‖
/// AuthMessage), from the exchange's three messages.
fn scram_key(
    password: &Password,
    client_first: &str,
    server_first: &str,
    client_final: &str,
) -> Result<SecretKey, RestError> {
    let bad = |what: &str| RestError::Protocol(format!("SCRAM: {what}"));
    // The bare client-first message follows the GS2 header (`n,,`): two
    // commas in.
    let bare = client_first
        .splitn(3, ',')
        .nth(2)
        .ok_or_else(|| bad("a client-first message without its GS2 header"))?;
    let (without_proof, _) = client_final
        .rsplit_once(",p=")
        .ok_or_else(|| bad("a client-final message without a proof"))?;
    let attr = |k: &str| server_first.split(',').find_map(|a| a.strip_prefix(k));
    let salt = attr("s=")
        .and_then(|s| STANDARD.decode(s).ok())
        .ok_or_else(|| bad("the server-first message has no salt"))?;
    let iterations = attr("i=")
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| bad("the server-first message has no iteration count"))?;
    let auth_message = format!("{bare},{server_first},{without_proof}");
    client_session_key(password, &salt, iterations, &auth_message)
        .map_err(|e| RestError::Auth(e.to_string()))
}

/// Runs a client half's `Work` inline (a client is one user: there is no
/// event loop to keep free) and turns a failure into an error.
fn run(step: Step<()>) -> Result<Step<()>, RestError> {
    match crate::steps::settle(step) {
        Step::Fail(e) => Err(RestError::Protocol(e.to_string())),
        other => Ok(other),
    }
}

/// The message a client half takes: `{data: TEXT}`.
fn data_msg(text: &str) -> Value {
    Msg::new().with("data", text).into_value()
}

/// The `data` string of a client half's message.
fn data_text(msg: &Value, what: &str) -> Result<String, RestError> {
    msg.get("data")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| RestError::Auth(format!("the client half made no {what} message")))
}

/// A string field of a JSON answer.
fn field<'a>(reply: &'a serde_json::Value, key: &str) -> Result<&'a str, RestError> {
    reply
        .get(key)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| RestError::Protocol(format!("the answer has no {key:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_messages() {
        let l = Login::scram("alice", Password::new("pw")).expect("scram");
        let body: serde_json::Value = serde_json::from_str(&l.body()).expect("json");
        assert_eq!(body["method"], SCRAM_SHA_256);
        assert_eq!(body["user"], "alice");
        assert!(body["data"]
            .as_str()
            .is_some_and(|d| d.starts_with("n,,n=alice,r=")));
        let l = Login::new(OPAQUE, "olga", Password::new("pw")).expect("opaque");
        assert_eq!(l.method(), OPAQUE);
        let body: serde_json::Value = serde_json::from_str(&l.body()).expect("json");
        assert!(body["data"]
            .as_str()
            .is_some_and(|d| URL_SAFE_NO_PAD.decode(d).is_ok()));
        assert!(Login::new("no-such-method", "x", Password::new("")).is_err());
    }

    /// Whatever a server answers, a login fails with an error, never a
    /// panic.
    #[test]
    fn hostile_challenges_are_errors() {
        let replies = [
            json!(null),
            json!({"sid": "s"}),
            json!({"data": "r=x,s=AAAA,i=4096"}),
            json!({"sid": 5, "data": "x"}),
            json!({"sid": "s", "data": ""}),
            json!({"sid": "s", "data": "r=other,s=AAAA,i=4096"}),
            json!({"sid": "s", "data": "garbage"}),
        ];
        for r in &replies {
            let l = Login::scram("alice", Password::new("pw")).expect("scram");
            assert!(l.challenged(r).is_err(), "SCRAM took {r}");
            let l = Login::opaque("olga", Password::new("pw")).expect("opaque");
            assert!(l.challenged(r).is_err(), "OPAQUE took {r}");
        }
        // The server's nonce extends ours, but the salt is not base64 or
        // the count is missing.
        for tail in [",s=!!,i=4096", ",s=AAAA", ",s=AAAA,i=x"] {
            let l = Login::scram("alice", Password::new("pw")).expect("scram");
            let first = l.data.clone();
            let nonce = first.rsplit_once("r=").map(|(_, n)| n).unwrap_or_default();
            let r = json!({"sid": "s", "data": format!("r={nonce}srv{tail}")});
            assert!(l.challenged(&r).is_err(), "SCRAM took {r}");
        }
    }

    fn prompted_for(factor: &str) -> Prompted {
        Prompted {
            sid: "s".into(),
            factor: factor.into(),
            key: SecretKey::new([7; 32]),
        }
    }

    /// A prompt is answered with the prompted method's first message,
    /// `data` left out for a method that sends none; another method is
    /// refused.
    #[test]
    fn answering_a_prompt() {
        let totp = |code: Option<&str>| keycard_auth::TotpClient {
            user: "alice".into(),
            code: code.map(Password::new),
        };
        let c = prompted_for(keycard_auth::TOTP)
            .answer(&totp(Some("123456")))
            .expect("answered");
        assert_eq!(c.sid(), "s");
        let body: serde_json::Value = serde_json::from_str(&c.body()).expect("json");
        assert_eq!(body, json!({"method": "totp", "data": "123456"}));
        let c = prompted_for(keycard_auth::TOTP)
            .answer(&totp(None))
            .expect("answered");
        assert_eq!(c.body(), json!({"method": "totp"}).to_string());
        // The one-message factor ends at the 303, with the first
        // method's key.
        let session = c.finish(&json!({"data": null})).expect("in");
        assert_eq!(session.key.expose(), &[7; 32]);
        let e = prompted_for(keycard_auth::TOTP)
            .answer(&ScramClient::new("alice", Password::new("pw")))
            .err()
            .expect("another method");
        assert!(e.to_string().contains("\"totp\""), "{e}");
    }

    /// Whatever a server's `200` says, a login goes on or fails with an
    /// error, never a panic.
    #[test]
    fn hostile_prompts_are_errors() {
        let replies = [
            json!(null),
            json!({"sid": "other", "factor": "totp"}),
            json!({"sid": "s", "factor": 5}),
            // No factor, and the factor sent has no further message.
            json!({"sid": "s", "data": "x"}),
        ];
        for r in &replies {
            let c = prompted_for(keycard_auth::TOTP)
                .answer(&keycard_auth::TotpClient {
                    user: "alice".into(),
                    code: Some(Password::new("123456")),
                })
                .expect("answered");
            assert!(c.prompted(r).is_err(), "took {r}");
        }
        // SCRAM's prompt must carry a server signature that verifies.
        for r in [
            json!({"sid": "s", "factor": "totp"}),
            json!({"sid": "s", "factor": "totp", "data": "v=AAAA"}),
        ] {
            let challenged = Challenged {
                sid: "s".into(),
                proof: String::new(),
                body: json!({}),
                finish: Finish::Scram {
                    next: Box::new(Refuses),
                    key: SecretKey::new([1; 32]),
                },
            };
            assert!(challenged.prompted(&r).is_err(), "took {r}");
        }
    }

    /// A SCRAM client half whose server signature never verifies.
    struct Refuses;

    impl Exchange<()> for Refuses {
        fn next(self: Box<Self>, _msg: &Value) -> Step<()> {
            Step::Fail(keycard_auth::AuthError::Failed)
        }
    }
}
