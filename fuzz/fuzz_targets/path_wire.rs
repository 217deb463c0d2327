//! DistKV's Path extension payload: any bytes either fail or give a path
//! whose wire form reads back the same.
#![no_main]
use keycard_proto::{Path, Value, PATH_EXT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Path::from_value(&Value::Ext(PATH_EXT, data.to_vec())) {
        assert_eq!(Path::from_value(&p.to_value()).expect("re-reads"), p);
    }
});
