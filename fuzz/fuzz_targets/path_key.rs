//! `path_key`: stored keys: any bytes either fail or round-trip exactly.
//! The body is `keycard_proto::fuzzing::fuzz_path_key`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keycard_proto::fuzzing::fuzz_path_key(data));
