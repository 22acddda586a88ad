//! One store driven through arbitrary sync, pull and snapshot batches, interleaved with local
//! writes, view changes, lease passes and clock steps.
//!
//! Input: operations as `distro_fuzz::store_input` describes.
//!
//! Checks, after every operation: `Store::check_invariants` (indexes, cached owners and key
//! hashes, the live counter and snapshot caches agree with the records; digests equal a
//! recomputation from scratch). Per operation: merges are last-writer-wins by version; a local
//! write gets a version above every version the key had; beats, deregisters and lapses report
//! what they found; what the store encodes (handoff batches and their pieces, snapshots, query
//! answers) decodes; a pull's drop removes exactly the stale records; a store loaded from this
//! store's snapshot has the same digests, and re-merging that snapshot changes nothing.

#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use distro::clock::{Clock, hlc_physical_ms};
use distro::hash::HashSet;
use distro::ownership::Ownership;
use distro::model::DIGEST_BUCKETS;
use distro::store::digest::{BucketSet, bucket_of};
use distro::store::{BeatOutcome, NoObserver, RecordBatch, SHARDS, Store, VERSION_FUTURE_MAX_MS};
use distro::wire::{Message, Opcode, Query, SyncRecord};
use distro::model::{InstanceKey, ServiceName, Text, Version};
use distro_fuzz::Input;
use distro_fuzz::store_input::{OTHERS, Op, SELF, next_op};
use libfuzzer_sys::fuzz_target;

/// The wall-clock reading the store starts at (ms).
const T0: u64 = 1_000_000;

fuzz_target!(|data: &[u8]| {
    distro_fuzz::runtime::get().block_on(run(data));
});

fn new_store() -> Store {
    Store::new(SELF, Clock::starting_at(T0), Arc::new(NoObserver))
}

async fn run(data: &[u8]) {
    let store = new_store();
    let mut inp = Input::new(data);
    let mut step = 0;
    let mut from_peers = Vec::new();
    // Set when replaying one input, to see the operations it stands for.
    let trace = std::env::var_os("DISTRO_FUZZ_TRACE").is_some();
    while !inp.is_empty() {
        let op = next_op(&mut inp, store.clock().now_ms());
        if trace {
            eprintln!("step {step}: {op:?}");
        }
        apply(&store, &op).await;
        if let Err(e) = store.check_invariants() {
            panic!("after step {step} ({op:?}): {e}");
        }
        from_peers.extend(peer_records(&op));
        step += 1;
    }
    merge_order_check(&from_peers);
}

/// The records an operation merges as if from peers.
fn peer_records(op: &Op) -> Vec<SyncRecord> {
    match op {
        Op::Merge(r) => vec![r.clone()],
        Op::Batch(records) => records.clone(),
        Op::RawRecords(bytes) => {
            match Message::decode(Opcode::Records, Bytes::copy_from_slice(bytes)) {
                Ok(Message::Records(records)) => records,
                _ => Vec::new(),
            }
        }
        _ => Vec::new(),
    }
}

/// Last-writer-wins does not depend on the order records arrive in: two fresh stores that merge
/// the input's peer records, one in input order and one reversed, hold the same version of
/// every key, the largest one received (records from beyond the future bound aside).
fn merge_order_check(records: &[SyncRecord]) {
    if records.is_empty() {
        return;
    }
    let forward = new_store();
    let backward = new_store();
    records.iter().for_each(|r| {
        forward.merge(r);
    });
    records.iter().rev().for_each(|r| {
        backward.merge(r);
    });
    let now = forward.clock().now_ms();
    let mut newest: std::collections::BTreeMap<String, distro::model::Version> = Default::default();
    for r in records {
        if hlc_physical_ms(r.version.hlc) > now + VERSION_FUTURE_MAX_MS {
            continue;
        }
        let v = newest.entry(format!("{:?}", r.key)).or_default();
        *v = (*v).max(r.version);
    }
    for (name, store) in [("in order", &forward), ("reversed", &backward)] {
        if let Err(e) = store.check_invariants() {
            panic!("a store that merged the peer records {name}: {e}");
        }
        for r in records {
            let Some(want) = newest.get(&format!("{:?}", r.key)) else {
                continue;
            };
            let got = store.get(&r.key).map(|x| x.version);
            assert_eq!(
                got,
                Some(*want),
                "merging the peer records {name} left {:?} at {got:?}, not the newest {want:?}",
                r.key
            );
        }
    }
}

