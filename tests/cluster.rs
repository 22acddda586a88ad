//! Multi-node tests: several nodes in one process over real loopback sockets (3 and 5 nodes,
//! ports 0), each test checking a behaviour users of the registry rely on — a write at any node
//! is seen at every node, writes reach their owner, sync is batched, anti-entropy repairs what
//! sync lost or a replica got wrong, a dead node's keys move to survivors without losing live
//! instances or keeping dead ones, a restarted node serves only after loading, a peer with the
//! wrong token stays out, and a dropped client session is seen unhealthy everywhere.
//!
//! The tests run one at a time (see `cluster_support::serial`); every wait polls with a generous
//! deadline, and no test asserts how fast something happened. Partitions are not simulated here
//! (loopback links cannot be cut in one process).

mod cluster_support;

use std::time::Duration;

use cluster_support::*;
use distro::api::Rejection;
use distro::model::{DIGEST_BUCKETS, Instance, InstanceKey, NodeId, Version};

use distro::store::digest::{BucketSet, bucket_of};
use distro::wire::{ErrorCode, HEADER_LEN, LEN_PREFIX, Message, Query, Register, SyncRecord};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Registers `instances` through node `at`'s write path (forwarded to their owners), in frames
/// of at most the batch limit, not session-bound. Retries what the SDK retries (a forward that
/// timed out or lost its link answers "retry"), a few times, saying so.
async fn register_via(tc: &TestCluster, at: NodeId, instances: &[Instance]) {
    for chunk in instances.chunks(distro::model::BATCH_INSTANCES_MAX) {
        let mut attempt = 1;
        loop {
            match tc.cluster(at).register(chunk, 0).await {
                Ok(_) => break,
                Err(e) if attempt < 5 && Rejection::from(e.clone()).is_retryable() => {
                    eprintln!("register via node {at}, attempt {attempt}: {e}; retrying");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("register via node {at}: {e}"),
            }
        }
    }
}

fn query(svc: &distro::model::ServiceName, healthy_only: bool) -> Message {
    Message::Query(Query {
        name: svc.clone(),
        cluster: "".into(),
        healthy_only,
    })
}

/// The `ip:port`s of a snapshot answered by a client query, sorted.
fn addrs(snap: &distro::model::ServiceSnapshot) -> Vec<String> {
    let mut v: Vec<String> = snap
        .instances
        .iter()
        .map(|i| format!("{}:{}", i.ip, i.port))
        .collect();
    v.sort();
    v
}

fn addrs_of_keys<'a>(keys: impl IntoIterator<Item = &'a InstanceKey>) -> Vec<String> {
    let mut v: Vec<String> = keys
        .into_iter()
        .map(|k| format!("{}:{}", k.ip, k.port))
        .collect();
    v.sort();
    v
}

/// A record as its owner would send it, for edits made behind the protocol's back.
fn record(k: &InstanceKey, version: Version, alive: bool) -> SyncRecord {
    SyncRecord {
        key: k.clone(),
        version,
        alive,
        healthy: true,
        enabled: true,
        lapsed: false,
        weight: if alive { 1.0 } else { 0.0 },
        lease: long_lease(),
        session: 0,
        metadata: Vec::new(),
    }
}

// ---- writes reach everyone ------------------------------------------------------------------

