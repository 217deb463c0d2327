//! The frame decoder never panics, never returns a value that re-encodes
//! to something that decodes differently, and stays within its limits.
#![no_main]
use keycard_proto::{decode_one, encode, Decoder, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_message: 4096, max_depth: 16 };
    let mut d = Decoder::new(limits);
    // Feed in two pieces to exercise partial input.
    let cut = data.len() / 2;
    d.feed(&data[..cut]);
    let mut values = Vec::new();
    while let Ok(Some(v)) = d.next_value() {
        values.push(v);
    }
    d.feed(&data[cut..]);
    while let Ok(Some(v)) = d.next_value() {
        values.push(v);
    }
    for v in values {
        let bytes = encode(&v);
        let big = Limits { max_message: 1 << 20, max_depth: 64 };
        let (back, n) = decode_one(&bytes, &big).expect("re-decodes").expect("complete");
        assert_eq!(n, bytes.len());
        assert_eq!(back, v);
    }
});
