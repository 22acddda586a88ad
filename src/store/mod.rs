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
//!
//! The [`Store`]'s methods are grouped by who calls them: writes from clients here; reads in
//! [`reads`]; the lease duty in [`lease`]; what the cluster asks (merge, ownership, digests,
//! records for the wire) in [`replica`]; one service's records and cached snapshot in
//! [`service`].

mod changes;
pub mod chunks;
pub mod digest;
mod instances;
pub mod invariants;
mod lease;
mod name;
mod reads;
pub mod record;
mod replica;
mod service;

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
pub use replica::encode_record;
use replica::record_len_after_name;
pub use service::PushBody;
use service::{Service, id_text};

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

#[cfg(test)]
mod tests;
