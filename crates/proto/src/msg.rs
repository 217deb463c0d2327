//! Building and reading protocol messages (msgpack maps with str keys).

use crate::path::Path;
use crate::value::Value;

/// A message under construction: a map with str keys, in insertion order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Msg(Vec<(Value, Value)>);

impl Msg {
    /// An empty message.
    pub fn new() -> Msg {
        Msg(Vec::with_capacity(6))
    }

    /// A message with `seq` set.
    pub fn seq(seq: i64) -> Msg {
        Msg::new().with("seq", seq)
    }

    /// Sets `key` to `value` (replacing an earlier entry).
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        let value = value.into();
        if let Some(slot) = self
            .0
            .iter_mut()
            .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
        {
            slot.1 = value;
        } else {
            self.0.push((Value::Str(key.to_owned()), value));
        }
    }

    /// Whether `key` is set.
    pub fn has(&self, key: &str) -> bool {
        self.0
            .iter()
            .any(|(k, _)| matches!(k, Value::Str(s) if s == key))
    }

    /// Builder form of [`Msg::set`].
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Msg {
        self.set(key, value);
        self
    }

    /// Sets `key` to a path in its wire form.
    pub fn with_path(self, key: &str, path: &Path) -> Msg {
        self.with(key, path.to_value())
    }

    /// The finished map.
    pub fn into_value(self) -> Value {
        Value::Map(self.0)
    }
}

impl From<Msg> for Value {
    fn from(m: Msg) -> Value {
        m.into_value()
    }
}

/// Typed accessors for incoming messages.
pub trait MsgExt {
    /// The `seq` field, if present and an integer.
    fn seq(&self) -> Option<i64>;
    /// The `action` field, if present and a str.
    fn action(&self) -> Option<&str>;
    /// The `state` field, if present and a str.
    fn state(&self) -> Option<&str>;
}

impl MsgExt for Value {
    fn seq(&self) -> Option<i64> {
        self.get("seq").and_then(Value::as_i64)
    }
    fn action(&self) -> Option<&str> {
        self.get("action").and_then(Value::as_str)
    }
    fn state(&self) -> Option<&str> {
        self.get("state").and_then(Value::as_str)
    }
}
