//! The native SDK: an async client for one or more `distrod` nodes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), distro::client::ClientError> {
//! use distro::client::{Client, ClientConfig};
//! use distro::model::{Instance, InstanceKey, ServiceName};
//!
//! let client = Client::connect(ClientConfig::new(["127.0.0.1:8858"])).await?;
//! let name = ServiceName::new("public", "DEFAULT_GROUP", "orders");
//! let key = InstanceKey { service: name.clone(), cluster: "DEFAULT".into(), ip: "10.0.0.7".into(), port: 8080 };
//! client.register(Instance::new(key)).await?;          // kept alive by batched heartbeats
//! let snapshot = client.query(&name, false).await?;      // one service's instances
//! let mut sub = client.subscribe(&name).await?;          // pushed on every change
//! while let Some(s) = sub.next().await { println!("{} instances", s.instances.len()); }
//! # Ok(()) }
//! ```
//!
//! What it does for you:
//! - **Heartbeats**: everything registered is renewed with one Beat frame per interval (batched
//!   up to the frame limit), not one request per instance. Keys the node does not know are
//!   registered again at once.
//! - **Redo**: after a reconnect it registers its instances and subscribes its services again.
//! - **Failover**: connections go to the servers in order; a node that is unreachable, not ready
//!   or shutting down is skipped. Requests that fail for such reasons are retried on the next
//!   connection until their deadline.
//! - **Deadlines**: every request has one (`ClientConfig::request_timeout`); a request that
//!   times out drops its connection, which is then redialed, so a wedged link cannot hang the
//!   client.
//! - **Subscriptions** keep the whole list of each service in a local cache, which the node's
//!   pushes keep current: the whole list first, then what changed (deltas), applied here, so
//!   that the application always gets whole lists (see [`cache`]).
//! - **Tokens**: with [`ClientConfig::token`] set, every connection presents it right after
//!   Hello — the first one and every reconnect, before the redo — so a node with a token file
//!   serves this client with its token's rights (`docs/security.md`).

pub mod cache;
mod conn;
mod error;
mod keeper;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::hash::HashMap;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use cache::{PushSink, Pushed};
pub use conn::Conn;
pub use error::ClientError;

use crate::model::{
    BATCH_INSTANCES_MAX, BEAT_KEYS_MAX, Instance, InstanceKey, ServiceList, ServiceName,
    ServiceSnapshot, Text,
};
pub use crate::wire::Token;
use crate::wire::{ErrorCode, ListServices, Message, Query, Register, TOKEN_LEN_MAX};

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Client addresses of the nodes (`host:port`), tried in order.
    pub servers: Vec<String>,
    /// Deadline of every request, retries included.
    pub request_timeout: Duration,
    /// Deadline of one connection attempt (connect + Hello).
    pub connect_timeout: Duration,
    /// Beat interval when nothing registered asks for a shorter one; also the keep-alive ping
    /// interval of an idle connection.
    pub beat_interval: Duration,
    /// Register instances session-bound (marked unhealthy as soon as the connection drops).
    pub session_bound: bool,
    /// Skip nodes that are still loading (the default). Off for status tools, which want an
    /// answer from any node.
    pub require_ready: bool,
    pub client_name: String,
    /// The token every connection presents (a node with a token file requires one). Its
    /// `Debug` does not show it.
    pub token: Option<Token>,
    /// How connections are opened (tokio TCP, TLS over it with [`ClientConfig::with_tls`];
    /// the simulation plugs in its own).
    pub dialer: Arc<dyn crate::net::Dialer>,
}

impl ClientConfig {
    pub fn new<S: Into<String>>(servers: impl IntoIterator<Item = S>) -> ClientConfig {
        ClientConfig {
            servers: servers.into_iter().map(Into::into).collect(),
            request_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(1),
            beat_interval: Duration::from_secs(5),
            session_bound: true,
            require_ready: true,
            dialer: crate::net::tcp(),
            client_name: format!("distro-sdk/{}", env!("CARGO_PKG_VERSION")),
            token: None,
        }
    }

