//! A service's name as the store keeps it: the three parts in one allocation.
//!
//! A [`ServiceName`] is three [`Text`]s of 32 bytes each, each pointing at its own allocation:
//! as the key of 100,000 services that is ~150 bytes a service, and comparing a key touches
//! three places in memory. A [`StoredName`] is one pointer to `[ns len][group len][ns][group]
//! [service]` (every part is at most [`NAME_LEN_MAX`] = 255 bytes, so a length fits a byte), and
//! it hashes exactly as the [`ServiceName`] it was made from, so the store's maps are looked
//! up with the name of a request as it is.

use std::hash::{Hash, Hasher};

use hashbrown::Equivalent;

use crate::wire::{NAME_LEN_MAX, ServiceName, Text};

#[derive(Clone, PartialEq, Eq)]
pub struct StoredName(Box<[u8]>);

impl StoredName {
    pub fn new(name: &ServiceName) -> StoredName {
        let (ns, group, svc) = (
            name.namespace.as_bytes(),
            name.group.as_bytes(),
            name.service.as_bytes(),
        );
        // The decoder and the validator keep every part within NAME_LEN_MAX; a longer one here
        // is a bug, not input.
        assert!(
            ns.len() <= NAME_LEN_MAX && group.len() <= NAME_LEN_MAX,
            "a service name part longer than {NAME_LEN_MAX} bytes"
        );
        let mut b = Vec::with_capacity(2 + ns.len() + group.len() + svc.len());
        b.push(ns.len() as u8);
        b.push(group.len() as u8);
        b.extend_from_slice(ns);
        b.extend_from_slice(group);
        b.extend_from_slice(svc);
        StoredName(b.into_boxed_slice())
    }

    fn parts(&self) -> [&[u8]; 3] {
        let (ns, group) = (self.0[0] as usize, self.0[1] as usize);
        let rest = &self.0[2..];
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

    #[test]
    fn a_stored_name_keeps_its_parts_and_hashes_as_the_name_it_came_from() {
        let long = "s".repeat(NAME_LEN_MAX);
        let names = [
            ServiceName::new("public", "DEFAULT_GROUP", "orders"),
            ServiceName::new("", "", ""),
            ServiceName::new("ab", "c", ""),
            ServiceName::new("a", "bc", ""),
            ServiceName::new(&long, &long, &long),
            ServiceName::new("名前", "グループ", "サービス"),
        ];
        let h = SeededState::default();
        for n in &names {
            let s = StoredName::new(n);
            assert_eq!(s.to_name(), *n);
            assert_eq!(h.hash_one(&s), h.hash_one(n), "{n:?}");
            for other in &names {
                assert_eq!(other.equivalent(&s), other == n, "{other:?} vs {n:?}");
            }
        }
    }
}
