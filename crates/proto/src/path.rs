//! Paths: their elements, wire form, order-preserving key form and text form.

use std::cmp::Ordering;
use std::fmt;

use crate::codec::{decode_one, encode_ext, encode_into, Limits};
use crate::value::Value;

/// msgpack extension type of DistKV's `Path`: the payload is the elements
/// packed one after another (a msgpack object stream, not one array).
pub const PATH_EXT: i8 = 3;

/// One path element: a msgpack scalar.
///
/// Elements of different types never compare equal (`1`, `1.0` and `true`
/// name three different nodes). Order: nil < false < true < ints < floats <
/// strs < bytes; within a type, the natural order (floats by IEEE total
/// order, strs and bytes bytewise).
#[derive(Clone, Debug)]
pub enum Elem {
    /// nil. As a first element it names the reserved root.
    Nil,
    /// A bool.
    Bool(bool),
    /// An int in `[-2^63, 2^127)`.
    Int(i128),
    /// A float (an f32 on the wire becomes the same f64).
    Float(f64),
    /// A str.
    Str(String),
    /// A bin.
    Bin(Vec<u8>),
}

/// Why a value is not a path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Neither a Path extension nor an array.
    #[error("a path must be an array or a Path extension (type 3)")]
    NotAPath,
    /// An element is a container or an extension.
    #[error("path element {0} is not a scalar (nil, bool, int, float, str or bytes)")]
    BadElement(usize),
    /// The Path extension's payload is not a sequence of msgpack values.
    #[error("malformed Path extension payload")]
    BadPayload,
    /// A stored key that does not decode.
    #[error("malformed path key")]
    BadKey,
    /// The text form does not parse.
    #[error("bad path syntax at byte {at}: {why}")]
    Syntax {
        /// Byte offset in the text.
        at: usize,
        /// What was wrong.
        why: &'static str,
    },
    /// More elements than allowed.
    #[error("path longer than {0} elements")]
    TooLong(usize),
}

/// Longest path accepted from the wire.
pub const MAX_PATH_LEN: usize = 256;

impl Elem {
    fn rank(&self) -> u8 {
        match self {
            Elem::Nil => TAG_NIL,
            Elem::Bool(false) => TAG_FALSE,
            Elem::Bool(true) => TAG_TRUE,
            Elem::Int(_) => TAG_INT,
            Elem::Float(_) => TAG_FLOAT,
            Elem::Str(_) => TAG_STR,
            Elem::Bin(_) => TAG_BIN,
        }
    }

    /// The element as a msgpack value.
    pub fn to_value(&self) -> Value {
        match self {
            Elem::Nil => Value::Nil,
            Elem::Bool(b) => Value::Bool(*b),
            Elem::Int(i) => Value::Int(*i),
            Elem::Float(f) => Value::F64(*f),
            Elem::Str(s) => Value::Str(s.clone()),
            Elem::Bin(b) => Value::Bin(b.clone()),
        }
    }

    /// The element for a msgpack scalar, or `None` for containers and
    /// extensions.
    pub fn from_value(v: &Value) -> Option<Elem> {
        Some(match v {
            Value::Nil => Elem::Nil,
            Value::Bool(b) => Elem::Bool(*b),
            Value::Int(i) => Elem::Int(*i),
            Value::F32(f) => Elem::Float(f64::from(*f)),
            Value::F64(f) => Elem::Float(*f),
            Value::Str(s) => Elem::Str(s.clone()),
            Value::Bin(b) => Elem::Bin(b.clone()),
            _ => return None,
        })
    }
}

