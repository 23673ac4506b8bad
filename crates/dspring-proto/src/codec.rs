//! Bounded, total binary codec primitives for everything that crosses the wire.
//!
//! Written by hand rather than with serde because signatures cover the exact bytes sent, the
//! format must be canonical (one encoding per value), and every length and count must be checked
//! against a named bound before anything is allocated.

use thiserror::Error;

/// Why bytes could not be decoded. Always the fault of whoever produced the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("input ended early while reading {0}")]
    UnexpectedEnd(&'static str),
    #[error("{what} is {got}, above the limit of {max}")]
    TooLarge {
        what: &'static str,
        got: u64,
        max: u64,
    },
    #[error("non-canonical or overlong integer encoding")]
    BadVarint,
    #[error("unknown {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u8 },
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u8),
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// Appends encodings to a byte vector.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
        }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn u8(&mut self, value: u8) {
        self.buf.push(value);
    }

    /// LEB128, shortest form.
    pub fn varint(&mut self, mut value: u64) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                self.buf.push(byte);
                return;
            }
            self.buf.push(byte | 0x80);
        }
    }

    /// Fixed-size bytes, no length prefix.
    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self, bytes: &[u8]) {
        self.varint(bytes.len() as u64);
        self.buf.extend_from_slice(bytes);
    }
}

/// Reads encodings from a byte slice; every read is checked.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    input: &'a [u8],
}

/// Longest LEB128 encoding of a u64.
const MAX_VARINT_LEN: usize = 10;

impl<'a> Reader<'a> {
    pub fn new(input: &'a [u8]) -> Self {
        Self { input }
    }

    pub fn remaining(&self) -> usize {
        self.input.len()
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.input
    }

    pub fn finish(self) -> Result<(), DecodeError> {
        match self.input.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let (&first, rest) = self
            .input
            .split_first()
            .ok_or(DecodeError::UnexpectedEnd(what))?;
        self.input = rest;
        Ok(first)
    }

    pub fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        for index in 0..MAX_VARINT_LEN {
            let byte = self.u8(what)?;
            let payload = u64::from(byte & 0x7f);
            let shift = 7 * index as u32;
            if index == MAX_VARINT_LEN - 1 && payload > 1 {
                return Err(DecodeError::BadVarint);
            }
            value |= payload << shift;
            if byte & 0x80 == 0 {
                // Shortest form only: a final zero byte after the first is padding.
                if index > 0 && byte == 0 {
                    return Err(DecodeError::BadVarint);
                }
                return Ok(value);
            }
        }
        Err(DecodeError::BadVarint)
    }

    /// A varint that must not exceed `max`.
    pub fn bounded(&mut self, what: &'static str, max: u64) -> Result<u64, DecodeError> {
        let value = self.varint(what)?;
        if value > max {
            return Err(DecodeError::TooLarge {
                what,
                got: value,
                max,
            });
        }
        Ok(value)
    }

    /// A count of items that follow, each at least `min_item_len` bytes long: bounded by `max`
    /// and by what the input can still hold, so that no caller allocates for absent items.
    pub fn count(
        &mut self,
        what: &'static str,
        max: usize,
        min_item_len: usize,
    ) -> Result<usize, DecodeError> {
        let count = self.bounded(what, max as u64)? as usize;
        if count.saturating_mul(min_item_len.max(1)) > self.remaining() {
            return Err(DecodeError::UnexpectedEnd(what));
        }
        Ok(count)
    }

    pub fn raw(&mut self, what: &'static str, len: usize) -> Result<&'a [u8], DecodeError> {
        if self.input.len() < len {
            return Err(DecodeError::UnexpectedEnd(what));
        }
        let (head, rest) = self.input.split_at(len);
        self.input = rest;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let slice = self.raw(what, N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    /// Length-prefixed bytes of at most `max` bytes.
    pub fn bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.bounded(what, max as u64)? as usize;
        self.raw(what, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn varint_edges() {
        for value in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut w = Writer::new();
            w.varint(value);
            let bytes = w.into_bytes();
            let mut r = Reader::new(&bytes);
            assert_eq!(r.varint("v").unwrap(), value);
            r.finish().unwrap();
        }
        // Overlong zero and an 11-byte encoding are rejected.
        assert_eq!(
            Reader::new(&[0x80, 0x00]).varint("v"),
            Err(DecodeError::BadVarint)
        );
        assert!(Reader::new(&[0xff; 11]).varint("v").is_err());
        // u64::MAX + 1 does not fit.
        let mut too_big = vec![0xff; 9];
        too_big.push(0x02);
        assert_eq!(
            Reader::new(&too_big).varint("v"),
            Err(DecodeError::BadVarint)
        );
    }

    #[test]
    fn counts_cannot_promise_more_than_the_input_holds() {
        let mut w = Writer::new();
        w.varint(1000);
        let bytes = w.into_bytes();
        assert!(matches!(
            Reader::new(&bytes).count("items", 5000, 32),
            Err(DecodeError::UnexpectedEnd(_))
        ));
        assert!(matches!(
            Reader::new(&bytes).count("items", 10, 1),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn varint_round_trip(value: u64) {
            let mut w = Writer::new();
            w.varint(value);
            let bytes = w.into_bytes();
            let mut r = Reader::new(&bytes);
            prop_assert_eq!(r.varint("v").unwrap(), value);
            prop_assert!(r.finish().is_ok());
        }

        #[test]
        fn reading_arbitrary_bytes_never_panics(bytes: Vec<u8>) {
            let mut r = Reader::new(&bytes);
            let _ = r.varint("a");
            let _ = r.bytes("b", 64);
            let _ = r.count("c", 100, 3);
            let _ = r.array::<32>("d");
        }
    }
}
