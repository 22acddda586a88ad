//! `distrod`'s serving side: the node's shared state, the client listener, the background duties.
//!
//! - [`Node`]: what every connection and task of a node shares (config, store, subscriptions,
//!   readiness, shutdown), and the write operations a request turns into.
//! - [`session`]: one client connection — decode, handle, answer, push.
//! - [`push`]: subscriptions and coalesced, bounded pushes.
//! - [`inflight`]: concurrent writes of one connection, in order per key.

pub mod inflight;
pub mod push;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::clock::Clock;
use crate::cluster::Cluster;
use crate::cluster::sync::SyncOutbox;
use crate::config::Config;
use crate::model::{InstanceKey, ServiceName};
use crate::net::{Dialer, Listener};
use crate::store::{InstanceIdRef, Record, Store, StoreObserver};
use crate::wire::{ErrorBody, ErrorCode, Register};
use push::Subscriptions;

/// How long shutdown waits for connections and tasks to finish and flush.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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
    ready: Arc<AtomicBool>,
    next_session: AtomicU64,
    pub shutdown: CancellationToken,
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
        let cluster = outbox.map(|outbox| {
            Cluster::new(config.clone(), store.clone(), ready.clone(), outbox, dialer)
        });
        Arc::new(Node {
            ready,
            cluster,
            config,
            store,
            subs,
            next_session: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        })
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

    /// Applies a Register; `session` is the connection's session id (used if session-bound).
    pub async fn register(&self, reg: &Register, session: u64) -> Result<u32, ErrorBody> {
        for inst in &reg.instances {
            inst.validate(self.config.lease_floor_ms)
                .map_err(|m| ErrorBody::new(ErrorCode::InvalidArgument, m.to_string()))?;
        }
        let bound = if reg.session_bound { session } else { 0 };
        if let Some(c) = &self.cluster {
            return c.register(&reg.instances, bound).await;
        }
        for inst in &reg.instances {
            self.store.register(inst, bound);
        }
        Ok(reg.instances.len() as u32)
    }

    /// Applies a Deregister; answers how many instances existed and were removed.
    pub async fn deregister(&self, keys: &[InstanceKey]) -> Result<u32, ErrorBody> {
        for k in keys {
            k.validate()
                .map_err(|m| ErrorBody::new(ErrorCode::InvalidArgument, m.to_string()))?;
        }
        if let Some(c) = &self.cluster {
            return c.deregister(keys).await;
        }
        Ok(keys.iter().filter(|k| self.store.deregister(k)).count() as u32)
    }

    /// Applies a Beat; answers the indexes of the keys this node does not know.
    pub async fn beat(&self, keys: &[InstanceKey]) -> Result<Vec<u16>, ErrorBody> {
        if let Some(c) = &self.cluster {
            return c.beat(keys).await;
        }
        Ok(self.store.beat_batch(keys))
    }

    /// A connection dropped without deregistering: its session-bound instances are reported
    /// unhealthy at once.
    pub async fn lapse_session(&self, session: u64, keys: Vec<InstanceKey>) {
        if let Some(c) = &self.cluster {
            return c.lapse_session(session, keys).await;
        }
        for k in &keys {
            self.store.lapse_session(k, session);
        }
    }

    /// Runs the lease duty every `lease_pass_ms` until shutdown.
    async fn lease_duty(self: Arc<Node>) {
        let period = Duration::from_millis(self.config.lease_pass_ms);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = tokio::time::Instant::now();
            if !self.is_ready() {
                // Still loading: this node's copy and its view are partial, and records it
                // merges get a fresh lease anyway. Expiring now could delete live instances.
                last = now;
                continue;
            }
            if now.duration_since(last) > period * MISSED_PASSES_REGRANT as u32 {
                let n = self.store.regrant_owned();
                warn!(
                    stalled_ms = now.duration_since(last).as_millis() as u64,
                    regranted = n,
                    "lease duty missed many passes; re-granted owned leases instead of mass expiry"
                );
            }
            last = now;
            for shard in 0..crate::store::SHARDS {
                let s = self.store.lease_pass_shard(shard);
                if s.expired + s.lapsed > 0 {
                    tracing::debug!(expired = s.expired, lapsed = s.lapsed, "lease pass");
                }
                tokio::task::yield_now().await;
            }
        }
    }
}

