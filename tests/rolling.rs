//! Changing a running cluster under client load, with real `distrod` processes and signals:
//!
//! - `a_cluster_grows_from_3_to_5_and_shrinks_to_3_under_load`: nodes are added (the running
//!   nodes get the new list by SIGHUP, then the new node starts) and removed (SIGTERM: it leaves,
//!   then the others get the shorter list by SIGHUP) while SDK clients register, beat,
//!   deregister and subscribe;
//! - `every_node_of_a_cluster_restarts_in_turn_under_load`: each node of a 3-node cluster in turn
//!   gets SIGTERM, must exit 0 within its grace period, is started again and waited for until
//!   it is ready.
//!
//! Both check, under the same load: no SDK request fails (the SDK retries and fails over
//! transparently; what reaches the application must succeed); no subscriber sees a live
//! instance vanish from its pushes, or reported unhealthy (its client beats all along: a node
//! that stopped without leaving shows that, its peers' forwards of the beats failing until
//! their failure detector moves its keys); no node's answers ever lack a live instance it should have
//! (an instance counts as expected at a node once it was acknowledged a second before, and the
//! node is ready); and at the end every node answers exactly the live instances — nothing lost,
//! nothing left behind. The longest a live instance was missing from any node's answers is
//! measured and printed (`--nocapture`), with the counts; these are what the reliability report
//! quotes. Rerun: `cargo test --release --test rolling -- --nocapture --test-threads 1`.
//!
//! The nodes' logs are kept in a temp directory named when a test fails.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distro::client::{Client, ClientConfig, service_name};
use distro::model::{Instance, InstanceKey, Lease, ServiceName};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const DISTROD: &str = env!("CARGO_BIN_EXE_distrod");
const DISTROCTL: &str = env!("CARGO_BIN_EXE_distroctl");
const TOKEN: &str = "rolling-test-token";
/// Services the clients register into and subscribe to.
const SERVICES: usize = 3;
/// SDK clients of the load; half of them register session-bound instances.
const CLIENTS: usize = 6;
/// Instances each client registers before the changes begin.
const INITIAL_PER_CLIENT: usize = 12;
/// Short leases, so that a beat path broken by a change would show within the test as an
/// unhealthy mark or an expiry.
const LEASE: Lease = Lease {
    beat_ms: 300,
    unhealthy_ms: 2_000,
    expire_ms: 4_000,
};
/// An instance acknowledged this long ago is expected in every ready node's answers (sync
/// takes milliseconds; this is generous for a loaded machine).
const PROPAGATION_GRACE: Duration = Duration::from_millis(1_000);
/// How often each node is queried for every service.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// The load runs this long between two changes.
const SETTLE: Duration = Duration::from_millis(1_500);
/// Any single wait of the test (a node ready, an exit, convergence).
const DEADLINE: Duration = Duration::from_secs(30);
/// distrod's shutdown grace (`server::SHUTDOWN_GRACE`) plus its leave (`cluster::LEAVE_ACK_TIMEOUT`)
/// and a margin for a loaded machine: a node must have exited by then after SIGTERM.
const EXIT_WITHIN: Duration = Duration::from_secs(10);

// ---- the nodes --------------------------------------------------------------------------------

/// The addresses of a node, fixed for the test (a restarted node keeps them).
#[derive(Clone, Copy)]
struct Addrs {
    client: SocketAddr,
    peer: SocketAddr,
}

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// The cluster's nodes: their addresses, config files and running processes.
struct Nodes {
    dir: PathBuf,
    name: String,
    addrs: Vec<Addrs>,
    running: BTreeMap<usize, Child>,
}

