//! Records encoded a chunk at a time, for the answers a node streams to a peer (a pull's, a
//! snapshot's): the answer costs memory for one chunk, never for all it carries, and a chunk
//! holds its shard's read lock only while it is encoded, never while it is sent.
//!
//! A walk must not miss a record that stays unchanged while it runs, although records come and
//! go between chunks (positions in the store's vectors and maps move when they do). So a chunk
//! is not "the next n records" but the records of one shard whose key hash lies in a range: the
//! set a range selects does not depend on where records sit. Before a shard is walked, the size
//! of its selected records is measured and the hash space cut into as many equal ranges as
//! chunks of [`CHUNK_BYTES`] it takes; key hashes are uniform, so each range holds about that
//! much. A range that turns out to hold more than [`CHUNK_BYTES_MAX`] (the shard grew meanwhile,
//! or a few records are very large) is abandoned and split in two.
//!
//! A record that changes during the walk is sent at the version the walk finds, or not at all
//! if it moved to a part already walked; the sync that carries the change covers it, as it does
//! for a snapshot built whole.

use super::digest::{BucketSet, bucket_of};
use super::{Record, RecordBatch, SHARDS, Shard, Store, id_text};
use crate::model::NodeId;

/// A chunk aims at this many bytes of encoded records: the size of one Records frame.
pub const CHUNK_BYTES: usize = 1 << 20;
/// A chunk never holds more than this (plus one record): a range that would is split, so a
/// walk's memory stays bounded whatever the data.
pub const CHUNK_BYTES_MAX: usize = 2 * CHUNK_BYTES;

/// Which records a walk carries.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Every record, tombstones included (a snapshot).
    All,
    /// The records `owner` owns (tombstones included) in these digest buckets (a pull).
    Owned { owner: NodeId, buckets: BucketSet },
}

impl Selection {
    fn selects(&self, r: &Record) -> bool {
        match self {
            Selection::All => true,
            Selection::Owned { owner, buckets } => {
                r.owner == *owner && buckets.contains(bucket_of(r.key_hash))
            }
        }
    }
}

/// A walk over the selected records of some shards, a chunk at a time.
pub struct RecordChunks {
    selection: Selection,
    /// The shard whose ranges are in `ranges`, and the next one to plan.
    shard: usize,
    next_shard: usize,
    end_shard: usize,
    /// Inclusive key-hash ranges of `shard` still to walk; the next one last.
    ranges: Vec<(u64, u64)>,
    /// The size a chunk aims at; it never holds more than twice that (plus one record).
    chunk_bytes: usize,
}

impl RecordChunks {
    /// A walk over every shard.
    pub fn new(selection: Selection) -> RecordChunks {
        RecordChunks::of_shards(selection, 0..SHARDS)
    }

    /// A walk over some shards.
    pub fn of_shards(selection: Selection, shards: std::ops::Range<usize>) -> RecordChunks {
        RecordChunks {
            selection,
            shard: shards.start,
            next_shard: shards.start,
            end_shard: shards.end.min(SHARDS),
            ranges: Vec::new(),
            chunk_bytes: CHUNK_BYTES,
        }
    }

    /// The same walk aiming at chunks of `chunk_bytes` (tests use small ones).
    pub fn with_chunk_bytes(mut self, chunk_bytes: usize) -> RecordChunks {
        self.chunk_bytes = chunk_bytes.max(1);
        self
    }

    /// The next chunk (never empty), or `None` when the walk is done.
    pub fn next_chunk(&mut self, store: &Store) -> Option<RecordBatch> {
        loop {
            let Some((lo, hi)) = self.ranges.pop() else {
                if self.next_shard >= self.end_shard {
                    return None;
                }
                self.shard = self.next_shard;
                self.next_shard += 1;
                let bytes = store.selected_bytes(self.shard, &self.selection);
                self.ranges = cut_hash_space(bytes.div_ceil(self.chunk_bytes));
                continue;
            };
            // A single hash value cannot be split further: it holds one record (two only if
            // their 64-bit hashes collide), taken whatever its size.
            let cap = if lo == hi {
                usize::MAX
            } else {
                self.chunk_bytes * (CHUNK_BYTES_MAX / CHUNK_BYTES)
            };
            match store.encode_range(self.shard, &self.selection, lo, hi, cap) {
                Some(batch) if batch.is_empty() => {}
                Some(batch) => return Some(batch),
                None => {
                    let mid = lo + (hi - lo) / 2;
                    self.ranges.push((mid + 1, hi));
                    self.ranges.push((lo, mid));
                }
            }
        }
    }
}

