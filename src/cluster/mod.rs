//! The Distro cluster: membership and failure detection, ownership, forwarding, batched sync,
//! digest verify and pull, the streamed load of a starting node, and handoff.
//!
//! - [`engine`]: the decisions, sans I/O — members and failure detection, the live view and
//!   its handoff, digest compare and the buckets to pull, a pull's reconcile rules, the load
//!   of a starting node and readiness, the handshake checks. Events and times in, commands out.
//! - `driver`: the async duties that feed the engine its events and run its commands over the
//!   links — member probes, view installs and handoffs, the sync flusher, verify rounds and
//!   pulls, the load on start; changes of the member list ([`Cluster::set_members`]) and the
//!   graceful leave ([`Cluster::leave`]).
//! - `forward`: the write path — registers, deregisters, beats and lapses sent to their
//!   owners; `gather`: registers forwarded to one owner at once, sent as one frame.
//! - [`auth`]: the HMAC primitives of the peer handshake and the node's [`Identity`].
//! - [`link`]: an authenticated outbound connection to a peer, with request deadlines.
//! - [`peer_session`]: serving what peers send on the peer port.
//! - [`sync`]: the sync outbox (one encoded batch for all peers).
//! - [`stats`]: counters of everything the cluster machinery does.
//!
//! Every node dials every other member twice: a *control* link that carries only pings (so
//! failure detection never queues behind bulk traffic) and a *data* link for forwards, sync,
//! digests, pulls, snapshots and handoffs. What a node receives it receives on the links its
//! peers dialed, served by [`peer_session`]. Every task the cluster starts runs on the node's
//! task tracker, so a shutdown waits for all of them.

pub mod auth;
mod driver;
pub mod engine;
mod forward;
mod gather;
pub mod link;
pub mod peer_session;
pub mod stats;
pub mod sync;

use crate::config::PeerAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::model::{ClusterStatus, MemberStatus, NodeId};
use crate::net::{Dialer, Listener};
use crate::store::Store;
use crate::wire::{DigestMsg, Message, SyncRecord, encode_frame};
pub use auth::Identity;
pub use engine::reconcile::UNKNOWN_RECORD_MARGIN_MS;
pub use engine::verify::PULL_AT_ONCE_BUCKETS_MAX;
use engine::{Engine, Timing};
pub use forward::{ForwardError, OwnerRefusal};
use link::Link;
use stats::Stats;
use sync::SyncOutbox;

