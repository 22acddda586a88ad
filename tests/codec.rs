//! The codec against generated input: every message kind and SyncRecord round-trip bit for bit,
//! and no byte sequence makes the decoder panic, over-allocate or accept a non-canonical frame.
//!
//! A tracking global allocator records the largest single allocation a closure makes on its
//! thread, so the tests can show that a hostile length or count reserves nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{BufMut, Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio_util::codec::Decoder;

use distro::model::*;
use distro::wire::*;

// ---------------------------------------------------------------------------------------------
// Allocation tracking

struct Tracking;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the allocator also runs while thread-locals are being torn down.
    let _ = TRACKING.try_with(|on| {
        if on.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

// SAFETY: every call is passed on unchanged to the system allocator.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Runs `f` and returns its result and the largest single allocation it made on this thread
/// (0 if it allocated nothing).
fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|l| l.set(0));
    TRACKING.with(|t| t.set(true));
    let r = f();
    TRACKING.with(|t| t.set(false));
    (r, LARGEST.with(|l| l.get()))
}

#[test]
fn the_allocation_tracker_sees_allocations() {
    let (v, largest) = largest_allocation(|| Vec::<u8>::with_capacity(10_000));
    assert!(largest >= 10_000, "tracker saw {largest}");
    drop(v);
    let ((), largest) = largest_allocation(|| {});
    assert_eq!(largest, 0);
}

// ---------------------------------------------------------------------------------------------
// Strategies: valid values within every limit

/// A string of at most `max` bytes: mostly short and of any characters (control characters and
/// multi-byte ones included), sometimes empty or exactly at the limit.
fn text(max: usize) -> BoxedStrategy<Text> {
    prop_oneof![
        8 => vec(any::<char>(), 0..12).prop_map(String::from_iter),
        1 => Just(String::new()),
        1 => Just("x".repeat(max)),
        1 => Just("é".repeat(max / 2)),
    ]
    .prop_filter("within the limit", move |s| s.len() <= max)
    .prop_map(Text::from)
    .boxed()
}

fn short_text() -> BoxedStrategy<Text> {
    vec(any::<char>(), 0..6)
        .prop_map(|c| Text::from(String::from_iter(c)))
        .boxed()
}

fn service_name() -> BoxedStrategy<ServiceName> {
    (text(NAME_LEN_MAX), text(NAME_LEN_MAX), text(NAME_LEN_MAX))
        .prop_map(|(namespace, group, service)| ServiceName {
            namespace,
            group,
            service,
        })
        .boxed()
}

fn instance_key() -> BoxedStrategy<InstanceKey> {
    (
        service_name(),
        text(NAME_LEN_MAX),
        text(IP_LEN_MAX),
        any::<u16>(),
    )
        .prop_map(|(service, cluster, ip, port)| InstanceKey {
            service,
            cluster,
            ip,
            port,
        })
        .boxed()
}

/// Any finite weight (the wire carries any; the server checks the range), with the edge cases.
fn weight() -> BoxedStrategy<f64> {
    prop_oneof![
        4 => any::<f64>().prop_filter("finite", |w| w.is_finite()),
        2 => 0.0..=10_000.0f64,
        1 => Just(0.0),
        1 => Just(-0.0),
        1 => Just(f64::MAX),
        1 => Just(f64::MIN_POSITIVE),
        1 => Just(5e-324),
    ]
    .boxed()
}

fn lease() -> BoxedStrategy<Lease> {
    (any::<u32>(), any::<u32>(), any::<u32>())
        .prop_map(|(beat_ms, unhealthy_ms, expire_ms)| Lease {
            beat_ms,
            unhealthy_ms,
            expire_ms,
        })
        .boxed()
}

fn metadata() -> BoxedStrategy<Metadata> {
    prop_oneof![
        6 => vec((text(META_KEY_LEN_MAX), text(META_VALUE_LEN_MAX)), 0..4),
        1 => vec((short_text(), short_text()), META_ENTRIES_MAX..=META_ENTRIES_MAX),
    ]
    .boxed()
}

fn instance() -> BoxedStrategy<Instance> {
    (
        instance_key(),
        weight(),
        any::<bool>(),
        any::<bool>(),
        lease(),
        metadata(),
    )
        .prop_map(
            |(key, weight, healthy, enabled, lease, metadata)| Instance {
                key,
                weight,
                healthy,
                enabled,
                lease,
                metadata,
            },
        )
        .boxed()
}

fn instance_view() -> BoxedStrategy<InstanceView> {
    (
        text(NAME_LEN_MAX),
        text(IP_LEN_MAX),
        any::<u16>(),
        weight(),
        any::<bool>(),
        any::<bool>(),
        metadata(),
    )
        .prop_map(
            |(cluster, ip, port, weight, healthy, enabled, metadata)| InstanceView {
                cluster,
                ip,
                port,
                weight,
                healthy,
                enabled,
                metadata,
            },
        )
        .boxed()
}

fn snapshot() -> BoxedStrategy<ServiceSnapshot> {
    (service_name(), any::<u64>(), vec(instance_view(), 0..4))
        .prop_map(|(name, revision, instances)| ServiceSnapshot {
            name,
            revision,
            instances,
        })
        .boxed()
}

fn view_key() -> BoxedStrategy<ViewKey> {
    (text(NAME_LEN_MAX), text(IP_LEN_MAX), any::<u16>())
        .prop_map(|(cluster, ip, port)| ViewKey { cluster, ip, port })
        .boxed()
}

fn delta() -> BoxedStrategy<ServiceDelta> {
    (
        service_name(),
        any::<u64>(),
        any::<u64>(),
        vec(view_key(), 0..4),
        vec(instance_view(), 0..4),
    )
        .prop_map(
            |(name, base_revision, revision, removed, updated)| ServiceDelta {
                name,
                base_revision,
                revision,
                removed,
                updated,
            },
        )
        .boxed()
}

fn version() -> BoxedStrategy<Version> {
    (any::<u64>(), any::<u16>())
        .prop_map(|(hlc, origin)| Version { hlc, origin })
        .boxed()
}

fn sync_record() -> BoxedStrategy<SyncRecord> {
    (
        instance_key(),
        version(),
        any::<[bool; 4]>(),
        weight(),
        lease(),
        any::<u64>(),
        metadata(),
    )
        .prop_map(
            |(
                key,
                version,
                [alive, healthy, enabled, lapsed],
                weight,
                lease,
                session,
                metadata,
            )| {
                SyncRecord {
                    key,
                    version,
                    alive,
                    healthy,
                    enabled,
                    lapsed,
                    weight,
                    lease,
                    session,
                    metadata,
                }
            },
        )
        .boxed()
}

