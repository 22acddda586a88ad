//! The SDK's local cache of subscribed services: the whole list of each, kept current by the
//! pushes of the connection in use — whole lists (Push) and what changed since the last push
//! (PushDelta), which it applies so that the application always sees whole, consistent lists.
//!
//! Continuity (wire-spec.md §8.7): a delta applies only to the list of the revision it names
//! as its base, received on the same connection. A delta that does not follow on (a gap; in
//! practice never seen from a conforming node) is dropped, and the service is subscribed
//! again, which makes the node push the whole list; until that arrives, further deltas are
//! dropped too. A whole list from the connection in use is always taken.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tracing::debug;

use crate::hash::HashMap;
use crate::model::{ServiceDelta, ServiceName, ServiceSnapshot};

/// A push as a connection receives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Pushed {
    Full(ServiceSnapshot),
    Delta(ServiceDelta),
}

impl Pushed {
    pub fn name(&self) -> &ServiceName {
        match self {
            Pushed::Full(s) => &s.name,
            Pushed::Delta(d) => &d.name,
        }
    }
}

/// Where a connection hands its pushes.
pub type PushSink = Arc<dyn Fn(Pushed) + Send + Sync>;

/// One subscribed service.
struct Entry {
    /// The latest whole list, for the application's [`super::Subscription`]s.
    tx: watch::Sender<Option<Arc<ServiceSnapshot>>>,
    /// The connection whose pushes made the list (deltas of another do not follow on from it).
    conn: u64,
    /// A delta did not follow on: the service was subscribed again, and pushes other than a
    /// whole list are dropped until one arrives.
    resyncing: bool,
}

/// The subscribed services and their lists.
pub struct Cache {
    entries: Mutex<HashMap<ServiceName, Entry>>,
    /// Services to subscribe again (a delta did not follow on); the client's resync task
    /// reads it.
    resync: mpsc::UnboundedSender<ServiceName>,
}

impl Cache {
    /// A cache, and the receiving end of its resubscribe requests.
    pub fn new() -> (Arc<Cache>, mpsc::UnboundedReceiver<ServiceName>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let cache = Cache {
            entries: Mutex::default(),
            resync: tx,
        };
        (Arc::new(cache), rx)
    }

    /// A receiver of `name`'s lists, adding the service if it is new.
    pub fn watch(&self, name: &ServiceName) -> watch::Receiver<Option<Arc<ServiceSnapshot>>> {
        let mut entries = self.entries.lock().unwrap();
        entries
            .entry(name.clone())
            .or_insert_with(|| Entry {
                tx: watch::channel(None).0,
                conn: 0,
                resyncing: false,
            })
            .tx
            .subscribe()
    }

    /// Drops `name` (its open receivers end).
    pub fn remove(&self, name: &ServiceName) {
        self.entries.lock().unwrap().remove(name);
    }

    pub fn names(&self) -> Vec<ServiceName> {
        self.entries.lock().unwrap().keys().cloned().collect()
    }

    /// The latest list of `name`.
    pub fn get(&self, name: &ServiceName) -> Option<Arc<ServiceSnapshot>> {
        let entries = self.entries.lock().unwrap();
        entries.get(name).and_then(|e| e.tx.borrow().clone())
    }

    /// Whether `name` still waits for the whole list it asked for again.
    pub fn is_resyncing(&self, name: &ServiceName) -> bool {
        let entries = self.entries.lock().unwrap();
        entries.get(name).is_some_and(|e| e.resyncing)
    }

