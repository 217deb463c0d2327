//! Which methods exist, by name, and what they declare.

use std::sync::Arc;

use crate::exchange::AuthError;
use crate::info::{Entry, MethodInfo, MethodSecrets};
use crate::secret::Password;
use crate::{ClientMethod, Method};

/// Every method keycard knows, one registration line each, in the order
/// the server lists them when no method is current.
const ENTRIES: &[&Entry] = &[
    &crate::root::ENTRY,
    &crate::anon::ENTRY,
    &crate::test_method::ENTRY,
    &crate::password::ENTRY,
    &crate::scram::ENTRY,
    &crate::opaque::ENTRY,
    &crate::cert::ENTRY,
    &crate::totp::ENTRY,
];

/// What `method` declares, if keycard knows it (as
/// [`ClientRegistry::info`]: no server needed).
pub fn method_info(method: &str) -> Option<&'static MethodInfo> {
    ENTRIES.iter().map(|e| e.info).find(|i| i.name == method)
}

/// The server halves of the methods a server has loaded.
#[derive(Clone)]
pub struct Registry {
    methods: Vec<Arc<dyn Method>>,
}

impl Registry {
    /// Every built-in method. Fails on unusable Argon2id parameters.
    pub fn builtin(secrets: MethodSecrets) -> Result<Registry, AuthError> {
        let methods = ENTRIES
            .iter()
            .map(|e| (e.server)(&secrets))
            .collect::<Result<_, _>>()?;
        Ok(Registry { methods })
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

    /// What the loaded methods declare, in the registry's order.
    pub fn infos(&self) -> impl Iterator<Item = &'static MethodInfo> + '_ {
        self.methods.iter().map(|m| m.info())
    }

    /// The record kind `kind` of method `method`.
    pub fn kind(&self, method: &str, kind: &str) -> Option<&'static crate::Kind> {
        self.get(method)?.kinds().iter().find(|k| k.name == kind)
    }
}

/// Builds client halves, and answers what a method declares without a
/// server.
pub struct ClientRegistry;

impl ClientRegistry {
    /// What `method` declares, if keycard knows it.
    pub fn info(method: &str) -> Option<&'static MethodInfo> {
        method_info(method)
    }

    /// Every method keycard knows, in the registry's order.
    pub fn all() -> impl Iterator<Item = &'static MethodInfo> {
        ENTRIES.iter().map(|e| e.info)
    }

    /// The client half of `method` for user `user` (ignored by a method
    /// with one user), with `password` for the methods that need one.
    pub fn make_with_password(
        method: &str,
        user: Option<&str>,
        password: Option<Password>,
    ) -> Result<Box<dyn ClientMethod>, AuthError> {
        let entry = ENTRIES
            .iter()
            .find(|e| e.info.name == method)
            .ok_or_else(|| AuthError::Unsupported(format!("unknown auth method {method:?}")))?;
        (entry.client)(user, password)
    }

    /// Whether `method`'s client needs a password (`false` for a method
    /// keycard does not know).
    pub fn needs_password(method: &str) -> bool {
        Self::info(method).is_some_and(|i| i.needs_password)
    }

    /// Whether `method` logs its users in as super-root (DistKV's `root`).
    pub fn super_root(method: &str) -> bool {
        Self::info(method).is_some_and(|i| i.super_root)
    }

    /// The strength rank of `method`: higher is stronger; a method keycard
    /// does not know ranks below every known one.
    pub fn strength(method: &str) -> Option<u8> {
        Self::info(method).map(|i| i.strength)
    }

    /// The strongest of `methods` that can log a user in on its own (not
    /// a second factor); the first named wins a tie.
    pub fn strongest<'a>(methods: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        let mut best: Option<(&'a str, u8)> = None;
        for m in methods {
            let Some(info) = Self::info(m).filter(|i| !i.second_factor) else {
                continue;
            };
            if best.is_none_or(|(_, s)| info.strength > s) {
                best = Some((m, info.strength));
            }
        }
        best.map(|(m, _)| m)
    }

    /// The client half of `method` for user `user` (ignored by a method
    /// with one user), for the methods that need no password.
    pub fn make(method: &str, user: Option<&str>) -> Result<Box<dyn ClientMethod>, AuthError> {
        Self::make_with_password(method, user, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_entries_build_their_own_method() {
        let mut names: Vec<_> = ClientRegistry::all().map(|i| i.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ENTRIES.len());
        for e in ENTRIES {
            for kind in e.info.kinds {
                assert!(
                    kind.name == "user" || kind.name == "group",
                    "{}",
                    e.info.name
                );
            }
        }
    }

    #[test]
    fn strongest_skips_second_factors_and_unknowns() {
        assert_eq!(
            ClientRegistry::strongest(["_test", crate::OPAQUE, crate::SCRAM_SHA_256]),
            Some(crate::OPAQUE)
        );
        assert_eq!(
            ClientRegistry::strongest([crate::TOTP, "nope", crate::ROOT]),
            Some(crate::ROOT)
        );
        assert_eq!(ClientRegistry::strongest([crate::TOTP]), None);
    }
}
