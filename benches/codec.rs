//! Codec: encode and decode of each message kind the hot paths carry.

mod common;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use distro::model::DIGEST_BUCKETS;
use distro::wire::{DigestMsg, Message, Register, encode_frame_into};
use std::hint::black_box;

fn cases() -> Vec<(&'static str, u64, Message)> {
    vec![
        (
            "register_1",
            1,
            Message::Register(Register {
                session_bound: true,
                instances: vec![common::instance_with_metadata(7)],
            }),
        ),
        (
            "register_100",
            100,
            Message::Register(Register {
                session_bound: true,
                instances: (0..100).map(common::instance_with_metadata).collect(),
            }),
        ),
        (
            "beat_1000",
            1000,
            Message::Beat((0..1000).map(common::key).collect()),
        ),
        (
            "query_result_10",
            10,
            Message::QueryResult(common::snapshot(10)),
        ),
        (
            "sync_batch_1000",
            1000,
            Message::SyncBatch((0..1000).map(common::sync_record).collect()),
        ),
        (
            "digest",
            DIGEST_BUCKETS as u64,
            Message::Digest(DigestMsg {
                owner: 1,
                view_hash: 0xfeed,
                buckets: (0..DIGEST_BUCKETS as u64)
                    .map(|b| (b as u32 * 3, b.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
                    .collect(),
            }),
        ),
    ]
}

fn codec(c: &mut Criterion) {
    for (name, items, msg) in cases() {
        let mut g = c.benchmark_group(format!("codec/{name}"));
        g.throughput(Throughput::Elements(items));
        let mut buf = BytesMut::with_capacity(1 << 20);
        g.bench_function("encode", |b| {
            b.iter(|| {
                buf.clear();
                encode_frame_into(&mut buf, 1, 0, black_box(&msg));
                black_box(buf.len())
            })
        });
        let mut body = BytesMut::new();
        msg.encode_body(&mut body);
        let body = body.freeze();
        let opcode = msg.opcode();
        assert_eq!(Message::decode(opcode, body.clone()).unwrap(), msg);
        g.bench_function("decode", |b| {
            b.iter(|| Message::decode(opcode, black_box(body.clone())).unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
