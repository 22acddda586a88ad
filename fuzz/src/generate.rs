//! Values made from fuzzer bytes. Every generator consumes a fixed pattern of bytes (see each
//! function), so a seed can spell out the value it wants; [`Choice`] names the pool picks.
//!
//! Everything generated stays within the wire limits (names of at most 255 bytes, at most 64
//! metadata entries, finite weights), so it encodes to frames that decode again: the targets
//! reach the handlers and the store instead of stopping at the codec. Values the *data model*
//! rejects (empty names, control characters, port 0, leases below the floor, weights out of
//! range) are in the pools on purpose.

use distro::model::{
    BATCH_INSTANCES_MAX, IP_LEN_MAX, Instance, InstanceKey, Lease, META_ENTRIES_MAX, Metadata,
    NAME_LEN_MAX, ServiceName, Text, Version,
};
use distro::wire::{
    DigestMsg, ErrorBody, ErrorCode, Hello, HelloOk, ListServices, Message, PeerHello, PullMsg,
    Query, Register, SyncRecord, TOKEN_LEN_MAX, Token,
};

use crate::Input;

pub const NAMESPACES: &[&str] = &["public", "dev"];
pub const GROUPS: &[&str] = &["DEFAULT_GROUP", "g1"];
pub const SERVICES: &[&str] = &["orders", "users", "pay", ""];
pub const CLUSTERS: &[&str] = &["DEFAULT", "c1", "bad\ncluster"];
pub const IPS: &[&str] = &["10.0.0.1", "10.0.0.2", "10.0.0.3", "::1", "host-a"];
pub const PORTS: &[u16] = &[8080, 9090, 1, 65535, 8080, 0];
pub const META_KEYS: &[&str] = &["zone", "version", "env", ""];
pub const META_VALUES: &[&str] = &["a", "b", "1.0", ""];
pub const WEIGHTS: &[f64] = &[1.0, 0.0, 0.5, 100.0, 10_000.0, -1.0, 10_000.5];
/// Leases: Nacos's default, short ones at the test floor (100 ms), below the floor, misordered,
/// all zero; the last slot reads three u32s from the input.
pub const LEASES: &[(u32, u32, u32)] = &[
    (5_000, 15_000, 30_000),
    (100, 200, 300),
    (100, 100, 100),
    (1_000, 3_000, 6_000),
    (50, 100, 200),
    (1_000, 500, 2_000),
    (0, 0, 0),
];

/// The tokens of the `client_session` target's guarded node ([`token_file`]): one writes every
/// namespace, one reads `public`, one writes `dev`.
pub const TOKENS: &[&str] = &["distro_fuzz_admin", "distro_fuzz_reader", "distro_fuzz_dev"];
/// Tokens an Auth may carry: the node's, near misses of them, and nothing.
pub const AUTH_TOKENS: &[&str] = &[
    "distro_fuzz_admin",
    "distro_fuzz_reader",
    "distro_fuzz_dev",
    "distro_fuzz_admi",
    "distro_fuzz_adminx",
    "",
];

/// The token file of the guarded node: [`TOKENS`] with their rights.
pub fn token_file() -> &'static str {
    static FILE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let entry = |name: &str, token: &str, read: &[&str], write: &[&str]| {
            let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            distro::auth::file::token_entry(name, token, &v(read), &v(write)).expect("an entry")
        };
        [
            entry("admin", TOKENS[0], &[], &["*"]),
            entry("reader", TOKENS[1], &["public"], &[]),
            entry("dev", TOKENS[2], &[], &["dev"]),
        ]
        .join("\n")
    })
}

/// The namespaces the token of the guarded node may write; `None` for every namespace.
pub fn writable_by(token: &str) -> Option<&'static [&'static str]> {
    match token {
        t if t == TOKENS[0] => None,
        t if t == TOKENS[2] => Some(&["dev"]),
        _ => Some(&[]),
    }
}

/// Bytes at or above this pick a name made of input bytes instead of a pool entry.
pub const RAW_NAME: u8 = 0xF0;

/// A pool pick as a byte (for seeds): `Choice(n)` picks entry `n` of the pool read next.
#[derive(Debug, Clone, Copy)]
pub struct Choice(pub u8);

/// A name: one byte picks a pool entry, or (at or above [`RAW_NAME`]) a length byte and that
/// many input bytes, made UTF-8 and cut to `max` bytes.
pub fn text(inp: &mut Input, pool: &[&str], max: usize) -> Text {
    let b = inp.u8();
    if b < RAW_NAME {
        return Text::from(pool[b as usize % pool.len()]);
    }
    let n = inp.u8() as usize;
    let mut s = String::from_utf8_lossy(inp.take(n)).into_owned();
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    Text::from(s)
}

/// Three names (namespace, group, service).
pub fn service_name(inp: &mut Input) -> ServiceName {
    ServiceName {
        namespace: text(inp, NAMESPACES, NAME_LEN_MAX),
        group: text(inp, GROUPS, NAME_LEN_MAX),
        service: text(inp, SERVICES, NAME_LEN_MAX),
    }
}

