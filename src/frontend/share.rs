//! Fair share: the limits each client connection lives within, so that one client flooding a
//! node — pipelining requests it never waits for, subscribing and never reading, reading
//! slowly — slows only itself (`docs/security.md` §4.4).
//!
//! A connection's [`Share`] holds two budgets:
//! - **requests in flight**: a request takes a [`RequestSlot`] before it is read, and gives it
//!   back when its answer is queued. A connection at [`REQUESTS_IN_FLIGHT_MAX`] is not read until
//!   one of its requests is answered (its socket fills, TCP holds the sender back), so a client
//!   can never make the node hold more work for it than that — however much of it waits on
//!   owners in the cluster.
//! - **bytes queued**: an answer or push takes its size from the budget when it is queued for the
//!   connection's writer ([`Queued`]), and gives it back when the writer takes it. A connection
//!   at [`QUEUED_BYTES_MAX`] waits for its writer — and its writer for its socket — before
//!   anything more of it is read or queued: a client that does not read what it is sent holds
//!   that much of the node's memory, not more.
//!
//! The budgets are per connection and the waits are FIFO (tokio semaphores), so a flooder waits
//! behind its own requests, never in front of anyone else's. Each time a connection is held
//! back it is counted (`distro_client_throttled_total{limit}`); the bytes queued and requests in
//! flight of all connections are gauges (`distro_client_queued_bytes`,
//! `distro_client_requests_in_flight`).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::{Metrics, QueueLevels, Throttle};

/// Requests one connection may have read and not yet answered. Enough for a pipelining client
/// to keep a clustered node busy (a forwarded write waits one peer round trip: 256 in flight
/// at ~0.2 ms each is over a million writes a second per connection); small enough that a
/// flooding connection holds at most 1/16 of the node's forward budget
/// (`cluster::FORWARDS_IN_FLIGHT_MAX`) per owner it writes to.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 256;

/// Bytes of answers and pushes one connection may have queued for its writer. Four times a
/// gathered socket write (256 KiB), so the writer always finds a full batch when the client
/// reads; times `max_connections` (10,000 by default) it bounds what clients that stop reading
/// can hold of the node's memory (≤ 10 GiB at the default, ≤ 1 MiB per connection — add the
/// writer's own batch and the socket buffers). An answer larger than this (a query of a service
/// of many thousand instances) waits until the queue is empty and then goes alone.
pub const QUEUED_BYTES_MAX: usize = 1 << 20;

/// The budgets of one client connection.
pub struct Share {
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// A request's place among its connection's requests in flight; given back when dropped (the
/// front end drops it once the request's answer is queued).
pub struct RequestSlot {
    _permit: OwnedSemaphorePermit,
}

/// An answer or push queued for a connection's writer, holding its bytes of the connection's
/// budget until it is dropped (the writer drops it when it has copied it into its buffer).
pub struct Queued<T> {
    item: Option<T>,
    _permit: OwnedSemaphorePermit,
}

impl Share {
    /// A connection's budgets, counted in the node's gauges while they live (summed at a
    /// scrape: `metrics::ClientQueues`).
    pub fn new(metrics: Arc<Metrics>) -> Arc<Share> {
        let share = Arc::new(Share {
            requests: Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX)),
            bytes: Arc::new(Semaphore::new(QUEUED_BYTES_MAX)),
            metrics,
        });
        let levels: Arc<dyn QueueLevels> = share.clone();
        share.metrics.client_queues.add(Arc::downgrade(&levels));
        share
    }

    /// A slot for the next request if one is free now.
    pub fn try_request_slot(&self) -> Option<RequestSlot> {
        let permit = self.requests.clone().try_acquire_owned().ok()?;
        Some(RequestSlot { _permit: permit })
    }

    /// A slot for the next request; waits (counted as throttled) while the connection has
    /// [`REQUESTS_IN_FLIGHT_MAX`] requests in flight.
    pub async fn request_slot(&self) -> RequestSlot {
        if let Some(slot) = self.try_request_slot() {
            return slot;
        }
        self.metrics.throttled(Throttle::RequestsInFlight);
        let permit = self
            .requests
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        RequestSlot { _permit: permit }
    }

    /// Takes `bytes` of the queue's budget for `item` (all of it for an item larger than the
    /// budget); waits (counted as throttled) until the connection's writer has taken enough of
    /// what is queued before it.
    pub async fn queue<T>(&self, item: T, bytes: usize) -> Queued<T> {
        let want = bytes.min(QUEUED_BYTES_MAX) as u32;
        let permit = match self.bytes.clone().try_acquire_many_owned(want) {
            Ok(p) => p,
            Err(_) => {
                self.metrics.throttled(Throttle::QueuedBytes);
                self.bytes
                    .clone()
                    .acquire_many_owned(want)
                    .await
                    .expect("the semaphore is never closed")
            }
        };
        Queued {
            item: Some(item),
            _permit: permit,
        }
    }

    /// Bytes queued on this connection now (tests).
    pub fn queued_bytes(&self) -> usize {
        QUEUED_BYTES_MAX - self.bytes.available_permits()
    }
}

