//! What the core's unit tests share: a server state on an in-memory store
//! and a manual clock, users written straight into the store, and callers
//! logged in through the bouncer, with no listener and no connection.

use std::sync::Arc;

use keycard_auth::{Argon2Params, MethodSecrets, Registry, SecretKey, TEST};
use keycard_proto::{Msg, Path, Value};
use keycard_store::{Cond, MemOptions, MemStore, Op};

use crate::caller::{Caller, Capability, LoggedIn};
use crate::clock::ManualClock;
use crate::state::{auth_root, record_path, ServerState};

/// A server state on an in-memory store, its time `clock`'s; the audit
/// log goes to `dir`.
pub(crate) async fn state(dir: &tempfile::TempDir, clock: Arc<ManualClock>) -> Arc<ServerState> {
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

/// Writes `value` at `path`, unconditionally.
pub(crate) async fn put(state: &ServerState, path: Path, value: Value) {
    state
        .store
        .write(vec![Op::Put {
            path,
            value,
            cond: Cond::Any,
            idem: false,
        }])
        .await
        .expect("write");
}

/// Makes `_test` the current method: the server requires logins.
pub(crate) async fn close(state: &ServerState) {
    put(
        state,
        auth_root(),
        Msg::new().with("current", TEST).into_value(),
    )
    .await;
    state.refresh_auth().await.expect("auth config");
    assert!(!state.is_open());
}

/// The `_test` record of user `name` under `root`.
pub(crate) fn record(root: &Path, name: &str) -> Path {
    root.join(&record_path(TEST, "user", name))
}

/// Writes a `_test` user `name` under `root` holding `caps`.
pub(crate) async fn user(state: &ServerState, root: &Path, name: &str, caps: &[Capability]) {
    let at = record(root, name);
    put(state, at.clone(), Msg::new().into_value()).await;
    if !caps.is_empty() {
        let names = caps.iter().map(|c| Value::from(c.name())).collect();
        put(
            state,
            at.child("caps"),
            Msg::new().with("caps", Value::Array(names)).into_value(),
        )
        .await;
    }
}

/// User `name` of the domain at `root` (written with `caps` if it is not
/// there yet), logged in with `_test` through the bouncer as requester
/// `requester`: its caller, confined to `root`.
pub(crate) async fn login(
    state: &ServerState,
    root: &Path,
    name: &str,
    caps: &[Capability],
    requester: u64,
) -> Caller {
    if state
        .store
        .get(&record(root, name))
        .await
        .expect("read")
        .is_none()
    {
        user(state, root, name, caps).await;
    }
    let domain = crate::caller::domain_text(root);
    let id = state
        .bouncer
        .begin(TEST, name, &domain, requester, None)
        .expect("begin");
    let card = state
        .bouncer
        .authenticate(id, name, &domain, state.bouncer.lifetime(), None)
        .expect("authenticate");
    let user = LoggedIn {
        method: TEST.into(),
        name: name.into(),
        super_root: caps.contains(&Capability::SuperRoot),
        session_key: None,
        acls: None,
        caps: caps.to_vec(),
        domain: root.clone(),
        record: record(root, name),
        login_at: state.now_ms(),
        keycard: card.id,
        expires_at: card.expires_at,
        ended: None,
    };
    Caller {
        root: root.clone(),
        user: Some(Arc::new(user)),
    }
}