    /// This config, speaking TLS to nodes whose certificates `tls` verifies (a node that
    /// serves TLS refuses plaintext; see [`crate::net::ClientTls::from_ca_file`]).
    pub fn with_tls(mut self, tls: &crate::net::ClientTls) -> ClientConfig {
        self.dialer = tls.dialer();
        self
    }

    /// This config, presenting `token` on every connection.
    pub fn with_token(mut self, token: impl Into<String>) -> ClientConfig {
        self.token = Some(Token::new(token.into()));
        self
    }
}

/// A stream of snapshots of one service: each the whole list, also when the node pushed only
/// what changed. The newest snapshot replaces an unread older one, so a slow reader sees the
/// latest state, never a backlog.
pub struct Subscription {
    rx: watch::Receiver<Option<Arc<ServiceSnapshot>>>,
}

impl Subscription {
    /// The next snapshot newer than the last one returned; `None` once the client is closed.
    pub async fn next(&mut self) -> Option<Arc<ServiceSnapshot>> {
        loop {
            self.rx.changed().await.ok()?;
            if let Some(s) = self.rx.borrow_and_update().clone() {
                return Some(s);
            }
        }
    }

    /// The latest snapshot received, without waiting.
    pub fn latest(&self) -> Option<Arc<ServiceSnapshot>> {
        self.rx.borrow().clone()
    }
}

/// Heartbeat rounds that may await their answers at once (see `Inner::heartbeats`). A round
/// ends within a few request timeouts anyway (its Beat frames, then the re-registers of what
/// the node did not know); this only caps a client whose beat interval is far below its
/// request timeout. Skipping a tick because earlier ones are slow would leave the instances
/// the node owns itself unrenewed, so the cap is generous.
const BEAT_ROUNDS_IN_FLIGHT_MAX: usize = 32;

/// An instance the client keeps alive, and how it was registered.
#[derive(Clone)]
struct Held {
    instance: Instance,
    session_bound: bool,
}

struct Inner {
    config: ClientConfig,
    conn: watch::Sender<Option<Arc<Conn>>>,
    held: Mutex<HashMap<InstanceKey, Held>>,
    subs: Arc<cache::Cache>,
    /// Numbers the connections this client opens, so that the cache tells their pushes apart.
    conns_opened: std::sync::atomic::AtomicU64,
    /// Cancelled by [`Client::close`]: ends the connection and every task of the client.
    closed: CancellationToken,
    /// Every task of the client (connection reader and writer, reconnects, heartbeats).
    tasks: TaskTracker,
    /// Woken on every registration, so that a beat interval shorter than the one the heartbeat
    /// loop is sleeping on takes effect at once, not after the old interval.
    beat_wake: tokio::sync::Notify,
    /// The shortest beat interval any instance registered through this client asked for (ms).
    /// Only lowered: after a deregistration the client may beat more often than it must, never
    /// less.
    min_beat_ms: std::sync::atomic::AtomicU64,
}

