//! Hex text for bytes (path text form, command line, keycard ids).

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex digits of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Fills `out` with the bytes hex text stands for, without allocating;
/// `None` unless `text` is exactly `2 × out.len()` hex digits.
pub fn decode_into(text: &str, out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(())
}

/// The bytes that hex text stands for; `None` unless it is an even number
/// of hex digits.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let mut out = vec![0; text.len() / 2];
    decode_into(text, &mut out)?;
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn roundtrip_and_rejects() {
        assert_eq!(super::encode(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(super::decode("00abFF"), Some(vec![0, 0xab, 0xff]));
        for bad in ["0", "zz", "é0", "0x", "+f", "-1"] {
            assert_eq!(super::decode(bad), None, "{bad}");
        }
        let mut four = [0u8; 2];
        assert_eq!(super::decode_into("0aF0", &mut four), Some(()));
        assert_eq!(four, [0x0a, 0xf0]);
        assert_eq!(super::decode_into("0aF", &mut four), None);
        for b in 0..=255u8 {
            assert_eq!(super::decode(&super::encode(&[b])), Some(vec![b]));
        }
    }
}
