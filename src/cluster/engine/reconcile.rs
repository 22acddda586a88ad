//! What a pull does with the records of the buckets it pulled. The owner's records are merged
//! by version (last writer wins, in the store). Then, for each record this node holds in those
//! buckets under that owner:
//!
//! - the owner sent it at the same or a newer version: merged, nothing more to do;
//! - this node holds it at a newer version than the owner's (a write or delete whose handoff to
//!   the owner was lost, the other side of a healed partition): it goes back to the owner, whose
//!   next digest spreads it — otherwise the owner never learns it and every replica pulls the
//!   same buckets forever;
//! - the owner does not have it at all, and it is live and younger than the retention of any
//!   tombstone that could have deleted it: had the owner deleted it, it would still hold the
//!   tombstone and have sent it. So the owner never learned of it (a handoff lost, or sent to
//!   a node whose view named another owner while a partition healed in steps), and dropping it
//!   would lose an acknowledged write: it goes back to the owner too;
//! - the owner does not have it and it is older than that: it may have been deleted and its
//!   tombstone collected, so it is dropped — but only if the owner has had time to learn of it
//!   (touched before the pull started, less a grace), only while the view is the one the digest
//!   was sent under, and only when no ownership change is recent (a record may still be on its
//!   way to a new owner).

use crate::hash::{HashMap, HashSet};

use super::Timing;
use super::verify::PullPlan;
use crate::clock::hlc_physical_ms;
use crate::model::{NodeId, Version};
use crate::store::TOMBSTONE_GRACE_MS;

/// A live record the owner lacks is sent back to it (not dropped) while its version is younger
/// than a tombstone's retention by at least this margin, which absorbs clock skew between nodes.
pub const UNKNOWN_RECORD_MARGIN_MS: u64 = 10_000;

/// What this node holds of one record, as far as the rules look at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub key_hash: u64,
    pub alive: bool,
    pub version: Version,
    /// Its lease's expire-after.
    pub expire_ms: u32,
}

/// What happens to a record this node holds after the pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// The owner has it (merged by version), or it is a tombstone the owner lacks.
    Keep,
    /// Sent back to the owner.
    PushBack,
    /// The owner lacks it and it is too old to be sent back: dropped if the pull may drop
    /// (see [`Reconcile::drop_touched_before`]) and it was touched early enough.
    DropIfStale,
}

/// One pull, from its plan to its end.
#[derive(Debug)]
pub struct Reconcile {
    pub plan: PullPlan,
    started_ms: u64,
    /// The owner's version of each record it sent, by key hash.
    theirs: HashMap<u64, Version>,
    /// Key hashes that are not dropped: those the owner sent and those sent back to it.
    kept: HashSet<u64>,
}

impl Reconcile {
    pub fn new(plan: PullPlan, started_ms: u64) -> Reconcile {
        Reconcile {
            plan,
            started_ms,
            theirs: HashMap::default(),
            kept: HashSet::default(),
        }
    }

    pub fn owner(&self) -> NodeId {
        self.plan.owner
    }

    /// The owner sent this record (tombstones included).
    pub fn owner_sent(&mut self, key_hash: u64, version: Version) {
        self.theirs.insert(key_hash, version);
        self.kept.insert(key_hash);
    }

    /// The fate of a record of the pulled buckets that this node holds, judged at `now_ms`
    /// (after the owner's records were merged).
    pub fn judge(&mut self, r: &Held, now_ms: u64) -> Fate {
        let fate = match self.theirs.get(&r.key_hash) {
            Some(theirs) if *theirs < r.version => Fate::PushBack,
            Some(_) => Fate::Keep,
            None if !r.alive => Fate::Keep,
            None if unknown_to_owner(r, now_ms) => Fate::PushBack,
            None => Fate::DropIfStale,
        };
        if fate == Fate::PushBack {
            self.kept.insert(r.key_hash);
        }
        fate
    }

    /// The key hashes the drop spares.
    pub fn kept(&self) -> &HashSet<u64> {
        &self.kept
    }

    /// Whether this pull may drop the records the owner lacks, and if so, those last touched
    /// before which time: only while this node's view (`view_hash_now`) is still the one the
    /// digest was sent under, and only when the last ownership change (`view_changed_ms`) is
    /// more than a grace before the pull started; then records touched within that grace
    /// before the start are spared (they may still be on their way to the owner).
    pub fn drop_touched_before(
        &self,
        view_hash_now: u64,
        view_changed_ms: u64,
        timing: Timing,
    ) -> Option<u64> {
        let grace = drop_grace_ms(timing);
        (view_hash_now == self.plan.view_hash
            && self.started_ms.saturating_sub(view_changed_ms) > grace)
            .then(|| self.started_ms.saturating_sub(grace))
    }
}

/// How long a write may take to reach its owner: a digest round and a member timeout (a sync
/// batch, a handoff, a forward retried after a view change).
pub fn drop_grace_ms(timing: Timing) -> u64 {
    timing.verify_interval_ms + timing.member_timeout_ms
}

