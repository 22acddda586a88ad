//! One Nacos gRPC connection, and the registry of a node's connections.
//!
//! A [`Connection`] is one HTTP/2 connection of a client. It owns an `api::Session`: the
//! instances it publishes are bound to that session (unhealthy at once when the connection
//! ends, removed at the end of their lease unless the client comes back and publishes them
//! again), and its subscriptions and push queue are the session's. While the connection lives,
//! the front end renews the leases of what it publishes (the connection is the client's
//! liveness: Nacos gRPC clients do not beat).
//!
//! Nacos 2.x's rule is kept: a connection publishes one set of instances per service — one
//! instance by `InstanceRequest`, several by `BatchInstanceRequest` — and each publication
//! replaces the previous one of that service ([`Registry::publish`]). Two connections of this
//! node may publish the same instance: it stays while either does ([`Registry::withdraw`]
//! hands it to the other one instead of deregistering it).

use std::collections::HashMap as StdHashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::api::PushMode;
use crate::api::{Api, Rejection, Session};
use crate::frontend::nacos::NacosSettings;
use crate::frontend::nacos::error::NacosError;
use crate::hash::HashMap;
use crate::metrics::GaugeGuard;
use crate::model::{BEAT_KEYS_MAX, Instance, InstanceKey, ServiceName};

/// Cluster filters one connection may subscribe to per service (a subscription is per
/// (service, clusters); the clients under test always subscribe with "all").
pub const CLUSTER_FILTERS_PER_SERVICE_MAX: usize = 8;
/// Acks a connection may have waiting for its push loop; a client that answers more than it
/// was sent has the surplus ignored.
pub const ACKS_WAITING_MAX: usize = 4096;
/// `lastRefTime` values remembered per connection before the old ones are forgotten (a value
/// older than the clock needs no memory: the next one is the clock's).
const REF_TIMES_MAX: usize = 10_000;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// Accepted; its stream has not brought a `ConnectionSetupRequest` yet.
    Pending,
    /// Set up: requests are served.
    Ready,
    /// Ended (the stream or the socket closed, or the node stops).
    Closed,
}

pub struct Connection {
    id: u64,
    remote: SocketAddr,
    accepted_ms: u64,
    pub(super) session: Session,
    setup: watch::Sender<Setup>,
    /// Cancelled: the socket fails every read and write, and hyper drops the connection.
    kill: CancellationToken,
    /// Cancelled when the connection closes: ends its push loop, stream reader and beats.
    pub(super) stop: CancellationToken,
    stream_taken: AtomicBool,
    closed: AtomicBool,
    /// Publications of this connection happen one at a time.
    publishing: tokio::sync::Mutex<()>,
    /// What this connection publishes, per service.
    published: Mutex<HashMap<ServiceName, Vec<Instance>>>,
    published_changed: Notify,
    /// The cluster filters subscribed, per service (`""`: all).
    subs: Mutex<HashMap<ServiceName, Vec<String>>>,
    ref_times: Mutex<HashMap<ServiceName, u64>>,
    acks: Mutex<Vec<String>>,
    pub(super) acked: Notify,
    /// The last accessToken verified on this connection and its expiry (ms): a request with the
    /// same token is not verified again.
    pub(super) access: Mutex<Option<(String, u64)>>,
    /// Counts this connection in the node's client connections while it lives.
    _open: GaugeGuard,
}

impl Connection {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The client's address.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// Nacos's form of a connection id: `<accept ms>_<ip>_<port>`.
    pub fn nacos_id(&self) -> String {
        format!(
            "{}_{}_{}",
            self.accepted_ms,
            self.remote.ip(),
            self.remote.port()
        )
    }