async fn apply(store: &Store, op: &Op) {
    // Reads, clock steps, re-grants and snapshots write no version and delete nothing.
    let read_only = matches!(
        op,
        Op::Advance(_) | Op::Query { .. } | Op::RegrantOwned | Op::SnapshotCheck
    );
    let before = read_only.then(|| versions(store));
    apply_op(store, op).await;
    if let Some(before) = before {
        assert!(
            before == versions(store),
            "{op:?} changed versions or records"
        );
    }
}

async fn apply_op(store: &Store, op: &Op) {
    match op {
        Op::Merge(r) => merge_checked(store, r),
        Op::Batch(records) => records.iter().for_each(|r| merge_checked(store, r)),
        Op::RawRecords(bytes) => {
            if let Ok(Message::Records(records)) =
                Message::decode(Opcode::Records, Bytes::copy_from_slice(bytes))
            {
                records.iter().for_each(|r| merge_checked(store, r));
            }
        }
        Op::Register { instance, session } => {
            let before = store.get(&instance.key);
            store.register(instance, *session);
            let after = store
                .get(&instance.key)
                .expect("a registered instance is stored");
            assert!(after.alive, "registered {:?} is not alive", instance.key);
            check_local_write(&instance.key, before.map(|r| r.version), after.version);
        }
        Op::Deregister(key) => {
            let before = store.get(key);
            let removed = store.deregister(key);
            let was_alive = before.as_ref().is_some_and(|r| r.alive);
            assert_eq!(
                removed, was_alive,
                "deregister of {key:?} reported {removed}"
            );
            if removed {
                let after = store
                    .get(key)
                    .expect("a deregistered key leaves a tombstone");
                assert!(!after.alive, "deregistered {key:?} is alive");
                assert!(
                    after.version > before.unwrap().version,
                    "the tombstone of {key:?} is not newer than the record"
                );
            }
        }
        Op::Beat(key) => {
            let was_alive = store.get(key).is_some_and(|r| r.alive);
            let outcome = store.beat(key);
            assert_eq!(
                outcome == BeatOutcome::Unknown,
                !was_alive,
                "beat of {key:?}: {outcome:?}"
            );
        }
        Op::LapseSession { key, session } => {
            let before = store.get(key);
            let changed = store.lapse_session(key, *session);
            // Session 0 marks instances bound to no session: there is nothing to lapse.
            let expect = *session != 0
                && before
                    .as_ref()
                    .is_some_and(|r| r.alive && r.session == *session && !r.lapsed);
            assert_eq!(changed, expect, "lapse of {key:?} reported {changed}");
            if changed {
                check_local_write(
                    key,
                    before.map(|r| r.version),
                    store.get(key).unwrap().version,
                );
            }
        }
        Op::SetOwnership(mask) => {
            let mut live = vec![SELF];
            live.extend(
                OTHERS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, id)| *id),
            );
            let view = Ownership::new(live);
            // Bit 7: hand off only what was written in the last second (a join's handoff).
            let since_ms = if mask & 0x80 != 0 {
                store.clock().now_ms().saturating_sub(1_000)
            } else {
                0
            };
            let before = versions(store);
            let change = store.set_ownership_handing_off(view.clone(), since_ms);
            let mut handed_off = BTreeSet::new();
            for (owner, batch) in &change.lost {
                assert_ne!(*owner, SELF, "handed records off to itself");
                for r in decode_batch(batch) {
                    assert_eq!(
                        view.owner(&r.key.ip, r.key.port),
                        *owner,
                        "{:?} handed off to the wrong owner",
                        r.key
                    );
                    handed_off.insert(key_text(
                        &r.key.service,
                        &r.key.cluster,
                        &r.key.ip,
                        r.key.port,
                    ));
                }
                check_pieces(batch);
            }
            // No flapping: a view change never makes an instance vanish (or come back); a
            // version it moves on (an instance re-stamped to win over a tombstone made during a
            // partition) is handed off to the new owner.
            let after = versions(store);
            assert_eq!(
                before.keys().collect::<Vec<_>>(),
                after.keys().collect::<Vec<_>>(),
                "a view change added or removed records"
            );
            for (k, (v0, alive0)) in &before {
                let (v1, alive1) = after[k];
                assert_eq!(
                    *alive0, alive1,
                    "a view change flipped {k} (alive {alive0})"
                );
                assert!(
                    v1 >= *v0,
                    "a view change moved {k} back from {v0:?} to {v1:?}"
                );
                assert!(
                    v1 == *v0 || handed_off.contains(k),
                    "a view change re-stamped {k} but did not hand it off"
                );
            }
        }
        Op::Advance(ms) => tokio::time::advance(Duration::from_millis(*ms)).await,
        Op::LeasePass => {
            store.lease_pass();
        }
        Op::DropMissing {
            owner,
            buckets,
            sent,
            before_ms,
        } => drop_missing_checked(store, *owner, *buckets, *sent, *before_ms),
        Op::Query {
            name,
            cluster_filter,
            healthy_only,
        } => {
            let q = Query {
                name: name.clone(),
                cluster: if *cluster_filter {
                    Text::from("DEFAULT")
                } else {
                    Text::default()
                },
                healthy_only: *healthy_only,
            };
            match Message::decode(Opcode::QueryResult, store.query(&q.name, &q.cluster, q.healthy_only)) {
                Ok(Message::QueryResult(s)) => assert_eq!(s.name, q.name),
                other => panic!("the query answer for {q:?} decodes as {other:?}"),
            }
            let _ = store.list_services(&name.namespace, 0, 1000);
        }
        Op::RegrantOwned => {
            store.regrant_owned();
        }
        Op::SnapshotCheck => snapshot_check(store),
    }
}

