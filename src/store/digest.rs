//! Bucketed, order-independent digests of the records an owner holds.
//!
//! A record falls into bucket `key_hash % DIGEST_BUCKETS`. A bucket holds the number of live
//! records in it and the wrapping sum of their digest terms (xxh3 of key hash, hlc and origin).
//! Adding and removing a record is O(1), so the digest is maintained on every write and a whole
//! digest is built in O(buckets), whatever the number of instances. Two copies agree on a bucket
//! exactly when they hold the same (key, version) pairs there, up to a 64-bit collision.

use crate::model::DIGEST_BUCKETS;

/// The bucket of a record (a verify round sends 12 bytes per bucket: 12 KiB per owner).
pub fn bucket_of(key_hash: u64) -> usize {
    (key_hash % DIGEST_BUCKETS as u64) as usize
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    pub count: u32,
    pub sum: u64,
}

/// The digest of one owner's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub buckets: Box<[Bucket]>,
}

impl Default for Digest {
    fn default() -> Digest {
        Digest::new()
    }
}

impl Digest {
    pub fn new() -> Digest {
        Digest {
            buckets: vec![Bucket::default(); DIGEST_BUCKETS].into_boxed_slice(),
        }
    }

    pub fn add(&mut self, key_hash: u64, term: u64) {
        let b = &mut self.buckets[bucket_of(key_hash)];
        b.count = b.count.wrapping_add(1);
        b.sum = b.sum.wrapping_add(term);
    }

    pub fn remove(&mut self, key_hash: u64, term: u64) {
        let b = &mut self.buckets[bucket_of(key_hash)];
        b.count = b.count.wrapping_sub(1);
        b.sum = b.sum.wrapping_sub(term);
    }

    /// Adds another digest's buckets into this one (summing shards).
    pub fn merge(&mut self, other: &Digest) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            a.count = a.count.wrapping_add(b.count);
            a.sum = a.sum.wrapping_add(b.sum);
        }
    }

    pub fn total_count(&self) -> u64 {
        self.buckets.iter().map(|b| b.count as u64).sum()
    }

    /// The buckets where the two digests differ.
    pub fn diff(&self, other: &Digest) -> BucketSet {
        let mut set = BucketSet::default();
        for (i, (a, b)) in self.buckets.iter().zip(other.buckets.iter()).enumerate() {
            if a != b {
                set.insert(i);
            }
        }
        set
    }
}

/// A set of bucket numbers, as a bitmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSet {
    bits: [u64; DIGEST_BUCKETS / 64],
}

impl Default for BucketSet {
    fn default() -> BucketSet {
        BucketSet {
            bits: [0; DIGEST_BUCKETS / 64],
        }
    }
}

impl BucketSet {
    pub fn insert(&mut self, b: usize) {
        self.bits[b / 64] |= 1 << (b % 64);
    }

    pub fn contains(&self, b: usize) -> bool {
        b < DIGEST_BUCKETS && self.bits[b / 64] & (1 << (b % 64)) != 0
    }

    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..DIGEST_BUCKETS).filter(|b| self.contains(*b))
    }
}

impl FromIterator<usize> for BucketSet {
    fn from_iter<I: IntoIterator<Item = usize>>(iter: I) -> BucketSet {
        let mut s = BucketSet::default();
        for b in iter {
            if b < DIGEST_BUCKETS {
                s.insert(b);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_order_independent_and_reversible() {
        let mut a = Digest::new();
        let mut b = Digest::new();
        for i in 0..100u64 {
            a.add(i * 7919, i ^ 0xdead);
        }
        for i in (0..100u64).rev() {
            b.add(i * 7919, i ^ 0xdead);
        }
        assert_eq!(a, b);
        b.remove(5 * 7919, 5 ^ 0xdead);
        let d = a.diff(&b);
        assert_eq!(d.iter().collect::<Vec<_>>(), vec![bucket_of(5 * 7919)]);
        b.add(5 * 7919, 5 ^ 0xdead);
        assert!(a.diff(&b).is_empty());
    }
}