/// A client of a Distro cluster. Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects to the first reachable, ready server and starts heartbeats. Fails with
    /// [`ClientError::NoServer`] when no server answers within the connect deadlines.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        if config.servers.is_empty() {
            return Err(ClientError::Invalid("no server address given".into()));
        }
        if let Some(t) = &config.token
            && t.len() > TOKEN_LEN_MAX
        {
            return Err(ClientError::Invalid(format!(
                "a token is at most {TOKEN_LEN_MAX} bytes, this one {}",
                t.len()
            )));
        }
        let (conn, _) = watch::channel(None);
        let (subs, resync) = cache::Cache::new();
        let inner = Arc::new(Inner {
            config,
            conn,
            held: Mutex::new(HashMap::default()),
            subs,
            conns_opened: std::sync::atomic::AtomicU64::new(0),
            closed: CancellationToken::new(),
            tasks: TaskTracker::new(),
            beat_wake: tokio::sync::Notify::new(),
            min_beat_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
        });
        let first = inner.dial_from(0).await;
        let (conn, start_at) = match first {
            Ok(found) => found,
            Err(e) => {
                inner.closed.cancel();
                return Err(e);
            }
        };
        inner.conn.send_replace(Some(conn.clone()));
        inner.tasks.spawn(inner.clone().maintain(conn, start_at));
        inner.tasks.spawn(inner.clone().heartbeats());
        inner.tasks.spawn(inner.clone().resubscribe(resync));
        Ok(Client { inner })
    }

    /// The node this client is connected to now (`None` while reconnecting).
    pub fn connected_to(&self) -> Option<(String, u16)> {
        self.inner
            .conn
            .borrow()
            .as_ref()
            .map(|c| (c.addr.clone(), c.hello.node_id))
    }

    /// The smallest lease value the connected node accepts, ms (from its HelloOk; the protocol's
    /// default floor while reconnecting).
    pub fn lease_floor_ms(&self) -> u32 {
        self.inner
            .conn
            .borrow()
            .as_ref()
            .map_or(500, |c| c.hello.lease_floor_ms)
    }

    /// Stops heartbeats and closes the connection: every task of the client ends (see
    /// [`Client::wait_closed`]). Instances stay registered until their lease runs out
    /// (session-bound ones are marked unhealthy at once); deregister first to remove them now.
    pub fn close(&self) {
        self.inner.closed.cancel();
        self.inner.tasks.close();
    }

    /// Waits until every task of the client has ended, after [`Client::close`].
    pub async fn wait_closed(&self) {
        self.inner.tasks.wait().await
    }

    /// Registers one instance and keeps it alive.
    pub async fn register(&self, instance: Instance) -> Result<(), ClientError> {
        self.register_batch(vec![instance]).await
    }

    /// Registers instances (sent in frames of at most the batch limit) and keeps them alive.
    pub async fn register_batch(&self, instances: Vec<Instance>) -> Result<(), ClientError> {
        let bound = self.inner.config.session_bound;
        self.register_with(instances, bound).await
    }

    /// Registers instances, choosing whether they are bound to this client's connection.
    pub async fn register_with(
        &self,
        instances: Vec<Instance>,
        session_bound: bool,
    ) -> Result<(), ClientError> {
        for chunk in instance_frames(&instances) {
            let msg = Message::Register(Register {
                session_bound,
                instances: chunk.to_vec(),
            });
            expect_ack(self.inner.call(&msg).await?)?;
            let mut held = self.inner.held.lock().unwrap();
            for i in chunk {
                held.insert(
                    i.key.clone(),
                    Held {
                        instance: i.clone(),
                        session_bound,
                    },
                );
            }
        }
        let shortest = instances
            .iter()
            .map(|i| i.lease.beat_ms as u64)
            .min()
            .unwrap_or(u64::MAX);
        let before = self
            .inner
            .min_beat_ms
            .fetch_min(shortest, std::sync::atomic::Ordering::Relaxed);
        if shortest < before {
            // The heartbeat loop may be sleeping longer than this instance's interval.
            self.inner.beat_wake.notify_one();
        }
        Ok(())
    }

    /// Deregisters one instance; true if the node had it.
    pub async fn deregister(&self, key: &InstanceKey) -> Result<bool, ClientError> {
        Ok(self.deregister_batch(std::slice::from_ref(key)).await? == 1)
    }

    /// Deregisters instances; answers how many the node had.
    pub async fn deregister_batch(&self, keys: &[InstanceKey]) -> Result<u32, ClientError> {
        let mut removed = 0;
        for chunk in key_frames(keys, BATCH_INSTANCES_MAX) {
            {
                let mut held = self.inner.held.lock().unwrap();
                for k in chunk {
                    held.remove(k);
                }
            }
            removed += expect_ack(
                self.inner
                    .call(&Message::Deregister(chunk.to_vec()))
                    .await?,
            )?;
        }
        Ok(removed)
    }

    /// Deregisters everything this client registered.
    pub async fn deregister_all(&self) -> Result<u32, ClientError> {
        let keys: Vec<InstanceKey> = self.inner.held.lock().unwrap().keys().cloned().collect();
        self.deregister_batch(&keys).await
    }

    /// The instances of one service (all clusters). `healthy_only` keeps those that are healthy
    /// and enabled.
    pub async fn query(
        &self,
        name: &ServiceName,
        healthy_only: bool,
    ) -> Result<ServiceSnapshot, ClientError> {
        self.query_cluster(name, "", healthy_only).await
    }

    /// Like [`Client::query`], only instances of `cluster` (empty: all).
    pub async fn query_cluster(
        &self,
        name: &ServiceName,
        cluster: &str,
        healthy_only: bool,
    ) -> Result<ServiceSnapshot, ClientError> {
        let q = Message::Query(Query {
            name: name.clone(),
            cluster: cluster.into(),
            healthy_only,
        });
        match self.inner.call(&q).await? {
            Message::QueryResult(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// One page of the services of a namespace.
    pub async fn list_services(
        &self,
        namespace: &str,
        page: u32,
        page_size: u16,
    ) -> Result<ServiceList, ClientError> {
        let msg = Message::ListServices(ListServices {
            namespace: namespace.into(),
            page,
            page_size,
        });
        match self.inner.call(&msg).await? {
            Message::ServiceList(l) => Ok(l),
            other => Err(unexpected(other)),
        }
    }

    /// Every service of a namespace (all pages).
    pub async fn all_services(&self, namespace: &str) -> Result<ServiceList, ClientError> {
        let page_size = crate::model::PAGE_SIZE_MAX as u16;
        let mut first = self.list_services(namespace, 0, page_size).await?;
        let mut page = 1;
        while (first.services.len() as u32) < first.total {
            let next = self.list_services(namespace, page, page_size).await?;
            if next.services.is_empty() {
                break;
            }
            first.services.extend(next.services);
            page += 1;
        }
        Ok(first)
    }

    /// Subscribes to a service: the stream yields its full instance list on every change, the
    /// first time right away. Survives reconnects (the client subscribes again by itself).
    pub async fn subscribe(&self, name: &ServiceName) -> Result<Subscription, ClientError> {
        let rx = self.inner.subs.watch(name);
        expect_ack(self.inner.call(&Message::Subscribe(name.clone())).await?)?;
        Ok(Subscription { rx })
    }

    /// Stops pushes for a service; its open [`Subscription`]s end.
    pub async fn unsubscribe(&self, name: &ServiceName) -> Result<(), ClientError> {
        self.inner.subs.remove(name);
        expect_ack(self.inner.call(&Message::Unsubscribe(name.clone())).await?)?;
        Ok(())
    }

    /// The last snapshot pushed for a subscribed service, from the local cache.
    pub fn cached(&self, name: &ServiceName) -> Option<Arc<ServiceSnapshot>> {
        self.inner.subs.get(name)
    }

    /// Sends one Beat for every held instance now (the SDK also does this by itself on its
    /// interval). Answers how many keys the node did not know (they were registered again).
    pub async fn beat_now(&self) -> Result<usize, ClientError> {
        let conn = self.inner.current().await?;
        self.inner.beat_once(&conn).await
    }

    /// The connected node's view of the cluster.
    pub async fn cluster_status(&self) -> Result<crate::model::ClusterStatus, ClientError> {
        match self.inner.call(&Message::ClusterStatus).await? {
            Message::ClusterStatusResult(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// The id of the node responsible for `ip:port`, as the connected node sees it.
    pub async fn owner(&self, ip: &str, port: u16) -> Result<u16, ClientError> {
        let msg = Message::Owner {
            ip: ip.into(),
            port,
        };
        match self.inner.call(&msg).await? {
            Message::OwnerResult(id) => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    /// How many instances this client keeps alive.
    pub fn held_count(&self) -> usize {
        self.inner.held.lock().unwrap().len()
    }
}

fn unexpected(m: Message) -> ClientError {
    match m {
        Message::Error(e) => ClientError::from_body(e),
        other => ClientError::Unexpected(format!("{:?}", other.opcode())),
    }
}

/// A redo step the node refused for want of rights (the token's rights were narrowed since):
/// another connection would be refused too, so the redo goes on without it.
fn tolerate_refusal(r: Result<u32, ClientError>, what: &str) -> Result<(), ClientError> {
    match r {
        Err(e) if is_auth_refusal(&e) => {
            warn!(error = %e, "{what} was refused; going on without it");
            Ok(())
        }
        other => other.map(|_| ()),
    }
}

/// A node's answer that the token is not good (refused, or without the rights asked for).
fn is_auth_refusal(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Server {
            code: Some(ErrorCode::Unauthenticated | ErrorCode::PermissionDenied),
            ..
        }
    )
}

fn expect_ack(m: Message) -> Result<u32, ClientError> {
    match m {
        Message::Ack(n) => Ok(n),
        other => Err(unexpected(other)),
    }
}

/// Bytes of a request body the SDK fills with instances or keys: the frame limit less the
/// header and the body's fields before its list (a Register's options and count), so that a
/// batch of large instances is split into frames the node accepts instead of being refused.
const LIST_BODY_BYTES_MAX: usize = crate::wire::FRAME_LEN_MAX - crate::wire::HEADER_LEN - 16;

/// Splits `items` into runs of at most `count_max` items and [`LIST_BODY_BYTES_MAX`] encoded
/// bytes (an item larger than that alone goes in a run of its own, and is refused when sent).
fn runs<T>(items: &[T], count_max: usize, len: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let n = len(item);
        if i > start && (i - start == count_max || bytes + n > LIST_BODY_BYTES_MAX) {
            out.push(&items[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += n;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

/// Register frames' worth of instances.
fn instance_frames(instances: &[Instance]) -> Vec<&[Instance]> {
    runs(instances, BATCH_INSTANCES_MAX, Instance::encoded_len)
}

/// Key lists of at most `count_max` keys that fit a frame.
fn key_frames(keys: &[InstanceKey], count_max: usize) -> Vec<&[InstanceKey]> {
    runs(keys, count_max, |k| {
        InstanceKey::MIN_LEN
            + k.service.namespace.len()
            + k.service.group.len()
            + k.service.service.len()
            + k.cluster.len()
            + k.ip.len()
    })
}

/// Fills Nacos's defaults into empty parts of a name.
pub fn service_name(namespace: &str, group: &str, service: &str) -> ServiceName {
    ServiceName {
        namespace: Text::from(if namespace.is_empty() {
            "public"
        } else {
            namespace
        }),
        group: Text::from(if group.is_empty() {
            "DEFAULT_GROUP"
        } else {
            group
        }),
        service: Text::from(service),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_respect_the_count_and_the_bytes() {
        let items: Vec<usize> = vec![10; 10];
        let lens = |r: Vec<&[usize]>| r.iter().map(|r| r.len()).collect::<Vec<_>>();
        assert_eq!(lens(runs(&items, 4, |&n| n)), [4, 4, 2]);
        let big = LIST_BODY_BYTES_MAX / 3 + 1;
        let items = vec![big; 5];
        assert_eq!(lens(runs(&items, 100, |&n| n)), [2, 2, 1]);
        // An item over the budget goes alone.
        let items = vec![1, LIST_BODY_BYTES_MAX + 1, 1];
        assert_eq!(lens(runs(&items, 100, |&n| n)), [1, 1, 1]);
        assert!(runs(&[] as &[usize], 4, |&n| n).is_empty());
    }
}
