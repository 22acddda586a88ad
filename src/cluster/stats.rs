//! Counters of the cluster machinery: what was synced, repaired, dropped. Read by tests, the
//! bench and logs; every repair is counted, as the design asks.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub struct Stats { $($(#[$doc])* pub $name: AtomicU64,)* }

        /// A copy of the counters at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct StatsSnapshot { $(pub $name: u64,)* }

        impl Stats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// SyncBatch frames sent (one per peer per batch).
    sync_frames_sent,
    /// Records sent in SyncBatch frames, counted once per batch (not per peer).
    sync_records_sent,
    /// SyncBatch frames not sent to a peer because it was down or its link full.
    sync_frames_dropped,
    /// Records this node wrote that were never put in a sync batch because the sync outbox was
    /// full (the flusher far behind); anti-entropy brings them to the peers.
    sync_records_dropped,
    sync_frames_received,
    /// Records applied (newer than what this node held) from sync, pull, load and handoff.
    records_applied,
    digests_sent,
    /// Bytes of digest frames sent, over all peers.
    digest_bytes_sent,
    /// Digests received whose buckets all matched.
    digests_matched,
    /// Digests received from a node with a different view of the live members (compared
    /// for nothing, deleted nothing).
    digest_view_mismatches,
    /// Pulls made because a digest differed.
    pulls,
    /// Buckets pulled, over all pulls.
    buckets_pulled,
    /// Records a pull brought that were newer than this node's copy.
    records_repaired,
    /// Records removed after a pull because their owner no longer had them.
    records_dropped_by_pull,
    /// Records sent back to their owner after a pull because this node held them at a newer
    /// version than the owner did.
    records_pushed_to_owner,
    /// Writes forwarded to their owner.
    forwards,
    forward_errors,
    /// Records handed off to a new owner after a membership change.
    records_handed_off,
    /// Changes of the live member set.
    view_changes,
    /// Records received in snapshots (loads).
    snapshot_records_loaded,
    /// Pull and snapshot requests answered `Overloaded` because the most answers this node
    /// streams at once were being streamed.
    streams_refused,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
