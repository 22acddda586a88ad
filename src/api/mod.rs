//! The request API: the one door every front end goes through — the binary protocol's client
//! sessions, the Nacos HTTP and gRPC APIs, the admin port. It takes model types and answers
//! `Result<_, Rejection>`; it decides readiness, validation, limits and where a write goes (this
//! node's store or, in a cluster, the owner), so that no front end touches the store or the
//! cluster and no rule is written twice.
//!
//! - [`Api`]: the node's requests that need no connection (lease-bound writes, reads, status).
//!   Every request names its caller, a [`Principal`]; `authorize` below is the one place that
//!   decides what a caller may do (rights per namespace, `docs/security.md`), before anything
//!   else is looked at.
//! - [`session`]: [`Session`], the state of one connection-bound client (its session-bound
//!   instances, subscriptions and in-flight writes).
//! - [`inflight`]: concurrent writes of one session, in order per key.
//! - [`rejection`]: [`Rejection`], why a request was not carried out.

pub mod inflight;
pub mod rejection;
pub mod session;

use std::sync::Arc;

use bytes::Bytes;

use tokio::time::Instant;

use crate::auth::{Access, Principal};
use crate::metrics::Op;
use crate::model::{
    BATCH_INSTANCES_MAX, BEAT_KEYS_MAX, ClusterStatus, Instance, InstanceKey, InstanceView,
    NamespaceSummary, NodeId, PAGE_SIZE_MAX, ServiceDelta, ServiceList, ServiceName,
    ServiceSnapshot, Text,
};
use crate::node::Node;
pub use crate::node::subscriptions::{PushMode, PushQueue};
use crate::store::PushBody;
use crate::wire::Reader;
pub use rejection::Rejection;
pub use session::AUTH_FAILURES_MAX;
pub use session::{Session, Write};

/// The request API of one node. Cheap to clone; every front end (and every connection of the
/// native one) holds one.
pub struct Api {
    node: Arc<Node>,
    /// The node's shutdown as this clone sees it: a child token of `node.shutdown`, so that the
    /// check every request makes ([`Api::admit`]) locks this clone's token, not the one all
    /// connections share (a lock every core contends for, at a million requests a second).
    stopping: tokio_util::sync::CancellationToken,
}

impl Clone for Api {
    fn clone(&self) -> Api {
        Api::new(self.node.clone())
    }
}

/// A service's instances as a query answers them: the snapshot body in the binary protocol's
/// encoding (wire-spec.md §5.8), which the store caches per service and the native front end
/// sends as it is; other front ends decode it.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot(Bytes);

/// What a node holds and serves, counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeCounts {
    /// Services with a live instance, over all namespaces.
    pub services: u64,
    /// Live instances this node holds.
    pub instances: u64,
    /// Subscriptions of this node's connections (one per connection and service).
    pub subscriptions: u64,
}

impl Snapshot {
    /// The encoded ServiceSnapshot body.
    pub fn body(&self) -> &Bytes {
        &self.0
    }

    /// The revision of the service this snapshot shows.
    pub fn revision(&self) -> u64 {
        let mut r = Reader::new(self.0.clone());
        ServiceName::decode(&mut r)
            .and_then(|_| r.u64("revision"))
            .expect("the store encodes well-formed snapshots")
    }

    pub fn decode(&self) -> ServiceSnapshot {
        ServiceSnapshot::decode_body(self.0.clone())
            .expect("the store encodes well-formed snapshots")
    }
}

/// What changed in a service between the revision a subscriber held and a newer one: the
/// PushDelta body in the binary protocol's encoding (wire-spec.md §6.10).
#[derive(Debug, Clone, PartialEq)]
pub struct Delta(Bytes);

impl Delta {
    /// The encoded PushDelta body.
    pub fn body(&self) -> &Bytes {
        &self.0
    }

    pub fn decode(&self) -> ServiceDelta {
        ServiceDelta::decode_body(self.0.clone()).expect("the store encodes well-formed deltas")
    }
}

/// One push a subscriber is owed.
#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    /// The whole list.
    Full(Snapshot),
    /// What changed since the last push (only to a [`PushMode::Deltas`] queue).
    Delta(Delta),
}

