//! The other members and failure detection. Members are keyed by their peer address (as the
//! member list gives it; a node id is learned in the handshake), kept in the order they were
//! added; the list may change at run time ([`Membership::add`], [`Membership::remove`]). A
//! member is up while it answers pings on its control link: one that has not answered for a
//! member timeout is down, one that answers again is up. A member that says it is leaving (a
//! graceful stop) is down at once, and stays down until a handshake begun after it left
//! succeeds — a new incarnation of it, since a leaving node takes no new peer connections. The
//! live view — this node and every member that is up and whose id is known — is what
//! ownership is computed over.

use crate::config::PeerAddr;

use tracing::{info, warn};

use super::Command;
use super::verify::VerifyState;
use crate::model::NodeId;

/// What one probe of a member found (the driver dials what is missing and pings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A link could not be opened (connect, handshake or authentication failed).
    Unreachable,
    /// The control link is open but the ping went unanswered within its deadline.
    /// `data_idle_ms`: how long the data link has received nothing, when there is one.
    PingLost { data_idle_ms: Option<u64> },
    /// The ping was answered and both links are open.
    Answered,
}

/// One other member, as this node sees it.
#[derive(Debug, Clone)]
pub struct MemberState {
    pub addr: PeerAddr,
    /// Learned in the handshake; 0 until then.
    pub id: NodeId,
    pub up: bool,
    /// When it last answered a ping (ms); 0 before it ever did.
    last_ok_ms: u64,
    /// When it said it was leaving (ms), until a handshake begun after that succeeds.
    left_at_ms: Option<u64>,
    pub(super) verify: VerifyState,
}

impl MemberState {
    /// It said it was leaving and has not come back since.
    pub fn left(&self) -> bool {
        self.left_at_ms.is_some()
    }
}

/// The other members of the cluster.
#[derive(Debug)]
pub struct Membership {
    me: NodeId,
    member_timeout_ms: u64,
    members: Vec<MemberState>,
}