/// Six picks: namespace, group, service, cluster, ip, port.
pub fn key(inp: &mut Input) -> InstanceKey {
    InstanceKey {
        service: service_name(inp),
        cluster: text(inp, CLUSTERS, NAME_LEN_MAX),
        ip: text(inp, IPS, IP_LEN_MAX),
        port: port(inp),
    }
}

/// The bytes [`key`] reads to pick pool entries `svc` (service), `ip` and `port`, in the
/// first namespace, group and cluster.
pub fn key_bytes(svc: u8, ip: u8, port: u8) -> [u8; 6] {
    [0, 0, svc, 0, ip, port]
}

pub fn port(inp: &mut Input) -> u16 {
    let b = inp.u8();
    if b < RAW_NAME {
        PORTS[b as usize % PORTS.len()]
    } else {
        inp.u16()
    }
}

/// One pick; the last slot of the pool reads a u64 as the weight's bits (a non-finite value,
/// which the wire refuses, becomes 1.0).
pub fn weight(inp: &mut Input) -> f64 {
    let b = inp.u8() as usize % (WEIGHTS.len() + 1);
    if b < WEIGHTS.len() {
        return WEIGHTS[b];
    }
    let w = f64::from_bits(inp.u64());
    if w.is_finite() { w } else { 1.0 }
}

/// One pick; the slot after the pool reads three u32s.
pub fn lease(inp: &mut Input) -> Lease {
    let b = inp.u8() as usize % (LEASES.len() + 1);
    let (beat_ms, unhealthy_ms, expire_ms) = if b < LEASES.len() {
        LEASES[b]
    } else {
        (inp.u32(), inp.u32(), inp.u32())
    };
    Lease {
        beat_ms,
        unhealthy_ms,
        expire_ms,
    }
}

/// A count byte (`n % 4` entries; 0xFF means the limit, 64), then a key and a value pick per
/// entry. Keys repeat on purpose: the store keeps the last value of a repeated key.
pub fn metadata(inp: &mut Input) -> Metadata {
    let b = inp.u8();
    let n = if b == 0xFF {
        META_ENTRIES_MAX
    } else {
        b as usize % 4
    };
    (0..n)
        .map(|_| {
            (
                text(inp, META_KEYS, 255),
                text(inp, META_VALUES, distro::model::META_VALUE_LEN_MAX),
            )
        })
        .collect()
}

/// Key, weight, status byte (bit 0 healthy, bit 1 enabled), lease, metadata.
pub fn instance(inp: &mut Input) -> Instance {
    let key = key(inp);
    let weight = weight(inp);
    let status = inp.u8();
    Instance {
        key,
        weight,
        healthy: status & 1 != 0,
        enabled: status & 2 != 0,
        lease: lease(inp),
        metadata: metadata(inp),
    }
}

/// Session ids a record may carry: none, this node's first sessions, another node's.
pub const SESSIONS: &[u64] = &[0, (1 << 48) | 1, (1 << 48) | 2, (2 << 48) | 1];

/// An HLC value: a mode byte, then per mode: 0–3 a small value (one byte: old versions that
/// collide often), 4–5 `now_ms << 16` plus a signed byte (around this node's own stamps),
/// 6 a raw u64, 7 `u64::MAX` minus a byte (the top of the range).
pub fn hlc(inp: &mut Input, now_ms: u64) -> u64 {
    match inp.u8() % 8 {
        0..=3 => inp.u8() as u64,
        4 | 5 => (now_ms << 16).wrapping_add_signed(inp.u8() as i8 as i64),
        6 => inp.u64(),
        _ => u64::MAX - inp.u8() as u64,
    }
}

/// Key, hlc, origin byte (0..=4), status byte (the four record bits), weight, lease, session
/// pick, metadata.
pub fn sync_record(inp: &mut Input, now_ms: u64) -> SyncRecord {
    let key = key(inp);
    let version = Version {
        hlc: hlc(inp, now_ms),
        origin: (inp.u8() % 5) as u16,
    };
    let bits = inp.u8();
    SyncRecord {
        key,
        version,
        alive: bits & 1 != 0,
        healthy: bits & 2 != 0,
        enabled: bits & 4 != 0,
        lapsed: bits & 8 != 0,
        weight: weight(inp),
        lease: lease(inp),
        session: inp.pick(SESSIONS),
        metadata: metadata(inp),
    }
}

fn list<T>(inp: &mut Input, max: usize, mut item: impl FnMut(&mut Input) -> T) -> Vec<T> {
    let n = inp.u8() as usize % (max + 1);
    (0..n).map(|_| item(inp)).collect()
}

