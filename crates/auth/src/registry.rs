//! Which methods exist, by name.

use std::sync::Arc;

use crate::anon::{Anon, AnonClient};
use crate::exchange::AuthError;
use crate::root::{Root, RootClient};
use crate::schema::Kind;
use crate::test_method::{Test, TestClient};
use crate::{ClientMethod, Method};

/// The server halves of the methods a server has loaded.
#[derive(Clone)]
pub struct Registry {
    methods: Vec<Arc<dyn Method>>,
}

impl Registry {
    /// Every built-in method.
    pub fn builtin() -> Registry {
        Registry {
            methods: vec![Arc::new(Root), Arc::new(Anon), Arc::new(Test)],
        }
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
