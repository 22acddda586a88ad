//! Writes of one client connection that are in flight at once (a clustered node forwards most
//! writes to their owners: serving them one by one would cap a pipelining client at one round
//! trip per request). Writes to the same key still apply in the order the client sent them: a
//! write waits for the earlier in-flight writes that touch one of its keys.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::hash::HashMap;
use crate::model::InstanceKey;
use crate::model::key_hash;

/// Writes one connection may have in flight. Beyond it the connection stops reading until one
/// completes, so a client cannot make a node hold unbounded work for it.
pub const WRITES_IN_FLIGHT_MAX: usize = 256;

pub struct InFlight {
    /// Key hash → number of in-flight writes touching it.
    keys: Mutex<HashMap<u64, u32>>,
    done: Notify,
    /// Writes waiting on `done` (so that a finishing write wakes no one when no one waits).
    waiting: AtomicUsize,
    slots: Arc<Semaphore>,
}

/// A write's claim on its keys and its slot; released when dropped (also if its task panics).
pub struct Claim {
    owner: Arc<InFlight>,
    hashes: Vec<u64>,
    _slot: OwnedSemaphorePermit,
}

impl Default for InFlight {
    fn default() -> InFlight {
        InFlight {
            keys: Mutex::new(HashMap::default()),
            done: Notify::new(),
            waiting: AtomicUsize::new(0),
            slots: Arc::new(Semaphore::new(WRITES_IN_FLIGHT_MAX)),
        }
    }
}

impl InFlight {
    /// The hashes a write claims, from its keys.
    pub fn hashes<'a>(keys: impl Iterator<Item = &'a InstanceKey>) -> Vec<u64> {
        keys.map(|k| key_hash(&k.service, &k.cluster, &k.ip, k.port))
            .collect()
    }

    /// Waits until no in-flight write touches any of the keys (by [`InFlight::hashes`]) and a
    /// slot is free, then claims them.
    pub async fn claim(self: &Arc<Self>, hashes: Vec<u64>) -> Claim {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        // Nearly always no earlier write holds a key: claim without registering as a waiter.
        if !self.try_take(&hashes) {
            let _waiting = Waiter::register(&self.waiting);
            loop {
                let notified = self.done.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                // Checked again after `enable`: a write that finished in between has seen
                // `waiting` and notified, or finishes after this and notifies.
                if self.try_take(&hashes) {
                    break;
                }
                notified.await;
            }
        }
        Claim {
            owner: self.clone(),
            hashes,
            _slot: slot,
        }
    }

    /// Claims the keys if no in-flight write touches any of them.
    fn try_take(&self, hashes: &[u64]) -> bool {
        let mut map = self.keys.lock().unwrap();
        if hashes.iter().any(|h| map.contains_key(h)) {
            return false;
        }
        for h in hashes {
            *map.entry(*h).or_insert(0) += 1;
        }
        true
    }

    /// Waits until every in-flight write has finished.
    pub async fn drain(&self) {
        let all = self
            .slots
            .acquire_many(WRITES_IN_FLIGHT_MAX as u32)
            .await
            .expect("the semaphore is never closed");
        drop(all);
    }
}

/// Counts a write in `InFlight::waiting` while it waits (also if its future is dropped).
struct Waiter<'a>(&'a AtomicUsize);

impl<'a> Waiter<'a> {
    fn register(waiting: &'a AtomicUsize) -> Waiter<'a> {
        waiting.fetch_add(1, Ordering::SeqCst);
        Waiter(waiting)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut map = self.owner.keys.lock().unwrap();
        for h in &self.hashes {
            if let Some(n) = map.get_mut(h) {
                *n -= 1;
                if *n == 0 {
                    map.remove(h);
                }
            }
        }
        drop(map);
        if self.owner.waiting.load(Ordering::SeqCst) > 0 {
            self.owner.done.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_write_waits_for_the_earlier_write_of_its_key_and_only_for_that() {
        let f = Arc::new(InFlight::default());
        let first = f.claim(vec![1, 2]).await;
        // Another key is claimed at once.
        let other = tokio::time::timeout(Duration::from_secs(5), f.claim(vec![3]))
            .await
            .expect("a write to other keys does not wait");
        // A write sharing key 2 waits until the first write is done.
        let f2 = f.clone();
        let mut second = tokio::spawn(async move { f2.claim(vec![2]).await });
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut second)
                .await
                .is_err(),
            "the second write of key 2 went ahead of the first"
        );
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the first write's end wakes the waiting one")
            .unwrap();
        drop((second, other));
        // Nothing is in flight any more.
        tokio::time::timeout(Duration::from_secs(5), f.drain())
            .await
            .expect("drained");
        assert_eq!(f.waiting.load(Ordering::SeqCst), 0);
    }
}
