//! Which backend keeps the tree, named as the configuration names it.

use std::fmt;
use std::str::FromStr;

/// Which backend keeps the tree: the value of the configuration's `store`
/// key (and of `keycard serve --store`). It is text, so that a backend
/// addressed by a URL fits the same key.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Backend {
    /// `redb`, the default: [`crate::RedbStore`], one file in the data
    /// directory.
    #[default]
    Redb,
    /// `memory`: [`crate::MemStore`]; nothing outlives the process.
    Memory,
    /// `postgres://…`: [`crate::PgStore`], one database that several
    /// nodes share; the URL as given (checked by [`crate::PgTarget`]).
    Postgres(String),
}

impl Backend {
    /// Whether acknowledged writes outlive the process.
    pub fn durable(&self) -> bool {
        match self {
            Backend::Redb | Backend::Postgres(_) => true,
            Backend::Memory => false,
        }
    }

    /// Whether other nodes may write to the same store (so the tree can
    /// change without this node writing).
    pub fn shared(&self) -> bool {
        matches!(self, Backend::Postgres(_))
    }
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(text: &str) -> Result<Backend, String> {
        match text {
            "redb" => Ok(Backend::Redb),
            "memory" => Ok(Backend::Memory),
            url if crate::pg::is_pg_url(url) => {
                crate::PgTarget::parse(url)?;
                Ok(Backend::Postgres(url.to_owned()))
            }
            other => Err(format!(
                "unknown store {other:?}: expected \"redb\" (the embedded file in the data \
                 directory), \"memory\" (nothing kept after a stop) or a postgres:// URL"
            )),
        }
    }
}

/// As [`fmt::Display`]: a URL's password never shows.
impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Redb => f.write_str("redb"),
            Backend::Memory => f.write_str("memory"),
            // Never the password.
            Backend::Postgres(url) => match crate::PgTarget::parse(url) {
                Ok(t) => write!(f, "{t}"),
                Err(_) => f.write_str("postgres://(unusable URL)"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name reads back as itself; anything else is refused with the
    /// choices.
    #[test]
    fn names_round_trip() {
        for b in [Backend::Redb, Backend::Memory] {
            assert_eq!(b.to_string().parse::<Backend>(), Ok(b));
        }
        let err = "Redb".parse::<Backend>().expect_err("names are exact");
        assert!(
            err.contains("\"redb\"") && err.contains("\"memory\""),
            "{err}"
        );
        let pg: Backend = "postgres://kc:hunter2@db:5432/auth?schema=kc"
            .parse()
            .expect("a URL");
        assert!(pg.durable() && pg.shared());
        assert!(!pg.to_string().contains("hunter2"), "{pg}");
        assert!(!Backend::Redb.shared());
        let err = "postgres://db/auth?sslmode=sometimes"
            .parse::<Backend>()
            .expect_err("a bad URL");
        assert!(err.contains("sometimes"), "{err}");
        assert!(Backend::default().durable());
        assert!(!Backend::Memory.durable());
    }
}
