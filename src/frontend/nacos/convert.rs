//! Nacos's shapes into the model's types and back: the one place that knows both. Instance
//! identities and attributes become [`InstanceKey`] and [`Instance`] (the lease from the
//! `preserved.*` metadata), a service's snapshot becomes a [`ServiceInfo`] with Nacos's filters
//! (clusters, enabled, healthy only) and fields.

use std::collections::BTreeMap;

use super::model::answers::{Host, ServiceInfo};
use super::model::names::{self, lease_keys};
use super::model::params::InstanceRef;
use crate::model::{Instance, InstanceKey, InstanceView, Lease, ServiceName, Text};

/// `cacheMillis` of an HTTP answer: clients without push poll a subscribed service at this
/// period (Nacos's value for clients that are not pushed to).
pub const HTTP_CACHE_MILLIS: u64 = 3_000;
/// `cacheMillis` of a gRPC answer or push (Nacos's push-mode value; the Rust client re-queries a
/// subscribed service at six times it).
pub const GRPC_CACHE_MILLIS: u64 = 10_000;

/// Why the lease an instance's metadata asks for cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("metadata '{key}' is not a whole number of milliseconds: '{value}'")]
    NotANumber { key: &'static str, value: String },
    /// Nacos's own words for it.
    #[error(
        "Instance 'heart beat interval' must less than 'heart beat timeout' and 'ip delete timeout'."
    )]
    OutOfOrder,
}

pub fn service_name(namespace: &str, group: &str, service: &str) -> ServiceName {
    ServiceName::new(namespace, group, service)
}

/// The key of an instance a request names.
pub fn key(r: &InstanceRef<'_>) -> InstanceKey {
    InstanceKey {
        service: service_name(r.namespace, r.group, r.service),
        cluster: r.cluster.into(),
        ip: r.ip.into(),
        port: r.port,
    }
}

/// The lease the `preserved.*` metadata keys ask for; Nacos's defaults (ours too) for the keys
/// not given. The model's own checks (the node's floor, the ceiling) come later, with the write.
pub fn lease(metadata: &BTreeMap<String, String>) -> Result<Lease, LeaseError> {
    let read = |key: &'static str, default: u32| -> Result<u32, LeaseError> {
        match metadata.get(key).map(|v| v.trim()) {
            None | Some("") => Ok(default),
            Some(v) => v
                .parse::<u64>()
                // Past u32 it is past the longest lease anyway, which validation refuses.
                .map(|ms| ms.min(u32::MAX as u64) as u32)
                .map_err(|_| LeaseError::NotANumber {
                    key,
                    value: v.to_string(),
                }),
        }
    };
    let d = Lease::default();
    let lease = Lease {
        beat_ms: read(lease_keys::HEART_BEAT_INTERVAL, d.beat_ms)?,
        unhealthy_ms: read(lease_keys::HEART_BEAT_TIMEOUT, d.unhealthy_ms)?,
        expire_ms: read(lease_keys::IP_DELETE_TIMEOUT, d.expire_ms)?,
    };
    if lease.beat_ms > lease.unhealthy_ms || lease.unhealthy_ms > lease.expire_ms {
        return Err(LeaseError::OutOfOrder);
    }
    Ok(lease)
}

/// An instance as a Nacos request describes it: the lease comes from its metadata, which keeps
/// the `preserved.*` keys too (as in Nacos).
pub fn instance(
    key: InstanceKey,
    weight: f64,
    healthy: bool,
    enabled: bool,
    metadata: BTreeMap<String, String>,
) -> Result<Instance, LeaseError> {
    let lease = lease(&metadata)?;
    Ok(Instance {
        key,
        weight,
        healthy,
        enabled,
        lease,
        metadata: metadata
            .into_iter()
            .map(|(k, v)| (Text::from(k), Text::from(v)))
            .collect(),
    })
}

/// How a [`ServiceInfo`] is shaped for one answer.
pub struct InfoShape<'a> {
    /// v1/v2 HTTP answers name the service `group@@service`, gRPC ones by its plain name.
    pub grouped_name: bool,
    /// The request's clusters as given, echoed in `clusters`.
    pub clusters_text: &'a str,
    /// The clusters to keep; empty: all.
    pub clusters: &'a [&'a str],
    pub healthy_only: bool,
    pub cache_millis: u64,
    pub last_ref_time: u64,
}

/// A service's snapshot as Nacos answers it. Disabled instances are left out (docs/nacos.md §2),
/// and so are those of other clusters and, if asked, the unhealthy ones.
pub fn service_info(name: &ServiceName, instances: &[InstanceView], s: &InfoShape) -> ServiceInfo {
    let grouped = names::grouped(&name.group, &name.service);
    let hosts = instances
        .iter()
        .filter(|i| i.enabled)
        .filter(|i| !s.healthy_only || i.healthy)
        .filter(|i| s.clusters.is_empty() || s.clusters.contains(&i.cluster.as_str()))
        .map(|i| host(name, &grouped, i))
        .collect();
    ServiceInfo {
        name: if s.grouped_name {
            grouped
        } else {
            name.service.to_string()
        },
        group_name: name.group.to_string(),
        clusters: s.clusters_text.to_string(),
        cache_millis: s.cache_millis,
        hosts,
        last_ref_time: s.last_ref_time,
        checksum: String::new(),
        all_ips: false,
        reach_protection_threshold: false,
        valid: true,
    }
}

