//! The command-line path syntax: parsing never panics, and what parses
//! prints back to text naming the same path.
#![no_main]
use keycard_proto::Path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(p) = Path::parse(text) {
        let again = Path::parse(&p.to_string()).expect("printed paths parse");
        assert_eq!(again.to_key(), p.to_key());
    }
});
