//! The load of a starting node: it streams a full snapshot from a member before it serves
//! clients, trying the members that are up in turn, round after round. It serves alone only
//! when no member that may hold the data is reachable: every member up answers that it is
//! loading too, and either every member is up (the whole cluster is starting, nobody holds data
//! yet) or no member with data has been reachable for [`alone_after_ms`].

use crate::config::PeerAddr;
use std::collections::VecDeque;

use tracing::info;

use super::{Command, Engine, Ready, Timing};

/// A round that loaded nothing is tried again after this long (the members that are up change
/// within a ping interval; a shorter wait would only spin).
pub const LOAD_RETRY_MS: u64 = 50;

/// How one load attempt from a member went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadOutcome {
    /// The whole snapshot arrived.
    Loaded { records: usize },
    /// The member is loading itself: its store is no copy of the cluster's data.
    PeerLoading,
    /// The link failed, timed out or the member answered otherwise: it may well hold data.
    Failed,
}

/// Serving alone is right only when no member that may hold the data has been reachable for
/// this long: one that was up a moment ago (and failed mid-load, or went down, or is merely
/// slow) may still hold what this node would otherwise serve without.
pub fn alone_after_ms(timing: Timing) -> u64 {
    timing.member_timeout_ms * 2
}

/// Where the load stands.
#[derive(Debug, Default)]
pub struct Load {
    /// When a member that may hold data was last seen (or the load began).
    last_data_peer_seen_ms: u64,
    round: Round,
    done: bool,
}

#[derive(Debug, Default)]
struct Round {
    /// Members still to try in this round.
    queue: VecDeque<PeerAddr>,
    /// Members up when the round began.
    up: usize,
    /// Of them, those that answered that they are loading.
    loading: usize,
}

impl Engine {
    /// The load begins at `now_ms`.
    pub fn load_begin(&mut self, now_ms: u64) {
        self.load = Load {
            last_data_peer_seen_ms: now_ms,
            ..Load::default()
        };
    }

    /// A round of the load at `now_ms`: try the members that are up now, in order.
    pub fn load_round(&mut self, now_ms: u64) -> Vec<Command> {
        let queue: VecDeque<PeerAddr> = self.members.up().map(|m| m.addr.clone()).collect();
        self.load.round = Round {
            up: queue.len(),
            queue,
            loading: 0,
        };
        self.load_next(now_ms)
    }

    /// The load from `from` ended with `outcome` at `now_ms`.
    pub fn on_load(&mut self, from: PeerAddr, outcome: LoadOutcome, now_ms: u64) -> Vec<Command> {
        match outcome {
            LoadOutcome::Loaded { records } => {
                info!(peer = %from, records, "loaded the cluster's data; ready");
                self.load.done = true;
                self.load.round.queue.clear();
                return vec![Command::MarkReady(Ready::Loaded { from, records })];
            }
            LoadOutcome::PeerLoading => self.load.round.loading += 1,
            LoadOutcome::Failed => self.load.last_data_peer_seen_ms = now_ms,
        }
        self.load_next(now_ms)
    }

    pub fn load_done(&self) -> bool {
        self.load.done
    }

    fn load_next(&mut self, now_ms: u64) -> Vec<Command> {
        if self.load.done {
            return Vec::new();
        }
        if let Some(from) = self.load.round.queue.pop_front() {
            return vec![Command::Load { from }];
        }
        let Round { up, loading, .. } = self.load.round;
        // Every member up and loading: the whole cluster is starting and nobody holds data yet.
        // Otherwise serve alone only once no member with data answered for a while.
        let cold_start = up > 0 && up == self.members.len();
        let quiet_ms = now_ms.saturating_sub(self.load.last_data_peer_seen_ms);
        if loading == up && (cold_start || quiet_ms >= alone_after_ms(self.timing)) {
            info!(loading, "no peer with data reachable; serving alone");
            self.load.done = true;
            return vec![Command::MarkReady(Ready::Alone { loading })];
        }
        vec![Command::WakeAt(now_ms + LOAD_RETRY_MS)]
    }
}

#[cfg(test)]
mod tests {
    use super::super::Probe;
    use super::super::testing::*;
    use super::*;
    use LoadOutcome::*;

