//! `password`: DistKV's method, with its storage fixed.
//!
//! On the wire exactly DistKV's: after a key agreement (`diffie_hellman`,
//! see [`crate::channel`]) the client sends SHA-256(password) sealed in a
//! NaCl secretbox under the agreed key, in the request's `password` field —
//! for `auth` and for `auth_set` alike, so a new password never travels in
//! clear. At rest: Argon2id over that digest with a random salt, as a PHC
//! string (DistKV stores the bare SHA-256). An unknown user costs the same
//! Argon2id verification against a dummy hash with the same parameters,
//! and fails the same way.
//!
//! The Argon2id work is returned as [`Step::Work`], so the front end runs
//! it on its bounded worker pool, never on the event loop.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use keycard_proto::{Msg, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::channel::{open, seal};
use crate::exchange::{AuthError, ClientLogin, LoginCtx, Step, Verdict};
use crate::schema::{Field, FieldType, Kind, GROUP};
use crate::secret::{Password, SecretKey};
use crate::{ClientMethod, Method};

/// The method's name on the wire.
pub const PASSWORD: &str = "password";

/// The request field DistKV's client puts the sealed digest in.
pub const PASSWORD_FIELD: &str = "password";

/// `password`'s user kind.
pub const PASSWORD_USER: Kind = Kind {
    name: "user",
    fields: &[Field {
        name: "password",
        ty: FieldType::Bytes,
        required: true,
        doc: "SHA-256 of the password, sealed in a secretbox under the key agreed with diffie_hellman",
    }],
};

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory, KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Default for Argon2Params {
    /// OWASP's minimum: m = 19 MiB, t = 2, p = 1.
    fn default() -> Self {
        Argon2Params {
            m_kib: 19 * 1024,
            t: 2,
            p: 1,
        }
    }
}

impl Argon2Params {
    fn hasher(&self) -> Result<Argon2<'static>, AuthError> {
        let params = Params::new(self.m_kib, self.t, self.p, Some(32))
            .map_err(|e| AuthError::Unsupported(format!("bad Argon2id parameters: {e}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// Server half of `password`.
pub struct PasswordMethod {
    params: Argon2Params,
    /// A real hash with the same parameters, verified for unknown users so
    /// they cost the same (Vault compares against a non-hash and returns
    /// early; that is the pitfall avoided here).
    dummy: String,
}

fn hash_digest(params: &Argon2Params, digest: &[u8]) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    params
        .hasher()?
        .hash_password(digest, &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Unsupported(format!("Argon2id failed: {e}")))
}

/// Verifies in constant time; the parameters come from the stored string.
fn verify(phc: &str, digest: &[u8]) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default().verify_password(digest, &hash).is_ok(),
        Err(_) => false,
    }
}

impl PasswordMethod {
    /// A server half hashing new passwords with `params`. Computes the
    /// dummy hash (one Argon2id run).
    pub fn new(params: Argon2Params) -> Result<PasswordMethod, AuthError> {
        let dummy = hash_digest(&params, &rand::random::<[u8; 32]>())?;
        Ok(PasswordMethod { params, dummy })
    }

    /// The sealed digest in `request.password`, opened with the
    /// connection's key.
    fn digest(ctx: &LoginCtx<'_>, request: &Value) -> Result<Zeroizing<Vec<u8>>, AuthError> {
        let key = ctx.channel_key.ok_or_else(|| {
            AuthError::Malformed(
                "run diffie_hellman first: the password travels sealed under its key".into(),
            )
        })?;
        let sealed = request
            .get(PASSWORD_FIELD)
            .and_then(Value::as_bin)
            .ok_or_else(|| {
                AuthError::Malformed("'password' must be the sealed digest (bytes)".into())
            })?;
        let digest = open(key, sealed)?;
        if digest.len() != 32 {
            return Err(AuthError::Malformed(
                "the sealed value is not a SHA-256 digest".into(),
            ));
        }
        Ok(digest)
    }
}

/// What `password` declares (DESIGN §2).
pub(crate) static INFO: crate::MethodInfo = crate::MethodInfo {
    name: PASSWORD,
    kinds: &[PASSWORD_USER, GROUP],
    payload: crate::Payload::Text,
    rest: false,
    rest_set: crate::RestSet::No,
    needs_password: true,
    strength: 40,
    super_root: false,
    fixed_user: None,
    second_factor: false,
    suite: None,
    plaintext_secret: true,
    plus: None,
    client_cert: false,
};

/// `password`'s registration.
pub(crate) static ENTRY: crate::Entry = crate::Entry {
    info: &INFO,
    server: |s| Ok(std::sync::Arc::new(PasswordMethod::new(s.argon2)?)),
    client: |user, password| {
        Ok(Box::new(PasswordClient {
            user: crate::exchange::need_user(PASSWORD, user)?,
            password: crate::exchange::need_password(PASSWORD, password)?,
        }))
    },
};

impl Method for PasswordMethod {
    fn info(&self) -> &'static crate::MethodInfo {
        &INFO
    }

