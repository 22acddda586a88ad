//! The admin HTTP port over real loopback HTTP: the probes (`/health`, `/ready` 503 while
//! loading), the JSON endpoints (the same documents `distroctl --json` prints), error answers,
//! and the Prometheus metrics that requests, sessions, subscriptions, lease expiries and
//! cluster traffic are counted in.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{DEADLINE, http_get, metric};
use distro::config::Config;
use distro::frontend::admin::json::{ClusterJson, InstanceJson, ServiceJson};
use distro::model::{Instance, Lease};
use distro::server::{Server, ServerHandle};
use tokio::net::TcpListener;

const DISTROCTL: &str = env!("CARGO_BIN_EXE_distroctl");

/// A standalone node with its admin port on a free loopback port.
async fn start_with_admin(f: impl FnOnce(&mut Config)) -> (ServerHandle, SocketAddr) {
    let h = common::start_with(|c| {
        c.http = Some("127.0.0.1:0".parse().unwrap());
        f(c);
    })
    .await;
    let admin = h.admin_addr.expect("the admin port is on");
    (h, admin)
}

async fn metrics(admin: SocketAddr) -> String {
    let a = http_get(admin, "/metrics").await;
    assert_eq!(a.status, 200);
    a.body
}

/// Polls the metrics until `series` reaches at least `min`.
async fn metric_at_least(admin: SocketAddr, series: &str, min: f64) -> String {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let text = metrics(admin).await;
        if metric(&text, series).is_some_and(|v| v >= min) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} did not reach {min}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the metrics until `series` is `want` (a gauge that settles, such as connections).
