//! `decode`: the msgpack frame decoder: no panic, within its limits, split input decodes as whole input, values re-encode to themselves.
//! The body is `keycard_proto::fuzzing::fuzz_decode`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keycard_proto::fuzzing::fuzz_decode(data));
