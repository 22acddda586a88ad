//! [`Store::check_invariants`]: recomputes from scratch everything the store maintains
//! incrementally (digests, cached owners and key hashes, the live counter, snapshot caches) and
//! compares. Meant for tests, fuzz targets and the simulation, after every step.
//!
//! What holds whenever no store call is in progress:
//! - every record sits in the shard its service name hashes to, under a non-empty service entry
//!   (`put` never leaves one empty; `lease_pass_shard` and `drop_missing` remove a service entry
//!   in the same critical section that removes its last record), whose revision is non-zero
//!   (every entry got its first record through `put`, which assigns a revision from a counter
//!   that starts at 1) and not above the store's revision counter;
//! - a record's `key_hash` is `key_hash(name, cluster, ip, port)` and its `owner` is the owner of
//!   `ip:port` under the current view (`set_ownership` rewrites every owner);
//! - a record's cluster is one of its service's interned clusters;
//! - per shard, per owner, the digest equals the sum over the live records with that cached
//!   owner (owners with no live records may keep an all-zero digest);
//! - the `live` counter is the number of live records;
//! - a service's cached snapshot, once built, decodes to exactly its live instances, in the
//!   snapshot order, at the service's revision;
//! - a service's change log, if it has one, is bounded, its revisions never decrease and lie
//!   between its floor and the service's revision, and it names only clusters of the service.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::hash::HashMap;
use bytes::Bytes;

use super::digest::bucket_of;
use super::record::{IpKey, IpRef};
use super::{Digest, InstanceId, InstanceIdRef, Record, Service, Store, id_text};
use crate::model::DIGEST_BUCKETS;
use crate::model::NodeId;
use crate::model::key_hash;
use crate::model::{InstanceView, ServiceName, ServiceSnapshot, Text};
use crate::wire::{Message, Opcode};

/// At most this many problems are listed in one error (the first ones usually explain the rest).
const PROBLEMS_MAX: usize = 32;

/// `namespace/group/service cluster ip:port`, the way every message here names a key.
fn key_name(name: &ServiceName, id: InstanceIdRef) -> String {
    format!("{name} {} {}:{}", id.cluster, id.ip, id.port)
}

struct Problems {
    list: Vec<String>,
    more: usize,
}

impl Problems {
    fn push(&mut self, p: String) {
        if self.list.len() < PROBLEMS_MAX {
            self.list.push(p);
        } else {
            self.more += 1;
        }
    }

    fn into_result(self) -> Result<(), String> {
        if self.list.is_empty() {
            return Ok(());
        }
        let mut s = format!("{} store invariant(s) broken:", self.list.len() + self.more);
        for p in &self.list {
            let _ = write!(s, "\n  - {p}");
        }
        if self.more > 0 {
            let _ = write!(s, "\n  ... and {} more", self.more);
        }
        Err(s)
    }
}

impl Store {
    /// Recomputes every derived structure from the records and compares it with what the store
    /// maintains. `Err` lists the broken invariants, each naming the key (or shard and owner)
    /// concerned. Takes the ownership lock and then every shard's read lock at once, so it sees
    /// one consistent state even while other threads write (they wait).
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut p = Problems {
            list: Vec::new(),
            more: 0,
        };
        // Lock order as in `set_ownership`: the ownership lock, then the shards in order.
        // One guard only: a second read lock on the same thread can deadlock behind a writer.
        let ownership_guard = self.ownership.read().unwrap();
        let ownership = ownership_guard.clone();
        let shards: Vec<_> = self.shards.iter().map(|s| s.read().unwrap()).collect();
        let revisions = self.revisions.load(Ordering::Relaxed);
        let mut live = 0usize;

