//! `x509`: the certificate fields keycard reads itself (the subject's
//! common names, the end of validity) from any bytes.

use crate::x509::{common_names, not_after_ms};

/// The largest `notAfter` a certificate can state: 9999-12-31T23:59:59Z.
const LAST_MS: u64 = 253_402_300_799_000;

/// No panic and no endless loop on any bytes; a name read is one the
/// bytes hold (UTF-8, verbatim); a time read is a whole second no later
/// than the last one X.509 can write; and reading the same bytes twice
/// gives the same answers.
pub fn fuzz_x509(data: &[u8]) {
    let names = common_names(data);
    for n in &names {
        assert!(
            data.windows(n.len().max(1)).any(|w| w == n.as_bytes()) || n.is_empty(),
            "a name the input does not hold: {n:?}"
        );
    }
    if let Some(t) = not_after_ms(data) {
        assert_eq!(t % 1000, 0, "{t}");
        assert!(t <= LAST_MS, "{t}");
    }
    assert_eq!(common_names(data), names);
}
