//! The input of the `client_session` target (and, after one mode byte, of `peer_session`): a list of items, each
//! `kind: u8, len: u16 (big-endian), payload: len bytes`, written to the session in order.
//!
//! | kind % 4 | payload | written to the session as |
//! |---|---|---|
//! | 0 | opcode byte, then a message body (valid or not) | one frame with a correct header |
//! | 1 | bytes for [`crate::generate::client_message`] | one frame of the generated message |
//! | 2 | anything | the bytes as they are (garbage, partial or hostile frames) |
//! | 3 | a u16 | a pause of that many ms of (paused) tokio time, then a lease pass |
//!
//! Framed items carry their position in the input, counted from 1, as the request id.

use bytes::{Bytes, BytesMut};
use distro::wire::{HEADER_LEN, LEN_PREFIX, Message, Opcode, encode_frame, encode_raw_frame_into};

use crate::{Input, generate};

/// What the harness does for one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// One whole frame; `decodes` tells whether its message decodes (if not, the session
    /// answers with an Error frame and closes).
    Frame {
        bytes: Vec<u8>,
        request_id: u32,
        decodes: bool,
    },
    /// Bytes to write as they are.
    Raw(Vec<u8>),
    /// Let this many ms of tokio time pass, then run the store's lease duty.
    Pause(u64),
}

pub const KIND_BODY: u8 = 0;
pub const KIND_GENERATED: u8 = 1;
pub const KIND_RAW: u8 = 2;
pub const KIND_PAUSE: u8 = 3;

/// Reads the items of an input, generating messages with
/// [`crate::generate::client_message`]. Frames carry request ids from 1 up (0 is what pushes
/// carry).
pub fn parse(data: &[u8]) -> Vec<Item> {
    parse_with(data, generate::client_message)
}

/// [`parse`] with another message generator (the peer port's target uses its own).
pub fn parse_with(data: &[u8], generate: fn(&mut Input) -> Message) -> Vec<Item> {
    let mut inp = Input::new(data);
    let mut items = Vec::new();
    while !inp.is_empty() {
        let request_id = items.len() as u32 + 1;
        let kind = inp.u8() % 4;
        let len = inp.u16() as usize;
        let payload = inp.take(len);
        items.push(match kind {
            KIND_BODY => {
                let (&opcode, body) = payload.split_first().unwrap_or((&0, &[]));
                let mut out = BytesMut::new();
                encode_raw_frame_into(&mut out, opcode, request_id, 0, |b| {
                    b.extend_from_slice(body)
                });
                let decodes = Opcode::from_u8(opcode)
                    .and_then(|op| Message::decode(op, Bytes::copy_from_slice(body)))
                    .is_ok();
                Item::Frame {
                    bytes: out.to_vec(),
                    request_id,
                    decodes,
                }
            }
            KIND_GENERATED => {
                let msg = generate(&mut Input::new(payload));
                let bytes = encode_frame(request_id, 0, &msg);
                let body = bytes.slice(LEN_PREFIX + HEADER_LEN..);
                Item::Frame {
                    decodes: Message::decode(msg.opcode(), body).is_ok(),
                    bytes: bytes.to_vec(),
                    request_id,
                }
            }
            KIND_RAW => Item::Raw(payload.to_vec()),
            _ => Item::Pause(Input::new(payload).u16() as u64),
        });
    }
    items
}

/// The position of the first frame that does not decode, if the input has one and no raw
/// bytes (with raw bytes, where the frames begin and end is not known here).
pub fn first_bad_frame(items: &[Item]) -> Option<usize> {
    if items.iter().any(|i| matches!(i, Item::Raw(_))) {
        return None;
    }
    items
        .iter()
        .position(|i| matches!(i, Item::Frame { decodes: false, .. }))
}

/// Builds inputs item by item (the seed corpus and regression inputs).
#[derive(Debug, Default)]
pub struct Writer {
    pub bytes: Vec<u8>,
}

impl Writer {
    fn item(&mut self, kind: u8, payload: &[u8]) -> &mut Self {
        let len = u16::try_from(payload.len()).expect("an item's payload fits a u16 length");
        self.bytes.push(kind);
        self.bytes.extend_from_slice(&len.to_be_bytes());
        self.bytes.extend_from_slice(payload);
        self
    }

    /// A frame carrying `msg`.
    pub fn message(&mut self, msg: &Message) -> &mut Self {
        let mut payload = vec![msg.opcode() as u8];
        let mut body = BytesMut::new();
        msg.encode_body(&mut body);
        payload.extend_from_slice(&body);
        self.item(KIND_BODY, &payload)
    }

    /// A frame with this opcode byte and body.
    pub fn body(&mut self, opcode: u8, body: &[u8]) -> &mut Self {
        let mut payload = vec![opcode];
        payload.extend_from_slice(body);
        self.item(KIND_BODY, &payload)
    }

    /// A message generated from these bytes.
    pub fn generated(&mut self, choices: &[u8]) -> &mut Self {
        self.item(KIND_GENERATED, choices)
    }

    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.item(KIND_RAW, bytes)
    }

    pub fn pause_ms(&mut self, ms: u16) -> &mut Self {
        self.item(KIND_PAUSE, &ms.to_be_bytes())
    }
}
