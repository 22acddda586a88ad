//! One simulated run: the real `distrod` nodes and SDK clients on turmoil hosts, a probe that
//! reads every node all the time, the driver that applies the plan's events between simulation
//! steps, and the checker of the properties of design.md section 4.
//!
//! Everything runs on the test's thread (turmoil ticks every host's single-threaded runtime in
//! turn), so the shared [`State`] is only ever touched by one task at a time and the checker can
//! read every node's store directly between two steps.
//!
//! What is checked, and when:
//! - *reads always answer*: every probe read of a node that was running and ready when the read
//!   was sent, and is still the same incarnation when it fails, is a violation;
//! - *no flapping*: an instance the probe saw on node N, whose client stayed alive, beating and
//!   connected to N (the same connection, to the incarnation of N that answered) since before
//!   that sighting, must still be in N's next read — and, for a subscriber of every service on
//!   every node, in N's next push;
//! - *pushes are right*: the probe's subscriber applies every push of a connection in order (a
//!   whole list replaces, a delta must follow on from the list it holds, or it is a violation),
//!   and the list it then holds must equal N's own list at that revision (a query of N's store
//!   at the same revision, sampled after every step);
//! - every second, and at the end: `Store::check_invariants` on every running node;
//! - at the end, [`SETTLE_MS`] after the faults stopped: every running node is ready and all
//!   hold the same live instances with the same versions (convergence); every instance whose
//!   register was acknowledged and whose client is alive is on every node (no acknowledged write
//!   lost); no instance of a dead client, a failed register or a deregistration is on any node
//!   (no zombies); no node holds an instance nobody registered;
//! - any panic in a simulated task (a node's runtime would swallow it) fails the run.
//!
//! `DISTRO_SIM_WATCH=ip:port,...` traces every change of those records on every node.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, UNIX_EPOCH};

use distro::client::{Client, ClientConfig};
use distro::clock::Clock;
use distro::config::Config;
use distro::model::{Instance, InstanceKey, Lease, ServiceName, ServiceSnapshot, Version};
use distro::node::Node;
use distro::server::Server;
use distro::wire::{
    ErrorCode, FRAME_LEN_MAX, FrameCodec, Hello, Message, PROTOCOL_VERSION, Query, encode_frame,
};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::FramedRead;

use super::plan::{Event, Plan, SERVICES};
use super::transport::{SimDialer, SimListener};

pub const CLIENT_PORT: u16 = 8858;
pub const PEER_PORT: u16 = 8859;
/// The wall clock every node starts from (plus its skew).
const EPOCH_MS: u64 = 1_700_000_000_000;
/// Simulated time per step.
const TICK_MS: u64 = 1;
/// The lease every simulated instance asks for: short, so that a run covers many lease periods.
pub const LEASE: Lease = Lease {
    beat_ms: 200,
    unhealthy_ms: 600,
    expire_ms: 1_500,
};
/// How long after the faults end the final check runs. The design's bound is one member
/// timeout (views agree) plus a verify interval, a sync window and a round trip, plus, for
/// zombies, one expire-after (a takeover grants a fresh lease); a restarted node's load and a
/// client's reconnect backoff (up to 2 s) come on top. Generous on purpose: the measured
/// settling time is reported separately.
pub const SETTLE_MS: u64 = 8_000;
/// The probe reads every service of every node this often.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// A read (or connect) the probe does not get an answer to within this is a failed read. Far
/// above any simulated round trip: a ready node answers a query from memory.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Client hosts look for new commands (and report their connection) this often.
const CLIENT_POLL: Duration = Duration::from_millis(10);
/// How often the store invariants are rechecked during a run.
const INVARIANTS_EVERY_MS: u64 = 1_000;
/// How often convergence is sampled after the faults end.
const CONVERGENCE_EVERY_MS: u64 = 20;

fn now_ms() -> u64 {
    turmoil::sim_elapsed()
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn service(s: usize) -> ServiceName {
    ServiceName::new("public", "DEFAULT_GROUP", &format!("svc{s}"))
}

/// An instance's identity as the model knows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct InstId {
    pub service: usize,
    pub ip: String,
    pub port: u16,
}

impl InstId {
    pub fn key(&self) -> InstanceKey {
        InstanceKey {
            service: service(self.service),
            cluster: "DEFAULT".into(),
            ip: self.ip.as_str().into(),
            port: self.port,
        }
    }
}

impl std::fmt::Display for InstId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "svc{}/{}:{}", self.service, self.ip, self.port)
    }
}

/// What the model knows of one instance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InstState {
    /// Register sent, no answer yet.
    Pending { since: u64 },
    /// Register acknowledged: the client keeps it alive.
    Acked { at: u64 },
    /// Register failed: nobody beats it; it must go within its lease.
    Failed { at: u64 },
    /// Deregister sent, no answer yet.
    Dropping { since: u64 },
    /// Deregistered (acknowledged or not: either way nobody beats it any more).
    Deregistered { at: u64, acked: bool },
    /// Its client crashed or closed.
    Dead { since: u64 },
}

pub struct Inst {
    pub client: usize,
    pub inc: u32,
    pub state: InstState,
}

pub enum Cmd {
    Register(Vec<InstId>),
    Deregister(Vec<InstId>),
    Close,
}

#[derive(Default)]
pub struct NodeSlot {
    /// The running incarnation's node (None while down or not yet started).
    pub node: Option<Arc<Node>>,
    pub inc: u32,
    pub running: bool,
    /// When the running incarnation started.
    pub started_ms: u64,
    /// Asks the running incarnation to stop gracefully (leave, then stop).
    pub stop: Option<Arc<tokio::sync::Notify>>,
}

#[derive(Default)]
pub struct ClientSlot {
    pub inc: u32,
    /// The client application is running (not crashed, not closed).
    pub up: bool,
    pub commands: VecDeque<Cmd>,
    /// The node its SDK is connected to, and since when (the same connection).
    pub conn: Option<u16>,
    pub conn_since: u64,
    pub isolated: bool,
    pub last_isolation_end: u64,
    next_port: u16,
}

/// Counters a run reports.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub registers_acked: u64,
    pub registers_failed: u64,
    pub deregisters_acked: u64,
    pub deregisters_failed: u64,
    pub reads_ok: u64,
    pub pushes: u64,
    /// Of the pushes, those that were deltas.
    pub deltas: u64,
    /// Pushes whose resulting list was compared with the node's list at the same revision.
    pub pushes_checked: u64,
    pub reads_not_ready: u64,
    pub reads_excused: u64,
    pub node_crashes: u64,
    pub node_stops: u64,
    pub client_crashes: u64,
    pub partitions: u64,
}

/// Every observed event, hashed (FNV-1a) so that two runs of a seed can be compared, with the
/// most recent lines kept for a failure report.
pub struct Trace {
    pub hash: u64,
    pub lines: u64,
    recent: VecDeque<String>,
    echo: bool,
}

