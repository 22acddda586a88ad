//! Writes of one client connection that are in flight at once (a clustered node forwards most
//! writes to their owners: serving them one by one would cap a pipelining client at one round
//! trip per request). Writes to the same key still apply in the order the client sent them: a
//! write waits for the earlier in-flight writes that touch one of its keys.

use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::hash::HashMap;
use crate::store::key_hash;
use crate::wire::InstanceKey;

/// Writes one connection may have in flight. Beyond it the connection stops reading until one
/// completes, so a client cannot make a node hold unbounded work for it.
pub const WRITES_IN_FLIGHT_MAX: usize = 256;

pub struct InFlight {
    /// Key hash → number of in-flight writes touching it.
    keys: Mutex<HashMap<u64, u32>>,
    done: Notify,
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
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut map = self.keys.lock().unwrap();
                if !hashes.iter().any(|h| map.contains_key(h)) {
                    for h in &hashes {
                        *map.entry(*h).or_insert(0) += 1;
                    }
                    break;
                }
            }
            notified.await;
        }
        Claim {
            owner: self.clone(),
            hashes,
            _slot: slot,
        }
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
        self.owner.done.notify_waiters();
    }
}