impl Push {
    /// The encoded body.
    pub fn body(&self) -> &Bytes {
        match self {
            Push::Full(s) => s.body(),
            Push::Delta(d) => d.body(),
        }
    }
}

impl Api {
    pub fn new(node: Arc<Node>) -> Api {
        let stopping = node.shutdown.child_token();
        Api { node, stopping }
    }

    /// The node's shutdown as this clone watches it (a child token of `node.shutdown`): what a
    /// front end checks for every request or frame, instead of the token all connections share.
    pub fn stopping(&self) -> &tokio_util::sync::CancellationToken {
        &self.stopping
    }

    /// The node behind the API (front ends read its settings and shutdown token from it).
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    pub fn node_id(&self) -> NodeId {
        self.node.config.node_id
    }

    pub fn is_ready(&self) -> bool {
        self.node.is_ready()
    }

    /// The node's clock: milliseconds since the Unix epoch (through tokio's clock).
    pub fn now_ms(&self) -> u64 {
        self.node.store.clock().now_ms()
    }

    /// The smallest lease value this node accepts, ms.
    pub fn lease_floor_ms(&self) -> u32 {
        self.node.config.lease_floor_ms
    }

    /// The principal of a caller that presented no token: every right on a node without a
    /// token file, none on a node with one. Front ends that have not found out who their caller
    /// is use this, and so refuse everything when tokens are on.
    pub fn guest(&self) -> Principal {
        self.node.tokens.guest()
    }

    /// The principal a presented token stands for. Hashes the token once: a connection-bound
    /// front end calls this once per connection and keeps the principal. The refusal is the
    /// same, and takes as long, whatever was presented.
    pub fn authenticate(&self, token: &str) -> Result<Principal, Rejection> {
        self.node
            .tokens
            .authenticate(token)
            .ok_or(Rejection::Unauthenticated)
    }

    /// Counts a request's outcome and its latency since `started` (every request the API
    /// answers goes through here once).
    fn counted<T>(
        &self,
        op: Op,
        started: Instant,
        r: Result<T, Rejection>,
    ) -> Result<T, Rejection> {
        self.node
            .metrics
            .request(op, started, r.as_ref().err().map(Rejection::kind));
        r
    }

    /// Requests are served only by a node that holds the cluster's data and is not stopping.
    fn admit(&self) -> Result<(), Rejection> {
        if self.stopping.is_cancelled() {
            return Err(Rejection::ShuttingDown);
        }
        if !self.node.is_ready() {
            return Err(Rejection::NotReady);
        }
        Ok(())
    }

    /// Checks a register batch whole before any of it is applied.
    fn check_register(&self, who: &Principal, instances: &[Instance]) -> Result<(), Rejection> {
        authorize_each(who, Access::Write, instances.iter().map(|i| &i.key))?;
        self.admit()?;
        check_count(
            "instances in one request",
            instances.len(),
            BATCH_INSTANCES_MAX,
        )?;
        for i in instances {
            i.validate(self.node.config.lease_floor_ms)?;
        }
        Ok(())
    }

    /// Checks a deregister batch whole before any of it is applied.
    fn check_deregister(&self, who: &Principal, keys: &[InstanceKey]) -> Result<(), Rejection> {
        authorize_each(who, Access::Write, keys.iter())?;
        self.admit()?;
        check_count("keys in one request", keys.len(), BATCH_INSTANCES_MAX)?;
        for k in keys {
            k.validate()?;
        }
        Ok(())
    }

    fn check_beat(&self, who: &Principal, keys: &[InstanceKey]) -> Result<(), Rejection> {
        authorize_each(who, Access::Write, keys.iter())?;
        self.admit()?;
        check_count("keys in one beat", keys.len(), BEAT_KEYS_MAX)
    }

