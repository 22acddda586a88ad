//! Writes the seed corpus: `fuzz/corpus/<target>/seed-<name>` (run from `fuzz/`:
//! `cargo run --bin gen_corpus`). Seeds are small, meaningful inputs in each target's layout:
//! one valid message of every kind, a pipelined client conversation, and store histories that
//! reach merges, view changes, lease expiry, pulls and snapshots. The fuzzer mutates from there.
//!
//! Files the fuzzer adds are not kept (`fuzz/.gitignore` keeps `seed-*` and `regress-*` only).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use distro::model::*;
use distro::wire::*;
use distro_fuzz::WALL_START_MS as WALL_MS;
use distro_fuzz::generate::{RAW_NAME, key_bytes};
use distro_fuzz::session_input::Writer;
use distro_fuzz::store_input::op;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let samples = sample_messages();
    let covered: BTreeSet<u8> = samples.iter().map(|(_, m)| m.opcode() as u8).collect();
    let all: BTreeSet<u8> = distro_fuzz::all_opcodes()
        .into_iter()
        .map(|o| o as u8)
        .collect();
    assert_eq!(covered, all, "sample_messages must hold every opcode");

    let dir = root.join("message_bodies");
    for (name, m) in &samples {
        let mut body = BytesMut::new();
        m.encode_body(&mut body);
        let mut seed = vec![m.opcode() as u8];
        seed.extend_from_slice(&body);
        write(&dir, name, &seed);
    }

    let dir = root.join("frame_decoder");
    for (i, (name, m)) in samples.iter().enumerate() {
        let mut seed = vec![i as u8, 0];
        seed.extend_from_slice(&encode_frame(i as u32, 0, m));
        write(&dir, name, &seed);
    }
    let conversation: Vec<u8> = samples
        .iter()
        .filter(|(_, m)| !m.opcode().is_peer())
        .enumerate()
        .flat_map(|(i, (_, m))| encode_frame(i as u32, 0, m).to_vec())
        .collect();
    // Whole, one byte at a time, in 3-byte pieces.
    for (split, name) in [
        (7, "pipeline"),
        (0, "pipeline-bytewise"),
        (2, "pipeline-3s"),
    ] {
        let mut seed = vec![split, 0];
        seed.extend_from_slice(&conversation);
        write(&dir, name, &seed);
    }
    let ping = encode_frame(9, FLAG_MORE, &Message::Ping(9));
    let mut seed = vec![7, 0];
    seed.extend_from_slice(&ping);
    seed.extend_from_slice(&ping[..ping.len() - 3]);
    write(&dir, "truncated-at-eof", &seed);
    write(&dir, "too-large", &[7, 0, 0xFF, 0xFF, 0xFF, 0xFF, 1, 3]);
    write(&dir, "too-short", &[7, 0, 0, 0, 0, 7, 1, 3, 0, 0, 0, 0, 0]);
    let mut seed = vec![7, 0xF1];
    seed.extend_from_slice(&encode_frame(1, 0, &samples[0].1));
    write(&dir, "small-limit", &seed);
    let mut bad_version = encode_frame(1, 0, &Message::Ping(1)).to_vec();
    bad_version[4] = 2;
    let mut seed = vec![7, 0];
    seed.extend_from_slice(&bad_version);
    write(&dir, "version-2", &seed);

    write_session_seeds(&root.join("client_session"));
    write_tls_seeds(&root.join("client_session"), &root.join("tls_session"));
    write_peer_seeds(&root.join("peer_session"));
    write_store_seeds(&root.join("store_batches"));
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("create corpus dir");
    let path = dir.join(format!("seed-{name}"));
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The TLS session's seeds: every client session seed (its items, after a real handshake: mode
/// bit 0 set), the same bytes sent before any handshake (bit 0 clear), and a truncated
/// ClientHello record.
fn write_tls_seeds(client_session: &Path, dir: &Path) {
    let mut names: Vec<_> = std::fs::read_dir(client_session)
        .expect("the client session seeds")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix("seed-").map(str::to_string))
        .collect();
    names.sort();
    for name in names {
        let bytes = std::fs::read(client_session.join(format!("seed-{name}"))).unwrap();
        let Some((&mode, items)) = bytes.split_first() else {
            continue;
        };
        // The token-file bit of the client session has no meaning here.
        let mut after = vec![(mode & !1) | 1];
        after.extend_from_slice(items);
        write(dir, &format!("after-handshake-{name}"), &after);
        let mut before = vec![0];
        before.extend_from_slice(items);
        write(dir, &format!("before-handshake-{name}"), &before);
    }
    // A handshake record whose ClientHello stops after its random.
    let mut hello = vec![0, 0x16, 3, 1, 0, 0x40, 1, 0, 0, 0x3c, 3, 3];
    hello.extend_from_slice(&[0x5a; 32]);
    write(dir, "truncated-client-hello", &hello);
}

