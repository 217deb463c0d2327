//! The bodies of the fuzz targets over this crate, as plain functions
//! `fuzz_<target>(data: &[u8])`: `fuzz/` calls them under libFuzzer, and a
//! stable test (`crates/server/tests/fuzz_regressions.rs`) replays the
//! checked-in inputs through them. Each asserts properties — against a
//! small reference model written here where there is one — so a broken
//! property is a panic the fuzzer reports. Not an API.

mod acl;
mod bouncer;
mod scram;
mod signed;
mod x509;

pub use acl::fuzz_acl;
pub use bouncer::fuzz_bouncer;
pub use scram::fuzz_scram;
pub use signed::fuzz_signed_header;
pub use x509::fuzz_x509;

/// Reads the fuzzer's bytes as a stream of small choices; past the end
/// every choice is 0.
pub(crate) struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// A number below `n` (`n` ≥ 1).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    pub(crate) fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        u64::from_le_bytes(b)
    }
}
