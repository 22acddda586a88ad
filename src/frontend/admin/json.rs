//! The JSON shapes operators' tools read: `distroctl --json` prints them and the admin port
//! serves them (README.md, "distroctl" and "Admin HTTP port"). One definition for both, so that
//! a script written against one works against the other; keep them stable.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::Rejection;
use crate::model::{
    ClusterStatus, InstanceView, MemberStatus, NamespaceSummary, ServiceName, ServiceSnapshot,
    ServiceSummary,
};

/// One instance (`distroctl list --json` prints an array of these).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceJson {
    pub namespace: String,
    pub group: String,
    pub service: String,
    pub cluster: String,
    pub ip: String,
    pub port: u16,
    pub weight: f64,
    pub healthy: bool,
    pub enabled: bool,
    pub metadata: BTreeMap<String, String>,
}

impl InstanceJson {
    pub fn new(name: &ServiceName, i: &InstanceView) -> InstanceJson {
        InstanceJson {
            namespace: name.namespace.to_string(),
            group: name.group.to_string(),
            service: name.service.to_string(),
            cluster: i.cluster.to_string(),
            ip: i.ip.to_string(),
            port: i.port,
            weight: i.weight,
            healthy: i.healthy,
            enabled: i.enabled,
            metadata: i
                .metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Every instance of a snapshot, in its order.
    pub fn all(snap: &ServiceSnapshot) -> Vec<InstanceJson> {
        snap.instances
            .iter()
            .map(|i| InstanceJson::new(&snap.name, i))
            .collect()
    }
}

/// One pushed snapshot (`distroctl watch --json` prints one per line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotJson {
    pub namespace: String,
    pub group: String,
    pub service: String,
    pub revision: u64,
    pub instances: Vec<InstanceJson>,
}

impl SnapshotJson {
    pub fn new(snap: &ServiceSnapshot) -> SnapshotJson {
        SnapshotJson {
            namespace: snap.name.namespace.to_string(),
            group: snap.name.group.to_string(),
            service: snap.name.service.to_string(),
            revision: snap.revision,
            instances: InstanceJson::all(snap),
        }
    }
}

/// One service of a namespace (`distroctl services --json` prints an array of these).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceJson {
    pub namespace: String,
    pub group: String,
    pub service: String,
    /// Live instances.
    pub instances: u32,
    /// Of those, reported healthy.
    pub healthy: u32,
}

impl ServiceJson {
    pub fn new(namespace: &str, s: &ServiceSummary) -> ServiceJson {
        ServiceJson {
            namespace: namespace.to_string(),
            group: s.group.to_string(),
            service: s.service.to_string(),
            instances: s.instances,
            healthy: s.healthy,
        }
    }
}

/// One namespace with live instances (the admin port's `/namespaces`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamespaceJson {
    pub namespace: String,
    pub services: u32,
    pub instances: u64,
    pub healthy: u64,
}

impl From<&NamespaceSummary> for NamespaceJson {
    fn from(n: &NamespaceSummary) -> NamespaceJson {
        NamespaceJson {
            namespace: n.namespace.to_string(),
            services: n.services,
            instances: n.instances,
            healthy: n.healthy,
        }
    }
}

/// One member as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberJson {
    /// 0 for a member the node has not reached yet.
    pub id: u16,
    /// Its peer address.
    pub addr: String,
    /// `up`, `down` or `left` ([`MemberStatus::state_name`]).
    pub state: String,
    /// Live instances it owns.
    pub owned: u64,
}

impl From<&MemberStatus> for MemberJson {
    fn from(m: &MemberStatus) -> MemberJson {
        MemberJson {
            id: m.id,
            addr: m.addr.to_string(),
            state: m.state_name().to_string(),
            owned: m.owned,
        }
    }
}

/// A node's view of its cluster (`distroctl cluster --json`, the admin port's `/cluster`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterJson {
    pub node: u16,
    pub ready: bool,
    /// Live instances the node holds.
    pub instances: u64,
    pub members: Vec<MemberJson>,
}

impl From<&ClusterStatus> for ClusterJson {
    fn from(s: &ClusterStatus) -> ClusterJson {
        ClusterJson {
            node: s.node_id,
            ready: s.ready,
            instances: s.instances,
            members: s.members.iter().map(MemberJson::from).collect(),
        }
    }
}

/// The admin port's answer to a request it could not carry out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorJson {
    /// The condition: a [`Rejection::kind`], or `bad_request` / `not_found` for the request
    /// itself.
    pub error: String,
    pub message: String,
}

impl From<&Rejection> for ErrorJson {
    fn from(r: &Rejection) -> ErrorJson {
        ErrorJson {
            error: r.kind().to_string(),
            message: r.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_keep_their_field_names() {
        let name = ServiceName::new("public", "DEFAULT_GROUP", "orders");
        let i = InstanceView {
            cluster: "DEFAULT".into(),
            ip: "10.0.0.7".into(),
            port: 8080,
            weight: 2.0,
            healthy: true,
            enabled: false,
            metadata: vec![("zone".into(), "a".into())],
        };
        let v = serde_json::to_value(InstanceJson::new(&name, &i)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "namespace": "public", "group": "DEFAULT_GROUP", "service": "orders",
                "cluster": "DEFAULT", "ip": "10.0.0.7", "port": 8080, "weight": 2.0,
                "healthy": true, "enabled": false, "metadata": {"zone": "a"}
            })
        );
        let s = ClusterStatus {
            node_id: 2,
            ready: true,
            instances: 5,
            members: vec![MemberStatus {
                id: 3,
                addr: "127.0.0.1:8869".into(),
                up: false,
                left: false,
                owned: 0,
            }],
        };
        assert_eq!(
            serde_json::to_value(ClusterJson::from(&s)).unwrap(),
            serde_json::json!({
                "node": 2, "ready": true, "instances": 5,
                "members": [{"id": 3, "addr": "127.0.0.1:8869", "state": "down", "owned": 0}]
            })
        );
    }
}
