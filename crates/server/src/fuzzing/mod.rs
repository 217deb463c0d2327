//! The bodies of the `config` and `router` fuzz targets, as plain
//! functions: `fuzz/` calls them under libFuzzer, and
//! `tests/fuzz_regressions.rs` replays the checked-in inputs through them.
//! Not an API.

use crate::config::Config;

/// `config`: any text read as the config file either is an error (a
/// message, never a panic) or a config that says what the text says: the
/// text is TOML, every key it sets is a field, and the fields checked here
/// hold the text's values. What the server derives from a config at
/// start (the bouncer's policy) never panics either.
pub fn fuzz_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = Config::from_toml(text);
    let table = text.parse::<toml::Table>();
    let config = match parsed {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.is_empty(), "an error says what is wrong");
            return;
        }
    };
    let table = table.expect("a config that parses is TOML");
    let str_field = |k: &str| table.get(k).and_then(|v| v.as_str());
    let int_field = |k: &str| table.get(k).and_then(|v| v.as_integer());
    if let Some(node) = str_field("node") {
        assert_eq!(config.node, node);
    }
    if let Some(store) = str_field("store") {
        assert_eq!(Ok(config.store.clone()), store.parse());
    }
    if let Some(listen) = str_field("listen") {
        assert_eq!(listen.parse(), Ok(config.listen));
    }
    for (key, value) in [
        ("max_message", config.max_message as i128),
        ("max_connections", config.max_connections as i128),
        ("qlen", config.qlen as i128),
        ("scram_iterations", config.scram_iterations as i128),
    ] {
        if let Some(n) = int_field(key) {
            assert_eq!(i128::from(n), value, "{key}");
        }
    }
    if let Some(keycards) = table.get("keycards").and_then(|v| v.as_table()) {
        if let Some(d) = keycards.get("duration").and_then(|v| v.as_integer()) {
            assert_eq!(i128::from(d), i128::from(config.keycards.duration));
        }
    }
    let policy = config.keycards.policy();
    assert_eq!(
        policy.duration_ms,
        config.keycards.duration.saturating_mul(1000)
    );
    // The same text reads the same way twice.
    let again = Config::from_toml(text).expect("parses again");
    assert_eq!(format!("{again:?}"), format!("{config:?}"));
}

/// The body of the `router` fuzz target; see [`fuzz_router`].
mod router;

pub use router::fuzz_router;
