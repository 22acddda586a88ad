//! One connection-bound client (the native SDK's connection, a Nacos gRPC connection): the
//! instances it registered bound to its session, its subscriptions and push queue, and its
//! writes in flight.
//!
//! A session also holds its caller, a [`Principal`]: set once per connection, when the client
//! presents its token ([`Session::authenticate`]) — or by a front end that verifies its
//! clients' credentials itself ([`Session::set_principal`], the Nacos accessToken) — and looked up again by the token's digest
//! after the node reloads its token file (a narrowed grant drops the subscriptions it no longer
//! covers; a removed one leaves the session anonymous and [`Session::is_revoked`] true).
//!
//! Session-bound instances are reported unhealthy as soon as the session closes without
//! deregistering them, and removed at their lease's end unless the client comes back and
//! registers them again (design.md §3). Writes of one session may run concurrently (a clustered
//! node waits on owners), but two writes touching the same key apply in the order they were
//! made.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;
use tracing::{debug, info};

use super::inflight::InFlight;
use super::{
    Api, Need, Push, Rejection, Snapshot, apply_beat, apply_deregister, apply_lapse,
    apply_register, authorize,
};
use crate::auth::{Access, Principal};
use crate::hash::HashSet;
use crate::metrics::{GaugeGuard, Op};
use crate::model::{ClusterStatus, Instance, InstanceKey, NodeId, ServiceList, ServiceName};
use crate::node::subscriptions::{PushMode, PushQueue, SUBSCRIPTIONS_PER_CONNECTION_MAX};

/// Session-bound instances one session may hold; bounds what a drop has to lapse.
pub const BOUND_PER_SESSION_MAX: usize = 100_000;

/// Refusals for want of a valid token (failed presentations, and requests made without one)
/// after which a connection is closed. A client with a wrong token gets it wrong every time;
/// three leave room for a client that sends a request before its token, and make guessing cost
/// a new connection every three tries.
pub const AUTH_FAILURES_MAX: u32 = 3;

/// A write a session admitted: done at once (a standalone node applies it in place), or to be
/// run — by the front end, in a task of its own if it wants to go on reading meanwhile. The
/// pending future holds the write's claim on its keys until it completes.
pub enum Write<T> {
    Done(Result<T, Rejection>),
    Pending(Pin<Box<dyn Future<Output = Result<T, Rejection>> + Send + 'static>>),
}

impl<T> Write<T> {
    /// Runs the write to its end.
    pub async fn outcome(self) -> Result<T, Rejection> {
        match self {
            Write::Done(r) => r,
            Write::Pending(f) => f.await,
        }
    }
}

pub struct Session {
    api: Api,
    id: u64,
    /// Session-bound instances registered in this session and not deregistered.
    bound: Mutex<HashSet<InstanceKey>>,
    subscribed: Mutex<HashSet<ServiceName>>,
    push: Arc<PushQueue>,
    inflight: Arc<InFlight>,
    /// Who the client is: the guest until it presents a token.
    principal: Mutex<Principal>,
    /// Whether a token was accepted on this session (one presentation per connection).
    presented: AtomicBool,
    /// The accepted token's entry was removed by a reload.
    revoked: AtomicBool,
    /// Refusals for want of a valid token so far (see [`AUTH_FAILURES_MAX`]).
    auth_failures: AtomicU32,
    /// Counts this session in the open sessions while it lives.
    _open: GaugeGuard,
}

impl Session {
    pub(super) fn new(api: Api, mode: PushMode) -> Session {
        let node = api.node();
        Session {
            id: node.new_session(),
            push: node.subs.new_queue(mode),
            _open: GaugeGuard::new(node.metrics.client_sessions.clone()),
            principal: Mutex::new(api.guest()),
            api,
            bound: Mutex::default(),
            subscribed: Mutex::default(),
            inflight: Arc::default(),
            presented: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
            auth_failures: AtomicU32::new(0),
        }
    }