impl<T> Queued<T> {
    /// The item; its bytes go back to the budget.
    pub fn into_inner(mut self) -> T {
        self.item.take().expect("taken only here, once")
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Queued<T> {
    fn as_ref(&self) -> &[u8] {
        self.item
            .as_ref()
            .expect("present until into_inner")
            .as_ref()
    }
}

impl QueueLevels for Share {
    fn queued_bytes(&self) -> u64 {
        self.queued_bytes() as u64
    }

    fn requests_in_flight(&self) -> u64 {
        (REQUESTS_IN_FLIGHT_MAX - self.requests.available_permits()) as u64
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_full_queue_waits_for_its_writer_and_counts_the_wait() {
        let metrics = Arc::new(Metrics::new());
        let share = Share::new(metrics.clone());
        let a = share.queue(vec![0u8; 10], QUEUED_BYTES_MAX - 10).await;
        let b = share.queue(vec![0u8; 10], 10).await;
        assert_eq!(share.queued_bytes(), QUEUED_BYTES_MAX);
        assert_eq!(metrics.client_queues.totals().0, QUEUED_BYTES_MAX as u64);
        assert_eq!(metrics.throttled_count(Throttle::QueuedBytes), 0);
        // Full: the next item waits until the writer takes one.
        let third = share.queue(vec![1u8], 1);
        tokio::pin!(third);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut third)
                .await
                .is_err(),
            "queued beyond the budget"
        );
        assert_eq!(metrics.throttled_count(Throttle::QueuedBytes), 1);
        drop(b);
        let c = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("the writer took an item: room again");
        assert_eq!(c.into_inner(), vec![1u8]);
        drop(a);
        assert_eq!(share.queued_bytes(), 0);
        assert_eq!(metrics.client_queues.totals().0, 0);
    }

    #[tokio::test]
    async fn an_item_larger_than_the_budget_goes_alone() {
        let share = Share::new(Arc::new(Metrics::new()));
        let big = share.queue((), 3 * QUEUED_BYTES_MAX).await;
        assert_eq!(share.queued_bytes(), QUEUED_BYTES_MAX);
        drop(big);
        assert_eq!(share.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn requests_beyond_the_maximum_wait_for_a_slot() {
        let metrics = Arc::new(Metrics::new());
        let share = Share::new(metrics.clone());
        let mut slots = Vec::new();
        for _ in 0..REQUESTS_IN_FLIGHT_MAX {
            slots.push(share.request_slot().await);
        }
        assert_eq!(
            metrics.client_queues.totals().1,
            REQUESTS_IN_FLIGHT_MAX as u64
        );
        let next = share.request_slot();
        tokio::pin!(next);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut next)
                .await
                .is_err()
        );
        assert_eq!(metrics.throttled_count(Throttle::RequestsInFlight), 1);
        slots.pop();
        let _slot = tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("an answered request frees a slot");
        drop(slots);
        assert_eq!(metrics.client_queues.totals().1, 1);
    }
}
