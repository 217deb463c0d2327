//! Running the server: `reload`.

use keycard_proto::{Msg, Value};

use crate::conn::Responder;
use crate::core;
use crate::error::ApiResult;

/// `reload`: reads the TLS certificate and key again, as SIGHUP does
/// (super-root). Answers `{tls: FINGERPRINT}` (the SHA-256 of the
/// certificate now served), or `{tls: nil}` without TLS.
pub(super) async fn reload(r: &mut Responder) -> ApiResult {
    let state = r.conn().state.clone();
    let caller = r.conn().caller();
    let done = core::admin::reload(&state, &caller).await?;
    let tls = done.tls.map_or(Value::Nil, Value::from);
    r.reply(Msg::new().with("tls", tls)).await;
    Ok(())
}
