//! `signed_header`: the `Authorization: Keycard …` header against a reference parser; signatures over what it parsed.
//! The body is `keycard_auth::fuzzing::fuzz_signed_header`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keycard_auth::fuzzing::fuzz_signed_header(data));