    /// Registers instances that live on their lease (renewed by [`Api::beat`]); answers how
    /// many were registered. In a cluster each goes to its owner.
    pub async fn register(
        &self,
        who: &Principal,
        instances: &[Instance],
    ) -> Result<u32, Rejection> {
        let started = Instant::now();
        let r = match self.check_register(who, instances) {
            Ok(()) => apply_register(&self.node, instances, 0).await,
            Err(e) => Err(e),
        };
        self.counted(Op::Register, started, r)
    }

    /// Deletes instances; answers how many existed.
    pub async fn deregister(
        &self,
        who: &Principal,
        keys: &[InstanceKey],
    ) -> Result<u32, Rejection> {
        let started = Instant::now();
        let r = match self.check_deregister(who, keys) {
            Ok(()) => apply_deregister(&self.node, keys).await,
            Err(e) => Err(e),
        };
        self.counted(Op::Deregister, started, r)
    }

    /// Renews leases; answers the indexes (into `keys`) of those no live instance has.
    pub async fn beat(&self, who: &Principal, keys: &[InstanceKey]) -> Result<Vec<u16>, Rejection> {
        let started = Instant::now();
        let r = match self.check_beat(who, keys) {
            Ok(()) => apply_beat(&self.node, keys).await,
            Err(e) => Err(e),
        };
        self.counted(Op::Beat, started, r)
    }

    /// A service's live instances, optionally of one cluster (`""`: all) and only those healthy
    /// and enabled. An unknown service is an empty list.
    pub fn query(
        &self,
        who: &Principal,
        name: &ServiceName,
        cluster: &str,
        healthy_only: bool,
    ) -> Result<Snapshot, Rejection> {
        let started = Instant::now();
        let r = authorize(who, Need::Read(&name.namespace))
            .and_then(|()| self.admit())
            .map(|()| Snapshot(self.node.store.query(name, cluster, healthy_only)));
        self.counted(Op::Query, started, r)
    }

    /// One live instance.
    pub fn instance(&self, who: &Principal, key: &InstanceKey) -> Result<InstanceView, Rejection> {
        let started = Instant::now();
        let r = authorize(who, Need::Read(&key.service.namespace))
            .and_then(|()| self.admit())
            .and_then(|()| self.find_instance(key));
        self.counted(Op::Instance, started, r)
    }

    fn find_instance(&self, key: &InstanceKey) -> Result<InstanceView, Rejection> {
        match self.node.store.get(key) {
            Some(r) if r.alive => Ok(InstanceView {
                cluster: key.cluster.clone(),
                ip: key.ip.clone(),
                port: key.port,
                weight: r.weight,
                healthy: r.reported_healthy(),
                enabled: r.enabled,
                metadata: r
                    .meta()
                    .iter()
                    .map(|(k, v)| (Text::from(&**k), Text::from(&**v)))
                    .collect(),
            }),
            _ => Err(Rejection::NotFound {
                what: format!(
                    "instance {}:{} of {} in cluster {}",
                    key.ip, key.port, key.service, key.cluster
                ),
            }),
        }
    }

    /// One page (from 0) of the services of a namespace that have live instances, sorted by
    /// (group, service).
    pub fn list_services(
        &self,
        who: &Principal,
        namespace: &str,
        page: u32,
        page_size: u16,
    ) -> Result<ServiceList, Rejection> {
        let started = Instant::now();
        let r = authorize(who, Need::Read(namespace))
            .and_then(|()| self.admit())
            .and_then(|()| {
                check_page_size(page_size)?;
                Ok(self.node.store.list_services(namespace, page, page_size))
            });
        self.counted(Op::ListServices, started, r)
    }

    /// Every namespace that has live instances and that `who` may read, sorted by name, with
    /// what it holds. Walks the whole store: for operators (the admin port), not for clients'
    /// request paths.
    pub fn list_namespaces(&self, who: &Principal) -> Result<Vec<NamespaceSummary>, Rejection> {
        let started = Instant::now();
        let r = authorize(who, Need::Caller)
            .and_then(|()| self.admit())
            .map(|()| {
                let mut all = self.node.store.namespace_counts();
                all.retain(|n| who.may(Access::Read, &n.namespace));
                all
            });
        self.counted(Op::ListNamespaces, started, r)
    }

