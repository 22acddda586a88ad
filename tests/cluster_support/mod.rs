//! Helpers of the multi-node tests: an in-process cluster on loopback port 0, with nodes that
//! can be stopped and restarted on the same addresses; instances and keys owned by a chosen
//! node; polling with a deadline; a comparison of what every node holds; and a raw framed
//! connection for requests the SDK would retry away (a NotReady answer).
//!
//! Every wait polls until a condition holds or a generous deadline passes, so that the tests
//! hold on a loaded two-core machine; none of them asserts how fast something happened.

#![allow(dead_code)] // the ignored measurements use only part of this module

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use distro::client::{Client, ClientConfig};
use distro::cluster::Cluster;
use distro::config::Config;
use distro::model::NodeId;
use distro::model::{Instance, InstanceKey, Lease, ServiceName, Version};
use distro::node::Node;
use distro::ownership::Ownership;
use distro::server::{Server, ServerHandle};
use distro::store::Store;
use distro::wire::{Frame, FrameCodec, Hello, HelloOk, Message, PROTOCOL_VERSION, encode_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::codec::Decoder;

/// How long any single wait may take before the test fails. Generous on purpose.
pub const DEADLINE: Duration = Duration::from_secs(20);
pub const TOKEN: &str = "test-token-123";

/// The tests of this file run one at a time: each starts several nodes whose failure detector
/// (600 ms) must not starve behind another test's cluster on a two-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held for the whole of a test (an async lock: it is held across awaits, and a test that
/// panicked releases it without poisoning anything).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// A node's settings in a test cluster: short member timeout, verify interval and lease pass,
/// so that failure detection, anti-entropy and short leases all happen within a test.
pub fn node_config(
    id: NodeId,
    listen: SocketAddr,
    peer_listen: SocketAddr,
    members: &[SocketAddr],
) -> Config {
    Config {
        node_id: id,
        listen,
        peer_listen,
        members: members.iter().map(|&a| a.into()).collect(),
        cluster_token: Some(TOKEN.into()),
        // One name per test cluster: a node of another test that reaches one of these ports
        // (reused after that test stopped its node) is refused.
        cluster_name: format!("test-{}", members.first().map_or(0, |a| a.port())),
        member_timeout_ms: 600,
        verify_interval_ms: 500,
        sync_delay_ms: 10,
        lease_floor_ms: 100,
        lease_pass_ms: 50,
        ..Config::default()
    }
}

/// An in-process cluster: node `id` is `configs[id - 1]`; a stopped node has no handle.
pub struct TestCluster {
    pub configs: Vec<Config>,
    handles: Vec<Option<ServerHandle>>,
}

/// Binds a client and a peer listener on loopback port 0 for each of `n` nodes, and returns the
/// listeners with the nodes' configs (ids 1..=n), each changed by `tweak`.
pub async fn bind_nodes(
    n: usize,
    tweak: impl Fn(&mut Config),
) -> (Vec<Config>, Vec<(TcpListener, TcpListener)>) {
    let mut listeners = Vec::new();
    for _ in 0..n {
        let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listeners.push((client, peer));
    }
    let members: Vec<SocketAddr> = listeners
        .iter()
        .map(|(_, p)| p.local_addr().unwrap())
        .collect();
    let configs = listeners
        .iter()
        .enumerate()
        .map(|(i, (c, p))| {
            let mut cfg = node_config(
                i as NodeId + 1,
                c.local_addr().unwrap(),
                p.local_addr().unwrap(),
                &members,
            );
            tweak(&mut cfg);
            cfg
        })
        .collect();
    (configs, listeners)
}

impl TestCluster {
    /// Starts `n` nodes and waits until every one is ready and sees all the others.
    pub async fn start(n: usize) -> TestCluster {
        TestCluster::start_with(n, |_| {}).await
    }

    pub async fn start_with(n: usize, tweak: impl Fn(&mut Config)) -> TestCluster {
        let (configs, listeners) = bind_nodes(n, tweak).await;
        let tc = TestCluster::spawn(configs, listeners.into_iter().map(Some).collect());
        tc.wait_formed().await;
        tc
    }

    /// Starts node `i + 1` on `listeners[i]` where that is given (the others stay stopped),
    /// without waiting for anything.
    pub fn spawn(
        configs: Vec<Config>,
        listeners: Vec<Option<(TcpListener, TcpListener)>>,
    ) -> TestCluster {
        assert_eq!(configs.len(), listeners.len());
        let mut tc = TestCluster {
            handles: configs.iter().map(|_| None).collect(),
            configs,
        };
        for (i, l) in listeners.into_iter().enumerate() {
            if let Some(l) = l {
                tc.start_node(i as NodeId + 1, l);
            }
        }
        tc
    }

    /// Starts node `id` (stopped until now) on `listeners`, with a fresh store.
    pub fn start_node(&mut self, id: NodeId, (client, peer): (TcpListener, TcpListener)) {
        assert!(self.handles[id as usize - 1].is_none(), "node {id} runs");
        let cfg = self.configs[id as usize - 1].clone();
        self.handles[id as usize - 1] =
            Some(Server::from_listeners(cfg, client, Some(peer)).spawn());
    }

    pub fn ids(&self) -> Vec<NodeId> {
        (1..=self.configs.len() as NodeId).collect()
    }

    /// Ids of the nodes that run.
    pub fn running(&self) -> Vec<NodeId> {
        self.ids()
            .into_iter()
            .filter(|&id| self.handles[id as usize - 1].is_some())
            .collect()
    }

    pub fn node(&self, id: NodeId) -> &Arc<Node> {
        &self.handles[id as usize - 1]
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} is stopped"))
            .node
    }

    pub fn store(&self, id: NodeId) -> &Arc<Store> {
        &self.node(id).store
    }

    pub fn cluster(&self, id: NodeId) -> &Arc<Cluster> {
        self.node(id).cluster.as_ref().expect("a clustered node")
    }

    /// The client address of node `id`.
    pub fn addr(&self, id: NodeId) -> SocketAddr {
        self.configs[id as usize - 1].listen
    }

    /// An SDK client that talks to node `id` only.
    pub async fn client(&self, id: NodeId) -> Client {
        Client::connect(client_config(&[self.addr(id)]))
            .await
            .unwrap_or_else(|e| panic!("client to node {id}: {e}"))
    }

    /// Waits until every running node is ready and both its live view and its ownership view
    /// are exactly the running nodes.
    pub async fn wait_formed(&self) {
        self.wait_view(&self.running()).await;
    }

    /// Waits until each of `ids` is ready and sees exactly `ids` as the live members (in its
    /// live view and in the ownership view its store computes owners with).
    pub async fn wait_view(&self, ids: &[NodeId]) {
        eventually(&format!("nodes {ids:?} ready with one view"), || {
            ids.iter().all(|&id| {
                let mut live = self.cluster(id).live_view();
                live.sort_unstable();
                self.node(id).is_ready() && live == ids && self.store(id).ownership().live() == ids
            })
        })
        .await;
    }

    /// Stops node `id` (closes its listeners and connections) and waits until it finished.
    pub async fn stop(&mut self, id: NodeId) {
        let h = self.handles[id as usize - 1]
            .take()
            .unwrap_or_else(|| panic!("node {id} is already stopped"));
        h.stop().await;
    }

    /// Stops node `id` gracefully: it leaves the cluster (its peers take over its keys at once)
    /// and stops; waits until it finished.
    pub async fn stop_gracefully(&mut self, id: NodeId) {
        let h = self.handles[id as usize - 1]
            .take()
            .unwrap_or_else(|| panic!("node {id} is already stopped"));
        h.stop_gracefully().await;
    }

    /// The peer address of node `id`.
    pub fn peer_addr(&self, id: NodeId) -> SocketAddr {
        self.configs[id as usize - 1].peer_listen
    }

    /// Gives running node `id` the member list `members` (node ids), as a SIGHUP with a new
    /// config file does; its config (for restarts) gets it too.
    pub async fn set_members(&mut self, id: NodeId, members: &[NodeId]) {
        let addrs: Vec<distro::config::PeerAddr> =
            members.iter().map(|&m| self.peer_addr(m).into()).collect();
        self.configs[id as usize - 1].members = addrs.clone();
        self.cluster(id).set_members(&addrs).await;
    }

    /// Starts node `id` again with a fresh store, on the addresses and config it had. Does not
    /// wait for it to be ready.
    pub async fn restart(&mut self, id: NodeId) {
        let cfg = &self.configs[id as usize - 1];
        let client = rebind(cfg.listen).await;
        let peer = rebind(cfg.peer_listen).await;
        self.start_node(id, (client, peer));
    }

    /// Waits until every running node holds the same live (key → version) set, and returns it.
    pub async fn wait_converged(&self) -> BTreeMap<String, Version> {
        self.wait_converged_among(&self.running()).await
    }

    /// [`TestCluster::wait_converged`] for the nodes `running` only.
    pub async fn wait_converged_among(&self, running: &[NodeId]) -> BTreeMap<String, Version> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let sets: Vec<BTreeMap<String, Version>> = running
                .iter()
                .map(|&id| live_versions(self.store(id)))
                .collect();
            if sets.windows(2).all(|w| w[0] == w[1]) {
                return sets.into_iter().next().unwrap_or_default();
            }
            if Instant::now() > deadline {
                panic!(
                    "nodes {running:?} did not converge within {DEADLINE:?}: {}",
                    describe_difference(running, &sets)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every running node.
    pub async fn shutdown(mut self) {
        for id in self.running() {
            self.stop(id).await;
        }
    }
}

/// Binds `addr` again after its previous listener closed, retrying while the port is held.
pub async fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                eprintln!("rebinding {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot rebind {addr}: {e}"),
        }
    }
}

