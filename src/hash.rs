//! The hash maps of the node, with one process-wide seed.
//!
//! The seed is random by default (so that keys chosen by clients cannot be crafted to collide),
//! and can be fixed once at start-up with [`set_seed`] so that a simulation iterates its maps
//! in the same order on every run and a failing seed replays exactly.

use std::hash::BuildHasher;
use std::sync::OnceLock;

use foldhash::fast::{FixedState, FoldHasher};

static SEED: OnceLock<u64> = OnceLock::new();

/// Fixes the seed of every map created afterwards. Returns false if the seed was already set
/// (or already drawn because a map was created first).
pub fn set_seed(seed: u64) -> bool {
    SEED.set(seed).is_ok()
}

fn seed() -> u64 {
    *SEED.get_or_init(|| {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("the OS random source is available");
        u64::from_ne_bytes(b)
    })
}

/// foldhash with the process-wide seed.
#[derive(Clone, Copy, Debug)]
pub struct SeededState(FixedState);

impl Default for SeededState {
    fn default() -> SeededState {
        SeededState(FixedState::with_seed(seed()))
    }
}

impl BuildHasher for SeededState {
    type Hasher = FoldHasher;
    fn build_hasher(&self) -> FoldHasher {
        self.0.build_hasher()
    }
}

pub type HashMap<K, V> = hashbrown::HashMap<K, V, SeededState>;
pub type HashSet<K> = hashbrown::HashSet<K, SeededState>;