const TRACE_RECENT: usize = 120;

impl Trace {
    fn new(echo: bool) -> Trace {
        Trace {
            hash: 0xcbf2_9ce4_8422_2325,
            lines: 0,
            recent: VecDeque::new(),
            echo,
        }
    }

    pub fn push(&mut self, t: u64, line: impl AsRef<str>) {
        let line = format!("{t:>6} ms  {}", line.as_ref());
        for b in line.bytes().chain(std::iter::once(b'\n')) {
            self.hash ^= b as u64;
            self.hash = self.hash.wrapping_mul(0x100_0000_01b3);
        }
        self.lines += 1;
        if self.echo {
            eprintln!("[sim] {line}");
        }
        if self.recent.len() == TRACE_RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
    }
}

pub struct State {
    pub nodes: Vec<NodeSlot>,
    pub clients: Vec<ClientSlot>,
    pub insts: BTreeMap<InstId, Inst>,
    /// (node, node incarnation, reads or pushes, instance) -> when the probe last saw it there.
    seen: BTreeMap<(usize, u32, Via, InstId), u64>,
    /// (node, reads or pushes, service) -> hash of the last one, so the trace records only
    /// changes.
    last_read: BTreeMap<(usize, Via, usize), u64>,
    /// (node, incarnation, service) -> the node's lists at the last revisions the driver saw
    /// (after each step), oldest first: what a push at one of those revisions must equal.
    lists_seen: BTreeMap<(usize, u32, usize), VecDeque<ServiceSnapshot>>,
    pub violations: Vec<String>,
    /// Flaps, when they are only reported ([`Checks::flaps_fail`] off).
    pub flaps: Vec<String>,
    checks: Checks,
    pub trace: Trace,
    pub stats: Stats,
}

pub type Shared = Arc<Mutex<State>>;

impl State {
    fn violation(&mut self, t: u64, v: String) {
        self.trace.push(t, format!("VIOLATION {v}"));
        self.violations.push(format!("at {t} ms: {v}"));
    }

    fn flap(&mut self, t: u64, v: String) {
        if self.checks.flaps_fail {
            self.violation(t, v);
        } else {
            self.trace.push(t, format!("FLAP (reported only) {v}"));
            self.flaps.push(format!("at {t} ms: {v}"));
        }
    }

