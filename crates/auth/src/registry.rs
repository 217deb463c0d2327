//! Which methods exist, by name.

use std::sync::Arc;

use crate::anon::{Anon, AnonClient};
use crate::exchange::AuthError;
use crate::opaque::{Opaque, OpaqueClient, OPAQUE};
use crate::password::{Argon2Params, PasswordClient, PasswordMethod, PASSWORD};
use crate::root::{Root, RootClient};
use crate::schema::Kind;
use crate::scram::{Scram, ScramClient, MIN_ITERATIONS, SCRAM_SHA_256};
use crate::secret::{Password, SecretKey};
use crate::test_method::{Test, TestClient};
use crate::{ClientMethod, Method};

/// The server halves of the methods a server has loaded.
#[derive(Clone)]
pub struct Registry {
    methods: Vec<Arc<dyn Method>>,
}

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

impl Registry {
    /// Every built-in method. Fails on unusable Argon2id parameters.
    pub fn builtin(secrets: MethodSecrets) -> Result<Registry, AuthError> {
        Ok(Registry {
            methods: vec![
                Arc::new(Root),
                Arc::new(Anon),
                Arc::new(Test),
                Arc::new(PasswordMethod::new(secrets.argon2)?),
                Arc::new(Scram::new(secrets.mock_key, secrets.scram_iterations)),
                Arc::new(Opaque::new(&secrets.opaque_setup)?),
            ],
        })
    }

    /// Registers a further method; refused if its name is taken.
    pub fn add(&mut self, method: Arc<dyn Method>) -> Result<(), AuthError> {
        if self.get(method.name()).is_some() {
            return Err(AuthError::Unsupported(format!(
                "a method called {:?} is already registered",
                method.name()
            )));
        }
        self.methods.push(method);
        Ok(())
    }

    /// The method called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Method>> {
        self.methods.iter().find(|m| m.name() == name)
    }

    /// The names of all loaded methods.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.methods.iter().map(|m| m.name())
    }

    /// The record kind `kind` of method `method`.
    pub fn kind(&self, method: &str, kind: &str) -> Option<&'static Kind> {
        self.get(method)?.kinds().iter().find(|k| k.name == kind)
    }
}

/// Builds client halves.
pub struct ClientRegistry;

impl ClientRegistry {
    /// The client half of `method` for user `user` (ignored by `root`),
    /// with `password` for the methods that need one.
    pub fn make_with_password(
        method: &str,
        user: Option<&str>,
        password: Option<Password>,
    ) -> Result<Box<dyn ClientMethod>, AuthError> {
        if !Self::needs_password(method) {
            return Self::make(method, user);
        }
        let user = user
            .ok_or_else(|| AuthError::Unsupported(format!("method {method} needs a user name")))?
            .to_owned();
        let password = password
            .ok_or_else(|| AuthError::Unsupported(format!("method {method} needs a password")))?;
        Ok(match method {
            OPAQUE => Box::new(OpaqueClient { user, password }),
            PASSWORD => Box::new(PasswordClient { user, password }),
            _ => {
                let mut c = ScramClient::new(user, password);
                c.iterations = MIN_ITERATIONS;
                Box::new(c)
            }
        })
    }

    /// Whether `method`'s client needs a password.
    pub fn needs_password(method: &str) -> bool {
        method == SCRAM_SHA_256 || method == PASSWORD || method == OPAQUE
    }

    /// The client half of `method` for user `user` (ignored by `root`).
    pub fn make(method: &str, user: Option<&str>) -> Result<Box<dyn ClientMethod>, AuthError> {
        let need_user = || {
            user.map(str::to_owned)
                .ok_or_else(|| AuthError::Unsupported(format!("method {method} needs a user name")))
        };
        Ok(match method {
            "root" => Box::new(RootClient),
            "_anon" => Box::new(AnonClient { name: need_user()? }),
            "_test" => Box::new(TestClient { name: need_user()? }),
            other => {
                return Err(AuthError::Unsupported(format!(
                    "unknown auth method {other:?}"
                )))
            }
        })
    }
}
