//! The primitive encodings every message body is built from (wire-spec.md, "Primitive types").
//!
//! Integers are big-endian. A string is a `u16` byte length and that many UTF-8 bytes. A map is a
//! `u16` entry count and that many (key, value) string pairs. Lists carry their count before the
//! items. The reader borrows: a decoded [`Text`] is a slice of the frame's `Bytes`, no copy.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::WireError;

/// A UTF-8 string that borrows the frame it was decoded from.
///
/// Construction checks UTF-8 once; afterwards `as_str` is free.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Text(Bytes);

impl Text {
    pub const fn from_static(s: &'static str) -> Text {
        Text(Bytes::from_static(s.as_bytes()))
    }

    /// Checks `bytes` for UTF-8 and wraps them without copying.
    pub fn from_utf8(bytes: Bytes, what: &'static str) -> Result<Text, WireError> {
        std::str::from_utf8(&bytes).map_err(|_| WireError::BadUtf8 { what })?;
        Ok(Text(bytes))
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor either checked the bytes with `str::from_utf8` or took them
        // from a `String`/`&str`, and the bytes are immutable afterwards.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(Bytes::from(s))
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads primitives off a frame body; every read checks that the bytes are there first.
pub struct Reader {
    buf: Bytes,
}

impl Reader {
    pub fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn need(&self, n: usize, what: &'static str) -> Result<(), WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated { what });
        }
        Ok(())
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        self.need(2, what)?;
        Ok(self.buf.get_u16())
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        self.need(8, what)?;
        Ok(self.buf.get_u64())
    }

    pub fn f64(&mut self, what: &'static str) -> Result<f64, WireError> {
        self.need(8, what)?;
        Ok(self.buf.get_f64())
    }

    pub fn bool(&mut self, what: &'static str) -> Result<bool, WireError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::InvalidValue {
                what,
                reason: "a boolean byte must be 0 or 1",
            }),
        }
    }

    /// A `u16`-length string of at most `max` bytes.
    pub fn text(&mut self, what: &'static str, max: usize) -> Result<Text, WireError> {
        let len = self.u16(what)? as usize;
        if len > max {
            return Err(WireError::StringTooLong { what, len, max });
        }
        self.need(len, what)?;
        Text::from_utf8(self.buf.split_to(len), what)
    }

    /// `n` raw bytes, borrowed.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, WireError> {
        self.need(n, what)?;
        Ok(self.buf.split_to(n))
    }

    /// A list count that is checked against its limit and against the bytes actually present
    /// (each item takes at least `min_item_len` bytes), so that no caller ever reserves memory
    /// for items a hostile length only claims to send.
    pub fn count(
        &self,
        count: usize,
        what: &'static str,
        max: usize,
        min_item_len: usize,
    ) -> Result<usize, WireError> {
        if count > max {
            return Err(WireError::CountTooLarge { what, count, max });
        }
        if count.saturating_mul(min_item_len) > self.buf.len() {
            return Err(WireError::Truncated { what });
        }
        Ok(count)
    }

    /// Fails unless every byte of the body was consumed.
    pub fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes {
                count: self.buf.len(),
            })
        }
    }
}

/// Appends a `u16`-length string. The caller has validated the length against the limits.
pub fn put_text(out: &mut BytesMut, s: &str) {
    debug_assert!(
        s.len() <= u16::MAX as usize,
        "string longer than u16 on encode"
    );
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}
