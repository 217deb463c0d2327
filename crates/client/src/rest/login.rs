//! The client half of a REST login, sans-IO: what to send with
//! `POST /session/new` and `PUT /session/{sid}`, the checks on what comes
//! back, and the session key `K` the exchange agrees (docs/REST.md,
//! "Signed requests"). [`super::RestClient::login`] carries the messages.
//!
//! The methods offered over REST carry their messages in `data`: SCRAM's
//! as the RFC 5802 strings, OPAQUE's as base64url (unpadded) bytes.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use keycard_auth::{
    client_session_key, ClientMethod, Exchange, OpaqueLogin, Password, ScramClient, SecretKey,
    Step, OPAQUE, SCRAM_SHA_256,
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
            other => Err(RestError::Request(format!(
                "method {other:?} is not offered over REST"
            ))),
        }
    }

    /// A SCRAM-SHA-256 login: its client-first message is made now.
    pub fn scram(user: &str, password: Password) -> Result<Login, RestError> {
        let start = ScramClient::new(user, password.clone()).login(None);
        let first = data_text(&start.request.into_value(), "client-first")?;
        let exchange = start
            .exchange
            .ok_or_else(|| RestError::Auth("SCRAM's client half has no exchange".into()))?;
        Ok(Login {
            method: SCRAM_SHA_256,
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
        Ok(Challenged { sid, proof, finish })
    }
}

/// A login the server has challenged: the session id, the proof to send
/// with `PUT /session/{sid}`, and the session key once the server's answer
/// checks out.
pub struct Challenged {
    sid: String,
    proof: String,
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
        json!({"data": self.proof}).to_string()
    }

    /// Takes the server's `303` body: the session, once SCRAM's server
    /// signature proved that the server holds the user's verifier.
    pub fn finish(self, reply: &serde_json::Value) -> Result<Session, RestError> {
        let key = match self.finish {
            Finish::Scram { next, key } => {
                let last = field(reply, "data")?;
                match run(next.next(&data_msg(last)))? {
                    Step::Done(()) => key,
                    _ => return Err(RestError::Auth(UNVERIFIED.into())),
                }
            }
            Finish::Opaque { key } => key,
        };
        Ok(Session { sid: self.sid, key })
    }
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
}
