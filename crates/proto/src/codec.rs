//! msgpack encoding, and incremental decoding with hard limits.
//!
//! The decoder never trusts a length it has not got the bytes for: it first
//! walks the headers of the next value without allocating (rejecting any
//! announced length beyond [`Limits::max_message`] at once, so a header that
//! claims 1 GiB costs nothing), and only builds the value once all of its
//! bytes are buffered.

use crate::value::{Value, BIGNUM_EXT};

/// Bounds on what the decoder accepts.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest encoded message, in bytes.
    pub max_message: usize,
    /// Deepest nesting of arrays and maps.
    pub max_depth: usize,
    /// Most values in one message (every scalar, array and map counts).
    /// Decoded values take ~32 bytes each whatever their wire size, so this
    /// bounds what a message can cost in memory.
    pub max_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 1 << 20,
            max_depth: 64,
            max_items: 1 << 17,
        }
    }
}

/// Why bytes could not be decoded. After any of these the byte stream cannot
/// be resynchronised, so a connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message is, or announces itself to be, larger than allowed.
    #[error("message too large: more than {max} bytes")]
    TooLarge {
        /// The configured maximum.
        max: usize,
    },
    /// Arrays and maps nest deeper than allowed.
    #[error("message nests deeper than {max} levels")]
    TooDeep {
        /// The configured maximum.
        max: usize,
    },
    /// The message holds more values than allowed.
    #[error("message holds more than {max} values")]
    TooMany {
        /// The configured maximum.
        max: usize,
    },
    /// The reserved marker byte 0xc1.
    #[error("invalid msgpack marker byte 0x{0:02x}")]
    BadMarker(u8),
    /// A str that is not UTF-8.
    #[error("msgpack str is not valid UTF-8")]
    BadUtf8,
    /// Bytes left over after the one value expected.
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
    /// The input ended inside a value.
    #[error("truncated msgpack value")]
    Truncated,
}

/// Encodes `value` into a new buffer.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    encode_into(value, &mut out);
    out
}