impl Membership {
    pub fn new(me: NodeId, member_timeout_ms: u64) -> Membership {
        Membership {
            me,
            member_timeout_ms,
            members: Vec::new(),
        }
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// Adds a member, not reached yet. False if it is a member already.
    pub fn add(&mut self, addr: PeerAddr) -> bool {
        if self.get(&addr).is_some() {
            return false;
        }
        self.members.push(MemberState {
            addr,
            id: 0,
            up: false,
            last_ok_ms: 0,
            left_at_ms: None,
            verify: VerifyState::default(),
        });
        true
    }

    /// Removes a member. Its links go, and the view changes if it was part of it.
    pub fn remove(&mut self, addr: PeerAddr) -> Vec<Command> {
        let Some(i) = self.members.iter().position(|m| m.addr == addr) else {
            return Vec::new();
        };
        let m = self.members.remove(i);
        let mut out = vec![Command::MemberDown { addr }];
        if m.up && m.id != 0 {
            out.push(Command::InstallView);
        }
        out
    }

    pub fn get(&self, addr: &PeerAddr) -> Option<&MemberState> {
        self.members.iter().find(|m| m.addr == *addr)
    }

    pub(super) fn get_mut(&mut self, addr: &PeerAddr) -> Option<&mut MemberState> {
        self.members.iter_mut().find(|m| m.addr == *addr)
    }

    /// The member with this node id (0, unknown, matches none).
    pub fn by_id(&self, id: NodeId) -> Option<&MemberState> {
        self.members.iter().find(|m| m.id == id && id != 0)
    }

    pub(super) fn by_id_mut(&mut self, id: NodeId) -> Option<&mut MemberState> {
        self.members.iter_mut().find(|m| m.id == id && id != 0)
    }

    pub fn iter(&self) -> impl Iterator<Item = &MemberState> {
        self.members.iter()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The members that are up, in order.
    pub fn up(&self) -> impl Iterator<Item = &MemberState> {
        self.members.iter().filter(|m| m.up)
    }

    /// The live set as this node sees it: itself and every member that is up (and whose id
    /// it knows).
    pub fn live_view(&self) -> Vec<NodeId> {
        let mut live = vec![self.me];
        live.extend(self.up().filter(|m| m.id != 0).map(|m| m.id));
        live
    }

    /// A handshake with the member, begun at `dialed_ms`, told its node id. One begun after the
    /// member left reached a new incarnation of it (a leaving node takes no new peer
    /// connections): it may be up again.
    pub fn on_handshake(&mut self, addr: PeerAddr, id: NodeId, dialed_ms: u64) {
        let Some(m) = self.get_mut(&addr) else { return };
        if m.id != 0 && m.id != id {
            warn!(peer = %addr, old = m.id, new = id, "member changed its node id");
        }
        m.id = id;
        if m.left_at_ms.is_some_and(|left| dialed_ms > left) {
            info!(peer = %addr, id, "member that left is back");
            m.left_at_ms = None;
        }
    }

    /// The member with node id `id` said, at `now_ms`, that it is leaving: it is down at once
    /// (its keys move now, not after a member timeout), and answers on links opened before
    /// this do not make it up again.
    pub fn on_leave(&mut self, id: NodeId, now_ms: u64) -> Vec<Command> {
        let Some(m) = self.by_id_mut(id) else {
            return Vec::new();
        };
        m.left_at_ms = Some(now_ms);
        let addr = m.addr.clone();
        let mut out = vec![Command::MemberDown { addr: addr.clone() }];
        if m.up {
            m.up = false;
            info!(peer = %addr, id, "member left");
            out.push(Command::InstallView);
        }
        out
    }

    /// The outcome of one probe of the member at `now_ms`.
    pub fn on_probe(&mut self, addr: PeerAddr, probe: Probe, now_ms: u64) -> Vec<Command> {
        let timeout = self.member_timeout_ms;
        let Some(m) = self.get_mut(&addr) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        match probe {
            // An answer on a link opened before the member left: it is still stopping. Its
            // links go, so that the next probe needs a new handshake.
            Probe::Answered if m.left_at_ms.is_some() => {
                out.push(Command::CloseControl(addr.clone()));
                out.push(Command::CloseData(addr));
                return out;
            }
            Probe::Answered => {
                m.last_ok_ms = now_ms;
                if !m.up {
                    m.up = true;
                    info!(peer = %addr, id = m.id, "member up");
                    out.push(Command::MemberUp { addr, id: m.id });
                    out.push(Command::InstallView);
                }
                return out;
            }
            Probe::PingLost { data_idle_ms } => {
                // The path to the peer lost a ping: frames on the data link may have been lost
                // with it, and a connection that lost a frame can stay wedged (a half-open
                // connection; simulated TCP never retransmits), silently swallowing every sync
                // and digest after it. Redial the data link too — unless it is visibly alive
                // (it received within the member timeout): a node that is merely slow under
                // load must not lose its in-flight forwards to one late ping.
                out.push(Command::CloseControl(addr.clone()));
                if data_idle_ms.is_some_and(|idle| idle >= timeout) {
                    out.push(Command::CloseData(addr.clone()));
                }
            }
            Probe::Unreachable => {}
        }
        if m.up && now_ms.saturating_sub(m.last_ok_ms) >= timeout {
            m.up = false;
            warn!(peer = %addr, id = m.id, "member down");
            out.push(Command::MemberDown { addr });
            out.push(Command::InstallView);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    const T: u64 = TIMING.member_timeout_ms;

    fn membership() -> Membership {
        let mut ms = Membership::new(1, T);
        ms.add(addr(2));
        ms.add(addr(3));
        ms
    }

    /// A member that answered at 1000 and is up.
    fn up_since_1000() -> Membership {
        let mut ms = membership();
        ms.on_handshake(addr(2), 2, 0);
        ms.on_probe(addr(2), Probe::Answered, 1_000);
        ms
    }

    #[test]
    fn a_member_is_up_once_it_answers_and_down_after_a_member_timeout_of_silence() {
        use Command::*;
        let a = addr(2);
        let lost = |idle| Probe::PingLost {
            data_idle_ms: Some(idle),
        };
        // (probe, at ms, commands, up after)
        let table: &[(Probe, u64, &[Command], bool)] = &[
            // Silence shorter than the timeout: still up, links left alone when unreachable.
            (Probe::Unreachable, 1_000 + T - 1, &[], true),
            // A lost ping closes the control link; the data link stays while it receives.
            (lost(T - 1), 1_000 + T - 1, &[CloseControl(a.clone())], true),
            // A silent data link is closed with it.
            (
                lost(T),
                1_000 + 10,
                &[CloseControl(a.clone()), CloseData(a.clone())],
                true,
            ),
            // No data link at all: only the control link.
            (
                Probe::PingLost { data_idle_ms: None },
                1_000 + 10,
                &[CloseControl(a.clone())],
                true,
            ),
            // A member timeout without an answer: down, and the view changes.
            (
                Probe::Unreachable,
                1_000 + T,
                &[MemberDown { addr: a.clone() }, InstallView],
                false,
            ),
            (
                lost(0),
                1_000 + T,
                &[
                    CloseControl(a.clone()),
                    MemberDown { addr: a.clone() },
                    InstallView,
                ],
                false,
            ),
            // An answer from an up member changes nothing.
            (Probe::Answered, 1_000 + T, &[], true),
        ];
        for (i, (probe, now, commands, up)) in table.iter().enumerate() {
            let mut ms = up_since_1000();
            assert_eq!(&ms.on_probe(a.clone(), *probe, *now), commands, "row {i}");
            assert_eq!(ms.get(&a).unwrap().up, *up, "row {i}");
        }
    }

    #[test]
    fn a_down_member_that_answers_is_up_again_and_its_silence_counts_from_the_answer() {
        let a = addr(2);
        let mut ms = up_since_1000();
        ms.on_probe(a.clone(), Probe::Unreachable, 1_000 + T);
        assert!(!ms.get(&a).unwrap().up);
        // Down members stay down quietly.
        assert_eq!(ms.on_probe(a.clone(), Probe::Unreachable, 5_000), vec![]);
        assert_eq!(
            ms.on_probe(a.clone(), Probe::Answered, 6_000),
            vec![
                Command::MemberUp {
                    addr: a.clone(),
                    id: 2
                },
                Command::InstallView
            ]
        );
        assert_eq!(
            ms.on_probe(a.clone(), Probe::Unreachable, 6_000 + T - 1),
            vec![]
        );
        assert!(ms.get(&a).unwrap().up);
    }

    #[test]
    fn the_live_view_is_this_node_and_the_up_members_with_known_ids() {
        let mut ms = membership();
        assert_eq!(ms.live_view(), vec![1]);
        // Answered before its id is known (cannot happen through the driver, which learns the
        // id in the handshake that precedes any ping): not in the view.
        ms.on_probe(addr(3), Probe::Answered, 10);
        assert_eq!(ms.live_view(), vec![1]);
        ms.on_handshake(addr(2), 7, 0);
        assert_eq!(ms.live_view(), vec![1]);
        ms.on_probe(addr(2), Probe::Answered, 10);
        assert_eq!(ms.live_view(), vec![1, 7]);
        assert_eq!(ms.by_id(7).map(|m| m.addr.clone()), Some(addr(2)));
        assert!(ms.by_id(0).is_none());
    }

    #[test]
    fn a_member_that_changes_its_id_is_known_by_the_new_one() {
        let mut ms = up_since_1000();
        ms.on_handshake(addr(2), 9, 0);
        assert_eq!(ms.live_view(), vec![1, 9]);
        assert!(ms.by_id(2).is_none());
    }

    #[test]
    fn members_are_keyed_by_address_and_can_be_added_and_removed() {
        let mut ms = up_since_1000();
        assert!(!ms.add(addr(2)), "a member is added once");
        assert!(ms.add(addr(4)));
        let order: Vec<PeerAddr> = ms.iter().map(|m| m.addr.clone()).collect();
        assert_eq!(order, vec![addr(2), addr(3), addr(4)]);
        // Removing a member that was never up drops its links only.
        assert_eq!(
            ms.remove(addr(3)),
            vec![Command::MemberDown { addr: addr(3) }]
        );
        // Removing one in the view changes the view.
        assert_eq!(
            ms.remove(addr(2)),
            vec![Command::MemberDown { addr: addr(2) }, Command::InstallView]
        );
        assert_eq!(ms.live_view(), vec![1]);
        assert_eq!(ms.remove(addr(2)), vec![]);
        // Events about an address that is no member do nothing.
        assert_eq!(ms.on_probe(addr(9), Probe::Answered, 5), vec![]);
        ms.on_handshake(addr(9), 9, 0);
        assert_eq!(ms.len(), 1);
    }

    /// What happens to member 2 (up since 1000) in the leave tests.
    #[derive(Clone, Copy)]
    enum Ev {
        /// The member with this id says it leaves, at 2000.
        Leave(NodeId),
        /// A handshake with member 2 that began at this time.
        Handshake(u64),
        /// A probe of member 2 at 2100.
        Probed(Probe),
    }

    #[test]
    fn a_member_that_leaves_is_down_at_once_and_up_again_only_after_a_new_handshake() {
        use Command::*;
        use Ev::*;
        let a = addr(2);
        let (down, view) = (MemberDown { addr: a.clone() }, InstallView);
        let close = [CloseControl(a.clone()), CloseData(a.clone())];
        let up = [
            MemberUp {
                addr: a.clone(),
                id: 2,
            },
            InstallView,
        ];
        // (events, commands of the last one, up after, left after)
        let table: Vec<(Vec<Ev>, Vec<Command>, bool, bool)> = vec![
            // Down at once, and the view changes: no member timeout to wait for.
            (
                vec![Leave(2)],
                vec![down.clone(), view.clone()],
                false,
                true,
            ),
            // Another id (no member of this node's, or none yet known): nothing.
            (vec![Leave(9)], vec![], true, false),
            (vec![Leave(0)], vec![], true, false),
            // An answer on a link opened before it left: still stopping; its links go.
            (
                vec![Leave(2), Probed(Probe::Answered)],
                close.to_vec(),
                false,
                true,
            ),
            // A handshake begun before it left (or in the same ms) is the old incarnation.
            (
                vec![Leave(2), Handshake(1_999), Probed(Probe::Answered)],
                close.to_vec(),
                false,
                true,
            ),
            (
                vec![Leave(2), Handshake(2_000), Probed(Probe::Answered)],
                close.to_vec(),
                false,
                true,
            ),
            // One begun after it: a new incarnation, up again on its answer.
            (
                vec![Leave(2), Handshake(2_001), Probed(Probe::Answered)],
                up.to_vec(),
                true,
                false,
            ),
            // Silence after leaving changes nothing more; leaving twice neither.
            (
                vec![Leave(2), Probed(Probe::Unreachable)],
                vec![],
                false,
                true,
            ),
            (vec![Leave(2), Leave(2)], vec![down.clone()], false, true),
        ];
        for (i, (events, want, up_after, left_after)) in table.into_iter().enumerate() {
            let mut ms = up_since_1000();
            let mut got = Vec::new();
            for ev in events {
                got = match ev {
                    Leave(id) => ms.on_leave(id, 2_000),
                    Handshake(dialed) => {
                        ms.on_handshake(a.clone(), 2, dialed);
                        Vec::new()
                    }
                    Probed(p) => ms.on_probe(a.clone(), p, 2_100),
                };
            }
            assert_eq!(got, want, "row {i}");
            let m = ms.get(&a).unwrap();
            assert_eq!((m.up, m.left()), (up_after, left_after), "row {i}");
        }
    }

    #[test]
    fn a_member_that_leaves_while_down_only_drops_its_links() {
        let mut ms = membership();
        ms.on_handshake(addr(3), 3, 0);
        assert_eq!(
            ms.on_leave(3, 500),
            vec![Command::MemberDown { addr: addr(3) }]
        );
        assert!(ms.get(&addr(3)).unwrap().left());
        assert_eq!(ms.live_view(), vec![1]);
    }
}
