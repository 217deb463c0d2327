//! Who is acting: the caller of an operation, whatever carries it.
//!
//! A [`Caller`] is the root it is confined to and, once logged in, the
//! [`LoggedIn`] user with its method, capabilities, ACL bindings and
//! keycard. The msgpack connection holds one in its session (with its own
//! transport state beside it); a REST request builds one from its signed
//! session. The core takes a `&Caller` and never asks what carried it.

use std::sync::Arc;

use keycard_auth::bouncer::KeycardId;
use keycard_proto::Path;

use crate::bouncer::Ended;
use crate::error::ApiError;

/// Who is acting, and where they are confined.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    /// The caller's root (`root` action; a REST session's domain): every
    /// data path is under it.
    pub root: Path,
    /// The logged-in user, once a login succeeded.
    pub user: Option<Arc<LoggedIn>>,
}

/// `name`, or `name@domain` for a domain's user.
pub fn qualify(name: &str, domain: &Path) -> String {
    if domain.is_empty() {
        name.to_owned()
    } else {
        format!("{name}@{domain}")
    }
}

/// A domain's text form as keycards carry it (empty: the server's own).
pub fn domain_text(domain: &Path) -> String {
    if domain.is_empty() {
        String::new()
    } else {
        domain.to_string()
    }
}

/// A management capability (DESIGN §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// Read auth records (`auth_get`, `auth_list`) and the audit log.
    ReadAuth,
    /// Create, re-key and delete users of methods other than `root`.
    WriteAuth,
    /// List and revoke keycards.
    ManageKeycards,
    /// Everything, including the reserved root and which methods log in.
    SuperRoot,
}

impl Capability {
    /// Every capability.
    pub const ALL: [Capability; 4] = [
        Capability::ReadAuth,
        Capability::WriteAuth,
        Capability::ManageKeycards,
        Capability::SuperRoot,
    ];

    /// The name stored in a user's `caps` list.
    pub fn name(self) -> &'static str {
        match self {
            Capability::ReadAuth => "read_auth",
            Capability::WriteAuth => "write_auth",
            Capability::ManageKeycards => "manage_keycards",
            Capability::SuperRoot => "super_root",
        }
    }

    /// The capability of a stored name.
    pub fn parse(s: &str) -> Option<Capability> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// A successful login.
#[derive(Clone, Debug)]
pub struct LoggedIn {
    /// The method that logged the user in.
    pub method: String,
    /// The user's name.
    pub name: String,
    /// Whether the user holds the super-root capability.
    pub super_root: bool,
    /// The key the login agreed (SCRAM, OPAQUE), for signed requests.
    pub session_key: Option<keycard_auth::SecretKey>,
    /// The ACLs the user (and its groups) were bound to when logging in
    /// (`None`: full data access, as in DistKV).
    pub acls: Option<Vec<String>>,
    /// Capabilities granted to the user (read at login).
    pub caps: Vec<Capability>,
    /// The domain the user logged in to (empty: the server's own): its
    /// users, ACLs and groups live under `domain + (nil, …)`, and the
    /// session never leaves it.
    pub domain: Path,
    /// The user record the login read its grants from (a token's: its
    /// user's): with the name, method and domain, who the session is.
    pub record: Path,
    /// When the login succeeded (Unix ms): a credential change of one's
    /// own needs a recent one (`reauth_secs`).
    pub login_at: u64,
    /// The keycard the login was granted.
    pub keycard: KeycardId,
    /// When it stops working (Unix ms); keep-alive moves it.
    pub expires_at: u64,
    /// Set by the bouncer when the keycard was revoked or reaped.
    pub ended: Option<Ended>,
}

impl LoggedIn {
    /// The name keycards know the user by: `NAME`, or `NAME@DOMAIN` for a
    /// domain's user.
    pub fn qualified(&self) -> String {
        qualify(&self.name, &self.domain)
    }

    /// Whether the login's keycard still works at `now` (Unix ms).
    pub fn live(&self, now: u64) -> Result<(), ApiError> {
        match self.ended {
            Some(how) => Err(how.error()),
            None if now >= self.expires_at => Err(Ended::Expired.error()),
            None => Ok(()),
        }
    }

    /// Whether the user holds `cap`.
    pub fn has(&self, cap: Capability) -> bool {
        self.super_root || self.caps.contains(&Capability::SuperRoot) || self.caps.contains(&cap)
    }

    /// Whether user `name` of the domain at `root` is this session's own
    /// user (by any of its methods).
    pub fn is_named(&self, name: &str, root: &Path) -> bool {
        self.name == name && self.domain == *root
    }
}