    /// Takes a push that came on connection `conn` (connections are numbered in the order they
    /// were opened). Pushes of services not subscribed are dropped.
    pub fn take(&self, conn: u64, push: Pushed) {
        let mut entries = self.entries.lock().unwrap();
        let Some(e) = entries.get_mut(push.name()) else {
            return;
        };
        if conn < e.conn {
            // From a connection given up since: the list is of another node now.
            return;
        }
        match push {
            Pushed::Full(snap) => {
                e.conn = conn;
                e.resyncing = false;
                e.tx.send_replace(Some(Arc::new(snap)));
            }
            Pushed::Delta(_) if e.resyncing => {}
            Pushed::Delta(delta) => {
                let held = e.tx.borrow().clone();
                let applied = match held {
                    Some(list) if e.conn == conn => list.apply(&delta).map_err(|m| m.to_string()),
                    Some(_) => Err("the delta came on another connection than the list".into()),
                    None => Err("a delta came before any whole list".into()),
                };
                match applied {
                    Ok(list) => {
                        e.tx.send_replace(Some(Arc::new(list)));
                    }
                    Err(why) => {
                        debug!(service = %delta.name, %why, "push lost continuity; subscribing again");
                        e.resyncing = true;
                        let _ = self.resync.send(delta.name);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InstanceView, ViewKey};

    fn svc() -> ServiceName {
        ServiceName::new("public", "DEFAULT_GROUP", "orders")
    }

    fn view(ip: &str, weight: f64) -> InstanceView {
        InstanceView {
            cluster: "DEFAULT".into(),
            ip: ip.into(),
            port: 80,
            weight,
            healthy: true,
            enabled: true,
            metadata: Vec::new(),
        }
    }

    fn full(revision: u64, ips: &[&str]) -> Pushed {
        Pushed::Full(ServiceSnapshot {
            name: svc(),
            revision,
            instances: ips.iter().map(|ip| view(ip, 1.0)).collect(),
        })
    }

    fn delta(base: u64, revision: u64, removed: &[&str], updated: &[(&str, f64)]) -> Pushed {
        Pushed::Delta(ServiceDelta {
            name: svc(),
            base_revision: base,
            revision,
            removed: removed
                .iter()
                .map(|ip| ViewKey {
                    cluster: "DEFAULT".into(),
                    ip: (*ip).into(),
                    port: 80,
                })
                .collect(),
            updated: updated.iter().map(|(ip, w)| view(ip, *w)).collect(),
        })
    }

    fn ips(c: &Cache) -> (u64, Vec<String>) {
        let s = c.get(&svc()).expect("a list");
        (
            s.revision,
            s.instances
                .iter()
                .map(|i| format!("{}/{}", i.ip, i.weight))
                .collect(),
        )
    }

    #[test]
    fn deltas_that_follow_on_are_applied_to_the_whole_list() {
        let (c, mut rx) = Cache::new();
        let _rx = c.watch(&svc());
        c.take(1, full(10, &["10.0.0.2", "10.0.0.1"]));
        assert_eq!(
            ips(&c),
            (10, vec!["10.0.0.2/1".into(), "10.0.0.1/1".into()])
        );
        c.take(
            1,
            delta(
                10,
                12,
                &["10.0.0.2"],
                &[("10.0.0.3", 2.0), ("10.0.0.1", 0.5)],
            ),
        );
        assert_eq!(
            ips(&c),
            (12, vec!["10.0.0.1/0.5".into(), "10.0.0.3/2".into()])
        );
        c.take(1, delta(12, 13, &["10.0.0.9"], &[("10.0.0.0", 1.0)]));
        assert_eq!(
            ips(&c),
            (
                13,
                vec![
                    "10.0.0.0/1".into(),
                    "10.0.0.1/0.5".into(),
                    "10.0.0.3/2".into()
                ]
            )
        );
        assert!(rx.try_recv().is_err(), "nothing to subscribe again");
    }

    #[test]
    fn a_gap_drops_deltas_and_asks_for_the_whole_list_once() {
        let (c, mut rx) = Cache::new();
        let _rx = c.watch(&svc());
        c.take(1, full(10, &["10.0.0.1"]));
        // Base 11, the list is at 10: a gap.
        c.take(1, delta(11, 12, &[], &[("10.0.0.2", 1.0)]));
        assert_eq!(ips(&c), (10, vec!["10.0.0.1/1".into()]), "kept as it was");
        assert!(c.is_resyncing(&svc()));
        assert_eq!(rx.try_recv().unwrap(), svc());
        // Even one that would follow on is dropped until the whole list comes.
        c.take(1, delta(10, 11, &[], &[("10.0.0.3", 1.0)]));
        assert_eq!(ips(&c).0, 10);
        assert!(rx.try_recv().is_err(), "asked once");
        c.take(1, full(14, &["10.0.0.1", "10.0.0.2"]));
        assert!(!c.is_resyncing(&svc()));
        c.take(1, delta(14, 15, &["10.0.0.1"], &[]));
        assert_eq!(ips(&c), (15, vec!["10.0.0.2/1".into()]));
    }

    #[test]
    fn deltas_of_another_connection_and_before_any_list_do_not_apply() {
        let (c, mut rx) = Cache::new();
        let _rx = c.watch(&svc());
        c.take(1, delta(0, 3, &[], &[("10.0.0.1", 1.0)]));
        assert!(c.get(&svc()).is_none());
        assert_eq!(rx.try_recv().unwrap(), svc());
        c.take(1, full(5, &["10.0.0.1"]));
        // A new connection (another node, unrelated revisions): only its whole list counts.
        c.take(2, delta(5, 6, &["10.0.0.1"], &[]));
        assert_eq!(ips(&c).0, 5);
        assert_eq!(rx.try_recv().unwrap(), svc());
        c.take(2, full(40, &[]));
        // A late whole list of the old connection is ignored.
        c.take(1, full(7, &["10.0.0.7"]));
        assert_eq!(ips(&c), (40, vec![]));
    }

    #[test]
    fn pushes_of_services_not_subscribed_are_dropped() {
        let (c, _rx) = Cache::new();
        c.take(1, full(1, &["10.0.0.1"]));
        assert!(c.get(&svc()).is_none());
        assert!(c.names().is_empty());
    }

    mod props {
        use std::collections::BTreeMap;

        use proptest::prelude::*;

        use super::*;

        type Key = (String, String, u16);

        /// Instances drawn from a few keys, so that deltas hit what the list holds.
        fn key() -> impl Strategy<Value = Key> {
            (0..2u8, 0..5u8, 1..3u16).prop_map(|(c, ip, port)| {
                (
                    ["A", "B"][c as usize].to_string(),
                    format!("10.0.0.{ip}"),
                    port,
                )
            })
        }

        fn view_at(k: &Key, weight: u8) -> InstanceView {
            InstanceView {
                cluster: k.0.as_str().into(),
                ip: k.1.as_str().into(),
                port: k.2,
                weight: weight as f64,
                healthy: weight % 2 == 0,
                enabled: true,
                metadata: Vec::new(),
            }
        }

        #[derive(Debug, Clone)]
        enum Step {
            /// A whole list from connection `conn` (possibly unsorted, with repeats).
            Full {
                conn: u64,
                revision: u64,
                list: Vec<(Key, u8)>,
            },
            /// A delta from connection `conn`; `follow` makes its base the revision the
            /// reference holds, otherwise `base` is taken as it is.
            Delta {
                conn: u64,
                follow: bool,
                base: u64,
                forward: u64,
                removed: Vec<Key>,
                updated: Vec<(Key, u8)>,
            },
        }

        fn step() -> impl Strategy<Value = Step> {
            let conn = prop_oneof![4 => Just(1u64), 1 => 0..4u64];
            prop_oneof![
                1 => (conn.clone(), 0..50u64, prop::collection::vec((key(), any::<u8>()), 0..8))
                    .prop_map(|(conn, revision, list)| Step::Full { conn, revision, list }),
                5 => (
                    conn,
                    prop_oneof![5 => Just(true), 1 => Just(false)],
                    0..50u64,
                    prop_oneof![8 => 1..4u64, 1 => Just(0u64)],
                    prop::collection::vec(key(), 0..4),
                    prop::collection::vec((key(), any::<u8>()), 0..4),
                )
                    .prop_map(|(conn, follow, base, forward, removed, updated)| Step::Delta {
                        conn,
                        follow,
                        base,
                        forward,
                        removed,
                        updated,
                    }),
            ]
        }

        /// What the SDK promises, written the plain way.
        #[derive(Default)]
        struct Reference {
            list: Option<(u64, Vec<InstanceView>)>,
            conn: u64,
            resyncing: bool,
            resyncs: usize,
        }

        impl Reference {
            fn take(&mut self, step: &Step) {
                match step {
                    Step::Full {
                        conn,
                        revision,
                        list,
                    } => {
                        if *conn < self.conn {
                            return;
                        }
                        self.conn = *conn;
                        self.resyncing = false;
                        let views = list.iter().map(|(k, w)| view_at(k, *w)).collect();
                        self.list = Some((*revision, views));
                    }
                    Step::Delta {
                        conn,
                        removed,
                        updated,
                        ..
                    } => {
                        if *conn < self.conn || self.resyncing {
                            return;
                        }
                        let (base, revision) = self.revisions(step);
                        let follows = *conn == self.conn
                            && self.list.as_ref().is_some_and(|(r, _)| *r == base)
                            && revision > base;
                        if !follows {
                            self.resyncing = true;
                            self.resyncs += 1;
                            return;
                        }
                        let (_, views) = self.list.take().unwrap();
                        let mut m: BTreeMap<Key, InstanceView> = BTreeMap::new();
                        for v in views {
                            m.insert((v.cluster.to_string(), v.ip.to_string(), v.port), v);
                        }
                        for k in removed {
                            m.remove(k);
                        }
                        for (k, w) in updated {
                            m.insert(k.clone(), view_at(k, *w));
                        }
                        self.list = Some((revision, m.into_values().collect()));
                    }
                }
            }

            /// (base, revision) of a delta step, given what the reference holds now.
            fn revisions(&self, step: &Step) -> (u64, u64) {
                let Step::Delta {
                    follow,
                    base,
                    forward,
                    ..
                } = step
                else {
                    unreachable!()
                };
                let base = match (&self.list, follow) {
                    (Some((r, _)), true) => *r,
                    _ => *base,
                };
                (base, base + forward)
            }
        }

        proptest! {
            /// Whatever pushes come (deltas that follow on, gaps, other connections, stale and
            /// unsorted whole lists), the cache holds what the plain reference says, and asks for
            /// the whole list again once per gap.
            #[test]
            fn the_cache_applies_pushes_as_the_reference_does(
                steps in prop::collection::vec(step(), 1..60)
            ) {
                let (c, mut rx) = Cache::new();
                let _watch = c.watch(&svc());
                let mut r = Reference::default();
                for (i, st) in steps.iter().enumerate() {
                    let push = match st {
                        Step::Full { revision, list, .. } => Pushed::Full(ServiceSnapshot {
                            name: svc(),
                            revision: *revision,
                            instances: list.iter().map(|(k, w)| view_at(k, *w)).collect(),
                        }),
                        Step::Delta { removed, updated, .. } => {
                            let (base_revision, revision) = r.revisions(st);
                            Pushed::Delta(ServiceDelta {
                                name: svc(),
                                base_revision,
                                revision,
                                removed: removed
                                    .iter()
                                    .map(|k| ViewKey {
                                        cluster: k.0.as_str().into(),
                                        ip: k.1.as_str().into(),
                                        port: k.2,
                                    })
                                    .collect(),
                                updated: updated.iter().map(|(k, w)| view_at(k, *w)).collect(),
                            })
                        }
                    };
                    let conn = match st {
                        Step::Full { conn, .. } | Step::Delta { conn, .. } => *conn,
                    };
                    c.take(conn, push);
                    r.take(st);
                    let got = c.get(&svc()).map(|s| (s.revision, s.instances.clone()));
                    prop_assert_eq!(&got, &r.list, "after step {}: {:?}", i, st);
                    prop_assert_eq!(c.is_resyncing(&svc()), r.resyncing, "after step {}", i);
                }
                let mut asked = 0;
                while rx.try_recv().is_ok() {
                    asked += 1;
                }
                prop_assert_eq!(asked, r.resyncs);
            }
        }
    }
}
