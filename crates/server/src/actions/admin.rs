//! Running the server: `reload`, the seal (`seal_status`, `seal_rotate`).

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

/// `seal_status`: `{sealed: false}`, or `{sealed: true, seal_key: ID,
/// active: N, keys: [N…], rotation: {running, seen, resealed, passes,
/// error?}}` (super-root).
pub(super) async fn seal_status(r: &mut Responder) -> ApiResult {
    let state = r.conn().state.clone();
    let caller = r.conn().caller();
    let msg = match core::admin::seal_status(&state, &caller)? {
        None => Msg::new().with("sealed", false),
        Some(s) => {
            let mut rotation = Msg::new()
                .with("running", s.rotation.running)
                .with("seen", s.rotation.seen)
                .with("resealed", s.rotation.resealed)
                .with("passes", s.rotation.passes);
            if let Some(e) = &s.rotation.error {
                rotation = rotation.with("error", e.as_str());
            }
            Msg::new()
                .with("sealed", true)
                .with("seal_key", s.seal_key)
                .with("active", u64::from(s.active))
                .with(
                    "keys",
                    Value::Array(s.keys.iter().map(|k| Value::from(u64::from(*k))).collect()),
                )
                .with("rotation", rotation.into_value())
        }
    };
    r.reply(msg).await;
    Ok(())
}

/// `seal_rotate {key: BYTES}`: wraps the data keys with this seal key
/// (32 bytes; over TLS or from loopback only) → `{seal_key: ID}`.
/// `seal_rotate {data: true}`: seals every record again under a new data
/// key in the background → `{started: true}` (`seal_status` follows it).
/// Super-root.
pub(super) async fn seal_rotate(msg: &Value, r: &mut Responder) -> ApiResult {
    let state = r.conn().state.clone();
    let caller = r.conn().caller();
    let peer = r.conn().peer.ip();
    match (msg.get("key"), msg.get("data")) {
        (Some(Value::Bin(k)), None) => {
            let key = crate::seal::SealKey::parse(k).map_err(crate::error::ApiError::bad)?;
            let id = core::admin::seal_rotate_key(&state, &caller, key, peer).await?;
            r.reply(Msg::new().with("seal_key", id)).await;
        }
        (None, Some(Value::Bool(true))) => {
            core::admin::seal_rotate_data(&state, &caller).await?;
            r.reply(Msg::new().with("started", true)).await;
        }
        _ => {
            return Err(crate::error::ApiError::bad(
                "seal_rotate takes 'key' (the new seal key, 32 bytes) or 'data: true'",
            ))
        }
    }
    Ok(())
}

/// Nodes per page the store hands a dump.
const DUMP_PAGE: usize = 512;
/// About how many bytes of values one `dump` stream item carries.
const DUMP_ITEM_BYTES: usize = 256 * 1024;

/// `dump`: a consistent snapshot of the whole tree (super-root), as a
/// stream: items `{entries: [[PATH, VALUE, TOCK], …]}` in key order, then
/// `{done: true, tock: T, count: N}` (the snapshot's tock and how many
/// nodes). Secret values are as stored — sealed when the store is —
/// with the keyring; the seal key is never in it.
pub(super) async fn dump(r: &mut Responder) -> ApiResult {
    let state = r.conn().state.clone();
    let caller = r.conn().caller();
    let store = core::admin::dump_source(&state, &caller)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let exporting = tokio::spawn(async move { store.export(DUMP_PAGE, tx).await });
    let by = caller.user.as_ref().map(|u| u.qualified());
    state.audit.server("dump started", "", by.as_deref()).await;
    r.start().await;
    let mut count = 0u64;
    while let Some(batch) = rx.recv().await {
        count += batch.len() as u64;
        // Items stay small whatever the values' sizes.
        let mut entries = Vec::new();
        let mut bytes = 0;
        for (p, e) in batch {
            bytes += keycard_store::value_weight(&e.value) + p.to_key().len();
            entries.push(Value::Array(vec![
                p.to_value(),
                e.value,
                Value::from(e.tock.0),
            ]));
            if bytes >= DUMP_ITEM_BYTES {
                let full = std::mem::take(&mut entries);
                r.item(Msg::new().with("entries", Value::Array(full))).await;
                bytes = 0;
            }
        }
        if !entries.is_empty() {
            r.item(Msg::new().with("entries", Value::Array(entries)))
                .await;
        }
    }
    let tock = exporting.await.map_err(|e| {
        crate::error::ApiError::new(keycard_proto::ErrorCode::Internal, e.to_string())
    })??;
    r.item(
        Msg::new()
            .with("done", true)
            .with("tock", tock.0)
            .with("count", count),
    )
    .await;
    Ok(())
}
