//! What the store keeps per instance, in a compact owned form (no bytes of the frame that
//! carried the write stay alive), and the canonical key hash every node computes alike.

use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use crate::model::NodeId;
use crate::model::{Lease, Version};

/// Metadata as stored: sorted by key, shared between the record and every encoding of it.
/// A thin pointer (the slice's length lives behind it): most records carry none, and the
/// field is paid for by every record.
pub type StoredMetadata = Arc<Box<[(Box<str>, Box<str>)]>>;

/// The part of an instance's identity below its service, as stored: the cluster as an index
/// into its service's cluster names (a service has few clusters and many instances), and an
/// address in canonical IPv4 text as its four bytes (no allocation for the common case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceId {
    pub ip: IpKey,
    pub cluster: u32,
    pub port: u16,
}

/// An instance's address as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpKey {
    /// Text that is exactly the canonical dotted quad of these bytes.
    V4([u8; 4]),
    /// Any other text (IPv6, a host name, a non-canonical IPv4 spelling), as sent.
    Text(Box<str>),
}

/// A borrowed [`InstanceId`] for lookups; hashes and compares like the owned one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRef<'a> {
    pub ip: IpRef<'a>,
    pub cluster: u32,
    pub port: u16,
}

/// A borrowed [`IpKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpRef<'a> {
    V4([u8; 4]),
    Text(&'a str),
}

impl InstanceId {
    pub fn as_ref(&self) -> IdRef<'_> {
        IdRef {
            ip: match &self.ip {
                IpKey::V4(b) => IpRef::V4(*b),
                IpKey::Text(t) => IpRef::Text(t),
            },
            cluster: self.cluster,
            port: self.port,
        }
    }
}

impl std::hash::Hash for InstanceId {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_ref().hash(h)
    }
}

impl std::hash::Hash for IdRef<'_> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        match self.ip {
            IpRef::V4(b) => {
                h.write_u8(4);
                h.write(&b);
            }
            IpRef::Text(t) => {
                h.write_u8(0);
                h.write(t.as_bytes());
            }
        }
        h.write_u32(self.cluster);
        h.write_u16(self.port);
    }
}

impl hashbrown::Equivalent<InstanceId> for IdRef<'_> {
    fn equivalent(&self, key: &InstanceId) -> bool {
        *self == key.as_ref()
    }
}

impl<'a> IpRef<'a> {
    /// The stored form of address text: the four bytes when the text is their canonical
    /// dotted quad (so that formatting them gives the same text back), the text otherwise.
    pub fn parse(text: &'a str) -> IpRef<'a> {
        match canonical_v4(text) {
            Some(b) => IpRef::V4(b),
            None => IpRef::Text(text),
        }
    }

    pub fn to_owned(self) -> IpKey {
        match self {
            IpRef::V4(b) => IpKey::V4(b),
            IpRef::Text(t) => IpKey::Text(t.into()),
        }
    }

    /// The address as text (formatted on the stack for IPv4).
    pub fn text(self) -> IpText<'a> {
        match self {
            IpRef::Text(t) => IpText {
                buf: [0; 15],
                len: 0,
                text: Some(t),
            },
            IpRef::V4(b) => {
                let mut buf = [0u8; 15];
                let mut len = 0;
                for (i, octet) in b.iter().enumerate() {
                    if i > 0 {
                        buf[len] = b'.';
                        len += 1;
                    }
                    let (h, t, o) = (octet / 100, octet / 10 % 10, octet % 10);
                    if h > 0 {
                        buf[len] = b'0' + h;
                        len += 1;
                    }
                    if h > 0 || t > 0 {
                        buf[len] = b'0' + t;
                        len += 1;
                    }
                    buf[len] = b'0' + o;
                    len += 1;
                }
                IpText {
                    buf,
                    len: len as u8,
                    text: None,
                }
            }
        }
    }
}

/// An address as text: borrowed, or an IPv4 address formatted into a small buffer.
pub struct IpText<'a> {
    buf: [u8; 15],
    len: u8,
    text: Option<&'a str>,
}

impl IpText<'_> {
    /// The text's bytes (what orders a snapshot; no UTF-8 check on the way).
    pub fn as_bytes(&self) -> &[u8] {
        match self.text {
            Some(t) => t.as_bytes(),
            None => &self.buf[..self.len as usize],
        }
    }

    pub fn as_str(&self) -> &str {
        match self.text {
            Some(t) => t,
            None => std::str::from_utf8(&self.buf[..self.len as usize])
                .expect("a formatted IPv4 address is ASCII"),
        }
    }
}

