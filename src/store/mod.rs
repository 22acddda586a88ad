//! The in-memory registry: every instance this node knows, alive or tombstoned, with versions,
//! leases, per-service snapshots, and the per-owner bucket digests the cluster compares.
//!
//! Layout: `SHARDS` lock-striped shards. The shard of an instance is chosen by xxh3 of its
//! *service* part of the key (namespace, group, service), so that all instances of a service
//! live in one shard and a Query takes exactly one read lock and costs O(instances of that
//! service). Writers to different services rarely contend. Inside a shard, services map to
//! their instances (a dense vector per service, see [`instances`]); each service caches its
//! encoded snapshot body, built on the first read after a change and shared by every Query and
//! full Push until the next change. A service that has subscribers also keeps a short log of
//! which instances changed at which revision ([`changes`]), from which a subscriber is pushed
//! only what changed since the revision it holds ([`Store::push_since`]): one change costs the
//! same whatever the size of its service, from the write to the push.
//!
//! Every change goes through one place (`Shard::put`), which keeps the digests, the service
//! revision, the change log and the snapshot cache right and tells the [`StoreObserver`].
//!
//! - [`record`]: the stored record, compact instance ids (cluster index, IPv4 inline), the
//!   canonical key hash.
//! - [`changes`]: the bounded change log of a watched service.
//! - [`instances`]: one service's records, with no hash-table slack for small services.
//! - [`name`]: a service's name as a map key, its three parts in one allocation.
//! - [`chunks`]: records encoded a chunk at a time, for pull and snapshot answers.
//! - [`digest`]: order-independent bucket digests.
//! - [`invariants`]: `Store::check_invariants`, a from-scratch recheck for tests and fuzzing.

mod changes;
pub mod chunks;
pub mod digest;
mod instances;
pub mod invariants;
mod name;
pub mod record;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use crate::hash::HashMap;
use bytes::{BufMut, Bytes, BytesMut};
use changes::ChangeLog;
use crossbeam_utils::CachePadded;
use instances::Instances;
use name::StoredName;

use crate::clock::{Clock, Hlc};
use crate::model::NodeId;
use crate::model::key_hash;
use crate::model::{
    Instance, InstanceKey, NamespaceSummary, ServiceDelta, ServiceList, ServiceName,
    ServiceSnapshot, ServiceSummary, Text, Version,
};
use crate::ownership::Ownership;
use crate::wire::{
    SyncRecord, encode_instance_view, encode_key_parts, encode_record_tail, encode_view_key,
    record_status_bits,
};
pub use digest::{Bucket, Digest};
use record::{IdRef, IpRef, IpText};
pub use record::{InstanceId, InstanceIdRef, Record, StoredMetadata};

/// Number of lock stripes (a power of two). 64 keeps contention negligible on machines with
/// tens of cores while the per-shard digest tables stay small.
pub const SHARDS: usize = 64;

/// Extra time a tombstone is kept beyond its instance's expire-after, so that it outlives every
/// copy of the record that could still be in flight or on a node that was away (design.md,
/// "Tombstones").
pub const TOMBSTONE_GRACE_MS: u64 = 60_000;

/// A received record stamped further than this past the local clock is refused: clocks of a
/// cluster are expected within seconds of each other, and an unbounded version would win every
/// merge forever.
pub const VERSION_FUTURE_MAX_MS: u64 = 3_600_000;

/// Told about every change, while the shard's lock is held: keep it quick.
pub trait StoreObserver: Send + Sync {
    /// The instance list of `name` changed (push to its subscribers).
    fn service_changed(&self, name: &ServiceName);
    /// This node wrote a new version of a record (sync it to the peers).
    fn local_write(&self, name: &ServiceName, id: InstanceIdRef, rec: &Record);
}

/// An observer that ignores everything (tools and tests that need only the store).
pub struct NoObserver;

impl StoreObserver for NoObserver {
    fn service_changed(&self, _: &ServiceName) {}
    fn local_write(&self, _: &ServiceName, _: InstanceIdRef, _: &Record) {}
}

/// What a beat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeatOutcome {
    /// No live instance under that key: the client should register it again.
    Unknown,
    Renewed,
    /// Renewed, and it had lapsed: now reported healthy again (a new version).
    Recovered,
}

/// What a lease pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LeaseStats {
    pub lapsed: usize,
    pub expired: usize,
    pub tombstones_dropped: usize,
}

/// Encoded SyncRecords, back to back, and how many; remembers where each record ends so that
/// a large batch can be cut into bounded frames.
#[derive(Debug, Default)]
pub struct RecordBatch {
    pub count: u32,
    pub bytes: BytesMut,
    ends: Vec<u32>,
}

/// What changed when the live member set changed.
#[derive(Debug, Default)]
pub struct OwnershipChange {
    /// Live records this node now owns and did not before (it takes over their lease duty).
    pub gained: usize,
    /// Records this node owned before, by their new owner: to hand off.
    pub lost: HashMap<NodeId, RecordBatch>,
}

struct Service {
    instances: Instances,
    /// Cluster names, interned: an [`InstanceId`]'s `cluster` indexes this. A service has few
    /// clusters and many instances; a name stays until the service is dropped.
    clusters: Vec<Box<str>>,
    revision: u64,
    /// The encoded snapshot body of all instances at `revision`, built on first read.
    cache: OnceLock<Bytes>,
    /// Which instances changed lately, once a subscriber asked for this service's changes (one
    /// pointer for a service nobody watches).
    log: Option<Box<ChangeLog>>,
}

/// What a subscriber holding a service at some revision is sent next (see
/// [`Store::push_since`]).
#[derive(Debug, Clone, PartialEq)]
pub enum PushBody {
    /// It holds the current list.
    Unchanged,
    /// The whole list at `revision`: a ServiceSnapshot body.
    Full { body: Bytes, revision: u64 },
    /// What changed between the revision it holds and `revision`: a PushDelta body.
    Delta { body: Bytes, revision: u64 },
}

/// A stored [`InstanceId`] with its text, for encodings and for the hashes that go by text.
struct IdText<'a> {
    cluster: &'a str,
    ip: IpText<'a>,
    port: u16,
}

impl IdText<'_> {
    fn view(&self) -> InstanceIdRef<'_> {
        InstanceIdRef {
            cluster: self.cluster,
            ip: self.ip.as_str(),
            port: self.port,
        }
    }

    /// The order of a snapshot's instances: (cluster, ip, port), strings bytewise.
    fn order(&self, other: &IdText) -> std::cmp::Ordering {
        (self.cluster.as_bytes(), self.ip.as_bytes(), self.port).cmp(&(
            other.cluster.as_bytes(),
            other.ip.as_bytes(),
            other.port,
        ))
    }
}

