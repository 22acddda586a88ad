//! The records of one service: a vector sized to its contents, with a hash index of positions
//! once the service is large enough that a scan costs more than a hash.
//!
//! A per-service hash map would do, but its table grows by powers of two and is kept at most
//! 7/8 full: a service of 10 instances takes 16 slots of a full record each. At a million
//! instances in services of ~10 that slack is the largest part of a node's memory. Here a small
//! service costs exactly its records, and a large one its records plus 4 bytes a slot of index.

use std::hash::{BuildHasher, Hash};

use hashbrown::{Equivalent, HashTable};

use super::record::{InstanceId, Record};
use crate::hash::SeededState;

/// Services with more records than this get a hash index; smaller ones are scanned (a scan of
/// a few cache lines beats hashing the key).
const INDEX_FROM: usize = 16;

#[derive(Default)]
pub struct Instances {
    entries: Vec<(InstanceId, Record)>,
    /// Only above [`INDEX_FROM`] records; boxed, so that the many small services pay one
    /// pointer for it.
    index: Option<Box<Index>>,
}

/// Positions in `entries`, hashed by their key.
struct Index {
    slots: HashTable<u32>,
    hasher: SeededState,
}

impl Instances {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position<Q: Hash + Equivalent<InstanceId> + ?Sized>(&self, key: &Q) -> Option<usize> {
        match &self.index {
            None => self.entries.iter().position(|(k, _)| key.equivalent(k)),
            Some(index) => index
                .slots
                .find(index.hasher.hash_one(key), |&i| {
                    key.equivalent(&self.entries[i as usize].0)
                })
                .map(|&i| i as usize),
        }
    }

    pub fn get<Q: Hash + Equivalent<InstanceId> + ?Sized>(&self, key: &Q) -> Option<&Record> {
        self.position(key).map(|i| &self.entries[i].1)
    }

    pub fn get_mut<Q: Hash + Equivalent<InstanceId> + ?Sized>(
        &mut self,
        key: &Q,
    ) -> Option<&mut Record> {
        self.position(key).map(|i| &mut self.entries[i].1)
    }

    pub fn get_key_value<Q: Hash + Equivalent<InstanceId> + ?Sized>(
        &self,
        key: &Q,
    ) -> Option<(&InstanceId, &Record)> {
        self.position(key).map(|i| {
            let (k, r) = &self.entries[i];
            (k, r)
        })
    }

    /// Puts `rec` under `key` (made owned by `own` if it is new); answers the record it replaced
    /// and the record as stored. One lookup.
    pub fn upsert<Q: Hash + Equivalent<InstanceId> + ?Sized>(
        &mut self,
        key: &Q,
        own: impl FnOnce(&Q) -> InstanceId,
        rec: Record,
    ) -> (Option<Record>, &Record) {
        match self.position(key) {
            Some(at) => {
                let old = std::mem::replace(&mut self.entries[at].1, rec);
                (Some(old), &self.entries[at].1)
            }
            None => {
                self.insert_new(own(key), rec);
                (None, &self.entries[self.entries.len() - 1].1)
            }
        }
    }

    /// Inserts `rec` under `id`, which must not be present (look it up first).
    pub fn insert_new(&mut self, id: InstanceId, rec: Record) {
        debug_assert!(self.position(&id).is_none(), "insert_new of a present key");
        let len = self.entries.len();
        if len == self.entries.capacity() {
            // Grow by an eighth (at least one): a few more reallocations while a service
            // fills, in exchange for no slack worth mentioning once it has.
            self.entries.reserve_exact((len / 8).max(1));
        }
        self.entries.push((id, rec));
        match &mut self.index {
            Some(index) => {
                let Index { slots, hasher } = &mut **index;
                let entries = &self.entries;
                slots.insert_unique(hasher.hash_one(&entries[len].0), len as u32, |&i| {
                    hasher.hash_one(&entries[i as usize].0)
                });
            }
            None if self.entries.len() > INDEX_FROM => self.rebuild_index(),
            None => {}
        }
    }

    /// Removes the record under `key`; the last record takes its place.
    pub fn remove<Q: Hash + Equivalent<InstanceId> + ?Sized>(&mut self, key: &Q) -> Option<Record> {
        let at = self.position(key)?;
        let last = self.entries.len() - 1;
        if let Some(index) = &mut self.index {
            let h = index.hasher.hash_one(&self.entries[at].0);
            if let Ok(slot) = index.slots.find_entry(h, |&i| i as usize == at) {
                slot.remove();
            }
            if at != last {
                let h = index.hasher.hash_one(&self.entries[last].0);
                if let Some(slot) = index.slots.find_mut(h, |&i| i as usize == last) {
                    *slot = at as u32;
                }
            }
        }
        let (_, rec) = self.entries.swap_remove(at);
        self.shrink_after_removal();
        Some(rec)
    }

