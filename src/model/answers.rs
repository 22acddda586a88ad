//! What reads answer: a service's instances, a page of services, the node's view of its
//! cluster; and what a subscriber is pushed — a whole list, or what changed since the list it
//! holds ([`ServiceDelta`], applied with [`ServiceSnapshot::apply`]). Front ends encode these in
//! their own shapes.

use std::cmp::Ordering;

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

/// An instance's place in its service's list: what orders the list, and what a delta names
/// when an instance is gone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ViewKey {
    pub cluster: Text,
    pub ip: Text,
    pub port: u16,
}

impl InstanceView {
    /// (cluster, ip, port): the order of a snapshot's instances, strings bytewise.
    pub fn order(&self, other: &InstanceView) -> Ordering {
        (&self.cluster, &self.ip, self.port).cmp(&(&other.cluster, &other.ip, other.port))
    }

    pub fn key(&self) -> ViewKey {
        ViewKey {
            cluster: self.cluster.clone(),
            ip: self.ip.clone(),
            port: self.port,
        }
    }
}

/// What changed in a service between two of its revisions: applied to the list at
/// `base_revision`, it gives the list at `revision`. Each instance appears at most once, in
/// `removed` (gone since) or in `updated` (added or changed since, as it is now).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDelta {
    pub name: ServiceName,
    /// The revision of the list this delta applies to.
    pub base_revision: u64,
    /// The revision of the list it makes.
    pub revision: u64,
    /// Sorted like a snapshot's instances.
    pub removed: Vec<ViewKey>,
    /// Sorted like a snapshot's instances.
    pub updated: Vec<InstanceView>,
}

/// Why a delta cannot be applied to a list: the subscriber has lost continuity and needs the
/// whole list again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaMismatch {
    #[error("a delta of another service cannot apply to the list of {held}")]
    OtherService { held: Box<ServiceName> },
    /// A gap: the delta applies to another revision than the list is at.
    #[error("the delta applies to revision {base}, the list is at revision {held}")]
    Gap { base: u64, held: u64 },
    #[error("the delta goes from revision {base} to revision {revision}, not forward")]
    NotForward { base: u64, revision: u64 },
}

impl ServiceSnapshot {
    /// The list `delta` makes of this one. It must apply to this list's revision (and service)
    /// and lead forward; otherwise the subscriber lost continuity and needs a full snapshot.
    ///
    /// Applies `removed` first, then `updated`, each in order (a later entry for the same
    /// instance wins); the result is sorted by (cluster, ip, port) without repeats, whatever
    /// order the delta or this list came in. O(n + k log k) for a sorted list of n instances
    /// and a delta of k.
    pub fn apply(&self, delta: &ServiceDelta) -> Result<ServiceSnapshot, DeltaMismatch> {
        if delta.name != self.name {
            return Err(DeltaMismatch::OtherService {
                held: Box::new(self.name.clone()),
            });
        }
        if delta.base_revision != self.revision {
            return Err(DeltaMismatch::Gap {
                base: delta.base_revision,
                held: self.revision,
            });
        }
        if delta.revision <= delta.base_revision {
            return Err(DeltaMismatch::NotForward {
                base: delta.base_revision,
                revision: delta.revision,
            });
        }
        // The changes in key order, the last one of each key kept.
        let mut changes: Vec<(KeyRef, Option<&InstanceView>)> = delta
            .removed
            .iter()
            .map(|k| (KeyRef::of_key(k), None))
            .chain(delta.updated.iter().map(|v| (KeyRef::of_view(v), Some(v))))
            .collect();
        changes.sort_by(|a, b| a.0.cmp(&b.0)); // stable: later entries stay later
        let mut last: Vec<(KeyRef, Option<&InstanceView>)> = Vec::with_capacity(changes.len());
        for c in changes {
            match last.last_mut() {
                Some(prev) if prev.0 == c.0 => *prev = c,
                _ => last.push(c),
            }
        }
        let sorted = self
            .instances
            .windows(2)
            .all(|w| w[0].order(&w[1]) == Ordering::Less);
        let normalized;
        let base: &[InstanceView] = if sorted {
            &self.instances
        } else {
            // Not as a node sends it: put it in order first (the last of a repeated key wins).
            let mut v = self.instances.clone();
            v.reverse();
            v.sort_by(InstanceView::order);
            v.dedup_by(|later, earlier| later.order(earlier) == Ordering::Equal);
            normalized = v;
            &normalized
        };
        let mut out = Vec::with_capacity(base.len() + delta.updated.len());
        let mut changes = last.into_iter().peekable();
        for inst in base {
            let here = KeyRef::of_view(inst);
            while let Some((k, v)) = changes.next_if(|(k, _)| *k < here) {
                debug_assert!(k < here);
                out.extend(v.cloned());
            }
            match changes.next_if(|(k, _)| *k == here) {
                Some((_, v)) => out.extend(v.cloned()),
                None => out.push(inst.clone()),
            }
        }
        out.extend(changes.filter_map(|(_, v)| v.cloned()));
        Ok(ServiceSnapshot {
            name: self.name.clone(),
            revision: delta.revision,
            instances: out,
        })
    }
}

/// A borrowed [`ViewKey`], ordered as snapshots are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct KeyRef<'a> {
    cluster: &'a [u8],
    ip: &'a [u8],
    port: u16,
}

impl<'a> KeyRef<'a> {
    fn of_key(k: &'a ViewKey) -> KeyRef<'a> {
        KeyRef {
            cluster: k.cluster.as_bytes(),
            ip: k.ip.as_bytes(),
            port: k.port,
        }
    }

    fn of_view(v: &'a InstanceView) -> KeyRef<'a> {
        KeyRef {
            cluster: v.cluster.as_bytes(),
            ip: v.ip.as_bytes(),
            port: v.port,
        }
    }
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
