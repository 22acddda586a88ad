//! Everything that can be wrong with bytes that arrive on a connection.
//!
//! Each variant is named after the condition, carries what a log line needs to explain it, and
//! maps to one wire error code (see `wire-spec.md`, "Errors"). Decoding never panics: every
//! malformed input ends up here.

use thiserror::Error;

use super::ErrorCode;

#[derive(Debug, Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("frame length {len} is shorter than the {min}-byte header")]
    FrameTooShort { len: usize, min: usize },
    #[error("frame body ended inside {what}")]
    Truncated { what: &'static str },
    #[error("unknown opcode 0x{0:02x}")]
    UnknownOpcode(u8),
    #[error("protocol version {0} is not supported (this node speaks 1)")]
    UnsupportedVersion(u8),
    #[error("{what} is not valid UTF-8")]
    BadUtf8 { what: &'static str },
    #[error("{what} count {count} exceeds the limit of {max}")]
    CountTooLarge {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    StringTooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{count} unexpected bytes after the end of the body")]
    TrailingBytes { count: usize },
    #[error("invalid {what}: {reason}")]
    InvalidValue {
        what: &'static str,
        reason: &'static str,
    },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl WireError {
    /// The code an Error frame carries for this condition.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::UnknownOpcode(_) => ErrorCode::UnknownOpcode,
            WireError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            WireError::FrameTooLarge { .. } => ErrorCode::TooLarge,
            _ => ErrorCode::BadFrame,
        }
    }
}