/// Last writer wins: a merge applies exactly when the record is newer than what is held, and
/// is refused when stamped beyond `VERSION_FUTURE_MAX_MS` ahead. The one newer record that
/// does not apply is a lapse or expiry (the lapsed bit) of an instance whose client keeps
/// renewing it through this node: the instance stays, and if this node owns it, it answers
/// with a version of its own above the lapse.
fn merge_checked(store: &Store, r: &SyncRecord) {
    let before = store.get(&r.key).map(|x| x.version);
    let now = store.clock().now_ms();
    let from_the_future = hlc_physical_ms(r.version.hlc) > now + VERSION_FUTURE_MAX_MS;
    let applied = store.merge(r);
    let after = store.get(&r.key);
    let what = format!("merge of {:?} at {:?} over {before:?}", r.key, r.version);
    if from_the_future {
        assert!(!applied, "{what}: applied a record from the future");
        assert_eq!(
            after.map(|a| a.version),
            before,
            "{what}: changed the store"
        );
        return;
    }
    let after = after.unwrap_or_else(|| panic!("{what}: the key is not stored"));
    let newer = before.is_none_or(|v| v < r.version);
    if applied {
        assert!(newer, "{what}: applied a record that is not newer");
        assert_eq!(after.version, r.version, "{what}: stored another version");
    } else if newer {
        let kept = if after.owner == store.node() {
            after.version > r.version
        } else {
            Some(after.version) == before
        };
        assert!(
            r.lapsed && after.alive && after.renewed && kept,
            "{what}: refused a newer record (now {:?}, alive {}, owner {})",
            after.version,
            after.alive,
            after.owner
        );
    } else {
        assert_eq!(
            Some(after.version),
            before,
            "{what}: changed the stored version"
        );
    }
    assert!(
        store.hlc().last() >= r.version.hlc,
        "{what}: the HLC did not move past a received version"
    );
}

/// A local write must win over every version the key had, or peers would refuse it.
fn check_local_write(
    key: &InstanceKey,
    before: Option<distro::model::Version>,
    after: distro::model::Version,
) {
    if let Some(b) = before {
        assert!(
            after >= b,
            "a local write of {key:?} got version {after:?}, older than the {b:?} it replaced"
        );
    }
}

