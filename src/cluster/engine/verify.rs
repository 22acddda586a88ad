//! Anti-entropy by digests. Every verify interval a ready node sends the digest of the records
//! it owns to every member that is up; a node that receives one compares it with its own copy
//! of that owner's records and pulls the buckets that differ — one pull per member at a time,
//! and only between equal views of the live set (different views mean different owners).

use crate::config::PeerAddr;

use tracing::debug;

use super::Engine;
use crate::model::{DIGEST_BUCKETS, NodeId};
use crate::store::digest::{BucketSet, bucket_of};
use crate::store::{Bucket, Digest};
use crate::wire::DigestMsg;

/// A digest that differs in at most this many buckets is repaired at once; beyond it, only the
/// buckets that differed in the previous round too (see [`buckets_to_pull`]).
pub const PULL_AT_ONCE_BUCKETS_MAX: usize = 64;

/// What this node remembers of one member's digests.
#[derive(Debug, Clone, Default)]
pub struct VerifyState {
    /// The buckets that differed from its last digest.
    last_diff: Option<BucketSet>,
    /// A pull from it is in flight.
    pulling: bool,
}

/// Why a digest is not compared at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfit {
    /// The sender's view of the live set differs from this node's: it computes other owners,
    /// so comparing would pull (and delete) for nothing. The views converge within a member
    /// timeout.
    OtherView,
    /// Not the number of buckets digests have.
    BucketCount { got: usize },
}

/// Pull these buckets of `owner`'s records from the member at `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullPlan {
    pub from: PeerAddr,
    pub owner: NodeId,
    /// The view the digest was sent under (a pull deletes nothing once it changed).
    pub view_hash: u64,
    pub buckets: BucketSet,
}

impl PullPlan {
    /// Whether a record this node holds (owned by `owner` under its view) is one of the pull's.
    pub fn covers(&self, owner: NodeId, key_hash: u64) -> bool {
        owner == self.owner && self.buckets.contains(bucket_of(key_hash))
    }
}

/// What a digest that fits made this node do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its owner is no member this node knows (by id).
    UnknownOwner,
    /// Every bucket matched.
    Matched,
    /// Many buckets differ, none of them in the previous round too: sync is probably still
    /// on its way; wait for the next round.
    Settling,
    /// A pull from that member is in flight already.
    Busy,
    Pull(PullPlan),
}

/// Checks a received digest against this node's view (`view_hash`); the digest as the store's
/// type if it is fit to be compared.
pub fn screen(d: &DigestMsg, view_hash: u64) -> Result<Digest, Unfit> {
    if d.view_hash != view_hash {
        return Err(Unfit::OtherView);
    }
    if d.buckets.len() != DIGEST_BUCKETS {
        return Err(Unfit::BucketCount {
            got: d.buckets.len(),
        });
    }
    Ok(Digest {
        buckets: d
            .buckets
            .iter()
            .map(|&(count, sum)| Bucket { count, sum })
            .collect(),
    })
}

/// The buckets to pull now out of those that differ. Under a burst of writes many buckets
/// differ only because sync batches are still on their way; pulling them would copy much of the
/// store for nothing. A few differing buckets are pulled at once (a real divergence, repaired
/// within one round); many are pulled only where they differed in the previous round too.
pub fn buckets_to_pull(diff: &BucketSet, previous: Option<&BucketSet>) -> BucketSet {
    if diff.len() <= PULL_AT_ONCE_BUCKETS_MAX {
        return diff.clone();
    }
    match previous {
        Some(prev) => diff.iter().filter(|b| prev.contains(*b)).collect(),
        None => BucketSet::default(),
    }
}

impl Engine {
    /// The members a verify round sends this node's digest to: every member that is up, when
    /// this node is ready (a node still loading holds a partial copy; its digest would make
    /// peers pull for nothing) and not leaving.
    pub fn digest_targets(&self, ready: bool) -> Vec<PeerAddr> {
        // A leaving node owns nothing any more.
        if !ready || self.is_leaving() {
            return Vec::new();
        }
        self.members.up().map(|m| m.addr.clone()).collect()
    }

    /// A digest of `owner`'s records sent under `view_hash` differed from this node's copy in
    /// `diff` (empty: it matched).
    pub fn on_digest(&mut self, owner: NodeId, view_hash: u64, diff: BucketSet) -> Verdict {
        let Some(m) = self.members.by_id_mut(owner) else {
            return Verdict::UnknownOwner;
        };
        let previous = m.verify.last_diff.replace(diff.clone());
        if diff.is_empty() {
            return Verdict::Matched;
        }
        let buckets = buckets_to_pull(&diff, previous.as_ref());
        if buckets.is_empty() {
            debug!(
                owner,
                differing = diff.len(),
                "digest differs widely; waiting a round"
            );
            return Verdict::Settling;
        }
        if m.verify.pulling {
            return Verdict::Busy;
        }
        m.verify.pulling = true;
        Verdict::Pull(PullPlan {
            from: m.addr.clone(),
            owner,
            view_hash,
            buckets,
        })
    }

