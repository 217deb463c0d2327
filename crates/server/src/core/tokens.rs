//! Token keycards: issuing one (`token_create`), checking a bearer token
//! against its durable record, what a token may carry, a token session's
//! lifetime, and reaping records whose time has passed.
//!
//! Tokens are durable keycards: the record at `(nil, "keycard", ID)`
//! holds the user, the expiry, the state and the SHA-256 of the bearer
//! token — never the token. A token login mints a connection keycard
//! whose parent is the token, so revoking the token ends every connection
//! using it.

use std::sync::Arc;

use keycard_auth::bouncer::{Filter, KeycardId, State};
use keycard_proto::{hex, ErrorCode, Msg, Path, Value};
use keycard_store::{Cond, Op};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::access::check_cap;
use super::keycards::{durable, durable_path, MAX_LIST, TOKEN};
use super::rank::{self, Rank};
use crate::caller::{Caller, Capability};
use crate::error::{ApiError, ApiResult};
use crate::state::{record_path, ServerState};

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
            // One node at a time, on a store nodes share.
            match super::cluster::lease(&state, "tokens", 120_000).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e.text, "the token reaper's lease could not be read");
                    continue;
                }
            }
            if let Err(e) = reap_durable(&state).await {
                tracing::warn!(error = %e.text, "reaping expired tokens failed");
            }
        }
    });
}

/// Refuses a caller that may not issue tokens: it needs
/// `manage_keycards`, as one of the server's own users (tokens live in
/// the server's reserved root), logged in with a credential (a token it
/// minted would outlive its own token and that token's revocation) other
/// than a client certificate (likewise).
/// Checked before the request's fields are read.
pub(crate) fn check_issuer(state: &ServerState, caller: &Caller) -> ApiResult {
    check_cap(state, caller, Capability::ManageKeycards)?;
    if caller.user.as_ref().is_some_and(|u| !u.domain.is_empty()) {
        return Err(ApiError::new(
            ErrorCode::PermissionDenied,
            "tokens are issued by the server's own keycard managers, not a domain's",
        ));
    }
    if caller.user.as_ref().is_some_and(|u| u.method == TOKEN) {
        return Err(ApiError::new(
            ErrorCode::PermissionDenied,
            "a token's session cannot issue tokens; log in with a credential",
        ));
    }
    // Nor a client certificate's: the token would outlive the
    // certificate's revocation, which only a new check at a login sees.
    let by_cert = caller
        .user
        .as_ref()
        .is_some_and(|u| keycard_auth::method_info(&u.method).is_some_and(|i| i.client_cert));
    if by_cert {
        return Err(ApiError::new(
            ErrorCode::PermissionDenied,
            "a client certificate's session cannot issue tokens (they would outlive the \
             certificate's revocation); log in with a password method",
        ));
    }
    Ok(())
}

/// A token's lifetime in seconds: `asked`, or the keycards' duration;
/// 1 ..= `keycards.max_token_ttl`.
pub(crate) fn token_ttl(state: &ServerState, asked: Option<u64>) -> ApiResult<u64> {
    let max_ttl = state.config.keycards.max_token_ttl;
    let ttl = asked.unwrap_or(state.config.keycards.duration);
    if ttl == 0 || ttl > max_ttl {
        return Err(ApiError::bad(format!(
            "'ttl' must be 1..={max_ttl} seconds (keycards.max_token_ttl)"
        )));
    }
    Ok(ttl)
}

/// Longest label a token may carry, in bytes.
pub(crate) const MAX_LABEL: usize = 200;

/// What `token_create` asks for.
#[derive(Clone, Debug, Default)]
pub(crate) struct NewToken {
    /// The user the token logs in as (under the caller's root).
    pub user: String,
    /// The method of the user's record (default: the current, accepted,
    /// then any method with a record of it).
    pub method: Option<String>,
    /// Its lifetime in seconds (default: the keycards' duration).
    pub ttl: Option<u64>,
    /// A label for people (at most [`MAX_LABEL`] bytes).
    pub label: Option<String>,
}

