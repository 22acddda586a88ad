//! The store at scale: insert, update, renew and query with 1,000,000 instances held; digest
//! maintenance (registering into a big store of a 3-node view) and digest build; and what one
//! change of a service costs a subscriber of it, by the size of the service (the push as a
//! delta, against re-encoding the whole list).

mod common;

use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use distro::model::{Instance, InstanceKey, ServiceName, Text};
use distro::ownership::Ownership;
use distro::store::PushBody;
use distro::wire::Query;
use std::hint::black_box;

fn store_ops(c: &mut Criterion) {
    let n = common::big_n();
    // Filled once; the timing loops below only add to it or touch it.
    let store = common::filled_store(n);
    let services = n / common::PER_SERVICE;
    let mut g = c.benchmark_group(format!("store_{n}"));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    // New instances (each iteration a key the store has never seen), into existing services.
    // Building the instance is setup, outside the timing.
    let mut next = n;
    g.bench_function("insert", |b| {
        b.iter_batched(
            || {
                let mut inst = common::instance(next % n);
                inst.key.port = 20_000 + (next / n) as u16;
                next += 1;
                inst
            },
            |inst| store.register(&inst, 0),
            BatchSize::SmallInput,
        )
    });

    // A changed instance: a new version, digest and snapshot-cache upkeep.
    let mut i = 0u64;
    g.bench_function("update", |b| {
        b.iter_batched(
            || {
                i = (i + 7919) % n;
                let mut inst = common::instance(i);
                inst.weight = if (i / n) % 2 == 0 { 2.0 } else { 1.0 };
                inst.weight += (i % 3) as f64;
                inst
            },
            |inst| store.register(&inst, 0),
            BatchSize::SmallInput,
        )
    });

    // Re-registering identical data only renews the lease (a client's redo). Random keys, as
    // in `beat`: at this size every lookup is a few cache misses.
    let same: Vec<_> = (0..4096u64)
        .map(|j| common::instance((j * 104_729) % n))
        .collect();
    let mut r = 0usize;
    g.bench_function("renew_register", |b| {
        b.iter(|| {
            r = (r + 1) % same.len();
            store.register(black_box(&same[r]), 0)
        })
    });

    let keys: Vec<_> = (0..4096u64)
        .map(|j| common::key((j * 104_729) % n))
        .collect();
    let mut k = 0usize;
    g.bench_function("beat", |b| {
        b.iter(|| {
            k = (k + 1) % keys.len();
            black_box(store.beat(&keys[k]))
        })
    });

    // A query answered from the service's cached snapshot (the common case).
    let queries: Vec<Query> = (0..1024)
        .map(|j| Query {
            name: common::service((j * 7919) % services),
            cluster: Text::default(),
            healthy_only: false,
        })
        .collect();
    let mut q = 0usize;
    g.bench_function("query_cached", |b| {
        b.iter(|| {
            q = (q + 1) % queries.len();
            black_box(
                store
                    .query(
                        &queries[q].name,
                        &queries[q].cluster,
                        queries[q].healthy_only,
                    )
                    .len(),
            )
        })
    });
    // A filtered query is encoded afresh every time.
    let filtered: Vec<Query> = queries
        .iter()
        .map(|q| Query {
            healthy_only: true,
            ..q.clone()
        })
        .collect();
    g.bench_function("query_filtered", |b| {
        b.iter(|| {
            q = (q + 1) % filtered.len();
            black_box(
                store
                    .query(
                        &filtered[q].name,
                        &filtered[q].cluster,
                        filtered[q].healthy_only,
                    )
                    .len(),
            )
        })
    });
    g.finish();
}

fn digests(c: &mut Criterion) {
    let n = common::big_n();
    let store = common::new_store(1);
    store.set_ownership(Ownership::new(vec![1, 2, 3]));
    for i in 0..n {
        store.register(&common::instance(i), 0);
    }
    let mut g = c.benchmark_group(format!("digest_{n}"));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    // A register into a big store under a 3-node view: owner, record and bucket digest upkeep.
    let mut next = n;
    g.bench_function("register_maintained", |b| {
        b.iter_batched(
            || {
                let mut inst = common::instance(next % n);
                inst.key.port = 30_000 + (next / n) as u16;
                next += 1;
                inst
            },
            |inst| store.register(&inst, 0),
            BatchSize::SmallInput,
        )
    });
    // Building one owner's digest (what a verify round sends): O(shards × buckets).
    g.bench_function("build", |b| b.iter(|| black_box(store.digest(1))));
    g.finish();
}

/// One instance of a service of `n` changes, then a subscriber is pushed: `delta` from the
/// revision it held (what a node does now), `whole_list` the list re-encoded (what every push
/// cost before deltas, and still what a query after a change costs once).
fn one_change(c: &mut Criterion) {
    let mut g = c.benchmark_group("one_change");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in [10u64, 1_000, 5_000] {
        let store = common::new_store(1);
        let name = ServiceName::new("public", "DEFAULT_GROUP", "one-change");
        let all: Vec<Instance> = (0..n)
            .map(|i| {
                let mut inst = common::instance_with_metadata(i);
                inst.key = InstanceKey {
                    service: name.clone(),
                    ..inst.key
                };
                inst
            })
            .collect();
        for i in &all {
            store.register(i, 0);
        }
        let PushBody::Full { mut revision, .. } = store.push_since(&name, None) else {
            panic!("a new subscriber is sent the whole list")
        };
        let mut w = 0u64;
        // Each round over the service flips every instance's weight: always a real change.
        let mut change = |store: &distro::store::Store| {
            w += 1;
            let mut i = all[(w % n) as usize].clone();
            i.weight = if (w / n) % 2 == 0 { 2.0 } else { 1.0 };
            store.register(&i, 0);
        };
        g.bench_function(format!("delta/{n}"), |b| {
            b.iter(|| {
                change(&store);
                match store.push_since(&name, Some(revision)) {
                    PushBody::Delta { body, revision: r }
                    | PushBody::Full { body, revision: r } => {
                        revision = r;
                        black_box(body.len())
                    }
                    PushBody::Unchanged => 0,
                }
            })
        });
        g.bench_function(format!("whole_list/{n}"), |b| {
            b.iter(|| {
                change(&store);
                black_box(store.query(&name, "", false).len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, store_ops, digests, one_change);
criterion_main!(benches);