    /// [`Api::list_services`] of one group of the namespace (the Nacos APIs list by group).
    pub fn list_group_services(
        &self,
        who: &Principal,
        namespace: &str,
        group: &str,
        page: u32,
        page_size: u16,
    ) -> Result<ServiceList, Rejection> {
        authorize(who, Need::Read(namespace))?;
        self.admit()?;
        check_page_size(page_size)?;
        Ok(self
            .node
            .store
            .list_services_in(namespace, Some(group), page, page_size))
    }

    /// What this node holds and serves, counted (Nacos's operator metrics); answered also while
    /// loading or stopping.
    pub fn counts(&self) -> NodeCounts {
        NodeCounts {
            services: self.node.store.service_count() as u64,
            instances: self.node.store.len() as u64,
            subscriptions: self.node.subs.count() as u64,
        }
    }

    /// The node responsible for `ip:port`, as this node sees the cluster. Names no
    /// namespace; any authenticated caller may ask.
    pub fn owner(&self, who: &Principal, ip: &str, port: u16) -> Result<NodeId, Rejection> {
        let started = Instant::now();
        let r = authorize(who, Need::Caller)
            .and_then(|()| self.admit())
            .map(|()| self.node.store.ownership().owner(ip, port));
        self.counted(Op::Owner, started, r)
    }

    /// Whether the node serves clients now: loaded, and not shutting down (the readiness probe).
    pub fn is_serving(&self) -> bool {
        self.admit().is_ok()
    }

    /// The node's metrics in the Prometheus text format ([`crate::metrics::CONTENT_TYPE`]).
    pub fn metrics_text(&self) -> String {
        self.node.metrics.encode()
    }

    /// This node's view of the cluster; answered also while loading or stopping. It shows the
    /// members' peer addresses and counts, no namespace: any authenticated caller may ask (an
    /// anonymous probe has Hello's `ready` flag, and the admin port's probes).
    pub fn cluster_status(&self, who: &Principal) -> Result<ClusterStatus, Rejection> {
        authorize(who, Need::Caller)?;
        Ok(self.node.cluster_status())
    }

    /// A new connection-bound client of the native protocol (pushed deltas).
    pub fn open_session(&self) -> Session {
        Session::new(self.clone(), PushMode::Deltas)
    }

    /// A new connection-bound client whose pushes are as `mode` says (a front end whose
    /// clients take only whole lists asks for [`PushMode::FullOnly`]).
    pub fn open_session_with(&self, mode: PushMode) -> Session {
        Session::new(self.clone(), mode)
    }

    /// The pushes a queue's subscriber is owed now, oldest mark first, until they add up to
    /// `budget_bytes` (at least one push, whatever its size): for each service marked since, what
    /// changed since the revision the subscriber holds (a [`Push::Delta`], to a
    /// [`PushMode::Deltas`] queue) or the whole list (a new subscription, a subscriber further
    /// behind than the service's change log reaches, a full-only queue). Services left over stay
    /// marked, and the queue wakes its writer again for them.
    pub fn pushes(&self, queue: &PushQueue, budget_bytes: usize) -> Vec<Push> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while bytes < budget_bytes {
            let Some((name, held)) = queue.next() else {
                break;
            };
            let push = match queue.mode() {
                PushMode::Deltas => match self.node.store.push_since(&name, held) {
                    PushBody::Unchanged => continue,
                    PushBody::Full { body, revision } => (Push::Full(Snapshot(body)), revision),
                    PushBody::Delta { body, revision } => (Push::Delta(Delta(body)), revision),
                },
                PushMode::FullOnly => {
                    let snap = Snapshot(self.node.store.query(&name, "", false));
                    let revision = snap.revision();
                    if held.is_some_and(|h| h >= revision) {
                        continue;
                    }
                    (Push::Full(snap), revision)
                }
            };
            let (push, revision) = push;
            queue.pushed(&name, held, revision);
            bytes += push.body().len();
            out.push(push);
        }
        queue.rewake_if_pending();
        self.node.metrics.pushes_sent.inc_by(out.len() as u64);
        out
    }

    /// Ends `queue`'s subscription to `name`; the service's change log goes with its last
    /// subscriber on this node.
    fn unsubscribe(&self, name: &ServiceName, queue: &PushQueue) {
        if self.node.subs.unsubscribe(name, queue) {
            self.node.store.unwatch(name);
        }
    }
}

