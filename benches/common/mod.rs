//! Data shared by the criterion benches: instances, records and pre-filled stores.
//!
//! The big sizes (1,000,000 instances) are used only under `cargo bench`, which passes
//! `--bench`; `cargo test --all-targets` runs every bench once on small data so it stays fast.

#![allow(dead_code)]

use std::sync::Arc;

use distro::clock::Clock;
use distro::model::{
    Instance, InstanceKey, InstanceView, Lease, ServiceName, ServiceSnapshot, Text, Version,
};
use distro::store::{NoObserver, Store};
use distro::wire::SyncRecord;

/// True under `cargo bench` (criterion's measuring mode).
pub fn benchmarking() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Instances in the big stores: a million when measuring, a few thousand in test mode.
pub fn big_n() -> u64 {
    if benchmarking() { 1_000_000 } else { 5_000 }
}

/// Instances per service in the pre-filled stores (the query target's shape).
pub const PER_SERVICE: u64 = 10;

pub fn service(s: u64) -> ServiceName {
    ServiceName::new("public", "DEFAULT_GROUP", &format!("bench-svc-{s:06}"))
}

pub fn key(i: u64) -> InstanceKey {
    InstanceKey {
        service: service(i / PER_SERVICE),
        cluster: Text::from_static("DEFAULT"),
        ip: Text::from(format!(
            "10.{}.{}.{}",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        )),
        port: 8080 + (i >> 24) as u16,
    }
}

pub fn instance(i: u64) -> Instance {
    Instance::new(key(i))
}

/// An instance with a few metadata entries, as real registrations carry.
pub fn instance_with_metadata(i: u64) -> Instance {
    let mut inst = instance(i);
    inst.metadata = vec![
        ("version".into(), "1.4.2".into()),
        ("zone".into(), "eu-west-1a".into()),
    ];
    inst
}

pub fn sync_record(i: u64) -> SyncRecord {
    SyncRecord {
        key: key(i),
        version: Version {
            hlc: (1_700_000_000_000 << 16) + i,
            origin: 1,
        },
        alive: true,
        healthy: true,
        enabled: true,
        lapsed: false,
        weight: 1.0,
        lease: Lease::default(),
        session: 0,
        metadata: Vec::new(),
    }
}

pub fn snapshot(n: u64) -> ServiceSnapshot {
    ServiceSnapshot {
        name: service(0),
        revision: 42,
        instances: (0..n)
            .map(|i| {
                let k = key(i);
                InstanceView {
                    cluster: k.cluster,
                    ip: k.ip,
                    port: k.port,
                    weight: 1.0,
                    healthy: true,
                    enabled: true,
                    metadata: Vec::new(),
                }
            })
            .collect(),
    }
}

pub fn new_store(node: u16) -> Store {
    Store::new(node, Clock::system(), Arc::new(NoObserver))
}

/// A store of node 1 holding instances `0..n`, registered as local writes.
pub fn filled_store(n: u64) -> Store {
    let store = new_store(1);
    for i in 0..n {
        store.register(&instance(i), 0);
    }
    store
}
