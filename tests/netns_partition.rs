//! Real partitions across real processes: three `distrod` processes, each in a network namespace
//! of its own, joined by veth links to a bridge in a fourth namespace. The test cuts one node's
//! link (`ip link set ... down` on the bridge side), checks that both sides keep answering reads
//! and accepting writes, that deregistrations on either side hold, and after the link is restored
//! that all three nodes converge to the same instance set: both sides' writes merged, every
//! deregistered instance gone (the tombstone beats the older live copy on the other side). It
//! does this twice, cutting node 3 and then node 1, with instances chosen so that every case
//! (written or deleted on the owner's side and on the other side) occurs.
//!
//! It needs root and iproute2. Where either is missing, or the kernel refuses namespaces, it
//! prints `skipped: <reason>` and passes, unless `DISTRO_NETNS_TEST=require` (set by `.ci/run`),
//! which turns a skip into a failure. Everything it makes (namespaces `dtest-<pid>-*`, private
//! addresses that exist only inside them, processes, a temp dir) is removed by a guard, also when
//! the test fails; the end of the test checks that nothing of it is left.
//!
//! Every wait polls with a generous deadline; no check depends on how fast something happened.
//! `--nocapture` shows each phase with the time of day the node logs use;
//! `DISTRO_NETNS_KEEP_LOGS=<dir>` keeps the three node logs there.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

const DISTROD: &str = env!("CARGO_BIN_EXE_distrod");
const DISTROCTL: &str = env!("CARGO_BIN_EXE_distroctl");

const NODES: usize = 3;
const CLIENT_PORT: u16 = 8858;
const PEER_PORT: u16 = 8859;
const SERVICE: &str = "orders";
/// Leases far longer than the test, so that nothing expires while it runs: what disappears,
/// disappears because it was deregistered.
const LEASE_ARGS: [&str; 6] = [
    "--beat-ms",
    "20000",
    "--unhealthy-ms",
    "300000",
    "--expire-ms",
    "600000",
];

/// Longest a node may take to start, load and see its peers (debug build, loaded machine).
const START_DEADLINE: Duration = Duration::from_secs(60);
/// Longest until both sides of a cut see each other down (member timeout is 1 s).
const DETECT_DEADLINE: Duration = Duration::from_secs(30);
/// Longest until the nodes agree after a write or a heal (verify interval is 1 s).
const CONVERGE_DEADLINE: Duration = Duration::from_secs(60);
/// Longest one `distroctl` run may take before it is killed (its own request deadline is 3 s).
const CTL_DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(200);

/// Prints a phase line: seconds since `t`, and the UTC time of day as the node logs print it,
/// so that a phase can be found in the logs.
fn phase(t: Instant, what: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ms = now.as_millis() % 86_400_000;
    println!(
        "[{:5.1}s {:02}:{:02}:{:02}.{:03}Z] {what}",
        t.elapsed().as_secs_f64(),
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    );
}

/// An instance key as `distroctl list --json` shows it.
type Key = (String, u16);

#[test]
fn partition_and_heal_across_network_namespaces() {
    with_lab("p", Lab::scenario);
}

/// A write made on the cut-off node during a cut survives a staggered heal (a regression test;
/// this used to lose the write). Node 1 is cut off, registers key K (owner 2 with every node
/// up, owner 3 in the view {1, 3}); the link 1-3 comes back first, so node 1 (view {1, 3}) hands
/// K to node 3; node 3 (view {1, 2, 3}) stores it as owned by node 2 and tells no one; then the
/// link 1-2 comes back, node 2 never learns K, and the next anti-entropy pulls from node 2
/// dropped K on nodes 1 and 3 (`drop_missing`: alive, owner 2, absent from the owner's
/// buckets). Now a pull sends such a record, younger than any tombstone's retention, to the
/// owner instead of dropping it.
#[test]
fn staggered_heal_keeps_a_write_made_on_the_cut_off_side() {
    with_lab("s", Lab::staggered_heal);
}

