//! The one place a method's [`Step`]s are driven. [`until_peer`] runs
//! steps until one needs the peer (heavy work on the server's bounded
//! pool); [`drive`] carries a [`super::Login`]'s challenges through a
//! [`Carrier`] — the msgpack `auth` request's stream, or a REST login's
//! requests — until it ends. The transports only say how a message goes
//! out and how the answer comes back.

use std::future::Future;

use keycard_auth::bouncer::KeycardId;
use keycard_auth::{AuthError, Exchange, Step};
use keycard_proto::{ErrorCode, Msg};

use super::{Granted, LoginAnswer, Progress, Refusal};
use crate::error::ApiError;
use crate::state::ServerState;

/// Where a run of steps stopped.
pub(crate) enum Halt<T> {
    /// The exchange produced this.
    Done(T),
    /// The method said no.
    Fail(AuthError),
    /// Send this to the peer and resume with its answer.
    Ask(Msg, Box<dyn Exchange<T>>),
}

/// Runs `step` until it ends or needs the peer; `Work` runs on the
/// server's bounded worker pool. `Err`: the pool is gone (a server error,
/// never the client's).
pub(crate) async fn until_peer<T: Send + 'static>(
    state: &ServerState,
    mut step: Step<T>,
) -> Result<Halt<T>, ApiError> {
    loop {
        match step {
            Step::Done(t) => return Ok(Halt::Done(t)),
            Step::Fail(e) => return Ok(Halt::Fail(e)),
            Step::Send(msg, next) => return Ok(Halt::Ask(msg, next)),
            Step::Work(work) => {
                step = state.run_work(work).await.ok_or_else(|| {
                    ApiError::new(ErrorCode::Internal, "the hashing workers are unavailable")
                })?;
            }
        }
    }
}

/// A challenge for the client.
pub(crate) struct Ask {
    /// The message.
    pub msg: Msg,
    /// The answer must come before this (Unix ms, the server's clock).
    pub deadline: u64,
    /// The method whose message answers it (a factor's, after a prompt).
    pub method: &'static str,
    /// The login's keycard (a REST login's session id).
    pub card: KeycardId,
}

/// How a transport carries a login's challenges.
pub(crate) trait Carrier: Send {
    /// Sends the challenge and waits for the client's answer until its
    /// deadline. `Err`: why no answer came (the client left, the window
    /// passed, a malformed answer); the login then fails.
    fn ask(&mut self, ask: Ask) -> impl Future<Output = Result<LoginAnswer, String>> + Send;
}

/// Drives a login from its first progress to its end, carrying every
/// challenge (a method's, or the prompt for the next factor) through
/// `carrier`.
pub(crate) async fn drive<C: Carrier>(
    mut progress: Result<Progress, Refusal>,
    carrier: &mut C,
) -> Result<Box<Granted>, Refusal> {
    loop {
        match progress? {
            Progress::Done(g) => return Ok(g),
            Progress::Challenge {
                msg,
                deadline,
                login,
            } => {
                let ask = Ask {
                    msg,
                    deadline,
                    method: login.running(),
                    card: login.card_id(),
                };
                progress = match carrier.ask(ask).await {
                    Ok(answer) => login.answer(answer).await,
                    Err(why) => login.fail(why).await,
                };
            }
        }
    }
}