/// `n` equal inclusive ranges covering the whole u64 space, the lowest last (popped first).
fn cut_hash_space(n: usize) -> Vec<(u64, u64)> {
    if n == 0 {
        return Vec::new();
    }
    let width = (u64::MAX / n as u64).max(1);
    let mut ranges = Vec::with_capacity(n);
    let mut lo = 0u64;
    for i in 0..n {
        let hi = if i + 1 == n {
            u64::MAX
        } else {
            lo + (width - 1)
        };
        ranges.push((lo, hi));
        if hi == u64::MAX {
            break;
        }
        lo = hi + 1;
    }
    ranges.reverse();
    ranges
}

impl Store {
    /// Bytes the selected records of one shard take encoded.
    fn selected_bytes(&self, shard: usize, selection: &Selection) -> usize {
        let shard = self.shards[shard].read().unwrap();
        let mut bytes = 0;
        for (name, svc) in &shard.services {
            let name_len = 6 + name.namespace().len() + name.group().len() + name.service().len();
            for (id, r) in svc.instances.iter() {
                if selection.selects(r) {
                    let t = id_text(&svc.clusters, id);
                    let v = t.view();
                    bytes += name_len + super::record_len_after_name(v.cluster, v.ip, r);
                }
            }
        }
        bytes
    }

    /// The selected records of one shard whose key hash is in `lo..=hi`, encoded; `None` as soon
    /// as they pass `cap` bytes.
    fn encode_range(
        &self,
        shard: usize,
        selection: &Selection,
        lo: u64,
        hi: u64,
        cap: usize,
    ) -> Option<RecordBatch> {
        let shard: &Shard = &self.shards[shard].read().unwrap();
        let mut batch = RecordBatch::default();
        for (stored, svc) in &shard.services {
            let mut name = None;
            for (id, r) in svc.instances.iter() {
                if !(lo..=hi).contains(&r.key_hash) || !selection.selects(r) {
                    continue;
                }
                let name = name.get_or_insert_with(|| stored.to_name());
                batch.push(name, id_text(&svc.clusters, id).view(), r);
                if batch.bytes.len() > cap {
                    return None;
                }
            }
        }
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::model::{Instance, InstanceKey, ServiceName, Text};
    use crate::wire::{Reader, SyncRecord};
    use std::collections::BTreeSet;
    use std::sync::Arc;

    #[test]
    fn the_ranges_cover_the_hash_space_once() {
        for n in [1, 2, 3, 7, 64, 1000] {
            let mut r = cut_hash_space(n);
            assert_eq!(r.len(), n);
            r.reverse();
            assert_eq!(r[0].0, 0);
            assert_eq!(r[n - 1].1, u64::MAX);
            for w in r.windows(2) {
                assert_eq!(w[0].1 + 1, w[1].0, "no gap, no overlap");
            }
        }
        assert!(cut_hash_space(0).is_empty());
    }

    fn store() -> Store {
        Store::new(
            1,
            Clock::starting_at(1_000_000),
            Arc::new(super::super::NoObserver),
        )
    }

    fn svc(n: usize) -> ServiceName {
        ServiceName::new("public", "DEFAULT_GROUP", &format!("svc-{n}"))
    }

    fn register(s: &Store, name: &ServiceName, i: usize, meta_bytes: usize) -> InstanceKey {
        let key = InstanceKey {
            service: name.clone(),
            cluster: Text::from(if i % 3 == 0 { "DEFAULT" } else { "c2" }),
            ip: Text::from(format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)),
            port: 8080,
        };
        let mut inst = Instance::new(key.clone());
        if meta_bytes > 0 {
            inst.metadata = vec![(Text::from("k"), Text::from("v".repeat(meta_bytes)))];
        }
        s.register(&inst, 0);
        key
    }

    fn keys(batch: &RecordBatch) -> Vec<(InstanceKey, bool)> {
        let mut r = Reader::new(batch.bytes.clone().freeze());
        let v = (0..batch.count)
            .map(|_| {
                let rec = SyncRecord::decode(&mut r).unwrap();
                (rec.key, rec.alive)
            })
            .collect();
        r.finish().unwrap();
        v
    }

