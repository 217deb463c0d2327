//! The bodies of the fuzz targets over this crate's decoders, as plain
//! functions: `fuzz/` calls them under libFuzzer, and a stable test
//! replays the checked-in inputs (`fuzz/regressions/`, `fuzz/inputs/`)
//! through them. Each asserts properties, so a failed property is a panic
//! the fuzzer reports. Not an API.

use crate::{decode_one, encode, Decoder, Limits, Path, Value, PATH_EXT};

/// The limits the `decode` target decodes under.
const LIMITS: Limits = Limits {
    max_message: 4096,
    max_depth: 16,
    max_items: 512,
};

/// How deep non-empty arrays and maps nest in `v` (what `max_depth`
/// bounds: an empty one holds nothing to descend into, so it counts as a
/// scalar), and how many values it holds, itself included.
fn shape(v: &Value) -> (usize, usize) {
    let inner = |children: &mut dyn Iterator<Item = &Value>| {
        children.fold((0, 1), |(d, n), x| {
            let (xd, xn) = shape(x);
            (d.max(xd + 1), n + xn)
        })
    };
    match v {
        Value::Array(items) => inner(&mut items.iter()),
        Value::Map(entries) => inner(&mut entries.iter().flat_map(|(k, x)| [k, x])),
        _ => (0, 1),
    }
}

/// `decode`: the frame decoder never panics, stays within its limits, and
/// every value it returns re-encodes to bytes that decode to the same
/// value; feeding the input in two pieces gives what one piece gives.
pub fn fuzz_decode(data: &[u8]) {
    let cut = data.len() / 2;
    let mut split = Decoder::new(LIMITS);
    split.feed(&data[..cut]);
    let mut values = Vec::new();
    let mut failed = false;
    loop {
        match split.next_value() {
            Ok(Some(v)) => values.push(v),
            Ok(None) => break,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    if !failed {
        split.feed(&data[cut..]);
        loop {
            match split.next_value() {
                Ok(Some(v)) => values.push(v),
                Ok(None) => break,
                Err(_) => break,
            }
        }
    }
    let mut whole = Decoder::new(LIMITS);
    whole.feed(data);
    let mut at_once = Vec::new();
    while let Ok(Some(v)) = whole.next_value() {
        at_once.push(v);
    }
    if !failed {
        assert_eq!(values, at_once, "split input decodes as whole input");
    }
    let big = Limits {
        max_message: 1 << 20,
        max_depth: 64,
        max_items: 1 << 17,
    };
    for v in values.iter().chain(&at_once) {
        let (depth, items) = shape(v);
        assert!(depth <= LIMITS.max_depth, "depth {depth} beyond the limit");
        assert!(items <= LIMITS.max_items, "{items} items beyond the limit");
        let bytes = encode(v);
        let (back, n) = decode_one(&bytes, &big)
            .expect("re-decodes")
            .expect("complete");
        assert_eq!(n, bytes.len());
        assert_eq!(&back, v);
    }
}

/// `path_key`: stored keys either fail to decode or round-trip exactly.
pub fn fuzz_path_key(data: &[u8]) {
    if let Ok(p) = Path::from_key(data) {
        assert_eq!(p.to_key(), data);
    }
}

/// `path_text`: the command-line path syntax never panics, and what parses
/// prints back to text naming the same path.
pub fn fuzz_path_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = Path::parse(text) {
        let again = Path::parse(&p.to_string()).expect("printed paths parse");
        assert_eq!(again.to_key(), p.to_key());
    }
}

/// `path_wire`: DistKV's Path extension payload either fails or gives a
/// path whose wire form reads back the same.
pub fn fuzz_path_wire(data: &[u8]) {
    if let Ok(p) = Path::from_value(&Value::Ext(PATH_EXT, data.to_vec())) {
        assert_eq!(Path::from_value(&p.to_value()).expect("re-reads"), p);
        assert_eq!(Path::from_key(&p.to_key()).expect("key reads"), p);
    }
}
