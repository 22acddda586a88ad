//! Unit and property tests of the store. Every test ends (and the property tests check after
//! every step) with [`Store::check_invariants`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::hash::HashSet;
use crate::model::DIGEST_BUCKETS;
use bytes::Bytes;
use proptest::prelude::*;

use super::digest::{BucketSet, bucket_of};
use super::*;
use crate::clock::Clock;
use crate::model::{
    Instance, InstanceKey, Lease, ServiceDelta, ServiceName, ServiceSnapshot, Text, Version,
};
use crate::ownership::Ownership;
use crate::wire::{Message, Opcode, Reader, SyncRecord};

/// The wall-clock reading every test store starts at (ms).
const T0: u64 = 1_000_000;

// ---------------------------------------------------------------------------------------------
// Helpers

fn orders() -> ServiceName {
    ServiceName::new("public", "DEFAULT_GROUP", "orders")
}

fn key_in(name: &ServiceName, cluster: &str, ip: &str, port: u16) -> InstanceKey {
    InstanceKey {
        service: name.clone(),
        cluster: cluster.into(),
        ip: ip.into(),
        port,
    }
}

/// `orders`, cluster DEFAULT, port 8080.
fn k(ip: &str) -> InstanceKey {
    key_in(&orders(), "DEFAULT", ip, 8080)
}

fn inst(key: &InstanceKey) -> Instance {
    Instance::new(key.clone())
}

fn new_store(node: NodeId) -> Store {
    Store::new(node, Clock::starting_at(T0), Arc::new(NoObserver))
}

fn hlc_at(ms: u64) -> u64 {
    ms << 16
}

fn sync(key: &InstanceKey, hlc: u64, origin: u16, alive: bool) -> SyncRecord {
    SyncRecord {
        key: key.clone(),
        version: Version { hlc, origin },
        alive,
        healthy: true,
        enabled: true,
        lapsed: false,
        weight: 1.0,
        lease: Lease::default(),
        session: 0,
        metadata: Vec::new(),
    }
}

#[track_caller]
fn check(s: &Store) {
    if let Err(e) = s.check_invariants() {
        panic!("{e}");
    }
}

fn decode_snapshot(body: Bytes) -> ServiceSnapshot {
    match Message::decode(Opcode::QueryResult, body).expect("a snapshot body decodes") {
        Message::QueryResult(s) => s,
        other => panic!("not a snapshot: {other:?}"),
    }
}

fn query(s: &Store, name: &ServiceName, cluster: &str, healthy_only: bool) -> ServiceSnapshot {
    decode_snapshot(s.query(name, cluster, healthy_only))
}

fn query_all(s: &Store, name: &ServiceName) -> ServiceSnapshot {
    query(s, name, "", false)
}

/// `cluster ip:port` of every instance in a snapshot, in snapshot order.
fn listed(snap: &ServiceSnapshot) -> Vec<String> {
    snap.instances
        .iter()
        .map(|i| format!("{} {}:{}", i.cluster, i.ip, i.port))
        .collect()
}

fn decode_batch(batch: &RecordBatch) -> Vec<SyncRecord> {
    let mut r = Reader::new(batch.bytes.clone().freeze());
    let recs = (0..batch.count)
        .map(|_| SyncRecord::decode(&mut r).expect("a batched record decodes"))
        .collect();
    r.finish().expect("the batch holds exactly `count` records");
    recs
}

/// The `n`th ip (10.1.x.y) that `node` owns under `o`.
fn ip_owned_by(o: &Ownership, node: NodeId, n: usize) -> String {
    (0u32..)
        .map(|i| format!("10.1.{}.{}", i >> 8, i & 255))
        .filter(|ip| o.owner(ip, 8080) == node)
        .nth(n)
        .unwrap()
}

fn kh(key: &InstanceKey) -> u64 {
    key_hash(&key.service, &key.cluster, &key.ip, key.port)
}

type KeyTuple = (String, String, String, String, String, u16);

fn key_tuple(name: &ServiceName, id: InstanceIdRef) -> KeyTuple {
    (
        name.namespace.to_string(),
        name.group.to_string(),
        name.service.to_string(),
        id.cluster.to_string(),
        id.ip.to_string(),
        id.port,
    )
}

fn sync_key_tuple(r: &SyncRecord) -> KeyTuple {
    let k = &r.key;
    (
        k.service.namespace.to_string(),
        k.service.group.to_string(),
        k.service.service.to_string(),
        k.cluster.to_string(),
        k.ip.to_string(),
        k.port,
    )
}

/// Every record, key → (version, alive).
fn versions(s: &Store) -> BTreeMap<KeyTuple, (Version, bool)> {
    let mut m = BTreeMap::new();
    s.for_each_record(|name, id, r| {
        m.insert(key_tuple(name, id), (r.version, r.alive));
    });
    m
}

/// The buckets where two digests differ, with both sides (empty when equal): a readable
/// alternative to comparing 1024 buckets with `assert_eq!`.
fn digest_diff(a: &Digest, b: &Digest) -> Vec<(usize, Bucket, Bucket)> {
    a.diff(b)
        .iter()
        .map(|i| (i, a.buckets[i], b.buckets[i]))
        .collect()
}

#[track_caller]
fn assert_same_digest(a: &Digest, b: &Digest, what: &str) {
    let d = digest_diff(a, b);
    assert!(
        d.is_empty(),
        "{what}: digests differ in (bucket, left, right) {d:?}"
    );
}

async fn advance(ms: u64) {
    tokio::time::advance(Duration::from_millis(ms)).await;
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// local_write: ip, version, alive, lapsed.
    Local(String, Version, bool, bool),
    /// service_changed: the service's short name.
    Changed(String),
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
}

impl StoreObserver for Recorder {
    fn service_changed(&self, name: &ServiceName) {
        let ev = Event::Changed(name.service.to_string());
        self.events.lock().unwrap().push(ev);
    }

    fn local_write(&self, _: &ServiceName, id: InstanceIdRef, rec: &Record) {
        let ev = Event::Local(id.ip.to_string(), rec.version, rec.alive, rec.lapsed);
        self.events.lock().unwrap().push(ev);
    }
}

impl Recorder {
    fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }
}

fn changed(svc: &str) -> Event {
    Event::Changed(svc.into())
}

// ---------------------------------------------------------------------------------------------
// Register, query, deregister

#[test]
fn register_query_and_deregister_leaves_a_tombstone() {
    let s = new_store(1);
    let (a, b) = (k("10.0.0.1"), k("10.0.0.2"));
    s.register(&inst(&a), 0);
    s.register(&inst(&b), 0);
    assert_eq!(s.len(), 2);

    let snap = query_all(&s, &orders());
    assert_eq!(snap.name, orders());
    assert!(snap.revision > 0);
    assert_eq!(
        listed(&snap),
        ["DEFAULT 10.0.0.1:8080", "DEFAULT 10.0.0.2:8080"]
    );

    let ra = s.get(&a).unwrap();
    assert!(ra.alive && !ra.lapsed);
    assert_eq!(ra.version.origin, 1);
    assert_eq!(ra.owner, 1);
    assert_eq!(ra.touched_ms, T0);
    assert_eq!(ra.key_hash, kh(&a));

    assert!(s.deregister(&a));
    let ta = s.get(&a).expect("a tombstone is kept");
    assert!(!ta.alive);
    assert!(ta.version > ra.version, "a delete is a new version");
    assert_eq!(s.len(), 1);
    let after = query_all(&s, &orders());
    assert_eq!(listed(&after), ["DEFAULT 10.0.0.2:8080"]);
    assert!(after.revision > snap.revision);

    assert!(!s.deregister(&a), "already deleted");
    assert_eq!(s.get(&a).unwrap().version, ta.version, "no second delete");
    assert!(!s.deregister(&k("10.9.9.9")), "never registered");
    assert!(s.get(&k("10.9.9.9")).is_none());
    check(&s);
}

#[test]
fn the_snapshot_shows_what_was_registered() {
    let s = new_store(1);
    let a = k("10.0.0.1");
    let mut i = inst(&a);
    i.weight = 2.5;
    i.healthy = false;
    i.enabled = false;
    i.metadata = vec![("zone".into(), "b".into()), ("app".into(), "x".into())];
    s.register(&i, 0);
    let snap = query_all(&s, &orders());
    assert_eq!(snap.instances.len(), 1);
    let v = &snap.instances[0];
    assert_eq!((&*v.cluster, &*v.ip, v.port), ("DEFAULT", "10.0.0.1", 8080));
    assert_eq!(v.weight, 2.5);
    assert!(!v.healthy && !v.enabled);
    let meta: Vec<(&str, &str)> = v.metadata.iter().map(|(k, v)| (&**k, &**v)).collect();
    assert_eq!(meta, [("app", "x"), ("zone", "b")], "sorted by key");
    check(&s);
}

#[test]
fn an_unknown_service_is_an_empty_list_at_revision_zero() {
    let s = new_store(1);
    let snap = query_all(&s, &orders());
    assert_eq!(
        (snap.name, snap.revision, snap.instances.len()),
        (orders(), 0, 0)
    );
    check(&s);
}

#[test]
fn registering_again_after_a_deregister_revives_with_a_newer_version() {
    let s = new_store(1);
    let a = k("10.0.0.1");
    s.register(&inst(&a), 0);
    s.deregister(&a);
    let tomb = s.get(&a).unwrap().version;
    s.register(&inst(&a), 0);
    let r = s.get(&a).unwrap();
    assert!(r.alive);
    assert!(r.version > tomb);
    assert_eq!(s.len(), 1);
    assert_eq!(listed(&query_all(&s, &orders())), ["DEFAULT 10.0.0.1:8080"]);
    check(&s);
}

#[tokio::test(start_paused = true)]
async fn reregistering_identical_data_renews_without_a_new_version() {
    let obs = Arc::new(Recorder::default());
    let s = Store::new(1, Clock::starting_at(T0), obs.clone());
    let a = k("10.0.0.1");
    let mut i = inst(&a);
    i.metadata = vec![("b".into(), "1".into()), ("a".into(), "2".into())];
    s.register(&i, 5);
    let v1 = s.get(&a).unwrap().version;
    let rev1 = query_all(&s, &orders()).revision;
    obs.take();

    advance(10_000).await;
    let mut same = i.clone();
    same.metadata.reverse(); // the same map in another order
    s.register(&same, 5);
    let r = s.get(&a).unwrap();
    assert_eq!(r.version, v1, "identical data: no new version");
    assert_eq!(r.touched_ms, T0 + 10_000, "but the lease is renewed");
    assert_eq!(query_all(&s, &orders()).revision, rev1);
    assert_eq!(obs.take(), [], "nothing to sync or push");
    check(&s);

    // The same data from another connection is a new version: peers (and a future owner)
    // must know which session the instance is bound to.
    s.register(&same, 6);
    let r = s.get(&a).unwrap();
    assert!(r.version > v1, "a new session is news");
    assert_eq!(r.session, 6);
    let v1 = r.version;
    let rev1 = query_all(&s, &orders()).revision;
    obs.take();
    check(&s);

    type Change = Box<dyn Fn(&mut Instance)>;
    let changes: Vec<(&str, Change)> = vec![
        ("weight", Box::new(|i| i.weight = 2.0)),
        ("healthy", Box::new(|i| i.healthy = false)),
        ("enabled", Box::new(|i| i.enabled = false)),
        ("lease", Box::new(|i| i.lease.expire_ms = 60_000)),
        ("metadata value", Box::new(|i| i.metadata[0].1 = "9".into())),
        (
            "metadata entry",
            Box::new(|i| i.metadata.push(("c".into(), "3".into()))),
        ),
    ];
    let mut prev = (v1, rev1);
    for (what, change) in changes {
        let mut other = i.clone();
        change(&mut other);
        s.register(&other, 6);
        let v = s.get(&a).unwrap().version;
        let rev = query_all(&s, &orders()).revision;
        assert!(v > prev.0, "changed {what}: a new version");
        assert!(rev > prev.1, "changed {what}: a new revision");
        let events = obs.take();
        assert_eq!(
            events,
            [
                Event::Local("10.0.0.1".into(), v, true, false),
                changed("orders")
            ],
            "changed {what}"
        );
        // Back to the original data: again a change.
        s.register(&i, 6);
        let back = s.get(&a).unwrap().version;
        assert!(back > v);
        prev = (back, query_all(&s, &orders()).revision);
        obs.take();
        check(&s);
    }
}