pub fn client_config(addrs: &[SocketAddr]) -> ClientConfig {
    let mut cfg = ClientConfig::new(addrs.iter().map(|a| a.to_string()));
    // A loaded machine can be slow to answer; failing a request early makes a flaky test.
    cfg.request_timeout = Duration::from_secs(5);
    cfg
}

/// Polls `f` every 20 ms until it holds; fails the test after [`DEADLINE`], naming `what`.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if f() {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {DEADLINE:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `eventually` for a condition that needs to await (SDK calls).
pub async fn eventually_async(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if f().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {DEADLINE:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn name(service: &str) -> ServiceName {
    ServiceName::new("public", "DEFAULT_GROUP", service)
}

pub fn key(service: &ServiceName, ip: &str, port: u16) -> InstanceKey {
    InstanceKey {
        service: service.clone(),
        cluster: "DEFAULT".into(),
        ip: ip.into(),
        port,
    }
}

pub fn lease(beat_ms: u32, unhealthy_ms: u32, expire_ms: u32) -> Lease {
    Lease {
        beat_ms,
        unhealthy_ms,
        expire_ms,
    }
}

/// A lease no test outlives: records with it go away only when deregistered.
pub fn long_lease() -> Lease {
    lease(60_000, 600_000, 3_600_000)
}

pub fn inst(k: &InstanceKey, l: Lease) -> Instance {
    let mut i = Instance::new(k.clone());
    i.lease = l;
    i
}

/// The `i`-th test address of a family (`tag` keeps test keys apart).
pub fn ip_of(tag: u8, i: u32) -> String {
    format!("10.{tag}.{}.{}", (i >> 8) & 255, i & 255)
}

/// `count` keys of `service` whose `ip:port` `owner` is responsible for under `view`, taken in
/// order from the address family `tag`.
pub fn keys_owned_by(
    view: &Ownership,
    owner: NodeId,
    service: &ServiceName,
    tag: u8,
    count: usize,
) -> Vec<InstanceKey> {
    (0..u32::MAX)
        .map(|i| (ip_of(tag, i / 4), 8000 + (i % 4) as u16))
        .filter(|(ip, port)| view.owner(ip, *port) == owner)
        .take(count)
        .map(|(ip, port)| key(service, &ip, port))
        .collect()
}

/// A key as one string, for maps and messages.
pub fn key_string(k: &InstanceKey) -> String {
    format!(
        "{}/{}/{}/{}/{}:{}",
        k.service.namespace, k.service.group, k.service.service, k.cluster, k.ip, k.port
    )
}

/// Every live record of a store: key → version.
pub fn live_versions(store: &Store) -> BTreeMap<String, Version> {
    let mut m = BTreeMap::new();
    store.for_each_record(|name, id, r| {
        if r.alive {
            m.insert(
                format!(
                    "{}/{}/{}/{}/{}:{}",
                    name.namespace, name.group, name.service, id.cluster, id.ip, id.port
                ),
                r.version,
            );
        }
    });
    m
}

/// Every live record of a store: key → owner (under the store's view).
pub fn live_owners(store: &Store) -> BTreeMap<String, NodeId> {
    let mut m = BTreeMap::new();
    store.for_each_record(|name, id, r| {
        if r.alive {
            m.insert(
                format!(
                    "{}/{}/{}/{}/{}:{}",
                    name.namespace, name.group, name.service, id.cluster, id.ip, id.port
                ),
                r.owner,
            );
        }
    });
    m
}

/// The entries where two (key → version) maps differ, for failure messages.
pub fn map_diff(
    a: &BTreeMap<String, Version>,
    b: &BTreeMap<String, Version>,
) -> Vec<(String, Option<Version>, Option<Version>)> {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| (k.clone(), a.get(k).copied(), b.get(k).copied()))
        .collect()
}

/// True if `store` holds a live record under `k`.
pub fn is_live(store: &Store, k: &InstanceKey) -> bool {
    store.get(k).is_some_and(|r| r.alive)
}

fn describe_difference(ids: &[NodeId], sets: &[BTreeMap<String, Version>]) -> String {
    let mut out = String::new();
    for (id, set) in ids.iter().zip(sets).skip(1) {
        let first = &sets[0];
        let only_first: Vec<&String> = first.keys().filter(|k| !set.contains_key(*k)).collect();
        let only_this: Vec<&String> = set.keys().filter(|k| !first.contains_key(*k)).collect();
        let differ: Vec<&String> = first
            .iter()
            .filter(|(k, v)| set.get(*k).is_some_and(|w| w != *v))
            .map(|(k, _)| k)
            .collect();
        out.push_str(&format!(
            "node {} vs node {id}: {} only on {}, {} only on {id}, {} at other versions (e.g. {:?} {:?} {:?}); ",
            ids[0],
            only_first.len(),
            ids[0],
            only_this.len(),
            differ.len(),
            only_first.first(),
            only_this.first(),
            differ.first(),
        ));
    }
    out
}

/// A connection that speaks frames by hand: to see a NotReady answer the SDK would retry away.
pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    codec: FrameCodec,
    next_id: u32,
}