    /// Keeps only the records for which `f` answers true.
    pub fn retain(&mut self, mut f: impl FnMut(&InstanceId, &mut Record) -> bool) {
        let before = self.entries.len();
        self.entries.retain_mut(|(k, r)| f(k, r));
        if self.entries.len() != before {
            if self.entries.len() > INDEX_FROM {
                self.rebuild_index();
            } else {
                self.index = None;
            }
            self.shrink_after_removal();
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&InstanceId, &Record)> {
        self.entries.iter().map(|(k, r)| (k, r))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&InstanceId, &mut Record)> {
        self.entries.iter_mut().map(|(k, r)| (&*k, r))
    }

    pub fn values(&self) -> impl Iterator<Item = &Record> {
        self.entries.iter().map(|(_, r)| r)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Record> {
        self.entries.iter_mut().map(|(_, r)| r)
    }

    fn rebuild_index(&mut self) {
        let mut slots = HashTable::with_capacity(self.entries.len());
        let hasher = SeededState::default();
        let entries = &self.entries;
        for (i, (k, _)) in entries.iter().enumerate() {
            slots.insert_unique(hasher.hash_one(k), i as u32, |&j| {
                hasher.hash_one(&entries[j as usize].0)
            });
        }
        self.index = Some(Box::new(Index { slots, hasher }));
    }

    fn shrink_after_removal(&mut self) {
        if self.entries.capacity() > 2 * self.entries.len() + 1 {
            self.entries.shrink_to_fit();
        }
        if self.entries.len() <= INDEX_FROM / 2 {
            self.index = None;
        }
    }
}

impl<'a> IntoIterator for &'a Instances {
    type Item = (&'a InstanceId, &'a Record);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (InstanceId, Record)>,
        fn(&'a (InstanceId, Record)) -> (&'a InstanceId, &'a Record),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, r)| (k, r))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::model::{Lease, Version};
    use crate::store::record::IpRef;

    /// Distinct keys for distinct `n`: IPv4 and text addresses, two clusters, a few ports.
    fn id(n: u16) -> InstanceId {
        let ip = if n % 4 == 0 {
            IpRef::Text(Box::leak(format!("host-{n}").into_boxed_str())).to_owned()
        } else {
            IpRef::V4([10, 0, (n / 256) as u8, n as u8]).to_owned()
        };
        InstanceId {
            ip,
            cluster: (n % 3 == 0) as u32,
            port: 8000 + n % 7,
        }
    }

    fn rec(tag: u64) -> Record {
        Record {
            version: Version {
                hlc: tag,
                origin: 1,
            },
            key_hash: tag,
            owner: 1,
            alive: true,
            healthy: true,
            enabled: true,
            lapsed: false,
            weight: 1.0,
            lease: Lease::default(),
            session: 0,
            touched_ms: 0,
            renewed: false,
            renewed_as_owner: false,
            metadata: None,
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u16, u64),
        Remove(u16),
        /// Keep the records whose tag is not divisible by this.
        Retain(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u16..60, any::<u64>()).prop_map(|(k, t)| Op::Put(k, t)),
            2 => (0u16..60).prop_map(Op::Remove),
            1 => (2u64..5).prop_map(Op::Retain),
        ]
    }

    proptest! {
        /// Whatever the sequence of puts, removes and retains (across the size where the index
        /// comes and goes), every key is found exactly as a plain map would find it, by owned
        /// and by borrowed key.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec(op(), 1..300)) {
            let mut m = Instances::default();
            let mut model: BTreeMap<u16, u64> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Put(k, t) => {
                        match m.get_mut(&id(k)) {
                            Some(r) => *r = rec(t),
                            None => m.insert_new(id(k), rec(t)),
                        }
                        model.insert(k, t);
                    }
                    Op::Remove(k) => {
                        let got = m.remove(&id(k)).map(|r| r.key_hash);
                        prop_assert_eq!(got, model.remove(&k));
                    }
                    Op::Retain(d) => {
                        m.retain(|_, r| r.key_hash % d != 0);
                        model.retain(|_, t| *t % d != 0);
                    }
                }
                prop_assert_eq!(m.len(), model.len());
                for k in 0u16..60 {
                    let owned = id(k);
                    let borrowed = owned.as_ref();
                    let want = model.get(&k).copied();
                    prop_assert_eq!(m.get(&owned).map(|r| r.key_hash), want);
                    prop_assert_eq!(m.get(&borrowed).map(|r| r.key_hash), want);
                }
                prop_assert_eq!(m.iter().count(), model.len());
            }
        }
    }
}
