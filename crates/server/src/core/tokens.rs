//! Token keycards: checking a bearer token against its durable record,
//! what a token may carry, a token session's lifetime, and reaping
//! records whose time has passed.

use std::sync::Arc;

use keycard_auth::bouncer::{Filter, KeycardId, State};
use keycard_proto::{Path, Value};
use keycard_store::{Cond, Op};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::keycards::{durable, durable_path, MAX_LIST};
use crate::caller::Capability;
use crate::error::ApiResult;
use crate::state::ServerState;

/// Bearer tokens start with this.
pub(crate) const TOKEN_PREFIX: &str = "kct_";

/// What a token may carry at most: what its user held when it was
/// issued.
pub(crate) struct Ceiling {
    /// The capabilities (a token record without them, from before
    /// ceilings were kept, carries none).
    pub caps: Vec<Capability>,
    /// The ACLs; `None`: full data access.
    pub acls: Option<Vec<String>>,
}

impl Ceiling {
    pub(crate) fn of_record(v: &Value) -> Ceiling {
        let names = |x: &Value| match x {
            Value::Array(items) => Some(
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        };
        Ceiling {
            caps: v
                .get("caps")
                .and_then(names)
                .unwrap_or_default()
                .iter()
                .filter_map(|n| Capability::parse(n))
                .collect(),
            acls: v.get("acls").and_then(names),
        }
    }
}

/// A token login's verified facts.
pub(crate) struct TokenGrant {
    /// The token's keycard id.
    pub id: KeycardId,
    /// Its user.
    pub user: String,
    /// The method whose user record holds the user's ACL and capabilities.
    pub user_method: String,
    /// When the token expires.
    pub expires_at: u64,
    /// The domain its user belongs to (empty: the server's own).
    pub domain: Path,
    /// The most it carries.
    pub ceiling: Ceiling,
}

/// Checks a bearer token against its durable record. Every way it can be
/// wrong (malformed, unknown, wrong secret, revoked, expired) is the same
/// `None`; the digest comparison is constant-time.
pub(crate) async fn check_token(state: &ServerState, token: &str) -> ApiResult<Option<TokenGrant>> {
    let digest = Sha256::digest(token.as_bytes());
    let id = token_id(token);
    let record = match id {
        Some(id) => state.store.get(&durable_path(id)).await?.map(|e| e.value),
        None => None,
    };
    let stored = record
        .as_ref()
        .and_then(|v| v.get("sha256"))
        .and_then(Value::as_bin)
        .map(<[u8]>::to_vec)
        .unwrap_or_else(|| vec![0xa5; 32]);
    let same: bool = digest.as_slice().ct_eq(&stored).into();
    let (Some(id), Some(v), true) = (id, record, same) else {
        return Ok(None);
    };
    let live = v.get("state").and_then(Value::as_str) == Some(State::Authenticated.name());
    let expires_at = v.get("expires_at").and_then(Value::as_u64).unwrap_or(0);
    if !live || state.now_ms() >= expires_at {
        return Ok(None);
    }
    let (Some(user), Some(user_method)) = (
        v.get("user").and_then(Value::as_str),
        v.get("user_method").and_then(Value::as_str),
    ) else {
        return Ok(None);
    };
    let domain = match v.get("domain") {
        None | Some(Value::Nil) => Path::root(),
        Some(p) => match Path::from_value(p) {
            Ok(p) => p,
            Err(_) => return Ok(None),
        },
    };
    Ok(Some(TokenGrant {
        ceiling: Ceiling::of_record(&v),
        domain,
        id,
        user: user.to_owned(),
        user_method: user_method.to_owned(),
        expires_at,
    }))
}

/// The id of a bearer token shaped as one (`kct_<32 hex>_<64 hex>`);
/// nothing else of what a client sends as a token may be logged.
pub(crate) fn token_id(token: &str) -> Option<KeycardId> {
    let (id, secret) = token.strip_prefix(TOKEN_PREFIX)?.split_once('_')?;
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    KeycardId::parse(id)
}

/// Whether token `id` still grants logins (not revoked, not expired):
/// checked again once a login's keycard carries it as parent, so a
/// revocation in between is not missed.
pub(crate) async fn token_live(state: &ServerState, id: KeycardId) -> ApiResult<bool> {
    let Some(e) = state.store.get(&durable_path(id)).await? else {
        return Ok(false);
    };
    let live = e.value.get("state").and_then(Value::as_str) == Some(State::Authenticated.name());
    let expires_at = e
        .value
        .get("expires_at")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Ok(live && state.now_ms() < expires_at)
}

/// Deletes durable keycards whose time has passed (a revoked token's
/// record stays until then, so it is refused as revoked, not unknown).
pub(crate) async fn reap_durable(state: &ServerState) -> ApiResult<usize> {
    let now = state.now_ms();
    let expired = |v: &Value| v.get("expires_at").and_then(Value::as_u64).unwrap_or(0) <= now;
    // At most MAX_LIST per pass (one write); the next pass takes the rest.
    let gone: Vec<Op> = durable(state, &Filter::default(), MAX_LIST, expired)
        .await?
        .into_iter()
        .filter_map(|(id, _)| KeycardId::parse(&id))
        .map(|id| Op::Delete {
            path: durable_path(id),
            cond: Cond::Any,
        })
        .collect();
    let n = gone.len();
    if n > 0 {
        state.store.write(gone).await?;
    }
    Ok(n)
}

/// Durable keycards (tokens) past their time leave the store, once a
/// minute, until the state is dropped.
pub(crate) fn spawn_reaper(state: &Arc<ServerState>) {
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(state) = weak.upgrade() else { return };
            if let Err(e) = reap_durable(&state).await {
                tracing::warn!(error = %e.text, "reaping expired tokens failed");
            }
        }
    });
}
