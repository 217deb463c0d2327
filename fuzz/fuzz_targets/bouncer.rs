//! `bouncer`: random operations on the keycard table against a model.
//! The body is `keycard_auth::fuzzing::fuzz_bouncer`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keycard_auth::fuzzing::fuzz_bouncer(data));