fn keys(max: usize) -> BoxedStrategy<Vec<InstanceKey>> {
    vec(instance_key(), 0..6.min(max + 1)).boxed()
}

/// Valid messages of the kind `op`. Exhaustive over [`Opcode`], so a new message kind does not
/// compile until it has a strategy here.
fn message_of(op: Opcode) -> BoxedStrategy<Message> {
    match op {
        Opcode::Hello => (any::<u8>(), text(MESSAGE_LEN_MAX))
            .prop_map(|(max_version, client_name)| {
                Message::Hello(Hello {
                    max_version,
                    client_name,
                })
            })
            .boxed(),
        Opcode::HelloOk => (
            any::<u8>(),
            any::<u16>(),
            any::<bool>(),
            any::<u32>(),
            any::<u16>(),
            any::<u32>(),
        )
            .prop_map(
                |(version, node_id, ready, frame_len_max, batch_instances_max, lease_floor_ms)| {
                    Message::HelloOk(HelloOk {
                        version,
                        node_id,
                        ready,
                        frame_len_max,
                        batch_instances_max,
                        lease_floor_ms,
                    })
                },
            )
            .boxed(),
        Opcode::Ping => any::<u64>().prop_map(Message::Ping).boxed(),
        Opcode::Pong => any::<u64>().prop_map(Message::Pong).boxed(),
        Opcode::Ack => any::<u32>().prop_map(Message::Ack).boxed(),
        Opcode::Error => (any::<u16>(), text(MESSAGE_LEN_MAX))
            .prop_map(|(code, message)| Message::Error(ErrorBody { code, message }))
            .boxed(),
        Opcode::Auth => text(TOKEN_LEN_MAX)
            .prop_map(|t| Message::Auth(Token::new(t)))
            .boxed(),
        Opcode::Register => (any::<bool>(), vec(instance(), 0..4))
            .prop_map(|(session_bound, instances)| {
                Message::Register(Register {
                    session_bound,
                    instances,
                })
            })
            .boxed(),
        Opcode::Deregister => keys(BATCH_INSTANCES_MAX)
            .prop_map(Message::Deregister)
            .boxed(),
        Opcode::Beat => keys(BEAT_KEYS_MAX).prop_map(Message::Beat).boxed(),
        Opcode::BeatAck => vec(any::<u16>(), 0..32).prop_map(Message::BeatAck).boxed(),
        Opcode::Query => (service_name(), text(NAME_LEN_MAX), any::<bool>())
            .prop_map(|(name, cluster, healthy_only)| {
                Message::Query(Query {
                    name,
                    cluster,
                    healthy_only,
                })
            })
            .boxed(),
        Opcode::QueryResult => snapshot().prop_map(Message::QueryResult).boxed(),
        Opcode::ListServices => (text(NAME_LEN_MAX), any::<u32>(), any::<u16>())
            .prop_map(|(namespace, page, page_size)| {
                Message::ListServices(ListServices {
                    namespace,
                    page,
                    page_size,
                })
            })
            .boxed(),
        Opcode::ServiceList => (
            any::<u32>(),
            vec(
                (
                    text(NAME_LEN_MAX),
                    text(NAME_LEN_MAX),
                    any::<u32>(),
                    any::<u32>(),
                ),
                0..6,
            ),
        )
            .prop_map(|(total, s)| {
                Message::ServiceList(ServiceList {
                    total,
                    services: s
                        .into_iter()
                        .map(|(group, service, instances, healthy)| ServiceSummary {
                            group,
                            service,
                            instances,
                            healthy,
                        })
                        .collect(),
                })
            })
            .boxed(),
        Opcode::Subscribe => service_name().prop_map(Message::Subscribe).boxed(),
        Opcode::Unsubscribe => service_name().prop_map(Message::Unsubscribe).boxed(),
        Opcode::Push => snapshot().prop_map(Message::Push).boxed(),
        Opcode::PushDelta => delta().prop_map(Message::PushDelta).boxed(),
        Opcode::ClusterStatus => Just(Message::ClusterStatus).boxed(),
        Opcode::ClusterStatusResult => (
            any::<u16>(),
            any::<bool>(),
            any::<u64>(),
            vec(
                (any::<u16>(), text(NAME_LEN_MAX), 0..3u8, any::<u64>()),
                0..5,
            ),
        )
            .prop_map(|(node_id, ready, instances, m)| {
                Message::ClusterStatusResult(ClusterStatus {
                    node_id,
                    ready,
                    instances,
                    members: m
                        .into_iter()
                        .map(|(id, addr, state, owned)| MemberStatus {
                            id,
                            addr,
                            up: state == 1,
                            left: state == 2,
                            owned,
                        })
                        .collect(),
                })
            })
            .boxed(),
        Opcode::Owner => (text(IP_LEN_MAX), any::<u16>())
            .prop_map(|(ip, port)| Message::Owner { ip, port })
            .boxed(),
        Opcode::OwnerResult => any::<u16>().prop_map(Message::OwnerResult).boxed(),
        Opcode::Leave => any::<u16>().prop_map(Message::Leave).boxed(),
        Opcode::PeerHello => (any::<u16>(), any::<u8>(), any::<u64>(), any::<[u8; 16]>())
            .prop_map(|(node_id, max_version, cluster_hash, nonce)| {
                Message::PeerHello(PeerHello {
                    node_id,
                    max_version,
                    cluster_hash,
                    nonce,
                })
            })
            .boxed(),
        Opcode::PeerChallenge => (any::<u16>(), any::<[u8; 16]>(), any::<[u8; 32]>())
            .prop_map(|(node_id, nonce, mac)| {
                Message::PeerChallenge(PeerChallenge {
                    node_id,
                    nonce,
                    mac,
                })
            })
            .boxed(),
        Opcode::PeerAuth => any::<[u8; 32]>().prop_map(Message::PeerAuth).boxed(),
        Opcode::FwdRegister => (any::<u64>(), vec(instance(), 0..4))
            .prop_map(|(session, instances)| Message::FwdRegister { session, instances })
            .boxed(),
        Opcode::FwdDeregister => keys(BATCH_INSTANCES_MAX)
            .prop_map(Message::FwdDeregister)
            .boxed(),
        Opcode::FwdBeat => keys(BEAT_KEYS_MAX).prop_map(Message::FwdBeat).boxed(),
        Opcode::FwdLapse => (any::<u64>(), keys(BATCH_INSTANCES_MAX))
            .prop_map(|(session, keys)| Message::FwdLapse { session, keys })
            .boxed(),
        Opcode::SyncBatch => vec(sync_record(), 0..4)
            .prop_map(Message::SyncBatch)
            .boxed(),
        Opcode::Digest => (
            any::<u16>(),
            any::<u64>(),
            prop_oneof![
                4 => vec(any::<(u32, u64)>(), 0..8),
                1 => vec(any::<(u32, u64)>(), 1024..=1024),
            ],
        )
            .prop_map(|(owner, view_hash, buckets)| {
                Message::Digest(DigestMsg {
                    owner,
                    view_hash,
                    buckets,
                })
            })
            .boxed(),
        Opcode::Pull => (any::<u16>(), vec(any::<u16>(), 0..16))
            .prop_map(|(owner, buckets)| Message::Pull(PullMsg { owner, buckets }))
            .boxed(),
        Opcode::Records => vec(sync_record(), 0..4).prop_map(Message::Records).boxed(),
        Opcode::SnapshotRequest => Just(Message::SnapshotRequest).boxed(),
    }
}

