//! ACL decisions for a caller: the grants its login bound it to, and
//! whether they allow a mode on a path as the tree is now.

use keycard_auth::acl::Mode;
use keycard_proto::{ErrorCode, Path};

use crate::acl::Grants;
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::ServerState;

/// The ACLs `caller`'s user is bound to, if any (`None`: full data
/// access, as in DistKV).
pub(crate) async fn caller_acl(state: &ServerState, caller: &Caller) -> ApiResult<Option<Grants>> {
    let Some(user) = &caller.user else {
        return Ok(None);
    };
    match &user.acls {
        None => Ok(None),
        Some(names) => Ok(Some(grants(state, &user.domain, names.clone()).await?)),
    }
}

/// The compiled ACLs called `names` of the domain at `base`.
pub(crate) async fn grants(
    state: &ServerState,
    base: &Path,
    names: Vec<String>,
) -> ApiResult<Grants> {
    let mut acls = Vec::with_capacity(names.len());
    for n in names {
        let a = state.acls.get(state.store.as_ref(), base, &n).await?;
        acls.push((n, a));
    }
    Ok(Grants {
        acls,
        skip: base.len(),
    })
}

/// Checks `mode` on `path` against the caller's ACL; returns the ACL for
/// checks further down (tree walks), `None` when the caller has none.
pub(crate) async fn authorize(
    state: &ServerState,
    caller: &Caller,
    path: &Path,
    mode: Mode,
) -> ApiResult<Option<Grants>> {
    let acl = caller_acl(state, caller).await?;
    if let Some(a) = &acl {
        if !allows(state, a, path, mode).await? {
            return Err(refusal(path, &format!("mode '{}'", mode.letter())));
        }
    }
    Ok(acl)
}

/// [`authorize`] for a request that answers the node's value (a write's
/// `prev`, `root`'s value): whether the caller may also read it.
pub(crate) async fn authorize_reading(
    state: &ServerState,
    caller: &Caller,
    path: &Path,
    mode: Mode,
) -> ApiResult<bool> {
    let Some(acl) = caller_acl(state, caller).await? else {
        return Ok(true);
    };
    let have = crate::acl::existing_depth(state.store.as_ref(), path).await?;
    if acl.decide(path.elems(), have, mode).is_err() {
        return Err(refusal(path, &format!("mode '{}'", mode.letter())));
    }
    Ok(acl.decide(path.elems(), have, Mode::Read).is_ok())
}

/// Whether `acl` allows `mode` on `path` (as it exists now).
pub(crate) async fn allows(
    state: &ServerState,
    acl: &Grants,
    path: &Path,
    mode: Mode,
) -> ApiResult<bool> {
    let have = crate::acl::existing_depth(state.store.as_ref(), path).await?;
    Ok(acl.decide(path.elems(), have, mode).is_ok())
}

/// The refusal of a data request asking `what` (`mode 'r'`) on `path`.
/// It names the request, not the level where the ACL refused nor the mode
/// that level lacked: whether passing it needed `x` (an existing level)
/// or `n` (a missing one) would say what exists.
pub(crate) fn refusal(path: &Path, what: &str) -> ApiError {
    ApiError::new(
        ErrorCode::PermissionDenied,
        format!("permission denied: {what} at {path}"),
    )
}
