//! The member list at run time and graceful leaves, on in-process nodes over loopback: a node
//! that leaves hands its keys over before it stops and counts as up again only when it is back;
//! members added and removed while the cluster runs move only their own share; members whose
//! lists differ (a change being rolled out) still form one cluster.
//!
//! The same behaviours under client load, with real `distrod` processes and signals, are in
//! `tests/rolling.rs`. Every wait polls with a generous deadline; no test asserts how fast
//! something happened.

mod cluster_support;

use std::collections::BTreeMap;
use std::time::Duration;

use cluster_support::*;
use distro::cluster::Cluster;
use distro::model::{Instance, MemberStatus, NodeId};

/// Registers `instances` through node `at`'s write path, in frames of at most the batch limit.
async fn register_via(tc: &TestCluster, at: NodeId, instances: &[Instance]) {
    for chunk in instances.chunks(distro::model::BATCH_INSTANCES_MAX) {
        tc.cluster(at)
            .register(chunk, 0)
            .await
            .unwrap_or_else(|e| panic!("register via node {at}: {e}"));
    }
}

fn instances(tag: u8, n: u32) -> Vec<Instance> {
    let svc = name(&format!("members-{tag}"));
    (0..n)
        .map(|i| inst(&key(&svc, &ip_of(tag, i), 9000), long_lease()))
        .collect()
}

/// Node `of`'s view of the member at `addr`, from its status.
fn member(c: &Cluster, addr: std::net::SocketAddr) -> Option<MemberStatus> {
    let addr = addr.to_string();
    c.status()
        .members
        .into_iter()
        .skip(1)
        .find(|m| m.addr.as_str() == addr)
}

/// Checks that node `at` computes the owners `want` (and holds exactly those keys).
fn same_owners(at: NodeId, want: &BTreeMap<String, NodeId>, got: &BTreeMap<String, NodeId>) {
    let differ: Vec<&String> = want
        .keys()
        .chain(got.keys())
        .filter(|k| want.get(*k) != got.get(*k))
        .collect();
    assert!(
        differ.is_empty(),
        "node {at}: {} keys differ in owner or presence, e.g. {:?}: {:?} here, {:?} wanted",
        differ.len(),
        differ[0],
        got.get(differ[0]),
        want.get(differ[0])
    );
}