fn decode_batch(batch: &RecordBatch) -> Vec<SyncRecord> {
    let mut body = BytesMut::new();
    batch.put(&mut body);
    match Message::decode(Opcode::Records, body.freeze()) {
        Ok(Message::Records(v)) => {
            assert_eq!(v.len(), batch.count as usize, "a batch's count is off");
            v
        }
        other => panic!("a record batch of the store decodes as {other:?}"),
    }
}

/// The frames a batch is cut into hold every record once, each piece decoding on its own.
fn check_pieces(batch: &RecordBatch) {
    let mut total = 0;
    for (n, bytes) in batch.pieces(512) {
        let mut body = BytesMut::new();
        body.put_u32(n);
        body.extend_from_slice(&bytes);
        match Message::decode(Opcode::Records, body.freeze()) {
            Ok(Message::Records(v)) => assert_eq!(v.len(), n as usize),
            other => panic!("a piece of a record batch decodes as {other:?}"),
        }
        total += n;
    }
    assert_eq!(total, batch.count, "the pieces lost or repeated records");
}

fn key_text(name: &ServiceName, cluster: &str, ip: &str, port: u16) -> String {
    format!("{name} {cluster:?} {ip:?}:{port}")
}

/// The version and aliveness of every record, by key.
fn versions(store: &Store) -> BTreeMap<String, (Version, bool)> {
    let mut m = BTreeMap::new();
    store.for_each_record(|name, id, r| {
        m.insert(
            key_text(name, &id.cluster, &id.ip, id.port),
            (r.version, r.alive),
        );
    });
    m
}

/// (key hash, owner, alive, touched_ms) of every record, in key-hash order.
fn records(store: &Store) -> Vec<(u64, u16, bool, u64)> {
    let mut v = Vec::new();
    store.for_each_record(|_, _, r| v.push((r.key_hash, r.owner, r.alive, r.touched_ms)));
    v.sort_unstable();
    v
}

fn drop_missing_checked(store: &Store, owner: u16, buckets: u8, sent: u8, before_ms: u64) {
    let all = records(store);
    let chosen = |mask: u8, i: usize| mask & (1 << (i % 7)) != 0;
    let bucket_set: BucketSet = if buckets & 0x80 != 0 {
        (0..DIGEST_BUCKETS).collect()
    } else {
        all.iter()
            .enumerate()
            .filter(|(i, _)| chosen(buckets, *i))
            .map(|(_, r)| bucket_of(r.0))
            .collect()
    };
    let present: HashSet<u64> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| chosen(sent, *i))
        .map(|(_, r)| r.0)
        .collect();
    let touched_before = store.clock().now_ms().saturating_sub(before_ms);
    let stale = |r: &(u64, u16, bool, u64)| {
        r.2 && r.1 == owner
            && bucket_set.contains(bucket_of(r.0))
            && !present.contains(&r.0)
            && r.3 < touched_before
    };
    let expected = all.iter().filter(|r| stale(r)).count();
    let removed = store.drop_missing(owner, &bucket_set, &present, touched_before);
    assert_eq!(
        removed, expected,
        "drop_missing removed other records than the stale ones"
    );
    let left = records(store);
    assert!(
        !left.iter().any(stale),
        "a stale record survived drop_missing"
    );
    assert_eq!(left.len(), all.len() - removed);
}

/// Loads a fresh store (same view) from this store's snapshot stream, as a joining node does.
fn snapshot_check(store: &Store) {
    let copy = new_store();
    copy.set_ownership(store.ownership().as_ref().clone());
    for shard in 0..SHARDS {
        for r in decode_batch(&store.encode_shard(shard)) {
            assert!(
                copy.merge(&r),
                "a snapshot record of {:?} did not apply to an empty store",
                r.key
            );
            assert!(
                !store.merge(&r),
                "re-merging its own record {:?} changed the store",
                r.key
            );
        }
    }
    if let Err(e) = copy.check_invariants() {
        panic!("a store loaded from a snapshot: {e}");
    }
    assert_eq!(copy.len(), store.len(), "the snapshot lost live records");
    for &owner in store.ownership().live() {
        assert_eq!(
            copy.digest(owner),
            store.digest(owner),
            "digests of owner {owner} differ after a snapshot load"
        );
    }
}
