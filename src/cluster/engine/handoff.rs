//! A change of the live view. When members go up or down the node installs the new view in
//! its store (every record's owner is computed again; the records it gains get a fresh lease,
//! the takeover grace) and hands the records it lost to their new owners — only the young
//! ones: records older than a couple of digest rounds are on every live node already, and a
//! joining node loads them. The time of the change is remembered: a pull deletes nothing for a
//! grace after it (see [`super::reconcile`]), since a record may still be on its way to its new
//! owner.
//!
//! A node that leaves (a graceful stop) installs the views of the members up without itself:
//! every key it owned gets its new owner at once, the young records go to them as in any view
//! change, and the writes it still receives are forwarded to them.

use crate::config::PeerAddr;

use super::{Engine, Timing};
use crate::model::NodeId;
use crate::ownership::Ownership;

/// What this node remembers of its view changes.
#[derive(Debug, Default)]
pub struct ViewState {
    /// When the last view was installed (ms); 0 before any.
    changed_ms: u64,
    /// This node is leaving the cluster: its views leave it out.
    leaving: bool,
}

/// Install `view`, handing off the records lost that were written at or after `since_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewPlan {
    pub view: Ownership,
    pub since_ms: u64,
}

/// Send the records lost to `owner` over the data link of the member at `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    pub to: PeerAddr,
    pub owner: NodeId,
}

/// Records written this long before a view change are handed off; older ones every live node
/// has had time to learn through sync and two digest rounds.
pub fn handoff_window_ms(timing: Timing) -> u64 {
    2 * timing.verify_interval_ms + timing.member_timeout_ms
}

impl Engine {
    /// The view to install at `now_ms`, if the live set differs from the `installed` view.
    /// A leaving node plans the view of the members up without itself (none when no member is
    /// up: it keeps the last one).
    pub fn plan_view(&self, installed: &Ownership, now_ms: u64) -> Option<ViewPlan> {
        let mut live = self.members.live_view();
        if self.view.leaving {
            live.retain(|&id| id != self.members.me());
            if live.is_empty() {
                return None;
            }
        }
        let view = Ownership::new(live);
        (view != *installed).then(|| ViewPlan {
            view,
            since_ms: now_ms.saturating_sub(handoff_window_ms(self.timing)),
        })
    }

    /// The planned view was installed at `now_ms`; the store lost records to `new_owners`.
    /// Where each batch goes (a new owner this node has no member for gets nothing: it is in
    /// no view of this node's, so cannot be one).
    pub fn view_installed(
        &mut self,
        now_ms: u64,
        new_owners: impl IntoIterator<Item = NodeId>,
    ) -> Vec<Handoff> {
        self.view.changed_ms = now_ms;
        new_owners
            .into_iter()
            .filter_map(|owner| {
                let m = self.members.by_id(owner)?;
                Some(Handoff {
                    to: m.addr.clone(),
                    owner,
                })
            })
            .collect()
    }

    /// When the last view was installed (ms).
    pub fn view_changed_ms(&self) -> u64 {
        self.view.changed_ms
    }

    /// This node leaves the cluster (a graceful stop): from now on its views leave it out
    /// ([`Engine::plan_view`]) and it sends no digest. Answers the members to tell, once the
    /// view without this node is installed and the records they gain are on their way: those
    /// up.
    pub fn leave(&mut self) -> Vec<PeerAddr> {
        self.view.leaving = true;
        self.members
            .up()
            .filter(|m| m.id != 0)
            .map(|m| m.addr.clone())
            .collect()
    }