/// The text of `id`, whose cluster indexes `clusters` (its service's).
fn id_text<'a>(clusters: &'a [Box<str>], id: &'a InstanceId) -> IdText<'a> {
    IdText {
        cluster: &clusters[id.cluster as usize],
        ip: id.as_ref().ip.text(),
        port: id.port,
    }
}

impl Service {
    fn new() -> Service {
        Service {
            instances: Instances::default(),
            clusters: Vec::new(),
            revision: 0,
            cache: OnceLock::new(),
            log: None,
        }
    }

    /// A change of this service: a new revision from the node's counter; the cached snapshot
    /// goes, and the change log (if the service is watched) notes the instances changed.
    fn changed(&mut self, revisions: &AtomicU64, ids: impl IntoIterator<Item = InstanceId>) {
        self.revision = revisions.fetch_add(1, Ordering::Relaxed) + 1;
        self.cache = OnceLock::new();
        if let Some(log) = &mut self.log {
            let cap = changes::cap(self.instances.len());
            for id in ids {
                log.note(self.revision, id, cap);
            }
        }
    }

    /// The lookup key of `id` in this service; None when no instance of its cluster was ever
    /// stored here (so it is not here).
    fn find<'k>(&self, id: InstanceIdRef<'k>) -> Option<IdRef<'k>> {
        let cluster = self.clusters.iter().position(|c| **c == *id.cluster)?;
        Some(IdRef {
            ip: IpRef::parse(id.ip),
            cluster: cluster as u32,
            port: id.port,
        })
    }

    fn get(&self, key: &InstanceKey) -> Option<&Record> {
        self.instances.get(&self.find(InstanceIdRef::of(key))?)
    }

    fn get_mut(&mut self, key: &InstanceKey) -> Option<&mut Record> {
        let id = self.find(InstanceIdRef::of(key))?;
        self.instances.get_mut(&id)
    }

    /// The lookup key of `id`, interning its cluster name if it is new here.
    fn intern<'k>(&mut self, id: InstanceIdRef<'k>) -> IdRef<'k> {
        if let Some(found) = self.find(id) {
            return found;
        }
        self.clusters.push(id.cluster.into());
        IdRef {
            ip: IpRef::parse(id.ip),
            cluster: (self.clusters.len() - 1) as u32,
            port: id.port,
        }
    }

    /// The snapshot body of the live instances `filter` (given the cluster name) selects.
    fn encode_snapshot(&self, name: &ServiceName, filter: impl Fn(&str, &Record) -> bool) -> Bytes {
        let mut out = BytesMut::with_capacity(64 + self.instances.len() * 48);
        // Cluster names ranked once, so that instances compare by rank, not by name.
        let mut by_name: Vec<usize> = (0..self.clusters.len()).collect();
        by_name.sort_unstable_by(|&a, &b| self.clusters[a].cmp(&self.clusters[b]));
        let mut rank = vec![0u32; self.clusters.len()];
        for (r, &c) in by_name.iter().enumerate() {
            rank[c] = r as u32;
        }
        let mut matched: Vec<(u32, IdText, &Record)> = self
            .instances
            .iter()
            .filter(|(id, r)| r.alive && filter(&self.clusters[id.cluster as usize], r))
            .map(|(id, r)| (rank[id.cluster as usize], id_text(&self.clusters, id), r))
            .collect();
        // Sorted by (cluster, ip, port), strings bytewise (wire-spec.md, ServiceSnapshot).
        matched.sort_unstable_by(|a, b| {
            (a.0, a.1.ip.as_bytes(), a.1.port).cmp(&(b.0, b.1.ip.as_bytes(), b.1.port))
        });
        ServiceSnapshot::encode_head(&mut out, name, self.revision, matched.len() as u32);
        for (_, t, r) in matched {
            encode_view(&mut out, &t, r);
        }
        out.freeze()
    }

    /// What a subscriber holding this service at `held` is pushed next (see
    /// [`Store::push_since`]).
    fn push_since(&self, name: &ServiceName, held: Option<u64>) -> PushBody {
        if held == Some(self.revision) {
            return PushBody::Unchanged;
        }
        if let (Some(h), Some(log)) = (held, &self.log)
            && h < self.revision
            && let Some(body) = self.encode_delta(name, h, log)
        {
            return PushBody::Delta {
                body,
                revision: self.revision,
            };
        }
        let body = self
            .cache
            .get_or_init(|| self.encode_snapshot(name, |_, _| true))
            .clone();
        PushBody::Full {
            body,
            revision: self.revision,
        }
    }

    /// The PushDelta body that takes a subscriber from `base` to the current revision, from
    /// the change log; `None` when the log does not reach back to `base`, or the delta would
    /// name as many instances as the whole list holds (the list is then sent instead).
    /// O(k log k) for k changes since `base`, whatever the size of the service.
    fn encode_delta(&self, name: &ServiceName, base: u64, log: &ChangeLog) -> Option<Bytes> {
        let mut ids: Vec<(IdText, &InstanceId)> = log
            .since(base)?
            .map(|id| (id_text(&self.clusters, id), id))
            .collect();
        ids.sort_unstable_by(|a, b| a.0.order(&b.0));
        // One text per id, so repeats of an instance are neighbours now.
        ids.dedup_by(|a, b| a.1 == b.1);
        if ids.len() >= self.instances.len() {
            return None;
        }
        let mut removed = Vec::new();
        let mut updated = Vec::new();
        for (t, id) in ids {
            match self.instances.get(id) {
                Some(r) if r.alive => updated.push((t, r)),
                _ => removed.push(t),
            }
        }
        let mut out = BytesMut::with_capacity(64 + removed.len() * 24 + updated.len() * 48);
        ServiceDelta::encode_head(&mut out, name, base, self.revision);
        out.put_u32(removed.len() as u32);
        for t in removed {
            encode_view_key(&mut out, t.cluster, t.ip.as_str(), t.port);
        }
        out.put_u32(updated.len() as u32);
        for (t, r) in updated {
            encode_view(&mut out, &t, r);
        }
        Some(out.freeze())
    }
}

/// Appends the InstanceView of the live record `r` at `t`.
fn encode_view(out: &mut BytesMut, t: &IdText, r: &Record) {
    encode_instance_view(
        out,
        t.cluster,
        t.ip.as_str(),
        t.port,
        r.weight,
        r.reported_healthy(),
        r.enabled,
        r.meta(),
    );
}