/// The four bytes of `text` if it is an IPv4 address in canonical dotted-quad form (decimal
/// octets without leading zeros), else None.
fn canonical_v4(text: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = text.split('.');
    for slot in out.iter_mut() {
        let p = parts.next()?.as_bytes();
        if p.is_empty() || p.len() > 3 || (p.len() > 1 && p[0] == b'0') {
            return None;
        }
        let mut v: u32 = 0;
        for &c in p {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + (c - b'0') as u32;
        }
        *slot = u8::try_from(v).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// An instance's identity below its service, as text (what the wire and the key hash use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstanceIdRef<'a> {
    pub cluster: &'a str,
    pub ip: &'a str,
    pub port: u16,
}

impl<'a> InstanceIdRef<'a> {
    /// The part of `key` below its service.
    pub fn of(key: &'a crate::model::InstanceKey) -> InstanceIdRef<'a> {
        InstanceIdRef {
            cluster: &key.cluster,
            ip: &key.ip,
            port: key.port,
        }
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
    /// side (see `Store::merge`, [`Record::beaten_recently`]). It does *not* make a node
    /// re-stamp at handoff (that is [`Record::renewed_as_owner`]).
    pub renewed: bool,
    /// This node, as the owner, applied a register or beat to *this version* (cleared when a
    /// newer version is merged and at handoff): the narrower evidence that lets a node hand an
    /// instance off as a fresh write (`Store::set_ownership`). Register evidence noted while
    /// forwarding must not qualify: a re-stamp at handoff is newer than anything written
    /// meanwhile, so it would undo a deregistration made on the other side of a partition.
    pub renewed_as_owner: bool,
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
        self.alive && self.renewed && self.touched_within_unhealthy(now_ms)
    }

    /// This node kept the instance alive as its owner, on beats or a register of its client,
    /// within its unhealthy-after: handing it off, it writes it anew (see `Store::set_ownership`).
    pub fn renewed_here_as_owner(&self, now_ms: u64) -> bool {
        self.alive && self.renewed_as_owner && self.touched_within_unhealthy(now_ms)
    }

    /// Last touched less than the instance's unhealthy-after ago.
    fn touched_within_unhealthy(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.touched_ms) < self.lease.unhealthy_ms as u64
    }

    /// The metadata, sorted by key (empty when there is none).
    pub fn meta(&self) -> &[(Box<str>, Box<str>)] {
        self.metadata.as_deref().map_or(&[], |m| &m[..])
    }

    /// True when the two records say the same thing to readers and peers (version aside).
    pub fn same_content(&self, other: &Record) -> bool {
        self.alive == other.alive
            && self.healthy == other.healthy
            && self.enabled == other.enabled
            && self.lapsed == other.lapsed
            && self.weight.to_bits() == other.weight.to_bits()
            && self.lease == other.lease
            && self.meta() == other.meta()
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
    Some(Arc::new(v.into_boxed_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_ipv4_text_is_kept_as_bytes_and_it_formats_back_identically() {
        for t in [
            "0.0.0.0",
            "10.1.2.3",
            "255.255.255.255",
            "192.168.100.9",
            "1.20.100.0",
        ] {
            let ip = IpRef::parse(t);
            assert!(matches!(ip, IpRef::V4(_)), "{t}");
            assert_eq!(ip.text().as_str(), t);
        }
        // Same address, other spellings: distinct keys, kept as sent.
        for t in [
            "010.1.2.3",
            "10.1.2.03",
            "256.1.2.3",
            "1.2.3",
            "1.2.3.4.5",
            "1.2.3.",
            ".1.2.3",
            "a.b.c.d",
            "::1",
            "fe80::1",
            "host.example",
            "",
            " 1.2.3.4",
            "1.2.3.4 ",
            "+1.2.3.4",
            "1..2.3",
            "1234.1.1.1",
        ] {
            assert_eq!(IpRef::parse(t), IpRef::Text(t), "{t:?}");
            assert_eq!(IpRef::parse(t).text().as_str(), t);
        }
    }

    #[test]
    fn metadata_is_sorted_and_last_value_wins() {
        let m = store_metadata(&[("b", "1"), ("a", "2"), ("b", "3")]).unwrap();
        let got: Vec<(&str, &str)> = m.iter().map(|(k, v)| (&**k, &**v)).collect();
        assert_eq!(got, vec![("a", "2"), ("b", "3")]);
    }
}
