//! One node, real loopback TCP: what an application relies on when it registers, discovers,
//! subscribes and loses its connection. Servers run in-process on port 0; leases are short
//! (down to the 100 ms floor these tests configure) and every wait polls up to a generous
//! deadline instead of sleeping a fixed time.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use distro::client::{ClientError, Subscription};
use distro::model::{Instance, InstanceView, ServiceSnapshot};
use distro::wire::{ErrorCode, Message, Query, Register, encode_frame_into};
use tokio::time::Instant;

fn meta(i: &InstanceView) -> BTreeMap<String, String> {
    i.metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn server_error_code(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::Server { code, .. } => *code,
        _ => None,
    }
}

/// Waits for the next snapshot of `sub` that satisfies `pred`.
async fn next_matching(
    sub: &mut Subscription,
    what: &str,
    pred: impl Fn(&ServiceSnapshot) -> bool,
) -> Arc<ServiceSnapshot> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sub.next()).await {
            Err(_) => panic!("no push with {what} within {DEADLINE:?}"),
            Ok(None) => panic!("subscription ended while waiting for {what}"),
            Ok(Some(s)) if pred(&s) => return s,
            Ok(Some(_)) => {}
        }
    }
}

fn register_msg(session_bound: bool, instances: Vec<Instance>) -> Message {
    Message::Register(Register {
        session_bound,
        instances,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_list_deregister_keep_metadata_weight_and_enabled() {
    let h = start().await;
    let c = client(&[h.addr]).await;
    let svc = name("orders");

    let mut a = inst(&svc, "10.0.0.1", 8080);
    a.weight = 2.5;
    a.metadata = vec![
        ("zone".into(), "eu-1".into()),
        ("version".into(), "1.2.0".into()),
    ];
    let mut b = inst(&svc, "10.0.0.2", 8080);
    b.enabled = false;
    let mut canary = Instance::new(key(&svc, "canary", "10.0.0.3", 9090));
    canary.weight = 0.0;
    c.register(a.clone()).await.unwrap();
    c.register_batch(vec![b.clone(), canary.clone()])
        .await
        .unwrap();

    let snap = c.query(&svc, false).await.unwrap();
    assert_eq!(snap.name, svc);
    assert_eq!(
        addrs_of(&snap),
        ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:9090"]
    );
    let va = find(&snap, "10.0.0.1", 8080).unwrap();
    assert_eq!(va.cluster.as_str(), "DEFAULT");
    assert_eq!(va.weight, 2.5);
    assert!(va.healthy && va.enabled);
    assert_eq!(
        meta(va),
        BTreeMap::from([
            ("version".to_string(), "1.2.0".to_string()),
            ("zone".to_string(), "eu-1".to_string())
        ])
    );
    let vb = find(&snap, "10.0.0.2", 8080).unwrap();
    assert!(vb.healthy, "a disabled instance is still healthy");
    assert!(!vb.enabled);
    assert!(meta(vb).is_empty());
    let vc = find(&snap, "10.0.0.3", 9090).unwrap();
    assert_eq!(vc.cluster.as_str(), "canary");
    assert_eq!(vc.weight, 0.0);
    assert_eq!(h.node.store.len(), 3);

    // Registering again replaces the attributes.
    a.weight = 1.0;
    a.metadata = vec![("zone".into(), "eu-2".into())];
    c.register(a.clone()).await.unwrap();
    let snap = c.query(&svc, false).await.unwrap();
    let va = find(&snap, "10.0.0.1", 8080).unwrap();
    assert_eq!(va.weight, 1.0);
    assert_eq!(
        meta(va),
        BTreeMap::from([("zone".to_string(), "eu-2".to_string())])
    );
    assert_eq!(h.node.store.len(), 3);

    // Deregister removes; a second time there is nothing to remove.
    assert!(c.deregister(&b.key).await.unwrap());
    assert!(!c.deregister(&b.key).await.unwrap());
    let snap = c.query(&svc, false).await.unwrap();
    assert_eq!(addrs_of(&snap), ["10.0.0.1:8080", "10.0.0.3:9090"]);
    assert_eq!(h.node.store.len(), 2);
    assert_eq!(c.held_count(), 2);

    // A service nobody registered is an empty list, not an error.
    let none = c.query(&name("nobody"), false).await.unwrap();
    assert!(none.instances.is_empty());

    assert_eq!(c.deregister_all().await.unwrap(), 2);
    assert!(c.query(&svc, false).await.unwrap().instances.is_empty());
    assert_eq!(h.node.store.len(), 0);
    assert_eq!(c.held_count(), 0);
    c.close();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_only_excludes_disabled_declared_down_and_lapsed() {
    let h = start().await;
    let c = client(&[h.addr]).await;
    let svc = name("payments");

    let up = inst(&svc, "10.0.1.1", 80);
    let mut disabled = inst(&svc, "10.0.1.2", 80);
    disabled.enabled = false;
    let mut declared_down = inst(&svc, "10.0.1.3", 80);
    declared_down.healthy = false;
    c.register_batch(vec![up, disabled, declared_down])
        .await
        .unwrap();

    // A session-bound instance whose connection drops lapses at once.
    let (mut raw, _) = Raw::open(h.addr).await;
    let lapsing = inst(&svc, "10.0.1.4", 80);
    assert_eq!(
        raw.call(&register_msg(true, vec![lapsing])).await,
        Message::Ack(1)
    );
    drop(raw);
    eventually(
        "the dropped session's instance to be reported unhealthy",
        async || {
            let s = c.query(&svc, false).await.unwrap();
            find(&s, "10.0.1.4", 80).filter(|i| !i.healthy).map(|_| ())
        },
    )
    .await;

    let all = c.query(&svc, false).await.unwrap();
    assert_eq!(
        all.instances.len(),
        4,
        "healthy_only=false lists everything"
    );
    let d = find(&all, "10.0.1.2", 80).unwrap();
    assert!(d.healthy && !d.enabled);
    assert!(!find(&all, "10.0.1.3", 80).unwrap().healthy);

    let healthy = c.query(&svc, true).await.unwrap();
    assert_eq!(addrs_of(&healthy), ["10.0.1.1:80"]);
    assert!(healthy.instances.iter().all(|i| i.healthy && i.enabled));
    c.close();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_filter_selects_one_cluster() {
    let h = start().await;
    let c = client(&[h.addr]).await;
    let svc = name("inventory");
    let mut off = Instance::new(key(&svc, "c1", "10.0.4.3", 80));
    off.enabled = false;
    c.register_batch(vec![
        Instance::new(key(&svc, "DEFAULT", "10.0.4.1", 80)),
        Instance::new(key(&svc, "c1", "10.0.4.2", 80)),
        off,
        Instance::new(key(&svc, "c2", "10.0.4.4", 80)),
    ])
    .await
    .unwrap();

    let c1 = c.query_cluster(&svc, "c1", false).await.unwrap();
    assert_eq!(addrs_of(&c1), ["10.0.4.2:80", "10.0.4.3:80"]);
    assert!(c1.instances.iter().all(|i| i.cluster.as_str() == "c1"));
    let c1_healthy = c.query_cluster(&svc, "c1", true).await.unwrap();
    assert_eq!(addrs_of(&c1_healthy), ["10.0.4.2:80"]);
    let c2 = c.query_cluster(&svc, "c2", false).await.unwrap();
    assert_eq!(addrs_of(&c2), ["10.0.4.4:80"]);
    assert!(
        c.query_cluster(&svc, "nope", false)
            .await
            .unwrap()
            .instances
            .is_empty()
    );
    assert_eq!(
        c.query_cluster(&svc, "", false)
            .await
            .unwrap()
            .instances
            .len(),
        4,
        "an empty cluster means all clusters"
    );
    c.close();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_services_pages_with_counts() {
    let h = start().await;
    let c = client(&[h.addr]).await;
    let ns = "paging";
    // 25 services in group "g" with 1..=3 instances each (every other one has one declared
    // down), one in group "a" (sorts first), and one in another namespace (never listed).
    let mut expected = Vec::new();
    let mut batch = Vec::new();
    let a = distro::model::ServiceName::new(ns, "a", "zeta");
    batch.push(inst(&a, "10.1.0.1", 1));
    expected.push(("a".to_string(), "zeta".to_string(), 1, 1));
    for s in 0..25u16 {
        let svc = distro::model::ServiceName::new(ns, "g", &format!("svc-{s:02}"));
        let n = (s % 3) as u32 + 1;
        for p in 0..n {
            let mut i = inst(&svc, "10.1.0.2", 1000 + p as u16);
            i.healthy = !(s % 2 == 0 && p == 0);
            batch.push(i);
        }
        let healthy = if s % 2 == 0 { n - 1 } else { n };
        expected.push(("g".to_string(), format!("svc-{s:02}"), n, healthy));
    }
    batch.push(inst(&name("elsewhere"), "10.1.0.3", 1));
    c.register_batch(batch).await.unwrap();

    let mut seen = Vec::new();
    for (page, len) in [(0, 10), (1, 10), (2, 6), (3, 0)] {
        let l = c.list_services(ns, page, 10).await.unwrap();
        assert_eq!(l.total, 26, "total counts every page");
        assert_eq!(l.services.len(), len, "page {page}");
        seen.extend(l.services.into_iter().map(|s| {
            (
                s.group.to_string(),
                s.service.to_string(),
                s.instances,
                s.healthy,
            )
        }));
    }
    assert_eq!(seen, expected, "sorted by (group, service) with counts");
    assert_eq!(c.all_services(ns).await.unwrap().services.len(), 26);
    let public = c.all_services("public").await.unwrap();
    assert_eq!(public.total, 1);
    assert_eq!(public.services[0].service.as_str(), "elsewhere");

    for bad in [0u16, 1001] {
        let e = c.list_services(ns, 0, bad).await.unwrap_err();
        assert_eq!(
            server_error_code(&e),
            Some(ErrorCode::InvalidArgument),
            "{e}"
        );
    }

    // A service whose instances are all gone is no longer listed.
    c.deregister(&key(&a, "DEFAULT", "10.1.0.1", 1))
        .await
        .unwrap();
    let l = c.list_services(ns, 0, 10).await.unwrap();
    assert_eq!(l.total, 25);
    assert_eq!(l.services[0].service.as_str(), "svc-00");
    c.close();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_lapses_then_expires_without_beats_while_a_beating_instance_stays_healthy() {
    let h = start().await;
    let svc = name("leases");
    let c = client(&[h.addr]).await;
    // The SDK beats at the shortest interval it holds: every 100 ms here.
    let mut kept = inst(&svc, "10.0.2.1", 80);
    kept.lease = lease(100, 1500, 2500);
    c.register(kept).await.unwrap();
    let registered_at = Instant::now();

    // A raw connection registers and never beats; it stays open, so only the lease acts.
    let (mut raw, _) = Raw::open(h.addr).await;
    let mut silent = inst(&svc, "10.0.2.2", 80);
    silent.lease = lease(100, 300, 1500);
    assert_eq!(
        raw.call(&register_msg(true, vec![silent.clone()])).await,
        Message::Ack(1)
    );

    eventually("the silent instance to be reported unhealthy", async || {
        let s = c.query(&svc, false).await.unwrap();
        find(&s, "10.0.2.2", 80).filter(|i| !i.healthy).map(|_| ())
    })
    .await;
    eventually("the silent instance to be removed", async || {
        let s = c.query(&svc, false).await.unwrap();
        find(&s, "10.0.2.2", 80).is_none().then_some(())
    })
    .await;
    assert!(
        h.node.store.get(&silent.key).is_some_and(|r| !r.alive),
        "an expired instance leaves a tombstone"
    );

    // The beating instance outlives its own expire-after many times over, healthy throughout.
    while registered_at.elapsed() < Duration::from_millis(4000) {
        let s = c.query(&svc, false).await.unwrap();
        let k = find(&s, "10.0.2.1", 80).expect("the beating instance expired");
        assert!(k.healthy, "the beating instance was reported unhealthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The silent connection itself was fine all along.
    assert_eq!(raw.call(&Message::Ping(7)).await, Message::Pong(7));
    c.close();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_session_lapses_bound_instances_at_once_and_removes_them_at_expiry() {
    let h = start().await;
    let svc = name("sessions");
    let watcher = client(&[h.addr]).await;
    let mut sub = watcher.subscribe(&svc).await.unwrap();

    let owner = client(&[h.addr]).await;
    let mut bound = inst(&svc, "10.0.3.1", 80);
    bound.lease = lease(100, 4000, 4000);
    let mut unbound = inst(&svc, "10.0.3.2", 80);
    unbound.lease = lease(100, 4000, 4000);
    owner.register_with(vec![bound], true).await.unwrap();
    owner.register_with(vec![unbound], false).await.unwrap();
    next_matching(&mut sub, "both instances healthy", |s| {
        s.instances.len() == 2 && s.instances.iter().all(|i| i.healthy)
    })
    .await;

    // The client goes away without deregistering.
    owner.close();
    let snap = next_matching(&mut sub, "the bound instance unhealthy", |s| {
        find(s, "10.0.3.1", 80).is_some_and(|i| !i.healthy)
    })
    .await;
    // Pushed at once, not at the end of the 4 s lease: the instance that is not session-bound
    // (same lease, same client, beats stopped at the same moment) is still healthy.
    assert!(
        find(&snap, "10.0.3.2", 80).unwrap().healthy,
        "an instance that is not session-bound lives on its lease alone"
    );
    assert_eq!(h.node.store.len(), 2, "lapsed, not removed");

    // Removed at expire-after.
    next_matching(&mut sub, "the bound instance removed", |s| {
        find(s, "10.0.3.1", 80).is_none()
    })
    .await;
    eventually("both instances gone from the store", async || {
        h.node.store.is_empty().then_some(())
    })
    .await;
    watcher.close();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reregistering_from_a_new_connection_restores_health() {
    let h = start().await;
    let svc = name("comeback");
    let reader = client(&[h.addr]).await;
    let mut x = inst(&svc, "10.0.5.1", 80);
    x.lease = lease(100, 10_000, 20_000);
    let is_healthy = async |want: bool| {
        let s = reader.query(&svc, false).await.unwrap();
        find(&s, "10.0.5.1", 80).is_some_and(|i| i.healthy == want)
    };

    let first = client(&[h.addr]).await;
    first.register(x.clone()).await.unwrap();
    first.close();
    eventually("the instance of the closed client to lapse", async || {
        is_healthy(false).await.then_some(())
    })
    .await;

    let second = client(&[h.addr]).await;
    second.register(x.clone()).await.unwrap();
    assert!(is_healthy(true).await, "re-registering restores health");
    assert_eq!(h.node.store.len(), 1);

    // It is now bound to the new connection: dropping that one lapses it again.
    second.close();
    eventually("the instance to lapse again", async || {
        is_healthy(false).await.then_some(())
    })
    .await;
    reader.close();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_start_with_a_snapshot_grow_in_revision_and_coalesce() {
    let h = start_with(|c| c.push_delay_ms = 50).await;
    let svc = name("coalesce");
    let (mut writer, _) = Raw::open(h.addr).await;
    let before: Vec<Instance> = (1..=3).map(|p| inst(&svc, "10.2.0.1", p)).collect();
    assert_eq!(
        writer.call(&register_msg(false, before)).await,
        Message::Ack(3)
    );

    let (mut sub, _) = Raw::open(h.addr).await;
    assert_eq!(
        sub.call(&Message::Subscribe(svc.clone())).await,
        Message::Ack(1)
    );
    let first = sub.push().await;
    assert_eq!(first.name, svc);
    assert_eq!(
        first.instances.len(),
        3,
        "the first push is the current list"
    );
    assert!(first.revision > 0);

    // 200 changes, pipelined in one write: each Register is a change of its own.
    const CHANGES: u32 = 200;
    let mut frames = BytesMut::new();
    for i in 0..CHANGES {
        let one = inst(&svc, "10.2.1.1", 1000 + i as u16);
        encode_frame_into(&mut frames, 100 + i, 0, &register_msg(false, vec![one]));
    }
    writer.write(&frames).await;
    for _ in 0..CHANGES {
        let f = writer.frame().await.expect("answer");
        assert_eq!(f.message().unwrap(), Message::Ack(1));
    }

    let mut pushes = vec![first];
    while pushes.last().unwrap().instances.len() < 3 + CHANGES as usize {
        pushes.push(sub.push().await);
    }
    for w in pushes.windows(2) {
        assert!(
            w[0].revision < w[1].revision,
            "revisions must grow strictly: {} then {}",
            w[0].revision,
            w[1].revision
        );
    }
    let after_first = pushes.len() - 1;
    assert!(
        after_first * 10 <= CHANGES as usize,
        "{after_first} pushes for {CHANGES} changes: not coalesced"
    );

    // One more change later: one more push, newer still, with the current list.
    let last_rev = pushes.last().unwrap().revision;
    let gone = distro::model::InstanceKey {
        service: svc.clone(),
        cluster: "DEFAULT".into(),
        ip: "10.2.0.1".into(),
        port: 1,
    };
    assert_eq!(
        writer.call(&Message::Deregister(vec![gone])).await,
        Message::Ack(1)
    );
    let p = sub.push().await;
    assert!(p.revision > last_rev);
    assert_eq!(p.instances.len(), 2 + CHANGES as usize);
    assert!(find(&p, "10.2.0.1", 1).is_none());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_never_repeat_under_a_stream_of_changes_without_push_delay() {
    // With no coalescing delay the writer pushes while changes keep landing; a change that
    // lands between taking the pending set and reading the snapshot must not make the next
    // push repeat the revision.
    let h = start_with(|c| c.push_delay_ms = 0).await;
    let svc = name("stream");
    let (mut writer, _) = Raw::open(h.addr).await;
    let (mut sub, _) = Raw::open(h.addr).await;
    assert_eq!(
        sub.call(&Message::Subscribe(svc.clone())).await,
        Message::Ack(1)
    );
    const CHANGES: u32 = 3000;
    let mut frames = BytesMut::new();
    for i in 0..CHANGES {
        let one = inst(&svc, "10.2.2.2", 1 + i as u16);
        encode_frame_into(&mut frames, 10 + i, 0, &register_msg(false, vec![one]));
    }
    writer.write(&frames).await;
    let mut revisions = Vec::new();
    loop {
        let p = sub.push().await;
        revisions.push(p.revision);
        if p.instances.len() == CHANGES as usize {
            break;
        }
    }
    let repeats: Vec<_> = revisions.windows(2).filter(|w| w[0] >= w[1]).collect();
    assert!(
        repeats.is_empty(),
        "{} of {} pushes did not grow the revision: {repeats:?}",
        repeats.len(),
        revisions.len()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_subscription_yields_the_snapshot_first_then_every_change() {
    let h = start().await;
    let svc = name("watched");
    let c = client(&[h.addr]).await;
    c.register(inst(&svc, "10.3.0.1", 80)).await.unwrap();

    let mut sub = c.subscribe(&svc).await.unwrap();
    let first = next_matching(&mut sub, "the first snapshot", |_| true).await;
    assert_eq!(addrs_of(&first), ["10.3.0.1:80"]);

    c.register(inst(&svc, "10.3.0.2", 80)).await.unwrap();
    let s = next_matching(&mut sub, "the second instance", |s| s.instances.len() == 2).await;
    assert!(s.revision > first.revision);
    assert_eq!(
        addrs_of(&c.cached(&svc).unwrap()),
        ["10.3.0.1:80", "10.3.0.2:80"]
    );

    c.deregister(&key(&svc, "DEFAULT", "10.3.0.1", 80))
        .await
        .unwrap();
    next_matching(&mut sub, "the first instance gone", |s| {
        addrs_of(s) == ["10.3.0.2:80"]
    })
    .await;

    c.unsubscribe(&svc).await.unwrap();
    let ended = tokio::time::timeout(DEADLINE, sub.next()).await.unwrap();
    assert!(ended.is_none(), "an unsubscribed stream ends");
    c.close();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_redoes_registrations_and_subscriptions_after_a_server_restart() {
    let h = start().await;
    let addr = h.addr;
    let svc = name("redo");
    let owner = client(&[addr]).await;
    let watcher = client(&[addr]).await;
    let mut sub = watcher.subscribe(&svc).await.unwrap();
    owner.register(inst(&svc, "10.4.0.1", 80)).await.unwrap();
    next_matching(&mut sub, "the instance before the restart", |s| {
        addrs_of(s) == ["10.4.0.1:80"]
    })
    .await;

    h.stop().await;
    let h2 = start_on(addr).await;
    // Nothing is told to the clients: they reconnect, register and subscribe again by themselves.
    next_matching(&mut sub, "the instance after the restart", |s| {
        addrs_of(s) == ["10.4.0.1:80"] && s.instances[0].healthy
    })
    .await;
    assert_eq!(h2.node.store.len(), 1);
    assert_eq!(h2.node.subs.count(), 1, "the watcher subscribed again");
    let s = owner.query(&svc, true).await.unwrap();
    assert_eq!(addrs_of(&s), ["10.4.0.1:80"]);
    owner.close();
    watcher.close();
    h2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_skips_a_dead_address() {
    let h = start().await;
    let dead = dead_addr();
    let c = client(&[dead, h.addr]).await;
    assert_eq!(c.connected_to().unwrap().0, h.addr.to_string());
    let svc = name("failover-dead");
    c.register(inst(&svc, "10.5.0.1", 80)).await.unwrap();
    assert_eq!(
        addrs_of(&c.query(&svc, false).await.unwrap()),
        ["10.5.0.1:80"]
    );
    assert_eq!(h.node.store.len(), 1);
    c.close();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_the_second_server_when_the_first_stops() {
    let h1 = start().await;
    let h2 = start_with(|c| c.node_id = 2).await;
    let svc = name("failover-live");
    let c = client(&[h1.addr, h2.addr]).await;
    assert_eq!(c.connected_to().unwrap().0, h1.addr.to_string());
    c.register(inst(&svc, "10.5.1.1", 80)).await.unwrap();
    assert_eq!(h1.node.store.len(), 1);

    h1.stop().await;
    // Requests continue against the second server, which learns the instance from the redo.
    let s = eventually("the instance on the second server", async || {
        let s = c.query(&svc, false).await.ok()?;
        (addrs_of(&s) == ["10.5.1.1:80"]).then_some(s)
    })
    .await;
    assert!(s.instances[0].healthy);
    assert_eq!(c.connected_to().unwrap().0, h2.addr.to_string());
    c.register(inst(&svc, "10.5.1.2", 80)).await.unwrap();
    assert_eq!(h2.node.store.len(), 2);
    c.close();
    h2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beat_of_an_unknown_key_is_answered_and_the_sdk_registers_it_again() {
    let h = start().await;
    let svc = name("beats");
    let known = inst(&svc, "10.6.0.1", 80);

    // On the wire: BeatAck lists the indexes of the keys the node does not know.
    let (mut raw, _) = Raw::open(h.addr).await;
    assert_eq!(
        raw.call(&register_msg(false, vec![known.clone()])).await,
        Message::Ack(1)
    );
    let unknown = key(&svc, "DEFAULT", "10.6.0.9", 80);
    let keys = vec![
        known.key.clone(),
        unknown.clone(),
        known.key.clone(),
        unknown,
    ];
    assert_eq!(
        raw.call(&Message::Beat(keys)).await,
        Message::BeatAck(vec![1, 3])
    );
    assert_eq!(h.node.store.len(), 1, "a beat never creates an instance");
    assert_eq!(
        raw.call(&Message::Deregister(vec![known.key.clone()]))
            .await,
        Message::Ack(1)
    );

    // Through the SDK: an instance deleted behind its back comes back on the next beat.
    let holder = client(&[h.addr]).await;
    let other = client(&[h.addr]).await;
    let mut x = inst(&svc, "10.6.0.2", 80);
    x.metadata = vec![("k".into(), "v".into())];
    holder.register(x.clone()).await.unwrap();
    assert!(other.deregister(&x.key).await.unwrap());
    assert!(other.query(&svc, false).await.unwrap().instances.is_empty());

    assert_eq!(holder.beat_now().await.unwrap(), 1);
    let s = other.query(&svc, false).await.unwrap();
    let back = find(&s, "10.6.0.2", 80).expect("registered again");
    assert!(back.healthy);
    assert_eq!(meta(back).get("k").map(String::as_str), Some("v"));
    assert_eq!(holder.beat_now().await.unwrap(), 0);
    holder.close();
    other.close();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_below_the_floor_is_rejected_and_nothing_is_stored() {
    let h = start_with(|c| c.lease_floor_ms = 500).await;
    let svc = name("floor");
    let c = client(&[h.addr]).await;

    for bad in [
        lease(100, 15_000, 30_000),
        lease(5_000, 400, 30_000),
        lease(5_000, 15_000, 499),
    ] {
        let mut i = inst(&svc, "10.7.0.1", 80);
        i.lease = bad;
        let e = c.register(i).await.unwrap_err();
        assert_eq!(
            server_error_code(&e),
            Some(ErrorCode::InvalidArgument),
            "{e}"
        );
        assert!(e.to_string().contains("floor"), "the message says why: {e}");
    }
    // A batch is checked whole: one bad lease rejects all of it.
    let good = inst(&svc, "10.7.0.2", 80);
    let mut bad = inst(&svc, "10.7.0.3", 80);
    bad.lease = lease(50, 50, 50);
    let e = c.register_batch(vec![good.clone(), bad]).await.unwrap_err();
    assert_eq!(server_error_code(&e), Some(ErrorCode::InvalidArgument));
    // An inconsistent lease (beat after unhealthy-after) is rejected too.
    let mut odd = inst(&svc, "10.7.0.4", 80);
    odd.lease = lease(2_000, 1_000, 30_000);
    let e = c.register(odd).await.unwrap_err();
    assert_eq!(server_error_code(&e), Some(ErrorCode::InvalidArgument));

    assert_eq!(h.node.store.len(), 0);
    assert!(c.query(&svc, false).await.unwrap().instances.is_empty());
    assert_eq!(c.held_count(), 0, "the SDK keeps nothing that was rejected");

    // Exactly at the floor is fine, and the connection still works.
    let mut edge = good;
    edge.lease = lease(500, 500, 500);
    c.register(edge).await.unwrap();
    assert_eq!(h.node.store.len(), 1);
    c.close();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_not_ready_refuses_client_traffic_and_the_sdk_fails_over() {
    let h1 = start().await;
    let h2 = start_with(|c| c.node_id = 2).await;
    let svc = name("ready");
    h1.node.set_ready(false);

    // On the wire: Hello and Ping answer, Query and Register are refused with NotReady.
    let (mut raw, hello) = Raw::open(h1.addr).await;
    assert!(!hello.ready);
    assert_eq!(raw.call(&Message::Ping(1)).await, Message::Pong(1));
    let q = Message::Query(Query {
        name: svc.clone(),
        cluster: "".into(),
        healthy_only: false,
    });
    for msg in [q, register_msg(true, vec![inst(&svc, "10.8.0.1", 80)])] {
        match raw.call(&msg).await {
            Message::Error(e) => assert_eq!(e.kind(), Some(ErrorCode::NotReady), "{e:?}"),
            other => panic!("expected NotReady, got {other:?}"),
        }
    }
    assert_eq!(h1.node.store.len(), 0);

    // The SDK skips the node that is not ready.
    let c = client(&[h1.addr, h2.addr]).await;
    assert_eq!(c.connected_to().unwrap().0, h2.addr.to_string());
    c.register(inst(&svc, "10.8.0.2", 80)).await.unwrap();
    assert_eq!(h2.node.store.len(), 1);
    c.close();

    // A node that stops being ready under a connected SDK: the next request moves on.
    h1.node.set_ready(true);
    let c = client(&[h1.addr, h2.addr]).await;
    assert_eq!(c.connected_to().unwrap().0, h1.addr.to_string());
    h1.node.set_ready(false);
    c.register(inst(&svc, "10.8.0.3", 80)).await.unwrap();
    assert_eq!(c.connected_to().unwrap().0, h2.addr.to_string());
    assert_eq!(h1.node.store.len(), 0);
    assert_eq!(
        addrs_of(&c.query(&svc, false).await.unwrap()),
        ["10.8.0.2:80", "10.8.0.3:80"]
    );
    c.close();
    h1.stop().await;
    h2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_every_task_of_the_client_and_its_session() {
    let h = start().await;
    let svc = name("close-ends-tasks");
    let c = client(&[h.addr]).await;
    c.register(inst(&svc, "10.9.9.1", 80)).await.unwrap();
    let _sub = c.subscribe(&svc).await.unwrap();
    c.close();
    // The connection's reader and writer, the reconnect loop and the heartbeats all end.
    tokio::time::timeout(Duration::from_secs(5), c.wait_closed())
        .await
        .expect("the client's tasks end after close");
    assert!(matches!(
        c.query(&svc, false).await,
        Err(ClientError::Closed)
    ));
    // The node saw the connection end: the session-bound instance is marked unhealthy.
    let s = eventually("the session's instance unhealthy", async || {
        let s = h.node.store.query(&svc, "", false);
        let s = ServiceSnapshot::decode_body(s).ok()?;
        (!s.instances.is_empty() && !s.instances[0].healthy).then_some(s)
    })
    .await;
    assert_eq!(addrs_of(&s), ["10.9.9.1:80"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_beyond_the_wire_limits_is_refused_by_the_sdk_and_the_connection_stays() {
    let h = start().await;
    let c = client(&[h.addr]).await;
    let long = name(&"s".repeat(300));
    match c.register(inst(&long, "10.9.9.2", 80)).await {
        Err(ClientError::Invalid(reason)) => assert!(reason.contains("service"), "{reason}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(c.held_count(), 0);
    // Nothing was sent, and the same connection goes on serving.
    let at = c.connected_to().unwrap();
    let svc = name("after-refusal");
    c.register(inst(&svc, "10.9.9.3", 80)).await.unwrap();
    assert_eq!(c.connected_to().unwrap(), at);
    assert_eq!(h.node.store.len(), 1);
    c.close();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_a_frame_is_split_and_an_answer_larger_than_a_frame_is_refused() {
    let h = start().await;
    let c = client(&[h.addr]).await;
    let svc = name("too-large-to-list");
    // 2100 instances with 4 KiB of metadata each: some 8.7 MB, more than one frame takes.
    let big: Vec<Instance> = (0..2100)
        .map(|i| {
            let mut inst = inst(&svc, &format!("10.7.{}.{}", i / 256, i % 256), 80);
            inst.key.cluster = "big".into();
            inst.metadata = vec![("blob".into(), "x".repeat(4096).into())];
            inst
        })
        .collect();
    c.register_batch(big).await.unwrap();
    let mut small = inst(&svc, "10.7.99.1", 80);
    small.key.cluster = "small".into();
    c.register(small).await.unwrap();
    assert_eq!(h.node.store.len(), 2101);
    // The whole service does not fit one answer: refused with TooLarge, the connection stays.
    match c.query(&svc, false).await {
        Err(e) => assert_eq!(server_error_code(&e), Some(ErrorCode::TooLarge), "{e}"),
        Ok(s) => panic!("a {}-instance answer in one frame", s.instances.len()),
    }
    let s = c.query_cluster(&svc, "small", false).await.unwrap();
    assert_eq!(addrs_of(&s), ["10.7.99.1:80"]);
    c.close();
    h.stop().await;
}

/// The whole list of `svc` as a query answers it.
async fn query_list(raw: &mut Raw, svc: &distro::model::ServiceName) -> ServiceSnapshot {
    let q = Message::Query(Query {
        name: svc.clone(),
        cluster: "".into(),
        healthy_only: false,
    });
    match raw.call(&q).await {
        Message::QueryResult(s) => s,
        other => panic!("expected a QueryResult, got {other:?}"),
    }
}

/// Registers `instances` in batches of 4096 on `raw`.
async fn register_all(raw: &mut Raw, instances: Vec<Instance>) {
    for chunk in instances.chunks(4096) {
        let n = chunk.len() as u32;
        assert_eq!(
            raw.call(&register_msg(false, chunk.to_vec())).await,
            Message::Ack(n)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_of_a_large_service_is_sent_only_what_changed() {
    let h = start().await;
    let svc = name("large");
    let (mut writer, _) = Raw::open(h.addr).await;
    let all: Vec<Instance> = (0..5_000u32)
        .map(|i| {
            let mut one = inst(&svc, &format!("10.9.{}.{}", i / 250, i % 250), 8080);
            one.metadata = vec![("zone".into(), format!("z{}", i % 3).into())];
            one
        })
        .collect();
    register_all(&mut writer, all.clone()).await;

    let (mut sub, _) = Raw::open(h.addr).await;
    assert_eq!(
        sub.call(&Message::Subscribe(svc.clone())).await,
        Message::Ack(1)
    );
    let first = sub.push_seen().await;
    assert!(
        !first.is_delta(),
        "a subscription starts with the whole list"
    );
    assert_eq!(first.list.instances.len(), 5_000);

    // One instance changes: the subscriber is pushed that instance, not the service.
    let mut changed = all[1234].clone();
    changed.weight = 3.0;
    register_all(&mut writer, vec![changed]).await;
    let one = sub.push_seen().await;
    assert!(one.is_delta(), "one change travels as a delta");
    eprintln!(
        "one changed instance of a service of 5000: {} bytes pushed (the whole list: {} bytes)",
        one.wire_bytes, first.wire_bytes
    );
    assert!(
        one.wire_bytes <= 256,
        "{} bytes pushed for one changed instance of a service of 5000",
        one.wire_bytes
    );
    let Message::PushDelta(d) = &one.message else {
        unreachable!()
    };
    assert_eq!((d.removed.len(), d.updated.len()), (0, 1));
    assert_eq!(d.base_revision, first.list.revision);
    assert_eq!(one.list, query_list(&mut writer, &svc).await);

    // A burst of changes of every kind, pipelined: new instances, removals, changed metadata.
    let mut frames = BytesMut::new();
    for i in 0..300u32 {
        let rid = 1_000 + i;
        let msg = match i % 3 {
            0 => register_msg(false, vec![inst(&svc, &format!("10.8.0.{}", i / 3), 9000)]),
            1 => Message::Deregister(vec![all[i as usize].key.clone()]),
            _ => {
                let mut again = all[i as usize].clone();
                again.metadata = vec![("zone".into(), "moved".into())];
                register_msg(false, vec![again])
            }
        };
        encode_frame_into(&mut frames, rid, 0, &msg);
    }
    writer.write(&frames).await;
    for _ in 0..300 {
        let f = writer.frame().await.expect("an answer");
        assert!(matches!(f.message().unwrap(), Message::Ack(1)), "{f:?}");
    }
    let want = query_list(&mut writer, &svc).await;
    let mut deltas = 0;
    let mut bytes = 0;
    loop {
        let p = sub.push_seen().await;
        deltas += p.is_delta() as usize;
        bytes += p.wire_bytes;
        assert!(p.list.revision <= want.revision);
        if p.list.revision == want.revision {
            assert_eq!(p.list, want, "the subscriber's list is the query's");
            break;
        }
    }
    assert!(deltas >= 1, "the burst came as deltas");
    assert!(
        bytes < first.wire_bytes,
        "{bytes} bytes pushed for 300 changes; the whole list is {} bytes",
        first.wire_bytes
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_again_restarts_with_the_whole_list_and_deltas_follow_on() {
    let h = start_with(|c| c.push_delay_ms = 0).await;
    let svc = name("again");
    let (mut writer, _) = Raw::open(h.addr).await;
    let base: Vec<Instance> = (0..50u16).map(|p| inst(&svc, "10.7.0.1", 1 + p)).collect();
    register_all(&mut writer, base).await;
    let (mut sub, _) = Raw::open(h.addr).await;
    sub.call(&Message::Subscribe(svc.clone())).await;
    assert!(!sub.push_seen().await.is_delta());
    register_all(&mut writer, vec![inst(&svc, "10.7.0.2", 1)]).await;
    let d = sub.push_seen().await;
    assert!(d.is_delta());

    // Renewed: the whole list again, whatever was pushed before; then deltas from it.
    assert_eq!(
        sub.call(&Message::Subscribe(svc.clone())).await,
        Message::Ack(1)
    );
    let again = sub.push_seen().await;
    assert!(
        !again.is_delta(),
        "a renewed subscription starts with the whole list"
    );
    assert_eq!(again.list, d.list);
    register_all(&mut writer, vec![inst(&svc, "10.7.0.3", 1)]).await;
    let next = sub.push_seen().await;
    let Message::PushDelta(delta) = &next.message else {
        panic!("expected a delta, got {:?}", next.message)
    };
    assert_eq!(delta.base_revision, again.list.revision);
    assert_eq!(next.list, query_list(&mut writer, &svc).await);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_hands_whole_lists_built_from_deltas() {
    let h = start().await;
    let svc = name("sdk-large");
    let c = client(&[h.addr]).await;
    let all: Vec<Instance> = (0..2_000u16)
        .map(|p| inst(&svc, "10.6.0.1", 1 + p))
        .collect();
    c.register_batch(all.clone()).await.unwrap();
    let mut sub = c.subscribe(&svc).await.unwrap();
    next_matching(&mut sub, "the whole list", |s| s.instances.len() == 2_000).await;
    c.deregister_batch(&[all[10].key.clone(), all[1999].key.clone()])
        .await
        .unwrap();
    let mut lapsed = all[500].clone();
    lapsed.healthy = false;
    c.register(lapsed).await.unwrap();
    c.register(inst(&svc, "10.6.0.2", 7)).await.unwrap();
    let want = c.query(&svc, false).await.unwrap();
    let got = next_matching(&mut sub, "the list after the changes", |s| {
        s.revision == want.revision
    })
    .await;
    assert_eq!(*got, want);
    assert_eq!(*c.cached(&svc).unwrap(), want);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_change_of_every_service_reaches_a_subscriber_of_thousands() {
    // Many small services, each changed a few times by pipelined writes, then never again: a
    // push lost on the way would leave a list stale for good, not only until the next change.
    let h = start().await;
    const SERVICES: u32 = 2_000;
    let names: Vec<_> = (0..SERVICES)
        .map(|s| name(&format!("many-{s:04}")))
        .collect();
    let (mut sub, _) = Raw::open(h.addr).await;
    let mut frames = BytesMut::new();
    for (i, n) in names.iter().enumerate() {
        encode_frame_into(
            &mut frames,
            10 + i as u32,
            0,
            &Message::Subscribe(n.clone()),
        );
    }
    sub.write(&frames).await;
    let (mut writer, _) = Raw::open(h.addr).await;
    let mut frames = BytesMut::new();
    let mut rid = 100_000u32;
    for round in 0..4u32 {
        for (s, n) in names.iter().enumerate() {
            let msg = if round == 3 && s % 3 == 0 {
                Message::Deregister(vec![key(n, "DEFAULT", "10.5.0.1", 1)])
            } else {
                register_msg(false, vec![inst(n, "10.5.0.1", 1 + (round % 3) as u16)])
            };
            encode_frame_into(&mut frames, rid, 0, &msg);
            rid += 1;
        }
    }
    writer.write(&frames).await;
    for _ in 0..4 * SERVICES {
        writer.frame().await.expect("an answer");
    }
    let mut want = BTreeMap::new();
    for n in &names {
        want.insert(n.clone(), query_list(&mut writer, n).await);
    }
    // Read until the node has been quiet for a while, then compare; again while any is stale.
    let deadline = Instant::now() + DEADLINE;
    loop {
        while let Ok(f) = tokio::time::timeout(Duration::from_millis(300), sub.frame()).await {
            let f = f.expect("the subscriber's connection stays open");
            if f.request_id == 0 {
                sub.pushes.push(f);
                sub.push_seen().await;
            }
        }
        let stale: Vec<_> = names
            .iter()
            .filter(|n| sub.lists.get(*n) != want.get(*n))
            .collect();
        if stale.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {SERVICES} services never got their last change pushed; {}: holds {:?}, want {:?}",
            stale.len(),
            stale[0],
            sub.lists.get(stale[0]),
            want.get(stale[0])
        );
    }
    h.stop().await;
}
