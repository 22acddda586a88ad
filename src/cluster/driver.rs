//! The async driver of the [`engine`](super::engine): the cluster's duties feed the engine
//! what happened on the links and run the commands it answers. Member probes, view installs
//! and their handoffs, the sync flusher, verify rounds and pulls, the load on start. Timers and
//! sockets live here; every decision about them is the engine's.

use crate::config::PeerAddr;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use super::engine::load::LoadOutcome;
use super::engine::reconcile::{Fate, Held, Reconcile};
use super::engine::verify::{self, PullPlan, Unfit, Verdict};
use super::engine::{Command, Probe, Timing};
use super::link::{Link, PeerError};
use super::stats::Stats;
use super::sync::records_frame;
use super::{Cluster, LEAVE_ACK_TIMEOUT, Member, RECORDS_FRAME_BYTES, STREAM_FRAME_TIMEOUT};
use crate::model::{NodeId, key_hash};
use crate::store::RecordBatch;
use crate::wire::{DigestMsg, ErrorCode, Message, Opcode, PullMsg};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A long load logs how far it got this often.
const LOAD_PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(2);

impl Cluster {
    fn timing(&self) -> Timing {
        Timing::of(&self.config)
    }

    /// Runs the engine's commands in order (and those the outcomes of loads bring). Answers
    /// the time the engine asked to be woken at, if it did.
    async fn run(&self, cmds: Vec<Command>) -> Option<u64> {
        let mut queue = VecDeque::from(cmds);
        let mut wake = None;
        while let Some(cmd) = queue.pop_front() {
            match cmd {
                Command::CloseControl(addr) => {
                    if let Some(m) = self.member(&addr) {
                        Member::close(&m.control);
                    }
                }
                Command::CloseData(addr) => {
                    if let Some(m) = self.member(&addr) {
                        Member::close(&m.data);
                    }
                }
                Command::MemberUp { addr, .. } => {
                    if let Some(m) = self.member(&addr) {
                        m.left.store(false, Ordering::Release);
                        m.up.store(true, Ordering::Release);
                    }
                }
                Command::MemberDown { addr } => {
                    if let Some(m) = self.member(&addr) {
                        m.up.store(false, Ordering::Release);
                        m.drop_links();
                    }
                }
                Command::InstallView => self.install_view().await,
                Command::Load { from } => {
                    let outcome = self.load_from(from.clone()).await;
                    let next = self.engine().on_load(from, outcome, self.now_ms());
                    queue.extend(next);
                }
                Command::MarkReady(_) => self.ready.store(true, Ordering::Release),
                Command::WakeAt(at_ms) => wake = Some(at_ms),
            }
        }
        wake
    }

    // ---- membership -------------------------------------------------------------------