/// Runs `scenario` on a fresh lab named `tag`, or skips; then checks that every node exited 0 on
/// SIGTERM and that nothing the lab made is left.
fn with_lab(tag: &str, scenario: impl FnOnce(&mut Lab)) {
    let required = std::env::var("DISTRO_NETNS_TEST").is_ok_and(|v| v == "require");
    let skip = |reason: String| {
        if required {
            panic!("DISTRO_NETNS_TEST=require, but the test cannot run: {reason}");
        }
        println!("skipped: {reason}");
    };
    if let Some(reason) = environment_problem() {
        return skip(reason);
    }
    let started = Instant::now();
    let mut lab = match Lab::create(tag) {
        Ok(lab) => lab,
        Err(reason) => return skip(reason),
    };
    let prefix = lab.prefix.clone();
    let dir = lab.dir.clone();
    lab.start_nodes();
    scenario(&mut lab);
    for note in &lab.notes {
        println!("note: {note}");
    }
    // SIGTERM: each node stops accepting, flushes and exits 0 (README, "distrod").
    for (i, exit) in lab.stop_nodes().into_iter().enumerate() {
        assert!(
            exit.is_some_and(|s| s.success()),
            "distrod node {} exited with {exit:?} after SIGTERM, want exit 0",
            i + 1
        );
    }
    for ns in &lab.namespaces {
        let pids = ip(&["netns", "pids", ns]).unwrap_or_default();
        assert!(pids.trim().is_empty(), "processes left in {ns}: {pids}");
    }
    drop(lab);

    // The guard removed everything it made.
    let left: Vec<String> = netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert!(!dir.exists(), "temp dir left behind: {dir:?}");
    println!(
        "{prefix}: passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Why the test cannot run here, if it cannot.
fn environment_problem() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // "Uid:	real	effective	saved	fs"
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_string);
    match euid.as_deref() {
        Some("0") => {}
        Some(uid) => {
            return Some(format!(
                "not root (euid {uid}); network namespaces need root"
            ));
        }
        None => return Some("cannot read the effective uid from /proc/self/status".into()),
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("`ip -V` failed: {}", o.status)),
        Err(e) => Some(format!("`ip` (iproute2) not found: {e}")),
    }
}

/// Runs `ip ARGS`; its stdout, or an error naming the command and its stderr.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names of the network namespaces that exist now.
fn netns_list() -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Removes what a run of this test that was killed outright (no guard ran) left: namespaces
/// `dtest-<pid>-<tag>-*` whose pid is gone (or that carry `own_prefix`, from a reused pid), the
/// processes still in them, which only that run can have started, and its temp dir. Namespaces
/// of a live run, this process's other tests included, are left alone.
fn sweep_stale_namespaces(own_prefix: &str) {
    let me = std::process::id();
    for ns in netns_list() {
        let Some(pid) = ns
            .strip_prefix("dtest-")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let ours = ns.starts_with(&format!("{own_prefix}-"));
        let dead = pid != me && !std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !ours && !dead {
            continue;
        }
        kill_all_in(&ns);
        if let Some((prefix, _)) = ns.rsplit_once('-') {
            let _ = std::fs::remove_dir_all(std::env::temp_dir().join(prefix));
        }
        match ip(&["netns", "del", &ns]) {
            Ok(_) => println!("removed a stale namespace {ns}"),
            Err(e) => println!("cannot remove a stale namespace: {e}"),
        }
    }
}