    fn login(
        &self,
        ctx: &LoginCtx<'_>,
        ident: &str,
        request: &Value,
        record: Option<&Value>,
    ) -> Step<Verdict> {
        let digest = match Self::digest(ctx, request) {
            Ok(d) => d,
            Err(e) => return Step::Fail(e),
        };
        let stored = record
            .and_then(|r| r.get("hash"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let known = stored.is_some();
        let phc = stored.unwrap_or_else(|| self.dummy.clone());
        let user = ident.to_owned();
        Step::Work(Box::new(move || {
            if verify(&phc, &digest) && known {
                Step::Done(Verdict::user(user))
            } else {
                Step::Fail(AuthError::Failed)
            }
        }))
    }

    fn set_record(
        &self,
        ctx: &LoginCtx<'_>,
        kind: &Kind,
        _ident: &str,
        request: &Value,
    ) -> Step<Value> {
        if kind.name != "user" {
            return crate::root::empty_record(request);
        }
        let digest = match Self::digest(ctx, request) {
            Ok(d) => d,
            Err(e) => return Step::Fail(e),
        };
        let params = self.params;
        Step::Work(Box::new(move || match hash_digest(&params, &digest) {
            Ok(phc) => Step::Done(Msg::new().with("hash", phc).into_value()),
            Err(e) => Step::Fail(e),
        }))
    }

    fn show_record(&self, _kind: &Kind, record: &Value) -> Msg {
        // The PHC parameters, never the hash.
        let params = record
            .get("hash")
            .and_then(Value::as_str)
            .and_then(|h| PasswordHash::new(h).ok().map(|p| p.params.to_string()));
        match params {
            Some(p) => Msg::new().with("argon2id", p),
            None => Msg::new(),
        }
    }
}

/// Client half of `password`: needs the connection's agreed key.
pub struct PasswordClient {
    /// The user name.
    pub user: String,
    /// The password (zeroized on drop).
    pub password: Password,
}

impl PasswordClient {
    fn sealed(&self, key: Option<&SecretKey>) -> Msg {
        let digest = Zeroizing::new(Sha256::digest(self.password.expose().as_bytes()));
        match key {
            Some(k) => Msg::new().with(PASSWORD_FIELD, seal(k, digest.as_slice())),
            // Without a key there is nothing safe to send: send nothing the
            // server would accept.
            None => Msg::new(),
        }
    }
}

impl ClientMethod for PasswordClient {
    fn name(&self) -> &'static str {
        PASSWORD
    }

    fn ident(&self) -> String {
        self.user.clone()
    }

    fn needs_channel(&self) -> bool {
        true
    }

    fn login(&self, channel: Option<&SecretKey>) -> ClientLogin {
        ClientLogin {
            request: self.sealed(channel),
            exchange: None,
        }
    }

    fn set_record(&self, channel: Option<&SecretKey>) -> ClientLogin {
        ClientLogin {
            request: self.sealed(channel),
            exchange: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::USER;

    /// Cheap parameters: these tests check behaviour, not cost.
    fn method() -> PasswordMethod {
        PasswordMethod::new(Argon2Params {
            m_kib: 64,
            t: 1,
            p: 1,
        })
        .expect("method")
    }

    fn run<T>(mut step: Step<T>) -> Result<T, AuthError> {
        loop {
            step = match step {
                Step::Work(w) => w(),
                Step::Done(t) => return Ok(t),
                Step::Fail(e) => return Err(e),
                Step::Send(..) => panic!("password sends nothing"),
            }
        }
    }

    fn client(pw: &str) -> PasswordClient {
        PasswordClient {
            user: "alice".into(),
            password: Password::new(pw),
        }
    }

    #[test]
    fn set_then_login_right_and_wrong() {
        let m = method();
        let key = SecretKey::new([5; 32]);
        let ctx = LoginCtx {
            channel_key: Some(&key),
            ..Default::default()
        };
        let req = client("s3cret!")
            .set_record(Some(&key))
            .request
            .into_value();
        let record = run(m.set_record(&ctx, &USER, "alice", &req)).expect("record");
        let phc = record.get("hash").and_then(Value::as_str).expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        // Another connection, another key.
        let key2 = SecretKey::new([6; 32]);
        let ctx2 = LoginCtx {
            channel_key: Some(&key2),
            ..Default::default()
        };
        let good = client("s3cret!").login(Some(&key2)).request.into_value();
        assert_eq!(
            run(m.login(&ctx2, "alice", &good, Some(&record)))
                .expect("login")
                .user,
            "alice"
        );
        let bad = client("s3cret?").login(Some(&key2)).request.into_value();
        assert_eq!(
            run(m.login(&ctx2, "alice", &bad, Some(&record))).err(),
            Some(AuthError::Failed)
        );
        // Unknown user: the same failure, after the same kind of work.
        assert_eq!(
            run(m.login(&ctx2, "bob", &good, None)).err(),
            Some(AuthError::Failed)
        );
    }

    #[test]
    fn no_key_wrong_key_or_no_digest_is_malformed() {
        let m = method();
        let key = SecretKey::new([5; 32]);
        let req = client("pw").login(Some(&key)).request.into_value();
        let none = LoginCtx::default();
        assert!(matches!(
            run(m.login(&none, "a", &req, None)),
            Err(AuthError::Malformed(_))
        ));
        let other = SecretKey::new([7; 32]);
        let wrong = LoginCtx {
            channel_key: Some(&other),
            ..Default::default()
        };
        assert!(matches!(
            run(m.login(&wrong, "a", &req, None)),
            Err(AuthError::Malformed(_))
        ));
        let ctx = LoginCtx {
            channel_key: Some(&key),
            ..Default::default()
        };
        let short = Msg::new()
            .with("password", seal(&key, b"short"))
            .into_value();
        assert!(matches!(
            run(m.login(&ctx, "a", &short, None)),
            Err(AuthError::Malformed(_))
        ));
        let missing = Msg::new().into_value();
        assert!(matches!(
            run(m.login(&ctx, "a", &missing, None)),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn the_record_shows_parameters_not_the_hash() {
        let m = method();
        let rec = Msg::new().with("hash", m.dummy.clone()).into_value();
        let shown = m.show_record(&USER, &rec).into_value();
        assert_eq!(
            shown.get("argon2id").and_then(Value::as_str),
            Some("m=64,t=1,p=1")
        );
        assert!(shown.get("hash").is_none());
    }
}
