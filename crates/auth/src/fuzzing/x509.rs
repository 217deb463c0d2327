//! `x509`: the certificate fields keycard reads itself (the subject's
//! common name, the end of validity, whether an extension is there) from
//! any bytes.

use crate::x509::{common_name, has_extension, not_after_ms, EXT_KEY_USAGE};

/// The largest `notAfter` a certificate can state: 9999-12-31T23:59:59Z.
const LAST_MS: u64 = 253_402_300_799_000;

/// No panic and no endless loop on any bytes; a name read is one the
/// bytes hold (UTF-8, verbatim); an extension found is named in them; a
/// time read is a whole second no later
/// than the last one X.509 can write; and reading the same bytes twice
/// gives the same answers.
pub fn fuzz_x509(data: &[u8]) {
    let name = common_name(data);
    if let Ok(n) = &name {
        assert!(
            n.is_empty() || data.windows(n.len()).any(|w| w == n.as_bytes()),
            "a name the input does not hold: {n:?}"
        );
    }
    if let Some(t) = not_after_ms(data) {
        assert_eq!(t % 1000, 0, "{t}");
        assert!(t <= LAST_MS, "{t}");
    }
    // An extension found is one whose identifier the input holds.
    if has_extension(data, EXT_KEY_USAGE) {
        assert!(data.windows(5).any(|w| w == [0x06, 0x03, 0x55, 0x1d, 0x25]));
    }
    assert_eq!(common_name(data), name);
}