struct Shard {
    services: HashMap<StoredName, Service>,
    /// Per owner: digests of the live records it owns (under this node's view).
    digests: HashMap<NodeId, Digest>,
    /// Key hash -> when (ms) a client connected here registered or beat a key this node held
    /// no live record of (a redo after a reconnect, racing the owner's sync): the evidence
    /// `Record::renewed` would hold, kept until the live record arrives (see
    /// `Store::note_client_beat`). At most [`EARLY_EVIDENCE_MAX`] entries.
    early_evidence: HashMap<u64, u64>,
}

/// Bounds a shard's `early_evidence`. At it, entries older than [`EARLY_EVIDENCE_KEEP_MS`] go,
/// and if that does not free half the table it is cleared (an instance whose record was then
/// still in flight may flicker in the reads of the client's node after a partition heal, as if
/// the client had not registered here).
const EARLY_EVIDENCE_MAX: usize = 4096;
/// Longer than any unhealthy-after the evidence could be checked against in practice.
const EARLY_EVIDENCE_KEEP_MS: u64 = 5 * 60_000;

/// The registry of one node.
pub struct Store {
    node: NodeId,
    clock: Clock,
    hlc: Hlc,
    /// Padded to a cache line each, so that writers of different shards never contend for one.
    shards: Box<[CachePadded<RwLock<Shard>>]>,
    ownership: RwLock<Arc<Ownership>>,
    observer: Arc<dyn StoreObserver>,
    /// Source of service revisions: one counter for the node, so a revision only grows, also
    /// across a service that was emptied, dropped and created again.
    revisions: AtomicU64,
    live: AtomicUsize,
    /// Per shard: no record of it needs the lease duty before this time (ms). Lets a lease
    /// pass skip the shards where nothing is due instead of scanning every record each time.
    /// Lowered by every write, recomputed by each scan; a stale low value only costs a scan.
    next_due_ms: Box<[AtomicU64]>,
}

