//! `x509`: the client-certificate fields keycard reads itself, from any bytes.
//! The body is `keycard_auth::fuzzing::fuzz_x509`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keycard_auth::fuzzing::fuzz_x509(data));