// ---------------------------------------------------------------------------------------------
// Merge

#[test]
fn merge_is_last_writer_wins_on_hlc_then_origin() {
    let s = new_store(1);
    let a = k("10.0.0.1");
    assert!(s.merge(&sync(&a, hlc_at(5_000), 2, true)));
    let v = Version {
        hlc: hlc_at(5_000),
        origin: 2,
    };
    assert_eq!(s.get(&a).unwrap().version, v);
    assert_eq!(s.len(), 1);

    let mut equal = sync(&a, hlc_at(5_000), 2, true);
    equal.weight = 9.0;
    assert!(!s.merge(&equal), "an equal version is ignored");
    assert_eq!(s.get(&a).unwrap().weight, 1.0);

    assert!(!s.merge(&sync(&a, hlc_at(4_000), 3, true)), "older hlc");
    assert!(
        !s.merge(&sync(&a, hlc_at(5_000), 1, false)),
        "same hlc, lower origin"
    );
    assert_eq!(s.get(&a).unwrap().version, v);
    assert!(s.get(&a).unwrap().alive);

    assert!(
        s.merge(&sync(&a, hlc_at(5_000), 3, false)),
        "same hlc, higher origin"
    );
    let t = s.get(&a).unwrap();
    assert!(!t.alive, "a newer tombstone wins");
    assert_eq!(t.version.origin, 3);
    assert_eq!(s.len(), 0);
    assert!(query_all(&s, &orders()).instances.is_empty());

    assert!(
        !s.merge(&sync(&a, hlc_at(4_999), 9, true)),
        "an older live copy does not resurrect a deleted instance"
    );
    assert!(!s.get(&a).unwrap().alive);

    assert!(
        s.merge(&sync(&a, hlc_at(6_000), 2, true)),
        "a newer write beats the tombstone"
    );
    assert!(s.get(&a).unwrap().alive);
    assert_eq!(s.len(), 1);
    check(&s);
}

#[test]
fn merge_copies_every_field_and_stamps_the_receipt_time() {
    let s = new_store(1);
    let a = k("10.0.0.1");
    let mut r = sync(&a, hlc_at(5_000), 2, true);
    r.healthy = false;
    r.enabled = false;
    r.lapsed = true;
    r.weight = 0.5;
    r.lease = Lease {
        beat_ms: 1_000,
        unhealthy_ms: 3_000,
        expire_ms: 9_000,
    };
    r.session = (2 << 48) | 17;
    r.metadata = vec![("k".into(), "v".into())];
    assert!(s.merge(&r));
    let got = s.get(&a).unwrap();
    assert!(got.alive && !got.healthy && !got.enabled && got.lapsed);
    assert_eq!(got.weight, 0.5);
    assert_eq!(got.lease, r.lease);
    assert_eq!(got.session, r.session);
    assert_eq!(got.touched_ms, T0);
    assert_eq!(got.owner, 1);
    let meta: Vec<(&str, &str)> = got.meta().iter().map(|(k, v)| (&**k, &**v)).collect();
    assert_eq!(meta, [("k", "v")]);
    // It re-encodes to what came in.
    let batch = s.records_in_buckets(1, &[bucket_of(kh(&a))].into_iter().collect());
    assert_eq!(decode_batch(&batch), [r]);
    check(&s);
}

#[test]
fn a_tombstone_for_an_unknown_key_is_kept_but_not_listed() {
    let s = new_store(1);
    let a = k("10.0.0.1");
    assert!(s.merge(&sync(&a, hlc_at(5_000), 2, false)));
    assert!(!s.get(&a).unwrap().alive);
    assert_eq!(s.len(), 0);
    assert!(query_all(&s, &orders()).instances.is_empty());
    assert_eq!(s.list_services("public", 0, 10).total, 0);
    assert!(
        !s.merge(&sync(&a, hlc_at(4_000), 2, true)),
        "it still beats older copies"
    );
    check(&s);
}

#[test]
fn merge_moves_the_hlc_past_the_remote_version() {
    // The local wall clock (T0 = 1000 s) is an hour behind the remote writer.
    let s = new_store(1);
    let far = hlc_at(T0 + 3_600_000) | 7;
    let (a, b) = (k("10.0.0.1"), k("10.0.0.2"));
    assert!(s.merge(&sync(&a, far, 2, true)));
    assert!(s.hlc().last() >= far);

    s.register(&inst(&b), 0);
    assert!(
        s.get(&b).unwrap().version.hlc > far,
        "a later local write is newer"
    );

    assert!(s.deregister(&a), "overwriting the remote record locally");
    let t = s.get(&a).unwrap();
    assert!(!t.alive);
    assert!(
        t.version
            > Version {
                hlc: far,
                origin: 2
            }
    );
    assert_eq!(t.version.origin, 1);
    check(&s);
}

// ---------------------------------------------------------------------------------------------
// Beats and sessions

#[tokio::test(start_paused = true)]
async fn beat_renews_recovers_and_reports_unknown_keys() {
    let s = new_store(1);
    let a = k("10.0.0.1");
    assert_eq!(s.beat(&a), BeatOutcome::Unknown, "never registered");

    s.register(&inst(&a), 0);
    let v1 = s.get(&a).unwrap().version;
    advance(10_000).await;
    assert_eq!(s.beat(&a), BeatOutcome::Renewed);
    let r = s.get(&a).unwrap();
    assert_eq!(r.version, v1, "a renewal is not a new version");
    assert_eq!(r.touched_ms, T0 + 10_000);

    advance(15_001).await;
    assert_eq!(s.lease_pass().lapsed, 1);
    let lapsed = s.get(&a).unwrap();
    assert!(lapsed.lapsed);
    assert!(!query_all(&s, &orders()).instances[0].healthy);

    advance(1_000).await;
    assert_eq!(s.beat(&a), BeatOutcome::Recovered);
    let r = s.get(&a).unwrap();
    assert!(!r.lapsed);
    assert!(r.version > lapsed.version, "recovery is a new version");
    assert_eq!(r.touched_ms, T0 + 26_001);
    assert!(query_all(&s, &orders()).instances[0].healthy);

    assert!(s.deregister(&a));
    let tomb = s.get(&a).unwrap();
    advance(1_000).await;
    assert_eq!(s.beat(&a), BeatOutcome::Unknown, "tombstoned");
    let after = s.get(&a).unwrap();
    assert_eq!(
        (after.version, after.touched_ms, after.alive),
        (tomb.version, tomb.touched_ms, false),
        "a beat does not touch a tombstone"
    );
    check(&s);
}

#[test]
fn lapse_session_only_touches_records_bound_to_that_session() {
    let s = new_store(1);
    let (a, b, c) = (k("10.0.0.1"), k("10.0.0.2"), k("10.0.0.3"));
    s.register(&inst(&a), 7);
    s.register(&inst(&b), 8);
    s.register(&inst(&c), 0);
    let before = versions(&s);

    assert!(!s.lapse_session(&a, 8), "bound to another session");
    assert!(!s.lapse_session(&c, 7), "not session-bound");
    assert!(!s.lapse_session(&k("10.9.9.9"), 7), "unknown");
    assert_eq!(versions(&s), before);

    assert!(s.lapse_session(&a, 7));
    let ra = s.get(&a).unwrap();
    assert!(ra.lapsed);
    assert!(ra.version > before[&key_tuple(&orders(), InstanceIdRef::of(&a))].0);
    assert!(!s.get(&b).unwrap().lapsed);
    assert!(!s.get(&c).unwrap().lapsed);
    assert!(!s.lapse_session(&a, 7), "already lapsed: nothing to write");
    assert_eq!(s.get(&a).unwrap().version, ra.version);

    let snap = query_all(&s, &orders());
    let health: Vec<bool> = snap.instances.iter().map(|i| i.healthy).collect();
    assert_eq!(health, [false, true, true]);

    assert!(s.deregister(&b));
    assert!(!s.lapse_session(&b, 8), "tombstoned");

    s.register(&inst(&a), 9);
    assert!(!s.get(&a).unwrap().lapsed, "registering again recovers");
    check(&s);
}

// ---------------------------------------------------------------------------------------------
// Leases

#[tokio::test(start_paused = true)]
async fn lease_pass_lapses_then_expires_then_drops_the_tombstone() {
    let obs = Arc::new(Recorder::default());
    let s = Store::new(1, Clock::starting_at(T0), obs.clone());
    let a = k("10.0.0.1");
    let short = k("10.0.0.2");
    s.register(&inst(&a), 0);
    let mut si = inst(&short);
    si.lease = Lease {
        beat_ms: 500,
        unhealthy_ms: 1_000,
        expire_ms: 2_000,
    };
    s.register(&si, 0);
    obs.take();

    advance(1_001).await;
    assert_eq!(
        s.lease_pass(),
        LeaseStats {
            lapsed: 1,
            ..LeaseStats::default()
        },
        "each record by its own lease"
    );
    assert!(s.get(&short).unwrap().lapsed);
    assert!(!s.get(&a).unwrap().lapsed);
    advance(1_000).await;
    assert_eq!(
        s.lease_pass(),
        LeaseStats {
            expired: 1,
            ..LeaseStats::default()
        }
    );
    assert!(!s.get(&short).unwrap().alive);
    assert_eq!(s.get(&short).unwrap().touched_ms, T0 + 2_001);
    obs.take();

    advance(15_000 - 2_001).await;
    assert_eq!(
        s.lease_pass(),
        LeaseStats::default(),
        "idle exactly unhealthy_ms"
    );
    let v1 = s.get(&a).unwrap().version;

    advance(1).await;
    assert_eq!(s.lease_pass().lapsed, 1);
    let r = s.get(&a).unwrap();
    assert!(r.lapsed && r.alive);
    assert!(r.version > v1, "a lapse is a write of the owner");
    assert_eq!(r.touched_ms, T0, "a lapse does not renew");
    assert_eq!(
        obs.take(),
        [
            Event::Local("10.0.0.1".into(), r.version, true, true),
            changed("orders")
        ]
    );
    assert!(!query_all(&s, &orders()).instances[0].healthy);
    assert_eq!(s.lease_pass(), LeaseStats::default(), "lapsed once only");

    advance(15_000 - 1).await;
    assert_eq!(
        s.lease_pass(),
        LeaseStats::default(),
        "idle exactly expire_ms"
    );
    advance(1).await;
    assert_eq!(s.lease_pass().expired, 1);
    let t = s.get(&a).unwrap();
    assert!(!t.alive);
    assert!(t.version > r.version);
    assert_eq!(
        t.touched_ms,
        T0 + 30_001,
        "the tombstone's clock starts at the delete"
    );
    assert_eq!(s.len(), 0);
    assert!(query_all(&s, &orders()).instances.is_empty());
    assert_eq!(
        obs.take(),
        [
            Event::Local("10.0.0.1".into(), t.version, false, true),
            changed("orders")
        ]
    );
    check(&s);

    // `short`'s tombstone: kept for its lease's expire-after plus the grace.
    let now = s.clock().now_ms();
    advance(T0 + 2_001 + 2_000 + TOMBSTONE_GRACE_MS - now).await;
    assert_eq!(
        s.lease_pass().tombstones_dropped,
        0,
        "idle exactly the retention"
    );
    advance(1).await;
    assert_eq!(s.lease_pass().tombstones_dropped, 1);
    assert!(s.get(&short).is_none());
    assert!(s.get(&a).is_some());
    check(&s);

    let now = s.clock().now_ms();
    advance(T0 + 30_001 + 30_000 + TOMBSTONE_GRACE_MS - now).await;
    assert_eq!(s.lease_pass().tombstones_dropped, 0);
    advance(1).await;
    assert_eq!(s.lease_pass().tombstones_dropped, 1);
    assert!(s.get(&a).is_none());
    assert_eq!(
        versions(&s).len(),
        0,
        "the service entry went with its last record"
    );
    assert_eq!(
        obs.take(),
        [],
        "dropping a tombstone changes nothing readers see"
    );
    check(&s);
}