/// One instance in a [`ServiceInfo`]. The lease fields are the ones its metadata sets (an
/// instance registered by another front end without them shows Nacos's defaults).
pub fn host(name: &ServiceName, grouped: &str, i: &InstanceView) -> Host {
    let metadata: BTreeMap<String, String> = i
        .metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let l = lease(&metadata).unwrap_or_default();
    Host {
        instance_id: names::instance_id(&i.ip, i.port, &i.cluster, &name.group, &name.service),
        ip: i.ip.to_string(),
        port: i.port,
        weight: i.weight,
        healthy: i.healthy,
        enabled: i.enabled,
        ephemeral: true,
        cluster_name: i.cluster.to_string(),
        service_name: grouped.to_string(),
        metadata,
        instance_heart_beat_interval: l.beat_ms as u64,
        instance_heart_beat_timeout: l.unhealthy_ms as u64,
        ip_delete_timeout: l.expire_ms as u64,
        instance_id_generator: "simple".into(),
    }
}

/// The metadata of an instance as a map (Nacos answers carry it as a JSON object).
pub fn metadata_map(i: &InstanceView) -> BTreeMap<String, String> {
    i.metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_lease_comes_from_the_preserved_metadata() {
        assert_eq!(lease(&md(&[])).unwrap(), Lease::default());
        let l = lease(&md(&[
            ("preserved.heart.beat.interval", "1000"),
            ("preserved.heart.beat.timeout", "3000"),
            ("preserved.ip.delete.timeout", "4000"),
        ]))
        .unwrap();
        assert_eq!((l.beat_ms, l.unhealthy_ms, l.expire_ms), (1000, 3000, 4000));
        // One key alone keeps the other defaults.
        let l = lease(&md(&[("preserved.heart.beat.interval", "2000")])).unwrap();
        assert_eq!((l.beat_ms, l.unhealthy_ms), (2000, 15_000));
    }

    #[test]
    fn a_bad_lease_is_refused_with_nacos_words() {
        assert_eq!(
            lease(&md(&[("preserved.heart.beat.interval", "20000")])),
            Err(LeaseError::OutOfOrder)
        );
        assert_eq!(
            LeaseError::OutOfOrder.to_string(),
            "Instance 'heart beat interval' must less than 'heart beat timeout' and 'ip delete timeout'."
        );
        assert!(matches!(
            lease(&md(&[("preserved.ip.delete.timeout", "soon")])),
            Err(LeaseError::NotANumber { .. })
        ));
        assert!(matches!(
            lease(&md(&[("preserved.ip.delete.timeout", "-5")])),
            Err(LeaseError::NotANumber { .. })
        ));
    }

    fn view(cluster: &str, port: u16, healthy: bool, enabled: bool) -> InstanceView {
        InstanceView {
            cluster: cluster.into(),
            ip: "10.0.0.1".into(),
            port,
            weight: 1.0,
            healthy,
            enabled,
            metadata: vec![("k".into(), "v".into())],
        }
    }

    #[test]
    fn service_info_filters_and_names_as_asked() {
        let name = service_name("public", "DEFAULT_GROUP", "orders");
        let all = [
            view("DEFAULT", 1, true, true),
            view("DEFAULT", 2, false, true),
            view("DEFAULT", 3, true, false),
            view("blue", 4, true, true),
        ];
        let shape = InfoShape {
            grouped_name: true,
            clusters_text: "",
            clusters: &[],
            healthy_only: false,
            cache_millis: HTTP_CACHE_MILLIS,
            last_ref_time: 7,
        };
        let info = service_info(&name, &all, &shape);
        assert_eq!(info.name, "DEFAULT_GROUP@@orders");
        // The disabled instance is never shown.
        let ports: Vec<u16> = info.hosts.iter().map(|h| h.port).collect();
        assert_eq!(ports, vec![1, 2, 4]);
        let h = &info.hosts[0];
        assert_eq!(h.instance_id, "10.0.0.1#1#DEFAULT#DEFAULT_GROUP@@orders");
        assert_eq!(h.service_name, "DEFAULT_GROUP@@orders");
        assert_eq!(h.instance_heart_beat_interval, 5000);

        let healthy_blue = InfoShape {
            grouped_name: false,
            clusters_text: "blue,DEFAULT",
            clusters: &["DEFAULT"],
            healthy_only: true,
            cache_millis: GRPC_CACHE_MILLIS,
            last_ref_time: 8,
        };
        let info = service_info(&name, &all, &healthy_blue);
        assert_eq!(info.name, "orders");
        assert_eq!(info.clusters, "blue,DEFAULT");
        let ports: Vec<u16> = info.hosts.iter().map(|h| h.port).collect();
        assert_eq!(ports, vec![1]);
    }
}
