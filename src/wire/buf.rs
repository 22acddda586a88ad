//! The primitive encodings every message body is built from (wire-spec.md, "Primitive types").
//!
//! Integers are big-endian. A string is a `u16` byte length and that many UTF-8 bytes. A map is a
//! `u16` entry count and that many (key, value) string pairs. Lists carry their count before the
//! items. The reader borrows: a decoded [`Text`] is a slice of the frame's `Bytes`, no copy.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::WireError;
use crate::model::Text;

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
        Text::from_utf8(self.buf.split_to(len)).map_err(|_| WireError::BadUtf8 { what })
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

/// Appends a `u16`-length string of at most `max` bytes: the limit the decoder enforces on
/// `what` (an encoder never sends what its decoder would refuse).
pub fn put_text(
    out: &mut BytesMut,
    s: &str,
    what: &'static str,
    max: usize,
) -> Result<(), WireError> {
    check_len(s, what, max)?;
    crate::model::key::put_str(out, s);
    Ok(())
}

/// Fails unless `s` is at most `max` bytes (the limit the decoder enforces on `what`).
pub fn check_len(s: &str, what: &'static str, max: usize) -> Result<(), WireError> {
    if s.len() > max {
        return Err(WireError::StringTooLong {
            what,
            len: s.len(),
            max,
        });
    }
    Ok(())
}

/// Appends a `u16` list count of at most `max` (the limit the decoder enforces on `what`).
pub fn put_count_u16(
    out: &mut BytesMut,
    count: usize,
    what: &'static str,
    max: usize,
) -> Result<(), WireError> {
    check_count(count, what, max.min(u16::MAX as usize))?;
    out.put_u16(count as u16);
    Ok(())
}

/// Appends a `u32` list count of at most `max` (the limit the decoder enforces on `what`).
pub fn put_count_u32(
    out: &mut BytesMut,
    count: usize,
    what: &'static str,
    max: usize,
) -> Result<(), WireError> {
    check_count(count, what, max.min(u32::MAX as usize))?;
    out.put_u32(count as u32);
    Ok(())
}

fn check_count(count: usize, what: &'static str, max: usize) -> Result<(), WireError> {
    if count > max {
        return Err(WireError::CountTooLarge { what, count, max });
    }
    Ok(())
}

/// Turns an encoding that broke a decoder's limit into a panic: for encoders whose input was
/// validated on its way in (the store's records, the node's answers), where such a value is a
/// bug and must not go out on the wire.
pub(crate) fn must(encoded: Result<(), WireError>, what: &str) {
    if let Err(e) = encoded {
        panic!("refusing to encode {what} the decoder would refuse: {e}");
    }
}
