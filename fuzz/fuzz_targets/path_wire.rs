//! `path_wire`: DistKV's Path extension: what reads re-encodes to itself.
//! The body is `keycard_proto::fuzzing::fuzz_path_wire`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keycard_proto::fuzzing::fuzz_path_wire(data));