impl PartialEq for Elem {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Elem {}

impl PartialOrd for Elem {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Elem {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Elem::Int(a), Elem::Int(b)) => a.cmp(b),
            (Elem::Float(a), Elem::Float(b)) => a.total_cmp(b),
            (Elem::Str(a), Elem::Str(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Elem::Bin(a), Elem::Bin(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl std::hash::Hash for Elem {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Consistent with `Eq` (`cmp`): floats are equal iff their bits are.
        self.rank().hash(state);
        match self {
            Elem::Nil | Elem::Bool(_) => {}
            Elem::Int(i) => i.hash(state),
            Elem::Float(f) => f.to_bits().hash(state),
            Elem::Str(s) => s.hash(state),
            Elem::Bin(b) => b.hash(state),
        }
    }
}

impl From<&str> for Elem {
    fn from(s: &str) -> Self {
        Elem::Str(s.to_owned())
    }
}
impl From<String> for Elem {
    fn from(s: String) -> Self {
        Elem::Str(s)
    }
}
impl From<i64> for Elem {
    fn from(i: i64) -> Self {
        Elem::Int(i128::from(i))
    }
}

const TAG_NIL: u8 = 0x01;
const TAG_FALSE: u8 = 0x02;
const TAG_TRUE: u8 = 0x03;
const TAG_INT: u8 = 0x04;
const TAG_FLOAT: u8 = 0x05;
const TAG_STR: u8 = 0x06;
const TAG_BIN: u8 = 0x07;

/// A byte greater than every element tag: `key(p) ++ [KEY_END]` sorts after
/// every key in the subtree of `p` and before `p`'s next sibling.
pub const KEY_END: u8 = 0xff;

impl Elem {
    /// Appends this element's self-delimiting, order-preserving key bytes.
    fn write_key(&self, out: &mut Vec<u8>) {
        out.push(self.rank());
        match self {
            Elem::Nil | Elem::Bool(_) => {}
            Elem::Int(i) => out.extend_from_slice(&((*i as u128) ^ (1u128 << 127)).to_be_bytes()),
            Elem::Float(f) => {
                let bits = f.to_bits();
                let ordered = if bits >> 63 == 1 {
                    !bits
                } else {
                    bits | (1 << 63)
                };
                out.extend_from_slice(&ordered.to_be_bytes());
            }
            Elem::Str(s) => escape_into(s.as_bytes(), out),
            Elem::Bin(b) => escape_into(b, out),
        }
    }

    fn read_key(key: &[u8], pos: &mut usize) -> Result<Elem, PathError> {
        let tag = *key.get(*pos).ok_or(PathError::BadKey)?;
        *pos += 1;
        let mut fixed = |n: usize| -> Result<&[u8], PathError> {
            let s = key.get(*pos..*pos + n).ok_or(PathError::BadKey)?;
            *pos += n;
            Ok(s)
        };
        Ok(match tag {
            TAG_NIL => Elem::Nil,
            TAG_FALSE => Elem::Bool(false),
            TAG_TRUE => Elem::Bool(true),
            TAG_INT => {
                let mut b = [0u8; 16];
                b.copy_from_slice(fixed(16)?);
                Elem::Int((u128::from_be_bytes(b) ^ (1u128 << 127)) as i128)
            }
            TAG_FLOAT => {
                let mut b = [0u8; 8];
                b.copy_from_slice(fixed(8)?);
                let o = u64::from_be_bytes(b);
                let bits = if o >> 63 == 1 { o & !(1 << 63) } else { !o };
                Elem::Float(f64::from_bits(bits))
            }
            TAG_STR => {
                let raw = unescape(key, pos)?;
                Elem::Str(String::from_utf8(raw).map_err(|_| PathError::BadKey)?)
            }
            TAG_BIN => Elem::Bin(unescape(key, pos)?),
            _ => return Err(PathError::BadKey),
        })
    }
}

// Byte strings: 0x00 becomes 0x00 0xff; the end is 0x00 0x00. So a string
// sorts before every longer string it is a prefix of, and no element's key
// is a prefix of another element's key.
fn escape_into(raw: &[u8], out: &mut Vec<u8>) {
    for &b in raw {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

fn unescape(key: &[u8], pos: &mut usize) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::new();
    loop {
        let b = *key.get(*pos).ok_or(PathError::BadKey)?;
        *pos += 1;
        if b != 0 {
            out.push(b);
            continue;
        }
        match key.get(*pos) {
            Some(0) => {
                *pos += 1;
                return Ok(out);
            }
            Some(0xff) => {
                *pos += 1;
                out.push(0);
            }
            _ => return Err(PathError::BadKey),
        }
    }
}

/// A path: a sequence of scalar elements naming a node of the tree.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Path(Vec<Elem>);

impl Path {
    /// The empty path (the root).
    pub fn root() -> Path {
        Path(Vec::new())
    }

    /// A path of these elements.
    pub fn new(elems: Vec<Elem>) -> Path {
        Path(elems)
    }

    /// The elements.
    pub fn elems(&self) -> &[Elem] {
        &self.0
    }

    /// How many elements.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether this is the root.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the first element is nil: the reserved root holding config,
    /// auth records and ACLs.
    pub fn is_reserved(&self) -> bool {
        matches!(self.0.first(), Some(Elem::Nil))
    }

    /// This path with `e` appended.
    pub fn child(&self, e: impl Into<Elem>) -> Path {
        let mut v = self.0.clone();
        v.push(e.into());
        Path(v)
    }

    /// Appends `e`.
    pub fn push(&mut self, e: impl Into<Elem>) {
        self.0.push(e.into());
    }

    /// This path followed by `rest`.
    pub fn join(&self, rest: &Path) -> Path {
        let mut v = self.0.clone();
        v.extend(rest.0.iter().cloned());
        Path(v)
    }

    /// Whether `prefix` is a (not necessarily proper) prefix of this path.
    pub fn starts_with(&self, prefix: &Path) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// The rest of this path after `prefix`, if it starts with it.
    pub fn strip_prefix(&self, prefix: &Path) -> Option<Path> {
        self.0
            .strip_prefix(prefix.0.as_slice())
            .map(|r| Path(r.to_vec()))
    }

    /// The path without its last element (the root's parent is the root).
    pub fn parent(&self) -> Path {
        let n = self.0.len().saturating_sub(1);
        Path(self.0[..n].to_vec())
    }

    /// The order-preserving key: `a < b` as paths iff `a.to_key() <
    /// b.to_key()` bytewise, and `a` is a prefix of `b` iff `a.to_key()` is a
    /// prefix of `b.to_key()`. So a subtree is one contiguous key range.
    pub fn to_key(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() * 12);
        for e in &self.0 {
            e.write_key(&mut out);
        }
        out
    }

    /// The path whose key this is.
    pub fn from_key(key: &[u8]) -> Result<Path, PathError> {
        let mut pos = 0;
        let mut elems = Vec::new();
        while pos < key.len() {
            elems.push(Elem::read_key(key, &mut pos)?);
        }
        Ok(Path(elems))
    }

    /// DistKV's wire form: a Path extension (type 3).
    pub fn to_value(&self) -> Value {
        let mut payload = Vec::new();
        for e in &self.0 {
            encode_into(&e.to_value(), &mut payload);
        }
        Value::Ext(PATH_EXT, payload)
    }

    /// Appends the wire form to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut payload = Vec::new();
        for e in &self.0 {
            encode_into(&e.to_value(), &mut payload);
        }
        encode_ext(PATH_EXT, &payload, out);
    }

    /// The elements as a plain msgpack array.
    pub fn to_array(&self) -> Value {
        Value::Array(self.0.iter().map(Elem::to_value).collect())
    }

    /// Reads a path from the wire: a Path extension or a plain array.
    pub fn from_value(v: &Value) -> Result<Path, PathError> {
        let elems = match v {
            Value::Ext(PATH_EXT, payload) => {
                let limits = Limits {
                    max_message: payload.len().max(1),
                    max_depth: 2,
                    max_items: usize::MAX,
                };
                let mut elems = Vec::new();
                let mut rest = payload.as_slice();
                while !rest.is_empty() {
                    let (item, n) = decode_one(rest, &limits)
                        .map_err(|_| PathError::BadPayload)?
                        .ok_or(PathError::BadPayload)?;
                    let e = Elem::from_value(&item).ok_or(PathError::BadElement(elems.len()))?;
                    elems.push(e);
                    rest = &rest[n..];
                    if elems.len() > MAX_PATH_LEN {
                        return Err(PathError::TooLong(MAX_PATH_LEN));
                    }
                }
                elems
            }
            Value::Array(items) => {
                if items.len() > MAX_PATH_LEN {
                    return Err(PathError::TooLong(MAX_PATH_LEN));
                }
                items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| Elem::from_value(x).ok_or(PathError::BadElement(i)))
                    .collect::<Result<_, _>>()?
            }
            _ => return Err(PathError::NotAPath),
        };
        Ok(Path(elems))
    }

    /// Parses the text form (see [`Path`]'s `Display`).
    pub fn parse(text: &str) -> Result<Path, PathError> {
        crate::path::text::parse(text)
    }
}

impl From<Vec<Elem>> for Path {
    fn from(v: Vec<Elem>) -> Self {
        Path(v)
    }
}

/// The text form, DistKV's (moat.util.Path) syntax: elements joined by `.`;
/// in a str element `::`, `:.` and `:_` stand for `:`, `.` and space; other
/// elements start with a colon: `:n` nil, `:t` true, `:f` false, `:e` the
/// empty str, `:123` / `:-5` / `:xff` / `:b101` ints, `:1:.5` a float,
/// `:vabc` ASCII bytes, `:y00ff` hex bytes; `:` alone is the empty path.
/// Example: `:n.auth` is `(nil, "auth")`, `a.b:3` is `("a", "b", 3)`.
impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&text::format(self))
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "P({})", text::format(self))
    }
}

