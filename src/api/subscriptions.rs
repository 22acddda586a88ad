//! Subscriptions and push.
//!
//! Each connection that subscribes gets a [`PushQueue`]: a set of services with news pending and
//! a wake-up. A change to a service adds the service to the pending set of every subscribed
//! connection (a set, so many changes coalesce into one entry) and wakes its writer, which waits
//! `push_delay_ms` more to coalesce, then sends each pending service's *current* snapshot. A
//! subscriber that reads slowly therefore never builds a backlog: however far behind it falls,
//! it is owed at most one fresh snapshot per subscribed service.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::hash::{HashMap, HashSet};
use tokio::sync::Notify;

use crate::model::ServiceName;

/// Services one connection may subscribe to: bounds the pending set and the fan-out table.
pub const SUBSCRIPTIONS_PER_CONNECTION_MAX: usize = 10_000;

/// The pending pushes of one connection.
pub struct PushQueue {
    id: u64,
    pending: Mutex<HashSet<ServiceName>>,
    /// Revision of the last snapshot pushed, per subscribed service. A change that lands after
    /// the writer took the pending set but before it read the snapshot is in that snapshot and
    /// marks the service again; the next snapshot would repeat the revision, and is skipped.
    pushed: Mutex<HashMap<ServiceName, u64>>,
    notify: Notify,
}

impl PushQueue {
    /// Marks `name` as owing a push and wakes the writer.
    pub fn mark(&self, name: &ServiceName) {
        let mut p = self.pending.lock().unwrap();
        if !p.contains(name) {
            p.insert(name.clone());
        }
        drop(p);
        self.notify.notify_one();
    }

    /// Waits until something is pending.
    pub async fn wait(&self) {
        self.notify.notified().await
    }

    /// Takes the pending services.
    pub fn take(&self) -> Vec<ServiceName> {
        self.pending.lock().unwrap().drain().collect()
    }

    /// True if a snapshot of `name` at `revision` is newer than the last one pushed (and
    /// records it as pushed), so that every subscriber sees strictly growing revisions.
    pub fn is_news(&self, name: &ServiceName, revision: u64) -> bool {
        let mut pushed = self.pushed.lock().unwrap();
        match pushed.get_mut(name) {
            Some(last) if *last >= revision => false,
            Some(last) => {
                *last = revision;
                true
            }
            None => {
                pushed.insert(name.clone(), revision);
                true
            }
        }
    }

    /// Forgets what was pushed and is pending for `name` (unsubscribed, or subscribed anew and
    /// owed the current snapshot whatever was pushed before).
    pub fn forget(&self, name: &ServiceName) {
        self.pending.lock().unwrap().remove(name);
        self.pushed.lock().unwrap().remove(name);
    }
}

/// Who is subscribed to what, on this node.
#[derive(Default)]
pub struct Subscriptions {
    by_service: RwLock<HashMap<ServiceName, Vec<Arc<PushQueue>>>>,
    next_id: AtomicU64,
}

impl Subscriptions {
    pub fn new_queue(&self) -> Arc<PushQueue> {
        Arc::new(PushQueue {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            pending: Mutex::new(HashSet::default()),
            pushed: Mutex::new(HashMap::default()),
            notify: Notify::new(),
        })
    }

    pub fn subscribe(&self, name: &ServiceName, q: &Arc<PushQueue>) {
        let mut map = self.by_service.write().unwrap();
        let subs = map.entry(name.clone()).or_default();
        if !subs.iter().any(|s| s.id == q.id) {
            subs.push(q.clone());
        }
    }

    pub fn unsubscribe(&self, name: &ServiceName, q: &PushQueue) {
        q.forget(name);
        let mut map = self.by_service.write().unwrap();
        if let Some(subs) = map.get_mut(name) {
            subs.retain(|s| s.id != q.id);
            if subs.is_empty() {
                map.remove(name);
            }
        }
    }

    /// A service changed: every subscriber owes a push.
    pub fn notify(&self, name: &ServiceName) {
        if let Some(subs) = self.by_service.read().unwrap().get(name) {
            for q in subs {
                q.mark(name);
            }
        }
    }

    /// Subscriber connections, over all services (for tests and the cluster status).
    pub fn count(&self) -> usize {
        self.by_service.read().unwrap().values().map(Vec::len).sum()
    }
}