impl Raw {
    /// Connects and says Hello.
    pub async fn open(addr: SocketAddr) -> (Raw, HelloOk) {
        let stream = TcpStream::connect(addr).await.expect("raw connect");
        stream.set_nodelay(true).unwrap();
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
            codec: FrameCodec::default(),
            next_id: 1,
        };
        let hello = Message::Hello(Hello {
            max_version: PROTOCOL_VERSION,
            client_name: "cluster-test".into(),
        });
        match raw.call(&hello).await {
            Message::HelloOk(ok) => (raw, ok),
            other => panic!("expected HelloOk, got {other:?}"),
        }
    }

    async fn frame(&mut self) -> Frame {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(f) = self.codec.decode(&mut self.buf).expect("a good frame") {
                return f;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => panic!("no frame from the node within {DEADLINE:?}"),
                Ok(Ok(0)) => panic!("the node closed the connection"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("raw read: {e}"),
            }
        }
    }

    /// Sends `msg` and waits for its answer (pushes are skipped).
    pub async fn call(&mut self, msg: &Message) -> Message {
        let id = self.next_id;
        self.next_id += 1;
        self.stream
            .write_all(&encode_frame(id, 0, msg))
            .await
            .expect("raw write");
        loop {
            let f = self.frame().await;
            if f.request_id == id {
                return f.message().expect("a decodable answer");
            }
        }
    }
}
