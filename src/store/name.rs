//! A service's name as the store keeps it: the three parts together, inline when short.
//!
//! A [`ServiceName`] is three [`Text`]s of 32 bytes each, each pointing at its own allocation:
//! as the key of 100,000 services that is ~150 bytes a service, and comparing a key touches
//! three places in memory. A [`StoredName`] holds the parts and their lengths in the map's own
//! slot when they add up to at most [`INLINE_MAX`] bytes (`public` / `DEFAULT_GROUP` / a 17-byte
//! service), in one allocation otherwise; comparing a short key then costs no memory access
//! beyond the slot. It
//! hashes exactly as the [`ServiceName`] it was made from, so the store's maps are looked up
//! with the name of a request as it is.

use std::hash::{Hash, Hasher};

use hashbrown::Equivalent;

use crate::model::{ServiceName, Text};

/// Names whose parts add up to at most this many bytes are kept inline; the value is 40 bytes
/// either way.
pub const INLINE_MAX: usize = 36;

/// Equal names are always in the same form (the form follows from the length, and unused
/// inline bytes are zero), so the derived equality is the names' equality.
#[derive(Clone, PartialEq, Eq)]
pub enum StoredName {
    /// The lengths of namespace, group and service, then the parts, then zeros.
    Inline([u8; 3], [u8; INLINE_MAX]),
    /// `[namespace len: u32 LE][group len: u32 LE][namespace][group][service]`.
    Boxed(Box<[u8]>),
}

/// A boxed name's length field at `at`.
fn len_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("four bytes")) as usize
}

impl StoredName {
    pub fn new(name: &ServiceName) -> StoredName {
        let parts = [
            name.namespace.as_bytes(),
            name.group.as_bytes(),
            name.service.as_bytes(),
        ];
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total <= INLINE_MAX {
            let mut bytes = [0u8; INLINE_MAX];
            let mut at = 0;
            for p in parts {
                bytes[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
            return StoredName::Inline(parts.map(|p| p.len() as u8), bytes);
        }
        let mut b = Vec::with_capacity(8 + total);
        b.extend_from_slice(&(parts[0].len() as u32).to_le_bytes());
        b.extend_from_slice(&(parts[1].len() as u32).to_le_bytes());
        for p in parts {
            b.extend_from_slice(p);
        }
        StoredName::Boxed(b.into_boxed_slice())
    }

    fn parts(&self) -> [&[u8]; 3] {
        let (ns, group, rest) = match self {
            StoredName::Inline([ns, group, svc], bytes) => {
                let (ns, group, svc) = (*ns as usize, *group as usize, *svc as usize);
                (ns, group, &bytes[..ns + group + svc])
            }
            StoredName::Boxed(b) => (len_at(b, 0), len_at(b, 4), &b[8..]),
        };
        [&rest[..ns], &rest[ns..ns + group], &rest[ns + group..]]
    }

    fn part(&self, i: usize) -> &str {
        std::str::from_utf8(self.parts()[i]).expect("made from the parts of a ServiceName")
    }

    pub fn namespace(&self) -> &str {
        self.part(0)
    }

    pub fn group(&self) -> &str {
        self.part(1)
    }

    pub fn service(&self) -> &str {
        self.part(2)
    }

    /// The name as the wire types carry it (three new allocations).
    pub fn to_name(&self) -> ServiceName {
        ServiceName {
            namespace: Text::from(self.namespace()),
            group: Text::from(self.group()),
            service: Text::from(self.service()),
        }
    }
}

/// As `ServiceName`'s derived `Hash`: each part as a byte slice, in order.
impl Hash for StoredName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for p in self.parts() {
            p.hash(state);
        }
    }
}

impl Equivalent<StoredName> for ServiceName {
    fn equivalent(&self, key: &StoredName) -> bool {
        let [ns, group, svc] = key.parts();
        self.service.as_bytes() == svc
            && self.group.as_bytes() == group
            && self.namespace.as_bytes() == ns
    }
}

impl std::fmt::Debug for StoredName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.namespace(),
            self.group(),
            self.service()
        )
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;
    use crate::hash::SeededState;
    use crate::model::NAME_LEN_MAX;

    #[test]
    fn a_stored_name_keeps_its_parts_and_hashes_as_the_name_it_came_from() {
        let long = "s".repeat(NAME_LEN_MAX);
        // Longer than the wire allows: a library caller may still hand one to the store.
        let longer = "l".repeat(70_000);
        let names = [
            ServiceName::new("public", "DEFAULT_GROUP", "orders"),
            // 36 bytes (inline) and 37 (boxed), alike in the first 36.
            ServiceName::new("public", "DEFAULT_GROUP", "seventeen-bytes-x"),
            ServiceName::new("public", "DEFAULT_GROUP", "seventeen-bytes-xy"),
            ServiceName::new("", "", ""),
            ServiceName::new("ab", "c", ""),
            ServiceName::new("a", "bc", ""),
            ServiceName::new(&long, &long, &long),
            ServiceName::new(&longer, "g", &longer),
            ServiceName::new("名前", "グループ", "サービス"),
        ];
        let h = SeededState::default();
        assert_eq!(std::mem::size_of::<StoredName>(), 40);
        for n in &names {
            let s = StoredName::new(n);
            let len = n.namespace.len() + n.group.len() + n.service.len();
            assert_eq!(
                matches!(s, StoredName::Inline(..)),
                len <= INLINE_MAX,
                "{n:?}"
            );
            assert_eq!(s.to_name(), *n);
            assert_eq!(h.hash_one(&s), h.hash_one(n), "{n:?}");
            for other in &names {
                assert_eq!(other.equivalent(&s), other == n, "{other:?} vs {n:?}");
            }
        }
    }
}
