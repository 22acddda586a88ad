//! Length-prefixed framing for `tokio_util::codec`.
//!
//! A frame is a `u32` big-endian length (of header + body), then the 8-byte header (version,
//! opcode, flags, request id), then the body. The decoder hands out the body as a `Bytes` slice
//! of the read buffer, so message decoding borrows instead of copying. It never reserves memory
//! for a length it has only been told about: the buffer grows with the bytes that really arrive.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{FRAME_LEN_MAX, HEADER_LEN, LEN_PREFIX, Message, Opcode, PROTOCOL_VERSION, WireError};

/// One frame off the wire, header decoded, body still raw.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub version: u8,
    /// Raw opcode byte; [`Frame::message`] checks it, so that an unknown opcode can still be
    /// answered with an Error frame carrying the request id.
    pub opcode: u8,
    pub flags: u16,
    pub request_id: u32,
    pub body: Bytes,
}

impl Frame {
    /// Checks version and opcode and decodes the body.
    pub fn message(&self) -> Result<Message, WireError> {
        if self.version != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion(self.version));
        }
        Message::decode(Opcode::from_u8(self.opcode)?, self.body.clone())
    }
}

/// The framing codec. `max_len` bounds the length prefix (header + body).
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_len: usize,
}

impl FrameCodec {
    pub fn new(max_len: usize) -> FrameCodec {
        FrameCodec { max_len }
    }
}

impl Default for FrameCodec {
    fn default() -> FrameCodec {
        FrameCodec::new(FRAME_LEN_MAX)
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        if src.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max_len {
            return Err(WireError::FrameTooLarge {
                len,
                max: self.max_len,
            });
        }
        if len < HEADER_LEN {
            return Err(WireError::FrameTooShort {
                len,
                min: HEADER_LEN,
            });
        }
        if src.len() < LEN_PREFIX + len {
            return Ok(None);
        }
        src.advance(LEN_PREFIX);
        let mut frame = src.split_to(len);
        let version = frame.get_u8();
        let opcode = frame.get_u8();
        let flags = frame.get_u16();
        let request_id = frame.get_u32();
        Ok(Some(Frame {
            version,
            opcode,
            flags,
            request_id,
            body: frame.freeze(),
        }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(WireError::Truncated {
                what: "frame (connection closed mid-frame)",
            }),
        }
    }
}

/// Pre-encoded frames (from [`encode_frame`]) are written as they are: the sync path encodes a
/// batch once and hands the same `Bytes` to every peer.
impl Encoder<Bytes> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), WireError> {
        dst.extend_from_slice(&item);
        Ok(())
    }
}

/// Appends a whole frame (length, header, body) for `msg` to `out`.
///
/// # Panics
/// If the message breaks a limit the decoder enforces (a string or a list too long, the frame
/// over [`FRAME_LEN_MAX`]): a peer would refuse the frame and close the connection, so sending it
/// is a bug of the caller. Where the message comes from outside (an SDK caller's request), use
/// [`try_encode_frame_into`].
pub fn encode_frame_into(out: &mut BytesMut, request_id: u32, flags: u16, msg: &Message) {
    if let Err(e) = try_encode_frame_into(out, request_id, flags, msg) {
        panic!(
            "refusing to encode a {:?} frame the decoder would refuse: {e}",
            msg.opcode()
        );
    }
}

/// Appends a whole frame for `msg` to `out`, or, when the message breaks a limit the decoder
/// enforces, leaves `out` as it was and says which.
pub fn try_encode_frame_into(
    out: &mut BytesMut,
    request_id: u32,
    flags: u16,
    msg: &Message,
) -> Result<(), WireError> {
    try_encode_raw_frame_into(out, msg.opcode() as u8, request_id, flags, |b| {
        msg.try_encode_body(b)
    })
}

/// Appends a frame whose body is written by `body`; the length prefix is patched afterwards.
///
/// # Panics
/// If the frame is longer than [`FRAME_LEN_MAX`] (see [`encode_frame_into`]).
pub fn encode_raw_frame_into(
    out: &mut BytesMut,
    opcode: u8,
    request_id: u32,
    flags: u16,
    body: impl FnOnce(&mut BytesMut),
) {
    let framed = try_encode_raw_frame_into(out, opcode, request_id, flags, |b| {
        body(b);
        Ok(())
    });
    if let Err(e) = framed {
        panic!("refusing to send a frame of opcode 0x{opcode:02x} the decoder would refuse: {e}");
    }
}

/// Appends a frame whose body is written by `body`, or, when `body` fails or the frame would be
/// longer than [`FRAME_LEN_MAX`], leaves `out` as it was and says why.
pub fn try_encode_raw_frame_into(
    out: &mut BytesMut,
    opcode: u8,
    request_id: u32,
    flags: u16,
    body: impl FnOnce(&mut BytesMut) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let start = out.len();
    out.put_u32(0);
    out.put_u8(PROTOCOL_VERSION);
    out.put_u8(opcode);
    out.put_u16(flags);
    out.put_u32(request_id);
    if let Err(e) = body(out) {
        out.truncate(start);
        return Err(e);
    }
    let len = out.len() - start - LEN_PREFIX;
    if len > FRAME_LEN_MAX {
        out.truncate(start);
        return Err(WireError::FrameTooLarge {
            len,
            max: FRAME_LEN_MAX,
        });
    }
    out[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Byte offset of the flags in a whole frame (after the length prefix, version and opcode).
const FLAGS_AT: usize = LEN_PREFIX + 2;

/// Sets the flags of a whole encoded frame (a streamed answer learns that a frame is not its
/// last only when the next one is ready).
pub fn set_frame_flags(frame: &mut [u8], flags: u16) {
    frame[FLAGS_AT..FLAGS_AT + 2].copy_from_slice(&flags.to_be_bytes());
}

/// One whole frame for `msg`, ready to write.
///
/// # Panics
/// As [`encode_frame_into`].
pub fn encode_frame(request_id: u32, flags: u16, msg: &Message) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    encode_frame_into(&mut out, request_id, flags, msg);
    out.freeze()
}
