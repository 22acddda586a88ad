//! The schedule of one simulated run, drawn from its seed: the cluster's shape, the clients'
//! operations and every fault, with the time (simulated milliseconds) at which each happens.
//!
//! The whole schedule is drawn before the run starts, so a failing seed can print it and a rerun
//! draws the same one. Choices that depend on the run's state (which acknowledged instance a
//! deregistration removes) are drawn here as a number and resolved against the state when the
//! event is applied, which is itself deterministic.

use std::fmt;

/// splitmix64: small, fast, and good enough to draw schedules; no crate needed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// An index drawn by weight.
    pub fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut x = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if x < w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// Services the clients register into (and the probe reads).
pub const SERVICES: usize = 3;
/// Client operations start once the cluster had time to form.
pub const WARMUP_MS: u64 = 1_500;
/// No client operation is issued this close to the end of the faults, so that every one has
/// finished (acknowledged or failed) before the final check.
pub const OPS_QUIET_MS: u64 = 2_500;

/// The shape of one run.
#[derive(Debug, Clone)]
pub struct Params {
    pub nodes: usize,
    pub clients: usize,
    pub latency_max_ms: u64,
    /// Added to each node's wall clock (hybrid logical clocks must absorb it).
    pub skew_ms: Vec<i64>,
    /// Per client: the order in which it lists the nodes (its first choice differs).
    pub server_order: Vec<Vec<usize>>,
    /// Per client: whether it registers session-bound instances.
    pub session_bound: Vec<bool>,
    /// When faults and client operations stop.
    pub faults_end_ms: u64,
}

/// What happens at one point of a run. Nodes and clients are 0-based indexes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The client registers `count` new instances of service `service`.
    Register {
        client: usize,
        service: usize,
        count: usize,
    },
    /// The client deregisters one of its acknowledged instances (`pick` chooses which).
    Deregister {
        client: usize,
        pick: u64,
    },
    /// The client application exits without deregistering (the SDK is closed: no more beats).
    ClientClose {
        client: usize,
    },
    /// The client host crashes; `hard` drops its last packets (the node sees no close).
    ClientCrash {
        client: usize,
        hard: bool,
    },
    /// A closed or crashed client host starts again: a new client with new instances.
    ClientRestart {
        client: usize,
    },
    /// The client host loses its network to every node (alive, but its beats do not arrive).
    ClientIsolate {
        client: usize,
    },
    ClientRejoin {
        client: usize,
    },
    /// A node crashes; `hard` drops its last packets (peers and clients see no close).
    NodeCrash {
        node: usize,
        hard: bool,
    },
    /// A node stops gracefully (SIGTERM): it leaves the cluster, then stops.
    NodeStop {
        node: usize,
    },
    NodeRestart {
        node: usize,
    },
    /// Network fault `id`: the nodes in `side` cannot talk to the other nodes, both ways.
    Partition {
        id: u32,
        side: Vec<usize>,
    },
    /// Network fault `id`: packets from `from` to `to` are dropped (the other way works).
    OneWay {
        id: u32,
        from: usize,
        to: usize,
    },
    /// Network fault `id`: packets between `a` and `b` are held (delayed) until released.
    Hold {
        id: u32,
        a: usize,
        b: usize,
    },
    /// Network fault `id` ends.
    Heal {
        id: u32,
    },
    /// Every fault ends: partitions heal, holds release; crashed nodes are restarted when
    /// `restart_nodes`, isolated clients rejoin. Client operations have already stopped.
    EndFaults {
        restart_nodes: bool,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Register {
                client,
                service,
                count,
            } => write!(f, "c{} registers {count} in svc{service}", client + 1),
            Event::Deregister { client, pick } => {
                write!(f, "c{} deregisters one (pick {pick})", client + 1)
            }
            Event::ClientClose { client } => {
                write!(f, "c{} closes without deregistering", client + 1)
            }
            Event::ClientCrash { client, hard } => {
                write!(
                    f,
                    "c{} crashes{}",
                    client + 1,
                    if *hard { " (hard)" } else { "" }
                )
            }
            Event::ClientRestart { client } => write!(f, "c{} restarts", client + 1),
            Event::ClientIsolate { client } => write!(f, "c{} isolated from all nodes", client + 1),
            Event::ClientRejoin { client } => write!(f, "c{} rejoins", client + 1),
            Event::NodeCrash { node, hard } => {
                write!(
                    f,
                    "n{} crashes{}",
                    node + 1,
                    if *hard { " (hard)" } else { "" }
                )
            }
            Event::NodeStop { node } => write!(f, "n{} stops gracefully (leaves)", node + 1),
            Event::NodeRestart { node } => write!(f, "n{} restarts", node + 1),
            Event::Partition { id, side } => {
                let side: Vec<String> = side.iter().map(|n| format!("n{}", n + 1)).collect();
                write!(f, "fault {id}: partition {{{}}} | rest", side.join(","))
            }
            Event::OneWay { id, from, to } => {
                write!(f, "fault {id}: n{} -> n{} dropped", from + 1, to + 1)
            }
            Event::Hold { id, a, b } => write!(f, "fault {id}: n{} <-> n{} held", a + 1, b + 1),
            Event::Heal { id } => write!(f, "fault {id} ends"),
            Event::EndFaults { restart_nodes } => write!(
                f,
                "faults end (crashed nodes {})",
                if *restart_nodes {
                    "restart"
                } else {
                    "stay down"
                }
            ),
        }
    }
}