#[tokio::test(start_paused = true)]
async fn lease_pass_leaves_records_of_other_owners_alone() {
    let s = new_store(1);
    s.set_ownership(Ownership::new(vec![1, 2]));
    let o = s.ownership();
    let theirs = k(&ip_owned_by(&o, 2, 0));
    let their_tomb = k(&ip_owned_by(&o, 2, 1));
    let mine = k(&ip_owned_by(&o, 1, 0));
    assert!(s.merge(&sync(&theirs, hlc_at(T0), 2, true)));
    s.register(&inst(&mine), 0);
    assert_eq!(s.get(&theirs).unwrap().owner, 2);
    assert_eq!(s.get(&mine).unwrap().owner, 1);
    let theirs_v = s.get(&theirs).unwrap().version;

    advance(16_000).await;
    assert_eq!(s.lease_pass().lapsed, 1, "only mine");
    advance(15_000).await;
    let stats = s.lease_pass();
    assert_eq!((stats.lapsed, stats.expired), (0, 1));
    let t = s.get(&theirs).unwrap();
    assert!(t.alive && !t.lapsed, "not this node's lease duty");
    assert_eq!(t.version, theirs_v);
    assert!(!s.get(&mine).unwrap().alive);

    // Tombstones are dropped whoever owns them.
    assert!(s.merge(&sync(&their_tomb, hlc_at(T0 + 31_000), 2, false)));
    advance(30_000 + TOMBSTONE_GRACE_MS + 1).await;
    assert_eq!(s.lease_pass().tombstones_dropped, 2);
    assert!(s.get(&their_tomb).is_none());
    assert!(s.get(&mine).is_none());
    assert!(s.get(&theirs).unwrap().alive);
    check(&s);
}

#[tokio::test(start_paused = true)]
async fn lease_pass_shard_covers_exactly_one_shard() {
    let s = new_store(1);
    let a = k("10.0.0.1");
    s.register(&inst(&a), 0);
    let home = s.shard_index(&orders());
    advance(15_001).await;
    for i in (0..SHARDS).filter(|i| *i != home) {
        assert_eq!(s.lease_pass_shard(i), LeaseStats::default());
    }
    assert_eq!(s.lease_pass_shard(home).lapsed, 1);
    check(&s);
}

#[tokio::test(start_paused = true)]
async fn regrant_owned_resets_the_clock_of_owned_live_records_only() {
    let s = new_store(1);
    s.set_ownership(Ownership::new(vec![1, 2]));
    let o = s.ownership();
    let mine = k(&ip_owned_by(&o, 1, 0));
    let my_tomb = k(&ip_owned_by(&o, 1, 1));
    let theirs = k(&ip_owned_by(&o, 2, 0));
    s.register(&inst(&mine), 0);
    s.register(&inst(&my_tomb), 0);
    s.deregister(&my_tomb);
    s.merge(&sync(&theirs, hlc_at(T0), 2, true));
    let before = versions(&s);

    advance(20_000).await;
    assert_eq!(s.regrant_owned(), 1);
    assert_eq!(s.get(&mine).unwrap().touched_ms, T0 + 20_000);
    assert_eq!(s.get(&my_tomb).unwrap().touched_ms, T0);
    assert_eq!(s.get(&theirs).unwrap().touched_ms, T0);
    assert_eq!(versions(&s), before, "a regrant is no write");

    // Without the regrant `mine` would have expired now (idle 34 s).
    advance(14_000).await;
    assert_eq!(s.lease_pass(), LeaseStats::default());
    assert!(s.get(&mine).unwrap().alive);
    check(&s);
}

// ---------------------------------------------------------------------------------------------
// Ownership

#[tokio::test(start_paused = true)]
async fn set_ownership_moves_digests_hands_off_lost_records_and_leases_gained_ones() {
    let s = new_store(1);
    let names = [orders(), ServiceName::new("public", "g", "pay")];
    let mut keys = Vec::new();
    for i in 0..60u32 {
        let key = key_in(
            &names[(i % 2) as usize],
            "DEFAULT",
            &format!("10.0.0.{i}"),
            8080,
        );
        s.register(&inst(&key), 0);
        if i % 7 == 0 {
            s.deregister(&key);
        }
        keys.push(key);
    }
    let live = s.len();
    let before = s.digest(1);
    assert_eq!(before.total_count() as usize, live);
    check(&s);

    let view = Ownership::new(vec![1, 2, 3]);
    advance(5_000).await;
    let ch = s.set_ownership(view.clone());
    assert_eq!(ch.gained, 0);
    assert_eq!(
        ch.lost.keys().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([2, 3])
    );
    for node in [2, 3] {
        let got: BTreeMap<KeyTuple, (Version, bool)> = decode_batch(&ch.lost[&node])
            .iter()
            .map(|r| (sync_key_tuple(r), (r.version, r.alive)))
            .collect();
        let want: BTreeMap<KeyTuple, (Version, bool)> = keys
            .iter()
            .filter(|key| view.owner(&key.ip, key.port) == node)
            .map(|key| {
                let r = s.get(key).unwrap();
                (
                    key_tuple(&key.service, InstanceIdRef::of(key)),
                    (r.version, r.alive),
                )
            })
            .collect();
        assert!(!want.is_empty());
        assert!(
            want.values().any(|(_, alive)| !alive),
            "tombstones are handed off too"
        );
        assert_eq!(got, want, "records handed off to {node}");
    }
    for key in &keys {
        let r = s.get(key).unwrap();
        assert_eq!(r.owner, view.owner(&key.ip, key.port));
        assert_eq!(r.touched_ms, T0, "losing a record does not renew it");
    }
    let mut sum = Digest::new();
    for node in [1, 2, 3] {
        let d = s.digest(node);
        let owned = keys
            .iter()
            .filter(|key| s.get(key).unwrap().alive && view.owner(&key.ip, key.port) == node)
            .count();
        assert_eq!(d.total_count() as usize, owned, "digest of {node}");
        sum.merge(&d);
    }
    // Live records this node was renewing were handed off re-stamped (Store::set_ownership),
    // so compare with the digest of what the store holds now.
    let mut all = Digest::new();
    for key in &keys {
        let r = s.get(key).unwrap();
        if r.alive {
            all.add(r.key_hash, r.digest_term());
        }
    }
    assert_eq!(before.total_count(), all.total_count());
    assert_same_digest(&sum, &all, "the same records, split by owner");
    check(&s);

    // Nodes 2 and 3 leave: this node takes over their live records with a fresh lease.
    advance(7_000).await;
    let ch = s.set_ownership(Ownership::standalone(1));
    assert!(ch.lost.is_empty());
    let moved_live = keys
        .iter()
        .filter(|key| view.owner(&key.ip, key.port) != 1 && s.get(key).unwrap().alive)
        .count();
    assert_eq!(ch.gained, moved_live);
    for key in &keys {
        let r = s.get(key).unwrap();
        assert_eq!(r.owner, 1);
        let gained = view.owner(&key.ip, key.port) != 1 && r.alive;
        let want = if gained { T0 + 12_000 } else { T0 };
        assert_eq!(r.touched_ms, want, "{key:?}");
    }
    assert_same_digest(&s.digest(1), &all, "all back with node 1");
    assert_eq!(s.digest(2).total_count(), 0);
    check(&s);
}

#[test]
fn set_ownership_hands_off_merged_records_to_their_new_owner() {
    // Node 2 holds records it received from node 1 (then its owner in a partition).
    let s = new_store(2);
    let view = Ownership::new(vec![1, 2]);
    let ones: Vec<InstanceKey> = (0..5).map(|n| k(&ip_owned_by(&view, 1, n))).collect();
    let twos: Vec<InstanceKey> = (0..5).map(|n| k(&ip_owned_by(&view, 2, n))).collect();
    for (i, key) in ones.iter().chain(&twos).enumerate() {
        s.merge(&sync(key, hlc_at(T0) + i as u64, 1, true));
    }
    let ch = s.set_ownership(view);
    assert_eq!(ch.gained, 0);
    let lost = decode_batch(&ch.lost[&1]);
    let lost_keys: BTreeSet<KeyTuple> = lost.iter().map(sync_key_tuple).collect();
    let want: BTreeSet<KeyTuple> = ones
        .iter()
        .map(|key| key_tuple(&key.service, InstanceIdRef::of(key)))
        .collect();
    assert_eq!(lost_keys, want);
    assert_eq!(ch.lost.len(), 1);
    assert_eq!(s.digest(1).total_count(), 5);
    assert_eq!(s.digest(2).total_count(), 5);
    check(&s);
}

// ---------------------------------------------------------------------------------------------
// Digests, pulls

/// Copies every record of `from` into `to` (the streamed snapshot a joining node loads).
fn copy_all(from: &Store, to: &Store) {
    for i in 0..SHARDS {
        for r in decode_batch(&from.encode_shard(i)) {
            to.merge(&r);
        }
    }
}

