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

#[cfg(test)]
mod tests {
    //! The core as plain function calls: no listener, no connection, a
    //! manual clock.

    use std::sync::Arc;
    use std::time::Duration;

    use keycard_auth::{Argon2Params, MethodSecrets, Registry, SecretKey};
    use keycard_proto::{ErrorCode, Path, Value};
    use keycard_store::{Cond, MemOptions, MemStore, Tock};

    use super::{delete, get, set};
    use crate::caller::{Caller, LoggedIn};
    use crate::clock::ManualClock;
    use crate::core::access::data_path;
    use crate::state::ServerState;

    async fn state(dir: &tempfile::TempDir, clock: Arc<ManualClock>) -> Arc<ServerState> {
        let config = crate::config::Config {
            clock: clock.into(),
            ..Default::default()
        };
        let secrets = MethodSecrets {
            mock_key: SecretKey::new([7; 32]),
            scram_iterations: config.scram_iterations,
            argon2: Argon2Params {
                m_kib: config.argon2_m_kib,
                t: config.argon2_t,
                p: config.argon2_p,
            },
            opaque_setup: keycard_auth::new_server_setup(),
        };
        let methods = Registry::builtin(secrets).expect("methods");
        let audit = crate::audit::Audit::open(&dir.path().join("audit.log"), config.clock.clone())
            .await
            .expect("audit log");
        let store = Arc::new(MemStore::new(MemOptions::default()));
        ServerState::new(config, store, methods, audit)
            .await
            .expect("state")
    }

    fn path(s: &str) -> Path {
        Path::parse(s).expect("a path")
    }

    #[tokio::test]
    async fn set_get_delete_for_a_caller_of_an_open_server() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = state(&dir, ManualClock::at(1_000_000)).await;
        let anyone = Caller::default();
        let at = data_path(&anyone, &path("app.x")).expect("a data path");
        let w = set(&s, &anyone, &at, Value::from(1), Cond::Any, false)
            .await
            .expect("set");
        assert!(w.changed);
        assert_eq!(w.prev, None);
        let e = get(&s, &anyone, &at).await.expect("get").expect("a value");
        assert_eq!((e.value, e.tock), (Value::from(1), w.tock));
        // A condition on another tock fails; on the node's own it holds.
        let stale = Cond::TockIs(Tock(w.tock.0 + 1));
        let refused = set(&s, &anyone, &at, Value::from(2), stale, false).await;
        assert_eq!(refused.err().map(|e| e.code), Some(ErrorCode::Conflict));
        let gone = delete(&s, &anyone, &at, Cond::TockIs(w.tock))
            .await
            .expect("delete");
        // A conditional write answers no previous value (DistKV's rule).
        assert_eq!((gone.changed, gone.prev), (true, None));
        assert!(get(&s, &anyone, &at).await.expect("get").is_none());
    }

    #[tokio::test]
    async fn a_caller_is_confined_and_its_keycard_ends_by_the_clock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::at(1_000_000);
        let s = state(&dir, clock.clone()).await;
        // Reserved subtrees are not data paths.
        let reserved = data_path(&Caller::default(), &Path::parse(":n.auth").expect("path"));
        assert_eq!(
            reserved.err().map(|e| e.code),
            Some(ErrorCode::ReservedPath)
        );
        let user = LoggedIn {
            method: "_test".into(),
            name: "ann".into(),
            super_root: false,
            session_key: None,
            acls: None,
            caps: Vec::new(),
            domain: Path::root(),
            record: Path::root(),
            login_at: 1_000_000,
            keycard: keycard_auth::bouncer::KeycardId::parse("00112233445566778899aabbccddeeff")
                .expect("an id"),
            expires_at: 1_000_000 + 60_000,
            ended: None,
        };
        let ann = Caller {
            root: path("app"),
            user: Some(Arc::new(user)),
        };
        let at = data_path(&ann, &path("x")).expect("a data path");
        // Under the caller's root.
        assert_eq!(at.path(), &path("app.x"));
        set(&s, &ann, &at, Value::from("v"), Cond::Any, false)
            .await
            .expect("set while the keycard lives");
        clock.advance(Duration::from_secs(61));
        let late = get(&s, &ann, &at).await;
        assert_eq!(late.err().map(|e| e.code), Some(ErrorCode::KeycardExpired));
    }
}
