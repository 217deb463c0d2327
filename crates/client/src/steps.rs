//! Driving a client half's steps, for both transports: `Work` runs
//! inline (a client is one user: there is no event loop to keep free),
//! and what is left is the step to act on — a message to send, the end,
//! or a failure. The msgpack connection (`conn.rs`) and the REST login
//! (`rest/login.rs`) carry the messages; neither runs steps itself.

use keycard_auth::Step;

/// Runs `step`'s work until it asks for something else; never returns
/// `Step::Work`.
pub(crate) fn settle<T>(mut step: Step<T>) -> Step<T> {
    loop {
        match step {
            Step::Work(work) => step = work(),
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_until_the_step_needs_the_peer_or_ends() {
        let step: Step<u8> = Step::Work(Box::new(|| Step::Work(Box::new(|| Step::Done(7)))));
        assert!(matches!(settle(step), Step::Done(7)));
        assert!(matches!(
            settle::<u8>(Step::Fail(keycard_auth::AuthError::Failed)),
            Step::Fail(_)
        ));
    }
}
