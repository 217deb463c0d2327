//! What a method declares about itself, once: everything the transports,
//! the client and the CLI need to know about a method without running it.
//! A method's file holds its [`MethodInfo`] and its [`Entry`] (how to
//! build its two halves); the registry lists the entries, one line each.

use std::sync::Arc;

use crate::exchange::AuthError;
use crate::password::Argon2Params;
use crate::schema::Kind;
use crate::secret::{Password, SecretKey};
use crate::{ClientMethod, Method};

/// How a method's messages' `data` travel where only text can (JSON over
/// REST): as the text itself, or as bytes in unpadded base64url.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// UTF-8 text, as it is (SCRAM's RFC 5802 strings).
    Text,
    /// Bytes, base64url without padding in JSON (OPAQUE's messages).
    Bytes,
}

/// How a credential of the method is set over REST (`POST`/`PUT /user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestSet {
    /// Not over REST (set it with `auth_set` over msgpack).
    No,
    /// One request: the body's `data` text is the record's field of this
    /// name (SCRAM's `verifier`).
    Field(&'static str),
    /// A registration exchange of two requests, bytes in base64url: the
    /// registration request, then the request again with the first
    /// answer's `token` and the registration upload (OPAQUE's).
    Registration,
}

/// A method's properties, declared once in its own file.
#[derive(Debug)]
pub struct MethodInfo {
    /// The method's name on the wire (`typ`).
    pub name: &'static str,
    /// The record kinds it stores (`user` is the one logins use).
    pub kinds: &'static [Kind],
    /// How its messages' `data` travel in JSON.
    pub payload: Payload,
    /// Whether REST offers it for logins (it agrees a session key and its
    /// messages fit in `data`).
    pub rest: bool,
    /// How its credentials are set over REST, if at all.
    pub rest_set: RestSet,
    /// Whether its client half needs a password.
    pub needs_password: bool,
    /// Its rank when a client picks the strongest method available:
    /// higher is stronger.
    pub strength: u8,
    /// Whether a user logged in with it holds the super-root capability
    /// (DistKV's `root` only).
    pub super_root: bool,
    /// The one user name the method knows, if it knows one only.
    pub fixed_user: Option<&'static str>,
    /// Whether it is a second factor only: never a user's only way in, so
    /// never the current or an accepted method on its own, and never the
    /// answer to "which method should this user log in with".
    pub second_factor: bool,
    /// A parameter the greeting and REST's index announce under the
    /// method's name (OPAQUE's ciphersuite), if any.
    pub suite: Option<&'static str>,
    /// Whether its login hands the server a secret that logs in by itself
    /// (DistKV's `password`: the password, sealed to a key agreed without
    /// authentication, so a man in the middle reads it). Such a login is
    /// refused over plaintext from beyond loopback unless the server
    /// allows it (`allow_plaintext_secrets`), as bearer tokens are.
    pub plaintext_secret: bool,
    /// The name under which the method runs bound to the TLS connection
    /// (SCRAM's `-PLUS`, RFC 5802 §6), if it has such a variant: offered
    /// only over TLS, wherever the method itself is accepted, with the
    /// method's own records.
    pub plus: Option<&'static str>,
    /// Whether it logs in with the connection's TLS client certificate:
    /// the front end verifies the certificate (against its client CAs and
    /// revocation lists, at its own time) and hands the method what it
    /// found ([`crate::LoginCtx::client_cert`]). Such a login needs TLS.
    pub client_cert: bool,
}

/// What the client half of a method is made from: the user name and, for
/// the methods that need one, the password (or a one-time code).
pub type MakeClient =
    fn(user: Option<&str>, password: Option<Password>) -> Result<Box<dyn ClientMethod>, AuthError>;

/// What the server gives its methods: a secret to derive the answers for
/// unknown users from, the iteration count real SCRAM users have, and the
/// Argon2id cost for new `password` users.
pub struct MethodSecrets {
    /// Server secret for mock salts and keys (stable per user name).
    pub mock_key: SecretKey,
    /// Iterations announced to unknown SCRAM users.
    pub scram_iterations: u32,
    /// Argon2id parameters for new `password` hashes.
    pub argon2: Argon2Params,
    /// The serialized OPAQUE server setup (see `new_server_setup`).
    pub opaque_setup: Vec<u8>,
}

/// What the server half of a method is made from.
pub type MakeServer = fn(&MethodSecrets) -> Result<Arc<dyn Method>, AuthError>;

/// One method's registration: its properties and how to build its halves.
pub struct Entry {
    /// Its properties.
    pub info: &'static MethodInfo,
    /// Builds the server half.
    pub server: MakeServer,
    /// Builds the client half.
    pub client: MakeClient,
}