        for (index, shard) in shards.iter().enumerate() {
            let mut expected: HashMap<NodeId, Digest> = HashMap::default();
            // Per owner, per bucket: the live keys there, to name them when a bucket is off.
            let mut bucket_keys: HashMap<(NodeId, usize), Vec<String>> = HashMap::default();
            for (name, svc) in &shard.services {
                let name = &name.to_name();
                let here = format!("service {name} (shard {index})");
                let home = self.shard_index(name);
                if home != index {
                    p.push(format!("{here} belongs in shard {home}"));
                }
                if svc.instances.is_empty() {
                    p.push(format!("{here} is an empty entry"));
                }
                if svc.revision == 0 {
                    p.push(format!("{here} has revision 0 but holds records"));
                }
                if svc.revision > revisions {
                    p.push(format!(
                        "{here} has revision {} beyond the store's counter {revisions}",
                        svc.revision
                    ));
                }
                for (c, cluster) in svc.clusters.iter().enumerate() {
                    if svc.clusters[..c].contains(cluster) {
                        p.push(format!("{here}: cluster {cluster:?} is interned twice"));
                    }
                }
                for (id, r) in &svc.instances {
                    if id.cluster as usize >= svc.clusters.len() {
                        p.push(format!(
                            "{here}: a record's cluster index {} is beyond its {} clusters",
                            id.cluster,
                            svc.clusters.len()
                        ));
                        continue;
                    }
                    let text = id_text(&svc.clusters, id);
                    let key = key_name(name, text.view());
                    check_record(&mut p, &ownership, svc, name, id, r, &key);
                    if r.alive {
                        live += 1;
                        expected
                            .entry(r.owner)
                            .or_default()
                            .add(r.key_hash, r.digest_term());
                        bucket_keys
                            .entry((r.owner, bucket_of(r.key_hash)))
                            .or_default()
                            .push(key);
                    }
                }
                if let Some(cached) = svc.cache.get() {
                    check_snapshot(&mut p, svc, name, cached, &here);
                }
                if let Some(log) = &svc.log {
                    check_log(&mut p, svc, log, &here);
                }
            }
            compare_digests(&mut p, index, &shard.digests, &expected, &bucket_keys);
            if shard.early_evidence.len() > super::EARLY_EVIDENCE_MAX {
                p.push(format!(
                    "shard {index} keeps {} early evidence entries, beyond its bound",
                    shard.early_evidence.len()
                ));
            }
        }

        let counted = self.live.load(Ordering::Relaxed);
        if counted != live {
            p.push(format!(
                "live counter is {counted} but {live} live records are stored"
            ));
        }
        drop(shards);
        drop(ownership_guard);
        p.into_result()
    }

    /// The index of the shard `name` hashes to.
    pub(super) fn shard_index(&self, name: &ServiceName) -> usize {
        let home = self.shard_of(name);
        self.shards
            .iter()
            .position(|s| std::ptr::eq(&**s, home))
            .expect("shard_of returns one of the shards")
    }
}

fn check_record(
    p: &mut Problems,
    ownership: &crate::ownership::Ownership,
    svc: &Service,
    name: &ServiceName,
    id: &InstanceId,
    r: &Record,
    key: &str,
) {
    let text = id_text(&svc.clusters, id);
    let view = text.view();
    let kh = key_hash(name, view.cluster, view.ip, view.port);
    if r.key_hash != kh {
        p.push(format!(
            "{key}: cached key_hash {:#018x}, recomputed {kh:#018x}",
            r.key_hash
        ));
    }
    let owner = ownership.owner(view.ip, view.port);
    if r.owner != owner {
        p.push(format!(
            "{key}: cached owner {}, but node {owner} owns it under the view {:?}",
            r.owner,
            ownership.live()
        ));
    }
    if let IpKey::Text(t) = &id.ip
        && IpRef::parse(t) != IpRef::Text(t)
    {
        p.push(format!(
            "{key}: a canonical IPv4 address is stored as text (it would be a second key)"
        ));
    }
    let found = svc.instances.get(&id.as_ref());
    if !found.is_some_and(|f| std::ptr::eq(f, r)) {
        p.push(format!(
            "{key}: a lookup of its own key does not find this record"
        ));
    }
}

