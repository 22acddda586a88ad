//! Arbitrary bytes through `FrameCodec`, arriving in arbitrary pieces, then `Frame::message()`
//! on every frame.
//!
//! Input: a split byte (picks the piece sizes), a limit byte (>= 0xF0: a small frame limit, to
//! reach FrameTooLarge; otherwise the wire's `FRAME_LEN_MAX`), then the stream.
//!
//! Checks: nothing panics; the frames (and the error that ends the stream, if any) do not
//! depend on how the bytes were split; no frame exceeds the limit; a frame whose message decodes
//! re-encodes (`encode_frame`) to the same header and body bytes, which decode to the same
//! message.

#![no_main]

use bytes::BytesMut;
use distro::wire::{FRAME_LEN_MAX, Frame, FrameCodec, HEADER_LEN, encode_frame};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let [split, limit, stream @ ..] = data else {
        return;
    };
    let max_len = if *limit >= 0xF0 {
        HEADER_LEN + (*limit & 0x0F) as usize * 8
    } else {
        FRAME_LEN_MAX
    };
    let whole = decode(max_len, &[stream]);
    let pieces = decode(max_len, &split_into_pieces(stream, *split));
    assert_eq!(
        whole, pieces,
        "the frames depend on how the bytes arrived (split byte {split:#04x})"
    );
    for frame in &whole.frames {
        assert!(
            HEADER_LEN + frame.body.len() <= max_len,
            "a frame of {} body bytes passed the limit of {max_len}",
            frame.body.len()
        );
        check_round_trip(frame);
    }
});

/// The frames of a stream and how it ended (`None`: cleanly; `Some`: the error, as text).
#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Frame>,
    error: Option<String>,
}

/// Decodes as `FramedRead` does: after each piece, every frame that is complete; at the end,
/// `decode_eof` until it yields nothing; the first error ends the stream.
fn decode(max_len: usize, pieces: &[&[u8]]) -> Outcome {
    let mut codec = FrameCodec::new(max_len);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let fail = |frames, e: distro::wire::WireError| Outcome {
        frames,
        error: Some(format!("{e:?}")),
    };
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return fail(frames, e),
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => break,
            Err(e) => return fail(frames, e),
        }
    }
    Outcome {
        frames,
        error: None,
    }
}

/// Cuts `stream` into pieces whose sizes follow a xorshift sequence seeded by `split`; the
/// largest piece size is picked by `split` too (from one byte at a time to 4 KiB).
fn split_into_pieces(stream: &[u8], split: u8) -> Vec<&[u8]> {
    const MAX_PIECE: [usize; 8] = [1, 2, 3, 5, 9, 17, 64, 4096];
    let max_piece = MAX_PIECE[split as usize % MAX_PIECE.len()];
    let mut state = 0x9E37_79B9u32 ^ (split as u32).wrapping_mul(0x0101_0101);
    let mut pieces = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (1 + state as usize % max_piece).min(rest.len());
        let (a, b) = rest.split_at(n);
        pieces.push(a);
        rest = b;
    }
    pieces
}

fn check_round_trip(frame: &Frame) {
    let msg = match frame.message() {
        Ok(m) => m,
        Err(e) => {
            // Every error maps to a code and a message an Error frame can carry.
            let _ = (e.code(), e.to_string());
            return;
        }
    };
    let bytes = encode_frame(frame.request_id, frame.flags, &msg);
    let mut buf = BytesMut::from(&bytes[..]);
    let again = FrameCodec::default()
        .decode(&mut buf)
        .unwrap_or_else(|e| panic!("re-encoded {msg:?} does not frame: {e}"))
        .unwrap_or_else(|| panic!("re-encoded {msg:?} is not a whole frame"));
    assert!(buf.is_empty(), "re-encoding {msg:?} left bytes over");
    assert_eq!(
        (again.version, again.opcode, again.flags, again.request_id),
        (frame.version, frame.opcode, frame.flags, frame.request_id),
        "re-encoding {msg:?} changed the header"
    );
    assert_eq!(
        again.body, frame.body,
        "re-encoding {msg:?} changed the body bytes (decoding accepted a non-canonical body)"
    );
    let decoded = again
        .message()
        .unwrap_or_else(|e| panic!("re-encoded {msg:?} does not decode: {e}"));
    assert_eq!(decoded, msg, "the round trip changed the message");
}