/// Appends the encoding of `value` to `out`.
pub fn encode_into(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Nil => out.push(0xc0),
        Value::Bool(false) => out.push(0xc2),
        Value::Bool(true) => out.push(0xc3),
        Value::Int(i) => encode_int(*i, out),
        Value::F32(f) => {
            out.push(0xca);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::F64(f) => {
            out.push(0xcb);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::Str(s) => {
            let n = s.len();
            if n < 32 {
                out.push(0xa0 | n as u8);
            } else {
                len_header(n, [0xd9, 0xda, 0xdb], out);
            }
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bin(b) => {
            len_header(b.len(), [0xc4, 0xc5, 0xc6], out);
            out.extend_from_slice(b);
        }
        Value::Array(a) => {
            if a.len() < 16 {
                out.push(0x90 | a.len() as u8);
            } else {
                len_header16(a.len(), [0xdc, 0xdd], out);
            }
            for v in a {
                encode_into(v, out);
            }
        }
        Value::Map(m) => {
            if m.len() < 16 {
                out.push(0x80 | m.len() as u8);
            } else {
                len_header16(m.len(), [0xde, 0xdf], out);
            }
            for (k, v) in m {
                encode_into(k, out);
                encode_into(v, out);
            }
        }
        Value::Ext(t, b) => encode_ext(*t, b, out),
    }
}

/// Appends an extension value with type `typ` and payload `data`.
pub(crate) fn encode_ext(typ: i8, data: &[u8], out: &mut Vec<u8>) {
    match data.len() {
        1 => out.push(0xd4),
        2 => out.push(0xd5),
        4 => out.push(0xd6),
        8 => out.push(0xd7),
        16 => out.push(0xd8),
        n => len_header(n, [0xc7, 0xc8, 0xc9], out),
    }
    out.push(typ as u8);
    out.extend_from_slice(data);
}

fn encode_int(i: i128, out: &mut Vec<u8>) {
    if (0..128).contains(&i) {
        out.push(i as u8);
    } else if (-32..0).contains(&i) {
        out.push(i as i8 as u8);
    } else if i > 0 {
        if let Ok(v) = u8::try_from(i) {
            out.extend_from_slice(&[0xcc, v]);
        } else if let Ok(v) = u16::try_from(i) {
            out.push(0xcd);
            out.extend_from_slice(&v.to_be_bytes());
        } else if let Ok(v) = u32::try_from(i) {
            out.push(0xce);
            out.extend_from_slice(&v.to_be_bytes());
        } else if let Ok(v) = u64::try_from(i) {
            out.push(0xcf);
            out.extend_from_slice(&v.to_be_bytes());
        } else {
            let bytes = i.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            encode_ext(BIGNUM_EXT, &bytes[skip..], out);
        }
    } else if let Ok(v) = i8::try_from(i) {
        out.extend_from_slice(&[0xd0, v as u8]);
    } else if let Ok(v) = i16::try_from(i) {
        out.push(0xd1);
        out.extend_from_slice(&v.to_be_bytes());
    } else if let Ok(v) = i32::try_from(i) {
        out.push(0xd2);
        out.extend_from_slice(&v.to_be_bytes());
    } else {
        // Values below i64::MIN are not representable and never constructed
        // by the decoder; clamp rather than panic for hand-built values.
        let v = i64::try_from(i).unwrap_or(i64::MIN);
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

fn len_header(n: usize, markers: [u8; 3], out: &mut Vec<u8>) {
    if n < 256 {
        out.extend_from_slice(&[markers[0], n as u8]);
    } else if n < 65536 {
        out.push(markers[1]);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(markers[2]);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

fn len_header16(n: usize, markers: [u8; 2], out: &mut Vec<u8>) {
    if n < 65536 {
        out.push(markers[0]);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(markers[1]);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

/// Outcome of measuring the next value in a buffer.
enum Measure {
    /// The value occupies this many bytes.
    Complete(usize),
    /// More bytes are needed; at least this many in total.
    Incomplete(usize),
}

/// What a header byte announces.
enum Head {
    /// A scalar whose header and payload take `n` bytes in all.
    Fixed(usize),
    /// A scalar with a `h`-byte header and an `n`-byte payload.
    Sized { h: usize, n: usize },
    /// An array or map of `count` items after an `h`-byte header.
    Container { h: usize, count: usize },
}

fn be_len(b: &[u8]) -> usize {
    b.iter().fold(0usize, |acc, x| (acc << 8) | *x as usize)
}

/// Reads the header at `buf[pos]`. `Ok(None)`: the header itself is not all
/// there yet.
fn head(buf: &[u8], pos: usize) -> Result<Option<Head>, DecodeError> {
    let Some(&m) = buf.get(pos) else {
        return Ok(None);
    };
    let ext = |lb: usize| -> Option<Head> {
        let raw = buf.get(pos + 1..pos + 1 + lb)?;
        Some(Head::Sized {
            h: 2 + lb,
            n: be_len(raw),
        })
    };
    let sized = |lb: usize| -> Option<Head> {
        let raw = buf.get(pos + 1..pos + 1 + lb)?;
        Some(Head::Sized {
            h: 1 + lb,
            n: be_len(raw),
        })
    };
    let container = |lb: usize, per: usize| -> Option<Head> {
        let raw = buf.get(pos + 1..pos + 1 + lb)?;
        Some(Head::Container {
            h: 1 + lb,
            count: be_len(raw) * per,
        })
    };
    Ok(match m {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Some(Head::Fixed(1)),
        0x80..=0x8f => Some(Head::Container {
            h: 1,
            count: (m & 0x0f) as usize * 2,
        }),
        0x90..=0x9f => Some(Head::Container {
            h: 1,
            count: (m & 0x0f) as usize,
        }),
        0xa0..=0xbf => Some(Head::Sized {
            h: 1,
            n: (m & 0x1f) as usize,
        }),
        0xc1 => return Err(DecodeError::BadMarker(m)),
        0xc4 | 0xd9 => sized(1),
        0xc5 | 0xda => sized(2),
        0xc6 | 0xdb => sized(4),
        0xc7 => ext(1),
        0xc8 => ext(2),
        0xc9 => ext(4),
        0xca => Some(Head::Fixed(5)),
        0xcb => Some(Head::Fixed(9)),
        0xcc | 0xd0 => Some(Head::Fixed(2)),
        0xcd | 0xd1 => Some(Head::Fixed(3)),
        0xce | 0xd2 => Some(Head::Fixed(5)),
        0xcf | 0xd3 => Some(Head::Fixed(9)),
        0xd4 => Some(Head::Fixed(3)),
        0xd5 => Some(Head::Fixed(4)),
        0xd6 => Some(Head::Fixed(6)),
        0xd7 => Some(Head::Fixed(10)),
        0xd8 => Some(Head::Fixed(18)),
        0xdc => container(2, 1),
        0xdd => container(4, 1),
        0xde => container(2, 2),
        0xdf => container(4, 2),
    })
}

/// How far the headers of a partly received value have been walked, so
/// that more bytes continue the walk instead of starting it over.
#[derive(Debug, Default)]
struct Scan {
    /// Start of the next item to read.
    pos: usize,
    /// Items still to read, per open container.
    pending: Vec<usize>,
    /// Items counted so far.
    items: usize,
}

/// Walks the value starting at `buf[0]` without allocating, continuing
/// from `st`.
fn measure(buf: &[u8], limits: &Limits, st: &mut Scan) -> Result<Measure, DecodeError> {
    let too_large = DecodeError::TooLarge {
        max: limits.max_message,
    };
    loop {
        let Some(h) = head(buf, st.pos)? else {
            return Ok(Measure::Incomplete(st.pos + 1));
        };
        let end = match h {
            Head::Fixed(n) => st.pos + n,
            Head::Sized { h, n } => {
                if n > limits.max_message {
                    return Err(too_large);
                }
                st.pos + h + n
            }
            Head::Container { h, count } => {
                // Every item takes at least one byte.
                if count > limits.max_message {
                    return Err(too_large);
                }
                if count > 0 {
                    if st.pending.len() >= limits.max_depth {
                        return Err(DecodeError::TooDeep {
                            max: limits.max_depth,
                        });
                    }
                    st.items += 1;
                    if st.items > limits.max_items {
                        return Err(DecodeError::TooMany {
                            max: limits.max_items,
                        });
                    }
                    st.pending.push(count);
                    st.pos += h;
                    if st.pos > limits.max_message {
                        return Err(too_large);
                    }
                    continue;
                }
                st.pos + h
            }
        };
        if end > limits.max_message {
            return Err(too_large);
        }
        if end > buf.len() {
            return Ok(Measure::Incomplete(end));
        }
        st.items += 1;
        if st.items > limits.max_items {
            return Err(DecodeError::TooMany {
                max: limits.max_items,
            });
        }
        st.pos = end;
        // One item finished: close every container it completes.
        loop {
            match st.pending.last_mut() {
                None => return Ok(Measure::Complete(st.pos)),
                Some(left) => {
                    *left -= 1;
                    if *left > 0 {
                        break;
                    }
                    st.pending.pop();
                }
            }
        }
    }
}

/// Decodes exactly one value from `buf`, which must hold it and nothing else.
fn parse(buf: &[u8]) -> Result<Value, DecodeError> {
    let mut pos = 0;
    let v = parse_at(buf, &mut pos)?;
    if pos != buf.len() {
        return Err(DecodeError::Trailing(buf.len() - pos));
    }
    Ok(v)
}

fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], DecodeError> {
    let s = buf.get(*pos..*pos + n).ok_or(DecodeError::Truncated)?;
    *pos += n;
    Ok(s)
}

fn take_len(buf: &[u8], pos: &mut usize, n: usize) -> Result<usize, DecodeError> {
    Ok(be_len(take(buf, pos, n)?))
}

fn arr<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    a
}

fn parse_at(buf: &[u8], pos: &mut usize) -> Result<Value, DecodeError> {
    let m = take(buf, pos, 1)?[0];
    Ok(match m {
        0x00..=0x7f => Value::Int(m as i128),
        0xe0..=0xff => Value::Int(m as i8 as i128),
        0x80..=0x8f => parse_map(buf, pos, (m & 0x0f) as usize)?,
        0x90..=0x9f => parse_array(buf, pos, (m & 0x0f) as usize)?,
        0xa0..=0xbf => parse_str(buf, pos, (m & 0x1f) as usize)?,
        0xc0 => Value::Nil,
        0xc1 => return Err(DecodeError::BadMarker(m)),
        0xc2 => Value::Bool(false),
        0xc3 => Value::Bool(true),
        0xc4..=0xc6 => {
            let n = take_len(buf, pos, 1 << (m - 0xc4))?;
            Value::Bin(take(buf, pos, n)?.to_vec())
        }
        0xc7..=0xc9 => {
            let n = take_len(buf, pos, 1 << (m - 0xc7))?;
            parse_ext(buf, pos, n)?
        }
        0xca => Value::F32(f32::from_be_bytes(arr(take(buf, pos, 4)?))),
        0xcb => Value::F64(f64::from_be_bytes(arr(take(buf, pos, 8)?))),
        0xcc => Value::Int(take(buf, pos, 1)?[0] as i128),
        0xcd => Value::Int(u16::from_be_bytes(arr(take(buf, pos, 2)?)) as i128),
        0xce => Value::Int(u32::from_be_bytes(arr(take(buf, pos, 4)?)) as i128),
        0xcf => Value::Int(u64::from_be_bytes(arr(take(buf, pos, 8)?)) as i128),
        0xd0 => Value::Int(take(buf, pos, 1)?[0] as i8 as i128),
        0xd1 => Value::Int(i16::from_be_bytes(arr(take(buf, pos, 2)?)) as i128),
        0xd2 => Value::Int(i32::from_be_bytes(arr(take(buf, pos, 4)?)) as i128),
        0xd3 => Value::Int(i64::from_be_bytes(arr(take(buf, pos, 8)?)) as i128),
        0xd4..=0xd8 => parse_ext(buf, pos, 1 << (m - 0xd4))?,
        0xd9..=0xdb => {
            let n = take_len(buf, pos, 1 << (m - 0xd9))?;
            parse_str(buf, pos, n)?
        }
        0xdc | 0xdd => {
            let n = take_len(buf, pos, 2 << (m - 0xdc))?;
            parse_array(buf, pos, n)?
        }
        0xde | 0xdf => {
            let n = take_len(buf, pos, 2 << (m - 0xde))?;
            parse_map(buf, pos, n)?
        }
    })
}

fn parse_str(buf: &[u8], pos: &mut usize, n: usize) -> Result<Value, DecodeError> {
    let raw = take(buf, pos, n)?;
    let s = std::str::from_utf8(raw).map_err(|_| DecodeError::BadUtf8)?;
    Ok(Value::Str(s.to_owned()))
}

fn parse_array(buf: &[u8], pos: &mut usize, n: usize) -> Result<Value, DecodeError> {
    // `measure` has checked that all n items are present, so n is bounded
    // by the buffer length.
    let mut items = Vec::with_capacity(n.min(buf.len()));
    for _ in 0..n {
        items.push(parse_at(buf, pos)?);
    }
    Ok(Value::Array(items))
}

fn parse_map(buf: &[u8], pos: &mut usize, n: usize) -> Result<Value, DecodeError> {
    let mut items = Vec::with_capacity(n.min(buf.len() / 2));
    for _ in 0..n {
        let k = parse_at(buf, pos)?;
        let v = parse_at(buf, pos)?;
        items.push((k, v));
    }
    Ok(Value::Map(items))
}

fn parse_ext(buf: &[u8], pos: &mut usize, n: usize) -> Result<Value, DecodeError> {
    let typ = take(buf, pos, 1)?[0] as i8;
    let data = take(buf, pos, n)?;
    if typ == BIGNUM_EXT {
        let digits = &data[data.iter().take_while(|b| **b == 0).count()..];
        if digits.len() < 16 || (digits.len() == 16 && digits[0] < 0x80) {
            let mut bytes = [0u8; 16];
            bytes[16 - digits.len()..].copy_from_slice(digits);
            return Ok(Value::Int(i128::from_be_bytes(bytes)));
        }
    }
    Ok(Value::Ext(typ, data.to_vec()))
}

/// Decodes the first value in `buf`: `Ok(None)` if it is not complete yet,
/// else the value and how many bytes it took.
pub fn decode_one(buf: &[u8], limits: &Limits) -> Result<Option<(Value, usize)>, DecodeError> {
    match measure(buf, limits, &mut Scan::default())? {
        Measure::Incomplete(_) => Ok(None),
        Measure::Complete(n) => Ok(Some((parse(&buf[..n])?, n))),
    }
}

/// Splits a byte stream into values, holding at most one partial message
/// (bounded by [`Limits::max_message`]).
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    /// Do not re-measure until the buffer holds this many bytes past `start`.
    need: usize,
    /// The walk over the partial value at `start`.
    scan: Scan,
    /// Wire bytes and values of the last value returned.
    last: (usize, usize),
    limits: Limits,
}

impl Decoder {
    /// A decoder with these limits.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            buf: Vec::new(),
            start: 0,
            need: 1,
            scan: Scan::default(),
            last: (0, 0),
            limits,
        }
    }

    /// Appends bytes read from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete value, if the buffer holds one.
    pub fn next_value(&mut self) -> Result<Option<Value>, DecodeError> {
        let avail = &self.buf[self.start..];
        if avail.len() < self.need {
            return Ok(None);
        }
        match measure(avail, &self.limits, &mut self.scan)? {
            Measure::Incomplete(need) => {
                self.need = need;
                Ok(None)
            }
            Measure::Complete(n) => {
                let v = parse(&avail[..n])?;
                self.last = (n, self.scan.items);
                self.scan = Scan::default();
                self.start += n;
                self.need = 1;
                Ok(Some(v))
            }
        }
    }

    /// What the last value returned cost: its wire bytes plus ~32 bytes per
    /// decoded value, an estimate of the memory it holds.
    pub fn last_cost(&self) -> usize {
        self.last.0 + 32 * self.last.1
    }

    /// Bytes received but not yet returned as a value.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(v: &Value) -> Value {
        let bytes = encode(v);
        let (back, n) = decode_one(&bytes, &Limits::default())
            .expect("decodes")
            .expect("complete");
        assert_eq!(n, bytes.len());
        back
    }

    #[test]
    fn ints_pick_smallest_encoding_and_roundtrip() {
        for (i, len) in [
            (0i128, 1),
            (127, 1),
            (128, 2),
            (-1, 1),
            (-32, 1),
            (-33, 2),
            (65535, 3),
            (65536, 5),
            (u64::MAX as i128, 9),
            (i64::MIN as i128, 9),
        ] {
            let v = Value::Int(i);
            assert_eq!(encode(&v).len(), len, "{i}");
            assert_eq!(roundtrip(&v), v);
        }
    }

    #[test]
    fn bignums_use_extension_2() {
        let v = Value::Int(1i128 << 64);
        let bytes = encode(&v);
        assert_eq!(bytes, vec![0xc7, 9, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(roundtrip(&v), v);
        // Too big for an i128: kept as the raw extension.
        let huge = Value::Ext(2, vec![0xff; 20]);
        assert_eq!(roundtrip(&huge), huge);
    }

    #[test]
    fn unknown_extensions_roundtrip() {
        for n in [0usize, 1, 2, 3, 4, 8, 16, 17, 300, 70000] {
            let v = Value::Ext(42, vec![7; n]);
            assert_eq!(roundtrip(&v), v);
        }
        let ts = Value::Ext(-1, vec![0, 0, 0, 1]);
        assert_eq!(roundtrip(&ts), ts);
    }

    #[test]
    fn huge_announced_length_is_rejected_without_allocating() {
        // bin32 announcing 1 GiB, with only the header present.
        let bytes = [0xc6, 0x40, 0, 0, 0];
        assert_eq!(
            decode_one(&bytes, &Limits::default()),
            Err(DecodeError::TooLarge { max: 1 << 20 })
        );
        // array32 announcing 2^32-1 items.
        let bytes = [0xdd, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(matches!(
            decode_one(&bytes, &Limits::default()),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn too_many_values_are_rejected() {
        let v = Value::Array(vec![Value::Nil; 200_000]);
        assert_eq!(
            decode_one(&encode(&v), &Limits::default()),
            Err(DecodeError::TooMany { max: 1 << 17 })
        );
    }

    #[test]
    fn a_trickled_message_is_walked_once() {
        // 100k small values, fed a byte at a time after the first chunk:
        // each new byte continues the walk where it stopped.
        let v = Value::Array((0..100_000).map(Value::Int).collect());
        let bytes = encode(&v);
        let mut d = Decoder::new(Limits::default());
        let head = bytes.len() - 1000;
        d.feed(&bytes[..head]);
        assert_eq!(d.next_value(), Ok(None));
        // The walk stopped at the first incomplete item, not at the start.
        assert!(
            d.scan.pos > head - 10,
            "walk resumes at {} of {head}",
            d.scan.pos
        );
        for (i, b) in bytes[head..bytes.len() - 1].iter().enumerate() {
            d.feed(std::slice::from_ref(b));
            assert_eq!(d.next_value(), Ok(None));
            assert!(d.scan.pos + 10 > head + i, "the walk keeps its place");
        }
        d.feed(&bytes[bytes.len() - 1..]);
        assert_eq!(d.next_value(), Ok(Some(v)));
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let bytes = vec![0x91u8; 100];
        assert_eq!(
            decode_one(&bytes, &Limits::default()),
            Err(DecodeError::TooDeep { max: 64 })
        );
    }

    #[test]
    fn truncated_is_incomplete_not_error() {
        let full = encode(&Value::Map(vec![("seq".into(), 1.into())]));
        for cut in 0..full.len() {
            assert_eq!(decode_one(&full[..cut], &Limits::default()), Ok(None));
        }
    }

    #[test]
    fn bad_utf8_and_reserved_marker_are_errors() {
        assert_eq!(
            decode_one(&[0xa2, 0xff, 0xfe], &Limits::default()),
            Err(DecodeError::BadUtf8)
        );
        assert_eq!(
            decode_one(&[0xc1], &Limits::default()),
            Err(DecodeError::BadMarker(0xc1))
        );
    }

    #[test]
    fn decoder_splits_a_stream_fed_byte_by_byte() {
        let a = Value::Map(vec![
            ("seq".into(), 1.into()),
            ("x".into(), Value::Bin(vec![1; 300])),
        ]);
        let b = Value::Array(vec![Value::Nil, Value::F32(1.5)]);
        let mut bytes = encode(&a);
        bytes.extend(encode(&b));
        let mut d = Decoder::new(Limits::default());
        let mut got = Vec::new();
        for byte in bytes {
            d.feed(&[byte]);
            while let Some(v) = d.next_value().expect("valid") {
                got.push(v);
            }
        }
        assert_eq!(got, vec![a, b]);
        assert_eq!(d.buffered(), 0);
    }

    pub(crate) fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| Value::Int(i as i128)),
            any::<u64>().prop_map(|i| Value::Int(i as i128)),
            (0i128..i128::MAX).prop_map(Value::Int),
            any::<f32>().prop_map(Value::F32),
            any::<f64>().prop_map(Value::F64),
            ".{0,40}".prop_map(Value::Str),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bin),
            (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..20))
                .prop_filter("bignums are ints", |(t, _)| *t != BIGNUM_EXT)
                .prop_map(|(t, b)| Value::Ext(t, b)),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::vec((inner.clone(), inner), 0..8).prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_value_roundtrips(v in arb_value()) {
            prop_assert_eq!(roundtrip(&v), v);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut d = Decoder::new(Limits { max_message: 150, max_depth: 8, max_items: 100 });
            d.feed(&bytes);
            for _ in 0..bytes.len() + 1 {
                match d.next_value() {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