mod text {
    use super::{Elem, Path, PathError};

    fn escape(s: &str, out: &mut String) {
        for c in s.chars() {
            match c {
                ':' => out.push_str("::"),
                '.' => out.push_str(":."),
                ' ' => out.push_str(":_"),
                c => out.push(c),
            }
        }
    }

    pub(super) fn format(p: &Path) -> String {
        let mut out = String::new();
        if p.0.is_empty() {
            return ":".into();
        }
        for e in &p.0 {
            match e {
                Elem::Str(s) if !s.is_empty() => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    escape(s, &mut out);
                }
                Elem::Str(_) => out.push_str(":e"),
                Elem::Nil => out.push_str(":n"),
                Elem::Bool(true) => out.push_str(":t"),
                Elem::Bool(false) => out.push_str(":f"),
                Elem::Int(i) => {
                    out.push(':');
                    out.push_str(&i.to_string());
                }
                Elem::Float(x) => {
                    out.push(':');
                    escape(&format_float(*x), &mut out);
                }
                Elem::Bin(b) => {
                    if b.iter().all(|c| (32..127).contains(c)) {
                        out.push_str(":v");
                        // Printable ASCII is valid UTF-8.
                        escape(&String::from_utf8_lossy(b), &mut out);
                    } else {
                        out.push_str(":y");
                        out.push_str(&crate::hex::encode(b));
                    }
                }
            }
        }
        out
    }

    /// Python's float repr for the common cases: always a `.` or an exponent,
    /// so a float never reads back as an int.
    fn format_float(x: f64) -> String {
        if x.is_nan() {
            "nan".into()
        } else if x.is_infinite() {
            if x > 0.0 { "inf" } else { "-inf" }.into()
        } else {
            format!("{x:?}")
        }
    }

    enum Kind {
        Str,
        Eval,
        Hex,
        Binary,
        Ascii,
        HexBytes,
    }

    pub(super) fn parse(text: &str) -> Result<Path, PathError> {
        let err = |at: usize, why: &'static str| PathError::Syntax { at, why };
        if text.is_empty() {
            return Err(err(
                0,
                "the empty string is not a path (use ':' for the root)",
            ));
        }
        if text == ":" {
            return Ok(Path::root());
        }
        let bytes = text.as_bytes();
        let mut elems = Vec::new();
        // The element being read: its kind and its unescaped text.
        let mut cur: Option<(Kind, String, usize)> = None;
        let mut i = 0;
        let finish = |cur: Option<(Kind, String, usize)>,
                      elems: &mut Vec<Elem>|
         -> Result<(), PathError> {
            let Some((kind, s, at)) = cur else {
                return Ok(());
            };
            let e = match kind {
                Kind::Str => Elem::Str(s),
                Kind::Hex => Elem::Int(parse_radix(&s, 16).ok_or(err(at, "bad hex integer"))?),
                Kind::Binary => Elem::Int(parse_radix(&s, 2).ok_or(err(at, "bad binary integer"))?),
                Kind::Ascii => Elem::Bin(s.into_bytes()),
                Kind::HexBytes => {
                    Elem::Bin(crate::hex::decode(&s).ok_or(err(at, "bad hex bytes"))?)
                }
                Kind::Eval => eval(&s).ok_or(err(at, "not a number"))?,
            };
            elems.push(e);
            Ok(())
        };
        // After a closed element a '.' or a ':' must follow.
        let mut need_sep = false;
        while i < bytes.len() {
            let c = bytes[i];
            match c {
                b'.' => {
                    let empty = match &cur {
                        None => !need_sep,
                        Some((Kind::Str, s, _)) => s.is_empty(),
                        Some(_) => false,
                    };
                    if empty {
                        return Err(err(i, "empty element (use :e for an empty string)"));
                    }
                    finish(cur.take(), &mut elems)?;
                    need_sep = false;
                    i += 1;
                    // A '.' must be followed by an element.
                    if i == bytes.len() {
                        return Err(err(i, "path ends with '.'"));
                    }
                    cur = None;
                    // Mark that an element is expected.
                    if bytes[i] != b':' {
                        cur = Some((Kind::Str, String::new(), i));
                    }
                }
                b':' => {
                    let Some(&t) = bytes.get(i + 1) else {
                        return Err(err(i, "dangling ':'"));
                    };
                    match t {
                        b':' | b'.' | b'_' => {
                            if need_sep {
                                return Err(err(i, "expected '.' or ':' after this element"));
                            }
                            let ch = match t {
                                b'_' => ' ',
                                other => other as char,
                            };
                            match &mut cur {
                                Some((_, s, _)) => s.push(ch),
                                None => cur = Some((Kind::Str, ch.to_string(), i)),
                            }
                            i += 2;
                        }
                        _ => {
                            finish(cur.take(), &mut elems)?;
                            need_sep = false;
                            let at = i;
                            i += 1;
                            let simple = |e: Elem| Some(e);
                            let next_is_end =
                                |k: usize| k >= bytes.len() || bytes[k] == b'.' || bytes[k] == b':';
                            let single = match t {
                                b'n' if next_is_end(i + 1) => simple(Elem::Nil),
                                b't' if next_is_end(i + 1) => simple(Elem::Bool(true)),
                                b'f' if next_is_end(i + 1) => simple(Elem::Bool(false)),
                                b'e' if next_is_end(i + 1) => simple(Elem::Str(String::new())),
                                _ => None,
                            };
                            if let Some(e) = single {
                                elems.push(e);
                                i += 1;
                                need_sep = true;
                                continue;
                            }
                            let (kind, skip) = match t {
                                b'x' => (Kind::Hex, 1),
                                b'b' => (Kind::Binary, 1),
                                b'v' => (Kind::Ascii, 1),
                                b'y' => (Kind::HexBytes, 1),
                                b'-' | b'+' | b'0'..=b'9' | b'i' | b'n' => (Kind::Eval, 0),
                                _ => return Err(err(at, "unknown ':' escape")),
                            };
                            i += skip;
                            cur = Some((kind, String::new(), at));
                        }
                    }
                }
                _ => {
                    if need_sep {
                        return Err(err(i, "expected '.' or ':' after this element"));
                    }
                    // Copy one whole UTF-8 character.
                    let ch_len = text[i..].chars().next().map_or(1, char::len_utf8);
                    let ch = &text[i..i + ch_len];
                    match &mut cur {
                        Some((_, s, _)) => s.push_str(ch),
                        None => cur = Some((Kind::Str, ch.to_string(), i)),
                    }
                    i += ch_len;
                }
            }
        }
        finish(cur.take(), &mut elems)?;
        Ok(Path::new(elems))
    }

    fn parse_radix(s: &str, radix: u32) -> Option<i128> {
        let (neg, digits) = match s.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, s),
        };
        let v = i128::from_str_radix(digits, radix).ok()?;
        Some(if neg { -v } else { v })
    }

    fn eval(s: &str) -> Option<Elem> {
        if let Ok(i) = s.parse::<i128>() {
            return Some(Elem::Int(i));
        }
        if s.contains(['.', 'e', 'E']) || ["inf", "-inf", "nan"].contains(&s) {
            return s.parse::<f64>().ok().map(Elem::Float);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode;
    use proptest::prelude::*;

    fn p(elems: Vec<Elem>) -> Path {
        Path::new(elems)
    }

    #[test]
    fn wire_form_matches_distkv_bytes() {
        // Bytes recorded from a real DistKV server (docs/PROTOCOL.md).
        let bar_a = p(vec!["bar".into(), "a".into()]);
        assert_eq!(
            encode(&bar_a.to_value()),
            [0xc7, 0x06, 0x03, 0xa3, 0x62, 0x61, 0x72, 0xa1, 0x61]
        );
        let auth = p(vec![Elem::Nil, "auth".into()]);
        assert_eq!(
            encode(&auth.to_value()),
            [0xc7, 0x06, 0x03, 0xc0, 0xa4, 0x61, 0x75, 0x74, 0x68]
        );
        assert_eq!(encode(&Path::root().to_value()), [0xc7, 0x00, 0x03]);
        let mut out = Vec::new();
        auth.encode_into(&mut out);
        assert_eq!(out, encode(&auth.to_value()));
    }

    #[test]
    fn arrays_and_extensions_both_read() {
        let a = Value::Array(vec!["x".into(), Value::Int(3), Value::F32(0.5)]);
        let path = Path::from_value(&a).expect("array path");
        assert_eq!(path, p(vec!["x".into(), Elem::Int(3), Elem::Float(0.5)]));
        assert_eq!(Path::from_value(&path.to_value()), Ok(path));
        assert_eq!(
            Path::from_value(&Value::Array(vec![Value::Array(vec![])])),
            Err(PathError::BadElement(0))
        );
        assert_eq!(Path::from_value(&Value::Int(1)), Err(PathError::NotAPath));
        assert_eq!(
            Path::from_value(&Value::Ext(3, vec![0xc1])),
            Err(PathError::BadPayload)
        );
        assert_eq!(
            Path::from_value(&Value::Ext(3, vec![0x91, 0x01])),
            Err(PathError::BadElement(0))
        );
    }

    #[test]
    fn types_stay_distinct() {
        let one = p(vec![Elem::Int(1)]);
        let t = p(vec![Elem::Bool(true)]);
        let f = p(vec![Elem::Float(1.0)]);
        assert_ne!(one, t);
        assert_ne!(one, f);
        assert_ne!(one.to_key(), f.to_key());
    }

    #[test]
    fn text_form_examples() {
        let cases: Vec<(&str, Path)> = vec![
            (":", Path::root()),
            ("a.b.c", p(vec!["a".into(), "b".into(), "c".into()])),
            (":n.auth", p(vec![Elem::Nil, "auth".into()])),
            (
                "a:t:f:n",
                p(vec![
                    "a".into(),
                    Elem::Bool(true),
                    Elem::Bool(false),
                    Elem::Nil,
                ]),
            ),
            ("a:12:-3", p(vec!["a".into(), Elem::Int(12), Elem::Int(-3)])),
            ("a:1:.5", p(vec!["a".into(), Elem::Float(1.5)])),
            ("x::y:.z:_w", p(vec!["x:y.z w".into()])),
            (":e", p(vec!["".into()])),
            (
                ":vab:y00ff",
                p(vec![Elem::Bin(b"ab".to_vec()), Elem::Bin(vec![0, 255])]),
            ),
        ];
        for (text, path) in cases {
            assert_eq!(Path::parse(text).as_ref(), Ok(&path), "{text}");
            assert_eq!(path.to_string(), text);
        }
        assert_eq!(Path::parse(":xff"), Ok(p(vec![Elem::Int(255)])));
        assert_eq!(Path::parse(":b101"), Ok(p(vec![Elem::Int(5)])));
        assert_eq!(
            Path::parse("a.:t"),
            Ok(p(vec!["a".into(), Elem::Bool(true)]))
        );
        for bad in ["", "a..b", ".a", "a.", ":q", ":y0", ":tx", "a:", ":zz"] {
            assert!(Path::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    pub(crate) fn arb_elem() -> impl Strategy<Value = Elem> {
        prop_oneof![
            Just(Elem::Nil),
            any::<bool>().prop_map(Elem::Bool),
            any::<i64>().prop_map(|i| Elem::Int(i as i128)),
            (0i128..i128::MAX).prop_map(Elem::Int),
            any::<f64>().prop_map(Elem::Float),
            "[a-c\\.: \\x00é]{0,4}".prop_map(Elem::Str),
            proptest::collection::vec(
                prop_oneof![Just(0u8), Just(1), Just(0xff), any::<u8>()],
                0..4
            )
            .prop_map(Elem::Bin),
        ]
    }

    pub(crate) fn arb_path() -> impl Strategy<Value = Path> {
        proptest::collection::vec(arb_elem(), 0..5).prop_map(Path::new)
    }

    proptest! {
        #[test]
        fn key_order_is_path_order(a in arb_path(), b in arb_path()) {
            let (ka, kb) = (a.to_key(), b.to_key());
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            prop_assert_eq!(kb.starts_with(&ka), b.starts_with(&a));
        }

        #[test]
        fn subtree_end_bound(a in arb_path(), b in arb_path()) {
            // key(a)++[KEY_END] is above a's whole subtree and below
            // everything after it.
            let mut end = a.to_key();
            end.push(KEY_END);
            let kb = b.to_key();
            if b.starts_with(&a) {
                prop_assert!(kb < end);
            } else if b > a {
                prop_assert!(kb > end);
            }
        }

        #[test]
        fn key_roundtrips(a in arb_path()) {
            prop_assert_eq!(Path::from_key(&a.to_key()), Ok(a));
        }

        #[test]
        fn wire_roundtrips(a in arb_path()) {
            prop_assert_eq!(Path::from_value(&a.to_value()), Ok(a.clone()));
            prop_assert_eq!(Path::from_value(&a.to_array()), Ok(a));
        }

        #[test]
        fn text_roundtrips(a in arb_path()) {
            let text = a.to_string();
            let back = Path::parse(&text);
            // NaN floats print as "nan" and read back as a NaN: compare keys.
            prop_assert_eq!(back.map(|b| b.to_key()), Ok(a.to_key()), "{}", text);
        }

        #[test]
        fn garbage_keys_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = Path::from_key(&bytes);
        }

        #[test]
        fn garbage_text_never_panics(s in ".{0,12}") {
            let _ = Path::parse(&s);
        }
    }
}