    /// The list the probe's subscriber holds for service `s` after a push of node `i`
    /// (incarnation `inc`) must be the node's list at that revision.
    fn check_pushed_list(&mut self, i: usize, inc: u32, s: usize, list: &ServiceSnapshot, t: u64) {
        let current = match &self.nodes[i] {
            NodeSlot {
                node: Some(node),
                inc: now_inc,
                running: true,
                ..
            } if *now_inc == inc => Some(node_list(node, s)),
            _ => None,
        };
        let want = self
            .lists_seen
            .get(&(i, inc, s))
            .and_then(|h| {
                h.iter()
                    .rev()
                    .find(|l| l.revision == list.revision)
                    .cloned()
            })
            .or(current.filter(|c| c.revision == list.revision));
        let Some(want) = want else {
            // A revision that came and went within one step: not sampled.
            return;
        };
        self.stats.pushes_checked += 1;
        if want != *list {
            let show = |l: &ServiceSnapshot| {
                l.instances
                    .iter()
                    .map(|v| format!("{}:{}{}", v.ip, v.port, if v.healthy { "" } else { "!" }))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            self.violation(
                t,
                format!(
                    "the probe's list of svc{s} after n{}'s pushes is [{}] at revision {}, but \
                     n{} listed [{}] at that revision",
                    i + 1,
                    show(list),
                    list.revision,
                    i + 1,
                    show(&want)
                ),
            );
        }
    }

    /// (incarnation, ready) of a running node.
    fn node_status(&self, i: usize) -> Option<(u32, bool)> {
        let n = &self.nodes[i];
        match (&n.node, n.running) {
            (Some(node), true) => Some((n.inc, node.is_ready())),
            _ => None,
        }
    }

    fn node_started(&mut self, i: usize, node: Arc<Node>, stop: Arc<tokio::sync::Notify>, t: u64) {
        let slot = &mut self.nodes[i];
        slot.inc += 1;
        slot.node = Some(node);
        slot.stop = Some(stop);
        slot.running = true;
        slot.started_ms = t;
        let inc = slot.inc;
        self.trace
            .push(t, format!("n{} started (incarnation {inc})", i + 1));
    }

    fn client_started(&mut self, c: usize, t: u64) -> u32 {
        let slot = &mut self.clients[c];
        slot.inc += 1;
        slot.up = true;
        slot.conn = None;
        slot.commands.clear();
        slot.next_port = 1000;
        let inc = slot.inc;
        self.trace
            .push(t, format!("c{} started (incarnation {inc})", c + 1));
        inc
    }

    /// The client reports its connection and takes its commands.
    fn client_poll(&mut self, c: usize, inc: u32, conn: Option<u16>, t: u64) -> Vec<Cmd> {
        let slot = &mut self.clients[c];
        if slot.inc != inc || !slot.up {
            return Vec::new();
        }
        if slot.conn != conn {
            slot.conn = conn;
            slot.conn_since = t;
            let line = match conn {
                Some(n) => format!("c{} connected to n{n}", c + 1),
                None => format!("c{} disconnected", c + 1),
            };
            self.trace.push(t, line);
        }
        self.clients[c].commands.drain(..).collect()
    }

    /// The client is gone (crashed or closed): everything it held is dead from now on.
    fn client_gone(&mut self, c: usize, t: u64, how: &str) {
        let slot = &mut self.clients[c];
        if !slot.up {
            return;
        }
        slot.up = false;
        slot.conn = None;
        slot.commands.clear();
        let inc = slot.inc;
        for inst in self.insts.values_mut() {
            if inst.client == c
                && inst.inc == inc
                && matches!(
                    inst.state,
                    InstState::Pending { .. }
                        | InstState::Acked { .. }
                        | InstState::Dropping { .. }
                )
            {
                inst.state = InstState::Dead { since: t };
            }
        }
        self.trace.push(t, format!("c{} {how}", c + 1));
    }

    fn register_done(&mut self, c: usize, inc: u32, ids: &[InstId], r: Result<(), String>, t: u64) {
        let ok = r.is_ok();
        for id in ids {
            if let Some(inst) = self.insts.get_mut(id)
                && inst.inc == inc
                && matches!(inst.state, InstState::Pending { .. })
            {
                inst.state = if ok {
                    InstState::Acked { at: t }
                } else {
                    InstState::Failed { at: t }
                };
            }
        }
        let names: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        match r {
            Ok(()) => {
                self.stats.registers_acked += 1;
                self.trace
                    .push(t, format!("c{} register acked: {}", c + 1, names.join(" ")));
            }
            Err(e) => {
                self.stats.registers_failed += 1;
                self.trace.push(
                    t,
                    format!("c{} register failed ({e}): {}", c + 1, names.join(" ")),
                );
            }
        }
    }

    fn deregister_done(&mut self, c: usize, ids: &[InstId], r: Result<u32, String>, t: u64) {
        let acked = r.is_ok();
        for id in ids {
            if let Some(inst) = self.insts.get_mut(id)
                && matches!(inst.state, InstState::Dropping { .. })
            {
                inst.state = InstState::Deregistered { at: t, acked };
            }
        }
        let names: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        match r {
            Ok(n) => {
                self.stats.deregisters_acked += 1;
                self.trace.push(
                    t,
                    format!(
                        "c{} deregister acked ({n} removed): {}",
                        c + 1,
                        names.join(" ")
                    ),
                );
            }
            Err(e) => {
                self.stats.deregisters_failed += 1;
                self.trace.push(
                    t,
                    format!("c{} deregister failed ({e}): {}", c + 1, names.join(" ")),
                );
            }
        }
    }

    /// A probe read (or connect) of node `i` failed. A violation unless the node was not ready
    /// when it was sent, or is no longer the incarnation it was sent to.
    fn read_failed(&mut self, i: usize, inc0: u32, ready0: bool, t0: u64, t1: u64, what: String) {
        let same = self.node_status(i).map(|(inc, _)| inc) == Some(inc0);
        if ready0 && same {
            self.violation(
                t1,
                format!(
                    "n{} did not answer a read sent at {t0} ms while running and ready: {what}",
                    i + 1
                ),
            );
        } else {
            self.stats.reads_excused += 1;
        }
    }

    fn read_not_ready(&mut self, i: usize, inc0: u32, ready0: bool, t0: u64, t1: u64) {
        let same = self.node_status(i).map(|(inc, _)| inc) == Some(inc0);
        if ready0 && same {
            self.violation(
                t1,
                format!(
                    "n{} answered NotReady to a read sent at {t0} ms while ready",
                    i + 1
                ),
            );
        } else {
            self.stats.reads_not_ready += 1;
        }
    }

    /// A probe read of service `s` on node `i` answered, or node `i` pushed it to the probe's
    /// subscriber: record it and check that nothing vanished that must not (see the module doc,
    /// "no flapping").
    #[allow(clippy::too_many_arguments)]
    fn observed(
        &mut self,
        i: usize,
        inc0: u32,
        via: Via,
        s: usize,
        snap: &ServiceSnapshot,
        t0: u64,
        t1: u64,
    ) {
        match via {
            Via::Read => self.stats.reads_ok += 1,
            Via::Push => self.stats.pushes += 1,
        }
        let present: BTreeSet<(String, u16)> = snap
            .instances
            .iter()
            .map(|v| (v.ip.as_str().to_string(), v.port))
            .collect();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (ip, port) in &present {
            for b in ip.bytes().chain(port.to_be_bytes()) {
                h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
            }
        }
        if self.last_read.insert((i, via, s), h) != Some(h) {
            let mut names: Vec<String> =
                present.iter().map(|(ip, p)| format!("{ip}:{p}")).collect();
            names.truncate(12);
            self.trace.push(
                t1,
                format!(
                    "{} n{} svc{s}: {} instances [{}]",
                    via.one(),
                    i + 1,
                    present.len(),
                    names.join(" ")
                ),
            );
        }
        let node_id = i as u16 + 1;
        let node_started = self.nodes[i].started_ms;
        let mut vanished = Vec::new();
        for (id, inst) in self.insts.iter().filter(|(id, _)| id.service == s) {
            let key = (i, inc0, via, id.clone());
            if present.contains(&(id.ip.clone(), id.port)) {
                self.seen.insert(key, t1);
                continue;
            }
            let Some(prev) = self.seen.remove(&key) else {
                continue;
            };
            let InstState::Acked { at } = inst.state else {
                continue;
            };
            let cl = &self.clients[inst.client];
            // Connected to this incarnation of the node: a connection to one that crashed
            // (hard: no close reached the client) still names the node until it times out.
            // And connected since the client's last isolation: simulated TCP never retransmits,
            // so a connection that lost frames in one stays wedged, and the client's beats do
            // not reach the node until its request timeout replaces the connection (over real
            // TCP the frames are retransmitted and the beats resume).
            let steady = cl.up
                && cl.inc == inst.inc
                && cl.conn == Some(node_id)
                && cl.conn_since >= node_started
                && cl.conn_since <= prev
                && at <= prev
                && !cl.isolated
                && cl.last_isolation_end <= cl.conn_since;
            if steady {
                vanished.push((id.clone(), prev, inst.client, cl.conn_since));
            }
        }
        for (id, prev, c, since) in vanished {
            let detail = self.nodes[i]
                .node
                .as_ref()
                .map(|n| {
                    let rec = match n.store.get(&id.key()) {
                        None => "no record (removed without a tombstone)".to_string(),
                        Some(r) => format!(
                            "{} (version {}/{}, owner by its view n{}, touched {})",
                            match (r.alive, r.lapsed) {
                                (true, _) => "alive".to_string(),
                                (false, true) => {
                                    format!("an expiry tombstone made by n{}", r.version.origin)
                                }
                                (false, false) => format!(
                                    "a deregistration tombstone made by n{}",
                                    r.version.origin
                                ),
                            },
                            { r.version.hlc },
                            r.version.origin,
                            r.owner,
                            r.touched_ms
                        ),
                    };
                    format!(
                        "n{node_id} now holds {rec}; its view {:?}",
                        n.store.ownership().live()
                    )
                })
                .unwrap_or_default();
            self.flap(
                t1,
                format!(
                    "flap: {id} of c{} vanished from n{node_id}'s {} (seen at {prev} ms, gone \
                     in the {} sent at {t0} ms) while c{} was alive, beating and connected to \
                     n{node_id} since {since} ms; {detail}",
                    c + 1,
                    via.many(),
                    via.one(),
                    c + 1
                ),
            );
        }
    }
}

/// Lists kept per (node, incarnation, service) for the push check.
const LISTS_KEPT: usize = 256;

/// Node `node`'s whole list of service `s` now, as a query answers it.
fn node_list(node: &Node, s: usize) -> ServiceSnapshot {
    ServiceSnapshot::decode_body(node.store.query(&service(s), "", false))
        .expect("the store encodes well-formed snapshots")
}

/// The revision of an encoded snapshot, without decoding the instances.
fn revision_of(body: &bytes::Bytes) -> u64 {
    let mut r = distro::wire::Reader::new(body.clone());
    ServiceName::decode(&mut r)
        .and_then(|_| r.u64("revision"))
        .expect("the store encodes well-formed snapshots")
}

/// Counts panics on this thread: a panic in a task spawned by a simulated node is caught by its
/// runtime and would otherwise go unnoticed.
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            previous(info);
        }));
    });
}