    pub fn setup_state(&self) -> Setup {
        *self.setup.borrow()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the connection set up (its stream brought a `ConnectionSetupRequest`); false if
    /// it was set up or closed already.
    pub fn set_up(&self) -> bool {
        self.setup.send_if_modified(|s| {
            if *s == Setup::Pending {
                *s = Setup::Ready;
                true
            } else {
                false
            }
        })
    }

    /// Waits up to `wait` for the setup; true if the connection is set up.
    pub async fn wait_setup(&self, wait: Duration) -> bool {
        let mut rx = self.setup.subscribe();
        matches!(
            tokio::time::timeout(wait, rx.wait_for(|s| *s != Setup::Pending)).await,
            Ok(Ok(s)) if *s == Setup::Ready
        )
    }

    /// Claims the connection's one stream; false if it has one already.
    pub fn take_stream(&self) -> bool {
        !self.stream_taken.swap(true, Ordering::AcqRel)
    }

    /// Cuts the socket.
    pub fn kill(&self) {
        self.kill.cancel();
    }

    /// The `lastRefTime` of the next snapshot of `name` this connection is sent: the clock,
    /// but always past the last one sent (the Python client drops a snapshot that is not
    /// strictly newer than the last it took).
    pub fn next_ref_time(&self, name: &ServiceName, now_ms: u64) -> u64 {
        let mut m = self.ref_times.lock().unwrap();
        let v = match m.get(name) {
            Some(&last) if last >= now_ms => last + 1,
            _ => now_ms,
        };
        if m.len() >= REF_TIMES_MAX && !m.contains_key(name) {
            m.retain(|_, last| *last >= now_ms);
        }
        m.insert(name.compact(), v);
        v
    }

    /// Adds a cluster filter to the subscription of `name`; false if it was there already.
    pub fn add_subscription(&self, name: &ServiceName, clusters: &str) -> Result<bool, Rejection> {
        let mut subs = self.subs.lock().unwrap();
        let filters = subs.entry(name.compact()).or_default();
        if filters.iter().any(|c| c == clusters) {
            return Ok(false);
        }
        if filters.len() >= CLUSTER_FILTERS_PER_SERVICE_MAX {
            return Err(Rejection::LimitExceeded {
                what: "cluster filters subscribed for one service",
                max: CLUSTER_FILTERS_PER_SERVICE_MAX,
            });
        }
        filters.push(clusters.to_string());
        Ok(true)
    }

    /// Removes a cluster filter; true if no filter of `name` is left (the service's
    /// subscription ends).
    pub fn remove_subscription(&self, name: &ServiceName, clusters: &str) -> bool {
        let mut subs = self.subs.lock().unwrap();
        let Some(filters) = subs.get_mut(name) else {
            return true;
        };
        filters.retain(|c| c != clusters);
        if filters.is_empty() {
            subs.remove(name);
            true
        } else {
            false
        }
    }

    /// The cluster filters subscribed for `name` (none: not subscribed).
    pub fn subscription(&self, name: &ServiceName) -> Vec<String> {
        self.subs
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// The client acked the push `request_id`.
    pub fn ack(&self, request_id: String) {
        let mut acks = self.acks.lock().unwrap();
        if acks.len() < ACKS_WAITING_MAX {
            acks.push(request_id);
        }
        drop(acks);
        self.acked.notify_one();
    }

    pub fn take_acks(&self) -> Vec<String> {
        std::mem::take(&mut *self.acks.lock().unwrap())
    }

    /// How often this connection's instances are renewed: the shortest beat interval among
    /// them; `None` when it publishes nothing.
    fn beat_period(&self) -> Option<Duration> {
        self.published
            .lock()
            .unwrap()
            .values()
            .flatten()
            .map(|i| i.lease.beat_ms)
            .min()
            .map(|ms| Duration::from_millis(ms as u64))
    }

    fn published_keys(&self) -> Vec<InstanceKey> {
        self.published
            .lock()
            .unwrap()
            .values()
            .flatten()
            .map(|i| i.key.clone())
            .collect()
    }

    /// The instance this connection publishes under `key`, if it does.
    fn published_instance(&self, key: &InstanceKey) -> Option<Instance> {
        self.published
            .lock()
            .unwrap()
            .get(&key.service)
            .and_then(|v| v.iter().find(|i| i.key == *key).cloned())
    }
}

/// The Nacos gRPC connections of a node.
pub struct Registry {
    pub(super) api: Api,
    pub(super) settings: NacosSettings,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Connection>>>,
    /// Key hash → the connections that publish an instance with that hash (the instance is
    /// checked against the connection's publication: a hash collision is no claim).
    holders: Mutex<HashMap<u64, Vec<u64>>>,
    /// Open connections (the operator metrics read it).
    count: Arc<AtomicU64>,
}

impl Registry {
    pub fn new(api: Api, settings: NacosSettings, count: Arc<AtomicU64>) -> Arc<Registry> {
        Arc::new(Registry {
            api,
            settings,
            next_id: AtomicU64::new(1),
            conns: Mutex::default(),
            holders: Mutex::default(),
            count,
        })
    }

    /// Registers a connection just accepted; answers it, its kill switch and the token its
    /// socket cancels when dropped. Starts its lease renewal.
    pub fn open(
        &self,
        remote: SocketAddr,
    ) -> (Arc<Connection>, CancellationToken, CancellationToken) {
        let kill = CancellationToken::new();
        let conn = Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            remote,
            accepted_ms: self.api.now_ms(),
            session: self.api.open_session_with(PushMode::FullOnly),
            setup: watch::Sender::new(Setup::Pending),
            kill: kill.clone(),
            stop: CancellationToken::new(),
            stream_taken: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            publishing: tokio::sync::Mutex::new(()),
            published: Mutex::default(),
            published_changed: Notify::new(),
            subs: Mutex::default(),
            ref_times: Mutex::default(),
            acks: Mutex::default(),
            acked: Notify::new(),
            access: Mutex::default(),
            _open: self.api.node().metrics.client_connection(),
        });
        self.conns.lock().unwrap().insert(conn.id, conn.clone());
        self.count.fetch_add(1, Ordering::Relaxed);
        self.api
            .node()
            .tracker
            .spawn(renew(self.api.clone(), conn.clone()));
        (conn, kill, CancellationToken::new())
    }