/// A bound client listener (and, in a cluster, peer listener) and the node behind them.
pub struct Server {
    node: Arc<Node>,
    listener: Box<dyn Listener>,
    peer_listener: Option<Box<dyn Listener>>,
}

impl Server {
    /// Binds the client port of `config.listen` (port 0 picks a free port) and, in a cluster,
    /// the peer port of `config.peer_listen`.
    pub async fn bind(config: Config) -> std::io::Result<Server> {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let peer_listener = if config.is_clustered() {
            Some(tokio::net::TcpListener::bind(config.peer_listen).await?)
        } else {
            None
        };
        Ok(Server::from_listeners(config, listener, peer_listener))
    }

    /// A server on listeners the caller bound (tests bind port 0 first to learn the peer
    /// addresses of every member). `config.peer_listen` must be the peer listener's address.
    pub fn from_listeners(
        config: Config,
        listener: tokio::net::TcpListener,
        peer_listener: Option<tokio::net::TcpListener>,
    ) -> Server {
        Server::with_transport(
            config,
            Clock::system(),
            Box::new(listener),
            peer_listener.map(|l| Box::new(l) as Box<dyn Listener>),
            crate::net::tcp(),
        )
    }

    /// A server on any transport, with an injected clock: the simulation's entry point.
    pub fn with_transport(
        config: Config,
        clock: Clock,
        listener: Box<dyn Listener>,
        peer_listener: Option<Box<dyn Listener>>,
        dialer: Arc<dyn Dialer>,
    ) -> Server {
        Server {
            node: Node::with_dialer(config, clock, dialer),
            listener,
            peer_listener,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn node(&self) -> Arc<Node> {
        self.node.clone()
    }

    /// Serves until `node.shutdown` is cancelled, then stops accepting, lets connections flush
    /// and returns within [`SHUTDOWN_GRACE`].
    pub async fn run(self) {
        let node = self.node;
        node.tracker.spawn(node.clone().lease_duty());
        if let (Some(c), Some(l)) = (&node.cluster, self.peer_listener) {
            c.start(l, node.shutdown.clone(), &node.tracker);
        }
        accept_loop(&node, self.listener).await;
        node.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, node.tracker.wait())
            .await
            .is_err()
        {
            warn!("shutdown grace elapsed with tasks still running");
        }
        info!("node stopped");
    }

    /// Starts serving in the background; the handle stops it.
    pub fn spawn(self) -> ServerHandle {
        let addr = self.local_addr();
        let node = self.node.clone();
        let task = tokio::spawn(self.run());
        ServerHandle { addr, node, task }
    }
}

/// A server running in the background (tests, the bench's in-process mode).
pub struct ServerHandle {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// Stops the server and waits for it to finish.
    pub async fn stop(self) {
        self.node.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Accepts connections while slots are free; backs off on accept errors (out of file
/// descriptors, ...) instead of spinning.
async fn accept_loop(node: &Arc<Node>, listener: Box<dyn Listener>) {
    let slots = Arc::new(Semaphore::new(node.config.max_connections));
    let mut backoff_ms = 1u64;
    loop {
        let permit = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let accepted = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff_ms = 1;
                let node2 = node.clone();
                node.tracker.spawn(async move {
                    session::serve(node2, stream, peer).await;
                    drop(permit);
                });
            }
            Err(e) => {
                error!(error = %e, backoff_ms, "accept failed");
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(1_000);
            }
        }
    }
}

impl Node {
    /// This node's view of the cluster (a standalone node is a cluster of one).
    pub fn cluster_status(&self) -> crate::model::ClusterStatus {
        if let Some(c) = &self.cluster {
            return c.status();
        }
        let n = self.store.len() as u64;
        crate::model::ClusterStatus {
            node_id: self.config.node_id,
            ready: self.is_ready(),
            instances: n,
            members: vec![crate::model::MemberStatus {
                id: self.config.node_id,
                addr: self.config.listen.to_string().into(),
                up: true,
                owned: n,
            }],
        }
    }
}