/// A message a client might send, request or not: a kind byte, then its fields. Requests are
/// most of them (registers twice as often); one kind in sixteen is an Auth (a token from
/// [`AUTH_TOKENS`], or raw bytes), one in sixteen a reply or a cluster message, which a client
/// port must refuse.
pub fn client_message(inp: &mut Input) -> Message {
    match inp.u8() % 16 {
        0 => Message::Hello(Hello {
            max_version: inp.pick(&[1, 0, 2, 255]),
            client_name: text(inp, &["fuzz", "sdk/1.0"], 1024),
        }),
        1 => Message::Ping(inp.u64()),
        2 | 3 | 14 => Message::Register(Register {
            session_bound: inp.bool(),
            instances: list(inp, 4, instance),
        }),
        4 => Message::Deregister(list(inp, 4, key)),
        5 | 6 => Message::Beat(list(inp, 4, key)),
        7 => Message::Query(Query {
            name: service_name(inp),
            cluster: text(inp, &["", "DEFAULT", "c1"], NAME_LEN_MAX),
            healthy_only: inp.bool(),
        }),
        8 => Message::ListServices(ListServices {
            namespace: text(inp, NAMESPACES, NAME_LEN_MAX),
            page: inp.pick(&[0, 1, 2, u32::MAX]),
            page_size: inp.pick(&[1, 10, 1000, 0, 1001, u16::MAX]),
        }),
        9 => Message::Subscribe(service_name(inp)),
        10 => Message::Unsubscribe(service_name(inp)),
        11 => Message::ClusterStatus,
        12 => Message::Owner {
            ip: text(inp, IPS, IP_LEN_MAX),
            port: port(inp),
        },
        13 => Message::Auth(Token::new(text(inp, AUTH_TOKENS, TOKEN_LEN_MAX))),
        _ => not_a_request(inp),
    }
}

/// Replies and cluster messages, which a client session answers with NotAllowed.
fn not_a_request(inp: &mut Input) -> Message {
    match inp.u8() % 10 {
        0 => Message::Pong(inp.u64()),
        1 => Message::Ack(inp.u32()),
        2 => Message::Error(ErrorBody::new(ErrorCode::Internal, "fuzz")),
        3 => Message::HelloOk(HelloOk {
            version: 1,
            node_id: inp.u16(),
            ready: inp.bool(),
            frame_len_max: inp.u32(),
            batch_instances_max: BATCH_INSTANCES_MAX as u16,
            lease_floor_ms: inp.u32(),
        }),
        4 => Message::SyncBatch(list(inp, 3, |i| sync_record(i, 0))),
        5 => Message::FwdRegister {
            session: inp.pick(SESSIONS),
            instances: list(inp, 2, instance),
        },
        6 => Message::Pull(PullMsg {
            owner: inp.u16(),
            buckets: list(inp, 4, |i| i.u16() % 1024),
        }),
        7 => Message::Digest(DigestMsg {
            owner: inp.u16(),
            view_hash: inp.u64(),
            buckets: list(inp, 4, |i| (i.u32(), i.u64())),
        }),
        8 => Message::PeerHello(PeerHello {
            node_id: inp.u16(),
            max_version: 1,
            cluster_hash: inp.u64(),
            nonce: [inp.u8(); 16],
        }),
        9 => Message::Leave(inp.u16()),
        _ => Message::SnapshotRequest,
    }
}

/// View hashes a Digest may carry: the standalone view of node 1 (what the `peer_session`
/// target's node holds, so that the digest is compared), or any value (a view mismatch).
pub fn view_hash(inp: &mut Input) -> u64 {
    if inp.bool() {
        distro::ownership::Ownership::standalone(1).view_hash()
    } else {
        inp.u64()
    }
}

/// A message a peer might send on the peer port: a kind byte, then its fields. Mostly the
/// cluster's requests; one kind in sixteen is a client message, which the peer port refuses.
pub fn peer_message(inp: &mut Input) -> Message {
    match inp.u8() % 16 {
        0 => Message::Ping(inp.u64()),
        1 | 2 => Message::FwdRegister {
            session: inp.pick(SESSIONS),
            instances: list(inp, 4, instance),
        },
        3 => Message::FwdDeregister(list(inp, 4, key)),
        4 => Message::FwdBeat(list(inp, 4, key)),
        5 => Message::FwdLapse {
            session: inp.pick(SESSIONS),
            keys: list(inp, 4, key),
        },
        6..=8 => Message::SyncBatch(list(inp, 8, |i| sync_record(i, crate::WALL_START_MS))),
        9 | 10 => {
            // A full digest (1024 buckets) of zeros, with a few buckets set from the input.
            let owner = inp.pick(&[0, 1, 2, 3]);
            let view_hash = view_hash(inp);
            let mut buckets = vec![(0u32, 0u64); distro::model::DIGEST_BUCKETS];
            let n = inp.u8() % 4;
            for _ in 0..n {
                let b = inp.u16() as usize % buckets.len();
                buckets[b] = (inp.u8() as u32, inp.u64());
            }
            if inp.u8() == 0xFF {
                buckets.truncate(inp.u16() as usize % buckets.len());
            }
            Message::Digest(DigestMsg {
                owner,
                view_hash,
                buckets,
            })
        }
        11 => Message::Pull(PullMsg {
            owner: inp.pick(&[1, 0, 2]),
            buckets: list(inp, 8, |i| i.u16() % 1024),
        }),
        12 => Message::SnapshotRequest,
        13 => Message::Records(list(inp, 2, |i| sync_record(i, crate::WALL_START_MS))),
        // The peer leaving (its own id), or naming another node.
        14 => Message::Leave(inp.pick(&[2, 3, 0])),
        _ => client_message(inp),
    }
}
