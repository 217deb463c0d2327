//! `/kv/{path}`: data access under the session's ACLs, and the JSON ↔
//! msgpack value mapping.

use std::borrow::Cow;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, IF_MATCH, IF_NONE_MATCH};
use hyper::{HeaderMap, Method, Response, StatusCode};
use keycard_proto::{ErrorCode, Path, Value};
use keycard_store::{Cond, Tock};
use serde_json::json;

use super::{json_response, Body, Rest};
use crate::caller::Caller;
use crate::core::access::{check_login, data_path};
use crate::core::data;
use crate::error::ApiError;

/// A request's `If-Match` and `If-None-Match` values, read once: the
/// signature covers these strings and `/kv` obeys these same strings.
/// Empty means absent.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Preconditions<'a> {
    pub(super) if_match: &'a str,
    pub(super) if_none_match: &'a str,
}

impl<'a> Preconditions<'a> {
    /// Neither header was sent.
    pub(super) fn is_empty(&self) -> bool {
        self.if_match.is_empty() && self.if_none_match.is_empty()
    }

    /// Reads both headers. Each may come once, in visible ASCII, not
    /// empty: a second copy or bytes that do not read as text would be
    /// ignored by one reader and not another (the precondition unsigned,
    /// or a conditional write done unconditionally), so they are `400`.
    pub(super) fn of(headers: &'a HeaderMap) -> Result<Preconditions<'a>, ApiError> {
        let one = |name: HeaderName, shown: &str| -> Result<&'a str, ApiError> {
            let mut all = headers.get_all(&name).iter();
            let Some(first) = all.next() else {
                return Ok("");
            };
            if all.next().is_some() {
                return Err(ApiError::bad(format!("{shown} may be sent once")));
            }
            match first.to_str().map(str::trim) {
                Ok(v) if !v.is_empty() => Ok(v),
                _ => Err(ApiError::bad(format!(
                    "{shown} must be a non-empty visible ASCII value"
                ))),
            }
        };
        Ok(Preconditions {
            if_match: one(IF_MATCH, "If-Match")?,
            if_none_match: one(IF_NONE_MATCH, "If-None-Match")?,
        })
    }
}

impl Rest {
    /// `GET|PUT|DELETE /kv/{path}`: data under the session's ACLs, in its
    /// domain. `PUT` takes `{"value": …}`; `If-Match: TOCK` makes a write
    /// conditional on the node's tock, `If-None-Match: *` on its absence.
    pub(super) async fn kv(
        &self,
        session: Caller,
        parts: &hyper::http::request::Parts,
        pre: Preconditions<'_>,
        segs: &[&str],
        body: &[u8],
    ) -> Result<Response<Body>, ApiError> {
        check_login(&self.state, &session)?;
        let rel = url_path(segs)?;
        // A precondition the server cannot honour is refused, never
        // dropped: dropping it would make the write unconditional.
        let cond = match (pre.if_match, pre.if_none_match) {
            ("", "") => Cond::Any,
            (tag, "") => {
                let tock: u64 = tag
                    .trim_matches('"')
                    .parse()
                    .map_err(|_| ApiError::bad("If-Match must be a tock (a number)"))?;
                Cond::TockIs(Tock(tock))
            }
            ("", "*") => Cond::Absent,
            ("", _) => return Err(ApiError::bad("If-None-Match takes only *")),
            _ => return Err(ApiError::bad("send If-Match or If-None-Match, not both")),
        };
        let (reply, tock) = match parts.method {
            Method::GET => {
                let path = data_path(&session, &rel)?;
                let entry = data::get(&self.state, &session, &path).await?;
                let Some(e) = entry else {
                    return Err(ApiError::new(ErrorCode::NotFound, "no value at this path"));
                };
                let mut o = serde_json::Map::new();
                o.insert("value".into(), to_json(&e.value));
                o.insert("tock".into(), json!(e.tock.0));
                (o, e.tock)
            }
            Method::PUT => {
                let j: serde_json::Value = serde_json::from_slice(body)
                    .map_err(|_| ApiError::bad("the body must be JSON: {\"value\": …}"))?;
                let v = j
                    .get("value")
                    .ok_or_else(|| ApiError::bad("the body must be JSON: {\"value\": …}"))?;
                let value = from_json(v, 0)?;
                let path = data_path(&session, &rel)?;
                let w = data::set(&self.state, &session, &path, value, cond, false).await?;
                (written_json(&w), w.tock)
            }
            _ => {
                let path = data_path(&session, &rel)?;
                let w = data::delete(&self.state, &session, &path, cond).await?;
                (written_json(&w), w.tock)
            }
        };
        let mut out = json_bytes(StatusCode::OK, &serde_json::Value::Object(reply));
        // The node's tock, for a later If-Match.
        if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", tock.0)) {
            out.headers_mut().insert(hyper::header::ETAG, v);
        }
        Ok(out)
    }
}

