//! `config`: the config file: an error or a config that says what the text says.
//! The body is `keycard_server::fuzzing::fuzz_config`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keycard_server::fuzzing::fuzz_config(data));
