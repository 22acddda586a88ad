//! The Distro decisions as plain synchronous state: events and the time (plain milliseconds)
//! go in, commands come out. Nothing here does I/O, sets a timer or spawns; the async driver
//! (`cluster::driver`) feeds the events in and runs the commands over the links, in the
//! manner of foca's runtime and openraft's engine. Every rule is unit-tested on plain values.
//!
//! - [`membership`]: the members (keyed by address), failure detection, the live view.
//! - [`handoff`]: a change of the live view — when to install it, what to hand off.
//! - [`verify`]: who gets this node's digest, and the buckets a peer's digest makes it pull.
//! - [`reconcile`]: what a pull does with each record (merge, push back to the owner, drop).
//! - [`load`]: the load of a starting node, and when it may serve alone.
//! - [`handshake`]: the checks of the peer handshake, both sides.
//!
//! The store's O(records) passes (installing a view, the scans of a pull) stay in the store:
//! the engine decides what they do, the driver calls them.

pub mod handoff;
pub mod handshake;
pub mod load;
pub mod membership;
pub mod reconcile;
pub mod verify;

use crate::config::PeerAddr;

use crate::config::Config;
use crate::model::NodeId;

pub use membership::{MemberState, Membership, Probe};

/// The settings the rules depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A member that has not answered a ping for this long is down.
    pub member_timeout_ms: u64,
    /// How often a node sends its digest.
    pub verify_interval_ms: u64,
}

/// Pings are sent at least this far apart, whatever the member timeout: a tiny timeout must
/// not turn the control links into a busy loop.
const PING_INTERVAL_MIN_MS: u64 = 25;
/// A ping is waited on at least this long (a loaded peer answers within tens of ms).
const PING_TIMEOUT_MIN_MS: u64 = 50;
/// Bounds of the deadline of a dial and handshake: long enough for a loaded peer, short enough
/// that an unreachable one does not hold up the next probe for long.
const DIAL_TIMEOUT_MIN_MS: u64 = 100;
const DIAL_TIMEOUT_MAX_MS: u64 = 2_000;

impl Timing {
    pub fn of(config: &Config) -> Timing {
        Timing {
            member_timeout_ms: config.member_timeout_ms,
            verify_interval_ms: config.verify_interval_ms,
        }
    }

    /// Four pings per member timeout: a member is declared down after about four lost ones.
    pub fn ping_interval_ms(&self) -> u64 {
        (self.member_timeout_ms / 4).max(PING_INTERVAL_MIN_MS)
    }

    pub fn ping_timeout_ms(&self) -> u64 {
        self.ping_interval_ms().max(PING_TIMEOUT_MIN_MS)
    }

    pub fn dial_timeout_ms(&self) -> u64 {
        self.member_timeout_ms
            .clamp(DIAL_TIMEOUT_MIN_MS, DIAL_TIMEOUT_MAX_MS)
    }
}

/// What the driver does for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Close the control link to this member (the next probe redials it).
    CloseControl(PeerAddr),
    /// Close the data link to this member (the next good probe redials it).
    CloseData(PeerAddr),
    /// The member answers: publish it as up.
    MemberUp { addr: PeerAddr, id: NodeId },
    /// The member stopped answering: publish it as down and drop both its links.
    MemberDown { addr: PeerAddr },
    /// The live set changed: install the new view (see [`Engine::plan_view`]).
    InstallView,
    /// Stream a snapshot from this member and report how it went ([`Engine::on_load`]).
    Load { from: PeerAddr },
    /// Serve clients.
    MarkReady(Ready),
    /// Nothing to do until this time (ms): then ask again.
    WakeAt(u64),
}

/// Why a node became ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ready {
    /// It loaded the cluster's data from this member.
    Loaded { from: PeerAddr, records: usize },
    /// No member with data was reachable: it serves alone (`loading` members answered that
    /// they were loading themselves).
    Alone { loading: usize },
}

/// The cluster's decisions on one node.
#[derive(Debug)]
pub struct Engine {
    timing: Timing,
    members: Membership,
    view: handoff::ViewState,
    load: load::Load,
}

impl Engine {
    /// An engine for node `me`, listening for peers at `my_addr`, of a cluster whose members
    /// are `addrs` (its own address among them or not).
    pub fn new(
        me: NodeId,
        my_addr: PeerAddr,
        addrs: impl IntoIterator<Item = PeerAddr>,
        timing: Timing,
    ) -> Engine {
        let mut members = Membership::new(me, timing.member_timeout_ms);
        for addr in addrs.into_iter().filter(|a| *a != my_addr) {
            members.add(addr);
        }
        Engine {
            timing,
            members,
            view: handoff::ViewState::default(),
            load: load::Load::default(),
        }
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    pub fn members(&self) -> &Membership {
        &self.members
    }

    pub fn members_mut(&mut self) -> &mut Membership {
        &mut self.members
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub const TIMING: Timing = Timing {
        member_timeout_ms: 600,
        verify_interval_ms: 500,
    };

    pub fn addr(i: u16) -> PeerAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], 7000 + i)).into()
    }

    /// Node 1 at `addr(1)` with members `addr(2..=n)`, none reached yet.
    pub fn engine(n: u16) -> Engine {
        Engine::new(1, addr(1), (1..=n).map(addr), TIMING)
    }

    /// [`engine`] with members `up` (by index, id = index) answering at `now`.
    pub fn engine_with_up(n: u16, up: &[u16], now: u64) -> Engine {
        let mut e = engine(n);
        for &i in up {
            e.members_mut().on_handshake(addr(i), i, 0);
            e.members_mut().on_probe(addr(i), Probe::Answered, now);
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn timings_follow_the_member_timeout_within_their_bounds() {
        // (member timeout, ping interval, ping timeout, dial timeout)
        let table = [
            (600, 150, 150, 600),
            (3_000, 750, 750, 2_000),
            (40, 25, 50, 100),
            (100_000, 25_000, 25_000, 2_000),
        ];
        for (timeout, interval, ping, dial) in table {
            let t = Timing {
                member_timeout_ms: timeout,
                verify_interval_ms: 500,
            };
            assert_eq!(
                (
                    t.ping_interval_ms(),
                    t.ping_timeout_ms(),
                    t.dial_timeout_ms()
                ),
                (interval, ping, dial),
                "member timeout {timeout}"
            );
        }
    }

    #[test]
    fn an_engine_leaves_its_own_address_out_of_the_members() {
        let e = Engine::new(1, addr(1), [addr(2), addr(1), addr(3), addr(2)], TIMING);
        let addrs: Vec<PeerAddr> = e.members().iter().map(|m| m.addr.clone()).collect();
        assert_eq!(addrs, vec![addr(2), addr(3)]);
    }
}