    /// Probes one member every ping interval until shutdown (or until it is removed from the
    /// member list) and tells the engine what each probe found.
    pub(super) async fn watch_member(self: Arc<Self>, m: Arc<Member>) {
        let timing = self.timing();
        let mut tick = tokio::time::interval(ms(timing.ping_interval_ms()));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = m.gone.cancelled() => { m.drop_links(); return; }
                _ = tick.tick() => {}
            }
            let probe = tokio::select! {
                _ = m.gone.cancelled() => { m.drop_links(); return; }
                p = self.probe(&m, timing) => p,
            };
            let cmds = self
                .engine()
                .members_mut()
                .on_probe(m.addr.clone(), probe, self.now_ms());
            self.run(cmds).await;
        }
    }

    /// One ping on the control link — dialing it when missing, and the data link after a good
    /// ping when that is missing.
    async fn probe(&self, m: &Member, timing: Timing) -> Probe {
        let dial_timeout = ms(timing.dial_timeout_ms());
        // When the dial began, not when its handshake ended: a member that left meanwhile may
        // have answered this handshake just before it left.
        let dialed_ms = self.now_ms();
        let control = match m.control_link() {
            Some(l) => l,
            None => match self.dial_link(&m.addr, dial_timeout).await {
                Ok(l) => {
                    self.engine()
                        .members_mut()
                        .on_handshake(m.addr.clone(), l.peer_id, dialed_ms);
                    m.id.store(l.peer_id, Ordering::Relaxed);
                    *m.control.lock().unwrap() = Some(l.clone());
                    l
                }
                Err(e) => {
                    if matches!(e, PeerError::Unauthorized { .. }) {
                        warn!(peer = %m.addr, error = %e, "peer rejected");
                    } else {
                        debug!(peer = %m.addr, error = %e, "peer not reachable");
                    }
                    return Probe::Unreachable;
                }
            },
        };
        let ping = Message::Ping(self.now_ms());
        let pong = control.call(&ping, ms(timing.ping_timeout_ms())).await;
        if !matches!(pong, Ok(Message::Pong(_))) {
            let data_idle_ms = m.data_link().map(|l| l.idle_for().as_millis() as u64);
            return Probe::PingLost { data_idle_ms };
        }
        if m.data_link().is_none() {
            match self.dial_link(&m.addr, dial_timeout).await {
                Ok(l) => *m.data.lock().unwrap() = Some(l),
                Err(e) => {
                    debug!(peer = %m.addr, error = %e, "data link failed");
                    return Probe::Unreachable;
                }
            }
        }
        Probe::Answered
    }

    /// Changes the member list to `addrs` (this node's own address among them or not, as a
    /// config file lists it): the members added are probed from now on; those removed lose
    /// their links, and leave the view if they were in it (their keys move now). The members
    /// kept keep their state. Answers the addresses added and removed.
    pub async fn set_members(
        self: &Arc<Self>,
        addrs: &[PeerAddr],
    ) -> (Vec<PeerAddr>, Vec<PeerAddr>) {
        let _serial = self.members_lock.lock().await;
        let me = self.config.own_peer_addr();
        let mut want: Vec<PeerAddr> = Vec::new();
        for a in addrs {
            if *a != me && !want.contains(a) {
                want.push(a.clone());
            }
        }
        let current = self.members();
        let removed: Vec<Arc<Member>> = current
            .iter()
            .filter(|m| !want.contains(&m.addr))
            .cloned()
            .collect();
        let added: Vec<PeerAddr> = want
            .iter()
            .filter(|a| !current.iter().any(|m| m.addr == **a))
            .cloned()
            .collect();
        if removed.is_empty() && added.is_empty() {
            return (added, Vec::new());
        }
        let mut cmds = Vec::new();
        {
            let mut engine = self.engine();
            for a in &added {
                engine.members_mut().add(a.clone());
            }
            for m in &removed {
                cmds.extend(engine.members_mut().remove(m.addr.clone()));
            }
        }
        let next: Vec<Arc<Member>> = want
            .iter()
            .map(|a| match current.iter().find(|m| m.addr == *a) {
                Some(m) => m.clone(),
                None => Arc::new(Member::new(a.clone(), &self.shutdown)),
            })
            .collect();
        // The removed members' links go (MemberDown) and the view without them is installed
        // before they leave the list: its handoffs look members up by id.
        self.run(cmds).await;
        *self.members.write().unwrap() = Arc::new(next.clone());
        for m in &removed {
            m.gone.cancel();
            m.drop_links();
        }
        for m in next.iter().filter(|m| added.contains(&m.addr)) {
            self.tracker.spawn(self.clone().watch_member(m.clone()));
        }
        let removed: Vec<PeerAddr> = removed.iter().map(|m| m.addr.clone()).collect();
        info!(
            ?added,
            ?removed,
            members = next.len() + 1,
            "member list changed"
        );
        (added, removed)
    }

    /// The peer `id` said it is leaving (on a connection it authenticated as `id`): its keys
    /// move now, and it is not counted up again until it comes back with a new handshake.
    /// Answers once the view without it is installed.
    pub async fn on_peer_leave(&self, id: NodeId) {
        let cmds = self.engine().members_mut().on_leave(id, self.now_ms());
        if cmds.is_empty() {
            debug!(peer = id, "a peer that is no member here says it leaves");
            return;
        }
        if let Some(m) = self.member_by_id(id) {
            m.left.store(true, Ordering::Release);
        }
        self.run(cmds).await;
    }

    /// Leaves the cluster, the first step of a graceful stop: the peer port takes no new
    /// connections; the view of the members up without this node is installed, so that the
    /// young records it owned go to their new owners (as in any view change) and the writes it
    /// still receives are forwarded to them; every write it made is sent; then each member up
    /// is told, over the data link behind those records, and answers once it took over — or
    /// the node stops without its answer after [`LEAVE_ACK_TIMEOUT`] (that member's failure
    /// detector moves the keys then, as after a crash).
    pub async fn leave(self: &Arc<Self>) {
        self.draining.cancel();
        let tell = self.engine().leave();
        self.install_view().await;
        self.send_open_batch();
        if tell.is_empty() {
            info!("leaving the cluster: no member up to hand over to");
            return;
        }
        let me = self.config.node_id;
        let asked = tell.iter().map(|addr| async move {
            let link = self.member(addr).and_then(|m| m.data_link())?;
            match link.call(&Message::Leave(me), LEAVE_ACK_TIMEOUT).await {
                Ok(Message::Ack(_)) => Some(()),
                other => {
                    warn!(peer = %addr, answer = ?other.map(|m| m.opcode()), "peer did not acknowledge the leave");
                    None
                }
            }
        });
        let acknowledged = join_all(asked).await.into_iter().flatten().count();
        info!(
            members = tell.len(),
            acknowledged, "left the cluster; the members took over this node's keys"
        );
    }

    /// Whether this node is leaving (or stopping): what peers forward to it goes on to the
    /// owners of its view, which leaves it out.
    pub fn is_leaving(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Installs the live view the engine holds (when it differs from the store's) and hands
    /// off what this node lost. One install at a time.
    async fn install_view(&self) {
        let _serial = self.view_lock.lock().await;
        let plan = self
            .engine()
            .plan_view(&self.store.ownership(), self.now_ms());
        let Some(plan) = plan else { return };
        let live = plan.view.live().to_vec();
        // O(records): on a multi-threaded runtime let the other tasks of this worker move on
        // meanwhile, so that pings and forwards keep being answered during a large re-own.
        let change = blocking(|| {
            self.store
                .set_ownership_handing_off(plan.view, plan.since_ms)
        });
        let handoffs = self
            .engine()
            .view_installed(self.now_ms(), change.lost.keys().copied());
        Stats::add(&self.stats.view_changes, 1);
        let lost: usize = change.lost.values().map(|b| b.count as usize).sum();
        info!(
            ?live,
            gained = change.gained,
            lost,
            "ownership view changed"
        );
        for h in handoffs {
            let link = self.member(&h.to).and_then(|m| m.data_link());
            let (Some(batch), Some(link)) = (change.lost.get(&h.owner), link) else {
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
    pub(super) async fn flush_sync(self: Arc<Self>) {
        let window = ms(self.config.sync_delay_ms);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => { self.send_open_batch(); return; }
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
        let dropped = self.outbox.take_dropped();
        if dropped > 0 {
            Stats::add(&self.stats.sync_records_dropped, dropped);
            warn!(
                records = dropped,
                "sync outbox full; records left to anti-entropy"
            );
        }
        while let Some((count, frame)) = self.outbox.take_frame() {
            Stats::add(&self.stats.sync_records_sent, count as u64);
            for m in self.members().iter() {
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
    }

    // ---- verify -----------------------------------------------------------------------

    /// Every verify interval: send this node's digest (of the records it owns) to the members
    /// the engine names. One encoding, the same bytes to all.
    pub(super) async fn verify_rounds(self: Arc<Self>) {
        let timing = self.timing();
        let mut tick = tokio::time::interval(ms(timing.verify_interval_ms));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let targets = self.engine().digest_targets(self.is_ready());
            if targets.is_empty() {
                continue;
            }
            let frame = self.digest_frame();
            self.metrics.digest_rounds.inc();
            for addr in targets {
                let Some(l) = self.member(&addr).and_then(|m| m.data_link()) else {
                    continue;
                };
                if !l.send_raw(frame.clone()) {
                    continue;
                }
                Stats::add(&self.stats.digests_sent, 1);
                Stats::add(&self.stats.digest_bytes_sent, frame.len() as u64);
                // Digests and sync batches expect no answer, so nothing would notice a data
                // link that stopped delivering (a frame lost in a short partition wedges it:
                // simulated TCP never retransmits, a half-open connection hangs): a ping behind
                // the digest must be answered within the member timeout, or the call closes the
                // link and the prober redials it.
                let ping = Message::Ping(self.now_ms());
                let deadline = ms(timing.member_timeout_ms);
                self.tracker.spawn(async move {
                    let _ = l.call(&ping, deadline).await;
                });
            }
        }
    }

    /// A peer's digest arrived: the engine compares it with this node's copy of that owner's
    /// records and may start a pull of the buckets that differ.
    pub fn on_digest(self: &Arc<Self>, d: DigestMsg) {
        let theirs = match verify::screen(&d, self.store.ownership().view_hash()) {
            Ok(theirs) => theirs,
            Err(Unfit::OtherView) => {
                Stats::add(&self.stats.digest_view_mismatches, 1);
                return;
            }
            Err(Unfit::BucketCount { .. }) => return,
        };
        let diff = self.store.digest(d.owner).diff(&theirs);
        self.metrics
            .peer(d.owner)
            .digest_mismatched_buckets
            .inc_by(diff.len() as u64);
        let verdict = self.engine().on_digest(d.owner, d.view_hash, diff);
        match verdict {
            Verdict::Matched => Stats::add(&self.stats.digests_matched, 1),
            Verdict::Pull(plan) => {
                let me = self.clone();
                self.tracker.spawn(async move {
                    let from = plan.from.clone();
                    if let Err(e) = me.pull(plan).await {
                        debug!(peer = %from, error = %e, "pull failed");
                    }
                    me.engine().pull_done(from);
                });
            }
            Verdict::UnknownOwner | Verdict::Settling | Verdict::Busy => {}
        }
    }

    /// Pulls the records of the planned buckets from their owner, merges them by version, and
    /// sends back or drops this node's records there as the engine's reconcile rules say.
    async fn pull(&self, plan: PullPlan) -> Result<(), PeerError> {
        let link = self
            .member(&plan.from)
            .and_then(|m| m.data_link())
            .ok_or(PeerError::Closed)?;
        Stats::add(&self.stats.pulls, 1);
        Stats::add(&self.stats.buckets_pulled, plan.buckets.len() as u64);
        let req = Message::Pull(PullMsg {
            owner: plan.owner,
            buckets: plan.buckets.iter().map(|b| b as u16).collect(),
        });
        let mut pull = Reconcile::new(plan.clone(), self.now_ms());
        let mut rx = link.call_stream(&req, STREAM_FRAME_TIMEOUT).await?;
        let mut repaired = 0;
        loop {
            match self.next_streamed(&link, &mut rx, "pull").await? {
                Some(Message::Records(recs)) => {
                    for r in &recs {
                        let k = &r.key;
                        pull.owner_sent(key_hash(&k.service, &k.cluster, &k.ip, k.port), r.version);
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
            .peer(plan.owner)
            .repaired_records
            .inc_by(repaired as u64);
        let now_ms = self.now_ms();
        let mut back = RecordBatch::default();
        self.store.for_each_matching(
            |r| plan.covers(r.owner, r.key_hash),
            |name, id, r| {
                let held = Held {
                    key_hash: r.key_hash,
                    alive: r.alive,
                    version: r.version,
                    expire_ms: r.lease.expire_ms,
                };
                if pull.judge(&held, now_ms) == Fate::PushBack {
                    back.push(name, id, r);
                }
            },
        );
        for (count, bytes) in back.pieces(RECORDS_FRAME_BYTES) {
            if link.send_raw(records_frame(Opcode::SyncBatch, 0, 0, count, &bytes)) {
                Stats::add(&self.stats.records_pushed_to_owner, count as u64);
            }
        }
        let view_now = self.store.ownership().view_hash();
        let changed_ms = self.engine().view_changed_ms();
        let mut dropped = 0;
        if let Some(before) = pull.drop_touched_before(view_now, changed_ms, self.timing()) {
            dropped = self
                .store
                .drop_missing(plan.owner, &plan.buckets, pull.kept(), before);
            Stats::add(&self.stats.records_dropped_by_pull, dropped as u64);
        }
        let (owner, buckets) = (plan.owner, plan.buckets.len());
        if repaired + dropped > 0 {
            info!(owner, buckets, repaired, dropped, "anti-entropy repair");
        } else {
            debug!(owner, buckets, "anti-entropy pull changed nothing");
        }
        Ok(())
    }

    // ---- load -------------------------------------------------------------------------

    /// A starting node loads the cluster's data before it serves clients, round after round
    /// until the engine marks it ready (see [`super::engine::load`]).
    pub(super) async fn load_on_start(self: Arc<Self>) {
        self.engine().load_begin(self.now_ms());
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let cmds = self.engine().load_round(self.now_ms());
            let wake = self.run(cmds).await;
            if self.engine().load_done() {
                return;
            }
            if let Some(at_ms) = wake {
                tokio::time::sleep(ms(at_ms.saturating_sub(self.now_ms()))).await;
            }
        }
    }

    async fn load_from(&self, from: PeerAddr) -> LoadOutcome {
        let started = tokio::time::Instant::now();
        match self.stream_snapshot(from.clone()).await {
            Ok(records) => {
                self.metrics.snapshot_loaded(started.elapsed());
                LoadOutcome::Loaded { records }
            }
            Err(PeerError::Remote(e)) if e.kind() == Some(ErrorCode::NotReady) => {
                LoadOutcome::PeerLoading
            }
            Err(e) => {
                warn!(peer = %from, error = %e, "snapshot load failed");
                LoadOutcome::Failed
            }
        }
    }

    async fn stream_snapshot(&self, from: PeerAddr) -> Result<usize, PeerError> {
        let link = self
            .member(&from)
            .and_then(|m| m.data_link())
            .ok_or(PeerError::Closed)?;
        let mut rx = link
            .call_stream(&Message::SnapshotRequest, STREAM_FRAME_TIMEOUT)
            .await?;
        let mut total = 0;
        info!(peer = %from, "loading the cluster's data");
        let mut progress = tokio::time::Instant::now();
        loop {
            match self.next_streamed(&link, &mut rx, "snapshot").await? {
                Some(Message::Records(recs)) => {
                    total += recs.len();
                    self.apply_records(&recs);
                    if progress.elapsed() >= LOAD_PROGRESS_LOG_INTERVAL {
                        progress = tokio::time::Instant::now();
                        info!(peer = %from, records = total, "loading the cluster's data");
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

    /// The next frame of a streamed answer (pull, snapshot); None after the last one. A link
    /// that receives nothing at all for a member timeout while a frame is awaited has lost one
    /// (a frame dropped in a partition wedges it: simulated TCP never retransmits, a half-open
    /// connection hangs) and is closed, so that it is redialed, also while this node is still
    /// loading (nothing else checks its data links then); a link that keeps receiving is waited
    /// on up to [`STREAM_FRAME_TIMEOUT`] for the frame.
    async fn next_streamed(
        &self,
        link: &Link,
        rx: &mut crate::net::StreamedAnswer,
        what: &'static str,
    ) -> Result<Option<Message>, PeerError> {
        let silent_max = ms(self.config.member_timeout_ms);
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