impl Store {
    pub fn new(node: NodeId, clock: Clock, observer: Arc<dyn StoreObserver>) -> Store {
        let shards = (0..SHARDS)
            .map(|_| {
                CachePadded::new(RwLock::new(Shard {
                    services: HashMap::default(),
                    digests: HashMap::default(),
                    early_evidence: HashMap::default(),
                }))
            })
            .collect();
        Store {
            node,
            clock,
            hlc: Hlc::new(),
            shards,
            ownership: RwLock::new(Arc::new(Ownership::standalone(node))),
            observer,
            revisions: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            next_due_ms: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn hlc(&self) -> &Hlc {
        &self.hlc
    }

    pub fn ownership(&self) -> Arc<Ownership> {
        self.ownership.read().unwrap().clone()
    }

    /// Live instances (tombstones not counted).
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard_of(&self, name: &ServiceName) -> &RwLock<Shard> {
        &self.shards[shard_index(name)]
    }

    fn next_version(&self) -> Version {
        Version {
            hlc: self.hlc.tick(self.clock.now_ms()),
            origin: self.node,
        }
    }

    /// Installs `rec` under `name`/`id`: the single place every change goes through.
    /// An existing record is replaced in place; only a new key allocates its id (and interns
    /// its cluster name).
    fn put(
        &self,
        shard: &mut Shard,
        name: &ServiceName,
        idref: InstanceIdRef,
        rec: Record,
        local: bool,
    ) {
        let Shard {
            services, digests, ..
        } = shard;
        let svc = match services.get_mut(name) {
            Some(s) => s,
            None => services
                .entry(StoredName::new(name))
                .or_insert_with(Service::new),
        };
        let key = svc.intern(idref);
        let own = |key: &IdRef| InstanceId {
            ip: key.ip.to_owned(),
            cluster: key.cluster,
            port: key.port,
        };
        svc.changed(&self.revisions, std::iter::once_with(|| own(&key)));
        let (old, rec) = svc.instances.upsert(&key, own, rec);
        self.next_due_ms[shard_index(name)].fetch_min(self.due_ms(rec), Ordering::Relaxed);
        let was_alive = old.as_ref().is_some_and(|o| o.alive);
        match (was_alive, rec.alive) {
            (false, true) => {
                self.live.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.live.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        if local {
            self.observer.local_write(name, idref, rec);
        }
        self.observer.service_changed(name);
        if let Some(old) = old.filter(|o| o.alive)
            && let Some(d) = digests.get_mut(&old.owner)
        {
            d.remove(old.key_hash, old.digest_term());
        }
        if rec.alive {
            digests
                .entry(rec.owner)
                .or_default()
                .add(rec.key_hash, rec.digest_term());
        }
    }

    /// Registers (or re-registers) an instance as a write of this node. `session` is non-zero
    /// for a session-bound instance. Re-registering identical data renews the lease without a
    /// new version, so a client's redo after a reconnect costs no sync traffic.
    pub fn register(&self, inst: &Instance, session: u64) {
        let now = self.clock.now_ms();
        let k = &inst.key;
        // Keep the view locked until the record is in, so that `set_ownership` cannot pass this
        // shard between the owner lookup and the insert (which would leave a stale owner).
        let view = self.ownership.read().unwrap();
        let owner = view.owner(&k.ip, k.port);
        let mut shard = self.shard_of(&k.service).write().unwrap();
        let idref = InstanceIdRef::of(k);
        let existing = shard
            .services
            .get_mut(&k.service)
            .and_then(|s| s.get_mut(k));
        let metadata = record::store_metadata(&inst.metadata);
        let mut rec = Record {
            version: Version::default(),
            key_hash: key_hash(&k.service, &k.cluster, &k.ip, k.port),
            owner,
            alive: true,
            healthy: inst.healthy,
            enabled: inst.enabled,
            lapsed: false,
            weight: inst.weight,
            lease: inst.lease,
            session,
            touched_ms: now,
            renewed: true,
            renewed_as_owner: true,
            metadata,
        };
        // The session is part of what peers must know (a new owner lapses by it), so a
        // re-register from another connection is a new version even with the same data.
        if let Some(old) = existing
            && old.same_content(&rec)
            && old.session == session
        {
            old.touched_ms = now;
            old.renewed = true;
            old.renewed_as_owner = true;
            return;
        }
        rec.version = self.next_version();
        self.put(&mut shard, &k.service, idref, rec, true);
    }

    /// Deletes an instance as a write of this node, leaving a tombstone. False if it was not
    /// there (or already deleted).
    pub fn deregister(&self, key: &InstanceKey) -> bool {
        self.modify_live(key, true, |rec, now| {
            rec.alive = false;
            // A tombstone without `lapsed` is a deregistration; with it, a lease expiry.
            rec.lapsed = false;
            rec.touched_ms = now;
            true
        })
    }

    /// Renews an instance's lease.
    pub fn beat(&self, key: &InstanceKey) -> BeatOutcome {
        let mut outcome = BeatOutcome::Unknown;
        self.modify_live(key, true, |rec, now| {
            rec.touched_ms = now;
            rec.renewed = true;
            rec.renewed_as_owner = true;
            if rec.lapsed {
                rec.lapsed = false;
                outcome = BeatOutcome::Recovered;
                true
            } else {
                outcome = BeatOutcome::Renewed;
                false
            }
        });
        outcome
    }

    /// Renews many leases (one Beat frame), taking each shard's lock once and updating the
    /// records in place; answers the indexes (into `keys`) of those this node holds no live
    /// record of. A lapsed instance recovers, with a new version, as [`Store::beat`] does.
    pub fn beat_batch<K: std::borrow::Borrow<InstanceKey>>(&self, keys: &[K]) -> Vec<u16> {
        let now = self.clock.now_ms();
        let mut unknown = Vec::new();
        let mut lapsed = Vec::new();
        self.by_shard(keys.iter().map(|k| k.borrow()), |shard, i, k| {
            match shard
                .services
                .get_mut(&k.service)
                .and_then(|s| s.get_mut(k))
            {
                Some(r) if r.alive => {
                    r.touched_ms = now;
                    r.renewed = true;
                    r.renewed_as_owner = true;
                    if r.lapsed {
                        lapsed.push(i);
                    }
                }
                _ => unknown.push(i as u16),
            }
        });
        for i in lapsed {
            if self.beat(keys[i].borrow()) == BeatOutcome::Unknown {
                unknown.push(i as u16);
            }
        }
        unknown.sort_unstable();
        unknown
    }

    /// Runs `f` on every key with its shard write-locked, each shard locked once; `f` gets the
    /// key's index in the iteration.
    fn by_shard<'k>(
        &self,
        keys: impl Iterator<Item = &'k InstanceKey>,
        mut f: impl FnMut(&mut Shard, usize, &'k InstanceKey),
    ) {
        let mut order: Vec<(usize, usize, &InstanceKey)> = keys
            .enumerate()
            .map(|(i, k)| (shard_index(&k.service), i, k))
            .collect();
        order.sort_unstable_by_key(|&(s, i, _)| (s, i));
        for group in order.chunk_by(|a, b| a.0 == b.0) {
            let mut shard = self.shards[group[0].0].write().unwrap();
            for &(_, i, k) in group {
                f(&mut shard, i, k);
            }
        }
    }

    /// A client connected here beat or registered this instance, which another node owns (the
    /// request is forwarded there): the client is alive, whether or not the forward gets
    /// through.
    /// Recorded in place (no new version) as the same first-hand evidence a beat gives an owner
    /// (see [`Record::renewed`]).
    ///
    /// A key this node holds no live record of (the client registered again after a
    /// reconnect, and the owner's sync of it is still on its way) is noted aside and the
    /// evidence given to the live record when it arrives.
    pub fn note_client_beat(&self, key: &InstanceKey) {
        self.note_client_beats(std::iter::once(key));
    }

    /// [`Store::note_client_beat`] for many keys, each shard locked once.
    pub fn note_client_beats<'k>(&self, keys: impl Iterator<Item = &'k InstanceKey>) {
        let now = self.clock.now_ms();
        self.by_shard(keys, |shard, _, key| Self::note_locked(shard, key, now));
    }

    fn note_locked(shard: &mut Shard, key: &InstanceKey, now: u64) {
        if let Some(r) = shard
            .services
            .get_mut(&key.service)
            .and_then(|s| s.get_mut(key))
            && r.alive
        {
            r.renewed = true;
            r.touched_ms = now;
            return;
        }
        let early = &mut shard.early_evidence;
        if early.len() >= EARLY_EVIDENCE_MAX {
            early.retain(|_, at| now.saturating_sub(*at) < EARLY_EVIDENCE_KEEP_MS);
            if early.len() > EARLY_EVIDENCE_MAX / 2 {
                // More records on their way than the table holds (a reconnect storm): start
                // afresh rather than scan a full table on every insert. What is lost is only
                // the evidence for records still in flight.
                tracing::debug!(
                    dropped = early.len(),
                    "early client evidence table full; cleared"
                );
                early.clear();
            }
        }
        early.insert(key_hash(&key.service, &key.cluster, &key.ip, key.port), now);
    }

    /// The client session `session`, connected here, ended: this node no longer has first-hand
    /// evidence that the client of `key` is alive (its owner, elsewhere, lapses the instance).
    pub fn note_session_gone(&self, key: &InstanceKey, session: u64) {
        let mut shard = self.shard_of(&key.service).write().unwrap();
        shard
            .early_evidence
            .remove(&key_hash(&key.service, &key.cluster, &key.ip, key.port));
        if let Some(r) = shard
            .services
            .get_mut(&key.service)
            .and_then(|s| s.get_mut(key))
            && r.session == session
        {
            r.renewed = false;
        }
    }

    /// Marks the instance unhealthy at once if it is still bound to `session` (its connection
    /// dropped without deregistering). True if it changed.
    pub fn lapse_session(&self, key: &InstanceKey, session: u64) -> bool {
        if session == 0 {
            // 0 marks instances bound to no session: there is nothing to lapse.
            return false;
        }
        self.modify_live(key, true, |rec, _| {
            if rec.session == session && !rec.lapsed {
                rec.lapsed = true;
                rec.renewed = false;
                rec.renewed_as_owner = false;
                true
            } else {
                false
            }
        })
    }

    /// Runs `f` on the live record under `key`. When `f` returns true the record is written
    /// back as a new version of this node; otherwise only what `f` changed in place stays
    /// (lease bookkeeping, no version).
    fn modify_live(
        &self,
        key: &InstanceKey,
        local: bool,
        f: impl FnOnce(&mut Record, u64) -> bool,
    ) -> bool {
        let now = self.clock.now_ms();
        let mut shard = self.shard_of(&key.service).write().unwrap();
        let idref = InstanceIdRef::of(key);
        let Some(svc) = shard.services.get_mut(&key.service) else {
            return false;
        };
        let Some(rec) = svc.get_mut(key) else {
            return false;
        };
        if !rec.alive {
            return false;
        }
        let mut new = rec.clone();
        if !f(&mut new, now) {
            rec.touched_ms = new.touched_ms;
            rec.renewed = new.renewed;
            rec.renewed_as_owner = new.renewed_as_owner;
            return false;
        }
        new.version = self.next_version();
        self.put(&mut shard, &key.service, idref, new, local);
        true
    }

    /// Merges a record from a peer: applied only if its version is newer than what this node
    /// holds (last writer wins; tombstones included). True if applied.
    pub fn merge(&self, rec: &SyncRecord) -> bool {
        self.merge_batch(std::slice::from_ref(rec)) == 1
    }

    /// Merges many records (a sync batch, a pull answer, a snapshot chunk): each by the rules
    /// of [`Store::merge`], taking each shard's lock once for all of its records. Answers how
    /// many were applied.
    pub fn merge_batch(&self, recs: &[SyncRecord]) -> usize {
        let now = self.clock.now_ms();
        let mut order: Vec<(usize, usize)> = Vec::with_capacity(recs.len());
        for (i, rec) in recs.iter().enumerate() {
            if crate::clock::hlc_physical_ms(rec.version.hlc) > now + VERSION_FUTURE_MAX_MS {
                // A version from far in the future would win every merge and drag this node's
                // clock along: refuse it (a peer's clock is broken, or the record is hostile).
                let k = &rec.key;
                tracing::warn!(
                    key = %format_args!("{}/{}:{}", k.service, k.ip, k.port),
                    hlc = { rec.version.hlc },
                    "refused a record stamped more than an hour in the future"
                );
                continue;
            }
            self.hlc.observe(rec.version.hlc);
            order.push((shard_index(&rec.key.service), i));
        }
        // Stable: records of one key keep their order within the batch.
        order.sort_by_key(|&(shard, _)| shard);
        // Keep the view locked until the records are in, so that `set_ownership` cannot pass a
        // shard between the owner lookup and the insert (which would leave a stale owner).
        let view = self.ownership.read().unwrap();
        let mut applied = 0;
        for group in order.chunk_by(|a, b| a.0 == b.0) {
            let mut shard = self.shards[group[0].0].write().unwrap();
            for &(_, i) in group {
                applied += self.merge_locked(&view, &mut shard, &recs[i], now) as usize;
            }
        }
        applied
    }

    fn merge_locked(
        &self,
        view: &Ownership,
        shard: &mut Shard,
        rec: &SyncRecord,
        now: u64,
    ) -> bool {
        let k = &rec.key;
        let idref = InstanceIdRef::of(k);
        let mut renewed = false;
        if let Some(old) = shard.services.get(&k.service).and_then(|s| s.get(k)) {
            if old.version >= rec.version {
                return false;
            }
            // An expiry — or the lapse (unhealthy mark) before it — made elsewhere (by a node
            // that took the key over while it could not see the client, in a partition)
            // against an instance whose client is beating here: the client is alive. The owner
            // keeps the instance, with a version newer than the lapse so that every node
            // converges to it.
            //
            // A node that is not the owner but forwards the client's beats (the client is
            // connected here) refuses such a lapse too, whether or not its forwards got
            // through: the instance must not vanish from the reads of the client's own node.
            // The owner re-stamps it if it was beaten; if it was not (and took the expiry), it
            // answers the next forwarded beat "unknown" and the client registers again.
            if rec.lapsed && old.beaten_recently(now) {
                if old.owner == self.node {
                    let mut keep = old.clone();
                    keep.version = self.next_version();
                    self.put(shard, &k.service, idref, keep, true);
                }
                return false;
            }
            // The evidence that the client beats here outlives the version it was noted on: a
            // re-stamp or an update from the owner does not make the client any less alive.
            renewed = rec.alive && old.beaten_recently(now);
        }
        let key_hash = key_hash(&k.service, &k.cluster, &k.ip, k.port);
        if rec.alive
            && !shard.early_evidence.is_empty()
            && let Some(at) = shard.early_evidence.remove(&key_hash)
        {
            renewed |= now.saturating_sub(at) < rec.lease.unhealthy_ms as u64;
            if shard.early_evidence.is_empty() {
                // A burst of registers forwarded through this node filled it; give the
                // table's memory back once the burst's records have all arrived.
                shard.early_evidence.shrink_to_fit();
            }
        }
        let new = Record {
            version: rec.version,
            key_hash,
            owner: view.owner(&k.ip, k.port),
            alive: rec.alive,
            healthy: rec.healthy,
            enabled: rec.enabled,
            lapsed: rec.lapsed,
            weight: rec.weight,
            lease: rec.lease,
            session: rec.session,
            touched_ms: now,
            renewed,
            renewed_as_owner: false,
            metadata: if rec.alive {
                record::store_metadata(&rec.metadata)
            } else {
                None
            },
        };
        self.put(shard, &k.service, idref, new, false);
        true
    }

    /// The record under `key`, alive or tombstone.
    pub fn get(&self, key: &InstanceKey) -> Option<Record> {
        let shard = self.shard_of(&key.service).read().unwrap();
        shard
            .services
            .get(&key.service)
            .and_then(|s| s.get(key).cloned())
    }

    /// The encoded snapshot body (a ServiceSnapshot) of the live instances of `name`, of one
    /// cluster (`""`: all), healthy and enabled ones only if `healthy_only`. An unknown service is
    /// an empty list at the node's latest revision.
    pub fn query(&self, name: &ServiceName, cluster: &str, healthy_only: bool) -> Bytes {
        let shard = self.shard_of(name).read().unwrap();
        let Some(svc) = shard.services.get(name) else {
            // The node's current revision: at least as new as anything this service had before
            // it was emptied and dropped, so a subscriber is pushed the empty list.
            let mut out = BytesMut::new();
            let revision = self.revisions.load(Ordering::Relaxed);
            ServiceSnapshot::encode_head(&mut out, name, revision, 0);
            return out.freeze();
        };
        if cluster.is_empty() && !healthy_only {
            return svc
                .cache
                .get_or_init(|| svc.encode_snapshot(name, |_, _| true))
                .clone();
        }
        svc.encode_snapshot(name, |c, r| {
            (cluster.is_empty() || c == cluster)
                && (!healthy_only || (r.reported_healthy() && r.enabled))
        })
    }

    /// What a subscriber of `name` that holds the list at revision `held` (`None`: nothing
    /// yet) is pushed next: nothing if it is current; what changed since `held` if this
    /// service's change log reaches back that far; otherwise the whole list (from the cache).
    /// The first call for a service starts its change log, so that the pushes after the first
    /// full one are deltas; [`Store::unwatch`] ends it.
    pub fn push_since(&self, name: &ServiceName, held: Option<u64>) -> PushBody {
        {
            let shard = self.shard_of(name).read().unwrap();
            match shard.services.get(name) {
                None => return self.push_of_unknown(name, held),
                Some(svc) if svc.log.is_some() => return svc.push_since(name, held),
                Some(_) => {}
            }
        }
        // The first push of a service nobody watched: start its log (once per service).
        let mut shard = self.shard_of(name).write().unwrap();
        match shard.services.get_mut(name) {
            None => self.push_of_unknown(name, held),
            Some(svc) => {
                let revision = svc.revision;
                svc.log
                    .get_or_insert_with(|| Box::new(ChangeLog::new(revision)));
                svc.push_since(name, held)
            }
        }
    }

    /// [`Store::push_since`] for a service this node holds nothing of (emptied and dropped, or
    /// never seen): the empty list at the node's latest revision (see [`Store::query`]), unless
    /// the subscriber is already there.
    fn push_of_unknown(&self, name: &ServiceName, held: Option<u64>) -> PushBody {
        let revision = self.revisions.load(Ordering::Relaxed);
        if held.is_some_and(|h| h >= revision) {
            return PushBody::Unchanged;
        }
        let mut body = BytesMut::new();
        ServiceSnapshot::encode_head(&mut body, name, revision, 0);
        PushBody::Full {
            body: body.freeze(),
            revision,
        }
    }

    /// Whether `name` keeps a change log (a subscriber asked for its changes).
    pub fn is_watched(&self, name: &ServiceName) -> bool {
        let shard = self.shard_of(name).read().unwrap();
        shard.services.get(name).is_some_and(|s| s.log.is_some())
    }

    /// Nobody on this node subscribes to `name` any more: its change log goes.
    pub fn unwatch(&self, name: &ServiceName) {
        let mut shard = self.shard_of(name).write().unwrap();
        if let Some(svc) = shard.services.get_mut(name) {
            svc.log = None;
        }
    }

    /// One page of the services of a namespace, sorted by (group, service). Services with only
    /// tombstones are not listed.
    pub fn list_services(&self, namespace: &str, page: u32, page_size: u16) -> ServiceList {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap();
            for (name, svc) in &shard.services {
                if name.namespace() != namespace {
                    continue;
                }
                let (mut instances, mut healthy) = (0u32, 0u32);
                for r in svc.instances.values().filter(|r| r.alive) {
                    instances += 1;
                    healthy += r.reported_healthy() as u32;
                }
                if instances > 0 {
                    all.push(ServiceSummary {
                        group: Text::from(name.group()),
                        service: Text::from(name.service()),
                        instances,
                        healthy,
                    });
                }
            }
        }
        all.sort_unstable_by(|a, b| (&a.group, &a.service).cmp(&(&b.group, &b.service)));
        let total = all.len() as u32;
        let start = (page as usize).saturating_mul(page_size as usize);
        let services = all
            .into_iter()
            .skip(start)
            .take(page_size as usize)
            .collect();
        ServiceList { total, services }
    }

    /// Every namespace with live instances, sorted by name: its services, live and healthy
    /// instances. Walks every record (a scrape or a console refresh, not a request path), one
    /// shard's read lock at a time.
    pub fn namespace_counts(&self) -> Vec<NamespaceSummary> {
        let mut by_ns: std::collections::BTreeMap<String, NamespaceSummary> = Default::default();
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap();
            for (name, svc) in &shard.services {
                let (mut instances, mut healthy) = (0u64, 0u64);
                for r in svc.instances.values().filter(|r| r.alive) {
                    instances += 1;
                    healthy += r.reported_healthy() as u64;
                }
                if instances == 0 {
                    continue;
                }
                let ns = match by_ns.get_mut(name.namespace()) {
                    Some(ns) => ns,
                    None => by_ns
                        .entry(name.namespace().to_string())
                        .or_insert_with(|| NamespaceSummary {
                            namespace: Text::from(name.namespace()),
                            services: 0,
                            instances: 0,
                            healthy: 0,
                        }),
                };
                ns.services += 1;
                ns.instances += instances;
                ns.healthy += healthy;
            }
        }
        by_ns.into_values().collect()
    }

    /// The lease duty for the records this node owns: lapse those past unhealthy-after, delete
    /// those past expire-after, and drop tombstones past their retention. Works shard by shard
    /// so no lock is held for long.
    pub fn lease_pass(&self) -> LeaseStats {
        let mut stats = LeaseStats::default();
        for i in 0..SHARDS {
            let s = self.lease_pass_shard(i);
            stats.lapsed += s.lapsed;
            stats.expired += s.expired;
            stats.tombstones_dropped += s.tombstones_dropped;
        }
        stats
    }

    /// [`Store::lease_pass`] for one shard, so that a caller can yield between shards.
    pub fn lease_pass_shard(&self, index: usize) -> LeaseStats {
        self.lease_pass_shard_at(index, self.clock.now_ms())
    }

    /// [`Store::lease_pass_shard`] judged at `now` (ms): the lease duty reads the time once,
    /// checks it for a stall, and passes the same reading, so that a pause between the check
    /// and the pass cannot expire what the check would have re-granted.
    pub fn lease_pass_shard_at(&self, index: usize, now: u64) -> LeaseStats {
        let mut stats = LeaseStats::default();
        let shard = &self.shards[index];
        if now < self.next_due_ms[index].load(Ordering::Relaxed) {
            return stats;
        }
        // Recomputed by this scan; writes meanwhile lower it again (fetch_min).
        self.next_due_ms[index].store(u64::MAX, Ordering::Relaxed);
        {
            // (key, new record, the touched_ms the decision was based on). Keys as text: the
            // write lock is taken afresh, and a service may be dropped and made again meanwhile.
            let mut changes: Vec<(InstanceKey, Record, u64)> = Vec::new();
            let mut drop: Vec<InstanceKey> = Vec::new();
            {
                let shard = shard.read().unwrap();
                for (name, svc) in &shard.services {
                    let key = |id| instance_key(name, id_text(&svc.clusters, id).view());
                    for (id, r) in &svc.instances {
                        let idle = now.saturating_sub(r.touched_ms);
                        self.next_due_ms[index].fetch_min(self.due_ms(r), Ordering::Relaxed);
                        if !r.alive {
                            if idle > r.lease.expire_ms as u64 + TOMBSTONE_GRACE_MS {
                                drop.push(key(id));
                            }
                            continue;
                        }
                        if r.owner != self.node {
                            continue;
                        }
                        if idle > r.lease.expire_ms as u64 {
                            let mut n = r.clone();
                            n.alive = false;
                            n.lapsed = true;
                            n.touched_ms = now;
                            changes.push((key(id), n, r.touched_ms));
                            stats.expired += 1;
                        } else if idle > r.lease.unhealthy_ms as u64 && !r.lapsed {
                            let mut n = r.clone();
                            n.lapsed = true;
                            changes.push((key(id), n, r.touched_ms));
                            stats.lapsed += 1;
                        }
                    }
                }
            }
            if changes.is_empty() && drop.is_empty() {
                return stats;
            }
            let mut shard = shard.write().unwrap();
            for (key, mut rec, seen_touched_ms) in changes {
                // Re-check under the write lock: a beat, a write or a view change (which moves
                // the record to another owner) may have come in between.
                let current = shard.services.get(&key.service).and_then(|s| s.get(&key));
                if current.map(|c| (c.version, c.touched_ms, c.owner))
                    != Some((rec.version, seen_touched_ms, self.node))
                {
                    continue;
                }
                rec.version = self.next_version();
                self.put(&mut shard, &key.service, InstanceIdRef::of(&key), rec, true);
            }
            for key in drop {
                let Some(svc) = shard.services.get_mut(&key.service) else {
                    continue;
                };
                let Some(id) = svc.find(InstanceIdRef::of(&key)) else {
                    continue;
                };
                // Re-check: a newer tombstone may have replaced the one seen under the read lock.
                if svc.instances.get(&id).is_some_and(|r| {
                    !r.alive
                        && now.saturating_sub(r.touched_ms)
                            > r.lease.expire_ms as u64 + TOMBSTONE_GRACE_MS
                }) {
                    svc.instances.remove(&id);
                    stats.tombstones_dropped += 1;
                    if svc.instances.is_empty() {
                        shard.services.remove(&key.service);
                    }
                }
            }
        }
        stats
    }

    /// When the lease duty next has something to do with `r` on this node (ms): drop a
    /// tombstone, expire or lapse a record it owns; never for a live record of another owner
    /// (a view change rescans everything).
    fn due_ms(&self, r: &Record) -> u64 {
        let expire = r.lease.expire_ms as u64;
        if !r.alive {
            r.touched_ms + expire + TOMBSTONE_GRACE_MS + 1
        } else if r.owner != self.node {
            u64::MAX
        } else if r.lapsed {
            r.touched_ms + expire + 1
        } else {
            r.touched_ms + r.lease.unhealthy_ms as u64 + 1
        }
    }

    /// Grants every live record this node owns a fresh lease (after this node was paused and
    /// missed its lease passes, so that it does not expire everything at once on waking).
    pub fn regrant_owned(&self) -> usize {
        let now = self.clock.now_ms();
        let mut n = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.write().unwrap();
            for svc in shard.services.values_mut() {
                for r in svc.instances.values_mut() {
                    if r.alive && r.owner == self.node {
                        r.touched_ms = now;
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// Installs a new view of the live members: recomputes every record's owner and the
    /// digests. Records this node gains get a fresh lease counted from now (the takeover grace);
    /// records it loses are returned, encoded, to be handed off to their new owners — those it
    /// was renewing on its client's beats with a new version (see [`Record::renewed`]).
    pub fn set_ownership(&self, o: Ownership) -> OwnershipChange {
        self.set_ownership_handing_off(o, 0)
    }

    /// [`Store::set_ownership`], handing off only the lost records written at or after
    /// `since_ms` (and those re-stamped): older ones every live node has had time to learn
    /// through sync and digests, and a node that joins loads them with its snapshot, so sending
    /// them again would only slow a join down.
    pub fn set_ownership_handing_off(&self, o: Ownership, since_ms: u64) -> OwnershipChange {
        let o = Arc::new(o);
        let mut change = OwnershipChange::default();
        // Holding the ownership lock across the pass keeps concurrent writes from computing
        // owners under the old view while records are being moved to the new one.
        let mut current = self.ownership.write().unwrap();
        *current = o.clone();
        let now = self.clock.now_ms();
        // Owners change: every shard may have lease duty now.
        for due in self.next_due_ms.iter() {
            due.store(0, Ordering::Relaxed);
        }
        for shard in self.shards.iter() {
            let mut shard = shard.write().unwrap();
            let shard = &mut *shard;
            shard.digests.clear();
            for (stored, svc) in shard.services.iter_mut() {
                // Made only for the few services with records to hand off.
                let mut name = None;
                let mut restamped = Vec::new();
                let Service {
                    instances,
                    clusters,
                    ..
                } = svc;
                for (stored_id, r) in instances.iter_mut() {
                    let text = id_text(clusters, stored_id);
                    let id = text.view();
                    let new_owner = o.owner(id.ip, id.port);
                    if new_owner != r.owner {
                        if r.alive && new_owner == self.node {
                            r.touched_ms = now;
                            change.gained += 1;
                        }
                        if r.owner == self.node {
                            // An instance this node kept alive on its client's beats is handed
                            // off as a fresh write: it must win over a tombstone the new owner
                            // may have made while it could not see the client (a partition).
                            let restamp = r.renewed_here_as_owner(now);
                            r.renewed_as_owner = false;
                            let name = name.get_or_insert_with(|| stored.to_name());
                            if restamp {
                                r.version = self.next_version();
                                self.observer.local_write(name, id, r);
                                restamped.push(stored_id.clone());
                            }
                            if restamp || crate::clock::hlc_physical_ms(r.version.hlc) >= since_ms {
                                change.lost.entry(new_owner).or_default().push(name, id, r);
                            }
                        }
                        r.owner = new_owner;
                    }
                    if r.alive {
                        shard
                            .digests
                            .entry(r.owner)
                            .or_insert_with(Digest::new)
                            .add(r.key_hash, r.digest_term());
                    }
                }
                if let (false, Some(name)) = (restamped.is_empty(), &name) {
                    svc.changed(&self.revisions, restamped);
                    self.observer.service_changed(name);
                }
            }
        }
        change
    }

    /// The digest of the live records owned by `owner`, as this node holds them.
    pub fn digest(&self, owner: NodeId) -> Digest {
        let mut d = Digest::new();
        for shard in self.shards.iter() {
            if let Some(sd) = shard.read().unwrap().digests.get(&owner) {
                d.merge(sd);
            }
        }
        d
    }

    /// Records (tombstones included) owned by `owner` in the given buckets, encoded, all at once
    /// (tests and tools; a pull's answer is streamed with [`chunks::RecordChunks`]).
    pub fn records_in_buckets(&self, owner: NodeId, buckets: &digest::BucketSet) -> RecordBatch {
        let selection = chunks::Selection::Owned {
            owner,
            buckets: buckets.clone(),
        };
        self.collect_chunks(chunks::RecordChunks::new(selection))
    }

    fn collect_chunks(&self, mut walk: chunks::RecordChunks) -> RecordBatch {
        let mut batch = RecordBatch::default();
        while let Some(chunk) = walk.next_chunk(self) {
            batch.append(chunk);
        }
        batch
    }

    /// After a pull: removes the live records owned by `owner` in `buckets` that the owner did
    /// not send (`present` holds the key hashes it sent), if they were last touched before
    /// `touched_before_ms` (younger ones may still be on their way to the owner). Returns how
    /// many were removed.
    pub fn drop_missing(
        &self,
        owner: NodeId,
        buckets: &digest::BucketSet,
        present: &hashbrown::HashSet<u64, impl std::hash::BuildHasher>,
        touched_before_ms: u64,
    ) -> usize {
        let is_stale = |r: &Record| {
            r.alive
                && r.owner == owner
                && buckets.contains(digest::bucket_of(r.key_hash))
                && !present.contains(&r.key_hash)
                && r.touched_ms < touched_before_ms
        };
        let mut removed = 0;
        for shard in self.shards.iter() {
            // Look under the read lock first: most shards hold nothing stale, and writers
            // should not wait for a scan that finds nothing.
            let any = shard
                .read()
                .unwrap()
                .services
                .values()
                .any(|svc| svc.instances.values().any(is_stale));
            if !any {
                continue;
            }
            let mut shard = shard.write().unwrap();
            let shard = &mut *shard;
            let mut emptied = Vec::new();
            for (name, svc) in shard.services.iter_mut() {
                let digests = &mut shard.digests;
                let mut gone = Vec::new();
                svc.instances.retain(|id, r| {
                    let stale = is_stale(r);
                    if stale {
                        if let Some(d) = digests.get_mut(&r.owner) {
                            d.remove(r.key_hash, r.digest_term());
                        }
                        gone.push(id.clone());
                    }
                    !stale
                });
                let n = gone.len();
                if n > 0 {
                    removed += n;
                    self.live.fetch_sub(n, Ordering::Relaxed);
                    svc.changed(&self.revisions, gone);
                    self.observer.service_changed(&name.to_name());
                    if svc.instances.is_empty() {
                        emptied.push(name.clone());
                    }
                }
            }
            for name in emptied {
                shard.services.remove(&name);
            }
        }
        removed
    }

    /// Encodes every record of one shard, all at once (tests and fuzzing; a snapshot is
    /// streamed with [`chunks::RecordChunks`]).
    pub fn encode_shard(&self, shard: usize) -> RecordBatch {
        let walk = chunks::RecordChunks::of_shards(chunks::Selection::All, shard..shard + 1);
        self.collect_chunks(walk)
    }

    /// Visits every record under read locks, one shard at a time.
    pub fn for_each_record(&self, f: impl FnMut(&ServiceName, InstanceIdRef, &Record)) {
        self.for_each_matching(|_| true, f)
    }

    /// Visits the records `keep` selects (judged on the record alone, before the key's text is
    /// put together), under read locks, one shard at a time.
    pub fn for_each_matching(
        &self,
        keep: impl Fn(&Record) -> bool,
        mut f: impl FnMut(&ServiceName, InstanceIdRef, &Record),
    ) {
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap();
            for (stored, svc) in &shard.services {
                let mut name = None;
                for (id, r) in svc.instances.iter().filter(|(_, r)| keep(r)) {
                    let name = name.get_or_insert_with(|| stored.to_name());
                    f(name, id_text(&svc.clusters, id).view(), r);
                }
            }
        }
    }

    /// Live records per owner, under this node's view.
    pub fn owned_counts(&self) -> HashMap<NodeId, usize> {
        let mut counts = HashMap::default();
        for shard in self.shards.iter() {
            for (owner, d) in &shard.read().unwrap().digests {
                *counts.entry(*owner).or_insert(0) += d.total_count() as usize;
            }
        }
        counts
    }
}

/// The shard of a service: the hash of its canonical bytes (namespace, group, service).
fn shard_index(name: &ServiceName) -> usize {
    (crate::model::service_hash(name) as usize) & (SHARDS - 1)
}

/// The key of the instance `id` of service `name`.
fn instance_key(name: &StoredName, id: InstanceIdRef) -> InstanceKey {
    InstanceKey {
        service: name.to_name(),
        cluster: Text::from(id.cluster),
        ip: Text::from(id.ip),
        port: id.port,
    }
}

/// Appends `rec` as a SyncRecord.
pub fn encode_record(out: &mut BytesMut, name: &ServiceName, id: InstanceIdRef, rec: &Record) {
    encode_key_parts(out, name, id.cluster, id.ip, id.port);
    let empty: &[(Box<str>, Box<str>)] = &[];
    encode_record_tail(
        out,
        rec.version,
        record_status_bits(rec.alive, rec.healthy, rec.enabled, rec.lapsed),
        if rec.alive { rec.weight } else { 0.0 },
        rec.lease,
        rec.session,
        if rec.alive { rec.meta() } else { empty },
    );
}

/// Bytes of [`encode_record`]'s output less those of the service name (`6 +` its parts).
fn record_len_after_name(cluster: &str, ip: &str, rec: &Record) -> usize {
    const TAIL: usize = 8 + 2 + 1 + 8 + 12 + 8;
    let meta: usize = if rec.alive {
        rec.meta().iter().map(|(k, v)| 4 + k.len() + v.len()).sum()
    } else {
        0
    };
    2 + cluster.len() + 2 + ip.len() + 2 + TAIL + 2 + meta
}

impl RecordBatch {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends the records of `other`.
    pub fn append(&mut self, other: RecordBatch) {
        let base = self.bytes.len() as u32;
        self.bytes.extend_from_slice(&other.bytes);
        self.ends.extend(other.ends.iter().map(|e| e + base));
        self.count += other.count;
    }

    /// Appends one record.
    pub fn push(&mut self, name: &ServiceName, id: InstanceIdRef, rec: &Record) {
        encode_record(&mut self.bytes, name, id, rec);
        self.count += 1;
        self.ends.push(self.bytes.len() as u32);
    }

    /// Cuts the batch into pieces of at most `max_bytes` each (a single larger record gets a
    /// piece of its own): (record count, the records' bytes).
    pub fn pieces(&self, max_bytes: usize) -> Vec<(u32, bytes::Bytes)> {
        let all = self.bytes.clone().freeze();
        let mut out = Vec::new();
        let (mut start, mut prev_end, mut n) = (0usize, 0usize, 0u32);
        for &end in &self.ends {
            let end = end as usize;
            if n > 0 && end - start > max_bytes {
                out.push((n, all.slice(start..prev_end)));
                start = prev_end;
                n = 0;
            }
            n += 1;
            prev_end = end;
        }
        if n > 0 {
            out.push((n, all.slice(start..)));
        }
        out
    }

    /// Appends the count and the records (the body layout of record-carrying cluster frames).
    pub fn put(&self, out: &mut BytesMut) {
        out.put_u32(self.count);
        out.extend_from_slice(&self.bytes);
    }
}

#[cfg(test)]
mod tests;
