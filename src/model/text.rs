//! [`Text`]: the string type of names, ips and metadata.

use std::fmt;

use bytes::Bytes;

/// An immutable UTF-8 string over [`Bytes`]: a decoded one is a slice of the frame it came in
/// (no copy), a built one owns its bytes. Construction checks UTF-8 once; `as_str` is free.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Text(Bytes);

impl Text {
    pub const fn from_static(s: &'static str) -> Text {
        Text(Bytes::from_static(s.as_bytes()))
    }

    /// Checks `bytes` for UTF-8 and wraps them without copying.
    pub fn from_utf8(bytes: Bytes) -> Result<Text, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
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

    /// A copy that owns exactly its bytes: a decoded Text keeps its whole frame alive, which a
    /// value stored for long (a session's key set, a subscription) should not.
    pub fn compact(&self) -> Text {
        Text(Bytes::copy_from_slice(&self.0))
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
