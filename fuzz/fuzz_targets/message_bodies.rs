//! Every message body decoder, client and cluster ones.
//!
//! Input: an opcode byte (an opcode's own value picks it; any other value picks one of all
//! opcodes by its remainder), then the body.
//!
//! Checks: `Message::decode` never panics; a body that decodes is the message of that opcode,
//! and `encode_body` gives back exactly the input bytes (the encoding is canonical), which
//! decode to the same message.

#![no_main]

use bytes::{Bytes, BytesMut};
use distro::wire::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [selector, body @ ..] = data else {
        return;
    };
    let opcode = distro_fuzz::opcode_of(*selector);
    let body = Bytes::copy_from_slice(body);
    let msg = match Message::decode(opcode, body.clone()) {
        Ok(m) => m,
        Err(e) => {
            let _ = (e.code(), e.to_string());
            return;
        }
    };
    assert_eq!(msg.opcode(), opcode, "{opcode:?} decoded as {msg:?}");
    let mut out = BytesMut::new();
    msg.encode_body(&mut out);
    assert_eq!(
        &out[..],
        &body[..],
        "{msg:?} re-encodes to other bytes than it was decoded from"
    );
    let again = Message::decode(opcode, out.freeze())
        .unwrap_or_else(|e| panic!("re-encoded {msg:?} does not decode: {e}"));
    assert_eq!(again, msg, "the round trip changed the message");
});
