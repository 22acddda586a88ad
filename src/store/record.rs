//! What the store keeps per instance, in a compact owned form (no bytes of the frame that
//! carried the write stay alive), and the canonical key hash every node computes alike.

use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use crate::ownership::NodeId;
use crate::wire::{Lease, ServiceName, Version};

/// Metadata as stored: sorted by key, shared between the record and every encoding of it.
pub type StoredMetadata = Arc<[(Box<str>, Box<str>)]>;

/// The part of an instance's identity below its service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceId {
    /// Interned per service: a service has few clusters and many instances.
    pub cluster: Arc<str>,
    pub ip: Box<str>,
    pub port: u16,
}

impl InstanceId {
    pub fn as_ref(&self) -> InstanceIdRef<'_> {
        InstanceIdRef {
            cluster: &self.cluster,
            ip: &self.ip,
            port: self.port,
        }
    }
}

/// A borrowed [`InstanceId`] for lookups; hashes and compares like the owned one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstanceIdRef<'a> {
    pub cluster: &'a str,
    pub ip: &'a str,
    pub port: u16,
}

impl<'a> InstanceIdRef<'a> {
    /// The part of `key` below its service.
    pub fn of(key: &'a crate::wire::InstanceKey) -> InstanceIdRef<'a> {
        InstanceIdRef {
            cluster: &key.cluster,
            ip: &key.ip,
            port: key.port,
        }
    }
}

impl hashbrown::Equivalent<InstanceId> for InstanceIdRef<'_> {
    fn equivalent(&self, key: &InstanceId) -> bool {
        self.port == key.port && *self.ip == *key.ip && *self.cluster == *key.cluster
    }
}

/// One instance, alive or a tombstone.
#[derive(Debug, Clone)]
pub struct Record {
    pub version: Version,
    /// The canonical key hash ([`key_hash`]); picks the digest bucket.
    pub key_hash: u64,
    /// The owner under this node's current view; kept up to date by `Store::set_ownership`.
    pub owner: NodeId,
    pub alive: bool,
    /// As the client declared it.
    pub healthy: bool,
    pub enabled: bool,
    /// Lease or session lapsed: reported unhealthy until the next beat or register.
    pub lapsed: bool,
    pub weight: f64,
    pub lease: Lease,
    /// `node << 48 | session` of the connection a session-bound instance was registered on.
    pub session: u64,
    /// Local time (ms) of the last beat, takeover or receipt; for a tombstone, of the delete.
    pub touched_ms: u64,
    /// The client registered or beat this instance through this node (as its owner, or as the
    /// node the client is connected to, forwarding the beat) as of `touched_ms`: first-hand
    /// evidence that the client is alive. Local only (not synced), and kept across versions
    /// merged from peers (it is about the client, not the version) until the client's session
    /// here ends. Used after a partition heals, so that a tombstone made by a side that could
    /// not see the client does not delete an instance whose client kept beating on the other
    /// side (see `Store::merge`, `set_ownership`, [`Record::beaten_recently`]).
    pub renewed: bool,
    pub metadata: Option<StoredMetadata>,
}

impl Record {
    /// Healthy as readers see it.
    pub fn reported_healthy(&self) -> bool {
        self.healthy && !self.lapsed
    }

    /// The client beat this instance through this node within its unhealthy-after: an expiry
    /// made elsewhere is wrong about it.
    pub fn beaten_recently(&self, now_ms: u64) -> bool {
        self.alive
            && self.renewed
            && now_ms.saturating_sub(self.touched_ms) < self.lease.unhealthy_ms as u64
    }

    /// True when the two records say the same thing to readers and peers (version aside).
    pub fn same_content(&self, other: &Record) -> bool {
        self.alive == other.alive
            && self.healthy == other.healthy
            && self.enabled == other.enabled
            && self.lapsed == other.lapsed
            && self.weight.to_bits() == other.weight.to_bits()
            && self.lease == other.lease
            && self.metadata.as_deref().unwrap_or(&[]) == other.metadata.as_deref().unwrap_or(&[])
    }

    /// The digest term of this record: xxh3 of key hash, hlc and origin (wire-spec.md, "Digests").
    pub fn digest_term(&self) -> u64 {
        digest_term(self.key_hash, self.version)
    }
}

pub fn digest_term(key_hash: u64, version: Version) -> u64 {
    let mut buf = [0u8; 18];
    buf[..8].copy_from_slice(&key_hash.to_be_bytes());
    buf[8..16].copy_from_slice(&version.hlc.to_be_bytes());
    buf[16..].copy_from_slice(&version.origin.to_be_bytes());
    xxh3_64(&buf)
}

/// Longest canonical key: four names and an ip of at most 255 bytes, lengths, port.
const KEY_BYTES_MAX: usize = 5 * (2 + 255) + 2;

/// xxh3-64 of the key's canonical bytes, which are its wire encoding (an InstanceKey).
pub fn key_hash(name: &ServiceName, cluster: &str, ip: &str, port: u16) -> u64 {
    let mut buf = [0u8; KEY_BYTES_MAX];
    let mut at = 0;
    for s in [
        name.namespace.as_str(),
        name.group.as_str(),
        name.service.as_str(),
        cluster,
        ip,
    ] {
        let b = &s.as_bytes()[..s.len().min(255)];
        buf[at..at + 2].copy_from_slice(&(b.len() as u16).to_be_bytes());
        buf[at + 2..at + 2 + b.len()].copy_from_slice(b);
        at += 2 + b.len();
    }
    buf[at..at + 2].copy_from_slice(&port.to_be_bytes());
    xxh3_64(&buf[..at + 2])
}

/// Sorts metadata by key, keeping the last value of a repeated key, and stores it compactly.
pub fn store_metadata<K: AsRef<str>, V: AsRef<str>>(meta: &[(K, V)]) -> Option<StoredMetadata> {
    if meta.is_empty() {
        return None;
    }
    let mut v: Vec<(Box<str>, Box<str>)> = meta
        .iter()
        .map(|(k, v)| (k.as_ref().into(), v.as_ref().into()))
        .collect();
    v.reverse();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.dedup_by(|later, earlier| later.0 == earlier.0);
    Some(v.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn key_hash_is_xxh3_of_the_wire_encoded_key() {
        let name = ServiceName::new("public", "DEFAULT_GROUP", "orders");
        let mut wire = BytesMut::new();
        crate::wire::encode_key_parts(&mut wire, &name, "DEFAULT", "10.0.0.1", 8080);
        assert_eq!(key_hash(&name, "DEFAULT", "10.0.0.1", 8080), xxh3_64(&wire));
    }

    #[test]
    fn metadata_is_sorted_and_last_value_wins() {
        let m = store_metadata(&[("b", "1"), ("a", "2"), ("b", "3")]).unwrap();
        let got: Vec<(&str, &str)> = m.iter().map(|(k, v)| (&**k, &**v)).collect();
        assert_eq!(got, vec![("a", "2"), ("b", "3")]);
    }
}
