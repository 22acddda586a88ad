//! The fair-share gauges (`distro_client_queued_bytes`, `distro_client_requests_in_flight`),
//! summed over the live client connections at a scrape instead of kept up to date per request:
//! every request would otherwise add to and take from two counters that all connections share —
//! a cache line the cores pass back and forth a million times a second.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// What one connection's budgets hold now (a front end's per-connection share implements it).
pub trait QueueLevels: Send + Sync {
    /// Bytes of answers and pushes queued for the connection's writer.
    fn queued_bytes(&self) -> u64;
    /// Requests read from the connection and not yet answered.
    fn requests_in_flight(&self) -> u64;
}

/// Connections registered between sweeps of the ones that have closed: the list holds at most
/// the live connections plus this many closed ones.
const SWEEP_EVERY: usize = 1024;

/// The live connections' levels.
#[derive(Default)]
pub struct ClientQueues {
    list: Mutex<Vec<Weak<dyn QueueLevels>>>,
    added: AtomicUsize,
}

impl ClientQueues {
    /// Counts `levels` in the gauges while it lives (once per connection).
    pub fn add(&self, levels: Weak<dyn QueueLevels>) {
        let mut list = self.list.lock().unwrap();
        if self.added.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            list.retain(|w| w.strong_count() > 0);
        }
        list.push(levels);
    }

    /// Bytes queued and requests in flight, summed over the live connections.
    pub fn totals(&self) -> (u64, u64) {
        let mut list = self.list.lock().unwrap();
        let (mut bytes, mut requests) = (0, 0);
        list.retain(|w| match w.upgrade() {
            Some(l) => {
                bytes += l.queued_bytes();
                requests += l.requests_in_flight();
                true
            }
            None => false,
        });
        (bytes, requests)
    }
}

/// Encodes the two gauges from [`ClientQueues::totals`] at a scrape.
#[derive(Debug)]
pub(super) struct QueuesCollector(pub(super) Arc<ClientQueues>);

impl std::fmt::Debug for ClientQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientQueues")
    }
}

impl Collector for QueuesCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (bytes, requests) = self.0.totals();
        let m = enc.encode_descriptor(
            "distro_client_queued",
            "Answers and pushes queued for client connections, not yet taken by their writers \
             (each connection's share is capped)",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        ConstGauge::new(bytes as i64).encode(m)?;
        let m = enc.encode_descriptor(
            "distro_client_requests_in_flight",
            "Requests read from client connections and not yet answered",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(requests as i64).encode(m)
    }
}