fn all_opcodes() -> Vec<Opcode> {
    (0..=255u8)
        .filter_map(|b| Opcode::from_u8(b).ok())
        .collect()
}

fn any_message() -> BoxedStrategy<Message> {
    proptest::sample::select(all_opcodes())
        .prop_flat_map(message_of)
        .boxed()
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn body_of(msg: &Message) -> Bytes {
    let mut out = BytesMut::new();
    msg.encode_body(&mut out);
    out.freeze()
}

/// A frame with the given header fields and raw body, the length prefix computed.
fn raw_frame(version: u8, opcode: u8, flags: u16, request_id: u32, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_u32((HEADER_LEN + body.len()) as u32);
    out.put_u8(version);
    out.put_u8(opcode);
    out.put_u16(flags);
    out.put_u32(request_id);
    out.put_slice(body);
    out
}

fn decode_one(bytes: &[u8]) -> Result<Option<Frame>, WireError> {
    FrameCodec::default().decode(&mut BytesMut::from(bytes))
}

/// Decodes a whole frame and its message.
fn decode_message(bytes: &[u8]) -> Result<Message, WireError> {
    decode_one(bytes)?.expect("a whole frame").message()
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// Encodes `msg` as a frame, decodes it back, and checks value, header and bytes.
fn check_round_trip(request_id: u32, flags: u16, msg: &Message) -> Result<(), TestCaseError> {
    let bytes = encode_frame(request_id, flags, msg);
    let prefix = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    prop_assert_eq!(prefix, bytes.len() - LEN_PREFIX, "length prefix");
    let mut buf = BytesMut::from(&bytes[..]);
    let frame = FrameCodec::default()
        .decode(&mut buf)
        .map_err(fail)?
        .ok_or_else(|| fail("the codec wants more bytes"))?;
    prop_assert!(buf.is_empty(), "bytes left after the frame");
    prop_assert_eq!(frame.version, PROTOCOL_VERSION);
    prop_assert_eq!(frame.opcode, msg.opcode() as u8);
    prop_assert_eq!(frame.flags, flags);
    prop_assert_eq!(frame.request_id, request_id);
    let back = frame.message().map_err(fail)?;
    prop_assert_eq!(&back, msg);
    // Bit for bit (PartialEq on f64 says -0.0 == 0.0; the bytes do not).
    prop_assert_eq!(encode_frame(request_id, flags, &back), bytes);
    Ok(())
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

// ---------------------------------------------------------------------------------------------
// Round trips

#[test]
fn every_message_kind_round_trips() {
    for op in all_opcodes() {
        let strategy = (message_of(op), any::<u32>(), any::<u16>());
        runner(96)
            .run(&strategy, |(msg, rid, flags)| {
                prop_assert_eq!(msg.opcode(), op, "strategy of {:?}", op);
                check_round_trip(rid, flags, &msg)
            })
            .unwrap_or_else(|e| panic!("{op:?}: {e}"));
    }
}

proptest! {
    #![proptest_config(Config { cases: 256, failure_persistence: None, ..Config::default() })]

    #[test]
    fn mixed_messages_round_trip(msg in any_message(), rid in any::<u32>(), flags in any::<u16>()) {
        check_round_trip(rid, flags, &msg)?;
    }

    #[test]
    fn sync_records_round_trip_back_to_back(records in vec(sync_record(), 1..5)) {
        let mut out = BytesMut::new();
        for r in &records {
            r.encode(&mut out);
        }
        let bytes = out.freeze();
        let mut reader = Reader::new(bytes.clone());
        let mut back = Vec::new();
        for _ in 0..records.len() {
            back.push(SyncRecord::decode(&mut reader).map_err(fail)?);
        }
        reader.finish().map_err(fail)?;
        prop_assert_eq!(&back, &records);
        let mut again = BytesMut::new();
        for r in &back {
            r.encode(&mut again);
        }
        prop_assert_eq!(again.freeze(), bytes);
        for r in &records {
            let mut one = BytesMut::new();
            r.encode(&mut one);
            prop_assert!(one.len() >= SyncRecord::MIN_LEN);
            prop_assert_eq!(r.status_bits(), record_status_bits(r.alive, r.healthy, r.enabled, r.lapsed));
        }
    }

    /// Every strict prefix of a body is a truncated body, whatever the message.
    #[test]
    fn a_body_cut_short_is_truncated(msg in any_message(), cut in any::<Index>()) {
        let body = body_of(&msg);
        prop_assume!(!body.is_empty());
        let cut = cut.index(body.len());
        match Message::decode(msg.opcode(), body.slice(..cut)) {
            Err(WireError::Truncated { .. }) => {}
            other => prop_assert!(false, "{:?} cut at {} of {}: {:?}", msg.opcode(), cut, body.len(), other),
        }
    }

    /// Bytes after the last field are refused, and counted.
    #[test]
    fn trailing_bytes_are_refused(msg in any_message(), extra in vec(any::<u8>(), 1..9)) {
        let mut body = BytesMut::from(&body_of(&msg)[..]);
        body.put_slice(&extra);
        match Message::decode(msg.opcode(), body.freeze()) {
            Err(WireError::TrailingBytes { count }) => prop_assert_eq!(count, extra.len()),
            other => prop_assert!(false, "{:?}: {:?}", msg.opcode(), other),
        }
    }

    /// Any split of a stream of frames into reads yields the same frames, each only once whole.
    #[test]
    fn frames_split_across_reads_decode_once_complete(
        msgs in vec(any_message(), 1..4),
        cuts in vec(any::<Index>(), 0..12),
    ) {
        let mut stream = BytesMut::new();
        for (i, m) in msgs.iter().enumerate() {
            encode_frame_into(&mut stream, i as u32 + 1, 0, m);
        }
        let stream = stream.freeze();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut fed = 0;
        for p in points {
            buf.extend_from_slice(&stream[fed..p]);
            fed = p;
            while let Some(frame) = codec.decode(&mut buf).map_err(fail)? {
                got.push((frame.request_id, frame.message().map_err(fail)?));
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(codec.decode_eof(&mut buf).map_err(fail)?, None);
        let want: Vec<(u32, Message)> =
            msgs.into_iter().enumerate().map(|(i, m)| (i as u32 + 1, m)).collect();
        prop_assert_eq!(got, want);
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile input: never a panic, never an allocation sized by a claim, only canonical frames

/// Feeds `bytes` to a decoder in `chunk`-sized reads, decoding every frame it yields. Returns
/// the messages that decoded. Any panic fails the calling test.
fn feed(bytes: &[u8], chunk: usize) -> Vec<(Frame, Message)> {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if let Ok(m) = frame.message() {
                        out.push((frame, m));
                    }
                }
                Ok(None) => break,
                Err(_) => return out,
            }
        }
    }
    let _ = codec.decode_eof(&mut buf);
    out
}

/// A message that decoded re-encodes to exactly the frame it came from: the decoder accepts
/// only canonical encodings.
fn assert_canonical(frame: &Frame, msg: &Message) -> Result<(), TestCaseError> {
    let again = encode_frame(frame.request_id, frame.flags, msg);
    let original = raw_frame(
        frame.version,
        frame.opcode,
        frame.flags,
        frame.request_id,
        &frame.body,
    );
    prop_assert_eq!(
        &again[..],
        &original[..],
        "{:?} is not canonical",
        msg.opcode()
    );
    Ok(())
}

/// A valid header and length for a known opcode, then random body bytes: reaches every body
/// decoder with garbage.
fn garbage_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::sample::select(all_opcodes()),
        vec(any::<u8>(), 0..256),
    )
        .prop_map(|(op, body)| raw_frame(PROTOCOL_VERSION, op as u8, 0, 7, &body).to_vec())
}

/// A valid frame with a few bytes overwritten (the length prefix kept, so the body decoders
/// see the damage) and possibly cut short.
fn damaged_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        any_message(),
        vec((any::<Index>(), any::<u8>()), 1..4),
        any::<Option<Index>>(),
    )
        .prop_map(|(msg, edits, cut)| {
            let mut bytes = encode_frame(9, 0, &msg).to_vec();
            let n = bytes.len() - LEN_PREFIX;
            for (at, b) in edits {
                bytes[LEN_PREFIX + at.index(n)] = b;
            }
            if let Some(c) = cut {
                bytes.truncate(c.index(bytes.len() + 1));
            }
            bytes
        })
}

