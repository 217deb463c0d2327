//! The lock-out guard: no management write may leave nobody able to log
//! in (a current method that is unknown or has no user), decided
//! atomically with the write.

use keycard_proto::{ErrorCode, Path, Value};
use keycard_store::{Cond, Op, ScanOpts};

use crate::error::{ApiError, ApiResult};
use crate::state::ServerState;

/// The users (at most `limit`) of method `method` under the auth root
/// `at`.
pub(crate) async fn users_of(
    state: &ServerState,
    at: &Path,
    method: &str,
    limit: usize,
) -> ApiResult<Vec<(Path, keycard_store::Entry)>> {
    let users = at.child(method).child("user");
    let opts = ScanOpts {
        min_depth: 1,
        max_depth: Some(1),
    };
    Ok(state.store.scan_up_to(&users, opts, limit).await?)
}

/// An op that writes nothing and fails unless the node is as `seen`
/// (unchanged since its tock, or still absent).
pub(crate) fn unchanged(path: Path, seen: Option<&keycard_store::Entry>) -> Op {
    match seen {
        Some(e) => Op::Put {
            path,
            value: e.value.clone(),
            cond: Cond::TockIs(e.tock),
            idem: true,
        },
        None => Op::Delete {
            path,
            cond: Cond::Absent,
        },
    }
}

/// Refuses a management write that would leave nobody able to log in: a
/// current method that is unknown or has no user. `value` is the node's new
/// value, `None` for a deletion. (Deleting `(nil, "auth")` itself is not a
/// lock-out: it opens the server.) Returns what the decision rests on, as
/// ops that write nothing: the write's batch carries them, so two changes
/// at once (two deletions of a method's last two users, a deletion and
/// `set_auth_typ`) cannot each pass and together lock everyone out.
pub(crate) async fn guard_lockout(
    state: &ServerState,
    auth_at: &Path,
    path: &Path,
    value: Option<&Value>,
) -> ApiResult<Vec<Op>> {
    let lockout = |why: String| {
        Err(ApiError::new(
            ErrorCode::Conflict,
            format!("refused: {why}; nobody could log in"),
        ))
    };
    if path == auth_at {
        if let Some(m) = value.and_then(|v| v.get("current")).and_then(Value::as_str) {
            if state.methods.get(m).is_none() {
                return lockout(format!("{m:?} is not a loaded auth method"));
            }
            return match users_of(state, auth_at, m, 1).await?.first() {
                Some((p, e)) => Ok(vec![unchanged(p.clone(), Some(e))]),
                None => lockout(format!("method {m:?} has no user")),
            };
        }
        return Ok(Vec::new());
    }
    let Some((method, _)) = user_record_of(auth_at, path).filter(|_| value.is_none()) else {
        return Ok(Vec::new());
    };
    let auth = state.store.get(auth_at).await?;
    let current = auth
        .as_ref()
        .and_then(|e| e.value.get("current"))
        .and_then(Value::as_str);
    let mut seen = vec![unchanged(auth_at.clone(), auth.as_ref())];
    if current == Some(method.as_str()) {
        let users = users_of(state, auth_at, &method, 2).await?;
        match users.iter().find(|(p, _)| p != path) {
            Some((p, e)) => seen.push(unchanged(p.clone(), Some(e))),
            None => {
                return lockout(format!(
                    "that is the last user of the current method {method:?}"
                ))
            }
        }
    }
    Ok(seen)
}

/// How often a guarded write checks again after what its guard saw
/// changed meanwhile.
pub(crate) const GUARD_TRIES: usize = 16;

/// Writes `ops` with the lock-out guard's conditions for `checks` (each a
/// path the ops write and its new value, `None` for a deletion); if only
/// those conditions failed (the current method or its users changed
/// meanwhile), checks again. Returns the outcomes of `ops`.
pub(crate) async fn write_guarded(
    state: &ServerState,
    auth_at: &Path,
    checks: &[(&Path, Option<&Value>)],
    ops: Vec<Op>,
) -> ApiResult<Vec<keycard_store::Outcome>> {
    for _ in 0..GUARD_TRIES {
        let mut batch = ops.clone();
        for (path, value) in checks {
            batch.extend(guard_lockout(state, auth_at, path, *value).await?);
        }
        match state.store.write(batch).await {
            Ok(mut out) => {
                out.truncate(ops.len());
                return Ok(out);
            }
            Err(keycard_store::StoreError::Conflict { index, .. }) if index >= ops.len() => {
                continue
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(
        ErrorCode::Conflict,
        "the auth configuration kept changing during this write; try again",
    ))
}

/// The user record `path` names under the auth root `auth_at`: its method
/// and user name, if it is one (`auth_at + (METHOD, "user", NAME)`).
pub(crate) fn user_record_of(auth_at: &Path, path: &Path) -> Option<(String, String)> {
    let rest = path.strip_prefix(auth_at)?;
    match rest.elems() {
        [keycard_proto::Elem::Str(m), kind, keycard_proto::Elem::Str(name)]
            if *kind == keycard_proto::Elem::from("user") =>
        {
            Some((m.to_string(), name.to_string()))
        }
        _ => None,
    }
}
