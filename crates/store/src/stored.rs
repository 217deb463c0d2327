//! How a value is kept by every durable backend: its msgpack encoding,
//! read back under generous limits.

use keycard_proto::{decode_one, encode_into, Limits, Value};

use crate::types::StoreError;

/// Stored values were accepted under the wire limits; decode them with
/// generous ones so a lowered limit never makes old data unreadable.
const STORED_LIMITS: Limits = Limits {
    max_message: 1 << 30,
    max_depth: 128,
    max_items: usize::MAX,
};

/// A stored value's bytes.
pub(crate) fn encode_value(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    encode_into(value, &mut out);
    out
}

/// A stored value: exactly one msgpack value, nothing after it.
pub(crate) fn decode_value(bytes: &[u8]) -> Result<Value, StoreError> {
    match decode_one(bytes, &STORED_LIMITS) {
        Ok(Some((v, n))) if n == bytes.len() => Ok(v),
        Ok(_) => Err(StoreError::Corrupt("truncated stored value".into())),
        Err(e) => Err(StoreError::Corrupt(e.to_string())),
    }
}