/// Deadline of a forwarded write (the client's own deadline is usually longer, and the SDK
/// retries a Timeout).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwards in flight at once on a node; beyond it clients get Overloaded.
pub const FORWARDS_IN_FLIGHT_MAX: usize = 4096;
/// Records frames (pull answers, snapshot chunks, handoffs) are cut at about this size.
pub const RECORDS_FRAME_BYTES: usize = 1 << 20;
/// Deadline for each frame of a streamed answer (snapshot, pull).
pub const STREAM_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a leaving node waits for its peers to acknowledge its Leave (each installs a view,
/// an O(records) pass). Well within the shutdown grace: a peer that does not answer in time
/// finds out by its failure detector instead, as for a crash.
pub const LEAVE_ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// One other member of the cluster: its links, and what the engine last decided about it,
/// published for the paths that must not wait for the engine (forwards, sync flushes, status).
pub struct Member {
    pub addr: PeerAddr,
    /// Learned in the handshake; 0 until then.
    id: AtomicU16,
    up: AtomicBool,
    /// It said it was leaving and has not come back since (published for the status).
    left: AtomicBool,
    control: Mutex<Option<Arc<Link>>>,
    data: Mutex<Option<Arc<Link>>>,
    /// Cancelled when it is removed from the member list (or the node stops): its prober ends.
    gone: CancellationToken,
}

impl Member {
    fn new(addr: PeerAddr, shutdown: &CancellationToken) -> Member {
        Member {
            addr,
            id: AtomicU16::new(0),
            up: AtomicBool::new(false),
            left: AtomicBool::new(false),
            control: Mutex::new(None),
            data: Mutex::new(None),
            gone: shutdown.child_token(),
        }
    }

    pub fn id(&self) -> NodeId {
        self.id.load(Ordering::Relaxed)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn link(slot: &Mutex<Option<Arc<Link>>>) -> Option<Arc<Link>> {
        slot.lock()
            .unwrap()
            .as_ref()
            .filter(|l| !l.is_closed())
            .cloned()
    }

    pub fn data_link(&self) -> Option<Arc<Link>> {
        Self::link(&self.data)
    }

    fn control_link(&self) -> Option<Arc<Link>> {
        Self::link(&self.control)
    }

    fn close(slot: &Mutex<Option<Arc<Link>>>) {
        if let Some(l) = slot.lock().unwrap().take() {
            l.close();
        }
    }

    fn drop_links(&self) {
        Self::close(&self.control);
        Self::close(&self.data);
    }
}

pub struct Cluster {
    pub identity: Identity,
    config: Config,
    store: Arc<Store>,
    ready: Arc<AtomicBool>,
    /// The members, in the engine's order; replaced whole when the member list changes
    /// ([`Cluster::set_members`]), read by the paths that must not wait for the engine.
    members: RwLock<Arc<Vec<Arc<Member>>>>,
    /// The decisions. Locked only for the engine's quick synchronous calls, never across an
    /// await (the duties run on the tracker, whose futures must be `Send`: a guard held across
    /// an await does not compile).
    engine: Mutex<Engine>,
    outbox: Arc<SyncOutbox>,
    dialer: Arc<dyn Dialer>,
    /// Serializes view installs (each is an O(records) pass over the store).
    view_lock: tokio::sync::Mutex<()>,
    forwards: Semaphore,
    gather: gather::Gather,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// Cancelled when a graceful stop begins (and by the shutdown): the peer port takes no new
    /// connections from then on.
    draining: CancellationToken,
    /// Serializes member list changes.
    members_lock: tokio::sync::Mutex<()>,
    /// Pull and snapshot answers being streamed to peers (bounded).
    serving: peer_session::Serving,
    pub stats: Stats,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Cluster {
    /// The cluster machinery of a node; its tasks run on `tracker` and stop with `shutdown`,
    /// and it counts into the node's `metrics`.
    #[allow(clippy::too_many_arguments)] // the node's parts, each passed once, by `Node` only
    pub fn new(
        config: Config,
        store: Arc<Store>,
        ready: Arc<AtomicBool>,
        outbox: Arc<SyncOutbox>,
        dialer: Arc<dyn Dialer>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Cluster> {
        let identity = Identity {
            node_id: config.node_id,
            cluster_hash: auth::cluster_hash(&config.cluster_name),
            token: config
                .cluster_token
                .clone()
                .unwrap_or_default()
                .into_bytes(),
        };
        let engine = Engine::new(
            config.node_id,
            config.own_peer_addr(),
            config.members.iter().cloned(),
            Timing::of(&config),
        );
        let members = engine
            .members()
            .iter()
            .map(|m| Arc::new(Member::new(m.addr.clone(), &shutdown)))
            .collect();
        let draining = shutdown.child_token();
        Arc::new(Cluster {
            identity,
            config,
            store,
            ready,
            members: RwLock::new(Arc::new(members)),
            engine: Mutex::new(engine),
            outbox,
            dialer,
            view_lock: tokio::sync::Mutex::new(()),
            forwards: Semaphore::new(FORWARDS_IN_FLIGHT_MAX),
            gather: gather::Gather::default(),
            tracker,
            shutdown,
            draining,
            members_lock: tokio::sync::Mutex::new(()),
            serving: peer_session::Serving::default(),
            stats: Stats::default(),
            metrics,
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The members now, in the order of the list.
    pub fn members(&self) -> Arc<Vec<Arc<Member>>> {
        self.members.read().unwrap().clone()
    }

    fn member(&self, addr: &PeerAddr) -> Option<Arc<Member>> {
        self.members().iter().find(|m| m.addr == *addr).cloned()
    }

    fn member_by_id(&self, id: NodeId) -> Option<Arc<Member>> {
        self.members().iter().find(|m| m.id() == id).cloned()
    }

    fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap()
    }

    fn now_ms(&self) -> u64 {
        self.store.clock().now_ms()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Starts the peer listener and every background duty; they stop with the node's shutdown.
    pub fn start(self: &Arc<Self>, listener: Box<dyn Listener>) {
        self.tracker.spawn(peer_session::accept_loop(
            self.clone(),
            listener,
            self.draining.clone(),
        ));
        for m in self.members().iter() {
            self.tracker.spawn(self.clone().watch_member(m.clone()));
        }
        self.tracker.spawn(self.clone().flush_sync());
        self.tracker.spawn(self.clone().verify_rounds());
        self.tracker.spawn(self.clone().load_on_start());
    }

    /// The live set as this node sees it: itself and every member that is up.
    pub fn live_view(&self) -> Vec<NodeId> {
        self.engine().members().live_view()
    }

    /// Applies records from a peer by version.
    pub fn apply_records(&self, records: &[SyncRecord]) -> usize {
        let applied = self.store.merge_batch(records);
        Stats::add(&self.stats.records_applied, applied as u64);
        applied
    }

    /// Applies a SyncBatch that `peer` sent, counting it for that peer.
    pub fn apply_sync_batch(&self, peer: NodeId, records: &[SyncRecord]) {
        let applied = self.apply_records(records);
        self.metrics
            .peer(peer)
            .sync_applied(records, applied, self.now_ms(), peer);
    }

    /// This node's digest as a Digest frame (request id 0).
    pub fn digest_frame(&self) -> bytes::Bytes {
        let me = self.config.node_id;
        let d = self.store.digest(me);
        let msg = Message::Digest(DigestMsg {
            owner: me,
            view_hash: self.store.ownership().view_hash(),
            buckets: d.buckets.iter().map(|b| (b.count, b.sum)).collect(),
        });
        encode_frame(0, 0, &msg)
    }

    /// This node's view of the cluster, for `distroctl cluster`.
    pub fn status(&self) -> ClusterStatus {
        let owned = self.store.owned_counts();
        let mut members = vec![MemberStatus {
            id: self.config.node_id,
            addr: self.config.own_peer_addr().as_str().into(),
            up: true,
            left: false,
            owned: *owned.get(&self.config.node_id).unwrap_or(&0) as u64,
        }];
        for m in self.members().iter() {
            members.push(MemberStatus {
                id: m.id(),
                addr: m.addr.as_str().into(),
                up: m.is_up(),
                left: m.left.load(Ordering::Acquire),
                owned: if m.is_up() {
                    *owned.get(&m.id()).unwrap_or(&0) as u64
                } else {
                    0
                },
            });
        }
        ClusterStatus {
            node_id: self.config.node_id,
            ready: self.is_ready(),
            instances: self.store.len() as u64,
            members,
        }
    }
}