impl Nodes {
    fn new(n: usize, test: &str) -> Nodes {
        let dir = std::env::temp_dir().join(format!("distro-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Nodes {
            name: format!("{test}-{}", std::process::id()),
            dir,
            addrs: (0..n)
                .map(|_| Addrs {
                    client: free_addr(),
                    peer: free_addr(),
                })
                .collect(),
            running: BTreeMap::new(),
        }
    }

    fn config_path(&self, node: usize) -> PathBuf {
        self.dir.join(format!("node{node}.toml"))
    }

    /// Writes node `node`'s config file with the member list `members` (node numbers, 1-based).
    fn write_config(&self, node: usize, members: &[usize]) {
        let a = self.addrs[node - 1];
        let list: Vec<String> = members
            .iter()
            .map(|&m| format!("\"{}\"", self.addrs[m - 1].peer))
            .collect();
        let text = format!(
            "node_id = {node}\nlisten = \"{}\"\npeer_listen = \"{}\"\nhttp = \"off\"\n\
             members = [{}]\ncluster_token = \"{TOKEN}\"\ncluster_name = \"{}\"\n\
             member_timeout_ms = 1000\nverify_interval_ms = 500\nlease_floor_ms = 100\n\
             lease_pass_ms = 50\nlog_level = \"info\"\n",
            a.client,
            a.peer,
            list.join(", "),
            self.name
        );
        std::fs::write(self.config_path(node), text).unwrap();
    }

    fn start(&mut self, node: usize) {
        assert!(!self.running.contains_key(&node), "node {node} runs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node{node}.log")))
            .unwrap();
        let child = Command::new(DISTROD)
            .arg("--config")
            .arg(self.config_path(node))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start distrod");
        self.running.insert(node, child);
    }

    fn signal(&self, node: usize, sig: &str) {
        let pid = self.running[&node].id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} node {node}");
    }

    /// SIGTERM: the node leaves and must exit 0 within [`EXIT_WITHIN`]. Answers how long it took.
    async fn stop(&mut self, node: usize) -> Duration {
        let started = Instant::now();
        self.signal(node, "-TERM");
        let mut child = self.running.remove(&node).unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "node {node} exited with {status} after SIGTERM (logs in {})",
                    self.dir.display()
                );
                return started.elapsed();
            }
            assert!(
                started.elapsed() < EXIT_WITHIN,
                "node {node} still runs {EXIT_WITHIN:?} after SIGTERM (logs in {})",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn client_addrs(&self) -> Vec<String> {
        self.addrs.iter().map(|a| a.client.to_string()).collect()
    }

    /// Waits until each of `nodes` is ready and sees exactly the others of `nodes` up.
    async fn wait_formed(&self, nodes: &[usize]) {
        let deadline = Instant::now() + DEADLINE;
        let want: BTreeSet<String> = nodes
            .iter()
            .map(|&n| self.addrs[n - 1].peer.to_string())
            .collect();
        for &n in nodes {
            loop {
                if let Some(up) = self.up_members(n).await
                    && up == want
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {n} not ready with members {want:?} (logs in {})",
                    self.dir.display()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The peer addresses node `n` sees up (itself included), if it is ready.
    async fn up_members(&self, n: usize) -> Option<BTreeSet<String>> {
        let mut cfg = ClientConfig::new([self.addrs[n - 1].client.to_string()]);
        cfg.require_ready = false;
        cfg.connect_timeout = Duration::from_millis(500);
        let c = Client::connect(cfg).await.ok()?;
        let s = c.cluster_status().await.ok();
        c.close();
        let s = s?;
        s.ready.then(|| {
            s.members
                .iter()
                .filter(|m| m.up)
                .map(|m| m.addr.to_string())
                .collect()
        })
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in self.running.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---- what the clients hold --------------------------------------------------------------------

/// A key as `service/cluster/ip:port`.
fn key_str(k: &InstanceKey) -> String {
    format!("{}/{}/{}:{}", k.service.service, k.cluster, k.ip, k.port)
}

#[derive(Clone, Copy)]
enum Phase {
    /// Sent, not acknowledged yet.
    Registering,
    /// Acknowledged then.
    Live(Instant),
    /// A deregistration was sent.
    Leaving,
}

/// Everything the test knows and measured.
#[derive(Default)]
struct Book {
    keys: Mutex<HashMap<String, Phase>>,
    /// Requests the SDK answered with an error (with the error).
    failed: Mutex<Vec<String>>,
    /// Live instances a subscriber saw vanish from its pushes.
    vanished: Mutex<Vec<String>>,
    /// Pushes that showed a live instance unhealthy.
    unhealthy_pushes: AtomicU64,
    /// Episodes of a live, expected instance missing from a node's answers, and the longest.
    missing_episodes: Mutex<Vec<String>>,
    longest_missing_ms: AtomicU64,
    /// Node answers checked.
    probes: AtomicU64,
    requests: AtomicU64,
}

impl Book {
    /// The keys live at `at` and acknowledged at least `grace` before it.
    fn expected(&self, at: Instant, grace: Duration) -> Vec<String> {
        self.keys
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p)| matches!(p, Phase::Live(t) if *t + grace <= at))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn is_live(&self, k: &str) -> bool {
        matches!(self.keys.lock().unwrap().get(k), Some(Phase::Live(_)))
    }

    fn live(&self) -> BTreeSet<String> {
        self.keys
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p)| matches!(p, Phase::Live(_)))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

fn services() -> Vec<ServiceName> {
    (0..SERVICES)
        .map(|s| service_name("public", "DEFAULT_GROUP", &format!("rolling-{s}")))
        .collect()
}

fn instance(client: usize, n: usize) -> Instance {
    let svc = &services()[n % SERVICES];
    let mut i = Instance::new(InstanceKey {
        service: svc.clone(),
        cluster: "DEFAULT".into(),
        ip: format!("10.{}.{}.{}", 100 + client, n / 250, n % 250).into(),
        port: 8080,
    });
    i.lease = LEASE;
    i
}

// ---- the load ---------------------------------------------------------------------------------

/// One SDK client of the load: registers its first instances, subscribes to every service,
/// then registers and deregisters now and then until `stop`. Its beats run in the SDK.
async fn client_load(
    c: usize,
    servers: Vec<String>,
    book: Arc<Book>,
    stop: Arc<AtomicBool>,
) -> Client {
    let mut cfg = ClientConfig::new(servers);
    cfg.session_bound = c % 2 == 0;
    cfg.request_timeout = Duration::from_secs(5);
    let client = Client::connect(cfg).await.expect("client connects");
    let mut watchers = Vec::new();
    for name in services() {
        let sub = client.subscribe(&name).await.expect("subscribe");
        watchers.push(tokio::spawn(watch(sub, book.clone(), stop.clone())));
    }
    let mut next = 0;
    let mut mine: Vec<Instance> = Vec::new();
    let mut rng = 0x9E37_79B9u64.wrapping_mul(c as u64 + 1);
    let mut step = |bound: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound
    };
    while !stop.load(Ordering::Relaxed) {
        let register = mine.len() < INITIAL_PER_CLIENT || step(10) < 6;
        if register {
            let inst = instance(c, next);
            next += 1;
            let k = key_str(&inst.key);
            book.keys
                .lock()
                .unwrap()
                .insert(k.clone(), Phase::Registering);
            book.requests.fetch_add(1, Ordering::Relaxed);
            match client.register(inst.clone()).await {
                Ok(()) => {
                    book.keys
                        .lock()
                        .unwrap()
                        .insert(k, Phase::Live(Instant::now()));
                    mine.push(inst);
                }
                Err(e) => book
                    .failed
                    .lock()
                    .unwrap()
                    .push(format!("register {k}: {e}")),
            }
        } else {
            let inst = mine.swap_remove(step(mine.len() as u64) as usize);
            let k = key_str(&inst.key);
            book.keys.lock().unwrap().insert(k.clone(), Phase::Leaving);
            book.requests.fetch_add(1, Ordering::Relaxed);
            match client.deregister(&inst.key).await {
                Ok(_) => {
                    book.keys.lock().unwrap().remove(&k);
                }
                Err(e) => book
                    .failed
                    .lock()
                    .unwrap()
                    .push(format!("deregister {k}: {e}")),
            }
        }
        if mine.len() >= INITIAL_PER_CLIENT {
            tokio::time::sleep(Duration::from_millis(50 + step(250))).await;
        }
    }
    for w in watchers {
        let _ = w.await;
    }
    client
}

/// A subscriber: a live instance it saw must never vanish from a later push.
async fn watch(mut sub: distro::client::Subscription, book: Arc<Book>, stop: Arc<AtomicBool>) {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        let snap = tokio::select! {
            s = sub.next() => match s { Some(s) => s, None => return },
            _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
        };
        let now: BTreeSet<String> = snap
            .instances
            .iter()
            .map(|v| format!("{}/{}/{}:{}", snap.name.service, v.cluster, v.ip, v.port))
            .collect();
        for k in seen.difference(&now) {
            if book.is_live(k) {
                book.vanished.lock().unwrap().push(format!(
                    "{k} vanished from a push (revision {})",
                    snap.revision
                ));
            }
        }
        for v in &snap.instances {
            let k = format!("{}/{}/{}:{}", snap.name.service, v.cluster, v.ip, v.port);
            if !v.healthy && book.is_live(&k) {
                book.unhealthy_pushes.fetch_add(1, Ordering::Relaxed);
            }
        }
        seen = now;
    }
}

/// Queries every service at node `node` (`addr`) every [`PROBE_INTERVAL`] until `stop`: an
/// instance expected there (live, acknowledged [`PROPAGATION_GRACE`] before the query, and
/// the node ready since before that) that the answer lacks is missing until an answer has it.
async fn probe(node: usize, addr: String, book: Arc<Book>, stop: Arc<AtomicBool>) {
    let client = Client::connect(ClientConfig::new([addr]))
        .await
        .expect("prober connects to a ready node");
    let ready_at = Instant::now();
    // Key → when it was first found missing.
    let mut missing: HashMap<String, Instant> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let asked = Instant::now();
        let expected = book.expected(asked, PROPAGATION_GRACE);
        let mut answered = BTreeSet::new();
        let mut complete = true;
        for name in services() {
            match client.query(&name, false).await {
                Ok(snap) => answered.extend(
                    snap.instances
                        .iter()
                        .map(|v| format!("{}/{}/{}:{}", name.service, v.cluster, v.ip, v.port)),
                ),
                Err(_) => complete = false,
            }
        }
        if complete && asked >= ready_at {
            book.probes.fetch_add(1, Ordering::Relaxed);
            for k in expected {
                if answered.contains(&k) {
                    if let Some(since) = missing.remove(&k) {
                        let ms = since.elapsed().as_millis() as u64;
                        book.longest_missing_ms.fetch_max(ms, Ordering::Relaxed);
                        book.missing_episodes
                            .lock()
                            .unwrap()
                            .push(format!("{k} missing at node {node} for {ms} ms"));
                    }
                } else if book.is_live(&k) {
                    missing.entry(k).or_insert(asked);
                }
            }
            // Deregistered meanwhile: no longer expected.
            missing.retain(|k, _| book.is_live(k));
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    for (k, since) in missing {
        let ms = since.elapsed().as_millis() as u64;
        book.longest_missing_ms.fetch_max(ms, Ordering::Relaxed);
        book.missing_episodes
            .lock()
            .unwrap()
            .push(format!("{k} still missing at node {node} after {ms} ms"));
    }
    client.close();
}

/// The clients and the probers of the nodes.
struct Load {
    book: Arc<Book>,
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Client>>,
    probers: HashMap<usize, (Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Load {
    fn start(servers: &[String]) -> Load {
        let book = Arc::new(Book::default());
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..CLIENTS)
            .map(|c| {
                // Each client lists the nodes in another order: they spread over the nodes.
                let mut s = servers.to_vec();
                s.rotate_left(c % servers.len());
                tokio::spawn(client_load(c, s, book.clone(), stop.clone()))
            })
            .collect();
        Load {
            book,
            stop,
            clients,
            probers: HashMap::new(),
        }
    }

    /// Probes node `node` from now on (call once it is ready).
    fn probe(&mut self, node: usize, addr: SocketAddr) {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(probe(
            node,
            addr.to_string(),
            self.book.clone(),
            stop.clone(),
        ));
        assert!(self.probers.insert(node, (stop, task)).is_none());
    }

    /// Stops probing node `node` (before it is stopped).
    async fn unprobe(&mut self, node: usize) {
        let (stop, task) = self.probers.remove(&node).expect("probed");
        stop.store(true, Ordering::Relaxed);
        task.await.unwrap();
    }

    /// Stops the clients' operations (their instances stay registered and beaten) and the
    /// probers; answers the clients.
    async fn finish(&mut self) -> Vec<Client> {
        self.stop.store(true, Ordering::Relaxed);
        let mut clients = Vec::new();
        for c in self.clients.drain(..) {
            clients.push(c.await.unwrap());
        }
        for node in self.probers.keys().copied().collect::<Vec<_>>() {
            self.unprobe(node).await;
        }
        clients
    }
}

/// After the load: every node in `nodes` answers exactly the live instances (nothing lost,
/// nothing left behind); then the report, and the assertions on what the load measured.
async fn check_and_report(test: &str, nodes: &Nodes, running: &[usize], load: &mut Load) {
    let clients = load.finish().await;
    let book = &load.book;
    let want = book.live();
    let deadline = Instant::now() + DEADLINE;
    for &n in running {
        let c = Client::connect(ClientConfig::new([nodes.addrs[n - 1].client.to_string()]))
            .await
            .expect("connect for the final check");
        loop {
            let mut got = BTreeSet::new();
            for name in services() {
                let snap = c.query(&name, false).await.expect("final query");
                got.extend(
                    snap.instances
                        .iter()
                        .map(|v| format!("{}/{}/{}:{}", name.service, v.cluster, v.ip, v.port)),
                );
            }
            if got == want {
                break;
            }
            let lost: Vec<&String> = want.difference(&got).collect();
            let extra: Vec<&String> = got.difference(&want).collect();
            assert!(
                Instant::now() < deadline,
                "node {n}: {} live instances lost (e.g. {:?}), {} left behind (e.g. {:?}); \
                 logs in {}",
                lost.len(),
                lost.first(),
                extra.len(),
                extra.first(),
                nodes.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c.close();
    }
    for c in clients {
        c.close();
    }
    let failed = book.failed.lock().unwrap().clone();
    let vanished = book.vanished.lock().unwrap().clone();
    let missing = book.missing_episodes.lock().unwrap().clone();
    eprintln!(
        "{test}: {} live instances at the end, lost 0; {} requests, {} failed; {} node answers \
         checked, {} times a live instance was missing from one, longest {} ms; {} pushes seen \
         with an instance vanished, {} with a live instance unhealthy",
        want.len(),
        book.requests.load(Ordering::Relaxed),
        failed.len(),
        book.probes.load(Ordering::Relaxed),
        missing.len(),
        book.longest_missing_ms.load(Ordering::Relaxed),
        vanished.len(),
        book.unhealthy_pushes.load(Ordering::Relaxed),
    );
    let logs = nodes.dir.display();
    assert!(
        failed.is_empty(),
        "requests failed: {failed:?} (logs in {logs})"
    );
    assert!(
        vanished.is_empty(),
        "subscribers saw: {vanished:?} (logs in {logs})"
    );
    assert!(
        missing.is_empty(),
        "node answers: {missing:?} (logs in {logs})"
    );
    let unhealthy = book.unhealthy_pushes.load(Ordering::Relaxed);
    assert_eq!(
        unhealthy, 0,
        "pushes showed live instances unhealthy (logs in {logs})"
    );
    assert!(book.probes.load(Ordering::Relaxed) > 0);
}

/// The members of the cluster as `distroctl members --json` at node `n` shows them.
fn distroctl_members(nodes: &Nodes, n: usize) -> Vec<(String, String)> {
    let out = Command::new(DISTROCTL)
        .args([
            "--server",
            &nodes.addrs[n - 1].client.to_string(),
            "members",
            "--json",
        ])
        .output()
        .expect("run distroctl");
    assert!(out.status.success(), "distroctl members: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["addr"].as_str().unwrap().to_string(),
                m["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

// ---- the tests --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_grows_from_3_to_5_and_shrinks_to_3_under_load() {
    let mut nodes = Nodes::new(5, "grow");
    let mut members = vec![1, 2, 3];
    for &n in &members {
        nodes.write_config(n, &members);
        nodes.start(n);
    }
    nodes.wait_formed(&members).await;
    let mut load = Load::start(&nodes.client_addrs());
    for &n in &members {
        load.probe(n, nodes.addrs[n - 1].client);
    }
    tokio::time::sleep(SETTLE).await;

    // Grow: the running nodes learn of the new one first (SIGHUP), then it starts.
    for new in [4, 5] {
        members.push(new);
        for &n in &members[..members.len() - 1] {
            nodes.write_config(n, &members);
            nodes.signal(n, "-HUP");
        }
        nodes.write_config(new, &members);
        nodes.start(new);
        nodes.wait_formed(&members).await;
        load.probe(new, nodes.addrs[new - 1].client);
        tokio::time::sleep(SETTLE).await;
    }

    // Shrink: a node leaves (SIGTERM), then the others drop it from their lists (SIGHUP).
    // Node 1 is the first choice of some clients, so they fail over.
    for gone in [1, 4] {
        load.unprobe(gone).await;
        nodes.stop(gone).await;
        members.retain(|&n| n != gone);
        for &n in &members {
            nodes.write_config(n, &members);
            nodes.signal(n, "-HUP");
        }
        nodes.wait_formed(&members).await;
        tokio::time::sleep(SETTLE).await;
    }
    let want: BTreeSet<(String, String)> = members
        .iter()
        .map(|&n| (nodes.addrs[n - 1].peer.to_string(), "up".to_string()))
        .collect();
    for &n in &members {
        let listed: Vec<(String, String)> = distroctl_members(&nodes, n);
        let mut listed_up: BTreeSet<(String, String)> = listed.iter().cloned().collect();
        // The node itself comes first, as up.
        assert_eq!(listed[0].0, nodes.addrs[n - 1].peer.to_string());
        listed_up.retain(|(_, s)| s == "up");
        assert_eq!((listed.len(), &listed_up), (3, &want), "node {n}'s members");
    }
    check_and_report("grow 3 → 4 → 5 → 3", &nodes, &members, &mut load).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_of_a_cluster_restarts_in_turn_under_load() {
    let mut nodes = Nodes::new(3, "restart");
    let members = vec![1, 2, 3];
    for &n in &members {
        nodes.write_config(n, &members);
        nodes.start(n);
    }
    nodes.wait_formed(&members).await;
    let mut load = Load::start(&nodes.client_addrs());
    for &n in &members {
        load.probe(n, nodes.addrs[n - 1].client);
    }
    tokio::time::sleep(SETTLE).await;
    let mut exits = Vec::new();
    for &n in &members {
        load.unprobe(n).await;
        exits.push(nodes.stop(n).await);
        nodes.start(n);
        nodes.wait_formed(&members).await;
        load.probe(n, nodes.addrs[n - 1].client);
        tokio::time::sleep(SETTLE).await;
    }
    eprintln!("rolling restart: the nodes exited {exits:?} after SIGTERM");
    check_and_report("rolling restart", &nodes, &members, &mut load).await;
}
