//! Running the server: reloading what it reads from files.

use keycard_proto::ErrorCode;

use super::access::check_cap;
use crate::caller::{Caller, Capability};
use crate::error::{ApiError, ApiResult};
use crate::state::ServerState;

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reloaded {
    /// The SHA-256 fingerprint (hex) of the TLS certificate now served;
    /// `None` without TLS.
    pub(crate) tls: Option<String>,
}

/// Reads the TLS certificate and key again (as SIGHUP does); super-root
/// only. A file that does not load is an error naming it, and the
/// certificate in use stays.
pub(crate) async fn reload(state: &ServerState, caller: &Caller) -> ApiResult<Reloaded> {
    check_cap(state, caller, Capability::SuperRoot)?;
    let by = caller.user.as_ref().map(|u| u.name.as_str());
    match state.reload_tls(by).await {
        Ok(tls) => Ok(Reloaded { tls }),
        Err(e) => Err(ApiError::new(
            ErrorCode::Internal,
            format!("reload refused, nothing changed: {e}"),
        )),
    }
}