proptest! {
    #![proptest_config(Config { cases: 512, failure_persistence: None, ..Config::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..2048), chunk in 1usize..64) {
        for (frame, msg) in feed(&bytes, chunk) {
            assert_canonical(&frame, &msg)?;
        }
    }

    #[test]
    fn garbage_bodies_never_panic(bytes in garbage_frame(), chunk in 1usize..64) {
        let (decoded, largest) = largest_allocation(|| feed(&bytes, chunk));
        // The read buffer and the decoded values are bounded by the bytes that arrived, not by
        // any count or length inside them.
        prop_assert!(largest <= 64 * (bytes.len() + 64), "allocated {} for {} bytes", largest, bytes.len());
        for (frame, msg) in decoded {
            assert_canonical(&frame, &msg)?;
        }
    }

    #[test]
    fn damaged_frames_never_panic(bytes in damaged_frame(), chunk in 1usize..4096) {
        for (frame, msg) in feed(&bytes, chunk) {
            assert_canonical(&frame, &msg)?;
        }
    }
}

#[test]
fn a_huge_length_prefix_is_refused_before_any_allocation() {
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
    let capacity = buf.capacity();
    let (r, largest) = largest_allocation(|| FrameCodec::default().decode(&mut buf));
    match r {
        Err(WireError::FrameTooLarge { len, max }) => {
            assert_eq!(len, 0xFFFF_FFFF);
            assert_eq!(max, FRAME_LEN_MAX);
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert_eq!(largest, 0, "the decoder allocated before refusing");
    assert_eq!(
        buf.capacity(),
        capacity,
        "the decoder reserved buffer space"
    );
    assert_eq!(
        WireError::FrameTooLarge { len: 0, max: 0 }.code(),
        ErrorCode::TooLarge
    );
}

#[test]
fn the_length_limit_is_exact_and_configurable() {
    // One past the limit: refused as soon as the prefix is there.
    let over = ((FRAME_LEN_MAX + 1) as u32).to_be_bytes();
    assert!(matches!(
        decode_one(&over),
        Err(WireError::FrameTooLarge { len, .. }) if len == FRAME_LEN_MAX + 1
    ));
    // At the limit: accepted, and the decoder waits without reserving the announced 8 MiB.
    let mut buf = raw_frame(PROTOCOL_VERSION, Opcode::Ping as u8, 0, 1, &[]);
    buf[..4].copy_from_slice(&(FRAME_LEN_MAX as u32).to_be_bytes());
    let capacity = buf.capacity();
    let (r, largest) = largest_allocation(|| FrameCodec::default().decode(&mut buf));
    assert!(matches!(r, Ok(None)), "{r:?}");
    assert!(
        largest < 1024,
        "allocated {largest} bytes for an announced frame"
    );
    assert_eq!(buf.capacity(), capacity);
    // The whole frame at the limit decodes (the body is then the message's problem).
    let body = vec![0u8; FRAME_LEN_MAX - HEADER_LEN];
    let whole = raw_frame(PROTOCOL_VERSION, Opcode::Ping as u8, 0, 1, &body);
    let frame = decode_one(&whole).unwrap().unwrap();
    assert_eq!(frame.body.len(), FRAME_LEN_MAX - HEADER_LEN);
    assert!(matches!(
        frame.message(),
        Err(WireError::TrailingBytes { count }) if count == FRAME_LEN_MAX - HEADER_LEN - 8
    ));
    // A smaller configured limit is honoured.
    let ping = encode_frame(1, 0, &Message::Ping(1));
    assert!(matches!(
        FrameCodec::new(15).decode(&mut BytesMut::from(&ping[..])),
        Err(WireError::FrameTooLarge { len: 16, max: 15 })
    ));
    assert!(
        FrameCodec::new(16)
            .decode(&mut BytesMut::from(&ping[..]))
            .unwrap()
            .is_some()
    );
}

#[test]
fn a_length_below_the_header_is_too_short() {
    for len in 0..HEADER_LEN as u32 {
        match decode_one(&len.to_be_bytes()) {
            Err(WireError::FrameTooShort { len: l, min }) => {
                assert_eq!((l, min), (len as usize, HEADER_LEN));
            }
            other => panic!("length {len}: expected FrameTooShort, got {other:?}"),
        }
    }
    // Exactly the header: a frame with an empty body.
    let f = decode_one(&raw_frame(1, Opcode::ClusterStatus as u8, 0, 5, &[]))
        .unwrap()
        .unwrap();
    assert_eq!(f.message().unwrap(), Message::ClusterStatus);
}

#[test]
fn a_body_cut_short_is_truncated_and_a_stream_cut_mid_frame_too() {
    // The header says 12 bytes, the Ping body holds 4 of its 8.
    let bytes = raw_frame(1, Opcode::Ping as u8, 0, 3, &[0, 0, 0, 1]);
    assert!(matches!(
        decode_message(&bytes),
        Err(WireError::Truncated { .. })
    ));
    // A connection that ends inside a frame.
    let whole = encode_frame(3, 0, &Message::Ping(1));
    for cut in 1..whole.len() {
        let mut buf = BytesMut::from(&whole[..cut]);
        let mut codec = FrameCodec::default();
        assert!(matches!(codec.decode(&mut buf), Ok(None)), "cut {cut}");
        assert!(
            matches!(codec.decode_eof(&mut buf), Err(WireError::Truncated { .. })),
            "cut {cut}"
        );
    }
    assert!(matches!(
        FrameCodec::default().decode_eof(&mut BytesMut::new()),
        Ok(None)
    ));
}

/// A body whose first list claims `count` items but holds only `present` bytes after the count.
fn claim(prefix: &[u8], count_bytes: &[u8], present: usize) -> Bytes {
    let mut b = BytesMut::new();
    b.put_slice(prefix);
    b.put_slice(count_bytes);
    b.put_slice(&vec![0u8; present]);
    b.freeze()
}

#[test]
fn a_count_larger_than_the_bytes_is_truncated_without_reserving() {
    // A Register claiming 4096 instances in a 10-byte body.
    let body = claim(&[1], &4096u16.to_be_bytes(), 7);
    assert_eq!(body.len(), 10);
    let frame = raw_frame(1, Opcode::Register as u8, 0, 1, &body);
    let (r, largest) = largest_allocation(|| decode_message(&frame));
    assert!(
        matches!(r, Err(WireError::Truncated { what: "instances" })),
        "{r:?}"
    );
    assert!(
        largest < std::mem::size_of::<Instance>() * 2,
        "reserved {largest} bytes for instances that never came"
    );

    // Other lists whose claims could be large: each must fail without a large reservation.
    let name = {
        let mut b = BytesMut::new();
        ServiceName::new("n", "g", "s").encode(&mut b);
        b.put_u64(1);
        b.to_vec()
    };
    let cases: Vec<(Opcode, Bytes)> = vec![
        (
            Opcode::QueryResult,
            claim(&name, &u32::MAX.to_be_bytes(), 16),
        ),
        (Opcode::Push, claim(&name, &u32::MAX.to_be_bytes(), 0)),
        // A delta claiming u32::MAX removed keys, then (with none) u32::MAX updated views.
        (
            Opcode::PushDelta,
            claim(&[&name[..], &[0; 8]].concat(), &u32::MAX.to_be_bytes(), 5),
        ),
        (
            Opcode::PushDelta,
            claim(&[&name[..], &[0; 12]].concat(), &u32::MAX.to_be_bytes(), 16),
        ),
        (Opcode::Beat, claim(&[], &16384u16.to_be_bytes(), 11)),
        (Opcode::Deregister, claim(&[], &4096u16.to_be_bytes(), 11)),
        (Opcode::BeatAck, claim(&[], &16384u16.to_be_bytes(), 1)),
        (
            Opcode::ServiceList,
            claim(&[0, 0, 0, 9], &1000u16.to_be_bytes(), 11),
        ),
        (
            Opcode::SyncBatch,
            claim(&[], &(RECORDS_PER_FRAME_MAX as u32).to_be_bytes(), 52),
        ),
        (
            Opcode::Records,
            claim(&[], &(RECORDS_PER_FRAME_MAX as u32).to_be_bytes(), 10),
        ),
        (Opcode::Digest, claim(&[0; 10], &1024u16.to_be_bytes(), 11)),
        (Opcode::Pull, claim(&[0; 2], &1024u16.to_be_bytes(), 1)),
        (
            Opcode::FwdRegister,
            claim(&[0; 8], &4096u16.to_be_bytes(), 34),
        ),
        (
            Opcode::ClusterStatusResult,
            claim(
                &[0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
                &256u16.to_be_bytes(),
                12,
            ),
        ),
    ];
    for (op, body) in cases {
        let frame = raw_frame(1, op as u8, 0, 1, &body);
        let (r, largest) = largest_allocation(|| decode_message(&frame));
        assert!(
            matches!(r, Err(WireError::Truncated { .. })),
            "{op:?}: {r:?}"
        );
        assert!(largest < 1024, "{op:?}: reserved {largest} bytes");
    }
}

#[test]
fn a_count_over_its_limit_is_refused() {
    let cases: Vec<(Opcode, Bytes, usize)> = vec![
        (
            Opcode::Register,
            claim(&[0], &(BATCH_INSTANCES_MAX as u16 + 1).to_be_bytes(), 0),
            BATCH_INSTANCES_MAX,
        ),
        (
            Opcode::Deregister,
            claim(&[], &(BATCH_INSTANCES_MAX as u16 + 1).to_be_bytes(), 0),
            BATCH_INSTANCES_MAX,
        ),
        (
            Opcode::Beat,
            claim(&[], &(BEAT_KEYS_MAX as u16 + 1).to_be_bytes(), 0),
            BEAT_KEYS_MAX,
        ),
        (
            Opcode::ServiceList,
            claim(&[0; 4], &(PAGE_SIZE_MAX as u16 + 1).to_be_bytes(), 0),
            PAGE_SIZE_MAX,
        ),
        (
            Opcode::SyncBatch,
            claim(&[], &(RECORDS_PER_FRAME_MAX as u32 + 1).to_be_bytes(), 0),
            RECORDS_PER_FRAME_MAX,
        ),
        (
            Opcode::Digest,
            claim(&[0; 10], &1025u16.to_be_bytes(), 0),
            1024,
        ),
        (
            Opcode::ClusterStatusResult,
            claim(&[0; 11], &(MEMBERS_MAX as u16 + 1).to_be_bytes(), 0),
            MEMBERS_MAX,
        ),
    ];
    for (op, body, limit) in cases {
        match Message::decode(op, body) {
            Err(WireError::CountTooLarge { count, max, .. }) => {
                assert_eq!((count, max), (limit + 1, limit), "{op:?}");
            }
            other => panic!("{op:?}: expected CountTooLarge, got {other:?}"),
        }
    }

    // Metadata: 64 entries are fine, 65 are not.
    let mut inst = Instance::new(InstanceKey {
        service: ServiceName::new("n", "g", "s"),
        cluster: "c".into(),
        ip: "h".into(),
        port: 1,
    });
    inst.metadata = (0..META_ENTRIES_MAX)
        .map(|i| (Text::from(format!("k{i}")), Text::from("v")))
        .collect();
    let reg = |inst: &Instance| {
        Message::Register(Register {
            session_bound: false,
            instances: vec![inst.clone()],
        })
    };
    let ok = reg(&inst);
    assert_eq!(decode_message(&encode_frame(1, 0, &ok)).unwrap(), ok);
    // 65 entries, by hand: the 64-entry body with its metadata count raised and one more entry.
    // (Register: options 1, count 2, the key's five 1-byte strings 15, port 2, weight 8,
    // status 1, lease 12; then the metadata count.)
    let mut body = BytesMut::new();
    ok.encode_body(&mut body);
    const META_COUNT_AT: usize = 1 + 2 + 15 + 2 + 8 + 1 + 12;
    body[META_COUNT_AT..META_COUNT_AT + 2].copy_from_slice(&65u16.to_be_bytes());
    body.put_u16(3);
    body.put_slice(b"k64");
    body.put_u16(1);
    body.put_slice(b"v");
    assert!(matches!(
        Message::decode(Opcode::Register, body.freeze()),
        Err(WireError::CountTooLarge {
            count: 65,
            max: 64,
            ..
        })
    ));
    // The encoder refuses what the decoder would: nothing is written.
    inst.metadata.push(("k64".into(), "v".into()));
    let mut out = BytesMut::new();
    assert!(matches!(
        try_encode_frame_into(&mut out, 1, 0, &reg(&inst)),
        Err(WireError::CountTooLarge {
            count: 65,
            max: 64,
            ..
        })
    ));
    assert!(out.is_empty());
}

/// Every list the decoder bounds, one over its limit, is refused by the encoder too (an encoder
/// never sends what its decoder refuses), and nothing of it is written.
#[test]
fn the_encoder_refuses_a_count_over_its_limit() {
    let key = |i: usize| InstanceKey {
        service: ServiceName::new("n", "g", "s"),
        cluster: "c".into(),
        ip: format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255).into(),
        port: 1,
    };
    let keys = |n: usize| (0..n).map(key).collect::<Vec<_>>();
    let cases = [
        (
            Message::Register(Register {
                session_bound: false,
                instances: (0..BATCH_INSTANCES_MAX + 1)
                    .map(|i| Instance::new(key(i)))
                    .collect(),
            }),
            BATCH_INSTANCES_MAX,
        ),
        (
            Message::Deregister(keys(BATCH_INSTANCES_MAX + 1)),
            BATCH_INSTANCES_MAX,
        ),
        (Message::Beat(keys(BEAT_KEYS_MAX + 1)), BEAT_KEYS_MAX),
        (
            Message::FwdLapse {
                session: 1,
                keys: keys(BATCH_INSTANCES_MAX + 1),
            },
            BATCH_INSTANCES_MAX,
        ),
        (
            Message::BeatAck((0..=BEAT_KEYS_MAX as u16).collect()),
            BEAT_KEYS_MAX,
        ),
        (
            Message::Digest(DigestMsg {
                owner: 1,
                view_hash: 0,
                buckets: vec![(0, 0); DIGEST_BUCKETS + 1],
            }),
            DIGEST_BUCKETS,
        ),
        (
            Message::Pull(PullMsg {
                owner: 1,
                buckets: vec![0; DIGEST_BUCKETS + 1],
            }),
            DIGEST_BUCKETS,
        ),
    ];
    for (msg, limit) in cases {
        let mut out = BytesMut::from(&b"before"[..]);
        match try_encode_frame_into(&mut out, 1, 0, &msg) {
            Err(WireError::CountTooLarge { count, max, .. }) => {
                assert_eq!((count, max), (limit + 1, limit), "{:?}", msg.opcode())
            }
            other => panic!("{:?}: expected CountTooLarge, got {other:?}", msg.opcode()),
        }
        assert_eq!(&out[..], b"before", "{:?}: nothing written", msg.opcode());
    }
}

#[test]
fn the_encoder_refuses_a_frame_over_the_frame_limit() {
    // 4096 instances within every field limit, with metadata enough to pass 8 MiB.
    let instances = (0..BATCH_INSTANCES_MAX)
        .map(|i| {
            let mut inst = Instance::new(InstanceKey {
                service: ServiceName::new("n", "g", "s"),
                cluster: "c".into(),
                ip: format!("10.0.{}.{}", i >> 8, i & 255).into(),
                port: 1,
            });
            inst.metadata = vec![("k".into(), "v".repeat(META_VALUE_LEN_MAX).into())];
            inst
        })
        .collect();
    let msg = Message::Register(Register {
        session_bound: false,
        instances,
    });
    let mut out = BytesMut::new();
    match try_encode_frame_into(&mut out, 1, 0, &msg) {
        Err(WireError::FrameTooLarge { len, max }) => {
            assert!(len > FRAME_LEN_MAX);
            assert_eq!(max, FRAME_LEN_MAX);
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert!(out.is_empty());
}

#[test]
#[should_panic(expected = "refusing to encode")]
fn the_infallible_encoder_panics_rather_than_send_what_the_decoder_refuses() {
    let long = "x".repeat(NAME_LEN_MAX + 1);
    encode_frame(1, 0, &Message::Subscribe(ServiceName::new("p", &long, "s")));
}

#[test]
fn the_largest_batches_round_trip() {
    let key = |i: usize| InstanceKey {
        service: ServiceName::new("n", "g", "s"),
        cluster: "c".into(),
        ip: format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255).into(),
        port: 8080,
    };
    let msgs = [
        Message::Register(Register {
            session_bound: true,
            instances: (0..BATCH_INSTANCES_MAX)
                .map(|i| Instance::new(key(i)))
                .collect(),
        }),
        Message::Deregister((0..BATCH_INSTANCES_MAX).map(key).collect()),
        Message::Beat((0..BEAT_KEYS_MAX).map(key).collect()),
        Message::BeatAck((0..BEAT_KEYS_MAX as u16).collect()),
    ];
    for m in msgs {
        let bytes = encode_frame(1, 0, &m);
        assert!(bytes.len() - LEN_PREFIX <= FRAME_LEN_MAX);
        assert_eq!(decode_message(&bytes).unwrap(), m, "{:?}", m.opcode());
    }
}

#[test]
fn a_string_over_its_limit_is_refused() {
    let long = "x".repeat(NAME_LEN_MAX + 1);
    let mut body = BytesMut::new();
    for part in ["public", &long, "s"] {
        body.put_u16(part.len() as u16);
        body.put_slice(part.as_bytes());
    }
    match Message::decode(Opcode::Subscribe, body.freeze()) {
        Err(WireError::StringTooLong { what, len, max }) => {
            assert_eq!((what, len, max), ("group", NAME_LEN_MAX + 1, NAME_LEN_MAX));
        }
        other => panic!("expected StringTooLong, got {other:?}"),
    }
    // The encoder refuses it as well, writing nothing.
    let sub = Message::Subscribe(ServiceName::new("public", &long, "s"));
    let mut out = BytesMut::new();
    match try_encode_frame_into(&mut out, 1, 0, &sub) {
        Err(WireError::StringTooLong { what, len, max }) => {
            assert_eq!((what, len, max), ("group", NAME_LEN_MAX + 1, NAME_LEN_MAX));
        }
        other => panic!("expected StringTooLong, got {other:?}"),
    }
    assert!(out.is_empty());
    let at_limit = Message::Subscribe(ServiceName::new("public", &long[1..], "s"));
    assert_eq!(
        decode_message(&encode_frame(1, 0, &at_limit)).unwrap(),
        at_limit
    );
    // A token is bounded too (a stranger's Auth is hashed: it may not be large), both ways.
    let long_token = "t".repeat(TOKEN_LEN_MAX + 1);
    let mut body = BytesMut::new();
    body.put_u16(long_token.len() as u16);
    body.put_slice(long_token.as_bytes());
    match Message::decode(Opcode::Auth, body.freeze()) {
        Err(WireError::StringTooLong { what, len, max }) => {
            assert_eq!(
                (what, len, max),
                ("token", TOKEN_LEN_MAX + 1, TOKEN_LEN_MAX)
            );
        }
        other => panic!("expected StringTooLong, got {other:?}"),
    }
    let mut out = BytesMut::new();
    let token = Message::Auth(Token::new(long_token));
    assert!(matches!(
        try_encode_frame_into(&mut out, 1, 0, &token),
        Err(WireError::StringTooLong { what: "token", .. })
    ));
    // The limit is checked on the length field, before the bytes are looked for.
    let body = claim(&[], &u16::MAX.to_be_bytes(), 0);
    assert!(matches!(
        Message::decode(Opcode::Subscribe, body),
        Err(WireError::StringTooLong { len: 65535, .. })
    ));
}

#[test]
fn invalid_utf8_is_refused() {
    // A Hello whose client name is the bytes ff fe.
    let body = [1, 0, 2, 0xff, 0xfe];
    let frame = raw_frame(1, Opcode::Hello as u8, 0, 1, &body);
    assert!(matches!(
        decode_message(&frame),
        Err(WireError::BadUtf8 {
            what: "client name"
        })
    ));
    // A lone continuation byte inside an otherwise fine key.
    let mut b = BytesMut::new();
    b.put_u16(1);
    ServiceName::new("public", "g", "s").encode(&mut b);
    b.put_u16(2);
    b.put_slice(&[b'a', 0x80]);
    let err = Message::decode(Opcode::Beat, b.freeze()).unwrap_err();
    assert!(
        matches!(err, WireError::BadUtf8 { what: "cluster" }),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::BadFrame);
}

#[test]
fn unknown_opcodes_are_refused() {
    let known: Vec<u8> = all_opcodes().into_iter().map(|o| o as u8).collect();
    for b in 0..=255u8 {
        let frame = decode_one(&raw_frame(1, b, 0, 4, &[])).unwrap().unwrap();
        assert_eq!(
            frame.opcode, b,
            "the raw opcode is kept for the error answer"
        );
        assert_eq!(frame.request_id, 4);
        match frame.message() {
            Err(WireError::UnknownOpcode(got)) => {
                assert!(!known.contains(&b), "0x{b:02x} is known");
                assert_eq!(got, b);
            }
            _ => assert!(known.contains(&b), "0x{b:02x} decoded though unknown"),
        }
    }
    assert!(!known.contains(&0x00) && !known.contains(&0x43) && !known.contains(&0x80));
    assert_eq!(WireError::UnknownOpcode(7).code(), ErrorCode::UnknownOpcode);
}

#[test]
fn wrong_versions_are_refused() {
    let ping = encode_frame(5, 0, &Message::Ping(1));
    for v in [0u8, 2, 255] {
        let mut bytes = BytesMut::from(&ping[..]);
        bytes[4] = v;
        let frame = decode_one(&bytes).unwrap().unwrap();
        assert_eq!(frame.request_id, 5);
        assert!(matches!(
            frame.message(),
            Err(WireError::UnsupportedVersion(got)) if got == v
        ));
    }
    // The version is checked before the opcode.
    let frame = decode_one(&raw_frame(2, 0xEE, 0, 1, &[])).unwrap().unwrap();
    assert!(matches!(
        frame.message(),
        Err(WireError::UnsupportedVersion(2))
    ));
    assert_eq!(
        WireError::UnsupportedVersion(2).code(),
        ErrorCode::UnsupportedVersion
    );
}

#[test]
fn trailing_bytes_are_refused_in_an_empty_body() {
    for op in [Opcode::ClusterStatus, Opcode::SnapshotRequest] {
        let frame = raw_frame(1, op as u8, 0, 1, &[0]);
        assert!(matches!(
            decode_message(&frame),
            Err(WireError::TrailingBytes { count: 1 })
        ));
    }
    let frame = raw_frame(1, Opcode::Ping as u8, 0, 1, &[0; 9]);
    assert!(matches!(
        decode_message(&frame),
        Err(WireError::TrailingBytes { count: 1 })
    ));
}

#[test]
fn booleans_must_be_zero_or_one() {
    // Register's session_bound, with an empty instance list.
    for (byte, want) in [(0u8, Some(false)), (1, Some(true)), (2, None), (0xff, None)] {
        let r = Message::decode(Opcode::Register, Bytes::from(vec![byte, 0, 0]));
        match (r, want) {
            (Ok(Message::Register(reg)), Some(b)) => assert_eq!(reg.session_bound, b),
            (Err(WireError::InvalidValue { .. }), None) => {}
            (other, _) => panic!("session_bound byte {byte}: {other:?}"),
        }
    }
    // HelloOk's ready and Query's healthy_only.
    let hello_ok = [1, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert!(matches!(
        Message::decode(Opcode::HelloOk, Bytes::copy_from_slice(&hello_ok)),
        Err(WireError::InvalidValue { what: "ready", .. })
    ));
    let mut q = BytesMut::new();
    ServiceName::new("a", "b", "c").encode(&mut q);
    q.put_u16(0);
    q.put_u8(2);
    assert!(matches!(
        Message::decode(Opcode::Query, q.freeze()),
        Err(WireError::InvalidValue { .. })
    ));
}

#[test]
fn status_bytes_and_weights_are_checked() {
    let inst = Instance::new(InstanceKey {
        service: ServiceName::new("n", "g", "s"),
        cluster: "c".into(),
        ip: "h".into(),
        port: 1,
    });
    let frame = encode_frame(
        1,
        0,
        &Message::Register(Register {
            session_bound: false,
            instances: vec![inst],
        }),
    );
    // Offsets in the frame: 12 header, 1 session_bound, 2 count, 17 key (5 one-byte strings + port).
    let weight_at = 12 + 1 + 2 + 17;
    let status_at = weight_at + 8;
    assert_eq!(frame[status_at], 0x03);
    for bits in [0x04u8, 0x80, 0xff] {
        let mut b = BytesMut::from(&frame[..]);
        b[status_at] = bits;
        assert!(
            matches!(
                decode_message(&b),
                Err(WireError::InvalidValue {
                    what: "instance status",
                    ..
                })
            ),
            "status 0x{bits:02x}"
        );
    }
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut b = BytesMut::from(&frame[..]);
        b[weight_at..weight_at + 8].copy_from_slice(&bad.to_be_bytes());
        assert!(
            matches!(
                decode_message(&b),
                Err(WireError::InvalidValue { what: "weight", .. })
            ),
            "weight {bad}"
        );
    }
    // A SyncRecord's status: 4 defined bits, the rest reserved.
    let rec = SyncRecord {
        key: InstanceKey {
            service: ServiceName::new("n", "g", "s"),
            cluster: "c".into(),
            ip: "h".into(),
            port: 1,
        },
        version: Version { hlc: 1, origin: 1 },
        alive: true,
        healthy: true,
        enabled: true,
        lapsed: true,
        weight: 1.0,
        lease: Lease::default(),
        session: 0,
        metadata: Vec::new(),
    };
    let mut out = BytesMut::new();
    rec.encode(&mut out);
    let status_at = 17 + 10;
    assert_eq!(out[status_at], 0x0f);
    out[status_at] = 0x1f;
    assert!(matches!(
        SyncRecord::decode(&mut Reader::new(out.freeze())),
        Err(WireError::InvalidValue {
            what: "record status",
            ..
        })
    ));
}

#[test]
fn a_frame_fed_one_byte_at_a_time_decodes_once_complete() {
    let msgs = [
        Message::Ping(7),
        Message::Subscribe(ServiceName::new("public", "DEFAULT_GROUP", "orders")),
        Message::SnapshotRequest,
    ];
    let mut stream = BytesMut::new();
    let mut ends = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        encode_frame_into(&mut stream, i as u32 + 1, 0, m);
        ends.push(stream.len());
    }
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for (i, b) in stream.iter().enumerate() {
        buf.put_u8(*b);
        if let Some(frame) = codec.decode(&mut buf).unwrap() {
            assert!(
                ends.contains(&(i + 1)),
                "a frame came out at byte {} before it was complete",
                i + 1
            );
            got.push(frame.message().unwrap());
        } else {
            assert!(
                !ends.contains(&(i + 1)),
                "frame complete at {} but not decoded",
                i + 1
            );
        }
    }
    assert_eq!(got, msgs);
}

#[tokio::test]
async fn a_framed_reader_over_a_trickling_socket_gets_every_frame() {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::FramedRead;

    let msgs: Vec<Message> = (0..50u64)
        .map(|i| match i % 3 {
            0 => Message::Ping(i),
            1 => Message::Ack(i as u32),
            _ => Message::Owner {
                ip: format!("10.0.0.{i}").into(),
                port: i as u16,
            },
        })
        .collect();
    let mut stream = BytesMut::new();
    for (i, m) in msgs.iter().enumerate() {
        encode_frame_into(&mut stream, i as u32 + 1, 0, m);
    }
    // A 5-byte pipe: every frame arrives in several reads.
    let (mut wr, rd) = tokio::io::duplex(5);
    let writer = tokio::spawn(async move {
        for piece in stream.chunks(3) {
            wr.write_all(piece).await.unwrap();
        }
    });
    let mut frames = FramedRead::new(rd, FrameCodec::default());
    let mut got = Vec::new();
    while let Some(f) = frames.next().await {
        let f = f.unwrap();
        got.push((f.request_id, f.message().unwrap()));
    }
    writer.await.unwrap();
    let want: Vec<(u32, Message)> = msgs
        .into_iter()
        .enumerate()
        .map(|(i, m)| (i as u32 + 1, m))
        .collect();
    assert_eq!(got, want);
}
