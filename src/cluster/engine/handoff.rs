//! A change of the live view. When members go up or down the node installs the new view in
//! its store (every record's owner is computed again; the records it gains get a fresh lease,
//! the takeover grace) and hands the records it lost to their new owners — only the young
//! ones: records older than a couple of digest rounds are on every live node already, and a
//! joining node loads them. The time of the change is remembered: a pull deletes nothing for a
//! grace after it (see [`super::reconcile`]), since a record may still be on its way to its new
//! owner.

use crate::config::PeerAddr;

use super::{Engine, Timing};
use crate::model::NodeId;
use crate::ownership::Ownership;

/// What this node remembers of its view changes.
#[derive(Debug, Default)]
pub struct ViewState {
    /// When the last view was installed (ms); 0 before any.
    changed_ms: u64,
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
    pub fn plan_view(&self, installed: &Ownership, now_ms: u64) -> Option<ViewPlan> {
        let view = Ownership::new(self.members.live_view());
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
}
