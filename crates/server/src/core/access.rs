//! Who may do what, before any ACL: a live keycard, a login unless the
//! server is open, a capability, and where a data path may lead.

use keycard_proto::{Elem, ErrorCode, Path};

use crate::caller::{Caller, Capability};
use crate::error::{ApiError, ApiResult};
use crate::state::ServerState;

/// Whether `caller` may run data operations: its keycard (if any) is
/// live, and it is logged in unless the server is open.
pub(crate) fn check_login(state: &ServerState, caller: &Caller) -> ApiResult {
    if let Some(u) = &caller.user {
        u.live(state.now_ms())?;
    }
    if !state.is_open() && caller.user.is_none() {
        return Err(ApiError::new(
            ErrorCode::AuthRequired,
            "this server requires a login (action 'auth') first",
        ));
    }
    Ok(())
}

/// Whether `caller` holds `cap` (super-root holds them all; everyone,
/// while the server is open), its keycard live.
pub(crate) fn check_cap(state: &ServerState, caller: &Caller, cap: Capability) -> ApiResult {
    if let Some(u) = &caller.user {
        u.live(state.now_ms())?;
    }
    if state.is_open() {
        return Ok(());
    }
    match &caller.user {
        None => Err(ApiError::new(
            ErrorCode::AuthRequired,
            "this server requires a login (action 'auth') first",
        )),
        Some(u) if u.has(cap) => Ok(()),
        Some(_) => Err(ApiError::new(
            ErrorCode::PermissionDenied,
            format!("this needs the {} capability", cap.name()),
        )),
    }
}

/// Longest full path (the caller's root plus the request's path), in
/// elements and in key bytes.
pub(crate) const MAX_FULL_PATH: usize = keycard_proto::MAX_PATH_LEN;
pub(crate) const MAX_KEY_BYTES: usize = 16 * 1024;

/// Whether a data request may name this path: no element is nil. A nil
/// element starts a reserved subtree — the server's own at the root, a
/// domain's below it — that only management actions reach.
pub(crate) fn is_data_path(rel: &[Elem]) -> bool {
    !rel.iter().any(|e| matches!(e, Elem::Nil))
}

/// A data path, resolved for its caller: nothing reserved in it, under
/// the caller's root, and not too long. Only [`data_path`] makes one, so
/// an operation that takes it needs no second check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DataPath(Path);

impl DataPath {
    /// The full path (the caller's root joined with the request's).
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// The full path, owned.
    pub(crate) fn into_path(self) -> Path {
        self.0
    }
}

/// Resolves the path `rel` a data request names, for `caller`.
pub(crate) fn data_path(caller: &Caller, rel: &Path) -> ApiResult<DataPath> {
    if !is_data_path(rel.elems()) {
        return Err(ApiError::new(
            ErrorCode::ReservedPath,
            "paths with a nil element are reserved; ordinary requests cannot name them",
        ));
    }
    let full = caller.root.join(rel);
    if full.len() > MAX_FULL_PATH || full.to_key().len() > MAX_KEY_BYTES {
        return Err(ApiError::bad(format!(
            "path too long: at most {MAX_FULL_PATH} elements and {MAX_KEY_BYTES} bytes, counting the connection's root"
        )));
    }
    Ok(DataPath(full))
}
