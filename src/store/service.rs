//! One service's records as the store keeps them: its instances, its cluster names, its
//! revision and change log, and the cached encoding of its snapshot shared by every query and
//! full push until the next change.

use super::*;

pub(super) struct Service {
    pub(super) instances: Instances,
    /// Cluster names, interned: an [`InstanceId`]'s `cluster` indexes this. A service has few
    /// clusters and many instances; a name stays until the service is dropped.
    pub(super) clusters: Vec<Box<str>>,
    pub(super) revision: u64,
    /// The encoded snapshot body of all instances at `revision`, built on first read.
    pub(super) cache: OnceLock<Bytes>,
    /// Which instances changed lately, once a subscriber asked for this service's changes (one
    /// pointer for a service nobody watches).
    pub(super) log: Option<Box<ChangeLog>>,
}

/// What a subscriber holding a service at some revision is sent next (see
/// [`Store::push_since`]).
#[derive(Debug, Clone, PartialEq)]
pub enum PushBody {
    /// It holds the current list.
    Unchanged,
    /// The whole list at `revision`: a ServiceSnapshot body.
    Full { body: Bytes, revision: u64 },
    /// What changed between the revision it holds and `revision`: a PushDelta body.
    Delta { body: Bytes, revision: u64 },
}

/// A stored [`InstanceId`] with its text, for encodings and for the hashes that go by text.
pub(super) struct IdText<'a> {
    pub(super) cluster: &'a str,
    pub(super) ip: IpText<'a>,
    pub(super) port: u16,
}

impl IdText<'_> {
    pub(super) fn view(&self) -> InstanceIdRef<'_> {
        InstanceIdRef {
            cluster: self.cluster,
            ip: self.ip.as_str(),
            port: self.port,
        }
    }

    /// The order of a snapshot's instances: (cluster, ip, port), strings bytewise.
    pub(super) fn order(&self, other: &IdText) -> std::cmp::Ordering {
        (self.cluster.as_bytes(), self.ip.as_bytes(), self.port).cmp(&(
            other.cluster.as_bytes(),
            other.ip.as_bytes(),
            other.port,
        ))
    }
}

/// The text of `id`, whose cluster indexes `clusters` (its service's).
pub(super) fn id_text<'a>(clusters: &'a [Box<str>], id: &'a InstanceId) -> IdText<'a> {
    IdText {
        cluster: &clusters[id.cluster as usize],
        ip: id.as_ref().ip.text(),
        port: id.port,
    }
}

impl Service {
    pub(super) fn new() -> Service {
        Service {
            instances: Instances::default(),
            clusters: Vec::new(),
            revision: 0,
            cache: OnceLock::new(),
            log: None,
        }
    }

    /// A change of this service: a new revision from the node's counter; the cached snapshot
    /// goes, and the change log (if the service is watched) notes the instances changed.
    pub(super) fn changed(
        &mut self,
        revisions: &AtomicU64,
        ids: impl IntoIterator<Item = InstanceId>,
    ) {
        self.revision = revisions.fetch_add(1, Ordering::Relaxed) + 1;
        self.cache = OnceLock::new();
        if let Some(log) = &mut self.log {
            let cap = changes::cap(self.instances.len());
            for id in ids {
                log.note(self.revision, id, cap);
            }
        }
    }

