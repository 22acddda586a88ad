//! The lease duty's side of the store: each pass marks the owned instances whose beats stopped
//! unhealthy, then removes them (tombstones), and drops tombstones past their grace; a node
//! that stalled re-grants the leases it owns instead of expiring everything on waking.

use super::*;

impl Store {
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
    pub(super) fn due_ms(&self, r: &Record) -> u64 {
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
}