#[test]
fn digests_agree_between_stores_and_pinpoint_a_differing_record() {
    let view = Ownership::new(vec![1, 2]);
    let (a, b) = (new_store(1), new_store(2));
    a.set_ownership(view.clone());
    b.set_ownership(view.clone());
    let mut keys = Vec::new();
    for i in 0..80u32 {
        let name = ServiceName::new("public", "g", &format!("svc{}", i % 5));
        let key = key_in(&name, "DEFAULT", &format!("10.0.{}.{}", i / 7, i), 8080);
        a.register(&inst(&key), 0);
        if i % 9 == 0 {
            a.deregister(&key);
        }
        keys.push(key);
    }
    copy_all(&a, &b);
    assert_eq!(versions(&a), versions(&b));
    for owner in [1, 2] {
        assert_same_digest(
            &a.digest(owner),
            &b.digest(owner),
            &format!("owner {owner}"),
        );
        let mut manual = Digest::new();
        a.for_each_record(|_, _, r| {
            if r.alive && r.owner == owner {
                manual.add(r.key_hash, r.digest_term());
            }
        });
        assert_same_digest(
            &a.digest(owner),
            &manual,
            "the sum of the live records' terms",
        );
        assert!(manual.total_count() > 0);
    }
    check(&a);
    check(&b);

    // Split the records between two stores: their digests add up to the whole.
    let (c, d) = (new_store(3), new_store(3));
    c.set_ownership(view.clone());
    d.set_ownership(view.clone());
    for i in 0..SHARDS {
        for r in decode_batch(&a.encode_shard(i)) {
            if i % 2 == 0 { &c } else { &d }.merge(&r);
        }
    }
    for owner in [1, 2] {
        let mut sum = c.digest(owner);
        sum.merge(&d.digest(owner));
        assert_same_digest(&sum, &a.digest(owner), &format!("owner {owner}"));
    }

    // One record differs in version: exactly its bucket differs, for its owner only.
    let x = keys.iter().find(|key| a.get(key).unwrap().alive).unwrap();
    let rx = b.get(x).unwrap();
    let mut newer = sync(x, rx.version.hlc + 1, 2, true);
    newer.weight = rx.weight;
    assert!(b.merge(&newer));
    let owner = rx.owner;
    let diff = a.digest(owner).diff(&b.digest(owner));
    assert_eq!(diff.iter().collect::<Vec<_>>(), [bucket_of(kh(x))]);
    let other = if owner == 1 { 2 } else { 1 };
    assert!(a.digest(other).diff(&b.digest(other)).is_empty());
    let bucket = bucket_of(kh(x));
    assert_eq!(
        a.digest(owner).buckets[bucket].count,
        b.digest(owner).buckets[bucket].count,
        "same count, different sum"
    );

    // A tombstone on one side: the bucket differs too, in count.
    let y = keys
        .iter()
        .find(|key| a.get(key).unwrap().alive && bucket_of(kh(key)) != bucket)
        .unwrap();
    let ry = b.get(y).unwrap();
    assert!(b.merge(&sync(y, ry.version.hlc + 1, 2, false)));
    let diff = a.digest(ry.owner).diff(&b.digest(ry.owner));
    assert!(diff.contains(bucket_of(kh(y))));
    assert_eq!(
        a.digest(ry.owner).buckets[bucket_of(kh(y))].count,
        b.digest(ry.owner).buckets[bucket_of(kh(y))].count + 1
    );
    check(&b);
}

#[test]
fn records_in_buckets_returns_exactly_the_owners_records_in_those_buckets() {
    let s = new_store(1);
    let view = Ownership::new(vec![1, 2]);
    s.set_ownership(view.clone());
    for i in 0..120u32 {
        let name = ServiceName::new("public", "g", &format!("svc{}", i % 3));
        let key = key_in(&name, "c", &format!("10.2.0.{i}"), 80);
        s.register(&inst(&key), 0);
        if i % 4 == 0 {
            s.deregister(&key);
        }
    }
    let mut all: Vec<(KeyTuple, Record)> = Vec::new();
    s.for_each_record(|n, id, r| all.push((key_tuple(n, id), r.clone())));
    let theirs: Vec<&(KeyTuple, Record)> = all.iter().filter(|(_, r)| r.owner == 2).collect();
    // Every third of node 2's records picks a bucket, one of them a tombstone's.
    let mut buckets: BucketSet = theirs
        .iter()
        .step_by(3)
        .map(|(_, r)| bucket_of(r.key_hash))
        .collect();
    let tomb = theirs.iter().find(|(_, r)| !r.alive).unwrap();
    buckets.insert(bucket_of(tomb.1.key_hash));

    let got: BTreeMap<KeyTuple, (Version, bool)> = decode_batch(&s.records_in_buckets(2, &buckets))
        .iter()
        .map(|r| (sync_key_tuple(r), (r.version, r.alive)))
        .collect();
    let want: BTreeMap<KeyTuple, (Version, bool)> = all
        .iter()
        .filter(|(_, r)| r.owner == 2 && buckets.contains(bucket_of(r.key_hash)))
        .map(|(k, r)| (k.clone(), (r.version, r.alive)))
        .collect();
    assert!(want.len() >= buckets.len());
    assert!(want.values().any(|(_, alive)| !alive));
    assert_eq!(got, want);

    assert!(s.records_in_buckets(2, &BucketSet::default()).is_empty());
    assert!(
        s.records_in_buckets(3, &(0..DIGEST_BUCKETS).collect())
            .is_empty(),
        "nothing owned by a node outside the view"
    );
    let everything = s.records_in_buckets(1, &(0..DIGEST_BUCKETS).collect());
    assert_eq!(
        everything.count as usize,
        all.iter().filter(|(_, r)| r.owner == 1).count()
    );
    check(&s);
}

#[tokio::test(start_paused = true)]
async fn drop_missing_removes_only_old_absent_live_records_of_that_owner() {
    let obs = Arc::new(Recorder::default());
    let s = Store::new(1, Clock::starting_at(T0), obs.clone());
    let view = Ownership::new(vec![1, 2]);
    s.set_ownership(view.clone());
    let lonely_svc = ServiceName::new("public", "g", "lonely");
    let two = |n| ip_owned_by(&view, 2, n);

    let dropped_lonely = key_in(&lonely_svc, "DEFAULT", &two(0), 8080);
    let dropped = k(&two(1));
    let present = k(&two(2));
    let tomb = k(&two(3));
    let edge = k(&two(4));
    let young = k(&two(5));
    let mine = k(&ip_owned_by(&view, 1, 0));
    let in_set = [
        &dropped_lonely,
        &dropped,
        &present,
        &tomb,
        &edge,
        &young,
        &mine,
    ];
    let buckets: BucketSet = in_set.iter().map(|key| bucket_of(kh(key))).collect();
    let outside = (6..)
        .map(|n| k(&two(n)))
        .find(|key| !buckets.contains(bucket_of(kh(key))))
        .unwrap();

    // At T0: the old records.
    for key in [&dropped_lonely, &dropped, &present, &tomb, &mine, &outside] {
        assert!(s.merge(&sync(key, hlc_at(T0), 2, true)));
    }
    assert!(s.merge(&sync(&tomb, hlc_at(T0) + 1, 2, false)));
    // At the cutoff: not strictly older, kept.
    advance(5_000).await;
    let cutoff = T0 + 5_000;
    s.merge(&sync(&edge, hlc_at(cutoff), 2, true));
    // After the cutoff: may still be on its way to the owner, kept.
    advance(5_000).await;
    s.merge(&sync(&young, hlc_at(T0 + 10_000), 2, true));
    assert_eq!(s.get(&mine).unwrap().owner, 1);

    let sent: HashSet<u64> = [kh(&present)].into_iter().collect();
    let rev = query_all(&s, &orders()).revision;
    let len = s.len();
    let (count1, count2) = (s.digest(1), s.digest(2).total_count());
    obs.take();

    assert_eq!(s.drop_missing(2, &buckets, &sent, cutoff), 2);
    assert!(
        s.get(&dropped_lonely).is_none(),
        "removed outright, no tombstone"
    );
    assert!(s.get(&dropped).is_none());
    for key in [&present, &edge, &young, &mine, &outside] {
        assert!(s.get(key).unwrap().alive, "{key:?} kept");
    }
    assert!(!s.get(&tomb).unwrap().alive, "tombstones are kept");
    assert_eq!(s.len(), len - 2);
    assert_eq!(s.digest(2).total_count(), count2 - 2);
    assert_same_digest(&s.digest(1), &count1, "node 1's records are untouched");
    let after = query_all(&s, &orders());
    assert!(after.revision > rev);
    assert!(!listed(&after).contains(&format!("DEFAULT {}:8080", dropped.ip)));
    assert!(
        s.list_services("public", 0, 100)
            .services
            .iter()
            .all(|x| &*x.service != "lonely"),
        "the emptied service is gone"
    );
    assert!(versions(&s).keys().all(|k| k.2 != "lonely"));
    let events: BTreeSet<String> = obs
        .take()
        .into_iter()
        .map(|e| match e {
            Event::Changed(svc) => svc,
            other => panic!("a pull is no local write: {other:?}"),
        })
        .collect();
    assert_eq!(
        events,
        BTreeSet::from(["lonely".to_string(), "orders".to_string()])
    );
    check(&s);

    assert_eq!(s.drop_missing(2, &buckets, &sent, cutoff), 0, "idempotent");
    assert_eq!(obs.take(), []);
    assert_eq!(
        s.drop_missing(2, &buckets, &HashSet::default(), T0 + 10_001),
        3,
        "present, edge, young once the cutoff and the sent set allow"
    );
    assert_eq!(
        s.drop_missing(1, &buckets, &HashSet::default(), T0 + 10_001),
        1,
        "mine, for its owner"
    );
    check(&s);
}

// ---------------------------------------------------------------------------------------------
// Reads

#[test]
fn list_services_sorts_pages_and_counts_healthy_instances() {
    let s = new_store(1);
    let svc = |g: &str, n: &str| ServiceName::new("public", g, n);
    let reg = |name: &ServiceName, ip: &str, healthy: bool, session: u64| {
        let mut i = inst(&key_in(name, "DEFAULT", ip, 80));
        i.healthy = healthy;
        s.register(&i, session);
    };
    reg(&svc("g2", "a"), "10.0.0.1", true, 0);
    reg(&svc("g2", "a"), "10.0.0.2", true, 0);
    reg(&svc("g1", "b"), "10.0.0.1", true, 0);
    reg(&svc("g1", "b"), "10.0.0.2", false, 0); // declared unhealthy
    reg(&svc("g1", "b"), "10.0.0.3", true, 4);
    assert!(s.lapse_session(&key_in(&svc("g1", "b"), "DEFAULT", "10.0.0.3", 80), 4));
    reg(&svc("g1", "a"), "10.0.0.1", true, 0);
    reg(&svc("g1", "gone"), "10.0.0.1", true, 0);
    s.deregister(&key_in(&svc("g1", "gone"), "DEFAULT", "10.0.0.1", 80));
    s.register(
        &inst(&key_in(
            &ServiceName::new("other", "g0", "z"),
            "c",
            "1.1.1.1",
            1,
        )),
        0,
    );

    let summary = |l: &ServiceList| -> Vec<(String, String, u32, u32)> {
        l.services
            .iter()
            .map(|x| {
                (
                    x.group.to_string(),
                    x.service.to_string(),
                    x.instances,
                    x.healthy,
                )
            })
            .collect()
    };
    let row = |g: &str, n: &str, i, h| (g.to_string(), n.to_string(), i, h);
    let all = s.list_services("public", 0, 100);
    assert_eq!(all.total, 3, "a service with only tombstones is not listed");
    assert_eq!(
        summary(&all),
        [
            row("g1", "a", 1, 1),
            row("g1", "b", 3, 1),
            row("g2", "a", 2, 2)
        ]
    );

    let p0 = s.list_services("public", 0, 2);
    assert_eq!(p0.total, 3);
    assert_eq!(summary(&p0), [row("g1", "a", 1, 1), row("g1", "b", 3, 1)]);
    let p1 = s.list_services("public", 1, 2);
    assert_eq!(p1.total, 3);
    assert_eq!(summary(&p1), [row("g2", "a", 2, 2)]);
    let p2 = s.list_services("public", 2, 2);
    assert_eq!((p2.total, p2.services.len()), (3, 0));
    let huge = s.list_services("public", u32::MAX, u16::MAX);
    assert_eq!((huge.total, huge.services.len()), (3, 0));
    let zero = s.list_services("public", 0, 0);
    assert_eq!((zero.total, zero.services.len()), (3, 0));

    assert_eq!(
        summary(&s.list_services("other", 0, 10)),
        [row("g0", "z", 1, 1)]
    );
    assert_eq!(s.list_services("nope", 0, 10).total, 0);
    check(&s);
}

