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
//! - [`subscriptions`]: who is subscribed to what, and the coalesced push queues.
//! - [`inflight`]: concurrent writes of one session, in order per key.
//! - [`rejection`]: [`Rejection`], why a request was not carried out.

pub mod inflight;
pub mod rejection;
pub mod session;
pub mod subscriptions;

use std::sync::Arc;

use bytes::Bytes;

use crate::auth::{Access, Principal};
use crate::model::{
    BATCH_INSTANCES_MAX, BEAT_KEYS_MAX, ClusterStatus, Instance, InstanceKey, InstanceView, NodeId,
    PAGE_SIZE_MAX, ServiceList, ServiceName, ServiceSnapshot, Text,
};
use crate::node::Node;
use crate::wire::Reader;
pub use rejection::Rejection;
pub use session::AUTH_FAILURES_MAX;
pub use session::{Session, Write};
use subscriptions::PushQueue;

/// The request API of one node. Cheap to clone; every front end holds one.
#[derive(Clone)]
pub struct Api {
    node: Arc<Node>,
}

/// A service's instances as a query answers them: the snapshot body in the binary protocol's
/// encoding (wire-spec.md §5.8), which the store caches per service and the native front end
/// sends as it is; other front ends decode it.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot(Bytes);

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

impl Api {
    pub fn new(node: Arc<Node>) -> Api {
        Api { node }
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

    /// Requests are served only by a node that holds the cluster's data and is not stopping.
    fn admit(&self) -> Result<(), Rejection> {
        if self.node.shutdown.is_cancelled() {
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
        self.check_register(who, instances)?;
        apply_register(&self.node, instances, 0).await
    }

    /// Deletes instances; answers how many existed.
    pub async fn deregister(
        &self,
        who: &Principal,
        keys: &[InstanceKey],
    ) -> Result<u32, Rejection> {
        self.check_deregister(who, keys)?;
        apply_deregister(&self.node, keys).await
    }

    /// Renews leases; answers the indexes (into `keys`) of those no live instance has.
    pub async fn beat(&self, who: &Principal, keys: &[InstanceKey]) -> Result<Vec<u16>, Rejection> {
        self.check_beat(who, keys)?;
        apply_beat(&self.node, keys).await
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
        authorize(who, Need::Read(&name.namespace))?;
        self.admit()?;
        Ok(Snapshot(self.node.store.query(name, cluster, healthy_only)))
    }

    /// One live instance.
    pub fn instance(&self, who: &Principal, key: &InstanceKey) -> Result<InstanceView, Rejection> {
        authorize(who, Need::Read(&key.service.namespace))?;
        self.admit()?;
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
        authorize(who, Need::Read(namespace))?;
        self.admit()?;
        if page_size == 0 || page_size as usize > PAGE_SIZE_MAX {
            return Err(Rejection::InvalidArgument {
                what: "page size",
                reason: format!("must be 1..={PAGE_SIZE_MAX}"),
            });
        }
        Ok(self.node.store.list_services(namespace, page, page_size))
    }

    /// The node responsible for `ip:port`, as this node sees the cluster. Names no
    /// namespace; any authenticated caller may ask.
    pub fn owner(&self, who: &Principal, ip: &str, port: u16) -> Result<NodeId, Rejection> {
        authorize(who, Need::Caller)?;
        self.admit()?;
        Ok(self.node.store.ownership().owner(ip, port))
    }

    /// This node's view of the cluster; answered also while loading or stopping. It shows the
    /// members' peer addresses and counts, no namespace: any authenticated caller may ask (an
    /// anonymous probe has Hello's `ready` flag, and the admin port's probes).
    pub fn cluster_status(&self, who: &Principal) -> Result<ClusterStatus, Rejection> {
        authorize(who, Need::Caller)?;
        Ok(self.node.cluster_status())
    }

    /// A new connection-bound client.
    pub fn open_session(&self) -> Session {
        Session::new(self.clone())
    }

    /// The snapshots a push queue's subscriber is owed now: the current snapshot of every
    /// service marked since the last call, newer than what was pushed to it before.
    pub fn pushes(&self, queue: &PushQueue) -> Vec<Snapshot> {
        queue
            .take()
            .into_iter()
            .filter_map(|name| {
                let snap = Snapshot(self.node.store.query(&name, "", false));
                queue.is_news(&name, snap.revision()).then_some(snap)
            })
            .collect()
    }
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
