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

/// The seal as `seal_status` shows it.
#[derive(Debug)]
pub(crate) struct SealStatus {
    /// The seal key's id.
    pub(crate) seal_key: String,
    /// The data key new seals use, and every one the keyring holds.
    pub(crate) active: u32,
    pub(crate) keys: Vec<u32>,
    /// The last (or running) re-sealing of every record.
    pub(crate) rotation: crate::seal::Rotation,
}

fn the_seal(state: &ServerState) -> ApiResult<&std::sync::Arc<crate::seal::Seal>> {
    state.seal.get().ok_or_else(|| {
        ApiError::new(
            ErrorCode::BadRequest,
            "this server's secrets are not sealed (docs/SEALING.md)",
        )
    })
}

/// The seal's state; `None` when secrets are not sealed. Super-root only.
pub(crate) fn seal_status(state: &ServerState, caller: &Caller) -> ApiResult<Option<SealStatus>> {
    check_cap(state, caller, Capability::SuperRoot)?;
    let Some(seal) = state.seal.get() else {
        return Ok(None);
    };
    let (active, keys) = seal.sealer.data_keys();
    Ok(Some(SealStatus {
        seal_key: seal.sealer.seal_key_id(),
        active,
        keys,
        rotation: seal.rotation(),
    }))
}

/// Wraps the data keys with `key` instead of the seal key in use (super
/// root; the key crosses the connection, so only over TLS or from
/// loopback). From then on only `key` opens the store: the server must be
/// started with it. Returns the new key's id.
pub(crate) async fn seal_rotate_key(
    state: &ServerState,
    caller: &Caller,
    key: crate::seal::SealKey,
    peer: std::net::IpAddr,
) -> ApiResult<String> {
    check_cap(state, caller, Capability::SuperRoot)?;
    if !state.tls_enabled() && !peer.to_canonical().is_loopback() {
        return Err(ApiError::new(
            ErrorCode::AuthMethod,
            "a seal key is not sent over an unencrypted connection from beyond loopback: \
             connect over TLS",
        ));
    }
    let seal = the_seal(state)?;
    let old = seal.sealer.seal_key_id();
    let new = key.id();
    seal.change_keyring(crate::seal::KeyringChange::SealKey(key))
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let by = caller.user.as_ref().map(|u| u.name.as_str());
    tracing::warn!(old = %old, new = %new, "seal key rotated: start the server with the new key from now on");
    state
        .audit
        .server("seal key rotated", &format!("{old} -> {new}"), by)
        .await;
    Ok(new)
}

/// Starts sealing every secret record again under a new data key, in the
/// background (super-root); `seal_status` follows it. Audited when it
/// starts and when it ends.
pub(crate) async fn seal_rotate_data(
    state: &std::sync::Arc<ServerState>,
    caller: &Caller,
) -> ApiResult<()> {
    check_cap(state, caller, Capability::SuperRoot)?;
    let seal = the_seal(state)?;
    let by = caller.user.as_ref().map(|u| u.name.clone());
    let audit = state.audit.clone();
    let ended_by = by.clone();
    seal.start_rotation(state.store.clone(), move |r| {
        Box::pin(async move {
            let (event, detail) = match &r.error {
                None => (
                    "data keys rotated",
                    format!("{} records sealed again in {} passes", r.resealed, r.passes),
                ),
                Some(e) => ("data key rotation failed", e.clone()),
            };
            audit.server(event, &detail, ended_by.as_deref()).await;
        })
    })
    .map_err(|e| ApiError::new(ErrorCode::Conflict, e.to_string()))?;
    state
        .audit
        .server("data key rotation started", "", by.as_deref())
        .await;
    Ok(())
}

/// The store a dump reads: the backend as stored (secret values sealed,
/// the keyring with its wrapped data keys, never the seal key). Super-root
/// only.
pub(crate) fn dump_source(
    state: &ServerState,
    caller: &Caller,
) -> ApiResult<std::sync::Arc<dyn keycard_store::Store>> {
    check_cap(state, caller, Capability::SuperRoot)?;
    Ok(match state.seal.get() {
        Some(seal) => seal.backend.clone(),
        None => state.store.clone(),
    })
}