/// One run: its shape and its events in time order.
pub struct Plan {
    pub seed: u64,
    pub params: Params,
    pub events: Vec<(u64, Event)>,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.params;
        writeln!(
            f,
            "seed {}: {} nodes (clock skew ms {:?}), {} clients (session-bound {:?}), latency \
             1..={} ms, faults until {} ms",
            self.seed,
            p.nodes,
            p.skew_ms,
            p.clients,
            p.session_bound,
            p.latency_max_ms,
            p.faults_end_ms
        )?;
        for (t, e) in &self.events {
            writeln!(f, "  {t:>6} ms  {e}")?;
        }
        Ok(())
    }
}

impl Plan {
    /// Draws the run of `seed`; `schedule_ms` is how long faults and operations go on. With
    /// `graceful_stops`, some of the node crashes are graceful stops instead (drawn from a
    /// stream of their own, so that the schedule is otherwise the same as without).
    pub fn draw(seed: u64, schedule_ms: u64, graceful_stops: bool) -> Plan {
        let mut rng = Rng::new(seed);
        let nodes = rng.range(3, 5) as usize;
        let clients = rng.range(2, 4) as usize;
        let latency_max_ms = [1, 5, 20, 40][rng.below(4) as usize];
        let skew_ms = (0..nodes)
            .map(|_| rng.range(0, 4_000) as i64 - 2_000)
            .collect();
        let server_order = (0..clients)
            .map(|_| {
                let mut o: Vec<usize> = (0..nodes).collect();
                rng.shuffle(&mut o);
                o
            })
            .collect();
        let session_bound = (0..clients).map(|_| rng.chance(50)).collect();
        let faults_end_ms = WARMUP_MS + schedule_ms;
        let params = Params {
            nodes,
            clients,
            latency_max_ms,
            skew_ms,
            server_order,
            session_bound,
            faults_end_ms,
        };
        let mut events = Vec::new();
        for c in 0..clients {
            client_stream(&mut rng, c, &params, &mut events);
        }
        let mut stops = graceful_stops.then(|| Rng::new(seed ^ GRACEFUL_STOPS_SALT));
        node_stream(&mut rng, stops.as_mut(), &params, &mut events);
        network_stream(&mut rng, &params, &mut events);
        events.push((
            faults_end_ms,
            Event::EndFaults {
                restart_nodes: rng.chance(60),
            },
        ));
        // Stable: events at the same time keep the order they were drawn in.
        events.sort_by_key(|(t, _)| *t);
        Plan {
            seed,
            params,
            events,
        }
    }
}

