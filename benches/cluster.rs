//! Cluster hot paths: ownership, sync batch encode (outbox) and apply (merge).

mod common;

use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use distro::cluster::sync::SyncOutbox;
use distro::model::{InstanceKey, ServiceName};
use distro::ownership::Ownership;
use distro::store::{InstanceIdRef, Record};
use distro::wire::{Message, Opcode, SyncRecord};
use std::hint::black_box;

fn ownership(c: &mut Criterion) {
    let keys: Vec<(String, u16)> = (0..1024u64)
        .map(|i| {
            let k = common::key(i * 7919);
            (k.ip.as_str().to_string(), k.port)
        })
        .collect();
    let mut g = c.benchmark_group("ownership");
    for nodes in [3u16, 5] {
        let o = Ownership::new((1..=nodes).collect());
        let mut i = 0usize;
        g.bench_function(format!("owner_{nodes}_nodes"), |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                let (ip, port) = &keys[i];
                black_box(o.owner(ip, *port))
            })
        });
    }
    g.finish();
}

const BATCH: u64 = 1000;

fn sync_batches(c: &mut Criterion) {
    // Records as the store holds them, to push through the outbox.
    let store = common::filled_store(BATCH);
    let mut held: Vec<(ServiceName, InstanceKey, Record)> = Vec::new();
    store.for_each_record(|n, id, r| {
        let key = InstanceKey {
            service: n.clone(),
            cluster: id.cluster.into(),
            ip: id.ip.into(),
            port: id.port,
        };
        held.push((n.clone(), key, r.clone()))
    });
    let mut g = c.benchmark_group("sync");
    g.throughput(Throughput::Elements(BATCH));
    let outbox = SyncOutbox::default();
    g.bench_function("encode_1000", |b| {
        b.iter(|| {
            for (n, id, r) in &held {
                outbox.push(n, InstanceIdRef::of(id), r);
            }
            black_box(outbox.take_frame().expect("records were pushed"))
        })
    });

    // Apply: 1000 decoded records, each a newer version of one the (big) store holds.
    let n = common::big_n();
    let big = common::new_store(2);
    for i in 0..n {
        big.merge(&common::sync_record(i));
    }
    let (_, frame) = {
        let o = SyncOutbox::default();
        for (n, id, r) in &held {
            o.push(n, InstanceIdRef::of(id), r);
        }
        o.take_frame().unwrap()
    };
    // Skip the length prefix and header (4 + 8 bytes) to reach the body.
    let body: Bytes = frame.slice(12..);
    let decoded: Vec<SyncRecord> = match Message::decode(Opcode::SyncBatch, body).unwrap() {
        Message::SyncBatch(r) => r,
        other => panic!("decoded {:?}", other.opcode()),
    };
    let mut bump = 0u64;
    g.sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .bench_function(format!("apply_1000_into_{n}"), |b| {
            b.iter_batched(
                || {
                    bump += 1;
                    decoded
                        .iter()
                        .map(|r| {
                            let mut r = r.clone();
                            r.version.hlc += bump << 20;
                            r
                        })
                        .collect::<Vec<_>>()
                },
                |recs| {
                    for r in &recs {
                        assert!(big.merge(r));
                    }
                },
                BatchSize::LargeInput,
            )
        });
    g.finish();
}

criterion_group!(benches, ownership, sync_batches);
criterion_main!(benches);
