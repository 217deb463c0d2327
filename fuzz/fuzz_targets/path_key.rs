//! Stored keys: any bytes either fail to decode or round-trip exactly.
#![no_main]
use keycard_proto::Path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Path::from_key(data) {
        assert_eq!(p.to_key(), data);
    }
});
