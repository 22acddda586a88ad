//! Keeps `wire-spec.md` and the code in step.
//!
//! Every hex example in the spec is parsed and checked both ways against the value this file
//! builds for its name: encoding the value gives exactly the spec's bytes, and decoding the bytes
//! (FrameCodec + `Frame::message`, or `SyncRecord::decode`) gives back the value. An example
//! this file does not know, or a name it expects that the spec lacks, fails the test. The
//! opcode, error and limit tables and the hash vectors are checked against the code as well.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use distro::api::Rejection;
use distro::api::session::{AUTH_FAILURES_MAX, BOUND_PER_SESSION_MAX};
use distro::auth::Access;
use distro::clock::Clock;
use distro::frontend::native::error::error_body;
use distro::model::WEIGHT_MAX;
use distro::model::*;
use distro::model::{DIGEST_BUCKETS, key_hash};
use distro::node::subscriptions::SUBSCRIPTIONS_PER_CONNECTION_MAX;
use distro::ownership::{Ownership, score};
use distro::store::digest::bucket_of;
use distro::store::record::digest_term;
use distro::store::{NoObserver, Store, TOMBSTONE_GRACE_MS};
use distro::wire::*;

fn spec() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/wire-spec.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Parsing the spec

struct Example {
    name: String,
    /// 1-based line of the `Example` line, for messages.
    line: usize,
    bytes: Vec<u8>,
}

/// Every `Example `Name`:` line followed by a ```hex block. Malformed examples panic with the
/// line number: a spec whose examples cannot be read must not pass.
fn examples(doc: &str) -> Vec<Example> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_end();
        if line.starts_with("```hex") {
            panic!(
                "wire-spec.md:{}: a ```hex block without an `Example` line before it",
                i + 1
            );
        }
        let Some(rest) = line.strip_prefix("Example `") else {
            i += 1;
            continue;
        };
        let name = rest
            .strip_suffix("`:")
            .unwrap_or_else(|| panic!("wire-spec.md:{}: expected Example `Name`:", i + 1));
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric()),
            "wire-spec.md:{}: example name {name:?} must be alphanumeric",
            i + 1
        );
        let start = i + 1;
        i += 1;
        while i < lines.len() && lines[i].trim().is_empty() {
            i += 1;
        }
        assert!(
            i < lines.len() && lines[i].trim_end() == "```hex",
            "wire-spec.md:{start}: Example `{name}` is not followed by a ```hex block"
        );
        i += 1;
        let mut bytes = Vec::new();
        loop {
            assert!(
                i < lines.len(),
                "wire-spec.md:{start}: the hex block of `{name}` is not closed"
            );
            let l = lines[i];
            if l.trim_end() == "```" {
                break;
            }
            let data = l.split('#').next().unwrap_or("");
            for tok in data.split_whitespace() {
                assert!(
                    tok.len() == 2,
                    "wire-spec.md:{}: {tok:?} is not a two-digit hex byte",
                    i + 1
                );
                let b = u8::from_str_radix(tok, 16).unwrap_or_else(|_| {
                    panic!("wire-spec.md:{}: {tok:?} is not a hex byte", i + 1)
                });
                bytes.push(b);
            }
            i += 1;
        }
        i += 1;
        assert!(
            !bytes.is_empty(),
            "wire-spec.md:{start}: `{name}` has no bytes"
        );
        out.push(Example {
            name: name.to_string(),
            line: start,
            bytes,
        });
    }
    out
}

/// The text of the section whose heading line is exactly `heading`, up to the next heading of
/// the same or a higher level.
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let start = doc
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("wire-spec.md has no section {heading:?}"))
        + heading.len()
        + 2;
    let rest = &doc[start..];
    let mut end = rest.len();
    let mut at = 0;
    for line in rest.split_inclusive('\n') {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if hashes > 0 && hashes <= level && line[hashes..].starts_with(' ') {
            end = at;
            break;
        }
        at += line.len();
    }
    &rest[..end]
}

/// The cells of every table row in `text` (header and separator rows included).
fn table_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

fn backticked(cell: &str) -> Option<&str> {
    cell.strip_prefix('`')?.split('`').next()
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::new();
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(if i % 16 == 0 { '\n' } else { ' ' });
        }
        write!(s, "{b:02x}").unwrap();
    }
    s
}

