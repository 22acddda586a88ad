//! What one node is made of, shared by every connection and task of it: its settings, its
//! copy of the registry, the cluster machinery, the subscriptions, readiness, shutdown, and the
//! lease duty it runs. Requests reach it only through the request API (`api`).
//!
//! - [`subscriptions`]: who is subscribed to what, and the coalesced push queues.
//! - [`collector`]: what the metrics read from the node at each scrape.

pub mod collector;
pub mod subscriptions;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use subscriptions::Subscriptions;

use crate::auth::Tokens;
use crate::clock::Clock;
use crate::cluster::Cluster;
use crate::cluster::sync::SyncOutbox;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::{ClusterStatus, MemberStatus, ServiceName};
use crate::net::Dialer;
use crate::store::{InstanceIdRef, Record, Store, StoreObserver};
use collector::NodeCollector;

/// A node stalled for this many lease passes (a GC pause, swap, a stopped VM) re-grants the
/// leases it owns before expiring anything, instead of expiring everything at once on waking.
const MISSED_PASSES_REGRANT: u64 = 8;

/// What the connections and tasks of one node share.
pub struct Node {
    pub config: Config,
    pub store: Arc<Store>,
    pub subs: Arc<Subscriptions>,
    /// The cluster machinery; `None` for a standalone node.
    pub cluster: Option<Arc<Cluster>>,
    /// Client tokens and their rights (off without a token file); reloaded on SIGHUP.
    pub tokens: Tokens,
    /// Every part of the node counts into these; the admin port exposes them.
    pub metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    next_session: AtomicU64,
    pub shutdown: CancellationToken,
    /// Cancelled when a graceful stop begins ([`Node::stop_gracefully`]), and by the shutdown:
    /// the node takes no new connections from then on.
    pub draining: CancellationToken,
    /// Every task of the node is spawned here, so that a shutdown waits for all of them.
    pub tracker: TaskTracker,
}

/// Routes store changes to the subscribers and, in a cluster, this node's writes to the sync
/// outbox.
struct Observer {
    subs: Arc<Subscriptions>,
    outbox: Option<Arc<SyncOutbox>>,
}

impl StoreObserver for Observer {
    fn service_changed(&self, name: &ServiceName) {
        self.subs.notify(name);
    }

    fn local_write(&self, name: &ServiceName, id: InstanceIdRef, rec: &Record) {
        if let Some(o) = &self.outbox {
            o.push(name, id, rec);
        }
    }
}

impl Node {
    pub fn new(config: Config, clock: Clock) -> Arc<Node> {
        Node::with_dialer(config, clock, crate::net::tcp())
    }

    /// A node whose cluster links are opened by `dialer`.
    pub fn with_dialer(config: Config, clock: Clock, dialer: Arc<dyn Dialer>) -> Arc<Node> {
        let subs = Arc::new(Subscriptions::default());
        let outbox = config
            .is_clustered()
            .then(|| Arc::new(SyncOutbox::default()));
        let observer = Arc::new(Observer {
            subs: subs.clone(),
            outbox: outbox.clone(),
        });
        let store = Arc::new(Store::new(config.node_id, clock, observer));
        // A cluster member is not ready until it has loaded the cluster's data.
        let ready = Arc::new(AtomicBool::new(!config.is_clustered()));
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let cluster = outbox.map(|outbox| {
            Cluster::new(
                config.clone(),
                store.clone(),
                ready.clone(),
                outbox,
                dialer,
                tracker.clone(),
                shutdown.clone(),
                metrics.clone(),
            )
        });
        let tokens = match &config.token_file {
            Some(path) => Tokens::from_file(path),
            None => Tokens::off(),
        };
        metrics.register_collector(NodeCollector::new(
            &metrics,
            store.clone(),
            cluster.as_ref().map(Arc::downgrade),
            subs.clone(),
            ready.clone(),
            shutdown.clone(),
            config.node_id,
        ));
        Arc::new(Node {
            metrics,
            ready,
            tokens,
            cluster,
            config,
            store,
            subs,
            next_session: AtomicU64::new(1),
            draining: shutdown.child_token(),
            shutdown,
            tracker,
        })
    }

    /// A graceful stop (SIGTERM): no new connections; in a cluster the node leaves — its
    /// peers take over its keys at once, with what it owned and every write it made
    /// ([`Cluster::leave`]); then the shutdown: client sessions end with `ShuttingDown` (their
    /// instances are not reported unhealthy: their clients register them again at another
    /// node), and the tasks stop. The caller waits for them (the server's `run`).
    pub async fn stop_gracefully(&self) {
        self.draining.cancel();
        if let Some(c) = &self.cluster {
            c.leave().await;
        }
        self.shutdown.cancel();
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// A node-unique session id for a new connection: `node_id << 48 | counter`.
    pub fn new_session(&self) -> u64 {
        ((self.config.node_id as u64) << 48) | self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// This node's view of the cluster (a standalone node is a cluster of one).
    pub fn cluster_status(&self) -> ClusterStatus {
        if let Some(c) = &self.cluster {
            return c.status();
        }
        let n = self.store.len() as u64;
        ClusterStatus {
            node_id: self.config.node_id,
            ready: self.is_ready(),
            instances: n,
            members: vec![MemberStatus {
                id: self.config.node_id,
                addr: self.config.listen.to_string().into(),
                up: true,
                left: false,
                owned: n,
            }],
        }
    }

    /// Runs the lease duty every `lease_pass_ms` until shutdown.
    ///
    /// Each shard's pass is judged at a time read just before it, and that reading is first
    /// compared with the previous one: a node that was stopped (a GC pause, swap, a stopped VM)
    /// — between passes or in the middle of one — finds a gap of many passes and re-grants the
    /// leases it owns before it expires anything.
    pub async fn lease_duty(self: Arc<Node>) {
        let period_ms = self.config.lease_pass_ms;
        let stall_ms = period_ms * MISSED_PASSES_REGRANT;
        let mut tick = tokio::time::interval(Duration::from_millis(period_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let clock = self.store.clock().clone();
        let mut last_ms = clock.now_ms();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !self.is_ready() {
                // Still loading: this node's copy and its view are partial, and records it
                // merges get a fresh lease anyway. Expiring now could delete live instances.
                last_ms = clock.now_ms();
                continue;
            }
            for shard in 0..crate::store::SHARDS {
                let now_ms = clock.now_ms();
                if now_ms.saturating_sub(last_ms) > stall_ms {
                    let n = self.store.regrant_owned();
                    warn!(
                        stalled_ms = now_ms - last_ms,
                        regranted = n,
                        "lease duty missed many passes; re-granted owned leases instead of mass expiry"
                    );
                }
                last_ms = now_ms;
                let s = self.store.lease_pass_shard_at(shard, now_ms);
                if s.expired + s.lapsed > 0 {
                    self.metrics.expired(s.lapsed, s.expired);
                    tracing::debug!(expired = s.expired, lapsed = s.lapsed, "lease pass");
                }
                tokio::task::yield_now().await;
            }
        }
    }
}
