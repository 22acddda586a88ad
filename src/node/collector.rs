//! What the metrics read from the node when they are scraped: the states (instances and
//! services held, members, readiness, subscriptions, the cluster's counters) rather than the
//! events, which are counted where they happen ([`crate::metrics`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Unit;
use tokio_util::sync::CancellationToken;

use super::subscriptions::Subscriptions;
use crate::cluster::Cluster;
use crate::metrics::Metrics;
use crate::model::NodeId;
use crate::store::Store;

type Labels = Vec<(&'static str, String)>;

/// What the metrics read from the node at each scrape: instances and services held, members,
/// readiness, subscriptions, and the cluster's own counters ([`crate::cluster::stats`]). Holds
/// the cluster weakly: the cluster holds the metrics.
pub struct NodeCollector {
    store: Arc<Store>,
    cluster: Option<Weak<Cluster>>,
    subs: Arc<Subscriptions>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
    node_id: NodeId,
    snapshot_load_ms: Gauge,
}

impl NodeCollector {
    pub fn new(
        metrics: &Metrics,
        store: Arc<Store>,
        cluster: Option<Weak<Cluster>>,
        subs: Arc<Subscriptions>,
        ready: Arc<AtomicBool>,
        shutdown: CancellationToken,
        node_id: NodeId,
    ) -> NodeCollector {
        NodeCollector {
            store,
            cluster,
            subs,
            ready,
            shutdown,
            node_id,
            snapshot_load_ms: metrics.snapshot_load_ms(),
        }
    }
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCollector")
    }
}

fn gauge<V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: V,
) -> Result<(), std::fmt::Error> {
    let m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}

/// One gauge per label value.
fn gauge_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (Labels, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for NodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ready = self.ready.load(Ordering::Acquire) && !self.shutdown.is_cancelled();
        gauge(
            &mut enc,
            "distro_ready",
            "1 while the node serves clients (loaded and not shutting down), else 0",
            None,
            ready as i64,
        )?;
        let info = enc.encode_descriptor(
            "distro_node",
            "This node's id and version",
            None,
            MetricType::Info,
        )?;
        prometheus_client::metrics::info::Info::new(vec![
            ("node", self.node_id.to_string()),
            ("version", env!("CARGO_PKG_VERSION").to_string()),
        ])
        .encode(info)?;
        let ns = self.store.namespace_counts();
        gauge_family(
            &mut enc,
            "distro_instances",
            "Live instances this node holds, by namespace",
            ns.iter().map(|n| {
                (
                    vec![("namespace", n.namespace.to_string())],
                    n.instances as i64,
                )
            }),
        )?;
        gauge_family(
            &mut enc,
            "distro_healthy_instances",
            "Live instances reported healthy, by namespace",
            ns.iter().map(|n| {
                (
                    vec![("namespace", n.namespace.to_string())],
                    n.healthy as i64,
                )
            }),
        )?;
        gauge_family(
            &mut enc,
            "distro_services",
            "Services with live instances, by namespace",
            ns.iter().map(|n| {
                (
                    vec![("namespace", n.namespace.to_string())],
                    n.services as i64,
                )
            }),
        )?;
        gauge(
            &mut enc,
            "distro_subscriptions",
            "Subscriptions of connected clients, over all services",
            None,
            self.subs.count() as i64,
        )?;
        gauge(
            &mut enc,
            "distro_snapshot_load_duration",
            "How long this node's load of the cluster's data took when it started (0: none)",
            Some(&Unit::Seconds),
            self.snapshot_load_ms.get() as f64 / 1e3,
        )?;
        let Some(cluster) = self.cluster.as_ref().and_then(Weak::upgrade) else {
            return Ok(());
        };
        let status = cluster.status();
        let me = self.node_id;
        let peers = || status.members.iter().filter(move |m| m.id != me);
        gauge_family(
            &mut enc,
            "distro_member_up",
            "1 if the member answers this node's pings, else 0 (peer: its node id, 0 until \
             first reached)",
            peers().map(|m| {
                (
                    vec![("peer", m.id.to_string()), ("addr", m.addr.to_string())],
                    m.up as i64,
                )
            }),
        )?;
        gauge_family(
            &mut enc,
            "distro_owned_instances",
            "Live instances each member owns, as this node sees the cluster",
            status.members.iter().map(|m| {
                (
                    vec![("peer", m.id.to_string()), ("addr", m.addr.to_string())],
                    m.owned as i64,
                )
            }),
        )?;
        let s = cluster.stats.snapshot();
        let counters: [(&str, &str, Option<Unit>, u64); 10] = [
            (
                "distro_records_applied",
                "Records from peers (sync, pull, load, handoff) newer than this node's copy",
                None,
                s.records_applied,
            ),
            (
                "distro_view_changes",
                "Changes of the live member set (each moves ownership)",
                None,
                s.view_changes,
            ),
            (
                "distro_handoff_records",
                "Records handed to their new owner after an ownership move",
                None,
                s.records_handed_off,
            ),
            (
                "distro_digest_sent",
                "Bytes of digest frames sent, over all peers",
                Some(Unit::Bytes),
                s.digest_bytes_sent,
            ),
            (
                "distro_digests_matched",
                "Digests received whose buckets all matched this node's copy",
                None,
                s.digests_matched,
            ),
            (
                "distro_digest_view_mismatches",
                "Digests ignored because the sender saw a different live member set",
                None,
                s.digest_view_mismatches,
            ),
            (
                "distro_pulls",
                "Pulls of differing buckets from their owner",
                None,
                s.pulls,
            ),
            (
                "distro_pull_dropped_records",
                "Records removed after a pull because their owner no longer had them",
                None,
                s.records_dropped_by_pull,
            ),
            (
                "distro_pull_returned_records",
                "Records sent back to their owner after a pull because this node held them \
                 newer",
                None,
                s.records_pushed_to_owner,
            ),
            (
                "distro_snapshot_loaded_records",
                "Records received in the snapshot this node loaded at start",
                None,
                s.snapshot_records_loaded,
            ),
        ];
        for (name, help, unit, v) in counters {
            counter(&mut enc, name, help, unit.as_ref(), v)?;
        }
        Ok(())
    }
}
