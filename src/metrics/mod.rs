//! The node's metrics: one registry per node, counted where the work happens (the request API,
//! the front ends, the cluster, the lease duty) and exposed only by the admin port
//! (`frontend::admin`) in the Prometheus text format.
//!
//! Counting on the hot paths is one relaxed atomic add: every counter a request or a sync
//! batch touches is created once (on first use) and kept as a handle, so that no lock and no
//! map lookup happen per request. The latency histograms are atomic buckets of our own
//! ([`LatencyHistogram`]) because the registry crate's histogram takes a mutex per
//! observation. What is a state rather than an event (instances held, members up, readiness)
//! is read from the node when the metrics are scraped (the node's collector, `node::collector`).
//!
//! Every name starts with `distro_` and carries its unit (`_seconds`, `_bytes`) and, for
//! counters, `_total`; README.md, "Metrics", lists them all.
//!
//! - [`histogram`]: the latency histograms ([`LatencyHistogram`]).
//! - [`peer`]: [`PeerMetrics`], the counters of one peer, found by node id without a lock.

mod histogram;
mod peer;
mod queues;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use crate::model::{MEMBERS_MAX, NodeId};
use crate::wire::{Opcode, SyncRecord};

pub use histogram::LatencyHistogram;
pub use peer::PeerMetrics;
use peer::{PeerFamilies, PeerTable};
pub use queues::{ClientQueues, QueueLevels};

/// The content type of what [`Metrics::encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// A request of the request API, as the metrics name it (`op` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Register,
    Deregister,
    Beat,
    Query,
    Instance,
    ListServices,
    ListNamespaces,
    Subscribe,
    Unsubscribe,
    Owner,
}

impl Op {
    const ALL: [Op; 10] = [
        Op::Register,
        Op::Deregister,
        Op::Beat,
        Op::Query,
        Op::Instance,
        Op::ListServices,
        Op::ListNamespaces,
        Op::Subscribe,
        Op::Unsubscribe,
        Op::Owner,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Register => "register",
            Op::Deregister => "deregister",
            Op::Beat => "beat",
            Op::Query => "query",
            Op::Instance => "instance",
            Op::ListServices => "list_services",
            Op::ListNamespaces => "list_namespaces",
            Op::Subscribe => "subscribe",
            Op::Unsubscribe => "unsubscribe",
            Op::Owner => "owner",
        }
    }
}

/// The `result` label of a request: `ok` or the rejection's kind.
const RESULTS: [&str; 12] = [
    "ok",
    "not_ready",
    "shutting_down",
    "overloaded",
    "timeout",
    "invalid",
    "invalid_argument",
    "limit_exceeded",
    "not_found",
    "refused",
    "unauthenticated",
    "permission_denied",
];

fn result_index(rejected: Option<&str>) -> usize {
    let Some(kind) = rejected else { return 0 };
    RESULTS
        .iter()
        .position(|&k| k == kind)
        .expect("every rejection kind has a result label")
}

