//! What clients read from the store: one instance, a service's snapshot, the pushes a
//! subscriber is owed (a delta since the revision it holds, or the whole list), the services of
//! a namespace and the counts.

use super::*;

impl Store {
    /// The record under `key`, alive or tombstone.
    pub fn get(&self, key: &InstanceKey) -> Option<Record> {
        let shard = self.shard_of(&key.service).read().unwrap();
        shard
            .services
            .get(&key.service)
            .and_then(|s| s.get(key).cloned())
    }

    /// The encoded snapshot body (a ServiceSnapshot) of the live instances of `name`, of one
    /// cluster (`""`: all), healthy and enabled ones only if `healthy_only`. An unknown service is
    /// an empty list at the node's latest revision.
    pub fn query(&self, name: &ServiceName, cluster: &str, healthy_only: bool) -> Bytes {
        let shard = self.shard_of(name).read().unwrap();
        let Some(svc) = shard.services.get(name) else {
            // The node's current revision: at least as new as anything this service had before
            // it was emptied and dropped, so a subscriber is pushed the empty list.
            let mut out = BytesMut::new();
            let revision = self.revisions.load(Ordering::Relaxed);
            ServiceSnapshot::encode_head(&mut out, name, revision, 0);
            return out.freeze();
        };
        if cluster.is_empty() && !healthy_only {
            return svc
                .cache
                .get_or_init(|| svc.encode_snapshot(name, |_, _| true))
                .clone();
        }
        svc.encode_snapshot(name, |c, r| {
            (cluster.is_empty() || c == cluster)
                && (!healthy_only || (r.reported_healthy() && r.enabled))
        })
    }

    /// What a subscriber of `name` that holds the list at revision `held` (`None`: nothing
    /// yet) is pushed next: nothing if it is current; what changed since `held` if this
    /// service's change log reaches back that far; otherwise the whole list (from the cache).
    /// The first call for a service starts its change log, so that the pushes after the first
    /// full one are deltas; [`Store::unwatch`] ends it.
    pub fn push_since(&self, name: &ServiceName, held: Option<u64>) -> PushBody {
        {
            let shard = self.shard_of(name).read().unwrap();
            match shard.services.get(name) {
                None => return self.push_of_unknown(name, held),
                Some(svc) if svc.log.is_some() => return svc.push_since(name, held),
                Some(_) => {}
            }
        }
        // The first push of a service nobody watched: start its log (once per service).
        let mut shard = self.shard_of(name).write().unwrap();
        match shard.services.get_mut(name) {
            None => self.push_of_unknown(name, held),
            Some(svc) => {
                let revision = svc.revision;
                svc.log
                    .get_or_insert_with(|| Box::new(ChangeLog::new(revision)));
                svc.push_since(name, held)
            }
        }
    }

    /// [`Store::push_since`] for a service this node holds nothing of (emptied and dropped, or
    /// never seen): the empty list at the node's latest revision (see [`Store::query`]), unless
    /// the subscriber is already there.
    pub(super) fn push_of_unknown(&self, name: &ServiceName, held: Option<u64>) -> PushBody {
        let revision = self.revisions.load(Ordering::Relaxed);
        if held.is_some_and(|h| h >= revision) {
            return PushBody::Unchanged;
        }
        let mut body = BytesMut::new();
        ServiceSnapshot::encode_head(&mut body, name, revision, 0);
        PushBody::Full {
            body: body.freeze(),
            revision,
        }
    }

    /// Whether `name` keeps a change log (a subscriber asked for its changes).
    pub fn is_watched(&self, name: &ServiceName) -> bool {
        let shard = self.shard_of(name).read().unwrap();
        shard.services.get(name).is_some_and(|s| s.log.is_some())
    }

    /// Nobody on this node subscribes to `name` any more: its change log goes.
    pub fn unwatch(&self, name: &ServiceName) {
        let mut shard = self.shard_of(name).write().unwrap();
        if let Some(svc) = shard.services.get_mut(name) {
            svc.log = None;
        }
    }

    /// One page of the services of a namespace, sorted by (group, service). Services with only
    /// tombstones are not listed.
    pub fn list_services(&self, namespace: &str, page: u32, page_size: u16) -> ServiceList {
        self.list_services_in(namespace, None, page, page_size)
    }

    /// [`Store::list_services`], of one group only when `group` is given.
    pub fn list_services_in(
        &self,
        namespace: &str,
        group: Option<&str>,
        page: u32,
        page_size: u16,
    ) -> ServiceList {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap();
            for (name, svc) in &shard.services {
                if name.namespace() != namespace || group.is_some_and(|g| name.group() != g) {
                    continue;
                }
                let (mut instances, mut healthy) = (0u32, 0u32);
                for r in svc.instances.values().filter(|r| r.alive) {
                    instances += 1;
                    healthy += r.reported_healthy() as u32;
                }
                if instances > 0 {
                    all.push(ServiceSummary {
                        group: Text::from(name.group()),
                        service: Text::from(name.service()),
                        instances,
                        healthy,
                    });
                }
            }
        }
        all.sort_unstable_by(|a, b| (&a.group, &a.service).cmp(&(&b.group, &b.service)));
        let total = all.len() as u32;
        let start = (page as usize).saturating_mul(page_size as usize);
        let services = all
            .into_iter()
            .skip(start)
            .take(page_size as usize)
            .collect();
        ServiceList { total, services }
    }

    /// Every namespace with live instances, sorted by name: its services, live and healthy
    /// instances. Walks every record (a scrape or a console refresh, not a request path), one
    /// shard's read lock at a time.
    pub fn namespace_counts(&self) -> Vec<NamespaceSummary> {
        let mut by_ns: std::collections::BTreeMap<String, NamespaceSummary> = Default::default();
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap();
            for (name, svc) in &shard.services {
                let (mut instances, mut healthy) = (0u64, 0u64);
                for r in svc.instances.values().filter(|r| r.alive) {
                    instances += 1;
                    healthy += r.reported_healthy() as u64;
                }
                if instances == 0 {
                    continue;
                }
                let ns = match by_ns.get_mut(name.namespace()) {
                    Some(ns) => ns,
                    None => by_ns
                        .entry(name.namespace().to_string())
                        .or_insert_with(|| NamespaceSummary {
                            namespace: Text::from(name.namespace()),
                            services: 0,
                            instances: 0,
                            healthy: 0,
                        }),
                };
                ns.services += 1;
                ns.instances += instances;
                ns.healthy += healthy;
            }
        }
        by_ns.into_values().collect()
    }

    /// Services with at least one live instance, over all namespaces.
    pub fn service_count(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let shard = shard.read().unwrap();
                shard
                    .services
                    .values()
                    .filter(|svc| svc.instances.values().any(|r| r.alive))
                    .count()
            })
            .sum()
    }
}