thread_local! {
    static PANICS: Cell<u32> = const { Cell::new(0) };
}

fn node_config(i: usize, ips: &[IpAddr]) -> Config {
    Config {
        node_id: i as u16 + 1,
        listen: SocketAddr::new(ips[i], CLIENT_PORT),
        peer_listen: SocketAddr::new(ips[i], PEER_PORT),
        members: ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, PEER_PORT).into())
            .collect(),
        cluster_token: Some("sim-cluster-token".into()),
        member_timeout_ms: 600,
        verify_interval_ms: 500,
        sync_delay_ms: 10,
        lease_floor_ms: 100,
        lease_pass_ms: 50,
        client_idle_timeout_ms: 1_000,
        push_delay_ms: 5,
        ..Config::default()
    }
}

/// A raw client connection of the probe: one request at a time, answers matched by id.
struct ProbeConn {
    rd: FramedRead<turmoil::net::tcp::OwnedReadHalf, FrameCodec>,
    wr: turmoil::net::tcp::OwnedWriteHalf,
    next_id: u32,
}

impl ProbeConn {
    async fn open(addr: &str) -> Result<ProbeConn, String> {
        let s = turmoil::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (rd, wr) = s.into_split();
        let mut c = ProbeConn {
            rd: FramedRead::new(rd, FrameCodec::new(FRAME_LEN_MAX)),
            wr,
            next_id: 0,
        };
        let hello = Message::Hello(Hello {
            max_version: PROTOCOL_VERSION,
            client_name: "sim-probe".into(),
        });
        match c.call(&hello).await? {
            Message::HelloOk(_) => Ok(c),
            other => Err(format!("hello answered with {:?}", other.opcode())),
        }
    }

    /// A connection subscribed to every service (the acks and pushes follow on it).
    async fn subscribed(addr: &str) -> Result<ProbeConn, String> {
        let mut c = ProbeConn::open(addr).await?;
        for s in 0..SERVICES {
            c.next_id += 1;
            c.wr.write_all(&encode_frame(c.next_id, 0, &Message::Subscribe(service(s))))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(c)
    }

    async fn call(&mut self, msg: &Message) -> Result<Message, String> {
        self.next_id += 1;
        let id = self.next_id;
        self.wr
            .write_all(&encode_frame(id, 0, msg))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match self.rd.next().await {
                Some(Ok(f)) if f.request_id == id => return f.message().map_err(|e| e.to_string()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("connection closed".into()),
            }
        }
    }
}

/// How the probe saw a service's instances on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Via {
    Read,
    Push,
}

impl Via {
    fn one(self) -> &'static str {
        match self {
            Via::Read => "read",
            Via::Push => "push",
        }
    }

    fn many(self) -> &'static str {
        match self {
            Via::Read => "reads",
            Via::Push => "pushes",
        }
    }
}

/// The probe's subscriber on one node: subscribes to every service on each incarnation of the
/// node (once it takes subscriptions) and checks every push like a read.
async fn watch_pushes(shared: Shared, i: usize, addr: String) {
    let mut conn: Option<(u32, ProbeConn)> = None;
    // The lists the pushes of the current connection made, per service.
    let mut lists: BTreeMap<usize, ServiceSnapshot> = BTreeMap::new();
    loop {
        let status = shared.lock().unwrap().node_status(i);
        let Some((inc, true)) = status else {
            conn = None;
            tokio::time::sleep(PROBE_EVERY).await;
            continue;
        };
        if conn.as_ref().is_none_or(|(ci, _)| *ci != inc) {
            lists.clear();
            conn = match tokio::time::timeout(PROBE_TIMEOUT, ProbeConn::subscribed(&addr)).await {
                Ok(Ok(c)) => Some((inc, c)),
                _ => {
                    tokio::time::sleep(PROBE_EVERY).await;
                    continue;
                }
            };
        }
        let Some((_, c)) = conn.as_mut() else {
            continue;
        };
        // Wake up now and then to notice a restart (a hard crash closes nothing).
        let frame = match tokio::time::timeout(PROBE_EVERY, c.rd.next()).await {
            Err(_) => continue,
            Ok(Some(Ok(f))) => f,
            Ok(_) => {
                conn = None;
                continue;
            }
        };
        let (s, list, delta) = match frame.message() {
            Ok(Message::Push(snap)) => match (0..SERVICES).find(|&s| service(s) == snap.name) {
                Some(s) => (s, snap, false),
                None => continue,
            },
            Ok(Message::PushDelta(d)) => {
                let Some(s) = (0..SERVICES).find(|&s| service(s) == d.name) else {
                    continue;
                };
                let applied = match lists.get(&s) {
                    Some(held) => held.apply(&d).map_err(|e| e.to_string()),
                    None => Err("no whole list came before it".to_string()),
                };
                match applied {
                    Ok(list) => (s, list, true),
                    Err(why) => {
                        shared.lock().unwrap().violation(
                            now_ms(),
                            format!(
                                "n{} pushed a delta of svc{s} that does not follow on ({why}): \
                                 base revision {}, revision {}",
                                i + 1,
                                d.base_revision,
                                d.revision
                            ),
                        );
                        conn = None;
                        continue;
                    }
                }
            }
            // Subscribed (Ack) — or refused (not ready yet): subscribe again later.
            Ok(Message::Ack(_)) => continue,
            _ => {
                conn = None;
                continue;
            }
        };
        let t = now_ms();
        let mut st = shared.lock().unwrap();
        st.stats.deltas += delta as u64;
        st.observed(i, inc, Via::Push, s, &list, t, t);
        st.check_pushed_list(i, inc, s, &list, t);
        drop(st);
        lists.insert(s, list);
    }
}

