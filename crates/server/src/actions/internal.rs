//! Management access to the reserved (nil) root: get/set/delete/enum and
//! get_tree under `(nil, …)`. Paths are given without the leading nil, as
//! DistKV's client sends them. Only super-root callers get here.

use keycard_proto::{Elem, Msg, Path, Value};

use super::data::write_value;
use super::tree::{enumerate_at, get_tree_at};
use super::{entry_msg, flag, opt_usize, path_field, require_super_root};
use crate::conn::Responder;
use crate::error::{ApiError, ApiResult};

/// The reserved path a management request names.
fn internal_path(msg: &Value, r: &Responder) -> ApiResult<Path> {
    let session = require_super_root(r)?;
    let rel = path_field(msg, "path")?;
    Ok(session.root.child(Elem::Nil).join(&rel))
}

pub(super) async fn get_internal(msg: &Value, r: &mut Responder) -> ApiResult {
    let path = internal_path(msg, r)?;
    let state = r.conn().state.clone();
    let entry = state.store.get(&path).await?;
    let nchain = opt_usize(msg, "nchain")?.unwrap_or(0);
    r.reply(entry_msg(&state, entry.as_ref(), nchain)).await;
    Ok(())
}

pub(super) async fn set_internal(msg: &Value, r: &mut Responder) -> ApiResult {
    let path = internal_path(msg, r)?;
    let Some(value) = msg.get("value") else {
        return Err(ApiError::bad("set_internal needs a 'value'"));
    };
    let state = r.conn().state.clone();
    let auth_at = r.conn().session().root.join(&crate::state::auth_root());
    super::auth::guard_lockout(&state, &auth_at, &path, Some(value)).await?;
    let reply = write_value(&state, msg, path, Some(value.clone())).await?;
    state.refresh_auth().await?;
    // ACL edits apply at once.
    state.acls.invalidate();
    r.reply(reply).await;
    Ok(())
}

pub(super) async fn delete_internal(msg: &Value, r: &mut Responder) -> ApiResult {
    let path = internal_path(msg, r)?;
    let state = r.conn().state.clone();
    let auth_at = r.conn().session().root.join(&crate::state::auth_root());
    super::auth::guard_lockout(&state, &auth_at, &path, None).await?;
    let reply = write_value(&state, msg, path, None).await?;
    state.refresh_auth().await?;
    state.acls.invalidate();
    r.reply(reply).await;
    Ok(())
}

pub(super) async fn enum_internal(msg: &Value, r: &mut Responder) -> ApiResult {
    let path = internal_path(msg, r)?;
    let state = r.conn().state.clone();
    let result = enumerate_at(&state, &path, flag(msg, "with_data"), flag(msg, "empty")).await?;
    r.reply(Msg::new().with("result", result)).await;
    Ok(())
}

pub(super) async fn get_tree_internal(msg: &Value, r: &mut Responder) -> ApiResult {
    let path = internal_path(msg, r)?;
    get_tree_at(msg, r, path).await
}
