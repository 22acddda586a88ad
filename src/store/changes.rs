//! The recent changes of a watched service: which instances changed at which revision, so that
//! a subscriber holding an older revision is sent only those instances (a delta) instead of the
//! whole service, and so that the cost of one change stays the cost of that change.
//!
//! A service gets a log only once a subscriber asks for changes of it (the first push of a
//! subscription), and loses it when its last subscriber goes; an unwatched service pays one
//! pointer. The log is bounded by [`cap`]: past it the oldest entries go and the `floor`
//! moves up, and a subscriber older than the floor is sent the whole list again.

use std::collections::VecDeque;

use super::record::InstanceId;

/// Fewest entries a watched service's log keeps, whatever its size: a change or a few, coalesced
/// into one push, still travel as a delta in a small service. Kept small because small services
/// are many (a watched service of 10 pays at most 4 × 32 bytes for its log), and the whole list
/// of a small service is small too.
const LOG_MIN: usize = 4;
/// Most entries any log keeps (32 KiB): a subscriber further behind than this many changes of
/// one service is sent the whole list, which then costs about as much as the delta would.
const LOG_MAX: usize = 1024;

/// Entries the log of a service of `instances` records keeps: a quarter of the service (a delta
/// naming more than that saves little over the whole list), within [`LOG_MIN`]..=[`LOG_MAX`].
/// Per watched instance that is at most 8 bytes (an entry is 32) beyond the smallest services.
pub fn cap(instances: usize) -> usize {
    (instances / 4).clamp(LOG_MIN, LOG_MAX)
}

#[derive(Debug)]
pub struct ChangeLog {
    /// Every change of the service after this revision is in `entries`.
    floor: u64,
    /// (revision of the change, the instance changed), oldest first; revisions never decrease.
    entries: VecDeque<(u64, InstanceId)>,
}

impl ChangeLog {
    /// An empty log of a service at `revision`.
    pub fn new(revision: u64) -> ChangeLog {
        ChangeLog {
            floor: revision,
            entries: VecDeque::new(),
        }
    }

    /// Notes that `id` changed at `revision` (not below any revision noted before), keeping at
    /// most `cap` entries.
    pub fn note(&mut self, revision: u64, id: InstanceId, cap: usize) {
        debug_assert!(self.entries.back().is_none_or(|(r, _)| *r <= revision));
        while self.entries.len() >= cap.max(1) {
            if let Some((r, _)) = self.entries.pop_front() {
                self.floor = r;
            }
        }
        self.entries.push_back((revision, id));
        if self.entries.capacity() > 2 * cap.max(LOG_MIN) {
            // The service shrank: give back what its larger log took.
            self.entries.shrink_to(cap);
        }
    }

    /// The instances changed after `revision` (with repeats, oldest first), or `None` when the
    /// log does not reach back that far.
    pub fn since(&self, revision: u64) -> Option<impl Iterator<Item = &InstanceId>> {
        if revision < self.floor {
            return None;
        }
        let start = self.entries.partition_point(|(r, _)| *r <= revision);
        Some(self.entries.range(start..).map(|(_, id)| id))
    }

    /// The revision below which the log cannot tell what changed.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// (revision, instance), oldest first.
    pub fn entries(&self) -> impl Iterator<Item = (u64, &InstanceId)> {
        self.entries.iter().map(|(r, id)| (*r, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::IpKey;

    fn id(n: u8) -> InstanceId {
        InstanceId {
            ip: IpKey::V4([10, 0, 0, n]),
            cluster: 0,
            port: 80,
        }
    }

    #[test]
    fn the_log_answers_what_changed_after_a_revision_as_far_back_as_it_reaches() {
        let mut log = ChangeLog::new(10);
        assert_eq!(log.since(10).unwrap().count(), 0);
        assert!(log.since(9).is_none(), "before the log began");
        for (rev, n) in [(11, 1), (12, 2), (12, 3), (14, 1)] {
            log.note(rev, id(n), 4);
        }
        let got: Vec<_> = log.since(11).unwrap().cloned().collect();
        assert_eq!(got, vec![id(2), id(3), id(1)]);
        assert_eq!(log.since(10).unwrap().count(), 4);
        // A fifth entry pushes the oldest out: revision 10 is no longer covered, 11 is.
        log.note(15, id(4), 4);
        assert_eq!(log.floor(), 11);
        assert!(log.since(10).is_none());
        assert_eq!(log.since(11).unwrap().count(), 4);
        assert_eq!(log.len(), 4);
    }

    #[test]
    fn the_cap_follows_the_service_within_its_bounds() {
        assert_eq!(cap(0), LOG_MIN);
        assert_eq!(cap(10), LOG_MIN);
        assert_eq!(cap(400), 100);
        assert_eq!(cap(1_000_000), LOG_MAX);
    }
}