    /// The client presents its token: from now on the session acts with its entry's rights.
    /// Once per connection; a node without a token file accepts any token and changes nothing.
    /// A refusal counts towards [`AUTH_FAILURES_MAX`].
    pub fn authenticate(&self, token: &str) -> Result<(), Rejection> {
        if !self.api.node().tokens.is_on() {
            return Ok(());
        }
        if self.presented.load(Ordering::Acquire) {
            return Err(Rejection::InvalidArgument {
                what: "Auth",
                reason: "this connection has presented its token already".into(),
            });
        }
        match self.api.authenticate(token) {
            Ok(p) => {
                info!(session = self.id, token = p.name(), "client authenticated");
                *self.principal.lock().unwrap() = p;
                self.presented.store(true, Ordering::Release);
                Ok(())
            }
            Err(e) => self.counted(Err(e)),
        }
    }

    /// The front end verified the caller itself (a Nacos accessToken): the session acts as `p`
    /// from now on. Called again when the client presents another token (a refreshed one, or
    /// another user's: subscriptions the new caller may not read end). A node without a token
    /// file changes nothing. The front end verifies each distinct token once and counts its
    /// refusals with [`Session::refuse`].
    pub fn set_principal(&self, p: Principal) {
        if !self.api.node().tokens.is_on() {
            return;
        }
        let mut current = self.principal.lock().unwrap();
        if current.name() != p.name() {
            info!(session = self.id, user = p.name(), "client authenticated");
            self.drop_unreadable_subscriptions(&p);
        }
        *current = p;
    }

    /// A presentation the front end refused (no token, an invalid or expired one): answers
    /// `Unauthenticated`, counted towards [`AUTH_FAILURES_MAX`].
    pub fn refuse(&self) -> Rejection {
        self.note(&Rejection::Unauthenticated);
        Rejection::Unauthenticated
    }

    /// The session's caller as of now: if the node reloaded its tokens since the caller was
    /// resolved, its entry is looked up again — subscriptions it may no longer read end, and
    /// a removed entry leaves the session anonymous (and revoked).
    pub fn principal(&self) -> Principal {
        let mut p = self.principal.lock().unwrap();
        if let Some(now) = self.api.node().tokens.refresh(&p) {
            if now.is_authenticated() {
                self.drop_unreadable_subscriptions(&now);
            } else {
                info!(
                    session = self.id,
                    token = p.name(),
                    "token withdrawn by a reload"
                );
                self.revoked.store(true, Ordering::Release);
                self.drop_unreadable_subscriptions(&now);
            }
            *p = now;
        }
        p.clone()
    }

    /// Whether a reload withdrew the token this session presented: the front end closes the
    /// connection (checked on every frame; a silent client idles out).
    pub fn is_revoked(&self) -> bool {
        let _ = self.principal();
        self.revoked.load(Ordering::Acquire)
    }

    /// Whether the session has been refused for want of a valid token [`AUTH_FAILURES_MAX`]
    /// times: the front end closes the connection.
    pub fn auth_failures_exhausted(&self) -> bool {
        self.auth_failures.load(Ordering::Acquire) >= AUTH_FAILURES_MAX
    }

    /// Counts `r` if it is an `Unauthenticated` refusal.
    fn counted<T>(&self, r: Result<T, Rejection>) -> Result<T, Rejection> {
        if let Err(e) = &r {
            self.note(e);
        }
        r
    }