fn compare_digests(
    p: &mut Problems,
    shard: usize,
    stored: &HashMap<NodeId, Digest>,
    expected: &HashMap<NodeId, Digest>,
    bucket_keys: &HashMap<(NodeId, usize), Vec<String>>,
) {
    let zero = Digest::new();
    let mut owners: Vec<NodeId> = stored.keys().chain(expected.keys()).copied().collect();
    owners.sort_unstable();
    owners.dedup();
    for owner in owners {
        let s = stored.get(&owner).unwrap_or(&zero);
        let e = expected.get(&owner).unwrap_or(&zero);
        for b in 0..DIGEST_BUCKETS {
            let (sb, eb) = (s.buckets[b], e.buckets[b]);
            if sb != eb {
                let keys = bucket_keys
                    .get(&(owner, b))
                    .map(|k| k.join(", "))
                    .unwrap_or_else(|| "none".into());
                p.push(format!(
                    "shard {shard}, owner {owner}, bucket {b}: digest holds count {} sum {:#018x}, \
                     the live records give count {} sum {:#018x} (live keys there: {keys})",
                    sb.count, sb.sum, eb.count, eb.sum
                ));
            }
        }
    }
}

fn check_log(p: &mut Problems, svc: &Service, log: &super::ChangeLog, here: &str) {
    if log.floor() > svc.revision {
        p.push(format!(
            "{here}: change log floor {} beyond the service's revision {}",
            log.floor(),
            svc.revision
        ));
    }
    if log.len() > super::changes::cap(usize::MAX) {
        p.push(format!("{here}: change log of {} entries", log.len()));
    }
    let mut prev = log.floor();
    for (rev, id) in log.entries() {
        if rev < prev || rev > svc.revision {
            p.push(format!(
                "{here}: change log entry at revision {rev} after {prev} (floor {}, service at {})",
                log.floor(),
                svc.revision
            ));
        }
        if id.cluster as usize >= svc.clusters.len() {
            p.push(format!(
                "{here}: change log names cluster index {} of {}",
                id.cluster,
                svc.clusters.len()
            ));
        }
        prev = rev;
    }
}

fn check_snapshot(p: &mut Problems, svc: &Service, name: &ServiceName, cached: &Bytes, here: &str) {
    let snap: ServiceSnapshot = match Message::decode(Opcode::QueryResult, cached.clone()) {
        Ok(Message::QueryResult(s)) => s,
        Ok(other) => {
            p.push(format!("{here}: cached snapshot decodes as {other:?}"));
            return;
        }
        Err(e) => {
            p.push(format!("{here}: cached snapshot does not decode: {e}"));
            return;
        }
    };
    if snap.name != *name {
        p.push(format!("{here}: cached snapshot names {}", snap.name));
    }
    if snap.revision != svc.revision {
        p.push(format!(
            "{here}: cached snapshot is at revision {}, the service at {}",
            snap.revision, svc.revision
        ));
    }
    let mut want: Vec<InstanceView> = svc
        .instances
        .iter()
        .filter(|(_, r)| r.alive)
        .map(|(id, r)| (id_text(&svc.clusters, id), r))
        .map(|(t, r)| InstanceView {
            cluster: Text::from(t.view().cluster),
            ip: Text::from(t.view().ip),
            port: t.port,
            weight: r.weight,
            healthy: r.reported_healthy(),
            enabled: r.enabled,
            metadata: r
                .meta()
                .iter()
                .map(|(k, v)| (Text::from(&**k), Text::from(&**v)))
                .collect(),
        })
        .collect();
    want.sort_by(|a, b| (&a.cluster, &a.ip, a.port).cmp(&(&b.cluster, &b.ip, b.port)));
    if snap.instances != want {
        let show = |v: &[InstanceView]| {
            v.iter()
                .map(|i| format!("{} {}:{}", i.cluster, i.ip, i.port))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut s = format!(
            "{here}: cached snapshot is stale: it lists [{}], the live records are [{}]",
            show(&snap.instances),
            show(&want)
        );
        for (a, b) in snap.instances.iter().zip(&want) {
            if a != b {
                let _ = write!(s, "; first difference: cached {a:?}, live {b:?}");
                break;
            }
        }
        p.push(s);
    }
}
