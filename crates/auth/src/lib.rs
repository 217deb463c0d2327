//! keycard's auth methods.
//!
//! A deterministic implementation of login and record-setting exchanges.
//! It contains no networking code, no storage access and no clocks: a
//! method's server half takes the client's messages (and the stored record
//! the front end looked up) and answers with the next message to send or a
//! verdict; its client half does the mirror image. The front ends (the
//! msgpack server, later REST) carry the messages and store the records.
//!
//! Methods here: `root` (DistKV's: one user `*`, super-root), `_anon` (a
//! name, no secret, one message), `_test` (DistKV's test method, with its
//! multi-step record exchange), `password`, `scram-sha-256`, `opaque`,
//! `cert` (the TLS client certificate) and `totp` (a second factor). Each declares its properties once, in its
//! own file ([`MethodInfo`]), and is registered by one line in the
//! registry; the transports, the client and the CLI ask the registry.

pub mod acl;
mod anon;
mod binding;
pub mod bouncer;
mod cert;
pub mod channel;
mod exchange;
#[doc(hidden)]
pub mod fuzzing;
mod info;
mod opaque;
mod password;
mod registry;
mod root;
mod schema;
mod scram;
mod secret;
pub mod signed;
mod test_method;
mod totp;
pub mod x509;

pub use anon::ANON;
pub use binding::{tls_exporter, tls_server_end_point, ChannelBinding};
pub use cert::{CertMethod, CERT};
pub use exchange::{AuthError, ClientLogin, Exchange, LoginCtx, PeerCert, Step, Verdict};
pub use info::{Entry, MakeClient, MakeServer, MethodInfo, MethodSecrets, Payload, RestSet};
pub use opaque::{new_server_setup, Opaque, OpaqueClient, OpaqueLogin, OPAQUE, OPAQUE_SUITE};
pub use password::{Argon2Params, PasswordClient, PasswordMethod, PASSWORD, PASSWORD_FIELD};
pub use registry::{method_info, ClientRegistry, Registry};
pub use root::{NameClient, ROOT, ROOT_USER};
pub use schema::{Field, FieldType, Kind, GROUP, USER};
pub use scram::{
    client_session_key, Scram, ScramClient, Verifier, MAX_ITERATIONS, MIN_ITERATIONS,
    SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
pub use secret::{Password, SecretKey};
pub use test_method::TEST;
pub use totp::{totp_at, Algorithm as TotpAlgorithm, Totp, TotpClient, TOTP, TOTP_ISSUER};

/// The name bearer tokens log in with (`{action:"auth", typ:"token"}`):
/// not a method of the registry (the server checks tokens against its
/// keycard table), but a name the transports and the CLI share.
pub const TOKEN: &str = "token";

use keycard_proto::{Msg, Value};

/// The server half of an auth method.
pub trait Method: Send + Sync + 'static {
    /// What the method declares about itself.
    fn info(&self) -> &'static MethodInfo;

    /// The method's name on the wire (`typ`).
    fn name(&self) -> &'static str {
        self.info().name
    }

    /// The record kinds this method stores (`user` is the one logins use).
    fn kinds(&self) -> &'static [Kind] {
        self.info().kinds
    }

    /// Whether a user logged in with this method holds the super-root
    /// capability. Only DistKV's `root` method does.
    fn super_root(&self) -> bool {
        self.info().super_root
    }

    /// Begins a login. `request` is the client's `auth` message; `record`
    /// the stored `user` record for its `ident`, or `None` for an unknown
    /// user. An unknown user must fail exactly as a wrong credential does.
    fn login(
        &self,
        ctx: &LoginCtx<'_>,
        ident: &str,
        request: &Value,
        record: Option<&Value>,
    ) -> Step<Verdict>;

    /// Begins setting a record (`auth_set`). The finished value is the
    /// record to store; it must never hold a password or its equivalent.
    fn set_record(
        &self,
        ctx: &LoginCtx<'_>,
        kind: &Kind,
        ident: &str,
        request: &Value,
    ) -> Step<Value>;

    /// What `auth_get` may show of a stored record: never secret material.
    fn show_record(&self, _kind: &Kind, _record: &Value) -> Msg {
        Msg::new()
    }

    /// What the reply to a successful `auth_set` adds, from the record just
    /// stored (TOTP's provisioning URI: the server made the secret, and
    /// the user's authenticator needs it). Nothing by default.
    fn set_reply(&self, _kind: &Kind, _ident: &str, _record: &Value) -> Msg {
        Msg::new()
    }
}

/// The client half of an auth method.
pub trait ClientMethod: Send + Sync {
    /// The method's name on the wire (`typ`).
    fn name(&self) -> &'static str;

    /// The user name this client logs in as (`ident`).
    fn ident(&self) -> String;

    /// Whether the method needs a key agreed with `diffie_hellman` first
    /// (the client library does that before `login` / `set_record`).
    fn needs_channel(&self) -> bool {
        false
    }

    /// Starts a login: the fields of the `auth` request beyond `action`,
    /// `seq`, `typ` and `ident`, and how to answer the server's messages.
    /// `channel` is the agreed key, when `needs_channel`.
    fn login(&self, channel: Option<&SecretKey>) -> ClientLogin;

    /// Starts creating or updating this user's record (`auth_set`): the
    /// request's extra fields and how to answer the server's messages.
    fn set_record(&self, channel: Option<&SecretKey>) -> ClientLogin;

    /// Prepares the login for a TLS connection (`binding`, as the client
    /// sees it), if the method has a channel-binding variant. When the
    /// server `offered` the variant, the login binds and runs as it (its
    /// [`MethodInfo::plus`] name). When it did not, the login says that it
    /// could have bound (SCRAM's `y,,`), so that a server that does offer
    /// it sees that someone removed it (RFC 5802 §6). Returns whether the
    /// login is bound. By default a method has no such variant.
    fn bind(&mut self, binding: &ChannelBinding, offered: bool) -> bool {
        let _ = (binding, offered);
        false
    }
}