    /// Every record of the store, tombstones included, by a plain visit.
    fn everything(s: &Store) -> BTreeSet<String> {
        let mut all = BTreeSet::new();
        s.for_each_record(|name, id, _| {
            all.insert(format!("{name} {} {}:{}", id.cluster, id.ip, id.port));
        });
        all
    }

    fn walked(s: &Store, mut walk: RecordChunks, chunk_cap: usize) -> Vec<String> {
        let mut got = Vec::new();
        while let Some(chunk) = walk.next_chunk(s) {
            assert!(!chunk.is_empty());
            // One record may pass the cap (it is taken whole); no chunk holds more.
            assert!(
                chunk.bytes.len() <= chunk_cap + 2048,
                "{} bytes",
                chunk.bytes.len()
            );
            for (k, _) in keys(&chunk) {
                got.push(format!("{} {} {}:{}", k.service, k.cluster, k.ip, k.port));
            }
        }
        got
    }

    #[test]
    fn the_measured_size_is_the_encoded_size() {
        let s = store();
        for i in 0..300 {
            register(&s, &svc(i % 7), i, (i * 37) % 500);
        }
        for i in (0..300).step_by(5) {
            let key = InstanceKey {
                service: svc(i % 7),
                cluster: Text::from(if i % 3 == 0 { "DEFAULT" } else { "c2" }),
                ip: Text::from(format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)),
                port: 8080,
            };
            assert!(s.deregister(&key), "a tombstone");
        }
        let measured: usize = (0..SHARDS)
            .map(|i| s.selected_bytes(i, &Selection::All))
            .sum();
        let encoded: usize = (0..SHARDS).map(|i| s.encode_shard(i).bytes.len()).sum();
        assert_eq!(measured, encoded);
    }

    #[test]
    fn a_walk_yields_every_record_once_in_bounded_chunks() {
        let s = store();
        for i in 0..2000 {
            register(&s, &svc(i % 5), i, (i * 13) % 300);
        }
        let walk = RecordChunks::new(Selection::All).with_chunk_bytes(4096);
        let got = walked(&s, walk, 2 * 4096);
        let set: BTreeSet<String> = got.iter().cloned().collect();
        assert_eq!(set.len(), got.len(), "no record twice");
        assert_eq!(set, everything(&s));
    }

    #[test]
    fn a_shard_that_grows_during_the_walk_is_split_and_nothing_is_missed() {
        let s = store();
        let name = svc(1);
        let shard = super::super::shard_index(&name);
        for i in 0..200 {
            register(&s, &name, i, 0);
        }
        let before = everything(&s);
        let mut walk =
            RecordChunks::of_shards(Selection::All, shard..shard + 1).with_chunk_bytes(2048);
        let mut got = BTreeSet::new();
        let first = walk.next_chunk(&s).expect("a first chunk");
        for (k, _) in keys(&first) {
            got.insert(format!("{} {} {}:{}", k.service, k.cluster, k.ip, k.port));
        }
        // Ten times as many records land after the shard was measured: its ranges now hold far
        // more than a chunk, and are split rather than encoded whole.
        for i in 200..2200 {
            register(&s, &name, i, 200);
        }
        for k in walked(&s, walk, 2 * 2048) {
            got.insert(k);
        }
        assert!(
            before.is_subset(&got),
            "every record there all along was sent"
        );
    }

    #[test]
    fn a_pull_walk_yields_exactly_the_owned_records_of_the_buckets() {
        let s = store();
        let mut wanted = BTreeSet::new();
        let buckets: BucketSet = (0..crate::model::DIGEST_BUCKETS).step_by(3).collect();
        for i in 0..1000 {
            let k = register(&s, &svc(i % 4), i, 0);
            let h = crate::model::key_hash(&k.service, &k.cluster, &k.ip, k.port);
            if buckets.contains(bucket_of(h)) {
                wanted.insert(format!("{} {} {}:{}", k.service, k.cluster, k.ip, k.port));
            }
        }
        let walk = RecordChunks::new(Selection::Owned {
            owner: 1,
            buckets: buckets.clone(),
        })
        .with_chunk_bytes(1024);
        let got = walked(&s, walk, 2048);
        let set: BTreeSet<String> = got.iter().cloned().collect();
        assert_eq!(set.len(), got.len());
        assert_eq!(set, wanted);
        let other = RecordChunks::new(Selection::Owned { owner: 2, buckets });
        assert!(walked(&s, other, CHUNK_BYTES_MAX).is_empty());
    }
}