    pub fn is_leaving(&self) -> bool {
        self.view.leaving
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{Command, Probe};
    use super::*;

    #[test]
    fn a_view_is_installed_only_when_the_live_set_differs() {
        let now = 100_000;
        let window = handoff_window_ms(TIMING);
        assert_eq!(window, 1_600);
        // (members up, installed view, plan)
        type Row = (&'static [u16], &'static [NodeId], Option<&'static [NodeId]>);
        let table: &[Row] = &[
            (&[], &[1], None),
            (&[2, 3], &[1, 2, 3], None),
            (&[2, 3], &[1, 2], Some(&[1, 2, 3])),
            (&[3], &[1, 2, 3], Some(&[1, 3])),
            (&[], &[1, 2], Some(&[1])),
        ];
        for (i, (up, installed, want)) in table.iter().enumerate() {
            let e = engine_with_up(3, up, 0);
            let plan = e.plan_view(&Ownership::new(installed.to_vec()), now);
            let want = want.map(|live| ViewPlan {
                view: Ownership::new(live.to_vec()),
                since_ms: now - window,
            });
            assert_eq!(plan, want, "row {i}");
        }
    }

    #[test]
    fn lost_records_go_to_the_members_that_own_them_now() {
        let mut e = engine_with_up(4, &[2, 4], 0);
        assert_eq!(e.view_changed_ms(), 0);
        let handoffs = e.view_installed(5_000, [4, 2, 9]);
        assert_eq!(
            handoffs,
            vec![
                Handoff {
                    to: addr(4),
                    owner: 4
                },
                Handoff {
                    to: addr(2),
                    owner: 2
                },
            ]
        );
        assert_eq!(e.view_changed_ms(), 5_000);
    }

    #[test]
    fn a_member_going_down_and_up_asks_for_a_view_each_time() {
        let mut e = engine_with_up(2, &[2], 0);
        let installed = Ownership::new(vec![1, 2]);
        assert_eq!(e.plan_view(&installed, 10), None);
        let t = TIMING.member_timeout_ms;
        let cmds = e.members_mut().on_probe(addr(2), Probe::Unreachable, t);
        assert!(cmds.contains(&Command::InstallView));
        let plan = e.plan_view(&installed, t).expect("member 2 left the view");
        assert_eq!(plan.view.live(), &[1]);
        let cmds = e.members_mut().on_probe(addr(2), Probe::Answered, 2 * t);
        assert!(cmds.contains(&Command::InstallView));
        assert_eq!(e.plan_view(&installed, 2 * t), None);
    }

    #[test]
    fn a_leaving_node_leaves_itself_out_of_its_views() {
        let now = 100_000;
        let since = now - handoff_window_ms(TIMING);
        let installed = Ownership::new(vec![1, 2, 3]);
        // (members, up, members told, the view planned then)
        type Row = (
            u16,
            &'static [u16],
            &'static [u16],
            Option<&'static [NodeId]>,
        );
        let table: &[Row] = &[
            (3, &[2, 3], &[2, 3], Some(&[2, 3])),
            (4, &[2, 4], &[2, 4], Some(&[2, 4])),
            (3, &[3], &[3], Some(&[3])),
            // Alone: nobody to tell or to hand over to; the last view stays.
            (3, &[], &[], None),
            (1, &[], &[], None),
        ];
        for (i, (n, up, told, view)) in table.iter().enumerate() {
            let mut e = engine_with_up(*n, up, 0);
            assert!(!e.is_leaving());
            let want: Vec<PeerAddr> = told.iter().map(|&i| addr(i)).collect();
            assert_eq!(e.leave(), want, "row {i}");
            assert!(e.is_leaving(), "row {i}");
            let want = view.map(|live| ViewPlan {
                view: Ownership::new(live.to_vec()),
                since_ms: since,
            });
            assert_eq!(e.plan_view(&installed, now), want, "row {i}");
            assert_eq!(e.digest_targets(true), Vec::<PeerAddr>::new(), "row {i}");
        }
        // A member that goes down (or leaves itself) meanwhile leaves the view too.
        let mut e = engine_with_up(3, &[2, 3], 0);
        e.leave();
        e.members_mut().on_leave(3, 10);
        assert_eq!(
            e.plan_view(&installed, now).map(|p| p.view),
            Some(Ownership::new(vec![2]))
        );
    }
}
