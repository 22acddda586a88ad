//! Bad input never hurts others (design.md §4): a malformed, truncated, oversized or hostile
//! frame is answered with an Error frame where the stream allows, closes that one connection,
//! changes nothing in the store, and a client connected before the attack keeps working.
//!
//! Attacks are built from valid frames (`encode_frame`) and corrupted by hand. Byte offsets of
//! a frame: length prefix 0..4, version 4, opcode 5, flags 6..8, request id 8..12, body 12...

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use distro::client::Client;
use distro::model::{Instance, ServiceName};
use distro::server::ServerHandle;
use distro::wire::{
    ErrorBody, ErrorCode, Message, Opcode, Register, encode_frame, encode_raw_frame_into,
};
use tokio::io::AsyncWriteExt;

const VERSION_AT: usize = 4;
const OPCODE_AT: usize = 5;
const BODY_AT: usize = 12;

/// A server with one instance registered by a client that stays connected through the attack.
struct Scene {
    h: ServerHandle,
    bystander: Client,
    svc: ServiceName,
    len_before: usize,
    query_before: Bytes,
}

fn store_query(h: &ServerHandle, svc: &ServiceName) -> Bytes {
    h.node.store.query(svc, "", false)
}

impl Scene {
    async fn new() -> Scene {
        let h = start().await;
        let svc = name("victim");
        let bystander = client(&[h.addr]).await;
        bystander
            .register(inst(&svc, "10.9.0.1", 80))
            .await
            .unwrap();
        Scene {
            len_before: h.node.store.len(),
            query_before: store_query(&h, &svc),
            h,
            bystander,
            svc,
        }
    }

    /// Sends `bytes` on a fresh connection (after a Hello if `hello`), half-closes it if
    /// `then_eof`, and returns every frame the server sent before closing the connection.
    async fn attack(&self, hello: bool, bytes: &[u8], then_eof: bool) -> Vec<distro::wire::Frame> {
        let mut raw = if hello {
            Raw::open(self.h.addr).await.0
        } else {
            Raw::connect(self.h.addr).await
        };
        raw.write(bytes).await;
        if then_eof {
            raw.stream.shutdown().await.unwrap();
        }
        raw.until_closed().await
    }

    /// Attacks and checks the answer: the last frame is an Error with `code` for `request_id`,
    /// and the server closed the connection.
    async fn expect_error(
        &self,
        hello: bool,
        bytes: &[u8],
        then_eof: bool,
        code: ErrorCode,
        request_id: u32,
    ) -> ErrorBody {
        let frames = self.attack(hello, bytes, then_eof).await;
        let (rid, e) = last_error(&frames);
        assert_eq!(e.kind(), Some(code), "error frame: {e:?}");
        assert_eq!(rid, request_id, "the error answers request {request_id}");
        assert!(!e.message.is_empty(), "the error says what was wrong");
        e
    }

    /// Nothing changed, and the client connected before the attack still queries and registers.
    async fn check_unharmed(self) {
        assert_eq!(self.h.node.store.len(), self.len_before);
        assert_eq!(store_query(&self.h, &self.svc), self.query_before);
        let s = self.bystander.query(&self.svc, false).await.unwrap();
        assert_eq!(addrs_of(&s), ["10.9.0.1:80"]);
        self.bystander
            .register(inst(&self.svc, "10.9.0.2", 80))
            .await
            .unwrap();
        let s = self.bystander.query(&self.svc, false).await.unwrap();
        assert_eq!(addrs_of(&s), ["10.9.0.1:80", "10.9.0.2:80"]);
        assert_eq!(self.h.node.store.len(), self.len_before + 1);
        // New connections are served too.
        let (mut raw, _) = Raw::open(self.h.addr).await;
        assert_eq!(raw.call(&Message::Ping(9)).await, Message::Pong(9));
        self.bystander.close();
        self.h.stop().await;
    }
}

fn register_frame(request_id: u32, instances: Vec<Instance>) -> BytesMut {
    BytesMut::from(
        &encode_frame(
            request_id,
            0,
            &Message::Register(Register {
                session_bound: false,
                instances,
            }),
        )[..],
    )
}