async fn a_write_at_any_node_is_visible_at_every_node(n: usize) {
    let _serial = serial().await;
    let tc = TestCluster::start(n).await;
    let svc = name(&format!("visible-{n}"));
    let ids = tc.ids();
    // One instance registered at each node (by hand, so nothing beats or re-registers it).
    let keys: Vec<InstanceKey> = ids
        .iter()
        .map(|&id| key(&svc, &ip_of(1, id as u32), 7000))
        .collect();
    for (&id, k) in ids.iter().zip(&keys) {
        let (mut raw, _) = Raw::open(tc.addr(id)).await;
        let reg = Message::Register(Register {
            session_bound: false,
            instances: vec![inst(k, long_lease())],
        });
        assert_eq!(
            raw.call(&reg).await,
            Message::Ack(1),
            "register at node {id}"
        );
    }
    eventually("every node to hold every instance", || {
        ids.iter()
            .all(|&id| keys.iter().all(|k| is_live(tc.store(id), k)))
    })
    .await;
    // Readers at every node see all of them through the SDK.
    let want = addrs_of_keys(&keys);
    for &id in &ids {
        let c = tc.client(id).await;
        let snap = c.query(&svc, false).await.unwrap();
        assert_eq!(addrs(&snap), want, "query at node {id}");
        c.close();
    }
    // A deregistration at a node other than the one that took the write reaches every node.
    for (i, k) in keys.iter().enumerate() {
        let at = ids[(i + 1) % n];
        let (mut raw, _) = Raw::open(tc.addr(at)).await;
        assert_eq!(
            raw.call(&Message::Deregister(vec![k.clone()])).await,
            Message::Ack(1),
            "deregister {} at node {at}",
            key_string(k)
        );
    }
    eventually("every node to drop every instance", || {
        ids.iter()
            .all(|&id| keys.iter().all(|k| !is_live(tc.store(id), k)))
    })
    .await;
    for &id in &ids {
        let c = tc.client(id).await;
        assert!(c.query(&svc, false).await.unwrap().instances.is_empty());
        c.close();
    }
    tc.wait_converged().await;
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_at_any_of_3_nodes_is_visible_at_every_node() {
    a_write_at_any_node_is_visible_at_every_node(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_at_any_of_5_nodes_is_visible_at_every_node() {
    a_write_at_any_node_is_visible_at_every_node(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_non_owner_is_applied_by_the_owner_before_the_client_gets_its_answer() {
    let _serial = serial().await;
    let tc = TestCluster::start(3).await;
    let (a, b) = (1, 2);
    let svc = name("forward");
    let view = tc.store(a).ownership();
    let k = keys_owned_by(&view, b, &svc, 2, 1).remove(0);
    let c = tc.client(a).await;
    assert_eq!(c.owner(&k.ip, k.port).await.unwrap(), b, "distroctl owner");
    let forwards = tc.cluster(a).stats.snapshot().forwards;

    c.register(inst(&k, long_lease())).await.unwrap();
    // The answer came after the owner applied it: the owner holds it now, as its own write.
    let rec = tc
        .store(b)
        .get(&k)
        .expect("the owner holds the write when the client is answered");
    assert!(rec.alive);
    assert_eq!(rec.version.origin, b, "the owner made the write");
    assert_eq!(rec.owner, b);
    assert!(tc.cluster(a).stats.snapshot().forwards > forwards);
    // The node that took the request learns it from the owner's sync, like everyone else.
    eventually("every node to hold the owner's version", || {
        tc.ids().iter().all(|&id| {
            tc.store(id)
                .get(&k)
                .is_some_and(|r| r.version == rec.version)
        })
    })
    .await;

    // A batch spanning every owner: each owner holds its share when the client is answered.
    let batch: Vec<InstanceKey> = tc
        .ids()
        .iter()
        .flat_map(|&o| keys_owned_by(&view, o, &svc, 3, 5))
        .collect();
    c.register_batch(batch.iter().map(|k| inst(k, long_lease())).collect())
        .await
        .unwrap();
    for k in &batch {
        let owner = view.owner(&k.ip, k.port);
        let rec = tc.store(owner).get(k).expect("each owner holds its share");
        assert!(
            rec.alive && rec.version.origin == owner,
            "{}",
            key_string(k)
        );
    }

    // A deregistration is forwarded the same way: the owner's tombstone is in place at once.
    assert!(c.deregister(&k).await.unwrap(), "the owner had it");
    let tomb = tc.store(b).get(&k).expect("a tombstone");
    assert!(!tomb.alive && tomb.version.origin == b && tomb.version > rec.version);
    eventually("every node to drop it", || {
        tc.ids().iter().all(|&id| !is_live(tc.store(id), &k))
    })
    .await;
    c.close();
    tc.wait_converged().await;
    tc.shutdown().await;
}

// ---- batched sync ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_writes_travel_to_the_peers_in_few_sync_frames() {
    let _serial = serial().await;
    let tc = TestCluster::start(3).await;
    let owner: NodeId = 1;
    let peers = 2u64;
    let svc = name("batching");
    let keys = keys_owned_by(&tc.store(owner).ownership(), owner, &svc, 4, 2_000);
    let before = tc.cluster(owner).stats.snapshot();

    // 32 writers over 4 connections, each sending single registrations back to back.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(tc.client(owner).await);
    }
    let writers = 32;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let c = clients[w % clients.len()].clone();
        let mine: Vec<InstanceKey> = keys.iter().skip(w).step_by(writers).cloned().collect();
        tasks.push(tokio::spawn(async move {
            for k in mine {
                c.register(inst(&k, long_lease())).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eventually("every node to hold all 2,000 instances", || {
        tc.ids()
            .iter()
            .all(|&id| keys.iter().all(|k| is_live(tc.store(id), k)))
    })
    .await;

    let after = tc.cluster(owner).stats.snapshot();
    let frames = after.sync_frames_sent - before.sync_frames_sent;
    let records = after.sync_records_sent - before.sync_records_sent;
    eprintln!(
        "2000 writes: {records} records synced in {frames} frames ({} per peer, {:.1} records per frame)",
        frames / peers,
        records as f64 * peers as f64 / frames.max(1) as f64
    );
    assert!(records >= 2_000, "only {records} records synced");
    assert!(
        frames / peers <= 2_000 / 4,
        "{frames} sync frames to {peers} peers for 2000 writes: not batched"
    );
    assert_eq!(
        after.sync_frames_dropped, before.sync_frames_dropped,
        "no sync frame was dropped"
    );
    for c in &clients {
        c.close();
    }
    tc.shutdown().await;
}

// ---- anti-entropy ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_edited_behind_the_protocols_back_is_repaired_from_the_differing_buckets_only() {
    let _serial = serial().await;
    let tc = TestCluster::start(3).await;
    let (owner, replica, other): (NodeId, NodeId, NodeId) = (1, 2, 3);
    let svc = name("edited");
    let view = tc.store(owner).ownership();
    let keys = keys_owned_by(&view, owner, &svc, 5, 20);
    register_via(
        &tc,
        owner,
        &keys
            .iter()
            .map(|k| inst(k, long_lease()))
            .collect::<Vec<_>>(),
    )
    .await;
    let good = tc.wait_converged().await;
    let before: Vec<_> = tc
        .ids()
        .iter()
        .map(|&id| tc.cluster(id).stats.snapshot())
        .collect();

    // Delete one instance on the replica without a tombstone (as a buggy pull would).
    let victim = &keys[0];
    let rec = tc.store(replica).get(victim).unwrap();
    let bucket: BucketSet = [bucket_of(rec.key_hash)].into_iter().collect();
    let dropped =
        tc.store(replica)
            .drop_missing(owner, &bucket, &hashbrown::HashSet::<u64>::new(), u64::MAX);
    assert!(dropped >= 1);
    assert!(!is_live(tc.store(replica), victim));
    // And give it an instance its owner does not have, written long ago: older than any
    // tombstone's retention, so the owner may have deleted it and forgotten the tombstone.
    // (A young one the owner lacks is a write the owner never learned of: it is sent to the
    // owner instead, not dropped.)
    let ghost = keys_owned_by(&view, owner, &svc, 6, 1).remove(0);
    let ghost_lease = lease(100, 400, 800);
    let long_ago_ms = tc.store(owner).clock().now_ms()
        - ghost_lease.expire_ms as u64
        - distro::store::TOMBSTONE_GRACE_MS
        - 120_000;
    let v = Version {
        // A hybrid logical clock value: physical milliseconds above a 16-bit counter.
        hlc: long_ago_ms << 16,
        origin: owner,
    };
    let mut old = record(&ghost, v, true);
    old.lease = ghost_lease;
    assert!(tc.store(replica).merge(&old));

    let repaired = tc.wait_converged().await;
    assert!(
        repaired == good,
        "the replica holds the owner's data again; (key, now, before): {:?}",
        map_diff(&repaired, &good)
    );
    assert!(!is_live(tc.store(replica), &ghost));
    let after = tc.cluster(replica).stats.snapshot();
    let b = &before[replica as usize - 1];
    let (pulls, buckets) = (
        after.pulls - b.pulls,
        after.buckets_pulled - b.buckets_pulled,
    );
    eprintln!(
        "repair: {pulls} pulls of {buckets} buckets, {} records repaired, {} dropped",
        after.records_repaired - b.records_repaired,
        after.records_dropped_by_pull - b.records_dropped_by_pull
    );
    assert!(pulls >= 1);
    assert!(
        after.records_repaired > b.records_repaired,
        "the deleted one came back by a pull"
    );
    assert!(
        after.records_dropped_by_pull > b.records_dropped_by_pull,
        "the ghost was removed by a pull"
    );
    assert!(
        buckets <= 2 * pulls,
        "each pull asks for the (at most 2) differing buckets only: {buckets} buckets in {pulls} pulls"
    );
    // The nodes whose copies never differed pulled nothing.
    for id in [owner, other] {
        let s = tc.cluster(id).stats.snapshot();
        assert_eq!(s.pulls, before[id as usize - 1].pulls, "node {id} pulled");
    }
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_holding_a_newer_version_than_the_owner_converges_with_it() {
    let _serial = serial().await;
    let tc = TestCluster::start(3).await;
    let (owner, replica): (NodeId, NodeId) = (1, 2);
    let svc = name("newer");
    let view = tc.store(owner).ownership();
    let keys = keys_owned_by(&view, owner, &svc, 7, 10);
    register_via(
        &tc,
        owner,
        &keys
            .iter()
            .map(|k| inst(k, long_lease()))
            .collect::<Vec<_>>(),
    )
    .await;
    tc.wait_converged().await;

    // The replica holds a newer version of one record than its owner does (a write whose
    // handoff to the owner was lost, the other side of a healed partition): last writer wins,
    // so every node must end up with it, and no node may pull that bucket forever.
    let k = &keys[0];
    let cur = tc.store(replica).get(k).unwrap();
    let mut newer = record(
        k,
        Version {
            hlc: cur.version.hlc + 1_000,
            origin: replica,
        },
        true,
    );
    newer.weight = 7.0;
    assert!(tc.store(replica).merge(&newer));
    // And a newer tombstone of another (a delete the owner missed).
    let k2 = &keys[1];
    let cur2 = tc.store(replica).get(k2).unwrap();
    let tomb = record(
        k2,
        Version {
            hlc: cur2.version.hlc + 1_000,
            origin: replica,
        },
        false,
    );
    assert!(tc.store(replica).merge(&tomb));

    let converged = tc.wait_converged().await;
    assert_eq!(converged.get(&key_string(k)), Some(&newer.version));
    assert!(!converged.contains_key(&key_string(k2)));
    assert_eq!(tc.store(owner).get(k).unwrap().weight, 7.0);
    assert!(tc.cluster(replica).stats.snapshot().records_pushed_to_owner >= 2);
    // Once converged, the digests match: no more pulls.
    let pulls = tc.cluster(replica).stats.snapshot().pulls;
    tokio::time::sleep(Duration::from_millis(3 * 500)).await;
    assert_eq!(
        tc.cluster(replica).stats.snapshot().pulls,
        pulls,
        "converged nodes keep pulling"
    );
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_whose_sync_was_lost_reach_the_replicas_by_digest_and_pull() {
    let _serial = serial().await;
    let tc = TestCluster::start(3).await;
    let owner: NodeId = 1;
    let svc = name("lost-sync");
    let view = tc.store(owner).ownership();
    let keys = keys_owned_by(&view, owner, &svc, 8, 10);
    register_via(
        &tc,
        owner,
        &keys
            .iter()
            .map(|k| inst(k, long_lease()))
            .collect::<Vec<_>>(),
    )
    .await;
    tc.wait_converged().await;
    let before: Vec<_> = tc
        .ids()
        .iter()
        .map(|&id| tc.cluster(id).stats.snapshot())
        .collect();

    // The owner makes a write and a delete that are never synced (a merge does not sync): as if
    // both sync batches were lost on the way.
    let store = tc.store(owner);
    let fresh = keys_owned_by(&view, owner, &svc, 9, 1).remove(0);
    let v1 = Version {
        hlc: store.hlc().tick(store.clock().now_ms()),
        origin: owner,
    };
    assert!(store.merge(&record(&fresh, v1, true)));
    let gone = &keys[3];
    let v2 = Version {
        hlc: store.hlc().tick(store.clock().now_ms()),
        origin: owner,
    };
    assert!(store.merge(&record(gone, v2, false)));
    assert_eq!(
        tc.cluster(owner).stats.snapshot().sync_records_sent,
        before[owner as usize - 1].sync_records_sent,
        "nothing was synced"
    );

    let converged = tc.wait_converged().await;
    assert_eq!(converged.get(&key_string(&fresh)), Some(&v1));
    assert!(!converged.contains_key(&key_string(gone)));
    for id in [2, 3] {
        let (b, a) = (&before[id as usize - 1], tc.cluster(id).stats.snapshot());
        let (pulls, buckets) = (a.pulls - b.pulls, a.buckets_pulled - b.buckets_pulled);
        eprintln!(
            "node {id}: {pulls} pulls of {buckets} buckets, {} repaired",
            a.records_repaired - b.records_repaired
        );
        assert!(a.records_repaired >= b.records_repaired + 2, "node {id}");
        assert!(
            pulls >= 1 && buckets <= 2 * pulls,
            "node {id}: {buckets} buckets in {pulls} pulls"
        );
    }
    tc.shutdown().await;
}

// ---- a node dies and comes back -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_keys_move_to_survivors_live_instances_stay_and_dead_ones_expire() {
    let _serial = serial().await;
    let mut tc = TestCluster::start(5).await;
    let victim: NodeId = 5;
    let survivors: Vec<NodeId> = vec![1, 2, 3, 4];
    let svc = name("kill");
    let short = lease(100, 400, 800);
    let view = tc.store(1).ownership();
    let per_owner = |tag: u8| -> Vec<InstanceKey> {
        tc.ids()
            .iter()
            .flat_map(|&o| keys_owned_by(&view, o, &svc, tag, 3))
            .collect()
    };
    // A client that lives on, at a survivor.
    let live_keys = per_owner(10);
    // Clients that die: one connected to the node that dies under it, one closed at a survivor
    // (session-bound: marked unhealthy at once), one not session-bound that just stops beating.
    let dead_on_victim = per_owner(11);
    let dead_closed = per_owner(12);
    let dead_unbound = per_owner(13);
    let insts =
        |keys: &[InstanceKey]| -> Vec<Instance> { keys.iter().map(|k| inst(k, short)).collect() };
    let live = tc.client(1).await;
    live.register_batch(insts(&live_keys)).await.unwrap();
    let on_victim = tc.client(victim).await;
    on_victim
        .register_batch(insts(&dead_on_victim))
        .await
        .unwrap();
    let closed = tc.client(3).await;
    closed.register_batch(insts(&dead_closed)).await.unwrap();
    let unbound = tc.client(2).await;
    unbound
        .register_with(insts(&dead_unbound), false)
        .await
        .unwrap();
    let dead: Vec<&InstanceKey> = dead_on_victim
        .iter()
        .chain(&dead_closed)
        .chain(&dead_unbound)
        .collect();
    eventually("every node to hold every instance", || {
        tc.ids().iter().all(|&id| {
            live_keys
                .iter()
                .chain(dead.iter().copied())
                .all(|k| is_live(tc.store(id), k))
        })
    })
    .await;

    unbound.close();
    tc.stop(victim).await;
    on_victim.close();
    closed.close();
    let killed = Instant::now();

    // Until the survivors agree the victim is gone and every dead client's instance is gone
    // from every survivor, the live client's instances never leave any survivor.
    let deadline = killed + DEADLINE;
    loop {
        for &id in &survivors {
            for k in &live_keys {
                assert!(
                    is_live(tc.store(id), k),
                    "live client's {} vanished from node {id} {:?} after the kill",
                    key_string(k),
                    killed.elapsed()
                );
            }
        }
        let views = survivors
            .iter()
            .all(|&id| tc.store(id).ownership().live() == survivors.as_slice());
        let mut zombies: Vec<(NodeId, String)> = Vec::new();
        for &id in &survivors {
            for k in dead.iter().filter(|k| is_live(tc.store(id), k)) {
                zombies.push((id, key_string(k)));
            }
        }
        if views && zombies.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            panic!("views agree: {views}; instances of dead clients still held: {zombies:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "dead clients' instances gone from every survivor {:?} after the kill (expire-after 800 ms)",
        killed.elapsed()
    );

    // The victim's keys belong to survivors, as `distroctl cluster` shows.
    for &id in &survivors {
        assert!(live_owners(tc.store(id)).values().all(|&o| o != victim));
        let status = tc.cluster(id).status();
        let m = status.members.iter().find(|m| m.id == victim).unwrap();
        assert!(!m.up && m.owned == 0, "node {id} sees the victim as {m:?}");
        let owned: u64 = status.members.iter().map(|m| m.owned).sum();
        assert_eq!(
            owned, status.instances,
            "node {id}: every instance has a live owner"
        );
    }
    for k in &live_keys {
        assert_ne!(tc.store(1).ownership().owner(&k.ip, k.port), victim);
    }
    // Well past another expire-after, the live client's instances are still everywhere.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    tc.wait_converged().await;
    for &id in &survivors {
        assert!(
            live_keys.iter().all(|k| is_live(tc.store(id), k)),
            "node {id}"
        );
    }
    live.close();
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departure_moves_exactly_the_departed_nodes_keys_and_a_return_moves_them_back() {
    let _serial = serial().await;
    let mut tc = TestCluster::start(5).await;
    let gone: NodeId = 3;
    let survivors: Vec<NodeId> = vec![1, 2, 4, 5];
    let svc = name("moves");
    let insts: Vec<Instance> = (0..1_000)
        .map(|i| inst(&key(&svc, &ip_of(14, i), 9000), long_lease()))
        .collect();
    register_via(&tc, 1, &insts).await;
    let versions = tc.wait_converged().await;
    let before = live_owners(tc.store(1));
    for id in tc.ids() {
        assert_eq!(
            live_owners(tc.store(id)),
            before,
            "node {id} agrees on owners"
        );
    }
    let theirs = before.values().filter(|&&o| o == gone).count();
    assert!(theirs > 0);

    tc.stop(gone).await;
    tc.wait_view(&survivors).await;
    for &id in &survivors {
        let after = live_owners(tc.store(id));
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>(),
            "node {id}: no instance vanished"
        );
        let mut moved = 0;
        for (k, &was) in &before {
            let now = after[k];
            if was == gone {
                moved += 1;
                assert!(survivors.contains(&now), "node {id}: {k} went to {now}");
            } else {
                assert_eq!(
                    now, was,
                    "node {id}: {k} moved from {was} to {now} though {gone} left"
                );
            }
        }
        assert_eq!(moved, theirs);
    }
    assert_eq!(tc.wait_converged().await, versions, "no version changed");

    // It comes back: it takes back exactly its old share.
    tc.restart(gone).await;
    tc.wait_formed().await;
    assert_eq!(tc.wait_converged().await, versions);
    for id in tc.ids() {
        assert_eq!(live_owners(tc.store(id)), before, "node {id}");
    }
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_serves_only_after_it_loaded_and_then_holds_the_same_data() {
    let _serial = serial().await;
    let mut tc = TestCluster::start(3).await;
    let restarted: NodeId = 3;
    let bulk = name("restart-bulk");
    let insts: Vec<Instance> = (0..20_000)
        .map(|i| {
            inst(
                &key(&bulk, &ip_of(15, i / 4), 9000 + (i % 4) as u16),
                long_lease(),
            )
        })
        .collect();
    register_via(&tc, 1, &insts).await;
    let live_svc = name("restart-live");
    let view = tc.store(1).ownership();
    let live_keys: Vec<InstanceKey> = tc
        .ids()
        .iter()
        .flat_map(|&o| keys_owned_by(&view, o, &live_svc, 16, 3))
        .collect();
    let live = tc.client(1).await;
    live.register_batch(
        live_keys
            .iter()
            .map(|k| inst(k, lease(100, 400, 800)))
            .collect(),
    )
    .await
    .unwrap();
    tc.wait_converged().await;

    tc.stop(restarted).await;
    tc.wait_view(&[1, 2]).await;
    // The data changes while it is away: deletions and new instances.
    let removed: Vec<InstanceKey> = insts[..100].iter().map(|i| i.key.clone()).collect();
    assert_eq!(tc.cluster(2).deregister(&removed).await.unwrap(), 100);
    let added: Vec<Instance> = (0..100)
        .map(|i| inst(&key(&bulk, &ip_of(17, i), 9000), long_lease()))
        .collect();
    register_via(&tc, 2, &added).await;
    let expected = tc.wait_converged().await;
    let bulk_expected = expected
        .keys()
        .filter(|k| k.contains("/restart-bulk/"))
        .count();

    tc.restart(restarted).await;
    let node = tc.node(restarted).clone();
    assert!(
        !node.is_ready(),
        "a restarted member is not ready before it loaded"
    );
    // A reader at the restarting node gets either "not ready" or the complete list, never a
    // partial one.
    let addr = tc.addr(restarted);
    let reader = tokio::spawn({
        let bulk = bulk.clone();
        async move {
            let mut refused = 0;
            loop {
                let (mut raw, _) = Raw::open(addr).await;
                match raw.call(&query(&bulk, false)).await {
                    Message::Error(e) => {
                        assert_eq!(e.kind(), Some(ErrorCode::NotReady), "{e:?}");
                        refused += 1;
                    }
                    Message::QueryResult(s) => return (refused, s.instances.len()),
                    other => panic!("unexpected answer {other:?}"),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    // Watch the moment it turns ready: by then it holds everything.
    let deadline = Instant::now() + DEADLINE;
    while !node.is_ready() {
        assert!(
            Instant::now() < deadline,
            "the restarted node never got ready"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let held_when_ready = node.store.len();
    let (refused, listed) = reader.await.unwrap();
    eprintln!(
        "restart: {held_when_ready} of {} instances held when ready; reader refused {refused} times, then listed {listed}",
        expected.len()
    );
    assert_eq!(
        held_when_ready,
        expected.len(),
        "ready before the load completed"
    );
    assert_eq!(listed, bulk_expected, "a reader got a partial list");
    let stats = tc.cluster(restarted).stats.snapshot();
    assert!(stats.snapshot_records_loaded as usize >= expected.len());

    tc.wait_formed().await;
    let after = tc.wait_converged().await;
    assert_eq!(after.len(), expected.len());
    for k in &live_keys {
        assert!(after.contains_key(&key_string(k)), "{} lost", key_string(k));
    }
    for k in &removed {
        assert!(
            !after.contains_key(&key_string(k)),
            "{} came back",
            key_string(k)
        );
    }
    live.close();
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_restarting_together_load_from_the_node_that_has_the_data() {
    let _serial = serial().await;
    let mut tc = TestCluster::start(3).await;
    let svc = name("restart-two");
    let insts: Vec<Instance> = (0..3_000)
        .map(|i| inst(&key(&svc, &ip_of(21, i), 9000), long_lease()))
        .collect();
    register_via(&tc, 2, &insts).await;
    let expected = tc.wait_converged().await;

    // Two of three go down; the one left holds everything.
    tc.stop(1).await;
    tc.stop(3).await;
    tc.wait_view(&[2]).await;
    // Both come back at once: each may reach the other (empty, still loading) first. Neither
    // may take the other's empty store for the cluster's data.
    tc.restart(1).await;
    tc.restart(3).await;
    let (n1, n3) = (tc.node(1).clone(), tc.node(3).clone());
    let mut held_when_ready: [Option<usize>; 2] = [None, None];
    let deadline = Instant::now() + DEADLINE;
    while held_when_ready.iter().any(Option::is_none) {
        for (slot, node) in held_when_ready.iter_mut().zip([&n1, &n3]) {
            if slot.is_none() && node.is_ready() {
                *slot = Some(node.store.len());
            }
        }
        assert!(
            Instant::now() < deadline,
            "the restarted nodes never got ready"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    eprintln!(
        "restarted together: held {held_when_ready:?} of {} when ready",
        expected.len()
    );
    assert_eq!(
        held_when_ready,
        [Some(expected.len()), Some(expected.len())],
        "a node turned ready before it held the cluster's data"
    );
    tc.wait_formed().await;
    assert_eq!(tc.wait_converged().await, expected);
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_reaches_no_peer_refuses_clients_until_it_serves_alone() {
    let _serial = serial().await;
    // Three members configured, one started: it waits twice the member timeout for a peer.
    let (configs, listeners) = bind_nodes(3, |c| c.member_timeout_ms = 3_000).await;
    let only_first = listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| (i == 0).then_some(l))
        .collect();
    let tc = TestCluster::spawn(configs, only_first);
    let node = tc.node(1).clone();
    assert!(!node.is_ready());
    let (mut raw, hello) = Raw::open(tc.addr(1)).await;
    assert!(!hello.ready, "Hello says it is not ready");
    match raw.call(&query(&name("alone"), false)).await {
        Message::Error(e) => assert_eq!(e.kind(), Some(ErrorCode::NotReady), "{e:?}"),
        other => panic!("a loading node answered {other:?}"),
    }
    // The SDK does not settle on a node that is not ready.
    let err = distro::client::Client::connect(client_config(&[tc.addr(1)]))
        .await
        .err()
        .expect("the SDK skips a node that is not ready");
    assert!(
        matches!(err, distro::client::ClientError::NoServer { .. }),
        "{err}"
    );
    eventually("the lone member to serve alone", || node.is_ready()).await;
    match raw.call(&query(&name("alone"), false)).await {
        Message::QueryResult(s) => assert!(s.instances.is_empty()),
        other => panic!("a ready node answered {other:?}"),
    }
    tc.shutdown().await;
}

// ---- authentication -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_the_wrong_token_is_kept_out() {
    let _serial = serial().await;
    // Four members configured alike; the fourth knows a different token.
    let (mut configs, listeners) = bind_nodes(4, |_| {}).await;
    configs[3].cluster_token = Some("wrong-token-456".into());
    let impostor_addr = configs[3].peer_listen;
    let tc = TestCluster::spawn(configs, listeners.into_iter().map(Some).collect());
    let real: Vec<NodeId> = vec![1, 2, 3];
    let impostor: NodeId = 4;
    tc.wait_view(&real).await;
    eventually("the impostor to serve alone", || {
        tc.node(impostor).is_ready()
    })
    .await;

    // Over many ping rounds and member timeouts neither side ever lets the other in.
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        for &id in &real {
            assert!(!tc.cluster(id).live_view().contains(&impostor), "node {id}");
            let members = tc.cluster(id).members();
            let m = members
                .iter()
                .find(|m| m.addr == impostor_addr.into())
                .unwrap();
            assert!(!m.is_up() && m.id() == 0, "node {id} let the impostor in");
        }
        assert_eq!(tc.cluster(impostor).live_view(), vec![impostor]);
        assert!(
            tc.cluster(impostor)
                .members()
                .iter()
                .all(|m| !m.is_up() && m.id() == 0)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for &id in &real {
        let status = tc.cluster(id).status();
        let m = status
            .members
            .iter()
            .find(|m| m.addr.as_str() == impostor_addr.to_string());
        assert!(m.is_some_and(|m| !m.up), "node {id}: {status:?}");
    }

    // The real cluster keeps working, and no data crosses either way.
    let svc = name("token");
    let k = key(&svc, "10.18.0.1", 8000);
    register_via(&tc, 1, &[inst(&k, long_lease())]).await;
    let k4 = key(&svc, "10.18.0.2", 8000);
    register_via(&tc, impostor, &[inst(&k4, long_lease())]).await;
    eventually("the real nodes to hold the write", || {
        real.iter().all(|&id| is_live(tc.store(id), &k))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(!is_live(tc.store(impostor), &k));
    assert!(is_live(tc.store(impostor), &k4));
    for &id in &real {
        assert!(
            !is_live(tc.store(id), &k4),
            "node {id} took the impostor's data"
        );
    }
    tc.wait_converged_among(&real).await;
    tc.shutdown().await;
}

// ---- sessions -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_session_marks_its_instances_unhealthy_on_every_node_at_once() {
    let _serial = serial().await;
    let tc = TestCluster::start(3).await;
    let (a, b, reader) = (1, 2, 3);
    let svc = name("session-drop");
    let view = tc.store(a).ownership();
    let k = keys_owned_by(&view, b, &svc, 19, 1).remove(0);
    // The lease would not make it unhealthy within the test: only the session drop can.
    let l = lease(1_000, 60_000, 120_000);
    let c = tc.client(a).await;
    c.register(inst(&k, l)).await.unwrap();
    eventually("every node to report it healthy", || {
        tc.ids().iter().all(|&id| {
            tc.store(id)
                .get(&k)
                .is_some_and(|r| r.alive && r.reported_healthy())
        })
    })
    .await;
    let watcher = tc.client(reader).await;
    let healthy = watcher.query(&svc, true).await.unwrap();
    assert_eq!(addrs(&healthy), addrs_of_keys([&k]));

    c.close();
    let dropped = Instant::now();
    eventually("every node to report it unhealthy", || {
        tc.ids().iter().all(|&id| {
            tc.store(id)
                .get(&k)
                .is_some_and(|r| r.alive && !r.reported_healthy())
        })
    })
    .await;
    eprintln!(
        "unhealthy on every node {:?} after the session dropped",
        dropped.elapsed()
    );
    // The owner made the change, and readers anywhere see it: still listed, not healthy.
    assert_eq!(tc.store(b).get(&k).unwrap().version.origin, b);
    assert!(
        watcher
            .query(&svc, true)
            .await
            .unwrap()
            .instances
            .is_empty()
    );
    let all = watcher.query(&svc, false).await.unwrap();
    assert_eq!(addrs(&all), addrs_of_keys([&k]));
    assert!(!all.instances[0].healthy);
    watcher.close();
    tc.shutdown().await;
}

// ---- bounded verification ------------------------------------------------------------------

/// Fills `store` with `n` instances (100 services), as this node's own writes.
fn fill(store: &distro::store::Store, n: u32, tag: u8) {
    let services: Vec<_> = (0..100).map(|s| name(&format!("bulk-{tag}-{s}"))).collect();
    for i in 0..n {
        let k = key(
            &services[(i % 100) as usize],
            &format!("10.{tag}.{}.{}", (i >> 8) & 255, i & 255),
            1 + (i >> 16) as u16,
        );
        store.register(&inst(&k, long_lease()), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_round_costs_the_same_whatever_the_number_of_instances() {
    // The design's promise: a digest is O(buckets), not O(instances) — 12 bytes per bucket,
    // per peer per round, at 0 instances as at 1,000,000 (`distro-bench` measures the rest).
    let _serial = serial().await;
    let tc = TestCluster::start(3).await;
    let frame_len = LEN_PREFIX + HEADER_LEN + 2 + 8 + 2 + DIGEST_BUCKETS * 12;
    assert_eq!(tc.cluster(1).digest_frame().len(), frame_len);
    fill(tc.store(1), 20_000, 100);
    assert_eq!(tc.cluster(1).digest_frame().len(), frame_len);
    // And the peers verify by it: they converge on node 1's records without a full copy.
    eventually("the peers to hold node 1's writes", || {
        tc.ids().iter().all(|&id| tc.store(id).len() == 20_000)
    })
    .await;
    tc.shutdown().await;
}

// ---- pipelining ---------------------------------------------------------------------------

/// Sends `requests` (request ids 1, 2, ...) to the client port at `addr` in one write, without
/// waiting in between, and answers each request's id with its answer, as they came back.
async fn pipeline(addr: std::net::SocketAddr, requests: &[Message]) -> Vec<(u32, Message)> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::FramedRead;

    let mut out = bytes::BytesMut::new();
    for (id, msg) in (1u32..).zip(requests) {
        distro::wire::encode_frame_into(&mut out, id, 0, msg);
    }
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(&out).await.unwrap();
    let (rd, _wr) = stream.into_split();
    let mut frames = FramedRead::new(rd, distro::wire::FrameCodec::default());
    let mut answers = Vec::with_capacity(requests.len());
    for _ in requests {
        let f = tokio::time::timeout(Duration::from_secs(20), frames.next())
            .await
            .expect("every pipelined request is answered")
            .expect("the connection stays open")
            .expect("a good frame");
        answers.push((f.request_id, f.message().unwrap()));
    }
    answers
}

fn register_one(k: &InstanceKey) -> Message {
    Message::Register(Register {
        session_bound: false,
        instances: vec![inst(k, long_lease())],
    })
}

/// A clustered node runs a connection's forwarded writes concurrently, but writes to the same
/// key still apply in the order the client sent them: a pipelined register → deregister →
/// register → deregister of one key, sent to a node that does not own it, ends deregistered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_writes_to_one_key_apply_in_the_order_sent() {
    let _serial = serial().await;
    let tc = TestCluster::start(3).await;
    let svc = name("pipelined");
    let view = tc.store(1).ownership();
    // Keys owned by node 2, written through node 1: every write is forwarded.
    let keys = keys_owned_by(&view, 2, &svc, 9, 20);
    let mut requests = Vec::new();
    let rounds = 4; // register, deregister, register, deregister
    for round in 0..rounds {
        for k in &keys {
            requests.push(if round % 2 == 0 {
                register_one(k)
            } else {
                Message::Deregister(vec![k.clone()])
            });
        }
    }
    // Plus one last register of the first key only: it must end alive.
    requests.push(register_one(&keys[0]));
    let mut answered = std::collections::BTreeSet::new();
    for (id, answer) in pipeline(tc.addr(1), &requests).await {
        match answer {
            Message::Ack(_) => {}
            other => panic!("write {id} answered {other:?}"),
        }
        assert!(answered.insert(id), "answered twice");
    }
    for (i, k) in keys.iter().enumerate() {
        let want_live = i == 0;
        eventually("every node holds the last write of each key", || {
            tc.ids()
                .iter()
                .all(|&n| is_live(tc.store(n), k) == want_live)
        })
        .await;
    }
    assert!(
        tc.cluster(1).stats.snapshot().forwards >= (rounds as u64) * keys.len() as u64 / 2,
        "the writes were forwarded"
    );
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_registrations_through_a_non_owner_share_forward_frames() {
    let _serial = serial().await;
    let tc = TestCluster::start(3).await;
    let svc = name("gathered");
    let view = tc.store(1).ownership();
    // 200 keys owned by node 2, each in a Register frame of its own, pipelined to node 1.
    let keys = keys_owned_by(&view, 2, &svc, 11, 200);
    let before = tc.cluster(1).stats.snapshot().forwards;
    let requests: Vec<Message> = keys.iter().map(register_one).collect();
    for (id, answer) in pipeline(tc.addr(1), &requests).await {
        assert_eq!(answer, Message::Ack(1), "request {id}");
    }
    // Each was applied by the owner before its answer, whatever frame it travelled in.
    for k in &keys {
        let rec = tc
            .store(2)
            .get(k)
            .expect("the owner holds every registration");
        assert!(rec.alive && rec.version.origin == 2, "{}", key_string(k));
    }
    let forwards = tc.cluster(1).stats.snapshot().forwards - before;
    eprintln!("200 pipelined registrations forwarded in {forwards} frames");
    assert!(
        (1..200).contains(&forwards),
        "{forwards} forward frames for 200 pipelined registrations: none were gathered"
    );
    tc.shutdown().await;
}

// ---- pushes ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_of_a_large_service_at_a_replica_gets_deltas_and_ends_with_its_list() {
    use distro::client::{Conn, PushSink, Pushed};
    use distro::model::ServiceSnapshot;
    use std::sync::{Arc, Mutex};

    let _serial = serial().await;
    let tc = TestCluster::start(3).await;
    let svc = name("large-pushed");
    let all: Vec<Instance> = (0..3_000u32)
        .map(|i| inst(&key(&svc, &ip_of(7, i), 8080), long_lease()))
        .collect();
    register_via(&tc, 1, &all).await;
    eventually("every node to hold the 3,000 instances", || {
        tc.ids()
            .iter()
            .all(|&id| all.iter().all(|i| is_live(tc.store(id), &i.key)))
    })
    .await;

    // A subscriber at node 2, seeing every push as it comes.
    let seen: Arc<Mutex<Vec<Pushed>>> = Arc::default();
    let sink: PushSink = {
        let seen = seen.clone();
        Arc::new(move |p| seen.lock().unwrap().push(p))
    };
    let (tasks, closed) = (TaskTracker::new(), CancellationToken::new());
    let conn = Conn::open(
        &distro::net::Tcp,
        &tc.addr(2).to_string(),
        "cluster-test",
        DEADLINE,
        sink,
        &tasks,
        &closed,
    )
    .await
    .expect("connect to node 2");
    let call = |m: Message| {
        let conn = conn.clone();
        async move { conn.call(&m, DEADLINE).await.expect("an answer") }
    };
    assert_eq!(call(Message::Subscribe(svc.clone())).await, Message::Ack(1));

    // Changes made at the other nodes: removals, health changes, new instances.
    let mut lapsed = all[7].clone();
    lapsed.healthy = false;
    register_via(&tc, 3, &[lapsed]).await;
    let gone: Vec<InstanceKey> = all[100..150].iter().map(|i| i.key.clone()).collect();
    tc.cluster(1).deregister(&gone).await.expect("deregister");
    let added: Vec<Instance> = (0..40u32)
        .map(|i| inst(&key(&svc, &ip_of(8, i), 9090), long_lease()))
        .collect();
    register_via(&tc, 3, &added).await;

    // The subscriber's list, pushes applied in order, ends equal to node 2's answer.
    let query = || {
        call(Message::Query(Query {
            name: svc.clone(),
            cluster: "".into(),
            healthy_only: false,
        }))
    };
    let mut list: Option<ServiceSnapshot> = None;
    let (mut fulls, mut deltas) = (0, 0);
    eventually_async(
        "the subscriber's list to be node 2's, with every change",
        async || {
            for p in std::mem::take(&mut *seen.lock().unwrap()) {
                list = Some(match p {
                    Pushed::Full(s) => {
                        fulls += 1;
                        s
                    }
                    Pushed::Delta(d) => {
                        deltas += 1;
                        let held = list.as_ref().expect("a delta after a whole list");
                        held.apply(&d).expect("each delta follows on from the list")
                    }
                });
            }
            let Message::QueryResult(want) = query().await else {
                panic!("a query answer")
            };
            want.instances.len() == 3_000 - 50 + 40 && list.as_ref().is_some_and(|l| *l == want)
        },
    )
    .await;
    assert_eq!(fulls, 1, "only the first push is the whole list");
    assert!(deltas >= 1, "the changes came as deltas");
    let l = list.unwrap();
    assert!(
        !l.instances
            .iter()
            .find(|v| v.ip == all[7].key.ip)
            .unwrap()
            .healthy
    );
    conn.close();
    tc.shutdown().await;
}
