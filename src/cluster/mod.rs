//! The Distro cluster: membership and failure detection, ownership, forwarding, batched sync,
//! digest verify and pull, the streamed load of a starting node, and handoff.
//!
//! - [`auth`]: the peer handshake (HMAC challenge-response with the cluster token).
//! - [`gather`]: registers forwarded to one owner at once, sent as one frame.
//! - [`link`]: an authenticated outbound connection to a peer, with request deadlines.
//! - [`peer_session`]: serving what peers send on the peer port.
//! - [`sync`]: the sync outbox (one encoded batch for all peers).
//! - [`stats`]: counters of everything the cluster machinery does.
//!
//! Every node dials every other member twice: a *control* link that carries only pings (so
//! failure detection never queues behind bulk traffic) and a *data* link for forwards, sync,
//! digests, pulls, snapshots and handoffs. What a node receives it receives on the links its
//! peers dialed, served by [`peer_session`].

pub mod auth;
mod gather;
pub mod link;
pub mod peer_session;
pub mod stats;
pub mod sync;

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::hash::{HashMap, HashSet};
use futures_util::future::join_all;
use thiserror::Error;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::config::{Config, PeerAddr};
use crate::model::NodeId;
use crate::model::key_hash;
use crate::model::{ClusterStatus, Instance, InstanceKey, MemberStatus};
use crate::net::{Dialer, Listener};
use crate::ownership::Ownership;
use crate::store::digest::BucketSet;
use crate::store::{Bucket, Digest, Store};
use crate::wire::{
    DigestMsg, ErrorBody, ErrorCode, FLAG_MORE, Message, Opcode, PullMsg, SyncRecord, encode_frame,
};
pub use auth::Identity;
use link::{Link, PeerError};
use stats::Stats;
use sync::{SyncOutbox, records_frame};

/// Why a write forwarded to its owner did not complete.
#[derive(Debug, Clone, Error)]
pub enum ForwardError {
    #[error("too many forwards in flight")]
    Overloaded,
    #[error("owner node {owner} is unreachable")]
    Unreachable { owner: NodeId },
    #[error("forward to owner node {owner} failed: {reason}")]
    Failed { owner: NodeId, reason: String },
    /// The owner answered with an Error frame.
    #[error("owner node {owner} refused the forward: {}", error.message)]
    Refused { owner: NodeId, error: ErrorBody },
}

/// Deadline of a forwarded write (the client's own deadline is usually longer, and the SDK
/// retries a Timeout).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwards in flight at once on a node; beyond it clients get Overloaded.
pub const FORWARDS_IN_FLIGHT_MAX: usize = 4096;
/// Records frames (pull answers, snapshot chunks, handoffs) are cut at about this size.
pub const RECORDS_FRAME_BYTES: usize = 1 << 20;
/// A live record the owner lacks is sent back to it (not dropped) while its version is younger
/// than a tombstone's retention by at least this margin, which absorbs clock skew between nodes.
pub const UNKNOWN_RECORD_MARGIN_MS: u64 = 10_000;
/// A digest that differs in at most this many buckets is repaired at once; beyond it, only the
/// buckets that differed in the previous round too (see `Cluster::on_digest`).
pub const PULL_AT_ONCE_BUCKETS_MAX: usize = 64;
/// A long load logs how far it got this often.
const LOAD_PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(2);
/// Deadline for each frame of a streamed answer (snapshot, pull).
pub const STREAM_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// One other member of the cluster, as this node sees it.
pub struct Member {
    pub addr: PeerAddr,
    /// Learned in the handshake; 0 until then.
    id: AtomicU16,
    up: AtomicBool,
    last_ok_ms: AtomicU64,
    control: Mutex<Option<Arc<Link>>>,
    data: Mutex<Option<Arc<Link>>>,
    /// A pull from this member is in flight (one at a time).
    pulling: AtomicBool,
    /// The buckets that differed from this member's last digest.
    last_diff: Mutex<Option<BucketSet>>,
}

impl Member {
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

    fn drop_links(&self) {
        for slot in [&self.control, &self.data] {
            if let Some(l) = slot.lock().unwrap().take() {
                l.close();
            }
        }
    }
}