fn check_page_size(page_size: u16) -> Result<(), Rejection> {
    if page_size == 0 || page_size as usize > PAGE_SIZE_MAX {
        return Err(Rejection::InvalidArgument {
            what: "page size",
            reason: format!("must be 1..={PAGE_SIZE_MAX}"),
        });
    }
    Ok(())
}

/// What a request needs of its caller.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Need<'a> {
    /// Only to be authenticated: requests that name no namespace (owner, cluster status).
    Caller,
    /// To read this namespace: query, list, subscribe.
    Read(&'a str),
    /// To write this namespace: register, deregister, beat.
    Write(&'a str),
}

/// THE check of rights: whether `who` may make a request that needs `need`. Every request of
/// the API passes here first, before readiness or validation, so that a caller without the
/// right learns nothing else about the request. Costs a match for a node without tokens and a
/// short scan of the grant's namespaces with them; never hashing.
pub(crate) fn authorize(who: &Principal, need: Need) -> Result<(), Rejection> {
    if !who.is_authenticated() {
        return Err(Rejection::Unauthenticated);
    }
    let (access, namespace) = match need {
        Need::Caller => return Ok(()),
        Need::Read(ns) => (Access::Read, ns),
        Need::Write(ns) => (Access::Write, ns),
    };
    if who.may(access, namespace) {
        Ok(())
    } else {
        Err(Rejection::PermissionDenied {
            namespace: namespace.to_string(),
            access,
        })
    }
}

/// [`authorize`] for every namespace a batch of keys touches (the first one refused is named);
/// a run of keys in one namespace is checked once.
fn authorize_each<'a>(
    who: &Principal,
    access: Access,
    keys: impl Iterator<Item = &'a InstanceKey>,
) -> Result<(), Rejection> {
    let mut last: Option<&str> = None;
    for k in keys {
        let ns = k.service.namespace.as_str();
        if last == Some(ns) {
            continue;
        }
        let need = match access {
            Access::Read => Need::Read(ns),
            Access::Write => Need::Write(ns),
        };
        authorize(who, need)?;
        last = Some(ns);
    }
    // An empty batch touches nothing, but still comes from someone.
    if last.is_none() {
        authorize(who, Need::Caller)?;
    }
    Ok(())
}

fn check_count(what: &'static str, n: usize, max: usize) -> Result<(), Rejection> {
    if n > max {
        return Err(Rejection::LimitExceeded { what, max });
    }
    Ok(())
}

/// Writes registrations at their owners; `session` non-zero binds them to that session.
async fn apply_register(
    node: &Node,
    instances: &[Instance],
    session: u64,
) -> Result<u32, Rejection> {
    if let Some(c) = &node.cluster {
        return Ok(c.register(instances, session).await?);
    }
    for inst in instances {
        node.store.register(inst, session);
    }
    Ok(instances.len() as u32)
}

async fn apply_deregister(node: &Node, keys: &[InstanceKey]) -> Result<u32, Rejection> {
    if let Some(c) = &node.cluster {
        return Ok(c.deregister(keys).await?);
    }
    Ok(keys.iter().filter(|k| node.store.deregister(k)).count() as u32)
}

async fn apply_beat(node: &Node, keys: &[InstanceKey]) -> Result<Vec<u16>, Rejection> {
    if let Some(c) = &node.cluster {
        return Ok(c.beat(keys).await?);
    }
    Ok(node.store.beat_batch(keys))
}

/// A session ended without deregistering: its session-bound instances are reported unhealthy
/// at once (best effort towards remote owners, which expire them by lease anyway).
async fn apply_lapse(node: &Node, session: u64, keys: Vec<InstanceKey>) {
    if let Some(c) = &node.cluster {
        return c.lapse_session(session, keys).await;
    }
    for k in &keys {
        node.store.lapse_session(k, session);
    }
}

#[cfg(test)]
mod tests;
