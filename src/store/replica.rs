//! What the cluster asks of the store: merging records by version (sync, pulls, snapshots,
//! handoffs), changing ownership and handing off what moved, the per-owner digests and the
//! records of the buckets that differ, dropping what an owner no longer has, and records
//! encoded for the wire.

use super::*;

impl Store {
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

    pub(super) fn merge_locked(
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

    pub(super) fn collect_chunks(&self, mut walk: chunks::RecordChunks) -> RecordBatch {
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
pub(super) fn record_len_after_name(cluster: &str, ip: &str, rec: &Record) -> usize {
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
