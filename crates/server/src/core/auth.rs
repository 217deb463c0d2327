//! The auth configuration as the core changes it.

use crate::error::ApiResult;
use crate::state::ServerState;

/// Re-reads the auth configuration after a write under the reserved
/// root. When that ends the open era (a method became current), `keep`
/// runs first (the requester that made the method current keeps its
/// streams), then every requester is told: those not logged in lose
/// their open-era access at once.
pub(crate) async fn refresh_auth(state: &ServerState, keep: impl FnOnce()) -> ApiResult {
    let was_open = state.is_open();
    state.refresh_auth().await?;
    if was_open && !state.is_open() {
        keep();
        tracing::info!("auth is now required: the open era's streams end");
        state.bouncer.end_open_era();
    }
    Ok(())
}