fn assert_same_bytes(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: the code encodes {} bytes, the spec shows {}; first difference at byte {at}\n\
             code:\n{}\nspec:\n{}",
            got.len(),
            want.len(),
            hex(got),
            hex(want)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The values the examples stand for

enum Expected {
    Frame {
        request_id: u32,
        flags: u16,
        msg: Message,
    },
    Record(SyncRecord),
}

/// Every example name the spec must contain.
const EXAMPLE_NAMES: &[&str] = &[
    "Hello",
    "HelloOk",
    "HelloOkNotReady",
    "Ping",
    "Pong",
    "Ack",
    "Error",
    "ErrorConnectionLevel",
    "Register",
    "RegisterTwo",
    "Deregister",
    "Beat",
    "BeatAck",
    "BeatAckAllKnown",
    "Query",
    "QueryResult",
    "QueryResultUnknownService",
    "ListServices",
    "ServiceList",
    "Subscribe",
    "Unsubscribe",
    "Push",
    "PushDelta",
    "PushDeltaOneChange",
    "ClusterStatus",
    "ClusterStatusResult",
    "Owner",
    "OwnerResult",
    "Auth",
    "AuthAccepted",
    "ErrorUnauthenticated",
    "ErrorPermissionDenied",
    "SyncRecord",
    "SyncRecordTombstone",
    "PeerHello",
    "PeerChallenge",
    "PeerAuth",
    "FwdRegister",
    "FwdDeregister",
    "FwdBeat",
    "FwdLapse",
    "SyncBatch",
    "Digest",
    "Pull",
    "RecordsMore",
    "RecordsLast",
    "SnapshotRequest",
];

/// `N` consecutive byte values starting at `first` (the example nonces and MACs).
fn run_of<const N: usize>(first: u8) -> [u8; N] {
    std::array::from_fn(|i| first + i as u8)
}

/// The session id of the examples: node 2, its 7th client connection.
const EXAMPLE_SESSION: u64 = (2 << 48) | 7;

fn orders() -> ServiceName {
    ServiceName::new("public", "DEFAULT_GROUP", "orders")
}

fn key(ip: &str) -> InstanceKey {
    InstanceKey {
        service: orders(),
        cluster: "DEFAULT".into(),
        ip: ip.into(),
        port: 8080,
    }
}

fn short_key(ip: &str, port: u16) -> InstanceKey {
    InstanceKey {
        service: ServiceName::new("n", "g", "s"),
        cluster: "c".into(),
        ip: ip.into(),
        port,
    }
}

fn meta(entries: &[(&str, &str)]) -> Metadata {
    entries
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect()
}

fn view(ip: &str, weight: f64, healthy: bool, metadata: Metadata) -> InstanceView {
    InstanceView {
        cluster: "DEFAULT".into(),
        ip: ip.into(),
        port: 8080,
        weight,
        healthy,
        enabled: true,
        metadata,
    }
}

/// The hlc of the SyncRecord example: 1 700 000 000 000 ms, logical counter 1.
const EXAMPLE_HLC: u64 = (1_700_000_000_000 << 16) | 1;

fn example_record() -> SyncRecord {
    SyncRecord {
        key: key("10.0.0.1"),
        version: Version {
            hlc: EXAMPLE_HLC,
            origin: 2,
        },
        alive: true,
        healthy: true,
        enabled: true,
        lapsed: false,
        weight: 1.0,
        lease: Lease::default(),
        session: EXAMPLE_SESSION,
        metadata: meta(&[("zone", "a")]),
    }
}

fn expected(name: &str) -> Option<Expected> {
    let frame = |request_id, msg| Expected::Frame {
        request_id,
        flags: 0,
        msg,
    };
    Some(match name {
        "Hello" => frame(
            1,
            Message::Hello(Hello {
                max_version: 1,
                client_name: "sdk".into(),
            }),
        ),
        "HelloOk" => frame(
            1,
            Message::HelloOk(HelloOk {
                version: 1,
                node_id: 3,
                ready: true,
                frame_len_max: FRAME_LEN_MAX as u32,
                batch_instances_max: BATCH_INSTANCES_MAX as u16,
                lease_floor_ms: 500,
            }),
        ),
        "HelloOkNotReady" => frame(
            1,
            Message::HelloOk(HelloOk {
                version: 1,
                node_id: 2,
                ready: false,
                frame_len_max: FRAME_LEN_MAX as u32,
                batch_instances_max: BATCH_INSTANCES_MAX as u16,
                lease_floor_ms: 1000,
            }),
        ),
        "Ping" => frame(2, Message::Ping(0x0102_0304_0506_0708)),
        "Pong" => frame(2, Message::Pong(0x0102_0304_0506_0708)),
        "Ack" => frame(3, Message::Ack(1)),
        "Error" => frame(
            3,
            Message::Error(ErrorBody::new(
                ErrorCode::InvalidArgument,
                "port must not be 0",
            )),
        ),
        "ErrorConnectionLevel" => frame(
            0,
            Message::Error(ErrorBody::new(ErrorCode::ShuttingDown, "bye")),
        ),
        "Register" => frame(
            4,
            Message::Register(Register {
                session_bound: true,
                instances: vec![Instance {
                    metadata: meta(&[("zone", "a")]),
                    ..Instance::new(key("10.0.0.1"))
                }],
            }),
        ),
        "RegisterTwo" => frame(
            5,
            Message::Register(Register {
                session_bound: false,
                instances: vec![
                    Instance {
                        key: short_key("h1", 1),
                        weight: 0.5,
                        healthy: false,
                        enabled: true,
                        lease: Lease {
                            beat_ms: 1000,
                            unhealthy_ms: 2000,
                            expire_ms: 3000,
                        },
                        metadata: Vec::new(),
                    },
                    Instance {
                        key: short_key("h2", 65535),
                        weight: 0.0,
                        healthy: false,
                        enabled: false,
                        lease: Lease::default(),
                        metadata: meta(&[("k", ""), ("j", "v")]),
                    },
                ],
            }),
        ),
        "Deregister" => frame(6, Message::Deregister(vec![key("10.0.0.1")])),
        "Beat" => frame(7, Message::Beat(vec![key("10.0.0.1"), key("10.0.0.2")])),
        "BeatAck" => frame(7, Message::BeatAck(vec![1])),
        "BeatAckAllKnown" => frame(8, Message::BeatAck(Vec::new())),
        "Query" => frame(
            9,
            Message::Query(Query {
                name: orders(),
                cluster: "".into(),
                healthy_only: true,
            }),
        ),
        "QueryResult" => frame(
            9,
            Message::QueryResult(ServiceSnapshot {
                name: orders(),
                revision: 42,
                instances: vec![view("10.0.0.1", 1.0, true, meta(&[("zone", "a")]))],
            }),
        ),
        "QueryResultUnknownService" => frame(
            10,
            Message::QueryResult(ServiceSnapshot {
                name: ServiceName::new("public", "DEFAULT_GROUP", "nope"),
                revision: 0,
                instances: Vec::new(),
            }),
        ),
        "ListServices" => frame(
            11,
            Message::ListServices(ListServices {
                namespace: "public".into(),
                page: 0,
                page_size: 100,
            }),
        ),
        "ServiceList" => frame(
            11,
            Message::ServiceList(ServiceList {
                total: 1,
                services: vec![ServiceSummary {
                    group: "DEFAULT_GROUP".into(),
                    service: "orders".into(),
                    instances: 2,
                    healthy: 1,
                }],
            }),
        ),
        "Subscribe" => frame(12, Message::Subscribe(orders())),
        "Unsubscribe" => frame(13, Message::Unsubscribe(orders())),
        "Push" => frame(
            0,
            Message::Push(ServiceSnapshot {
                name: orders(),
                revision: 43,
                instances: vec![
                    view("10.0.0.1", 1.0, true, meta(&[("zone", "a")])),
                    view("10.0.0.2", 0.5, false, Vec::new()),
                ],
            }),
        ),
        "PushDelta" => frame(
            0,
            Message::PushDelta(ServiceDelta {
                name: orders(),
                base_revision: 43,
                revision: 47,
                removed: vec![ViewKey {
                    cluster: "DEFAULT".into(),
                    ip: "10.0.0.2".into(),
                    port: 8080,
                }],
                updated: vec![view("10.0.0.3", 1.0, true, meta(&[("zone", "a")]))],
            }),
        ),
        "PushDeltaOneChange" => frame(
            0,
            Message::PushDelta(ServiceDelta {
                name: orders(),
                base_revision: 47,
                revision: 48,
                removed: Vec::new(),
                updated: vec![view("10.0.0.1", 1.0, false, meta(&[("zone", "a")]))],
            }),
        ),
        "ClusterStatus" => frame(14, Message::ClusterStatus),
        "ClusterStatusResult" => frame(
            14,
            Message::ClusterStatusResult(ClusterStatus {
                node_id: 1,
                ready: true,
                instances: 2,
                members: vec![
                    MemberStatus {
                        id: 1,
                        addr: "127.0.0.1:8859".into(),
                        up: true,
                        left: false,
                        owned: 1,
                    },
                    MemberStatus {
                        id: 2,
                        addr: "127.0.0.1:9859".into(),
                        up: false,
                        left: false,
                        owned: 0,
                    },
                    MemberStatus {
                        id: 3,
                        addr: "127.0.0.1:7859".into(),
                        up: false,
                        left: true,
                        owned: 0,
                    },
                ],
            }),
        ),
        "Owner" => frame(
            15,
            Message::Owner {
                ip: "10.0.0.1".into(),
                port: 8080,
            },
        ),
        "OwnerResult" => frame(15, Message::OwnerResult(1)),
        "SyncRecord" => Expected::Record(example_record()),
        "SyncRecordTombstone" => Expected::Record(SyncRecord {
            key: key("10.0.0.2"),
            version: Version {
                hlc: EXAMPLE_HLC + 5,
                origin: 1,
            },
            alive: false,
            healthy: true,
            enabled: true,
            lapsed: true,
            weight: 0.0,
            lease: Lease::default(),
            session: 0,
            metadata: Vec::new(),
        }),
        "PeerHello" => frame(
            0,
            Message::PeerHello(PeerHello {
                node_id: 2,
                max_version: 1,
                cluster_hash: 0x1122_3344_5566_7788,
                nonce: run_of(0x00),
            }),
        ),
        "PeerChallenge" => frame(
            0,
            Message::PeerChallenge(PeerChallenge {
                node_id: 1,
                nonce: run_of(0x10),
                mac: run_of(0x20),
            }),
        ),
        "PeerAuth" => frame(0, Message::PeerAuth(run_of(0x40))),
        "Leave" => frame(27, Message::Leave(3)),
        "FwdRegister" => frame(
            21,
            Message::FwdRegister {
                session: EXAMPLE_SESSION,
                instances: vec![Instance {
                    metadata: meta(&[("zone", "a")]),
                    ..Instance::new(key("10.0.0.1"))
                }],
            },
        ),
        "FwdDeregister" => frame(22, Message::FwdDeregister(vec![key("10.0.0.1")])),
        "FwdBeat" => frame(23, Message::FwdBeat(vec![key("10.0.0.1")])),
        "FwdLapse" => frame(
            24,
            Message::FwdLapse {
                session: EXAMPLE_SESSION,
                keys: vec![key("10.0.0.1")],
            },
        ),
        "SyncBatch" => frame(0, Message::SyncBatch(vec![example_record()])),
        "Digest" => {
            let rec = example_record();
            let k = &rec.key;
            let kh = key_hash(&k.service, &k.cluster, &k.ip, k.port);
            frame(
                0,
                Message::Digest(DigestMsg {
                    owner: 1,
                    view_hash: Ownership::new(vec![1, 2, 3]).view_hash(),
                    buckets: vec![(1, digest_term(kh, rec.version)), (0, 0)],
                }),
            )
        }
        "Auth" => frame(2, Message::Auth(Token::new("distro_example"))),
        "AuthAccepted" => frame(2, Message::Ack(1)),
        // The messages are those of the request API's rejections: what a node sends.
        "ErrorUnauthenticated" => frame(2, Message::Error(error_body(&Rejection::Unauthenticated))),
        "ErrorPermissionDenied" => frame(
            4,
            Message::Error(error_body(&Rejection::PermissionDenied {
                namespace: "prod".into(),
                access: Access::Write,
            })),
        ),
        "Pull" => frame(
            25,
            Message::Pull(PullMsg {
                owner: 1,
                buckets: vec![906, 1023],
            }),
        ),
        "RecordsMore" => Expected::Frame {
            request_id: 25,
            flags: FLAG_MORE,
            msg: Message::Records(vec![example_record()]),
        },
        "RecordsLast" => frame(25, Message::Records(Vec::new())),
        "SnapshotRequest" => frame(26, Message::SnapshotRequest),
        _ => return None,
    })
}

fn all_opcodes() -> Vec<Opcode> {
    (0..=255u8)
        .filter_map(|b| Opcode::from_u8(b).ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Examples

#[test]
fn example_names_match_the_expected_set() {
    let doc = spec();
    let found: Vec<String> = examples(&doc).into_iter().map(|e| e.name).collect();
    let mut seen = BTreeSet::new();
    for n in &found {
        assert!(seen.insert(n.as_str()), "example `{n}` appears twice");
    }
    let unknown: Vec<&str> = seen
        .iter()
        .copied()
        .filter(|n| expected(n).is_none())
        .collect();
    assert!(
        unknown.is_empty(),
        "examples in wire-spec.md that this test does not know: {unknown:?}"
    );
    let missing: Vec<&str> = EXAMPLE_NAMES
        .iter()
        .copied()
        .filter(|n| !seen.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "examples this test expects but wire-spec.md lacks: {missing:?}"
    );
    for n in EXAMPLE_NAMES {
        assert!(
            expected(n).is_some(),
            "EXAMPLE_NAMES lists `{n}` without a value"
        );
    }
}

#[test]
fn every_example_encodes_and_decodes_as_the_spec_says() {
    let doc = spec();
    let all = examples(&doc);
    assert!(!all.is_empty(), "wire-spec.md has no examples");
    for ex in all {
        let what = format!("wire-spec.md:{} Example `{}`", ex.line, ex.name);
        let Some(value) = expected(&ex.name) else {
            panic!("{what}: unknown example name");
        };
        match value {
            Expected::Frame {
                request_id,
                flags,
                msg,
            } => {
                assert_same_bytes(&what, &encode_frame(request_id, flags, &msg), &ex.bytes);

                let mut buf = BytesMut::from(&ex.bytes[..]);
                let frame = FrameCodec::default()
                    .decode(&mut buf)
                    .unwrap_or_else(|e| panic!("{what}: the codec rejects it: {e}"))
                    .unwrap_or_else(|| panic!("{what}: the codec wants more bytes"));
                assert!(buf.is_empty(), "{what}: bytes left after the frame");
                assert_eq!(frame.version, PROTOCOL_VERSION, "{what}: version");
                assert_eq!(frame.opcode, msg.opcode() as u8, "{what}: opcode");
                assert_eq!(frame.flags, flags, "{what}: flags");
                assert_eq!(frame.request_id, request_id, "{what}: request id");
                let decoded = frame
                    .message()
                    .unwrap_or_else(|e| panic!("{what}: the body does not decode: {e}"));
                assert_eq!(decoded, msg, "{what}: decodes to another value");
            }
            Expected::Record(rec) => {
                let mut out = BytesMut::new();
                rec.encode(&mut out);
                assert_same_bytes(&what, &out, &ex.bytes);

                let mut r = Reader::new(Bytes::from(ex.bytes.clone()));
                let decoded = SyncRecord::decode(&mut r)
                    .unwrap_or_else(|e| panic!("{what}: the record does not decode: {e}"));
                r.finish()
                    .unwrap_or_else(|e| panic!("{what}: bytes left after the record: {e}"));
                assert_eq!(decoded, rec, "{what}: decodes to another value");
            }
        }
    }
}

#[test]
fn every_message_kind_has_a_frame_example() {
    let doc = spec();
    let mut covered = BTreeSet::new();
    let mut records = 0;
    for ex in examples(&doc) {
        match expected(&ex.name) {
            Some(Expected::Frame { msg, .. }) => {
                covered.insert(msg.opcode() as u8);
            }
            Some(Expected::Record(_)) => records += 1,
            None => {}
        }
    }
    let missing: Vec<Opcode> = all_opcodes()
        .into_iter()
        .filter(|op| !covered.contains(&(*op as u8)))
        .collect();
    assert!(missing.is_empty(), "no frame example for {missing:?}");
    assert!(records > 0, "no SyncRecord example");
}

#[test]
fn the_example_parser_rejects_what_it_cannot_read() {
    let ok = "x\nExample `A`:\n```hex\n00 ff # c\n0a\n```\n";
    let ex = examples(ok);
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].bytes, vec![0x00, 0xff, 0x0a]);
    for bad in [
        "Example `A`:\n```hex\n0\n```\n",
        "Example `A`:\n```hex\nzz\n```\n",
        "Example `A`:\n```hex\n00\n",
        "Example `A`:\nplain text\n",
        "```hex\n00\n```\n",
    ] {
        assert!(
            std::panic::catch_unwind(|| examples(bad)).is_err(),
            "accepted {bad:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tables

#[test]
fn opcode_table_matches_the_code() {
    let doc = spec();
    let mut listed = BTreeSet::new();
    for row in table_rows(section(&doc, "## 4. Opcodes")) {
        let Some(code) = backticked(&row[0]).and_then(|c| c.strip_prefix("0x")) else {
            continue;
        };
        let b = u8::from_str_radix(code, 16).unwrap_or_else(|_| panic!("bad opcode {code}"));
        let op = Opcode::from_u8(b)
            .unwrap_or_else(|_| panic!("the spec lists 0x{b:02X}, the code does not know it"));
        assert_eq!(format!("{op:?}"), row[1], "name of opcode 0x{b:02X}");
        assert!(listed.insert(b), "0x{b:02X} listed twice");
    }
    let known: BTreeSet<u8> = all_opcodes().into_iter().map(|o| o as u8).collect();
    assert_eq!(listed, known, "opcodes of the spec's table vs the code");
}

#[test]
fn error_code_table_matches_the_code() {
    let doc = spec();
    let mut listed = BTreeSet::new();
    for row in table_rows(section(&doc, "### 7.1 Error codes")) {
        let Ok(code) = row[0].parse::<u16>() else {
            continue;
        };
        let kind = ErrorCode::from_u16(code)
            .unwrap_or_else(|| panic!("the spec lists code {code}, the code does not know it"));
        assert_eq!(
            Some(format!("{kind:?}").as_str()),
            backticked(&row[1]),
            "name of error code {code}"
        );
        assert!(listed.insert(code), "code {code} listed twice");
    }
    let known: BTreeSet<u16> = (0..=u16::MAX)
        .filter(|c| ErrorCode::from_u16(*c).is_some())
        .collect();
    assert_eq!(listed, known, "error codes of the spec's table vs the code");
}

/// One value of every decode failure, by the name the spec's table uses.
fn decode_failures() -> Vec<(&'static str, WireError)> {
    let all = vec![
        WireError::FrameTooLarge { len: 0, max: 0 },
        WireError::FrameTooShort { len: 0, min: 0 },
        WireError::Truncated { what: "x" },
        WireError::UnknownOpcode(0),
        WireError::UnsupportedVersion(0),
        WireError::BadUtf8 { what: "x" },
        WireError::CountTooLarge {
            what: "x",
            count: 0,
            max: 0,
        },
        WireError::StringTooLong {
            what: "x",
            len: 0,
            max: 0,
        },
        WireError::TrailingBytes { count: 0 },
        WireError::InvalidValue {
            what: "x",
            reason: "y",
        },
    ];
    all.into_iter()
        .map(|e| {
            // Exhaustive on purpose: a new kind of failure must be added to the spec's table.
            let name = match &e {
                WireError::FrameTooLarge { .. } => "FrameTooLarge",
                WireError::FrameTooShort { .. } => "FrameTooShort",
                WireError::Truncated { .. } => "Truncated",
                WireError::UnknownOpcode(_) => "UnknownOpcode",
                WireError::UnsupportedVersion(_) => "UnsupportedVersion",
                WireError::BadUtf8 { .. } => "BadUtf8",
                WireError::CountTooLarge { .. } => "CountTooLarge",
                WireError::StringTooLong { .. } => "StringTooLong",
                WireError::TrailingBytes { .. } => "TrailingBytes",
                WireError::InvalidValue { .. } => "InvalidValue",
                WireError::Io(_) => unreachable!("not a decode failure"),
            };
            (name, e)
        })
        .collect()
}

#[test]
fn decode_failure_table_matches_the_code() {
    let doc = spec();
    let mut listed: BTreeMap<String, u16> = BTreeMap::new();
    for row in table_rows(section(&doc, "### 7.2 Decode failures")) {
        let Some(name) = backticked(&row[0]) else {
            continue;
        };
        let code: u16 = row[1]
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("decode failure {name}: no code in {:?}", row[1]));
        assert!(
            listed.insert(name.to_string(), code).is_none(),
            "{name} listed twice"
        );
    }
    let failures = decode_failures();
    for (name, e) in &failures {
        let code = listed
            .get(*name)
            .unwrap_or_else(|| panic!("the spec's decode failure table lacks {name}"));
        assert_eq!(*code, e.code() as u16, "code of {name}");
    }
    assert_eq!(
        listed.len(),
        failures.len(),
        "the spec lists unknown failures"
    );
}

/// The value of a limit the spec's table names, from the code.
fn limit_value(name: &str) -> Option<u64> {
    let config = distro::config::Config::default();
    Some(match name {
        "PROTOCOL_VERSION" => PROTOCOL_VERSION as u64,
        "LEN_PREFIX" => LEN_PREFIX as u64,
        "HEADER_LEN" => HEADER_LEN as u64,
        "FRAME_LEN_MAX" => FRAME_LEN_MAX as u64,
        "NAME_LEN_MAX" => NAME_LEN_MAX as u64,
        "IP_LEN_MAX" => IP_LEN_MAX as u64,
        "META_ENTRIES_MAX" => META_ENTRIES_MAX as u64,
        "META_KEY_LEN_MAX" => META_KEY_LEN_MAX as u64,
        "META_VALUE_LEN_MAX" => META_VALUE_LEN_MAX as u64,
        "BATCH_INSTANCES_MAX" => BATCH_INSTANCES_MAX as u64,
        "BEAT_KEYS_MAX" => BEAT_KEYS_MAX as u64,
        "PAGE_SIZE_MAX" => PAGE_SIZE_MAX as u64,
        "MESSAGE_LEN_MAX" => MESSAGE_LEN_MAX as u64,
        "TOKEN_LEN_MAX" => TOKEN_LEN_MAX as u64,
        "AUTH_FAILURES_MAX" => AUTH_FAILURES_MAX as u64,
        "FLAG_MORE" => FLAG_MORE as u64,
        "DIGEST_BUCKETS" => DIGEST_BUCKETS as u64,
        "WEIGHT_MAX" => {
            assert_eq!(WEIGHT_MAX.fract(), 0.0);
            WEIGHT_MAX as u64
        }
        "LEASE_MS_MAX" => LEASE_MS_MAX as u64,
        "BOUND_PER_SESSION_MAX" => BOUND_PER_SESSION_MAX as u64,
        "SUBSCRIPTIONS_PER_CONNECTION_MAX" => SUBSCRIPTIONS_PER_CONNECTION_MAX as u64,
        "REQUESTS_IN_FLIGHT_MAX" => distro::frontend::share::REQUESTS_IN_FLIGHT_MAX as u64,
        "QUEUED_BYTES_MAX" => distro::frontend::share::QUEUED_BYTES_MAX as u64,
        "TOMBSTONE_GRACE_MS" => TOMBSTONE_GRACE_MS,
        "NONCE_LEN" => NONCE_LEN as u64,
        "MAC_LEN" => MAC_LEN as u64,
        "RECORDS_PER_FRAME_MAX" => RECORDS_PER_FRAME_MAX as u64,
        "MEMBERS_MAX" => MEMBERS_MAX as u64,
        "lease_floor_ms" => config.lease_floor_ms as u64,
        "client_idle_timeout_ms" => config.client_idle_timeout_ms,
        "push_delay_ms" => config.push_delay_ms,
        "lease_pass_ms" => config.lease_pass_ms,
        "max_connections" => config.max_connections as u64,
        _ => return None,
    })
}

#[test]
fn limits_table_matches_the_code() {
    let doc = spec();
    let mut listed = 0;
    for row in table_rows(section(&doc, "## 9. Limits")) {
        let Some(name) = backticked(&row[0]) else {
            continue;
        };
        let want = limit_value(name)
            .unwrap_or_else(|| panic!("the spec's limit table names {name}, unknown to this test"));
        let got: u64 = row[1]
            .parse()
            .unwrap_or_else(|_| panic!("limit {name}: {:?} is not a plain number", row[1]));
        assert_eq!(got, want, "limit {name}: spec vs code");
        listed += 1;
    }
    assert!(listed >= 20, "the limit table lost rows ({listed} left)");
}

// ---------------------------------------------------------------------------------------------
// Hashing and digests

fn vectors(doc: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (i, line) in doc.lines().enumerate() {
        let Some(rest) = line.strip_prefix("Vector `") else {
            continue;
        };
        let (name, value) = rest
            .split_once("`: `")
            .unwrap_or_else(|| panic!("wire-spec.md:{}: malformed vector line", i + 1));
        let value = value
            .strip_suffix('`')
            .unwrap_or_else(|| panic!("wire-spec.md:{}: malformed vector value", i + 1));
        let v = match value.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16),
            None => value.parse(),
        }
        .unwrap_or_else(|_| panic!("wire-spec.md:{}: {value:?} is not a number", i + 1));
        assert!(
            out.insert(name.to_string(), v).is_none(),
            "vector {name} twice"
        );
    }
    out
}

/// The canonical key bytes as the spec defines them: the InstanceKey wire encoding.
fn canonical_key_bytes(k: &InstanceKey) -> Vec<u8> {
    let mut out = BytesMut::new();
    k.encode(&mut out);
    out.to_vec()
}

#[test]
fn hash_vectors_match_the_definitions_and_the_code() {
    let doc = spec();
    let vecs = vectors(&doc);
    let k = key("10.0.0.1");
    let ver = example_record().version;

    // The definitions of section 10, computed here from first principles...
    let kh = xxh3_64(&canonical_key_bytes(&k));
    let mut term_input = Vec::new();
    term_input.extend_from_slice(&kh.to_be_bytes());
    term_input.extend_from_slice(&ver.hlc.to_be_bytes());
    term_input.extend_from_slice(&ver.origin.to_be_bytes());
    let term = xxh3_64(&term_input);
    let scores: Vec<(u64, u16)> = [1u16, 2, 3]
        .iter()
        .map(|n| (xxh3_64_with_seed(b"10.0.0.1:8080", *n as u64), *n))
        .collect();
    let owner = scores.iter().max().unwrap().1;

    // ...agree with the code...
    assert_eq!(key_hash(&k.service, &k.cluster, &k.ip, k.port), kh);
    assert_eq!(bucket_of(kh) as u64, kh % 1024);
    assert_eq!(digest_term(kh, ver), term);
    for (s, n) in &scores {
        assert_eq!(score("10.0.0.1", 8080, *n), *s, "score of node {n}");
    }
    assert_eq!(Ownership::new(vec![3, 1, 2]).owner("10.0.0.1", 8080), owner);
    let view_hash = xxh3_64(&[0, 1, 0, 2, 0, 3]);
    assert_eq!(Ownership::new(vec![3, 2, 1, 2]).view_hash(), view_hash);
    let cluster_hash = xxh3_64(b"distro");
    assert_eq!(distro::cluster::auth::cluster_hash("distro"), cluster_hash);

    // ...and with the spec's vectors.
    let want: BTreeMap<String, u64> = [
        ("key_hash", kh),
        ("digest_bucket", kh % 1024),
        ("digest_term", term),
        ("score_node_1", scores[0].0),
        ("score_node_2", scores[1].0),
        ("score_node_3", scores[2].0),
        ("owner_of_1_2_3", owner as u64),
        ("view_hash_1_2_3", view_hash),
        ("cluster_hash_distro", cluster_hash),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), v))
    .collect();
    let mut report = String::new();
    for (name, v) in &want {
        match vecs.get(name) {
            Some(got) if got == v => {}
            Some(got) => {
                writeln!(report, "{name}: spec 0x{got:016x}, code 0x{v:016x} ({v})").unwrap()
            }
            None => writeln!(
                report,
                "{name}: missing from the spec (code 0x{v:016x} ({v}))"
            )
            .unwrap(),
        }
    }
    for name in vecs.keys() {
        if !want.contains_key(name) {
            writeln!(report, "{name}: in the spec, unknown to this test").unwrap();
        }
    }
    assert!(report.is_empty(), "hash vectors differ:\n{report}");
}