fn orders() -> ServiceName {
    ServiceName::new("public", "DEFAULT_GROUP", "orders")
}

fn key(ip: &str, port: u16) -> InstanceKey {
    InstanceKey {
        service: orders(),
        cluster: "DEFAULT".into(),
        ip: ip.into(),
        port,
    }
}

fn instance(ip: &str, lease: (u32, u32, u32)) -> Instance {
    let mut i = Instance::new(key(ip, 8080));
    i.lease = Lease {
        beat_ms: lease.0,
        unhealthy_ms: lease.1,
        expire_ms: lease.2,
    };
    i.metadata = vec![
        ("zone".into(), "a".into()),
        ("version".into(), "1.0".into()),
    ];
    i
}

fn record(ip: &str, hlc: u64, origin: u16, alive: bool) -> SyncRecord {
    SyncRecord {
        key: key(ip, 8080),
        version: Version { hlc, origin },
        alive,
        healthy: alive,
        enabled: alive,
        lapsed: false,
        weight: if alive { 1.0 } else { 0.0 },
        lease: Lease::default(),
        session: 0,
        metadata: if alive {
            vec![("zone".into(), "a".into())]
        } else {
            Vec::new()
        },
    }
}

/// One message of every kind, with a file name.
fn sample_messages() -> Vec<(&'static str, Message)> {
    let view = InstanceView {
        cluster: "DEFAULT".into(),
        ip: "10.0.0.1".into(),
        port: 8080,
        weight: 1.0,
        healthy: true,
        enabled: true,
        metadata: vec![("zone".into(), "a".into())],
    };
    let snapshot = ServiceSnapshot {
        name: orders(),
        revision: 3,
        instances: vec![view.clone()],
    };
    vec![
        (
            "hello",
            Message::Hello(Hello {
                max_version: 1,
                client_name: "fuzz".into(),
            }),
        ),
        (
            "hello-ok",
            Message::HelloOk(HelloOk {
                version: 1,
                node_id: 1,
                ready: true,
                frame_len_max: FRAME_LEN_MAX as u32,
                batch_instances_max: BATCH_INSTANCES_MAX as u16,
                lease_floor_ms: 500,
            }),
        ),
        ("ping", Message::Ping(42)),
        ("pong", Message::Pong(42)),
        ("ack", Message::Ack(2)),
        ("auth", Message::Auth(Token::new("distro_fuzz_admin"))),
        (
            "error",
            Message::Error(ErrorBody::new(ErrorCode::NotReady, "not ready")),
        ),
        (
            "register",
            Message::Register(Register {
                session_bound: true,
                instances: vec![
                    instance("10.0.0.1", (5_000, 15_000, 30_000)),
                    instance("10.0.0.2", (100, 200, 300)),
                ],
            }),
        ),
        (
            "deregister",
            Message::Deregister(vec![key("10.0.0.1", 8080)]),
        ),
        (
            "beat",
            Message::Beat(vec![key("10.0.0.1", 8080), key("10.0.0.9", 1)]),
        ),
        ("beat-ack", Message::BeatAck(vec![1])),
        (
            "query",
            Message::Query(Query {
                name: orders(),
                cluster: "DEFAULT".into(),
                healthy_only: true,
            }),
        ),
        ("query-result", Message::QueryResult(snapshot.clone())),
        (
            "list-services",
            Message::ListServices(ListServices {
                namespace: "public".into(),
                page: 0,
                page_size: 100,
            }),
        ),
        (
            "service-list",
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
        ("subscribe", Message::Subscribe(orders())),
        ("unsubscribe", Message::Unsubscribe(orders())),
        ("push", Message::Push(snapshot)),
        (
            "push-delta",
            Message::PushDelta(ServiceDelta {
                name: orders(),
                base_revision: 3,
                revision: 5,
                removed: vec![ViewKey {
                    cluster: "DEFAULT".into(),
                    ip: "10.0.0.2".into(),
                    port: 8080,
                }],
                updated: vec![InstanceView {
                    healthy: false,
                    ..view.clone()
                }],
            }),
        ),
        ("cluster-status", Message::ClusterStatus),
        (
            "cluster-status-result",
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
                        owned: 2,
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
        (
            "owner",
            Message::Owner {
                ip: "10.0.0.1".into(),
                port: 8080,
            },
        ),
        ("owner-result", Message::OwnerResult(1)),
        (
            "peer-hello",
            Message::PeerHello(PeerHello {
                node_id: 2,
                max_version: 1,
                cluster_hash: 0x1234,
                nonce: [7; NONCE_LEN],
            }),
        ),
        (
            "peer-challenge",
            Message::PeerChallenge(PeerChallenge {
                node_id: 1,
                nonce: [8; NONCE_LEN],
                mac: [9; MAC_LEN],
            }),
        ),
        ("peer-auth", Message::PeerAuth([10; MAC_LEN])),
        (
            "fwd-register",
            Message::FwdRegister {
                session: (2 << 48) | 5,
                instances: vec![instance("10.0.0.3", (5_000, 15_000, 30_000))],
            },
        ),
        (
            "fwd-deregister",
            Message::FwdDeregister(vec![key("10.0.0.3", 8080)]),
        ),
        ("fwd-beat", Message::FwdBeat(vec![key("10.0.0.3", 8080)])),
        (
            "fwd-lapse",
            Message::FwdLapse {
                session: (2 << 48) | 5,
                keys: vec![key("10.0.0.3", 8080)],
            },
        ),
        (
            "sync-batch",
            Message::SyncBatch(vec![
                record("10.0.0.1", 5 << 16, 2, true),
                record("10.0.0.2", 6 << 16, 2, false),
            ]),
        ),
        (
            "digest",
            Message::Digest(DigestMsg {
                owner: 2,
                view_hash: 0xabcd,
                buckets: vec![(0, 0), (1, 0x55), (2, 0xaa)],
            }),
        ),
        (
            "pull",
            Message::Pull(PullMsg {
                owner: 2,
                buckets: vec![1, 2, 1023],
            }),
        ),
        (
            "records",
            Message::Records(vec![record("10.0.0.1", 7 << 16, 3, true)]),
        ),
        ("snapshot-request", Message::SnapshotRequest),
        ("leave", Message::Leave(3)),
    ]
}

/// Client-session seeds: a mode byte (bit 0: the node has the fuzz token file), then items.
fn write_session_seeds(dir: &Path) {
    let seed = |mode: u8, w: &Writer| {
        let mut v = vec![mode];
        v.extend_from_slice(&w.bytes);
        v
    };
    let hello = Message::Hello(Hello {
        max_version: 1,
        client_name: "fuzz".into(),
    });
    let register = |session_bound, ip, lease| {
        Message::Register(Register {
            session_bound,
            instances: vec![instance(ip, lease)],
        })
    };
    let query = Message::Query(Query {
        name: orders(),
        cluster: Text::default(),
        healthy_only: false,
    });

    // A client's life: hello, register, subscribe, query, beats, deregister, goodbye.
    let mut w = Writer::default();
    w.message(&hello)
        .message(&register(true, "10.0.0.1", (100, 200, 300)))
        .message(&register(false, "10.0.0.2", (5_000, 15_000, 30_000)))
        .message(&Message::Subscribe(orders()))
        .message(&query)
        .pause_ms(150)
        .message(&Message::Beat(vec![
            key("10.0.0.1", 8080),
            key("10.0.0.7", 1),
        ]))
        .message(&Message::Deregister(vec![key("10.0.0.2", 8080)]))
        .message(&Message::ListServices(ListServices {
            namespace: "public".into(),
            page: 0,
            page_size: 10,
        }))
        .message(&Message::ClusterStatus)
        .message(&Message::Owner {
            ip: "10.0.0.1".into(),
            port: 8080,
        })
        .message(&Message::Unsubscribe(orders()))
        .message(&Message::Ping(1));
    write(dir, "life", &seed(0, &w));

    // A subscriber of a service that keeps changing: the whole list, then deltas (registers,
    // a re-register with other metadata, a deregister, a lapse), a renewed subscription (the
    // whole list again), more changes, an unsubscribe and a subscribe again.
    let mut w = Writer::default();
    let many = Message::Register(Register {
        session_bound: false,
        instances: (1..=20)
            .map(|i| instance(&format!("10.0.1.{i}"), (5_000, 15_000, 30_000)))
            .collect(),
    });
    let mut moved = instance("10.0.1.3", (5_000, 15_000, 30_000));
    moved.metadata = vec![("zone".into(), "b".into())];
    w.message(&many)
        .message(&Message::Subscribe(orders()))
        .pause_ms(10)
        .message(&register(false, "10.0.1.21", (5_000, 15_000, 30_000)))
        .message(&Message::Register(Register {
            session_bound: false,
            instances: vec![moved],
        }))
        .pause_ms(10)
        .message(&Message::Deregister(vec![key("10.0.1.4", 8080)]))
        .message(&register(true, "10.0.1.22", (100, 200, 300)))
        .message(&Message::Subscribe(orders()))
        .message(&Message::Deregister(vec![key("10.0.1.5", 8080)]))
        .pause_ms(250)
        .message(&Message::Unsubscribe(orders()))
        .message(&register(false, "10.0.1.23", (5_000, 15_000, 30_000)))
        .message(&Message::Subscribe(orders()))
        .pause_ms(10)
        .message(&Message::Deregister(vec![key("10.0.1.6", 8080)]))
        .pause_ms(10)
        .message(&query);
    write(dir, "deltas", &seed(0, &w));

    // Short leases run out while the client is silent; a beat after expiry is unknown.
    let mut w = Writer::default();
    w.message(&register(false, "10.0.0.1", (100, 200, 300)))
        .message(&Message::Subscribe(orders()))
        .pause_ms(250)
        .pause_ms(400)
        .message(&Message::Beat(vec![key("10.0.0.1", 8080)]))
        .message(&query);
    write(dir, "lease-expiry", &seed(0, &w));

    // Rejected requests keep the connection: below the lease floor, empty service, page size 0.
    let mut bad_name = instance("10.0.0.1", (5_000, 15_000, 30_000));
    bad_name.key.service.service = "".into();
    let mut w = Writer::default();
    w.message(&register(false, "10.0.0.1", (50, 60, 70)))
        .message(&Message::Register(Register {
            session_bound: false,
            instances: vec![bad_name],
        }))
        .message(&Message::ListServices(ListServices {
            namespace: "public".into(),
            page: 0,
            page_size: 0,
        }))
        .message(&Message::Records(vec![record("10.0.0.1", 1, 2, true)]))
        .message(&Message::Hello(Hello {
            max_version: 0,
            client_name: "old".into(),
        }))
        .message(&query);
    write(dir, "rejections", &seed(0, &w));

    // A session-bound register, then garbage: the connection closes and the instance lapses.
    let mut w = Writer::default();
    w.message(&register(true, "10.0.0.3", (5_000, 15_000, 30_000)))
        .raw(&[0, 0, 0, 9, 1, 0x10, 0, 0, 0, 0, 0, 0xFF, 0xFF])
        .message(&query);
    write(dir, "bad-frame-lapses", &seed(0, &w));

    // Unknown opcode, wrong version, truncated body.
    let mut w = Writer::default();
    w.body(0x99, &[1, 2, 3]);
    write(dir, "unknown-opcode", &seed(0, &w));
    let mut w = Writer::default();
    let mut v2 = encode_frame(1, 0, &Message::Ping(1)).to_vec();
    v2[4] = 2;
    w.raw(&v2);
    write(dir, "version-2", &seed(0, &w));
    let mut w = Writer::default();
    w.body(Opcode::Register as u8, &[1, 0, 1, 0, 6]);
    write(dir, "truncated-register", &seed(0, &w));

    // Generated messages: a register of a pooled key (kind 2), a beat and a query of it.
    let mut choices = vec![2, 1, 1];
    choices.extend_from_slice(&key_bytes(0, 0, 0));
    choices.extend_from_slice(&[0, 3, 1, 0]);
    let mut w = Writer::default();
    w.generated(&choices);
    let mut beat = vec![5, 1];
    beat.extend_from_slice(&key_bytes(0, 0, 0));
    w.generated(&beat)
        .generated(&[7, 0, 0, 0, 0, 0])
        .generated(&[9, 0, 0, 0]);
    write(dir, "generated", &seed(0, &w));

    // A node with tokens: the admin's token first, then a client's life.
    let auth = |token: &str| Message::Auth(Token::new(token));
    let mut w = Writer::default();
    w.message(&hello)
        .message(&auth("distro_fuzz_admin"))
        .message(&register(true, "10.0.0.1", (100, 200, 300)))
        .message(&Message::Subscribe(orders()))
        .message(&query)
        .pause_ms(150)
        .message(&Message::Beat(vec![key("10.0.0.1", 8080)]))
        .message(&Message::Deregister(vec![key("10.0.0.1", 8080)]))
        .message(&Message::ClusterStatus);
    write(dir, "auth-life", &seed(1, &w));

    // A request before the token and a wrong token (two refusals), then the dev token: a write
    // outside `dev` and a read of `public` are refused, a second Auth too.
    let mut w = Writer::default();
    w.message(&register(false, "10.0.0.1", (5_000, 15_000, 30_000)))
        .message(&auth("distro_fuzz_admi"))
        .message(&auth("distro_fuzz_dev"))
        .message(&register(false, "10.0.0.1", (5_000, 15_000, 30_000)))
        .message(&auth("distro_fuzz_admin"))
        .message(&query);
    write(dir, "auth-refusals", &seed(1, &w));

    // Three refusals: the session ends, the register after them is never read.
    let mut w = Writer::default();
    w.message(&auth(""))
        .message(&Message::Ping(1))
        .message(&query)
        .message(&auth("distro_fuzz_adminx"))
        .message(&register(false, "10.0.0.1", (5_000, 15_000, 30_000)));
    write(dir, "auth-three-strikes", &seed(1, &w));

    // A reader writes (refused) and reads; generated Auths of the pool (kind 13).
    let mut w = Writer::default();
    w.generated(&[13, 1])
        .message(&register(true, "10.0.0.1", (100, 200, 300)))
        .message(&query)
        .generated(&[13, 0]);
    write(dir, "auth-reader", &seed(1, &w));
}

/// Peer-port seeds: a mode byte (bit 0: skip the handshake, bit 1: the node is ready), then
/// items.
fn write_peer_seeds(dir: &Path) {
    let seed = |mode: u8, w: &Writer| {
        let mut v = vec![mode];
        v.extend_from_slice(&w.bytes);
        v
    };
    let forwards = |w: &mut Writer| {
        let mut reg = instance("10.0.0.1", (100, 200, 300));
        reg.key.port = 8080;
        w.message(&Message::Ping(3))
            .message(&Message::FwdRegister {
                session: (2 << 48) | 1,
                instances: vec![reg, instance("10.0.0.2", (5_000, 15_000, 30_000))],
            })
            .message(&Message::FwdBeat(vec![
                key("10.0.0.1", 8080),
                key("10.0.0.9", 1),
            ]))
            .message(&Message::FwdLapse {
                session: (2 << 48) | 1,
                keys: vec![key("10.0.0.1", 8080)],
            })
            .message(&Message::FwdDeregister(vec![key("10.0.0.2", 8080)]));
    };

    // A peer's forwards, a sync batch, a digest of this node's view, a pull and a snapshot.
    let mut w = Writer::default();
    forwards(&mut w);
    w.message(&Message::SyncBatch(vec![
        record("10.0.0.3", WALL_MS << 16, 2, true),
        record("10.0.0.4", (WALL_MS << 16) + 1, 3, false),
    ]));
    let mut buckets = vec![(0u32, 0u64); distro::model::DIGEST_BUCKETS];
    buckets[5] = (1, 0x1234);
    w.message(&Message::Digest(DigestMsg {
        owner: 0,
        view_hash: distro::ownership::Ownership::standalone(1).view_hash(),
        buckets,
    }))
    .message(&Message::Pull(PullMsg {
        owner: 1,
        buckets: (0..1024).step_by(97).collect(),
    }))
    .message(&Message::SnapshotRequest)
    .pause_ms(400);
    write(dir, "ready-peer", &seed(0b10, &w));

    // The same while the node is still loading (a snapshot request is refused).
    write(dir, "loading-peer", &seed(0b00, &w));
    // The same to a node that is leaving the cluster (it forwards what it is sent on).
    write(dir, "leaving-node", &seed(0b110, &w));

    // The peer leaves (then sends on; and a Leave naming another node).
    let mut w = Writer::default();
    forwards(&mut w);
    w.message(&Message::Leave(2))
        .message(&Message::Leave(3))
        .message(&Message::Ping(1));
    forwards(&mut w);
    write(dir, "peer-leaves", &seed(0b10, &w));

    // A client message on the peer port, and an undecodable frame.
    let mut w = Writer::default();
    forwards(&mut w);
    w.message(&Message::Register(Register {
        session_bound: false,
        instances: vec![instance("10.0.0.5", (5_000, 15_000, 30_000))],
    }));
    write(dir, "client-message", &seed(0b10, &w));
    let mut w = Writer::default();
    forwards(&mut w);
    w.body(Opcode::SyncBatch as u8, &[0, 0, 0, 1, 0]);
    write(dir, "bad-sync-batch", &seed(0b10, &w));

    // Generated peer messages.
    let mut w = Writer::default();
    w.generated(&[1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 3, 0, 1, 0])
        .generated(&[6, 2, 0, 0, 0, 0, 1, 0, 4, 0, 2, 7, 0, 0, 0, 0])
        .generated(&[9, 0, 1, 1, 0, 5, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0])
        .generated(&[11, 0, 2, 0, 5, 0, 7])
        .generated(&[12]);
    write(dir, "generated", &seed(0b10, &w));

    // A stranger: no handshake, frames straight away (the handshake refuses them).
    let mut w = Writer::default();
    forwards(&mut w);
    write(dir, "stranger", &seed(0b11, &w));
    let mut w = Writer::default();
    w.message(&Message::PeerHello(PeerHello {
        node_id: 2,
        max_version: 1,
        cluster_hash: 0,
        nonce: [1; NONCE_LEN],
    }));
    write(dir, "stranger-hello", &seed(0b11, &w));
}

fn write_store_seeds(dir: &Path) {
    let k = |svc, ip, port| key_bytes(svc, ip, port).to_vec();
    // A register: instance (key, weight pick 0, status 3 = healthy+enabled, lease pick, no
    // metadata), session pick.
    let register = |key: Vec<u8>, lease: u8, session: u8| {
        let mut v = vec![op::REGISTER];
        v.extend(key);
        v.extend([0, 3, lease, 0, session]);
        v
    };
    // A record: key, hlc mode 4 (around now) + offset, origin, status bits, weight pick 0,
    // lease pick 0, session pick 0, one metadata entry.
    let record = |key: Vec<u8>, offset: u8, origin: u8, bits: u8| {
        let mut v = key;
        v.extend([4, offset, origin, bits, 0, 0, 0, 1, 0, 0]);
        v
    };
    let merge = |key: Vec<u8>, offset: u8, origin: u8, bits: u8| {
        let mut v = vec![op::MERGE];
        v.extend(record(key, offset, origin, bits));
        v
    };

    // Local life: registers, a query, beats, a deregister, leases running out.
    let mut s = Vec::new();
    s.extend(register(k(0, 0, 0), 1, 0));
    s.extend(register(k(0, 1, 0), 0, 1));
    s.extend(register(k(1, 2, 1), 1, 0));
    s.extend([op::QUERY, 0, 0, 0, 0, 0]);
    s.extend([op::BEAT]);
    s.extend(k(0, 0, 0));
    s.extend([op::DEREGISTER]);
    s.extend(k(0, 1, 0));
    s.extend([op::LAPSE_SESSION]);
    s.extend(k(0, 1, 0));
    s.extend([1]);
    s.extend([op::ADVANCE, 2, op::LEASE_PASS, op::QUERY, 0, 0, 0, 0, 0]);
    s.extend([
        op::ADVANCE,
        3,
        op::LEASE_PASS,
        op::ADVANCE,
        7,
        op::LEASE_PASS,
    ]);
    write(dir, "local-life", &s);

    // Peers' records: newer, older, equal versions, tombstones; a view change; a pull's drop;
    // a snapshot load.
    let mut s = Vec::new();
    s.extend(merge(k(0, 0, 0), 5, 2, 0x07));
    s.extend(merge(k(0, 0, 0), 3, 3, 0x07));
    s.extend(merge(k(0, 0, 0), 5, 3, 0x00));
    s.extend(merge(k(1, 1, 1), 9, 2, 0x0F));
    s.extend(register(k(0, 0, 0), 0, 0));
    s.extend([op::SET_OWNERSHIP, 0b011]);
    s.extend([op::QUERY, 0, 0, 0, 1, 1]);
    s.extend([op::ADVANCE, 5, op::LEASE_PASS]);
    s.extend([op::DROP_MISSING, 1, 0x80, 0, 0, 0]);
    s.extend([op::DROP_MISSING, 2, 0x7F, 0x01, 0, 100]);
    s.extend([op::SET_OWNERSHIP, 0, op::SNAPSHOT_CHECK, op::REGRANT]);
    write(dir, "peer-merges", &s);

    // A batch and a raw Records body, then a handoff to a three-node view.
    let mut s = vec![op::BATCH, 2];
    s.extend(record(k(0, 0, 0), 1, 2, 0x07));
    s.extend(record(k(0, 1, 0), 2, 2, 0x07));
    s.extend(record(k(2, 2, 1), 3, 4, 0x01));
    let mut body = BytesMut::new();
    Message::Records(vec![
        record_msg("10.0.0.4", 1 << 20, 2, true),
        record_msg("10.0.0.5", 1 << 20, 3, false),
    ])
    .encode_body(&mut body);
    s.extend([op::RAW_RECORDS]);
    s.extend((body.len() as u16).to_be_bytes());
    s.extend_from_slice(&body);
    s.extend([
        op::SET_OWNERSHIP,
        0b111,
        op::SNAPSHOT_CHECK,
        op::SET_OWNERSHIP,
        0b001,
    ]);
    write(dir, "batches-and-handoff", &s);

    // Versions at the top of the HLC range, then local writes of the same key.
    let mut s = vec![op::MERGE];
    s.extend(k(0, 0, 0));
    s.extend([7, 0, 2, 0x07, 0, 0, 0, 0]);
    s.extend(register(k(0, 0, 0), 1, 0));
    s.extend([op::DEREGISTER]);
    s.extend(k(0, 0, 0));
    write(dir, "hlc-top", &s);

    // A name made of raw bytes.
    let mut s = vec![op::REGISTER, 0, 0, RAW_NAME, 4];
    s.extend(b"s\xC3\xA9v");
    s.extend([0, 0, 0, 0, 3, 0, 0, 0]);
    write(dir, "raw-name", &s);
}

fn record_msg(ip: &str, hlc: u64, origin: u16, alive: bool) -> SyncRecord {
    record(ip, hlc, origin, alive)
}