    const ALONE: u64 = 2 * TIMING.member_timeout_ms;

    /// Runs one round at `now` with the members' answers (by member index), and returns the
    /// commands of the round's end (or of the answer that ended it).
    fn round(e: &mut Engine, now: u64, answers: &[(u16, LoadOutcome)]) -> Vec<Command> {
        let mut cmds = e.load_round(now);
        for &(i, outcome) in answers {
            assert_eq!(
                cmds,
                vec![Command::Load { from: addr(i) }],
                "member {i}'s turn"
            );
            cmds = e.on_load(addr(i), outcome, now);
        }
        cmds
    }

    fn alone(loading: usize) -> Vec<Command> {
        vec![Command::MarkReady(Ready::Alone { loading })]
    }

    fn retry(now: u64) -> Vec<Command> {
        vec![Command::WakeAt(now + LOAD_RETRY_MS)]
    }

    #[test]
    fn a_starting_node_loads_from_the_first_member_that_has_the_data() {
        let mut e = engine_with_up(4, &[2, 3, 4], 0);
        e.load_begin(0);
        let got = round(&mut e, 10, &[(2, PeerLoading), (3, Loaded { records: 12 })]);
        assert_eq!(
            got,
            vec![Command::MarkReady(Ready::Loaded {
                from: addr(3),
                records: 12
            })]
        );
        assert!(e.load_done());
        // Nothing more once done.
        assert_eq!(e.on_load(addr(4), Failed, 20), vec![]);
    }

    #[test]
    fn when_a_node_may_serve_alone() {
        // (members, up, answers, round at ms, what the round ends with)
        type Row = (
            u16,
            &'static [u16],
            &'static [(u16, LoadOutcome)],
            u64,
            Vec<Command>,
        );
        let table: Vec<Row> = vec![
            // Nobody up: alone after two member timeouts, not before.
            (3, &[], &[], ALONE - 1, retry(ALONE - 1)),
            (3, &[], &[], ALONE, alone(0)),
            // No other member at all is no cold start of the whole cluster: it waits too.
            (1, &[], &[], 10, retry(10)),
            // Every member up and loading: the whole cluster starts; nobody waits.
            (
                3,
                &[2, 3],
                &[(2, PeerLoading), (3, PeerLoading)],
                10,
                alone(2),
            ),
            // Some members up, all loading, others unreachable: alone only after the wait.
            (
                4,
                &[2, 3],
                &[(2, PeerLoading), (3, PeerLoading)],
                10,
                retry(10),
            ),
            (
                4,
                &[2, 3],
                &[(2, PeerLoading), (3, PeerLoading)],
                ALONE,
                alone(2),
            ),
            // A member up that failed may hold data: never alone in that round.
            (3, &[2, 3], &[(2, PeerLoading), (3, Failed)], 10, retry(10)),
            (
                3,
                &[2, 3],
                &[(2, Failed), (3, Failed)],
                ALONE * 5,
                retry(ALONE * 5),
            ),
        ];
        for (i, (n, up, answers, now, want)) in table.into_iter().enumerate() {
            let mut e = engine_with_up(n, up, 0);
            e.load_begin(0);
            assert_eq!(round(&mut e, now, answers), want, "row {i}");
            assert_eq!(
                e.load_done(),
                matches!(want[0], Command::MarkReady(_)),
                "row {i}"
            );
        }
    }

    #[test]
    fn a_member_with_data_seen_recently_delays_serving_alone() {
        let mut e = engine_with_up(3, &[2], 0);
        e.load_begin(0);
        // Member 2 is up but its load fails at 1000: it may hold data.
        assert_eq!(round(&mut e, 1_000, &[(2, Failed)]), retry(1_000));
        // It went down; member 3 never came: alone once two member timeouts passed since 1000.
        e.members_mut()
            .on_probe(addr(2), Probe::Unreachable, 1_000 + ALONE);
        assert_eq!(
            round(&mut e, 1_000 + ALONE - 1, &[]),
            retry(1_000 + ALONE - 1)
        );
        assert_eq!(round(&mut e, 1_000 + ALONE, &[]), alone(0));
    }
}
