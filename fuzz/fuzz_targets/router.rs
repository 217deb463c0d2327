//! `router`: client operations on a msgpack connection, against a model of outstanding seqs.
//! The body is `keycard_server::fuzzing::fuzz_router`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keycard_server::fuzzing::fuzz_router(data));