/// A token just issued: the bearer token is here and nowhere else.
pub(crate) struct Issued {
    /// The bearer token.
    pub token: Zeroizing<String>,
    /// Its keycard id.
    pub id: KeycardId,
    /// Its user.
    pub user: String,
    /// When it expires (Unix ms).
    pub expires_at: u64,
}

/// The method under which `user` has a user record: `method` if given,
/// else the current method, the accepted ones, then any.
async fn user_method(
    state: &ServerState,
    root: &Path,
    user: &str,
    method: Option<&str>,
) -> ApiResult<String> {
    let cfg = state.auth();
    let mut order: Vec<String> = match method {
        Some(m) => vec![m.to_owned()],
        None => cfg
            .current
            .iter()
            .chain(cfg.accept.iter())
            .cloned()
            .chain(state.methods.names().map(str::to_owned))
            .collect(),
    };
    let mut seen = std::collections::HashSet::new();
    order.retain(|m| seen.insert(m.clone()));
    for m in order {
        if m == TOKEN {
            continue;
        }
        if state
            .store
            .get(&root.join(&record_path(&m, "user", user)))
            .await?
            .is_some()
        {
            return Ok(m);
        }
    }
    Err(ApiError::new(
        ErrorCode::NotFound,
        format!("no user {user:?} to issue a token for"),
    ))
}

