//! ACL decisions for a caller: the grants its login bound it to, and
//! whether they allow a mode on a path as the tree is now.

use keycard_auth::acl::{Mode, Modes};
use keycard_proto::{Elem, ErrorCode, Path};

use super::access::{check_cap, DataPath};
use crate::acl::Grants;
use crate::caller::{Caller, Capability};
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

/// Whose ACLs an ACL test asks about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Whose {
    /// The caller's own (what its login bound it to).
    Own,
    /// The caller's domain's ACL of this name (super-root only).
    Acl(String),
    /// What a user's ACLs (its own and its groups') allow: `read_auth`,
    /// and outranking the user. `method`: the record's method (default:
    /// the current one).
    User {
        /// The user's name.
        name: String,
        /// Its record's method.
        method: Option<String>,
    },
}

/// What an ACL test found.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Tested {
    /// Whether the mode is allowed.
    pub access: bool,
    /// The deciding entry, when one matched: its ACL, pattern and modes.
    pub rule: Option<(String, Vec<Elem>, Modes)>,
}

/// What `whose` ACLs allow of `mode` on `path`, as the tree is now.
pub(crate) async fn test(
    state: &ServerState,
    caller: &Caller,
    path: &DataPath,
    mode: Mode,
    whose: Whose,
) -> ApiResult<Tested> {
    // Named ACLs and users are those of the caller's domain.
    let mut acl_base = caller.root.clone();
    let names = match whose {
        Whose::Own => caller.user.as_ref().and_then(|u| {
            acl_base = u.domain.clone();
            u.acls.clone()
        }),
        Whose::Acl(name) => {
            check_cap(state, caller, Capability::SuperRoot)?;
            // An ACL exists while it has an entry: a typo is not an ACL
            // that denies everything.
            let at = acl_base.join(&crate::acl::acl_root()).child(name.as_str());
            let any = keycard_store::ScanOpts::default();
            if state.store.scan_up_to(&at, any, 1).await?.is_empty() {
                return Err(ApiError::new(
                    ErrorCode::NoSuchAcl,
                    format!("there is no ACL {name:?}"),
                ));
            }
            Some(vec![name])
        }
        Whose::User { name, method } => {
            check_cap(state, caller, Capability::ReadAuth)?;
            let method = match method {
                Some(m) => m,
                None => state.auth().current.ok_or_else(|| {
                    ApiError::bad("no current auth method; say which with 'method'")
                })?,
            };
            let at = caller
                .root
                .join(&crate::state::record_path(&method, "user", &name));
            if state.store.get(&at).await?.is_none() {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("no user {name:?} of method {method}"),
                ));
            }
            // What a user may do is its own business, up to those who
            // outrank it.
            let rank = super::rank::Rank::of_user(state, &caller.root, &name).await?;
            super::rank::check(state, caller, rank.as_ref())?;
            crate::acl::bound_acls(state.store.as_ref(), &caller.root, &at).await?
        }
    };
    let Some(names) = names else {
        return Ok(Tested {
            access: true,
            rule: None,
        });
    };
    let path = path.path();
    let grants = grants(state, &acl_base, names).await?;
    let have = crate::acl::existing_depth(state.store.as_ref(), path).await?;
    Ok(match grants.decide(path.elems(), have, mode) {
        Ok(rule) => Tested { access: true, rule },
        Err((acl, d)) => Tested {
            access: false,
            rule: d.rule.map(|(p, m)| (acl, p, m)),
        },
    })
}
