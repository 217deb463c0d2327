//! Which backend keeps the tree, named as the configuration names it.

use std::fmt;
use std::str::FromStr;

/// Which backend keeps the tree: the value of the configuration's `store`
/// key (and of `keycard serve --store`). It is text, so that a backend
/// addressed by a URL fits the same key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// `redb`, the default: [`crate::RedbStore`], one file in the data
    /// directory.
    #[default]
    Redb,
    /// `memory`: [`crate::MemStore`]; nothing outlives the process.
    Memory,
}

impl Backend {
    /// Whether acknowledged writes outlive the process.
    pub fn durable(&self) -> bool {
        match self {
            Backend::Redb => true,
            Backend::Memory => false,
        }
    }
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(text: &str) -> Result<Backend, String> {
        match text {
            "redb" => Ok(Backend::Redb),
            "memory" => Ok(Backend::Memory),
            other => Err(format!(
                "unknown store {other:?}: expected \"redb\" (the embedded file in the data \
                 directory) or \"memory\" (nothing kept after a stop)"
            )),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Redb => "redb",
            Backend::Memory => "memory",
        })
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
        assert!(Backend::default().durable());
        assert!(!Backend::Memory.durable());
    }
}