/// A live record younger than any tombstone that could have deleted it (with the margin).
fn unknown_to_owner(r: &Held, now_ms: u64) -> bool {
    r.alive
        && hlc_physical_ms(r.version.hlc) + r.expire_ms as u64 + TOMBSTONE_GRACE_MS
            > now_ms + UNKNOWN_RECORD_MARGIN_MS
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::store::digest::{BucketSet, bucket_of};

    const NOW: u64 = 10_000_000;
    const EXPIRE: u32 = 30_000;

    fn v(ms: u64, origin: NodeId) -> Version {
        Version {
            hlc: ms << 16,
            origin,
        }
    }

    fn held(key_hash: u64, alive: bool, version: Version) -> Held {
        Held {
            key_hash,
            alive,
            version,
            expire_ms: EXPIRE,
        }
    }

    fn pull(started_ms: u64) -> Reconcile {
        Reconcile::new(
            PullPlan {
                from: addr(2),
                owner: 2,
                view_hash: 77,
                buckets: [bucket_of(1), bucket_of(2)].into_iter().collect(),
            },
            started_ms,
        )
    }

    #[test]
    fn each_held_record_is_kept_pushed_back_or_left_to_the_drop() {
        // The age past which a live record the owner lacks is no longer sent back: older than
        // its expire-after, a tombstone's retention and the margin.
        let limit = NOW + UNKNOWN_RECORD_MARGIN_MS - TOMBSTONE_GRACE_MS - EXPIRE as u64;
        // (what the owner sent, what this node holds, fate)
        let table = [
            // Same version at the owner: merged.
            (Some(v(500, 2)), held(1, true, v(500, 2)), Fate::Keep),
            // Newer at the owner (merged here already): kept.
            (Some(v(600, 2)), held(1, true, v(500, 2)), Fate::Keep),
            // Newer here, alive or a tombstone: back to the owner.
            (Some(v(500, 2)), held(1, true, v(600, 3)), Fate::PushBack),
            (Some(v(500, 2)), held(1, false, v(600, 3)), Fate::PushBack),
            // Same time, higher origin wins the tie: back to the owner.
            (Some(v(500, 2)), held(1, true, v(500, 3)), Fate::PushBack),
            // The owner lacks a young live record: it never learned of it.
            (None, held(1, true, v(NOW, 3)), Fate::PushBack),
            (None, held(1, true, v(limit + 1, 3)), Fate::PushBack),
            // … and one old enough that a tombstone could have been collected: dropped.
            (None, held(1, true, v(limit, 3)), Fate::DropIfStale),
            (None, held(1, true, v(0, 3)), Fate::DropIfStale),
            // A tombstone the owner lacks is left alone.
            (None, held(1, false, v(NOW, 3)), Fate::Keep),
            (None, held(1, false, v(0, 3)), Fate::Keep),
        ];
        for (i, (theirs, mine, fate)) in table.into_iter().enumerate() {
            let mut p = pull(NOW);
            if let Some(version) = theirs {
                p.owner_sent(mine.key_hash, version);
            }
            assert_eq!(p.judge(&mine, NOW), fate, "row {i}");
            // Only what is neither sent by the owner nor sent back may be dropped.
            let spared = theirs.is_some() || fate == Fate::PushBack;
            assert_eq!(p.kept().contains(&mine.key_hash), spared, "row {i}");
        }
    }

    #[test]
    fn a_longer_lease_keeps_a_record_the_owner_lacks_worth_sending_back_longer() {
        let old = v(NOW - TOMBSTONE_GRACE_MS, 3);
        let mut p = pull(NOW);
        let short = Held {
            expire_ms: 1_000,
            ..held(1, true, old)
        };
        let long = Held {
            expire_ms: 600_000,
            ..held(2, true, old)
        };
        assert_eq!(p.judge(&short, NOW), Fate::DropIfStale);
        assert_eq!(p.judge(&long, NOW), Fate::PushBack);
    }

    #[test]
    fn a_pull_drops_only_under_its_view_and_long_after_the_last_ownership_change() {
        let grace = drop_grace_ms(TIMING);
        assert_eq!(grace, 1_100);
        let start = 50_000;
        // (view now, last ownership change, records touched before)
        let table = [
            (77, 0, Some(start - grace)),
            (77, start - grace - 1, Some(start - grace)),
            // A change within the grace before the pull started: nothing is dropped.
            (77, start - grace, None),
            (77, start - 1, None),
            // A change after it started, too.
            (77, start + 5, None),
            // The view changed since the digest: nothing is dropped.
            (78, 0, None),
        ];
        for (i, (view, changed, want)) in table.into_iter().enumerate() {
            assert_eq!(
                pull(start).drop_touched_before(view, changed, TIMING),
                want,
                "row {i}"
            );
        }
    }

    #[test]
    fn a_pull_covers_the_records_of_its_owner_in_its_buckets() {
        let p = pull(NOW);
        let other_bucket = (3..)
            .find(|h| !p.plan.buckets.contains(bucket_of(*h)))
            .unwrap();
        assert!(p.plan.covers(2, 1));
        assert!(p.plan.covers(2, 2));
        assert!(!p.plan.covers(3, 1), "another owner's");
        assert!(!p.plan.covers(2, other_bucket));
        assert!(!pull(NOW).plan.buckets.is_empty() && BucketSet::default().is_empty());
        assert_eq!(p.owner(), 2);
    }
}