pub struct Cluster {
    pub identity: Identity,
    config: Config,
    store: Arc<Store>,
    ready: Arc<AtomicBool>,
    members: Vec<Arc<Member>>,
    outbox: Arc<SyncOutbox>,
    dialer: Arc<dyn Dialer>,
    view_lock: tokio::sync::Mutex<()>,
    ownership_changed_ms: AtomicU64,
    forwards: Semaphore,
    gather: gather::Gather,
    pub stats: Stats,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Cluster {
    pub fn new(
        config: Config,
        store: Arc<Store>,
        ready: Arc<AtomicBool>,
        outbox: Arc<SyncOutbox>,
        dialer: Arc<dyn Dialer>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Cluster> {
        let identity = Identity {
            node_id: config.node_id,
            members_hash: auth::members_hash(&config.members),
            token: config
                .cluster_token
                .clone()
                .unwrap_or_default()
                .into_bytes(),
        };
        let me = config.own_peer_addr();
        let members = config
            .members
            .iter()
            .filter(|a| **a != me)
            .map(|addr| {
                Arc::new(Member {
                    addr: addr.clone(),
                    id: AtomicU16::new(0),
                    up: AtomicBool::new(false),
                    last_ok_ms: AtomicU64::new(0),
                    control: Mutex::new(None),
                    data: Mutex::new(None),
                    pulling: AtomicBool::new(false),
                    last_diff: Mutex::new(None),
                })
            })
            .collect();
        Arc::new(Cluster {
            identity,
            config,
            store,
            ready,
            members,
            outbox,
            dialer,
            view_lock: tokio::sync::Mutex::new(()),
            ownership_changed_ms: AtomicU64::new(0),
            forwards: Semaphore::new(FORWARDS_IN_FLIGHT_MAX),
            gather: gather::Gather::default(),
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

    pub fn members(&self) -> &[Arc<Member>] {
        &self.members
    }

    fn member_by_id(&self, id: NodeId) -> Option<&Arc<Member>> {
        self.members.iter().find(|m| m.id() == id)
    }

    fn now_ms(&self) -> u64 {
        self.store.clock().now_ms()
    }

    /// Starts the peer listener and every background duty; they stop with `shutdown`.
    pub fn start(
        self: &Arc<Self>,
        listener: Box<dyn Listener>,
        shutdown: tokio_util::sync::CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) {
        tracker.spawn(peer_session::accept_loop(
            self.clone(),
            listener,
            shutdown.clone(),
        ));
        for m in &self.members {
            tracker.spawn(self.clone().watch_member(m.clone(), shutdown.clone()));
        }
        tracker.spawn(self.clone().flush_sync(shutdown.clone()));
        tracker.spawn(self.clone().verify_rounds(shutdown.clone()));
        tracker.spawn(self.clone().load_on_start(shutdown));
    }

    // ---- membership -------------------------------------------------------------------

    fn ping_interval(&self) -> Duration {
        Duration::from_millis((self.config.member_timeout_ms / 4).max(25))
    }

    /// Keeps both links to one member up and decides whether it is up: a member that has not
    /// answered a ping for `member_timeout_ms` is down; one that answers again is up.
    async fn watch_member(
        self: Arc<Self>,
        m: Arc<Member>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let every = self.ping_interval();
        let dial_timeout = Duration::from_millis(self.config.member_timeout_ms.clamp(100, 2_000));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => { m.drop_links(); return; }
                _ = tick.tick() => {}
            }
            let ok = self.probe(&m, dial_timeout, every).await;
            let now = self.now_ms();
            if ok {
                m.last_ok_ms.store(now, Ordering::Relaxed);
                if !m.is_up() {
                    m.up.store(true, Ordering::Release);
                    info!(peer = %m.addr, id = m.id(), "member up");
                    self.view_changed().await;
                }
            } else if m.is_up()
                && now.saturating_sub(m.last_ok_ms.load(Ordering::Relaxed))
                    >= self.config.member_timeout_ms
            {
                m.up.store(false, Ordering::Release);
                m.drop_links();
                warn!(peer = %m.addr, id = m.id(), "member down");
                self.view_changed().await;
            }
        }
    }

    /// One ping on the control link (dialing it, and the data link, when missing).
    async fn probe(&self, m: &Member, dial_timeout: Duration, ping_timeout: Duration) -> bool {
        let control = match Member::link(&m.control) {
            Some(l) => l,
            None => match Link::dial(&*self.dialer, &m.addr, &self.identity, dial_timeout).await {
                Ok(l) => {
                    self.learn_id(m, l.peer_id);
                    *m.control.lock().unwrap() = Some(l.clone());
                    l
                }
                Err(e) => {
                    if matches!(e, PeerError::Unauthorized { .. }) {
                        warn!(peer = %m.addr, error = %e, "peer rejected");
                    } else {
                        debug!(peer = %m.addr, error = %e, "peer not reachable");
                    }
                    return false;
                }
            },
        };
        let pong = control
            .call(
                &Message::Ping(self.now_ms()),
                ping_timeout.max(Duration::from_millis(50)),
            )
            .await;
        if !matches!(pong, Ok(Message::Pong(_))) {
            // The path to the peer lost a ping: frames on the data link may have been lost with
            // it, and a connection that lost a frame can stay wedged (a half-open connection;
            // simulated TCP never retransmits), silently swallowing every sync and digest
            // after it. Redial the data link too — unless it is visibly alive (it received
            // within the member timeout): a node that is merely slow under load must not lose
            // its in-flight forwards to one late ping.
            control.close();
            let alive = Duration::from_millis(self.config.member_timeout_ms);
            if let Some(data) = m.data_link()
                && data.idle_for() >= alive
            {
                data.close();
            }
            return false;
        }
        if m.data_link().is_none() {
            match Link::dial(&*self.dialer, &m.addr, &self.identity, dial_timeout).await {
                Ok(l) => *m.data.lock().unwrap() = Some(l),
                Err(e) => {
                    debug!(peer = %m.addr, error = %e, "data link failed");
                    return false;
                }
            }
        }
        true
    }

    fn learn_id(&self, m: &Member, id: NodeId) {
        let old = m.id.swap(id, Ordering::Relaxed);
        if old != 0 && old != id {
            warn!(peer = %m.addr, old, new = id, "member changed its node id");
        }
    }

    /// The live set as this node sees it: itself and every member that is up.
    pub fn live_view(&self) -> Vec<NodeId> {
        let mut live = vec![self.config.node_id];
        live.extend(
            self.members
                .iter()
                .filter(|m| m.is_up() && m.id() != 0)
                .map(|m| m.id()),
        );
        live
    }

    /// Installs the current live set as the ownership view and hands off what this node lost.
    async fn view_changed(&self) {
        let _serial = self.view_lock.lock().await;
        let view = Ownership::new(self.live_view());
        if *self.store.ownership() == view {
            return;
        }
        let live = view.live().to_vec();
        // Records older than a couple of digest rounds are on every live node already (and a
        // joining node loads them): hand off only the younger ones.
        let window = 2 * self.config.verify_interval_ms + self.config.member_timeout_ms;
        let since = self.now_ms().saturating_sub(window);
        // O(records): on a multi-threaded runtime let the other tasks of this worker move on
        // meanwhile, so that pings and forwards keep being answered during a large re-own.
        let change = blocking(|| self.store.set_ownership_handing_off(view, since));
        self.ownership_changed_ms
            .store(self.now_ms(), Ordering::Relaxed);
        Stats::add(&self.stats.view_changes, 1);
        let lost: usize = change.lost.values().map(|b| b.count as usize).sum();
        info!(
            ?live,
            gained = change.gained,
            lost,
            "ownership view changed"
        );
        for (owner, batch) in change.lost {
            let Some(link) = self.member_by_id(owner).and_then(|m| m.data_link()) else {
                continue;
            };
            for (count, bytes) in batch.pieces(RECORDS_FRAME_BYTES) {
                if link.send_raw(records_frame(Opcode::SyncBatch, 0, 0, count, &bytes)) {
                    Stats::add(&self.stats.records_handed_off, count as u64);
                }
            }
        }
    }

    // ---- sync -------------------------------------------------------------------------

    /// Sends the open sync batch to every live peer after the batching window, or at once when
    /// it is full.
    async fn flush_sync(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let window = Duration::from_millis(self.config.sync_delay_ms);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => { self.send_open_batch(); return; }
                _ = self.outbox.notify.notified() => {}
            }
            if !window.is_zero() && !self.outbox.is_full() {
                let wait = tokio::time::sleep(window);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        _ = &mut wait => break,
                        _ = self.outbox.notify.notified() => if self.outbox.is_full() { break },
                    }
                }
            }
            self.send_open_batch();
        }
    }

    fn send_open_batch(&self) {
        let Some((count, frame)) = self.outbox.take_frame() else {
            return;
        };
        Stats::add(&self.stats.sync_records_sent, count as u64);
        for m in &self.members {
            match m.data_link().filter(|_| m.is_up()) {
                Some(l) if l.send_raw(frame.clone()) => {
                    Stats::add(&self.stats.sync_frames_sent, 1);
                    self.metrics.peer(m.id()).sync_sent(count, frame.len());
                }
                _ => {
                    Stats::add(&self.stats.sync_frames_dropped, 1);
                    self.metrics.peer(m.id()).sync_dropped_batches.inc();
                }
            }
        }
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

    // ---- verify -----------------------------------------------------------------------

    /// Every verify interval: send this node's digest (of the records it owns) to every live
    /// peer. One encoding, the same bytes to all.
    async fn verify_rounds(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.verify_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !self.ready.load(Ordering::Acquire) {
                continue;
            }
            let frame = self.digest_frame();
            self.metrics.digest_rounds.inc();
            let deadline = Duration::from_millis(self.config.member_timeout_ms);
            for m in self.members.iter().filter(|m| m.is_up()) {
                if let Some(l) = m.data_link()
                    && l.send_raw(frame.clone())
                {
                    Stats::add(&self.stats.digests_sent, 1);
                    Stats::add(&self.stats.digest_bytes_sent, frame.len() as u64);
                    // Digests and sync batches expect no answer, so nothing would notice a data
                    // link that stopped delivering (a frame lost in a short partition wedges it:
                    // simulated TCP never retransmits, a half-open connection hangs): a ping
                    // behind the digest must be answered within the member timeout, or the
                    // call closes the link and the prober redials it.
                    let ping = Message::Ping(self.now_ms());
                    tokio::spawn(async move {
                        let _ = l.call(&ping, deadline).await;
                    });
                }
            }
        }
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

    /// A peer's digest arrived: compare with this node's copy of that owner's records and
    /// pull the buckets that differ.
    pub fn on_digest(self: &Arc<Self>, d: DigestMsg) {
        if d.view_hash != self.store.ownership().view_hash() {
            // Different live sets mean different owners: comparing would pull (and delete)
            // for nothing. The views converge within a member timeout.
            Stats::add(&self.stats.digest_view_mismatches, 1);
            return;
        }
        if d.buckets.len() != crate::model::DIGEST_BUCKETS {
            return;
        }
        let theirs = Digest {
            buckets: d
                .buckets
                .iter()
                .map(|&(count, sum)| Bucket { count, sum })
                .collect(),
        };
        let diff = self.store.digest(d.owner).diff(&theirs);
        let Some(m) = self.member_by_id(d.owner).cloned() else {
            return;
        };
        self.metrics
            .peer(d.owner)
            .digest_mismatched_buckets
            .inc_by(diff.len() as u64);
        let previous = m.last_diff.lock().unwrap().replace(diff.clone());
        if diff.is_empty() {
            Stats::add(&self.stats.digests_matched, 1);
            return;
        }
        // Under a burst of writes many buckets differ only because sync batches are still on
        // their way; pulling them would copy much of the store for nothing. A few differing
        // buckets are pulled at once (a real divergence, repaired within one round); many are
        // pulled only where they differed in the previous round too.
        let diff = if diff.len() <= PULL_AT_ONCE_BUCKETS_MAX {
            diff
        } else {
            let persistent: BucketSet = match previous {
                Some(prev) => diff.iter().filter(|b| prev.contains(*b)).collect(),
                None => BucketSet::default(),
            };
            if persistent.is_empty() {
                return;
            }
            persistent
        };
        if m.pulling.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.pull(&m, d.owner, d.view_hash, diff).await {
                debug!(peer = %m.addr, error = %e, "pull failed");
            }
            m.pulling.store(false, Ordering::Release);
        });
    }

    /// Pulls the records of the differing buckets from their owner, merges them by version,
    /// and removes what the owner no longer has — but only records old enough that the owner
    /// has had time to learn of them, and only while views agree and no ownership change is
    /// recent (a record may still be on its way to a new owner).
    async fn pull(
        &self,
        m: &Member,
        owner: NodeId,
        view_hash: u64,
        buckets: BucketSet,
    ) -> Result<(), PeerError> {
        let link = m.data_link().ok_or(PeerError::Closed)?;
        Stats::add(&self.stats.pulls, 1);
        Stats::add(&self.stats.buckets_pulled, buckets.len() as u64);
        let started_ms = self.now_ms();
        let req = Message::Pull(PullMsg {
            owner,
            buckets: buckets.iter().map(|b| b as u16).collect(),
        });
        let mut rx = link.call_stream(&req, STREAM_FRAME_TIMEOUT).await?;
        let mut present = HashSet::default();
        // The owner's version of each record it sent, by key hash.
        let mut theirs: HashMap<u64, crate::model::Version> = HashMap::default();
        let mut repaired = 0;
        loop {
            let msg = self.next_streamed(&link, &mut rx, "pull").await?;
            match msg {
                Some(Message::Records(recs)) => {
                    for r in &recs {
                        let k = &r.key;
                        let h = key_hash(&k.service, &k.cluster, &k.ip, k.port);
                        present.insert(h);
                        theirs.insert(h, r.version);
                    }
                    repaired += self.apply_records(&recs);
                }
                Some(Message::Error(e)) => return Err(PeerError::Remote(e)),
                Some(other) => return Err(PeerError::Unexpected(format!("{:?}", other.opcode()))),
                None => break,
            }
        }
        if link.is_closed() {
            // The stream ended because the link broke, not because the owner finished.
            return Err(PeerError::Closed);
        }
        Stats::add(&self.stats.records_repaired, repaired as u64);
        self.metrics
            .peer(owner)
            .repaired_records
            .inc_by(repaired as u64);
        // Records this node holds at a newer version than the owner's (a write or delete whose
        // handoff to the owner was lost, the other side of a healed partition): last writer
        // wins, so they go to the owner, whose next digest spreads them. Without this the owner
        // never learns them and every replica pulls the same buckets forever.
        //
        // Live records the owner does not have at all go to the owner too when they are younger
        // than the retention of any tombstone that could have deleted them: had the owner
        // deleted one, it would still hold the tombstone and have sent it. So the owner never
        // learned of it (a handoff lost, or sent to a node whose view named another owner while
        // a partition healed in steps), and dropping it would lose an acknowledged write. Older
        // ones may have been deleted and their tombstone collected: those are dropped below.
        let now_ms = self.now_ms();
        let mut newer = crate::store::RecordBatch::default();
        let mut kept = present.clone();
        let mine = |r: &crate::store::Record| {
            r.owner == owner && buckets.contains(crate::store::digest::bucket_of(r.key_hash))
        };
        self.store.for_each_matching(mine, |name, id, r| {
            let unknown_to_owner = r.alive
                && !present.contains(&r.key_hash)
                && crate::clock::hlc_physical_ms(r.version.hlc)
                    + r.lease.expire_ms as u64
                    + crate::store::TOMBSTONE_GRACE_MS
                    > now_ms + UNKNOWN_RECORD_MARGIN_MS;
            if unknown_to_owner || theirs.get(&r.key_hash).is_some_and(|v| *v < r.version) {
                newer.push(name, id, r);
                kept.insert(r.key_hash);
            }
        });
        for (count, bytes) in newer.pieces(RECORDS_FRAME_BYTES) {
            if link.send_raw(records_frame(Opcode::SyncBatch, 0, 0, count, &bytes)) {
                Stats::add(&self.stats.records_pushed_to_owner, count as u64);
            }
        }
        let grace = self.config.verify_interval_ms + self.config.member_timeout_ms;
        let changed = self.ownership_changed_ms.load(Ordering::Relaxed);
        let mut dropped = 0;
        if self.store.ownership().view_hash() == view_hash
            && started_ms.saturating_sub(changed) > grace
        {
            dropped =
                self.store
                    .drop_missing(owner, &buckets, &kept, started_ms.saturating_sub(grace));
            Stats::add(&self.stats.records_dropped_by_pull, dropped as u64);
        }
        if repaired + dropped > 0 {
            info!(
                owner,
                buckets = buckets.len(),
                repaired,
                dropped,
                "anti-entropy repair"
            );
        } else {
            debug!(
                owner,
                buckets = buckets.len(),
                "anti-entropy pull changed nothing"
            );
        }
        Ok(())
    }

    // ---- load -------------------------------------------------------------------------

    /// A starting node streams a full snapshot from a live peer before it serves clients. A
    /// node that reaches no peer within twice the member timeout is alone and serves at once.
    async fn load_on_start(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let alone_after = Duration::from_millis(self.config.member_timeout_ms * 2);
        // Serving alone is right only when no peer that may hold the data has been reachable
        // for a while: one that was up a moment ago (and failed mid-load, or went down, or is
        // merely slow) may still hold what this node would otherwise serve without. Peers that
        // answer "loading" hold nothing yet.
        let mut last_data_peer_seen = tokio::time::Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let up: Vec<Arc<Member>> = self.members.iter().filter(|m| m.is_up()).cloned().collect();

            // Peers that refused because they are loading themselves (their store is no copy
            // of the cluster's data).
            let mut loading = 0;
            for m in &up {
                let started = tokio::time::Instant::now();
                match self.load_from(m).await {
                    Ok(n) => {
                        self.metrics.snapshot_loaded(started.elapsed());
                        self.ready.store(true, Ordering::Release);
                        info!(peer = %m.addr, records = n, "loaded the cluster's data; ready");
                        return;
                    }
                    Err(PeerError::Remote(e)) if e.kind() == Some(ErrorCode::NotReady) => {
                        loading += 1;
                    }
                    Err(e) => {
                        last_data_peer_seen = tokio::time::Instant::now();
                        warn!(peer = %m.addr, error = %e, "snapshot load failed");
                    }
                }
            }
            // Every member up and loading: the whole cluster is starting and nobody holds data
            // yet. Otherwise serve alone only once no peer with data answered for a while.
            let cold_start = !up.is_empty() && up.len() == self.members.len();
            if loading == up.len() && (cold_start || last_data_peer_seen.elapsed() >= alone_after) {
                self.ready.store(true, Ordering::Release);
                info!(loading, "no peer with data reachable; serving alone");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The next frame of a streamed answer (pull, snapshot); None after the last one. A link
    /// that receives nothing at all for a member timeout while a frame is awaited has lost one
    /// (a frame dropped in a partition wedges it: simulated TCP never retransmits, a half-open
    /// connection hangs) and is closed, so that it is redialed, also while this node is still
    /// loading (nothing else checks its data links then); a link that keeps receiving is waited
    /// on up to [`STREAM_FRAME_TIMEOUT`] for the frame.
    async fn next_streamed(
        &self,
        link: &Link,
        rx: &mut tokio::sync::mpsc::Receiver<Message>,
        what: &'static str,
    ) -> Result<Option<Message>, PeerError> {
        let silent_max = Duration::from_millis(self.config.member_timeout_ms);
        let deadline = tokio::time::Instant::now() + STREAM_FRAME_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(silent_max.min(left), rx.recv()).await {
                Ok(msg) => return Ok(msg),
                Err(_)
                    if tokio::time::Instant::now() < deadline && link.idle_for() < silent_max => {}
                Err(_) => {
                    link.close();
                    return Err(PeerError::Timeout { what });
                }
            }
        }
    }

    async fn load_from(&self, m: &Member) -> Result<usize, PeerError> {
        let link = m.data_link().ok_or(PeerError::Closed)?;
        let mut rx = link
            .call_stream(&Message::SnapshotRequest, STREAM_FRAME_TIMEOUT)
            .await?;
        let mut total = 0;
        info!(peer = %m.addr, "loading the cluster's data");
        let mut progress = tokio::time::Instant::now();
        loop {
            let msg = self.next_streamed(&link, &mut rx, "snapshot").await?;
            match msg {
                Some(Message::Records(recs)) => {
                    total += recs.len();
                    self.apply_records(&recs);
                    if progress.elapsed() >= LOAD_PROGRESS_LOG_INTERVAL {
                        progress = tokio::time::Instant::now();
                        info!(peer = %m.addr, records = total, "loading the cluster's data");
                    }
                }
                Some(Message::Error(e)) => return Err(PeerError::Remote(e)),
                Some(other) => return Err(PeerError::Unexpected(format!("{:?}", other.opcode()))),
                None => break,
            }
        }
        if link.is_closed() {
            return Err(PeerError::Closed);
        }
        Stats::add(&self.stats.snapshot_records_loaded, total as u64);
        Ok(total)
    }

    // ---- write path -------------------------------------------------------------------

    /// Sends one forward to `owner`, holding a slot of the bounded in-flight budget.
    async fn forward(&self, owner: NodeId, msg: Message) -> Result<Message, ForwardError> {
        let _slot = self
            .forwards
            .try_acquire()
            .map_err(|_| ForwardError::Overloaded)?;
        Stats::add(&self.stats.forwards, 1);
        self.metrics.peer(owner).forwards_sent.inc();
        let link = self
            .member_by_id(owner)
            .and_then(|m| m.data_link())
            .ok_or_else(|| {
                Stats::add(&self.stats.forward_errors, 1);
                self.metrics.peer(owner).forward_errors.inc();
                ForwardError::Unreachable { owner }
            })?;
        match link.call(&msg, FORWARD_TIMEOUT).await {
            Ok(Message::Error(error)) | Err(PeerError::Remote(error)) => {
                Stats::add(&self.stats.forward_errors, 1);
                self.metrics.peer(owner).forward_errors.inc();
                Err(ForwardError::Refused { owner, error })
            }
            Ok(answer) => Ok(answer),
            Err(other) => {
                Stats::add(&self.stats.forward_errors, 1);
                self.metrics.peer(owner).forward_errors.inc();
                Err(ForwardError::Failed {
                    owner,
                    reason: other.to_string(),
                })
            }
        }
    }

    /// Splits items by owner: this node's are returned under its own id. (A few owners at
    /// most, one for a single-instance request: a list beats a map.)
    fn by_owner<T>(
        &self,
        items: impl IntoIterator<Item = (usize, T)>,
        key: impl Fn(&T) -> (&str, u16),
    ) -> Vec<(NodeId, Vec<(usize, T)>)> {
        let o = self.store.ownership();
        let mut groups: Vec<(NodeId, Vec<(usize, T)>)> = Vec::new();
        for (i, item) in items {
            let (ip, port) = key(&item);
            let owner = o.owner(ip, port);
            match groups.iter_mut().find(|(id, _)| *id == owner) {
                Some((_, group)) => group.push((i, item)),
                None => groups.push((owner, vec![(i, item)])),
            }
        }
        groups
    }

    /// Registers instances at their owners (this node's directly, the rest forwarded, batched
    /// per owner and gathered with other forwards to it, see [`gather`]); answers once every
    /// owner has applied its share.
    pub async fn register(
        self: &Arc<Self>,
        instances: &[Instance],
        session: u64,
    ) -> Result<u32, ForwardError> {
        let me = self.config.node_id;
        let groups = self.by_owner(instances.iter().enumerate(), |i| (&i.key.ip, i.key.port));
        let mut remote = Vec::new();
        for (owner, items) in groups {
            if owner == me {
                for (_, inst) in items {
                    self.store.register(inst, session);
                }
            } else {
                // A register (a client's redo after a reconnect, say) is as good a sign of life
                // as a beat (see `Cluster::beat`).
                self.store
                    .note_client_beats(items.iter().map(|(_, i)| &i.key));
                let batch: Vec<Instance> = items.into_iter().map(|(_, i)| i.clone()).collect();
                remote.push(self.forward_register(owner, session, batch));
            }
        }
        for r in join_all(remote).await {
            r?;
        }
        Ok(instances.len() as u32)
    }

    pub async fn deregister(&self, keys: &[InstanceKey]) -> Result<u32, ForwardError> {
        let me = self.config.node_id;
        let mut removed = 0;
        let mut remote = Vec::new();
        for (owner, items) in self.by_owner(keys.iter().enumerate(), |k| (&k.ip, k.port)) {
            if owner == me {
                removed += items
                    .iter()
                    .filter(|(_, k)| self.store.deregister(k))
                    .count() as u32;
            } else {
                let batch = items.into_iter().map(|(_, k)| k.clone()).collect();
                remote.push(async move {
                    let answer = self.forward(owner, Message::FwdDeregister(batch)).await?;
                    expect_ack(owner, answer)
                });
            }
        }
        for r in join_all(remote).await {
            removed += r?;
        }
        Ok(removed)
    }

    /// Beats keys at their owners; answers the indexes (into `keys`) the owners do not know.
    pub async fn beat(&self, keys: &[InstanceKey]) -> Result<Vec<u16>, ForwardError> {
        let me = self.config.node_id;
        let mut unknown = Vec::new();
        let mut remote = Vec::new();
        for (owner, items) in self.by_owner(keys.iter().enumerate(), |k| (&k.ip, k.port)) {
            let idx: Vec<usize> = items.iter().map(|(i, _)| *i).collect();
            if owner == me {
                let mine: Vec<&InstanceKey> = items.iter().map(|(_, k)| *k).collect();
                unknown.extend(
                    self.store
                        .beat_batch(&mine)
                        .into_iter()
                        .map(|j| idx[j as usize] as u16),
                );
            } else {
                // The client beats here: evidence that it is alive even if the owner cannot be
                // reached (see `Store::merge`).
                self.store.note_client_beats(items.iter().map(|(_, k)| *k));
                let batch = items.into_iter().map(|(_, k)| k.clone()).collect();
                remote.push(async move {
                    (
                        owner,
                        idx,
                        self.forward(owner, Message::FwdBeat(batch)).await,
                    )
                });
            }
        }
        for (owner, idx, r) in join_all(remote).await {
            match r? {
                Message::BeatAck(sub) => {
                    let gone: HashSet<usize> = sub.iter().map(|&j| j as usize).collect();
                    unknown.extend(
                        idx.iter()
                            .enumerate()
                            .filter(|(j, _)| gone.contains(j))
                            .map(|(_, &i)| i as u16),
                    );
                }
                other => return Err(unexpected(owner, other)),
            }
        }
        unknown.sort_unstable();
        Ok(unknown)
    }

    /// A client session dropped: tell each owner to lapse its share (best effort; an owner
    /// that misses it still expires the instances by their lease).
    pub async fn lapse_session(&self, session: u64, keys: Vec<InstanceKey>) {
        let me = self.config.node_id;
        let mut remote = Vec::new();
        for (owner, items) in self.by_owner(keys.into_iter().enumerate(), |k| (&k.ip, k.port)) {
            if owner == me {
                for (_, k) in &items {
                    self.store.lapse_session(k, session);
                }
            } else {
                // Beats of these keys no longer come through here.
                for (_, k) in &items {
                    self.store.note_session_gone(k, session);
                }
                let batch: Vec<InstanceKey> = items.into_iter().map(|(_, k)| k).collect();
                for chunk in batch.chunks(crate::model::BATCH_INSTANCES_MAX) {
                    remote.push(self.forward(
                        owner,
                        Message::FwdLapse {
                            session,
                            keys: chunk.to_vec(),
                        },
                    ));
                }
            }
        }
        for r in join_all(remote).await {
            if let Err(e) = r {
                warn!(error = %e, "could not tell an owner that a session dropped");
            }
        }
    }

    /// This node's view of the cluster, for `distroctl cluster`.
    pub fn status(&self) -> ClusterStatus {
        let owned = self.store.owned_counts();
        let mut members = vec![MemberStatus {
            id: self.config.node_id,
            addr: self.config.own_peer_addr().as_str().into(),
            up: true,
            owned: *owned.get(&self.config.node_id).unwrap_or(&0) as u64,
        }];
        for m in &self.members {
            members.push(MemberStatus {
                id: m.id(),
                addr: m.addr.as_str().into(),
                up: m.is_up(),
                owned: if m.is_up() {
                    *owned.get(&m.id()).unwrap_or(&0) as u64
                } else {
                    0
                },
            });
        }
        ClusterStatus {
            node_id: self.config.node_id,
            ready: self.ready.load(Ordering::Acquire),
            instances: self.store.len() as u64,
            members,
        }
    }

    /// Frames answering a Pull or SnapshotRequest: `pieces` as Records frames, FLAG_MORE on all
    /// but the last, and an empty last frame when there is nothing.
    pub fn records_frames(request_id: u32, pieces: Vec<(u32, bytes::Bytes)>) -> Vec<bytes::Bytes> {
        let n = pieces.len();
        if n == 0 {
            return vec![records_frame(Opcode::Records, request_id, 0, 0, &[])];
        }
        pieces
            .into_iter()
            .enumerate()
            .map(|(i, (count, bytes))| {
                let flags = if i + 1 < n { FLAG_MORE } else { 0 };
                records_frame(Opcode::Records, request_id, flags, count, &bytes)
            })
            .collect()
    }
}

/// Runs CPU-heavy synchronous work: through `block_in_place` on a multi-threaded runtime (the
/// worker's other tasks move to other workers), directly on a single-threaded one (tests, the
/// simulation), where that is not possible.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// An owner answered a forward with a message that is not the answer to it.
fn unexpected(owner: NodeId, m: Message) -> ForwardError {
    ForwardError::Failed {
        owner,
        reason: format!("answered with {:?}", m.opcode()),
    }
}

fn expect_ack(owner: NodeId, m: Message) -> Result<u32, ForwardError> {
    match m {
        Message::Ack(n) => Ok(n),
        other => Err(unexpected(owner, other)),
    }
}