/// Issues a token for `req.user`. Only a caller who outranks the user may
/// mint one, and the token never carries more than the user holds now
/// (its ceiling), whatever the user is granted later. The server keeps
/// the token's SHA-256.
pub(crate) async fn create(
    state: &ServerState,
    caller: &Caller,
    req: NewToken,
) -> ApiResult<Issued> {
    check_issuer(state, caller)?;
    let ttl = token_ttl(state, req.ttl)?;
    if req.label.as_ref().is_some_and(|l| l.len() > MAX_LABEL) {
        return Err(ApiError::bad(
            "'label' must be a string of at most 200 bytes",
        ));
    }
    let user = req.user;
    let user_method = user_method(state, &caller.root, &user, req.method.as_deref()).await?;
    let rank = Rank::of_user(state, &caller.root, &user).await?;
    rank::check(state, caller, rank.as_ref())?;
    let (ceiling_caps, ceiling_acls) = rank.as_ref().map_or(
        (Value::Array(Vec::new()), Value::Array(Vec::new())),
        Rank::to_fields,
    );
    let id = KeycardId::random();
    let mut secret = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(secret.as_mut());
    let token = Zeroizing::new(format!(
        "{TOKEN_PREFIX}{id}_{}",
        hex::encode(secret.as_ref())
    ));
    let digest = Sha256::digest(token.as_bytes());
    let now = state.now_ms();
    let expires_at = now.saturating_add(ttl.saturating_mul(1000));
    let by = caller.user.as_ref().map(|u| u.qualified());
    let record = Msg::new()
        .with("domain", caller.root.to_value())
        .with("method", TOKEN)
        .with("user", user.as_str())
        .with("user_method", user_method.as_str())
        .with("state", State::Authenticated.name())
        .with("issued_at", now)
        .with("expires_at", expires_at)
        .with("sha256", Value::Bin(digest.to_vec()))
        .with("caps", ceiling_caps)
        .with("acls", ceiling_acls)
        .with("label", Value::from(req.label))
        .with("by", Value::from(by.clone()))
        .into_value();
    state
        .store
        .write(vec![Op::Put {
            path: durable_path(id),
            value: record,
            cond: Cond::Absent,
            idem: false,
        }])
        .await?;
    tracing::info!(target: "keycard::audit", keycard = %id, user = ?user, by = by.as_deref().unwrap_or(""), "token created");
    Ok(Issued {
        token,
        id,
        user,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    //! Issuing and checking tokens as plain calls, on a manual clock.

    use std::sync::Arc;
    use std::time::Duration;

    use keycard_proto::{ErrorCode, Path};

    use super::{check_token, create, reap_durable, token_live, NewToken};
    use crate::caller::{Caller, Capability};
    use crate::clock::ManualClock;
    use crate::core::keycards::{list, Card, ListQuery, TOKEN};
    use crate::core::testkit::{close, login, state, user};

    fn new(user: &str, ttl: u64) -> NewToken {
        NewToken {
            user: user.into(),
            ttl: Some(ttl),
            ..NewToken::default()
        }
    }

    fn code<T>(r: crate::error::ApiResult<T>) -> Option<ErrorCode> {
        r.err().map(|e| e.code)
    }

    #[tokio::test]
    async fn a_token_logs_in_until_its_time_passes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::at(1_000_000);
        let s = state(&dir, clock.clone()).await;
        close(&s).await;
        let root = Path::root();
        let boss = login(&s, &root, "boss", &[Capability::SuperRoot], 1).await;
        user(&s, &root, "carl", &[Capability::ReadAuth]).await;
        let issued = create(&s, &boss, new("carl", 60)).await.expect("token");
        assert_eq!(issued.expires_at, 1_000_000 + 60_000);
        let grant = check_token(&s, &issued.token)
            .await
            .expect("check")
            .expect("a live token");
        assert_eq!((grant.id, grant.user.as_str()), (issued.id, "carl"));
        // Its ceiling is what the user holds now.
        assert_eq!(grant.ceiling.caps, vec![Capability::ReadAuth]);
        // A wrong secret is no token.
        let mut wrong = issued.token.to_string();
        wrong.pop();
        wrong.push('0');
        if wrong != *issued.token {
            assert!(check_token(&s, &wrong).await.expect("check").is_none());
        }
        clock.advance(Duration::from_secs(61));
        assert!(check_token(&s, &issued.token)
            .await
            .expect("check")
            .is_none());
        assert!(!token_live(&s, issued.id).await.expect("live"));
        // Listed as expired until reaped.
        let boss = login(&s, &root, "boss", &[Capability::SuperRoot], 2).await;
        let cards = list(
            &s,
            &boss,
            ListQuery {
                limit: 10,
                ..ListQuery::default()
            },
        )
        .await
        .expect("list");
        assert!(cards
            .iter()
            .any(|c| matches!(c, Card::Durable { expired: true, .. })));
        assert_eq!(reap_durable(&s).await.expect("reap"), 1);
    }

    #[tokio::test]
    async fn who_may_not_issue_a_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = state(&dir, ManualClock::at(1_000_000)).await;
        close(&s).await;
        let root = Path::root();
        user(&s, &root, "carl", &[]).await;
        // No capability.
        let plain = login(&s, &root, "pia", &[], 1).await;
        assert_eq!(
            code(create(&s, &plain, new("carl", 60)).await),
            Some(ErrorCode::PermissionDenied)
        );
        // A keycard manager that does not outrank the user.
        let keeper = login(&s, &root, "keeper", &[Capability::ManageKeycards], 2).await;
        user(&s, &root, "boss", &[Capability::SuperRoot]).await;
        assert_eq!(
            code(create(&s, &keeper, new("boss", 60)).await),
            Some(ErrorCode::PermissionDenied)
        );
        assert!(create(&s, &keeper, new("carl", 60)).await.is_ok());
        // A domain's keycard manager.
        let acme = Path::parse("org.acme").expect("path");
        let dom = login(&s, &acme, "dora", &[Capability::SuperRoot], 3).await;
        assert_eq!(
            code(create(&s, &dom, new("carl", 60)).await),
            Some(ErrorCode::PermissionDenied)
        );
        // A token's own session.
        let mut as_token = (**keeper.user.as_ref().expect("logged in")).clone();
        as_token.method = TOKEN.into();
        let token_session = Caller {
            root: root.clone(),
            user: Some(Arc::new(as_token)),
        };
        assert_eq!(
            code(create(&s, &token_session, new("carl", 60)).await),
            Some(ErrorCode::PermissionDenied)
        );
        // Its fields: a lifetime within bounds, a user that exists.
        assert_eq!(
            code(create(&s, &keeper, new("carl", 0)).await),
            Some(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(create(&s, &keeper, new("nobody", 60)).await),
            Some(ErrorCode::NotFound)
        );
    }
}
