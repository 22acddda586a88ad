//! What an instance is and what identifies it (design.md §2: Nacos's data model, ephemeral
//! instances only). The binary encodings of these types are in `wire`, next to the rest of the
//! protocol.

use super::text::Text;

/// Node ids are small integers, unique within a cluster, fixed for a node's life.
pub type NodeId = u16;

/// namespace / group / service: the name of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    pub namespace: Text,
    pub group: Text,
    pub service: Text,
}

impl ServiceName {
    pub fn new(namespace: &str, group: &str, service: &str) -> ServiceName {
        ServiceName {
            namespace: namespace.into(),
            group: group.into(),
            service: service.into(),
        }
    }

    /// A copy that owns exactly its bytes (see [`Text::compact`]).
    pub fn compact(&self) -> ServiceName {
        ServiceName {
            namespace: self.namespace.compact(),
            group: self.group.compact(),
            service: self.service.compact(),
        }
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.group, self.service)
    }
}

/// The identity of an instance: (namespace, group, service, cluster, ip, port).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceKey {
    pub service: ServiceName,
    pub cluster: Text,
    pub ip: Text,
    pub port: u16,
}

impl InstanceKey {
    /// A copy that owns exactly its bytes (see [`Text::compact`]).
    pub fn compact(&self) -> InstanceKey {
        InstanceKey {
            service: self.service.compact(),
            cluster: self.cluster.compact(),
            ip: self.ip.compact(),
            port: self.port,
        }
    }
}

/// Lease settings of one instance, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    /// How often the client promises to beat.
    pub beat_ms: u32,
    /// No beat for this long: the instance is reported unhealthy.
    pub unhealthy_ms: u32,
    /// No beat for this long: the instance is removed.
    pub expire_ms: u32,
}

impl Default for Lease {
    /// Nacos's defaults: beat every 5 s, unhealthy after 15 s, removed after 30 s.
    fn default() -> Lease {
        Lease {
            beat_ms: 5_000,
            unhealthy_ms: 15_000,
            expire_ms: 30_000,
        }
    }
}

/// Metadata entries in the order given (the store keeps them sorted by key).
pub type Metadata = Vec<(Text, Text)>;

/// One instance as a client registers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub key: InstanceKey,
    pub weight: f64,
    pub healthy: bool,
    pub enabled: bool,
    pub lease: Lease,
    pub metadata: Metadata,
}

impl Instance {
    /// An instance with Nacos's defaults: weight 1.0, healthy, enabled, default lease.
    pub fn new(key: InstanceKey) -> Instance {
        Instance {
            key,
            weight: 1.0,
            healthy: true,
            enabled: true,
            lease: Lease::default(),
            metadata: Vec::new(),
        }
    }
}

/// One instance as a query or push shows it (the service name is in the enclosing snapshot).
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceView {
    pub cluster: Text,
    pub ip: Text,
    pub port: u16,
    pub weight: f64,
    /// Healthy as the client declared it and not lapsed (no beat within unhealthy-after, or its
    /// session dropped).
    pub healthy: bool,
    pub enabled: bool,
    pub metadata: Metadata,
}

/// A record's version: the owner's hybrid-logical-clock stamp, then the id of the node that made
/// the write. Ordered lexicographically; a record replaces another only with a larger version.
///
/// Packed to 10 bytes (alignment 2): every stored record carries one, and the 6 bytes of
/// padding a plain layout adds would cost 6 MB per million instances. Fields are read by
/// value (a reference to `hlc` would be unaligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(C, packed(2))]
pub struct Version {
    pub hlc: u64,
    pub origin: NodeId,
}
