//! Who is responsible for an instance: rendezvous (highest-random-weight) hashing of the
//! instance's `ip:port` over the ids of the live members, with xxh3.
//!
//! Every member scores every key with `xxh3_64_with_seed("ip:port", node_id)`; the highest score
//! owns the key (ties, which need a 64-bit collision, go to the larger node id). A member that
//! leaves moves only its own keys to the others; a member that joins takes only the keys it
//! now scores highest on. All instances of one host:port share an owner, whatever the service.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::model::NodeId;
use crate::model::key::{owner_score, with_owner_key};

/// The rendezvous score of `node` for the key `ip:port`.
pub fn score(ip: &str, port: u16, node: NodeId) -> u64 {
    owner_score(ip, port, node)
}

/// One node's view of which members are live, and so of who owns what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    /// Live member ids, sorted, this node's own included.
    live: Vec<NodeId>,
    /// A hash of `live`: two nodes with the same view hash compute the same owners.
    view_hash: u64,
}

impl Ownership {
    pub fn new(mut live: Vec<NodeId>) -> Ownership {
        assert!(!live.is_empty(), "a view always contains the node itself");
        live.sort_unstable();
        live.dedup();
        let mut bytes = Vec::with_capacity(live.len() * 2);
        for id in &live {
            bytes.extend_from_slice(&id.to_be_bytes());
        }
        let view_hash = xxhash_rust::xxh3::xxh3_64(&bytes);
        Ownership { live, view_hash }
    }

    /// A standalone node owns everything.
    pub fn standalone(node: NodeId) -> Ownership {
        Ownership::new(vec![node])
    }

    pub fn live(&self) -> &[NodeId] {
        &self.live
    }

    pub fn view_hash(&self) -> u64 {
        self.view_hash
    }

    pub fn owner(&self, ip: &str, port: u16) -> NodeId {
        if self.live.len() == 1 {
            return self.live[0];
        }
        with_owner_key(ip, port, |key| {
            let mut best = (0u64, 0 as NodeId);
            for &node in &self.live {
                let s = xxh3_64_with_seed(key, node as u64);
                if (s, node) > best {
                    best = (s, node);
                }
            }
            best.1
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> impl Iterator<Item = (String, u16)> {
        (0..20_000u32).map(|i| {
            (
                format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                8080,
            )
        })
    }

    #[test]
    fn a_departure_moves_exactly_the_departed_nodes_keys() {
        let before = Ownership::new(vec![1, 2, 3, 4, 5]);
        let after = Ownership::new(vec![1, 2, 4, 5]);
        let mut moved = 0;
        for (ip, port) in keys() {
            let (a, b) = (before.owner(&ip, port), after.owner(&ip, port));
            if a == 3 {
                moved += 1;
                assert_ne!(b, 3);
            } else {
                assert_eq!(a, b, "{ip}:{port} moved from {a} to {b} though 3 left");
            }
        }
        // Roughly a fifth of the keys were node 3's.
        assert!((3_000..5_000).contains(&moved), "moved {moved}");
    }

    #[test]
    fn a_join_moves_only_keys_to_the_joining_node() {
        let before = Ownership::new(vec![1, 2, 3]);
        let after = Ownership::new(vec![1, 2, 3, 9]);
        for (ip, port) in keys() {
            let (a, b) = (before.owner(&ip, port), after.owner(&ip, port));
            assert!(a == b || b == 9, "{ip}:{port} moved from {a} to {b}");
        }
    }

    #[test]
    fn ownership_spreads_keys_evenly() {
        let o = Ownership::new(vec![1, 2, 3]);
        let mut counts = [0u32; 4];
        for (ip, port) in keys() {
            counts[o.owner(&ip, port) as usize] += 1;
        }
        for c in &counts[1..] {
            assert!((6_000..7_400).contains(c), "uneven: {counts:?}");
        }
    }

    #[test]
    fn view_hash_depends_only_on_the_live_set() {
        assert_eq!(
            Ownership::new(vec![3, 1, 2]).view_hash(),
            Ownership::new(vec![1, 2, 3, 3]).view_hash()
        );
        assert_ne!(
            Ownership::new(vec![1, 2]).view_hash(),
            Ownership::new(vec![1, 2, 3]).view_hash()
        );
    }
}
