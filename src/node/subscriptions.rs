//! Subscriptions and push.
//!
//! Each connection that subscribes gets a [`PushQueue`]: the services with news pending, in the
//! order they were marked, and a wake-up. A change to a service marks it in the queue of every
//! subscribed connection (once: many changes coalesce into one entry) and wakes its writer,
//! which waits `push_delay_ms` more to coalesce, then asks the request API (`Api::pushes`) for what
//! each pending service owes: nothing, the changes since the revision the subscriber holds (a
//! delta), or the whole list. A subscriber that reads slowly therefore never builds a backlog:
//! however far behind it falls, it is owed at most one push per subscribed service.
//!
//! The queue remembers, per subscribed service, the revision the subscriber holds (the last one
//! pushed). That is how the node proves continuity: a delta is computed from exactly that
//! revision, and a subscriber that holds nothing (a new or renewed subscription) is sent the
//! whole list. A queue made [`PushMode::FullOnly`] (a front end whose clients cannot apply
//! deltas, like Nacos's) is always sent whole lists.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::hash::{HashMap, HashSet};
use tokio::sync::Notify;

use crate::model::ServiceName;

/// Services one connection may subscribe to: bounds the pending set and the fan-out table.
pub const SUBSCRIPTIONS_PER_CONNECTION_MAX: usize = 10_000;

/// How a queue's subscriber wants its pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushMode {
    /// The whole list first, then what changed since the last push (the native protocol).
    Deltas,
    /// The whole list every time.
    FullOnly,
}

/// The pending pushes of one connection.
pub struct PushQueue {
    id: u64,
    mode: PushMode,
    state: Mutex<QueueState>,
    notify: Notify,
}

#[derive(Default)]
struct QueueState {
    /// Services owing a push, oldest mark first; `marked` holds the same names.
    pending: VecDeque<ServiceName>,
    marked: HashSet<ServiceName>,
    /// Per subscribed service, the revision of the last push: what the subscriber holds.
    held: HashMap<ServiceName, u64>,
}

impl PushQueue {
    pub fn mode(&self) -> PushMode {
        self.mode
    }

    /// Marks `name` as owing a push and wakes the writer.
    pub fn mark(&self, name: &ServiceName) {
        let mut s = self.state.lock().unwrap();
        if !s.marked.contains(name) {
            s.marked.insert(name.clone());
            s.pending.push_back(name.clone());
        }
        drop(s);
        self.notify.notify_one();
    }

    /// Waits until something is pending.
    pub async fn wait(&self) {
        self.notify.notified().await
    }

    /// The service marked longest ago, and the revision its subscriber holds (`None`: nothing,
    /// it is owed the whole list).
    pub fn next(&self) -> Option<(ServiceName, Option<u64>)> {
        let mut s = self.state.lock().unwrap();
        let name = s.pending.pop_front()?;
        s.marked.remove(&name);
        let held = s.held.get(&name).copied();
        Some((name, held))
    }

    /// Whether services are still pending; if so the writer is woken again (a writer that
    /// stopped early, at its byte budget, comes back for the rest).
    pub fn rewake_if_pending(&self) -> bool {
        let pending = !self.state.lock().unwrap().pending.is_empty();
        if pending {
            self.notify.notify_one();
        }
        pending
    }

    /// Records that the subscriber of `name` was pushed the list at `revision`, after a push
    /// computed from `held` (what [`PushQueue::next`] answered). If the subscription was renewed
    /// or ended meanwhile ([`PushQueue::forget`]), nothing is recorded: the next push is a
    /// whole list again.
    pub fn pushed(&self, name: &ServiceName, held: Option<u64>, revision: u64) {
        let mut s = self.state.lock().unwrap();
        match (held, s.held.get_mut(name)) {
            (Some(_), Some(h)) => *h = revision,
            // Forgotten since the push was computed: the subscriber must be sent a whole list.
            (Some(_), None) => {}
            (None, _) => {
                s.held.insert(name.clone(), revision);
            }
        }
    }

    /// The subscriber of `name` was given the list at `revision` another way (a front end whose
    /// subscribe answer carries the list): no push of that revision or an older one is owed.
    pub fn note_held(&self, name: &ServiceName, revision: u64) {
        let mut s = self.state.lock().unwrap();
        let held = s.held.entry(name.clone()).or_insert(revision);
        *held = (*held).max(revision);
    }

    /// Forgets what was pushed and is pending for `name` (unsubscribed, or subscribed anew and
    /// owed the current list whatever was pushed before).
    pub fn forget(&self, name: &ServiceName) {
        let mut s = self.state.lock().unwrap();
        if s.marked.remove(name) {
            s.pending.retain(|n| n != name);
        }
        s.held.remove(name);
    }
}

/// Who is subscribed to what, on this node.
#[derive(Default)]
pub struct Subscriptions {
    by_service: RwLock<HashMap<ServiceName, Vec<Arc<PushQueue>>>>,
    next_id: AtomicU64,
}

impl Subscriptions {
    pub fn new_queue(&self, mode: PushMode) -> Arc<PushQueue> {
        Arc::new(PushQueue {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            mode,
            state: Mutex::default(),
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

    /// Ends `q`'s subscription to `name`; true if nobody on this node subscribes to it now.
    pub fn unsubscribe(&self, name: &ServiceName, q: &PushQueue) -> bool {
        q.forget(name);
        let mut map = self.by_service.write().unwrap();
        if let Some(subs) = map.get_mut(name) {
            subs.retain(|s| s.id != q.id);
            if subs.is_empty() {
                map.remove(name);
            }
        }
        !map.contains_key(name)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(n: &str) -> ServiceName {
        ServiceName::new("public", "DEFAULT_GROUP", n)
    }

    #[test]
    fn marks_coalesce_and_come_out_oldest_first() {
        let subs = Subscriptions::default();
        let q = subs.new_queue(PushMode::Deltas);
        for n in ["a", "b", "a", "c", "b"] {
            q.mark(&svc(n));
        }
        let order: Vec<String> = std::iter::from_fn(|| q.next())
            .map(|(n, _)| n.service.to_string())
            .collect();
        assert_eq!(order, ["a", "b", "c"]);
        assert!(!q.rewake_if_pending());
    }

    #[test]
    fn the_held_revision_follows_pushes_and_a_renewed_subscription_starts_over() {
        let subs = Subscriptions::default();
        let q = subs.new_queue(PushMode::Deltas);
        let a = svc("a");
        q.mark(&a);
        assert_eq!(
            q.next(),
            Some((a.clone(), None)),
            "a new subscriber holds nothing"
        );
        q.pushed(&a, None, 5);
        q.mark(&a);
        assert_eq!(q.next(), Some((a.clone(), Some(5))));
        // Renewed while the delta from 5 was being made: the delta is not recorded as held.
        q.forget(&a);
        q.pushed(&a, Some(5), 9);
        q.mark(&a);
        assert_eq!(
            q.next(),
            Some((a.clone(), None)),
            "owed the whole list again"
        );
    }

    #[test]
    fn unsubscribe_says_when_the_last_subscriber_of_a_service_went() {
        let subs = Subscriptions::default();
        let (q1, q2) = (
            subs.new_queue(PushMode::Deltas),
            subs.new_queue(PushMode::FullOnly),
        );
        let a = svc("a");
        subs.subscribe(&a, &q1);
        subs.subscribe(&a, &q2);
        assert!(!subs.unsubscribe(&a, &q1));
        assert!(subs.unsubscribe(&a, &q2));
        assert_eq!(subs.count(), 0);
    }
}