#[test]
fn query_filters_by_cluster_and_health() {
    let s = new_store(1);
    let n = orders();
    let reg = |cluster: &str, ip: &str, port: u16, f: &dyn Fn(&mut Instance)| {
        let mut i = inst(&key_in(&n, cluster, ip, port));
        f(&mut i);
        s.register(&i, 3);
    };
    reg("B", "10.0.0.5", 80, &|_| {});
    reg("A", "10.0.0.1", 10, &|_| {});
    reg("A", "10.0.0.1", 9, &|_| {});
    reg("A", "10.0.0.2", 80, &|i| i.enabled = false);
    reg("B", "10.0.0.3", 80, &|i| i.healthy = false);
    reg("B", "10.0.0.4", 80, &|_| {});
    reg("A", "10.0.0.6", 80, &|_| {});
    assert!(s.lapse_session(&key_in(&n, "B", "10.0.0.4", 80), 3));
    assert!(s.deregister(&key_in(&n, "A", "10.0.0.6", 80)));

    let all = query(&s, &n, "", false);
    assert_eq!(
        listed(&all),
        [
            "A 10.0.0.1:9",
            "A 10.0.0.1:10",
            "A 10.0.0.2:80",
            "B 10.0.0.3:80",
            "B 10.0.0.4:80",
            "B 10.0.0.5:80"
        ],
        "sorted by cluster, ip, then port as a number"
    );
    let flags: Vec<(bool, bool)> = all
        .instances
        .iter()
        .map(|i| (i.healthy, i.enabled))
        .collect();
    assert_eq!(
        flags,
        [
            (true, true),
            (true, true),
            (true, false),
            (false, true),
            (false, true), // lapsed: reported unhealthy
            (true, true)
        ]
    );
    assert_eq!(
        listed(&query(&s, &n, "A", false)),
        ["A 10.0.0.1:9", "A 10.0.0.1:10", "A 10.0.0.2:80"]
    );
    assert_eq!(
        listed(&query(&s, &n, "B", false)),
        ["B 10.0.0.3:80", "B 10.0.0.4:80", "B 10.0.0.5:80"]
    );
    assert!(query(&s, &n, "C", false).instances.is_empty());
    assert_eq!(
        listed(&query(&s, &n, "", true)),
        ["A 10.0.0.1:9", "A 10.0.0.1:10", "B 10.0.0.5:80"],
        "healthy_only drops disabled, unhealthy and lapsed instances"
    );
    assert_eq!(listed(&query(&s, &n, "B", true)), ["B 10.0.0.5:80"]);
    assert_eq!(query(&s, &n, "B", true).revision, all.revision);
    check(&s);
}