/// Rewrites the length prefix after the frame was cut or extended.
fn fix_len(frame: &mut BytesMut) {
    let len = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
}

fn attacker_instance(port: u16) -> Instance {
    inst(&name("victim"), "10.66.6.6", port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes() {
    let scene = Scene::new().await;
    // Text where a frame should be: "GET " read as a length is about 1.2 GB.
    scene
        .expect_error(
            false,
            b"GET / HTTP/1.1\r\nHost: registry\r\n\r\n",
            false,
            ErrorCode::TooLarge,
            0,
        )
        .await;
    // A length shorter than the header itself.
    scene
        .expect_error(
            false,
            &[0, 0, 0, 3, 0xde, 0xad, 0xbe],
            false,
            ErrorCode::BadFrame,
            0,
        )
        .await;
    // All zeros: a zero length prefix.
    scene
        .expect_error(true, &[0u8; 32], false, ErrorCode::BadFrame, 0)
        .await;
    scene.check_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_then_eof() {
    let scene = Scene::new().await;
    let frame = register_frame(5, vec![attacker_instance(1)]);
    for cut in [2, 7, BODY_AT, frame.len() / 2, frame.len() - 1] {
        let e = scene
            .expect_error(true, &frame[..cut], true, ErrorCode::BadFrame, 0)
            .await;
        assert!(
            e.message.contains("closed mid-frame") || e.message.contains("ended"),
            "cut at {cut}: {e:?}"
        );
    }
    scene.check_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_prefix_of_four_gib() {
    let scene = Scene::new().await;
    let mut bytes = vec![0xFF, 0xFF, 0xFF, 0xFF];
    bytes.extend_from_slice(&[1, Opcode::Register as u8, 0, 0, 0, 0, 0, 1]);
    bytes.extend_from_slice(&[0u8; 64]);
    let e = scene
        .expect_error(true, &bytes, false, ErrorCode::TooLarge, 0)
        .await;
    assert!(e.message.contains("limit"), "{e:?}");
    // Just over the limit is refused the same way.
    let over = (distro::wire::FRAME_LEN_MAX as u32 + 1).to_be_bytes();
    scene
        .expect_error(true, &over, false, ErrorCode::TooLarge, 0)
        .await;
    scene.check_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_opcode() {
    let scene = Scene::new().await;
    for opcode in [0x00u8, 0x3F, 0xEE, 0xFF] {
        let mut frame = BytesMut::from(&encode_frame(42, 0, &Message::Ping(1))[..]);
        frame[OPCODE_AT] = opcode;
        let e = scene
            .expect_error(true, &frame, false, ErrorCode::UnknownOpcode, 42)
            .await;
        assert!(e.message.contains(&format!("{opcode:02x}")), "{e:?}");
    }
    scene.check_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_service_name() {
    let scene = Scene::new().await;
    let marker = "zzzzzzzz";
    let mut frame = register_frame(
        6,
        vec![inst(&name(marker), "10.66.6.6", 1), attacker_instance(2)],
    );
    let at = frame
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .unwrap();
    frame[at..at + 4].copy_from_slice(&[0xC3, 0x28, 0xFF, 0xFE]);
    let e = scene
        .expect_error(true, &frame, false, ErrorCode::BadFrame, 6)
        .await;
    assert!(e.message.contains("UTF-8"), "{e:?}");
    scene.check_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_count_claims_more_instances_than_it_carries() {
    let scene = Scene::new().await;
    for count in [4096u16, 2, u16::MAX] {
        let mut frame = BytesMut::new();
        encode_raw_frame_into(&mut frame, Opcode::Register as u8, 7, 0, |b| {
            b.put_u8(0);
            b.put_u16(count);
            b.put_slice(&[0u8; 20]);
        });
        scene
            .expect_error(true, &frame, false, ErrorCode::BadFrame, 7)
            .await;
    }
    // A real first instance followed by a cut-short second one: the whole frame is refused,
    // so not even the first instance reaches the store.
    let mut frame = register_frame(8, vec![attacker_instance(1), attacker_instance(2)]);
    frame.truncate(frame.len() - 5);
    fix_len(&mut frame);
    scene
        .expect_error(true, &frame, false, ErrorCode::BadFrame, 8)
        .await;
    scene.check_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_protocol_version() {
    let scene = Scene::new().await;
    for version in [0u8, 2, 0xFF] {
        let mut frame = register_frame(9, vec![attacker_instance(1)]);
        frame[VERSION_AT] = version;
        let e = scene
            .expect_error(true, &frame, false, ErrorCode::UnsupportedVersion, 9)
            .await;
        assert!(e.message.contains(&version.to_string()), "{e:?}");
    }
    scene.check_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_length_body_where_one_is_required() {
    let scene = Scene::new().await;
    for opcode in [
        Opcode::Register,
        Opcode::Deregister,
        Opcode::Beat,
        Opcode::Query,
        Opcode::Subscribe,
        Opcode::Hello,
        Opcode::Ping,
    ] {
        let mut frame = BytesMut::new();
        encode_raw_frame_into(&mut frame, opcode as u8, 10, 0, |_| {});
        scene
            .expect_error(false, &frame, false, ErrorCode::BadFrame, 10)
            .await;
    }
    scene.check_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_values_inside_a_well_framed_register() {
    let scene = Scene::new().await;
    // Bytes after the end of the body.
    let mut frame = register_frame(11, vec![attacker_instance(1)]);
    frame.put_u8(0);
    fix_len(&mut frame);
    scene
        .expect_error(true, &frame, false, ErrorCode::BadFrame, 11)
        .await;
    // The session-bound flag is a boolean: 0 or 1.
    let mut frame = register_frame(12, vec![attacker_instance(1)]);
    frame[BODY_AT] = 2;
    scene
        .expect_error(true, &frame, false, ErrorCode::BadFrame, 12)
        .await;
    // A weight that is not a number.
    let mut nan = attacker_instance(1);
    nan.weight = f64::NAN;
    scene
        .expect_error(
            true,
            &register_frame(13, vec![nan]),
            false,
            ErrorCode::BadFrame,
            13,
        )
        .await;
    scene.check_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earlier_requests_are_answered_and_later_ones_are_never_applied() {
    let scene = Scene::new().await;
    let mut bytes = BytesMut::new();
    bytes.extend_from_slice(&encode_frame(1, 0, &Message::Ping(77)));
    let mut bad = BytesMut::from(&encode_frame(2, 0, &Message::Ping(78))[..]);
    bad[OPCODE_AT] = 0xEE;
    bytes.extend_from_slice(&bad);
    // Valid, but after the bad frame: the stream can no longer be trusted.
    bytes.extend_from_slice(&register_frame(3, vec![attacker_instance(1)]));
    let frames = scene.attack(true, &bytes, false).await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0].request_id, 1);
    assert_eq!(frames[0].message().unwrap(), Message::Pong(77));
    let (rid, e) = last_error(&frames);
    assert_eq!((rid, e.kind()), (2, Some(ErrorCode::UnknownOpcode)));
    scene.check_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_sent_as_a_request_is_refused_but_the_connection_stays() {
    // Well-formed but not a request: refused with NotAllowed; the stream is still in sync, so
    // the connection stays open.
    let scene = Scene::new().await;
    let (mut raw, _) = Raw::open(scene.h.addr).await;
    for msg in [Message::Ack(1), Message::Pong(1), Message::BeatAck(vec![0])] {
        match raw.call(&msg).await {
            Message::Error(e) => assert_eq!(e.kind(), Some(ErrorCode::NotAllowed), "{e:?}"),
            other => panic!("expected NotAllowed, got {other:?}"),
        }
    }
    assert_eq!(raw.call(&Message::Ping(3)).await, Message::Pong(3));
    drop(raw);
    scene.check_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_id_zero_ends_the_connection_at_connection_level() {
    // Request id 0 is what pushes and connection-level errors carry: the node cannot answer
    // such a request without the answer reading as "this connection is over", so it is.
    let scene = Scene::new().await;
    let ping = encode_frame(0, 0, &Message::Ping(7));
    let e = scene
        .expect_error(true, &ping, false, ErrorCode::NotAllowed, 0)
        .await;
    assert!(e.message.contains("request id 0"), "{e:?}");
    scene.check_unharmed().await;
}
