//! `path_text`: the command-line path syntax: what parses prints back to the same path.
//! The body is `keycard_proto::fuzzing::fuzz_path_text`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keycard_proto::fuzzing::fuzz_path_text(data));