    pub fn get(&self, id: u64) -> Option<Arc<Connection>> {
        self.conns.lock().unwrap().get(&id).cloned()
    }

    /// Publishes exactly `instances` of `name` from `conn`, replacing what it published of that
    /// service before (none: withdraws it). The new ones are registered before the old ones
    /// go, so that a replacement leaves no gap.
    pub async fn publish(
        &self,
        conn: &Arc<Connection>,
        name: &ServiceName,
        instances: Vec<Instance>,
    ) -> Result<(), NacosError> {
        let _serial = conn.publishing.lock().await;
        if conn.is_closed() {
            return Err(NacosError::Unregistered);
        }
        // One instance per key: the last one given wins.
        let mut new: Vec<Instance> = Vec::with_capacity(instances.len());
        for i in instances.into_iter().rev() {
            if !new.iter().any(|n| n.key == i.key) {
                new.push(i);
            }
        }
        new.reverse();
        let old = conn
            .published
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_default();
        if !new.is_empty() {
            conn.session
                .register(new.clone(), true)
                .await
                .outcome()
                .await?;
        }
        let withdrawn: Vec<InstanceKey> = old
            .iter()
            .filter(|o| !new.iter().any(|n| n.key == o.key))
            .map(|o| o.key.clone())
            .collect();
        {
            let mut holders = self.holders.lock().unwrap();
            for i in &new {
                let h = holders.entry(i.key.hash()).or_default();
                if !h.contains(&conn.id) {
                    h.push(conn.id);
                }
            }
            for k in &withdrawn {
                release(&mut holders, k.hash(), conn.id);
            }
        }
        {
            let mut published = conn.published.lock().unwrap();
            if new.is_empty() {
                published.remove(name);
            } else {
                published.insert(name.compact(), new);
            }
        }
        conn.published_changed.notify_one();
        self.withdraw(conn, withdrawn, true).await
    }