/// The probe's loop for one node: reads every service every [`PROBE_EVERY`].
async fn probe_node(shared: Shared, i: usize, addr: String) {
    let mut conn: Option<(u32, ProbeConn)> = None;
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let status = shared.lock().unwrap().node_status(i);
        let Some((inc, ready)) = status else {
            conn = None;
            continue;
        };
        if conn.as_ref().is_none_or(|(ci, _)| *ci != inc) {
            let t0 = now_ms();
            match tokio::time::timeout(PROBE_TIMEOUT, ProbeConn::open(&addr)).await {
                Ok(Ok(c)) => conn = Some((inc, c)),
                other => {
                    let what = match other {
                        Ok(Err(e)) => format!("connect: {e}"),
                        _ => "connect timed out".into(),
                    };
                    conn = None;
                    shared
                        .lock()
                        .unwrap()
                        .read_failed(i, inc, ready, t0, now_ms(), what);
                    continue;
                }
            }
        }
        let Some((_, c)) = conn.as_mut() else {
            continue;
        };
        for s in 0..SERVICES {
            let t0 = now_ms();
            let Some((inc0, ready0)) = shared.lock().unwrap().node_status(i) else {
                break;
            };
            let q = Message::Query(Query {
                name: service(s),
                cluster: "".into(),
                healthy_only: false,
            });
            let r = tokio::time::timeout(PROBE_TIMEOUT, c.call(&q)).await;
            let t1 = now_ms();
            let mut st = shared.lock().unwrap();
            match r {
                Ok(Ok(Message::QueryResult(snap))) => {
                    st.observed(i, inc0, Via::Read, s, &snap, t0, t1)
                }
                Ok(Ok(Message::Error(e))) if e.kind() == Some(ErrorCode::NotReady) => {
                    st.read_not_ready(i, inc0, ready0, t0, t1)
                }
                other => {
                    let what = match other {
                        Ok(Ok(m)) => format!("answered {:?}", m.opcode()),
                        Ok(Err(e)) => e,
                        Err(_) => "timed out".into(),
                    };
                    st.read_failed(i, inc0, ready0, t0, t1, what);
                    drop(st);
                    conn = None;
                    break;
                }
            }
        }
    }
}