    /// The pull from `from` ended (however it went): the next digest may start another.
    pub fn pull_done(&mut self, from: PeerAddr) {
        if let Some(m) = self.members.get_mut(&from) {
            m.verify.pulling = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn set(buckets: impl IntoIterator<Item = usize>) -> BucketSet {
        buckets.into_iter().collect()
    }

    fn msg(view_hash: u64, n: usize) -> DigestMsg {
        DigestMsg {
            owner: 2,
            view_hash,
            buckets: (0..n).map(|i| (i as u32, i as u64 * 7)).collect(),
        }
    }

    #[test]
    fn only_digests_of_the_same_view_and_shape_are_compared() {
        let table = [
            (msg(42, DIGEST_BUCKETS), 42, Ok(())),
            (msg(41, DIGEST_BUCKETS), 42, Err(Unfit::OtherView)),
            (msg(42, 3), 42, Err(Unfit::BucketCount { got: 3 })),
            // The view is checked first: a digest of another view is counted as such.
            (msg(41, 3), 42, Err(Unfit::OtherView)),
        ];
        for (i, (d, view, want)) in table.into_iter().enumerate() {
            let got = screen(&d, view);
            assert_eq!(got.as_ref().map(|_| ()).map_err(|e| *e), want, "row {i}");
            if let Ok(digest) = got {
                assert_eq!(digest.buckets[5], Bucket { count: 5, sum: 35 });
            }
        }
    }

    #[test]
    fn few_differing_buckets_are_pulled_at_once_many_only_where_they_persist() {
        let few = set(0..PULL_AT_ONCE_BUCKETS_MAX);
        let many = set(0..PULL_AT_ONCE_BUCKETS_MAX + 1);
        let table = [
            (few.clone(), None, few.clone()),
            (few.clone(), Some(set([900])), few.clone()),
            (many.clone(), None, set([])),
            (many.clone(), Some(set([3, 5, 900])), set([3, 5])),
            (many.clone(), Some(set([900])), set([])),
            (many.clone(), Some(many.clone()), many.clone()),
        ];
        for (i, (diff, previous, want)) in table.into_iter().enumerate() {
            assert_eq!(buckets_to_pull(&diff, previous.as_ref()), want, "row {i}");
        }
    }

    #[test]
    fn a_digest_pulls_what_differs_from_its_owner_one_pull_at_a_time() {
        let mut e = engine_with_up(3, &[2, 3], 0);
        let plan = |buckets| {
            Verdict::Pull(PullPlan {
                from: addr(2),
                owner: 2,
                view_hash: 9,
                buckets,
            })
        };
        assert_eq!(e.on_digest(2, 9, set([])), Verdict::Matched);
        assert_eq!(e.on_digest(2, 9, set([4, 8])), plan(set([4, 8])));
        // While it runs, another digest of that owner pulls nothing; others are not held up.
        assert_eq!(e.on_digest(2, 9, set([4])), Verdict::Busy);
        assert!(matches!(e.on_digest(3, 9, set([1])), Verdict::Pull(_)));
        e.pull_done(addr(2));
        assert_eq!(e.on_digest(2, 9, set([4])), plan(set([4])));
        e.pull_done(addr(2));
        // Unknown owners (no member has that id) are ignored.
        assert_eq!(e.on_digest(7, 9, set([1])), Verdict::UnknownOwner);
        assert_eq!(e.on_digest(0, 9, set([1])), Verdict::UnknownOwner);
    }

    #[test]
    fn a_wide_difference_is_pulled_in_the_round_after_where_it_persists() {
        let mut e = engine_with_up(2, &[2], 0);
        let wide = set(0..200);
        assert_eq!(e.on_digest(2, 9, wide.clone()), Verdict::Settling);
        // The previous round's difference is remembered even when nothing was pulled.
        let next = set(100..300);
        assert_eq!(
            e.on_digest(2, 9, next.clone()),
            Verdict::Pull(PullPlan {
                from: addr(2),
                owner: 2,
                view_hash: 9,
                buckets: set(100..200),
            })
        );
        // A round that matched forgets it.
        e.pull_done(addr(2));
        assert_eq!(e.on_digest(2, 9, set([])), Verdict::Matched);
        assert_eq!(e.on_digest(2, 9, next), Verdict::Settling);
    }

    #[test]
    fn digests_go_to_the_up_members_of_a_ready_node() {
        let e = engine_with_up(4, &[2, 4], 0);
        assert_eq!(e.digest_targets(true), vec![addr(2), addr(4)]);
        assert_eq!(e.digest_targets(false), vec![]);
        assert_eq!(engine(3).digest_targets(true), vec![]);
    }
}
