//! One node's value: read, write (with DistKV's conditions and ACL
//! rules), delete. REST's `/kv` and msgpack's `get_value`, `set_value`
//! and `delete_value` both come here.

use keycard_auth::acl::Mode;
use keycard_proto::{ErrorCode, Value};
use keycard_store::{Cond, Entry, Op, Outcome, StoreError, Tock};

use super::access::{check_login, DataPath};
use super::acl::{authorize, authorize_reading, caller_acl, refusal};
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::ServerState;

/// What a write tells its caller.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Written {
    /// Whether the node changed. To a caller that may not read the node
    /// it only says that the write happened, not whether the old value
    /// was the same.
    pub changed: bool,
    /// The write's tock.
    pub tock: Tock,
    /// The value replaced: only to a caller that may read it, and only
    /// for an unconditional write (DistKV's `prev`).
    pub prev: Option<Value>,
}

impl Written {
    /// What the store's `out` for a write of `value` (`None`: a deletion)
    /// tells a caller that may (`readable`) or may not read the node; an
    /// unconditional write (`send_prev`) answers the previous value.
    pub(crate) fn of(
        out: Outcome,
        value: Option<&Value>,
        readable: bool,
        send_prev: bool,
    ) -> Written {
        let changed = out.changed && (!readable || out.prev.as_ref() != value);
        Written {
            changed,
            tock: out.tock,
            prev: out.prev.filter(|_| readable && send_prev),
        }
    }
}

/// The node at `path`, if the caller may read it.
pub(crate) async fn get(
    state: &ServerState,
    caller: &Caller,
    path: &DataPath,
) -> ApiResult<Option<Entry>> {
    check_login(state, caller)?;
    authorize(state, caller, path.path(), Mode::Read).await?;
    Ok(state.store.get(path.path()).await?)
}

/// Most times [`set`] decides again after losing a race to another write
/// of the node (each time, the node changed under it).
const DECIDE_TRIES: usize = 64;

/// Sets the node at `path` to `value` if `cond` holds (`idem`: an equal
/// value is not written again).
///
/// A caller bound to ACLs needs `w` to overwrite and `c` to create
/// (DistKV's rule), decided from a read of the node. The write is then
/// conditional on what the decision saw (the node absent, or unchanged
/// since its tock), so a value created or deleted in between cannot slip
/// through; losing that race decides again, so the write fails only on a
/// condition the caller asked for. A caller holding both needs no such
/// condition.
pub(crate) async fn set(
    state: &ServerState,
    caller: &Caller,
    path: &DataPath,
    value: Value,
    asked: Cond,
    idem: bool,
) -> ApiResult<Written> {
    check_login(state, caller)?;
    let path = path.path();
    let Some(acl) = caller_acl(state, caller).await? else {
        let send_prev = asked == Cond::Any;
        let op = Op::Put {
            path: path.clone(),
            value: value.clone(),
            cond: asked,
            idem,
        };
        let out = write_one(state, op).await?;
        return Ok(Written::of(out, Some(&value), true, send_prev));
    };
    for _ in 0..DECIDE_TRIES {
        let entry = state.store.get(path).await?;
        let have = crate::acl::existing_depth(state.store.as_ref(), path).await?;
        let may = |mode| acl.decide(path.elems(), have, mode).is_ok();
        let (w, c) = (may(Mode::Write), may(Mode::Create));
        let readable = may(Mode::Read);
        let mode = match entry {
            Some(_) => Mode::Write,
            None => Mode::Create,
        };
        if !(if entry.is_some() { w } else { c }) {
            // A caller that cannot read the node learns nothing of it,
            // not even whether it exists.
            return Err(match readable {
                true => refusal(path, &format!("mode '{}'", mode.letter())),
                false => refusal(path, "mode 'w' or 'c'"),
            });
        }
        // The caller's own condition, against the node the decision saw
        // (a failed condition is a read: it answers as of that read).
        if let Err(why) = holds(&asked, entry.as_ref()) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("condition failed: {why}"),
            ));
        }
        let pinned = !(w && c);
        let cond = match (&entry, pinned) {
            (_, false) => asked.clone(),
            (None, true) => Cond::Absent,
            (Some(e), true) => Cond::TockIs(e.tock),
        };
        let op = Op::Put {
            path: path.clone(),
            value: value.clone(),
            cond,
            // Skipping an unchanged value would tell an unreading caller
            // that it guessed the value.
            idem: readable && idem,
        };
        match state.store.write(vec![op]).await {
            Ok(mut out) => {
                let out = out.pop().ok_or_else(no_outcome)?;
                return Ok(Written::of(out, Some(&value), readable, asked == Cond::Any));
            }
            // Only the condition added here failed: the node changed since
            // the read. Decide again.
            Err(StoreError::Conflict { .. }) if pinned => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(
        ErrorCode::Conflict,
        "the node kept changing while this write was decided; try again",
    ))
}

/// Whether `cond` holds for the node `entry`, as the store decides it
/// (the same reasons).
fn holds(cond: &Cond, entry: Option<&Entry>) -> Result<(), &'static str> {
    match (cond, entry) {
        (Cond::Any, _) | (Cond::Absent, None) => Ok(()),
        (Cond::Absent, Some(_)) => Err("the node exists"),
        (Cond::Equals(_) | Cond::TockIs(_), None) => Err("the node has no value"),
        (Cond::Equals(want), Some(e)) if *want != e.value => {
            Err("the node holds a different value")
        }
        (Cond::TockIs(t), Some(e)) if *t != e.tock => Err("the node was changed at another tock"),
        (Cond::Equals(_) | Cond::TockIs(_), Some(_)) => Ok(()),
    }
}

/// Deletes the node at `path` if `cond` holds. The previous value is
/// answered only to a caller that may read it.
pub(crate) async fn delete(
    state: &ServerState,
    caller: &Caller,
    path: &DataPath,
    cond: Cond,
) -> ApiResult<Written> {
    check_login(state, caller)?;
    let readable = authorize_reading(state, caller, path.path(), Mode::Delete).await?;
    let send_prev = cond == Cond::Any;
    let op = Op::Delete {
        path: path.path().clone(),
        cond,
    };
    let out = write_one(state, op).await?;
    Ok(Written::of(out, None, readable, send_prev))
}

/// Writes one op; its outcome.
pub(crate) async fn write_one(state: &ServerState, op: Op) -> ApiResult<Outcome> {
    state
        .store
        .write(vec![op])
        .await?
        .pop()
        .ok_or_else(no_outcome)
}

fn no_outcome() -> ApiError {
    ApiError::new(ErrorCode::Internal, "store returned no outcome")
}
