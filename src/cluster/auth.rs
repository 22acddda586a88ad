//! Peer authentication: a challenge-response over HMAC-SHA256 of fresh nonces with the shared
//! cluster token, in both directions, so that neither side ever sends the token and a recorded
//! handshake cannot be replayed (the other side's nonce is new every time).
//!
//! ```text
//! dialer   → PeerHello     { node_id, max_version, cluster_hash, nonce_d }
//! acceptor → PeerChallenge { node_id, nonce_a, mac_a = HMAC(token, "distro-acceptor" ‖ nonce_d ‖ nonce_a ‖ id_a) }
//! dialer   → PeerAuth      { mac_d = HMAC(token, "distro-dialer" ‖ nonce_a ‖ nonce_d ‖ id_d) }
//! acceptor → Ack(0)        or Error(Unauthorized) and close
//! ```

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::wire::{MAC_LEN, NONCE_LEN};

type HmacSha256 = Hmac<Sha256>;

pub const DIALER_LABEL: &[u8] = b"distro-dialer";
pub const ACCEPTOR_LABEL: &[u8] = b"distro-acceptor";

/// Who this node is to its peers.
#[derive(Clone)]
pub struct Identity {
    pub node_id: u16,
    /// xxh3-64 of the cluster's name ([`cluster_hash`]): nodes of different clusters refuse
    /// each other. Not the member list, which may differ between members while a change of it
    /// is being rolled out.
    pub cluster_hash: u64,
    /// The shared token; empty when none is configured (loopback-only clusters).
    pub token: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .field("cluster_hash", &self.cluster_hash)
            .finish_non_exhaustive()
    }
}

fn hmac(token: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(token).expect("HMAC takes keys of any length")
}

/// The MAC one side sends: over its label, the other side's nonce, its own nonce, its id.
pub fn mac(
    token: &[u8],
    label: &[u8],
    their_nonce: &[u8],
    my_nonce: &[u8],
    my_id: u16,
) -> [u8; MAC_LEN] {
    let mut m = hmac(token);
    m.update(label);
    m.update(their_nonce);
    m.update(my_nonce);
    m.update(&my_id.to_be_bytes());
    m.finalize().into_bytes().into()
}

/// Checks a MAC in constant time.
pub fn verify(
    token: &[u8],
    label: &[u8],
    their_nonce: &[u8],
    my_nonce: &[u8],
    my_id: u16,
    mac: &[u8],
) -> bool {
    let mut m = hmac(token);
    m.update(label);
    m.update(their_nonce);
    m.update(my_nonce);
    m.update(&my_id.to_be_bytes());
    m.verify_slice(mac).is_ok()
}

/// A fresh random nonce.
pub fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).expect("the OS random source is available");
    n
}

/// The identity of a cluster in the handshake: xxh3-64 of its name (`cluster_name`).
pub fn cluster_hash(cluster_name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(cluster_name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_verifies_only_with_the_same_token_nonces_and_id() {
        let (a, b) = (nonce(), nonce());
        assert_ne!(a, b);
        let m = mac(b"secret-token", DIALER_LABEL, &a, &b, 7);
        assert!(verify(b"secret-token", DIALER_LABEL, &a, &b, 7, &m));
        assert!(!verify(b"other-token!", DIALER_LABEL, &a, &b, 7, &m));
        assert!(!verify(b"secret-token", ACCEPTOR_LABEL, &a, &b, 7, &m));
        assert!(!verify(b"secret-token", DIALER_LABEL, &b, &a, 7, &m));
        assert!(!verify(b"secret-token", DIALER_LABEL, &a, &b, 8, &m));
    }

    #[test]
    fn the_cluster_hash_is_the_xxh3_of_the_name() {
        // wire-spec.md §11.2's vector.
        assert_eq!(cluster_hash("distro"), 0xe8bf_1463_1cc7_613f);
        assert_ne!(cluster_hash("distro"), cluster_hash("distro-staging"));
    }
}