async fn metric_settles_at(admin: SocketAddr, series: &str, want: f64) -> String {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let text = metrics(admin).await;
        if metric(&text, series) == Some(want) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} did not settle at {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn distroctl(server: SocketAddr, args: &[&str]) -> serde_json::Value {
    let out = Command::new(DISTROCTL)
        .arg("--server")
        .arg(server.to_string())
        .args(args)
        .output()
        .expect("run distroctl");
    assert!(
        out.status.success(),
        "distroctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("distroctl prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_json_and_metrics_of_a_standalone_node() {
    let (h, admin) = start_with_admin(|_| {}).await;

    let health = http_get(admin, "/health").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = http_get(admin, "/ready").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

    // Data through the SDK: two services in two namespaces, one instance with metadata.
    let c = common::client(&[h.addr]).await;
    let orders = common::name("orders");
    let mut a = common::inst(&orders, "10.0.0.7", 8080);
    a.weight = 2.0;
    a.metadata = vec![("zone".into(), "a".into())];
    c.register(a).await.unwrap();
    c.register(common::inst(&orders, "10.0.0.8", 8080))
        .await
        .unwrap();
    let pay = distro::client::service_name("prod", "billing", "pay");
    c.register(Instance::new(common::key(
        &pay, "DEFAULT", "10.0.1.1", 9000,
    )))
    .await
    .unwrap();
    let mut sub = c.subscribe(&orders).await.unwrap();
    assert_eq!(sub.next().await.unwrap().instances.len(), 2);

    // The JSON documents are the ones distroctl prints.
    let cluster = http_get(admin, "/cluster").await;
    assert_eq!(cluster.status, 200);
    assert!(cluster.content_type.starts_with("application/json"));
    let cluster: ClusterJson = serde_json::from_str(&cluster.body).unwrap();
    assert_eq!(
        (cluster.node, cluster.ready, cluster.instances),
        (1, true, 3)
    );
    let ctl: ClusterJson =
        serde_json::from_value(distroctl(h.addr, &["cluster", "--json"])).unwrap();
    assert_eq!(ctl, cluster);

    let services: Vec<ServiceJson> =
        serde_json::from_str(&http_get(admin, "/services?namespace=prod").await.body).unwrap();
    assert_eq!(services.len(), 1);
    assert_eq!(
        (services[0].group.as_str(), services[0].service.as_str()),
        ("billing", "pay")
    );
    let ctl: Vec<ServiceJson> = serde_json::from_value(distroctl(
        h.addr,
        &["services", "--namespace", "prod", "--json"],
    ))
    .unwrap();
    assert_eq!(ctl, services);
    // The namespace defaults to public, as distroctl's does.
    let public: Vec<ServiceJson> =
        serde_json::from_str(&http_get(admin, "/services").await.body).unwrap();
    assert_eq!(public[0].service, "orders");
    assert_eq!((public[0].instances, public[0].healthy), (2, 2));

    let list: Vec<InstanceJson> =
        serde_json::from_str(&http_get(admin, "/instances?service=orders").await.body).unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].ip, "10.0.0.7");
    assert_eq!(list[0].weight, 2.0);
    assert_eq!(list[0].metadata.get("zone").map(String::as_str), Some("a"));
    let ctl: Vec<InstanceJson> = serde_json::from_value(distroctl(
        h.addr,
        &["list", "--service", "orders", "--json"],
    ))
    .unwrap();
    assert_eq!(ctl, list);
    let pay_list = http_get(
        admin,
        "/instances?namespace=prod&group=billing&service=pay&healthy_only=true",
    )
    .await
    .json();
    assert_eq!(pay_list[0]["port"], 9000);

    let ns = http_get(admin, "/namespaces").await.json();
    assert_eq!(
        ns,
        serde_json::json!([
            {"namespace": "prod", "services": 1, "instances": 1, "healthy": 1},
            {"namespace": "public", "services": 1, "instances": 2, "healthy": 2},
        ])
    );

    // Bad requests get a JSON error and change nothing.
    let bad = http_get(admin, "/instances?namespace=public").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"], "bad_request");
    assert!(bad.json()["message"].as_str().unwrap().contains("service"));
    let bad = http_get(admin, "/instances?service=orders&healthy_only=perhaps").await;
    assert_eq!(bad.status, 400);
    let missing = http_get(admin, "/no/such/thing").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "not_found");

    // The metrics count what happened, in the Prometheus text format. distroctl's connection
    // counts until the node's session of it has seen it close.
    let text = metric_settles_at(admin, "distro_client_connections", 1.0).await;
    let ct = http_get(admin, "/metrics").await.content_type;
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    for (series, want) in [
        (r#"distro_requests_total{op="register",result="ok"}"#, 3.0),
        (r#"distro_requests_total{op="subscribe",result="ok"}"#, 1.0),
        // Two /instances answers and one distroctl list.
        (r#"distro_requests_total{op="query",result="ok"}"#, 3.0),
        (
            r#"distro_request_duration_seconds_count{op="register"}"#,
            3.0,
        ),
        (r#"distro_instances{namespace="public"}"#, 2.0),
        (r#"distro_instances{namespace="prod"}"#, 1.0),
        (r#"distro_services{namespace="public"}"#, 1.0),
        ("distro_client_connections", 1.0),
        ("distro_client_sessions", 1.0),
        ("distro_subscriptions", 1.0),
        ("distro_ready", 1.0),
    ] {
        assert_eq!(metric(&text, series), Some(want), "{series} in\n{text}");
    }
    assert!(metric(&text, "distro_pushes_sent_total").unwrap() >= 1.0);
    let buckets = text
        .lines()
        .filter(|l| l.starts_with(r#"distro_request_duration_seconds_bucket{op="register""#))
        .count();
    assert_eq!(buckets, 17, "16 bounds and +Inf");

    // A rejected request is counted under its rejection.
    let over = Instance {
        lease: Lease {
            beat_ms: 10,
            unhealthy_ms: 10,
            expire_ms: 10,
        },
        ..common::inst(&orders, "10.0.0.9", 1)
    };
    assert!(c.register(over).await.is_err());
    let text = metrics(admin).await;
    assert_eq!(
        metric(
            &text,
            r#"distro_requests_total{op="register",result="invalid"}"#
        ),
        Some(1.0)
    );

    drop(sub);
    c.close();
    metric_at_least(admin, "distro_client_connections", 0.0).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiries_are_counted_as_unhealthy_then_removed() {
    let (h, admin) = start_with_admin(|_| {}).await;
    let c = common::client(&[h.addr]).await;
    let mut i = common::inst(&common::name("short"), "10.0.0.1", 1);
    i.lease = common::lease(100, 200, 400);
    c.register_with(vec![i], false).await.unwrap();
    c.close();
    // Nobody beats it: first lapsed (unhealthy), then removed.
    metric_at_least(admin, r#"distro_expiries_total{kind="removed"}"#, 1.0).await;
    let text = metrics(admin).await;
    assert_eq!(
        metric(&text, r#"distro_expiries_total{kind="unhealthy"}"#),
        Some(1.0)
    );
    h.stop().await;
}

/// A cluster member that cannot reach its peers stays "loading": not ready for clients. The
/// readiness probe says so (503) while the liveness probe stays 200, and the JSON endpoints
/// answer 503 with the rejection; `/cluster` still answers (it is how an operator sees why).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loading_member_is_alive_but_not_ready() {
    let me = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = me.local_addr().unwrap();
    let mut cfg = common::test_config();
    cfg.peer_listen = peer_addr;
    cfg.members = vec![peer_addr.into(), common::dead_addr().into()];
    cfg.cluster_token = Some("test-token-123".into());
    // Alone only after twice the member timeout: far beyond this test.
    cfg.member_timeout_ms = 60_000;
    let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let h = Server::from_listeners(cfg, client, Some(me))
        .with_admin(admin)
        .spawn();

    assert_eq!(http_get(admin_addr, "/health").await.status, 200);
    let ready = http_get(admin_addr, "/ready").await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("loading"), "{}", ready.body);
    let list = http_get(admin_addr, "/instances?service=orders").await;
    assert_eq!(list.status, 503);
    assert_eq!(list.json()["error"], "not_ready");
    let cluster: ClusterJson =
        serde_json::from_str(&http_get(admin_addr, "/cluster").await.body).unwrap();
    assert!(!cluster.ready);
    assert_eq!(cluster.members.len(), 2);
    assert_eq!(cluster.members[1].state, "down");
    let text = metrics(admin_addr).await;
    assert_eq!(metric(&text, "distro_ready"), Some(0.0));
    assert_eq!(
        metric(
            &text,
            r#"distro_requests_total{op="query",result="not_ready"}"#
        ),
        Some(1.0)
    );
    let dead = &cluster.members[1].addr;
    let series = format!(r#"distro_member_up{{peer="0",addr="{dead}"}}"#);
    assert_eq!(metric(&text, &series), Some(0.0), "{text}");
    h.stop().await;
}

/// Cluster traffic is counted per peer: forwards sent and received, sync batches sent and
/// applied, the write → applied-at-peer delay, digest rounds, and member state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_traffic_is_counted_per_peer() {
    let token = "test-token-123";
    let mut listeners = Vec::new();
    for _ in 0..2 {
        listeners.push((
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ));
    }
    let members: Vec<SocketAddr> = listeners
        .iter()
        .map(|(_, p, _)| p.local_addr().unwrap())
        .collect();
    let mut nodes = Vec::new();
    let mut admins = Vec::new();
    for (i, (client, peer, admin)) in listeners.into_iter().enumerate() {
        let mut cfg = common::test_config();
        cfg.node_id = i as u16 + 1;
        cfg.listen = client.local_addr().unwrap();
        cfg.peer_listen = peer.local_addr().unwrap();
        cfg.members = members.iter().map(|&a| a.into()).collect();
        cfg.cluster_token = Some(token.into());
        cfg.member_timeout_ms = 600;
        cfg.verify_interval_ms = 300;
        admins.push(admin.local_addr().unwrap());
        nodes.push(
            Server::from_listeners(cfg, client, Some(peer))
                .with_admin(admin)
                .spawn(),
        );
    }
    for a in &admins {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while http_get(*a, "/ready").await.status != 200 {
            assert!(tokio::time::Instant::now() < deadline, "node not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Both see each other up.
    for (a, other) in [(admins[0], 2), (admins[1], 1)] {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let text = metrics(a).await;
            if text.lines().any(|l| {
                l.starts_with(&format!(r#"distro_member_up{{peer="{other}""#)) && l.ends_with(" 1")
            }) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no member up:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Register on node 1 instances that node 2 owns (forwarded) and that node 1 owns (synced).
    let c = common::client(&[nodes[0].addr]).await;
    let svc = common::name("counted");
    let ownership = nodes[0].node.store.ownership();
    let mut by_owner = [Vec::new(), Vec::new()];
    for port in 1..200u16 {
        let owner = ownership.owner("10.9.0.1", port);
        if by_owner[owner as usize - 1].len() < 3 {
            by_owner[owner as usize - 1].push(common::inst(&svc, "10.9.0.1", port));
        }
    }
    for i in by_owner.iter().flatten() {
        c.register(i.clone()).await.unwrap();
    }
    let t1 = metric_at_least(admins[0], r#"distro_forwards_sent_total{peer="2"}"#, 1.0).await;
    assert_eq!(
        metric(&t1, r#"distro_forward_errors_total{peer="2"}"#),
        Some(0.0)
    );
    metric_at_least(
        admins[1],
        r#"distro_forwards_received_total{peer="1"}"#,
        1.0,
    )
    .await;
    // Node 1's own writes reach node 2 by sync, and node 2's by sync back to node 1.
    metric_at_least(
        admins[1],
        r#"distro_sync_applied_records_total{peer="1"}"#,
        3.0,
    )
    .await;
    let t2 = metric_at_least(
        admins[1],
        r#"distro_write_applied_delay_seconds_count{peer="1"}"#,
        3.0,
    )
    .await;
    assert!(metric(&t2, r#"distro_sync_applied_batches_total{peer="1"}"#).unwrap() >= 1.0);
    assert!(metric(&t2, r#"distro_sync_applied_bytes_total{peer="1"}"#).unwrap() > 0.0);
    let t1 = metric_at_least(
        admins[0],
        r#"distro_sync_sent_records_total{peer="2"}"#,
        3.0,
    )
    .await;
    assert!(metric(&t1, r#"distro_sync_sent_bytes_total{peer="2"}"#).unwrap() > 0.0);
    metric_at_least(
        admins[0],
        r#"distro_sync_applied_records_total{peer="2"}"#,
        3.0,
    )
    .await;
    // Every node holds all six, and counts them by namespace.
    for a in &admins {
        metric_at_least(*a, r#"distro_instances{namespace="public"}"#, 6.0).await;
        let t = metric_at_least(*a, "distro_digest_rounds_total", 1.0).await;
        assert_eq!(metric(&t, "distro_ready"), Some(1.0));
    }
    let t1 = metric_at_least(admins[0], r#"distro_digests_received_total{peer="2"}"#, 1.0).await;
    assert!(
        t1.lines()
            .any(|l| l.starts_with(r#"distro_owned_instances{peer="2""#) && l.ends_with(" 3")),
        "{t1}"
    );
    c.close();
    for n in nodes {
        n.stop().await;
    }
}