#[test]
fn ownership_ties_go_to_the_larger_node_id() {
    // A tie needs a 64-bit collision, so check the rule on the scores directly: the owner is
    // the maximum of (score, node id), which is what the spec's rule says.
    for ip in ["10.0.0.1", "10.0.0.2", "h", "::1"] {
        for port in [1u16, 80, 8080, 65535] {
            let live = [1u16, 2, 7, 40000];
            let best = live
                .iter()
                .map(|n| (score(ip, port, *n), *n))
                .max()
                .unwrap();
            assert_eq!(Ownership::new(live.to_vec()).owner(ip, port), best.1);
        }
    }
    assert_eq!(Ownership::standalone(9).owner("10.0.0.1", 8080), 9);
}

#[test]
fn bucket_value_counts_live_records_only() {
    let node = 1;
    let store = Store::new(
        node,
        Clock::starting_at(1_700_000_000_000),
        Arc::new(NoObserver),
    );
    let k = key("10.0.0.1");
    let b = bucket_of(key_hash(&k.service, &k.cluster, &k.ip, k.port));

    store.register(&Instance::new(k.clone()), 0);
    let rec = store.get(&k).expect("registered");
    let term = digest_term(rec.key_hash, rec.version);
    let d = store.digest(node);
    assert_eq!((d.buckets[b].count, d.buckets[b].sum), (1, term));
    assert_eq!(d.total_count(), 1);

    assert!(store.deregister(&k));
    assert!(!store.get(&k).expect("tombstone kept").alive);
    let d = store.digest(node);
    assert_eq!(
        (d.buckets[b].count, d.buckets[b].sum),
        (0, 0),
        "a tombstone must not count in the digest"
    );
}

#[test]
fn the_delta_examples_follow_on_from_the_push_example() {
    let msg = |name: &str| match expected(name) {
        Some(Expected::Frame { msg, .. }) => msg,
        _ => panic!("{name} is a frame example"),
    };
    let Message::Push(list) = msg("Push") else {
        panic!("Push example")
    };
    let mut list = list;
    for name in ["PushDelta", "PushDeltaOneChange"] {
        let Message::PushDelta(d) = msg(name) else {
            panic!("{name} example")
        };
        list = list
            .apply(&d)
            .unwrap_or_else(|e| panic!("{name} does not follow on: {e}"));
    }
    assert_eq!(list.revision, 48);
    let shown: Vec<(String, bool)> = list
        .instances
        .iter()
        .map(|i| (i.ip.to_string(), i.healthy))
        .collect();
    assert_eq!(
        shown,
        [
            ("10.0.0.1".to_string(), false),
            ("10.0.0.3".to_string(), true)
        ]
    );
}
