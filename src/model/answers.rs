//! What reads answer: a service's instances, a page of services, the node's view of its
//! cluster. Front ends encode these in their own shapes.

use super::instance::{InstanceView, NodeId, ServiceName};
use super::text::Text;

/// A service's full instance list at one revision: the answer to a query and a full push.
/// Instances are sorted by (cluster, ip, port), strings bytewise.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSnapshot {
    pub name: ServiceName,
    /// Grows with every change of the service on the node that answered.
    pub revision: u64,
    pub instances: Vec<InstanceView>,
}

/// One service of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSummary {
    pub group: Text,
    pub service: Text,
    /// Live instances.
    pub instances: u32,
    /// Of those, healthy and enabled.
    pub healthy: u32,
}

/// One page of the services of a namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceList {
    /// Services in the namespace, over all pages.
    pub total: u32,
    pub services: Vec<ServiceSummary>,
}

/// What one namespace holds on the answering node.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceSummary {
    pub namespace: Text,
    /// Services with live instances.
    pub services: u32,
    /// Live instances.
    pub instances: u64,
    /// Of those, reported healthy (as in [`ServiceSummary::healthy`]).
    pub healthy: u64,
}

/// One member as the answering node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberStatus {
    /// 0 for a member this node has never reached (its id is learned in the handshake).
    pub id: NodeId,
    pub addr: Text,
    pub up: bool,
    /// It said it was leaving (a graceful stop) and has not come back since; never with `up`.
    pub left: bool,
    /// Live instances it owns, as the answering node sees it.
    pub owned: u64,
}

impl MemberStatus {
    /// `up`, `down` (not answering, or never reached) or `left` (it said it was leaving).
    pub fn state_name(&self) -> &'static str {
        match (self.up, self.left) {
            (true, _) => "up",
            (false, true) => "left",
            (false, false) => "down",
        }
    }
}

/// The answering node's view of its cluster (a standalone node is a cluster of one).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub ready: bool,
    /// Live instances the answering node holds.
    pub instances: u64,
    pub members: Vec<MemberStatus>,
}
