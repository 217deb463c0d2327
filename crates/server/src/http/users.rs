//! `/user/{name}` (signed): show, create, set a credential, delete
//! (`core::users` does the work; a shown user is encoded by
//! `actions::users::reply`, as msgpack answers it).
//! Bodies are `{method, data, token?, upload?, acl?}`, shaped by the
//! method's `RestSet`: for
//! `scram-sha-256`, `data` is the verifier in PostgreSQL's text form; for
//! `opaque`, the registration request, then (second request) the request
//! again with the first answer's `token` and the registration upload in
//! `upload`, all base64url unpadded. The password never travels.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use keycard_auth::RestSet;
use keycard_proto::{ErrorCode, Msg, Value};
use serde_json::json;

use super::kv::{percent_decode, to_json};
use super::{error, json_response, Body, Rest};
use crate::actions::users::show;
use crate::core::users::{self, Set};
use crate::error::ApiError;

/// The method messages a credential body carries, in the shape `how`
/// (the method's [`RestSet`]) gives them.
fn messages(method: &str, how: RestSet, j: &serde_json::Value) -> Result<Vec<Value>, ApiError> {
    let text = |k: &str| -> Result<Option<&str>, ApiError> {
        match j.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(ApiError::bad(format!("'{k}' must be a string"))),
        }
    };
    let data = text("data")?.ok_or_else(|| ApiError::bad("'data' must be a string"))?;
    let bytes = |k: &str, t: &str| {
        URL_SAFE_NO_PAD
            .decode(t)
            .map(Value::Bin)
            .map_err(|_| ApiError::bad(format!("'{k}' must be base64url without padding")))
    };
    let upload = text("upload")?;
    match how {
        RestSet::Registration => {
            let mut first = Msg::new().with("data", bytes("data", data)?);
            if let Some(t) = text("token")? {
                first.set("token", bytes("token", t)?);
            }
            let mut msgs = vec![first.into_value()];
            if let Some(u) = upload {
                if j.get("token").is_none() {
                    return Err(ApiError::bad(
                        "an OPAQUE upload goes with the first answer's 'token'",
                    ));
                }
                msgs.push(Msg::new().with("data", bytes("upload", u)?).into_value());
            }
            Ok(msgs)
        }
        RestSet::Field(field) => {
            if upload.is_some() || j.get("token").is_some() {
                return Err(ApiError::bad(format!(
                    "method {method} takes no 'upload' or 'token'"
                )));
            }
            Ok(vec![Msg::new()
                .with("data", Msg::new().with(field, data))
                .into_value()])
        }
        RestSet::No => Err(ApiError::new(
            ErrorCode::AuthMethod,
            format!("method {method:?} cannot be set over REST"),
        )),
    }
}

impl Rest {
    /// `GET|POST|PUT|DELETE /user/{name}`.
    pub(super) async fn user(
        &self,
        session: crate::caller::Caller,
        method: &Method,
        name: &str,
        body: &[u8],
    ) -> Result<Response<Body>, ApiError> {
        let name = percent_decode(name)
            .ok_or_else(|| ApiError::bad("the name is not valid percent-encoded UTF-8"))?;
        let state = &self.state;
        let result = match *method {
            Method::GET => show(state, &session, &name)
                .await
                .map(|m| json_response(StatusCode::OK, to_json(&m.into_value()))),
            Method::DELETE => users::delete(state, &session, &name).await.map(|_| {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
            }),
            _ => {
                let create = *method == Method::POST;
                let j: serde_json::Value = serde_json::from_slice(body).map_err(|_| {
                    ApiError::bad("the body must be JSON: {\"method\", \"data\", …}")
                })?;
                let m = j
                    .get("method")
                    .and_then(|m| m.as_str())
                    .ok_or_else(|| ApiError::bad("'method' must be a string"))?;
                let settable = || {
                    state
                        .methods
                        .infos()
                        .filter(|i| i.rest_set != RestSet::No)
                        .map(|i| i.name)
                };
                let Some(how) = state
                    .methods
                    .get(m)
                    .map(|x| x.info().rest_set)
                    .filter(|h| *h != RestSet::No)
                else {
                    let list = settable().collect::<Vec<_>>().join(", ");
                    return Err(ApiError::new(
                        ErrorCode::AuthMethod,
                        format!("method {m:?} cannot be set over REST ({list})"),
                    ));
                };
                let acl = match j.get("acl") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(a)) if create => Some(a.as_str()),
                    Some(serde_json::Value::String(_)) => {
                        return Err(ApiError::bad("'acl' is set on creation only (POST)"))
                    }
                    Some(_) => return Err(ApiError::bad("'acl' must be a string")),
                };
                let msgs = messages(m, how, &j)?;
                match users::set_credential(state, &session, &name, m, &msgs, create, acl).await {
                    Ok(Set::Continue(msg)) => {
                        let msg = msg.into_value();
                        let field = |k: &str| match msg.get(k) {
                            Some(Value::Bin(b)) => json!(URL_SAFE_NO_PAD.encode(b)),
                            Some(Value::Str(s)) => json!(s),
                            _ => serde_json::Value::Null,
                        };
                        Ok(json_response(
                            StatusCode::OK,
                            json!({"data": field("data"), "token": field("token")}),
                        ))
                    }
                    Ok(Set::Stored(tock)) => {
                        let status = match create {
                            true => StatusCode::CREATED,
                            false => StatusCode::OK,
                        };
                        Ok(json_response(
                            status,
                            json!({"name": name, "method": m, "tock": tock}),
                        ))
                    }
                    Err(e) => Err(e),
                }
            }
        };
        // A name that exists, or a deletion that would lock everyone out:
        // a conflict with the resource's state (409), not a failed
        // precondition.
        match result {
            Err(e) if e.code == ErrorCode::Conflict => {
                let mut r = error(&e);
                *r.status_mut() = StatusCode::CONFLICT;
                Ok(r)
            }
            other => other,
        }
    }
}
