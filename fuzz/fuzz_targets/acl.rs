//! `acl`: mode strings, and ACL matching against a reference matcher; the matcher's work bound.
//! The body is `keycard_auth::fuzzing::fuzz_acl`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keycard_auth::fuzzing::fuzz_acl(data));