#[tokio::test(start_paused = true)]
async fn every_change_invalidates_the_cached_snapshot() {
    let s = new_store(1);
    let view = Ownership::new(vec![1, 2]);
    s.set_ownership(view.clone());
    let n = orders();
    let a = k(&ip_owned_by(&view, 1, 0));
    let b = k(&ip_owned_by(&view, 1, 1));
    let c = k(&ip_owned_by(&view, 2, 0));
    let entry = |key: &InstanceKey| format!("DEFAULT {}:8080", key.ip);
    let mut prev = query_all(&s, &n);

    // Queries the full list twice (the cache must be reused between changes), checks the
    // revision grew and the invariants (the cache decodes to the live records) hold.
    let step = |what: &str, prev: &mut ServiceSnapshot| -> ServiceSnapshot {
        let (x, y) = (s.query(&n, "", false), s.query(&n, "", false));
        assert_eq!(
            x.as_ptr(),
            y.as_ptr(),
            "{what}: the cache serves both reads"
        );
        let snap = decode_snapshot(x);
        assert!(snap.revision > prev.revision, "{what}: a new revision");
        check(&s);
        *prev = snap.clone();
        snap
    };
    let unchanged = |what: &str, prev: &ServiceSnapshot| {
        assert_eq!(&query_all(&s, &n), prev, "{what}: no change");
    };

    let mut ia = inst(&a);
    s.register(&ia, 1);
    assert_eq!(listed(&step("register", &mut prev)), [entry(&a)]);
    s.register(&inst(&b), 2);
    assert_eq!(listed(&step("register another", &mut prev)).len(), 2);
    s.register(&ia, 1);
    unchanged("identical re-register", &prev);
    ia.weight = 3.0;
    s.register(&ia, 1);
    let snap = step("re-register changed", &mut prev);
    assert_eq!(
        snap.instances.iter().find(|i| i.ip == a.ip).unwrap().weight,
        3.0
    );
    assert!(s.lapse_session(&a, 1));
    let snap = step("lapse_session", &mut prev);
    assert!(
        !snap
            .instances
            .iter()
            .find(|i| i.ip == a.ip)
            .unwrap()
            .healthy
    );
    assert_eq!(s.beat(&a), BeatOutcome::Recovered);
    let snap = step("beat recovers", &mut prev);
    assert!(
        snap.instances
            .iter()
            .find(|i| i.ip == a.ip)
            .unwrap()
            .healthy
    );
    assert_eq!(s.beat(&a), BeatOutcome::Renewed);
    unchanged("beat renews", &prev);
    assert!(s.deregister(&b));
    assert_eq!(listed(&step("deregister", &mut prev)), [entry(&a)]);
    assert!(s.merge(&sync(&c, hlc_at(T0), 2, true)));
    assert_eq!(listed(&step("merge", &mut prev)).len(), 2);
    assert!(!s.merge(&sync(&c, hlc_at(T0), 2, true)));
    unchanged("stale merge", &prev);
    assert!(s.merge(&sync(&c, hlc_at(T0) + 1, 2, false)));
    assert_eq!(listed(&step("merged tombstone", &mut prev)), [entry(&a)]);
    assert!(s.merge(&sync(&c, hlc_at(T0) + 2, 2, true)));
    assert_eq!(listed(&step("merged revival", &mut prev)).len(), 2);
    let ch = s.set_ownership(view.clone());
    assert_eq!(ch.gained, 0);
    unchanged("same view again", &prev);

    advance(15_001).await;
    assert_eq!(s.lease_pass().lapsed, 1); // a; c is node 2's
    let snap = step("lease lapse", &mut prev);
    assert!(
        !snap
            .instances
            .iter()
            .find(|i| i.ip == a.ip)
            .unwrap()
            .healthy
    );
    let buckets: BucketSet = [bucket_of(kh(&c))].into_iter().collect();
    assert_eq!(s.drop_missing(2, &buckets, &HashSet::default(), T0 + 1), 1);
    assert_eq!(listed(&step("drop_missing", &mut prev)), [entry(&a)]);
    advance(15_000).await;
    assert_eq!(s.lease_pass().expired, 1);
    assert!(step("lease expiry", &mut prev).instances.is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_observer_hears_local_writes_and_every_change() {
    let obs = Arc::new(Recorder::default());
    let s = Store::new(1, Clock::starting_at(T0), obs.clone());
    let (a, c) = (k("10.0.0.1"), k("10.0.0.3"));
    let v = |key: &InstanceKey| s.get(key).unwrap().version;
    let local = |key: &InstanceKey, alive: bool, lapsed: bool| {
        Event::Local(
            key.ip.to_string(),
            s.get(key).unwrap().version,
            alive,
            lapsed,
        )
    };

    s.register(&inst(&a), 7);
    assert_eq!(obs.take(), [local(&a, true, false), changed("orders")]);
    s.register(&inst(&a), 7);
    assert_eq!(obs.take(), [], "identical re-register");
    assert_eq!(s.beat(&a), BeatOutcome::Renewed);
    assert_eq!(obs.take(), [], "renewal");
    assert!(s.lapse_session(&a, 7));
    assert_eq!(obs.take(), [local(&a, true, true), changed("orders")]);
    assert_eq!(s.beat(&a), BeatOutcome::Recovered);
    assert_eq!(obs.take(), [local(&a, true, false), changed("orders")]);

    assert!(s.merge(&sync(&c, hlc_at(T0), 2, true)));
    assert_eq!(obs.take(), [changed("orders")], "a merge is no local write");
    assert!(!s.merge(&sync(&c, hlc_at(T0), 2, true)));
    assert_eq!(obs.take(), [], "stale merge");
    assert!(s.merge(&sync(&c, hlc_at(T0) + 1, 2, false)));
    assert_eq!(obs.take(), [changed("orders")], "a merged tombstone");

    let before = v(&a);
    assert!(s.deregister(&a));
    assert!(v(&a) > before);
    assert_eq!(obs.take(), [local(&a, false, false), changed("orders")]);
    assert!(!s.deregister(&a));
    assert_eq!(obs.take(), []);

    let d = k("10.0.0.4");
    s.register(&inst(&d), 0);
    obs.take();
    advance(15_001).await;
    s.lease_pass();
    assert_eq!(obs.take(), [local(&d, true, true), changed("orders")]);
    advance(15_000).await;
    s.lease_pass();
    assert_eq!(obs.take(), [local(&d, false, true), changed("orders")]);

    let e = k("10.0.0.5");
    assert!(s.merge(&sync(&e, hlc_at(T0), 2, true)));
    obs.take();
    let buckets: BucketSet = [bucket_of(kh(&e))].into_iter().collect();
    assert_eq!(
        s.drop_missing(1, &buckets, &HashSet::default(), u64::MAX),
        1
    );
    assert_eq!(
        obs.take(),
        [changed("orders")],
        "a pull's removal is no local write"
    );
    check(&s);
}

#[test]
fn check_invariants_reports_corruption_by_key() {
    let s = new_store(1);
    let a = k("10.0.0.1");
    s.register(&inst(&a), 0);
    s.register(&inst(&k("10.0.0.2")), 0);
    check(&s);
    let home = s.shard_index(&orders());
    {
        let mut shard = s.shards[home].write().unwrap();
        let svc = shard.services.get_mut(&orders()).unwrap();
        let r = svc.get_mut(&a).unwrap();
        r.owner = 9;
        r.key_hash ^= 1;
    }
    let e = s.check_invariants().unwrap_err();
    assert!(
        e.contains("public/DEFAULT_GROUP/orders DEFAULT 10.0.0.1:8080: cached owner 9"),
        "{e}"
    );
    assert!(e.contains("10.0.0.1:8080: cached key_hash"), "{e}");
    assert!(!e.contains("10.0.0.2"), "{e}");

    let s = new_store(1);
    s.register(&inst(&a), 0);
    let _ = s.query(&orders(), "", false);
    {
        let mut shard = s.shards[home].write().unwrap();
        let svc = shard.services.get_mut(&orders()).unwrap();
        svc.get_mut(&a).unwrap().weight = 5.0; // behind the cache's back
    }
    let e = s.check_invariants().unwrap_err();
    assert!(e.contains("cached snapshot is stale"), "{e}");
    assert!(e.contains("weight: 5.0"), "{e}");
    assert!(
        !e.contains("digest holds"),
        "a digest term covers key and version only: {e}"
    );

    let s = new_store(1);
    s.register(&inst(&a), 0);
    s.live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let e = s.check_invariants().unwrap_err();
    assert!(e.contains("live counter is 2 but 1 live records"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Concurrency

/// Writers (register, merge, lease passes with leases that lapse at once) race view changes;
/// between view changes the invariants must hold, in particular every record's cached owner
/// must be its owner under the view then installed.
#[test]
fn writes_racing_view_changes_keep_owners_and_digests_right() {
    let s = Arc::new(Store::new(1, Clock::system(), Arc::new(NoObserver)));
    let stop = Arc::new(AtomicBool::new(false));
    let lease = Lease {
        beat_ms: 1,
        unhealthy_ms: 0,
        expire_ms: 1_000_000,
    };
    let home = s.shard_index(&orders());
    let mut threads = Vec::new();
    for t in 0..3u16 {
        let (s, stop) = (s.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = k(&format!("10.3.{t}.{}", i % 200));
                match t {
                    0 => {
                        let mut x = inst(&key);
                        x.lease = lease;
                        x.weight = (i % 3) as f64;
                        s.register(&x, 0);
                    }
                    1 => {
                        let mut r = sync(&key, s.hlc().last() + 1, 3, true);
                        r.weight = (i % 3) as f64;
                        s.merge(&r);
                    }
                    _ => {
                        // Lapse everything this node owns, recover it, and again.
                        let mut x = inst(&key);
                        x.lease = lease;
                        s.register(&x, 0);
                        s.lease_pass_shard(home);
                    }
                }
                i += 1;
            }
        }));
    }
    let views = [vec![1], vec![1, 2], vec![1, 2, 3], vec![1, 3]];
    let mut failure = None;
    for round in 0..300 {
        s.set_ownership(Ownership::new(views[round % views.len()].clone()));
        if let Err(e) = s.check_invariants() {
            failure = Some(format!("after view change {round}: {e}"));
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    if let Some(f) = failure {
        panic!("{f}");
    }
    check(&s);
}

// ---------------------------------------------------------------------------------------------
// Properties

/// Keys the property tests draw from: 3 services × 2 clusters × 8 ips, so that operations often
/// hit the same key, service and shard.
const PKEYS: usize = 48;

fn prop_key(i: usize) -> InstanceKey {
    let names = [
        orders(),
        ServiceName::new("public", "g2", "pay"),
        ServiceName::new("dev", "DEFAULT_GROUP", "orders"),
    ];
    key_in(
        &names[i % 3],
        ["A", "B"][(i / 3) % 2],
        &format!("10.4.0.{}", i / 6),
        8080,
    )
}

/// A lease short enough that records lapse and expire within a test sequence.
const SHORT_LEASE: Lease = Lease {
    beat_ms: 100,
    unhealthy_ms: 300,
    expire_ms: 600,
};

#[derive(Debug, Clone)]
enum Op {
    Register {
        key: usize,
        weight: u8,
        healthy: bool,
        enabled: bool,
        meta: u8,
        session: u8,
        short: bool,
    },
    Deregister {
        key: usize,
    },
    Beat {
        key: usize,
    },
    LapseSession {
        key: usize,
        session: u8,
    },
    /// A remote version around now (`ms` - 5 s .. + 5 s), from origin 1..=3.
    Merge {
        key: usize,
        ms: u32,
        logical: u8,
        origin: u16,
        alive: bool,
        lapsed: bool,
        weight: u8,
        short: bool,
    },
    /// Merges back the copy of a held record that a peer would send (pull, handoff): a no-op.
    Echo {
        key: usize,
    },
    Advance {
        ms: u32,
    },
    LeasePass,
    Regrant,
    SetOwnership {
        with2: bool,
        with3: bool,
    },
    DropMissing {
        owner: u16,
        buckets_of: Vec<usize>,
        present: Vec<usize>,
        back_ms: u32,
    },
    Query {
        key: usize,
        cluster: bool,
        healthy_only: bool,
    },
    /// What a subscriber of the service of key `service` that holds the list `back` revisions
    /// ago (none at all for 255) is pushed next; applied to what it held, it must give the
    /// current list (checked in `run_ops`, which keeps the lists of past revisions).
    Push {
        service: usize,
        back: u8,
    },
    /// The service's last subscriber went.
    Unwatch {
        service: usize,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let key = 0..PKEYS;
    prop_oneof![
        6 => (key.clone(), 0..3u8, any::<bool>(), any::<bool>(), 0..3u8, 0..3u8, any::<bool>())
            .prop_map(|(key, weight, healthy, enabled, meta, session, short)| Op::Register {
                key, weight, healthy, enabled, meta, session, short,
            }),
        2 => key.clone().prop_map(|key| Op::Deregister { key }),
        3 => key.clone().prop_map(|key| Op::Beat { key }),
        1 => (key.clone(), 0..3u8).prop_map(|(key, session)| Op::LapseSession { key, session }),
        5 => (key.clone(), 0..10_000u32, 0..3u8, 1..=3u16, any::<bool>(), any::<bool>(), 0..3u8,
              any::<bool>())
            .prop_map(|(key, ms, logical, origin, alive, lapsed, weight, short)| Op::Merge {
                key, ms, logical, origin, alive, lapsed, weight, short,
            }),
        1 => key.clone().prop_map(|key| Op::Echo { key }),
        3 => prop_oneof![4 => 0..1_500u32, 1 => 55_000..100_000u32]
            .prop_map(|ms| Op::Advance { ms }),
        3 => Just(Op::LeasePass),
        1 => Just(Op::Regrant),
        1 => (any::<bool>(), any::<bool>())
            .prop_map(|(with2, with3)| Op::SetOwnership { with2, with3 }),
        1 => (1..=3u16, prop::collection::vec(key.clone(), 0..8),
              prop::collection::vec(key.clone(), 0..8), 0..3_000u32)
            .prop_map(|(owner, buckets_of, present, back_ms)| Op::DropMissing {
                owner, buckets_of, present, back_ms,
            }),
        2 => (key.clone(), any::<bool>(), any::<bool>())
            .prop_map(|(key, cluster, healthy_only)| Op::Query { key, cluster, healthy_only }),
        4 => (0..3usize, prop_oneof![4 => 0..4u8, 1 => 4..40u8, 1 => Just(255u8)])
            .prop_map(|(service, back)| Op::Push { service, back }),
        1 => (0..3usize).prop_map(|service| Op::Unwatch { service }),
    ]
}

/// Applies `op` and checks what it promises about the keys it touched.
fn apply(s: &Store, op: &Op) -> Result<(), TestCaseError> {
    let now = s.clock().now_ms();
    match op {
        Op::Register {
            key,
            weight,
            healthy,
            enabled,
            meta,
            session,
            short,
        } => {
            let k = prop_key(*key);
            let mut i = inst(&k);
            i.weight = *weight as f64;
            i.healthy = *healthy;
            i.enabled = *enabled;
            i.metadata = (0..*meta)
                .map(|m| (Text::from(format!("k{m}")), Text::from("v")))
                .collect();
            if *short {
                i.lease = SHORT_LEASE;
            }
            let before = s.get(&k);
            s.register(&i, *session as u64);
            let r = s.get(&k).unwrap();
            prop_assert!(r.alive && !r.lapsed);
            prop_assert_eq!(r.weight, i.weight);
            prop_assert_eq!(r.touched_ms, now);
            prop_assert_eq!(r.session, *session as u64);
            prop_assert_eq!(r.owner, s.ownership().owner(&k.ip, k.port));
            if let Some(b) = before {
                prop_assert!(r.version >= b.version);
            }
        }
        Op::Deregister { key } => {
            let k = prop_key(*key);
            let before = s.get(&k);
            let was_alive = before.as_ref().is_some_and(|b| b.alive);
            prop_assert_eq!(s.deregister(&k), was_alive);
            if let Some(b) = before {
                let r = s.get(&k).unwrap();
                prop_assert!(!r.alive);
                if was_alive {
                    prop_assert!(r.version > b.version);
                    prop_assert_eq!(r.touched_ms, now);
                }
            }
        }
        Op::Beat { key } => {
            let k = prop_key(*key);
            let before = s.get(&k);
            let outcome = s.beat(&k);
            match &before {
                Some(b) if b.alive => {
                    let r = s.get(&k).unwrap();
                    prop_assert_eq!(r.touched_ms, now);
                    prop_assert!(!r.lapsed);
                    if b.lapsed {
                        prop_assert_eq!(outcome, BeatOutcome::Recovered);
                        prop_assert!(r.version > b.version);
                    } else {
                        prop_assert_eq!(outcome, BeatOutcome::Renewed);
                        prop_assert_eq!(r.version, b.version);
                    }
                }
                _ => prop_assert_eq!(outcome, BeatOutcome::Unknown),
            }
        }
        Op::LapseSession { key, session } => {
            let k = prop_key(*key);
            let before = s.get(&k);
            let expect = before.as_ref().is_some_and(|b| {
                b.alive && !b.lapsed && *session != 0 && b.session == *session as u64
            });
            prop_assert_eq!(s.lapse_session(&k, *session as u64), expect);
            if expect {
                prop_assert!(s.get(&k).unwrap().lapsed);
            }
        }
        Op::Merge {
            key,
            ms,
            logical,
            origin,
            alive,
            lapsed,
            weight,
            short,
        } => {
            let k = prop_key(*key);
            let hlc = hlc_at((now + *ms as u64).saturating_sub(5_000)) | *logical as u64;
            let mut r = sync(&k, hlc, *origin, *alive);
            r.lapsed = *lapsed;
            r.weight = *weight as f64;
            if *short {
                r.lease = SHORT_LEASE;
            }
            let before = s.get(&k);
            let newer = before.as_ref().is_none_or(|b| b.version < r.version);
            // The owner keeps an instance its client is beating against a lapse or expiry
            // made elsewhere, re-stamping it newer than the lapse (Store::merge).
            // A node forwarding the client's beats refuses it too, without re-stamping.
            let veto = newer
                && *lapsed
                && before.as_ref().is_some_and(|b| {
                    b.alive
                        && b.renewed
                        && now.saturating_sub(b.touched_ms) < b.lease.unhealthy_ms as u64
                });
            let owned = before.as_ref().is_some_and(|b| b.owner == s.node());
            prop_assert_eq!(s.merge(&r), newer && !veto);
            let got = s.get(&k).unwrap();
            if veto && owned {
                prop_assert!(got.alive);
                prop_assert!(got.version > r.version);
                prop_assert_eq!(got.version.origin, s.node());
            } else if veto {
                prop_assert!(got.alive);
                prop_assert_eq!(got.version, before.as_ref().unwrap().version);
            } else if newer {
                prop_assert_eq!(got.version, r.version);
                prop_assert_eq!(got.alive, *alive);
                prop_assert_eq!(got.touched_ms, now);
            } else {
                prop_assert_eq!(got.version, before.unwrap().version);
            }
            prop_assert!(s.hlc().last() >= hlc);
        }
        Op::Echo { key } => {
            let k = prop_key(*key);
            if let Some(held) = s.get(&k) {
                let buckets: BucketSet = [bucket_of(held.key_hash)].into_iter().collect();
                let copy = decode_batch(&s.records_in_buckets(held.owner, &buckets))
                    .into_iter()
                    .find(|r| r.key == k)
                    .expect("a held record is in its owner's bucket");
                prop_assert_eq!(copy.version, held.version);
                prop_assert!(!s.merge(&copy), "an equal version is ignored");
                prop_assert_eq!(content(&s.get(&k).unwrap()), content(&held));
            }
        }
        // The time moved in `run_ops` (it needs the async context).
        Op::Advance { .. } => {}
        Op::LeasePass => {
            s.lease_pass();
            let node = s.node();
            let mut bad = None;
            s.for_each_record(|n, id, r| {
                let idle = now.saturating_sub(r.touched_ms);
                let overdue = r.alive
                    && r.owner == node
                    && (idle > r.lease.expire_ms as u64
                        || (idle > r.lease.unhealthy_ms as u64 && !r.lapsed));
                let stale_tomb = !r.alive && idle > r.lease.expire_ms as u64 + TOMBSTONE_GRACE_MS;
                if overdue || stale_tomb {
                    bad = Some(format!("{n} {id:?} {r:?}"));
                }
            });
            prop_assert!(bad.is_none(), "the lease pass left {:?}", bad);
        }
        Op::Regrant => {
            let node = s.node();
            let owned = versions_where(s, |r| r.alive && r.owner == node);
            prop_assert_eq!(s.regrant_owned(), owned.len());
            let mut ok = true;
            s.for_each_record(|_, _, r| {
                if r.alive && r.owner == node && r.touched_ms != now {
                    ok = false;
                }
            });
            prop_assert!(ok);
        }
        Op::SetOwnership { with2, with3 } => {
            let mut live = vec![1];
            if *with2 {
                live.push(2);
            }
            if *with3 {
                live.push(3);
            }
            let view = Ownership::new(live);
            let mut gained = 0;
            let mut lost: BTreeMap<NodeId, BTreeSet<KeyTuple>> = BTreeMap::new();
            s.for_each_record(|n, id, r| {
                let new = view.owner(id.ip, id.port);
                if new != r.owner && new == 1 && r.alive {
                    gained += 1;
                }
                if new != r.owner && r.owner == 1 {
                    lost.entry(new).or_default().insert(key_tuple(n, id));
                }
            });
            let ch = s.set_ownership(view);
            prop_assert_eq!(ch.gained, gained);
            let got: BTreeMap<NodeId, BTreeSet<KeyTuple>> = ch
                .lost
                .iter()
                .map(|(n, b)| (*n, decode_batch(b).iter().map(sync_key_tuple).collect()))
                .collect();
            prop_assert_eq!(got, lost);
        }
        Op::DropMissing {
            owner,
            buckets_of,
            present,
            back_ms,
        } => {
            let buckets: BucketSet = buckets_of
                .iter()
                .map(|i| bucket_of(kh(&prop_key(*i))))
                .collect();
            let present: HashSet<u64> = present.iter().map(|i| kh(&prop_key(*i))).collect();
            let cutoff = now.saturating_sub(*back_ms as u64);
            let doomed = versions_where(s, |r| {
                r.alive
                    && r.owner == *owner
                    && buckets.contains(bucket_of(r.key_hash))
                    && !present.contains(&r.key_hash)
                    && r.touched_ms < cutoff
            });
            let len = s.len();
            prop_assert_eq!(
                s.drop_missing(*owner, &buckets, &present, cutoff),
                doomed.len()
            );
            prop_assert_eq!(s.len(), len - doomed.len());
            let after = versions(s);
            for key in doomed {
                prop_assert!(!after.contains_key(&key), "{:?} kept", key);
            }
        }
        // Checked in `run_ops`, which knows the past lists.
        Op::Push { .. } => {}
        Op::Unwatch { service } => s.unwatch(&prop_key(*service).service),
        Op::Query {
            key,
            cluster,
            healthy_only,
        } => {
            let k = prop_key(*key);
            let c = if *cluster { &*k.cluster } else { "" };
            let snap = query(s, &k.service, c, *healthy_only);
            let mut want = BTreeSet::new();
            s.for_each_record(|n, id, r| {
                if *n == k.service
                    && r.alive
                    && (c.is_empty() || *id.cluster == *c)
                    && (!*healthy_only || (r.reported_healthy() && r.enabled))
                {
                    want.insert(format!("{} {}:{}", id.cluster, id.ip, id.port));
                }
            });
            let got: BTreeSet<String> = listed(&snap).into_iter().collect();
            prop_assert_eq!(got, want);
        }
    }
    Ok(())
}

/// The keys of the records matching `f`.
fn versions_where(s: &Store, f: impl Fn(&Record) -> bool) -> Vec<KeyTuple> {
    let mut keys = Vec::new();
    s.for_each_record(|n, id, r| {
        if f(r) {
            keys.push(key_tuple(n, id));
        }
    });
    keys
}

/// A subscriber that held `held` (or nothing) is pushed what `push_since` answers: applied to
/// what it held, that must be exactly the current list, at the current revision.
fn check_push(
    s: &Store,
    name: &ServiceName,
    held: Option<&ServiceSnapshot>,
) -> Result<(), TestCaseError> {
    let now = query_all(s, name);
    let got = match s.push_since(name, held.map(|h| h.revision)) {
        PushBody::Unchanged => {
            let held = held.ok_or_else(|| TestCaseError::fail("Unchanged for a new subscriber"))?;
            prop_assert_eq!(
                held.revision,
                now.revision,
                "Unchanged, but the revision moved"
            );
            held.clone()
        }
        PushBody::Full { body, revision } => {
            let snap = decode_snapshot(body);
            prop_assert_eq!(snap.revision, revision);
            snap
        }
        PushBody::Delta { body, revision } => {
            let held = held.ok_or_else(|| TestCaseError::fail("a delta for a new subscriber"))?;
            let delta = ServiceDelta::decode_body(body).expect("a delta body decodes");
            prop_assert_eq!(delta.revision, revision);
            prop_assert!(
                delta.removed.len() + delta.updated.len() < now.instances.len().max(1) + 40,
                "a delta of {} entries",
                delta.removed.len() + delta.updated.len()
            );
            held.apply(&delta)
                .map_err(|e| TestCaseError::fail(format!("the delta does not apply: {e}")))?
        }
    };
    prop_assert_eq!(got, now);
    Ok(())
}

async fn run_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let s = new_store(1);
    let mut last: BTreeMap<KeyTuple, Version> = BTreeMap::new();
    // Per service: its lists at the revisions seen so far, oldest first.
    let mut history: Vec<Vec<ServiceSnapshot>> = vec![Vec::new(); 3];
    for (step, op) in ops.iter().enumerate() {
        if let Op::Advance { ms } = op {
            advance(*ms as u64).await;
        }
        apply(&s, op).map_err(|e| TestCaseError::fail(format!("step {step}, {op:?}: {e}")))?;
        for (i, h) in history.iter_mut().enumerate() {
            let now = query_all(&s, &prop_key(i).service);
            if h.last().is_none_or(|l| l.revision != now.revision) {
                h.push(now);
            }
        }
        if let Op::Push { service, back } = op {
            let h = &history[*service];
            let held = (*back != 255).then(|| &h[h.len().saturating_sub(1 + *back as usize)]);
            check_push(&s, &prop_key(*service).service, held)
                .map_err(|e| TestCaseError::fail(format!("step {step}, {op:?}: {e}")))?;
        }
        if let Err(e) = s.check_invariants() {
            return Err(TestCaseError::fail(format!(
                "after step {step}, {op:?}: {e}"
            )));
        }
        // A key's version never goes back while the key stays.
        let now = versions(&s);
        for (key, (v, _)) in &now {
            if let Some(prev) = last.get(key) {
                prop_assert!(v >= prev, "step {}, {:?}: {:?} went back", step, op, key);
            }
        }
        last = now.into_iter().map(|(k, (v, _))| (k, v)).collect();
    }
    Ok(())
}

/// A record whose every field is a function of (key, version), as with real writers (a version
/// is never reused for other data).
fn conv_record(key: usize, ms: u64, logical: u64, origin: u16) -> SyncRecord {
    let hlc = hlc_at(T0 + ms) | logical;
    let mut seed = [0u8; 18];
    seed[..8].copy_from_slice(&(key as u64).to_be_bytes());
    seed[8..16].copy_from_slice(&hlc.to_be_bytes());
    seed[16..].copy_from_slice(&origin.to_be_bytes());
    let h = xxhash_rust::xxh3::xxh3_64(&seed);
    let mut r = sync(&prop_key(key), hlc, origin, h % 4 != 0);
    r.healthy = h & 16 != 0;
    r.enabled = h & 32 != 0;
    r.lapsed = h & 64 != 0;
    r.weight = ((h >> 8) % 5) as f64;
    r.session = h >> 48;
    if h & 128 != 0 {
        r.metadata = vec![("m".into(), format!("{}", h % 7).into())];
    }
    r
}

type Content = (
    Version,
    bool,
    bool,
    bool,
    bool,
    u64,
    Lease,
    u64,
    Vec<(String, String)>,
);

fn content(r: &Record) -> Content {
    (
        r.version,
        r.alive,
        r.healthy,
        r.enabled,
        r.lapsed,
        r.weight.to_bits(),
        r.lease,
        r.session,
        r.meta()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn contents(s: &Store) -> BTreeMap<KeyTuple, Content> {
    let mut m = BTreeMap::new();
    s.for_each_record(|n, id, r| {
        m.insert(key_tuple(n, id), content(r));
    });
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_after_every_operation(
        ops in prop::collection::vec(op_strategy(), 1..100)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(run_ops(ops))?;
    }

    #[test]
    fn merging_the_same_records_in_any_order_converges(
        (recs, shuffled) in prop::collection::vec(
            (0..PKEYS, 0..20u64, 0..3u64, 1..=3u16)
                .prop_map(|(k, ms, l, o)| conv_record(k, ms, l, o)),
            1..80,
        )
        .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
        with2 in any::<bool>(),
        with3 in any::<bool>(),
    ) {
        let mut live = vec![1];
        if with2 { live.push(2); }
        if with3 { live.push(3); }
        let view = Ownership::new(live);
        let (a, b) = (new_store(1), new_store(2));
        a.set_ownership(view.clone()); // a's view is in place before the merges, b's after
        for r in &recs {
            a.merge(r);
        }
        for r in &shuffled {
            b.merge(r);
        }
        b.set_ownership(view.clone());
        prop_assert_eq!(contents(&a), contents(&b));

        // Each key holds its newest version.
        let mut newest: BTreeMap<KeyTuple, Version> = BTreeMap::new();
        for r in &recs {
            let v = newest.entry(sync_key_tuple(r)).or_default();
            *v = (*v).max(r.version);
        }
        let held: BTreeMap<KeyTuple, Version> =
            versions(&a).into_iter().map(|(k, (v, _))| (k, v)).collect();
        prop_assert_eq!(held, newest);

        for owner in 1..=3 {
            let d = digest_diff(&a.digest(owner), &b.digest(owner));
            prop_assert!(d.is_empty(), "owner {}: digests differ in {:?}", owner, d);
        }
        prop_assert_eq!(a.len(), b.len());
        for i in 0..3 {
            let name = prop_key(i).service;
            prop_assert_eq!(query_all(&a, &name).instances, query_all(&b, &name).instances);
        }
        if let Err(e) = a.check_invariants() { prop_assert!(false, "a: {}", e); }
        if let Err(e) = b.check_invariants() { prop_assert!(false, "b: {}", e); }
    }
}

#[tokio::test(start_paused = true)]
async fn a_record_from_far_in_the_future_is_refused_and_does_not_drag_the_clock() {
    let s = Store::new(1, Clock::starting_at(T0), Arc::new(NoObserver));
    let a = k("10.0.0.1");
    for hlc in [u64::MAX, hlc_at(T0 + VERSION_FUTURE_MAX_MS + 1_000)] {
        assert!(
            !s.merge(&sync(&a, hlc, 2, true)),
            "hlc {hlc:#x} must be refused"
        );
        assert!(s.get(&a).is_none());
    }
    // Within the bound a peer ahead of us is accepted, and our next write still wins.
    let ahead = hlc_at(T0 + 60_000);
    assert!(s.merge(&sync(&a, ahead, 2, true)));
    let mut changed = inst(&a);
    changed.weight = 2.0;
    s.register(&changed, 0);
    assert!(s.get(&a).unwrap().version.hlc > ahead);
    check(&s);
}

/// A key `10.9.<net>.x:8080` of `orders` that node `owner` owns under `view`.
fn key_owned_by(view: &Ownership, net: u8, owner: NodeId) -> InstanceKey {
    (0..=255)
        .map(|i| k(&format!("10.9.{net}.{i}")))
        .find(|key| view.owner(&key.ip, key.port) == owner)
        .unwrap_or_else(|| panic!("no key of 10.9.{net}.x is node {owner}'s"))
}

/// An expiry of `key` made by node 3 (a tombstone with the lapsed bit).
fn expiry_by_3(key: &InstanceKey, hlc: u64) -> SyncRecord {
    let mut t = sync(key, hlc, 3, false);
    t.lapsed = true;
    t
}

#[tokio::test(start_paused = true)]
async fn a_node_forwarding_the_clients_beats_refuses_an_expiry_made_elsewhere() {
    let s = new_store(1);
    s.set_ownership(Ownership::new(vec![1, 2]));
    let view = s.ownership();
    let a = key_owned_by(&view, 0, 2);
    let expiry = |hlc| expiry_by_3(&a, hlc);
    // No evidence that the client lives: an expiry from elsewhere applies.
    assert!(s.merge(&sync(&a, hlc_at(T0), 2, true)));
    assert!(s.merge(&expiry(hlc_at(T0 + 1))));
    assert!(!s.get(&a).unwrap().alive);
    // The client beats through this node (forwarded to its owner): the same expiry is refused
    // and the instance stays readable here until the owner's re-stamp arrives.
    assert!(s.merge(&sync(&a, hlc_at(T0 + 2), 2, true)));
    s.note_client_beat(&a);
    assert!(!s.merge(&expiry(hlc_at(T0 + 3))));
    let r = s.get(&a).unwrap();
    assert!(r.alive);
    assert_eq!(
        { r.version.hlc },
        hlc_at(T0 + 2),
        "a non-owner does not re-stamp"
    );
    // A deregistration (a tombstone without the lapsed bit) is never refused.
    assert!(s.merge(&sync(&a, hlc_at(T0 + 4), 3, false)));
    assert!(!s.get(&a).unwrap().alive);
    check(&s);
}

/// The evidence a client's beats through this node give is about the client, not about one
/// version: a re-stamp from the owner, or losing the ownership, does not make the client any
/// less alive, so an expiry made elsewhere is still refused afterwards (sim seeds 47, 88: the
/// owner's re-stamp arrived first and reset it, and a clock-ahead expiry then won here).
#[tokio::test(start_paused = true)]
async fn client_beat_evidence_outlives_versions_and_handoff_but_not_the_session() {
    let s = new_store(1);
    s.set_ownership(Ownership::new(vec![1, 2]));
    let view = s.ownership();
    let a = key_owned_by(&view, 1, 2);
    let expiry = |hlc| expiry_by_3(&a, hlc);
    let session = (1 << 48) | 7;
    let mut live = sync(&a, hlc_at(T0), 2, true);
    live.session = session;
    assert!(s.merge(&live));
    s.note_client_beat(&a);
    // The owner re-stamps (a newer version of the same instance): the evidence stays.
    live.version.hlc = hlc_at(T0 + 1);
    assert!(s.merge(&live));
    assert!(
        !s.merge(&expiry(hlc_at(T0 + 2))),
        "refused after a re-stamp"
    );
    // The lapse (unhealthy mark) a node that cannot see the client makes before its expiry is
    // refused alike (sim seed 110: it was applied, ended the evidence, and the expiry that
    // followed won).
    let mut lapse = live.clone();
    lapse.version = Version {
        hlc: hlc_at(T0 + 2) + 1,
        origin: 3,
    };
    lapse.lapsed = true;
    assert!(!s.merge(&lapse), "a lapse made elsewhere is refused");
    assert!(s.get(&a).unwrap().reported_healthy());
    // This node comes to own the key and hands it back: still refused (and, while it owned
    // and was beaten, it would have re-stamped).
    s.set_ownership(Ownership::new(vec![1]));
    s.note_client_beat(&a);
    s.set_ownership(Ownership::new(vec![1, 2]));
    assert!(!s.merge(&expiry(hlc_at(T0 + 3))), "refused after a handoff");
    assert!(s.get(&a).unwrap().alive);
    // The evidence lasts one unhealthy-after past the last beat, no longer.
    advance(Lease::default().unhealthy_ms as u64).await;
    assert!(
        s.merge(&expiry(hlc_at(T0 + 4))),
        "stale evidence refuses nothing"
    );
    assert!(!s.get(&a).unwrap().alive);

    // A client that beat here a moment ago and whose session then ended is no evidence.
    let mut again = sync(&a, hlc_at(T0 + 5), 2, true);
    again.session = session;
    assert!(s.merge(&again));
    s.note_client_beat(&a);
    s.note_session_gone(&a, session);
    assert!(
        s.merge(&expiry(hlc_at(T0 + 6))),
        "the session ended: the expiry applies"
    );
    assert!(!s.get(&a).unwrap().alive);
    check(&s);
}

/// A client that registers again through this node (a redo after reconnecting) before the
/// owner's live record has reached it: the evidence is kept aside and given to that record
/// when it arrives, so an expiry made elsewhere that follows is refused (sim seed 2026).
#[tokio::test(start_paused = true)]
async fn client_evidence_noted_before_the_record_arrives_is_kept_for_it() {
    let s = new_store(1);
    s.set_ownership(Ownership::new(vec![1, 2]));
    let view = s.ownership();
    let a = key_owned_by(&view, 2, 2);
    let expiry = |hlc| expiry_by_3(&a, hlc);
    s.note_client_beat(&a);
    assert!(s.get(&a).is_none(), "noting evidence writes no record");
    assert!(s.merge(&sync(&a, hlc_at(T0), 2, true)));
    assert!(
        !s.merge(&expiry(hlc_at(T0 + 1))),
        "refused: the client registered here"
    );
    assert!(s.get(&a).unwrap().alive);
    check(&s);

    // Evidence that is older than unhealthy-after when the record arrives is none.
    let b = key_owned_by(&view, 3, 2);
    s.note_client_beat(&b);
    advance(Lease::default().unhealthy_ms as u64).await;
    assert!(s.merge(&sync(&b, hlc_at(T0), 2, true)));
    assert!(
        s.merge(&expiry_by_3(&b, hlc_at(T0 + 1))),
        "stale early evidence refuses nothing"
    );
    check(&s);
}

/// A Beat frame's keys renewed at once: the same outcome as beating them one by one, in any
/// order of services and shards, with the unknown ones (never registered, deleted) answered
/// by index and a lapsed one recovered with a new version.
#[tokio::test(start_paused = true)]
async fn beat_batch_renews_like_single_beats() {
    let s = new_store(1);
    let keys: Vec<InstanceKey> = (0..40)
        .map(|i| {
            let name = ServiceName::new("public", "DEFAULT_GROUP", &format!("svc{}", i % 7));
            key_in(&name, "DEFAULT", &format!("10.1.0.{i}"), 80)
        })
        .collect();
    for k in keys.iter().filter(|k| !k.ip.ends_with('3')) {
        s.register(&inst(k), 0);
    }
    s.deregister(&keys[4]);
    // Let one lapse: past unhealthy-after, before expire-after.
    advance(Lease::default().unhealthy_ms as u64 + 1).await;
    s.lease_pass();
    for (i, k) in keys.iter().enumerate() {
        if i != 5 && !k.ip.ends_with('3') && i != 4 {
            s.beat(k);
        }
    }
    let lapsed_before = s.get(&keys[5]).unwrap();
    assert!(lapsed_before.lapsed, "set up: keys[5] lapsed");
    let unknown = s.beat_batch(&keys);
    let want: Vec<u16> = (0..40u16)
        .filter(|&i| i == 4 || keys[i as usize].ip.ends_with('3'))
        .collect();
    assert_eq!(unknown, want);
    let recovered = s.get(&keys[5]).unwrap();
    assert!(!recovered.lapsed && recovered.version > lapsed_before.version);
    advance(Lease::default().unhealthy_ms as u64 - 1).await;
    assert_eq!(s.lease_pass().lapsed, 0, "every known key was renewed");
    check(&s);
}

/// Evidence noted while forwarding a client's register keeps an expiry made elsewhere out, but
/// does not make the node re-stamp the instance when it hands it off: a re-stamp is newer than
/// anything written meanwhile and would undo a deregistration made on the other side of a
/// partition (the network-namespace test caught exactly that).
#[tokio::test(start_paused = true)]
async fn a_handoff_re_stamps_only_what_this_node_renewed_as_owner() {
    let s = new_store(1);
    s.set_ownership(Ownership::new(vec![1]));
    let both = Ownership::new(vec![1, 2]);
    let theirs: Vec<InstanceKey> = (0..200)
        .map(|i| k(&format!("10.9.4.{i}")))
        .filter(|key| both.owner(&key.ip, key.port) == 2)
        .take(2)
        .collect();
    let (a, b) = (&theirs[0], &theirs[1]);
    // `a`: registered through this node (forwarded) and merged; `b`: beaten here as its owner.
    s.note_client_beat(a);
    assert!(s.merge(&sync(a, hlc_at(T0), 2, true)));
    s.register(&inst(b), 0);
    let (va, vb) = (s.get(a).unwrap().version, s.get(b).unwrap().version);
    s.set_ownership(both);
    assert_eq!(
        s.get(a).unwrap().version,
        va,
        "no re-stamp from forwarding evidence"
    );
    assert!(
        s.get(b).unwrap().version > vb,
        "re-stamped: renewed here as its owner"
    );
    // A deregistration the new owner made meanwhile wins.
    assert!(s.merge(&sync(a, hlc_at(T0 + 1), 2, false)));
    assert!(!s.get(a).unwrap().alive);
    check(&s);
}
