//! The transport-free core: what an operation does, for a [`Caller`],
//! whatever carried it.
//!
//! Each function takes `(&ServerState, &Caller, typed arguments)` and
//! returns a typed result or an [`ApiError`]. The msgpack adapter
//! (`actions/`) and the REST front end (`http/`) decode their requests
//! into these arguments and encode the results; nothing here knows a
//! connection, a `Responder`, a msgpack request map or HTTP.
//!
//! [`Caller`]: crate::caller::Caller
//! [`ApiError`]: crate::error::ApiError

pub(crate) mod access;
pub(crate) mod acl;
pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod cluster;
pub(crate) mod data;
pub(crate) mod guard;
pub(crate) mod keycards;
pub(crate) mod rank;
pub(crate) mod tokens;
pub(crate) mod tree;
pub(crate) mod users;

#[cfg(test)]
pub(crate) mod testkit;
