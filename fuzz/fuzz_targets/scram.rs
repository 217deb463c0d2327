//! `scram`: SCRAM-SHA-256 client-first and client-final messages against RFC 5802's grammar and a reference proof.
//! The body is `keycard_auth::fuzzing::fuzz_scram`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keycard_auth::fuzzing::fuzz_scram(data));