/// SIGKILLs every process in namespace `ns`.
fn kill_all_in(ns: &str) {
    for pid in ip(&["netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
    {
        let _ = Command::new("kill")
            .args(["-KILL", pid])
            .stderr(Stdio::null())
            .status();
    }
}

/// The owner of `key` in a view where only `live` are up (the nodes' own rendezvous hashing).
fn owner_in(live: &[usize], key: &Key) -> usize {
    let live = live.iter().map(|&n| n as distro::model::NodeId).collect();
    usize::from(distro::ownership::Ownership::new(live).owner(&key.0, key.1))
}

/// Polls `f` until it returns `Ok`, or fails the test with its last error after `deadline`.
fn wait_until<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if start.elapsed() >= deadline => {
                panic!("timed out after {deadline:?} waiting for {what}: {e}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

struct NodeProc {
    child: Child,
    log: PathBuf,
    /// Waited for (its pid may belong to someone else now: never signal it again).
    stopped: bool,
}

/// Everything the test made; dropping it removes all of it.
struct Lab {
    /// `dtest-<pid>-<tag>`: every namespace made starts with it.
    prefix: String,
    /// The /24 the nodes' addresses are in, e.g. `10.213.7`.
    subnet: String,
    token: String,
    dir: PathBuf,
    /// Namespaces created, in creation order.
    namespaces: Vec<String>,
    /// Index `i` is node `i + 1`.
    nodes: Vec<NodeProc>,
    runs: AtomicU64,
    /// What the test saw that is worth telling but is no failure (e.g. a read that needed a
    /// retry), printed at the end.
    notes: Vec<String>,
}

impl Lab {
    /// Makes the namespaces and links. `Err` only where the kernel or sandbox refuses the very
    /// first namespace (the test is skipped then); any later failure is a test failure.
    fn create(tag: &str) -> Result<Lab, String> {
        let pid = std::process::id();
        let prefix = format!("dtest-{pid}-{tag}");
        sweep_stale_namespaces(&prefix);
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {dir:?}: {e}"))?;
        let mut token_bytes = [0u8; 16];
        getrandom::fill(&mut token_bytes).expect("random token");
        let token: String = token_bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut lab = Lab {
            subnet: format!("10.213.{}", pid % 250 + 1),
            prefix,
            token,
            dir,
            namespaces: Vec::new(),
            nodes: Vec::new(),
            runs: AtomicU64::new(0),
            notes: Vec::new(),
        };
        let br = lab.ns_bridge();
        ip(&["netns", "add", &br])
            .map_err(|e| format!("cannot create a network namespace: {e}"))?;
        lab.namespaces.push(br.clone());
        lab.build_network().expect("network setup");
        Ok(lab)
    }

    fn ns_bridge(&self) -> String {
        format!("{}-br", self.prefix)
    }

    fn ns(&self, node: usize) -> String {
        format!("{}-n{node}", self.prefix)
    }

    fn addr(&self, node: usize) -> String {
        format!("{}.{node}", self.subnet)
    }

    fn peer_addr(&self, node: usize) -> String {
        format!("{}:{PEER_PORT}", self.addr(node))
    }

    /// The bridge-side end of node `node`'s veth; cutting it leaves the node's own interface
    /// and address in place, so clients inside its namespace still reach it.
    fn bridge_port(node: usize) -> String {
        format!("v{node}")
    }

    fn build_network(&mut self) -> Result<(), String> {
        let br = self.ns_bridge();
        ip(&["-n", &br, "link", "set", "lo", "up"])?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for node in 1..=NODES {
            let ns = self.ns(node);
            ip(&["netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            let port = Self::bridge_port(node);
            ip(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &br,
            ])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let cidr = format!("{}/24", self.addr(node));
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &br, "link", "set", &port, "up"])?;
        }
        Ok(())
    }

    fn start_nodes(&mut self) {
        let members: Vec<String> = (1..=NODES).map(|n| self.peer_addr(n)).collect();
        let members = members.join(",");
        for node in 1..=NODES {
            let log = self.dir.join(format!("node{node}.log"));
            let file = File::create(&log).expect("node log");
            let err = file.try_clone().expect("node log");
            // `ip netns exec` execs the command in place, so the child's pid is distrod's.
            let child = Command::new("ip")
                .args(["netns", "exec", &self.ns(node), DISTROD])
                .args(["--node-id", &node.to_string()])
                .args(["--listen", &format!("{}:{CLIENT_PORT}", self.addr(node))])
                .args(["--peer-listen", &self.peer_addr(node)])
                .args(["--members", &members])
                .args(["--member-timeout-ms", "1000"])
                .args(["--verify-interval-ms", "1000"])
                .args(["--log-level", "info"])
                .args(["--http", "off"])
                // The token goes by environment, not argv, so that it is not in the process list.
                .env("DISTRO_CLUSTER_TOKEN", &self.token)
                .stdin(Stdio::null())
                .stdout(file)
                .stderr(err)
                .spawn()
                .expect("spawn distrod");
            self.nodes.push(NodeProc {
                child,
                log,
                stopped: false,
            });
        }
    }

    /// Runs `distroctl --server <node> ARGS` inside the node's namespace, killed after
    /// `CTL_DEADLINE`. Its stdout, or an error with its stderr.
    fn ctl(&self, node: usize, args: &[&str]) -> Result<String, String> {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        let out_path = self.dir.join(format!("ctl-{n}.out"));
        let err_path = self.dir.join(format!("ctl-{n}.err"));
        let server = format!("{}:{CLIENT_PORT}", self.addr(node));
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(node), DISTROCTL])
            .args(["--server", &server, "--timeout-ms", "3000"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&out_path).expect("ctl stdout"))
            .stderr(File::create(&err_path).expect("ctl stderr"))
            .spawn()
            .expect("spawn distroctl");
        let start = Instant::now();
        let status: Option<ExitStatus> = loop {
            match child.try_wait().expect("wait distroctl") {
                Some(s) => break Some(s),
                None if start.elapsed() >= CTL_DEADLINE => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let out = std::fs::read_to_string(&out_path).unwrap_or_default();
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        let _ = std::fs::remove_file(&out_path);
        let _ = std::fs::remove_file(&err_path);
        let what = format!("distroctl at node {node} {args:?}");
        match status {
            None => Err(format!("{what}: still running after {CTL_DEADLINE:?}")),
            Some(s) if s.success() => Ok(out),
            Some(s) => Err(format!("{what}: {s}: {}", err.trim())),
        }
    }

    /// Node `node`'s view: ready, and each member's peer address with whether it is up.
    fn view(&self, node: usize) -> Result<(bool, BTreeMap<String, bool>), String> {
        let out = self.ctl(node, &["cluster", "--json"])?;
        let v: Value = serde_json::from_str(out.trim()).map_err(|e| format!("{e}: {out}"))?;
        let ready = v["ready"].as_bool().ok_or("no ready field")?;
        let members = v["members"]
            .as_array()
            .ok_or("no members field")?
            .iter()
            .map(|m| {
                (
                    m["addr"].as_str().unwrap_or("?").to_string(),
                    m["state"] == "up",
                )
            })
            .collect();
        Ok((ready, members))
    }

    /// Waits until every node is ready and sees exactly the members in `up` up, the rest down.
    fn wait_views(&self, what: &str, deadline: Duration, up_of: impl Fn(usize) -> Vec<usize>) {
        for node in 1..=NODES {
            let want: BTreeMap<String, bool> = (1..=NODES)
                .map(|m| (self.peer_addr(m), up_of(node).contains(&m)))
                .collect();
            wait_until(&format!("{what} (node {node})"), deadline, || {
                let (ready, members) = self.view(node)?;
                if ready && members == want {
                    Ok(())
                } else {
                    Err(format!("ready {ready}, members {members:?}, want {want:?}"))
                }
            });
        }
    }

    /// The service's instances at `node`, as `list --json` prints them (every field).
    fn list(&self, node: usize) -> Result<BTreeSet<String>, String> {
        let out = self.ctl(node, &["list", "--service", SERVICE, "--json"])?;
        let v: Value = serde_json::from_str(out.trim()).map_err(|e| format!("{e}: {out}"))?;
        let items = v.as_array().ok_or_else(|| format!("not an array: {out}"))?;
        // serde_json's maps are sorted, so equal instances print equal.
        Ok(items.iter().map(Value::to_string).collect())
    }

    fn keys(listed: &BTreeSet<String>) -> BTreeSet<Key> {
        listed
            .iter()
            .map(|s| {
                let v: Value = serde_json::from_str(s).unwrap();
                (
                    v["ip"].as_str().unwrap().to_string(),
                    v["port"].as_u64().unwrap() as u16,
                )
            })
            .collect()
    }

    /// A read during a cut: it must answer. A failed attempt is noted and retried, so that a
    /// slow machine does not fail the test, but a node that never answers does.
    fn read(&mut self, node: usize, when: &str) -> BTreeSet<Key> {
        let mut failures = 0;
        let listed = wait_until(
            &format!("a read at node {node} {when}"),
            DETECT_DEADLINE,
            || self.list(node).inspect_err(|_| failures += 1),
        );
        if failures > 0 {
            self.notes.push(format!(
                "a read at node {node} {when} failed {failures} time(s) before it answered"
            ));
        }
        Self::keys(&listed)
    }

    fn register(&mut self, node: usize, key: &Key) {
        let port = key.1.to_string();
        let mut args = vec![
            "register",
            "--service",
            SERVICE,
            "--ip",
            &key.0,
            "--port",
            &port,
        ];
        args.extend(LEASE_ARGS);
        self.write(node, &args, &format!("register {key:?}"));
    }

    fn deregister(&mut self, node: usize, key: &Key) {
        let port = key.1.to_string();
        let args = [
            "deregister",
            "--service",
            SERVICE,
            "--ip",
            &key.0,
            "--port",
            &port,
        ];
        self.write(node, &args, &format!("deregister {key:?}"));
    }

    /// A write must be acknowledged; failed attempts are noted and retried like reads.
    fn write(&mut self, node: usize, args: &[&str], what: &str) {
        let mut failures = Vec::new();
        wait_until(&format!("{what} at node {node}"), DETECT_DEADLINE, || {
            self.ctl(node, args)
                .inspect_err(|e| failures.push(e.clone()))
        });
        if !failures.is_empty() {
            self.notes.push(format!(
                "{what} at node {node} failed {} time(s) before it was acknowledged: {}",
                failures.len(),
                failures[0]
            ));
        }
    }

    /// The node responsible for `key` as node `at` sees it.
    fn owner(&self, at: usize, key: &Key) -> usize {
        let out = self
            .ctl(at, &["owner", "--ip", &key.0, "--port", &key.1.to_string()])
            .expect("owner");
        out.trim().parse().expect("owner id")
    }

    /// A key on `ip` whose owner with every node up is `owner` (as node 1 answers `distroctl
    /// owner`), and that `also` accepts.
    fn pick_key(&self, ip: &str, owner: usize, also: impl Fn(&Key) -> bool) -> Key {
        for port in 7000..7400 {
            let key = (ip.to_string(), port);
            if also(&key) && self.owner(1, &key) == owner {
                return key;
            }
        }
        panic!("no port of {ip} in 7000..7400 is owned by node {owner} and fits");
    }

    fn key_owned_by(&self, ip: &str, owner: usize) -> Key {
        self.pick_key(ip, owner, |_| true)
    }

    /// Waits until each node in `nodes` lists exactly `want`.
    fn wait_lists(&self, what: &str, nodes: &[usize], want: &BTreeSet<Key>) {
        for &node in nodes {
            wait_until(&format!("{what} (node {node})"), CONVERGE_DEADLINE, || {
                let got = Self::keys(&self.list(node)?);
                if &got == want {
                    Ok(())
                } else {
                    Err(format!(
                        "missing {:?}, extra {:?}",
                        want.difference(&got).collect::<Vec<_>>(),
                        got.difference(want).collect::<Vec<_>>()
                    ))
                }
            });
        }
    }

    /// Waits until all nodes list the same instances, every field equal, and those are `want`.
    fn wait_converged(&self, what: &str, want: &BTreeSet<Key>) {
        wait_until(what, CONVERGE_DEADLINE, || {
            let lists = (1..=NODES)
                .map(|n| self.list(n))
                .collect::<Result<Vec<_>, _>>()?;
            for (i, l) in lists.iter().enumerate() {
                let got = Self::keys(l);
                if &got != want {
                    return Err(format!(
                        "node {}: missing {:?}, extra {:?}",
                        i + 1,
                        want.difference(&got).collect::<Vec<_>>(),
                        got.difference(want).collect::<Vec<_>>()
                    ));
                }
            }
            if lists.iter().any(|l| l != &lists[0]) {
                return Err(format!("same keys, different instances: {lists:#?}"));
            }
            Ok(())
        });
    }

    fn set_link(&self, node: usize, up: bool) {
        let port = Self::bridge_port(node);
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.ns_bridge(), "link", "set", &port, state]).expect("set link");
    }

    fn scenario(&mut self) {
        let t = Instant::now();
        self.wait_views("all nodes ready and up", START_DEADLINE, |_| {
            (1..=NODES).collect()
        });
        phase(t, "3 nodes ready, all up");

        // A base set, written at every node, seen at every node.
        let mut expected: BTreeSet<Key> = BTreeSet::new();
        for i in 0..6u16 {
            let key = ("192.0.2.200".to_string(), 9000 + i);
            self.register(usize::from(i) % NODES + 1, &key);
            expected.insert(key);
        }
        self.wait_converged("the base set on every node", &expected);
        phase(t, "base set on all nodes");

        // Cut node 3 off from 1 and 2 and heal at once; then node 1 off from 2 and 3 for longer,
        // long enough that TCP's retransmission backoff outlasts the heal, so that the heal
        // relies on request deadlines and redials rather than on a connection resuming.
        let rounds = [(3, 1, Duration::ZERO), (1, 2, Duration::from_secs(6))];
        for (round, (cut, side, hold)) in rounds.into_iter().enumerate() {
            self.partition_round(round + 1, cut, side, hold, &mut expected, t);
        }
    }

    /// Cuts node `cut` off; `side` is a node on the other side of the cut. After the writes the
    /// cut lasts `hold` more, with reads at every node all along.
    fn partition_round(
        &mut self,
        round: usize,
        cut: usize,
        side: usize,
        hold: Duration,
        expected: &mut BTreeSet<Key>,
        t: Instant,
    ) {
        let majority: Vec<usize> = (1..=NODES).filter(|&n| n != cut).collect();
        // Keys whose owner (with all nodes up) is on either side, for each kind of change, so
        // that the heal merges a change made away from the key's owner as well as at it.
        let ip = |kind: usize| format!("192.0.2.{}", round * 16 + kind);
        let x_side = self.key_owned_by(&ip(0), side); // written on the majority side
        let x_cut = self.key_owned_by(&ip(1), cut);
        // Written at the cut-off node, and owned by the third node in the view {cut, third}: if
        // the cut-off node sees that node back first it hands the key there, to a node that
        // stores it as the side's (see `staggered_heal_keeps_a_write_made_on_the_cut_off_side`).
        let third = 6 - cut - side;
        let y_side = self.pick_key(&ip(2), side, |k| owner_in(&[cut, third], k) == third);
        let y_cut = self.key_owned_by(&ip(3), cut);
        let d_side = self.key_owned_by(&ip(4), side); // deleted on the majority side
        let d_cut = self.key_owned_by(&ip(5), cut);
        let e_side = self.key_owned_by(&ip(6), side); // deleted at the cut-off node
        let e_cut = self.key_owned_by(&ip(7), cut);

        for (i, key) in [&d_side, &d_cut, &e_side, &e_cut].into_iter().enumerate() {
            self.register(i % NODES + 1, key);
            expected.insert(key.clone());
        }
        self.wait_converged(&format!("round {round}: pre-cut set everywhere"), expected);
        phase(t, &format!("round {round}: pre-cut set everywhere"));

        self.set_link(cut, false);
        phase(t, &format!("round {round}: cut node {cut}"));

        // Reads answer on both sides at once, before anyone noticed the cut.
        for node in 1..=NODES {
            let got = self.read(node, &format!("right after cutting node {cut}"));
            assert_eq!(&got, expected, "node {node} right after the cut");
        }

        self.wait_views(
            &format!("round {round}: both sides see the cut"),
            DETECT_DEADLINE,
            |node| {
                if node == cut {
                    vec![cut]
                } else {
                    majority.clone()
                }
            },
        );
        phase(t, &format!("round {round}: both sides see the cut"));

        // Writes on both sides; deletions on both sides.
        self.register(side, &x_side);
        self.register(side, &x_cut);
        self.deregister(side, &d_side);
        self.deregister(side, &d_cut);
        self.register(cut, &y_side);
        self.register(cut, &y_cut);
        self.deregister(cut, &e_side);
        self.deregister(cut, &e_cut);

        // Each side sees its own changes and none of the other side's: the cut is real.
        let mut majority_view = expected.clone();
        majority_view.extend([x_side.clone(), x_cut.clone()]);
        majority_view.remove(&d_side);
        majority_view.remove(&d_cut);
        let mut cut_view = expected.clone();
        cut_view.extend([y_side.clone(), y_cut.clone()]);
        cut_view.remove(&e_side);
        cut_view.remove(&e_cut);
        self.wait_lists(
            &format!("round {round}: majority side during the cut"),
            &majority,
            &majority_view,
        );
        self.wait_lists(
            &format!("round {round}: node {cut} during the cut"),
            &[cut],
            &cut_view,
        );
        phase(t, &format!("round {round}: writes on both sides"));
        // Reads keep answering on both sides, with what each side holds, as long as the cut lasts.
        let held = Instant::now();
        loop {
            for node in 1..=NODES {
                let got = self.read(node, &format!("during the cut of node {cut}"));
                let want = if node == cut {
                    &cut_view
                } else {
                    &majority_view
                };
                assert_eq!(&got, want, "node {node} during the cut of node {cut}");
            }
            if held.elapsed() >= hold {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }

        self.set_link(cut, true);
        phase(t, &format!("round {round}: restored node {cut}"));
        self.wait_views(
            &format!("round {round}: all up after the heal"),
            DETECT_DEADLINE,
            |_| (1..=NODES).collect(),
        );
        expected.extend([x_side, x_cut, y_side, y_cut]);
        for key in [&d_side, &d_cut, &e_side, &e_cut] {
            expected.remove(key);
        }
        self.wait_converged(
            &format!("round {round}: convergence after the heal"),
            expected,
        );
        phase(t, &format!("round {round}: converged"));

        // The deletions stick: after a few more anti-entropy rounds none of them is back, and
        // the nodes still agree (checked once, not polled, so a flicker would fail).
        std::thread::sleep(Duration::from_secs(3));
        let lists: Vec<BTreeSet<String>> = (1..=NODES)
            .map(|node| self.list(node).expect("list after convergence"))
            .collect();
        for (i, l) in lists.iter().enumerate() {
            assert_eq!(
                &Self::keys(l),
                expected,
                "node {}, 3 s after convergence",
                i + 1
            );
            assert_eq!(l, &lists[0], "node {} differs from node 1", i + 1);
        }
    }

    /// Cuts (or restores) the path between nodes `a` and `b` alone, with a blackhole route to
    /// the other in each one's namespace; every other path stays as it is.
    fn set_pair(&self, a: usize, b: usize, connected: bool) {
        for (from, to) in [(a, b), (b, a)] {
            let dst = format!("{}/32", self.addr(to));
            let op = if connected { "del" } else { "add" };
            ip(&["-n", &self.ns(from), "route", op, "blackhole", &dst]).expect("set route");
        }
    }

    /// Node 1 cut off from both others; it takes a write; then its link to node 3 comes back
    /// well before its link to node 2. The write must survive.
    fn staggered_heal(&mut self) {
        let t = Instant::now();
        self.wait_views("all nodes ready and up", START_DEADLINE, |_| {
            (1..=NODES).collect()
        });
        phase(t, "3 nodes ready, all up");
        // Owned by node 2 with every node up, by node 3 in the view {1, 3}.
        let key = self.pick_key("192.0.2.100", 2, |k| owner_in(&[1, 3], k) == 3);
        let expected: BTreeSet<Key> = [key.clone()].into();

        self.set_pair(1, 2, false);
        self.set_pair(1, 3, false);
        self.wait_views("node 1 cut off", DETECT_DEADLINE, |node| match node {
            1 => vec![1],
            _ => vec![2, 3],
        });
        phase(t, "node 1 cut off");
        self.register(1, &key);
        self.wait_lists("node 1 holds the write", &[1], &expected);
        phase(t, &format!("registered {key:?} at node 1"));

        self.set_pair(1, 3, true);
        self.wait_views(
            "link 1-3 back, 1-2 still cut",
            DETECT_DEADLINE,
            |node| match node {
                1 => vec![1, 3],
                2 => vec![2, 3],
                _ => vec![1, 2, 3],
            },
        );
        phase(t, "link 1-3 back");
        // Long enough for the handoff and a few anti-entropy rounds in this state.
        std::thread::sleep(Duration::from_secs(3));

        self.set_pair(1, 2, true);
        self.wait_views("all up", DETECT_DEADLINE, |_| (1..=NODES).collect());
        phase(t, "link 1-2 back");
        self.wait_converged("the write on every node after the heal", &expected);
        phase(t, "converged");
        // It stays (anti-entropy would drop it within a few verify intervals).
        std::thread::sleep(Duration::from_secs(5));
        for node in 1..=NODES {
            let got = Self::keys(&self.list(node).expect("list"));
            assert_eq!(got, expected, "node {node}, 5 s after convergence");
        }
    }

    /// Sends SIGTERM to every node still running and waits for it, SIGKILL after a grace
    /// period longer than distrod's own shutdown deadline; how each exited (`None`: it had to
    /// be killed).
    fn stop_nodes(&mut self) -> Vec<Option<ExitStatus>> {
        for n in self.nodes.iter().filter(|n| !n.stopped) {
            let _ = Command::new("kill")
                .args(["-TERM", &n.child.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let grace = Instant::now();
        let mut exits = Vec::new();
        for n in self.nodes.iter_mut().filter(|n| !n.stopped) {
            let exit = loop {
                match n.child.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) if grace.elapsed() < Duration::from_secs(10) => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = n.child.kill();
                        let _ = n.child.wait();
                        break None;
                    }
                }
            };
            n.stopped = true;
            exits.push(exit);
        }
        exits
    }

    fn cleanup(&mut self) {
        let failed = std::thread::panicking();
        self.stop_nodes();
        if let Ok(keep) = std::env::var("DISTRO_NETNS_KEEP_LOGS") {
            let _ = std::fs::create_dir_all(&keep);
            for (i, n) in self.nodes.iter().enumerate() {
                let _ = std::fs::copy(
                    &n.log,
                    PathBuf::from(&keep).join(format!("{}-node{}.log", self.prefix, i + 1)),
                );
            }
        }
        if failed {
            for (i, n) in self.nodes.iter().enumerate() {
                let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(60)..];
                eprintln!("---- node {} log (last {} lines)", i + 1, tail.len());
                for l in tail {
                    eprintln!("{l}");
                }
            }
        }
        // Anything else still running in our namespaces was started by this test.
        for ns in &self.namespaces {
            kill_all_in(ns);
        }
        // Deleting a namespace deletes its ends of the veth pairs (and so the other ends).
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                eprintln!("cleanup: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.cleanup();
    }
}