    /// The lookup key of `id` in this service; None when no instance of its cluster was ever
    /// stored here (so it is not here).
    pub(super) fn find<'k>(&self, id: InstanceIdRef<'k>) -> Option<IdRef<'k>> {
        let cluster = self.clusters.iter().position(|c| **c == *id.cluster)?;
        Some(IdRef {
            ip: IpRef::parse(id.ip),
            cluster: cluster as u32,
            port: id.port,
        })
    }

    pub(super) fn get(&self, key: &InstanceKey) -> Option<&Record> {
        self.instances.get(&self.find(InstanceIdRef::of(key))?)
    }

    pub(super) fn get_mut(&mut self, key: &InstanceKey) -> Option<&mut Record> {
        let id = self.find(InstanceIdRef::of(key))?;
        self.instances.get_mut(&id)
    }

    /// The lookup key of `id`, interning its cluster name if it is new here.
    pub(super) fn intern<'k>(&mut self, id: InstanceIdRef<'k>) -> IdRef<'k> {
        if let Some(found) = self.find(id) {
            return found;
        }
        self.clusters.push(id.cluster.into());
        IdRef {
            ip: IpRef::parse(id.ip),
            cluster: (self.clusters.len() - 1) as u32,
            port: id.port,
        }
    }

    /// The snapshot body of the live instances `filter` (given the cluster name) selects.
    pub(super) fn encode_snapshot(
        &self,
        name: &ServiceName,
        filter: impl Fn(&str, &Record) -> bool,
    ) -> Bytes {
        let mut out = BytesMut::with_capacity(64 + self.instances.len() * 48);
        // Cluster names ranked once, so that instances compare by rank, not by name.
        let mut by_name: Vec<usize> = (0..self.clusters.len()).collect();
        by_name.sort_unstable_by(|&a, &b| self.clusters[a].cmp(&self.clusters[b]));
        let mut rank = vec![0u32; self.clusters.len()];
        for (r, &c) in by_name.iter().enumerate() {
            rank[c] = r as u32;
        }
        let mut matched: Vec<(u32, IdText, &Record)> = self
            .instances
            .iter()
            .filter(|(id, r)| r.alive && filter(&self.clusters[id.cluster as usize], r))
            .map(|(id, r)| (rank[id.cluster as usize], id_text(&self.clusters, id), r))
            .collect();
        // Sorted by (cluster, ip, port), strings bytewise (wire-spec.md, ServiceSnapshot).
        matched.sort_unstable_by(|a, b| {
            (a.0, a.1.ip.as_bytes(), a.1.port).cmp(&(b.0, b.1.ip.as_bytes(), b.1.port))
        });
        ServiceSnapshot::encode_head(&mut out, name, self.revision, matched.len() as u32);
        for (_, t, r) in matched {
            encode_view(&mut out, &t, r);
        }
        out.freeze()
    }

    /// What a subscriber holding this service at `held` is pushed next (see
    /// [`Store::push_since`]).
    pub(super) fn push_since(&self, name: &ServiceName, held: Option<u64>) -> PushBody {
        if held == Some(self.revision) {
            return PushBody::Unchanged;
        }
        if let (Some(h), Some(log)) = (held, &self.log)
            && h < self.revision
            && let Some(body) = self.encode_delta(name, h, log)
        {
            return PushBody::Delta {
                body,
                revision: self.revision,
            };
        }
        let body = self
            .cache
            .get_or_init(|| self.encode_snapshot(name, |_, _| true))
            .clone();
        PushBody::Full {
            body,
            revision: self.revision,
        }
    }

    /// The PushDelta body that takes a subscriber from `base` to the current revision, from
    /// the change log; `None` when the log does not reach back to `base`, or the delta would
    /// name as many instances as the whole list holds (the list is then sent instead).
    /// O(k log k) for k changes since `base`, whatever the size of the service.
    pub(super) fn encode_delta(
        &self,
        name: &ServiceName,
        base: u64,
        log: &ChangeLog,
    ) -> Option<Bytes> {
        let mut ids: Vec<(IdText, &InstanceId)> = log
            .since(base)?
            .map(|id| (id_text(&self.clusters, id), id))
            .collect();
        ids.sort_unstable_by(|a, b| a.0.order(&b.0));
        // One text per id, so repeats of an instance are neighbours now.
        ids.dedup_by(|a, b| a.1 == b.1);
        if ids.len() >= self.instances.len() {
            return None;
        }
        let mut removed = Vec::new();
        let mut updated = Vec::new();
        for (t, id) in ids {
            match self.instances.get(id) {
                Some(r) if r.alive => updated.push((t, r)),
                _ => removed.push(t),
            }
        }
        let mut out = BytesMut::with_capacity(64 + removed.len() * 24 + updated.len() * 48);
        ServiceDelta::encode_head(&mut out, name, base, self.revision);
        out.put_u32(removed.len() as u32);
        for t in removed {
            encode_view_key(&mut out, t.cluster, t.ip.as_str(), t.port);
        }
        out.put_u32(updated.len() as u32);
        for (t, r) in updated {
            encode_view(&mut out, &t, r);
        }
        Some(out.freeze())
    }
}

/// Appends the InstanceView of the live record `r` at `t`.
pub(super) fn encode_view(out: &mut BytesMut, t: &IdText, r: &Record) {
    encode_instance_view(
        out,
        t.cluster,
        t.ip.as_str(),
        t.port,
        r.weight,
        r.reported_healthy(),
        r.enabled,
        r.meta(),
    );
}
