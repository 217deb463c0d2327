//! Management access to the reserved (nil) root: get/set/delete/enum and
//! get_tree under `(nil, …)`. Paths are given without the leading nil, as
//! DistKV's client sends them. Only super-root callers get here.

use keycard_proto::{Elem, Msg, Path, Value};
use keycard_store::Op;

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
    let conn = r.conn().clone();
    // As get_value: room for the value before it is read.
    let held = conn.reserve(state.config.max_message).await;
    let entry = state.store.get(&path).await?;
    let nchain = opt_usize(msg, "nchain")?.unwrap_or(0);
    r.reply(entry_msg(&state, entry, nchain)).await;
    drop(held);
    Ok(())
}

pub(super) async fn set_internal(msg: &Value, r: &mut Responder) -> ApiResult {
    let path = internal_path(msg, r)?;
    let Some(value) = msg.get("value") else {
        return Err(ApiError::bad("set_internal needs a 'value'"));
    };
    let reply = write_internal(msg, r, path, Some(value.clone())).await?;
    r.reply(reply).await;
    Ok(())
}

pub(super) async fn delete_internal(msg: &Value, r: &mut Responder) -> ApiResult {
    let path = internal_path(msg, r)?;
    let reply = write_internal(msg, r, path, None).await?;
    r.reply(reply).await;
    Ok(())
}

/// Writes one reserved node (`None`: deletes it) under the lock-out guard,
/// then applies it: the auth configuration is read again, ACL edits apply
/// at once.
async fn write_internal(
    msg: &Value,
    r: &Responder,
    path: Path,
    value: Option<Value>,
) -> ApiResult<Msg> {
    let state = r.conn().state.clone();
    let auth_at = r.conn().caller().root.join(&crate::state::auth_root());
    let cond = super::condition(&state, msg)?;
    let reveal = (true, cond == keycard_store::Cond::Any);
    let nchain = opt_usize(msg, "nchain")?.unwrap_or(1);
    let op = super::data::node_op(msg, path.clone(), value.clone(), cond);
    let mut ops = vec![op];
    if value.is_none() && super::auth::user_record_of(&auth_at, &path).is_some() {
        // A user record deleted here goes with its aux nodes, as with
        // auth_delete: no capability or binding outlives it.
        ops.extend(
            crate::core::users::AUX
                .iter()
                .map(|aux| Op::delete(path.child(*aux))),
        );
    }
    let checks = [(&path, value.as_ref())];
    let out = super::auth::write_guarded(&state, &auth_at, &checks, ops).await?;
    let out = out
        .first()
        .ok_or_else(|| ApiError::new(keycard_proto::ErrorCode::Internal, "no outcome"))?;
    let reply = super::data::write_reply(&state, out, value.as_ref(), reveal, nchain);
    super::refresh_auth(&state, Some(r.conn())).await?;
    state.acls.invalidate();
    if path == auth_at && out.changed {
        let session = r.conn().caller();
        super::auth::methods_withdrawn(&state, &session, out.prev.as_ref(), value.as_ref()).await;
    }
    // A user record written here (DistKV's way) is a credential change or
    // a deletion like any other: the user's other keycards end.
    if let (Some((method, name)), true) = (
        super::auth::user_record_of(&auth_at, &path),
        out.changed && out.prev.is_some() && out.prev.as_ref() != value.as_ref(),
    ) {
        let session = r.conn().caller();
        let root = &session.root;
        let by = session.user.as_ref().map(|u| u.qualified());
        match value {
            Some(_) => {
                let keep = session.user.as_ref().map(|u| u.keycard);
                crate::core::users::credential_changed(&state, root, &name, keep, by.as_deref())
                    .await?;
            }
            None => {
                super::auth::record_deleted(&state, root, &name, &method, by.as_deref()).await?;
            }
        }
    }
    Ok(reply)
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