/// A write's answer: `{changed, tock, prev?}`.
fn written_json(w: &data::Written) -> serde_json::Map<String, serde_json::Value> {
    let mut o = serde_json::Map::new();
    o.insert("changed".into(), json!(w.changed));
    o.insert("tock".into(), json!(w.tock.0));
    if let Some(prev) = &w.prev {
        o.insert("prev".into(), to_json(prev));
    }
    o
}

/// `json_response`'s answer, serialised straight to bytes (the same
/// compact JSON as `Value`'s `Display`, without the formatter in between).
fn json_bytes(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let Ok(bytes) = serde_json::to_vec(v) else {
        return json_response(status, v.clone());
    };
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A `/kv/…` URL's path: each segment, percent-decoded, is one element in
/// DistKV's text form (`app` a string, `:5` the integer 5, `a:.b` the
/// string "a.b"; docs/REST.md).
pub(super) fn url_path(segs: &[&str]) -> Result<Path, ApiError> {
    let mut elems = Vec::with_capacity(segs.len());
    for seg in segs {
        // Most segments have no escape: no copy for them.
        let text = if seg.contains('%') {
            Cow::Owned(percent_decode(seg).ok_or_else(|| {
                ApiError::bad("a path segment is not valid percent-encoded UTF-8")
            })?)
        } else {
            Cow::Borrowed(*seg)
        };
        let one = Path::parse(&text).map_err(ApiError::from)?;
        match one.elems() {
            [e] => elems.push(e.clone()),
            _ => {
                return Err(ApiError::bad(format!(
                "each URL segment is one element ({text:?} is not; write a dot in a name as ':.')"
            )))
            }
        }
    }
    Ok(Path::new(elems))
}

pub(super) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// msgpack → JSON: bytes as `{"$bytes": base64url}`, integers beyond
/// JSON's safe range and other extensions as strings/objects that say so.
pub(super) fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Nil => serde_json::Value::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => match i64::try_from(*i) {
            Ok(n) => json!(n),
            Err(_) => json!({"$int": i.to_string()}),
        },
        Value::F32(f) => json!(f),
        Value::F64(f) => json!(f),
        Value::Str(s) => json!(s),
        Value::Bin(b) => json!({"$bytes": URL_SAFE_NO_PAD.encode(b)}),
        Value::Array(a) => serde_json::Value::Array(a.iter().map(to_json).collect()),
        Value::Map(m) => {
            let mut o = serde_json::Map::new();
            for (k, v) in m {
                let key = match k {
                    Value::Str(s) => s.clone(),
                    other => to_json(other).to_string(),
                };
                o.insert(key, to_json(v));
            }
            serde_json::Value::Object(o)
        }
        other => json!({"$msgpack": format!("{other:?}")}),
    }
}

/// JSON → msgpack (`{"$bytes": …}` back to bytes), at most 64 levels deep.
pub(super) fn from_json(v: &serde_json::Value, depth: usize) -> Result<Value, ApiError> {
    if depth > 64 {
        return Err(ApiError::bad("the value is nested too deeply"));
    }
    Ok(match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::from(i),
            (_, Some(u), _) => Value::from(u),
            (_, _, Some(f)) => Value::F64(f),
            _ => return Err(ApiError::bad("a number JSON cannot carry")),
        },
        serde_json::Value::String(s) => Value::Str(s.clone()),
        serde_json::Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| from_json(x, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        serde_json::Value::Object(o) => {
            if let (1, Some(serde_json::Value::String(b))) = (o.len(), o.get("$bytes")) {
                let bytes = URL_SAFE_NO_PAD
                    .decode(b)
                    .map_err(|_| ApiError::bad("$bytes must be base64url"))?;
                return Ok(Value::Bin(bytes));
            }
            Value::Map(
                o.iter()
                    .map(|(k, x)| Ok((Value::Str(k.clone()), from_json(x, depth + 1)?)))
                    .collect::<Result<_, ApiError>>()?,
            )
        }
    })
}
