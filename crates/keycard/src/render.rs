//! Turning command-line text into values and values into text.

use keycard_proto::Value;

/// Reads a JSON document as a msgpack value (objects keep their order).
pub fn from_json(text: &str) -> anyhow::Result<Value> {
    let j: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        anyhow::anyhow!("not valid JSON ({e}); without --json the value is stored as a string")
    })?;
    Ok(json_to_value(j))
}

fn json_to_value(j: serde_json::Value) -> Value {
    match j {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i128::from(i))
            } else if let Some(u) = n.as_u64() {
                Value::Int(i128::from(u))
            } else {
                Value::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::Str(s),
        serde_json::Value::Array(a) => Value::Array(a.into_iter().map(json_to_value).collect()),
        serde_json::Value::Object(o) => Value::Map(
            o.into_iter()
                .map(|(k, v)| (Value::Str(k), json_to_value(v)))
                .collect(),
        ),
    }
}

/// Reads hex digits as bytes.
pub fn from_hex(text: &str) -> anyhow::Result<Value> {
    keycard_proto::hex::decode(text.trim())
        .map(Value::Bin)
        .ok_or_else(|| anyhow::anyhow!("not an even number of hex digits: {text:?}"))
}

/// A value for humans: JSON where the value is JSON, Rust-like otherwise
/// (bytes as b"…", extensions as Ext(type, n bytes)).
pub fn show(v: &Value) -> String {
    format!("{v:?}")
}