type Labels = Vec<(&'static str, String)>;

/// Every metric of one node.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<Labels, Counter>,
    request_cells: Box<[[OnceLock<Counter>; RESULTS.len()]; Op::ALL.len()]>,
    request_seconds_family: Family<Labels, LatencyHistogram>,
    request_seconds: [OnceLock<LatencyHistogram>; Op::ALL.len()],
    /// Open client connections (every front end's).
    pub client_connections: Gauge,
    /// Open connection-bound sessions of the request API.
    pub client_sessions: Gauge,
    /// Snapshots pushed to subscribers.
    pub pushes_sent: Counter,
    /// Connections dropped because they did not read what they were sent in time.
    pub subscribers_dropped_lag: Counter,
    /// Each client connection's budgets (fair share, `docs/security.md` §4.4), summed into the
    /// gauges of bytes queued and requests in flight at a scrape.
    pub client_queues: Arc<ClientQueues>,
    /// Times a client connection was held back at one of its fair-share limits, by limit.
    client_throttled: [Counter; Throttle::ALL.len()],
    expiries_unhealthy: Counter,
    expiries_removed: Counter,
    /// Verify rounds this node ran (one digest to every live peer each).
    pub digest_rounds: Counter,
    /// How long the last snapshot load took, ms (0: none yet).
    snapshot_load_ms: Gauge,
    peers: PeerTable,
    peer_families: PeerFamilies,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        r.register(
            "distro_requests",
            "Requests of the request API by operation and result (ok or the rejection's kind)",
            requests.clone(),
        );
        let request_family = Family::<Labels, LatencyHistogram>::default();
        r.register_with_unit(
            "distro_request_duration",
            "Time from a request's arrival at the request API to its answer, by operation",
            Unit::Seconds,
            request_family.clone(),
        );
        let client_connections = Gauge::default();
        r.register(
            "distro_client_connections",
            "Open client connections",
            client_connections.clone(),
        );
        let client_sessions = Gauge::default();
        r.register(
            "distro_client_sessions",
            "Open connection-bound client sessions (their instances lapse when they close)",
            client_sessions.clone(),
        );
        let pushes_sent = Counter::default();
        r.register(
            "distro_pushes_sent",
            "Service snapshots pushed to subscribers",
            pushes_sent.clone(),
        );
        let subscribers_dropped_lag = Counter::default();
        r.register(
            "distro_subscribers_dropped",
            "Client connections dropped because they did not read their answers and pushes \
             within the write timeout",
            subscribers_dropped_lag.clone(),
        );
        let client_queues = Arc::new(ClientQueues::default());
        r.register_collector(Box::new(queues::QueuesCollector(client_queues.clone())));
        let throttled = Family::<Labels, Counter>::default();
        r.register(
            "distro_client_throttled",
            "Times a client connection was held back (its socket not read, or its pushes not \
             queued) at one of its fair-share limits: limit=requests_in_flight or \
             limit=queued_bytes",
            throttled.clone(),
        );
        let client_throttled = Throttle::ALL
            .map(|t| throttled.get_or_create_owned(&vec![("limit", t.name().to_string())]));
        let expiries = Family::<Labels, Counter>::default();
        r.register(
            "distro_expiries",
            "Lease expiries of instances this node owns: kind=unhealthy (no beat for \
             unhealthy-after) or kind=removed (no beat for expire-after)",
            expiries.clone(),
        );
        let expiries_unhealthy = expiries.get_or_create_owned(&vec![("kind", "unhealthy".into())]);
        let expiries_removed = expiries.get_or_create_owned(&vec![("kind", "removed".into())]);
        let digest_rounds = Counter::default();
        r.register(
            "distro_digest_rounds",
            "Verify rounds this node ran (its digest sent to every live peer)",
            digest_rounds.clone(),
        );
        let snapshot_load_ms = Gauge::default();

        macro_rules! peer_families {
            ($($field:ident: $name:literal, $unit:expr, $help:literal;)*) => {{
                let f = PeerFamilies {
                    $($field: Family::default(),)*
                    write_applied: Family::default(),
                };
                $(
                    match $unit {
                        Some(unit) => r.register_with_unit($name, $help, unit, f.$field.clone()),
                        None => r.register($name, $help, f.$field.clone()),
                    }
                )*
                f
            }};
        }
        let peer_families = peer_families! {
            sync_sent_batches: "distro_sync_sent_batches", None,
                "SyncBatch frames sent to the peer";
            sync_sent_records: "distro_sync_sent_records", None,
                "Records sent to the peer in SyncBatch frames";
            sync_sent_bytes: "distro_sync_sent", Some(Unit::Bytes),
                "Bytes of SyncBatch frames sent to the peer";
            sync_dropped_batches: "distro_sync_dropped_batches", None,
                "SyncBatch frames not sent to the peer because it was down or its link full \
                 (anti-entropy repairs what they carried)";
            sync_applied_batches: "distro_sync_applied_batches", None,
                "SyncBatch frames received from the peer and applied";
            sync_applied_bytes: "distro_sync_applied", Some(Unit::Bytes),
                "Bytes of SyncBatch frames received from the peer and applied";
            sync_received_records: "distro_sync_received_records", None,
                "Records received from the peer in SyncBatch frames";
            sync_applied_records: "distro_sync_applied_records", None,
                "Records from the peer's SyncBatch frames that were newer than this node's copy";
            forwards_sent: "distro_forwards_sent", None,
                "Writes forwarded to the peer, their owner";
            forward_errors: "distro_forward_errors", None,
                "Forwards to the peer that failed (unreachable, timed out or refused)";
            forwards_received: "distro_forwards_received", None,
                "Forwarded writes received from the peer";
            digests_received: "distro_digests_received", None,
                "Digests received from the peer";
            digest_mismatched_buckets: "distro_digest_mismatched_buckets", None,
                "Digest buckets that differed between the peer's digest and this node's copy \
                 of the peer's records";
            repaired_records: "distro_repaired_records", None,
                "Records a pull from the peer brought that were newer than this node's copy";
            pull_served_bytes: "distro_pull_served", Some(Unit::Bytes),
                "Bytes of records this node sent answering the peer's pulls";
        };
        r.register_with_unit(
            "distro_write_applied_delay",
            "Time from a write at its owner (peer) to its application on this node, from the \
             record version's clock (includes the clock skew between the two nodes)",
            Unit::Seconds,
            peer_families.write_applied.clone(),
        );
        Metrics {
            registry: Mutex::new(r),
            requests,
            request_cells: Box::new(std::array::from_fn(|_| {
                std::array::from_fn(|_| OnceLock::new())
            })),
            request_seconds_family: request_family,
            request_seconds: std::array::from_fn(|_| OnceLock::new()),
            client_connections,
            client_sessions,
            pushes_sent,
            subscribers_dropped_lag,
            client_queues,
            client_throttled,
            expiries_unhealthy,
            expiries_removed,
            digest_rounds,
            snapshot_load_ms,
            peers: PeerTable::new(),
            peer_families,
        }
    }

    /// Counts a request of the API and its latency since `started`; `rejected` is the kind of
    /// its rejection (`Rejection::kind`), `None` when it was carried out.
    pub fn request(&self, op: Op, started: tokio::time::Instant, rejected: Option<&'static str>) {
        let o = op as usize;
        let res = result_index(rejected);
        self.request_cells[o][res]
            .get_or_init(|| {
                self.requests.get_or_create_owned(&vec![
                    ("op", op.name().to_string()),
                    ("result", RESULTS[res].to_string()),
                ])
            })
            .inc();
        self.request_seconds[o]
            .get_or_init(|| {
                self.request_seconds_family
                    .get_or_create_owned(&vec![("op", op.name().to_string())])
            })
            .observe(started.elapsed());
    }

    /// Requests of `op` counted so far with `result` (tests).
    pub fn requests(&self, op: Op, result: &str) -> u64 {
        RESULTS
            .iter()
            .position(|&r| r == result)
            .and_then(|i| self.request_cells[op as usize][i].get())
            .map_or(0, |c| c.get())
    }

    /// The counters of one peer (by node id).
    pub fn peer(&self, id: NodeId) -> &PeerMetrics {
        self.peers.get(id, |label| {
            let f = &self.peer_families;
            let l = vec![("peer", label)];
            PeerMetrics {
                sync_sent_batches: f.sync_sent_batches.get_or_create_owned(&l),
                sync_sent_records: f.sync_sent_records.get_or_create_owned(&l),
                sync_sent_bytes: f.sync_sent_bytes.get_or_create_owned(&l),
                sync_dropped_batches: f.sync_dropped_batches.get_or_create_owned(&l),
                sync_applied_batches: f.sync_applied_batches.get_or_create_owned(&l),
                sync_applied_bytes: f.sync_applied_bytes.get_or_create_owned(&l),
                sync_received_records: f.sync_received_records.get_or_create_owned(&l),
                sync_applied_records: f.sync_applied_records.get_or_create_owned(&l),
                forwards_sent: f.forwards_sent.get_or_create_owned(&l),
                forward_errors: f.forward_errors.get_or_create_owned(&l),
                forwards_received: f.forwards_received.get_or_create_owned(&l),
                digests_received: f.digests_received.get_or_create_owned(&l),
                digest_mismatched_buckets: f.digest_mismatched_buckets.get_or_create_owned(&l),
                repaired_records: f.repaired_records.get_or_create_owned(&l),
                pull_served_bytes: f.pull_served_bytes.get_or_create_owned(&l),
                write_applied: f.write_applied.get_or_create_owned(&l),
            }
        })
    }

    /// The lease duty lapsed (`unhealthy`) and removed (`removed`) instances.
    pub fn expired(&self, unhealthy: usize, removed: usize) {
        self.expiries_unhealthy.inc_by(unhealthy as u64);
        self.expiries_removed.inc_by(removed as u64);
    }

    /// The node finished loading the cluster's data after `elapsed`.
    pub fn snapshot_loaded(&self, elapsed: std::time::Duration) {
        self.snapshot_load_ms.set(elapsed.as_millis() as i64);
    }

    /// A client connection was held back at its fair-share limit `limit`.
    pub fn throttled(&self, limit: Throttle) {
        self.client_throttled[limit as usize].inc();
    }

    /// Times client connections were held back at `limit` so far.
    pub fn throttled_count(&self, limit: Throttle) -> u64 {
        self.client_throttled[limit as usize].get()
    }

    /// A client connection opened; it counts until the guard is dropped.
    pub fn client_connection(&self) -> GaugeGuard {
        GaugeGuard::new(self.client_connections.clone())
    }

    /// The gauge of the last load's duration, for the node's collector.
    pub fn snapshot_load_ms(&self) -> Gauge {
        self.snapshot_load_ms.clone()
    }

    /// Registers what is read from the node at each scrape (`node::collector`).
    pub fn register_collector(&self, c: impl Collector + 'static) {
        self.registry
            .lock()
            .unwrap()
            .register_collector(Box::new(c));
    }

    /// Every metric in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap();
        prometheus_text::encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}