/// Checks that between `before` and `after` (key → owner) no key appeared or vanished and only
/// the keys whose owner was `from` (or, with `to`, that went to `to`) changed owner.
fn only_share_moved(
    at: NodeId,
    before: &BTreeMap<String, NodeId>,
    after: &BTreeMap<String, NodeId>,
    moved: impl Fn(NodeId, NodeId) -> bool,
) -> usize {
    let appeared = after.keys().filter(|k| !before.contains_key(*k)).count();
    let vanished = before.keys().filter(|k| !after.contains_key(*k)).count();
    assert_eq!(
        (appeared, vanished),
        (0, 0),
        "node {at}: instances appeared, vanished"
    );
    let mut n = 0;
    for (k, &was) in before {
        let now = after[k];
        if now != was {
            assert!(moved(was, now), "node {at}: {k} moved from {was} to {now}");
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_node_hands_its_keys_over_before_it_stops_and_is_up_again_only_once_back() {
    let _serial = serial().await;
    let mut tc = TestCluster::start(3).await;
    let leaving: NodeId = 3;
    let stay: Vec<NodeId> = vec![1, 2];
    register_via(&tc, 1, &instances(21, 900)).await;
    tc.wait_converged().await;
    let before = live_owners(tc.store(1));
    assert!(before.values().any(|&o| o == leaving));

    tc.stop_gracefully(leaving).await;
    // Its peers acknowledged the leave before it stopped, and acknowledge only once they took
    // over: no failure detector to wait for.
    for &id in &stay {
        let c = tc.cluster(id);
        let mut live = c.live_view();
        live.sort_unstable();
        assert_eq!(live, stay, "node {id}'s live view right after the leave");
        assert_eq!(tc.store(id).ownership().live(), stay, "node {id}'s view");
        let m = member(c, tc.peer_addr(leaving)).expect("still a member");
        assert_eq!(m.state_name(), "left", "node {id} shows it left");
        let moved = only_share_moved(id, &before, &live_owners(tc.store(id)), |was, now| {
            was == leaving && stay.contains(&now)
        });
        assert_eq!(moved, before.values().filter(|&&o| o == leaving).count());
    }
    tc.wait_converged().await;

    // Several member timeouts later it is still "left" (nothing answers at its address)…
    tokio::time::sleep(Duration::from_millis(3 * 600)).await;
    for &id in &stay {
        assert_eq!(
            member(tc.cluster(id), tc.peer_addr(leaving))
                .unwrap()
                .state_name(),
            "left"
        );
    }
    // …and once it is back (a new process: a new handshake) it is up and takes its share back.
    tc.restart(leaving).await;
    tc.wait_formed().await;
    tc.wait_converged().await;
    for id in tc.ids() {
        same_owners(id, &before, &live_owners(tc.store(id)));
    }
    for &id in &stay {
        let m = member(tc.cluster(id), tc.peer_addr(leaving)).unwrap();
        assert_eq!((m.state_name(), m.id), ("up", leaving));
    }
    tc.wait_converged().await;
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_reach_a_leaving_node_go_to_the_new_owners() {
    let _serial = serial().await;
    let mut tc = TestCluster::start(3).await;
    // Node 3 leaves but has not stopped yet: its clients' writes (and forwards that were on
    // their way to it) still arrive.
    tc.cluster(3).leave().await;
    let late = instances(26, 300);
    register_via(&tc, 3, &late).await;
    let view = tc.store(1).ownership();
    assert_eq!(view.live(), [1, 2]);
    for i in &late {
        let owner = view.owner(&i.key.ip, i.key.port);
        let r = tc.store(owner).get(&i.key).expect("at its new owner");
        assert!(
            r.alive && r.version.origin == owner,
            "{:?} written by its owner",
            i.key
        );
    }
    tc.stop(3).await;
    assert_eq!(tc.wait_converged().await.len(), late.len());
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_added_and_removed_at_run_time_move_only_their_own_share() {
    let _serial = serial().await;
    // Four nodes bound; the first three form the cluster, node 4 is not started yet and is in
    // nobody's list but its own.
    let (mut configs, listeners) = bind_nodes(4, |_| {}).await;
    let three: Vec<_> = configs[..3].iter().map(|c| c.peer_listen.into()).collect();
    for c in &mut configs[..3] {
        c.members = three.clone();
    }
    let mut listeners: Vec<_> = listeners.into_iter().map(Some).collect();
    let fourth = listeners[3].take();
    let mut tc = TestCluster::spawn(configs, listeners);
    tc.wait_view(&[1, 2, 3]).await;
    register_via(&tc, 2, &instances(22, 1_200)).await;
    tc.wait_converged().await;
    let before = live_owners(tc.store(1));

    // Add node 4 to the running nodes' lists first: it is not running, so nothing moves.
    for id in [1, 2, 3] {
        tc.set_members(id, &[1, 2, 3, 4]).await;
    }
    for id in [1, 2, 3] {
        let m = member(tc.cluster(id), tc.peer_addr(4)).expect("node 4 is a member");
        assert_eq!((m.state_name(), m.id), ("down", 0), "node {id}");
        same_owners(id, &before, &live_owners(tc.store(id)));
    }
    // Then start it: it loads, and exactly its share moves to it.
    tc.start_node(4, fourth.unwrap());
    tc.wait_view(&[1, 2, 3, 4]).await;
    let converged = tc.wait_converged().await;
    assert_eq!(converged.len(), before.len(), "node 4 holds everything");
    let mut with_four = BTreeMap::new();
    for id in tc.ids() {
        let after = live_owners(tc.store(id));
        let moved = only_share_moved(id, &before, &after, |_, now| now == 4);
        assert!(moved > 0, "node 4 took a share");
        with_four = after;
    }

    // Remove node 2: it leaves (hands its keys over), then leaves the others' lists.
    tc.stop_gracefully(2).await;
    for id in [1, 3, 4] {
        tc.set_members(id, &[1, 3, 4]).await;
    }
    tc.wait_view(&[1, 3, 4]).await;
    for id in [1, 3, 4] {
        assert!(
            member(tc.cluster(id), tc.peer_addr(2)).is_none(),
            "node {id}"
        );
        let status = tc.cluster(id).status();
        assert_eq!(status.members.len(), 3, "node {id}: itself and two members");
        only_share_moved(id, &with_four, &live_owners(tc.store(id)), |was, now| {
            was == 2 && now != 2
        });
    }
    tc.wait_converged().await;
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_whose_lists_differ_still_form_one_cluster() {
    let _serial = serial().await;
    // A change of the list rolled out the other way round: node 4 starts with the new list
    // while the others still have the old one.
    let (mut configs, listeners) = bind_nodes(4, |_| {}).await;
    let three: Vec<_> = configs[..3].iter().map(|c| c.peer_listen.into()).collect();
    for c in &mut configs[..3] {
        c.members = three.clone();
    }
    let mut listeners: Vec<_> = listeners.into_iter().map(Some).collect();
    let fourth = listeners[3].take();
    let mut tc = TestCluster::spawn(configs, listeners);
    tc.wait_view(&[1, 2, 3]).await;
    register_via(&tc, 1, &instances(23, 300)).await;
    tc.wait_converged().await;

    tc.start_node(4, fourth.unwrap());
    // Node 4 is let in (the handshake checks the cluster's name and token, not the list): it
    // loads and sees every node; the others do not count it yet.
    eventually("node 4 ready with all four in its view", || {
        let mut live = tc.cluster(4).live_view();
        live.sort_unstable();
        tc.node(4).is_ready() && live == [1, 2, 3, 4]
    })
    .await;
    for id in [1, 2, 3] {
        let mut live = tc.cluster(id).live_view();
        live.sort_unstable();
        assert_eq!(live, [1, 2, 3], "node {id}");
    }
    // Writes through the new node and through the old ones are applied by their owners and
    // reach every node that lists them; node 4, in no list yet, is sent nobody's sync.
    register_via(&tc, 4, &instances(24, 300)).await;
    register_via(&tc, 2, &instances(25, 300)).await;
    assert_eq!(tc.wait_converged_among(&[1, 2, 3]).await.len(), 900);

    // The rollout completes: one view, one set of owners, and the digests bring node 4 what
    // it missed.
    for id in [1, 2, 3] {
        tc.set_members(id, &[1, 2, 3, 4]).await;
    }
    tc.wait_view(&[1, 2, 3, 4]).await;
    assert_eq!(tc.wait_converged().await.len(), 900);
    let owners = live_owners(tc.store(1));
    for id in tc.ids() {
        same_owners(id, &owners, &live_owners(tc.store(id)));
    }
    tc.shutdown().await;
}