/// One client's life: operations every few hundred ms, sometimes an isolation, a close or a
/// crash followed by a restart.
fn client_stream(rng: &mut Rng, c: usize, p: &Params, out: &mut Vec<(u64, Event)>) {
    let stop = p.faults_end_ms - OPS_QUIET_MS;
    let mut t = WARMUP_MS + rng.range(0, 500);
    while t < stop {
        match rng.weighted(&[50, 24, 7, 4, 5]) {
            0 => out.push((
                t,
                Event::Register {
                    client: c,
                    service: rng.below(SERVICES as u64) as usize,
                    count: rng.range(1, 3) as usize,
                },
            )),
            1 => out.push((
                t,
                Event::Deregister {
                    client: c,
                    pick: rng.next_u64(),
                },
            )),
            2 => {
                out.push((t, Event::ClientIsolate { client: c }));
                t += rng.range(100, 3_000);
                // Rejoins at the latest when faults end.
                out.push((t.min(p.faults_end_ms), Event::ClientRejoin { client: c }));
            }
            3 => {
                out.push((t, Event::ClientClose { client: c }));
                t += rng.range(100, 2_000);
                if t < stop {
                    out.push((t, Event::ClientRestart { client: c }));
                } else {
                    return;
                }
            }
            _ => {
                out.push((
                    t,
                    Event::ClientCrash {
                        client: c,
                        hard: rng.chance(50),
                    },
                ));
                t += rng.range(100, 2_000);
                if t < stop {
                    out.push((t, Event::ClientRestart { client: c }));
                } else {
                    return;
                }
            }
        }
        t += rng.range(50, 600);
    }
}

/// Separates the stream that turns crashes into graceful stops from the schedule's.
const GRACEFUL_STOPS_SALT: u64 = 0x6c65_6176_6573_0001;
/// Of the node crashes, this share (percent) are graceful stops when those are drawn.
const GRACEFUL_STOP_PERCENT: u64 = 35;

/// Node crashes (some of them graceful stops, drawn from `stops`), each followed by a restart
/// after a drawn downtime (or left to the end of the faults); at least one node keeps running
/// (the data lives in memory only).
fn node_stream(
    rng: &mut Rng,
    mut stops: Option<&mut Rng>,
    p: &Params,
    out: &mut Vec<(u64, Event)>,
) {
    // Per node: when it is back up (0: up).
    let mut back_at = vec![0u64; p.nodes];
    let mut t = WARMUP_MS + rng.range(500, 3_000);
    while t < p.faults_end_ms {
        let up: Vec<usize> = (0..p.nodes).filter(|&n| back_at[n] <= t).collect();
        if up.len() >= 2 {
            let n = up[rng.below(up.len() as u64) as usize];
            let hard = rng.chance(50);
            let graceful = stops
                .as_deref_mut()
                .is_some_and(|s| s.chance(GRACEFUL_STOP_PERCENT));
            let ev = if graceful {
                Event::NodeStop { node: n }
            } else {
                Event::NodeCrash { node: n, hard }
            };
            out.push((t, ev));
            let back = t + rng.range(100, 4_000);
            if back < p.faults_end_ms {
                out.push((back, Event::NodeRestart { node: n }));
                back_at[n] = back;
            } else {
                back_at[n] = u64::MAX;
            }
        }
        t += rng.range(200, 3_500);
    }
}

/// Partitions (both ways and one way) and holds between nodes; they may overlap.
fn network_stream(rng: &mut Rng, p: &Params, out: &mut Vec<(u64, Event)>) {
    let mut id = 0;
    let mut t = WARMUP_MS + rng.range(0, 2_000);
    while t < p.faults_end_ms {
        id += 1;
        let a = rng.below(p.nodes as u64) as usize;
        let b = (a + 1 + rng.below(p.nodes as u64 - 1) as usize) % p.nodes;
        let (ev, dur) = match rng.weighted(&[40, 25, 35]) {
            0 => {
                let mut all: Vec<usize> = (0..p.nodes).collect();
                rng.shuffle(&mut all);
                let k = rng.range(1, p.nodes as u64 / 2) as usize;
                let mut side = all[..k].to_vec();
                side.sort_unstable();
                (Event::Partition { id, side }, rng.range(100, 4_000))
            }
            1 => (Event::OneWay { id, from: a, to: b }, rng.range(100, 3_000)),
            _ => (Event::Hold { id, a, b }, rng.range(20, 800)),
        };
        out.push((t, ev));
        let end = (t + dur).min(p.faults_end_ms);
        out.push((end, Event::Heal { id }));
        t += rng.range(200, 2_500);
    }
}