/// The per-connection limits of fair share (`docs/security.md` §4.4) a client connection can be
/// held back at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// Its requests read and not yet answered reached the connection's maximum: its socket is
    /// not read until one is answered.
    RequestsInFlight = 0,
    /// Its answers and pushes queued reached the connection's maximum of bytes: it waits (and
    /// its socket is not read) until its writer has taken some.
    QueuedBytes = 1,
}

impl Throttle {
    pub const ALL: [Throttle; 2] = [Throttle::RequestsInFlight, Throttle::QueuedBytes];

    pub fn name(self) -> &'static str {
        match self {
            Throttle::RequestsInFlight => "requests_in_flight",
            Throttle::QueuedBytes => "queued_bytes",
        }
    }
}

/// Holds a gauge up by one while it lives.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn new(g: Gauge) -> GaugeGuard {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_the_text() {
        let m = Metrics::new();
        let t = tokio::time::Instant::now();
        m.request(Op::Query, t, None);
        m.request(Op::Register, t, Some("not_ready"));
        let h = m.request_seconds[Op::Register as usize].get().unwrap();
        h.observe_us(3_000);
        h.observe_us(20_000_000);
        let text = m.encode();
        assert!(
            text.contains(r#"distro_requests_total{op="query",result="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"distro_requests_total{op="register",result="not_ready"} 1"#),
            "{text}"
        );
        assert_eq!(m.requests(Op::Register, "not_ready"), 1);
        // 3 observations: ~0, 3 ms, 20 s. Buckets count everything at or below their bound.
        let line = |le: &str| {
            format!(r#"distro_request_duration_seconds_bucket{{op="register",le="{le}"}}"#)
        };
        assert!(text.contains(&format!("{} 2", line("0.005"))), "{text}");
        assert!(text.contains(&format!("{} 2", line("10"))), "{text}");
        assert!(text.contains(&format!("{} 3", line("+Inf"))), "{text}");
        assert!(text.contains(r#"distro_request_duration_seconds_count{op="register"} 3"#));
    }

    #[test]
    fn peers_get_their_own_counters_and_ids_beyond_the_table_share_one() {
        let m = Metrics::new();
        m.peer(2).forwards_sent.inc();
        m.peer(2).forwards_sent.inc();
        m.peer(3).forwards_sent.inc();
        assert_eq!(m.peer(2).forwards_sent.get(), 2);
        assert_eq!(m.peer(3).forwards_sent.get(), 1);
        for id in 100..100 + peer::PEER_SLOTS as u16 + 10 {
            m.peer(id).forwards_sent.inc();
        }
        let text = m.encode();
        assert!(
            text.contains(r#"distro_forwards_sent_total{peer="2"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"distro_forwards_sent_total{peer="other"}"#),
            "{text}"
        );
    }

    #[test]
    fn write_delay_counts_only_the_senders_own_writes() {
        let m = Metrics::new();
        let key = crate::model::InstanceKey {
            service: crate::model::ServiceName::new("public", "DEFAULT_GROUP", "s"),
            cluster: "DEFAULT".into(),
            ip: "10.0.0.1".into(),
            port: 1,
        };
        let rec = |origin, ms: u64| SyncRecord {
            key: key.clone(),
            version: crate::model::Version {
                hlc: ms << 16,
                origin,
            },
            alive: true,
            healthy: true,
            enabled: true,
            lapsed: false,
            weight: 1.0,
            lease: crate::model::Lease::default(),
            session: 0,
            metadata: Default::default(),
        };
        m.peer(2)
            .sync_applied(&[rec(2, 1_000), rec(3, 10)], 2, 1_007, 2);
        let h = &m.peer(2).write_applied;
        assert_eq!(h.count(), 1);
        let text = m.encode();
        assert!(
            text.contains(r#"distro_write_applied_delay_seconds_bucket{le="0.01",peer="2"} 1"#)
                || text
                    .contains(r#"distro_write_applied_delay_seconds_bucket{peer="2",le="0.01"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"distro_sync_received_records_total{peer="2"} 2"#));
    }
}