/// A simulated client application: an SDK client that runs the driver's commands.
async fn client_app(
    shared: Shared,
    c: usize,
    servers: Vec<String>,
    session_bound: bool,
) -> turmoil::Result {
    let inc = shared.lock().unwrap().client_started(c, now_ms());
    let mut cfg = ClientConfig::new(servers);
    cfg.request_timeout = Duration::from_millis(1_000);
    cfg.connect_timeout = Duration::from_millis(300);
    cfg.beat_interval = Duration::from_millis(LEASE.beat_ms as u64);
    cfg.session_bound = session_bound;
    cfg.client_name = format!("sim-c{}", c + 1);
    cfg.dialer = Arc::new(SimDialer);
    let client = loop {
        match Client::connect(cfg.clone()).await {
            Ok(client) => break client,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    loop {
        tokio::time::sleep(CLIENT_POLL).await;
        let conn = client.connected_to().map(|(_, id)| id);
        let cmds = shared.lock().unwrap().client_poll(c, inc, conn, now_ms());
        for cmd in cmds {
            match cmd {
                Cmd::Register(ids) => {
                    let (client, shared) = (client.clone(), shared.clone());
                    tokio::spawn(async move {
                        let batch = ids
                            .iter()
                            .map(|id| Instance {
                                lease: LEASE,
                                ..Instance::new(id.key())
                            })
                            .collect();
                        let r = client.register_batch(batch).await;
                        let r = r.map_err(|e| e.to_string());
                        shared
                            .lock()
                            .unwrap()
                            .register_done(c, inc, &ids, r, now_ms());
                    });
                }
                Cmd::Deregister(ids) => {
                    let (client, shared) = (client.clone(), shared.clone());
                    tokio::spawn(async move {
                        let keys: Vec<InstanceKey> = ids.iter().map(InstId::key).collect();
                        let r = client.deregister_batch(&keys).await;
                        let r = r.map_err(|e| e.to_string());
                        shared.lock().unwrap().deregister_done(c, &ids, r, now_ms());
                    });
                }
                Cmd::Close => {
                    client.close();
                    shared
                        .lock()
                        .unwrap()
                        .client_gone(c, now_ms(), "closed without deregistering");
                    // Keep the host running so that the SDK's tasks can close the connection
                    // (a host whose software returned is no longer stepped).
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

/// What a run found.
pub struct Outcome {
    pub violations: Vec<String>,
    pub flaps: Vec<String>,
    pub trace_hash: u64,
    pub trace_lines: u64,
    pub recent: Vec<String>,
    pub stats: Stats,
    /// From the end of the faults until the checked state held for good (None: it never did).
    pub settled_after_ms: Option<u64>,
    /// From the end of the faults until all running nodes first held identical instance sets.
    pub first_identical_after_ms: Option<u64>,
}

/// Network faults, as directed host pairs each active fault blocks, and held host pairs.
#[derive(Default)]
struct Links {
    blocks: BTreeMap<u32, Vec<(usize, usize)>>,
    holds: BTreeMap<u32, (usize, usize)>,
}

impl Links {
    fn blocked(&self, from: usize, to: usize) -> bool {
        self.blocks.values().any(|v| v.contains(&(from, to)))
    }

    fn held(&self, a: usize, b: usize) -> bool {
        self.holds
            .values()
            .any(|&(x, y)| (x, y) == (a, b) || (x, y) == (b, a))
    }

    /// Puts the simulated link between hosts `a` and `b` in the state the active faults ask for.
    fn apply(&self, sim: &turmoil::Sim, ips: &[IpAddr], a: usize, b: usize) {
        let (ab, ba) = (self.blocked(a, b), self.blocked(b, a));
        if self.held(a, b) && !ab && !ba {
            sim.hold(ips[a], ips[b]);
            return;
        }
        sim.release(ips[a], ips[b]);
        if ab {
            sim.partition_oneway(ips[a], ips[b]);
        }
        if ba {
            sim.partition_oneway(ips[b], ips[a]);
        }
    }
}

/// Ids of the faults the driver makes itself (isolations, hard crashes), above the plan's.
const ISOLATION_FAULT: u32 = 1 << 30;
const HARD_CRASH_FAULT: u32 = 1 << 31;

struct Driver<'a> {
    sim: turmoil::Sim<'a>,
    shared: Shared,
    plan: &'a Plan,
    ips: Vec<IpAddr>,
    node_hosts: Vec<String>,
    client_hosts: Vec<String>,
    links: Links,
    faults_end: u64,
}

/// Live records of a node: key -> version.
type LiveSet = BTreeMap<(String, String, u16), Version>;

fn live_set(node: &Node) -> LiveSet {
    let mut out = BTreeMap::new();
    node.store.for_each_record(|name, id, r| {
        if r.alive {
            out.insert(
                (name.service.to_string(), id.ip.to_string(), id.port),
                r.version,
            );
        }
    });
    out
}

impl Driver<'_> {
    fn now(&self) -> u64 {
        self.sim.elapsed().as_millis() as u64
    }

    fn host_count(&self) -> usize {
        self.ips.len()
    }

    /// Blocks (both ways) or unblocks every link between `host` and `others`, under fault `id`.
    fn block(&mut self, id: u32, pairs: Vec<(usize, usize)>) {
        let touched: Vec<(usize, usize)> = pairs.clone();
        self.links.blocks.insert(id, pairs);
        for (a, b) in touched {
            self.links.apply(&self.sim, &self.ips, a, b);
        }
    }

    fn unblock(&mut self, id: u32) {
        let pairs = self.links.blocks.remove(&id).unwrap_or_default();
        let held = self.links.holds.remove(&id);
        for (a, b) in pairs.into_iter().chain(held) {
            self.links.apply(&self.sim, &self.ips, a, b);
        }
    }

    fn both_ways(host: usize, others: impl IntoIterator<Item = usize>) -> Vec<(usize, usize)> {
        others
            .into_iter()
            .filter(|&o| o != host)
            .flat_map(|o| [(host, o), (o, host)])
            .collect()
    }

    fn apply(&mut self, ev: &Event) {
        let t = self.now();
        let nodes = self.plan.params.nodes;
        let client_host = |c: usize| nodes + c;
        self.shared
            .lock()
            .unwrap()
            .trace
            .push(t, format!("event: {ev}"));
        match ev {
            Event::Register {
                client,
                service,
                count,
            } => {
                let mut st = self.shared.lock().unwrap();
                let slot = &mut st.clients[*client];
                if !slot.up {
                    return;
                }
                let inc = slot.inc;
                let mut ids = Vec::new();
                for _ in 0..*count {
                    slot.next_port += 1;
                    ids.push(InstId {
                        service: *service,
                        ip: format!("c{}-{inc}", client + 1),
                        port: slot.next_port,
                    });
                }
                slot.commands.push_back(Cmd::Register(ids.clone()));
                for id in ids {
                    st.insts.insert(
                        id,
                        Inst {
                            client: *client,
                            inc,
                            state: InstState::Pending { since: t },
                        },
                    );
                }
            }
            Event::Deregister { client, pick } => {
                let mut st = self.shared.lock().unwrap();
                let slot = &st.clients[*client];
                if !slot.up {
                    return;
                }
                let inc = slot.inc;
                let acked: Vec<InstId> = st
                    .insts
                    .iter()
                    .filter(|(_, i)| {
                        i.client == *client
                            && i.inc == inc
                            && matches!(i.state, InstState::Acked { .. })
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                if acked.is_empty() {
                    return;
                }
                let id = acked[(*pick % acked.len() as u64) as usize].clone();
                st.insts.get_mut(&id).unwrap().state = InstState::Dropping { since: t };
                st.trace
                    .push(t, format!("c{} deregisters {id}", client + 1));
                st.clients[*client]
                    .commands
                    .push_back(Cmd::Deregister(vec![id]));
            }
            Event::ClientClose { client } => {
                let mut st = self.shared.lock().unwrap();
                if st.clients[*client].up {
                    st.clients[*client].commands.push_back(Cmd::Close);
                }
            }
            Event::ClientCrash { client, hard } => {
                let h = client_host(*client);
                if *hard {
                    let pairs = Self::both_ways(h, 0..nodes);
                    self.block(HARD_CRASH_FAULT, pairs);
                }
                self.sim.crash(self.client_hosts[*client].as_str());
                if *hard {
                    self.unblock(HARD_CRASH_FAULT);
                }
                let mut st = self.shared.lock().unwrap();
                st.stats.client_crashes += 1;
                st.client_gone(*client, t, "crashed");
            }
            Event::ClientRestart { client } => {
                self.sim.bounce(self.client_hosts[*client].as_str());
            }
            Event::ClientIsolate { client } => {
                let pairs = Self::both_ways(client_host(*client), 0..nodes);
                self.block(ISOLATION_FAULT + *client as u32, pairs);
                self.shared.lock().unwrap().clients[*client].isolated = true;
            }
            Event::ClientRejoin { client } => {
                self.unblock(ISOLATION_FAULT + *client as u32);
                let mut st = self.shared.lock().unwrap();
                let slot = &mut st.clients[*client];
                if slot.isolated {
                    slot.isolated = false;
                    slot.last_isolation_end = t;
                }
            }
            Event::NodeCrash { node, hard } => {
                if *hard {
                    let pairs = Self::both_ways(*node, 0..self.host_count());
                    self.block(HARD_CRASH_FAULT, pairs);
                }
                self.sim.crash(self.node_hosts[*node].as_str());
                if *hard {
                    self.unblock(HARD_CRASH_FAULT);
                }
                let mut st = self.shared.lock().unwrap();
                st.stats.node_crashes += 1;
                let slot = &mut st.nodes[*node];
                slot.running = false;
                slot.node = None;
                slot.stop = None;
            }
            Event::NodeStop { node } => {
                // From now on the node leaves, then stops: it is no longer counted as running
                // (its reads may fail, its clients move away).
                let mut st = self.shared.lock().unwrap();
                st.stats.node_stops += 1;
                let slot = &mut st.nodes[*node];
                if let Some(stop) = slot.stop.take() {
                    stop.notify_one();
                }
                slot.running = false;
                slot.node = None;
            }
            Event::NodeRestart { node } => {
                self.sim.bounce(self.node_hosts[*node].as_str());
            }
            Event::Partition { id, side } => {
                let pairs: Vec<(usize, usize)> = side
                    .iter()
                    .flat_map(|&a| {
                        (0..nodes)
                            .filter(|b| !side.contains(b))
                            .flat_map(move |b| [(a, b), (b, a)])
                    })
                    .collect();
                self.shared.lock().unwrap().stats.partitions += 1;
                self.block(*id, pairs);
            }
            Event::OneWay { id, from, to } => {
                self.shared.lock().unwrap().stats.partitions += 1;
                self.block(*id, vec![(*from, *to)]);
            }
            Event::Hold { id, a, b } => {
                self.links.holds.insert(*id, (*a, *b));
                self.links.apply(&self.sim, &self.ips, *a, *b);
            }
            Event::Heal { id } => self.unblock(*id),
            Event::EndFaults { restart_nodes } => {
                let ids: Vec<u32> = self
                    .links
                    .blocks
                    .keys()
                    .chain(self.links.holds.keys())
                    .copied()
                    .collect();
                for id in ids {
                    self.unblock(id);
                }
                let down: Vec<usize> = {
                    let st = self.shared.lock().unwrap();
                    (0..nodes).filter(|&n| !st.nodes[n].running).collect()
                };
                if *restart_nodes {
                    for n in down {
                        self.sim.bounce(self.node_hosts[n].as_str());
                    }
                }
                let mut st = self.shared.lock().unwrap();
                for slot in st.clients.iter_mut().filter(|s| s.isolated) {
                    slot.isolated = false;
                    slot.last_isolation_end = t;
                }
                self.faults_end = t;
            }
        }
    }

    /// Traces every change of the watched records (`ip:port`) on every node.
    fn watch(&self, keys: &[String], last: &mut BTreeMap<(usize, String), String>, t: u64) {
        let mut st = self.shared.lock().unwrap();
        let mut lines = Vec::new();
        for (i, slot) in st.nodes.iter().enumerate() {
            let mut now: BTreeMap<String, String> = BTreeMap::new();
            if let (true, Some(node)) = (slot.running, &slot.node) {
                node.store.for_each_record(|name, id, r| {
                    let k = format!("{}:{}", id.ip, id.port);
                    if keys.contains(&k) {
                        now.insert(
                            format!("{}/{k}", name.service),
                            format!(
                                "alive={} lapsed={} v={}/{} owner=n{} touched={}",
                                r.alive,
                                r.lapsed,
                                { r.version.hlc },
                                r.version.origin,
                                r.owner,
                                r.touched_ms
                            ),
                        );
                    }
                });
            }
            for k in keys {
                let key = now
                    .keys()
                    .find(|n| n.ends_with(&format!("/{k}")))
                    .cloned()
                    .unwrap_or_else(|| k.clone());
                let v = now.get(&key).cloned().unwrap_or_else(|| "-".into());
                if last.get(&(i, k.clone())) != Some(&v) {
                    last.insert((i, k.clone()), v.clone());
                    lines.push(format!("watch n{} {key}: {v}", i + 1));
                }
            }
        }
        for l in lines {
            st.trace.push(t, l);
        }
    }

    /// Notes every running node's list of every service whose revision moved (for the push
    /// check).
    fn sample_lists(&self) {
        let mut st = self.shared.lock().unwrap();
        let State {
            nodes, lists_seen, ..
        } = &mut *st;
        for (i, slot) in nodes.iter().enumerate() {
            let (true, Some(node)) = (slot.running, &slot.node) else {
                continue;
            };
            for s in 0..SERVICES {
                let body = node.store.query(&service(s), "", false);
                let kept = lists_seen.entry((i, slot.inc, s)).or_default();
                if kept.back().is_none_or(|l| l.revision != revision_of(&body)) {
                    if kept.len() == LISTS_KEPT {
                        kept.pop_front();
                    }
                    kept.push_back(
                        ServiceSnapshot::decode_body(body)
                            .expect("the store encodes well-formed snapshots"),
                    );
                }
            }
        }
    }

    fn check_invariants(&mut self, t: u64) {
        let mut st = self.shared.lock().unwrap();
        let mut found = Vec::new();
        for (i, slot) in st.nodes.iter().enumerate() {
            if let (true, Some(node)) = (slot.running, &slot.node)
                && let Err(e) = node.store.check_invariants()
            {
                found.push(format!("n{}: {e}", i + 1));
            }
        }
        for v in found {
            st.violation(t, v);
        }
    }

    /// The end-state properties; `Ok` when all hold, else what is wrong.
    fn end_state(&self, detail: bool) -> Result<(), Vec<String>> {
        let st = self.shared.lock().unwrap();
        let mut problems = Vec::new();
        let mut sets: Vec<(usize, LiveSet)> = Vec::new();
        for (i, slot) in st.nodes.iter().enumerate() {
            if !slot.running {
                continue;
            }
            let Some(node) = &slot.node else {
                problems.push(format!("n{} was restarted but has not started", i + 1));
                continue;
            };
            if !node.is_ready() {
                problems.push(format!("n{} is running but not ready", i + 1));
            }
            sets.push((i, live_set(node)));
        }
        if !detail && !problems.is_empty() {
            return Err(problems);
        }
        // Convergence: identical live sets, versions included.
        if let Some((first, rest)) = sets.split_first() {
            for (i, set) in rest {
                if set != &first.1 {
                    let mut diffs = Vec::new();
                    let keys: BTreeSet<_> = set.keys().chain(first.1.keys()).collect();
                    for k in keys {
                        let (a, b) = (first.1.get(k), set.get(k));
                        if a != b {
                            diffs.push(format!(
                                "{}/{}:{} n{}={:?} n{}={:?}",
                                k.0,
                                k.1,
                                k.2,
                                first.0 + 1,
                                a.map(|v| (v.hlc, v.origin)),
                                i + 1,
                                b.map(|v| (v.hlc, v.origin))
                            ));
                        }
                    }
                    let n = diffs.len();
                    diffs.truncate(8);
                    problems.push(format!(
                        "not converged: n{} and n{} differ in {n} instance(s): {}",
                        first.0 + 1,
                        i + 1,
                        diffs.join("; ")
                    ));
                    if !detail {
                        return Err(problems);
                    }
                }
            }
        }
        for (id, inst) in &st.insts {
            let k = (format!("svc{}", id.service), id.ip.clone(), id.port);
            let cl = &st.clients[inst.client];
            let client_alive = cl.up && cl.inc == inst.inc;
            match inst.state {
                InstState::Acked { at } if client_alive => {
                    for (i, set) in &sets {
                        if !set.contains_key(&k) {
                            problems.push(format!(
                                "lost: {id} (register acked at {at} ms, c{} alive) is not on n{}",
                                inst.client + 1,
                                i + 1
                            ));
                        }
                    }
                }
                InstState::Dead { since: at }
                | InstState::Failed { at }
                | InstState::Deregistered { at, .. } => {
                    for (i, set) in &sets {
                        if set.contains_key(&k) {
                            problems.push(format!(
                                "zombie: {id} ({:?} since {at} ms) is still alive on n{}",
                                inst.state,
                                i + 1
                            ));
                        }
                    }
                }
                _ => {}
            }
            if !detail && !problems.is_empty() {
                return Err(problems);
            }
        }
        for (i, set) in &sets {
            for k in set.keys() {
                let known =
                    k.0.strip_prefix("svc")
                        .and_then(|s| s.parse::<usize>().ok())
                        .map(|s| InstId {
                            service: s,
                            ip: k.1.clone(),
                            port: k.2,
                        })
                        .is_some_and(|id| st.insts.contains_key(&id));
                if !known {
                    problems.push(format!("n{} holds an unknown instance {k:?}", i + 1));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn identical(&self) -> bool {
        let st = self.shared.lock().unwrap();
        let mut first: Option<LiveSet> = None;
        for slot in &st.nodes {
            if !slot.running {
                continue;
            }
            let Some(node) = &slot.node else {
                return false;
            };
            if !node.is_ready() {
                return false;
            }
            let set = live_set(node);
            match &first {
                None => first = Some(set),
                Some(f) if *f != set => return false,
                Some(_) => {}
            }
        }
        true
    }
}

/// Which properties fail a run (all, by default).
#[derive(Debug, Clone, Copy)]
pub struct Checks {
    /// A flap (an instance of a live, connected client vanishing from its node's reads) fails
    /// the run; off, flaps are reported and the run goes on (see tests/sim.rs,
    /// `DISTRO_SIM_FLAPS`).
    pub flaps_fail: bool,
}

/// Runs one plan to the end and checks it.
pub fn run(plan: &Plan, verbose: bool, checks: Checks) -> Outcome {
    count_panics();
    PANICS.with(|p| p.set(0));
    let p = &plan.params;
    let sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(24 * 3600))
        .tick_duration(Duration::from_millis(TICK_MS))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(p.latency_max_ms))
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
        .rng_seed(plan.seed)
        .build();
    let node_hosts: Vec<String> = (1..=p.nodes).map(|i| format!("n{i}")).collect();
    let client_hosts: Vec<String> = (1..=p.clients).map(|i| format!("c{i}")).collect();
    let mut ips: Vec<IpAddr> = Vec::new();
    for h in node_hosts.iter().chain(&client_hosts) {
        ips.push(sim.lookup(h.as_str()));
    }
    ips.push(sim.lookup("probe"));
    let shared: Shared = Arc::new(Mutex::new(State {
        nodes: (0..p.nodes).map(|_| NodeSlot::default()).collect(),
        clients: (0..p.clients).map(|_| ClientSlot::default()).collect(),
        insts: BTreeMap::new(),
        seen: BTreeMap::new(),
        last_read: BTreeMap::new(),
        lists_seen: BTreeMap::new(),
        violations: Vec::new(),
        flaps: Vec::new(),
        checks,
        trace: Trace::new(verbose),
        stats: Stats::default(),
    }));
    let mut d = Driver {
        sim,
        shared: shared.clone(),
        plan,
        ips: ips.clone(),
        node_hosts: node_hosts.clone(),
        client_hosts: client_hosts.clone(),
        links: Links::default(),
        faults_end: u64::MAX,
    };
    for (i, name) in node_hosts.iter().enumerate() {
        let cfg = node_config(i, &ips[..p.nodes]);
        let skew = p.skew_ms[i];
        let shared = shared.clone();
        d.sim.host(name.as_str(), move || {
            let (cfg, shared) = (cfg.clone(), shared.clone());
            async move {
                let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
                let listener = turmoil::net::TcpListener::bind((any, CLIENT_PORT)).await?;
                let peer = turmoil::net::TcpListener::bind((any, PEER_PORT)).await?;
                let t = now_ms();
                let wall = (EPOCH_MS as i64 + skew) as u64 + t;
                let server = Server::with_transport(
                    cfg,
                    Clock::starting_at(wall),
                    Box::new(SimListener(listener)),
                    Some(Box::new(SimListener(peer))),
                    Arc::new(SimDialer),
                );
                let node = server.node();
                let stop = Arc::new(tokio::sync::Notify::new());
                shared
                    .lock()
                    .unwrap()
                    .node_started(i, node.clone(), stop.clone(), t);
                tokio::spawn(async move {
                    stop.notified().await;
                    node.stop_gracefully().await;
                });
                server.run().await;
                Ok(())
            }
        });
    }
    for (c, name) in client_hosts.iter().enumerate() {
        let servers: Vec<String> = p.server_order[c]
            .iter()
            .map(|&n| format!("n{}:{CLIENT_PORT}", n + 1))
            .collect();
        let bound = p.session_bound[c];
        let shared = shared.clone();
        d.sim.host(name.as_str(), move || {
            client_app(shared.clone(), c, servers.clone(), bound)
        });
    }
    {
        let shared = shared.clone();
        let nodes = p.nodes;
        d.sim.client("probe", async move {
            for i in 0..nodes {
                let addr = format!("n{}:{CLIENT_PORT}", i + 1);
                tokio::task::spawn_local(probe_node(shared.clone(), i, addr.clone()));
                tokio::task::spawn_local(watch_pushes(shared.clone(), i, addr));
            }
            std::future::pending::<()>().await;
            Ok(())
        });
    }

    // DISTRO_SIM_WATCH=ip:port[,ip:port...] traces every change of those records on every node.
    let watch: Vec<String> = std::env::var("DISTRO_SIM_WATCH")
        .map(|w| w.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let mut watched: BTreeMap<(usize, String), String> = BTreeMap::new();
    let mut next_event = 0;
    let mut next_invariants = INVARIANTS_EVERY_MS;
    let mut next_sample = 0;
    let mut settled_since: Option<u64> = None;
    let mut first_identical: Option<u64> = None;
    let end_at = p.faults_end_ms + SETTLE_MS;
    loop {
        let t = d.now();
        while next_event < plan.events.len() && plan.events[next_event].0 <= t {
            let ev = plan.events[next_event].1.clone();
            d.apply(&ev);
            next_event += 1;
        }
        if !watch.is_empty() {
            d.watch(&watch, &mut watched, t);
        }
        if t >= next_invariants {
            d.check_invariants(t);
            next_invariants += INVARIANTS_EVERY_MS;
        }
        if t >= d.faults_end && t >= next_sample {
            next_sample = t + CONVERGENCE_EVERY_MS;
            if first_identical.is_none() && d.identical() {
                first_identical = Some(t);
            }
            match (d.end_state(false).is_ok(), settled_since) {
                (true, None) => settled_since = Some(t),
                (false, Some(_)) => settled_since = None,
                _ => {}
            }
        }
        if t >= end_at {
            break;
        }
        if let Err(e) = d.sim.step() {
            shared
                .lock()
                .unwrap()
                .violation(t, format!("the simulation stopped: {e}"));
            break;
        }
        d.sample_lists();
    }
    let t = d.now();
    d.check_invariants(t);
    if let Err(problems) = d.end_state(true) {
        let mut st = shared.lock().unwrap();
        for p in problems {
            st.violation(t, format!("{SETTLE_MS} ms after the faults ended: {p}"));
        }
    }
    {
        // The push check is only worth something if pushes arrived: every run registers
        // instances, and every node is ready long before the end.
        let mut st = shared.lock().unwrap();
        if st.stats.pushes == 0 {
            st.violation(
                t,
                "the probe's subscribers received no push at all: the push check checked nothing"
                    .into(),
            );
        } else if st.stats.pushes_checked == 0 {
            st.violation(
                t,
                "no push could be compared with its node's list at the same revision".into(),
            );
        }
    }
    let panics = PANICS.with(|p| p.get());
    if panics > 0 {
        shared.lock().unwrap().violation(
            t,
            format!("{panics} panic(s) in simulated tasks (their messages are above)"),
        );
    }
    let faults_end = d.faults_end;
    // Dropping the simulation drops every host's runtime (and its sockets) inside turmoil's
    // world; the nodes kept in the table hold no sockets.
    drop(d);
    let mut st = shared.lock().unwrap();
    for slot in &mut st.nodes {
        slot.node = None;
    }
    Outcome {
        violations: std::mem::take(&mut st.violations),
        flaps: std::mem::take(&mut st.flaps),
        trace_hash: st.trace.hash,
        trace_lines: st.trace.lines,
        recent: st.trace.recent.iter().cloned().collect(),
        stats: st.stats.clone(),
        settled_after_ms: settled_since.map(|s| s.saturating_sub(faults_end)),
        first_identical_after_ms: first_identical.map(|s| s.saturating_sub(faults_end)),
    }
}