    /// Counts `e` if it is an `Unauthenticated` refusal.
    fn note(&self, e: &Rejection) {
        if let Rejection::Unauthenticated = e {
            self.auth_failures.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn drop_unreadable_subscriptions(&self, now: &Principal) {
        let mut subscribed = self.subscribed.lock().unwrap();
        subscribed.retain(|name| {
            let keep = now.may(Access::Read, &name.namespace);
            if !keep {
                self.api.unsubscribe(name, &self.push);
            }
            keep
        });
    }

    /// [`Api::query`] as this session's caller.
    pub fn query(
        &self,
        name: &ServiceName,
        cluster: &str,
        healthy_only: bool,
    ) -> Result<Snapshot, Rejection> {
        let who = self.principal();
        self.counted(self.api.query(&who, name, cluster, healthy_only))
    }

    /// [`Api::list_services`] as this session's caller.
    pub fn list_services(
        &self,
        namespace: &str,
        page: u32,
        page_size: u16,
    ) -> Result<ServiceList, Rejection> {
        let who = self.principal();
        self.counted(self.api.list_services(&who, namespace, page, page_size))
    }

    /// [`Api::owner`] as this session's caller.
    pub fn owner(&self, ip: &str, port: u16) -> Result<NodeId, Rejection> {
        let who = self.principal();
        self.counted(self.api.owner(&who, ip, port))
    }

    /// [`Api::cluster_status`] as this session's caller.
    pub fn cluster_status(&self) -> Result<ClusterStatus, Rejection> {
        let who = self.principal();
        self.counted(self.api.cluster_status(&who))
    }

    /// The node-unique id of this session (`node_id << 48 | counter`).
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn api(&self) -> &Api {
        &self.api
    }

    /// Where this session's pushes are marked; its writer waits on it.
    pub fn push_queue(&self) -> &Arc<PushQueue> {
        &self.push
    }

    /// The pushes this session's subscriber is owed now, up to `budget_bytes` (see
    /// [`Api::pushes`]).
    pub fn pushes(&self, budget_bytes: usize) -> Vec<Push> {
        self.api.pushes(&self.push, budget_bytes)
    }

    /// Runs `op` as a write of this session: at once on a standalone node (which applies writes
    /// one at a time anyway); on a clustered node after the earlier writes of this session that
    /// touch one of `keys` have completed, as a pending write.
    ///
    /// The write is counted as request `what`, from `started` to its outcome.
    async fn write<T, F, Fut>(
        &self,
        what: Op,
        started: Instant,
        keys: Option<Vec<u64>>,
        op: F,
    ) -> Write<T>
    where
        F: FnOnce(Arc<crate::node::Node>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Rejection>> + Send + 'static,
        T: Send + 'static,
    {
        let node = self.api.node().clone();
        if node.cluster.is_none() {
            return Write::Done(self.api.counted(what, started, op(node).await));
        }
        let claim = self.inflight.claim(keys.unwrap_or_default()).await;
        Write::Pending(Box::pin(async move {
            let metrics = node.metrics.clone();
            let r = op(node).await;
            drop(claim);
            metrics.request(what, started, r.as_ref().err().map(Rejection::kind));
            r
        }))
    }

    /// A write refused before it started, counted as request `what`.
    fn refused<T>(&self, what: Op, started: Instant, e: Rejection) -> Write<T> {
        Write::Done(self.api.counted(what, started, Err(e)))
    }

    /// Registers instances; bound to this session if `session_bound`, else living on their
    /// lease. Checked whole before anything is applied.
    pub async fn register(&self, instances: Vec<Instance>, session_bound: bool) -> Write<u32> {
        let started = Instant::now();
        let who = self.principal();
        if let Err(e) = self.api.check_register(&who, &instances) {
            self.note(&e);
            return self.refused(Op::Register, started, e);
        }
        {
            let mut bound = self.bound.lock().unwrap();
            if session_bound {
                let new = instances.iter().filter(|i| !bound.contains(&i.key)).count();
                if bound.len() + new > BOUND_PER_SESSION_MAX {
                    let e = Rejection::LimitExceeded {
                        what: "session-bound instances on one connection",
                        max: BOUND_PER_SESSION_MAX,
                    };
                    return self.refused(Op::Register, started, e);
                }
            }
            // Tracked before the outcome is known: a key that failed to register stays in the
            // set, which is harmless (a lapse only touches records bound to this session).
            for i in &instances {
                if session_bound {
                    bound.insert(i.key.compact());
                } else if !bound.is_empty() {
                    bound.remove(&i.key);
                }
            }
        }
        let session = if session_bound { self.id } else { 0 };
        let keys = InFlight::hashes(instances.iter().map(|i| &i.key));
        self.write(Op::Register, started, Some(keys), move |node| async move {
            apply_register(&node, &instances, session).await
        })
        .await
    }

    /// Deletes instances; answers how many existed.
    pub async fn deregister(&self, keys: Vec<InstanceKey>) -> Write<u32> {
        let started = Instant::now();
        let who = self.principal();
        if let Err(e) = self.api.check_deregister(&who, &keys) {
            self.note(&e);
            return self.refused(Op::Deregister, started, e);
        }
        {
            let mut bound = self.bound.lock().unwrap();
            for k in &keys {
                bound.remove(k);
            }
        }
        let hashes = InFlight::hashes(keys.iter());
        self.write(
            Op::Deregister,
            started,
            Some(hashes),
            move |node| async move { apply_deregister(&node, &keys).await },
        )
        .await
    }

    /// Renews leases; answers the indexes of the keys no live instance has.
    pub async fn beat(&self, keys: Vec<InstanceKey>) -> Write<Vec<u16>> {
        let started = Instant::now();
        let who = self.principal();
        if let Err(e) = self.api.check_beat(&who, &keys) {
            self.note(&e);
            return self.refused(Op::Beat, started, e);
        }
        // Beats claim no keys: they only renew, in any order, and one waiting on a forward to an
        // owner that stopped answering must not hold up the next beat of the same keys (which
        // renews those this node owns at once).
        self.write(Op::Beat, started, None, move |node| async move {
            apply_beat(&node, &keys).await
        })
        .await
    }

    /// Subscribes to a service: its current snapshot is pushed next, then every change (as
    /// deltas, unless the session is full-only). Subscribing again renews the subscription: the
    /// whole list is pushed again.
    pub fn subscribe(&self, name: &ServiceName) -> Result<(), Rejection> {
        let started = Instant::now();
        let r = self.subscribe_now(name);
        self.api.counted(Op::Subscribe, started, r)
    }

    fn subscribe_now(&self, name: &ServiceName) -> Result<(), Rejection> {
        let who = self.principal();
        self.counted(authorize(&who, Need::Read(&name.namespace)))?;
        self.api.admit()?;
        let name = name.compact();
        {
            let mut subscribed = self.subscribed.lock().unwrap();
            if !subscribed.contains(&name) && subscribed.len() >= SUBSCRIPTIONS_PER_CONNECTION_MAX {
                return Err(Rejection::LimitExceeded {
                    what: "subscriptions on one connection",
                    max: SUBSCRIPTIONS_PER_CONNECTION_MAX,
                });
            }
            subscribed.insert(name.clone());
        }
        self.api.node().subs.subscribe(&name, &self.push);
        // The first push is the current list, so the subscriber starts from a snapshot.
        self.push.forget(&name);
        self.push.mark(&name);
        Ok(())
    }

    /// Ends a subscription; false if there was none.
    pub fn unsubscribe(&self, name: &ServiceName) -> Result<bool, Rejection> {
        // Ends what the session has; reads nothing, so any authenticated caller may.
        let started = Instant::now();
        let who = self.principal();
        let r = self
            .counted(authorize(&who, Need::Caller))
            .and_then(|()| self.api.admit())
            .map(|()| {
                self.api.unsubscribe(name, &self.push);
                self.subscribed.lock().unwrap().remove(name)
            });
        self.api.counted(Op::Unsubscribe, started, r)
    }

    /// Ends the session: drops its subscriptions, lets its writes in flight land, and — unless
    /// the node itself is stopping — reports its session-bound instances unhealthy at once.
    /// Answers how many instances were lapsed.
    pub async fn close(&self, node_closing: bool) -> usize {
        let node = self.api.node();
        let names: Vec<ServiceName> = self.subscribed.lock().unwrap().drain().collect();
        for name in names {
            self.api.unsubscribe(&name, &self.push);
        }
        // Let the writes still in flight land first (each has a forward deadline), so that a
        // register that completes after the drop is lapsed too.
        let _ =
            tokio::time::timeout(crate::cluster::FORWARD_TIMEOUT * 2, self.inflight.drain()).await;
        let keys: Vec<InstanceKey> = self.bound.lock().unwrap().drain().collect();
        if node_closing || keys.is_empty() {
            return 0;
        }
        let n = keys.len();
        // The front end logs the drop with the client's address; this is its detail.
        debug!(
            session = self.id,
            instances = n,
            "session ended; its instances are reported unhealthy"
        );
        apply_lapse(node, self.id, keys).await;
        n
    }
}