    /// `conn` no longer publishes `keys`: each one another connection of this node publishes
    /// too is registered again from that one (bound to its session now), the others are
    /// deregistered (when `deregister`; a closing connection leaves them to its session's end).
    async fn withdraw(
        &self,
        conn: &Arc<Connection>,
        keys: Vec<InstanceKey>,
        deregister: bool,
    ) -> Result<(), NacosError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut gone = Vec::new();
        let mut handed: StdHashMap<u64, (Arc<Connection>, Vec<Instance>)> = StdHashMap::new();
        for k in keys {
            match self.other_holder(&k, conn.id) {
                Some((other, inst)) => handed
                    .entry(other.id)
                    .or_insert((other, vec![]))
                    .1
                    .push(inst),
                None => gone.push(k),
            }
        }
        for (_, (other, instances)) in handed {
            debug!(
                from = conn.id,
                to = other.id,
                instances = instances.len(),
                "instances published by two connections stay with the other"
            );
            // Best effort: the other connection's renewal re-registers what is missing.
            let _ = other
                .session
                .register(instances, true)
                .await
                .outcome()
                .await;
        }
        if deregister && !gone.is_empty() {
            conn.session.deregister(gone).await.outcome().await?;
        }
        Ok(())
    }

    /// Another live connection that publishes the instance under `key`.
    fn other_holder(&self, key: &InstanceKey, except: u64) -> Option<(Arc<Connection>, Instance)> {
        let ids = self.holders.lock().unwrap().get(&key.hash()).cloned()?;
        ids.into_iter().filter(|&id| id != except).find_map(|id| {
            let other = self.get(id)?;
            let inst = other.published_instance(key)?;
            (!other.is_closed()).then_some((other, inst))
        })
    }

    /// Ends a connection: its requests waiting for setup are answered 301, its tasks stop, its
    /// subscriptions end, and — unless the node itself is stopping — the instances it alone
    /// published are reported unhealthy at once (removed at their lease's end unless the client
    /// comes back). Idempotent.
    pub async fn close(&self, conn: &Arc<Connection>, node_closing: bool) {
        if conn.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        conn.setup.send_replace(Setup::Closed);
        conn.stop.cancel();
        // A publication in flight lands first, so that what it registered is lapsed too.
        let serial = conn.publishing.lock().await;
        let published: Vec<InstanceKey> = conn
            .published
            .lock()
            .unwrap()
            .drain()
            .flat_map(|(_, v)| v.into_iter().map(|i| i.key))
            .collect();
        drop(serial);
        self.conns.lock().unwrap().remove(&conn.id);
        self.count.fetch_sub(1, Ordering::Relaxed);
        {
            let mut holders = self.holders.lock().unwrap();
            for k in &published {
                release(&mut holders, k.hash(), conn.id);
            }
        }
        if !node_closing {
            let _ = self.withdraw(conn, published, false).await;
        }
        let lapsed = conn.session.close(node_closing).await;
        if lapsed > 0 {
            info!(
                conn = conn.id,
                remote = %conn.remote,
                instances = lapsed,
                "Nacos gRPC connection ended; its instances are reported unhealthy"
            );
        }
        if !node_closing {
            // The stream ended while the socket may still be open: the connection is gone for
            // good, the client reconnects and publishes again.
            conn.kill();
        }
    }

    /// Closes every connection (the node stops).
    pub async fn close_all(&self, node_closing: bool) {
        let all: Vec<Arc<Connection>> = self.conns.lock().unwrap().values().cloned().collect();
        for c in all {
            self.close(&c, node_closing).await;
        }
    }

    /// Cuts every connection's socket.
    pub fn kill_all(&self) {
        for c in self.conns.lock().unwrap().values() {
            c.kill();
        }
    }
}

fn release(holders: &mut HashMap<u64, Vec<u64>>, hash: u64, conn: u64) {
    if let Some(h) = holders.get_mut(&hash) {
        h.retain(|&id| id != conn);
        if h.is_empty() {
            holders.remove(&hash);
        }
    }
}

/// Renews the leases of what `conn` publishes at the shortest beat interval among them, while
/// the connection lives; registers again what the registry lost (a beat answered "unknown":
/// an owner that restarted, say).
async fn renew(api: Api, conn: Arc<Connection>) {
    let mut next: Option<tokio::time::Instant> = None;
    loop {
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = conn.stop.cancelled() => return,
            _ = api.node().shutdown.cancelled() => return,
            _ = conn.published_changed.notified() => {
                // A new publication may beat sooner; never later than already planned.
                let now = tokio::time::Instant::now();
                next = match (next, conn.beat_period()) {
                    (_, None) => None,
                    (Some(at), Some(p)) => Some(at.min(now + p)),
                    (None, Some(p)) => Some(now + p),
                };
                continue;
            }
            _ = sleep => {}
        }
        next = conn.beat_period().map(|p| tokio::time::Instant::now() + p);
        let keys = conn.published_keys();
        for chunk in keys.chunks(BEAT_KEYS_MAX) {
            let unknown = match conn.session.beat(chunk.to_vec()).await.outcome().await {
                Ok(u) => u,
                Err(e) => {
                    debug!(conn = conn.id, error = %e, "renewing a connection's instances failed");
                    continue;
                }
            };
            if unknown.is_empty() {
                continue;
            }
            let _serial = conn.publishing.lock().await;
            let again: Vec<Instance> = unknown
                .iter()
                .filter_map(|&i| conn.published_instance(&chunk[i as usize]))
                .collect();
            if again.is_empty() || conn.is_closed() {
                continue;
            }
            debug!(
                conn = conn.id,
                instances = again.len(),
                "registering lost instances again"
            );
            if let Err(e) = conn.session.register(again, true).await.outcome().await {
                debug!(conn = conn.id, error = %e, "registering lost instances failed");
            }
        }
    }
}
